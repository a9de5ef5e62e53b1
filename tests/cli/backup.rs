//! `backup …` end to end: the real binary, real sparse volume files made by
//! the `file` driver, a real repository in a temp dir. Each test checks what
//! an admin would: sha256 of restored volumes, allocated blocks, exit codes,
//! the words of the report.

// Tests call sha256sum the way an admin would check a restore.
#![allow(clippy::disallowed_methods)]

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use cinderblock::file::{Allocation, FileBackend, FileDriver, NewObject, ObjKind};
use tempfile::TempDir;
use uuid::Uuid;

use crate::support::{Run, run_in};

pub(crate) const MIB: u64 = 1 << 20;
pub(crate) const KIB: u64 = 1 << 10;

/// A site: one file back end, one volume type, a backup policy, a state
/// directory, all in a temp dir.
pub(crate) struct Site {
    dir: TempDir,
}

impl Site {
    pub(crate) fn new(retention: &str) -> Self {
        Self::with_target(retention, "{path: ROOT/repo}")
    }

    /// A site whose policy's `target` is `target` (`ROOT` is the temp dir).
    pub(crate) fn with_target(retention: &str, target: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("volumes")).unwrap();
        let root = dir.path().display().to_string();
        let target = target.replace("ROOT", &root);
        fs::write(
            dir.path().join("site.yaml"),
            format!(
                "apiVersion: cinderblock.dev/v1alpha1
kind: Backend
metadata: {{name: local}}
spec:
  file: {{path: {root}/volumes}}
---
apiVersion: cinderblock.dev/v1alpha1
kind: VolumeType
metadata: {{name: standard}}
spec:
  extraSpecs: {{volume_backend_name: local}}
---
apiVersion: cinderblock.dev/v1alpha1
kind: BackupPolicy
metadata: {{name: nightly}}
spec:
  schedule: \"0 2 * * *\"
  target: {target}
{retention}
---
apiVersion: cinderblock.dev/v1alpha1
kind: Volume
metadata: {{name: data}}
spec:
  size: 64Mi
  volumeType: standard
  backupPolicy: nightly
"
            ),
        )
        .unwrap();
        Self { dir }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn backend(&self) -> FileBackend {
        FileBackend::new(self.path().join("volumes"), "local")
    }

    pub(crate) fn repo(&self) -> PathBuf {
        self.path().join("repo")
    }

    /// `cinderblock --state STATE ARGS -f site.yaml` (for commands taking -f).
    pub(crate) fn cb(&self, state: &str, args: &[&str]) -> Run {
        let mut v = vec!["--state", state];
        v.extend_from_slice(args);
        run_in(self.path(), &v)
    }

    pub(crate) fn cbf(&self, args: &[&str]) -> Run {
        let mut v = args.to_vec();
        v.extend_from_slice(&["-f", "site.yaml"]);
        self.cb("state", &v)
    }

    /// Creates the volume `name` through the file driver; returns its path.
    pub(crate) fn create_volume(&self, name: &str, size: u64) -> PathBuf {
        let be = self.backend();
        let uuid = Uuid::new_v4();
        be.create(&NewObject {
            uuid,
            name,
            kind: ObjKind::Volume,
            size,
            allocation: Allocation::Sparse,
            source: None,
        })
        .unwrap();
        be.data_path(ObjKind::Volume, uuid)
    }

    /// The data file of the volume object named `name`, if any.
    pub(crate) fn volume_path(&self, name: &str) -> Option<PathBuf> {
        let be = self.backend();
        be.discover()
            .unwrap()
            .objects
            .into_iter()
            .find(|o| o.meta.name == name && o.meta.kind == ObjKind::Volume)
            .map(|o| be.data_path(ObjKind::Volume, o.meta.uuid))
    }
}

pub(crate) fn ok(run: &Run) {
    assert_eq!(
        run.code, 0,
        "exit code\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
}

/// The backup id printed by `backup run`.
pub(crate) fn backup_id(run: &Run) -> String {
    ok(run);
    run.stdout
        .strip_prefix("backup ")
        .and_then(|s| s.split(':').next())
        .unwrap()
        .to_owned()
}

pub(crate) fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)[..64].to_owned()
}

pub(crate) fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

/// Pseudo-random bytes; odd seeds give distinct streams (`seed | 1`).
pub(crate) fn noise(seed: u64, len: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[3]
        })
        .collect()
}

pub(crate) fn text(len: u64) -> Vec<u8> {
    (0..)
        .flat_map(|i: u64| {
            format!("2026-01-02 host-{} volume {} extended\n", i % 7, i * 31).into_bytes()
        })
        .take(usize::try_from(len).unwrap())
        .collect()
}

/// 64 MiB volume with 12 MiB of data in 5 extents, some not chunk-aligned.
pub(crate) fn fill(path: &Path) {
    let f = File::options().write(true).open(path).unwrap();
    f.write_all_at(&noise(1, 4 * MIB), 0).unwrap();
    f.write_all_at(&text(3 * MIB), 20 * MIB).unwrap();
    f.write_all_at(&noise(2, 4 * MIB), 40 * MIB + 12 * KIB)
        .unwrap();
    f.write_all_at(&noise(5, 5000), 60 * MIB + 777).unwrap();
    f.write_all_at(&text(MIB - 4 * KIB), 63 * MIB).unwrap();
    f.sync_all().unwrap();
}

