//! The job protocol between two hosts on fakes: in-memory back ends
//! ([`crate::driver::fake`]), an in-memory etcd, a LIO that keeps ACLs and
//! secrets, and an initiator that logs in only with the right secret. Each
//! side runs on its own thread, as two agents do.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;

use super::{
    Attacher, End, Exporter, Job, Jobs, Phase, Receive, Sending, Target, Wait, XhostError, receive,
    send,
};
use crate::copy::{Observer, Position};
use crate::driver::DataPath;
use crate::driver::fake::{FakeDriver, FakeObject};
use crate::driver::fault::{Action, Faulty, Trigger};
use crate::migrate::{Checkpoints, MigrateError};
use crate::model::{Mark, ObjKind};

const MIB: u64 = 1 << 20;
const DEST_IQN: &str = "iqn.1993-08.org.debian:01:stor-b";

/// etcd: records by volume with revisions; one handle per host, each of
/// which can die after its n-th write (the write done, then the error).
#[derive(Default)]
struct Store {
    jobs: Mutex<(BTreeMap<String, (String, i64)>, i64)>,
    /// Every value ever written (to look for the secret where it must not be).
    written: Mutex<Vec<String>>,
}

struct Handle {
    store: Arc<Store>,
    die_after: Option<usize>,
    writes: AtomicUsize,
}

impl Handle {
    fn new(store: &Arc<Store>, die_after: Option<usize>) -> Self {
        Handle {
            store: store.clone(),
            die_after,
            writes: AtomicUsize::new(0),
        }
    }
    fn wrote(&self) -> Result<(), XhostError> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst);
        if self.die_after.is_some_and(|d| n >= d) {
            return Err(XhostError::Jobs(format!("killed after write {n}")));
        }
        Ok(())
    }
}

impl Jobs for Handle {
    fn get(&self, volume: &str) -> Result<Option<(Job, i64)>, XhostError> {
        if self
            .die_after
            .is_some_and(|d| self.writes.load(Ordering::SeqCst) > d)
        {
            return Err(XhostError::Jobs("dead".into()));
        }
        let j = self.store.jobs.lock().unwrap();
        Ok(j.0
            .get(volume)
            .map(|(v, r)| (serde_json::from_str(v).unwrap(), *r)))
    }
    fn put(&self, job: &Job, expect: Option<i64>) -> Result<Option<i64>, XhostError> {
        let rev = {
            let mut j = self.store.jobs.lock().unwrap();
            let now = j.0.get(&job.volume).map(|(_, r)| *r);
            if now != expect {
                return Ok(None);
            }
            j.1 += 1;
            let rev = j.1;
            let v = serde_json::to_string(job).unwrap();
            self.store.written.lock().unwrap().push(v.clone());
            j.0.insert(job.volume.clone(), (v, rev));
            rev
        };
        self.wrote()?;
        Ok(Some(rev))
    }
    fn delete(&self, volume: &str, expect: i64) -> Result<bool, XhostError> {
        {
            let mut j = self.store.jobs.lock().unwrap();
            if j.0.get(volume).map(|(_, r)| *r) != Some(expect) {
                return Ok(false);
            }
            j.0.remove(volume);
            j.1 += 1;
        }
        self.wrote()?;
        Ok(true)
    }
    fn initiator(&self, host: &str) -> Result<Option<String>, XhostError> {
        Ok((host == "stor-b").then(|| DEST_IQN.to_owned()))
    }
}

/// LIO: exports by volume, with their target (ACL and secret).
#[derive(Default)]
struct Lio {
    exports: Mutex<BTreeMap<Uuid, (PathBuf, Target)>>,
}

impl Exporter for Arc<Lio> {
    fn export(&self, uuid: Uuid, data: &DataPath, target: &Target) -> Result<(), String> {
        self.exports
            .lock()
            .unwrap()
            .insert(uuid, (data.path.clone(), target.clone()));
        Ok(())
    }
    fn unexport(&self, uuid: Uuid) -> Result<(), String> {
        self.exports.lock().unwrap().remove(&uuid);
        Ok(())
    }
}

