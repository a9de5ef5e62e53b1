//! Discovery of a `file` back end: what is ours (complete or not), what is
//! foreign, and the capacity figures.
//!
//! Cost: one `readdir` of the sidecar directory, one of the root, one `lstat`
//! per entry (from the directory entry), one read per sidecar and one
//! `statvfs`: O(number of files), never a walk of file contents (no `du`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::FileError;
use super::meta::{self, META_DIR, ObjectMeta};
pub use crate::model::Health;
use crate::model::{self, Mark, ObjKind, Observed};

/// Sizes of a data file as the filesystem reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataStat {
    /// Logical length (`st_size`).
    pub len: u64,
    /// Allocated bytes (`st_blocks` × 512).
    pub allocated: u64,
    /// The file's identity (`st_dev`, `st_ino`): what open descriptors are
    /// matched against ([`crate::inuse`]).
    pub id: (u64, u64),
}

/// An object carrying our metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Its sidecar.
    pub meta: ObjectMeta,
    /// Its data file, when present.
    pub data: Option<DataStat>,
    /// Its condition (a recorded size that differs from the data file's
    /// length: an interrupted extend, or a change outside cinderblock).
    pub health: Health,
}

/// Why an entry is foreign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForeignReason {
    /// No sidecar of ours names it.
    NoMetadata,
    /// Its sidecar says this back end let it go (`deletionPolicy:
    /// Retain`); it keeps its identity, so it can be adopted again.
    Released {
        /// The identity it had.
        uuid: Uuid,
        /// Its kind.
        kind: ObjKind,
        /// The manifest name it had.
        name: String,
    },
    /// Its sidecar names another owner (another back end on the same
    /// directory, or another tool).
    OtherOwner {
        /// The sidecar's `managedBy`.
        managed_by: String,
        /// The sidecar's back end.
        backend: String,
    },
}

/// An entry of the root that is not ours: listed, never touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Foreign {
    /// Its name relative to the root.
    pub name: PathBuf,
    /// Whether it is a directory, symlink, ...: `"file"`, `"dir"`,
    /// `"symlink"` or `"other"`.
    pub file_type: &'static str,
    /// Its `st_size`.
    pub len: u64,
    /// Why it is foreign.
    pub reason: ForeignReason,
}

/// Something discovery could not make sense of. Any problem makes the
/// inventory partial: callers must not delete on a partial view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The path concerned.
    pub path: PathBuf,
    /// What is wrong, with its cause.
    pub message: String,
}

/// Capacity of the back end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capacity {
    /// Filesystem size (`f_blocks` × `f_frsize`).
    pub total: u64,
    /// Free bytes (`f_bfree` × `f_frsize`).
    pub free: u64,
    /// Free bytes available to unprivileged users (`f_bavail` × `f_frsize`);
    /// what capacity filters should use.
    pub available: u64,
    /// The filesystem's fundamental block size (`f_frsize`).
    pub block_size: u64,
    /// Sum of our objects' logical sizes (all but those being deleted).
    pub provisioned: u64,
    /// Sum of our data files' allocated bytes.
    pub allocated: u64,
}

/// Everything discovered in one back end root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// The root.
    pub root: PathBuf,
    /// Our objects, sorted by uuid (incomplete ones included; see
    /// [`Object::health`]).
    pub objects: Vec<Object>,
    /// Entries that are not ours, sorted by name.
    pub foreign: Vec<Foreign>,
    /// Temp files of interrupted sidecar writes (harmless, ours).
    pub leftovers: Vec<PathBuf>,
    /// What could not be read.
    pub problems: Vec<Problem>,
    /// Capacity figures.
    pub capacity: Capacity,
}

impl Inventory {
    /// Whether everything was understood (no problems): only then may a plan
    /// delete anything on this back end.
    pub fn is_complete(&self) -> bool {
        self.problems.is_empty()
    }

