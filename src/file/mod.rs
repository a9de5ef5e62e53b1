//! The `file` back end: volumes as files in a directory (a local path, or an
//! NFS share mounted there). Cinder's NFS driver, done right.
//!
//! Owns the back end root's layout, identity metadata, discovery, and the
//! create / extend / snapshot / clone / rename / delete operations. The API
//! takes plain values (`Uuid`, sizes in bytes, [`Allocation`]); mapping
//! manifests onto it is the executor's job.
//!
//! # Layout
//! ```text
//! ROOT/volume-<uuid>               data files, named like Cinder's
//! ROOT/snapshot-<uuid>             (holes are holes: sparse files)
//! ROOT/image-<uuid>
//! ROOT/.cinderblock/<uuid>.json    one sidecar per object (ObjectMeta)
//! ROOT/<anything else>             foreign: listed, never touched
//! ```
//! Identity lives in **sidecar JSON files**, not xattrs: xattrs need NFS 4.2
//! plus server support (and are silently dropped by `cp`, `rsync -a` without
//! `-X`, many backup tools); a sidecar is a plain file that works on every
//! filesystem, can be read by a person, and is replaced atomically. The cost is
//! a second directory entry per object, which the write order below makes safe.
//! A data file without a sidecar is never ours (it may be Cinder's own
//! `volume-<uuid>` on a shared export), so it is foreign.
//!
//! # Crash safety
//! Every sidecar write is temp + fsync + rename + fsync(dir) ([`write_atomic`](crate::state::atomic::write_atomic)),
//! and each step below is durable before the next starts:
//! - **create**: sidecar `creating` → data file created and filled (or copied),
//!   fsynced, root fsynced → sidecar `ready`. A crash leaves either nothing, or
//!   a `creating` sidecar with a missing or partial data file: discovery reports
//!   it as incomplete and [`FileBackend::create`] with the same uuid redoes the
//!   data step from scratch (truncate, fill or copy) and finishes.
//! - **extend**: data grown (and fsynced) → sidecar size. A crash in between
//!   shows as a size mismatch; running the extend again only writes the sidecar.
//! - **delete**: sidecar `deleting` → data file removed → sidecar removed. A
//!   crash leaves a `deleting` sidecar, reported incomplete; delete finishes it.
//! - **rename**: only the sidecar's `name` changes; no data is moved.
//!
//! # Invariants
//! - Paths are built from kind and uuid only; a manifest name never reaches a
//!   path or a command.
//! - Only objects whose sidecar carries our owner mark (`managedBy:
//!   cinderblock` and this back end's name) are modified or removed.
//! - Shrinking is refused; data is never zeroed with `dd` (`ftruncate` for
//!   sparse, `fallocate` for preallocated; zero-writing only where the
//!   filesystem refuses `fallocate`, with a warning).
//! - Capacity comes from `statvfs` and our own sidecars, never a `du`.
//!
//! # Must not
//! Spawn processes other than through [`crate::exec`] (only [`mount`] does),
//! decide placement or ordering (the planner's), or hold the state lock (the
//! executor does). Concurrent agents on one share from two hosts are not
//! coordinated here: one back end, one owner host.

pub mod copy;
pub mod discover;
pub mod meta;
pub mod mount;
mod pit;
pub mod seam;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use chrono::Utc;
use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, fallocate};
use uuid::Uuid;

pub use crate::model::{Mark, ObjKind};
pub use copy::{CopyError, CopyMethod, CopyStats};
pub use discover::{Capacity, DataStat, Foreign, ForeignReason, Health, Inventory, Object};
pub use meta::{Allocation, MigrationMark, ObjectMeta, Owner, SourceRef};
pub use seam::FileDriver;

use crate::state::atomic::{AtomicError, fsync_dir};
use meta::{MANAGED_BY, META_DIR, META_FORMAT, META_VERSION};

