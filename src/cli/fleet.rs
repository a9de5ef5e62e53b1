//! The fleet on the command line: the `--etcd` options every command takes,
//! placements and fencing for `plan`/`apply`, `plan --fleet` (every host's
//! plan from what it last published, from any machine that reaches etcd) and
//! `status --fleet`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use serde::Serialize;

use crate::fleet::client::Etcd;
use crate::fleet::keys::Prefix;
use crate::fleet::{EtcdConfig, Snapshot};
use crate::manifest::ManifestSet;
use crate::observe::{Fleet, Placement};
use crate::plan::{self, Options, Plan, render};

use super::GlobalArgs;
use super::agent::parse_duration;

/// How to reach the fleet's etcd.
#[derive(Debug, Args)]
pub(crate) struct EtcdArgs {
    /// The fleet's etcd endpoints, comma-separated
    /// (`http://h1:2379,http://h2:2379`; `https://` with TLS). Without it
    /// this host plans alone.
    #[arg(
        long,
        global = true,
        env = "CINDERBLOCK_ETCD",
        value_name = "URLS",
        value_delimiter = ','
    )]
    pub(crate) etcd: Vec<String>,
    /// The key prefix of this fleet in etcd.
    #[arg(
        long,
        global = true,
        env = "CINDERBLOCK_ETCD_PREFIX",
        value_name = "PREFIX",
        default_value = "/cinderblock"
    )]
    pub(crate) etcd_prefix: Prefix,
    /// CA certificate (PEM) of the etcd servers (TLS).
    #[arg(long, global = true, env = "CINDERBLOCK_ETCD_CA", value_name = "FILE")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM), for clusters that require one.
    #[arg(
        long,
        global = true,
        env = "CINDERBLOCK_ETCD_CERT",
        value_name = "FILE",
        requires = "etcd_key"
    )]
    etcd_cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(
        long,
        global = true,
        env = "CINDERBLOCK_ETCD_KEY",
        value_name = "FILE",
        requires = "etcd_cert"
    )]
    etcd_key: Option<PathBuf>,
    /// etcd user (the password comes from --etcd-password-file or
    /// `CINDERBLOCK_ETCD_PASSWORD`, never from the command line).
    #[arg(
        long,
        global = true,
        env = "CINDERBLOCK_ETCD_USER",
        value_name = "USER"
    )]
    etcd_user: Option<String>,
    /// File whose first line is the etcd password.
    #[arg(
        long,
        global = true,
        env = "CINDERBLOCK_ETCD_PASSWORD_FILE",
        value_name = "FILE",
        requires = "etcd_user"
    )]
    etcd_password_file: Option<PathBuf>,
    /// Time limit of each etcd request.
    #[arg(long, global = true, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    etcd_timeout: Duration,
    /// The host's lease in the fleet: an agent that stops renewing it is
    /// `down` this long after (its volumes are then reported unavailable).
    #[arg(long, global = true, value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    fleet_lease_ttl: Duration,
    /// `ADDR:PORT` this host exports a volume on when it moves to another
    /// host's back end (the destination logs in there over iSCSI).
    #[arg(
        long,
        global = true,
        env = "CINDERBLOCK_MIGRATION_PORTAL",
        value_name = "ADDR:PORT"
    )]
    pub(crate) migration_portal: Option<String>,
}

