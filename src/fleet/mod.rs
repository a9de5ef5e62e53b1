//! The fleet: one manifest tree, many storage hosts, coordinated through
//! etcd (an existing consensus engine; nothing home-made).
//!
//! Owns the client ([`client`]: timeouts, counters, the fleet's few
//! requests), the key layout ([`keys`]), the records and their bounded
//! encoding ([`records`]), and [`Snapshot`]: everything the fleet holds, read
//! at one revision, turned into the planner's inputs — the placements of
//! one host's plan ([`Snapshot::fleet_for`]), a host's published world
//! (`plan --fleet`) and the placer's view of the whole fleet
//! ([`Snapshot::placer_input`]).
//!
//! The model: every agent keeps a lease (TTL ~15 s) and its host record
//! under it (liveness); after each reconcile it publishes its back ends'
//! views (capacity, objects, records) without a lease, so a down host's
//! last view stays readable. One agent, elected through etcd's election
//! API, places unpinned volumes with the same scheduler over the fleet
//! ([`crate::plan::placement`]) and writes each placement once, in a
//! transaction that requires the key to be absent and the election key to
//! be its own. A placement's `mod_revision` is its fencing token: a host
//! checks it right before it creates the volume. Placements never move; a
//! host removes the placement of a volume of its own that is gone and no
//! longer declared.
//!
//! Must not: decide placements outside the pure placer, act on a placement
//! it cannot prove current, or block local work on etcd (a host without
//! etcd keeps reconciling what is pinned or placed and already there).

pub mod client;
pub mod keys;
pub mod records;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

pub use client::{EtcdConfig, FenceError};
use records::{BackendRecord, HostRecord, HostView, PlacementRecord};

use crate::manifest::{ManifestSet, Name};
use crate::observe::{Discovery, Placement, World};
use crate::plan::placement::PlacerInput;

/// Errors talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// No connection.
    #[error("cannot connect to etcd at {endpoints}{hint}")]
    Connect {
        /// The endpoints.
        endpoints: String,
        /// What to check, when the cause is known ([`hint`]).
        hint: &'static str,
        /// Why.
        #[source]
        source: Box<etcd_client::Error>,
    },
    /// A request failed.
    #[error("etcd at {endpoints}: cannot {what}{hint}")]
    Request {
        /// What was asked.
        what: &'static str,
        /// The endpoints.
        endpoints: String,
        /// What to check, when the cause is known ([`hint`]).
        hint: &'static str,
        /// Why.
        #[source]
        source: Box<etcd_client::Error>,
    },
    /// A request took too long (no quorum, a partition, a dead member).
    #[error("etcd at {endpoints}: cannot {what}: no answer within {after:?}")]
    Timeout {
        /// What was asked.
        what: &'static str,
        /// The endpoints.
        endpoints: String,
        /// The limit.
        after: Duration,
    },
    /// A record could not be written or read.
    #[error("etcd record")]
    Record(#[from] records::RecordError),
    /// A TLS file.
    #[error("cannot read {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// This agent no longer holds the placer election.
    #[error("this agent is no longer the fleet's placer (its election key is gone)")]
    NotLeader,
}

impl FleetError {
    /// A failed request, with the [`hint`] its cause gives.
    pub fn request(
        what: &'static str,
        endpoints: String,
        source: etcd_client::Error,
    ) -> FleetError {
        FleetError::Request {
            what,
            endpoints,
            hint: hint(&source),
            source: Box::new(source),
        }
    }
}

