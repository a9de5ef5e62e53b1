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

use crate::file::{self, FileBackend};
use crate::iscsi::chap::CredentialPrint;
use crate::lvm;
use crate::manifest::kinds::{Allocation, BackendSpec, SecretRef, VolumeClear};
use crate::manifest::validate::{backend_az, backend_name};
use crate::manifest::values::OverSubscription;
use crate::manifest::{Doc, ManifestSet, Name};
pub use crate::model::{
    Capacity, Discovery, Health, InUse, Inventory, ObjKind, Observed, PoolFill, PoolSizes,
    SharedSpace,
};

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
    /// Each `BackupPolicy`'s repository location
    /// ([`crate::backup::target::RepoSpec::location`]).
    pub backup_repos: BTreeMap<Name, String>,
    /// What the fleet says about placements (`Off` without `--etcd`).
    pub fleet: Fleet,
}

/// The fleet's part of the world: where unpinned volumes are placed, as
/// read from etcd before planning. The planner reads it like the rest of
/// the world and never asks etcd itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Fleet {
    /// No `--etcd`: this host plans alone, and never creates an unpinned
    /// volume that a back end of another host could also take (both hosts
    /// would create it).
    #[default]
    Off,
    /// etcd answered: every placement, by volume name.
    On(BTreeMap<String, Placement>),
    /// `--etcd` was given but the fleet's state could not be read (the
    /// reason): volumes that need a placement wait; the rest goes on.
    Unavailable(String),
}

/// Where the fleet placed a volume.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// The back end.
    pub backend: String,
    /// Its host.
    pub host: String,
    /// The placement record's etcd `mod_revision`, the fencing token an
    /// executor checks right before it creates the volume; `None` for a
    /// placement a fleet plan only proposes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
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
    /// Its repository's location.
    pub repository: String,
    /// How to open that repository (boxed: plan actions carry it).
    pub target: Box<crate::backup::target::RepoSpec>,
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
                target: Box::new(e.repo_spec()),
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
                        // Whether it is in use, not by whom: a restarted
                        // process does not make a saved plan stale.
                        let line = format!(
                            "{}|{}|{}|{}|{:?}|{:?}|{}\n",
                            o.uuid,
                            o.name,
                            o.kind.as_str(),
                            o.size,
                            o.parent,
                            o.health,
                            if o.in_use.is_some() { "in-use" } else { "idle" }
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
    let mut world = World::default();
    discover_backends(set, host, state_dir, lvm_reports, None, &mut world);
    world.backups = backup_sources(set, state_dir);
    world.backup_repos = set
        .backup_policies
        .iter()
        .filter_map(|(n, d)| {
            crate::backup::target::RepoSpec::from_policy(&d.spec, state_dir)
                .map(|r| (n.clone(), r.location()))
        })
        .collect();
    world
}

/// Discovers `host`'s back ends (only those in `only` when given) into
/// `world`, replacing their views.
fn discover_backends(
    set: &ManifestSet,
    host: &str,
    state_dir: &Path,
    lvm_reports: &lvm::cmd::Reports,
    only: Option<&std::collections::BTreeSet<Name>>,
    world: &mut World,
) {
    // Back ends are discovered in parallel (at most DISCOVERY_THREADS at a
    // time): each file back end is a directory walk, independent of the
    // others, and a slow NFS share must not delay the rest.
    let local: Vec<(&Name, &Doc<BackendSpec>)> = set
        .backends
        .iter()
        .filter(|(_, doc)| is_local(&doc.spec, host))
        .filter(|(name, _)| only.is_none_or(|o| o.contains(*name)))
        .collect();
    // Who holds what open: one pass over /proc and the loop devices for the
    // whole discovery, whatever the number of back ends and volumes.
    let holders = if local.is_empty() {
        Ok(crate::inuse::Holders::default())
    } else {
        crate::inuse::Holders::scan().map_err(|e| format!("cannot read /proc: {e}"))
    };
    let holders = &holders;
    for chunk in local.chunks(DISCOVERY_THREADS) {
        std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|(_, doc)| scope.spawn(move || view_of(doc, state_dir, lvm_reports, holders)))
                .collect();
            for (h, (name, _)) in handles.into_iter().zip(chunk) {
                if let Ok(view) = h.join() {
                    world.backends.insert((*name).clone(), view);
                } else {
                    tracing::error!(backend = %name, "discovery panicked; the back end is left out of this run");
                    world.backends.remove(*name);
                    world.missing.push((*name).clone());
                }
            }
        });
    }
}

/// Discovers again the back ends in `names` after an apply changed them, so
/// what is published (status, gauges) is what the apply left, not what was
/// there before it. One `lvm fullreport` over their VGs and one scan of the
/// holders; the other back ends, exports and the rest of `world` are kept.
pub fn rediscover(
    set: &ManifestSet,
    host: &str,
    state_dir: &Path,
    names: &std::collections::BTreeSet<Name>,
    world: &mut World,
) {
    if names.is_empty() {
        return;
    }
    let mut vgs: Vec<&str> = set
        .backends
        .iter()
        .filter(|(n, d)| names.contains(*n) && is_local(&d.spec, host))
        .filter_map(|(_, d)| d.spec.lvm.as_ref())
        .map(|l| l.volume_group.as_str())
        .collect();
    vgs.sort_unstable();
    vgs.dedup();
    let reports = lvm::cmd::fullreport(crate::exec::Exec::host(), &vgs);
    world.missing.retain(|n| !names.contains(n));
    discover_backends(set, host, state_dir, &reports, Some(names), world);
}

