//! The executor: carries out a plan's actions in order, journalling each
//! step's intent before and its outcome after, and keeping the recorded state
//! current after every step.
//!
//! Every step is idempotent (the drivers key everything by uuid), so after a
//! crash at any point the next run re-discovers, re-plans and finishes: an
//! interrupted create shows as a `creating` object that the planner resumes
//! with the same uuid; an interrupted delete as a `deleting` one.
//!
//! Each step goes to its back end's [`Driver`] from the [`Registry`] built
//! from the manifests; the executor names no back-end kind. A failed step is
//! an [`ApplyError::Step`] whose [`StepError`] says whether retrying can
//! help, which the agent's backoff reads.
//!
//! Must not: decide anything the plan did not say. It resolves only the
//! uuids of objects created earlier in the same run.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::driver::{Adoption, Change, Driver, DriverError, NewMark, NewObject, PathKind, fault};
use crate::iscsi::lio;
use crate::model::ObjKind;
use crate::plan::{Action, Op, Plan};
use crate::registry::Registry;
use crate::state::journal::{Journal, JournalError, Outcome};
use crate::state::record::{Ledger, RecordedObject};

/// Errors of an apply.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The plan has errors.
    #[error("the plan has {0} error(s); nothing was applied")]
    PlanHasErrors(usize),
    /// The state directory could not be created.
    #[error("cannot create the state directory {}", path.display())]
    StateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The journal could not be written.
    #[error("cannot write the journal")]
    Journal(#[from] JournalError),
    /// The recorded state could not be written.
    #[error("cannot write the recorded state")]
    State(#[from] crate::state::atomic::AtomicError),
    /// The caller asked to stop ([`Progress::proceed`] said no) before a
    /// step; the steps before it are done and recorded.
    #[error("stopped after {done} step(s) on request")]
    Stopped {
        /// Steps completed.
        done: usize,
    },
    /// A step failed.
    #[error("{address}")]
    Step {
        /// The action's address.
        address: String,
        /// What failed (boxed: it is large).
        #[source]
        cause: Box<StepError>,
        /// Steps completed before it.
        done: usize,
    },
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Its back end refused or failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// The migration failed.
    #[error(transparent)]
    Migrate(#[from] crate::migrate::MigrateError),
    /// The restore of a volume declared from a backup failed.
    #[error(transparent)]
    Restore(#[from] crate::backup::BackupError),
    /// The iSCSI export failed.
    #[error(transparent)]
    Export(#[from] lio::LioError),
    /// The backup catalogue could not be read or written (a rename).
    #[error("cannot update the backup catalogue")]
    Catalog(#[source] crate::backup::BackupError),
    /// Copying an image file in failed.
    #[error("cannot copy the image file {} in", path.display())]
    ImageCopy {
        /// The image file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: crate::copy::CopyError,
    },
    /// What the step needs is missing or contradicts the world (a source
    /// gone, a back end not of this host, an unreadable secret): the plan
    /// must change first.
    #[error("{0}")]
    Invalid(String),
    /// The fleet's placement of the volume is no longer the one the plan
    /// used (or cannot be checked): a new plan decides again.
    #[error("{0}")]
    Fenced(String),
    /// A move between hosts failed or waits for the other host.
    #[error(transparent)]
    Xhost(#[from] crate::xhost::XhostError),
}

impl StepError {
    /// Whether running the step again later can help (contention, a
    /// timeout, I/O); otherwise something must change first. The agent's
    /// backoff reads this.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Driver(e) => e.is_retryable(),
            Self::Migrate(e) => e.is_retryable(),
            Self::Restore(e) => e.is_retryable(),
            Self::Export(_) | Self::Catalog(_) | Self::ImageCopy { .. } | Self::Fenced(_) => true,
            Self::Xhost(e) => e.is_retryable(),
            Self::Invalid(_) => false,
        }
    }
}

impl ApplyError {
    /// For a failed step: its address, its cause in one line, and whether a
    /// retry can help.
    pub fn step(&self) -> Option<(&str, String, bool)> {
        match self {
            Self::Step { address, cause, .. } => Some((
                address.as_str(),
                crate::error_chain(cause),
                cause.is_retryable(),
            )),
            _ => None,
        }
    }
}

/// What an apply did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Objects created.
    pub added: usize,
    /// Objects changed.
    pub changed: usize,
    /// Objects destroyed.
    pub destroyed: usize,
    /// Objects forgotten.
    pub forgotten: usize,
    /// Steps that found nothing to do.
    pub unchanged: usize,
}

/// Receives progress, for the CLI to show.
pub trait Progress {
    /// A step starts.
    fn start(&mut self, action: &Action, detail: &str);
    /// A step ended.
    fn done(&mut self, action: &Action, changed: bool, elapsed: Duration);
    /// Asked before each step: `false` stops the apply there, between two
    /// steps, with [`ApplyError::Stopped`] (the agent's graceful shutdown).
    fn proceed(&mut self) -> bool {
        true
    }
    /// A long copy inside a step (a migration) moved on.
    fn copy(&mut self, _action: &Action, _at: &crate::copy::Position) {}
    /// What a step did, in words (a migration's figures), before
    /// [`Progress::done`].
    fn note(&mut self, _action: &Action, _text: &str) {}
}

/// Options of an apply.
#[derive(Clone, Copy, Default)]
pub struct ApplyOptions<'a> {
    /// Read at most this many bytes per second in copies (migrations); the
    /// smaller of this and a back end's `migrationBandwidth` applies.
    pub bandwidth_limit: Option<u64>,
    /// Checks a fleet placement right before the volume is created.
    pub fence: Option<&'a dyn Fence>,
    /// The fleet's side of moves between hosts (`--etcd`).
    pub xhost: Option<Xhost<'a>>,
}

/// What a move between hosts needs beside the registry: the job records
/// in etcd, this host's portal for exports, the command runner for
/// `iscsiadm`.
#[derive(Clone, Copy)]
pub struct Xhost<'a> {
    /// The jobs (etcd).
    pub jobs: &'a dyn crate::xhost::Jobs,
    /// `ADDR:PORT` this host exports on (`--migration-portal`).
    pub portal: Option<&'a str>,
    /// Runs `iscsiadm`.
    pub runner: &'a dyn crate::exec::Runner,
    /// How long each side waits for the other.
    pub wait: crate::xhost::Wait,
}

impl std::fmt::Debug for ApplyOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplyOptions")
            .field("bandwidth_limit", &self.bandwidth_limit)
            .field("fence", &self.fence.is_some())
            .field("xhost", &self.xhost.is_some())
            .finish()
    }
}

