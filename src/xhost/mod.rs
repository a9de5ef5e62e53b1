//! Moving a volume to a back end of another host: the source host exports
//! it over iSCSI, the destination host logs in and copies.
//!
//! Owns the job protocol of a cross-host migration and its two halves:
//! [`send`] (the source host) and [`receive`] (the destination host). The
//! destination reaches the source's volume through [`remote::RemoteVolume`],
//! a third kind of endpoint behind the [`Driver`] seam: a volume of another
//! host which, once logged in over iSCSI, is a block device of known size.
//! [`crate::migrate::run`] moves it like any other source.
//!
//! With its snapshots (`migrateSnapshots: true`) the source exports each
//! snapshot too, as a target of its own ([`migration_iqn`] of the
//! snapshot's uuid) with the same portal, ACL and one-time CHAP secret, and
//! publishes in the job each one's identity, size, age, extent map (all
//! maps together at most [`MAX_RANGES`] ranges) and its BLAKE3 hash
//! computed locally ([`JobSnapshot`]).
//!
//! The source exports first and hashes after, while the destination
//! copies: the two reads of the source (its own hash, the copy over iSCSI)
//! overlap instead of one waiting for the other. Each hash is published in
//! the job as soon as it is computed (the oldest snapshot first, the volume
//! last, the order the destination verifies in), with how far the hashing
//! is every [`HASH_PROGRESS_EVERY`]; the destination verifies an object
//! only against its published hash, waiting for it while the source's
//! hashing moves. The destination's
//! [`remote::RemoteVolume`] presents them as the volume's snapshots, so
//! [`crate::migrate`]'s chain runs unchanged from it: the oldest snapshot
//! copied, each newer one and then the volume written as the blocks that
//! differ, every stage and every snapshot verified against the source
//! host's hash; the source removes its snapshots, then the volume, only
//! once the job says `verified`.
//!
//! The job lives in etcd (`PREFIX/v1/jobs/VOLUME`, a [`Job`] written by
//! compare-and-swap on its `mod_revision` through [`Jobs`]) and in both
//! hosts' journals (the step's intent and outcome; the destination's copy
//! checkpoints), so a kill of either agent anywhere resumes:
//!
//! | phase | who writes it | what is true then | a re-run of the source | a re-run of the destination |
//! | --- | --- | --- | --- | --- |
//! | (none) | | source ready (and its snapshots) | exports the volume and each snapshot, writes `exported` with the hashes pending | waits for `exported` |
//! | `exported` | source | an export per object, each with an ACL for the destination's initiator and the job's one-time CHAP secret; extent maps published; each BLAKE3 hash published once the source host computed it | exports again (idempotent), hashes what is still pending (publishing each), waits | logs in, creates the target `migrating`, copies (a chain: the oldest snapshot first, a `migrating` target snapshot after each stage), verifies each object once its hash is published |
//! | `copying` | destination (with its checkpoints) | logged in, copying | hashes what is still pending, then waits while the copy moves | resumes at its journal's checkpoint (the end of a finished copy is one; a chain: skips every stage whose target snapshot exists) |
//! | `verified` | destination | every target hash equal to the source's local hash; logged out of every export, node records deleted | marks the volume, then its snapshots `deleting`, unexports each, deletes the snapshots, then the volume, removes the job | promotes its target snapshots, then the volume |
//! | (removed) | source | source gone; the volume (and its chain) lives on the destination | nothing | promotes its targets when the source is gone from the fleet |
//!
//! The job record is versioned ([`JOB_VERSION`]; 2 added the snapshots):
//! a host refuses a job of a later version, and a destination refuses a
//! job whose snapshots are not the ones its plan moves.
//!
//! The CHAP secret is drawn at random for each job, lives only in the job
//! record (for the destination) and in configfs (for LIO), is never in a
//! plan, a journal or a log (`Debug` redacts it), on no command line (the
//! destination writes it into open-iscsi's node record file, see
//! [`host`]), and is gone with the exports, the node records and the job.
//!
//! A failed verification keeps the source: the destination resets its
//! checkpoint and logs out; the job stays `copying`, and the next run
//! copies again from the start.
//!
//! Must not: decide whether to migrate (the planner's), print, spawn
//! processes itself (the [`Attacher`] and [`Exporter`] implementations go
//! through [`crate::exec`] and [`crate::iscsi::lio`]), or hold a lock on
//! etcd while copying.

