//! The catalogue: the state directory's cache of backups, and export/import
//! records.
//!
//! `STATE/backup-catalog.json` (the state envelope of
//! [`crate::state::atomic`], payload version 1) lists each backup's header:
//! what `backup list` shows without touching the repositories, plus what only
//! this host knows: runs that failed (they left nothing in the repository)
//! and what `verify` last found. It is a cache: every successful backup is
//! also a manifest in its repository, and [`Catalog::scan`] rebuilds the
//! entries from there.
//!
//! Must not: be the only copy of anything needed to restore.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::engine::ReadRecord;
use super::format::{
    BackupKind, GroupRef, Manifest, RECORD_FORMAT, Record, RecordRepository, VolumeRef,
};
use super::target::{RepoSpec, Target};
use super::{BackupError, Repository};
use crate::state::atomic;

/// The catalogue's file name in the state directory.
pub const CATALOG_FILE: &str = "backup-catalog.json";
/// Its payload version.
pub const CATALOG_VERSION: u32 = 1;

/// What is known about a backup's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Written; not found damaged.
    Ok,
    /// `verify` found missing or corrupt chunks.
    Damaged,
    /// The run failed: nothing was committed.
    Failed,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ok => "ok",
            Self::Damaged => "damaged",
            Self::Failed => "failed",
        })
    }
}

/// One backup in the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The backup's id.
    pub id: Uuid,
    /// Where the repository is ([`Repository::location`]).
    pub repository: String,
    /// How to open it again (absent in entries of older versions: a
    /// directory at `repository`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<RepoSpec>,
    /// The repository's id (`None` for a run that failed before opening it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_id: Option<Uuid>,
    /// The volume.
    pub volume: VolumeRef,
    /// The policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Full or incremental (`None` for a failed run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<BackupKind>,
    /// The parent, for an incremental.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Uuid>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes it added to the repository.
    pub stored_bytes: u64,
    /// Health.
    pub status: Status,
    /// Why it failed, or what verify found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When verify last checked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<DateTime<Utc>>,
    /// How this host's run took the point in time (`reflink`, `thin
    /// snapshot`, ...); absent for backups only read from a repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point_in_time: Option<String>,
    /// How the run read its source and why (recorded by the run on this
    /// host; the repository's manifests do not say, so entries rebuilt by
    /// `import --scan` have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<ReadRecord>,
    /// The group backup it is a member of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupRef>,
}

impl Entry {
    /// How to open the entry's repository.
    pub fn repo_spec(&self) -> RepoSpec {
        self.target
            .clone()
            .unwrap_or_else(|| RepoSpec::dir(Path::new(&self.repository)))
    }

    /// The entry of a committed manifest of `repo`, opened from `spec`.
    pub fn from_manifest(m: &Manifest, repo: &Repository, spec: &RepoSpec) -> Self {
        Self {
            id: m.id,
            repository: repo.location(),
            target: Some(spec.clone()),
            repository_id: Some(m.repository),
            volume: m.volume.clone(),
            policy: m.policy.clone(),
            kind: Some(m.kind),
            parent: m.parent,
            started_at: m.started_at,
            read_bytes: m.stats.read_bytes,
            stored_bytes: m.stats.stored_bytes,
            status: Status::Ok,
            detail: None,
            verified_at: None,
            point_in_time: None,
            read: None,
            group: m.group.clone(),
        }
    }
}

/// A group backup as the catalogue knows it: its members' entries.
#[derive(Debug, Clone)]
pub struct GroupBackup<'a> {
    /// The group, as its members' manifests name it.
    pub group: &'a GroupRef,
    /// The members' entries found, by volume name.
    pub entries: Vec<&'a Entry>,
}

