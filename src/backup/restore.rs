//! Restore and verify: reading chunks back, checking every one.
//!
//! Both walk a backup's own chunk table (never a chain of parents), group
//! the chunks by pack so each pack is read front to back, and hand packs to
//! two worker threads that read, decompress and BLAKE3-check every chunk.
//!
//! Restore writes only checked bytes: a chunk that is missing or does not
//! hash to its id stops the restore before its bytes reach the target.
//! Into a **new** file (ftruncated to the volume's size, so it is all hole)
//! only the non-zero 4 KiB runs of each chunk are written: the target is as
//! sparse as the source's data allows, and every slot the table does not
//! list stays a hole, which reads as zeros — a block zeroed after an earlier
//! backup comes back zero (Cinder's zero-skipping restore can leave the old
//! bytes there). Into an **existing** file (`--overwrite`) every chunk is
//! checked first, without writing; then chunks are written whole and every
//! slot not listed is punched out (`FALLOC_FL_PUNCH_HOLE`), zero-written
//! where the filesystem cannot punch.
//!
//! Into a new **thick LV** every chunk is written whole and every gap is
//! zeroed explicitly: its extents were someone else's before
//! ([`Target::ZeroGaps`]). A new thin LV is written like a new file (its
//! unprovisioned blocks read as zeros).
//!
//! Must not: trust a chunk it has not hashed, or write a byte before the
//! whole table resolves to locations (missing chunks fail first).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, fallocate};
use uuid::Uuid;

use super::format::{self, CHUNK_SIZE, Digest, Manifest, Table};
use super::repo::{Index, Location, PackReader};
use super::{BackupError, Progress, Repository};

/// Threads reading packs.
const WORKERS: usize = 2;
/// Granularity of hole-keeping writes (the filesystem block).
const BLOCK: usize = 4096;

/// Chunks that could not be read back correctly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems {
    /// Not in the index, or their pack is gone.
    pub missing: Vec<Digest>,
    /// Present but unreadable, undecodable, or hashing to another id.
    pub corrupt: Vec<Digest>,
}

impl Problems {
    /// Whether all is well.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.corrupt.is_empty()
    }

    fn first(&self) -> Option<String> {
        self.missing
            .first()
            .map(|d| format!("chunk {d} missing"))
            .or_else(|| self.corrupt.first().map(|d| format!("chunk {d} corrupt")))
    }

    fn into_error(self, id: Uuid) -> BackupError {
        BackupError::Damaged {
            id,
            missing: self.missing.len() as u64,
            corrupt: self.corrupt.len() as u64,
            first: self.first(),
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Chunks read and checked.
    pub chunks: u64,
    /// Bytes of those chunks.
    pub bytes: u64,
    /// Bytes written to the target (zero blocks of a fresh target skipped).
    pub written: u64,
}

/// How the target is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A new file, ftruncated to the volume's size: only data is written.
    Fresh,
    /// An existing file: checked first, then written whole, gaps punched.
    Overwrite,
    /// A new thick LV, whose unwritten extents hold whatever an earlier LV
    /// left there: every chunk written whole and every gap, up to the
    /// device's end, zeroed explicitly (`FALLOC_FL_ZERO_RANGE`, which the
    /// kernel guarantees reads back as zeros). A failed restore leaves a
    /// device the caller removes.
    ZeroGaps,
}

/// One chunk to read: where it goes (slot) and where it is.
#[derive(Debug, Clone, Copy)]
struct Item {
    slot: u64,
    id: Digest,
    loc: Location,
}

/// Resolves a table against the index and the packs present; chunks that
/// cannot be found are returned as missing.
fn plan(index: &Index, table: &[(u64, Digest)]) -> (BTreeMap<u32, Vec<Item>>, Vec<Digest>) {
    let mut by_pack: BTreeMap<u32, Vec<Item>> = BTreeMap::new();
    let mut missing = Vec::new();
    let mut present: BTreeMap<u32, bool> = BTreeMap::new();
    for &(slot, id) in table {
        let Some(&loc) = index.blobs.get(&id) else {
            missing.push(id);
            continue;
        };
        let here = *present
            .entry(loc.pack)
            .or_insert_with(|| index.present.contains(&index.pack_id(&loc)));
        if here {
            by_pack
                .entry(loc.pack)
                .or_default()
                .push(Item { slot, id, loc });
        } else {
            missing.push(id);
        }
    }
    for items in by_pack.values_mut() {
        items.sort_unstable_by_key(|i| (i.loc.offset, i.slot));
    }
    missing.sort_unstable();
    missing.dedup();
    (by_pack, missing)
}

type Sink<'a> = &'a (dyn Fn(u64, &[u8]) -> Result<u64, BackupError> + Sync);

