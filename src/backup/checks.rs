//! Scheduled checks of a repository: a sampled verify and a restore drill
//! (a `BackupPolicy`'s `verify` and `drill`, run by the agent's scheduler and
//! by `backup verify --sample` and `backup drill`).
//!
//! - **Sampled verify** ([`verify_sample`]): every chunk the repository's
//!   backups reference whose id falls in one window of the id space is read,
//!   decoded and hashed. A window is `sample` percent of the 64-bit id prefix
//!   space, starting at a cursor the caller keeps; the next run starts where
//!   this one ended. Chunk ids are hashes, so a window holds about `sample`
//!   percent of the chunks, and `100 / sample` runs cover every chunk —
//!   whatever was added in between is covered by the next lap.
//! - **Drill** ([`drill`]): the newest backup of each volume of a policy is
//!   restored into a scratch file below a directory the caller gives (the
//!   state directory's), through the same restore path a user's restore
//!   takes; the scratch file is then read back and every listed chunk hashed
//!   and compared with the backup's chunk table (its recorded content), and
//!   the scratch removed however the drill ends. A damaged backup is a
//!   result naming the volume and the backup, not an error: the other
//!   volumes are still drilled.
//!
//! Both hold a shared session (prune waits for them, backups go on).
//!
//! Must not: write to the repository, or leave a scratch file behind.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::format::{self, CHUNK_SIZE, Digest, Manifest};
use super::repo::SessionKind;
use super::restore::{self, Target};
use super::{BackupError, Progress, Repository};

/// Which check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CheckKind {
    /// `spec.verify`: a sampled verify of the repository.
    Verify,
    /// `spec.drill`: restore drills of each volume's newest backup.
    Drill,
}

impl CheckKind {
    /// As in metric names, records and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verify => "verify",
            Self::Drill => "drill",
        }
    }
}

/// What a check run produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckSummary {
    /// What it did, in words (`checked 1,234 of 12,345 chunks …`).
    pub text: String,
    /// Damaged backups it found (one line each, naming volume and backup);
    /// empty when all is well.
    pub problems: Vec<String>,
    /// The verify's next cursor.
    pub cursor: Option<u64>,
}

/// One backup a check found damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The backup.
    pub backup: Uuid,
    /// Its volume's name.
    pub volume: String,
    /// When it was taken.
    pub started_at: DateTime<Utc>,
    /// What is wrong, in words.
    pub detail: String,
}

/// What a sampled verify did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleReport {
    /// Where the window began (the cursor given).
    pub from: u64,
    /// Where the next run begins.
    pub next: u64,
    /// Share of the id space checked, percent.
    pub sample: u8,
    /// Distinct chunks in the repository's backups.
    pub chunks_total: u64,
    /// Chunks in the window, checked.
    pub chunks_checked: u64,
    /// Their bytes (decoded).
    pub bytes_checked: u64,
    /// Backups that reference a missing or corrupt chunk of the window.
    pub damaged: Vec<Damage>,
}

/// The 64-bit prefix of a chunk id: where it lies in the id space.
fn prefix(id: &Digest) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&id.0[..8]);
    u64::from_be_bytes(b)
}

/// The window of `sample` percent starting at `from`: whether `p` is in it,
/// and where the next window starts. 100 % (or more) is everything.
fn window(from: u64, sample: u8) -> (impl Fn(u64) -> bool, u64) {
    let whole = sample >= 100;
    // 2^64 * sample / 100, rounded up so 100 / sample windows always cover.
    let span =
        u64::try_from(((1u128 << 64) * u128::from(sample)).div_ceil(100)).unwrap_or(u64::MAX);
    let next = if whole { from } else { from.wrapping_add(span) };
    let inside = move |p: u64| whole || p.wrapping_sub(from) < span;
    (inside, next)
}

