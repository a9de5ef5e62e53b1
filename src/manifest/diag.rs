//! Diagnostics: one error or warning, located at a file, line, column and field.
//!
//! Rendered as `FILE:LINE:COL: Kind/name: field.path: message` (warnings add
//! `warning: ` after the position), the format compilers use so editors and CI
//! annotators can jump to the spot.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::position::{FieldPath, Pos};

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The manifests cannot be used.
    Error,
    /// Suspicious but usable.
    Warning,
}

/// One finding about the manifests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file, as it was named on the command line or found in a directory.
    pub file: Arc<Path>,
    /// Where in the file; `None` for findings about the file as a whole.
    pub pos: Option<Pos>,
    /// The object, as `Kind/name`, when known.
    pub object: Option<String>,
    /// The field, when the finding is about one.
    pub field: Option<FieldPath>,
    /// What is wrong, and where possible how to fix it.
    pub message: String,
}

impl Diagnostic {
    /// An error about a whole file.
    pub fn file_error(file: &Arc<Path>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            file: Arc::clone(file),
            pos: None,
            object: None,
            field: None,
            message: message.into(),
        }
    }

    /// True for errors.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Sort key: file, then position, then text.
    pub fn sort_key(&self) -> (&Path, Option<Pos>, &str) {
        (&self.file, self.pos, &self.message)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(p) = self.pos {
            write!(f, ":{}:{}", p.line, p.col)?;
        }
        f.write_str(": ")?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        if let Some(o) = &self.object {
            write!(f, "{o}: ")?;
        }
        if let Some(field) = self.field.as_ref().filter(|p| !p.is_root()) {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// The closest candidate to `word` by edit distance, when close enough to be a
/// plausible typo.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|c| {
            (
                edit_distance(&word.to_ascii_lowercase(), &c.to_ascii_lowercase()),
                c,
            )
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, c)| (*d, *c))
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_compiler_style() {
        let d = Diagnostic {
            severity: Severity::Warning,
            file: Arc::from(Path::new("a.yaml")),
            pos: Some(Pos { line: 3, col: 5 }),
            object: Some("Volume/db".into()),
            field: Some(FieldPath::parse("spec.size")),
            message: "too big".into(),
        };
        assert_eq!(
            d.to_string(),
            "a.yaml:3:5: warning: Volume/db: spec.size: too big"
        );
    }

    #[test]
    fn suggests_close_words_only() {
        assert_eq!(suggest("sise", ["size", "source"]), Some("size"));
        assert_eq!(suggest("Volum", ["Volume", "Image"]), Some("Volume"));
        assert_eq!(suggest("xyz", ["size", "source"]), None);
    }
}
