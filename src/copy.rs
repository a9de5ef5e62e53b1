//! The block copy engine: moves a volume's data from one file or block device
//! to another, reading only where the source holds data, keeping the target
//! sparse where it can be, zeroing it where it cannot be trusted, resumable
//! from a checkpoint, rate-limited, and hashing what it reads.
//!
//! Owns the byte loop of migrations (and of thick LV clones, through
//! [`crate::lvm`]). It knows nothing of back ends: the caller says where the
//! source's data is ([`Extents`]: `SEEK_DATA`/`SEEK_HOLE` for files, a thin
//! LV's mapped ranges, or "everything" for a thick LV, where zero-detection
//! does the rest) and what the target reads where nothing is written
//! ([`Target`]).
//!
//! # The grid
//! Work happens on a fixed grid of [`BLOCK`] (1 MiB) blocks from offset 0.
//! A block that no extent touches is a hole: not read, and on a
//! [`Target::MustZero`] target zeroed (`FALLOC_FL_ZERO_RANGE`, the kernel's
//! `BLKZEROOUT` path, coalesced into long runs). A block an extent touches is
//! read (I/O of up to [`CHUNK`] bytes); if it reads as all zeros it is treated
//! like a hole, else written. So a thick target never keeps a stale byte of
//! whatever used its extents before (Cinder's `dd conv=sparse` decides from
//! the source and does), and a sparse target gets no blocks for zeros.
//!
//! A reader thread walks the extents and reads up to [`AHEAD`] chunks ahead
//! of the thread that hashes, writes and zeroes, so the source's reads and
//! the target's writes overlap (a single loop would leave the disk idle
//! while it hashes).
//!
//! # The content hash
//! [`content_hash`] is BLAKE3 over the length and the BLAKE3 digest of every
//! grid block in order, where a hole block's digest is that of zeros (not
//! read). It depends on the bytes only, not on where a file has holes, so a
//! sparse source and a thick target of equal content hash equal. The copy
//! computes the source's hash on the way (no second read) when it starts at
//! offset 0.
//!
//! # Resuming
//! [`Job::start`] (a grid-aligned offset) skips everything before it: the
//! caller passes the offset of the last checkpoint, which [`Observer::checkpoint`]
//! received only after the target's data up to there was synced.
//!
//! Must not: decide names or ownership, print (progress goes to the
//! [`Observer`]), or trust the target's content without the caller verifying
//! it (see [`content_hash`]).

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The grid block: the unit of zero-detection and of the content hash.
pub const BLOCK: u64 = 1 << 20;
/// Largest single read or write.
pub const CHUNK: u64 = 8 << 20;
/// Checkpoint at least every this many bytes of the volume walked.
pub const CHECKPOINT_BYTES: u64 = 256 << 20;
/// ... and at least this often.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// Errors of the copy engine.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A read, write, zeroing or sync failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file or device.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The target is smaller than the data to copy.
    #[error("{} holds {target} bytes, less than the {source_len} to copy", path.display())]
    TargetTooSmall {
        /// The target.
        path: PathBuf,
        /// Its length.
        target: u64,
        /// The source's length.
        source_len: u64,
    },
    /// The observer refused a checkpoint (the journal could not be written).
    #[error("cannot checkpoint the copy: {0}")]
    Checkpoint(String),
    /// The observer stopped the copy before it wrote more
    /// ([`Observer::may_write`]); what was copied is checkpointed.
    #[error("{0}")]
    Stopped(String),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CopyError {
    let path = path.to_owned();
    move |source| CopyError::Io { op, path, source }
}

/// Where a source holds data: sorted, non-overlapping byte ranges. Anything
/// outside them reads as zeros.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Extents(Vec<Range<u64>>);

impl Extents {
    /// The whole `[0, len)` (unknown layout: zero-detection decides).
    pub fn all(len: u64) -> Self {
        Extents(std::iter::once(0..len).filter(|r| !r.is_empty()).collect())
    }

