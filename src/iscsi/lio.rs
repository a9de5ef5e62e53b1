//! LIO on a live host: walking configfs into [`Entry`]s, reading our exports out of
//! the model, and writing exports into configfs.
//!
//! An export of volume `U` is, in LIO's terms:
//!
//! ```text
//! core/iblock_N/cinderblock-U            the backstore (fileio_N for file volumes), alone
//!                                        in its HBA folder; udev_path = the LV or file,
//!                                        serial = U
//! iscsi/IQN/tpgt_1/lun/lun_0/cinderblock-U -> core/iblock_N/cinderblock-U
//! iscsi/IQN/tpgt_1/np/ADDR:PORT          one per portal
//! iscsi/IQN/tpgt_1/acls/INITIATOR/lun_0/lun_0 -> tpgt_1/lun/lun_0
//! iscsi/IQN/tpgt_1/acls/INITIATOR/auth/{userid,password}                with CHAP
//! iscsi/IQN/tpgt_1/acls/INITIATOR/auth/{userid_mutual,password_mutual}  with mutual CHAP
//! iscsi/IQN/tpgt_1/attrib/authentication = 1 with CHAP, generate_node_acls = 0
//! iscsi/IQN/tpgt_1/enable = 1
//! ```
//!
//! One backstore per HBA folder, as rtslib-fb (targetcli) lays them out: it
//! deletes a storage object together with its folder, so a folder holding two
//! makes `targetcli clearconfig` and `/backstores/... delete` fail. A new
//! backstore takes the lowest folder number no HBA folder of any type uses
//! (rtslib's numbering). Earlier versions put every backstore into
//! `core/iblock_0` or `core/fileio_0`; such exports keep working where they are
//! (discovery finds ours by name in any folder), the planner moves one to a
//! folder of its own ([`ExportSpec::rehome`]: unexport, then export again) only
//! while no initiator is logged in to it, and an unexport removes the folder
//! once it holds nothing.
//!
//! Ownership is the backstore's name: `cinderblock-<uuid>`; anything else in configfs
//! is foreign and never touched. The IQN defaults to [`super::names::default_iqn`]. The
//! serial number is the volume's uuid, so multipath and udev see a stable
//! identity across re-exports.
//!
//! Credentials are compared with what configfs holds and written only when
//! they differ; writing them never touches a session (LIO checks CHAP at login
//! only: a logged-in initiator keeps its session and needs the new secret at
//! its next login). A `fileio` backstore's size is LIO's, set when it was made;
//! it is raised to the file's size when the volume grew (LIO takes a new
//! `fd_dev_size` on a live backstore; initiators see it after a rescan).
//!
//! Crash safety: every step is idempotent and checked against what exists, so an
//! export interrupted at any point is completed by the next run, and an unexport
//! interrupted at any point is finished by the next run (the planner sees the
//! leftover backstore). Tear-down order is the reverse of set-up, as configfs
//! demands (links before the directories they point into).
//!
//! Must not: log or return CHAP secrets (they are read back only to compare,
//! inside one call), touch configfs entries that are not ours (discovery
//! authentication is host-wide and set only when a manifest declares it), or
//! remove the ACL of an initiator that is logged in (the planner refuses that;
//! [`LioDriver::export`] checks again).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::chap::{Chap, NULL};
use super::configfs::{BackstoreKind, ChapPresence, DiscoveryAuth, Entry, Lio};

/// Where the kernel's LIO configfs tree lives.
pub const CONFIGFS_TARGET: &str = "/sys/kernel/config/target";
/// The portal used when an export names none.
pub const DEFAULT_PORTAL: &str = "0.0.0.0:3260";
/// The name prefix that marks a backstore as ours.
pub const BACKSTORE_PREFIX: &str = "cinderblock-";
/// The one portal group of our targets.
const TPG: &str = "tpgt_1";
/// Deepest directory level walked (configfs' own tree is about 8 deep).
const MAX_DEPTH: usize = 16;

/// The configfs root this process uses: `CINDERBLOCK_LIO_ROOT` when set (tests, and
/// hosts that mount configfs elsewhere), else [`CONFIGFS_TARGET`].
pub fn root() -> PathBuf {
    std::env::var_os("CINDERBLOCK_LIO_ROOT")
        .map_or_else(|| PathBuf::from(CONFIGFS_TARGET), PathBuf::from)
}

/// The backstore name of volume `uuid`.
pub fn backstore_name(uuid: Uuid) -> String {
    format!("{BACKSTORE_PREFIX}{uuid}")
}

