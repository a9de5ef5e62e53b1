//! Benchmark: `plan` over 10,000 volumes on 20 `file` back ends.
//!
//! 9,500 volumes exist (sidecars and sparse data files written directly), the
//! manifests declare all 10,000 with 500 of them grown: the plan has 500
//! creates (placed by the scheduler) and 500 extends. Prints the planner's
//! time in-process (pure: discovery excluded) and the release binary's end to
//! end (load, validate, discover 20 directories, schedule, plan, render) with
//! its peak memory and CPU time over rounds (min, median, max), then the
//! binary's own table of phases (`plan --timings`). Targets (issue 21):
//! under 150 ms and 64 MiB.
//!
//! Run: `cargo bench --bench plan`.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::cast_precision_loss)]
#![allow(clippy::cast_sign_loss)]
#![allow(clippy::similar_names, clippy::too_many_lines)]
#![allow(clippy::disallowed_methods)] // a benchmark runs the binary directly

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{best_of, measure};

const BACKENDS: usize = 20;
const VOLUMES: usize = 10_000;
const EXISTING: usize = 9_500;

fn main() {
    let tmp = common::scratch("cinderblock-plan-bench-");
    // CB_BENCH_KEEP=1 keeps the site for profiling the binary on it.
    let (_tmp, dir) = if std::env::var_os("CB_BENCH_KEEP").is_some() {
        (None, tmp.keep())
    } else {
        let dir = tmp.path().to_owned();
        (Some(tmp), dir)
    };
    let dir = dir.as_path();
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let mut site = String::new();
    for b in 0..BACKENDS {
        let root = dir.join(format!("b{b:02}"));
        std::fs::create_dir_all(root.join(".cinderblock")).unwrap();
        writeln!(site, "---\napiVersion: cinderblock.dev/v1alpha1\nkind: Backend\nmetadata:\n  name: b{b:02}\nspec:\n  backendName: pool\n  file:\n    path: {}", root.display()).unwrap();
    }
    site.push_str("---\napiVersion: cinderblock.dev/v1alpha1\nkind: VolumeType\nmetadata:\n  name: standard\nspec:\n  extraSpecs:\n    volume_backend_name: pool\n---\napiVersion: cinderblock.dev/v1alpha1\nkind: SchedulerPolicy\nmetadata:\n  name: default\nspec:\n  weighers:\n    - name: CapacityWeigher\n    - name: VolumeNumberWeigher\n");
    std::fs::write(manifests.join("00-site.yaml"), site).unwrap();
    let t = Instant::now();
    for f in 0..VOLUMES / 100 {
        let mut text = String::new();
        for v in 0..100 {
            let n = f * 100 + v;
            let gib = 1 + n % 8;
            let grown = n < EXISTING && n % 19 == 0;
            let size = if grown { gib + 1 } else { gib };
            writeln!(text, "---\napiVersion: cinderblock.dev/v1alpha1\nkind: Volume\nmetadata:\n  name: vol-{n:05}\nspec:\n  size: {size}Gi\n  volumeType: standard").unwrap();
            if n < EXISTING {
                let b = n % BACKENDS;
                let root = dir.join(format!("b{b:02}"));
                let uuid =
                    uuid::Uuid::from_u128(0x1000_0000_0000_4000_8000_0000_0000_0000 + n as u128);
                let size = (gib as u64) << 30;
                let meta = serde_json::json!({
                    "format": "cinderblock.file-object", "version": 1, "uuid": uuid, "name": format!("vol-{n:05}"),
                    "kind": "volume", "owner": {"managedBy": "cinderblock", "backend": format!("b{b:02}")},
                    "size": size, "allocation": "sparse", "createdAt": "2026-11-24T00:00:00Z", "state": "ready"
                });
                std::fs::write(
                    root.join(".cinderblock").join(format!("{uuid}.json")),
                    meta.to_string(),
                )
                .unwrap();
                let data = std::fs::File::create(root.join(format!("volume-{uuid}"))).unwrap();
                data.set_len(size).unwrap();
            }
        }
        std::fs::write(manifests.join(format!("vols-{f:03}.yaml")), text).unwrap();
    }
    println!(
        "plan benchmark: {VOLUMES} volumes on {BACKENDS} back ends ({EXISTING} exist; set-up {:.1} s) in {}",
        t.elapsed().as_secs_f64(),
        dir.display()
    );

    // In-process: the pure planner alone.
    let loaded = cinderblock::manifest::load_paths(std::slice::from_ref(&manifests));
    assert_eq!(loaded.errors(), 0, "{:?}", loaded.diagnostics.first());
    // The recorded state of a host that applied the 9,500 before.
    let state = dir.join("state");
    let mut ledger = cinderblock::state::record::Ledger::load(&state).unwrap();
    for n in 0..EXISTING {
        let uuid = uuid::Uuid::from_u128(0x1000_0000_0000_4000_8000_0000_0000_0000 + n as u128);
        ledger.recorded.objects.insert(
            uuid,
            cinderblock::state::record::RecordedObject {
                kind: cinderblock::model::ObjKind::Volume,
                name: format!("vol-{n:05}"),
                backend: format!("b{:02}", n % BACKENDS),
                size: ((1 + n % 8) as u64) << 30,
                deletion_policy: cinderblock::manifest::kinds::DeletionPolicy::Retain,
                consistency_group: None,
            },
        );
    }
    std::fs::create_dir_all(&state).unwrap();
    ledger.save(&state).unwrap();
    let t = Instant::now();
    let registry = cinderblock::registry::Registry::new(
        &loaded.set,
        "bench",
        &state,
        cinderblock::exec::Exec::host(),
    );
    let world = cinderblock::observe::discover(&loaded.set, &registry, &state);
    let discover = t.elapsed();
    let mut actions = 0;
    let planner = best_of(5, || {
        let t = Instant::now();
        let p = cinderblock::plan::plan(
            &loaded.set,
            &world,
            &ledger.recorded,
            cinderblock::plan::Options::default(),
        );
        assert!(p.errors.is_empty(), "{:?}", p.errors.first());
        actions = p.actions.len();
        t.elapsed()
    });
    println!(
        "  discovery of {BACKENDS} directories: {:>8.1} ms",
        discover.as_secs_f64() * 1e3
    );
    println!(
        "  planner (pure, {actions} actions):  {:>8.1} ms",
        planner.as_secs_f64() * 1e3
    );

    // End to end: the release binary, timed from outside (wall, the CPU
    // time of the child, its peak RSS) over rounds, then once with
    // `--timings` for its own table of phases.
    let bin = env!("CARGO_BIN_EXE_cinderblock");
    let plan_cmd = || {
        let mut c = Command::new(bin);
        c.args(["--state"])
            .arg(&state)
            .args(["--host", "bench", "plan", "-f"])
            .arg(&manifests)
            .stdout(Stdio::null());
        c
    };
    let mut walls = Vec::new();
    let mut cpus = Vec::new();
    let mut rss = 0;
    for _ in 0..ROUNDS {
        let before = children_cpu();
        let (wall, r, ok) = measure(&mut plan_cmd());
        assert!(ok, "plan failed");
        cpus.push(children_cpu().saturating_sub(before));
        walls.push(wall);
        rss = rss.max(r);
    }
    let stats = |v: &mut Vec<Duration>| {
        v.sort_unstable();
        format!(
            "min {:>6.1}  median {:>6.1}  max {:>6.1} ms",
            v[0].as_secs_f64() * 1e3,
            v[v.len() / 2].as_secs_f64() * 1e3,
            v[v.len() - 1].as_secs_f64() * 1e3
        )
    };
    println!(
        "  cinderblock plan (end to end, {ROUNDS} rounds):\n    wall {}\n    cpu  {}\n    peak RSS {:.1} MiB   (targets: < 150 ms, < 64 MiB)",
        stats(&mut walls),
        stats(&mut cpus),
        rss as f64 / 1024.0
    );
    let out = plan_cmd().arg("--timings").output().unwrap();
    assert!(out.status.success(), "plan --timings failed");
    println!("  phases of one run (cinderblock plan --timings):");
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        println!("    {line}");
    }
    println!(
        "  machine load (1-minute average): {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .unwrap_or("?")
    );
}

/// Rounds of the end-to-end run.
const ROUNDS: usize = 5;

/// CPU time (user + system) of this process's waited-for children so far.
fn children_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_CHILDREN).unwrap();
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    tv(u.user_time()) + tv(u.system_time())
}