    /// Our object with this uuid.
    pub fn object(&self, uuid: Uuid) -> Option<&Object> {
        self.objects
            .binary_search_by_key(&uuid, |o| o.meta.uuid)
            .ok()
            .map(|i| &self.objects[i])
    }

    /// Objects that need their create or delete finished.
    pub fn incomplete(&self) -> impl Iterator<Item = &Object> {
        self.objects.iter().filter(|o| {
            matches!(
                o.health,
                Health::Creating | Health::Deleting | Health::Migrating
            )
        })
    }
}

impl Inventory {
    /// This back end in the shared model: our objects (whether one is in
    /// use is for discovery to say: `observe` matches each data file's
    /// identity against one scan of open files), capacity as unprivileged
    /// users see it,
    /// foreign entries by name, problems with their paths.
    pub fn to_model(&self) -> model::Inventory {
        let objects = self
            .objects
            .iter()
            .map(|o| Observed {
                uuid: o.meta.uuid,
                name: o.meta.name.clone(),
                kind: o.meta.kind,
                size: o.meta.size,
                allocated: o.data.map(|d| d.allocated),
                parent: o.meta.parent,
                clone_of: o
                    .meta
                    .source
                    .filter(|_| o.meta.kind != ObjKind::Snapshot)
                    .map(|s| s.uuid),
                in_use: None,
                health: o.health,
                group: o.meta.group.clone(),
            })
            .collect();
        model::Inventory {
            capacity: model::Capacity {
                total: self.capacity.total,
                free: self.capacity.available,
                provisioned: self.capacity.provisioned,
                ..model::Capacity::default()
            },
            objects,
            foreign: self.foreign.iter().map(Foreign::model).collect(),
            problems: self
                .problems
                .iter()
                .map(|p| format!("{}: {}", p.path.display(), p.message))
                .collect(),
            generation: None,
        }
    }
}

/// Discovers the back end rooted at `root`, owned under the name `backend`.
pub fn discover(root: &Path, backend: &str) -> Result<Inventory, FileError> {
    let root_meta = fs::metadata(root).map_err(|_| FileError::RootMissing {
        path: root.to_owned(),
    })?;
    if !root_meta.is_dir() {
        return Err(FileError::RootMissing {
            path: root.to_owned(),
        });
    }
    let mut inv = Inventory {
        root: root.to_owned(),
        objects: Vec::new(),
        foreign: Vec::new(),
        leftovers: Vec::new(),
        problems: Vec::new(),
        capacity: Capacity::default(),
    };

    let sidecars = read_sidecars(root, backend, &mut inv)?;

    let data = scan_root(root, backend, &sidecars, &mut inv)?;

    for (uuid, sidecar) in sidecars {
        let Sidecar::Ours(meta) = sidecar else {
            continue;
        };
        let stat = data.get(&uuid).copied();
        let health = match (meta.state, stat) {
            // A chain snapshot being taken on a migration's target.
            (Mark::Creating, _) if meta.migration.is_some() => Health::Migrating,
            (Mark::Creating | Mark::Deleting | Mark::Migrating, _) => Health::of_mark(meta.state),
            (Mark::Ready, None) => Health::DataMissing,
            (Mark::Ready, Some(s)) if s.len != meta.size => Health::SizeMismatch {
                recorded: meta.size,
                actual: s.len,
            },
            (Mark::Ready, Some(_)) => Health::Ready,
        };
        if meta.state != Mark::Deleting {
            inv.capacity.provisioned += meta.size;
        }
        inv.capacity.allocated += stat.map_or(0, |s| s.allocated);
        inv.objects.push(Object {
            meta,
            data: stat,
            health,
        });
    }
    inv.foreign.sort_by(|a, b| a.name.cmp(&b.name));

    let vfs = nix::sys::statvfs::statvfs(root).map_err(|errno| FileError::Io {
        op: "statvfs",
        path: root.to_owned(),
        source: errno.into(),
    })?;
    // These fields are u64 on 64-bit Linux but 32-bit on some 32-bit targets.
    #[allow(clippy::useless_conversion)]
    {
        let frsize = u64::from(vfs.fragment_size());
        inv.capacity.block_size = frsize;
        inv.capacity.total = u64::from(vfs.blocks()) * frsize;
        inv.capacity.free = u64::from(vfs.blocks_free()) * frsize;
        inv.capacity.available = u64::from(vfs.blocks_available()) * frsize;
    }
    tracing::debug!(
        root = %root.display(), objects = inv.objects.len(), foreign = inv.foreign.len(),
        problems = inv.problems.len(), "discovered"
    );
    Ok(inv)
}

