//! The repository directory: config, packs, index files, manifests and
//! session files, with the write order that keeps it consistent.
//!
//! ```text
//! REPO/config                              RepoConfig (JSON), created once
//! REPO/data/<00..ff>/<pack id>             packs, named by their BLAKE3
//! REPO/index/<00..ff>/<index id>           index files, named by their BLAKE3
//! REPO/backups/<volume uuid>/<id>.json     manifests, one per backup
//! REPO/locks/<session uuid>.json           sessions: shared (backup, restore,
//!                                          verify) or exclusive (prune)
//! REPO/tmp/                                packs being written
//! ```
//!
//! Must not: know about volumes or back ends (the engine's), or print.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::BackupError;
use super::format::{
    self, BlobEntry, CHUNK_SIZE, Codec, Digest, HASH, Manifest, PACK_SIZE, REPO_FORMAT,
    REPO_VERSION, RepoConfig,
};
use crate::state::atomic::{fsync_dir, write_atomic};

/// A session file not refreshed for this long belongs to a dead process.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// How often a live session refreshes its file.
const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BackupError {
    let path = path.to_owned();
    move |source| BackupError::Io { op, path, source }
}

/// An open repository.
#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
    config: RepoConfig,
}

impl Repository {
    /// Opens the repository at `root`.
    pub fn open(root: &Path) -> Result<Self, BackupError> {
        let path = root.join("config");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BackupError::NotARepository {
                    path: root.to_owned(),
                });
            }
            Err(source) => {
                return Err(BackupError::Io {
                    op: "read",
                    path,
                    source,
                });
            }
        };
        let config = format::decode_config(root, &bytes)?;
        // Absolute, so the catalogue's path works from any directory.
        let root = fs::canonicalize(root).map_err(io_err("resolve", root))?;
        Ok(Self { root, config })
    }

    /// Opens the repository at `root`, creating it (with `compression` as
    /// its default codec) when there is none. Two hosts creating the same
    /// repository at once end up with one config: it is linked into place,
    /// which fails for the second.
    pub fn open_or_init(root: &Path, compression: Codec) -> Result<Self, BackupError> {
        match Self::open(root) {
            Err(BackupError::NotARepository { .. }) => {}
            other => return other,
        }
        fs::create_dir_all(root).map_err(io_err("create", root))?;
        for top in ["data", "index", "backups", "locks", "tmp"] {
            let dir = root.join(top);
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        for i in 0..=255u8 {
            for top in ["data", "index"] {
                let dir = root.join(top).join(format!("{i:02x}"));
                fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
            }
        }
        let config = RepoConfig {
            format: REPO_FORMAT.to_owned(),
            version: REPO_VERSION,
            id: Uuid::new_v4(),
            chunk_size: CHUNK_SIZE,
            hash: HASH.to_owned(),
            compression,
            pack_size: PACK_SIZE,
            created_at: Utc::now(),
        };
        let mut bytes = serde_json::to_vec_pretty(&config).map_err(|source| BackupError::Json {
            path: root.join("config"),
            source,
        })?;
        bytes.push(b'\n');
        let tmp = root.join("tmp").join(format!("config-{}", Uuid::new_v4()));
        write_atomic(&tmp, &bytes).map_err(|source| BackupError::Write {
            path: tmp.clone(),
            source,
        })?;
        let target = root.join("config");
        let linked = fs::hard_link(&tmp, &target);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                fsync_dir(root).map_err(|source| BackupError::Write {
                    path: root.to_owned(),
                    source,
                })?;
                tracing::info!(repo = %root.display(), id = %config.id, "repository created");
                Ok(Self {
                    root: root.to_owned(),
                    config,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::open(root),
            Err(source) => Err(BackupError::Io {
                op: "link",
                path: target,
                source,
            }),
        }
    }

    /// The repository directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Its config.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// `data/<shard>/<id>`.
    pub fn pack_path(&self, id: &Digest) -> PathBuf {
        self.root.join("data").join(id.shard()).join(id.to_hex())
    }

    fn index_path(&self, id: &Digest) -> PathBuf {
        self.root.join("index").join(id.shard()).join(id.to_hex())
    }

    /// `backups/<volume>/<id>.json`.
    pub fn manifest_path(&self, volume: Uuid, id: Uuid) -> PathBuf {
        self.root
            .join("backups")
            .join(volume.hyphenated().to_string())
            .join(format!("{}.json", id.hyphenated()))
    }

    /// Starts a pack writer (packs are written to `tmp/` and renamed into
    /// `data/` when sealed).
    pub fn pack_writer(&self) -> PackWriter {
        PackWriter::new(&self.root)
    }

    /// Loads every index file into memory. A damaged index file (its bytes do
    /// not hash to its name) is skipped with a warning: the packs it
    /// described are found again by [`Repository::scan_packs`].
    pub fn load_index(&self) -> Result<Index, BackupError> {
        let mut index = Index::default();
        let mut found = Vec::new();
        for (id, path) in list_sharded(&self.root.join("index"))? {
            let bytes = fs::read(&path).map_err(io_err("read", &path))?;
            if Digest::of(&bytes) != id {
                tracing::warn!(path = %path.display(), "index file does not match its name; ignored");
                continue;
            }
            let Some(packs) = format::decode_index(&bytes) else {
                tracing::warn!(path = %path.display(), "unreadable index file; ignored");
                continue;
            };
            index.files.push(id);
            found.extend(packs);
        }
        let present: HashSet<Digest> = self.scan_packs()?.into_iter().map(|(id, _)| id).collect();
        // Packs that exist first: where a chunk is in several packs (a full
        // backup stored it again after its pack was lost), a present one wins.
        found.sort_by_key(|(pack, _)| !present.contains(pack));
        for (pack, entries) in found {
            index.add_pack(pack, &entries);
        }
        index.present = present;
        Ok(index)
    }

    /// Every pack file present, by id.
    pub fn scan_packs(&self) -> Result<Vec<(Digest, PathBuf)>, BackupError> {
        list_sharded(&self.root.join("data"))
    }

    /// Reads a pack's trailer.
    pub fn read_trailer(&self, id: &Digest) -> Result<Vec<BlobEntry>, BackupError> {
        let path = self.pack_path(id);
        let file = File::open(&path).map_err(io_err("open", &path))?;
        let len = file.metadata().map_err(io_err("stat", &path))?.len();
        let bad = || BackupError::BadPack { path: path.clone() };
        let mut footer = [0u8; 12];
        if len < 12 {
            return Err(bad());
        }
        file.read_exact_at(&mut footer, len - 12)
            .map_err(io_err("read", &path))?;
        let tlen = format::pack_trailer_len(&footer, len).ok_or_else(bad)?;
        let mut trailer = vec![0u8; usize::try_from(tlen).map_err(|_| bad())?];
        file.read_exact_at(&mut trailer, len - tlen)
            .map_err(io_err("read", &path))?;
        format::decode_pack_trailer(&trailer, len).ok_or_else(bad)
    }

    /// Writes an index file describing `packs`; returns its id.
    pub fn write_index(&self, packs: &[(Digest, Vec<BlobEntry>)]) -> Result<Digest, BackupError> {
        let bytes = format::encode_index(packs);
        let id = Digest::of(&bytes);
        let path = self.index_path(&id);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        }
        write_atomic(&path, &bytes).map_err(|source| BackupError::Write { path, source })?;
        Ok(id)
    }

    /// Removes an index file.
    pub fn remove_index(&self, id: &Digest) -> Result<(), BackupError> {
        remove_if_present(&self.index_path(id))
    }

    /// Removes a pack.
    pub fn remove_pack(&self, id: &Digest) -> Result<(), BackupError> {
        remove_if_present(&self.pack_path(id))
    }

    /// Writes a manifest (temp + fsync + rename + fsync dir): the commit
    /// point of a backup.
    pub fn write_manifest(&self, m: &Manifest) -> Result<(), BackupError> {
        let path = self.manifest_path(m.volume.uuid, m.id);
        if let Some(dir) = path.parent() {
            if !dir.is_dir() {
                fs::create_dir_all(dir).map_err(io_err("create", dir))?;
                if let Some(up) = dir.parent() {
                    fsync_dir(up).map_err(|source| BackupError::Write {
                        path: up.to_owned(),
                        source,
                    })?;
                }
            }
        }
        let mut bytes = serde_json::to_vec_pretty(m).map_err(|source| BackupError::Json {
            path: path.clone(),
            source,
        })?;
        bytes.push(b'\n');
        write_atomic(&path, &bytes).map_err(|source| BackupError::Write { path, source })
    }

    /// Removes a manifest (the backup is gone; its chunks stay until prune).
    pub fn remove_manifest(&self, m: &Manifest) -> Result<(), BackupError> {
        remove_if_present(&self.manifest_path(m.volume.uuid, m.id))
    }

    /// Reads one manifest file.
    pub fn read_manifest_file(path: &Path) -> Result<Manifest, BackupError> {
        let bytes = fs::read(path).map_err(io_err("read", path))?;
        format::decode_manifest(path, &bytes)
    }

    /// The manifest of backup `id`, if the repository holds it.
    pub fn find_manifest(&self, id: Uuid) -> Result<Option<Manifest>, BackupError> {
        let name = format!("{}.json", id.hyphenated());
        let backups = self.root.join("backups");
        for dir in read_dir_sorted(&backups)? {
            let path = dir.join(&name);
            if path.is_file() {
                return Self::read_manifest_file(&path).map(Some);
            }
        }
        Ok(None)
    }

    /// Every manifest, oldest first; unreadable ones are returned as errors
    /// beside the good ones so one bad file hides nothing.
    pub fn manifests(&self) -> Result<(Vec<Manifest>, Vec<BackupError>), BackupError> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for dir in read_dir_sorted(&self.root.join("backups"))? {
            for path in read_dir_sorted(&dir)? {
                if !is_manifest_file(&path) {
                    continue;
                }
                match Self::read_manifest_file(&path) {
                    Ok(m) => good.push(m),
                    Err(e) => bad.push(e),
                }
            }
        }
        good.sort_by_key(|m| (m.started_at, m.id));
        Ok((good, bad))
    }

    /// The readable manifests of one volume, oldest first (an unreadable
    /// one is logged and skipped: it must not stop the next backup).
    pub fn volume_manifests(&self, volume: Uuid) -> Result<Vec<Manifest>, BackupError> {
        let dir = self
            .root
            .join("backups")
            .join(volume.hyphenated().to_string());
        let mut out = Vec::new();
        for path in read_dir_sorted(&dir)? {
            if is_manifest_file(&path) {
                match Self::read_manifest_file(&path) {
                    Ok(m) => out.push(m),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "unreadable manifest skipped");
                    }
                }
            }
        }
        out.sort_by_key(|m| (m.started_at, m.id));
        Ok(out)
    }

    /// Opens a session: `Shared` for anything that reads or adds (any number
    /// at once, from any host), `Exclusive` for prune (alone). Fails at once,
    /// naming the holder, when the other kind is live.
    pub fn session(&self, kind: SessionKind, command: &str) -> Result<Session, BackupError> {
        Session::open(&self.root.join("locks"), kind, command)
    }

    /// Removes temp files older than `age` from `tmp/` (crashed writers).
    pub fn clean_tmp(&self, age: Duration) -> Result<u64, BackupError> {
        let mut removed = 0;
        for path in read_dir_sorted(&self.root.join("tmp"))? {
            let old = fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|d| d > age);
            if old {
                remove_if_present(&path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// `<id>.json`, not a hidden temp file of an atomic write.
fn is_manifest_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "json")
        && !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

fn remove_if_present(path: &Path) -> Result<(), BackupError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BackupError::Io {
            op: "remove",
            path: path.to_owned(),
            source,
        }),
    }
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, BackupError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(BackupError::Io {
                op: "read directory",
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for e in entries {
        out.push(e.map_err(io_err("read directory", dir))?.path());
    }
    out.sort();
    Ok(out)
}

/// `(id, path)` of every `<top>/<shard>/<64 hex>` file.
fn list_sharded(top: &Path) -> Result<Vec<(Digest, PathBuf)>, BackupError> {
    let mut out = Vec::new();
    for shard in read_dir_sorted(top)? {
        for path in read_dir_sorted(&shard)? {
            if let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<Digest>().ok())
            {
                out.push((id, path));
            }
        }
    }
    Ok(out)
}

