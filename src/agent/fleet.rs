//! The agent's part in a fleet (`agent --etcd`): membership, the placer
//! election, placements, published views, and what the status, `/readyz`
//! and the metrics say about it.
//!
//! One task ([`run`]) holds the connection: it grants the host's lease
//! (`--fleet-lease-ttl`, 15 s) and keeps it alive, registers the host under
//! it, campaigns in etcd's election, and watches the fleet's keys. A new
//! placement wakes the reconciler (`fleet` trigger); a published view or a
//! host coming or going wakes the placer. While this agent holds the
//! election it places the unpinned volumes of the manifests in force
//! ([`crate::plan::placement::place`]) and writes them, each once, in
//! transactions conditioned on its election key. On any etcd error the task
//! says `FleetUnavailable` with the reason, drops the connection and starts
//! again after a backoff (1 s doubling to 15 s); a lost lease also loses
//! the election, so a partitioned leader cannot place anything (its writes
//! compare the election key).
//!
//! The reconciler talks to etcd through the same [`FleetLink`] on its
//! blocking thread: placements before each plan (`World::fleet`; etcd
//! unreachable means `Fleet::Unavailable`, so unplaced volumes wait and
//! everything else goes on), the fencing check right before each create of
//! a placed volume, and its view after each reconcile.
//!
//! Must not: place anything while not elected, act on a placement it
//! cannot prove current, or hold a mutex across an await.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use super::reconcile::Desired;
use super::{Reason, Shared, lock};
use crate::fleet::client::Etcd;
use crate::fleet::records::{BackendRecord, HostRecord, HostView, PlacementRecord, PlanSummary};
use crate::fleet::{EtcdConfig, FleetError, Snapshot};
use crate::observe::{Fleet, World};
use crate::state::record::Recorded;

/// What the status document says about the fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetStatus {
    /// The endpoints.
    pub endpoints: String,
    /// The key prefix.
    pub prefix: String,
    /// Whether etcd answers.
    pub available: bool,
    /// Why not, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Since when `available` has its value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// The host whose agent places volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Whether that is this agent.
    pub is_leader: bool,
    /// Hosts up (their lease holds), sorted.
    pub hosts_up: Vec<String>,
    /// Hosts that published a view but are down, sorted.
    pub hosts_down: Vec<String>,
    /// Placements in etcd.
    pub placements: usize,
    /// Placements this agent wrote.
    pub placed_here: u64,
    /// Volumes placed on or found on down hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable_volumes: Vec<String>,
    /// Volumes the placer could not place, and why (leader only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub not_placed: BTreeMap<String, String>,
    /// Every host the fleet knows (live, or down with a published view),
    /// sorted by name: what the status page's fleet table shows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<FleetHostStatus>,
    /// etcd requests and failures.
    pub etcd_requests: u64,
    /// Failed etcd requests.
    pub etcd_errors: u64,
}

/// One host of the fleet, as its last published view has it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetHostStatus {
    /// The host.
    pub host: String,
    /// Whether its lease holds.
    pub up: bool,
    /// When it last published its view (none yet: `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<DateTime<Utc>>,
    /// The manifests revision in force there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The revision it last applied completely.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_revision: Option<String>,
    /// Its pending changes: its last plan in short.
    pub pending: PlanSummary,
    /// Placements on its back ends.
    pub placements: usize,
}

/// The link between the agent's tasks and etcd.
pub struct FleetLink {
    /// How to reach etcd.
    pub config: EtcdConfig,
    /// This host.
    pub host: String,
    runtime: tokio::runtime::Handle,
    etcd: Mutex<Option<Etcd>>,
    status: Mutex<FleetStatus>,
    /// Wakes the placer.
    wake: Notify,
    /// Hash of the last published view (unchanged views are not written).
    published: Mutex<Option<blake3::Hash>>,
    /// Counters of earlier connections.
    retired: Mutex<(u64, u64)>,
    /// `ADDR:PORT` this host exports on for moves to other hosts.
    pub migration_portal: Option<String>,
}

impl FleetLink {
    /// A link, not connected yet (the task connects).
    pub fn new(config: EtcdConfig, host: String, runtime: tokio::runtime::Handle) -> Self {
        let status = FleetStatus {
            endpoints: config.endpoints_text(),
            prefix: config.prefix.to_string(),
            reason: Some("not connected yet".into()),
            ..FleetStatus::default()
        };
        FleetLink {
            config,
            host,
            runtime,
            etcd: Mutex::new(None),
            status: Mutex::new(status),
            wake: Notify::new(),
            published: Mutex::new(None),
            retired: Mutex::new((0, 0)),
            migration_portal: None,
        }
    }