/// Errors of the `file` back end.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A filesystem operation failed.
    #[error("{op} {path}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The back end root is not a directory (for NFS: not mounted?).
    #[error("back end root {path} is not a directory")]
    RootMissing {
        /// The root.
        path: PathBuf,
    },
    /// A sidecar is not valid JSON of our schema.
    #[error("{path}: unreadable object metadata")]
    BadMetadata {
        /// The sidecar.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A sidecar of another format or a newer version.
    #[error(
        "{path}: metadata format {format:?} version {version} is not one this cinderblock reads"
    )]
    MetadataVersion {
        /// The sidecar.
        path: PathBuf,
        /// Its format tag.
        format: String,
        /// Its version.
        version: u32,
    },
    /// Writing a sidecar failed.
    #[error("cannot write object metadata")]
    Metadata {
        /// The sidecar.
        path: PathBuf,
        /// Why.
        #[source]
        source: AtomicError,
    },
    /// No object with this uuid has our metadata.
    #[error("no object {uuid} in {root}")]
    NotFound {
        /// The uuid.
        uuid: Uuid,
        /// The back end root.
        root: PathBuf,
    },
    /// The object's sidecar carries another owner.
    #[error("{path} is owned by {managed_by}/{backend}, not cinderblock/{ours}; not touching it")]
    NotOurs {
        /// The sidecar.
        path: PathBuf,
        /// Its `managedBy`.
        managed_by: String,
        /// Its back end.
        backend: String,
        /// Our back end name.
        ours: String,
    },
    /// A data file exists where we would create one, without our metadata.
    #[error("{path} exists but has no cinderblock metadata; not touching it")]
    Foreign {
        /// The file.
        path: PathBuf,
    },
    /// A smaller size than the current one was asked for.
    #[error("refusing to shrink {name} ({uuid}) from {from} to {to} bytes")]
    Shrink {
        /// The object's name.
        name: String,
        /// Its uuid.
        uuid: Uuid,
        /// Current size in bytes.
        from: u64,
        /// Requested size in bytes.
        to: u64,
    },
    /// The request contradicts what exists.
    #[error("{name} ({uuid}): {reason}")]
    Conflict {
        /// The object's name.
        name: String,
        /// Its uuid.
        uuid: Uuid,
        /// What contradicts.
        reason: String,
    },
    /// Something else holds the object's data file open.
    #[error("{path} is in use by {holder}; not removing it")]
    InUse {
        /// The data file.
        path: PathBuf,
        /// Who holds it ([`crate::inuse::Holder`], or why that cannot be told).
        holder: String,
    },
    /// Copying data for a snapshot or clone failed.
    #[error("cannot copy data for {uuid}")]
    Copy {
        /// The object being created.
        uuid: Uuid,
        /// Why.
        #[source]
        source: CopyError,
    },
}

impl FileError {
    fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_owned();
        move |source| Self::Io { op, path, source }
    }

    /// I/O can be worth retrying (an NFS server that went away, a full file
    /// system freed); refusals and conflicts need a change first.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Io { .. } | Self::Metadata { .. } | Self::Copy { .. }
        )
    }
}

pub use crate::model::Change;

/// What to create.
#[derive(Debug, Clone, Copy)]
pub struct NewObject<'a> {
    /// Identity (chosen by the planner, journalled, reused on retry).
    pub uuid: Uuid,
    /// The manifest name (data only).
    pub name: &'a str,
    /// Volume, snapshot or image.
    pub kind: ObjKind,
    /// Logical size in bytes (at least the source's size for copies).
    pub size: u64,
    /// Sparse or preallocated.
    pub allocation: Allocation,
    /// Copy the data of this object (required for snapshots: the volume).
    pub source: Option<SourceRef>,
}

/// What [`FileBackend::create`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    /// Whether anything was done.
    pub change: Change,
    /// The copy's figures, for objects created from a source.
    pub copy: Option<CopyStats>,
}

/// One `file` back end: a root directory and the back end name written into
/// every owner mark.
#[derive(Debug, Clone)]
pub struct FileBackend {
    root: PathBuf,
    backend: String,
}

