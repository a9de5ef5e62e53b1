//! The planner: a pure function of (desired manifests, observed world,
//! recorded state) → an ordered list of actions, each with its reason and
//! data-impact class, plus drift, errors and capacity before → after.
//!
//! Invariants: no I/O, no clock, no randomness (new objects get their uuid at
//! apply time, and the journal keeps it); every map is sorted, so the same
//! input gives byte-identical output. Each action is fully specified: the
//! executor makes no decisions. Deletes happen only when every back end was
//! discovered completely and the manifests declare at least one volume or
//! snapshot (a failed listing or an empty tree never reads as "delete all").

mod across;
pub mod capacity;
mod exports;
mod groups;

pub use groups::FREEZE_LIMIT_MS;
pub mod markdown;
pub mod placement;
mod rename;
pub mod render;
pub mod schedule;
#[cfg(test)]
pub(crate) mod tests;

use exports::unexport_action;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::manifest::kinds::{DeletionPolicy, MigrationPolicy, SecretRef, VolumeSpec};
use crate::manifest::values::format_bytes_exact;
use crate::manifest::{Doc, ManifestSet, Name};
use crate::model::InUse;
pub use crate::model::ObjKind;
use crate::model::SnapshotSpace;
use crate::observe::{BackendView, Discovery, Fleet, Health, Observed, World};
use crate::state::record::{Recorded, RecordedObject};

use capacity::HIGH_WATER_CENTI;
use schedule::{Request, Scheduler};

/// How an action affects data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Impact {
    /// Only metadata changes.
    MetadataOnly,
    /// Storage grows; no data is lost.
    Grows,
    /// Data moves to another back end: copied, verified, then the source
    /// is removed; nothing is lost.
    Moves,
    /// Data is destroyed.
    DestroysData,
}

impl Impact {
    /// As printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Impact::MetadataOnly => "metadata-only",
            Impact::Grows => "grows",
            Impact::Moves => "moves data (copied and verified before the source is removed)",
            Impact::DestroysData => "destroys data",
        }
    }
}

/// How a migration moves a volume's data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Carry {
    /// Copied, verified, then the source removed.
    #[default]
    Copy,
    /// Handed over inside the space both back ends share (a new owner
    /// mark, [`crate::model::Capabilities::relabels_to`]): nothing is copied.
    HandOver,
}

/// A move between hosts ([`crate::xhost`]): the same `Op::Migrate` planned
/// on both, each doing its half.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Across {
    /// The host the volume lives on.
    pub from_host: String,
    /// The host it moves to.
    pub to_host: String,
    /// What this host does.
    pub role: Role,
    /// The job's phase in etcd, when one is in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Bytes the destination copied so far, when a job is in flight.
    #[serde(default)]
    pub copied: u64,
    /// Destination only: the source host finished (no job, the volume on
    /// no other host) while this host holds its verified target: only the
    /// promotion is left.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub source_gone: bool,
}

/// A host's half of a move between hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// The source: export, wait, remove the source once verified.
    Export,
    /// The destination: log in, copy, verify, promote.
    Copy,
}

impl Across {
    /// What each host does, in words (`stor-a exports and waits, stor-b
    /// copies`).
    pub fn duties(&self) -> String {
        format!(
            "{} exports and waits, {} copies over iSCSI and verifies, then {} removes the source",
            self.from_host, self.to_host, self.from_host
        )
    }
}

/// A snapshot that moves with its volume (`migrateSnapshots: true`): the
/// chain is rebuilt on the target, oldest first, each snapshot keeping its
/// name and uuid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainSnapshot {
    /// Manifest name (kept).
    pub name: String,
    /// Identity (kept).
    pub uuid: Uuid,
    /// Its size now.
    pub size: u64,
    /// Its size on the target (rounded up to the target's extent).
    pub target_size: u64,
    /// The copy-on-write space it gets on a target that reserves one.
    pub space: u64,
    /// Bytes of data it holds (what its move reads at most on this side:
    /// the allocated data where the source can tell, else all of it).
    pub read: u64,
}

/// Where a new object's data comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceRef {
    /// A volume or a snapshot.
    pub kind: ObjKind,
    /// Its name.
    pub name: String,
    /// Its uuid when it exists already; otherwise it is created earlier in
    /// the same plan and the executor knows it by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
}

/// A volume's consistency group before and after a `Record` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupChange {
    /// The group the record named (none: not a member).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The group the manifest names (none: leaving the group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// One member of a group snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupMember {
    /// The member volume's manifest name.
    pub volume: String,
    /// Its uuid when it exists already; otherwise it is created earlier in
    /// the same plan and the executor knows it by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_uuid: Option<Uuid>,
    /// The member snapshot's name: `<group snapshot>.<volume>` (a dot,
    /// which no manifest name holds, so it never meets a `Snapshot`'s).
    pub snapshot: String,
    /// The snapshot's identity, when an interrupted earlier cut left it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    /// Its size (copy-on-write space where the back end reserves one).
    pub size: u64,
}

/// One step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "op")]
pub enum Op {
    /// Take a crash-consistent group snapshot (`Snapshot.spec.
    /// consistencyGroup`): one snapshot of every member at one instant,
    /// all or none; an interrupted earlier cut's partial set is removed
    /// and the cut taken again.
    GroupSnapshot {
        /// The `Snapshot` manifest's name.
        name: String,
        /// The consistency group.
        group: String,
        /// The back end all members live on.
        backend: String,
        /// The members, by volume name.
        members: Vec<GroupMember>,
        /// Deletion policy to record on each member snapshot.
        deletion_policy: DeletionPolicy,
        /// The longest the members' I/O may be held, in milliseconds, on a
        /// back end that holds it (past it everything is released and the
        /// step fails); none where nothing is held.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        freeze_limit_ms: Option<u64>,
        /// The expected freeze, in words.
        freeze: String,
    },
    /// Create a volume or snapshot (or finish an interrupted create).
    Create {
        /// Volume or snapshot.
        kind: ObjKind,
        /// Manifest name.
        name: String,
        /// Back end.
        backend: String,
        /// Size in bytes.
        size: u64,
        /// Copy from this object (snapshots: their volume).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<SourceRef>,
        /// Finish the interrupted create of this uuid.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<Uuid>,
        /// Restore this backup into the new volume (`source.backup`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backup: Option<crate::observe::BackupSource>,
        /// Deletion policy to record.
        deletion_policy: DeletionPolicy,
        /// Images: copy the content of this raw file in.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_file: Option<std::path::PathBuf>,
        /// A volume placed by the fleet: the placement record's revision,
        /// which the executor checks against etcd right before it creates
        /// the volume (the fencing token).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        placement: Option<i64>,
        /// A volume's consistency group, recorded with it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        consistency_group: Option<String>,
    },
    /// Take a foreign LV or file into management as a volume, or take
    /// back one this back end released (`Retain`): marked ours, its data
    /// and its name kept.
    Adopt {
        /// Volume.
        kind: ObjKind,
        /// Manifest name.
        name: String,
        /// Back end.
        backend: String,
        /// The LV or file name (`cinderblock.dev/adopt`).
        entry: String,
        /// Its identity: the one a released object kept, else one derived
        /// from the back end and the entry (so planning stays pure and a
        /// re-run after a crash finds it).
        uuid: Uuid,
        /// Its size in bytes (apply refuses another).
        size: u64,
        /// Released by this back end earlier: taken back.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        released: bool,
        /// Deletion policy to record.
        deletion_policy: DeletionPolicy,
        /// A snapshot's volume.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<Uuid>,
    },
    /// Give an object the new name its manifest declares
    /// (`cinderblock.dev/renamed-from`), keeping its identity, data,
    /// exports, backups and snapshots (or finish an interrupted rename).
    Rename {
        /// Volume, snapshot or image.
        kind: ObjKind,
        /// The new manifest name.
        name: String,
        /// The name it has now (or had, when only the records are left to
        /// change).
        from: String,
        /// Identity (kept).
        uuid: Uuid,
        /// Back end.
        backend: String,
    },
    /// Grow a volume.
    Extend {
        /// Manifest name.
        name: String,
        /// Identity.
        uuid: Uuid,
        /// Back end.
        backend: String,
        /// Current size.
        from: u64,
        /// New size.
        to: u64,
    },
    /// Record an object, or a new deletion policy, in the state directory.
    Record {
        /// Volume or snapshot.
        kind: ObjKind,
        /// Manifest name.
        name: String,
        /// Identity.
        uuid: Uuid,
        /// Back end.
        backend: String,
        /// Size.
        size: u64,
        /// The recorded policy, when there was a record.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<DeletionPolicy>,
        /// The policy to record.
        deletion_policy: DeletionPolicy,
        /// The back end the record named, when the object is elsewhere now
        /// (a migration that finished after its last record).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        moved_from: Option<String>,
        /// The size the record named, when the volume holds another now (an
        /// extend that finished after its last record).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resized_from: Option<u64>,
        /// A volume's consistency group to record.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        consistency_group: Option<String>,
        /// The group the record named, when the manifest names another (a
        /// volume joining or leaving a group).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        regrouped: Option<GroupChange>,
    },
    /// Destroy an object and its data.
    Delete {
        /// Volume or snapshot.
        kind: ObjKind,
        /// Manifest name it had.
        name: String,
        /// Identity.
        uuid: Uuid,
        /// Back end.
        backend: String,
        /// Size.
        size: u64,
    },
    /// Move a volume to another back end of this host, keeping its name
    /// and uuid (or finish an interrupted move).
    Migrate {
        /// Manifest name.
        name: String,
        /// Identity (kept).
        uuid: Uuid,
        /// The back end it lives on.
        from: String,
        /// The back end it moves to.
        to: String,
        /// Its size now.
        size: u64,
        /// Its size on the target (rounded up to the target's extent, or
        /// grown to a new `spec.size`).
        target_size: u64,
        /// Bytes that will be read: the allocated data where the source
        /// can tell (files; thin LVs), else the whole volume.
        read: u64,
        /// The target back end's virtual free bytes (Cinder's formula)
        /// before and after.
        target_free: (u64, u64),
        /// Read at most this many bytes per second (`migrationBandwidth`
        /// of the source back end).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bandwidth: Option<u64>,
        /// A migration target exists already: the copy resumes.
        resume: bool,
        /// Deletion policy to record.
        deletion_policy: DeletionPolicy,
        /// How the data moves (older saved plans: a copy).
        #[serde(default)]
        carry: Carry,
        /// The space both back ends draw from, in words (`volume group
        /// vg0`), when they share one: the move stays inside it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        within: Option<String>,
        /// Its snapshots, moving with it as a chain (`migrateSnapshots:
        /// true`), by name.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        snapshots: Vec<ChainSnapshot>,
        /// A move between hosts: the hosts and this host's half.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        across: Option<Across>,
    },
    /// Create a back end's declared thin pool (`spec.lvm.thinPoolSize`).
    CreatePool {
        /// Back end.
        backend: String,
        /// Its volume group.
        volume_group: String,
        /// The pool's name.
        pool: String,
        /// Data size in bytes.
        size: u64,
        /// Metadata size in bytes (lvm2 keeps a spare of the same size).
        metadata_size: u64,
    },
    /// Export a volume over iSCSI (LIO), or bring its export in line with
    /// the manifest.
    Export {
        /// Manifest name.
        name: String,
        /// Identity (`None`: created earlier in this plan).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uuid: Option<Uuid>,
        /// Back end.
        backend: String,
        /// The target's IQN (`None`: the default, from the uuid).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        iqn: Option<String>,
        /// Initiators allowed, sorted.
        initiators: Vec<String>,
        /// Portals, sorted (`[]`: the default).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        portals: Vec<String>,
        /// Where the CHAP credentials are read at apply time (never the
        /// secret itself).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chap: Option<SecretRef>,
        /// Where the mutual CHAP credentials (the target's) are read at
        /// apply time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mutual: Option<SecretRef>,
        /// What changes on an existing export (empty: a new one).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        changes: Vec<String>,
        /// Logged-in initiators that keep their sessions, while the change
        /// reaches them only at their next login (with new credentials,
        /// when those changed).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        relogin: Vec<String>,
        /// Move the backstore out of the HBA folder it shares (the layout of
        /// earlier versions) into one of its own: the target is made
        /// again. Planned only while no initiator is logged in.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        rehome: bool,
    },
    /// Set this host's `SendTargets` discovery authentication (LIO,
    /// host-wide).
    DiscoveryAuth {
        /// Where the credentials initiators present are read at apply time.
        chap: SecretRef,
        /// Where the target's credentials (mutual CHAP) are read at apply
        /// time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mutual: Option<SecretRef>,
        /// What changes (the first entry says when it is new).
        changes: Vec<String>,
        /// Discovery authentication was not enforced before.
        new: bool,
    },
    /// Remove a volume's iSCSI export.
    Unexport {
        /// Manifest name it has or had.
        name: String,
        /// Identity.
        uuid: Uuid,
        /// The target.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        iqn: Option<String>,
    },
    /// Let go of an object, keeping its data (`Retain`), or drop the record
    /// of one that is gone.
    Forget {
        /// Volume or snapshot.
        kind: ObjKind,
        /// Manifest name it had.
        name: String,
        /// Identity.
        uuid: Uuid,
        /// Back end.
        backend: String,
        /// True when the object no longer exists (only the record goes).
        gone: bool,
    },
}

/// One action of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    /// `volume.NAME` or `snapshot.NAME`.
    pub address: String,
    /// What to do.
    pub op: Op,
    /// Why, in words.
    pub reason: String,
    /// Data impact.
    pub impact: Impact,
}

impl Action {
    /// Terraform's symbol for the action.
    pub fn symbol(&self) -> &'static str {
        match self.op {
            Op::Create { .. }
            | Op::GroupSnapshot { .. }
            | Op::Adopt { .. }
            | Op::CreatePool { .. }
            | Op::DiscoveryAuth { new: true, .. } => "+",
            Op::Export { ref changes, .. } if changes.is_empty() => "+",
            Op::Extend { .. }
            | Op::Rename { .. }
            | Op::Record { .. }
            | Op::Export { .. }
            | Op::DiscoveryAuth { .. } => "~",
            Op::Delete { .. } | Op::Unexport { .. } => "-",
            Op::Forget { .. } => ".",
            Op::Migrate { .. } => ">",
        }
    }
}

/// Something that changed outside cinderblock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// `volume.NAME`.
    pub address: String,
    /// What changed.
    pub message: String,
}

/// Capacity of one back end before and after the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapacityChange {
    /// Back end.
    pub backend: String,
    /// Thin or thick.
    pub thin: bool,
    /// Total bytes.
    pub total: u64,
    /// Provisioned before.
    pub provisioned_before: u64,
    /// Provisioned after.
    pub provisioned_after: u64,
    /// Virtual free before (Cinder's formula).
    pub virtual_free_before: f64,
    /// Virtual free after.
    pub virtual_free_after: f64,
    /// Effective over-subscription ratio (thin).
    pub ratio: f64,
    /// Further lines under the back end's: the space it shares with other
    /// back ends (a volume group's free bytes before → after), its pool's
    /// fill against the high-water mark.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<CapacityLine>,
}

/// One labelled line of figures under a back end's capacity line, e.g.
/// `volume group vg0: free 7.1 GiB -> 6 GiB` or `thin pool vg0/pool0: data
/// 6.45%, metadata 10.79% (high-water mark 90%)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapacityLine {
    /// What the figures are about (`volume group`, `thin pool`).
    pub kind: String,
    /// Its name (`vg0`, `vg0/pool0`).
    pub name: String,
    /// The figures, in order.
    pub figures: Vec<Figure>,
    /// A remark after them (in parentheses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One named figure of a [`CapacityLine`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Figure {
    /// Its name (`free`, `data`).
    pub name: String,
    /// Its value.
    pub value: FigureValue,
}

