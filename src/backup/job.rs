//! Backups and restores of volumes named in the manifests: the transactions
//! `backup run`, `backup restore` and the agent's scheduled runs share.
//!
//! A run ([`run`]) resolves the volume's policy and repository from the
//! manifests, finds the volume on this host's back ends (their discovery,
//! through the [`Registry`]), journals its intent, backs it up through its
//! [`crate::driver::Driver`] ([`super::engine::run`]), records the result
//! in the catalogue — a failed run too, so `backup list` shows it — and
//! journals the outcome. A restore ([`restore`]) locates a catalogued backup,
//! then fills a new volume of a back end ([`super::into_volume`]) or, when
//! asked, overwrites an existing one (every chunk checked first), under the
//! same journal records.
//!
//! The catalogue's read-modify-write is serialised within the process
//! ([`catalog_lock`]: the agent runs backups on several threads); the state
//! lock keeps other processes out and is the caller's.
//!
//! Must not: print (the CLI does), or take the state lock (the CLI takes it
//! for a command; the agent holds it for its life).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use chrono::Utc;
use uuid::Uuid;

use super::catalog::{Catalog, Entry, Status};
use super::engine::{self, Mode, RunReport, RunSpec};
use super::format::{self, Codec, Manifest};
use super::repo::SessionKind;
use super::restore::{self, RestoreStats, Target};
use super::{BackupError, Progress, Repository};
use crate::driver::{Discovery, Driver, Mark, ObjKind};
use crate::manifest::{ManifestSet, Name};
use crate::registry::Registry;
use crate::state::journal::{Journal, JournalError, Outcome};

/// Why a backup or restore of a named volume could not be done.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The manifests declare no such volume.
    #[error("no Volume named {0} in the manifests")]
    NoVolume(Name),
    /// The volume has no backup policy.
    #[error("Volume {0} has no backupPolicy (nor its consistency group)")]
    NoPolicy(Name),
    /// Its policy is not declared.
    #[error("BackupPolicy {0} is not in the manifests")]
    PolicyMissing(Name),
    /// No back end of this host could hold it.
    #[error("Volume {0}: no back end of this host to look in")]
    NoBackend(Name),
    /// It is declared but not created yet: nothing to back up.
    #[error("Volume {0} does not exist on any back end yet (nothing to back up)")]
    NotYet(Name),
    /// Several objects carry its name.
    #[error("{count} volume objects are named {volume:?} ({hits}); remove the stray one")]
    Ambiguous {
        /// The name.
        volume: String,
        /// How many.
        count: usize,
        /// uuid on back end, each.
        hits: String,
    },
    /// It is not ready (an interrupted create, delete or migration).
    #[error("Volume {volume} ({uuid}) is {}, not ready", mark.as_str())]
    NotReady {
        /// The name.
        volume: String,
        /// Its identity.
        uuid: Uuid,
        /// Its mark.
        mark: Mark,
    },
    /// A back end could not be discovered.
    #[error("cannot discover back end {backend}: {why}")]
    Discovery {
        /// The back end.
        backend: Name,
        /// Why.
        why: String,
    },
    /// The back end to restore into is not declared.
    #[error("Backend {0} is not in the manifests (pass --backend)")]
    UnknownBackend(Name),
    /// The restore target exists and was not to be overwritten.
    #[error("volume {to} exists ({uuid} on {backend}); pass --overwrite to replace its content")]
    Exists {
        /// The volume.
        to: Name,
        /// Its identity.
        uuid: Uuid,
        /// Its back end.
        backend: Name,
    },
    /// The restore target is an interrupted create or restore.
    #[error(
        "volume {to} ({uuid} on {backend}) is incomplete ({mark:?}: an interrupted create or restore); pass --overwrite to replace it"
    )]
    Incomplete {
        /// The volume.
        to: Name,
        /// Its identity.
        uuid: Uuid,
        /// Its back end.
        backend: Name,
        /// Its mark.
        mark: Mark,
    },
    /// The restore target is smaller than the backup.
    #[error("volume {to} holds {have} bytes, less than the backup's {want}; extend it first")]
    TooSmall {
        /// The volume.
        to: Name,
        /// Its size.
        have: u64,
        /// The backup's.
        want: u64,
    },
    /// The catalogued backup is a failed run.
    #[error("backup {id} is a failed run: nothing was stored{}", detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    FailedRun {
        /// The backup.
        id: Uuid,
        /// Why it failed.
        detail: Option<String>,
    },
    /// The catalogued backup is gone from its repository.
    #[error(
        "backup {id} is no longer in {} (pruned?); `backup import --scan {}` refreshes the catalogue",
        repository.display(),
        repository.display()
    )]
    Gone {
        /// The backup.
        id: Uuid,
        /// Its repository.
        repository: PathBuf,
    },
    /// The manifests declare no backup policy.
    #[error("no BackupPolicy in the manifests: nothing to prune")]
    NothingToPrune,
    /// A repository to prune holds a manifest that cannot be read.
    #[error("{}: refusing to prune with an unreadable manifest: {error}", repository.display())]
    PruneUnreadable {
        /// The repository.
        repository: PathBuf,
        /// The manifest's error, in one line.
        error: String,
    },
    /// Nothing is catalogued to verify.
    #[error("no backups in the catalogue to verify")]
    NothingToVerify,
    /// A repository holds manifests that cannot be read.
    #[error("{} unreadable manifest(s) in {}", errors.len(), repository.display())]
    Unreadable {
        /// The repository.
        repository: PathBuf,
        /// Each manifest's error, in one line.
        errors: Vec<String>,
    },
    /// The restore target's data could not be opened.
    #[error("cannot open {}", path.display())]
    Open {
        /// Its data path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Telling the caller failed (its output closed).
    #[error("cannot write the output")]
    Output {
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The backup engine or repository failed.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// The journal could not be written.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl JobError {
    /// Whether a retry can help (contention, I/O); a missing or wrong
    /// declaration cannot.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Backup(e) => e.is_retryable(),
            Self::Journal(_) | Self::Open { .. } | Self::Discovery { .. } => true,
            _ => false,
        }
    }
}

