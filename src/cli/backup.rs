//! `cinderblock backup …`: run, list, restore, verify, drill, export,
//! import and prune backups by hand (the catalogue and repository commands
//! are in `backup_repo`, restore and drill in `backup_restore`).
//!
//! Parses arguments, loads the manifests (`-f`), builds this host's
//! [`Registry`], and calls the transactions of [`crate::backup::job`] (run,
//! restore, drill) and the repository's operations; draws progress bars on a
//! terminal and prints one summary line per operation (or, for `run
//! --json`, one JSON object). Commands
//! that change the state directory or a back end (run, restore, drill,
//! import, prune) hold the state lock; list, verify and export only read (verify
//! records its findings if the lock is free).
//!
//! Exit codes: 0 success; 1 any error, including damage found by `verify`
//! or `drill`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::backup_repo;
use super::backup_restore::{DrillArgs, RestoreArgs, drill_cmd, restore_cmd};
use crate::backup::engine::{self, Mode};
use crate::backup::{Progress, due, group, job, repo};
use crate::exec::Exec;
use crate::manifest::{self, ManifestSet, Name};
use crate::registry::Registry;
use crate::state::journal::Journal;
use crate::state::lock::StateLock;

#[derive(Debug, Args)]
pub(super) struct BackupArgs {
    #[command(subcommand)]
    command: BackupCommand,
}

#[derive(Debug, Subcommand)]
enum BackupCommand {
    /// Back up a volume now (its `BackupPolicy` names the repository).
    Run(RunArgs),
    /// List the catalogued backups (of one volume).
    List(backup_repo::ListArgs),
    /// Restore a backup into a new volume (or an existing one with --overwrite).
    Restore(RestoreArgs),
    /// Read and check every chunk of a backup (or of all backups).
    Verify(backup_repo::VerifyArgs),
    /// Restore drill: restore the newest backup of each volume of a policy
    /// into scratch space, compare it with the backup's record, remove it.
    Drill(DrillArgs),
    /// Print a backup's self-contained record (JSON) on stdout.
    Export(backup_repo::ExportArgs),
    /// Add a backup from an export record, or every backup of a repository.
    Import(backup_repo::ImportArgs),
    /// Forget backups retention does not keep, then remove unused chunks.
    Prune(backup_repo::PruneArgs),
    /// Manage the key of an encrypted repository.
    Key(backup_repo::KeyArgs),
}

#[derive(Debug, Args)]
pub(super) struct ManifestFiles {
    /// Manifest file or directory (repeatable).
    #[arg(short = 'f', long = "file", value_name = "PATH", default_value = ".")]
    files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["volume", "policy", "group"])))]
struct RunArgs {
    /// The Volume's name (a member of a consistency group with a
    /// backupPolicy is backed up with its whole group).
    volume: Option<String>,
    /// Every member of this `ConsistencyGroup`, from one crash-consistent
    /// group snapshot (the group's backupPolicy names the repository).
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
    /// Every Volume whose backup policy (or whose consistency group's) is
    /// this one; volumes not created yet are skipped.
    #[arg(long, value_name = "NAME")]
    policy: Option<String>,
    /// A full backup (no parent).
    #[arg(long, conflicts_with = "incremental")]
    full: bool,
    /// An incremental against the newest backup (full when there is none).
    #[arg(long)]
    incremental: bool,
    /// Print each run's summary as one JSON object per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    manifests: ManifestFiles,
}

pub(super) fn run(args: &BackupArgs, state: &Path, host: Option<&str>) -> anyhow::Result<i32> {
    let host = host.map_or_else(repo::hostname, str::to_owned);
    match &args.command {
        BackupCommand::Run(a) => run_backup(a, state, &host),
        BackupCommand::List(a) => backup_repo::list(a, state),
        BackupCommand::Restore(a) => restore_cmd(a, state),
        BackupCommand::Verify(a) => backup_repo::verify(a, state),
        BackupCommand::Drill(a) => drill_cmd(a, state),
        BackupCommand::Export(a) => backup_repo::export(a, state),
        BackupCommand::Import(a) => backup_repo::import(a, state),
        BackupCommand::Prune(a) => backup_repo::prune_cmd(a, state),
        BackupCommand::Key(a) => backup_repo::key_cmd(a, state),
    }
}

// ---------------------------------------------------------------------------
// Resolution: manifests → plain values.