/// A figure's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "unit")]
pub enum FigureValue {
    /// Bytes before → after the plan.
    Bytes {
        /// Before.
        before: u64,
        /// After.
        after: u64,
    },
    /// Hundredths of a percent; `None` when unknown (an inactive pool).
    Percent {
        /// The value × 100.
        centi: Option<u32>,
    },
}

/// Why a plan (or part of it) cannot be applied: the object, what kind of
/// obstacle, and what to do. Shown as `ADDRESS: MESSAGE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanError {
    /// The object it concerns (`volume.db`), when one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// What kind of obstacle.
    pub kind: PlanErrorKind,
    /// What is wrong and what to do, without the address.
    pub message: String,
}

impl PlanError {
    /// An error about the object at `address`.
    pub fn new(address: &str, kind: PlanErrorKind, message: String) -> Self {
        Self {
            address: Some(address.to_owned()),
            kind,
            message,
        }
    }
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.address {
            Some(a) => write!(f, "{a}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl PlanError {
    /// Whether `text` is this error as shown (`ADDRESS: MESSAGE`).
    fn shown_as(&self, text: &str) -> bool {
        match &self.address {
            Some(a) => {
                text.strip_prefix(a.as_str())
                    .and_then(|rest| rest.strip_prefix(": "))
                    == Some(self.message.as_str())
            }
            None => text == self.message,
        }
    }
}

/// Compares the text as shown (`ADDRESS: MESSAGE`).
impl PartialEq<&str> for PlanError {
    fn eq(&self, other: &&str) -> bool {
        self.shown_as(other)
    }
}

/// Compares the text as shown (`ADDRESS: MESSAGE`).
impl PartialEq<String> for PlanError {
    fn eq(&self, other: &String) -> bool {
        self.shown_as(other)
    }
}

/// What kind of obstacle a [`PlanError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlanErrorKind {
    /// The manifests ask for what would lose data or what cannot be done
    /// from here (a shrink, a delete blocked by snapshots, a move its policy
    /// forbids): change them.
    Refused,
    /// Nothing can take it (capacity, filters, the high-water mark).
    NoRoom,
    /// It is in use (an open volume, a logged-in initiator): its users must
    /// stop first.
    InUse,
    /// Its data is gone, or it exists twice, or an earlier operation left it
    /// in a state only a person can settle.
    Lost,
    /// This version of cinderblock cannot do it yet.
    Unsupported,
}

/// A plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Fingerprint of the observed world the plan was made from.
    pub fingerprint: String,
    /// Changes made outside cinderblock.
    pub drift: Vec<Drift>,
    /// The steps, in order.
    pub actions: Vec<Action>,
    /// Why the plan cannot be applied (any error blocks apply).
    pub errors: Vec<PlanError>,
    /// Remarks that do not block (e.g. deletes held back).
    pub notes: Vec<String>,
    /// Objects this host does not create now, and why (a placement the
    /// fleet has not made yet, an unpinned volume several hosts could take
    /// without `--etcd`); they do not block the rest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<Waiting>,
    /// Capacity per back end.
    pub capacity: Vec<CapacityChange>,
    /// Objects of ours the state directory has no record of, whose record
    /// says only what no record means (`deletionPolicy: Retain`, no
    /// consistency group): recorded by the next apply without a step of
    /// their own, so a new state directory (or one that lost its
    /// `state.json`) plans to "No changes" over manifests that say what
    /// exists (what `discover` writes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unrecorded: Vec<Unrecorded>,
}

/// An object recorded without a step ([`Plan::unrecorded`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unrecorded {
    /// Identity.
    pub uuid: Uuid,
    /// The record to write.
    pub record: RecordedObject,
}

/// An object left for later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// `volume.NAME`.
    pub address: String,
    /// Why, and what would let it go on.
    pub reason: String,
}

impl Plan {
    /// Number of (add, change, destroy, forget) actions; a migration counts
    /// as a change (see [`Plan::migrations`]).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let t = Tally::of(&self.actions);
        (t.add, t.change + t.migrate, t.destroy, t.forget)
    }
    /// Number of migrations.
    pub fn migrations(&self) -> usize {
        self.actions
            .iter()
            .filter(|a| matches!(a.op, Op::Migrate { .. }))
            .count()
    }
    /// Whether any action destroys data.
    pub fn destroys_data(&self) -> bool {
        self.actions
            .iter()
            .any(|a| a.impact == Impact::DestroysData)
    }
}

/// Actions counted the way the summary line names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Creates (pools and new exports too).
    pub add: usize,
    /// In-place changes (extends, records, export changes, unexports).
    pub change: usize,
    /// Deletes.
    pub destroy: usize,
    /// Forgets (data kept, or already gone).
    pub forget: usize,
    /// Migrations.
    pub migrate: usize,
}

impl Tally {
    /// Counts `actions`.
    pub fn of<'a>(actions: impl IntoIterator<Item = &'a Action>) -> Tally {
        let mut t = Tally::default();
        for a in actions {
            match a.op {
                Op::Create { .. }
                | Op::GroupSnapshot { .. }
                | Op::Adopt { .. }
                | Op::CreatePool { .. }
                | Op::DiscoveryAuth { new: true, .. } => {
                    t.add += 1;
                }
                Op::Export { ref changes, .. } if changes.is_empty() => t.add += 1,
                Op::Extend { .. }
                | Op::Rename { .. }
                | Op::Record { .. }
                | Op::Export { .. }
                | Op::DiscoveryAuth { .. }
                | Op::Unexport { .. } => {
                    t.change += 1;
                }
                Op::Migrate { .. } => t.migrate += 1,
                Op::Delete { .. } => t.destroy += 1,
                Op::Forget { .. } => t.forget += 1,
            }
        }
        t
    }

    /// Adds another tally (a fleet's hosts).
    #[must_use]
    pub fn plus(self, o: Tally) -> Tally {
        Tally {
            add: self.add + o.add,
            change: self.change + o.change,
            destroy: self.destroy + o.destroy,
            forget: self.forget + o.forget,
            migrate: self.migrate + o.migrate,
        }
    }
}

/// Options that change what the planner allows.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Recreate, empty, volumes that were deleted outside cinderblock.
    pub recreate_lost: bool,
}

struct Found<'a> {
    backend: &'a BackendView,
    obj: &'a Observed,
}

/// Makes the plan.
#[allow(clippy::too_many_lines)]
pub fn plan(set: &ManifestSet, world: &World, recorded: &Recorded, opts: Options) -> Plan {
    // Renames first: the rest is planned on the world as it will be after
    // them (each renamed object under its new name).
    let renames = rename::resolve(set, world, recorded);
    let fingerprint = world.fingerprint();
    let world = renames.world.as_ref().unwrap_or(world);
    let mut p = Planner {
        set,
        world,
        recorded,
        opts,
        sched: Scheduler::new(&set.scheduler_policy(), world),
        out: Plan {
            fingerprint,
            drift: Vec::new(),
            actions: renames.actions,
            errors: renames.errors,
            notes: renames.notes,
            waiting: Vec::new(),
            capacity: Vec::new(),
            unrecorded: Vec::new(),
        },
        found: BTreeMap::new(),
        waiting: BTreeSet::new(),
        failed: BTreeSet::new(),
        planned: BTreeMap::new(),
        migrating: BTreeMap::new(),
        half_moved: BTreeMap::new(),
        recorded_by_name: recorded_by_name(recorded),
        unresolved: renames.unresolved,
        old_names: renames.old_names,
    };
    p.index();
    p.unsupported();
    p.pools();
    p.images();
    p.unexports();
    p.objects();
    p.exports();
    p.discovery_auth();
    p.removals();
    p.capacity();
    p.out
}

struct Planner<'a> {
    set: &'a ManifestSet,
    world: &'a World,
    recorded: &'a Recorded,
    opts: Options,
    sched: Scheduler<'a>,
    out: Plan,
    /// Our objects by (kind, name).
    found: BTreeMap<(ObjKind, String), Found<'a>>,
    /// Objects created by this plan: (kind, name) → back end.
    planned: BTreeMap<(ObjKind, String), String>,
    /// Back ends whose discovery failed: what lives there is unknown.
    failed: BTreeSet<String>,
    /// Migration targets in flight, by (kind, name): the volume itself is
    /// in `found`, on its source back end.
    migrating: BTreeMap<(ObjKind, String), Found<'a>>,
    /// Sources left `deleting` by a migration that verified and promoted
    /// its target, then stopped: the volume itself (the target) is in
    /// `found`.
    half_moved: BTreeMap<(ObjKind, String), Found<'a>>,
    /// Objects left for later (`Plan::waiting`): what depends on them
    /// waits too.
    waiting: BTreeSet<(ObjKind, String)>,
    /// The recorded objects by kind and name, in uuid order (a lookup per
    /// new object, not a scan of ten thousand records).
    recorded_by_name: HashMap<(ObjKind, &'a str), Vec<(Uuid, &'a RecordedObject)>>,
    /// Declared objects renamed from one that is not here
    /// ([`rename::Renames::unresolved`]): never created.
    unresolved: BTreeSet<(ObjKind, String)>,
    /// Names declared as renamed from ([`rename::Renames::old_names`]):
    /// what is still under one is not removed.
    old_names: BTreeSet<(ObjKind, String)>,
}

/// [`Planner::recorded_by_name`].
fn recorded_by_name(recorded: &Recorded) -> HashMap<(ObjKind, &str), Vec<(Uuid, &RecordedObject)>> {
    let mut by: HashMap<(ObjKind, &str), Vec<(Uuid, &RecordedObject)>> = HashMap::new();
    for (u, r) in &recorded.objects {
        by.entry((r.kind, r.name.as_str()))
            .or_default()
            .push((*u, r));
    }
    by
}

/// Where a new volume goes.
struct Located {
    /// The back end.
    backend: String,
    /// How it was chosen, for the reason (`pinned to its back end`).
    how: String,
    /// The fleet placement's revision (the fencing token).
    fence: Option<i64>,
}

/// Why a volume's `source.backup` names no backup (`Planner::backup_source`).
enum Unresolved {
    /// None yet, and its policy will make one: the volume waits.
    NotYet(String),
    /// A plan error.
    Refused(String),
}

/// How a new volume's back end was fixed before the scheduler could have a
/// say.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fixed {
    Source,
    Pin,
    Group,
    Fleet,
}

