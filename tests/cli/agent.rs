//! `agent` and `status`: the real binary as a long-running agent on temp
//! dirs with `file` back ends, talked to over HTTP on a free loopback port
//! and with signals.
//!
//! Every wait polls for a condition with a deadline (never a fixed sleep
//! standing in for "long enough"), and every agent is killed when its test
//! ends, pass or fail.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::plan::{H, Site, backend, volume};
use crate::support::run_in;

/// Generous bound for anything but the latency under test: the machine may
/// be busy with the other tests.
const WAIT: Duration = Duration::from_secs(30);

/// A running agent.
pub struct Agent {
    child: Option<Child>,
    pub addr: String,
    log: PathBuf,
    state: PathBuf,
}

impl Agent {
    /// Starts `cinderblock --state state --host testhost agent ARGS
    /// --listen 127.0.0.1:0` in `dir` and waits until it serves HTTP.
    pub fn start(dir: &Path, args: &[&str]) -> Agent {
        Self::start_with_env(dir, args, &[])
    }

    /// [`Agent::start`] with more environment variables.
    pub fn start_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Agent {
        let log = dir.join(format!("agent-{}.log", rand_suffix()));
        let out = fs::File::create(&log).unwrap();
        let exe = assert_cmd::cargo::cargo_bin("cinderblock");
        // The test starts the binary under test, not a host tool.
        #[allow(clippy::disallowed_methods)]
        let child = Command::new(exe)
            .current_dir(dir)
            .env_remove("CINDERBLOCK_LOG")
            .args([
                "--state",
                "state",
                "--host",
                "testhost",
                "agent",
                "--listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut agent = Agent {
            child: Some(child),
            addr: String::new(),
            log,
            state: dir.join("state"),
        };
        // The agent writes its address into the status file at start.
        agent.addr = agent.poll("the agent to start serving", WAIT, |a| {
            let text = fs::read_to_string(a.state.join("agent-status.json")).ok()?;
            let v: Value = serde_json::from_str(&text).ok()?;
            (v["agent"]["pid"] == pid && v["agent"]["state"] == "running")
                .then(|| v["agent"]["listen"].as_str().unwrap().to_owned())
        });
        agent
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.as_ref().unwrap().id()).unwrap()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `f` every 10 ms until it gives a value; panics with the agent's
    /// log after `timeout`.
    pub fn poll<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&mut Self) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "the agent exited ({status}) while waiting for {what}; log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String, String) {
        http(&self.addr, method, path, headers)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let (code, _, body) = self.request("GET", path, &[]);
        (code, body)
    }

    pub fn status(&self) -> Value {
        let (code, body) = self.get("/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits for `/status` to satisfy `cond`; returns it.
    pub fn wait_status(&mut self, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        self.poll(what, WAIT, |a| {
            let s = a.status();
            cond(&s).then_some(s)
        })
    }

    fn reconciles(&self) -> u64 {
        self.status()["reconcileCount"].as_u64().unwrap()
    }

    /// Waits for `n` more reconciles after the current count to finish.
    fn wait_reconciles(&mut self, n: u64) -> Value {
        let target = self.reconciles() + n;
        self.wait_status(&format!("reconcile #{target}"), |s| {
            s["reconcileCount"].as_u64().unwrap() >= target
        })
    }

    pub fn wait_ready(&mut self) {
        self.poll("/readyz to answer 200", WAIT, |a| {
            (a.get("/readyz").0 == 200).then_some(())
        });
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the agent did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

/// One HTTP/1.1 request on a fresh connection; (status, headers, body).
pub(crate) fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "this little client reads only sized bodies:\n{head}"
    );
    (code, head.to_owned(), body.to_owned())
}

/// A site with one file back end `local` on `pool/`.
pub fn site_with_backend() -> Site {
    let site = Site::new();
    let pool = site.path().join("pool");
    fs::create_dir_all(&pool).unwrap();
    site.write("backend.yaml", &backend("local", &pool, ""));
    site
}

fn has(site: &Site, name: &str) -> bool {
    site.objects("pool").contains_key(name)
}

fn object<'a>(status: &'a Value, address: &str) -> Option<&'a Value> {
    status["objects"]
        .as_array()?
        .iter()
        .find(|o| o["address"] == address)
}

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)?
            .strip_prefix(' ')?
            .parse()
            .ok()
    })
}

