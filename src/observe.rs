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
//! LVM back ends are read from one `lvm fullreport` over every VG named in the
//! manifests ([`crate::lvm::cmd::fullreport`]); a VG that cannot be read fails
//! only the back ends on it.
//!
//! Must not: decide anything. It reports; the planner judges.

use std::collections::BTreeMap;
use std::path::Path;

use uuid::Uuid;

use crate::file::{self, FileBackend, Health};
use crate::iscsi::chap::CredentialPrint;
use crate::lvm;
use crate::manifest::kinds::{Allocation, BackendSpec, SecretRef, VolumeClear};
use crate::manifest::validate::{backend_az, backend_name};
use crate::manifest::values::OverSubscription;
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
    /// What a volume was made from and may still share data with: a file
    /// clone's source (a reflink shares extents), a thin LV's origin.
    /// `None` for thick LV copies and volumes made empty.
    pub clone_of: Option<Uuid>,
    /// Condition.
    pub health: ObjHealth,
    /// In use: an LV that is open (mounted, mapped, exported). Files cannot
    /// tell, and say `false`.
    pub in_use: bool,
}

/// Capacity figures of one back end, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Capacity {
    /// Total size (LVM thin: the pool's data size; thick: the VG's size).
    pub total: u64,
    /// Free space (for files: available to unprivileged users; LVM thin: the
    /// pool's unused data; thick: the VG's free extents).
    pub free: u64,
    /// Sum of logical sizes (files: ours; LVM thin: every thin LV in the pool;
    /// LVM thick: every allocated extent).
    pub provisioned: u64,
    /// LVM figures, for `lvm` back ends.
    pub lvm: Option<LvmCapacity>,
}

/// What an `lvm` back end adds to its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LvmCapacity {
    /// VG size, bytes.
    pub vg_size: u64,
    /// VG free, bytes.
    pub vg_free: u64,
    /// The thin pool's use, when the back end is thin and the pool exists.
    pub pool: Option<PoolUsage>,
    /// The back end's thin pool does not exist and `thinPoolSize` is declared:
    /// the sizes to create it with (the capacity figures are those of the pool
    /// to be created).
    pub create_pool: Option<PoolSizes>,
}

/// The sizes of a thin pool to create, in bytes, multiples of the extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PoolSizes {
    /// Data.
    pub data: u64,
    /// Metadata (lvm2 also keeps a spare of this size in the VG).
    pub metadata: u64,
}

/// A thin pool's use, in hundredths of a percent (lvm2 prints two decimals, so
/// these are exact). `None` while the pool is inactive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolUsage {
    /// `data_percent` × 100.
    pub data_centi: Option<u32>,
    /// `metadata_percent` × 100.
    pub metadata_centi: Option<u32>,
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
    /// A metadata generation that changes with every change of the back end
    /// (LVM's `vg_seqno`), when it has one; part of the fingerprint.
    pub generation: Option<u64>,
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
    Lvm {
        /// The volume group.
        volume_group: String,
        /// The thin pool, for thin back ends.
        thin_pool: Option<String>,
        /// `thinPoolSize`: create the pool with this many bytes when missing.
        thin_pool_size: Option<u64>,
        /// How thick LVs are wiped when deleted.
        volume_clear: VolumeClear,
    },
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
    /// Back ends of this host whose discovery crashed: left out, so the
    /// world is incomplete (no deletes) and nothing is placed anew.
    pub missing: Vec<Name>,
    /// This host's iSCSI exports (LIO).
    pub exports: Exports,
    /// This host's iSCSI discovery authentication (LIO), when the iSCSI
    /// fabric is loaded.
    pub discovery_auth: Option<crate::iscsi::configfs::DiscoveryAuth>,
    /// The CHAP secrets the manifests name (`chapSecretRef`,
    /// `mutualChapSecretRef`, discovery's), read and reduced to fingerprints
    /// (never the values), or why they cannot be read.
    pub secrets: BTreeMap<SecretRef, Result<CredentialPrint, String>>,
    /// The raw files named by this host's `Image` manifests (`source.path`).
    pub image_files: BTreeMap<std::path::PathBuf, Result<ImageFile, String>>,
    /// The catalogued backups (state directory), read only when a volume
    /// is declared with `source.backup`: what such a volume may be restored
    /// from.
    pub backups: Vec<BackupSource>,
    /// Each `BackupPolicy`'s repository directory, resolved.
    pub backup_repos: BTreeMap<Name, std::path::PathBuf>,
}

