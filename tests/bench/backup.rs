//! Backup benchmark: cinderblock against restic, borg and the notes' recipe
//! on the same machine, in one run.
//!
//! Run with `cargo bench --bench backup`: it installs `restic` and
//! `borgbackup` from Debian when missing (`tests/lib/install.sh`; a peer that
//! cannot be installed is reported and skipped). Prints figures and
//! ratios; asserts only that every restore is bit-exact.
//!
//! Data (as `shared/ANCHORS.md` measures): a 16 GiB sparse volume file with
//! 70 extents of 44 MiB, 47 of random bytes (~2 GiB) and 23 of log text
//! (~1 GiB). Then 221 writes of 4 KiB–1 MiB (log-uniform, random data) at
//! random places in the data: the 1 % change.
//!
//! Phases, each with the page cache dropped first (we run as root here):
//! 1. full backup: ours (point in time as `backup run` takes it: reflink, or
//!    on ext4 the idle volume read in place; and, for a volume in use, a
//!    sparse copy first; in-process library),
//!    restic 0.14, borg 1.2 with fixed 4 MiB chunks and `--sparse`, and the
//!    notes' `tar -czf` + `sha1sum`;
//! 2. the 1 % change, then an incremental by each (time, bytes the
//!    repository grew by);
//! 3. restore of the incremental by each: time, bit-exactness against the
//!    source (a content fingerprint that treats holes and zeros alike),
//!    allocated bytes.
//!
//! `CB_BENCH_OURS_ONLY=1` runs only our side (for iterating).
//!
//! Measured 2026-11-24 on the 2-core ext4 machines (restic 0.14.0, borg
//! 1.2.4), one run while another engineer was building (the disk is noisy;
//! earlier runs of the copy-first path ranged 8.1–14.7 s):
//!
//! | | full | 1 % incremental (stored) | restore (allocated) |
//! | --- | --- | --- | --- |
//! | cinderblock (idle volume, read in place: no reflink on ext4) | 2.02 s | 1.67 s (+46.8 MiB, 1.35×) | 2.25 s (3.01 GiB) |
//! | cinderblock, volume in use (sparse copy first, 2.56 s) | 5.38 s | – | – |
//! | restic | 42.47 s | 27.96 s (+362 MiB) | 20.01 s (16 GiB) |
//! | borg, fixed 4 MiB, `--sparse` | 5.38 s | 3.61 s (+630 MiB) | 15.36 s (3.01 GiB) |
//! | `tar -czf` + `sha1sum` | 170.64 s | – | – |
//!
//! Ratios: full 21.0× restic, 2.7× borg, 84× the notes' recipe;
//! incremental 16.8× restic, storing 1.35× the changed bytes (restic 10.5×,
//! borg 18.2×); restore 8.9× restic, 6.8× borg.
//!
//! Peak RSS of ours: 66.6 MiB.
//!
//! Our peak memory is the bench process's peak RSS (`VmHWM`, reset through
//! `/proc/self/clear_refs` before each of our phases); peers run as child
//! processes and do not count. Works under `target/tmp` (ext4 on /work) and
//! removes everything at the end.

// A benchmark's output is its report; the peers are driven like a person
// would, with a working directory (which crate::exec does not offer).
#![allow(clippy::print_stdout, clippy::disallowed_methods)]
// Figures are printed as floating point; precision loss is irrelevant there.
#![allow(clippy::cast_precision_loss)]

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cinderblock::backup::engine::{self, Mode, RunSpec};
use cinderblock::backup::restore::{self, Target};
use cinderblock::backup::{Codec, NoProgress, Repository, format};
use cinderblock::file::copy::next_extent;
use cinderblock::file::{Allocation, FileBackend, NewObject, ObjKind};
use uuid::Uuid;

mod common;
use common::{dir_bytes, make_source};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const KIB: u64 = 1 << 10;

