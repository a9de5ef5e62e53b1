//! The executor against in-memory back ends ([`crate::driver::fake`]): plans
//! made by the real planner from real manifests, applied, re-planned; a
//! simulated crash after every driver call that changes something
//! ([`crate::driver::fault`]), then a re-run that must converge to what an
//! uninterrupted run makes; and re-runs that must change nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::{ApplyError, Report, Silent, apply};
use crate::driver::fake::{FakeDriver, FakeObject};
use crate::driver::fault::{Action, Faulty, Trigger};
use crate::driver::{Driver, Op as DriverOp};
use crate::manifest::{ManifestSet, load_source};
use crate::model::{Mark, ObjKind};
use crate::plan::{self, Op, Options, Plan};
use crate::registry::Registry;
use crate::state::record::{Ledger, RecordedObject};

const H: &str = "apiVersion: cinderblock.dev/v1alpha1\n";
const MIB: u64 = 1 << 20;

/// Two fake back ends: `a` thin (a file data path, holes read as zeros),
/// `b` thick (a block data path, new objects full of garbage).
struct Site {
    dir: tempfile::TempDir,
    a: FakeDriver,
    b: FakeDriver,
}

/// A crash (or an injected error): which back end, at which call, what
/// happens there.
#[derive(Debug, Clone, Copy)]
struct Crash {
    backend: &'static str,
    trigger: Trigger,
    action: Action,
}

impl Crash {
    /// A simulated death after `trigger` on `backend`.
    fn at(backend: &'static str, trigger: Trigger) -> Self {
        Crash {
            backend,
            trigger,
            action: Action::Fail,
        }
    }
}

impl Site {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let a = FakeDriver::new("a", dir.path(), true);
        let b = FakeDriver::new("b", dir.path(), false);
        Site { dir, a, b }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn set(docs: &str) -> ManifestSet {
        let text = format!(
            "{H}kind: Backend\nmetadata:\n  name: a\nspec:\n  file:\n    path: /nonexistent/a\n---\n\
             {H}kind: Backend\nmetadata:\n  name: b\nspec:\n  file:\n    path: /nonexistent/b\n---\n{docs}"
        );
        let loaded = load_source(Path::new("site.yaml"), &text);
        assert_eq!(loaded.errors(), 0, "{:?}", loaded.diagnostics);
        loaded.set
    }

    fn registry(&self, crash: Option<Crash>) -> Registry<'static> {
        let wrap = |d: &FakeDriver| -> Box<dyn Driver> {
            match crash {
                Some(c) if c.backend == d.name() => {
                    Box::new(Faulty::new(Box::new(d.clone()), c.trigger, c.action))
                }
                _ => Box::new(d.clone()),
            }
        };
        Registry::from_drivers(vec![wrap(&self.a), wrap(&self.b)])
    }

    fn plan(&self, set: &ManifestSet) -> Plan {
        let ledger = Ledger::load(&self.state()).unwrap();
        let world = crate::observe::discover(set, &self.registry(None), &self.state());
        let p = plan::plan(set, &world, &ledger.recorded, Options::default());
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        p
    }

    /// Discovers, plans and applies; the ledger is read from the state
    /// directory and saved there by the executor, as a process would.
    fn apply(&self, set: &ManifestSet, crash: Option<Crash>) -> Result<Report, ApplyError> {
        let p = self.plan(set);
        let mut ledger = Ledger::load(&self.state()).unwrap();
        self.apply_plan(&p, &mut ledger, crash)
    }

    /// Applies `p` with `ledger`, crashing where `crash` says.
    fn apply_plan(
        &self,
        p: &Plan,
        ledger: &mut Ledger,
        crash: Option<Crash>,
    ) -> Result<Report, ApplyError> {
        apply(p, &self.registry(crash), &self.state(), ledger, &mut Silent)
    }

    /// Everything that is not an identity: per back end, by (kind, name),
    /// the object's size, mark and data; and the recorded objects.
    fn picture(&self) -> Picture {
        let side = |d: &FakeDriver| {
            d.state()
                .into_iter()
                .map(|(u, o)| {
                    let data = blake3::hash(&d.data(u)).to_hex().to_string();
                    ((o.kind, o.name.clone()), (o.size, o.mark, data))
                })
                .collect::<BTreeMap<_, _>>()
        };
        let mut recorded: Vec<_> = Ledger::load(&self.state())
            .unwrap()
            .recorded
            .objects
            .into_values()
            .map(|r| (r.kind, r.name, r.backend, r.size))
            .collect();
        recorded.sort();
        (side(&self.a), side(&self.b), recorded)
    }
}

