//! Fault injection for the crash tests: the crash points, and [`Faulty`], a
//! decorator that stops any driver after a chosen call.
//!
//! `CINDERBLOCK_CRASH_AT`, read once per process, names a point where the
//! process kills itself with SIGKILL, exactly as a power cut or `kill -9`
//! would stop it (unset, each point costs one comparison):
//!
//! | value | where | checked by |
//! | --- | --- | --- |
//! | `STEP:intent`, `STEP:driver`, `STEP:outcome` | around step STEP (from 1) of an apply | [`step`], the executor |
//! | `migrate-target` | after a migration's target is created (or found) | [`Faulty`] |
//! | `migrate-verified` | after a migration's source is marked `deleting` | [`Faulty`] |
//! | `migrate-promoted` | after a migration's target is promoted | [`Faulty`] |
//! | `migrate-copy:N` | once a migration's copy has read N bytes | [`copied`], the migration's copy observer |
//! | `migrate-snapshot:K` | after the K-th (from 1) snapshot of a chain is taken on its migration's target | [`Faulty`] |
//! | `lvm-copy` | between a thick clone's `lvcreate` and its copy, inside one driver call | [`named`], the `lvm` back end |
//! | `rename-catalogued` | inside a rename step, after the backup catalogue and before the back end | [`named`], the executor |
//! | `group-backup-cut`, `group-backup-member`, `group-backup-released` | inside a group backup: after its group snapshot, after the first member's manifest, after the member snapshots are removed | [`named`], `backup::group` |
//!
//! The driver points are [`Faulty`]'s: the registry wraps every driver in
//! one ([`wrap_from_env`]) when the variable names such a point, so they
//! hold for every back end alike.
//!
//! `CINDERBLOCK_FAULT=BACKEND:OP:ERRNO[:N]` injects an error instead: the
//! N-th (from 1; default the first) call of `OP` on back end `BACKEND`
//! fails with `ERRNO` before it does anything, as a full disk or a failing
//! device would make it fail, and the process goes on (later calls run).
//! `OP` is one of `create`, `snapshot`, `extend`, `release`, `delete`,
//! `mark`, `lookup`, `open` (the data path a copy, an export or a backup
//! opens), `layout`, `pit` (a backup's point in time), `pool`; `ERRNO` one
//! of `ENOSPC`, `EIO`, `EDQUOT`, `EROFS`. The fault tests use it to check
//! that each such error is one clear message, leaves every source and
//! backup intact, and that the next run converges. Unit tests use [`Faulty`] directly with
//! [`Action::Fail`] and [`Trigger::Call`]: the chosen call completes, then
//! fails, and so does every call after it, as if the process had died
//! there; the test then runs again without faults and checks that it
//! converges.
//!
//! Must not: be armed by anything but the variable or a test.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use uuid::Uuid;

use super::{
    Adoption, Capabilities, Change, CutReport, DataPath, Discovery, Driver, DriverError, GroupCut,
    Holders, Holds, Layout, Mark, NewMark, NewObject, Object, Op, PitRequest, PointInTime,
};

/// The variable's value, read once.
fn armed() -> Option<&'static str> {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    AT.get_or_init(|| std::env::var("CINDERBLOCK_CRASH_AT").ok())
        .as_deref()
}

fn kill(point: &str) {
    tracing::warn!(point, "CINDERBLOCK_CRASH_AT: killing this process");
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
}

/// The executor's points: dies at `STEP:when` when armed so.
pub fn step(step: u32, when: &str) {
    if let Some(at) = armed()
        && at.split_once(':') == Some((&step.to_string(), when))
    {
        kill(at);
    }
}

/// A point inside a driver call (`lvm-copy`): dies there when armed so.
pub fn named(point: &str) {
    if armed() == Some(point) {
        kill(point);
    }
}

/// A migration's copy has read `bytes`: dies once they reach the armed
/// `migrate-copy:N`.
pub fn copied(bytes: u64) {
    static AFTER: OnceLock<Option<u64>> = OnceLock::new();
    let after = AFTER.get_or_init(|| {
        armed()?
            .strip_prefix("migrate-copy:")
            .and_then(|n| n.parse().ok())
    });
    if after.is_some_and(|n| bytes >= n) {
        kill("migrate-copy");
    }
}

