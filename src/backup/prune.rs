//! Prune: forget the backups retention does not keep, then remove the
//! chunks nothing references any more.
//!
//! Runs under the repository's exclusive session (no backup, restore or
//! verify anywhere meanwhile). Order, each step safe to interrupt:
//! 1. remove the forgotten manifests;
//! 2. read every remaining manifest — if any cannot be read, stop here:
//!    sweeping with a partial view would delete chunks a live backup needs
//!    (Argo CD's "failed listing read as empty" lesson);
//! 3. classify each pack (those in the index and any orphan left by a
//!    crashed writer): all blobs referenced → kept; none → deleted; some →
//!    its referenced blobs are checked (decoded and hashed) and copied into
//!    new packs, a duplicate of a blob kept elsewhere counting as
//!    unreferenced;
//! 4. write one consolidated index file, then remove the old index files,
//!    then the obsolete packs. A crash before the last step leaves extra
//!    packs that the next prune removes; nothing referenced is ever gone.
//!
//! `--dry-run` runs the same classification and reports, writing nothing.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use uuid::Uuid;

use super::format::{self, Digest, Manifest, VolumeRef};
use super::repo::SessionKind;
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
    out.volumes
        .sort_by(|a, b| (&a.volume.name, a.volume.uuid).cmp(&(&b.volume.name, b.volume.uuid)));
    out
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
    /// Blobs dropped (unreferenced or duplicate).
    pub blobs_removed: u64,
    /// Bytes freed in packs (before the new packs' size is subtracted).
    pub bytes_freed: u64,
    /// Corrupt blobs found while repacking (dropped: `verify` reports them
    /// as missing from now on).
    pub corrupt: u64,
}

/// Carries out `plan` on `repo` (or only measures it, with `dry_run`).
// The steps above, in order; splitting them would scatter the crash-order
// argument.
#[allow(clippy::too_many_lines)]
pub fn execute(
    repo: &Repository,
    plan: &PrunePlan,
    dry_run: bool,
) -> Result<PruneReport, BackupError> {
    let _session = repo.session(SessionKind::Exclusive, "backup prune")?;
    let mut report = PruneReport {
        forgotten: plan.forget.len(),
        ..PruneReport::default()
    };
    let forget: HashSet<Uuid> = plan.forget.iter().map(|m| m.id).collect();
    if !dry_run {
        remove_manifests(repo, plan)?;
    }
    let (manifests, bad) = repo.manifests()?;
    if let Some(first) = bad.into_iter().next() {
        // Never sweep on a partial view.
        return Err(first);
    }
    let mut referenced: HashSet<Digest> = HashSet::new();
    for m in manifests.iter().filter(|m| !forget.contains(&m.id)) {
        referenced.extend(format::decode_table(m)?.into_iter().map(|(_, id)| id));
    }
    let index = repo.load_index()?;
    let mut packs: BTreeMap<Digest, Vec<format::BlobEntry>> = BTreeMap::new();
    for (id, len) in repo.scan_packs()? {
        match repo.read_trailer(&id, len) {
            Ok(entries) => {
                packs.insert(id, entries);
            }
            Err(e) => {
                // A torn pack from a crashed writer is renamed into place only
                // after fsync, so this is damage: keep it for `verify` to
                // report, and say so.
                tracing::warn!(pack = %id, error = %e, "unreadable pack left alone");
            }
        }
    }
    report.packs = packs.len();
    let mut kept: HashSet<Digest> = HashSet::new();
    let mut keep_packs: Vec<(Digest, Vec<format::BlobEntry>)> = Vec::new();
    let mut delete: Vec<Digest> = Vec::new();
    let mut repack: Vec<(Digest, Vec<(u64, format::BlobEntry)>)> = Vec::new();
    for (id, entries) in &packs {
        let mut offset = 0u64;
        let mut live = Vec::new();
        let mut dead = 0u64;
        let mut dead_bytes = 0u64;
        for e in entries {
            if referenced.contains(&e.id) && kept.insert(e.id) {
                live.push((offset, *e));
            } else {
                dead += 1;
                dead_bytes += u64::from(e.stored_len);
            }
            offset += u64::from(e.stored_len);
        }
        report.blobs_removed += dead;
        if dead == 0 {
            keep_packs.push((*id, entries.clone()));
        } else if live.is_empty() {
            report.packs_deleted += 1;
            report.bytes_freed += offset;
            delete.push(*id);
        } else {
            report.packs_repacked += 1;
            report.bytes_freed += dead_bytes;
            delete.push(*id);
            repack.push((*id, live));
        }
    }
    if dry_run {
        return Ok(report);
    }
    let mut writer = repo.pack_writer();
    let mut buf = Vec::new();
    let mut codecs = format::Codecs::default();
    for (pack, live) in &repack {
        let span = live.first().map_or(0, |(o, _)| *o)
            ..live.last().map_or(0, |(o, e)| o + u64::from(e.stored_len));
        let reader = repo.open_pack(pack, span)?;
        for (offset, e) in live {
            buf.resize(e.stored_len as usize, 0);
            let good = reader.read_at(&mut buf, *offset)
                && repo
                    .decode_blob(&mut codecs, &e.id, e.codec, e.raw_len, &buf)
                    .is_some();
            if !good {
                tracing::warn!(chunk = %e.id, pack = %pack, "corrupt chunk dropped while repacking");
                report.corrupt += 1;
                continue;
            }
            if let Err(err) = writer.add(e.id, e.codec, e.raw_len, &buf) {
                writer.abandon();
                return Err(err);
            }
        }
    }
    if let Err(err) = writer.finish() {
        writer.abandon();
        return Err(err);
    }
    report.packs_written = writer.sealed.len();
    keep_packs.append(&mut writer.sealed);
    let new_index = repo.write_index(&keep_packs)?;
    for old in index.files.iter().filter(|f| **f != new_index) {
        repo.remove_index(old)?;
    }
    for id in &delete {
        repo.remove_pack(id)?;
    }
    let _ = repo.clean_tmp(Duration::from_secs(24 * 3600));
    tracing::info!(?report, "pruned");
    Ok(report)
}
