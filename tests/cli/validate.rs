//! `validate` on invalid manifests: every file under `tests/invalid/` gives its
//! snapshotted findings, exit 1 and no panic.

use std::time::Instant;

use crate::support::{root, run_in};

#[test]
fn invalid_manifests_report_file_line_field_and_exit_1() {
    let dir = root().join("tests/invalid");
    let mut count = 0;
    insta::glob!("../invalid", "*.yaml", |path| {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name");
        let run = run_in(&dir, &["validate", "-f", name]);
        assert_eq!(run.code, 1, "{name}: exit code\n{}", run.stderr);
        assert!(
            !run.stderr.contains("panicked"),
            "{name} panicked:\n{}",
            run.stderr
        );
        insta::assert_snapshot!(run.stderr);
        count += 1;
    });
    assert!(count >= 30, "only {count} invalid manifests");
}

#[test]
fn all_findings_of_a_tree_come_in_one_run_sorted_by_file() {
    let tmp = tempfile::tempdir().unwrap();
    let sub = tmp.path().join("team-b");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::create_dir_all(tmp.path().join(".git")).unwrap();
    std::fs::write(tmp.path().join(".git/ignored.yaml"), "not: [valid").unwrap();
    std::fs::write(tmp.path().join("notes.txt"), "not: [valid").unwrap();
    std::fs::write(
        tmp.path().join("a.yaml"),
        "apiVersion: cinderblock.dev/v1alpha1\nkind: Volume\nmetadata: {name: a}\nspec: {size: 1G}\n",
    )
    .unwrap();
    std::fs::write(
        sub.join("b.yml"),
        "---\n---\napiVersion: cinderblock.dev/v1alpha1\nkind: Snapshot\nmetadata: {name: s}\nspec: {volume: missing}\n",
    )
    .unwrap();
    let run = run_in(tmp.path(), &["validate", "-f", "."]);
    assert_eq!(run.code, 1);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "./a.yaml:4:14: Volume/a: spec.size: invalid size \"1G\": unknown suffix \"G\"; sizes use binary suffixes (Ki, Mi, Gi, Ti, Pi, Ei): did you mean 1Gi?",
            "./team-b/b.yml:6:16: Snapshot/s: spec.volume: Volume \"missing\" is not defined",
            "invalid: 2 manifests in 2 files and 2 errors",
        ]
    );
}

#[test]
fn valid_manifests_exit_0_and_json_output_is_machine_readable() {
    let run = run_in(
        &root(),
        &["validate", "-f", "examples/quickstart", "--format", "json"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["documents"], 6);
    assert_eq!(v["errors"], 0);
}

#[test]
fn warnings_do_not_fail_validation() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("t.yaml"),
        "apiVersion: cinderblock.dev/v1alpha1\nkind: VolumeType\nmetadata: {name: gold}\nspec:\n  extraSpecs:\n    volume_backend_name: LVM\n",
    )
    .unwrap();
    let run = run_in(tmp.path(), &["validate", "-f", "t.yaml"]);
    assert_eq!(run.code, 0);
    assert_eq!(
        run.stderr,
        "t.yaml:6:26: warning: VolumeType/gold: spec.extraSpecs.volume_backend_name: no Backend has backendName \"LVM\"; volumes of this type cannot be placed (back end names: none)\n"
    );
    assert_eq!(run.stdout, "valid: 1 manifest in 1 file and 1 warning\n");
}

#[test]
fn missing_paths_and_empty_directories_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_in(tmp.path(), &["validate", "-f", "nowhere", "-f", "."]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("nowhere: no such file or directory"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(".: no manifests (*.yaml, *.yml) in this directory"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_10_mb_file_is_refused_quickly() {
    let tmp = tempfile::tempdir().unwrap();
    let big = "# padding line for a very large manifest file\n".repeat(230_000);
    std::fs::write(tmp.path().join("big.yaml"), big).unwrap();
    let t = Instant::now();
    let run = run_in(tmp.path(), &["validate", "-f", "big.yaml"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.starts_with(
            "big.yaml: file is 10.1 MiB; manifest files larger than 8 MiB are refused"
        ),
        "{}",
        run.stderr
    );
    assert!(t.elapsed().as_secs() < 10);
}

#[test]
fn usage_errors_exit_2() {
    let run = run_in(&root(), &["validate", "--bogus"]);
    assert_eq!(run.code, 2);
    let run = run_in(&root(), &["frobnicate"]);
    assert_eq!(run.code, 2);
}
