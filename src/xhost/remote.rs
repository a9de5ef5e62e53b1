//! A volume of another host, reached over iSCSI: the third kind of
//! endpoint behind the [`Driver`] seam (beside files and LVs).
//!
//! Owns the destination's view of a cross-host job's source: the volume
//! and the snapshots moving with it (`migrateSnapshots: true`), each an
//! object (size and mark, from the job: `ready` while it is exported,
//! `deleting` once the copy was verified; a snapshot's age, so the chain
//! moves oldest first), a layout (the extent map the source published), a
//! data path (the block device of an `iscsiadm` login to its own export),
//! and the source's own content hash; and the two marks the migration
//! sequence sets on a source: `deleting` on the volume means "verified"
//! (log out of every export, delete the node records, write `verified`
//! into the job; the snapshots' marks follow it), and a delete is the
//! source host's to do once it reads that. [`crate::migrate`] runs a chain
//! from it as from a local back end.
//!
//! Invariants: it never writes to the remote device (opened read-only by
//! the migration), a session it opened is closed on verification and on
//! failure, and every job write is a compare-and-swap on the revision it
//! read. Must not: create, snapshot, grow or rename anything (refused: a
//! remote volume is only ever a migration's source).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::{Attacher, End, Job, Jobs, Phase, Wait};
use crate::copy;
use crate::driver::{
    Adoption, Capabilities, Change, DataPath, Discovery, Driver, DriverError, Holders, Layout,
    Mark, NewObject, ObjKind, Object, Op, PathKind, PitRequest, PointInTime,
};
use crate::migrate::{Checkpoints, MigrateError};

/// The source of a cross-host migration, seen from the destination.
pub struct RemoteVolume<'a> {
    name: String,
    uuid: Uuid,
    volume: String,
    jobs: Option<&'a dyn Jobs>,
    attach: Option<&'a dyn Attacher>,
    /// Waiting for the source host's hash.
    wait: Wait,
    sleep: Option<&'a (dyn Fn(Duration) + Sync)>,
    state: Mutex<State>,
}

