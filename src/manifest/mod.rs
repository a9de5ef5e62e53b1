//! Manifests: what the admin committed to git, loaded, typed and checked.
//!
//! Owns the manifest model of every kind (`kinds`), the validating value types
//! (`values`), loading files and directory trees (`load`), the per-field
//! position index (`position`), cross-document validation (`validate`) and the
//! diagnostics they produce (`diag`). The result is a [`ManifestSet`]: every
//! document that parsed, keyed by kind and name, each with its [`Origin`] so
//! later stages (the planner) can point back at the exact line.
//!
//! Invariants: loading never panics and never stops at the first error (every
//! finding in every file is reported in one run); nothing here touches storage.

pub mod diag;
pub mod kinds;
pub mod load;
pub mod position;
pub mod validate;
pub mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

pub use diag::{Diagnostic, Severity};
pub use kinds::*;
pub use load::{Loaded, load_bytes, load_paths, load_source};
pub use position::{DocPositions, FieldPath, FilePositions, Pos};
pub use values::{Name, Quantity};

/// Every manifest kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `Backend`
    Backend,
    /// `VolumeType`
    VolumeType,
    /// `SchedulerPolicy`
    SchedulerPolicy,
    /// `Volume`
    Volume,
    /// `Snapshot`
    Snapshot,
    /// `BackupPolicy`
    BackupPolicy,
    /// `ConsistencyGroup`
    ConsistencyGroup,
    /// `Image`
    Image,
}

impl Kind {
    /// All kinds, in dependency order (what others refer to comes first).
    pub const ALL: [Kind; 8] = [
        Kind::Backend,
        Kind::VolumeType,
        Kind::SchedulerPolicy,
        Kind::BackupPolicy,
        Kind::ConsistencyGroup,
        Kind::Image,
        Kind::Volume,
        Kind::Snapshot,
    ];

    /// The kind as written in `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Backend => "Backend",
            Kind::VolumeType => "VolumeType",
            Kind::SchedulerPolicy => "SchedulerPolicy",
            Kind::Volume => "Volume",
            Kind::Snapshot => "Snapshot",
            Kind::BackupPolicy => "BackupPolicy",
            Kind::ConsistencyGroup => "ConsistencyGroup",
            Kind::Image => "Image",
        }
    }

    /// The kind named `s`, exactly.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a document came from.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The file.
    pub file: Arc<Path>,
    /// Positions of the fields of the file's documents (indexed when first
    /// asked for).
    positions: Arc<FilePositions>,
    /// Which document of the file's stream this is.
    doc: usize,
}

impl Origin {
    /// Document `doc` of `file`'s stream, whose positions are `positions`.
    pub fn new(file: Arc<Path>, positions: Arc<FilePositions>, doc: usize) -> Self {
        Self {
            file,
            positions,
            doc,
        }
    }
    /// The positions of the document's fields.
    fn positions(&self) -> Option<&DocPositions> {
        self.positions.doc(self.doc)
    }
    /// The position of `field`'s key (or nearest ancestor).
    pub fn key_pos(&self, field: &FieldPath) -> Pos {
        self.positions().map_or_else(Pos::default, |p| p.key(field))
    }
    /// The position of `field`'s value (or nearest ancestor).
    pub fn value_pos(&self, field: &FieldPath) -> Pos {
        self.positions()
            .map_or_else(Pos::default, |p| p.value(field))
    }
    /// Whether `field` was written in the document.
    pub fn has(&self, field: &FieldPath) -> bool {
        self.positions().is_some_and(|p| p.has(field))
    }
    /// `FILE:LINE:COL` of the document start.
    pub fn describe(&self) -> String {
        let p = self
            .positions()
            .map(DocPositions::start)
            .unwrap_or_default();
        format!("{}:{}:{}", self.file.display(), p.line, p.col)
    }
}

/// One loaded manifest of one kind.
#[derive(Debug, Clone)]
pub struct Doc<S> {
    /// `metadata`.
    pub meta: Metadata,
    /// `spec`.
    pub spec: S,
    /// Where it was written.
    pub origin: Origin,
}

