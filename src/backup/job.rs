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
//! same journal records. A check ([`check`]: a sampled verify or restore
//! drills of a policy's repository, scheduled by the agent or run by
//! `backup drill`) marks the backups it finds damaged in the catalogue, so
//! retention no longer counts them as good.
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
use super::checks::{self, CheckKind, CheckSummary, Damage};
use super::engine::{self, Mode, RunReport, RunSpec};
use super::format::{self, Codec, Manifest};
use super::repo::SessionKind;
use super::restore::{self, RestoreStats, Target};
use super::target::{RepoSpec, SecretSource};
use super::{BackupError, Progress, Repository};
use crate::driver::{Discovery, Driver, Mark, ObjKind};
use crate::manifest::kinds::BackupPolicySpec;
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
    /// Its policy names no repository.
    #[error("BackupPolicy {0} names no target")]
    NoTarget(Name),
    /// The policy to rotate the key of is not encrypted.
    #[error("BackupPolicy {0} has no `encryption`: its repository has no key to rotate")]
    NoKey(Name),
    /// The new key is the current one.
    #[error("the new key is the current key")]
    SameKey,
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
    /// The volume to restore over is held open by someone.
    #[error(
        "volume {to} ({uuid} on {backend}) is in use by {holder}; restoring over it would change its data under its user: stop or detach it first, or restore into a new volume (--to NAME)"
    )]
    InUse {
        /// The volume.
        to: Name,
        /// Its identity.
        uuid: Uuid,
        /// Its back end.
        backend: Name,
        /// Who holds it, worded to follow "in use by".
        holder: crate::model::InUse,
    },
    /// Whether the volume to restore over is in use cannot be told.
    #[error("cannot tell whether the volume is in use (reading /proc): {0}")]
    InUseUnknown(String),
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
        "backup {id} is no longer in {repository} (pruned?); `backup import --scan {repository}` refreshes the catalogue"
    )]
    Gone {
        /// The backup.
        id: Uuid,
        /// Its repository's location.
        repository: String,
    },
    /// The manifests declare no such consistency group.
    #[error("no ConsistencyGroup named {0} in the manifests")]
    NoGroup(Name),
    /// The group has no backup policy.
    #[error("ConsistencyGroup {0} has no backupPolicy: its members are not backed up together")]
    GroupNoPolicy(Name),
    /// No volume is a member of the group.
    #[error("ConsistencyGroup {0} has no member volume (no Volume names it in consistencyGroup)")]
    NoMembers(Name),
    /// The group's members are not on one back end.
    #[error(
        "the members of ConsistencyGroup {group} are on several back ends ({where_}): a group backup takes one group snapshot on one back end"
    )]
    GroupSplit {
        /// The group.
        group: Name,
        /// Each member on its back end.
        where_: String,
    },
    /// `--group` was given something that is not a group backup's id.
    #[error(
        "{given:?} is {what}, not a group backup's id: `backup list` shows each group backup's id on its `group` line{hint}"
    )]
    NotAGroupId {
        /// What was given.
        given: String,
        /// What it is (`the volume db`, `backup 1234... of db`).
        what: String,
        /// The way forward, with a leading `; `.
        hint: String,
    },
    /// The group backup is missing a member's backup, or failed.
    #[error(
        "group backup {id} of {group} is {status}: {detail}; only a complete group backup is restored (`backup list` shows its members)"
    )]
    GroupIncomplete {
        /// The group backup.
        id: Uuid,
        /// The group.
        group: String,
        /// `incomplete`, `failed`.
        status: &'static str,
        /// What is missing or failed.
        detail: String,
    },
    /// Restoring a group in place would write under members in use.
    #[error(
        "cannot restore group backup {id} of {group} over its members: {holders}; restoring over them would change their data under their users: stop or detach them first, or restore into new volumes (without --overwrite)"
    )]
    MembersInUse {
        /// The group backup.
        id: Uuid,
        /// The group.
        group: String,
        /// Each member in use and its holder.
        holders: String,
    },
    /// A new volume's name for a restored member would not be a name.
    #[error("cannot name the restored member {member} {name:?}: {why}; pass a shorter --suffix")]
    MemberName {
        /// The member.
        member: String,
        /// The name tried.
        name: String,
        /// Why it is not one.
        why: String,
    },
    /// The manifests declare no backup policy.
    #[error("no BackupPolicy in the manifests: nothing to prune")]
    NothingToPrune,
    /// A repository to prune holds a manifest that cannot be read.
    #[error("{repository}: refusing to prune with an unreadable manifest: {error}")]
    PruneUnreadable {
        /// The repository's location.
        repository: String,
        /// The manifest's error, in one line.
        error: String,
    },
    /// Nothing is catalogued to verify.
    #[error("no backups in the catalogue to verify")]
    NothingToVerify,
    /// A repository holds manifests that cannot be read.
    #[error("{} unreadable manifest(s) in {repository}", errors.len())]
    Unreadable {
        /// The repository's location.
        repository: String,
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
    /// What holds it open, as far as the holders given to [`find_volume`]
    /// tell.
    pub in_use: Option<crate::model::InUse>,
}