struct State {
    /// The job and its revision; none once the source finished.
    job: Option<(Job, i64)>,
    /// The devices logged in to, by object.
    devices: BTreeMap<Uuid, PathBuf>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<'a> RemoteVolume<'a> {
    /// The source of `job` (read at revision `rev`); a hash the source
    /// host has not published yet is waited for as `wait` says.
    pub fn new(
        jobs: &'a dyn Jobs,
        attach: &'a dyn Attacher,
        job: Job,
        rev: i64,
        wait: Wait,
        sleep: &'a (dyn Fn(Duration) + Sync),
    ) -> Self {
        RemoteVolume {
            name: job.from.to_string(),
            uuid: job.uuid,
            volume: job.volume.clone(),
            jobs: Some(jobs),
            attach: Some(attach),
            wait,
            sleep: Some(sleep),
            state: Mutex::new(State {
                job: Some((job, rev)),
                devices: BTreeMap::new(),
            }),
        }
    }

    /// A source its host removed after the verification (the job is gone
    /// too): only the switch is left.
    pub fn finished(uuid: Uuid, volume: &str, from: &End) -> Self {
        RemoteVolume {
            name: from.to_string(),
            uuid,
            volume: volume.to_owned(),
            jobs: None,
            attach: None,
            wait: Wait::default(),
            sleep: None,
            state: Mutex::new(State {
                job: None,
                devices: BTreeMap::new(),
            }),
        }
    }

    fn refuse(&self, op: Op) -> DriverError {
        DriverError::refused(
            &self.name,
            op,
            "a volume of another host reached over iSCSI is only ever a migration's source".into(),
        )
    }

    fn err(&self, op: Op, why: String, retryable: bool) -> DriverError {
        DriverError::new(&self.name, op, why, retryable)
    }

    /// Logs out of every export logged in to (and deletes its node
    /// record); errors are logged (the next run logs out again).
    pub fn detach(&self) {
        let mut st = lock(&self.state);
        let devices = std::mem::take(&mut st.devices);
        let (Some(a), Some((job, _))) = (self.attach, &st.job) else {
            return;
        };
        for u in devices.keys() {
            if let Some(t) = job.target_of(*u)
                && let Err(e) = a.logout(&t)
            {
                tracing::warn!(volume = %self.volume, iqn = %t.iqn, error = %e, "cannot log out of the migration's source");
            }
        }
    }

    /// Writes the job with `edit` applied, by compare-and-swap on the
    /// revision last read; re-reads and retries when another writer came
    /// first (the source writes the first phase, then its hashes).
    fn update(&self, op: Op, edit: &dyn Fn(&mut Job)) -> Result<(), DriverError> {
        let Some(jobs) = self.jobs else {
            return Ok(());
        };
        let mut st = lock(&self.state);
        for _ in 0..8 {
            let Some((job, rev)) = st.job.as_mut() else {
                return Ok(());
            };
            let mut next = job.clone();
            edit(&mut next);
            if next == *job {
                return Ok(());
            }
            if let Some(written) = jobs
                .put(&next, Some(*rev))
                .map_err(|e| self.err(op, e.to_string(), true))?
            {
                st.job = Some((next, written));
                return Ok(());
            }
            st.job = Some(self.reread(jobs, op)?);
        }
        Err(self.err(
            op,
            "the migration job kept changing under this host's writes".into(),
            true,
        ))
    }

    /// The job as etcd has it now, with its revision; an error when it is
    /// gone or names another volume (the source abandoned the migration).
    fn reread(&self, jobs: &dyn Jobs, op: Op) -> Result<(Job, i64), DriverError> {
        match jobs.get(&self.volume) {
            Ok(Some(fresh)) if fresh.0.uuid == self.uuid => Ok(fresh),
            Ok(_) => Err(self.err(op, "the migration job is gone from etcd or names another volume; the source abandoned the migration (was spec.backend changed back?)".into(), false)),
            Err(e) => Err(self.err(op, e.to_string(), true)),
        }
    }

    fn job(&self) -> Option<Job> {
        lock(&self.state).job.as_ref().map(|(j, _)| j.clone())
    }

    /// Records the copy's progress in the job (best effort: the journal's
    /// checkpoint is what a resumed copy starts from).
    fn progress(&self, done: u64, of: u64) {
        if let Err(e) = self.update(Op::SetMark, &|j| {
            j.phase = Phase::Copying;
            j.copied = done;
            j.to_copy = of;
        }) {
            tracing::warn!(volume = %self.volume, error = %crate::error_chain(&e), "cannot record the copy's progress in etcd");
        }
    }
}

impl Driver for RemoteVolume<'_> {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            protocol: "iSCSI".into(),
            thin: false,
            new_reads_zero: false,
            knows_allocation: false,
            extends_with_snapshots: false,
            snapshots: crate::model::SnapshotSpace::Copy,
            space: None,
            relabel: false,
            pool: None,
            delete_note: None,
            retained: "the source host keeps it".into(),
            group_snapshots: crate::model::GroupSnapshots::None,
        }
    }

    fn discover(&self, _: &Holders) -> (u64, Discovery) {
        (
            1,
            Discovery::Failed(format!(
                "{} is a volume of another host; its host discovers it",
                self.name
            )),
        )
    }

    fn create(&self, _: &NewObject<'_>) -> Result<Change, DriverError> {
        Err(self.refuse(Op::Create))
    }

    fn snapshot(&self, _: Uuid, _: Uuid, _: &str, _: u64) -> Result<Change, DriverError> {
        Err(self.refuse(Op::Snapshot))
    }

    fn extend(&self, _: Uuid, _: u64) -> Result<Change, DriverError> {
        Err(self.refuse(Op::Extend))
    }

    fn release(&self, _: Uuid) -> Result<Change, DriverError> {
        Err(self.refuse(Op::Release))
    }

    /// The source host deletes it once it reads `verified`.
    fn delete(&self, _: Uuid) -> Result<Change, DriverError> {
        Ok(Change::Unchanged)
    }

    /// `deleting` on the volume: the copy was verified; log out and say
    /// so in the job. On a snapshot of the job once that is said: nothing
    /// more (the source host removes it with the volume).
    fn set_mark(&self, uuid: Uuid, mark: Mark) -> Result<Change, DriverError> {
        if mark != Mark::Deleting {
            return Err(self.refuse(Op::SetMark));
        }
        if uuid != self.uuid {
            return match self.object(uuid)? {
                Some(o) if o.mark == Mark::Deleting => Ok(Change::Unchanged),
                _ => Err(self.refuse(Op::SetMark)),
            };
        }
        // Logged out of every export (those of an earlier, killed run
        // too) before the source may remove them.
        {
            let mut st = lock(&self.state);
            if let (Some(a), Some((job, _))) = (self.attach, &st.job) {
                for t in job.targets() {
                    a.logout(&t).map_err(|e| self.err(Op::SetMark, e, true))?;
                }
            }
            st.devices.clear();
        }
        self.update(Op::SetMark, &|j| {
            j.phase = Phase::Verified;
            j.copied = j.to_copy;
        })?;
        tracing::info!(volume = %self.volume, from = %self.name, "verified; logged out, the source host removes the source");
        Ok(Change::Changed)
    }

    fn set_group(&self, _: Uuid, _: Option<&str>) -> Result<Change, DriverError> {
        Err(self.refuse(Op::SetGroup))
    }

    fn object(&self, uuid: Uuid) -> Result<Option<Object>, DriverError> {
        let st = lock(&self.state);
        let mark = match &st.job {
            Some((j, _)) if j.phase != Phase::Verified => Mark::Ready,
            _ => Mark::Deleting,
        };
        let (name, kind, size, created) = if uuid == self.uuid {
            let size = st.job.as_ref().map_or(0, |(j, _)| j.size);
            (self.volume.clone(), ObjKind::Volume, size, None)
        } else {
            let Some(s) = st
                .job
                .as_ref()
                .and_then(|(j, _)| j.snapshots.iter().find(|s| s.uuid == uuid))
            else {
                return Ok(None);
            };
            (s.name.clone(), ObjKind::Snapshot, s.size, s.created)
        };
        Ok(Some(Object {
            uuid,
            name,
            kind,
            size,
            mark,
            migration: None,
            in_use: false,
            created,
        }))
    }

    /// Logs in to the object's export (once) and says `copying` in the job.
    fn data_path(&self, uuid: Uuid) -> Result<DataPath, DriverError> {
        let Some((job, target)) = self.job().and_then(|j| j.target_of(uuid).map(|t| (j, t))) else {
            return Err(self.err(
                Op::Open,
                "the migration job is gone or names no such object; nothing to read".into(),
                false,
            ));
        };
        let Some(attach) = self.attach else {
            return Err(self.refuse(Op::Open));
        };
        let len = if uuid == job.uuid {
            job.size
        } else {
            job.snapshots
                .iter()
                .find(|s| s.uuid == uuid)
                .map_or(0, |s| s.size)
        };
        let existing = lock(&self.state).devices.get(&uuid).cloned();
        let path = if let Some(p) = existing {
            p
        } else {
            let p = attach
                .login(&target)
                .map_err(|e| self.err(Op::Open, e, true))?;
            lock(&self.state).devices.insert(uuid, p.clone());
            p
        };
        if job.phase == Phase::Exported {
            self.update(Op::Open, &|j| j.phase = Phase::Copying)?;
        }
        Ok(DataPath {
            path,
            len,
            kind: PathKind::Block,
        })
    }

    fn layout(&self, uuid: Uuid) -> Result<Layout, DriverError> {
        let ranges = self.job().and_then(|j| {
            if uuid == j.uuid {
                j.extents
            } else {
                j.snapshots
                    .into_iter()
                    .find(|s| s.uuid == uuid)
                    .and_then(|s| s.extents)
            }
        });
        Ok(match ranges {
            Some(r) => Layout::Ranges(r.into_iter().map(|(a, b)| a..b).collect()),
            None => Layout::Everything,
        })
    }

    fn point_in_time(&self, _: &PitRequest) -> Result<Box<dyn PointInTime + '_>, DriverError> {
        Err(self.refuse(Op::PointInTime))
    }

    fn adopt(&self, _: &Adoption<'_>) -> Result<Change, DriverError> {
        Err(self.refuse(Op::Adopt))
    }

    fn rename(&self, _: Uuid, _: &str) -> Result<Change, DriverError> {
        Err(self.refuse(Op::Rename))
    }

    /// The hash the source host published; one it is still computing (it
    /// hashes while this host copies) is waited for, as long as its
    /// progress moves within [`Wait::stall`].
    fn known_hash(&self, uuid: Uuid) -> Result<Option<String>, DriverError> {
        let mut last = None;
        let mut moved = Instant::now();
        loop {
            let Some(job) = self.job() else {
                return Ok(None);
            };
            match job.hash_of(uuid) {
                None => return Ok(None),
                Some(Some(h)) => return Ok(Some(h.to_owned())),
                Some(None) => {}
            }
            let (Some(jobs), Some(sleep)) = (self.jobs, self.sleep) else {
                return Ok(None);
            };
            if last != Some(job.hashed) {
                last = Some(job.hashed);
                moved = Instant::now();
                tracing::info!(volume = %self.volume, object = %uuid, from = %self.name, hashed = job.hashed, "copied; waiting for the source host's hash to verify against");
            } else if moved.elapsed() >= self.wait.stall {
                return Err(self.err(
                    Op::Lookup,
                    format!(
                        "host {} has not published its hash of {uuid} to verify the copy against: it has hashed {} bytes and not moved for {:?} (is its agent running?); the next apply verifies again",
                        job.from.host, job.hashed, self.wait.stall
                    ),
                    true,
                ));
            }
            sleep(self.wait.poll);
            let fresh = self.reread(jobs, Op::Lookup)?;
            lock(&self.state).job = Some(fresh);
        }
    }
}

