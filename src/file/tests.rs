//! Tests of the `file` back end on real files in temp dirs (the host's /tmp:
//! ext4 here, so the sparse-copy path; a reflinking filesystem takes the other).

use super::*;
use std::hash::Hasher;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::MetadataExt;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn backend() -> (tempfile::TempDir, FileBackend) {
    let dir = tempfile::tempdir().unwrap();
    let be = FileBackend::new(dir.path(), "local");
    (dir, be)
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn volume(uuid: Uuid, name: &str, size: u64, allocation: Allocation) -> NewObject<'_> {
    NewObject {
        uuid,
        name,
        kind: ObjKind::Volume,
        size,
        allocation,
        source: None,
    }
}

/// A checksum of what a reader sees: the length plus every non-zero 4 KiB
/// block with its offset. Zero blocks (holes or written zeros) read the same
/// either way, so they are skipped; walking `SEEK_DATA` keeps a 1 GiB sparse
/// file cheap to check in a debug build.
fn checksum(path: &Path) -> u64 {
    use nix::unistd::{Whence, lseek};
    let file = File::open(path).unwrap();
    let len = file.metadata().unwrap().len();
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write_u64(len);
    let mut offset = 0i64;
    let mut block = vec![0u8; 4096];
    loop {
        let start = match lseek(file.as_fd(), offset, Whence::SeekData) {
            Ok(start) => start,
            Err(Errno::ENXIO) => return hasher.finish(),
            Err(e) => panic!("{e}"),
        };
        let end = lseek(file.as_fd(), start, Whence::SeekHole).unwrap();
        let mut pos = start - start % 4096;
        while pos < end {
            let n = file.read_at(&mut block, pos as u64).unwrap();
            if block[..n].iter().any(|&b| b != 0) {
                hasher.write_i64(pos);
                hasher.write(&block[..n]);
            }
            pos += 4096;
        }
        offset = end;
    }
}

fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

/// Writes non-zero, non-repeating data at `offset`.
fn scribble(path: &Path, offset: u64, len: u64, seed: u64) {
    let mut x = seed | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) | 1
        })
        .collect();
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&data, offset).unwrap();
}

#[test]
fn sparse_create_allocates_nothing_and_is_idempotent() {
    let (_dir, be) = backend();
    let created = be
        .create(&volume(id(1), "db", GIB, Allocation::Sparse))
        .unwrap();
    assert_eq!(created.change, Change::Changed);
    let path = be.data_path(ObjKind::Volume, id(1));
    assert_eq!(
        path.file_name().unwrap(),
        "volume-00000000-0000-0000-0000-000000000001"
    );
    assert_eq!(fs::metadata(&path).unwrap().len(), GIB);
    assert_eq!(allocated(&path), 0);

    let again = be
        .create(&volume(id(1), "db", GIB, Allocation::Sparse))
        .unwrap();
    assert_eq!(again.change, Change::Unchanged);

    let inv = be.discover().unwrap();
    assert_eq!(inv.objects.len(), 1);
    let obj = &inv.objects[0];
    assert_eq!(obj.health, Health::Ready);
    assert_eq!(obj.meta.name, "db");
    assert_eq!(obj.meta.owner.backend, "local");
    let file = std::fs::metadata(be.data_path(ObjKind::Volume, id(1))).unwrap();
    assert_eq!(
        obj.data,
        Some(DataStat {
            len: GIB,
            allocated: 0,
            id: (file.dev(), file.ino()),
        })
    );
    assert_eq!(inv.capacity.provisioned, GIB);
    assert!(inv.capacity.total > 0 && inv.capacity.block_size > 0);
    assert!(inv.capacity.available <= inv.capacity.free);
    assert!(inv.foreign.is_empty() && inv.is_complete());
}

#[test]
fn preallocated_create_reserves_every_block() {
    let (_dir, be) = backend();
    be.create(&volume(id(1), "db", 256 * MIB, Allocation::Preallocated))
        .unwrap();
    let path = be.data_path(ObjKind::Volume, id(1));
    assert_eq!(fs::metadata(&path).unwrap().len(), 256 * MIB);
    assert!(allocated(&path) >= 256 * MIB, "{}", allocated(&path));
    // Reads as zeros.
    let mut head = vec![1u8; 4096];
    File::open(&path).unwrap().read_exact(&mut head).unwrap();
    assert!(head.iter().all(|&b| b == 0));
}

