//! The shared object model: the plain values every layer speaks — what kind
//! an object is, the mark it carries on its back end, how it looks to
//! discovery, what a back end holds and how much room it has.
//!
//! Owns: [`ObjKind`] (the one object kind: plan addresses, the recorded
//! state, sidecars and LV tags all spell it the same), [`Mark`] (the state a
//! back end stores with an object: `ready`, or an operation in flight),
//! [`Health`] (how discovery judges an object: its mark, plus what only a
//! look at the data shows), [`Change`] (whether an idempotent step did
//! anything), the inventory ([`Observed`] with what holds it open,
//! [`InUse`], [`Inventory`] with its [`Foreign`] entries, [`Discovery`]), capacity ([`Capacity`]), what a
//! back end can do ([`Capabilities`]) and [`round_up`].
//!
//! Invariants: a leaf. It uses nothing of this crate, so every module may
//! use it without an import cycle (a unit test in `tests/cli/architecture.rs`
//! checks there is none). Plain data: no I/O, no back-end knowledge; the
//! serde spellings here are file formats (sidecars, `state.json`), so they
//! never change.
//!
//! Must not: grow behaviour. Anything that needs a back end, a clock or a
//! path belongs to the modules that own those.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What kind of object: the same word in plan addresses (`volume.db`), the
/// recorded state, `file` sidecars and `lvm` tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjKind {
    /// A volume.
    Volume,
    /// A snapshot of a volume.
    Snapshot,
    /// A volume-backed image.
    Image,
}

impl ObjKind {
    /// Every kind, in order.
    pub const ALL: [ObjKind; 3] = [ObjKind::Volume, ObjKind::Snapshot, ObjKind::Image];

    /// The kind as written everywhere (`volume`, `snapshot`, `image`).
    pub fn as_str(self) -> &'static str {
        match self {
            ObjKind::Volume => "volume",
            ObjKind::Snapshot => "snapshot",
            ObjKind::Image => "image",
        }
    }

    /// Parses [`ObjKind::as_str`]'s spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for ObjKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state a back end stores with an object (a sidecar's `state`, an LV's
/// `cinderblock.state` tag, absent when ready): where the object is in its
/// life. Every multi-step operation marks its object first, so a crash
/// anywhere leaves a mark the next run finishes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mark {
    /// Created, data not complete yet (a copy or a restore being filled).
    Creating,
    /// Complete.
    Ready,
    /// Being removed: its data may be gone already.
    Deleting,
    /// The target of a migration in progress: the volume still lives on its
    /// source back end.
    Migrating,
}

impl Mark {
    /// As written in sidecars and tags.
    pub fn as_str(self) -> &'static str {
        match self {
            Mark::Creating => "creating",
            Mark::Ready => "ready",
            Mark::Deleting => "deleting",
            Mark::Migrating => "migrating",
        }
    }

    /// Parses [`Mark::as_str`]'s spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [Mark::Creating, Mark::Ready, Mark::Deleting, Mark::Migrating]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// How discovery judges an object of ours: its [`Mark`], plus what only a
/// look at its data shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum Health {
    /// Complete.
    Ready,
    /// A create was interrupted; re-running it with the same uuid finishes it.
    Creating,
    /// A delete was interrupted; re-running it finishes it.
    Deleting,
    /// Recorded, but its data is gone (removed outside cinderblock).
    DataMissing,
    /// The target of a migration in progress: the volume still lives on
    /// another back end (its source), where it shows as `Ready` (or
    /// `Deleting` once the copy was verified).
    Migrating,
    /// The data's size differs from the recorded size.
    SizeMismatch {
        /// Recorded size.
        recorded: u64,
        /// Actual size.
        actual: u64,
    },
}

impl Health {
    /// The health of an object whose mark is `mark` and whose data is there
    /// and of the recorded size.
    pub fn of_mark(mark: Mark) -> Self {
        match mark {
            Mark::Creating => Health::Creating,
            Mark::Ready => Health::Ready,
            Mark::Deleting => Health::Deleting,
            Mark::Migrating => Health::Migrating,
        }
    }
}

/// Whether an idempotent step changed anything (journalled as its outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Already as asked.
    Unchanged,
    /// Done now.
    Changed,
}

impl Change {
    /// `Changed` when `changed`.
    pub fn from_bool(changed: bool) -> Self {
        if changed {
            Change::Changed
        } else {
            Change::Unchanged
        }
    }

    /// Either changed anything.
    #[must_use]
    pub fn or(self, other: Change) -> Change {
        Change::from_bool(self == Change::Changed || other == Change::Changed)
    }
}