#[test]
fn manifest_changes_are_applied_within_two_seconds() {
    let site = site_with_backend();
    site.write("a.yaml", &volume("a", "16Mi", "  deletionPolicy: Delete\n"));
    let mut agent = Agent::start(site.path(), &["-f", "manifests", "--resync", "1h"]);
    agent.wait_ready();
    assert!(has(&site, "volume.a"));
    let first = agent.status();
    assert_eq!(first["lastReconcile"]["result"], "applied");
    assert_eq!(
        first["source"]["appliedRevision"],
        first["source"]["lastGoodRevision"]
    );

    // A new manifest: the volume exists within 2 s.
    let written = Instant::now();
    site.write("b.yaml", &volume("b", "16Mi", "  deletionPolicy: Delete\n"));
    let latency = agent.poll("volume.b to be created", Duration::from_secs(2), |_| {
        has(&site, "volume.b").then(|| written.elapsed())
    });
    println!(
        "agent: manifest written -> volume created in {} ms",
        latency.as_millis()
    );
    let s = agent.wait_status("the apply of volume.b to be reported", |s| {
        object(s, "volume.b").is_some_and(|o| o["state"] == "ready")
    });
    assert!(
        s["lastReconcile"]["triggers"]
            .as_array()
            .unwrap()
            .contains(&"file-change".into())
    );

    // Editing the size extends it.
    site.write("a.yaml", &volume("a", "32Mi", "  deletionPolicy: Delete\n"));
    let data = site.data("pool", "volume.a");
    agent.poll("volume.a to grow to 32 MiB", WAIT, |_| {
        (fs::metadata(&data).unwrap().len() == 32 << 20).then_some(())
    });

    // Removing a Delete volume's manifest removes it.
    site.remove("b.yaml");
    agent.poll("volume.b to be deleted", WAIT, |_| {
        (!has(&site, "volume.b")).then_some(())
    });
    let s = agent.wait_status("the delete to be reported", |s| {
        s["lastReconcile"]["destroyed"] == 1
    });
    assert!(object(&s, "volume.b").is_none(), "{s:#}");
    assert_eq!(object(&s, "volume.a").unwrap()["size"], 32 << 20);
}

