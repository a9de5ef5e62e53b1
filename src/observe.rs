//! Observation: what exists on this host's back ends, as plain data the
//! planner can read without I/O.
//!
//! Owns the observed-world model ([`World`]) and discovery: for every back end
//! of this host in the manifests, ask its driver what it holds (our objects,
//! foreign entries, capacity) and turn the answer into driver-neutral
//! [`Observed`] objects. A back end whose discovery fails is kept in the world
//! as [`Discovery::Failed`]: the planner then makes no deletes anywhere in that
//! run (a failed listing must never read as "empty, delete all").
//!
//! Must not: decide anything. It reports; the planner judges.

use std::collections::BTreeMap;
use std::path::Path;

use uuid::Uuid;

use crate::file::{self, FileBackend, Health};
use crate::manifest::kinds::{Allocation, BackendSpec};
use crate::manifest::validate::{backend_az, backend_name};
use crate::manifest::values::{OverSubscription, Percent};
use crate::manifest::{Doc, ManifestSet, Name};

/// What kind of object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjKind {
    /// A volume.
    Volume,
    /// A snapshot.
    Snapshot,
    /// An image-volume.
    Image,
}

impl ObjKind {
    /// The kind as written in plan addresses (`volume.db`).
    pub fn as_str(self) -> &'static str {
        match self {
            ObjKind::Volume => "volume",
            ObjKind::Snapshot => "snapshot",
            ObjKind::Image => "image",
        }
    }
}

/// The condition of an observed object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum ObjHealth {
    /// Complete.
    Ready,
    /// A create was interrupted; re-running it with the same uuid finishes it.
    Creating,
    /// A delete was interrupted; re-running it finishes it.
    Deleting,
    /// Recorded, but its data is gone (removed outside cinderblock).
    DataMissing,
    /// The data's size differs from the recorded size.
    SizeMismatch {
        /// Recorded size.
        recorded: u64,
        /// Actual size.
        actual: u64,
    },
}

/// One object of ours on a back end.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Observed {
    /// Identity.
    pub uuid: Uuid,
    /// The manifest name it was created for.
    pub name: String,
    /// Volume, snapshot or image.
    pub kind: ObjKind,
    /// Logical size in bytes (as recorded by the driver).
    pub size: u64,
    /// Bytes actually allocated, when known.
    pub allocated: Option<u64>,
    /// For snapshots: the volume.
    pub parent: Option<Uuid>,
    /// Condition.
    pub health: ObjHealth,
}

/// Capacity figures of one back end, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Capacity {
    /// Total size.
    pub total: u64,
    /// Free space (for files: available to unprivileged users).
    pub free: u64,
    /// Sum of our objects' logical sizes.
    pub provisioned: u64,
}

/// What discovery found on one back end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// Capacity.
    pub capacity: Capacity,
    /// Our objects, sorted by uuid.
    pub objects: Vec<Observed>,
    /// Entries that are not ours (names), sorted.
    pub foreign: Vec<String>,
    /// Problems that make the view partial (no deletes when any).
    pub problems: Vec<String>,
}

impl Inventory {
    /// Whether the view is complete (deletes allowed).
    pub fn complete(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Discovery result of one back end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// Discovered.
    Ok(Inventory),
    /// Discovery failed; the message says why.
    Failed(String),
}

/// How a back end stores volumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Driver {
    /// Files in a directory.
    File {
        /// The directory, resolved against the state directory.
        root: std::path::PathBuf,
        /// Sparse or preallocated.
        allocation: Allocation,
    },
    /// An LVM volume group.
    Lvm,
}

/// One back end as the planner sees it: configuration plus discovery.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendView {
    /// Manifest name.
    pub name: Name,
    /// Cinder's `volume_backend_name`.
    pub backend_name: String,
    /// Availability zone.
    pub zone: String,
    /// Driver and its parameters.
    pub driver: Driver,
    /// Whether volumes are thin-provisioned (sparse files, thin LVs).
    pub thin: bool,
    /// Allocation granularity: volume sizes are rounded up to it.
    pub extent: u64,
    /// Over-subscription ratio.
    pub ratio: OverSubscription,
    /// Reserved percentage.
    pub reserved_percentage: u8,
    /// Declared capabilities.
    pub capabilities: BTreeMap<String, String>,
    /// What discovery found.
    pub discovery: Discovery,
}

