//! Backup targets and prune at scale, in one run:
//! 1. **prune** of a synthetic repository of 10 million chunks (640 GiB of
//!    data, written as index files, manifests and sparse packs directly —
//!    not by backing up 640 GiB): the real binary's `backup prune`, its
//!    wall time and peak RSS (`VmHWM` of the child, sampled until it
//!    exits; the target is < 512 MiB).
//!
//! 2. **S3 against restic**: the benchmarks' 16 GiB volume with 3 GiB of
//!    data (`common::make_source`), a full backup and a 1 % incremental
//!    (64 random writes inside the data, 1 % of it) by cinderblock's engine
//!    in process into an S3 repository, and by restic (Debian's) into the
//!    same server, a loopback moto server (`tests/lib/s3_server.py`, from `PyPI`:
//!    the same S3 server the tests use, on a free port): wall time, bytes
//!    stored on the server, our peak RSS; then our incremental restored and
//!    compared with the source.
//!
//! Run with `cargo bench --bench backup_store` (tests/run.sh's packages:
//! moto, restic; a missing restic is reported and skipped).
//! `CB_BENCH_PRUNE_CHUNKS=N` makes a smaller repository and
//! `CB_BENCH_S3_MIB=N` a smaller volume (for a quick check that it runs);
//! `CB_BENCH_ONLY=prune` or `=s3` runs only that part.
//!
//! The synthetic repository: 40 volumes of 250,000 chunks each (16 GiB
//! volumes full of unique data), each with two backups: the older lists
//! 90 % shared chunks plus 5 % of its own, the newer the same 90 % plus 5 %
//! of its own (a hot region rewritten between them). Retention keeps the
//! last backup of each volume, so prune forgets 40 backups and deletes the
//! packs of their own 5 % (500,000 chunks, 1,960 packs) whole; the other
//! 9.5 million chunks are kept. Packs are sparse files of the right size
//! whose index entries are real; they are never read, except 8 real packs
//! of random chunks of which a ninth volume's backup keeps every other
//! chunk, so the repack path (read, check, rewrite) runs too. Manifests
//! hold 19 million table entries (about 850 MB).
//!
//! Works under `target/tmp` (ext4 on /work) and removes everything at the
//! end.

// A benchmark's output is its report; the binary is driven like a person
// would, with a working directory (which crate::exec does not offer).
#![allow(clippy::print_stdout, clippy::disallowed_methods)]
// Figures are printed as floating point; precision loss is irrelevant there.
#![allow(clippy::cast_precision_loss)]

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use chrono::Utc;
use cinderblock::backup::Repository;
use cinderblock::backup::format::{
    self, BackupKind, BackupStats, BlobEntry, CHUNK_SIZE, Codec, Digest, MANIFEST_FORMAT,
    MANIFEST_VERSION, Manifest, VolumeRef,
};
use uuid::Uuid;

mod common;

const MIB: u64 = 1 << 20;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("backup store benchmark: run it with `cargo bench --bench backup_store`");
        return;
    }
    let only = std::env::var("CB_BENCH_ONLY").unwrap_or_default();
    println!("load average at start: {}", load());
    if only.is_empty() || only == "prune" {
        prune_bench();
    }
    if only.is_empty() || only == "s3" {
        s3_bench();
    }
    println!("load average at the end: {}", load());
}

fn load() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Chunks per pack of the synthetic repository (16 MiB of 64 KiB chunks).
const PER_PACK: usize = 256;
/// Stored bytes of a synthetic blob.
const STORED: u32 = 40_000;

/// The synthetic pack and index writer.
struct Synth<'a> {
    repo: &'a Repository,
    root: &'a Path,
    counter: u64,
    chunks: usize,
    batch: Vec<(Digest, Vec<BlobEntry>)>,
    entries: usize,
    packs: u64,
}

