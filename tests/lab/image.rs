//! Volume-backed images on real LVM: an `Image` from a sparse raw file becomes a
//! thin and a thick image-volume whose content equals the file (the thick one reads
//! zeros where the file has holes, although its extents held 0xff garbage before),
//! and volumes made from each are clones with that content. Removed with
//! `deletionPolicy: Delete`, the thin image is refused while its thin clone (an LV
//! whose origin it is) exists, the thick one (its volume is a thick copy) is not;
//! with the clone gone too, both go. One VM boot.

use crate::harness::Scenario;

const H: &str = "apiVersion: cinderblock.dev/v1alpha1\n";

/// The two back ends, then: the images (unless `images` is false, with
/// `policy`), and the volumes named in `volumes` (made from the images while
/// they are declared; `policy` too).
fn manifests(images: bool, volumes: &[&str], policy: &str) -> String {
    let image = |name: &str, backend: &str| {
        format!(
            "---\n{H}kind: Image\nmetadata:\n  name: {name}\nspec:\n  diskFormat: raw\n  containerFormat: bare\n  source:\n    path: /root/base.raw\n  backend: {backend}\n  deletionPolicy: {policy}\n"
        )
    };
    let volume = |name: &str, img: &str| {
        let source = if images {
            format!("  source:\n    image: {img}\n")
        } else {
            String::new()
        };
        format!(
            "---\n{H}kind: Volume\nmetadata:\n  name: {name}\nspec:\n  size: 96Mi\n  deletionPolicy: {policy}\n{source}"
        )
    };
    let mut out = vec![
        format!(
            "{H}kind: Backend\nmetadata:\n  name: thin\nspec:\n  host: lab\n  lvm:\n    volumeGroup: vg0\n    thinPool: pool0\n    thinPoolSize: 256Mi\n"
        ),
        format!(
            "---\n{H}kind: Backend\nmetadata:\n  name: thick\nspec:\n  host: lab\n  lvm:\n    volumeGroup: vg1\n"
        ),
    ];
    if images {
        out.push(image("base-thin", "thin"));
        out.push(image("base-thick", "thick"));
    }
    for (v, img) in [("from-thin", "base-thin"), ("from-thick", "base-thick")] {
        if volumes.contains(&v) {
            out.push(volume(v, img));
        }
    }
    out.concat()
}

#[test]
#[ignore = "needs the VM lab"]
fn images_from_a_raw_file_on_thin_and_thick_lvs_and_volumes_cloned_from_them() {
    let both = ["from-thin", "from-thick"];
    let out = Scenario::new("image")
        .file("m/site.yaml", manifests(true, &both, "Retain"))
        .file("delete/site.yaml", manifests(true, &both, "Delete"))
        .file("no-images/site.yaml", manifests(false, &both, "Delete"))
        .file("no-thin-clone/site.yaml", manifests(false, &["from-thick"], "Delete"))
        .step(
            "setup",
            "pvcreate -y /dev/vda /dev/vdb >/dev/null && vgcreate vg0 /dev/vda >/dev/null && vgcreate vg1 /dev/vdb >/dev/null
             # garbage where the thick LVs will be allocated
             lvcreate -y -n junk -l 100%FREE vg1 >/dev/null
             tr '\\000' '\\377' < /dev/zero | dd of=/dev/vg1/junk bs=1M count=400 oflag=direct 2>/dev/null || true
             lvremove -y vg1/junk >/dev/null
             truncate -s 64M /root/base.raw
             dd if=/dev/urandom of=/root/base.raw bs=1M count=4 conv=notrunc 2>/dev/null
             dd if=/dev/urandom of=/root/base.raw bs=1M count=1 seek=32 conv=notrunc 2>/dev/null
             sha < /root/base.raw",
        )
        .step("apply", "cinderblock --state st --host lab apply -f m --auto-approve")
        .step_any("replan", "cinderblock --state st --host lab plan -f m --detailed-exitcode")
        .step(
            "content",
            "for n in base-thin base-thick from-thin from-thick; do
               p=$(lvs --noheadings -o lv_path @cinderblock.name=$n | tr -d ' ')
               echo \"$n $(sha_head $p 64) $(dd if=$p bs=1M skip=64 count=32 iflag=direct 2>/dev/null | tr -d '\\000' | wc -c)\"
             done
             lvs --noheadings -o lv_name,data_percent vg0 | grep image- | awk '{print \"thin-image-data%\", $2}'",
        )
        .step("delete_policy", "cinderblock --state st --host lab apply -f delete --auto-approve")
        .step_any("remove_images", "cinderblock --state st --host lab plan -f no-images")
        .step(
            "remove_clone_too",
            "cinderblock --state st --host lab apply -f no-thin-clone --auto-approve >&2
             for n in base-thin base-thick from-thin from-thick; do
               echo \"$n $(lvs --noheadings -o lv_name @cinderblock.name=$n | wc -l)\"
             done",
        )
        .run();
    let raw = out.stdout("setup").to_owned();
    assert_eq!(out.step("replan").rc, Some(0), "{}", out.report("replan"));
    let content = out.stdout("content");
    for n in ["base-thin", "base-thick", "from-thin", "from-thick"] {
        let line = content
            .lines()
            .find(|l| l.starts_with(&format!("{n} ")))
            .unwrap_or_else(|| panic!("no {n} in\n{content}"));
        let parts: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            parts[1], raw,
            "{n}: first 64 MiB differ from the raw file\n{content}"
        );
        // Past the image's end: zeros (volumes are 96 MiB; an image is 64).
        if n.starts_with("from-") {
            assert_eq!(
                parts[2], "0",
                "{n}: non-zero bytes past the image\n{content}"
            );
        }
    }
    // The thin image holds only the file's 5 MiB of data, not 64 MiB.
    let pct: f64 = content
        .lines()
        .find_map(|l| l.strip_prefix("thin-image-data% "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no data% in\n{content}"));
    assert!(pct < 15.0, "thin image is {pct} % mapped\n{content}");

    // Removed with Delete: the thin image is held by its thin clone, the
    // thick one goes (its volume is a copy); nothing applies with an error.
    assert_eq!(
        out.step("remove_images").rc,
        Some(1),
        "{}",
        out.report("remove_images")
    );
    let plan = out.stdout("remove_images");
    assert!(
        plan.contains("Error: image.base-thin: cannot be deleted while volumes made from it may share its data (volume.from-thin)"),
        "{plan}"
    );
    assert!(
        plan.contains("# image.base-thick will be destroyed"),
        "{plan}"
    );
    assert!(
        !plan.contains("image.base-thin will be destroyed"),
        "{plan}"
    );
    // With the clone removed too, both images go; the thick copy stays.
    assert_eq!(
        out.stdout("remove_clone_too"),
        "base-thin 0\nbase-thick 0\nfrom-thin 0\nfrom-thick 1",
        "{}",
        out.report("remove_clone_too")
    );
}
