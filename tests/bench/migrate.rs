//! Benchmark of migration between `file` back ends against the tools a
//! Cinder host would use for the same move.
//!
//! Run with `cargo bench --bench migrate`. Prints figures and ratios; it
//! asserts nothing about time, only that the work was done and the data
//! arrived. The volume is the benchmarks' 16 GiB sparse file holding 3 GiB
//! in 70 extents (`common::make_source`), moved:
//!
//! - by `cinderblock::migrate::run` end to end: target sidecar, copy of the
//!   data extents only, fsync, content hash of source (during the copy) and
//!   target (read back), switch of identity, source removed;
//! - by `qemu-img convert -O raw` (sparse output by default; no fsync), and
//!   the same followed by `sync FILE` (its data on disk, as ours is);
//! - by `dd bs=1M conv=sparse` (reads all 16 GiB; no fsync);
//!
//! in the same run, alternating who goes first, with the page cache dropped
//! before each (when root), and the target's allocated bytes after each.
//! The migration moves the volume back and forth between two back end
//! directories, so every round starts from the same data.

// A benchmark's output is its report.
#![allow(clippy::print_stdout)]
// Figures are printed as floating point; precision loss is irrelevant there.
#![allow(clippy::cast_precision_loss)]

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use cinderblock::copy::{Observer, Position};
use cinderblock::exec::{Cmd, run};
use cinderblock::file::{Allocation, FileBackend, FileDriver, ObjKind};
use cinderblock::migrate::{Checkpoints, MigrateError, Move};
use uuid::Uuid;

mod common;
use common::{allocated, drop_caches, gib, list, make_source, median, secs, sync};

const GIB: u64 = 1 << 30;

/// Checkpoints kept in memory (the journal's fsync per checkpoint is part
/// of what apply pays; a handful per run).
struct Memory(u64);

impl Observer for Memory {
    fn progress(&mut self, _: &Position) {}
    fn checkpoint(&mut self, at: &Position) -> Result<(), String> {
        self.0 = at.offset;
        Ok(())
    }
}

impl Checkpoints for Memory {
    fn last(&self, _: Uuid) -> Result<u64, MigrateError> {
        Ok(0)
    }
    fn begin(&mut self, _: Uuid) {}
    fn reset(&mut self, _: Uuid) -> Result<(), MigrateError> {
        Ok(())
    }
}

