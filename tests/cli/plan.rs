//! `plan` and `apply` on `file` back ends, on real files in temp dirs.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::support::{root, run_in};

/// A temp site: a manifest directory, a state directory and back end dirs.
pub struct Site {
    pub dir: tempfile::TempDir,
}

impl Site {
    pub fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("manifests")).unwrap();
        Site { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    /// Writes `manifests/NAME` (replacing it).
    pub fn write(&self, name: &str, text: &str) {
        fs::write(self.path().join("manifests").join(name), text).unwrap();
    }
    pub fn remove(&self, name: &str) {
        fs::remove_file(self.path().join("manifests").join(name)).unwrap();
    }
    pub fn run(&self, args: &[&str]) -> crate::support::Run {
        let mut full = vec!["--state", "state", "--host", "testhost"];
        full.extend_from_slice(args);
        run_in(self.path(), &full)
    }
    pub fn apply(&self) -> crate::support::Run {
        let r = self.run(&["apply", "-f", "manifests", "--auto-approve"]);
        assert_eq!(r.code, 0, "apply failed:\n{}\n{}", r.stdout, r.stderr);
        r
    }
    /// `apply --auto-approve` with fault injection `CINDERBLOCK_CRASH_AT=at`
    /// (the process kills itself there); its raw output.
    pub fn apply_crashing_at(&self, at: &str) -> std::process::Output {
        assert_cmd::Command::cargo_bin("cinderblock")
            .unwrap()
            .current_dir(self.path())
            .env_remove("CINDERBLOCK_LOG")
            .env("CINDERBLOCK_CRASH_AT", at)
            .args([
                "--state",
                "state",
                "--host",
                "testhost",
                "apply",
                "-f",
                "manifests",
                "--auto-approve",
            ])
            .timeout(std::time::Duration::from_secs(120))
            .output()
            .unwrap()
    }
    pub fn plan_code(&self) -> i32 {
        self.run(&["plan", "-f", "manifests", "--detailed-exitcode"])
            .code
    }
    /// Objects on a back end directory: name → (uuid, data path, sidecar JSON).
    pub fn objects(
        &self,
        backend_dir: &str,
    ) -> BTreeMap<String, (String, PathBuf, serde_json::Value)> {
        let root = self.path().join(backend_dir);
        let mut out = BTreeMap::new();
        let Ok(rd) = fs::read_dir(root.join(".cinderblock")) else {
            return out;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            // An agent may remove a sidecar between the listing and the read
            // (a delete in flight): it is gone, not an error.
            let bytes = match fs::read(&p) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("{}: {e}", p.display()),
            };
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let kind = v["kind"].as_str().unwrap().to_owned();
            let uuid = v["uuid"].as_str().unwrap().to_owned();
            let name = format!("{kind}.{}", v["name"].as_str().unwrap());
            let data = root.join(format!("{kind}-{uuid}"));
            assert!(
                out.insert(name.clone(), (uuid, data, v)).is_none(),
                "{name} twice"
            );
        }
        out
    }
    pub fn data(&self, backend_dir: &str, name: &str) -> PathBuf {
        self.objects(backend_dir)
            .remove(name)
            .unwrap_or_else(|| panic!("{name} not on {backend_dir}"))
            .1
    }
}

pub const H: &str = "apiVersion: cinderblock.dev/v1alpha1\n";

pub fn backend(name: &str, dir: &Path, extra: &str) -> String {
    format!(
        "{H}kind: Backend\nmetadata:\n  name: {name}\nspec:\n  file:\n    path: {}\n{extra}",
        dir.display()
    )
}

pub fn volume(name: &str, size: &str, extra: &str) -> String {
    format!("{H}kind: Volume\nmetadata:\n  name: {name}\nspec:\n  size: {size}\n{extra}")
}

pub fn snapshot(name: &str, vol: &str, extra: &str) -> String {
    format!("{H}kind: Snapshot\nmetadata:\n  name: {name}\nspec:\n  volume: {vol}\n{extra}")
}

fn sha(path: &Path) -> String {
    blake3::hash(&fs::read(path).unwrap()).to_hex().to_string()
}

