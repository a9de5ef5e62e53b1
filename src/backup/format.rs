//! The repository's on-disk format, version 1: the `config` document, pack
//! files, index files, backup manifests and export records, and their byte
//! encodings. Pure: no I/O beyond the byte slices handed in, so every encoding
//! is unit-tested and pinned by the golden fixture in
//! `tests/fixtures/backup/repo-v1/`.
//!
//! Changing anything here is a format change: bump [`REPO_VERSION`] (or the
//! manifest's [`MANIFEST_VERSION`]) and add a fixture for the new version.

use std::fmt;
use std::io::{Read, Write};
use std::str::FromStr;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use super::BackupError;

/// `format` of the repository's `config`.
pub const REPO_FORMAT: &str = "cinderblock.backup-repository";
/// The repository format version of unencrypted repositories (read and
/// written by this build).
pub const REPO_VERSION: u32 = 1;
/// The version of encrypted repositories ([`super::crypto`]): version 1's
/// layout with every pack blob, trailer, index file and manifest sealed and
/// chunk ids keyed.
pub const REPO_VERSION_ENCRYPTED: u32 = 2;
/// The chunk id of an encrypted repository (`encryption.chunkId`): keyed
/// BLAKE3.
pub const CHUNK_ID_KEYED: &str = "blake3-keyed";
/// Bytes per chunk (see the module docs of [`crate::backup`] for why 64 KiB).
pub const CHUNK_SIZE: u32 = 64 * 1024;
/// The only chunk hash of version 1.
pub const HASH: &str = "blake3";
/// A pack is sealed once it holds at least this many bytes.
pub const PACK_SIZE: u64 = 16 << 20;
/// Last 8 bytes of every pack file.
pub const PACK_MAGIC: &[u8; 8] = b"CBPACK01";
/// Last 8 bytes of a pack of an encrypted repository, whose trailer is
/// sealed: `sealed entries | sealed length (u32 LE) | PACK_MAGIC_SEALED`.
pub const PACK_MAGIC_SEALED: &[u8; 8] = b"CBPACKS1";
/// First 8 bytes of every index file.
pub const INDEX_MAGIC: &[u8; 8] = b"CBINDX01";
/// `format` of a backup manifest.
pub const MANIFEST_FORMAT: &str = "cinderblock.backup";
/// The manifest version this build writes for a volume backed up alone
/// (and reads).
pub const MANIFEST_VERSION: u32 = 1;
/// The manifest version of a member of a group backup: version 1 with
/// `group` ([`GroupRef`]). A build that knows only version 1 refuses it by
/// its version, not by an unknown field.
pub const MANIFEST_VERSION_GROUP: u32 = 2;
/// `format` of an export record.
pub const RECORD_FORMAT: &str = "cinderblock.backup-record";
/// Bytes of one blob entry in a pack trailer or index file.
pub const ENTRY_LEN: usize = 32 + 1 + 4 + 4;
/// Bytes of one chunk-table entry (slot `u64` LE + hash).
pub const TABLE_ENTRY_LEN: usize = 8 + 32;

/// A BLAKE3 digest: the identity of a chunk, a pack or an index file.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// BLAKE3 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// Lowercase hex (64 characters).
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
        }
        s
    }

    /// The first byte as two hex digits: the fan-out directory.
    pub fn shard(&self) -> String {
        format!("{:02x}", self.0[0])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &self.to_hex()[..16])
    }
}

impl FromStr for Digest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(format!("a digest is 64 hex digits, not {}", bytes.len()));
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hex = |c: u8| match c {
                b'0'..=b'9' => Ok(c - b'0'),
                b'a'..=b'f' => Ok(c - b'a' + 10),
                _ => Err(format!("{:?} is not a lowercase hex digit", char::from(c))),
            };
            out[i] = hex(pair[0])? << 4 | hex(pair[1])?;
        }
        Ok(Self(out))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How a blob is stored. The byte values are part of the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// As is (also used whenever compression does not shrink a chunk).
    None,
    /// A zstd frame.
    Zstd,
    /// A zlib stream (RFC 1950), Cinder's default.
    Zlib,
}