    /// From ranges in any order, clamped to `len`, merged where they touch.
    pub fn new(mut ranges: Vec<Range<u64>>, len: u64) -> Self {
        ranges.retain(|r| r.start < r.end.min(len));
        ranges.sort_by_key(|r| r.start);
        let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
        for r in ranges {
            let r = r.start..r.end.min(len);
            match out.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => out.push(r),
            }
        }
        Extents(out)
    }

    /// A file's data extents (`SEEK_DATA`/`SEEK_HOLE`; a file system without
    /// them reports everything as data).
    pub fn of_file(file: &File, path: &Path, len: u64) -> Result<Self, CopyError> {
        let ranges = crate::blockio::data_ranges(file, len).map_err(|source| CopyError::Io {
            op: "list the data extents of",
            path: path.to_owned(),
            source,
        })?;
        Ok(Extents::new(ranges, len))
    }

    /// The ranges.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.0
    }

    /// Bytes inside the ranges.
    pub fn bytes(&self) -> u64 {
        self.0.iter().map(|r| r.end - r.start).sum()
    }

    /// The ranges of both, merged (clamped to `len`).
    #[must_use]
    pub fn union(&self, other: &Extents, len: u64) -> Self {
        Extents::new(self.0.iter().chain(&other.0).cloned().collect(), len)
    }

    /// Whether every range of `other` lies in grid blocks these ranges touch
    /// (a target holds data only where its source does).
    pub fn covers(&self, other: &Extents, len: u64) -> bool {
        let blocks = self.blocks(len);
        other
            .0
            .iter()
            .all(|r| blocks.iter().any(|b| b.start <= r.start && r.end <= b.end))
    }

    /// Grid blocks touched by the ranges, as grid-aligned ranges clamped to
    /// `len`, merged.
    fn blocks(&self, len: u64) -> Vec<Range<u64>> {
        let aligned = self
            .0
            .iter()
            .map(|r| (r.start / BLOCK * BLOCK)..r.end.div_ceil(BLOCK).saturating_mul(BLOCK))
            .collect();
        Extents::new(aligned, len).0
    }
}

/// What the target reads where nothing is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Zeros: a new sparse file or a new thin LV. Holes are left alone.
    Holes,
    /// Anything (a thick LV's extents hold whatever was there): every byte
    /// not written is zeroed.
    MustZero,
}

/// One copy.
#[derive(Debug)]
pub struct Job<'a> {
    /// The source, read only.
    pub source: &'a File,
    /// For messages.
    pub source_path: &'a Path,
    /// The target, written.
    pub target: &'a File,
    /// For messages.
    pub target_path: &'a Path,
    /// Bytes of the source to copy.
    pub len: u64,
    /// The target's size (at least `len`); a [`Target::MustZero`] target is
    /// zeroed from `len` to here.
    pub target_len: u64,
    /// Where the source holds data.
    pub extents: &'a Extents,
    /// What the target reads where nothing is written.
    pub kind: Target,
    /// Resume here (a multiple of [`BLOCK`], from a checkpoint).
    pub start: u64,
    /// Bytes per second to read at most.
    pub bandwidth: Option<u64>,
    /// Compute the source's content hash on the way (migrations verify;
    /// clones need not pay for it).
    pub hash_source: bool,
    /// Also read the target back behind the writer and hash it (a
    /// [`Target::Holes`] target copied from 0 only: elsewhere the caller
    /// hashes the target after the copy).
    pub read_back: bool,
    /// Start the target's writeback after each chunk ([`start_writeback`]):
    /// for regular files. Not used on device-mapper targets: unmeasured
    /// there, and one unexplained lab hang in a copy onto a thin LV is not
    /// ruled out to be related.
    pub writeback: bool,
}

/// Where a copy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// Offset in the volume reached: everything before it is done.
    pub offset: u64,
    /// Bytes read from the source by this run.
    pub read: u64,
    /// Bytes written to the target by this run.
    pub written: u64,
    /// Bytes of data this run will read in all (the extents from `start`).
    pub to_read: u64,
}

/// Receives progress and checkpoints.
pub trait Observer {
    /// After each chunk.
    fn progress(&mut self, at: &Position);
    /// The target's data is durable up to `at.offset`: record it, so a
    /// later run can resume there.
    fn checkpoint(&mut self, at: &Position) -> Result<(), String>;
    /// Before the copy writes the next `next` bytes: how many bytes it may
    /// write, these included, before it asks again (at least `next`;
    /// `u64::MAX`: no limit, never asked again), or why it must stop now.
    /// Asked before the first write, before a write the allowance does not
    /// cover, and every [`CHECKPOINT_EVERY`] while it is limited, each time
    /// after the target's data is synced (so its space counts it); a stop
    /// checkpoints what was written and fails the copy with
    /// [`CopyError::Stopped`].
    fn may_write(&mut self, at: &Position, next: u64) -> Result<u64, String> {
        let _ = (at, next);
        Ok(u64::MAX)
    }
}

/// An observer that ignores everything.
pub struct Quiet;

impl Observer for Quiet {
    fn progress(&mut self, _: &Position) {}
    fn checkpoint(&mut self, _: &Position) -> Result<(), String> {
        Ok(())
    }
}

/// What a copy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Where it started.
    pub started_at: u64,
    /// Bytes read from the source.
    pub read: u64,
    /// Bytes written to the target.
    pub written: u64,
    /// Bytes zeroed on the target.
    pub zeroed: u64,
    /// The source's [`content_hash`], when the copy started at 0 (else the
    /// caller hashes the source itself).
    pub source_hash: Option<blake3::Hash>,
    /// The target's [`content_hash`] over the source's extents, read back
    /// while copying, when [`Job::read_back`] applied.
    pub target_hash: Option<blake3::Hash>,
    /// Time taken.
    pub elapsed: Duration,
}