/// Reads, decodes and checks every item; hands good chunks to `sink`. With
/// `stop_early`, the first problem stops all workers.
fn read_all(
    repo: &Repository,
    index: &Index,
    by_pack: &BTreeMap<u32, Vec<Item>>,
    stop_early: bool,
    sink: Option<Sink<'_>>,
    progress: &dyn Progress,
) -> Result<(Problems, RestoreStats), BackupError> {
    let packs: Vec<(&u32, &Vec<Item>)> = by_pack.iter().collect();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let problems = Mutex::new(Problems::default());
    let stats = Mutex::new(RestoreStats::default());
    let fatal: Mutex<Option<BackupError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| {
                let mut local = RestoreStats::default();
                let mut bad = Problems::default();
                let mut buf = Vec::new();
                let mut codecs = format::Codecs::default();
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(&pack, items)) = packs.get(i) else {
                        break;
                    };
                    let pack_id = index.packs[pack as usize];
                    let span = items.iter().map(|i| i.loc.offset).min().unwrap_or(0)
                        ..items
                            .iter()
                            .map(|i| i.loc.offset + u64::from(i.loc.stored_len))
                            .max()
                            .unwrap_or(0);
                    let file = match repo.open_pack(&pack_id, span) {
                        Ok(f) => f,
                        Err(e) => {
                            tracing::warn!(pack = %pack_id, error = %crate::error_chain(&e), "pack unreadable");
                            bad.missing.extend(items.iter().map(|i| i.id));
                            if stop_early {
                                stop.store(true, Ordering::Relaxed);
                            }
                            continue;
                        }
                    };
                    for item in items {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        if let Some(raw) = check_one(repo, &mut codecs, &file, item, &mut buf) {
                            local.chunks += 1;
                            local.bytes += raw.len() as u64;
                            if let Some(sink) = sink {
                                match sink(item.slot, &raw) {
                                    Ok(n) => local.written += n,
                                    Err(e) => {
                                        stop.store(true, Ordering::Relaxed);
                                        if let Ok(mut f) = fatal.lock() {
                                            f.get_or_insert(e);
                                        }
                                        break;
                                    }
                                }
                            }
                            progress.advance(raw.len() as u64);
                        } else {
                            tracing::warn!(chunk = %item.id, pack = %pack_id, "corrupt chunk");
                            bad.corrupt.push(item.id);
                            if stop_early {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                }
                if let Ok(mut p) = problems.lock() {
                    p.missing.append(&mut bad.missing);
                    p.corrupt.append(&mut bad.corrupt);
                }
                if let Ok(mut s) = stats.lock() {
                    s.chunks += local.chunks;
                    s.bytes += local.bytes;
                    s.written += local.written;
                }
            });
        }
    });
    if let Some(e) = fatal.into_inner().ok().flatten() {
        return Err(e);
    }
    let mut problems = problems
        .into_inner()
        .map_err(|_| BackupError::Panicked("restore worker"))?;
    problems.missing.sort_unstable();
    problems.missing.dedup();
    problems.corrupt.sort_unstable();
    problems.corrupt.dedup();
    let stats = stats
        .into_inner()
        .map_err(|_| BackupError::Panicked("restore worker"))?;
    Ok((problems, stats))
}

/// Reads one blob, decodes it, checks its hash; `None` when it is damaged.
fn check_one(
    repo: &Repository,
    codecs: &mut format::Codecs,
    pack: &PackReader,
    item: &Item,
    buf: &mut Vec<u8>,
) -> Option<Vec<u8>> {
    buf.resize(item.loc.stored_len as usize, 0);
    if !pack.read_at(buf, item.loc.offset) {
        return None;
    }
    repo.decode_blob(codecs, &item.id, item.loc.codec, item.loc.raw_len, buf)
}

/// Checks every chunk of `table` (read, decode, hash) without writing.
pub fn check(
    repo: &Repository,
    index: &Index,
    table: &[(u64, Digest)],
    progress: &dyn Progress,
) -> Result<(Problems, RestoreStats), BackupError> {
    let (by_pack, missing) = plan(index, table);
    progress.total(
        by_pack
            .values()
            .flatten()
            .map(|i| u64::from(i.loc.raw_len))
            .sum(),
    );
    let (mut problems, stats) = read_all(repo, index, &by_pack, false, None, progress)?;
    problems.missing.extend(missing);
    problems.missing.sort_unstable();
    problems.missing.dedup();
    Ok((problems, stats))
}