/// The etcd configuration, when `--etcd` is given.
pub(crate) fn etcd_config(g: &GlobalArgs) -> anyhow::Result<Option<EtcdConfig>> {
    let a = &g.etcd;
    if a.etcd.is_empty() {
        return Ok(None);
    }
    for e in &a.etcd {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            bail!("--etcd {e:?}: give each endpoint as http://HOST:PORT or https://HOST:PORT");
        }
    }
    let password = match (
        &a.etcd_password_file,
        std::env::var("CINDERBLOCK_ETCD_PASSWORD"),
    ) {
        (Some(f), _) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the etcd password file {}", f.display()))?;
            Some(text.lines().next().unwrap_or("").to_owned())
        }
        (None, Ok(p)) => Some(p),
        (None, Err(_)) => None,
    };
    let user = match (&a.etcd_user, password) {
        (Some(u), Some(p)) => Some((u.clone(), p)),
        (Some(_), None) => bail!(
            "--etcd-user needs a password: --etcd-password-file FILE or CINDERBLOCK_ETCD_PASSWORD"
        ),
        (None, _) => None,
    };
    let ttl = i64::try_from(a.fleet_lease_ttl.as_secs()).unwrap_or(i64::MAX);
    if ttl < 2 {
        bail!("--fleet-lease-ttl must be at least 2s");
    }
    Ok(Some(EtcdConfig {
        endpoints: a.etcd.clone(),
        prefix: a.etcd_prefix.clone(),
        ca: a.etcd_ca.clone(),
        cert: a.etcd_cert.clone().zip(a.etcd_key.clone()),
        user,
        timeout: a.etcd_timeout,
        lease_ttl: ttl,
    }))
}

/// A connection for one command: its own small runtime.
pub(crate) struct CliFleet {
    rt: tokio::runtime::Runtime,
    etcd: Result<Etcd, String>,
}

impl CliFleet {
    /// Connects (a failure is kept: the plan then says the fleet is
    /// unavailable and why).
    pub(crate) fn connect(cfg: &EtcdConfig) -> anyhow::Result<CliFleet> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let etcd = rt
            .block_on(Etcd::connect(cfg))
            .map_err(|e| crate::error_chain(&e));
        Ok(CliFleet { rt, etcd })
    }

    /// The placements and what other hosts hold (one snapshot), for
    /// `host`'s plan; an unreadable fleet makes both unknown.
    pub(crate) fn world_parts(&self, host: &str) -> (Fleet, crate::observe::Remote) {
        match &self.etcd {
            Err(e) => (
                Fleet::Unavailable(e.clone()),
                crate::observe::Remote::default(),
            ),
            Ok(etcd) => match self.rt.block_on(etcd.snapshot()) {
                Ok(s) => (
                    Fleet::On(Snapshot::placement_map(&s.placements)),
                    s.remote_for(host),
                ),
                Err(e) => (
                    Fleet::Unavailable(crate::error_chain(&e)),
                    crate::observe::Remote::default(),
                ),
            },
        }
    }

    fn jobs(&self) -> Result<&Etcd, crate::xhost::XhostError> {
        self.etcd
            .as_ref()
            .map_err(|e| crate::xhost::XhostError::Jobs(e.clone()))
    }

    fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let etcd = self.etcd.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(self.rt.block_on(etcd.snapshot())?)
    }
}

impl crate::apply::Fence for CliFleet {
    fn check(&self, volume: &str, backend: &str, revision: i64) -> Result<(), String> {
        let etcd = self.etcd.as_ref().map_err(Clone::clone)?;
        self.rt
            .block_on(etcd.check_placement(volume, backend, revision))
            .map_err(|e| crate::error_chain(&e))
    }
}

fn job_err(e: &crate::fleet::FleetError) -> crate::xhost::XhostError {
    crate::xhost::XhostError::Jobs(crate::error_chain(e))
}

impl crate::xhost::Jobs for CliFleet {
    fn get(
        &self,
        volume: &str,
    ) -> Result<Option<(crate::xhost::Job, i64)>, crate::xhost::XhostError> {
        self.rt
            .block_on(self.jobs()?.job(volume))
            .map_err(|e| job_err(&e))
    }
    fn put(
        &self,
        job: &crate::xhost::Job,
        expect: Option<i64>,
    ) -> Result<Option<i64>, crate::xhost::XhostError> {
        self.rt
            .block_on(self.jobs()?.put_job(job, expect))
            .map_err(|e| job_err(&e))
    }
    fn delete(&self, volume: &str, expect: i64) -> Result<bool, crate::xhost::XhostError> {
        self.rt
            .block_on(self.jobs()?.delete_job(volume, expect))
            .map_err(|e| job_err(&e))
    }
    fn initiator(&self, host: &str) -> Result<Option<String>, crate::xhost::XhostError> {
        self.rt
            .block_on(self.jobs()?.initiator(host))
            .map_err(|e| job_err(&e))
    }
}