pub mod host;
pub mod remote;

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::copy::{self, Extents};
use crate::driver::{DataPath, Driver, DriverError, Layout, Mark, ObjKind, Object};
use crate::migrate::{Checkpoints, Link, MigrateError, Move, Report};
pub use crate::model::{End, JobView, Phase};

/// The job record's version: 2 added the snapshots that move with the
/// volume ([`Job::snapshots`]); 3 publishes the source's hashes after the
/// export, while the destination copies ([`Job::hash`] pending). A host
/// refuses a job of a later version than its own (it could not tell what
/// else moves, or would verify against a hash not written yet).
pub const JOB_VERSION: u32 = 3;

/// How often the source host records in the job how far its hash is (the
/// destination waiting for the hash counts that as moving).
pub const HASH_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Published extent maps longer than this, over the volume and its
/// snapshots together, are left out (the destination reads those objects
/// whole and detects zeros): a record stays far below etcd's request limit.
pub const MAX_RANGES: usize = 20_000;

/// Errors of a cross-host migration.
#[derive(Debug, thiserror::Error)]
pub enum XhostError {
    /// etcd could not be read or written (the job record).
    #[error("the migration job in etcd: {0}")]
    Jobs(String),
    /// The other host has not done its part yet.
    #[error("{0}")]
    Waiting(String),
    /// The export on the source host failed.
    #[error("cannot export the volume for the migration: {0}")]
    Export(String),
    /// A state that is no migration this host can continue.
    #[error("{0}")]
    State(String),
    /// A back end operation failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// The copy or its verification failed.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
}

impl XhostError {
    /// etcd, waiting for the other host, exports and I/O can be tried
    /// again; a state that is no migration cannot.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Jobs(_) | Self::Waiting(_) | Self::Export(_) => true,
            Self::State(_) => false,
            Self::Driver(e) => e.is_retryable(),
            Self::Migrate(e) => e.is_retryable(),
        }
    }
}

/// A one-time CHAP secret: never shown (`Debug` and `Display` redact it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// 32 random characters (LIO and open-iscsi take up to 255; 12 to 16
    /// is what some initiators insist on, which none here is).
    ///
    /// # Errors
    /// The system's random source failed.
    pub fn random() -> Result<Self, XhostError> {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes)
            .map_err(|e| XhostError::Export(format!("no random bytes for the CHAP secret: {e}")))?;
        // 24 bytes, 6 bits a character: 32 characters.
        let mut out = String::with_capacity(32);
        for chunk in bytes.chunks(3) {
            let n = (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]);
            for shift in [18, 12, 6, 0] {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            }
        }
        Ok(Secret(out))
    }

    /// The secret itself, for configfs and `iscsiadm` only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The iSCSI target the source made for the destination.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// Its IQN ([`migration_iqn`]).
    pub iqn: String,
    /// `ADDR:PORT` it listens on.
    pub portal: String,
    /// The destination's initiator name, the one ACL.
    pub initiator: String,
    /// CHAP user name.
    pub user: String,
    /// CHAP secret (one-time).
    pub secret: Secret,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("iqn", &self.iqn)
            .field("portal", &self.portal)
            .field("initiator", &self.initiator)
            .field("user", &self.user)
            .field("secret", &self.secret)
            .finish()
    }
}

/// A cross-host migration job (`PREFIX/v1/jobs/VOLUME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    /// [`JOB_VERSION`].
    pub version: u32,
    /// The volume's manifest name.
    pub volume: String,
    /// Its identity (kept on the destination).
    pub uuid: Uuid,
    /// Its size on the source.
    pub size: u64,
    /// Where it lives.
    pub from: End,
    /// Where it goes.
    pub to: End,
    /// Where the job stands.
    pub phase: Phase,
    /// The export.
    pub target: Target,
    /// The source's allocated ranges (`[start, end)`), when its back end
    /// can tell; none: read everything and detect zeros.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extents: Option<Vec<(u64, u64)>>,
    /// BLAKE3 content hash of the source, computed on the source host;
    /// none while that host is still hashing (it exports first and hashes
    /// while the destination copies). Written as `""` then, so that a
    /// host of an older version reads the record and refuses its version.
    #[serde(with = "pending")]
    pub hash: Option<String>,
    /// Bytes the source host has hashed so far, of the volume and its
    /// snapshots together, the work of a killed run counted too (recorded
    /// every [`HASH_PROGRESS_EVERY`] while it hashes, never going down): a
    /// destination waiting for a hash sees it move.
    #[serde(default)]
    pub hashed: u64,
    /// Bytes the destination copied so far (its last checkpoint).
    #[serde(default)]
    pub copied: u64,
    /// Bytes it reads in all (the volume and its snapshots).
    #[serde(default)]
    pub to_copy: u64,
    /// The snapshots that move with it (`migrateSnapshots: true`), each
    /// exported beside it; none: the volume alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<JobSnapshot>,
}