/// One object of ours on a back end, as discovery saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Observed {
    /// Identity.
    pub uuid: Uuid,
    /// The manifest name it was created for.
    pub name: String,
    /// Volume, snapshot or image.
    pub kind: ObjKind,
    /// Logical size in bytes (as recorded by the back end).
    pub size: u64,
    /// Bytes actually allocated, when known.
    pub allocated: Option<u64>,
    /// For snapshots: the volume.
    pub parent: Option<Uuid>,
    /// What a volume was made from and may still share data with: a file
    /// clone's source (a reflink shares extents), a thin LV's origin.
    /// `None` for thick LV copies and volumes made empty.
    pub clone_of: Option<Uuid>,
    /// Condition.
    pub health: Health,
    /// What holds it open, when something does (discovery asks
    /// `crate::inuse`). The planner refuses to delete, replace or move such
    /// an object.
    pub in_use: Option<InUse>,
    /// The consistency group the back end records on it (an LV tag, a
    /// sidecar field), so membership is seen without the state directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// Something holds an object open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "by")]
pub enum InUse {
    /// A holder this host can name: a process (`pid 4242 (qemu-system-x86)`),
    /// a loop device, a mount, a stacked device.
    Named {
        /// Who, worded to follow "in use by".
        holder: String,
    },
    /// An LV that lvm2 reports open (`lv_device_open`) with no holder visible
    /// from here: the kernel's users hold no descriptor (an iSCSI backstore,
    /// a mount in another namespace), nor do other users' processes when
    /// cinderblock is not root.
    Unnamed {
        /// The LV's device.
        device: String,
    },
}

impl std::fmt::Display for InUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InUse::Named { holder } => f.write_str(holder),
            InUse::Unnamed { device } => write!(
                f,
                "a holder not visible from this host (lvm2 reports {device} open: an iSCSI backstore, a mount in another namespace, or another user's process)"
            ),
        }
    }
}

/// Capacity figures of one back end, in bytes, plus what the planner needs
/// to show and share them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    /// Total size (a thin pool's data size; a thick back end's whole space;
    /// a file system's size).
    pub total: u64,
    /// Free space (files: available to unprivileged users; a thin pool's
    /// unused data; thick: free extents).
    pub free: u64,
    /// Sum of logical sizes (files: ours; thin: every thin volume in the
    /// pool; thick: every allocated extent).
    pub provisioned: u64,
    /// The fill of the pool the volumes live in, where the back end has one
    /// (a thin pool): the planner refuses new volumes above its high-water
    /// mark.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fill: Option<PoolFill>,
    /// Space this back end draws from and may share with other back ends
    /// (an LVM volume group).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<SharedSpace>,
    /// The back end's pool does not exist and its manifest declares a size:
    /// the sizes to create it with (the figures above are those of the pool
    /// to be created).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_pool: Option<PoolSizes>,
}

/// A pool's fill, in hundredths of a percent (exact for lvm2's two
/// decimals). `None` while the pool is inactive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolFill {
    /// What kind of pool (`thin pool`).
    pub kind: String,
    /// Its name (`vg0/pool0`).
    pub name: String,
    /// Data use × 100.
    pub data_centi: Option<u32>,
    /// Metadata use × 100.
    pub metadata_centi: Option<u32>,
}

/// Space a back end draws from that other back ends may share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedSpace {
    /// What it is (`volume group`).
    pub kind: String,
    /// Its name (`vg0`): back ends with equal `kind` and `name` share it.
    pub name: String,
    /// Free bytes in it now.
    pub free: u64,
    /// Whether every byte this back end provisions comes out of it (thick
    /// volumes); otherwise only creating its pool does.
    pub draws_provisioned: bool,
}

impl SharedSpace {
    /// As people read it: `volume group vg0`.
    pub fn label(&self) -> String {
        format!("{} {}", self.kind, self.name)
    }
}

/// The sizes of a pool to create, in bytes, multiples of the extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PoolSizes {
    /// Data.
    pub data: u64,
    /// Metadata (lvm2 also keeps a spare of this size in the volume group).
    pub metadata: u64,
}

/// What discovery found on one back end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// Capacity.
    pub capacity: Capacity,
    /// Our objects, sorted by uuid.
    pub objects: Vec<Observed>,
    /// Entries that are not ours, sorted by name.
    pub foreign: Vec<Foreign>,
    /// Problems that make the view partial (no deletes when any).
    pub problems: Vec<String>,
    /// A metadata generation that changes with every change of the back end
    /// (LVM's `vg_seqno`), when it has one; part of the fingerprint.
    pub generation: Option<u64>,
}

