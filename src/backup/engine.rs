//! A backup run of one volume of any back end, and the chunk pipeline every
//! run goes through (`store`).
//!
//! 1. A shared session on the repository.
//! 2. The parent: the volume's newest backup in the repository (never the
//!    catalogue, so a host that lost its state directory still finds it).
//! 3. The point in time, from the volume's back end
//!    ([`Driver::point_in_time`]; its [`PitMethod`] is printed by `backup
//!    run`): a `file` volume's reflink, in-place read or sparse copy
//!    (the `file` back end's `pit`), an `lvm` volume's thin or copy-on-write
//!    snapshot (the `lvm` back end's). It says what to read ([`Reads`]): data extents, byte
//!    ranges, or ranges changed since the parent.
//! 4. What it says to read, rounded out to whole 64 KiB slots, is read
//!    sequentially in 4 MiB batches by a reader thread; two workers hash each
//!    chunk (BLAKE3), skip zero chunks, keep chunks equal to the parent's at
//!    the same slot, look the rest up in the index and compress the truly
//!    new ones; the calling thread appends those to packs. Memory is bounded
//!    by the buffer pool (6 × 4 MiB) and the channels, not by the volume.
//! 5. Packs sealed → index file → the point in time checked (a snapshot
//!    that overflowed fails the run) → manifest (the commit point) → the
//!    point in time committed (a thin snapshot kept as the next base).
//!
//! Every run reports how it read ([`ReadRecord`], from the point in time:
//! changed ranges, allocated scan or full scan, why, and whether that is a
//! fallback: a thin incremental whose parent's snapshot is gone, a volume
//! file on a file system that reports no holes).
//!
//! Must not: read holes, or write anything but packs, one index file and one
//! manifest into the repository.

use std::collections::HashSet;
use std::fs::File;
use std::ops::Range;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use chrono::Utc;
use nix::fcntl::{FallocateFlags, fallocate};
use uuid::Uuid;

use super::format::{
    self, BackupKind, BackupStats, CHUNK_SIZE, Codec, Digest, MANIFEST_FORMAT, MANIFEST_VERSION,
    Manifest, VolumeRef,
};
use super::repo::{Index, SessionKind};
use super::{BackupError, Progress, Repository};
use crate::driver::{Driver, Mark, ObjKind, PitRequest};
pub use crate::driver::{PitMethod as PointInTime, ReadMethod, ReadRecord, Reads as ReadPlan};

/// Slots per read batch (4 MiB).
const BATCH_SLOTS: u64 = 64;
/// Read buffers in flight.
const BUFFERS: usize = 6;
/// Hashing/compressing threads (the machines are 2-core; the reader and the
/// pack writer mostly wait on I/O).
const WORKERS: usize = 2;

/// Full, incremental, or as the policy says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No parent.
    Full,
    /// Against the newest backup (full when there is none).
    Incremental,
    /// The `BackupPolicy`'s rule: incremental unless `incremental` is false,
    /// and every `full_every`-th backup full (0: only the first).
    Policy {
        /// `spec.incremental`.
        incremental: bool,
        /// `spec.fullEvery`.
        full_every: u32,
    },
}

/// What to back up, where.
#[derive(Clone, Copy)]
pub struct RunSpec<'a> {
    /// The backup's id (the caller makes it, so a failure can be recorded
    /// under it): a random UUID, so 8 hex digits name it unambiguously.
    pub id: Uuid,
    /// The repository.
    pub repo: &'a Repository,
    /// The volume's back end.
    pub driver: &'a dyn Driver,
    /// The volume's uuid in that back end.
    pub volume: Uuid,
    /// The policy's name, recorded for retention.
    pub policy: Option<&'a str>,
    /// Full or incremental.
    pub mode: Mode,
    /// Codec for new chunks.
    pub codec: Codec,
    /// This host's name.
    pub host: &'a str,
    /// The policy's `force`: take a point in time of a volume in use;
    /// without it a `file` volume is read itself (as Cinder backs up an
    /// available volume directly) and an open LV is refused.
    pub force: bool,
    /// The manifests export the volume (iSCSI): the kernel may be writing
    /// it without any process holding it, so it is never read in place
    /// under `force`.
    pub exported: bool,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The manifest written.
    pub manifest: Manifest,
    /// How the point in time was taken.
    pub method: PointInTime,
    /// How the source was read, and why.
    pub read: ReadRecord,
    /// Time taken by the point-in-time copy.
    pub snapshot_time: Duration,
    /// Whole run.
    pub elapsed: Duration,
}

