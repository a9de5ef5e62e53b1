//! The reconciler: on every trigger, re-read the source, re-discover, re-plan
//! and apply — level-triggered, whatever the trigger was.
//!
//! Owns what the agent adds on top of `plan`/`apply`:
//! - **Bad revisions.** A revision whose manifests fail to load is refused;
//!   the last good one stays in force (and resyncs keep enforcing it, with
//!   deletes held back while the source is bad). So is a revision that
//!   declares no volumes and no snapshots while objects are recorded: an
//!   empty or missing tree never reads as "delete all" (Argo's
//!   `allowEmpty=false`). A newer revision always replaces an older one, and
//!   clears the backoff of the older one's failures.
//! - **Lost volumes.** A volume recorded as ours whose data vanished is
//!   reported (status, metric, plan error) and not recreated, unless the
//!   agent runs with `--recreate-lost` or the volume's manifest has changed
//!   since the loss was first seen (a person reacted to it).
//! - **Per-object backoff.** A failed step's object is left alone for a
//!   doubling delay (1 s to 5 min); the rest of the plan goes on. Steps that
//!   depend on a skipped object (a snapshot of it, a clone from it) wait too.
//! - **Backups in flight.** A volume being backed up is not extended,
//!   deleted or released until its backup ends.
//! - **Conditions** (`Ready`, `Stalled`, `SourceReady`), per-object state,
//!   metrics and the status file after every run.
//!
//! The planner's own guards stay in force: no delete when any discovery
//! failed or the tree declares no volumes; any plan error blocks the whole
//! apply (never a partial apply of a plan with errors).
//!
//! Runs on a blocking thread, one run at a time; the task around it
//! ([`task`]) waits for triggers, coalescing those that arrive meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::backoff::{Backoff, Policy, Retry};
use super::metrics::MigrationGauges;
use super::source::{Candidate, Source};
use super::status::{
    BackendStatus, BadRevision, DriftStatus, MigrationStatus, ObjectStatus, ReconcileStatus, Status,
};
use super::{Reason, Shared, lock};
use crate::apply::{self, ApplyError, Progress};
use crate::exec::Exec;
use crate::manifest::{self, ManifestSet};
use crate::observe::{self, Discovery, Health, ObjKind, World};
use crate::plan::{self, Action, Op, Options, Plan};
use crate::registry::Registry;
use crate::state::record::{Ledger, Recorded};

/// Backoff of failing objects.
pub const BACKOFF: Policy = Policy {
    base: Duration::from_secs(1),
    cap: Duration::from_secs(300),
};

/// Diagnostics kept per bad revision.
const MAX_ERRORS_SHOWN: usize = 10;

/// What the backup scheduler needs from a run: the manifests in force and
/// the volumes that exist on this host.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// Manifests in force.
    pub set: Arc<ManifestSet>,
    /// Volumes recorded as ours on this host.
    pub local_volumes: BTreeSet<String>,
}

/// The revision in force.
#[derive(Debug, Clone)]
struct Good {
    revision: String,
    set: Arc<ManifestSet>,
}

/// What a run asks of the task around it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Next {
    /// Run again at this time (the earliest backoff expiry).
    pub retry_at: Option<Instant>,
    /// Run again now (an apply stopped at a failed step with steps left).
    pub again: bool,
}

/// The reconciler's state between runs.
pub struct Reconciler {
    state_dir: PathBuf,
    host: String,
    recreate_lost: bool,
    source: Source,
    shared: Arc<Shared>,
    desired: watch::Sender<Desired>,
    backoff: Backoff<Instant>,
    good: Option<Good>,
    /// The last good revision before this process started (git), to fall
    /// back on while the newest is bad.
    persisted_good: Option<String>,
    /// Lost volume → hash of its spec when the loss was first seen.
    lost_specs: BTreeMap<String, String>,
    /// The fleet, with `--etcd`.
    fleet: Option<Arc<super::fleet::FleetLink>>,
}