impl FileBackend {
    /// A back end rooted at `root` (which must exist when used), owned under
    /// the name `backend`.
    pub fn new(root: impl Into<PathBuf>, backend: impl Into<String>) -> Self {
        Self {
            root: root.into(),
            backend: backend.into(),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The back end name in owner marks.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The data file path of an object.
    pub fn data_path(&self, kind: ObjKind, uuid: Uuid) -> PathBuf {
        self.root.join(meta::file_name(kind, uuid))
    }

    /// The data file path of an object of ours: `<kind>-<uuid>`, or the
    /// name an adopted file kept.
    pub fn path_of(&self, meta: &ObjectMeta) -> PathBuf {
        self.root.join(meta.file_name())
    }

    /// Lists what is in the root; see [`discover::discover`].
    pub fn discover(&self) -> Result<Inventory, FileError> {
        discover::discover(&self.root, &self.backend)
    }

    /// Our metadata for `uuid`, if any (another owner's is an error).
    pub fn get(&self, uuid: Uuid) -> Result<Option<ObjectMeta>, FileError> {
        match meta::read_sidecar(&self.root, uuid)? {
            Some(m) if !m.owned_by(&self.backend) => Err(self.not_ours(&m)),
            other => Ok(other),
        }
    }

    fn ours(&self, uuid: Uuid) -> Result<ObjectMeta, FileError> {
        self.get(uuid)?.ok_or_else(|| FileError::NotFound {
            uuid,
            root: self.root.clone(),
        })
    }

    fn not_ours(&self, m: &ObjectMeta) -> FileError {
        FileError::NotOurs {
            path: meta::sidecar_path(&self.root, m.uuid),
            managed_by: m.owner.managed_by.clone(),
            backend: m.owner.backend.clone(),
            ours: self.backend.clone(),
        }
    }

    fn check_root(&self) -> Result<(), FileError> {
        if self.root.is_dir() {
            Ok(())
        } else {
            Err(FileError::RootMissing {
                path: self.root.clone(),
            })
        }
    }

    /// Creates an object, empty or copied from `spec.source`; idempotent by
    /// uuid: finishes an incomplete create, and reports `Unchanged` for a
    /// complete one of the same size.
    pub fn create(&self, spec: &NewObject<'_>) -> Result<Created, FileError> {
        self.create_marked(spec, Mark::Ready)
    }

    /// Creates an empty volume left marked `creating`, for a restore to fill
    /// and [`FileBackend::mark_ready`] to finish. An interrupted one of the
    /// same uuid is emptied again; a ready one is refused (a fill never
    /// writes over a volume someone may use).
    pub fn create_filling(&self, spec: &NewObject<'_>) -> Result<Change, FileError> {
        let conflict = |reason: &str| FileError::Conflict {
            name: spec.name.to_owned(),
            uuid: spec.uuid,
            reason: reason.to_owned(),
        };
        if spec.source.is_some() {
            return Err(conflict("a volume to fill is created empty"));
        }
        if self.get(spec.uuid)?.is_some_and(|m| m.state == Mark::Ready) {
            return Err(conflict("exists already and is ready"));
        }
        Ok(self.create_marked(spec, Mark::Creating)?.change)
    }

    /// Writes volume `uuid`'s consistency group into its sidecar (one atomic
    /// write; none when it holds that already).
    pub fn set_group(&self, uuid: Uuid, group: Option<&str>) -> Result<Change, FileError> {
        let mut meta = self.ours(uuid)?;
        if meta.group.as_deref() == group {
            return Ok(Change::Unchanged);
        }
        meta.group = group.map(str::to_owned);
        meta::write_sidecar(&self.root, &meta)?;
        Ok(Change::Changed)
    }

    /// Clears a finished fill's `creating` mark, or promotes a migration's
    /// target ([`FileBackend::promote`]); `Unchanged` when ready.
    pub fn mark_ready(&self, uuid: Uuid) -> Result<Change, FileError> {
        let mut meta = self.ours(uuid)?;
        match meta.state {
            Mark::Ready => Ok(Change::Unchanged),
            Mark::Migrating => self.promote(uuid),
            Mark::Creating => {
                meta.state = Mark::Ready;
                meta::write_sidecar(&self.root, &meta)?;
                Ok(Change::Changed)
            }
            Mark::Deleting => Err(FileError::Conflict {
                name: meta.name.clone(),
                uuid,
                reason: "is being deleted; finish the delete first".into(),
            }),
        }
    }

    fn create_marked(&self, spec: &NewObject<'_>, done: Mark) -> Result<Created, FileError> {
        self.check_root()?;
        let conflict = |reason: String| FileError::Conflict {
            name: spec.name.to_owned(),
            uuid: spec.uuid,
            reason,
        };
        if spec.kind == ObjKind::Snapshot && spec.source.is_none_or(|s| s.kind != ObjKind::Volume) {
            return Err(conflict("a snapshot needs a volume as its source".into()));
        }
        let Some(mut meta) = self.begin_create(spec)? else {
            return Ok(Created {
                change: Change::Unchanged,
                copy: None,
            });
        };

        // The data step: always from scratch, so a retry after a crash
        // overwrites whatever a partial attempt left.
        let path = self.data_path(spec.kind, spec.uuid);
        let copy = match spec.source {
            None => {
                let file = open_data(&path)?;
                fill(&file, &path, 0, spec.size, spec.allocation)?;
                sync(&file, &path)?;
                None
            }
            Some(source) => Some(self.copy_from(source, spec, &path)?),
        };
        fsync_dir(&self.root).map_err(|source| FileError::Metadata {
            path: self.root.clone(),
            source,
        })?;
        spec.name.clone_into(&mut meta.name);
        meta.size = spec.size;
        meta.allocation = spec.allocation;
        meta.state = done;
        meta::write_sidecar(&self.root, &meta)?;
        tracing::info!(uuid = %spec.uuid, kind = ?spec.kind, size = spec.size, "created");
        Ok(Created {
            change: Change::Changed,
            copy,
        })
    }

    /// The first step of a create: `Ok(None)` when the object is complete
    /// already; else its metadata in state `creating` (written now for a new
    /// object, found for an interrupted one).
    fn begin_create(&self, spec: &NewObject<'_>) -> Result<Option<ObjectMeta>, FileError> {
        let conflict = |reason: String| FileError::Conflict {
            name: spec.name.to_owned(),
            uuid: spec.uuid,
            reason,
        };
        if let Some(existing) = self.get(spec.uuid)? {
            if existing.kind != spec.kind || existing.source != spec.source {
                return Err(conflict(format!(
                    "exists as a {:?} from {:?}, not a {:?} from {:?}",
                    existing.kind, existing.source, spec.kind, spec.source
                )));
            }
            match existing.state {
                Mark::Ready if existing.size == spec.size => Ok(None),
                Mark::Ready => Err(conflict(format!(
                    "exists with {} bytes, not {}; extend it instead",
                    existing.size, spec.size
                ))),
                Mark::Deleting => Err(conflict("is being deleted; finish the delete first".into())),
                Mark::Migrating => Err(conflict(
                    "is the target of a migration; finish or abandon the migration first".into(),
                )),
                Mark::Creating => {
                    tracing::info!(uuid = %spec.uuid, "finishing an interrupted create");
                    self.check_source(spec)?;
                    Ok(Some(existing))
                }
            }
        } else {
            let data = self.data_path(spec.kind, spec.uuid);
            if fs::symlink_metadata(&data).is_ok() {
                return Err(FileError::Foreign { path: data });
            }
            self.check_source(spec)?;
            self.ensure_meta_dir()?;
            let fresh = ObjectMeta {
                format: META_FORMAT.to_owned(),
                version: META_VERSION,
                uuid: spec.uuid,
                name: spec.name.to_owned(),
                kind: spec.kind,
                owner: Owner {
                    managed_by: MANAGED_BY.to_owned(),
                    backend: self.backend.clone(),
                },
                size: spec.size,
                allocation: spec.allocation,
                source: spec.source,
                parent: (spec.kind == ObjKind::Snapshot)
                    .then_some(spec.source.map(|s| s.uuid))
                    .flatten(),
                created_at: Utc::now(),
                state: Mark::Creating,
                migration: None,
                file: None,
                group: None,
            };
            meta::write_sidecar(&self.root, &fresh)?;
            Ok(Some(fresh))
        }
    }

    /// Checks a copy's source before anything is written: ours, ready, of
    /// the kind named, and not larger than the copy.
    fn check_source(&self, spec: &NewObject<'_>) -> Result<(), FileError> {
        let Some(source) = spec.source else {
            return Ok(());
        };
        let src_meta = self.ours(source.uuid)?;
        let conflict = |reason: String| FileError::Conflict {
            name: spec.name.to_owned(),
            uuid: spec.uuid,
            reason,
        };
        if src_meta.kind != source.kind || src_meta.state != Mark::Ready {
            return Err(conflict(format!(
                "source {:?} {} is a {:?} in state {:?}, not a ready {:?}",
                src_meta.name, source.uuid, src_meta.kind, src_meta.state, source.kind
            )));
        }
        if spec.size < src_meta.size {
            return Err(conflict(format!(
                "{} bytes is smaller than its source {:?} ({} bytes)",
                spec.size, src_meta.name, src_meta.size
            )));
        }
        Ok(())
    }

    fn copy_from(
        &self,
        source: SourceRef,
        spec: &NewObject<'_>,
        path: &Path,
    ) -> Result<CopyStats, FileError> {
        let src_path = match self.get(source.uuid)? {
            Some(m) => self.path_of(&m),
            None => self.data_path(source.kind, source.uuid),
        };
        let src_file = File::open(&src_path).map_err(FileError::io("open", &src_path))?;
        let file = open_data(path)?;
        let stats = copy::copy_open(&src_file, &src_path, &file, path).map_err(|source| {
            FileError::Copy {
                uuid: spec.uuid,
                source,
            }
        })?;
        match spec.allocation {
            Allocation::Sparse => fill(&file, path, stats.len, spec.size, Allocation::Sparse)?,
            // Reserve the whole range: holes of the copy get unwritten
            // extents, data stays.
            Allocation::Preallocated => fill(&file, path, 0, spec.size, Allocation::Preallocated)?,
        }
        sync(&file, path)?;
        Ok(stats)
    }

    /// A snapshot of volume `volume` named `name` with uuid `uuid`: a sparse
    /// (or reflinked) copy at the volume's size.
    pub fn snapshot(&self, volume: Uuid, uuid: Uuid, name: &str) -> Result<Created, FileError> {
        let vol = self.ours(volume)?;
        self.create(&NewObject {
            uuid,
            name,
            kind: ObjKind::Snapshot,
            size: vol.size,
            allocation: Allocation::Sparse,
            source: Some(SourceRef {
                kind: ObjKind::Volume,
                uuid: volume,
            }),
        })
    }

    /// Grows a volume to `size` bytes; the new range is reserved per
    /// `allocation`. Refuses to shrink.
    pub fn extend(
        &self,
        uuid: Uuid,
        size: u64,
        allocation: Allocation,
    ) -> Result<Change, FileError> {
        self.check_root()?;
        let mut meta = self.ours(uuid)?;
        let conflict = |reason: String| FileError::Conflict {
            name: meta.name.clone(),
            uuid,
            reason,
        };
        // (A migration's target grows along the chain it carries.)
        if !matches!(meta.state, Mark::Ready | Mark::Migrating) {
            return Err(conflict(format!("is {:?}, not ready", meta.state)));
        }
        if meta.kind != ObjKind::Volume {
            return Err(conflict(format!("a {:?} cannot be extended", meta.kind)));
        }
        if size < meta.size {
            return Err(FileError::Shrink {
                name: meta.name,
                uuid,
                from: meta.size,
                to: size,
            });
        }
        let path = self.path_of(&meta);
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(FileError::io("open", &path))?;
        let len = file.metadata().map_err(FileError::io("stat", &path))?.len();
        if size == meta.size && len >= size {
            return Ok(Change::Unchanged);
        }
        if len > size {
            return Err(conflict(format!(
                "data file holds {len} bytes, more than the {size} asked for"
            )));
        }
        fill(&file, &path, len, size, allocation)?;
        sync(&file, &path)?;
        meta.size = size;
        meta::write_sidecar(&self.root, &meta)?;
        tracing::info!(%uuid, size, "extended");
        Ok(Change::Changed)
    }

    /// Changes the recorded name (nothing else moves).
    pub fn rename(&self, uuid: Uuid, name: &str) -> Result<Change, FileError> {
        let mut meta = self.ours(uuid)?;
        if meta.name == name {
            return Ok(Change::Unchanged);
        }
        name.clone_into(&mut meta.name);
        meta::write_sidecar(&self.root, &meta)?;
        Ok(Change::Changed)
    }

    /// Releases an object (`deletionPolicy: Retain` after its manifest was
    /// removed): its data stays, its sidecar stays for people to read, but
    /// the owner mark becomes [`meta::RELEASED_BY`], so from now on it is
    /// foreign to every back end and never touched again. Absent or already
    /// released is `Unchanged`.
    pub fn release(&self, uuid: Uuid) -> Result<Change, FileError> {
        self.check_root()?;
        let Some(mut meta) = self.get(uuid)? else {
            return Ok(Change::Unchanged);
        };
        if meta.owner.managed_by == meta::RELEASED_BY {
            return Ok(Change::Unchanged);
        }
        if !meta.owned_by(&self.backend) {
            return Err(self.not_ours(&meta));
        }
        meta::RELEASED_BY.clone_into(&mut meta.owner.managed_by);
        meta::write_sidecar(&self.root, &meta)?;
        pit::remove_bases(&self.root, uuid)?;
        tracing::info!(%uuid, "released");
        Ok(Change::Changed)
    }

    /// Marks foreign file `entry` of the root as object `uuid` of ours: one
    /// atomic sidecar write naming it (its data and name stay). A file this
    /// back end released and whose sidecar still names `uuid` is taken
    /// back by rewriting its owner. `Unchanged` once `uuid` is ours.
    /// Refused: a name that is not a plain entry of the root, a missing or
    /// non-regular file, a size other than `size` (it changed since the
    /// plan), or a file another sidecar claims.
    #[allow(clippy::too_many_arguments)] // each piece named
    pub fn adopt(
        &self,
        entry: &str,
        uuid: Uuid,
        name: &str,
        kind: ObjKind,
        parent: Option<Uuid>,
        size: u64,
        allocation: Allocation,
    ) -> Result<Change, FileError> {
        self.check_root()?;
        let conflict = |reason: String| FileError::Conflict {
            name: name.to_owned(),
            uuid,
            reason,
        };
        if entry.is_empty()
            || entry.contains('/')
            || entry == "."
            || entry == ".."
            || entry == META_DIR
        {
            return Err(conflict(format!(
                "{entry:?} is not a file name in the back end's root"
            )));
        }
        let existing = meta::read_sidecar(&self.root, uuid)?;
        if let Some(m) = &existing
            && m.owned_by(&self.backend)
        {
            return Ok(Change::Unchanged);
        }
        let path = self.root.join(entry);
        let stat = fs::symlink_metadata(&path).map_err(FileError::io("stat", &path))?;
        if !stat.file_type().is_file() {
            return Err(conflict(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        if stat.len() != size {
            return Err(conflict(format!(
                "{} is {} bytes, not the {size} bytes planned (it changed since the plan)",
                path.display(),
                stat.len()
            )));
        }
        let meta = match existing {
            Some(mut m)
                if m.owner.managed_by == meta::RELEASED_BY
                    && m.owner.backend == self.backend
                    && m.file_name() == entry =>
            {
                MANAGED_BY.clone_into(&mut m.owner.managed_by);
                name.clone_into(&mut m.name);
                m
            }
            Some(m) => return Err(self.not_ours(&m)),
            None => {
                // Another sidecar naming this file (ours or not) owns it.
                if let Some(other) = self.claimant(entry)? {
                    return Err(conflict(format!(
                        "{} is the data of object {other}",
                        path.display()
                    )));
                }
                self.ensure_meta_dir()?;
                ObjectMeta {
                    format: META_FORMAT.to_owned(),
                    version: META_VERSION,
                    uuid,
                    name: name.to_owned(),
                    kind,
                    owner: Owner {
                        managed_by: MANAGED_BY.to_owned(),
                        backend: self.backend.clone(),
                    },
                    size,
                    allocation,
                    source: None,
                    parent,
                    created_at: Utc::now(),
                    state: Mark::Ready,
                    migration: None,
                    file: (entry != meta::file_name(kind, uuid)).then(|| entry.to_owned()),
                    group: None,
                }
            }
        };
        meta::write_sidecar(&self.root, &meta)?;
        tracing::info!(%uuid, file = %path.display(), "adopted");
        Ok(Change::Changed)
    }

    /// The object whose sidecar names data file `entry`, if any.
    fn claimant(&self, entry: &str) -> Result<Option<Uuid>, FileError> {
        if let Some((_, u)) = meta::parse_file_name(entry)
            && meta::read_sidecar(&self.root, u)?.is_some()
        {
            return Ok(Some(u));
        }
        let dir = meta::meta_dir(&self.root);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FileError::io("read directory", &dir)(e)),
        };
        for e in entries {
            let e = e.map_err(FileError::io("read directory", &dir))?;
            let Some(u) = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| Uuid::try_parse(n).ok())
            else {
                continue;
            };
            if let Ok(Some(m)) = meta::read_sidecar(&self.root, u)
                && m.file.as_deref() == Some(entry)
            {
                return Ok(Some(u));
            }
        }
        Ok(None)
    }

    /// Deletes an object carrying our mark: data, then metadata. Absent is
    /// `Unchanged`; another owner's object is refused, and so is one whose
    /// data file another process or a loop device holds open
    /// ([`FileError::InUse`]).
    pub fn delete(&self, uuid: Uuid) -> Result<Change, FileError> {
        self.check_root()?;
        let Some(mut meta) = self.get(uuid)? else {
            return Ok(Change::Unchanged);
        };
        let data = self.path_of(&meta);
        // The planner refuses this already; the check here closes the gap
        // between plan and apply (as lvremove refuses an open LV).
        let holder = match crate::inuse::holder(&data) {
            Ok(h) => h.map(|h| h.to_string()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => Some(format!("an unknown holder (cannot read /proc: {e})")),
        };
        if let Some(holder) = holder {
            return Err(FileError::InUse { path: data, holder });
        }
        if meta.state != Mark::Deleting {
            meta.state = Mark::Deleting;
            meta::write_sidecar(&self.root, &meta)?;
        }
        match fs::remove_file(&data) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(FileError::Io {
                    op: "remove",
                    path: data,
                    source,
                });
            }
        }
        let sync_err = |path: &Path| {
            let path = path.to_owned();
            move |source| FileError::Metadata { path, source }
        };
        fsync_dir(&self.root).map_err(sync_err(&self.root))?;
        pit::remove_bases(&self.root, uuid)?;
        let sidecar = meta::sidecar_path(&self.root, uuid);
        fs::remove_file(&sidecar).map_err(FileError::io("remove", &sidecar))?;
        let dir = meta::meta_dir(&self.root);
        fsync_dir(&dir).map_err(sync_err(&dir))?;
        tracing::info!(%uuid, "deleted");
        Ok(Change::Changed)
    }

    /// The target of a migration of volume `uuid`: created (sidecar
    /// `migrating` with `mark`, then an empty data file of `size` bytes,
    /// sparse) or, when it exists already as a target, found as it is (a
    /// resumed migration: its data stays). Returns the mark in force and
    /// the data file's path.
    pub fn migration_target(
        &self,
        uuid: Uuid,
        name: &str,
        size: u64,
        allocation: Allocation,
        mark: MigrationMark,
    ) -> Result<(MigrationMark, PathBuf), FileError> {
        self.check_root()?;
        let path = self.data_path(ObjKind::Volume, uuid);
        if let Some(existing) = self.get(uuid)? {
            return match (existing.state, existing.migration) {
                (Mark::Migrating, Some(m)) if existing.size == size => Ok((m, path)),
                (state, _) => Err(FileError::Conflict {
                    name: name.to_owned(),
                    uuid,
                    reason: format!(
                        "exists here as a {:?} object of {} bytes in state {state:?}, not as this migration's target of {size} bytes",
                        existing.kind, existing.size
                    ),
                }),
            };
        }
        if fs::symlink_metadata(&path).is_ok() {
            return Err(FileError::Foreign { path });
        }
        self.ensure_meta_dir()?;
        let meta = ObjectMeta {
            format: META_FORMAT.to_owned(),
            version: META_VERSION,
            uuid,
            name: name.to_owned(),
            kind: ObjKind::Volume,
            owner: Owner {
                managed_by: MANAGED_BY.to_owned(),
                backend: self.backend.clone(),
            },
            size,
            allocation,
            source: None,
            parent: None,
            created_at: Utc::now(),
            state: Mark::Migrating,
            migration: Some(mark.clone()),
            file: None,
            group: None,
        };
        meta::write_sidecar(&self.root, &meta)?;
        let file = open_data(&path)?;
        fill(&file, &path, 0, size, Allocation::Sparse)?;
        sync(&file, &path)?;
        fsync_dir(&self.root).map_err(|source| FileError::Metadata {
            path: self.root.clone(),
            source,
        })?;
        tracing::info!(%uuid, size, "migration target created");
        Ok((mark, path))
    }

    /// A snapshot `uuid` named `name` of migration target `volume`, part of
    /// the same migration: its sidecar is written `creating` with the
    /// volume's migration mark, the volume's data copied (reflink, else a
    /// sparse copy), then the sidecar says `migrating`. Discovery reads
    /// both as a migration's target; a re-run finds a `creating` one and
    /// copies again. `Unchanged` once it is `migrating`.
    pub fn migration_snapshot(
        &self,
        volume: Uuid,
        uuid: Uuid,
        name: &str,
    ) -> Result<Change, FileError> {
        self.check_root()?;
        let vol = self.ours(volume)?;
        let conflict = |reason: String| FileError::Conflict {
            name: name.to_owned(),
            uuid,
            reason,
        };
        let mark = match (&vol.migration, vol.state, vol.kind) {
            (Some(m), Mark::Migrating, ObjKind::Volume) => m.clone(),
            _ => {
                return Err(conflict(format!(
                    "its volume {volume} is a {:?} {:?}, not a migration's target",
                    vol.state, vol.kind
                )));
            }
        };
        let same = |m: &ObjectMeta| {
            m.kind == ObjKind::Snapshot
                && m.parent == Some(volume)
                && m.migration.as_ref().map(|g| g.id) == Some(mark.id)
        };
        let source = SourceRef {
            kind: ObjKind::Volume,
            uuid: volume,
        };
        let mut meta = match self.get(uuid)? {
            Some(m) if same(&m) && m.state == Mark::Migrating => return Ok(Change::Unchanged),
            Some(m) if same(&m) && m.state == Mark::Creating => {
                tracing::info!(%uuid, "copying an interrupted chain snapshot again");
                m
            }
            Some(m) => {
                return Err(conflict(format!(
                    "exists here as a {:?} {:?}, not a snapshot of this migration",
                    m.state, m.kind
                )));
            }
            None => {
                let data = self.data_path(ObjKind::Snapshot, uuid);
                if fs::symlink_metadata(&data).is_ok() {
                    return Err(FileError::Foreign { path: data });
                }
                self.ensure_meta_dir()?;
                let fresh = ObjectMeta {
                    format: META_FORMAT.to_owned(),
                    version: META_VERSION,
                    uuid,
                    name: name.to_owned(),
                    kind: ObjKind::Snapshot,
                    group: None,
                    owner: Owner {
                        managed_by: MANAGED_BY.to_owned(),
                        backend: self.backend.clone(),
                    },
                    size: vol.size,
                    allocation: Allocation::Sparse,
                    source: Some(source),
                    parent: Some(volume),
                    created_at: Utc::now(),
                    state: Mark::Creating,
                    migration: Some(mark.clone()),
                    file: None,
                };
                meta::write_sidecar(&self.root, &fresh)?;
                fresh
            }
        };
        let path = self.data_path(ObjKind::Snapshot, uuid);
        let spec = NewObject {
            uuid,
            name,
            kind: ObjKind::Snapshot,
            size: vol.size,
            allocation: Allocation::Sparse,
            source: Some(source),
        };
        self.copy_from(source, &spec, &path)?;
        fsync_dir(&self.root).map_err(|source| FileError::Metadata {
            path: self.root.clone(),
            source,
        })?;
        meta.size = vol.size;
        meta.state = Mark::Migrating;
        meta::write_sidecar(&self.root, &meta)?;
        tracing::info!(%uuid, %volume, "chain snapshot taken on a migration's target");
        Ok(Change::Changed)
    }

    /// Makes a migration's target the volume: reserves the rest of a
    /// preallocated file, syncs, and writes the sidecar `ready` without its
    /// mark. `Unchanged` when it is the volume already.
    pub fn promote(&self, uuid: Uuid) -> Result<Change, FileError> {
        let mut meta = self.ours(uuid)?;
        if meta.state == Mark::Ready && meta.migration.is_none() {
            return Ok(Change::Unchanged);
        }
        if meta.state != Mark::Migrating {
            return Err(FileError::Conflict {
                name: meta.name.clone(),
                uuid,
                reason: format!("is {:?}, not a migration's target", meta.state),
            });
        }
        let path = self.path_of(&meta);
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(FileError::io("open", &path))?;
        if meta.allocation == Allocation::Preallocated {
            fill(&file, &path, 0, meta.size, Allocation::Preallocated)?;
        }
        sync(&file, &path)?;
        meta.state = Mark::Ready;
        meta.migration = None;
        meta::write_sidecar(&self.root, &meta)?;
        tracing::info!(%uuid, "migration target promoted");
        Ok(Change::Changed)
    }

    /// Marks an object `deleting` (the first step of [`FileBackend::delete`])
    /// without removing anything yet: a migration's source once the target
    /// is verified. `Unchanged` when it is marked already.
    pub fn mark_deleting(&self, uuid: Uuid) -> Result<Change, FileError> {
        let mut meta = self.ours(uuid)?;
        if meta.state == Mark::Deleting {
            return Ok(Change::Unchanged);
        }
        meta.state = Mark::Deleting;
        meta::write_sidecar(&self.root, &meta)?;
        Ok(Change::Changed)
    }

    fn ensure_meta_dir(&self) -> Result<(), FileError> {
        let dir = meta::meta_dir(&self.root);
        match fs::create_dir(&dir) {
            Ok(()) => fsync_dir(&self.root).map_err(|source| FileError::Metadata {
                path: self.root.clone(),
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(source) => Err(FileError::Io {
                op: "create",
                path: dir,
                source,
            }),
        }
    }
}

fn open_data(path: &Path) -> Result<File, FileError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(FileError::io("create", path))
}

fn sync(file: &File, path: &Path) -> Result<(), FileError> {
    file.sync_all().map_err(FileError::io("fsync", path))
}

/// Makes `[from, to)` part of the file: sparse → `ftruncate`; preallocated →
/// `fallocate` mode 0 (zeros on read, blocks reserved), or zero-writing where
/// the filesystem refuses `fallocate`.
fn fill(
    file: &File,
    path: &Path,
    from: u64,
    to: u64,
    allocation: Allocation,
) -> Result<(), FileError> {
    if to <= from {
        return Ok(());
    }
    match allocation {
        Allocation::Sparse => {
            let len = file.metadata().map_err(FileError::io("stat", path))?.len();
            if len < to {
                file.set_len(to).map_err(FileError::io("truncate", path))?;
            }
            Ok(())
        }
        Allocation::Preallocated => {
            let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
                return Err(FileError::Io {
                    op: "fallocate",
                    path: path.to_owned(),
                    source: io::Error::new(io::ErrorKind::InvalidInput, "size beyond i64"),
                });
            };
            match fallocate(file.as_fd(), FallocateFlags::empty(), offset, len) {
                Ok(()) => Ok(()),
                Err(Errno::EOPNOTSUPP) => {
                    tracing::warn!(
                        path = %path.display(), bytes = to - from,
                        "filesystem refuses fallocate; writing zeros instead (slow)"
                    );
                    write_zeros(file, path, from, to)
                }
                Err(errno) => Err(FileError::Io {
                    op: "fallocate",
                    path: path.to_owned(),
                    source: errno.into(),
                }),
            }
        }
    }
}

fn write_zeros(file: &File, path: &Path, from: u64, to: u64) -> Result<(), FileError> {
    crate::blockio::write_zeros(file, from, to).map_err(FileError::io("write zeros to", path))
}

// Test data generators narrow integers on purpose.
#[cfg(test)]
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
mod tests;
