//! The recorded state: what cinderblock created and the deletion policy it
//! was last applied with, per object identity.
//!
//! Identity and placement also live on the back ends (sidecars, LV tags); this
//! record adds what the host cannot tell: the `deletionPolicy` in force when
//! the object was last applied (the manifest is gone when it matters), and
//! which objects existed (so one removed outside cinderblock is reported as
//! lost instead of silently recreated empty). Losing it is safe: every
//! object then counts as `Retain` and the next plan records it again.
//!
//! Stored as `state.json` in the state directory through [`super::atomic`]
//! (versioned envelope, generation never going backwards).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::atomic::{self, AtomicError};
use crate::manifest::kinds::DeletionPolicy;
use crate::model::ObjKind;

/// File name in the state directory.
pub const STATE_FILE: &str = "state.json";
/// Version of the payload this build reads and writes.
pub const STATE_VERSION: u32 = 1;

/// One object cinderblock created (or adopted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecordedObject {
    /// Volume, snapshot or image.
    pub kind: ObjKind,
    /// The manifest name.
    pub name: String,
    /// The back end (manifest name) holding it.
    pub backend: String,
    /// Logical size in bytes when last applied.
    pub size: u64,
    /// The deletion policy it was last applied with.
    pub deletion_policy: DeletionPolicy,
    /// The consistency group a volume was last applied in: a member's delete
    /// is refused while this names a group, even after its manifest is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency_group: Option<String>,
}

/// The whole record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Recorded {
    /// Objects by identity.
    #[serde(default)]
    pub objects: BTreeMap<Uuid, RecordedObject>,
    /// Id of the last plan applied, when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_plan: Option<Uuid>,
}

/// The record as loaded, with the generation to write next.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    /// The record.
    pub recorded: Recorded,
    /// Generation of what was loaded (0 when there was no file).
    pub generation: u64,
}

impl Ledger {
    /// Loads `DIR/state.json` (an empty record when absent).
    pub fn load(dir: &Path) -> Result<Ledger, AtomicError> {
        let path = dir.join(STATE_FILE);
        Ok(match atomic::load::<Recorded>(&path, STATE_VERSION)? {
            Some(env) => Ledger {
                recorded: env.payload,
                generation: env.generation,
            },
            None => Ledger::default(),
        })
    }

    /// Writes the record as the next generation.
    pub fn save(&mut self, dir: &Path) -> Result<(), AtomicError> {
        let next = self.generation + 1;
        atomic::store(&dir.join(STATE_FILE), STATE_VERSION, next, &self.recorded)?;
        self.generation = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the on-disk format: a change that breaks reading this file needs
    /// a new `STATE_VERSION` and a migration.
    #[test]
    fn reads_and_rewrites_the_version_1_golden_file() {
        let golden = include_str!("../../tests/fixtures/state/state-v1.json");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), golden).unwrap();
        let mut ledger = Ledger::load(dir.path()).unwrap();
        assert_eq!(ledger.generation, 7);
        let app = &ledger.recorded.objects[&"0b1e9b5a-4f51-4d43-9c7c-6f6f1f2f3f4f"
            .parse::<Uuid>()
            .unwrap()];
        assert_eq!(app.kind, ObjKind::Volume);
        assert_eq!(app.size, 1 << 30);
        assert_eq!(app.deletion_policy, DeletionPolicy::Retain);
        ledger.save(dir.path()).unwrap();
        let written = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        let a: serde_json::Value = serde_json::from_str(&written).unwrap();
        let mut b: serde_json::Value = serde_json::from_str(golden).unwrap();
        b["generation"] = 8.into();
        assert_eq!(a, b, "the written state differs from the golden file");
    }

    #[test]
    fn a_newer_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let newer = include_str!("../../tests/fixtures/state/state-v1.json")
            .replace("\"version\": 1", "\"version\": 2");
        std::fs::write(dir.path().join(STATE_FILE), newer).unwrap();
        let err = Ledger::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("version"), "{err}");
    }
}