struct Row {
    what: &'static str,
    full: Option<Duration>,
    inc: Option<Duration>,
    inc_stored: Option<u64>,
    restore: Option<Duration>,
    restore_alloc: Option<u64>,
    exact: Option<bool>,
}

// One linear report: phases in order, figures as they come.
#[allow(clippy::too_many_lines)]
fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and
    // five minutes and 20 GiB of scratch space are not a unit test.
    if !std::env::args().any(|a| a == "--bench") {
        println!("backup benchmark: run it with `cargo bench --bench backup`");
        return;
    }
    let dir = common::scratch("cinderblock-backup-bench-");
    let work = dir.path();
    println!("cinderblock backup benchmark in {}", work.display());
    // CB_BENCH_ONLY=xfs runs only the XFS part (its own volume and image).
    if std::env::var_os("CB_BENCH_ONLY").is_some_and(|v| v == "xfs") {
        xfs_section(work);
        return;
    }
    let be_root = work.join("volumes");
    fs::create_dir_all(&be_root).expect("mkdir");
    let be = FileBackend::new(&be_root, "bench");
    let vol = Uuid::new_v4();
    let t = Instant::now();
    let data = make_source(&be, vol);
    let src = be.data_path(ObjKind::Volume, vol);
    println!(
        "source: {} logical, {} of data in 70 extents, {} allocated (written in {})",
        gib(fs::metadata(&src).expect("stat").len()),
        gib(data),
        gib(allocated(&src)),
        secs(t.elapsed())
    );
    println!(
        "page cache: {}",
        if drop_caches() {
            "dropped before every timed step (cold reads)"
        } else {
            "cannot drop it (not root): warm reads"
        }
    );
    // CB_BENCH_OURS_ONLY=1 skips the peers (for iterating on our engine).
    let ours_only = std::env::var_os("CB_BENCH_OURS_ONLY").is_some();
    if !ours_only {
        install_peers();
    }
    let restic = tool_version("restic", &["version"]).filter(|_| !ours_only);
    let borg = tool_version("borg", &["--version"]).filter(|_| !ours_only);
    println!(
        "peers: {}; {}",
        restic
            .as_deref()
            .unwrap_or("restic missing (apt-get install restic)"),
        borg.as_deref()
            .unwrap_or("borg missing (apt-get install borgbackup)")
    );

    let mut ours = Row::new("cinderblock (zstd, 64 KiB chunks)");
    let mut ours_direct = Row::new("cinderblock, volume in use (copy first)");
    let mut r_restic = Row::new("restic (default)");
    let mut r_borg = Row::new("borg (fixed 4 MiB, --sparse, lz4)");
    let mut r_tar = Row::new("notes: tar -czf + sha1sum");

    // ---- full
    println!("\n== full backup ==");
    let repo_dir = work.join("ours-repo");
    let repo = Repository::open_or_init(&repo_dir, Codec::Zstd).expect("repo");
    let (full_time, full_hwm, full_report) = ours_backup(&repo, &be, vol, Mode::Full, false, false);
    ours.full = Some(full_time);
    let s = &full_report.manifest.stats;
    println!(
        "ours:   {:>9}  (point in time by {} {}), read {}, stored {} in {} chunks, peak RSS {}",
        secs(full_time),
        full_report.method.as_str(),
        secs(full_report.snapshot_time),
        gib(s.read_bytes),
        mib(s.stored_bytes),
        s.new_chunks,
        mib(full_hwm)
    );
    {
        // The same for a volume in use (exported): no reflink on ext4, so
        // the point in time is a sparse copy first. Into a repository of its
        // own.
        let direct_dir = work.join("ours-direct");
        let direct = Repository::open_or_init(&direct_dir, Codec::Zstd).expect("repo");
        let (t, h, r) = ours_backup(&direct, &be, vol, Mode::Full, false, true);
        ours_direct.full = Some(t);
        println!(
            "ours, volume in use (point in time by {} {}): {:>9}, peak RSS {}",
            r.method.as_str(),
            secs(r.snapshot_time),
            secs(t),
            mib(h)
        );
        let _ = fs::remove_dir_all(&direct_dir);
    }
    let restic_repo = work.join("restic-repo");
    let cache = work.join("cache");
    let borg_base = work.join("borg-base");
    let restic_env = [
        ("RESTIC_PASSWORD", "bench"),
        ("RESTIC_REPOSITORY", path_str(&restic_repo)),
        ("XDG_CACHE_HOME", path_str(&cache)),
    ];
    if restic.is_some() {
        run(work, "restic", &["init"], &restic_env);
        let t = timed(
            work,
            "restic",
            &["backup", "--quiet", path_str(&src)],
            &restic_env,
        );
        r_restic.full = Some(t);
        println!("restic: {:>9}", secs(t));
    }
    let borg_repo = work.join("borg-repo");
    let borg_env = [
        ("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes"),
        ("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes"),
        ("BORG_BASE_DIR", path_str(&borg_base)),
    ];
    let borg_create = |name: &str| {
        let archive = format!("{}::{name}", borg_repo.display());
        timed(
            work,
            "borg",
            &[
                "create",
                "--chunker-params",
                "fixed,4194304",
                "--sparse",
                &archive,
                path_str(&src),
            ],
            &borg_env,
        )
    };
    if borg.is_some() {
        run(
            work,
            "borg",
            &["init", "-e", "none", path_str(&borg_repo)],
            &borg_env,
        );
        let t = borg_create("full");
        r_borg.full = Some(t);
        println!("borg:   {:>9}", secs(t));
    }
    if !ours_only {
        let tarball = work.join("notes.tar.gz");
        sync_and_drop();
        let t = Instant::now();
        run(
            work,
            "tar",
            &[
                "-czf",
                path_str(&tarball),
                "-C",
                path_str(&be_root),
                &src_name(&src),
            ],
            &[],
        );
        run(work, "sha1sum", &[path_str(&src)], &[]);
        let t = t.elapsed();
        r_tar.full = Some(t);
        println!("tar -czf + sha1sum: {:>9}", secs(t));
        let _ = fs::remove_file(&tarball);
    }

    // ---- the 1 % change
    let changed = change(&src);
    println!(
        "\n== 1 % change: 221 writes, {} of changed 4 KiB blocks ==",
        mib(changed)
    );
    let before = dir_bytes(&repo_dir);
    let (inc_time, inc_hwm, inc_report) =
        ours_backup(&repo, &be, vol, Mode::Incremental, false, false);
    ours.inc = Some(inc_time);
    ours.inc_stored = Some(dir_bytes(&repo_dir) - before);
    let s = &inc_report.manifest.stats;
    println!(
        "ours:   {:>9}  (point in time by {} {}), {} chunks changed, repository +{} ({:.2}x the changed bytes), peak RSS {}",
        secs(inc_time),
        inc_report.method.as_str(),
        secs(inc_report.snapshot_time),
        s.new_chunks,
        mib(dir_bytes(&repo_dir) - before),
        (dir_bytes(&repo_dir) - before) as f64 / changed as f64,
        mib(inc_hwm)
    );
    if restic.is_some() {
        let before = dir_bytes(&restic_repo);
        let t = timed(
            work,
            "restic",
            &["backup", "--quiet", path_str(&src)],
            &restic_env,
        );
        r_restic.inc = Some(t);
        r_restic.inc_stored = Some(dir_bytes(&restic_repo) - before);
        println!(
            "restic: {:>9}  repository +{}",
            secs(t),
            mib(dir_bytes(&restic_repo) - before)
        );
    }
    if borg.is_some() {
        let before = dir_bytes(&borg_repo);
        let t = borg_create("inc");
        r_borg.inc = Some(t);
        r_borg.inc_stored = Some(dir_bytes(&borg_repo) - before);
        println!(
            "borg:   {:>9}  repository +{}",
            secs(t),
            mib(dir_bytes(&borg_repo) - before)
        );
    }

    // ---- restore of the incremental
    println!("\n== restore of the incremental ==");
    let want = fingerprint(&src);
    let (t, hwm, target) = ours_restore(&repo, &be, &inc_report.manifest);
    ours.restore = Some(t);
    ours.restore_alloc = Some(allocated(&target));
    ours.exact = Some(fingerprint(&target) == want);
    println!(
        "ours:   {:>9}  allocated {}, bit-exact {}, peak RSS {}",
        secs(t),
        gib(allocated(&target)),
        ours.exact == Some(true),
        mib(hwm)
    );
    let _ = fs::remove_file(&target);
    if restic.is_some() {
        let out = work.join("restic-out");
        let t = timed(
            work,
            "restic",
            &["restore", "latest", "--target", path_str(&out)],
            &restic_env,
        );
        let file = out.join(src.strip_prefix("/").expect("absolute"));
        r_restic.restore = Some(t);
        r_restic.restore_alloc = Some(allocated(&file));
        r_restic.exact = Some(fingerprint(&file) == want);
        println!(
            "restic: {:>9}  allocated {}, bit-exact {}",
            secs(t),
            gib(allocated(&file)),
            r_restic.exact == Some(true)
        );
        let _ = fs::remove_dir_all(&out);
    }
    if borg.is_some() {
        let out = work.join("borg-out");
        fs::create_dir_all(&out).expect("mkdir");
        let archive = format!("{}::inc", borg_repo.display());
        let t = timed(&out, "borg", &["extract", "--sparse", &archive], &borg_env);
        let file = out.join(src.strip_prefix("/").expect("absolute"));
        r_borg.restore = Some(t);
        r_borg.restore_alloc = Some(allocated(&file));
        r_borg.exact = Some(fingerprint(&file) == want);
        println!(
            "borg:   {:>9}  allocated {}, bit-exact {}",
            secs(t),
            gib(allocated(&file)),
            r_borg.exact == Some(true)
        );
        let _ = fs::remove_dir_all(&out);
    }

    // ---- summary
    println!("\n== summary (changed: {}) ==", mib(changed));
    println!(
        "{:<36} {:>9} {:>9} {:>12} {:>9} {:>10} {:>6}",
        "method", "full", "incr", "incr stored", "restore", "allocated", "exact"
    );
    for r in [&ours, &ours_direct, &r_restic, &r_borg, &r_tar] {
        println!(
            "{:<36} {:>9} {:>9} {:>12} {:>9} {:>10} {:>6}",
            r.what,
            opt(r.full.map(secs)),
            opt(r.inc.map(secs)),
            opt(r.inc_stored.map(mib)),
            opt(r.restore.map(secs)),
            opt(r.restore_alloc.map(gib)),
            opt(r.exact.map(|e| if e { "yes" } else { "NO" }.to_owned())),
        );
    }
    let ratio = |peer: Option<Duration>, us: Option<Duration>| match (peer, us) {
        (Some(p), Some(u)) => format!("{:.1}x", p.as_secs_f64() / u.as_secs_f64()),
        _ => "-".into(),
    };
    println!();
    println!(
        "full:    {} faster than restic (target >= 5x), {} than borg (target >= 2x), {} than the notes' recipe",
        ratio(r_restic.full, ours.full),
        ratio(r_borg.full, ours.full),
        ratio(r_tar.full, ours.full)
    );
    println!(
        "full, volume in use (copy first): {} faster than restic, {} than borg",
        ratio(r_restic.full, ours_direct.full),
        ratio(r_borg.full, ours_direct.full)
    );
    println!(
        "incr:    {} faster than restic (target >= 3x); stored {:.2}x the changed bytes (target <= 2x; restic {:.1}x, borg {:.1}x)",
        ratio(r_restic.inc, ours.inc),
        ours.inc_stored.unwrap_or(0) as f64 / changed as f64,
        r_restic.inc_stored.unwrap_or(0) as f64 / changed as f64,
        r_borg.inc_stored.unwrap_or(0) as f64 / changed as f64,
    );
    println!(
        "restore: {} faster than restic (target >= 2x), {} than borg",
        ratio(r_restic.restore, ours.restore),
        ratio(r_borg.restore, ours.restore)
    );
    println!(
        "peak memory (ours): {} (target < 256 MiB)",
        mib(full_hwm.max(inc_hwm).max(hwm))
    );
    assert_eq!(ours.exact, Some(true), "our restore must be bit-exact");
    be.delete(vol).expect("delete source");
    xfs_section(work);
}