/// The outcome of one run, for the status and metrics.
struct Run {
    status: ReconcileStatus,
    /// address → (state, message).
    objects: BTreeMap<String, (String, String)>,
    source_problem: Option<(&'static str, String)>,
    plan_blocked: bool,
    discovery_failed: Vec<String>,
    /// What the run learnt about the source, published with the rest.
    source_update: Option<SourceUpdate>,
    /// The revision's outcome when an apply ran: (`applied`|`failed`, detail).
    outcome: Option<(&'static str, String)>,
}

/// The newest revision's verdict.
enum SourceUpdate {
    /// It is in force.
    Good(String),
    /// It is refused.
    Bad(BadRevision),
}

impl Reconciler {
    /// A reconciler over `source`.
    pub fn new(
        state_dir: PathBuf,
        host: String,
        recreate_lost: bool,
        source: Source,
        shared: Arc<Shared>,
        desired: watch::Sender<Desired>,
        persisted_good: Option<String>,
    ) -> Self {
        Self {
            state_dir,
            host,
            recreate_lost,
            source,
            shared,
            desired,
            backoff: Backoff::new(BACKOFF),
            good: None,
            persisted_good,
            lost_specs: BTreeMap::new(),
            fleet: None,
        }
    }

    /// This reconciler in a fleet: placements come from etcd, creates of
    /// placed volumes are fenced, and each run publishes this host's view.
    #[must_use]
    pub fn with_fleet(mut self, link: Option<Arc<super::fleet::FleetLink>>) -> Self {
        self.fleet = link;
        self
    }

    /// One reconcile.
    #[allow(clippy::too_many_lines)] // the pipeline in order, each stage short
    pub fn run_once(&mut self, reasons: &BTreeSet<Reason>) -> Next {
        let started = Utc::now();
        let t0 = Instant::now();
        let triggers: Vec<String> = reasons.iter().map(|r| r.as_str().to_owned()).collect();
        let span = tracing::info_span!("reconcile", triggers = %triggers.join(","));
        let _entered = span.enter();

        let mut run = Run {
            status: ReconcileStatus {
                started_at: Some(started),
                triggers,
                ..ReconcileStatus::default()
            },
            objects: BTreeMap::new(),
            source_problem: None,
            plan_blocked: false,
            discovery_failed: Vec::new(),
            source_update: None,
            outcome: None,
        };

        // 1. The source.
        let candidate = self.source.candidate();
        let ledger = match Ledger::load(&self.state_dir) {
            Ok(l) => l,
            Err(e) => {
                let msg = format!("cannot read the recorded state: {}", crate::error_chain(&e));
                tracing::error!(error = %msg, "reconcile failed");
                run.status.result = "failed".into();
                run.status.error = Some(msg);
                self.finish(run, t0, None, None, None);
                return Next {
                    retry_at: Some(Instant::now() + BACKOFF.cap),
                    again: false,
                };
            }
        };
        match &candidate {
            None => {
                if self.good.is_none() {
                    self.fall_back_to_persisted();
                }
                if self.good.is_none() {
                    tracing::info!("no revision fetched yet; waiting for the source");
                    return Next::default();
                }
            }
            Some(c) => self.take_candidate(c, &ledger.recorded, &mut run),
        }
        let Some(good) = self.good.clone() else {
            run.status.result = "invalid-source".into();
            self.finish(run, t0, None, None, None);
            return Next::default();
        };
        run.status.revision = Some(good.revision.clone());

        // 2. Discover and plan.
        let mut ledger = ledger;
        let registry = Registry::new(&good.set, &self.host, &self.state_dir, Exec::host());
        let mut world = observe::discover(&good.set, &registry, &self.state_dir);
        if let Some(l) = &self.fleet {
            (world.fleet, world.remote) = l.world_parts();
        }
        let lost = lost_volumes(&world, &ledger.recorded);
        let recreate = self.recreate_lost || self.consented(&good.set, &lost);
        let plan = plan::plan(
            &good.set,
            &world,
            &ledger.recorded,
            Options {
                recreate_lost: recreate,
            },
        );
        run.discovery_failed = world
            .backends
            .values()
            .filter_map(|b| match &b.discovery {
                Discovery::Failed(e) => Some(format!("{}: {e}", b.name)),
                Discovery::Ok(inv) if !inv.complete() => {
                    Some(format!("{}: {}", b.name, inv.problems.join("; ")))
                }
                Discovery::Ok(_) => None,
            })
            .collect();
        run.status.planned = plan.actions.len();
        run.status.notes.clone_from(&plan.notes);
        run.status.plan_errors = plan.errors.iter().map(ToString::to_string).collect();
        for w in &plan.waiting {
            run.objects
                .insert(w.address.clone(), ("waiting".into(), w.reason.clone()));
        }
        for (name, why) in &lost {
            let state = if recreate { "pending" } else { "lost" };
            run.objects
                .insert(format!("volume.{name}"), (state.into(), why.clone()));
        }

        // 3. Apply.
        let mut next = Next::default();
        if plan.errors.is_empty() {
            next = self.apply(&plan, &world, &registry, &mut ledger, &good, &mut run);
            // What is published is what the apply left: the back ends it
            // touched are observed again (the others did not change).
            if run.status.result != "no-changes" {
                let touched = touched_backends(&plan.actions, &good.set);
                observe::rediscover(&good.set, &registry, &touched, &mut world);
            }
        } else {
            run.plan_blocked = true;
            run.status.result = "blocked".into();
            for e in &plan.errors {
                if let Some(a) = &e.address {
                    let entry = run
                        .objects
                        .entry(a.clone())
                        .or_insert_with(|| ("blocked".into(), String::new()));
                    if entry.0 != "lost" {
                        entry.0 = "blocked".into();
                    }
                    entry.1 = e.to_string();
                }
            }
            tracing::warn!(
                errors = plan.errors.len(),
                first = %plan.errors[0],
                "the plan has errors; nothing applied"
            );
        }

        // 4. Publish (old git trees go first, so what the status says is
        // what is on disk).
        if let Source::Git(g) = &self.source {
            let head = lock(&g.head).clone();
            let mut keep = vec![good.revision.as_str()];
            if let Some(h) = head.as_deref() {
                keep.push(h);
            }
            g.repo.prune_trees(&keep);
        }
        let changed = run.status.added + run.status.changed + run.status.destroyed > 0;
        self.finish(run, t0, Some(&plan), Some(&world), Some(&ledger.recorded));
        if let Some(l) = &self.fleet {
            let applied = lock(&self.shared.status).source.applied_revision.clone();
            l.publish(
                &world,
                &ledger.recorded,
                Some(good.revision.clone()),
                applied,
                crate::fleet::records::PlanSummary::of(&plan),
            );
            super::fleet::publish_status(l, &self.shared);
            if changed {
                // The view just published predates this apply: the next
                // run publishes what it made.
                self.shared.triggers.push(Reason::Fleet);
            }
        }
        let _ = self.desired.send(Desired {
            set: Arc::clone(&good.set),
            local_volumes: ledger
                .recorded
                .objects
                .values()
                .filter(|o| o.kind == ObjKind::Volume)
                .map(|o| o.name.clone())
                .collect(),
        });
        next.retry_at = next
            .retry_at
            .or_else(|| self.backoff.next_retry(Instant::now()));
        next
    }

    /// After a restart with a git source whose newest commit is not known
    /// yet (or is bad), the last good commit of the previous run.
    fn fall_back_to_persisted(&mut self) {
        let (Source::Git(g), Some(rev)) = (&self.source, self.persisted_good.clone()) else {
            return;
        };
        match g.repo.export(&rev) {
            Ok(_) => {
                let loaded = manifest::load::load_paths(&[g.repo.manifests_path(&rev)]);
                if loaded.errors() == 0 {
                    tracing::info!(revision = %rev, "using the revision in force before the restart");
                    self.good = Some(Good {
                        revision: rev,
                        set: Arc::new(loaded.set),
                    });
                }
            }
            Err(error) => {
                tracing::warn!(revision = %rev, %error, "cannot restore the revision in force before the restart");
            }
        }
        self.persisted_good = None;
    }

    /// Loads the newest revision and decides whether it replaces the one in
    /// force.
    fn take_candidate(&mut self, c: &Candidate, recorded: &Recorded, run: &mut Run) {
        let now = Utc::now();
        let loaded = manifest::load::load_paths(&c.paths);
        let errors: Vec<String> = loaded
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(ToString::to_string)
            .collect();
        let empty = loaded.set.volumes.is_empty()
            && loaded.set.snapshots.is_empty()
            && !recorded.objects.is_empty();
        let problem = if !errors.is_empty() {
            let n = errors.len();
            let mut shown: Vec<String> = errors.into_iter().take(MAX_ERRORS_SHOWN).collect();
            if n > MAX_ERRORS_SHOWN {
                shown.push(format!("... and {} more", n - MAX_ERRORS_SHOWN));
            }
            Some(("ManifestInvalid", shown))
        } else if empty {
            Some((
                "EmptySource",
                vec![format!(
                    "the manifests declare no volumes and no snapshots while {} object(s) are recorded as ours; an empty source is never applied (restore the manifests; to let objects go, remove their manifests while others remain)",
                    recorded.objects.len()
                )],
            ))
        } else {
            None
        };
        if problem.is_none() && self.good.is_none() {
            self.persisted_good = None;
        }
        if let Some((reason, errors)) = problem {
            if self.good.is_none() {
                self.fall_back_to_persisted();
            }
            let known = lock(&self.shared.status)
                .source
                .bad_revision
                .as_ref()
                .filter(|b| b.revision == c.revision && b.errors == errors)
                .cloned();
            if known.is_none() {
                tracing::warn!(
                    revision = %c.revision,
                    reason,
                    first_error = %errors[0],
                    in_force = %self.good.as_ref().map_or("none", |g| g.revision.as_str()),
                    "revision refused; the last good one stays in force"
                );
            }
            run.source_problem = Some((reason, errors.join("; ")));
            run.source_update = Some(SourceUpdate::Bad(known.unwrap_or(BadRevision {
                revision: c.revision.clone(),
                errors,
                since: now,
            })));
            return;
        }
        let changed = self.good.as_ref().is_none_or(|g| g.revision != c.revision);
        if changed {
            if self.good.is_some() {
                tracing::info!(revision = %c.revision, "new revision in force");
            }
            // A newer revision pre-empts the retries of the older one.
            self.backoff.clear();
        }
        self.good = Some(Good {
            revision: c.revision.clone(),
            set: Arc::new(loaded.set),
        });
        run.source_update = Some(SourceUpdate::Good(c.revision.clone()));
    }

    /// Whether every lost volume may be recreated because its manifest
    /// changed since the loss was first seen.
    fn consented(&mut self, set: &ManifestSet, lost: &BTreeMap<String, String>) -> bool {
        self.lost_specs.retain(|name, _| lost.contains_key(name));
        if lost.is_empty() {
            return false;
        }
        let mut all = true;
        for name in lost.keys() {
            let now = spec_hash(set, name);
            let first = self
                .lost_specs
                .entry(name.clone())
                .or_insert_with(|| now.clone());
            if *first == now {
                all = false;
            } else {
                tracing::info!(volume = %name, "the lost volume's manifest changed: it is recreated, empty");
            }
        }
        all
    }

    #[allow(clippy::too_many_lines)] // filter, apply, account: one flow
    fn apply(
        &mut self,
        plan: &Plan,
        world: &World,
        registry: &Registry<'_>,
        ledger: &mut Ledger,
        good: &Good,
        run: &mut Run,
    ) -> Next {
        let busy = lock(&self.shared.backing_up).clone();
        let sel = select(
            &plan.actions,
            world,
            run.source_problem.is_some(),
            &self.backoff,
            &busy,
            Instant::now(),
        );
        lock(&self.shared.deferred).extend(sel.deferred);
        for sk in sel.skipped {
            run.status.notes.push(format!("{}: {}", sk.address, sk.why));
            run.objects.insert(sk.address, (sk.state.into(), sk.why));
        }
        let kept = sel.kept;
        if kept.is_empty() {
            if let Err(e) = apply::record_quietly(plan, ledger, &self.state_dir) {
                tracing::warn!(error = %crate::error_chain(&e), "cannot record the objects found without a record");
            }
            run.status.result = "no-changes".into();
            return Next::default();
        }
        let filtered = Plan {
            actions: kept.clone(),
            ..plan.clone()
        };
        let mut progress = AgentProgress {
            shared: Arc::clone(&self.shared),
            done: Vec::new(),
            stages: BTreeMap::new(),
        };
        let fence = self.fleet.as_deref().map(|l| l as &dyn crate::apply::Fence);
        let xhost = self.fleet.as_deref().map(|l| apply::Xhost {
            jobs: l as &dyn crate::xhost::Jobs,
            portal: l.migration_portal.as_deref(),
            runner: Exec::host(),
            wait: crate::xhost::Wait::default(),
        });
        let result = apply::apply_with(
            &filtered,
            registry,
            &self.state_dir,
            ledger,
            &mut progress,
            apply::ApplyOptions {
                bandwidth_limit: None,
                fence,
                xhost,
            },
        );
        progress.clear_migrations();
        for address in &progress.done {
            self.backoff.succeed(address);
            run.objects
                .insert(address.clone(), ("ready".into(), String::new()));
        }
        let mut next = Next::default();
        match result {
            Ok(report) => {
                run.status.result = "applied".into();
                run.status.added = report.added;
                run.status.changed = report.changed;
                run.status.destroyed = report.destroyed;
                run.status.forgotten = report.forgotten;
                run.outcome = Some((
                    "applied",
                    format!(
                        "{} added, {} changed, {} destroyed, {} forgotten",
                        report.added, report.changed, report.destroyed, report.forgotten
                    ),
                ));
                tracing::info!(
                    revision = %good.revision,
                    added = report.added,
                    changed = report.changed,
                    destroyed = report.destroyed,
                    forgotten = report.forgotten,
                    "applied"
                );
            }
            Err(ApplyError::Step {
                address,
                cause,
                done,
            }) => {
                let message = crate::error_chain(&cause);
                // Retrying soon helps only where the cause says so; a
                // refusal waits the longest delay at once.
                let retry = if cause.is_retryable() {
                    Retry::Soon
                } else {
                    Retry::AfterChange
                };
                let delay = self
                    .backoff
                    .fail_as(&address, Instant::now(), &message, retry);
                lock(&self.shared.metrics).step_failures += 1;
                tracing::warn!(%address, error = %message, retryable = retry == Retry::Soon, retry_in_s = delay.as_secs(), "step failed; retrying with backoff");
                run.status.result = "failed".into();
                run.status.error = Some(format!("{address}: {message}"));
                let e = self.backoff.get(&address).map_or(1, |e| e.failures);
                run.objects.insert(
                    address.clone(),
                    (
                        "failed".into(),
                        format!(
                            "failed {e} time(s), retried in {}s{}: {message}",
                            delay.as_secs(),
                            if retry == Retry::Soon {
                                ""
                            } else {
                                " (a retry alone cannot help)"
                            }
                        ),
                    ),
                );
                for a in kept.iter().skip(done + 1) {
                    run.objects.entry(a.address.clone()).or_insert_with(|| {
                        (
                            "pending".into(),
                            "not reached: an earlier step failed".into(),
                        )
                    });
                }
                run.outcome = Some(("failed", format!("{address}: {message}")));
                // The failed object now waits; the steps after it need not.
                next.again = done + 1 < kept.len();
            }
            Err(ApplyError::Stopped { done }) => {
                tracing::info!(done, "apply stopped between steps for shutdown");
                run.status.result = "stopped".into();
                run.status.error = Some(format!(
                    "stopped for shutdown after {done} of {} step(s)",
                    kept.len()
                ));
            }
            Err(e) => {
                let msg = crate::error_chain(&e);
                let delay = self.backoff.fail("apply", Instant::now(), &msg);
                tracing::error!(error = %msg, retry_in_s = delay.as_secs(), "apply failed");
                run.status.result = "failed".into();
                run.status.error = Some(msg);
            }
        }
        next
    }

    /// Records the run in the status and metrics, and writes the status file.
    #[allow(clippy::too_many_lines)] // fills every part of the document
    fn finish(
        &mut self,
        mut run: Run,
        t0: Instant,
        plan: Option<&Plan>,
        world: Option<&World>,
        recorded: Option<&Recorded>,
    ) {
        let now = Utc::now();
        let elapsed = t0.elapsed();
        run.status.finished_at = Some(now);
        run.status.duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        if run.status.result == "no-changes" && run.source_problem.is_some() {
            run.status.result = "invalid-source".into();
        }
        // A run that reached a plan without errors and applied what it kept
        // counts as a success, even with objects in backoff.
        let success = matches!(run.status.result.as_str(), "applied" | "no-changes");
        let result = run.status.result.clone();

        let objects = object_states(
            plan,
            world,
            recorded,
            &run.objects,
            self.good.as_ref(),
            &self.backoff,
        );
        let mut s = lock(&self.shared.status);
        match run.source_update.take() {
            Some(SourceUpdate::Good(rev)) => {
                s.source.latest_revision = Some(rev.clone());
                s.source.last_good_revision = Some(rev);
                s.source.bad_revision = None;
                if matches!(self.source, Source::Directory { .. }) {
                    s.source.checked_at = Some(now);
                }
                lock(&self.shared.metrics).bad_revision = false;
            }
            Some(SourceUpdate::Bad(bad)) => {
                s.source.latest_revision = Some(bad.revision.clone());
                s.record_revision(&bad.revision, "invalid", &bad.errors[0], now);
                s.source.bad_revision = Some(bad);
                if matches!(self.source, Source::Directory { .. }) {
                    s.source.checked_at = Some(now);
                }
                lock(&self.shared.metrics).bad_revision = true;
            }
            None => {}
        }
        s.reconcile_count += 1;
        if success {
            s.last_success = Some(now);
        }
        if let Some(g) = &self.good {
            let outcome = match run.outcome.take() {
                Some(o) => Some(o),
                // Nothing to do is the revision applied, too.
                None if run.status.result == "no-changes"
                    && s.source.applied_revision.as_deref() != Some(g.revision.as_str()) =>
                {
                    Some(("applied", "no changes".to_owned()))
                }
                None => None,
            };
            if let Some((what, detail)) = outcome {
                if what == "applied" {
                    s.source.applied_revision = Some(g.revision.clone());
                    s.source.applied_at = Some(now);
                    lock(&self.shared.metrics).applied_revision = Some(g.revision.clone());
                }
                s.record_revision(&g.revision, what, &detail, now);
            }
        }
        if run.plan_blocked
            && let Some(g) = &self.good
        {
            let first = run.status.plan_errors.first().cloned().unwrap_or_default();
            s.record_revision(&g.revision, "blocked", &first, now);
        }
        // Conditions.
        let stalled = if let Some((reason, msg)) = &run.source_problem {
            Some((
                *reason,
                format!(
                    "the newest revision is refused ({msg}); the last good revision stays in force and no deletes are made"
                ),
            ))
        } else if run.plan_blocked {
            Some(("PlanErrors", run.status.plan_errors.join("; ")))
        } else if !run.discovery_failed.is_empty() {
            Some((
                "DiscoveryFailed",
                format!(
                    "no deletes in this run: {}",
                    run.discovery_failed.join("; ")
                ),
            ))
        } else if result == "invalid-source" {
            Some(("ManifestInvalid", "no valid revision yet".to_owned()))
        } else {
            None
        };
        match &stalled {
            Some((reason, msg)) => s.set_condition("Stalled", true, reason, msg, now),
            None => s.set_condition("Stalled", false, "Reconciling", "", now),
        }
        let waiting = objects.iter().filter(|o| o.state == "failed").count();
        if let Some((reason, msg)) = &stalled {
            s.set_condition("Ready", false, reason, msg, now);
        } else if !success {
            let msg = run.status.error.clone().unwrap_or_default();
            s.set_condition("Ready", false, "ApplyFailed", &msg, now);
        } else if waiting > 0 {
            s.set_condition(
                "Ready",
                false,
                "RetryingFailures",
                &format!("{waiting} object(s) failing, retried with backoff"),
                now,
            );
        } else {
            let rev = self.good.as_ref().map_or("", |g| g.revision.as_str());
            s.set_condition(
                "Ready",
                true,
                "ReconciliationSucceeded",
                &format!("applied revision {rev}"),
                now,
            );
        }
        refresh_source_condition(&mut s, now);
        if let Some(p) = plan {
            s.drift = p
                .drift
                .iter()
                .map(|d| DriftStatus {
                    address: d.address.clone(),
                    message: d.message.clone(),
                })
                .collect();
        }
        s.lost = objects
            .iter()
            .filter(|o| o.state == "lost")
            .map(|o| o.address.clone())
            .collect();
        if let Some(w) = world {
            s.backends = w
                .backends
                .values()
                .map(|b| match &b.discovery {
                    Discovery::Ok(inv) => BackendStatus {
                        name: b.name.as_str().to_owned(),
                        discovered: true,
                        error: (!inv.complete()).then(|| inv.problems.join("; ")),
                        total: inv.capacity.total,
                        free: inv.capacity.free,
                        provisioned: inv.capacity.provisioned,
                        thin_data_percent: pool_percent(inv, |p| p.data_centi),
                        thin_metadata_percent: pool_percent(inv, |p| p.metadata_centi),
                    },
                    Discovery::Failed(e) => BackendStatus {
                        name: b.name.as_str().to_owned(),
                        discovered: false,
                        error: Some(e.clone()),
                        total: 0,
                        free: 0,
                        provisioned: 0,
                        thin_data_percent: None,
                        thin_metadata_percent: None,
                    },
                })
                .collect();
        }
        s.objects = objects;
        let lost_n = s.lost.len() as u64;
        let drift_n = s.drift.len() as u64;
        let mut by_state: BTreeMap<(String, String), u64> = BTreeMap::new();
        for o in &s.objects {
            *by_state
                .entry((o.kind.clone(), o.state.clone()))
                .or_default() += 1;
        }
        let backends = s
            .backends
            .iter()
            .map(|b| (b.name.clone(), b.gauges()))
            .collect();
        s.last_reconcile = Some(run.status);
        drop(s);

        {
            let mut m = lock(&self.shared.metrics);
            m.reconcile(&result, elapsed.as_secs_f64());
            if success {
                #[allow(clippy::cast_precision_loss)] // seconds since 1970 fit in f64
                let t = now.timestamp_millis() as f64 / 1000.0;
                m.last_success = Some(t);
            }
            m.objects = by_state;
            m.lost = lost_n;
            m.drift = drift_n;
            m.backends = backends;
            let kind = match self.source {
                Source::Directory { .. } => "directory",
                Source::Git(_) => "git",
            };
            m.revision = self
                .good
                .as_ref()
                .map(|g| (kind.to_owned(), g.revision.clone()));
        }
        tracing::info!(result = %result, duration_ms = elapsed.as_millis(), "reconcile finished");
        self.shared.publish();
    }
}

/// An action left out of this run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The action's address.
    pub address: String,
    /// The object's state: `held`, `failed`, `deferred` or `pending`.
    pub state: &'static str,
    /// Why, in words.
    pub why: String,
}

/// The actions of a plan this run carries out, and those it leaves.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// To apply, in plan order.
    pub kept: Vec<Action>,
    /// Left for a later run.
    pub skipped: Vec<Skipped>,
    /// Volumes whose changes wait for their backup.
    pub deferred: BTreeSet<String>,
}