/// A raw image file an `Image` is made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageFile {
    /// Its length in bytes.
    pub size: u64,
}

/// Looks at the raw image file `path`: its size, and that it is a regular,
/// non-empty file that is not in a format other than raw (qcow2, VMDK, VHDX,
/// VDI are recognised by their magic and refused with the conversion to run).
pub fn inspect_image(path: &Path) -> Result<ImageFile, String> {
    use std::io::Read as _;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.len() == 0 {
        return Err(format!("{} is empty", path.display()));
    }
    let mut head = [0u8; 72];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let head = &head[..n];
    let format = if head.starts_with(b"QFI\xfb") {
        Some("qcow2")
    } else if head.starts_with(b"KDMV") {
        Some("vmdk")
    } else if head.starts_with(b"vhdxfile") {
        Some("vhdx")
    } else if head.get(64..68) == Some(&[0x7f, 0x10, 0xda, 0xbe]) {
        Some("vdi")
    } else {
        None
    };
    if let Some(f) = format {
        return Err(format!(
            "{} is a {f} image, not raw (diskFormat: raw): convert it first with `qemu-img convert -O raw {} IMAGE.raw`",
            path.display(),
            path.display()
        ));
    }
    Ok(ImageFile { size: meta.len() })
}

/// The image files of `host`'s `Image` manifests, inspected.
pub fn image_files(
    set: &ManifestSet,
    host: &str,
) -> BTreeMap<std::path::PathBuf, Result<ImageFile, String>> {
    set.images
        .values()
        .filter(|d| {
            set.backends
                .get(&d.spec.backend)
                .is_some_and(|b| is_local(&b.spec, host))
        })
        .filter_map(|d| d.spec.source.path.as_ref())
        .map(|p| (p.as_path().to_owned(), inspect_image(p.as_path())))
        .collect()
}

/// What LIO exports on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Exports {
    /// LIO is not loaded (no configfs tree): nothing can be exported.
    #[default]
    Absent,
    /// Our exports, by volume.
    Found(BTreeMap<Uuid, crate::iscsi::lio::ObservedExport>),
    /// Reading LIO failed; the message says why (no deletes in this run).
    Failed(String),
}

impl Exports {
    /// The export of volume `uuid`, when known.
    pub fn get(&self, uuid: Uuid) -> Option<&crate::iscsi::lio::ObservedExport> {
        match self {
            Exports::Found(m) => m.get(&uuid),
            Exports::Absent | Exports::Failed(_) => None,
        }
    }

    /// Reads LIO at `root`: our exports, and discovery authentication.
    pub fn observe(root: &Path) -> (Exports, Option<crate::iscsi::configfs::DiscoveryAuth>) {
        match crate::iscsi::lio::observe(root) {
            Ok(None) => (Exports::Absent, None),
            Ok(Some(o)) => (Exports::Found(o.exports), o.discovery_auth),
            Err(e) => (Exports::Failed(crate::error_chain(&e)), None),
        }
    }
}

/// The CHAP secrets `set` names for `host`: every export's (where a volume
/// lands is the planner's to say, and reading a secret is cheap) and the
/// discovery credentials of `host`'s back ends, as fingerprints.
pub fn secrets(
    set: &ManifestSet,
    host: &str,
) -> BTreeMap<SecretRef, Result<CredentialPrint, String>> {
    let exports = set
        .volumes
        .values()
        .filter_map(|v| v.spec.export.as_ref())
        .flat_map(|e| {
            [
                e.iscsi.chap_secret_ref.as_ref(),
                e.iscsi.mutual_chap_secret_ref.as_ref(),
            ]
        });
    let discovery = set
        .backends
        .values()
        .filter(|b| is_local(&b.spec, host))
        .filter_map(|b| b.spec.iscsi.as_ref()?.discovery_auth.as_ref())
        .flat_map(|d| [Some(&d.chap_secret_ref), d.mutual_chap_secret_ref.as_ref()]);
    exports
        .chain(discovery)
        .flatten()
        .map(|r| {
            let read = crate::iscsi::chap::read(
                r.file
                    .as_ref()
                    .map(crate::manifest::values::AbsPath::as_path),
                r.env.as_deref(),
            )
            .map(|c| c.print());
            (r.clone(), read)
        })
        .collect()
}

