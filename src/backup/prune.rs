//! Prune: forget the backups retention does not keep, then remove the
//! chunks nothing references any more — in memory bounded independently of
//! the repository's size.
//!
//! Runs under the repository's exclusive session (no backup, restore or
//! verify anywhere meanwhile). Order, each step safe to interrupt:
//! 1. note the grace horizon ([`repo::grace_horizon`]): packs written since
//!    the oldest session that may still be running (one judged stale
//!    because it stopped refreshing may be hung or cut off, not dead) are
//!    never deleted or rewritten;
//! 2. remove the forgotten manifests;
//! 3. the stored set: stream every index file (each checked against its
//!    name; the first description of a pack wins) and the trailers of packs
//!    no index describes (orphans of crashed writers), writing each pack's
//!    entries to a spool file and one `(chunk id, grace, pack, entry)`
//!    record per blob to an external sort ([`super::extsort`]);
//! 4. the used set: read every remaining manifest, one at a time, into an
//!    external sort of chunk ids that drops duplicates — if any manifest
//!    cannot be read, stop here: sweeping with a partial view would delete
//!    chunks a live backup needs (Argo CD's "failed listing read as empty"
//!    lesson);
//! 5. merge-join the two sorted streams: per chunk id the first stored
//!    copy of a used chunk is live (a copy in a pack within the grace
//!    always is), every other copy dead; dead `(pack, entry)` pairs go to
//!    a third sort, and each pack counts its live and dead blobs;
//! 6. walk the packs with their dead entries: all live or within the grace
//!    → kept; all dead → deleted; some → its live blobs are checked
//!    (decoded and hashed) and copied into new packs;
//! 7. write index files (of at most [`format::INDEX_FILE_ENTRIES`] entries,
//!    each naming only durable packs) as the walk goes, then remove the
//!    old index files, then the obsolete packs. A crash before the last
//!    step leaves extra packs that the next prune removes; nothing
//!    referenced is ever gone.
//!
//! Memory: the three sorts' buffers ([`PruneOptions::sort_memory`] each),
//! their merge buffers, one manifest's chunk table, and about 100 bytes
//! per pack (16 MiB of data; 6.5 MB per TiB) — never a set of every chunk.
//! Disk: the scratch directory holds about 80 bytes per stored blob and 32
//! per distinct used chunk while it runs, and is removed after.
//!
//! `--dry-run` runs the same classification and reports, writing nothing.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use uuid::Uuid;

use super::extsort::{Record, Sorter};
use super::format::{self, BlobEntry, Digest, ENTRY_LEN, Manifest, VolumeRef};
use super::repo::{self, SessionKind};
use super::retention::{self, Candidate, Decision};
use super::{BackupError, Repository};
use crate::manifest::Retention;

/// Retention's verdict for one volume (and policy).
#[derive(Debug, Clone)]
pub struct VolumePlan {
    /// The volume.
    pub volume: VolumeRef,
    /// The policy whose rules applied.
    pub policy: Option<String>,
    /// Newest first.
    pub decisions: Vec<Decision>,
}

/// What prune will forget.
#[derive(Debug, Clone, Default)]
pub struct PrunePlan {
    /// Per volume, sorted by volume name.
    pub volumes: Vec<VolumePlan>,
    /// The manifests to remove.
    pub forget: Vec<Manifest>,
}