/// Checks the chunks of `repo`'s backups whose ids fall in the window of
/// `sample` percent starting at `cursor`; see the module docs.
pub fn verify_sample(
    repo: &Repository,
    sample: u8,
    cursor: u64,
    progress: &dyn Progress,
) -> Result<SampleReport, BackupError> {
    let _session = repo.session(SessionKind::Shared, "backup verify --sample")?;
    let (manifests, bad) = repo.manifests()?;
    if let Some(e) = bad.into_iter().next() {
        return Err(e);
    }
    let (inside, next) = window(cursor, sample);
    let index = repo.load_index()?;
    // chunk → one slot it fills (check reads by chunk; the slot is only
    // carried along), and which backups use each chunk of the window.
    let mut picked: BTreeMap<Digest, u64> = BTreeMap::new();
    let mut total: HashSet<Digest> = HashSet::new();
    let mut users: Vec<(&Manifest, Vec<Digest>)> = Vec::new();
    for m in &manifests {
        let table = format::decode_table(m)?;
        let mut mine = Vec::new();
        for (slot, id) in table {
            total.insert(id);
            if inside(prefix(&id)) {
                picked.entry(id).or_insert(slot);
                mine.push(id);
            }
        }
        users.push((m, mine));
    }
    let list: Vec<(u64, Digest)> = picked.iter().map(|(id, slot)| (*slot, *id)).collect();
    let (problems, stats) = restore::check(repo, &index, &list, progress)?;
    let missing: HashSet<Digest> = problems.missing.iter().copied().collect();
    let corrupt: HashSet<Digest> = problems.corrupt.iter().copied().collect();
    let mut damaged = Vec::new();
    for (m, ids) in users {
        let ids: HashSet<Digest> = ids.into_iter().collect();
        let miss = ids.iter().filter(|id| missing.contains(*id)).count();
        let bad = ids.iter().filter(|id| corrupt.contains(*id)).count();
        if miss + bad > 0 {
            damaged.push(Damage {
                backup: m.id,
                volume: m.volume.name.clone(),
                started_at: m.started_at,
                detail: format!(
                    "{miss} chunk(s) missing, {bad} corrupt (found by a sampled verify)"
                ),
            });
        }
    }
    Ok(SampleReport {
        from: cursor,
        next,
        sample: sample.min(100),
        chunks_total: total.len() as u64,
        chunks_checked: picked.len() as u64,
        bytes_checked: stats.bytes,
        damaged,
    })
}

/// One volume's drill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillResult {
    /// The backup restored (the volume's newest).
    pub backup: Uuid,
    /// The volume's name.
    pub volume: String,
    /// When the backup was taken.
    pub started_at: DateTime<Utc>,
    /// Bytes restored and compared.
    pub bytes: u64,
    /// Chunks compared.
    pub chunks: u64,
    /// `None` when the restored content equals the backup's record; else
    /// what was wrong.
    pub failure: Option<String>,
}

/// Removes the scratch file on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.0.display(), error = %e, "could not remove a drill's scratch file; remove it by hand");
        }
    }
}

/// Prefix of drill scratch files in the scratch directory.
const SCRATCH_PREFIX: &str = ".drill-";