impl GroupBackup<'_> {
    /// Every member named by the group has a good backup here: the only
    /// state in which a group backup may be restored or counted as done.
    pub fn complete(&self) -> bool {
        self.group.members.iter().all(|m| {
            self.entries
                .iter()
                .any(|e| &e.volume.name == m && e.status != Status::Failed)
        })
    }

    /// The group's state in words: `ok`, `damaged` (a member is),
    /// `failed` (the run failed), or `incomplete` (a member's backup is
    /// missing: a run killed before every member was committed).
    pub fn status(&self) -> &'static str {
        if self.entries.iter().any(|e| e.status == Status::Failed) {
            "failed"
        } else if !self.complete() {
            "incomplete"
        } else if self.entries.iter().any(|e| e.status == Status::Damaged) {
            "damaged"
        } else {
            "ok"
        }
    }

    /// The members the group names that have no backup here.
    pub fn missing(&self) -> Vec<&str> {
        self.group
            .members
            .iter()
            .filter(|m| !self.entries.iter().any(|e| &&e.volume.name == m))
            .map(String::as_str)
            .collect()
    }

    /// When the group's cut was taken (its members' earliest start).
    pub fn started_at(&self) -> Option<DateTime<Utc>> {
        self.entries.iter().map(|e| e.started_at).min()
    }
}

/// The catalogue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Entries by backup id.
    pub backups: BTreeMap<Uuid, Entry>,
    #[serde(skip)]
    generation: u64,
}

impl Catalog {
    /// Loads the catalogue of `state_dir` (empty when there is none).
    pub fn load(state_dir: &Path) -> Result<Self, BackupError> {
        let path = state_dir.join(CATALOG_FILE);
        match atomic::load::<Catalog>(&path, CATALOG_VERSION).map_err(BackupError::Catalog)? {
            Some(env) => {
                let mut c = env.payload;
                c.generation = env.generation;
                Ok(c)
            }
            None => Ok(Self::default()),
        }
    }

    /// Stores it (the caller holds the state lock).
    pub fn store(&mut self, state_dir: &Path) -> Result<(), BackupError> {
        std::fs::create_dir_all(state_dir).map_err(|source| BackupError::Io {
            op: "create",
            path: state_dir.to_owned(),
            source,
        })?;
        self.generation += 1;
        atomic::store(
            &state_dir.join(CATALOG_FILE),
            CATALOG_VERSION,
            self.generation,
            self,
        )
        .map_err(BackupError::Catalog)?;
        Ok(())
    }

