//! Consistency groups through the real binary on `file` back ends: members
//! placed as one unit, a member's delete refused until it leaves the group;
//! group snapshots (idle members: one reflink or copy each; a member in use
//! refused with its holder), a volume from one member, and the group
//! snapshot's members deleted together.

use std::fs;

use crate::backup::sha256;
use crate::plan::{H, Site, backend, volume};

fn site_with_group(members: &[&str]) -> Site {
    let site = Site::new();
    for b in ["fa", "fb"] {
        fs::create_dir_all(site.path().join(b)).unwrap();
        site.write(
            &format!("{b}.yaml"),
            &backend(b, &site.path().join(b), "  backendName: files\n"),
        );
    }
    site.write(
        "site.yaml",
        &format!(
            "{H}kind: SchedulerPolicy\nmetadata:\n  name: default\nspec:\n  weighers: [{{name: VolumeNumberWeigher, multiplier: -1}}]\n---\n\
             {H}kind: VolumeType\nmetadata:\n  name: t\nspec: {{}}\n---\n\
             {H}kind: ConsistencyGroup\nmetadata:\n  name: g\nspec:\n  volumeTypes: [t]\n"
        ),
    );
    for m in members {
        site.write(
            &format!("{m}.yaml"),
            &volume(
                m,
                "1Mi",
                "  volumeType: t\n  consistencyGroup: g\n  deletionPolicy: Delete\n",
            ),
        );
    }
    site
}

