//! The backup scheduler: runs each `BackupPolicy`'s backups on its cron
//! schedule for the volumes that name it.
//!
//! Owns: when a backup is due ([`CronSpec`], in the policy's time zone,
//! UTC by default), catching up a run missed while the agent was down (once,
//! not once per missed slot), the concurrency bounds (one backup per volume,
//! at most `max_running` overall), retries with per-volume backoff, and the
//! persisted record of what ran (`DIR/agent-schedule.json`).
//!
//! The core ([`Scheduler`]) is pure: wall-clock time is passed in, so the due
//! computation, the catch-up and the bounds are unit-tested without a clock.
//! [`run`] is the thin task around it: it sleeps until the next due time,
//! starts due jobs on blocking threads through a [`BackupRunner`] and records
//! their results.
//!
//! Rules:
//! - A job is the pair (volume, policy). Its record holds the last *slot* (a
//!   scheduled time) that was run. A job is due when the latest slot at or
//!   before now is newer than that. So after any downtime exactly one run
//!   catches up, however many slots were missed.
//! - A job seen for the first time is not due at once: it runs at its next
//!   slot (a new volume with a nightly policy gets its first backup that
//!   night), as cron would.
//! - A failed run keeps the slot open and is retried with exponential
//!   backoff; a success closes it.
//! - A volume is backed up under its own `backupPolicy`, else under its
//!   consistency group's. Only volumes that exist on this host (recorded in
//!   the state directory) are scheduled.
//!
//! Must not: run a backup itself (the [`BackupRunner`] does, and applies the
//! policy's retention after each success), or change volumes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::backoff::{Backoff, Policy};
use super::checks::{self, CheckKind, CheckRecord, CheckScheduler, CheckSummary, DueCheck};
use super::reconcile::Desired;
use super::status::{BackupsStatus, CheckStatus, PolicyStatus, VolumeBackupStatus};
use super::{Reason, Shared, lock};
pub use crate::backup::due::CronSpec;
use crate::backup::engine::ReadRecord;
pub use crate::backup::scheduled::{BackupJob, BackupRunner, BackupSummary, CheckJob};
use crate::manifest::ManifestSet;
use crate::manifest::kinds::BackupPolicySpec;
use crate::state::atomic::{self, AtomicError};

/// File name of the persisted schedule record.
pub const SCHEDULE_FILE: &str = "agent-schedule.json";
/// Its payload version.
pub const SCHEDULE_VERSION: u32 = 1;

/// Retry delays of a failing backup.
pub const BACKOFF: Policy = Policy {
    base: Duration::from_secs(30),
    cap: Duration::from_secs(3600),
};

/// What is remembered of one job across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    /// The policy the record is for (a new policy starts afresh).
    pub policy: String,
    /// The latest slot that was run successfully (or that was current when
    /// the job was first seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_slot: Option<DateTime<Utc>>,
    /// When the last successful backup finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<DateTime<Utc>>,
    /// Its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_id: Option<String>,
    /// Its stored bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_size: Option<u64>,
    /// The last failure, cleared by a success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// How the last successful backup read the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_read: Option<ReadRecord>,
}

/// The persisted file's payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Records {
    /// By volume.
    pub jobs: BTreeMap<String, JobRecord>,
    /// Scheduled checks, by `policy/verify` or `policy/drill`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, CheckRecord>,
}

/// A policy as the status shows it: (name, expression, zone, next slot or
/// why it has none).
pub type PolicyView = (
    String,
    String,
    String,
    Result<Option<DateTime<Utc>>, String>,
);

/// A job the scheduler says to start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// Volume.
    pub volume: String,
    /// Policy.
    pub policy: String,
    /// The slot it runs for.
    pub slot: DateTime<Utc>,
}

/// The scheduler's state.
#[derive(Debug)]
pub struct Scheduler {
    max_running: usize,
    /// Policy name → its schedule, or why it has none.
    policies: BTreeMap<String, Result<CronSpec, String>>,
    /// Policy name → (expression, zone), for status.
    policy_text: BTreeMap<String, (String, String)>,
    /// Volume → policy, the jobs in force.
    jobs: BTreeMap<String, String>,
    records: Records,
    running: BTreeSet<String>,
    backoff: Backoff<DateTime<Utc>>,
}

impl Scheduler {
    /// A scheduler running at most `max_running` backups at once, starting
    /// from the persisted `records`.
    pub fn new(max_running: usize, records: Records) -> Self {
        Self {
            max_running: max_running.max(1),
            policies: BTreeMap::new(),
            policy_text: BTreeMap::new(),
            jobs: BTreeMap::new(),
            records,
            running: BTreeSet::new(),
            backoff: Backoff::new(BACKOFF),
        }
    }

