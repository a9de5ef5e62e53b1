//! `cinderblock backup list|verify|export|import|prune|key`: the catalogue and
//! repository maintenance commands, over [`crate::backup::catalog`],
//! [`crate::backup::verify`] and [`crate::backup::job::prune`]; printing
//! only.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use clap::Args;

use super::backup::{Bar, ManifestFiles, bytes, load_manifests, name};
use crate::backup::BackupError;
use crate::backup::catalog::{self, Catalog, Entry};
use crate::backup::format::Record;
use crate::backup::target::{RepoSpec, SecretSource};
use crate::backup::{job, verify};
use crate::state::lock::StateLock;

#[derive(Debug, Args)]
pub(super) struct ListArgs {
    /// Only this volume's backups (and the group backups it is a member of).
    pub(super) volume: Option<String>,
    /// One JSON document: `backups` (backups of volumes alone) and
    /// `groups` (each group backup with its members' backups).
    #[arg(long)]
    pub(super) json: bool,
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
#[command(group(clap::ArgGroup::new("source").required(true).args(["record", "scan", "policy"])))]
pub(super) struct ImportArgs {
    /// An export record file (`-` for stdin).
    pub(super) record: Option<PathBuf>,
    /// Rebuild the catalogue from the repository directory at PATH.
    #[arg(long, value_name = "PATH")]
    pub(super) scan: Option<PathBuf>,
    /// Rebuild the catalogue from this `BackupPolicy`'s target (a share or an
    /// S3 bucket as well as a directory), read from the manifests (`-f`).
    #[arg(long, value_name = "NAME")]
    pub(super) policy: Option<String>,
    /// The repository's path on this host, when it differs from the record's.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["scan", "policy"])]
    pub(super) repository: Option<PathBuf>,
    /// With --scan: the key of an encrypted repository, from this file
    /// (the catalogue keeps the reference, never the key).
    #[arg(
        long,
        value_name = "PATH",
        requires = "scan",
        conflicts_with = "key_env"
    )]
    pub(super) key_file: Option<PathBuf>,
    /// With --scan: the key from this environment variable.
    #[arg(long, value_name = "VAR", requires = "scan")]
    pub(super) key_env: Option<String>,
    #[command(flatten)]
    pub(super) manifests: ManifestFiles,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("sweep-key").args(["sweep_credentials_file", "sweep_credentials_env"])))]
pub(super) struct PruneArgs {
    /// Show what would be forgotten and freed; change nothing.
    #[arg(long)]
    pub(super) dry_run: bool,
    /// Also remove backups and free space on `appendOnly` targets (run
    /// with credentials or permissions that may delete); without it, an
    /// append-only target's backups are only forgotten in the catalogue.
    #[arg(long)]
    pub(super) sweep: bool,
    /// With --sweep: an S3 target's credentials that may delete
    /// (`ACCESS_KEY_ID:SECRET_ACCESS_KEY`) from this file, instead of the
    /// policy's `credentialsRef`.
    #[arg(long, value_name = "PATH", requires = "sweep")]
    pub(super) sweep_credentials_file: Option<PathBuf>,
    /// With --sweep: the same from this environment variable.
    #[arg(long, value_name = "VAR", requires = "sweep")]
    pub(super) sweep_credentials_env: Option<String>,
    #[command(flatten)]
    pub(super) manifests: ManifestFiles,
}

#[derive(Debug, Args)]
pub(super) struct KeyArgs {
    #[command(subcommand)]
    pub(super) command: KeyCommand,
}

#[derive(Debug, clap::Subcommand)]
pub(super) enum KeyCommand {
    /// Wrap the repository's data key under a new key and retire the old
    /// one: no data is rewritten, every backup stays restorable with the
    /// new key. Then point the policy's `encryption.keyRef` at it.
    Rotate(RotateArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("new").required(true).args(["new_key_file", "new_key_env"])))]
pub(super) struct RotateArgs {
    /// The `BackupPolicy` whose repository (and current key) this is.
    #[arg(long, value_name = "NAME")]
    pub(super) policy: String,
    /// The new key, from this file.
    #[arg(long, value_name = "PATH")]
    pub(super) new_key_file: Option<PathBuf>,
    /// The new key, from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub(super) new_key_env: Option<String>,
    #[command(flatten)]
    pub(super) manifests: ManifestFiles,
}

// ---------------------------------------------------------------------------
// list