/// The same volume on XFS with reflink (a loop-mounted image, xfsprogs from
/// `tests/lib/install.sh`): full backup, the same 1 % change, and the
/// incremental by changed-block tracking (FIEMAP against the full's kept
/// reflinked copy); then a full of the volume in use (a reflink: no copy).
/// Skipped, with the reason, where there is no root, loop device or XFS.
fn xfs_section(work: &Path) {
    println!("\n== on XFS (reflink), loop-mounted image ==");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lib/install.sh");
    let installed = Command::new("bash")
        .arg("-c")
        .arg(format!(
            ". '{script}' && need_apt bench-backup xfsprogs -- mkfs.xfs"
        ))
        .status()
        .is_ok_and(|s| s.success());
    let image = work.join("xfs.img");
    let mnt = work.join("xfs");
    let device = installed
        .then(|| {
            File::create(&image).ok()?.set_len(32 * GIB).ok()?;
            let out = Command::new("losetup")
                .args(["--find", "--show", path_str(&image)])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .flatten();
    let Some(device) = device else {
        println!("skipped: cannot attach a loop device or install xfsprogs (needs root)");
        return;
    };
    fs::create_dir_all(&mnt).expect("mkdir");
    let mounted = Command::new("mkfs.xfs")
        .args(["-q", "-f", "-m", "reflink=1", &device])
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("mount")
            .args([&device, path_str(&mnt)])
            .status()
            .is_ok_and(|s| s.success());
    if mounted {
        xfs_backups(&mnt, work);
    } else {
        println!("skipped: mkfs.xfs or mount failed on {device}");
    }
    let _ = Command::new("umount").arg(&mnt).status();
    let _ = Command::new("losetup").args(["-d", &device]).status();
    let _ = fs::remove_file(&image);
}

fn xfs_backups(mnt: &Path, work: &Path) {
    let be = FileBackend::new(mnt.join("volumes"), "bench");
    fs::create_dir_all(be.root()).expect("mkdir");
    let vol = Uuid::new_v4();
    let t = Instant::now();
    make_source(&be, vol);
    let src = be.data_path(ObjKind::Volume, vol);
    println!("source written in {}", secs(t.elapsed()));
    let repo_dir = work.join("xfs-repo");
    let repo = Repository::open_or_init(&repo_dir, Codec::Zstd).expect("repo");
    let (full, _, r) = ours_backup(&repo, &be, vol, Mode::Full, false, false);
    println!(
        "ours full:        {:>9}  (point in time by {} {}), read {}",
        secs(full),
        r.method.as_str(),
        secs(r.snapshot_time),
        gib(r.manifest.stats.read_bytes)
    );
    let changed = change(&src);
    let mut times = Vec::new();
    let mut last = None;
    // Rounds: each incremental is the parent of the next; the same change
    // again each time (new data at the same places).
    for round in 0..3 {
        if round > 0 {
            change(&src);
        }
        let before = dir_bytes(&repo_dir);
        let (t, h, r) = ours_backup(&repo, &be, vol, Mode::Incremental, false, false);
        times.push(t);
        let s = &r.manifest.stats;
        println!(
            "ours incremental: {:>9}  read by {}: read {} ({:.2}x the {} changed), repository +{}, peak RSS {}",
            secs(t),
            r.read.method.as_str(),
            mib(s.read_bytes),
            s.read_bytes as f64 / changed as f64,
            mib(changed),
            mib(dir_bytes(&repo_dir) - before),
            mib(h)
        );
        last = Some(r);
    }
    times.sort_unstable();
    println!(
        "1 % incremental on XFS: min {}, median {}, max {} (target <= 0.5 s, reading <= 2x the changed bytes)",
        secs(times[0]),
        secs(times[times.len() / 2]),
        secs(times[times.len() - 1])
    );
    if let Some(r) = last {
        let want = fingerprint(&src);
        let (t, _, target) = ours_restore(&repo, &be, &r.manifest);
        println!(
            "restore of the last incremental: {}, bit-exact {}",
            secs(t),
            fingerprint(&target) == want
        );
        assert_eq!(fingerprint(&target), want, "our restore must be bit-exact");
        let _ = fs::remove_file(&target);
    }
    let busy_dir = work.join("xfs-busy-repo");
    let busy = Repository::open_or_init(&busy_dir, Codec::Zstd).expect("repo");
    let (t, _, r) = ours_backup(&busy, &be, vol, Mode::Full, false, true);
    println!(
        "ours full, volume in use: {:>9}  (point in time by {} {}: no copy)",
        secs(t),
        r.method.as_str(),
        secs(r.snapshot_time)
    );
    let _ = fs::remove_dir_all(&busy_dir);
    let _ = fs::remove_dir_all(&repo_dir);
    be.delete(vol).expect("delete source");
}

impl Row {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            full: None,
            inc: None,
            inc_stored: None,
            restore: None,
            restore_alloc: None,
            exact: None,
        }
    }
}

