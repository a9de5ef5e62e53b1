//! A volume moving with its snapshots (`migrateSnapshots: true`): the chain
//! is rebuilt on the target, oldest snapshot first, and stays a chain there.
//!
//! | step | what | a crash after it leaves | the re-run |
//! | --- | --- | --- | --- |
//! | 1 | target volume created `migrating` at the oldest snapshot's size | source chain ready + target migrating | finds it |
//! | 2 | stage 0: the oldest snapshot copied into it ([`copy::copy`]), hashed against the source snapshot | the same | resumes at the stage's last checkpoint |
//! | 3 | a snapshot of the target taken, marked `migrating` with the same migration id and the source snapshot's uuid and name ([`Driver::migration_snapshot`]) | target volume + snapshot k migrating | skips every stage whose snapshot exists |
//! | 4 | stage k: the target grown to the next snapshot's size if need be, then only the blocks where it differs from that snapshot written ([`copy::delta`]), hashed, snapshotted (3) | the same | resumes stage k at its checkpoint |
//! | 5 | the last stage: the volume itself, hashed | the same | runs it again (it finds nothing to write) |
//! | 6 | every target snapshot hashed against its source (a mismatch removes the target chain: the next run starts again) | the same | verifies again |
//! | 7 | source volume, then its snapshots, marked `deleting` | source deleting + target migrating | finishes 8–9 |
//! | 8 | target snapshots, then the volume, promoted (ready) | source deleting + target ready | finishes 9 |
//! | 9 | source snapshots deleted, then the volume | target chain ready | nothing left |
//!
//! A stage compares the target with the source snapshot it must become and
//! writes only what differs (in [`copy::DELTA_BLOCK`]s), so a thin target
//! shares every unchanged chunk with the snapshot taken before, as the
//! source chain does; a file or thick target gets each snapshot as its
//! back end makes one (a reflink or sparse copy; a copy-on-write snapshot).
//! The target is read, not trusted: once stage 0 is verified, nothing but
//! zeros lies outside the blocks some snapshot of the chain holds data in,
//! so a stage reads both sides only over the previous and the next
//! snapshot's extents, and a stage that failed its verification simply
//! runs again.
//!
//! Snapshots move oldest first by [`Object::created`] (a file's creation
//! time, a thin LV's device id), by name where the back end keeps no such
//! key (thick LVs). Their sizes must not shrink along that order.
//!
//! The source may be another host's chain ([`crate::xhost::remote`]): each
//! snapshot and the volume are then read over their own iSCSI login, and
//! each stage and each target snapshot must also match the hash the source
//! host computed locally ([`Driver::known_hash`]).
//!
//! Must not: remove anything of the source before every snapshot and the
//! volume on the target hashed like its source, or touch snapshots the
//! plan did not name.

use uuid::Uuid;

use super::{Checkpoints, MigrateError, Move, Report, movable, open};
use crate::copy::{self, Extents, Target};
use crate::driver::{Driver, Layout, Mark, NewMark, NewObject, ObjKind, Object, PathKind};

/// One snapshot of a chain that moves with its volume.
#[derive(Debug, Clone, Copy)]
pub struct Link<'a> {
    /// Its identity (kept).
    pub uuid: Uuid,
    /// Its manifest name (kept).
    pub name: &'a str,
    /// Its size on the target (its own, rounded up to the target's extent).
    pub size: u64,
    /// The copy-on-write space it gets where the target reserves one.
    pub space: u64,
}

/// A moved snapshot, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// Its name.
    pub name: String,
    /// Its content hash, equal on both sides.
    pub hash: String,
}

