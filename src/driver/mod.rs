//! The seam between the pipeline and the back ends: the [`Driver`] trait
//! every back end implements, the values it speaks in, [`DriverError`], and
//! fault injection over any driver ([`fault`]).
//!
//! ```text
//!  observe ─┐                    ┌─ file::seam::FileDriver  (files, NFS)
//!  apply ───┤                    │
//!  migrate ─┼── &dyn Driver ─────┼─ lvm::seam::LvmDriver    (VGs, thin pools)
//!  backup ──┘  (registry)        │
//!                                └─ fake::FakeDriver        (unit tests)
//! ```
//!
//! A driver is one back end of this host: it creates objects with a
//! [`Mark`] (ready, being filled, or a migration's target), snapshots,
//! extends, releases and deletes them, changes their mark, opens their data
//! ([`DataPath`]), says where it holds data ([`Layout`]) and takes a point
//! in time for a backup ([`PointInTime`]). Every mutating operation is
//! idempotent by uuid and reports a [`Change`]; every object it touches
//! carries its owner mark. What it can do is plain data ([`Capabilities`]):
//! discovery puts it on each back end's view, so the planner reads it
//! without ever calling a driver.
//!
//! The pipeline names no back-end kind. A new kind of endpoint (a remote
//! volume reached over an iSCSI login: a block device of known size, no
//! snapshots) implements this trait, answers what it cannot do with a
//! permanent [`DriverError`], and needs no branch in `apply`, `migrate` or
//! `backup`.
//!
//! Invariants:
//! - A [`DriverError`] names the back end and the operation, keeps the back
//!   end's own error as its cause, and says whether retrying can help; the
//!   agent's backoff reads that, never the text.
//! - Nothing here spawns a process or touches a device: the implementations
//!   do, through their own modules.
//!
//! Must not: know a back-end kind (the registry builds drivers from
//! manifests; `file` and `lvm` implement the trait), or decide anything the
//! plan did not say.

#[cfg(test)]
pub mod fake;
pub mod fault;

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use crate::model::{
    Capabilities, Change, Discovery, GroupSnapshots, Mark, ObjKind, SnapshotSpace,
};

/// One back end of this host, behind the seam.
pub trait Driver: Send + Sync {
    /// The back end's manifest name: the owner mark on its objects.
    fn name(&self) -> &str;

    /// What it can do (pure data; see [`Capabilities`]).
    fn capabilities(&self) -> Capabilities;

    /// Discovers this back end alone: (allocation granularity in bytes,
    /// what it holds, each object with what holds it open by `holders`).
    /// The registry batches back ends whose tool reads many at once (one
    /// `lvm fullreport` for every volume group) instead.
    fn discover(&self, holders: &Holders) -> (u64, Discovery);