    /// Finds a backup by full id or unique prefix (hyphens optional).
    pub fn resolve(&self, text: &str) -> Result<&Entry, BackupError> {
        let want: String = text
            .chars()
            .filter(|c| *c != '-')
            .collect::<String>()
            .to_lowercase();
        if want.len() < 4 {
            return Err(BackupError::UnknownBackup(text.to_owned()));
        }
        let hits: Vec<&Entry> = self
            .backups
            .values()
            .filter(|e| e.id.simple().to_string().starts_with(&want))
            .collect();
        match hits.as_slice() {
            [one] => Ok(one),
            [] => Err(BackupError::UnknownBackup(text.to_owned())),
            many => Err(BackupError::AmbiguousBackup {
                prefix: text.to_owned(),
                candidates: many
                    .iter()
                    .map(|e| e.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Replaces this catalogue's entries of `repo` with its manifests
    /// (failed runs recorded here are kept). Returns how many backups the
    /// repository holds and the manifests it could not read.
    pub fn scan(
        &mut self,
        repo: &Repository,
        spec: &RepoSpec,
    ) -> Result<(usize, Vec<BackupError>), BackupError> {
        let (manifests, bad) = repo.manifest_heads()?;
        let root = repo.location();
        let rid = repo.config().id;
        // What only this host's runs recorded survives the rescan.
        let ran: BTreeMap<Uuid, (Option<String>, Option<ReadRecord>)> = self
            .backups
            .iter()
            .map(|(id, e)| (*id, (e.point_in_time.clone(), e.read.clone())))
            .collect();
        self.backups.retain(|_, e| {
            e.status == Status::Failed || (e.repository != root && e.repository_id != Some(rid))
        });
        for m in &manifests {
            let mut entry = Entry::from_manifest(m, repo, spec);
            if let Some((pit, read)) = ran.get(&m.id) {
                entry.point_in_time.clone_from(pit);
                entry.read.clone_from(read);
            }
            self.backups.insert(m.id, entry);
        }
        Ok((manifests.len(), bad))
    }

    /// The backups `verify` found damaged (retention does not count them
    /// as successful).
    pub fn damaged(&self) -> std::collections::HashSet<Uuid> {
        self.backups
            .values()
            .filter(|e| e.status == Status::Damaged)
            .map(|e| e.id)
            .collect()
    }

    /// The group backups, by group backup id.
    pub fn groups(&self) -> BTreeMap<Uuid, GroupBackup<'_>> {
        let mut out: BTreeMap<Uuid, GroupBackup<'_>> = BTreeMap::new();
        for e in self.backups.values() {
            if let Some(g) = &e.group {
                out.entry(g.id)
                    .or_insert_with(|| GroupBackup {
                        group: g,
                        entries: Vec::new(),
                    })
                    .entries
                    .push(e);
            }
        }
        for g in out.values_mut() {
            g.entries.sort_by(|a, b| a.volume.name.cmp(&b.volume.name));
        }
        out
    }

    /// Finds a group backup by full id or unique prefix (hyphens optional).
    pub fn resolve_group(&self, text: &str) -> Result<GroupBackup<'_>, BackupError> {
        let want: String = text
            .chars()
            .filter(|c| *c != '-')
            .collect::<String>()
            .to_lowercase();
        let mut groups = self.groups();
        let hits: Vec<Uuid> = groups
            .keys()
            .filter(|id| want.len() >= 4 && id.simple().to_string().starts_with(&want))
            .copied()
            .collect();
        match hits.as_slice() {
            [one] => groups
                .remove(one)
                .ok_or_else(|| BackupError::UnknownGroup(text.to_owned())),
            [] => Err(BackupError::UnknownGroup(text.to_owned())),
            many => Err(BackupError::AmbiguousBackup {
                prefix: text.to_owned(),
                candidates: many
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Adds (or refreshes) a committed backup, keeping what verify recorded.
    pub fn add(&mut self, m: &Manifest, repo: &Repository, spec: &RepoSpec) {
        let mut entry = Entry::from_manifest(m, repo, spec);
        if let Some(old) = self.backups.get(&m.id) {
            if old.status == Status::Damaged {
                entry.status = old.status;
                entry.detail.clone_from(&old.detail);
            }
            entry.verified_at = old.verified_at;
            entry.point_in_time.clone_from(&old.point_in_time);
            entry.read.clone_from(&old.read);
        }
        self.backups.insert(m.id, entry);
    }
}

/// Builds the export record of `m` (of `repo`, opened from `spec`).
pub fn export(repo: &Repository, spec: &RepoSpec, m: &Manifest) -> Record {
    Record {
        format: RECORD_FORMAT.to_owned(),
        version: 1,
        repository: RecordRepository {
            path: PathBuf::from(repo.location()),
            id: repo.config().id,
            target: match spec.target {
                Target::Dir(_) => None,
                _ => Some(spec.clone()),
            },
        },
        backup: m.clone(),
    }
}

/// Checks an import record against the repository it names (or `repo_path`
/// when given) and writes its manifest into the repository if it is not
/// there. Returns the repository and the manifest.
pub fn import(
    record: &Record,
    repo_path: Option<&Path>,
) -> Result<(Repository, RepoSpec, bool), BackupError> {
    // The table must decode and match its digest before anything is written.
    record.check()?;
    let spec = match (repo_path, &record.repository.target) {
        (Some(p), _) => RepoSpec::dir(p),
        (None, Some(t)) => t.clone(),
        (None, None) => RepoSpec::dir(&record.repository.path),
    };
    let repo = spec.open()?;
    if repo.config().id != record.repository.id || record.backup.repository != record.repository.id
    {
        return Err(BackupError::RepoMismatch {
            location: repo.location(),
            expected: record.repository.id,
            found: repo.config().id,
        });
    }
    let written = match repo.find_manifest(record.backup.id)? {
        Some(existing) if existing == record.backup => false,
        Some(_) => {
            return Err(BackupError::BadManifest {
                id: record.backup.id,
                reason: "the repository holds a different manifest under this id".into(),
            });
        }
        None => {
            let _session = repo.session(super::SessionKind::Shared, "backup import")?;
            repo.write_manifest(&record.backup)?;
            true
        }
    };
    Ok((repo, spec, written))
}