/// Hashes grid blocks in order.
struct GridHasher {
    outer: blake3::Hasher,
    zero_block: blake3::Hash,
}

impl GridHasher {
    fn new(len: u64) -> Self {
        let mut outer = blake3::Hasher::new();
        outer.update(b"cinderblock.content.v1\0");
        outer.update(&len.to_le_bytes());
        let zero_block = blake3::hash(&vec![0u8; usize::try_from(BLOCK).unwrap_or(1 << 20)]);
        GridHasher { outer, zero_block }
    }

    /// A block of `n` bytes that reads as zeros.
    fn zeros(&mut self, n: u64) {
        if n == BLOCK {
            self.outer.update(self.zero_block.as_bytes());
        } else {
            let z = vec![0u8; usize::try_from(n).unwrap_or(0)];
            self.outer.update(blake3::hash(&z).as_bytes());
        }
    }

    /// Every block of `[from, to)` is zeros.
    fn zero_run(&mut self, from: u64, to: u64) {
        let mut pos = from;
        while pos < to {
            let n = (to - pos).min(BLOCK);
            self.zeros(n);
            pos += n;
        }
    }

    fn finish(&self) -> blake3::Hash {
        self.outer.finalize()
    }
}

fn read_full(file: &File, path: &Path, buf: &mut [u8], at: u64) -> Result<(), CopyError> {
    // A source shorter than promised reads as zeros past its end (a thin LV
    // or a file truncated under us is caught by the verification).
    let mut done = 0;
    while done < buf.len() {
        let n = file
            .read_at(&mut buf[done..], at + done as u64)
            .map_err(io_err("read", path))?;
        if n == 0 {
            buf[done..].fill(0);
            break;
        }
        done += n;
    }
    Ok(())
}

/// The content hash of the first `len` bytes of `file` (see the module
/// docs), reading only the blocks `extents` touches. Blocks are hashed on
/// up to two threads.
pub fn content_hash(
    file: &File,
    path: &Path,
    len: u64,
    extents: &Extents,
) -> Result<blake3::Hash, CopyError> {
    content_hash_with(file, path, len, extents, &mut |_| {})
}

/// [`content_hash`], telling `progress` the bytes read so far after each
/// read (of up to [`CHUNK`] bytes).
///
/// # Errors
/// A read failed.
pub fn content_hash_with(
    file: &File,
    path: &Path,
    len: u64,
    extents: &Extents,
    progress: &mut dyn FnMut(u64),
) -> Result<blake3::Hash, CopyError> {
    let mut read = 0;
    let mut h = GridHasher::new(len);
    let mut pos = 0;
    let mut buf = vec![0u8; usize::try_from(CHUNK).unwrap_or(8 << 20)];
    for run in extents.blocks(len) {
        h.zero_run(pos, run.start);
        let mut at = run.start;
        while at < run.end {
            let n = (run.end - at).min(CHUNK);
            let b = &mut buf[..usize::try_from(n).unwrap_or(0)];
            read_full(file, path, b, at)?;
            let digests = block_digests(b);
            for d in digests {
                h.outer.update(d.as_bytes());
            }
            at += n;
            read += n;
            progress(read);
        }
        pos = run.end;
    }
    h.zero_run(pos, len);
    Ok(h.finish())
}

/// Digests of each [`BLOCK`] of `buf`, the two halves on two threads.
fn block_digests(buf: &[u8]) -> Vec<blake3::Hash> {
    let bs = usize::try_from(BLOCK).unwrap_or(1 << 20);
    let blocks: Vec<&[u8]> = buf.chunks(bs).collect();
    if blocks.len() < 2 {
        return blocks.iter().map(|b| blake3::hash(b)).collect();
    }
    let mid = blocks.len() / 2;
    let (a, b) = blocks.split_at(mid);
    std::thread::scope(|s| {
        let first = s.spawn(|| a.iter().map(|x| blake3::hash(x)).collect::<Vec<_>>());
        let mut second: Vec<blake3::Hash> = b.iter().map(|x| blake3::hash(x)).collect();
        let mut out = first
            .join()
            .unwrap_or_else(|_| a.iter().map(|x| blake3::hash(x)).collect());
        out.append(&mut second);
        out
    })
}

/// Whether a block is all zeros (sixteen bytes at a time).
fn is_zero(b: &[u8]) -> bool {
    let mut words = b.chunks_exact(16);
    words
        .by_ref()
        .all(|w| u128::from_ne_bytes(w.try_into().unwrap_or([1; 16])) == 0)
        && words.remainder().iter().all(|x| *x == 0)
}

