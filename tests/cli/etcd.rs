//! Test harness: real etcd clusters (Debian's `etcd-server`, installed by
//! tests/run.sh) on free loopback ports with per-test data directories,
//! and TCP proxies that can cut one host off.
//!
//! Every member is killed when its cluster is dropped, pass or fail (a
//! panicking test unwinds through `Drop`); data directories live in the
//! cluster's temp dir.

#![allow(clippy::disallowed_methods)] // a test harness: it runs etcd and etcdctl

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A port no one listens on right now (bound then released: another
/// process could take it in between, so starting a member retries).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One member.
pub struct Member {
    pub name: String,
    pub client: u16,
    pub peer: u16,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A cluster of `n` members on 127.0.0.1.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    /// Client TLS and the root user, when started with [`Cluster::start_secure`].
    pub secure: Option<Secure>,
}

/// A cluster's client TLS (certificates made at test time with openssl)
/// and authentication: the root user for etcdctl, and `agent`, who may
/// read and write `/cinderblock` only.
#[derive(Clone)]
pub struct Secure {
    /// The CA that signed the servers' and the client's certificates.
    pub ca: PathBuf,
    /// Another CA, which signed nothing here.
    pub other_ca: PathBuf,
    /// The client certificate and key (CN `cinderblock-client`, not a user).
    pub cert: PathBuf,
    pub key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    root_password: String,
    /// Whether authentication is on (etcdctl then logs in as root).
    auth_enabled: bool,
    /// The password of user `agent`.
    pub agent_password: String,
}

/// Runs openssl, asserting it succeeds.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs (tests/run.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`NAME.pem`, `NAME.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// A certificate `NAME.pem`/`NAME.key` signed by CA `ca`, for `usage`
/// (`serverAuth`, `clientAuth`), valid for 127.0.0.1.
fn make_cert(dir: &Path, ca: &str, name: &str, cn: &str, usage: &str) {
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n"
        ),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

impl Cluster {
    /// Starts `n` members and waits until the cluster answers.
    pub fn start(n: usize) -> Cluster {
        for attempt in 0.. {
            let dir = tempfile::tempdir().unwrap();
            let members: Vec<Member> = (0..n)
                .map(|i| Member {
                    name: format!("m{i}"),
                    client: free_port(),
                    peer: free_port(),
                    data: dir.path().join(format!("m{i}.etcd")),
                    log: dir.path().join(format!("m{i}.log")),
                    child: None,
                })
                .collect();
            let mut c = Cluster {
                dir,
                members,
                secure: None,
            };
            for i in 0..n {
                c.spawn(i, "new");
            }
            if c.wait_healthy(Duration::from_secs(30)) {
                return c;
            }
            assert!(attempt < 2, "etcd did not start; logs:\n{}", c.logs());
            // A port was taken between choosing and binding: again.
        }
        unreachable!()
    }

    /// One member with client TLS (a client certificate required) and
    /// authentication on: root, and user `agent` with read-write on
    /// `/cinderblock` only.
    pub fn start_secure() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        make_ca(d, "ca");
        make_ca(d, "other-ca");
        make_cert(d, "ca", "server", "127.0.0.1", "serverAuth");
        make_cert(d, "ca", "client", "cinderblock-client", "clientAuth");
        let secure = Secure {
            ca: d.join("ca.pem"),
            other_ca: d.join("other-ca.pem"),
            cert: d.join("client.pem"),
            key: d.join("client.key"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server.key"),
            root_password: "root-secret-1".to_owned(),
            auth_enabled: false,
            agent_password: "agent-secret-2".to_owned(),
        };
        for attempt in 0.. {
            let member = Member {
                name: "m0".to_owned(),
                client: free_port(),
                peer: free_port(),
                data: d.join(format!("m0-{attempt}.etcd")),
                log: d.join(format!("m0-{attempt}.log")),
                child: None,
            };
            let mut c = Cluster {
                dir: tempfile::tempdir().unwrap(),
                members: vec![member],
                secure: Some(secure.clone()),
            };
            c.spawn(0, "new");
            if c.wait_healthy(Duration::from_secs(30)) {
                let s = c.secure.as_ref().unwrap();
                let (root, agent) = (s.root_password.clone(), s.agent_password.clone());
                for args in [
                    vec!["user", "add", "root", "--new-user-password", root.as_str()],
                    vec!["user", "grant-role", "root", "root"],
                    vec!["role", "add", "fleet"],
                    vec![
                        "role",
                        "grant-permission",
                        "fleet",
                        "--prefix=true",
                        "readwrite",
                        "/cinderblock",
                    ],
                    vec![
                        "user",
                        "add",
                        "agent",
                        "--new-user-password",
                        agent.as_str(),
                    ],
                    vec!["user", "grant-role", "agent", "fleet"],
                    vec!["auth", "enable"],
                ] {
                    let out = c.etcdctl(&args);
                    assert!(
                        out.status.success(),
                        "etcdctl {args:?}: {}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                if let Some(s) = c.secure.as_mut() {
                    s.auth_enabled = true;
                }
                // Keep the certificates' directory alive with the cluster.
                c.dir = dir;
                return c;
            }
            assert!(attempt < 2, "etcd did not start; logs:\n{}", c.logs());
        }
        unreachable!()
    }

    fn scheme(&self) -> &'static str {
        if self.secure.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let initial = self.initial_cluster();
        let token = self
            .dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let scheme = self.scheme();
        let tls: Vec<String> = self
            .secure
            .as_ref()
            .map(|s| {
                vec![
                    "--cert-file".to_owned(),
                    s.server_cert.display().to_string(),
                    "--key-file".to_owned(),
                    s.server_key.display().to_string(),
                    "--trusted-ca-file".to_owned(),
                    s.ca.display().to_string(),
                    "--client-cert-auth".to_owned(),
                ]
            })
            .unwrap_or_default();
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap();
        let child = Command::new("etcd")
            .args([
                "--name",
                &m.name,
                "--data-dir",
                &m.data.display().to_string(),
                "--listen-client-urls",
                &format!("{scheme}://127.0.0.1:{}", m.client),
                "--advertise-client-urls",
                &format!("{scheme}://127.0.0.1:{}", m.client),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer),
                "--initial-cluster",
                &initial,
                "--initial-cluster-state",
                state,
                "--initial-cluster-token",
                &token,
                // Quick elections on loopback.
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
                "--log-level",
                "warn",
            ])
            .args(&tls)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd runs (tests/run.sh installs etcd-server)");
        m.child = Some(child);
    }

    /// Waits until every running member reports healthy.
    pub fn wait_healthy(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let out = self.etcdctl(&["endpoint", "health", "--cluster=false"]);
            if out.status.success() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// The client URLs of every member, comma-separated.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URLs of the running members.
    fn live_endpoints(&self) -> String {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs etcdctl (v3 API) against the running members.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let root = self
            .secure
            .as_ref()
            .filter(|s| s.auth_enabled)
            .map(|s| format!("root:{}", s.root_password));
        self.etcdctl_as(root.as_deref(), args)
    }

    /// Runs etcdctl as `user` (`NAME:PASSWORD`), with the client
    /// certificate when the cluster has TLS.
    pub fn etcdctl_as(&self, user: Option<&str>, args: &[&str]) -> Output {
        let mut extra: Vec<String> = Vec::new();
        if let Some(s) = &self.secure {
            extra.push(format!("--cacert={}", s.ca.display()));
            extra.push(format!("--cert={}", s.cert.display()));
            extra.push(format!("--key={}", s.key.display()));
        }
        if let Some(u) = user {
            extra.push(format!("--user={u}"));
        }
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.live_endpoints()))
            .arg("--command-timeout=5s")
            .args(&extra)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("etcdctl runs (tests/run.sh installs etcd-client)")
    }

    /// Keys and values under `prefix`.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.etcdctl(&["get", "--prefix", prefix]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_owned(), c[1].to_owned()))
            .collect()
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none());
        self.spawn(i, "existing");
    }

    /// Every member's log.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for m in &self.members {
            s.push_str("--- ");
            s.push_str(&m.name);
            s.push_str(" ---\n");
            s.push_str(&std::fs::read_to_string(&m.log).unwrap_or_default());
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// A TCP proxy from a free loopback port to `target`, which can cut the
/// path: existing connections are shut down and new ones are accepted and
/// left without an answer (a black hole, as a partition looks to a client).
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, s, cs) = (Arc::clone(&cut), Arc::clone(&stop), Arc::clone(&conns));
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                if c.load(Ordering::SeqCst) {
                    // Black hole: keep it open, say nothing.
                    cs.lock().unwrap().push(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                cs.lock().unwrap().push(client.try_clone().unwrap());
                cs.lock().unwrap().push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy {
            port,
            cut,
            stop,
            conns,
        }
    }

    /// Cuts the path: open connections die, new ones hang.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Heals it.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}