impl RunReport {
    /// The run's figures as one JSON object (`backup run --json`), with the
    /// location of the repository it went into.
    pub fn summary(&self, repository: &str) -> serde_json::Value {
        let m = &self.manifest;
        let s = &m.stats;
        serde_json::json!({
            "id": m.id,
            "volume": m.volume.name,
            "kind": m.kind.to_string(),
            "parent": m.parent,
            "pointInTime": self.method.as_str(),
            "read": self.read,
            "size": m.volume.size,
            "readBytes": s.read_bytes,
            "extents": s.extents,
            "storedBytes": s.stored_bytes,
            "newChunks": s.new_chunks,
            "newBytes": s.new_bytes,
            "unchangedChunks": s.unchanged_chunks,
            "dedupChunks": s.dedup_chunks,
            "zeroChunks": s.zero_chunks,
            "chunks": s.chunks,
            "snapshotSecs": self.snapshot_time.as_secs_f64(),
            "elapsedSecs": self.elapsed.as_secs_f64(),
            "repository": repository,
        })
    }
}

/// Picks the parent for `mode` among a volume's backups (oldest first).
pub fn choose_parent(mode: Mode, history: &[Manifest]) -> Option<&Manifest> {
    let kinds: Vec<BackupKind> = history.iter().map(|m| m.kind).collect();
    next_is_incremental(mode, &kinds)
        .then(|| history.last())
        .flatten()
}

/// Whether the next backup under `mode` is an incremental (against the
/// newest), given the kinds of a volume's backups so far, oldest first:
/// the rule [`choose_parent`] applies, for what `plan` says the next run
/// will do.
pub fn next_is_incremental(mode: Mode, kinds: &[BackupKind]) -> bool {
    if kinds.is_empty() {
        return false;
    }
    match mode {
        Mode::Full
        | Mode::Policy {
            incremental: false, ..
        } => false,
        Mode::Incremental => true,
        Mode::Policy {
            incremental: true,
            full_every,
        } => {
            if full_every == 0 {
                return true;
            }
            let since_full = kinds
                .iter()
                .rev()
                .take_while(|k| **k == BackupKind::Incremental)
                .count();
            let since_full = u32::try_from(since_full).unwrap_or(u32::MAX);
            since_full + 1 < full_every
        }
    }
}

/// Runs one backup of volume `spec.volume` of `spec.driver`.
pub fn run(spec: &RunSpec<'_>, progress: &dyn Progress) -> Result<RunReport, BackupError> {
    let started = Instant::now();
    let repo = spec.repo;
    let _session = repo.session(SessionKind::Shared, "backup run")?;
    let vol = spec
        .driver
        .object(spec.volume)?
        .filter(|o| o.kind == ObjKind::Volume && o.mark == Mark::Ready)
        .ok_or_else(|| BackupError::Target {
            name: spec.volume.to_string(),
            reason: "no ready volume with this uuid in the back end".into(),
        })?;
    let history = repo.volume_manifests(spec.volume)?;
    let parent = choose_parent(spec.mode, &history);

    let started_at = Utc::now();
    let t = Instant::now();
    progress.stage("point in time");
    let pit = spec.driver.point_in_time(&PitRequest {
        volume: vol.uuid,
        backup: spec.id,
        parent: parent.map(|p| p.id),
        force: spec.force,
        exported: spec.exported,
    })?;
    let snapshot_time = t.elapsed();
    let method = pit.method();
    let read = pit.read().clone();
    tracing::info!(volume = %vol.name, read = %pit.path().display(), method = method.as_str(), secs = snapshot_time.as_secs_f64(), "point in time taken");
    let check = || pit.check().map_err(BackupError::from);
    let manifest = store(
        &Source {
            repo,
            id: spec.id,
            volume: volume_ref(spec.driver, &vol),
            policy: spec.policy,
            host: spec.host,
            codec: spec.codec,
            parent,
            path: pit.path(),
            scratch: pit.scratch(),
            plan: pit.reads().clone(),
            started_at,
            check: Some(&check),
            group: None,
        },
        progress,
    )?;
    pit.commit()?;
    Ok(RunReport {
        manifest,
        method,
        read,
        snapshot_time,
        elapsed: started.elapsed(),
    })
}

