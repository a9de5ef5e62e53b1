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
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::BackupError;
use super::crypto::{self, Crypto, DataKey, KeyFile, Place, RepoKey};
use super::format::{
    self, BlobEntry, CHUNK_ID_KEYED, CHUNK_SIZE, Codec, Digest, HASH, Manifest, PACK_SIZE,
    REPO_FORMAT, REPO_VERSION, REPO_VERSION_ENCRYPTED, RepoConfig,
};
use super::store::{Created, DirStore, Put, Store};
use crate::state::atomic::fsync_dir;

/// A session file not refreshed for this long belongs to a dead process.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// How often a live session refreshes its file.
const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BackupError {
    let path = path.to_owned();
    move |source| BackupError::Io { op, path, source }
}

/// An open repository: its config and the store it lives in.
#[derive(Debug, Clone)]
pub struct Repository {
    store: Arc<dyn Store>,
    config: RepoConfig,
    append_only: bool,
    crypto: Option<Arc<Crypto>>,
}

/// Key of the config object.
const CONFIG: &str = "config";
/// Writes `keys/<uuid>.json`: `master` of repository `id` wrapped under `key`.
fn write_key_file(
    store: &dyn Store,
    id: Uuid,
    master: &DataKey,
    key: &RepoKey,
) -> Result<(), BackupError> {
    let kf = crypto::wrap(master, &key.secret, id).ok_or_else(|| BackupError::Secret {
        from: key.from.clone(),
        reason: "cannot derive a key from it".into(),
    })?;
    let k = format!("keys/{}.json", Uuid::new_v4());
    let bytes = serde_json::to_vec_pretty(&kf).map_err(|source| BackupError::Json {
        path: PathBuf::from(&k),
        source,
    })?;
    store.put(&k, &bytes, Put::Create)?;
    Ok(())
}

/// Writes an object named by its content (a pack, an index file). One
/// already there under that name must be these bytes; a store that kept a
/// write cut short (an uploader killed mid-request) or lists a key it does
/// not hold has fewer, and the object is written whole again. Never trusts
/// a name alone: a backup must not point at data that is not there.
fn put_content_named(store: &dyn Store, key: &str, bytes: &[u8]) -> Result<(), BackupError> {
    if store.put(key, bytes, Put::Create)? == Created::AlreadyThere {
        let want = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        let have = store.size(key)?;
        if have != Some(want) {
            tracing::warn!(
                key,
                have = ?have,
                want,
                "an object named by its content is not whole; writing it again"
            );
            store.put(key, bytes, Put::Replace)?;
        }
    }
    Ok(())
}

fn pack_key(id: &Digest) -> String {
    format!("data/{}/{}", id.shard(), id.to_hex())
}

fn index_key(id: &Digest) -> String {
    format!("index/{}/{}", id.shard(), id.to_hex())
}

fn manifest_key(volume: Uuid, id: Uuid) -> String {
    format!("backups/{}/{}.json", volume.hyphenated(), id.hyphenated())
}

impl Repository {
    /// Opens the unencrypted repository directory `root`.
    pub fn open(root: &Path) -> Result<Self, BackupError> {
        Self::open_keyed(root, None)
    }

    /// Opens the repository directory `root` with `key` (needed when it is
    /// encrypted).
    pub fn open_keyed(root: &Path, key: Option<&RepoKey>) -> Result<Self, BackupError> {
        if !root.join(CONFIG).is_file() {
            return Err(BackupError::NotARepository {
                location: root.display().to_string(),
            });
        }
        // Absolute, so the catalogue's path works from any directory.
        let root = fs::canonicalize(root).map_err(io_err("resolve", root))?;
        Self::open_store(Arc::new(DirStore::new(&root)), key)
    }

    /// Opens the repository in `store`; an encrypted one needs `key`, and
    /// a key that does not open it is refused here, before anything is
    /// read or written.
    pub fn open_store(store: Arc<dyn Store>, key: Option<&RepoKey>) -> Result<Self, BackupError> {
        let location = store.location();
        let Some(bytes) = store.get(CONFIG)? else {
            return Err(BackupError::NotARepository { location });
        };
        let config = format::decode_config(&location, &bytes)?;
        let crypto = match (&config.encryption, key) {
            (None, None) => None,
            (None, Some(_)) => return Err(BackupError::NotEncrypted { location }),
            (Some(_), None) => return Err(BackupError::KeyNeeded { location }),
            (Some(_), Some(k)) => Some(Arc::new(Crypto::new(&Self::find_key(
                store.as_ref(),
                config.id,
                k,
            )?))),
        };
        Ok(Self {
            store,
            config,
            append_only: false,
            crypto,
        })
    }

    /// The data key of repository `id` that `key` unwraps, from `keys/`.
    fn find_key(store: &dyn Store, id: Uuid, key: &RepoKey) -> Result<DataKey, BackupError> {
        Ok(Self::key_files(store, id, key)?
            .into_iter()
            .next()
            .ok_or_else(|| BackupError::WrongKey {
                location: store.location(),
                from: key.from.clone(),
            })?
            .1)
    }

    /// The key files `key` opens, with the data key.
    fn key_files(
        store: &dyn Store,
        id: Uuid,
        key: &RepoKey,
    ) -> Result<Vec<(String, DataKey)>, BackupError> {
        let mut out = Vec::new();
        for l in store.list("keys/")? {
            let Some(bytes) = store.get(&l.key)? else {
                continue;
            };
            let Ok(kf) = serde_json::from_slice::<KeyFile>(&bytes) else {
                tracing::warn!(key = %l.key, "unreadable key file ignored");
                continue;
            };
            if let Some(master) = crypto::unwrap(&kf, &key.secret, id) {
                out.push((l.key, master));
            }
        }
        Ok(out)
    }