#[test]
fn a_broken_manifest_or_an_empty_tree_changes_nothing_and_says_so() {
    let site = site_with_backend();
    site.write("a.yaml", &volume("a", "16Mi", "  deletionPolicy: Delete\n"));
    let mut agent = Agent::start(site.path(), &["-f", "manifests", "--resync", "1h"]);
    agent.wait_ready();
    let applied = agent.status()["source"]["appliedRevision"].clone();

    // A broken file next to a new volume: the whole revision is refused.
    // (Broken first: no tree with only the new volume ever exists.)
    site.write(
        "broken.yaml",
        &format!("{H}kind: Volume\nmetadata:\n  name: d\nspec:\n  size: lots\n"),
    );
    site.write("c.yaml", &volume("c", "16Mi", ""));
    let s = agent.wait_status("the broken revision to be reported", |s| {
        !s["source"]["badRevision"].is_null()
    });
    let errors = s["source"]["badRevision"]["errors"].to_string();
    assert!(errors.contains("broken.yaml:6:9"), "{errors}");
    assert_eq!(s["source"]["appliedRevision"], applied);
    let stalled = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Stalled")
        .unwrap();
    assert_eq!(
        (&stalled["status"], &stalled["reason"]),
        (&"True".into(), &"ManifestInvalid".into())
    );
    let (code, body) = agent.get("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("ManifestInvalid"), "{body}");
    assert!(!has(&site, "volume.c"), "a refused revision was applied");
    let (_, m) = agent.get("/metrics");
    assert_eq!(metric(&m, "cinderblock_source_revision_bad"), Some(1.0));

    // Fixed: applied, ready again.
    site.remove("broken.yaml");
    agent.poll("volume.c to be created", WAIT, |_| {
        has(&site, "volume.c").then_some(())
    });
    agent.wait_ready();

    // The whole tree deleted: nothing is deleted, and it says so.
    fs::remove_dir_all(site.path().join("manifests")).unwrap();
    let s = agent.wait_status("the missing tree to be refused", |s| {
        s["source"]["badRevision"]["revision"] == "dir:empty"
    });
    assert!(
        s["source"]["badRevision"]["errors"]
            .to_string()
            .contains("no such file or directory")
    );
    // And stays so through more reconciles.
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    let s = agent.wait_reconciles(1);
    assert_eq!(s["lastReconcile"]["destroyed"], 0);
    assert!(has(&site, "volume.a") && has(&site, "volume.c"));

    // A tree that declares back ends but no volumes is refused too.
    fs::create_dir_all(site.path().join("manifests")).unwrap();
    site.write(
        "backend.yaml",
        &backend("local", &site.path().join("pool"), ""),
    );
    let s = agent.wait_status("the empty source to be refused", |s| {
        s["conditions"].to_string().contains("EmptySource")
    });
    assert!(has(&site, "volume.a") && has(&site, "volume.c"), "{s:#}");
}

#[test]
fn drift_is_reported_as_lost_and_not_recreated_until_the_manifest_changes() {
    let site = site_with_backend();
    site.write("a.yaml", &volume("a", "16Mi", ""));
    let mut agent = Agent::start(site.path(), &["-f", "manifests", "--resync", "1s"]);
    agent.wait_ready();
    let (uuid, data, _) = site.objects("pool").remove("volume.a").unwrap();

    // The volume file removed behind cinderblock's back: the resync sees it.
    fs::remove_file(&data).unwrap();
    let s = agent.wait_status("volume.a to be reported lost", |s| {
        s["lost"].as_array().unwrap().contains(&"volume.a".into())
    });
    assert_eq!(object(&s, "volume.a").unwrap()["state"], "lost", "{s:#}");
    assert!(
        s["drift"]
            .to_string()
            .contains("removed outside cinderblock"),
        "{s:#}"
    );
    let (_, m) = agent.get("/metrics");
    assert_eq!(metric(&m, "cinderblock_lost_volumes"), Some(1.0));
    assert_eq!(
        metric(&m, "cinderblock_objects{kind=\"volume\",state=\"lost\"}"),
        Some(1.0)
    );
    // Two more resyncs: still not recreated.
    agent.wait_reconciles(2);
    assert!(!data.exists(), "the lost volume was recreated");

    // Its identity removed too (deleted outside cinderblock): still lost.
    fs::remove_file(site.path().join(format!("pool/.cinderblock/{uuid}.json"))).unwrap();
    let s = agent.wait_status("the deleted volume to be reported", |s| {
        s["drift"]
            .to_string()
            .contains("was deleted outside cinderblock")
    });
    assert_eq!(s["lost"], serde_json::json!(["volume.a"]));
    agent.wait_reconciles(2);
    assert!(!has(&site, "volume.a"), "recreated without consent");

    // A person changes its manifest: that is consent to recreate it, empty.
    site.write("a.yaml", &volume("a", "32Mi", ""));
    agent.poll("volume.a to be recreated", WAIT, |_| {
        has(&site, "volume.a").then_some(())
    });
    let (new_uuid, ..) = site.objects("pool").remove("volume.a").unwrap();
    assert_ne!(new_uuid, uuid);
    agent.wait_status("no more lost volumes", |s| {
        s["lost"].as_array().unwrap().is_empty()
    });
}

#[test]
fn a_second_agent_on_the_same_state_directory_is_refused_naming_the_first() {
    let site = site_with_backend();
    site.write("a.yaml", &volume("a", "1Mi", ""));
    let mut agent = Agent::start(site.path(), &["-f", "manifests", "--resync", "1h"]);
    agent.wait_ready();
    let started = Instant::now();
    let r = run_in(
        site.path(),
        &[
            "--state",
            "state",
            "--host",
            "testhost",
            "agent",
            "-f",
            "manifests",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the second agent waited"
    );
    let expected = format!(
        "error: cannot start the agent: state directory state is locked by pid {} on host ",
        agent.pid()
    );
    assert!(r.stderr.contains(&expected), "{}", r.stderr);
    assert!(
        r.stderr.contains("(command: agent -f manifests)"),
        "{}",
        r.stderr
    );
    // plan, too, names the agent.
    let r = site.run(&["plan", "-f", "manifests"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("(command: agent -f manifests)"),
        "{}",
        r.stderr
    );
}

#[test]
#[allow(clippy::too_many_lines)] // one family list, read top to bottom
fn metrics_parse_as_prometheus_text_and_hold_the_families() {
    let site = site_with_backend();
    site.write("a.yaml", &volume("a", "8Mi", ""));
    let mut agent = Agent::start(site.path(), &["-f", "manifests", "--resync", "1h"]);
    agent.wait_ready();
    let (code, head, text) = agent.request("GET", "/metrics", &[]);
    assert_eq!(code, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");

    // Strict line grammar first: HELP and TYPE before each family's samples,
    // samples `name{labels} value` with a float value.
    let mut typed: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.push(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "bad value in {line:?}"
        );
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name in {line:?}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| typed.iter().any(|t| t == f))
            })
            .unwrap_or(name);
        assert_eq!(
            typed.last().map(String::as_str),
            Some(family),
            "sample outside its family: {line}"
        );
    }

    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let find = |name: &'static str| scrape.samples.iter().filter(move |s| s.metric == name);
    for family in [
        "cinderblock_reconcile_total",
        "cinderblock_reconcile_duration_seconds",
        "cinderblock_last_successful_reconcile_timestamp_seconds",
        "cinderblock_objects",
        "cinderblock_lost_volumes",
        "cinderblock_drift_objects",
        "cinderblock_backend_up",
        "cinderblock_backend_total_bytes",
        "cinderblock_backend_free_bytes",
        "cinderblock_backend_provisioned_bytes",
        "cinderblock_source_revision_info",
        "cinderblock_applied_revision_info",
        "cinderblock_source_revision_bad",
        "cinderblock_git_fetch_failures_total",
        "cinderblock_backups_running",
    ] {
        assert!(find(family).next().is_some(), "no {family} in\n{text}");
    }
    for family in [
        "cinderblock_backend_thin_data_percent",
        "cinderblock_backend_thin_metadata_percent",
        "cinderblock_backup_runs_total",
        "cinderblock_backup_last_success_timestamp_seconds",
        "cinderblock_backup_last_size_bytes",
        "cinderblock_backup_duration_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "no {family} family in\n{text}"
        );
    }
    let applied = find("cinderblock_reconcile_total")
        .find(|s| s.labels.get("result") == Some("applied"))
        .unwrap();
    assert_eq!(applied.value, prometheus_parse::Value::Counter(1.0));
    let hist = find("cinderblock_reconcile_duration_seconds")
        .next()
        .unwrap();
    let prometheus_parse::Value::Histogram(buckets) = &hist.value else {
        panic!("not a histogram: {hist:?}");
    };
    assert!(
        buckets
            .iter()
            .any(|b| b.less_than.is_infinite() && b.count >= 1.0),
        "{buckets:?}"
    );
    let ready = find("cinderblock_objects")
        .find(|s| s.labels.get("kind") == Some("volume") && s.labels.get("state") == Some("ready"))
        .unwrap();
    assert_eq!(ready.value, prometheus_parse::Value::Gauge(1.0));
    let up = find("cinderblock_backend_up").next().unwrap();
    assert_eq!(up.labels.get("backend"), Some("local"));
    let free = find("cinderblock_backend_free_bytes").next().unwrap();
    assert!(matches!(free.value, prometheus_parse::Value::Gauge(v) if v > 0.0));
}

