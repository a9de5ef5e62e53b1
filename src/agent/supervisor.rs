//! The supervisor: starts the agent's tasks, waits in one `select!` for the
//! first to end, and shuts the rest down gracefully.
//!
//! Every task is a named tokio task returning `Result<(), String>`. Only the
//! signal task is expected to end (SIGTERM/SIGINT); any other task ending is
//! a fault, logged by name, and the agent stops with an error so that its
//! service manager restarts it (stratisd's model: one loop that sees every
//! task, rather than tasks restarting themselves out of sight). Faults a
//! task can recover from (a dead file watcher, a failed fetch) are handled
//! inside it and never end it.
//!
//! Shutdown: the stop flag makes the apply in flight stop before its next
//! step (the step running finishes and is journalled); every task is told
//! through a watch channel; each gets until the grace deadline, after which
//! it is abandoned (a step cut short is journalled as intent and finished by
//! the next run, as after a crash). The status file then says `stopped`.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::git::GitRepo;
use super::reconcile::{Desired, Reconciler};
use super::schedule::TaskConfig;
use super::source::{GitSource, Source};
use super::status::{self, AgentInfo, SourceStatus, Status};
use super::watch::WatchConfig;
use super::{AgentError, Config, Reason, Shared, SourceConfig, lock};

type Task = JoinHandle<Result<(), String>>;

/// How a task ended, in words.
fn ended(r: Result<Result<(), String>, tokio::task::JoinError>) -> String {
    match r {
        Ok(Ok(())) => "it returned".to_owned(),
        Ok(Err(e)) => e,
        Err(e) if e.is_panic() => "it panicked".to_owned(),
        Err(e) => e.to_string(),
    }
}

async fn join_opt(t: &mut Option<Task>) -> Result<Result<(), String>, tokio::task::JoinError> {
    match t {
        Some(h) => h.await,
        None => std::future::pending().await,
    }
}

/// Waits for SIGTERM or SIGINT (returning its name); SIGHUP reconciles.
async fn signals(shared: Arc<Shared>) -> Result<&'static str, String> {
    let install =
        |k: SignalKind, name: &str| signal(k).map_err(|e| format!("cannot handle {name}: {e}"));
    let mut term = install(SignalKind::terminate(), "SIGTERM")?;
    let mut int = install(SignalKind::interrupt(), "SIGINT")?;
    let mut hup = install(SignalKind::hangup(), "SIGHUP")?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok("SIGTERM"),
            _ = int.recv() => return Ok("SIGINT"),
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reconciling now");
                shared.triggers.push(Reason::Sighup);
            }
        }
    }
}