pub(super) fn list(a: &ListArgs, state: &Path) -> anyhow::Result<i32> {
    let cat = Catalog::load(state)?;
    let wanted = |e: &Entry| a.volume.as_ref().is_none_or(|v| &e.volume.name == v);
    let mut rows: Vec<&Entry> = cat
        .backups
        .values()
        .filter(|e| e.group.is_none() && wanted(e))
        .collect();
    rows.sort_by_key(|e| (e.volume.name.clone(), e.started_at, e.id));
    let mut groups: Vec<_> = cat
        .groups()
        .into_values()
        .filter(|g| g.entries.iter().any(|e| wanted(e)))
        .collect();
    groups.sort_by_key(|g| (g.group.name.clone(), g.started_at(), g.group.id));
    let mut out = std::io::stdout().lock();
    if a.json {
        let doc = serde_json::json!({
            "backups": rows,
            "groups": groups.iter().map(|g| serde_json::json!({
                "id": g.group.id,
                "name": g.group.name,
                "members": g.group.members,
                "startedAt": g.started_at(),
                "status": g.status(),
                "complete": g.complete(),
                "backups": g.entries,
            })).collect::<Vec<_>>(),
        });
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
        return Ok(0);
    }
    if rows.is_empty() && groups.is_empty() {
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
        "{:<36}  {:<20}  {:<16}  {:<11}  {:<24}  {:<8}  {:>10}  {:>10}  STATUS",
        "ID", "TIME (UTC)", "VOLUME", "KIND", "READ", "PARENT", "LOGICAL", "STORED"
    )?;
    for e in rows {
        writeln!(out, "{}", row(e))?;
    }
    for g in &groups {
        let missing = g.missing();
        writeln!(
            out,
            "group {}  {}  {}: {} of {} member(s)  {}{}",
            g.group.id,
            g.started_at().map_or_else(
                || "-".to_owned(),
                |t| t.format("%Y-%m-%d %H:%M:%S").to_string()
            ),
            g.group.name,
            g.group.members.len() - missing.len(),
            g.group.members.len(),
            g.status(),
            if missing.is_empty() {
                String::new()
            } else {
                format!(" (missing {})", missing.join(", "))
            }
        )?;
        for e in &g.entries {
            writeln!(out, "  {}", row(e))?;
        }
    }
    Ok(0)
}

/// One backup's row of `backup list`.
fn row(e: &Entry) -> String {
    format!(
        "{:<36}  {:<20}  {:<16}  {:<11}  {:<24}  {:<8}  {:>10}  {:>10}  {}{}",
        e.id,
        e.started_at.format("%Y-%m-%d %H:%M:%S"),
        e.volume.name,
        e.kind.map_or_else(|| "-".to_owned(), |k| k.to_string()),
        e.read.as_ref().map_or_else(
            || "-".to_owned(),
            |r| if r.fallback {
                format!("{} (fallback)", r.method.as_str())
            } else {
                r.method.as_str().to_owned()
            }
        ),
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
    )
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
    for t in &work {
        let (repo, _, manifests) = t;
        let bar = Bar::new(&format!("verify {}", repo.location()));
        let c = verify::check(repo, manifests, a.all, &bar);
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
        for (pack, why) in &c.damaged_packs {
            damaged += 1;
            writeln!(out, "DAMAGED  pack {pack}: {why}")?;
        }
        writeln!(
            out,
            "checked {} unique chunks ({}) in {}: {} missing, {} corrupt",
            c.chunks,
            bytes(c.bytes),
            c.location,
            c.missing,
            c.corrupt
        )?;
        checked.push((t, c));
    }
    // Record what was found, if nobody else holds the state directory.
    match StateLock::acquire(state, "backup verify") {
        Ok(_lock) => {
            let pairs: Vec<_> = checked.iter().map(|(t, c)| (*t, c)).collect();
            verify::record(state, &pairs)?;
        }
        Err(e) => tracing::warn!(error = %e, "verify results not recorded in the catalogue"),
    }
    Ok(i32::from(damaged > 0))
}

// ---------------------------------------------------------------------------
// export / import

pub(super) fn export(a: &ExportArgs, state: &Path) -> anyhow::Result<i32> {
    let cat = Catalog::load(state)?;
    let (repo, spec, m) = job::locate(&cat, &a.id)?;
    let record = catalog::export(&repo, &spec, &m);
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &record)?;
    writeln!(out)?;
    Ok(0)
}