fn ours_backup(
    repo: &Repository,
    be: &FileBackend,
    vol: Uuid,
    mode: Mode,
    direct: bool,
    exported: bool,
) -> (Duration, u64, engine::RunReport) {
    sync_and_drop();
    reset_hwm();
    let driver = cinderblock::file::FileDriver::local(be.clone(), Allocation::Sparse);
    let t = Instant::now();
    let report = engine::run(
        &RunSpec {
            id: Uuid::new_v4(),
            repo,
            driver: &driver,
            volume: vol,
            policy: None,
            mode,
            codec: Codec::Zstd,
            host: "bench",
            force: !direct,
            exported,
        },
        &NoProgress,
    )
    .expect("our backup");
    (t.elapsed(), hwm(), report)
}

fn ours_restore(
    repo: &Repository,
    be: &FileBackend,
    m: &format::Manifest,
) -> (Duration, u64, PathBuf) {
    sync_and_drop();
    reset_hwm();
    let t = Instant::now();
    let uuid = Uuid::new_v4();
    be.create(&NewObject {
        uuid,
        name: "restored",
        kind: ObjKind::Volume,
        size: m.volume.size,
        allocation: Allocation::Sparse,
        source: None,
    })
    .expect("create target");
    let path = be.data_path(ObjKind::Volume, uuid);
    let index = repo.load_index().expect("index");
    let table = format::decode_table(m).expect("table");
    let f = OpenOptions::new().write(true).open(&path).expect("open");
    restore::restore(
        repo,
        &index,
        m,
        &table,
        &f,
        &path,
        Target::Fresh,
        &NoProgress,
    )
    .expect("our restore");
    (t.elapsed(), hwm(), path)
}

