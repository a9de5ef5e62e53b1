//! Which bytes of a live thin LV are mapped, and which differ between two thin
//! LVs of one pool: the metadata-snapshot dance around `thin_dump` and
//! `thin_delta` ([`super::thin`] parses their XML).
//!
//! On a live pool the tools may only read a *metadata snapshot*:
//!
//! ```text
//! dmsetup message <vg>-<pool>-tpool 0 reserve_metadata_snap
//! thin_dump -m /dev/mapper/<vg>-<pool>_tmeta            (or thin_delta -m --snap1 A --snap2 B ...)
//! dmsetup message <vg>-<pool>-tpool 0 release_metadata_snap
//! ```
//!
//! Invariants:
//! * The release always runs once the reserve succeeded (`MetadataSnap` is a
//!   guard that releases on drop), whatever the reader did: the kernel holds at
//!   most one metadata snapshot per pool, and a held one also pins metadata
//!   blocks.
//! * A snapshot left held by a crashed run makes the reserve fail (`EBUSY`);
//!   we then release it and reserve once more. Releasing someone else's live
//!   snapshot is possible in principle, but only cinderblock reads this pool's
//!   metadata (one agent per host, state lock), so a held one is stale.
//! * Results are byte ranges of the thin device, sorted, adjacent ones merged.
//!   Mappings are only as fresh as the pool's last commit; the kernel commits
//!   before reserving, and callers pass LVs nobody writes (snapshots), so the
//!   answer is exact for them.
//!
//! Processes go through the back end's [`super::cmd::Runner`] only.

use std::ops::Range;
use std::path::PathBuf;

use super::cmd;
use super::driver::{LvmBackend, LvmError};
use super::report::{Lv, LvKind};
use super::thin;

/// A held metadata snapshot of one pool; released on drop.
struct MetadataSnap<'b, 'r> {
    backend: &'b LvmBackend<'r>,
    pool: String,
}

impl<'b, 'r> MetadataSnap<'b, 'r> {
    /// Reserves the pool's metadata snapshot, releasing a stale one first
    /// when the reserve is refused.
    fn reserve(backend: &'b LvmBackend<'r>, pool: &str) -> Result<Self, LvmError> {
        let target = format!("{}/{pool}", backend.vg);
        let reserve = cmd::reserve_metadata_snap(&backend.vg, pool);
        if let Err(first) = backend.exec("reserve a metadata snapshot of", target.clone(), &reserve)
        {
            tracing::warn!(pool = %target, "metadata snapshot reserve refused; releasing a stale one and retrying");
            if backend
                .exec(
                    "release the metadata snapshot of",
                    target.clone(),
                    &cmd::release_metadata_snap(&backend.vg, pool),
                )
                .is_err()
            {
                // Nothing was held: the first error is the real one.
                return Err(first);
            }
            backend.exec("reserve a metadata snapshot of", target, &reserve)?;
        }
        Ok(MetadataSnap {
            backend,
            pool: pool.to_owned(),
        })
    }
}

impl Drop for MetadataSnap<'_, '_> {
    fn drop(&mut self) {
        let target = format!("{}/{}", self.backend.vg, self.pool);
        if let Err(e) = self.backend.exec(
            "release the metadata snapshot of",
            target.clone(),
            &cmd::release_metadata_snap(&self.backend.vg, &self.pool),
        ) {
            // The next reserve releases it (see the module docs).
            tracing::warn!(pool = %target, error = %cmd::chain(&e), "metadata snapshot not released");
        }
    }
}

impl LvmBackend<'_> {
    /// `/dev/mapper/<vg>-<pool>_tmeta`, the pool's metadata device.
    fn tmeta(&self, pool: &str) -> PathBuf {
        self.dev
            .join("mapper")
            .join(format!("{}_tmeta", cmd::dm_name(&self.vg, pool)))
    }

    /// The thin LV `name`, its pool and thin id.
    fn thin_lv(&self, lvs: &[Lv], name: &str) -> Result<(String, u32), LvmError> {
        let lv = lvs
            .iter()
            .find(|l| l.name == name)
            .ok_or_else(|| self.refused(name, "no such LV".into()))?;
        match (lv.attr.kind, &lv.pool, lv.thin_id) {
            (LvKind::Thin, Some(pool), Some(id)) => Ok((pool.clone(), id)),
            _ => Err(self.refused(
                name,
                format!(
                    "is not a thin LV with a pool and a thin id (lv_attr {})",
                    lv.attr.raw
                ),
            )),
        }
    }

    fn xml_err(&self, pool: &str) -> impl FnOnce(thin::ThinXmlError) -> LvmError {
        let (vg, pool) = (self.vg.clone(), pool.to_owned());
        move |source| LvmError::ThinXml {
            vg,
            pool,
            source: Box::new(source),
        }
    }

    /// Runs `c` while the pool's metadata snapshot is held; its stdout.
    fn read_metadata(
        &self,
        pool: &str,
        op: &'static str,
        c: &crate::exec::Cmd,
    ) -> Result<Vec<u8>, LvmError> {
        let _held = MetadataSnap::reserve(self, pool)?;
        self.run
            .run(c)
            .map(|o| o.stdout)
            .map_err(|source| LvmError::Command {
                op,
                target: format!("{}/{pool}", self.vg),
                source: Box::new(source),
            })
    }

    /// Byte ranges of thin LV `lv` that are mapped (allocated) in its pool,
    /// sorted and merged. Everything else reads as zeroes.
    pub fn thin_mapped_ranges(&self, lv: &str) -> Result<Vec<Range<u64>>, LvmError> {
        let lvs = self.lvs()?;
        let (pool, id) = self.thin_lv(&lvs, lv)?;
        let xml = self.read_metadata(
            &pool,
            "dump the metadata of",
            &cmd::thin_dump(&self.tmeta(&pool)),
        )?;
        let dump = thin::parse_dump(&xml).map_err(self.xml_err(&pool))?;
        let block = dump.block_bytes();
        let Some(dev) = dump.device(id) else {
            return Err(self.refused(
                lv,
                format!("thin id {id} is not in the metadata of pool {pool}"),
            ));
        };
        Ok(merge(dev.mapped_ranges().iter().map(|r| r.bytes(block))))
    }

    /// Byte ranges where thin LV `new_lv` differs from `base_lv` (written,
    /// rewritten or discarded since), both in one pool; sorted and merged.
    pub fn thin_changed_ranges(
        &self,
        base_lv: &str,
        new_lv: &str,
    ) -> Result<Vec<Range<u64>>, LvmError> {
        let lvs = self.lvs()?;
        let (pool, base) = self.thin_lv(&lvs, base_lv)?;
        let (new_pool, new) = self.thin_lv(&lvs, new_lv)?;
        if pool != new_pool {
            return Err(self.refused(
                new_lv,
                format!(
                    "is in thin pool {new_pool}, {base_lv} in {pool}: thin_delta compares one pool"
                ),
            ));
        }
        let xml = self.read_metadata(
            &pool,
            "compare thin devices in",
            &cmd::thin_delta(&self.tmeta(&pool), base, new),
        )?;
        let delta = thin::parse_delta(&xml).map_err(self.xml_err(&pool))?;
        let block = delta.block_bytes();
        Ok(merge(delta.changed().map(|r| r.bytes(block))))
    }
}

/// Sorts ranges and merges overlapping or adjacent ones; empty ones go.
pub fn merge(ranges: impl IntoIterator<Item = Range<u64>>) -> Vec<Range<u64>> {
    let mut v: Vec<Range<u64>> = ranges.into_iter().filter(|r| r.start < r.end).collect();
    v.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}