impl Codec {
    fn to_byte(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Zstd => 1,
            Self::Zlib => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::None),
            1 => Some(Self::Zstd),
            2 => Some(Self::Zlib),
            _ => None,
        }
    }
}

impl From<crate::manifest::Compression> for Codec {
    fn from(c: crate::manifest::Compression) -> Self {
        match c {
            crate::manifest::Compression::Zstd => Self::Zstd,
            crate::manifest::Compression::Zlib => Self::Zlib,
            crate::manifest::Compression::None => Self::None,
        }
    }
}

/// zstd level: 1 is the fastest of the standard levels; on volume data the
/// higher levels cost 2-4x the CPU for a few percent (measured on the
/// benchmark's log text: level 1 ratio 4.1, level 3 ratio 4.3).
const ZSTD_LEVEL: i32 = 1;
/// zlib level: fast (Cinder uses zlib's default 6, which is ~3x slower).
const ZLIB_LEVEL: u32 = 1;
/// Bytes compressed first to decide whether a chunk is worth compressing.
const PROBE: usize = 4096;

/// Reusable (de)compression contexts: one per worker thread. zstd's
/// one-shot functions build a fresh context per call, which cost more than
/// compressing a 4 KiB probe (measured: a full backup of 2 GiB of random
/// data spent seconds of CPU in context set-up).
#[derive(Default)]
pub struct Codecs {
    zc: Option<zstd::bulk::Compressor<'static>>,
    zd: Option<zstd::bulk::Decompressor<'static>>,
}

impl fmt::Debug for Codecs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Codecs")
    }
}

impl Codecs {
    fn zstd_compress(&mut self, input: &[u8]) -> Option<Vec<u8>> {
        if self.zc.is_none() {
            self.zc = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        self.zc.as_mut()?.compress(input).ok()
    }

    /// Compresses `raw` with `codec`; returns the codec actually used and
    /// the bytes to store: `None` (raw) when compression would not shrink
    /// the chunk, as judged by compressing its first 4 KiB (random data is
    /// rejected at a sixteenth of the cost) and then by the full result.
    pub fn compress(&mut self, codec: Codec, raw: &[u8]) -> (Codec, Vec<u8>) {
        let mut attempt = |input: &[u8]| -> Option<Vec<u8>> {
            match codec {
                Codec::None => None,
                Codec::Zstd => self.zstd_compress(input),
                Codec::Zlib => {
                    let mut enc = flate2::write::ZlibEncoder::new(
                        Vec::with_capacity(input.len() / 2),
                        flate2::Compression::new(ZLIB_LEVEL),
                    );
                    enc.write_all(input).ok()?;
                    enc.finish().ok()
                }
            }
        };
        if codec == Codec::None {
            return (Codec::None, raw.to_vec());
        }
        if raw.len() > 2 * PROBE {
            match attempt(&raw[..PROBE]) {
                Some(p) if p.len() < PROBE - PROBE / 16 => {}
                _ => return (Codec::None, raw.to_vec()),
            }
        }
        match attempt(raw) {
            Some(c) if c.len() < raw.len() => (codec, c),
            _ => (Codec::None, raw.to_vec()),
        }
    }

    /// Decompresses a stored blob of `raw_len` bytes. `None` when the bytes
    /// are not a valid stream of that length (corruption).
    pub fn decompress(&mut self, codec: Codec, stored: &[u8], raw_len: usize) -> Option<Vec<u8>> {
        match codec {
            Codec::None => (stored.len() == raw_len).then(|| stored.to_vec()),
            Codec::Zstd => {
                if self.zd.is_none() {
                    self.zd = zstd::bulk::Decompressor::new().ok();
                }
                let out = self.zd.as_mut()?.decompress(stored, raw_len).ok()?;
                (out.len() == raw_len).then_some(out)
            }
            Codec::Zlib => {
                let mut out = Vec::with_capacity(raw_len);
                flate2::read::ZlibDecoder::new(stored)
                    .take(raw_len as u64 + 1)
                    .read_to_end(&mut out)
                    .ok()?;
                (out.len() == raw_len).then_some(out)
            }
        }
    }
}

/// [`Codecs::compress`] with a fresh context (for one-off use).
pub fn compress(codec: Codec, raw: &[u8]) -> (Codec, Vec<u8>) {
    Codecs::default().compress(codec, raw)
}

/// [`Codecs::decompress`] with a fresh context (for one-off use).
pub fn decompress(codec: Codec, stored: &[u8], raw_len: usize) -> Option<Vec<u8>> {
    Codecs::default().decompress(codec, stored, raw_len)
}

/// The repository's `config`: what a reader must know before reading
/// anything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RepoConfig {
    /// Always [`REPO_FORMAT`].
    pub format: String,
    /// Always [`REPO_VERSION`] for what this build writes.
    pub version: u32,
    /// Identity; export records name it so a record is never applied to
    /// another repository.
    pub id: Uuid,
    /// Bytes per chunk ([`CHUNK_SIZE`]).
    pub chunk_size: u32,
    /// The chunk hash ([`HASH`]).
    pub hash: String,
    /// The codec new chunks get unless the backup asks for another (each
    /// blob records its own, so policies may differ).
    pub compression: Codec,
    /// The size a pack is sealed at ([`PACK_SIZE`]).
    pub pack_size: u64,
    /// When the repository was created.
    pub created_at: DateTime<Utc>,
    /// How it is encrypted (version 2 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
}