/// Applies retention to every volume's backups. `rules` maps a policy name
/// to its rules (`None`: the policy is unknown or has none, so all are
/// kept); `damaged` says which backups verify found damaged.
pub fn plan(
    manifests: &[Manifest],
    rules: &dyn Fn(Option<&str>) -> Option<Retention>,
    damaged: &dyn Fn(Uuid) -> bool,
) -> PrunePlan {
    // By volume identity (a renamed volume stays one group) and policy.
    let mut groups: BTreeMap<(Uuid, Option<String>), Vec<&Manifest>> = BTreeMap::new();
    for m in manifests {
        groups
            .entry((m.volume.uuid, m.policy.clone()))
            .or_default()
            .push(m);
    }
    let mut out = PrunePlan::default();
    for ((_, policy), ms) in groups {
        let candidates: Vec<Candidate> = ms
            .iter()
            .map(|m| Candidate {
                id: m.id,
                time: m.started_at,
                successful: !damaged(m.id),
            })
            .collect();
        let r = rules(policy.as_deref());
        let decisions = retention::apply(r.as_ref(), &candidates);
        for d in decisions.iter().filter(|d| !d.keep()) {
            if let Some(m) = ms.iter().find(|m| m.id == d.id) {
                out.forget.push((*m).clone());
            }
        }
        let newest = ms
            .iter()
            .max_by_key(|m| m.started_at)
            .map(|m| m.volume.clone());
        if let Some(volume) = newest {
            out.volumes.push(VolumePlan {
                volume,
                policy,
                decisions,
            });
        }
    }
    keep_groups_together(manifests, &mut out);
    out.volumes
        .sort_by(|a, b| (&a.volume.name, a.volume.uuid).cmp(&(&b.volume.name, b.volume.uuid)));
    out
}

/// A group backup's members are kept or forgotten together: one kept
/// member (by its own volume's rules) keeps every member, so a kept group
/// backup never loses a member to retention.
fn keep_groups_together(manifests: &[Manifest], out: &mut PrunePlan) {
    let forgotten: std::collections::BTreeSet<Uuid> = out.forget.iter().map(|m| m.id).collect();
    let kept_groups: std::collections::BTreeSet<Uuid> = manifests
        .iter()
        .filter(|m| !forgotten.contains(&m.id))
        .filter_map(|m| m.group.as_ref().map(|g| g.id))
        .collect();
    let mut rescued = std::collections::BTreeSet::new();
    out.forget.retain(|m| {
        let keep = m
            .group
            .as_ref()
            .is_some_and(|g| kept_groups.contains(&g.id));
        if keep {
            rescued.insert(m.id);
        }
        !keep
    });
    for v in &mut out.volumes {
        for d in &mut v.decisions {
            if rescued.contains(&d.id) {
                d.reasons.push(retention::Reason::Group);
            }
        }
    }
}

/// Forgets what `plan` forgets — the manifests only — under a shared
/// session, so it may run beside backups (the agent does this after each
/// scheduled backup). The chunks only they referenced stay in the
/// repository until the next [`execute`] sweeps them; no backup that is
/// kept loses anything. Returns how many backups were forgotten.
pub fn forget(repo: &Repository, plan: &PrunePlan) -> Result<usize, BackupError> {
    let _session = repo.session(SessionKind::Shared, "backup forget")?;
    remove_manifests(repo, plan)?;
    Ok(plan.forget.len())
}

fn remove_manifests(repo: &Repository, plan: &PrunePlan) -> Result<(), BackupError> {
    for m in &plan.forget {
        repo.remove_manifest(m)?;
        tracing::info!(backup = %m.id, volume = %m.volume.name, "forgot backup");
    }
    Ok(())
}

/// What prune did (or would do).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Manifests removed.
    pub forgotten: usize,
    /// Packs examined.
    pub packs: usize,
    /// Packs removed whole.
    pub packs_deleted: usize,
    /// Packs whose live blobs were copied into new packs.
    pub packs_repacked: usize,
    /// New packs written by the repack.
    pub packs_written: usize,
    /// Packs left alone because a backup that may still be running could
    /// need them (written since it started).
    pub packs_in_grace: usize,
    /// Blobs dropped (unreferenced or duplicate).
    pub blobs_removed: u64,
    /// Bytes freed in packs (before the new packs' size is subtracted).
    pub bytes_freed: u64,
    /// Corrupt blobs found while repacking (dropped: `verify` reports them
    /// as missing from now on).
    pub corrupt: u64,
    /// Chunks the kept backups reference that no pack holds (`verify`
    /// names the backups).
    pub missing: u64,
    /// Blobs described (index files and orphan trailers).
    pub blobs: u64,
}

