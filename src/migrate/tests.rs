//! One migration step between in-memory back ends ([`crate::driver::fake`]):
//! the data arrives, a re-run finds nothing to do, and a target that does
//! not hash like its source is caught before the source goes.

use uuid::Uuid;

use super::{Checkpoints, MigrateError, Move, run};
use crate::copy::{Observer, Position};
use crate::driver::Driver as _;
use crate::driver::fake::{FakeDriver, FakeObject};
use crate::model::{Mark, ObjKind};

const MIB: u64 = 1 << 20;

/// Checkpoints in memory; `claim` pretends an earlier run got this far.
#[derive(Default)]
struct Memory {
    claim: u64,
    resets: usize,
    saved: Vec<u64>,
}

impl Observer for Memory {
    fn progress(&mut self, _: &Position) {}
    fn checkpoint(&mut self, at: &Position) -> Result<(), String> {
        self.saved.push(at.offset);
        Ok(())
    }
}

impl Checkpoints for Memory {
    fn last(&self, _: Uuid) -> Result<u64, MigrateError> {
        Ok(self.claim)
    }
    fn begin(&mut self, _: Uuid) {}
    fn reset(&mut self, _: Uuid) -> Result<(), MigrateError> {
        self.resets += 1;
        self.claim = 0;
        Ok(())
    }
}

fn setup() -> (tempfile::TempDir, FakeDriver, FakeDriver, Uuid, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let a = FakeDriver::new("a", dir.path(), true);
    let b = FakeDriver::new("b", dir.path(), false);
    let uuid = Uuid::from_u128(7);
    let mut data = vec![0u8; 4 * MIB as usize];
    data[MIB as usize..MIB as usize + 10].fill(0x5a);
    data[3 * MIB as usize + 7] = 1;
    a.put(
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
    (dir, a, b, uuid, data)
}

fn mv(uuid: Uuid) -> Move<'static> {
    Move {
        uuid,
        name: "db",
        size: 4 * MIB,
        bandwidth: None,
        snapshots: &[],
    }
}

#[test]
fn the_data_arrives_and_a_rerun_finds_nothing_to_do() {
    let (_dir, a, b, uuid, data) = setup();
    let report = run(&mv(uuid), &a, &b, &mut Memory::default()).unwrap();
    assert!(report.changed);
    let copy = report.copy.unwrap();
    assert!(
        copy.read < 4 * MIB,
        "only the source's data extents are read: {copy:?}"
    );
    assert_eq!(b.data(uuid), data);
    assert!(a.object(uuid).unwrap().is_none());
    let again = run(&mv(uuid), &a, &b, &mut Memory::default()).unwrap();
    assert_eq!((again.changed, again.copy), (false, None));
}

#[test]
fn a_target_that_does_not_hash_like_its_source_keeps_the_source() {
    let (_dir, a, b, uuid, data) = setup();
    // A checkpoint that lies: the thick target's first 2 MiB are garbage.
    let mut cp = Memory {
        claim: 2 * MIB,
        ..Memory::default()
    };
    let err = run(&mv(uuid), &a, &b, &mut cp).unwrap_err();
    assert!(matches!(err, MigrateError::Verify { .. }), "{err}");
    assert!(err.is_retryable(), "the next run copies again");
    assert_eq!(cp.resets, 1, "the checkpoint is reset");
    assert_eq!(a.object(uuid).unwrap().unwrap().mark, Mark::Ready);
    assert_eq!(a.data(uuid), data, "the source is untouched");
    // The next run copies from the start and finishes.
    run(&mv(uuid), &a, &b, &mut cp).unwrap();
    assert_eq!(b.data(uuid), data);
}

#[test]
fn a_volume_in_use_is_refused_for_good() {
    let (_dir, a, b, uuid, _) = setup();
    a.set_in_use(uuid, true);
    let err = run(&mv(uuid), &a, &b, &mut Memory::default()).unwrap_err();
    assert!(err.to_string().contains("is open (in use)"), "{err}");
    assert!(!err.is_retryable());
    assert!(b.object(uuid).unwrap().is_none(), "no target made");
}