/// Restores backup `m` (its decoded `table`) into `target`, an open file
/// whose length is at least the volume's size. Fails with
/// [`BackupError::Damaged`] before writing when chunks are missing; a corrupt
/// chunk found while writing a fresh target stops the restore (the caller
/// removes the target).
#[allow(clippy::too_many_arguments)] // each input named; a struct would only rename them
pub fn restore(
    repo: &Repository,
    index: &Index,
    m: &Manifest,
    table: &Table,
    target: &File,
    target_path: &Path,
    mode: Target,
    progress: &dyn Progress,
) -> Result<RestoreStats, BackupError> {
    let (by_pack, missing) = plan(index, table);
    if !missing.is_empty() {
        return Err(Problems {
            missing,
            corrupt: Vec::new(),
        }
        .into_error(m.id));
    }
    let total: u64 = by_pack
        .values()
        .flatten()
        .map(|i| u64::from(i.loc.raw_len))
        .sum();
    let c = u64::from(CHUNK_SIZE);
    let io = |op: &'static str| {
        let path: PathBuf = target_path.to_owned();
        move |source| BackupError::Io { op, path, source }
    };
    if mode == Target::Overwrite {
        // Check everything before the first byte of the existing volume
        // changes.
        progress.stage("checking every chunk");
        progress.total(total * 2);
        let (problems, _) = read_all(repo, index, &by_pack, true, None, progress)?;
        if !problems.is_empty() {
            return Err(problems.into_error(m.id));
        }
        // Seeking to the end sizes block devices too (their metadata says 0).
        let len = crate::blockio::size(target).map_err(io("size"))?;
        let mut pos = 0u64;
        for &(slot, _) in table {
            punch(target, target_path, pos, slot * c)?;
            pos = (slot + 1) * c;
        }
        punch(target, target_path, pos, len)?;
    } else if mode == Target::ZeroGaps {
        progress.stage("zeroing gaps");
        let len = crate::blockio::size(target).map_err(io("size"))?;
        let mut pos = 0u64;
        let zero = |from: u64, to: u64| {
            if to > from {
                crate::blockio::zero(target, from, to - from).map_err(io("zero"))
            } else {
                Ok(())
            }
        };
        for &(slot, _) in table {
            zero(pos, (slot * c).min(len))?;
            pos = (slot + 1) * c;
        }
        zero(pos, len)?;
        progress.stage("restoring");
        progress.total(total);
    } else {
        progress.stage("restoring");
        progress.total(total);
    }
    let write = |slot: u64, raw: &[u8]| -> Result<u64, BackupError> {
        let base = slot * c;
        if mode != Target::Fresh {
            target.write_all_at(raw, base).map_err(io("write"))?;
            return Ok(raw.len() as u64);
        }
        // Fresh target: write runs of non-zero blocks, leave zero blocks as
        // holes.
        let mut written = 0;
        let mut run: Option<usize> = None;
        let blocks = raw.len().div_ceil(BLOCK);
        for b in 0..=blocks {
            let zero = b == blocks
                || super::engine::is_zero(&raw[b * BLOCK..raw.len().min((b + 1) * BLOCK)]);
            match (zero, run) {
                (false, None) => run = Some(b * BLOCK),
                (true, Some(start)) => {
                    let end = raw.len().min(b * BLOCK);
                    target
                        .write_all_at(&raw[start..end], base + start as u64)
                        .map_err(io("write"))?;
                    written += (end - start) as u64;
                    run = None;
                }
                _ => {}
            }
        }
        Ok(written)
    };
    if mode == Target::Overwrite {
        progress.stage("restoring");
    }
    let (problems, stats) = read_all(repo, index, &by_pack, true, Some(&write), progress)?;
    if !problems.is_empty() {
        return Err(problems.into_error(m.id));
    }
    target.sync_all().map_err(io("fsync"))?;
    Ok(stats)
}

/// Makes `[from, to)` of `file` read as zeros, deallocating where possible.
fn punch(file: &File, path: &Path, from: u64, to: u64) -> Result<(), BackupError> {
    if to <= from {
        return Ok(());
    }
    let (Ok(off), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
        return Ok(());
    };
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    match fallocate(file.as_fd(), flags, off, len) {
        Ok(()) => Ok(()),
        Err(Errno::EOPNOTSUPP) => {
            let zeros = vec![0u8; 1 << 20];
            let mut pos = from;
            while pos < to {
                let n = usize::try_from(to - pos)
                    .unwrap_or(zeros.len())
                    .min(zeros.len());
                file.write_all_at(&zeros[..n], pos)
                    .map_err(|source| BackupError::Io {
                        op: "write zeros to",
                        path: path.to_owned(),
                        source,
                    })?;
                pos += n as u64;
            }
            Ok(())
        }
        Err(e) => Err(BackupError::Io {
            op: "punch a hole in",
            path: path.to_owned(),
            source: e.into(),
        }),
    }
}