/// Paces reads to a rate.
struct Pace {
    rate: Option<u64>,
    since: Instant,
    bytes: u64,
}

impl Pace {
    fn account(&mut self, n: u64) {
        let Some(rate) = self.rate.filter(|r| *r > 0) else {
            return;
        };
        self.bytes += n;
        #[allow(clippy::cast_precision_loss)]
        let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        let spent = self.since.elapsed();
        if let Some(wait) = due.checked_sub(spent) {
            std::thread::sleep(wait);
        }
    }
}

/// A walk's figures, pacing and position at its start.
fn begin(start: u64, to_read: u64, bandwidth: Option<u64>) -> (Stats, Pace, Position) {
    (
        Stats {
            started_at: start,
            read: 0,
            written: 0,
            zeroed: 0,
            source_hash: None,
            target_hash: None,
            elapsed: Duration::ZERO,
        },
        Pace {
            rate: bandwidth,
            since: Instant::now(),
            bytes: 0,
        },
        Position {
            offset: start,
            read: 0,
            written: 0,
            to_read,
        },
    )
}

/// Zeroes `[from, to)` of a [`Target::MustZero`] target.
fn zero(job: &Job<'_>, from: u64, to: u64, stats: &mut Stats) -> Result<(), CopyError> {
    if to > from && job.kind == Target::MustZero {
        crate::blockio::zero(job.target, from, to - from)
            .map_err(io_err("zero", job.target_path))?;
        stats.zeroed += to - from;
    }
    Ok(())
}

/// Before writing up to `n` more bytes: asks the observer once this run's
/// `allowed` bytes (and when it was asked) no longer cover them, after
/// syncing the target (a thin pool or file system counts blocks only once
/// they leave the page cache). `Some(why)`: stop.
fn allowance(
    target: &File,
    path: &Path,
    observer: &mut dyn Observer,
    at: &Position,
    n: usize,
    allowed: &mut (u64, Instant),
) -> Result<Option<String>, CopyError> {
    let n = n as u64;
    if at.written.saturating_add(n) <= allowed.0
        && (allowed.0 == u64::MAX || allowed.1.elapsed() < CHECKPOINT_EVERY)
    {
        return Ok(None);
    }
    target.sync_data().map_err(io_err("sync", path))?;
    match observer.may_write(at, n) {
        Ok(more) => {
            *allowed = (at.written.saturating_add(more), Instant::now());
            Ok(None)
        }
        Err(why) => Ok(Some(why)),
    }
}

/// Makes the target durable up to `at.offset` (the pending zeros are part
/// of "done up to here") and tells the observer.
fn checkpoint(
    job: &Job<'_>,
    zero_from: &mut Option<u64>,
    at: &Position,
    stats: &mut Stats,
    observer: &mut dyn Observer,
) -> Result<(), CopyError> {
    if let Some(z) = zero_from.take() {
        zero(job, z, at.offset, stats)?;
    }
    job.target
        .sync_data()
        .map_err(io_err("sync", job.target_path))?;
    observer.checkpoint(at).map_err(CopyError::Checkpoint)
}