#[test]
fn a_copy_stops_before_it_fills_its_targets_pool_and_resumes_once_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let a = FakeDriver::new("a", dir.path(), true);
    // 64 MiB of data into a pool with 40 MiB free.
    let b = FakeDriver::new("b", dir.path(), true).with_pool(40 * MIB);
    let uuid = Uuid::from_u128(9);
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let data: Vec<u8> = (0..64 * MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8 | 1
        })
        .collect();
    let object = FakeObject {
        name: "big".into(),
        kind: ObjKind::Volume,
        size: 64 * MIB,
        mark: Mark::Ready,
        migration: None,
        parent: None,
        in_use: false,
        group: None,
    };
    a.put(uuid, object, &data);
    let big = Move {
        uuid,
        name: "big",
        size: 64 * MIB,
        bandwidth: None,
        snapshots: &[],
    };
    let mut cp = Memory::default();
    let err = run(&big, &a, &b, &mut cp).unwrap_err();
    let text = crate::error_chain(&err);
    assert!(
        text.contains("stopped before filling the fake pool of b: ")
            && text.contains(" free of 40.0 MiB, and a copy leaves 2.0 MiB (5 %, at most 1 GiB) for its other users; ")
            && text.contains(" of the 64.0 MiB this run copies were copied and are kept (the next apply resumes there); give the fake a larger pool, then apply again"),
        "{text}"
    );
    assert!(err.is_retryable(), "{text}");
    // The pool kept its reserve, the source is whole, the progress kept.
    let room = b.room(uuid).unwrap().unwrap();
    assert!(room.free >= 2 * MIB, "{room:?}");
    assert_eq!(a.object(uuid).unwrap().unwrap().mark, Mark::Ready);
    assert_eq!(a.data(uuid), data);
    let kept = *cp.saved.last().expect("the progress is checkpointed");
    assert!((32 * MIB..40 * MIB).contains(&kept), "{kept}");

    // The pool grows: the next run resumes where the copy stopped.
    let b = b.with_pool(256 * MIB);
    cp.claim = kept;
    let report = run(&big, &a, &b, &mut cp).unwrap();
    let copy = report.copy.unwrap();
    assert_eq!(copy.started_at, kept, "{copy:?}");
    assert_eq!(copy.read, 64 * MIB - kept, "{copy:?}");
    assert_eq!(b.data(uuid), data);
    assert!(a.object(uuid).unwrap().is_none(), "the source is gone");
}

// A volume moving with its snapshots (`chain`).

use super::Link;
use crate::driver::fault::{Action, Faulty, Trigger};

const KIB: u64 = 1 << 10;

/// Writes `len` bytes of `byte` at `at` of object `uuid` of `d`, and into
/// `model` (what it must hold).
pub(crate) fn scribble(d: &FakeDriver, uuid: Uuid, model: &mut [u8], at: u64, len: u64, byte: u8) {
    use std::os::unix::fs::FileExt;
    let path = d.data_path(uuid).unwrap().path;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let buf = vec![byte; len as usize];
    f.write_all_at(&buf, at).unwrap();
    model[at as usize..(at + len) as usize].copy_from_slice(&buf);
}

/// On thin `a`: volume 7 (8 MiB) with snapshot s1 (2 MiB of data), then
/// 128 KiB changed and snapshot s2, then 128 KiB more changed. Returns the
/// uuids and what each must hold: (s1, s2, the volume).
fn chain_setup(
    thin_target: bool,
) -> (
    tempfile::TempDir,
    FakeDriver,
    FakeDriver,
    [(Uuid, Vec<u8>); 3],
) {
    let dir = tempfile::tempdir().unwrap();
    let a = FakeDriver::new("a", dir.path(), true);
    let b = FakeDriver::new("b", dir.path(), thin_target);
    let (vol, s1, s2) = (Uuid::from_u128(7), Uuid::from_u128(11), Uuid::from_u128(10));
    let mut data = vec![0u8; 8 * MIB as usize];
    for (i, x) in data[..2 * MIB as usize].iter_mut().enumerate() {
        *x = (i % 251) as u8 | 1;
    }
    a.put(
        vol,
        FakeObject {
            name: "db".into(),
            kind: ObjKind::Volume,
            size: 8 * MIB,
            mark: Mark::Ready,
            migration: None,
            parent: None,
            in_use: false,
            group: None,
        },
        &data,
    );
    let d0 = data.clone();
    a.snapshot(vol, s1, "s1", 0).unwrap();
    scribble(&a, vol, &mut data, MIB, 64 * KIB, 0x44);
    scribble(&a, vol, &mut data, 4 * MIB, 64 * KIB, 0x33);
    let d1 = data.clone();
    a.snapshot(vol, s2, "s2", 0).unwrap();
    scribble(&a, vol, &mut data, 6 * MIB, 128 * KIB, 0x55);
    (dir, a, b, [(s1, d0), (s2, d1), (vol, data)])
}

/// The links as the plan names them: by name, not by age (s2's uuid sorts
/// first too), so the move has to find the order itself.
const LINKS: [Link<'static>; 2] = [
    Link {
        uuid: Uuid::from_u128(10),
        name: "s2",
        size: 8 * MIB,
        space: 8 * MIB,
    },
    Link {
        uuid: Uuid::from_u128(11),
        name: "s1",
        size: 8 * MIB,
        space: 8 * MIB,
    },
];