/// One pass over the root: data files of ours (by uuid) go to the result,
/// everything else to `inv.foreign`.
fn scan_root(
    root: &Path,
    backend: &str,
    sidecars: &BTreeMap<Uuid, Sidecar>,
    inv: &mut Inventory,
) -> Result<BTreeMap<Uuid, DataStat>, FileError> {
    let mut data: BTreeMap<Uuid, DataStat> = BTreeMap::new();
    // Adopted files keep their names: their sidecars name them.
    let adopted: BTreeMap<&str, (ObjKind, Uuid)> = sidecars
        .iter()
        .filter_map(|(u, s)| match s {
            Sidecar::Ours(m) | Sidecar::Other(m) => Some((m.file.as_deref()?, (m.kind, *u))),
            Sidecar::Broken => None,
        })
        .collect();
    for entry in read_dir(root)? {
        let entry = entry.map_err(FileError::io("read directory", root))?;
        let name = entry.file_name();
        if name == META_DIR {
            continue;
        }
        let path = root.join(&name);
        let stat = match entry.metadata() {
            Ok(m) => m,
            // Removed between readdir and stat: it is gone, nothing to report.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                inv.problems.push(Problem {
                    path,
                    message: format!("cannot stat: {e}"),
                });
                continue;
            }
        };
        let parsed = name
            .to_str()
            .and_then(|n| adopted.get(n).copied().or_else(|| meta::parse_file_name(n)));
        let mut reason = ForeignReason::NoMetadata;
        if let Some((kind, uuid)) = parsed {
            match sidecars.get(&uuid) {
                Some(Sidecar::Ours(m)) if m.kind == kind => {
                    if stat.file_type().is_file() {
                        data.insert(
                            uuid,
                            DataStat {
                                len: stat.len(),
                                allocated: stat.blocks() * 512,
                                id: (stat.dev(), stat.ino()),
                            },
                        );
                    } else {
                        inv.problems.push(Problem {
                            path,
                            message: "data file of ours is not a regular file".into(),
                        });
                    }
                    continue;
                }
                Some(Sidecar::Broken) => continue, // reported with its sidecar
                Some(Sidecar::Other(m))
                    if m.kind == kind
                        && m.owner.managed_by == meta::RELEASED_BY
                        && m.owner.backend == backend =>
                {
                    reason = ForeignReason::Released {
                        uuid,
                        kind,
                        name: m.name.clone(),
                    };
                }
                Some(Sidecar::Other(m)) if m.kind == kind => {
                    reason = ForeignReason::OtherOwner {
                        managed_by: m.owner.managed_by.clone(),
                        backend: m.owner.backend.clone(),
                    };
                }
                _ => {}
            }
        }
        inv.foreign.push(foreign(&name, &stat, reason));
    }
    Ok(data)
}

enum Sidecar {
    Ours(ObjectMeta),
    Other(ObjectMeta),
    Broken,
}