/// The fleet's fencing check: a create of a volume the fleet placed runs
/// only if the placement is, right then, still the one the plan used.
pub trait Fence {
    /// `Ok` when `volume`'s placement is on `backend` at `revision`;
    /// otherwise why not (the step fails and is retried after a new plan).
    fn check(&self, volume: &str, backend: &str, revision: i64) -> Result<(), String>;
}

/// Progress that shows nothing.
pub struct Silent;

impl Progress for Silent {
    fn start(&mut self, _: &Action, _: &str) {}
    fn done(&mut self, _: &Action, _: bool, _: Duration) {}
}

/// Applies `plan` against the back ends of `registry`, journalling in `state_dir` and updating `ledger`. The caller holds the
/// state lock.
pub fn apply(
    plan: &Plan,
    registry: &Registry<'_>,
    state_dir: &Path,
    ledger: &mut Ledger,
    progress: &mut dyn Progress,
) -> Result<Report, ApplyError> {
    apply_with(
        plan,
        registry,
        state_dir,
        ledger,
        progress,
        ApplyOptions::default(),
    )
}

/// [`apply`] with options.
pub fn apply_with(
    plan: &Plan,
    registry: &Registry<'_>,
    state_dir: &Path,
    ledger: &mut Ledger,
    progress: &mut dyn Progress,
    opts: ApplyOptions,
) -> Result<Report, ApplyError> {
    if !plan.errors.is_empty() {
        return Err(ApplyError::PlanHasErrors(plan.errors.len()));
    }
    record_quietly(plan, ledger, state_dir)?;
    std::fs::create_dir_all(state_dir).map_err(|e| ApplyError::StateDir {
        path: state_dir.to_owned(),
        source: e,
    })?;
    thaw_interrupted(registry, state_dir)?;
    let mut journal = Journal::open(state_dir)?;
    let plan_id = Uuid::new_v4();
    let mut created: BTreeMap<(ObjKind, String), Uuid> = BTreeMap::new();
    let mut report = Report::default();
    for (i, action) in plan.actions.iter().enumerate() {
        if !progress.proceed() {
            return Err(ApplyError::Stopped { done: i });
        }
        let step = u32::try_from(i + 1).unwrap_or(u32::MAX);
        // Choose a new object's identity before anything happens, so the
        // journal names it.
        let new_uuid = match &action.op {
            Op::Create { resume, .. } => Some(resume.unwrap_or_else(Uuid::new_v4)),
            _ => None,
        };
        // A group snapshot's member identities, likewise.
        let (cut, text) = identities(action, new_uuid);
        let intent = journal.intent(plan_id, step, &text)?;
        fault::step(step, "intent");
        progress.start(action, &text);
        let started = Instant::now();
        let result = if let Op::Migrate { .. } = &action.op {
            let mut ctx = MigrateCtx {
                journal: &mut journal,
                intent: &intent,
                state_dir,
                progress: &mut *progress,
                action,
                id: None,
                logged: Instant::now(),
            };
            migrate(action, registry, ledger, &mut ctx, opts)
        } else if let Op::GroupSnapshot { .. } = &action.op {
            let mut holds = crate::state::journal::JournalHolds {
                journal: &mut journal,
                intent: &intent,
            };
            let cx: (_, &mut dyn Progress) = (&created, &mut *progress);
            group_snapshot(action, &cut, registry, cx, ledger, &mut holds)
        } else if let Op::Create {
            name,
            backend,
            placement: Some(rev),
            ..
        } = &action.op
        {
            // Fenced: nothing is created on a placement that is not
            // current right now.
            match opts.fence {
                Some(f) => f.check(name, backend, *rev).map_err(StepError::Fenced),
                None => Err(StepError::Fenced(format!(
                    "the fleet placed it (revision {rev}), and this run cannot check that the placement is current; run with --etcd"
                ))),
            }
            .and_then(|()| run(action, new_uuid, registry, &created, ledger, state_dir))
        } else {
            run(action, new_uuid, registry, &created, ledger, state_dir)
        };
        fault::step(step, "driver");
        match result {
            Ok(change) => {
                let changed = change == Change::Changed;
                let outcome = if changed {
                    Outcome::Changed
                } else {
                    Outcome::Unchanged
                };
                journal.outcome(&intent, outcome, None)?;
                fault::step(step, "outcome");
                remember(&mut created, action, new_uuid, &cut);
                ledger.recorded.last_plan = Some(plan_id);
                ledger.save(state_dir)?;
                count(&mut report, action, changed);
                progress.done(action, changed, started.elapsed());
            }
            Err(cause) => {
                journal.outcome(&intent, Outcome::Failed, Some(crate::error_chain(&cause)))?;
                // Keep what earlier steps recorded.
                ledger.save(state_dir)?;
                return Err(ApplyError::Step {
                    address: action.address.clone(),
                    cause: Box::new(cause),
                    done: i,
                });
            }
        }
    }
    Ok(report)
}