/// What a backup of volume object `vol` of `driver` records of it.
fn volume_ref(driver: &dyn Driver, vol: &crate::driver::Object) -> VolumeRef {
    VolumeRef {
        uuid: vol.uuid,
        name: vol.name.clone(),
        backend: driver.name().to_owned(),
        size: vol.size,
    }
}

/// One member of a group backup: its volume, the member snapshot of the
/// group's cut to read, and the group.
#[derive(Clone, Copy)]
pub struct MemberSpec<'a> {
    /// The backup's id.
    pub id: Uuid,
    /// The repository (the caller holds a shared session on it).
    pub repo: &'a Repository,
    /// The group's back end.
    pub driver: &'a dyn Driver,
    /// The member volume's uuid.
    pub volume: Uuid,
    /// Its member snapshot of the group's cut.
    pub snapshot: Uuid,
    /// The policy's name.
    pub policy: Option<&'a str>,
    /// Full or incremental.
    pub mode: Mode,
    /// Codec for new chunks.
    pub codec: Codec,
    /// This host's name.
    pub host: &'a str,
    /// When the group's cut was taken (every member's `startedAt`).
    pub started_at: chrono::DateTime<Utc>,
    /// The group backup.
    pub group: &'a format::GroupRef,
}

/// How a member of a group backup is read: its snapshot's data extents (a
/// file), its mapped ranges (a thin LV) or the whole of it (a thick LV),
/// every chunk compared with the parent's.
fn member_reads(layout: crate::driver::Layout, size: u64) -> (ReadPlan, ReadRecord) {
    use crate::driver::Layout;
    match layout {
        Layout::Seek => (
            ReadPlan::DataExtents,
            ReadRecord::new(
                ReadMethod::AllocatedScan,
                "the member's snapshot of the group's cut, its data extents",
                false,
            ),
        ),
        Layout::Ranges(r) => (
            ReadPlan::Ranges(r),
            ReadRecord::new(
                ReadMethod::AllocatedScan,
                "the member's snapshot of the group's cut, its mapped ranges",
                false,
            ),
        ),
        Layout::Everything => (
            ReadPlan::Ranges(std::iter::once(0..size).collect()),
            ReadRecord::new(
                ReadMethod::FullScan,
                "the member's snapshot of the group's cut, read whole (a copy-on-write snapshot knows no allocation)",
                false,
            ),
        ),
    }
}

/// Backs up one member of a group backup from its member snapshot: the
/// parent is the volume's newest backup, as for a single run; what is read
/// is the snapshot's allocation ([`member_reads`]).
pub fn run_member(
    spec: &MemberSpec<'_>,
    progress: &dyn Progress,
) -> Result<RunReport, BackupError> {
    let started = Instant::now();
    let vol = spec
        .driver
        .object(spec.volume)?
        .filter(|o| o.kind == ObjKind::Volume)
        .ok_or_else(|| BackupError::Target {
            name: spec.volume.to_string(),
            reason: "no volume with this uuid in the back end".into(),
        })?;
    let snap = spec
        .driver
        .object(spec.snapshot)?
        .filter(|o| o.kind == ObjKind::Snapshot)
        .ok_or_else(|| BackupError::Target {
            name: vol.name.clone(),
            reason: format!("its snapshot {} of the group's cut is gone", spec.snapshot),
        })?;
    let history = spec.repo.volume_manifests(spec.volume)?;
    let parent = choose_parent(spec.mode, &history);
    progress.stage("group snapshot");
    let data = spec.driver.data_path(spec.snapshot)?;
    let (plan, read) = member_reads(spec.driver.layout(spec.snapshot)?, snap.size.min(vol.size));
    let manifest = store(
        &Source {
            repo: spec.repo,
            id: spec.id,
            volume: volume_ref(spec.driver, &vol),
            policy: spec.policy,
            host: spec.host,
            codec: spec.codec,
            parent,
            path: &data.path,
            scratch: false,
            plan,
            started_at: spec.started_at,
            check: None,
            group: Some(spec.group),
        },
        progress,
    )?;
    Ok(RunReport {
        manifest,
        method: PointInTime::GroupSnapshot,
        read,
        snapshot_time: Duration::ZERO,
        elapsed: started.elapsed(),
    })
}