/// How prune runs.
#[derive(Debug, Clone, Copy)]
pub struct PruneOptions<'a> {
    /// Measure only; change nothing.
    pub dry_run: bool,
    /// Where the scratch directory (`cinderblock-prune-*`) of the external
    /// sorts goes: a local disk (the state directory), never a tmpfs.
    pub scratch: &'a Path,
    /// Bytes of records each of the three sorts holds in memory.
    pub sort_memory: usize,
}

impl<'a> PruneOptions<'a> {
    /// The defaults: 64 MiB per sort, scratch below `scratch`.
    pub fn new(scratch: &'a Path, dry_run: bool) -> Self {
        Self {
            dry_run,
            scratch,
            sort_memory: 64 << 20,
        }
    }
}

/// One stored blob, as the join sorts them: by chunk id, then packs in
/// the grace first (their copy is the one kept), then pack and entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Stored {
    id: [u8; 32],
    /// 0: the pack is within the grace; 1: it is not.
    rank: u8,
    pack: u32,
    entry: u32,
}

impl Record for Stored {
    const LEN: usize = 41;
    fn put(&self, out: &mut [u8]) {
        out[..32].copy_from_slice(&self.id);
        out[32] = self.rank;
        out[33..37].copy_from_slice(&self.pack.to_be_bytes());
        out[37..41].copy_from_slice(&self.entry.to_be_bytes());
    }
    fn get(b: &[u8]) -> Self {
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[..32]);
        let mut p = [0u8; 4];
        p.copy_from_slice(&b[33..37]);
        let mut e = [0u8; 4];
        e.copy_from_slice(&b[37..41]);
        Self {
            id,
            rank: b[32],
            pack: u32::from_be_bytes(p),
            entry: u32::from_be_bytes(e),
        }
    }
}

/// What prune knows of one pack present.
#[derive(Debug, Clone)]
struct Pack {
    id: Digest,
    size: u64,
    in_grace: bool,
    /// Where its entries are in the spool, once described.
    spool: Option<u64>,
    entries: u32,
    live: u32,
    dead: u32,
}

/// The packs' entries, back to back, in a scratch file.
struct Spool {
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
}

impl Spool {
    fn add(&mut self, entries: &[BlobEntry]) -> Result<u64, BackupError> {
        let at = self.len;
        let bytes = format::encode_entries(entries);
        self.out
            .write_all(&bytes)
            .map_err(io_err("write", &self.path))?;
        self.len += bytes.len() as u64;
        Ok(at)
    }