type Side = BTreeMap<(ObjKind, String), (u64, Mark, String)>;
type Picture = (Side, Side, Vec<(ObjKind, String, String, u64)>);

/// Volume `v1` with a snapshot and a clone of it on `a`, `v2` on `b`.
fn site_docs(v1_size: &str) -> String {
    format!(
        "{H}kind: Volume\nmetadata:\n  name: v1\nspec:\n  size: {v1_size}\n  backend: a\n  deletionPolicy: Delete\n---\n\
         {H}kind: Snapshot\nmetadata:\n  name: s1\nspec:\n  volume: v1\n  deletionPolicy: Delete\n---\n\
         {H}kind: Volume\nmetadata:\n  name: c1\nspec:\n  size: 4Mi\n  backend: a\n  source:\n    snapshot: s1\n---\n\
         {H}kind: Volume\nmetadata:\n  name: v2\nspec:\n  size: 2Mi\n  backend: b\n"
    )
}

#[test]
fn a_plan_applies_and_then_plans_nothing_and_a_rerun_changes_nothing() {
    let site = Site::new();
    let set = Site::set(&site_docs("4Mi"));
    let r = site.apply(&set, None).unwrap();
    assert_eq!((r.added, r.changed, r.destroyed), (4, 0, 0), "{r:?}");
    let after = site.picture();
    assert_eq!(after.0.len(), 3, "v1, s1 and c1 on a: {:?}", after.0.keys());
    assert_eq!(after.1.len(), 1, "v2 on b");
    assert!(site.plan(&set).actions.is_empty());
    // The same plan applied again: every step finds its work done.
    let again = site.apply(&set, None).unwrap();
    assert_eq!(again, Report::default(), "nothing planned, nothing done");
    assert_eq!(site.picture(), after);
}

#[test]
fn every_step_run_again_with_its_identity_changes_nothing() {
    let site = Site::new();
    let set = Site::set(&site_docs("4Mi"));
    let mut p = site.plan(&set);
    let mut ledger = Ledger::load(&site.state()).unwrap();
    let first = site.apply_plan(&p, &mut ledger, None).unwrap();
    assert_eq!(first.added, 4);
    let after = site.picture();
    // The same steps again, each with the identity the first run gave its
    // object (as a run resuming after a crash would): every driver call
    // finds its work done.
    let uuid_of = |kind: ObjKind, name: &str| {
        ledger
            .recorded
            .objects
            .iter()
            .find(|(_, r)| r.kind == kind && r.name == name)
            .map(|(u, _)| *u)
    };
    for a in &mut p.actions {
        if let Op::Create {
            kind,
            name,
            source,
            resume,
            ..
        } = &mut a.op
        {
            *resume = uuid_of(*kind, name);
            if let Some(s) = source {
                s.uuid = uuid_of(s.kind, &s.name);
            }
        }
    }
    let second = site.apply_plan(&p, &mut ledger, None).unwrap();
    assert_eq!(
        second,
        Report {
            unchanged: 4,
            ..Report::default()
        }
    );
    assert_eq!(site.picture(), after);
}

/// For each back end and each of its changing calls: crash right after that
/// call, re-run, and check the result is what an uninterrupted run makes.
fn crash_everywhere(docs_before: Option<&str>, docs: &str, check: impl Fn(&Site)) {
    let expected = {
        let site = Site::new();
        if let Some(before) = docs_before {
            site.apply(&Site::set(before), None).unwrap();
        }
        site.apply(&Site::set(docs), None).unwrap();
        check(&site);
        site.picture()
    };
    let mut crashes = 0;
    for backend in ["a", "b"] {
        for n in 0.. {
            let site = Site::new();
            if let Some(before) = docs_before {
                site.apply(&Site::set(before), None).unwrap();
            }
            let set = Site::set(docs);
            let crash = Crash::at(backend, Trigger::Call(n));
            let first = site.apply(&set, Some(crash));
            let Err(ApplyError::Step { cause, .. }) = first else {
                // Fewer than n + 1 changing calls on this back end: done.
                first.unwrap();
                break;
            };
            assert!(
                crate::error_chain(&cause).contains("injected crash"),
                "{backend} call {n}: {cause}"
            );
            crashes += 1;
            // The next run finishes the job.
            site.apply(&set, None)
                .unwrap_or_else(|e| panic!("after a crash at {backend} call {n}: {e:?}"));
            assert!(
                site.plan(&set).actions.is_empty(),
                "after a crash at {backend} call {n}, the re-run left work"
            );
            check(&site);
            assert_eq!(
                site.picture(),
                expected,
                "after a crash at {backend} call {n}"
            );
        }
    }
    assert!(crashes >= 3, "only {crashes} crash points exercised");
}

