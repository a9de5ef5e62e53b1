//! Every example validates cleanly.

use crate::support::{root, run_in};

#[test]
fn every_example_validates_without_findings() {
    let dir = root().join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        // Not manifests: the agent's unit file (systemd), the CI jobs (ci),
        // the dashboard (grafana) and the alert rules (prometheus); each has
        // its own tests.
        if !path.is_dir()
            || ["systemd", "ci", "grafana", "prometheus"]
                .iter()
                .any(|d| path.ends_with(d))
        {
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

/// The agent's unit file passes `systemd-analyze verify` (syntax, known
/// directives, hardening options this systemd understands) with its
/// `ExecStart` pointed at the binary under test, and every flag it and its
/// environment file (`agent.env`: the active line and the git alternative)
/// pass is one the binary knows.
#[test]
fn the_systemd_unit_verifies_and_its_flags_exist() {
    let unit =
        std::fs::read_to_string(root().join("examples/systemd/cinderblock.service")).unwrap();
    let env_path = root().join("examples/systemd/agent.env");
    let env = std::fs::read_to_string(&env_path).unwrap();
    let exe = assert_cmd::cargo::cargo_bin("cinderblock");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cinderblock.service");
    assert!(unit.contains("ExecStart=/usr/bin/cinderblock "), "{unit}");
    assert!(
        unit.contains("EnvironmentFile=/etc/cinderblock/agent.env\n"),
        "{unit}"
    );
    std::fs::write(
        &path,
        unit.replace("/usr/bin/cinderblock", exe.to_str().unwrap())
            .replace("/etc/cinderblock/agent.env", env_path.to_str().unwrap()),
    )
    .unwrap();
    // The test runs a host tool the test command installs (systemd).
    #[allow(clippy::disallowed_methods)]
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (package systemd; tests/lab/install-deps.sh installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Outside a booted systemd, verify also complains about the
    // dependencies it cannot load; only lines about our unit count.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("cinderblock.service:") || l.contains("cinderblock.service:"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify:\n{stderr}");

    let exec = unit
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .unwrap()
        .to_owned();
    let args: Vec<&str> = env
        .lines()
        .map(|l| l.trim_start_matches('#'))
        .filter_map(|l| l.strip_prefix("CINDERBLOCK_AGENT_ARGS="))
        .collect();
    assert_eq!(args.len(), 2, "{env}");
    let global = run_in(&root(), &["--help"]);
    let agent = run_in(&root(), &["agent", "--help"]);
    let words = format!("{exec} {}", args.join(" "));
    let flags: Vec<&str> = words
        .split_whitespace()
        .map(|w| w.trim_matches('"'))
        .filter(|w| w.starts_with('-'))
        .collect();
    assert!(flags.len() >= 6, "{words}");
    for flag in flags {
        assert!(
            global.stdout.contains(flag) || agent.stdout.contains(flag),
            "the unit passes {flag}, which cinderblock does not know"
        );
    }
    // The active line is a working agent command line: clap accepts it.
    let active: Vec<&str> = env
        .lines()
        .find_map(|l| l.strip_prefix("CINDERBLOCK_AGENT_ARGS="))
        .unwrap()
        .trim_matches('"')
        .split_whitespace()
        .collect();
    let mut probe = vec!["agent"];
    probe.extend(&active);
    probe.push("--help");
    let r = run_in(&root(), &probe);
    assert_eq!(r.code, 0, "{probe:?}: {}", r.stderr);
    assert!(
        global.stdout.contains("CINDERBLOCK_STATE"),
        "{}",
        global.stdout
    );
}
