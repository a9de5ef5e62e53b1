//! Migration: moving a volume from one back end of this host to another,
//! keeping its name and uuid, resumable at any byte and verified before the
//! source goes.
//!
//! Owns the sequence of one migration step. Each state is visible on the
//! back ends, so a re-run after a crash anywhere continues from where it is:
//!
//! | step | what | a crash after it leaves | the re-run |
//! | --- | --- | --- | --- |
//! | 1 | target created, marked `migrating` with a fresh migration id ([`NewMark::Migrating`]: LV tags `cinderblock.state=migrating`, `cinderblock.migration=<id>`, `cinderblock.from=<back end>`; file sidecar `state: migrating` + `migration`) | source ready + target migrating | finds the target, resumes the copy |
//! | 2 | copy (see [`crate::copy`]), checkpoints in the journal every 256 MiB or 5 s, each after the target's data was synced | the same | resumes at the last checkpoint of this migration id |
//! | 3 | verify: content hash of source and target | the same | copies from the checkpoint, verifies again |
//! | 4 | source marked `deleting` | source deleting + target migrating | promotes, deletes |
//! | 5 | target promoted (marks removed) | source deleting + target ready | deletes the source |
//! | 6 | source deleted (thick LVs zeroed first per `volumeClear`) | target ready | nothing left |
//!
//! Between two back ends of one space whose objects are bound to nothing in
//! it but their owner mark (both [`crate::model::Capabilities::relabel`]:
//! thick LVs of one volume group) there is nothing to copy: the source hands
//! the object over ([`Driver::hand_over`], one metadata update, so a crash
//! leaves it on one side or the other) and the target grows it to a larger
//! size if one was asked. Between other back ends of one space (a thin pool
//! and a thick back end, two thin pools) the steps above run inside it.
//!
//! With its snapshots (`migrateSnapshots: true`, [`Move::snapshots`]) a
//! volume moves as a chain that stays a chain on the target: see
//! [`chain`].
//!
//! A failed verification keeps the source as it was, resets the checkpoint
//! (the next run copies from the start) and says so. The source must not be
//! written while it moves: an open LV is refused (the planner refuses it too),
//! and a write during the copy fails the verification rather than being lost.
//!
//! Works on any two [`Driver`]s: where the source holds data comes from its
//! [`Layout`], what a new target reads where nothing is written from its
//! capabilities (`new_reads_zero`: holes left, else every gap zeroed), and a
//! target that is a regular file ([`PathKind::File`]) is read back while it
//! is written and verified by its own data extents; a block device by the
//! source's.
//!
//! A copy never fills the space its target draws on (a thin pool, a file
//! system: [`Driver::room`]): it asks as it writes and stops, its progress
//! checkpointed, before the free space falls under what it leaves for the
//! space's other users ([`crate::driver::Room::reserve`]), with a message
//! that names the space and the way on; the next run resumes once there is
//! room. A full pool would stall or fail every volume in it, not only ours.
//!
//! Must not: decide whether to migrate (the planner's), print (progress goes
//! through [`crate::copy::Observer`]), touch anything without our marks, or
//! branch on a back end's kind.

mod chain;

pub use chain::{Link, Moved};

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::copy::{self, Extents, Target};
use crate::driver::{
    DataPath, Driver, DriverError, Layout, Mark, NewMark, NewObject, ObjKind, PathKind,
};

/// Errors of a migration.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A back end operation failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// Opening a device or file failed.
    #[error("cannot open {}", path.display())]
    Open {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The copy failed.
    #[error("copy from {from} to {to} failed")]
    Copy {
        /// Source back end.
        from: String,
        /// Target back end.
        to: String,
        /// Why.
        #[source]
        source: copy::CopyError,
    },
    /// The target's content differs from the source's.
    #[error(
        "verification failed: the source hashes {source_hash}, the target {target_hash}; the source on {from} is kept and unchanged, and the next apply copies again from the start (was the volume written during the copy?)"
    )]
    Verify {
        /// Source back end.
        from: String,
        /// Hash of the source.
        source_hash: String,
        /// Hash of the target.
        target_hash: String,
    },
    /// The volume is in neither place, or in a state that is not a migration.
    #[error("{0}")]
    State(String),
    /// The journal could not be read or written.
    #[error("journal")]
    Journal(#[from] crate::state::journal::JournalError),
}

