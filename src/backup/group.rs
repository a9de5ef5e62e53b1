//! Group backups: every member of a consistency group backed up from one
//! crash-consistent group snapshot, and restored together.
//!
//! A run ([`run`]) resolves the group's `backupPolicy` and members from the
//! manifests, finds every member ready on one back end, finishes or cleans
//! up what an earlier killed run of the group left ([`recover`]), then:
//! 1. journals its intent, naming the group backup's id and each member
//!    snapshot's identity;
//! 2. takes one group snapshot through the back end's group-snapshot path
//!    ([`Driver::group_snapshot`]: the I/O of every member held above its
//!    LV while the snapshots are taken, each hold journalled first so the
//!    next run releases it; or, on a back end whose members must be idle,
//!    refused while one is in use), its member snapshots named
//!    `_group-backup-<id>.<volume>` ([`crate::model::GROUP_BACKUP_CUT`]:
//!    observation leaves them out of the world, so no plan forgets them);
//! 3. backs each member up from its member snapshot
//!    ([`super::engine::run_member`]): one manifest per member, each naming
//!    the group backup and every member ([`GroupRef`]);
//! 4. removes the member snapshots, catalogues every member at once and
//!    journals the outcome.
//!
//! A failure removes the snapshots and the manifests already written (on an
//! append-only target they stay, and the group reads as incomplete) and
//! catalogues the run as failed for each member. A kill anywhere leaves at
//! worst a held I/O (released by the next run's cut, or the next apply),
//! member snapshots, or some members' manifests: the next run of the group
//! removes the snapshots and the manifests of a group missing a member, and
//! catalogues a complete group the killed run did not. A group is complete
//! only when every member it names has a manifest (checked from the
//! manifests themselves, [`super::catalog::GroupBackup::complete`]), so a
//! group with a missing member is never listed, retained or restored as
//! complete.
//!
//! A restore ([`restore`]) takes a complete group backup and restores every
//! member: into new volumes named `<member><suffix>` (default suffix `-`
//! and the first 8 hex digits of the group backup's id), or with
//! `overwrite` over the members themselves, refused with the holders named
//! when any member is in use, before anything is written.
//!
//! Crash points (`CINDERBLOCK_CRASH_AT`): `group-backup-cut` (after the
//! group snapshot), `group-backup-member` (after the first member's
//! manifest), `group-backup-released` (after the member snapshots are
//! removed, before the catalogue).
//!
//! Must not: print, or take the state lock (the caller holds it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;

use super::catalog::{Catalog, GroupBackup};
use super::engine::{self, MemberSpec, Mode, RunReport};
use super::format::{GroupRef, Manifest, VolumeRef};
use super::job::{self, Found, JobError, Restored};
use super::repo::SessionKind;
use super::target::RepoSpec;
use super::{Progress, Repository};
use crate::driver::{CutMember, Driver, GroupCut, ObjKind, fault};
use crate::manifest::{ManifestSet, Name};
use crate::model::{FREEZE_LIMIT_MS, GROUP_BACKUP_CUT};
use crate::registry::Registry;
use crate::state::journal::{Journal, JournalHolds, Outcome};

static GROUP_RUNS: Mutex<()> = Mutex::new(());

/// Serialises group backups within the process (the agent runs backups on
/// several threads; the members of a group are due together).
pub fn run_lock() -> MutexGuard<'static, ()> {
    GROUP_RUNS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The consistency group whose backups a volume's are: its group, when the
/// group has a `backupPolicy` (a member may only name the same policy).
pub fn group_of(set: &ManifestSet, volume: &Name) -> Option<Name> {
    let g = set.volumes.get(volume)?.spec.consistency_group.as_ref()?;
    set.consistency_groups
        .get(g)
        .and_then(|d| d.spec.backup_policy.as_ref())
        .map(|_| g.clone())
}

/// The member volumes of `group`, by name.
pub fn members_of(set: &ManifestSet, group: &Name) -> Vec<Name> {
    set.volumes
        .iter()
        .filter(|(_, d)| d.spec.consistency_group.as_ref() == Some(group))
        .map(|(n, _)| n.clone())
        .collect()
}

