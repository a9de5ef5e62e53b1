//! Helpers shared by the benchmarks: timing a child process and sampling its
//! peak memory.

// Not every benchmark uses every helper.
#![allow(dead_code)]

use std::process::Command;
use std::time::{Duration, Instant};

/// Peak RSS (KiB) of this process so far (`VmHWM`).
pub fn peak_rss_kib_self() -> u64 {
    vm_hwm(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())
}

fn vm_hwm(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resets this process's peak RSS (Linux: `5` into `clear_refs`).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Runs a command; returns its wall time, peak RSS (KiB) sampled from
/// `/proc/PID/status` (`VmHWM` only grows, so the last sample is the peak up to
/// a few milliseconds before exit) and whether it succeeded.
pub fn measure(cmd: &mut Command) -> (Duration, u64, bool) {
    let t = Instant::now();
    let mut child = cmd.spawn().expect("the command starts");
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            peak = peak.max(vm_hwm(&text));
        }
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    (t.elapsed(), peak, status.success())
}

/// The best of `n` runs.
pub fn best_of(n: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..n).map(|_| f()).min().unwrap_or_default()
}
