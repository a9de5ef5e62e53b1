//! Restoring a backup into a **new** volume of a back end: the one way both
//! `backup restore ID --to NEW` and a planned create with `source.backup` go.
//!
//! The volume is created marked incomplete (`file`: sidecar `creating`;
//! `lvm`: tag `cinderblock.state=creating`), filled, then marked ready; a
//! failed restore removes it again, and one interrupted by a crash is
//! discovered as an interrupted create, which the next run removes and
//! restores from scratch (a half-written volume holds nothing worth keeping).
//! Files and thin LVs keep holes for zero chunks; a thick LV gets every gap
//! zeroed ([`Target::ZeroGaps`]).
//!
//! Must not: leave a volume that looks ready with data that is not the
//! backup's.

use std::fs::OpenOptions;
use std::path::Path;

use uuid::Uuid;

use super::format::{self, Manifest};
use super::repo::SessionKind;
use super::restore::{self, RestoreStats, Target};
use super::{BackupError, Progress, Repository};
use crate::file::{self, FileBackend, Mark, NewObject, ObjKind};
use crate::lvm::{LvmBackend, NewLv};

/// The back end a new volume is made on.
pub enum NewVolume<'a> {
    /// A `file` back end.
    File {
        /// The back end.
        backend: &'a FileBackend,
        /// Sparse or preallocated.
        allocation: file::Allocation,
    },
    /// An `lvm` back end (thin when it has a pool).
    Lvm(&'a LvmBackend<'a>),
}

/// The backup `id` as stored in `repo`.
pub fn manifest(repo: &Repository, id: Uuid) -> Result<Manifest, BackupError> {
    repo.find_manifest(id)?
        .ok_or_else(|| BackupError::UnknownBackup(id.to_string()))
}

fn file_err(what: String) -> impl FnOnce(file::FileError) -> BackupError {
    move |source| BackupError::File { what, source }
}

fn lvm_err(what: String) -> impl FnOnce(crate::lvm::LvmError) -> BackupError {
    move |e| BackupError::Lvm {
        what,
        source: Box::new(e),
    }
}

/// Creates volume `uuid` named `name` of `size` bytes (at least the
/// backup's) on `on` and restores backup `m` of `repo` into it. The caller
/// holds a shared session on `repo`.
pub fn restore_new(
    repo: &Repository,
    m: &Manifest,
    on: &NewVolume<'_>,
    uuid: Uuid,
    name: &str,
    size: u64,
    progress: &dyn Progress,
) -> Result<RestoreStats, BackupError> {
    if size < m.volume.size {
        return Err(BackupError::Target {
            name: name.to_owned(),
            reason: format!(
                "{size} bytes is less than backup {}'s {} bytes",
                m.id, m.volume.size
            ),
        });
    }
    let table = format::decode_table(m)?;
    let index = repo.load_index()?;
    match on {
        NewVolume::File {
            backend,
            allocation,
        } => {
            backend
                .create(&NewObject {
                    uuid,
                    name,
                    kind: ObjKind::Volume,
                    size,
                    allocation: *allocation,
                    source: None,
                })
                .map_err(file_err(format!("create volume {name}")))?;
            let mut meta = backend
                .get(uuid)
                .map_err(file_err(format!("volume {name}")))?
                .ok_or_else(|| BackupError::Target {
                    name: name.to_owned(),
                    reason: "vanished after create".into(),
                })?;
            meta.state = Mark::Creating;
            file::meta::write_sidecar(backend.root(), &meta)
                .map_err(file_err(format!("mark volume {name} incomplete")))?;
            let path = backend.data_path(ObjKind::Volume, uuid);
            let filled = fill(repo, m, &table, &index, &path, Target::Fresh, progress);
            match filled {
                Ok(stats) => {
                    meta.state = Mark::Ready;
                    file::meta::write_sidecar(backend.root(), &meta)
                        .map_err(file_err(format!("mark volume {name} ready")))?;
                    Ok(stats)
                }
                Err(e) => {
                    if let Err(del) = backend.delete(uuid) {
                        tracing::warn!(%uuid, error = %crate::error_chain(&del), "could not remove the partly restored volume");
                    }
                    Err(e)
                }
            }
        }
        NewVolume::Lvm(lvm) => {
            lvm.create_restoring(&NewLv {
                uuid,
                name,
                kind: ObjKind::Volume,
                size,
                source: None,
            })
            .map_err(lvm_err(format!("create volume {name}")))?;
            let path = lvm.device(&crate::lvm::tags::lv_name(ObjKind::Volume, uuid));
            let mode = if lvm.is_thin() {
                Target::Fresh
            } else {
                Target::ZeroGaps
            };
            let filled = fill(repo, m, &table, &index, &path, mode, progress).and_then(|s| {
                lvm.mark_ready(uuid)
                    .map(|()| s)
                    .map_err(lvm_err(format!("mark volume {name} ready")))
            });
            if filled.is_err()
                && let Err(del) = lvm.delete(uuid)
            {
                tracing::warn!(%uuid, error = %crate::error_chain(&del), "could not remove the partly restored volume");
            }
            filled
        }
    }
}

fn fill(
    repo: &Repository,
    m: &Manifest,
    table: &format::Table,
    index: &super::repo::Index,
    path: &Path,
    mode: Target,
    progress: &dyn Progress,
) -> Result<RestoreStats, BackupError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| BackupError::Io {
            op: "open",
            path: path.to_owned(),
            source,
        })?;
    restore::restore(repo, index, m, table, &f, path, mode, progress)
}

/// [`restore_new`] with its own repository session: opens `repository`
/// and finds backup `id` there (the executor's entry point).
#[allow(clippy::too_many_arguments)] // each piece named
pub fn restore_new_from(
    repository: &super::target::RepoSpec,
    id: Uuid,
    on: &NewVolume<'_>,
    uuid: Uuid,
    name: &str,
    size: u64,
    progress: &dyn Progress,
) -> Result<RestoreStats, BackupError> {
    let repo = repository.open()?;
    let _session = repo.session(SessionKind::Shared, "restore into a new volume")?;
    let m = manifest(&repo, id)?;
    restore_new(&repo, &m, on, uuid, name, size, progress)
}
