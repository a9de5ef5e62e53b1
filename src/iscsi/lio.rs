//! LIO on a live host: walking configfs into [`Entry`]s, reading our exports out of
//! the model, and writing exports into configfs.
//!
//! An export of volume `U` is, in LIO's terms:
//!
//! ```text
//! core/iblock_0/cinderblock-U            the backstore (fileio_0 for file volumes),
//!                                        udev_path = the LV or file, serial = U
//! iscsi/IQN/tpgt_1/lun/lun_0/cinderblock-U -> core/iblock_0/cinderblock-U
//! iscsi/IQN/tpgt_1/np/ADDR:PORT          one per portal
//! iscsi/IQN/tpgt_1/acls/INITIATOR/lun_0/lun_0 -> tpgt_1/lun/lun_0
//! iscsi/IQN/tpgt_1/acls/INITIATOR/auth/{userid,password}   with CHAP
//! iscsi/IQN/tpgt_1/attrib/authentication = 1 with CHAP, generate_node_acls = 0
//! iscsi/IQN/tpgt_1/enable = 1
//! ```
//!
//! Ownership is the backstore's name: `cinderblock-<uuid>`; anything else in configfs
//! is foreign and never touched. The IQN defaults to
//! `iqn.2010-10.dev.cinderblock:volume-<uuid>` (Cinder's `volume-<uuid>` pattern).
//! The serial number is the volume's uuid, so multipath and udev see a stable
//! identity across re-exports.
//!
//! Crash safety: every step is idempotent and checked against what exists, so an
//! export interrupted at any point is completed by the next run, and an unexport
//! interrupted at any point is finished by the next run (the planner sees the
//! leftover backstore). Tear-down order is the reverse of set-up, as configfs
//! demands (links before the directories they point into).
//!
//! Must not: read or log CHAP secrets back (they are write-only here), touch
//! configfs entries that are not ours, or remove the ACL of an initiator that is
//! logged in (the planner refuses that; [`LioDriver::export`] checks again).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::configfs::{BackstoreKind, Entry, Lio};

/// Where the kernel's LIO configfs tree lives.
pub const CONFIGFS_TARGET: &str = "/sys/kernel/config/target";
/// The naming authority of the default IQNs.
pub const IQN_PREFIX: &str = "iqn.2010-10.dev.cinderblock:";
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