/// One host in a fleet plan.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FleetHostPlan<'a> {
    host: String,
    up: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    published_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<render::JsonPlan<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
}

/// A new placement in a fleet plan.
#[derive(Serialize)]
struct ProposedPlacement<'a> {
    volume: &'a str,
    backend: &'a str,
    host: &'a str,
    reason: &'a str,
}

/// What a fleet plan found, host by host.
pub(crate) struct FleetPlan {
    snap: Snapshot,
    decision: plan::placement::Decision,
    /// (host, its plan or why there is none).
    hosts: Vec<(String, Result<Plan, String>)>,
}

/// Plans every host of the fleet against what it last published.
pub(crate) fn fleet_plan(set: &ManifestSet, conn: &CliFleet) -> anyhow::Result<FleetPlan> {
    let snap = conn.snapshot()?;
    let input = snap.placer_input();
    let decision = plan::placement::place(set, &input);
    let mut placements: BTreeMap<String, Placement> = Snapshot::placement_map(&snap.placements);
    for p in &decision.placements {
        placements.insert(
            p.volume.clone(),
            Placement {
                backend: p.backend.clone(),
                host: p.host.clone(),
                revision: None,
            },
        );
    }
    let hosts: BTreeSet<String> = snap
        .views
        .keys()
        .cloned()
        .chain(crate::fleet::declared_hosts(set))
        .collect();
    let mut out = Vec::new();
    for h in hosts {
        let p = match snap.world_of(&h, &placements) {
            None => Err(format!(
                "host {h} has not published a view (no agent with --etcd has run there yet)"
            )),
            Some(Err(e)) => Err(format!("host {h}'s view cannot be read: {e}")),
            Some(Ok((world, recorded))) => {
                Ok(plan::plan(set, &world, &recorded, Options::default()))
            }
        };
        out.push((h, p));
    }
    Ok(FleetPlan {
        snap,
        decision,
        hosts: out,
    })
}

impl FleetPlan {
    /// The exit code `--detailed-exitcode` gives.
    pub(crate) fn code(&self, detailed: bool) -> i32 {
        let plans = || self.hosts.iter().filter_map(|(_, p)| p.as_ref().ok());
        if plans().any(|p| !p.errors.is_empty()) {
            return 1;
        }
        if !detailed {
            return 0;
        }
        if plans().any(Plan::destroys_data) {
            3
        } else if plans().any(|p| !p.actions.is_empty()) || !self.decision.placements.is_empty() {
            2
        } else {
            0
        }
    }

    fn tally(&self) -> (plan::Tally, usize, usize) {
        let mut t = plan::Tally::default();
        let (mut errors, mut waiting) = (0, 0);
        for p in self.hosts.iter().filter_map(|(_, p)| p.as_ref().ok()) {
            t = t.plus(plan::Tally::of(&p.actions));
            errors += p.errors.len();
            waiting += p.waiting.len();
        }
        (t, errors, waiting)
    }

