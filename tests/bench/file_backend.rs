//! Benchmarks of the `file` back end against the tools Cinder uses.
//!
//! Run with `cargo bench --bench file_backend`. Prints figures and ratios; it
//! asserts nothing about time (machines differ), only that the work was done.
//!
//! (a) create a 10 GiB preallocated volume vs `dd if=/dev/zero bs=1M
//!     count=10240` (target: at most 1 % of dd's time);
//! (b) snapshot a 16 GiB sparse file holding 3 GiB of data in 70 extents (2 GiB
//!     random, 1 GiB text) with our copy engine vs `cp --sparse=always`
//!     (target: not slower), with bytes copied and allocated bytes.
//!
//! Works in a temp dir under `target/tmp` (the project's filesystem), removed at
//! the end. Page cache is dropped before each copy when we may (root), so the
//! copies read from disk as a first snapshot would.

// A benchmark's output is its report.
#![allow(clippy::print_stdout)]
// Figures are printed as floating point; precision loss is irrelevant there.
#![allow(clippy::cast_precision_loss)]

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use cinderblock::exec::{Cmd, run};
use cinderblock::file::copy::copy_file;
use cinderblock::file::{Allocation, FileBackend, NewObject, ObjKind};
use uuid::Uuid;

mod common;
use common::{allocated, drop_caches, gib, list, make_source, median, secs, sync};

const GIB: u64 = 1 << 30;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // else either. Either way we run once.
    let dir = common::scratch("cinderblock-bench-");
    let fs_type = common::fs_type(dir.path());
    println!(
        "cinderblock file back end benchmarks in {} ({fs_type})",
        dir.path().display()
    );
    println!();
    create_vs_dd(dir.path());
    println!();
    snapshot_vs_cp(dir.path());
}

fn create_vs_dd(dir: &Path) {
    println!("== (a) create a 10 GiB preallocated volume ==");
    let be = FileBackend::new(dir, "bench");
    let uuid = Uuid::new_v4();
    let started = Instant::now();
    be.create(&NewObject {
        uuid,
        name: "bench",
        kind: ObjKind::Volume,
        size: 10 * GIB,
        allocation: Allocation::Preallocated,
        source: None,
    })
    .expect("create");
    let ours = started.elapsed();
    let ours_alloc = allocated(&be.data_path(ObjKind::Volume, uuid));
    be.delete(uuid).expect("delete");

    let sparse = Uuid::new_v4();
    let started = Instant::now();
    be.create(&NewObject {
        uuid: sparse,
        name: "bench-sparse",
        kind: ObjKind::Volume,
        size: 10 * GIB,
        allocation: Allocation::Sparse,
        source: None,
    })
    .expect("create sparse");
    let ours_sparse = started.elapsed();
    be.delete(sparse).expect("delete");

    let target = dir.join("dd-volume");
    let started = Instant::now();
    run(&Cmd::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", target.display()))
        .args(["bs=1M", "count=10240"])
        .timeout(Duration::from_secs(900)))
    .expect("dd");
    let dd = started.elapsed();
    let dd_alloc = allocated(&target);
    fs::remove_file(&target).expect("remove dd file");
    sync();

    println!(
        "cinderblock create, preallocated (fallocate + fsyncs + 2 sidecars): {:>10}  allocated {}",
        secs(ours),
        gib(ours_alloc)
    );
    println!(
        "cinderblock create, sparse (ftruncate + fsyncs + 2 sidecars):       {:>10}",
        secs(ours_sparse)
    );
    println!(
        "dd if=/dev/zero bs=1M count=10240 (no fsync):                       {:>10}  allocated {}",
        secs(dd),
        gib(dd_alloc)
    );
    println!(
        "ratio: preallocated create takes {:.3} % of dd's time (target <= 1 %)",
        100.0 * ours.as_secs_f64() / dd.as_secs_f64()
    );
}

fn snapshot_vs_cp(dir: &Path) {
    println!("== (b) snapshot a 16 GiB sparse volume holding 3 GiB in 70 extents ==");
    let be = FileBackend::new(dir, "bench");
    let vol = Uuid::new_v4();
    let started = Instant::now();
    let data = make_source(&be, vol);
    let src = be.data_path(ObjKind::Volume, vol);
    println!(
        "source: {} logical, {} of data, {} allocated (written in {})",
        gib(fs::metadata(&src).expect("stat").len()),
        gib(data),
        gib(allocated(&src)),
        secs(started.elapsed())
    );
    let cold = drop_caches();
    println!(
        "page cache: {}",
        if cold {
            "dropped before each run (cold reads)"
        } else {
            "could not drop (warm reads)"
        }
    );

    let cp_dst = dir.join("cp-copy");
    let ours_dst = dir.join("engine-copy");
    let mut cp_times = Vec::new();
    let mut our_times = Vec::new();
    let mut last_stats = None;
    for round in 0..5 {
        // Alternate who goes first, so neither always gets the warmer disk.
        for who in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
            let _ = fs::remove_file(if who == 0 { &cp_dst } else { &ours_dst });
            sync();
            drop_caches();
            let started = Instant::now();
            if who == 0 {
                run(&Cmd::new("cp")
                    .arg("--sparse=always")
                    .arg("--")
                    .arg(&src)
                    .arg(&cp_dst)
                    .timeout(Duration::from_secs(900)))
                .expect("cp");
                cp_times.push(started.elapsed());
            } else {
                last_stats = Some(copy_file(&src, &ours_dst).expect("copy engine"));
                our_times.push(started.elapsed());
            }
        }
    }
    let stats = last_stats.expect("ran");
    let (cp_med, our_med) = (median(&mut cp_times), median(&mut our_times));
    println!(
        "cp --sparse=always:          median {:>9} of {}  allocated {}",
        secs(cp_med),
        list(&cp_times),
        gib(allocated(&cp_dst))
    );
    println!(
        "copy engine ({:?}): median {:>9} of {}  allocated {}  bytes copied {}  extents {}",
        stats.method,
        secs(our_med),
        list(&our_times),
        gib(allocated(&ours_dst)),
        gib(stats.bytes_copied),
        stats.extents
    );
    println!(
        "ratio: copy engine takes {:.2}x cp's time (target <= 1.00)",
        our_med.as_secs_f64() / cp_med.as_secs_f64()
    );
    let _ = fs::remove_file(&cp_dst);
    let _ = fs::remove_file(&ours_dst);

    // End to end, as apply runs it: copy + fsync of the data + sidecars.
    sync();
    drop_caches();
    let snap = Uuid::new_v4();
    let started = Instant::now();
    be.snapshot(vol, snap, "bench-snap").expect("snapshot");
    println!(
        "snapshot() end to end incl. fsync and sidecars: {}",
        secs(started.elapsed())
    );
    be.delete(snap).expect("delete snapshot");
    be.delete(vol).expect("delete source");
}
