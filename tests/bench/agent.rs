//! Agent benchmark: change-to-apply latency, memory over 1,000 manifest
//! edits, idle CPU and memory. Prints figures; asserts nothing about time.
//!
//! Run with `cargo bench --bench agent`. The agent is the release binary on
//! a temp dir with one `file` back end.

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)] // figures for people

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

const H: &str = "apiVersion: cinderblock.dev/v1alpha1\n";

struct Agent {
    child: Child,
    state: PathBuf,
}

impl Agent {
    fn start(dir: &Path, extra: &[&str]) -> Agent {
        let log = fs::File::create(dir.join("agent.log")).unwrap();
        #[allow(clippy::disallowed_methods)] // the binary under test
        let child = Command::new(env!("CARGO_BIN_EXE_cinderblock"))
            .current_dir(dir)
            .args([
                "--state",
                "state",
                "--host",
                "bench",
                "-q",
                "agent",
                "-f",
                "manifests",
            ])
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let a = Agent {
            child,
            state: dir.join("state"),
        };
        a.wait(Duration::from_secs(30), |s| {
            s["reconcileCount"].as_u64() > Some(0)
        });
        a
    }

    fn status(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&fs::read_to_string(self.state.join("agent-status.json")).ok()?).ok()
    }

    fn wait(
        &self,
        timeout: Duration,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status().filter(|s| cond(s)) {
                return s;
            }
            assert!(Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn proc_status(&self, field: &str) -> u64 {
        fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// User + system CPU time, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        // Fields 14 and 15 of stat (utime, stime); `after` starts at field 3.
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn site() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("manifests");
    fs::create_dir_all(&m).unwrap();
    fs::create_dir_all(dir.path().join("pool")).unwrap();
    fs::write(
        m.join("backend.yaml"),
        format!(
            "{H}kind: Backend\nmetadata:\n  name: local\nspec:\n  file:\n    path: {}\n",
            dir.path().join("pool").display()
        ),
    )
    .unwrap();
    fs::write(m.join("v0.yaml"), volume("v0", 1)).unwrap();
    dir
}

fn volume(name: &str, mib: u64) -> String {
    format!("{H}kind: Volume\nmetadata:\n  name: {name}\nspec:\n  size: {mib}Mi\n")
}

fn volumes_in(pool: &Path) -> usize {
    fs::read_dir(pool)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("volume-")
        })
        .count()
}

fn since_epoch(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn rfc3339_secs(v: &serde_json::Value) -> f64 {
    let t = chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    t.timestamp_micros() as f64 / 1e6
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Write → apply started (the reconcile's start), write → volume on disk.
fn latency(debounce: &str, n: usize) {
    let dir = site();
    let agent = Agent::start(dir.path(), &["--debounce", debounce, "--resync", "1h"]);
    let mut to_start = Vec::new();
    let mut to_done = Vec::new();
    for i in 1..=n {
        let before = agent.status().unwrap()["reconcileCount"].as_u64().unwrap();
        let written = SystemTime::now();
        let t = Instant::now();
        fs::write(
            dir.path().join(format!("manifests/v{i}.yaml")),
            volume(&format!("v{i}"), 1),
        )
        .unwrap();
        while volumes_in(&dir.path().join("pool")) < i + 1 {
            std::thread::sleep(Duration::from_micros(200));
        }
        to_done.push(t.elapsed().as_secs_f64() * 1000.0);
        let s = agent.wait(Duration::from_secs(10), |s| {
            s["reconcileCount"].as_u64() > Some(before)
        });
        to_start
            .push((rfc3339_secs(&s["lastReconcile"]["startedAt"]) - since_epoch(written)) * 1000.0);
        std::thread::sleep(Duration::from_millis(50));
    }
    for v in [&mut to_start, &mut to_done] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "latency (debounce {debounce}, {n} new manifests): write -> apply starts: median {:.0} ms, p90 {:.0} ms, max {:.0} ms; write -> volume created: median {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        pct(&to_start, 0.5),
        pct(&to_start, 0.9),
        pct(&to_start, 1.0),
        pct(&to_done, 0.5),
        pct(&to_done, 0.9),
        pct(&to_done, 1.0),
    );
}

/// RSS over 1,000 edits of one manifest (each an extend of the volume).
fn memory_over_edits(edits: u64) {
    let dir = site();
    let agent = Agent::start(dir.path(), &["--debounce", "20ms", "--resync", "1h"]);
    let file = dir.path().join("manifests/v0.yaml");
    let mut samples = Vec::new();
    let started = Instant::now();
    for i in 1..=edits {
        let before = agent.status().unwrap()["reconcileCount"].as_u64().unwrap();
        fs::write(&file, volume("v0", 1 + i)).unwrap();
        agent.wait(Duration::from_secs(10), |s| {
            s["reconcileCount"].as_u64() > Some(before) && s["lastReconcile"]["result"] == "applied"
        });
        if i == 10 || i % (edits / 4).max(1) == 0 {
            samples.push((i, agent.proc_status("VmRSS:")));
        }
    }
    let first = samples[0].1 as f64;
    let last = samples.last().unwrap().1 as f64;
    println!(
        "memory over {edits} manifest edits (each applied as an extend, {:.1} s): RSS {} KiB; last vs after 10 edits: {:+.1} %; peak {} KiB",
        started.elapsed().as_secs_f64(),
        samples
            .iter()
            .map(|(i, kib)| format!("{kib} at {i}"))
            .collect::<Vec<_>>()
            .join(", "),
        (last - first) / first * 100.0,
        agent.proc_status("VmHWM:"),
    );
}

/// CPU and memory of an idle agent (default resync of 5 minutes).
fn idle(seconds: u64) {
    let dir = site();
    let agent = Agent::start(dir.path(), &[]);
    std::thread::sleep(Duration::from_secs(2));
    let ticks0 = agent.cpu_ticks();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let ticks = agent.cpu_ticks() - ticks0;
    // Clock ticks are 1/100 s on Linux (USER_HZ).
    let cpu = ticks as f64 / 100.0 / t.elapsed().as_secs_f64() * 100.0;
    println!(
        "idle agent over {seconds} s: CPU {cpu:.3} % ({ticks} ticks of 10 ms), RSS {} KiB, threads {}",
        agent.proc_status("VmRSS:"),
        agent.proc_status("Threads:"),
    );
}

fn main() {
    let _ = common::peak_rss_kib_self;
    latency("300ms", 20);
    latency("50ms", 20);
    // CINDERBLOCK_BENCH_EDITS=N for a longer soak.
    let edits = std::env::var("CINDERBLOCK_BENCH_EDITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    memory_over_edits(edits);
    idle(30);
}