/// A backup a new volume can be restored from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupSource {
    /// The backup's id.
    pub id: Uuid,
    /// The volume that was backed up (manifest name).
    pub volume: String,
    /// Its repository directory.
    pub repository: std::path::PathBuf,
    /// Bytes of the volume at the time.
    pub size: u64,
    /// When it was taken.
    pub started_at: chrono::DateTime<chrono::Utc>,
}

/// The catalogue's good backups, when a volume of `set` declares
/// `source.backup` (an unreadable catalogue is logged and yields none: the
/// planner then says no backup matches).
fn backup_sources(set: &ManifestSet, state_dir: &Path) -> Vec<BackupSource> {
    use crate::backup::catalog::{Catalog, Status};
    let wanted = set
        .volumes
        .values()
        .any(|v| v.spec.source.as_ref().is_some_and(|s| s.backup.is_some()));
    if !wanted {
        return Vec::new();
    }
    match Catalog::load(state_dir) {
        Ok(cat) => cat
            .backups
            .values()
            .filter(|e| e.status == Status::Ok && e.kind.is_some())
            .map(|e| BackupSource {
                id: e.id,
                volume: e.volume.name.clone(),
                repository: e.repository.clone(),
                size: e.volume.size,
                started_at: e.started_at,
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "cannot read the backup catalogue");
            Vec::new()
        }
    }
}

impl World {
    /// Whether every back end was discovered completely: only then may a
    /// plan delete anything.
    pub fn complete(&self) -> bool {
        self.missing.is_empty()
            && !matches!(self.exports, Exports::Failed(_))
            && self
                .backends
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
                    if let Some(g) = inv.generation {
                        h.update(format!("generation|{g}\n").as_bytes());
                    }
                }
            }
        }
        for (p, f) in &self.image_files {
            h.update(format!("image-file|{}|{f:?}\n", p.display()).as_bytes());
        }
        match &self.exports {
            Exports::Absent => {}
            Exports::Failed(e) => {
                h.update(b"lio-failed|");
                h.update(e.as_bytes());
            }
            Exports::Found(m) => {
                // Credentials show as `<fingerprint>`: their values are
                // compared by the planner, not pinned here (the key is the
                // process's own).
                for e in m.values() {
                    h.update(format!("{e:?}\n").as_bytes());
                }
            }
        }
        if let Some(d) = &self.discovery_auth {
            h.update(format!("discovery-auth|{}\n", d.enforced).as_bytes());
        }
        h.finalize().to_hex()[..32].to_owned()
    }
}

/// Whether a back end belongs to `host`: unnamed hosts belong to whoever runs.
pub fn is_local(spec: &BackendSpec, host: &str) -> bool {
    spec.host.as_deref().is_none_or(|h| h == host)
}

/// Discovers every back end of `host` declared in `set`: LVM through one `lvm
/// fullreport` of their VGs, files through the filesystem.
pub fn discover(set: &ManifestSet, host: &str, state_dir: &Path) -> World {
    let vgs = lvm_volume_groups(set, host);
    let refs: Vec<&str> = vgs.iter().map(String::as_str).collect();
    let reports = lvm::cmd::fullreport(crate::exec::Exec::host(), &refs);
    let mut world = discover_with(set, host, state_dir, &reports);
    (world.exports, world.discovery_auth) = Exports::observe(&crate::iscsi::lio::root());
    world.secrets = secrets(set, host);
    world.image_files = image_files(set, host);
    world
}

