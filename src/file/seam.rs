//! The `file` back end behind the seam: [`FileDriver`] implements
//! [`crate::driver::Driver`] over a [`FileBackend`] and what the manifest
//! adds to it (the allocation of new volumes, the NFS share to mount, whether
//! the root is ours to create).
//!
//! Files are thin or thick by allocation, but both read zeros where nothing
//! was written and both report what they hold (`st_blocks`); snapshots are
//! copies (reflinks where the file system can); there is no pool. The data
//! path is the file itself, so copies ask it for its data extents.
//!
//! Must not: decide placement, or reach files without our sidecar (the
//! [`FileBackend`] refuses them).

use uuid::Uuid;

use super::{
    Allocation, FileBackend, FileError, MigrationMark, NewObject as FileObject, SourceRef,
};
use crate::driver::{
    Adoption, Capabilities, Change, DataPath, Discovery, Driver, DriverError, Holders, Layout,
    Mark, NewMark, NewObject, Object, Op, PathKind, PitRequest, PointInTime, Room, SnapshotSpace,
};
use crate::exec::{Exec, Runner};
use crate::model::InUse;

/// The back end in the model, each object in use when the scan saw its
/// data file (by device and inode) held open; without the scan the view is
/// partial (a problem: no deletes).
fn model_with_holders(inv: &super::Inventory, holders: &Holders) -> crate::model::Inventory {
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

/// An NFS share a back end's root is mounted from.
#[derive(Debug, Clone)]
struct Mount {
    share: String,
    options: Vec<String>,
}

/// One `file` back end, as a [`Driver`].
pub struct FileDriver<'r> {
    backend: FileBackend,
    allocation: Allocation,
    mount: Option<Mount>,
    create_root: bool,
    run: &'r dyn Runner,
}

impl FileDriver<'static> {
    /// `backend`, whose new volumes are `allocation`; its root must exist.
    pub fn local(backend: FileBackend, allocation: Allocation) -> Self {
        FileDriver::new(backend, allocation, Exec::host())
    }
}

impl<'r> FileDriver<'r> {
    /// `backend`, whose new volumes are `allocation`, running `mount`
    /// through `run`.
    pub fn new(backend: FileBackend, allocation: Allocation, run: &'r dyn Runner) -> Self {
        FileDriver {
            backend,
            allocation,
            mount: None,
            create_root: false,
            run,
        }
    }

    /// Mounts NFS `share` with `options` on the root before discovery, when
    /// it is not mounted there yet.
    #[must_use]
    pub fn mounted(mut self, share: &str, options: Vec<String>) -> Self {
        self.mount = Some(Mount {
            share: share.to_owned(),
            options,
        });
        self
    }

    /// Creates the root when it is missing (a directory below the state
    /// directory is ours to create; an absolute path must exist, since it
    /// may be a mount point whose file system is missing, and creating it
    /// would fill the root file system instead).
    #[must_use]
    pub fn creating_root(mut self) -> Self {
        self.create_root = true;
        self
    }

    /// The back end.
    pub fn backend(&self) -> &FileBackend {
        &self.backend
    }

    fn err(&self, op: Op) -> impl FnOnce(FileError) -> DriverError + '_ {
        move |e| {
            let retryable = e.is_retryable();
            DriverError::new(self.backend.backend(), op, e, retryable)
        }
    }

    fn refused(&self, op: Op, reason: String) -> DriverError {
        DriverError::refused(self.backend.backend(), op, reason)
    }

    fn find(&self, uuid: Uuid, op: Op) -> Result<super::ObjectMeta, DriverError> {
        self.backend
            .get(uuid)
            .map_err(self.err(op))?
            .ok_or_else(|| {
                self.err(op)(FileError::NotFound {
                    uuid,
                    root: self.backend.root().to_owned(),
                })
            })
    }

    /// Makes the root reachable: mounts the share, or creates a root of
    /// ours. `Err` says why discovery fails.
    fn reach_root(&self) -> Result<(), String> {
        let root = self.backend.root();
        if let Some(m) = &self.mount {
            if let Err(e) = super::mount::ensure_mounted(self.run, &m.share, root, &m.options) {
                // Tools' stderr spans lines; a plan note is one line.
                let msg = crate::error_chain(&e);
                return Err(msg.split_whitespace().collect::<Vec<_>>().join(" "));
            }
        } else if self.create_root && !root.exists() {
            std::fs::create_dir_all(root)
                .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        }
        Ok(())
    }
}