/// The resync timer: a `resync` trigger every `every`.
async fn resync(
    every: Duration,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => shared.triggers.push(Reason::Resync),
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

fn initial_status(
    cfg: &Config,
    listen: &str,
    started: DateTime<Utc>,
    previous: Option<Status>,
) -> Status {
    let (kind, location, branch) = match &cfg.source {
        SourceConfig::Directory { paths, .. } => (
            "directory",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            None,
        ),
        SourceConfig::Git { url, branch, .. } => ("git", url.clone(), Some(branch.clone())),
    };
    let mut s = Status {
        agent: AgentInfo {
            pid: std::process::id(),
            host: cfg.host.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: Some(started),
            listen: listen.to_owned(),
            state: "running".to_owned(),
            updated_at: None,
        },
        source: SourceStatus {
            kind: kind.to_owned(),
            location: location.clone(),
            branch: branch.clone(),
            ..SourceStatus::default()
        },
        ..Status::default()
    };
    // What the previous run applied stays true until this one applies.
    if let Some(p) = previous
        && p.source.kind == kind
        && p.source.location == location
        && p.source.branch == branch
    {
        s.source.applied_revision = p.source.applied_revision;
        s.source.applied_at = p.source.applied_at;
        s.source.last_good_revision = p.source.last_good_revision;
        s.source.revisions = p.source.revisions;
        s.last_success = p.last_success;
        s.last_reconcile = p.last_reconcile;
    }
    s
}

/// Runs the agent's tasks until a signal stops them or one fails.
#[allow(clippy::too_many_lines)] // the task table, the select and the shutdown, in order
pub async fn run(
    cfg: Config,
    listener: std::net::TcpListener,
    started: DateTime<Utc>,
) -> Result<(), AgentError> {
    let listen = listener
        .local_addr()
        .map_or_else(|_| cfg.listen.to_string(), |a| a.to_string());
    let (generation, previous) = match status::load(&cfg.state_dir) {
        Ok(Some((g, s))) => (g, Some(s)),
        Ok(None) => (0, None),
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "cannot read the previous status file; it is replaced");
            let _ = std::fs::remove_file(status::path(&cfg.state_dir));
            (0, None)
        }
    };
    let persisted_good = previous
        .as_ref()
        .filter(|p| p.source.kind == "git")
        .and_then(|p| p.source.last_good_revision.clone());
    let status = initial_status(&cfg, &listen, started, previous);
    let is_git = matches!(cfg.source, SourceConfig::Git { .. });
    let shared = Arc::new(Shared::new(
        cfg.state_dir.clone(),
        status,
        generation,
        is_git,
        cfg.webhook_token.as_deref(),
    ));
    {
        let s = lock(&shared.status);
        let mut m = lock(&shared.metrics);
        m.applied_revision.clone_from(&s.source.applied_revision);
    }
    shared.publish();
    tracing::info!(%listen, state = %cfg.state_dir.display(), host = %cfg.host, "agent started");

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (desired_tx, desired_rx) = watch::channel(Desired::default());

    // Signal handlers first, so a SIGHUP never meets the default action
    // (terminate) once anything is served.
    let mut sig: JoinHandle<Result<&'static str, String>> =
        tokio::spawn(signals(Arc::clone(&shared)));
    tokio::task::yield_now().await;

    let (source, mut watcher, mut git): (Source, Option<Task>, Option<Task>) = match &cfg.source {
        SourceConfig::Directory { paths, poll } => {
            let abs: Vec<_> = paths
                .iter()
                .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
                .collect();
            let wc = WatchConfig {
                paths: abs,
                poll: *poll,
                debounce: cfg.debounce,
                state_dir: std::path::absolute(&cfg.state_dir)
                    .unwrap_or_else(|_| cfg.state_dir.clone()),
            };
            let w = tokio::spawn(super::watch::run(
                wc,
                Arc::clone(&shared),
                shutdown_rx.clone(),
            ));
            (
                Source::Directory {
                    paths: paths.clone(),
                },
                Some(w),
                None,
            )
        }
        SourceConfig::Git {
            url,
            branch,
            interval,
            path,
        } => {
            let g = Arc::new(GitSource {
                repo: GitRepo::new(&cfg.state_dir, url, branch, path.clone()),
                head: Mutex::new(None),
            });
            let t = tokio::spawn(super::git::run(
                Arc::clone(&g),
                *interval,
                Arc::clone(&shared),
                shutdown_rx.clone(),
            ));
            (Source::Git(g), None, Some(t))
        }
    };
    let link = cfg.fleet.clone().map(|fc| {
        Arc::new(
            super::fleet::FleetLink::new(fc, cfg.host.clone(), tokio::runtime::Handle::current())
                .with_portal(cfg.migration_portal.clone()),
        )
    });
    let mut fleet: Option<Task> = link.as_ref().map(|l| {
        super::fleet::publish_status(l, &shared);
        tokio::spawn(super::fleet::run(
            Arc::clone(l),
            Arc::clone(&shared),
            desired_rx.clone(),
            shutdown_rx.clone(),
            crate::fleet::records::HostRecord {
                v: crate::fleet::records::VERSION,
                host: cfg.host.clone(),
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                started_at: started,
                listen: Some(listen.clone()),
                iscsi_initiator: crate::fleet::local_initiator(),
            },
        ))
    });
    let reconciler = Reconciler::new(
        cfg.state_dir.clone(),
        cfg.host.clone(),
        cfg.recreate_lost,
        source,
        Arc::clone(&shared),
        desired_tx,
        persisted_good,
    )
    .with_fleet(link);
    shared.triggers.push(Reason::Startup);
    let mut rec: Task = tokio::spawn(super::reconcile::task(
        reconciler,
        Arc::clone(&shared),
        shutdown_rx.clone(),
    ));
    let mut timer: Task =
        tokio::spawn(resync(cfg.resync, Arc::clone(&shared), shutdown_rx.clone()));
    let mut backups: Task = tokio::spawn(super::schedule::run(
        TaskConfig {
            runner: Arc::clone(&cfg.runner),
            max_running: cfg.max_backups,
            state_dir: cfg.state_dir.clone(),
        },
        Arc::clone(&shared),
        desired_rx,
        shutdown_rx.clone(),
    ));
    let mut http: Task = tokio::spawn(super::http::serve(
        listener,
        Arc::clone(&shared),
        shutdown_rx.clone(),
    ));

    let outcome: Result<&'static str, AgentError> = tokio::select! {
        r = &mut sig => match r {
            Ok(Ok(name)) => Ok(name),
            Ok(Err(e)) => Err(("signals", e)),
            Err(e) => Err(("signals", e.to_string())),
        },
        r = &mut rec => Err(("reconciler", ended(r))),
        r = &mut http => Err(("http", ended(r))),
        r = &mut timer => Err(("resync timer", ended(r))),
        r = &mut backups => Err(("backup scheduler", ended(r))),
        r = join_opt(&mut watcher) => Err(("watcher", ended(r))),
        r = join_opt(&mut git) => Err(("git poller", ended(r))),
        r = join_opt(&mut fleet) => Err(("fleet", ended(r))),
    }
    .map_err(|(task, message)| {
        tracing::error!(task, error = %message, "a task ended; stopping the agent");
        AgentError::TaskEnded { task, message }
    });
    if let Ok(name) = &outcome {
        tracing::info!(signal = name, "stopping: finishing the step in flight");
    }

    // Graceful shutdown.
    shared.stop.store(true, Ordering::SeqCst);
    let _ = shutdown_tx.send(true);
    let deadline = tokio::time::Instant::now() + cfg.shutdown_grace;
    let mut rest: Vec<(&str, Task)> = vec![
        ("reconciler", rec),
        ("backup scheduler", backups),
        ("http", http),
        ("resync timer", timer),
    ];
    rest.extend(watcher.take().map(|t| ("watcher", t)));
    rest.extend(git.take().map(|t| ("git poller", t)));
    rest.extend(fleet.take().map(|t| ("fleet", t)));
    for (name, mut task) in rest {
        if task.is_finished() {
            continue;
        }
        if let Ok(r) = tokio::time::timeout_at(deadline, &mut task).await {
            tracing::debug!(task = name, how = %ended(r), "task stopped");
        } else {
            tracing::warn!(
                task = name,
                grace_s = cfg.shutdown_grace.as_secs(),
                "task did not stop within the grace period; abandoning it (its step is journalled and finished by the next run)"
            );
            task.abort();
        }
    }
    sig.abort();
    "stopped".clone_into(&mut lock(&shared.status).agent.state);
    shared.publish();
    tracing::info!("agent stopped");
    outcome.map(|_| ())
}
