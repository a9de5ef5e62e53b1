//! Whole-file replacement with fsync, and the versioned state envelope.
//!
//! Owns [`write_atomic`] (used for state files and for the `file` back end's
//! sidecars) and the envelope every state file is wrapped in:
//!
//! ```json
//! {"format":"cinderblock.state","version":1,"generation":7, ...payload fields}
//! ```
//!
//! Invariants:
//! - A reader sees the old file or the new one, never a mix: write a temp file
//!   in the same directory, `fsync` it, `rename` over the target, `fsync` the
//!   directory (so the rename itself survives a power cut).
//! - A state file's `generation` never goes backwards: storing an older
//!   generation than the one on disk is refused; the same generation is
//!   accepted only with identical bytes (an idempotent retry), because two
//!   different contents under one generation mean two writers diverged
//!   (omicron's ledger rule).
//! - `version` is the payload's schema version; a file written by a newer
//!   cinderblock is refused rather than misread.
//!
//! Must not: take the state lock (callers hold it; the generation check is a
//! read-then-write and relies on it), or pick file names from manifest data.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The `format` tag of every state file.
pub const FORMAT: &str = "cinderblock.state";

/// Errors reading or replacing a state file.
#[derive(Debug, thiserror::Error)]
pub enum AtomicError {
    /// A filesystem operation failed.
    #[error("{op} {path}")]
    Io {
        /// What we were doing ("write", "rename", "fsync directory", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is not valid JSON of the expected shape.
    #[error("{path} is not a valid state file")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The payload could not be serialised.
    #[error("cannot serialise the state for {path}")]
    Serialize {
        /// The target file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The `format` field is not ours.
    #[error("{path} has format {found:?}, expected {FORMAT:?}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What it says.
        found: String,
    },
    /// The schema version is not the one this build reads.
    #[error("{path} has state version {found}, this cinderblock reads version {expected}{}",
        if found > expected { " (written by a newer cinderblock)" } else { "" })]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// The version asked for.
        expected: u32,
    },
    /// Storing would move the generation backwards (or rewrite one).
    #[error(
        "refusing to write generation {attempted} to {path}: it holds generation {current}{}",
        if attempted == current { " with different content" } else { "" }
    )]
    StaleGeneration {
        /// The file.
        path: PathBuf,
        /// The generation on disk.
        current: u64,
        /// The generation we tried to write.
        attempted: u64,
    },
}

/// The header fields of a state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// Payload schema version.
    pub version: u32,
    /// Monotonic write counter.
    pub generation: u64,
}

/// A payload with its header, flattened into one JSON object on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Always [`FORMAT`].
    pub format: String,
    /// Payload schema version.
    pub version: u32,
    /// Monotonic write counter.
    pub generation: u64,
    /// The state itself; its fields sit beside the header.
    #[serde(flatten)]
    pub payload: T,
}

/// Replaces `path` with `bytes` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AtomicError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let io_err = |op, p: &Path| {
        let p = p.to_owned();
        move |source| AtomicError::Io {
            op,
            path: p,
            source,
        }
    };
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| AtomicError::Io {
            op: "name",
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "no file name"),
        })?
        .to_string_lossy();
    // Hidden, unique per process and call; leftovers from a crash are
    // recognisable by the `.tmp-` infix.
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        file.write_all(bytes).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("rename", path))
    })();
    if result.is_err() {
        // Best effort; a leftover temp file is harmless.
        let _ = fs::remove_file(&tmp);
    }
    result?;
    fsync_dir(&dir)
}

/// `fsync` on a directory, so entries created, renamed or removed in it are
/// durable.
pub fn fsync_dir(dir: &Path) -> Result<(), AtomicError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| AtomicError::Io {
            op: "fsync directory",
            path: dir.to_owned(),
            source,
        })
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Reads only the header of a state file (for migrations and diagnostics);
/// `Ok(None)` when the file does not exist.
pub fn read_header(path: &Path) -> Result<Option<Header>, AtomicError> {
    let Some(bytes) = read_optional(path)? else {
        return Ok(None);
    };
    let header: Header = serde_json::from_slice(&bytes).map_err(|source| AtomicError::Parse {
        path: path.to_owned(),
        source,
    })?;
    check_format(path, &header.format)?;
    Ok(Some(header))
}

/// Loads a state file of schema `version`; `Ok(None)` when it does not exist.
pub fn load<T: DeserializeOwned>(
    path: &Path,
    version: u32,
) -> Result<Option<Envelope<T>>, AtomicError> {
    let Some(bytes) = read_optional(path)? else {
        return Ok(None);
    };
    decode(path, &bytes, version).map(Some)
}