/// The encryption of a version 2 repository (names of the algorithms; the
/// keys are in `keys/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Encryption {
    /// The AEAD ([`super::crypto::AEAD`]).
    pub aead: String,
    /// The chunk id: `blake3-keyed`.
    pub chunk_id: String,
}

/// Parses and checks the bytes of the `config` of the repository at
/// `location` (named in the errors): the format and version first, so a
/// newer repository is reported as such rather than as a parse error, then
/// the geometry this build reads.
pub fn decode_config(location: &str, bytes: &[u8]) -> Result<RepoConfig, BackupError> {
    #[derive(Deserialize)]
    struct Head {
        format: String,
        version: u32,
    }
    let bad = |source| BackupError::Json {
        path: std::path::PathBuf::from(format!("{location}/config")),
        source,
    };
    let head: Head = serde_json::from_slice(bytes).map_err(bad)?;
    if head.format != REPO_FORMAT
        || (head.version != REPO_VERSION && head.version != REPO_VERSION_ENCRYPTED)
    {
        return Err(BackupError::RepoVersion {
            location: location.to_owned(),
            format: head.format,
            version: head.version,
        });
    }
    let config: RepoConfig = serde_json::from_slice(bytes).map_err(bad)?;
    let encrypted = head.version == REPO_VERSION_ENCRYPTED;
    if config.chunk_size != CHUNK_SIZE
        || config.hash != HASH
        || encrypted != config.encryption.is_some()
        || config
            .encryption
            .as_ref()
            .is_some_and(|e| e.aead != super::crypto::AEAD || e.chunk_id != CHUNK_ID_KEYED)
    {
        return Err(BackupError::RepoVersion {
            location: location.to_owned(),
            format: format!(
                "{} (chunk {} {})",
                head.format, config.chunk_size, config.hash
            ),
            version: head.version,
        });
    }
    Ok(config)
}

/// One blob in a pack: identity, codec and lengths. Offsets are implied by
/// the order (blobs are back to back from offset 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobEntry {
    /// BLAKE3 of the raw (uncompressed) chunk.
    pub id: Digest,
    /// How it is stored.
    pub codec: Codec,
    /// Bytes in the pack.
    pub stored_len: u32,
    /// Bytes of the chunk.
    pub raw_len: u32,
}

impl BlobEntry {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.0);
        out.push(self.codec.to_byte());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let id = Digest(b.get(..32)?.try_into().ok()?);
        let codec = Codec::from_byte(*b.get(32)?)?;
        let stored_len = u32::from_le_bytes(b.get(33..37)?.try_into().ok()?);
        let raw_len = u32::from_le_bytes(b.get(37..41)?.try_into().ok()?);
        Some(Self {
            id,
            codec,
            stored_len,
            raw_len,
        })
    }
}

