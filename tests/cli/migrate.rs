//! Migration between `file` back ends on real files: data, sparseness and
//! identity kept; the plan says what will be read; refusals change nothing;
//! a SIGKILL halfway through the copy is resumed, not restarted.

#![allow(clippy::disallowed_methods)] // sha256sum: a test tool, not a host command

use std::collections::{BTreeMap, BTreeSet};
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
    assert_refused(
        &site,
        &["set migrateSnapshots: true to move them with it as a chain"],
    );
    // With the flag, a snapshot declared in the same change is not taken
    // yet: it would be taken on the source after the move.
    pin(&site, "64Mi", "slow", "  migrateSnapshots: true\n");
    site.write("later.yaml", &snapshot("later", "db", ""));
    assert_refused(
        &site,
        &["snapshot.later is declared but not taken yet: apply once with spec.backend: fast"],
    );
}

/// A volume `db` on `fast` with snapshots `s1` and `s2` taken between
/// writes, and more written after `s2`; the sha256 of each.
fn chain_site() -> (Site, BTreeMap<String, (String, String)>) {
    let site = two_backends("64Mi", "", "");
    let vol = site.data("a", "volume.db");
    write_pattern(&vol, 0, 8 * MIB, 1);
    write_pattern(&vol, 40 * MIB, 2 * MIB, 2);
    site.write("s1.yaml", &snapshot("s1", "db", ""));
    site.apply();
    // Changes after s1: one MiB rewritten, four new.
    write_pattern(&vol, 2 * MIB, MIB, 3);
    write_pattern(&vol, 20 * MIB, 4 * MIB, 4);
    site.write("s2.yaml", &snapshot("s2", "db", ""));
    site.apply();
    // And after s2: 64 KiB rewritten, one MiB new.
    write_pattern(&vol, 5 * MIB, 64 << 10, 5);
    write_pattern(&vol, 50 * MIB, MIB, 6);
    let before = site
        .objects("a")
        .into_iter()
        .map(|(name, (uuid, path, _))| (name, (uuid, sha256(&path))))
        .collect::<BTreeMap<_, _>>();
    assert_eq!(before.len(), 3, "{before:?}");
    let shas: BTreeSet<&String> = before.values().map(|(_, s)| s).collect();
    assert_eq!(shas.len(), 3, "three different points in time");
    (site, before)
}

/// The chain is on `slow` (dir b) exactly once, each object with its
/// identity, its point-in-time sha256 and a ready mark, nothing left on
/// `fast`, recorded on `slow`, and the plan converged.
fn assert_chain_moved(site: &Site, before: &BTreeMap<String, (String, String)>, at: &str) {
    assert!(
        site.objects("a").is_empty(),
        "{at}: the source chain is gone: {:?}",
        site.objects("a")
    );
    let after = site.objects("b");
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "{at}: each object exactly once on the target"
    );
    let vol_uuid = &before["volume.db"].0;
    for (name, (uuid, sha)) in before {
        let (u, path, meta) = &after[name];
        assert_eq!(u, uuid, "{at}: {name} keeps its uuid");
        assert_eq!(&sha256(path), sha, "{at}: {name} holds its point in time");
        assert_eq!(meta["state"], "ready", "{at}: {name}");
        assert!(meta.get("migration").is_none(), "{at}: {name}: {meta}");
        if name.starts_with("snapshot.") {
            assert_eq!(
                meta["parent"].as_str(),
                Some(vol_uuid.as_str()),
                "{at}: {name} stays a snapshot of the volume"
            );
        }
    }
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(site.path().join("state/state.json")).unwrap()).unwrap();
    assert!(
        !state.to_string().contains("\"backend\":\"fast\""),
        "{at}: every record on slow: {state}"
    );
    assert_eq!(site.plan_code(), 0, "{at}: converged");
}

#[test]
fn a_volume_with_two_snapshots_moves_as_a_chain() {
    let (site, before) = chain_site();
    pin(&site, "64Mi", "slow", "  migrateSnapshots: true\n");
    let plan = site.run(&["plan", "-f", "manifests", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}\n{}", plan.stdout, plan.stderr);
    for want in [
        "chain      = with its 2 snapshot(s), oldest first",
        "> snapshot   = \"s1\": 64Mi, 10 MiB of data",
        "> snapshot   = \"s2\": 64Mi, 14 MiB of data",
        "Plan: 0 to add, 0 to change, 0 to destroy, 1 to migrate.",
    ] {
        assert!(
            plan.stdout.contains(want),
            "missing {want:?} in:\n{}",
            plan.stdout
        );
    }
    let r = site.apply();
    for want in [
        "snapshot.s1 moved with it: verified (blake3 ",
        "snapshot.s2 moved with it: verified (blake3 ",
        "volume.db: Migration complete",
    ] {
        assert!(
            r.stdout.contains(want),
            "missing {want:?} in:\n{}",
            r.stdout
        );
    }
    assert_chain_moved(&site, &before, "uninterrupted");
    // Sparse on the target: every file holds about its data, not 64 MiB.
    for (name, (_, path, _)) in site.objects("b") {
        let blocks = fs::metadata(&path).unwrap().blocks() * 512;
        assert!(blocks <= 16 * MIB, "{name}: {blocks} bytes allocated");
    }
}

#[test]
fn sigkill_at_each_step_of_a_chain_move_resumes_once() {
    for at in [
        "migrate-target",
        "migrate-copy:4194304",
        "migrate-snapshot:1",
        "migrate-snapshot:2",
        "migrate-verified",
        "migrate-promoted",
    ] {
        let (site, before) = chain_site();
        pin(&site, "64Mi", "slow", "  migrateSnapshots: true\n");
        let out = site.apply_crashing_at(at);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{at}: not killed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Killed: every point in time is still where it was.
        for (name, (_, sha)) in &before {
            let on_a = site.objects("a");
            if let Some((_, path, meta)) = on_a.get(name) {
                if meta["state"] == "ready" {
                    assert_eq!(&sha256(path), sha, "{at}: {name} on the source");
                }
            }
        }
        let plan = site.run(&["plan", "-f", "manifests"]);
        assert_eq!(plan.code, 0, "{at}: {}\n{}", plan.stdout, plan.stderr);
        assert!(
            plan.stdout.contains("will be migrated (resumed)"),
            "{at}: {}",
            plan.stdout
        );
        let r = site.apply();
        assert!(r.stdout.contains("Apply complete!"), "{at}: {}", r.stdout);
        assert_chain_moved(&site, &before, at);
    }
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