    /// Adds a key file wrapping this repository's data key under `new`,
    /// then removes the key files `old` opened (unless append-only): the
    /// data is not touched, and every backup stays readable with `new`.
    /// Returns the key files removed.
    pub fn rotate_key(&self, old: &RepoKey, new: &RepoKey) -> Result<usize, BackupError> {
        if self.crypto.is_none() {
            return Err(BackupError::NotEncrypted {
                location: self.location(),
            });
        }
        let found = Self::key_files(self.store.as_ref(), self.config.id, old)?;
        let Some((_, master)) = found.first() else {
            return Err(BackupError::WrongKey {
                location: self.location(),
                from: old.from.clone(),
            });
        };
        self.write_key_file(master, new)?;
        // The new one must open before the old ones go.
        Self::find_key(self.store.as_ref(), self.config.id, new)?;
        if self.append_only {
            return Ok(0);
        }
        let mut removed = 0;
        for (k, _) in &found {
            self.store.delete(k)?;
            removed += 1;
        }
        Ok(removed)
    }

    fn write_key_file(&self, master: &DataKey, key: &RepoKey) -> Result<(), BackupError> {
        write_key_file(self.store.as_ref(), self.config.id, master, key)
    }

    /// Opens the unencrypted repository directory `root`, creating it (with
    /// `compression` as its default codec) when there is none.
    pub fn open_or_init(root: &Path, compression: Codec) -> Result<Self, BackupError> {
        Self::open_or_init_keyed(root, compression, None)
    }

    /// [`Self::open_or_init`], encrypted with `key` when created with one.
    pub fn open_or_init_keyed(
        root: &Path,
        compression: Codec,
        key: Option<&RepoKey>,
    ) -> Result<Self, BackupError> {
        fs::create_dir_all(root).map_err(io_err("create", root))?;
        let root = fs::canonicalize(root).map_err(io_err("resolve", root))?;
        Self::open_or_init_store(Arc::new(DirStore::new(&root)), compression, key)
    }

    /// Opens the repository in `store`, creating it when there is none
    /// (encrypted when `key` is given: its data key is wrapped under `key`
    /// in `keys/` before the config is written). Two hosts creating the
    /// same repository at once end up with one config: it is created with
    /// [`Put::Create`], which leaves the first one.
    pub fn open_or_init_store(
        store: Arc<dyn Store>,
        compression: Codec,
        key: Option<&RepoKey>,
    ) -> Result<Self, BackupError> {
        match Self::open_store(Arc::clone(&store), key) {
            Err(BackupError::NotARepository { .. }) => {}
            other => return other,
        }
        if let Some(root) = store.dir() {
            // The directory tree up front (object stores have no directories).
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
        }
        let config = RepoConfig {
            format: REPO_FORMAT.to_owned(),
            version: if key.is_some() {
                REPO_VERSION_ENCRYPTED
            } else {
                REPO_VERSION
            },
            id: Uuid::new_v4(),
            chunk_size: CHUNK_SIZE,
            hash: HASH.to_owned(),
            compression,
            pack_size: PACK_SIZE,
            created_at: Utc::now(),
            encryption: key.map(|_| format::Encryption {
                aead: crypto::AEAD.to_owned(),
                chunk_id: CHUNK_ID_KEYED.to_owned(),
            }),
        };
        let master = key.map(|k| {
            let m = Crypto::generate_key();
            write_key_file(store.as_ref(), config.id, &m, k).map(|()| m)
        });
        let master = master.transpose()?;
        let mut bytes = serde_json::to_vec_pretty(&config).map_err(|source| BackupError::Json {
            path: PathBuf::from(format!("{}/{CONFIG}", store.location())),
            source,
        })?;
        bytes.push(b'\n');
        match store.put(CONFIG, &bytes, Put::Create)? {
            Created::New => {
                tracing::info!(repo = %store.location(), id = %config.id, encrypted = key.is_some(), "repository created");
                Ok(Self {
                    store,
                    config,
                    append_only: false,
                    crypto: master.map(|m| Arc::new(Crypto::new(&m))),
                })
            }
            Created::AlreadyThere => Self::open_store(store, key),
        }
    }

    /// Never delete or replace anything in this repository (its target is
    /// `appendOnly`): prune refuses to run, sessions leave their files.
    #[must_use]
    pub fn append_only(mut self, yes: bool) -> Self {
        self.append_only = yes;
        self
    }

    /// Whether this handle may delete or replace.
    pub fn is_append_only(&self) -> bool {
        self.append_only
    }

    /// Where the repository is (a directory, or `s3://bucket/prefix …`).
    pub fn location(&self) -> String {
        self.store.location()
    }

    /// The repository directory, when it is one.
    pub fn dir(&self) -> Option<&Path> {
        self.store.dir()
    }

    /// The store under it.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Its config.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// Its keys, when it is encrypted.
    pub fn crypto(&self) -> Option<&Crypto> {
        self.crypto.as_deref()
    }

    /// The id of a chunk: BLAKE3 of its bytes, keyed when encrypted.
    pub fn chunk_id(&self, bytes: &[u8]) -> Digest {
        match &self.crypto {
            Some(c) => c.chunk_id(bytes),
            None => Digest::of(bytes),
        }
    }

    /// The bytes of a (compressed) chunk as stored in a pack.
    pub fn seal_blob(&self, id: &Digest, stored: Vec<u8>) -> Vec<u8> {
        match &self.crypto {
            Some(c) => c.seal(Place::Blob(id), &stored),
            None => stored,
        }
    }

    /// A chunk's bytes from a pack blob: opened, decompressed and checked
    /// against its id; `None` when anything is wrong.
    pub fn decode_blob(
        &self,
        codecs: &mut format::Codecs,
        id: &Digest,
        codec: Codec,
        raw_len: u32,
        stored: &[u8],
    ) -> Option<Vec<u8>> {
        let opened;
        let data = match &self.crypto {
            Some(c) => {
                opened = c.open(Place::Blob(id), stored)?;
                &opened[..]
            }
            None => stored,
        };
        let raw = codecs.decompress(codec, data, raw_len as usize)?;
        (self.chunk_id(&raw) == *id).then_some(raw)
    }

    /// `data/<shard>/<id>`, the key of a pack.
    pub fn pack_key(id: &Digest) -> String {
        pack_key(id)
    }