/// Reads `.cinderblock/`; a uuid-keyed map sorted by uuid.
fn read_sidecars(
    root: &Path,
    backend: &str,
    inv: &mut Inventory,
) -> Result<BTreeMap<Uuid, Sidecar>, FileError> {
    let dir = meta::meta_dir(root);
    let mut sidecars = BTreeMap::new();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(sidecars),
        Err(source) => {
            return Err(FileError::Io {
                op: "read directory",
                path: dir,
                source,
            });
        }
    };
    // One buffer for every sidecar (thousands per discovery).
    let mut buf = Vec::with_capacity(4096);
    for entry in entries {
        let entry = entry.map_err(FileError::io("read directory", &dir))?;
        let name = entry.file_name();
        let path = dir.join(&name);
        let text = name.to_string_lossy();
        let uuid = text.strip_suffix(".json").and_then(|stem| {
            Uuid::try_parse(stem)
                .ok()
                .filter(|u| u.hyphenated().to_string() == stem)
        });
        let Some(uuid) = uuid else {
            if text.starts_with('.') && text.contains(".tmp-") {
                inv.leftovers.push(path);
            } else if super::pit::is_base(&text) {
                // A backup's kept base ([`super::pit`]): ours, not an object.
            } else if let Ok(stat) = entry.metadata() {
                // Not ours to judge: list it like any foreign entry.
                let rel = Path::new(META_DIR).join(&name);
                inv.foreign
                    .push(foreign(rel.as_os_str(), &stat, ForeignReason::NoMetadata));
            }
            continue;
        };
        let parsed = read_into(&path, &mut buf)
            .map_err(FileError::io("read", &path))
            .and_then(|()| meta::parse_sidecar(&path, &buf));
        let sidecar = match parsed {
            Ok(m) if m.uuid != uuid => {
                inv.problems.push(Problem {
                    path,
                    message: format!("names uuid {}, not the one in its file name", m.uuid),
                });
                Sidecar::Broken
            }
            Ok(m) if m.owned_by(backend) => Sidecar::Ours(m),
            Ok(m) => Sidecar::Other(m),
            Err(e) => {
                inv.problems.push(Problem {
                    path,
                    message: error_chain(&e),
                });
                Sidecar::Broken
            }
        };
        sidecars.insert(uuid, sidecar);
    }
    inv.leftovers.sort();
    Ok(sidecars)
}

impl Foreign {
    /// As the pipeline sees it: a regular file is a volume's data as it is
    /// (its length is its size); anything else cannot be one.
    pub fn model(&self) -> model::Foreign {
        let unfit = (self.file_type != "file").then(|| {
            format!(
                "a {} (only a regular file can hold a volume)",
                match self.file_type {
                    "dir" => "directory",
                    "symlink" => "symbolic link",
                    _ => "special file",
                }
            )
        });
        let released = match &self.reason {
            ForeignReason::Released { uuid, kind, name } => Some(model::Released {
                uuid: *uuid,
                kind: *kind,
                name: name.clone(),
            }),
            _ => None,
        };
        model::Foreign {
            name: self.name.display().to_string(),
            size: (self.file_type == "file").then_some(self.len),
            unfit,
            released,
        }
    }
}

/// Reads the file at `path` into `buf` (replacing its content): open, read
/// to the end, close, without the size query `fs::read` makes first.
fn read_into(path: &Path, buf: &mut Vec<u8>) -> io::Result<()> {
    use std::io::Read;
    buf.clear();
    let mut f = fs::File::open(path)?;
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(4096);
        }
        let start = buf.len();
        let cap = buf.capacity();
        buf.resize(cap, 0);
        match f.read(&mut buf[start..]) {
            Ok(0) => {
                buf.truncate(start);
                return Ok(());
            }
            Ok(n) => buf.truncate(start + n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => buf.truncate(start),
            Err(e) => {
                buf.truncate(start);
                return Err(e);
            }
        }
    }
}

fn read_dir(root: &Path) -> Result<fs::ReadDir, FileError> {
    fs::read_dir(root).map_err(FileError::io("read directory", root))
}

fn foreign(name: &std::ffi::OsStr, stat: &fs::Metadata, reason: ForeignReason) -> Foreign {
    let ft = stat.file_type();
    Foreign {
        name: PathBuf::from(OsString::from(name)),
        file_type: if ft.is_file() {
            "file"
        } else if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else {
            "other"
        },
        len: stat.len(),
        reason,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