/// The trailer of a pack: `entries | entry count (u32 LE) | PACK_MAGIC`.
/// Written after the blobs, so a pack describes itself and the index can be
/// rebuilt from the packs alone.
pub fn encode_pack_trailer(entries: &[BlobEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_LEN + 12);
    for e in entries {
        e.encode(&mut out);
    }
    let count = u32::try_from(entries.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(PACK_MAGIC);
    out
}

/// The sealed trailer of an encrypted repository's pack (`sealed` is the
/// sealed [`encode_entries`] of its blobs).
pub fn encode_sealed_trailer(sealed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sealed.len() + 12);
    out.extend_from_slice(sealed);
    out.extend_from_slice(
        &u32::try_from(sealed.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(PACK_MAGIC_SEALED);
    out
}

/// Blob entries back to back (what a sealed trailer seals).
pub fn encode_entries(entries: &[BlobEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for e in entries {
        e.encode(&mut out);
    }
    out
}

/// Parses entries back to back; `None` when they are not whole entries.
pub fn decode_entries(bytes: &[u8]) -> Option<Vec<BlobEntry>> {
    if bytes.len() % ENTRY_LEN != 0 {
        return None;
    }
    bytes
        .chunks_exact(ENTRY_LEN)
        .map(BlobEntry::decode)
        .collect()
}

/// Length of the sealed part of a sealed trailer given the pack's last 12
/// bytes; `None` when they are not a sealed trailer's footer.
pub fn sealed_trailer_len(footer: &[u8; 12], file_len: u64) -> Option<u64> {
    if &footer[4..] != PACK_MAGIC_SEALED {
        return None;
    }
    let len = u64::from(u32::from_le_bytes(footer[..4].try_into().ok()?));
    (len + 12 <= file_len).then_some(len)
}

/// Length of the trailer of a pack of `file_len` bytes given its last 12
/// bytes; `None` when they are not a trailer footer.
pub fn pack_trailer_len(footer: &[u8; 12], file_len: u64) -> Option<u64> {
    if &footer[4..] != PACK_MAGIC {
        return None;
    }
    let count = u64::from(u32::from_le_bytes(footer[..4].try_into().ok()?));
    let len = count * ENTRY_LEN as u64 + 12;
    (len <= file_len).then_some(len)
}

/// Parses a pack trailer (as located by [`pack_trailer_len`]) and checks that
/// the blobs fill the pack exactly.
pub fn decode_pack_trailer(trailer: &[u8], file_len: u64) -> Option<Vec<BlobEntry>> {
    let body = trailer.get(..trailer.len().checked_sub(12)?)?;
    if body.len() % ENTRY_LEN != 0 {
        return None;
    }
    let entries: Vec<BlobEntry> = body
        .chunks_exact(ENTRY_LEN)
        .map(BlobEntry::decode)
        .collect::<Option<_>>()?;
    let blobs: u64 = entries.iter().map(|e| u64::from(e.stored_len)).sum();
    (blobs + trailer.len() as u64 == file_len).then_some(entries)
}

/// An index file: `INDEX_MAGIC`, then per pack `pack id | count (u32 LE) |
/// entries`. Named by its own BLAKE3, so a damaged one is recognised.
pub fn encode_index(packs: &[(Digest, Vec<BlobEntry>)]) -> Vec<u8> {
    let mut out = Vec::from(&INDEX_MAGIC[..]);
    for (id, entries) in packs {
        out.extend_from_slice(&id.0);
        let count = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_le_bytes());
        for e in entries {
            e.encode(&mut out);
        }
    }
    out
}

/// Parses an index file; `None` when it is not one.
pub fn decode_index(bytes: &[u8]) -> Option<Vec<(Digest, Vec<BlobEntry>)>> {
    let mut rest = bytes.strip_prefix(&INDEX_MAGIC[..])?;
    let mut packs = Vec::new();
    while !rest.is_empty() {
        let id = Digest(rest.get(..32)?.try_into().ok()?);
        let count = u32::from_le_bytes(rest.get(32..36)?.try_into().ok()?) as usize;
        let end = 36 + count.checked_mul(ENTRY_LEN)?;
        let entries = rest
            .get(36..end)?
            .chunks_exact(ENTRY_LEN)
            .map(BlobEntry::decode)
            .collect::<Option<Vec<_>>>()?;
        packs.push((id, entries));
        rest = &rest[end..];
    }
    Some(packs)
}

/// Index files hold at most this many entries (about 10.7 MiB): writers
/// split larger sets, so every index file can be read whole, sealed or
/// not, in bounded memory.
pub const INDEX_FILE_ENTRIES: usize = 1 << 18;

/// Reads an index file from `r` pack by pack, giving each to `f`. Returns
/// `false` when the bytes are not an index file (what came before the
/// damage was already given: check a file before feeding `f` anything
/// that matters). Entries are read one at a time, so a damaged count
/// allocates nothing.
pub fn read_index(
    r: &mut impl Read,
    mut f: impl FnMut(Digest, Vec<BlobEntry>),
) -> std::io::Result<bool> {
    let mut magic = [0u8; 8];
    if !read_full(r, &mut magic)? || &magic != INDEX_MAGIC {
        return Ok(false);
    }
    let mut head = [0u8; 36];
    let mut e = [0u8; ENTRY_LEN];
    loop {
        // End of file exactly at a pack boundary is the end.
        let n = read_some(r, &mut head)?;
        if n == 0 {
            return Ok(true);
        }
        if n < head.len() {
            return Ok(false);
        }
        let id = Digest(head[..32].try_into().unwrap_or([0; 32]));
        let count = u32::from_le_bytes(head[32..].try_into().unwrap_or([0; 4]));
        let mut entries = Vec::new();
        for _ in 0..count {
            if !read_full(r, &mut e)? {
                return Ok(false);
            }
            let Some(entry) = BlobEntry::decode(&e) else {
                return Ok(false);
            };
            entries.push(entry);
        }
        f(id, entries);
    }
}

/// Fills `buf`; `false` at a clean or short end of file.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    Ok(read_some(r, buf)? == buf.len())
}

/// Reads until `buf` is full or the file ends; how many bytes.
fn read_some(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Full or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    /// No parent: every chunk was looked up in the repository index, and
    /// one whose pack is gone was stored again (a full backup repairs what
    /// a lost pack broke, for every backup sharing those chunks).
    Full,
    /// Chunks equal to the parent's at the same offset were taken from the
    /// parent's manifest; the manifest still lists every chunk.
    Incremental,
}

impl fmt::Display for BackupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full => "full",
            Self::Incremental => "incremental",
        })
    }
}

