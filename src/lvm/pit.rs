//! The point in time a backup of an `lvm` volume reads: an LV snapshot
//! ([`super::backup_snap`]).
//!
//! * **thin LV** → thin snapshot. A full run reads only the ranges mapped in
//!   the snapshot (`thin_dump`); an incremental whose parent's snapshot is
//!   still there reads only the ranges `thin_delta` reports changed between
//!   the two, and takes every other chunk from the parent's table unread.
//!   Without that snapshot (the parent was made on another host, or the base
//!   was removed by hand) it reads the mapped ranges and hash-compares
//!   against the parent, which is still correct, only slower. After a
//!   committed run the new snapshot is kept as the next base and the earlier
//!   one removed; after a failed run the new one is removed and the old base
//!   stays.
//! * **thick LV** → copy-on-write snapshot (an in-use volume only with
//!   `force`), read whole, zero chunks skipped, chunks hash-compared against
//!   the parent; the snapshot is removed afterwards however the run ends. An
//!   exception store that overflowed during the run invalidates the snapshot;
//!   [`PointInTime::check`] then fails before the backup is committed.
//!
//! Must not: keep a thick snapshot (it slows every write to its origin).

use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::backup_snap::BackupSnap;
use super::report::{Lv, LvKind};
use super::{LvmBackend, LvmError};
use crate::driver::{PitMethod, PitRequest, PointInTime, ReadMethod, ReadRecord, Reads};

/// The exception store of a thick backup snapshot: a quarter of the
/// volume, at least 64 MiB and at most the volume. Writes to the volume
/// during the run land there; if they outgrow it, the run fails cleanly.
fn cow_size(size: u64) -> u64 {
    (size / 4).max(64 << 20).min(size.max(4 << 20))
}

/// A backup snapshot, removed on drop unless committed as a thin base.
pub(super) struct LvmPit<'a, 'r> {
    lvm: &'a LvmBackend<'r>,
    name: String,
    path: PathBuf,
    volume: String,
    thin: bool,
    cow: u64,
    reads: Reads,
    read: ReadRecord,
    bases: Vec<BackupSnap>,
    keep: bool,
}

impl Drop for LvmPit<'_, '_> {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = self.lvm.remove_backup_snapshot(&self.name) {
            tracing::warn!(lv = %self.name, error = %crate::error_chain(&e), "could not remove a backup snapshot; remove it with lvremove");
        }
    }
}

/// Takes the point in time of `req.volume`; see the module docs.
pub(super) fn take<'a, 'r>(
    lvm: &'a LvmBackend<'r>,
    req: &PitRequest,
) -> Result<LvmPit<'a, 'r>, LvmError> {
    let (lv, owned) = lvm.volume_lv(req.volume)?;
    if lv.attr.open && !req.force {
        return Err(lvm.refused(
            &lv.name,
            format!(
                "volume {} is in use (open) and the policy says force: false",
                owned.name
            ),
        ));
    }
    let thin = lv.attr.kind == LvKind::Thin;
    let bases = lvm.backup_snapshots(req.volume)?;
    let cow = cow_size(lv.size);
    let snap = lvm.backup_snapshot(req.volume, req.backup, cow)?;
    let mut pit = LvmPit {
        lvm,
        path: lvm.device(&snap.name),
        name: snap.name.clone(),
        volume: owned.name.clone(),
        thin,
        cow,
        reads: Reads::DataExtents,
        read: thick(),
        bases,
        keep: false,
    };
    // From here on, a failure drops `pit`, which removes the snapshot.
    (pit.reads, pit.read) = reads(lvm, &lv, &owned.name, req.parent, &pit.bases, &snap.name)?;
    Ok(pit)
}

/// A thick LV: no allocation map, so every byte is read.
fn thick() -> ReadRecord {
    ReadRecord::new(
        ReadMethod::FullScan,
        "a thick LV has no allocation map: read whole, zero chunks skipped",
        false,
    )
}

/// A thin LV's changes since the parent.
fn thin_changed() -> ReadRecord {
    ReadRecord::new(
        ReadMethod::ChangedRanges,
        "thin_delta against the parent backup's thin snapshot",
        false,
    )
}