/// What went wrong with LIO.
#[derive(Debug, thiserror::Error)]
pub enum LioError {
    /// LIO is not there.
    #[error(
        "LIO is not available: {} does not exist (load it with `modprobe target_core_mod iscsi_target_mod` and mount configfs with `mount -t configfs none /sys/kernel/config`)",
        root.display()
    )]
    Unavailable {
        /// The configfs root looked at.
        root: PathBuf,
    },
    /// A configfs operation failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// LIO could not listen on a portal (configfs answers `EINVAL` for a
    /// failed bind, whatever the cause).
    #[error(
        "LIO cannot listen on portal {portal} ({}): the address is not one of this host's, or another portal holds port {port} (a wildcard portal such as the default 0.0.0.0:3260 and a specific address cannot share a port; give every export on this host the same portals); the kernel log says why (`kernel_bind() failed`)",
        path.display()
    )]
    Portal {
        /// `ADDRESS:PORT`.
        portal: String,
        /// Its port.
        port: String,
        /// The configfs directory that could not be made.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The tree did not make sense.
    #[error("cannot understand the LIO configuration")]
    Model(#[from] super::configfs::ConfigfsError),
    /// The backstore cannot become what the export needs without cutting
    /// it off.
    #[error("{0}")]
    Refused(String),
    /// An export change that would cut off a logged-in initiator.
    #[error(
        "initiator {initiator} is logged in to {iqn}; log it out first (iscsiadm -m node -T {iqn} --logout on that host)"
    )]
    LoggedIn {
        /// The initiator.
        initiator: String,
        /// The target.
        iqn: String,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LioError {
    let path = path.to_owned();
    move |source| LioError::Io { op, path, source }
}

/// Walks the configfs tree at `root` into entries with paths relative to it,
/// leaving out the `statistics` and `fabric_statistics` counters. Attributes that cannot be read (write-only ones such as `control`) become
/// [`Entry::Unreadable`]; links into the tree are given as absolute configfs paths,
/// whatever `root` is, so the model resolves them the same way.
pub fn walk(root: &Path) -> Result<Vec<Entry>, LioError> {
    if !root.is_dir() {
        return Err(LioError::Unavailable {
            root: root.to_owned(),
        });
    }
    let mut out = Vec::new();
    walk_dir(root, root, "", 0, &mut out)?;
    Ok(out)
}

fn walk_dir(
    root: &Path,
    dir: &Path,
    rel: &str,
    depth: usize,
    out: &mut Vec<Entry>,
) -> Result<(), LioError> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let mut names: Vec<(String, PathBuf)> = fs::read_dir(dir)
        .map_err(io_err("read directory", dir))?
        .filter_map(Result::ok)
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    names.sort();
    for (name, path) in names {
        // Counters, not configuration (and thousands of entries).
        if name == "statistics" || name == "fabric_statistics" {
            continue;
        }
        let rel_path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        // An entry can vanish between listing and reading (another tool at
        // work): skip it rather than fail the whole walk.
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            let Ok(target) = fs::read_link(&path) else {
                continue;
            };
            let target = match target.strip_prefix(root) {
                Ok(inside) => format!("{CONFIGFS_TARGET}/{}", inside.display()),
                Err(_) => target.display().to_string(),
            };
            out.push(Entry::Link {
                path: rel_path,
                target,
            });
        } else if meta.is_dir() {
            out.push(Entry::Dir(rel_path.clone()));
            walk_dir(root, &path, &rel_path, depth + 1, out)?;
        } else {
            match fs::read(&path) {
                Ok(bytes) => {
                    let mut value = String::from_utf8_lossy(&bytes).into_owned();
                    if value.ends_with('\n') {
                        value.pop();
                    }
                    out.push(Entry::Attr {
                        path: rel_path,
                        value,
                    });
                }
                Err(_) => out.push(Entry::Unreadable(rel_path)),
            }
        }
    }
    Ok(())
}

/// One of our exports as LIO has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedExport {
    /// The volume.
    pub uuid: Uuid,
    /// The target exporting it (`None`: only the backstore exists, from an
    /// interrupted export or unexport).
    pub iqn: Option<String>,
    /// The device or file behind the backstore.
    pub device: Option<String>,
    /// Where the backstore lives.
    pub backstore: Placement,
    /// The LUN's size as LIO has it, for a `fileio` backstore (LIO does not
    /// follow the file); `None` for block devices, which LIO follows.
    pub size: Option<u64>,
    /// Initiators with an ACL, sorted.
    pub initiators: Vec<String>,
    /// Those logged in now, sorted.
    pub logged_in: Vec<String>,
    /// Portals, sorted.
    pub portals: Vec<String>,
    /// Whether CHAP is required (and set on every ACL).
    pub chap: bool,
    /// Each ACL's credentials, by initiator (fingerprints only).
    pub credentials: BTreeMap<String, ChapPresence>,
    /// Whether the portal group is enabled.
    pub enabled: bool,
}

/// Where a backstore lives: its HBA folder and what else is in there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The HBA folder under `core/`, e.g. `iblock_3`.
    pub hba: String,
    /// Block device or file.
    pub kind: BackstoreKind,
    /// The other storage objects in the same folder, sorted (empty in the
    /// layout targetcli can manage; ours and foreign ones in the shared
    /// folder of earlier versions).
    pub neighbours: Vec<String>,
}

/// What LIO holds that the planner compares with the manifests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// Our exports, by volume.
    pub exports: BTreeMap<Uuid, ObservedExport>,
    /// Discovery authentication (host-wide); `None` when the iSCSI fabric
    /// is not loaded.
    pub discovery_auth: Option<DiscoveryAuth>,
}

/// The uuid of the volume whose backstore is named `name`, if it is ours.
pub fn owner(name: &str) -> Option<Uuid> {
    name.strip_prefix(BACKSTORE_PREFIX)
        .and_then(|u| Uuid::parse_str(u).ok())
}

