//! The LIO configfs tree (`/sys/kernel/config/target`) as entries and as a model.
//!
//! LIO has no state file and no query API: configfs *is* its state, so observing the
//! iSCSI exports means walking that tree. This module owns two things:
//!
//! * [`Entry`]: one node of the tree (directory, readable attribute, unreadable
//!   attribute, symlink), with a path relative to the `target` directory. A live walk
//!   (in the `exec` side, later) and the text dump used for fixtures both produce a
//!   `Vec<Entry>`, so the model is built the same way from either.
//!   Entries hold raw values, CHAP secrets included: never log them.
//! * [`Lio::from_entries`]: backstores (with a `fileio` backstore's size), iSCSI
//!   targets, TPGs, portals, LUNs, ACLs with mapped LUNs and their CHAP
//!   credentials, and discovery authentication. Credentials become
//!   [`Fingerprint`]s as they are read (see [`super::chap`]).
//!
//! The text dump ([`parse_dump`]) has one entry per line, sorted:
//!
//! ```text
//! d core/iblock_0/vol1                        a directory
//! f core/iblock_0/vol1/enable = 1             an attribute; "\" escaped as "\\", newline as "\n"
//! l iscsi/<iqn>/tpgt_1/lun/lun_0/vol1 -> ../../../../../../target/core/iblock_0/vol1
//! w core/iblock_0/vol1/control                an attribute that cannot be read
//! ```
//!
//! It is written by `configfs_dump` in `tests/lab/guest/lib.sh`.
//!
//! Invariants: the model never holds a CHAP secret or user name, only their
//! fingerprints (`NULL`, LIO's "not set", reads as absent); entries
//! it does not know are ignored (the kernel adds attributes over time) but a known
//! attribute with a value that does not parse is an error naming its path; the model's
//! lists are sorted (backstores by HBA and name, targets by IQN, TPGs by tag, LUNs by
//! index), so equal trees give equal models.

use std::collections::BTreeMap;

use super::chap::{CredentialPrint, Fingerprint, NULL};

/// One node of the configfs tree, its path relative to `/sys/kernel/config/target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A directory.
    Dir(String),
    /// A readable attribute with its value (one trailing newline removed).
    Attr {
        /// Path.
        path: String,
        /// Value.
        value: String,
    },
    /// An attribute that cannot be read (write-only, such as `control`).
    Unreadable(String),
    /// A symlink and its target as `readlink` gives it (usually relative).
    Link {
        /// Path of the link.
        path: String,
        /// Link target.
        target: String,
    },
}

impl Entry {
    /// The entry's path.
    pub fn path(&self) -> &str {
        match self {
            Entry::Dir(p) | Entry::Unreadable(p) => p,
            Entry::Attr { path, .. } | Entry::Link { path, .. } => path,
        }
    }
}

/// Why the text dump or the tree could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigfsError {
    /// A line of the text dump is malformed.
    #[error("configfs dump line {line}: {problem}")]
    DumpLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: &'static str,
    },
    /// A known attribute or name does not parse.
    #[error("configfs {path}: {value:?}: {problem}")]
    BadValue {
        /// The entry's path.
        path: String,
        /// The raw value or name. Never a secret: secrets are not parsed.
        value: String,
        /// What was expected.
        problem: &'static str,
    },
}

/// Parses the text dump into entries (see the module docs for the format).
pub fn parse_dump(text: &str) -> Result<Vec<Entry>, ConfigfsError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |problem| ConfigfsError::DumpLine {
            line: i + 1,
            problem,
        };
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (kind, rest) = line.split_at_checked(2).ok_or(bad("too short"))?;
        let entry = match kind {
            "d " => Entry::Dir(rest.to_owned()),
            "w " => Entry::Unreadable(rest.to_owned()),
            "f " => {
                let (path, value) = rest
                    .split_once(" = ")
                    .or_else(|| rest.strip_suffix(" =").map(|p| (p, "")))
                    .ok_or(bad("an attribute line needs ` = `"))?;
                Entry::Attr {
                    path: path.to_owned(),
                    value: unescape(value).ok_or(bad("bad escape in the value"))?,
                }
            }
            "l " => {
                let (path, target) = rest
                    .split_once(" -> ")
                    .ok_or(bad("a link line needs ` -> `"))?;
                Entry::Link {
                    path: path.to_owned(),
                    target: target.to_owned(),
                }
            }
            _ => return Err(bad("expected `d `, `f `, `l ` or `w `")),
        };
        if entry.path().is_empty() || entry.path().starts_with('/') {
            return Err(bad("the path must be relative and not empty"));
        }
        out.push(entry);
    }
    Ok(out)
}

fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next()? {
                '\\' => out.push('\\'),
                'n' => out.push('\n'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// The backstore type, from the HBA directory name (`iblock_0` is type `iblock`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BackstoreKind {
    /// `iblock`: a block device (our LVs).
    Block,
    /// `fileio`: a file.
    File,
    /// `rd_mcp`: a RAM disk.
    Ramdisk,
    /// `pscsi`: SCSI pass-through.
    Pscsi,
    /// `user`: TCMU, a userspace handler.
    User,
}

impl BackstoreKind {
    fn from_hba(prefix: &str) -> Option<BackstoreKind> {
        Some(match prefix {
            "iblock" => BackstoreKind::Block,
            "fileio" => BackstoreKind::File,
            "rd_mcp" => BackstoreKind::Ramdisk,
            "pscsi" => BackstoreKind::Pscsi,
            "user" => BackstoreKind::User,
            _ => return None,
        })
    }

    /// The HBA directory prefix (`iblock`, `fileio`, ...).
    pub fn hba_prefix(self) -> &'static str {
        match self {
            BackstoreKind::Block => "iblock",
            BackstoreKind::File => "fileio",
            BackstoreKind::Ramdisk => "rd_mcp",
            BackstoreKind::Pscsi => "pscsi",
            BackstoreKind::User => "user",
        }
    }
}

/// Which backstore something points at: `core/<hba>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BackstoreRef {
    /// The HBA directory, e.g. `iblock_0`.
    pub hba: String,
    /// The storage object's name.
    pub name: String,
}

/// A storage object: `core/<kind>_<hba_index>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backstore {
    /// Type.
    pub kind: BackstoreKind,
    /// The number in the HBA directory name.
    pub hba_index: u32,
    /// The storage object's name.
    pub name: String,
    /// `enable` is 1.
    pub enabled: bool,
    /// `udev_path`; `None` when empty (LIO does not fill it from `control`).
    pub udev_path: Option<String>,
    /// `wwn/vpd_unit_serial`, without its `T10 VPD Unit Serial Number: ` label.
    pub unit_serial: Option<String>,
    /// The size LIO gives the LUN, for `fileio` (`Size:` in `info`: the
    /// `fd_dev_size` it was configured with; it does not follow the file).
    /// `None` for block devices, whose size LIO reads from the device.
    pub size: Option<u64>,
}

impl Backstore {
    /// How LUNs refer to this backstore.
    pub fn reference(&self) -> BackstoreRef {
        BackstoreRef {
            hba: format!("{}_{}", self.kind.hba_prefix(), self.hba_index),
            name: self.name.clone(),
        }
    }
}

/// An iSCSI target: `iscsi/<iqn>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IscsiTarget {
    /// The target name (IQN, or an `eui.`/`naa.` name).
    pub iqn: String,
    /// Its target portal groups, by tag.
    pub tpgs: Vec<Tpg>,
}

/// A target portal group: `iscsi/<iqn>/tpgt_<tag>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tpg {
    /// The tag.
    pub tag: u16,
    /// `enable` is 1.
    pub enabled: bool,
    /// `attrib/authentication` is 1: CHAP is required at login.
    pub authentication: bool,
    /// `attrib/generate_node_acls` is 1: demo mode, any initiator gets in.
    pub generate_node_acls: bool,
    /// Network portals, `address:port` as named in `np/` (IPv6 in brackets).
    pub portals: Vec<String>,
    /// LUNs, by index.
    pub luns: Vec<Lun>,
    /// Node ACLs, by initiator name.
    pub acls: Vec<Acl>,
}

/// A TPG LUN: `lun/lun_<index>/<link>` pointing at a backstore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lun {
    /// The LUN number.
    pub index: u32,
    /// The backstore it exports.
    pub backstore: BackstoreRef,
}