/// open-iscsi: a login needs an export with an ACL for this initiator and
/// the right secret; the "device" is the source's file.
struct Initiator {
    lio: Arc<Lio>,
    sessions: Mutex<BTreeSet<String>>,
    logins: AtomicUsize,
}

impl Attacher for Initiator {
    fn login(&self, t: &Target) -> Result<PathBuf, String> {
        let exports = self.lio.exports.lock().unwrap();
        let Some((path, have)) = exports.values().find(|(_, x)| x.iqn == t.iqn) else {
            return Err(format!("no target {}", t.iqn));
        };
        if have.initiator != DEST_IQN || have.user != t.user || have.secret != t.secret {
            return Err("authentication failure".into());
        }
        self.logins.fetch_add(1, Ordering::SeqCst);
        self.sessions.lock().unwrap().insert(t.iqn.clone());
        Ok(path.clone())
    }
    fn logout(&self, t: &Target) -> Result<(), String> {
        self.sessions.lock().unwrap().remove(&t.iqn);
        Ok(())
    }
}

/// Journal checkpoints that outlive a run (the destination's journal).
#[derive(Default, Clone)]
struct Journal(Arc<Mutex<(u64, usize)>>);

impl Observer for Journal {
    fn progress(&mut self, _: &Position) {}
    fn checkpoint(&mut self, at: &Position) -> Result<(), String> {
        self.0.lock().unwrap().0 = at.offset;
        Ok(())
    }
}

impl Checkpoints for Journal {
    fn last(&self, _: Uuid) -> Result<u64, MigrateError> {
        Ok(self.0.lock().unwrap().0)
    }
    fn begin(&mut self, _: Uuid) {}
    fn reset(&mut self, _: Uuid) -> Result<(), MigrateError> {
        let mut j = self.0.lock().unwrap();
        j.0 = 0;
        j.1 += 1;
        Ok(())
    }
}

struct Site {
    _dir: tempfile::TempDir,
    a: FakeDriver,
    b: FakeDriver,
    uuid: Uuid,
    data: Vec<u8>,
    store: Arc<Store>,
    lio: Arc<Lio>,
    initiator: Initiator,
    journal: Journal,
}

fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let a = FakeDriver::new("pool-a", dir.path(), true);
    let b = FakeDriver::new("thin-b", dir.path(), true);
    let uuid = Uuid::from_u128(0x15);
    let mut data = vec![0u8; 8 * MIB as usize];
    data[MIB as usize..3 * MIB as usize].fill(0x5a);
    data[7 * MIB as usize + 9] = 1;
    a.put(
        uuid,
        FakeObject {
            group: None,
            name: "db".into(),
            kind: ObjKind::Volume,
            size: 8 * MIB,
            mark: Mark::Ready,
            migration: None,
            parent: None,
            in_use: false,
        },
        &data,
    );
    let lio = Arc::new(Lio::default());
    Site {
        _dir: dir,
        a,
        b,
        uuid,
        data,
        store: Arc::new(Store::default()),
        initiator: Initiator {
            lio: lio.clone(),
            sessions: Mutex::new(BTreeSet::new()),
            logins: AtomicUsize::new(0),
        },
        lio,
        journal: Journal::default(),
    }
}

fn from() -> End {
    End {
        host: "stor-a".into(),
        backend: "pool-a".into(),
    }
}

fn to() -> End {
    End {
        host: "stor-b".into(),
        backend: "thin-b".into(),
    }
}

fn wait() -> Wait {
    Wait {
        poll: Duration::from_millis(1),
        stall: Duration::from_secs(3),
    }
}

fn sending(uuid: Uuid) -> Sending<'static> {
    Sending {
        volume: "db",
        uuid,
        from: from(),
        to: to(),
        portal: Some("127.0.0.1:3260"),
        wait: wait(),
    }
}

fn receiving(uuid: Uuid, source_gone: bool) -> Receive<'static> {
    Receive {
        volume: "db",
        uuid,
        from: from(),
        to: to(),
        size: 8 * MIB,
        bandwidth: None,
        source_gone,
        wait: wait(),
    }
}