/// The identity an adopted entry gets: derived from its back end and its
/// name (the first 16 bytes of a BLAKE3 hash, as a version-8 uuid), so the
/// plan stays a pure function and a re-run after a crash adopts the same
/// entry under the same identity.
pub fn adopted_uuid(backend: &str, entry: &str) -> Uuid {
    let mut h = blake3::Hasher::new();
    h.update(b"cinderblock adopt\0");
    h.update(backend.as_bytes());
    h.update(b"\0");
    h.update(entry.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&h.finalize().as_bytes()[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

fn addr(kind: ObjKind, name: &str) -> String {
    format!("{}.{name}", kind.as_str())
}

impl<'a> Planner<'a> {
    #[allow(clippy::too_many_lines)] // one pass over what discovery saw, kept together
    fn index(&mut self) {
        let mut seen: BTreeMap<(ObjKind, String), Vec<(&BackendView, &Observed)>> = BTreeMap::new();
        for b in self.world.backends.values() {
            match &b.discovery {
                Discovery::Ok(inv) => {
                    for o in &inv.objects {
                        seen.entry((o.kind, o.name.clone()))
                            .or_default()
                            .push((b, o));
                    }
                    if !inv.complete() {
                        self.out.notes.push(format!(
                            "back end {} was not fully understood ({}); no deletes in this run",
                            b.name,
                            inv.problems.join("; ")
                        ));
                    }
                }
                Discovery::Failed(e) => {
                    self.failed.insert(b.name.as_str().to_owned());
                    self.out.notes.push(format!(
                    "discovery of back end {} failed: {e}; no deletes in this run, and nothing is placed there",
                    b.name
                ));
                }
            }
        }
        for ((kind, name), list) in seen {
            let key = (kind, name.clone());
            // A migration's target carries the volume's identity beside
            // the volume itself; it is not a duplicate.
            let (targets, mut rest): (Vec<_>, Vec<_>) = list
                .iter()
                .copied()
                .partition(|(_, o)| o.health == Health::Migrating);
            if rest.len() == 2
                && rest[0].1.uuid == rest[1].1.uuid
                && let Some(i) = rest.iter().position(|(_, o)| o.health == Health::Deleting)
                && rest[1 - i].1.health != Health::Deleting
            {
                let (backend, obj) = rest.remove(i);
                self.half_moved.insert(key.clone(), Found { backend, obj });
            }
            if rest.len() > 1 || targets.len() > 1 {
                let where_: Vec<String> = list
                    .iter()
                    .map(|(b, o)| format!("{} on {}", o.uuid, b.name))
                    .collect();
                self.error(
                    &addr(kind, &name),
                    PlanErrorKind::Lost,
                    format!(
                        "exists more than once ({}); remove the extra copies by hand or rename them",
                        where_.join(", ")
                    ),
                );
                continue;
            }
            if let Some((backend, obj)) = targets.first().copied() {
                self.migrating.insert(key.clone(), Found { backend, obj });
            }
            if let Some((backend, obj)) = rest.first().copied() {
                self.found.insert(key, Found { backend, obj });
            }
        }
        // Records of objects that are gone (a set, not a scan per record: ten
        // thousand LVs must plan in milliseconds).
        let present: BTreeSet<(&str, Uuid)> = self
            .world
            .backends
            .values()
            .filter_map(|b| Some((b.name.as_str(), b.inventory()?)))
            .flat_map(|(n, inv)| {
                inv.objects
                    .iter()
                    .filter(|o| o.health != Health::DataMissing)
                    .map(move |o| (n, o.uuid))
            })
            .collect();
        for (uuid, rec) in &self.recorded.objects {
            let kind: ObjKind = rec.kind;
            let Some(b) = self.world.backends.get(rec.backend.as_str()) else {
                continue;
            };
            let Some(inv) = b.inventory() else { continue };
            if !present.contains(&(rec.backend.as_str(), *uuid)) && inv.complete() {
                self.out.drift.push(Drift {
                    address: addr(kind, &rec.name),
                    message: format!(
                        "was deleted outside cinderblock ({uuid} on {}, {} when last applied)",
                        rec.backend,
                        format_bytes_exact(rec.size)
                    ),
                });
            }
        }
        for f in self.found.values() {
            let a = addr(f.obj.kind, &f.obj.name);
            match f.obj.health {
                Health::DataMissing => self.out.drift.push(Drift {
                    address: a,
                    message: format!(
                        "its data was removed outside cinderblock ({} on {})",
                        f.obj.uuid, f.backend.name
                    ),
                }),
                Health::SizeMismatch { recorded, actual } if actual < recorded => {
                    self.out.drift.push(Drift {
                        address: a,
                        message: format!(
                            "was truncated outside cinderblock: {} -> {}",
                            format_bytes_exact(recorded),
                            format_bytes_exact(actual)
                        ),
                    });
                }
                _ => {}
            }
        }
    }

    /// Kinds and fields this version cannot carry out yet are refused, not
    /// ignored: a plan that silently skipped an export would lie.
    fn unsupported(&mut self) {
        if !matches!(self.world.fleet, Fleet::Off) {
            for (name, doc) in &self.set.backends {
                if doc.spec.host.is_none() {
                    self.error(
                        &format!("backend.{name}"),
                        PlanErrorKind::Refused,
                        "spec.host is not set, and in a fleet every host would take it as its own; name its host".into(),
                    );
                }
            }
        }
    }

    /// Thin pools that LVM back ends declare with `thinPoolSize` and that do
    /// not exist yet: created first, before anything is placed in them. A pool
    /// is never sized by guesswork (Cinder takes 95 % of the VG).
    fn pools(&mut self) {
        for (name, b) in &self.world.backends {
            let (Some(decl), Some(space)) = (&b.caps.pool, &b.caps.space) else {
                continue;
            };
            let (volume_group, pool, thin_pool_size) = (&space.name, &decl.name, &decl.size);
            let Some(cap) = b.inventory().map(|i| &i.capacity) else {
                continue;
            };
            let vg_free = cap.shared.as_ref().map_or(0, |s| s.free);
            let a = format!("pool.{name}");
            let Some(sizes) = cap.create_pool else {
                if let (Some(want), Some(inv)) = (thin_pool_size, b.inventory())
                    && round_up(*want, b.extent) > inv.capacity.total
                {
                    self.out.notes.push(format!(
                        "{a}: {} ({}) is only used to create the pool; {volume_group}/{pool} exists with {} and is left as it is",
                        decl.field,
                        format_bytes_exact(*want),
                        format_bytes_exact(inv.capacity.total)
                    ));
                }
                continue;
            };
            let need = sizes.data + 2 * sizes.metadata;
            if need > vg_free {
                self.error(&a, PlanErrorKind::NoRoom, format!(
                    "{} {volume_group}/{pool} needs {} ({} data, {} metadata and as much again for lvm2's metadata spare), but {} {volume_group} has {} free; lower {} or grow the {}",
                    decl.kind,
                    format_bytes_exact(need),
                    format_bytes_exact(sizes.data),
                    format_bytes_exact(sizes.metadata),
                    space.kind,
                    format_bytes_exact(vg_free),
                    decl.field,
                    space.kind
                ));
                continue;
            }
            let rounded = thin_pool_size
                .filter(|s| *s != sizes.data)
                .map(|s| {
                    format!(
                        " (rounded up from {} to the {} extent)",
                        format_bytes_exact(s),
                        format_bytes_exact(b.extent)
                    )
                })
                .unwrap_or_default();
            self.out.actions.push(Action {
                address: a,
                op: Op::CreatePool {
                    backend: name.as_str().to_owned(),
                    volume_group: volume_group.clone(),
                    pool: pool.clone(),
                    size: sizes.data,
                    metadata_size: sizes.metadata,
                },
                reason: format!(
                    "{} {volume_group}/{pool} does not exist and {} declares {}{rounded}",
                    decl.kind,
                    decl.field,
                    format_bytes_exact(sizes.data)
                ),
                impact: Impact::Grows,
            });
        }
    }

    fn recorded_policy(&self, uuid: Uuid) -> Option<DeletionPolicy> {
        self.recorded.objects.get(&uuid).map(|r| r.deletion_policy)
    }

    /// A recorded object of this name that is gone from a back end that was
    /// discovered (on an undiscovered one, nothing can be said).
    fn lost(&self, kind: ObjKind, name: &str) -> Option<(Uuid, &str)> {
        if self.found.contains_key(&(kind, name.to_owned())) {
            return None;
        }
        self.recorded_by_name
            .get(&(kind, name))?
            .iter()
            .find_map(|(u, r)| {
                (!self.failed.contains(&r.backend)).then_some((*u, r.backend.as_str()))
            })
    }

    /// For an object not found: whether it may live on a back end that could
    /// not be discovered; then nothing is created in its place (it would be
    /// a duplicate), and the plan says so.
    fn held_back(&mut self, kind: ObjKind, name: &str, pinned: Option<&Name>) -> bool {
        for m in &self.world.missing {
            self.failed.insert(m.as_str().to_owned());
        }
        if self.failed.is_empty() {
            return false;
        }
        let recorded_on = self
            .recorded_by_name
            .get(&(kind, name))
            .and_then(|v| v.first())
            .map(|(_, r)| r.backend.clone());
        let suspect = match (pinned, &recorded_on) {
            (Some(p), _) => self
                .failed
                .contains(p.as_str())
                .then(|| p.as_str().to_owned()),
            (None, Some(b)) => self.failed.contains(b).then(|| b.clone()),
            (None, None) => Some(self.failed.iter().cloned().collect::<Vec<_>>().join(", ")),
        };
        let Some(where_) = suspect else { return false };
        self.out.notes.push(format!(
            "{} is not planned: it is, or may be, on {where_}, which could not be discovered",
            addr(kind, name)
        ));
        true
    }

    /// A plan error about the object at `address`.
    fn error(&mut self, address: &str, kind: PlanErrorKind, message: String) {
        self.out.errors.push(PlanError::new(address, kind, message));
    }

    /// Records an object found on `backend` when the record is missing or
    /// out of date: another deletion policy, another back end (a migration
    /// that finished after its last record), or, for a volume, another size
    /// than the one `observed` (an extend that finished after it).
    #[allow(clippy::too_many_arguments)] // each piece named
    fn record_if_needed(
        &mut self,
        kind: ObjKind,
        name: &str,
        f_uuid: Uuid,
        backend: &str,
        size: u64,
        observed: Option<u64>,
        policy: DeletionPolicy,
    ) {
        let previous = self.recorded_policy(f_uuid);
        let rec = self.recorded.objects.get(&f_uuid);
        let moved_from = rec
            .map(|r| r.backend.as_str())
            .filter(|b| *b != backend)
            .map(str::to_owned);
        let resized_from = rec
            .map(|r| r.size)
            .filter(|s| observed.is_some_and(|o| o != *s));
        let group = self.group_of(kind, name);
        let regrouped = rec
            .filter(|r| r.consistency_group != group)
            .map(|r| GroupChange {
                from: r.consistency_group.clone(),
                to: group.clone(),
            });
        if previous == Some(policy)
            && moved_from.is_none()
            && resized_from.is_none()
            && regrouped.is_none()
        {
            return;
        }
        if rec.is_none() && policy == DeletionPolicy::default() && group.is_none() {
            // No record means this already: recorded quietly.
            self.out.unrecorded.push(Unrecorded {
                uuid: f_uuid,
                record: RecordedObject {
                    kind,
                    name: name.to_owned(),
                    backend: backend.to_owned(),
                    size,
                    deletion_policy: policy,
                    consistency_group: None,
                },
            });
            return;
        }
        let reason = match (previous, &moved_from) {
            (Some(old), None) if old == policy && resized_from.is_none() => {
                match regrouped.as_ref().map(|g| (&g.from, &g.to)) {
                    Some((Some(g), None)) => format!(
                        "spec.consistencyGroup was removed: it leaves consistency group {g}"
                    ),
                    Some((None, Some(g))) => {
                        format!("spec.consistencyGroup names {g}: it joins that consistency group")
                    }
                    Some((Some(f), Some(t))) => format!(
                        "spec.consistencyGroup changed: it leaves consistency group {f} for {t}"
                    ),
                    _ => "the record is out of date".to_owned(),
                }
            }
            (None, _) => {
                "the state directory has no record of it (new state directory, or it was adopted)"
                    .to_owned()
            }
            (Some(old), _) if old != policy => {
                format!("deletionPolicy changed: {old:?} -> {policy:?}")
            }
            (Some(_), Some(from)) => format!(
                "the record says it lives on {from}, but it is on {backend} (a migration finished after the last record)"
            ),
            (Some(_), None) => format!(
                "the record says {}, but it holds {} (an extend finished after the last record)",
                format_bytes_exact(resized_from.unwrap_or_default()),
                format_bytes_exact(observed.unwrap_or_default())
            ),
        };
        self.out.actions.push(Action {
            address: addr(kind, name),
            op: Op::Record {
                kind,
                name: name.to_owned(),
                uuid: f_uuid,
                backend: backend.to_owned(),
                size,
                previous,
                deletion_policy: policy,
                moved_from,
                resized_from,
                consistency_group: group,
                regrouped,
            },
            reason,
            impact: Impact::MetadataOnly,
        });
    }

    /// The consistency group a declared volume names.
    fn group_of(&self, kind: ObjKind, name: &str) -> Option<String> {
        if kind != ObjKind::Volume {
            return None;
        }
        // By key: a scan here made the plan of 10,000 volumes 4× slower.
        self.set
            .volumes
            .get(name)?
            .spec
            .consistency_group
            .as_ref()
            .map(|g| g.as_str().to_owned())
    }

    /// Sets the consistency group on the create just pushed.
    fn group_last_create(&mut self, name: &Name) {
        let group = self.group_of(ObjKind::Volume, name.as_str());
        if let Some(Action {
            op: Op::Create {
                consistency_group, ..
            },
            ..
        }) = self.out.actions.last_mut()
        {
            *consistency_group = group;
        }
    }

    /// Volumes and snapshots in dependency order: a snapshot after its
    /// volume, a copy after its source; then by kind and name.
    fn order(&self) -> Vec<(usize, ObjKind, &'a Name)> {
        let set = self.set;
        let mut memo = BTreeMap::new();
        let mut items: Vec<(usize, ObjKind, &Name)> = Vec::new();
        for n in set.volumes.keys() {
            items.push((vol_depth(set, n, &mut memo, 0), ObjKind::Volume, n));
        }
        for (n, doc) in &set.snapshots {
            let d = match (&doc.spec.volume, &doc.spec.consistency_group) {
                (Some(v), _) => vol_depth(set, v, &mut memo, 0) + 1,
                // After every member.
                (None, Some(g)) => {
                    set.volumes
                        .iter()
                        .filter(|(_, d)| d.spec.consistency_group.as_ref() == Some(g))
                        .map(|(v, _)| vol_depth(set, v, &mut memo, 0))
                        .max()
                        .unwrap_or(0)
                        + 1
                }
                (None, None) => 0,
            };
            items.push((d, ObjKind::Snapshot, n));
        }
        items.sort();
        items
    }

    /// Volume-backed images: each `Image` is an image-volume on its back end,
    /// made once (from a raw file on this host, copied sparsely, or as a
    /// clone of a volume there) and never changed; volumes made from it are
    /// clones. An image-volume that exists without a record was interrupted
    /// while its content was copied in: it is removed and made again.
    fn images(&mut self) {
        let set = self.set;
        for (name, doc) in &set.images {
            let Some(bn) = self
                .world
                .backends
                .keys()
                .find(|k| **k == doc.spec.backend)
                .cloned()
            else {
                // Another host's back end.
                continue;
            };
            let a = addr(ObjKind::Image, name.as_str());
            let key = (ObjKind::Image, name.as_str().to_owned());
            let backend = bn.as_str().to_owned();
            if let Some(f) = self.found.get(&key) {
                let complete = self.recorded.objects.contains_key(&f.obj.uuid)
                    || doc.spec.source.path.is_none();
                if complete {
                    if f.backend.name != bn {
                        self.out.errors.push(PlanError::new(&a, PlanErrorKind::Refused, format!(
                            "spec.backend is {bn} but the image-volume lives on {}; an image is not moved: remove the Image and declare it again",
                            f.backend.name
                        )));
                    }
                    self.record_if_needed(
                        ObjKind::Image,
                        name.as_str(),
                        f.obj.uuid,
                        f.backend.name.as_str(),
                        f.obj.size,
                        None,
                        doc.spec.deletion_policy,
                    );
                    continue;
                }
                if !self.world.complete() {
                    self.out.notes.push(format!("{a}: an unrecorded image-volume ({}) waits for a complete discovery to be made again", f.obj.uuid));
                    continue;
                }
                self.out.actions.push(Action {
                    address: a.clone(),
                    op: Op::Delete {
                        kind: ObjKind::Image,
                        name: name.as_str().to_owned(),
                        uuid: f.obj.uuid,
                        backend: f.backend.name.as_str().to_owned(),
                        size: f.obj.size,
                    },
                    reason: "the image-volume exists but its copy was never recorded as complete (interrupted, or a new state directory): it is made again from its source".into(),
                    impact: Impact::DestroysData,
                });
            }
            if self.unresolved.contains(&key)
                || self.held_back(ObjKind::Image, name.as_str(), Some(&doc.spec.backend))
            {
                continue;
            }
            let Some((size, source, from_file, why)) = self.image_source(&a, doc, &bn) else {
                continue;
            };
            let extent = self.world.backends.get(&bn).map_or(1, |b| b.extent);
            let size = round_up(size, extent);
            let req = Request {
                size,
                zone: None,
                extra_specs: None,
            };
            if let Err(why) = self.sched.check(&bn, &req) {
                self.error(
                    &a,
                    PlanErrorKind::NoRoom,
                    format!(
                        "cannot be created on {bn}:{}",
                        schedule::explain(&vec![(bn.clone(), why)])
                    ),
                );
                continue;
            }
            self.sched.commit(&bn, size);
            self.push_create(
                ObjKind::Image,
                name.as_str(),
                &backend,
                size,
                source,
                None,
                None,
                doc.spec.deletion_policy,
                why,
            );
            if let Some(Action {
                op: Op::Create {
                    from_file: slot, ..
                },
                ..
            }) = self.out.actions.last_mut()
            {
                *slot = from_file;
            }
        }
    }

    /// Where an image's content comes from: (size, source object, raw file,
    /// reason), or `None` after a plan error saying why it cannot be made.
    fn image_source(
        &mut self,
        a: &str,
        doc: &Doc<crate::manifest::kinds::ImageSpec>,
        bn: &Name,
    ) -> Option<(u64, Option<SourceRef>, Option<std::path::PathBuf>, String)> {
        let set = self.set;
        let backend = bn.as_str();
        let r = if let Some(p) = &doc.spec.source.path {
            match self.world.image_files.get(p.as_path()) {
                Some(Ok(f)) => (
                    f.size,
                    None,
                    Some(p.as_path().to_owned()),
                    format!(
                        "it is declared and does not exist; its content is copied from {} (holes stay holes)",
                        p.as_path().display()
                    ),
                ),
                Some(Err(e)) => {
                    self.error(a, PlanErrorKind::Refused, format!("spec.source.path: {e}"));
                    return None;
                }
                None => {
                    self.error(
                        a,
                        PlanErrorKind::Refused,
                        format!(
                            "spec.source.path {} was not looked at",
                            p.as_path().display()
                        ),
                    );
                    return None;
                }
            }
        } else if let Some(v) = &doc.spec.source.volume {
            match self.backend_of(ObjKind::Volume, v.as_str()) {
                Some(vb) if vb == backend => {
                    let key = (ObjKind::Volume, v.as_str().to_owned());
                    let size = self.found.get(&key).map_or_else(
                        || set.volumes.get(v).map_or(0, |d| d.spec.size.bytes()),
                        |f| f.obj.size,
                    );
                    (
                        size,
                        Some(SourceRef {
                            kind: ObjKind::Volume,
                            name: v.as_str().to_owned(),
                            uuid: self.found.get(&key).map(|f| f.obj.uuid),
                        }),
                        None,
                        format!("it is declared and does not exist; a clone of volume {v}"),
                    )
                }
                Some(vb) => {
                    self.error(a, PlanErrorKind::Refused, format!("spec.backend is {bn} but volume {v} lives on {vb}; an image is a clone made on its volume's back end"));
                    return None;
                }
                None => {
                    self.error(
                        a,
                        PlanErrorKind::Refused,
                        format!("volume {v} does not exist and is not created by this plan"),
                    );
                    return None;
                }
            }
        } else {
            return None;
        };
        Some(r)
    }

    fn objects(&mut self) {
        for (_, kind, name) in self.order() {
            match kind {
                ObjKind::Volume => {
                    let doc = &self.set.volumes[name];
                    self.volume(name, doc);
                }
                _ => self.snapshot(name),
            }
        }
    }

    /// What holds `obj` open, when that forbids deleting, replacing or
    /// moving it. An LV held by nothing visible while it is exported over
    /// iSCSI is taken as held by its backstore: the exports pass removes
    /// that first or refuses with the initiators named (and lvm2 still
    /// refuses to remove an LV that stays open).
    fn holder<'o>(&self, obj: &'o Observed) -> Option<&'o InUse> {
        let h = obj.in_use.as_ref()?;
        let by_export =
            matches!(h, InUse::Unnamed { .. }) && self.world.exports.get(obj.uuid).is_some();
        (!by_export).then_some(h)
    }

    fn request(set: &'a ManifestSet, doc: &'a Doc<VolumeSpec>) -> Request<'a> {
        request(set, doc)
    }

    #[allow(clippy::too_many_lines)]
    fn volume(&mut self, name: &Name, doc: &'a Doc<VolumeSpec>) {
        let key = (ObjKind::Volume, name.as_str().to_owned());
        let a = addr(ObjKind::Volume, name.as_str());
        let policy = doc.spec.deletion_policy;
        if let Some(f) = self.found.get(&key) {
            let (backend, obj) = (f.backend, f.obj);
            let bname = backend.name.as_str().to_owned();
            let want = round_up(doc.spec.size.bytes(), backend.extent);
            match obj.health {
                Health::Creating => {
                    if let Some(h) = self.holder(obj) {
                        self.error(&a, PlanErrorKind::InUse, format!("an earlier create was interrupted, and finishing it may replace its content, but it is in use by {h}; stop or detach it, then plan again"));
                        return;
                    }
                    self.push_create(
                        ObjKind::Volume,
                        name.as_str(),
                        &bname,
                        want,
                        self.source_of(doc, &bname),
                        Some(obj.uuid),
                        self.backup_source(doc, name).ok().flatten(),
                        policy,
                        "an earlier create was interrupted; it is finished with the same identity"
                            .into(),
                    );
                    self.group_last_create(name);
                    return;
                }
                Health::Deleting => {
                    // A move to another host verified there, then stopped
                    // while this host removed the source: go on.
                    if self
                        .world
                        .remote
                        .jobs
                        .get(name.as_str())
                        .is_some_and(|j| j.uuid == obj.uuid && j.from.backend == bname)
                        && self.migration(name, doc, backend, obj)
                    {
                        return;
                    }
                    // A migration verified its target and marked the source,
                    // then stopped before the switch: finish it.
                    if let Some(t) = self.migrating.get(&key) {
                        let (tb, to) = (t.backend, t.obj);
                        self.finish_migration(name, policy, (backend, obj), (tb, to));
                        return;
                    }
                    self.error(&a, PlanErrorKind::Lost, format!("an earlier delete of {} on {bname} was interrupted, but the manifests still declare it; remove the manifest to let the delete finish, or restore the volume from a backup", obj.uuid));
                    return;
                }
                Health::DataMissing => {
                    self.error(&a, PlanErrorKind::Lost, format!("its data on {bname} ({}) is gone; restore it from a backup, or remove the manifest", obj.uuid));
                    return;
                }
                Health::Migrating => {
                    // Not in `found` (see index); never here.
                    return;
                }
                Health::Ready | Health::SizeMismatch { .. } => {}
            }
            if self.migration(name, doc, backend, obj) {
                return;
            }
            let have = match obj.health {
                Health::SizeMismatch { actual, recorded } => actual.max(recorded),
                _ => obj.size,
            };
            if want < have {
                self.error(&a, PlanErrorKind::Refused, format!(
                    "cannot shrink from {} to {}: shrinking a volume destroys data; set spec.size back to at least {}",
                    format_bytes_exact(have),
                    format_bytes_exact(want),
                    format_bytes_exact(have)
                ));
            } else if want > have || matches!(obj.health, Health::SizeMismatch { .. }) {
                let growth = want - obj.size.min(want);
                let thick_snaps: Vec<String> = if backend.caps.extends_with_snapshots {
                    Vec::new()
                } else {
                    self.found
                        .values()
                        .filter(|c| {
                            c.obj.kind == ObjKind::Snapshot && c.obj.parent == Some(obj.uuid)
                        })
                        .map(|c| format!("snapshot.{}", c.obj.name))
                        .collect()
                };
                if !thick_snaps.is_empty() && want > have {
                    self.error(&a, PlanErrorKind::Refused, format!(
                        "cannot extend to {} on {bname}: it is the origin of thick snapshot(s) {}, and lvm2 resizes such an origin only while it is inactive, which would cut off its users; delete the snapshots first (thin pools resize origins live)",
                        format_bytes_exact(want),
                        thick_snaps.join(", ")
                    ));
                } else if let Some(pool) = self.sched.pool(&backend.name)
                    && let Some(why) = pool.admit(growth).reason
                    && growth > 0
                {
                    self.error(
                        &a,
                        PlanErrorKind::NoRoom,
                        format!(
                            "cannot extend to {} on {bname}: {why}",
                            format_bytes_exact(want)
                        ),
                    );
                } else {
                    self.sched.grow(&backend.name, growth);
                    let note = if want % backend.extent == 0 && want == doc.spec.size.bytes() {
                        String::new()
                    } else {
                        format!(" (rounded up to {})", format_bytes_exact(want))
                    };
                    self.out.actions.push(Action {
                        address: a.clone(),
                        op: Op::Extend {
                            name: name.as_str().to_owned(),
                            uuid: obj.uuid,
                            backend: bname.clone(),
                            from: obj.size,
                            to: want,
                        },
                        reason: if want > have {
                            format!(
                                "spec.size grew from {} to {}{note}",
                                format_bytes_exact(have),
                                doc.spec.size
                            )
                        } else {
                            "an earlier extend was interrupted; it is finished".into()
                        },
                        impact: Impact::Grows,
                    });
                }
            }
            let joining = self
                .recorded
                .objects
                .get(&obj.uuid)
                .and_then(|r| r.consistency_group.as_deref())
                != doc.spec.consistency_group.as_ref().map(Name::as_str);
            let group_pin = doc
                .spec
                .consistency_group
                .as_ref()
                .and_then(|g| self.set.consistency_groups.get(g))
                .and_then(|cg| cg.spec.backend.as_ref());
            if (joining || group_pin.is_some())
                && let Some((g, gb)) = self.group_location(name, doc)
                && gb != bname
            {
                let text = if group_pin.is_some() && !joining {
                    format!(
                        "it lives on {bname}, but consistency group {g} is pinned to {gb}, and a member is not migrated: set spec.backend of ConsistencyGroup/{g} back to {bname}, or remove spec.consistencyGroup, move the volume (spec.backend: {gb}) and add it to the group after"
                    )
                } else {
                    format!(
                        "it lives on {bname}, but consistency group {g} lives on {gb}, and a group's volumes live on one back end: remove spec.consistencyGroup, or migrate it to {gb} first (spec.backend: {gb}) and add it to the group after"
                    )
                };
                self.error(&a, PlanErrorKind::Refused, text);
                return;
            }
            self.record_if_needed(
                ObjKind::Volume,
                name.as_str(),
                obj.uuid,
                &bname,
                want.max(have),
                Some(obj.size),
                policy,
            );
            return;
        }
        if let Some(t) = self.migrating.get(&key).map(|t| Found {
            backend: t.backend,
            obj: t.obj,
        }) {
            if self.receive_across(name, doc, Some(&t)) {
                return;
            }
            self.error(&a, PlanErrorKind::Lost, format!(
                "only the target of an interrupted migration ({} on {}) exists; its source is gone, so the copy cannot be finished or trusted: restore the volume from a backup, or remove the target's LV/file by hand after checking it",
                t.obj.uuid, t.backend.name
            ));
            return;
        }
        if self.unresolved.contains(&key) {
            return;
        }
        // Another host holds it: this host copies it, never creates it.
        if self.finish_send(name, doc) || self.receive_across(name, doc, None) {
            return;
        }
        let placed: Option<Name> = match &self.world.fleet {
            Fleet::On(p) => p.get(name.as_str()).and_then(|pl| pl.backend.parse().ok()),
            Fleet::Off | Fleet::Unavailable(_) => None,
        };
        if self.held_back(
            ObjKind::Volume,
            name.as_str(),
            doc.spec.backend.as_ref().or(placed.as_ref()),
        ) {
            return;
        }
        if let Some((uuid, backend)) = self.lost(ObjKind::Volume, name.as_str())
            && !self.opts.recreate_lost
        {
            self.error(&a, PlanErrorKind::Lost, format!(
                "the volume ({uuid} on {backend}) was deleted outside cinderblock; restore it from a backup, remove its manifest, or plan with --recreate-lost to create it again, empty"
            ));
            return;
        }
        if let Some(entry) = doc.meta.annotations.get(crate::manifest::kinds::ADOPT) {
            self.adopt(name, doc, &entry.0);
            return;
        }
        self.released_namesake(name);
        // A new volume: where?
        let req = Self::request(self.set, doc);
        let backup = match self.backup_source(doc, name) {
            Ok(b) => b,
            Err(Unresolved::NotYet(why)) => {
                self.wait(ObjKind::Volume, name.as_str(), why);
                return;
            }
            Err(Unresolved::Refused(why)) => {
                self.error(&a, PlanErrorKind::Refused, why);
                return;
            }
        };
        if let Some(b) = &backup
            && b.size > req.size
        {
            self.error(&a, PlanErrorKind::Refused, format!(
                "spec.size {} is less than backup {}'s {} (of volume {}); declare at least that",
                format_bytes_exact(req.size),
                b.id,
                format_bytes_exact(b.size),
                b.volume
            ));
            return;
        }
        let Some(Located {
            backend: chosen,
            how,
            fence,
        }) = self.locate(name, doc, &a, &req)
        else {
            return;
        };
        let extent = self
            .world
            .backends
            .values()
            .find(|b| b.name.as_str() == chosen)
            .map_or(1, |b| b.extent);
        let size = round_up(req.size, extent);
        if size > req.size
            && let Some(bn) = self.world.backends.keys().find(|k| k.as_str() == chosen)
        {
            // The placement counted the size asked for; the extents taken are
            // what counts for the next placement.
            self.sched.grow(&bn.clone(), size - req.size);
        }
        let source_ref = self.source_of(doc, &chosen);
        let rounded = if size == req.size {
            String::new()
        } else {
            format!(
                " (size {} rounded up to {}, a multiple of the {} extent)",
                format_bytes_exact(req.size),
                format_bytes_exact(size),
                format_bytes_exact(extent)
            )
        };
        let why = if let Some(b) = &backup {
            format!(
                "it is declared and does not exist; restored from backup {} of volume {}",
                b.id, b.volume
            )
        } else if let Some(s) = &source_ref {
            format!(
                "it is declared and does not exist; copied from {} {}",
                kind_word(s.kind),
                s.name
            )
        } else {
            format!("it is declared and does not exist; {how}")
        } + &rounded;
        self.push_create(
            ObjKind::Volume,
            name.as_str(),
            &chosen,
            size,
            source_ref,
            None,
            backup,
            policy,
            why,
        );
        if let Some(Action {
            op: Op::Create { placement, .. },
            ..
        }) = self.out.actions.last_mut()
        {
            *placement = fence;
        }
        self.group_last_create(name);
    }

    /// A volume declared with `cinderblock.dev/adopt: ENTRY` that is not
    /// ours yet: `ENTRY`, a foreign LV or file of its pinned back end, is
    /// adopted (never created), then extended when `spec.size` asks for
    /// more; a smaller `spec.size`, a missing entry or one that cannot be
    /// a volume there is a plan error.
    #[allow(clippy::too_many_lines)] // one pass over an adoption's cases, kept together
    fn adopt(&mut self, name: &Name, doc: &'a Doc<VolumeSpec>, entry: &str) {
        let a = addr(ObjKind::Volume, name.as_str());
        let Some(pin) = &doc.spec.backend else {
            // Validation refuses it; never guess a back end.
            self.error(
                &a,
                PlanErrorKind::Refused,
                "cinderblock.dev/adopt needs spec.backend".into(),
            );
            return;
        };
        let Some(view) = self.world.backends.get(pin) else {
            // Another host's back end: its own plan adopts it.
            return;
        };
        let Some(inv) = view.inventory() else {
            return;
        };
        let shown = crate::manifest::values::shown(entry);
        // By its LV or file name; a released one also by the uuid or the
        // name it had.
        let released_as =
            |f: &&crate::model::Foreign, what: &dyn Fn(&crate::model::Released) -> bool| {
                f.released.as_ref().is_some_and(what)
            };
        let by_old_name: Vec<_> = inv
            .foreign
            .iter()
            .filter(|f| released_as(f, &|r| r.name == entry && r.kind == ObjKind::Volume))
            .collect();
        let found = inv
            .foreign
            .iter()
            .find(|f| f.name == entry)
            .or_else(|| {
                inv.foreign
                    .iter()
                    .find(|f| released_as(f, &|r| r.uuid.to_string() == entry))
            })
            .or_else(|| (by_old_name.len() == 1).then(|| by_old_name[0]));
        let Some(f) = found else {
            self.error(&a, PlanErrorKind::Refused, format!(
                "cinderblock.dev/adopt: back end {pin} has no foreign LV or file named {shown} (`cinderblock discover --include-foreign` lists what it has)"
            ));
            return;
        };
        let Some(size) = self.adoptable(&a, pin.as_str(), &shown, f, ObjKind::Volume) else {
            return;
        };
        let want = round_up(doc.spec.size.bytes(), view.extent);
        if want < size {
            self.error(&a, PlanErrorKind::Refused, format!(
                "spec.size {} is less than the {} that {shown} on {pin} holds; adopting never shrinks: declare at least {}",
                doc.spec.size,
                format_bytes_exact(size),
                format_bytes_exact(size)
            ));
            return;
        }
        let growth = want - size;
        if growth > 0
            && let Some(pool) = self.sched.pool(pin)
            && let Some(why) = pool.admit(growth).reason
        {
            self.error(
                &a,
                PlanErrorKind::NoRoom,
                format!(
                    "cannot extend {shown} to {} after adopting it: {why}",
                    format_bytes_exact(want)
                ),
            );
            return;
        }
        let released = f.released.as_ref().map(|r| (r.uuid, r.name.clone()));
        let uuid = released
            .as_ref()
            .map_or_else(|| adopted_uuid(pin.as_str(), entry), |(u, _)| *u);
        let reason = match &released {
            Some((u, old)) => format!(
                "cinderblock.dev/adopt names {shown}, which {pin} released (deletionPolicy: Retain) as volume {old} ({u}): it is taken back, its data and name kept"
            ),
            None => format!(
                "cinderblock.dev/adopt names {shown}, which is not managed on {pin}: it is marked as ours, its data and name kept"
            ),
        };
        self.planned.insert(
            (ObjKind::Volume, name.as_str().to_owned()),
            pin.as_str().to_owned(),
        );
        self.out.actions.push(Action {
            address: a.clone(),
            op: Op::Adopt {
                kind: ObjKind::Volume,
                name: name.as_str().to_owned(),
                backend: pin.as_str().to_owned(),
                entry: f.name.clone(),
                uuid,
                size,
                released: released.is_some(),
                deletion_policy: doc.spec.deletion_policy,
                parent: None,
            },
            reason,
            impact: Impact::MetadataOnly,
        });
        if growth > 0 {
            self.sched.grow(pin, growth);
            self.out.actions.push(Action {
                address: a,
                op: Op::Extend {
                    name: name.as_str().to_owned(),
                    uuid,
                    backend: pin.as_str().to_owned(),
                    from: size,
                    to: want,
                },
                reason: format!(
                    "spec.size {} is more than the {} it holds when adopted",
                    doc.spec.size,
                    format_bytes_exact(size)
                ),
                impact: Impact::Grows,
            });
        }
    }

    /// Foreign entry `f` of back end `on` (`shown`, as the annotation names
    /// it): its size when it can be adopted as a `kind`; else a plan error
    /// at `a` saying why, and `None`.
    fn adoptable(
        &mut self,
        a: &str,
        on: &str,
        shown: &str,
        f: &crate::model::Foreign,
        kind: ObjKind,
    ) -> Option<u64> {
        let (Some(size), None) = (f.size, &f.unfit) else {
            self.error(
                a,
                PlanErrorKind::Refused,
                format!(
                    "cinderblock.dev/adopt: {shown} on {on} cannot be adopted: it is {}",
                    f.unfit.as_deref().unwrap_or("of no known size")
                ),
            );
            return None;
        };
        if let Some(r) = &f.released
            && r.kind != kind
        {
            self.error(
                a,
                PlanErrorKind::Refused,
                format!(
                    "cinderblock.dev/adopt: {shown} on {on} was {} {} ({}), not a {}",
                    kind_word(r.kind),
                    r.name,
                    r.uuid,
                    kind_word(kind)
                ),
            );
            return None;
        }
        Some(size)
    }

    /// A snapshot declared with `cinderblock.dev/adopt: ENTRY` that is not
    /// ours yet: `ENTRY`, a foreign LV or file of its volume's back end, is
    /// adopted as a snapshot of that volume (ours already, or adopted
    /// earlier in this plan), its data and name kept. A missing entry, one
    /// that cannot be an object there, or a volume that is not ours is a
    /// plan error. Which volume a foreign entry was taken of is the
    /// manifest's word: the back ends are not asked (a file has no origin).
    #[allow(clippy::too_many_lines)] // one pass over an adoption's cases, kept together
    fn adopt_snapshot(&mut self, name: &Name, vol: &Name, entry: &str, policy: DeletionPolicy) {
        let a = addr(ObjKind::Snapshot, name.as_str());
        let shown = crate::manifest::values::shown(entry);
        let key = (ObjKind::Volume, vol.as_str().to_owned());
        let of = self
            .found
            .get(&key)
            .map(|f| (f.backend.name.as_str().to_owned(), f.obj.uuid))
            .or_else(|| {
                self.out.actions.iter().find_map(|x| match &x.op {
                    Op::Adopt {
                        kind: ObjKind::Volume,
                        name: n,
                        backend,
                        uuid,
                        ..
                    } if n == vol.as_str() => Some((backend.clone(), *uuid)),
                    _ => None,
                })
            });
        let Some((backend, parent)) = of else {
            let elsewhere = self
                .set
                .volumes
                .get(vol)
                .and_then(|v| v.spec.backend.as_ref())
                .is_some_and(|p| !self.world.backends.contains_key(p));
            if !elsewhere && !self.waiting.contains(&key) {
                self.error(&a, PlanErrorKind::Refused, format!(
                    "cinderblock.dev/adopt: its volume.{vol} is not ours and not adopted by this plan; a snapshot is adopted with or after its volume"
                ));
            }
            return;
        };
        let Some(inv) = self
            .world
            .backends
            .iter()
            .find(|(n, _)| n.as_str() == backend)
            .and_then(|(_, v)| v.inventory())
        else {
            return;
        };
        let found = inv.foreign.iter().find(|f| f.name == entry).or_else(|| {
            inv.foreign.iter().find(|f| {
                f.released.as_ref().is_some_and(|r| {
                    r.kind == ObjKind::Snapshot && (r.uuid.to_string() == entry || r.name == entry)
                })
            })
        });
        let Some(f) = found else {
            self.error(&a, PlanErrorKind::Refused, format!(
                "cinderblock.dev/adopt: back end {backend} (volume.{vol}'s) has no foreign LV or file named {shown} (`cinderblock discover --include-foreign` lists what it has)"
            ));
            return;
        };
        let Some(size) = self.adoptable(&a, &backend, &shown, f, ObjKind::Snapshot) else {
            return;
        };
        let released = f.released.as_ref().map(|r| (r.uuid, r.name.clone()));
        let uuid = released
            .as_ref()
            .map_or_else(|| adopted_uuid(&backend, &f.name), |(u, _)| *u);
        let reason = match &released {
            Some((u, old)) => format!(
                "cinderblock.dev/adopt names {shown}, which {backend} released (deletionPolicy: Retain) as snapshot {old} ({u}): it is taken back as a snapshot of volume.{vol}, its data and name kept"
            ),
            None => format!(
                "cinderblock.dev/adopt names {shown}, which is not managed on {backend}: it is marked as ours, a snapshot of volume.{vol}, its data and name kept"
            ),
        };
        self.planned.insert(
            (ObjKind::Snapshot, name.as_str().to_owned()),
            backend.clone(),
        );
        self.out.actions.push(Action {
            address: a,
            op: Op::Adopt {
                kind: ObjKind::Snapshot,
                name: name.as_str().to_owned(),
                backend,
                entry: f.name.clone(),
                uuid,
                size,
                released: released.is_some(),
                deletion_policy: policy,
                parent: Some(parent),
            },
            reason,
            impact: Impact::MetadataOnly,
        });
    }

    /// A new volume with the name of one a back end released (`Retain`):
    /// the plan says so, and how to take that one back instead of creating
    /// an empty one.
    fn released_namesake(&mut self, name: &Name) {
        for (b, view) in &self.world.backends {
            let Some(inv) = view.inventory() else {
                continue;
            };
            for f in &inv.foreign {
                if let Some(r) = &f.released
                    && r.kind == ObjKind::Volume
                    && r.name == name.as_str()
                {
                    self.out.notes.push(format!(
                        "volume.{name}: back end {b} holds a volume {name} it released earlier ({}); to take it back with its data instead of creating a new, empty one, annotate the volume cinderblock.dev/adopt: {} and pin it with spec.backend: {b}",
                        r.uuid,
                        f.name
                    ));
                }
            }
        }
    }

    /// Leaves an object for later: listed in the plan's `waiting`, and what
    /// depends on it waits too.
    fn wait(&mut self, kind: ObjKind, name: &str, reason: String) {
        self.waiting.insert((kind, name.to_owned()));
        self.out.waiting.push(Waiting {
            address: addr(kind, name),
            reason,
        });
    }

    /// The object a new volume is copied from (`source.volume`,
    /// `source.snapshot`, `source.image`).
    fn copied_from(doc: &Doc<VolumeSpec>) -> Option<(ObjKind, String)> {
        let s = doc.spec.source.as_ref()?;
        if let Some(v) = &s.volume {
            return Some((ObjKind::Volume, v.as_str().to_owned()));
        }
        if let Some(i) = &s.image {
            return Some((ObjKind::Image, i.as_str().to_owned()));
        }
        s.snapshot_object().map(|sn| (ObjKind::Snapshot, sn))
    }

    /// The back end of a consistency group: its pin, or from its other
    /// members: where one lives, is created by this plan, or is pinned
    /// (Cinder's rule: a group's volumes live on one back end).
    fn group_location(&self, name: &Name, doc: &'a Doc<VolumeSpec>) -> Option<(&'a Name, String)> {
        let set = self.set;
        let g = doc.spec.consistency_group.as_ref()?;
        if let Some(b) = set
            .consistency_groups
            .get(g)
            .and_then(|cg| cg.spec.backend.as_ref())
        {
            return Some((g, b.as_str().to_owned()));
        }
        // Members the record says are in the group first: a volume joining
        // it follows them, not the other way round.
        let recorded_in_group = |n: &Name| {
            self.recorded.objects.values().any(|r| {
                r.kind == ObjKind::Volume
                    && r.name == n.as_str()
                    && r.consistency_group.as_deref() == Some(g.as_str())
            })
        };
        let others: Vec<(&Name, &Doc<VolumeSpec>)> = set
            .volumes
            .iter()
            .filter(|(n, d)| *n != name && d.spec.consistency_group.as_ref() == Some(g))
            .collect();
        let (first, rest): (Vec<_>, Vec<_>) =
            others.into_iter().partition(|(n, _)| recorded_in_group(n));
        first
            .into_iter()
            .chain(rest)
            .find_map(|(n, d)| {
                self.backend_of(ObjKind::Volume, n.as_str())
                    .or_else(|| d.spec.backend.as_ref().map(|b| b.as_str().to_owned()))
            })
            .map(|b| (g, b))
    }

    /// The first member of a consistency group to be placed places the
    /// whole group: on one back end that passes every filter for each
    /// member still to be created, with room for all of them together;
    /// the other members then follow it (`group_location`).
    fn place_group(&mut self, a: &str, g: &Name, req: &Request<'a>) -> Option<Located> {
        let set = self.set;
        let members: Vec<(&Name, Request<'a>)> = set
            .volumes
            .iter()
            .filter(|(n, d)| {
                d.spec.consistency_group.as_ref() == Some(g)
                    && self.backend_of(ObjKind::Volume, n.as_str()).is_none()
            })
            .map(|(n, d)| (n, Self::request(set, d)))
            .collect();
        let total: u64 = members.iter().map(|(_, r)| r.size).sum();
        let whole = Request {
            size: total.max(req.size),
            zone: req.zone,
            extra_specs: req.extra_specs,
        };
        let mut candidates = Vec::new();
        let mut rejected = Vec::new();
        for b in self.world.backends.keys() {
            let why = members
                .iter()
                .find_map(|(n, r)| {
                    self.sched
                        .check(b, r)
                        .err()
                        .map(|w| format!("volume.{n}: {w}"))
                })
                .or_else(|| {
                    self.sched
                        .check(b, &whole)
                        .err()
                        .map(|w| format!("the whole group: {w}"))
                });
            match why {
                None => candidates.push(b.clone()),
                Some(w) => rejected.push((b.clone(), w)),
            }
        }
        let names: Vec<String> = members.iter().map(|(n, _)| format!("volume.{n}")).collect();
        let Ok(b) = self.sched.pick(&whole, Some(&candidates)) else {
            self.error(
                a,
                PlanErrorKind::NoRoom,
                format!(
                    "no back end can take consistency group {g} as one unit ({}: {} together), and a group's volumes live on one back end; free room, split the group, or pin it with spec.backend on ConsistencyGroup/{g}:{}",
                    names.join(", "),
                    format_bytes_exact(total),
                    schedule::explain(&rejected)
                ),
            );
            return None;
        };
        self.sched.commit(&b, req.size);
        Some(Located {
            backend: b.as_str().to_owned(),
            how: format!(
                "placed by the scheduler with its consistency group {g} ({}: {} together)",
                names.join(", "),
                format_bytes_exact(total)
            ),
            fence: None,
        })
    }

    /// Back ends that could take a volume, by host, judged by what the
    /// manifests say of them (zone, capabilities): this host's and other
    /// hosts' alike, so every host reaches the same verdict. Other hosts'
    /// back ends are the declared ones with a `spec.host` that this host
    /// did not discover.
    fn hosts_that_could_take(&self, req: &Request<'_>) -> BTreeMap<String, Vec<String>> {
        let mut by_host: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, doc) in &self.set.backends {
            let local = self.world.backends.get(name);
            if local.is_none() && (doc.spec.host.is_none() || self.world.missing.contains(name)) {
                continue;
            }
            let configured;
            let view = if let Some(v) = local {
                v
            } else {
                configured = crate::observe::declared_view(
                    doc,
                    Discovery::Failed("another host's back end".into()),
                );
                &configured
            };
            if self.sched.could_take(view, req).is_ok() {
                let host = match (local, &doc.spec.host) {
                    (Some(_), _) | (None, None) => String::new(),
                    (None, Some(h)) => h.clone(),
                };
                by_host
                    .entry(host)
                    .or_default()
                    .push(name.as_str().to_owned());
            }
        }
        by_host
    }

    /// Where a new volume goes: with its source, on its pin, with its
    /// consistency group, where the fleet placed it, or where the scheduler
    /// puts it. `None` after a plan error or a wait saying why, or when the
    /// volume belongs to another host's back end (that host creates it).
    #[allow(clippy::too_many_lines)] // one decision, its cases kept together
    fn locate(
        &mut self,
        name: &Name,
        doc: &'a Doc<VolumeSpec>,
        a: &str,
        req: &Request<'a>,
    ) -> Option<Located> {
        let pin = doc.spec.backend.as_ref();
        let mut fixed: Option<(String, Fixed, String)> = None;
        if let Some((kind, src)) = Self::copied_from(doc) {
            let src = src.as_str();
            match self.backend_of(kind, src) {
                Some(sb) => {
                    // Copies stay on the source's back end (as Cinder's drivers do).
                    if let Some(p) = pin
                        && p.as_str() != sb
                    {
                        self.error(a, PlanErrorKind::Refused, format!("spec.backend is {p} but its source lives on {sb}; a copy is made on the source's back end"));
                        return None;
                    }
                    fixed = Some((sb, Fixed::Source, String::new()));
                }
                None if self.waiting.contains(&(kind, src.to_owned())) => {
                    self.wait(
                        ObjKind::Volume,
                        name.as_str(),
                        format!("waits for its source {}.{src}", kind.as_str()),
                    );
                    return None;
                }
                None => {
                    self.error(
                        a,
                        PlanErrorKind::Refused,
                        "its source does not exist and is not created by this plan".into(),
                    );
                    return None;
                }
            }
        } else if let Some(p) = pin {
            fixed = Some((
                p.as_str().to_owned(),
                Fixed::Pin,
                "pinned to its back end".into(),
            ));
        } else if let Some((g, b)) = self.group_location(name, doc) {
            fixed = Some((
                b,
                Fixed::Group,
                format!("placed with its consistency group {g}"),
            ));
        }
        let mut fence = None;
        if pin.is_none() {
            match &self.world.fleet {
                Fleet::Off => {}
                Fleet::On(placements) => {
                    let Some(pl) = placements.get(name.as_str()) else {
                        self.wait(
                            ObjKind::Volume,
                            name.as_str(),
                            "waits for the fleet's leader to place it".into(),
                        );
                        return None;
                    };
                    if let Some((b, _, _)) = &fixed
                        && *b != pl.backend
                    {
                        self.error(a, PlanErrorKind::Refused, format!(
                            "the fleet placed it on {} (host {}), but it belongs on {b} with its source or consistency group; remove the placement with `etcdctl del` after checking that no host created it, and the leader places it again",
                            pl.backend, pl.host
                        ));
                        return None;
                    }
                    if fixed.is_none() {
                        fixed = Some((
                            pl.backend.clone(),
                            Fixed::Fleet,
                            match pl.revision {
                                Some(r) => format!(
                                    "placed on host {} by the fleet's scheduler (placement revision {r})",
                                    pl.host
                                ),
                                None => format!(
                                    "to be placed on host {} by the fleet's scheduler",
                                    pl.host
                                ),
                            },
                        ));
                    }
                    fence = pl.revision;
                }
                Fleet::Unavailable(why) => {
                    let why = why.clone();
                    self.wait(
                        ObjKind::Volume,
                        name.as_str(),
                        format!("waits for a placement, and the fleet is unavailable ({why})"),
                    );
                    return None;
                }
            }
        }
        let Some((backend, how, text)) = fixed else {
            // Unpinned, no fleet: the scheduler, unless another host could
            // take it too (each host would create its own).
            let hosts = self.hosts_that_could_take(req);
            let others: Vec<String> = hosts
                .iter()
                .filter(|(h, _)| !h.is_empty())
                .flat_map(|(h, bs)| bs.iter().map(move |b| format!("{b} on host {h}")))
                .collect();
            if !others.is_empty() {
                if hosts.contains_key("") {
                    self.wait(
                        ObjKind::Volume,
                        name.as_str(),
                        format!(
                            "not created: back ends of other hosts could also take it ({}), and without a fleet each host would create its own; pin it with spec.backend, or run the agents with --etcd",
                            others.join(", ")
                        ),
                    );
                }
                // Otherwise only other hosts can take it: theirs to create.
                return None;
            }
            if let Some(g) = &doc.spec.consistency_group {
                return self.place_group(a, g, req);
            }
            return match self.sched.place(req, None) {
                Ok(b) => Some(Located {
                    backend: b.as_str().to_owned(),
                    how: "placed by the scheduler".into(),
                    fence: None,
                }),
                Err(rej) => {
                    self.error(
                        a,
                        PlanErrorKind::NoRoom,
                        format!(
                            "no back end can take it ({}):{}",
                            format_bytes_exact(req.size),
                            schedule::explain(&rej)
                        ),
                    );
                    None
                }
            };
        };
        let Some(bn) = self
            .world
            .backends
            .keys()
            .find(|k| k.as_str() == backend)
            .cloned()
        else {
            // Another host's back end: that host's business.
            return None;
        };
        if let Err(why) = self.sched.check(&bn, req) {
            let rej = schedule::explain(&vec![(bn, why)]);
            let text = match how {
                Fixed::Source => {
                    format!("cannot be created on {backend}, where its source lives:{rej}")
                }
                Fixed::Pin => format!("cannot be placed on its pinned back end:{rej}"),
                Fixed::Group => format!(
                    "cannot be created on {backend}, where its consistency group lives:{rej}"
                ),
                Fixed::Fleet => {
                    format!("cannot be created on {backend}, where the fleet placed it:{rej}")
                }
            };
            self.error(a, PlanErrorKind::NoRoom, text);
            return None;
        }
        self.sched.commit(&bn, req.size);
        Some(Located {
            backend,
            how: text,
            fence,
        })
    }

    /// Where the manifests want an existing volume, when not where it is:
    /// `Ok(Some((back end, why)))`, `Ok(None)` to stay, `Err` (a plan error)
    /// when a retype needs a migration that its policy forbids.
    fn desired_backend(
        &mut self,
        a: &str,
        doc: &'a Doc<VolumeSpec>,
        cur: &Name,
        in_flight: Option<&Name>,
    ) -> Result<Option<(Name, String)>, PlanError> {
        if let Some(pin) = &doc.spec.backend {
            return Ok((pin != cur)
                .then(|| (pin.clone(), format!("spec.backend changed: {cur} -> {pin}"))));
        }
        let Some(vt) = &doc.spec.volume_type else {
            return Ok(None);
        };
        let req = Self::request(self.set, doc);
        let Err(why) = self.sched.fits(cur, &req) else {
            // A retype in place: the back end still passes the new type's
            // filters, so only metadata changes (and the type is not
            // recorded on the object: nothing to write).
            return Ok(None);
        };
        if doc.spec.migration_policy == MigrationPolicy::Never {
            return Err(PlanError::new(
                a,
                PlanErrorKind::Refused,
                format!(
                    "its back end {cur} does not satisfy volumeType {vt} ({why}), and moving it needs a migration, which migrationPolicy: never (the default, as Cinder) forbids; set migrationPolicy: on-demand to migrate it, pin spec.backend: {cur} to keep it where it is, or set volumeType back"
                ),
            ));
        }
        // An interrupted migration to a back end that fits goes on there.
        if let Some(t) = in_flight
            && self.sched.fits(t, &req).is_ok()
        {
            return Ok(Some((
                t.clone(),
                format!(
                    "its back end {cur} does not satisfy volumeType {vt} ({why}); migrationPolicy: on-demand"
                ),
            )));
        }
        let candidates: Vec<Name> = self
            .world
            .backends
            .keys()
            .filter(|k| *k != cur)
            .cloned()
            .collect();
        let mut probe = self.sched.clone();
        match probe.place(&req, Some(&candidates)) {
            Ok(b) => Ok(Some((
                b,
                format!(
                    "its back end {cur} does not satisfy volumeType {vt} ({why}); migrationPolicy: on-demand, so it moves to the back end the scheduler picks"
                ),
            ))),
            Err(rej) => Err(PlanError::new(
                a,
                PlanErrorKind::NoRoom,
                format!(
                    "its back end {cur} does not satisfy volumeType {vt} ({why}), and no other back end can take it:{}",
                    schedule::explain(&rej)
                ),
            )),
        }
    }

    /// Plans a migration of an existing, ready volume when the manifests
    /// want it elsewhere, or finishes or abandons one in flight. `true` when
    /// the volume is dealt with (an action or an error).
    #[allow(clippy::too_many_lines)] // one pass over the refusals, each short
    fn migration(
        &mut self,
        name: &Name,
        doc: &'a Doc<VolumeSpec>,
        backend: &'a BackendView,
        obj: &'a Observed,
    ) -> bool {
        let key = (ObjKind::Volume, name.as_str().to_owned());
        let a = addr(ObjKind::Volume, name.as_str());
        let cur = &backend.name;
        let policy = doc.spec.deletion_policy;
        // A verified migration stopped after promoting its target: finish.
        if let Some(h) = self.half_moved.get(&key) {
            let (hb, ho) = (h.backend, h.obj);
            self.finish_migration(name, policy, (hb, ho), (backend, obj));
            return true;
        }
        let in_flight = self.migrating.get(&key).map(|t| (t.backend, t.obj));
        let desired = match self.desired_backend(&a, doc, cur, in_flight.map(|(b, _)| &b.name)) {
            Ok(d) => d,
            Err(e) => {
                self.out.errors.push(e);
                return true;
            }
        };
        // A target in flight that the manifests no longer want goes.
        if let Some((tb, to)) = in_flight
            && desired.as_ref().is_none_or(|(d, _)| *d != tb.name)
        {
            // Snapshots a chain took on the target go first.
            let taken: Vec<(String, Uuid, u64)> = self
                .migrating
                .values()
                .filter(|c| {
                    c.obj.kind == ObjKind::Snapshot
                        && c.obj.parent == Some(to.uuid)
                        && c.backend.name == tb.name
                })
                .map(|c| (c.obj.name.clone(), c.obj.uuid, c.obj.size))
                .collect();
            for (sname, suuid, ssize) in taken {
                self.out.actions.push(Action {
                    address: addr(ObjKind::Snapshot, &sname),
                    op: Op::Delete {
                        kind: ObjKind::Snapshot,
                        name: sname,
                        uuid: suuid,
                        backend: tb.name.as_str().to_owned(),
                        size: ssize,
                    },
                    reason: format!(
                        "an interrupted migration to {} is abandoned; the snapshot it took there is removed, the snapshot stays intact on {cur}",
                        tb.name
                    ),
                    impact: Impact::DestroysData,
                });
            }
            self.out.actions.push(Action {
                address: a.clone(),
                op: Op::Delete {
                    kind: ObjKind::Volume,
                    name: name.as_str().to_owned(),
                    uuid: to.uuid,
                    backend: tb.name.as_str().to_owned(),
                    size: to.size,
                },
                reason: format!(
                    "an interrupted migration to {} is abandoned (the manifests want the volume on {}); its unfinished target is removed, the volume stays intact on {cur}",
                    tb.name,
                    desired.as_ref().map_or(cur, |(d, _)| d)
                ),
                impact: Impact::DestroysData,
            });
        }
        let Some((to, why)) = desired else {
            return false;
        };
        let resume = in_flight.is_some_and(|(b, _)| b.name == to);
        let Some(tview) = self.world.backends.get(&to) else {
            match self.set.backends.get(&to).and_then(|b| b.spec.host.clone()) {
                Some(h) => self.send_across(name, doc, (backend, obj), (&to, &h), &why),
                None => self.error(
                    &a,
                    PlanErrorKind::Refused,
                    format!(
                        "{why}, but {to} is not a back end of this host; set spec.backend back to {cur}"
                    ),
                ),
            }
            return true;
        };
        if self.failed.contains(to.as_str()) || tview.inventory().is_none() {
            self.error(&a, PlanErrorKind::Refused, format!(
                "{why}, but back end {to} could not be discovered; nothing is moved to a back end whose content is unknown"
            ));
            return true;
        }
        let mut refusals: Vec<String> = Vec::new();
        if let Some(g) = &doc.spec.consistency_group {
            refusals.push(format!("it is a member of consistency group {g}, whose volumes stay on one back end (Cinder's rule); remove spec.consistencyGroup first"));
        }
        let chain = self.chain_of(name, doc, obj, (backend, tview.extent), &mut refusals);
        if let Some(e) = self
            .world
            .exports
            .get(obj.uuid)
            .filter(|e| doc.spec.export.is_some() || !e.logged_in.is_empty())
            .filter(|e| {
                !e.iqn
                    .as_deref()
                    .is_some_and(crate::iscsi::names::is_migration_iqn)
            })
        {
            // (Without spec.export and with nobody logged in, the exports
            // pass unexports it before the move.)
            let iqn = e.iqn.as_deref().unwrap_or("(backstore only)");
            refusals.push(if e.logged_in.is_empty() {
                format!("it is exported over iSCSI as {iqn}, and the export points at its data on {cur}: remove spec.export for the move (no initiator is logged in) and add it back afterwards")
            } else {
                format!("it is in use: initiator(s) {} are logged in to {iqn}; log them out and remove spec.export for the move, then add it back", e.logged_in.join(", "))
            });
        }
        if let Some(h) = self.holder(obj) {
            refusals.push(format!(
                "it is in use by {h}: stop or detach it, then plan again"
            ));
        }
        if matches!(obj.health, Health::SizeMismatch { .. }) {
            refusals.push("its size differs from the recorded one; let the pending extend finish first (keep spec.backend for one apply)".to_owned());
        }
        // Two back ends of one space: the move stays inside it, and needs
        // no copy where both bind an object by its owner mark alone.
        let within = backend
            .caps
            .shared_space(&tview.caps)
            .map(ToString::to_string);
        let carry = if backend.caps.relabels_to(&tview.caps) && !resume && chain.is_empty() {
            Carry::HandOver
        } else {
            Carry::Copy
        };
        let want = round_up(doc.spec.size.bytes(), tview.extent);
        let target_size = round_up(obj.size, tview.extent).max(want);
        if want < obj.size {
            refusals.push(format!(
                "spec.size {} is smaller than its {}: shrinking is refused",
                doc.spec.size,
                format_bytes_exact(obj.size)
            ));
        }
        if !tview.caps.extends_with_snapshots
            && let Some(c) = chain.iter().find(|c| c.target_size != target_size)
        {
            refusals.push(format!(
                "{to} cannot grow a volume that has snapshots (lvm2 resizes a thick origin of thick snapshots only while it is inactive), so every snapshot moving with it must have the volume's size there ({}), and snapshot.{} has {}; keep spec.size and move it to a back end that extends volumes with snapshots, or delete the smaller snapshots first",
                format_bytes_exact(target_size),
                c.name,
                format_bytes_exact(c.target_size)
            ));
        }
        if !resume {
            for c in &chain {
                if let Some(r) = self.sched.pool(&to).and_then(|p| p.admit(c.space).reason) {
                    refusals.push(format!(
                        "{to} cannot take it with snapshot.{}: CapacityFilter: {r}",
                        c.name
                    ));
                }
            }
            let req = Request {
                size: target_size,
                ..Self::request(self.set, doc)
            };
            let filters = if doc.spec.backend.is_some() {
                // A pin is the admin's choice; capacity still counts.
                self.sched
                    .pool(&to)
                    .and_then(|p| p.admit(target_size).reason)
                    .map(|r| format!("CapacityFilter: {r}"))
            } else {
                self.sched.check(&to, &req).err().or_else(|| {
                    self.sched
                        .pool(&to)
                        .and_then(|p| p.admit(target_size).reason)
                        .map(|r| format!("CapacityFilter: {r}"))
                })
            };
            if let Some(r) = filters {
                refusals.push(format!("{to} cannot take it: {r}"));
            }
        }
        if !refusals.is_empty() {
            // The first obstacle names the kind: in use, no room, or else
            // refused.
            let kind = if obj.in_use.is_some() || self.world.exports.get(obj.uuid).is_some() {
                PlanErrorKind::InUse
            } else if refusals.iter().any(|r| r.contains("cannot take it")) {
                PlanErrorKind::NoRoom
            } else {
                PlanErrorKind::Refused
            };
            self.error(
                &a,
                kind,
                format!(
                    "{why}, but the volume cannot be migrated: {}",
                    refusals.join("; ")
                ),
            );
            return true;
        }
        let before = self.virtual_free(&to);
        if !resume {
            self.sched.commit(&to, target_size);
            for c in &chain {
                self.sched.grow(&to, c.space);
            }
        }
        let after = self.virtual_free(&to);
        self.sched.release(cur, obj.size, true);
        for c in &chain {
            self.sched.release(cur, c.size, false);
        }
        // Files and thin LVs say what they hold (thin: the pool's
        // data_percent, an estimate to 0.01 %); a thick LV is read whole.
        let read = if carry == Carry::HandOver {
            0
        } else if backend.caps.knows_allocation {
            obj.allocated.unwrap_or(obj.size).min(obj.size)
        } else {
            obj.size
        };
        let bandwidth = self
            .set
            .backends
            .get(cur)
            .and_then(|b| b.spec.migration_bandwidth)
            .map(crate::manifest::values::Quantity::bytes);
        self.out.actions.push(Action {
            address: a,
            op: Op::Migrate {
                name: name.as_str().to_owned(),
                uuid: obj.uuid,
                from: cur.as_str().to_owned(),
                to: to.as_str().to_owned(),
                size: obj.size,
                target_size,
                read,
                target_free: (before, after),
                bandwidth,
                resume,
                deletion_policy: policy,
                carry,
                within,
                snapshots: chain,
                across: None,
            },
            reason: if resume {
                format!("{why}; an interrupted migration resumes from its last checkpoint")
            } else {
                why
            },
            impact: if carry == Carry::HandOver {
                Impact::MetadataOnly
            } else {
                Impact::Moves
            },
        });
        true
    }

    /// The snapshots of volume `name` (`obj` on `backend`) that move with it
    /// to a back end of extent `extent` (`migrateSnapshots: true`; 1: sizes
    /// as they are, another host rounds them), by name; a refusal for each
    /// that cannot, or one for all of them without the flag.
    pub(super) fn chain_of(
        &self,
        name: &Name,
        doc: &Doc<VolumeSpec>,
        obj: &Observed,
        (backend, extent): (&BackendView, u64),
        refusals: &mut Vec<String>,
    ) -> Vec<ChainSnapshot> {
        let found: BTreeMap<&str, &Observed> = self
            .found
            .values()
            .filter(|c| c.obj.kind == ObjKind::Snapshot && c.obj.parent == Some(obj.uuid))
            .map(|c| (c.obj.name.as_str(), c.obj))
            .collect();
        let declared = self.declared_snapshots(name);
        let all: BTreeSet<&str> = found
            .keys()
            .copied()
            .chain(declared.iter().copied())
            .collect();
        if all.is_empty() {
            return Vec::new();
        }
        if !doc.spec.migrate_snapshots {
            let list = all
                .iter()
                .map(|s| format!("snapshot.{s}"))
                .collect::<Vec<_>>()
                .join(", ");
            refusals.push(format!("it has snapshots ({list}), which live on its back end; set migrateSnapshots: true to move them with it as a chain, or delete them first (deletionPolicy: Delete, then remove their manifests)"));
            return Vec::new();
        }
        let cur = &backend.name;
        let mut chain = Vec::new();
        for s in all {
            let Some(o) = found.get(s) else {
                refusals.push(format!("snapshot.{s} is declared but not taken yet: apply once with spec.backend: {cur} so it is taken there, then move the volume with it"));
                continue;
            };
            if !declared.contains(s) {
                refusals.push(format!("snapshot.{s} is no longer declared: let its removal apply first (keep spec.backend: {cur} for one apply)"));
                continue;
            }
            if let Some(h) = self.holder(o) {
                refusals.push(format!(
                    "snapshot.{s} is in use by {h}: stop or detach it, then plan again"
                ));
                continue;
            }
            if o.health != Health::Ready {
                refusals.push(format!(
                    "snapshot.{s} is not ready ({:?}); let the pending change finish first (keep spec.backend: {cur} for one apply)",
                    o.health
                ));
                continue;
            }
            let target_size = round_up(o.size, extent);
            chain.push(ChainSnapshot {
                name: s.to_owned(),
                uuid: o.uuid,
                size: o.size,
                target_size,
                space: target_size,
                read: if backend.caps.knows_allocation {
                    o.allocated.unwrap_or(o.size).min(o.size)
                } else {
                    o.size
                },
            });
        }
        chain
    }

    /// The names of the snapshots the manifests declare of volume `name`.
    pub(super) fn declared_snapshots(&self, name: &Name) -> BTreeSet<&'a str> {
        self.set
            .snapshots
            .iter()
            .filter(|(_, s)| s.spec.volume.as_ref() == Some(name))
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// The snapshots of volume `uuid` on either side of a migration in
    /// flight (ready, `deleting`, or the target's `migrating` ones), by
    /// name: a chain's to finish.
    pub(super) fn chain_in_flight(&self, uuid: Uuid) -> Vec<ChainSnapshot> {
        let by_name: BTreeMap<&str, &Observed> = self
            .found
            .values()
            .chain(self.half_moved.values())
            .chain(self.migrating.values())
            .filter(|c| c.obj.kind == ObjKind::Snapshot && c.obj.parent == Some(uuid))
            .map(|c| (c.obj.name.as_str(), c.obj))
            .collect();
        by_name
            .into_iter()
            .map(|(n, o)| ChainSnapshot {
                name: n.to_owned(),
                uuid: o.uuid,
                size: o.size,
                target_size: o.size,
                space: o.size,
                read: 0,
            })
            .collect()
    }

    /// Plans the end of a migration whose copy was verified (its source is
    /// marked `deleting`): promote the target if need be, remove the source.
    fn finish_migration(
        &mut self,
        name: &Name,
        policy: DeletionPolicy,
        (fb, from): (&BackendView, &Observed),
        (tb, to): (&BackendView, &Observed),
    ) {
        let (src, dst) = (fb.name.as_str().to_owned(), tb.name.as_str().to_owned());
        let free = self.virtual_free(&tb.name);
        self.out.actions.push(Action {
            address: addr(ObjKind::Volume, name.as_str()),
            op: Op::Migrate {
                name: name.as_str().to_owned(),
                uuid: from.uuid,
                from: src.clone(),
                to: dst,
                size: from.size,
                target_size: to.size,
                read: 0,
                target_free: (free, free),
                bandwidth: None,
                resume: true,
                deletion_policy: policy,
                carry: Carry::Copy,
                within: fb.caps.shared_space(&tb.caps).map(ToString::to_string),
                snapshots: self.chain_in_flight(from.uuid),
                across: None,
            },
            reason: format!("an earlier migration from {src} was verified, then interrupted before the switch; it is finished (nothing is copied again)"),
            impact: Impact::Moves,
        });
    }

    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // clamped at 0, shown rounded
    fn virtual_free(&self, b: &Name) -> u64 {
        self.sched
            .pool(b)
            .map_or(0, |p| p.virtual_free().max(0.0) as u64)
    }

    /// The backup a volume declared with `source.backup` restores: among the
    /// catalogued backups of `source.backup.volume` (default: this volume)
    /// in the policy's repository, `id` (a unique prefix) or the newest
    /// (`latest`, the default). `Ok(None)` without `source.backup`.
    /// `latest` of a declared volume that the policy backs up (its own
    /// `backupPolicy` or its group's) and that has no backup yet is
    /// [`Unresolved::NotYet`]: a site declared in one go (the volume, its
    /// policy and a restore of it) applies everything else and creates the
    /// restore once the first backup is catalogued.
    fn backup_source(
        &self,
        doc: &Doc<VolumeSpec>,
        name: &Name,
    ) -> Result<Option<crate::observe::BackupSource>, Unresolved> {
        let Some(b) = doc.spec.source.as_ref().and_then(|s| s.backup.as_ref()) else {
            return Ok(None);
        };
        let Some(repo) = self.world.backup_repos.get(&b.policy) else {
            return Err(Unresolved::Refused(format!(
                "source.backup.policy {} is not a BackupPolicy of the manifests",
                b.policy
            )));
        };
        let vol = b.volume.as_ref().unwrap_or(name).as_str();
        let mut found: Vec<&crate::observe::BackupSource> = self
            .world
            .backups
            .iter()
            .filter(|x| &x.repository == repo && x.volume == vol)
            .collect();
        found.sort_by_key(|x| (x.started_at, x.id));
        let id = b.id.as_deref().unwrap_or("latest");
        let hit = if id == "latest" {
            found.last().copied()
        } else {
            let hits: Vec<_> = found
                .into_iter()
                .filter(|x| {
                    x.id.to_string().starts_with(id) || x.id.simple().to_string().starts_with(id)
                })
                .collect();
            if hits.len() > 1 {
                return Err(Unresolved::Refused(format!(
                    "source.backup.id {id:?} matches {} backups of volume {vol}; give more digits",
                    hits.len()
                )));
            }
            hits.first().copied()
        };
        if let Some(hit) = hit {
            return Ok(Some(hit.clone()));
        }
        let backed_up_by_policy = self.set.volumes.iter().any(|(n, v)| {
            n.as_str() == vol
                && (v.spec.backup_policy.as_ref() == Some(&b.policy)
                    || v.spec.consistency_group.as_ref().is_some_and(|g| {
                        self.set
                            .consistency_groups
                            .get(g)
                            .is_some_and(|g| g.spec.backup_policy.as_ref() == Some(&b.policy))
                    }))
        });
        if id == "latest" && backed_up_by_policy {
            return Err(Unresolved::NotYet(format!(
                "restores the latest backup of volume {vol} (BackupPolicy {}), and there is none yet in {repo}; it is created by the first apply after one (the policy's schedule, or `backup run {vol}`)",
                b.policy
            )));
        }
        Err(Unresolved::Refused(format!(
            "no catalogued backup {id} of volume {vol} in {} (BackupPolicy {}): run `backup list`, or `backup import --scan` the repository",
            repo, b.policy
        )))
    }

    fn backend_of(&self, kind: ObjKind, name: &str) -> Option<String> {
        let key = (kind, name.to_owned());
        if let Some(f) = self.found.get(&key) {
            return Some(f.backend.name.as_str().to_owned());
        }
        self.planned.get(&key).cloned()
    }

    fn source_of(&self, doc: &Doc<VolumeSpec>, _backend: &str) -> Option<SourceRef> {
        let (kind, name) = Self::copied_from(doc)?;
        let uuid = self.found.get(&(kind, name.clone())).map(|f| f.obj.uuid);
        Some(SourceRef { kind, name, uuid })
    }

    #[allow(clippy::too_many_arguments)]
    fn push_create(
        &mut self,
        kind: ObjKind,
        name: &str,
        backend: &str,
        size: u64,
        source: Option<SourceRef>,
        resume: Option<Uuid>,
        backup: Option<crate::observe::BackupSource>,
        policy: DeletionPolicy,
        reason: String,
    ) {
        self.planned
            .insert((kind, name.to_owned()), backend.to_owned());
        self.out.actions.push(Action {
            address: addr(kind, name),
            op: Op::Create {
                kind,
                name: name.to_owned(),
                backend: backend.to_owned(),
                size,
                source,
                resume,
                backup,
                deletion_policy: policy,
                from_file: None,
                placement: None,
                consistency_group: None,
            },
            reason,
            impact: Impact::Grows,
        });
    }

    #[allow(clippy::too_many_lines)] // one pass over a snapshot's cases, kept together
    fn snapshot(&mut self, name: &Name) {
        let set = self.set;
        let doc = &set.snapshots[name];
        {
            let key = (ObjKind::Snapshot, name.as_str().to_owned());
            let a = addr(ObjKind::Snapshot, name.as_str());
            let policy = doc.spec.deletion_policy;
            let Some(vol) = &doc.spec.volume else {
                if let Some(g) = &doc.spec.consistency_group {
                    self.group_snapshot(name, g);
                }
                return;
            };
            if let Some(f) = self.found.get(&key) {
                let (obj, bname) = (f.obj, f.backend.name.as_str().to_owned());
                match obj.health {
                    Health::Creating if let Some(h) = self.holder(obj) => {
                        self.error(&a, PlanErrorKind::InUse, format!("an earlier create was interrupted, and finishing it may replace its content, but it is in use by {h}; stop or detach it, then plan again"));
                    }
                    Health::Creating => {
                        let src = Some(self.snapshot_source(vol.as_str()));
                        self.push_create(ObjKind::Snapshot, name.as_str(), &bname, obj.size, src, Some(obj.uuid), None, policy,
                            "an earlier create was interrupted; it is finished with the same identity".into());
                    }
                    // A chain's source, verified and marked: its volume's
                    // migration finishes it (here, or, when a job moves it
                    // to another host, this host's half of that).
                    Health::Deleting if self.migrating.contains_key(&key) => {}
                    Health::Deleting
                        if obj.parent.is_some_and(|p| {
                            self.world.remote.jobs.values().any(|j| j.uuid == p)
                        }) => {}
                    Health::Deleting | Health::DataMissing => self.error(&a, PlanErrorKind::Lost, format!(
                        "its data on {bname} ({}) is gone or half deleted, but the manifests still declare it; remove the manifest", obj.uuid)),
                    Health::Ready | Health::SizeMismatch { .. } => {
                        self.record_if_needed(ObjKind::Snapshot, name.as_str(), obj.uuid, &bname, obj.size, None, policy);
                    }
                    // Only volumes migrate, and targets are not in `found`.
                    Health::Migrating => {}
                }
                return;
            }
            if self.unresolved.contains(&key) {
                return;
            }
            // Moving here from another host with its volume: that move
            // makes it.
            if self.out.actions.iter().any(|a| {
                matches!(&a.op, Op::Migrate { across: Some(x), snapshots, .. }
                    if x.role == Role::Copy && snapshots.iter().any(|c| c.name == name.as_str()))
            }) {
                return;
            }
            // Its volume lives on another host (moved there with it, say):
            // that host plans it.
            if !self
                .found
                .contains_key(&(ObjKind::Volume, vol.as_str().to_owned()))
                && self
                    .world
                    .remote
                    .volumes
                    .get(vol.as_str())
                    .is_some_and(|v| v.iter().any(|r| r.health != Health::Migrating))
            {
                return;
            }
            if let Some(entry) = doc.meta.annotations.get(crate::manifest::kinds::ADOPT) {
                self.adopt_snapshot(name, vol, &entry.0, policy);
                return;
            }
            // A snapshot lives with its volume.
            let vol_backend = self.backend_of(ObjKind::Volume, vol.as_str());
            if vol_backend.is_none()
                && self
                    .waiting
                    .contains(&(ObjKind::Volume, vol.as_str().to_owned()))
            {
                self.wait(
                    ObjKind::Snapshot,
                    name.as_str(),
                    format!("waits for its volume.{vol}"),
                );
                return;
            }
            let pin = vol_backend.as_ref().and_then(|b| {
                self.world
                    .backends
                    .keys()
                    .find(|k| k.as_str() == b)
                    .cloned()
            });
            if (vol_backend.is_none()
                || pin
                    .as_ref()
                    .is_some_and(|p| self.failed.contains(p.as_str())))
                && self.held_back(ObjKind::Snapshot, name.as_str(), pin.as_ref())
            {
                return;
            }
            if let Some((uuid, backend)) = self.lost(ObjKind::Snapshot, name.as_str()) {
                self.error(&a, PlanErrorKind::Lost, format!(
                    "the snapshot ({uuid} on {backend}) was deleted outside cinderblock; a new one would hold today's data, not the old point in time: remove the manifest, or give the new snapshot another name"
                ));
                return;
            }
            let Some(backend) = self.backend_of(ObjKind::Volume, vol.as_str()) else {
                self.error(
                    &a,
                    PlanErrorKind::Refused,
                    format!("volume.{vol} does not exist and is not created by this plan"),
                );
                return;
            };
            let size = self
                .found
                .get(&(ObjKind::Volume, vol.as_str().to_owned()))
                .map(|f| f.obj.size)
                .or_else(|| self.set.volumes.get(vol).map(|v| v.spec.size.bytes()))
                .unwrap_or(0);
            // Shared (thin) snapshots have their volume's (extent-rounded)
            // size; copy-on-write ones reserve their space, spec.size or, as
            // Cinder does, the volume's size.
            let mut cow_note = String::new();
            let size = match self
                .world
                .backends
                .values()
                .find(|b| b.name.as_str() == backend)
            {
                Some(b) if b.caps.snapshots == SnapshotSpace::Shared => round_up(size, b.extent),
                Some(b) if b.caps.snapshots == SnapshotSpace::CopyOnWrite => {
                    let cow = round_up(
                        doc.spec
                            .size
                            .map_or(size, crate::manifest::values::Quantity::bytes),
                        b.extent,
                    );
                    cow_note = format!(
                        "; a thick snapshot with {} of copy-on-write space ({})",
                        format_bytes_exact(cow),
                        if doc.spec.size.is_some() {
                            "spec.size"
                        } else {
                            "the volume's size"
                        }
                    );
                    cow
                }
                _ => size,
            };
            if let Some(bn) = self
                .world
                .backends
                .keys()
                .find(|k| k.as_str() == backend)
                .cloned()
            {
                if let Some(why) = self.sched.pool(&bn).and_then(|p| p.admit(size).reason) {
                    self.error(
                        &a,
                        PlanErrorKind::NoRoom,
                        format!("no room on {backend}: {why}"),
                    );
                    return;
                }
                self.sched.grow(&bn, size);
            }
            let src = Some(self.snapshot_source(vol.as_str()));
            self.push_create(
                ObjKind::Snapshot,
                name.as_str(),
                &backend,
                size,
                src,
                None,
                None,
                policy,
                format!("it is declared and does not exist; a point-in-time copy of volume.{vol}{cow_note}"),
            );
        }
    }

    fn snapshot_source(&self, vol: &str) -> SourceRef {
        let uuid = self
            .found
            .get(&(ObjKind::Volume, vol.to_owned()))
            .map(|f| f.obj.uuid);
        SourceRef {
            kind: ObjKind::Volume,
            name: vol.to_owned(),
            uuid,
        }
    }

    /// Objects of ours that no manifest declares any more (a volume with an
    /// export is unexported before it is deleted).
    #[allow(clippy::too_many_lines)] // one pass over every undeclared object, kept together
    fn removals(&mut self) {
        let declared: BTreeSet<(ObjKind, String)> = self
            .set
            .volumes
            .keys()
            .map(|n| (ObjKind::Volume, n.as_str().to_owned()))
            .chain(
                self.set
                    .snapshots
                    .keys()
                    .map(|n| (ObjKind::Snapshot, n.as_str().to_owned())),
            )
            .chain(
                self.set
                    .images
                    .keys()
                    .map(|n| (ObjKind::Image, n.as_str().to_owned())),
            )
            .collect();
        // The member snapshots of a declared group snapshot are declared
        // with it.
        let declared: BTreeSet<(ObjKind, String)> = declared
            .into_iter()
            .chain(
                self.found
                    .keys()
                    .filter(|(k, n)| *k == ObjKind::Snapshot && self.in_declared_cut(n))
                    .cloned(),
            )
            .collect();
        let may_delete = self.world.complete()
            && !(self.set.volumes.is_empty() && self.set.snapshots.is_empty());
        let mut held = 0usize;
        let mut deletes = Vec::new();
        let mut forgets = Vec::new();
        for ((kind, name), f) in &self.found {
            let key = (*kind, name.clone());
            if declared.contains(&key) || self.old_names.contains(&key) {
                continue;
            }
            let a = addr(*kind, name);
            let bname = f.backend.name.as_str().to_owned();
            let policy = self.recorded_policy(f.obj.uuid).unwrap_or_default();
            let interrupted_delete = f.obj.health == Health::Deleting;
            if policy == DeletionPolicy::Retain && !interrupted_delete {
                forgets.push(Action {
                    address: a,
                    op: Op::Forget {
                        kind: *kind,
                        name: name.clone(),
                        uuid: f.obj.uuid,
                        backend: bname.clone(),
                        gone: false,
                    },
                    reason: format!(
                        "its manifest was removed and its deletionPolicy is Retain: {}",
                        f.backend
                            .caps
                            .retained
                            .replace("{uuid}", &f.obj.uuid.to_string())
                            .replace("{kind}", kind.as_str())
                    ),
                    impact: Impact::MetadataOnly,
                });
                continue;
            }
            if !may_delete {
                held += 1;
                continue;
            }
            if *kind == ObjKind::Volume
                && let Some(g) = self
                    .recorded
                    .objects
                    .get(&f.obj.uuid)
                    .and_then(|r| r.consistency_group.as_ref())
            {
                self.out.errors.push(PlanError::new(&a, PlanErrorKind::Refused, format!(
                    "cannot be deleted: it is a member of consistency group {g}, and a member is not deleted while it is in the group; declare it again without spec.consistencyGroup and apply (it leaves the group, a ~ change), then remove its manifest"
                )));
                continue;
            }
            if *kind == ObjKind::Volume {
                let children: Vec<String> = self
                    .found
                    .values()
                    .filter(|c| c.obj.kind == ObjKind::Snapshot && c.obj.parent == Some(f.obj.uuid))
                    .filter(|c| {
                        declared.contains(&(ObjKind::Snapshot, c.obj.name.clone()))
                            || self.recorded_policy(c.obj.uuid).unwrap_or_default()
                                == DeletionPolicy::Retain
                    })
                    .map(|c| c.obj.name.clone())
                    .collect();
                if !children.is_empty() {
                    let text = format!(
                        "cannot be deleted while it has snapshots ({}); delete them first (deletionPolicy: Delete and remove their manifests)",
                        children
                            .iter()
                            .map(|c| format!("snapshot.{c}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    self.out
                        .errors
                        .push(PlanError::new(&a, PlanErrorKind::Refused, text));
                    continue;
                }
            }
            if let Some(text) = self.cut_held(*kind, name) {
                self.out
                    .errors
                    .push(PlanError::new(&a, PlanErrorKind::InUse, text));
                continue;
            }
            if let Some(h) = self.holder(f.obj) {
                let text = if interrupted_delete {
                    format!(
                        "an earlier delete was interrupted, but it is in use by {h}; stop or detach it, then plan again"
                    )
                } else {
                    format!(
                        "its manifest was removed and its deletionPolicy is Delete, but it is in use by {h}; stop or detach it, then plan again (or declare it again to keep it)"
                    )
                };
                self.out
                    .errors
                    .push(PlanError::new(&a, PlanErrorKind::InUse, text));
                continue;
            }
            if *kind == ObjKind::Image {
                // Volumes made from it that may share its data: file clones
                // (reflinks) and thin LV clones; thick LV copies own theirs.
                // Those deleted by this plan go first (images come last in
                // `found`'s order).
                let going: BTreeSet<Uuid> = deletes
                    .iter()
                    .filter_map(|d: &Action| match d.op {
                        Op::Delete { uuid, .. } => Some(uuid),
                        _ => None,
                    })
                    .collect();
                let clones: Vec<String> = self
                    .found
                    .values()
                    .chain(self.migrating.values())
                    .filter(|c| c.obj.clone_of == Some(f.obj.uuid) && !going.contains(&c.obj.uuid))
                    .map(|c| addr(c.obj.kind, &c.obj.name))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                if !clones.is_empty() {
                    self.out.errors.push(PlanError::new(&a, PlanErrorKind::InUse, format!(
                        "cannot be deleted while volumes made from it may share its data ({}); delete them first, or keep the image-volume with deletionPolicy: Retain",
                        clones.join(", ")
                    )));
                    continue;
                }
            }
            if *kind == ObjKind::Volume
                && let Some(o) = self.world.exports.get(f.obj.uuid)
            {
                match unexport_action(&a, name, f.obj.uuid, o, "its manifest was removed") {
                    Ok(x) => deletes.push(x),
                    Err(e) => {
                        self.out.errors.push(e);
                        continue;
                    }
                }
            }
            let mut reason = if interrupted_delete {
                "an earlier delete was interrupted; it is finished".to_owned()
            } else {
                "its manifest was removed and its deletionPolicy is Delete".to_owned()
            };
            if let Some(note) = &f.backend.caps.delete_note {
                reason.push_str("; ");
                reason.push_str(note);
            }
            deletes.push(Action {
                address: a,
                op: Op::Delete {
                    kind: *kind,
                    name: name.clone(),
                    uuid: f.obj.uuid,
                    backend: bname.clone(),
                    size: f.obj.size,
                },
                reason,
                impact: Impact::DestroysData,
            });
            if let Some(bn) = self
                .world
                .backends
                .keys()
                .find(|k| k.as_str() == bname)
                .cloned()
            {
                self.sched
                    .release(&bn, f.obj.size, *kind == ObjKind::Volume);
            }
        }
        // Targets of migrations whose volume is no longer declared: partial
        // copies of ours, removed (the volume itself is handled above).
        for ((kind, name), t) in &self.migrating {
            if declared.contains(&(*kind, name.clone())) {
                continue;
            }
            if !may_delete {
                held += 1;
                continue;
            }
            deletes.push(Action {
                address: addr(*kind, name),
                op: Op::Delete {
                    kind: *kind,
                    name: name.clone(),
                    uuid: t.obj.uuid,
                    backend: t.backend.name.as_str().to_owned(),
                    size: t.obj.size,
                },
                reason: "the unfinished target of a migration whose volume is no longer declared"
                    .into(),
                impact: Impact::DestroysData,
            });
        }
        // Records of objects that are gone and no longer declared.
        let found_uuids: BTreeSet<Uuid> = self.found.values().map(|f| f.obj.uuid).collect();
        for (uuid, rec) in &self.recorded.objects {
            let kind: ObjKind = rec.kind;
            if declared.contains(&(kind, rec.name.clone())) || found_uuids.contains(uuid) {
                continue;
            }
            let Some(b) = self.world.backends.get(rec.backend.as_str()) else {
                continue;
            };
            if !b
                .inventory()
                .is_some_and(crate::observe::Inventory::complete)
            {
                continue;
            }
            forgets.push(Action {
                address: addr(kind, &rec.name),
                op: Op::Forget { kind: rec.kind, name: rec.name.clone(), uuid: *uuid, backend: rec.backend.clone(), gone: true },
                reason: "it was deleted outside cinderblock and its manifest was removed; only the record goes".into(),
                impact: Impact::MetadataOnly,
            });
        }
        if held > 0 {
            let why = if self.world.complete() {
                "the manifests declare no volumes and no snapshots (an empty manifest tree never deletes anything)"
            } else {
                "discovery was incomplete (a failed listing never reads as \"delete all\")"
            };
            self.out
                .notes
                .push(format!("{held} delete(s) held back: {why}"));
        }
        // Snapshots go before the volumes they were taken of.
        deletes.sort_by_key(|a| match &a.op {
            Op::Delete {
                kind: ObjKind::Snapshot,
                ..
            } => 0,
            _ => 1,
        });
        self.out.actions.extend(forgets);
        self.out.actions.extend(deletes);
    }

    fn capacity(&mut self) {
        // Several back ends may share space (a thick one and thin pools on
        // one volume group): its free space after the plan is what all of
        // them take from it.
        let mut takes: BTreeMap<(&str, &str), i128> = BTreeMap::new();
        for (name, b) in &self.world.backends {
            let Some(inv) = b.inventory() else { continue };
            let Some(shared) = &inv.capacity.shared else {
                continue;
            };
            let mut take = i128::from(
                inv.capacity
                    .create_pool
                    .map_or(0, |p| p.data + 2 * p.metadata),
            );
            if shared.draws_provisioned {
                let before = schedule::pool_of(b);
                let after = self.sched.pool(name).unwrap_or(before);
                take += i128::from(before.free) - i128::from(after.free);
            }
            *takes
                .entry((shared.kind.as_str(), shared.name.as_str()))
                .or_default() += take;
        }
        for (name, b) in &self.world.backends {
            let Some(inv) = b.inventory() else { continue };
            let before = schedule::pool_of(b);
            let after = self.sched.pool(name).unwrap_or(before);
            let mut details = Vec::new();
            if let Some(shared) = &inv.capacity.shared {
                let take = takes
                    .get(&(shared.kind.as_str(), shared.name.as_str()))
                    .copied()
                    .unwrap_or(0);
                let after_free = (i128::from(shared.free) - take).max(0);
                details.push(CapacityLine {
                    kind: shared.kind.clone(),
                    name: shared.name.clone(),
                    figures: vec![Figure {
                        name: "free".into(),
                        value: FigureValue::Bytes {
                            before: shared.free,
                            after: u64::try_from(after_free).unwrap_or(u64::MAX),
                        },
                    }],
                    note: None,
                });
            }
            if let Some(fill) = &inv.capacity.fill {
                // A pool the plan creates starts empty.
                let created = inv.capacity.create_pool.is_some();
                let centi = |v: Option<u32>| FigureValue::Percent {
                    centi: if created { Some(0) } else { v },
                };
                details.push(CapacityLine {
                    kind: fill.kind.clone(),
                    name: fill.name.clone(),
                    figures: vec![
                        Figure {
                            name: "data".into(),
                            value: centi(fill.data_centi),
                        },
                        Figure {
                            name: "metadata".into(),
                            value: centi(fill.metadata_centi),
                        },
                    ],
                    note: Some(format!(
                        "high-water mark {}{}",
                        capacity::percent(HIGH_WATER_CENTI),
                        if created {
                            ", created by this plan"
                        } else {
                            ""
                        }
                    )),
                });
            }
            self.out.capacity.push(CapacityChange {
                backend: name.as_str().to_owned(),
                thin: b.thin,
                total: before.total,
                provisioned_before: before.provisioned,
                provisioned_after: after.provisioned,
                virtual_free_before: before.virtual_free(),
                virtual_free_after: after.virtual_free(),
                ratio: before.effective_ratio(),
                details,
            });
        }
    }
}

/// How deep a volume sits in its chain of sources: 0 for a volume made
/// from nothing, its source's depth + 1 for a copy, + 2 for a volume from a
/// snapshot (which sits one level below its volume).
fn vol_depth<'s>(
    set: &'s ManifestSet,
    n: &'s Name,
    memo: &mut BTreeMap<&'s Name, usize>,
    guard: usize,
) -> usize {
    if let Some(v) = memo.get(n) {
        return *v;
    }
    let Some(doc) = set.volumes.get(n) else {
        return 0;
    };
    let parent = doc.spec.source.as_ref().and_then(|s| {
        if let Some(v) = &s.volume {
            return Some((v, 1));
        }
        if let (Some(gs), Some(m)) = (&s.group_snapshot, &s.member) {
            // After the group snapshot, which comes after every member.
            let g = set.snapshots.get(gs)?.spec.consistency_group.as_ref()?;
            let deepest = set
                .volumes
                .iter()
                .filter(|(v, d)| d.spec.consistency_group.as_ref() == Some(g) && *v != n)
                .map(|(v, _)| v)
                .max_by_key(|v| vol_depth(set, v, memo, guard + 1))
                .unwrap_or(m);
            return Some((deepest, 2));
        }
        s.snapshot
            .as_ref()
            .and_then(|sn| set.snapshots.get(sn)?.spec.volume.as_ref())
            .map(|v| (v, 2))
    });
    let v = match parent {
        Some((p, step)) if guard < 64 && p != n => vol_depth(set, p, memo, guard + 1) + step,
        _ => 0,
    };
    memo.insert(n, v);
    v
}

/// The declared volumes, sources before their copies, then by name.
pub(crate) fn volume_order(set: &ManifestSet) -> Vec<&Name> {
    let mut memo = BTreeMap::new();
    let mut items: Vec<(usize, &Name)> = set
        .volumes
        .keys()
        .map(|n| (vol_depth(set, n, &mut memo, 0), n))
        .collect();
    items.sort();
    items.into_iter().map(|(_, n)| n).collect()
}

/// What a volume asks of a back end: size, zone (its own or its group's),
/// and its type's extra specs.
pub(crate) fn request<'s>(set: &'s ManifestSet, doc: &'s Doc<VolumeSpec>) -> Request<'s> {
    let zone = doc.spec.availability_zone.as_deref().or_else(|| {
        doc.spec
            .consistency_group
            .as_ref()
            .and_then(|g| set.consistency_groups.get(g))
            .and_then(|g| g.spec.availability_zone.as_deref())
    });
    Request {
        size: doc.spec.size.bytes(),
        zone,
        extra_specs: doc
            .spec
            .volume_type
            .as_ref()
            .and_then(|t| set.volume_types.get(t))
            .map(|t| &t.spec.extra_specs),
    }
}

fn kind_word(k: ObjKind) -> &'static str {
    match k {
        ObjKind::Volume => "volume",
        ObjKind::Snapshot => "snapshot",
        ObjKind::Image => "image",
    }
}

/// Rounds `bytes` up to a multiple of `extent`.
pub fn round_up(bytes: u64, extent: u64) -> u64 {
    if extent <= 1 {
        return bytes;
    }
    bytes.div_ceil(extent).saturating_mul(extent)
}
