//! `cinderblock validate`: every finding in every manifest, in one run.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::manifest::{self, Diagnostic, Severity};

#[derive(Debug, Args)]
pub(super) struct ValidateArgs {
    /// Manifest file or directory (repeatable; directories are read recursively).
    #[arg(short = 'f', long = "file", value_name = "PATH", default_value = ".")]
    files: Vec<PathBuf>,
    /// Output format of the findings.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// `FILE:LINE:COL: Kind/name: field: message` lines on stderr.
    Text,
    /// One JSON document on stdout.
    Json,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    valid: bool,
    files: usize,
    documents: usize,
    errors: usize,
    warnings: usize,
    diagnostics: Vec<JsonDiagnostic<'a>>,
}

#[derive(Serialize)]
struct JsonDiagnostic<'a> {
    severity: Severity,
    file: String,
    line: Option<usize>,
    column: Option<usize>,
    object: Option<&'a str>,
    field: Option<String>,
    message: &'a str,
}

impl<'a> From<&'a Diagnostic> for JsonDiagnostic<'a> {
    fn from(d: &'a Diagnostic) -> Self {
        JsonDiagnostic {
            severity: d.severity,
            file: d.file.display().to_string(),
            line: d.pos.map(|p| p.line),
            column: d.pos.map(|p| p.col),
            object: d.object.as_deref(),
            field: d
                .field
                .as_ref()
                .filter(|f| !f.is_root())
                .map(ToString::to_string),
            message: &d.message,
        }
    }
}

pub(super) fn run(args: &ValidateArgs) -> anyhow::Result<i32> {
    let loaded = manifest::load_paths(&args.files);
    let errors = loaded.errors();
    let warnings = loaded.warnings();
    let code = i32::from(errors > 0);
    match args.format {
        Format::Json => {
            let report = JsonReport {
                valid: errors == 0,
                files: loaded.files.len(),
                documents: loaded.documents,
                errors,
                warnings,
                diagnostics: loaded
                    .diagnostics
                    .iter()
                    .map(JsonDiagnostic::from)
                    .collect(),
            };
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &report)?;
            writeln!(out)?;
        }
        Format::Text => {
            let mut err = std::io::stderr().lock();
            for d in &loaded.diagnostics {
                writeln!(err, "{d}")?;
            }
            let summary = format!(
                "{} in {} and {}",
                plural(loaded.documents, "manifest"),
                plural(loaded.files.len(), "file"),
                match (errors, warnings) {
                    (0, 0) => "no problems".to_owned(),
                    (e, 0) => plural(e, "error"),
                    (0, w) => plural(w, "warning"),
                    (e, w) => format!("{}, {}", plural(e, "error"), plural(w, "warning")),
                }
            );
            if errors > 0 {
                writeln!(err, "invalid: {summary}")?;
            } else {
                writeln!(std::io::stdout().lock(), "valid: {summary}")?;
            }
        }
    }
    Ok(code)
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}
