//! The etcd client of the fleet: etcd-client (tonic/prost) with a timeout
//! on every request, the fleet's key layout, byte and error counters, and
//! the few operations the fleet needs — each one request or one
//! transaction.
//!
//! Must not: retry by itself (callers decide: the agent backs off, the CLI
//! fails), log secrets (the password is never in an error or a `Debug`), or
//! write outside its prefix.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, LeaderKey, PutOptions,
    Txn, TxnOp,
};

use super::keys::{Key, Keys, Prefix};
use super::records::{self, BackendRecord, HostRecord, HostView, PlacementRecord};
use super::{FleetError, Snapshot};

/// The largest snapshot answer read (the fleet's data is a few MiB; etcd
/// itself caps a range answer far above).
const SNAPSHOT_LIMIT: usize = 256 << 20;

/// How to reach etcd.
#[derive(Clone)]
pub struct EtcdConfig {
    /// Endpoints (`http://H:2379` or `https://H:2379`).
    pub endpoints: Vec<String>,
    /// Key prefix.
    pub prefix: Prefix,
    /// CA certificate (PEM) that signed the servers' certificates.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM), for clusters that require them.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// User name and password (etcd's authentication).
    pub user: Option<(String, String)>,
    /// Every request's time limit.
    pub timeout: Duration,
    /// The host's lease, in seconds: a host that stops renewing it is
    /// `down` this long after.
    pub lease_ttl: i64,
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("timeout", &self.timeout)
            .field("lease_ttl", &self.lease_ttl)
            .finish()
    }
}

impl EtcdConfig {
    /// The endpoints, for messages.
    pub fn endpoints_text(&self) -> String {
        self.endpoints.join(",")
    }
}

/// Counters of what the client did.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests sent.
    pub requests: AtomicU64,
    /// Requests that failed or timed out.
    pub errors: AtomicU64,
    /// Bytes of keys and values read.
    pub bytes_read: AtomicU64,
    /// Bytes of keys and values written.
    pub bytes_written: AtomicU64,
}

/// A connected client.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    keys: Keys,
    timeout: Duration,
    endpoints: String,
    /// What it did.
    pub stats: Arc<Stats>,
}

/// What a batch of placements came to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PlaceOutcome {
    /// Volumes placed now, with the placement's revision.
    pub placed: Vec<(String, i64)>,
    /// Volumes someone placed first (left as they are).
    pub taken: Vec<String>,
}

/// Why a placement cannot be acted on.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// etcd could not say.
    #[error("cannot prove the placement of volume {volume} is current")]
    Unreachable {
        /// The volume.
        volume: String,
        /// Why.
        #[source]
        source: FleetError,
    },
    /// The placement changed or went.
    #[error(
        "the placement of volume {volume} changed since the plan was made ({found}); planning again"
    )]
    Changed {
        /// The volume.
        volume: String,
        /// What etcd holds now.
        found: String,
    },
}