/// The volume a backup is of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeRef {
    /// The back end object's uuid.
    pub uuid: Uuid,
    /// Its manifest name at backup time.
    pub name: String,
    /// Its back end (manifest name).
    pub backend: String,
    /// Logical size in bytes: what a restore recreates.
    pub size: u64,
}

/// The group backup a backup belongs to: every member of a consistency
/// group backed up from one crash-consistent group snapshot. Each member's
/// manifest names all members, so a group missing one (a run killed
/// between two members' commits) is seen incomplete from any one of them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupRef {
    /// The group backup's id (shared by its members' backups).
    pub id: Uuid,
    /// The `ConsistencyGroup`'s name.
    pub name: String,
    /// Every member volume's name, sorted.
    pub members: Vec<String>,
}

/// Figures of one backup run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupStats {
    /// Bytes read from data extents (holes are never read).
    pub read_bytes: u64,
    /// Data extents walked.
    pub extents: u64,
    /// Non-zero chunks listed in the manifest.
    pub chunks: u64,
    /// Chunks read that were all zeros (stored as nothing).
    pub zero_chunks: u64,
    /// Chunks equal to the parent's at the same offset.
    pub unchanged_chunks: u64,
    /// Changed or new chunks already in the repository (deduplicated).
    pub dedup_chunks: u64,
    /// Chunks written by this backup.
    pub new_chunks: u64,
    /// Raw bytes of the chunks written.
    pub new_bytes: u64,
    /// Bytes those chunks take in packs (after compression).
    pub stored_bytes: u64,
}

