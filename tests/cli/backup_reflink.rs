//! Changed-block tracking of `file` volumes on a reflink file system: a real
//! XFS (`mkfs.xfs -m reflink=1`) on a loop device of this host, mounted
//! under the site's back end. Needs root, loop devices and xfsprogs (tests/run.sh
//! installs it); elsewhere it fails, naming what is missing.

// The test sets up its file system as an admin would: losetup, mkfs, mount.
#![allow(clippy::disallowed_methods)]

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::backup::{KIB, MIB, Site, fill, noise, ok, sha256};

/// An XFS file system with reflink on a loop device, mounted at `at`;
/// unmounted and detached on drop.
struct Xfs {
    image: PathBuf,
    device: String,
    at: PathBuf,
}

fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Xfs {
    fn mount(image: PathBuf, at: &Path) -> Self {
        File::create(&image).unwrap().set_len(1 << 30).unwrap();
        let image_str = image.to_str().unwrap();
        let device = sh("losetup", &["--find", "--show", image_str]);
        let xfs = Xfs {
            image,
            device,
            at: at.to_owned(),
        };
        sh("mkfs.xfs", &["-q", "-f", "-m", "reflink=1", &xfs.device]);
        sh("mount", &[&xfs.device, at.to_str().unwrap()]);
        xfs
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
        let _ = fs::remove_file(&self.image);
    }
}

/// The kept bases in the back end's metadata directory.
fn bases(site: &Site) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(site.path().join("volumes/.cinderblock"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".backup-base-"))
        .collect();
    v.sort();
    v
}

fn json_run(site: &Site, args: &[&str]) -> serde_json::Value {
    let run = site.cbf(args);
    ok(&run);
    serde_json::from_str(run.stdout.trim()).unwrap()
}

#[test]
#[ignore = "needs root, loop devices and mkfs.xfs (tests/run.sh installs xfsprogs)"]
fn incrementals_on_xfs_read_only_the_blocks_no_longer_shared_with_the_last_backup() {
    let site = Site::new("  retention: {keepLast: 10}");
    // The image lives beside the site (not on the XFS it holds).
    let _xfs = Xfs::mount(site.path().join("xfs.img"), &site.path().join("volumes"));
    let vol = site.create_volume("data", 64 * MIB);
    fill(&vol);

    let full = json_run(&site, &["backup", "run", "data", "--full", "--json"]);
    assert_eq!(full["pointInTime"], "reflink", "{full}");
    assert_eq!(full["read"]["method"], "allocatedScan", "{full}");
    let full_id = full["id"].as_str().unwrap().to_owned();
    let sum_full = sha256(&vol);
    // Its reflinked copy is kept as the next incremental's base.
    assert_eq!(
        bases(&site),
        vec![format!(
            ".backup-base-{}-{}",
            volume_uuid(&vol).simple(),
            full_id.replace('-', "")
        )]
    );

    // 1 MiB rewritten, 4 KiB rewritten inside a chunk, one chunk punched
    // out (a discard), 8 KiB written into a hole.
    let f = File::options().write(true).open(&vol).unwrap();
    f.write_all_at(&noise(21, MIB), 20 * MIB).unwrap();
    f.write_all_at(&noise(23, 4 * KIB), 40 * MIB + 16 * KIB)
        .unwrap();
    nix::fcntl::fallocate(
        &f,
        nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
            | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        i64::try_from(2 * MIB).unwrap(),
        i64::try_from(64 * KIB).unwrap(),
    )
    .unwrap();
    f.write_all_at(&noise(25, 8 * KIB), 50 * MIB).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let sum_inc = sha256(&vol);
    assert_ne!(sum_full, sum_inc);

    let inc = json_run(&site, &["backup", "run", "data", "--incremental", "--json"]);
    assert_eq!(inc["parent"].as_str(), Some(full_id.as_str()), "{inc}");
    assert_eq!(inc["read"]["method"], "changedRanges", "{inc}");
    assert!(
        inc["read"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("FIEMAP against the parent's reflinked copy")),
        "{inc}"
    );
    // Exactly the chunks of 64 KiB the changes touched: 16 + 1 + 1 + 1,
    // not the volume's 12 MiB of data.
    assert_eq!(inc["readBytes"].as_u64(), Some(19 * 64 * KIB), "{inc}");
    let inc_id = inc["id"].as_str().unwrap().to_owned();
    // The base moved on to the incremental's copy.
    assert_eq!(bases(&site).len(), 1);
    assert!(bases(&site)[0].ends_with(&inc_id.replace('-', "")));

    // Nothing changed since: nothing is read, and no chunk is new.
    let same = json_run(&site, &["backup", "run", "data", "--incremental", "--json"]);
    assert_eq!(same["readBytes"], 0, "{same}");
    assert_eq!(same["newChunks"], 0, "{same}");
    let same_id = same["id"].as_str().unwrap().to_owned();

    // Every backup restores bit-exact.
    for (id, name, sum) in [
        (&full_id, "r-full", &sum_full),
        (&inc_id, "r-inc", &sum_inc),
        (&same_id, "r-same", &sum_inc),
    ] {
        ok(&site.cbf(&["backup", "restore", id, "--to", name]));
        assert_eq!(&sha256(&site.volume_path(name).unwrap()), sum, "{name}");
    }
    // The catalogue records how each run found its changes.
    let cat: serde_json::Value =
        serde_json::from_slice(&fs::read(site.path().join("state/backup-catalog.json")).unwrap())
            .unwrap();
    let entry = |id: &str| cat["backups"][id].clone();
    assert_eq!(entry(&full_id)["read"]["method"], "allocatedScan", "{cat}");
    assert_eq!(entry(&inc_id)["read"]["method"], "changedRanges", "{cat}");
    assert!(
        entry(&inc_id)["read"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("FIEMAP")),
        "{cat}"
    );
    assert_eq!(entry(&inc_id)["pointInTime"], "reflink", "{cat}");

    // A deleted volume leaves no base behind.
    let be = site.backend();
    be.delete(volume_uuid(&vol)).unwrap();
    assert!(bases(&site).is_empty(), "{:?}", bases(&site));
    assert!(site.volume_path("data").is_none());
}

/// The uuid in a volume file's name (`volume-<uuid>`).
fn volume_uuid(path: &Path) -> uuid::Uuid {
    let name = path.file_name().unwrap().to_str().unwrap();
    name.strip_prefix("volume-").unwrap().parse().unwrap()
}