fn write_at(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, offset).unwrap();
    f.sync_all().unwrap();
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn one_backend(site: &Site, extra: &str) -> PathBuf {
    let dir = site.path().join("pool");
    fs::create_dir_all(&dir).unwrap();
    site.write("backend.yaml", &backend("local", &dir, extra));
    dir
}

#[test]
fn the_quickstart_applies_and_a_second_plan_says_no_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let state = state.to_str().unwrap();
    let quick = root().join("examples/quickstart");
    let quick = quick.to_str().unwrap();
    let r = run_in(
        tmp.path(),
        &["--state", state, "apply", "-f", quick, "--auto-approve"],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("Apply complete! Resources: 3 added, 0 changed, 0 destroyed."),
        "{}",
        r.stdout
    );
    let r = run_in(
        tmp.path(),
        &["--state", state, "plan", "-f", quick, "--detailed-exitcode"],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .ends_with("\nNo changes. Storage matches the manifests.\n"),
        "{}",
        r.stdout
    );
    // The quickstart's volume has a backup policy: plan says when it is due.
    assert!(
        r.stdout
            .starts_with("Backups (policy, schedule; last backup; next due):\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("no backup yet; next due "),
        "{}",
        r.stdout
    );
    // The volumes are sparse files of the declared sizes under state/volumes.
    let mut sizes: Vec<u64> = fs::read_dir(tmp.path().join("state/volumes"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            let m = e.metadata().unwrap();
            assert_eq!(m.blocks(), 0, "{:?} is not sparse", e.path());
            m.len()
        })
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [512 << 20, 1 << 30, 1 << 30]);
}

#[test]
fn sparse_and_preallocated_allocation() {
    let site = Site::new();
    let sparse = site.path().join("sparse");
    let prealloc = site.path().join("prealloc");
    fs::create_dir_all(&sparse).unwrap();
    fs::create_dir_all(&prealloc).unwrap();
    site.write(
        "b.yaml",
        &format!(
            "{}---\n{}",
            backend("thin", &sparse, ""),
            backend("thick", &prealloc, "    allocation: preallocated\n")
        ),
    );
    site.write(
        "v.yaml",
        &format!(
            "{}  backend: thin\n---\n{}  backend: thick\n",
            volume("s", "64Mi", ""),
            volume("p", "64Mi", "")
        ),
    );
    site.apply();
    let s = fs::metadata(site.data("sparse", "volume.s")).unwrap();
    let p = fs::metadata(site.data("prealloc", "volume.p")).unwrap();
    assert_eq!(s.len(), 64 << 20);
    assert_eq!(p.len(), 64 << 20);
    assert_eq!(s.blocks(), 0, "sparse volume has allocated blocks");
    assert!(
        p.blocks() * 512 >= 64 << 20,
        "preallocated volume has only {} bytes",
        p.blocks() * 512
    );
}

#[test]
fn data_survives_extend_and_snapshots_and_clones_copy_it() {
    let site = Site::new();
    let dir = one_backend(&site, "");
    let _ = dir;
    site.write("v.yaml", &volume("db", "16Mi", ""));
    site.apply();
    let vol = site.data("pool", "volume.db");
    write_at(&vol, 0, &pattern(1 << 20, 1));
    write_at(&vol, 9 << 20, &pattern(1 << 20, 2));
    let before = sha(&vol);
    site.write("s.yaml", &snapshot("db-snap", "db", ""));
    site.apply();
    let snap = site.data("pool", "snapshot.db-snap");
    assert_eq!(sha(&snap), before, "snapshot differs from its volume");
    // Overwrite the origin: the snapshot keeps the old point in time.
    write_at(&vol, 0, &pattern(1 << 20, 9));
    assert_eq!(sha(&snap), before);
    // A clone from the snapshot, larger, and an extend of the origin.
    site.write(
        "c.yaml",
        &volume("db-copy", "32Mi", "  source:\n    snapshot: db-snap\n"),
    );
    site.write("v.yaml", &volume("db", "48Mi", ""));
    let r = site.apply();
    assert!(
        r.stdout
            .contains("Resources: 1 added, 1 changed, 0 destroyed"),
        "{}",
        r.stdout
    );
    let copy = site.data("pool", "volume.db-copy");
    let copy_bytes = fs::read(&copy).unwrap();
    assert_eq!(copy_bytes.len(), 32 << 20);
    assert_eq!(
        blake3::hash(&copy_bytes[..16 << 20]).to_hex().to_string(),
        before
    );
    assert!(copy_bytes[16 << 20..].iter().all(|b| *b == 0));
    // Only the data was copied: the clone is as sparse as its source.
    assert!(fs::metadata(&copy).unwrap().blocks() * 512 <= 4 << 20);
    let vol_bytes = fs::read(&vol).unwrap();
    assert_eq!(vol_bytes.len(), 48 << 20);
    assert_eq!(
        &vol_bytes[9 << 20..10 << 20],
        &pattern(1 << 20, 2)[..],
        "data lost by extend"
    );
    assert_eq!(site.plan_code(), 0);
}