/// Chooses the actions to carry out now: deletes are held while the source
/// is bad; an object in backoff waits, and so does whatever depends on it (a
/// copy from it, a volume whose snapshot's delete waits); a volume being
/// backed up is not extended, deleted or released.
pub fn select(
    actions: &[Action],
    world: &World,
    hold_deletes: bool,
    backoff: &Backoff<Instant>,
    busy: &BTreeSet<String>,
    now: Instant,
) -> Selection {
    let mut sel = Selection::default();
    // (kind, name) of objects whose steps are skipped this run.
    let mut skipped: BTreeSet<(ObjKind, String)> = BTreeSet::new();
    let mut skipped_uuids = BTreeSet::new();
    for a in actions {
        let (kind, name, uuid) = subject(a);
        let skip: Option<(&'static str, String)> =
            if hold_deletes && matches!(a.op, Op::Delete { .. }) {
                Some((
                    "held",
                    "delete held back: the source is invalid, the last good revision is in force"
                        .into(),
                ))
            } else if let Some(e) = backoff
                .get(&a.address)
                .filter(|_| backoff.waiting(&a.address, now))
            {
                Some((
                    "failed",
                    format!(
                        "failed {} time(s), retried in {}s: {}",
                        e.failures,
                        e.retry_at.saturating_duration_since(now).as_secs().max(1),
                        e.last_error
                    ),
                ))
            } else if kind == ObjKind::Volume
                && busy.contains(&name)
                && matches!(
                    a.op,
                    Op::Extend { .. } | Op::Delete { .. } | Op::Forget { .. }
                )
            {
                sel.deferred.insert(name.clone());
                Some(("deferred", "waits for its backup to finish".into()))
            } else if let Some(src) = source_of(a).filter(|s| skipped.contains(s)) {
                Some((
                    "pending",
                    format!("waits for {}.{}", kind_word(src.0), src.1),
                ))
            } else if matches!(
                a.op,
                Op::Delete {
                    kind: ObjKind::Volume,
                    ..
                }
            ) && has_skipped_child(world, uuid, &skipped_uuids)
            {
                Some(("pending", "waits for the delete of its snapshots".into()))
            } else {
                None
            };
        match skip {
            Some((state, why)) => {
                skipped.insert((kind, name));
                if let Some(u) = uuid {
                    skipped_uuids.insert(u);
                }
                sel.skipped.push(Skipped {
                    address: a.address.clone(),
                    state,
                    why,
                });
            }
            None => sel.kept.push(a.clone()),
        }
    }
    sel
}

/// Sets `SourceReady` from the fetch error and the refused revision.
pub fn refresh_source_condition(s: &mut Status, now: DateTime<Utc>) {
    if let Some(e) = s.source.fetch_error.clone() {
        s.set_condition("SourceReady", false, "FetchFailed", &e, now);
    } else if let Some(b) = s.source.bad_revision.clone() {
        let first = b.errors.first().cloned().unwrap_or_default();
        s.set_condition(
            "SourceReady",
            false,
            "RevisionInvalid",
            &format!("revision {} refused: {first}", b.revision),
            now,
        );
    } else if let Some(r) = s.source.latest_revision.clone() {
        s.set_condition(
            "SourceReady",
            true,
            "Succeeded",
            &format!("revision {r}"),
            now,
        );
    }
}

/// The apply's progress: logs each step, remembers those that succeeded,
/// and stops between steps at shutdown.
struct AgentProgress {
    shared: Arc<Shared>,
    done: Vec<String>,
    /// Per migration in flight: the stages of its copy seen so far (a
    /// chain's move copies once per snapshot and once for the volume).
    stages: BTreeMap<String, Stages>,
}

/// The copy stages of one migration, so its progress counts them all.
#[derive(Debug, Default)]
struct Stages {
    /// Read and written by the stages that ended.
    done: (u64, u64),
    /// The current stage's last position.
    last: crate::copy::Position,
    /// What the plan said the whole move reads (a chain's volume and
    /// snapshots); `None` for a volume alone (its copy says it exactly).
    planned: Option<u64>,
}

impl Stages {
    /// Takes `at` in: (read, written, to read) of the whole move so far.
    fn at(&mut self, at: &crate::copy::Position) -> (u64, u64, u64) {
        let l = &self.last;
        // A new stage walks from its start again and has its own total.
        if at.offset < l.offset || at.read < l.read || at.to_read != l.to_read {
            self.done.0 += l.read;
            self.done.1 += l.written;
        }
        self.last = *at;
        let read = self.done.0 + at.read;
        let to_read = (self.done.0 + at.to_read).max(self.planned.unwrap_or(0));
        (read, self.done.1 + at.written, to_read)
    }
}

/// Bytes per second over `secs`, and the seconds `left` bytes take at it.
fn rate_and_eta(read: u64, left: u64, secs: f64) -> (u64, Option<u64>) {
    if secs <= 0.0 || read == 0 {
        return (0, None);
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )] // rates and seconds shown rounded
    let rate = (read as f64 / secs) as u64;
    (rate, (rate > 0).then(|| left.div_ceil(rate)))
}