#[test]
fn a_crash_after_any_driver_call_of_creates_then_a_rerun_converges() {
    crash_everywhere(None, &site_docs("4Mi"), |site| {
        let (a, b, _) = site.picture();
        assert_eq!(a.len() + b.len(), 4);
        assert!(a.values().chain(b.values()).all(|o| o.1 == Mark::Ready));
    });
}

#[test]
fn a_crash_after_any_driver_call_of_extends_and_deletes_then_a_rerun_converges() {
    let before = format!(
        "{H}kind: Volume\nmetadata:\n  name: v1\nspec:\n  size: 4Mi\n  backend: a\n  deletionPolicy: Delete\n---\n\
         {H}kind: Snapshot\nmetadata:\n  name: s1\nspec:\n  volume: v1\n  deletionPolicy: Delete\n---\n\
         {H}kind: Volume\nmetadata:\n  name: c1\nspec:\n  size: 4Mi\n  backend: a\n  deletionPolicy: Delete\n  source:\n    snapshot: s1\n---\n\
         {H}kind: Volume\nmetadata:\n  name: v2\nspec:\n  size: 2Mi\n  backend: b\n"
    );
    // v1 grows; the snapshot and the clone go.
    let after = format!(
        "{H}kind: Volume\nmetadata:\n  name: v1\nspec:\n  size: 8Mi\n  backend: a\n  deletionPolicy: Delete\n---\n\
         {H}kind: Volume\nmetadata:\n  name: v2\nspec:\n  size: 2Mi\n  backend: b\n"
    );
    crash_everywhere(Some(&before), &after, |site| {
        let (a, _, rec) = site.picture();
        assert_eq!(a[&(ObjKind::Volume, "v1".into())].0, 8 * MIB);
        assert_eq!(a.len(), 1, "{:?}", a.keys());
        assert!(rec.iter().all(|r| r.1 != "s1" && r.1 != "c1"), "{rec:?}");
    });
}

/// A volume of 3 MiB with data at 0 and at 2 MiB on `a`, recorded there.
fn volume_on_a(site: &Site) -> (Uuid, Vec<u8>) {
    let uuid = Uuid::from_u128(0xd0);
    let mut data = vec![0u8; 3 * MIB as usize];
    data[..4096].fill(0x11);
    data[2 * MIB as usize..2 * MIB as usize + 4096].fill(0x22);
    site.a.put(
        uuid,
        FakeObject {
            group: None,
            name: "db".into(),
            kind: ObjKind::Volume,
            size: 4 * MIB,
            mark: Mark::Ready,
            migration: None,
            parent: None,
            in_use: false,
        },
        &data,
    );
    let mut ledger = Ledger::load(&site.state()).unwrap();
    ledger.recorded.objects.insert(
        uuid,
        RecordedObject {
            kind: ObjKind::Volume,
            name: "db".into(),
            backend: "a".into(),
            size: 4 * MIB,
            deletion_policy: crate::manifest::kinds::DeletionPolicy::Retain,
            consistency_group: None,
        },
    );
    std::fs::create_dir_all(site.state()).unwrap();
    ledger.save(&site.state()).unwrap();
    data.resize(4 * MIB as usize, 0);
    (uuid, data)
}

fn db_on(backend: &str) -> String {
    format!(
        "{H}kind: Volume\nmetadata:\n  name: db\nspec:\n  size: 4Mi\n  backend: {backend}\n  deletionPolicy: Retain\n"
    )
}

#[test]
fn a_migration_moves_the_data_onto_a_thick_target_over_garbage() {
    let site = Site::new();
    let (uuid, data) = volume_on_a(&site);
    let set = Site::set(&db_on("b"));
    let p = site.plan(&set);
    assert!(matches!(p.actions[0].op, Op::Migrate { .. }), "{p:?}");
    let r = site.apply(&set, None).unwrap();
    assert_eq!(r.changed, 1);
    assert!(site.a.state().is_empty(), "the source is gone");
    let moved = &site.b.state()[&uuid];
    assert_eq!((moved.mark, moved.migration), (Mark::Ready, None));
    assert_eq!(
        site.b.data(uuid),
        data,
        "the thick target's gaps were zeroed, not left as garbage"
    );
    assert!(site.plan(&set).actions.is_empty());
}