#[test]
fn sighup_reconciles_sigterm_stops_cleanly_and_status_reads_the_state_dir() {
    let site = site_with_backend();
    site.write("a.yaml", &volume("a", "1Mi", ""));
    let mut agent = Agent::start(site.path(), &["-f", "manifests", "--resync", "1h"]);
    agent.wait_ready();
    let before = agent.reconciles();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    let s = agent.wait_status("the SIGHUP reconcile", |s| {
        s["reconcileCount"].as_u64().unwrap() > before
    });
    assert_eq!(
        s["lastReconcile"]["triggers"],
        serde_json::json!(["sighup"])
    );

    let r = site.run(&["status"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains(&format!("Agent:   running (pid {}", agent.pid())),
        "{}",
        r.stdout
    );

    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let status = agent.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "log:\n{}", agent.log());
    assert!(agent.log().contains("agent stopped"));

    // Not running: `status` shows what it last applied, from the file.
    let r = site.run(&["status"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let applied = s["source"]["appliedRevision"].as_str().unwrap();
    assert!(r.stdout.contains("stopped cleanly"), "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!("Applied: {applied} at ")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("volume.a"), "{}", r.stdout);
    let r = site.run(&["status", "--json"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["agent"]["state"], "stopped");
    assert_eq!(v["source"]["appliedRevision"], applied);

    // No agent ever: a clear error.
    let empty = tempfile::tempdir().unwrap();
    let r = run_in(empty.path(), &["--state", "state", "status"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("no agent has run with the state directory state"),
        "{}",
        r.stderr
    );
}

/// `git` for building the test repositories.
fn git(dir: &Path, args: &[&str]) -> String {
    #[allow(clippy::disallowed_methods)] // test fixture set-up, not the agent
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.org",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Commits `files` (name → text; `None` removes) and pushes; returns the id.
fn commit(work: &Path, files: &[(&str, Option<&str>)], message: &str) -> String {
    for (name, text) in files {
        match text {
            Some(t) => fs::write(work.join(name), t).unwrap(),
            None => {
                git(work, &["rm", "-q", name]);
            }
        }
    }
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "-m", message]);
    git(work, &["push", "-q", "origin", "main"]);
    git(work, &["rev-parse", "HEAD"])
}

#[test]
#[allow(clippy::too_many_lines, clippy::many_single_char_names)] // one story: commits A to D
fn git_a_bad_revision_keeps_the_last_good_one_and_a_newer_good_one_is_applied() {
    let site = Site::new();
    let root = site.path();
    let pool = root.join("pool");
    fs::create_dir_all(&pool).unwrap();
    git(root, &["init", "-q", "--bare", "remote.git"]);
    git(root, &["init", "-q", "work"]);
    let work = root.join("work");
    git(
        &work,
        &[
            "remote",
            "add",
            "origin",
            root.join("remote.git").to_str().unwrap(),
        ],
    );
    let a = commit(
        &work,
        &[
            ("backend.yaml", Some(&backend("local", &pool, ""))),
            ("a.yaml", Some(&volume("a", "4Mi", ""))),
        ],
        "A",
    );
    fs::write(root.join("token"), "s3cret\n").unwrap();
    let url = format!("file://{}", root.join("remote.git").display());
    let mut agent = Agent::start(
        root,
        &[
            "--git",
            &url,
            "--branch",
            "main",
            "--git-interval",
            "1h",
            "--resync",
            "1h",
            "--webhook-token-file",
            "token",
        ],
    );
    agent.wait_status("commit A to be applied", |s| {
        s["source"]["appliedRevision"] == a.as_str()
    });
    assert!(has(&site, "volume.a"));

    // B: a new volume and a broken file. Refused whole.
    let b = commit(
        &work,
        &[
            ("b.yaml", Some(&volume("b", "4Mi", ""))),
            ("broken.yaml", Some("kind: [\n")),
        ],
        "B",
    );
    assert_eq!(agent.request("POST", "/hooks/git", &[]).0, 401);
    assert_eq!(
        agent
            .request("POST", "/hooks/git", &[("Authorization", "Bearer wrong")])
            .0,
        401
    );
    assert_eq!(
        agent
            .request("POST", "/hooks/git", &[("Authorization", "Bearer s3cret")])
            .0,
        202
    );
    let s = agent.wait_status("commit B to be refused", |s| {
        s["source"]["badRevision"]["revision"] == b.as_str()
    });
    assert_eq!(s["source"]["appliedRevision"], a.as_str());
    assert_eq!(s["source"]["lastGoodRevision"], a.as_str());
    assert!(
        s["source"]["badRevision"]["errors"]
            .to_string()
            .contains("broken.yaml:2:1"),
        "{s:#}"
    );
    let (_, m) = agent.get("/metrics");
    assert_eq!(metric(&m, "cinderblock_source_revision_bad"), Some(1.0));
    assert_eq!(
        metric(
            &m,
            &format!("cinderblock_source_revision_info{{source=\"git\",revision=\"{a}\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "cinderblock_webhook_requests_total{result=\"unauthorized\"}"
        ),
        Some(2.0)
    );
    // Resyncs keep A in force and never apply B.
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    agent.wait_reconciles(1);
    assert!(
        !has(&site, "volume.b"),
        "the refused revision B was applied"
    );

    // C fixes it: applied at once on the next fetch.
    let c = commit(&work, &[("broken.yaml", None)], "C");
    assert_eq!(
        agent
            .request("POST", "/hooks/git", &[("X-Cinderblock-Token", "s3cret")])
            .0,
        202
    );
    let s = agent.wait_status("commit C to be applied", |s| {
        s["source"]["appliedRevision"] == c.as_str()
    });
    assert!(has(&site, "volume.b"));
    assert!(s["source"]["badRevision"].is_null());
    let outcomes: Vec<(String, String)> = s["source"]["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["revision"].as_str().unwrap().to_owned(),
                r["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            (c.clone(), "applied".to_owned()),
            (b.clone(), "invalid".to_owned()),
            (a.clone(), "applied".to_owned())
        ],
        "{s:#}"
    );
    let (_, m) = agent.get("/metrics");
    assert_eq!(metric(&m, "cinderblock_source_revision_bad"), Some(0.0));
    assert_eq!(
        metric(
            &m,
            &format!("cinderblock_applied_revision_info{{revision=\"{c}\"}}")
        ),
        Some(1.0)
    );
    // Only the tree in force is kept.
    let trees: Vec<_> = fs::read_dir(root.join("state/git/trees"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(trees, std::slice::from_ref(&c));

    // Restarted while the branch head is bad: C stays in force.
    commit(&work, &[("broken.yaml", Some("kind: [\n"))], "D");
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(agent.wait_exit(WAIT).code(), Some(0));
    drop(agent);
    let mut agent = Agent::start(
        root,
        &[
            "--git",
            &url,
            "--branch",
            "main",
            "--git-interval",
            "1h",
            "--resync",
            "1h",
        ],
    );
    let s = agent.wait_status("the restarted agent to refuse D", |s| {
        !s["source"]["badRevision"].is_null() && s["reconcileCount"].as_u64().unwrap() > 0
    });
    assert_eq!(s["source"]["lastGoodRevision"], c.as_str(), "{s:#}");
    assert_eq!(s["lastReconcile"]["revision"], c.as_str(), "{s:#}");
    assert!(has(&site, "volume.a") && has(&site, "volume.b"));
}

#[test]
fn polling_mode_sees_changes_for_manifests_on_nfs() {
    let site = site_with_backend();
    site.write("a.yaml", &volume("a", "1Mi", ""));
    let mut agent = Agent::start(
        site.path(),
        &[
            "-f",
            "manifests",
            "--resync",
            "1h",
            "--poll",
            "--poll-interval",
            "200ms",
        ],
    );
    agent.wait_ready();
    assert!(agent.log().contains("mode=\"poll\""), "{}", agent.log());
    site.write("b.yaml", &volume("b", "1Mi", ""));
    agent.poll("volume.b to be created", WAIT, |_| {
        has(&site, "volume.b").then_some(())
    });
}

#[test]
fn a_failed_discovery_stalls_deletes_and_says_why() {
    let site = site_with_backend();
    // A second back end whose directory is missing (an NFS mount point
    // whose share is gone): discovery fails.
    site.write(
        "gone.yaml",
        &backend("gone", &site.path().join("not-mounted"), ""),
    );
    site.write(
        "a.yaml",
        &volume("a", "1Mi", "  backend: local\n  deletionPolicy: Delete\n"),
    );
    site.write("b.yaml", &volume("b", "1Mi", "  backend: local\n"));
    let mut agent = Agent::start(site.path(), &["-f", "manifests", "--resync", "1h"]);
    let s = agent.wait_status("the first reconcile", |s| {
        s["reconcileCount"].as_u64().unwrap() > 0
    });
    assert!(has(&site, "volume.a") && has(&site, "volume.b"), "{s:#}");
    let stalled = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Stalled")
        .unwrap();
    assert_eq!(stalled["reason"], "DiscoveryFailed", "{s:#}");
    assert!(
        stalled["message"].as_str().unwrap().contains("gone"),
        "{s:#}"
    );
    assert_eq!(agent.get("/readyz").0, 503);
    let (_, m) = agent.get("/metrics");
    assert_eq!(
        metric(&m, "cinderblock_backend_up{backend=\"gone\"}"),
        Some(0.0)
    );

    // The Delete volume's manifest goes: held back while discovery fails.
    site.remove("a.yaml");
    let s = agent.wait_status("the held delete to be reported", |s| {
        s["lastReconcile"]["notes"]
            .to_string()
            .contains("held back")
    });
    assert!(has(&site, "volume.a"), "{s:#}");
    assert_eq!(s["lastReconcile"]["destroyed"], 0);
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn a_scheduled_backup_runs_within_90_seconds_and_retention_keeps_the_configured_number() {
    let site = site_with_backend();
    let repo = site.path().join("repo");
    site.write(
        "policy.yaml",
        &format!(
            "{H}kind: BackupPolicy\nmetadata:\n  name: minutely\nspec:\n  schedule: \"* * * * *\"\n  \
             target:\n    path: {}\n  retention:\n    keepLast: 2\n",
            repo.display()
        ),
    );
    site.write("a.yaml", &volume("a", "16Mi", "  backupPolicy: minutely\n"));
    site.apply();
    let data = site.data("pool", "volume.a");
    let content: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    write_volume(&data, &content, 16 << 20);
    // Two backups by hand before the agent starts: the scheduled one makes
    // three, one more than the policy keeps.
    let mut by_hand = Vec::new();
    for _ in 0..2 {
        let r = site.run(&["backup", "run", "a", "-f", "manifests"]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        by_hand.push(
            r.stdout
                .split(':')
                .next()
                .unwrap()
                .trim_start_matches("backup ")
                .to_owned(),
        );
    }
    let (_, _, sidecar) = site.objects("pool").remove("volume.a").unwrap();
    let uuid = sidecar["uuid"].as_str().unwrap().to_owned();
    let manifests = || -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(repo.join("backups").join(&uuid))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(manifests().len(), 2);
    // New data for the scheduled backup to store.
    let mut content = content;
    content[..1 << 20].fill(0x5a);
    write_volume(&data, &content, 16 << 20);

    let mut agent = Agent::start(site.path(), &["-f", "manifests", "--resync", "1h"]);
    agent.wait_ready();
    let s = agent.poll(
        "a scheduled backup of volume a",
        Duration::from_secs(90),
        |a| {
            std::thread::sleep(Duration::from_millis(200));
            let s = a.status();
            let done = s["backups"]["volumes"]
                .as_array()?
                .iter()
                .find(|v| v["volume"] == "a")?
                .get("lastBackupId")?
                .is_string();
            done.then_some(s)
        },
    );
    let v = s["backups"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["volume"] == "a")
        .unwrap()
        .clone();
    assert_eq!(v["policy"], "minutely", "{s:#}");
    assert!(v["lastSize"].as_u64().unwrap() > 0, "{s:#}");
    assert!(v.get("lastError").is_none(), "{s:#}");
    let scheduled = v["lastBackupId"].as_str().unwrap().to_owned();
    assert!(!by_hand.iter().any(|h| scheduled.starts_with(h.as_str())));

    // Retention ran after it: the oldest backup made by hand is gone, the
    // newer one and the scheduled one are kept, in the repository and in
    // the catalogue.
    let kept = manifests();
    assert_eq!(kept.len(), 2, "{kept:?}\n{}", agent.log());
    assert!(
        kept.iter().any(|n| n.starts_with(&scheduled)),
        "{kept:?} {scheduled}"
    );
    assert!(
        !kept.iter().any(|n| n.starts_with(by_hand[0].as_str())),
        "{kept:?}"
    );
    let list = site.run(&["backup", "list", "a"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(
        !list.stdout.contains(by_hand[0].as_str()),
        "{}",
        list.stdout
    );
    assert!(list.stdout.contains(by_hand[1].as_str()), "{}", list.stdout);
    let (_, metrics) = agent.get("/metrics");
    assert!(
        metric(&metrics, "cinderblock_backup_last_size_bytes{volume=\"a\"}")
            .is_some_and(|b| b > 0.0),
        "{metrics}"
    );

    // The scheduled backup restores to the volume's content.
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(agent.wait_exit(WAIT).success());
    let r = site.run(&[
        "backup",
        "restore",
        &scheduled,
        "--to",
        "copy",
        "-f",
        "manifests",
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let restored = fs::read(site.data("pool", "volume.copy")).unwrap();
    assert_eq!(&restored[..content.len()], &content[..]);
    assert!(restored[content.len()..].iter().all(|&b| b == 0));
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn scheduled_verify_and_drill_run_within_90_seconds_and_name_a_damaged_backup() {
    let site = site_with_backend();
    let repo = site.path().join("repo");
    site.write(
        "policy.yaml",
        &format!(
            "{H}kind: BackupPolicy\nmetadata:\n  name: minutely\nspec:\n  schedule: \"0 3 * * *\"\n  \
             target:\n    path: {}\n  verify:\n    schedule: \"* * * * *\"\n    sample: 100\n  \
             drill:\n    schedule: \"* * * * *\"\n",
            repo.display()
        ),
    );
    site.write("a.yaml", &volume("a", "16Mi", "  backupPolicy: minutely\n"));
    site.apply();
    let data = site.data("pool", "volume.a");
    let content: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    write_volume(&data, &content, 16 << 20);
    let by_hand = site.run(&["backup", "run", "a", "-f", "manifests"]);
    assert_eq!(by_hand.code, 0, "{}\n{}", by_hand.stdout, by_hand.stderr);
    let id = by_hand
        .stdout
        .split(':')
        .next()
        .unwrap()
        .trim_start_matches("backup ")
        .to_owned();
    // One byte of a pack flipped on the target.
    let mut packs = Vec::new();
    for shard in fs::read_dir(repo.join("data")).unwrap() {
        for p in fs::read_dir(shard.unwrap().path()).unwrap() {
            packs.push(p.unwrap().path());
        }
    }
    packs.sort();
    crate::backup::flip_byte(&packs[0], 100);

    let mut agent = Agent::start(site.path(), &["-f", "manifests", "--resync", "1h"]);
    agent.wait_ready();
    let policy = agent.poll(
        "the scheduled verify and drill of policy minutely",
        Duration::from_secs(150),
        |a| {
            std::thread::sleep(Duration::from_millis(300));
            let status = a.status();
            let p = status["backups"]["policies"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == "minutely")?
                .clone();
            (p["verify"].get("lastRun").is_some() && p["drill"].get("lastRun").is_some())
                .then_some(p)
        },
    );
    for check in ["verify", "drill"] {
        let c = &policy[check];
        assert_eq!(c["schedule"], "* * * * *", "{policy:#}");
        assert!(
            c.get("lastSuccess").is_none(),
            "{check} found damage: {policy:#}"
        );
        let problems = c["problems"].as_array().unwrap();
        assert_eq!(problems.len(), 1, "{policy:#}");
        let p = problems[0].as_str().unwrap();
        assert!(
            p.starts_with(&format!("volume a, backup {id} (")),
            "{check} names the volume and the backup: {p}"
        );
    }
    assert!(
        policy["verify"]["problems"][0]
            .as_str()
            .unwrap()
            .ends_with("0 chunk(s) missing, 1 corrupt (found by a sampled verify)"),
        "{policy:#}"
    );
    assert!(
        policy["verify"]["lastResult"]
            .as_str()
            .unwrap()
            .contains("(100 % of the id space"),
        "{policy:#}"
    );
    let (_, metrics) = agent.get("/metrics");
    for check in ["verify", "drill"] {
        assert_eq!(
            metric(
                &metrics,
                &format!("cinderblock_backup_{check}_failures_total{{policy=\"minutely\"}}")
            ),
            Some(1.0),
            "{metrics}"
        );
        assert!(
            !metrics.contains(&format!(
                "cinderblock_backup_{check}_last_success_timestamp_seconds{{"
            )),
            "{metrics}"
        );
    }
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(agent.wait_exit(WAIT).success());
    // `status` says it too, and the catalogue marks the backup damaged.
    let st = site.run(&["status"]);
    assert_eq!(st.code, 0, "{}", st.stderr);
    assert!(
        st.stdout
            .contains("    drill \"* * * * *\": last passed never")
            && st
                .stdout
                .contains(&format!("      problem: volume a, backup {id} (")),
        "{}",
        st.stdout
    );
    let list = site.run(&["backup", "list", "a"]);
    assert!(list.stdout.contains("damaged"), "{}", list.stdout);
}

#[test]
fn a_slow_http_client_is_cut_off_and_does_not_block_others() {
    let site = site_with_backend();
    let mut agent = Agent::start(site.path(), &["-f", "manifests", "--resync", "1h"]);
    agent.wait_ready();
    // Half a request head, then nothing (slowloris).
    let mut slow = TcpStream::connect(&agent.addr).unwrap();
    slow.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(25)))
        .unwrap();
    let opened = Instant::now();
    // Others are served meanwhile.
    assert_eq!(agent.get("/healthz").0, 200);
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let held = opened.elapsed();
    assert!(
        held >= Duration::from_secs(8) && held < Duration::from_secs(20),
        "the slow connection was closed after {held:?} (the request-head limit is 10 s)"
    );
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert_eq!(agent.get("/healthz").0, 200);
}

/// Writes `content` at the start of the volume file `path` of `size` bytes.
pub fn write_volume(path: &Path, content: &[u8], size: u64) {
    fs::write(path, content).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(size)
        .unwrap();
}

/// Waits for the first reconcile after `before` and returns its status; it
/// must be the one that applied (a later resync would re-observe anyway and
/// hide a status that was stale after the apply).
fn status_of_the_apply(agent: &mut Agent, before: u64) -> Value {
    let s = agent.wait_status("the apply to be reported", |s| {
        s["reconcileCount"].as_u64().unwrap() > before
    });
    assert_eq!(s["reconcileCount"].as_u64().unwrap(), before + 1, "{s:#}");
    assert_eq!(s["lastReconcile"]["result"], "applied", "{s:#}");
    s
}

fn backend_status<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no back end {name} in {status:#}"))
}

#[test]
fn status_and_gauges_show_what_the_apply_did_without_waiting_for_a_resync() {
    let site = Site::new();
    for d in ["a", "b"] {
        fs::create_dir_all(site.path().join(d)).unwrap();
    }
    site.write("fast.yaml", &backend("fast", &site.path().join("a"), ""));
    site.write("slow.yaml", &backend("slow", &site.path().join("b"), ""));
    site.write("db.yaml", &volume("db", "16Mi", "  backend: fast\n"));
    // A resync is an hour away: what is published comes from the apply.
    let mut agent = Agent::start(site.path(), &["-f", "manifests", "--resync", "1h"]);
    agent.wait_ready();

    // The first apply created the volume: fast's provisioned bytes say so.
    let s = status_of_the_apply(&mut agent, 0);
    assert_eq!(backend_status(&s, "fast")["provisioned"], 16 << 20, "{s:#}");
    assert_eq!(backend_status(&s, "slow")["provisioned"], 0, "{s:#}");
    let (_, text) = agent.get("/metrics");
    assert_eq!(
        metric(
            &text,
            "cinderblock_backend_provisioned_bytes{backend=\"fast\"}"
        ),
        Some(f64::from(16 << 20)),
        "{text}"
    );

    // Pinned to slow: the volume migrates, and the apply's status shows it
    // there, with the gauges of both back ends following.
    let before = agent.reconciles();
    site.write("db.yaml", &volume("db", "16Mi", "  backend: slow\n"));
    let s = status_of_the_apply(&mut agent, before);
    assert!(has_in(&site, "b", "volume.db") && !has_in(&site, "a", "volume.db"));
    let db = object(&s, "volume.db").unwrap();
    assert_eq!(db["backend"], "slow", "{s:#}");
    assert_eq!(db["size"], 16 << 20, "{s:#}");
    assert_eq!(db["state"], "ready", "{s:#}");
    assert_eq!(backend_status(&s, "fast")["provisioned"], 0, "{s:#}");
    assert_eq!(backend_status(&s, "slow")["provisioned"], 16 << 20, "{s:#}");
    let (_, text) = agent.get("/metrics");
    for (b, want) in [("fast", 0), ("slow", 16 << 20)] {
        assert_eq!(
            metric(
                &text,
                &format!("cinderblock_backend_provisioned_bytes{{backend=\"{b}\"}}")
            ),
            Some(f64::from(want)),
            "{b}:\n{text}"
        );
    }
    // `cinderblock status` reads the same document from the status file,
    // which the agent writes right after /status changes: wait for the
    // migration's reconcile there, then read the volume's line.
    agent.poll("the status file to hold the migration", WAIT, |_| {
        let r = site.run(&["status", "--json"]);
        let v: Value = serde_json::from_str(&r.stdout).ok()?;
        (v["reconcileCount"].as_u64()? > before).then_some(())
    });
    let r = site.run(&["status"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line = r
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("volume.db "))
        .unwrap_or_else(|| panic!("{}", r.stdout));
    assert!(line.contains("slow, 16Mi"), "{line}\n{}", r.stdout);
}

fn has_in(site: &Site, dir: &str, name: &str) -> bool {
    site.objects(dir).contains_key(name)
}

#[test]
fn a_groups_scheduled_backup_backs_every_member_up_from_one_group_snapshot() {
    let site = site_with_backend();
    let repo = site.path().join("repo");
    site.write(
        "policy.yaml",
        &format!(
            "{H}kind: BackupPolicy\nmetadata:\n  name: minutely\nspec:\n  schedule: \"* * * * *\"\n  \
             target:\n    path: {}\n---\n\
             {H}kind: VolumeType\nmetadata:\n  name: t\nspec: {{}}\n---\n\
             {H}kind: ConsistencyGroup\nmetadata:\n  name: g\nspec:\n  volumeTypes: [t]\n  backupPolicy: minutely\n",
            repo.display()
        ),
    );
    for m in ["a", "b"] {
        site.write(
            &format!("{m}.yaml"),
            &volume(m, "4Mi", "  volumeType: t\n  consistencyGroup: g\n"),
        );
    }
    site.apply();
    let mut agent = Agent::start(site.path(), &["-f", "manifests", "--resync", "1h"]);
    agent.wait_ready();
    let last = |s: &Value, m: &str| -> Option<String> {
        s["backups"]["volumes"]
            .as_array()?
            .iter()
            .find(|v| v["volume"] == m)?
            .get("lastBackupId")?
            .as_str()
            .map(str::to_owned)
    };
    let s = agent.poll(
        "a scheduled backup of both members",
        Duration::from_secs(90),
        |a| {
            std::thread::sleep(Duration::from_millis(200));
            let s = a.status();
            (last(&s, "a").is_some() && last(&s, "b").is_some()).then_some(s)
        },
    );
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(agent.wait_exit(WAIT).success());
    let (a, b) = (last(&s, "a").unwrap(), last(&s, "b").unwrap());
    let r = site.run(&["backup", "list", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let doc: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["backups"].as_array().unwrap().len(), 0, "{doc:#}");
    let groups = doc["groups"].as_array().unwrap();
    assert!(!groups.is_empty(), "{doc:#}\n{}", agent.log());
    for g in groups {
        assert_eq!(g["status"], "ok", "{g:#}");
    }
    // Both members' last backups are of one group backup.
    let of = |id: &str| {
        groups
            .iter()
            .find(|g| {
                g["backups"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["id"].as_str().is_some_and(|i| i.starts_with(id)))
            })
            .map(|g| g["id"].clone())
    };
    assert!(of(&a).is_some() && of(&a) == of(&b), "{a} {b} {doc:#}");
}
