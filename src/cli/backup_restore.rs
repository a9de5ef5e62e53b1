//! `cinderblock backup restore` (one backup, or every member of a group
//! backup) and `cinderblock backup drill`: their arguments, the calls into
//! [`crate::backup::job`] and [`crate::backup::group`] under the state lock,
//! and their summary lines. The other backup commands are in `backup`.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::anyhow;
use clap::Args;

use super::backup::{Bar, ManifestFiles, bytes, load_manifests, name, rate, secs};
use crate::backup::catalog::Catalog;
use crate::backup::checks::CheckKind;
use crate::backup::format::Manifest;
use crate::backup::{group, job};
use crate::exec::Exec;
use crate::registry::Registry;
use crate::state::journal::Journal;
use crate::state::lock::StateLock;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "group"])))]
pub(super) struct RestoreArgs {
    /// The backup's id (or a unique prefix of at least 4 hex digits).
    id: Option<String>,
    /// The volume to restore into: created when it does not exist.
    #[arg(long, value_name = "VOLUME", required_unless_present = "group")]
    to: Option<String>,
    /// Restore every member of this group backup (its id, or a unique
    /// prefix, from `backup list`): into new volumes named
    /// `<member>-<first 8 hex digits of the id>` (see --suffix), or with
    /// --overwrite over the members themselves.
    #[arg(long, value_name = "ID", conflicts_with_all = ["id", "to"])]
    group: Option<String>,
    /// With --group: name each new volume `<member><SUFFIX>`.
    #[arg(
        long,
        value_name = "SUFFIX",
        requires = "group",
        conflicts_with = "overwrite"
    )]
    suffix: Option<String>,
    /// Replace the content of an existing volume (with --group: of every
    /// member, refused if any is in use).
    #[arg(long)]
    overwrite: bool,
    /// The back end (file or lvm) to restore into (default: the backup's own).
    #[arg(long, value_name = "NAME")]
    backend: Option<String>,
    #[command(flatten)]
    manifests: ManifestFiles,
}

#[derive(Debug, Args)]
pub(super) struct DrillArgs {
    /// The `BackupPolicy` whose repository and volumes to drill.
    #[arg(long, value_name = "NAME")]
    policy: String,
    #[command(flatten)]
    manifests: ManifestFiles,
}

// ---------------------------------------------------------------------------
// drill

/// `backup drill --policy NAME`.
pub(super) fn drill_cmd(a: &DrillArgs, state: &Path) -> anyhow::Result<i32> {
    let set = load_manifests(&a.manifests)?;
    let p = name(&a.policy, "policy")?;
    let doc = set
        .backup_policies
        .get(&p)
        .ok_or_else(|| anyhow!("no BackupPolicy named {p} in the manifests"))?;
    let _lock = StateLock::acquire(state, "backup drill")?;
    let bar = Bar::new(&format!("drill {p}"));
    let summary = job::check(&doc.spec, &p, CheckKind::Drill, 0, state, &bar);
    bar.finish();
    let summary = summary?;
    writeln!(
        std::io::stdout().lock(),
        "drill of policy {p}: {}",
        summary.text
    )?;
    for problem in &summary.problems {
        writeln!(std::io::stderr().lock(), "error: damaged: {problem}")?;
    }
    Ok(i32::from(!summary.problems.is_empty()))
}

// ---------------------------------------------------------------------------
// restore