/// An entry of a back end that is not ours: listed, never touched unless a
/// manifest adopts it (`cinderblock.dev/adopt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Foreign {
    /// Its name in the back end: an LV name, or a path relative to a `file`
    /// back end's root.
    pub name: String,
    /// Its logical size in bytes, when it has one (an LV, a regular file).
    pub size: Option<u64>,
    /// Why it cannot become a volume of this back end (a directory, a thin
    /// pool, a thin LV of another pool), when it cannot.
    pub unfit: Option<String>,
    /// An object of ours this back end let go (`deletionPolicy: Retain`):
    /// the identity it still carries.
    pub released: Option<Released>,
}

impl Foreign {
    /// An entry known only by its name (nothing to adopt).
    pub fn named(name: impl Into<String>, unfit: impl Into<String>) -> Self {
        Foreign {
            name: name.into(),
            size: None,
            unfit: Some(unfit.into()),
            released: None,
        }
    }
}

/// The identity a released object still carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// Identity.
    pub uuid: Uuid,
    /// Volume, snapshot or image.
    pub kind: ObjKind,
    /// The manifest name it had.
    pub name: String,
}

impl Inventory {
    /// Whether the view is complete (deletes allowed).
    pub fn complete(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Discovery result of one back end.
#[allow(clippy::large_enum_variant)] // one per back end: boxing would buy nothing
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// Discovered.
    Ok(Inventory),
    /// Discovery failed; the message says why.
    Failed(String),
}

/// What a back end can do, as plain data. Its driver says (it is known
/// from the manifests alone, before any I/O); discovery puts it on the back
/// end's view, and the planner reads it instead of asking which kind of back
/// end it is.
#[allow(clippy::struct_excessive_bools)] // independent facts, each read alone
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// Cinder's `storage_protocol` (`nfs`, `iSCSI`), for extra specs.
    pub protocol: String,
    /// Volumes are thin-provisioned (sparse files, thin LVs): Cinder's
    /// capacity formulas and over-subscription apply.
    pub thin: bool,
    /// New volumes read as zeros where nothing was written (sparse files,
    /// thin LVs): a copy or a restore may leave holes. Otherwise (thick
    /// LVs, whose extents hold whatever was there) every byte not written
    /// must be zeroed.
    pub new_reads_zero: bool,
    /// Discovery reports the bytes each object really holds (files, thin
    /// LVs), so a migration reads only those; otherwise it reads the whole
    /// volume.
    pub knows_allocation: bool,
    /// A volume can be extended while it has snapshots (files, thin LVs);
    /// lvm2 resizes a thick origin of thick snapshots only while inactive,
    /// which would cut off its users.
    pub extends_with_snapshots: bool,
    /// How snapshots take space.
    pub snapshots: SnapshotSpace,
    /// The space this back end draws from, which other back ends may share
    /// (an LVM volume group); a migration between two of them copies inside
    /// it, or relabels (below).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub space: Option<Space>,
    /// Its objects are not bound to anything inside `space` but their owner
    /// mark (thick LVs; a thin LV belongs to its pool): a migration to
    /// another back end of the same space that relabels too changes the
    /// owner mark ([`crate::driver::Driver::hand_over`]) and copies nothing.
    pub relabel: bool,
    /// The pool the back end's volumes live in, when the manifests declare
    /// it (a thin pool): created by the plan when it is missing and sized.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolDecl>,
    /// The plan's words for what a delete does besides removing the data
    /// (a thick LV is zeroed first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_note: Option<String>,
    /// The plan's words for what stays of a released object (`Retain`), with
    /// `{uuid}` and `{kind}` to fill in.
    pub retained: String,
    /// Whether and how it takes crash-consistent group snapshots
    /// ([`crate::driver::Driver::group_snapshot`]).
    pub group_snapshots: GroupSnapshots,
}

/// How a back end takes a group snapshot: one snapshot of each of several
/// volumes holding the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum GroupSnapshots {
    /// It cannot.
    #[default]
    None,
    /// Only while no member is in use: with no writer, snapshots taken one
    /// after another hold the same instant (volume files: a reflink each).
    Idle,
    /// I/O of every member is held above it (a device-mapper layer of ours,
    /// suspended) while each member is snapshotted, then released: the
    /// freeze window is measured and bounded.
    Freeze,
}

impl GroupSnapshots {
    /// As written in fleet records.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupSnapshots::None => "none",
            GroupSnapshots::Idle => "idle",
            GroupSnapshots::Freeze => "freeze",
        }
    }

    /// From [`GroupSnapshots::as_str`]; anything else (an older record) is
    /// `None`.
    pub fn parse(s: &str) -> Self {
        match s {
            "idle" => GroupSnapshots::Idle,
            "freeze" => GroupSnapshots::Freeze,
            _ => GroupSnapshots::None,
        }
    }
}

