//! Prometheus metrics of the agent, rendered in the text exposition format
//! (version 0.0.4).
//!
//! Owns the metric families, their help texts and label sets, and the
//! rendering (escaping of label values, histogram buckets, `+Inf`, `_sum`,
//! `_count`). Gauges describing the last reconcile (objects by state, lost
//! volumes, drift, capacity) are replaced wholesale after each one, so a
//! volume that disappears also disappears from the metrics.
//!
//! Rejected: the `prometheus` and `prometheus-client` crates. We have a dozen
//! families and one writer; a registry with atomics and dynamic dispatch
//! would add more code paths than it saves, and the format is small and
//! stable (a test parses our output with a Prometheus text parser).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::backup::engine::ReadRecord;

/// Reconcile duration buckets, in seconds.
pub const RECONCILE_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Backup duration buckets, in seconds.
pub const BACKUP_BUCKETS: &[f64] = &[1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0];

/// A histogram with fixed buckets.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// Empty, with these upper bounds.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one observation.
    pub fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

/// One back end's capacity gauges.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BackendGauges {
    /// Discovered.
    pub up: bool,
    /// Total bytes.
    pub total: u64,
    /// Free bytes.
    pub free: u64,
    /// Provisioned bytes.
    pub provisioned: u64,
    /// Thin pool data use, percent.
    pub thin_data_percent: Option<f64>,
    /// Thin pool metadata use, percent.
    pub thin_metadata_percent: Option<f64>,
}

/// Every metric the agent exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Reconciles by result.
    pub reconciles: BTreeMap<String, u64>,
    /// Reconcile wall time.
    pub reconcile_duration: Histogram,
    /// Unix time of the last reconcile without failure.
    pub last_success: Option<f64>,
    /// Apply steps that failed.
    pub step_failures: u64,
    /// Objects by (kind, state).
    pub objects: BTreeMap<(String, String), u64>,
    /// Lost volumes.
    pub lost: u64,
    /// Drift findings.
    pub drift: u64,
    /// Back end capacity by name.
    pub backends: BTreeMap<String, BackendGauges>,
    /// The revision in force: (source kind, revision).
    pub revision: Option<(String, String)>,
    /// The revision last applied.
    pub applied_revision: Option<String>,
    /// 1 while the newest revision is refused.
    pub bad_revision: bool,
    /// Failed fetches.
    pub fetch_failures: u64,
    /// Successful fetches.
    pub fetches: u64,
    /// Webhook calls by result (`accepted`, `unauthorized`).
    pub webhooks: BTreeMap<String, u64>,
    /// Backup runs by (volume, policy, result).
    pub backup_runs: BTreeMap<(String, String, String), u64>,
    /// Per volume: (unix time, stored bytes) of the last successful backup.
    pub backup_last_success: BTreeMap<String, (f64, u64)>,
    /// Backup wall time.
    pub backup_duration: Histogram,
    /// Backups running now.
    pub backups_running: u64,
    /// Per policy: unix time of the next run.
    pub backup_next_run: BTreeMap<String, f64>,
    /// Per volume: (policy, longest gap between its schedule's slots in
    /// seconds): how old its newest backup may be before a slot was missed.
    pub backup_max_age: BTreeMap<String, (String, f64)>,
    /// Migrations in flight by volume address.
    pub migrations: BTreeMap<String, MigrationGauges>,
    /// Scheduled backups that read more than their source needs, by
    /// (volume, policy, read method).
    pub backup_read_fallbacks: BTreeMap<(String, String, String), u64>,
    /// Per volume: whether its last successful backup was such a fallback.
    pub backup_last_read_fallback: BTreeMap<String, bool>,
    /// Per (check, policy): unix time of the last scheduled verify or drill
    /// that found nothing wrong.
    pub backup_check_last_success: BTreeMap<(String, String), f64>,
    /// Per (check, policy): scheduled verifies or drills that found damage
    /// or could not run.
    pub backup_check_failures: BTreeMap<(String, String), u64>,
    /// Scheduled checks running now.
    pub backup_checks_running: u64,
    /// The fleet, with `--etcd`.
    pub fleet: Option<super::fleet::FleetStatus>,
}

/// Which number of a [`MigrationGauges`] a family shows (`None`: none yet).
type GaugePick = fn(&MigrationGauges) -> Option<u64>;

