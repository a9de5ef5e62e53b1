//! Backups: a deduplicating, compressed, verified repository of volume
//! images, and the engine that backs volumes of any back end up into it and
//! restores them.
//!
//! Owns the repository format ([`format`](mod@format), sealed by
//! [`crypto`] when encrypted), the repository
//! ([`repo`]) over a storage layer ([`store`]: a directory, local or an NFS
//! share, or an S3-compatible bucket; [`target`] resolves a policy's
//! `target` into one and opens it), backup runs ([`engine`]: a point in time
//! from the volume's [`crate::driver::Driver`], then the shared chunk
//! pipeline), restore and verify ([`restore`], [`verify`]; into a new volume
//! of any back end: [`into_volume`]), the transactions the CLI and the agent
//! share ([`job`], [`scheduled`], [`due`]; group backups, every member of a
//! consistency group from one group snapshot: [`group`]),
//! retention ([`retention`], pure), prune ([`prune`], in bounded memory
//! through [`extsort`]), scheduled checks (a sampled verify and restore
//! drills: [`checks`]) and the state
//! directory's catalogue cache with export/import records ([`catalog`]).
//!
//! # The repository (format version 1)
//! The same keys on every target: files below a directory, or objects
//! below a bucket's prefix.
//! ```text
//! REPO/config                           format, version, id, chunk size, hash, codec
//! REPO/data/<00..ff>/<BLAKE3 of pack>   packs: blobs back to back + a trailer
//! REPO/index/<00..ff>/<BLAKE3 of file>  index files: pack id → its blob entries
//! REPO/backups/<volume uuid>/<id>.json  one manifest per backup
//! REPO/locks/<uuid>.json                live sessions (shared, or prune's exclusive)
//! REPO/tmp/                             packs being written
//! ```
//! - **Chunks are fixed 64 KiB slices of the volume**, content-addressed by
//!   BLAKE3 of their bytes. Fixed, because a block device's data does not
//!   shift (content-defined chunking pays its CPU to survive insertions that
//!   never happen here). 64 KiB, because what an incremental stores grows
//!   with the chunk: for the benchmark's 1 % change (30.7 MiB of changed
//!   4 KiB blocks) 16 KiB chunks store 33 MiB, 64 KiB 44 MiB (1.4×, inside
//!   the 2× budget), 256 KiB 87 MiB and 4 MiB (borg's fixed chunker) 792 MiB
//!   (`shared/ANCHORS.md`; our benchmark measured 1.35× with compression
//!   and repository overhead included); and 64 KiB is LVM's default thin-pool chunk, so
//!   the thin-LV incremental's `thin_delta` ranges map onto whole chunks.
//!   16 KiB would store a quarter less but quadruple the chunk count (index
//!   memory, manifest size, per-chunk hashing and compression overhead, and
//!   zstd compresses small inputs worse).
//! - **Zero chunks are stored as nothing**: a slot the manifest does not
//!   list is zeros. Holes are never read at all (`SEEK_DATA`/`SEEK_HOLE`).
//! - **Compression per chunk**: zstd level 1 (or zlib, or none, per policy);
//!   a chunk whose first 4 KiB do not compress, or that does not shrink, is
//!   stored raw. Each blob records its codec, so policies can differ.
//! - **Packs**: chunks are appended to pack files sealed at 16 MiB (some 250
//!   to 1000 chunks each), written in `tmp/`, fsynced by a background
//!   thread as each is closed (fsyncing in the pipeline put it in lock step
//!   with the disk; fsyncing only at the end was measured 20-25 % slower
//!   than this), and renamed to their own BLAKE3 under one of 256 shard
//!   directories once durable. 10 TiB of data is about
//!   650,000 packs, some 2,500 per directory: never millions of files in one
//!   place. Each pack ends in a trailer listing its blobs (id, codec,
//!   lengths), so it describes itself.
//! - **Index files** repeat the trailers of the packs a session wrote, at
//!   most 262,144 entries (10.7 MiB) each; they are what a writer loads to
//!   deduplicate (about 75 B of RAM per unique chunk: the scaling limit of
//!   a *backup* today is some 1.2 GiB of RAM per TiB of *unique* data; a
//!   paged, sorted index is the next step when repositories get there).
//!   Prune rewrites them, packs in id order, and runs in bounded memory
//!   whatever the repository's size: it streams index files and manifests
//!   through external sorts ([`extsort`]) instead of holding chunk sets.
//! - **Manifests** (JSON) name the volume, the time, the parent, the figures
//!   and the whole chunk table (`slot | BLAKE3` entries, zstd, base64, with
//!   its own digest). Every backup lists every non-zero chunk of its point in
//!   time, so each restores on its own and deleting one never breaks
//!   another; "incremental" only means the run compared against a parent and
//!   stored less. A member of a group backup has a version 2 manifest:
//!   version 1 with `group` (the group backup's id, the group, every
//!   member's name), so a group missing a member is known from any one of
//!   them. A full run trusts no parent: a chunk whose pack is gone is
//!   stored again, which repairs every backup that shares it.
//! - **Write order**: packs (fsynced, renamed; or uploaded, each upload
//!   complete before the next step) → index file → manifest. A crash or a
//!   failed upload before the manifest leaves unreferenced packs that prune
//!   removes; it never leaves a manifest pointing at nothing.
//!
//! # Encrypted repositories (format version 2)
//! With `encryption: {keyRef}` a repository is created encrypted
//! ([`crypto`]): the same layout, with every pack blob, pack trailer
//! (`CBPACKS1`), index file and manifest sealed with XChaCha20-Poly1305
//! (associated data binding each to its place), chunk ids keyed BLAKE3, and
//! `keys/<uuid>.json` holding the data key wrapped under the user's key
//! (Argon2id). The config stays readable (format, version 2, id, the
//! algorithms' names) so a missing or wrong key is one clear error at open,
//! before anything is read or written. `backup key rotate` re-wraps the data
//! key; no data is rewritten. Version 1 repositories are read as before.
//!
//! # Concurrency: lock-free writers, exclusive prune
//! Writers never coordinate with each other: every name they create is
//! unique (packs and index files are named by their content, manifests by a
//! random UUID), nothing is ever rewritten, and two hosts storing the same chunk
//! merely store it twice (prune drops the copy). The one operation that
//! deletes — prune — needs to be alone, because a writer may deduplicate
//! against a chunk that prune has just found unreferenced. So every command
//! writes a session file in `locks/` (shared for backup, restore, verify;
//! exclusive for prune), then lists the others: of two conflicting sessions
//! created at once, at least one sees the other and backs off with an error
//! naming the holder. Session files are refreshed every 5 minutes; one that
//! is 30 minutes old is stale and no longer blocks prune, but it keeps
//! prune's grace (packs written since it started are not touched) until
//! it is a day old and removed; one whose pid is dead on this host is
//! removed at once. Chosen over `flock` because it works the same on every
//! NFS version and on object stores, and shows who holds the repository.
//!
//! # Append-only targets
//! With `appendOnly: true` nothing is deleted or replaced: every object is
//! created with a conditional create, session files are never removed
//! (a refresh is a new file, the end an `.end` marker), and retention only
//! forgets in the catalogue. `backup prune --sweep`, run with credentials
//! or permissions that may delete, removes what retention forgot and frees
//! the space.
//!
//! # The catalogue
//! The state directory keeps a cache (`backup-catalog.json`) of what `list`
//! shows, including failed runs and verify results. The repository is the
//! truth: `backup import --scan REPO` rebuilds the catalogue from the
//! manifests alone, so losing the state directory loses no backup.
//!
//! # Must not
//! Print (the CLI does, through [`Progress`] and the returned reports), spawn
//! processes or touch a back end but through its [`crate::driver::Driver`],
//! or decide which volume or policy is meant (the CLI resolves manifests
//! into the plain values the engine takes).