/// The VGs of `host`'s LVM back ends, sorted, each once.
pub fn lvm_volume_groups(set: &ManifestSet, host: &str) -> Vec<String> {
    let mut vgs: Vec<String> = set
        .backends
        .values()
        .filter(|d| is_local(&d.spec, host))
        .filter_map(|d| d.spec.lvm.as_ref())
        .map(|l| l.volume_group.as_str().to_owned())
        .collect();
    vgs.sort();
    vgs.dedup();
    vgs
}

/// [`discover`] with the LVM report already read (benchmarks, tests).
pub fn discover_with(
    set: &ManifestSet,
    host: &str,
    state_dir: &Path,
    lvm_reports: &lvm::cmd::Reports,
) -> World {
    // Back ends are discovered in parallel (at most DISCOVERY_THREADS at a
    // time): each file back end is a directory walk, independent of the
    // others, and a slow NFS share must not delay the rest.
    let local: Vec<(&Name, &Doc<BackendSpec>)> = set
        .backends
        .iter()
        .filter(|(_, doc)| is_local(&doc.spec, host))
        .collect();
    let mut world = World::default();
    for chunk in local.chunks(DISCOVERY_THREADS) {
        std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|(_, doc)| scope.spawn(move || view_of(doc, state_dir, lvm_reports)))
                .collect();
            for (h, (name, _)) in handles.into_iter().zip(chunk) {
                if let Ok(view) = h.join() {
                    world.backends.insert((*name).clone(), view);
                } else {
                    tracing::error!(backend = %name, "discovery panicked; the back end is left out of this run");
                    world.missing.push((*name).clone());
                }
            }
        });
    }
    world.backups = backup_sources(set, state_dir);
    world.backup_repos = set
        .backup_policies
        .iter()
        .map(|(n, d)| (n.clone(), d.spec.target.path.resolve(state_dir)))
        .collect();
    world
}

/// Back ends discovered at once.
pub const DISCOVERY_THREADS: usize = 8;

fn view_of(
    doc: &Doc<BackendSpec>,
    state_dir: &Path,
    lvm_reports: &lvm::cmd::Reports,
) -> BackendView {
    let spec = &doc.spec;
    let capabilities = spec
        .capabilities
        .iter()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    let common = |driver, thin, extent, discovery| BackendView {
        name: doc.name().clone(),
        backend_name: backend_name(doc),
        zone: backend_az(spec).to_owned(),
        driver,
        thin,
        extent,
        ratio: spec.max_over_subscription_ratio.unwrap_or_default(),
        reserved_percentage: spec
            .reserved_percentage
            .map_or(0, super::manifest::values::Percent::get),
        capabilities,
        discovery,
    };
    if let Some(f) = &spec.file {
        let root = f.path.resolve(state_dir);
        let discovery = discover_file(doc, &root, f.path.is_in_state());
        let thin = f.allocation == Allocation::Sparse;
        return common(
            Driver::File {
                root,
                allocation: f.allocation,
            },
            thin,
            1,
            discovery,
        );
    }
    let Some(l) = &spec.lvm else {
        // Validation refuses such a back end; never guess a place to write.
        return common(
            Driver::Lvm {
                volume_group: String::new(),
                thin_pool: None,
                thin_pool_size: None,
                volume_clear: VolumeClear::Zero,
            },
            false,
            1,
            Discovery::Failed("the back end declares neither lvm nor file".into()),
        );
    };
    let driver = Driver::Lvm {
        volume_group: l.volume_group.as_str().to_owned(),
        thin_pool: l.thin_pool.as_ref().map(|p| p.as_str().to_owned()),
        thin_pool_size: l
            .thin_pool_size
            .map(crate::manifest::values::Quantity::bytes),
        volume_clear: spec.volume_clear.unwrap_or_default(),
    };
    let (extent, discovery) = discover_lvm(doc, &driver, lvm_reports);
    common(driver, l.thin_pool.is_some(), extent, discovery)
}

