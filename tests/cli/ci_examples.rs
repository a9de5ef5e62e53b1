//! `examples/ci/`: the GitHub Actions workflow and the GitLab CI jobs that
//! validate manifests and post plans on pull/merge requests. Checked
//! against the systems' own schemas (check-jsonschema's vendored
//! `github-workflows` and `gitlab-ci`), every `cinderblock` command they
//! run is checked against the binary's `--help`, and their shell steps are
//! run for real with bash on a tiny site (`gh` and `curl`, which talk to
//! GitHub and GitLab, replaced by recorders). With a fleet, their
//! `plan --fleet` jobs run against a real etcd with TLS and a user.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::plan::{Site, backend, volume};
use crate::support::{root, run_in, tool};

fn example(name: &str) -> PathBuf {
    root().join("examples/ci").join(name)
}

fn yaml(name: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&fs::read_to_string(example(name)).unwrap()).unwrap()
}

/// GitHub: job → the `run` blocks of its steps, in order.
fn github_runs() -> BTreeMap<String, Vec<String>> {
    let doc = yaml("github-actions.yml");
    let mut out = BTreeMap::new();
    for (job, body) in doc["jobs"].as_mapping().unwrap() {
        let runs = body["steps"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|s| s["run"].as_str().map(str::to_owned))
            .collect();
        out.insert(job.as_str().unwrap().to_owned(), runs);
    }
    out
}

/// GitLab: job → its `script` lines joined as GitLab's shell runs them.
fn gitlab_scripts() -> BTreeMap<String, String> {
    let doc = yaml("gitlab-ci.yml");
    let mut out = BTreeMap::new();
    for (job, body) in doc.as_mapping().unwrap() {
        if let Some(lines) = body.get("script").and_then(|s| s.as_sequence()) {
            let script: Vec<&str> = lines.iter().map(|l| l.as_str().unwrap()).collect();
            out.insert(job.as_str().unwrap().to_owned(), script.join("\n"));
        }
    }
    out
}

/// Every `cinderblock ...` command line in a script, as words.
fn cinderblock_commands(script: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for line in script.lines() {
        let Some(at) = line.find("cinderblock ") else {
            continue;
        };
        // Only a command: at the start or after a shell operator.
        let before = line[..at].trim_end();
        if !(before.is_empty() || before.ends_with(['|', ';', '&', '('])) {
            continue;
        }
        let words: Vec<String> = line[at..]
            .split_whitespace()
            .take_while(|w| !w.starts_with('>') && !w.starts_with("||") && *w != "|")
            .map(|w| w.trim_matches('"').to_owned())
            .collect();
        out.push(words);
    }
    out
}

