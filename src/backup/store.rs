//! The storage layer under a repository: named objects on a POSIX
//! directory (local or an NFS mount) or in an S3-compatible bucket.
//!
//! The repository format ([`super::format`]) and its write order
//! ([`super::repo`]) are the same on every target; a [`Store`] only knows
//! keys (`config`, `data/ab/<id>`, `backups/<volume>/<id>.json`, …) and
//! bytes. Its promises:
//! - [`Store::put`] is atomic: a reader sees the whole object or none (a
//!   directory writes a temp file, fsyncs and renames it; S3 makes a PUT
//!   visible only when it completes). With [`Put::Create`] an existing
//!   object is never replaced (`link(2)` on a directory, `If-None-Match: *`
//!   on S3), which is how an append-only repository never overwrites.
//! - [`Store::list`] returns every object under a prefix with its size and
//!   modification time, sorted by key.
//! - Failures of remote calls are retried with exponential backoff inside
//!   the store (`object_store`'s retry: 100 ms doubling up to 15 s, ten
//!   tries, three minutes); what is left is an error naming the key.
//!
//! # Sync over async
//! The backup engine is synchronous (threads, `pread`), S3 clients are
//! async. [`S3Store`] runs its requests on one process-wide multi-thread
//! tokio runtime of its own (two workers, started on first use) and the
//! calling thread waits on a channel. Waiting on a channel, unlike
//! `block_on`, is legal on any thread — the agent calls backups on its
//! runtime's blocking threads — and never drives a runtime from inside
//! another.
//!
//! Why `object_store` (Apache Arrow's) and not `opendal`: it covers exactly
//! what this needs (S3 with `SigV4`, ranged GETs, conditional PUT, listing,
//! retries with backoff) in one crate with a small tree; built with
//! `aws-base` + `ring` + `reqwest` without reqwest's default TLS it avoids
//! aws-lc's C build (minutes on a 2-core machine), and TLS comes from
//! rustls with ring's provider. opendal's S3 service pulls its own signer,
//! layers and service registry for the same four calls.
//!
//! Must not: know the repository's format, or print.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use uuid::Uuid;

use super::BackupError;
use crate::state::atomic::{fsync_dir, write_atomic};

/// How [`Store::put`] treats an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Replace it (atomically).
    Replace,
    /// Leave it: the put reports [`Created::AlreadyThere`].
    Create,
}

/// What a [`Put::Create`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The object is ours.
    New,
    /// An object of that key existed and was left alone.
    AlreadyThere,
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its key, relative to the store's root.
    pub key: String,
    /// Bytes.
    pub size: u64,
    /// Last written.
    pub modified: SystemTime,
}

/// Named immutable objects.
pub trait Store: Send + Sync + fmt::Debug {
    /// Where it is, for messages and the catalogue (`/srv/repo`,
    /// `s3://bucket/prefix at https://endpoint`).
    fn location(&self) -> String;
    /// The directory, when the store is one (fast paths: packs written in
    /// place and renamed, reads with `pread`).
    fn dir(&self) -> Option<&Path> {
        None
    }
    /// The whole object; `None` when there is none.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackupError>;
    /// Bytes `range` of an object (an error when it is missing or short).
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, BackupError>;
    /// Its size; `None` when there is none.
    fn size(&self, key: &str) -> Result<Option<u64>, BackupError>;
    /// Writes an object atomically.
    fn put(&self, key: &str, bytes: &[u8], mode: Put) -> Result<Created, BackupError>;
    /// Every object whose key starts with `prefix` (a directory prefix such
    /// as `data/`), sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<Listed>, BackupError>;
    /// Removes an object (no error when it is already gone).
    fn delete(&self, key: &str) -> Result<(), BackupError>;
}

// ---------------------------------------------------------------------------
// Directory

/// A repository directory. Keys are relative paths below it.
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BackupError {
    let path = path.to_owned();
    move |source| BackupError::Io { op, path, source }
}