    /// The text: each host's plan under its heading, the placements the
    /// change would make, the fleet's summary.
    pub(crate) fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let leader = self.snap.leader.as_deref().unwrap_or("none elected");
        let _ = writeln!(
            s,
            "Fleet: {} host(s), {} up; placer: {leader}; {} placement(s) recorded.\n",
            self.hosts.len(),
            self.hosts
                .iter()
                .filter(|(h, _)| self.snap.is_up(h))
                .count(),
            self.snap.placements.len()
        );
        for (h, p) in &self.hosts {
            let state = if self.snap.is_up(h) { "up" } else { "down" };
            let rev = self
                .snap
                .views
                .get(h)
                .and_then(|(v, _)| v.revision.clone())
                .map(|r| format!(", manifests {r}"))
                .unwrap_or_default();
            let _ = writeln!(s, "=== host {h} ({state}{rev}) ===\n");
            match p {
                Ok(p) => s.push_str(&render::text(p)),
                Err(e) => {
                    let _ = writeln!(s, "Not planned: {e}");
                }
            }
            s.push('\n');
        }
        if !self.decision.placements.is_empty() {
            s.push_str("Placements this change makes:\n");
            for p in &self.decision.placements {
                let _ = writeln!(
                    s,
                    "  + volume.{} -> {} (host {}): {}",
                    p.volume, p.backend, p.host, p.reason
                );
            }
            s.push('\n');
        }
        for w in &self.decision.waiting {
            let _ = writeln!(s, "Not placed: {}: {}", w.address, w.reason);
        }
        if !self.decision.waiting.is_empty() {
            s.push('\n');
        }
        let (t, errors, waiting) = self.tally();
        let _ = writeln!(
            s,
            "Fleet: {} New placements: {}.",
            render::summary_of(t, errors, waiting),
            self.decision.placements.len()
        );
        s
    }

    /// The JSON document.
    pub(crate) fn json(&self) -> serde_json::Value {
        let hosts: Vec<FleetHostPlan<'_>> = self
            .hosts
            .iter()
            .map(|(h, p)| FleetHostPlan {
                host: h.clone(),
                up: self.snap.is_up(h),
                published_at: self.snap.views.get(h).map(|(v, _)| v.published_at),
                revision: self.snap.views.get(h).and_then(|(v, _)| v.revision.clone()),
                plan: p.as_ref().ok().map(render::json),
                problem: p.as_ref().err().cloned(),
            })
            .collect();
        let placements: Vec<ProposedPlacement<'_>> = self
            .decision
            .placements
            .iter()
            .map(|p| ProposedPlacement {
                volume: &p.volume,
                backend: &p.backend,
                host: &p.host,
                reason: &p.reason,
            })
            .collect();
        let (t, errors, waiting) = self.tally();
        serde_json::json!({
            "formatVersion": "1.0",
            "etcdRevision": self.snap.revision,
            "leader": self.snap.leader,
            "hosts": hosts,
            "placements": placements,
            "notPlaced": self.decision.waiting,
            "summary": {
                "add": t.add, "change": t.change, "destroy": t.destroy, "forget": t.forget,
                "migrate": t.migrate, "errors": errors, "waiting": waiting,
                "newPlacements": self.decision.placements.len(),
                "text": render::summary_of(t, errors, waiting),
            },
        })
    }

    /// Markdown for a pull-request comment: every host's plan in one.
    pub(crate) fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let plans: Vec<plan::markdown::HostPlan<'_>> = self
            .hosts
            .iter()
            .filter_map(|(h, p)| {
                p.as_ref()
                    .ok()
                    .map(|plan| plan::markdown::HostPlan { host: h, plan })
            })
            .collect();
        let mut extra = String::new();
        if !self.decision.placements.is_empty() {
            extra.push_str("#### Placements this change makes\n\n| volume | back end | host | why |\n| --- | --- | --- | --- |\n");
            for p in &self.decision.placements {
                let _ = writeln!(
                    extra,
                    "| <code>{}</code> | <code>{}</code> | <code>{}</code> | {} |",
                    p.volume,
                    p.backend,
                    p.host,
                    p.reason.replace('|', "\\|")
                );
            }
            extra.push('\n');
        }
        for (h, p) in &self.hosts {
            if let Err(e) = p {
                let _ = writeln!(
                    extra,
                    "> host <code>{h}</code> not planned: {}\n",
                    e.replace('<', "&lt;")
                );
            }
        }
        plan::markdown::markdown(&plans, &extra)
    }
}