    /// Takes the manifests in force and the volumes that exist on this host.
    /// Returns whether the records changed (new jobs), to be persisted.
    pub fn set_desired(
        &mut self,
        set: &ManifestSet,
        local: &BTreeSet<String>,
        now: DateTime<Utc>,
    ) -> bool {
        self.policies.clear();
        self.policy_text.clear();
        for (name, doc) in &set.backup_policies {
            let (expr, tz) = (doc.spec.schedule.as_str(), doc.spec.timezone.as_str());
            self.policy_text
                .insert(name.as_str().to_owned(), (expr.to_owned(), tz.to_owned()));
            self.policies
                .insert(name.as_str().to_owned(), CronSpec::parse(expr, tz));
        }
        self.jobs.clear();
        for (name, doc) in &set.volumes {
            if !local.contains(name.as_str()) {
                continue;
            }
            let policy = doc.spec.backup_policy.as_ref().or_else(|| {
                doc.spec
                    .consistency_group
                    .as_ref()
                    .and_then(|g| set.consistency_groups.get(g))
                    .and_then(|g| g.spec.backup_policy.as_ref())
            });
            if let Some(p) = policy {
                self.jobs
                    .insert(name.as_str().to_owned(), p.as_str().to_owned());
            }
        }
        let mut changed = false;
        for (volume, policy) in &self.jobs {
            let fresh = self
                .records
                .jobs
                .get(volume)
                .is_none_or(|r| &r.policy != policy);
            if fresh {
                // First seen: start counting from the current slot, so the
                // first run is the next one.
                let current = match self.policies.get(policy) {
                    Some(Ok(c)) => c.latest_at_or_before(now),
                    _ => None,
                };
                self.records.jobs.insert(
                    volume.clone(),
                    JobRecord {
                        policy: policy.clone(),
                        last_slot: current.or(Some(now)),
                        ..JobRecord::default()
                    },
                );
                self.backoff.succeed(volume);
                changed = true;
            }
        }
        // Records of jobs that went away are kept (their history is still
        // worth showing) but pruned once the volume is gone from the
        // manifests.
        let before = self.records.jobs.len();
        self.records
            .jobs
            .retain(|v, _| set.volumes.keys().any(|n| n.as_str() == v));
        changed || before != self.records.jobs.len()
    }

    fn cron_of(&self, volume: &str) -> Option<(&str, &CronSpec)> {
        let policy = self.jobs.get(volume)?;
        match self.policies.get(policy)? {
            Ok(c) => Some((policy.as_str(), c)),
            Err(_) => None,
        }
    }

    /// The slot `volume` is due for at `now`, if due (ignoring bounds).
    fn due_slot(&self, volume: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (_, cron) = self.cron_of(volume)?;
        let latest = cron.latest_at_or_before(now)?;
        let last = self.records.jobs.get(volume).and_then(|r| r.last_slot);
        (last.is_none_or(|l| latest > l)).then_some(latest)
    }

    /// The jobs to start now: due, not running, not waiting for a retry,
    /// within the overall bound. Oldest slot first, then by volume.
    pub fn due(&self, now: DateTime<Utc>) -> Vec<Due> {
        let room = self.max_running.saturating_sub(self.running.len());
        let mut due: Vec<Due> = self
            .jobs
            .iter()
            .filter(|(v, _)| !self.running.contains(*v) && !self.backoff.waiting(v, now))
            .filter_map(|(v, p)| {
                self.due_slot(v, now).map(|slot| Due {
                    volume: v.clone(),
                    policy: p.clone(),
                    slot,
                })
            })
            .collect();
        due.sort_by(|a, b| (a.slot, &a.volume).cmp(&(b.slot, &b.volume)));
        due.truncate(room);
        due
    }

    /// A job was started.
    pub fn started(&mut self, volume: &str) {
        self.running.insert(volume.to_owned());
    }

    /// A job ended. Returns the backoff delay after a failure.
    pub fn finished(
        &mut self,
        due: &Due,
        result: &Result<BackupSummary, String>,
        now: DateTime<Utc>,
    ) -> Option<Duration> {
        self.running.remove(&due.volume);
        let record = self
            .records
            .jobs
            .entry(due.volume.clone())
            .or_insert_with(|| JobRecord {
                policy: due.policy.clone(),
                ..JobRecord::default()
            });
        match result {
            Ok(summary) => {
                record.last_slot = Some(record.last_slot.map_or(due.slot, |l| l.max(due.slot)));
                record.last_success = Some(now);
                record.last_backup_id = Some(summary.id.clone());
                record.last_size = Some(summary.stored_bytes);
                record.last_read.clone_from(&summary.read);
                record.last_error = None;
                self.backoff.succeed(&due.volume);
                None
            }
            Err(e) => {
                record.last_error = Some(e.clone());
                Some(self.backoff.fail(&due.volume, now, e))
            }
        }
    }

    /// When something next becomes due (a slot or a retry), after `now`.
    pub fn next_wakeup(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.jobs
            .keys()
            .filter(|v| !self.running.contains(*v))
            .filter_map(|v| self.next_run(v, now))
            .filter(|t| *t > now)
            .min()
    }

    /// When `volume` runs next: its retry time when waiting, else now when
    /// due, else its next slot.
    pub fn next_run(&self, volume: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (_, cron) = self.cron_of(volume)?;
        if let Some(e) = self.backoff.get(volume)
            && e.retry_at > now
        {
            return Some(e.retry_at);
        }
        if self.due_slot(volume, now).is_some() {
            return Some(now);
        }
        cron.next_after(now)
    }

    /// Number of jobs running.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Whether `volume` is being backed up.
    pub fn is_running(&self, volume: &str) -> bool {
        self.running.contains(volume)
    }

    /// The persisted records.
    pub fn records(&self) -> &Records {
        &self.records
    }

    /// The jobs in force: volume → policy.
    pub fn jobs(&self) -> &BTreeMap<String, String> {
        &self.jobs
    }

    /// Consecutive failures of `volume`.
    pub fn failures(&self, volume: &str) -> u32 {
        self.backoff.get(volume).map_or(0, |e| e.failures)
    }

    /// Policies: name → (expression, zone, next slot or error).
    pub fn policies(&self, now: DateTime<Utc>) -> Vec<PolicyView> {
        self.policy_text
            .iter()
            .map(|(name, (expr, tz))| {
                let next = match self.policies.get(name) {
                    Some(Ok(c)) => Ok(c.next_after(now)),
                    Some(Err(e)) => Err(e.clone()),
                    None => Ok(None),
                };
                (name.clone(), expr.clone(), tz.clone(), next)
            })
            .collect()
    }
}

/// What the scheduler task needs.
pub struct TaskConfig {
    /// Runs the backups.
    pub runner: Arc<dyn BackupRunner>,
    /// Backups at once, at most.
    pub max_running: usize,
    /// The state directory.
    pub state_dir: PathBuf,
}