fn nap(d: Duration) {
    std::thread::sleep(d);
}

/// The end state every run must reach: the volume once, on B, ready, with
/// its data and identity; nothing left on A, in LIO, in sessions or etcd.
fn assert_moved(s: &Site, at: &str) {
    assert!(
        s.a.state().is_empty(),
        "{at}: the source is gone: {:?}",
        s.a.state()
    );
    let b = s.b.state();
    assert_eq!(b.len(), 1, "{at}: the volume exists once on B");
    let o = &b[&s.uuid];
    assert_eq!((o.name.as_str(), o.mark), ("db", Mark::Ready), "{at}");
    assert!(s.b.data(s.uuid) == s.data, "{at}: the data arrived");
    assert!(
        s.lio.exports.lock().unwrap().is_empty(),
        "{at}: no export left"
    );
    assert!(
        s.initiator.sessions.lock().unwrap().is_empty(),
        "{at}: no session left"
    );
    assert!(
        s.store.jobs.lock().unwrap().0.is_empty(),
        "{at}: the job key is removed"
    );
}

#[test]
fn both_halves_move_the_volume_and_leave_nothing_behind() {
    let s = site();
    std::thread::scope(|t| {
        let src = t.spawn(|| {
            send(
                &sending(s.uuid),
                &s.a,
                &Handle::new(&s.store, None),
                &s.lio,
                &nap,
            )
        });
        let mut j = s.journal.clone();
        let r = receive(
            &receiving(s.uuid, false),
            &s.b,
            &Handle::new(&s.store, None),
            &s.initiator,
            &mut j,
            &nap,
        )
        .unwrap();
        let sent = src.join().unwrap().unwrap();
        assert!(sent.removed);
        // The copy read only the allocated ranges the source published.
        let copy = r.copy.unwrap();
        assert_eq!(copy.read, 2 * MIB + MIB, "two data MiB and the last one");
    });
    assert_moved(&s, "uninterrupted");
    // Written into the job: the secret (for the destination) and phases.
    let written = s.store.written.lock().unwrap();
    let phases: Vec<String> = written
        .iter()
        .map(|v| {
            serde_json::from_str::<Job>(v)
                .unwrap()
                .phase
                .as_str()
                .to_owned()
        })
        .collect();
    assert_eq!(phases.first().map(String::as_str), Some("exported"));
    assert_eq!(phases.last().map(String::as_str), Some("verified"));
}

#[test]
fn a_failed_verification_keeps_the_source_and_says_so() {
    let s = site();
    std::thread::scope(|t| {
        let src = t.spawn(|| {
            send(
                &sending(s.uuid),
                &s.a,
                &Handle::new(&s.store, None),
                &s.lio,
                &nap,
            )
        });
        // The source's hash is not what the target will hash.
        let jobs = Handle::new(&s.store, None);
        let (mut job, rev) = loop {
            if let Some(j) = jobs.get("db").unwrap() {
                break j;
            }
            nap(Duration::from_millis(1));
        };
        job.hash = blake3::hash(b"something else").to_hex().to_string();
        assert!(jobs.put(&job, Some(rev)).unwrap().is_some());
        let mut j = s.journal.clone();
        let e = receive(
            &receiving(s.uuid, false),
            &s.b,
            &jobs,
            &s.initiator,
            &mut j,
            &nap,
        )
        .unwrap_err();
        assert!(e.to_string().contains("verification failed"), "{e}");
        assert!(e.is_retryable());
        assert_eq!(s.journal.0.lock().unwrap().1, 1, "the checkpoint is reset");
        assert!(
            s.initiator.sessions.lock().unwrap().is_empty(),
            "logged out"
        );
        let a = s.a.state();
        assert_eq!(a[&s.uuid].mark, Mark::Ready, "the source is kept");
        assert!(s.a.data(s.uuid) == s.data, "and unchanged");
        assert_eq!(
            s.b.state()[&s.uuid].mark,
            Mark::Migrating,
            "the target is no volume yet"
        );
        let (job, _) = jobs.get("db").unwrap().unwrap();
        assert_ne!(job.phase, Phase::Verified);
        // The source stops waiting once nothing moves (stall), still whole.
        let e = src.join().unwrap().unwrap_err();
        assert!(matches!(e, XhostError::Waiting(_)), "{e}");
        assert_eq!(s.a.state()[&s.uuid].mark, Mark::Ready);
    });
}

