//! `cinderblock backup list|verify|export|import|prune`: the catalogue and
//! repository maintenance commands, over [`crate::backup::catalog`],
//! [`crate::backup::verify`] and [`crate::backup::job::prune`]; printing
//! only.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;

use super::backup::{Bar, ManifestFiles, bytes, load_manifests};
use crate::backup::catalog::{self, Catalog, Entry};
use crate::backup::format::Record;
use crate::backup::{Repository, job, verify};
use crate::state::lock::StateLock;

#[derive(Debug, Args)]
pub(super) struct ListArgs {
    /// Only this volume's backups.
    pub(super) volume: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
pub(super) struct VerifyArgs {
    /// The backup's id (or a unique prefix).
    pub(super) id: Option<String>,
    /// Every backup in every catalogued repository.
    #[arg(long)]
    pub(super) all: bool,
}

#[derive(Debug, Args)]
pub(super) struct ExportArgs {
    /// The backup's id (or a unique prefix).
    pub(super) id: String,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["record", "scan"])))]
pub(super) struct ImportArgs {
    /// An export record file (`-` for stdin).
    pub(super) record: Option<PathBuf>,
    /// Rebuild the catalogue from the repository at PATH.
    #[arg(long, value_name = "PATH")]
    pub(super) scan: Option<PathBuf>,
    /// The repository's path on this host, when it differs from the record's.
    #[arg(long, value_name = "PATH", conflicts_with = "scan")]
    pub(super) repository: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(super) struct PruneArgs {
    /// Show what would be forgotten and freed; change nothing.
    #[arg(long)]
    pub(super) dry_run: bool,
    #[command(flatten)]
    pub(super) manifests: ManifestFiles,
}

// ---------------------------------------------------------------------------
// list

pub(super) fn list(a: &ListArgs, state: &Path) -> anyhow::Result<i32> {
    let cat = Catalog::load(state)?;
    let mut rows: Vec<&Entry> = cat
        .backups
        .values()
        .filter(|e| a.volume.as_ref().is_none_or(|v| &e.volume.name == v))
        .collect();
    rows.sort_by_key(|e| (e.volume.name.clone(), e.started_at, e.id));
    let mut out = std::io::stdout().lock();
    if rows.is_empty() {
        writeln!(
            out,
            "no backups{} in the catalogue (backup import --scan REPO rebuilds it from a repository)",
            a.volume
                .as_ref()
                .map(|v| format!(" of {v}"))
                .unwrap_or_default()
        )?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:<36}  {:<20}  {:<16}  {:<11}  {:<8}  {:>10}  {:>10}  STATUS",
        "ID", "TIME (UTC)", "VOLUME", "KIND", "PARENT", "LOGICAL", "STORED"
    )?;
    for e in rows {
        writeln!(
            out,
            "{:<36}  {:<20}  {:<16}  {:<11}  {:<8}  {:>10}  {:>10}  {}{}",
            e.id,
            e.started_at.format("%Y-%m-%d %H:%M:%S"),
            e.volume.name,
            e.kind.map_or_else(|| "-".to_owned(), |k| k.to_string()),
            e.parent.map_or_else(
                || "-".to_owned(),
                |p| p.simple().to_string()[..8].to_owned()
            ),
            bytes(e.volume.size),
            bytes(e.stored_bytes),
            e.status,
            e.detail
                .as_ref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        )?;
    }
    Ok(0)
}

// ---------------------------------------------------------------------------
// verify

#[allow(clippy::too_many_lines)] // as run_backup
pub(super) fn verify(a: &VerifyArgs, state: &Path) -> anyhow::Result<i32> {
    let cat = Catalog::load(state)?;
    let work = match verify::targets(&cat, a.id.as_deref()) {
        Err(job::JobError::Unreadable { errors, repository }) => {
            for e in &errors {
                writeln!(std::io::stderr().lock(), "error: {e}")?;
            }
            return Err(job::JobError::Unreadable { repository, errors }.into());
        }
        other => other?,
    };
    let mut damaged = 0usize;
    let mut out = std::io::stdout().lock();
    let mut checked = Vec::new();
    for (repo, manifests) in &work {
        let bar = Bar::new(&format!("verify {}", repo.root().display()));
        let c = verify::check(repo, manifests, &bar);
        bar.finish();
        let c = c?;
        for v in &c.verdicts {
            let m = &v.manifest;
            let line = format!(
                "{} {} {}",
                m.id,
                m.volume.name,
                m.started_at.format("%Y-%m-%d %H:%M:%S UTC")
            );
            match &v.damage {
                None => writeln!(out, "ok       {line}: {} chunks", v.chunks)?,
                Some(detail) => {
                    damaged += 1;
                    writeln!(out, "DAMAGED  {line}: {detail}")?;
                }
            }
        }
        writeln!(
            out,
            "checked {} unique chunks ({}) in {}: {} missing, {} corrupt",
            c.chunks,
            bytes(c.bytes),
            c.root.display(),
            c.missing,
            c.corrupt
        )?;
        checked.push(c);
    }
    // Record what was found, if nobody else holds the state directory.
    match StateLock::acquire(state, "backup verify") {
        Ok(_lock) => verify::record(state, &checked)?,
        Err(e) => tracing::warn!(error = %e, "verify results not recorded in the catalogue"),
    }
    Ok(i32::from(damaged > 0))
}