type Finished = (Due, Result<BackupSummary, String>, f64);
type CheckFinished = (DueCheck, Result<CheckSummary, String>, f64);

/// The longest sleep: the wall clock may jump (suspend, NTP), so due times
/// are recomputed at least this often.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// The scheduler task: waits for the manifests in force, then starts due
/// backups on blocking threads and records their results. At shutdown it
/// starts nothing new and waits for the running ones (the supervisor bounds
/// the wait).
pub async fn run(
    cfg: TaskConfig,
    shared: Arc<Shared>,
    mut desired_rx: watch::Receiver<Desired>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let (mut generation, mut records) = match load_records(&cfg.state_dir) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "cannot read the backup schedule record; starting afresh");
            let generation = atomic::read_header(&cfg.state_dir.join(SCHEDULE_FILE))
                .ok()
                .flatten()
                .map_or(0, |h| h.generation);
            (generation, Records::default())
        }
    };
    {
        let mut m = lock(&shared.metrics);
        for (volume, r) in &records.jobs {
            if let (Some(t), Some(size)) = (r.last_success, r.last_size) {
                m.backup_last_success
                    .insert(volume.clone(), (unix_secs(t), size));
            }
        }
        for (k, r) in &records.checks {
            if let (Some(t), Some((policy, kind))) = (r.last_success, k.rsplit_once('/')) {
                m.backup_check_last_success
                    .insert((kind.to_owned(), policy.to_owned()), unix_secs(t));
            }
        }
    }
    let mut checks = CheckScheduler::new(std::mem::take(&mut records.checks));
    let mut sched = Scheduler::new(cfg.max_running, records);
    let mut set: Option<Arc<ManifestSet>> = None;
    let mut jobs: JoinSet<Finished> = JoinSet::new();
    let mut check_jobs: JoinSet<CheckFinished> = JoinSet::new();
    let persist = |sched: &Scheduler, checks: &CheckScheduler, generation: &mut u64| {
        *generation += 1;
        let records = Records {
            jobs: sched.records().jobs.clone(),
            checks: checks.records().clone(),
        };
        if let Err(e) = store_records(&cfg.state_dir, *generation, &records) {
            tracing::warn!(error = %crate::error_chain(&e), "cannot write the backup schedule record");
        }
    };
    let mut stopping = false;
    loop {
        let now = Utc::now();
        if let (Some(set), false) = (&set, stopping) {
            for due in sched.due(now) {
                start(&cfg, &shared, &mut sched, &mut jobs, set, due);
            }
            for due in checks.due(now) {
                start_check(&cfg, &mut checks, &mut check_jobs, set, due);
            }
        }
        report(&sched, &checks, &shared, now);
        if stopping && jobs.is_empty() && check_jobs.is_empty() {
            return Ok(());
        }
        let wake = [sched.next_wakeup(now), checks.next_wakeup(now)]
            .into_iter()
            .flatten()
            .min()
            .and_then(|t| (t - now).to_std().ok())
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        tokio::select! {
            () = tokio::time::sleep(wake), if !stopping => {}
            Some(done) = jobs.join_next(), if !jobs.is_empty() => {
                let Ok((due, result, secs)) = done else { continue };
                finish(&shared, &mut sched, &due, &result, secs);
                persist(&sched, &checks, &mut generation);
            }
            Some(done) = check_jobs.join_next(), if !check_jobs.is_empty() => {
                let Ok((due, result, secs)) = done else { continue };
                finish_check(&shared, &mut checks, &due, &result, secs);
                persist(&sched, &checks, &mut generation);
            }
            changed = desired_rx.changed(), if !stopping => {
                if changed.is_err() {
                    // The reconciler is gone; the supervisor is stopping.
                    stopping = true;
                    continue;
                }
                let d = desired_rx.borrow_and_update().clone();
                let now = Utc::now();
                let a = sched.set_desired(&d.set, &d.local_volumes, now);
                let b = checks.set_desired(&d.set, now);
                if a || b {
                    persist(&sched, &checks, &mut generation);
                }
                set = Some(d.set);
            }
            _ = shutdown.changed(), if !stopping => {
                stopping = true;
                if !jobs.is_empty() || !check_jobs.is_empty() {
                    tracing::info!(running = jobs.len() + check_jobs.len(), "waiting for the running backups and checks before stopping");
                }
            }
        }
    }
}

fn start(
    cfg: &TaskConfig,
    shared: &Shared,
    sched: &mut Scheduler,
    jobs: &mut JoinSet<Finished>,
    set: &Arc<ManifestSet>,
    due: Due,
) {
    let Some(spec) = policy_spec(set, &due.policy) else {
        return;
    };
    sched.started(&due.volume);
    lock(&shared.backing_up).insert(due.volume.clone());
    tracing::info!(volume = %due.volume, policy = %due.policy, slot = %due.slot, "backup started");
    let job = BackupJob {
        volume: due.volume.clone(),
        policy: due.policy.clone(),
        spec,
        slot: due.slot,
        manifests: Arc::clone(set),
        state_dir: cfg.state_dir.clone(),
    };
    let runner = Arc::clone(&cfg.runner);
    spawn_timed(jobs, due, "the backup engine panicked".into(), move || {
        runner.run(&job)
    });
}

/// The declared spec of policy `name`.
fn policy_spec(set: &ManifestSet, name: &str) -> Option<BackupPolicySpec> {
    set.backup_policies
        .iter()
        .find(|(n, _)| n.as_str() == name)
        .map(|(_, d)| d.spec.clone())
}

/// Runs `work` on a blocking thread; its result (a panic as `panicked`)
/// comes back with `due` and the seconds it took.
fn spawn_timed<D: Send + 'static, R: Send + 'static>(
    jobs: &mut JoinSet<(D, Result<R, String>, f64)>,
    due: D,
    panicked: String,
    work: impl FnOnce() -> Result<R, String> + Send + 'static,
) {
    jobs.spawn_blocking(move || {
        let t = std::time::Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
            .unwrap_or_else(|_| Err(panicked));
        (due, result, t.elapsed().as_secs_f64())
    });
}