impl Driver for FileDriver<'_> {
    fn name(&self) -> &str {
        self.backend.backend()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            protocol: "nfs".into(),
            thin: self.allocation == Allocation::Sparse,
            new_reads_zero: true,
            knows_allocation: true,
            extends_with_snapshots: true,
            snapshots: SnapshotSpace::Copy,
            space: None,
            relabel: false,
            pool: None,
            delete_note: None,
            retained: format!(
                "the data stays on {} as {{kind}}-{{uuid}}, no longer managed",
                self.backend.backend()
            ),
            // No freeze point: a file system freeze (FIFREEZE) holds the
            // whole share, every volume on it, and NFS clients cannot
            // freeze the server. Idle members are consistent as they are.
            group_snapshots: crate::model::GroupSnapshots::Idle,
        }
    }

    fn discover(&self, holders: &Holders) -> (u64, Discovery) {
        if let Err(why) = self.reach_root() {
            return (1, Discovery::Failed(why));
        }
        match self.backend.discover() {
            Ok(inv) => (1, Discovery::Ok(model_with_holders(&inv, holders))),
            Err(e) => (1, Discovery::Failed(crate::error_chain(&e))),
        }
    }

    fn create(&self, new: &NewObject<'_>) -> Result<Change, DriverError> {
        let object = FileObject {
            uuid: new.uuid,
            name: new.name,
            kind: new.kind,
            size: new.size,
            allocation: self.allocation,
            source: new.source.map(|(kind, uuid)| SourceRef { kind, uuid }),
        };
        match new.mark {
            NewMark::Ready => Ok(self
                .backend
                .create(&object)
                .map_err(self.err(Op::Create))?
                .change),
            NewMark::Filling => self
                .backend
                .create_filling(&object)
                .map_err(self.err(Op::Create)),
            NewMark::Migrating { id, from } => {
                let (mark, _) = self
                    .backend
                    .migration_target(
                        new.uuid,
                        new.name,
                        new.size,
                        self.allocation,
                        MigrationMark {
                            id,
                            from: from.to_owned(),
                        },
                    )
                    .map_err(self.err(Op::Create))?;
                Ok(Change::from_bool(mark.id == id))
            }
        }
    }

    fn snapshot(
        &self,
        volume: Uuid,
        uuid: Uuid,
        name: &str,
        _space: u64,
    ) -> Result<Change, DriverError> {
        Ok(self
            .backend
            .snapshot(volume, uuid, name)
            .map_err(self.err(Op::Snapshot))?
            .change)
    }

    fn migration_snapshot(
        &self,
        volume: Uuid,
        uuid: Uuid,
        name: &str,
        _space: u64,
    ) -> Result<Change, DriverError> {
        self.backend
            .migration_snapshot(volume, uuid, name)
            .map_err(self.err(Op::Snapshot))
    }

    fn extend(&self, uuid: Uuid, size: u64) -> Result<Change, DriverError> {
        self.backend
            .extend(uuid, size, self.allocation)
            .map_err(self.err(Op::Extend))
    }

    fn adopt(&self, a: &Adoption<'_>) -> Result<Change, DriverError> {
        self.backend
            .adopt(
                a.entry,
                a.uuid,
                a.name,
                a.kind,
                a.parent,
                a.size,
                self.allocation,
            )
            .map_err(self.err(Op::Adopt))
    }

    fn rename(&self, uuid: Uuid, name: &str) -> Result<Change, DriverError> {
        self.backend
            .rename(uuid, name)
            .map_err(self.err(Op::Rename))
    }

    fn release(&self, uuid: Uuid) -> Result<Change, DriverError> {
        self.backend.release(uuid).map_err(self.err(Op::Release))
    }

    fn delete(&self, uuid: Uuid) -> Result<Change, DriverError> {
        self.backend.delete(uuid).map_err(self.err(Op::Delete))
    }

    fn set_mark(&self, uuid: Uuid, mark: Mark) -> Result<Change, DriverError> {
        match mark {
            Mark::Ready => self.backend.mark_ready(uuid),
            Mark::Deleting => self.backend.mark_deleting(uuid),
            Mark::Creating | Mark::Migrating => {
                return Err(self.refused(
                    Op::SetMark,
                    format!(
                        "{uuid}: an object is marked {} only when created",
                        mark.as_str()
                    ),
                ));
            }
        }
        .map_err(self.err(Op::SetMark))
    }

    fn set_group(&self, uuid: Uuid, group: Option<&str>) -> Result<Change, DriverError> {
        self.backend
            .set_group(uuid, group)
            .map_err(self.err(Op::SetGroup))
    }

    fn object(&self, uuid: Uuid) -> Result<Option<Object>, DriverError> {
        Ok(self
            .backend
            .get(uuid)
            .map_err(self.err(Op::Lookup))?
            .map(|m| Object {
                uuid,
                created: m
                    .created_at
                    .timestamp_nanos_opt()
                    .and_then(|n| u64::try_from(n).ok()),
                migration: m.migration.as_ref().map(|g| g.id),
                name: m.name,
                kind: m.kind,
                size: m.size,
                mark: m.state,
                in_use: false,
            }))
    }

    fn data_path(&self, uuid: Uuid) -> Result<DataPath, DriverError> {
        let m = self.find(uuid, Op::Open)?;
        Ok(DataPath {
            path: self.backend.path_of(&m),
            len: m.size,
            kind: PathKind::File,
        })
    }

    fn layout(&self, _uuid: Uuid) -> Result<Layout, DriverError> {
        Ok(Layout::Seek)
    }

    fn room(&self, uuid: Uuid) -> Result<Option<Room>, DriverError> {
        // A preallocated file's blocks are reserved when it is made. A
        // sparse one's (a copy's target is made sparse) come from its file
        // system as they are written.
        let m = self.find(uuid, Op::Lookup)?;
        if m.allocation == Allocation::Preallocated {
            return Ok(None);
        }
        let root = self.backend.root();
        let vfs = nix::sys::statvfs::statvfs(root).map_err(|errno| {
            DriverError::new(self.name(), Op::Lookup, std::io::Error::from(errno), true)
        })?;
        // u64 on 64-bit Linux, narrower on some 32-bit targets.
        #[allow(clippy::useless_conversion)]
        let frsize = u64::from(vfs.fragment_size());
        #[allow(clippy::useless_conversion)]
        let (free, total) = (
            u64::from(vfs.blocks_available()) * frsize,
            u64::from(vfs.blocks()) * frsize,
        );
        Ok(Some(Room {
            what: format!("file system of {}", root.display()),
            free,
            total,
            short: None,
            how: "free space on it".into(),
        }))
    }

    fn group_snapshot(
        &self,
        cut: &crate::driver::GroupCut<'_>,
        _holds: &mut dyn crate::driver::Holds,
    ) -> Result<crate::driver::CutReport, DriverError> {
        let holders = crate::inuse::Holders::scan().map_err(|e| {
            DriverError::new(
                self.backend.backend(),
                Op::GroupSnapshot,
                format!("cannot tell whether a member is in use (cannot read /proc: {e})"),
                true,
            )
        })?;
        crate::driver::idle_group_snapshot(self, cut, &|v| {
            let m = self.find(v, Op::GroupSnapshot)?;
            Ok(holders
                .path(&self.backend.path_of(&m))
                .map(ToString::to_string))
        })
    }

    fn point_in_time(&self, req: &PitRequest) -> Result<Box<dyn PointInTime + '_>, DriverError> {
        let m = self.find(req.volume, Op::PointInTime)?;
        let path = self.backend.path_of(&m);
        let of = super::pit::For {
            volume: req.volume,
            backup: req.backup,
            parent: req.parent,
        };
        let pit = super::pit::take(&self.backend, &path, &of, !req.force, req.exported)
            .map_err(self.err(Op::PointInTime))?;
        Ok(Box::new(pit))
    }
}
