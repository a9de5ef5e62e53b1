//! The lab itself works: boot, the shipped binary, the scratch disks.

use crate::harness::Scenario;

#[test]
#[ignore = "needs the VM lab"]
fn cinderblock_version_runs_inside_the_vm() {
    let out = Scenario::new("version")
        .step("version", "cinderblock --version")
        .step("kernel", "uname -r")
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
    // 4 GiB in 512-byte sectors, then the serial, for each scratch disk
    assert_eq!(
        out.stdout("disks").lines().collect::<Vec<_>>(),
        ["8388608", "lab-pv1", "8388608", "lab-pv2"]
    );
    let boot = out.boot.expect("the guest reached LAB: ready");
    eprintln!("boot to ready: {:.2}s", boot.as_secs_f64());
}