/// Where a blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Index into [`Index::packs`].
    pub pack: u32,
    /// Byte offset in the pack.
    pub offset: u64,
    /// Bytes in the pack.
    pub stored_len: u32,
    /// Bytes of the chunk.
    pub raw_len: u32,
    /// How it is stored.
    pub codec: Codec,
}

/// The in-memory index: chunk id → location. About 75 bytes per unique
/// chunk (1 TiB of unique data: 16 Mi chunks, ~1.2 GiB of RAM), which is the
/// repository's scaling limit today; see the module docs.
#[derive(Debug, Default)]
pub struct Index {
    /// Pack ids, referred to by [`Location::pack`].
    pub packs: Vec<Digest>,
    /// Chunk locations (the first one seen wins; duplicates across packs
    /// are harmless and removed by prune).
    pub blobs: HashMap<Digest, Location>,
    /// The index files loaded.
    pub files: Vec<Digest>,
    /// The packs found in `data/` when the index was loaded.
    pub present: HashSet<Digest>,
    pack_pos: HashMap<Digest, u32>,
}

impl Index {
    /// Adds a pack's entries.
    pub fn add_pack(&mut self, pack: Digest, entries: &[BlobEntry]) {
        let p = if let Some(&p) = self.pack_pos.get(&pack) {
            p
        } else {
            let p = u32::try_from(self.packs.len()).unwrap_or(u32::MAX);
            self.packs.push(pack);
            self.pack_pos.insert(pack, p);
            p
        };
        let mut offset = 0u64;
        for e in entries {
            self.blobs.entry(e.id).or_insert(Location {
                pack: p,
                offset,
                stored_len: e.stored_len,
                raw_len: e.raw_len,
                codec: e.codec,
            });
            offset += u64::from(e.stored_len);
        }
    }