#[test]
fn zero_fill_fallback_writes_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let file = File::create(&path).unwrap();
    write_zeros(&file, &path, MIB, 20 * MIB).unwrap();
    assert_eq!(file.metadata().unwrap().len(), 20 * MIB);
    assert!(allocated(&path) >= 19 * MIB);
}

#[test]
fn extend_preserves_data_and_refuses_to_shrink() {
    for allocation in [Allocation::Sparse, Allocation::Preallocated] {
        let (_dir, be) = backend();
        be.create(&volume(id(7), "web", 64 * MIB, allocation))
            .unwrap();
        let path = be.data_path(ObjKind::Volume, id(7));
        scribble(&path, 0, MIB, 1);
        scribble(&path, 63 * MIB, MIB, 2);
        let before = checksum(&path);

        assert_eq!(
            be.extend(id(7), 128 * MIB, allocation).unwrap(),
            Change::Changed
        );
        assert_eq!(fs::metadata(&path).unwrap().len(), 128 * MIB);
        // Same bytes as before, plus zeros: the checksum of the old length
        // recomputed on a copy truncated back to it.
        let probe = path.with_extension("probe");
        fs::copy(&path, &probe).unwrap();
        File::options()
            .write(true)
            .open(&probe)
            .unwrap()
            .set_len(64 * MIB)
            .unwrap();
        assert_eq!(checksum(&probe), before, "{allocation:?}: data kept");
        fs::remove_file(&probe).unwrap();
        match allocation {
            Allocation::Sparse => assert!(allocated(&path) <= 3 * MIB),
            Allocation::Preallocated => assert!(allocated(&path) >= 128 * MIB),
        }
        assert_eq!(
            be.extend(id(7), 128 * MIB, allocation).unwrap(),
            Change::Unchanged
        );

        let after = checksum(&path);
        let err = be.extend(id(7), 64 * MIB, allocation).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "refusing to shrink web ({}) from 134217728 to 67108864 bytes",
                id(7)
            )
        );
        assert_eq!(fs::metadata(&path).unwrap().len(), 128 * MIB);
        assert_eq!(checksum(&path), after, "nothing changed");
        assert_eq!(be.get(id(7)).unwrap().unwrap().size, 128 * MIB);
    }
}

/// "A 100 GiB volume holding 4 GiB copies 4 GiB", scaled down: a 1 GiB sparse
/// volume with 6 MiB of data copies 6 MiB.
#[test]
fn snapshot_copies_only_data_and_stays_sparse() {
    let (_dir, be) = backend();
    be.create(&volume(id(1), "db", GIB, Allocation::Sparse))
        .unwrap();
    let vol = be.data_path(ObjKind::Volume, id(1));
    scribble(&vol, 0, 2 * MIB, 1);
    scribble(&vol, 300 * MIB, 3 * MIB, 2);
    scribble(&vol, GIB - MIB, MIB, 3);

    let created = be.snapshot(id(1), id(2), "db-snap").unwrap();
    assert_eq!(created.change, Change::Changed);
    let stats = created.copy.unwrap();
    let snap = be.data_path(ObjKind::Snapshot, id(2));
    assert_eq!(fs::metadata(&snap).unwrap().len(), GIB);
    assert_eq!(checksum(&snap), checksum(&vol));
    if !stats.reflinked() {
        assert_eq!(stats.method, CopyMethod::CopyFileRange);
        assert_eq!(stats.bytes_copied, 6 * MIB);
        assert_eq!(stats.extents, 3);
        let (a, b) = (allocated(&vol), allocated(&snap));
        assert!(
            b.abs_diff(a) <= MIB,
            "source {a} vs copy {b} allocated bytes"
        );
    }

    let meta = be.get(id(2)).unwrap().unwrap();
    assert_eq!(meta.kind, ObjKind::Snapshot);
    assert_eq!(meta.parent, Some(id(1)));
    assert_eq!(
        meta.source,
        Some(SourceRef {
            kind: ObjKind::Volume,
            uuid: id(1)
        })
    );
    // Writes to the volume after the snapshot don't reach it.
    let frozen = checksum(&snap);
    scribble(&vol, 500 * MIB, MIB, 9);
    assert_eq!(checksum(&snap), frozen);
    assert_eq!(
        be.snapshot(id(1), id(2), "db-snap").unwrap().change,
        Change::Unchanged
    );
}