impl From<crate::driver::DriverError> for JobError {
    fn from(e: crate::driver::DriverError) -> Self {
        Self::Backup(e.into())
    }
}

static CATALOG: Mutex<()> = Mutex::new(());

/// Serialises the catalogue's read-modify-write between the threads of
/// this process (the state lock keeps other processes out).
pub fn catalog_lock() -> MutexGuard<'static, ()> {
    CATALOG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A volume object found on a back end.
#[derive(Debug, Clone)]
pub struct Found {
    /// Its back end.
    pub backend: Name,
    /// Its identity.
    pub uuid: Uuid,
    /// Its manifest name.
    pub name: String,
    /// Its size.
    pub size: u64,
    /// Its mark.
    pub mark: Mark,
}

/// The volume object named `volume` on the back ends `among` of `registry`
/// (discovered now). A back end that cannot be discovered is an error only
/// when the volume is found nowhere else.
pub fn find_volume(
    registry: &Registry<'_>,
    among: &[Name],
    volume: &str,
) -> Result<Option<Found>, JobError> {
    let mut hits = Vec::new();
    let mut failed = None;
    for backend in among {
        let Some(driver) = registry.get(backend.as_str()) else {
            continue;
        };
        match driver.discover().1 {
            Discovery::Ok(inv) => hits.extend(
                inv.objects
                    .into_iter()
                    .filter(|o| o.kind == ObjKind::Volume && o.name == volume)
                    .map(|o| Found {
                        backend: backend.clone(),
                        uuid: o.uuid,
                        name: o.name,
                        size: o.size,
                        mark: match o.health {
                            crate::model::Health::Creating => Mark::Creating,
                            crate::model::Health::Deleting => Mark::Deleting,
                            crate::model::Health::Migrating => Mark::Migrating,
                            _ => Mark::Ready,
                        },
                    }),
            ),
            Discovery::Failed(why) => {
                failed.get_or_insert(JobError::Discovery {
                    backend: backend.clone(),
                    why,
                });
            }
        }
    }
    if hits.len() > 1 {
        return Err(JobError::Ambiguous {
            volume: volume.to_owned(),
            count: hits.len(),
            hits: hits
                .iter()
                .map(|h| format!("{} on {}", h.uuid, h.backend))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    match (hits.pop(), failed) {
        (Some(h), _) => Ok(Some(h)),
        (None, Some(e)) => Err(e),
        (None, None) => Ok(None),
    }
}

/// One backup of volume `vol_name` into its policy's repository, full or
/// incremental as `mode` says (`None`: as the policy says): journalled, and
/// catalogued whatever the outcome. The caller holds the state lock.
#[allow(clippy::too_many_arguments)] // each piece named
pub fn run(
    set: &ManifestSet,
    vol_name: &Name,
    mode: Option<Mode>,
    state: &Path,
    host: &str,
    registry: &Registry<'_>,
    journal: &mut Journal,
    progress: &dyn Progress,
) -> Result<(Repository, RunReport), JobError> {
    let vol = set
        .volumes
        .get(vol_name)
        .ok_or_else(|| JobError::NoVolume(vol_name.clone()))?;
    let policy_name = super::due::policy_of(set, &vol.spec)
        .ok_or_else(|| JobError::NoPolicy(vol_name.clone()))?;
    let policy = set
        .backup_policies
        .get(&policy_name)
        .ok_or_else(|| JobError::PolicyMissing(policy_name.clone()))?;
    let candidates: Vec<Name> = registry
        .names()
        .filter(|n| vol.spec.backend.as_ref().is_none_or(|pin| pin == *n))
        .cloned()
        .collect();
    if candidates.is_empty() {
        return Err(JobError::NoBackend(vol_name.clone()));
    }
    let found = find_volume(registry, &candidates, vol_name.as_str())?
        .ok_or_else(|| JobError::NotYet(vol_name.clone()))?;
    if found.mark != Mark::Ready {
        return Err(JobError::NotReady {
            volume: vol_name.to_string(),
            uuid: found.uuid,
            mark: found.mark,
        });
    }
    let driver = registry
        .get(found.backend.as_str())
        .ok_or_else(|| JobError::NoBackend(vol_name.clone()))?;
    let mode = mode.unwrap_or(Mode::Policy {
        incremental: policy.spec.incremental,
        full_every: policy.spec.full_every,
    });
    let repo_path = policy.spec.target.path.resolve(state);
    let codec = Codec::from(policy.spec.compression);
    let id = Uuid::new_v4();
    let intent = journal.intent(id, 0, &format!("backup run {vol_name} ({id})"))?;
    let started_at = Utc::now();
    let result = Repository::open_or_init(&repo_path, codec).and_then(|repo| {
        engine::run(
            &RunSpec {
                id,
                repo: &repo,
                driver,
                volume: found.uuid,
                policy: Some(policy_name.as_str()),
                mode,
                codec,
                host,
                force: policy.spec.force,
                exported: vol.spec.export.is_some(),
            },
            progress,
        )
        .map(|r| (repo, r))
    });
    let _catalog = catalog_lock();
    let mut cat = Catalog::load(state)?;
    match result {
        Ok((repo, report)) => {
            journal.outcome(&intent, Outcome::Changed, None)?;
            cat.add(&report.manifest, repo.root());
            cat.store(state)?;
            Ok((repo, report))
        }
        Err(e) => {
            let text = crate::error_chain(&e);
            journal.outcome(&intent, Outcome::Failed, Some(text.clone()))?;
            cat.backups.insert(
                id,
                Entry {
                    id,
                    repository: repo_path,
                    repository_id: None,
                    volume: format::VolumeRef {
                        uuid: found.uuid,
                        name: found.name.clone(),
                        backend: found.backend.to_string(),
                        size: found.size,
                    },
                    policy: Some(policy_name.to_string()),
                    kind: None,
                    parent: None,
                    started_at,
                    read_bytes: 0,
                    stored_bytes: 0,
                    status: Status::Failed,
                    detail: Some(text),
                    verified_at: None,
                },
            );
            cat.store(state)?;
            Err(e.into())
        }
    }
}

/// The repository and manifest of a catalogued backup (`id` or a unique
/// prefix).
pub fn locate(cat: &Catalog, id: &str) -> Result<(Repository, Manifest), JobError> {
    let entry = cat.resolve(id)?;
    if entry.status == Status::Failed {
        return Err(JobError::FailedRun {
            id: entry.id,
            detail: entry.detail.clone(),
        });
    }
    let repo = Repository::open(&entry.repository)?;
    if let Some(rid) = entry.repository_id
        && rid != repo.config().id
    {
        return Err(BackupError::RepoMismatch {
            path: entry.repository.clone(),
            expected: rid,
            found: repo.config().id,
        }
        .into());
    }
    let m = repo
        .find_manifest(entry.id)?
        .ok_or_else(|| JobError::Gone {
            id: entry.id,
            repository: entry.repository.clone(),
        })?;
    Ok((repo, m))
}

/// One policy repository's prune.
#[derive(Debug)]
pub struct Pruned {
    /// The repository.
    pub path: PathBuf,
    /// The policies writing there.
    pub policies: Vec<String>,
    /// Retention's verdicts and what the sweep did; `None` when there is no
    /// repository there yet.
    pub outcome: Option<(super::prune::PrunePlan, super::prune::PruneReport)>,
}

/// Applies every policy's retention to its repository: forgets what the
/// rules do not keep and sweeps the chunks nothing uses any more, or with
/// `dry_run` only works out what it would do. `done` hears of each
/// repository as it is finished. The caller holds the state lock.
pub fn prune(
    set: &ManifestSet,
    state: &Path,
    dry_run: bool,
    done: &mut dyn FnMut(&Pruned) -> std::io::Result<()>,
) -> Result<(), JobError> {
    let mut repos: std::collections::BTreeMap<PathBuf, Vec<String>> =
        std::collections::BTreeMap::new();
    for (n, p) in &set.backup_policies {
        repos
            .entry(p.spec.target.path.resolve(state))
            .or_default()
            .push(n.to_string());
    }
    if repos.is_empty() {
        return Err(JobError::NothingToPrune);
    }
    let _catalog = catalog_lock();
    let mut cat = Catalog::load(state)?;
    let damaged = cat.damaged();
    let rules = |policy: Option<&str>| {
        policy
            .and_then(|p| p.parse::<Name>().ok())
            .and_then(|p| set.backup_policies.get(&p))
            .and_then(|d| d.spec.retention.clone())
    };
    for (path, policies) in repos {
        let mut pruned = Pruned {
            path,
            policies,
            outcome: None,
        };
        match Repository::open(&pruned.path) {
            Err(BackupError::NotARepository { .. }) => {}
            Err(e) => return Err(e.into()),
            Ok(repo) => {
                let (manifests, bad) = repo.manifests()?;
                if let Some(e) = bad.first() {
                    return Err(JobError::PruneUnreadable {
                        repository: pruned.path,
                        error: crate::error_chain(e),
                    });
                }
                let plan = super::prune::plan(&manifests, &rules, &|id| damaged.contains(&id));
                let report = super::prune::execute(&repo, &plan, dry_run)?;
                if !dry_run {
                    for m in &plan.forget {
                        cat.backups.remove(&m.id);
                    }
                }
                pruned.outcome = Some((plan, report));
            }
        }
        done(&pruned).map_err(|source| JobError::Output { source })?;
    }
    if !dry_run {
        cat.store(state)?;
    }
    Ok(())
}

/// What [`restore`] did.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The volume's identity (new, or the overwritten one's).
    pub uuid: Uuid,
    /// The restore's figures.
    pub stats: RestoreStats,
}

/// Restores backup `m` of `repo` into volume `to` of `backend`: a new
/// volume, or with `overwrite` the existing one (every chunk checked before
/// the first byte changes; an incomplete one is replaced). Journalled. The
/// caller holds the state lock.
#[allow(clippy::too_many_arguments)] // each piece named
pub fn restore(
    repo: &Repository,
    m: &Manifest,
    registry: &Registry<'_>,
    backend: &Name,
    to: &Name,
    overwrite: bool,
    journal: &mut Journal,
    progress: &dyn Progress,
) -> Result<Restored, JobError> {
    let driver = registry
        .get(backend.as_str())
        .ok_or_else(|| JobError::UnknownBackend(backend.clone()))?;
    let existing = find_volume(registry, std::slice::from_ref(backend), to.as_str())?;
    let _session = repo.session(SessionKind::Shared, "backup restore")?;
    let intent = journal.intent(
        Uuid::new_v4(),
        0,
        &format!("backup restore {} --to {to}", m.id),
    )?;
    let result = restore_into(repo, m, driver, existing, backend, to, overwrite, progress);
    match &result {
        Ok(_) => {
            journal.outcome(&intent, Outcome::Changed, None)?;
        }
        Err(e) => {
            journal.outcome(&intent, Outcome::Failed, Some(crate::error_chain(e)))?;
        }
    }
    result
}

#[allow(clippy::too_many_arguments)] // each piece named
fn restore_into(
    repo: &Repository,
    m: &Manifest,
    driver: &dyn Driver,
    existing: Option<Found>,
    backend: &Name,
    to: &Name,
    overwrite: bool,
    progress: &dyn Progress,
) -> Result<Restored, JobError> {
    let fresh = || -> Result<Restored, JobError> {
        let uuid = Uuid::new_v4();
        let stats = super::into_volume::restore_new(
            repo,
            m,
            driver,
            uuid,
            to.as_str(),
            m.volume.size,
            progress,
        )?;
        Ok(Restored { uuid, stats })
    };
    let Some(obj) = existing else {
        return fresh();
    };
    match (obj.mark, overwrite) {
        (Mark::Ready, false) => Err(JobError::Exists {
            to: to.clone(),
            uuid: obj.uuid,
            backend: backend.clone(),
        }),
        (_, false) => Err(JobError::Incomplete {
            to: to.clone(),
            uuid: obj.uuid,
            backend: backend.clone(),
            mark: obj.mark,
        }),
        (Mark::Ready, true) => {
            if obj.size < m.volume.size {
                return Err(JobError::TooSmall {
                    to: to.clone(),
                    have: obj.size,
                    want: m.volume.size,
                });
            }
            let data = driver.data_path(obj.uuid)?;
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&data.path)
                .map_err(|source| JobError::Open {
                    path: data.path.clone(),
                    source,
                })?;
            let table = format::decode_table(m)?;
            let index = repo.load_index()?;
            let stats = restore::restore(
                repo,
                &index,
                m,
                &table,
                &f,
                &data.path,
                Target::Overwrite,
                progress,
            )?;
            Ok(Restored {
                uuid: obj.uuid,
                stats,
            })
        }
        (mark, true) => {
            // An interrupted create or restore: nothing worth keeping in it
            // (it never became ready), so start over.
            tracing::info!(uuid = %obj.uuid, mark = mark.as_str(), "replacing an incomplete volume");
            driver.delete(obj.uuid)?;
            fresh()
        }
    }
}
