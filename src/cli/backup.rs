//! `cinderblock backup …`: run, list, restore, verify, export, import and
//! prune backups by hand.
//!
//! Resolves names from the manifests (`-f`), the `file` back ends' sidecars
//! and the `lvm` back ends' LV tags into the plain values [`crate::backup`]
//! takes, draws progress bars on a terminal, and prints one summary line per
//! operation (or, for `run --json`, one JSON object). Commands
//! that change the state directory or a back end (run, restore, import,
//! prune) hold the state lock; list, verify and export only read (verify
//! records its findings if the lock is free).
//!
//! Exit codes: 0 success; 1 any error, including damage found by `verify`.

use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use chrono::Utc;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use uuid::Uuid;

use crate::agent::schedule::{BackupJob, BackupRunner, BackupSummary};
use crate::backup::catalog::{self, Catalog, Entry, Status};
use crate::backup::engine::{self, Mode, RunSpec};
use crate::backup::format::{self, Codec, Digest, Manifest, Record};
use crate::backup::restore::{self, Target};
use crate::backup::target::{RepoSpec, SecretSource};
use crate::backup::{BackupError, Progress, Repository, prune, repo};
use crate::file::{self, FileBackend, Mark, ObjKind};
use crate::manifest::{self, ManifestSet, Name};
use crate::state::journal::{Journal, Outcome};
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
    List(ListArgs),
    /// Restore a backup into a new volume (or an existing one with --overwrite).
    Restore(RestoreArgs),
    /// Read and check every chunk of a backup (or of all backups).
    Verify(VerifyArgs),
    /// Print a backup's self-contained record (JSON) on stdout.
    Export(ExportArgs),
    /// Add a backup from an export record, or every backup of a repository.
    Import(ImportArgs),
    /// Forget backups retention does not keep, then remove unused chunks.
    Prune(PruneArgs),
    /// Manage the key of an encrypted repository.
    Key(KeyArgs),
}

#[derive(Debug, Args)]
struct KeyArgs {
    #[command(subcommand)]
    command: KeyCommand,
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Wrap the repository's data key under a new key and retire the old
    /// one: no data is rewritten, every backup stays restorable with the
    /// new key. Then point the policy's `encryption.keyRef` at it.
    Rotate(RotateArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("new").required(true).args(["new_key_file", "new_key_env"])))]
struct RotateArgs {
    /// The `BackupPolicy` whose repository (and current key) this is.
    #[arg(long, value_name = "NAME")]
    policy: String,
    /// The new key, from this file.
    #[arg(long, value_name = "PATH")]
    new_key_file: Option<PathBuf>,
    /// The new key, from this environment variable.
    #[arg(long, value_name = "VAR")]
    new_key_env: Option<String>,
    #[command(flatten)]
    manifests: ManifestFiles,
}

#[derive(Debug, Args)]
struct ManifestFiles {
    /// Manifest file or directory (repeatable).
    #[arg(short = 'f', long = "file", value_name = "PATH", default_value = ".")]
    files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["volume", "policy"])))]
struct RunArgs {
    /// The Volume's name.
    volume: Option<String>,
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

#[derive(Debug, Args)]
struct ListArgs {
    /// Only this volume's backups.
    volume: Option<String>,
}

#[derive(Debug, Args)]
struct RestoreArgs {
    /// The backup's id (or a unique prefix of at least 4 hex digits).
    id: String,
    /// The volume to restore into: created when it does not exist.
    #[arg(long, value_name = "VOLUME")]
    to: String,
    /// Replace the content of an existing volume.
    #[arg(long)]
    overwrite: bool,
    /// The back end (file or lvm) to restore into (default: the backup's own).
    #[arg(long, value_name = "NAME")]
    backend: Option<String>,
    #[command(flatten)]
    manifests: ManifestFiles,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
struct VerifyArgs {
    /// The backup's id (or a unique prefix).
    id: Option<String>,
    /// Every backup in every catalogued repository.
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// The backup's id (or a unique prefix).
    id: String,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["record", "scan", "policy"])))]
struct ImportArgs {
    /// An export record file (`-` for stdin).
    record: Option<PathBuf>,
    /// Rebuild the catalogue from the repository directory at PATH.
    #[arg(long, value_name = "PATH")]
    scan: Option<PathBuf>,
    /// Rebuild the catalogue from this `BackupPolicy`'s target (a share or an
    /// S3 bucket as well as a directory), read from the manifests (`-f`).
    #[arg(long, value_name = "NAME")]
    policy: Option<String>,
    /// The repository's path on this host, when it differs from the record's.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["scan", "policy"])]
    repository: Option<PathBuf>,
    #[command(flatten)]
    manifests: ManifestFiles,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("sweep-key").args(["sweep_credentials_file", "sweep_credentials_env"])))]
struct PruneArgs {
    /// Show what would be forgotten and freed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also remove backups and free space on `appendOnly` targets (run
    /// with credentials or permissions that may delete); without it, an
    /// append-only target's backups are only forgotten in the catalogue.
    #[arg(long)]
    sweep: bool,
    /// With --sweep: an S3 target's credentials that may delete
    /// (`ACCESS_KEY_ID:SECRET_ACCESS_KEY`) from this file, instead of the
    /// policy's `credentialsRef`.
    #[arg(long, value_name = "PATH", requires = "sweep")]
    sweep_credentials_file: Option<PathBuf>,
    /// With --sweep: the same from this environment variable.
    #[arg(long, value_name = "VAR", requires = "sweep")]
    sweep_credentials_env: Option<String>,
    #[command(flatten)]
    manifests: ManifestFiles,
}

pub(super) fn run(args: &BackupArgs, state: &Path, host: Option<&str>) -> anyhow::Result<i32> {
    let host = host.map_or_else(repo::hostname, str::to_owned);
    match &args.command {
        BackupCommand::Run(a) => run_backup(a, state, &host),
        BackupCommand::List(a) => list(a, state),
        BackupCommand::Restore(a) => restore_cmd(a, state),
        BackupCommand::Verify(a) => verify(a, state),
        BackupCommand::Export(a) => export(a, state),
        BackupCommand::Import(a) => import(a, state),
        BackupCommand::Prune(a) => prune_cmd(a, state),
        BackupCommand::Key(a) => key_cmd(a, state),
    }
}