    /// Creates object `new` (a volume or an image), empty or copied from its
    /// source, carrying `new.mark`; idempotent by uuid: finishes an
    /// interrupted create, `Unchanged` when it exists as asked.
    fn create(&self, new: &NewObject<'_>) -> Result<Change, DriverError>;

    /// Snapshot `uuid` named `name` of volume `volume`; `space` is the
    /// copy-on-write space where the back end reserves one
    /// ([`SnapshotSpace::CopyOnWrite`]).
    fn snapshot(
        &self,
        volume: Uuid,
        uuid: Uuid,
        name: &str,
        space: u64,
    ) -> Result<Change, DriverError>;

    /// Grows volume `uuid` to `size` bytes; refuses to shrink.
    fn extend(&self, uuid: Uuid, size: u64) -> Result<Change, DriverError>;

    /// Lets go of object `uuid` (`deletionPolicy: Retain`): its data stays,
    /// its owner mark goes, so it is foreign from now on. Absent is
    /// `Unchanged`.
    fn release(&self, uuid: Uuid) -> Result<Change, DriverError>;

    /// Deletes object `uuid` (mark `deleting`, wipe where the back end
    /// does, remove). Absent is `Unchanged`; in use is refused.
    fn delete(&self, uuid: Uuid) -> Result<Change, DriverError>;

    /// Changes object `uuid`'s mark: [`Mark::Ready`] ends a fill or promotes
    /// a migration's target, [`Mark::Deleting`] marks a migration's source
    /// once its copy is verified. `Unchanged` when it carries `mark` already.
    fn set_mark(&self, uuid: Uuid, mark: Mark) -> Result<Change, DriverError>;

    /// Records on volume `uuid` itself the consistency group it belongs to
    /// (`None`: none) — an LV tag, a sidecar field — so discovery sees
    /// membership without the state directory. `Unchanged` when it carries
    /// that already.
    fn set_group(&self, uuid: Uuid, group: Option<&str>) -> Result<Change, DriverError>;

    /// Object `uuid` as it is now, or `None` when this back end does not
    /// hold it.
    fn object(&self, uuid: Uuid) -> Result<Option<Object>, DriverError>;

    /// The data of object `uuid`, ready for I/O (an LV is activated).
    fn data_path(&self, uuid: Uuid) -> Result<DataPath, DriverError>;

    /// Where object `uuid` holds data.
    fn layout(&self, uuid: Uuid) -> Result<Layout, DriverError>;

    /// A point in time of volume `req.volume` for backup `req.backup`.
    fn point_in_time(&self, req: &PitRequest) -> Result<Box<dyn PointInTime + '_>, DriverError>;

    /// Takes foreign entry `a.entry` of this back end (an LV or a file, as
    /// it is) into management as object `a.uuid`: its identity and owner
    /// mark are written in one step (one `lvchange`, one atomic sidecar
    /// write), its data is never touched and its name never changed. An
    /// entry this back end released (`Retain`) and that still carries
    /// `a.uuid` is taken back. `Unchanged` when `a.uuid` is ours already;
    /// refused when the entry is gone, is not `a.size` bytes (it changed
    /// since the plan), carries another identity or owner, or cannot be an
    /// object of this back end.
    fn adopt(&self, a: &Adoption<'_>) -> Result<Change, DriverError>;

    /// Gives object `uuid` the manifest name `name` (a rename in the
    /// manifests, `cinderblock.dev/renamed-from`): only the name the back
    /// end keeps with it changes (a sidecar's `name`, an LV's name tag, in
    /// one atomic write or one `lvchange`); its identity, data, file or LV
    /// name and snapshots' links stay. `Unchanged` when it has that name;
    /// refused when it is not ours.
    fn rename(&self, uuid: Uuid, name: &str) -> Result<Change, DriverError>;
    /// Gives object `uuid` to back end `to`, which shares this back end's
    /// space and relabels too ([`Capabilities::relabel`]), by changing its
    /// owner mark in one metadata update: no data moves. Only a ready,
    /// unused object is handed over; absent is `Unchanged` (handed over
    /// already, the caller checks `to`).
    fn hand_over(&self, uuid: Uuid, to: &str) -> Result<Change, DriverError> {
        let _ = (uuid, to);
        Err(DriverError::refused(
            self.name(),
            Op::HandOver,
            "this back end's objects move only by a copy".into(),
        ))
    }

    /// The space new data of object `uuid` is allocated from, now, when
    /// writing can run out of it: a thin LV's pool, a sparse file's file
    /// system; `None` where it is allocated already (a thick LV). A copy
    /// into the object asks as it goes and stops before it would fill the
    /// space the back end's other objects write into
    /// ([`crate::copy::Observer::may_write`]).
    fn room(&self, uuid: Uuid) -> Result<Option<Room>, DriverError> {
        let _ = uuid;
        Ok(None)
    }

    /// A crash-consistent group snapshot: one snapshot of every member of
    /// `cut`, all holding the same instant, or none of them. Back ends that
    /// can ([`Capabilities::group_snapshots`]) take it all or nothing: a
    /// complete set found is `Unchanged`, a partial one (an interrupted
    /// earlier attempt) is removed and the cut taken again, and a failure
    /// removes what it made. `holds` hears of each hold on a member's I/O
    /// before it is placed (the executor journals it).
    fn group_snapshot(
        &self,
        cut: &GroupCut<'_>,
        holds: &mut dyn Holds,
    ) -> Result<CutReport, DriverError> {
        let _ = (cut, holds);
        Err(DriverError::refused(
            self.name(),
            Op::GroupSnapshot,
            "this back end takes no group snapshots".into(),
        ))
    }

    /// Releases every hold on I/O an interrupted group snapshot left in
    /// place on this back end (a device of ours left suspended);
    /// `Unchanged` when there is none. Back ends that never hold I/O have
    /// nothing to release.
    fn thaw(&self) -> Result<Change, DriverError> {
        Ok(Change::Unchanged)
    }

    /// Snapshot `uuid` named `name` of migration target `volume` (marked
    /// `migrating`), itself marked `migrating` with the volume's migration
    /// in the same step (one `lvcreate`; a file's sidecar says `creating`
    /// until its copy is complete, and a re-run copies again): one link of
    /// a snapshot chain moving with its volume (`migrateSnapshots`), which
    /// becomes a ready snapshot when the migration promotes it. `space` as
    /// for [`Driver::snapshot`]. `Unchanged` when it exists as such.
    fn migration_snapshot(
        &self,
        volume: Uuid,
        uuid: Uuid,
        name: &str,
        space: u64,
    ) -> Result<Change, DriverError> {
        let _ = (volume, uuid, name, space);
        Err(DriverError::refused(
            self.name(),
            Op::Snapshot,
            "this back end cannot take a snapshot chain".into(),
        ))
    }

    /// The content hash (BLAKE3, [`crate::copy::content_hash`], hex) of
    /// object `uuid` as its own host computed it, when this endpoint knows
    /// one without reading through its data path (a volume of another host
    /// whose host published it): a migration verifies its target against
    /// it too. None by default.
    fn known_hash(&self, uuid: Uuid) -> Result<Option<String>, DriverError> {
        let _ = uuid;
        Ok(None)
    }

    /// Creates the back end's declared pool of `size` data and `metadata`
    /// metadata bytes; `Unchanged` when it exists.
    fn create_pool(&self, size: u64, metadata: u64) -> Result<Change, DriverError> {
        let _ = (size, metadata);
        Err(DriverError::refused(
            self.name(),
            Op::CreatePool,
            "this back end has no pool to create".into(),
        ))
    }
}

/// Free space that writes to an object draw on ([`Driver::room`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    /// What it is, for messages: `thin pool vg/pool0`, `file system of /srv`.
    pub what: String,
    /// Bytes free for data now.
    pub free: u64,
    /// Bytes in all.
    pub total: u64,
    /// Set when the space is short of something other than data bytes
    /// (a thin pool's metadata), with the figures in words.
    pub short: Option<String>,
    /// How an admin makes room in it, for messages.
    pub how: String,
}

impl Room {
    /// What a copy leaves free for the space's other users: 5 % of it, at
    /// most 1 GiB.
    pub fn reserve(&self) -> u64 {
        (self.total / 20).min(1 << 30)
    }
}

/// One member of a group snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutMember<'a> {
    /// The member volume.
    pub volume: Uuid,
    /// Its snapshot's identity (chosen by the executor, journalled).
    pub snapshot: Uuid,
    /// The snapshot's name (`<group snapshot>.<volume>`).
    pub name: &'a str,
    /// Copy-on-write space, where the back end reserves one.
    pub space: u64,
}

