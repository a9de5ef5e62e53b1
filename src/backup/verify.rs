//! Verifying backups: every chunk a backup lists is read and hashed, once
//! per repository however many backups share it, and each backup gets a
//! verdict (ok, or how many of its chunks are missing or corrupt and where
//! the first one is), which the catalogue records.
//!
//! Must not: print (the CLI does), or change a repository (verify only
//! reads, under a shared session).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use chrono::Utc;

use super::catalog::{Catalog, Status};
use super::format::{self, Digest, Manifest};
use super::job::{self, JobError};
use super::repo::SessionKind;
use super::target::RepoSpec;
use super::{BackupError, Progress, Repository};

/// One backup's verdict.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The backup.
    pub manifest: Manifest,
    /// Slots its table lists.
    pub chunks: usize,
    /// What is wrong with it (`None`: nothing).
    pub damage: Option<String>,
}

/// One repository's check.
#[derive(Debug, Clone)]
pub struct Checked {
    /// Where the repository is.
    pub location: String,
    /// A verdict per backup.
    pub verdicts: Vec<Verdict>,
    /// Unique chunks checked.
    pub chunks: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Unique chunks missing.
    pub missing: usize,
    /// Unique chunks whose bytes do not hash to their id.
    pub corrupt: usize,
    /// Packs whose trailer cannot be read, with why (checked with `packs`).
    pub damaged_packs: Vec<(Digest, String)>,
}

/// One repository to verify: how it was opened, and its backups to check.
pub type Target = (Repository, RepoSpec, Vec<Manifest>);

/// What to verify: catalogued backup `id` (or a unique prefix), or every
/// backup of every catalogued repository. A repository with an unreadable
/// manifest is refused (its errors are in [`JobError::Unreadable`]).
pub fn targets(cat: &Catalog, id: Option<&str>) -> Result<Vec<Target>, JobError> {
    if let Some(id) = id {
        let (repo, spec, m) = job::locate(cat, id)?;
        return Ok(vec![(repo, spec, vec![m])]);
    }
    let repos: BTreeMap<String, RepoSpec> = cat
        .backups
        .values()
        .filter(|e| e.status != Status::Failed)
        .map(|e| (e.repository.clone(), e.repo_spec()))
        .collect();
    if repos.is_empty() {
        return Err(JobError::NothingToVerify);
    }
    let mut out = Vec::new();
    for (location, spec) in repos {
        let repo = spec.open()?;
        let (ms, bad) = repo.manifests()?;
        if !bad.is_empty() {
            return Err(JobError::Unreadable {
                repository: location,
                errors: bad.iter().map(|e| crate::error_chain(e)).collect(),
            });
        }
        out.push((repo, spec, ms));
    }
    Ok(out)
}

/// Checks every chunk `manifests` of `repo` list, each once; with `packs`
/// also every pack trailer (what prune reads, and a chunk check through the
/// index never does).
pub fn check(
    repo: &Repository,
    manifests: &[Manifest],
    packs: bool,
    progress: &dyn Progress,
) -> Result<Checked, BackupError> {
    let _session = repo.session(SessionKind::Shared, "backup verify")?;
    let index = repo.load_index()?;
    let mut tables = Vec::new();
    let mut union: BTreeMap<Digest, u64> = BTreeMap::new();
    for m in manifests {
        let t = format::decode_table(m)?;
        for &(slot, id) in &t {
            union.entry(id).or_insert(slot);
        }
        tables.push(t);
    }
    let all: Vec<(u64, Digest)> = union.into_iter().map(|(id, slot)| (slot, id)).collect();
    let (problems, read) = super::restore::check(repo, &index, &all, progress)?;
    let missing: HashSet<Digest> = problems.missing.iter().copied().collect();
    let corrupt: HashSet<Digest> = problems.corrupt.iter().copied().collect();
    let verdicts = manifests
        .iter()
        .zip(&tables)
        .map(|(m, t)| {
            // Distinct chunks (one chunk may fill several slots).
            let ids: HashSet<&Digest> = t.iter().map(|(_, id)| id).collect();
            let miss = ids.iter().filter(|id| missing.contains(**id)).count();
            let bad = ids.iter().filter(|id| corrupt.contains(**id)).count();
            let damage = (miss + bad > 0).then(|| {
                let first = t
                    .iter()
                    .find(|(_, id)| missing.contains(id) || corrupt.contains(id))
                    .map(|(slot, id)| {
                        let what = if missing.contains(id) {
                            "missing"
                        } else {
                            "corrupt"
                        };
                        format!(
                            "first: chunk {id} at byte {} {what}",
                            slot * u64::from(m.chunk_size)
                        )
                    })
                    .unwrap_or_default();
                format!("{miss} missing, {bad} corrupt chunk(s); {first}")
            });
            Verdict {
                manifest: m.clone(),
                chunks: t.len(),
                damage,
            }
        })
        .collect();
    let mut damaged_packs = Vec::new();
    if packs {
        for (pack, len) in repo.scan_packs()? {
            if let Err(e) = repo.read_trailer(&pack, len) {
                damaged_packs.push((pack, crate::error_chain(&e)));
            }
        }
    }
    Ok(Checked {
        location: repo.location(),
        damaged_packs,
        verdicts,
        chunks: read.chunks + problems.corrupt.len() as u64 + problems.missing.len() as u64,
        bytes: read.bytes,
        missing: problems.missing.len(),
        corrupt: problems.corrupt.len(),
    })
}

/// Records verdicts in the catalogue of `state` (ok or damaged, when),
/// each with the repository it was checked in. The caller holds the state
/// lock.
pub fn record(state: &Path, checked: &[(&Target, &Checked)]) -> Result<(), BackupError> {
    let _catalog = job::catalog_lock();
    let mut cat = Catalog::load(state)?;
    let now = Utc::now();
    for ((repo, spec, _), c) in checked {
        for v in &c.verdicts {
            cat.add(&v.manifest, repo, spec);
            if let Some(e) = cat.backups.get_mut(&v.manifest.id) {
                e.status = if v.damage.is_some() {
                    Status::Damaged
                } else {
                    Status::Ok
                };
                e.detail.clone_from(&v.damage);
                e.verified_at = Some(now);
            }
        }
    }
    cat.store(state)
}