/// `status --fleet`: every host, liveness, revision, back ends, placements,
/// unavailable volumes.
#[allow(clippy::too_many_lines)] // one section after another
pub(crate) fn status(g: &GlobalArgs, json: bool) -> anyhow::Result<i32> {
    let Some(cfg) = etcd_config(g)? else {
        bail!("status --fleet reads the fleet from etcd: give --etcd URLS (or CINDERBLOCK_ETCD)");
    };
    let conn = CliFleet::connect(&cfg)?;
    let snap = conn.snapshot()?;
    let unavailable = crate::agent::fleet::unavailable_volumes(&snap);
    let mut out = std::io::stdout().lock();
    let hosts = snap.known_hosts();
    if json {
        let doc = serde_json::json!({
            "etcdRevision": snap.revision,
            "leader": snap.leader,
            "hosts": hosts.iter().map(|h| {
                let view = snap.views.get(h);
                serde_json::json!({
                    "host": h,
                    "up": snap.is_up(h),
                    "agent": snap.hosts.get(h),
                    "publishedAt": view.map(|(v, _)| v.published_at),
                    "revision": view.and_then(|(v, _)| v.revision.clone()),
                    "appliedRevision": view.and_then(|(v, _)| v.applied_revision.clone()),
                    "plan": view.map(|(v, _)| v.plan.clone()),
                    "backends": view.map(|(_, b)| b.iter().map(|b| serde_json::json!({
                        "name": b.name,
                        "discovery": match &b.discovery {
                            crate::fleet::records::WireDiscovery::Ok { capacity, objects, .. } => serde_json::json!({
                                "total": capacity.total, "free": capacity.free,
                                "provisioned": capacity.provisioned, "volumes": objects.iter().filter(|o| o.kind == "volume").count(),
                            }),
                            crate::fleet::records::WireDiscovery::Failed { error } => serde_json::json!({"error": error}),
                        },
                    })).collect::<Vec<_>>()),
                })
            }).collect::<Vec<_>>(),
            "placements": snap.placements.iter().map(|(v, (p, rev))| serde_json::json!({
                "volume": v, "backend": p.backend, "host": p.host, "revision": rev,
                "placedBy": p.placed_by, "at": p.at,
            })).collect::<Vec<_>>(),
            "unavailableVolumes": unavailable,
            "problems": snap.problems,
        });
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
        return Ok(0);
    }
    writeln!(
        out,
        "Fleet at {} (prefix {}), etcd revision {}; placer: {}",
        cfg.endpoints_text(),
        cfg.prefix,
        snap.revision,
        snap.leader.as_deref().unwrap_or("none elected")
    )?;
    writeln!(out, "\nHosts:")?;
    for h in &hosts {
        let state = if snap.is_up(h) { "up  " } else { "down" };
        let Some((v, backends)) = snap.views.get(h) else {
            writeln!(out, "  {h:<16} {state}  no view published yet")?;
            continue;
        };
        writeln!(
            out,
            "  {h:<16} {state}  published {}; manifests {}; applied {}; last plan: {} action(s), {} waiting, {} error(s)",
            v.published_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            v.revision.as_deref().unwrap_or("none"),
            v.applied_revision.as_deref().unwrap_or("none"),
            v.plan.actions,
            v.plan.waiting,
            v.plan.errors.len()
        )?;
        for b in backends {
            match &b.discovery {
                crate::fleet::records::WireDiscovery::Ok {
                    capacity, objects, ..
                } => {
                    let vols = objects.iter().filter(|o| o.kind == "volume").count();
                    writeln!(
                        out,
                        "    {:<14} {} provisioned of {} ({}); {} free; {vols} volume(s)",
                        b.name,
                        plan::schedule::size(capacity.provisioned),
                        plan::schedule::size(capacity.total),
                        if b.thin { "thin" } else { "thick" },
                        plan::schedule::size(capacity.free),
                    )?;
                }
                crate::fleet::records::WireDiscovery::Failed { error } => {
                    writeln!(out, "    {:<14} not discovered: {error}", b.name)?;
                }
            }
        }
    }
    let mut per_host: BTreeMap<&str, usize> = BTreeMap::new();
    for (p, _) in snap.placements.values() {
        *per_host.entry(p.host.as_str()).or_default() += 1;
    }
    writeln!(
        out,
        "\nPlacements: {}{}",
        snap.placements.len(),
        if per_host.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                per_host
                    .iter()
                    .map(|(h, n)| format!("{h} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    )?;
    if unavailable.is_empty() {
        writeln!(out, "Unavailable volumes: none")?;
    } else {
        writeln!(out, "Unavailable volumes (their host is down):")?;
        for v in &unavailable {
            writeln!(out, "  {v}")?;
        }
    }
    for p in &snap.problems {
        writeln!(out, "Problem: {p}")?;
    }
    Ok(0)
}
