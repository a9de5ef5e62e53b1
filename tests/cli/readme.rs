//! The README's walkthroughs, run as written: each `sh` block of a section
//! runs in bash (`set -euo pipefail`) in a temp dir with this build's
//! `cinderblock` first on `PATH`, and every expected-output line of the
//! block (`#   TEXT`) must appear in what it printed, in order.

use std::fs;

use crate::support::root;

/// The first `sh` block of README section `title`.
fn block(title: &str) -> String {
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split(&format!("\n## {title}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("README has no section {title}"));
    let section = section.split("\n## ").next().unwrap_or_default();
    section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .unwrap_or_else(|| panic!("README section {title} has no sh block"))
        .to_owned()
}

/// Runs `script` with bash in a temp dir; its output (stdout and stderr).
fn run(script: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let bin = assert_cmd::cargo::cargo_bin("cinderblock");
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    #[allow(clippy::disallowed_methods)] // the README's own shell, as a user runs it
    let out = std::process::Command::new("bash")
        .args(["-c", &format!("set -euo pipefail\nexec 2>&1\n{script}")])
        .current_dir(dir.path())
        .env("PATH", path)
        .env_remove("CINDERBLOCK_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn adopting_an_existing_host_runs_as_written() {
    let script = block("Adopting an existing host");
    let (ok, out) = run(&script);
    assert!(ok, "the walkthrough failed:\n{out}");
    let mut at = 0;
    let expected: Vec<&str> = script
        .lines()
        .filter_map(|l| l.strip_prefix("#   "))
        .collect();
    assert!(expected.len() >= 10, "{expected:?}");
    for want in expected {
        match out[at..].find(want) {
            Some(i) => at += i + want.len(),
            None => panic!("expected {want:?} after byte {at} of:\n{out}"),
        }
    }
}
