//! The agent's status document: what `/status` serves and what
//! `cinderblock status` reads from the state directory.
//!
//! Owns the wire shape of the status (a versioned file format: readers may be
//! older or newer builds), the Kubernetes-style conditions and their
//! transition rules, and writing the file atomically.
//!
//! The file `DIR/agent-status.json` is written through
//! [`crate::state::atomic::store`] (temp, fsync, rename; a generation that
//! never goes backwards) after every reconcile, backup and revision change,
//! so it tells what the agent last did even when the agent is not running.
//!
//! Must not: decide anything; the reconciler and the scheduler fill it in.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::state::atomic::{self, AtomicError};

/// File name in the state directory.
pub const STATUS_FILE: &str = "agent-status.json";
/// Version of the payload.
pub const STATUS_VERSION: u32 = 1;
/// How many revision outcomes the document keeps.
pub const REVISION_HISTORY: usize = 20;

/// The whole document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The agent process.
    pub agent: AgentInfo,
    /// Where the manifests come from and which revision is in force.
    pub source: SourceStatus,
    /// The last reconcile, when one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reconcile: Option<ReconcileStatus>,
    /// When a reconcile last ended without failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<DateTime<Utc>>,
    /// Reconciles run since the agent started.
    pub reconcile_count: u64,
    /// `Ready`, `Stalled`, `SourceReady`, and `FleetReady` with `--etcd`.
    pub conditions: Vec<Condition>,
    /// Per-object state, sorted by address.
    pub objects: Vec<ObjectStatus>,
    /// Changes made outside cinderblock, as the last plan saw them.
    pub drift: Vec<DriftStatus>,
    /// Volumes that existed and vanished outside cinderblock.
    pub lost: Vec<String>,
    /// Back end capacity as last discovered.
    pub backends: Vec<BackendStatus>,
    /// Backup schedules and per-volume results.
    pub backups: BackupsStatus,
    /// Migrations running now (a step of the apply in flight).
    #[serde(default)]
    pub migrations: Vec<MigrationStatus>,
    /// The fleet, when the agent runs with `--etcd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<super::fleet::FleetStatus>,
}

/// A migration in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatus {
    /// `volume.NAME`.
    pub address: String,
    /// The back end it moves from.
    pub from: String,
    /// The back end it moves to.
    pub to: String,
    /// The volume's size in bytes.
    pub size: u64,
    /// When the step started.
    pub started_at: DateTime<Utc>,
    /// Bytes read so far by this run.
    pub read: u64,
    /// Bytes this run reads in all (allocated data, or the whole volume).
    pub to_read: u64,
    /// Bytes written to the target so far.
    pub written: u64,
    /// Bytes read per second since the step started (0 until it reads).
    #[serde(default)]
    pub rate: u64,
    /// Seconds left at that rate, once it reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
}

/// The process behind the document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentInfo {
    /// Process id.
    pub pid: u32,
    /// Host name (`--host`).
    pub host: String,
    /// cinderblock version.
    pub version: String,
    /// Started at.
    pub started_at: Option<DateTime<Utc>>,
    /// The address `/status` and `/metrics` are served on.
    pub listen: String,
    /// `running`, or `stopped` after a clean shutdown.
    pub state: String,
    /// When the document was written.
    pub updated_at: Option<DateTime<Utc>>,
}

/// The source of the manifests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// `directory` or `git`.
    pub kind: String,
    /// Directories or files (`directory`), or the repository URL (`git`).
    pub location: String,
    /// The branch (`git`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The newest revision seen (a commit, or `dir:<content hash>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_revision: Option<String>,
    /// The newest revision that validated: the one in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good_revision: Option<String>,
    /// The revision of the last apply that completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_revision: Option<String>,
    /// When it was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<DateTime<Utc>>,
    /// The newest revision, when it is refused (last good stays in force).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad_revision: Option<BadRevision>,
    /// The last fetch error (`git`), cleared by a successful fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_error: Option<String>,
    /// When the source was last fetched or read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<DateTime<Utc>>,
    /// Outcome per revision, newest first (at most [`REVISION_HISTORY`]).
    #[serde(default)]
    pub revisions: Vec<RevisionOutcome>,
}

/// A refused revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BadRevision {
    /// The revision.
    pub revision: String,
    /// Why (the first diagnostics, `file:line:col: message`).
    pub errors: Vec<String>,
    /// When it was first refused.
    pub since: DateTime<Utc>,
}

/// What became of one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionOutcome {
    /// The revision.
    pub revision: String,
    /// `applied`, `invalid`, `blocked`, `failed`.
    pub outcome: String,
    /// Details.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When the outcome was reached.
    pub at: DateTime<Utc>,
}