/// A point-in-time source, ready to read, and where its backup goes.
pub(crate) struct Source<'a> {
    pub repo: &'a Repository,
    pub id: Uuid,
    pub volume: VolumeRef,
    pub policy: Option<&'a str>,
    pub host: &'a str,
    pub codec: Codec,
    /// The parent chosen by [`choose_parent`] (the caller needs it first).
    pub parent: Option<&'a Manifest>,
    /// The file or device to read.
    pub path: &'a Path,
    /// A scratch copy: punched as read.
    pub scratch: bool,
    pub plan: ReadPlan,
    pub started_at: chrono::DateTime<Utc>,
    /// Called after the data is stored and before the manifest is written:
    /// an error stops the commit (a thick snapshot that overflowed).
    pub check: Option<&'a dyn Fn() -> Result<(), BackupError>>,
    /// The group backup it is a member of.
    pub group: Option<&'a format::GroupRef>,
}

/// Reads `src` through the chunk pipeline and commits the backup (packs →
/// index file → manifest). The caller holds a shared session.
pub(crate) fn store(src: &Source<'_>, progress: &dyn Progress) -> Result<Manifest, BackupError> {
    let repo = src.repo;
    if matches!(src.plan, ReadPlan::ChangedSinceParent(_)) && src.parent.is_none() {
        return Err(BackupError::Target {
            name: src.volume.name.clone(),
            reason: "changed ranges given without a parent backup (a bug)".into(),
        });
    }
    let parent_table = src.parent.map(format::decode_table).transpose()?;
    let index = repo.load_index()?;
    let (table, stats, sealed) = chunk_and_store(
        src.path,
        src.scratch,
        src.volume.size,
        &src.plan,
        &index,
        parent_table.as_deref(),
        src.codec,
        repo,
        progress,
    )?;
    if !sealed.is_empty() {
        repo.write_index(&sealed)?;
    }
    if let Some(check) = src.check {
        check()?;
    }
    let (chunks, chunks_digest) = format::encode_table(&table)?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT.to_owned(),
        version: if src.group.is_some() {
            format::MANIFEST_VERSION_GROUP
        } else {
            MANIFEST_VERSION
        },
        id: src.id,
        repository: repo.config().id,
        volume: src.volume.clone(),
        policy: src.policy.map(str::to_owned),
        kind: if src.parent.is_some() {
            BackupKind::Incremental
        } else {
            BackupKind::Full
        },
        parent: src.parent.map(|p| p.id),
        host: src.host.to_owned(),
        started_at: src.started_at,
        finished_at: Utc::now(),
        chunk_size: CHUNK_SIZE,
        stats,
        chunks,
        chunks_digest,
        group: src.group.cloned(),
    };
    repo.write_manifest(&manifest)?;
    tracing::info!(backup = %manifest.id, volume = %src.volume.name, kind = %manifest.kind, "backup written");
    Ok(manifest)
}

/// Slot ranges `[start, end)` covering byte ranges (clipped to `size`),
/// merged; and how many ranges there were.
pub fn byte_ranges_to_slots(ranges: &[Range<u64>], size: u64) -> (Vec<(u64, u64)>, u64) {
    let chunk = u64::from(CHUNK_SIZE);
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut sorted: Vec<Range<u64>> = ranges
        .iter()
        .map(|r| r.start.min(size)..r.end.min(size))
        .filter(|r| r.start < r.end)
        .collect();
    sorted.sort_by_key(|r| r.start);
    let n = sorted.len() as u64;
    for r in sorted {
        let (first, past) = (r.start / chunk, r.end.div_ceil(chunk));
        match out.last_mut() {
            Some(last) if last.1 >= first => last.1 = last.1.max(past),
            _ => out.push((first, past)),
        }
    }
    (out, n)
}

/// Slot ranges `[start, end)` covering the data extents of `file`.
pub fn data_slots(
    file: &File,
    path: &Path,
    len: u64,
) -> Result<(Vec<(u64, u64)>, u64), BackupError> {
    let chunk = u64::from(CHUNK_SIZE);
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut extents = 0;
    let mut offset = 0;
    while offset < len {
        let next =
            crate::blockio::next_extent(file, offset, len).map_err(|source| BackupError::Io {
                op: "seek data in",
                path: path.to_owned(),
                source,
            })?;
        let Some((start, end)) = next else {
            break;
        };
        extents += 1;
        let (first, past) = (start / chunk, end.div_ceil(chunk));
        match ranges.last_mut() {
            Some(last) if last.1 >= first => last.1 = last.1.max(past),
            _ => ranges.push((first, past)),
        }
        offset = end;
    }
    Ok((ranges, extents))
}