impl MigrateError {
    /// I/O, a failed copy or verification (the next run copies again) and
    /// the back ends' retryable failures can be tried again; a state that is
    /// no migration cannot.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Driver(e) => e.is_retryable(),
            Self::Open { .. } | Self::Copy { .. } | Self::Verify { .. } | Self::Journal(_) => true,
            Self::State(_) => false,
        }
    }
}

/// What to move.
#[derive(Debug, Clone, Copy)]
pub struct Move<'a> {
    /// The volume's identity (kept).
    pub uuid: Uuid,
    /// Its manifest name (kept).
    pub name: &'a str,
    /// The target's size (at least the source's).
    pub size: u64,
    /// Read at most this many bytes per second.
    pub bandwidth: Option<u64>,
    /// Its snapshots, moved with it as a chain (`migrateSnapshots`); none:
    /// the volume alone.
    pub snapshots: &'a [Link<'a>],
}

/// Where checkpoints go and come from.
pub trait Checkpoints: copy::Observer {
    /// The last checkpoint's offset for migration `id` (0: none).
    fn last(&self, id: Uuid) -> Result<u64, MigrateError>;
    /// Which migration the next checkpoints belong to.
    fn begin(&mut self, id: Uuid);
    /// Forget progress: the next run starts at 0.
    fn reset(&mut self, id: Uuid) -> Result<(), MigrateError>;
}

/// No checkpoints: every run starts at 0 (tests of short copies).
#[cfg(test)]
impl Checkpoints for copy::Quiet {
    fn last(&self, _: Uuid) -> Result<u64, MigrateError> {
        Ok(0)
    }
    fn begin(&mut self, _: Uuid) {}
    fn reset(&mut self, _: Uuid) -> Result<(), MigrateError> {
        Ok(())
    }
}

/// What a migration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Whether anything was done.
    pub changed: bool,
    /// The copy's figures, when this run copied.
    pub copy: Option<copy::Stats>,
    /// The verified content hash, when this run verified.
    pub hash: Option<String>,
    /// The snapshots moved with it, oldest first, when this run verified.
    pub snapshots: Vec<Moved>,
}

impl Report {
    fn nothing_to_copy(changed: bool) -> Self {
        Report {
            changed,
            copy: None,
            hash: None,
            snapshots: Vec::new(),
        }
    }
}

/// The migration's checkpoints, and the target's room asked before each
/// stretch of writes (see the module docs).
struct Guard<'a> {
    checkpoints: &'a mut dyn Checkpoints,
    dst: &'a dyn Driver,
    uuid: Uuid,
}

impl copy::Observer for Guard<'_> {
    fn progress(&mut self, at: &copy::Position) {
        self.checkpoints.progress(at);
    }
    fn checkpoint(&mut self, at: &copy::Position) -> Result<(), String> {
        self.checkpoints.checkpoint(at)
    }
    fn may_write(&mut self, at: &copy::Position, next: u64) -> Result<u64, String> {
        let room = match self.dst.room(self.uuid) {
            Ok(Some(room)) => room,
            Ok(None) => return Ok(u64::MAX),
            Err(e) => {
                // A failed look is no reason to stop; look again soon.
                tracing::warn!(error = %crate::error_chain(&e), "cannot read the free space of the migration's target");
                return Ok(next);
            }
        };
        let allowed = next_stretch(&room, next);
        tracing::debug!(what = %room.what, free = room.free, ?allowed, "room for the copy");
        allowed.map_err(|why| {
            format!(
                "stopped before filling {}: {why}; {} of the {} this run copies were copied and are kept (the next apply resumes there); {}, then apply again",
                room.what,
                mib(at.read),
                mib(at.to_read),
                room.how,
            )
        })
    }
}

/// How much a copy about to write `next` bytes may write before it looks
/// at `room` again: half of what is free above the reserve, at least
/// `next`; or why not (`next` would eat into the reserve).
fn next_stretch(room: &crate::driver::Room, next: u64) -> Result<u64, String> {
    if let Some(short) = &room.short {
        return Err(short.clone());
    }
    let reserve = room.reserve();
    let above = room.free.saturating_sub(reserve);
    if above < next {
        return Err(format!(
            "{} free of {}, and a copy leaves {} (5 %, at most 1 GiB) for its other users",
            mib(room.free),
            mib(room.total),
            mib(reserve)
        ));
    }
    Ok((above / 2).max(next))
}