#[test]
fn every_cinderblock_command_in_the_ci_examples_exists_with_its_flags() {
    let mut scripts: Vec<(String, String)> = Vec::new();
    for (job, runs) in github_runs() {
        for r in runs {
            scripts.push((format!("github {job}"), r));
        }
    }
    for (job, s) in gitlab_scripts() {
        scripts.push((format!("gitlab {job}"), s));
    }
    let mut seen = Vec::new();
    for (job, script) in &scripts {
        for words in cinderblock_commands(script) {
            // The subcommand is the first word that is neither a flag nor a
            // flag's value.
            let global = run_in(&root(), &["--help"]).stdout;
            let mut i = 1;
            while i < words.len() && words[i].starts_with('-') {
                let takes_value = global.contains(&format!("{} <", words[i]));
                i += if takes_value { 2 } else { 1 };
            }
            let sub = &words[i];
            let help = run_in(&root(), &[sub, "--help"]);
            assert_eq!(
                help.code,
                0,
                "{job}: `{}`: no subcommand {sub}",
                words.join(" ")
            );
            for w in words.iter().filter(|w| w.starts_with('-')) {
                assert!(
                    [" ", ",", "\n"]
                        .iter()
                        .any(|end| help.stdout.contains(&format!("{w}{end}"))),
                    "{job}: `{}`: cinderblock {sub} has no {w}",
                    words.join(" ")
                );
            }
            seen.push(format!(
                "{sub} {}",
                words
                    .iter()
                    .filter(|w| w.starts_with('-'))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        [
            "plan --state --fleet -f --format --detailed-exitcode",
            "plan --state --host -f --format --detailed-exitcode",
            "validate -f --format",
        ],
        "the commands the examples run"
    );
}

#[test]
#[ignore = "needs check-jsonschema from PyPI (installed by tests/run.sh)"]
fn the_ci_examples_are_valid_for_github_and_gitlab() {
    for (file, schema) in [
        ("github-actions.yml", "vendor.github-workflows"),
        ("gitlab-ci.yml", "vendor.gitlab-ci"),
    ] {
        let path = example(file);
        let r = tool(
            &root(),
            "check-jsonschema",
            &["--builtin-schema", schema, path.to_str().unwrap()],
        );
        assert_eq!(r.code, 0, "{file}:\n{}{}", r.stdout, r.stderr);
        // The schema check can fail: a step without `uses` or `run`, a job
        // whose script is a number.
        let tmp = tempfile::tempdir().unwrap();
        let broken = tmp.path().join(file);
        let text = fs::read_to_string(&path).unwrap();
        let text = if file.starts_with("github") {
            text.replacen(
                "      - uses: actions/checkout@v4",
                "      - usess: actions/checkout@v4",
                1,
            )
        } else {
            text.replacen(
                "  stage: validate\n",
                "  stage: validate\n  when: sometimes\n",
                1,
            )
        };
        fs::write(&broken, text).unwrap();
        let r = tool(
            &root(),
            "check-jsonschema",
            &["--builtin-schema", schema, broken.to_str().unwrap()],
        );
        assert_ne!(r.code, 0, "{file}: the schema accepted a broken file");
    }
}

/// A site applied by an "agent" state directory, then changed in the
/// repository: one volume added. (manifest dir relative to `repo`).
fn changed_repo() -> (Site, PathBuf, PathBuf) {
    let site = Site::new();
    let pool = site.path().join("pool");
    fs::create_dir_all(&pool).unwrap();
    site.write("backend.yaml", &backend("local", &pool, ""));
    site.write("v.yaml", &volume("db", "16Mi", ""));
    site.apply();
    site.write("w.yaml", &volume("web", "8Mi", ""));
    let repo = site.path().join("repo");
    fs::create_dir_all(&repo).unwrap();
    copy_dir(&site.path().join("manifests"), &repo.join("storage"));
    let agent_state = site.path().join("state");
    (site, repo, agent_state)
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A directory with recorders for `gh` and `curl` (argv and the body they
/// would send go to `LOG`), ahead of the built binary's directory in PATH.
fn fake_tools(dir: &Path, gh_existing_comment: &str) -> String {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let gh = format!(
        "#!/bin/bash\necho \"gh $*\" >> \"$LOG\"\n\
         if [ \"$1\" = api ] && [ \"$2\" != -X ]; then echo '{gh_existing_comment}'; fi\n\
         for a in \"$@\"; do case $a in body=@*) cp \"${{a#body=@}}\" \"$LOG.body\";; esac; done\n\
         prev=; for a in \"$@\"; do [ \"$prev\" = --body-file ] && cp \"$a\" \"$LOG.body\"; prev=$a; done\nexit 0\n"
    );
    // curl: a GET (no --request) lists the merge request's notes, one of
    // them this host's plan when an existing id is given.
    let notes = if gh_existing_comment.is_empty() {
        "[{\"id\": 1, \"body\": \"LGTM\"}]".to_owned()
    } else {
        format!(
            "[{{\"id\": 1, \"body\": \"LGTM\"}}, {{\"id\": {gh_existing_comment}, \"body\": \"<!-- cinderblock-plan testhost -->\\nold plan\"}}]"
        )
    };
    let curl = format!(
        "#!/bin/bash\necho \"curl $*\" >> \"$LOG\"\n\
         case \" $* \" in *' --request '*) ;; *) echo '{notes}';; esac\n\
         for a in \"$@\"; do case $a in body@*) cp \"${{a#body@}}\" \"$LOG.body\";; esac; done\nexit 0\n"
    );
    for (name, text) in [("gh", gh.as_str()), ("curl", curl.as_str())] {
        let p = bin.join(name);
        fs::write(&p, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let exe = assert_cmd::cargo::cargo_bin("cinderblock");
    format!(
        "{}:{}:{}",
        bin.display(),
        exe.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// `env` with `key` set to `value`.
fn with<'a>(env: &[(&'a str, &'a str)], key: &str, value: &'a str) -> Vec<(&'a str, &'a str)> {
    env.iter()
        .map(|&(k, v)| if k == key { (k, value) } else { (k, v) })
        .collect()
}

/// What the recorders logged: the calls, and the last body sent.
fn recorded(log: &Path) -> (String, String) {
    (
        fs::read_to_string(log).unwrap(),
        fs::read_to_string(format!("{}.body", log.display())).unwrap_or_default(),
    )
}

/// Runs `script` with bash as the CI system would (`-e -o pipefail`) in
/// `dir` with `env`.
fn sh(dir: &Path, script: &str, env: &[(&str, &str)]) -> crate::support::Run {
    #[allow(clippy::disallowed_methods)] // the shell a CI runner uses
    let out = std::process::Command::new("bash")
        .args(["--noprofile", "--norc", "-eo", "pipefail", "-c", script])
        .current_dir(dir)
        .envs(env.iter().copied())
        .env_remove("CINDERBLOCK_LOG")
        .output()
        .unwrap();
    crate::support::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
#[ignore = "needs jq (tests/run.sh installs it)"]
#[allow(clippy::too_many_lines)] // one scenario per job, read top to bottom
fn the_github_workflow_steps_validate_plan_and_comment() {
    let (site, repo, agent_state) = changed_repo();
    let runs = github_runs();
    let t = site.path();
    let log = t.join("calls.log");
    let path = fake_tools(t, "");
    let runner = t.join("runner");
    fs::create_dir_all(&runner).unwrap();
    let summary = t.join("summary.md");
    let env = [
        ("PATH", path.as_str()),
        ("MANIFESTS", "storage"),
        ("RUNNER_TEMP", runner.to_str().unwrap()),
        ("GITHUB_STEP_SUMMARY", summary.to_str().unwrap()),
        ("GITHUB_REPOSITORY", "storage/site"),
        ("HOST", "testhost"),
        ("AGENT_STATE", agent_state.to_str().unwrap()),
        ("PR", "7"),
        ("LOG", log.to_str().unwrap()),
    ];
    // validate (its second step; the first installs the package).
    let validate = &runs["validate"][1];
    let r = sh(&repo, validate, &env);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        r.stdout,
        "cinderblock validate: 3 manifests in 3 files, 0 errors, 0 warnings\n"
    );
    // An invalid manifest: one annotation on its line, and the step fails.
    fs::write(
        repo.join("storage/bad.yaml"),
        "apiVersion: cinderblock.dev/v1alpha1\nkind: Volume\nmetadata:\n  name: bad\nspec:\n  size: 1Gi\n  volumeType: nope\n",
    )
    .unwrap();
    let r = sh(&repo, validate, &env);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.starts_with(
            "::error file=storage/bad.yaml,line=7,col=15,title=Volume/bad::VolumeType \"nope\" is not defined"
        ),
        "{}",
        r.stdout
    );
    fs::remove_file(repo.join("storage/bad.yaml")).unwrap();

    // plan, on a copy of the agent's state.
    let r = sh(&repo, &runs["plan"][0], &env);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let plan = fs::read_to_string(repo.join("plan-testhost.md")).unwrap();
    assert!(plan.starts_with("### cinderblock plan for <code>testhost</code>\n\n**Plan: 1 to add, 0 to change, 0 to destroy.**"), "{plan}");
    assert_eq!(fs::read_to_string(&summary).unwrap(), plan);
    // The agent's state was only read.
    assert!(!agent_state.join("plan-testhost.md").exists());

    // comment: a new comment, then (one exists) an update.
    let r = sh(&repo, &runs["comment"][0], &env);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let (calls, body) = recorded(&log);
    assert!(
        calls.contains("gh pr comment 7 --repo storage/site --body-file comment.md"),
        "{calls}"
    );
    assert_eq!(body, format!("<!-- cinderblock-plan -->\n{plan}\n"));
    let path2 = fake_tools(&t.join("again"), "4242");
    let env2 = with(&env, "PATH", &path2);
    fs::remove_file(&log).unwrap();
    let r = sh(&repo, &runs["comment"][0], &env2);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let calls = fs::read_to_string(&log).unwrap();
    assert!(
        calls.contains(
            "gh api -X PATCH repos/storage/site/issues/comments/4242 -F body=@comment.md"
        ),
        "{calls}"
    );
    // A plan too long for a comment is cut below GitHub's limit, at a line
    // boundary (⛔ is 3 bytes: a byte cut would split it) and with the code
    // fence it cuts into closed.
    let mut long = String::from("<details open>\n<summary>⛔ zz</summary>\n\n````diff\n");
    for i in 0..3000 {
        long.push_str(&format!("-    volume \"v{i}\" ⛔ {{\n"));
    }
    long.push_str("````\n\n</details>\n");
    fs::write(repo.join("plan-zz.md"), &long).unwrap();
    let r = sh(&repo, &runs["comment"][0], &env2);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let body = String::from_utf8(fs::read(format!("{}.body", log.display())).unwrap())
        .expect("the cut comment is UTF-8");
    assert!(body.len() < 65_536, "{}", body.len());
    assert!(body.contains("The plan is cut here"), "{body}");
    let (kept, note) = body
        .split_once("\n\n</details>\n\n**The plan is cut here**")
        .unwrap();
    assert!(kept.starts_with(&format!("<!-- cinderblock-plan -->\n{plan}")));
    // Whole lines up to the limit, then the fence closed.
    let mut last = kept.lines().rev();
    assert_eq!(last.next(), Some("````"));
    let line = last.next().unwrap();
    assert!(
        line.starts_with("-    volume \"v") && line.ends_with("\" ⛔ {"),
        "{line}"
    );
    assert!(kept.len() > 63_900, "{}", kept.len());
    let fences = kept.lines().filter(|l| l.starts_with("```")).count();
    assert_eq!(fences % 2, 0, "a code fence is left open");
    assert!(note.contains("summary of its plan job"), "{note}");
}

#[test]
#[ignore = "needs jq (tests/run.sh installs it)"]
fn the_gitlab_jobs_validate_into_code_quality_and_post_the_plan() {
    let (site, repo, agent_state) = changed_repo();
    let scripts = gitlab_scripts();
    let t = site.path();
    let log = t.join("calls.log");
    let path = fake_tools(t, "");
    let tmp = t.join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let env = [
        ("PATH", path.as_str()),
        ("MANIFESTS", "storage"),
        ("HOST", "testhost"),
        ("AGENT_STATE", agent_state.to_str().unwrap()),
        ("CI_API_V4_URL", "https://gitlab.example.org/api/v4"),
        ("CI_PROJECT_ID", "12"),
        ("CI_MERGE_REQUEST_IID", "7"),
        ("CINDERBLOCK_BOT_TOKEN", "secret"),
        ("LOG", log.to_str().unwrap()),
        ("TMPDIR", tmp.to_str().unwrap()),
    ];
    fs::write(
        repo.join("storage/bad.yaml"),
        "apiVersion: cinderblock.dev/v1alpha1\nkind: Volume\nmetadata:\n  name: bad\nspec:\n  size: 1Gi\n  volumeType: nope\n",
    )
    .unwrap();
    let r = sh(&repo, &scripts["cinderblock-validate"], &env);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let report: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(repo.join("gl-code-quality-report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report.as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report[0]["location"]["path"], "storage/bad.yaml");
    assert_eq!(report[0]["location"]["lines"]["begin"], 7);
    assert_eq!(report[0]["severity"], "major");
    assert!(
        report[0]["fingerprint"]
            .as_str()
            .is_some_and(|f| !f.is_empty())
    );
    fs::remove_file(repo.join("storage/bad.yaml")).unwrap();
    let r = sh(&repo, &scripts["cinderblock-validate"], &env);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);

    // No note of this host's yet: one is posted.
    let r = sh(&repo, &scripts["cinderblock-plan"], &env);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let notes = "https://gitlab.example.org/api/v4/projects/12/merge_requests/7/notes";
    let calls = fs::read_to_string(&log).unwrap();
    assert!(
        calls.contains(&format!("curl -fsS --request POST --header PRIVATE-TOKEN: secret --data-urlencode body@note-testhost.md {notes}\n")),
        "{calls}"
    );
    assert!(!calls.contains("--request PUT"), "{calls}");
    let body = fs::read_to_string(format!("{}.body", log.display())).unwrap();
    assert!(
        body.starts_with("<!-- cinderblock-plan testhost -->\n### cinderblock plan for <code>testhost</code>\n\n**Plan: 1 to add, 0 to change, 0 to destroy.**"),
        "{body}"
    );
    // The copy of the agent's state is removed when the job ends.
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "left in TMPDIR");

    // The next push: the host's note (id 4242) is updated, not repeated.
    let path2 = fake_tools(&t.join("again"), "4242");
    let env2 = with(&env, "PATH", &path2);
    fs::remove_file(&log).unwrap();
    let r = sh(&repo, &scripts["cinderblock-plan"], &env2);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let calls = fs::read_to_string(&log).unwrap();
    assert!(
        calls.contains(&format!("curl -fsS --request PUT --header PRIVATE-TOKEN: secret --data-urlencode body@note-testhost.md {notes}/4242\n")),
        "{calls}"
    );
    assert!(!calls.contains("--request POST"), "{calls}");
}

#[test]
#[ignore = "needs etcd, etcdctl, openssl and jq (tests/run.sh installs them)"]
#[allow(clippy::too_many_lines)] // one fleet, both systems' jobs in turn
fn with_a_fleet_both_examples_post_one_plan_fleet_over_tls_as_a_user() {
    use crate::fleet_etcd::{Fleet, WAIT, names, secure_args, volumes_yaml};
    let etcd = crate::etcd::Cluster::start_secure();
    let sec = etcd.secure.clone().unwrap();
    let mut f = Fleet::on(etcd, &["a", "b"], false);
    let pw = f.path().join("etcd-password");
    fs::write(&pw, format!("{}\n", sec.agent_password)).unwrap();
    f.etcd_args = secure_args(&sec, &sec.ca, &pw);
    f.write("backends.yaml", &f.backends(""));
    f.start_all();
    let vols = names("vol", 2);
    f.write("volumes.yaml", &volumes_yaml(&vols, ""));
    f.wait_exactly_once(&vols, WAIT);
    // Let both hosts publish what they made.
    f.wait("both hosts' views to show the volumes", WAIT, |f| {
        let r = f.cli(&["status", "--fleet"]);
        r.stdout.matches("; 1 volume(s)").count() == 2
    });
    // The pull request adds one unpinned volume.
    let repo = f.path().join("repo");
    copy_dir(&f.path().join("manifests"), &repo.join("storage"));
    fs::write(
        repo.join("storage/new.yaml"),
        volumes_yaml(&["new-1".to_owned()], ""),
    )
    .unwrap();
    let endpoints = f.etcd.endpoints();
    let pem = |p: &Path| fs::read_to_string(p).unwrap();
    let (ca, cert, key) = (pem(&sec.ca), pem(&sec.cert), pem(&sec.key));
    let t = f.path().join("ci");
    fs::create_dir_all(&t).unwrap();
    let log = t.join("calls.log");
    let path = fake_tools(&t, "");
    let runner = t.join("runner");
    fs::create_dir_all(&runner).unwrap();
    let summary = t.join("summary.md");
    let expected_start =
        "### cinderblock plan for 2 hosts\n\n**Plan: 1 to add, 0 to change, 0 to destroy.**";

    // GitHub: TLS material and the password from secrets (PEM text).
    let runs = github_runs();
    let env = [
        ("PATH", path.as_str()),
        ("MANIFESTS", "storage"),
        ("RUNNER_TEMP", runner.to_str().unwrap()),
        ("GITHUB_STEP_SUMMARY", summary.to_str().unwrap()),
        ("CINDERBLOCK_ETCD", endpoints.as_str()),
        ("CINDERBLOCK_ETCD_USER", "agent"),
        ("CINDERBLOCK_ETCD_PASSWORD", sec.agent_password.as_str()),
        ("ETCD_CA_PEM", ca.as_str()),
        ("ETCD_CERT_PEM", cert.as_str()),
        ("ETCD_KEY_PEM", key.as_str()),
    ];
    let r = sh(&repo, &runs["plan-fleet"][1], &env);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let plan = fs::read_to_string(repo.join("plan-fleet.md")).unwrap();
    assert!(plan.starts_with(expected_start), "{plan}");
    assert!(plan.contains("new-1"), "{plan}");
    assert_eq!(fs::read_to_string(&summary).unwrap(), plan);
    // The TLS files are gone with the step.
    assert!(!runner.join("etcd-tls").exists());
    // The comment job takes the fleet's plan like a host's.
    let r = sh(
        &repo,
        &runs["comment"][0],
        &[
            ("PATH", path.as_str()),
            ("GITHUB_REPOSITORY", "storage/site"),
            ("PR", "7"),
            ("LOG", log.to_str().unwrap()),
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let body = fs::read_to_string(format!("{}.body", log.display())).unwrap();
    assert_eq!(body, format!("<!-- cinderblock-plan -->\n{plan}\n"));
    // A wrong password fails the step with etcd's refusal, not a plan.
    let wrong = with(&env, "CINDERBLOCK_ETCD_PASSWORD", "wrong");
    let r = sh(&repo, &runs["plan-fleet"][1], &wrong);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("etcd refused the user name or password"),
        "{}",
        r.stderr
    );

    // GitLab: File variables (paths) and one note for the fleet.
    fs::remove_file(repo.join("plan-fleet.md")).unwrap();
    fs::remove_file(&log).unwrap();
    let tmp = t.join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let scripts = gitlab_scripts();
    let env = [
        ("PATH", path.as_str()),
        ("MANIFESTS", "storage"),
        ("HOST", "fleet"),
        ("CINDERBLOCK_ETCD", endpoints.as_str()),
        ("CINDERBLOCK_ETCD_USER", "agent"),
        ("CINDERBLOCK_ETCD_PASSWORD_FILE", pw.to_str().unwrap()),
        ("CINDERBLOCK_ETCD_CA", sec.ca.to_str().unwrap()),
        ("CINDERBLOCK_ETCD_CERT", sec.cert.to_str().unwrap()),
        ("CINDERBLOCK_ETCD_KEY", sec.key.to_str().unwrap()),
        ("CI_API_V4_URL", "https://gitlab.example.org/api/v4"),
        ("CI_PROJECT_ID", "12"),
        ("CI_MERGE_REQUEST_IID", "7"),
        ("CINDERBLOCK_BOT_TOKEN", "secret"),
        ("LOG", log.to_str().unwrap()),
        ("TMPDIR", tmp.to_str().unwrap()),
    ];
    let r = sh(&repo, &scripts["cinderblock-plan-fleet"], &env);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let (calls, body) = recorded(&log);
    assert!(
        calls.contains("curl -fsS --request POST --header PRIVATE-TOKEN: secret --data-urlencode body@note-fleet.md https://gitlab.example.org/api/v4/projects/12/merge_requests/7/notes\n"),
        "{calls}"
    );
    assert_eq!(body, format!("<!-- cinderblock-plan fleet -->\n{plan}"));
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "left in TMPDIR");
    // The per-host job does not run in a fleet, and the fleet job only in one.
    let doc = yaml("gitlab-ci.yml");
    assert_eq!(
        doc["cinderblock-plan"]["rules"][0]["if"],
        "$CINDERBLOCK_ETCD"
    );
    assert_eq!(doc["cinderblock-plan"]["rules"][0]["when"], "never");
    assert!(
        doc["cinderblock-plan-fleet"]["rules"][0]["if"]
            .as_str()
            .unwrap()
            .ends_with("&& $CINDERBLOCK_ETCD")
    );
    let gh = yaml("github-actions.yml");
    assert_eq!(gh["jobs"]["plan"]["if"], "vars.CINDERBLOCK_ETCD == ''");
    assert_eq!(
        gh["jobs"]["plan-fleet"]["if"],
        "vars.CINDERBLOCK_ETCD != ''"
    );
}