#[test]
fn a_crash_at_any_step_of_a_migration_then_a_rerun_finishes_it() {
    for backend in ["a", "b"] {
        for trigger in [
            Trigger::MigrateTarget,
            Trigger::MigrateVerified,
            Trigger::MigratePromoted,
            Trigger::Call(0),
            Trigger::Call(1),
            Trigger::Call(2),
        ] {
            let site = Site::new();
            let (uuid, data) = volume_on_a(&site);
            let set = Site::set(&db_on("b"));
            let first = site.apply(&set, Some(Crash::at(backend, trigger)));
            site.apply(&set, None)
                .unwrap_or_else(|e| panic!("{backend} {trigger:?}: the re-run failed: {e:?}"));
            assert!(first.is_err() || site.a.state().is_empty());
            assert!(
                site.a.state().is_empty(),
                "{backend} {trigger:?}: the source is gone"
            );
            assert_eq!(
                site.b.data(uuid),
                data,
                "{backend} {trigger:?}: the data arrived whole"
            );
            assert_eq!(site.b.state()[&uuid].mark, Mark::Ready);
            let rec = Ledger::load(&site.state()).unwrap().recorded.objects[&uuid].clone();
            assert_eq!(rec.backend, "b", "{backend} {trigger:?}");
            assert!(site.plan(&set).actions.is_empty(), "{backend} {trigger:?}");
        }
    }
}

#[test]
fn a_refusal_is_a_step_error_that_says_retrying_cannot_help() {
    let site = Site::new();
    let (uuid, _) = volume_on_a(&site);
    site.a.set_in_use(uuid, true);
    let set = Site::set(&db_on("b"));
    // The planner refuses to move a volume in use; a stale plan applied
    // anyway meets the back end's refusal.
    let world = crate::observe::discover(&set, &site.registry(None), &site.state());
    let ledger = Ledger::load(&site.state()).unwrap();
    let p = plan::plan(&set, &world, &ledger.recorded, Options::default());
    assert!(!p.errors.is_empty(), "the planner sees the volume in use");
    site.a.set_in_use(uuid, false);
    let p = site.plan(&set);
    site.a.set_in_use(uuid, true);
    let mut ledger = Ledger::load(&site.state()).unwrap();
    let err = site.apply_plan(&p, &mut ledger, None).unwrap_err();
    let (address, message, retryable) = err.step().unwrap();
    assert_eq!(address, "volume.db");
    assert!(message.contains("is open (in use)"), "{message}");
    assert!(!retryable);
}

/// Every operation a driver offers, for the injected errors.
const OPS: [DriverOp; 11] = [
    DriverOp::Create,
    DriverOp::Snapshot,
    DriverOp::Extend,
    DriverOp::Release,
    DriverOp::Delete,
    DriverOp::SetMark,
    DriverOp::Lookup,
    DriverOp::Open,
    DriverOp::Layout,
    DriverOp::PointInTime,
    DriverOp::CreatePool,
];

/// The data of every object of both back ends, by (back end, kind, name).
fn contents(site: &Site) -> BTreeMap<(String, ObjKind, String), Vec<u8>> {
    let mut out = BTreeMap::new();
    for d in [&site.a, &site.b] {
        for (u, o) in d.state() {
            out.insert((d.name().to_owned(), o.kind, o.name.clone()), d.data(u));
        }
    }
    out
}

/// For each back end, each operation and each of its calls in turn: that
/// call fails with `errno` (a full disk, a failing device) before doing
/// anything. The apply stops there with one clear error that says a retry
/// can help; every object that existed before and is still wanted keeps its
/// data; the next run converges to what an undisturbed run makes.
fn errors_everywhere(docs_before: Option<&str>, docs: &str, errno: nix::errno::Errno) -> usize {
    let fresh = || {
        let site = Site::new();
        if let Some(before) = docs_before {
            site.apply(&Site::set(before), None).unwrap();
        }
        site
    };
    let expected = {
        let site = fresh();
        site.apply(&Site::set(docs), None).unwrap();
        site.picture()
    };
    let wanted = |(backend, kind, name): &(String, ObjKind, String)| {
        let side = if backend == "a" {
            &expected.0
        } else {
            &expected.1
        };
        side.contains_key(&(*kind, name.clone()))
    };
    let words = std::io::Error::from_raw_os_error(errno as i32).to_string();
    let mut faults = 0;
    for backend in ["a", "b"] {
        for op in OPS {
            for n in 0.. {
                let site = fresh();
                let before = contents(&site);
                let set = Site::set(docs);
                let fault = Crash {
                    backend,
                    trigger: Trigger::OpCall(op, n),
                    action: Action::Errno(errno),
                };
                let at = format!("{errno} at {backend} {op:?} call {n}");
                let first = site.apply(&set, Some(fault));
                let Err(err) = first else {
                    // Fewer than n + 1 such calls, or one whose failure
                    // the pipeline may shrug off (a lookup): next.
                    break;
                };
                let Some((_, message, retryable)) = err.step() else {
                    panic!("{at}: not a step error: {err:?}");
                };
                assert!(message.contains(&words), "{at}: {message}");
                assert!(
                    message.contains(&format!("on back end {backend}")),
                    "{at}: {message}"
                );
                assert!(retryable, "{at}: {message}");
                faults += 1;
                let after = contents(&site);
                for (key, data) in before.iter().filter(|(k, _)| wanted(k)) {
                    let now = after
                        .get(key)
                        .unwrap_or_else(|| panic!("{at}: {key:?} is gone"));
                    assert!(now.starts_with(data), "{at}: {key:?} lost data");
                }
                site.apply(&set, None)
                    .unwrap_or_else(|e| panic!("{at}: the next run failed: {e:?}"));
                assert!(site.plan(&set).actions.is_empty(), "{at}: work left");
                assert_eq!(site.picture(), expected, "{at}");
            }
        }
    }
    faults
}