/// Records the plan's objects that need no step ([`Plan::unrecorded`]:
/// ours, found, with no record, whose record says only what none means)
/// and that the record still lacks; saves the record when it wrote any.
/// [`apply_with`] does it first; a caller with a plan of no actions calls
/// it alone. Returns how many it recorded.
pub fn record_quietly(
    plan: &Plan,
    ledger: &mut Ledger,
    state_dir: &Path,
) -> Result<usize, ApplyError> {
    let mut added = 0;
    for u in &plan.unrecorded {
        if let std::collections::btree_map::Entry::Vacant(e) = ledger.recorded.objects.entry(u.uuid)
        {
            e.insert(u.record.clone());
            added += 1;
        }
    }
    if added > 0 {
        std::fs::create_dir_all(state_dir).map_err(|e| ApplyError::StateDir {
            path: state_dir.to_owned(),
            source: e,
        })?;
        ledger.save(state_dir)?;
        tracing::info!(objects = added, "recorded objects found without a record");
    }
    Ok(added)
}

fn count(r: &mut Report, a: &Action, changed: bool) {
    if !changed {
        r.unchanged += 1;
        return;
    }
    match a.op {
        Op::Create { .. }
        | Op::GroupSnapshot { .. }
        | Op::Adopt { .. }
        | Op::CreatePool { .. }
        | Op::DiscoveryAuth { new: true, .. } => {
            r.added += 1;
        }
        Op::Export { ref changes, .. } if changes.is_empty() => r.added += 1,
        Op::Extend { .. }
        | Op::Rename { .. }
        | Op::Record { .. }
        | Op::Export { .. }
        | Op::DiscoveryAuth { .. }
        | Op::Unexport { .. }
        | Op::Migrate { .. } => {
            r.changed += 1;
        }
        Op::Delete { .. } => r.destroyed += 1,
        Op::Forget { .. } => r.forgotten += 1,
    }
}

/// Releases every hold on I/O that a step a crash interrupted left in
/// place (the journal's hold records with no outcome after them), before
/// anything else runs: a kill inside a group snapshot's freeze leaves the
/// members' writes waiting until then.
fn thaw_interrupted(registry: &Registry<'_>, state_dir: &Path) -> Result<(), ApplyError> {
    let contents = crate::state::journal::read(state_dir)?;
    for backend in contents.interrupted_holds() {
        let Some(d) = registry.get(backend) else {
            continue;
        };
        match d.thaw() {
            Ok(Change::Changed) => {
                tracing::warn!(
                    backend,
                    "released the holds of an interrupted group snapshot"
                );
            }
            Ok(Change::Unchanged) => {}
            // The step itself releases them again before its cut.
            Err(e) => {
                tracing::warn!(backend, error = %crate::error_chain(&e), "cannot release the holds of an interrupted group snapshot");
            }
        }
    }
    Ok(())
}

/// The objects a step made, by kind and name, for later steps of the same
/// plan.
fn remember(
    created: &mut BTreeMap<(ObjKind, String), Uuid>,
    action: &Action,
    new_uuid: Option<Uuid>,
    cut: &[Uuid],
) {
    match (&action.op, new_uuid) {
        (Op::Create { kind, name, .. }, Some(u)) => {
            created.insert((*kind, name.clone()), u);
        }
        (
            Op::Adopt {
                kind, name, uuid, ..
            },
            _,
        ) => {
            created.insert((*kind, name.clone()), *uuid);
        }
        (Op::GroupSnapshot { members, .. }, _) => {
            for (m, u) in members.iter().zip(cut) {
                created.insert((ObjKind::Snapshot, m.snapshot.clone()), *u);
            }
        }
        _ => {}
    }
}

/// A group snapshot's member snapshot identities (chosen before anything
/// happens, so the journal names them; none for other steps), and the
/// step's words for the journal.
fn identities(action: &Action, new_uuid: Option<Uuid>) -> (Vec<Uuid>, String) {
    match &action.op {
        Op::GroupSnapshot { members, .. } => {
            let cut: Vec<Uuid> = members
                .iter()
                .map(|m| m.uuid.unwrap_or_else(Uuid::new_v4))
                .collect();
            let text = describe_cut(action, &cut);
            (cut, text)
        }
        _ => (Vec::new(), describe(action, new_uuid)),
    }
}

/// The journal's words for a group snapshot, naming each member snapshot's
/// identity.
fn describe_cut(a: &Action, cut: &[Uuid]) -> String {
    let Op::GroupSnapshot {
        group,
        backend,
        members,
        ..
    } = &a.op
    else {
        return describe(a, None);
    };
    let list: Vec<String> = members
        .iter()
        .zip(cut)
        .map(|(m, u)| format!("{}={u}", m.snapshot))
        .collect();
    format!(
        "group-snapshot {} of {group} on {backend}: {}",
        a.address,
        list.join(" ")
    )
}

