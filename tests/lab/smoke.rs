//! The lab itself works: boot time, the shipped binary, scenario files, scratch disks.

use std::time::Duration;

use crate::harness::Scenario;

const MANIFEST: &str = "apiVersion: cinderblock.dev/v1alpha1\nkind: Volume\nmetadata:\n  name: vol-a\nspec:\n  size: 1Gi\n";

#[test]
#[ignore = "needs the VM lab"]
fn cinderblock_version_runs_inside_the_vm() {
    let out = Scenario::new("version")
        .timeout(Duration::from_secs(120))
        .file("manifests/a.yaml", MANIFEST)
        .step("version", "cinderblock --version")
        .step("kernel", "uname -r")
        .step("manifest", "cat manifests/a.yaml | sha")
        .step(
            "disks",
            "for d in vda vdb; do cat /sys/block/$d/size; cat /sys/block/$d/serial; echo; done",
        )
        .run();
    assert_eq!(out.step("version").stdout, "cinderblock 0.1.0\n");
    assert!(
        out.stdout("kernel").ends_with("-cloud-amd64"),
        "{}",
        out.stdout("kernel")
    );
    // sha256 of MANIFEST (computed on the host): the file arrived intact
    assert_eq!(
        out.stdout("manifest"),
        "62d4f44ece3ac80e92dff28c10f3e370cf5d8f364811eae2fb19eb2780476214"
    );
    // 4 GiB in 512-byte sectors, then the serial, for each scratch disk
    assert_eq!(
        out.stdout("disks").lines().collect::<Vec<_>>(),
        ["8388608", "lab-pv1", "8388608", "lab-pv2"]
    );
    let boot = out.boot.expect("the guest reached LAB: ready");
    eprintln!(
        "boot to ready: {:.2}s, whole run {:.2}s",
        boot.as_secs_f64(),
        out.wall.as_secs_f64()
    );
    // the target is < 15 s; 60 s leaves room for a loaded CI host and still catches a
    // boot that waits on a timeout (a missing disk, a module that hangs)
    assert!(boot < Duration::from_secs(60), "boot took {boot:?}");
}
