//! A volume of another host, reached over iSCSI: the third kind of
//! endpoint behind the [`Driver`] seam (beside files and LVs).
//!
//! Owns the destination's view of a cross-host job's source: its object
//! (size and mark, from the job: `ready` while it is exported, `deleting`
//! once the copy was verified), its layout (the extent map the source
//! published), its data path (the block device of an `iscsiadm` login), the
//! source's own content hash, and the two marks the migration sequence
//! sets on a source: `deleting` here means "verified" (log out, delete the
//! node record, write `verified` into the job), and a delete is the source
//! host's to do once it reads that.
//!
//! Invariants: it never writes to the remote device (opened read-only by
//! the migration), a session it opened is closed on verification and on
//! failure, and every job write is a compare-and-swap on the revision it
//! read. Must not: create, snapshot, grow or rename anything (refused: a
//! remote volume is only ever a migration's source).

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use uuid::Uuid;

use super::{Attacher, End, Job, Jobs, Phase};
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
    state: Mutex<State>,
}

struct State {
    /// The job and its revision; none once the source finished.
    job: Option<(Job, i64)>,
    /// The device while logged in.
    device: Option<PathBuf>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<'a> RemoteVolume<'a> {
    /// The source of `job` (read at revision `rev`).
    pub fn new(jobs: &'a dyn Jobs, attach: &'a dyn Attacher, job: Job, rev: i64) -> Self {
        RemoteVolume {
            name: job.from.to_string(),
            uuid: job.uuid,
            volume: job.volume.clone(),
            jobs: Some(jobs),
            attach: Some(attach),
            state: Mutex::new(State {
                job: Some((job, rev)),
                device: None,
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
            state: Mutex::new(State {
                job: None,
                device: None,
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

    /// Logs out (and deletes the node record) when logged in; errors are
    /// logged (the next run logs out again).
    pub fn detach(&self) {
        let mut st = lock(&self.state);
        if st.device.take().is_some()
            && let (Some(a), Some((job, _))) = (self.attach, &st.job)
            && let Err(e) = a.logout(&job.target)
        {
            tracing::warn!(volume = %self.volume, error = %e, "cannot log out of the migration's source");
        }
    }

    /// Writes the job with `edit` applied, by compare-and-swap on the
    /// revision last read; re-reads and retries when another writer came
    /// first (the source only ever writes the first phase).
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
            match jobs.get(&self.volume) {
                Ok(Some(fresh)) if fresh.0.uuid == self.uuid => st.job = Some(fresh),
                Ok(_) => {
                    return Err(self.err(op, "the migration job is gone from etcd or names another volume; the source abandoned the migration (was spec.backend changed back?)".into(), false));
                }
                Err(e) => return Err(self.err(op, e.to_string(), true)),
            }
        }
        Err(self.err(
            op,
            "the migration job kept changing under this host's writes".into(),
            true,
        ))
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

    /// `deleting`: the copy was verified; log out and say so in the job.
    fn set_mark(&self, uuid: Uuid, mark: Mark) -> Result<Change, DriverError> {
        if uuid != self.uuid || mark != Mark::Deleting {
            return Err(self.refuse(Op::SetMark));
        }
        // Logged out before the source may remove its export.
        {
            let mut st = lock(&self.state);
            if let (Some(a), Some((job, _))) = (self.attach, &st.job) {
                a.logout(&job.target)
                    .map_err(|e| self.err(Op::SetMark, e, true))?;
            }
            st.device = None;
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
        if uuid != self.uuid {
            return Ok(None);
        }
        let st = lock(&self.state);
        let (size, mark) = match &st.job {
            None => (0, Mark::Deleting),
            Some((j, _)) if j.phase == Phase::Verified => (j.size, Mark::Deleting),
            Some((j, _)) => (j.size, Mark::Ready),
        };
        Ok(Some(Object {
            uuid,
            name: self.volume.clone(),
            kind: ObjKind::Volume,
            size,
            mark,
            migration: None,
            in_use: false,
            created: None,
        }))
    }

    /// Logs in (once) and says `copying` in the job.
    fn data_path(&self, uuid: Uuid) -> Result<DataPath, DriverError> {
        let Some(job) = self.job().filter(|_| uuid == self.uuid) else {
            return Err(self.err(
                Op::Open,
                "the migration job is gone; nothing to read".into(),
                false,
            ));
        };
        let Some(attach) = self.attach else {
            return Err(self.refuse(Op::Open));
        };
        let existing = lock(&self.state).device.clone();
        let path = if let Some(p) = existing {
            p
        } else {
            let p = attach
                .login(&job.target)
                .map_err(|e| self.err(Op::Open, e, true))?;
            lock(&self.state).device = Some(p.clone());
            p
        };
        if job.phase == Phase::Exported {
            self.update(Op::Open, &|j| j.phase = Phase::Copying)?;
        }
        Ok(DataPath {
            path,
            len: job.size,
            kind: PathKind::Block,
        })
    }

    fn layout(&self, _: Uuid) -> Result<Layout, DriverError> {
        Ok(match self.job().and_then(|j| j.extents) {
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

    fn known_hash(&self, uuid: Uuid) -> Result<Option<String>, DriverError> {
        Ok(self.job().filter(|j| j.uuid == uuid).map(|j| j.hash))
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
}

impl copy::Observer for Published<'_, '_> {
    fn progress(&mut self, at: &copy::Position) {
        self.inner.progress(at);
    }
    fn checkpoint(&mut self, at: &copy::Position) -> Result<(), String> {
        self.inner.checkpoint(at)?;
        if let Some(j) = self.remote.job() {
            let done = j.to_copy.saturating_sub(at.to_read) + at.read;
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
        self.inner.begin(id);
    }
    fn reset(&mut self, id: Uuid) -> Result<(), MigrateError> {
        self.inner.reset(id)
    }
}