/// One migration in flight, as `/metrics` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationGauges {
    /// The back end it moves from.
    pub from: String,
    /// The back end it moves to.
    pub to: String,
    /// Bytes read so far.
    pub read: u64,
    /// Bytes it reads in all.
    pub to_read: u64,
    /// Bytes read per second since it started.
    pub rate: u64,
    /// Seconds left at that rate, once it reads.
    pub eta_seconds: Option<u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: BTreeMap::new(),
            reconcile_duration: Histogram::new(RECONCILE_BUCKETS),
            last_success: None,
            step_failures: 0,
            objects: BTreeMap::new(),
            lost: 0,
            drift: 0,
            backends: BTreeMap::new(),
            revision: None,
            applied_revision: None,
            bad_revision: false,
            fetch_failures: 0,
            fetches: 0,
            webhooks: BTreeMap::new(),
            backup_runs: BTreeMap::new(),
            backup_last_success: BTreeMap::new(),
            backup_duration: Histogram::new(BACKUP_BUCKETS),
            backups_running: 0,
            backup_next_run: BTreeMap::new(),
            backup_max_age: BTreeMap::new(),
            migrations: BTreeMap::new(),
            backup_read_fallbacks: BTreeMap::new(),
            backup_last_read_fallback: BTreeMap::new(),
            backup_check_last_success: BTreeMap::new(),
            backup_check_failures: BTreeMap::new(),
            backup_checks_running: 0,
            fleet: None,
        }
    }
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", number(value));
    }
    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (b, c) in h.bounds.iter().zip(&h.counts) {
            self.sample(&bucket, &[("le", &number(*b))], as_f64(*c));
        }
        self.sample(&bucket, &[("le", "+Inf")], as_f64(h.count));
        self.sample(&format!("{name}_sum"), &[], h.sum);
        self.sample(&format!("{name}_count"), &[], as_f64(h.count));
    }
}

/// Label value escaping of the text format: backslash, double quote, newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

#[allow(clippy::cast_precision_loss)] // counters stay far below 2^53
fn as_f64(n: u64) -> f64 {
    n as f64
}