/// Parses the bytes of the state file `path` (named in errors) as schema
/// `version`: what [`load`] does once the file is read.
pub fn decode<T: DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
    version: u32,
) -> Result<Envelope<T>, AtomicError> {
    let parse_err = |source| AtomicError::Parse {
        path: path.to_owned(),
        source,
    };
    // Header first, so a newer version is reported as such rather than as a
    // payload parse error.
    let header: Header = serde_json::from_slice(bytes).map_err(parse_err)?;
    check_format(path, &header.format)?;
    if header.version != version {
        return Err(AtomicError::Version {
            path: path.to_owned(),
            found: header.version,
            expected: version,
        });
    }
    serde_json::from_slice(bytes).map_err(parse_err)
}

/// Stores `payload` as `version`/`generation`, refusing to go backwards.
/// Returns whether the file changed (`false`: same generation, same bytes).
pub fn store<T: Serialize>(
    path: &Path,
    version: u32,
    generation: u64,
    payload: &T,
) -> Result<bool, AtomicError> {
    let envelope = Envelope {
        format: FORMAT.to_owned(),
        version,
        generation,
        payload,
    };
    let mut bytes =
        serde_json::to_vec_pretty(&envelope).map_err(|source| AtomicError::Serialize {
            path: path.to_owned(),
            source,
        })?;
    bytes.push(b'\n');
    if let Some(existing) = read_optional(path)? {
        let header: Header =
            serde_json::from_slice(&existing).map_err(|source| AtomicError::Parse {
                path: path.to_owned(),
                source,
            })?;
        check_format(path, &header.format)?;
        let stale = generation < header.generation
            || (generation == header.generation && existing != bytes);
        if stale {
            return Err(AtomicError::StaleGeneration {
                path: path.to_owned(),
                current: header.generation,
                attempted: generation,
            });
        }
        if generation == header.generation {
            return Ok(false);
        }
    }
    write_atomic(path, &bytes)?;
    Ok(true)
}

fn check_format(path: &Path, found: &str) -> Result<(), AtomicError> {
    if found == FORMAT {
        Ok(())
    } else {
        Err(AtomicError::Format {
            path: path.to_owned(),
            found: found.to_owned(),
        })
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, AtomicError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AtomicError::Io {
            op: "read",
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    struct Placements {
        placements: BTreeMap<String, String>,
    }

    fn sample() -> Placements {
        Placements {
            placements: BTreeMap::from([
                ("db".to_owned(), "nfs-a".to_owned()),
                ("web".to_owned(), "local".to_owned()),
            ]),
        }
    }

    /// Pins the envelope layout: changing it breaks every state directory.
    #[test]
    fn golden_envelope_v1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("placements.json");
        assert!(store(&path, 1, 3, &sample()).unwrap());
        let golden = r#"{
  "format": "cinderblock.state",
  "version": 1,
  "generation": 3,
  "placements": {
    "db": "nfs-a",
    "web": "local"
  }
}
"#;
        assert_eq!(fs::read_to_string(&path).unwrap(), golden);
        let loaded: Envelope<Placements> = load(&path, 1).unwrap().unwrap();
        assert_eq!(loaded.generation, 3);
        assert_eq!(loaded.payload, sample());
    }

    #[test]
    fn generation_never_goes_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        store(&path, 1, 5, &sample()).unwrap();
        let err = store(&path, 1, 4, &sample()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "refusing to write generation 4 to {}: it holds generation 5",
                path.display()
            )
        );
        // Same generation: a retry with the same bytes is a no-op...
        assert!(!store(&path, 1, 5, &sample()).unwrap());
        // ...different bytes are refused.
        let mut other = sample();
        other.placements.clear();
        let err = store(&path, 1, 5, &other).unwrap_err();
        assert!(err.to_string().ends_with("with different content"), "{err}");
        assert!(store(&path, 1, 6, &other).unwrap());
        let loaded: Envelope<Placements> = load(&path, 1).unwrap().unwrap();
        assert_eq!((loaded.generation, loaded.payload), (6, other));
    }

    #[test]
    fn missing_file_is_none_and_newer_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        assert!(load::<Placements>(&path, 1).unwrap().is_none());
        assert!(read_header(&path).unwrap().is_none());
        store(&path, 2, 1, &sample()).unwrap();
        let err = load::<Placements>(&path, 1).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("has state version 2, this cinderblock reads version 1 (written by a newer cinderblock)"),
            "{err}"
        );
        assert_eq!(read_header(&path).unwrap().unwrap().version, 2);
    }

    #[test]
    fn foreign_json_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        fs::write(
            &path,
            r#"{"format":"terraform","version":1,"generation":1}"#,
        )
        .unwrap();
        let err = store(&path, 1, 2, &sample()).unwrap_err();
        assert!(matches!(err, AtomicError::Format { .. }), "{err:?}");
        assert!(fs::read_to_string(&path).unwrap().contains("terraform"));
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["f"]);
        let err = write_atomic(&dir.path().join("no/such/dir/f"), b"x").unwrap_err();
        assert!(err.to_string().starts_with("create "), "{err}");
    }
}