    fn into_reader(self) -> Result<(File, PathBuf), BackupError> {
        let file = self
            .out
            .into_inner()
            .map_err(|e| io_err("write", &self.path)(e.into_error()))?;
        Ok((file, self.path))
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackupError {
    let path = path.to_owned();
    move |source| BackupError::Io { op, path, source }
}

/// Carries out `plan` on `repo` (or only measures it, with `dry_run`).
// The steps of the module docs, in order; splitting them would scatter the
// crash-order argument.
#[allow(clippy::too_many_lines)]
pub fn execute(
    repo: &Repository,
    plan: &PrunePlan,
    opts: &PruneOptions<'_>,
) -> Result<PruneReport, BackupError> {
    let horizon = repo::grace_horizon(repo)?;
    let _session = repo.session(SessionKind::Exclusive, "backup prune")?;
    let mut report = PruneReport {
        forgotten: plan.forget.len(),
        ..PruneReport::default()
    };
    let forget: HashSet<Uuid> = plan.forget.iter().map(|m| m.id).collect();
    if !opts.dry_run {
        remove_manifests(repo, plan)?;
    }
    std::fs::create_dir_all(opts.scratch).map_err(io_err("create", opts.scratch))?;
    let scratch = tempfile::Builder::new()
        .prefix("cinderblock-prune-")
        .tempdir_in(opts.scratch)
        .map_err(io_err("create a scratch directory in", opts.scratch))?;
    let dir = scratch.path();

    // The packs present, by id; the grace.
    let mut packs: Vec<Pack> = repo
        .pack_listing()?
        .into_iter()
        .map(|(id, size, modified)| Pack {
            id,
            size,
            in_grace: horizon.is_some_and(|h| modified >= h),
            spool: None,
            entries: 0,
            live: 0,
            dead: 0,
        })
        .collect();
    report.packs = packs.len();
    if let Some(h) = horizon {
        tracing::info!(since = %chrono::DateTime::<chrono::Utc>::from(h), "packs written since a backup that may still be running started are left alone");
    }

    // The stored set.
    let spool_path = dir.join("packs");
    let mut spool = Spool {
        out: BufWriter::with_capacity(
            1 << 20,
            File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&spool_path)
                .map_err(io_err("create", &spool_path))?,
        ),
        path: spool_path,
        len: 0,
    };
    let mut stored = Sorter::<Stored>::new(dir, "stored", opts.sort_memory, false);
    let mut failed: Option<BackupError> = None;
    let describe = |packs: &mut Vec<Pack>,
                    spool: &mut Spool,
                    stored: &mut Sorter<Stored>,
                    i: usize,
                    entries: &[BlobEntry]|
     -> Result<(), BackupError> {
        let p = &mut packs[i];
        p.spool = Some(spool.add(entries)?);
        p.entries = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        let rank = u8::from(!p.in_grace);
        for (k, e) in entries.iter().enumerate() {
            stored.push(Stored {
                id: e.id.0,
                rank,
                pack: u32::try_from(i).unwrap_or(u32::MAX),
                entry: u32::try_from(k).unwrap_or(u32::MAX),
            })?;
        }
        Ok(())
    };
    let index_files = repo.index_files()?;
    let mut stale_entries = 0u64;
    for (id, key, size) in &index_files {
        repo.read_index_file(id, key, *size, |pack, entries| {
            if failed.is_some() {
                return;
            }
            let Ok(i) = packs.binary_search_by(|p| p.id.cmp(&pack)) else {
                stale_entries += 1;
                return;
            };
            if packs[i].spool.is_some() {
                return;
            }
            if let Err(e) = describe(&mut packs, &mut spool, &mut stored, i, &entries) {
                failed = Some(e);
            }
        })?;
        if let Some(e) = failed.take() {
            return Err(e);
        }
    }
    if stale_entries > 0 {
        tracing::info!(
            packs = stale_entries,
            "index entries of packs that are gone dropped"
        );
    }
    for i in 0..packs.len() {
        if packs[i].spool.is_some() {
            continue;
        }
        match repo.read_trailer(&packs[i].id, packs[i].size) {
            Ok(entries) => describe(&mut packs, &mut spool, &mut stored, i, &entries)?,
            Err(e) => {
                // A torn pack from a crashed writer is renamed into place only
                // after fsync (or uploaded whole), so this is damage: keep it
                // for `verify` to report, and say so.
                tracing::warn!(pack = %packs[i].id, error = %e, "unreadable pack left alone");
            }
        }
    }
    report.blobs = packs.iter().map(|p| u64::from(p.entries)).sum();

    // The used set.
    let mut used = Sorter::<[u8; 32]>::new(dir, "used", opts.sort_memory, true);
    for (id, key) in repo.manifest_keys()? {
        if forget.contains(&id) {
            continue;
        }
        // Never sweep on a partial view.
        let Some(m) = repo.manifest_at(&key)? else {
            continue;
        };
        for (_, chunk) in format::decode_table(&m)? {
            used.push(chunk.0)?;
        }
    }

    // The join.
    let mut used = used.finish()?;
    let mut next_used = used.next().transpose()?;
    let mut dead = Sorter::<u64>::new(dir, "dead", opts.sort_memory / 4, false);
    let mut current: Option<[u8; 32]> = None;
    let (mut is_used, mut chosen) = (false, false);
    for r in stored.finish()? {
        let r = r?;
        if current != Some(r.id) {
            current = Some(r.id);
            chosen = false;
            while next_used.is_some_and(|u| u < r.id) {
                report.missing += 1;
                next_used = used.next().transpose()?;
            }
            is_used = next_used == Some(r.id);
            if is_used {
                next_used = used.next().transpose()?;
            }
        }
        let p = &mut packs[r.pack as usize];
        if r.rank == 0 || (is_used && !chosen) {
            p.live += 1;
            chosen = true;
        } else {
            p.dead += 1;
            dead.push(u64::from(r.pack) << 32 | u64::from(r.entry))?;
        }
    }
    while next_used.is_some() {
        report.missing += 1;
        next_used = used.next().transpose()?;
    }
    drop(used);
    if report.missing > 0 {
        tracing::warn!(
            chunks = report.missing,
            "kept backups reference chunks no pack holds (run backup verify --all)"
        );
    }

    // The walk.
    let (spool, spool_path) = spool.into_reader()?;
    let mut dead = dead.finish()?;
    let mut next_dead = dead.next().transpose()?;
    let mut index = IndexOut::new(repo, opts.dry_run);
    let mut writer = repo.pack_writer();
    let mut delete: Vec<Digest> = Vec::new();
    let mut codecs = format::Codecs::default();
    let mut buf = Vec::new();
    let walk = (|| -> Result<(), BackupError> {
        for (i, p) in packs.iter().enumerate() {
            let Some(at) = p.spool else {
                continue;
            };
            let mut dead_here = Vec::new();
            while let Some(d) = next_dead.filter(|d| d >> 32 == i as u64) {
                dead_here.push(u32::try_from(d & 0xffff_ffff).unwrap_or(u32::MAX));
                next_dead = dead.next().transpose()?;
            }
            let entries = read_spool(&spool, &spool_path, at, p.entries)?;
            if p.in_grace {
                report.packs_in_grace += 1;
            }
            if p.in_grace || dead_here.is_empty() {
                index.add(p.id, entries)?;
                continue;
            }
            report.blobs_removed += dead_here.len() as u64;
            delete.push(p.id);
            if dead_here.len() == entries.len() {
                report.packs_deleted += 1;
                report.bytes_freed += p.size;
                continue;
            }
            report.packs_repacked += 1;
            let mut offset = 0u64;
            let mut live = Vec::new();
            let mut d = dead_here.iter().peekable();
            for (k, e) in entries.iter().enumerate() {
                if d.peek().is_some_and(|&&x| x as usize == k) {
                    d.next();
                    report.bytes_freed += u64::from(e.stored_len);
                } else {
                    live.push((offset, *e));
                }
                offset += u64::from(e.stored_len);
            }
            if opts.dry_run {
                continue;
            }
            let span = live.first().map_or(0, |(o, _)| *o)
                ..live.last().map_or(0, |(o, e)| o + u64::from(e.stored_len));
            let reader = repo.open_pack(&p.id, span)?;
            for (offset, e) in &live {
                buf.resize(e.stored_len as usize, 0);
                let good = reader.read_at(&mut buf, *offset)
                    && repo
                        .decode_blob(&mut codecs, &e.id, e.codec, e.raw_len, &buf)
                        .is_some();
                if !good {
                    tracing::warn!(chunk = %e.id, pack = %p.id, "corrupt chunk dropped while repacking");
                    report.corrupt += 1;
                    continue;
                }
                writer.add(e.id, e.codec, e.raw_len, &buf)?;
            }
            for (id, entries) in writer.take_sealed() {
                report.packs_written += 1;
                index.add(id, entries)?;
            }
        }
        writer.finish()?;
        for (id, entries) in writer.take_sealed() {
            report.packs_written += 1;
            index.add(id, entries)?;
        }
        Ok(())
    })();
    if let Err(e) = walk {
        writer.abandon();
        return Err(e);
    }
    let written = index.finish()?;
    if opts.dry_run {
        return Ok(report);
    }
    for (old, ..) in index_files.iter().filter(|f| !written.contains(&f.0)) {
        repo.remove_index(old)?;
    }
    for id in &delete {
        repo.remove_pack(id)?;
    }
    let _ = repo.clean_tmp(Duration::from_secs(24 * 3600));
    tracing::info!(?report, "pruned");
    Ok(report)
}

/// Reads `n` entries at `at` of the spool.
fn read_spool(file: &File, path: &Path, at: u64, n: u32) -> Result<Vec<BlobEntry>, BackupError> {
    let mut bytes = vec![0u8; n as usize * ENTRY_LEN];
    file.read_exact_at(&mut bytes, at)
        .map_err(io_err("read", path))?;
    format::decode_entries(&bytes).ok_or_else(|| BackupError::Io {
        op: "decode",
        path: path.to_owned(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidData),
    })
}

/// The new index files, written as packs come in (each names durable packs
/// only, and holds at most [`format::INDEX_FILE_ENTRIES`] entries).
struct IndexOut<'a> {
    repo: &'a Repository,
    dry_run: bool,
    batch: Vec<(Digest, Vec<BlobEntry>)>,
    entries: usize,
    written: HashSet<Digest>,
}