/// A group snapshot to take ([`Driver::group_snapshot`]).
#[derive(Debug, Clone, Copy)]
pub struct GroupCut<'a> {
    /// The consistency group (data only: recorded on the snapshots).
    pub group: &'a str,
    /// The members, in the plan's order.
    pub members: &'a [CutMember<'a>],
    /// The longest the members' I/O may be held: past it everything is
    /// released, what was made is removed, and the step fails.
    pub limit: std::time::Duration,
}

/// What a group snapshot did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutReport {
    /// `Unchanged` when the complete set existed.
    pub change: Change,
    /// How long the members' I/O was held, where it was (measured from the
    /// first hold to the last release).
    pub freeze: Option<std::time::Duration>,
}

/// Hears of each hold on a member's I/O before it is placed.
pub trait Holds {
    /// About to hold the I/O of `volume` of back end `backend`; an error
    /// stops the cut before the hold.
    fn before_hold(&mut self, backend: &str, volume: Uuid) -> Result<(), String>;
}

/// A group snapshot on a back end whose members must be idle
/// ([`GroupSnapshots::Idle`]): `holder` names what holds a volume open;
/// any member in use is refused with its holder, and the rest is taken one
/// snapshot after another (nothing writes, so they hold one instant).
pub fn idle_group_snapshot(
    d: &dyn Driver,
    cut: &GroupCut<'_>,
    holder: &dyn Fn(Uuid) -> Result<Option<String>, DriverError>,
) -> Result<CutReport, DriverError> {
    let mut found = 0;
    for m in cut.members {
        if d.object(m.snapshot)?.is_some() {
            found += 1;
        }
    }
    if found == cut.members.len() {
        return Ok(CutReport {
            change: Change::Unchanged,
            freeze: None,
        });
    }
    let mut held = Vec::new();
    for m in cut.members {
        if let Some(h) = holder(m.volume)? {
            held.push(format!("{} by {h}", m.volume));
        }
    }
    if !held.is_empty() {
        return Err(DriverError::refused(
            d.name(),
            Op::GroupSnapshot,
            format!(
                "members in use ({}): on this back end a group snapshot is consistent only while no member is in use; stop or detach them, then apply again",
                held.join(", ")
            ),
        ));
    }
    // An interrupted earlier attempt: its partial set goes first.
    for m in cut.members {
        d.delete(m.snapshot)?;
    }
    for (i, m) in cut.members.iter().enumerate() {
        if let Err(e) = d.snapshot(m.volume, m.snapshot, m.name, m.space) {
            for done in &cut.members[..i] {
                if let Err(undo) = d.delete(done.snapshot) {
                    tracing::warn!(snapshot = %done.snapshot, error = %crate::error_chain(&undo), "cannot remove a member snapshot of a failed group snapshot; the next run removes it");
                }
            }
            return Err(e);
        }
        fault::named("group-member");
    }
    Ok(CutReport {
        change: Change::Changed,
        freeze: None,
    })
}