/// A snapshot moving with its volume: exported as a target of its own with
/// the volume's portal, ACL and CHAP credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSnapshot {
    /// Its identity (kept on the destination).
    pub uuid: Uuid,
    /// Its manifest name (kept).
    pub name: String,
    /// Its size on the source.
    pub size: u64,
    /// Its age on the source ([`crate::driver::Object::created`]): the
    /// chain moves oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<u64>,
    /// The IQN of its export ([`migration_iqn`] of its uuid).
    pub iqn: String,
    /// Its allocated ranges, as [`Job::extents`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extents: Option<Vec<(u64, u64)>>,
    /// BLAKE3 content hash, computed on the source host; none while it is
    /// still hashing (as [`Job::hash`]).
    #[serde(with = "pending")]
    pub hash: Option<String>,
}

/// A hash not computed yet is written as `""` (see [`Job::hash`]).
mod pending {
    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::ref_option)] // serde's `with` passes the field by reference
    pub fn serialize<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.as_deref().unwrap_or(""))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let v = String::deserialize(d)?;
        Ok((!v.is_empty()).then_some(v))
    }
}

impl Job {
    /// The export of snapshot `uuid` of the job (the volume's target under
    /// the snapshot's IQN), or of the volume itself.
    pub fn target_of(&self, uuid: Uuid) -> Option<Target> {
        if uuid == self.uuid {
            return Some(self.target.clone());
        }
        self.snapshots
            .iter()
            .find(|s| s.uuid == uuid)
            .map(|s| Target {
                iqn: s.iqn.clone(),
                ..self.target.clone()
            })
    }

    /// The hash the source host published for object `uuid` of the job:
    /// `None` when the job has no such object, `Some(None)` while that
    /// host is still hashing it.
    pub fn hash_of(&self, uuid: Uuid) -> Option<Option<&str>> {
        if uuid == self.uuid {
            return Some(self.hash.as_deref());
        }
        self.snapshots
            .iter()
            .find(|s| s.uuid == uuid)
            .map(|s| s.hash.as_deref())
    }

    /// The objects whose hash is not published yet, with their sizes, in
    /// the order the destination verifies them: the oldest snapshot first,
    /// the volume last.
    fn unhashed(&self) -> Vec<(Uuid, u64)> {
        self.snapshots
            .iter()
            .filter(|s| s.hash.is_none())
            .map(|s| (s.uuid, s.size))
            .chain(self.hash.is_none().then_some((self.uuid, self.size)))
            .collect()
    }

    /// Publishes `hash` for object `uuid` unless one is there already.
    fn set_hash(&mut self, uuid: Uuid, hash: &str) {
        let slot = if uuid == self.uuid {
            Some(&mut self.hash)
        } else {
            self.snapshots
                .iter_mut()
                .find(|s| s.uuid == uuid)
                .map(|s| &mut s.hash)
        };
        if let Some(slot) = slot
            && slot.is_none()
        {
            *slot = Some(hash.to_owned());
        }
    }

    /// Every export of the job: the volume's, then each snapshot's.
    pub fn targets(&self) -> Vec<Target> {
        std::iter::once(self.uuid)
            .chain(self.snapshots.iter().map(|s| s.uuid))
            .filter_map(|u| self.target_of(u))
            .collect()
    }

    /// Refuses a job written by a later version (it may move more than
    /// this host knows of).
    fn check_version(&self) -> Result<(), XhostError> {
        if self.version > JOB_VERSION {
            return Err(XhostError::State(format!(
                "the migration job of {} is of version {}, newer than this cinderblock's {JOB_VERSION}; upgrade this host",
                self.volume, self.version
            )));
        }
        Ok(())
    }
}

