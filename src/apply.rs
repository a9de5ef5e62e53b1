//! The executor: carries out a plan's actions in order, journalling each
//! step's intent before and its outcome after, and keeping the recorded state
//! current after every step.
//!
//! Every step is idempotent (the drivers key everything by uuid), so after a
//! crash at any point the next run re-discovers, re-plans and finishes: an
//! interrupted create shows as a `creating` object that the planner resumes
//! with the same uuid; an interrupted delete as a `deleting` one.
//!
//! Must not: decide anything the plan did not say. It resolves only the
//! uuids of objects created earlier in the same run.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::exec::Exec;
use crate::file::{self, Change, FileBackend, NewObject};
use crate::iscsi::lio;
use crate::lvm::{self, LvmBackend, NewLv, Wipe};
use crate::manifest::kinds::{Allocation, VolumeClear};
use crate::model::ObjKind;
use crate::observe::{Driver, World};
use crate::plan::{Action, Op, Plan};
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
    #[error("{address}: {message}")]
    Step {
        /// The action's address.
        address: String,
        /// What failed (the driver's error chain).
        message: String,
        /// Steps completed before it.
        done: usize,
    },
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
}

impl std::fmt::Debug for ApplyOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplyOptions")
            .field("bandwidth_limit", &self.bandwidth_limit)
            .field("fence", &self.fence.is_some())
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

/// Applies `plan` against the back ends of `world`, journalling in
/// `state_dir` and updating `ledger`. The caller holds the state lock.
pub fn apply(
    plan: &Plan,
    world: &World,
    state_dir: &Path,
    ledger: &mut Ledger,
    progress: &mut dyn Progress,
) -> Result<Report, ApplyError> {
    apply_with(
        plan,
        world,
        state_dir,
        ledger,
        progress,
        ApplyOptions::default(),
    )
}

/// [`apply`] with options.
pub fn apply_with(
    plan: &Plan,
    world: &World,
    state_dir: &Path,
    ledger: &mut Ledger,
    progress: &mut dyn Progress,
    opts: ApplyOptions,
) -> Result<Report, ApplyError> {
    if !plan.errors.is_empty() {
        return Err(ApplyError::PlanHasErrors(plan.errors.len()));
    }
    std::fs::create_dir_all(state_dir).map_err(|e| ApplyError::StateDir {
        path: state_dir.to_owned(),
        source: e,
    })?;
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
        let text = describe(action, new_uuid);
        let intent = journal.intent(plan_id, step, &text)?;
        crash_point(step, "intent");
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
                crash_after: crash_after_bytes(),
                logged: Instant::now(),
            };
            migrate(action, world, ledger, &mut ctx, opts)
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
                Some(f) => f.check(name, backend, *rev),
                None => Err(format!(
                    "the fleet placed it (revision {rev}), and this run cannot check that the placement is current; run with --etcd"
                )),
            }
            .and_then(|()| run(action, new_uuid, world, &created, ledger))
        } else {
            run(action, new_uuid, world, &created, ledger)
        };
        crash_point(step, "driver");
        match result {
            Ok(change) => {
                let changed = change == Change::Changed;
                let outcome = if changed {
                    Outcome::Changed
                } else {
                    Outcome::Unchanged
                };
                journal.outcome(&intent, outcome, None)?;
                crash_point(step, "outcome");
                if let (Op::Create { kind, name, .. }, Some(u)) = (&action.op, new_uuid) {
                    created.insert((*kind, name.clone()), u);
                }
                ledger.recorded.last_plan = Some(plan_id);
                ledger.save(state_dir)?;
                count(&mut report, action, changed);
                progress.done(action, changed, started.elapsed());
            }
            Err(message) => {
                journal.outcome(&intent, Outcome::Failed, Some(message.clone()))?;
                // Keep what earlier steps recorded.
                ledger.save(state_dir)?;
                return Err(ApplyError::Step {
                    address: action.address.clone(),
                    message,
                    done: i,
                });
            }
        }
    }
    Ok(report)
}