    /// With the portal this host exports on for moves to other hosts.
    #[must_use]
    pub fn with_portal(mut self, portal: Option<String>) -> Self {
        self.migration_portal = portal;
        self
    }

    /// The status now.
    pub fn status(&self) -> FleetStatus {
        let mut s = lock(&self.status).clone();
        let (mut req, mut err) = *lock(&self.retired);
        if let Some(e) = lock(&self.etcd).as_ref() {
            req += e.stats.requests.load(Ordering::Relaxed);
            err += e.stats.errors.load(Ordering::Relaxed);
        }
        s.etcd_requests = req;
        s.etcd_errors = err;
        s
    }

    fn client(&self) -> Option<Etcd> {
        lock(&self.etcd).clone()
    }

    fn set_available(&self, ok: bool, reason: Option<String>) {
        let mut s = lock(&self.status);
        if s.available != ok || s.since.is_none() {
            s.since = Some(Utc::now());
        }
        if !ok && s.available {
            tracing::warn!(
                reason = reason.as_deref().unwrap_or(""),
                "the fleet is unavailable"
            );
        }
        s.available = ok;
        s.reason = reason;
        if !ok {
            s.is_leader = false;
        }
    }

    fn failed(&self, e: &FleetError) -> String {
        let msg = crate::error_chain(e);
        self.set_available(false, Some(msg.clone()));
        msg
    }

    /// The placements, for the reconciler's plan (blocking: called on the
    /// reconciler's thread).
    pub fn placements(&self) -> Fleet {
        let Some(etcd) = self.client() else {
            let why = lock(&self.status)
                .reason
                .clone()
                .unwrap_or_else(|| "not connected".into());
            return Fleet::Unavailable(format!("etcd at {}: {why}", self.config.endpoints_text()));
        };
        match self.runtime.block_on(etcd.placements()) {
            Ok(p) => {
                lock(&self.status).placements = p.len();
                Fleet::On(Snapshot::placement_map(&p))
            }
            Err(e) => Fleet::Unavailable(self.failed(&e)),
        }
    }

    /// Publishes this host's view after a reconcile (blocking), unless it
    /// is the same as the last one published.
    pub fn publish(
        &self,
        world: &World,
        recorded: &Recorded,
        revision: Option<String>,
        applied: Option<String>,
        plan: PlanSummary,
    ) {
        let Some(etcd) = self.client() else { return };
        let view = HostView::of(&self.host, world, revision, applied, plan, Utc::now());
        let backends: Vec<BackendRecord> = world
            .backends
            .values()
            .map(|b| BackendRecord::of(&self.host, b, recorded))
            .collect();
        let hash = {
            let mut h = blake3::Hasher::new();
            let mut v = view.clone();
            v.published_at = DateTime::<Utc>::UNIX_EPOCH;
            h.update(&serde_json::to_vec(&v).unwrap_or_default());
            h.update(&serde_json::to_vec(&backends).unwrap_or_default());
            h.finalize()
        };
        if *lock(&self.published) == Some(hash) {
            return;
        }
        match self.runtime.block_on(etcd.publish(&view, backends)) {
            Ok(bytes) => {
                *lock(&self.published) = Some(hash);
                tracing::debug!(bytes, "view published");
            }
            Err(e) => {
                let msg = self.failed(&e);
                tracing::warn!(error = %msg, "cannot publish this host's view");
            }
        }
    }
}

impl crate::apply::Fence for FleetLink {
    fn check(&self, volume: &str, backend: &str, revision: i64) -> Result<(), String> {
        let Some(etcd) = self.client() else {
            return Err(format!(
                "cannot prove the placement of volume {volume} is current: etcd at {} is not connected",
                self.config.endpoints_text()
            ));
        };
        self.runtime
            .block_on(etcd.check_placement(volume, backend, revision))
            .map_err(|e| crate::error_chain(&e))
    }
}

impl FleetLink {
    /// The placements and what other hosts hold (one snapshot of the
    /// fleet), for the reconciler's plan; an unreadable fleet makes both
    /// unknown, so no volume another host holds is ever created here.
    pub fn world_parts(&self) -> (Fleet, crate::observe::Remote) {
        let Some(etcd) = self.client() else {
            return (self.placements(), crate::observe::Remote::default());
        };
        match self.runtime.block_on(etcd.snapshot()) {
            Ok(snap) => {
                lock(&self.status).placements = snap.placements.len();
                (
                    Fleet::On(Snapshot::placement_map(&snap.placements)),
                    snap.remote_for(&self.host),
                )
            }
            Err(e) => (
                Fleet::Unavailable(self.failed(&e)),
                crate::observe::Remote::default(),
            ),
        }
    }