/// Runs a copy; see the module docs.
#[allow(clippy::too_many_lines)] // one loop over the walk, its cases kept together
pub fn copy(job: &Job<'_>, observer: &mut dyn Observer) -> Result<Stats, CopyError> {
    if job.target_len < job.len {
        return Err(CopyError::TargetTooSmall {
            path: job.target_path.to_owned(),
            target: job.target_len,
            source_len: job.len,
        });
    }
    let began = Instant::now();
    let start = (job.start / BLOCK * BLOCK).min(job.len);
    let mut hasher = (start == 0 && job.hash_source).then(|| GridHasher::new(job.len));
    let runs = job.extents.blocks(job.len);
    let to_read = runs
        .iter()
        .map(|r| {
            r.end
                .saturating_sub(r.start.max(start))
                .min(r.end - r.start)
        })
        .sum();
    let (mut stats, mut pace, mut at) = begin(start, to_read, job.bandwidth);
    let mut last_cp = (start, Instant::now());
    // Bytes this run may write before it asks the observer again, and when
    // it last asked.
    let mut allowed = (0u64, Instant::now());
    // A pending run of zeros on the target, zeroed in one call.
    let mut zero_from: Option<u64> = None;
    let bs = usize::try_from(BLOCK).unwrap_or(1 << 20);
    std::thread::scope(|scope| -> Result<(), CopyError> {
        // Reading runs ahead of hashing and writing by a few chunks.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Piece, CopyError>>(AHEAD);
        let (recycle, spare) = std::sync::mpsc::channel::<Vec<u8>>();
        let (src, src_path, len) = (job.source, job.source_path, job.len);
        scope.spawn(move || read_ahead(src, src_path, len, &runs, start, &tx, &spare));
        // The read-back: the same walk, on the target, after each write.
        let back = (job.read_back && start == 0 && job.kind == Target::Holes).then(|| {
            let (btx, brx) = std::sync::mpsc::sync_channel::<Walk>(AHEAD * 2);
            let (target, path) = (job.target, job.target_path);
            let handle = scope.spawn(move || read_back(target, path, len, &brx));
            (btx, handle)
        });
        for piece in rx {
            match piece? {
                Piece::Hole { from, to } => {
                    if let Some(h) = hasher.as_mut() {
                        h.zero_run(from, to);
                    }
                    if let Some((btx, _)) = &back {
                        let _ = btx.send(Walk::Hole(from, to));
                    }
                    zero_from.get_or_insert(from);
                    at.offset = to;
                }
                Piece::Data { pos, n, buf } => {
                    if let Some(why) =
                        allowance(job.target, job.target_path, observer, &at, n, &mut allowed)?
                    {
                        // What was written so far is kept: the next run
                        // resumes here.
                        checkpoint(job, &mut zero_from, &at, &mut stats, observer)?;
                        return Err(CopyError::Stopped(why));
                    }
                    let b = &buf[..n];
                    at.read += n as u64;
                    stats.read += n as u64;
                    if let Some(h) = hasher.as_mut() {
                        // A zero block's digest is the zero digest: one rule.
                        for d in block_digests(b) {
                            h.outer.update(d.as_bytes());
                        }
                    }
                    for (i, blk) in b.chunks(bs).enumerate() {
                        let off = pos + (i as u64) * BLOCK;
                        if is_zero(blk) {
                            zero_from.get_or_insert(off);
                            continue;
                        }
                        if let Some(z) = zero_from.take() {
                            zero(job, z, off, &mut stats)?;
                        }
                        job.target
                            .write_all_at(blk, off)
                            .map_err(io_err("write", job.target_path))?;
                        stats.written += blk.len() as u64;
                        at.written += blk.len() as u64;
                    }
                    let _ = recycle.send(buf);
                    if job.writeback {
                        start_writeback(job.target, pos, n as u64);
                    }
                    if let Some((btx, _)) = &back {
                        let _ = btx.send(Walk::Data(pos, n as u64));
                    }
                    at.offset = pos + n as u64;
                    pace.account(n as u64);
                    observer.progress(&at);
                    if at.offset - last_cp.0 >= CHECKPOINT_BYTES
                        || last_cp.1.elapsed() >= CHECKPOINT_EVERY
                    {
                        checkpoint(job, &mut zero_from, &at, &mut stats, observer)?;
                        last_cp = (at.offset, Instant::now());
                    }
                }
            }
        }
        if let Some((btx, handle)) = back {
            drop(btx);
            stats.target_hash = handle.join().ok().and_then(Result::ok);
        }
        Ok(())
    })?;
    let z = zero_from.unwrap_or(job.len);
    zero(job, z, job.target_len, &mut stats)?;
    job.target
        .sync_all()
        .map_err(io_err("sync", job.target_path))?;
    at.offset = job.len;
    observer.progress(&at);
    // The whole copy is durable: a run killed before its verification (or
    // waiting for another host's hash) resumes there, not at the last
    // checkpoint inside it.
    observer.checkpoint(&at).map_err(CopyError::Checkpoint)?;
    stats.source_hash = hasher.map(|h| h.finish());
    stats.elapsed = began.elapsed();
    Ok(stats)
}

/// The unit a difference copy compares and writes ([`delta`]): a thin
/// pool's smallest chunk, so a block that did not change is never written
/// and keeps sharing its chunk with the snapshot taken before.
pub const DELTA_BLOCK: u64 = 64 << 10;

/// One difference copy ([`delta`]): `target` made equal to `source`,
/// writing only the [`DELTA_BLOCK`]s where they differ.
#[derive(Debug)]
pub struct Delta<'a> {
    /// The source, read only.
    pub source: &'a File,
    /// For messages.
    pub source_path: &'a Path,
    /// The target, read and written.
    pub target: &'a File,
    /// For messages.
    pub target_path: &'a Path,
    /// Bytes of the source.
    pub len: u64,
    /// Where either of them may hold anything but zeros: outside these
    /// ranges both read as zeros (the caller's invariant), so nothing
    /// there is read.
    pub extents: &'a Extents,
    /// Resume here (a multiple of [`BLOCK`], from a checkpoint).
    pub start: u64,
    /// Bytes per second to read at most (source and target together).
    pub bandwidth: Option<u64>,
}