pub mod catalog;
pub mod checks;
pub mod crypto;
pub mod due;
pub mod engine;
pub mod extsort;
pub mod format;
pub mod group;
pub mod into_volume;
pub mod job;
pub mod prune;
pub mod repo;
pub mod restore;
pub mod retention;
pub mod scheduled;
pub mod store;
pub mod target;
pub mod verify;

use std::io;
use std::path::PathBuf;

use uuid::Uuid;

use crate::driver::DriverError;
use crate::state::atomic::AtomicError;

pub use format::{BackupKind, Codec, Digest, Manifest, Record};
pub use repo::{Repository, SessionKind};

/// Errors of the backup engine and repository.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A filesystem operation failed.
    #[error("{op} {path}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file was replaced atomically and that failed.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: AtomicError,
    },
    /// A JSON document is not of our schema.
    #[error("{path}: not a valid document")]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// Encoding failed (compression of the chunk table).
    #[error("cannot encode the {what}")]
    Encode {
        /// What.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No `config` where a repository was expected.
    #[error("{location} is not a backup repository (no config)")]
    NotARepository {
        /// The directory or bucket and prefix.
        location: String,
    },
    /// A repository of another format or a newer version.
    #[error(
        "{location}: repository format {format:?} version {version} is not one this cinderblock reads"
    )]
    RepoVersion {
        /// The directory or bucket and prefix.
        location: String,
        /// Its format tag.
        format: String,
        /// Its version.
        version: u32,
    },
    /// A record or catalogue entry names another repository.
    #[error("{location} is repository {found}, not {expected}")]
    RepoMismatch {
        /// The directory or bucket and prefix.
        location: String,
        /// The id asked for.
        expected: Uuid,
        /// The id found.
        found: Uuid,
    },
    /// A pack's trailer is unreadable.
    #[error("{pack}: damaged pack (unreadable trailer)")]
    BadPack {
        /// The pack's key.
        pack: String,
    },
    /// A call to an object store failed (after its retries).
    #[error("cannot {op} {location}")]
    Remote {
        /// What we were doing.
        op: &'static str,
        /// The store and key.
        location: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An encrypted repository opened without a key.
    #[error(
        "{location} is encrypted: its BackupPolicy needs `encryption: {{keyRef: {{file|env}}}}` with its key"
    )]
    KeyNeeded {
        /// The repository.
        location: String,
    },
    /// A key given for a repository that is not encrypted.
    #[error(
        "{location} is not encrypted, but the policy sets `encryption` (a repository is encrypted when it is created: point the policy at a new target, or drop `encryption`)"
    )]
    NotEncrypted {
        /// The repository.
        location: String,
    },
    /// The key does not open the repository.
    #[error("the key in {from} does not open {location} (wrong key); nothing was read or written")]
    WrongKey {
        /// The repository.
        location: String,
        /// Where the key came from.
        from: String,
    },
    /// A sealed object does not open: damaged, moved, or of another key.
    #[error("{at}: damaged {what} (its seal does not open)")]
    Sealed {
        /// What it is.
        what: String,
        /// Where.
        at: String,
    },
    /// A secret (credentials, key) could not be read.
    #[error("cannot read the secret in {from}: {reason}")]
    Secret {
        /// Where it should be (never its content).
        from: String,
        /// Why.
        reason: String,
    },
    /// The target's NFS share could not be mounted.
    #[error("backup target share {share}")]
    Mount {
        /// The share.
        share: String,
        /// Why.
        #[source]
        source: crate::file::mount::MountError,
    },
    /// A delete or replace on an append-only target.
    #[error(
        "{location} is append-only: this run may not {what} (`backup prune --sweep` with credentials that may delete does)"
    )]
    AppendOnly {
        /// The repository.
        location: String,
        /// What was refused.
        what: String,
    },
    /// A manifest is damaged.
    #[error("backup {id}: damaged manifest: {reason}")]
    BadManifest {
        /// The backup.
        id: Uuid,
        /// What is wrong.
        reason: String,
    },
    /// A manifest of another format or a newer version.
    #[error(
        "backup {id}: manifest format {format:?} version {version} is not one this cinderblock reads"
    )]
    ManifestVersion {
        /// The backup.
        id: Uuid,
        /// Its format tag.
        format: String,
        /// Its version.
        version: u32,
    },
    /// Another session holds the repository in a conflicting mode.
    #[error("repository is busy: {holder}; try again when it has finished")]
    Busy {
        /// Who.
        holder: String,
    },
    /// The volume's back end refused or failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// Chunks of a backup are missing or corrupt: restoring it is refused.
    #[error(
        "backup {id} is damaged: {missing} missing and {corrupt} corrupt chunk(s){}; nothing was restored",
        .first.as_ref().map(|f| format!(" (first: {f})")).unwrap_or_default()
    )]
    Damaged {
        /// The backup.
        id: Uuid,
        /// Chunks not found.
        missing: u64,
        /// Chunks whose bytes do not hash to their id.
        corrupt: u64,
        /// The first problem, described.
        first: Option<String>,
    },
    /// The restore target is not usable.
    #[error("cannot restore into {name:?}: {reason}")]
    Target {
        /// The target volume's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The state directory's catalogue could not be read or written.
    #[error("backup catalogue")]
    Catalog(#[source] AtomicError),
    /// No backup matches.
    #[error("no backup {0:?} in the catalogue (run `backup list`, or `backup import --scan REPO`)")]
    UnknownBackup(String),
    /// No group backup matches.
    #[error(
        "no group backup {0:?} in the catalogue (`backup list` shows each group backup's id on its `group` line)"
    )]
    UnknownGroup(String),
    /// Several backups match an id prefix.
    #[error("backup id {prefix:?} is ambiguous: {candidates}")]
    AmbiguousBackup {
        /// The prefix.
        prefix: String,
        /// Matching ids.
        candidates: String,
    },
    /// A worker thread panicked (a bug).
    #[error("internal error: a {0} thread panicked")]
    Panicked(&'static str),
}

impl BackupError {
    /// Contention and I/O are worth retrying; damage and bad input are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Driver(e) => e.is_retryable(),
            other => matches!(
                other,
                Self::Busy { .. } | Self::Io { .. } | Self::Remote { .. }
            ),
        }
    }
}

/// Progress of a long operation, in bytes. The CLI draws a bar; library
/// callers and tests pass [`NoProgress`].
pub trait Progress: Sync {
    /// A new stage begins (its total, if any, follows through `total`).
    fn stage(&self, _what: &str) {}
    /// The total is known (or changed).
    fn total(&self, bytes: u64);
    /// `bytes` more are done.
    fn advance(&self, bytes: u64);
}

/// Progress that goes nowhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn total(&self, _: u64) {}
    fn advance(&self, _: u64) {}
}