#[test]
fn a_destination_killed_after_any_step_resumes_once() {
    // Its driver calls, then its job writes.
    for kind in ["driver", "etcd"] {
        for n in 0.. {
            let s = site();
            let at = format!("destination {kind} {n}");
            let fired = std::thread::scope(|t| {
                let src = t.spawn(|| {
                    send(
                        &sending(s.uuid),
                        &s.a,
                        &Handle::new(&s.store, None),
                        &s.lio,
                        &nap,
                    )
                });
                let mut j = s.journal.clone();
                let (fired, first) = if kind == "driver" {
                    let f = Faulty::new(Box::new(s.b.clone()), Trigger::Call(n), Action::Fail);
                    let jobs = Handle::new(&s.store, None);
                    let r = receive(
                        &receiving(s.uuid, false),
                        &f,
                        &jobs,
                        &s.initiator,
                        &mut j,
                        &nap,
                    );
                    (f.fired(), r)
                } else {
                    let jobs = Handle::new(&s.store, Some(n));
                    let r = receive(
                        &receiving(s.uuid, false),
                        &s.b,
                        &jobs,
                        &s.initiator,
                        &mut j,
                        &nap,
                    );
                    (jobs.writes.load(Ordering::SeqCst) > n, r)
                };
                let mut src = Some(src);
                if fired {
                    assert!(first.is_err(), "{at}: a dead agent fails the step");
                    // Verified before it died: the source finishes alone.
                    let verified = Handle::new(&s.store, None)
                        .get("db")
                        .unwrap()
                        .is_some_and(|(j, _)| j.phase == Phase::Verified);
                    if verified && let Some(h) = src.take() {
                        h.join()
                            .unwrap()
                            .unwrap_or_else(|e| panic!("{at}: source: {e}"));
                    }
                    // Restarted: the plan says "source gone" only when the
                    // job is gone and the source is no more.
                    let gone = s.store.jobs.lock().unwrap().0.is_empty() && s.a.state().is_empty();
                    receive(
                        &receiving(s.uuid, gone),
                        &s.b,
                        &Handle::new(&s.store, None),
                        &s.initiator,
                        &mut j,
                        &nap,
                    )
                    .unwrap_or_else(|e| panic!("{at}: the next run: {e}"));
                } else {
                    first.unwrap_or_else(|e| panic!("{at}: {e}"));
                }
                if let Some(h) = src {
                    h.join()
                        .unwrap()
                        .unwrap_or_else(|e| panic!("{at}: source: {e}"));
                }
                fired
            });
            assert_moved(&s, &at);
            if !fired {
                assert!(
                    n >= 2,
                    "{at}: the destination changes something at least twice"
                );
                break;
            }
        }
    }
}

