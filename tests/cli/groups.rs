//! Consistency groups through the real binary on `file` back ends: members
//! placed as one unit, a member's delete refused until it leaves the group.

use std::fs;

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