/// Drills the newest backup of every volume whose backups in `repo` name
/// `policy`, restoring each into a scratch file below `scratch_dir`; see
/// the module docs. Scratch files left by a crashed drill are removed
/// first.
pub fn drill(
    repo: &Repository,
    policy: &str,
    scratch_dir: &Path,
    progress: &dyn Progress,
) -> Result<Vec<DrillResult>, BackupError> {
    let _session = repo.session(SessionKind::Shared, "backup drill")?;
    fs::create_dir_all(scratch_dir).map_err(|source| BackupError::Io {
        op: "create",
        path: scratch_dir.to_owned(),
        source,
    })?;
    if let Ok(entries) = fs::read_dir(scratch_dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(SCRATCH_PREFIX) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let (heads, bad) = repo.manifest_heads()?;
    if let Some(e) = bad.into_iter().next() {
        return Err(e);
    }
    // The newest backup of each volume of the policy.
    let mut newest: BTreeMap<Uuid, &Manifest> = BTreeMap::new();
    for m in heads.iter().filter(|m| m.policy.as_deref() == Some(policy)) {
        let e = newest.entry(m.volume.uuid).or_insert(m);
        if (m.started_at, m.id) > (e.started_at, e.id) {
            *e = m;
        }
    }
    let index = repo.load_index()?;
    let mut results = Vec::new();
    for head in newest.values() {
        let m = repo
            .find_manifest(head.id)?
            .ok_or_else(|| BackupError::Target {
                name: head.id.to_string(),
                reason: "the backup went away during the drill (pruned?)".into(),
            })?;
        progress.stage(&format!("drill {} ({})", m.volume.name, m.id));
        results.push(drill_one(repo, &index, &m, scratch_dir, progress)?);
    }
    Ok(results)
}

/// Restores `m` into a scratch file and compares it with its table.
fn drill_one(
    repo: &Repository,
    index: &super::repo::Index,
    m: &Manifest,
    scratch_dir: &Path,
    progress: &dyn Progress,
) -> Result<DrillResult, BackupError> {
    let table = format::decode_table(m)?;
    let path = scratch_dir.join(format!(
        "{SCRATCH_PREFIX}{}.tmp-{}",
        m.id.simple(),
        std::process::id()
    ));
    let io = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| BackupError::Io { op, path, source }
    };
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io("create", &path))?;
    let _scratch = Scratch(path.clone());
    file.set_len(m.volume.size).map_err(io("size", &path))?;
    let mut result = DrillResult {
        backup: m.id,
        volume: m.volume.name.clone(),
        started_at: m.started_at,
        bytes: 0,
        chunks: 0,
        failure: None,
    };
    match restore::restore(
        repo,
        index,
        m,
        &table,
        &file,
        &path,
        Target::Fresh,
        progress,
    ) {
        Ok(_) => {}
        Err(e @ BackupError::Damaged { .. }) => {
            result.failure = Some(format!("the restore failed: {}", crate::error_chain(&e)));
            return Ok(result);
        }
        Err(e) => return Err(e),
    }
    // Read back what was written and compare it with the record.
    let c = u64::from(CHUNK_SIZE);
    let mut buf = vec![0u8; CHUNK_SIZE as usize];
    let mut wrong: Vec<u64> = Vec::new();
    for &(slot, id) in &table {
        let start = slot * c;
        let len = usize::try_from(c.min(m.volume.size.saturating_sub(start))).unwrap_or(0);
        file.read_exact_at(&mut buf[..len], start)
            .map_err(io("read", &path))?;
        if repo.chunk_id(&buf[..len]) != id {
            wrong.push(slot);
        }
        result.chunks += 1;
        result.bytes += len as u64;
    }
    let actual = file.metadata().map_err(io("stat", &path))?.len();
    if actual != m.volume.size {
        result.failure = Some(format!(
            "the restored volume is {actual} bytes, the backup says {}",
            m.volume.size
        ));
    } else if let Some(first) = wrong.first() {
        result.failure = Some(format!(
            "{} chunk(s) of the restored volume differ from the backup's record, the first at byte {}",
            wrong.len(),
            first * c
        ));
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_of_a_sample_cover_the_id_space_once_per_lap() {
        // 10 %: ten windows, back to the start, every prefix in exactly one.
        let mut from = 0u64;
        let mut starts = Vec::new();
        for _ in 0..10 {
            starts.push(from);
            from = window(from, 10).1;
        }
        // Rounded up, so the tenth window ends at or past the start.
        assert!(from < u64::MAX / 1000, "lap ends near 0: {from}");
        for p in [0u64, 1, u64::MAX / 3, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
            let hits = starts.iter().filter(|s| (window(**s, 10).0)(p)).count();
            assert!(hits >= 1, "prefix {p} in no window");
            assert!(hits <= 2, "prefix {p} in {hits} windows");
        }
        // 100 %: everything, and the cursor stays.
        let (inside, next) = window(12345, 100);
        assert!(inside(0) && inside(u64::MAX) && inside(12344));
        assert_eq!(next, 12345);
        // A window that wraps past the top of the space.
        let (inside, _) = window(u64::MAX - 10, 1);
        assert!(inside(u64::MAX) && inside(0) && inside(5) && !inside(u64::MAX - 11));
    }
}