/// Changes about 1 % of the 4 KiB blocks (random data over data and holes),
/// zeroes one 4 KiB block and one whole 64 KiB chunk that held data.
pub(crate) fn change(path: &Path) {
    let f = File::options().write(true).open(path).unwrap();
    let blocks = 64 * MIB / (4 * KIB);
    let mut x = 0x5eed_u64;
    for i in 0..blocks / 100 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let block = x % blocks;
        f.write_all_at(&noise(2 * i + 11, 4 * KIB), block * 4 * KIB)
            .unwrap();
    }
    f.write_all_at(&[0u8; 4096], 20 * MIB + 8 * KIB).unwrap();
    f.write_all_at(&vec![0u8; 64 * 1024], 2 * MIB).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn full_and_incremental_restore_identical_and_sparse() {
    let site = Site::new("  retention: {keepLast: 5}");
    let vol = site.create_volume("data", 64 * MIB);
    fill(&vol);
    let sum_full = sha256(&vol);
    let alloc_full = allocated(&vol);

    let run = site.cbf(&["backup", "run", "data", "--full"]);
    let full = backup_id(&run);
    assert!(run.stdout.contains("full of data"), "{}", run.stdout);
    assert!(run.stdout.contains("in 5 range(s)"), "{}", run.stdout);

    change(&vol);
    let sum_inc = sha256(&vol);
    assert_ne!(sum_full, sum_inc);
    let run = site.cbf(&["backup", "run", "data", "--incremental"]);
    let inc = backup_id(&run);
    assert!(run.stdout.contains("incremental of data"), "{}", run.stdout);
    // The incremental stored only what changed: some 160 chunks of 64 KiB
    // at most (1 % of 4 KiB blocks, each in its own chunk), not the 12 MiB.
    let stored: u64 = run
        .stdout
        .split(" new chunks")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        stored > 0 && stored <= 170,
        "new chunks: {stored}\n{}",
        run.stdout
    );

    let list = site.cb("state", &["backup", "list", "data"]);
    ok(&list);
    assert!(list.stdout.contains(&full) && list.stdout.contains(&inc));
    assert!(list.stdout.contains("full") && list.stdout.contains("incremental"));
    assert!(
        list.stdout.contains(&full.replace('-', "")[..8]),
        "parent shown"
    );

    for (id, name, sum) in [
        (&full, "data-full", &sum_full),
        (&inc, "data-inc", &sum_inc),
    ] {
        let run = site.cbf(&["backup", "restore", id, "--to", name]);
        ok(&run);
        assert!(run.stdout.contains("verified"), "{}", run.stdout);
        let restored = site.volume_path(name).expect("restored volume exists");
        assert_eq!(&sha256(&restored), sum, "{name}");
        assert_eq!(fs::metadata(&restored).unwrap().len(), 64 * MIB);
        // As sparse as the source: 52 MiB of holes stay holes.
        assert!(
            allocated(&restored) <= alloc_full + 2 * MIB,
            "{name}: {} allocated vs source {}",
            allocated(&restored),
            alloc_full
        );
    }
    // The zeroed block and chunk read back as zeros from the incremental.
    let inc_file = File::open(site.volume_path("data-inc").unwrap()).unwrap();
    let mut buf = vec![1u8; 4096];
    inc_file
        .read_exact_at(&mut buf, 20 * MIB + 8 * KIB)
        .unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    let mut chunk = vec![1u8; 64 * 1024];
    inc_file.read_exact_at(&mut chunk, 2 * MIB).unwrap();
    assert!(chunk.iter().all(|&b| b == 0));
    // Let go of it: a volume something holds open is never restored over.
    drop(inc_file);

    // Restoring onto an existing volume needs --overwrite, and then works.
    let run = site.cbf(&["backup", "restore", &full, "--to", "data-inc"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("pass --overwrite"), "{}", run.stderr);
    let run = site.cbf(&[
        "backup",
        "restore",
        &full,
        "--to",
        "data-inc",
        "--overwrite",
    ]);
    ok(&run);
    assert_eq!(sha256(&site.volume_path("data-inc").unwrap()), sum_full);

    let run = site.cb("state", &["backup", "verify", "--all"]);
    ok(&run);
    assert_eq!(run.stdout.matches("ok ").count(), 2, "{}", run.stdout);
}

/// The first pack file of the repository.
fn first_pack(repo: &Path) -> PathBuf {
    let mut packs: Vec<PathBuf> = fs::read_dir(repo.join("data"))
        .unwrap()
        .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    packs.sort();
    packs.into_iter().next().expect("a pack")
}