    /// Starts a pack writer: into `tmp/` and renamed into `data/` on a
    /// directory, uploaded from memory on an object store.
    pub fn pack_writer(&self) -> PackWriter {
        PackWriter::new(self)
    }

    /// Loads every index file into memory. A damaged index file (its bytes do
    /// not hash to its name) is skipped with a warning: the packs it
    /// described are found again by [`Repository::scan_packs`].
    pub fn load_index(&self) -> Result<Index, BackupError> {
        let mut index = Index::default();
        let mut found = Vec::new();
        for (id, key) in self.list_sharded("index/")? {
            let Some(bytes) = self.store.get(&key)? else {
                continue;
            };
            if Digest::of(&bytes) != id {
                tracing::warn!(key, "index file does not match its name; ignored");
                continue;
            }
            let bytes = match &self.crypto {
                Some(c) => {
                    if let Some(b) = c.open(Place::Index, &bytes) {
                        b
                    } else {
                        tracing::warn!(
                            key,
                            "index file does not open with the repository's key; ignored"
                        );
                        continue;
                    }
                }
                None => bytes,
            };
            let Some(packs) = format::decode_index(&bytes) else {
                tracing::warn!(key, "unreadable index file; ignored");
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

    fn list_sharded(&self, top: &str) -> Result<Vec<(Digest, String)>, BackupError> {
        Ok(self
            .store
            .list(top)?
            .into_iter()
            .filter_map(|l| {
                let id = l.key.rsplit('/').next()?.parse::<Digest>().ok()?;
                Some((id, l.key))
            })
            .collect())
    }

    /// Every pack present, by id, with its size.
    pub fn scan_packs(&self) -> Result<Vec<(Digest, u64)>, BackupError> {
        Ok(self
            .store
            .list("data/")?
            .into_iter()
            .filter_map(|l| Some((l.key.rsplit('/').next()?.parse::<Digest>().ok()?, l.size)))
            .collect())
    }

    /// Every pack present, sorted by id, with its size and when it was
    /// written.
    pub fn pack_listing(&self) -> Result<Vec<(Digest, u64, SystemTime)>, BackupError> {
        let mut out: Vec<(Digest, u64, SystemTime)> = self
            .store
            .list("data/")?
            .into_iter()
            .filter_map(|l| {
                Some((
                    l.key.rsplit('/').next()?.parse::<Digest>().ok()?,
                    l.size,
                    l.modified,
                ))
            })
            .collect();
        out.sort_unstable_by_key(|p| p.0);
        Ok(out)
    }

    /// Every index file: its id, key and size.
    pub fn index_files(&self) -> Result<Vec<(Digest, String, u64)>, BackupError> {
        Ok(self
            .store
            .list("index/")?
            .into_iter()
            .filter_map(|l| {
                Some((
                    l.key.rsplit('/').next()?.parse::<Digest>().ok()?,
                    l.key,
                    l.size,
                ))
            })
            .collect())
    }

    /// Reads index file `id` (`key`, `size` bytes from
    /// [`Self::index_files`]) in bounded memory, giving each pack it
    /// describes to `f`. Returns `false`, having given nothing, when the
    /// file is damaged (does not hash to its name, does not open with the
    /// key, or is not an index file). A sealed file is read whole (a seal
    /// opens only whole; writers keep them below
    /// [`format::INDEX_FILE_ENTRIES`] entries); a plain one larger than
    /// 16 MiB (an index consolidated by an older prune) is read twice in
    /// 8 MiB ranges: checked, then given.
    pub fn read_index_file(
        &self,
        id: &Digest,
        key: &str,
        size: u64,
        mut f: impl FnMut(Digest, Vec<BlobEntry>),
    ) -> Result<bool, BackupError> {
        const WHOLE: u64 = 16 << 20;
        if self.crypto.is_some() || size <= WHOLE {
            let Some(bytes) = self.store.get(key)? else {
                return Ok(false);
            };
            if Digest::of(&bytes) != *id {
                tracing::warn!(key, "index file does not match its name; ignored");
                return Ok(false);
            }
            let bytes = match &self.crypto {
                Some(c) => {
                    let Some(b) = c.open(Place::Index, &bytes) else {
                        tracing::warn!(
                            key,
                            "index file does not open with the repository's key; ignored"
                        );
                        return Ok(false);
                    };
                    b
                }
                None => bytes,
            };
            let Some(packs) = format::decode_index(&bytes) else {
                tracing::warn!(key, "unreadable index file; ignored");
                return Ok(false);
            };
            drop(bytes);
            for (p, e) in packs {
                f(p, e);
            }
            return Ok(true);
        }
        let location = || PathBuf::from(format!("{}: {key}", self.location()));
        let mut hasher = blake3::Hasher::new();
        let valid = {
            let mut tee = Ranged::new(self.store.as_ref(), key, size, Some(&mut hasher));
            format::read_index(&mut tee, |_, _| {}).map_err(|source| BackupError::Io {
                op: "read",
                path: location(),
                source,
            })?
        };
        if !valid || Digest(*hasher.finalize().as_bytes()) != *id {
            tracing::warn!(
                key,
                "index file does not match its name or is unreadable; ignored"
            );
            return Ok(false);
        }
        let mut r = Ranged::new(self.store.as_ref(), key, size, None);
        format::read_index(&mut r, f).map_err(|source| BackupError::Io {
            op: "read",
            path: location(),
            source,
        })
    }

    /// Reads the trailer of pack `id` of `len` bytes (from [`Self::scan_packs`]).
    pub fn read_trailer(&self, id: &Digest, len: u64) -> Result<Vec<BlobEntry>, BackupError> {
        let key = pack_key(id);
        let bad = || BackupError::BadPack { pack: key.clone() };
        if len < 12 {
            return Err(bad());
        }
        let footer: [u8; 12] = self
            .store
            .get_range(&key, len - 12..len)?
            .try_into()
            .map_err(|_| bad())?;
        if let Some(c) = &self.crypto {
            let slen = format::sealed_trailer_len(&footer, len).ok_or_else(bad)?;
            let sealed = self.store.get_range(&key, len - 12 - slen..len - 12)?;
            let entries = c
                .open(Place::Trailer, &sealed)
                .and_then(|b| format::decode_entries(&b))
                .ok_or_else(bad)?;
            let blobs: u64 = entries.iter().map(|e| u64::from(e.stored_len)).sum();
            return (blobs + slen + 12 == len)
                .then_some(entries)
                .ok_or_else(bad);
        }
        let tlen = format::pack_trailer_len(&footer, len).ok_or_else(bad)?;
        let trailer = self.store.get_range(&key, len - tlen..len)?;
        format::decode_pack_trailer(&trailer, len).ok_or_else(bad)
    }

    /// Opens pack `id` to read blobs within `span` (byte offsets): the file
    /// itself on a directory, the span fetched in one request otherwise.
    pub fn open_pack(&self, id: &Digest, span: Range<u64>) -> Result<PackReader, BackupError> {
        let key = pack_key(id);
        if let Some(root) = self.store.dir() {
            let path = root.join(&key);
            let file = File::open(&path).map_err(io_err("open", &path))?;
            return Ok(PackReader::File(file, path));
        }
        let bytes = self.store.get_range(&key, span.clone())?;
        Ok(PackReader::Span {
            key,
            base: span.start,
            bytes,
        })
    }

    /// Writes index files describing `packs`, each of at most
    /// [`format::INDEX_FILE_ENTRIES`] entries (one pack is never split);
    /// returns their ids.
    pub fn write_index(
        &self,
        packs: &[(Digest, Vec<BlobEntry>)],
    ) -> Result<Vec<Digest>, BackupError> {
        let mut ids = Vec::new();
        let mut start = 0;
        let mut entries = 0;
        for (i, (_, e)) in packs.iter().enumerate() {
            if entries > 0 && entries + e.len() > format::INDEX_FILE_ENTRIES {
                ids.push(self.write_index_file(&packs[start..i])?);
                start = i;
                entries = 0;
            }
            entries += e.len();
        }
        if start < packs.len() {
            ids.push(self.write_index_file(&packs[start..])?);
        }
        Ok(ids)
    }

    /// Writes one index file describing `packs`; returns its id.
    fn write_index_file(&self, packs: &[(Digest, Vec<BlobEntry>)]) -> Result<Digest, BackupError> {
        let bytes = format::encode_index(packs);
        let bytes = match &self.crypto {
            Some(c) => c.seal(Place::Index, &bytes),
            None => bytes,
        };
        let id = Digest::of(&bytes);
        // Named by its content: an existing one is this one.
        put_content_named(self.store.as_ref(), &index_key(&id), &bytes)?;
        Ok(id)
    }

    /// Removes an index file.
    pub fn remove_index(&self, id: &Digest) -> Result<(), BackupError> {
        self.deny_if_append_only("remove an index file")?;
        self.store.delete(&index_key(id))
    }

    /// Removes a pack.
    pub fn remove_pack(&self, id: &Digest) -> Result<(), BackupError> {
        self.deny_if_append_only("remove a pack")?;
        self.store.delete(&pack_key(id))
    }

    fn deny_if_append_only(&self, what: &str) -> Result<(), BackupError> {
        if self.append_only {
            return Err(BackupError::AppendOnly {
                location: self.location(),
                what: what.to_owned(),
            });
        }
        Ok(())
    }

    /// Writes a manifest (atomically, never over another): the commit
    /// point of a backup.
    pub fn write_manifest(&self, m: &Manifest) -> Result<(), BackupError> {
        let key = manifest_key(m.volume.uuid, m.id);
        let mut bytes = serde_json::to_vec_pretty(m).map_err(|source| BackupError::Json {
            path: PathBuf::from(&key),
            source,
        })?;
        bytes.push(b'\n');
        let bytes = match &self.crypto {
            Some(c) => c.seal(Place::Manifest(m.id), &bytes),
            None => bytes,
        };
        match self.store.put(&key, &bytes, Put::Create)? {
            Created::New => Ok(()),
            Created::AlreadyThere => match self.read_manifest(&key)? {
                Some(b) if b == *m => Ok(()),
                _ => Err(BackupError::BadManifest {
                    id: m.id,
                    reason: "the repository holds a different manifest under this id".into(),
                }),
            },
        }
    }

    /// Removes a manifest (the backup is gone; its chunks stay until prune).
    pub fn remove_manifest(&self, m: &Manifest) -> Result<(), BackupError> {
        self.deny_if_append_only("remove a manifest")?;
        self.store.delete(&manifest_key(m.volume.uuid, m.id))
    }

    /// Reads one manifest file of a repository directory.
    pub fn read_manifest_file(path: &Path) -> Result<Manifest, BackupError> {
        let bytes = fs::read(path).map_err(io_err("read", path))?;
        parse_manifest(&bytes, &path.display().to_string())
    }

    fn read_manifest(&self, key: &str) -> Result<Option<Manifest>, BackupError> {
        let Some(bytes) = self.store.get(key)? else {
            return Ok(None);
        };
        let at = format!("{}: {key}", self.location());
        let bytes = match &self.crypto {
            Some(c) => {
                // The backup id is the key's name: the seal is bound to it.
                let id = key
                    .rsplit('/')
                    .next()
                    .and_then(|n| n.strip_suffix(".json"))
                    .and_then(|n| n.parse::<Uuid>().ok());
                match id.and_then(|id| c.open(Place::Manifest(id), &bytes)) {
                    Some(b) => b,
                    None => {
                        return Err(BackupError::Sealed {
                            what: "manifest".into(),
                            at,
                        });
                    }
                }
            }
            None => bytes,
        };
        parse_manifest(&bytes, &at).map(Some)
    }

    /// The manifest of backup `id`, if the repository holds it.
    pub fn find_manifest(&self, id: Uuid) -> Result<Option<Manifest>, BackupError> {
        let name = format!("/{}.json", id.hyphenated());
        for l in self.store.list("backups/")? {
            if l.key.ends_with(&name) {
                return self.read_manifest(&l.key);
            }
        }
        Ok(None)
    }

    /// Every manifest, oldest first; unreadable ones are returned as errors
    /// beside the good ones so one bad file hides nothing.
    pub fn manifests(&self) -> Result<(Vec<Manifest>, Vec<BackupError>), BackupError> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for l in self.store.list("backups/")? {
            if !is_manifest_key(&l.key) {
                continue;
            }
            match self.read_manifest(&l.key) {
                Ok(Some(m)) => good.push(m),
                Ok(None) => {}
                Err(e) => bad.push(e),
            }
        }
        good.sort_by_key(|m| (m.started_at, m.id));
        Ok((good, bad))
    }

    /// Every manifest without its chunk table (`chunks` empty: what
    /// listing, retention and the catalogue need), oldest first; read one
    /// at a time, so memory holds one table at most whatever the number of
    /// backups. Unreadable ones are returned as errors beside the others.
    pub fn manifest_heads(&self) -> Result<(Vec<Manifest>, Vec<BackupError>), BackupError> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        self.each_manifest(|m| match m {
            Ok(mut m) => {
                m.chunks = String::new();
                good.push(m);
                Ok(())
            }
            Err(e) => {
                bad.push(e);
                Ok(())
            }
        })?;
        good.sort_by_key(|m| (m.started_at, m.id));
        Ok((good, bad))
    }

    /// Reads every manifest (in key order), one at a time, and hands it to
    /// `f`, which may stop the walk with an error.
    pub fn each_manifest(
        &self,
        mut f: impl FnMut(Result<Manifest, BackupError>) -> Result<(), BackupError>,
    ) -> Result<(), BackupError> {
        for l in self.store.list("backups/")? {
            if !is_manifest_key(&l.key) {
                continue;
            }
            match self.read_manifest(&l.key) {
                Ok(Some(m)) => f(Ok(m))?,
                Ok(None) => {}
                Err(e) => f(Err(e))?,
            }
        }
        Ok(())
    }

    /// The backup ids of every manifest key, without reading them.
    pub fn manifest_keys(&self) -> Result<Vec<(Uuid, String)>, BackupError> {
        Ok(self
            .store
            .list("backups/")?
            .into_iter()
            .filter(|l| is_manifest_key(&l.key))
            .filter_map(|l| {
                let id = l
                    .key
                    .rsplit('/')
                    .next()?
                    .strip_suffix(".json")?
                    .parse::<Uuid>()
                    .ok()?;
                Some((id, l.key))
            })
            .collect())
    }

    /// The manifest under `key` (from [`Self::manifest_keys`]).
    pub fn manifest_at(&self, key: &str) -> Result<Option<Manifest>, BackupError> {
        self.read_manifest(key)
    }

    /// The readable manifests of one volume, oldest first (an unreadable
    /// one is logged and skipped: it must not stop the next backup).
    pub fn volume_manifests(&self, volume: Uuid) -> Result<Vec<Manifest>, BackupError> {
        let mut out = Vec::new();
        for l in self
            .store
            .list(&format!("backups/{}/", volume.hyphenated()))?
        {
            if !is_manifest_key(&l.key) {
                continue;
            }
            match self.read_manifest(&l.key) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(key = %l.key, error = %e, "unreadable manifest skipped");
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
        Session::open(Arc::clone(&self.store), kind, command, self.append_only)
    }

    /// Removes temp files older than `age` from a directory's `tmp/`
    /// (crashed writers; an object store has none).
    pub fn clean_tmp(&self, age: Duration) -> Result<u64, BackupError> {
        let Some(root) = self.store.dir() else {
            return Ok(0);
        };
        if self.append_only {
            return Ok(0);
        }
        let mut removed = 0;
        for path in read_dir_sorted(&root.join("tmp"))? {
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

fn parse_manifest(bytes: &[u8], at: &str) -> Result<Manifest, BackupError> {
    format::decode_manifest(Path::new(at), bytes)
}

/// An object read front to back in 8 MiB ranges, optionally hashed as it
/// goes (large index files, in bounded memory).
struct Ranged<'a> {
    store: &'a dyn Store,
    key: &'a str,
    size: u64,
    /// Offset of the next range to fetch.
    pos: u64,
    buf: Vec<u8>,
    /// Read position in `buf`.
    at: usize,
    hasher: Option<&'a mut blake3::Hasher>,
}

impl<'a> Ranged<'a> {
    fn new(
        store: &'a dyn Store,
        key: &'a str,
        size: u64,
        hasher: Option<&'a mut blake3::Hasher>,
    ) -> Self {
        Self {
            store,
            key,
            size,
            pos: 0,
            buf: Vec::new(),
            at: 0,
            hasher,
        }
    }
}

impl io::Read for Ranged<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        const PIECE: u64 = 8 << 20;
        if self.at == self.buf.len() {
            if self.pos >= self.size {
                return Ok(0);
            }
            let end = (self.pos + PIECE).min(self.size);
            self.buf = self
                .store
                .get_range(self.key, self.pos..end)
                .map_err(io::Error::other)?;
            if let Some(h) = self.hasher.as_mut() {
                h.update(&self.buf);
            }
            self.pos = end;
            self.at = 0;
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A pack opened for reading blobs.
#[derive(Debug)]
pub enum PackReader {
    /// A pack file of a repository directory.
    File(File, PathBuf),
    /// Bytes `base..` of a remote pack.
    Span {
        /// The pack's key.
        key: String,
        /// Offset of `bytes[0]` in the pack.
        base: u64,
        /// The bytes fetched.
        bytes: Vec<u8>,
    },
}

impl PackReader {
    /// Fills `buf` from `offset`; false when the pack is too short there.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> bool {
        match self {
            PackReader::File(f, path) => match f.read_exact_at(buf, offset) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(pack = %path.display(), error = %e, "short pack");
                    false
                }
            },
            PackReader::Span { key, base, bytes } => {
                let start = offset
                    .checked_sub(*base)
                    .and_then(|s| usize::try_from(s).ok());
                if let Some(src) = start.and_then(|s| bytes.get(s..s + buf.len())) {
                    buf.copy_from_slice(src);
                    true
                } else {
                    tracing::warn!(pack = %key, "short pack");
                    false
                }
            }
        }
    }
}

/// `backups/<volume>/<id>.json`, not a hidden temp file of an atomic write.
fn is_manifest_key(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or_default();
    Path::new(name)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        && !name.starts_with('.')
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
///
/// On a repository directory a pack is written to `tmp/`, fsynced by a
/// background thread and renamed into `data/` (no pack is held in memory).
/// On an object store, or an append-only directory (where nothing may be
/// renamed away), a pack is assembled in memory and handed to an uploader
/// thread through a channel of [`UPLOADS_QUEUED`]: at most that many sealed
/// packs wait, one uploads and one fills, so memory is bounded (some 64 MiB)
/// whatever the volume. Each upload is a conditional create of the pack's
/// content-named key, retried with backoff by the store.
#[derive(Debug)]
pub struct PackWriter {
    crypto: Option<Arc<Crypto>>,
    root: Option<PathBuf>,
    store: Arc<dyn Store>,
    current: Option<OpenPack>,
    /// Packs finished (durable, in `data/`), with their entries.
    pub sealed: Vec<(Digest, Vec<BlobEntry>)>,
    pending: Vec<(PathBuf, Digest, Vec<BlobEntry>)>,
    syncer: Option<Syncer>,
    uploader: Option<Uploader>,
}

/// Sealed packs waiting for the uploader, at most.
pub const UPLOADS_QUEUED: usize = 2;

type Upload = (Digest, Vec<u8>, Vec<BlobEntry>);
type Packs = Vec<(Digest, Vec<BlobEntry>)>;

/// A thread that uploads sealed packs in order.
#[derive(Debug)]
struct Uploader {
    tx: mpsc::SyncSender<Upload>,
    thread: thread::JoinHandle<Result<(), BackupError>>,
    /// Packs stored so far, not yet taken.
    done: Arc<std::sync::Mutex<Packs>>,
}

impl Uploader {
    fn start(store: Arc<dyn Store>) -> Result<Self, BackupError> {
        let (tx, rx) = mpsc::sync_channel::<Upload>(UPLOADS_QUEUED);
        let done = Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = Arc::clone(&done);
        let thread = thread::Builder::new()
            .name("pack-upload".into())
            .spawn(move || {
                for (id, bytes, entries) in rx {
                    put_content_named(store.as_ref(), &pack_key(&id), &bytes)?;
                    tracing::debug!(pack = %id, bytes = bytes.len(), "pack uploaded");
                    out.lock()
                        .map_err(|_| BackupError::Panicked("pack upload"))?
                        .push((id, entries));
                }
                Ok(())
            })
            .map_err(io_err("start a thread for", Path::new("pack upload")))?;
        Ok(Self { tx, thread, done })
    }

    /// The packs stored so far.
    fn take(&self) -> Packs {
        self.done
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default()
    }

    /// Waits for every upload; the packs stored and not taken before.
    fn finish(self) -> Result<Packs, BackupError> {
        let Self { tx, thread, done } = self;
        drop(tx);
        thread
            .join()
            .map_err(|_| BackupError::Panicked("pack upload"))??;
        Ok(done
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default())
    }
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
enum PackOut {
    File(PathBuf, BufWriter<File>),
    Memory(Vec<u8>),
}

#[derive(Debug)]
struct OpenPack {
    out: PackOut,
    hasher: blake3::Hasher,
    entries: Vec<BlobEntry>,
    len: u64,
}

impl OpenPack {
    fn write(&mut self, bytes: &[u8]) -> Result<(), BackupError> {
        match &mut self.out {
            PackOut::File(tmp, out) => out.write_all(bytes).map_err(io_err("write", tmp))?,
            PackOut::Memory(buf) => buf.extend_from_slice(bytes),
        }
        self.hasher.update(bytes);
        Ok(())
    }
}

impl PackWriter {
    fn new(repo: &Repository) -> Self {
        Self {
            crypto: repo.crypto.clone(),
            root: repo
                .store
                .dir()
                .filter(|_| !repo.append_only)
                .map(Path::to_path_buf),
            store: Arc::clone(&repo.store),
            current: None,
            sealed: Vec::new(),
            pending: Vec::new(),
            syncer: None,
            uploader: None,
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
            let out = if let Some(root) = &self.root {
                let tmp_dir = root.join("tmp");
                fs::create_dir_all(&tmp_dir).map_err(io_err("create", &tmp_dir))?;
                let tmp = tmp_dir.join(format!("pack-{}", Uuid::new_v4()));
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&tmp)
                    .map_err(io_err("create", &tmp))?;
                PackOut::File(tmp, BufWriter::with_capacity(1 << 20, file))
            } else {
                PackOut::Memory(Vec::with_capacity(
                    usize::try_from(PACK_SIZE).unwrap_or(0) + (1 << 20),
                ))
            };
            self.current = Some(OpenPack {
                out,
                hasher: blake3::Hasher::new(),
                entries: Vec::new(),
                len: 0,
            });
        }
        let Some(pack) = self.current.as_mut() else {
            return Ok(());
        };
        pack.write(stored)?;
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

    /// Closes the open pack, if any: its trailer is written, and it is
    /// handed on — to the fsync thread, waiting in `tmp/` for
    /// [`PackWriter::finish`] (no fsync on this thread: it would stall the
    /// pipeline once per 16 MiB; measured, the per-pack fsync made a 2 GiB
    /// backup write-bound in lock step), or to the uploader, which blocks
    /// here while [`UPLOADS_QUEUED`] packs wait.
    pub fn seal(&mut self) -> Result<(), BackupError> {
        let Some(mut pack) = self.current.take() else {
            return Ok(());
        };
        let trailer = match &self.crypto {
            Some(c) => format::encode_sealed_trailer(
                &c.seal(Place::Trailer, &format::encode_entries(&pack.entries)),
            ),
            None => format::encode_pack_trailer(&pack.entries),
        };
        pack.write(&trailer)?;
        let id = Digest(*pack.hasher.finalize().as_bytes());
        tracing::debug!(pack = %id, blobs = pack.entries.len(), bytes = pack.len, "pack closed");
        match pack.out {
            PackOut::File(tmp, out) => {
                let file = out.into_inner().map_err(|e| BackupError::Io {
                    op: "write",
                    path: tmp.clone(),
                    source: e.into_error(),
                })?;
                drop(file);
                if self.syncer.is_none() {
                    self.syncer = Some(Syncer::start()?);
                }
                if let Some(s) = &self.syncer {
                    // A closed channel means the thread failed; publish() reports it.
                    let _ = s.tx.send(tmp.clone());
                }
                self.pending.push((tmp, id, pack.entries));
                // Bounded: by 64 packs (1 GiB) back the first ones are long
                // written back, so making them durable now costs little and
                // keeps `tmp/` and the list short on huge volumes.
                if self.pending.len() >= 64 {
                    self.publish()?;
                }
            }
            PackOut::Memory(bytes) => {
                if self.uploader.is_none() {
                    self.uploader = Some(Uploader::start(Arc::clone(&self.store))?);
                }
                let sent = self
                    .uploader
                    .as_ref()
                    .is_some_and(|u| u.tx.send((id, bytes, pack.entries)).is_ok());
                if !sent {
                    // The uploader stopped on an error: report it now.
                    if let Some(u) = self.uploader.take() {
                        self.sealed.extend(u.finish()?);
                    }
                    return Err(BackupError::Panicked("pack upload"));
                }
            }
        }
        Ok(())
    }

    /// Makes every pack durable and visible: seal the open one; fsync each
    /// and rename it into `data/<shard>/<id>`, fsync those directories; or
    /// wait for every upload. Only after this may an index file name them.
    pub fn finish(&mut self) -> Result<(), BackupError> {
        self.seal()?;
        if let Some(u) = self.uploader.take() {
            self.sealed.extend(u.finish()?);
        }
        self.publish()
    }

    /// Waits for the closed packs' fsyncs, then renames them into place.
    fn publish(&mut self) -> Result<(), BackupError> {
        if let Some(s) = self.syncer.take() {
            s.finish()?;
        }
        let Some(root) = &self.root else {
            return Ok(());
        };
        let mut dirs = std::collections::BTreeSet::new();
        for (tmp, id, entries) in std::mem::take(&mut self.pending) {
            let dir = root.join("data").join(id.shard());
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

    /// Takes the packs that are durable so far (renamed into `data/`, or
    /// uploaded): an index file may name them now. Long runs (prune's
    /// repack) call it as they go so the list stays short.
    pub fn take_sealed(&mut self) -> Packs {
        let mut out = std::mem::take(&mut self.sealed);
        if let Some(u) = &self.uploader {
            out.extend(u.take());
        }
        out
    }

    /// Drops the packs not yet finished (on failure). Packs already uploaded
    /// stay, unreferenced: no index or manifest names them, and prune
    /// removes them.
    pub fn abandon(&mut self) {
        if let Some(s) = self.syncer.take() {
            let _ = s.finish();
        }
        if let Some(u) = self.uploader.take() {
            let _ = u.finish();
        }
        if let Some(pack) = self.current.take()
            && let PackOut::File(tmp, out) = pack.out
        {
            drop(out);
            let _ = fs::remove_file(&tmp);
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
/// dropped. In an append-only repository nothing may be replaced or
/// removed, so a refresh writes a new file (`<uuid>.<n>.json`) and the end
/// writes `<uuid>.end.json`; the sweep, which may delete, removes them.
#[derive(Debug)]
pub struct Session {
    store: Arc<dyn Store>,
    key: String,
    append_only: bool,
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
    fn open(
        store: Arc<dyn Store>,
        kind: SessionKind,
        command: &str,
        append_only: bool,
    ) -> Result<Self, BackupError> {
        let info = SessionInfo {
            kind,
            host: hostname(),
            pid: std::process::id(),
            command: command.to_owned(),
            started_at: Utc::now(),
        };
        let uuid = Uuid::new_v4();
        let key = format!("locks/{uuid}.json");
        let bytes = serde_json::to_vec(&info).map_err(|source| BackupError::Json {
            path: PathBuf::from(&key),
            source,
        })?;
        store.put(&key, &bytes, Put::Create)?;
        // Write ours first, then look: of two racing sessions of
        // conflicting kinds at least one sees the other and backs off.
        let conflict = live_sessions(store.as_ref(), !append_only)?
            .into_iter()
            .find(|(id, other)| {
                *id != uuid.to_string()
                    && (kind == SessionKind::Exclusive || other.kind == SessionKind::Exclusive)
            });
        if let Some((_, holder)) = conflict {
            end_session(store.as_ref(), &key, &uuid, append_only);
            return Err(BackupError::Busy {
                holder: holder.describe(),
            });
        }
        let (stop, rx) = mpsc::channel::<()>();
        let (refresh_store, refresh_key) = (Arc::clone(&store), key.clone());
        let refresher = thread::Builder::new()
            .name("backup-session".into())
            .spawn(move || {
                let mut n = 0u64;
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(REFRESH_EVERY) {
                    n += 1;
                    refresh(
                        refresh_store.as_ref(),
                        &refresh_key,
                        &uuid,
                        n,
                        &bytes,
                        append_only,
                    );
                }
            })
            .ok();
        Ok(Self {
            store,
            key,
            append_only,
            stop: Some(stop),
            refresher,
        })
    }
}

/// Marks session `uuid` as alive now.
fn refresh(store: &dyn Store, key: &str, uuid: &Uuid, n: u64, bytes: &[u8], append_only: bool) {
    let r = if append_only {
        store
            .put(&format!("locks/{uuid}.{n}.json"), bytes, Put::Create)
            .map(drop)
    } else if let Some(root) = store.dir() {
        File::options()
            .append(true)
            .open(root.join(key))
            .and_then(|f| f.set_modified(SystemTime::now()))
            .map_err(io_err("refresh", &root.join(key)))
    } else {
        store.put(key, bytes, Put::Replace).map(drop)
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot refresh the repository session");
    }
}

fn end_session(store: &dyn Store, key: &str, uuid: &Uuid, append_only: bool) {
    let r = if append_only {
        store
            .put(&format!("locks/{uuid}.end.json"), b"{}", Put::Create)
            .map(drop)
    } else {
        store.delete(key)
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot end the repository session; it goes stale in 30 minutes");
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        let uuid = self
            .key
            .trim_start_matches("locks/")
            .trim_end_matches(".json")
            .parse::<Uuid>()
            .unwrap_or_default();
        end_session(self.store.as_ref(), &self.key, &uuid, self.append_only);
    }
}

/// What the session files of one session say.
struct SessionFiles {
    uuid: String,
    keys: Vec<String>,
    info: Option<SessionInfo>,
    /// Since its newest file was written.
    age: Duration,
    ended: bool,
    /// Of this host, and its process is gone.
    dead_here: bool,
}

impl SessionFiles {
    /// May be running and holds the repository (conflicts count).
    fn live(&self) -> bool {
        self.info.is_some() && !self.ended && !self.dead_here && self.age <= STALE_AFTER
    }

    /// May still be running, however unlikely: not ended, not known dead,
    /// and not silent for [`EXPIRE_AFTER`]. Its packs are in prune's grace.
    fn maybe_running(&self) -> bool {
        self.info.is_some() && !self.ended && !self.dead_here && self.age <= EXPIRE_AFTER
    }
}

/// A session silent this long is dead whatever it says: its files are
/// removed, and its packs lose prune's grace.
pub const EXPIRE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Every session in `locks/`. A session's files are `<uuid>.json` (its
/// info), in append-only repositories also `<uuid>.<n>.json` (refreshes)
/// and `<uuid>.end.json` (ended).
fn session_files(store: &dyn Store) -> Result<Vec<SessionFiles>, BackupError> {
    use std::collections::BTreeMap;
    let me = hostname();
    let now = SystemTime::now();
    // uuid → (keys, newest modification, ended)
    let mut by: BTreeMap<String, (Vec<String>, SystemTime, bool)> = BTreeMap::new();
    for l in store.list("locks/")? {
        let name = l.key.trim_start_matches("locks/");
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        let (uuid, tail) = stem.split_once('.').unwrap_or((stem, ""));
        let e = by
            .entry(uuid.to_owned())
            .or_insert((Vec::new(), SystemTime::UNIX_EPOCH, false));
        e.0.push(l.key.clone());
        e.1 = e.1.max(l.modified);
        e.2 |= tail == "end";
    }
    let mut out = Vec::new();
    for (uuid, (keys, newest, ended)) in by {
        let key = format!("locks/{uuid}.json");
        let info = if keys.contains(&key) {
            store
                .get(&key)?
                .and_then(|b| serde_json::from_slice::<SessionInfo>(&b).ok())
        } else {
            None
        };
        let dead_here = info
            .as_ref()
            .is_some_and(|i| i.host == me && i.pid != std::process::id() && !pid_alive(i.pid));
        out.push(SessionFiles {
            uuid,
            keys,
            info,
            age: now.duration_since(newest).unwrap_or_default(),
            ended,
            dead_here,
        });
    }
    Ok(out)
}

/// Live sessions by uuid: not ended, pid not gone on this host, newest
/// file not older than [`STALE_AFTER`]. With `clean`, the files of
/// sessions that are over (ended, dead here, silent for [`EXPIRE_AFTER`],
/// or without info for [`STALE_AFTER`]) are removed on the way; a session
/// only stale is left, so prune's grace keeps covering it.
fn live_sessions(
    store: &dyn Store,
    clean: bool,
) -> Result<Vec<(String, SessionInfo)>, BackupError> {
    let mut out = Vec::new();
    for s in session_files(store)? {
        let over = s.ended
            || s.dead_here
            || s.age > EXPIRE_AFTER
            || (s.info.is_none() && s.age > STALE_AFTER);
        if clean && over {
            if let Some(i) = &s.info {
                tracing::info!(session = %s.uuid, holder = %i.describe(), "removing a finished or stale session");
            }
            for k in &s.keys {
                let _ = store.delete(k);
            }
        }
        if s.live()
            && let Some(info) = s.info
        {
            out.push((s.uuid, info));
        }
    }
    Ok(out)
}

/// The sessions live now (for status).
pub fn sessions(repo: &Repository) -> Result<Vec<SessionInfo>, BackupError> {
    Ok(live_sessions(repo.store.as_ref(), false)?
        .into_iter()
        .map(|(_, i)| i)
        .collect())
}

/// Clocks of hosts and of the store may disagree by this much.
const CLOCK_SKEW: Duration = Duration::from_secs(10 * 60);

/// Prune's grace: packs written after this time may belong to a backup
/// still running — a session that is neither ended, nor dead on this
/// host, nor silent for [`EXPIRE_AFTER`] (a writer judged stale because
/// it stopped refreshing its file may be hung or cut off, not dead) — and
/// are never deleted or rewritten. `None`: no such session, no grace.
/// Read before prune opens its exclusive session, which would remove the
/// files of sessions that are over.
pub fn grace_horizon(repo: &Repository) -> Result<Option<SystemTime>, BackupError> {
    Ok(session_files(repo.store.as_ref())?
        .iter()
        .filter(|s| s.maybe_running())
        .filter_map(|s| s.info.as_ref())
        .map(|i| SystemTime::from(i.started_at) - CLOCK_SKEW)
        .min())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_content_named_object_cut_short_or_missing_is_written_whole_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        let key = "data/ab/abcd";
        let bytes = vec![7u8; 4096];
        // A write cut short left 100 bytes under the name.
        fs::create_dir_all(dir.path().join("data/ab")).unwrap();
        fs::write(dir.path().join(key), &bytes[..100]).unwrap();
        put_content_named(&store, key, &bytes).unwrap();
        assert_eq!(fs::read(dir.path().join(key)).unwrap(), bytes);
        // Whole already: left alone.
        put_content_named(&store, key, &bytes).unwrap();
        assert_eq!(store.size(key).unwrap(), Some(4096));
    }

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