pub(super) fn load_manifests(files: &ManifestFiles) -> anyhow::Result<ManifestSet> {
    let loaded = manifest::load_paths(&files.files);
    if loaded.errors() > 0 {
        let mut err = std::io::stderr().lock();
        for d in loaded.diagnostics.iter().filter(|d| d.is_error()) {
            writeln!(err, "{d}")?;
        }
        bail!(
            "the manifests have {} error(s); fix them first (`cinderblock validate`)",
            loaded.errors()
        );
    }
    Ok(loaded.set)
}

pub(super) fn name(text: &str, what: &str) -> anyhow::Result<Name> {
    text.parse::<Name>()
        .map_err(|e| anyhow!("invalid {what} name: {e}"))
}

// ---------------------------------------------------------------------------
// run

fn run_backup(a: &RunArgs, state: &Path, host: &str) -> anyhow::Result<i32> {
    let set = load_manifests(&a.manifests)?;
    if let Some(g) = &a.group {
        let g = name(g, "consistency group")?;
        if !set.consistency_groups.contains_key(&g) {
            return Err(job::JobError::NoGroup(g).into());
        }
        let _lock = StateLock::acquire(state, "backup run")?;
        let mut journal = Journal::open(state)?;
        let registry = Registry::new(&set, host, state, Exec::host());
        run_group_backup(&set, &g, a, state, host, &registry, &mut journal)?;
        return Ok(0);
    }
    let volumes: Vec<Name> = if let Some(p) = &a.policy {
        let p = name(p, "policy")?;
        if !set.backup_policies.contains_key(&p) {
            bail!("no BackupPolicy named {p} in the manifests");
        }
        let v = due::volumes_of(&set, &p);
        if v.is_empty() {
            bail!("no Volume uses BackupPolicy {p}");
        }
        v
    } else {
        vec![name(a.volume.as_deref().unwrap_or_default(), "volume")?]
    };
    let _lock = StateLock::acquire(state, "backup run")?;
    let mut journal = Journal::open(state)?;
    let registry = Registry::new(&set, host, state, Exec::host());
    let mut failed = 0;
    let mut groups_done = std::collections::BTreeSet::new();
    for v in &volumes {
        if let Some(g) = group::group_of(&set, v) {
            if !groups_done.insert(g.clone()) {
                continue;
            }
            if a.volume.is_some() {
                writeln!(
                    std::io::stderr().lock(),
                    "note: {v} is a member of ConsistencyGroup {g}, whose backupPolicy backs every member up together: backing up the group"
                )?;
            }
            match run_group_backup(&set, &g, a, state, host, &registry, &mut journal) {
                Ok(()) => {}
                Err(e) if a.policy.is_some() => {
                    writeln!(std::io::stderr().lock(), "error: group {g}: {e:#}")?;
                    failed += 1;
                }
                Err(e) => return Err(e),
            }
            continue;
        }
        let bar = Bar::new(&format!("backup {v}"));
        let mode = requested_mode(a);
        let result = job::run(&set, v, mode, state, host, &registry, &mut journal, &bar);
        bar.finish();
        match result {
            Ok((repo, report)) => print_run(&report, &repo.location(), a.json)?,
            Err(e @ job::JobError::NotYet(_)) if a.policy.is_some() => {
                writeln!(std::io::stderr().lock(), "skipped {v}: {e}")?;
            }
            Err(e) if a.policy.is_some() => {
                writeln!(
                    std::io::stderr().lock(),
                    "error: {v}: {}",
                    crate::error_chain(&e)
                )?;
                failed += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(i32::from(failed > 0))
}

/// One group backup of `g`, printed: a group line, then each member's.
fn run_group_backup(
    set: &ManifestSet,
    g: &Name,
    a: &RunArgs,
    state: &Path,
    host: &str,
    registry: &Registry<'_>,
    journal: &mut Journal,
) -> anyhow::Result<()> {
    let bar = Bar::new(&format!("backup group {g}"));
    let result = group::run(
        set,
        g,
        requested_mode(a),
        state,
        host,
        registry,
        journal,
        &bar,
    );
    bar.finish();
    let run = result?;
    let location = run.repo.location();
    {
        let mut err = std::io::stderr().lock();
        let r = &run.recovered;
        if r.snapshots > 0 {
            writeln!(
                err,
                "note: removed {} member snapshot(s) an interrupted group backup of {g} left",
                r.snapshots
            )?;
        }
        for id in &r.partial {
            writeln!(
                err,
                "note: group backup {id} of {g} was missing a member (an interrupted run): its members' backups were removed"
            )?;
        }
        for id in &r.catalogued {
            writeln!(
                err,
                "note: group backup {id} of {g} was complete but not catalogued (an interrupted run): catalogued"
            )?;
        }
    }
    if a.json {
        let mut out = std::io::stdout().lock();
        for r in &run.members {
            let mut v = r.summary(&location);
            v["group"] = serde_json::json!({
                "id": run.group.id,
                "name": run.group.name,
                "members": run.group.members,
                "freezeSecs": run.freeze.map(|f| f.as_secs_f64()),
            });
            serde_json::to_writer(&mut out, &v)?;
            writeln!(out)?;
        }
        return Ok(());
    }
    writeln!(
        std::io::stdout().lock(),
        "group backup {} of {g}: {} member(s) ({}) from one group snapshot, {}",
        run.group.id,
        run.members.len(),
        run.group.members.join(", "),
        run.freeze.map_or_else(
            || "taken while no member was in use".to_owned(),
            |f| format!("their writes held {}", secs(f))
        ),
    )?;
    for r in &run.members {
        print_run(r, &location, false)?;
    }
    Ok(())
}

/// The mode `backup run` asked for (`None`: as the policy says).
fn requested_mode(a: &RunArgs) -> Option<Mode> {
    if a.full {
        Some(Mode::Full)
    } else if a.incremental {
        Some(Mode::Incremental)
    } else {
        None
    }
}

/// One run's summary: a line of text, or one JSON object per line.
fn print_run(report: &engine::RunReport, repo: &str, json: bool) -> anyhow::Result<()> {
    let m = &report.manifest;
    let s = &m.stats;
    let dedup = (s.unchanged_chunks + s.dedup_chunks) * u64::from(m.chunk_size);
    // A fallback is said on stderr in both modes: JSON on stdout stays one
    // object per line.
    if report.read.fallback {
        writeln!(
            std::io::stderr().lock(),
            "warning: backup {} of {} fell back to {}: {}",
            m.id,
            m.volume.name,
            report.read.method.as_str(),
            report.read.reason
        )?;
    }
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, &report.summary(repo))?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "backup {}: {} of {} ({} logical) into {}: point in time by {}; read {} in {} range(s), \
         stored {} ({} new chunks, {} before compression), deduplicated {} ({} unchanged, {} \
         already stored), zeros {}; snapshot {}, total {}, {}/s",
        m.id,
        m.kind,
        m.volume.name,
        bytes(m.volume.size),
        repo,
        report.method.as_str(),
        bytes(s.read_bytes),
        s.extents,
        bytes(s.stored_bytes),
        s.new_chunks,
        bytes(s.new_bytes),
        bytes(dedup),
        s.unchanged_chunks,
        s.dedup_chunks,
        bytes(s.zero_chunks * u64::from(m.chunk_size)),
        secs(report.snapshot_time),
        secs(report.elapsed),
        rate(s.read_bytes, report.elapsed),
    )?;
    writeln!(
        out,
        "  read by {}: {}",
        report.read.method.as_str(),
        report.read.reason
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Output helpers.

/// A progress bar on stderr when it is a terminal; invisible otherwise. A
/// spinner with the stage's name until the stage's total is known.
pub(super) struct Bar {
    bar: ProgressBar,
    what: String,
}

impl Bar {
    pub(super) fn new(what: &str) -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
            bar.set_style(style);
        }
        bar.set_message(what.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        Self {
            bar,
            what: what.to_owned(),
        }
    }

    pub(super) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Bar {
    fn stage(&self, stage: &str) {
        self.bar.set_message(format!("{}: {stage}", self.what));
    }
    fn total(&self, n: u64) {
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            self.bar.set_style(style.progress_chars("=> "));
        }
        self.bar.set_position(0);
        self.bar.set_length(n);
    }
    fn advance(&self, n: u64) {
        self.bar.inc(n);
    }
}

// Figures for people: precision loss in the display is fine.
#[allow(clippy::cast_precision_loss)]
pub(super) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

pub(super) fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
pub(super) fn rate(n: u64, d: Duration) -> String {
    let s = d.as_secs_f64();
    if s <= 0.0 {
        return "-".into();
    }
    bytes((n as f64 / s) as u64)
}