/// What the user should check for an etcd error whose cause is a setting
/// (credentials, certificates), in words; empty for other errors (their
/// source says the rest).
pub fn hint(e: &etcd_client::Error) -> &'static str {
    let text = e.to_string();
    let has = |s: &str| text.contains(s);
    if has("authentication failed") || has("invalid auth token") {
        " (etcd refused the user name or password: check --etcd-user and --etcd-password-file)"
    } else if has("UnknownIssuer") || has("BadSignature") {
        " (the server's certificate is not signed by the CA of --etcd-ca)"
    } else if has("NotValidForName") {
        " (the server's certificate is not valid for the endpoint's host name)"
    } else if has("Expired") || has("NotValidYet") {
        " (a certificate is expired or not valid yet)"
    } else if has("CertificateRequired") || has("bad certificate") || has("UnknownCA") {
        " (etcd wants a client certificate it trusts: check --etcd-cert and --etcd-key)"
    } else if has("InvalidContentType") || has("CorruptMessage") || has("http2 error") {
        " (does the endpoint speak TLS? use https:// with TLS, http:// without)"
    } else if has("permission denied") {
        " (the etcd user may not use this prefix: grant its role readwrite on --etcd-prefix)"
    } else if has("user name is empty") || has("user name not found") {
        " (etcd has authentication on: give --etcd-user and --etcd-password-file)"
    } else {
        ""
    }
}

/// Everything the fleet holds, at one etcd revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The revision read.
    pub revision: i64,
    /// Live hosts (their lease holds).
    pub hosts: BTreeMap<String, HostRecord>,
    /// Published views, by host: the view and its back ends.
    pub views: BTreeMap<String, (HostView, Vec<BackendRecord>)>,
    /// Placements by volume, with their revision.
    pub placements: BTreeMap<String, (PlacementRecord, i64)>,
    /// Cross-host migration jobs by volume, with their revision.
    pub jobs: BTreeMap<String, (crate::xhost::Job, i64)>,
    /// The elected placer's host.
    pub leader: Option<String>,
    /// Records that could not be read.
    pub problems: Vec<String>,
    /// Bytes read.
    pub bytes: u64,
}

impl Snapshot {
    /// The placements as the planner reads them (`World::fleet`).
    pub fn placement_map(
        placements: &BTreeMap<String, (PlacementRecord, i64)>,
    ) -> BTreeMap<String, Placement> {
        placements
            .iter()
            .map(|(v, (p, rev))| {
                (
                    v.clone(),
                    Placement {
                        backend: p.backend.clone(),
                        host: p.host.clone(),
                        revision: Some(*rev),
                    },
                )
            })
            .collect()
    }

    /// Whether `host` is up (its lease holds).
    pub fn is_up(&self, host: &str) -> bool {
        self.hosts.contains_key(host)
    }

    /// Hosts that published a view or are live, sorted.
    pub fn known_hosts(&self) -> BTreeSet<String> {
        self.hosts
            .keys()
            .chain(self.views.keys())
            .cloned()
            .collect()
    }

    /// The placer's input: every published back end (a down host's marked
    /// failed, so nothing new goes there; its objects still count as
    /// existing), the volumes that exist and where, the hosts that
    /// published, and the placements.
    pub fn placer_input(&self) -> PlacerInput {
        let mut input = PlacerInput::default();
        for (host, (view, backends)) in &self.views {
            input.published.insert(host.clone());
            let up = self.is_up(host);
            for b in backends {
                let Ok(mut v) = b.to_view() else {
                    input
                        .partial
                        .insert(host.clone(), format!("back end {} cannot be read", b.name));
                    continue;
                };
                if let Some(inv) = v.inventory() {
                    for o in &inv.objects {
                        if o.kind == crate::observe::ObjKind::Volume
                            && o.health != crate::observe::Health::Migrating
                        {
                            input
                                .existing
                                .entry(o.name.clone())
                                .or_default()
                                .push(v.name.as_str().to_owned());
                        }
                    }
                    if !inv.complete() {
                        input.partial.insert(
                            host.clone(),
                            format!("back end {}: {}", v.name, inv.problems.join("; ")),
                        );
                    }
                } else if let Discovery::Failed(e) = &v.discovery {
                    input
                        .partial
                        .insert(host.clone(), format!("back end {}: {e}", v.name));
                }
                if !up {
                    v.discovery = Discovery::Failed(format!(
                        "host {host} is down (its lease expired; last seen {})",
                        view.published_at
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ));
                }
                if input.world.backends.contains_key(&v.name) {
                    input.partial.insert(
                        host.clone(),
                        format!("back end {} is published by more than one host", v.name),
                    );
                    continue;
                }
                input.host_of.insert(v.name.clone(), host.clone());
                input.world.backends.insert(v.name.clone(), v);
            }
            for m in &view.missing {
                input
                    .partial
                    .insert(host.clone(), format!("back end {m} was not discovered"));
            }
        }
        input.placements = Self::placement_map(&self.placements);
        input
    }

