//! Migration: moving a volume from one back end of this host to another,
//! keeping its name and uuid, resumable at any byte and verified before the
//! source goes.
//!
//! Owns the sequence of one migration step. Each state is visible on the
//! back ends, so a re-run after a crash anywhere continues from where it is:
//!
//! | step | what | a crash after it leaves | the re-run |
//! | --- | --- | --- | --- |
//! | 1 | target created, marked `migrating` with a fresh migration id (LV tags `cinderblock.state=migrating`, `cinderblock.migration=<id>`, `cinderblock.from=<back end>`; file sidecar `state: migrating` + `migration`) | source ready + target migrating | finds the target, resumes the copy |
//! | 2 | copy (see [`crate::copy`]), checkpoints in the journal every 256 MiB or 5 s, each after the target's data was synced | the same | resumes at the last checkpoint of this migration id |
//! | 3 | verify: content hash of source and target | the same | copies from the checkpoint, verifies again |
//! | 4 | source marked `deleting` | source deleting + target migrating | promotes, deletes |
//! | 5 | target promoted (marks removed) | source deleting + target ready | deletes the source |
//! | 6 | source deleted (thick LVs zeroed first per `volumeClear`) | target ready | nothing left |
//!
//! A failed verification keeps the source as it was, resets the checkpoint
//! (the next run copies from the start) and says so. The source must not be
//! written while it moves: an open LV is refused (the planner refuses it too),
//! and a write during the copy fails the verification rather than being lost.
//!
//! Must not: decide whether to migrate (the planner's), print (progress goes
//! through [`crate::copy::Observer`]), or touch anything without our marks.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::copy::{self, Extents, Target};
use crate::file::{self, FileBackend, Mark, MigrationMark};
use crate::lvm::LvmBackend;

/// Errors of a migration.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A `file` back end operation failed.
    #[error("on {backend}")]
    File {
        /// The back end.
        backend: String,
        /// Why.
        #[source]
        source: file::FileError,
    },
    /// An `lvm` back end operation failed.
    #[error("on {backend}")]
    Lvm {
        /// The back end.
        backend: String,
        /// Why (boxed: it is large).
        #[source]
        source: Box<crate::lvm::LvmError>,
    },
    /// Opening a device or file failed.
    #[error("cannot open {}", path.display())]
    Open {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The copy failed.
    #[error("copy from {from} to {to} failed")]
    Copy {
        /// Source back end.
        from: String,
        /// Target back end.
        to: String,
        /// Why.
        #[source]
        source: copy::CopyError,
    },
    /// The target's content differs from the source's.
    #[error(
        "verification failed: the source hashes {source_hash}, the target {target_hash}; the source on {from} is kept and unchanged, and the next apply copies again from the start (was the volume written during the copy?)"
    )]
    Verify {
        /// Source back end.
        from: String,
        /// Hash of the source.
        source_hash: String,
        /// Hash of the target.
        target_hash: String,
    },
    /// The volume is in neither place, or in a state that is not a migration.
    #[error("{0}")]
    State(String),
    /// The journal could not be read or written.
    #[error("journal")]
    Journal(#[from] crate::state::journal::JournalError),
}

/// One back end of a migration.
pub enum Endpoint<'r> {
    /// A `file` back end and its allocation.
    File(FileBackend, file::Allocation),
    /// An `lvm` back end.
    Lvm(LvmBackend<'r>),
}

impl Endpoint<'_> {
    fn name(&self) -> &str {
        match self {
            Endpoint::File(fb, _) => fb.backend(),
            Endpoint::Lvm(lb) => lb.backend(),
        }
    }
}

/// What to move.
#[derive(Debug, Clone, Copy)]
pub struct Move<'a> {
    /// The volume's identity (kept).
    pub uuid: Uuid,
    /// Its manifest name (kept).
    pub name: &'a str,
    /// The target's size (at least the source's).
    pub size: u64,
    /// Read at most this many bytes per second.
    pub bandwidth: Option<u64>,
}

/// Where checkpoints go and come from.
pub trait Checkpoints: copy::Observer {
    /// The last checkpoint's offset for migration `id` (0: none).
    fn last(&self, id: Uuid) -> Result<u64, MigrateError>;
    /// Which migration the next checkpoints belong to.
    fn begin(&mut self, id: Uuid);
    /// Forget progress: the next run starts at 0.
    fn reset(&mut self, id: Uuid) -> Result<(), MigrateError>;
}

/// What a migration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Whether anything was done.
    pub changed: bool,
    /// The copy's figures, when this run copied.
    pub copy: Option<copy::Stats>,
    /// The verified content hash, when this run verified.
    pub hash: Option<String>,
}

struct SourceInfo {
    path: PathBuf,
    len: u64,
    state: Mark,
    layout: Layout,
}