/// Makes `job.target` equal to `job.source` inside `job.extents` by
/// writing only the [`DELTA_BLOCK`]s that differ: how a snapshot chain
/// moves (the target holds the previous snapshot's content, and gets the
/// next one's differences, so a thin target shares every unchanged chunk
/// with the snapshot taken of it before). Reads both sides; checkpoints
/// as [`copy`] does (the target synced first); `Stats::read` counts the
/// bytes read from both, and `Stats::source_hash` is the source's
/// [`content_hash`] when it started at 0. Resuming at any checkpoint is
/// exact: every block before it was made equal and synced, every block
/// after it is compared again.
pub fn delta(job: &Delta<'_>, observer: &mut dyn Observer) -> Result<Stats, CopyError> {
    let began = Instant::now();
    let start = (job.start / BLOCK * BLOCK).min(job.len);
    let mut hasher = (start == 0).then(|| GridHasher::new(job.len));
    let runs: Vec<Range<u64>> = job
        .extents
        .blocks(job.len)
        .into_iter()
        .filter(|r| r.end > start)
        .map(|r| r.start.max(start)..r.end)
        .collect();
    let to_read = runs.iter().map(|r| r.end - r.start).sum::<u64>() * 2;
    let (mut stats, mut pace, mut at) = begin(start, to_read, job.bandwidth);
    let mut last_cp = (start, Instant::now());
    let chunk = usize::try_from(CHUNK).unwrap_or(8 << 20);
    let (mut src, mut dst) = (vec![0u8; chunk], vec![0u8; chunk]);
    let db = usize::try_from(DELTA_BLOCK).unwrap_or(64 << 10);
    let mut cur = start;
    // As in `copy`: what this run may write before it asks again.
    let mut allowed = (0u64, Instant::now());
    for run in runs {
        if let Some(h) = hasher.as_mut() {
            h.zero_run(cur, run.start);
        }
        let mut pos = run.start;
        while pos < run.end {
            let n = usize::try_from((run.end - pos).min(CHUNK)).unwrap_or(chunk);
            if let Some(why) =
                allowance(job.target, job.target_path, observer, &at, n, &mut allowed)?
            {
                // Synced up to `at.offset` by `allowance`: kept.
                observer.checkpoint(&at).map_err(CopyError::Checkpoint)?;
                return Err(CopyError::Stopped(why));
            }
            let (want, have) = (&mut src[..n], &mut dst[..n]);
            read_full(job.source, job.source_path, want, pos)?;
            read_full(job.target, job.target_path, have, pos)?;
            if let Some(h) = hasher.as_mut() {
                for digest in block_digests(want) {
                    h.outer.update(digest.as_bytes());
                }
            }
            // Runs of differing blocks, each written in one call.
            let differs = |at: usize| {
                let end = (at + db).min(n);
                want[at..end] != have[at..end]
            };
            let mut from = 0;
            while from < n {
                if !differs(from) {
                    from = (from + db).min(n);
                    continue;
                }
                let mut to = (from + db).min(n);
                while to < n && differs(to) {
                    to = (to + db).min(n);
                }
                job.target
                    .write_all_at(&want[from..to], pos + from as u64)
                    .map_err(io_err("write", job.target_path))?;
                stats.written += (to - from) as u64;
                at.written += (to - from) as u64;
                from = to;
            }
            stats.read += 2 * n as u64;
            at.read += 2 * n as u64;
            pos += n as u64;
            at.offset = pos;
            pace.account(2 * n as u64);
            observer.progress(&at);
            if at.offset - last_cp.0 >= CHECKPOINT_BYTES || last_cp.1.elapsed() >= CHECKPOINT_EVERY
            {
                job.target
                    .sync_data()
                    .map_err(io_err("sync", job.target_path))?;
                observer.checkpoint(&at).map_err(CopyError::Checkpoint)?;
                last_cp = (at.offset, Instant::now());
            }
        }
        cur = run.end;
    }
    if let Some(h) = hasher.as_mut() {
        h.zero_run(cur.max(start), job.len);
    }
    job.target
        .sync_all()
        .map_err(io_err("sync", job.target_path))?;
    at.offset = job.len;
    observer.progress(&at);
    // The whole copy is durable: a run killed before its verification (or
    // waiting for another host's hash) resumes there, not at the last
    // checkpoint inside it.
    observer.checkpoint(&at).map_err(CopyError::Checkpoint)?;
    stats.source_hash = hasher.map(|h| h.finish());
    stats.elapsed = began.elapsed();
    Ok(stats)
}

