//! Backup targets and prune at scale, in one run:
//! 1. **prune** of a synthetic repository of 10 million chunks (640 GiB of
//!    data, written as index files, manifests and sparse packs directly —
//!    not by backing up 640 GiB): the real binary's `backup prune`, its
//!    wall time and peak RSS (`VmHWM` of the child, sampled until it
//!    exits; the target is < 512 MiB).
//!
//! Run with `cargo bench --bench backup_store`. `CB_BENCH_PRUNE_CHUNKS=N`
//! makes a smaller repository (for a quick check that it runs);
//! `CB_BENCH_ONLY=prune` runs only that part.
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
