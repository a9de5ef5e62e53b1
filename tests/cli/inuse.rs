//! Consumers at plan time: a `file` volume that another process (here: this
//! test process) or a loop device holds open is never deleted, moved or
//! restored over. The plan names the holder instead of showing a destroy,
//! apply changes nothing, and once the holder lets go the same change goes
//! through.

#![allow(clippy::disallowed_methods)] // losetup: a test stands in for an admin

use std::fs;
use std::path::{Path, PathBuf};

use crate::plan::{Site, backend, volume};

/// `pid N (comm)` of this test process, as the plan names it.
fn me() -> String {
    let comm = fs::read_to_string("/proc/self/comm").unwrap();
    format!("pid {} ({})", std::process::id(), comm.trim())
}

fn one_backend(site: &Site) -> PathBuf {
    let dir = site.path().join("pool");
    fs::create_dir_all(&dir).unwrap();
    site.write("backend.yaml", &backend("local", &dir, ""));
    dir
}

fn stamp(path: &Path) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(b"precious", 4096).unwrap();
}

fn stamped(path: &Path) -> bool {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 8];
    fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut b, 4096)
        .is_ok_and(|()| &b == b"precious")
}

/// A site with `keep` and `drop` (deletionPolicy: Delete) applied, and
/// `drop`'s manifest removed again: the next plan deletes it.
fn dropping() -> (Site, PathBuf) {
    let site = Site::new();
    one_backend(&site);
    site.write("keep.yaml", &volume("keep", "8Mi", ""));
    site.write(
        "drop.yaml",
        &volume("drop", "8Mi", "  deletionPolicy: Delete\n"),
    );
    site.apply();
    let data = site.data("pool", "volume.drop");
    stamp(&data);
    site.remove("drop.yaml");
    (site, data)
}

/// The plan refuses with `want` (an error, exit 1, no destroy shown), and
/// apply refuses too, leaving the data.
fn assert_held(site: &Site, data: &Path, want: &str) {
    let plan = site.run(&["plan", "-f", "manifests"]);
    assert_eq!(plan.code, 1, "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout.contains(want),
        "missing {want:?} in:\n{}",
        plan.stdout
    );
    assert!(
        !plan.stdout.contains("destroy"),
        "the plan shows a destroy apply would refuse:\n{}",
        plan.stdout
    );
    let r = site.run(&["apply", "-f", "manifests", "--auto-approve"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains(want), "{}", r.stdout);
    assert!(stamped(data), "the held volume's data is gone");
}

#[test]
fn a_volume_another_process_holds_open_is_not_deleted_and_the_plan_names_it() {
    let (site, data) = dropping();
    let held = fs::File::open(&data).unwrap();
    assert_held(
        &site,
        &data,
        &format!(
            "Error: volume.drop: its manifest was removed and its deletionPolicy is Delete, but it is in use by {}; stop or detach it, then plan again",
            me()
        ),
    );
    // Let go: the same plan now deletes it.
    drop(held);
    assert_eq!(site.plan_code(), 3, "a plan that destroys data exits 3");
    let r = site.apply();
    assert!(r.stdout.contains("1 destroyed"), "{}", r.stdout);
    assert!(!data.exists());
    assert!(site.objects("pool").contains_key("volume.keep"));
}

#[test]
fn a_volume_in_use_is_not_migrated() {
    let site = Site::new();
    for d in ["a", "b"] {
        fs::create_dir_all(site.path().join(d)).unwrap();
    }
    site.write("fast.yaml", &backend("fast", &site.path().join("a"), ""));
    site.write("slow.yaml", &backend("slow", &site.path().join("b"), ""));
    site.write("db.yaml", &volume("db", "8Mi", "  backend: fast\n"));
    site.apply();
    let data = site.data("a", "volume.db");
    stamp(&data);
    site.write("db.yaml", &volume("db", "8Mi", "  backend: slow\n"));
    let held = fs::File::open(&data).unwrap();
    let plan = site.run(&["plan", "-f", "manifests"]);
    assert_eq!(plan.code, 1, "{}\n{}", plan.stdout, plan.stderr);
    let want = format!(
        "Error: volume.db: spec.backend changed: fast -> slow, but the volume cannot be migrated: it is in use by {}: stop or detach it, then plan again",
        me()
    );
    assert!(plan.stdout.contains(&want), "{}", plan.stdout);
    let r = site.run(&["apply", "-f", "manifests", "--auto-approve"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(site.objects("b").is_empty(), "nothing on the target");
    assert!(stamped(&data));
    drop(held);
    let r = site.apply();
    assert!(
        r.stdout.contains("volume.db: Migration complete"),
        "{}",
        r.stdout
    );
    assert!(stamped(&site.data("b", "volume.db")));
    assert!(site.objects("a").is_empty());
}

/// A loop device over a file, detached on drop.
struct Loop(String);

impl Loop {
    fn attach(file: &Path) -> Loop {
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

#[test]
#[ignore = "needs root and loop devices (tests/run.sh runs it)"]
fn a_volume_behind_a_loop_device_is_not_deleted_and_the_plan_names_the_device() {
    let (site, data) = dropping();
    let dev = Loop::attach(&data);
    let name = dev.0.trim_start_matches("/dev/").to_owned();
    assert_held(
        &site,
        &data,
        &format!(
            "Error: volume.drop: its manifest was removed and its deletionPolicy is Delete, but it is in use by loop device {name}; stop or detach it, then plan again"
        ),
    );
    drop(dev);
    let r = site.apply();
    assert!(r.stdout.contains("1 destroyed"), "{}", r.stdout);
    assert!(!data.exists());
}