#[test]
fn flipped_byte_is_reported_and_restore_writes_nothing() {
    let site = Site::new("");
    let vol = site.create_volume("data", 64 * MIB);
    fill(&vol);
    let id = backup_id(&site.cbf(&["backup", "run", "data"]));
    let pack = first_pack(&site.repo());
    let f = File::options().read(true).write(true).open(&pack).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 1000).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], 1000).unwrap();
    drop(f);

    let run = site.cb("state", &["backup", "verify", &id]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("DAMAGED"), "{}", run.stdout);
    assert!(
        run.stdout.contains("0 missing, 1 corrupt chunk(s)"),
        "{}",
        run.stdout
    );
    let list = site.cb("state", &["backup", "list"]);
    assert!(list.stdout.contains("damaged"), "{}", list.stdout);

    let run = site.cbf(&["backup", "restore", &id, "--to", "copy"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("is damaged"), "{}", run.stderr);
    assert!(run.stderr.contains("1 corrupt"), "{}", run.stderr);
    assert!(site.volume_path("copy").is_none(), "no wrong volume left");
    let leftovers: Vec<_> = fs::read_dir(site.path().join("volumes"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("volume-"))
        .collect();
    assert_eq!(leftovers.len(), 1, "only the source: {leftovers:?}");
}

#[test]
fn missing_chunk_is_reported_and_restore_writes_nothing() {
    let site = Site::new("");
    let vol = site.create_volume("data", 64 * MIB);
    fill(&vol);
    let id = backup_id(&site.cbf(&["backup", "run", "data"]));
    fs::remove_file(first_pack(&site.repo())).unwrap();

    let run = site.cb("state", &["backup", "verify", "--all"]);
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("DAMAGED"), "{}", run.stdout);
    assert!(run.stdout.contains("missing, 0 corrupt"), "{}", run.stdout);

    let run = site.cbf(&["backup", "restore", &id, "--to", "copy"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("missing and 0 corrupt"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("nothing was restored"),
        "{}",
        run.stderr
    );
    assert!(site.volume_path("copy").is_none());

    // A full backup stores the lost chunks again (the volume still holds
    // them), which repairs the old backup too: same chunks, same ids.
    let run = site.cbf(&["backup", "run", "data", "--full"]);
    ok(&run);
    assert!(!run.stdout.contains("(0 new chunks"), "{}", run.stdout);
    let run = site.cb("state", &["backup", "verify", "--all"]);
    ok(&run);
    assert_eq!(run.stdout.matches("ok ").count(), 2, "{}", run.stdout);
    ok(&site.cbf(&["backup", "restore", &id, "--to", "copy"]));
    assert_eq!(sha256(&site.volume_path("copy").unwrap()), sha256(&vol));
}

#[test]
fn state_directory_lost_then_scan_restores_identical() {
    let site = Site::new("");
    let vol = site.create_volume("data", 64 * MIB);
    fill(&vol);
    let sum = sha256(&vol);
    let id = backup_id(&site.cbf(&["backup", "run", "data"]));
    fs::remove_dir_all(site.path().join("state")).unwrap();

    let run = site.cb("state", &["backup", "list"]);
    ok(&run);
    assert!(run.stdout.contains("no backups"), "{}", run.stdout);
    let repo = site.repo().display().to_string();
    let run = site.cb("state", &["backup", "import", "--scan", &repo]);
    ok(&run);
    assert!(run.stdout.contains("1 backup(s)"), "{}", run.stdout);
    let run = site.cb("state", &["backup", "list"]);
    assert!(run.stdout.contains(&id), "{}", run.stdout);

    ok(&site.cbf(&["backup", "restore", &id[..8], "--to", "again"]));
    assert_eq!(sha256(&site.volume_path("again").unwrap()), sum);
}

#[test]
fn export_from_one_state_dir_import_into_another_restores_identical() {
    let site = Site::new("");
    let vol = site.create_volume("data", 64 * MIB);
    fill(&vol);
    let sum = sha256(&vol);
    let id = backup_id(&site.cbf(&["backup", "run", "data"]));
    let run = site.cb("state", &["backup", "export", &id]);
    ok(&run);
    assert!(
        run.stdout
            .contains("\"format\": \"cinderblock.backup-record\"")
    );
    fs::write(site.path().join("record.json"), &run.stdout).unwrap();

    // The manifest is even gone from the repository: the record brings it back.
    let manifest = fs::read_dir(site.repo().join("backups"))
        .unwrap()
        .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    fs::remove_file(manifest).unwrap();

    let run = site.cb("other-state", &["backup", "import", "record.json"]);
    ok(&run);
    assert!(run.stdout.contains("written back"), "{}", run.stdout);
    let run = site.cb(
        "other-state",
        &[
            "backup",
            "restore",
            &id,
            "--to",
            "elsewhere",
            "-f",
            "site.yaml",
        ],
    );
    ok(&run);
    assert_eq!(sha256(&site.volume_path("elsewhere").unwrap()), sum);

    // A record for another repository is refused.
    let forged = fs::read_to_string(site.path().join("record.json"))
        .unwrap()
        .replacen("\"id\": \"", "\"id\": \"0", 1);
    fs::write(site.path().join("forged.json"), forged).unwrap();
    let run = site.cb("third", &["backup", "import", "forged.json"]);
    assert_eq!(run.code, 1);
}

#[test]
fn prune_keeps_what_retention_says_and_frees_chunks() {
    let site = Site::new("  retention: {keepLast: 2}");
    let vol = site.create_volume("data", 64 * MIB);
    let mut ids = Vec::new();
    for round in 0..3u64 {
        let f = File::options().write(true).open(&vol).unwrap();
        // A fixed 8 MiB, and 2 MiB that each round overwrites: the first
        // backup's 2 MiB (32 chunks) are its own.
        f.write_all_at(&noise(99, 8 * MIB), 32 * MIB).unwrap();
        f.write_all_at(&noise(100 + 2 * round, 2 * MIB), 0).unwrap();
        drop(f);
        ids.push(backup_id(&site.cbf(&["backup", "run", "data"])));
    }
    let run = site.cbf(&["backup", "prune", "--dry-run"]);
    ok(&run);
    assert!(
        run.stdout.contains("keep 2 of 3 backup(s)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(&format!("would forget {}", ids[0])),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(&format!("keep         {}", ids[2])),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("last, last successful"),
        "{}",
        run.stdout
    );

    assert!(
        run.stdout.contains("dropping 32 unused chunk(s), 2.00 MiB"),
        "{}",
        run.stdout
    );
    let data_bytes = || -> u64 {
        files_below(&site.repo().join("data"))
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum()
    };
    let before = data_bytes();

    let run = site.cbf(&["backup", "prune"]);
    ok(&run);
    assert!(run.stdout.contains("forgot 1 backup(s)"), "{}", run.stdout);
    assert!(
        run.stdout.contains("dropping 32 unused chunk(s), 2.00 MiB"),
        "{}",
        run.stdout
    );
    let list = site.cb("state", &["backup", "list"]);
    assert!(!list.stdout.contains(&ids[0]) && list.stdout.contains(&ids[1]));
    // Its pack was rewritten without those 2 MiB of random data.
    assert!(
        before - data_bytes() >= 2 * MIB,
        "{before} -> {}",
        data_bytes()
    );
    let run = site.cb("state", &["backup", "verify", "--all"]);
    ok(&run);
    assert_eq!(run.stdout.matches("ok ").count(), 2, "{}", run.stdout);
    // Nothing more to do the second time.
    let run = site.cbf(&["backup", "prune"]);
    ok(&run);
    assert!(run.stdout.contains("forgot 0 backup(s)"), "{}", run.stdout);
    assert!(
        run.stdout.contains("dropping 0 unused chunk(s)"),
        "{}",
        run.stdout
    );
}

#[test]
fn errors_name_the_problem() {
    let site = Site::new("");
    let run = site.cbf(&["backup", "run", "data"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("Volume data does not exist on any back end yet"),
        "{}",
        run.stderr
    );
    let run = site.cbf(&["backup", "run", "nope"]);
    assert!(
        run.stderr.contains("no Volume named nope"),
        "{}",
        run.stderr
    );
    let run = site.cb("state", &["backup", "restore", "abcd1234", "--to", "x"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("no backup \"abcd1234\" in the catalogue"),
        "{}",
        run.stderr
    );
    let run = site.cb("state", &["backup", "verify"]);
    assert_eq!(run.code, 2, "usage error: {}", run.stderr);
}

// ---------------------------------------------------------------------------
// Golden fixture: repository format v1.

/// The golden volume: 8 slots of 64 KiB: text, hole, noise, the text again
/// (deduplicated), three holes, 1000 bytes of text then zeros.
pub(crate) fn golden_volume() -> Vec<u8> {
    let mut v = vec![0u8; 8 * 64 * 1024];
    let t = text(64 * KIB);
    v[..64 * 1024].copy_from_slice(&t);
    v[2 * 64 * 1024..3 * 64 * 1024].copy_from_slice(&noise(7, 64 * KIB));
    v[3 * 64 * 1024..4 * 64 * 1024].copy_from_slice(&t);
    v[7 * 64 * 1024..7 * 64 * 1024 + 1000].copy_from_slice(&t[..1000]);
    v
}

fn golden_dir() -> PathBuf {
    crate::support::root().join("tests/fixtures/backup/repo-v1")
}

/// Writes `tests/fixtures/backup/repo-v1` anew, when the golden test runs
/// with `CINDERBLOCK_REGENERATE_GOLDEN=1`. Only for a deliberate format
/// change: then bump the version and keep the old fixture beside the new.
fn regenerate_golden_repository() {
    write_golden_repository(&golden_dir(), None);
}

/// Writes the golden volume's one full backup into a new repository at
/// `out` (encrypted with `key`, when given).
pub(crate) fn write_golden_repository(
    out: &Path,
    key: Option<&cinderblock::backup::crypto::RepoKey>,
) {
    use cinderblock::backup::engine::{Mode, RunSpec, run};
    let _ = fs::remove_dir_all(out);
    let tmp = tempfile::tempdir().unwrap();
    let be = FileBackend::new(tmp.path(), "golden");
    let uuid = Uuid::from_u128(0x601d);
    be.create(&NewObject {
        uuid,
        name: "golden",
        kind: ObjKind::Volume,
        size: 8 * 64 * KIB,
        allocation: Allocation::Sparse,
        source: None,
    })
    .unwrap();
    let f = File::options()
        .write(true)
        .open(be.data_path(ObjKind::Volume, uuid))
        .unwrap();
    let v = golden_volume();
    for (slot, chunk) in v.chunks(64 * 1024).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            f.write_all_at(chunk, slot as u64 * 64 * KIB).unwrap();
        }
    }
    drop(f);
    let repo = cinderblock::backup::Repository::open_or_init_keyed(
        out,
        cinderblock::backup::Codec::Zstd,
        key,
    )
    .unwrap();
    run(
        &RunSpec {
            id: Uuid::from_u128(0xb0),
            repo: &repo,
            driver: &FileDriver::local(be.clone(), Allocation::Sparse),
            volume: uuid,
            policy: Some("nightly"),
            mode: Mode::Full,
            codec: cinderblock::backup::Codec::Zstd,
            host: "golden-host",
            force: true,
            exported: false,
        },
        &cinderblock::backup::NoProgress,
    )
    .unwrap();
    // Git keeps no empty directories; the repository does not need them.
    for top in ["data", "index", "locks", "tmp"] {
        for e in fs::read_dir(out.join(top)).unwrap() {
            let _ = fs::remove_dir(e.unwrap().path());
        }
        let _ = fs::remove_dir(out.join(top));
    }
}

/// A fixture's config text with its identity and creation time elided.
pub(crate) fn pinned_config(dir: &Path) -> String {
    let text = fs::read_to_string(dir.join("config")).unwrap();
    let pinned: Vec<String> = text
        .lines()
        .map(|l| match l.split_once(':') {
            Some((k @ ("  \"id\"" | "  \"createdAt\""), _)) => format!("{k}: …"),
            _ => l.to_owned(),
        })
        .collect();
    pinned.join("\n")
}

/// Every file of the fixture below `top`, recursively.
pub(crate) fn files_below(top: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(top).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_below(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
// One fixture, checked layer by layer, then end to end.
#[allow(clippy::too_many_lines)]
fn golden_repository_v1_is_read_and_restored() {
    use cinderblock::backup::format::{self, Codec, Digest};
    if std::env::var_os("CINDERBLOCK_REGENERATE_GOLDEN").is_some() {
        regenerate_golden_repository();
    }
    let dir = golden_dir();
    // config: every field pinned except the identity and creation time.
    assert_eq!(
        pinned_config(&dir),
        r#"{
  "format": "cinderblock.backup-repository",
  "version": 1,
  "id": …
  "chunkSize": 65536,
  "hash": "blake3",
  "compression": "zstd",
  "packSize": 16777216,
  "createdAt": …
}"#
    );
    cinderblock::backup::Repository::open(&dir).unwrap();

    let v = golden_volume();
    let id = |slot: usize| Digest::of(&v[slot * 65536..(slot + 1) * 65536]);

    // One manifest, at backups/<volume uuid>/<backup id>.json.
    let manifest_path = dir.join(
        "backups/00000000-0000-0000-0000-00000000601d/00000000-0000-0000-0000-0000000000b0.json",
    );
    let m = cinderblock::backup::Repository::read_manifest_file(&manifest_path).unwrap();
    assert_eq!(m.kind, cinderblock::backup::BackupKind::Full);
    assert_eq!(
        (m.volume.name.as_str(), m.volume.size),
        ("golden", 8 * 65536)
    );
    let table = format::decode_table(&m).unwrap();
    assert_eq!(table, vec![(0, id(0)), (2, id(2)), (3, id(0)), (7, id(7))]);
    assert_eq!(m.stats.new_chunks, 3, "slot 3 deduplicated against slot 0");
    assert_eq!(m.stats.zero_chunks, 0, "holes are never read");

    // One pack, named by its BLAKE3, ending in a trailer of 3 entries.
    let packs = files_below(&dir.join("data"));
    assert_eq!(packs.len(), 1);
    let pack = fs::read(&packs[0]).unwrap();
    assert_eq!(
        packs[0].file_name().unwrap().to_str().unwrap(),
        Digest::of(&pack).to_hex()
    );
    assert_eq!(&pack[pack.len() - 12..], b"\x03\0\0\0CBPACK01");
    let trailer = &pack[pack.len() - 12 - 3 * 41..];
    let entries = format::decode_pack_trailer(trailer, pack.len() as u64).unwrap();
    // (blob order follows the workers, so compare as a set)
    let mut summary: Vec<(Digest, Codec, u32)> =
        entries.iter().map(|e| (e.id, e.codec, e.raw_len)).collect();
    summary.sort_by_key(|e| e.0);
    let mut want = vec![
        (id(0), Codec::Zstd, 65536),
        (id(2), Codec::None, 65536),
        (id(7), Codec::Zstd, 65536),
    ];
    want.sort_by_key(|e| e.0);
    assert_eq!(summary, want);
    // Blobs are back to back; the raw one is the chunk itself, verbatim.
    let mut offset = 0usize;
    for e in &entries {
        if e.codec == Codec::None {
            assert_eq!(&pack[offset..offset + 65536], &v[2 * 65536..3 * 65536]);
        }
        offset += e.stored_len as usize;
    }
    assert_eq!(offset, pack.len() - 12 - 3 * 41);

    // One index file, named by its BLAKE3, describing that pack.
    let indexes = files_below(&dir.join("index"));
    assert_eq!(indexes.len(), 1);
    let index = fs::read(&indexes[0]).unwrap();
    assert_eq!(
        indexes[0].file_name().unwrap().to_str().unwrap(),
        Digest::of(&index).to_hex()
    );
    assert!(index.starts_with(b"CBINDX01"));
    assert_eq!(
        format::decode_index(&index).unwrap(),
        vec![(Digest::of(&pack), entries)]
    );

    // And the CLI restores it, on a copy (sessions write into locks/).
    let site = Site::new("");
    let copy = site.repo();
    for f in files_below(&dir) {
        let to = copy.join(f.strip_prefix(&dir).unwrap());
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(&f, &to).unwrap();
    }
    let repo = copy.display().to_string();
    ok(&site.cb("state", &["backup", "import", "--scan", &repo]));
    ok(&site.cb("state", &["backup", "verify", "--all"]));
    let run = site.cb(
        "state",
        &[
            "backup",
            "restore",
            "00000000",
            "--to",
            "golden",
            "--backend",
            "local",
            "-f",
            "site.yaml",
        ],
    );
    ok(&run);
    let restored = site.volume_path("golden").unwrap();
    assert_eq!(fs::read(&restored).unwrap(), v);
    assert!(allocated(&restored) <= 4 * 65536, "holes stay holes");
}

#[test]
fn two_writers_at_once_share_one_repository() {
    use cinderblock::backup::engine::{Mode, RunSpec, run};
    use cinderblock::backup::{Codec, NoProgress, Repository};
    let site = Site::new("");
    let repo = Repository::open_or_init(&site.repo(), Codec::Zstd).unwrap();
    // Two back ends (as two hosts would have), each with a volume holding
    // the same first 4 MiB (deduplicated across them) and its own data.
    let mut jobs = Vec::new();
    for n in 0..2u64 {
        let root = site.path().join(format!("host{n}"));
        fs::create_dir_all(&root).unwrap();
        let be = FileBackend::new(&root, format!("host{n}"));
        let uuid = Uuid::new_v4();
        be.create(&NewObject {
            uuid,
            name: "data",
            kind: ObjKind::Volume,
            size: 32 * MIB,
            allocation: Allocation::Sparse,
            source: None,
        })
        .unwrap();
        let f = File::options()
            .write(true)
            .open(be.data_path(ObjKind::Volume, uuid))
            .unwrap();
        f.write_all_at(&noise(42, 4 * MIB), 0).unwrap();
        f.write_all_at(&noise(2 * n + 51, 8 * MIB), 16 * MIB)
            .unwrap();
        jobs.push((be, uuid));
    }
    std::thread::scope(|s| {
        for (n, (be, uuid)) in jobs.iter().enumerate() {
            let repo = &repo;
            s.spawn(move || {
                run(
                    &RunSpec {
                        id: Uuid::new_v4(),
                        repo,
                        driver: &FileDriver::local(be.clone(), Allocation::Sparse),
                        volume: *uuid,
                        policy: None,
                        mode: Mode::Full,
                        codec: Codec::Zstd,
                        host: if n == 0 { "a" } else { "b" },
                        force: true,
                        exported: false,
                    },
                    &NoProgress,
                )
                .unwrap();
            });
        }
    });
    let scan = repo.location();
    ok(&site.cb("state", &["backup", "import", "--scan", &scan]));
    let run = site.cb("state", &["backup", "verify", "--all"]);
    ok(&run);
    assert_eq!(run.stdout.matches("ok ").count(), 2, "{}", run.stdout);
}

#[test]
fn run_by_policy_backs_up_each_volume_and_skips_the_uncreated() {
    let site = Site::new("");
    let mut yaml = fs::read_to_string(site.path().join("site.yaml")).unwrap();
    yaml.push_str(
        "---
apiVersion: cinderblock.dev/v1alpha1
kind: Volume
metadata: {name: logs}
spec: {size: 64Mi, volumeType: standard, backupPolicy: nightly}
---
apiVersion: cinderblock.dev/v1alpha1
kind: Volume
metadata: {name: later}
spec: {size: 64Mi, volumeType: standard, backupPolicy: nightly}
",
    );
    fs::write(site.path().join("site.yaml"), yaml).unwrap();
    fill(&site.create_volume("data", 64 * MIB));
    fill(&site.create_volume("logs", 64 * MIB));
    let run = site.cbf(&["backup", "run", "--policy", "nightly"]);
    ok(&run);
    assert_eq!(run.stdout.matches("full of ").count(), 2, "{}", run.stdout);
    assert!(run.stdout.contains("full of data") && run.stdout.contains("full of logs"));
    assert!(
        run.stderr
            .contains("skipped later: Volume later does not exist on any back end yet"),
        "{}",
        run.stderr
    );
    // data and logs hold the same bytes: the second stored nothing new.
    assert!(run.stdout.contains("(0 new chunks"), "{}", run.stdout);
    let run = site.cbf(&["backup", "run", "--policy", "weekly"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("no BackupPolicy named weekly"),
        "{}",
        run.stderr
    );
}

#[test]
fn zlib_and_uncompressed_policies_round_trip() {
    for (codec, smaller) in [("zlib", true), ("none", false)] {
        let site = Site::new(&format!("  compression: {codec}"));
        let vol = site.create_volume("data", 64 * MIB);
        fill(&vol);
        let run = site.cbf(&["backup", "run", "data"]);
        let id = backup_id(&run);
        // "stored X (N new chunks, Y before compression)": the text
        // compresses unless the policy says none.
        let tail = run.stdout.split("stored ").nth(1).unwrap();
        let stored = tail.split(" (").next().unwrap();
        let raw = tail
            .split(", ")
            .nth(1)
            .unwrap()
            .split(" before")
            .next()
            .unwrap();
        assert_eq!(stored != raw, smaller, "{codec}: {tail}");
        ok(&site.cbf(&["backup", "restore", &id, "--to", "copy"]));
        assert_eq!(sha256(&site.volume_path("copy").unwrap()), sha256(&vol));
    }
}

#[test]
fn interrupted_restore_is_refused_then_started_over() {
    let site = Site::new("");
    let vol = site.create_volume("data", 64 * MIB);
    fill(&vol);
    let sum = sha256(&vol);
    let id = backup_id(&site.cbf(&["backup", "run", "data"]));
    ok(&site.cbf(&["backup", "restore", &id, "--to", "copy"]));
    // A restore interrupted by a crash leaves an object in state creating:
    // refused as a target unless --overwrite, which starts it over.
    let be = site.backend();
    let obj = be
        .discover()
        .unwrap()
        .objects
        .into_iter()
        .find(|o| o.meta.name == "copy")
        .unwrap();
    let mut meta = obj.meta.clone();
    meta.state = cinderblock::file::Mark::Creating;
    cinderblock::file::meta::write_sidecar(be.root(), &meta).unwrap();
    fs::write(site.volume_path("copy").unwrap(), b"torn").unwrap();
    let run = site.cbf(&["backup", "restore", &id, "--to", "copy"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("is incomplete (Creating"),
        "{}",
        run.stderr
    );
    ok(&site.cbf(&["backup", "restore", &id, "--to", "copy", "--overwrite"]));
    assert_eq!(sha256(&site.volume_path("copy").unwrap()), sum);
}

#[test]
fn a_volume_size_not_a_multiple_of_the_chunk_round_trips() {
    let site = Site::new("");
    let len = 3 * 64 * KIB + 1000;
    let vol = site.create_volume("data", len);
    let f = File::options().write(true).open(&vol).unwrap();
    f.write_all_at(&noise(9, 1500), len - 1500).unwrap();
    f.write_all_at(&text(70_000), 10).unwrap();
    drop(f);
    let id = backup_id(&site.cbf(&["backup", "run", "data"]));
    ok(&site.cbf(&["backup", "restore", &id, "--to", "copy"]));
    let copy = site.volume_path("copy").unwrap();
    assert_eq!(fs::metadata(&copy).unwrap().len(), len);
    assert_eq!(fs::read(&copy).unwrap(), fs::read(&vol).unwrap());
    ok(&site.cb("state", &["backup", "verify", &id]));
}

/// `plan` with a fixed clock (`CINDERBLOCK_NOW`).
fn plan_at(site: &Site, now: &str, json: bool) -> Run {
    let mut cmd = assert_cmd::Command::cargo_bin("cinderblock").unwrap();
    cmd.current_dir(site.path())
        .env_remove("CINDERBLOCK_LOG")
        .env("CINDERBLOCK_NOW", now)
        .args([
            "--state",
            "state",
            "plan",
            "-f",
            "site.yaml",
            "-f",
            "more.yaml",
        ]);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The `Backups` section of a text plan.
fn backups_section(text: &str) -> String {
    text.lines()
        .skip_while(|l| !l.starts_with("Backups"))
        .take_while(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn plan_shows_each_volume_policy_last_backup_and_when_the_next_is_due() {
    use cinderblock::backup::catalog::{Catalog, Entry, Status};
    use cinderblock::backup::format::{BackupKind, VolumeRef};
    let site = Site::new("");
    fs::write(
        site.path().join("more.yaml"),
        "apiVersion: cinderblock.dev/v1alpha1
kind: BackupPolicy
metadata: {name: hourly-berlin}
spec:
  schedule: \"30 * * * *\"
  timezone: Europe/Berlin
  target: {path: /nonexistent/repo}
---
apiVersion: cinderblock.dev/v1alpha1
kind: Volume
metadata: {name: logs}
spec:
  size: 16Mi
  volumeType: standard
  backupPolicy: hourly-berlin
---
apiVersion: cinderblock.dev/v1alpha1
kind: Volume
metadata: {name: scratch}
spec:
  size: 16Mi
  volumeType: standard
",
    )
    .unwrap();
    // `data` was backed up at 02:00:05 on the 23rd (UTC).
    let state = site.path().join("state");
    fs::create_dir_all(&state).unwrap();
    let mut cat = Catalog::default();
    let id = Uuid::from_u128(0x1a2b_3c4d_0000_4000_8000_0000_0000_0001);
    cat.backups.insert(
        id,
        Entry {
            id,
            repository: site.repo().display().to_string(),
            target: None,
            repository_id: None,
            volume: VolumeRef {
                uuid: Uuid::from_u128(7),
                name: "data".into(),
                backend: "local".into(),
                size: 64 * MIB,
            },
            policy: Some("nightly".into()),
            kind: Some(BackupKind::Full),
            parent: None,
            started_at: "2026-11-23T02:00:05Z".parse().unwrap(),
            read_bytes: 0,
            stored_bytes: 0,
            status: Status::Ok,
            detail: None,
            verified_at: None,
            point_in_time: None,
            read: None,
            group: None,
        },
    );
    cat.store(&state).unwrap();

    // Before the next slot: data is due tonight at 02:00 UTC; logs (never
    // backed up) at the next :30 of Berlin time (UTC+1 in November).
    let before = plan_at(&site, "2026-11-24T01:10:00Z", false);
    ok(&before);
    // After a missed slot: data is due now.
    let after = plan_at(&site, "2026-11-24T03:10:00Z", false);
    ok(&after);
    insta::assert_snapshot!(format!(
        "{}\n\n{}",
        backups_section(&before.stdout),
        backups_section(&after.stdout)
    ));
    assert!(
        before
            .stdout
            .trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("Plan:"),
        "the summary stays last:\n{}",
        before.stdout
    );
    assert!(!before.stdout.contains("scratch  "), "no policy, no row");

    let json = plan_at(&site, "2026-11-24T01:10:00Z", true);
    ok(&json);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let rows = v["backups"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{}", json.stdout);
    assert_eq!(rows[0]["volume"], "data");
    assert_eq!(rows[0]["next"], "2026-11-24T02:00:00Z");
    assert_eq!(rows[0]["last"]["at"], "2026-11-23T02:00:05Z");
    assert_eq!(rows[1]["volume"], "logs");
    assert_eq!(rows[1]["timezone"], "Europe/Berlin");
    assert_eq!(rows[1]["next"], "2026-11-24T01:30:00Z");
    assert!(rows[1].get("last").is_none());
    assert!(
        v["resource_changes"].is_array() || v["resourceChanges"].is_array(),
        "the plan is still there"
    );
}

#[test]
#[allow(clippy::too_many_lines)] // one catalogue and schedule file, then text, JSON and Markdown
fn plan_says_what_the_next_backup_does_how_the_last_read_and_each_policys_checks() {
    use cinderblock::agent::checks::CheckRecord;
    use cinderblock::agent::schedule::{Records, store_records};
    use cinderblock::backup::catalog::{Catalog, Entry, Status};
    use cinderblock::backup::engine::{ReadMethod, ReadRecord};
    use cinderblock::backup::format::{BackupKind, VolumeRef};
    let site = Site::new(
        "  fullEvery: 3\n  verify: {schedule: \"0 4 * * *\", sample: 5}\n  drill: {schedule: \"0 5 * * 0\"}",
    );
    fs::write(site.path().join("more.yaml"), "").unwrap();
    let state = site.path().join("state");
    fs::create_dir_all(&state).unwrap();
    let entry =
        |n: u128, day: u32, kind, status, read: Option<ReadRecord>, detail: Option<&str>| {
            let id = Uuid::from_u128(0x1a2b_3c4d_0000_4000_8000_0000_0000_0000 + n);
            Entry {
                id,
                repository: site.repo().display().to_string(),
                target: None,
                repository_id: None,
                volume: VolumeRef {
                    uuid: Uuid::from_u128(7),
                    name: "data".into(),
                    backend: "local".into(),
                    size: 64 * MIB,
                },
                policy: Some("nightly".into()),
                kind: Some(kind),
                parent: None,
                started_at: format!("2026-11-{day:02}T02:00:05Z").parse().unwrap(),
                read_bytes: 0,
                stored_bytes: 0,
                status,
                detail: detail.map(str::to_owned),
                verified_at: None,
                point_in_time: None,
                read,
                group: None,
            }
        };
    let fell_back = ReadRecord {
        method: ReadMethod::FullScan,
        reason: "the filesystem reports no holes (SEEK_DATA/SEEK_HOLE)".into(),
        fallback: true,
    };
    // A full, an incremental that fell back to a full scan, then an
    // incremental a drill found damaged.
    let mut cat = Catalog::default();
    for e in [
        entry(1, 21, BackupKind::Full, Status::Ok, None, None),
        entry(
            2,
            22,
            BackupKind::Incremental,
            Status::Ok,
            Some(fell_back.clone()),
            None,
        ),
        entry(
            3,
            23,
            BackupKind::Incremental,
            Status::Damaged,
            Some(fell_back),
            Some("restore drill: 1 chunk(s) differ"),
        ),
    ] {
        cat.backups.insert(e.id, e);
    }
    cat.store(&state).unwrap();
    // The agent's records: the verify passed, the drill found the damage.
    let mut records = Records::default();
    records.checks.insert(
        "nightly/verify".into(),
        CheckRecord {
            last_run: Some("2026-11-24T04:00:09Z".parse().unwrap()),
            last_success: Some("2026-11-24T04:00:09Z".parse().unwrap()),
            last_result: Some("checked 12 of 240 chunk(s)".into()),
            ..CheckRecord::default()
        },
    );
    records.checks.insert(
        "nightly/drill".into(),
        CheckRecord {
            last_run: Some("2026-11-22T05:01:00Z".parse().unwrap()),
            last_result: Some("restored and compared 1 volume(s)".into()),
            problems: vec![
                "volume data, backup 1a2b3c4d-0000-4000-8000-000000000003: 1 chunk(s) differ"
                    .into(),
            ],
            ..CheckRecord::default()
        },
    );
    store_records(&state, 1, &records).unwrap();

    let run = plan_at(&site, "2026-11-24T12:00:00Z", false);
    ok(&run);
    let section = backups_section(&run.stdout);
    // Two incrementals since the full (the damaged one counts: it is in the
    // repository) and fullEvery 3: the next run is a full.
    assert!(
        section.contains("  data  nightly (0 2 * * * UTC); last incremental 2026-11-22T02:00:05Z (1a2b3c4d), read by fullScan; due now (the 2026-11-24T02:00:00Z slot was not run)\n")
            && section.contains("    next run: full, reading every byte, as the last run: the filesystem reports no holes")
            && section.contains("    warning: the last backup fell back to fullScan: the filesystem reports no holes (SEEK_DATA/SEEK_HOLE)"),
        "{section}"
    );
    assert!(
        section.contains("Backup checks (policy, check, schedule; last passed; next due):\n  nightly verify 5 % a run (0 4 * * * UTC); last passed 2026-11-24T04:00:09Z; next due 2026-11-25T04:00:00Z\n      last run 2026-11-24T04:00:09Z: checked 12 of 240 chunk(s)\n")
            && section.contains("  nightly drill (0 5 * * 0 UTC); last passed never; next due 2026-11-29T05:00:00Z\n      last run 2026-11-22T05:01:00Z: restored and compared 1 volume(s)\n      problem: volume data, backup 1a2b3c4d-0000-4000-8000-000000000003: 1 chunk(s) differ\n")
            && section.contains("  nightly damaged: volume data, backup 1a2b3c4d-0000-4000-8000-000000000003 (2026-11-23 02:00:05 UTC): restore drill: 1 chunk(s) differ"),
        "{section}"
    );

    // One full fewer in history: an incremental against the newest, even
    // though it is the damaged one (that is the backup the engine compares
    // with).
    let mut cat = Catalog::load(&state).unwrap();
    cat.backups
        .retain(|id, _| *id != Uuid::from_u128(0x1a2b_3c4d_0000_4000_8000_0000_0000_0002));
    cat.store(&state).unwrap();
    let json = plan_at(&site, "2026-11-24T12:00:00Z", true);
    ok(&json);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let row = &v["backups"][0];
    assert_eq!(row["nextRun"]["kind"], "incremental", "{row}");
    assert_eq!(
        row["nextRun"]["parent"], "1a2b3c4d-0000-4000-8000-000000000003",
        "{row}"
    );
    assert_eq!(row["last"]["kind"], "full", "{row}");
    assert!(
        row.get("warning").is_none(),
        "the last good one read normally: {row}"
    );
    let checks = &v["backupChecks"][0];
    assert_eq!(checks["policy"], "nightly");
    assert_eq!(checks["checks"][0]["check"], "verify");
    assert_eq!(checks["checks"][0]["sample"], 5);
    assert_eq!(checks["checks"][1]["check"], "drill");
    assert!(checks["checks"][1].get("lastSuccess").is_none());
    assert_eq!(
        checks["damaged"].as_array().map(Vec::len),
        Some(1),
        "{checks}"
    );
}

#[test]
fn an_idle_volume_is_read_in_place_and_one_in_use_is_copied_first() {
    let site = Site::new("");
    let vol = site.create_volume("data", 64 * MIB);
    fill(&vol);
    let sum = sha256(&vol);
    // The filesystem may reflink (XFS, btrfs): then that is what is used.
    let reflink = |run: &Run| run.stdout.contains("point in time by reflink;");

    let idle = site.cbf(&["backup", "run", "data", "--full"]);
    let idle_id = backup_id(&idle);
    assert!(
        reflink(&idle)
            || idle
                .stdout
                .contains("point in time by in-place read (no reflink here; volume not in use);"),
        "{}",
        idle.stdout
    );

    // qemu stands in: another process holds the volume open
    let mut holder = std::process::Command::new("sleep")
        .arg("60")
        .stdin(File::open(&vol).unwrap())
        .spawn()
        .unwrap();
    let busy = site.cbf(&["backup", "run", "data", "--full"]);
    let _ = holder.kill();
    let _ = holder.wait();
    let busy_id = backup_id(&busy);
    assert!(
        reflink(&busy) || busy.stdout.contains("point in time by sparse copy;"),
        "{}",
        busy.stdout
    );
    // The JSON summary: what was read (data extents only, whole chunks).
    let json = site.cbf(&["backup", "run", "data", "--incremental", "--json"]);
    ok(&json);
    let v: serde_json::Value = serde_json::from_str(json.stdout.trim()).unwrap();
    assert_eq!(v["kind"], "incremental", "{v}");
    assert_eq!(v["parent"].as_str(), Some(busy_id.as_str()), "{v}");
    let read = v["readBytes"].as_u64().unwrap();
    assert!((12 * MIB..=13 * MIB).contains(&read), "read {read}: {v}");
    assert_eq!(v["newChunks"], 0, "nothing changed: {v}");
    assert!(
        [
            "reflink",
            "in-place read (no reflink here; volume not in use)"
        ]
        .contains(&v["pointInTime"].as_str().unwrap()),
        "{v}"
    );
    // How it read, and why: the file's data extents, no fallback.
    assert_eq!(v["read"]["method"], "allocatedScan", "{v}");
    assert_eq!(
        v["read"]["reason"], "the file's data extents (SEEK_DATA/SEEK_HOLE)",
        "{v}"
    );
    assert!(v["read"].get("fallback").is_none(), "{v}");
    assert!(
        idle.stdout
            .contains("\n  read by allocatedScan: the file's data extents (SEEK_DATA/SEEK_HOLE)\n"),
        "{}",
        idle.stdout
    );
    assert!(!idle.stderr.contains("warning:"), "{}", idle.stderr);
    // The catalogue keeps it: backup list's READ column.
    let list = site.cb("state", &["backup", "list", "data"]);
    ok(&list);
    let header = list.stdout.lines().next().unwrap();
    assert!(header.contains("  KIND         READ  "), "{}", list.stdout);
    let row = list
        .stdout
        .lines()
        .find(|l| l.starts_with(&idle_id))
        .unwrap();
    assert!(
        row.contains(" full         allocatedScan  "),
        "{}",
        list.stdout
    );
    for (id, to) in [(&idle_id, "r-idle"), (&busy_id, "r-busy")] {
        ok(&site.cbf(&["backup", "restore", id, "--to", to]));
        assert_eq!(sha256(&site.volume_path(to).unwrap()), sum, "{to}");
    }
}

#[test]
fn a_volume_declared_from_a_backup_is_restored_by_plan_and_apply() {
    let site = Site::new("");
    let vol = site.create_volume("data", 64 * MIB);
    fill(&vol);
    let sum = sha256(&vol);
    let id = backup_id(&site.cbf(&["backup", "run", "data", "--full"]));
    let declare = |size: &str, extra: &str| {
        fs::write(
            site.path().join("copy.yaml"),
            format!(
                "apiVersion: cinderblock.dev/v1alpha1
kind: Volume
metadata: {{name: copy}}
spec:
  size: {size}
  volumeType: standard
  source:
    backup: {{policy: nightly, volume: data{extra}}}
"
            ),
        )
        .unwrap();
    };
    let plan = |args: &[&str]| {
        let mut v = vec!["plan", "-f", "site.yaml", "-f", "copy.yaml"];
        v.extend_from_slice(args);
        site.cb("state", &v)
    };

    // too small, and an id that matches nothing: refused in the plan
    declare("32Mi", "");
    let small = plan(&[]);
    assert_eq!(small.code, 1, "{}{}", small.stdout, small.stderr);
    assert!(
        small
            .stdout
            .contains("spec.size 32 MiB is less than backup")
            || small.stdout.contains("spec.size 32Mi is less than backup")
            || small.stdout.contains("is less than backup"),
        "{}",
        small.stdout
    );
    declare("64Mi", ", id: \"0000\"");
    let unknown = plan(&[]);
    assert_eq!(unknown.code, 1, "{}{}", unknown.stdout, unknown.stderr);
    assert!(
        unknown
            .stdout
            .contains("no catalogued backup 0000 of volume data"),
        "{}",
        unknown.stdout
    );

    // the latest backup of data, by default
    declare("64Mi", "");
    let p = plan(&[]);
    ok(&p);
    assert!(
        p.stdout.contains(&format!("backup {id} of volume.data")),
        "{}",
        p.stdout
    );
    assert!(
        p.stdout
            .contains(&format!("restored from backup {id} of volume data")),
        "{}",
        p.stdout
    );
    let apply = site.cb(
        "state",
        &[
            "apply",
            "-f",
            "site.yaml",
            "-f",
            "copy.yaml",
            "--auto-approve",
        ],
    );
    ok(&apply);
    let copy = site.volume_path("copy").unwrap();
    assert_eq!(sha256(&copy), sum);
    assert!(allocated(&copy) <= allocated(&vol), "stays sparse");
    // create-time only: now it exists, nothing more to do
    let again = plan(&["--detailed-exitcode"]);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
}

/// Undoes `chattr -R +a` on drop, so the temp dir can be removed whatever
/// the test did.
struct AppendOnlyDir(PathBuf);

impl AppendOnlyDir {
    fn set(path: &Path) -> Self {
        let out = std::process::Command::new("chattr")
            .args(["-R", "+a"])
            .arg(path)
            .output()
            .expect("chattr runs (e2fsprogs)");
        assert!(
            out.status.success(),
            "chattr +a on {}: {} (needs root and a filesystem with the append-only attribute)",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self(path.to_owned())
    }

    fn clear(&self) {
        let _ = std::process::Command::new("chattr")
            .args(["-R", "-a"])
            .arg(&self.0)
            .status();
    }
}

impl Drop for AppendOnlyDir {
    fn drop(&mut self) {
        self.clear();
    }
}

#[test]
#[ignore = "needs root and chattr +a (tests/run.sh runs it)"]
fn append_only_directory_that_forbids_deletion_backs_up_forgets_then_the_sweep_frees() {
    let site = Site::with_target(
        "  retention: {keepLast: 1}",
        "{path: ROOT/repo, appendOnly: true}",
    );
    let vol = site.create_volume("data", 16 * MIB);
    let write_round = |round: u64| {
        let f = File::options().write(true).open(&vol).unwrap();
        f.write_all_at(&noise(10 + 2 * round, 2 * MIB), 0).unwrap();
    };
    write_round(0);
    let mut ids = vec![backup_id(&site.cbf(&["backup", "run", "data"]))];
    // From now on the kernel refuses every unlink and rename in the
    // repository: only new names may appear.
    let guard = AppendOnlyDir::set(&site.repo());
    let probe = files_below(&site.repo().join("backups"))[0].clone();
    assert!(
        fs::remove_file(&probe).is_err(),
        "the test's premise: deletion is forbidden"
    );
    for round in 1..3u64 {
        write_round(round);
        ids.push(backup_id(&site.cbf(&["backup", "run", "data"])));
    }
    let before = files_below(&site.repo());
    assert!(
        !before.iter().any(|p| p.to_string_lossy().contains(".tmp-")),
        "no temp file left behind: {before:?}"
    );
    assert!(
        before
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".end.json")),
        "sessions end with a marker: {before:?}"
    );
    // Retention forgets in the catalogue only; not one file goes.
    let run = site.cbf(&["backup", "prune"]);
    ok(&run);
    assert!(
        run.stdout
            .contains("forgot 2 backup(s) in the catalogue only"),
        "{}",
        run.stdout
    );
    let list = site.cb("state", &["backup", "list"]);
    assert!(!list.stdout.contains(&ids[0]) && list.stdout.contains(&ids[2]));
    // The permission, not cinderblock's good manners, is what stops a
    // sweep here.
    let run = site.cbf(&["backup", "prune", "--sweep"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr.contains("Operation not permitted"),
        "{}",
        run.stderr
    );
    let after: Vec<PathBuf> = files_below(&site.repo())
        .into_iter()
        .filter(|p| !p.starts_with(site.repo().join("locks")))
        .collect();
    let kept: Vec<&PathBuf> = before
        .iter()
        .filter(|p| !p.starts_with(site.repo().join("locks")))
        .collect();
    assert_eq!(after.iter().collect::<Vec<_>>(), kept, "nothing deleted");

    // With deletion allowed again, the sweep frees the forgotten backups.
    guard.clear();
    let data_bytes = || -> u64 {
        files_below(&site.repo().join("data"))
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum()
    };
    let full = data_bytes();
    let run = site.cbf(&["backup", "prune", "--sweep"]);
    ok(&run);
    assert!(run.stdout.contains("forgot 2 backup(s)"), "{}", run.stdout);
    assert!(data_bytes() + 3 * MIB < full, "{full} -> {}", data_bytes());
    let run = site.cb("state", &["backup", "verify", "--all"]);
    ok(&run);
    ok(&site.cbf(&["backup", "restore", &ids[2], "--to", "back"]));
    assert_eq!(sha256(&site.volume_path("back").unwrap()), sha256(&vol));
}

#[test]
fn a_restore_over_a_volume_in_use_is_refused_naming_the_holder() {
    let site = Site::new("");
    let vol = site.create_volume("data", 4 * MIB);
    fill(&vol);
    let id = backup_id(&site.cbf(&["backup", "run", "data", "--full"]));
    fs::write(&vol, vec![7u8; 4 * MIB as usize]).unwrap();
    let changed = sha256(&vol);
    // qemu stands in: another process holds the volume open
    let mut holder = std::process::Command::new("sleep")
        .arg("60")
        .stdin(File::open(&vol).unwrap())
        .spawn()
        .unwrap();
    let run = site.cbf(&["backup", "restore", &id, "--to", "data", "--overwrite"]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "is in use by pid {} (sleep); restoring over it would change its data under its user",
            holder.id()
        )),
        "{}",
        run.stderr
    );
    assert_eq!(sha256(&vol), changed, "nothing was written");
    // Nobody holds it any more: the same restore goes through.
    ok(&site.cbf(&["backup", "restore", &id, "--to", "data", "--overwrite"]));
    assert_ne!(sha256(&vol), changed);
}

/// Flips one byte at `offset` of `path`.
pub(crate) fn flip_byte(path: &Path, offset: u64) {
    let f = File::options().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], offset).unwrap();
}

#[test]
fn a_drill_restores_the_newest_backup_of_each_volume_and_names_a_damaged_one() {
    let site = Site::new("");
    let yaml = site.path().join("site.yaml");
    let mut text = fs::read_to_string(&yaml).unwrap();
    text.push_str(
        "---\napiVersion: cinderblock.dev/v1alpha1\nkind: Volume\nmetadata: {name: logs}\nspec:\n  size: 16Mi\n  volumeType: standard\n  backupPolicy: nightly\n",
    );
    fs::write(&yaml, text).unwrap();
    let data = site.create_volume("data", 16 * MIB);
    let logs = site.create_volume("logs", 16 * MIB);
    let write = |path: &Path, seed: u64, at: u64| {
        let f = File::options().write(true).open(path).unwrap();
        f.write_all_at(&noise(seed, 2 * MIB), at).unwrap();
    };
    write(&data, 3, 0);
    let old = backup_id(&site.cbf(&["backup", "run", "data", "--full"]));
    write(&data, 5, 4 * MIB);
    let newest = backup_id(&site.cbf(&["backup", "run", "data"]));
    let packs_before = files_below(&site.repo().join("data"));
    write(&logs, 7, 8 * MIB);
    let log_id = backup_id(&site.cbf(&["backup", "run", "logs"]));
    let log_packs: Vec<PathBuf> = files_below(&site.repo().join("data"))
        .into_iter()
        .filter(|p| !packs_before.contains(p))
        .collect();
    assert!(!log_packs.is_empty());
    let scratch = site.path().join("state/drill");
    let left = || -> Vec<PathBuf> {
        if scratch.exists() {
            files_below(&scratch)
        } else {
            Vec::new()
        }
    };

    let run = site.cbf(&["backup", "drill", "--policy", "nightly"]);
    ok(&run);
    assert!(
        run.stdout.starts_with(
            "drill of policy nightly: restored and compared the newest backup of 2 volume(s)"
        ),
        "{}",
        run.stdout
    );
    for (volume, id) in [("data", &newest), ("logs", &log_id)] {
        assert!(
            run.stdout.contains(&format!("{volume} from {id} (")),
            "{}",
            run.stdout
        );
    }
    assert!(
        !run.stdout.contains(&old),
        "only the newest: {}",
        run.stdout
    );
    assert_eq!(
        run.stdout.matches("): identical").count(),
        2,
        "{}",
        run.stdout
    );
    assert!(left().is_empty(), "scratch left: {:?}", left());

    // One byte of a pack only the logs backup uses, flipped on the target.
    flip_byte(&log_packs[0], 100);
    let run = site.cbf(&["backup", "drill", "--policy", "nightly"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains(&format!("error: damaged: volume logs, backup {log_id} ("))
            && run.stderr.contains("restore drill: the restore failed"),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout.contains(&format!("data from {newest} ("))
            && run.stdout.contains("): identical"),
        "the other volume is still drilled: {}",
        run.stdout
    );
    assert!(left().is_empty(), "scratch left: {:?}", left());
    // The catalogue knows: retention will not count it as good.
    let list = site.cb("state", &["backup", "list", "logs"]);
    ok(&list);
    let row = list
        .stdout
        .lines()
        .find(|l| l.starts_with(&log_id))
        .unwrap();
    assert!(row.contains("damaged: restore drill"), "{}", list.stdout);
}