impl DirStore {
    /// The directory `root` (not created here).
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    /// `ROOT/key`.
    pub fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn walk(&self, dir: &Path, out: &mut Vec<Listed>) -> Result<(), BackupError> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(BackupError::Io {
                    op: "read directory",
                    path: dir.to_owned(),
                    source,
                });
            }
        };
        for e in entries {
            let e = e.map_err(io_err("read directory", dir))?;
            let name = e.file_name();
            // Hidden files are temp files of atomic writes in progress.
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = e.path();
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                self.walk(&path, out)?;
            } else if meta.is_file() {
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let Some(key) = rel.to_str() else { continue };
                out.push(Listed {
                    key: key.to_owned(),
                    size: meta.len(),
                    modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        Ok(())
    }
}

impl Store for DirStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn dir(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackupError> {
        let path = self.path(key);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(BackupError::Io {
                op: "read",
                path,
                source,
            }),
        }
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, BackupError> {
        let path = self.path(key);
        let file = File::open(&path).map_err(io_err("open", &path))?;
        let len = usize::try_from(range.end.saturating_sub(range.start)).unwrap_or(0);
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, range.start)
            .map_err(io_err("read", &path))?;
        Ok(buf)
    }

    fn size(&self, key: &str) -> Result<Option<u64>, BackupError> {
        let path = self.path(key);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(BackupError::Io {
                op: "stat",
                path,
                source,
            }),
        }
    }

    fn put(&self, key: &str, bytes: &[u8], mode: Put) -> Result<Created, BackupError> {
        let path = self.path(key);
        let Some(dir) = path.parent() else {
            return Err(BackupError::Io {
                op: "write",
                path,
                source: io::Error::from(io::ErrorKind::InvalidInput),
            });
        };
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(io_err("create", dir))?;
            if let Some(up) = dir.parent() {
                fsync_dir(up).map_err(|source| BackupError::Write {
                    path: up.to_owned(),
                    source,
                })?;
            }
        }
        match mode {
            Put::Replace => {
                write_atomic(&path, bytes).map_err(|source| BackupError::Write {
                    path: path.clone(),
                    source,
                })?;
                Ok(Created::New)
            }
            Put::Create => {
                if path.exists() {
                    return Ok(Created::AlreadyThere);
                }
                let linked = create_exclusive(dir, &path, bytes)?;
                match linked {
                    Ok(()) => {
                        fsync_dir(dir).map_err(|source| BackupError::Write {
                            path: dir.to_owned(),
                            source,
                        })?;
                        Ok(Created::New)
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Created::AlreadyThere),
                    Err(source) => Err(BackupError::Io {
                        op: "link",
                        path,
                        source,
                    }),
                }
            }
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>, BackupError> {
        let mut out = Vec::new();
        // The prefix is a directory path ("data/", "backups/<volume>/").
        let dir = self.root.join(prefix.trim_end_matches('/'));
        self.walk(&dir, &mut out)?;
        out.retain(|l| l.key.starts_with(prefix));
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<(), BackupError> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(BackupError::Io {
                op: "remove",
                path,
                source,
            }),
        }
    }
}

/// Writes `bytes` as a new file and links it into place as `path`, which
/// must not exist (`link(2)` fails when the name exists: two writers of
/// one key end with one object, and a reader never sees it half written).
/// Returns the link's result; errors before it are the outer error.
///
/// The file is written first without a name (`O_TMPFILE`) and fsynced,
/// then given its name through `/proc/self/fd` (`linkat` with
/// `AT_SYMLINK_FOLLOW`): nothing is ever renamed or removed, so it works
/// in a directory that forbids deletion (an append-only repository:
/// `chattr +a`, or a share whose server does not let this host delete)
/// and leaves nothing behind. Where the filesystem has no `O_TMPFILE`
/// (NFS) the file is written under a hidden temp name, linked, and the
/// temp name unlinked; if the directory forbids that, the temp name is
/// left — a second name of the same inode, no space — and the listing
/// skips it.
fn create_exclusive(dir: &Path, path: &Path, bytes: &[u8]) -> Result<io::Result<()>, BackupError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let unnamed = File::options()
        .write(true)
        .mode(0o644)
        .custom_flags(nix::libc::O_TMPFILE)
        .open(dir);
    match unnamed {
        Ok(mut f) => {
            f.write_all(bytes)
                .and_then(|()| f.sync_all())
                .map_err(io_err("write", path))?;
            let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f));
            let r = nix::unistd::linkat(
                nix::fcntl::AT_FDCWD,
                proc_path.as_str(),
                nix::fcntl::AT_FDCWD,
                path,
                nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
            );
            match r {
                Ok(()) => return Ok(Ok(())),
                Err(nix::errno::Errno::EEXIST) => {
                    return Ok(Err(io::Error::from(io::ErrorKind::AlreadyExists)));
                }
                // No /proc here: the temp name below.
                Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => return Ok(Err(io::Error::from(e))),
            }
        }
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(nix::libc::EOPNOTSUPP | nix::libc::EISDIR | nix::libc::EINVAL)
            ) => {}
        Err(e) => return Err(io_err("create a file in", dir)(e)),
    }
    let tmp = dir.join(format!(".{}.tmp-{}", file_name(path), Uuid::new_v4()));
    let mut f = File::options()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err("write", &tmp))?;
    drop(f);
    let linked = fs::hard_link(&tmp, path);
    if let Err(e) = fs::remove_file(&tmp) {
        tracing::debug!(path = %tmp.display(), error = %e, "temp name left (the directory forbids removal)");
    }
    Ok(linked)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// S3