/// Takes a group snapshot ([`Driver::group_snapshot`]), shows the measured
/// freeze, and records its member snapshots once the whole cut is done.
fn group_snapshot(
    action: &Action,
    cut: &[Uuid],
    registry: &Registry<'_>,
    (created, progress): (&BTreeMap<(ObjKind, String), Uuid>, &mut dyn Progress),
    ledger: &mut Ledger,
    holds: &mut dyn crate::driver::Holds,
) -> Result<Change, StepError> {
    let Op::GroupSnapshot {
        group,
        backend,
        members,
        deletion_policy,
        freeze_limit_ms,
        ..
    } = &action.op
    else {
        return Err(StepError::Invalid("not a group snapshot".into()));
    };
    let mut list = Vec::new();
    for (m, u) in members.iter().zip(cut) {
        let volume = m
            .volume_uuid
            .or_else(|| created.get(&(ObjKind::Volume, m.volume.clone())).copied())
            .ok_or_else(|| {
                StepError::Invalid(format!("its member volume.{} does not exist", m.volume))
            })?;
        list.push(crate::driver::CutMember {
            volume,
            snapshot: *u,
            name: &m.snapshot,
            space: m.size,
        });
    }
    let on = driver(registry, backend)?;
    let report = on.group_snapshot(
        &crate::driver::GroupCut {
            group,
            members: &list,
            limit: Duration::from_millis(freeze_limit_ms.unwrap_or(crate::plan::FREEZE_LIMIT_MS)),
        },
        holds,
    )?;
    if let Some(f) = report.freeze {
        tracing::info!(group = %group, snapshot = %action.address, freeze_ms = f.as_millis(), members = list.len(), "group snapshot: freeze window");
        progress.note(
            action,
            &format!(
                "freeze window {:.3} s ({} members held)",
                f.as_secs_f64(),
                list.len()
            ),
        );
    }
    for (m, c) in members.iter().zip(&list) {
        ledger.recorded.objects.insert(
            c.snapshot,
            RecordedObject {
                kind: ObjKind::Snapshot,
                name: m.snapshot.clone(),
                backend: backend.clone(),
                size: m.size,
                deletion_policy: *deletion_policy,
                consistency_group: None,
            },
        );
    }
    Ok(report.change)
}

/// The journal's words for a step.
fn describe(a: &Action, uuid: Option<Uuid>) -> String {
    match &a.op {
        Op::GroupSnapshot { group, backend, .. } => {
            format!("group-snapshot {} of {group} on {backend}", a.address)
        }
        Op::Create { backend, size, .. } => format!(
            "create {} id={} on {backend} size={size}",
            a.address,
            uuid.map(|u| u.to_string()).unwrap_or_default()
        ),
        Op::CreatePool {
            backend,
            volume_group,
            pool,
            size,
            metadata_size,
        } => format!(
            "create {} thin pool {volume_group}/{pool} on {backend} size={size} metadata={metadata_size}",
            a.address
        ),
        Op::Adopt {
            uuid,
            backend,
            entry,
            size,
            ..
        } => format!(
            "adopt {} id={uuid} on {backend} entry={} size={size}",
            a.address,
            crate::manifest::values::shown(entry)
        ),
        Op::Extend {
            uuid, backend, to, ..
        } => format!("extend {} id={uuid} on {backend} to {to}", a.address),
        Op::Rename {
            from,
            uuid,
            backend,
            ..
        } => format!("rename {} id={uuid} on {backend} from {from}", a.address),
        Op::Record {
            uuid,
            deletion_policy,
            ..
        } => {
            format!(
                "record {} id={uuid} deletionPolicy={deletion_policy:?}",
                a.address
            )
        }
        Op::Delete { uuid, backend, .. } => format!("delete {} id={uuid} on {backend}", a.address),
        Op::Export {
            uuid,
            backend,
            iqn,
            initiators,
            ..
        } => format!(
            "export {} id={} on {backend} as {} to {}",
            a.address,
            uuid.map(|u| u.to_string()).unwrap_or_default(),
            iqn.as_deref().unwrap_or("(default)"),
            initiators.join(",")
        ),
        Op::Unexport { uuid, iqn, .. } => format!(
            "unexport {} id={uuid} {}",
            a.address,
            iqn.as_deref().unwrap_or_default()
        ),
        Op::DiscoveryAuth { mutual, .. } => format!(
            "set iSCSI discovery authentication{}",
            if mutual.is_some() {
                " with mutual CHAP"
            } else {
                ""
            }
        ),
        Op::Migrate {
            uuid,
            from,
            to,
            target_size,
            ..
        } => format!(
            "migrate {} id={uuid} from {from} to {to} size={target_size}",
            a.address
        ),
        Op::Forget {
            uuid,
            backend,
            gone,
            ..
        } => {
            format!(
                "forget {} id={uuid} on {backend}{}",
                a.address,
                if *gone { " (record only)" } else { "" }
            )
        }
    }
}

/// The driver of back end `name`.
fn driver<'a>(registry: &'a Registry<'_>, name: &str) -> Result<&'a dyn Driver, StepError> {
    registry.get(name).ok_or_else(|| {
        StepError::Invalid(format!("back end {name} is not a back end of this host"))
    })
}