impl Capabilities {
    /// The space this back end shares with one of `other`'s capabilities.
    pub fn shared_space(&self, other: &Capabilities) -> Option<&Space> {
        self.space
            .as_ref()
            .filter(|s| other.space.as_ref() == Some(*s))
    }

    /// Whether an object moves from a back end with these capabilities to
    /// one with `to`'s by a new owner mark alone: both relabel and draw
    /// from one space.
    pub fn relabels_to(&self, to: &Capabilities) -> bool {
        self.relabel && to.relabel && self.shared_space(to).is_some()
    }
}

impl std::fmt::Display for Space {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// How a back end's snapshots take space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum SnapshotSpace {
    /// A copy (a reflink or a sparse copy) at the volume's size.
    Copy,
    /// Blocks shared with the volume (thin): the volume's size rounded to
    /// the extent, taken from the pool only as they diverge.
    Shared,
    /// A copy-on-write store reserved up front (thick): the snapshot's
    /// `spec.size`, or the volume's size as Cinder does.
    CopyOnWrite,
}

/// A named space back ends draw from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Space {
    /// What it is (`volume group`).
    pub kind: String,
    /// Its name (`vg0`).
    pub name: String,
}

/// A pool the manifests declare for a back end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolDecl {
    /// What it is (`thin pool`).
    pub kind: String,
    /// Its name inside its space (`pool0`).
    pub name: String,
    /// The size to create it with, when declared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The manifest field that declares the size (`spec.lvm.thinPoolSize`).
    pub field: String,
}

/// The longest a group snapshot holds its members' I/O (a group snapshot
/// step's, and a group backup's).
pub const FREEZE_LIMIT_MS: u64 = 30_000;

/// The name prefix of a group backup's member snapshots,
/// `_group-backup-<group backup id>.<volume>`: no manifest name starts with
/// `_`, so they are never mistaken for declared snapshots, and observation
/// leaves them out of the world (the planner never forgets or deletes a
/// snapshot a running group backup reads; the next group backup of the
/// group removes any a killed run left).
pub const GROUP_BACKUP_CUT: &str = "_group-backup-";

/// Whether `name` is a group backup's member snapshot ([`GROUP_BACKUP_CUT`]).
pub fn is_group_backup_cut(name: &str) -> bool {
    name.starts_with(GROUP_BACKUP_CUT)
}

/// Rounds `bytes` up to a multiple of `extent`.
pub fn round_up(bytes: u64, extent: u64) -> u64 {
    if extent <= 1 {
        return bytes;
    }
    bytes.div_ceil(extent).saturating_mul(extent)
}

// Cross-host migration jobs (`crate::xhost`), as plans and status see them.
/// One end of a job: a host and one of its back ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    /// The host (`--host`).
    pub host: String,
    /// The back end's manifest name.
    pub backend: String,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.host, self.backend)
    }
}

/// Where a job stands (see the module docs' table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// The source exported the volume and published its map and hash.
    Exported,
    /// The destination logged in and copies.
    Copying,
    /// The destination verified its copy and logged out.
    Verified,
}

impl Phase {
    /// The word shown in plans and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Exported => "exported",
            Phase::Copying => "copying",
            Phase::Verified => "verified",
        }
    }
}

/// A job as plans and status show it: no target, no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    /// Identity.
    pub uuid: Uuid,
    /// Where it lives.
    pub from: End,
    /// Where it goes.
    pub to: End,
    /// Where the job stands.
    pub phase: Phase,
    /// Bytes copied.
    pub copied: u64,
    /// Bytes to copy.
    pub to_copy: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_marks_keep_their_file_spellings() {
        for k in ObjKind::ALL {
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
            assert_eq!(ObjKind::parse(k.as_str()), Some(k));
        }
        for m in [Mark::Creating, Mark::Ready, Mark::Deleting, Mark::Migrating] {
            assert_eq!(
                serde_json::to_string(&m).unwrap(),
                format!("\"{}\"", m.as_str())
            );
            assert_eq!(Mark::parse(m.as_str()), Some(m));
        }
    }

    #[test]
    fn round_up_to_the_extent() {
        assert_eq!(round_up(5, 4), 8);
        assert_eq!(round_up(8, 4), 8);
        assert_eq!(round_up(5, 1), 5);
        assert_eq!(round_up(u64::MAX, 4), u64::MAX);
    }
}