/// 221 writes of random data, 4 KiB–1 MiB (log-uniform, 4 KiB aligned), at
/// random 4 KiB-aligned places inside the data extents. Returns the bytes of
/// distinct 4 KiB blocks written.
fn change(path: &Path) -> u64 {
    const EXTENTS: u64 = 70;
    const EXTENT: u64 = 44 * MIB;
    let stride = 16 * GIB / EXTENTS / MIB * MIB;
    let file = File::options().write(true).open(path).expect("open");
    let mut rng = 0x0123_4567_89AB_CDEF_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut blocks = std::collections::BTreeSet::new();
    for _ in 0..221 {
        // 4 KiB × 2^(0..8) spread log-uniformly, then a random multiple of
        // 4 KiB below the next power.
        let pow = next() % 9;
        let size = ((4 * KIB) << pow).min(MIB);
        let size = (size / 2 + (next() % (size / 2 / (4 * KIB) + 1)) * 4 * KIB).max(4 * KIB);
        let extent = next() % EXTENTS;
        let within = (next() % ((EXTENT - size) / (4 * KIB))) * 4 * KIB;
        let at = extent * stride + within;
        let mut data = vec![0u8; usize::try_from(size).expect("fits")];
        for chunk in data.chunks_exact_mut(8) {
            chunk.copy_from_slice(&next().to_le_bytes());
        }
        file.write_all_at(&data, at).expect("write");
        for b in (at / (4 * KIB))..((at + size) / (4 * KIB)) {
            blocks.insert(b);
        }
    }
    file.sync_all().expect("sync");
    blocks.len() as u64 * 4 * KIB
}