    /// What `host`'s plan needs of the other hosts for cross-host
    /// migrations (`World::remote`): their volumes and the jobs.
    pub fn remote_for(&self, host: &str) -> crate::observe::Remote {
        let mut r = crate::observe::Remote::default();
        for (h, (_, backends)) in &self.views {
            if h == host {
                continue;
            }
            for b in backends {
                let Ok(v) = b.to_view() else { continue };
                let Some(inv) = v.inventory() else { continue };
                for o in inv
                    .objects
                    .iter()
                    .filter(|o| o.kind == crate::observe::ObjKind::Volume)
                {
                    r.volumes.entry(o.name.clone()).or_default().push(
                        crate::observe::RemoteVolume {
                            host: h.clone(),
                            backend: v.name.as_str().to_owned(),
                            uuid: o.uuid,
                            size: o.size,
                            allocated: o.allocated,
                            health: o.health,
                            snapshots: inv
                                .objects
                                .iter()
                                .filter(|s| {
                                    s.kind == crate::observe::ObjKind::Snapshot
                                        && s.parent == Some(o.uuid)
                                })
                                .map(|s| crate::observe::RemoteSnapshot {
                                    name: s.name.clone(),
                                    uuid: s.uuid,
                                    size: s.size,
                                    allocated: s.allocated,
                                    health: s.health,
                                })
                                .collect(),
                        },
                    );
                }
            }
        }
        r.jobs = self
            .jobs
            .iter()
            .map(|(v, (j, _))| (v.clone(), j.view()))
            .collect();
        r
    }

    /// The world and records `host` last published: what `plan` there
    /// starts from (`plan --fleet`), with the placements of `placements`.
    pub fn world_of(
        &self,
        host: &str,
        placements: &BTreeMap<String, Placement>,
    ) -> Option<Result<(World, crate::state::record::Recorded), String>> {
        let (view, backends) = self.views.get(host)?;
        Some(view.to_world(backends).map(|(mut w, r)| {
            w.fleet = crate::observe::Fleet::On(placements.clone());
            w.remote = self.remote_for(host);
            (w, r)
        }))
    }
}

/// Hosts the manifests name (`Backend.spec.host`), sorted.
pub fn declared_hosts(set: &ManifestSet) -> BTreeSet<String> {
    set.backends
        .values()
        .filter_map(|b| b.spec.host.clone())
        .collect()
}

/// The back ends of `host` in the manifests.
pub fn backends_of<'s>(set: &'s ManifestSet, host: &str) -> Vec<&'s Name> {
    set.backends
        .iter()
        .filter(|(_, b)| b.spec.host.as_deref() == Some(host))
        .map(|(n, _)| n)
        .collect()
}

/// This host's iSCSI initiator name (`/etc/iscsi/initiatorname.iscsi`),
/// published for cross-host migrations; `None` without open-iscsi.
pub fn local_initiator() -> Option<String> {
    let text = std::fs::read_to_string("/etc/iscsi/initiatorname.iscsi").ok()?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("InitiatorName="))
        .map(str::trim)
        .find(|n| n.parse::<crate::manifest::values::IscsiName>().is_ok())
        .map(str::to_owned)
}