#[test]
fn clone_from_snapshot_can_be_larger_and_preallocated() {
    let (_dir, be) = backend();
    be.create(&volume(id(1), "db", 64 * MIB, Allocation::Sparse))
        .unwrap();
    scribble(&be.data_path(ObjKind::Volume, id(1)), 10 * MIB, MIB, 5);
    be.snapshot(id(1), id(2), "snap").unwrap();
    let src = SourceRef {
        kind: ObjKind::Snapshot,
        uuid: id(2),
    };
    let created = be
        .create(&NewObject {
            source: Some(src),
            ..volume(id(3), "db-clone", 96 * MIB, Allocation::Preallocated)
        })
        .unwrap();
    assert!(created.copy.is_some());
    let clone = be.data_path(ObjKind::Volume, id(3));
    assert_eq!(fs::metadata(&clone).unwrap().len(), 96 * MIB);
    assert!(allocated(&clone) >= 96 * MIB);
    let mut head = vec![0u8; (64 * MIB) as usize];
    File::open(&clone).unwrap().read_exact(&mut head).unwrap();
    assert_eq!(
        head,
        fs::read(be.data_path(ObjKind::Snapshot, id(2))).unwrap()
    );

    let err = be
        .create(&NewObject {
            source: Some(src),
            ..volume(id(4), "tiny", MIB, Allocation::Sparse)
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "tiny ({}): 1048576 bytes is smaller than its source \"snap\" (67108864 bytes)",
            id(4)
        )
    );
    assert!(
        be.get(id(4)).unwrap().is_none(),
        "nothing written for a refused clone"
    );
}

#[test]
fn foreign_files_are_listed_and_never_touched() {
    let (dir, be) = backend();
    let root = dir.path();
    be.create(&volume(id(1), "ours", MIB, Allocation::Sparse))
        .unwrap();
    // Cinder's own volume on the same export, notes, a directory, a symlink.
    let cinder = root.join(meta::file_name(ObjKind::Volume, id(9)));
    fs::write(&cinder, b"cinder data").unwrap();
    fs::write(root.join("README"), b"hands off").unwrap();
    fs::create_dir(root.join("lost+found")).unwrap();
    std::os::unix::fs::symlink("README", root.join("link")).unwrap();

    let inv = be.discover().unwrap();
    let names: Vec<_> = inv
        .foreign
        .iter()
        .map(|f| f.name.to_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "README",
            "link",
            "lost+found",
            "volume-00000000-0000-0000-0000-000000000009"
        ]
    );
    assert_eq!(inv.foreign[1].file_type, "symlink");
    assert_eq!(inv.foreign[2].file_type, "dir");
    assert!(
        inv.foreign
            .iter()
            .all(|f| f.reason == ForeignReason::NoMetadata)
    );
    assert_eq!(inv.objects.len(), 1);

    // Delete of a uuid we have no metadata for: nothing of ours, nothing done.
    assert_eq!(be.delete(id(9)).unwrap(), Change::Unchanged);
    assert_eq!(fs::read(&cinder).unwrap(), b"cinder data");
    // Creating over it is refused.
    let err = be
        .create(&volume(id(9), "x", MIB, Allocation::Sparse))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} exists but has no cinderblock metadata; not touching it",
            cinder.display()
        )
    );
    assert_eq!(fs::read(&cinder).unwrap(), b"cinder data");
    assert!(be.get(id(9)).unwrap().is_none());
}