/// Our exports in `lio`, by volume.
pub fn exports(lio: &Lio) -> BTreeMap<Uuid, ObservedExport> {
    let mut out = BTreeMap::new();
    for b in &lio.backstores {
        let Some(uuid) = owner(&b.name) else {
            continue;
        };
        let reference = b.reference();
        let mut neighbours: Vec<String> = lio
            .backstores
            .iter()
            .filter(|o| o.reference().hba == reference.hba && o.name != b.name)
            .map(|o| o.name.clone())
            .collect();
        neighbours.sort();
        let mut e = ObservedExport {
            uuid,
            iqn: None,
            device: b.udev_path.clone(),
            backstore: Placement {
                hba: reference.hba.clone(),
                kind: b.kind,
                neighbours,
            },
            size: b.size,
            initiators: Vec::new(),
            logged_in: Vec::new(),
            portals: Vec::new(),
            chap: false,
            credentials: BTreeMap::new(),
            enabled: false,
        };
        for t in &lio.iscsi_targets {
            for tpg in &t.tpgs {
                if tpg.luns.iter().any(|l| l.backstore == reference) {
                    e.iqn = Some(t.iqn.clone());
                    e.enabled = tpg.enabled;
                    e.portals.clone_from(&tpg.portals);
                    e.initiators = tpg.acls.iter().map(|a| a.initiator.clone()).collect();
                    e.logged_in = tpg
                        .acls
                        .iter()
                        .filter(|a| a.logged_in)
                        .map(|a| a.initiator.clone())
                        .collect();
                    e.chap =
                        tpg.authentication && tpg.acls.iter().all(|a| a.chap.one_way.is_some());
                    e.credentials = tpg
                        .acls
                        .iter()
                        .map(|a| (a.initiator.clone(), a.chap.clone()))
                        .collect();
                }
            }
        }
        e.initiators.sort();
        e.logged_in.sort();
        e.portals.sort();
        out.insert(uuid, e);
    }
    out
}

/// Reads `root`: `Ok(None)` when LIO is not there at all.
pub fn observe(root: &Path) -> Result<Option<Observation>, LioError> {
    if !root.is_dir() {
        return Ok(None);
    }
    let entries = walk(root)?;
    let lio = Lio::from_entries(&entries)?;
    Ok(Some(Observation {
        exports: exports(&lio),
        discovery_auth: lio.discovery_auth,
    }))
}

/// What backs an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    /// A block device (an LV): an `iblock` backstore.
    Block(PathBuf),
    /// A volume file: a `fileio` backstore of that size.
    File {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
}

impl Device {
    fn kind(&self) -> BackstoreKind {
        match self {
            Device::Block(_) => BackstoreKind::Block,
            Device::File { .. } => BackstoreKind::File,
        }
    }
}

/// One export to make true.
#[derive(Debug, Clone)]
pub struct ExportSpec {
    /// The volume.
    pub uuid: Uuid,
    /// The target's IQN.
    pub iqn: String,
    /// What backs it.
    pub device: Device,
    /// Initiators allowed (one ACL each, LUN 0 mapped).
    pub initiators: Vec<String>,
    /// CHAP credentials for every ACL, if any.
    pub chap: Option<Chap>,
    /// The credentials the target answers with when an initiator asks it to
    /// authenticate itself (mutual CHAP), if any; only with `chap`.
    pub mutual: Option<Chap>,
    /// Portals (`ADDR:PORT`).
    pub portals: Vec<String>,
    /// Move the backstore out of a shared HBA folder into one of its own
    /// (the target is removed and made again): planned only while no
    /// initiator is logged in, and refused here if one is.
    pub rehome: bool,
}

pub use crate::model::Change;

/// Writes exports into configfs at `root`.
#[derive(Debug, Clone)]
pub struct LioDriver {
    root: PathBuf,
}