#[allow(clippy::cast_precision_loss)] // seconds since 1970 fit in f64
fn unix_secs(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

fn start_check(
    cfg: &TaskConfig,
    checks: &mut CheckScheduler,
    jobs: &mut JoinSet<CheckFinished>,
    set: &Arc<ManifestSet>,
    due: DueCheck,
) {
    let Some(spec) = policy_spec(set, &due.policy) else {
        return;
    };
    checks.started(&due);
    tracing::info!(policy = %due.policy, check = due.kind.as_str(), slot = %due.slot, "scheduled check started");
    let job = CheckJob {
        policy: due.policy.clone(),
        kind: due.kind,
        spec,
        slot: due.slot,
        cursor: due.cursor,
        manifests: Arc::clone(set),
        state_dir: cfg.state_dir.clone(),
    };
    let runner = Arc::clone(&cfg.runner);
    let panicked = format!("the {} panicked", due.kind.as_str());
    spawn_timed(jobs, due, panicked, move || runner.check(&job));
}

fn finish_check(
    shared: &Shared,
    checks: &mut CheckScheduler,
    due: &DueCheck,
    result: &Result<CheckSummary, String>,
    secs: f64,
) {
    let now = Utc::now();
    let delay = checks.finished(due, result, now);
    let kind = due.kind.as_str();
    {
        let mut m = lock(&shared.metrics);
        match result {
            Ok(s) if s.problems.is_empty() => {
                m.backup_check_last_success
                    .insert((kind.to_owned(), due.policy.clone()), unix_secs(now));
            }
            _ => {
                *m.backup_check_failures
                    .entry((kind.to_owned(), due.policy.clone()))
                    .or_default() += 1;
            }
        }
    }
    match (result, delay) {
        (Ok(s), _) if s.problems.is_empty() => tracing::info!(
            policy = %due.policy, check = kind, result = %s.text, seconds = secs, "scheduled check passed"
        ),
        (Ok(s), _) => {
            for p in &s.problems {
                tracing::error!(policy = %due.policy, check = kind, problem = %p, "scheduled check found a damaged backup");
            }
        }
        (Err(error), delay) => tracing::warn!(
            policy = %due.policy, check = kind, %error,
            retry_in_s = delay.map_or(0, |d| d.as_secs()), "scheduled check could not run; retrying with backoff"
        ),
    }
}

fn finish(
    shared: &Shared,
    sched: &mut Scheduler,
    due: &Due,
    result: &Result<BackupSummary, String>,
    secs: f64,
) {
    let now = Utc::now();
    let delay = sched.finished(due, result, now);
    lock(&shared.backing_up).remove(&due.volume);
    let outcome = if result.is_ok() { "success" } else { "failure" };
    {
        let mut m = lock(&shared.metrics);
        m.backup_run(&due.volume, &due.policy, outcome, secs);
        if let Ok(s) = result {
            m.backup_last_success
                .insert(due.volume.clone(), (unix_secs(now), s.stored_bytes));
            if let Some(read) = &s.read {
                m.backup_read(&due.volume, &due.policy, read);
            }
        }
    }
    if let Ok(BackupSummary {
        id,
        read: Some(read),
        ..
    }) = result
        && read.fallback
    {
        tracing::warn!(
            volume = %due.volume, policy = %due.policy, %id, read = read.method.as_str(),
            reason = %read.reason, "scheduled backup fell back to reading more than the volume's changes"
        );
    }
    match (result, delay) {
        (Ok(s), _) => tracing::info!(
            volume = %due.volume, policy = %due.policy, id = %s.id, stored_bytes = s.stored_bytes,
            pruned = s.pruned, seconds = secs, "backup done"
        ),
        (Err(error), delay) => tracing::warn!(
            volume = %due.volume, policy = %due.policy, %error,
            retry_in_s = delay.map_or(0, |d| d.as_secs()), "backup failed; retrying with backoff"
        ),
    }
    if lock(&shared.deferred).remove(&due.volume) {
        shared.triggers.push(Reason::BackupFinished);
    }
}

/// A check's view as the status shows it.
fn check_status(v: checks::CheckView) -> CheckStatus {
    let (next_run, error) = match v.next_run {
        Ok(n) => (n, None),
        Err(e) => (None, Some(e)),
    };
    CheckStatus {
        schedule: v.schedule,
        next_run,
        running: v.running,
        last_run: v.record.last_run,
        last_success: v.record.last_success,
        last_result: v.record.last_result,
        problems: v.record.problems,
        failures: v.failures,
        error,
    }
}

/// Puts the scheduler's view into the status and metrics.
fn report(sched: &Scheduler, checks: &CheckScheduler, shared: &Shared, now: DateTime<Utc>) {
    let mut policies = Vec::new();
    let mut next_runs = BTreeMap::new();
    let mut gaps = BTreeMap::new();
    for (name, schedule, timezone, next) in sched.policies(now) {
        if let Some(gap) = CronSpec::parse(&schedule, &timezone)
            .ok()
            .and_then(|c| c.longest_gap(now))
        {
            #[allow(clippy::cast_precision_loss)] // seconds fit in f64
            gaps.insert(name.clone(), gap.num_seconds() as f64);
        }
        let volumes = sched
            .jobs()
            .iter()
            .filter(|(_, p)| **p == name)
            .map(|(v, _)| v.clone())
            .collect();
        let (next_run, error) = match next {
            Ok(n) => (n, None),
            Err(e) => (None, Some(e)),
        };
        if let Some(t) = next_run {
            #[allow(clippy::cast_precision_loss)] // seconds since 1970 fit in f64
            next_runs.insert(name.clone(), t.timestamp() as f64);
        }
        let mut views = checks.views(&name, now);
        policies.push(PolicyStatus {
            verify: views.remove(&CheckKind::Verify).map(check_status),
            drill: views.remove(&CheckKind::Drill).map(check_status),
            name,
            schedule,
            timezone,
            next_run,
            volumes,
            error,
        });
    }
    let volumes: Vec<VolumeBackupStatus> = sched
        .jobs()
        .iter()
        .map(|(v, p)| {
            let r = sched.records().jobs.get(v);
            VolumeBackupStatus {
                volume: v.clone(),
                policy: p.clone(),
                running: sched.is_running(v),
                last_success: r.and_then(|r| r.last_success),
                last_backup_id: r.and_then(|r| r.last_backup_id.clone()),
                last_size: r.and_then(|r| r.last_size),
                last_error: r.and_then(|r| r.last_error.clone()),
                last_read: r.and_then(|r| r.last_read.clone()),
                warning: r
                    .and_then(|r| r.last_read.as_ref())
                    .filter(|read| read.fallback)
                    .map(|read| {
                        format!(
                            "the last backup fell back to {}: {}",
                            read.method.as_str(),
                            read.reason
                        )
                    }),
                failures: sched.failures(v),
                next_run: if sched.is_running(v) {
                    None
                } else {
                    sched.next_run(v, now)
                },
            }
        })
        .collect();
    let doc = BackupsStatus { policies, volumes };
    let changed = {
        let mut s = lock(&shared.status);
        let changed = s.backups != doc;
        s.backups = doc;
        changed
    };
    {
        let mut m = lock(&shared.metrics);
        m.backups_running = sched.running() as u64;
        m.backup_checks_running = checks.running() as u64;
        m.backup_next_run = next_runs;
        m.backup_max_age = sched
            .jobs()
            .iter()
            .filter_map(|(v, p)| gaps.get(p).map(|g| (v.clone(), (p.clone(), *g))))
            .collect();
    }
    if changed {
        shared.publish();
    }
}

/// Loads `DIR/agent-schedule.json` (empty when absent) and its generation.
pub fn load_records(state_dir: &Path) -> Result<(u64, Records), AtomicError> {
    Ok(
        match atomic::load::<Records>(&state_dir.join(SCHEDULE_FILE), SCHEDULE_VERSION)? {
            Some(env) => (env.generation, env.payload),
            None => (0, Records::default()),
        },
    )
}

/// Stores the records as `generation`.
pub fn store_records(
    state_dir: &Path,
    generation: u64,
    records: &Records,
) -> Result<(), AtomicError> {
    atomic::store(
        &state_dir.join(SCHEDULE_FILE),
        SCHEDULE_VERSION,
        generation,
        records,
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::status::Status;
    use std::fmt::Write as _;
    use std::path::Path;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_longest_gap_is_what_a_newest_backup_may_reach() {
        let now = at("2026-11-24T10:00:00Z");
        let gap = |expr: &str, tz: &str| {
            CronSpec::parse(expr, tz)
                .unwrap()
                .longest_gap(now)
                .unwrap()
                .num_seconds()
        };
        assert_eq!(gap("0 2 * * *", "UTC"), 86_400);
        assert_eq!(gap("*/15 * * * *", "UTC"), 900);
        // Weekdays only: Friday to Monday.
        assert_eq!(gap("0 2 * * 1-5", "UTC"), 3 * 86_400);
        // Monthly: the longest month in the next two.
        assert_eq!(gap("0 0 1 * *", "UTC"), 31 * 86_400);
        // Across the end of daylight saving time in Berlin a daily slot is
        // 25 hours after the one before (2026-10-25 is behind; 2027-03-28
        // is past 63 days), so a plain day here.
        assert_eq!(gap("30 1 * * *", "Europe/Berlin"), 86_400);
    }

    fn manifests(volumes: &[(&str, &str)], schedule: &str, tz: &str) -> ManifestSet {
        manifests_with(volumes, schedule, tz, "")
    }

    fn manifests_with(
        volumes: &[(&str, &str)],
        schedule: &str,
        tz: &str,
        extra: &str,
    ) -> ManifestSet {
        let mut text = format!(
            "apiVersion: cinderblock.dev/v1alpha1\nkind: BackupPolicy\nmetadata:\n  name: nightly\nspec:\n  schedule: \"{schedule}\"\n  timezone: {tz}\n  target:\n    path: /srv/backup\n{extra}"
        );
        for (v, p) in volumes {
            let _ = write!(
                text,
                "---\napiVersion: cinderblock.dev/v1alpha1\nkind: Volume\nmetadata:\n  name: {v}\nspec:\n  size: 1Gi\n  backupPolicy: {p}\n"
            );
        }
        let loaded = crate::manifest::load::load_source(Path::new("t.yaml"), &text);
        assert_eq!(loaded.errors(), 0, "{:?}", loaded.diagnostics);
        loaded.set
    }

    fn local(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[allow(clippy::unnecessary_wraps)] // a runner's result, as finished() takes it
    fn ok() -> Result<BackupSummary, String> {
        Ok(BackupSummary {
            id: "b1".into(),
            stored_bytes: 42,
            pruned: 0,
            read: None,
        })
    }

    #[test]
    fn due_times_follow_cron_in_the_policy_time_zone() {
        let c = CronSpec::parse("30 2 * * *", "UTC").unwrap();
        assert_eq!(
            c.next_after(at("2026-03-01T00:00:00Z")),
            Some(at("2026-03-01T02:30:00Z"))
        );
        assert_eq!(
            c.latest_at_or_before(at("2026-03-01T02:30:00Z")),
            Some(at("2026-03-01T02:30:00Z")),
            "inclusive at the slot itself"
        );
        assert_eq!(
            c.latest_at_or_before(at("2026-03-01T02:29:59Z")),
            Some(at("2026-02-28T02:30:00Z"))
        );
        // 02:30 in Berlin is 01:30 UTC in winter, 00:30 UTC in summer.
        let b = CronSpec::parse("30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            b.next_after(at("2026-01-10T00:00:00Z")),
            Some(at("2026-01-10T01:30:00Z"))
        );
        assert_eq!(
            b.next_after(at("2026-07-10T00:00:00Z")),
            Some(at("2026-07-10T00:30:00Z"))
        );
        // Every minute, from a time with seconds.
        let m = CronSpec::parse("* * * * *", "UTC").unwrap();
        assert_eq!(
            m.next_after(at("2026-03-01T10:00:30Z")),
            Some(at("2026-03-01T10:01:00Z"))
        );
        assert_eq!(
            m.latest_at_or_before(at("2026-03-01T10:00:30Z")),
            Some(at("2026-03-01T10:00:00Z"))
        );
        // Nicknames, including the one croner lacks.
        let d = CronSpec::parse("@midnight", "UTC").unwrap();
        assert_eq!(
            d.next_after(at("2026-03-01T10:00:00Z")),
            Some(at("2026-03-02T00:00:00Z"))
        );
        assert!(
            CronSpec::parse("* * * * *", "Mars/Olympus")
                .unwrap_err()
                .contains("unknown time zone")
        );
    }

    #[test]
    fn a_new_job_waits_for_its_next_slot_then_runs_once_per_slot() {
        let set = manifests(&[("db", "nightly")], "0 3 * * *", "UTC");
        let mut s = Scheduler::new(2, Records::default());
        let now = at("2026-03-01T12:00:00Z");
        assert!(
            s.set_desired(&set, &local(&["db"]), now),
            "new job recorded"
        );
        assert!(s.due(now).is_empty(), "a new job is not due at once");
        assert_eq!(s.next_wakeup(now), Some(at("2026-03-02T03:00:00Z")));
        let t = at("2026-03-02T03:00:05Z");
        let due = s.due(t);
        assert_eq!(
            due,
            [Due {
                volume: "db".into(),
                policy: "nightly".into(),
                slot: at("2026-03-02T03:00:00Z")
            }]
        );
        s.started("db");
        assert!(s.due(t).is_empty(), "one backup per volume at a time");
        assert_eq!(
            s.finished(&due[0], &ok(), t + chrono::Duration::seconds(60)),
            None
        );
        assert!(
            s.due(at("2026-03-02T23:59:00Z")).is_empty(),
            "the slot is closed"
        );
        assert_eq!(s.records().jobs["db"].last_backup_id.as_deref(), Some("b1"));
        assert_eq!(s.records().jobs["db"].last_size, Some(42));
        // Setting the same manifests again changes nothing.
        assert!(!s.set_desired(&set, &local(&["db"]), t));
    }

    #[test]
    fn runs_missed_while_down_catch_up_once_at_start() {
        let set = manifests(&[("db", "nightly")], "0 3 * * *", "UTC");
        let mut records = Records::default();
        records.jobs.insert(
            "db".into(),
            JobRecord {
                policy: "nightly".into(),
                last_slot: Some(at("2026-03-01T03:00:00Z")),
                ..JobRecord::default()
            },
        );
        // Down for three nights; started at noon.
        let mut s = Scheduler::new(2, records);
        let now = at("2026-03-04T12:00:00Z");
        assert!(!s.set_desired(&set, &local(&["db"]), now));
        let due = s.due(now);
        assert_eq!(due.len(), 1, "one catch-up run, not three");
        assert_eq!(due[0].slot, at("2026-03-04T03:00:00Z"));
        assert_eq!(s.next_run("db", now), Some(now));
        s.started("db");
        s.finished(&due[0], &ok(), now);
        assert!(s.due(now + chrono::Duration::hours(1)).is_empty());
        assert_eq!(s.next_wakeup(now), Some(at("2026-03-05T03:00:00Z")));
    }

    #[test]
    fn the_overall_bound_holds_and_oldest_slots_go_first() {
        let set = manifests(
            &[
                ("a", "nightly"),
                ("b", "nightly"),
                ("c", "nightly"),
                ("d", "nightly"),
            ],
            "* * * * *",
            "UTC",
        );
        let mut s = Scheduler::new(2, Records::default());
        let t0 = at("2026-03-01T12:00:30Z");
        s.set_desired(&set, &local(&["a", "b", "c", "d"]), t0);
        let t1 = at("2026-03-01T12:01:01Z");
        let due = s.due(t1);
        assert_eq!(
            due.iter().map(|d| d.volume.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        for d in &due {
            s.started(&d.volume);
        }
        assert!(s.due(t1).is_empty(), "two running, bound is two");
        s.finished(&due[0], &ok(), t1);
        let next = s.due(t1);
        assert_eq!(
            next.iter().map(|d| d.volume.as_str()).collect::<Vec<_>>(),
            ["c"]
        );
        assert_eq!(s.running(), 1);
        assert!(s.is_running("b"));
    }

    #[test]
    fn failures_retry_with_backoff_and_success_resets() {
        let set = manifests(&[("db", "nightly")], "0 3 * * *", "UTC");
        let mut s = Scheduler::new(1, Records::default());
        s.set_desired(&set, &local(&["db"]), at("2026-03-01T00:00:00Z"));
        let t = at("2026-03-01T03:00:00Z");
        let due = s.due(t).remove(0);
        s.started("db");
        let fail = Err("repository unreachable".to_owned());
        assert_eq!(s.finished(&due, &fail, t), Some(Duration::from_secs(30)));
        assert_eq!(s.failures("db"), 1);
        assert!(
            s.due(t + chrono::Duration::seconds(29)).is_empty(),
            "waits for the retry"
        );
        assert_eq!(s.next_wakeup(t), Some(t + chrono::Duration::seconds(30)));
        let retry_at = t + chrono::Duration::seconds(30);
        let again = s.due(retry_at).remove(0);
        assert_eq!(again.slot, due.slot, "the retry is for the same slot");
        s.started("db");
        assert_eq!(
            s.finished(&again, &fail, retry_at),
            Some(Duration::from_secs(60))
        );
        let t3 = retry_at + chrono::Duration::seconds(60);
        let third = s.due(t3).remove(0);
        s.started("db");
        assert_eq!(s.finished(&third, &ok(), t3), None);
        assert_eq!(s.failures("db"), 0);
        assert_eq!(s.records().jobs["db"].last_error, None);
    }

    #[test]
    fn jobs_come_from_volumes_and_groups_on_this_host_only() {
        let text = "apiVersion: cinderblock.dev/v1alpha1\nkind: BackupPolicy\nmetadata:\n  name: p\nspec:\n  schedule: \"@hourly\"\n  target:\n    path: /srv/b\n---\napiVersion: cinderblock.dev/v1alpha1\nkind: BackupPolicy\nmetadata:\n  name: broken\nspec:\n  schedule: \"@hourly\"\n  timezone: Nowhere/Land\n  target:\n    path: /srv/b\n---\napiVersion: cinderblock.dev/v1alpha1\nkind: VolumeType\nmetadata:\n  name: t\nspec: {}\n---\napiVersion: cinderblock.dev/v1alpha1\nkind: ConsistencyGroup\nmetadata:\n  name: g\nspec:\n  volumeTypes: [t]\n  backupPolicy: p\n---\napiVersion: cinderblock.dev/v1alpha1\nkind: Volume\nmetadata:\n  name: member\nspec:\n  size: 1Gi\n  volumeType: t\n  consistencyGroup: g\n---\napiVersion: cinderblock.dev/v1alpha1\nkind: Volume\nmetadata:\n  name: elsewhere\nspec:\n  size: 1Gi\n  backupPolicy: p\n---\napiVersion: cinderblock.dev/v1alpha1\nkind: Volume\nmetadata:\n  name: plain\nspec:\n  size: 1Gi\n";
        let loaded = crate::manifest::load::load_source(Path::new("t.yaml"), text);
        assert_eq!(loaded.errors(), 0, "{:?}", loaded.diagnostics);
        let mut s = Scheduler::new(1, Records::default());
        let now = at("2026-03-01T00:30:00Z");
        s.set_desired(&loaded.set, &local(&["member", "plain"]), now);
        assert_eq!(
            s.jobs().iter().collect::<Vec<_>>(),
            [(&"member".to_owned(), &"p".to_owned())]
        );
        let policies = s.policies(now);
        assert_eq!(policies.len(), 2);
        assert!(
            policies[0]
                .3
                .as_ref()
                .unwrap_err()
                .contains("unknown time zone")
        );
        assert_eq!(policies[1].3, Ok(Some(at("2026-03-01T01:00:00Z"))));
    }

    #[test]
    fn records_persist() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_records(dir.path()).unwrap(), (0, Records::default()));
        let mut r = Records::default();
        r.jobs.insert(
            "db".into(),
            JobRecord {
                policy: "nightly".into(),
                last_slot: Some(at("2026-03-01T03:00:00Z")),
                ..JobRecord::default()
            },
        );
        store_records(dir.path(), 1, &r).unwrap();
        assert_eq!(load_records(dir.path()).unwrap(), (1, r));
    }

    /// A runner that takes a little while, checks the bounds and counts.
    #[derive(Default)]
    struct Fake {
        running: std::sync::Mutex<BTreeSet<String>>,
        max: std::sync::atomic::AtomicUsize,
        calls: std::sync::Mutex<Vec<String>>,
        checks: std::sync::Mutex<Vec<(String, CheckKind, u64)>>,
    }

    impl BackupRunner for Fake {
        fn run(&self, job: &BackupJob) -> Result<BackupSummary, String> {
            use std::sync::atomic::Ordering;
            {
                let mut r = self.running.lock().unwrap();
                assert!(
                    r.insert(job.volume.clone()),
                    "{} backed up twice at once",
                    job.volume
                );
                self.max.fetch_max(r.len(), Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(100));
            self.running.lock().unwrap().remove(&job.volume);
            self.calls.lock().unwrap().push(job.volume.clone());
            // Volume c's parent snapshot is gone: its run falls back.
            let fallback = job.volume == "c";
            Ok(BackupSummary {
                id: format!("backup-of-{}", job.volume),
                stored_bytes: 1000,
                pruned: 0,
                read: Some(if fallback {
                    crate::backup::engine::ReadRecord {
                        method: crate::backup::engine::ReadMethod::AllocatedScan,
                        reason: "the parent backup's thin snapshot is gone".into(),
                        fallback: true,
                    }
                } else {
                    crate::backup::engine::ReadRecord {
                        method: crate::backup::engine::ReadMethod::ChangedRanges,
                        reason: "thin_delta".into(),
                        fallback: false,
                    }
                }),
            })
        }

        fn check(&self, job: &CheckJob) -> Result<CheckSummary, String> {
            self.checks
                .lock()
                .unwrap()
                .push((job.policy.clone(), job.kind, job.cursor));
            // The drill finds volume c's newest backup damaged.
            Ok(CheckSummary {
                text: format!("{} done", job.kind.as_str()),
                problems: if job.kind == CheckKind::Drill {
                    vec!["volume c, backup backup-of-c: 1 chunk(s) differ".into()]
                } else {
                    Vec::new()
                },
                cursor: Some(job.cursor + 1),
            })
        }
    }

    #[tokio::test]
    #[allow(clippy::too_many_lines)] // one agent task: backups and checks, then what they recorded
    async fn the_task_runs_due_backups_within_the_bounds_and_records_them() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["a", "b", "c", "d", "e"];
        // Each last ran an hour ago: all due at once (a catch-up).
        let hour_ago = Utc::now() - chrono::Duration::hours(1);
        let mut records = Records::default();
        for n in names {
            records.jobs.insert(
                n.into(),
                JobRecord {
                    policy: "nightly".into(),
                    last_slot: Some(hour_ago),
                    ..JobRecord::default()
                },
            );
        }
        // Both checks last ran an hour ago too; the verify's window is at 41.
        for (kind, cursor) in [(CheckKind::Verify, 41), (CheckKind::Drill, 0)] {
            records.checks.insert(
                super::checks::key("nightly", kind),
                CheckRecord {
                    last_slot: Some(hour_ago),
                    cursor,
                    ..CheckRecord::default()
                },
            );
        }
        store_records(dir.path(), 1, &records).unwrap();
        let set = manifests_with(
            &names.map(|n| (n, "nightly")),
            "* * * * *",
            "UTC",
            "  verify: {schedule: \"* * * * *\", sample: 5}\n  drill: {schedule: \"* * * * *\"}\n",
        );
        let runner = Arc::new(Fake::default());
        let shared = Arc::new(Shared::new(
            dir.path().to_owned(),
            Status::default(),
            0,
            false,
            None,
        ));
        let (desired_tx, desired_rx) = watch::channel(Desired::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(
            TaskConfig {
                runner: Arc::clone(&runner) as Arc<dyn BackupRunner>,
                max_running: 2,
                state_dir: dir.path().to_owned(),
            },
            Arc::clone(&shared),
            desired_rx,
            stop_rx,
        ));
        desired_tx
            .send(Desired {
                set: Arc::new(set),
                local_volumes: local(&names),
            })
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while runner.calls.lock().unwrap().len() < names.len()
            || runner.checks.lock().unwrap().len() < 2
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "backups did not all run"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            runner.max.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "the bound is 2"
        );
        let mut calls = runner.calls.lock().unwrap().clone();
        calls.sort();
        assert_eq!(calls, names, "each volume once");
        let mut checks = runner.checks.lock().unwrap().clone();
        checks.sort();
        assert_eq!(
            checks,
            [
                ("nightly".to_owned(), CheckKind::Verify, 41),
                ("nightly".to_owned(), CheckKind::Drill, 0)
            ],
            "each check once, the verify from its cursor"
        );
        // Let the last results be recorded, then stop.
        let checks_recorded = || {
            let m = lock(&shared.metrics);
            !m.backup_check_last_success.is_empty() && !m.backup_check_failures.is_empty()
        };
        while !lock(&shared.backing_up).is_empty() || !checks_recorded() {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();

        let (_, on_disk) = load_records(dir.path()).unwrap();
        for n in names {
            let r = &on_disk.jobs[n];
            assert_eq!(
                r.last_backup_id.as_deref(),
                Some(format!("backup-of-{n}").as_str())
            );
            assert!(r.last_slot.unwrap() > hour_ago);
        }
        let text = lock(&shared.metrics).render();
        assert!(
            text.contains("cinderblock_backup_runs_total{volume=\"c\",policy=\"nightly\",result=\"success\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("cinderblock_backup_last_size_bytes{volume=\"e\"} 1000"),
            "{text}"
        );
        assert!(
            text.contains("cinderblock_backup_read_fallbacks_total{volume=\"c\",policy=\"nightly\",read=\"allocatedScan\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("cinderblock_backup_last_read_fallback{volume=\"c\"} 1")
                && text.contains("cinderblock_backup_last_read_fallback{volume=\"e\"} 0"),
            "{text}"
        );
        assert!(
            !text.contains("cinderblock_backup_read_fallbacks_total{volume=\"e\""),
            "{text}"
        );
        assert_eq!(
            on_disk.jobs["c"].last_read.as_ref().map(|r| r.fallback),
            Some(true),
            "how it read is kept across restarts"
        );
        // The verify passed and moved its cursor; the drill found damage.
        let verify = &on_disk.checks["nightly/verify"];
        assert_eq!(verify.cursor, 42);
        assert!(verify.last_success.is_some() && verify.problems.is_empty());
        let drill = &on_disk.checks["nightly/drill"];
        assert_eq!(drill.last_success, None);
        assert_eq!(
            drill.problems,
            ["volume c, backup backup-of-c: 1 chunk(s) differ"]
        );
        assert!(
            text.contains(
                "cinderblock_backup_verify_last_success_timestamp_seconds{policy=\"nightly\"} "
            ) && text.contains("cinderblock_backup_drill_failures_total{policy=\"nightly\"} 1")
                && !text.contains("cinderblock_backup_drill_last_success_timestamp_seconds{"),
            "{text}"
        );
        let status = lock(&shared.status).backups.clone();
        assert_eq!(status.policies[0].volumes, names);
        let drill = status.policies[0].drill.as_ref().unwrap();
        assert_eq!(drill.schedule, "* * * * *");
        assert_eq!(drill.last_result.as_deref(), Some("drill done"));
        assert_eq!(
            drill.problems,
            ["volume c, backup backup-of-c: 1 chunk(s) differ"]
        );
        let verify = status.policies[0].verify.as_ref().unwrap();
        assert!(verify.last_success.is_some() && verify.next_run.is_some());
        assert!(
            status
                .volumes
                .iter()
                .all(|v| v.last_success.is_some() && !v.running)
        );
        let warnings: Vec<(&str, &str)> = status
            .volumes
            .iter()
            .filter_map(|v| v.warning.as_deref().map(|w| (v.volume.as_str(), w)))
            .collect();
        assert_eq!(
            warnings,
            [(
                "c",
                "the last backup fell back to allocatedScan: the parent backup's thin snapshot is gone"
            )]
        );
        // The status file was written as things happened.
        assert!(dir.path().join(super::super::status::STATUS_FILE).exists());
    }
}
