//! One migration step between in-memory back ends ([`crate::driver::fake`]):
//! the data arrives, a re-run finds nothing to do, and a target that does
//! not hash like its source is caught before the source goes.

use uuid::Uuid;

use super::{Checkpoints, MigrateError, Move, run};
use crate::copy::{Observer, Position};
use crate::driver::Driver;
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