/// What one scan of this host found holding files and devices open
/// ([`crate::inuse`]), or why it could not look: one per discovery, shared
/// by every back end.
pub type Holders = Result<crate::inuse::Holders, String>;

/// Names the holder of each object that is open with no holder named yet
/// (an LV lvm2 reports open), where `holders` sees one: a process, a loop
/// device, a mount, a stacked device.
pub fn name_block_holders(inv: &mut crate::model::Inventory, holders: &Holders) {
    let Ok(h) = holders else { return };
    for o in &mut inv.objects {
        if let Some(crate::model::InUse::Unnamed { device }) = &o.in_use
            && let Some(who) = h.block_device(Path::new(device))
        {
            o.in_use = Some(crate::model::InUse::Named {
                holder: who.to_string(),
            });
        }
    }
}

/// The mark a new object carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewMark<'a> {
    /// Ready when created (its data, empty or copied, is complete).
    Ready,
    /// Marked `creating`, left empty for the caller to fill (a restore)
    /// and then [`Driver::set_mark`] it ready.
    Filling,
    /// The target of migration `id` from back end `from`: marked
    /// `migrating`, empty; an existing target of this size is found as it is
    /// (a resumed migration keeps its data and its migration id).
    Migrating {
        /// The migration's identity (its journal checkpoints carry it).
        id: Uuid,
        /// The back end the volume moves from.
        from: &'a str,
    },
}

/// An object to create.
#[derive(Debug, Clone, Copy)]
pub struct NewObject<'a> {
    /// Identity (chosen by the executor, journalled, reused on retry).
    pub uuid: Uuid,
    /// The manifest name (data only).
    pub name: &'a str,
    /// Volume or image.
    pub kind: ObjKind,
    /// Logical size in bytes (at least the source's).
    pub size: u64,
    /// Copy the data of this object of the same back end.
    pub source: Option<(ObjKind, Uuid)>,
    /// Its mark.
    pub mark: NewMark<'a>,
}

/// A foreign entry to take into management ([`Driver::adopt`]).
#[derive(Debug, Clone, Copy)]
pub struct Adoption<'a> {
    /// The LV or file name, as discovery listed it.
    pub entry: &'a str,
    /// The identity it gets (or keeps, when it was released).
    pub uuid: Uuid,
    /// The manifest name (data only).
    pub name: &'a str,
    /// Volume or snapshot.
    pub kind: ObjKind,
    /// For a snapshot: its volume.
    pub parent: Option<Uuid>,
    /// Its size in bytes when planned: a different size is refused.
    pub size: u64,
}

/// An object of a back end, as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Identity.
    pub uuid: Uuid,
    /// The manifest name it was created for.
    pub name: String,
    /// Volume, snapshot or image.
    pub kind: ObjKind,
    /// Logical size in bytes.
    pub size: u64,
    /// Its mark.
    pub mark: Mark,
    /// The migration it is the target of, when marked `migrating`.
    pub migration: Option<Uuid>,
    /// Open (in use); back ends that cannot tell say `false`.
    pub in_use: bool,
    /// A key that grows with creation, where the back end keeps one (a
    /// file's creation time in nanoseconds, a thin LV's device id in its
    /// pool): a volume's snapshots move oldest first by it.
    pub created: Option<u64>,
}