impl LioDriver {
    /// A driver for the tree at `root` (see [`root`]).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn check(&self) -> Result<(), LioError> {
        if self.root.is_dir() {
            Ok(())
        } else {
            Err(LioError::Unavailable {
                root: self.root.clone(),
            })
        }
    }

    fn model(&self) -> Result<Lio, LioError> {
        Ok(Lio::from_entries(&walk(&self.root)?)?)
    }

    fn mkdir(path: &Path, changed: &mut bool) -> Result<(), LioError> {
        if !path.is_dir() {
            fs::create_dir_all(path).map_err(io_err("create", path))?;
            *changed = true;
        }
        Ok(())
    }

    fn put(path: &Path, value: &str) -> Result<(), LioError> {
        fs::write(path, value).map_err(io_err("write", path))
    }

    /// Writes `value` unless the attribute already reads so.
    fn set(path: &Path, value: &str, changed: &mut bool) -> Result<(), LioError> {
        let current = fs::read_to_string(path).ok();
        if current.as_deref().map(str::trim) != Some(value) {
            Self::put(path, value)?;
            *changed = true;
        }
        Ok(())
    }

    /// Writes a secret attribute unless it already holds `value` (`None`:
    /// not set, which LIO spells `NULL`). The current value is read only to
    /// compare, and dropped.
    fn set_secret(path: &Path, value: Option<&str>, changed: &mut bool) -> Result<(), LioError> {
        let current = fs::read_to_string(path).ok();
        let current = current
            .as_deref()
            .map(|v| v.strip_suffix('\n').unwrap_or(v))
            .filter(|v| !v.is_empty() && *v != NULL);
        if current != value {
            if value.is_none() && current.is_none() {
                return Ok(());
            }
            Self::put(path, value.unwrap_or(NULL))?;
            *changed = true;
        }
        Ok(())
    }

    /// Sets both pairs of credentials in an `auth` directory (an ACL's or
    /// discovery's).
    fn set_credentials(
        auth: &Path,
        one_way: Option<&Chap>,
        mutual: Option<&Chap>,
        changed: &mut bool,
    ) -> Result<(), LioError> {
        if !auth.is_dir() {
            if one_way.is_none() && mutual.is_none() {
                return Ok(());
            }
            fs::create_dir_all(auth).map_err(io_err("create", auth))?;
        }
        // The user name first, then the password: between the two writes a
        // login fails, which is a retry for the initiator, never a way in.
        Self::set_secret(
            &auth.join("userid"),
            one_way.map(|c| c.user.as_str()),
            changed,
        )?;
        Self::set_secret(
            &auth.join("password"),
            one_way.map(|c| c.password.as_str()),
            changed,
        )?;
        Self::set_secret(
            &auth.join("userid_mutual"),
            mutual.map(|c| c.user.as_str()),
            changed,
        )?;
        Self::set_secret(
            &auth.join("password_mutual"),
            mutual.map(|c| c.password.as_str()),
            changed,
        )
    }

    fn link(target: &Path, link: &Path, changed: &mut bool) -> Result<(), LioError> {
        if fs::symlink_metadata(link).is_err() {
            std::os::unix::fs::symlink(target, link).map_err(io_err("link", link))?;
            *changed = true;
        }
        Ok(())
    }

    fn rmdir(path: &Path, changed: &mut bool) -> Result<(), LioError> {
        gone("remove", path, fs::remove_dir(path), changed)
    }

    fn unlink(path: &Path, changed: &mut bool) -> Result<(), LioError> {
        gone("unlink", path, fs::remove_file(path), changed)
    }

    /// Where a new backstore of `kind` goes: `core/<kind>_<n>/<name>` with the
    /// lowest `n` that no HBA folder (of any kind) uses, as rtslib numbers them.
    fn new_backstore_dir(&self, kind: BackstoreKind, uuid: Uuid) -> Result<PathBuf, LioError> {
        let core = self.root.join("core");
        let used: BTreeSet<u32> = list_dirs(&core)?
            .iter()
            .filter_map(|d| d.rsplit_once('_').and_then(|(_, n)| n.parse().ok()))
            .collect();
        // rtslib's limit, and more HBA folders than configfs will ever hold.
        let n = (0..1 << 20).find(|n| !used.contains(n)).unwrap_or(1 << 20);
        Ok(core
            .join(format!("{}_{n}", kind.hba_prefix()))
            .join(backstore_name(uuid)))
    }

    /// Creates or updates the export `spec` describes: the backstore, the target
    /// with its LUN, portals and ACLs (ACLs and portals not in `spec` are
    /// removed), CHAP, and enables it. Idempotent; refuses to remove the ACL of
    /// a logged-in initiator.
    #[allow(clippy::too_many_lines)] // the set-up in configfs' order, one step after the other
    pub fn export(&self, spec: &ExportSpec) -> Result<Change, LioError> {
        self.check()?;
        let mut changed = false;
        let name = backstore_name(spec.uuid);
        let mut lio = self.model()?;
        // 0. A backstore in a shared HBA folder moves to one of its own.
        let shared = |lio: &Lio| {
            lio.backstores
                .iter()
                .find(|b| b.name == name)
                .is_some_and(|b| {
                    let r = b.reference();
                    lio.backstores
                        .iter()
                        .any(|o| o.name != name && o.reference().hba == r.hba)
                })
        };
        if spec.rehome && shared(&lio) {
            self.unexport(spec.uuid, false)?;
            changed = true;
            lio = self.model()?;
        }
        let current = exports(&lio);
        // 1. The backstore: where it is, or in a new HBA folder.
        let (control, udev) = match &spec.device {
            Device::Block(p) => (
                format!("udev_path={}", p.display()),
                p.display().to_string(),
            ),
            Device::File { path, size } => (
                format!("fd_dev_name={},fd_dev_size={size}", path.display()),
                path.display().to_string(),
            ),
        };
        let existing = lio.backstores.iter().find(|b| b.name == name);
        if let Some(b) = existing
            && b.kind != spec.device.kind()
        {
            return Err(LioError::Refused(format!(
                "the backstore of volume {} is an {} backstore, but the volume now needs an {} one: remove spec.export, apply, and add it back (with no initiator logged in)",
                spec.uuid,
                b.kind.hba_prefix(),
                spec.device.kind().hba_prefix()
            )));
        }
        let bs = match existing {
            Some(b) => {
                let r = b.reference();
                self.root.join("core").join(r.hba).join(r.name)
            }
            None => self.new_backstore_dir(spec.device.kind(), spec.uuid)?,
        };
        if existing.is_some_and(|b| b.enabled) {
            // 1b. A file volume that grew: LIO's size follows it.
            if let (Device::File { size, .. }, Some(have)) =
                (&spec.device, existing.and_then(|b| b.size))
            {
                if have > *size {
                    return Err(LioError::Refused(format!(
                        "LIO gives volume {} {have} bytes, more than its file's {size}: it is not shrunk under an initiator; remove spec.export, apply, and add it back (with no initiator logged in)",
                        spec.uuid
                    )));
                }
                if have < *size {
                    Self::put(&bs.join("control"), &format!("fd_dev_size={size}"))?;
                    tracing::info!(volume = %spec.uuid, from = have, to = size, "LUN size raised");
                    changed = true;
                }
            }
        } else {
            Self::mkdir(&bs, &mut changed)?;
            Self::put(&bs.join("control"), &control)?;
            // `control` does not fill in `udev_path` (shared/LAB.md pitfall 18).
            Self::put(&bs.join("udev_path"), &udev)?;
            let wwn = bs.join("wwn");
            fs::create_dir_all(&wwn).map_err(io_err("create", &wwn))?;
            Self::put(&wwn.join("vpd_unit_serial"), &spec.uuid.to_string())?;
            Self::put(&bs.join("enable"), "1")?;
            changed = true;
        }
        // 2. The target and its portal group.
        let tpg = self.root.join("iscsi").join(&spec.iqn).join(TPG);
        Self::mkdir(&tpg, &mut changed)?;
        // 3. LUN 0 → the backstore.
        let lun = tpg.join("lun").join("lun_0");
        Self::mkdir(&lun, &mut changed)?;
        Self::link(&bs, &lun.join(&name), &mut changed)?;
        // 4. Portals.
        let want_portals: BTreeSet<&str> = if spec.portals.is_empty() {
            BTreeSet::from([DEFAULT_PORTAL])
        } else {
            spec.portals.iter().map(String::as_str).collect()
        };
        let np = tpg.join("np");
        for p in &want_portals {
            let dir = np.join(p);
            if !dir.is_dir() {
                fs::create_dir_all(&dir).map_err(|source| LioError::Portal {
                    portal: (*p).to_owned(),
                    port: p.rsplit_once(':').map_or("", |(_, port)| port).to_owned(),
                    path: dir.clone(),
                    source,
                })?;
                changed = true;
            }
        }
        for p in list_dirs(&np)? {
            if !want_portals.contains(p.as_str()) {
                Self::rmdir(&np.join(&p), &mut changed)?;
            }
        }
        // 5. ACLs, with their credentials.
        let logged_in: BTreeSet<String> = current
            .get(&spec.uuid)
            .map(|e| e.logged_in.iter().cloned().collect())
            .unwrap_or_default();
        let acls = tpg.join("acls");
        let want: BTreeSet<&str> = spec.initiators.iter().map(String::as_str).collect();
        for ini in list_dirs(&acls)? {
            if !want.contains(ini.as_str()) {
                if logged_in.contains(&ini) {
                    return Err(LioError::LoggedIn {
                        initiator: ini,
                        iqn: spec.iqn.clone(),
                    });
                }
                remove_acl(&acls.join(&ini), &mut changed)?;
            }
        }
        let mutual = spec.chap.as_ref().and(spec.mutual.as_ref());
        for ini in &want {
            let acl = acls.join(ini);
            let mapped = acl.join("lun_0");
            Self::mkdir(&mapped, &mut changed)?;
            Self::link(&lun, &mapped.join("lun_0"), &mut changed)?;
            Self::set_credentials(&acl.join("auth"), spec.chap.as_ref(), mutual, &mut changed)?;
        }
        // 6. Attributes, then enable.
        let attrib = tpg.join("attrib");
        if !attrib.is_dir() {
            fs::create_dir_all(&attrib).map_err(io_err("create", &attrib))?;
        }
        Self::set(
            &attrib.join("authentication"),
            if spec.chap.is_some() { "1" } else { "0" },
            &mut changed,
        )?;
        Self::set(&attrib.join("generate_node_acls"), "0", &mut changed)?;
        Self::set(&attrib.join("demo_mode_write_protect"), "1", &mut changed)?;
        Self::set(&tpg.join("enable"), "1", &mut changed)?;
        tracing::info!(iqn = %spec.iqn, volume = %spec.uuid, initiators = spec.initiators.len(), chap = spec.chap.is_some(), mutual = mutual.is_some(), changed, "exported");
        Ok(Change::from_bool(changed))
    }

    /// Sets `SendTargets` discovery authentication (host-wide): the
    /// credentials an initiator must present to discover, and optionally
    /// those the target answers with, then enforces it.
    pub fn discovery_auth(&self, chap: &Chap, mutual: Option<&Chap>) -> Result<Change, LioError> {
        self.check()?;
        // configfs registers the iSCSI fabric (and `discovery_auth` in it)
        // on the first mkdir of `iscsi`.
        let fabric = self.root.join("iscsi");
        fs::create_dir_all(&fabric).map_err(io_err("create", &fabric))?;
        let dir = fabric.join("discovery_auth");
        if !dir.is_dir() {
            return Err(LioError::Unavailable { root: dir });
        }
        let mut changed = false;
        Self::set_credentials(&dir, Some(chap), mutual, &mut changed)?;
        Self::set(&dir.join("enforce_discovery_auth"), "1", &mut changed)?;
        tracing::info!(
            mutual = mutual.is_some(),
            changed,
            "discovery authentication set"
        );
        Ok(Change::from_bool(changed))
    }

    /// Removes every export of volume `uuid` (each target whose LUN uses its
    /// backstore, then the backstore, then its HBA folder when that is left
    /// empty). Idempotent. With `force` false, refuses while an initiator is
    /// logged in.
    pub fn unexport(&self, uuid: Uuid, force: bool) -> Result<Change, LioError> {
        if !self.root.is_dir() {
            // No LIO, no export.
            return Ok(Change::Unchanged);
        }
        let lio = self.model()?;
        let name = backstore_name(uuid);
        let mut changed = false;
        for t in &lio.iscsi_targets {
            for tpg_m in &t.tpgs {
                let Some(lun) = tpg_m.luns.iter().find(|l| l.backstore.name == name) else {
                    continue;
                };
                if !force && let Some(a) = tpg_m.acls.iter().find(|a| a.logged_in) {
                    return Err(LioError::LoggedIn {
                        initiator: a.initiator.clone(),
                        iqn: t.iqn.clone(),
                    });
                }
                let target_dir = self.root.join("iscsi").join(&t.iqn);
                let tpg = target_dir.join(format!("tpgt_{}", tpg_m.tag));
                if tpg_m.enabled {
                    Self::put(&tpg.join("enable"), "0")?;
                    changed = true;
                }
                for a in &tpg_m.acls {
                    remove_acl(&tpg.join("acls").join(&a.initiator), &mut changed)?;
                }
                let lun_dir = tpg.join("lun").join(format!("lun_{}", lun.index));
                Self::unlink(&lun_dir.join(&name), &mut changed)?;
                Self::rmdir(&lun_dir, &mut changed)?;
                for p in &tpg_m.portals {
                    Self::rmdir(&tpg.join("np").join(p), &mut changed)?;
                }
                Self::rmdir(&tpg, &mut changed)?;
                // The target goes when this was its only portal group.
                if t.tpgs.len() == 1 {
                    Self::rmdir(&target_dir, &mut changed)?;
                }
            }
        }
        for b in lio.backstores.iter().filter(|b| b.name == name) {
            let r = b.reference();
            let hba = self.root.join("core").join(&r.hba);
            Self::rmdir(&hba.join(&r.name), &mut changed)?;
            // Its folder goes too once it holds nothing (rtslib removes a
            // folder with its object; an old shared folder stays while others
            // are in it).
            if list_dirs(&hba)?.is_empty() {
                match fs::remove_dir(&hba) {
                    Ok(()) => {}
                    // Something appeared in it meanwhile (targetcli at work).
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
                        ) => {}
                    Err(source) => {
                        return Err(LioError::Io {
                            op: "remove",
                            path: hba,
                            source,
                        });
                    }
                }
            }
        }
        if changed {
            tracing::info!(volume = %uuid, "unexported");
        }
        Ok(Change::from_bool(changed))
    }
}

