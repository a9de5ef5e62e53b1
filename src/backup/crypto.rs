//! Encryption of a repository (format version 2): every pack blob, pack
//! trailer, index file and manifest sealed with XChaCha20-Poly1305, chunk
//! ids keyed, and the data key wrapped by the user's key.
//!
//! - **The data key** is 32 random bytes made when the repository is
//!   created. Two keys are derived from it with BLAKE3's `derive_key`: the
//!   AEAD key, and the key of the chunk ids (keyed BLAKE3), so the target
//!   sees neither content nor content hashes — equal chunks of two
//!   repositories have different ids.
//! - **Sealed** means `nonce (24 random bytes) | ciphertext | tag (16)`,
//!   with associated data that binds the bytes to their place: a blob to its
//!   chunk id, a manifest to its backup id, a trailer and an index to their
//!   kind. A flipped bit anywhere, or bytes moved to another place, fail to
//!   open. 192-bit random nonces never repeat in practice (that is why
//!   `XChaCha` and not `ChaCha` with 96 bits).
//! - **Key files** (`keys/<uuid>.json`) hold the data key wrapped (sealed)
//!   under a key derived from the user's secret with Argon2id (its
//!   parameters and salt in the file), bound to the repository's id.
//!   Opening tries each key file; none opening is a wrong key, found before
//!   anything is read or written. Rotation writes a new key file for the
//!   new secret and removes the old one: no data is rewritten.
//!
//! Must not: log or print a key or secret; use a nonce twice (each seal
//! draws a fresh one).

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::format::Digest;

/// Bytes a seal adds: the nonce and the tag.
pub const SEAL_OVERHEAD: usize = 24 + 16;
/// `format` of a key file.
pub const KEY_FORMAT: &str = "cinderblock.backup-key";
/// The AEAD's name in the config.
pub const AEAD: &str = "xchacha20poly1305";
/// The key derivation's name in key files.
pub const KDF: &str = "argon2id";

/// Associated data of each kind of sealed object.
#[derive(Debug, Clone, Copy)]
pub enum Place<'a> {
    /// A chunk in a pack, by its (keyed) id.
    Blob(&'a Digest),
    /// A pack's trailer.
    Trailer,
    /// An index file.
    Index,
    /// A manifest, by its backup id.
    Manifest(Uuid),
    /// The wrapped data key of repository `id`.
    Key(Uuid),
}

impl Place<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut v = b"cinderblock/".to_vec();
        match self {
            Place::Blob(id) => {
                v.extend_from_slice(b"blob/");
                v.extend_from_slice(&id.0);
            }
            Place::Trailer => v.extend_from_slice(b"trailer"),
            Place::Index => v.extend_from_slice(b"index"),
            Place::Manifest(id) => {
                v.extend_from_slice(b"manifest/");
                v.extend_from_slice(id.as_bytes());
            }
            Place::Key(id) => {
                v.extend_from_slice(b"key/");
                v.extend_from_slice(id.as_bytes());
            }
        }
        v
    }
}

/// The keys of an open encrypted repository.
#[derive(Clone)]
pub struct Crypto {
    aead: XChaCha20Poly1305,
    id_key: [u8; 32],
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Crypto(..)")
    }
}

/// A data key (32 bytes).
pub type DataKey = [u8; 32];

impl Crypto {
    /// The keys derived from data key `master`.
    pub fn new(master: &DataKey) -> Self {
        let aead_key = blake3::derive_key("cinderblock backup repository v2 aead key", master);
        let id_key = blake3::derive_key("cinderblock backup repository v2 chunk id key", master);
        Self {
            aead: XChaCha20Poly1305::new(&aead_key.into()),
            id_key,
        }
    }

    /// A fresh random data key.
    pub fn generate_key() -> DataKey {
        let k = chacha20poly1305::Key::generate();
        k.into()
    }

    /// The id of a chunk: BLAKE3 keyed with the repository's id key.
    pub fn chunk_id(&self, bytes: &[u8]) -> Digest {
        Digest(*blake3::keyed_hash(&self.id_key, bytes).as_bytes())
    }

    /// `nonce | ciphertext | tag` of `plain` at `place`.
    pub fn seal(&self, place: Place<'_>, plain: &[u8]) -> Vec<u8> {
        seal_with(&self.aead, place, plain)
    }

    /// The plaintext of `sealed` at `place`; `None` when it is damaged,
    /// moved, or sealed under another key.
    pub fn open(&self, place: Place<'_>, sealed: &[u8]) -> Option<Vec<u8>> {
        open_with(&self.aead, place, sealed)
    }
}

fn seal_with(cipher: &XChaCha20Poly1305, place: Place<'_>, plain: &[u8]) -> Vec<u8> {
    let nonce = XNonce::generate();
    let aad = place.aad();
    // Encryption fails only for messages past 256 GiB; ours are at most a
    // pack's trailer or a manifest.
    let ct = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plain,
                aad: &aad,
            },
        )
        .unwrap_or_default();
    let mut out = Vec::with_capacity(nonce.len() + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

fn open_with(cipher: &XChaCha20Poly1305, place: Place<'_>, sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < SEAL_OVERHEAD {
        return None;
    }
    let (nonce, ct) = sealed.split_at(24);
    let nonce = XNonce::try_from(nonce).ok()?;
    let aad = place.aad();
    cipher.decrypt(&nonce, Payload { msg: ct, aad: &aad }).ok()
}