#[allow(clippy::too_many_lines)] // as run_backup
pub(super) fn restore_cmd(a: &RestoreArgs, state: &Path) -> anyhow::Result<i32> {
    if let Some(g) = &a.group {
        return restore_group_cmd(a, g, state);
    }
    let to = name(a.to.as_deref().unwrap_or_default(), "target volume")?;
    let cat = Catalog::load(state)?;
    let (repo, _, m) = job::locate(&cat, a.id.as_deref().unwrap_or_default())?;
    let set = load_manifests(&a.manifests)?;
    let backend = match &a.backend {
        Some(b) => name(b, "back end")?,
        None => name(&m.volume.backend, "back end")?,
    };
    if !set.backends.contains_key(&backend) {
        return Err(job::JobError::UnknownBackend(backend).into());
    }
    let registry = Registry::all(&set, state, Exec::host());
    let _lock = StateLock::acquire(state, "backup restore")?;
    let mut journal = Journal::open(state)?;
    let started = Instant::now();
    let bar = Bar::new(&format!("restore {to}"));
    let result = job::restore(
        &repo,
        &m,
        &registry,
        &backend,
        &to,
        a.overwrite,
        &mut journal,
        &bar,
    );
    bar.finish();
    let done = result?;
    finish_restore(
        &done,
        &m,
        to.as_str(),
        backend.as_str(),
        started,
        set.volumes.contains_key(&to),
    )
}

/// `backup restore --group ID`: every member of a group backup.
fn restore_group_cmd(a: &RestoreArgs, text: &str, state: &Path) -> anyhow::Result<i32> {
    let cat = Catalog::load(state)?;
    // Misuse is said before the manifests are read or the lock taken.
    group::resolve(&cat, text)?;
    let set = load_manifests(&a.manifests)?;
    let backend = a
        .backend
        .as_deref()
        .map(|b| name(b, "back end"))
        .transpose()?;
    if let Some(b) = &backend
        && !set.backends.contains_key(b)
    {
        return Err(job::JobError::UnknownBackend(b.clone()).into());
    }
    let registry = Registry::all(&set, state, Exec::host());
    let _lock = StateLock::acquire(state, "backup restore")?;
    let mut journal = Journal::open(state)?;
    let started = Instant::now();
    let bar = Bar::new("restore group");
    let result = group::restore(
        &cat,
        text,
        &registry,
        &group::GroupTarget {
            overwrite: a.overwrite,
            suffix: a.suffix.clone(),
            backend,
        },
        &mut journal,
        &bar,
    );
    bar.finish();
    let done = result?;
    writeln!(
        std::io::stdout().lock(),
        "restored group backup {} of {} ({} member(s)) {}:",
        done.group.id,
        done.group.name,
        done.members.len(),
        if a.overwrite {
            "over its members".to_owned()
        } else {
            format!(
                "into new volumes named <member>{}",
                a.suffix
                    .clone()
                    .unwrap_or_else(|| format!("-{}", &done.group.id.simple().to_string()[..8]))
            )
        }
    )?;
    for (m, to, backend, r) in &done.members {
        finish_restore(
            r,
            m,
            to.as_str(),
            backend.as_str(),
            started,
            set.volumes.contains_key(to),
        )?;
    }
    Ok(0)
}

/// Prints a restore's summary line (and, for a volume the manifests do not
/// declare, what the next apply will do).
fn finish_restore(
    done: &job::Restored,
    m: &Manifest,
    to: &str,
    backend_name: &str,
    started: Instant,
    declared: bool,
) -> anyhow::Result<i32> {
    let (uuid, done) = (done.uuid, &done.stats);
    {
        {
            if !declared {
                writeln!(
                    std::io::stderr().lock(),
                    "note: Volume {to} is not in the manifests: declare it (`source: {{backup: \
                     {{policy: ..., id: {}}}}}` restores the same way through plan/apply) to keep \
                     managing it; otherwise the next apply forgets it (its data stays)",
                    m.id
                )?;
            }
            let elapsed = started.elapsed();
            writeln!(
                std::io::stdout().lock(),
                "restored backup {} ({} at {}) into volume {to} ({uuid}) on {backend_name}: {} in {} \
                 chunks verified, {} written, {}, {}/s",
                m.id,
                m.volume.name,
                m.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                bytes(done.bytes),
                done.chunks,
                bytes(done.written),
                secs(elapsed),
                rate(done.bytes, elapsed),
            )?;
        }
    }
    Ok(0)
}