/// A backup manifest: everything needed to restore one point in time, on
/// its own. Written last; its presence is the backup's commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// Always [`MANIFEST_VERSION`] for what this build writes.
    pub version: u32,
    /// The backup's id (random: unique across hosts, and short prefixes are
    /// unambiguous; time order comes from `startedAt`).
    pub id: Uuid,
    /// The repository's id.
    pub repository: Uuid,
    /// What was backed up.
    pub volume: VolumeRef,
    /// The `BackupPolicy` that asked for it (retention rules come from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Full or incremental.
    pub kind: BackupKind,
    /// The backup compared against, for an incremental (information only:
    /// restoring never reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Uuid>,
    /// The host that ran it.
    pub host: String,
    /// When the point-in-time copy was taken.
    pub started_at: DateTime<Utc>,
    /// When the manifest was written.
    pub finished_at: DateTime<Utc>,
    /// Bytes per chunk (the repository's).
    pub chunk_size: u32,
    /// Figures of the run.
    pub stats: BackupStats,
    /// The chunk table: base64 of a zstd frame of `slot (u64 LE) | BLAKE3`
    /// entries, ascending by slot; slots not listed are all zeros.
    pub chunks: String,
    /// BLAKE3 of the uncompressed chunk table.
    pub chunks_digest: Digest,
    /// The group backup this is a member of (version 2 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupRef>,
}

/// The chunk table of a manifest: `(slot, chunk id)` ascending by slot;
/// absent slots are zeros.
pub type Table = Vec<(u64, Digest)>;

/// Encodes a chunk table for [`Manifest::chunks`]; returns the text and the
/// digest of the raw table.
pub fn encode_table(table: &[(u64, Digest)]) -> Result<(String, Digest), BackupError> {
    let mut raw = Vec::with_capacity(table.len() * TABLE_ENTRY_LEN);
    for (slot, id) in table {
        raw.extend_from_slice(&slot.to_le_bytes());
        raw.extend_from_slice(&id.0);
    }
    let digest = Digest::of(&raw);
    let packed = zstd::bulk::compress(&raw, 3).map_err(|source| BackupError::Encode {
        what: "chunk table",
        source,
    })?;
    Ok((
        base64::engine::general_purpose::STANDARD.encode(packed),
        digest,
    ))
}

/// Decodes and checks a manifest's chunk table.
pub fn decode_table(m: &Manifest) -> Result<Table, BackupError> {
    let bad = |reason: &str| BackupError::BadManifest {
        id: m.id,
        reason: reason.to_owned(),
    };
    let packed = base64::engine::general_purpose::STANDARD
        .decode(m.chunks.as_bytes())
        .map_err(|_| bad("chunk table is not base64"))?;
    let slots = m.volume.size.div_ceil(u64::from(m.chunk_size));
    let limit = usize::try_from(slots)
        .unwrap_or(usize::MAX)
        .saturating_mul(TABLE_ENTRY_LEN);
    // Streamed with a cap: the table can never be larger than one entry per
    // slot, and nothing is allocated up front for a table that is not.
    let mut raw = Vec::new();
    zstd::stream::read::Decoder::new(packed.as_slice())
        .and_then(|d| d.take(limit as u64 + 1).read_to_end(&mut raw))
        .map_err(|_| bad("chunk table is not a zstd frame"))?;
    if raw.len() > limit {
        return Err(bad("chunk table is larger than the volume"));
    }
    if Digest::of(&raw) != m.chunks_digest {
        return Err(bad("chunk table does not match its digest"));
    }
    if raw.len() % TABLE_ENTRY_LEN != 0 {
        return Err(bad("chunk table has a partial entry"));
    }
    let mut table = Vec::with_capacity(raw.len() / TABLE_ENTRY_LEN);
    let mut prev: Option<u64> = None;
    for e in raw.chunks_exact(TABLE_ENTRY_LEN) {
        let mut slot = [0u8; 8];
        slot.copy_from_slice(&e[..8]);
        let slot = u64::from_le_bytes(slot);
        let mut id = [0u8; 32];
        id.copy_from_slice(&e[8..]);
        if slot >= slots || prev.is_some_and(|p| p >= slot) {
            return Err(bad("chunk table slots are out of order or past the volume"));
        }
        prev = Some(slot);
        table.push((slot, Digest(id)));
    }
    Ok(table)
}

