//! Identity metadata of `file` back end objects: the sidecar JSON files.
//!
//! Layout inside a back end root:
//! ```text
//! ROOT/volume-<uuid>                 data (also snapshot-<uuid>, image-<uuid>)
//! ROOT/.cinderblock/<uuid>.json      its metadata (ObjectMeta, versioned)
//! ROOT/.cinderblock/.<uuid>.json.tmp-<pid>-<n>   a crashed sidecar write (harmless)
//! ```
//! Paths are built from the kind and the uuid only; the manifest name is data
//! inside the sidecar and never reaches a path.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::FileError;
use crate::model::{Mark, ObjKind};
use crate::state::atomic::write_atomic;

/// Hidden directory holding the sidecars, in the back end root.
pub const META_DIR: &str = ".cinderblock";
/// The sidecar `format` tag.
pub const META_FORMAT: &str = "cinderblock.file-object";
/// The sidecar schema version this build reads and writes.
pub const META_VERSION: u32 = 1;
/// The owner mark's `managedBy` value.
pub const MANAGED_BY: &str = "cinderblock";
/// The owner mark of objects cinderblock created and then let go of
/// (`deletionPolicy: Retain`): kept for people to read, foreign to us.
pub const RELEASED_BY: &str = "cinderblock-released";

/// The data file name of an object of kind `kind`: `volume-<uuid>`,
/// `snapshot-<uuid>`, `image-<uuid>` (Cinder's naming).
pub fn file_name(kind: ObjKind, uuid: Uuid) -> String {
    format!("{}-{}", kind.as_str(), uuid.hyphenated())
}

/// Parses a data file name (`volume-<uuid>` etc., lowercase hyphenated).
pub fn parse_file_name(name: &str) -> Option<(ObjKind, Uuid)> {
    let (prefix, id) = name.split_once('-')?;
    let kind = ObjKind::parse(prefix)?;
    let uuid = Uuid::try_parse(id).ok()?;
    // Only the exact spelling we write counts as ours.
    (uuid.hyphenated().to_string() == id).then_some((kind, uuid))
}

/// How space is reserved for a volume file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Allocation {
    /// `ftruncate`: blocks allocated on first write.
    Sparse,
    /// `fallocate`: every block reserved up front.
    Preallocated,
}

/// What marks an object as a migration's target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MigrationMark {
    /// This migration's identity (its journal checkpoints carry it).
    pub id: Uuid,
    /// The back end the volume is moving from.
    pub from: String,
}

/// The ownership mark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Owner {
    /// Always [`MANAGED_BY`].
    pub managed_by: String,
    /// The back end (its manifest name) that owns the object.
    pub backend: String,
}

/// What an object was created from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRef {
    /// Its kind.
    pub kind: ObjKind,
    /// Its uuid.
    pub uuid: Uuid,
}

/// An object's sidecar metadata (schema version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// Always [`META_FORMAT`].
    pub format: String,
    /// Always [`META_VERSION`] for what this build writes.
    pub version: u32,
    /// Identity; also names the data and sidecar files.
    pub uuid: Uuid,
    /// The manifest name: data only, never part of a path.
    pub name: String,
    /// Volume, snapshot or image.
    pub kind: ObjKind,
    /// Ownership mark.
    pub owner: Owner,
    /// Logical size in bytes.
    pub size: u64,
    /// How the data file's space was reserved at creation.
    pub allocation: Allocation,
    /// What it was created from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceRef>,
    /// For snapshots: the volume it is a snapshot of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Uuid>,
    /// When creation started (UTC).
    pub created_at: DateTime<Utc>,
    /// Its mark: where it is in its life.
    pub state: Mark,
    /// Set while the object is a migration's target; gone once the volume
    /// has moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationMark>,
    /// The data file's name when it is not `<kind>-<uuid>`: an adopted
    /// file keeps the name it had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The consistency group a volume belongs to
    /// ([`crate::driver::Driver::set_group`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl ObjectMeta {
    /// The data file name.
    pub fn file_name(&self) -> String {
        self.file
            .clone()
            .unwrap_or_else(|| file_name(self.kind, self.uuid))
    }

    /// Whether `backend` owns this object.
    pub fn owned_by(&self, backend: &str) -> bool {
        self.owner.managed_by == MANAGED_BY && self.owner.backend == backend
    }
}

/// `ROOT/.cinderblock`.
pub fn meta_dir(root: &Path) -> PathBuf {
    root.join(META_DIR)
}

/// `ROOT/.cinderblock/<uuid>.json`.
pub fn sidecar_path(root: &Path, uuid: Uuid) -> PathBuf {
    meta_dir(root).join(format!("{}.json", uuid.hyphenated()))
}