/// A point between driver calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// After a target is created as a migration's (`migrate-target`).
    MigrateTarget,
    /// After an object is marked `deleting` alone (`migrate-verified`).
    MigrateVerified,
    /// After a migration's target is marked ready (`migrate-promoted`).
    MigratePromoted,
    /// After the n-th (from 0) snapshot of a chain is taken on a
    /// migration's target (`migrate-snapshot:K`, K = n + 1).
    MigrateSnapshot(usize),
    /// After the n-th (from 0) call that changes something: create,
    /// snapshot, extend, release, delete, set mark, create pool.
    Call(usize),
    /// At the n-th (from 0) call of one operation, changing or not.
    OpCall(Op, usize),
}

/// What happens at the trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// SIGKILL (the crash tests of the binary).
    Kill,
    /// The call fails, and every later one: a simulated death, for unit
    /// tests that must go on running.
    Fail,
    /// The call fails with this error number before doing anything (a
    /// full disk, a failing device); later calls run as usual.
    Errno(nix::errno::Errno),
}

/// A driver that stops at a [`Trigger`].
pub struct Faulty<'d> {
    inner: Box<dyn Driver + 'd>,
    trigger: Trigger,
    action: Action,
    calls: AtomicUsize,
    op_calls: AtomicUsize,
    chain_snapshots: AtomicUsize,
    dead: AtomicBool,
}

/// `CINDERBLOCK_FAULT`, read once per process.
fn injected() -> Option<&'static str> {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    AT.get_or_init(|| std::env::var("CINDERBLOCK_FAULT").ok())
        .as_deref()
}

/// Parses `BACKEND:OP:ERRNO[:N]` into the back end, the trigger and the
/// action; `None` (and a warning) when it does not parse.
fn parse_fault(text: &str) -> Option<(&str, Trigger, Action)> {
    let mut parts = text.split(':');
    let (backend, op, errno) = (parts.next()?, parts.next()?, parts.next()?);
    let nth = match parts.next() {
        Some(n) => n.parse::<usize>().ok().filter(|n| *n >= 1)? - 1,
        None => 0,
    };
    if parts.next().is_some() {
        return None;
    }
    let op = match op {
        "create" => Op::Create,
        "snapshot" => Op::Snapshot,
        "extend" => Op::Extend,
        "release" => Op::Release,
        "delete" => Op::Delete,
        "mark" => Op::SetMark,
        "lookup" => Op::Lookup,
        "open" => Op::Open,
        "layout" => Op::Layout,
        "pit" => Op::PointInTime,
        "pool" => Op::CreatePool,
        _ => return None,
    };
    let errno = match errno {
        "ENOSPC" => nix::errno::Errno::ENOSPC,
        "EIO" => nix::errno::Errno::EIO,
        "EDQUOT" => nix::errno::Errno::EDQUOT,
        "EROFS" => nix::errno::Errno::EROFS,
        _ => return None,
    };
    Some((backend, Trigger::OpCall(op, nth), Action::Errno(errno)))
}

/// Wraps `driver` in a [`Faulty`] when `CINDERBLOCK_CRASH_AT` names a driver
/// point or `CINDERBLOCK_FAULT` a fault of this back end; else returns it as
/// it is.
pub fn wrap_from_env<'d>(driver: Box<dyn Driver + 'd>) -> Box<dyn Driver + 'd> {
    if let Some(text) = injected() {
        match parse_fault(text) {
            Some((backend, trigger, action)) if backend == driver.name() => {
                return Box::new(Faulty::new(driver, trigger, action));
            }
            Some(_) => {}
            None => tracing::warn!(
                value = text,
                "CINDERBLOCK_FAULT is not BACKEND:OP:ERRNO[:N]; ignored"
            ),
        }
    }
    let trigger = match armed() {
        Some("migrate-target") => Trigger::MigrateTarget,
        Some("migrate-verified") => Trigger::MigrateVerified,
        Some("migrate-promoted") => Trigger::MigratePromoted,
        Some(at) => match at
            .strip_prefix("migrate-snapshot:")
            .and_then(|k| k.parse::<usize>().ok())
            .filter(|k| *k >= 1)
        {
            Some(k) => Trigger::MigrateSnapshot(k - 1),
            None => return driver,
        },
        None => return driver,
    };
    Box::new(Faulty::new(driver, trigger, Action::Kill))
}

