//! Volume-backed images on `file` back ends: an `Image` from a raw file is
//! copied in sparsely, volumes made from it are clones with its content, a
//! non-raw file is refused with the conversion to run, and an image-volume
//! whose copy was never recorded as complete is made again.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::plan::{H, Site, backend, volume};

fn image(name: &str, path: &Path) -> String {
    format!(
        "{H}kind: Image\nmetadata:\n  name: {name}\nspec:\n  diskFormat: raw\n  containerFormat: bare\n  source:\n    path: {}\n  backend: local\n",
        path.display()
    )
}

/// A 64 MiB raw file holding 4 MiB of data at 0 and 1 MiB at 32 MiB.
fn raw_file(path: &Path) -> Vec<u8> {
    let mut f = fs::File::create(path).unwrap();
    f.set_len(64 << 20).unwrap();
    let a: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    f.write_all(&a).unwrap();
    f.seek(SeekFrom::Start(32 << 20)).unwrap();
    f.write_all(&vec![0x42; 1 << 20]).unwrap();
    drop(f);
    fs::read(path).unwrap()
}

#[test]
fn an_image_from_a_raw_file_is_copied_sparsely_and_volumes_clone_it() {
    let site = Site::new();
    let pool = site.path().join("pool");
    fs::create_dir_all(&pool).unwrap();
    let raw = site.path().join("base.raw");
    let content = raw_file(&raw);
    site.write("backend.yaml", &backend("local", &pool, ""));
    site.write("image.yaml", &image("base", &raw));
    site.write(
        "vm.yaml",
        &volume("vm1", "128Mi", "  source:\n    image: base\n"),
    );

    let plan = site.run(&["plan", "-f", "manifests"]);
    assert_eq!(plan.code, 0, "{}", plan.stdout);
    assert!(
        plan.stdout
            .contains(&format!("+ content = from {}", raw.display())),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("+ source  = image.base"),
        "{}",
        plan.stdout
    );
    site.apply();
    let objects = site.objects("pool");
    let img = &objects["image.base"].1;
    assert_eq!(fs::read(img).unwrap(), content);
    // Only the 5 MiB of data were written.
    let allocated = fs::metadata(img).unwrap().blocks() * 512;
    assert!(allocated <= 6 << 20, "{allocated} bytes allocated");
    let vm = fs::read(&objects["volume.vm1"].1).unwrap();
    assert_eq!(vm.len(), 128 << 20);
    assert_eq!(&vm[..64 << 20], &content[..]);
    assert!(vm[64 << 20..].iter().all(|&b| b == 0));
    assert_eq!(site.plan_code(), 0);

    // A new state directory: the image-volume's copy is not known to be
    // complete, so it is made again (the volume made from it stays).
    fs::rename(site.path().join("state"), site.path().join("old-state")).unwrap();
    let r = site.run(&["plan", "-f", "manifests", "--detailed-exitcode"]);
    assert_eq!(r.code, 3, "{}", r.stdout);
    assert!(
        r.stdout.contains("its copy was never recorded as complete"),
        "{}",
        r.stdout
    );
    site.apply();
    assert_eq!(site.plan_code(), 0);
    let objects = site.objects("pool");
    assert_eq!(fs::read(&objects["image.base"].1).unwrap(), content);
    assert_eq!(
        &fs::read(&objects["volume.vm1"].1).unwrap()[..64 << 20],
        &content[..]
    );
}

#[test]
fn a_qcow2_file_is_refused_with_the_conversion_to_run() {
    let site = Site::new();
    let pool = site.path().join("pool");
    fs::create_dir_all(&pool).unwrap();
    let q = site.path().join("disk.qcow2");
    let mut bytes = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    bytes.resize(4096, 0);
    fs::write(&q, bytes).unwrap();
    site.write("backend.yaml", &backend("local", &pool, ""));
    site.write("image.yaml", &image("base", &q));
    let r = site.run(&["apply", "-f", "manifests", "--auto-approve"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains(&format!(
            "image.base: spec.source.path: {} is a qcow2 image, not raw (diskFormat: raw): convert it first with `qemu-img convert -O raw",
            q.display()
        )),
        "{}",
        r.stdout
    );
    assert!(site.objects("pool").is_empty());
}

#[test]
fn a_removed_image_is_forgotten_or_deleted_but_never_under_its_clones() {
    let site = Site::new();
    let pool = site.path().join("pool");
    fs::create_dir_all(&pool).unwrap();
    let raw = site.path().join("base.raw");
    raw_file(&raw);
    site.write("backend.yaml", &backend("local", &pool, ""));
    site.write("image.yaml", &image("base", &raw));
    site.write(
        "vm.yaml",
        &volume(
            "vm1",
            "128Mi",
            "  deletionPolicy: Delete\n  source:\n    image: base\n",
        ),
    );
    site.apply();
    let kept = site.objects("pool")["image.base"].1.clone();

    // Removed with the default Retain: forgotten, its data kept. (The
    // volume's create-time source goes too: it names the image.)
    site.write(
        "vm.yaml",
        &volume("vm1", "128Mi", "  deletionPolicy: Delete\n"),
    );
    site.remove("image.yaml");
    let r = site.run(&["plan", "-f", "manifests", "--detailed-exitcode"]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(
        r.stdout.contains("# image.base will be forgotten"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("its deletionPolicy is Retain"),
        "{}",
        r.stdout
    );

    // Declared again with Delete: the policy is recorded...
    site.write(
        "image.yaml",
        &(image("base", &raw) + "  deletionPolicy: Delete\n"),
    );
    let r = site.run(&["plan", "-f", "manifests"]);
    assert!(
        r.stdout.contains("~ deletionPolicy = Retain -> Delete"),
        "{}",
        r.stdout
    );
    site.apply();
    // ...and removing it is refused while vm1, its clone, may share its data.
    site.remove("image.yaml");
    let r = site.run(&["apply", "-f", "manifests", "--auto-approve"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout.contains("image.base: cannot be deleted while volumes made from it may share its data (volume.vm1); delete them first, or keep the image-volume with deletionPolicy: Retain"),
        "{}",
        r.stdout
    );
    assert!(kept.exists());
    // The clone deleted too: both go.
    site.remove("vm.yaml");
    site.write("other.yaml", &volume("other", "16Mi", ""));
    let r = site.run(&["plan", "-f", "manifests", "--detailed-exitcode"]);
    assert_eq!(r.code, 3, "{}", r.stdout);
    assert!(
        r.stdout.contains("# image.base will be destroyed"),
        "{}",
        r.stdout
    );
    site.apply();
    let objects = site.objects("pool");
    assert!(
        !objects.contains_key("image.base") && !objects.contains_key("volume.vm1"),
        "{objects:?}"
    );
    assert!(!kept.exists());
    assert_eq!(site.plan_code(), 0);
}