impl AgentProgress {
    /// Forgets the migrations shown as in flight (the apply returned).
    fn clear_migrations(&self) {
        lock(&self.shared.status).migrations.clear();
        lock(&self.shared.metrics).migrations.clear();
    }
}

impl Progress for AgentProgress {
    fn start(&mut self, action: &Action, detail: &str) {
        tracing::info!(address = %action.address, step = %detail, "step started");
        if let Op::Migrate {
            from,
            to,
            size,
            read,
            snapshots,
            ..
        } = &action.op
        {
            let planned = (!snapshots.is_empty())
                .then(|| read + snapshots.iter().map(|c| c.read).sum::<u64>());
            self.stages.insert(
                action.address.clone(),
                Stages {
                    planned,
                    ..Stages::default()
                },
            );
            let read = &planned.unwrap_or(*read);
            let mut s = lock(&self.shared.status);
            s.migrations.retain(|m| m.address != action.address);
            s.migrations.push(MigrationStatus {
                address: action.address.clone(),
                from: from.clone(),
                to: to.clone(),
                size: *size,
                started_at: Utc::now(),
                read: 0,
                to_read: *read,
                written: 0,
                rate: 0,
                eta_seconds: None,
            });
            lock(&self.shared.metrics).migrations.insert(
                action.address.clone(),
                MigrationGauges {
                    from: from.clone(),
                    to: to.clone(),
                    to_read: *read,
                    ..MigrationGauges::default()
                },
            );
        }
    }
    fn copy(&mut self, action: &Action, at: &crate::copy::Position) {
        let (read, written, to_read) = self
            .stages
            .entry(action.address.clone())
            .or_default()
            .at(at);
        let mut figures = (0, None);
        if let Some(m) = lock(&self.shared.status)
            .migrations
            .iter_mut()
            .find(|m| m.address == action.address)
        {
            #[allow(clippy::cast_precision_loss)] // a rate
            let secs = (Utc::now() - m.started_at).num_milliseconds() as f64 / 1000.0;
            figures = rate_and_eta(read, to_read.saturating_sub(read), secs);
            m.read = read;
            m.to_read = to_read;
            m.written = written;
            (m.rate, m.eta_seconds) = figures;
        }
        if let Some(m) = lock(&self.shared.metrics)
            .migrations
            .get_mut(&action.address)
        {
            m.read = read;
            m.to_read = to_read;
            (m.rate, m.eta_seconds) = figures;
        }
    }
    fn done(&mut self, action: &Action, changed: bool, elapsed: Duration) {
        tracing::info!(address = %action.address, changed, elapsed_ms = elapsed.as_millis(), "step done");
        self.done.push(action.address.clone());
        if matches!(action.op, Op::Migrate { .. }) {
            self.stages.remove(&action.address);
            lock(&self.shared.status)
                .migrations
                .retain(|m| m.address != action.address);
            lock(&self.shared.metrics)
                .migrations
                .remove(&action.address);
        }
    }
    fn proceed(&mut self) -> bool {
        !self.shared.stop.load(Ordering::SeqCst)
    }
}