    /// Whether `id` is stored in a pack that exists (a chunk whose pack was
    /// lost counts as absent, so the next full backup stores it again).
    pub fn has_usable(&self, id: &Digest) -> bool {
        self.blobs
            .get(id)
            .is_some_and(|loc| self.present.contains(&self.packs[loc.pack as usize]))
    }

    /// Whether `pack` is described.
    pub fn has_pack(&self, pack: &Digest) -> bool {
        self.pack_pos.contains_key(pack)
    }

    /// A pack's id.
    pub fn pack_id(&self, loc: &Location) -> Digest {
        self.packs[loc.pack as usize]
    }
}

/// Writes blobs into packs of about [`PACK_SIZE`] bytes.
#[derive(Debug)]
pub struct PackWriter {
    root: PathBuf,
    current: Option<OpenPack>,
    /// Packs finished (durable, in `data/`), with their entries.
    pub sealed: Vec<(Digest, Vec<BlobEntry>)>,
    pending: Vec<(PathBuf, Digest, Vec<BlobEntry>)>,
    syncer: Option<Syncer>,
}

/// A thread that fsyncs closed packs while the next ones fill, so their
/// bytes reach the disk early (ahead of other dirty data) without ever
/// stalling the pipeline.
#[derive(Debug)]
struct Syncer {
    tx: mpsc::Sender<PathBuf>,
    thread: thread::JoinHandle<Result<(), BackupError>>,
}

