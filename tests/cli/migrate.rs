//! Migration between `file` back ends on real files: data, sparseness and
//! identity kept; the plan says what will be read; refusals change nothing;
//! a SIGKILL halfway through the copy is resumed, not restarted.

#![allow(clippy::disallowed_methods)] // sha256sum: a test tool, not a host command

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use crate::plan::{Site, backend, snapshot, volume};

const MIB: u64 = 1 << 20;

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Writes `len` bytes of a non-zero pattern at `at`.
fn write_pattern(path: &Path, at: u64, len: u64, seed: u64) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    let mut x = seed | 1;
    let mut buf = vec![0u8; MIB as usize];
    let mut done = 0;
    while done < len {
        for chunk in buf.chunks_exact_mut(8) {
            // xorshift64: cheap, never all zero
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        let n = (len - done).min(MIB);
        f.write_all_at(&buf[..n as usize], at + done).unwrap();
        done += n;
    }
}

/// Two file back ends `fast` (dir a) and `slow` (dir b), and a volume `db`
/// pinned to `fast`, applied.
fn two_backends(size: &str, vol_extra: &str, slow_extra: &str) -> Site {
    let site = Site::new();
    for d in ["a", "b"] {
        fs::create_dir_all(site.path().join(d)).unwrap();
    }
    site.write("fast.yaml", &backend("fast", &site.path().join("a"), ""));
    site.write(
        "slow.yaml",
        &backend("slow", &site.path().join("b"), slow_extra),
    );
    site.write(
        "db.yaml",
        &volume("db", size, &format!("  backend: fast\n{vol_extra}")),
    );
    site.apply();
    site
}

fn pin(site: &Site, size: &str, to: &str, extra: &str) {
    site.write(
        "db.yaml",
        &volume("db", size, &format!("  backend: {to}\n{extra}")),
    );
}

