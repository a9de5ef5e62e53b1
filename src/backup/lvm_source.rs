//! A backup run of one volume of an `lvm` back end.
//!
//! The point in time is an LV snapshot ([`crate::lvm::backup_snap`]):
//! * **thin LV** → thin snapshot. A full run reads only the ranges mapped in
//!   the snapshot (`thin_dump`); an incremental whose parent's snapshot is
//!   still there reads only the ranges `thin_delta` reports changed between
//!   the two, and takes every other chunk from the parent's table unread.
//!   Without that snapshot (the parent was made on another host, or the base
//!   was removed by hand) it reads the mapped ranges and hash-compares
//!   against the parent, which is still correct, only slower. After a
//!   successful run the new snapshot is kept as the next base and the earlier
//!   one removed; after a failed run the new one is removed and the old base
//!   stays.
//! * **thick LV** → copy-on-write snapshot (an in-use volume only with
//!   `force`), read whole, zero chunks skipped, chunks hash-compared against
//!   the parent; the snapshot is removed afterwards however the run ends. An
//!   exception store that overflowed during the run invalidates the snapshot;
//!   the run then fails before its manifest is written.
//!
//! Must not: spawn processes (the back end's runner does), or keep a thick
//! snapshot (it slows every write to its origin).

use std::time::Instant;

use chrono::Utc;
use uuid::Uuid;

use super::engine::{self, Mode, PointInTime, ReadPlan, ReadRecord, RunReport, Source};
use super::format::{Codec, Manifest, VolumeRef};
use super::repo::SessionKind;
use super::{BackupError, Progress, Repository};
use crate::lvm::LvmBackend;
use crate::lvm::backup_snap::BackupSnap;
use crate::lvm::report::{Lv, LvKind};

/// What to back up, where.
#[derive(Clone, Copy)]
pub struct LvmRunSpec<'a> {
    /// The backup's id.
    pub id: Uuid,
    /// The repository.
    pub repo: &'a Repository,
    /// The volume's back end.
    pub lvm: &'a LvmBackend<'a>,
    /// The back end's manifest name.
    pub backend: &'a str,
    /// The volume's uuid.
    pub volume: Uuid,
    /// The policy's name, recorded for retention.
    pub policy: Option<&'a str>,
    /// Full or incremental.
    pub mode: Mode,
    /// Codec for new chunks.
    pub codec: Codec,
    /// This host's name.
    pub host: &'a str,
    /// Back up a volume that is open (in use) from its snapshot
    /// (`BackupPolicy.force`).
    pub force: bool,
}

fn lvm_err(what: String) -> impl FnOnce(crate::lvm::LvmError) -> BackupError {
    move |e| BackupError::Lvm {
        what,
        source: Box::new(e),
    }
}

/// The exception store of a thick backup snapshot: a quarter of the
/// volume, at least 64 MiB and at most the volume. Writes to the volume
/// during the run land there; if they outgrow it, the run fails cleanly.
fn cow_size(size: u64) -> u64 {
    (size / 4).max(64 << 20).min(size.max(4 << 20))
}

/// Removes the snapshot on drop unless kept.
struct SnapGuard<'a> {
    lvm: &'a LvmBackend<'a>,
    name: String,
    keep: bool,
}

impl Drop for SnapGuard<'_> {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = self.lvm.remove_backup_snapshot(&self.name) {
            tracing::warn!(lv = %self.name, error = %crate::lvm::cmd::chain(&e), "could not remove a backup snapshot; remove it with lvremove");
        }
    }
}