impl Job {
    /// What plans may show of it.
    pub fn view(&self) -> JobView {
        JobView {
            uuid: self.uuid,
            from: self.from.clone(),
            to: self.to.clone(),
            phase: self.phase,
            copied: self.copied,
            to_copy: self.to_copy,
        }
    }
}

pub use crate::iscsi::names::{is_migration_iqn, migration_iqn};

/// The job records in etcd (and a fake in tests).
pub trait Jobs: Send + Sync {
    /// The job of `volume` with its `mod_revision`, if any.
    ///
    /// # Errors
    /// etcd could not be read, or the record not decoded.
    fn get(&self, volume: &str) -> Result<Option<(Job, i64)>, XhostError>;
    /// Writes `job` if its key's `mod_revision` is `expect` (`None`: only
    /// if absent): its new `mod_revision`, or `None` when another writer
    /// came first.
    ///
    /// # Errors
    /// etcd could not be written.
    fn put(&self, job: &Job, expect: Option<i64>) -> Result<Option<i64>, XhostError>;
    /// Removes the job of `volume` if its `mod_revision` is `expect`.
    ///
    /// # Errors
    /// etcd could not be written.
    fn delete(&self, volume: &str, expect: i64) -> Result<bool, XhostError>;
    /// The iSCSI initiator name host `host` published.
    ///
    /// # Errors
    /// etcd could not be read.
    fn initiator(&self, host: &str) -> Result<Option<String>, XhostError>;
}

/// The source host's exports (LIO; a fake in tests).
pub trait Exporter {
    /// Exports `data` of volume `uuid` as `target` (one ACL with CHAP);
    /// idempotent.
    ///
    /// # Errors
    /// configfs refused.
    fn export(&self, uuid: Uuid, data: &DataPath, target: &Target) -> Result<(), String>;
    /// Removes the export of volume `uuid` with its ACL; idempotent.
    ///
    /// # Errors
    /// configfs refused.
    fn unexport(&self, uuid: Uuid) -> Result<(), String>;
}

/// The destination host's initiator (open-iscsi; a fake in tests).
pub trait Attacher: Send + Sync {
    /// Logs in to `target` (a node record with its CHAP credentials) and
    /// returns the block device of its LUN 0; idempotent.
    ///
    /// # Errors
    /// The login failed or no device appeared.
    fn login(&self, target: &Target) -> Result<PathBuf, String>;
    /// Logs out of `target` and deletes its node record; idempotent.
    ///
    /// # Errors
    /// `iscsiadm` failed.
    fn logout(&self, target: &Target) -> Result<(), String>;
}

/// How long and how often a side waits for the other.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    /// Between two looks at the job.
    pub poll: Duration,
    /// Give up (retryably) after this long without the other side moving.
    pub stall: Duration,
}

impl Default for Wait {
    fn default() -> Self {
        Wait {
            poll: Duration::from_millis(500),
            stall: Duration::from_secs(300),
        }
    }
}

/// The source's half (see [`send`]).
#[derive(Debug, Clone)]
pub struct Sending<'a> {
    /// The volume's manifest name.
    pub volume: &'a str,
    /// Its identity.
    pub uuid: Uuid,
    /// Where it lives (this host).
    pub from: End,
    /// Where it goes.
    pub to: End,
    /// The portal (`ADDR:PORT`) the export listens on and the destination
    /// logs in to (`--migration-portal`).
    pub portal: Option<&'a str>,
    /// The snapshots that move with it (`migrateSnapshots: true`), by
    /// uuid; a job already written names its own.
    pub snapshots: &'a [Uuid],
    /// Waiting for the destination.
    pub wait: Wait,
}

/// What [`send`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The source was removed (the volume lives on the destination now).
    pub removed: bool,
    /// Bytes this run read to hash the volume and its snapshots (0 when
    /// a run before it published every hash).
    pub hashed: u64,
    /// The snapshots removed with it (their uuids), when removed.
    pub snapshots: Vec<Uuid>,
}

