//! The agent's scheduled backups and checks: the [`BackupRunner`] contract
//! the scheduler calls, and [`EngineRunner`], which keeps it. A backup is the same
//! transaction as `backup run` ([`super::job::run`]: journal records,
//! catalogue entry), then the policy's retention for that volume
//! ([`super::prune::plan`], swept with [`super::prune::execute`] when the
//! repository is free, otherwise only the manifests are forgotten under a
//! shared session and the next sweep frees the chunks). A check (a policy's
//! `verify` or `drill`) is [`super::job::check`], as `backup drill` runs it.
//!
//! Called on the agent's blocking threads while the agent holds the state
//! lock for its whole life, so it never takes the lock itself.
//!
//! Must not: print (progress goes to the log).

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::catalog::Catalog;
use super::checks::{CheckKind, CheckSummary};
use super::engine::ReadRecord;
use super::{BackupError, Progress, Repository, prune};
use crate::exec::Exec;
use crate::manifest::ManifestSet;
use crate::manifest::kinds::BackupPolicySpec;
use crate::registry::Registry;
use crate::state::journal::Journal;

/// One backup to run.
#[derive(Debug, Clone)]
pub struct BackupJob {
    /// The volume (manifest name).
    pub volume: String,
    /// The policy (manifest name).
    pub policy: String,
    /// The policy as declared.
    pub spec: BackupPolicySpec,
    /// The scheduled time this run is for.
    pub slot: DateTime<Utc>,
    /// The manifests in force (to find the volume's back end).
    pub manifests: Arc<ManifestSet>,
    /// The state directory.
    pub state_dir: PathBuf,
}

/// What a successful backup produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// The backup's id.
    pub id: String,
    /// Bytes stored by this run (after deduplication and compression).
    pub stored_bytes: u64,
    /// Backups removed by retention afterwards.
    pub pruned: usize,
    /// How it read the volume, and why.
    pub read: Option<ReadRecord>,
}

/// Runs backups. Called on a blocking thread; may take hours.
///
/// The contract the engine implements: back up `job.volume` into the
/// policy's repository (full or incremental as the policy says, from a
/// snapshot when `force`), then apply the policy's retention; return an error
/// message (one line, the whole cause chain) on failure.
pub trait BackupRunner: Send + Sync + 'static {
    /// Runs one backup and its retention.
    fn run(&self, job: &BackupJob) -> Result<BackupSummary, String>;

    /// Runs one scheduled check of a policy's repository (a sampled verify
    /// from `job.cursor`, or restore drills): `Ok` when it ran, with what it
    /// found; `Err` (one line) when it could not run.
    fn check(&self, job: &CheckJob) -> Result<CheckSummary, String>;
}

/// One scheduled check to run.
#[derive(Debug, Clone)]
pub struct CheckJob {
    /// The policy (manifest name).
    pub policy: String,
    /// Which check.
    pub kind: CheckKind,
    /// The policy as declared.
    pub spec: BackupPolicySpec,
    /// The scheduled time this run is for.
    pub slot: DateTime<Utc>,
    /// Where a sampled verify's window begins.
    pub cursor: u64,
    /// The manifests in force.
    pub manifests: Arc<ManifestSet>,
    /// The state directory.
    pub state_dir: PathBuf,
}

/// The agent's backup engine: runs a scheduled backup exactly as
/// `backup run` would (same journal records, same catalogue entry, same
/// repository), then applies the policy's retention to that volume. Called
/// on the agent's blocking threads while the agent holds the state lock for
/// its whole life, so it never takes the lock itself.
#[derive(Debug)]
pub struct EngineRunner {
    /// This host's name (recorded in each backup).
    pub host: String,
}

impl BackupRunner for EngineRunner {
    fn check(&self, job: &CheckJob) -> Result<CheckSummary, String> {
        let policy = job
            .policy
            .parse::<crate::manifest::Name>()
            .map_err(|e| format!("invalid policy name: {e}"))?;
        let progress = LogProgress::new(&format!("{}/{}", job.policy, job.kind.as_str()));
        super::job::check(
            &job.spec,
            &policy,
            job.kind,
            job.cursor,
            &job.state_dir,
            &progress,
        )
        .map_err(|e| crate::error_chain(&e))
    }