    fn etcd_for_jobs(&self) -> Result<Etcd, crate::xhost::XhostError> {
        self.client().ok_or_else(|| {
            crate::xhost::XhostError::Jobs(format!(
                "etcd at {} is not connected",
                self.config.endpoints_text()
            ))
        })
    }
}

fn job_err(e: &FleetError) -> crate::xhost::XhostError {
    crate::xhost::XhostError::Jobs(crate::error_chain(e))
}

impl crate::xhost::Jobs for FleetLink {
    fn get(
        &self,
        volume: &str,
    ) -> Result<Option<(crate::xhost::Job, i64)>, crate::xhost::XhostError> {
        let etcd = self.etcd_for_jobs()?;
        self.runtime
            .block_on(etcd.job(volume))
            .map_err(|e| job_err(&e))
    }
    fn put(
        &self,
        job: &crate::xhost::Job,
        expect: Option<i64>,
    ) -> Result<Option<i64>, crate::xhost::XhostError> {
        let etcd = self.etcd_for_jobs()?;
        self.runtime
            .block_on(etcd.put_job(job, expect))
            .map_err(|e| job_err(&e))
    }
    fn delete(&self, volume: &str, expect: i64) -> Result<bool, crate::xhost::XhostError> {
        let etcd = self.etcd_for_jobs()?;
        self.runtime
            .block_on(etcd.delete_job(volume, expect))
            .map_err(|e| job_err(&e))
    }
    fn initiator(&self, host: &str) -> Result<Option<String>, crate::xhost::XhostError> {
        let etcd = self.etcd_for_jobs()?;
        self.runtime
            .block_on(etcd.initiator(host))
            .map_err(|e| job_err(&e))
    }
}

/// The agent's fleet task: connect, keep the lease, campaign, watch, place;
/// start again after any etcd error.
pub async fn run(
    link: Arc<FleetLink>,
    shared: Arc<Shared>,
    desired: watch::Receiver<Desired>,
    mut shutdown: watch::Receiver<bool>,
    info: HostRecord,
) -> Result<(), String> {
    let mut backoff = Duration::from_secs(1);
    loop {
        let outcome = tokio::select! {
            r = session(&link, &shared, desired.clone(), &info) => r,
            _ = shutdown.changed() => Ok(()),
        };
        lock(&link.status).is_leader = false;
        if let Some(e) = lock(&link.etcd).take() {
            let mut r = lock(&link.retired);
            r.0 += e.stats.requests.load(Ordering::Relaxed);
            r.1 += e.stats.errors.load(Ordering::Relaxed);
        }
        if *shutdown.borrow() {
            return Ok(());
        }
        match outcome {
            Ok(()) => backoff = Duration::from_secs(1),
            Err(e) => {
                let msg = link.failed(&e);
                tracing::warn!(error = %msg, retry_in_s = backoff.as_secs(), "fleet connection lost");
            }
        }
        shared.triggers.push(Reason::Fleet);
        publish_status(&link, &shared);
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return Ok(()),
        }
        backoff = (backoff * 2).min(Duration::from_secs(15));
    }
}

/// Copies the fleet status into the agent's status and metrics.
pub fn publish_status(link: &FleetLink, shared: &Shared) {
    let f = link.status();
    let now = Utc::now();
    {
        let mut s = lock(&shared.status);
        if f.available {
            let leader = f.leader.clone().unwrap_or_else(|| "none yet".into());
            s.set_condition(
                "FleetReady",
                true,
                "Connected",
                &format!(
                    "etcd at {}; placer {leader}; {} host(s) up",
                    f.endpoints,
                    f.hosts_up.len()
                ),
                now,
            );
        } else {
            s.set_condition(
                "FleetReady",
                false,
                "FleetUnavailable",
                f.reason.as_deref().unwrap_or("etcd is unreachable"),
                now,
            );
        }
        s.fleet = Some(f.clone());
    }
    lock(&shared.metrics).fleet = Some(f);
    shared.publish();
}