/// The source's half: export the volume for the destination, hash it (and
/// each snapshot) here while the destination copies, publishing each hash
/// as it is done, wait while the destination finishes, then remove the
/// source once the copy is verified. Resumes from whatever the job and the
/// back end show: a hash lost with a killed run is computed again.
///
/// # Errors
/// etcd, the export, the back end; `Waiting` when the destination stopped
/// moving for [`Wait::stall`].
pub fn send(
    s: &Sending<'_>,
    src: &dyn Driver,
    jobs: &dyn Jobs,
    lio: &dyn Exporter,
    sleep: &dyn Fn(Duration),
) -> Result<Sent, XhostError> {
    let mut hashed = 0;
    let mut exported = false;
    let mut last: Option<(Phase, u64)> = None;
    let mut moved = Instant::now();
    loop {
        let Some((job, rev)) = jobs.get(s.volume)? else {
            match src.object(s.uuid)? {
                None => {
                    return Err(XhostError::State(format!(
                        "volume {} is not on {} and no migration job names it",
                        s.uuid, s.from
                    )));
                }
                Some(o) if o.mark != Mark::Ready => {
                    return Err(XhostError::State(format!(
                        "volume {} on {} is {}, and no migration job names it; nothing is moved",
                        s.uuid,
                        s.from,
                        o.mark.as_str()
                    )));
                }
                Some(o) if o.in_use => {
                    return Err(XhostError::State(format!(
                        "volume {} on {} is open (in use); stop its users and apply again",
                        s.uuid, s.from
                    )));
                }
                Some(o) => {
                    let job = start(s, src, jobs, lio, o.size)?;
                    exported = true;
                    if jobs.put(&job, None)?.is_none() {
                        tracing::info!(
                            volume = s.volume,
                            "another writer made the job first; reading it"
                        );
                    }
                    continue;
                }
            }
        };
        job.check_version()?;
        if job.uuid != s.uuid || job.from != s.from {
            return Err(XhostError::State(format!(
                "the migration job of {} moves {} from {}, not {} from {}; remove it with `etcdctl del` after checking both hosts",
                s.volume, job.uuid, job.from, s.uuid, s.from
            )));
        }
        match job.phase {
            Phase::Exported | Phase::Copying => {
                if !exported {
                    // A restarted host lost configfs, or a crash stopped
                    // between the export and the job: make it true again.
                    for t in std::iter::once(s.uuid).chain(job.snapshots.iter().map(|x| x.uuid)) {
                        if src.object(t)?.is_some_and(|o| o.mark == Mark::Ready)
                            && let Some(target) = job.target_of(t)
                        {
                            let data = src.data_path(t)?;
                            lio.export(t, &data, &target).map_err(XhostError::Export)?;
                        }
                    }
                    exported = true;
                }
                let unhashed = job.unhashed();
                if !unhashed.is_empty() {
                    // The destination copies meanwhile; the stall clock
                    // starts again once every hash is out.
                    hashed += hash_and_publish(s, src, jobs, &unhashed, job.hashed)?;
                    last = None;
                    continue;
                }
                let now = (job.phase, job.copied);
                if last != Some(now) {
                    last = Some(now);
                    moved = Instant::now();
                    tracing::info!(volume = s.volume, to = %job.to, phase = job.phase.as_str(), copied = job.copied, of = job.to_copy, "waiting for the destination");
                } else if moved.elapsed() >= s.wait.stall {
                    return Err(XhostError::Waiting(format!(
                        "exported for {} and waiting: it has copied {} of {} bytes and not moved for {:?}; the next apply waits again",
                        job.to, job.copied, job.to_copy, s.wait.stall
                    )));
                }
                sleep(s.wait.poll);
            }
            Phase::Verified => {
                let snaps: Vec<Uuid> = job.snapshots.iter().map(|x| x.uuid).collect();
                finish(s, &snaps, src, lio)?;
                if !jobs.delete(s.volume, rev)? {
                    continue;
                }
                tracing::info!(volume = s.volume, to = %job.to, snapshots = snaps.len(), "the destination verified its copy; the source is removed");
                return Ok(Sent {
                    removed: true,
                    hashed,
                    snapshots: snaps,
                });
            }
        }
    }
}

/// An object of the source opened on this host.
struct Opened {
    data: DataPath,
    file: std::fs::File,
    /// Where it holds data.
    extents: Extents,
    /// The ranges the job publishes (none: read it all).
    published: Option<Vec<(u64, u64)>>,
}