struct Batch {
    first_slot: u64,
    len: usize,
    buf: Vec<u8>,
}

struct Blob {
    id: Digest,
    codec: Codec,
    raw_len: u32,
    stored: Vec<u8>,
}

#[derive(Default)]
struct WorkerOut {
    table: Vec<(u64, Digest)>,
    stats: BackupStats,
}

type Stored = (
    format::Table,
    BackupStats,
    Vec<(Digest, Vec<format::BlobEntry>)>,
);

// The pipeline's set-up, threads and merge read best as one piece.
#[allow(clippy::too_many_lines, clippy::too_many_arguments)]
fn chunk_and_store(
    path: &Path,
    scratch: bool,
    size: u64,
    plan: &ReadPlan,
    index: &Index,
    parent: Option<&[(u64, Digest)]>,
    codec: Codec,
    repo: &Repository,
    progress: &dyn Progress,
) -> Result<Stored, BackupError> {
    let c = u64::from(CHUNK_SIZE);
    // The scratch copy is opened for writing too: each batch is punched out
    // once read, so its dirty pages are dropped instead of written back
    // (it would otherwise double the disk writes of a full backup).
    let file = File::options()
        .read(true)
        .write(scratch)
        .open(path)
        .map_err(|source| BackupError::Io {
            op: "open",
            path: path.to_owned(),
            source,
        })?;
    let (ranges, extents) = match plan {
        ReadPlan::DataExtents => data_slots(&file, path, size)?,
        ReadPlan::Ranges(r) | ReadPlan::ChangedSinceParent(r) => byte_ranges_to_slots(r, size),
    };
    progress.stage(if matches!(plan, ReadPlan::DataExtents) {
        "reading data extents"
    } else {
        "reading mapped or changed ranges"
    });
    let total: u64 = ranges.iter().map(|&(a, b)| (b * c).min(size) - a * c).sum();
    progress.total(total);

    let abort = AtomicBool::new(false);
    let claimed: Mutex<HashSet<Digest>> = Mutex::new(HashSet::new());
    let (pool_tx, pool_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..BUFFERS {
        let _ = pool_tx.send(vec![
            0u8;
            usize::try_from(BATCH_SLOTS * c).unwrap_or(4 << 20)
        ]);
    }
    let (work_tx, work_rx) = mpsc::sync_channel::<Batch>(BUFFERS);
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (blob_tx, blob_rx) = mpsc::sync_channel::<Blob>(64);

    let mut writer = repo.pack_writer();
    let result = std::thread::scope(|s| {
        let (file, ranges, abort_r) = (&file, &ranges, &abort);
        let reader = s.spawn(move || {
            let r = read_batches(
                file, path, scratch, size, ranges, &pool_rx, &work_tx, abort_r,
            );
            drop(work_tx);
            r
        });
        let mut workers = Vec::new();
        for _ in 0..WORKERS {
            let work_rx = Arc::clone(&work_rx);
            let pool_tx = pool_tx.clone();
            let blob_tx = blob_tx.clone();
            let (abort, claimed) = (&abort, &claimed);
            workers.push(s.spawn(move || {
                work(
                    repo, &work_rx, &pool_tx, &blob_tx, index, parent, codec, claimed, abort,
                    progress,
                )
            }));
        }
        drop((blob_tx, pool_tx));
        drop(work_rx);
        // The pack writer runs here.
        let mut write_result = Ok(());
        for blob in &blob_rx {
            if let Err(e) = writer.add(blob.id, blob.codec, blob.raw_len, &blob.stored) {
                abort.store(true, Ordering::Relaxed);
                write_result = Err(e);
                break;
            }
        }
        drop(blob_rx);
        let mut outs = Vec::new();
        let mut first_err = write_result.err();
        for w in workers {
            match w.join() {
                Ok(Ok(out)) => outs.push(out),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(BackupError::Panicked("backup worker"));
                }
            }
        }
        match reader.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(BackupError::Panicked("backup reader"));
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(outs),
        }
    });
    progress.stage("making packs durable");
    let outs = match result.and_then(|o| writer.finish().map(|()| o)) {
        Ok(o) => o,
        Err(e) => {
            writer.abandon();
            return Err(e);
        }
    };
    let mut stats = BackupStats {
        extents,
        ..BackupStats::default()
    };
    let mut table = Vec::new();
    if let (ReadPlan::ChangedSinceParent(_), Some(p)) = (plan, parent) {
        // Slots outside the changed ranges are the parent's, unread.
        let mut r = ranges.iter().peekable();
        for &(slot, id) in p {
            while r.peek().is_some_and(|&&(_, past)| past <= slot) {
                r.next();
            }
            if r.peek().is_some_and(|&&(first, _)| first <= slot) {
                continue;
            }
            table.push((slot, id));
            stats.unchanged_chunks += 1;
        }
    }
    for o in outs {
        table.extend(o.table);
        stats.read_bytes += o.stats.read_bytes;
        stats.zero_chunks += o.stats.zero_chunks;
        stats.unchanged_chunks += o.stats.unchanged_chunks;
        stats.dedup_chunks += o.stats.dedup_chunks;
        stats.new_chunks += o.stats.new_chunks;
        stats.new_bytes += o.stats.new_bytes;
        stats.stored_bytes += o.stats.stored_bytes;
    }
    table.sort_unstable_by_key(|e| e.0);
    stats.chunks = table.len() as u64;
    Ok((table, stats, std::mem::take(&mut writer.sealed)))
}