#[test]
fn another_backends_objects_are_foreign_and_refused() {
    let (dir, be) = backend();
    let other = FileBackend::new(dir.path(), "other");
    other
        .create(&volume(id(5), "theirs", MIB, Allocation::Sparse))
        .unwrap();

    let inv = be.discover().unwrap();
    assert!(inv.objects.is_empty());
    assert_eq!(inv.capacity.provisioned, 0);
    assert_eq!(
        inv.foreign[0].reason,
        ForeignReason::OtherOwner {
            managed_by: "cinderblock".into(),
            backend: "other".into()
        }
    );
    let err = be.delete(id(5)).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("is owned by cinderblock/other, not cinderblock/local; not touching it"),
        "{err}"
    );
    assert!(be.extend(id(5), 2 * MIB, Allocation::Sparse).is_err());
    assert!(other.data_path(ObjKind::Volume, id(5)).exists());
}

#[test]
fn delete_removes_data_then_metadata() {
    let (_dir, be) = backend();
    be.create(&volume(id(1), "db", MIB, Allocation::Sparse))
        .unwrap();
    assert_eq!(be.delete(id(1)).unwrap(), Change::Changed);
    assert!(!be.data_path(ObjKind::Volume, id(1)).exists());
    assert!(!meta::sidecar_path(be.root(), id(1)).exists());
    assert_eq!(be.delete(id(1)).unwrap(), Change::Unchanged);
    assert!(be.discover().unwrap().objects.is_empty());
}

#[test]
fn rename_rewrites_only_the_name() {
    let (_dir, be) = backend();
    be.create(&volume(id(1), "old", 8 * MIB, Allocation::Sparse))
        .unwrap();
    let path = be.data_path(ObjKind::Volume, id(1));
    scribble(&path, 0, MIB, 4);
    let (sum, ino) = (checksum(&path), fs::metadata(&path).unwrap().ino());
    assert_eq!(be.rename(id(1), "new").unwrap(), Change::Changed);
    assert_eq!(be.rename(id(1), "new").unwrap(), Change::Unchanged);
    assert_eq!(be.get(id(1)).unwrap().unwrap().name, "new");
    assert_eq!(
        (checksum(&path), fs::metadata(&path).unwrap().ino()),
        (sum, ino)
    );
}

/// Each crash point of create, extend and delete, reproduced by leaving the
/// files as a crash would, is reported by discovery and finished by a re-run.
#[test]
fn every_crash_point_is_visible_and_finished_by_a_rerun() {
    let (_dir, be) = backend();
    let spec = volume(id(1), "db", 32 * MIB, Allocation::Preallocated);

    // create: sidecar `creating`, no data yet.
    be.create(&spec).unwrap();
    let mut m = be.get(id(1)).unwrap().unwrap();
    m.state = Mark::Creating;
    meta::write_sidecar(be.root(), &m).unwrap();
    let data = be.data_path(ObjKind::Volume, id(1));
    fs::remove_file(&data).unwrap();
    let inv = be.discover().unwrap();
    assert_eq!(inv.objects[0].health, Health::Creating);
    assert_eq!(inv.incomplete().count(), 1);
    assert!(inv.foreign.is_empty());
    assert_eq!(be.create(&spec).unwrap().change, Change::Changed);
    assert_eq!(be.discover().unwrap().objects[0].health, Health::Ready);
    assert!(allocated(&data) >= 32 * MIB);

    // create: sidecar `creating`, data half written.
    meta::write_sidecar(be.root(), &m).unwrap();
    File::options()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(MIB)
        .unwrap();
    be.create(&spec).unwrap();
    assert_eq!(fs::metadata(&data).unwrap().len(), 32 * MIB);
    assert_eq!(be.discover().unwrap().objects[0].health, Health::Ready);

    // extend: data grown, sidecar still at the old size.
    File::options()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(48 * MIB)
        .unwrap();
    assert_eq!(
        be.discover().unwrap().objects[0].health,
        Health::SizeMismatch {
            recorded: 32 * MIB,
            actual: 48 * MIB
        }
    );
    assert_eq!(
        be.extend(id(1), 48 * MIB, Allocation::Preallocated)
            .unwrap(),
        Change::Changed
    );
    assert_eq!(be.discover().unwrap().objects[0].health, Health::Ready);

    // delete: sidecar `deleting`, data already gone.
    let mut m = be.get(id(1)).unwrap().unwrap();
    m.state = Mark::Deleting;
    meta::write_sidecar(be.root(), &m).unwrap();
    fs::remove_file(&data).unwrap();
    let inv = be.discover().unwrap();
    assert_eq!(inv.objects[0].health, Health::Deleting);
    assert_eq!(inv.capacity.provisioned, 0);
    let err = be
        .create(&volume(id(1), "db", 48 * MIB, Allocation::Sparse))
        .unwrap_err();
    assert!(
        err.to_string()
            .ends_with("is being deleted; finish the delete first"),
        "{err}"
    );
    assert_eq!(be.delete(id(1)).unwrap(), Change::Changed);
    assert!(be.discover().unwrap().objects.is_empty());
}