#[test]
fn a_source_killed_after_any_step_resumes_once() {
    for kind in ["driver", "etcd"] {
        for n in 0.. {
            let s = site();
            let at = format!("source {kind} {n}");
            let fired = std::thread::scope(|t| {
                let dst = t.spawn(|| {
                    let mut j = s.journal.clone();
                    receive(
                        &receiving(s.uuid, false),
                        &s.b,
                        &Handle::new(&s.store, None),
                        &s.initiator,
                        &mut j,
                        &nap,
                    )
                });
                let (fired, first) = if kind == "driver" {
                    let f = Faulty::new(Box::new(s.a.clone()), Trigger::Call(n), Action::Fail);
                    let r = send(
                        &sending(s.uuid),
                        &f,
                        &Handle::new(&s.store, None),
                        &s.lio,
                        &nap,
                    );
                    (f.fired(), r)
                } else {
                    let jobs = Handle::new(&s.store, Some(n));
                    let r = send(&sending(s.uuid), &s.a, &jobs, &s.lio, &nap);
                    (jobs.writes.load(Ordering::SeqCst) > n, r)
                };
                if fired {
                    assert!(first.is_err(), "{at}: a dead agent fails the step");
                    let job_left = !s.store.jobs.lock().unwrap().0.is_empty();
                    if job_left || !s.a.state().is_empty() {
                        send(
                            &sending(s.uuid),
                            &s.a,
                            &Handle::new(&s.store, None),
                            &s.lio,
                            &nap,
                        )
                        .unwrap_or_else(|e| panic!("{at}: the next run: {e}"));
                    }
                } else {
                    first.unwrap_or_else(|e| panic!("{at}: {e}"));
                }
                dst.join()
                    .unwrap()
                    .unwrap_or_else(|e| panic!("{at}: destination: {e}"));
                fired
            });
            assert_moved(&s, &at);
            if !fired {
                assert!(
                    n > 1,
                    "{at}: the source changes something at least {n} times"
                );
                break;
            }
        }
    }
}

/// Log lines of a run, at every level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_chap_secret_is_in_no_log_and_no_debug_output() {
    let s = site();
    let log = Captured::default();
    let make = || {
        let w = log.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || w.clone())
            .finish()
    };
    std::thread::scope(|t| {
        let src = t.spawn(|| {
            tracing::subscriber::with_default(make(), || {
                send(
                    &sending(s.uuid),
                    &s.a,
                    &Handle::new(&s.store, None),
                    &s.lio,
                    &nap,
                )
            })
        });
        tracing::subscriber::with_default(make(), || {
            let mut j = s.journal.clone();
            receive(
                &receiving(s.uuid, false),
                &s.b,
                &Handle::new(&s.store, None),
                &s.initiator,
                &mut j,
                &nap,
            )
            .unwrap();
        });
        src.join().unwrap().unwrap();
    });
    let first = s.store.written.lock().unwrap()[0].clone();
    let job: Job = serde_json::from_str(&first).unwrap();
    let secret = job.target.secret.expose().to_owned();
    assert_eq!(secret.len(), 32);
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("exported for the migration"),
        "the log was captured: {text}"
    );
    assert!(!text.contains(&secret), "the secret is in the log");
    let shown = format!("{job:?} {:?}", job.view());
    assert!(
        !shown.contains(&secret) && shown.contains("<redacted>"),
        "{shown}"
    );
    // A second job draws another secret.
    assert_ne!(super::Secret::random().unwrap(), job.target.secret);
    // And the command line iscsiadm gets shows it redacted.
    let cmd = crate::exec::Cmd::new("iscsiadm").arg("-v").secret(&secret);
    assert!(!format!("{cmd:?}").contains(&secret));
}

/// `iscsiadm` as open-iscsi 2.1 behaves for a login: `-o new` writes a
/// node record file (`DB/IQN/ADDR,PORT,-1/default`), `--login` reads it and
/// makes a session in sysfs, `-o delete` removes the record. Every argument
/// vector is kept, as `/proc/PID/cmdline` would show it.
struct FakeIscsiadm {
    db: PathBuf,
    sysfs: PathBuf,
    argv: Mutex<Vec<String>>,
    /// The record's text and mode at `--login`.
    at_login: Mutex<Option<(String, u32)>>,
}

impl FakeIscsiadm {
    fn record_dir(&self, iqn: &str) -> PathBuf {
        self.db.join(iqn).join("127.0.0.1,3260,-1")
    }
}

