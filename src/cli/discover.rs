//! `discover`: what exists on this host's back ends, printed (or written to
//! a directory) as manifests, or with `--diff` the drift from the given
//! manifests as patches; see [`crate::discover`].

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::discover::{self, Options};
use crate::exec::Exec;
use crate::manifest::Name;
use crate::observe;
use crate::registry::Registry;
use crate::state::lock::StateLock;
use crate::state::record::Ledger;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub(super) struct DiscoverArgs {
    /// Manifest file or directory (repeatable): the `Backend`s to look at
    /// (and `VolumeType`s, to name the type each volume fits).
    #[arg(short = 'f', long = "file", value_name = "PATH", default_value = ".")]
    files: Vec<PathBuf>,
    /// Only this back end (repeatable; default: every back end of this
    /// host).
    #[arg(long, value_name = "NAME")]
    backend: Vec<String>,
    /// Also write foreign LVs and files as `Volume`s annotated
    /// `cinderblock.dev/adopt`, to take into management.
    #[arg(long)]
    include_foreign: bool,
    /// The drift instead: what the back ends hold that the manifests given
    /// with -f do not say (sizes grown by hand, exports changed, objects
    /// deleted or undeclared), as YAML patches of their documents
    /// (`drift.yaml` with --out).
    #[arg(long)]
    diff: bool,
    /// Write one file per back end into DIR (`BACKEND.yaml`, and
    /// `BACKEND.foreign.yaml` with `--include-foreign`) instead of printing.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// What each document's `# yaml-language-server: $schema=` line points
    /// at.
    #[arg(long, value_name = "REF", default_value = "schemas/manifest.json")]
    schema: String,
}

pub(super) fn run(g: &GlobalArgs, args: &DiscoverArgs) -> anyhow::Result<i32> {
    let mut set = super::plan::load(&args.files)?;
    if !args.backend.is_empty() {
        for b in &args.backend {
            if !set.backends.keys().any(|k| k.as_str() == b) {
                bail!(
                    "--backend {}: no Backend of that name in the manifests",
                    crate::manifest::values::shown(b)
                );
            }
        }
        set.backends
            .retain(|k: &Name, _| args.backend.iter().any(|b| b == k.as_str()));
    }
    let host = super::plan::host_name(g);
    let _lock = StateLock::acquire(&g.state, "discover")?;
    let ledger = Ledger::load(&g.state).context("cannot read the recorded state")?;
    let registry = Registry::new(&set, &host, &g.state, Exec::host());
    if registry.names().next().is_none() {
        bail!(
            "no Backend of host {host} in the manifests (give them with -f, and --host when they name another host)"
        );
    }
    let world = observe::discover(&set, &registry, &g.state);
    let opts = Options {
        include_foreign: args.include_foreign,
        schema: args.schema.clone(),
    };
    let output = if args.diff {
        discover::drift(&set, &world, &ledger.recorded, &opts)
    } else {
        discover::manifests(&set, &world, &ledger.recorded, &opts)
    };
    let mut err = std::io::stderr().lock();
    for n in &output.notes {
        writeln!(err, "note: {n}")?;
    }
    if args.diff && output.files.is_empty() {
        writeln!(
            err,
            "No drift: the back ends hold what the manifests say (plan shows what they do not have yet)."
        )?;
    }
    let mut out = std::io::stdout().lock();
    match &args.out {
        None => out.write_all(output.stream().as_bytes())?,
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            for (name, text) in &output.files {
                let path = dir.join(name);
                crate::state::atomic::write_atomic(&path, text.as_bytes())
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            writeln!(
                out,
                "wrote {} file(s) to {}",
                output.files.len(),
                dir.display()
            )?;
        }
    }
    Ok(0)
}
