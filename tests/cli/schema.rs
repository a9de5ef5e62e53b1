//! The checked-in `schemas/` equals what `cinderblock schema` writes, and an
//! outside validator accepts every example against it.

use std::path::Path;

use crate::support::{root, run_in};

#[test]
fn checked_in_schemas_are_current() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_in(tmp.path(), &["schema", "--out", "out"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut names: Vec<String> = std::fs::read_dir(tmp.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut checked_in: Vec<String> = std::fs::read_dir(root().join("schemas"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    checked_in.sort();
    assert_eq!(
        names, checked_in,
        "schemas/ has other files than `cinderblock schema` writes"
    );
    for name in names {
        let fresh = std::fs::read_to_string(tmp.path().join("out").join(&name)).unwrap();
        let kept = std::fs::read_to_string(root().join("schemas").join(&name)).unwrap();
        assert!(
            fresh == kept,
            "schemas/{name} is out of date: run `cargo run -- schema --out schemas` and commit it"
        );
    }
}

/// Splits every example into one JSON file per document for the validator.
fn example_documents(out: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for dir in ["quickstart", "lvm-two-backends", "full-site"] {
        let mut entries: Vec<_> = std::fs::read_dir(root().join("examples").join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        entries.sort();
        for path in entries {
            let text = std::fs::read_to_string(&path).unwrap();
            for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
                let value: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
                if value.is_null() {
                    continue;
                }
                let stem = path.file_stem().unwrap().to_string_lossy();
                let file = out.join(format!("{dir}-{stem}-{i}.json"));
                std::fs::write(&file, serde_json::to_string(&value).unwrap()).unwrap();
                files.push(file.to_string_lossy().into_owned());
            }
        }
    }
    files
}

#[test]
#[ignore = "needs check-jsonschema from PyPI (installed by tests/run.sh)"]
fn an_outside_validator_accepts_every_example() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = example_documents(tmp.path());
    assert!(docs.len() > 30, "only {} documents", docs.len());
    let schema = root().join("schemas/manifest.json");
    #[allow(clippy::disallowed_methods)] // a test tool, not a host command
    let out = std::process::Command::new("check-jsonschema")
        .arg("--schemafile")
        .arg(&schema)
        .args(&docs)
        .output()
        .expect(
            "check-jsonschema is installed (pip install check-jsonschema; tests/run.sh does it)",
        );
    assert!(
        out.status.success(),
        "check-jsonschema rejected an example:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And it is not a validator that accepts anything.
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, r#"{"apiVersion":"cinderblock.dev/v1alpha1","kind":"Volume","metadata":{"name":"x"},"spec":{"sise":"1Gi"}}"#).unwrap();
    #[allow(clippy::disallowed_methods)]
    let out = std::process::Command::new("check-jsonschema")
        .arg("--schemafile")
        .arg(&schema)
        .arg(&bad)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the schema accepted an unknown field"
    );
}

/// The default target name the code gives is the one the schema and the
/// README document (they once disagreed: `org.openstack` in the schema).
#[test]
fn the_default_target_name_is_documented_as_the_code_makes_it() {
    let uuid = uuid::Uuid::from_u128(7);
    let made = cinderblock::iscsi::names::default_iqn(uuid);
    let documented = format!("{}volume-<uuid>", cinderblock::iscsi::names::IQN_PREFIX);
    assert_eq!(made.replace(&uuid.to_string(), "<uuid>"), documented);
    let schema = std::fs::read_to_string(root().join("schemas/volume.json")).unwrap();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for (what, text) in [("schemas/volume.json", &schema), ("README.md", &readme)] {
        assert!(
            text.contains(&documented),
            "{what} does not name {documented}"
        );
        assert!(
            !text.contains("org.openstack"),
            "{what} names OpenStack's IQN authority"
        );
    }
}