/// One reconcile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileStatus {
    /// Started at.
    pub started_at: Option<DateTime<Utc>>,
    /// Finished at.
    pub finished_at: Option<DateTime<Utc>>,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// What triggered it (coalesced triggers are all listed).
    pub triggers: Vec<String>,
    /// The revision planned against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// `applied`, `no-changes`, `failed`, `blocked`, `invalid-source`,
    /// `stopped`.
    pub result: String,
    /// Actions planned.
    pub planned: usize,
    /// Objects created, changed, destroyed, forgotten.
    pub added: usize,
    /// Changed.
    pub changed: usize,
    /// Destroyed.
    pub destroyed: usize,
    /// Forgotten.
    pub forgotten: usize,
    /// The error, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Plan errors (any blocks the apply).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan_errors: Vec<String>,
    /// Plan and agent notes (deletes held back, objects deferred).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A Kubernetes-style condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Stalled` or `SourceReady`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    /// A CamelCase reason.
    pub reason: String,
    /// Details.
    pub message: String,
    /// When `status` last changed.
    pub last_transition_time: DateTime<Utc>,
}

impl Status {
    /// Sets a condition, keeping its transition time when the status did
    /// not change.
    pub fn set_condition(
        &mut self,
        type_: &str,
        status: bool,
        reason: &str,
        message: &str,
        now: DateTime<Utc>,
    ) {
        let status = if status { "True" } else { "False" };
        if let Some(c) = self.conditions.iter_mut().find(|c| c.type_ == type_) {
            if c.status != status {
                c.last_transition_time = now;
            }
            status.clone_into(&mut c.status);
            reason.clone_into(&mut c.reason);
            message.clone_into(&mut c.message);
        } else {
            self.conditions.push(Condition {
                type_: type_.to_owned(),
                status: status.to_owned(),
                reason: reason.to_owned(),
                message: message.to_owned(),
                last_transition_time: now,
            });
            self.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
        }
    }

    /// Whether condition `type_` is `True`.
    pub fn condition(&self, type_: &str) -> Option<bool> {
        self.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.status == "True")
    }

    /// Records a revision's outcome (replacing an earlier one of the same
    /// revision and outcome, so resyncs do not flood the history).
    pub fn record_revision(
        &mut self,
        revision: &str,
        outcome: &str,
        message: &str,
        now: DateTime<Utc>,
    ) {
        let list = &mut self.source.revisions;
        if let Some(first) = list.first()
            && first.revision == revision
            && first.outcome == outcome
            && first.message == message
        {
            return;
        }
        list.retain(|r| !(r.revision == revision && r.outcome == outcome));
        list.insert(
            0,
            RevisionOutcome {
                revision: revision.to_owned(),
                outcome: outcome.to_owned(),
                message: message.to_owned(),
                at: now,
            },
        );
        list.truncate(REVISION_HISTORY);
    }

    /// Why the agent is not ready (`None` when it is): no reconcile yet, or
    /// stalled.
    pub fn not_ready(&self) -> Option<String> {
        if self.reconcile_count == 0 {
            return Some("the first reconcile has not finished".to_owned());
        }
        if let Some(stalled) = self
            .conditions
            .iter()
            .find(|c| c.type_ == "Stalled" && c.status == "True")
        {
            return Some(format!("stalled: {}: {}", stalled.reason, stalled.message));
        }
        // Local work goes on without etcd, but new placements and
        // cross-host steps wait: not ready, and why.
        self.conditions
            .iter()
            .find(|c| c.type_ == "FleetReady" && c.status == "False")
            .map(|c| format!("{}: {}", c.reason, c.message))
    }
}

/// One object's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    /// `volume.NAME` or `snapshot.NAME`.
    pub address: String,
    /// `volume` or `snapshot`.
    pub kind: String,
    /// `ready`, `pending`, `failed`, `blocked`, `lost`, `deferred`,
    /// `held`, `waiting` (for a placement, see the message).
    pub state: String,
    /// The back end holding it, when it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Size in bytes, when it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Why it is in that state.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Consecutive failures (backoff).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: u32,
    /// When it is retried (backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if signature
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One drift finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftStatus {
    /// The object.
    pub address: String,
    /// What changed.
    pub message: String,
}

/// One back end's capacity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendStatus {
    /// Manifest name.
    pub name: String,
    /// Whether discovery succeeded.
    pub discovered: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Total bytes.
    pub total: u64,
    /// Free bytes.
    pub free: u64,
    /// Provisioned bytes (our objects' sizes).
    pub provisioned: u64,
    /// The thin pool's data use in percent (`lvm` back ends with a pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thin_data_percent: Option<f64>,
    /// The thin pool's metadata use in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thin_metadata_percent: Option<f64>,
}

impl BackendStatus {
    /// What the metrics show of it.
    pub fn gauges(&self) -> super::metrics::BackendGauges {
        super::metrics::BackendGauges {
            up: self.discovered,
            total: self.total,
            free: self.free,
            provisioned: self.provisioned,
            thin_data_percent: self.thin_data_percent,
            thin_metadata_percent: self.thin_metadata_percent,
        }
    }
}

/// The backup scheduler's view.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupsStatus {
    /// Per policy: schedule and next run.
    pub policies: Vec<PolicyStatus>,
    /// Per volume: last result.
    pub volumes: Vec<VolumeBackupStatus>,
}

