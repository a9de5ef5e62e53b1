//! The git source: a bare mirror of one branch in the state directory, and
//! each fetched commit exported to its own directory.
//!
//! Owns the `git` command lines (run through [`crate::exec`], argument
//! vectors, timeouts) and the layout:
//!
//! ```text
//! DIR/git/repo.git          bare repository; the branch is fetched into
//!                           refs/remotes/origin/BRANCH
//! DIR/git/trees/<commit>/   the commit's files, exported whole; read-only
//!                           for the reconciler
//! ```
//!
//! A commit's tree is exported into a temporary directory and renamed into
//! place, so a tree that exists is complete. The reconciler removes the trees
//! it no longer needs (all but the newest and the one in force), so the one
//! in force survives restarts even when the remote is unreachable.
//!
//! Must not: validate manifests (the reconciler decides what a bad revision
//! is), or pass anything from the remote to a shell.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::source::GitSource;
use super::{Reason, Shared, lock};
use crate::exec::{self, Cmd};

/// Timeout of a fetch (the network may be slow).
const FETCH_TIMEOUT: Duration = Duration::from_secs(300);
/// Timeout of local git commands.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(120);

/// A git repository mirrored in the state directory.
#[derive(Debug, Clone)]
pub struct GitRepo {
    /// `DIR/git`.
    pub dir: PathBuf,
    /// Remote URL.
    pub url: String,
    /// Branch.
    pub branch: String,
    /// Manifest directory inside the repository.
    pub path: Option<PathBuf>,
}

/// Checks a URL and branch before they reach a command line.
pub fn check_source(url: &str, branch: &str) -> Result<(), String> {
    if url.is_empty() || url.starts_with('-') || url.chars().any(char::is_control) {
        return Err(format!("{url:?} is not a repository URL"));
    }
    let ok_branch = !branch.is_empty()
        && !branch.starts_with('-')
        && !branch.starts_with('/')
        && !branch.ends_with('/')
        && !branch.to_ascii_lowercase().ends_with(".lock")
        && !branch.contains("..")
        && !branch.contains("//")
        && !branch.contains("@{")
        && branch
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && !"~^:?*[\\".contains(c));
    if ok_branch {
        Ok(())
    } else {
        Err(format!("{branch:?} is not a valid branch name"))
    }
}

fn short(e: &exec::ExecError) -> String {
    crate::error_chain(e)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

impl GitRepo {
    /// The repository for `url`/`branch` under `state_dir`.
    pub fn new(state_dir: &Path, url: &str, branch: &str, path: Option<PathBuf>) -> Self {
        // Absolute: git resolves some paths (GIT_INDEX_FILE) against the
        // work tree, not our working directory.
        let dir = state_dir.join("git");
        Self {
            dir: std::path::absolute(&dir).unwrap_or(dir),
            url: url.to_owned(),
            branch: branch.to_owned(),
            path,
        }
    }

    fn repo(&self) -> PathBuf {
        self.dir.join("repo.git")
    }

    fn trees(&self) -> PathBuf {
        self.dir.join("trees")
    }

    fn git(&self) -> Cmd {
        Cmd::new("git")
            .arg("--git-dir")
            .arg(self.repo())
            // No prompts: a fetch that needs credentials fails instead of
            // hanging until the timeout.
            .env("GIT_TERMINAL_PROMPT", "0")
            .timeout(LOCAL_TIMEOUT)
    }

    fn with_home(cmd: Cmd) -> Cmd {
        // ssh keys, known_hosts and credential helpers live in $HOME.
        match std::env::var_os("HOME") {
            Some(home) => cmd.env("HOME", home),
            None => cmd,
        }
    }

    /// Fetches the branch; returns its commit id.
    pub fn fetch(&self) -> Result<String, String> {
        if !self.repo().join("HEAD").exists() {
            fs::create_dir_all(&self.dir)
                .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
            exec::run(
                &Cmd::new("git")
                    .args(["init", "--bare", "--quiet"])
                    .arg(self.repo())
                    .timeout(LOCAL_TIMEOUT),
            )
            .map_err(|e| short(&e))?;
        }
        let refspec = format!("+refs/heads/{0}:refs/remotes/origin/{0}", self.branch);
        exec::run(
            &Self::with_home(self.git())
                .args(["fetch", "--quiet", "--no-tags", "--prune", "--"])
                .arg(&self.url)
                .arg(refspec)
                .timeout(FETCH_TIMEOUT),
        )
        .map_err(|e| short(&e))?;
        let out = exec::run(
            &self
                .git()
                .args(["rev-parse", "--verify", "--quiet"])
                .arg(format!("refs/remotes/origin/{}^{{commit}}", self.branch)),
        )
        .map_err(|e| short(&e))?;
        let sha = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if sha.len() < 40 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("git rev-parse printed {sha:?}, not a commit id"));
        }
        Ok(sha)
    }

    /// The exported tree of `commit`.
    pub fn tree(&self, commit: &str) -> PathBuf {
        self.trees().join(commit)
    }

    /// The manifest directory of `commit`'s tree.
    pub fn manifests_path(&self, commit: &str) -> PathBuf {
        let tree = self.tree(commit);
        match &self.path {
            Some(p) => tree.join(p),
            None => tree,
        }
    }

    /// Exports `commit`'s files to [`Self::tree`] (nothing to do when it
    /// exists: trees are complete or absent).
    pub fn export(&self, commit: &str) -> Result<PathBuf, String> {
        if !commit.chars().all(|c| c.is_ascii_hexdigit()) || commit.is_empty() {
            return Err(format!("{commit:?} is not a commit id"));
        }
        let dest = self.tree(commit);
        if dest.is_dir() {
            return Ok(dest);
        }
        let trees = self.trees();
        fs::create_dir_all(&trees)
            .map_err(|e| format!("cannot create {}: {e}", trees.display()))?;
        let tmp = trees.join(format!(".tmp-{commit}-{}", std::process::id()));
        let index = trees.join(format!(".index-{commit}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        let result = exec::run(
            &self
                .git()
                .arg("--work-tree")
                .arg(&tmp)
                // A private index: the bare repository's own stays untouched.
                .env("GIT_INDEX_FILE", &index)
                .args(["checkout", "--force", "--quiet", commit, "--", "."]),
        );
        let _ = fs::remove_file(&index);
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(short(&e));
        }
        match fs::rename(&tmp, &dest) {
            Ok(()) => Ok(dest),
            // Exported meanwhile by someone else: theirs is complete.
            Err(_) if dest.is_dir() => {
                let _ = fs::remove_dir_all(&tmp);
                Ok(dest)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                Err(format!("cannot rename {} into place: {e}", tmp.display()))
            }
        }
    }

    /// Removes every exported tree except `keep`.
    pub fn prune_trees(&self, keep: &[&str]) {
        let Ok(rd) = fs::read_dir(self.trees()) else {
            return;
        };
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || keep.contains(&name.as_ref()) {
                continue;
            }
            if let Err(error) = fs::remove_dir_all(e.path()) {
                tracing::warn!(tree = %e.path().display(), %error, "cannot remove an old git tree");
            }
        }
    }
}

