//! JSON Schemas of the manifests, generated from the wire structs.
//!
//! One schema per kind (`volume.json`, …) plus `manifest.json`, which accepts
//! any document and picks the kind's schema by `kind` (editors point
//! `# yaml-language-server: $schema=` at it). The checked-in `schemas/`
//! directory must equal [`generate`]'s output; a test fails on drift.

use std::collections::BTreeMap;

use schemars::{JsonSchema, generate::SchemaSettings};
use serde_json::{Value, json};

use crate::manifest::Kind;
use crate::manifest::kinds::{
    API_VERSION, BackendSpec, BackupPolicySpec, ConsistencyGroupSpec, ImageSpec, Metadata,
    SchedulerPolicySpec, SnapshotSpec, VolumeSpec, VolumeTypeSpec,
};

/// File name of a kind's schema: `Backend` → `backend.json`.
pub fn file_name(kind: Kind) -> String {
    let mut out = String::new();
    for (i, c) in kind.as_str().chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out + ".json"
}

fn kind_schema<S: JsonSchema>(kind: Kind, spec_required: bool) -> Value {
    let settings = SchemaSettings::draft2020_12();
    let mut generator = settings.into_generator();
    let spec = generator.subschema_for::<S>();
    let metadata = generator.subschema_for::<Metadata>();
    let defs: BTreeMap<String, Value> = generator.take_definitions(true).into_iter().collect();
    let mut required = vec!["apiVersion", "kind", "metadata"];
    if spec_required {
        required.push("spec");
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",

        "title": kind.as_str(),
        "description": format!("A cinderblock {} manifest ({API_VERSION}).", kind.as_str()),
        "type": "object",
        "additionalProperties": false,
        "required": required,
        "properties": {
            "apiVersion": {"const": API_VERSION, "description": "The manifest API version."},
            "kind": {"const": kind.as_str(), "description": "The kind of object."},
            "metadata": metadata,
            "spec": spec,
        },
        "$defs": defs,
    })
}

/// Every schema file: name → JSON document.
pub fn generate() -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for kind in Kind::ALL {
        let schema = match kind {
            Kind::Backend => kind_schema::<BackendSpec>(kind, true),
            Kind::VolumeType => kind_schema::<VolumeTypeSpec>(kind, false),
            Kind::SchedulerPolicy => kind_schema::<SchedulerPolicySpec>(kind, false),
            Kind::Volume => kind_schema::<VolumeSpec>(kind, true),
            Kind::Snapshot => kind_schema::<SnapshotSpec>(kind, true),
            Kind::BackupPolicy => kind_schema::<BackupPolicySpec>(kind, true),
            Kind::ConsistencyGroup => kind_schema::<ConsistencyGroupSpec>(kind, true),
            Kind::Image => kind_schema::<ImageSpec>(kind, true),
        };
        out.insert(file_name(kind), schema);
    }
    let branches: Vec<Value> = Kind::ALL
        .iter()
        .map(|k| {
            json!({
                "if": {"properties": {"kind": {"const": k.as_str()}}, "required": ["kind"]},
                "then": {"$ref": file_name(*k)}
            })
        })
        .collect();
    let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    out.insert(
        "manifest.json".to_owned(),
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",

            "title": "cinderblock manifest",
            "description": format!("Any cinderblock manifest ({API_VERSION}); the schema of its kind applies."),
            "type": "object",
            "required": ["apiVersion", "kind"],
            "properties": {
                "apiVersion": {"const": API_VERSION},
                "kind": {"enum": kinds}
            },
            "allOf": branches,
        }),
    );
    out
}

/// Renders one schema as checked in: pretty JSON with a trailing newline.
pub fn render(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}