/// One `BackupPolicy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// Name.
    pub name: String,
    /// Cron expression.
    pub schedule: String,
    /// Time zone.
    pub timezone: String,
    /// Next scheduled run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<DateTime<Utc>>,
    /// Volumes it backs up.
    pub volumes: Vec<String>,
    /// Why it cannot be scheduled, when it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its scheduled sampled verify (`spec.verify`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<CheckStatus>,
    /// Its scheduled restore drills (`spec.drill`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<CheckStatus>,
}

/// One scheduled check of a policy's repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckStatus {
    /// Cron expression (in the policy's time zone).
    pub schedule: String,
    /// Next run (scheduled, or a retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<DateTime<Utc>>,
    /// Running now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub running: bool,
    /// When the last run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<DateTime<Utc>>,
    /// When the last run that found nothing wrong finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<DateTime<Utc>>,
    /// What the last run did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<String>,
    /// What the last run found wrong (each damaged backup, naming volume
    /// and backup), or why it could not run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Consecutive runs that could not run.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: u32,
    /// Why the schedule cannot be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One volume's backups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeBackupStatus {
    /// Volume name.
    pub volume: String,
    /// Policy name.
    pub policy: String,
    /// Running now.
    pub running: bool,
    /// Last successful backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<DateTime<Utc>>,
    /// Its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_id: Option<String>,
    /// Its size in bytes (stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_size: Option<u64>,
    /// Last failure message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// How the last successful backup read the volume, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_read: Option<crate::backup::engine::ReadRecord>,
    /// A warning about the last backup: it fell back to reading more than
    /// the volume's changes (a full or allocated scan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// Consecutive failures.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: u32,
    /// Next run (scheduled, or retry after a failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<DateTime<Utc>>,
}

/// The status file of `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATUS_FILE)
}

/// Reads the status file; `Ok(None)` when the agent never ran here.
pub fn load(state_dir: &Path) -> Result<Option<(u64, Status)>, AtomicError> {
    Ok(
        atomic::load::<Status>(&path(state_dir), STATUS_VERSION)?
            .map(|e| (e.generation, e.payload)),
    )
}

/// Writes the status file as generation `generation`.
pub fn store(state_dir: &Path, generation: u64, status: &Status) -> Result<(), AtomicError> {
    atomic::store(&path(state_dir), STATUS_VERSION, generation, status).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn conditions_keep_their_transition_time_until_the_status_flips() {
        let mut s = Status::default();
        s.set_condition("Stalled", false, "Ok", "", t(0));
        s.set_condition("Ready", true, "Applied", "", t(0));
        s.set_condition("Stalled", false, "Ok", "still", t(10));
        let c = s.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
        assert_eq!(
            (c.last_transition_time, c.message.as_str()),
            (t(0), "still")
        );
        s.set_condition("Stalled", true, "ManifestInvalid", "bad", t(20));
        let c = s.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
        assert_eq!(c.last_transition_time, t(20));
        assert_eq!(
            s.conditions
                .iter()
                .map(|c| c.type_.as_str())
                .collect::<Vec<_>>(),
            ["Ready", "Stalled"]
        );
    }

    #[test]
    fn not_ready_until_a_reconcile_and_while_stalled() {
        let mut s = Status::default();
        assert!(s.not_ready().is_some());
        s.reconcile_count = 1;
        s.set_condition("Stalled", false, "Ok", "", t(0));
        assert_eq!(s.not_ready(), None);
        s.set_condition("Stalled", true, "ManifestInvalid", "a.yaml:1:1: bad", t(1));
        assert_eq!(
            s.not_ready().unwrap(),
            "stalled: ManifestInvalid: a.yaml:1:1: bad"
        );
    }

    #[test]
    fn revision_history_is_newest_first_bounded_and_not_flooded() {
        let mut s = Status::default();
        s.record_revision("a", "applied", "", t(0));
        s.record_revision("a", "applied", "", t(5));
        assert_eq!(s.source.revisions.len(), 1);
        assert_eq!(s.source.revisions[0].at, t(0));
        s.record_revision("b", "invalid", "x.yaml:1:1: oops", t(6));
        s.record_revision("c", "applied", "", t(7));
        let order: Vec<_> = s
            .source
            .revisions
            .iter()
            .map(|r| r.revision.as_str())
            .collect();
        assert_eq!(order, ["c", "b", "a"]);
        for i in 0..50 {
            s.record_revision(&format!("r{i}"), "applied", "", t(8 + i));
        }
        assert_eq!(s.source.revisions.len(), REVISION_HISTORY);
    }

    #[test]
    fn the_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let mut s = Status {
            reconcile_count: 3,
            ..Status::default()
        };
        s.source.applied_revision = Some("abc".into());
        store(dir.path(), 1, &s).unwrap();
        store(dir.path(), 2, &s).unwrap();
        let (generation, back) = load(dir.path()).unwrap().unwrap();
        assert_eq!((generation, back), (2, s));
    }
}