/// Checks a manifest's header (format, version, repository geometry).
pub fn check_manifest(m: &Manifest) -> Result<(), BackupError> {
    let version_ok = match m.version {
        MANIFEST_VERSION => m.group.is_none(),
        MANIFEST_VERSION_GROUP => m.group.is_some(),
        _ => false,
    };
    if m.format != MANIFEST_FORMAT || !version_ok {
        return Err(BackupError::ManifestVersion {
            id: m.id,
            format: m.format.clone(),
            version: m.version,
        });
    }
    if m.chunk_size != CHUNK_SIZE {
        return Err(BackupError::BadManifest {
            id: m.id,
            reason: format!("chunk size {} is not {CHUNK_SIZE}", m.chunk_size),
        });
    }
    Ok(())
}

/// Parses the bytes of the manifest file at `path` and checks its header
/// ([`check_manifest`]); the chunk table is decoded when it is used
/// ([`decode_table`]).
pub fn decode_manifest(path: &std::path::Path, bytes: &[u8]) -> Result<Manifest, BackupError> {
    let m: Manifest = serde_json::from_slice(bytes).map_err(|source| BackupError::Json {
        path: path.to_owned(),
        source,
    })?;
    check_manifest(&m)?;
    Ok(m)
}

/// Where the repository of an export record lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecordRepository {
    /// The repository path on the exporting host (or its location).
    pub path: std::path::PathBuf,
    /// The repository's id.
    pub id: Uuid,
    /// How to open it, for a target that is not a plain directory (a
    /// share, an S3 bucket; credentials as references, never values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<super::target::RepoSpec>,
}

/// `backup export`'s output: the whole manifest plus where its repository
/// is. Self-contained: importing it needs no other record (no parents).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Record {
    /// Always [`RECORD_FORMAT`].
    pub format: String,
    /// Always 1.
    pub version: u32,
    /// The repository.
    pub repository: RecordRepository,
    /// The backup's manifest, byte-for-byte what the repository holds.
    pub backup: Manifest,
}