/// A thin LV's mapped ranges: a full backup, or an incremental whose
/// parent's snapshot is gone (the fallback).
fn thin_mapped(incremental: bool) -> ReadRecord {
    if incremental {
        ReadRecord::new(
            ReadMethod::AllocatedScan,
            "the parent backup's thin snapshot is gone (made on another host, or removed): \
             every mapped range read and compared with the parent instead of only the changes",
            true,
        )
    } else {
        ReadRecord::new(
            ReadMethod::AllocatedScan,
            "a full backup: the thin LV's mapped ranges",
            false,
        )
    }
}

/// What to read of snapshot `snap` of volume `lv`, and why: a thin LV's
/// changes since the parent when the parent's snapshot is there, else its
/// mapped ranges (a fallback for an incremental); a thick LV whole.
fn reads(
    lvm: &LvmBackend<'_>,
    lv: &Lv,
    name: &str,
    parent: Option<Uuid>,
    bases: &[BackupSnap],
    snap: &str,
) -> Result<(Reads, ReadRecord), LvmError> {
    if lv.attr.kind != LvKind::Thin {
        return Ok((
            Reads::Ranges(std::iter::once(0..lv.size).collect()),
            thick(),
        ));
    }
    if let Some(b) = parent.and_then(|p| bases.iter().find(|b| b.backup == p)) {
        return Ok((
            Reads::ChangedSinceParent(lvm.thin_changed_ranges(&b.lv.name, snap)?),
            thin_changed(),
        ));
    }
    let read = thin_mapped(parent.is_some());
    if read.fallback {
        tracing::warn!(volume = %name, reason = %read.reason, "backup falls back to a scan of every mapped range");
    }
    Ok((Reads::Ranges(lvm.thin_mapped_ranges(snap)?), read))
}

impl LvmPit<'_, '_> {
    fn err(&self, e: LvmError) -> crate::driver::DriverError {
        let retryable = e.is_retryable();
        crate::driver::DriverError::new(
            &self.lvm.backend,
            crate::driver::Op::PointInTime,
            e,
            retryable,
        )
    }
}

impl PointInTime for LvmPit<'_, '_> {
    fn path(&self) -> &Path {
        &self.path
    }
    fn reads(&self) -> &Reads {
        &self.reads
    }
    fn scratch(&self) -> bool {
        false
    }
    fn read(&self) -> &ReadRecord {
        &self.read
    }
    fn method(&self) -> PitMethod {
        if self.thin {
            PitMethod::ThinSnapshot
        } else {
            PitMethod::CowSnapshot
        }
    }
    fn check(&self) -> Result<(), crate::driver::DriverError> {
        if self.thin {
            return Ok(());
        }
        let now = self
            .lvm
            .backup_snapshot_state(&self.name)
            .map_err(|e| self.err(e))?;
        match now {
            Some(l) if l.attr.kind == LvKind::ThickSnapshot => Ok(()),
            _ => Err(crate::driver::DriverError::refused(
                &self.lvm.backend,
                crate::driver::Op::PointInTime,
                format!(
                    "the snapshot {} of volume {} overflowed (more than {} bytes written during the backup) and is invalid; nothing was stored",
                    self.name, self.volume, self.cow
                ),
            )),
        }
    }
    fn commit(mut self: Box<Self>) -> Result<(), crate::driver::DriverError> {
        if self.thin {
            self.keep = true;
            for b in std::mem::take(&mut self.bases) {
                if let Err(e) = self.lvm.remove_backup_snapshot(&b.lv.name) {
                    tracing::warn!(lv = %b.lv.name, error = %crate::error_chain(&e), "could not remove the earlier backup base");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cow_size_is_a_quarter_within_bounds() {
        assert_eq!(super::cow_size(1 << 30), 256 << 20);
        assert_eq!(super::cow_size(64 << 20), 64 << 20);
        assert_eq!(super::cow_size(8 << 20), 8 << 20);
    }

    #[test]
    fn read_records_say_which_thin_reads_are_fallbacks() {
        use crate::driver::ReadMethod;
        assert!(!super::thin_changed().fallback);
        assert!(!super::thin_mapped(false).fallback);
        assert!(!super::thick().fallback);
        let r = super::thin_mapped(true);
        assert_eq!((r.method, r.fallback), (ReadMethod::AllocatedScan, true));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["method"], "allocatedScan");
        assert_eq!(json["fallback"], true);
        // Not a fallback: the field is left out.
        let json = serde_json::to_value(super::thick()).unwrap();
        assert_eq!(json["method"], "fullScan");
        assert!(json.get("fallback").is_none(), "{json}");
        assert_eq!(super::thin_changed().method, ReadMethod::ChangedRanges);
    }
}