/// Starts the kernel writing `[pos, pos + n)` of the target back now
/// (`POSIX_FADV_DONTNEED` queues the dirty pages for writeback without
/// waiting, and drops only clean ones, so what was just written stays
/// cached), so the checkpoint's `fdatasync` finds little left to do instead
/// of stalling the copy while 256 MiB are written. A sync in a thread beside
/// the copy was tried and was slower: writes then contend with the sync.
fn start_writeback(target: &File, pos: u64, n: u64) {
    let (Ok(off), Ok(len)) = (i64::try_from(pos), i64::try_from(n)) else {
        return;
    };
    let _ = nix::fcntl::posix_fadvise(
        target.as_fd(),
        off,
        len,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

/// What the read-back is told, in order.
enum Walk {
    /// `[from, to)` was not written (reads as zeros on a holes target).
    Hole(u64, u64),
    /// `[pos, pos + n)` was written.
    Data(u64, u64),
}

/// Reads the target back as the writer reports it written, and hashes it
/// on the grid (see [`content_hash`]); `Err` on a read error (the caller
/// then hashes the target after the copy).
fn read_back(
    target: &File,
    path: &Path,
    len: u64,
    walk: &std::sync::mpsc::Receiver<Walk>,
) -> Result<blake3::Hash, CopyError> {
    let mut h = GridHasher::new(len);
    let mut buf = vec![0u8; usize::try_from(CHUNK).unwrap_or(8 << 20)];
    let mut at = 0;
    for step in walk {
        match step {
            Walk::Hole(from, to) => {
                h.zero_run(from, to);
                at = to;
            }
            Walk::Data(pos, n) => {
                let b = &mut buf[..usize::try_from(n).unwrap_or(0)];
                read_full(target, path, b, pos)?;
                for d in block_digests(b) {
                    h.outer.update(d.as_bytes());
                }
                at = pos + n;
            }
        }
    }
    h.zero_run(at, len);
    Ok(h.finish())
}

/// Chunks read ahead of the writer.
const AHEAD: usize = 3;

/// The walk of a copy, in order.
enum Piece {
    /// Nothing to read in `[from, to)`.
    Hole {
        /// Start.
        from: u64,
        /// End.
        to: u64,
    },
    /// `buf[..n]` was read at `pos`.
    Data {
        /// Offset.
        pos: u64,
        /// Bytes.
        n: usize,
        /// The buffer ([`CHUNK`] long).
        buf: Vec<u8>,
    },
}

/// The reader: walks `runs` from `start` and sends holes and data in order;
/// stops at the first error (sent) or when the writer is gone.
fn read_ahead(
    src: &File,
    path: &Path,
    len: u64,
    runs: &[Range<u64>],
    start: u64,
    tx: &std::sync::mpsc::SyncSender<Result<Piece, CopyError>>,
    spare: &std::sync::mpsc::Receiver<Vec<u8>>,
) {
    let chunk = usize::try_from(CHUNK).unwrap_or(8 << 20);
    let mut cur = start;
    for run in runs.iter().filter(|r| r.end > start) {
        let from = run.start.max(start);
        if from > cur
            && tx
                .send(Ok(Piece::Hole {
                    from: cur,
                    to: from,
                }))
                .is_err()
        {
            return;
        }
        let mut pos = from;
        while pos < run.end {
            let n = usize::try_from((run.end - pos).min(CHUNK)).unwrap_or(chunk);
            let mut buf = spare.try_recv().unwrap_or_else(|_| vec![0u8; chunk]);
            let piece =
                read_full(src, path, &mut buf[..n], pos).map(|()| Piece::Data { pos, n, buf });
            let failed = piece.is_err();
            if tx.send(piece).is_err() || failed {
                return;
            }
            pos += n as u64;
        }
        cur = run.end;
    }
    if len > cur {
        let _ = tx.send(Ok(Piece::Hole { from: cur, to: len }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::os::unix::fs::MetadataExt;

    const MIB: u64 = 1 << 20;

    fn open(path: &Path) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap()
    }

    fn pattern(seed: u8, len: u64) -> Vec<u8> {
        (0..len)
            .map(|i| seed.wrapping_add(u8::try_from(i % 251).unwrap()) | 1)
            .collect()
    }

    /// 64 MiB: data at 3.5 MiB (1 MiB, unaligned), 20 MiB (2 MiB), and a
    /// written-but-zero MiB at 40 MiB.
    fn source(dir: &Path) -> (File, PathBuf) {
        let p = dir.join("src");
        let f = open(&p);
        f.set_len(64 * MIB).unwrap();
        f.write_all_at(&pattern(1, MIB), 3 * MIB + MIB / 2).unwrap();
        f.write_all_at(&pattern(2, 2 * MIB), 20 * MIB).unwrap();
        f.write_all_at(&vec![0; 1 << 20], 40 * MIB).unwrap();
        (f, p)
    }

    fn job<'a>(
        s: &'a File,
        sp: &'a Path,
        t: &'a File,
        tp: &'a Path,
        ext: &'a Extents,
        kind: Target,
        start: u64,
    ) -> Job<'a> {
        Job {
            source: s,
            source_path: sp,
            target: t,
            target_path: tp,
            len: 64 * MIB,
            target_len: 64 * MIB,
            extents: ext,
            kind,
            start,
            bandwidth: None,
            hash_source: true,
            read_back: true,
            writeback: true,
        }
    }

    #[test]
    fn sparse_target_gets_data_only_and_hashes_match() {
        let dir = tempfile::tempdir().unwrap();
        let (s, sp) = source(dir.path());
        let tp = dir.path().join("dst");
        let t = open(&tp);
        t.set_len(64 * MIB).unwrap();
        let ext = Extents::of_file(&s, &sp, 64 * MIB).unwrap();
        let stats = copy(&job(&s, &sp, &t, &tp, &ext, Target::Holes, 0), &mut Quiet).unwrap();
        assert_eq!(std::fs::read(&sp).unwrap(), std::fs::read(&tp).unwrap());
        assert_eq!(
            stats.written,
            4 * MIB,
            "two blocks of the unaligned MiB, two more"
        );
        assert!(std::fs::metadata(&tp).unwrap().blocks() * 512 <= 5 * MIB);
        let want = content_hash(&t, &tp, 64 * MIB, &Extents::all(64 * MIB)).unwrap();
        assert_eq!(stats.source_hash, Some(want));
        assert_eq!(stats.target_hash, Some(want), "read back while copying");
        assert!(ext.covers(&Extents::of_file(&t, &tp, 64 * MIB).unwrap(), 64 * MIB));
        assert!(!Extents::all(MIB).covers(&ext, 64 * MIB));
        assert_eq!(
            content_hash(&s, &sp, 64 * MIB, &ext).unwrap(),
            want,
            "the hash does not depend on the extents given"
        );
    }

    #[test]
    fn must_zero_target_loses_every_stale_byte() {
        let dir = tempfile::tempdir().unwrap();
        let (s, sp) = source(dir.path());
        let tp = dir.path().join("dst");
        let t = open(&tp);
        t.write_all_at(&vec![0xee; usize::try_from(70 * MIB).unwrap()], 0)
            .unwrap();
        let ext = Extents::all(64 * MIB);
        let mut j = job(&s, &sp, &t, &tp, &ext, Target::MustZero, 0);
        j.target_len = 70 * MIB;
        let stats = copy(&j, &mut Quiet).unwrap();
        let mut want = std::fs::read(&sp).unwrap();
        want.resize(usize::try_from(70 * MIB).unwrap(), 0);
        assert!(
            std::fs::read(&tp).unwrap() == want,
            "no stale byte survives"
        );
        assert_eq!(stats.written, 4 * MIB);
        assert_eq!(stats.zeroed, 66 * MIB);
    }

    #[test]
    fn resumes_from_a_checkpoint_without_rereading_what_was_done() {
        let dir = tempfile::tempdir().unwrap();
        let (s, sp) = source(dir.path());
        let tp = dir.path().join("dst");
        let t = open(&tp);
        t.set_len(64 * MIB).unwrap();
        // Pretend the first 16 MiB were copied before a crash.
        let mut head = vec![0u8; usize::try_from(16 * MIB).unwrap()];
        s.read_exact_at(&mut head, 0).unwrap();
        t.write_all_at(&head, 0).unwrap();
        let ext = Extents::all(64 * MIB);
        let stats = copy(
            &job(&s, &sp, &t, &tp, &ext, Target::Holes, 16 * MIB),
            &mut Quiet,
        )
        .unwrap();
        assert_eq!(stats.read, 48 * MIB);
        assert_eq!(stats.source_hash, None);
        assert_eq!(std::fs::read(&sp).unwrap(), std::fs::read(&tp).unwrap());
    }

    #[test]
    fn extents_merge_clamp_and_align() {
        let e = Extents::new(vec![10..20, 0..5, 18..30, 90..200], 100);
        assert_eq!(e.ranges(), &[0..5, 10..30, 90..100]);
        assert_eq!(e.bytes(), 35);
        let b = Extents::new(vec![MIB + 1..MIB + 2, 3 * MIB..3 * MIB + 1], 10 * MIB);
        assert_eq!(b.blocks(10 * MIB), vec![MIB..2 * MIB, 3 * MIB..4 * MIB]);
        assert!(Extents::all(0).ranges().is_empty());
    }

    #[test]
    fn a_smaller_target_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (s, sp) = source(dir.path());
        let tp = dir.path().join("dst");
        let t = open(&tp);
        let ext = Extents::all(64 * MIB);
        let mut j = job(&s, &sp, &t, &tp, &ext, Target::Holes, 0);
        j.target_len = MIB;
        let e = copy(&j, &mut Quiet).unwrap_err();
        assert!(e.to_string().contains("less than the"), "{e}");
    }
}
