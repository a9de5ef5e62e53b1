//! Every example validates cleanly.

use crate::support::{root, run_in};

#[test]
fn every_example_validates_without_findings() {
    let dir = root().join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        // examples/systemd holds the agent's unit file, not manifests.
        if !path.is_dir() || path.ends_with("systemd") {
            continue;
        }
        let run = run_in(&root(), &["validate", "-f", path.to_str().unwrap()]);
        assert_eq!(run.code, 0, "{}: {}", path.display(), run.stderr);
        assert_eq!(run.stderr, "", "{} has findings", path.display());
        assert!(
            path.join("README.md").is_file(),
            "{} has no README",
            path.display()
        );
        seen += 1;
    }
    assert!(
        seen >= 3,
        "expected quickstart, lvm-two-backends and full-site"
    );
}

#[test]
fn every_example_file_points_editors_at_the_schema() {
    for dir in ["quickstart", "lvm-two-backends", "full-site"] {
        for entry in std::fs::read_dir(root().join("examples").join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(
                    text.starts_with(
                        "# yaml-language-server: $schema=../../schemas/manifest.json\n"
                    ),
                    "{}",
                    path.display()
                );
            }
        }
    }
}