impl BackendView {
    /// The inventory, when discovery succeeded.
    pub fn inventory(&self) -> Option<&Inventory> {
        match &self.discovery {
            Discovery::Ok(inv) => Some(inv),
            Discovery::Failed(_) => None,
        }
    }
}

/// Every back end of this host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct World {
    /// By manifest name.
    pub backends: BTreeMap<Name, BackendView>,
}

impl World {
    /// Whether every back end was discovered completely: only then may a
    /// plan delete anything.
    pub fn complete(&self) -> bool {
        self.backends
            .values()
            .all(|b| b.inventory().is_some_and(Inventory::complete))
    }

    /// A fingerprint of what was observed (objects, their sizes and states,
    /// foreign entries, discovery failures; not free space, which moves on
    /// its own). A saved plan is refused when it no longer matches.
    pub fn fingerprint(&self) -> String {
        let mut h = blake3::Hasher::new();
        for (name, b) in &self.backends {
            h.update(name.as_str().as_bytes());
            h.update(b"\0");
            match &b.discovery {
                Discovery::Failed(e) => {
                    h.update(b"failed\0");
                    h.update(e.as_bytes());
                }
                Discovery::Ok(inv) => {
                    for o in &inv.objects {
                        let line = format!(
                            "{}|{}|{}|{}|{:?}|{:?}\n",
                            o.uuid,
                            o.name,
                            o.kind.as_str(),
                            o.size,
                            o.parent,
                            o.health
                        );
                        h.update(line.as_bytes());
                    }
                    for f in &inv.foreign {
                        h.update(b"foreign|");
                        h.update(f.as_bytes());
                        h.update(b"\n");
                    }
                    for p in &inv.problems {
                        h.update(b"problem|");
                        h.update(p.as_bytes());
                        h.update(b"\n");
                    }
                }
            }
        }
        h.finalize().to_hex()[..32].to_owned()
    }
}

/// Whether a back end belongs to `host`: unnamed hosts belong to whoever runs.
pub fn is_local(spec: &BackendSpec, host: &str) -> bool {
    spec.host.as_deref().is_none_or(|h| h == host)
}

/// Discovers every back end of `host` declared in `set`.
///
/// Back ends are discovered in parallel (one thread each, at most
/// [`DISCOVERY_THREADS`] at a time): each is a directory walk or one LVM
/// report, independent of the others, and a slow NFS share must not delay
/// the rest.
pub fn discover(set: &ManifestSet, host: &str, state_dir: &Path) -> World {
    let local: Vec<(&Name, &Doc<BackendSpec>)> = set
        .backends
        .iter()
        .filter(|(_, doc)| is_local(&doc.spec, host))
        .collect();
    let mut world = World::default();
    for chunk in local.chunks(DISCOVERY_THREADS) {
        let views: Vec<(Name, BackendView)> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|(name, doc)| scope.spawn(move || ((*name).clone(), view_of(doc, state_dir))))
                .collect();
            handles
                .into_iter()
                .zip(chunk)
                .map(|(h, (name, doc))| {
                    h.join().unwrap_or_else(|_| {
                        (
                            (*name).clone(),
                            failed_view(doc, "discovery panicked".into()),
                        )
                    })
                })
                .collect()
        });
        world.backends.extend(views);
    }
    world
}

/// Back ends discovered at once.
pub const DISCOVERY_THREADS: usize = 8;

fn failed_view(doc: &Doc<BackendSpec>, why: String) -> BackendView {
    let mut v = view_of_config(doc, Path::new("/"));
    v.discovery = Discovery::Failed(why);
    v
}