impl Synth<'_> {
    fn chunk(&mut self) -> Digest {
        self.counter += 1;
        self.chunks += 1;
        Digest::of(&self.counter.to_le_bytes())
    }

    /// Stores `ids` in sparse packs described by index files.
    fn store(&mut self, ids: &[Digest]) {
        for group in ids.chunks(PER_PACK) {
            self.counter += 1;
            let pack = Digest::of(format!("pack {}", self.counter).as_bytes());
            let entries: Vec<BlobEntry> = group
                .iter()
                .map(|id| BlobEntry {
                    id: *id,
                    codec: Codec::Zstd,
                    stored_len: STORED,
                    raw_len: CHUNK_SIZE,
                })
                .collect();
            let path = self.root.join(Repository::pack_key(&pack));
            let f = File::create(&path).expect("pack file");
            f.set_len(u64::from(STORED) * group.len() as u64 + 12)
                .expect("sparse pack");
            self.packs += 1;
            self.entries += entries.len();
            self.batch.push((pack, entries));
            if self.entries >= format::INDEX_FILE_ENTRIES {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        if !self.batch.is_empty() {
            self.repo.write_index(&self.batch).expect("index");
        }
        self.batch.clear();
        self.entries = 0;
    }
}

fn manifest(
    repo: &Repository,
    volume: Uuid,
    name: &str,
    table: &[(u64, Digest)],
    days_ago: i64,
) -> Manifest {
    let (chunks, chunks_digest) = format::encode_table(table).expect("table");
    let at = Utc::now() - chrono::Duration::days(days_ago);
    let size = table.last().map_or(0, |(s, _)| s + 1) * u64::from(CHUNK_SIZE);
    let m = Manifest {
        format: MANIFEST_FORMAT.into(),
        version: MANIFEST_VERSION,
        id: Uuid::new_v4(),
        repository: repo.config().id,
        volume: VolumeRef {
            uuid: volume,
            name: name.to_owned(),
            backend: "bench".into(),
            size,
        },
        policy: Some("nightly".into()),
        kind: BackupKind::Full,
        parent: None,
        host: "bench".into(),
        started_at: at,
        finished_at: at,
        chunk_size: CHUNK_SIZE,
        stats: BackupStats::default(),
        chunks,
        chunks_digest,
        group: None,
    };
    repo.write_manifest(&m).expect("manifest");
    m
}

#[allow(clippy::too_many_lines)] // one linear report
fn prune_bench() {
    let total: usize = std::env::var("CB_BENCH_PRUNE_CHUNKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let dir = common::scratch("cinderblock-prune-bench-");
    let work = dir.path();
    let root = work.join("repo");
    let repo = Repository::open_or_init(&root, Codec::Zstd).expect("repository");
    println!(
        "\n## prune of a synthetic repository of {total} chunks in {}",
        work.display()
    );
    let made = Instant::now();
    let volumes = 40usize;
    let per = total / volumes;
    let (n_shared, n_own) = (per * 90 / 100, per * 5 / 100);
    let n_new = per - n_shared - n_own;
    let mut synth = Synth {
        repo: &repo,
        root: &root,
        counter: 0,
        chunks: 0,
        batch: Vec::new(),
        entries: 0,
        packs: 0,
    };
    let mut table_entries = 0u64;
    for v in 0..volumes {
        let shared: Vec<Digest> = (0..n_shared).map(|_| synth.chunk()).collect();
        let old: Vec<Digest> = (0..n_own).map(|_| synth.chunk()).collect();
        let new: Vec<Digest> = (0..n_new).map(|_| synth.chunk()).collect();
        synth.store(&shared);
        synth.store(&old);
        synth.store(&new);
        let uuid = Uuid::new_v4();
        let name = format!("vol-{v:02}");
        let with = |own: &[Digest]| -> Vec<(u64, Digest)> {
            shared
                .iter()
                .chain(own)
                .enumerate()
                .map(|(i, id)| (i as u64, *id))
                .collect()
        };
        let t1 = with(&old);
        let t2 = with(&new);
        table_entries += (t1.len() + t2.len()) as u64;
        manifest(&repo, uuid, &name, &t1, 2);
        manifest(&repo, uuid, &name, &t2, 1);
    }
    synth.flush();
    // Real packs: random chunks, half of them kept by one backup.
    let mut w = repo.pack_writer();
    let mut kept = Vec::new();
    let mut rng = 0x2545_F491_4F6C_DD1D_u64;
    let mut buf = vec![0u8; CHUNK_SIZE as usize];
    let real = 8 * PER_PACK;
    for i in 0..real {
        for c in buf.chunks_exact_mut(8) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            c.copy_from_slice(&rng.to_le_bytes());
        }
        let id = repo.chunk_id(&buf);
        w.add(id, Codec::None, CHUNK_SIZE, &buf).expect("real blob");
        if i % 2 == 0 {
            kept.push((kept.len() as u64, id));
        }
        if i % PER_PACK == PER_PACK - 1 {
            w.seal().expect("seal");
        }
    }
    w.finish().expect("real packs");
    repo.write_index(&w.take_sealed()).expect("real index");
    manifest(&repo, Uuid::new_v4(), "mixed", &kept, 1);
    let stored = synth.chunks + real;
    println!(
        "made it in {}: {} chunks stored in {} packs ({} real), {} backups listing {} chunks, index {} MiB, manifests {} MiB",
        common::secs(made.elapsed()),
        stored,
        synth.packs + 8,
        8,
        2 * volumes + 1,
        table_entries + kept.len() as u64,
        common::dir_bytes(&root.join("index")) / MIB,
        common::dir_bytes(&root.join("backups")) / MIB,
    );
    drop(repo);
    let yaml = format!(
        "apiVersion: cinderblock.dev/v1alpha1\nkind: BackupPolicy\nmetadata: {{name: nightly}}\nspec:\n  schedule: \"0 2 * * *\"\n  target: {{path: {}}}\n  retention: {{keepLast: 1}}\n",
        root.display()
    );
    fs::write(work.join("site.yaml"), yaml).expect("site.yaml");
    let _ = Command::new("sync").status();
    common::drop_caches();
    let out = work.join("prune.out");
    let (elapsed, peak_kib, ok) = common::measure(
        Command::new(env!("CARGO_BIN_EXE_cinderblock"))
            .current_dir(work)
            .args(["--state", "state", "backup", "prune", "-f", "site.yaml"])
            .stdout(File::create(&out).expect("out"))
            .stderr(Stdio::inherit()),
    );
    let text = fs::read_to_string(&out).unwrap_or_default();
    let summary: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("forgot") || l.starts_with("left") || l.contains("warning"))
        .collect();
    println!("cinderblock backup prune: {}", summary.join(" / "));
    println!(
        "prune: {} wall, peak RSS {:.1} MiB (target < 512 MiB){}",
        common::secs(elapsed),
        peak_kib as f64 / 1024.0,
        if ok { "" } else { " — FAILED" }
    );
    assert!(ok, "prune failed:\n{text}");
    assert!(
        text.contains(&format!("forgot {volumes} backup(s)")),
        "{text}"
    );
    // Every chunk kept is still described, nothing forgotten is (counted
    // by streaming the new index files).
    let repo = Repository::open(&root).expect("reopen");
    let mut left = 0usize;
    for (id, key, size) in repo.index_files().expect("index files") {
        assert!(
            repo.read_index_file(&id, &key, size, |_, e| left += e.len())
                .expect("index file"),
            "{key} is damaged"
        );
    }
    assert_eq!(left, stored - volumes * n_own - real / 2, "chunks left");
    println!("left {left} chunks described in the index, as expected");
}

