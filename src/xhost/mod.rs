//! Moving a volume to a back end of another host: the source host exports
//! it over iSCSI, the destination host logs in and copies.
//!
//! Owns the job protocol of a cross-host migration and its two halves:
//! [`send`] (the source host) and [`receive`] (the destination host). The
//! destination reaches the source's volume through [`remote::RemoteVolume`],
//! a third kind of endpoint behind the [`Driver`] seam: a volume of another
//! host which, once logged in over iSCSI, is a block device of known size
//! with no snapshots. [`crate::migrate::run`] moves it like any other source.
//!
//! The job lives in etcd (`PREFIX/v1/jobs/VOLUME`, a [`Job`] written by
//! compare-and-swap on its `mod_revision` through [`Jobs`]) and in both
//! hosts' journals (the step's intent and outcome; the destination's copy
//! checkpoints), so a kill of either agent anywhere resumes:
//!
//! | phase | who writes it | what is true then | a re-run of the source | a re-run of the destination |
//! | --- | --- | --- | --- | --- |
//! | (none) | | source ready | hashes, exports, writes `exported` | waits for `exported` |
//! | `exported` | source | export with an ACL for the destination's initiator and a one-time CHAP secret; extent map and BLAKE3 hash published | exports again (idempotent), waits | logs in, creates the target `migrating`, copies |
//! | `copying` | destination (with its checkpoints) | logged in, copying | waits while the copy moves | resumes at its journal's checkpoint |
//! | `verified` | destination | target hash equal to the source's local hash; logged out, node record deleted | marks the source `deleting`, unexports, deletes it, removes the job | promotes its target |
//! | (removed) | source | source gone; the volume lives on the destination | nothing | promotes its target when the source is gone from the fleet |
//!
//! The CHAP secret is drawn at random for each job, lives only in the job
//! record (for the destination) and in configfs (for LIO), is never in a
//! plan, a journal or a log (`Debug` redacts it, command lines show it as
//! `<redacted>`), and is gone with the export and the job.
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
use crate::driver::{DataPath, Driver, DriverError, Layout, Mark};
use crate::migrate::{Checkpoints, MigrateError, Move, Report};
pub use crate::model::{End, JobView, Phase};

/// The job record's version.
pub const JOB_VERSION: u32 = 1;

/// Published extent maps longer than this are left out (the destination
/// reads everything and detects zeros): a record stays far below etcd's
/// request limit.
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
    /// BLAKE3 content hash of the source, computed on the source host.
    pub hash: String,
    /// Bytes the destination copied so far (its last checkpoint).
    #[serde(default)]
    pub copied: u64,
    /// Bytes it reads in all.
    #[serde(default)]
    pub to_copy: u64,
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
    /// Waiting for the destination.
    pub wait: Wait,
}

/// What [`send`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The source was removed (the volume lives on the destination now).
    pub removed: bool,
    /// Bytes this host read to hash the volume (0 on a resumed job).
    pub hashed: u64,
}

/// The source's half: export the volume for the destination, wait while it
/// copies, then remove the source once the copy is verified. Resumes from
/// whatever the job and the back end show.
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
                    hashed = job.1;
                    exported = true;
                    if jobs.put(&job.0, None)?.is_none() {
                        tracing::info!(
                            volume = s.volume,
                            "another writer made the job first; reading it"
                        );
                    }
                    continue;
                }
            }
        };
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
                    if src.object(s.uuid)?.is_some_and(|o| o.mark == Mark::Ready) {
                        let data = src.data_path(s.uuid)?;
                        lio.export(s.uuid, &data, &job.target)
                            .map_err(XhostError::Export)?;
                    }
                    exported = true;
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
                finish(s, src, lio)?;
                if !jobs.delete(s.volume, rev)? {
                    continue;
                }
                tracing::info!(volume = s.volume, to = %job.to, "the destination verified its copy; the source is removed");
                return Ok(Sent {
                    removed: true,
                    hashed,
                });
            }
        }
    }
}

/// Hashes and exports the source, and makes the job (not written yet):
/// the job and the bytes read.
fn start(
    s: &Sending<'_>,
    src: &dyn Driver,
    jobs: &dyn Jobs,
    lio: &dyn Exporter,
    size: u64,
) -> Result<(Job, u64), XhostError> {
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
    let data = src.data_path(s.uuid)?;
    let file = std::fs::File::open(&data.path).map_err(|source| MigrateError::Open {
        path: data.path.clone(),
        source,
    })?;
    let copy_err = |source| MigrateError::Copy {
        from: s.from.to_string(),
        to: s.to.to_string(),
        source,
    };
    let (extents, published) = match src.layout(s.uuid)? {
        Layout::Seek => {
            let e = Extents::of_file(&file, &data.path, size).map_err(copy_err)?;
            let r = e.ranges().to_vec();
            (e, Some(r))
        }
        Layout::Ranges(r) => (Extents::new(r.clone(), size), Some(r)),
        Layout::Everything => (Extents::all(size), None),
    };
    let published = published
        .filter(|r| r.len() <= MAX_RANGES)
        .map(|r| r.iter().map(|x| (x.start, x.end)).collect::<Vec<_>>());
    let hash = copy::content_hash(&file, &data.path, size, &extents).map_err(copy_err)?;
    let target = Target {
        iqn: migration_iqn(s.uuid),
        portal: portal.to_owned(),
        initiator,
        user: format!("cinderblock-{}", &s.uuid.simple().to_string()[..12]),
        secret: Secret::random()?,
    };
    lio.export(s.uuid, &data, &target)
        .map_err(XhostError::Export)?;
    let to_copy = published
        .as_ref()
        .map_or(size, |r| r.iter().map(|(a, b)| b - a).sum());
    tracing::info!(volume = s.volume, to = %s.to, iqn = %target.iqn, hashed = extents.bytes(), "exported for the migration");
    Ok((
        Job {
            version: JOB_VERSION,
            volume: s.volume.to_owned(),
            uuid: s.uuid,
            size,
            from: s.from.clone(),
            to: s.to.clone(),
            phase: Phase::Exported,
            target,
            extents: published,
            hash: hash.to_hex().to_string(),
            copied: 0,
            to_copy,
        },
        extents.bytes(),
    ))
}

/// The source's end, once verified: mark it `deleting`, remove the export
/// with its ACL, delete it. Each step idempotent.
fn finish(s: &Sending<'_>, src: &dyn Driver, lio: &dyn Exporter) -> Result<(), XhostError> {
    if src
        .object(s.uuid)?
        .is_some_and(|o| o.mark != Mark::Deleting)
    {
        src.set_mark(s.uuid, Mark::Deleting)?;
    }
    lio.unexport(s.uuid).map_err(XhostError::Export)?;
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
    sleep: &dyn Fn(Duration),
) -> Result<Report, XhostError> {
    let since = Instant::now();
    let remote = loop {
        match jobs.get(r.volume)? {
            Some((job, rev)) => {
                if job.uuid != r.uuid || job.to != r.to || job.from != r.from {
                    return Err(XhostError::State(format!(
                        "the migration job of {} moves {} from {} to {}, not {} from {} to {}",
                        r.volume, job.uuid, job.from, job.to, r.uuid, r.from, r.to
                    )));
                }
                break remote::RemoteVolume::new(jobs, attach, job, rev);
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
        snapshots: &[],
    };
    let mut cps = remote::Published {
        inner: cp,
        remote: &remote,
    };
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