#[test]
fn shrink_is_refused_and_nothing_changes() {
    let site = Site::new();
    one_backend(&site, "");
    site.write("v.yaml", &volume("db", "64Mi", ""));
    site.apply();
    site.write("v.yaml", &volume("db", "32Mi", ""));
    let r = site.run(&["apply", "-f", "manifests", "--auto-approve"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains("Error: volume.db: cannot shrink from 64Mi to 32Mi: shrinking a volume destroys data; set spec.size back to at least 64Mi"),
        "{}",
        r.stdout
    );
    assert_eq!(
        fs::metadata(site.data("pool", "volume.db")).unwrap().len(),
        64 << 20
    );
}

#[test]
fn retain_keeps_and_delete_removes_a_volume_dropped_from_the_manifests() {
    let site = Site::new();
    one_backend(&site, "");
    site.write("keep.yaml", &volume("keep", "8Mi", ""));
    site.write(
        "drop.yaml",
        &volume("drop", "8Mi", "  deletionPolicy: Delete\n"),
    );
    site.write("other.yaml", &volume("other", "8Mi", ""));
    site.apply();
    let kept = site.data("pool", "volume.keep");
    write_at(&kept, 0, b"precious");
    let dropped = site.data("pool", "volume.drop");
    site.remove("keep.yaml");
    site.remove("drop.yaml");
    assert_eq!(site.plan_code(), 3, "a plan that destroys data exits 3");
    let r = site.apply();
    assert!(
        r.stdout
            .contains("Resources: 0 added, 0 changed, 1 destroyed, 1 forgotten."),
        "{}",
        r.stdout
    );
    assert!(!dropped.exists(), "Delete left the file");
    assert_eq!(
        &fs::read(&kept).unwrap()[..8],
        b"precious",
        "Retain lost data"
    );
    // The kept volume is no longer ours: never touched again.
    let side = site.path().join("pool/.cinderblock").join(format!(
        "{}.json",
        kept.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .trim_start_matches("volume-")
    ));
    let v: serde_json::Value = serde_json::from_slice(&fs::read(side).unwrap()).unwrap();
    assert_eq!(v["owner"]["managedBy"], "cinderblock-released");
    assert_eq!(site.plan_code(), 0);
}

#[test]
fn foreign_files_are_never_touched() {
    let site = Site::new();
    let dir = one_backend(&site, "");
    // A Cinder-style file without our sidecar, and an unrelated image.
    let cinder = dir.join("volume-0b1e9b5a-4f51-4d43-9c7c-6f6f1f2f3f4f");
    fs::write(&cinder, pattern(1 << 20, 5)).unwrap();
    fs::write(dir.join("debian.img"), b"not ours").unwrap();
    let before = (sha(&cinder), sha(&dir.join("debian.img")));
    site.write("v.yaml", &volume("a", "8Mi", "  deletionPolicy: Delete\n"));
    site.write("w.yaml", &volume("b", "8Mi", ""));
    site.apply();
    site.remove("v.yaml");
    site.apply();
    assert_eq!((sha(&cinder), sha(&dir.join("debian.img"))), before);
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"debian.img".to_owned()));
}

#[test]
fn detailed_exit_codes() {
    let site = Site::new();
    one_backend(&site, "");
    site.write("v.yaml", &volume("a", "8Mi", "  deletionPolicy: Delete\n"));
    site.write("w.yaml", &volume("b", "8Mi", ""));
    assert_eq!(site.plan_code(), 2);
    site.apply();
    assert_eq!(site.plan_code(), 0);
    site.remove("v.yaml");
    assert_eq!(site.plan_code(), 3);
    // Without --detailed-exitcode a valid plan exits 0.
    assert_eq!(site.run(&["plan", "-f", "manifests"]).code, 0);
}