#[allow(clippy::too_many_arguments)] // the pipeline's shared pieces, named
fn read_batches(
    file: &File,
    path: &Path,
    scratch: bool,
    size: u64,
    ranges: &[(u64, u64)],
    pool: &mpsc::Receiver<Vec<u8>>,
    work: &mpsc::SyncSender<Batch>,
    abort: &AtomicBool,
) -> Result<(), BackupError> {
    let c = u64::from(CHUNK_SIZE);
    // Batches as (first slot, slots): front to back for the volume itself
    // (readahead), back to front for the scratch copy. The kernel writes a
    // dirty file back from its start; consuming the copy from its end and
    // punching each batch drops those pages before writeback reaches them,
    // instead of paying a second full write of the data (measured: the
    // front-to-back order spent ~3 s of a 3 GiB full backup on the copy's
    // writeback competing with the packs).
    let mut batches: Vec<(u64, u64)> = Vec::new();
    for &(a, b) in ranges {
        let mut slot = a;
        while slot < b {
            let n = (b - slot).min(BATCH_SLOTS);
            batches.push((slot, n));
            slot += n;
        }
    }
    if scratch {
        batches.reverse();
    }
    for (slot, n) in batches {
        if abort.load(Ordering::Relaxed) {
            return Ok(());
        }
        let start = slot * c;
        let len = usize::try_from(((slot + n) * c).min(size) - start).unwrap_or(0);
        let Ok(mut buf) = pool.recv() else {
            return Ok(());
        };
        file.read_exact_at(&mut buf[..len], start)
            .map_err(|source| BackupError::Io {
                op: "read",
                path: path.to_owned(),
                source,
            })?;
        if scratch {
            punch_scratch(file, start, len);
        }
        if work
            .send(Batch {
                first_slot: slot,
                len,
                buf,
            })
            .is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)] // the pipeline's shared pieces, named