/// Object `uuid` of `src` (`size` bytes) opened on this host, with where
/// it holds data and the ranges it may publish (`budget`: ranges the
/// record may still take; what it publishes is taken from it).
fn open_object(
    s: &Sending<'_>,
    src: &dyn Driver,
    uuid: Uuid,
    size: u64,
    budget: &mut usize,
) -> Result<Opened, XhostError> {
    let data = src.data_path(uuid)?;
    let file = std::fs::File::open(&data.path).map_err(|source| MigrateError::Open {
        path: data.path.clone(),
        source,
    })?;
    let (extents, published) = match src.layout(uuid)? {
        Layout::Seek => {
            let e = Extents::of_file(&file, &data.path, size).map_err(|e| copy_err(s, e))?;
            let r = e.ranges().to_vec();
            (e, Some(r))
        }
        Layout::Ranges(r) => (Extents::new(r.clone(), size), Some(r)),
        Layout::Everything => (Extents::all(size), None),
    };
    let published = published
        .filter(|r| r.len() <= *budget)
        .map(|r| r.iter().map(|x| (x.start, x.end)).collect::<Vec<_>>());
    if let Some(r) = &published {
        *budget -= r.len();
    }
    Ok(Opened {
        data,
        file,
        extents,
        published,
    })
}

fn copy_err(s: &Sending<'_>, source: copy::CopyError) -> MigrateError {
    MigrateError::Copy {
        from: s.from.to_string(),
        to: s.to.to_string(),
        source,
    }
}

/// Hashes each object of `unhashed` here, in order, and publishes each
/// hash in the job as soon as it is computed (and, every
/// [`HASH_PROGRESS_EVERY`], how far the hashing is, counting on from
/// `hashed_before`): the bytes read.
fn hash_and_publish(
    s: &Sending<'_>,
    src: &dyn Driver,
    jobs: &dyn Jobs,
    unhashed: &[(Uuid, u64)],
    hashed_before: u64,
) -> Result<u64, XhostError> {
    let mut read = 0;
    for &(uuid, size) in unhashed {
        let mut unlimited = usize::MAX;
        let Opened {
            data,
            file,
            extents,
            ..
        } = open_object(s, src, uuid, size, &mut unlimited)?;
        let mut told = Instant::now();
        let hash = copy::content_hash_with(&file, &data.path, size, &extents, &mut |n| {
            if told.elapsed() >= HASH_PROGRESS_EVERY {
                told = Instant::now();
                let at = hashed_before + read + n;
                // Best effort: a lost record only makes a waiting
                // destination's stall clock run on.
                if let Err(e) = publish(s, jobs, &|j| j.hashed = j.hashed.max(at)) {
                    tracing::warn!(volume = s.volume, error = %e, "cannot record the hash's progress in etcd");
                }
            }
        })
        .map_err(|e| copy_err(s, e))?;
        read += extents.bytes();
        let hex = hash.to_hex().to_string();
        let at = hashed_before + read;
        publish(s, jobs, &|j| {
            j.set_hash(uuid, &hex);
            j.hashed = j.hashed.max(at);
        })?;
        tracing::info!(volume = s.volume, object = %uuid, bytes = extents.bytes(), "hashed here and published for the destination's verification");
    }
    Ok(read)
}

/// Writes the job with `edit` applied, by compare-and-swap, re-reading
/// while the destination's writes come first.
fn publish(s: &Sending<'_>, jobs: &dyn Jobs, edit: &dyn Fn(&mut Job)) -> Result<(), XhostError> {
    for _ in 0..32 {
        let Some((job, rev)) = jobs.get(s.volume)? else {
            return Err(XhostError::State(format!(
                "the migration job of {} is gone from etcd while this host hashed its source; nothing is removed",
                s.volume
            )));
        };
        if job.uuid != s.uuid || job.from != s.from {
            return Err(XhostError::State(format!(
                "the migration job of {} moves {} from {} now, not {} from {}",
                s.volume, job.uuid, job.from, s.uuid, s.from
            )));
        }
        let mut next = job.clone();
        edit(&mut next);
        if next == job || jobs.put(&next, Some(rev))?.is_some() {
            return Ok(());
        }
    }
    Err(XhostError::Jobs(format!(
        "the migration job of {} kept changing under this host's writes",
        s.volume
    )))
}