#[test]
fn three_unpinned_members_land_on_one_back_end_and_a_member_is_not_deleted() {
    let site = site_with_group(&["a", "b", "c"]);
    site.apply();
    let (fa, fb) = (site.objects("fa"), site.objects("fb"));
    let on_one = (fa.len(), fb.len());
    assert!(
        on_one == (3, 0) || on_one == (0, 3),
        "split: fa {:?}, fb {:?}",
        fa.keys(),
        fb.keys()
    );
    let home = if fa.len() == 3 { "fa" } else { "fb" };

    // Removing a member's manifest (deletionPolicy: Delete) is refused.
    site.remove("a.yaml");
    let r = site.run(&["plan", "-f", "manifests", "--detailed-exitcode"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("volume.a: cannot be deleted: it is a member of consistency group g")
            && r.stdout
                .contains("declare it again without spec.consistencyGroup"),
        "{}",
        r.stdout
    );
    assert_eq!(site.objects(home).len(), 3);

    // The way forward: it leaves the group (a visible change), then goes.
    site.write("a.yaml", &volume("a", "1Mi", "  deletionPolicy: Delete\n"));
    let r = site.run(&["plan", "-f", "manifests", "--detailed-exitcode"]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("~ consistencyGroup = \"g\" -> (none)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("Plan: 0 to add, 1 to change, 0 to destroy."),
        "{}",
        r.stdout
    );
    site.apply();
    site.remove("a.yaml");
    let r = site.run(&["plan", "-f", "manifests", "--detailed-exitcode"]);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    site.apply();
    let left: Vec<String> = site.objects(home).into_keys().collect();
    assert_eq!(left, ["volume.b", "volume.c"]);
    assert_eq!(
        site.run(&["plan", "-f", "manifests", "--detailed-exitcode"])
            .code,
        0
    );
}

/// Fills member `m`'s data file with byte `b` (1 MiB).
fn fill(site: &Site, home: &str, m: &str, b: u8) {
    fs::write(site.data(home, &format!("volume.{m}")), vec![b; 1 << 20]).unwrap();
}

#[test]
fn a_group_snapshot_of_idle_members_a_volume_from_one_member_and_a_delete_together() {
    let site = site_with_group(&["a", "b", "c"]);
    site.apply();
    let home = if site.objects("fa").len() == 3 {
        "fa"
    } else {
        "fb"
    };
    for (m, b) in [("a", 1u8), ("b", 2), ("c", 3)] {
        fill(&site, home, m, b);
    }
    let sums: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|m| sha256(&site.data(home, &format!("volume.{m}"))))
        .collect();
    site.write(
        "nightly.yaml",
        &format!("{H}kind: Snapshot\nmetadata:\n  name: nightly\nspec:\n  consistencyGroup: g\n  deletionPolicy: Delete\n"),
    );
    let r = site.run(&["plan", "-f", "manifests", "--detailed-exitcode"]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    for want in [
        "# snapshot.nightly will be created",
        "one crash-consistent snapshot of each of the 3 members of consistency group g",
        "+ group_snapshot \"nightly\" {",
        "+ consistency_group = \"g\"",
        "+ freeze            = none: no member is in use, so one snapshot after another holds one instant",
        "+ member            = snapshot.nightly.a of volume.a (1Mi)",
        "+ member            = snapshot.nightly.c of volume.c (1Mi)",
        "Plan: 1 to add, 0 to change, 0 to destroy.",
    ] {
        assert!(
            r.stdout.contains(want),
            "missing {want:?} in:\n{}",
            r.stdout
        );
    }
    site.apply();
    let objs = site.objects(home);
    for (i, m) in ["a", "b", "c"].iter().enumerate() {
        let snap = format!("snapshot.nightly.{m}");
        assert!(objs.contains_key(&snap), "{:?}", objs.keys());
        assert_eq!(sha256(&objs[&snap].1), sums[i], "{snap}");
    }
    assert_eq!(
        site.run(&["plan", "-f", "manifests", "--detailed-exitcode"])
            .code,
        0,
        "a group snapshot taken plans nothing"
    );

    // A member in use: a second group snapshot is refused, naming it.
    let held = fs::File::open(site.data(home, "volume.b")).unwrap();
    site.write(
        "second.yaml",
        &format!("{H}kind: Snapshot\nmetadata:\n  name: second\nspec:\n  consistencyGroup: g\n"),
    );
    let r = site.run(&["plan", "-f", "manifests", "--detailed-exitcode"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let comm = fs::read_to_string("/proc/self/comm").unwrap();
    let want = format!(
        "snapshot.second: on {home} a group snapshot is consistent only while no member is in use (it cannot hold their writes), and volume.b by pid {} ({}) in use",
        std::process::id(),
        comm.trim()
    );
    assert!(
        r.stdout.contains(&want),
        "missing {want:?} in:\n{}",
        r.stdout
    );
    drop(held);
    site.remove("second.yaml");

    // A new volume from one member of the group snapshot holds the member
    // as it was at the cut, not as it is now.
    fill(&site, home, "b", 9);
    site.write(
        "restored.yaml",
        &volume(
            "restored",
            "1Mi",
            "  source:\n    groupSnapshot: nightly\n    member: b\n",
        ),
    );
    site.apply();
    assert_eq!(sha256(&site.data(home, "volume.restored")), sums[1]);

    // The group snapshot goes (the volume made from it first drops its
    // create-time source, as with any snapshot): its members go together.
    site.write("restored.yaml", &volume("restored", "1Mi", ""));
    site.remove("nightly.yaml");
    let r = site.run(&["plan", "-f", "manifests", "--detailed-exitcode"]);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("Plan: 0 to add, 0 to change, 3 to destroy."),
        "{}",
        r.stdout
    );
    site.apply();
    let left: Vec<String> = site.objects(home).into_keys().collect();
    assert_eq!(
        left,
        ["volume.a", "volume.b", "volume.c", "volume.restored"]
    );
}

#[test]
fn a_group_snapshot_source_that_is_not_a_group_member_is_a_validation_error() {
    let site = site_with_group(&["a"]);
    site.write("solo.yaml", &volume("solo", "1Mi", ""));
    site.write(
        "snaps.yaml",
        &format!(
            "{H}kind: Snapshot\nmetadata:\n  name: nightly\nspec:\n  consistencyGroup: g\n---\n\
             {H}kind: Snapshot\nmetadata:\n  name: plain\nspec:\n  volume: solo\n"
        ),
    );
    site.write(
        "bad.yaml",
        &format!(
            "{}---\n{}---\n{}",
            volume(
                "x",
                "1Mi",
                "  source:\n    groupSnapshot: nightly\n    member: solo\n"
            ),
            volume(
                "y",
                "1Mi",
                "  source:\n    groupSnapshot: plain\n    member: solo\n"
            ),
            volume("z", "1Mi", "  source:\n    groupSnapshot: nightly\n"),
        ),
    );
    let r = site.run(&["validate", "-f", "manifests"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    for want in [
        "Volume/x: spec.source.member: Volume/solo is not a member of consistency group g, which Snapshot/nightly snapshots",
        "Volume/y: spec.source.groupSnapshot: Snapshot/plain is not a group snapshot (it has no consistencyGroup); use `snapshot: plain`",
        "Volume/z: spec.source.groupSnapshot: `groupSnapshot` needs `member`",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
    assert!(all.contains("bad.yaml:"), "{all}");
}