// ---------------------------------------------------------------------------
// export / import

pub(super) fn export(a: &ExportArgs, state: &Path) -> anyhow::Result<i32> {
    let cat = Catalog::load(state)?;
    let (repo, m) = job::locate(&cat, &a.id)?;
    let record = catalog::export(&repo, &m);
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &record)?;
    writeln!(out)?;
    Ok(0)
}

pub(super) fn import(a: &ImportArgs, state: &Path) -> anyhow::Result<i32> {
    let _lock = StateLock::acquire(state, "backup import")?;
    let mut cat = Catalog::load(state)?;
    let mut out = std::io::stdout().lock();
    if let Some(path) = &a.scan {
        let repo = Repository::open(path)?;
        let (n, bad) = cat.scan(&repo)?;
        cat.store(state)?;
        for e in &bad {
            writeln!(std::io::stderr().lock(), "error: {}", crate::error_chain(e))?;
        }
        writeln!(
            out,
            "scanned {} (repository {}): {n} backup(s) in the catalogue{}",
            path.display(),
            repo.config().id,
            if bad.is_empty() {
                String::new()
            } else {
                format!(", {} unreadable manifest(s)", bad.len())
            }
        )?;
        return Ok(i32::from(!bad.is_empty()));
    }
    let Some(path) = &a.record else {
        bail!("give a record file or --scan PATH");
    };
    let mut text = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut text)?;
    } else {
        text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    }
    let record: Record = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a backup export record", path.display()))?;
    let (repo, written) = catalog::import(&record, a.repository.as_deref())?;
    cat.add(&record.backup, repo.root());
    cat.store(state)?;
    writeln!(
        out,
        "imported backup {} of volume {} ({}) from {}{}",
        record.backup.id,
        record.backup.volume.name,
        record.backup.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        repo.root().display(),
        if written {
            "; its manifest was missing from the repository and has been written back"
        } else {
            ""
        }
    )?;
    Ok(0)
}

// ---------------------------------------------------------------------------
// prune

#[allow(clippy::too_many_lines)] // as run_backup
pub(super) fn prune_cmd(a: &PruneArgs, state: &Path) -> anyhow::Result<i32> {
    let set = load_manifests(&a.manifests)?;
    let _lock = StateLock::acquire(state, "backup prune")?;
    let dry = a.dry_run;
    job::prune(&set, state, dry, &mut |p| print_prune(p, dry))?;
    Ok(0)
}

/// One repository's prune: retention's verdicts, then what the sweep did.
fn print_prune(p: &job::Pruned, dry: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let (path, policies) = (p.path.display(), p.policies.join(", "));
    let Some((plan, r)) = &p.outcome else {
        return writeln!(out, "repository {path} (policy {policies}): none yet");
    };
    writeln!(out, "repository {path} (policy {policies})")?;
    let verb = if dry { "would forget" } else { "forget" };
    for v in &plan.volumes {
        let keep = v.decisions.iter().filter(|d| d.keep()).count();
        writeln!(
            out,
            "  volume {} (policy {}): keep {keep} of {} backup(s)",
            v.volume.name,
            v.policy.as_deref().unwrap_or("-"),
            v.decisions.len()
        )?;
        for d in &v.decisions {
            let reasons: Vec<String> = d.reasons.iter().map(ToString::to_string).collect();
            writeln!(
                out,
                "    {:<12} {}  {}  {}",
                if d.keep() { "keep" } else { verb },
                d.id,
                d.time.format("%Y-%m-%d %H:%M:%S"),
                reasons.join(", ")
            )?;
        }
    }
    writeln!(
        out,
        "{} {} backup(s); {} {} of {} pack(s) and {} {}{}, dropping {} unused chunk(s), {}{}",
        if dry { "would forget" } else { "forgot" },
        r.forgotten,
        if dry { "would delete" } else { "deleted" },
        r.packs_deleted,
        r.packs,
        if dry { "rewrite" } else { "rewrote" },
        r.packs_repacked,
        if dry {
            String::new()
        } else {
            format!(" (into {})", r.packs_written)
        },
        r.blobs_removed,
        bytes(r.bytes_freed),
        if r.corrupt > 0 {
            format!(
                "; {} corrupt chunk(s) dropped (run backup verify --all)",
                r.corrupt
            )
        } else {
            String::new()
        }
    )
}