/// Fault injection for the crash tests: with `CINDERBLOCK_CRASH_AT=STEP:POINT`
/// (POINT is `intent`, `driver` or `outcome`) the process kills itself with
/// SIGKILL at that point, exactly as a power cut or `kill -9` would stop it.
/// Unset, it costs one comparison per step.
fn crash_point(step: u32, point: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("CINDERBLOCK_CRASH_AT").ok());
    if let Some(at) = at
        && at.split_once(':') == Some((&step.to_string(), point))
    {
        tracing::warn!(step, point, "CINDERBLOCK_CRASH_AT: killing this process");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

fn count(r: &mut Report, a: &Action, changed: bool) {
    if !changed {
        r.unchanged += 1;
        return;
    }
    match a.op {
        Op::Create { .. } | Op::CreatePool { .. } | Op::DiscoveryAuth { new: true, .. } => {
            r.added += 1;
        }
        Op::Export { ref changes, .. } if changes.is_empty() => r.added += 1,
        Op::Extend { .. }
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

/// The journal's words for a step.
fn describe(a: &Action, uuid: Option<Uuid>) -> String {
    match &a.op {
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
        Op::Extend {
            uuid, backend, to, ..
        } => format!("extend {} id={uuid} on {backend} to {to}", a.address),
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

/// Creates volume `uuid` on `backend` from backup `b`
/// ([`crate::backup::into_volume`]). An interrupted earlier attempt
/// (`resume`) holds nothing worth keeping: it is removed and the restore
/// starts over.
fn restore_backup(
    world: &World,
    backend: &str,
    b: &crate::observe::BackupSource,
    uuid: Uuid,
    resume: Option<Uuid>,
    name: &str,
    size: u64,
) -> Result<(), String> {
    use crate::backup::into_volume::{NewVolume, restore_new_from};
    let t = target(world, backend)?;
    let on = match &t {
        Target::File(fb, alloc) => {
            if resume.is_some() {
                fb.delete(uuid).map_err(|e| crate::error_chain(&e))?;
            }
            NewVolume::File {
                backend: fb,
                allocation: file_alloc(*alloc),
            }
        }
        Target::Lvm(lb) => {
            if resume.is_some() {
                lb.delete(uuid).map_err(|e| crate::error_chain(&e))?;
            }
            NewVolume::Lvm(lb)
        }
    };
    let stats = restore_new_from(
        &b.target,
        b.id,
        &on,
        uuid,
        name,
        size,
        &crate::backup::NoProgress,
    )
    .map_err(|e| crate::error_chain(&e))?;
    tracing::info!(%uuid, backup = %b.id, bytes = stats.bytes, written = stats.written, "restored into a new volume");
    Ok(())
}

/// Where an action's back end keeps its data.
enum Target {
    File(FileBackend, Allocation),
    Lvm(LvmBackend<'static>),
}

fn target(world: &World, name: &str) -> Result<Target, String> {
    let view = world
        .backends
        .values()
        .find(|b| b.name.as_str() == name)
        .ok_or_else(|| format!("back end {name} is not a back end of this host"))?;
    Ok(match &view.driver {
        Driver::File { root, allocation } => {
            Target::File(FileBackend::new(root, name), *allocation)
        }
        Driver::Lvm {
            volume_group,
            thin_pool,
            volume_clear,
            ..
        } => Target::Lvm(LvmBackend::new(
            Exec::host(),
            name,
            volume_group.clone(),
            thin_pool.clone(),
            match volume_clear {
                VolumeClear::Zero => Wipe::Zero,
                VolumeClear::None => Wipe::None,
            },
        )),
    })
}

/// Copies the raw image file `path` into the new image-volume `uuid` of
/// `backend` (`size` bytes): only the file's data extents are read, holes
/// are left as holes on a sparse file or thin LV, and a thick LV's blocks
/// that the file does not cover are zeroed.
fn copy_image_in(
    path: &Path,
    world: &World,
    backend: &str,
    uuid: Uuid,
    size: u64,
) -> Result<(), String> {
    let view = world
        .backends
        .values()
        .find(|b| b.name.as_str() == backend)
        .ok_or_else(|| format!("back end {backend} is not a back end of this host"))?;
    let is_file = matches!(view.driver, Driver::File { .. });
    let (target_path, kind) = match (&view.driver, target(world, backend)?) {
        (_, Target::File(fb, _)) => (
            fb.data_path(ObjKind::Image, uuid),
            crate::copy::Target::Holes,
        ),
        (Driver::Lvm { thin_pool, .. }, Target::Lvm(lb)) => (
            lb.device(&lvm::tags::lv_name(crate::model::ObjKind::Image, uuid)),
            if thin_pool.is_some() {
                crate::copy::Target::Holes
            } else {
                crate::copy::Target::MustZero
            },
        ),
        (Driver::File { .. }, Target::Lvm(_)) => return Err("back end kinds disagree".into()),
    };
    let src =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let len = src
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?
        .len();
    let dst = std::fs::OpenOptions::new()
        .write(true)
        .open(&target_path)
        .map_err(|e| format!("cannot open {}: {e}", target_path.display()))?;
    let extents =
        crate::copy::Extents::of_file(&src, path, len).map_err(|e| crate::error_chain(&e))?;
    let stats = crate::copy::copy(
        &crate::copy::Job {
            source: &src,
            source_path: path,
            target: &dst,
            target_path: &target_path,
            len,
            target_len: size,
            extents: &extents,
            kind,
            start: 0,
            bandwidth: None,
            hash_source: false,
            read_back: false,
            writeback: is_file,
        },
        &mut crate::copy::Quiet,
    )
    .map_err(|e| crate::error_chain(&e))?;
    tracing::info!(image = %uuid, from = %path.display(), read = stats.read, written = stats.written, zeroed = stats.zeroed, "image content copied in");
    Ok(())
}

/// Reads a CHAP secret where a manifest points (at apply time only; the
/// error names the source, never the content).
fn read_secret(r: &crate::manifest::kinds::SecretRef) -> Result<crate::iscsi::chap::Chap, String> {
    crate::iscsi::chap::read(
        r.file
            .as_ref()
            .map(crate::manifest::values::AbsPath::as_path),
        r.env.as_deref(),
    )
}

fn file_alloc(a: Allocation) -> file::Allocation {
    match a {
        Allocation::Sparse => file::Allocation::Sparse,
        Allocation::Preallocated => file::Allocation::Preallocated,
    }
}

#[allow(clippy::too_many_lines)] // one arm per operation, each short
fn run(
    action: &Action,
    new_uuid: Option<Uuid>,
    world: &World,
    created: &BTreeMap<(ObjKind, String), Uuid>,
    ledger: &mut Ledger,
) -> Result<Change, String> {
    let err = |e: file::FileError| crate::error_chain(&e);
    let lerr = |e: lvm::LvmError| crate::error_chain(&e);
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
            placement: _,
        } => {
            let uuid = new_uuid.ok_or("no identity")?;
            let source_uuid = match source {
                None => None,
                Some(s) => Some(
                    s.uuid
                        .or_else(|| created.get(&(s.kind, s.name.clone())).copied())
                        .ok_or_else(|| {
                            format!("its source {}.{} does not exist", kind_word(s.kind), s.name)
                        })?,
                ),
            };
            let change = if let Some(b) = backup {
                restore_backup(world, backend, b, uuid, *resume, name, *size)?;
                Change::Changed
            } else {
                match (target(world, backend)?, kind) {
                    (Target::File(fb, _), ObjKind::Snapshot) => {
                        let vol = source_uuid.ok_or("a snapshot needs its volume")?;
                        fb.snapshot(vol, uuid, name).map_err(err)?.change
                    }
                    (Target::File(fb, alloc), ObjKind::Volume | ObjKind::Image) => {
                        let src = match (source, source_uuid) {
                            (Some(s), Some(u)) => Some(file::SourceRef {
                                kind: s.kind,
                                uuid: u,
                            }),
                            _ => None,
                        };
                        let obj_kind = if *kind == ObjKind::Image {
                            ObjKind::Image
                        } else {
                            ObjKind::Volume
                        };
                        fb.create(&NewObject {
                            uuid,
                            name,
                            kind: obj_kind,
                            size: *size,
                            allocation: file_alloc(alloc),
                            source: src,
                        })
                        .map_err(err)?
                        .change
                    }
                    (Target::Lvm(lb), ObjKind::Snapshot) => {
                        let vol = source_uuid.ok_or("a snapshot needs its volume")?;
                        // `size` is the copy-on-write space of a thick snapshot;
                        // a thin one ignores it.
                        lb.snapshot(vol, uuid, name, *size).map_err(lerr)?
                    }
                    (Target::Lvm(lb), ObjKind::Volume | ObjKind::Image) => {
                        let src = match (source, source_uuid) {
                            (Some(s), Some(u)) => Some(lvm::Source {
                                kind: s.kind,
                                uuid: u,
                            }),
                            _ => None,
                        };

                        lb.create(&NewLv {
                            uuid,
                            name,
                            kind: *kind,
                            size: *size,
                            source: src,
                        })
                        .map_err(lerr)?
                    }
                }
            };
            if let Some(path) = from_file {
                copy_image_in(path, world, backend, uuid, *size)?;
            }
            ledger.recorded.objects.insert(
                uuid,
                RecordedObject {
                    kind: *kind,
                    name: name.clone(),
                    backend: backend.clone(),
                    size: *size,
                    deletion_policy: *deletion_policy,
                },
            );
            Ok(change)
        }
        Op::CreatePool {
            backend,
            size,
            metadata_size,
            ..
        } => match target(world, backend)? {
            Target::Lvm(lb) => Ok(lb.create_pool(*size, *metadata_size).map_err(lerr)?),
            Target::File(..) => Err(format!("back end {backend} is not an LVM back end")),
        },
        Op::Extend {
            uuid, backend, to, ..
        } => {
            let change = match target(world, backend)? {
                Target::File(fb, alloc) => fb.extend(*uuid, *to, file_alloc(alloc)).map_err(err)?,
                Target::Lvm(lb) => lb.extend(*uuid, *to).map_err(lerr)?,
            };
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
            ..
        } => {
            let new = RecordedObject {
                kind: *kind,
                name: name.clone(),
                backend: backend.clone(),
                size: *size,
                deletion_policy: *deletion_policy,
            };
            let old = ledger.recorded.objects.insert(*uuid, new.clone());
            Ok(if old.as_ref() == Some(&new) {
                Change::Unchanged
            } else {
                Change::Changed
            })
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
                .ok_or_else(|| format!("volume {name} does not exist"))?;
            let device = match target(world, backend)? {
                Target::File(fb, _) => {
                    let size = ledger
                        .recorded
                        .objects
                        .get(&uuid)
                        .map(|r| r.size)
                        .or_else(|| {
                            world
                                .backends
                                .values()
                                .filter_map(|b| b.inventory())
                                .flat_map(|i| i.objects.iter())
                                .find(|o| o.uuid == uuid)
                                .map(|o| o.size)
                        })
                        .ok_or_else(|| format!("the size of volume {name} is unknown"))?;
                    lio::Device::File {
                        path: fb.data_path(ObjKind::Volume, uuid),
                        size,
                    }
                }
                Target::Lvm(lb) => lio::Device::Block(
                    lb.device(&lvm::tags::lv_name(crate::model::ObjKind::Volume, uuid)),
                ),
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
            lio::LioDriver::new(lio::root())
                .export(&spec)
                .map_err(|e| crate::error_chain(&e))
        }
        Op::Unexport { uuid, .. } => lio::LioDriver::new(lio::root())
            .unexport(*uuid, false)
            .map_err(|e| crate::error_chain(&e)),
        Op::DiscoveryAuth { chap, mutual, .. } => {
            let chap = read_secret(chap)?;
            let mutual = mutual.as_ref().map(read_secret).transpose()?;
            lio::LioDriver::new(lio::root())
                .discovery_auth(&chap, mutual.as_ref())
                .map_err(|e| crate::error_chain(&e))
        }
        Op::Delete { uuid, backend, .. } => {
            let change = match target(world, backend)? {
                Target::File(fb, _) => fb.delete(*uuid).map_err(err)?,
                Target::Lvm(lb) => lb.delete(*uuid).map_err(lerr)?,
            };
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
        Op::Migrate { .. } => Err("a migration is not a driver step".into()),
        Op::Forget {
            uuid,
            backend,
            gone,
            ..
        } => {
            let change = if *gone {
                Change::Changed
            } else {
                match target(world, backend)? {
                    Target::File(fb, _) => fb.release(*uuid).map_err(err)?,
                    Target::Lvm(lb) => lb.release(*uuid).map_err(lerr)?,
                }
            };
            ledger.recorded.objects.remove(uuid);
            Ok(change)
        }
    }
}

/// `CINDERBLOCK_CRASH_AT=migrate-copy:N`: SIGKILL once a migration's copy
/// has read N bytes (the crash test's "halfway").
fn crash_after_bytes() -> Option<u64> {
    std::env::var("CINDERBLOCK_CRASH_AT")
        .ok()?
        .strip_prefix("migrate-copy:")?
        .parse()
        .ok()
}

/// A migration step's link to the journal and the progress display.
struct MigrateCtx<'a> {
    journal: &'a mut Journal,
    intent: &'a crate::state::journal::Record,
    state_dir: &'a Path,
    progress: &'a mut dyn Progress,
    action: &'a Action,
    id: Option<Uuid>,
    crash_after: Option<u64>,
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
        if self.crash_after.is_some_and(|n| at.read >= n) {
            tracing::warn!(read = at.read, "CINDERBLOCK_CRASH_AT: killing this process");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
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

fn endpoint(world: &World, name: &str) -> Result<crate::migrate::Endpoint<'static>, String> {
    Ok(match target(world, name)? {
        Target::File(fb, alloc) => crate::migrate::Endpoint::File(fb, file_alloc(alloc)),
        Target::Lvm(lb) => crate::migrate::Endpoint::Lvm(lb),
    })
}

fn migrate(
    action: &Action,
    world: &World,
    ledger: &mut Ledger,
    ctx: &mut MigrateCtx<'_>,
    opts: ApplyOptions,
) -> Result<Change, String> {
    let Op::Migrate {
        name,
        uuid,
        from,
        to,
        target_size,
        bandwidth,
        deletion_policy,
        ..
    } = &action.op
    else {
        return Err("not a migration".into());
    };
    let src = endpoint(world, from)?;
    let dst = endpoint(world, to)?;
    let limit = match (*bandwidth, opts.bandwidth_limit) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mv = crate::migrate::Move {
        uuid: *uuid,
        name,
        size: *target_size,
        bandwidth: limit,
    };
    let report = crate::migrate::run(&mv, &src, &dst, ctx).map_err(|e| crate::error_chain(&e))?;
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
    ledger.recorded.objects.insert(
        *uuid,
        RecordedObject {
            kind: ObjKind::Volume,
            name: name.clone(),
            backend: to.clone(),
            size: *target_size,
            deletion_policy: *deletion_policy,
        },
    );
    Ok(if report.changed {
        Change::Changed
    } else {
        Change::Unchanged
    })
}

fn kind_word(k: ObjKind) -> &'static str {
    match k {
        ObjKind::Volume => "volume",
        ObjKind::Snapshot => "snapshot",
        ObjKind::Image => "image",
    }
}
