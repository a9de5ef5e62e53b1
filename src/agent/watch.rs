//! The directory watcher: file events → debounced `file-change` triggers.
//!
//! Owns the `notify` watcher (inotify, or polling with `--poll` for
//! manifests on NFS, where inotify sees no remote changes), the bridge from
//! notify's thread into a tokio channel, and the trailing-edge
//! [`Debouncer`]. Vector's config watcher is the model:
//!
//! - Directories are watched recursively; a `-f FILE` is watched through its
//!   parent directory (editors replace files by rename, which ends a watch on
//!   the file itself); a path that does not exist is watched through its
//!   nearest existing ancestor, so its creation is seen.
//! - After every burst the watches are added again: a directory deleted and
//!   recreated (`git checkout`, `rsync --delete-after`) would otherwise go
//!   unwatched.
//! - An error from the watcher (a dead inotify instance, a queue overflow)
//!   recreates it and assumes a change.
//! - A burst triggers a reconcile only when the manifest tree's revision
//!   changed (or the watcher was recreated): writes to volume files, the
//!   state directory or editor swap files under the same tree are noise.
//!
//! Must not: read manifests for meaning (the reconciler does), or block the
//! runtime for long (the revision hash reads only `*.yaml` files).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::debounce::Debouncer;
use super::source::dir_revision;
use super::{Reason, Shared};

/// Events queued between notify's thread and the task; when full, further
/// events are dropped (a relevant one is already queued, and the burst
/// will be looked at as a whole).
const QUEUE: usize = 256;

/// What notify's thread sends.
#[derive(Debug)]
enum Msg {
    /// Something relevant changed.
    Changed,
    /// The watcher failed.
    Failed(String),
}

/// Watcher settings.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// The `-f` paths.
    pub paths: Vec<PathBuf>,
    /// Poll at this interval instead of inotify.
    pub poll: Option<Duration>,
    /// Quiet time after the last event.
    pub debounce: Duration,
    /// Events below it are ignored.
    pub state_dir: PathBuf,
}

/// What to watch for `paths`, and how.
fn targets(paths: &[PathBuf]) -> Vec<(PathBuf, RecursiveMode)> {
    let mut out: Vec<(PathBuf, RecursiveMode)> = Vec::new();
    for p in paths {
        let t = if p.is_dir() {
            (p.clone(), RecursiveMode::Recursive)
        } else {
            let mut a = if p.exists() {
                p.parent()
            } else {
                Some(p.as_path())
            };
            while let Some(dir) = a {
                if dir.is_dir() {
                    break;
                }
                a = dir.parent();
            }
            (
                a.unwrap_or(Path::new("/")).to_owned(),
                RecursiveMode::NonRecursive,
            )
        };
        if !out.iter().any(|(q, _)| q == &t.0) {
            out.push(t);
        }
    }
    out
}

struct Live {
    watcher: Box<dyn Watcher + Send>,
    watched: Vec<PathBuf>,
}

fn create(cfg: &WatchConfig, tx: &mpsc::Sender<Msg>) -> Result<Live, String> {
    let state = cfg.state_dir.clone();
    let tx = tx.clone();
    let handler = move |res: notify::Result<notify::Event>| {
        let msg = match res {
            Ok(ev) => {
                let noise = matches!(ev.kind, EventKind::Access(_))
                    || (!ev.paths.is_empty() && ev.paths.iter().all(|p| p.starts_with(&state)));
                if noise && !ev.need_rescan() {
                    return;
                }
                Msg::Changed
            }
            Err(e) => Msg::Failed(e.to_string()),
        };
        let _ = tx.try_send(msg);
    };
    let watcher: Box<dyn Watcher + Send> = match cfg.poll {
        Some(interval) => Box::new(
            notify::PollWatcher::new(
                handler,
                notify::Config::default().with_poll_interval(interval),
            )
            .map_err(|e| format!("cannot start the polling watcher: {e}"))?,
        ),
        None => Box::new(
            notify::RecommendedWatcher::new(handler, notify::Config::default())
                .map_err(|e| format!("cannot start the file watcher: {e}"))?,
        ),
    };
    let mut live = Live {
        watcher,
        watched: Vec::new(),
    };
    rewatch(&mut live, &cfg.paths);
    Ok(live)
}

/// Drops every watch and adds them again for the paths as they are now.
fn rewatch(live: &mut Live, paths: &[PathBuf]) {
    for p in live.watched.drain(..) {
        let _ = live.watcher.unwatch(&p);
    }
    for (p, mode) in targets(paths) {
        match live.watcher.watch(&p, mode) {
            Ok(()) => live.watched.push(p),
            Err(error) => tracing::warn!(path = %p.display(), %error, "cannot watch"),
        }
    }
}

/// The watcher task.
pub async fn run(
    cfg: WatchConfig,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let (tx, mut rx) = mpsc::channel(QUEUE);
    let mut live = create(&cfg, &tx)?;
    let mut debouncer = Debouncer::new(cfg.debounce, cfg.debounce * 10);
    let mut revision = dir_revision(&cfg.paths);
    let mut force = false;
    tracing::info!(
        paths = ?cfg.paths,
        mode = if cfg.poll.is_some() { "poll" } else { "inotify" },
        debounce_ms = cfg.debounce.as_millis(),
        "watching the manifests"
    );
    loop {
        let deadline = debouncer.deadline();
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            msg = rx.recv() => match msg {
                Some(Msg::Changed) => debouncer.event(Instant::now().into_std()),
                Some(Msg::Failed(error)) => {
                    tracing::warn!(%error, "the file watcher failed; recreating it and assuming a change");
                    drop(live);
                    live = loop {
                        match create(&cfg, &tx) {
                            Ok(l) => break l,
                            Err(e) => {
                                tracing::error!(error = %e, "cannot recreate the file watcher; retrying in 5 s");
                                tokio::select! {
                                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                                    _ = shutdown.changed() => return Ok(()),
                                }
                            }
                        }
                    };
                    force = true;
                    debouncer.event(Instant::now().into_std());
                }
                None => return Err("the event channel closed".into()),
            },
            () = sleep_until(deadline), if deadline.is_some() => {
                if debouncer.fire(Instant::now().into_std()) {
                    rewatch(&mut live, &cfg.paths);
                    let now = dir_revision(&cfg.paths);
                    if force || now != revision {
                        tracing::debug!(from = %revision, to = %now, "manifests changed");
                        shared.triggers.push(if force { Reason::WatcherRestarted } else { Reason::FileChange });
                        revision = now;
                        force = false;
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_watched_through_their_directory_and_missing_paths_through_an_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("m")).unwrap();
        std::fs::write(d.join("one.yaml"), "").unwrap();
        let t = targets(&[d.join("m"), d.join("one.yaml"), d.join("gone/deeper/x")]);
        assert_eq!(
            t,
            [
                (d.join("m"), RecursiveMode::Recursive),
                (d.to_owned(), RecursiveMode::NonRecursive),
            ]
        );
    }
}