/// The configuration part of a view (discovery not run: `Failed`).
fn view_of_config(doc: &Doc<BackendSpec>, state_dir: &Path) -> BackendView {
    let spec = &doc.spec;
    BackendView {
        name: doc.name().clone(),
        backend_name: backend_name(doc),
        zone: backend_az(spec).to_owned(),
        driver: match &spec.file {
            Some(f) => Driver::File {
                root: f.path.resolve(state_dir),
                allocation: f.allocation,
            },
            None => Driver::Lvm,
        },
        thin: spec.file.as_ref().map_or_else(
            || spec.lvm.as_ref().is_some_and(|l| l.thin_pool.is_some()),
            |f| f.allocation == Allocation::Sparse,
        ),
        extent: 1,
        ratio: spec.max_over_subscription_ratio.unwrap_or_default(),
        reserved_percentage: spec.reserved_percentage.map_or(0, Percent::get),
        capabilities: spec
            .capabilities
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect(),
        discovery: Discovery::Failed("not discovered".into()),
    }
}

fn view_of(doc: &Doc<BackendSpec>, state_dir: &Path) -> BackendView {
    let mut view = view_of_config(doc, state_dir);
    view.discovery = match &doc.spec.file {
        Some(f) => discover_file(doc, &f.path.resolve(state_dir), f.path.is_in_state()),
        None => Discovery::Failed(
            "LVM back ends are not supported by this version of cinderblock yet".into(),
        ),
    };
    view
}

fn discover_file(doc: &Doc<BackendSpec>, root: &Path, in_state: bool) -> Discovery {
    let spec = doc.spec.file.as_ref();
    if let Some(share) = spec.and_then(|f| f.share.as_ref()) {
        let options: Vec<String> = spec
            .and_then(|f| f.mount_options.as_ref())
            .map(|o| o.as_str().split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        if let Err(e) =
            file::mount::ensure_mounted(crate::exec::Exec::host(), share.as_str(), root, &options)
        {
            // Tools' stderr spans lines; a plan note is one line.
            let msg = crate::error_chain(&e);
            return Discovery::Failed(msg.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    } else if in_state && !root.exists() {
        // A directory below the state directory is ours to create (the
        // quickstart); an absolute path must exist (it may be a mount point
        // whose file system is missing, and creating it would fill the root
        // file system instead).
        if let Err(e) = std::fs::create_dir_all(root) {
            return Discovery::Failed(format!("cannot create {}: {e}", root.display()));
        }
    }
    let backend = FileBackend::new(root, doc.name().as_str());
    match backend.discover() {
        Ok(inv) => Discovery::Ok(from_file_inventory(&inv)),
        Err(e) => Discovery::Failed(crate::error_chain(&e)),
    }
}

fn from_file_inventory(inv: &file::Inventory) -> Inventory {
    // The file driver lists objects sorted by uuid; the planner relies on it.
    let objects = inv
        .objects
        .iter()
        .map(|o| Observed {
            uuid: o.meta.uuid,
            name: o.meta.name.clone(),
            kind: match o.meta.kind {
                file::ObjectKind::Volume => ObjKind::Volume,
                file::ObjectKind::Snapshot => ObjKind::Snapshot,
                file::ObjectKind::Image => ObjKind::Image,
            },
            size: o.meta.size,
            allocated: o.data.map(|d| d.allocated),
            parent: o.meta.parent,
            health: match o.health {
                Health::Ready => ObjHealth::Ready,
                Health::Incomplete(file::Phase::Deleting) => ObjHealth::Deleting,
                Health::Incomplete(_) => ObjHealth::Creating,
                Health::DataMissing => ObjHealth::DataMissing,
                Health::SizeMismatch { recorded, actual } => {
                    ObjHealth::SizeMismatch { recorded, actual }
                }
            },
        })
        .collect();
    Inventory {
        capacity: Capacity {
            total: inv.capacity.total,
            free: inv.capacity.available,
            provisioned: inv.capacity.provisioned,
        },
        objects,
        foreign: inv
            .foreign
            .iter()
            .map(|f| f.name.display().to_string())
            .collect(),
        problems: inv
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.path.display(), p.message))
            .collect(),
    }
}