/// Creates volume `uuid` on `on` from backup `b`
/// ([`crate::backup::into_volume`]). An interrupted earlier attempt
/// (`resume`) holds nothing worth keeping: it is removed and the restore
/// starts over.
fn restore_backup(
    on: &dyn Driver,
    b: &crate::observe::BackupSource,
    uuid: Uuid,
    resume: Option<Uuid>,
    name: &str,
    size: u64,
) -> Result<(), StepError> {
    if resume.is_some() {
        on.delete(uuid)?;
    }
    let stats = crate::backup::into_volume::restore_new_from(
        &b.target,
        b.id,
        on,
        uuid,
        name,
        size,
        &crate::backup::NoProgress,
    )?;
    tracing::info!(%uuid, backup = %b.id, bytes = stats.bytes, written = stats.written, "restored into a new volume");
    Ok(())
}

/// Copies the raw image file `path` into the new image-volume `uuid` of
/// `on` (`size` bytes): only the file's data extents are read, holes are
/// left as holes where the back end reads zeros unwritten, and every block
/// the file does not cover is zeroed where it does not.
fn copy_image_in(path: &Path, on: &dyn Driver, uuid: Uuid, size: u64) -> Result<(), StepError> {
    let target = on.data_path(uuid)?;
    let copy_err = |source| StepError::ImageCopy {
        path: path.to_owned(),
        source,
    };
    let io_err = |op: &'static str, p: &Path| {
        let p = p.to_owned();
        move |source| {
            copy_err(crate::copy::CopyError::Io {
                op,
                path: p,
                source,
            })
        }
    };
    let src = std::fs::File::open(path).map_err(io_err("open", path))?;
    let len = src.metadata().map_err(io_err("stat", path))?.len();
    let dst = std::fs::OpenOptions::new()
        .write(true)
        .open(&target.path)
        .map_err(io_err("open", &target.path))?;
    let extents = crate::copy::Extents::of_file(&src, path, len).map_err(copy_err)?;
    let stats = crate::copy::copy(
        &crate::copy::Job {
            source: &src,
            source_path: path,
            target: &dst,
            target_path: &target.path,
            len,
            target_len: size,
            extents: &extents,
            kind: if on.capabilities().new_reads_zero {
                crate::copy::Target::Holes
            } else {
                crate::copy::Target::MustZero
            },
            start: 0,
            bandwidth: None,
            hash_source: false,
            read_back: false,
            writeback: target.kind == PathKind::File,
        },
        &mut crate::copy::Quiet,
    )
    .map_err(copy_err)?;
    tracing::info!(image = %uuid, from = %path.display(), read = stats.read, written = stats.written, zeroed = stats.zeroed, "image content copied in");
    Ok(())
}

/// Reads a CHAP secret where a manifest points (at apply time only; the
/// error names the source, never the content).
fn read_secret(
    r: &crate::manifest::kinds::SecretRef,
) -> Result<crate::iscsi::chap::Chap, StepError> {
    crate::iscsi::chap::read(
        r.file
            .as_ref()
            .map(crate::manifest::values::AbsPath::as_path),
        r.env.as_deref(),
    )
    .map_err(StepError::Invalid)
}