/// Back ends discovered at once.
pub const DISCOVERY_THREADS: usize = 8;

/// A back end as its manifest configures it, before (or without) discovery:
/// `discovery` says why there is none. The extent is 1 until an LVM report
/// says otherwise. Pure: used for other hosts' back ends, which this host
/// never discovers.
pub fn configured_view(
    doc: &Doc<BackendSpec>,
    state_dir: &Path,
    discovery: Discovery,
) -> BackendView {
    let spec = &doc.spec;
    let (driver, thin) = if let Some(f) = &spec.file {
        (
            Driver::File {
                root: f.path.resolve(state_dir),
                allocation: f.allocation,
            },
            f.allocation == Allocation::Sparse,
        )
    } else if let Some(l) = &spec.lvm {
        (
            Driver::Lvm {
                volume_group: l.volume_group.as_str().to_owned(),
                thin_pool: l.thin_pool.as_ref().map(|p| p.as_str().to_owned()),
                thin_pool_size: l
                    .thin_pool_size
                    .map(crate::manifest::values::Quantity::bytes),
                volume_clear: spec.volume_clear.unwrap_or_default(),
            },
            l.thin_pool.is_some(),
        )
    } else {
        // Validation refuses such a back end; never guess a place to write.
        (
            Driver::Lvm {
                volume_group: String::new(),
                thin_pool: None,
                thin_pool_size: None,
                volume_clear: VolumeClear::Zero,
            },
            false,
        )
    };
    BackendView {
        name: doc.name().clone(),
        backend_name: backend_name(doc),
        zone: backend_az(spec).to_owned(),
        driver,
        thin,
        extent: 1,
        ratio: spec.max_over_subscription_ratio.unwrap_or_default(),
        reserved_percentage: spec
            .reserved_percentage
            .map_or(0, super::manifest::values::Percent::get),
        capabilities: spec
            .capabilities
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect(),
        discovery,
    }
}

/// What one scan found holding files and devices open, or why it failed.
type Scan = Result<crate::inuse::Holders, String>;

fn view_of(
    doc: &Doc<BackendSpec>,
    state_dir: &Path,
    lvm_reports: &lvm::cmd::Reports,
    holders: &Scan,
) -> BackendView {
    let mut view = configured_view(doc, state_dir, Discovery::Failed(String::new()));
    match (&doc.spec.file, &view.driver) {
        (Some(f), Driver::File { root, .. }) => {
            view.discovery = discover_file(doc, root, f.path.is_in_state(), holders);
        }
        (None, Driver::Lvm { .. }) if doc.spec.lvm.is_some() => {
            let (extent, mut discovery) = discover_lvm(doc, &view.driver, lvm_reports);
            if let (Discovery::Ok(inv), Ok(h)) = (&mut discovery, holders) {
                name_lv_holders(inv, h);
            }
            view.extent = extent;
            view.discovery = discovery;
        }
        _ => {
            view.discovery = Discovery::Failed("the back end declares neither lvm nor file".into());
        }
    }
    view
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
    let cfg = lvm::inventory::Config {
        backend: doc.name().as_str(),
        vg,
        thin_pool: thin_pool.as_deref(),
    };
    lvm::inventory::discovery(reports, &cfg, *thin_pool_size)
}

/// Names the holder of each LV lvm2 reports open, where this host can see
/// one (a process, a loop device, a mount, a stacked device).
fn name_lv_holders(inv: &mut Inventory, holders: &crate::inuse::Holders) {
    for o in &mut inv.objects {
        if let Some(InUse::Unnamed { device }) = &o.in_use
            && let Some(h) = holders.block_device(Path::new(device))
        {
            o.in_use = Some(InUse::Named {
                holder: h.to_string(),
            });
        }
    }
}

/// The `file` back end in the model, each object in use when the scan saw
/// its data file (by device and inode) held open; without the scan the view
/// is partial (a problem: no deletes).
fn file_model(inv: &file::discover::Inventory, holders: &Scan) -> Inventory {
    let mut model = inv.to_model();
    match holders {
        Ok(h) => {
            for o in &mut model.objects {
                let data = inv.object(o.uuid).and_then(|f| f.data);
                o.in_use = data
                    .and_then(|d| h.file(d.id.0, d.id.1))
                    .map(|h| InUse::Named {
                        holder: h.to_string(),
                    });
            }
        }
        Err(e) => model
            .problems
            .push(format!("cannot tell which volume files are open ({e})")),
    }
    model
}

fn discover_file(doc: &Doc<BackendSpec>, root: &Path, in_state: bool, holders: &Scan) -> Discovery {
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
        Ok(inv) => Discovery::Ok(file_model(&inv, holders)),
        Err(e) => Discovery::Failed(crate::error_chain(&e)),
    }
}