impl crate::exec::Runner for FakeIscsiadm {
    fn run(&self, cmd: &crate::exec::Cmd) -> Result<crate::exec::Output, crate::exec::ExecError> {
        use std::os::unix::fs::PermissionsExt as _;
        let args: Vec<String> = cmd
            .arguments()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        self.argv.lock().unwrap().push(args.join(" "));
        let iqn = args[args.iter().position(|a| a == "-T").unwrap() + 1].clone();
        let dir = self.record_dir(&iqn);
        if args.iter().any(|a| a == "new") {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("default"),
                format!("# BEGIN RECORD 2.1.8\nnode.name = {iqn}\nnode.tpgt = -1\nnode.startup = automatic\nnode.session.auth.authmethod = None\nnode.conn[0].address = 127.0.0.1\nnode.conn[0].port = 3260\n# END RECORD\n"),
            )
            .unwrap();
        } else if args.iter().any(|a| a == "--login") {
            let f = dir.join("default");
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            *self.at_login.lock().unwrap() = Some((std::fs::read_to_string(&f).unwrap(), mode));
            let s = self.sysfs.join("session1");
            std::fs::create_dir_all(s.join("device/target1:0:0/1:0:0:0/block/null")).unwrap();
            std::fs::write(s.join("targetname"), format!("{iqn}\n")).unwrap();
        } else if args.iter().any(|a| a == "--logout") {
            let _ = std::fs::remove_dir_all(self.sysfs.join("session1"));
        } else if args.iter().any(|a| a == "delete") {
            std::fs::remove_file(dir.join("default")).unwrap();
            std::fs::remove_dir(&dir).unwrap();
        }
        Ok(crate::exec::Output {
            argv: args,
            termination: crate::exec::Termination::Exit(0),
            stdout: Vec::new(),
            stderr: Vec::new(),
            elapsed: Duration::ZERO,
        })
    }
}

#[test]
fn the_destination_logs_in_with_the_chap_secret_on_no_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeIscsiadm {
        // The first database looked at does not exist (another build's).
        db: tmp.path().join("var-lib-iscsi-nodes"),
        sysfs: tmp.path().join("sys"),
        argv: Mutex::new(Vec::new()),
        at_login: Mutex::new(None),
    };
    std::fs::create_dir_all(&fake.sysfs).unwrap();
    let attach = super::host::Iscsiadm {
        runner: &fake,
        sysfs: fake.sysfs.clone(),
        settle: Duration::from_secs(2),
        node_dbs: vec![tmp.path().join("etc-iscsi-nodes"), fake.db.clone()],
    };
    let target = Target {
        iqn: super::migration_iqn(Uuid::from_u128(7)),
        portal: "127.0.0.1:3260".into(),
        initiator: DEST_IQN.into(),
        user: "cinderblock-000000000007".into(),
        secret: super::Secret::random().unwrap(),
    };
    let secret = target.secret.expose().to_owned();
    let dev = attach.login(&target).unwrap();
    assert_eq!(dev, PathBuf::from("/dev/null"));
    let (record, mode) = fake.at_login.lock().unwrap().clone().unwrap();
    assert_eq!(mode, 0o600, "the record holding the secret is private");
    for want in [
        format!("node.session.auth.password = {secret}\n"),
        "node.session.auth.authmethod = CHAP\n".into(),
        format!("node.session.auth.username = {}\n", target.user),
        "node.startup = manual\n".into(),
    ] {
        assert_eq!(
            record.matches(&want).count(),
            1,
            "{want:?} once in the record:\n{record}"
        );
    }
    assert!(!record.contains("authmethod = None") && !record.contains("startup = automatic"));
    assert!(record.ends_with("# END RECORD\n"), "{record}");
    let dir = fake.record_dir(&target.iqn);
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "no temporary file left beside the record"
    );
    // Logged in already: nothing is run again.
    let runs = fake.argv.lock().unwrap().len();
    assert_eq!(attach.login(&target).unwrap(), dev);
    assert_eq!(fake.argv.lock().unwrap().len(), runs);
    attach.logout(&target).unwrap();
    assert!(!dir.exists(), "the node record is deleted at the logout");
    let argv = fake.argv.lock().unwrap().join("\n");
    assert!(
        argv.contains("--login") && argv.contains("--logout"),
        "{argv}"
    );
    assert!(
        !argv.contains(&secret) && !argv.contains("auth.password"),
        "the secret is on a command line:\n{argv}"
    );
}
