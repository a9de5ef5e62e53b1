//! The agent: continuous, level-triggered reconciliation of this host
//! against a manifest directory or a git branch, scheduled backups, and a
//! status/metrics endpoint.
//!
//! Owns the agent's process life: the state lock for its whole life (one
//! agent per state directory), the tokio runtime, and the named tasks the
//! [`supervisor`] runs:
//!
//! | task | module | does |
//! | --- | --- | --- |
//! | watcher | [`watch`] | notify → debounced `file-change` triggers |
//! | git poller | [`git`] | fetch every interval or on webhook; export new commits |
//! | resync timer | [`supervisor`] | a `resync` trigger every `--resync` |
//! | reconciler | [`reconcile`] | read, discover, plan, apply; one at a time |
//! | backup scheduler | [`schedule`] | due backups, and each policy's scheduled verify and drill ([`checks`]), through a [`schedule::BackupRunner`] |
//! | http | [`http`] | `/healthz`, `/readyz`, `/status`, `/metrics`, `/hooks/git` |
//! | fleet (`--etcd`) | [`fleet`] | lease, placer election, placements, watch of the fleet |
//! | signals | [`supervisor`] | SIGTERM/SIGINT stop, SIGHUP reconciles |
//!
//! Every trigger lands in one [`TriggerQueue`]; triggers that arrive while a
//! reconcile runs are coalesced into the next one, so at most one apply runs
//! at a time and none is lost. The reconciler does the blocking pipeline
//! (`manifest::load_paths`, `observe::discover`, `plan::plan`, `apply::apply`)
//! on a blocking thread; everything else is async and idle between events.
//!
//! Must not: hold the state lock twice (it is taken once in [`run`] and
//! lives until the process ends), print (it logs), or spawn processes other
//! than through [`crate::exec`] (git).

pub mod backoff;
pub mod checks;
pub mod debounce;
pub mod fleet;
pub mod git;
pub mod http;
pub mod metrics;
pub mod page;
pub mod reconcile;
pub mod schedule;
pub mod source;
pub mod status;
pub mod supervisor;
pub mod watch;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::state::lock::{LockError, StateLock};
use metrics::Metrics;
use schedule::BackupRunner;
use status::Status;

/// Where the manifests come from.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// Files or directories on this host.
    Directory {
        /// The `-f` paths.
        paths: Vec<PathBuf>,
        /// Poll at this interval instead of using inotify (NFS).
        poll: Option<Duration>,
    },
    /// A branch of a git repository.
    Git {
        /// Repository URL (`https://`, `ssh://`, `file://`, ...).
        url: String,
        /// Branch.
        branch: String,
        /// Fetch interval.
        interval: Duration,
        /// Directory of the manifests inside the repository.
        path: Option<PathBuf>,
    },
}

/// The agent's configuration.
#[derive(Clone)]
pub struct Config {
    /// State directory.
    pub state_dir: PathBuf,
    /// This host's name.
    pub host: String,
    /// The manifests.
    pub source: SourceConfig,
    /// Full re-discovery interval (catches drift nobody announced).
    pub resync: Duration,
    /// HTTP listen address (port 0: any free port, shown in the status).
    pub listen: SocketAddr,
    /// Token required by `POST /hooks/git`, when set.
    pub webhook_token: Option<String>,
    /// Recreate, empty, volumes deleted outside cinderblock.
    pub recreate_lost: bool,
    /// Quiet time after the last file event before reconciling.
    pub debounce: Duration,
    /// Backups running at once, at most.
    pub max_backups: usize,
    /// How long a shutdown waits for the step or backup in flight.
    pub shutdown_grace: Duration,
    /// Runs the backups.
    pub runner: Arc<dyn BackupRunner>,
    /// The fleet's etcd, with `--etcd`.
    pub fleet: Option<crate::fleet::EtcdConfig>,
    /// `ADDR:PORT` this host exports volumes on when they move to another
    /// host (`--migration-portal`).
    pub migration_portal: Option<String>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("state_dir", &self.state_dir)
            .field("host", &self.host)
            .field("source", &self.source)
            .field("resync", &self.resync)
            .field("listen", &self.listen)
            .field(
                "webhook_token",
                &self.webhook_token.as_ref().map(|_| "<set>"),
            )
            .field("recreate_lost", &self.recreate_lost)
            .field("fleet", &self.fleet)
            .finish_non_exhaustive()
    }
}

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Another process holds the state directory.
    #[error("cannot start the agent")]
    Lock(#[from] LockError),
    /// The listen address is taken or invalid.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The runtime could not be built.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// The git source is misconfigured.
    #[error("invalid git source: {0}")]
    GitConfig(String),
    /// A task ended on its own; the agent stops so a supervisor restarts it.
    #[error("the {task} task ended unexpectedly: {message}")]
    TaskEnded {
        /// The task's name.
        task: &'static str,
        /// How it ended.
        message: String,
    },
}

/// Why a reconcile runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// The agent started.
    Startup,
    /// A manifest file changed.
    FileChange,
    /// The file watcher was recreated (events may have been missed).
    WatcherRestarted,
    /// The git branch moved.
    NewRevision,
    /// The periodic resync.
    Resync,
    /// SIGHUP.
    Sighup,
    /// A retry after failures (backoff) or after a partial apply.
    Retry,
    /// A backup finished on a volume whose changes were deferred.
    BackupFinished,
    /// The fleet changed: a placement was made, or etcd came back.
    Fleet,
}