/// One connection's life: returns on an etcd error (or never).
#[allow(clippy::too_many_lines)] // one select over the session's events, kept together
async fn session(
    link: &Arc<FleetLink>,
    shared: &Arc<Shared>,
    mut desired: watch::Receiver<Desired>,
    info: &HostRecord,
) -> Result<(), FleetError> {
    let etcd = Etcd::connect(&link.config).await?;
    let ttl = link.config.lease_ttl.max(2);
    let lease = etcd.grant(ttl).await?;
    etcd.register(info, lease).await?;
    *lock(&link.etcd) = Some(etcd.clone());
    *lock(&link.published) = None;
    link.set_available(true, None);
    tracing::info!(endpoints = %etcd.endpoints(), lease = format!("{lease:x}"), ttl, "joined the fleet");
    let _revoke = RevokeOnDrop {
        etcd: etcd.clone(),
        lease,
    };
    // Placements made while we were away; our view.
    shared.triggers.push(Reason::Fleet);

    let mut raw = etcd.raw();
    let (mut keeper, mut acks) = etcd
        .call("keep the lease alive", raw.lease_keep_alive(lease))
        .await?;
    let mut watch_client = etcd.raw();
    let mut stream = etcd
        .call(
            "watch the fleet",
            watch_client.watch(
                etcd.keys().all(),
                Some(etcd_client::WatchOptions::new().with_prefix()),
            ),
        )
        .await?;
    let keys = etcd.keys().clone();

    // The campaign waits until this agent is elected; it has no time limit.
    let mut elect_client = etcd.raw();
    let election = keys.election();
    let host = link.host.clone();
    let campaign = async move {
        elect_client
            .campaign(election, host, lease)
            .await
            .map_err(|source| {
                FleetError::request("campaign for the placer election", String::new(), source)
            })
    };
    tokio::pin!(campaign);
    let mut leader: Option<etcd_client::LeaderKey> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(
        u64::try_from(ttl / 3).unwrap_or(1).max(1),
    ));
    let mut place_tick = tokio::time::interval(Duration::from_secs(5));
    let mut status_tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                etcd.call("keep the lease alive", keeper.keep_alive()).await?;
            }
            ack = acks.message() => {
                match ack {
                    Ok(Some(r)) if r.ttl() > 0 => {}
                    Ok(_) => return Err(lease_lost(&etcd)),
                    Err(source) => return Err(FleetError::request("keep the lease alive", etcd.endpoints().to_owned(), source)),
                }
            }
            r = &mut campaign, if leader.is_none() => {
                let mut resp = r?;
                let key = resp.take_leader().ok_or(FleetError::NotLeader)?;
                tracing::info!("elected the fleet's placer");
                leader = Some(key);
                lock(&link.status).is_leader = true;
                link.wake.notify_one();
            }
            msg = stream.message() => {
                let resp = msg.map_err(|source| FleetError::request("watch the fleet", etcd.endpoints().to_owned(), source))?;
                let Some(resp) = resp else { return Err(lease_lost(&etcd)) };
                if resp.canceled() {
                    return Err(FleetError::request("watch the fleet", etcd.endpoints().to_owned(), etcd_client::Error::WatchError("the watch was cancelled".into())));
                }
                let mut placements = false;
                let mut others = false;
                for ev in resp.events() {
                    match ev.kv().and_then(|kv| keys.parse(kv.key())) {
                        Some(crate::fleet::keys::Key::Placement(_)) => placements = true,
                        Some(_) => others = true,
                        None => {}
                    }
                }
                if placements {
                    shared.triggers.push(Reason::Fleet);
                }
                if (placements || others) && leader.is_some() {
                    link.wake.notify_one();
                }
            }
            () = link.wake.notified(), if leader.is_some() => {
                // Let a burst of views land first.
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Some(l) = &leader {
                    placing(link, place_once(link, &etcd, l, &desired).await)?;
                }
            }
            _ = place_tick.tick(), if leader.is_some() => {
                if let Some(l) = &leader {
                    placing(link, place_once(link, &etcd, l, &desired).await)?;
                }
            }
            r = desired.changed(), if leader.is_some() => {
                if r.is_ok() {
                    link.wake.notify_one();
                }
            }
            _ = status_tick.tick() => {
                // A slow or failed read says so, and the session goes on:
                // the lease and the watch decide whether it is over.
                match refresh(link, &etcd).await {
                    Ok(()) => link.set_available(true, None),
                    Err(e) => {
                        link.failed(&e);
                    }
                }
                publish_status(link, shared);
            }
        }
    }
}