#[allow(clippy::too_many_lines)] // one arm per operation, each short
fn run(
    action: &Action,
    new_uuid: Option<Uuid>,
    registry: &Registry<'_>,
    created: &BTreeMap<(ObjKind, String), Uuid>,
    ledger: &mut Ledger,
    state_dir: &Path,
) -> Result<Change, StepError> {
    let invalid = |what: &str| StepError::Invalid(what.to_owned());
    match &action.op {
        Op::Create {
            kind,
            name,
            backend,
            size,
            source,
            deletion_policy,
            from_file,
            backup,
            resume,
            consistency_group,
            ..
        } => {
            let uuid = new_uuid.ok_or_else(|| invalid("no identity"))?;
            let source_uuid = match source {
                None => None,
                Some(s) => Some(
                    s.uuid
                        .or_else(|| created.get(&(s.kind, s.name.clone())).copied())
                        .ok_or_else(|| {
                            StepError::Invalid(format!(
                                "its source {}.{} does not exist",
                                s.kind, s.name
                            ))
                        })?,
                ),
            };
            let on = driver(registry, backend)?;
            let change = if let Some(b) = backup {
                restore_backup(on, b, uuid, *resume, name, *size)?;
                Change::Changed
            } else if *kind == ObjKind::Snapshot {
                let vol = source_uuid.ok_or_else(|| invalid("a snapshot needs its volume"))?;
                // `size` is the copy-on-write space where the back end
                // reserves one; the others ignore it.
                on.snapshot(vol, uuid, name, *size)?
            } else {
                on.create(&NewObject {
                    uuid,
                    name,
                    kind: *kind,
                    size: *size,
                    source: source.as_ref().zip(source_uuid).map(|(s, u)| (s.kind, u)),
                    mark: NewMark::Ready,
                })?
            };
            if let Some(path) = from_file {
                copy_image_in(path, on, uuid, *size)?;
            }
            // Membership on the object too (a crash before this is
            // finished by the next plan's record of it).
            let change = if *kind == ObjKind::Volume && consistency_group.is_some() {
                change.or(on.set_group(uuid, consistency_group.as_deref())?)
            } else {
                change
            };
            ledger.recorded.objects.insert(
                uuid,
                RecordedObject {
                    kind: *kind,
                    name: name.clone(),
                    backend: backend.clone(),
                    size: *size,
                    deletion_policy: *deletion_policy,
                    consistency_group: consistency_group.clone(),
                },
            );
            Ok(change)
        }
        Op::CreatePool {
            backend,
            size,
            metadata_size,
            ..
        } => Ok(driver(registry, backend)?.create_pool(*size, *metadata_size)?),
        Op::Adopt {
            kind,
            name,
            backend,
            entry,
            uuid,
            size,
            deletion_policy,
            parent,
            ..
        } => {
            let change = driver(registry, backend)?.adopt(&Adoption {
                entry,
                uuid: *uuid,
                name,
                kind: *kind,
                parent: *parent,
                size: *size,
            })?;
            ledger.recorded.objects.insert(
                *uuid,
                RecordedObject {
                    kind: *kind,
                    name: name.clone(),
                    backend: backend.clone(),
                    size: *size,
                    deletion_policy: *deletion_policy,
                    // A member's group is recorded by the next plan's
                    // `~ consistencyGroup` change, after the adopt.
                    consistency_group: None,
                },
            );
            Ok(change)
        }
        Op::Rename {
            kind,
            name,
            uuid,
            backend,
            ..
        } => rename(
            registry,
            ledger,
            state_dir,
            (*kind, name.as_str(), *uuid, backend.as_str()),
        ),
        Op::Extend {
            uuid, backend, to, ..
        } => {
            let change = driver(registry, backend)?.extend(*uuid, *to)?;
            if let Some(r) = ledger.recorded.objects.get_mut(uuid) {
                r.size = *to;
            }
            Ok(change)
        }
        Op::Record {
            kind,
            name,
            uuid,
            backend,
            size,
            deletion_policy,
            consistency_group,
            regrouped,
            ..
        } => {
            let tagged = if *kind == ObjKind::Volume
                && (consistency_group.is_some() || regrouped.is_some())
            {
                driver(registry, backend)?.set_group(*uuid, consistency_group.as_deref())?
            } else {
                Change::Unchanged
            };
            let new = RecordedObject {
                kind: *kind,
                name: name.clone(),
                backend: backend.clone(),
                size: *size,
                deletion_policy: *deletion_policy,
                consistency_group: consistency_group.clone(),
            };
            let old = ledger.recorded.objects.insert(*uuid, new.clone());
            Ok(Change::from_bool(old.as_ref() != Some(&new)).or(tagged))
        }
        Op::Export {
            name,
            uuid,
            backend,
            iqn,
            initiators,
            portals,
            chap,
            mutual,
            rehome,
            ..
        } => {
            let uuid = uuid
                .or_else(|| created.get(&(ObjKind::Volume, name.clone())).copied())
                .ok_or_else(|| StepError::Invalid(format!("volume {name} does not exist")))?;
            let data = driver(registry, backend)?.data_path(uuid)?;
            let device = match data.kind {
                PathKind::File => lio::Device::File {
                    path: data.path,
                    size: data.len,
                },
                PathKind::Block => lio::Device::Block(data.path),
            };
            let spec = lio::ExportSpec {
                uuid,
                iqn: iqn
                    .clone()
                    .unwrap_or_else(|| crate::iscsi::names::default_iqn(uuid)),
                device,
                initiators: initiators.clone(),
                chap: chap.as_ref().map(read_secret).transpose()?,
                mutual: mutual.as_ref().map(read_secret).transpose()?,
                portals: portals.clone(),
                rehome: *rehome,
            };
            Ok(lio::LioDriver::new(lio::root()).export(&spec)?)
        }
        Op::Unexport { uuid, .. } => Ok(lio::LioDriver::new(lio::root()).unexport(*uuid, false)?),
        Op::DiscoveryAuth { chap, mutual, .. } => {
            let chap = read_secret(chap)?;
            let mutual = mutual.as_ref().map(read_secret).transpose()?;
            Ok(lio::LioDriver::new(lio::root()).discovery_auth(&chap, mutual.as_ref())?)
        }
        Op::Delete { uuid, backend, .. } => {
            let change = driver(registry, backend)?.delete(*uuid)?;
            // An abandoned migration's target carries the identity of a
            // volume that lives on: its record stays.
            if ledger
                .recorded
                .objects
                .get(uuid)
                .is_none_or(|r| r.backend == *backend)
            {
                ledger.recorded.objects.remove(uuid);
            }
            Ok(change)
        }
        Op::Migrate { .. } => Err(invalid("a migration is not a driver step")),
        Op::GroupSnapshot { .. } => Err(invalid("a group snapshot is not a single driver step")),
        Op::Forget {
            uuid,
            backend,
            gone,
            ..
        } => {
            let change = if *gone {
                Change::Changed
            } else {
                driver(registry, backend)?.release(*uuid)?
            };
            ledger.recorded.objects.remove(uuid);
            Ok(change)
        }
    }
}

/// Renames object `uuid` of back end `backend` to `name`, in the order a
/// re-run can finish from any point: the backup catalogue's entries of it
/// first (the plan cannot see them), then the name the back end keeps (one
/// atomic write), then the record (which the next plan compares: a record
/// still naming the old name plans the rename again). Snapshots, exports
/// and backups find it by its identity, which stays.
fn rename(
    registry: &Registry<'_>,
    ledger: &mut Ledger,
    state_dir: &Path,
    (kind, name, uuid, backend): (ObjKind, &str, Uuid, &str),
) -> Result<Change, StepError> {
    let on = driver(registry, backend)?;
    let mut changed = false;
    if kind == ObjKind::Volume {
        let _guard = crate::backup::job::catalog_lock();
        let mut catalog =
            crate::backup::catalog::Catalog::load(state_dir).map_err(StepError::Catalog)?;
        let mut entries = 0usize;
        for e in catalog.backups.values_mut() {
            if e.volume.uuid == uuid && e.volume.name != name {
                name.clone_into(&mut e.volume.name);
                entries += 1;
            }
        }
        if entries > 0 {
            catalog.store(state_dir).map_err(StepError::Catalog)?;
            tracing::info!(%uuid, name, entries, "backup catalogue entries renamed");
            changed = true;
        }
    }
    fault::named("rename-catalogued");
    changed |= on.rename(uuid, name)? == Change::Changed;
    if let Some(r) = ledger.recorded.objects.get_mut(&uuid)
        && r.name != name
    {
        name.clone_into(&mut r.name);
        changed = true;
    }
    Ok(Change::from_bool(changed))
}

