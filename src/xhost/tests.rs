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
use crate::migrate::tests::scribble;
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
    /// A write publishing a hash waits until the destination has recorded
    /// copied bytes (at most 10 s, then the test fails).
    hold_hashes: bool,
}

impl Handle {
    fn new(store: &Arc<Store>, die_after: Option<usize>) -> Self {
        Handle {
            store: store.clone(),
            die_after,
            writes: AtomicUsize::new(0),
            hold_hashes: false,
        }
    }
    /// Waits until the source has written `db`'s job, and returns it.
    fn exported_job(&self) -> (Job, i64) {
        loop {
            if let Some(j) = self.get("db").unwrap() {
                return j;
            }
            nap(Duration::from_millis(1));
        }
    }

    /// Waits until the source has published every hash of `db`'s job.
    fn hashed_job(&self) -> (Job, i64) {
        loop {
            let j = self.exported_job();
            if j.0.unhashed().is_empty() {
                return j;
            }
            nap(Duration::from_millis(1));
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
        if self.hold_hashes && job.unhashed().len() < 1 + job.snapshots.len() {
            let since = std::time::Instant::now();
            while self
                .store
                .jobs
                .lock()
                .unwrap()
                .0
                .get(&job.volume)
                .is_none_or(|(v, _)| serde_json::from_str::<Job>(v).unwrap().copied == 0)
            {
                assert!(
                    since.elapsed() < Duration::from_secs(10),
                    "the destination copied nothing before the source published a hash"
                );
                nap(Duration::from_millis(1));
            }
        }
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

/// Journal checkpoints that outlive a run (the destination's journal), by
/// migration (a chain's stages each have their own), and how many times
/// one was reset.
#[derive(Default, Clone)]
struct Journal(Arc<Mutex<JournalState>>);

#[derive(Default)]
struct JournalState {
    at: BTreeMap<Uuid, u64>,
    current: Option<Uuid>,
    resets: usize,
}

impl Observer for Journal {
    fn progress(&mut self, _: &Position) {}
    fn checkpoint(&mut self, at: &Position) -> Result<(), String> {
        let mut j = self.0.lock().unwrap();
        let id = j.current.ok_or("no migration begun")?;
        j.at.insert(id, at.offset);
        Ok(())
    }
}

impl Checkpoints for Journal {
    fn last(&self, id: Uuid) -> Result<u64, MigrateError> {
        Ok(self.0.lock().unwrap().at.get(&id).copied().unwrap_or(0))
    }
    fn begin(&mut self, id: Uuid) {
        self.0.lock().unwrap().current = Some(id);
    }
    fn reset(&mut self, id: Uuid) -> Result<(), MigrateError> {
        let mut j = self.0.lock().unwrap();
        j.at.remove(&id);
        j.resets += 1;
        Ok(())
    }
}

struct Site {
    dir: tempfile::TempDir,
    a: FakeDriver,
    b: FakeDriver,
    uuid: Uuid,
    data: Vec<u8>,
    store: Arc<Store>,
    lio: Arc<Lio>,
    initiator: Initiator,
    journal: Journal,
    /// A chain's snapshots with their point-in-time content, oldest first
    /// (none: the volume alone).
    snaps: Vec<(Uuid, Vec<u8>)>,
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
        dir,
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
        snaps: Vec::new(),
    }
}

/// The chain's snapshots, by uuid (younger first, as a plan may list them).
const SNAPS: [Uuid; 2] = [Uuid::from_u128(0x17), Uuid::from_u128(0x16)];

/// The chain's snapshots as the destination's plan names them.
const LINKS: [crate::migrate::Link<'static>; 2] = [
    crate::migrate::Link {
        uuid: Uuid::from_u128(0x17),
        name: "s2",
        size: 8 * MIB,
        space: 8 * MIB,
    },
    crate::migrate::Link {
        uuid: Uuid::from_u128(0x16),
        name: "s1",
        size: 8 * MIB,
        space: 8 * MIB,
    },
];

/// A thick source (`a`: no extent map, new objects full of garbage) whose
/// volume has two snapshots, different data written before each, moving to
/// a thin `b`.
fn chain_site() -> Site {
    use crate::driver::Driver as _;
    let mut s = site();
    // Another directory than the volume-alone source's.
    s.a = FakeDriver::new("thick-a", s.dir.path(), false);
    let mut data = s.data.clone();
    s.a.put(
        s.uuid,
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
    let d0 = data.clone();
    s.a.snapshot(s.uuid, SNAPS[1], "s1", 0).unwrap();
    scribble(&s.a, s.uuid, &mut data, 4 * MIB, 512 << 10, 0x33);
    let d1 = data.clone();
    s.a.snapshot(s.uuid, SNAPS[0], "s2", 0).unwrap();
    scribble(&s.a, s.uuid, &mut data, MIB, 64 << 10, 0x44);
    s.data = data;
    s.snaps = vec![(SNAPS[1], d0), (SNAPS[0], d1)];
    s
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

fn sending(s: &Site) -> Sending<'static> {
    Sending {
        volume: "db",
        uuid: s.uuid,
        from: from(),
        to: to(),
        portal: Some("127.0.0.1:3260"),
        snapshots: if s.snaps.is_empty() { &[] } else { &SNAPS },
        wait: wait(),
    }
}

fn receiving(s: &Site, source_gone: bool) -> Receive<'static> {
    Receive {
        volume: "db",
        uuid: s.uuid,
        from: from(),
        to: to(),
        size: 8 * MIB,
        bandwidth: None,
        snapshots: if s.snaps.is_empty() { &[] } else { &LINKS },
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
    assert_eq!(
        b.len(),
        1 + s.snaps.len(),
        "{at}: the volume (and its chain) exists once on B"
    );
    let o = &b[&s.uuid];
    assert_eq!((o.name.as_str(), o.mark), ("db", Mark::Ready), "{at}");
    assert!(s.b.data(s.uuid) == s.data, "{at}: the data arrived");
    for ((u, want), name) in s.snaps.iter().zip(["s1", "s2"]) {
        let o = &b[u];
        assert_eq!(
            (o.name.as_str(), o.kind, o.mark, o.parent, o.migration),
            (name, ObjKind::Snapshot, Mark::Ready, Some(s.uuid), None),
            "{at}: snapshot {name} kept its identity and is its volume's"
        );
        assert!(
            s.b.data(*u) == *want,
            "{at}: {name} holds its point in time"
        );
    }
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

/// The destination's half with an etcd handle of its own and the site's
/// journal (its checkpoints outlive the run).
fn receive_on_b(s: &Site, source_gone: bool) -> Result<crate::migrate::Report, XhostError> {
    let mut j = s.journal.clone();
    receive(
        &receiving(s, source_gone),
        &s.b,
        &Handle::new(&s.store, None),
        &s.initiator,
        &mut j,
        &nap,
    )
}

/// Both halves, each on its thread, uninterrupted.
fn both(s: &Site) -> (crate::migrate::Report, super::Sent) {
    std::thread::scope(|t| {
        let src = t.spawn(|| {
            send(
                &sending(s),
                &s.a,
                &Handle::new(&s.store, None),
                &s.lio,
                &nap,
            )
        });
        let r = receive_on_b(s, false).unwrap();
        (r, src.join().unwrap().unwrap())
    })
}

#[test]
fn both_halves_move_the_volume_and_leave_nothing_behind() {
    let s = site();
    let (r, sent) = both(&s);
    assert!(sent.removed);
    // The copy read only the allocated ranges the source published.
    let copy = r.copy.unwrap();
    assert_eq!(copy.read, 2 * MIB + MIB, "two data MiB and the last one");
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
fn a_chain_moves_between_hosts_oldest_first_verified_against_the_source_hosts_hashes() {
    let s = chain_site();
    let (report, sent) = both(&s);
    assert!(sent.removed);
    assert_eq!(
        sent.snapshots.iter().collect::<BTreeSet<_>>(),
        SNAPS.iter().collect::<BTreeSet<_>>(),
        "the source removed both snapshots"
    );
    assert_moved(&s, "chain");
    // Oldest first, each verified, by name.
    let names: Vec<&str> = report.snapshots.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["s1", "s2"]);
    // One login per export: the volume and each snapshot.
    assert_eq!(s.initiator.logins.load(Ordering::SeqCst), 3);
    // The job as the source wrote it: version 3, each snapshot with its own
    // export and its age, the hashes not computed yet (the source hashes
    // while the destination copies).
    let written = s.store.written.lock().unwrap();
    let first: Job = serde_json::from_str(&written[0]).unwrap();
    assert_eq!(first.version, super::JOB_VERSION);
    assert_eq!(first.version, 3);
    assert_eq!(
        first.unhashed(),
        [
            (s.snaps[0].0, 8 * MIB),
            (s.snaps[1].0, 8 * MIB),
            (s.uuid, 8 * MIB)
        ],
        "exported before hashing: the oldest snapshot is hashed first"
    );
    assert!(
        written[0].contains(r#""hash":"""#),
        "a pending hash is written empty, so that an older host reads the record and refuses its version: {}",
        written[0]
    );
    // The last record: the hash the source computed locally for each.
    let last: Job = serde_json::from_str(written.last().unwrap()).unwrap();
    assert_eq!(last.phase, Phase::Verified);
    assert_eq!(last.hashed, 3 * 8 * MIB, "every byte of the three hashed");
    let snaps: Vec<(&str, &str)> = first
        .snapshots
        .iter()
        .map(|x| (x.name.as_str(), x.iqn.as_str()))
        .collect();
    assert_eq!(snaps.len(), 2);
    for (x, (u, want)) in last.snapshots.iter().zip(&s.snaps) {
        assert_eq!(x.uuid, *u);
        assert_eq!(x.iqn, super::migration_iqn(*u));
        assert!(x.created.is_some(), "the chain's order travels with it");
        assert!(x.extents.is_none(), "a thick source publishes no map");
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), want).unwrap();
        let h = crate::copy::content_hash(
            f.as_file(),
            f.path(),
            8 * MIB,
            &crate::copy::Extents::all(8 * MIB),
        )
        .unwrap();
        assert_eq!(
            x.hash.as_deref(),
            Some(h.to_hex().as_str()),
            "{}: the source's own hash",
            x.name
        );
    }
    assert_eq!(first.to_copy, 3 * 8 * MIB, "three objects read whole");
    // A thin target shares what its snapshots share: the volume's stage
    // wrote only the 64 KiB changed after s2.
    let stats = report.copy.unwrap();
    assert!(
        stats.written < 3 * MIB + 512 * 1024 + 64 * 1024 + MIB,
        "wrote {} bytes",
        stats.written
    );
}

#[test]
fn a_chain_whose_source_lies_about_a_snapshots_hash_keeps_the_source() {
    let s = chain_site();
    std::thread::scope(|t| {
        let src = t.spawn(|| {
            send(
                &sending(&s),
                &s.a,
                &Handle::new(&s.store, None),
                &s.lio,
                &nap,
            )
        });
        // The destination reads the job once exported, then a snapshot's
        // published hash is altered (what crossed the wire differs from
        // what the source host has).
        let jobs = Handle::new(&s.store, None);
        let (mut job, rev) = jobs.hashed_job();
        job.snapshots[1].hash = Some("00".repeat(32));
        jobs.put(&job, Some(rev)).unwrap().unwrap();
        let mut j = s.journal.clone();
        let e = receive(
            &receiving(&s, false),
            &s.b,
            &jobs,
            &s.initiator,
            &mut j,
            &nap,
        )
        .unwrap_err();
        assert!(e.to_string().contains(&"00".repeat(32)), "{e}");
        assert!(
            s.initiator.sessions.lock().unwrap().is_empty(),
            "no session left after the failure"
        );
        let e = src.join().unwrap().unwrap_err();
        assert!(matches!(e, XhostError::Waiting(_)), "{e}");
    });
    assert_eq!(s.a.state().len(), 3, "the source chain is kept whole");
    assert!(s.a.state().values().all(|o| o.mark == Mark::Ready));
}

#[test]
fn a_job_naming_other_snapshots_or_of_a_later_version_is_refused() {
    let s = chain_site();
    std::thread::scope(|t| {
        let src = t.spawn(|| {
            send(
                &sending(&s),
                &s.a,
                &Handle::new(&s.store, None),
                &s.lio,
                &nap,
            )
        });
        let jobs = Handle::new(&s.store, None);
        jobs.exported_job();
        // A plan that saw no snapshots: the job moves two.
        let mut alone = receiving(&s, false);
        alone.snapshots = &[];
        let mut j = s.journal.clone();
        let e = receive(&alone, &s.b, &jobs, &s.initiator, &mut j, &nap).unwrap_err();
        assert!(
            e.to_string()
                .contains("moves its snapshots s1, s2, but this host's plan moves none"),
            "{e}"
        );
        let (mut job, rev) = jobs.get("db").unwrap().unwrap();
        job.version = super::JOB_VERSION + 1;
        jobs.put(&job, Some(rev)).unwrap().unwrap();
        let e = receive(
            &receiving(&s, false),
            &s.b,
            &jobs,
            &s.initiator,
            &mut j,
            &nap,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("newer than this cinderblock's 3"),
            "{e}"
        );
        assert!(!e.is_retryable());
        let e = src.join().unwrap().unwrap_err();
        assert!(
            e.to_string().contains("newer than this cinderblock's 3"),
            "{e}"
        );
    });
    assert!(s.b.state().is_empty(), "nothing made on the destination");
    assert_eq!(s.a.state().len(), 3);
}

#[test]
fn a_failed_verification_keeps_the_source_and_says_so() {
    let s = site();
    std::thread::scope(|t| {
        let src = t.spawn(|| {
            send(
                &sending(&s),
                &s.a,
                &Handle::new(&s.store, None),
                &s.lio,
                &nap,
            )
        });
        // The source's hash is not what the target will hash.
        let jobs = Handle::new(&s.store, None);
        let (mut job, rev) = jobs.hashed_job();
        job.hash = Some(blake3::hash(b"something else").to_hex().to_string());
        assert!(jobs.put(&job, Some(rev)).unwrap().is_some());
        let mut j = s.journal.clone();
        let e = receive(
            &receiving(&s, false),
            &s.b,
            &jobs,
            &s.initiator,
            &mut j,
            &nap,
        )
        .unwrap_err();
        assert!(e.to_string().contains("verification failed"), "{e}");
        assert!(e.is_retryable());
        assert_eq!(
            s.journal.0.lock().unwrap().resets,
            1,
            "the checkpoint is reset"
        );
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
fn the_destination_copies_while_the_source_hashes_and_verifies_once_the_hash_is_out() {
    for chain in [false, true] {
        let s = if chain { chain_site() } else { site() };
        let at = format!("chain: {chain}");
        let sent = std::thread::scope(|t| {
            let src = t.spawn(|| {
                // The source's hashes reach etcd only once the destination
                // has copied: were the export to wait for the hash, or the
                // copy for the hash, this would never finish.
                let mut jobs = Handle::new(&s.store, None);
                jobs.hold_hashes = true;
                send(&sending(&s), &s.a, &jobs, &s.lio, &nap)
            });
            receive_on_b(&s, false).unwrap_or_else(|e| panic!("{at}: {}", crate::error_chain(&e)));
            src.join()
                .unwrap()
                .unwrap_or_else(|e| panic!("{at}: {}", crate::error_chain(&e)))
        });
        assert_moved(&s, &at);
        let objects = 1 + s.snaps.len();
        let whole = s
            .store
            .written
            .lock()
            .unwrap()
            .first()
            .map_or(0, |v| serde_json::from_str::<Job>(v).unwrap().to_copy);
        assert!(sent.removed, "{at}");
        assert_eq!(
            sent.hashed, whole,
            "{at}: the source hashed each object once"
        );
        // In etcd's order: copied bytes recorded, then a hash published,
        // then every hash, then `verified`.
        let written: Vec<Job> = s
            .store
            .written
            .lock()
            .unwrap()
            .iter()
            .map(|v| serde_json::from_str(v).unwrap())
            .collect();
        let first = |f: &dyn Fn(&Job) -> bool, what: &str| {
            written
                .iter()
                .position(f)
                .unwrap_or_else(|| panic!("{at}: no record {what}"))
        };
        let copied = first(&|j| j.copied > 0, "of copied bytes");
        let one = first(&|j| j.unhashed().len() < objects, "with a hash");
        let all = first(&|j| j.unhashed().is_empty(), "with every hash");
        let verified = first(&|j| j.phase == Phase::Verified, "verified");
        assert!(
            copied < one && one <= all && all < verified,
            "{at}: copied at write {copied}, a hash at {one}, all at {all}, verified at {verified}"
        );
        assert_eq!(written[verified].hashed, whole, "{at}");
    }
}

#[test]
fn a_destination_waiting_for_a_hash_that_never_comes_stops_and_the_next_run_finishes() {
    let s = site();
    // The source agent is killed right after it exported and wrote the job:
    // no hash is published.
    let e = send(
        &sending(&s),
        &s.a,
        &Handle::new(&s.store, Some(0)),
        &s.lio,
        &nap,
    )
    .unwrap_err();
    assert!(e.to_string().contains("killed after write 0"), "{e}");
    let e = receive_on_b(&s, false).unwrap_err();
    let e_text = crate::error_chain(&e);
    assert!(
        e_text.contains(
            "host stor-a has not published its hash of {} to verify the copy against: it has hashed 0 bytes and not moved for 3s (is its agent running?)"
                .replace("{}", &s.uuid.to_string())
                .as_str()
        ),
        "{e_text}"
    );
    assert!(e.is_retryable(), "{e_text}");
    assert_eq!(s.a.state()[&s.uuid].mark, Mark::Ready, "the source is kept");
    assert_eq!(
        s.b.state()[&s.uuid].mark,
        Mark::Migrating,
        "the target is no volume yet"
    );
    assert!(
        s.initiator.sessions.lock().unwrap().is_empty(),
        "no session left while waiting for the next run"
    );
    let (job, _) = Handle::new(&s.store, None).get("db").unwrap().unwrap();
    assert_eq!(job.phase, Phase::Copying);
    assert_eq!(job.hash, None);
    // Both agents again: the source hashes, the destination verifies from
    // its checkpoint (no second copy) and the source is removed.
    let reads = s.initiator.logins.load(Ordering::SeqCst);
    let (r, sent) = both(&s);
    assert!(sent.removed);
    assert_eq!(sent.hashed, job.to_copy, "the source's data hashed once");
    assert_eq!(
        r.copy.map(|c| c.read),
        Some(0),
        "the next run resumed at the end of the copy"
    );
    assert_eq!(s.initiator.logins.load(Ordering::SeqCst), reads + 1);
    assert_moved(&s, "after the wait");
}

/// What a kill test runs: the volume alone or the chain, killed after a
/// driver call or a job write.
const KILLS: [(bool, &str); 4] = [
    (false, "driver"),
    (false, "etcd"),
    (true, "driver"),
    (true, "etcd"),
];

#[test]
fn a_destination_killed_after_any_step_resumes_once() {
    // Its driver calls, then its job writes.
    for (chain, kind) in KILLS {
        for n in 0.. {
            let s = if chain { chain_site() } else { site() };
            let at = format!("destination {kind} {n} (chain: {chain})");
            let fired = std::thread::scope(|t| {
                let src = t.spawn(|| {
                    send(
                        &sending(&s),
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
                    let r = receive(&receiving(&s, false), &f, &jobs, &s.initiator, &mut j, &nap);
                    (f.fired(), r)
                } else {
                    let jobs = Handle::new(&s.store, Some(n));
                    let r = receive(
                        &receiving(&s, false),
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
                        &receiving(&s, gone),
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
    for (chain, kind) in KILLS {
        for n in 0.. {
            let s = if chain { chain_site() } else { site() };
            let at = format!("source {kind} {n} (chain: {chain})");
            let fired = std::thread::scope(|t| {
                let dst = t.spawn(|| receive_on_b(&s, false));
                let (fired, first) = if kind == "driver" {
                    let f = Faulty::new(Box::new(s.a.clone()), Trigger::Call(n), Action::Fail);
                    let r = send(&sending(&s), &f, &Handle::new(&s.store, None), &s.lio, &nap);
                    (f.fired(), r)
                } else {
                    let jobs = Handle::new(&s.store, Some(n));
                    let r = send(&sending(&s), &s.a, &jobs, &s.lio, &nap);
                    (jobs.writes.load(Ordering::SeqCst) > n, r)
                };
                if fired {
                    assert!(first.is_err(), "{at}: a dead agent fails the step");
                    let job_left = !s.store.jobs.lock().unwrap().0.is_empty();
                    if job_left || !s.a.state().is_empty() {
                        send(
                            &sending(&s),
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
                    &sending(&s),
                    &s.a,
                    &Handle::new(&s.store, None),
                    &s.lio,
                    &nap,
                )
            })
        });
        tracing::subscriber::with_default(make(), || {
            receive_on_b(&s, false).unwrap();
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
/// node record file (old style, `DB/IQN/ADDR,PORT`, as 2.1.8 does for a
/// record made without discovery; or `DB/IQN/ADDR,PORT,TPGT/default`),
/// `--login` reads it and makes a session in sysfs, `-o delete` removes the
/// record. Every argument vector is kept, as `/proc/PID/cmdline` would
/// show it.
struct FakeIscsiadm {
    db: PathBuf,
    /// The record is `DB/IQN/ADDR,PORT,TPGT/default`, not the old style.
    per_iface: bool,
    sysfs: PathBuf,
    argv: Mutex<Vec<String>>,
    /// The record's text and mode at `--login`.
    at_login: Mutex<Option<(String, u32)>>,
}

impl FakeIscsiadm {
    /// The record file and the directory a delete removes with it.
    fn record(&self, iqn: &str) -> (PathBuf, PathBuf) {
        if self.per_iface {
            let dir = self.db.join(iqn).join("127.0.0.1,3260,1");
            (dir.join("default"), dir)
        } else {
            let dir = self.db.join(iqn);
            (dir.join("127.0.0.1,3260"), dir)
        }
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
        let (file, dir) = self.record(&iqn);
        if args.iter().any(|a| a == "new") {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                &file,
                format!("# BEGIN RECORD 2.1.8\nnode.name = {iqn}\nnode.tpgt = -1\nnode.startup = automatic\nnode.session.auth.authmethod = None\nnode.conn[0].address = 127.0.0.1\nnode.conn[0].port = 3260\n# END RECORD\n"),
            )
            .unwrap();
        } else if args.iter().any(|a| a == "--login") {
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            *self.at_login.lock().unwrap() = Some((std::fs::read_to_string(&file).unwrap(), mode));
            let s = self.sysfs.join("session1");
            std::fs::create_dir_all(s.join("device/target1:0:0/1:0:0:0/block/null")).unwrap();
            std::fs::write(s.join("targetname"), format!("{iqn}\n")).unwrap();
        } else if args.iter().any(|a| a == "--logout") {
            let _ = std::fs::remove_dir_all(self.sysfs.join("session1"));
        } else if args.iter().any(|a| a == "delete") {
            std::fs::remove_file(&file).unwrap();
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
    for per_iface in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let fake = FakeIscsiadm {
            // The first database looked at does not exist (another build's).
            db: tmp.path().join("var-lib-iscsi-nodes"),
            per_iface,
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
        let (_, dir) = fake.record(&target.iqn);
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
}