/// `bytes` in MiB, for messages.
#[allow(clippy::cast_precision_loss)]
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// Finishes the switch: promote the target, delete the source.
fn switch(src: &dyn Driver, dst: &dyn Driver, uuid: Uuid) -> Result<(), MigrateError> {
    dst.set_mark(uuid, Mark::Ready)?;
    src.delete(uuid)?;
    Ok(())
}

/// Refuses a source that is no volume, in use (unless its move was verified
/// already and only the switch is left), neither ready nor verified, or
/// larger than its target's `size`; `true` when only the switch is left.
fn movable(
    info: &crate::driver::Object,
    src: &dyn Driver,
    size: u64,
) -> Result<bool, MigrateError> {
    let uuid = info.uuid;
    if info.kind != ObjKind::Volume {
        return Err(MigrateError::State(format!(
            "{uuid} on {} is a {}, not a volume",
            src.name(),
            info.kind
        )));
    }
    if info.in_use && info.mark != Mark::Deleting {
        return Err(MigrateError::State(format!(
            "volume {uuid} on {} is open (in use); stop its users and apply again",
            src.name()
        )));
    }
    match info.mark {
        Mark::Ready => {}
        // Verified in an earlier run, which then crashed.
        Mark::Deleting => return Ok(true),
        other => {
            return Err(MigrateError::State(format!(
                "volume {uuid} on {} is {}, not ready",
                src.name(),
                other.as_str()
            )));
        }
    }
    if size < info.size {
        return Err(MigrateError::State(format!(
            "the target's {size} bytes are fewer than the source's {}",
            info.size
        )));
    }
    Ok(false)
}

fn open(path: &Path, write: bool) -> Result<File, MigrateError> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|source| MigrateError::Open {
            path: path.to_owned(),
            source,
        })
}