/// Volumes recorded as ours whose data is gone from a back end that was
/// discovered completely: name → what happened.
pub fn lost_volumes(world: &World, recorded: &Recorded) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (uuid, rec) in &recorded.objects {
        if rec.kind != ObjKind::Volume {
            continue;
        }
        let Some(b) = world
            .backends
            .values()
            .find(|b| b.name.as_str() == rec.backend)
        else {
            continue;
        };
        let Some(inv) = b.inventory() else { continue };
        let found = inv
            .objects
            .binary_search_by_key(uuid, |o| o.uuid)
            .ok()
            .map(|i| &inv.objects[i]);
        let elsewhere = world
            .backends
            .values()
            .filter_map(|b| b.inventory())
            .any(|i| {
                i.objects.iter().any(|o| {
                    o.kind == ObjKind::Volume
                        && o.name == rec.name
                        && o.health != Health::DataMissing
                })
            });
        if elsewhere {
            continue;
        }
        match found {
            None if inv.complete() => {
                out.insert(
                    rec.name.clone(),
                    format!("{uuid} on {} was deleted outside cinderblock", rec.backend),
                );
            }
            Some(o) if o.health == Health::DataMissing => {
                out.insert(
                    rec.name.clone(),
                    format!(
                        "the data of {uuid} on {} was removed outside cinderblock",
                        rec.backend
                    ),
                );
            }
            _ => {}
        }
    }
    out
}