impl<'a> IndexOut<'a> {
    fn new(repo: &'a Repository, dry_run: bool) -> Self {
        Self {
            repo,
            dry_run,
            batch: Vec::new(),
            entries: 0,
            written: HashSet::new(),
        }
    }

    fn add(&mut self, pack: Digest, entries: Vec<BlobEntry>) -> Result<(), BackupError> {
        if self.entries > 0 && self.entries + entries.len() > format::INDEX_FILE_ENTRIES {
            self.flush()?;
        }
        self.entries += entries.len();
        self.batch.push((pack, entries));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BackupError> {
        if !self.dry_run && !self.batch.is_empty() {
            self.written.extend(self.repo.write_index(&self.batch)?);
        }
        self.batch.clear();
        self.entries = 0;
        Ok(())
    }

    /// The ids of the index files written.
    fn finish(mut self) -> Result<HashSet<Digest>, BackupError> {
        self.flush()?;
        Ok(self.written)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::time::SystemTime;

    use chrono::Utc;

    use super::*;
    use crate::backup::format::{
        BackupKind, BackupStats, CHUNK_SIZE, Codec, MANIFEST_FORMAT, MANIFEST_VERSION,
    };
    use crate::backup::repo::{SessionInfo, hostname};
    use crate::manifest::Retention;

    fn blob(n: u32) -> Vec<u8> {
        format!("chunk number {n} of the prune test").into_bytes()
    }

    /// Stores blobs `ids` in packs of `per_pack` (index files written);
    /// returns their ids.
    fn store_blobs(repo: &Repository, ids: std::ops::Range<u32>, per_pack: u32) -> Vec<Digest> {
        let mut w = repo.pack_writer();
        let mut out = Vec::new();
        for n in ids {
            let b = blob(n);
            let id = repo.chunk_id(&b);
            w.add(id, Codec::None, u32::try_from(b.len()).unwrap(), &b)
                .unwrap();
            out.push(id);
            if n % per_pack == per_pack - 1 {
                w.seal().unwrap();
            }
        }
        w.finish().unwrap();
        repo.write_index(&w.take_sealed()).unwrap();
        out
    }

    fn manifest(repo: &Repository, n: u128, chunks: &[Digest]) -> Manifest {
        let table: Vec<(u64, Digest)> = chunks
            .iter()
            .enumerate()
            .map(|(i, id)| (i as u64, *id))
            .collect();
        let (text, digest) = format::encode_table(&table).unwrap();
        let m = Manifest {
            format: MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            id: Uuid::from_u128(n),
            repository: repo.config().id,
            volume: VolumeRef {
                uuid: Uuid::from_u128(1000 + n),
                name: format!("v{n}"),
                backend: "b".into(),
                size: chunks.len() as u64 * u64::from(CHUNK_SIZE),
            },
            policy: None,
            kind: BackupKind::Full,
            parent: None,
            host: "h".into(),
            started_at: Utc::now(),
            finished_at: Utc::now(),
            chunk_size: CHUNK_SIZE,
            stats: BackupStats::default(),
            chunks: text,
            chunks_digest: digest,
            group: None,
        };
        repo.write_manifest(&m).unwrap();
        m
    }

    /// A manifest header for retention alone (no repository): backup `id`
    /// of volume `v<vol>` on day `day`, of group backup `group` when given.
    fn head(id: u128, vol: u128, day: u32, group: Option<u128>) -> Manifest {
        let at: chrono::DateTime<Utc> = format!("2026-11-{day:02}T02:00:00Z").parse().unwrap();
        Manifest {
            format: MANIFEST_FORMAT.into(),
            version: if group.is_some() {
                format::MANIFEST_VERSION_GROUP
            } else {
                MANIFEST_VERSION
            },
            id: Uuid::from_u128(id),
            repository: Uuid::nil(),
            volume: VolumeRef {
                uuid: Uuid::from_u128(1000 + vol),
                name: format!("v{vol}"),
                backend: "b".into(),
                size: 0,
            },
            policy: Some("p".into()),
            kind: BackupKind::Full,
            parent: None,
            host: "h".into(),
            started_at: at,
            finished_at: at,
            chunk_size: CHUNK_SIZE,
            stats: BackupStats::default(),
            chunks: String::new(),
            chunks_digest: Digest::of(b""),
            group: group.map(|g| format::GroupRef {
                id: Uuid::from_u128(g),
                name: "g".into(),
                members: vec!["v1".into(), "v2".into()],
            }),
        }
    }

    #[test]
    fn a_group_backups_members_are_kept_or_forgotten_together() {
        // v1 and v2 backed up together on the 1st (group 90) and the 3rd
        // (group 91); v1 alone on the 5th as well. keepLast 1 per volume
        // keeps v1's single backup and v2's member of group 91, so group
        // 91 keeps v1's member too; group 90 goes whole.
        let ms = [
            head(1, 1, 1, Some(90)),
            head(2, 2, 1, Some(90)),
            head(3, 1, 3, Some(91)),
            head(4, 2, 3, Some(91)),
            head(5, 1, 5, None),
        ];
        let rules = |_: Option<&str>| {
            Some(Retention {
                keep_last: Some(1),
                ..Retention::default()
            })
        };
        let plan = plan(&ms, &rules, &|_| false);
        let mut forgotten: Vec<u128> = plan.forget.iter().map(|m| m.id.as_u128()).collect();
        forgotten.sort_unstable();
        assert_eq!(forgotten, [1, 2]);
        let v1 = plan.volumes.iter().find(|v| v.volume.name == "v1").unwrap();
        let d3 = v1.decisions.iter().find(|d| d.id.as_u128() == 3).unwrap();
        assert_eq!(d3.reasons, [retention::Reason::Group]);
    }

    /// Every chunk the index can find and decode.
    fn readable(repo: &Repository) -> HashSet<Digest> {
        let index = repo.load_index().unwrap();
        let mut codecs = format::Codecs::default();
        let mut out = HashSet::new();
        for (id, loc) in &index.blobs {
            let pack = index.pack_id(loc);
            if !index.present.contains(&pack) {
                continue;
            }
            let r = repo
                .open_pack(&pack, loc.offset..loc.offset + u64::from(loc.stored_len))
                .unwrap();
            let mut buf = vec![0u8; loc.stored_len as usize];
            if r.read_at(&mut buf, loc.offset)
                && repo
                    .decode_blob(&mut codecs, id, loc.codec, loc.raw_len, &buf)
                    .is_some()
            {
                out.insert(*id);
            }
        }
        out
    }

    #[test]
    fn sorted_runs_keep_exactly_the_referenced_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_init(dir.path(), Codec::Zstd).unwrap();
        // 5000 blobs in packs of 700, two manifests sharing some, 1000
        // blobs nobody uses, and blob 10 stored a second time in a pack of
        // its own; sorts of 1024 records, so several runs each.
        let ids = store_blobs(&repo, 0..5000, 700);
        let again = store_blobs(&repo, 10..11, 1);
        assert_eq!(again[0], ids[10]);
        let a = manifest(&repo, 1, &ids[0..2500]);
        let b = manifest(&repo, 2, &ids[2000..4000]);
        let gone = manifest(&repo, 3, &ids[4000..4500]);
        let plan = PrunePlan {
            volumes: Vec::new(),
            forget: vec![gone],
        };
        let mut opts = PruneOptions::new(scratch.path(), true);
        opts.sort_memory = 1;
        let dry = execute(&repo, &plan, &opts).unwrap();
        assert_eq!(dry.blobs, 5001);
        assert_eq!(dry.blobs_removed, 1001, "1000 unused and one duplicate");
        assert_eq!(dry.forgotten, 1);
        assert_eq!(readable(&repo).len(), 5000, "a dry run changes nothing");

        opts.dry_run = false;
        let r = execute(&repo, &plan, &opts).unwrap();
        assert_eq!(r.blobs_removed, 1001);
        assert_eq!(r.missing, 0);
        assert_eq!(r.packs_in_grace, 0);
        let left = readable(&repo);
        let want: HashSet<Digest> = ids[0..4000].iter().copied().collect();
        assert_eq!(left, want);
        let (ms, bad) = repo.manifests().unwrap();
        assert!(bad.is_empty());
        assert_eq!(
            ms.iter().map(|m| m.id).collect::<Vec<_>>(),
            [a.id, b.id],
            "the forgotten manifest is gone"
        );
        assert_eq!(
            fs::read_dir(scratch.path()).unwrap().count(),
            0,
            "the scratch directory is removed"
        );
        // Nothing more the second time, and the index is stable.
        let files = repo.index_files().unwrap();
        let again = execute(&repo, &PrunePlan::default(), &opts).unwrap();
        assert_eq!(again.blobs_removed, 0);
        assert_eq!(again.packs_deleted + again.packs_repacked, 0);
        assert_eq!(repo.index_files().unwrap(), files);
    }

    #[test]
    fn packs_of_a_backup_that_may_still_run_are_left_until_its_session_expires() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_init(dir.path(), Codec::Zstd).unwrap();
        // A writer on another host stopped refreshing its session 40
        // minutes ago (stale: it does not block prune), but it may be hung,
        // not dead: what it wrote since it started is in the grace.
        let started = Utc::now() - chrono::Duration::minutes(40);
        let info = SessionInfo {
            kind: SessionKind::Shared,
            host: format!("not-{}", hostname()),
            pid: 1,
            command: "backup run".into(),
            started_at: started,
        };
        let lock = dir
            .path()
            .join("locks/0a0a0a0a-0000-0000-0000-000000000000.json");
        fs::write(&lock, serde_json::to_vec(&info).unwrap()).unwrap();
        let set_age = |hours: u64, minutes: u64| {
            let t = SystemTime::now() - Duration::from_secs(hours * 3600 + minutes * 60);
            File::options()
                .append(true)
                .open(&lock)
                .unwrap()
                .set_modified(t)
                .unwrap();
        };
        set_age(0, 40);
        // Its packs: nothing references them yet.
        store_blobs(&repo, 0..10, 5);
        let opts = PruneOptions::new(scratch.path(), false);
        let r = execute(&repo, &PrunePlan::default(), &opts).unwrap();
        assert_eq!((r.packs, r.packs_in_grace, r.packs_deleted), (2, 2, 0));
        assert_eq!(readable(&repo).len(), 10);
        assert!(lock.exists(), "a session only stale is not removed");

        // Silent for a day: it is dead, its packs are garbage.
        set_age(25, 0);
        let r = execute(&repo, &PrunePlan::default(), &opts).unwrap();
        assert_eq!((r.packs_in_grace, r.packs_deleted), (0, 2));
        assert!(readable(&repo).is_empty());
        assert!(!lock.exists());
    }
}
