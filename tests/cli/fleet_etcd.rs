//! The fleet against a real etcd (Debian's `etcd-server`, started by the
//! tests on free loopback ports): agents on separate state directories
//! with `--host a/b/c` and `file` back ends share one manifest directory
//! and one 3-member cluster. What a user checks: every volume exists
//! exactly once, on the host the fleet placed it on; with etcd gone, local
//! work goes on and `/readyz` says why; `plan --fleet` shows every host.
//!
//! These tests need etcd and etcdctl (`#[ignore]`d; tests/run.sh installs
//! them and runs them).

#![allow(clippy::disallowed_methods)] // starts the binary under test
#![allow(clippy::format_collect, clippy::too_many_lines)] // manifest text builders; the chaos scenario reads in order

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::etcd::{Cluster, Proxy, Secure};
use crate::plan::H;

/// Bound for convergence on a busy machine.
pub(crate) const WAIT: Duration = Duration::from_secs(120);
/// The hosts' lease in these tests (production: 15 s).
const TTL: &str = "3s";

/// One storage host: a state directory, a `file` back end, an agent.
pub struct Host {
    pub name: String,
    pub backend: String,
    pub state: PathBuf,
    pub pool: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// The endpoints this host's agent uses (direct, or through proxies).
    endpoints: String,
    proxies: Vec<Proxy>,
}