/// The volume object named `volume` on the back ends `among` of `registry`
/// (discovered now). A back end that cannot be discovered is an error only
/// when the volume is found nowhere else. `holders` names what holds it
/// open (an empty scan: nothing asked).
pub fn find_volume(
    registry: &Registry<'_>,
    among: &[Name],
    volume: &str,
    holders: &crate::driver::Holders,
) -> Result<Option<Found>, JobError> {
    let mut hits = Vec::new();
    let mut failed = None;
    for backend in among {
        let Some(driver) = registry.get(backend.as_str()) else {
            continue;
        };
        match driver.discover(holders).1 {
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
                        in_use: o.in_use,
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

/// The ready volume object of `vol_name` on this host's back ends (its pin,
/// when it has one) and its driver.
pub(crate) fn ready_volume<'a>(
    registry: &'a Registry<'_>,
    vol_name: &Name,
    vol: &crate::manifest::kinds::VolumeSpec,
) -> Result<(Found, &'a dyn Driver), JobError> {
    let candidates: Vec<Name> = registry
        .names()
        .filter(|n| vol.backend.as_ref().is_none_or(|pin| pin == *n))
        .cloned()
        .collect();
    if candidates.is_empty() {
        return Err(JobError::NoBackend(vol_name.clone()));
    }
    let found = find_volume(
        registry,
        &candidates,
        vol_name.as_str(),
        &Ok(crate::inuse::Holders::default()),
    )?
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
    Ok((found, driver))
}

/// A run's mode (`None`: as the policy says), repository and codec under
/// policy `name`.
pub(crate) fn run_settings(
    policy: &BackupPolicySpec,
    name: &Name,
    mode: Option<Mode>,
    state: &Path,
) -> Result<(Mode, RepoSpec, Codec), JobError> {
    let mode = mode.unwrap_or(Mode::Policy {
        incremental: policy.incremental,
        full_every: policy.full_every,
    });
    let spec =
        RepoSpec::from_policy(policy, state).ok_or_else(|| JobError::NoTarget(name.clone()))?;
    Ok((mode, spec, Codec::from(policy.compression)))
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
    let (found, driver) = ready_volume(registry, vol_name, &vol.spec)?;
    let (mode, spec, codec) = run_settings(&policy.spec, &policy_name, mode, state)?;
    let id = Uuid::new_v4();
    let intent = journal.intent(id, 0, &format!("backup run {vol_name} ({id})"))?;
    let started_at = Utc::now();
    let result = spec.open_or_init(codec).and_then(|repo| {
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
            cat.add(&report.manifest, &repo, &spec);
            if let Some(e) = cat.backups.get_mut(&report.manifest.id) {
                e.point_in_time = Some(report.method.as_str().to_owned());
                e.read = Some(report.read.clone());
            }
            cat.store(state)?;
            Ok((repo, report))
        }
        Err(e) => {
            let text = crate::error_chain(&e);
            journal.outcome(&intent, Outcome::Failed, Some(text.clone()))?;
            cat.backups.insert(
                id,
                failed_entry(
                    id,
                    &spec,
                    format::VolumeRef {
                        uuid: found.uuid,
                        name: found.name.clone(),
                        backend: found.backend.to_string(),
                        size: found.size,
                    },
                    (policy_name.as_str(), started_at),
                    text,
                    None,
                ),
            );
            cat.store(state)?;
            Err(e.into())
        }
    }
}

/// The catalogue's entry of run `id` that failed with `text` (nothing was
/// committed): `backup list` shows it.
pub(crate) fn failed_entry(
    id: Uuid,
    spec: &RepoSpec,
    volume: format::VolumeRef,
    (policy, started_at): (&str, chrono::DateTime<Utc>),
    text: String,
    group: Option<format::GroupRef>,
) -> Entry {
    Entry {
        id,
        repository: spec.location(),
        target: Some(spec.clone()),
        repository_id: None,
        volume,
        policy: Some(policy.to_owned()),
        kind: None,
        parent: None,
        started_at,
        read_bytes: 0,
        stored_bytes: 0,
        status: Status::Failed,
        detail: Some(text),
        verified_at: None,
        point_in_time: None,
        read: None,
        group,
    }
}

/// The repository (and how it was opened) and manifest of a catalogued
/// backup (`id` or a unique prefix).
pub fn locate(cat: &Catalog, id: &str) -> Result<(Repository, RepoSpec, Manifest), JobError> {
    let entry = cat.resolve(id)?;
    if entry.status == Status::Failed {
        return Err(JobError::FailedRun {
            id: entry.id,
            detail: entry.detail.clone(),
        });
    }
    let spec = entry.repo_spec();
    let repo = spec.open()?;
    if let Some(rid) = entry.repository_id
        && rid != repo.config().id
    {
        return Err(BackupError::RepoMismatch {
            location: entry.repository.clone(),
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
    Ok((repo, spec, m))
}

/// One policy repository's prune.
#[derive(Debug)]
pub struct Pruned {
    /// Where the repository is.
    pub location: String,
    /// The policies writing there.
    pub policies: Vec<String>,
    /// The repository only takes additions: retention forgot in the
    /// catalogue only, and `--sweep` removes.
    pub append_only: bool,
    /// Retention's verdicts and, where the repository was swept, what the
    /// sweep did; `None` when there is no repository there yet.
    pub outcome: Option<(super::prune::PrunePlan, Option<super::prune::PruneReport>)>,
}

/// How [`prune`] treats append-only repositories.
#[derive(Debug, Clone, Default)]
pub struct Sweep {
    /// Remove there too (`--sweep`: credentials or permissions that may
    /// delete).
    pub append_only_too: bool,
    /// An S3 target's deleting credentials, instead of the policy's.
    pub credentials: Option<SecretSource>,
}

/// Applies every policy's retention to its repository: forgets what the
/// rules do not keep and sweeps the chunks nothing uses any more (on an
/// append-only target only in the catalogue, unless `sweep` says
/// otherwise), or with `dry_run` only works out what it would do. `done`
/// hears of each repository as it is finished. The caller holds the state
/// lock.
pub fn prune(
    set: &ManifestSet,
    state: &Path,
    dry_run: bool,
    sweep: &Sweep,
    done: &mut dyn FnMut(&Pruned) -> std::io::Result<()>,
) -> Result<(), JobError> {
    // By location: (how to open it, its policies).
    let mut repos: std::collections::BTreeMap<String, (RepoSpec, Vec<String>)> =
        std::collections::BTreeMap::new();
    for (n, p) in &set.backup_policies {
        let Some(mut spec) = RepoSpec::from_policy(&p.spec, state) else {
            continue;
        };
        if sweep.append_only_too {
            spec.append_only = false;
            if let Some(k) = &sweep.credentials {
                spec = spec.with_credentials(k.clone());
            }
        }
        repos
            .entry(spec.location())
            .or_insert_with(|| (spec, Vec::new()))
            .1
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
    for (location, (spec, policies)) in repos {
        let mut pruned = Pruned {
            location,
            policies,
            append_only: false,
            outcome: None,
        };
        match spec.open() {
            Err(BackupError::NotARepository { .. }) => {}
            Err(e) => return Err(e.into()),
            Ok(repo) => {
                let (manifests, bad) = repo.manifest_heads()?;
                if let Some(e) = bad.first() {
                    return Err(JobError::PruneUnreadable {
                        repository: pruned.location,
                        error: crate::error_chain(e),
                    });
                }
                let plan = super::prune::plan(&manifests, &rules, &|id| damaged.contains(&id));
                pruned.append_only = repo.is_append_only();
                // Nothing is removed from an append-only target: forgotten
                // here, swept later.
                let report = if pruned.append_only {
                    None
                } else {
                    Some(super::prune::execute(
                        &repo,
                        &plan,
                        &super::prune::PruneOptions::new(state, dry_run),
                    )?)
                };
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

/// Runs one check of `policy`'s repository: a sampled verify of `sample`
/// percent from `cursor`, or restore drills of each volume's newest backup
/// into `STATE/drill/`; the backups found damaged are marked in the
/// catalogue. `Ok` when it ran, with what it found (no repository yet is
/// nothing to check); an error when it could not run. The agent's
/// scheduled checks and `backup drill` both come here; the caller holds the
/// state lock.
pub fn check(
    spec: &BackupPolicySpec,
    policy: &Name,
    kind: CheckKind,
    cursor: u64,
    state: &Path,
    progress: &dyn Progress,
) -> Result<CheckSummary, JobError> {
    // A figure for people, in MiB (precision loss is irrelevant there).
    #[allow(clippy::cast_precision_loss)]
    let bytes = |n: u64| format!("{:.2} MiB", n as f64 / f64::from(1u32 << 20));
    let rspec =
        RepoSpec::from_policy(spec, state).ok_or_else(|| JobError::NoTarget(policy.clone()))?;
    let repo = match rspec.open() {
        Ok(r) => r,
        Err(BackupError::NotARepository { .. }) => {
            return Ok(CheckSummary {
                text: format!(
                    "no repository at {} yet: nothing to check",
                    rspec.location()
                ),
                problems: Vec::new(),
                cursor: None,
            });
        }
        Err(e) => return Err(e.into()),
    };
    let (text, damaged, next) = match kind {
        CheckKind::Verify => {
            let sample = spec.verify.as_ref().map_or(100, |v| v.sample.get());
            let r = checks::verify_sample(&repo, sample, cursor, progress)?;
            (
                format!(
                    "checked {} of {} chunk(s) ({} % of the id space, {}) in {}",
                    r.chunks_checked,
                    r.chunks_total,
                    r.sample,
                    bytes(r.bytes_checked),
                    repo.location()
                ),
                r.damaged,
                Some(r.next),
            )
        }
        CheckKind::Drill => {
            let results = checks::drill(&repo, policy.as_str(), &state.join("drill"), progress)?;
            let total: u64 = results.iter().map(|r| r.bytes).sum();
            let damaged = results
                .iter()
                .filter_map(|r| {
                    r.failure.as_ref().map(|f| Damage {
                        backup: r.backup,
                        volume: r.volume.clone(),
                        started_at: r.started_at,
                        detail: format!("restore drill: {f}"),
                    })
                })
                .collect();
            let each: Vec<String> = results
                .iter()
                .map(|r| {
                    format!(
                        "{} from {} ({}, {} chunk(s)): {}",
                        r.volume,
                        r.backup,
                        bytes(r.bytes),
                        r.chunks,
                        r.failure.as_deref().unwrap_or("identical")
                    )
                })
                .collect();
            (
                format!(
                    "restored and compared the newest backup of {} volume(s), {} in all{}{}",
                    results.len(),
                    bytes(total),
                    if each.is_empty() { "" } else { ": " },
                    each.join("; ")
                ),
                damaged,
                None,
            )
        }
    };
    mark_damaged(state, &damaged)?;
    Ok(CheckSummary {
        text,
        problems: damaged
            .iter()
            .map(|d| {
                format!(
                    "volume {}, backup {} ({}): {}",
                    d.volume,
                    d.backup,
                    d.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    d.detail
                )
            })
            .collect(),
        cursor: next,
    })
}

/// Marks the backups a check found damaged in the catalogue.
fn mark_damaged(state: &Path, damaged: &[Damage]) -> Result<(), JobError> {
    if damaged.is_empty() {
        return Ok(());
    }
    let _catalog = catalog_lock();
    let mut cat = Catalog::load(state)?;
    let now = Utc::now();
    for d in damaged {
        if let Some(e) = cat.backups.get_mut(&d.backup) {
            e.status = Status::Damaged;
            e.detail = Some(d.detail.clone());
            e.verified_at = Some(now);
        }
    }
    cat.store(state)?;
    Ok(())
}

/// What [`rotate_key`] did.
#[derive(Debug, Clone)]
pub struct Rotated {
    /// Where the repository is.
    pub location: String,
    /// Where the new key came from.
    pub from: String,
    /// Key files of the old key removed (none on an append-only target).
    pub removed: usize,
    /// The repository only takes additions: the old key's file stays.
    pub append_only: bool,
}

/// Wraps the data key of `policy`'s encrypted repository under the key
/// `new` holds and retires the old one; no data is rewritten. The
/// catalogue reopens the repository with the new key from then on. The
/// caller holds the state lock.
pub fn rotate_key(
    set: &ManifestSet,
    state: &Path,
    policy: &Name,
    new: &SecretSource,
) -> Result<Rotated, JobError> {
    let doc = set
        .backup_policies
        .get(policy)
        .ok_or_else(|| JobError::PolicyMissing(policy.clone()))?;
    let spec = RepoSpec::from_policy(&doc.spec, state)
        .ok_or_else(|| JobError::NoTarget(policy.clone()))?;
    let Some(old_src) = &spec.key else {
        return Err(JobError::NoKey(policy.clone()));
    };
    let old = super::target::read_key(old_src)?;
    let new_key = super::target::read_key(new)?;
    if old.secret == new_key.secret {
        return Err(JobError::SameKey);
    }
    let repo = spec.open()?;
    let removed = repo.rotate_key(&old, &new_key)?;
    let _catalog = catalog_lock();
    let mut cat = Catalog::load(state)?;
    let location = repo.location();
    for e in cat.backups.values_mut() {
        if e.repository == location
            && let Some(t) = &mut e.target
        {
            t.key = Some(new.clone());
        }
    }
    cat.store(state)?;
    Ok(Rotated {
        location,
        from: new_key.from,
        removed,
        append_only: repo.is_append_only(),
    })
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
    // Who holds what open matters only when writing over a volume.
    let holders = if overwrite {
        crate::inuse::Holders::scan().map_err(|e| JobError::InUseUnknown(e.to_string()))?
    } else {
        crate::inuse::Holders::default()
    };
    let existing = find_volume(
        registry,
        std::slice::from_ref(backend),
        to.as_str(),
        &Ok(holders),
    )?;
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
            if let Some(holder) = obj.in_use {
                return Err(JobError::InUse {
                    to: to.clone(),
                    uuid: obj.uuid,
                    backend: backend.clone(),
                    holder,
                });
            }
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
