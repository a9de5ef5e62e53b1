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
//! The back ends' own discovery is the registry's ([`Registry::discover`]:
//! batched where one tool call reads many back ends); this module adds the
//! manifests' configuration, the drivers' capabilities, this host's iSCSI
//! exports, image files and catalogued backups.
//!
//! Must not: decide anything. It reports; the planner judges.

use std::collections::BTreeMap;
use std::path::Path;

use uuid::Uuid;

use crate::iscsi::chap::CredentialPrint;
use crate::manifest::kinds::{BackendSpec, SecretRef};
use crate::manifest::validate::{backend_az, backend_name};
use crate::manifest::values::OverSubscription;
use crate::manifest::{Doc, ManifestSet, Name};
pub use crate::model::{
    Capabilities, Capacity, Discovery, Health, InUse, Inventory, ObjKind, Observed, PoolFill,
    PoolSizes, SharedSpace,
};
use crate::registry::Registry;
pub use crate::registry::is_local;

/// One back end as the planner sees it: configuration plus discovery.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendView {
    /// Manifest name.
    pub name: Name,
    /// Cinder's `volume_backend_name`.
    pub backend_name: String,
    /// Availability zone.
    pub zone: String,
    /// What its driver can do.
    pub caps: Capabilities,
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
    /// What other hosts hold and the cross-host migrations in flight, as
    /// read from etcd before planning (empty without `--etcd`).
    pub remote: Remote,
}

/// Other hosts' volumes and the cross-host migration jobs: what a host's
/// plan needs to move a volume to or from another host. Read from the
/// fleet's published views and jobs; the planner never asks etcd itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Remote {
    /// Volumes on back ends of other hosts, by manifest name, as their
    /// hosts last published them.
    pub volumes: BTreeMap<String, Vec<RemoteVolume>>,
    /// Cross-host migration jobs by volume name (no target, no secret).
    pub jobs: BTreeMap<String, crate::model::JobView>,
}

/// A volume of another host.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteVolume {
    /// Its host.
    pub host: String,
    /// Its back end.
    pub backend: String,
    /// Identity.
    pub uuid: uuid::Uuid,
    /// Size.
    pub size: u64,
    /// Bytes allocated, where its back end can tell.
    pub allocated: Option<u64>,
    /// Its state there.
    pub health: Health,
    /// Its snapshots there, by name.
    pub snapshots: Vec<RemoteSnapshot>,
}

/// A snapshot of a volume of another host (what moves with it when it
/// moves here with `migrateSnapshots: true`).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteSnapshot {
    /// Its manifest name.
    pub name: String,
    /// Identity.
    pub uuid: uuid::Uuid,
    /// Size.
    pub size: u64,
    /// Bytes allocated, where its back end can tell.
    pub allocated: Option<u64>,
    /// Its state there.
    pub health: Health,
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
    registry: &Registry<'_>,
) -> BTreeMap<std::path::PathBuf, Result<ImageFile, String>> {
    set.images
        .values()
        .filter(|d| registry.get(d.spec.backend.as_str()).is_some())
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

/// The CHAP secrets `set` names for this host: every export's (where a
/// volume lands is the planner's to say, and reading a secret is cheap) and
/// the discovery credentials of `registry`'s back ends, as fingerprints.
pub fn secrets(
    set: &ManifestSet,
    registry: &Registry<'_>,
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
        .filter(|b| registry.get(b.name().as_str()).is_some())
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
                        h.update(f.name.as_bytes());
                        h.update(
                            format!("|{:?}|{:?}\n", f.size, f.released.as_ref().map(|r| r.uuid))
                                .as_bytes(),
                        );
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

/// Discovers every back end of `registry` (see [`Registry::discover`]),
/// this host's exports and discovery authentication, the CHAP secrets the
/// manifests name, and what `set`'s images and backups need.
pub fn discover(set: &ManifestSet, registry: &Registry<'_>, state_dir: &Path) -> World {
    let mut world = world_of(set, registry, state_dir, registry.discover());
    (world.exports, world.discovery_auth) = Exports::observe(&crate::iscsi::lio::root());
    world.secrets = secrets(set, registry);
    world.image_files = image_files(set, registry);
    world
}

/// The world of the back ends `found` (a discovery the caller ran:
/// [`Registry::discover_with`] over a captured report, in benchmarks and
/// tests), without exports or image files.
pub fn world_of(
    set: &ManifestSet,
    registry: &Registry<'_>,
    state_dir: &Path,
    found: crate::registry::Discovered,
) -> World {
    let mut world = World::default();
    for (name, (extent, discovery)) in found.backends {
        let (Some(doc), Some(driver)) = (set.backends.get(&name), registry.get(name.as_str()))
        else {
            continue;
        };
        let mut view = configured_view(doc, driver.capabilities(), discovery);
        view.extent = extent;
        world.backends.insert(name, view);
    }
    world.missing = found.missing;
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

/// Discovers again the back ends in `names` after an apply changed them, so
/// what is published (status, gauges) is what the apply left, not what was
/// there before it ([`Registry::discover_only`]: one `lvm fullreport` over
/// their volume groups, one scan of the holders); the other back ends,
/// exports and the rest of `world` are kept.
pub fn rediscover(
    set: &ManifestSet,
    registry: &Registry<'_>,
    names: &std::collections::BTreeSet<Name>,
    world: &mut World,
) {
    if names.is_empty() {
        return;
    }
    let found = registry.discover_only(names);
    world.missing.retain(|n| !names.contains(n));
    for (name, (extent, discovery)) in found.backends {
        let (Some(doc), Some(driver)) = (set.backends.get(&name), registry.get(name.as_str()))
        else {
            continue;
        };
        let mut view = configured_view(doc, driver.capabilities(), discovery);
        view.extent = extent;
        world.backends.insert(name, view);
    }
    for name in found.missing {
        world.backends.remove(&name);
        world.missing.push(name);
    }
}

/// A back end as its manifest configures it, with its driver's
/// capabilities, before (or without) discovery: `discovery` says why there
/// is none. The extent is 1 until discovery says otherwise. Pure.
pub fn configured_view(
    doc: &Doc<BackendSpec>,
    caps: Capabilities,
    mut discovery: Discovery,
) -> BackendView {
    let spec = &doc.spec;
    // A group backup's member snapshots are the backup's, not the
    // manifests' (their space stays counted in the capacity).
    if let Discovery::Ok(inv) = &mut discovery {
        inv.objects
            .retain(|o| !crate::model::is_group_backup_cut(&o.name));
    }
    BackendView {
        name: doc.name().clone(),
        backend_name: backend_name(doc),
        zone: backend_az(spec).to_owned(),
        thin: caps.thin,
        caps,
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

/// Another host's back end, as its manifest alone says (never discovered
/// here; the capabilities are those its driver would have). Pure.
pub fn declared_view(doc: &Doc<BackendSpec>, discovery: Discovery) -> BackendView {
    configured_view(doc, crate::registry::capabilities(doc), discovery)
}