/// Where an S3 repository is and how to reach it (secrets resolved).
#[derive(Clone)]
pub struct S3Config {
    /// `https://host[:port]`; `None`: AWS's endpoint for `region`.
    pub endpoint: Option<String>,
    /// The bucket.
    pub bucket: String,
    /// Key prefix of the repository inside the bucket (no leading or
    /// trailing `/`; empty: the bucket's root).
    pub prefix: String,
    /// The region (`us-east-1` when the store has none).
    pub region: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// `bucket` in the path (`https://host/bucket/key`) rather than the
    /// host name.
    pub path_style: bool,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("path_style", &self.path_style)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// `s3://bucket/prefix`, plus the endpoint when it is not AWS's.
    pub fn location(&self) -> String {
        let mut s = format!("s3://{}", self.bucket);
        if !self.prefix.is_empty() {
            s.push('/');
            s.push_str(&self.prefix);
        }
        if let Some(e) = &self.endpoint {
            s.push_str(" at ");
            s.push_str(e);
        }
        s
    }
}

/// A repository under a prefix of an S3 bucket.
#[derive(Debug, Clone)]
pub struct S3Store {
    store: Arc<object_store::aws::AmazonS3>,
    prefix: String,
    location: String,
}

/// The runtime every [`S3Store`] runs its requests on.
fn runtime() -> Result<&'static tokio::runtime::Runtime, BackupError> {
    static RT: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    RT.get_or_init(|| {
        // reqwest is built without a TLS provider of its own (no aws-lc):
        // ring's, once per process. An error means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3-io")
            .enable_all()
            .build()
            .map_err(|e| tracing::error!(error = %e, "cannot start the S3 runtime"))
            .ok()
    })
    .as_ref()
    .ok_or_else(|| BackupError::Remote {
        op: "start the I/O runtime for",
        location: "S3".into(),
        source: "no threads".into(),
    })
}

/// Runs `fut` on the S3 runtime and waits for it on this thread.
fn wait<F>(fut: F) -> Result<F::Output, BackupError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let rt = runtime()?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().map_err(|_| BackupError::Panicked("S3 request"))
}

/// How long one S3 call may retry before its error is final.
const RETRY_FOR: Duration = Duration::from_secs(180);

impl S3Store {
    /// Connects (no request is made until the first call).
    pub fn new(cfg: &S3Config) -> Result<Self, BackupError> {
        use object_store::aws::AmazonS3Builder;
        let location = cfg.location();
        runtime()?;
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_access_key_id(&cfg.access_key)
            .with_secret_access_key(&cfg.secret_key)
            .with_virtual_hosted_style_request(!cfg.path_style)
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(15),
                    base: 2.0,
                },
                max_retries: 10,
                retry_timeout: RETRY_FOR,
            });
        if let Some(e) = &cfg.endpoint {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        let store = b.build().map_err(|source| BackupError::Remote {
            op: "configure",
            location: location.clone(),
            source: Box::new(source),
        })?;
        Ok(Self {
            store: Arc::new(store),
            prefix: cfg.prefix.trim_matches('/').to_owned(),
            location,
        })
    }

    fn path(&self, key: &str) -> object_store::path::Path {
        if self.prefix.is_empty() {
            object_store::path::Path::from(key)
        } else {
            object_store::path::Path::from(format!("{}/{key}", self.prefix))
        }
    }

    fn err(
        &self,
        op: &'static str,
        key: &str,
    ) -> impl FnOnce(object_store::Error) -> BackupError + use<> {
        let location = format!("{}: {key}", self.location);
        move |source| BackupError::Remote {
            op,
            location,
            source: Box::new(source),
        }
    }
}