/// Reads a sidecar; `Ok(None)` when there is none.
pub fn read_sidecar(root: &Path, uuid: Uuid) -> Result<Option<ObjectMeta>, FileError> {
    let path = sidecar_path(root, uuid);
    match fs::read(&path) {
        Ok(bytes) => parse_sidecar(&path, &bytes).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FileError::Io {
            op: "read",
            path,
            source,
        }),
    }
}

/// Parses and checks a sidecar's bytes.
pub fn parse_sidecar(path: &Path, bytes: &[u8]) -> Result<ObjectMeta, FileError> {
    // A newer schema is named as such, not as a parse error.
    #[derive(Deserialize)]
    struct Header {
        format: String,
        version: u32,
    }
    let bad = |source| FileError::BadMetadata {
        path: path.to_owned(),
        source,
    };
    let version_error = |format: String, version: u32| FileError::MetadataVersion {
        path: path.to_owned(),
        format,
        version,
    };
    // One parse for the common case (thousands per discovery); the header
    // alone only when the whole does not parse.
    match serde_json::from_slice::<ObjectMeta>(bytes) {
        Ok(m) if m.format == META_FORMAT && m.version == META_VERSION => Ok(m),
        Ok(m) => Err(version_error(m.format, m.version)),
        Err(whole) => {
            let header: Header = serde_json::from_slice(bytes).map_err(bad)?;
            if header.format != META_FORMAT || header.version != META_VERSION {
                return Err(version_error(header.format, header.version));
            }
            Err(bad(whole))
        }
    }
}

/// Writes a sidecar atomically (temp, fsync, rename, fsync directory).
pub fn write_sidecar(root: &Path, meta: &ObjectMeta) -> Result<(), FileError> {
    let path = sidecar_path(root, meta.uuid);
    let mut bytes = serde_json::to_vec_pretty(meta).map_err(|source| FileError::BadMetadata {
        path: path.clone(),
        source,
    })?;
    bytes.push(b'\n');
    write_atomic(&path, &bytes).map_err(|source| FileError::Metadata { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_and_reject_lookalikes() {
        let id = Uuid::from_u128(0xabcd);
        let name = file_name(ObjKind::Snapshot, id);
        assert_eq!(name, "snapshot-00000000-0000-0000-0000-00000000abcd");
        assert_eq!(parse_file_name(&name), Some((ObjKind::Snapshot, id)));
        for other in [
            "volume-00000000-0000-0000-0000-00000000ABCD",
            "volume-0000000000000000000000000000abcd",
            "volume-00000000-0000-0000-0000-00000000abcd.tmp",
            "_snapshot-00000000-0000-0000-0000-00000000abcd",
            "volume-",
            "notes.txt",
        ] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }

    /// Pins sidecar format version 1.
    #[test]
    fn golden_sidecar_v1() {
        let meta = ObjectMeta {
            format: META_FORMAT.into(),
            version: 1,
            uuid: Uuid::from_u128(2),
            name: "db-snap".into(),
            kind: ObjKind::Snapshot,
            owner: Owner {
                managed_by: MANAGED_BY.into(),
                backend: "nfs-a".into(),
            },
            size: 10_737_418_240,
            allocation: Allocation::Sparse,
            source: Some(SourceRef {
                kind: ObjKind::Volume,
                uuid: Uuid::from_u128(1),
            }),
            parent: Some(Uuid::from_u128(1)),
            created_at: "2026-01-02T03:04:05Z".parse().unwrap(),
            state: Mark::Ready,
            migration: None,
            file: None,
            group: None,
        };
        let golden = r#"{
  "format": "cinderblock.file-object",
  "version": 1,
  "uuid": "00000000-0000-0000-0000-000000000002",
  "name": "db-snap",
  "kind": "snapshot",
  "owner": {
    "managedBy": "cinderblock",
    "backend": "nfs-a"
  },
  "size": 10737418240,
  "allocation": "sparse",
  "source": {
    "kind": "volume",
    "uuid": "00000000-0000-0000-0000-000000000001"
  },
  "parent": "00000000-0000-0000-0000-000000000001",
  "createdAt": "2026-01-02T03:04:05Z",
  "state": "ready"
}"#;
        assert_eq!(serde_json::to_string_pretty(&meta).unwrap(), golden);
        assert_eq!(
            parse_sidecar(Path::new("x.json"), golden.as_bytes()).unwrap(),
            meta
        );
        let newer = golden.replace("\"version\": 1", "\"version\": 2");
        let err = parse_sidecar(Path::new("x.json"), newer.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.json: metadata format \"cinderblock.file-object\" version 2 is not one this \
             cinderblock reads"
        );
    }
}