impl Reason {
    /// As shown in logs and the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Startup => "startup",
            Reason::FileChange => "file-change",
            Reason::WatcherRestarted => "watcher-restarted",
            Reason::NewRevision => "new-revision",
            Reason::Resync => "resync",
            Reason::Sighup => "sighup",
            Reason::Retry => "retry",
            Reason::BackupFinished => "backup-finished",
            Reason::Fleet => "fleet",
        }
    }
}

/// Pending triggers: pushed by any task, taken all at once by the
/// reconciler (so a burst of triggers during a reconcile makes one more
/// reconcile, not many).
#[derive(Debug, Default)]
pub struct TriggerQueue {
    pending: Mutex<BTreeSet<Reason>>,
    notify: Notify,
}

impl TriggerQueue {
    /// Asks for a reconcile.
    pub fn push(&self, reason: Reason) {
        lock(&self.pending).insert(reason);
        // Stores a permit when nobody waits: a push between the reconciler's
        // check and its wait is not lost.
        self.notify.notify_one();
    }

    /// Waits for triggers and takes every pending one.
    pub async fn wait(&self) -> BTreeSet<Reason> {
        loop {
            let taken = std::mem::take(&mut *lock(&self.pending));
            if !taken.is_empty() {
                return taken;
            }
            self.notify.notified().await;
        }
    }
}

/// State shared by the tasks. Each piece behind its own short-held mutex;
/// no lock is held across an await or a blocking call.
pub struct Shared {
    /// The state directory.
    pub state_dir: PathBuf,
    /// The status document.
    pub status: Mutex<Status>,
    /// The metrics.
    pub metrics: Mutex<Metrics>,
    /// Reconcile triggers.
    pub triggers: TriggerQueue,
    /// Volumes being backed up now.
    pub backing_up: Mutex<BTreeSet<String>>,
    /// Volumes whose changes wait for their backup to end.
    pub deferred: Mutex<BTreeSet<String>>,
    /// Wakes the git poller (webhook).
    pub git_wake: Notify,
    /// Whether a git source is followed (the webhook exists).
    pub git: bool,
    /// BLAKE3 of the webhook token; compared in constant time.
    pub webhook_token: Option<blake3::Hash>,
    /// Set at shutdown: the apply in flight stops before its next step.
    pub stop: AtomicBool,
    /// Generation of the status file.
    status_generation: Mutex<u64>,
}

impl Shared {
    /// Shared state starting from `status`, whose file in `state_dir` is at
    /// `generation`.
    pub fn new(
        state_dir: PathBuf,
        status: Status,
        generation: u64,
        git: bool,
        webhook_token: Option<&str>,
    ) -> Self {
        Self {
            state_dir,
            status: Mutex::new(status),
            metrics: Mutex::new(Metrics::default()),
            triggers: TriggerQueue::default(),
            backing_up: Mutex::default(),
            deferred: Mutex::default(),
            git_wake: Notify::new(),
            git,
            webhook_token: webhook_token.map(|t| blake3::hash(t.as_bytes())),
            stop: AtomicBool::new(false),
            status_generation: Mutex::new(generation),
        }
    }

    /// Writes the status document to the state directory.
    pub fn publish(&self) {
        let mut generation = lock(&self.status_generation);
        let doc = {
            let mut s = lock(&self.status);
            s.agent.updated_at = Some(chrono::Utc::now());
            s.clone()
        };
        *generation += 1;
        if let Err(e) = status::store(&self.state_dir, *generation, &doc) {
            tracing::warn!(error = %crate::error_chain(&e), "cannot write the status file");
        }
    }
}

/// Locks a mutex, ignoring poisoning: every value behind our mutexes stays
/// consistent between statements, and a panicking task is reported by the
/// supervisor anyway.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the agent until SIGTERM/SIGINT (`Ok`) or until a task fails.
pub fn run(config: Config) -> Result<(), AgentError> {
    let what = match &config.source {
        SourceConfig::Directory { paths, .. } => format!(
            "agent -f {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" -f ")
        ),
        SourceConfig::Git { url, branch, .. } => format!("agent --git {url} --branch {branch}"),
    };
    let lock = StateLock::acquire(&config.state_dir, &what)?;
    if let SourceConfig::Git { url, branch, .. } = &config.source {
        git::check_source(url, branch).map_err(AgentError::GitConfig)?;
    }
    let listener = std::net::TcpListener::bind(config.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| AgentError::Listen {
            addr: config.listen,
            source,
        })?;
    if !config.listen.ip().is_loopback() && config.webhook_token.is_none() {
        tracing::warn!(
            listen = %config.listen,
            "listening beyond loopback without --webhook-token-file: anyone who reaches it can read the status and trigger fetches"
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4 + config.max_backups)
        .thread_name("cinderblock-agent")
        .build()
        .map_err(AgentError::Runtime)?;
    let result = runtime.block_on(supervisor::run(config, listener, lock.holder().started_at));
    // The supervisor already waited the grace period; a step or backup still
    // running is abandoned here: its intent is journalled, and the next run
    // finishes it.
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(lock);
    result
}
