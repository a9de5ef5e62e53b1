//! `plan --timings` and `apply --timings`: how long each phase of one run
//! took, as a table on stderr.
//!
//! Owns the phase clock of a command: wall time, CPU time (user + system,
//! every thread of the process, from `getrusage`) and the peak resident
//! memory after each phase. CPU time is what the benchmarks compare on a
//! shared machine, where wall time is noise.
//!
//! Must not: change what a command does. A disabled clock records nothing.

use std::io::Write;
use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};

/// One measured phase.
struct Row {
    phase: &'static str,
    wall: Duration,
    cpu: Duration,
    peak_kib: u64,
}

/// The clock of one command's phases.
pub(super) struct Timings {
    enabled: bool,
    start: Instant,
    last: Instant,
    last_cpu: Duration,
    rows: Vec<Row>,
}

/// User plus system CPU time of the whole process, and its peak RSS (KiB).
fn usage() -> (Duration, u64) {
    getrusage(UsageWho::RUSAGE_SELF).map_or((Duration::ZERO, 0), |u| {
        let tv = |t: nix::sys::time::TimeVal| {
            Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
                + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
        };
        (
            tv(u.user_time()) + tv(u.system_time()),
            u64::try_from(u.max_rss()).unwrap_or(0),
        )
    })
}

impl Timings {
    /// A clock started now; `enabled: false` measures nothing.
    pub(super) fn new(enabled: bool) -> Self {
        let now = Instant::now();
        Self {
            enabled,
            start: now,
            last: now,
            last_cpu: if enabled { usage().0 } else { Duration::ZERO },
            rows: Vec::new(),
        }
    }

    /// A clock that records nothing.
    pub(super) fn off() -> Self {
        Self::new(false)
    }

    /// Ends the phase `phase` (it began where the previous one ended).
    pub(super) fn mark(&mut self, phase: &'static str) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let (cpu, peak_kib) = usage();
        self.rows.push(Row {
            phase,
            wall: now - self.last,
            cpu: cpu.saturating_sub(self.last_cpu),
            peak_kib,
        });
        self.last = now;
        self.last_cpu = cpu;
    }

    /// The table, when enabled: one line per phase, then the total.
    pub(super) fn report(&self) -> std::io::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let mut err = std::io::stderr().lock();
        write!(err, "{}", self.table())
    }

    fn table(&self) -> String {
        use std::fmt::Write as _;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mut s = String::from("phase                   wall ms    cpu ms   peak MiB\n");
        let mut cpu = Duration::ZERO;
        for r in &self.rows {
            cpu += r.cpu;
            #[allow(clippy::cast_precision_loss)] // shown rounded
            let mib = r.peak_kib as f64 / 1024.0;
            let _ = writeln!(
                s,
                "{:<20} {:>10.1} {:>9.1} {:>10.1}",
                r.phase,
                ms(r.wall),
                ms(r.cpu),
                mib
            );
        }
        let _ = writeln!(
            s,
            "{:<20} {:>10.1} {:>9.1}",
            "total",
            ms(self.last - self.start),
            ms(cpu)
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_phase_and_a_total_that_adds_up() {
        let mut t = Timings::new(true);
        std::thread::sleep(Duration::from_millis(5));
        t.mark("load");
        t.mark("plan");
        let table = t.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[1].starts_with("load "), "{table}");
        assert!(lines[2].starts_with("plan "), "{table}");
        let wall = |l: &str| -> f64 { l.split_whitespace().nth(1).unwrap().parse().unwrap() };
        assert!(wall(lines[1]) >= 5.0, "{table}");
        let sum = wall(lines[1]) + wall(lines[2]);
        assert!((wall(lines[3]) - sum).abs() < 0.2, "{table}");
    }

    #[test]
    fn a_disabled_clock_records_nothing() {
        let mut t = Timings::new(false);
        t.mark("load");
        assert!(t.rows.is_empty());
    }
}
