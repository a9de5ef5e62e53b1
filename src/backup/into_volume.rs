//! Restoring a backup into a **new** volume of a back end: the one way both
//! `backup restore ID --to NEW` and a planned create with `source.backup` go.
//!
//! One flow over the back end's [`Driver`]: the volume is created marked
//! `creating` ([`NewMark::Filling`]), filled through its data path, then
//! marked ready; a failed restore removes it again, and one interrupted by a
//! crash is discovered as an interrupted create, which the next run removes
//! and restores from scratch (a half-written volume holds nothing worth
//! keeping). Where new volumes read zeros (files, thin LVs) zero chunks stay
//! holes; elsewhere (thick LVs) every gap is zeroed ([`Target::ZeroGaps`]).
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
use crate::driver::{Driver, Mark, NewMark, NewObject, ObjKind};

/// The backup `id` as stored in `repo`.
pub fn manifest(repo: &Repository, id: Uuid) -> Result<Manifest, BackupError> {
    repo.find_manifest(id)?
        .ok_or_else(|| BackupError::UnknownBackup(id.to_string()))
}

/// Creates volume `uuid` named `name` of `size` bytes (at least the
/// backup's) on `on` and restores backup `m` of `repo` into it. The caller
/// holds a shared session on `repo`.
pub fn restore_new(
    repo: &Repository,
    m: &Manifest,
    on: &dyn Driver,
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
    on.create(&NewObject {
        uuid,
        name,
        kind: ObjKind::Volume,
        size,
        source: None,
        mark: NewMark::Filling,
    })?;
    let mode = if on.capabilities().new_reads_zero {
        Target::Fresh
    } else {
        Target::ZeroGaps
    };
    let filled = on
        .data_path(uuid)
        .map_err(BackupError::from)
        .and_then(|data| fill(repo, m, &table, &index, &data.path, mode, progress))
        .and_then(|stats| {
            on.set_mark(uuid, Mark::Ready)?;
            Ok(stats)
        });
    if filled.is_err()
        && let Err(del) = on.delete(uuid)
    {
        tracing::warn!(%uuid, error = %crate::error_chain(&del), "could not remove the partly restored volume");
    }
    filled
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
    on: &dyn Driver,
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
