//! Where the reconciler gets the manifests of each run: the `-f` paths as
//! they are now, or the tree of the newest fetched git commit.
//!
//! Owns the notion of a *revision*: a git commit id, or for a directory
//! `dir:` plus a hash of the manifest files' names and contents (so the
//! status can say which tree was applied, and the watcher can tell a real
//! change from noise such as an editor's swap file or a volume file being
//! written under the same tree).
//!
//! Must not: validate (the reconciler does, so both source kinds share the
//! rules on bad revisions).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::git::GitRepo;
use super::lock;

/// Directory depth walked, as the loader does.
const MAX_DEPTH: usize = 32;

/// The manifests of one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Paths to load.
    pub paths: Vec<PathBuf>,
    /// Its revision.
    pub revision: String,
}

/// The source of the manifests.
#[derive(Debug)]
pub enum Source {
    /// `-f` paths.
    Directory {
        /// The paths.
        paths: Vec<PathBuf>,
    },
    /// A git branch.
    Git(Arc<GitSource>),
}

/// A followed git branch and the newest commit fetched and exported.
#[derive(Debug)]
pub struct GitSource {
    /// The local repository.
    pub repo: GitRepo,
    /// The newest exported commit.
    pub head: Mutex<Option<String>>,
}

impl Source {
    /// The newest revision; `None` when a git source has not been fetched
    /// yet.
    pub fn candidate(&self) -> Option<Candidate> {
        match self {
            Source::Directory { paths } => Some(Candidate {
                paths: paths.clone(),
                revision: dir_revision(paths),
            }),
            Source::Git(g) => {
                let head = lock(&g.head).clone()?;
                Some(Candidate {
                    paths: vec![g.repo.manifests_path(&head)],
                    revision: head,
                })
            }
        }
    }
}

/// The manifest files under `paths`, as the loader finds them: sorted,
/// hidden entries skipped, `*.yaml`/`*.yml`, symlinked directories not
/// followed.
pub fn manifest_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        match fs::metadata(p) {
            Ok(m) if m.is_dir() => walk(p, 0, &mut out),
            Ok(_) => out.push(p.clone()),
            Err(_) => {}
        }
    }
    out
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > MAX_DEPTH {
        return;
    }
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
    entries.sort_by_key(fs::DirEntry::file_name);
    for e in entries {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let Ok(ft) = e.file_type() else { continue };
        let path = e.path();
        if ft.is_dir() {
            walk(&path, depth + 1, out);
        } else if (name.ends_with(".yaml") || name.ends_with(".yml"))
            && fs::metadata(&path).is_ok_and(|m| m.is_file())
        {
            out.push(path);
        }
    }
}

/// `dir:` and 16 hex digits of a hash over the manifest files' paths and
/// contents (a missing or empty tree has a revision too: `dir:empty`).
pub fn dir_revision(paths: &[PathBuf]) -> String {
    let files = manifest_files(paths);
    if files.is_empty() {
        return "dir:empty".to_owned();
    }
    let mut h = blake3::Hasher::new();
    for f in &files {
        h.update(f.as_os_str().as_encoded_bytes());
        h.update(b"\0");
        match fs::read(f) {
            Ok(bytes) => {
                h.update(&(bytes.len() as u64).to_le_bytes());
                h.update(&bytes);
            }
            Err(e) => {
                h.update(b"unreadable:");
                h.update(e.to_string().as_bytes());
            }
        }
        h.update(b"\0");
    }
    format!("dir:{}", &h.finalize().to_hex()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_changes_with_manifest_content_only() {
        let dir = tempfile::tempdir().unwrap();
        let paths = vec![dir.path().to_owned()];
        assert_eq!(dir_revision(&paths), "dir:empty");
        fs::write(dir.path().join("a.yaml"), "x: 1\n").unwrap();
        let r1 = dir_revision(&paths);
        assert!(r1.starts_with("dir:") && r1.len() == 20, "{r1}");
        // Noise: hidden files, other extensions, editor swap files.
        fs::write(dir.path().join(".a.yaml.swp"), "junk").unwrap();
        fs::write(dir.path().join("volume-123"), "data").unwrap();
        fs::create_dir(dir.path().join(".git")).unwrap();
        fs::write(dir.path().join(".git/x.yaml"), "y").unwrap();
        assert_eq!(dir_revision(&paths), r1);
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/b.yml"), "y: 2\n").unwrap();
        let r2 = dir_revision(&paths);
        assert_ne!(r2, r1);
        fs::write(dir.path().join("sub/b.yml"), "y: 3\n").unwrap();
        assert_ne!(dir_revision(&paths), r2);
        assert_eq!(
            manifest_files(&paths),
            [dir.path().join("a.yaml"), dir.path().join("sub/b.yml")]
        );
        assert_eq!(dir_revision(&[dir.path().join("missing")]), "dir:empty");
    }
}