pub(super) fn import(a: &ImportArgs, state: &Path) -> anyhow::Result<i32> {
    let _lock = StateLock::acquire(state, "backup import")?;
    let mut cat = Catalog::load(state)?;
    let mut out = std::io::stdout().lock();
    let scan = match (&a.scan, &a.policy) {
        (Some(path), _) => {
            let mut spec = RepoSpec::dir(path);
            spec.key = match (&a.key_file, &a.key_env) {
                (Some(f), _) => Some(SecretSource::File(std::path::absolute(f)?)),
                (None, Some(v)) => Some(SecretSource::Env(v.clone())),
                (None, None) => None,
            };
            Some(spec)
        }
        (None, Some(p)) => {
            let set = load_manifests(&a.manifests)?;
            let p = name(p, "policy")?;
            let doc = set
                .backup_policies
                .get(&p)
                .ok_or_else(|| anyhow!("no BackupPolicy named {p} in the manifests"))?;
            Some(
                RepoSpec::from_policy(&doc.spec, state)
                    .ok_or_else(|| job::JobError::NoTarget(p.clone()))?,
            )
        }
        (None, None) => None,
    };
    if let Some(spec) = scan {
        let repo = match spec.open() {
            Err(e @ BackupError::KeyNeeded { .. }) if a.scan.is_some() => {
                return Err(anyhow::Error::from(e)
                    .context("give its key with --key-file PATH or --key-env VAR"));
            }
            r => r?,
        };
        let (n, bad) = cat.scan(&repo, &spec)?;
        cat.store(state)?;
        for e in &bad {
            writeln!(std::io::stderr().lock(), "error: {}", crate::error_chain(e))?;
        }
        writeln!(
            out,
            "scanned {} (repository {}): {n} backup(s) in the catalogue{}",
            repo.location(),
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
    let (repo, spec, written) = catalog::import(&record, a.repository.as_deref())?;
    cat.add(&record.backup, &repo, &spec);
    cat.store(state)?;
    writeln!(
        out,
        "imported backup {} of volume {} ({}) from {}{}",
        record.backup.id,
        record.backup.volume.name,
        record.backup.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        repo.location(),
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
    let sweep = job::Sweep {
        append_only_too: a.sweep,
        credentials: match (&a.sweep_credentials_file, &a.sweep_credentials_env) {
            (Some(f), _) => Some(SecretSource::File(f.clone())),
            (None, Some(v)) => Some(SecretSource::Env(v.clone())),
            (None, None) => None,
        },
    };
    let _lock = StateLock::acquire(state, "backup prune")?;
    let dry = a.dry_run;
    job::prune(&set, state, dry, &sweep, &mut |p| print_prune(p, dry))?;
    Ok(0)
}

/// One repository's prune: retention's verdicts, then what the sweep did.
fn print_prune(p: &job::Pruned, dry: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let (path, policies) = (&p.location, p.policies.join(", "));
    let Some((plan, report)) = &p.outcome else {
        return writeln!(out, "repository {path} (policy {policies}): none yet");
    };
    writeln!(
        out,
        "repository {path} (policy {policies}){}",
        if p.append_only { " (append-only)" } else { "" }
    )?;
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
    let Some(r) = report else {
        return writeln!(
            out,
            "{} {} backup(s) in the catalogue only: {path} is append-only; `backup prune --sweep` with credentials that may delete removes them and frees the space",
            if dry { "would forget" } else { "forgot" },
            plan.forget.len()
        );
    };
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
    )?;
    if r.packs_in_grace > 0 {
        writeln!(
            out,
            "left {} pack(s) alone: written since a backup that may still be running started (its session is not over); a later prune frees what they hold",
            r.packs_in_grace
        )?;
    }
    if r.missing > 0 {
        writeln!(
            out,
            "warning: kept backups reference {} chunk(s) that no pack holds: run backup verify --all",
            r.missing
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// key

pub(super) fn key_cmd(a: &KeyArgs, state: &Path) -> anyhow::Result<i32> {
    let KeyCommand::Rotate(r) = &a.command;
    let set = load_manifests(&r.manifests)?;
    let p = name(&r.policy, "policy")?;
    if !set.backup_policies.contains_key(&p) {
        bail!("no BackupPolicy named {p} in the manifests");
    }
    let new = match (&r.new_key_file, &r.new_key_env) {
        (Some(f), _) => SecretSource::File(f.clone()),
        (None, Some(v)) => SecretSource::Env(v.clone()),
        (None, None) => bail!("give --new-key-file or --new-key-env"),
    };
    let _lock = StateLock::acquire(state, "backup key rotate")?;
    let done = job::rotate_key(&set, state, &p, &new)?;
    writeln!(
        std::io::stdout().lock(),
        "rotated the key of {}: its data key is now wrapped under {}; {}; no data rewritten. Point BackupPolicy {p}'s encryption.keyRef at the new key.",
        done.location,
        done.from,
        if done.append_only {
            "the old key file stays (append-only target), so the old key opens it too".to_owned()
        } else {
            format!("{} key file(s) of the old key removed", done.removed)
        }
    )?;
    Ok(0)
}