impl<S> Doc<S> {
    /// The object's name.
    pub fn name(&self) -> &Name {
        &self.meta.name
    }
}

/// Every manifest that loaded, by kind and name (sorted: deterministic).
#[derive(Debug, Clone, Default)]
pub struct ManifestSet {
    /// `Backend`s.
    pub backends: BTreeMap<Name, Doc<BackendSpec>>,
    /// `VolumeType`s.
    pub volume_types: BTreeMap<Name, Doc<VolumeTypeSpec>>,
    /// `SchedulerPolicy` (at most one, `default`).
    pub scheduler_policies: BTreeMap<Name, Doc<SchedulerPolicySpec>>,
    /// `Volume`s.
    pub volumes: BTreeMap<Name, Doc<VolumeSpec>>,
    /// `Snapshot`s.
    pub snapshots: BTreeMap<Name, Doc<SnapshotSpec>>,
    /// `BackupPolicy`s.
    pub backup_policies: BTreeMap<Name, Doc<BackupPolicySpec>>,
    /// `ConsistencyGroup`s.
    pub consistency_groups: BTreeMap<Name, Doc<ConsistencyGroupSpec>>,
    /// `Image`s.
    pub images: BTreeMap<Name, Doc<ImageSpec>>,
}

impl ManifestSet {
    /// Number of objects of every kind.
    pub fn len(&self) -> usize {
        self.backends.len()
            + self.volume_types.len()
            + self.scheduler_policies.len()
            + self.volumes.len()
            + self.snapshots.len()
            + self.backup_policies.len()
            + self.consistency_groups.len()
            + self.images.len()
    }

    /// True when no manifest loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The names of every object of `kind`.
    pub fn names(&self, kind: Kind) -> Vec<&Name> {
        match kind {
            Kind::Backend => self.backends.keys().collect(),
            Kind::VolumeType => self.volume_types.keys().collect(),
            Kind::SchedulerPolicy => self.scheduler_policies.keys().collect(),
            Kind::Volume => self.volumes.keys().collect(),
            Kind::Snapshot => self.snapshots.keys().collect(),
            Kind::BackupPolicy => self.backup_policies.keys().collect(),
            Kind::ConsistencyGroup => self.consistency_groups.keys().collect(),
            Kind::Image => self.images.keys().collect(),
        }
    }

    /// The scheduler policy in force (`default`, or Cinder's defaults).
    pub fn scheduler_policy(&self) -> SchedulerPolicySpec {
        self.scheduler_policies
            .values()
            .next()
            .map(|d| d.spec.clone())
            .unwrap_or_default()
    }
}

/// A spec type and the slot of the set it lives in.
pub trait KindSpec: serde::de::DeserializeOwned + Sized {
    /// The kind.
    const KIND: Kind;
    /// The map of this kind in a set.
    fn slot(set: &mut ManifestSet) -> &mut BTreeMap<Name, Doc<Self>>;
}

macro_rules! kind_spec {
    ($spec:ty, $kind:ident, $field:ident) => {
        impl KindSpec for $spec {
            const KIND: Kind = Kind::$kind;
            fn slot(set: &mut ManifestSet) -> &mut BTreeMap<Name, Doc<Self>> {
                &mut set.$field
            }
        }
    };
}
kind_spec!(BackendSpec, Backend, backends);
kind_spec!(VolumeTypeSpec, VolumeType, volume_types);
kind_spec!(SchedulerPolicySpec, SchedulerPolicy, scheduler_policies);
kind_spec!(VolumeSpec, Volume, volumes);
kind_spec!(SnapshotSpec, Snapshot, snapshots);
kind_spec!(BackupPolicySpec, BackupPolicy, backup_policies);
kind_spec!(ConsistencyGroupSpec, ConsistencyGroup, consistency_groups);
kind_spec!(ImageSpec, Image, images);