impl Host {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The agent's address from its status file (while it runs).
    pub(crate) fn addr(&self) -> Option<String> {
        let pid = self.pid()?;
        let text = fs::read_to_string(self.state.join("agent-status.json")).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        (v["agent"]["pid"] == pid && v["agent"]["state"] == "running")
            .then(|| v["agent"]["listen"].as_str().unwrap_or_default().to_owned())
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash or a power cut.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `GET path` on the agent: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let addr = self.addr()?;
        let (code, _, body) = crate::agent::http(&addr, "GET", path, &[]);
        Some((code, body))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fleet: one etcd cluster, one manifest directory, hosts.
pub struct Fleet {
    pub root: tempfile::TempDir,
    pub etcd: Cluster,
    pub hosts: Vec<Host>,
    /// More global options for every agent and CLI run (TLS, user).
    pub etcd_args: Vec<String>,
}

impl Fleet {
    /// `members` etcd members and hosts `names` (back end `f<name>` each);
    /// with `proxied`, each host reaches etcd through its own proxies, so
    /// it can be cut off alone.
    pub fn new(members: usize, names: &[&str], proxied: bool) -> Fleet {
        Fleet::on(Cluster::start(members), names, proxied)
    }

    /// [`Fleet::new`] with every host's back end written and every agent
    /// started.
    pub fn running(members: usize, names: &[&str]) -> Fleet {
        let mut f = Fleet::new(members, names, false);
        f.write("backends.yaml", &f.backends(""));
        f.start_all();
        f
    }

    /// Hosts `names` on a cluster already started.
    pub fn on(etcd: Cluster, names: &[&str], proxied: bool) -> Fleet {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("manifests")).unwrap();
        let hosts = names
            .iter()
            .map(|n| {
                let pool = root.path().join(format!("pool-{n}"));
                fs::create_dir_all(&pool).unwrap();
                let (endpoints, proxies) = if proxied {
                    let proxies: Vec<Proxy> = etcd
                        .members
                        .iter()
                        .map(|m| Proxy::start(m.client))
                        .collect();
                    let eps = proxies
                        .iter()
                        .map(|p| format!("http://127.0.0.1:{}", p.port))
                        .collect::<Vec<_>>()
                        .join(",");
                    (eps, proxies)
                } else {
                    (etcd.endpoints(), Vec::new())
                };
                Host {
                    name: (*n).to_owned(),
                    backend: format!("f{n}"),
                    state: root.path().join(format!("state-{n}")),
                    pool,
                    log: root.path().join(format!("agent-{n}.log")),
                    child: None,
                    endpoints,
                    proxies,
                }
            })
            .collect();
        Fleet {
            root,
            etcd,
            hosts,
            etcd_args: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// The back ends of every host plus `extra` manifests, written at once
    /// (one rename: one commit).
    pub fn write(&self, name: &str, text: &str) {
        let tmp = self.path().join(format!(".{name}.tmp"));
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, self.path().join("manifests").join(name)).unwrap();
    }

    /// The `Backend` documents of every host.
    pub fn backends(&self, extra: &str) -> String {
        self.hosts
            .iter()
            .map(|h| {
                format!(
                    "{H}kind: Backend\nmetadata:\n  name: {}\nspec:\n  host: {}\n  file:\n    path: {}\n{extra}---\n",
                    h.backend,
                    h.name,
                    h.pool.display()
                )
            })
            .collect()
    }

    /// Starts host `i`'s agent.
    pub fn start(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        assert!(h.child.is_none());
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&h.log)
            .unwrap();
        let child = Command::new(assert_cmd::cargo::cargo_bin("cinderblock"))
            .current_dir(self.root.path())
            .env_remove("CINDERBLOCK_LOG")
            .env("CINDERBLOCK_LOG", "info,cinderblock=debug")
            .args([
                "--state",
                &h.state.display().to_string(),
                "--host",
                &h.name,
                "--etcd",
                &h.endpoints,
                "--etcd-timeout",
                "2s",
                "--fleet-lease-ttl",
                TTL,
            ])
            .args(&self.etcd_args)
            .args([
                "agent",
                "-f",
                "manifests",
                "--listen",
                "127.0.0.1:0",
                "--debounce",
                "100ms",
                "--resync",
                "30s",
                "--shutdown-grace",
                "5s",
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        h.child = Some(child);
    }

    pub fn start_all(&mut self) {
        for i in 0..self.hosts.len() {
            self.start(i);
        }
    }

    /// Every volume in every host's back end: name → [(host, uuid)].
    pub fn volumes(&self) -> BTreeMap<String, Vec<(String, String)>> {
        let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for h in &self.hosts {
            let Ok(rd) = fs::read_dir(h.pool.join(".cinderblock")) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_none_or(|x| x != "json") {
                    continue;
                }
                let Ok(bytes) = fs::read(&p) else { continue };
                let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
                    continue;
                };
                if v["kind"] == "volume" {
                    out.entry(v["name"].as_str().unwrap_or_default().to_owned())
                        .or_default()
                        .push((
                            h.name.clone(),
                            v["uuid"].as_str().unwrap_or_default().to_owned(),
                        ));
                }
            }
        }
        out
    }

    /// Waits until `f` holds, with every agent's log in the panic.
    pub fn wait(&self, what: &str, timeout: Duration, mut f: impl FnMut(&Fleet) -> bool) {
        let deadline = Instant::now() + timeout;
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every volume in `names` exists exactly once (and panics
    /// at once on a duplicate).
    pub fn wait_exactly_once(&self, names: &[String], timeout: Duration) {
        self.wait(
            &format!("{} volumes to exist once each", names.len()),
            timeout,
            |f| {
                let v = f.volumes();
                for (n, places) in &v {
                    assert!(
                        places.len() <= 1,
                        "volume {n} exists {} times: {places:?}\n{}",
                        places.len(),
                        f.logs()
                    );
                }
                names.iter().all(|n| v.contains_key(n))
            },
        );
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for h in &self.hosts {
            let log = h.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            s.push_str(&format!("--- agent {} (last lines) ---\n", h.name));
            for l in tail.into_iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    /// Runs the CLI against this fleet's etcd (direct endpoints).
    pub fn cli(&self, args: &[&str]) -> crate::support::Run {
        let endpoints = self.etcd.endpoints();
        let mut full = vec!["--etcd", endpoints.as_str()];
        full.extend(self.etcd_args.iter().map(String::as_str));
        full.extend_from_slice(args);
        crate::support::run_in(self.path(), &full)
    }

    /// The placements in etcd: volume → placement record.
    pub fn placements(&self) -> BTreeMap<String, Value> {
        self.etcd
            .get_prefix("/cinderblock/v1/placements/")
            .into_iter()
            .map(|(k, v)| {
                (
                    k.trim_start_matches("/cinderblock/v1/placements/")
                        .to_owned(),
                    serde_json::from_str(&v).unwrap(),
                )
            })
            .collect()
    }

    /// The host whose agent holds the placer election.
    pub fn leader(&self) -> Option<usize> {
        // The oldest key of the election leads.
        let out = self.etcd.etcdctl(&[
            "get",
            "--prefix",
            "/cinderblock/v1/election/placer",
            "--sort-by=CREATE",
            "--order=ASCEND",
            "--print-value-only",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let host = text.lines().next()?.trim().to_owned();
        self.hosts.iter().position(|h| h.name == host)
    }
}

pub(crate) fn volumes_yaml(names: &[String], extra: &str) -> String {
    names
        .iter()
        .map(|n| {
            format!("{H}kind: Volume\nmetadata:\n  name: {n}\nspec:\n  size: 64Mi\n{extra}---\n")
        })
        .collect()
}

/// The options of user `agent` over TLS: CA `ca`, the client certificate,
/// the password in `password_file`.
pub(crate) fn secure_args(sec: &Secure, ca: &Path, password_file: &Path) -> Vec<String> {
    [
        "--etcd-ca",
        &ca.display().to_string(),
        "--etcd-cert",
        &sec.cert.display().to_string(),
        "--etcd-key",
        &sec.key.display().to_string(),
        "--etcd-user",
        "agent",
        "--etcd-password-file",
        &password_file.display().to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Whether `line` of `status --fleet` says `host` is `state` (up, down).
fn is_host_line(line: &str, host: &str, state: &str) -> bool {
    line.starts_with(&format!("  {host} ")) && line.contains(&format!(" {state} "))
}

pub(crate) fn names(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}-{i:02}")).collect()
}

#[test]
#[ignore = "needs etcd and etcdctl (tests/run.sh installs etcd-server and etcd-client)"]
fn thirty_unpinned_volumes_added_in_one_commit_exist_exactly_once_over_three_hosts() {
    let f = Fleet::running(3, &["a", "b", "c"]);
    let vols = names("vol", 30);
    f.write("volumes.yaml", &volumes_yaml(&vols, ""));
    f.wait_exactly_once(&vols, WAIT);
    // Every volume is where its placement says, and nothing else appears
    // while the agents keep reconciling.
    let placements = f.placements();
    assert_eq!(placements.len(), 30);
    std::thread::sleep(Duration::from_secs(3));
    let v = f.volumes();
    assert_eq!(v.len(), 30, "{v:?}");
    for (name, places) in &v {
        assert_eq!(places.len(), 1, "{name}: {places:?}");
        assert_eq!(placements[name]["host"], places[0].0.as_str(), "{name}");
    }
    let per_host = |h: &str| v.values().filter(|p| p[0].0 == h).count();
    assert!(
        per_host("a") > 0 && per_host("b") > 0 && per_host("c") > 0,
        "{v:?}"
    );

    // Every fleet metric the dashboard and the alerts name has samples on
    // an agent in a fleet (without --etcd they are only declared).
    let mut fleet_metrics = std::collections::BTreeSet::new();
    for e in crate::monitoring::dashboard_exprs(&crate::monitoring::dashboard())
        .into_iter()
        .chain(crate::monitoring::rule_exprs().into_iter().map(|(_, e)| e))
    {
        fleet_metrics.extend(
            crate::monitoring::metric_names(&e)
                .into_iter()
                .filter(|m| m.starts_with("cinderblock_fleet_")),
        );
    }
    assert!(fleet_metrics.len() >= 6, "{fleet_metrics:?}");
    f.wait("the fleet metrics on host a", WAIT, |f| {
        f.hosts[0].get("/metrics").is_some_and(|(_, text)| {
            fleet_metrics.iter().all(|m| {
                text.lines()
                    .any(|l| l.starts_with(&format!("{m} ")) || l.starts_with(&format!("{m}{{")))
            })
        })
    });
    let (_, text) = f.hosts[0].get("/metrics").unwrap();
    for h in ["a", "b", "c"] {
        assert!(
            text.contains(&format!("cinderblock_fleet_host_up{{host=\"{h}\"}} 1\n")),
            "{text}"
        );
    }
    assert!(text.contains("cinderblock_fleet_placements 30\n"), "{text}");

    // The fleet as an operator sees it.
    let r = f.cli(&["status", "--fleet"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    for h in ["a", "b", "c"] {
        assert!(
            r.stdout.lines().any(|l| is_host_line(l, h, "up")),
            "{}",
            r.stdout
        );
    }
    assert!(r.stdout.contains("Placements: 30 ("), "{}", r.stdout);
    assert!(
        r.stdout.contains("Unavailable volumes: none"),
        "{}",
        r.stdout
    );
}

#[test]
#[ignore = "needs etcd and etcdctl (tests/run.sh installs etcd-server and etcd-client)"]
fn the_seeds_volume_number_weigher_example_spreads_six_volumes_three_and_three() {
    // The admin notes: two back ends on two hosts, VolumeNumberWeigher,
    // six 1 GiB volumes.
    let mut f = Fleet::new(1, &["server1", "server2"], false);
    let policy = format!(
        "{H}kind: SchedulerPolicy\nmetadata:\n  name: default\nspec:\n  weighers:\n  - name: VolumeNumberWeigher\n---\n"
    );
    f.write("backends.yaml", &(f.backends("") + &policy));
    f.start_all();
    let vols = names("vol", 6);
    f.write(
        "volumes.yaml",
        &vols
            .iter()
            .map(|n| format!("{H}kind: Volume\nmetadata:\n  name: {n}\nspec:\n  size: 1Gi\n---\n"))
            .collect::<String>(),
    );
    f.wait_exactly_once(&vols, WAIT);
    let v = f.volumes();
    let on = |h: &str| v.values().filter(|p| p[0].0 == h).count();
    assert_eq!((on("server1"), on("server2")), (3, 3), "{v:?}");
}

#[test]
#[ignore = "needs etcd and etcdctl (tests/run.sh installs etcd-server and etcd-client)"]
fn with_etcd_stopped_local_work_goes_on_new_volumes_wait_and_readyz_says_why() {
    let mut f = Fleet::new(1, &["a", "b"], false);
    f.write("backends.yaml", &f.backends(""));
    f.write(
        "volumes.yaml",
        &format!(
            "{H}kind: Volume\nmetadata:\n  name: pinned\nspec:\n  size: 64Mi\n  backend: fa\n---\n{}",
            volumes_yaml(&["placed".to_owned()], "")
        ),
    );
    f.start_all();
    f.wait_exactly_once(&["pinned".to_owned(), "placed".to_owned()], WAIT);
    for h in &f.hosts {
        let deadline = Instant::now() + WAIT;
        while h.get("/readyz").is_none_or(|(c, _)| c != 200) {
            assert!(
                Instant::now() < deadline,
                "{} never ready\n{}",
                h.name,
                f.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    f.etcd.kill(0);
    f.write(
        "volumes.yaml",
        &format!(
            "{H}kind: Volume\nmetadata:\n  name: pinned\nspec:\n  size: 128Mi\n  backend: fa\n---\n{}",
            volumes_yaml(&["placed".to_owned(), "newcomer".to_owned()], "")
        ),
    );
    // The pinned volume grows on its host without etcd.
    let pinned_file = |f: &Fleet| {
        let v = f.volumes();
        let (_, uuid) = v["pinned"][0].clone();
        f.hosts[0].pool.join(format!("volume-{uuid}"))
    };
    f.wait("the pinned volume to grow to 128 MiB", WAIT, |f| {
        fs::metadata(pinned_file(f)).is_ok_and(|m| m.len() == 128 << 20)
    });
    // The new unpinned one waits, and both agents say why.
    for h in &f.hosts {
        f.wait(
            &format!("{} to report FleetUnavailable", h.name),
            WAIT,
            |_| {
                h.get("/readyz")
                    .is_some_and(|(c, body)| c == 503 && body.contains("FleetUnavailable"))
            },
        );
        let (_, body) = h.get("/readyz").unwrap();
        assert!(body.contains("etcd at http://127.0.0.1:"), "{body}");
        let (_, metrics) = h.get("/metrics").unwrap();
        assert!(metrics.contains("cinderblock_fleet_up 0"), "{metrics}");
        assert!(
            metrics.contains("cinderblock_fleet_unavailable_info{reason=\"FleetUnavailable\""),
            "{metrics}"
        );
        let (_, status) = h.get("/status").unwrap();
        let s: Value = serde_json::from_str(&status).unwrap();
        let cond = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "FleetReady")
            .unwrap();
        assert_eq!(cond["status"], "False");
        assert_eq!(cond["reason"], "FleetUnavailable");
    }
    f.wait("volume.newcomer to show as waiting", WAIT, |f| {
        f.hosts[0].get("/status").is_some_and(|(_, b)| {
            let s: Value = serde_json::from_str(&b).unwrap_or_default();
            s["objects"].as_array().is_some_and(|o| {
                o.iter().any(|o| {
                    o["address"] == "volume.newcomer"
                        && o["state"] == "waiting"
                        && o["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("the fleet is unavailable"))
                })
            })
        })
    });
    assert!(!f.volumes().contains_key("newcomer"));

    // etcd returns: the newcomer is placed, once; the agents are ready.
    f.etcd.restart(0);
    f.wait_exactly_once(
        &[
            "pinned".to_owned(),
            "placed".to_owned(),
            "newcomer".to_owned(),
        ],
        WAIT,
    );
    for h in &f.hosts {
        f.wait(&format!("{} to be ready again", h.name), WAIT, |_| {
            h.get("/readyz").is_some_and(|(c, _)| c == 200)
        });
    }
    assert_eq!(f.volumes().len(), 3);
}

#[test]
#[ignore = "needs etcd and etcdctl (tests/run.sh installs etcd-server and etcd-client)"]
fn plan_fleet_from_a_machine_without_storage_shows_every_hosts_changes() {
    let mut f = Fleet::new(1, &["a", "b"], false);
    let policy = format!(
        "{H}kind: SchedulerPolicy\nmetadata:\n  name: default\nspec:\n  weighers:\n  - name: VolumeNumberWeigher\n---\n"
    );
    f.write("backends.yaml", &(f.backends("") + &policy));
    f.write(
        "volumes.yaml",
        &format!(
            "{H}kind: Volume\nmetadata:\n  name: db\nspec:\n  size: 64Mi\n  backend: fa\n---\n{}",
            volumes_yaml(&["logs".to_owned()], "")
        ),
    );
    f.start_all();
    f.wait_exactly_once(&["db".to_owned(), "logs".to_owned()], WAIT);
    // Let both hosts publish what they made.
    std::thread::sleep(Duration::from_secs(2));

    // A pull request: db grows, two new unpinned volumes, one pinned to b
    // (the agents keep running: they follow `manifests/`, not the pull
    // request).
    let pr = f.path().join("pr");
    fs::create_dir_all(&pr).unwrap();
    fs::copy(
        f.path().join("manifests/backends.yaml"),
        pr.join("backends.yaml"),
    )
    .unwrap();
    fs::write(
        pr.join("volumes.yaml"),
        format!(
            "{H}kind: Volume\nmetadata:\n  name: db\nspec:\n  size: 128Mi\n  backend: fa\n---\n{}{H}kind: Volume\nmetadata:\n  name: cache\nspec:\n  size: 64Mi\n  backend: fb\n---\n",
            volumes_yaml(&["logs".to_owned(), "new-1".to_owned(), "new-2".to_owned()], "")
        ),
    )
    .unwrap();
    // From a state directory with no back ends (a CI runner).
    let r = f.cli(&[
        "--state",
        "ci-state",
        "--host",
        "ci-runner",
        "plan",
        "--fleet",
        "-f",
        "pr",
        "--detailed-exitcode",
    ]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(r"manifests dir:[0-9a-f]+", "manifests [revision]");
    settings.add_filter(r"placer: [ab];", "placer: [a or b];");
    settings.add_filter(
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "[uuid]",
    );
    settings.add_filter(r"(?m)^  (fa|fb) .*$", "  $1 [capacity]");
    settings.add_filter(r"placement revision \d+", "placement revision [N]");
    settings.bind(|| insta::assert_snapshot!("plan_fleet", r.stdout));
    assert!(!f.path().join("ci-state").join("state.json").exists());

    // JSON: every host's plan and the placements.
    let r = f.cli(&[
        "--state", "ci-state", "plan", "--fleet", "-f", "pr", "--format", "json",
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let doc: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["hosts"].as_array().unwrap().len(), 2);
    assert_eq!(doc["summary"]["newPlacements"], 2);
    assert_eq!(doc["summary"]["add"], 3);
    assert_eq!(doc["summary"]["change"], 1);
}

#[test]
#[ignore = "needs etcd and etcdctl (tests/run.sh installs etcd-server and etcd-client)"]
fn plan_fleet_shows_a_move_between_hosts_as_each_hosts_half() {
    let mut f = Fleet::new(1, &["a", "b"], false);
    f.write("backends.yaml", &f.backends("  migrationBandwidth: 50Mi\n"));
    // db has a snapshot, which moves with it (migrateSnapshots: true).
    let db = |b: &str| {
        format!(
            "{H}kind: Volume\nmetadata:\n  name: db\nspec:\n  size: 64Mi\n  backend: {b}\n  migrateSnapshots: true\n---\n{H}kind: Snapshot\nmetadata:\n  name: s1\nspec:\n  volume: db\n"
        )
    };
    f.write("volumes.yaml", &db("fa"));
    f.start_all();
    f.wait_exactly_once(&["db".to_owned()], WAIT);
    // Let host a publish what it made (the snapshot with the volume).
    std::thread::sleep(Duration::from_secs(2));
    let pr = f.path().join("pr");
    fs::create_dir_all(&pr).unwrap();
    fs::copy(
        f.path().join("manifests/backends.yaml"),
        pr.join("backends.yaml"),
    )
    .unwrap();
    fs::write(pr.join("volumes.yaml"), db("fb")).unwrap();
    let r = f.cli(&[
        "--state",
        "ci-state",
        "--host",
        "ci-runner",
        "plan",
        "--fleet",
        "-f",
        "pr",
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    // Both hosts plan the move, each its half; neither creates the volume.
    assert_eq!(
        r.stdout
            .matches("> backend    = \"a/fa\" -> \"b/fb\"")
            .count(),
        2,
        "{}",
        r.stdout
    );
    assert_eq!(
        r.stdout
            .matches("hosts      = a exports and waits, b copies over iSCSI and verifies, then a removes the source")
            .count(),
        2,
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("bandwidth  = 50 MiB/s"), "{}", r.stdout);
    assert_eq!(
        r.stdout
            .matches("read       = 0 B (the allocated data; holes are not read)")
            .count(),
        2,
        "{}",
        r.stdout
    );
    // Both list the snapshot moving with it (b from a's published view).
    assert_eq!(
        r.stdout.matches("> snapshot   = \"s1\": 64Mi").count(),
        2,
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("will be created"), "{}", r.stdout);
    assert!(!r.stdout.contains("not supported"), "{}", r.stdout);
    // One host's own plan without the fleet says what the move needs.
    let r = crate::support::run_in(
        f.path(),
        &["--state", "ci-a", "--host", "a", "plan", "-f", "pr"],
    );
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("a move between hosts runs through the fleet")
            || r.stderr
                .contains("a move between hosts runs through the fleet"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
}

#[test]
#[ignore = "needs etcd and etcdctl (tests/run.sh installs etcd-server and etcd-client)"]
fn a_host_down_for_good_hands_over_the_placer_and_gets_nothing_new() {
    let mut f = Fleet::running(3, &["a", "b", "c"]);
    let first = names("first", 6);
    f.write("first.yaml", &volumes_yaml(&first, ""));
    f.wait_exactly_once(&first, WAIT);
    f.wait("a placer to be elected", WAIT, |f| f.leader().is_some());
    let dead = f.leader().unwrap();
    let dead_name = f.hosts[dead].name.clone();
    let before = f.volumes();
    let on_dead: Vec<String> = before
        .iter()
        .filter(|(_, p)| p[0].0 == dead_name)
        .map(|(n, _)| n.clone())
        .collect();

    // The placer's host dies and stays dead: another agent takes over the
    // election within a few lease lengths (TTL 3 s here).
    f.hosts[dead].kill();
    let killed = Instant::now();
    f.wait("another host to lead the placer", WAIT, |f| {
        f.leader().is_some_and(|l| l != dead)
    });
    let handover = killed.elapsed();
    eprintln!("host-down: placer moved from {dead_name} in {handover:.1?}");
    let leader = f.leader().unwrap();
    assert!(f.hosts[leader].pid().is_some(), "the new placer runs");
    f.wait(
        &format!("{dead_name} to be down in status --fleet"),
        WAIT,
        |f| {
            let r = f.cli(&["status", "--fleet"]);
            r.stdout
                .lines()
                .any(|l| is_host_line(l, &dead_name, "down"))
        },
    );
    let r = f.cli(&["status", "--fleet"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    if on_dead.is_empty() {
        assert!(
            r.stdout.contains("Unavailable volumes: none"),
            "{}",
            r.stdout
        );
    } else {
        assert!(
            r.stdout
                .contains("Unavailable volumes (their host is down):"),
            "{}",
            r.stdout
        );
        for n in &on_dead {
            assert!(
                r.stdout
                    .contains(&format!("\n  volume.{n} (host {dead_name})\n")),
                "{n}\n{}",
                r.stdout
            );
        }
    }

    // New unpinned volumes: each placed once, on the live hosts only.
    let second = names("second", 8);
    f.write("second.yaml", &volumes_yaml(&second, ""));
    let mut all = first.clone();
    all.extend(second.iter().cloned());
    f.wait_exactly_once(&all, WAIT);
    std::thread::sleep(Duration::from_secs(2));
    let v = f.volumes();
    assert_eq!(v.len(), all.len(), "{v:?}");
    let placements = f.placements();
    for n in &second {
        assert_eq!(v[n].len(), 1, "{n}: {:?}", v[n]);
        assert_ne!(v[n][0].0, dead_name, "{n} went to the down host");
        assert_eq!(placements[n]["host"], v[n][0].0.as_str(), "{n}");
    }
    // The down host's volumes stay placed where their data is.
    for (n, p) in &before {
        assert_eq!(&v[n], p, "{n} moved");
        assert_eq!(placements[n]["host"], p[0].0.as_str(), "{n}");
    }
}

#[test]
#[ignore = "needs etcd, etcdctl and openssl (tests/run.sh installs etcd-server, etcd-client and openssl)"]
fn agents_reach_etcd_over_client_tls_as_a_user_and_a_wrong_password_or_ca_is_one_clear_error() {
    let etcd = Cluster::start_secure();
    let sec = etcd.secure.clone().unwrap();
    let mut f = Fleet::on(etcd, &["a", "b"], false);
    let pw = f.path().join("etcd-password");
    fs::write(&pw, format!("{}\n", sec.agent_password)).unwrap();
    let wrong_pw = f.path().join("wrong-password");
    fs::write(&wrong_pw, "not-the-password\n").unwrap();
    let tls = |ca: &Path, pw: &Path| secure_args(&sec, ca, pw);
    assert!(f.etcd.endpoints().starts_with("https://"));

    // Wrong password, wrong CA, no user: each one error that says what is
    // wrong, never the password, and exit 1.
    for (what, args, says) in [
        (
            "a wrong password",
            tls(&sec.ca, &wrong_pw),
            "authentication failed",
        ),
        ("a wrong CA", tls(&sec.other_ca, &pw), "certificate"),
    ] {
        f.etcd_args = args;
        let r = f.cli(&["status", "--fleet"]);
        eprintln!("{what}: {}", r.stderr.trim_end());
        assert_eq!(r.code, 1, "{what}: {}\n{}", r.stdout, r.stderr);
        let errors: Vec<&str> = r
            .stderr
            .lines()
            .filter(|l| l.starts_with("error"))
            .collect();
        assert_eq!(errors.len(), 1, "{what}: {}", r.stderr);
        assert!(
            r.stderr.contains("etcd at https://127.0.0.1:"),
            "{what}: {}",
            r.stderr
        );
        assert!(
            r.stderr.to_lowercase().contains(says),
            "{what}: expected {says:?} in\n{}",
            r.stderr
        );
        assert!(!r.stderr.contains(&sec.agent_password), "{}", r.stderr);
        assert!(!r.stderr.contains("not-the-password"), "{}", r.stderr);
    }

    // The right ones: the agents register, place and create, each volume once.
    f.etcd_args = tls(&sec.ca, &pw);
    f.write("backends.yaml", &f.backends(""));
    f.start_all();
    let vols = names("tls", 4);
    f.write("volumes.yaml", &volumes_yaml(&vols, ""));
    f.wait_exactly_once(&vols, WAIT);
    assert_eq!(f.placements().len(), 4);
    let r = f.cli(&["status", "--fleet"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    for h in ["a", "b"] {
        assert!(
            r.stdout.lines().any(|l| is_host_line(l, h, "up")),
            "{}",
            r.stdout
        );
    }
    assert!(r.stdout.contains("Placements: 4 ("), "{}", r.stdout);
    for h in &f.hosts {
        assert!(!h.log().contains(&sec.agent_password), "{}", h.log());
    }
}

/// A small deterministic generator, seeded (the seed is printed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }
}

#[test]
#[ignore = "needs etcd and etcdctl (tests/run.sh installs etcd-server and etcd-client)"]
fn chaos_kills_partitions_and_a_stopped_member_create_nothing_twice_and_lose_nothing() {
    let seed = std::env::var("CINDERBLOCK_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            u64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
                    % 1_000_000_007,
            )
            .unwrap()
                | 1
        });
    let rounds: usize = std::env::var("CINDERBLOCK_CHAOS_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    eprintln!("chaos: seed {seed}, {rounds} rounds");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut f = Fleet::new(3, &["a", "b", "c"], true);
    f.write("backends.yaml", &f.backends(""));
    f.start_all();
    let mut declared: Vec<String> = Vec::new();
    let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
    let (mut agent_kills, mut leader_kills, mut member_stops, mut cut_offs) = (0, 0, 0, 0);
    for round in 0..rounds {
        let new = names(&format!("r{round}"), 5);
        declared.extend(new.iter().cloned());
        // The chaos of this round, in turn: each kind of trouble comes up.
        match round % 4 {
            0 => {
                // The leader dies while it places this round's volumes.
                f.write(&format!("round-{round}.yaml"), &volumes_yaml(&new, ""));
                std::thread::sleep(Duration::from_millis(150 + 50 * rng.below(6) as u64));
                if let Some(l) = f.leader() {
                    f.hosts[l].kill();
                    leader_kills += 1;
                    std::thread::sleep(Duration::from_millis(500));
                    f.start(l);
                }
            }
            1 => {
                // Random agents killed and restarted while they work.
                f.write(&format!("round-{round}.yaml"), &volumes_yaml(&new, ""));
                for _ in 0..2 {
                    let i = rng.below(3);
                    std::thread::sleep(Duration::from_millis(100 * rng.below(5) as u64));
                    f.hosts[i].kill();
                    agent_kills += 1;
                    std::thread::sleep(Duration::from_millis(200));
                    f.start(i);
                }
            }
            2 => {
                // One etcd member stopped for the round (quorum holds).
                let m = rng.below(3);
                f.etcd.kill(m);
                member_stops += 1;
                f.write(&format!("round-{round}.yaml"), &volumes_yaml(&new, ""));
                f.wait_exactly_once(&declared, WAIT);
                f.etcd.restart(m);
                assert!(f.etcd.wait_healthy(WAIT), "{}", f.etcd.logs());
            }
            _ => {
                // A host cut off from etcd for longer than its lease.
                let i = rng.below(3);
                for p in &f.hosts[i].proxies {
                    p.cut();
                }
                cut_offs += 1;
                f.write(&format!("round-{round}.yaml"), &volumes_yaml(&new, ""));
                std::thread::sleep(Duration::from_secs(5));
                for p in &f.hosts[i].proxies {
                    p.heal();
                }
            }
        }
        f.wait_exactly_once(&declared, WAIT);
        // Nothing made earlier is lost or replaced.
        let now = f.volumes();
        for (n, (host, uuid)) in &seen {
            assert_eq!(
                now.get(n).map(|p| &p[0]),
                Some(&(host.clone(), uuid.clone())),
                "{n} changed or vanished"
            );
        }
        for n in &new {
            seen.insert(n.clone(), now[n][0].clone());
        }
        eprintln!(
            "chaos: round {round} done after {:.0}s: {} volumes",
            started.elapsed().as_secs_f64(),
            now.len()
        );
    }
    // Settle, then the final count.
    std::thread::sleep(Duration::from_secs(3));
    let v = f.volumes();
    let duplicates = v.values().filter(|p| p.len() > 1).count();
    let lost = declared.iter().filter(|n| !v.contains_key(*n)).count();
    let placements = f.placements().len();
    eprintln!(
        "chaos: seed {seed}: {rounds} rounds, {} volumes, {placements} placements, {agent_kills} agent kills, {leader_kills} leader kills mid-placement, {member_stops} etcd member stops, {cut_offs} hosts cut off; {duplicates} duplicates, {lost} lost; {:.0}s",
        declared.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(duplicates, 0);
    assert_eq!(lost, 0);
    assert_eq!(v.len(), declared.len());
    assert_eq!(placements, declared.len());
}