#[test]
fn a_stale_saved_plan_is_refused_and_a_fresh_one_applies() {
    let site = Site::new();
    let dir = one_backend(&site, "");
    site.write("v.yaml", &volume("a", "8Mi", ""));
    let r = site.run(&["plan", "-f", "manifests", "--out", "a.plan"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The storage changes before the plan is applied.
    fs::write(dir.join("someone-elses.img"), b"x").unwrap();
    let r = site.run(&["apply", "a.plan"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("error: the saved plan is stale: the storage changed since it was made"),
        "{}",
        r.stderr
    );
    assert!(
        site.objects("pool").is_empty(),
        "a stale plan applied something"
    );
    let r = site.run(&["plan", "-f", "manifests", "--out", "b.plan"]);
    assert_eq!(r.code, 0);
    let r = site.run(&["apply", "b.plan"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(site.objects("pool").contains_key("volume.a"));
}

#[test]
fn a_second_process_is_locked_out_at_once_and_told_who_holds_the_lock() {
    let site = Site::new();
    one_backend(&site, "");
    site.write("v.yaml", &volume("a", "8Mi", ""));
    let held = cinderblock::state::lock::StateLock::acquire(
        &site.path().join("state"),
        "apply --auto-approve",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let r = site.run(&["plan", "-f", "manifests"]);
    assert_eq!(r.code, 1);
    assert!(started.elapsed().as_secs() < 5, "waited for the lock");
    let pid = std::process::id().to_string();
    assert!(
        r.stderr.contains(&format!("locked by pid {pid}")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("apply --auto-approve"), "{}", r.stderr);
    drop(held);
    assert_eq!(site.run(&["plan", "-f", "manifests"]).code, 0);
}

fn two_backends(site: &Site, extra1: &str, extra2: &str) {
    for (n, extra) in [("lvmstorage-1", extra1), ("lvmstorage-2", extra2)] {
        fs::create_dir_all(site.path().join(n)).unwrap();
        site.write(
            &format!("{n}.yaml"),
            &backend(
                n,
                &site.path().join(n),
                &format!("  backendName: LVM\n{extra}"),
            ),
        );
    }
    site.write("type.yaml", &format!("{H}kind: VolumeType\nmetadata:\n  name: lvm\nspec:\n  extraSpecs:\n    volume_backend_name: LVM\n"));
}

fn placements(site: &Site) -> BTreeMap<String, usize> {
    let r = site.run(&["plan", "-f", "manifests", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let mut count = BTreeMap::new();
    for c in v["resource_changes"].as_array().unwrap() {
        *count
            .entry(c["change"]["backend"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    count
}

#[test]
fn the_seed_example_volume_number_weigher_places_six_volumes_three_and_three() {
    let site = Site::new();
    two_backends(&site, "", "");
    site.write("policy.yaml", &format!("{H}kind: SchedulerPolicy\nmetadata:\n  name: default\nspec:\n  weighers:\n    - name: VolumeNumberWeigher\n"));
    for i in 1..=6 {
        site.write(
            &format!("vol-{i}.yaml"),
            &volume(&format!("vol-{i}"), "1Gi", "  volumeType: lvm\n"),
        );
    }
    let p = placements(&site);
    assert_eq!(p.get("lvmstorage-1"), Some(&3), "{p:?}");
    assert_eq!(p.get("lvmstorage-2"), Some(&3), "{p:?}");
    site.apply();
    assert_eq!(site.objects("lvmstorage-1").len(), 3);
    assert_eq!(site.objects("lvmstorage-2").len(), 3);
    assert_eq!(site.plan_code(), 0, "placements were reshuffled");
}

#[test]
fn the_capacity_weigher_prefers_the_emptier_back_end() {
    let site = Site::new();
    two_backends(&site, "", "");
    site.write(
        "big.yaml",
        &volume(
            "big",
            "100Gi",
            "  volumeType: lvm\n  backend: lvmstorage-1\n",
        ),
    );
    site.apply();
    site.write("new.yaml", &volume("new", "1Gi", "  volumeType: lvm\n"));
    let p = placements(&site);
    assert_eq!(p, BTreeMap::from([("lvmstorage-2".to_owned(), 1)]));
}

#[test]
fn a_volume_no_back_end_can_take_names_each_back_end_and_filter() {
    let site = Site::new();
    two_backends(
        &site,
        "  availabilityZone: az1\n",
        "  maxOverSubscriptionRatio: 1.0\n",
    );
    site.write(
        "v.yaml",
        &volume(
            "huge",
            "1000000Ti",
            "  volumeType: lvm\n  availabilityZone: nova\n",
        ),
    );
    let r = site.run(&["plan", "-f", "manifests"]);
    assert_eq!(r.code, 1);
    let err: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("Error:") || l.starts_with("      - "))
        .collect();
    assert_eq!(
        err[0],
        "Error: volume.huge: no back end can take it (1000000Ti):"
    );
    assert_eq!(
        err[1],
        "      - lvmstorage-1: AvailabilityZoneFilter: zone \"az1\", the volume needs \"nova\""
    );
    assert!(
        err[2].starts_with("      - lvmstorage-2: CapacityFilter: needs 1000000Ti, virtual free "),
        "{}",
        err[2]
    );
}

#[test]
fn plan_text_is_stable() {
    let site = Site::new();
    one_backend(&site, "  reservedPercentage: 10\n");
    site.write(
        "v.yaml",
        &format!(
            "{}---\n{}---\n{}---\n{}",
            volume("db", "16Mi", "  deletionPolicy: Delete\n"),
            volume("logs", "8Mi", ""),
            volume("tmp", "8Mi", "  deletionPolicy: Delete\n"),
            snapshot("db-snap", "db", "")
        ),
    );
    site.apply();
    site.write(
        "v.yaml",
        &format!(
            "{}---\n{}---\n{}---\n{}",
            volume("db", "32Mi", ""),
            volume("clone", "16Mi", "  source:\n    snapshot: db-snap\n"),
            volume("new", "1Gi", ""),
            snapshot("db-snap", "db", "")
        ),
    );
    let r1 = site.run(&["plan", "-f", "manifests"]);
    assert_eq!(r1.code, 0, "{}{}", r1.stdout, r1.stderr);
    let r2 = site.run(&["plan", "-f", "manifests"]);
    assert_eq!(r1.stdout, r2.stdout, "plan output is not deterministic");
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "[uuid]",
    );
    settings.add_filter(r"(?m)^  local  .*$", "  local  [capacity]");
    settings.bind(|| insta::assert_snapshot!(r1.stdout));
}

#[test]
fn a_share_that_cannot_be_mounted_fails_that_back_end_only() {
    let site = Site::new();
    let local = site.path().join("local");
    let mnt = site.path().join("mnt");
    fs::create_dir_all(&local).unwrap();
    fs::create_dir_all(&mnt).unwrap();
    site.write(
        "b.yaml",
        &format!(
            "{}---\n{}",
            backend("local", &local, ""),
            backend(
                "nfs",
                &mnt,
                "    share: 127.0.0.1:/srv/nothing-here\n    mountOptions: retry=0,timeo=10\n"
            )
        ),
    );
    site.write(
        "v.yaml",
        &format!(
            "{}  backend: local\n---\n{}  backend: nfs\n---\n{}",
            volume("a", "8Mi", ""),
            volume("b", "8Mi", ""),
            volume("c", "8Mi", "")
        ),
    );
    let r = site.run(&["apply", "-f", "manifests", "--auto-approve"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(
            "Note: discovery of back end nfs failed: cannot mount 127.0.0.1:/srv/nothing-here at "
        ),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(
            "Note: volume.b is not planned: it is, or may be, on nfs, which could not be discovered"
        ),
        "{}",
        r.stdout
    );
    // An unpinned volume is not created elsewhere while it may live on the
    // undiscovered back end (it would be a duplicate).
    assert!(
        r.stdout.contains("Note: volume.c is not planned"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("Resources: 1 added"), "{}", r.stdout);
    assert_eq!(
        site.objects("local").keys().collect::<Vec<_>>(),
        ["volume.a"]
    );
}