fn work(
    repo: &Repository,
    rx: &Mutex<mpsc::Receiver<Batch>>,
    pool: &mpsc::Sender<Vec<u8>>,
    blobs: &mpsc::SyncSender<Blob>,
    index: &Index,
    parent: Option<&[(u64, Digest)]>,
    codec: Codec,
    claimed: &Mutex<HashSet<Digest>>,
    abort: &AtomicBool,
    progress: &dyn Progress,
) -> Result<WorkerOut, BackupError> {
    let mut out = WorkerOut::default();
    let mut codecs = format::Codecs::default();
    loop {
        let batch = {
            let Ok(guard) = rx.lock() else {
                return Err(BackupError::Panicked("backup worker"));
            };
            guard.recv()
        };
        let Ok(batch) = batch else {
            return Ok(out);
        };
        if abort.load(Ordering::Relaxed) {
            return Ok(out);
        }
        for (i, chunk) in batch.buf[..batch.len]
            .chunks(CHUNK_SIZE as usize)
            .enumerate()
        {
            let slot = batch.first_slot + i as u64;
            out.stats.read_bytes += chunk.len() as u64;
            if is_zero(chunk) {
                out.stats.zero_chunks += 1;
                continue;
            }
            let id = repo.chunk_id(chunk);
            out.table.push((slot, id));
            let same = parent.is_some_and(|p| {
                p.binary_search_by_key(&slot, |e| e.0)
                    .is_ok_and(|k| p[k].1 == id)
            });
            if same {
                out.stats.unchanged_chunks += 1;
                continue;
            }
            let fresh = !index.has_usable(&id)
                && claimed
                    .lock()
                    .map_err(|_| BackupError::Panicked("backup worker"))?
                    .insert(id);
            if !fresh {
                out.stats.dedup_chunks += 1;
                continue;
            }
            let (used, stored) = codecs.compress(codec, chunk);
            let stored = repo.seal_blob(&id, stored);
            out.stats.new_chunks += 1;
            out.stats.new_bytes += chunk.len() as u64;
            out.stats.stored_bytes += stored.len() as u64;
            let blob = Blob {
                id,
                codec: used,
                raw_len: u32::try_from(chunk.len()).unwrap_or(CHUNK_SIZE),
                stored,
            };
            if blobs.send(blob).is_err() {
                // The writer stopped: it reports why.
                return Ok(out);
            }
        }
        progress.advance(batch.len as u64);
        let _ = pool.send(batch.buf);
    }
}

/// Drops `[start, start + len)` of the scratch copy (best effort: a
/// filesystem that cannot punch holes just writes the copy back).
fn punch_scratch(file: &File, start: u64, len: usize) {
    let (Ok(off), Ok(n)) = (i64::try_from(start), i64::try_from(len)) else {
        return;
    };
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    let _ = fallocate(file.as_fd(), flags, off, n);
}

/// Whether every byte is zero: an OR-fold per 4 KiB block (vectorised by
/// the compiler), stopping at the first non-zero block.
pub fn is_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(4096)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kind: BackupKind, n: u128) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT.into(),
            version: 1,
            id: Uuid::from_u128(n),
            repository: Uuid::nil(),
            volume: VolumeRef {
                uuid: Uuid::nil(),
                name: "v".into(),
                backend: "b".into(),
                size: 0,
            },
            policy: None,
            kind,
            parent: None,
            host: "h".into(),
            started_at: Utc::now(),
            finished_at: Utc::now(),
            chunk_size: CHUNK_SIZE,
            stats: BackupStats::default(),
            chunks: String::new(),
            chunks_digest: Digest::of(b""),
            group: None,
        }
    }

    #[test]
    fn parent_choice_follows_full_every() {
        use BackupKind::{Full, Incremental};
        let policy = |full_every| Mode::Policy {
            incremental: true,
            full_every,
        };
        assert!(choose_parent(Mode::Incremental, &[]).is_none());
        let h = vec![m(Full, 1), m(Incremental, 2)];
        assert_eq!(
            choose_parent(Mode::Incremental, &h).unwrap().id,
            Uuid::from_u128(2)
        );
        assert!(choose_parent(Mode::Full, &h).is_none());
        // fullEvery 3: full, inc, inc, full.
        assert!(choose_parent(policy(3), &h).is_some());
        let h3 = vec![m(Full, 1), m(Incremental, 2), m(Incremental, 3)];
        assert!(choose_parent(policy(3), &h3).is_none());
        assert!(choose_parent(policy(0), &h3).is_some());
        assert!(choose_parent(policy(1), &h).is_none());
        let off = Mode::Policy {
            incremental: false,
            full_every: 7,
        };
        assert!(choose_parent(off, &h).is_none());
    }

    #[test]
    fn byte_ranges_become_whole_merged_slots_within_the_volume() {
        const K: u64 = 1024;
        // unsorted, touching and overlapping slot ranges; clipped at 1 MiB
        let (slots, n) = byte_ranges_to_slots(
            &[
                640 * K..700 * K,
                0..1,
                64 * K..128 * K,
                100 * K..130 * K,
                2048 * K..4096 * K,
            ],
            1024 * K,
        );
        assert_eq!(slots, [(0, 3), (10, 11)]);
        assert_eq!(n, 4, "the range beyond the end is dropped");
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&vec![0u8; 65536]));
        assert!(is_zero(&[]));
        let mut v = vec![0u8; 65533];
        v[65532] = 1;
        assert!(!is_zero(&v));
        v[65532] = 0;
        v[9] = 1;
        assert!(!is_zero(&v));
    }
}