impl Record {
    /// Checks a record on its own, before any repository is touched: its
    /// format and version, its manifest's header, and that the chunk table
    /// decodes and matches its digest.
    pub fn check(&self) -> Result<(), BackupError> {
        if self.format != RECORD_FORMAT || self.version != 1 {
            return Err(BackupError::ManifestVersion {
                id: self.backup.id,
                format: self.format.clone(),
                version: self.version,
            });
        }
        check_manifest(&self.backup)?;
        decode_table(&self.backup)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_hex_round_trip_and_errors() {
        let d = Digest::of(b"abc");
        assert_eq!(
            d.to_hex(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert_eq!(d.to_hex().parse::<Digest>().unwrap(), d);
        assert!("abc".parse::<Digest>().is_err());
        assert!(d.to_hex().to_uppercase().parse::<Digest>().is_err());
    }

    #[test]
    fn compression_falls_back_to_raw_when_it_does_not_shrink() {
        let text: Vec<u8> = b"volume extended to 4096 bytes\n"
            .iter()
            .copied()
            .cycle()
            .take(65536)
            .collect();
        for codec in [Codec::Zstd, Codec::Zlib] {
            let (used, stored) = compress(codec, &text);
            assert_eq!(used, codec);
            assert!(stored.len() < 4096);
            assert_eq!(decompress(used, &stored, text.len()).unwrap(), text);
        }
        let mut x = 0x1234_5678_u64;
        let random: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect();
        assert_eq!(
            compress(Codec::Zstd, &random),
            (Codec::None, random.clone())
        );
        assert_eq!(compress(Codec::None, &text).0, Codec::None);
        assert!(decompress(Codec::Zstd, b"garbage", 10).is_none());
        assert!(decompress(Codec::None, b"short", 10).is_none());
    }

    fn manifest_with(table: &[(u64, Digest)], size: u64) -> Manifest {
        let (chunks, chunks_digest) = encode_table(table).unwrap();
        Manifest {
            format: MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            id: Uuid::from_u128(9),
            repository: Uuid::nil(),
            volume: VolumeRef {
                uuid: Uuid::nil(),
                name: "v".into(),
                backend: "b".into(),
                size,
            },
            policy: None,
            kind: BackupKind::Full,
            parent: None,
            host: "h".into(),
            started_at: DateTime::<Utc>::MIN_UTC,
            finished_at: DateTime::<Utc>::MIN_UTC,
            chunk_size: CHUNK_SIZE,
            stats: BackupStats::default(),
            chunks,
            chunks_digest,
            group: None,
        }
    }

    #[test]
    fn chunk_table_round_trips_and_refuses_damage() {
        let c = u64::from(CHUNK_SIZE);
        let table = vec![(0, Digest::of(b"a")), (5, Digest::of(b"b"))];
        let m = manifest_with(&table, 6 * c);
        assert_eq!(decode_table(&m).unwrap(), table);
        check_manifest(&m).unwrap();

        let mut bad = m.clone();
        bad.chunks_digest = Digest::of(b"other");
        assert_eq!(
            decode_table(&bad).unwrap_err().to_string(),
            "backup 00000000-0000-0000-0000-000000000009: damaged manifest: chunk table does \
             not match its digest"
        );
        // A slot past the volume's end, and slots out of order.
        let past = manifest_with(&table, 5 * c);
        assert!(
            decode_table(&past)
                .unwrap_err()
                .to_string()
                .contains("out of order or past")
        );
        let unordered = manifest_with(&[(3, Digest::of(b"a")), (1, Digest::of(b"b"))], 6 * c);
        assert!(decode_table(&unordered).is_err());
        let mut garbage = m.clone();
        garbage.chunks = "not base64!".into();
        assert!(
            decode_table(&garbage)
                .unwrap_err()
                .to_string()
                .contains("not base64")
        );
        let mut newer = m;
        newer.version = 2;
        assert_eq!(
            check_manifest(&newer).unwrap_err().to_string(),
            "backup 00000000-0000-0000-0000-000000000009: manifest format \"cinderblock.backup\" \
             version 2 is not one this cinderblock reads"
        );
    }

    #[test]
    fn pack_trailer_and_index_round_trip() {
        let entries = vec![
            BlobEntry {
                id: Digest::of(b"a"),
                codec: Codec::Zstd,
                stored_len: 10,
                raw_len: 65536,
            },
            BlobEntry {
                id: Digest::of(b"b"),
                codec: Codec::None,
                stored_len: 20,
                raw_len: 20,
            },
        ];
        let trailer = encode_pack_trailer(&entries);
        let file_len = 30 + trailer.len() as u64;
        let footer: [u8; 12] = trailer[trailer.len() - 12..].try_into().unwrap();
        assert_eq!(
            pack_trailer_len(&footer, file_len),
            Some(trailer.len() as u64)
        );
        assert_eq!(
            decode_pack_trailer(&trailer, file_len),
            Some(entries.clone())
        );
        assert_eq!(decode_pack_trailer(&trailer, file_len + 1), None);
        let index = encode_index(&[(Digest::of(b"pack"), entries.clone())]);
        assert_eq!(
            decode_index(&index),
            Some(vec![(Digest::of(b"pack"), entries)])
        );
        assert_eq!(decode_index(&index[..index.len() - 1]), None);
        let mut streamed = Vec::new();
        assert!(read_index(&mut index.as_slice(), |p, e| streamed.push((p, e))).unwrap());
        assert_eq!(streamed, decode_index(&index).unwrap());
        let cut = &index[..index.len() - 1];
        assert!(!read_index(&mut &cut[..], |_, _| {}).unwrap());
        assert!(!read_index(&mut &b"CBINDX02"[..], |_, _| {}).unwrap());
        assert!(read_index(&mut &INDEX_MAGIC[..], |_, _| panic!("no packs")).unwrap());
    }
}