/// The identity of stage `k` of migration `id`: its checkpoints' key.
fn stage_id(id: Uuid, k: usize) -> Uuid {
    let mut h = blake3::Hasher::new();
    h.update(b"cinderblock chain stage\0");
    h.update(id.as_bytes());
    h.update(&(k as u64).to_le_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&h.finalize().as_bytes()[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// Where object `uuid` of `src` (of `len` bytes) holds data.
fn extents(src: &dyn Driver, uuid: Uuid, len: u64) -> Result<Extents, MigrateError> {
    Ok(match src.layout(uuid)? {
        Layout::Seek => {
            let p = src.data_path(uuid)?;
            let f = open(&p.path, false)?;
            Extents::of_file(&f, &p.path, len).map_err(|source| copy_err(src, src, source))?
        }
        Layout::Ranges(r) => Extents::new(r, len),
        Layout::Everything => Extents::all(len),
    })
}

fn copy_err(src: &dyn Driver, dst: &dyn Driver, source: copy::CopyError) -> MigrateError {
    MigrateError::Copy {
        from: src.name().to_owned(),
        to: dst.name().to_owned(),
        source,
    }
}

/// What the whole run copied, summed over its stages.
fn add(total: &mut Option<copy::Stats>, s: copy::Stats) {
    match total {
        None => *total = Some(s),
        Some(t) => {
            t.read += s.read;
            t.written += s.written;
            t.zeroed += s.zeroed;
            t.elapsed += s.elapsed;
            t.source_hash = s.source_hash;
        }
    }
}

struct Chain<'a, 'm> {
    mv: &'a Move<'m>,
    src: &'a dyn Driver,
    dst: &'a dyn Driver,
    id: Uuid,
}

impl Chain<'_, '_> {
    /// Makes the target volume hold object `of`'s content (`len` bytes,
    /// data in `ext`), from `base` (the previous snapshot's extents) or,
    /// for stage 0, from nothing; returns its verified hash.
    fn stage(
        &self,
        k: usize,
        (of, len, size): (Uuid, u64, u64),
        ext: &Extents,
        base: Option<&Extents>,
        cp: &mut dyn Checkpoints,
    ) -> Result<(blake3::Hash, copy::Stats), MigrateError> {
        let (src, dst, uuid) = (self.src, self.dst, self.mv.uuid);
        let now = dst.object(uuid)?.map_or(0, |o| o.size);
        if now > size {
            return Err(MigrateError::State(format!(
                "the chain's target on {} holds {now} bytes, more than the {size} of the next link: its snapshots do not grow oldest first",
                dst.name()
            )));
        }
        if now < size {
            dst.extend(uuid, size)?;
        }
        let sid = stage_id(self.id, k);
        cp.begin(sid);
        let start = cp.last(sid)?;
        let from_data = src.data_path(of)?;
        let to_data = dst.data_path(uuid)?;
        let source = open(&from_data.path, false)?;
        let target = open(&to_data.path, true)?;
        let target_len = crate::blockio::size(&target).map_err(|e| MigrateError::Open {
            path: to_data.path.clone(),
            source: e,
        })?;
        let file_target = to_data.kind == PathKind::File;
        let err = |e| copy_err(src, dst, e);
        // Never fill the target's pool: the copy and the delta ask its room.
        let mut guard = super::Guard {
            checkpoints: cp,
            dst,
            uuid,
        };
        if start > 0 {
            tracing::info!(%uuid, stage = k, offset = start, "resuming a chain stage at its last checkpoint");
        }
        let (stats, read_over) = match base {
            None => {
                let job = copy::Job {
                    source: &source,
                    source_path: &from_data.path,
                    target: &target,
                    target_path: &to_data.path,
                    len,
                    target_len,
                    extents: ext,
                    kind: if dst.capabilities().new_reads_zero {
                        Target::Holes
                    } else {
                        Target::MustZero
                    },
                    start,
                    bandwidth: self.mv.bandwidth,
                    hash_source: true,
                    read_back: false,
                    writeback: file_target,
                };
                (copy::copy(&job, &mut guard).map_err(err)?, ext.clone())
            }
            Some(b) => {
                let over = ext.union(b, len);
                let job = copy::Delta {
                    source: &source,
                    source_path: &from_data.path,
                    target: &target,
                    target_path: &to_data.path,
                    len,
                    extents: &over,
                    start,
                    bandwidth: self.mv.bandwidth,
                };
                (copy::delta(&job, &mut guard).map_err(err)?, over)
            }
        };
        let target_hash = if file_target {
            let own = Extents::of_file(&target, &to_data.path, len).map_err(err)?;
            copy::content_hash(&target, &to_data.path, len, &own).map_err(err)?
        } else {
            copy::content_hash(&target, &to_data.path, len, &read_over).map_err(err)?
        };
        // A source whose own host hashed it (another host's chain) must
        // match that hash too: what crossed the wire is checked against
        // what is there.
        // A resumed stage has no in-line hash of the source: that host's
        // own hash stands for it (no second read over the wire).
        let known = src.known_hash(of)?;
        let source_hash = super::source_hash(stats.source_hash, known.as_deref(), || {
            copy::content_hash(&source, &from_data.path, len, ext).map_err(err)
        })?;
        let mismatch = known.filter(|k| *k != target_hash.to_hex().as_str());
        if source_hash != target_hash || mismatch.is_some() {
            cp.reset(sid)?;
            return Err(MigrateError::Verify {
                from: src.name().to_owned(),
                source_hash: mismatch.unwrap_or_else(|| source_hash.to_hex().to_string()),
                target_hash: target_hash.to_hex().to_string(),
            });
        }
        tracing::info!(%uuid, stage = k, read = stats.read, written = stats.written, "chain stage verified");
        Ok((source_hash, stats))
    }

    /// The hash of target snapshot `l` (its data within `over` unless it is
    /// a file, which says where its data is).
    fn target_hash(
        &self,
        l: &Link<'_>,
        len: u64,
        over: &Extents,
    ) -> Result<blake3::Hash, MigrateError> {
        let p = self.dst.data_path(l.uuid)?;
        let f = open(&p.path, false)?;
        let err = |e| copy_err(self.src, self.dst, e);
        let ext = if p.kind == PathKind::File {
            Extents::of_file(&f, &p.path, len).map_err(err)?
        } else {
            over.clone()
        };
        copy::content_hash(&f, &p.path, len, &ext).map_err(err)
    }
}

/// Marks the source chain `deleting` (the volume first: the point of no
/// return), promotes the target chain, removes the source chain.
fn switch(mv: &Move<'_>, src: &dyn Driver, dst: &dyn Driver) -> Result<(), MigrateError> {
    src.set_mark(mv.uuid, Mark::Deleting)?;
    for l in mv.snapshots {
        if src.object(l.uuid)?.is_some() {
            src.set_mark(l.uuid, Mark::Deleting)?;
        }
    }
    for l in mv.snapshots {
        if dst.object(l.uuid)?.is_none() {
            return Err(MigrateError::State(format!(
                "snapshot {} ({}) of volume {} is not on {}, though the move was verified; its source on {} is kept",
                l.name,
                l.uuid,
                mv.uuid,
                dst.name(),
                src.name()
            )));
        }
        dst.set_mark(l.uuid, Mark::Ready)?;
    }
    dst.set_mark(mv.uuid, Mark::Ready)?;
    for l in mv.snapshots {
        src.delete(l.uuid)?;
    }
    src.delete(mv.uuid)?;
    Ok(())
}

/// Runs (or resumes) the move of `mv` with its snapshots `mv.snapshots`;
/// see the module docs.
#[allow(clippy::too_many_lines)] // the steps of the module docs' table, in order
pub(super) fn run(
    mv: &Move<'_>,
    src: &dyn Driver,
    dst: &dyn Driver,
    cp: &mut dyn Checkpoints,
) -> Result<Report, MigrateError> {
    let uuid = mv.uuid;
    let Some(info) = src.object(uuid)? else {
        // The source went last: the target chain is ready, unless the run
        // stopped between promoting and removing (not reached: the volume
        // goes after its snapshots).
        if dst.object(uuid)?.is_none_or(|o| o.mark != Mark::Ready) {
            return Err(MigrateError::State(format!(
                "volume {uuid} is neither on {} nor, ready, on {}",
                src.name(),
                dst.name()
            )));
        }
        let mut changed = false;
        for l in mv.snapshots {
            if dst
                .object(l.uuid)?
                .is_some_and(|o| o.mark == Mark::Migrating)
            {
                dst.set_mark(l.uuid, Mark::Ready)?;
                changed = true;
            }
            if src.delete(l.uuid)? == crate::model::Change::Changed {
                changed = true;
            }
        }
        return Ok(Report::nothing_to_copy(changed));
    };
    if movable(&info, src, mv.size)? {
        tracing::info!(%uuid, "finishing a verified chain migration");
        switch(mv, src, dst)?;
        return Ok(Report::nothing_to_copy(true));
    }
    // The source chain, oldest first.
    let mut chain: Vec<(&Link<'_>, Object)> = Vec::with_capacity(mv.snapshots.len());
    for l in mv.snapshots {
        match src.object(l.uuid)? {
            Some(o) if o.kind == ObjKind::Snapshot && o.mark == Mark::Ready && !o.in_use => {
                chain.push((l, o));
            }
            Some(o) => {
                return Err(MigrateError::State(format!(
                    "snapshot {} ({}) on {} is a {} {}{}, not a ready snapshot",
                    l.name,
                    l.uuid,
                    src.name(),
                    o.mark.as_str(),
                    o.kind,
                    if o.in_use { " in use" } else { "" }
                )));
            }
            None => {
                return Err(MigrateError::State(format!(
                    "snapshot {} ({}) of volume {uuid} is not on {}",
                    l.name,
                    l.uuid,
                    src.name()
                )));
            }
        }
    }
    chain.sort_by(|a, b| (a.1.created, &a.0.name).cmp(&(b.1.created, &b.0.name)));
    let Some(first) = chain.first() else {
        return Err(MigrateError::State(format!(
            "volume {uuid}: a chain without snapshots"
        )));
    };
    let from = src.name().to_owned();
    let id = match dst.object(uuid)? {
        Some(o) if o.mark == Mark::Migrating => o.migration,
        Some(o) => {
            return Err(MigrateError::State(format!(
                "volume {uuid} exists on {} as a {} {}, not as this migration's target",
                dst.name(),
                o.mark.as_str(),
                o.kind
            )));
        }
        None => {
            dst.create(&NewObject {
                uuid,
                name: mv.name,
                kind: ObjKind::Volume,
                size: first.0.size,
                source: None,
                mark: NewMark::Migrating {
                    id: Uuid::new_v4(),
                    from: &from,
                },
            })?;
            dst.object(uuid)?.and_then(|o| o.migration)
        }
    }
    .ok_or_else(|| {
        MigrateError::State(format!(
            "the target of {uuid} on {} lost its migration mark",
            dst.name()
        ))
    })?;
    let c = Chain { mv, src, dst, id };
    let mut total: Option<copy::Stats> = None;
    let mut started_at = None;
    let mut hashes: Vec<Option<blake3::Hash>> = vec![None; chain.len()];
    let mut exts: Vec<Extents> = Vec::with_capacity(chain.len());
    for (k, (l, o)) in chain.iter().enumerate() {
        let ext = extents(src, l.uuid, o.size)?;
        let done = match dst.object(l.uuid)? {
            Some(t) if t.kind == ObjKind::Snapshot && t.mark == Mark::Migrating => true,
            // A chain snapshot whose copy was cut short (a file's): the
            // stage runs again, then the snapshot is taken again.
            Some(t) if t.kind == ObjKind::Snapshot && t.mark == Mark::Creating => false,
            None => false,
            Some(t) => {
                return Err(MigrateError::State(format!(
                    "snapshot {} ({}) exists on {} as a {} {}, not as part of this migration",
                    l.name,
                    l.uuid,
                    dst.name(),
                    t.mark.as_str(),
                    t.kind
                )));
            }
        };
        if !done {
            let (h, stats) = c.stage(k, (l.uuid, o.size, l.size), &ext, exts.last(), cp)?;
            started_at.get_or_insert(stats.started_at);
            add(&mut total, stats);
            hashes[k] = Some(h);
            dst.migration_snapshot(uuid, l.uuid, l.name, l.space)?;
        }
        exts.push(ext);
    }
    let vol_ext = extents(src, uuid, info.size)?;
    let (vol_hash, stats) = c.stage(
        chain.len(),
        (uuid, info.size, mv.size),
        &vol_ext,
        exts.last(),
        cp,
    )?;
    started_at.get_or_insert(stats.started_at);
    add(&mut total, stats);
    // Every link, hashed on both sides, before anything of the source goes.
    let mut moved = Vec::with_capacity(chain.len());
    for (k, (l, o)) in chain.iter().enumerate() {
        let over = match k.checked_sub(1) {
            Some(j) => exts[k].union(&exts[j], o.size),
            None => exts[k].clone(),
        };
        let theirs = c.target_hash(l, o.size, &over)?;
        // A link of an earlier run: its host's own hash stands for it when
        // it published one (no second read over the wire).
        let published = src.known_hash(l.uuid)?;
        let ours = super::source_hash(hashes[k], published.as_deref(), || {
            let p = src.data_path(l.uuid)?;
            let f = open(&p.path, false)?;
            copy::content_hash(&f, &p.path, o.size, &exts[k]).map_err(|e| copy_err(src, dst, e))
        })?;
        let known = published.filter(|k| *k != theirs.to_hex().as_str());
        if ours != theirs || known.is_some() {
            // The target chain goes, newest first, and the next run builds
            // it again from the start: a stage reads only where the chain
            // holds data, which a target rebuilt from the middle would not
            // keep to.
            for (l2, _) in chain.iter().rev() {
                dst.delete(l2.uuid)?;
            }
            dst.delete(uuid)?;
            return Err(MigrateError::Verify {
                from: src.name().to_owned(),
                source_hash: known.unwrap_or_else(|| ours.to_hex().to_string()),
                target_hash: theirs.to_hex().to_string(),
            });
        }
        moved.push(Moved {
            name: l.name.to_owned(),
            hash: ours.to_hex().to_string(),
        });
    }
    switch(mv, src, dst)?;
    if let (Some(t), Some(s)) = (total.as_mut(), started_at) {
        t.started_at = s;
        t.source_hash = Some(vol_hash);
    }
    Ok(Report {
        changed: true,
        copy: total,
        hash: Some(vol_hash.to_hex().to_string()),
        snapshots: moved,
    })
}