/// A content fingerprint that does not depend on allocation: BLAKE3 over
/// (offset, bytes) of every non-zero 1 MiB block of the data extents, plus
/// the length. Equal fingerprints mean bit-identical files.
fn fingerprint(path: &Path) -> Option<[u8; 32]> {
    let file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let mut h = blake3::Hasher::new();
    h.update(&len.to_le_bytes());
    let mut buf = vec![0u8; usize::try_from(MIB).ok()?];
    let mut offset = 0;
    while let Some((start, end)) = next_extent(&file, path, offset, len).ok()? {
        let mut pos = start / MIB * MIB;
        while pos < end {
            let n = usize::try_from((len - pos).min(MIB)).ok()?;
            file.read_exact_at(&mut buf[..n], pos).ok()?;
            if buf[..n].iter().any(|&b| b != 0) {
                h.update(&pos.to_le_bytes());
                h.update(&buf[..n]);
            }
            pos += MIB;
        }
        offset = pos.max(end);
    }
    Some(*h.finalize().as_bytes())
}

fn src_name(src: &Path) -> String {
    src.file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Installs the peers (Debian's `restic` and `borgbackup`) when missing,
/// the way every test installs what it needs: `tests/lib/install.sh`. A
/// failed install is reported; the run goes on without that peer.
fn install_peers() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lib/install.sh");
    for (pkg, tool) in [("restic", "restic"), ("borgbackup", "borg")] {
        let status = Command::new("bash")
            .arg("-c")
            .arg(format!(
                ". '{script}' && need_apt bench-backup {pkg} -- {tool}"
            ))
            .status();
        if !status.is_ok_and(|s| s.success()) {
            println!("could not install {pkg}: its figures are left out");
        }
    }
}

fn tool_version(tool: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(tool).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn run(dir: &Path, tool: &str, args: &[&str], env: &[(&str, &str)]) {
    let out = Command::new(tool)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn timed(dir: &Path, tool: &str, args: &[&str], env: &[(&str, &str)]) -> Duration {
    sync_and_drop();
    let t = Instant::now();
    run(dir, tool, args, env);
    t.elapsed()
}

fn sync_and_drop() {
    let _ = Command::new("sync").status();
    drop_caches();
}

fn drop_caches() -> bool {
    fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn reset_hwm() {
    let _ = fs::write("/proc/self/clear_refs", "5");
}

/// Peak RSS of this process since the last reset, in bytes.
fn hwm() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn allocated(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

fn opt(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".into())
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / GIB as f64)
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / MIB as f64)
}