// ---------------------------------------------------------------------------
// Resolution: manifests → plain values.

fn load_manifests(files: &ManifestFiles) -> anyhow::Result<ManifestSet> {
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

fn name(text: &str, what: &str) -> anyhow::Result<Name> {
    text.parse::<Name>()
        .map_err(|e| anyhow!("invalid {what} name: {e}"))
}

/// Every `file` back end of the manifests: (manifest name, driver).
fn file_backends(set: &ManifestSet, state: &Path) -> Vec<(Name, FileBackend)> {
    set.backends
        .iter()
        .filter_map(|(n, d)| {
            d.spec.file.as_ref().map(|f| {
                (
                    n.clone(),
                    FileBackend::new(f.path.resolve(state), n.as_str()),
                )
            })
        })
        .collect()
}

/// Finds the ready volume object named `volume` on the candidate back ends.
fn find_volume(
    candidates: &[(Name, FileBackend)],
    volume: &str,
) -> anyhow::Result<Option<(FileBackend, file::ObjectMeta)>> {
    let mut hits = Vec::new();
    for (n, be) in candidates {
        if !be.root().is_dir() {
            continue;
        }
        let inv = be
            .discover()
            .with_context(|| format!("cannot discover back end {n}"))?;
        for o in inv.objects {
            if o.meta.kind == ObjKind::Volume && o.meta.name == volume {
                hits.push((be.clone(), o.meta));
            }
        }
    }
    if hits.len() > 1 {
        let list: Vec<String> = hits
            .iter()
            .map(|(b, m)| format!("{} on {}", m.uuid, b.backend()))
            .collect();
        bail!(
            "{} volume objects are named {volume:?} ({}); remove the stray one",
            hits.len(),
            list.join(", ")
        );
    }
    Ok(hits.pop())
}

// ---------------------------------------------------------------------------
// run

fn run_backup(a: &RunArgs, state: &Path, host: &str) -> anyhow::Result<i32> {
    let set = load_manifests(&a.manifests)?;
    let volumes: Vec<Name> = if let Some(p) = &a.policy {
        let p = name(p, "policy")?;
        if !set.backup_policies.contains_key(&p) {
            bail!("no BackupPolicy named {p} in the manifests");
        }
        let v: Vec<Name> = set
            .volumes
            .iter()
            .filter(|(_, d)| policy_of(&set, &d.spec).as_ref() == Some(&p))
            .map(|(n, _)| n.clone())
            .collect();
        if v.is_empty() {
            bail!("no Volume uses BackupPolicy {p}");
        }
        v
    } else {
        vec![name(a.volume.as_deref().unwrap_or_default(), "volume")?]
    };
    let _lock = StateLock::acquire(state, "backup run")?;
    let mut journal = Journal::open(state)?;
    let mut failed = 0;
    for v in &volumes {
        let bar = Bar::new(&format!("backup {v}"));
        let result = run_one(&set, v, requested_mode(a), state, host, &mut journal, &bar);
        bar.finish();
        match result {
            Ok((repo, report)) => print_run(&report, &repo.location(), a.json)?,
            Err(e) if a.policy.is_some() => {
                if e.downcast_ref::<NotYet>().is_some() {
                    writeln!(std::io::stderr().lock(), "skipped {v}: {e}")?;
                } else {
                    writeln!(std::io::stderr().lock(), "error: {v}: {e:#}")?;
                    failed += 1;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(i32::from(failed > 0))
}

/// The volume's backup policy, or its consistency group's.
pub(super) fn policy_of(set: &ManifestSet, vol: &manifest::VolumeSpec) -> Option<Name> {
    vol.backup_policy.clone().or_else(|| {
        vol.consistency_group
            .as_ref()
            .and_then(|g| set.consistency_groups.get(g))
            .and_then(|g| g.spec.backup_policy.clone())
    })
}

/// A volume that is declared but not created yet (nothing to back up).
#[derive(Debug, thiserror::Error)]
#[error("Volume {0} does not exist on any back end yet (nothing to back up)")]
struct NotYet(Name);

/// Where a volume to back up lives.
enum Found {
    File(FileBackend),
    Lvm(crate::lvm::LvmBackend<'static>, Name),
}

/// The volume's identity for the catalogue.
struct FoundVolume {
    uuid: Uuid,
    name: String,
    backend: String,
    size: u64,
    /// lvm2 reports its LV open (files: always `false`; ask `inuse`).
    open: bool,
}

/// Every `lvm` back end of this host in the manifests: (name, driver).
fn lvm_backends(set: &ManifestSet, host: &str) -> Vec<(Name, crate::lvm::LvmBackend<'static>)> {
    lvm_backends_all(set)
        .into_iter()
        .filter(|(n, _)| {
            set.backends
                .get(n)
                .is_some_and(|d| d.spec.host.as_deref().is_none_or(|h| h == host))
        })
        .collect()
}

/// Every `lvm` back end in the manifests, whatever its host.
fn lvm_backends_all(set: &ManifestSet) -> Vec<(Name, crate::lvm::LvmBackend<'static>)> {
    set.backends
        .iter()
        .filter_map(|(n, d)| {
            d.spec.lvm.as_ref().map(|l| {
                let wipe = match d.spec.volume_clear.unwrap_or_default() {
                    manifest::kinds::VolumeClear::Zero => crate::lvm::Wipe::Zero,
                    manifest::kinds::VolumeClear::None => crate::lvm::Wipe::None,
                };
                (
                    n.clone(),
                    crate::lvm::LvmBackend::new(
                        crate::exec::Exec::host(),
                        n.as_str(),
                        l.volume_group.as_str(),
                        l.thin_pool.as_ref().map(|p| p.as_str().to_owned()),
                        wipe,
                    ),
                )
            })
        })
        .collect()
}

/// Finds the ready volume named `volume` among the LVs of the `lvm` back
/// ends: (back end, its name, identity).
fn find_lvm_volume(
    candidates: Vec<(Name, crate::lvm::LvmBackend<'static>)>,
    volume: &str,
) -> anyhow::Result<Option<(Found, FoundVolume)>> {
    use crate::lvm::tags::{self, Ownership};
    let mut hits = Vec::new();
    for (n, be) in candidates {
        let lvs = be
            .lvs()
            .with_context(|| format!("cannot discover back end {n}"))?;
        let found = lvs
            .iter()
            .find_map(|lv| match tags::ownership(lv, n.as_str()) {
                Ownership::Ours(o) if o.kind == ObjKind::Volume && o.name == volume => {
                    Some((o, lv.size, lv.attr.open))
                }
                _ => None,
            });
        if let Some((o, size, open)) = found {
            if o.mark != crate::model::Mark::Ready {
                bail!(
                    "Volume {volume} ({}) is {}, not ready",
                    o.uuid,
                    o.mark.as_str()
                );
            }
            hits.push((
                Found::Lvm(be, n.clone()),
                FoundVolume {
                    uuid: o.uuid,
                    name: o.name,
                    backend: n.to_string(),
                    size,
                    open,
                },
            ));
        }
    }
    if hits.len() > 1 {
        bail!(
            "{} LVs of ours are volumes named {volume:?}; remove the stray one",
            hits.len()
        );
    }
    Ok(hits.pop())
}

// Each command reads top to bottom as its steps; splitting would only add
// parameters.
#[allow(clippy::too_many_lines)]
fn run_one(
    set: &ManifestSet,
    vol_name: &Name,
    mode: Option<Mode>,
    state: &Path,
    host: &str,
    journal: &mut Journal,
    progress: &dyn Progress,
) -> anyhow::Result<(Repository, engine::RunReport)> {
    let vol = set
        .volumes
        .get(vol_name)
        .ok_or_else(|| anyhow!("no Volume named {vol_name} in the manifests"))?;
    let policy_name = policy_of(set, &vol.spec).ok_or_else(|| {
        anyhow!("Volume {vol_name} has no backupPolicy (nor its consistency group)")
    })?;
    let policy = set
        .backup_policies
        .get(&policy_name)
        .ok_or_else(|| anyhow!("BackupPolicy {policy_name} is not in the manifests"))?;
    let mut candidates = file_backends(set, state);
    let mut lvm_candidates = lvm_backends(set, host);
    if let Some(pin) = &vol.spec.backend {
        candidates.retain(|(n, _)| n == pin);
        lvm_candidates.retain(|(n, _)| n == pin);
    }
    if candidates.is_empty() && lvm_candidates.is_empty() {
        bail!("Volume {vol_name}: no file or lvm back end of this host to look in");
    }
    let (found, object) = match find_volume(&candidates, vol_name.as_str())? {
        Some((backend, object)) => {
            if object.state != Mark::Ready {
                bail!(
                    "Volume {vol_name} ({}) is {:?}, not ready",
                    object.uuid,
                    object.state
                );
            }
            let v = FoundVolume {
                uuid: object.uuid,
                name: object.name.clone(),
                backend: backend.backend().to_owned(),
                size: object.size,
                open: false,
            };
            (Found::File(backend), v)
        }
        None if lvm_candidates.is_empty() => return Err(NotYet(vol_name.clone()).into()),
        None => match find_lvm_volume(lvm_candidates, vol_name.as_str())? {
            Some(f) => f,
            None => return Err(NotYet(vol_name.clone()).into()),
        },
    };
    let mode = mode.unwrap_or(Mode::Policy {
        incremental: policy.spec.incremental,
        full_every: policy.spec.full_every,
    });
    let spec = RepoSpec::from_policy(&policy.spec, state)
        .ok_or_else(|| anyhow!("BackupPolicy {policy_name} names no target"))?;
    let codec = Codec::from(policy.spec.compression);
    let id = Uuid::new_v4();
    let intent = journal.intent(id, 0, &format!("backup run {vol_name} ({id})"))?;
    let started_at = Utc::now();
    let result = spec.open_or_init(codec).and_then(|repo| {
        let r = match &found {
            Found::File(backend) => engine::run(
                &RunSpec {
                    id,
                    repo: &repo,
                    backend,
                    volume: object.uuid,
                    policy: Some(policy_name.as_str()),
                    mode,
                    codec,
                    host,
                    direct: !policy.spec.force,
                    exported: vol.spec.export.is_some(),
                },
                progress,
            ),
            Found::Lvm(lvm, backend) => crate::backup::lvm_source::run(
                &crate::backup::lvm_source::LvmRunSpec {
                    id,
                    repo: &repo,
                    lvm,
                    backend: backend.as_str(),
                    volume: object.uuid,
                    policy: Some(policy_name.as_str()),
                    mode,
                    codec,
                    host,
                    force: policy.spec.force,
                },
                progress,
            ),
        };
        r.map(|r| (repo, r))
    });
    let _catalog = CATALOG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut cat = Catalog::load(state)?;
    match result {
        Ok((repo, report)) => {
            journal.outcome(&intent, Outcome::Changed, None)?;
            cat.add(&report.manifest, &repo, &spec);
            cat.store(state)?;
            Ok((repo, report))
        }
        Err(e) => {
            let text = chain(&e);
            journal.outcome(&intent, Outcome::Failed, Some(text.clone()))?;
            cat.backups.insert(
                id,
                Entry {
                    id,
                    repository: spec.location(),
                    target: Some(spec.clone()),
                    repository_id: None,
                    volume: format::VolumeRef {
                        uuid: object.uuid,
                        name: object.name.clone(),
                        backend: object.backend.clone(),
                        size: object.size,
                    },
                    policy: Some(policy_name.to_string()),
                    kind: None,
                    parent: None,
                    started_at,
                    read_bytes: 0,
                    stored_bytes: 0,
                    status: Status::Failed,
                    detail: Some(text),
                    verified_at: None,
                },
            );
            cat.store(state)?;
            Err(e.into())
        }
    }
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
    let mut out = std::io::stdout().lock();
    if json {
        let v = serde_json::json!({
            "id": m.id,
            "volume": m.volume.name,
            "kind": m.kind.to_string(),
            "parent": m.parent,
            "pointInTime": report.method.as_str(),
            "size": m.volume.size,
            "readBytes": s.read_bytes,
            "extents": s.extents,
            "storedBytes": s.stored_bytes,
            "newChunks": s.new_chunks,
            "newBytes": s.new_bytes,
            "unchangedChunks": s.unchanged_chunks,
            "dedupChunks": s.dedup_chunks,
            "zeroChunks": s.zero_chunks,
            "chunks": s.chunks,
            "snapshotSecs": report.snapshot_time.as_secs_f64(),
            "elapsedSecs": report.elapsed.as_secs_f64(),
            "repository": repo,
        });
        serde_json::to_writer(&mut out, &v)?;
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
    Ok(())
}

/// Serialises the catalogue's read-modify-write between the agent's backup
/// threads (the state lock keeps other processes out).
static CATALOG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The agent's backup engine: runs a scheduled backup exactly as
/// `backup run` would (same journal records, same catalogue entry, same
/// repository), then applies the policy's retention to that volume. Called
/// on the agent's blocking threads while the agent holds the state lock for
/// its whole life, so it never takes the lock itself.
#[derive(Debug)]
pub(crate) struct EngineRunner {
    /// This host's name (recorded in each backup).
    pub(crate) host: String,
}

impl BackupRunner for EngineRunner {
    fn run(&self, job: &BackupJob) -> Result<BackupSummary, String> {
        let fail = |e: anyhow::Error| format!("{e:#}");
        let vol = name(&job.volume, "volume").map_err(fail)?;
        let mut journal = Journal::open(&job.state_dir).map_err(|e| crate::error_chain(&e))?;
        let progress = LogProgress::new(&job.volume);
        let (repo, report) = run_one(
            &job.manifests,
            &vol,
            None,
            &job.state_dir,
            &self.host,
            &mut journal,
            &progress,
        )
        .map_err(fail)?;
        let m = &report.manifest;
        tracing::info!(
            volume = %job.volume,
            backup = %m.id,
            kind = %m.kind,
            read_bytes = m.stats.read_bytes,
            stored_bytes = m.stats.stored_bytes,
            secs = report.elapsed.as_secs_f64(),
            "scheduled backup done"
        );
        let pruned = match retain(&repo, job, m.volume.uuid) {
            Ok(n) => n,
            Err(e) => {
                // The backup itself is good; retention runs again after the
                // next one.
                tracing::warn!(volume = %job.volume, error = %format!("{e:#}"), "retention not applied");
                0
            }
        };
        Ok(BackupSummary {
            id: m.id.to_string(),
            stored_bytes: m.stats.stored_bytes,
            pruned,
        })
    }
}

/// Applies `job`'s policy retention to the volume's backups in `repo`:
/// forgets what the rules do not keep and, when the repository is free,
/// sweeps the chunks only they used (otherwise the next `backup prune` or
/// scheduled run does). Returns how many backups were forgotten.
fn retain(repo: &Repository, job: &BackupJob, volume: Uuid) -> anyhow::Result<usize> {
    if job.spec.retention.is_none() {
        return Ok(0);
    }
    let manifests = repo.volume_manifests(volume)?;
    let _catalog = CATALOG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut cat = Catalog::load(&job.state_dir)?;
    let damaged = cat.damaged();
    let rules = |p: Option<&str>| {
        (p == Some(job.policy.as_str()))
            .then(|| job.spec.retention.clone())
            .flatten()
    };
    let plan = prune::plan(&manifests, &rules, &|id| damaged.contains(&id));
    if plan.forget.is_empty() {
        return Ok(0);
    }
    for v in &plan.volumes {
        for d in &v.decisions {
            let reasons: Vec<String> = d.reasons.iter().map(ToString::to_string).collect();
            tracing::debug!(volume = %v.volume.name, backup = %d.id, keep = d.keep(), reasons = %reasons.join(", "), "retention");
        }
    }
    let forgotten = if repo.is_append_only() {
        // Nothing is removed there: `backup prune --sweep` does that.
        tracing::info!(
            volume = %job.volume,
            forgotten = plan.forget.len(),
            "retention applied in the catalogue only (append-only target)"
        );
        plan.forget.len()
    } else {
        match prune::execute(repo, &plan, false) {
            Ok(r) => {
                tracing::info!(
                    volume = %job.volume,
                    forgotten = r.forgotten,
                    packs_deleted = r.packs_deleted,
                    bytes_freed = r.bytes_freed,
                    "retention applied and unused chunks swept"
                );
                r.forgotten
            }
            Err(BackupError::Busy { .. }) => {
                let n = prune::forget(repo, &plan)?;
                tracing::info!(
                    volume = %job.volume,
                    forgotten = n,
                    "retention applied; the repository is busy, so unused chunks wait for the next sweep"
                );
                n
            }
            Err(e) => return Err(e.into()),
        }
    };
    for m in &plan.forget {
        cat.backups.remove(&m.id);
    }
    cat.store(&job.state_dir)?;
    Ok(forgotten)
}

/// Progress of a backup nobody watches: stages and every tenth of the
/// total go to the log.
struct LogProgress {
    volume: String,
    total: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicU64,
}

impl LogProgress {
    fn new(volume: &str) -> Self {
        Self {
            volume: volume.to_owned(),
            total: 0.into(),
            done: 0.into(),
        }
    }
}

impl Progress for LogProgress {
    fn stage(&self, what: &str) {
        tracing::info!(volume = %self.volume, stage = what, "backup");
    }
    fn total(&self, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.total.store(bytes, Relaxed);
        self.done.store(0, Relaxed);
    }
    fn advance(&self, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let total = self.total.load(Relaxed);
        let before = self.done.fetch_add(bytes, Relaxed);
        let after = before.saturating_add(bytes);
        if total > 0 && before.saturating_mul(10) / total != after.saturating_mul(10) / total {
            tracing::info!(
                volume = %self.volume,
                done_bytes = after,
                total_bytes = total,
                "backup progress"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// list

fn list(a: &ListArgs, state: &Path) -> anyhow::Result<i32> {
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
// restore

/// The repository (and how it was opened) and manifest of a catalogued
/// backup.
fn locate(cat: &Catalog, id: &str) -> anyhow::Result<(Repository, RepoSpec, Manifest)> {
    let entry = cat.resolve(id)?;
    if entry.status == Status::Failed {
        bail!(
            "backup {} is a failed run: nothing was stored{}",
            entry.id,
            entry
                .detail
                .as_ref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        );
    }
    let spec = entry.repo_spec();
    let repo = spec.open()?;
    if let Some(rid) = entry.repository_id {
        if rid != repo.config().id {
            return Err(BackupError::RepoMismatch {
                location: entry.repository.clone(),
                expected: rid,
                found: repo.config().id,
            }
            .into());
        }
    }
    let m = repo.find_manifest(entry.id)?.ok_or_else(|| {
        anyhow!(
            "backup {} is no longer in {} (pruned?); `backup import --scan {}` refreshes the catalogue",
            entry.id,
            entry.repository,
            entry.repository
        )
    })?;
    Ok((repo, spec, m))
}

#[allow(clippy::too_many_lines)] // as run_backup
fn restore_cmd(a: &RestoreArgs, state: &Path) -> anyhow::Result<i32> {
    let to = name(&a.to, "target volume")?;
    let cat = Catalog::load(state)?;
    let (repo, _, m) = locate(&cat, &a.id)?;
    let set = load_manifests(&a.manifests)?;
    let backend_name = match &a.backend {
        Some(b) => name(b, "back end")?,
        None => name(&m.volume.backend, "back end")?,
    };
    let be_doc = set.backends.get(&backend_name).ok_or_else(|| {
        anyhow!("Backend {backend_name} is not in the manifests (pass --backend)")
    })?;
    if be_doc.spec.lvm.is_some() {
        return restore_lvm(a, state, &set, &backend_name, &to, &repo, &m);
    }
    let file_spec =
        be_doc.spec.file.as_ref().ok_or_else(|| {
            anyhow!("Backend {backend_name} is neither a file nor an lvm back end")
        })?;
    let backend = FileBackend::new(file_spec.path.resolve(state), backend_name.as_str());
    let allocation = match file_spec.allocation {
        manifest::kinds::Allocation::Sparse => file::Allocation::Sparse,
        manifest::kinds::Allocation::Preallocated => file::Allocation::Preallocated,
    };
    let table = format::decode_table(&m)?;
    let _lock = StateLock::acquire(state, "backup restore")?;
    let existing = find_volume(&[(backend_name.clone(), backend.clone())], to.as_str())?;
    if a.overwrite
        && let Some((_, obj)) = &existing
        && let Some(holder) = in_use(&backend.data_path(obj.kind, obj.uuid))?
    {
        bail!(
            "volume {to} ({} on {backend_name}) is in use by {holder}; restoring over it would change its data under its user: stop or detach it first, or restore into a new volume (--to NAME)",
            obj.uuid
        );
    }
    let _session = repo.session(repo::SessionKind::Shared, "backup restore")?;
    let index = repo.load_index()?;
    let mut journal = Journal::open(state)?;
    let intent = journal.intent(
        Uuid::new_v4(),
        0,
        &format!("backup restore {} --to {to}", m.id),
    )?;
    let started = Instant::now();
    let bar = Bar::new(&format!("restore {to}"));
    let result = match existing {
        Some((_, obj)) if obj.state != Mark::Ready && a.overwrite => {
            // An interrupted create or restore: nothing worth keeping in it
            // (it never became ready), so start over.
            tracing::info!(uuid = %obj.uuid, state = ?obj.state, "replacing an incomplete volume");
            backend.delete(obj.uuid)?;
            restore_fresh(&repo, &m, &backend, to.as_str(), allocation, &bar)
        }
        Some((_, obj)) => {
            if obj.state != Mark::Ready {
                bar.finish();
                bail!(
                    "volume {to} ({} on {backend_name}) is incomplete ({:?}: an interrupted create or restore); pass --overwrite to replace it",
                    obj.uuid,
                    obj.state
                );
            }
            if !a.overwrite {
                bar.finish();
                bail!(
                    "volume {to} exists ({} on {backend_name}); pass --overwrite to replace its content",
                    obj.uuid
                );
            }
            if obj.size < m.volume.size {
                bar.finish();
                bail!(
                    "volume {to} holds {} bytes, less than the backup's {}; extend it first",
                    obj.size,
                    m.volume.size
                );
            }
            let path = backend.data_path(obj.kind, obj.uuid);
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            restore::restore(
                &repo,
                &index,
                &m,
                &table,
                &f,
                &path,
                Target::Overwrite,
                &bar,
            )
            .map(|s| (obj.uuid, s))
            .map_err(anyhow::Error::from)
        }
        None => restore_fresh(&repo, &m, &backend, to.as_str(), allocation, &bar),
    };
    bar.finish();
    finish_restore(
        result,
        &mut journal,
        &intent,
        &m,
        to.as_str(),
        backend_name.as_str(),
        started,
        set.volumes.contains_key(&to),
    )
}

/// Who else holds the file at `path` open ([`crate::inuse`]), as text.
fn in_use(path: &Path) -> anyhow::Result<Option<String>> {
    match crate::inuse::holder(path) {
        Ok(h) => Ok(h.map(|h| h.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => {
            Err(anyhow!(e).context("cannot tell whether the volume is in use (reading /proc)"))
        }
    }
}

/// `backup restore` into an `lvm` back end: a new LV (thin: holes stay
/// unprovisioned; thick: every gap zeroed), tagged `creating` until the data
/// is in and removed again if the restore fails; or, with `--overwrite`, an
/// existing volume (every chunk checked before the first write).
#[allow(clippy::too_many_lines)] // as restore_cmd
fn restore_lvm(
    a: &RestoreArgs,
    state: &Path,
    set: &ManifestSet,
    backend_name: &Name,
    to: &Name,
    repo: &Repository,
    m: &Manifest,
) -> anyhow::Result<i32> {
    let lvm = lvm_backend_named(set, backend_name)?;
    let table = format::decode_table(m)?;
    let _lock = StateLock::acquire(state, "backup restore")?;
    let existing = find_lvm_volume(
        vec![(backend_name.clone(), lvm_backend_named(set, backend_name)?)],
        to.as_str(),
    )?
    .map(|(_, v)| v);
    if existing.is_some() && !a.overwrite {
        bail!("volume {to} exists on {backend_name}; pass --overwrite to replace its content");
    }
    let _session = repo.session(repo::SessionKind::Shared, "backup restore")?;
    let index = repo.load_index()?;
    let mut journal = Journal::open(state)?;
    let intent = journal.intent(
        Uuid::new_v4(),
        0,
        &format!("backup restore {} --to {to}", m.id),
    )?;
    let started = Instant::now();
    let bar = Bar::new(&format!("restore {to}"));
    let result = (|| -> anyhow::Result<(Uuid, restore::RestoreStats)> {
        if let Some(v) = existing {
            let path = lvm.device(&crate::lvm::tags::lv_name(
                crate::model::ObjKind::Volume,
                v.uuid,
            ));
            if v.open {
                let holder = crate::inuse::Holders::scan()
                    .ok()
                    .and_then(|h| h.block_device(&path))
                    .map_or_else(
                        || {
                            format!(
                                "a holder not visible from this host (lvm2 reports {} open)",
                                path.display()
                            )
                        },
                        |h| h.to_string(),
                    );
                bail!(
                    "volume {to} ({} on {backend_name}) is in use by {holder}; restoring over it would change its data under its user: stop or detach it first, or restore into a new volume (--to NAME)",
                    v.uuid
                );
            }
            if v.size < m.volume.size {
                bail!(
                    "volume {to} holds {} bytes, less than the backup's {}; extend it first",
                    v.size,
                    m.volume.size
                );
            }
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let s = restore::restore(repo, &index, m, &table, &f, &path, Target::Overwrite, &bar)?;
            return Ok((v.uuid, s));
        }
        let uuid = Uuid::new_v4();
        let on = crate::backup::into_volume::NewVolume::Lvm(&lvm);
        let done = crate::backup::into_volume::restore_new(
            repo,
            m,
            &on,
            uuid,
            to.as_str(),
            m.volume.size,
            &bar,
        )?;
        Ok((uuid, done))
    })();
    bar.finish();
    finish_restore(
        result,
        &mut journal,
        &intent,
        m,
        to.as_str(),
        backend_name.as_str(),
        started,
        set.volumes.contains_key(to),
    )
}

/// Journals a restore's outcome and prints its summary line (and, for a
/// volume the manifests do not declare, what the next apply will do).
#[allow(clippy::too_many_arguments)] // each piece named
fn finish_restore(
    result: anyhow::Result<(Uuid, restore::RestoreStats)>,
    journal: &mut Journal,
    intent: &crate::state::journal::Record,
    m: &Manifest,
    to: &str,
    backend_name: &str,
    started: Instant,
    declared: bool,
) -> anyhow::Result<i32> {
    match result {
        Ok((uuid, done)) => {
            journal.outcome(intent, Outcome::Changed, None)?;
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
            Ok(0)
        }
        Err(e) => {
            journal.outcome(intent, Outcome::Failed, Some(format!("{e:#}")))?;
            Err(e)
        }
    }
}

/// The `lvm` back end named `name` (whatever its host).
fn lvm_backend_named(
    set: &ManifestSet,
    name: &Name,
) -> anyhow::Result<crate::lvm::LvmBackend<'static>> {
    lvm_backends_all(set)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, b)| b)
        .ok_or_else(|| anyhow!("Backend {name} is not an lvm back end"))
}

/// A new volume object on a `file` back end, through
/// [`crate::backup::into_volume`] (created incomplete, filled, then ready;
/// removed again if anything fails).
fn restore_fresh(
    repo: &Repository,
    m: &Manifest,
    backend: &FileBackend,
    to: &str,
    allocation: file::Allocation,
    bar: &Bar,
) -> anyhow::Result<(Uuid, restore::RestoreStats)> {
    let uuid = Uuid::new_v4();
    let on = crate::backup::into_volume::NewVolume::File {
        backend,
        allocation,
    };
    let stats =
        crate::backup::into_volume::restore_new(repo, m, &on, uuid, to, m.volume.size, bar)?;
    Ok((uuid, stats))
}

// ---------------------------------------------------------------------------
// verify

#[allow(clippy::too_many_lines)] // as run_backup
fn verify(a: &VerifyArgs, state: &Path) -> anyhow::Result<i32> {
    let mut cat = Catalog::load(state)?;
    // (repository, how it was opened, manifests to check)
    let mut work: Vec<(Repository, RepoSpec, Vec<Manifest>)> = Vec::new();
    if let Some(id) = &a.id {
        let (repo, spec, m) = locate(&cat, id)?;
        work.push((repo, spec, vec![m]));
    } else {
        let repos: BTreeMap<String, RepoSpec> = cat
            .backups
            .values()
            .filter(|e| e.status != Status::Failed)
            .map(|e| (e.repository.clone(), e.repo_spec()))
            .collect();
        if repos.is_empty() {
            bail!("no backups in the catalogue to verify");
        }
        for (location, spec) in repos {
            let repo = spec.open()?;
            let (ms, bad) = repo.manifests()?;
            for e in &bad {
                writeln!(std::io::stderr().lock(), "error: {}", chain(e))?;
            }
            if !bad.is_empty() {
                bail!("{} unreadable manifest(s) in {location}", bad.len());
            }
            work.push((repo, spec, ms));
        }
    }
    let mut damaged = 0usize;
    let mut out = std::io::stdout().lock();
    let mut findings: Vec<(Manifest, usize, Option<String>)> = Vec::new();
    for (w, (repo, _, manifests)) in work.iter().enumerate() {
        let _session = repo.session(repo::SessionKind::Shared, "backup verify")?;
        let index = repo.load_index()?;
        let mut tables = Vec::new();
        let mut union: BTreeMap<Digest, u64> = BTreeMap::new();
        for m in manifests {
            let t = format::decode_table(m)?;
            for &(slot, id) in &t {
                union.entry(id).or_insert(slot);
            }
            tables.push(t);
        }
        let all: Vec<(u64, Digest)> = union.into_iter().map(|(id, slot)| (slot, id)).collect();
        let bar = Bar::new(&format!("verify {}", repo.location()));
        let (problems, checked) = restore::check(repo, &index, &all, &bar)?;
        bar.finish();
        let missing: HashSet<Digest> = problems.missing.iter().copied().collect();
        let corrupt: HashSet<Digest> = problems.corrupt.iter().copied().collect();
        for (m, t) in manifests.iter().zip(&tables) {
            // Distinct chunks (one chunk may fill several slots).
            let ids: HashSet<&Digest> = t.iter().map(|(_, id)| id).collect();
            let miss = ids.iter().filter(|id| missing.contains(**id)).count();
            let bad = ids.iter().filter(|id| corrupt.contains(**id)).count();
            let line = format!(
                "{} {} {}",
                m.id,
                m.volume.name,
                m.started_at.format("%Y-%m-%d %H:%M:%S UTC")
            );
            if miss + bad == 0 {
                writeln!(out, "ok       {line}: {} chunks", t.len())?;
                findings.push((m.clone(), w, None));
            } else {
                damaged += 1;
                let first = t
                    .iter()
                    .find(|(_, id)| missing.contains(id) || corrupt.contains(id))
                    .map(|(slot, id)| {
                        let what = if missing.contains(id) {
                            "missing"
                        } else {
                            "corrupt"
                        };
                        format!(
                            "first: chunk {id} at byte {} {what}",
                            slot * u64::from(m.chunk_size)
                        )
                    })
                    .unwrap_or_default();
                let detail = format!("{miss} missing, {bad} corrupt chunk(s); {first}");
                writeln!(out, "DAMAGED  {line}: {detail}")?;
                findings.push((m.clone(), w, Some(detail)));
            }
        }
        if a.all {
            // Pack trailers too: what prune reads (a damaged one would
            // stop it), which checking chunks through the index never does.
            for (pack, len) in repo.scan_packs()? {
                if let Err(e) = repo.read_trailer(&pack, len) {
                    damaged += 1;
                    writeln!(out, "DAMAGED  pack {pack}: {}", chain(&e))?;
                }
            }
        }
        writeln!(
            out,
            "checked {} unique chunks ({}) in {}: {} missing, {} corrupt",
            checked.chunks + problems.corrupt.len() as u64 + problems.missing.len() as u64,
            bytes(checked.bytes),
            repo.location(),
            problems.missing.len(),
            problems.corrupt.len()
        )?;
    }
    // Record what was found, if nobody else holds the state directory.
    match StateLock::acquire(state, "backup verify") {
        Ok(_lock) => {
            let now = Utc::now();
            for (m, w, detail) in findings {
                cat.add(&m, &work[w].0, &work[w].1);
                if let Some(e) = cat.backups.get_mut(&m.id) {
                    e.status = if detail.is_some() {
                        Status::Damaged
                    } else {
                        Status::Ok
                    };
                    e.detail = detail;
                    e.verified_at = Some(now);
                }
            }
            cat.store(state)?;
        }
        Err(e) => tracing::warn!(error = %e, "verify results not recorded in the catalogue"),
    }
    Ok(i32::from(damaged > 0))
}

// ---------------------------------------------------------------------------
// export / import

fn export(a: &ExportArgs, state: &Path) -> anyhow::Result<i32> {
    let cat = Catalog::load(state)?;
    let (repo, spec, m) = locate(&cat, &a.id)?;
    let record = catalog::export(&repo, &spec, &m);
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &record)?;
    writeln!(out)?;
    Ok(0)
}

fn import(a: &ImportArgs, state: &Path) -> anyhow::Result<i32> {
    let _lock = StateLock::acquire(state, "backup import")?;
    let mut cat = Catalog::load(state)?;
    let mut out = std::io::stdout().lock();
    let scan = match (&a.scan, &a.policy) {
        (Some(path), _) => Some(RepoSpec::dir(path)),
        (None, Some(p)) => {
            let set = load_manifests(&a.manifests)?;
            let p = name(p, "policy")?;
            let doc = set
                .backup_policies
                .get(&p)
                .ok_or_else(|| anyhow!("no BackupPolicy named {p} in the manifests"))?;
            Some(
                RepoSpec::from_policy(&doc.spec, state)
                    .ok_or_else(|| anyhow!("BackupPolicy {p} names no target"))?,
            )
        }
        (None, None) => None,
    };
    if let Some(spec) = scan {
        let repo = spec.open()?;
        let (n, bad) = cat.scan(&repo, &spec)?;
        cat.store(state)?;
        for e in &bad {
            writeln!(std::io::stderr().lock(), "error: {}", chain(e))?;
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
// key

fn key_cmd(a: &KeyArgs, state: &Path) -> anyhow::Result<i32> {
    let KeyCommand::Rotate(r) = &a.command;
    let set = load_manifests(&r.manifests)?;
    let p = name(&r.policy, "policy")?;
    let doc = set
        .backup_policies
        .get(&p)
        .ok_or_else(|| anyhow!("no BackupPolicy named {p} in the manifests"))?;
    let spec = RepoSpec::from_policy(&doc.spec, state)
        .ok_or_else(|| anyhow!("BackupPolicy {p} names no target"))?;
    let Some(old_src) = &spec.key else {
        bail!("BackupPolicy {p} has no `encryption`: its repository has no key to rotate");
    };
    let new_src = match (&r.new_key_file, &r.new_key_env) {
        (Some(f), _) => SecretSource::File(f.clone()),
        (None, Some(v)) => SecretSource::Env(v.clone()),
        (None, None) => bail!("give --new-key-file or --new-key-env"),
    };
    let old = crate::backup::target::read_key(old_src)?;
    let new = crate::backup::target::read_key(&new_src)?;
    if old.secret == new.secret {
        bail!("the new key is the current key");
    }
    let _lock = StateLock::acquire(state, "backup key rotate")?;
    let repo = spec.open()?;
    let removed = repo.rotate_key(&old, &new)?;
    // The catalogue reopens this repository with the new key from now on.
    let mut cat = Catalog::load(state)?;
    let location = repo.location();
    for e in cat.backups.values_mut() {
        if e.repository == location
            && let Some(t) = &mut e.target
        {
            t.key = Some(new_src.clone());
        }
    }
    cat.store(state)?;
    writeln!(
        std::io::stdout().lock(),
        "rotated the key of {location}: its data key is now wrapped under {}; {}; no data rewritten. Point BackupPolicy {p}'s encryption.keyRef at the new key.",
        new.from,
        if repo.is_append_only() {
            "the old key file stays (append-only target), so the old key opens it too".to_owned()
        } else {
            format!("{removed} key file(s) of the old key removed")
        }
    )?;
    Ok(0)
}

// ---------------------------------------------------------------------------
// prune

#[allow(clippy::too_many_lines)] // as run_backup
fn prune_cmd(a: &PruneArgs, state: &Path) -> anyhow::Result<i32> {
    let set = load_manifests(&a.manifests)?;
    let sweep_key = match (&a.sweep_credentials_file, &a.sweep_credentials_env) {
        (Some(f), _) => Some(SecretSource::File(f.clone())),
        (None, Some(v)) => Some(SecretSource::Env(v.clone())),
        (None, None) => None,
    };
    // By location: (how to open it, its policies).
    let mut repos: BTreeMap<String, (RepoSpec, Vec<String>)> = BTreeMap::new();
    for (n, p) in &set.backup_policies {
        let Some(mut spec) = RepoSpec::from_policy(&p.spec, state) else {
            continue;
        };
        if a.sweep {
            spec.append_only = false;
            if let Some(k) = &sweep_key {
                spec = spec.with_credentials(k.clone());
            }
        }
        repos
            .entry(spec.location())
            .or_insert_with(|| (spec, Vec::new()))
            .1
            .push(n.to_string());
    }
    if repos.is_empty() {
        bail!("no BackupPolicy in the manifests: nothing to prune");
    }
    let _lock = StateLock::acquire(state, "backup prune")?;
    let mut cat = Catalog::load(state)?;
    let damaged = cat.damaged();
    let rules = |policy: Option<&str>| {
        policy
            .and_then(|p| p.parse::<Name>().ok())
            .and_then(|p| set.backup_policies.get(&p))
            .and_then(|d| d.spec.retention.clone())
    };
    let mut out = std::io::stdout().lock();
    let verb = if a.dry_run { "would forget" } else { "forget" };
    for (path, (spec, policies)) in repos {
        let repo = match spec.open() {
            Ok(r) => r,
            Err(BackupError::NotARepository { .. }) => {
                writeln!(
                    out,
                    "repository {path} (policy {}): none yet",
                    policies.join(", ")
                )?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let (manifests, bad) = repo.manifests()?;
        if let Some(e) = bad.into_iter().next() {
            return Err(anyhow::Error::from(e).context(format!(
                "{path}: refusing to prune with an unreadable manifest"
            )));
        }
        let plan = prune::plan(&manifests, &rules, &|id| damaged.contains(&id));
        writeln!(
            out,
            "repository {path} (policy {}){}",
            policies.join(", "),
            if repo.is_append_only() {
                " (append-only)"
            } else {
                ""
            }
        )?;
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
        if repo.is_append_only() {
            // Nothing is removed there: forgotten here, swept later.
            if !a.dry_run {
                for m in &plan.forget {
                    cat.backups.remove(&m.id);
                }
            }
            writeln!(
                out,
                "{} {} backup(s) in the catalogue only: {path} is append-only; `backup prune --sweep` with credentials that may delete removes them and frees the space",
                if a.dry_run { "would forget" } else { "forgot" },
                plan.forget.len()
            )?;
            continue;
        }
        let r = prune::execute(&repo, &plan, a.dry_run)?;
        if !a.dry_run {
            for m in &plan.forget {
                cat.backups.remove(&m.id);
            }
        }
        writeln!(
            out,
            "{} {} backup(s); {} {} of {} pack(s) and {} {}{}, dropping {} unused chunk(s), {}{}",
            if a.dry_run { "would forget" } else { "forgot" },
            r.forgotten,
            if a.dry_run { "would delete" } else { "deleted" },
            r.packs_deleted,
            r.packs,
            if a.dry_run { "rewrite" } else { "rewrote" },
            r.packs_repacked,
            if a.dry_run {
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
    }
    if !a.dry_run {
        cat.store(state)?;
    }
    Ok(0)
}

// ---------------------------------------------------------------------------
// Output helpers.

/// A progress bar on stderr when it is a terminal; invisible otherwise. A
/// spinner with the stage's name until the stage's total is known.
struct Bar {
    bar: ProgressBar,
    what: String,
}

impl Bar {
    fn new(what: &str) -> Self {
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

    fn finish(&self) {
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
fn bytes(n: u64) -> String {
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

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
fn rate(n: u64, d: Duration) -> String {
    let s = d.as_secs_f64();
    if s <= 0.0 {
        return "-".into();
    }
    bytes((n as f64 / s) as u64)
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