/// A round of placement's outcome: losing the election ends the session
/// (a new one campaigns again); other errors wait for the next round.
fn placing(link: &FleetLink, r: Result<(), FleetError>) -> Result<(), FleetError> {
    match r {
        Err(FleetError::NotLeader) => Err(FleetError::NotLeader),
        Err(e) => {
            let msg = link.failed(&e);
            tracing::warn!(error = %msg, "placement round failed; retried");
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

fn lease_lost(etcd: &Etcd) -> FleetError {
    FleetError::request(
        "keep the lease alive",
        etcd.endpoints().to_owned(),
        etcd_client::Error::LeaseKeepAliveError("the lease expired or the stream ended".into()),
    )
}

/// Revokes the lease when a session ends cleanly or not (best effort, in
/// the background): the host is `down` and its election key gone at once
/// instead of after the TTL.
struct RevokeOnDrop {
    etcd: Etcd,
    lease: i64,
}

impl Drop for RevokeOnDrop {
    fn drop(&mut self) {
        let etcd = self.etcd.clone();
        let lease = self.lease;
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                let _ = etcd.revoke(lease).await;
            });
        }
    }
}

/// Reads the fleet for the status: leader, hosts up and down, placements,
/// volumes on down hosts.
async fn refresh(link: &FleetLink, etcd: &Etcd) -> Result<(), FleetError> {
    let snap = etcd.snapshot().await?;
    let mut s = lock(&link.status);
    s.leader.clone_from(&snap.leader);
    s.hosts_up = snap.hosts.keys().cloned().collect();
    s.hosts_down = snap
        .views
        .keys()
        .filter(|h| !snap.is_up(h))
        .cloned()
        .collect();
    s.placements = snap.placements.len();
    s.unavailable_volumes = unavailable_volumes(&snap);
    s.hosts = fleet_hosts(&snap);
    Ok(())
}

/// Every known host of `snap`: liveness, its view's revisions and pending
/// changes, and its placements.
pub fn fleet_hosts(snap: &Snapshot) -> Vec<FleetHostStatus> {
    snap.known_hosts()
        .into_iter()
        .map(|h| {
            let view = snap.views.get(&h).map(|(v, _)| v);
            FleetHostStatus {
                up: snap.is_up(&h),
                published_at: view.map(|v| v.published_at),
                revision: view.and_then(|v| v.revision.clone()),
                applied_revision: view.and_then(|v| v.applied_revision.clone()),
                pending: view.map(|v| v.plan.clone()).unwrap_or_default(),
                placements: snap
                    .placements
                    .values()
                    .filter(|(p, _)| p.host == h)
                    .count(),
                host: h,
            }
        })
        .collect()
}

/// Volumes placed on, or found on, hosts that are down.
pub fn unavailable_volumes(snap: &Snapshot) -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    for (v, (p, _)) in &snap.placements {
        if !snap.is_up(&p.host) {
            out.insert(format!("volume.{v} (host {})", p.host));
        }
    }
    for (h, (_, backends)) in &snap.views {
        if snap.is_up(h) {
            continue;
        }
        for b in backends {
            if let crate::fleet::records::WireDiscovery::Ok { objects, .. } = &b.discovery {
                for o in objects.iter().filter(|o| o.kind == "volume") {
                    out.insert(format!("volume.{} (host {h})", o.name));
                }
            }
        }
    }
    out.into_iter().collect()
}

/// One round of placement by the elected agent.
async fn place_once(
    link: &FleetLink,
    etcd: &Etcd,
    leader: &etcd_client::LeaderKey,
    desired: &watch::Receiver<Desired>,
) -> Result<(), FleetError> {
    let set = Arc::clone(&desired.borrow().set);
    if set.volumes.is_empty() {
        return Ok(());
    }
    let snap = etcd.snapshot().await?;
    let input = snap.placer_input();
    let decision = crate::plan::placement::place(&set, &input);
    {
        let mut s = lock(&link.status);
        s.not_placed = decision
            .waiting
            .iter()
            .map(|w| (w.address.clone(), w.reason.clone()))
            .collect();
    }
    if decision.placements.is_empty() {
        return Ok(());
    }
    let now = Utc::now();
    let records: Vec<PlacementRecord> = decision
        .placements
        .iter()
        .map(|p| PlacementRecord {
            v: crate::fleet::records::VERSION,
            volume: p.volume.clone(),
            backend: p.backend.clone(),
            host: p.host.clone(),
            size: p.size,
            placed_by: link.host.clone(),
            at: now,
            reason: p.reason.clone(),
        })
        .collect();
    let out = etcd.place(leader, &records).await?;
    for (v, rev) in &out.placed {
        if let Some(p) = decision.placements.iter().find(|p| &p.volume == v) {
            tracing::info!(volume = %v, backend = %p.backend, host = %p.host, revision = rev, reason = %p.reason, "placed");
        }
    }
    for v in &out.taken {
        tracing::info!(volume = %v, "already placed by another placer; left as it is");
    }
    lock(&link.status).placed_here += out.placed.len() as u64;
    Ok(())
}