#[test]
fn a_full_disk_or_an_io_error_at_any_driver_call_of_creates_is_clear_and_the_next_run_converges() {
    for errno in [nix::errno::Errno::ENOSPC, nix::errno::Errno::EIO] {
        let faults = errors_everywhere(None, &site_docs("4Mi"), errno);
        // Two creates and a snapshot on `a`, a create on `b`.
        assert!(faults >= 4, "only {faults} faults exercised");
    }
}

#[test]
fn a_full_disk_at_any_driver_call_of_extends_deletes_and_a_migration_keeps_the_data() {
    let before = format!(
        "{}---\n{H}kind: Volume\nmetadata:\n  name: m\nspec:\n  size: 2Mi\n  backend: a\n",
        site_docs("4Mi").replace(
            "  size: 4Mi\n  backend: a\n  source",
            "  size: 4Mi\n  backend: a\n  deletionPolicy: Delete\n  source"
        )
    );
    // v1 grows, the snapshot and the clone go, m moves from a to b.
    let after = format!(
        "{H}kind: Volume\nmetadata:\n  name: v1\nspec:\n  size: 8Mi\n  backend: a\n  deletionPolicy: Delete\n---\n\
         {H}kind: Volume\nmetadata:\n  name: v2\nspec:\n  size: 2Mi\n  backend: b\n---\n\
         {H}kind: Volume\nmetadata:\n  name: m\nspec:\n  size: 2Mi\n  backend: b\n"
    );
    let faults = errors_everywhere(Some(&before), &after, nix::errno::Errno::ENOSPC);
    assert!(faults >= 8, "only {faults} faults exercised");
}

/// Group `g` on `a` with members m1, m2; group snapshot `nightly`; `r`
/// created from m2's member snapshot.
fn group_docs() -> String {
    format!(
        "{H}kind: VolumeType\nmetadata:\n  name: t\nspec: {{}}\n---\n\
         {H}kind: ConsistencyGroup\nmetadata:\n  name: g\nspec:\n  volumeTypes: [t]\n  backend: a\n---\n\
         {H}kind: Volume\nmetadata:\n  name: m1\nspec:\n  size: 2Mi\n  volumeType: t\n  consistencyGroup: g\n---\n\
         {H}kind: Volume\nmetadata:\n  name: m2\nspec:\n  size: 3Mi\n  volumeType: t\n  consistencyGroup: g\n---\n\
         {H}kind: Snapshot\nmetadata:\n  name: nightly\nspec:\n  consistencyGroup: g\n  deletionPolicy: Delete\n---\n\
         {H}kind: Volume\nmetadata:\n  name: r\nspec:\n  size: 3Mi\n  backend: a\n  source:\n    groupSnapshot: nightly\n    member: m2\n"
    )
}

#[test]
fn a_group_snapshot_and_a_volume_from_its_member_converge_after_a_crash_anywhere() {
    crash_everywhere(None, &group_docs(), |site| {
        let (a, _, rec) = site.picture();
        let snaps: Vec<&String> = a
            .keys()
            .filter(|(k, _)| *k == ObjKind::Snapshot)
            .map(|(_, n)| n)
            .collect();
        assert_eq!(snaps, ["nightly.m1", "nightly.m2"], "one per member");
        // r holds m2's data as the member snapshot does.
        assert_eq!(
            a[&(ObjKind::Volume, "r".into())].2,
            a[&(ObjKind::Snapshot, "nightly.m2".into())].2
        );
        assert!(
            rec.iter().any(|r| r.1 == "nightly.m1"),
            "member snapshots recorded: {rec:?}"
        );
    });
}