/// What an earlier, killed run of the group left and this run put right.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Member snapshots removed.
    pub snapshots: usize,
    /// Group backups missing a member whose manifests were removed (on an
    /// append-only target: left, and incomplete for good).
    pub partial: Vec<Uuid>,
    /// Complete group backups catalogued.
    pub catalogued: Vec<Uuid>,
}

/// What a group backup did.
#[derive(Debug)]
pub struct GroupRun {
    /// The group backup.
    pub group: GroupRef,
    /// The repository.
    pub repo: Repository,
    /// Each member's run, in member order.
    pub members: Vec<RunReport>,
    /// How long the members' I/O was held (where the back end holds it).
    pub freeze: Option<Duration>,
    /// What an earlier killed run left and this one put right.
    pub recovered: Recovered,
}

/// One group backup of `group` into its policy's repository (see the
/// module docs). The caller holds the state lock.
#[allow(clippy::too_many_arguments, clippy::too_many_lines)] // each piece named; one transaction
pub fn run(
    set: &ManifestSet,
    group: &Name,
    mode: Option<Mode>,
    state: &Path,
    host: &str,
    registry: &Registry<'_>,
    journal: &mut Journal,
    progress: &dyn Progress,
) -> Result<GroupRun, JobError> {
    let doc = set
        .consistency_groups
        .get(group)
        .ok_or_else(|| JobError::NoGroup(group.clone()))?;
    let policy_name = doc
        .spec
        .backup_policy
        .clone()
        .ok_or_else(|| JobError::GroupNoPolicy(group.clone()))?;
    let policy = set
        .backup_policies
        .get(&policy_name)
        .ok_or_else(|| JobError::PolicyMissing(policy_name.clone()))?;
    let members = members_of(set, group);
    if members.is_empty() {
        return Err(JobError::NoMembers(group.clone()));
    }
    let mut found: Vec<Found> = Vec::new();
    for m in &members {
        let vol = set
            .volumes
            .get(m)
            .ok_or_else(|| JobError::NoVolume(m.clone()))?;
        found.push(job::ready_volume(registry, m, &vol.spec)?.0);
    }
    let backends: BTreeSet<&Name> = found.iter().map(|f| &f.backend).collect();
    let [backend] = backends.into_iter().collect::<Vec<_>>()[..] else {
        return Err(JobError::GroupSplit {
            group: group.clone(),
            where_: found
                .iter()
                .map(|f| format!("{} on {}", f.name, f.backend))
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let backend = backend.clone();
    let driver = registry
        .get(backend.as_str())
        .ok_or_else(|| JobError::NoBackend(members[0].clone()))?;
    let (mode, spec, codec) = job::run_settings(&policy.spec, &policy_name, mode, state)?;
    let repo = spec.open_or_init(codec)?;
    let _session = repo.session(SessionKind::Shared, "backup group")?;
    let recovered = recover(&repo, &spec, driver, group, &members, state)?;

    let id = Uuid::new_v4();
    let gref = GroupRef {
        id,
        name: group.to_string(),
        members: members.iter().map(ToString::to_string).collect(),
    };
    let names: Vec<String> = members
        .iter()
        .map(|m| format!("{GROUP_BACKUP_CUT}{id}.{m}"))
        .collect();
    let cut: Vec<CutMember<'_>> = found
        .iter()
        .zip(&names)
        .map(|(f, name)| CutMember {
            volume: f.uuid,
            snapshot: Uuid::new_v4(),
            name,
            space: cow_space(f.size),
        })
        .collect();
    let intent = journal.intent(
        id,
        0,
        &format!(
            "backup group {group} ({id}) on {backend}: {}",
            cut.iter()
                .zip(&members)
                .map(|(c, m)| format!("{m}={}", c.snapshot))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    )?;
    let started_at = Utc::now();
    progress.stage("group snapshot");
    let cut_result = {
        let mut holds = JournalHolds {
            journal: &mut *journal,
            intent: &intent,
        };
        driver.group_snapshot(
            &GroupCut {
                group: group.as_str(),
                members: &cut,
                limit: Duration::from_millis(FREEZE_LIMIT_MS),
            },
            &mut holds,
        )
    };
    let mut reports = Vec::new();
    let result = cut_result.map_err(JobError::from).and_then(|report| {
        fault::named("group-backup-cut");
        if let Some(f) = report.freeze {
            tracing::info!(group = %group, backup = %id, freeze_ms = f.as_millis(), members = cut.len(), "group backup: freeze window");
        }
        for (f, c) in found.iter().zip(&cut) {
            let r = engine::run_member(
                &MemberSpec {
                    id: Uuid::new_v4(),
                    repo: &repo,
                    driver,
                    volume: f.uuid,
                    snapshot: c.snapshot,
                    policy: Some(policy_name.as_str()),
                    mode,
                    codec,
                    host,
                    started_at,
                    group: &gref,
                },
                progress,
            )?;
            reports.push(r);
            fault::named("group-backup-member");
        }
        Ok(report.freeze)
    });
    // The member snapshots go whatever happened; one left behind is
    // removed by the next run of the group.
    let mut left = Vec::new();
    for c in &cut {
        if let Err(e) = driver.delete(c.snapshot) {
            tracing::warn!(snapshot = %c.snapshot, error = %crate::error_chain(&e), "cannot remove a group backup's member snapshot; the next group backup removes it");
            left.push(e);
        }
    }
    fault::named("group-backup-released");
    let _catalog = job::catalog_lock();
    let mut cat = Catalog::load(state)?;
    match result {
        Ok(freeze) => {
            journal.outcome(&intent, Outcome::Changed, None)?;
            for r in &reports {
                cat.add(&r.manifest, &repo, &spec);
                if let Some(e) = cat.backups.get_mut(&r.manifest.id) {
                    e.point_in_time = Some(r.method.as_str().to_owned());
                    e.read = Some(r.read.clone());
                }
            }
            cat.store(state)?;
            Ok(GroupRun {
                group: gref,
                repo,
                members: reports,
                freeze,
                recovered,
            })
        }
        Err(e) => {
            let text = crate::error_chain(&e);
            journal.outcome(&intent, Outcome::Failed, Some(text.clone()))?;
            for r in &reports {
                if let Err(undo) = repo.remove_manifest(&r.manifest) {
                    tracing::warn!(backup = %r.manifest.id, error = %crate::error_chain(&undo), "cannot remove a member's backup of a failed group backup; the group stays incomplete");
                }
            }
            for f in &found {
                let mid = Uuid::new_v4();
                cat.backups.insert(
                    mid,
                    job::failed_entry(
                        mid,
                        &spec,
                        VolumeRef {
                            uuid: f.uuid,
                            name: f.name.clone(),
                            backend: f.backend.to_string(),
                            size: f.size,
                        },
                        (policy_name.as_str(), started_at),
                        text.clone(),
                        Some(gref.clone()),
                    ),
                );
            }
            cat.store(state)?;
            Err(e)
        }
    }
}

/// Copy-on-write space for a member snapshot where the back end reserves
/// one: a quarter of the volume, at least 64 MiB, at most the volume (as a
/// single backup's snapshot).
fn cow_space(size: u64) -> u64 {
    (size / 4).max(64 << 20).min(size.max(4 << 20))
}

/// Puts right what an earlier, killed run of `group` left: its member
/// snapshots on the back end, the manifests of a group backup missing a
/// member (removed), and a complete group backup the run did not live to
/// catalogue (catalogued).
fn recover(
    repo: &Repository,
    spec: &RepoSpec,
    driver: &dyn Driver,
    group: &Name,
    members: &[Name],
    state: &Path,
) -> Result<Recovered, JobError> {
    let mut out = Recovered::default();
    if let crate::model::Discovery::Ok(inv) =
        driver.discover(&Ok(crate::inuse::Holders::default())).1
    {
        for o in inv.objects.iter().filter(|o| {
            o.kind == ObjKind::Snapshot
                && crate::model::is_group_backup_cut(&o.name)
                && members.iter().any(|m| o.name.ends_with(&format!(".{m}")))
        }) {
            tracing::warn!(snapshot = %o.name, uuid = %o.uuid, "removing a member snapshot an interrupted group backup left");
            driver.delete(o.uuid)?;
            out.snapshots += 1;
        }
    }
    let (heads, _) = repo.manifest_heads()?;
    let mut by_group: BTreeMap<Uuid, Vec<&Manifest>> = BTreeMap::new();
    for m in &heads {
        if let Some(g) = m.group.as_ref().filter(|g| g.name == group.as_str()) {
            by_group.entry(g.id).or_default().push(m);
        }
    }
    let _catalog = job::catalog_lock();
    let mut cat = Catalog::load(state)?;
    let mut changed = false;
    for (gid, ms) in by_group {
        let Some(g) = ms.first().and_then(|m| m.group.as_ref()) else {
            continue;
        };
        let complete = g
            .members
            .iter()
            .all(|name| ms.iter().any(|m| &m.volume.name == name));
        if complete {
            if ms.iter().any(|m| !cat.backups.contains_key(&m.id)) {
                for m in &ms {
                    if !cat.backups.contains_key(&m.id) {
                        cat.add(m, repo, spec);
                    }
                }
                out.catalogued.push(gid);
                changed = true;
            }
            continue;
        }
        tracing::warn!(group = %group, backup = %gid, found = ms.len(), members = g.members.len(), "a group backup missing a member (an interrupted run): removing its members' backups");
        if !repo.is_append_only() {
            for m in &ms {
                repo.remove_manifest(m)?;
            }
        }
        for m in &ms {
            changed |= cat.backups.remove(&m.id).is_some();
        }
        out.partial.push(gid);
    }
    if changed {
        cat.store(state)?;
    }
    Ok(out)
}

/// What [`restore`] did.
#[derive(Debug)]
pub struct GroupRestored {
    /// The group backup.
    pub group: GroupRef,
    /// Each member: its backup's manifest, the volume restored into, its
    /// back end, what the restore did.
    pub members: Vec<(Manifest, Name, Name, Restored)>,
}

/// How [`restore`] names and places what it restores.
#[derive(Debug, Clone, Default)]
pub struct GroupTarget {
    /// Over each member itself.
    pub overwrite: bool,
    /// New volumes are named `<member><suffix>` (default `-` and the group
    /// backup id's first 8 hex digits).
    pub suffix: Option<String>,
    /// The back end to restore into (default: each backup's own).
    pub backend: Option<Name>,
}

/// Resolves `text` to a group backup of the catalogue, or says what it is
/// when it is not one (a volume's name, a single backup's id).
pub fn resolve<'c>(cat: &'c Catalog, text: &str) -> Result<GroupBackup<'c>, JobError> {
    match cat.resolve_group(text) {
        Ok(g) => Ok(g),
        Err(super::BackupError::UnknownGroup(_)) => {
            if cat.backups.values().any(|e| e.volume.name == text) {
                return Err(JobError::NotAGroupId {
                    given: text.to_owned(),
                    what: format!("the volume {text}"),
                    hint: format!(
                        "; `backup list {text}` shows its group backups, `backup restore ID --to NAME` restores one backup"
                    ),
                });
            }
            if let Ok(e) = cat.resolve(text) {
                return Err(JobError::NotAGroupId {
                    given: text.to_owned(),
                    what: format!("backup {} of {}", e.id, e.volume.name),
                    hint: e.group.as_ref().map_or_else(
                        || "; restore it with `backup restore ID --to NAME`".to_owned(),
                        |g| format!("; it is a member of group backup {}", g.id),
                    ),
                });
            }
            Err(super::BackupError::UnknownGroup(text.to_owned()).into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Restores every member of the complete group backup `text` (an id or a
/// unique prefix) as `how` says; every refusal that can be known before
/// writing (an incomplete group, a target that exists or is too small, a
/// member in use) comes before the first member is written. Each member's
/// restore is journalled as a single restore's. The caller holds the state
/// lock.
pub fn restore(
    cat: &Catalog,
    text: &str,
    registry: &Registry<'_>,
    how: &GroupTarget,
    journal: &mut Journal,
    progress: &dyn Progress,
) -> Result<GroupRestored, JobError> {
    let g = resolve(cat, text)?;
    let status = g.status();
    if status == "failed" || status == "incomplete" {
        let detail = if status == "failed" {
            g.entries
                .iter()
                .find_map(|e| e.detail.clone())
                .unwrap_or_else(|| "the run failed".into())
        } else {
            format!("no backup of {}", g.missing().join(", "))
        };
        return Err(JobError::GroupIncomplete {
            id: g.group.id,
            group: g.group.name.clone(),
            status,
            detail,
        });
    }
    let group = g.group.clone();
    let short = group.id.simple().to_string()[..8].to_owned();
    let mut work = Vec::new();
    for e in &g.entries {
        let (repo, _, m) = job::locate(cat, &e.id.to_string())?;
        let to_text = if how.overwrite {
            m.volume.name.clone()
        } else {
            format!(
                "{}{}",
                m.volume.name,
                how.suffix.clone().unwrap_or_else(|| format!("-{short}"))
            )
        };
        let to = to_text
            .parse::<Name>()
            .map_err(|why| JobError::MemberName {
                member: m.volume.name.clone(),
                name: to_text.clone(),
                why: why.clone(),
            })?;
        let backend = match &how.backend {
            Some(b) => b.clone(),
            None => m
                .volume
                .backend
                .parse::<Name>()
                .map_err(|why| super::BackupError::Target {
                    name: m.volume.name.clone(),
                    reason: format!("its backup names back end {:?}: {why}", m.volume.backend),
                })?,
        };
        if registry.get(backend.as_str()).is_none() {
            return Err(JobError::UnknownBackend(backend));
        }
        work.push((repo, m, to, backend));
    }
    precheck(&group, &work, registry, how.overwrite)?;
    let mut out = Vec::new();
    for (repo, m, to, backend) in work {
        let done = job::restore(
            &repo,
            &m,
            registry,
            &backend,
            &to,
            how.overwrite,
            journal,
            progress,
        )?;
        out.push((m, to, backend, done));
    }
    Ok(GroupRestored {
        group,
        members: out,
    })
}

/// The refusals of a group restore that can be known before anything is
/// written: a new volume that exists, a member in use or too small.
fn precheck(
    group: &GroupRef,
    work: &[(Repository, Manifest, Name, Name)],
    registry: &Registry<'_>,
    overwrite: bool,
) -> Result<(), JobError> {
    let holders = if overwrite {
        crate::inuse::Holders::scan().map_err(|e| JobError::InUseUnknown(e.to_string()))?
    } else {
        crate::inuse::Holders::default()
    };
    let holders: crate::driver::Holders = Ok(holders);
    let mut held = Vec::new();
    for (_, m, to, backend) in work {
        let existing = job::find_volume(
            registry,
            std::slice::from_ref(backend),
            to.as_str(),
            &holders,
        )?;
        match (existing, overwrite) {
            (Some(obj), false) => {
                return Err(JobError::Exists {
                    to: to.clone(),
                    uuid: obj.uuid,
                    backend: backend.clone(),
                });
            }
            (Some(obj), true) => {
                if let Some(h) = obj.in_use {
                    held.push(format!("{to} is in use by {h}"));
                } else if obj.size < m.volume.size {
                    return Err(JobError::TooSmall {
                        to: to.clone(),
                        have: obj.size,
                        want: m.volume.size,
                    });
                }
            }
            (None, _) => {}
        }
    }
    if held.is_empty() {
        Ok(())
    } else {
        Err(JobError::MembersInUse {
            id: group.id,
            group: group.name.clone(),
            holders: held.join(", "),
        })
    }
}