/// The action block of a plan, with the volatile lines redacted.
fn action_block(plan: &str) -> String {
    plan.lines()
        .skip_while(|l| !l.starts_with("cinderblock will perform"))
        .take_while(|l| !l.starts_with("Capacity"))
        .map(|l| {
            if l.trim_start().starts_with("id ") {
                "        id         = [uuid]".to_owned()
            } else if l.trim_start().starts_with("target ") {
                "        target     = [free space of this file system]".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn file_to_file_keeps_data_sparseness_and_identity() {
    let site = two_backends("256Mi", "", "");
    let src = site.data("a", "volume.db");
    write_pattern(&src, 30 * MIB, 20 * MIB, 1);
    write_pattern(&src, 200 * MIB, 3 * MIB, 2);
    let before = sha256(&src);
    let (uuid, _, _) = site.objects("a")["volume.db"].clone();

    pin(&site, "256Mi", "slow", "");
    let plan = site.run(&["plan", "-f", "manifests", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout
            .contains("read       = 23 MiB (the allocated data"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .ends_with("Plan: 0 to add, 0 to change, 0 to destroy, 1 to migrate.\n"),
        "{}",
        plan.stdout
    );
    insta::assert_snapshot!("migrate_plan_file_to_file", action_block(&plan.stdout));

    let r = site.apply();
    assert!(
        r.stdout.contains("volume.db: Migration complete"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("read 24117248 bytes"), "{}", r.stdout);
    // Moved: nothing left on fast, the same volume on slow.
    assert!(site.objects("a").is_empty());
    let objs = site.objects("b");
    let (uuid_after, dst, meta) = &objs["volume.db"];
    assert_eq!(uuid_after, &uuid, "the volume keeps its uuid");
    assert_eq!(meta["state"], "ready");
    assert!(meta.get("migration").is_none());
    assert_eq!(sha256(dst), before, "data identical");
    let m = fs::metadata(dst).unwrap();
    assert_eq!(m.len(), 256 * MIB);
    assert!(
        m.blocks() * 512 <= 24 * MIB,
        "the target is sparse: {} bytes allocated",
        m.blocks() * 512
    );
    assert_eq!(site.plan_code(), 0, "converged");
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(site.path().join("state/state.json")).unwrap()).unwrap();
    assert!(
        state.to_string().contains("\"backend\":\"slow\""),
        "recorded on slow: {state}"
    );
}

/// Each refusal: plan exits 1 naming the reason, apply changes nothing.
fn assert_refused(site: &Site, want: &[&str]) {
    let a_before = site.objects("a");
    let plan = site.run(&["plan", "-f", "manifests"]);
    assert_eq!(plan.code, 1, "{}\n{}", plan.stdout, plan.stderr);
    for w in want {
        assert!(
            plan.stdout.contains(w),
            "missing {w:?} in:\n{}",
            plan.stdout
        );
    }
    let r = site.run(&["apply", "-f", "manifests", "--auto-approve"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(site.objects("a"), a_before, "nothing changed on the source");
    assert!(site.objects("b").is_empty(), "nothing on the target");
}

#[test]
fn a_volume_with_snapshots_is_not_migrated() {
    let site = two_backends("64Mi", "", "");
    site.write("snap.yaml", &snapshot("nightly", "db", ""));
    site.apply();
    pin(&site, "64Mi", "slow", "");
    assert_refused(
        &site,
        &[
            "Error: volume.db: spec.backend changed: fast -> slow, but the volume cannot be migrated: it has snapshots (snapshot.nightly)",
            "delete them first",
        ],
    );
    pin(&site, "64Mi", "slow", "  migrateSnapshots: true\n");
    assert_refused(
        &site,
        &["(migrateSnapshots: true) is not supported by this version of cinderblock yet"],
    );
}

#[test]
fn a_consistency_group_member_is_not_migrated() {
    let site = Site::new();
    for d in ["a", "b"] {
        fs::create_dir_all(site.path().join(d)).unwrap();
    }
    site.write("fast.yaml", &backend("fast", &site.path().join("a"), ""));
    site.write("slow.yaml", &backend("slow", &site.path().join("b"), ""));
    site.write(
        "cg.yaml",
        "apiVersion: cinderblock.dev/v1alpha1\nkind: VolumeType\nmetadata: {name: gold}\nspec: {}\n---\napiVersion: cinderblock.dev/v1alpha1\nkind: ConsistencyGroup\nmetadata: {name: app}\nspec:\n  volumeTypes: [gold]\n",
    );
    let extra = "  volumeType: gold\n  consistencyGroup: app\n";
    pin(&site, "64Mi", "fast", extra);
    site.apply();
    pin(&site, "64Mi", "slow", extra);
    assert_refused(
        &site,
        &["it is a member of consistency group app, whose volumes stay on one back end"],
    );
}

#[test]
fn a_target_without_room_is_refused_with_cinders_numbers() {
    let site = two_backends("64Mi", "", "  reservedPercentage: 100\n");
    pin(&site, "64Mi", "slow", "");
    assert_refused(
        &site,
        &["but the volume cannot be migrated: slow cannot take it: CapacityFilter:"],
    );
}

#[test]
fn a_retype_needs_migration_policy_on_demand() {
    let site = Site::new();
    for d in ["a", "b"] {
        fs::create_dir_all(site.path().join(d)).unwrap();
    }
    site.write(
        "fast.yaml",
        &backend("fast", &site.path().join("a"), "  backendName: FAST\n"),
    );
    site.write(
        "slow.yaml",
        &backend("slow", &site.path().join("b"), "  backendName: SLOW\n"),
    );
    site.write(
        "types.yaml",
        "apiVersion: cinderblock.dev/v1alpha1\nkind: VolumeType\nmetadata: {name: quick}\nspec:\n  extraSpecs: {volume_backend_name: FAST}\n---\napiVersion: cinderblock.dev/v1alpha1\nkind: VolumeType\nmetadata: {name: cheap}\nspec:\n  extraSpecs: {volume_backend_name: SLOW}\n",
    );
    site.write("db.yaml", &volume("db", "64Mi", "  volumeType: quick\n"));
    site.apply();
    assert_eq!(site.objects("a").len(), 1);
    let src = site.data("a", "volume.db");
    write_pattern(&src, 0, 4 * MIB, 3);
    let before = sha256(&src);
    site.write("db.yaml", &volume("db", "64Mi", "  volumeType: cheap\n"));
    assert_refused(
        &site,
        &[
            "its back end fast does not satisfy volumeType cheap",
            "migrationPolicy: never (the default, as Cinder) forbids; set migrationPolicy: on-demand",
        ],
    );
    site.write(
        "db.yaml",
        &volume(
            "db",
            "64Mi",
            "  volumeType: cheap\n  migrationPolicy: on-demand\n",
        ),
    );
    let plan = site.run(&["plan", "-f", "manifests"]);
    assert!(
        plan.stdout.contains("> backend    = \"fast\" -> \"slow\""),
        "{}",
        plan.stdout
    );
    site.apply();
    assert_eq!(sha256(&site.data("b", "volume.db")), before);
    assert_eq!(site.plan_code(), 0);
}

#[test]
fn sigkill_halfway_through_the_copy_resumes_and_verifies() {
    const GIB: u64 = 1 << 30;
    let site = two_backends("2Gi", "", "");
    let src = site.data("a", "volume.db");
    // 1 GiB of data in 16 runs of 64 MiB, every other 64 MiB.
    for i in 0..16 {
        write_pattern(&src, i * 128 * MIB, 64 * MIB, i + 10);
    }
    let before = sha256(&src);
    pin(&site, "2Gi", "slow", "");
    let killed_at = 512 * MIB;
    let out = site.apply_crashing_at(&format!("migrate-copy:{killed_at}"));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "killed mid-copy");
    // Halfway: the source is intact, the target marked as a migration's.
    assert_eq!(sha256(&src), before);
    let plan = site.run(&["plan", "-f", "manifests"]);
    assert!(
        plan.stdout.contains("will be migrated (resumed)"),
        "{}",
        plan.stdout
    );
    let r = site.apply();
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("volume.db: read "))
        .unwrap_or_else(|| panic!("no copy figures in:\n{}", r.stdout));
    let words: Vec<&str> = line.split_whitespace().collect();
    let read: u64 = words[2].parse().unwrap();
    assert!(line.contains(", resumed at byte "), "{line}");
    assert!(line.contains("verified (blake3 "), "{line}");
    assert!(
        killed_at + read < GIB * 3 / 2,
        "read {killed_at} + {read} bytes in all: more than 1.5 × the 1 GiB of data"
    );
    assert!(site.objects("a").is_empty());
    assert_eq!(
        sha256(&site.data("b", "volume.db")),
        before,
        "data identical"
    );
    let blocks = fs::metadata(site.data("b", "volume.db")).unwrap().blocks() * 512;
    assert!(blocks <= GIB + 8 * MIB, "sparse: {blocks}");
    assert_eq!(site.plan_code(), 0);
}

#[test]
fn sigkill_between_the_steps_of_a_migration_converges() {
    for at in ["migrate-target", "migrate-verified", "migrate-promoted"] {
        let site = two_backends("64Mi", "", "");
        let src = site.data("a", "volume.db");
        write_pattern(&src, 8 * MIB, 4 * MIB, 7);
        let before = sha256(&src);
        let (uuid, _, _) = site.objects("a")["volume.db"].clone();
        pin(&site, "64Mi", "slow", "");
        let out = site.apply_crashing_at(at);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(9), "{at}: not killed");
        let plan = site.run(&["plan", "-f", "manifests"]);
        assert!(
            plan.stdout.contains("will be migrated (resumed)"),
            "{at}: {}",
            plan.stdout
        );
        let r = site.apply();
        assert!(r.stdout.contains("Apply complete!"), "{at}: {}", r.stdout);
        assert!(site.objects("a").is_empty(), "{at}: the source is gone");
        let objs = site.objects("b");
        assert_eq!(objs["volume.db"].0, uuid, "{at}: identity kept");
        assert_eq!(objs["volume.db"].2["state"], "ready", "{at}");
        assert_eq!(sha256(&objs["volume.db"].1), before, "{at}: data identical");
        assert_eq!(site.plan_code(), 0, "{at}: converged");
    }
}