/// The outcome of removing `path`: done, or already gone.
fn gone(
    op: &'static str,
    path: &Path,
    r: io::Result<()>,
    changed: &mut bool,
) -> Result<(), LioError> {
    match r {
        Ok(()) => {
            *changed = true;
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LioError::Io {
            op,
            path: path.to_owned(),
            source,
        }),
    }
}

/// Removes one ACL: its mapped-LUN links, their directories, the ACL.
fn remove_acl(acl: &Path, changed: &mut bool) -> Result<(), LioError> {
    for m in list_dirs(acl)? {
        if m.starts_with("lun_") {
            let mdir = acl.join(&m);
            for l in list_links(&mdir)? {
                LioDriver::unlink(&mdir.join(l), changed)?;
            }
            LioDriver::rmdir(&mdir, changed)?;
        }
    }
    LioDriver::rmdir(acl, changed)
}

fn list(dir: &Path, want_dir: bool) -> Result<Vec<String>, LioError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(LioError::Io {
                op: "read directory",
                path: dir.to_owned(),
                source: e,
            });
        }
    };
    let mut out: Vec<String> = rd
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_type()
                .is_ok_and(|t| if want_dir { t.is_dir() } else { t.is_symlink() })
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    Ok(out)
}

fn list_dirs(dir: &Path) -> Result<Vec<String>, LioError> {
    list(dir, true)
}