fn spec_hash(set: &ManifestSet, volume: &str) -> String {
    set.volumes
        .iter()
        .find(|(n, _)| n.as_str() == volume)
        .and_then(|(_, d)| serde_json::to_vec(&d.spec).ok())
        .map_or_else(
            || "absent".to_owned(),
            |b| blake3::hash(&b).to_hex().to_string(),
        )
}

/// The object an action is about.
fn subject(a: &Action) -> (ObjKind, String, Option<uuid::Uuid>) {
    match &a.op {
        Op::Create {
            kind, name, resume, ..
        } => (*kind, name.clone(), *resume),
        Op::GroupSnapshot { name, .. } => (ObjKind::Snapshot, name.clone(), None),
        Op::Extend { name, uuid, .. }
        | Op::Unexport { name, uuid, .. }
        | Op::Migrate { name, uuid, .. } => (ObjKind::Volume, name.clone(), Some(*uuid)),
        Op::Record {
            kind, name, uuid, ..
        }
        | Op::Rename {
            kind, name, uuid, ..
        }
        | Op::Adopt {
            kind, name, uuid, ..
        }
        | Op::Delete {
            kind, name, uuid, ..
        }
        | Op::Forget {
            kind, name, uuid, ..
        } => (*kind, name.clone(), Some(*uuid)),
        Op::Export { name, uuid, .. } => (ObjKind::Volume, name.clone(), *uuid),
        // A thin pool is not a manifest object; its key cannot collide with
        // a DNS-1123 name (':' and '/').
        Op::CreatePool { backend, pool, .. } => {
            (ObjKind::Volume, format!("pool:{backend}/{pool}"), None)
        }
        // Host-wide, like a pool: a key no manifest name can take.
        Op::DiscoveryAuth { .. } => (ObjKind::Volume, "iscsi:discovery-auth".into(), None),
    }
}

fn source_of(a: &Action) -> Option<(ObjKind, String)> {
    match &a.op {
        Op::Create {
            source: Some(s), ..
        } => Some((s.kind, s.name.clone())),
        _ => None,
    }
}

fn has_skipped_child(
    world: &World,
    volume: Option<uuid::Uuid>,
    skipped: &BTreeSet<uuid::Uuid>,
) -> bool {
    let Some(v) = volume else { return false };
    world
        .backends
        .values()
        .filter_map(|b| b.inventory())
        .flat_map(|i| &i.objects)
        .any(|o| o.parent == Some(v) && skipped.contains(&o.uuid))
}

fn kind_word(k: ObjKind) -> &'static str {
    match k {
        ObjKind::Volume => "volume",
        ObjKind::Snapshot => "snapshot",
        ObjKind::Image => "image",
    }
}

/// Every declared or existing object with its state.
#[allow(clippy::too_many_lines)] // gathers, then overlays plan, run and backoff
fn object_states(
    plan: Option<&Plan>,
    world: Option<&World>,
    recorded: Option<&Recorded>,
    run: &BTreeMap<String, (String, String)>,
    good: Option<&Good>,
    backoff: &Backoff<Instant>,
) -> Vec<ObjectStatus> {
    let mut out: BTreeMap<String, ObjectStatus> = BTreeMap::new();
    let mut add = |address: String, kind: &str, backend: Option<String>, size: Option<u64>| {
        let e = out.entry(address.clone()).or_insert_with(|| ObjectStatus {
            address,
            kind: kind.to_owned(),
            state: "ready".into(),
            backend: None,
            size: None,
            message: String::new(),
            failures: 0,
            retry_at: None,
        });
        if backend.is_some() {
            e.backend = backend;
            e.size = size;
        }
    };
    if let Some(w) = world {
        for b in w.backends.values() {
            for o in b
                .inventory()
                .map(|i| i.objects.as_slice())
                .unwrap_or_default()
            {
                add(
                    format!("{}.{}", o.kind.as_str(), o.name),
                    o.kind.as_str(),
                    Some(b.name.as_str().to_owned()),
                    Some(o.size),
                );
            }
        }
    }
    if let Some(g) = good {
        for n in g.set.volumes.keys() {
            add(format!("volume.{n}"), "volume", None, None);
        }
        for n in g.set.snapshots.keys() {
            add(format!("snapshot.{n}"), "snapshot", None, None);
        }
    }
    if let Some(r) = recorded {
        for o in r.objects.values() {
            let kind = kind_word(o.kind);
            add(format!("{kind}.{}", o.name), kind, None, None);
        }
    }
    // Planned but not carried out: pending.
    if let Some(p) = plan {
        for a in &p.actions {
            if let Some(o) = out.get_mut(&a.address)
                && o.state == "ready"
            {
                o.state = "pending".into();
                o.message.clone_from(&a.reason);
            }
        }
    }
    for (address, (state, message)) in run {
        if let Some(o) = out.get_mut(address) {
            o.state.clone_from(state);
            o.message.clone_from(message);
        }
    }
    // What the steps carried out changed since discovery.
    for a in plan.map(|p| p.actions.as_slice()).unwrap_or_default() {
        let Some(o) = out.get_mut(&a.address) else {
            continue;
        };
        if o.state != "ready" {
            continue;
        }
        match &a.op {
            Op::Create { backend, size, .. } | Op::Adopt { backend, size, .. } => {
                o.backend = Some(backend.clone());
                o.size = Some(*size);
            }
            Op::Extend { to, .. } => o.size = Some(*to),
            Op::Migrate { to, .. } => o.backend = Some(to.clone()),
            _ => {}
        }
    }
    let now_i = Instant::now();
    let now = Utc::now();
    for o in out.values_mut() {
        if let Some(e) = backoff.get(&o.address)
            && o.state == "failed"
        {
            o.failures = e.failures;
            let wait = e.retry_at.saturating_duration_since(now_i);
            o.retry_at = chrono::Duration::from_std(wait).ok().map(|d| now + d);
        }
    }
    // Objects whose delete or forget just completed are gone from the
    // world and the record; drop them unless something is still to say.
    let declared: BTreeSet<String> = good
        .map(|g| {
            g.set
                .volumes
                .keys()
                .map(|n| format!("volume.{n}"))
                .chain(g.set.snapshots.keys().map(|n| format!("snapshot.{n}")))
                .collect()
        })
        .unwrap_or_default();
    if let Some(p) = plan {
        for a in &p.actions {
            let gone = matches!(a.op, Op::Delete { .. } | Op::Forget { .. })
                && out.get(&a.address).is_some_and(|o| o.state == "ready")
                && !declared.contains(&a.address);
            if gone {
                out.remove(&a.address);
            }
        }
    }
    out.into_values().collect()
}