    fn run(&self, job: &BackupJob) -> Result<BackupSummary, String> {
        let vol = job
            .volume
            .parse::<crate::manifest::Name>()
            .map_err(|e| format!("invalid volume name: {e}"))?;
        if let Some(group) = super::group::group_of(&job.manifests, &vol) {
            return self.run_group(job, &vol, &group);
        }
        let mut journal = Journal::open(&job.state_dir).map_err(|e| crate::error_chain(&e))?;
        let progress = LogProgress::new(&job.volume);
        let registry = Registry::new(&job.manifests, &self.host, &job.state_dir, Exec::host());
        let (repo, report) = super::job::run(
            &job.manifests,
            &vol,
            None,
            &job.state_dir,
            &self.host,
            &registry,
            &mut journal,
            &progress,
        )
        .map_err(|e| crate::error_chain(&e))?;
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
        let pruned = match retain(&repo, job, &[m.volume.uuid]) {
            Ok(n) => n,
            Err(e) => {
                // The backup itself is good; retention runs again after the
                // next one.
                tracing::warn!(volume = %job.volume, error = %crate::error_chain(&e), "retention not applied");
                0
            }
        };
        Ok(BackupSummary {
            id: m.id.to_string(),
            stored_bytes: m.stats.stored_bytes,
            pruned,
            read: Some(report.read.clone()),
        })
    }
}

impl EngineRunner {
    /// A member of a group backed up with its group: the first of the
    /// group's jobs due for a slot runs one group backup of every member
    /// (then retention over all members' backups, which keeps a group's
    /// members together); the others, due for the same slot, find it done
    /// and report their own member's backup of it.
    fn run_group(
        &self,
        job: &BackupJob,
        vol: &crate::manifest::Name,
        group: &crate::manifest::Name,
    ) -> Result<BackupSummary, String> {
        let _one = super::group::run_lock();
        {
            let cat = Catalog::load(&job.state_dir).map_err(|e| crate::error_chain(&e))?;
            let done = cat.groups().into_values().find(|g| {
                g.group.name == group.as_str()
                    && g.complete()
                    && g.status() != "failed"
                    && g.started_at().is_some_and(|t| t >= job.slot)
            });
            if let Some(e) = done
                .as_ref()
                .and_then(|g| g.entries.iter().find(|e| e.volume.name == vol.as_str()))
            {
                tracing::info!(volume = %job.volume, group = %group, backup = %e.id, "backed up with its group for this slot already");
                return Ok(BackupSummary {
                    id: e.id.to_string(),
                    stored_bytes: e.stored_bytes,
                    pruned: 0,
                    read: e.read.clone(),
                });
            }
        }
        let mut journal = Journal::open(&job.state_dir).map_err(|e| crate::error_chain(&e))?;
        let progress = LogProgress::new(&format!("{}/{}", group, job.volume));
        let registry = Registry::new(&job.manifests, &self.host, &job.state_dir, Exec::host());
        let run = super::group::run(
            &job.manifests,
            group,
            None,
            &job.state_dir,
            &self.host,
            &registry,
            &mut journal,
            &progress,
        )
        .map_err(|e| crate::error_chain(&e))?;
        tracing::info!(
            group = %group,
            backup = %run.group.id,
            members = run.members.len(),
            freeze_ms = run.freeze.map(|f| f.as_millis()),
            "scheduled group backup done"
        );
        let uuids: Vec<Uuid> = run.members.iter().map(|r| r.manifest.volume.uuid).collect();
        let pruned = match retain(&run.repo, job, &uuids) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(group = %group, error = %crate::error_chain(&e), "retention not applied");
                0
            }
        };
        let mine = run
            .members
            .iter()
            .find(|r| r.manifest.volume.name == vol.as_str())
            .ok_or_else(|| format!("group backup {} has no member {vol}", run.group.id))?;
        Ok(BackupSummary {
            id: mine.manifest.id.to_string(),
            stored_bytes: mine.manifest.stats.stored_bytes,
            pruned,
            read: Some(mine.read.clone()),
        })
    }
}

/// Applies `job`'s policy retention to the backups of `volumes` in `repo`
/// (a group's members together):
/// forgets what the rules do not keep and, when the repository is free,
/// sweeps the chunks only they used (otherwise the next `backup prune` or
/// scheduled run does). Returns how many backups were forgotten.
fn retain(repo: &Repository, job: &BackupJob, volumes: &[Uuid]) -> Result<usize, BackupError> {
    if job.spec.retention.is_none() {
        return Ok(0);
    }
    let mut manifests = Vec::new();
    for v in volumes {
        manifests.extend(repo.volume_manifests(*v)?);
    }
    let _catalog = super::job::catalog_lock();
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
        match prune::execute(
            repo,
            &plan,
            &prune::PruneOptions::new(&job.state_dir, false),
        ) {
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
            Err(e) => return Err(e),
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