impl Store for S3Store {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackupError> {
        let (store, path) = (Arc::clone(&self.store), self.path(key));
        let r = wait(async move {
            use object_store::ObjectStoreExt as _;
            match store.get(&path).await {
                Ok(g) => g.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        Ok(r.map_err(self.err("read", key))?.map(|b| b.to_vec()))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, BackupError> {
        let (store, path) = (Arc::clone(&self.store), self.path(key));
        let want = range.end.saturating_sub(range.start);
        let r = wait(async move {
            use object_store::ObjectStoreExt as _;
            store.get_range(&path, range).await
        })?;
        let bytes = r.map_err(self.err("read", key))?;
        if bytes.len() as u64 != want {
            return Err(BackupError::Remote {
                op: "read",
                location: format!("{}: {key}", self.location),
                source: format!("{} bytes returned, {want} asked for", bytes.len()).into(),
            });
        }
        Ok(bytes.to_vec())
    }

    fn size(&self, key: &str) -> Result<Option<u64>, BackupError> {
        let (store, path) = (Arc::clone(&self.store), self.path(key));
        let r = wait(async move {
            use object_store::ObjectStoreExt as _;
            match store.head(&path).await {
                Ok(m) => Ok(Some(m.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        r.map_err(self.err("stat", key))
    }

    fn put(&self, key: &str, bytes: &[u8], mode: Put) -> Result<Created, BackupError> {
        let (store, path) = (Arc::clone(&self.store), self.path(key));
        let payload = object_store::PutPayload::from(bytes::Bytes::copy_from_slice(bytes));
        let r = wait(async move {
            use object_store::ObjectStore as _;
            let opts = object_store::PutOptions {
                mode: match mode {
                    Put::Replace => object_store::PutMode::Overwrite,
                    Put::Create => object_store::PutMode::Create,
                },
                ..object_store::PutOptions::default()
            };
            match store.put_opts(&path, payload, opts).await {
                Ok(_) => Ok(Created::New),
                Err(object_store::Error::AlreadyExists { .. }) => Ok(Created::AlreadyThere),
                Err(e) => Err(e),
            }
        })?;
        r.map_err(self.err("write", key))
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>, BackupError> {
        let store = Arc::clone(&self.store);
        let base = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let dir = self.path(prefix.trim_end_matches('/'));
        let want = prefix.to_owned();
        let r = wait(async move {
            use futures_util::TryStreamExt as _;
            use object_store::ObjectStore as _;
            store.list(Some(&dir)).try_collect::<Vec<_>>().await
        })?;
        let metas = r.map_err(self.err("list", prefix))?;
        let mut out: Vec<Listed> = metas
            .into_iter()
            .filter_map(|m| {
                let key = m.location.as_ref().strip_prefix(&base)?.to_owned();
                key.starts_with(&want).then(|| Listed {
                    key,
                    size: m.size,
                    modified: SystemTime::from(m.last_modified),
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<(), BackupError> {
        let (store, path) = (Arc::clone(&self.store), self.path(key));
        let r = wait(async move {
            use object_store::ObjectStoreExt as _;
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })?;
        r.map_err(self.err("delete", key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_store_puts_atomically_creates_once_and_lists_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let s = DirStore::new(dir.path());
        assert_eq!(s.get("config").unwrap(), None);
        assert_eq!(s.put("config", b"one", Put::Create).unwrap(), Created::New);
        assert_eq!(
            s.put("config", b"two", Put::Create).unwrap(),
            Created::AlreadyThere
        );
        assert_eq!(s.get("config").unwrap().unwrap(), b"one");
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["config"], "a create leaves no temp name");
        s.put("data/ab/x", b"0123456789", Put::Replace).unwrap();
        s.put("data/cd/y", b"yy", Put::Replace).unwrap();
        s.put("index/ab/z", b"z", Put::Replace).unwrap();
        fs::write(dir.path().join("data/ab/.x.tmp-1"), b"partial").unwrap();
        let keys: Vec<String> = s
            .list("data/")
            .unwrap()
            .into_iter()
            .map(|l| l.key)
            .collect();
        assert_eq!(
            keys,
            ["data/ab/x", "data/cd/y"],
            "temp files are not objects"
        );
        assert_eq!(s.get_range("data/ab/x", 2..5).unwrap(), b"234");
        assert!(s.get_range("data/ab/x", 8..12).is_err(), "short read");
        assert_eq!(s.size("data/cd/y").unwrap(), Some(2));
        s.delete("data/cd/y").unwrap();
        s.delete("data/cd/y").unwrap();
        assert_eq!(s.size("data/cd/y").unwrap(), None);
        assert!(s.list("nothing/").unwrap().is_empty());
    }
}