impl Syncer {
    fn start() -> Result<Self, BackupError> {
        let (tx, rx) = mpsc::channel::<PathBuf>();
        let thread = thread::Builder::new()
            .name("pack-fsync".into())
            .spawn(move || {
                for path in rx {
                    File::open(&path)
                        .and_then(|f| f.sync_all())
                        .map_err(io_err("fsync", &path))?;
                }
                Ok(())
            })
            .map_err(io_err("start a thread for", Path::new("pack fsync")))?;
        Ok(Self { tx, thread })
    }

    /// Waits until every pack sent has been fsynced.
    fn finish(self) -> Result<(), BackupError> {
        drop(self.tx);
        self.thread
            .join()
            .map_err(|_| BackupError::Panicked("pack fsync"))?
    }
}

#[derive(Debug)]
struct OpenPack {
    tmp: PathBuf,
    out: BufWriter<File>,
    hasher: blake3::Hasher,
    entries: Vec<BlobEntry>,
    len: u64,
}

impl PackWriter {
    fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            current: None,
            sealed: Vec::new(),
            pending: Vec::new(),
            syncer: None,
        }
    }

    /// Appends one blob; seals the pack when it is full.
    pub fn add(
        &mut self,
        id: Digest,
        codec: Codec,
        raw_len: u32,
        stored: &[u8],
    ) -> Result<(), BackupError> {
        if self.current.is_none() {
            let tmp_dir = self.root.join("tmp");
            fs::create_dir_all(&tmp_dir).map_err(io_err("create", &tmp_dir))?;
            let tmp = tmp_dir.join(format!("pack-{}", Uuid::new_v4()));
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(io_err("create", &tmp))?;
            self.current = Some(OpenPack {
                tmp,
                out: BufWriter::with_capacity(1 << 20, file),
                hasher: blake3::Hasher::new(),
                entries: Vec::new(),
                len: 0,
            });
        }
        let Some(pack) = self.current.as_mut() else {
            return Ok(());
        };
        pack.out
            .write_all(stored)
            .map_err(io_err("write", &pack.tmp))?;
        pack.hasher.update(stored);
        pack.len += stored.len() as u64;
        pack.entries.push(BlobEntry {
            id,
            codec,
            stored_len: u32::try_from(stored.len()).unwrap_or(u32::MAX),
            raw_len,
        });
        if pack.len >= PACK_SIZE {
            self.seal()?;
        }
        Ok(())
    }

    /// Closes the open pack, if any: its trailer is written, the fsync
    /// thread is told to make it durable, and it waits in `tmp/` for
    /// [`PackWriter::finish`]. No fsync on this thread: it would stall the
    /// pipeline once per 16 MiB (measured: the per-pack fsync made a 2 GiB
    /// backup write-bound in lock step).
    pub fn seal(&mut self) -> Result<(), BackupError> {
        let Some(mut pack) = self.current.take() else {
            return Ok(());
        };
        let trailer = format::encode_pack_trailer(&pack.entries);
        pack.out
            .write_all(&trailer)
            .map_err(io_err("write", &pack.tmp))?;
        pack.hasher.update(&trailer);
        let file = pack.out.into_inner().map_err(|e| BackupError::Io {
            op: "write",
            path: pack.tmp.clone(),
            source: e.into_error(),
        })?;
        drop(file);
        let id = Digest(*pack.hasher.finalize().as_bytes());
        tracing::debug!(pack = %id, blobs = pack.entries.len(), bytes = pack.len, "pack closed");
        if self.syncer.is_none() {
            self.syncer = Some(Syncer::start()?);
        }
        if let Some(s) = &self.syncer {
            // A closed channel means the thread failed; publish() reports it.
            let _ = s.tx.send(pack.tmp.clone());
        }
        self.pending.push((pack.tmp, id, pack.entries));
        // Bounded: by 64 packs (1 GiB) back the first ones are long written
        // back, so making them durable now costs little and keeps `tmp/`
        // and the list short on huge volumes.
        if self.pending.len() >= 64 {
            self.publish()?;
        }
        Ok(())
    }

    /// Makes every pack durable and visible: seal the open one, fsync each,
    /// rename each into `data/<shard>/<id>`, fsync those directories. Only
    /// after this may an index file name them.
    pub fn finish(&mut self) -> Result<(), BackupError> {
        self.seal()?;
        self.publish()
    }

    /// Waits for the closed packs' fsyncs, then renames them into place.
    fn publish(&mut self) -> Result<(), BackupError> {
        if let Some(s) = self.syncer.take() {
            s.finish()?;
        }
        let mut dirs = std::collections::BTreeSet::new();
        for (tmp, id, entries) in std::mem::take(&mut self.pending) {
            let dir = self.root.join("data").join(id.shard());
            // Made at init; made again here for repositories copied by tools
            // that drop empty directories (git, some sync tools).
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
            let target = dir.join(id.to_hex());
            fs::rename(&tmp, &target).map_err(io_err("rename", &target))?;
            dirs.insert(dir);
            self.sealed.push((id, entries));
        }
        for dir in dirs {
            fsync_dir(&dir).map_err(|source| BackupError::Write { path: dir, source })?;
        }
        Ok(())
    }

    /// Removes the packs not yet finished (on failure).
    pub fn abandon(&mut self) {
        if let Some(s) = self.syncer.take() {
            let _ = s.finish();
        }
        if let Some(pack) = self.current.take() {
            drop(pack.out);
            let _ = fs::remove_file(&pack.tmp);
        }
        for (tmp, ..) in self.pending.drain(..) {
            let _ = fs::remove_file(&tmp);
        }
    }
}

/// Shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    /// Backups, restores, verifies: any number at once.
    Shared,
    /// Prune: alone.
    Exclusive,
}

/// The content of a session file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    /// Shared or exclusive.
    pub kind: SessionKind,
    /// Host name.
    pub host: String,
    /// Process id on that host.
    pub pid: u32,
    /// What it runs.
    pub command: String,
    /// Since when.
    pub started_at: DateTime<Utc>,
}

impl SessionInfo {
    /// `prune by pid 12 on host a since …`.
    pub fn describe(&self) -> String {
        format!(
            "{} by pid {} on host {} since {}",
            self.command,
            self.pid,
            self.host,
            self.started_at.format("%Y-%m-%dT%H:%M:%SZ")
        )
    }
}

/// A live session: its file exists (and is refreshed by a thread) until
/// dropped.
#[derive(Debug)]
pub struct Session {
    path: PathBuf,
    stop: Option<mpsc::Sender<()>>,
    refresher: Option<thread::JoinHandle<()>>,
}

/// This machine's host name.
pub fn hostname() -> String {
    nix::unistd::gethostname().map_or_else(
        |_| "unknown".to_owned(),
        |h| h.to_string_lossy().into_owned(),
    )
}

impl Session {
    fn open(dir: &Path, kind: SessionKind, command: &str) -> Result<Self, BackupError> {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let info = SessionInfo {
            kind,
            host: hostname(),
            pid: std::process::id(),
            command: command.to_owned(),
            started_at: Utc::now(),
        };
        let path = dir.join(format!("{}.json", Uuid::new_v4()));
        let bytes = serde_json::to_vec(&info).map_err(|source| BackupError::Json {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &bytes).map_err(|source| BackupError::Write {
            path: path.clone(),
            source,
        })?;
        // Write ours first, then look: of two racing sessions of
        // conflicting kinds at least one sees the other and backs off.
        let conflict = live_sessions(dir)?.into_iter().find(|(p, other)| {
            *p != path && (kind == SessionKind::Exclusive || other.kind == SessionKind::Exclusive)
        });
        if let Some((_, holder)) = conflict {
            let _ = fs::remove_file(&path);
            return Err(BackupError::Busy {
                holder: holder.describe(),
            });
        }
        let (stop, rx) = mpsc::channel::<()>();
        let refresh_path = path.clone();
        let refresher = thread::Builder::new()
            .name("backup-session".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(REFRESH_EVERY) {
                    if let Ok(f) = File::options().append(true).open(&refresh_path) {
                        let _ = f.set_modified(SystemTime::now());
                    }
                }
            })
            .ok();
        Ok(Self {
            path,
            stop: Some(stop),
            refresher,
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        let _ = fs::remove_file(&self.path);
    }
}

/// Live sessions in `dir`; stale files (a dead pid on this host, or not
/// refreshed for [`STALE_AFTER`]) are removed on the way.
fn live_sessions(dir: &Path) -> Result<Vec<(PathBuf, SessionInfo)>, BackupError> {
    let me = hostname();
    let mut out = Vec::new();
    for path in read_dir_sorted(dir)? {
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Ok(bytes) = fs::read(&path) else { continue };
        let Ok(info) = serde_json::from_slice::<SessionInfo>(&bytes) else {
            continue;
        };
        let age = fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default();
        let dead_here = info.host == me && info.pid != std::process::id() && !pid_alive(info.pid);
        if dead_here || age > STALE_AFTER {
            tracing::info!(path = %path.display(), holder = %info.describe(), "removing a stale session file");
            let _ = fs::remove_file(&path);
            continue;
        }
        out.push((path, info));
    }
    Ok(out)
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// The set of chunk ids a set of manifests references.
pub fn referenced(tables: &[format::Table]) -> HashSet<Digest> {
    tables
        .iter()
        .flat_map(|t| t.iter().map(|(_, id)| *id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_shared_together_exclusive_alone() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_init(dir.path(), Codec::Zstd).unwrap();
        let a = repo.session(SessionKind::Shared, "backup run").unwrap();
        let b = repo.session(SessionKind::Shared, "backup restore").unwrap();
        let err = repo
            .session(SessionKind::Exclusive, "backup prune")
            .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("repository is busy: backup "), "{text}");
        assert!(
            text.contains(&format!("by pid {}", std::process::id())),
            "{text}"
        );
        drop((a, b));
        let p = repo
            .session(SessionKind::Exclusive, "backup prune")
            .unwrap();
        let err = repo.session(SessionKind::Shared, "backup run").unwrap_err();
        assert!(err.to_string().contains("backup prune by pid"), "{err}");
        assert!(err.is_retryable());
        drop(p);
        assert_eq!(fs::read_dir(dir.path().join("locks")).unwrap().count(), 0);
    }

    #[test]
    fn a_dead_session_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_init(dir.path(), Codec::Zstd).unwrap();
        // A session file of this host whose process is gone (pid 2^22 + 1
        // is above Linux's pid_max limit, so it never exists).
        let dead = SessionInfo {
            kind: SessionKind::Exclusive,
            host: hostname(),
            pid: (1 << 22) + 1,
            command: "backup prune".into(),
            started_at: Utc::now(),
        };
        fs::write(
            dir.path().join("locks/dead.json"),
            serde_json::to_vec(&dead).unwrap(),
        )
        .unwrap();
        let s = repo.session(SessionKind::Shared, "backup run").unwrap();
        assert!(!dir.path().join("locks/dead.json").exists());
        drop(s);
    }

    #[test]
    fn config_is_created_once_and_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let a = Repository::open_or_init(dir.path(), Codec::Zlib).unwrap();
        let b = Repository::open_or_init(dir.path(), Codec::Zstd).unwrap();
        assert_eq!(a.config(), b.config());
        assert_eq!(b.config().compression, Codec::Zlib);
        let other = tempfile::tempdir().unwrap();
        let err = Repository::open(other.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is not a backup repository (no config)",
                other.path().display()
            )
        );
    }
}