/// What an object's data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// A regular file: it answers `SEEK_DATA`, and its writeback can be
    /// started early.
    File,
    /// A block device.
    Block,
}

/// The data of an object, ready for I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPath {
    /// The file or device.
    pub path: PathBuf,
    /// The object's size in bytes.
    pub len: u64,
    /// File or device.
    pub kind: PathKind,
}

/// Where an object holds data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Ask its data path (`SEEK_DATA`/`SEEK_HOLE` on the open file).
    Seek,
    /// These byte ranges; everything else reads as zeros (a thin LV's mapped
    /// ranges).
    Ranges(Vec<Range<u64>>),
    /// Unknown: read everything (zero detection finds the rest).
    Everything,
}

/// What a backup asks of a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PitRequest {
    /// The volume.
    pub volume: Uuid,
    /// The backup's id (names the snapshot or scratch copy).
    pub backup: Uuid,
    /// The parent backup an incremental compares against, when there is
    /// one: a back end that kept that backup's snapshot reads only what
    /// changed since.
    pub parent: Option<Uuid>,
    /// The policy's `force`: take a point in time of a volume in use;
    /// without it, an idle volume is read as it is, and one in use is
    /// refused where the back end can tell.
    pub force: bool,
    /// The manifests export the volume (the kernel may write it without any
    /// process holding it).
    pub exported: bool,
}

/// Which parts of a point in time a backup reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reads {
    /// The file's data extents (`SEEK_DATA`/`SEEK_HOLE`); holes are zeros.
    DataExtents,
    /// These byte ranges; everything else is zeros (a thin LV's mapped
    /// ranges, or the whole of a thick LV).
    Ranges(Vec<Range<u64>>),
    /// These byte ranges changed since the parent backup; every other
    /// chunk is the parent's (`thin_delta` against the parent's kept
    /// snapshot).
    ChangedSinceParent(Vec<Range<u64>>),
}

/// How a point in time was taken, for the backup's summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PitMethod {
    /// A `FICLONE` reflink of the volume file (atomic, O(1)).
    Reflink,
    /// A sparse copy of the volume file's data extents.
    Copy,
    /// The volume itself, read in place (`force: false`).
    Direct,
    /// The volume itself, read in place because the file system has no
    /// reflink and nothing holds the volume (the state lock keeps us off it).
    Idle,
    /// A thin snapshot.
    ThinSnapshot,
    /// A copy-on-write snapshot.
    CowSnapshot,
    /// The member's snapshot of a crash-consistent group snapshot (a group
    /// backup).
    GroupSnapshot,
}

impl PitMethod {
    /// As printed in the run's summary.
    pub fn as_str(self) -> &'static str {
        match self {
            PitMethod::Reflink => "reflink",
            PitMethod::Copy => "sparse copy",
            PitMethod::Direct => "direct read (force: false)",
            PitMethod::Idle => "in-place read (no reflink here; volume not in use)",
            PitMethod::ThinSnapshot => "thin snapshot",
            PitMethod::CowSnapshot => "COW snapshot",
            PitMethod::GroupSnapshot => "group snapshot",
        }
    }
}

/// How a backup read its source, cheapest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ReadMethod {
    /// Only the ranges that changed since the parent (a thin LV's
    /// `thin_delta` against the parent's snapshot); every other chunk is the
    /// parent's, unread.
    ChangedRanges,
    /// Every allocated range (a file's data extents, a thin LV's mapped
    /// ranges), hash-compared with the parent.
    AllocatedScan,
    /// Every byte of the volume, holes too.
    FullScan,
}

impl ReadMethod {
    /// As printed and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChangedRanges => "changedRanges",
            Self::AllocatedScan => "allocatedScan",
            Self::FullScan => "fullScan",
        }
    }
}

/// How a backup read its source and why: in the catalogue entry, `backup
/// run`'s summary and the agent's status. A `fallback` is a run that read
/// more than its source normally needs (a thin LV whose parent's snapshot
/// is gone, a file system that reports no holes): a warning and a metric in
/// the agent, never silent. The driver's point in time says it
/// ([`PointInTime::read`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadRecord {
    /// What was read.
    pub method: ReadMethod,
    /// Why, in words.
    pub reason: String,
    /// It read more than this source normally needs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fallback: bool,
}