/// Where a source's data is.
enum Layout {
    /// A file: ask it (`SEEK_DATA`/`SEEK_HOLE`) once it is open.
    File,
    /// Known already (a thin LV's mapped ranges).
    Known(Extents),
    /// Unknown (a thick LV): read everything, zero-detection finds the rest.
    Everything,
}

fn file_err(fb: &FileBackend) -> impl FnOnce(file::FileError) -> MigrateError + '_ {
    move |source| MigrateError::File {
        backend: fb.backend().to_owned(),
        source,
    }
}

fn lvm_err<'a>(lb: &'a LvmBackend<'_>) -> impl FnOnce(crate::lvm::LvmError) -> MigrateError + 'a {
    move |source| MigrateError::Lvm {
        backend: lb.backend().to_owned(),
        source: Box::new(source),
    }
}

fn source_info(src: &Endpoint<'_>, uuid: Uuid) -> Result<Option<SourceInfo>, MigrateError> {
    match src {
        Endpoint::File(fb, _) => {
            let Some(m) = fb.get(uuid).map_err(file_err(fb))? else {
                return Ok(None);
            };
            Ok(Some(SourceInfo {
                path: fb.data_path(m.kind, uuid),
                len: m.size,
                state: m.state,
                layout: Layout::File,
            }))
        }
        Endpoint::Lvm(lb) => {
            let Some(lv) = lb.migration_source(uuid).map_err(lvm_err(lb))? else {
                return Ok(None);
            };
            if lv.open && lv.mark != Mark::Deleting {
                return Err(MigrateError::State(format!(
                    "{} is open (in use); stop its users and apply again",
                    lv.device.display()
                )));
            }
            // A thin LV reads zeros where unmapped: read only its mapped
            // ranges (from a metadata snapshot of the pool). Should that
            // fail, zero-detection over the whole LV is slower but correct.
            let layout = if lv.thin && lv.mark == Mark::Ready {
                match lb.thin_mapped_ranges(&lv.lv) {
                    Ok(r) => Layout::Known(Extents::new(r, lv.size)),
                    Err(e) => {
                        tracing::warn!(lv = %lv.lv, error = %crate::error_chain(&e), "cannot read the thin LV's mapped ranges; reading all of it");
                        Layout::Everything
                    }
                }
            } else {
                Layout::Everything
            };
            Ok(Some(SourceInfo {
                path: lv.device,
                len: lv.size,
                state: lv.mark,
                layout,
            }))
        }
    }
}

/// Finishes the switch: promote the target, delete the source.
fn switch(src: &Endpoint<'_>, dst: &Endpoint<'_>, uuid: Uuid) -> Result<(), MigrateError> {
    match dst {
        Endpoint::File(fb, _) => drop(fb.promote(uuid).map_err(file_err(fb))?),
        Endpoint::Lvm(lb) => drop(lb.promote(uuid).map_err(lvm_err(lb))?),
    }
    crash_point("migrate-promoted");
    match src {
        Endpoint::File(fb, _) => drop(fb.delete(uuid).map_err(file_err(fb))?),
        Endpoint::Lvm(lb) => drop(lb.delete(uuid).map_err(lvm_err(lb))?),
    }
    Ok(())
}

fn open(path: &Path, write: bool) -> Result<File, MigrateError> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|source| MigrateError::Open {
            path: path.to_owned(),
            source,
        })
}