/// The git poller task: fetches every `interval` and whenever the webhook
/// asks; a new commit is exported and triggers a reconcile.
pub async fn run(
    git: Arc<GitSource>,
    interval: Duration,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    loop {
        let g = Arc::clone(&git);
        let fetched = tokio::task::spawn_blocking(move || {
            let sha = g.repo.fetch()?;
            g.repo.export(&sha)?;
            Ok::<_, String>(sha)
        })
        .await
        .map_err(|e| format!("fetch task failed: {e}"))?;
        let now = chrono::Utc::now();
        match fetched {
            Ok(sha) => {
                lock(&shared.metrics).fetches += 1;
                let new = {
                    let mut head = lock(&git.head);
                    let new = head.as_deref() != Some(sha.as_str());
                    *head = Some(sha.clone());
                    new
                };
                {
                    let mut s = lock(&shared.status);
                    s.source.latest_revision = Some(sha.clone());
                    s.source.fetch_error = None;
                    s.source.checked_at = Some(now);
                    super::reconcile::refresh_source_condition(&mut s, now);
                }
                if new {
                    tracing::info!(revision = %sha, branch = %git.repo.branch, "new revision fetched");
                    shared.triggers.push(Reason::NewRevision);
                }
            }
            Err(error) => {
                lock(&shared.metrics).fetch_failures += 1;
                tracing::warn!(url = %git.repo.url, branch = %git.repo.branch, %error, "git fetch failed; the revision in force stays");
                let mut s = lock(&shared.status);
                s.source.fetch_error = Some(error);
                s.source.checked_at = Some(now);
                super::reconcile::refresh_source_condition(&mut s, now);
            }
        }
        shared.publish();
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shared.git_wake.notified() => {
                tracing::info!("webhook: fetching now");
            }
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_branches_are_checked_before_reaching_git() {
        assert!(check_source("file:///srv/git/site.git", "main").is_ok());
        assert!(check_source("https://example.org/x.git", "release/2026").is_ok());
        assert!(check_source("--upload-pack=evil", "main").is_err());
        assert!(check_source("", "main").is_err());
        for bad in [
            "", "-x", "a..b", "a b", "a:b", "x.lock", "/a", "a/", "a@{1}", "a~1", "a^",
        ] {
            assert!(check_source("file:///r", bad).is_err(), "{bad:?} accepted");
        }
    }
}