impl Etcd {
    /// Connects (the connection is lazy: the first request finds out
    /// whether etcd answers; this checks it with one status call).
    pub async fn connect(cfg: &EtcdConfig) -> Result<Etcd, FleetError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(cfg.timeout)
            .with_keep_alive(Duration::from_secs(2), cfg.timeout)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some((u, p)) = &cfg.user {
            opts = opts.with_user(u.clone(), p.clone());
        }
        if cfg.ca.is_some() || cfg.cert.is_some() {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &cfg.ca {
                let pem = std::fs::read(ca).map_err(|source| FleetError::File {
                    path: ca.clone(),
                    source,
                })?;
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
            }
            if let Some((cert, key)) = &cfg.cert {
                let read = |p: &PathBuf| {
                    std::fs::read(p).map_err(|source| FleetError::File {
                        path: p.clone(),
                        source,
                    })
                };
                tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
            }
            opts = opts.with_tls(tls);
        }
        let endpoints = cfg.endpoints_text();
        let connect = Client::connect(&cfg.endpoints, Some(opts));
        let client = match tokio::time::timeout(cfg.timeout, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(source)) => {
                return Err(FleetError::Connect {
                    endpoints,
                    hint: super::hint(&source),
                    source: Box::new(source),
                });
            }
            Err(_) => {
                return Err(FleetError::Timeout {
                    what: "connect",
                    endpoints,
                    after: cfg.timeout,
                });
            }
        };
        let etcd = Etcd {
            client,
            keys: super::keys::Keys::new(&cfg.prefix),
            timeout: cfg.timeout,
            endpoints,
            stats: Arc::default(),
        };
        let mut c = etcd.client.clone();
        etcd.call("status", c.status()).await?;
        Ok(etcd)
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The underlying client, for streams (watch, keep-alive, campaign),
    /// which have no time limit.
    pub fn raw(&self) -> Client {
        self.client.clone()
    }

    /// The endpoints, for messages.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// Runs one request under the time limit, counting it.
    pub async fn call<T>(
        &self,
        what: &'static str,
        fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, FleetError> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let r = match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(FleetError::request(what, self.endpoints.clone(), source)),
            Err(_) => Err(FleetError::Timeout {
                what,
                endpoints: self.endpoints.clone(),
                after: self.timeout,
            }),
        };
        if r.is_err() {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn count_read(&self, kvs: &[etcd_client::KeyValue]) {
        let n: usize = kvs.iter().map(|kv| kv.key().len() + kv.value().len()).sum();
        self.stats.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Everything the fleet holds, read at one revision (one range
    /// request): live hosts, published views, placements, the placer.
    pub async fn snapshot(&self) -> Result<Snapshot, FleetError> {
        // One answer holds the whole fleet: 50 hosts × 200 volumes is
        // ~4.5 MiB, over gRPC's default 4 MiB limit on a message received.
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(SNAPSHOT_LIMIT);
        let resp = self
            .call(
                "read the fleet",
                kv.get(self.keys.all(), Some(GetOptions::new().with_prefix())),
            )
            .await?;
        self.count_read(resp.kvs());
        let mut snap = Snapshot {
            revision: resp
                .header()
                .map_or(0, etcd_client::ResponseHeader::revision),
            ..Snapshot::default()
        };
        let mut leader: Option<(i64, String)> = None;
        let mut backends: BTreeMap<String, Vec<BackendRecord>> = BTreeMap::new();
        for kv in resp.kvs() {
            snap.bytes += (kv.key().len() + kv.value().len()) as u64;
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Some(k) = self.keys.parse(kv.key()) else {
                continue;
            };
            let r: Result<(), records::RecordError> = (|| {
                match k {
                    Key::Host(h) => {
                        snap.hosts.insert(h, records::decode(&key, kv.value())?);
                    }
                    Key::View(h) => {
                        let v: HostView = records::decode(&key, kv.value())?;
                        snap.views.insert(h, (v, Vec::new()));
                    }
                    Key::Backend(h, _) => {
                        backends
                            .entry(h)
                            .or_default()
                            .push(records::decode(&key, kv.value())?);
                    }
                    Key::Placement(v) => {
                        let p: PlacementRecord = records::decode(&key, kv.value())?;
                        snap.placements.insert(v, (p, kv.mod_revision()));
                    }
                    Key::Election => {
                        let rev = kv.create_revision();
                        if leader.as_ref().is_none_or(|(r, _)| rev < *r) {
                            leader = Some((rev, String::from_utf8_lossy(kv.value()).into_owned()));
                        }
                    }
                    Key::Job(v) => match serde_json::from_slice::<crate::xhost::Job>(kv.value()) {
                        Ok(j) => {
                            snap.jobs.insert(v, (j, kv.mod_revision()));
                        }
                        Err(e) => snap.problems.push(format!("{key}: {e}")),
                    },
                }
                Ok(())
            })();
            if let Err(e) = r {
                snap.problems.push(crate::error_chain(&e));
            }
        }
        for (h, list) in backends {
            if let Some((_, b)) = snap.views.get_mut(&h) {
                *b = list;
            }
        }
        snap.leader = leader.map(|(_, h)| h);
        Ok(snap)
    }

    /// Every placement, with its revision.
    pub async fn placements(&self) -> Result<BTreeMap<String, (PlacementRecord, i64)>, FleetError> {
        let mut c = self.client.clone();
        let resp = self
            .call(
                "read the placements",
                c.get(
                    self.keys.placements(),
                    Some(GetOptions::new().with_prefix()),
                ),
            )
            .await?;
        self.count_read(resp.kvs());
        let mut out = BTreeMap::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if let Some(Key::Placement(v)) = self.keys.parse(kv.key()) {
                let p: PlacementRecord =
                    records::decode(&key, kv.value()).map_err(FleetError::Record)?;
                out.insert(v, (p, kv.mod_revision()));
            }
        }
        Ok(out)
    }

    /// Publishes a host's view: the view and one key per back end in one
    /// transaction per [`TXN_OPS`] keys, and the keys of back ends it no
    /// longer has removed. Returns the bytes written.
    pub async fn publish(
        &self,
        view: &HostView,
        backends: Vec<BackendRecord>,
    ) -> Result<u64, FleetError> {
        let host = view.host.clone();
        let mut ops = Vec::new();
        let mut bytes = 0u64;
        let vkey = self.keys.view(&host);
        let v = records::encode(&vkey, view).map_err(FleetError::Record)?;
        bytes += (vkey.len() + v.len()) as u64;
        ops.push(TxnOp::put(vkey, v, None));
        let mut keep = std::collections::BTreeSet::new();
        for b in backends {
            let key = self.keys.view_backend(&host, &b.name);
            keep.insert(key.clone());
            let value = b.encode_bounded(&key).map_err(FleetError::Record)?;
            bytes += (key.len() + value.len()) as u64;
            ops.push(TxnOp::put(key, value, None));
        }
        // Back ends this host no longer has.
        let mut c = self.client.clone();
        let old = self
            .call(
                "read the published back ends",
                c.get(
                    self.keys.view_backends(&host),
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                ),
            )
            .await?;
        for kv in old.kvs() {
            let k = String::from_utf8_lossy(kv.key()).into_owned();
            if !keep.contains(&k) {
                ops.push(TxnOp::delete(k, None));
            }
        }
        for chunk in ops.chunks(TXN_OPS) {
            let mut c = self.client.clone();
            self.call(
                "publish the view",
                c.txn(Txn::new().and_then(chunk.to_vec())),
            )
            .await?;
        }
        self.stats.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        Ok(bytes)
    }

    /// Grants a lease of `ttl` seconds.
    pub async fn grant(&self, ttl: i64) -> Result<i64, FleetError> {
        let mut c = self.client.clone();
        Ok(self
            .call("grant a lease", c.lease_grant(ttl, None))
            .await?
            .id())
    }

    /// Revokes a lease (a clean shutdown: the host is `down` at once and
    /// its election key goes).
    pub async fn revoke(&self, lease: i64) -> Result<(), FleetError> {
        let mut c = self.client.clone();
        self.call("revoke the lease", c.lease_revoke(lease)).await?;
        Ok(())
    }

    /// Writes the host's record under its lease.
    pub async fn register(&self, rec: &HostRecord, lease: i64) -> Result<(), FleetError> {
        let key = self.keys.host(&rec.host);
        let value = records::encode(&key, rec).map_err(FleetError::Record)?;
        let mut c = self.client.clone();
        self.call(
            "register the host",
            c.put(key, value, Some(PutOptions::new().with_lease(lease))),
        )
        .await?;
        Ok(())
    }

    /// Writes placements, each only if its key is absent and only while
    /// `leader` still holds the placer election (a deposed leader writes
    /// nothing). Batched; a batch that conflicts is retried one by one so
    /// the others still land.
    pub async fn place(
        &self,
        leader: &LeaderKey,
        records: &[PlacementRecord],
    ) -> Result<PlaceOutcome, FleetError> {
        let mut out = PlaceOutcome::default();
        let still_leader =
            || Compare::create_revision(leader.key(), CompareOp::Equal, leader.rev());
        // Each placement is one compare and one put.
        for batch in records.chunks(TXN_OPS - 1) {
            let mut cmps = vec![still_leader()];
            let mut puts = Vec::new();
            for r in batch {
                let key = self.keys.placement(&r.volume);
                cmps.push(Compare::version(key.clone(), CompareOp::Equal, 0));
                let value = records::encode(&key, r).map_err(FleetError::Record)?;
                self.stats
                    .bytes_written
                    .fetch_add((key.len() + value.len()) as u64, Ordering::Relaxed);
                puts.push(TxnOp::put(key, value, None));
            }
            let mut c = self.client.clone();
            let resp = self
                .call(
                    "write placements",
                    c.txn(Txn::new().when(cmps).and_then(puts)),
                )
                .await?;
            if resp.succeeded() {
                let rev = resp
                    .header()
                    .map_or(0, etcd_client::ResponseHeader::revision);
                out.placed
                    .extend(batch.iter().map(|r| (r.volume.clone(), rev)));
                continue;
            }
            for r in batch {
                let key = self.keys.placement(&r.volume);
                let value = records::encode(&key, r).map_err(FleetError::Record)?;
                let txn = Txn::new()
                    .when([
                        still_leader(),
                        Compare::version(key.clone(), CompareOp::Equal, 0),
                    ])
                    .and_then([TxnOp::put(key.clone(), value, None)])
                    .or_else([TxnOp::get(leader.key(), None)]);
                let mut c = self.client.clone();
                let resp = self.call("write a placement", c.txn(txn)).await?;
                if resp.succeeded() {
                    let rev = resp
                        .header()
                        .map_or(0, etcd_client::ResponseHeader::revision);
                    out.placed.push((r.volume.clone(), rev));
                    continue;
                }
                let leader_gone = resp.op_responses().iter().any(|o| match o {
                    etcd_client::TxnOpResponse::Get(g) => g
                        .kvs()
                        .first()
                        .is_none_or(|kv| kv.create_revision() != leader.rev()),
                    _ => false,
                });
                if leader_gone {
                    return Err(FleetError::NotLeader);
                }
                out.taken.push(r.volume.clone());
            }
        }
        Ok(out)
    }

    /// The fencing check right before an irreversible step: the placement
    /// of `volume` must still be the one the plan used (`revision`, on
    /// `backend`).
    pub async fn check_placement(
        &self,
        volume: &str,
        backend: &str,
        revision: i64,
    ) -> Result<(), FenceError> {
        let mut c = self.client.clone();
        let key = self.keys.placement(volume);
        let resp = self
            .call("check a placement", c.get(key.clone(), None))
            .await
            .map_err(|source| FenceError::Unreachable {
                volume: volume.to_owned(),
                source,
            })?;
        self.count_read(resp.kvs());
        let Some(kv) = resp.kvs().first() else {
            return Err(FenceError::Changed {
                volume: volume.to_owned(),
                found: "it was removed".into(),
            });
        };
        let rec: PlacementRecord =
            records::decode(&key, kv.value()).map_err(|e| FenceError::Unreachable {
                volume: volume.to_owned(),
                source: FleetError::Record(e),
            })?;
        if kv.mod_revision() != revision || rec.backend != backend {
            return Err(FenceError::Changed {
                volume: volume.to_owned(),
                found: format!(
                    "now on {} at revision {}, planned on {backend} at revision {revision}",
                    rec.backend,
                    kv.mod_revision()
                ),
            });
        }
        Ok(())
    }

    /// Removes a placement if it is still at `revision` (the owning host,
    /// once the volume is gone and undeclared). `false`: it changed.
    pub async fn unplace(&self, volume: &str, revision: i64) -> Result<bool, FleetError> {
        let key = self.keys.placement(volume);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::delete(key, Some(DeleteOptions::new()))]);
        let mut c = self.client.clone();
        Ok(self
            .call("remove a placement", c.txn(txn))
            .await?
            .succeeded())
    }
    /// The cross-host migration job of `volume`, with its `mod_revision`.
    pub async fn job(&self, volume: &str) -> Result<Option<(crate::xhost::Job, i64)>, FleetError> {
        let key = self.keys.job(volume);
        let mut c = self.client.clone();
        let resp = self
            .call("read a migration job", c.get(key.clone(), None))
            .await?;
        self.count_read(resp.kvs());
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let job = serde_json::from_slice(kv.value())
            .map_err(|e| FleetError::Record(records::RecordError::Decode { key, source: e }))?;
        Ok(Some((job, kv.mod_revision())))
    }

    /// Writes `job` if its key is at `expect` (`None`: absent): its new
    /// `mod_revision` (the transaction's revision), or `None` when another
    /// writer came first.
    pub async fn put_job(
        &self,
        job: &crate::xhost::Job,
        expect: Option<i64>,
    ) -> Result<Option<i64>, FleetError> {
        let key = self.keys.job(&job.volume);
        let value = serde_json::to_vec(job).map_err(|e| {
            FleetError::Record(records::RecordError::Decode {
                key: key.clone(),
                source: e,
            })
        })?;
        let cmp = match expect {
            Some(rev) => Compare::mod_revision(key.clone(), CompareOp::Equal, rev),
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
        };
        let txn = Txn::new()
            .when([cmp])
            .and_then([TxnOp::put(key, value, None)]);
        let mut c = self.client.clone();
        let resp = self.call("write a migration job", c.txn(txn)).await?;
        Ok(resp.succeeded().then(|| {
            resp.header()
                .map_or(0, etcd_client::ResponseHeader::revision)
        }))
    }

    /// Removes the job of `volume` if it is still at `revision`.
    pub async fn delete_job(&self, volume: &str, revision: i64) -> Result<bool, FleetError> {
        let key = self.keys.job(volume);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::delete(key, Some(DeleteOptions::new()))]);
        let mut c = self.client.clone();
        Ok(self
            .call("remove a migration job", c.txn(txn))
            .await?
            .succeeded())
    }

    /// The iSCSI initiator name host `host` registered (while it is live).
    pub async fn initiator(&self, host: &str) -> Result<Option<String>, FleetError> {
        let key = self.keys.host(host);
        let mut c = self.client.clone();
        let resp = self
            .call("read a host record", c.get(key.clone(), None))
            .await?;
        self.count_read(resp.kvs());
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let rec: HostRecord = records::decode(&key, kv.value()).map_err(FleetError::Record)?;
        Ok(rec.iscsi_initiator)
    }
}

/// Operations per transaction (etcd's default `--max-txn-ops` is 128).
pub const TXN_OPS: usize = 100;
