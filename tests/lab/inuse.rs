//! Consumers of LVs at plan time, on real LVM: a volume whose LV a process
//! holds open, then one with a mounted file system, is never planned for
//! deletion: `plan` names the holder (pid and command, then the mount point),
//! `apply` changes nothing, and once the holder lets go the same manifests
//! delete it. One VM boot.

use crate::harness::Scenario;

const H: &str = "apiVersion: cinderblock.dev/v1alpha1\n";

/// `cb` runs cinderblock on this scenario's state; `dev NAME` is the device
/// of the LV tagged `cinderblock.name=NAME`.
const GUEST_LIB: &str = r#"
cb() { cinderblock --state st --host lab "$@"; }
dev() { lvs --noheadings -o lv_path "@cinderblock.name=$1" | tr -d ' '; }
"#;

fn site(with_busy: bool) -> String {
    let busy = if with_busy {
        format!(
            "---\n{H}kind: Volume\nmetadata:\n  name: busy\nspec:\n  size: 32Mi\n  backend: thick\n  deletionPolicy: Delete\n"
        )
    } else {
        String::new()
    };
    format!(
        "{H}kind: Backend\nmetadata:\n  name: thick\nspec:\n  host: lab\n  lvm:\n    volumeGroup: vg0\n\
         ---\n{H}kind: Volume\nmetadata:\n  name: keep\nspec:\n  size: 16Mi\n  backend: thick\n{busy}"
    )
}

#[test]
#[ignore = "needs the VM lab"]
fn an_open_lv_is_not_planned_for_deletion_and_the_plan_names_its_holder() {
    let out = Scenario::new("inuse")
        .file("lib-inuse.sh", GUEST_LIB)
        .file("v1/site.yaml", site(true))
        .file("v2/site.yaml", site(false))
        .step(
            "setup",
            "pvcreate -y /dev/vda >/dev/null && vgcreate vg0 /dev/vda >/dev/null",
        )
        .step("apply", ". ./lib-inuse.sh; cb apply -f v1 --auto-approve")
        .step(
            "hold",
            ". ./lib-inuse.sh
             sleep 600 < $(dev busy) > /dev/null 2>&1 &
             echo $! > /tmp/holder; sleep 0.2; cat /tmp/holder",
        )
        .step_any("plan_held", ". ./lib-inuse.sh; cb plan -f v2")
        .step_any(
            "apply_held",
            ". ./lib-inuse.sh; cb apply -f v2 --auto-approve",
        )
        .step(
            "mount",
            ". ./lib-inuse.sh
             kill $(cat /tmp/holder); sleep 0.2
             mkfs.ext4 -q $(dev busy) && mkdir -p /mnt/busy && mount $(dev busy) /mnt/busy
             lvs --noheadings -o lv_name vg0 | grep -c volume-",
        )
        .step_any("plan_mounted", ". ./lib-inuse.sh; cb plan -f v2")
        .step(
            "release",
            ". ./lib-inuse.sh; umount /mnt/busy
             cb apply -f v2 --auto-approve >&2
             lvs --noheadings -o lv_name vg0 | grep -c volume-",
        )
        .run();

    let rc = |s: &str| out.step(s).rc.unwrap_or(-1);
    let pid = out.stdout("hold");
    assert_eq!(rc("plan_held"), 1, "{}", out.report("plan_held"));
    let plan = out.stdout("plan_held");
    // busybox names the command (`sleep`, or `sh` for a forked applet).
    let want = format!(
        "volume.busy: its manifest was removed and its deletionPolicy is Delete, but it is in use by pid {pid} ("
    );
    let line = plan.lines().find(|l| l.contains(&want));
    assert!(
        line.is_some_and(|l| l
            .ends_with("); stop or detach it, then plan again (or declare it again to keep it)")),
        "{}",
        out.report("plan_held")
    );
    assert!(!plan.contains("destroy"), "{plan}");
    assert_eq!(rc("apply_held"), 1, "{}", out.report("apply_held"));
    // Still there: two volumes of ours before the mount.
    assert_eq!(out.stdout("mount"), "2", "{}", out.report("mount"));
    assert_eq!(rc("plan_mounted"), 1, "{}", out.report("plan_mounted"));
    assert!(
        out.stdout("plan_mounted")
            .contains("but it is in use by a file system mounted at /mnt/busy; stop or detach it"),
        "{}",
        out.report("plan_mounted")
    );
    // Let go: the same manifests delete it.
    assert_eq!(out.stdout("release"), "1", "{}", out.report("release"));
}