fn chain_mv() -> Move<'static> {
    Move {
        uuid: Uuid::from_u128(7),
        name: "db",
        size: 8 * MIB,
        bandwidth: None,
        snapshots: &LINKS,
    }
}

/// The chain is on `b` once, ready, each object with its content and the
/// snapshots with their volume; nothing is left on `a`.
fn assert_moved(a: &FakeDriver, b: &FakeDriver, want: &[(Uuid, Vec<u8>); 3], at: &str) {
    assert!(
        a.state().is_empty(),
        "{at}: the source chain is gone: {:?}",
        a.state()
    );
    let on_b = b.state();
    assert_eq!(on_b.len(), 3, "{at}: exactly the chain on b: {on_b:?}");
    let vol = want[2].0;
    for (uuid, data) in want {
        let o = &on_b[uuid];
        assert_eq!(o.mark, Mark::Ready, "{at}: {uuid}");
        assert_eq!(o.migration, None, "{at}: {uuid}");
        assert!(
            b.data(*uuid) == *data,
            "{at}: {} holds its point in time",
            o.name
        );
        if *uuid != vol {
            assert_eq!((o.kind, o.parent), (ObjKind::Snapshot, Some(vol)), "{at}");
        }
    }
    assert_eq!(on_b[&want[0].0].name, "s1", "{at}: names kept");
}

#[test]
fn a_chain_moves_oldest_first_writing_only_what_differs() {
    let (_dir, a, b, want) = chain_setup(true);
    let report = run(&chain_mv(), &a, &b, &mut Memory::default()).unwrap();
    assert!(report.changed);
    assert_eq!(
        report
            .snapshots
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>(),
        ["s1", "s2"],
        "oldest first"
    );
    let copy = report.copy.unwrap();
    // s1's 2 MiB, then s2's and the volume's 128 KiB of changes each.
    assert_eq!(copy.written, 2 * MIB + 256 * KIB, "{copy:?}");
    assert_moved(&a, &b, &want, "one run");
    let again = run(&chain_mv(), &a, &b, &mut Memory::default()).unwrap();
    assert!(!again.changed, "{again:?}");
}

#[test]
fn a_chain_onto_a_thick_target_leaves_no_stale_byte() {
    let (_dir, a, b, want) = chain_setup(false);
    run(&chain_mv(), &a, &b, &mut Memory::default()).unwrap();
    assert_moved(&a, &b, &want, "thick");
}

#[test]
fn a_lying_checkpoint_in_a_chain_is_caught_and_the_next_run_heals() {
    let (_dir, a, b, want) = chain_setup(false);
    // The thick target's first 2 MiB are garbage, not s1's data.
    let mut cp = Memory {
        claim: 2 * MIB,
        ..Memory::default()
    };
    let err = run(&chain_mv(), &a, &b, &mut cp).unwrap_err();
    assert!(matches!(err, MigrateError::Verify { .. }), "{err}");
    assert_eq!(a.state().len(), 3, "the source chain is kept");
    for (uuid, data) in &want {
        assert!(a.data(*uuid) == *data, "source {uuid} untouched");
    }
    run(&chain_mv(), &a, &b, &mut cp).unwrap();
    assert_moved(&a, &b, &want, "healed");
}

#[test]
fn a_chain_stopped_after_any_call_finishes_once() {
    for side in ["source", "target"] {
        for n in 0.. {
            let (_dir, a, b, want) = chain_setup(true);
            let at = format!("{side} call {n}");
            let (fired, first) = if side == "source" {
                let f = Faulty::new(Box::new(a.clone()), Trigger::Call(n), Action::Fail);
                let r = run(&chain_mv(), &f, &b, &mut Memory::default());
                (f.fired(), r)
            } else {
                let f = Faulty::new(Box::new(b.clone()), Trigger::Call(n), Action::Fail);
                let r = run(&chain_mv(), &a, &f, &mut Memory::default());
                (f.fired(), r)
            };
            if !fired {
                first.unwrap_or_else(|e| panic!("{at}: {e}"));
                assert_moved(&a, &b, &want, &at);
                assert!(
                    n > 4,
                    "{side}: the run changes something at least {n} times"
                );
                break;
            }
            assert!(first.is_err(), "{at}: a dead driver fails the run");
            run(&chain_mv(), &a, &b, &mut Memory::default())
                .unwrap_or_else(|e| panic!("{at}: the next run: {e}"));
            assert_moved(&a, &b, &want, &at);
        }
    }
}