fn list_links(dir: &Path) -> Result<Vec<String>, LioError> {
    list(dir, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::names::default_iqn;

    const INI_A: &str = "iqn.1994-05.com.example:a";
    const INI_B: &str = "iqn.1994-05.com.example:b";

    fn spec(uuid: Uuid, initiators: &[&str], chap: bool) -> ExportSpec {
        ExportSpec {
            uuid,
            iqn: default_iqn(uuid),
            device: Device::Block(PathBuf::from("/dev/vg0/volume-x")),
            initiators: initiators.iter().map(|s| (*s).to_owned()).collect(),
            chap: chap.then(|| Chap::parse("user:secret-123456").unwrap()),
            mutual: None,
            portals: Vec::new(),
            rehome: false,
        }
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap()
    }

    /// A plain directory stands in for configfs: the driver's writes create
    /// what configfs would create by itself.
    #[test]
    fn an_export_written_to_a_tree_reads_back_as_ours() {
        let dir = tempfile::tempdir().unwrap();
        let d = LioDriver::new(dir.path());
        let u = Uuid::new_v4();
        assert_eq!(
            d.export(&spec(u, &[INI_A, INI_B], true)).unwrap(),
            Change::Changed
        );
        let seen = observe(dir.path()).unwrap().unwrap().exports;
        let e = &seen[&u];
        assert_eq!(e.iqn.as_deref(), Some(default_iqn(u).as_str()));
        assert_eq!(e.initiators, vec![INI_A.to_owned(), INI_B.to_owned()]);
        assert_eq!(e.portals, vec![DEFAULT_PORTAL.to_owned()]);
        assert!(e.chap && e.enabled);
        assert!(e.logged_in.is_empty());
        assert_eq!(e.device.as_deref(), Some("/dev/vg0/volume-x"));
        assert_eq!(e.backstore.hba, "iblock_0");
        assert!(e.backstore.neighbours.is_empty());
        let want = Chap::parse("user:secret-123456").unwrap().print();
        assert_eq!(e.credentials[INI_A].one_way, Some(want));
        assert_eq!(e.credentials[INI_B].mutual, None);
        let serial = read(
            &dir.path()
                .join("core/iblock_0")
                .join(backstore_name(u))
                .join("wwn/vpd_unit_serial"),
        );
        assert_eq!(serial, u.to_string());

        // Again: nothing to do (the credentials are compared, not rewritten).
        assert_eq!(
            d.export(&spec(u, &[INI_A, INI_B], true)).unwrap(),
            Change::Unchanged
        );
        // Without CHAP: the credentials are cleared as LIO clears them.
        // (Removing an ACL needs configfs' rmdir semantics: the lab tests it,
        // tests/lab/export.rs.)
        assert_eq!(
            d.export(&spec(u, &[INI_A, INI_B], false)).unwrap(),
            Change::Changed
        );
        let e = &observe(dir.path()).unwrap().unwrap().exports[&u];
        assert_eq!(e.initiators, vec![INI_A.to_owned(), INI_B.to_owned()]);
        assert!(!e.chap);
        assert_eq!(e.credentials[INI_A], ChapPresence::default());
        let tpg = dir.path().join("iscsi").join(default_iqn(u)).join(TPG);
        assert_eq!(
            read(&tpg.join("acls").join(INI_A).join("auth/password")),
            "NULL"
        );
    }

    /// configfs answers a failed bind with `EINVAL`; the error says what
    /// usually causes it. (A file where the `np` folder belongs stands in
    /// for the refusal; the lab's `full-site` met the real one.)
    #[test]
    fn a_portal_lio_cannot_listen_on_is_named_with_the_usual_causes() {
        let dir = tempfile::tempdir().unwrap();
        let d = LioDriver::new(dir.path());
        let u = Uuid::from_u128(7);
        let tpg = dir.path().join("iscsi").join(default_iqn(u)).join(TPG);
        fs::create_dir_all(&tpg).unwrap();
        fs::write(tpg.join("np"), "").unwrap();
        let err = d.export(&spec(u, &[INI_A], false)).unwrap_err().to_string();
        assert!(
            err.starts_with("LIO cannot listen on portal 0.0.0.0:3260 ("),
            "{err}"
        );
        assert!(
            err.contains("another portal holds port 3260 (a wildcard portal"),
            "{err}"
        );
    }

    #[test]
    fn rotated_and_mutual_credentials_reach_every_acl_and_nothing_else_moves() {
        let dir = tempfile::tempdir().unwrap();
        let d = LioDriver::new(dir.path());
        let u = Uuid::new_v4();
        d.export(&spec(u, &[INI_A, INI_B], true)).unwrap();
        let mut s = spec(u, &[INI_A, INI_B], true);
        s.chap = Some(Chap::parse("user:rotated-secret-2").unwrap());
        s.mutual = Some(Chap::parse("target:target-secret-3").unwrap());
        assert_eq!(d.export(&s).unwrap(), Change::Changed);
        let e = &observe(dir.path()).unwrap().unwrap().exports[&u];
        for ini in [INI_A, INI_B] {
            assert_eq!(
                e.credentials[ini].one_way,
                Some(Chap::parse("user:rotated-secret-2").unwrap().print())
            );
            assert_eq!(
                e.credentials[ini].mutual,
                Some(Chap::parse("target:target-secret-3").unwrap().print())
            );
        }
        let acl = dir
            .path()
            .join("iscsi")
            .join(default_iqn(u))
            .join(TPG)
            .join("acls")
            .join(INI_A);
        assert_eq!(read(&acl.join("auth/userid_mutual")), "target");
        assert_eq!(d.export(&s).unwrap(), Change::Unchanged);
        // Mutual dropped: cleared.
        s.mutual = None;
        assert_eq!(d.export(&s).unwrap(), Change::Changed);
        assert_eq!(read(&acl.join("auth/password_mutual")), "NULL");
        assert!(e.backstore.neighbours.is_empty());
    }

    #[test]
    fn each_backstore_gets_its_own_folder_with_the_lowest_free_number() {
        let dir = tempfile::tempdir().unwrap();
        // A backstore made by hand with targetcli, in iblock_0.
        fs::create_dir_all(dir.path().join("core/iblock_0/tc1")).unwrap();
        fs::write(dir.path().join("core/iblock_0/tc1/enable"), "1\n").unwrap();
        fs::create_dir_all(dir.path().join("core/alua")).unwrap();
        let d = LioDriver::new(dir.path());
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        d.export(&spec(a, &[INI_A], false)).unwrap();
        let mut f = spec(b, &[INI_A], false);
        f.device = Device::File {
            path: PathBuf::from("/srv/volume-b"),
            size: 32 << 20,
        };
        d.export(&f).unwrap();
        let seen = observe(dir.path()).unwrap().unwrap().exports;
        assert_eq!(seen[&a].backstore.hba, "iblock_1");
        assert_eq!(seen[&b].backstore.hba, "fileio_2");
        assert_eq!(seen[&b].backstore.kind, BackstoreKind::File);
        assert!(dir.path().join("core/iblock_0/tc1").is_dir());
        assert_eq!(
            read(
                &dir.path()
                    .join("core/fileio_2")
                    .join(backstore_name(b))
                    .join("control")
            ),
            format!("fd_dev_name=/srv/volume-b,fd_dev_size={}", 32 << 20)
        );

        // The file grew: LIO's size follows (the kernel's `info` says what
        // it has; a plain directory needs it written by hand).
        let bs = dir.path().join("core/fileio_2").join(backstore_name(b));
        fs::write(bs.join("info"), format!("Status: ACTIVATED\n        TCM FILEIO ID: 0        File: /srv/volume-b  Size: {}  Mode: O_DSYNC", 32 << 20)).unwrap();
        assert_eq!(
            observe(dir.path()).unwrap().unwrap().exports[&b].size,
            Some(32 << 20)
        );
        f.device = Device::File {
            path: PathBuf::from("/srv/volume-b"),
            size: 64 << 20,
        };
        assert_eq!(d.export(&f).unwrap(), Change::Changed);
        assert_eq!(
            read(&bs.join("control")),
            format!("fd_dev_size={}", 64 << 20)
        );
        // Never shrunk under an initiator.
        fs::write(
            bs.join("info"),
            format!("File: /srv/volume-b  Size: {}  Mode", 128 << 20),
        )
        .unwrap();
        let err = d.export(&f).unwrap_err();
        assert!(err.to_string().contains("more than its file's"), "{err}");
    }

    #[test]
    fn the_shared_folder_of_earlier_versions_is_seen_as_shared() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        for u in [a, b] {
            let bs = dir.path().join("core/iblock_0").join(backstore_name(u));
            fs::create_dir_all(&bs).unwrap();
            fs::write(bs.join("enable"), "1\n").unwrap();
        }
        let seen = observe(dir.path()).unwrap().unwrap().exports;
        assert_eq!(seen[&a].backstore.hba, "iblock_0");
        assert_eq!(seen[&a].backstore.neighbours, vec![backstore_name(b)]);
        // Exporting in place keeps it where it is (a move is planned, and
        // needs configfs' rmdir: the lab tests it).
        LioDriver::new(dir.path())
            .export(&spec(a, &[INI_A], false))
            .unwrap();
        let seen = observe(dir.path()).unwrap().unwrap().exports;
        assert_eq!(seen[&a].backstore.hba, "iblock_0");
        assert_eq!(seen[&a].iqn.as_deref(), Some(default_iqn(a).as_str()));
    }

    #[test]
    fn discovery_auth_is_written_and_read_back_as_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        let disc = dir.path().join("iscsi/discovery_auth");
        fs::create_dir_all(&disc).unwrap();
        for f in ["userid", "password", "userid_mutual", "password_mutual"] {
            fs::write(disc.join(f), "NULL\n").unwrap();
        }
        fs::write(disc.join("enforce_discovery_auth"), "0\n").unwrap();
        let d = LioDriver::new(dir.path());
        let c = Chap::parse("disc:discovery-secret-1").unwrap();
        assert_eq!(d.discovery_auth(&c, None).unwrap(), Change::Changed);
        assert_eq!(d.discovery_auth(&c, None).unwrap(), Change::Unchanged);
        let seen = observe(dir.path())
            .unwrap()
            .unwrap()
            .discovery_auth
            .unwrap();
        assert!(seen.enforced);
        assert_eq!(seen.chap.one_way, Some(c.print()));
        assert_eq!(seen.chap.mutual, None);
        let err = LioDriver::new(dir.path().join("nothing"))
            .discovery_auth(&c, None)
            .unwrap_err();
        assert!(err.to_string().contains("LIO is not available"), "{err}");
    }

    #[test]
    fn a_logged_in_initiator_keeps_its_acl() {
        let dir = tempfile::tempdir().unwrap();
        let d = LioDriver::new(dir.path());
        let u = Uuid::new_v4();
        d.export(&spec(u, &[INI_A, INI_B], false)).unwrap();
        let info = dir
            .path()
            .join("iscsi")
            .join(default_iqn(u))
            .join("tpgt_1/acls")
            .join(INI_B)
            .join("info");
        fs::write(
            &info,
            "InitiatorName: iqn.1994-05.com.example:b\nLIO Session ID: 1\n",
        )
        .unwrap();
        assert_eq!(
            observe(dir.path()).unwrap().unwrap().exports[&u].logged_in,
            vec![INI_B.to_owned()]
        );
        let err = d.export(&spec(u, &[INI_A], false)).unwrap_err();
        assert!(
            err.to_string()
                .contains("initiator iqn.1994-05.com.example:b is logged in"),
            "{err}"
        );
        let err = d.unexport(u, false).unwrap_err();
        assert!(matches!(err, LioError::LoggedIn { .. }), "{err}");
    }

    #[test]
    fn foreign_backstores_are_not_ours_and_no_lio_is_no_exports() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("core/iblock_0/vol1")).unwrap();
        fs::write(dir.path().join("core/iblock_0/vol1/enable"), "1\n").unwrap();
        fs::create_dir_all(dir.path().join("core/iblock_0/cinderblock-notauuid")).unwrap();
        fs::write(
            dir.path().join("core/iblock_0/cinderblock-notauuid/enable"),
            "1\n",
        )
        .unwrap();
        assert!(observe(dir.path()).unwrap().unwrap().exports.is_empty());
        assert!(observe(&dir.path().join("absent")).unwrap().is_none());
        let err = LioDriver::new(dir.path().join("absent"))
            .export(&spec(Uuid::new_v4(), &[INI_A], false))
            .unwrap_err();
        assert!(err.to_string().contains("LIO is not available"), "{err}");
    }
}