/// A migration step's link to the journal and the progress display.
struct MigrateCtx<'a> {
    journal: &'a mut Journal,
    intent: &'a crate::state::journal::Record,
    state_dir: &'a Path,
    progress: &'a mut dyn Progress,
    action: &'a Action,
    id: Option<Uuid>,
    /// When progress was last logged.
    logged: Instant,
}

impl crate::copy::Observer for MigrateCtx<'_> {
    fn progress(&mut self, at: &crate::copy::Position) {
        self.progress.copy(self.action, at);
        if self.logged.elapsed() >= Duration::from_secs(5) {
            self.logged = Instant::now();
            tracing::info!(
                address = %self.action.address,
                offset = at.offset,
                read = at.read,
                to_read = at.to_read,
                written = at.written,
                "copying"
            );
        }
        fault::copied(at.read);
    }
    fn checkpoint(&mut self, at: &crate::copy::Position) -> Result<(), String> {
        let id = self.id.ok_or("no migration id")?;
        tracing::debug!(%id, offset = at.offset, read = at.read, "checkpoint");
        self.journal
            .checkpoint(self.intent, id, at.offset, at.read)
            .map_err(|e| crate::error_chain(&e))
    }
}

impl crate::migrate::Checkpoints for MigrateCtx<'_> {
    fn last(&self, id: Uuid) -> Result<u64, crate::migrate::MigrateError> {
        Ok(crate::state::journal::read(self.state_dir)?.checkpoint(id))
    }
    fn begin(&mut self, id: Uuid) {
        self.id = Some(id);
    }
    fn reset(&mut self, id: Uuid) -> Result<(), crate::migrate::MigrateError> {
        self.journal.checkpoint(self.intent, id, 0, 0)?;
        Ok(())
    }
}

fn migrate(
    action: &Action,
    registry: &Registry<'_>,
    ledger: &mut Ledger,
    ctx: &mut MigrateCtx<'_>,
    opts: ApplyOptions,
) -> Result<Change, StepError> {
    let Op::Migrate {
        name,
        uuid,
        from,
        to,
        target_size,
        bandwidth,
        deletion_policy,
        snapshots,
        across,
        ..
    } = &action.op
    else {
        return Err(StepError::Invalid("not a migration".into()));
    };
    if let Some(x) = across {
        return migrate_across(action, x, registry, ledger, ctx, opts);
    }
    let src = driver(registry, from)?;
    let dst = driver(registry, to)?;
    let limit = read_limit(*bandwidth, opts);
    let links = links(snapshots);
    let mv = crate::migrate::Move {
        uuid: *uuid,
        name,
        size: *target_size,
        bandwidth: limit,
        snapshots: &links,
    };
    let report = crate::migrate::run(&mv, src, dst, ctx)?;
    for m in &report.snapshots {
        let text = format!(
            "snapshot.{} moved with it: verified (blake3 {})",
            m.name, m.hash
        );
        tracing::info!(volume = %name, snapshot = %m.name, %from, %to, "{text}");
        ctx.progress.note(action, &text);
    }
    if let Some(c) = &report.copy {
        let text = format!(
            "read {} bytes, wrote {}, zeroed {}{} in {:.1}s; verified (blake3 {})",
            c.read,
            c.written,
            c.zeroed,
            if c.started_at > 0 {
                format!(", resumed at byte {}", c.started_at)
            } else {
                String::new()
            },
            c.elapsed.as_secs_f64(),
            report.hash.as_deref().unwrap_or("-")
        );
        tracing::info!(volume = %name, %uuid, %from, %to, "{text}");
        ctx.progress.note(action, &text);
    }
    let consistency_group = ledger
        .recorded
        .objects
        .get(uuid)
        .and_then(|r| r.consistency_group.clone());
    ledger.recorded.objects.insert(
        *uuid,
        RecordedObject {
            kind: ObjKind::Volume,
            name: name.clone(),
            backend: to.clone(),
            size: *target_size,
            deletion_policy: *deletion_policy,
            consistency_group,
        },
    );
    // The snapshots moved with it live on the target now.
    for c in snapshots {
        if let Some(r) = ledger.recorded.objects.get_mut(&c.uuid) {
            r.backend.clone_from(to);
            r.size = c.target_size;
        }
    }
    Ok(Change::from_bool(report.changed))
}

/// A migration's read rate: the source back end's cap and the apply's,
/// whichever is lower.
fn read_limit(backend: Option<u64>, opts: ApplyOptions<'_>) -> Option<u64> {
    match (backend, opts.bandwidth_limit) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The snapshots moving with a volume, as the migration takes them.
fn links(snapshots: &[crate::plan::ChainSnapshot]) -> Vec<crate::migrate::Link<'_>> {
    snapshots
        .iter()
        .map(|c| crate::migrate::Link {
            uuid: c.uuid,
            name: &c.name,
            size: c.target_size,
            space: c.space,
        })
        .collect()
}