#[allow(clippy::too_many_lines)] // one run: set-up, the rounds, the report
fn main() {
    let dir = common::scratch("cinderblock-bench-migrate-");
    let fs_type = common::fs_type(dir.path());
    println!(
        "cinderblock migrate benchmark in {} ({fs_type})",
        dir.path().display()
    );
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    fs::create_dir_all(&a_dir).expect("a");
    fs::create_dir_all(&b_dir).expect("b");
    let a = FileBackend::new(&a_dir, "a");
    let b = FileBackend::new(&b_dir, "b");
    let vol = Uuid::new_v4();
    let started = Instant::now();
    let data = make_source(&a, vol);
    let mut src = a.data_path(ObjKind::Volume, vol);
    println!(
        "source: {} logical, {} of data, {} allocated (written in {})",
        gib(fs::metadata(&src).expect("stat").len()),
        gib(data),
        gib(allocated(&src)),
        secs(started.elapsed())
    );
    let want = blake3_of(&src);
    let cold = drop_caches();
    println!(
        "page cache: {}",
        if cold {
            "dropped before each run (cold reads)"
        } else {
            "could not drop (warm reads)"
        }
    );
    let peers = dir.path().join("peers");
    fs::create_dir_all(&peers).expect("peers");
    let qemu_dst = peers.join("qemu-img");
    let dd_dst = peers.join("dd");
    let mut times: [Vec<Duration>; 4] = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let mut alloc = [0u64; 4];
    let mut read = 0;
    // Where migrate's time goes: the copy (with its checkpoints' and the
    // final fsync, the source hashed as it is read and a file target read
    // back as it is written), then the rest (verify, switch).
    let mut copy_times = Vec::new();
    let mut on_a = true;
    for round in 0..3 {
        let order: [usize; 4] = [0, 1, 2, 3].map(|i| (i + round) % 4);
        for who in order {
            let _ = fs::remove_file(&qemu_dst);
            let _ = fs::remove_file(&dd_dst);
            sync();
            drop_caches();
            let started = Instant::now();
            match who {
                0 => {
                    let (from, to) = if on_a { (&a, &b) } else { (&b, &a) };
                    let report = cinderblock::migrate::run(
                        &Move {
                            uuid: vol,
                            name: "source",
                            size: 16 * GIB,
                            bandwidth: None,
                            snapshots: &[],
                        },
                        &FileDriver::local(from.clone(), Allocation::Sparse),
                        &FileDriver::local(to.clone(), Allocation::Sparse),
                        &mut Memory(0),
                    )
                    .expect("migrate");
                    times[0].push(started.elapsed());
                    copy_times.push(report.copy.as_ref().map_or(Duration::ZERO, |c| c.elapsed));
                    read = report.copy.map_or(0, |c| c.read);
                    on_a = !on_a;
                    src = if on_a { &a } else { &b }.data_path(ObjKind::Volume, vol);
                    alloc[0] = allocated(&src);
                }
                1 | 2 => {
                    run(&Cmd::new("qemu-img")
                        .args(["convert", "-O", "raw"])
                        .arg(&src)
                        .arg(&qemu_dst)
                        .timeout(Duration::from_secs(900)))
                    .expect("qemu-img convert");
                    if who == 2 {
                        run(&Cmd::new("sync")
                            .arg(&qemu_dst)
                            .timeout(Duration::from_secs(900)))
                        .expect("sync");
                    }
                    times[who].push(started.elapsed());
                    alloc[who] = allocated(&qemu_dst);
                }
                _ => {
                    run(&Cmd::new("dd")
                        .arg(format!("if={}", src.display()))
                        .arg(format!("of={}", dd_dst.display()))
                        .args(["bs=1M", "conv=sparse"])
                        .timeout(Duration::from_secs(900)))
                    .expect("dd");
                    times[3].push(started.elapsed());
                    alloc[3] = allocated(&dd_dst);
                }
            }
        }
    }
    assert_eq!(blake3_of(&src), want, "the migrated volume holds the data");
    let names = [
        "cinderblock migrate (copy + fsync + verify + switch)",
        "qemu-img convert -O raw (no fsync)",
        "qemu-img convert -O raw, then sync FILE",
        "dd bs=1M conv=sparse (no fsync)",
    ];
    let med: Vec<Duration> = times.iter_mut().map(|t| median(t)).collect();
    for i in 0..4 {
        println!(
            "{:<54} median {:>9} of {}  target allocated {}",
            names[i],
            secs(med[i]),
            list(&times[i]),
            gib(alloc[i])
        );
    }
    let copy_med = median(&mut copy_times);
    println!(
        "migrate's time: copy with fsync and in-line hashing median {} of {}; verify and switch {} (median total minus median copy)",
        secs(copy_med),
        list(&copy_times),
        secs(med[0].saturating_sub(copy_med))
    );
    println!(
        "migrate read {} (the data extents; the source holds {})",
        gib(read),
        gib(data)
    );
    println!(
        "ratio: migrate takes {:.2}x qemu-img convert's time (target <= 1.00), {:.2}x qemu-img + sync's, {:.2}x dd's",
        med[0].as_secs_f64() / med[1].as_secs_f64(),
        med[0].as_secs_f64() / med[2].as_secs_f64(),
        med[0].as_secs_f64() / med[3].as_secs_f64()
    );
    println!(
        "sparseness: source {}, migrated {}, qemu-img {}, dd {}",
        gib(data),
        gib(alloc[0]),
        gib(alloc[1]),
        gib(alloc[3])
    );
}

fn blake3_of(path: &Path) -> String {
    let f = fs::File::open(path).expect("open");
    let len = f.metadata().expect("stat").len();
    let ext = cinderblock::copy::Extents::of_file(&f, path, len).expect("extents");
    cinderblock::copy::content_hash(&f, path, len, &ext)
        .expect("hash")
        .to_hex()
        .to_string()
}