/// The back ends an apply of `actions` may have changed: those its creates,
/// adoptions, extends, deletes, migrations (both ends) and pools name.
fn touched_backends(actions: &[Action], set: &ManifestSet) -> BTreeSet<manifest::Name> {
    let mut names = BTreeSet::new();
    for a in actions {
        let ends: &[&String] = match &a.op {
            Op::Create { backend, .. }
            | Op::Adopt { backend, .. }
            | Op::Rename { backend, .. }
            | Op::Extend { backend, .. }
            | Op::Delete { backend, .. }
            | Op::CreatePool { backend, .. } => &[backend],
            Op::Migrate { from, to, .. } => &[from, to],
            _ => &[],
        };
        for e in ends {
            if let Some((n, _)) = set.backends.iter().find(|(n, _)| n.as_str() == e.as_str()) {
                names.insert(n.clone());
            }
        }
    }
    names
}

/// The reconciler task: waits for triggers (or a retry time), runs one
/// reconcile at a time on a blocking thread.
pub async fn task(
    reconciler: Reconciler,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut reconciler = Some(reconciler);
    let mut retry_at: Option<Instant> = None;
    loop {
        let reasons = tokio::select! {
            biased;
            _ = shutdown.changed() => return Ok(()),
            r = shared.triggers.wait() => r,
            () = sleep_until(retry_at), if retry_at.is_some() => BTreeSet::from([Reason::Retry]),
        };
        let mut r = reconciler.take().ok_or("the reconciler was lost")?;
        let (r, next) = tokio::task::spawn_blocking(move || {
            let next = r.run_once(&reasons);
            (r, next)
        })
        .await
        .map_err(|e| format!("a reconcile panicked: {e}"))?;
        reconciler = Some(r);
        retry_at = next.retry_at;
        if next.again {
            shared.triggers.push(Reason::Retry);
        }
        if *shutdown.borrow() {
            return Ok(());
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// A thin pool figure of `inv` in percent, when it has a pool.
fn pool_percent(
    inv: &crate::observe::Inventory,
    pick: impl Fn(&crate::model::PoolFill) -> Option<u32>,
) -> Option<f64> {
    let fill = inv.capacity.fill.as_ref()?;
    pick(fill).map(|c| f64::from(c) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::kinds::DeletionPolicy;
    use crate::observe::{BackendView, Capacity, Inventory, Observed};
    use crate::plan::{Impact, SourceRef};
    use uuid::Uuid;

    const VOL: Uuid = Uuid::from_u128(1);
    const SNAP: Uuid = Uuid::from_u128(2);

    fn action(address: &str, op: Op) -> Action {
        Action {
            address: address.into(),
            op,
            reason: String::new(),
            impact: Impact::Grows,
        }
    }

    fn create(kind: ObjKind, name: &str, source: Option<&str>) -> Action {
        let word = kind_word(kind);
        action(
            &format!("{word}.{name}"),
            Op::Create {
                kind,
                name: name.into(),
                backend: "local".into(),
                size: 1,
                source: source.map(|s| SourceRef {
                    kind: ObjKind::Volume,
                    name: s.into(),
                    uuid: None,
                }),
                resume: None,
                backup: None,
                deletion_policy: DeletionPolicy::Delete,
                from_file: None,
                placement: None,
                consistency_group: None,
            },
        )
    }

    fn delete(kind: ObjKind, name: &str, uuid: Uuid) -> Action {
        action(
            &format!("{}.{name}", kind_word(kind)),
            Op::Delete {
                kind,
                name: name.into(),
                uuid,
                backend: "local".into(),
                size: 1,
            },
        )
    }

    fn extend(name: &str) -> Action {
        action(
            &format!("volume.{name}"),
            Op::Extend {
                name: name.into(),
                uuid: VOL,
                backend: "local".into(),
                from: 1,
                to: 2,
            },
        )
    }

    /// One back end holding volume `old` (VOL) and its snapshot `snap` (SNAP).
    fn world() -> World {
        let obj = |uuid, name: &str, kind, parent| Observed {
            group: None,
            uuid,
            name: name.into(),
            kind,
            size: 1,
            allocated: None,
            parent,
            clone_of: None,
            health: Health::Ready,
            in_use: None,
        };
        let name: crate::manifest::Name = "local".parse().unwrap();
        let view = BackendView {
            name: name.clone(),
            backend_name: "local".into(),
            zone: "nova".into(),
            caps: crate::driver::fake::capabilities(true),
            thin: true,
            extent: 1,
            ratio: crate::manifest::values::OverSubscription::default(),
            reserved_percentage: 0,
            capabilities: BTreeMap::new(),
            discovery: Discovery::Ok(Inventory {
                capacity: Capacity::default(),
                objects: vec![
                    obj(VOL, "old", ObjKind::Volume, None),
                    obj(SNAP, "snap", ObjKind::Snapshot, Some(VOL)),
                ],
                foreign: Vec::new(),
                problems: Vec::new(),
                generation: None,
            }),
        };
        World {
            backends: BTreeMap::from([(name, view)]),
            missing: Vec::new(),
            ..World::default()
        }
    }

    fn addresses(sel: &Selection) -> (Vec<&str>, Vec<(&str, &str)>) {
        (
            sel.kept.iter().map(|a| a.address.as_str()).collect(),
            sel.skipped
                .iter()
                .map(|s| (s.address.as_str(), s.state))
                .collect(),
        )
    }

    #[test]
    fn nothing_in_the_way_keeps_every_action() {
        let actions = [create(ObjKind::Volume, "a", None), extend("old")];
        let b = Backoff::new(BACKOFF);
        let sel = select(
            &actions,
            &world(),
            false,
            &b,
            &BTreeSet::new(),
            Instant::now(),
        );
        assert_eq!(addresses(&sel), (vec!["volume.a", "volume.old"], vec![]));
    }

    #[test]
    fn a_failing_object_waits_and_so_do_copies_of_it() {
        let now = Instant::now();
        let mut b = Backoff::new(BACKOFF);
        b.fail("volume.a", now, "disk full");
        let actions = [
            create(ObjKind::Volume, "a", None),
            create(ObjKind::Snapshot, "s", Some("a")),
            create(ObjKind::Volume, "clone", Some("a")),
            create(ObjKind::Volume, "other", None),
        ];
        let sel = select(&actions, &world(), false, &b, &BTreeSet::new(), now);
        assert_eq!(
            addresses(&sel),
            (
                vec!["volume.other"],
                vec![
                    ("volume.a", "failed"),
                    ("snapshot.s", "pending"),
                    ("volume.clone", "pending")
                ]
            )
        );
        assert!(
            sel.skipped[0].why.contains("disk full"),
            "{:?}",
            sel.skipped[0]
        );
        // Once the delay has passed, it is tried again.
        let later = select(
            &actions,
            &world(),
            false,
            &b,
            &BTreeSet::new(),
            now + Duration::from_secs(1),
        );
        assert_eq!(later.kept.len(), 4);
    }

    #[test]
    fn deletes_are_held_while_the_source_is_bad() {
        let actions = [
            create(ObjKind::Volume, "a", None),
            delete(ObjKind::Volume, "gone", Uuid::from_u128(9)),
        ];
        let sel = select(
            &actions,
            &world(),
            true,
            &Backoff::new(BACKOFF),
            &BTreeSet::new(),
            Instant::now(),
        );
        assert_eq!(
            addresses(&sel),
            (vec!["volume.a"], vec![("volume.gone", "held")])
        );
    }

    #[test]
    fn a_volume_whose_snapshot_delete_waits_is_not_deleted() {
        let now = Instant::now();
        let mut b = Backoff::new(BACKOFF);
        b.fail("snapshot.snap", now, "busy");
        let actions = [
            delete(ObjKind::Snapshot, "snap", SNAP),
            delete(ObjKind::Volume, "old", VOL),
        ];
        let sel = select(&actions, &world(), false, &b, &BTreeSet::new(), now);
        assert_eq!(
            addresses(&sel),
            (
                vec![],
                vec![("snapshot.snap", "failed"), ("volume.old", "pending")]
            )
        );
    }

    #[test]
    fn a_volume_being_backed_up_is_not_changed_until_the_backup_ends() {
        let busy = BTreeSet::from(["old".to_owned()]);
        let actions = [
            extend("old"),
            create(ObjKind::Snapshot, "s2", Some("old")),
            create(ObjKind::Volume, "a", None),
        ];
        let sel = select(
            &actions,
            &world(),
            false,
            &Backoff::new(BACKOFF),
            &busy,
            Instant::now(),
        );
        // Whatever comes after the change in the plan waits with it (the
        // planner ordered them so); other objects go on.
        assert_eq!(
            addresses(&sel),
            (
                vec!["volume.a"],
                vec![("volume.old", "deferred"), ("snapshot.s2", "pending")]
            )
        );
        assert_eq!(sel.deferred, busy);
    }

    /// Stops after `n` steps, as the agent's progress does at shutdown.
    struct StopAfter(usize);

    impl Progress for StopAfter {
        fn start(&mut self, _: &Action, _: &str) {}
        fn done(&mut self, _: &Action, _: bool, _: Duration) {
            self.0 = self.0.saturating_sub(1);
        }
        fn proceed(&mut self) -> bool {
            self.0 > 0
        }
    }

    #[test]
    fn a_stop_request_ends_the_apply_between_steps_with_the_done_ones_journalled() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("pool");
        std::fs::create_dir_all(&pool).unwrap();
        let text = format!(
            "apiVersion: cinderblock.dev/v1alpha1\nkind: Backend\nmetadata:\n  name: local\nspec:\n  file:\n    path: {}\n---\napiVersion: cinderblock.dev/v1alpha1\nkind: Volume\nmetadata:\n  name: a\nspec:\n  size: 1Mi\n---\napiVersion: cinderblock.dev/v1alpha1\nkind: Volume\nmetadata:\n  name: b\nspec:\n  size: 1Mi\n",
            pool.display()
        );
        let loaded = manifest::load::load_source(std::path::Path::new("m.yaml"), &text);
        assert_eq!(loaded.errors(), 0, "{:?}", loaded.diagnostics);
        let state = dir.path().join("state");
        let registry = Registry::new(&loaded.set, "h", &state, Exec::host());
        let world = observe::discover(&loaded.set, &registry, &state);
        let mut ledger = Ledger::default();
        let plan = plan::plan(&loaded.set, &world, &ledger.recorded, Options::default());
        assert_eq!(plan.actions.len(), 2);
        let err =
            apply::apply(&plan, &registry, &state, &mut ledger, &mut StopAfter(1)).unwrap_err();
        assert!(matches!(err, ApplyError::Stopped { done: 1 }), "{err:?}");
        assert_eq!(
            ledger.recorded.objects.len(),
            1,
            "the first step is recorded"
        );
        let journal = crate::state::journal::read(&state).unwrap();
        assert_eq!(
            journal.records.len(),
            2,
            "intent and outcome of step 1 only"
        );
        assert!(journal.unfinished().is_empty());
        // The next run finishes the rest.
        let world = observe::discover(&loaded.set, &registry, &state);
        let again = plan::plan(&loaded.set, &world, &ledger.recorded, Options::default());
        assert_eq!(
            again
                .actions
                .iter()
                .map(|a| a.address.as_str())
                .collect::<Vec<_>>(),
            ["volume.b"]
        );
    }
}

#[cfg(test)]
mod progress_tests {
    use super::{Stages, rate_and_eta};
    use crate::copy::Position;

    #[test]
    fn a_chains_progress_counts_every_stage_and_says_rate_and_time_left() {
        let p = |offset, read, to_read| Position {
            offset,
            read,
            written: read / 2,
            to_read,
        };
        let mut s = Stages {
            planned: Some(30),
            ..Stages::default()
        };
        assert_eq!(s.at(&p(4, 4, 10)), (4, 2, 30));
        assert_eq!(s.at(&p(10, 10, 10)), (10, 5, 30));
        // The next stage walks from its start again.
        assert_eq!(s.at(&p(8, 16, 20)), (26, 13, 30));
        assert_eq!(s.at(&p(20, 20, 20)), (30, 15, 30));
        // A volume alone: its copy's own total.
        let mut one = Stages::default();
        assert_eq!(one.at(&p(6, 6, 12)), (6, 3, 12));
        assert_eq!(rate_and_eta(30, 10, 3.0), (10, Some(1)));
        assert_eq!(rate_and_eta(30, 11, 3.0), (10, Some(2)));
        assert_eq!(rate_and_eta(0, 10, 3.0), (0, None));
    }
}