/// A moto server on a free port; stopped when dropped (stdin closed).
struct S3Server {
    child: std::process::Child,
    endpoint: String,
    bucket: String,
    admin: String,
}

impl S3Server {
    fn start() -> Self {
        use std::io::BufRead as _;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lib/s3_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs tests/lib/s3_server.py (tests/run.sh installs moto)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the server's first line");
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the S3 server did not start ({e}): {line:?}"));
        let s = |k: &str| v[k].as_str().expect("a string").to_owned();
        Self {
            endpoint: s("endpoint"),
            bucket: s("bucket"),
            admin: s("admin"),
            child,
        }
    }

    /// Bytes stored under `prefix/`.
    fn stored(&self, prefix: &str) -> u64 {
        let (access_key, secret_key) = self.admin.split_once(':').expect("KEY:SECRET");
        let store =
            cinderblock::backup::store::S3Store::new(&cinderblock::backup::store::S3Config {
                endpoint: Some(self.endpoint.clone()),
                bucket: self.bucket.clone(),
                prefix: prefix.to_owned(),
                region: "us-east-1".into(),
                access_key: access_key.into(),
                secret_key: secret_key.into(),
                path_style: true,
            })
            .expect("store");
        cinderblock::backup::store::Store::list(&store, "")
            .expect("list")
            .iter()
            .map(|l| l.size)
            .sum()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 64 writes of random data inside the data extents, together 1 % of the
/// data (4 KiB aligned). Returns the bytes written.
fn change_one_percent(path: &Path, size: u64) -> u64 {
    use std::os::unix::fs::FileExt as _;
    const KIB: u64 = 1 << 10;
    let (extents, stride, extent) = common::source_layout(size);
    let data = extents * extent;
    let each = (data / 100 / 64 / (4 * KIB)).max(1) * 4 * KIB;
    let file = File::options().write(true).open(path).expect("open");
    let mut rng = 0x0123_4567_89AB_CDEF_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut buf = vec![0u8; usize::try_from(each).expect("fits")];
    for _ in 0..64 {
        for c in buf.chunks_exact_mut(8) {
            c.copy_from_slice(&next().to_le_bytes());
        }
        let at = (next() % extents) * stride
            + (next() % ((extent - each.min(extent)) / (4 * KIB) + 1)) * 4 * KIB;
        file.write_all_at(&buf[..usize::try_from(each.min(extent)).expect("fits")], at)
            .expect("write");
    }
    file.sync_all().expect("sync");
    64 * each.min(extent)
}

/// One of our runs into `repo`: wall time, peak RSS (KiB) of this process
/// during it, the report.
fn ours_run(
    repo: &Repository,
    driver: &dyn cinderblock::driver::Driver,
    vol: Uuid,
    mode: cinderblock::backup::engine::Mode,
) -> (
    std::time::Duration,
    u64,
    cinderblock::backup::engine::RunReport,
) {
    let _ = Command::new("sync").status();
    common::drop_caches();
    common::reset_peak_rss();
    let t = Instant::now();
    let report = cinderblock::backup::engine::run(
        &cinderblock::backup::engine::RunSpec {
            id: Uuid::new_v4(),
            repo,
            driver,
            volume: vol,
            policy: None,
            mode,
            codec: Codec::Zstd,
            host: "bench",
            force: true,
            exported: false,
        },
        &cinderblock::backup::NoProgress,
    )
    .expect("our backup");
    (t.elapsed(), common::peak_rss_kib_self(), report)
}

#[allow(clippy::too_many_lines)] // one linear report
fn s3_bench() {
    use cinderblock::backup::engine::Mode;
    use cinderblock::backup::target::{RepoSpec, S3Spec, SecretSource, Target};
    use cinderblock::file::{Allocation, FileBackend, FileDriver, ObjKind};
    let size = std::env::var("CB_BENCH_S3_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(16 << 30, |m| m << 20);
    let dir = common::scratch("cinderblock-s3-bench-");
    let work = dir.path();
    println!(
        "\n## full and 1 % incremental of a {} MiB volume into S3 (loopback moto), against restic",
        size >> 20
    );
    let server = S3Server::start();
    let be_root = work.join("volumes");
    fs::create_dir_all(&be_root).expect("mkdir");
    let be = FileBackend::new(&be_root, "bench");
    let vol = Uuid::new_v4();
    let data = common::make_source_sized(&be, vol, size);
    let src = be.data_path(ObjKind::Volume, vol);
    println!(
        "source: {} MiB logical, {} MiB of data in 70 extents; server {}",
        size >> 20,
        data / MIB,
        server.endpoint
    );
    let creds = work.join("s3.credentials");
    fs::write(&creds, format!("{}\n", server.admin)).expect("credentials");
    let spec = RepoSpec {
        target: Target::S3(S3Spec {
            endpoint: Some(server.endpoint.clone()),
            bucket: server.bucket.clone(),
            prefix: "ours".into(),
            region: "us-east-1".into(),
            credentials: SecretSource::File(creds.clone()),
            path_style: true,
        }),
        append_only: false,
        key: None,
    };
    let repo = spec.open_or_init(Codec::Zstd).expect("S3 repository");
    let driver = FileDriver::local(be.clone(), Allocation::Sparse);
    let (full_t, full_rss, full) = ours_run(&repo, &driver, vol, Mode::Full);
    let full_stored = server.stored("ours");
    println!(
        "ours full: {} wall, read {} MiB, {} MiB on the server, peak RSS {:.1} MiB",
        common::secs(full_t),
        full.manifest.stats.read_bytes / MIB,
        full_stored / MIB,
        full_rss as f64 / 1024.0
    );
    let restic = Command::new("restic")
        .arg("version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let (access, secret) = server.admin.split_once(':').expect("KEY:SECRET");
    let restic_repo = format!("s3:{}/{}/restic", server.endpoint, server.bucket);
    let cache = work.join("restic-cache");
    let restic_cmd = |args: &[&str]| {
        let mut c = Command::new("restic");
        c.current_dir(work)
            .args(args)
            .env("RESTIC_REPOSITORY", &restic_repo)
            .env("RESTIC_PASSWORD", "bench")
            .env("AWS_ACCESS_KEY_ID", access)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("XDG_CACHE_HOME", &cache)
            .stdout(Stdio::null());
        c
    };
    let timed_restic = |args: &[&str]| {
        let _ = Command::new("sync").status();
        common::drop_caches();
        let (t, _, ok) = common::measure(&mut restic_cmd(args));
        assert!(ok, "restic {args:?} failed");
        t
    };
    let restic_full = restic.as_ref().map(|v| {
        println!("peer: {v}");
        let (_, _, ok) = common::measure(&mut restic_cmd(&["init"]));
        assert!(ok, "restic init failed");
        let t = timed_restic(&["backup", "--quiet", src.to_str().expect("UTF-8")]);
        let stored = server.stored("restic");
        println!(
            "restic full: {} wall, {} MiB on the server",
            common::secs(t),
            stored / MIB
        );
        (t, stored)
    });
    if restic.is_none() {
        println!("peer: restic missing (apt-get install restic): skipped");
    }

    let changed = change_one_percent(&src, size);
    let (inc_t, inc_rss, inc) = ours_run(&repo, &driver, vol, Mode::Incremental);
    let inc_stored = server.stored("ours") - full_stored;
    println!(
        "ours 1 % incremental ({} MiB written): {} wall, read {} MiB, +{} MiB on the server ({:.2}x the changed bytes), peak RSS {:.1} MiB",
        changed / MIB,
        common::secs(inc_t),
        inc.manifest.stats.read_bytes / MIB,
        inc_stored / MIB,
        inc_stored as f64 / changed.max(1) as f64,
        inc_rss as f64 / 1024.0
    );
    if let Some((full_rt, full_rs)) = restic_full {
        let t = timed_restic(&["backup", "--quiet", src.to_str().expect("UTF-8")]);
        let stored = server.stored("restic") - full_rs;
        println!(
            "restic 1 % incremental: {} wall, +{} MiB on the server ({:.2}x the changed bytes)",
            common::secs(t),
            stored / MIB,
            stored as f64 / changed.max(1) as f64
        );
        println!(
            "ratios: full {:.1}x restic's speed, incremental {:.1}x",
            full_rt.as_secs_f64() / full_t.as_secs_f64(),
            t.as_secs_f64() / inc_t.as_secs_f64()
        );
    }

    // Our incremental restores the changed volume exactly.
    let m = &inc.manifest;
    let out = work.join("restored");
    let f = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&out)
        .expect("restore target");
    f.set_len(m.volume.size).expect("size");
    let index = repo.load_index().expect("index");
    let table = format::decode_table(m).expect("table");
    cinderblock::backup::restore::restore(
        &repo,
        &index,
        m,
        &table,
        &f,
        &out,
        cinderblock::backup::restore::Target::Fresh,
        &cinderblock::backup::NoProgress,
    )
    .expect("restore");
    assert_eq!(
        content_hash(&out),
        content_hash(&src),
        "the incremental restores the volume exactly"
    );
    println!("ours: the incremental restored from S3 is identical to the volume");
}

/// BLAKE3 of a file's content, holes read as zeros.
fn content_hash(path: &Path) -> String {
    use std::io::Read as _;
    let mut f = File::open(path).expect("open");
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().to_hex().to_string()
}