#[test]
fn ready_object_without_data_is_reported_missing() {
    let (_dir, be) = backend();
    be.create(&volume(id(1), "db", MIB, Allocation::Sparse))
        .unwrap();
    fs::remove_file(be.data_path(ObjKind::Volume, id(1))).unwrap();
    let inv = be.discover().unwrap();
    assert_eq!(inv.objects[0].health, Health::DataMissing);
    assert_eq!(inv.objects[0].data, None);
}

#[test]
fn unreadable_sidecar_is_a_problem_not_a_foreign_file() {
    let (_dir, be) = backend();
    be.create(&volume(id(1), "db", MIB, Allocation::Sparse))
        .unwrap();
    let sidecar = meta::sidecar_path(be.root(), id(1));
    fs::write(&sidecar, b"{ torn").unwrap();
    fs::write(meta::meta_dir(be.root()).join(".x.json.tmp-1-0"), b"").unwrap();
    let inv = be.discover().unwrap();
    assert!(!inv.is_complete());
    assert_eq!(inv.problems.len(), 1);
    assert_eq!(inv.problems[0].path, sidecar);
    assert!(
        inv.problems[0].message.starts_with(&format!(
            "{}: unreadable object metadata: ",
            sidecar.display()
        )),
        "{}",
        inv.problems[0].message
    );
    assert!(inv.objects.is_empty() && inv.foreign.is_empty());
    assert_eq!(inv.leftovers.len(), 1);
}

#[test]
fn missing_root_is_an_error_for_this_backend() {
    let be = FileBackend::new("/nonexistent/cinderblock/root", "nfs-a");
    let err = be.discover().unwrap_err();
    assert_eq!(
        err.to_string(),
        "back end root /nonexistent/cinderblock/root is not a directory"
    );
    assert!(
        be.create(&volume(id(1), "x", MIB, Allocation::Sparse))
            .is_err()
    );
}

#[test]
fn snapshot_needs_a_ready_volume() {
    let (_dir, be) = backend();
    let err = be.snapshot(id(1), id(2), "s").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("no object 00000000-0000-0000-0000-000000000001 in ")
    );
    let err = be
        .create(&NewObject {
            uuid: id(2),
            name: "s",
            kind: ObjKind::Snapshot,
            size: MIB,
            allocation: Allocation::Sparse,
            source: None,
        })
        .unwrap_err();
    assert!(
        err.to_string()
            .ends_with("a snapshot needs a volume as its source")
    );
}

#[test]
fn a_delete_of_a_file_another_process_holds_is_refused_and_changes_nothing() {
    let (_dir, be) = backend();
    be.create(&volume(id(1), "db", 4 * MIB, Allocation::Sparse))
        .unwrap();
    let path = be.data_path(ObjKind::Volume, id(1));
    // qemu stands in: another process holds the volume open
    #[allow(clippy::disallowed_methods)]
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .stdin(fs::File::open(&path).unwrap())
        .spawn()
        .unwrap();
    let err = be.delete(id(1));
    let _ = child.kill();
    let _ = child.wait();
    let err = err.unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{} is in use by pid {} (sleep); not removing it",
            path.display(),
            child.id()
        )
    );
    assert!(path.exists());
    let inv = be.discover().unwrap();
    assert_eq!(inv.objects[0].health, Health::Ready, "not marked deleting");
    assert_eq!(be.delete(id(1)).unwrap(), Change::Changed);
    assert!(!path.exists());
}