/// A user's key as read from its `keyRef`, with where it came from (for
/// messages; the secret itself is never shown).
#[derive(Clone)]
pub struct RepoKey {
    /// The secret.
    pub secret: String,
    /// `file /etc/k` or `environment variable K`.
    pub from: String,
}

impl std::fmt::Debug for RepoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RepoKey(from {})", self.from)
    }
}

/// Argon2id parameters of a key file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KdfParams {
    /// Always [`KDF`].
    pub algorithm: String,
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
    /// Base64 of 16 random bytes.
    pub salt: String,
}

/// `keys/<uuid>.json`: the data key wrapped under a user's secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyFile {
    /// Always [`KEY_FORMAT`].
    pub format: String,
    /// Always 1.
    pub version: u32,
    /// How the wrapping key comes from the secret.
    pub kdf: KdfParams,
    /// Base64 of the sealed data key.
    pub wrapped: String,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

/// Argon2id's memory cost for new key files: its recommended minimum
/// (19 MiB, two passes), a fraction of a second per open.
const KDF_MEMORY_KIB: u32 = 19 * 1024;
const KDF_ITERATIONS: u32 = 2;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn wrapping_key(secret: &str, kdf: &KdfParams) -> Option<XChaCha20Poly1305> {
    if kdf.algorithm != KDF {
        return None;
    }
    let salt = b64().decode(&kdf.salt).ok()?;
    let params =
        argon2::Params::new(kdf.memory_kib, kdf.iterations, kdf.parallelism, Some(32)).ok()?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    argon
        .hash_password_into(secret.as_bytes(), &salt, &mut out)
        .ok()?;
    Some(XChaCha20Poly1305::new(&out.into()))
}

/// Wraps `master` of repository `repo` under `secret`.
pub fn wrap(master: &DataKey, secret: &str, repo: Uuid) -> Option<KeyFile> {
    let salt: [u8; 16] = *Uuid::new_v4().as_bytes();
    let kdf = KdfParams {
        algorithm: KDF.to_owned(),
        memory_kib: KDF_MEMORY_KIB,
        iterations: KDF_ITERATIONS,
        parallelism: 1,
        salt: b64().encode(salt),
    };
    let kek = wrapping_key(secret, &kdf)?;
    Some(KeyFile {
        format: KEY_FORMAT.to_owned(),
        version: 1,
        kdf,
        wrapped: b64().encode(seal_with(&kek, Place::Key(repo), master)),
        created_at: Utc::now(),
    })
}

/// The data key of repository `repo` if `secret` opens `kf`.
pub fn unwrap(kf: &KeyFile, secret: &str, repo: Uuid) -> Option<DataKey> {
    if kf.format != KEY_FORMAT || kf.version != 1 {
        return None;
    }
    let kek = wrapping_key(secret, &kf.kdf)?;
    let sealed = b64().decode(&kf.wrapped).ok()?;
    open_with(&kek, Place::Key(repo), &sealed)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_opens_only_in_its_place_and_untouched() {
        let c = Crypto::new(&[7u8; 32]);
        let id = Digest::of(b"x");
        let sealed = c.seal(Place::Blob(&id), b"chunk bytes");
        assert_eq!(sealed.len(), 11 + SEAL_OVERHEAD);
        assert_eq!(
            c.open(Place::Blob(&id), &sealed).as_deref(),
            Some(&b"chunk bytes"[..])
        );
        assert_ne!(
            c.seal(Place::Blob(&id), b"chunk bytes"),
            sealed,
            "fresh nonce"
        );
        // Another place, another key, or any flipped bit: refused.
        assert!(c.open(Place::Blob(&Digest::of(b"y")), &sealed).is_none());
        assert!(c.open(Place::Index, &sealed).is_none());
        assert!(
            Crypto::new(&[8u8; 32])
                .open(Place::Blob(&id), &sealed)
                .is_none()
        );
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(c.open(Place::Blob(&id), &bad).is_none(), "bit at byte {i}");
        }
        // Keyed ids: not the plain hash, and another key gives another id.
        assert_ne!(c.chunk_id(b"x"), Digest::of(b"x"));
        assert_ne!(c.chunk_id(b"x"), Crypto::new(&[8u8; 32]).chunk_id(b"x"));
    }

    #[test]
    fn key_files_open_with_their_secret_and_repository_only() {
        let master = Crypto::generate_key();
        let repo = Uuid::new_v4();
        let kf = wrap(&master, "correct horse", repo).unwrap();
        assert_eq!(unwrap(&kf, "correct horse", repo), Some(master));
        assert_eq!(unwrap(&kf, "wrong horse", repo), None);
        assert_eq!(unwrap(&kf, "correct horse", Uuid::new_v4()), None);
        let text = serde_json::to_string(&kf).unwrap();
        assert!(!text.contains("correct horse"));
    }
}