/// This host's half of a move between hosts ([`crate::xhost`]): the
/// source exports, waits and removes its volume (then forgets it); the
/// destination copies, verifies and records it.
#[allow(clippy::too_many_lines)] // the two halves, each short
fn migrate_across(
    action: &Action,
    x: &crate::plan::Across,
    registry: &Registry<'_>,
    ledger: &mut Ledger,
    ctx: &mut MigrateCtx<'_>,
    opts: ApplyOptions,
) -> Result<Change, StepError> {
    let Op::Migrate {
        name,
        uuid,
        from,
        to,
        target_size,
        bandwidth,
        deletion_policy,
        snapshots,
        ..
    } = &action.op
    else {
        return Err(StepError::Invalid("not a migration".into()));
    };
    let Some(link) = opts.xhost else {
        return Err(StepError::Invalid(format!(
            "moving {name} between hosts ({}/{from} -> {}/{to}) needs the fleet: apply with --etcd",
            x.from_host, x.to_host
        )));
    };
    let ends = (
        crate::xhost::End {
            host: x.from_host.clone(),
            backend: from.clone(),
        },
        crate::xhost::End {
            host: x.to_host.clone(),
            backend: to.clone(),
        },
    );
    let sleep = |d: Duration| std::thread::sleep(d);
    match x.role {
        crate::plan::Role::Export => {
            let src = driver(registry, from)?;
            let lio = crate::xhost::host::LioExport {
                lio: lio::LioDriver::new(lio::root()),
            };
            let chain: Vec<Uuid> = snapshots.iter().map(|c| c.uuid).collect();
            let sent = crate::xhost::send(
                &crate::xhost::Sending {
                    volume: name,
                    uuid: *uuid,
                    from: ends.0,
                    to: ends.1,
                    portal: link.portal,
                    snapshots: &chain,
                    wait: link.wait,
                },
                src,
                link.jobs,
                &lio,
                &sleep,
            )?;
            if sent.removed {
                ledger.recorded.objects.remove(uuid);
                for s in &sent.snapshots {
                    ledger.recorded.objects.remove(s);
                }
                let text = format!(
                    "moved to {}/{to}{}: the destination verified its copy; the source, its export{} and the job are removed",
                    x.to_host,
                    if sent.snapshots.is_empty() {
                        String::new()
                    } else {
                        format!(" with its {} snapshot(s)", sent.snapshots.len())
                    },
                    if sent.snapshots.is_empty() { "" } else { "s" },
                );
                tracing::info!(volume = %name, %uuid, "{text}");
                ctx.progress.note(action, &text);
            }
            Ok(Change::from_bool(sent.removed))
        }
        crate::plan::Role::Copy => {
            let dst = driver(registry, to)?;
            let attach = crate::xhost::host::Iscsiadm::new(link.runner);
            let limit = read_limit(*bandwidth, opts);
            let links = links(snapshots);
            let report = crate::xhost::receive(
                &crate::xhost::Receive {
                    volume: name,
                    uuid: *uuid,
                    from: ends.0,
                    to: ends.1,
                    size: *target_size,
                    bandwidth: limit,
                    snapshots: &links,
                    source_gone: x.source_gone,
                    wait: link.wait,
                },
                dst,
                link.jobs,
                &attach,
                ctx,
                &sleep,
            )?;
            if let Some(c) = &report.copy {
                let text = format!(
                    "read {} bytes over iSCSI from {}, wrote {}, zeroed {}{} in {:.1}s; verified against the source host's hash (blake3 {})",
                    c.read,
                    x.from_host,
                    c.written,
                    c.zeroed,
                    if c.started_at > 0 {
                        format!(", resumed at byte {}", c.started_at)
                    } else {
                        String::new()
                    },
                    c.elapsed.as_secs_f64(),
                    report.hash.as_deref().unwrap_or("-")
                );
                tracing::info!(volume = %name, %uuid, from = %x.from_host, "{text}");
                ctx.progress.note(action, &text);
            }
            for m in &report.snapshots {
                let text = format!(
                    "snapshot.{} moved with it from {}: verified against the source host's hash (blake3 {})",
                    m.name, x.from_host, m.hash
                );
                tracing::info!(volume = %name, snapshot = %m.name, from = %x.from_host, "{text}");
                ctx.progress.note(action, &text);
            }
            // The snapshots moved with it are this host's now (their
            // deletion policy as recorded by default; the next plan
            // records another one the manifest names).
            for c in snapshots {
                ledger
                    .recorded
                    .objects
                    .entry(c.uuid)
                    .or_insert_with(|| RecordedObject {
                        kind: ObjKind::Snapshot,
                        name: c.name.clone(),
                        backend: to.clone(),
                        size: c.target_size,
                        deletion_policy: crate::manifest::kinds::DeletionPolicy::default(),
                        consistency_group: None,
                    });
            }
            ledger.recorded.objects.insert(
                *uuid,
                RecordedObject {
                    kind: ObjKind::Volume,
                    name: name.clone(),
                    backend: to.clone(),
                    size: *target_size,
                    deletion_policy: *deletion_policy,
                    consistency_group: None,
                },
            );
            Ok(Change::from_bool(report.changed))
        }
    }
}

// Test data builders narrow sizes to buffer lengths on purpose.
#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests;