/// Runs (or resumes) one migration of `mv` from `src` to `dst`; see the
/// module docs for the steps.
#[allow(clippy::too_many_lines)] // the steps of the module docs' table, in order
pub fn run(
    mv: &Move<'_>,
    src: &dyn Driver,
    dst: &dyn Driver,
    cp: &mut dyn Checkpoints,
) -> Result<Report, MigrateError> {
    if !mv.snapshots.is_empty() {
        return chain::run(mv, src, dst, cp);
    }
    let uuid = mv.uuid;
    let Some(info) = src.object(uuid)? else {
        // Gone from the source: done, if the target holds the volume.
        return match dst.object(uuid)? {
            // (A hand-over stopped before growing it to a new size.)
            Some(o) if o.mark == Mark::Ready && o.size < mv.size => {
                dst.extend(uuid, mv.size)?;
                Ok(Report::nothing_to_copy(true))
            }
            Some(o) if o.mark == Mark::Ready => Ok(Report::nothing_to_copy(false)),
            _ => Err(MigrateError::State(format!(
                "volume {uuid} is neither on {} nor, ready, on {}",
                src.name(),
                dst.name()
            ))),
        };
    };
    if movable(&info, src, mv.size)? {
        // Verified in an earlier run, which then crashed.
        tracing::info!(%uuid, "finishing a verified migration");
        switch(src, dst, uuid)?;
        return Ok(Report::nothing_to_copy(true));
    }
    if src.capabilities().relabels_to(&dst.capabilities()) && dst.object(uuid)?.is_none() {
        // One space, and the object is bound to nothing in it but its owner
        // mark: the source becomes the target in one metadata update.
        src.hand_over(uuid, dst.name())?;
        if mv.size > info.size {
            dst.extend(uuid, mv.size)?;
        }
        tracing::info!(%uuid, from = %src.name(), to = %dst.name(), "handed over: nothing copied");
        return Ok(Report::nothing_to_copy(true));
    }
    let from = src.name().to_owned();
    dst.create(&NewObject {
        uuid,
        name: mv.name,
        kind: ObjKind::Volume,
        size: mv.size,
        source: None,
        mark: NewMark::Migrating {
            id: Uuid::new_v4(),
            from: &from,
        },
    })?;
    // A resumed migration keeps the id its checkpoints carry.
    let id = dst.object(uuid)?.and_then(|o| o.migration).ok_or_else(|| {
        MigrateError::State(format!(
            "the target of {uuid} on {} lost its migration mark",
            dst.name()
        ))
    })?;
    cp.begin(id);
    let start = cp.last(id)?;
    let layout = src.layout(uuid)?;
    let from_data: DataPath = src.data_path(uuid)?;
    let to_data: DataPath = dst.data_path(uuid)?;
    let len = info.size;
    let source = open(&from_data.path, false)?;
    let target = open(&to_data.path, true)?;
    let target_len = crate::blockio::size(&target).map_err(|source| MigrateError::Open {
        path: to_data.path.clone(),
        source,
    })?;
    let copy_err = |source| MigrateError::Copy {
        from: from.clone(),
        to: dst.name().to_owned(),
        source,
    };
    let extents = match layout {
        Layout::Seek => Extents::of_file(&source, &from_data.path, len).map_err(copy_err)?,
        Layout::Ranges(r) => Extents::new(r, len),
        Layout::Everything => Extents::all(len),
    };
    if start > 0 {
        tracing::info!(%uuid, %id, offset = start, "resuming a migration at its last checkpoint");
    }
    let file_target = to_data.kind == PathKind::File;
    let stats = copy::copy(
        &copy::Job {
            source: &source,
            source_path: &from_data.path,
            target: &target,
            target_path: &to_data.path,
            len,
            target_len,
            extents: &extents,
            kind: if dst.capabilities().new_reads_zero {
                Target::Holes
            } else {
                Target::MustZero
            },
            start,
            bandwidth: mv.bandwidth,
            hash_source: true,
            // A target file is read back while copying (their holes are
            // checked after it); block devices after the copy.
            read_back: file_target,
            writeback: file_target,
        },
        &mut Guard {
            checkpoints: cp,
            dst,
            uuid,
        },
    )
    .map_err(copy_err)?;
    tracing::info!(%uuid, read = stats.read, written = stats.written, zeroed = stats.zeroed, resumed_at = stats.started_at, "copied; verifying");
    // The target is read where it holds data by its own account (a file's
    // SEEK_DATA), else where the source does: a target that must be zeroed
    // had its gaps zeroed explicitly, and one that reads zeros unwritten
    // does. A file target read back during the copy needs only its holes
    // checked: no data outside the blocks the source has.
    let target_hash = if file_target {
        let own = Extents::of_file(&target, &to_data.path, len).map_err(copy_err)?;
        match stats.target_hash {
            Some(h) if extents.covers(&own, len) => h,
            _ => copy::content_hash(&target, &to_data.path, len, &own).map_err(copy_err)?,
        }
    } else {
        copy::content_hash(&target, &to_data.path, len, &extents).map_err(copy_err)?
    };
    // A source whose own host hashed it (another host's volume) must match
    // that hash too: what crossed the wire is checked against what is there.
    // A resumed copy of it has no in-line hash of the source: that host's
    // own hash stands for it (no second read over the wire).
    let known = src.known_hash(uuid)?;
    let source_hash = source_hash(stats.source_hash, known.as_deref(), || {
        copy::content_hash(&source, &from_data.path, len, &extents).map_err(copy_err)
    })?;
    let mismatch = known
        .as_deref()
        .filter(|k| *k != target_hash.to_hex().as_str())
        .map(str::to_owned);
    if source_hash != target_hash || mismatch.is_some() {
        cp.reset(id)?;
        return Err(MigrateError::Verify {
            from,
            source_hash: mismatch.unwrap_or_else(|| source_hash.to_hex().to_string()),
            target_hash: target_hash.to_hex().to_string(),
        });
    }
    drop((source, target));
    src.set_mark(uuid, Mark::Deleting)?;
    switch(src, dst, uuid)?;
    Ok(Report {
        changed: true,
        copy: Some(stats),
        hash: Some(source_hash.to_hex().to_string()),
        snapshots: Vec::new(),
    })
}

/// The source's hash for a verification: the copy's in-line one, else
/// (a resumed copy) the hash its own host published, else `read` it. A
/// published text that is no hash is not used: the source is read, and the
/// mismatch with the published text is reported.
pub(crate) fn source_hash<E>(
    inline: Option<blake3::Hash>,
    known: Option<&str>,
    read: impl FnOnce() -> Result<blake3::Hash, E>,
) -> Result<blake3::Hash, E> {
    match inline.or_else(|| known.and_then(|k| blake3::Hash::from_hex(k).ok())) {
        Some(h) => Ok(h),
        None => read(),
    }
}

// Test data builders narrow sizes to buffer lengths on purpose.
#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
pub(crate) mod tests;