impl Drop for RemoteVolume<'_> {
    fn drop(&mut self) {
        self.detach();
    }
}

/// The destination's checkpoints: the journal's (what a resumed copy
/// starts from), and the progress written into the job for the source and
/// `plan --fleet`.
pub struct Published<'a, 'r> {
    /// The journal's checkpoints.
    pub inner: &'a mut dyn Checkpoints,
    /// The source.
    pub remote: &'a RemoteVolume<'r>,
    /// A chain's stages: the one checkpointed now, and the bytes the
    /// stages before it read (progress is their sum).
    pub stage: Option<Uuid>,
    /// Bytes the earlier stages of this run read.
    pub before: u64,
    /// What the current stage has read so far.
    pub current: u64,
}

impl<'a, 'r> Published<'a, 'r> {
    /// The checkpoints of a move from `remote`.
    pub fn new(inner: &'a mut dyn Checkpoints, remote: &'a RemoteVolume<'r>) -> Self {
        Published {
            inner,
            remote,
            stage: None,
            before: 0,
            current: 0,
        }
    }
}

impl copy::Observer for Published<'_, '_> {
    fn progress(&mut self, at: &copy::Position) {
        self.current = at.read;
        self.inner.progress(at);
    }
    fn checkpoint(&mut self, at: &copy::Position) -> Result<(), String> {
        self.inner.checkpoint(at)?;
        if let Some(j) = self.remote.job() {
            self.current = at.read;
            let done = if j.snapshots.is_empty() {
                j.to_copy.saturating_sub(at.to_read) + at.read
            } else {
                // A chain: what this run's stages read (a resumed stage
                // counts from its checkpoint).
                self.before + at.read
            };
            self.remote.progress(done.min(j.to_copy), j.to_copy);
        }
        Ok(())
    }
    fn may_write(&mut self, at: &copy::Position, next: u64) -> Result<u64, String> {
        self.inner.may_write(at, next)
    }
}

impl Checkpoints for Published<'_, '_> {
    fn last(&self, id: Uuid) -> Result<u64, MigrateError> {
        self.inner.last(id)
    }
    fn begin(&mut self, id: Uuid) {
        if self.stage.is_some_and(|s| s != id) {
            self.before += self.current;
            self.current = 0;
        }
        self.stage = Some(id);
        self.inner.begin(id);
    }
    fn reset(&mut self, id: Uuid) -> Result<(), MigrateError> {
        self.inner.reset(id)
    }
}