/// Runs (or resumes) one migration of `mv` from `src` to `dst`; see the
/// module docs for the steps.
#[allow(clippy::too_many_lines)] // the steps of the module docs' table, in order
pub fn run(
    mv: &Move<'_>,
    src: &Endpoint<'_>,
    dst: &Endpoint<'_>,
    cp: &mut dyn Checkpoints,
) -> Result<Report, MigrateError> {
    let uuid = mv.uuid;
    let Some(info) = source_info(src, uuid)? else {
        // Gone from the source: done, if the target holds the volume.
        let here = match dst {
            Endpoint::File(fb, _) => fb
                .get(uuid)
                .map_err(file_err(fb))?
                .map(|m| m.state == Mark::Ready),
            Endpoint::Lvm(lb) => lb
                .migration_source(uuid)
                .map_err(lvm_err(lb))?
                .map(|l| l.mark == Mark::Ready),
        };
        return match here {
            Some(true) => Ok(Report {
                changed: false,
                copy: None,
                hash: None,
            }),
            _ => Err(MigrateError::State(format!(
                "volume {uuid} is neither on {} nor, ready, on {}",
                src.name(),
                dst.name()
            ))),
        };
    };
    match info.state {
        Mark::Ready => {}
        Mark::Deleting => {
            // Verified in an earlier run, which then crashed.
            tracing::info!(%uuid, "finishing a verified migration");
            switch(src, dst, uuid)?;
            return Ok(Report {
                changed: true,
                copy: None,
                hash: None,
            });
        }
        other => {
            return Err(MigrateError::State(format!(
                "volume {uuid} on {} is {other:?}, not ready",
                src.name()
            )));
        }
    }
    if mv.size < info.len {
        return Err(MigrateError::State(format!(
            "the target's {} bytes are fewer than the source's {}",
            mv.size, info.len
        )));
    }
    let from = src.name().to_owned();
    let (id, dst_path, kind) = match dst {
        Endpoint::File(fb, alloc) => {
            let (mark, path) = fb
                .migration_target(
                    uuid,
                    mv.name,
                    mv.size,
                    *alloc,
                    MigrationMark {
                        id: Uuid::new_v4(),
                        from: from.clone(),
                    },
                )
                .map_err(file_err(fb))?;
            (mark.id, path, Target::Holes)
        }
        Endpoint::Lvm(lb) => {
            let lv = lb
                .migration_target(uuid, mv.name, mv.size, Uuid::new_v4(), &from)
                .map_err(lvm_err(lb))?;
            let id = lv
                .migration
                .ok_or_else(|| MigrateError::State(format!("{} lost its migration tag", lv.lv)))?;
            let kind = if lv.thin {
                Target::Holes
            } else {
                Target::MustZero
            };
            (id, lv.device, kind)
        }
    };
    crash_point("migrate-target");
    cp.begin(id);
    let start = cp.last(id)?;
    let source = open(&info.path, false)?;
    let target = open(&dst_path, true)?;
    let target_len = crate::blockio::size(&target).map_err(|source| MigrateError::Open {
        path: dst_path.clone(),
        source,
    })?;
    let copy_err = |source| MigrateError::Copy {
        from: from.clone(),
        to: dst.name().to_owned(),
        source,
    };
    let extents = match info.layout {
        Layout::File => Extents::of_file(&source, &info.path, info.len).map_err(copy_err)?,
        Layout::Known(e) => e,
        Layout::Everything => Extents::all(info.len),
    };
    if start > 0 {
        tracing::info!(%uuid, %id, offset = start, "resuming a migration at its last checkpoint");
    }
    let stats = copy::copy(
        &copy::Job {
            source: &source,
            source_path: &info.path,
            target: &target,
            target_path: &dst_path,
            len: info.len,
            target_len,
            extents: &extents,
            kind,
            start,
            bandwidth: mv.bandwidth,
            hash_source: true,
            // File targets are read back while copying (their holes are
            // checked after it); LVM targets after the copy.
            read_back: matches!(dst, Endpoint::File(..)),
            writeback: matches!(dst, Endpoint::File(..)),
        },
        cp,
    )
    .map_err(copy_err)?;
    tracing::info!(%uuid, read = stats.read, written = stats.written, zeroed = stats.zeroed, resumed_at = stats.started_at, "copied; verifying");
    let source_hash = match stats.source_hash {
        Some(h) => h,
        None => copy::content_hash(&source, &info.path, info.len, &extents).map_err(copy_err)?,
    };
    // The target is read where it holds data by its own account (a file's
    // SEEK_DATA), else where the source does: a thick target's gaps were
    // zeroed explicitly and a new thin LV's read as zeros. A file target
    // read back during the copy needs only its holes checked: no data
    // outside the blocks the source has.
    let target_hash = match dst {
        Endpoint::File(..) => {
            let own = Extents::of_file(&target, &dst_path, info.len).map_err(copy_err)?;
            match stats.target_hash {
                Some(h) if extents.covers(&own, info.len) => h,
                _ => copy::content_hash(&target, &dst_path, info.len, &own).map_err(copy_err)?,
            }
        }
        Endpoint::Lvm(_) => {
            copy::content_hash(&target, &dst_path, info.len, &extents).map_err(copy_err)?
        }
    };
    if source_hash != target_hash {
        cp.reset(id)?;
        return Err(MigrateError::Verify {
            from,
            source_hash: source_hash.to_hex().to_string(),
            target_hash: target_hash.to_hex().to_string(),
        });
    }
    drop((source, target));
    match src {
        Endpoint::File(fb, _) => drop(fb.mark_deleting(uuid).map_err(file_err(fb))?),
        Endpoint::Lvm(lb) => drop(lb.mark_deleting(uuid).map_err(lvm_err(lb))?),
    }
    crash_point("migrate-verified");
    switch(src, dst, uuid)?;
    Ok(Report {
        changed: true,
        copy: Some(stats),
        hash: Some(source_hash.to_hex().to_string()),
    })
}

/// Fault injection for the crash tests: with `CINDERBLOCK_CRASH_AT=`
/// `migrate-target`, `migrate-verified` or `migrate-promoted` the process
/// kills itself (SIGKILL) after that step (`migrate-copy:N`, after N bytes
/// read, is the executor's).
fn crash_point(point: &str) {
    crate::lvm::driver::crash_point(point);
}