impl ReadRecord {
    /// A record of `method` for `reason`.
    pub fn new(method: ReadMethod, reason: impl Into<String>, fallback: bool) -> Self {
        Self {
            method,
            reason: reason.into(),
            fallback,
        }
    }
}

/// A point in time a backup reads. Dropped without [`PointInTime::commit`]
/// (a failed run), whatever it took is removed.
pub trait PointInTime {
    /// The file or device to read.
    fn path(&self) -> &Path;
    /// What to read of it.
    fn reads(&self) -> &Reads;
    /// A scratch copy: the reader may punch out what it has read.
    fn scratch(&self) -> bool;
    /// How it was taken.
    fn method(&self) -> PitMethod;
    /// How the backup reads it, and why: changed ranges, an allocated scan
    /// or a full scan, and whether that is a fallback (reading more than
    /// this source normally needs).
    fn read(&self) -> &ReadRecord;
    /// Still valid? Called after the data is read and before the backup is
    /// committed (a copy-on-write snapshot that overflowed is not).
    fn check(&self) -> Result<(), DriverError>;
    /// The backup is committed: keep what the next incremental needs (a thin
    /// snapshot as its base), remove the rest.
    fn commit(self: Box<Self>) -> Result<(), DriverError>;
}

/// What a driver was doing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Discovery.
    Discover,
    /// [`Driver::create`].
    Create,
    /// [`Driver::snapshot`].
    Snapshot,
    /// [`Driver::extend`].
    Extend,
    /// [`Driver::release`].
    Release,
    /// [`Driver::delete`].
    Delete,
    /// [`Driver::set_mark`].
    SetMark,
    /// [`Driver::object`].
    Lookup,
    /// [`Driver::data_path`].
    Open,
    /// [`Driver::layout`].
    Layout,
    /// [`Driver::point_in_time`] and its [`PointInTime`].
    PointInTime,
    /// [`Driver::create_pool`].
    CreatePool,
    /// [`Driver::adopt`].
    Adopt,
    /// [`Driver::hand_over`].
    HandOver,
    /// [`Driver::group_snapshot`].
    GroupSnapshot,
    /// [`Driver::thaw`].
    Thaw,
    /// [`Driver::set_group`].
    SetGroup,
    /// [`Driver::rename`].
    Rename,
}

impl Op {
    /// In words, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Discover => "discover",
            Op::Create => "create",
            Op::Snapshot => "snapshot",
            Op::Extend => "extend",
            Op::Release => "release",
            Op::Delete => "delete",
            Op::SetMark => "mark",
            Op::Lookup => "look up",
            Op::Open => "open",
            Op::Layout => "map",
            Op::PointInTime => "take a point in time",
            Op::CreatePool => "create the pool",
            Op::Adopt => "adopt",
            Op::HandOver => "hand over",
            Op::GroupSnapshot => "take a group snapshot",
            Op::Thaw => "release held I/O",
            Op::SetGroup => "record the consistency group of",
            Op::Rename => "rename",
        }
    }
}

/// A driver operation failed: which back end, doing what, why (the back
/// end's own error), and whether trying again later can help.
#[derive(Debug, thiserror::Error)]
#[error("cannot {} on back end {backend}", op.as_str())]
pub struct DriverError {
    /// The back end's manifest name.
    pub backend: String,
    /// The operation.
    pub op: Op,
    /// The back end's error.
    #[source]
    pub cause: Box<dyn std::error::Error + Send + Sync>,
    /// Whether a retry can help (contention, a timeout, an I/O error);
    /// otherwise something must change first (a refusal, a conflict).
    pub retryable: bool,
}

impl DriverError {
    /// An error of back end `backend` doing `op`.
    pub fn new(
        backend: &str,
        op: Op,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
        retryable: bool,
    ) -> Self {
        Self {
            backend: backend.to_owned(),
            op,
            cause: cause.into(),
            retryable,
        }
    }

    /// A refusal (permanent): `reason` says why and what to do.
    pub fn refused(backend: &str, op: Op, reason: String) -> Self {
        Self::new(backend, op, reason, false)
    }

    /// Whether a retry can help.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_driver_error_names_back_end_and_operation_then_the_cause() {
        let e = DriverError::refused("fast", Op::Extend, "refusing to shrink".into());
        assert_eq!(
            crate::error_chain(&e),
            "cannot extend on back end fast: refusing to shrink"
        );
        assert!(!e.is_retryable());
    }
}