/// Every snapshot of the chain, ready and unused (checked before anything
/// is exported), oldest first as the chain moves.
fn ready_snapshots(s: &Sending<'_>, src: &dyn Driver) -> Result<Vec<Object>, XhostError> {
    let mut snaps = Vec::with_capacity(s.snapshots.len());
    for &u in s.snapshots {
        match src.object(u)? {
            Some(o) if o.kind == ObjKind::Snapshot && o.mark == Mark::Ready && !o.in_use => {
                snaps.push(o);
            }
            Some(o) => {
                return Err(XhostError::State(format!(
                    "snapshot {} ({u}) on {} is a {} {}{}, not a ready snapshot; nothing is moved",
                    o.name,
                    s.from,
                    o.mark.as_str(),
                    o.kind,
                    if o.in_use { " in use" } else { "" }
                )));
            }
            None => {
                return Err(XhostError::State(format!(
                    "snapshot {u} of volume {} is not on {}; nothing is moved",
                    s.uuid, s.from
                )));
            }
        }
    }
    // Oldest first, as the chain moves.
    snaps.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    Ok(snaps)
}

/// Exports the source (the volume and each snapshot moving with it) and
/// makes the job (not written yet), its hashes pending: this host hashes
/// while the destination copies ([`hash_and_publish`]).
fn start(
    s: &Sending<'_>,
    src: &dyn Driver,
    jobs: &dyn Jobs,
    lio: &dyn Exporter,
    size: u64,
) -> Result<Job, XhostError> {
    let portal = s.portal.ok_or_else(|| {
        XhostError::State(format!(
            "moving a volume to {} needs the address the destination logs in to: give this host's agent --migration-portal ADDR:PORT",
            s.to.host
        ))
    })?;
    let initiator = jobs.initiator(&s.to.host)?.ok_or_else(|| {
        XhostError::Waiting(format!(
            "host {} published no iSCSI initiator name (is open-iscsi installed there, with /etc/iscsi/initiatorname.iscsi, and its agent running with --etcd?)",
            s.to.host
        ))
    })?;
    let snaps = ready_snapshots(s, src)?;
    let mut budget = MAX_RANGES;
    let to_read = |published: &Option<Vec<(u64, u64)>>, size: u64| {
        published
            .as_ref()
            .map_or(size, |r| r.iter().map(|(a, b)| b - a).sum())
    };
    let Opened {
        data,
        published: extents,
        ..
    } = open_object(s, src, s.uuid, size, &mut budget)?;
    let target = Target {
        iqn: migration_iqn(s.uuid),
        portal: portal.to_owned(),
        initiator,
        user: format!("cinderblock-{}", &s.uuid.simple().to_string()[..12]),
        secret: Secret::random()?,
    };
    let mut to_copy = to_read(&extents, size);
    let mut published = Vec::with_capacity(snaps.len());
    for o in &snaps {
        let Opened {
            data: sdata,
            published: sextents,
            ..
        } = open_object(s, src, o.uuid, o.size, &mut budget)?;
        let snap = JobSnapshot {
            uuid: o.uuid,
            name: o.name.clone(),
            size: o.size,
            created: o.created,
            iqn: migration_iqn(o.uuid),
            extents: sextents,
            hash: None,
        };
        lio.export(
            o.uuid,
            &sdata,
            &Target {
                iqn: snap.iqn.clone(),
                ..target.clone()
            },
        )
        .map_err(XhostError::Export)?;
        to_copy += to_read(&snap.extents, o.size);
        published.push(snap);
    }
    lio.export(s.uuid, &data, &target)
        .map_err(XhostError::Export)?;
    tracing::info!(volume = s.volume, to = %s.to, iqn = %target.iqn, snapshots = published.len(), "exported for the migration; hashing here while the destination copies");
    Ok(Job {
        version: JOB_VERSION,
        volume: s.volume.to_owned(),
        uuid: s.uuid,
        size,
        from: s.from.clone(),
        to: s.to.clone(),
        phase: Phase::Exported,
        target,
        extents,
        hash: None,
        hashed: 0,
        copied: 0,
        to_copy,
        snapshots: published,
    })
}

/// The source's end, once verified: mark the volume, then its snapshots
/// `deleting`, remove every export with its ACL, delete the snapshots,
/// then the volume. Each step idempotent.
fn finish(
    s: &Sending<'_>,
    snaps: &[Uuid],
    src: &dyn Driver,
    lio: &dyn Exporter,
) -> Result<(), XhostError> {
    for &u in std::iter::once(&s.uuid).chain(snaps) {
        if src.object(u)?.is_some_and(|o| o.mark != Mark::Deleting) {
            src.set_mark(u, Mark::Deleting)?;
        }
    }
    for &u in snaps.iter().chain(std::iter::once(&s.uuid)) {
        lio.unexport(u).map_err(XhostError::Export)?;
    }
    for &u in snaps {
        src.delete(u)?;
    }
    src.delete(s.uuid)?;
    Ok(())
}