/// A node ACL: `acls/<initiator>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    /// The initiator's name.
    pub initiator: String,
    /// The LUNs this initiator sees, by mapped index.
    pub mapped_luns: Vec<MappedLun>,
    /// Which CHAP credentials are set.
    pub chap: ChapPresence,
    /// An iSCSI session of this initiator is logged in (its `info`
    /// attribute names a session rather than "No active iSCSI Session").
    pub logged_in: bool,
}

/// `acls/<initiator>/lun_<index>/<link>` pointing at TPG `lun/lun_<tpg_lun>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedLun {
    /// The LUN number the initiator sees.
    pub index: u32,
    /// The TPG LUN behind it.
    pub tpg_lun: u32,
    /// `write_protect` is 1.
    pub write_protect: bool,
}

/// CHAP settings of an ACL or of discovery (`auth/`), as fingerprints, so that
/// a model can be printed or logged safely.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChapPresence {
    /// `userid` and `password`, when both are set: what the initiator must
    /// present.
    pub one_way: Option<CredentialPrint>,
    /// `userid_mutual` and `password_mutual`, when both are set: what the
    /// target answers with when the initiator asks it to authenticate itself.
    pub mutual: Option<CredentialPrint>,
}

/// `iscsi/discovery_auth`: `SendTargets` discovery's authentication, host-wide.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiscoveryAuth {
    /// `enforce_discovery_auth` is 1.
    pub enforced: bool,
    /// The credentials.
    pub chap: ChapPresence,
}

/// The LIO configuration seen in configfs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lio {
    /// Storage objects, by HBA then name.
    pub backstores: Vec<Backstore>,
    /// iSCSI targets, by name.
    pub iscsi_targets: Vec<IscsiTarget>,
    /// `iscsi/discovery_auth`; `None` when the iSCSI fabric is not loaded.
    pub discovery_auth: Option<DiscoveryAuth>,
}

/// Entries indexed by path, with typed readers that name the path on error.
struct Tree<'a> {
    attrs: BTreeMap<&'a str, &'a str>,
    dirs: Vec<&'a str>,
    links: Vec<(&'a str, &'a str)>,
}

impl<'a> Tree<'a> {
    fn new(entries: &'a [Entry]) -> Self {
        let mut tree = Tree {
            attrs: BTreeMap::new(),
            dirs: Vec::new(),
            links: Vec::new(),
        };
        for e in entries {
            match e {
                Entry::Dir(p) => tree.dirs.push(p),
                Entry::Attr { path, value } => {
                    tree.attrs.insert(path, value);
                }
                Entry::Link { path, target } => tree.links.push((path, target)),
                Entry::Unreadable(_) => {}
            }
        }
        tree
    }

    /// Directories exactly one level below `parent` ("" for the root), as names.
    fn children(&self, parent: &str) -> Vec<&'a str> {
        let mut out: Vec<&str> = self
            .dirs
            .iter()
            .filter_map(|d| child_name(d, parent))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Links directly inside `dir`, as (name, target).
    fn links_in(&self, dir: &str) -> Vec<(&'a str, &'a str)> {
        self.links
            .iter()
            .filter_map(|&(p, t)| child_name(p, dir).map(|n| (n, t)))
            .collect()
    }

    fn text(&self, path: &str) -> Option<&'a str> {
        self.attrs.get(path).map(|v| v.trim())
    }

    fn flag(&self, path: &str) -> Result<Option<bool>, ConfigfsError> {
        match self.text(path) {
            None => Ok(None),
            Some("0") => Ok(Some(false)),
            Some("1") => Ok(Some(true)),
            Some(v) => Err(bad(path, v, "expected 0 or 1")),
        }
    }

    fn nonempty(&self, path: &str) -> Option<String> {
        self.text(path).filter(|v| !v.is_empty()).map(str::to_owned)
    }

    /// A secret attribute as a fingerprint: `None` when empty or `NULL`. The
    /// value is not trimmed (LIO keeps what was written, and so compares).
    fn print(&self, path: &str) -> Option<Fingerprint> {
        let v = self.attrs.get(path)?;
        (!v.is_empty() && *v != NULL).then(|| Fingerprint::of(v.as_bytes()))
    }

    /// The credentials in `dir` (`auth/` of an ACL, or `discovery_auth`).
    fn chap(&self, dir: &str) -> ChapPresence {
        let pair = |user: &str, password: &str| {
            Some(CredentialPrint {
                user: self.print(&format!("{dir}/{user}"))?,
                password: self.print(&format!("{dir}/{password}"))?,
            })
        };
        ChapPresence {
            one_way: pair("userid", "password"),
            mutual: pair("userid_mutual", "password_mutual"),
        }
    }
}