impl<'d> Faulty<'d> {
    /// `inner`, stopping at `trigger` with `action`.
    pub fn new(inner: Box<dyn Driver + 'd>, trigger: Trigger, action: Action) -> Self {
        Self {
            inner,
            trigger,
            action,
            calls: AtomicUsize::new(0),
            op_calls: AtomicUsize::new(0),
            chain_snapshots: AtomicUsize::new(0),
            dead: AtomicBool::new(false),
        }
    }

    /// Whether the trigger fired.
    pub fn fired(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Before any call: fails when dead, or with the injected error when
    /// this is the call to fail.
    fn alive(&self, op: Op) -> Result<(), DriverError> {
        if self.fired() {
            return Err(self.crashed(op));
        }
        if let Action::Errno(errno) = self.action
            && self.op_hit(op)
        {
            return Err(DriverError::new(
                self.inner.name(),
                op,
                std::io::Error::from_raw_os_error(errno as i32),
                true,
            ));
        }
        Ok(())
    }

    /// Counts a call of `op`; whether it is the one [`Trigger::OpCall`]
    /// names.
    fn op_hit(&self, op: Op) -> bool {
        match self.trigger {
            Trigger::OpCall(o, n) if o == op => self.op_calls.fetch_add(1, Ordering::SeqCst) == n,
            _ => false,
        }
    }

    fn crashed(&self, op: Op) -> DriverError {
        DriverError::new(self.inner.name(), op, "injected crash", false)
    }

    /// Runs a changing call, then fires when `hit` (given this call's
    /// number) says so.
    fn changing(
        &self,
        op: Op,
        hit: impl FnOnce(usize) -> bool,
        call: impl FnOnce() -> Result<Change, DriverError>,
    ) -> Result<Change, DriverError> {
        self.alive(op)?;
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let out = call()?;
        if hit(n) {
            match self.action {
                Action::Kill => {
                    self.dead.store(true, Ordering::SeqCst);
                    kill(&format!("{:?}", self.trigger));
                }
                Action::Fail => {
                    self.dead.store(true, Ordering::SeqCst);
                    return Err(self.crashed(op));
                }
                // Injected before the call, by `alive`.
                Action::Errno(_) => {}
            }
        }
        Ok(out)
    }

    fn nth(&self, n: usize) -> bool {
        self.trigger == Trigger::Call(n)
    }
}

impl Driver for Faulty<'_> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn discover(&self, holders: &Holders) -> (u64, Discovery) {
        if self.fired() {
            return (1, Discovery::Failed("injected crash".into()));
        }
        self.inner.discover(holders)
    }
    fn create(&self, new: &NewObject<'_>) -> Result<Change, DriverError> {
        let target = matches!(new.mark, NewMark::Migrating { .. });
        self.changing(
            Op::Create,
            |n| self.nth(n) || (target && self.trigger == Trigger::MigrateTarget),
            || self.inner.create(new),
        )
    }
    fn snapshot(
        &self,
        volume: Uuid,
        uuid: Uuid,
        name: &str,
        space: u64,
    ) -> Result<Change, DriverError> {
        self.changing(
            Op::Snapshot,
            |n| self.nth(n),
            || self.inner.snapshot(volume, uuid, name, space),
        )
    }
    fn migration_snapshot(
        &self,
        volume: Uuid,
        uuid: Uuid,
        name: &str,
        space: u64,
    ) -> Result<Change, DriverError> {
        let k = self.chain_snapshots.fetch_add(1, Ordering::SeqCst);
        self.changing(
            Op::Snapshot,
            |n| self.nth(n) || self.trigger == Trigger::MigrateSnapshot(k),
            || self.inner.migration_snapshot(volume, uuid, name, space),
        )
    }
    fn extend(&self, uuid: Uuid, size: u64) -> Result<Change, DriverError> {
        self.changing(
            Op::Extend,
            |n| self.nth(n),
            || self.inner.extend(uuid, size),
        )
    }
    fn release(&self, uuid: Uuid) -> Result<Change, DriverError> {
        self.changing(Op::Release, |n| self.nth(n), || self.inner.release(uuid))
    }
    fn adopt(&self, a: &Adoption<'_>) -> Result<Change, DriverError> {
        self.changing(Op::Adopt, |n| self.nth(n), || self.inner.adopt(a))
    }
    fn rename(&self, uuid: Uuid, name: &str) -> Result<Change, DriverError> {
        self.changing(
            Op::Rename,
            |n| self.nth(n),
            || self.inner.rename(uuid, name),
        )
    }
    fn delete(&self, uuid: Uuid) -> Result<Change, DriverError> {
        self.changing(Op::Delete, |n| self.nth(n), || self.inner.delete(uuid))
    }
    fn set_mark(&self, uuid: Uuid, mark: Mark) -> Result<Change, DriverError> {
        // A promotion is a `ready` mark on a migration's target: look
        // before (only when that is what we wait for).
        let promoting = mark == Mark::Ready
            && self.trigger == Trigger::MigratePromoted
            && self
                .inner
                .object(uuid)?
                .is_some_and(|o| o.mark == Mark::Migrating);
        self.changing(
            Op::SetMark,
            |n| {
                self.nth(n)
                    || promoting
                    || (mark == Mark::Deleting && self.trigger == Trigger::MigrateVerified)
            },
            || self.inner.set_mark(uuid, mark),
        )
    }
    fn set_group(&self, uuid: Uuid, group: Option<&str>) -> Result<Change, DriverError> {
        self.changing(
            Op::SetGroup,
            |n| self.nth(n),
            || self.inner.set_group(uuid, group),
        )
    }
    fn object(&self, uuid: Uuid) -> Result<Option<Object>, DriverError> {
        self.alive(Op::Lookup)?;
        self.inner.object(uuid)
    }
    fn data_path(&self, uuid: Uuid) -> Result<DataPath, DriverError> {
        self.alive(Op::Open)?;
        self.inner.data_path(uuid)
    }
    fn layout(&self, uuid: Uuid) -> Result<Layout, DriverError> {
        self.alive(Op::Layout)?;
        self.inner.layout(uuid)
    }
    fn point_in_time(&self, req: &PitRequest) -> Result<Box<dyn PointInTime + '_>, DriverError> {
        self.alive(Op::PointInTime)?;
        self.inner.point_in_time(req)
    }
    fn room(&self, uuid: Uuid) -> Result<Option<super::Room>, DriverError> {
        self.alive(Op::Lookup)?;
        self.inner.room(uuid)
    }
    fn hand_over(&self, uuid: Uuid, to: &str) -> Result<Change, DriverError> {
        self.changing(
            Op::HandOver,
            |n| self.nth(n),
            || self.inner.hand_over(uuid, to),
        )
    }
    fn group_snapshot(
        &self,
        cut: &GroupCut<'_>,
        holds: &mut dyn Holds,
    ) -> Result<CutReport, DriverError> {
        let mut report = None;
        self.changing(
            Op::GroupSnapshot,
            |n| self.nth(n),
            || {
                let r = self.inner.group_snapshot(cut, holds)?;
                report = Some(r);
                Ok(r.change)
            },
        )?;
        report.ok_or_else(|| self.crashed(Op::GroupSnapshot))
    }
    fn thaw(&self) -> Result<Change, DriverError> {
        self.alive(Op::Thaw)?;
        self.inner.thaw()
    }
    fn create_pool(&self, size: u64, metadata: u64) -> Result<Change, DriverError> {
        self.changing(
            Op::CreatePool,
            |n| self.nth(n),
            || self.inner.create_pool(size, metadata),
        )
    }
}
