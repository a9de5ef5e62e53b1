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
//! * Readers of one pool in this process share one metadata snapshot,
//!   counted: the first reserves, the last releases, and a reader joins a
//!   held one only if it was reserved after the reader asked (so it shows the
//!   reader's thin snapshots); otherwise it waits for the release and the
//!   next reservation serves all who waited. Concurrent backups of one
//!   pool's volumes therefore never see `EBUSY` from each other.
//! * A snapshot left held by a crashed run makes the reserve fail (`EBUSY`)
//!   while this process holds none; we then release it and reserve once
//!   more. Releasing someone else's live snapshot is possible in principle,
//!   but only cinderblock reads this pool's metadata (one agent per host,
//!   state lock), so a held one is stale.
//! * Results are byte ranges of the thin device, sorted, adjacent ones merged.
//!   Mappings are only as fresh as the pool's last commit; the kernel commits
//!   before reserving, and callers pass LVs nobody writes (snapshots), so the
//!   answer is exact for them.
//!
//! Processes go through the back end's [`super::cmd::Runner`] only.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Condvar, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::cmd;
use super::driver::{LvmBackend, LvmError};
use super::report::{Lv, LvKind};
use super::thin;

/// A held metadata snapshot of one pool; released on drop by its last
/// user.
struct MetadataSnap<'b, 'r> {
    backend: &'b LvmBackend<'r>,
    pool: String,
}

/// The pools whose metadata snapshot this process holds: `(dev, vg, pool)`
/// → when it was reserved and how many readers use it. The kernel keeps at
/// most one per pool, so concurrent readers of one pool (the agent's
/// backups of several thin volumes at once) share it instead of failing
/// with `EBUSY` or releasing each other's.
type PoolKey = (PathBuf, String, String);

#[derive(Debug)]
struct Held {
    reserved_at: Instant,
    readers: usize,
}

static HELD: LazyLock<Mutex<HashMap<PoolKey, Held>>> = LazyLock::new(Mutex::default);
static RELEASED: Condvar = Condvar::new();

fn held() -> MutexGuard<'static, HashMap<PoolKey, Held>> {
    HELD.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Joins the pool's held metadata snapshot, or reserves one. A reader may
/// only read a metadata snapshot reserved after its thin LVs were made —
/// after `since`, when it asked — so it joins a held one only if that was
/// reserved since; an older one it waits out (its readers finish in the
/// time of a `thin_dump`), and the next reservation serves every reader
/// that waited. `reserve` runs under the registry's lock, so one reserve
/// per pool is ever in flight.
fn join_or_reserve<E>(
    key: &PoolKey,
    since: Instant,
    reserve: impl FnOnce() -> Result<(), E>,
) -> Result<(), E> {
    let mut map = held();
    loop {
        match map.get_mut(key) {
            Some(h) if h.reserved_at >= since => {
                h.readers += 1;
                return Ok(());
            }
            Some(_) => {
                map = RELEASED.wait(map).unwrap_or_else(PoisonError::into_inner);
            }
            None => {
                let at = Instant::now();
                reserve()?;
                map.insert(
                    key.clone(),
                    Held {
                        reserved_at: at,
                        readers: 1,
                    },
                );
                return Ok(());
            }
        }
    }
}

/// Leaves the pool's metadata snapshot; the last reader runs `release`.
fn leave(key: &PoolKey, release: impl FnOnce()) {
    let mut map = held();
    let last = match map.get_mut(key) {
        Some(h) => {
            h.readers = h.readers.saturating_sub(1);
            h.readers == 0
        }
        None => false,
    };
    if last {
        release();
        map.remove(key);
        RELEASED.notify_all();
    }
}

impl<'b, 'r> MetadataSnap<'b, 'r> {
    fn key(backend: &LvmBackend<'_>, pool: &str) -> PoolKey {
        (backend.dev.clone(), backend.vg.clone(), pool.to_owned())
    }

    /// Joins or reserves the pool's metadata snapshot ([`join_or_reserve`]);
    /// a reserve the kernel refuses while this process holds none means a
    /// stale one left by a crashed run: it is released and the reserve
    /// retried once.
    fn reserve(backend: &'b LvmBackend<'r>, pool: &str) -> Result<Self, LvmError> {
        let since = Instant::now();
        join_or_reserve(&Self::key(backend, pool), since, || {
            Self::reserve_now(backend, pool)
        })?;
        Ok(MetadataSnap {
            backend,
            pool: pool.to_owned(),
        })
    }

    fn reserve_now(backend: &LvmBackend<'_>, pool: &str) -> Result<(), LvmError> {
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
        Ok(())
    }
}

impl Drop for MetadataSnap<'_, '_> {
    fn drop(&mut self) {
        let key = Self::key(self.backend, &self.pool);
        leave(&key, || {
            let target = format!("{}/{}", self.backend.vg, self.pool);
            if let Err(e) = self.backend.exec(
                "release the metadata snapshot of",
                target.clone(),
                &cmd::release_metadata_snap(&self.backend.vg, &self.pool),
            ) {
                // The next reserve releases it (see the module docs).
                tracing::warn!(pool = %target, error = %cmd::chain(&e), "metadata snapshot not released");
            }
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    /// Eight readers of one pool at once against a kernel that refuses a
    /// second reserve (`EBUSY`): none fails, none reads without a held
    /// snapshot, none reads one reserved before it asked, and the last one
    /// out releases.
    #[test]
    fn concurrent_readers_of_one_pool_share_one_reservation() {
        let key: PoolKey = (
            PathBuf::from(format!("/test/{}", std::process::id())),
            "vg".into(),
            "pool".into(),
        );
        let kernel_held = AtomicBool::new(false);
        let reserves = AtomicUsize::new(0);
        let reserved_at = Mutex::new(None::<Instant>);
        std::thread::scope(|s| {
            for i in 0..8u64 {
                let (key, kernel_held, reserves, reserved_at) =
                    (&key, &kernel_held, &reserves, &reserved_at);
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(3 * i));
                    let since = Instant::now();
                    join_or_reserve(key, since, || {
                        if kernel_held.swap(true, Ordering::SeqCst) {
                            return Err("EBUSY");
                        }
                        reserves.fetch_add(1, Ordering::SeqCst);
                        *reserved_at.lock().unwrap() = Some(Instant::now());
                        Ok(())
                    })
                    .unwrap();
                    assert!(
                        kernel_held.load(Ordering::SeqCst),
                        "reading a held snapshot"
                    );
                    let at = reserved_at.lock().unwrap().unwrap();
                    assert!(at >= since, "a snapshot reserved after the reader asked");
                    std::thread::sleep(Duration::from_millis(20)); // thin_dump
                    leave(key, || kernel_held.store(false, Ordering::SeqCst));
                });
            }
        });
        assert!(!kernel_held.load(Ordering::SeqCst), "released at the end");
        let n = reserves.load(Ordering::SeqCst);
        assert!(
            (1..8).contains(&n),
            "shared: {n} reservations for 8 readers"
        );
        assert!(held().get(&key).is_none());
    }
}