/// The destination's half (see [`receive`]).
#[derive(Debug, Clone)]
pub struct Receive<'a> {
    /// The volume's manifest name.
    pub volume: &'a str,
    /// Its identity.
    pub uuid: Uuid,
    /// Where it lives.
    pub from: End,
    /// Where it goes (this host).
    pub to: End,
    /// The target's size.
    pub size: u64,
    /// Read at most this many bytes per second.
    pub bandwidth: Option<u64>,
    /// The snapshots that move with it, as the plan saw them (sizes on
    /// this host); the job must name the same ones.
    pub snapshots: &'a [Link<'a>],
    /// The planner saw no job and the volume on no other host while this
    /// host holds its `migrating` target: the source finished, and only
    /// the promotion is left.
    pub source_gone: bool,
    /// Waiting for the source.
    pub wait: Wait,
}

/// The destination's half: wait for the source's export, then move the
/// volume with [`crate::migrate::run`] from a [`remote::RemoteVolume`]
/// (log in, create the target `migrating`, copy only the published ranges,
/// verify against the source's hash, log out, say `verified`), then promote
/// the target.
///
/// # Errors
/// etcd, the login, the copy, the verification; `Waiting` while the source
/// has not exported for [`Wait::stall`].
pub fn receive(
    r: &Receive<'_>,
    dst: &dyn Driver,
    jobs: &dyn Jobs,
    attach: &dyn Attacher,
    cp: &mut dyn Checkpoints,
    sleep: &(dyn Fn(Duration) + Sync),
) -> Result<Report, XhostError> {
    let since = Instant::now();
    let remote = loop {
        match jobs.get(r.volume)? {
            Some((job, rev)) => {
                job.check_version()?;
                if job.uuid != r.uuid || job.to != r.to || job.from != r.from {
                    return Err(XhostError::State(format!(
                        "the migration job of {} moves {} from {} to {}, not {} from {} to {}",
                        r.volume, job.uuid, job.from, job.to, r.uuid, r.from, r.to
                    )));
                }
                let theirs: std::collections::BTreeSet<Uuid> =
                    job.snapshots.iter().map(|x| x.uuid).collect();
                let ours: std::collections::BTreeSet<Uuid> =
                    r.snapshots.iter().map(|l| l.uuid).collect();
                if theirs != ours {
                    let names = |v: Vec<&str>| {
                        if v.is_empty() {
                            "none".to_owned()
                        } else {
                            v.join(", ")
                        }
                    };
                    return Err(XhostError::State(format!(
                        "the migration job of {} moves its snapshots {}, but this host's plan moves {}; plan again (the source's snapshots changed?)",
                        r.volume,
                        names(job.snapshots.iter().map(|x| x.name.as_str()).collect()),
                        names(r.snapshots.iter().map(|l| l.name).collect()),
                    )));
                }
                break remote::RemoteVolume::new(jobs, attach, job, rev, r.wait, sleep);
            }
            None if r.source_gone => {
                break remote::RemoteVolume::finished(r.uuid, r.volume, &r.from);
            }
            None if since.elapsed() >= r.wait.stall => {
                return Err(XhostError::Waiting(format!(
                    "waiting for host {} to export the volume (no job in etcd after {:?}); is its agent running with --etcd?",
                    r.from.host, r.wait.stall
                )));
            }
            None => sleep(r.wait.poll),
        }
    };
    let mv = Move {
        uuid: r.uuid,
        name: r.volume,
        size: r.size,
        bandwidth: r.bandwidth,
        snapshots: r.snapshots,
    };
    let mut cps = remote::Published::new(cp, &remote);
    let out = crate::migrate::run(&mv, &remote, dst, &mut cps);
    if out.is_err() {
        // A failed copy or verification leaves no session behind.
        remote.detach();
    }
    Ok(out?)
}

// Test data builders narrow sizes to buffer lengths on purpose.
#[cfg(test)]
#[allow(clippy::cast_possible_truncation, clippy::type_complexity)]
mod tests;