impl Metrics {
    /// The text exposition.
    #[allow(clippy::too_many_lines)] // one block per family, in output order
    pub fn render(&self) -> String {
        let mut o = Out(String::with_capacity(4096));
        o.family("cinderblock_build_info", "gauge", "cinderblock version.");
        o.sample(
            "cinderblock_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );

        o.family(
            "cinderblock_reconcile_total",
            "counter",
            "Reconciles by result (applied, no-changes, failed, blocked, invalid-source, stopped).",
        );
        for (result, n) in &self.reconciles {
            o.sample(
                "cinderblock_reconcile_total",
                &[("result", result)],
                as_f64(*n),
            );
        }
        o.histogram(
            "cinderblock_reconcile_duration_seconds",
            "Wall time of a reconcile: read, discover, plan, apply.",
            &self.reconcile_duration,
        );
        o.family(
            "cinderblock_last_successful_reconcile_timestamp_seconds",
            "gauge",
            "Unix time the last reconcile ended without failure.",
        );
        if let Some(t) = self.last_success {
            o.sample(
                "cinderblock_last_successful_reconcile_timestamp_seconds",
                &[],
                t,
            );
        }
        o.family(
            "cinderblock_apply_step_failures_total",
            "counter",
            "Apply steps that failed (the object is retried with backoff).",
        );
        o.sample(
            "cinderblock_apply_step_failures_total",
            &[],
            as_f64(self.step_failures),
        );

        o.family(
            "cinderblock_objects",
            "gauge",
            "Objects by kind and state, as of the last reconcile.",
        );
        for ((kind, state), n) in &self.objects {
            o.sample(
                "cinderblock_objects",
                &[("kind", kind), ("state", state)],
                as_f64(*n),
            );
        }
        o.family(
            "cinderblock_lost_volumes",
            "gauge",
            "Volumes that existed and vanished outside cinderblock (not recreated).",
        );
        o.sample("cinderblock_lost_volumes", &[], as_f64(self.lost));
        o.family(
            "cinderblock_drift_objects",
            "gauge",
            "Objects changed outside cinderblock.",
        );
        o.sample("cinderblock_drift_objects", &[], as_f64(self.drift));

        o.family(
            "cinderblock_backend_up",
            "gauge",
            "1 when the back end was discovered.",
        );
        for (name, g) in &self.backends {
            o.sample(
                "cinderblock_backend_up",
                &[("backend", name)],
                f64::from(u8::from(g.up)),
            );
        }
        for (family, help, pick) in [
            ("cinderblock_backend_total_bytes", "Back end size.", 0),
            ("cinderblock_backend_free_bytes", "Back end free space.", 1),
            (
                "cinderblock_backend_provisioned_bytes",
                "Sum of the sizes of our objects on the back end.",
                2,
            ),
        ] {
            o.family(family, "gauge", help);
            for (name, g) in self.backends.iter().filter(|(_, g)| g.up) {
                let v = [g.total, g.free, g.provisioned][pick];
                o.sample(family, &[("backend", name)], as_f64(v));
            }
        }
        for (family, help, pick) in [
            (
                "cinderblock_backend_thin_data_percent",
                "Thin pool data use in percent (LVM thin back ends).",
                0,
            ),
            (
                "cinderblock_backend_thin_metadata_percent",
                "Thin pool metadata use in percent (LVM thin back ends).",
                1,
            ),
        ] {
            o.family(family, "gauge", help);
            for (name, g) in self.backends.iter().filter(|(_, g)| g.up) {
                if let Some(v) = [g.thin_data_percent, g.thin_metadata_percent][pick] {
                    o.sample(family, &[("backend", name)], v);
                }
            }
        }

        o.family(
            "cinderblock_source_revision_info",
            "gauge",
            "The source revision in force (the newest that validated).",
        );
        if let Some((kind, rev)) = &self.revision {
            o.sample(
                "cinderblock_source_revision_info",
                &[("source", kind), ("revision", rev)],
                1.0,
            );
        }
        o.family(
            "cinderblock_applied_revision_info",
            "gauge",
            "The revision last applied.",
        );
        if let Some(rev) = &self.applied_revision {
            o.sample(
                "cinderblock_applied_revision_info",
                &[("revision", rev)],
                1.0,
            );
        }
        o.family(
            "cinderblock_source_revision_bad",
            "gauge",
            "1 while the newest revision fails validation (the last good one stays in force).",
        );
        o.sample(
            "cinderblock_source_revision_bad",
            &[],
            f64::from(u8::from(self.bad_revision)),
        );
        o.family(
            "cinderblock_git_fetches_total",
            "counter",
            "Successful git fetches.",
        );
        o.sample("cinderblock_git_fetches_total", &[], as_f64(self.fetches));
        o.family(
            "cinderblock_git_fetch_failures_total",
            "counter",
            "Failed git fetches.",
        );
        o.sample(
            "cinderblock_git_fetch_failures_total",
            &[],
            as_f64(self.fetch_failures),
        );
        o.family(
            "cinderblock_webhook_requests_total",
            "counter",
            "POST /hooks/git calls by result.",
        );
        for (result, n) in &self.webhooks {
            o.sample(
                "cinderblock_webhook_requests_total",
                &[("result", result)],
                as_f64(*n),
            );
        }

        o.family(
            "cinderblock_backup_runs_total",
            "counter",
            "Backup runs by volume, policy and result.",
        );
        for ((volume, policy, result), n) in &self.backup_runs {
            o.sample(
                "cinderblock_backup_runs_total",
                &[("volume", volume), ("policy", policy), ("result", result)],
                as_f64(*n),
            );
        }
        o.family(
            "cinderblock_backup_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last successful backup per volume.",
        );
        for (volume, (t, _)) in &self.backup_last_success {
            o.sample(
                "cinderblock_backup_last_success_timestamp_seconds",
                &[("volume", volume)],
                *t,
            );
        }
        o.family(
            "cinderblock_backup_last_size_bytes",
            "gauge",
            "Bytes stored by the last successful backup per volume.",
        );
        for (volume, (_, size)) in &self.backup_last_success {
            o.sample(
                "cinderblock_backup_last_size_bytes",
                &[("volume", volume)],
                as_f64(*size),
            );
        }
        o.histogram(
            "cinderblock_backup_duration_seconds",
            "Wall time of a backup run.",
            &self.backup_duration,
        );
        o.family(
            "cinderblock_backups_running",
            "gauge",
            "Backups running now.",
        );
        o.sample(
            "cinderblock_backups_running",
            &[],
            as_f64(self.backups_running),
        );
        o.family(
            "cinderblock_backup_next_run_timestamp_seconds",
            "gauge",
            "Unix time of each policy's next scheduled run.",
        );
        for (policy, t) in &self.backup_next_run {
            o.sample(
                "cinderblock_backup_next_run_timestamp_seconds",
                &[("policy", policy)],
                *t,
            );
        }
        o.family(
            "cinderblock_backup_max_age_seconds",
            "gauge",
            "Per volume: the longest time between two slots of its policy's schedule; a newest backup older than this missed a slot.",
        );
        for (volume, (policy, secs)) in &self.backup_max_age {
            o.sample(
                "cinderblock_backup_max_age_seconds",
                &[("volume", volume), ("policy", policy)],
                *secs,
            );
        }
        o.family(
            "cinderblock_migrations_running",
            "gauge",
            "Migrations in flight.",
        );
        o.sample(
            "cinderblock_migrations_running",
            &[],
            as_f64(self.migrations.len() as u64),
        );
        let families: [(&str, &str, GaugePick); 4] = [
            (
                "cinderblock_migration_read_bytes",
                "Bytes a migration in flight has read so far.",
                |m| Some(m.read),
            ),
            (
                "cinderblock_migration_to_read_bytes",
                "Bytes a migration in flight reads in all (its allocated data, or the whole volume; with its snapshots, theirs too).",
                |m| Some(m.to_read),
            ),
            (
                "cinderblock_migration_rate_bytes_per_second",
                "Bytes a migration in flight has read per second since it started.",
                |m| Some(m.rate),
            ),
            (
                "cinderblock_migration_eta_seconds",
                "Seconds a migration in flight still needs at its rate so far (once it reads).",
                |m| m.eta_seconds,
            ),
        ];
        for (family, help, pick) in families {
            o.family(family, "gauge", help);
            for (volume, m) in &self.migrations {
                if let Some(v) = pick(m) {
                    o.sample(
                        family,
                        &[("volume", volume), ("from", &m.from), ("to", &m.to)],
                        as_f64(v),
                    );
                }
            }
        }
        o.family(
            "cinderblock_backup_read_fallbacks_total",
            "counter",
            "Scheduled backups that fell back to reading more than their source needs (a full or allocated scan instead of changed ranges, holes read), by volume, policy and read method.",
        );
        for ((volume, policy, read), n) in &self.backup_read_fallbacks {
            o.sample(
                "cinderblock_backup_read_fallbacks_total",
                &[("volume", volume), ("policy", policy), ("read", read)],
                as_f64(*n),
            );
        }
        o.family(
            "cinderblock_backup_last_read_fallback",
            "gauge",
            "1 when a volume's last successful backup fell back to a full or allocated scan.",
        );
        for (volume, fallback) in &self.backup_last_read_fallback {
            o.sample(
                "cinderblock_backup_last_read_fallback",
                &[("volume", volume)],
                if *fallback { 1.0 } else { 0.0 },
            );
        }
        for (check, what) in [("verify", "sampled verify"), ("drill", "restore drill")] {
            let name = format!("cinderblock_backup_{check}_last_success_timestamp_seconds");
            o.family(
                &name,
                "gauge",
                &format!(
                    "Unix time of each policy's last scheduled {what} that found nothing wrong."
                ),
            );
            for ((c, policy), t) in &self.backup_check_last_success {
                if c == check {
                    o.sample(&name, &[("policy", policy)], *t);
                }
            }
            let name = format!("cinderblock_backup_{check}_failures_total");
            o.family(
                &name,
                "counter",
                &format!(
                    "Scheduled {what}s per policy that found a damaged backup or could not run."
                ),
            );
            for ((c, policy), n) in &self.backup_check_failures {
                if c == check {
                    o.sample(&name, &[("policy", policy)], as_f64(*n));
                }
            }
        }
        o.family(
            "cinderblock_backup_checks_running",
            "gauge",
            "Scheduled verifies and drills running now.",
        );
        o.sample(
            "cinderblock_backup_checks_running",
            &[],
            as_f64(self.backup_checks_running),
        );
        fleet(&mut o, self.fleet.as_ref());
        o.0
    }

    /// Counts a reconcile.
    pub fn reconcile(&mut self, result: &str, seconds: f64) {
        *self.reconciles.entry(result.to_owned()).or_default() += 1;
        self.reconcile_duration.observe(seconds);
    }

    /// Counts a backup run.
    pub fn backup_run(&mut self, volume: &str, policy: &str, result: &str, seconds: f64) {
        let key = (volume.to_owned(), policy.to_owned(), result.to_owned());
        *self.backup_runs.entry(key).or_default() += 1;
        self.backup_duration.observe(seconds);
    }

    /// Records how a successful backup read its volume.
    pub fn backup_read(&mut self, volume: &str, policy: &str, read: &ReadRecord) {
        if read.fallback {
            let key = (
                volume.to_owned(),
                policy.to_owned(),
                read.method.as_str().to_owned(),
            );
            *self.backup_read_fallbacks.entry(key).or_default() += 1;
        }
        self.backup_last_read_fallback
            .insert(volume.to_owned(), read.fallback);
    }
}

/// The fleet's families. Always declared, so dashboards and alerts find
/// them; samples only with `--etcd` (`f`), and the fleet's view of other
/// hosts (leader, hosts, placements) only while etcd answers: a cut-off
/// agent reports its own trouble, not a stale fleet.
#[allow(clippy::too_many_lines)] // one block per family, in output order
fn fleet(o: &mut Out, f: Option<&super::fleet::FleetStatus>) {
    let fresh = f.filter(|f| f.available);
    o.family(
        "cinderblock_fleet_up",
        "gauge",
        "1 while etcd answers; 0 is FleetUnavailable (the reason is in /status and /readyz). Absent without --etcd.",
    );
    if let Some(f) = f {
        o.sample(
            "cinderblock_fleet_up",
            &[],
            f64::from(u8::from(f.available)),
        );
    }
    o.family(
        "cinderblock_fleet_unavailable_info",
        "gauge",
        "FleetUnavailable with its reason, while etcd does not answer.",
    );
    if let Some(f) = f.filter(|f| !f.available) {
        let reason = f.reason.as_deref().unwrap_or("etcd is unreachable");
        o.sample(
            "cinderblock_fleet_unavailable_info",
            &[("reason", "FleetUnavailable"), ("message", reason)],
            1.0,
        );
    }
    o.family(
        "cinderblock_fleet_leader",
        "gauge",
        "1 while this agent is the fleet's elected placer.",
    );
    if let Some(f) = f {
        o.sample(
            "cinderblock_fleet_leader",
            &[],
            f64::from(u8::from(f.is_leader)),
        );
    }
    o.family(
        "cinderblock_fleet_leader_info",
        "gauge",
        "The host whose agent places volumes.",
    );
    if let Some(l) = fresh.and_then(|f| f.leader.as_deref()) {
        o.sample("cinderblock_fleet_leader_info", &[("host", l)], 1.0);
    }
    o.family(
        "cinderblock_fleet_hosts",
        "gauge",
        "Hosts of the fleet by state (up: lease held; down: published, lease expired).",
    );
    o.family(
        "cinderblock_fleet_host_up",
        "gauge",
        "Per host of the fleet: 1 while its agent's lease holds, 0 when it published a view and its lease expired.",
    );
    if let Some(f) = fresh {
        o.sample(
            "cinderblock_fleet_hosts",
            &[("state", "up")],
            as_f64(f.hosts_up.len() as u64),
        );
        o.sample(
            "cinderblock_fleet_hosts",
            &[("state", "down")],
            as_f64(f.hosts_down.len() as u64),
        );
        for (hosts, up) in [(&f.hosts_up, 1.0), (&f.hosts_down, 0.0)] {
            for h in hosts {
                o.sample("cinderblock_fleet_host_up", &[("host", h)], up);
            }
        }
    }
    o.family(
        "cinderblock_fleet_placements",
        "gauge",
        "Placements recorded in etcd.",
    );
    o.family(
        "cinderblock_fleet_unavailable_volumes",
        "gauge",
        "Volumes placed on or held by hosts that are down.",
    );
    if let Some(f) = fresh {
        o.sample(
            "cinderblock_fleet_placements",
            &[],
            as_f64(f.placements as u64),
        );
        o.sample(
            "cinderblock_fleet_unavailable_volumes",
            &[],
            as_f64(f.unavailable_volumes.len() as u64),
        );
    }
    for (family, kind, help, value) in [
        (
            "cinderblock_fleet_placements_made_total",
            "counter",
            "Placements this agent wrote as the placer.",
            f.map(|f| f.placed_here),
        ),
        (
            "cinderblock_fleet_etcd_requests_total",
            "counter",
            "Requests sent to etcd.",
            f.map(|f| f.etcd_requests),
        ),
        (
            "cinderblock_fleet_etcd_errors_total",
            "counter",
            "etcd requests that failed or timed out.",
            f.map(|f| f.etcd_errors),
        ),
    ] {
        o.family(family, kind, help);
        if let Some(v) = value {
            o.sample(family, &[], as_f64(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(5.0);
        assert_eq!(h.counts, [1, 2]);
        assert_eq!(h.count, 3);
        assert!((h.sum - 7.0).abs() < 1e-9);
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics {
            revision: Some(("git".into(), "a\"b\\c\nd".into())),
            ..Metrics::default()
        };
        let text = m.render();
        assert!(
            text.contains(
                r#"cinderblock_source_revision_info{source="git",revision="a\"b\\c\nd"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn renders_every_family_with_help_and_type() {
        let mut m = Metrics::default();
        m.reconcile("applied", 0.2);
        m.objects.insert(("volume".into(), "ready".into()), 2);
        m.backends.insert(
            "local".into(),
            BackendGauges {
                up: true,
                total: 100,
                free: 60,
                provisioned: 40,
                thin_data_percent: None,
                thin_metadata_percent: None,
            },
        );
        m.backends.insert(
            "thin".into(),
            BackendGauges {
                up: true,
                total: 1 << 30,
                free: 1 << 29,
                provisioned: 1 << 31,
                thin_data_percent: Some(50.25),
                thin_metadata_percent: Some(7.5),
            },
        );
        m.backup_run("db", "nightly", "success", 3.0);
        m.backup_last_success.insert("db".into(), (1.7e9, 1234));
        m.backup_max_age
            .insert("db".into(), ("nightly".into(), 86_400.0));
        m.migrations.insert(
            "volume.db".into(),
            MigrationGauges {
                from: "thin".into(),
                to: "files".into(),
                read: 1 << 20,
                to_read: 4 << 20,
                rate: 1 << 19,
                eta_seconds: Some(6),
            },
        );
        let fallback = ReadRecord {
            method: crate::backup::engine::ReadMethod::AllocatedScan,
            reason: "the parent backup's thin snapshot is gone".into(),
            fallback: true,
        };
        m.backup_read("db", "nightly", &fallback);
        m.backup_read("db", "nightly", &fallback);
        m.backup_check_last_success
            .insert(("verify".into(), "nightly".into()), 1.7e9);
        m.backup_check_failures
            .insert(("drill".into(), "nightly".into()), 3);
        m.backup_read(
            "logs",
            "nightly",
            &ReadRecord {
                fallback: false,
                ..fallback.clone()
            },
        );
        let text = m.render();
        for line in text.lines() {
            assert!(!line.is_empty());
        }
        for needle in [
            "# TYPE cinderblock_reconcile_total counter",
            "cinderblock_reconcile_total{result=\"applied\"} 1",
            "cinderblock_reconcile_duration_seconds_bucket{le=\"0.25\"} 1",
            "cinderblock_reconcile_duration_seconds_bucket{le=\"0.1\"} 0",
            "cinderblock_reconcile_duration_seconds_bucket{le=\"+Inf\"} 1",
            "cinderblock_reconcile_duration_seconds_count 1",
            "cinderblock_objects{kind=\"volume\",state=\"ready\"} 2",
            "cinderblock_backend_free_bytes{backend=\"local\"} 60",
            "cinderblock_backend_thin_data_percent{backend=\"thin\"} 50.25",
            "cinderblock_backend_thin_metadata_percent{backend=\"thin\"} 7.5",
            "cinderblock_backup_runs_total{volume=\"db\",policy=\"nightly\",result=\"success\"} 1",
            "cinderblock_backup_last_size_bytes{volume=\"db\"} 1234",
            "cinderblock_backup_last_success_timestamp_seconds{volume=\"db\"} 1700000000",
            "cinderblock_backup_max_age_seconds{volume=\"db\",policy=\"nightly\"} 86400",
            "cinderblock_migrations_running 1",
            "cinderblock_migration_read_bytes{volume=\"volume.db\",from=\"thin\",to=\"files\"} 1048576",
            "cinderblock_migration_to_read_bytes{volume=\"volume.db\",from=\"thin\",to=\"files\"} 4194304",
            "cinderblock_migration_rate_bytes_per_second{volume=\"volume.db\",from=\"thin\",to=\"files\"} 524288",
            "cinderblock_migration_eta_seconds{volume=\"volume.db\",from=\"thin\",to=\"files\"} 6",
            "# TYPE cinderblock_backup_read_fallbacks_total counter",
            "cinderblock_backup_read_fallbacks_total{volume=\"db\",policy=\"nightly\",read=\"allocatedScan\"} 2",
            "cinderblock_backup_last_read_fallback{volume=\"db\"} 1",
            "cinderblock_backup_last_read_fallback{volume=\"logs\"} 0",
            "# TYPE cinderblock_backup_verify_last_success_timestamp_seconds gauge",
            "cinderblock_backup_verify_last_success_timestamp_seconds{policy=\"nightly\"} 1700000000",
            "# TYPE cinderblock_backup_drill_failures_total counter",
            "cinderblock_backup_drill_failures_total{policy=\"nightly\"} 3",
            "# TYPE cinderblock_backup_drill_last_success_timestamp_seconds gauge",
            "cinderblock_backup_checks_running 0",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        // A back end without a thin pool has no pool gauges.
        assert!(!text.contains("cinderblock_backend_thin_data_percent{backend=\"local\"}"));
        // A backup that read only what it needed is not counted.
        assert!(!text.contains("cinderblock_backup_read_fallbacks_total{volume=\"logs\""));
        assert!(!text.contains("cinderblock_backup_drill_last_success_timestamp_seconds{"));
        assert!(!text.contains("cinderblock_backup_verify_failures_total{"));
    }

    #[test]
    fn fleet_families_are_declared_always_and_sampled_from_a_fresh_view_only() {
        // Without --etcd: declared, no samples.
        let text = Metrics::default().render();
        assert!(text.contains("# TYPE cinderblock_fleet_up gauge"), "{text}");
        assert!(
            text.contains("# TYPE cinderblock_fleet_host_up gauge"),
            "{text}"
        );
        assert!(
            !text.lines().any(|l| l.starts_with("cinderblock_fleet")),
            "{text}"
        );

        let up = super::super::fleet::FleetStatus {
            available: true,
            leader: Some("a".into()),
            is_leader: true,
            hosts_up: vec!["a".into(), "b".into()],
            hosts_down: vec!["c".into()],
            placements: 7,
            placed_here: 5,
            unavailable_volumes: vec!["volume.x (host c)".into()],
            etcd_requests: 40,
            etcd_errors: 2,
            ..Default::default()
        };
        let m = Metrics {
            fleet: Some(up.clone()),
            ..Metrics::default()
        };
        let text = m.render();
        for needle in [
            "cinderblock_fleet_up 1\n",
            "cinderblock_fleet_leader 1\n",
            "cinderblock_fleet_leader_info{host=\"a\"} 1\n",
            "cinderblock_fleet_hosts{state=\"up\"} 2\n",
            "cinderblock_fleet_hosts{state=\"down\"} 1\n",
            "cinderblock_fleet_host_up{host=\"b\"} 1\n",
            "cinderblock_fleet_host_up{host=\"c\"} 0\n",
            "cinderblock_fleet_placements 7\n",
            "cinderblock_fleet_unavailable_volumes 1\n",
            "cinderblock_fleet_placements_made_total 5\n",
            "cinderblock_fleet_etcd_requests_total 40\n",
            "cinderblock_fleet_etcd_errors_total 2\n",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(
            !text.contains("cinderblock_fleet_unavailable_info{"),
            "{text}"
        );

        // etcd gone: the agent says so and no longer vouches for the others.
        let m = Metrics {
            fleet: Some(super::super::fleet::FleetStatus {
                available: false,
                is_leader: false,
                reason: Some("etcd at http://e:2379: deadline exceeded".into()),
                ..up
            }),
            ..Metrics::default()
        };
        let text = m.render();
        assert!(text.contains("cinderblock_fleet_up 0\n"), "{text}");
        assert!(
            text.contains("cinderblock_fleet_unavailable_info{reason=\"FleetUnavailable\",message=\"etcd at http://e:2379: deadline exceeded\"} 1"),
            "{text}"
        );
        for gone in [
            "cinderblock_fleet_host_up{",
            "cinderblock_fleet_hosts{",
            "cinderblock_fleet_leader_info{",
            "cinderblock_fleet_placements ",
            "cinderblock_fleet_unavailable_volumes ",
        ] {
            assert!(
                !text.lines().any(|l| l.starts_with(gone)),
                "{gone} while etcd is gone:\n{text}"
            );
        }
    }
}