/// The default IQN of volume `uuid`.
pub fn default_iqn(uuid: Uuid) -> String {
    format!("{IQN_PREFIX}volume-{uuid}")
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
    /// The tree did not make sense.
    #[error("cannot understand the LIO configuration")]
    Model(#[from] super::configfs::ConfigfsError),
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedExport {
    /// The volume.
    pub uuid: Uuid,
    /// The target exporting it (`None`: only the backstore exists, from an
    /// interrupted export or unexport).
    pub iqn: Option<String>,
    /// The device or file behind the backstore.
    pub device: Option<String>,
    /// Initiators with an ACL, sorted.
    pub initiators: Vec<String>,
    /// Those logged in now, sorted.
    pub logged_in: Vec<String>,
    /// Portals, sorted.
    pub portals: Vec<String>,
    /// Whether CHAP is required (and set on every ACL).
    pub chap: bool,
    /// Whether the portal group is enabled.
    pub enabled: bool,
}

/// Our exports in `lio`, by volume.
pub fn exports(lio: &Lio) -> BTreeMap<Uuid, ObservedExport> {
    let mut out = BTreeMap::new();
    for b in &lio.backstores {
        let Some(uuid) = b
            .name
            .strip_prefix(BACKSTORE_PREFIX)
            .and_then(|u| Uuid::parse_str(u).ok())
        else {
            continue;
        };
        let reference = b.reference();
        let mut e = ObservedExport {
            uuid,
            iqn: None,
            device: b.udev_path.clone(),
            initiators: Vec::new(),
            logged_in: Vec::new(),
            portals: Vec::new(),
            chap: false,
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
                    e.chap = tpg.authentication
                        && tpg
                            .acls
                            .iter()
                            .all(|a| a.chap.userid.is_some() && a.chap.password_set);
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

/// Reads `root` into our exports: `Ok(None)` when LIO is not there at all.
pub fn observe(root: &Path) -> Result<Option<BTreeMap<Uuid, ObservedExport>>, LioError> {
    if !root.is_dir() {
        return Ok(None);
    }
    let entries = walk(root)?;
    let lio = Lio::from_entries(&entries)?;
    Ok(Some(exports(&lio)))
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

/// CHAP credentials (never logged).
#[derive(Clone, PartialEq, Eq)]
pub struct Chap {
    /// User name.
    pub user: String,
    /// Secret.
    pub password: String,
}

impl std::fmt::Debug for Chap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chap")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Chap {
    /// Parses `USER:PASSWORD` (surrounding whitespace and a trailing newline
    /// ignored).
    pub fn parse(text: &str) -> Result<Chap, String> {
        let (user, password) = text
            .trim()
            .split_once(':')
            .ok_or("the CHAP secret must be USER:PASSWORD")?;
        if user.is_empty() || password.is_empty() {
            return Err("the CHAP secret must be USER:PASSWORD, both non-empty".into());
        }
        if user
            .chars()
            .chain(password.chars())
            .any(char::is_whitespace)
        {
            return Err("the CHAP user and password must not contain white space".into());
        }
        Ok(Chap {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }
}

/// Reads CHAP credentials (`USER:PASSWORD`) from a file or an environment
/// variable. Errors name the source, never the content.
pub fn read_chap(file: Option<&Path>, env: Option<&str>) -> Result<Chap, String> {
    let (text, from) = match (file, env) {
        (Some(f), _) => (
            fs::read_to_string(f)
                .map_err(|e| format!("cannot read the CHAP secret file {}: {e}", f.display()))?,
            format!("file {}", f.display()),
        ),
        (None, Some(v)) => (
            std::env::var(v).map_err(|_| {
                format!("the CHAP secret's environment variable {v} is not set for this process")
            })?,
            format!("environment variable {v}"),
        ),
        (None, None) => return Err("chapSecretRef names neither a file nor a variable".into()),
    };
    Chap::parse(&text).map_err(|e| format!("{e} (in {from})"))
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
    /// Portals (`ADDR:PORT`).
    pub portals: Vec<String>,
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

    fn backstore_dir(&self, kind: BackstoreKind, uuid: Uuid) -> PathBuf {
        self.root
            .join("core")
            .join(format!("{}_0", kind.hba_prefix()))
            .join(backstore_name(uuid))
    }

    /// Creates or updates the export `spec` describes: the backstore, the target
    /// with its LUN, portals and ACLs (ACLs and portals not in `spec` are
    /// removed), CHAP, and enables it. Idempotent; refuses to remove the ACL of
    /// a logged-in initiator.
    pub fn export(&self, spec: &ExportSpec) -> Result<Change, LioError> {
        self.check()?;
        let current = observe(&self.root)?.unwrap_or_default();
        let mut changed = false;
        // 1. The backstore.
        let (kind, control, udev) = match &spec.device {
            Device::Block(p) => (
                BackstoreKind::Block,
                format!("udev_path={}", p.display()),
                p.display().to_string(),
            ),
            Device::File { path, size } => (
                BackstoreKind::File,
                format!("fd_dev_name={},fd_dev_size={size}", path.display()),
                path.display().to_string(),
            ),
        };
        let bs = self.backstore_dir(kind, spec.uuid);
        let enabled = fs::read_to_string(bs.join("enable")).is_ok_and(|v| v.trim() == "1");
        if !enabled {
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
        Self::link(&bs, &lun.join(backstore_name(spec.uuid)), &mut changed)?;
        // 4. Portals.
        let want_portals: BTreeSet<&str> = if spec.portals.is_empty() {
            BTreeSet::from([DEFAULT_PORTAL])
        } else {
            spec.portals.iter().map(String::as_str).collect()
        };
        let np = tpg.join("np");
        for p in &want_portals {
            Self::mkdir(&np.join(p), &mut changed)?;
        }
        for p in list_dirs(&np)? {
            if !want_portals.contains(p.as_str()) {
                Self::rmdir(&np.join(&p), &mut changed)?;
            }
        }
        // 5. ACLs.
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
        for ini in &want {
            let acl = acls.join(ini);
            let mapped = acl.join("lun_0");
            Self::mkdir(&mapped, &mut changed)?;
            Self::link(&lun, &mapped.join("lun_0"), &mut changed)?;
            let auth = acl.join("auth");
            if let Some(chap) = &spec.chap {
                if !auth.is_dir() {
                    fs::create_dir_all(&auth).map_err(io_err("create", &auth))?;
                }
                Self::set(&auth.join("userid"), &chap.user, &mut changed)?;
                // The password cannot be compared without reading it back;
                // writing the same value again is harmless.
                Self::put(&auth.join("password"), &chap.password)?;
            }
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
        tracing::info!(iqn = %spec.iqn, volume = %spec.uuid, initiators = spec.initiators.len(), chap = spec.chap.is_some(), changed, "exported");
        Ok(if changed {
            Change::Changed
        } else {
            Change::Unchanged
        })
    }

    /// Removes every export of volume `uuid` (each target whose LUN uses its
    /// backstore, then the backstore). Idempotent. With `force` false, refuses
    /// while an initiator is logged in.
    pub fn unexport(&self, uuid: Uuid, force: bool) -> Result<Change, LioError> {
        if !self.root.is_dir() {
            // No LIO, no export.
            return Ok(Change::Unchanged);
        }
        let entries = walk(&self.root)?;
        let lio = Lio::from_entries(&entries)?;
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
            Self::rmdir(
                &self.root.join("core").join(&r.hba).join(&r.name),
                &mut changed,
            )?;
        }
        if changed {
            tracing::info!(volume = %uuid, "unexported");
        }
        Ok(if changed {
            Change::Changed
        } else {
            Change::Unchanged
        })
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

    const INI_A: &str = "iqn.1994-05.com.example:a";
    const INI_B: &str = "iqn.1994-05.com.example:b";

    fn spec(uuid: Uuid, initiators: &[&str], chap: bool) -> ExportSpec {
        ExportSpec {
            uuid,
            iqn: default_iqn(uuid),
            device: Device::Block(PathBuf::from("/dev/vg0/volume-x")),
            initiators: initiators.iter().map(|s| (*s).to_owned()).collect(),
            chap: chap.then(|| Chap::parse("user:secret-123456").unwrap()),
            portals: Vec::new(),
        }
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
        let seen = observe(dir.path()).unwrap().unwrap();
        let e = &seen[&u];
        assert_eq!(e.iqn.as_deref(), Some(default_iqn(u).as_str()));
        assert_eq!(e.initiators, vec![INI_A.to_owned(), INI_B.to_owned()]);
        assert_eq!(e.portals, vec![DEFAULT_PORTAL.to_owned()]);
        assert!(e.chap && e.enabled);
        assert!(e.logged_in.is_empty());
        assert_eq!(e.device.as_deref(), Some("/dev/vg0/volume-x"));
        let serial = fs::read_to_string(
            dir.path()
                .join("core/iblock_0")
                .join(backstore_name(u))
                .join("wwn/vpd_unit_serial"),
        )
        .unwrap();
        assert_eq!(serial, u.to_string());

        // Again: nothing to do (the password is rewritten, which is no change).
        assert_eq!(
            d.export(&spec(u, &[INI_A, INI_B], true)).unwrap(),
            Change::Unchanged
        );
        // Without CHAP. (Removing an ACL needs configfs' rmdir semantics: the
        // lab tests it, tests/lab/export.rs.)
        assert_eq!(
            d.export(&spec(u, &[INI_A, INI_B], false)).unwrap(),
            Change::Changed
        );
        let e = &observe(dir.path()).unwrap().unwrap()[&u];
        assert_eq!(e.initiators, vec![INI_A.to_owned(), INI_B.to_owned()]);
        assert!(!e.chap);
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
            observe(dir.path()).unwrap().unwrap()[&u].logged_in,
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
        assert!(observe(dir.path()).unwrap().unwrap().is_empty());
        assert!(observe(&dir.path().join("absent")).unwrap().is_none());
        let err = LioDriver::new(dir.path().join("absent"))
            .export(&spec(Uuid::new_v4(), &[INI_A], false))
            .unwrap_err();
        assert!(err.to_string().contains("LIO is not available"), "{err}");
    }

    #[test]
    fn chap_secrets_parse_and_never_print() {
        let c = Chap::parse("alice:s3cret-pass\n").unwrap();
        assert_eq!(c.user, "alice");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(Chap::parse("nopassword").is_err());
        assert!(Chap::parse(":x").is_err());
        assert!(Chap::parse("a b:c").is_err());
    }
}
