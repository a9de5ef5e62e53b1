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
    };
    a.put(uuid, object, &data);
    let big = Move {
        uuid,
        name: "big",
        size: 64 * MIB,
        bandwidth: None,
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