/// What to read of snapshot `snap` of volume `lv`, and why: a thin LV's
/// changes since the parent when the parent's snapshot is there, else its
/// mapped ranges (a fallback for an incremental); a thick LV whole.
fn read_plan(
    lvm: &LvmBackend<'_>,
    lv: &Lv,
    name: &str,
    parent: Option<&Manifest>,
    bases: &[BackupSnap],
    snap: &str,
) -> Result<(ReadPlan, ReadRecord), BackupError> {
    if lv.attr.kind != LvKind::Thin {
        return Ok((
            ReadPlan::Ranges(std::iter::once(0..lv.size).collect()),
            ReadRecord::thick(),
        ));
    }
    if let Some(b) = parent.and_then(|p| bases.iter().find(|b| b.backup == p.id)) {
        return Ok((
            ReadPlan::ChangedSinceParent(
                lvm.thin_changed_ranges(&b.lv.name, snap)
                    .map_err(lvm_err(format!("changes of {name}")))?,
            ),
            ReadRecord::thin_changed(),
        ));
    }
    let read = ReadRecord::thin_mapped(parent.is_some());
    if read.fallback {
        tracing::warn!(volume = %name, reason = %read.reason, "backup falls back to a scan of every mapped range");
    }
    Ok((
        ReadPlan::Ranges(
            lvm.thin_mapped_ranges(snap)
                .map_err(lvm_err(format!("mapped ranges of {name}")))?,
        ),
        read,
    ))
}

/// Runs one backup of an LVM volume.
pub fn run(spec: &LvmRunSpec<'_>, progress: &dyn Progress) -> Result<RunReport, BackupError> {
    let started = Instant::now();
    let repo = spec.repo;
    let _session = repo.session(SessionKind::Shared, "backup run")?;
    let lvm = spec.lvm;
    let (lv, owned) = lvm
        .volume_lv(spec.volume)
        .map_err(lvm_err(format!("volume {}", spec.volume)))?;
    if lv.attr.open && !spec.force {
        return Err(BackupError::Target {
            name: owned.name,
            reason: "is in use (open) and the policy says force: false".into(),
        });
    }
    let thin = lv.attr.kind == LvKind::Thin;
    let history = repo.volume_manifests(spec.volume)?;
    let parent = engine::choose_parent(spec.mode, &history);
    let bases = lvm
        .backup_snapshots(spec.volume)
        .map_err(lvm_err(format!("volume {}", owned.name)))?;

    let started_at = Utc::now();
    let t = Instant::now();
    progress.stage("snapshot");
    let snap = lvm
        .backup_snapshot(spec.volume, spec.id, cow_size(lv.size))
        .map_err(lvm_err(format!("snapshot of {}", owned.name)))?;
    let mut guard = SnapGuard {
        lvm,
        name: snap.name.clone(),
        keep: false,
    };
    let (plan, read) = read_plan(lvm, &lv, &owned.name, parent, &bases, &snap.name)?;
    let snapshot_time = t.elapsed();
    let path = lvm.device(&snap.name);
    let volume = VolumeRef {
        uuid: spec.volume,
        name: owned.name.clone(),
        backend: spec.backend.to_owned(),
        size: lv.size,
    };
    let check = || -> Result<(), BackupError> {
        if thin {
            return Ok(());
        }
        let now = lvm
            .backup_snapshot_state(&snap.name)
            .map_err(lvm_err(format!("snapshot of {}", owned.name)))?;
        match now {
            Some(l) if l.attr.kind == LvKind::ThickSnapshot => Ok(()),
            _ => Err(BackupError::Target {
                name: owned.name.clone(),
                reason: format!(
                    "its snapshot {} overflowed (more than {} bytes written during the backup) and is invalid; nothing was stored",
                    snap.name,
                    cow_size(lv.size)
                ),
            }),
        }
    };
    let manifest = engine::store(
        &Source {
            repo,
            id: spec.id,
            volume,
            policy: spec.policy,
            host: spec.host,
            codec: spec.codec,
            parent,
            path: &path,
            scratch: false,
            plan,
            started_at,
            check: Some(&check),
        },
        progress,
    )?;
    if thin {
        guard.keep = true;
        for b in bases {
            if let Err(e) = lvm.remove_backup_snapshot(&b.lv.name) {
                tracing::warn!(lv = %b.lv.name, error = %crate::lvm::cmd::chain(&e), "could not remove the earlier backup base");
            }
        }
    }
    drop(guard);
    Ok(RunReport {
        manifest,
        method: if thin {
            PointInTime::ThinSnapshot
        } else {
            PointInTime::ThickSnapshot
        },
        read,
        snapshot_time,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn cow_size_is_a_quarter_within_bounds() {
        assert_eq!(super::cow_size(1 << 30), 256 << 20);
        assert_eq!(super::cow_size(64 << 20), 64 << 20);
        assert_eq!(super::cow_size(8 << 20), 8 << 20);
    }
}