/// One LVM back end out of the discovery's report: (extent size, discovery).
fn discover_lvm(
    doc: &Doc<BackendSpec>,
    driver: &Driver,
    reports: &lvm::cmd::Reports,
) -> (u64, Discovery) {
    let Driver::Lvm {
        volume_group: vg,
        thin_pool,
        thin_pool_size,
        ..
    } = driver
    else {
        return (1, Discovery::Failed("not an LVM back end".into()));
    };
    if let Some(e) = reports.failed.get(vg) {
        return (
            1,
            Discovery::Failed(format!("cannot read volume group {vg}: {e}")),
        );
    }
    let cfg = lvm::inventory::Config {
        backend: doc.name().as_str(),
        vg,
        thin_pool: thin_pool.as_deref(),
    };
    let inv = match lvm::inventory::inventory(&reports.report, &cfg) {
        Ok(inv) => inv,
        Err(e) => return (1, Discovery::Failed(crate::error_chain(&e))),
    };
    let extent = inv.vg.extent.max(1);
    if inv.pool_missing && thin_pool_size.is_none() {
        return (
            extent,
            Discovery::Failed(format!(
                "thin pool {vg}/{} does not exist; create it, or declare spec.lvm.thinPoolSize to have cinderblock create it",
                thin_pool.as_deref().unwrap_or_default()
            )),
        );
    }
    let create_pool = thin_pool_size.filter(|_| inv.pool_missing).map(|s| {
        let data = crate::plan::round_up(s, extent);
        PoolSizes {
            data,
            metadata: lvm::inventory::pool_metadata_size(data, extent),
        }
    });
    (extent, Discovery::Ok(from_lvm_inventory(&inv, create_pool)))
}

/// Hundredths of a percent from lvm2's two-decimal percentage.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // 0..=100 × 100, rounded
fn centi(p: Option<f64>) -> Option<u32> {
    p.map(|p| (p * 100.0).round().clamp(0.0, 10_000.0) as u32)
}

fn from_lvm_inventory(
    inv: &lvm::inventory::Inventory,
    create_pool: Option<PoolSizes>,
) -> Inventory {
    let objects = inv
        .objects
        .iter()
        .map(|o| Observed {
            uuid: o.owned.uuid,
            name: o.owned.name.clone(),
            kind: match o.owned.kind {
                lvm::tags::LvObjKind::Volume => ObjKind::Volume,
                lvm::tags::LvObjKind::Snapshot => ObjKind::Snapshot,
                lvm::tags::LvObjKind::Image => ObjKind::Image,
            },
            size: o.size,
            allocated: o.allocated,
            parent: o.owned.parent,
            clone_of: o
                .origin
                .filter(|_| o.owned.kind != lvm::tags::LvObjKind::Snapshot),
            in_use: o.open,
            health: match o.owned.state {
                Some(lvm::tags::InFlight::Creating) => ObjHealth::Creating,
                Some(lvm::tags::InFlight::Deleting) => ObjHealth::Deleting,
                Some(lvm::tags::InFlight::Migrating) => ObjHealth::Migrating,
                None if o.invalid => ObjHealth::DataMissing,
                None => ObjHealth::Ready,
            },
        })
        .collect();
    let (total, free, provisioned) = match create_pool {
        Some(p) => (p.data, p.data, 0),
        None => inv.capacity(),
    };
    Inventory {
        capacity: Capacity {
            total,
            free,
            provisioned,
            lvm: Some(LvmCapacity {
                vg_size: inv.vg.size,
                vg_free: inv.vg.free,
                pool: inv.pool.map(|p| PoolUsage {
                    data_centi: centi(p.data_percent),
                    metadata_centi: centi(p.metadata_percent),
                }),
                create_pool,
            }),
        },
        objects,
        foreign: inv.foreign.clone(),
        problems: inv.problems.clone(),
        generation: Some(inv.vg.seqno),
    }
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
            clone_of: o
                .meta
                .source
                .filter(|_| o.meta.kind != file::ObjectKind::Snapshot)
                .map(|s| s.uuid),
            in_use: false,
            health: match o.health {
                Health::Ready => ObjHealth::Ready,
                Health::Incomplete(file::Phase::Deleting) => ObjHealth::Deleting,
                Health::Incomplete(file::Phase::Migrating) => ObjHealth::Migrating,
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
            lvm: None,
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
        generation: None,
    }
}