fn child_name<'a>(path: &'a str, parent: &str) -> Option<&'a str> {
    let rest = if parent.is_empty() {
        path
    } else {
        path.strip_prefix(parent)?.strip_prefix('/')?
    };
    (!rest.is_empty() && !rest.contains('/')).then_some(rest)
}

fn bad(path: &str, value: &str, problem: &'static str) -> ConfigfsError {
    ConfigfsError::BadValue {
        path: path.to_owned(),
        value: value.to_owned(),
        problem,
    }
}

/// `prefix_<n>` → n, for `tpgt_1`, `lun_0`, `iblock_0`.
fn numbered<T: std::str::FromStr>(name: &str, prefix: &str) -> Option<T> {
    name.strip_prefix(prefix)?.strip_prefix('_')?.parse().ok()
}

/// Resolves a link target to a path relative to the `target` directory. configfs
/// gives targets relative to the link's directory, and the tree's root is
/// `<configfs>/target`, so `../../../../../../target/core/iblock_0/vol1` from
/// `iscsi/<iqn>/tpgt_1/lun/lun_0/vol1` resolves to `core/iblock_0/vol1`.
fn resolve(link_path: &str, target: &str) -> Option<String> {
    const ABSOLUTE: &str = "/sys/kernel/config/target/";
    if let Some(rest) = target.strip_prefix(ABSOLUTE) {
        return Some(rest.to_owned());
    }
    // the link's directory within <configfs>: "target/" + parent of link_path
    let mut parts: Vec<&str> = std::iter::once("target")
        .chain(link_path.split('/'))
        .collect();
    parts.pop();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    (parts.first() == Some(&"target")).then(|| parts[1..].join("/"))
}

impl Lio {
    /// Builds the model from a tree walk or a parsed dump.
    pub fn from_entries(entries: &[Entry]) -> Result<Lio, ConfigfsError> {
        let tree = Tree::new(entries);
        let discovery_auth = tree
            .flag("iscsi/discovery_auth/enforce_discovery_auth")?
            .map(|enforced| DiscoveryAuth {
                enforced,
                chap: tree.chap("iscsi/discovery_auth"),
            });
        let mut lio = Lio {
            backstores: backstores(&tree)?,
            discovery_auth,
            ..Lio::default()
        };
        for name in tree.children("iscsi") {
            if name == "discovery_auth" {
                continue;
            }
            let dir = format!("iscsi/{name}");
            let mut tpgs = Vec::new();
            for t in tree.children(&dir) {
                if let Some(tag) = numbered::<u16>(t, "tpgt") {
                    tpgs.push(tpg(&tree, &format!("{dir}/{t}"), tag)?);
                }
            }
            tpgs.sort_by_key(|t| t.tag);
            lio.iscsi_targets.push(IscsiTarget {
                iqn: name.to_owned(),
                tpgs,
            });
        }
        Ok(lio)
    }
}

fn backstores(tree: &Tree<'_>) -> Result<Vec<Backstore>, ConfigfsError> {
    let mut out = Vec::new();
    for hba in tree.children("core") {
        // core/alua and other non-HBA directories have no `<kind>_<n>` name
        let Some((prefix, index)) = hba.rsplit_once('_') else {
            continue;
        };
        let (Some(kind), Ok(hba_index)) = (BackstoreKind::from_hba(prefix), index.parse()) else {
            continue;
        };
        for name in tree.children(&format!("core/{hba}")) {
            let dir = format!("core/{hba}/{name}");
            // HBAs may hold other directories; a storage object has `enable`
            let Some(enabled) = tree.flag(&format!("{dir}/enable"))? else {
                continue;
            };
            let unit_serial = tree
                .text(&format!("{dir}/wwn/vpd_unit_serial"))
                .and_then(|v| {
                    let v = v
                        .strip_prefix("T10 VPD Unit Serial Number:")
                        .unwrap_or(v)
                        .trim();
                    (!v.is_empty()).then(|| v.to_owned())
                });
            let size = match kind {
                BackstoreKind::File => tree.text(&format!("{dir}/info")).and_then(fileio_size),
                _ => None,
            };
            out.push(Backstore {
                kind,
                hba_index,
                name: name.to_owned(),
                enabled,
                udev_path: tree.nonempty(&format!("{dir}/udev_path")),
                unit_serial,
                size,
            });
        }
    }
    out.sort_by(|a, b| (a.kind, a.hba_index, &a.name).cmp(&(b.kind, b.hba_index, &b.name)));
    Ok(out)
}

