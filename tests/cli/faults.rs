//! Real full disks, no fault seam: each test re-runs itself in a private
//! mount namespace (`unshare -m`, so nothing it mounts is seen outside or
//! outlives it) where a size-limited tmpfs is the backup target, the state
//! directory or a migration's target back end. A ballast file fills it up;
//! the test checks the clear error, that the source volumes (sha256) and the
//! earlier backups (`backup verify --all`) are untouched, and that the next
//! run converges once the ballast is removed.
//!
//! They need root and mounts: `#[ignore]`d, run by `tests/run.sh` (as root,
//! `cargo test --test cli -- --ignored`).
//!
//! One more test injects the errors through the driver seam instead
//! (`CINDERBLOCK_FAULT`, see `src/driver/fault.rs`): ENOSPC on an extend, EIO
//! on a backup's point in time; it needs nothing and always runs.

// The tests mount file systems and hash files as an admin would.
#![allow(clippy::disallowed_methods)]

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::backup::{MIB, Site as BackupSite, backup_id, fill, noise, ok, sha256};
use crate::plan::{Site, backend, volume};

/// Set in the re-run inside the namespace.
const INSIDE: &str = "CINDERBLOCK_TEST_MOUNT_NS";

/// Whether this is the run inside the private mount namespace. Outside, runs
/// the test `name` there (this test binary under `unshare -m`), asserts it
/// passed, and returns false.
fn inside_private_mounts(name: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        return true;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(exe)
        .args([
            "--exact",
            &format!("faults::{name}"),
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INSIDE, "1")
        .output()
        .expect("unshare runs (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "the run in a private mount namespace failed:\n{stdout}\n{stderr}"
    );
    false
}

/// Mounts a tmpfs of `size` on `dir` (created).
fn tmpfs(dir: &Path, size: &str) {
    fs::create_dir_all(dir).unwrap();
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount tmpfs on {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fills the file system of `dir` with a ballast file, up to `at_most`
/// bytes or until it is full; returns the file.
fn ballast(dir: &Path, at_most: u64) -> PathBuf {
    let path = dir.join("ballast");
    let mut f = File::create(&path).unwrap();
    let chunk = noise(9, MIB);
    let mut written = 0;
    while written < at_most {
        let n = usize::try_from((at_most - written).min(MIB)).unwrap();
        match f.write(&chunk[..n]) {
            Ok(0) => break,
            Ok(k) => written += k as u64,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(e) => panic!("ballast: {e}"),
        }
    }
    drop(f);
    path
}

fn assert_no_space(r: &crate::support::Run, names: &str) {
    assert_eq!(r.code, 1, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("No space left on device") && r.stderr.contains(names),
        "the error must say the disk is full and name {names}:\n{}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

#[test]
#[ignore = "needs root and mounts (tests/run.sh runs it)"]
fn a_full_backup_target_fails_clearly_keeps_earlier_backups_and_converges_after() {
    if !inside_private_mounts(
        "a_full_backup_target_fails_clearly_keeps_earlier_backups_and_converges_after",
    ) {
        return;
    }
    let site = BackupSite::new("");
    tmpfs(&site.repo(), "48m");
    let vol = site.create_volume("data", 64 * MIB);
    fill(&vol);
    let first = backup_id(&site.cbf(&["backup", "run", "data"]));
    let verify = site.cb("state", &["backup", "verify", "--all"]);
    ok(&verify);
    let list = site.cb("state", &["backup", "list"]);
    ok(&list);

    // 24 MiB of new data, which does not compress, on a full target.
    let f = File::options().write(true).open(&vol).unwrap();
    f.write_all_at(&noise(77, 24 * MIB), 8 * MIB).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let sum = sha256(&vol);
    // 4 MiB left: the run starts writing packs and runs out midway.
    let weight = ballast(&site.repo(), u64::MAX);
    let w = File::options().write(true).open(&weight).unwrap();
    w.set_len(w.metadata().unwrap().len() - 4 * MIB).unwrap();
    drop(w);
    let r = site.cbf(&["backup", "run", "data"]);
    assert_no_space(&r, &site.repo().display().to_string());

    assert_eq!(sha256(&vol), sum, "the source is untouched");
    // The catalogue keeps the earlier backup as it was and lists the
    // failed run as failed, saying why.
    let after = site.cb("state", &["backup", "list"]);
    ok(&after);
    let rest = after
        .stdout
        .strip_prefix(&list.stdout)
        .unwrap_or_else(|| panic!("the earlier lines changed:\n{}", after.stdout));
    assert_eq!(rest.lines().count(), 1, "{}", after.stdout);
    assert!(
        rest.contains(" failed: ") && rest.contains("No space left on device"),
        "{rest}"
    );
    let v = site.cb("state", &["backup", "verify", "--all"]);
    ok(&v);
    assert_eq!(v.stdout, verify.stdout, "every earlier backup verifies");

    // Room again: the next run converges.
    fs::remove_file(weight).unwrap();
    let second = backup_id(&site.cbf(&["backup", "run", "data"]));
    assert_ne!(second, first);
    ok(&site.cb("state", &["backup", "verify", "--all"]));
    ok(&site.cbf(&["backup", "restore", &second, "--to", "copy"]));
    let copy = site.volume_path("copy").unwrap();
    assert_eq!(sha256(&copy), sum, "the new backup restores the source");
}

#[test]
#[ignore = "needs root and mounts (tests/run.sh runs it)"]
fn a_full_state_directory_fails_clearly_and_converges_after() {
    if !inside_private_mounts("a_full_state_directory_fails_clearly_and_converges_after") {
        return;
    }
    let site = Site::new();
    let pool = site.path().join("pool");
    fs::create_dir_all(&pool).unwrap();
    let state = site.path().join("state");
    tmpfs(&state, "4m");
    site.write("backend.yaml", &backend("local", &pool, ""));
    site.write("a.yaml", &volume("a", "16Mi", ""));
    site.apply();
    let a = site.data("pool", "volume.a");
    File::options()
        .write(true)
        .open(&a)
        .unwrap()
        .write_all_at(&noise(3, 2 * MIB), MIB)
        .unwrap();
    let sum = sha256(&a);

    let weight = ballast(&state, u64::MAX);
    site.write("b.yaml", &volume("b", "16Mi", ""));
    site.write("a.yaml", &volume("a", "32Mi", ""));
    let r = site.run(&["apply", "-f", "manifests", "--auto-approve"]);
    assert_no_space(&r, "state");
    let objects = site.objects("pool");
    assert!(objects.len() <= 2, "{objects:?}");
    let a_now = site.data("pool", "volume.a");
    assert_eq!(
        sha256_prefix(&a_now, 16 * MIB),
        sha256_prefix(&a, 16 * MIB),
        "volume.a's data is untouched"
    );

    fs::remove_file(weight).unwrap();
    site.apply();
    assert_eq!(site.plan_code(), 0, "converged");
    let objects = site.objects("pool");
    assert_eq!(
        objects.keys().collect::<Vec<_>>(),
        ["volume.a", "volume.b"],
        "each volume exactly once"
    );
    let a = site.data("pool", "volume.a");
    assert_eq!(fs::metadata(&a).unwrap().len(), 32 * MIB);
    assert_eq!(
        sha256_prefix(&a, 16 * MIB),
        sum,
        "the first 16 MiB as before"
    );
}

/// sha256 of the first `len` bytes of `path`.
fn sha256_prefix(path: &Path, len: u64) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c {len} '{}' | sha256sum | cut -d' ' -f1",
            path.display()
        ))
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
#[ignore = "needs root and mounts (tests/run.sh runs it)"]
fn a_full_migration_target_fails_clearly_keeps_the_source_and_converges_after() {
    if !inside_private_mounts(
        "a_full_migration_target_fails_clearly_keeps_the_source_and_converges_after",
    ) {
        return;
    }
    let site = Site::new();
    // slow's directory on a 96 MiB file system, which the ballast shares
    // (beside the back end's directory, not in it: a file there would be a
    // foreign entry of the back end).
    let (dir_a, fs_b) = (site.path().join("a"), site.path().join("fs"));
    let dir_b = fs_b.join("b");
    fs::create_dir_all(&dir_a).unwrap();
    tmpfs(&fs_b, "96m");
    fs::create_dir_all(&dir_b).unwrap();
    site.write("fast.yaml", &backend("fast", &dir_a, ""));
    site.write("slow.yaml", &backend("slow", &dir_b, ""));
    site.write("db.yaml", &volume("db", "64Mi", "  backend: fast\n"));
    site.apply();
    let src = site.data("a", "volume.db");
    let f = File::options().write(true).open(&src).unwrap();
    f.write_all_at(&noise(5, 40 * MIB), 4 * MIB).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let sum = sha256(&src);
    let (uuid, _, _) = site.objects("a")["volume.db"].clone();

    // Planned while the target has room; then something else fills it.
    site.write("db.yaml", &volume("db", "64Mi", "  backend: slow\n"));
    let p = site.run(&[
        "plan",
        "-f",
        "manifests",
        "--out",
        "move.plan",
        "--detailed-exitcode",
    ]);
    assert_eq!(p.code, 2, "{}\n{}", p.stdout, p.stderr);
    let weight = ballast(&fs_b, 72 * MIB);
    let r = site.run(&["apply", "move.plan", "--auto-approve"]);
    // The copy stops before it fills the file system (it never takes the
    // last 5 %), rather than run into ENOSPC.
    assert_eq!(r.code, 1, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("volume.db: copy from fast to slow failed: stopped before filling file system of ")
            && r.stderr.contains(" free of 96.0 MiB, and a copy leaves 4.8 MiB (5 %, at most 1 GiB) for its other users; ")
            && r.stderr.contains("were copied and are kept (the next apply resumes there); free space on it, then apply again"),
        "the error must say the file system is full and name volume.db:\n{}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let vfs = nix::sys::statvfs::statvfs(&fs_b).unwrap();
    assert!(
        vfs.blocks_available() * vfs.fragment_size() >= 4 * MIB,
        "the file system kept its reserve"
    );

    assert_eq!(sha256(&src), sum, "the source is untouched");
    assert_eq!(site.objects("a")["volume.db"].0, uuid, "still on fast");

    fs::remove_file(weight).unwrap();
    site.apply();
    assert_eq!(site.plan_code(), 0, "converged");
    assert!(site.objects("a").is_empty(), "{:?}", site.objects("a"));
    let objs = site.objects("fs/b");
    let (uuid_after, dst, _) = &objs["volume.db"];
    assert_eq!(uuid_after, &uuid);
    assert_eq!(sha256(dst), sum, "data identical on the target");
}

/// `cinderblock` with `CINDERBLOCK_FAULT` set (the driver seam's injected
/// errors) on the backup site.
fn with_fault(site: &BackupSite, fault: &str, args: &[&str]) -> crate::support::Run {
    let mut v = vec!["--state", "state"];
    v.extend_from_slice(args);
    v.extend_from_slice(&["-f", "site.yaml"]);
    crate::support::run_in_env(site.path(), &v, &[("CINDERBLOCK_FAULT", fault)])
}

#[test]
fn errors_injected_through_the_driver_seam_are_clear_keep_the_data_and_the_next_run_converges() {
    let site = BackupSite::new("");
    ok(&site.cbf(&["apply", "--auto-approve"]));
    let vol = site.volume_path("data").expect("apply created the volume");
    fill(&vol);
    let sum = sha256(&vol);
    backup_id(&site.cbf(&["backup", "run", "data"]));
    let verify = site.cb("state", &["backup", "verify", "--all"]);
    ok(&verify);
    let intact = |at: &str| {
        assert_eq!(sha256(&vol), sum, "{at}: the volume is untouched");
        let v = site.cb("state", &["backup", "verify", "--all"]);
        ok(&v);
        assert_eq!(v.stdout, verify.stdout, "{at}: every backup verifies");
    };

    // The volume grows onto a full disk: the extend fails, nothing else.
    let manifest = site.path().join("site.yaml");
    let text = fs::read_to_string(&manifest).unwrap();
    fs::write(&manifest, text.replace("size: 64Mi", "size: 128Mi")).unwrap();
    let r = with_fault(&site, "local:extend:ENOSPC", &["apply", "--auto-approve"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("volume.data")
            && r.stderr.contains("cannot extend on back end local")
            && r.stderr.contains("No space left on device"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    intact("extend on a full disk");
    assert_eq!(fs::metadata(&vol).unwrap().len(), 64 * MIB);

    // The backup's point in time cannot be read: the run fails and says so.
    let r = with_fault(&site, "local:pit:EIO", &["backup", "run", "data"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("Input/output error"), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    intact("a backup that cannot read its source");

    // Without faults, the next runs converge.
    ok(&site.cbf(&["apply", "--auto-approve"]));
    assert_eq!(fs::metadata(&vol).unwrap().len(), 128 * MIB);
    let plan = site.cbf(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}\n{}", plan.stdout, plan.stderr);
    let id = backup_id(&site.cbf(&["backup", "run", "data"]));
    ok(&site.cbf(&["backup", "restore", &id, "--to", "copy"]));
    let copy = site.volume_path("copy").unwrap();
    assert_eq!(
        sha256_prefix(&copy, 64 * MIB),
        sha256_prefix(&vol, 64 * MIB),
        "the new backup restores the data"
    );
}