/// `Size: N` from a `fileio` backstore's `info`
/// (`... TCM FILEIO ID: 0        File: /srv/f1  Size: 33554432  Mode: O_DSYNC ...`).
fn fileio_size(info: &str) -> Option<u64> {
    let mut words = info.split_whitespace();
    while let Some(w) = words.next() {
        if w == "Size:" {
            return words.next()?.parse().ok();
        }
    }
    None
}

fn tpg(tree: &Tree<'_>, dir: &str, tag: u16) -> Result<Tpg, ConfigfsError> {
    let flag = |rel: &str| {
        tree.flag(&format!("{dir}/{rel}"))
            .map(|f| f.unwrap_or(false))
    };
    let mut luns = Vec::new();
    for l in tree.children(&format!("{dir}/lun")) {
        let ldir = format!("{dir}/lun/{l}");
        let index = numbered(l, "lun").ok_or_else(|| bad(&ldir, l, "expected lun_<n>"))?;
        // an unlinked LUN directory exports nothing yet
        let Some((link, target)) = tree.links_in(&ldir).into_iter().next() else {
            continue;
        };
        let link_path = format!("{ldir}/{link}");
        let resolved = resolve(&link_path, target)
            .ok_or_else(|| bad(&link_path, target, "link leaves the target tree"))?;
        let backstore = match resolved.split('/').collect::<Vec<_>>()[..] {
            ["core", hba, name] => BackstoreRef {
                hba: hba.to_owned(),
                name: name.to_owned(),
            },
            _ => {
                return Err(bad(
                    &link_path,
                    target,
                    "expected a link to core/<hba>/<name>",
                ));
            }
        };
        luns.push(Lun { index, backstore });
    }
    luns.sort_by_key(|l| l.index);

    let mut acls = Vec::new();
    for initiator in tree.children(&format!("{dir}/acls")) {
        let adir = format!("{dir}/acls/{initiator}");
        let mut mapped_luns = Vec::new();
        for m in tree.children(&adir) {
            let Some(index) = numbered(m, "lun") else {
                continue; // auth/, attrib/, param/, fabric_statistics/
            };
            let mdir = format!("{adir}/{m}");
            let Some((link, target)) = tree.links_in(&mdir).into_iter().next() else {
                continue;
            };
            let link_path = format!("{mdir}/{link}");
            let tpg_lun = resolve(&link_path, target)
                .and_then(|r| {
                    let lun = r.strip_prefix(dir)?.strip_prefix("/lun/")?;
                    numbered(lun, "lun")
                })
                .ok_or_else(|| bad(&link_path, target, "expected a link to this TPG's lun_<n>"))?;
            mapped_luns.push(MappedLun {
                index,
                tpg_lun,
                write_protect: tree
                    .flag(&format!("{mdir}/write_protect"))?
                    .unwrap_or(false),
            });
        }
        mapped_luns.sort_by_key(|m| m.index);
        let logged_in = tree
            .text(&format!("{adir}/info"))
            .is_some_and(|t| !t.is_empty() && !t.starts_with("No active iSCSI Session"));
        acls.push(Acl {
            initiator: initiator.to_owned(),
            logged_in,
            mapped_luns,
            chap: tree.chap(&format!("{adir}/auth")),
        });
    }

    Ok(Tpg {
        tag,
        enabled: flag("enable")?,
        authentication: flag("attrib/authentication")?,
        generate_node_acls: flag("attrib/generate_node_acls")?,
        portals: tree
            .children(&format!("{dir}/np"))
            .into_iter()
            .map(str::to_owned)
            .collect(),
        luns,
        acls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured in the VM lab after the target was set up and before any login; the
    // CHAP values in it are fake. See tests/fixtures/README.md.
    const DUMP: &str = include_str!("../../tests/fixtures/iscsi/configfs-target.txt");
    const IQN: &str = "iqn.2003-01.dev.cinderblock.lab:vol1";
    const INITIATOR: &str = "iqn.1994-05.com.example:client1";

    fn fixture() -> Lio {
        Lio::from_entries(&parse_dump(DUMP).unwrap()).unwrap()
    }

    #[test]
    fn dump_lines_become_entries() {
        let entries = parse_dump(DUMP).unwrap();
        assert_eq!(entries.len(), 200);
        assert_eq!(entries[0], Entry::Dir("core".into()));
        assert!(entries.contains(&Entry::Unreadable("core/iblock_0/vol1/control".into())));
        assert!(entries.contains(&Entry::Link {
            path: format!("iscsi/{IQN}/tpgt_1/lun/lun_0/vol1"),
            target: "../../../../../../target/core/iblock_0/vol1".into(),
        }));
        // escaped newlines come back as newlines
        let info = entries
            .iter()
            .find_map(|e| match e {
                Entry::Attr { path, value } if path == "core/iblock_0/vol1/info" => Some(value),
                _ => None,
            })
            .unwrap();
        assert!(info.contains("\n        iBlock device: dm-0  UDEV PATH: /dev/labvg/vol1"));
        // empty values keep their attribute
        assert!(entries.contains(&Entry::Attr {
            path: "core/iblock_0/vol1/alias".into(),
            value: String::new()
        }));
    }

    #[test]
    fn backstore_from_the_fixture() {
        assert_eq!(
            fixture().backstores,
            [Backstore {
                kind: BackstoreKind::Block,
                hba_index: 0,
                name: "vol1".into(),
                enabled: true,
                udev_path: Some("/dev/labvg/vol1".into()),
                unit_serial: Some("lab-vol1-0001".into()),
                size: None,
            }]
        );
    }

    #[test]
    fn target_tpg_lun_acl_and_chap_from_the_fixture() {
        let lio = fixture();
        assert_eq!(
            lio.discovery_auth,
            Some(DiscoveryAuth {
                enforced: false,
                chap: ChapPresence::default()
            })
        );
        assert_eq!(
            lio.iscsi_targets,
            [IscsiTarget {
                iqn: IQN.into(),
                tpgs: vec![Tpg {
                    tag: 1,
                    enabled: true,
                    authentication: true,
                    generate_node_acls: false,
                    portals: vec!["127.0.0.1:3260".into()],
                    luns: vec![Lun {
                        index: 0,
                        backstore: BackstoreRef {
                            hba: "iblock_0".into(),
                            name: "vol1".into()
                        },
                    }],
                    acls: vec![Acl {
                        initiator: INITIATOR.into(),
                        logged_in: false,
                        mapped_luns: vec![MappedLun {
                            index: 0,
                            tpg_lun: 0,
                            write_protect: false
                        }],
                        chap: ChapPresence {
                            one_way: Some(
                                crate::iscsi::chap::Chap::parse("lab-chap-user:FAKE-lab-secret0")
                                    .unwrap()
                                    .print()
                            ),
                            mutual: None,
                        },
                    }],
                }],
            }]
        );
        assert_eq!(
            lio.iscsi_targets[0].tpgs[0].luns[0].backstore,
            lio.backstores[0].reference()
        );
    }

    #[test]
    fn the_model_never_holds_the_secret() {
        assert!(DUMP.contains("auth/password = FAKE-lab-secret0"));
        let shown = format!("{:?}", fixture());
        assert!(!shown.contains("FAKE-lab-secret0"), "{shown}");
        assert!(!shown.contains("lab-chap-user"), "{shown}");
    }

    #[test]
    fn null_credentials_are_unset_and_fileio_sizes_are_read() {
        let lio = edited(|l| {
            Some(
                l.replace("auth/password = FAKE-lab-secret0", "auth/password = NULL")
                    .replace("d core/iblock_0", "d core/fileio_3")
                    .replace("core/iblock_0/", "core/fileio_3/"),
            )
        })
        .unwrap();
        assert_eq!(lio.iscsi_targets[0].tpgs[0].acls[0].chap.one_way, None);
        assert_eq!(lio.backstores[0].kind, BackstoreKind::File);
        // The fixture's info is an iblock one: no size in it.
        assert_eq!(lio.backstores[0].size, None);
        assert_eq!(
            fileio_size(
                "Status: ACTIVATED  Max Queue Depth: 0  SectorSize: 512  HwMaxSectors: 16384\n        TCM FILEIO ID: 0        File: /srv/f1  Size: 67108864  Mode: O_DSYNC Async: 0"
            ),
            Some(64 << 20)
        );
    }

    /// The fixture with `edit` applied to its lines.
    fn edited(edit: impl Fn(&str) -> Option<String>) -> Result<Lio, ConfigfsError> {
        let text: Vec<String> = DUMP.lines().filter_map(&edit).collect();
        Lio::from_entries(&parse_dump(&text.join("\n"))?)
    }

    #[test]
    fn an_unlinked_lun_exports_nothing_and_an_unlinked_mapping_maps_nothing() {
        let lio = edited(|l| (!l.starts_with("l ")).then(|| l.to_owned())).unwrap();
        let tpg = &lio.iscsi_targets[0].tpgs[0];
        assert!(tpg.luns.is_empty());
        assert!(tpg.acls[0].mapped_luns.is_empty());
    }

    #[test]
    fn absolute_link_targets_resolve_too() {
        let lio = edited(|l| {
            Some(l.replace(
                "../../../../../../target/core/",
                "/sys/kernel/config/target/core/",
            ))
        })
        .unwrap();
        assert_eq!(lio.iscsi_targets[0].tpgs[0].luns[0].backstore.name, "vol1");
    }

    #[test]
    fn bad_known_values_name_the_path() {
        let err =
            edited(|l| Some(l.replace("tpgt_1/enable = 1", "tpgt_1/enable = yes"))).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(r#"configfs iscsi/{IQN}/tpgt_1/enable: "yes": expected 0 or 1"#)
        );
        let err = edited(|l| {
            Some(l.replace(
                "-> ../../../../../../target/core/iblock_0/vol1",
                "-> ../../../../../../target/iscsi",
            ))
        })
        .unwrap_err();
        assert!(
            matches!(err, ConfigfsError::BadValue { ref path, .. } if path.ends_with("lun/lun_0/vol1")),
            "{err}"
        );
        let err = edited(|l| {
            Some(l.replace(
                "-> ../../../../../../target/core",
                "-> ../../../../../../../../../x",
            ))
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("link leaves the target tree"),
            "{err}"
        );
    }

    #[test]
    fn unknown_entries_are_ignored() {
        let mut entries = parse_dump(DUMP).unwrap();
        entries.push(Entry::Dir(format!("iscsi/{IQN}/tpgt_1/some_future_dir")));
        entries.push(Entry::Attr {
            path: "core/iblock_0/vol1/attrib/new_knob".into(),
            value: "x".into(),
        });
        entries.push(Entry::Dir("core/unknownhba_3/thing".into()));
        assert_eq!(Lio::from_entries(&entries).unwrap(), fixture());
    }

    #[test]
    fn an_empty_tree_is_an_empty_model() {
        assert_eq!(Lio::from_entries(&[]).unwrap(), Lio::default());
    }

    #[test]
    fn malformed_dump_lines_are_numbered_errors() {
        for (text, line) in [
            ("d core\nx what", 2),
            ("f a/b", 1),
            ("l a/b c", 1),
            ("f a = bad\\escape", 1),
            ("d /abs", 1),
            ("d", 1),
        ] {
            match parse_dump(text) {
                Err(ConfigfsError::DumpLine { line: l, .. }) => assert_eq!(l, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert_eq!(
            parse_dump("f a/b =\n# comment\n\nf c = x\\\\y").unwrap(),
            [
                Entry::Attr {
                    path: "a/b".into(),
                    value: String::new()
                },
                Entry::Attr {
                    path: "c".into(),
                    value: "x\\y".into()
                },
            ]
        );
    }
}
