//! `plan` and `apply`: discover, diff, print Terraform-style, carry out.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::apply::{self, ApplyError, Progress};
use crate::exec::Exec;
use crate::manifest::{self, ManifestSet};
use crate::observe;
use crate::plan::{self, Action, Op, Options, Plan, render};
use crate::registry::Registry;
use crate::state::lock::StateLock;
use crate::state::record::Ledger;

use super::GlobalArgs;
use super::timings::Timings;

#[derive(Debug, Args)]
#[allow(clippy::struct_excessive_bools)] // command-line flags
pub(super) struct PlanArgs {
    /// Manifest file or directory (repeatable).
    #[arg(short = 'f', long = "file", value_name = "PATH", default_value = ".")]
    files: Vec<PathBuf>,
    /// Output format: the text plan, a JSON document, or Markdown for a
    /// pull-request comment.
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    format: PlanFormat,
    /// The same as `--format json`.
    #[arg(long, conflicts_with = "format")]
    json: bool,
    /// Save the plan to FILE for `apply FILE` (refused there if the storage
    /// changed in between).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Exit 0 with no changes, 2 with changes, 3 with changes that destroy
    /// data, 1 on error.
    #[arg(long)]
    detailed_exitcode: bool,
    /// Recreate, empty, volumes that were deleted outside cinderblock.
    #[arg(long)]
    recreate_lost: bool,
    /// Print how long each phase took (wall and CPU time, peak memory) to
    /// stderr after the plan.
    #[arg(long)]
    timings: bool,
    /// Plan every host of the fleet (needs --etcd): each host's plan
    /// against what it last published, and the placements the manifests
    /// would get. Works from any machine that reaches etcd; reads no
    /// storage and takes no lock.
    #[arg(long, conflicts_with_all = ["out", "recreate_lost"])]
    fleet: bool,
}

/// `plan --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum PlanFormat {
    /// Terraform-style text.
    Text,
    /// One JSON document (`--json`).
    Json,
    /// Markdown for a pull-request or merge-request comment.
    Markdown,
}

impl PlanArgs {
    fn format(&self) -> PlanFormat {
        if self.json {
            PlanFormat::Json
        } else {
            self.format
        }
    }
}

#[derive(Debug, Args)]
pub(super) struct ApplyArgs {
    /// A plan saved with `plan --out`; without it, plan now and apply.
    plan_file: Option<PathBuf>,
    /// Manifest file or directory (repeatable; ignored with a saved plan).
    #[arg(short = 'f', long = "file", value_name = "PATH", default_value = ".")]
    files: Vec<PathBuf>,
    /// Apply without asking for confirmation.
    #[arg(long)]
    auto_approve: bool,
    /// Recreate, empty, volumes that were deleted outside cinderblock.
    #[arg(long)]
    recreate_lost: bool,
    /// Read at most this much per second when copying (migrations), e.g.
    /// `200Mi`; a back end's `migrationBandwidth` may lower it further.
    #[arg(long, value_name = "BYTES")]
    bandwidth_limit: Option<crate::manifest::values::Quantity>,
}

/// A saved plan (`plan --out`).
#[derive(Serialize, Deserialize)]
struct SavedPlan {
    format: String,
    version: u32,
    host: String,
    /// Manifest paths, absolute, to re-read back end configuration.
    manifests: Vec<PathBuf>,
    plan: Plan,
}

/// `plan --json`: the plan and, when volumes have backup policies, their
/// schedules and checks.
#[derive(Serialize)]
struct JsonPlanWithBackups<'a> {
    #[serde(flatten)]
    plan: render::JsonPlan<'a>,
    #[serde(flatten)]
    backups: super::backup_due::Section,
}

const SAVED_FORMAT: &str = "cinderblock.plan";
const SAVED_VERSION: u32 = 1;

pub(super) fn host_name(g: &GlobalArgs) -> String {
    g.host.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".to_owned())
    })
}

/// Loads manifests; prints findings; fails on errors.
pub(super) fn load(files: &[PathBuf]) -> anyhow::Result<ManifestSet> {
    let loaded = manifest::load_paths(files);
    let mut err = std::io::stderr().lock();
    for d in &loaded.diagnostics {
        writeln!(err, "{d}")?;
    }
    if loaded.errors() > 0 {
        bail!(
            "the manifests have {} error(s); run `cinderblock validate` for details",
            loaded.errors()
        );
    }
    Ok(loaded.set)
}

struct Prepared {
    registry: Registry<'static>,
    ledger: Ledger,
    plan: Plan,
}

fn prepare(
    set: &ManifestSet,
    g: &GlobalArgs,
    host: &str,
    recreate_lost: bool,
    fleet: Option<&super::fleet::CliFleet>,
    clock: &mut Timings,
) -> anyhow::Result<Prepared> {
    let registry = Registry::new(set, host, &g.state, Exec::host());
    // The recorded state is read while the back ends are discovered: neither
    // needs the other (a large site's state file is tens of milliseconds).
    let (ledger, mut world) = std::thread::scope(|s| {
        let ledger = s.spawn(|| Ledger::load(&g.state));
        let world = observe::discover(set, &registry, &g.state);
        let ledger = ledger
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        (ledger, world)
    });
    let ledger = ledger.context("cannot read the recorded state")?;
    if let Some(f) = fleet {
        (world.fleet, world.remote) = f.world_parts(host);
    }
    clock.mark("state + discover");
    let plan = plan::plan(set, &world, &ledger.recorded, Options { recreate_lost });
    clock.mark("plan");
    Ok(Prepared {
        registry,
        ledger,
        plan,
    })
}

fn lock(g: &GlobalArgs, command: &str) -> anyhow::Result<StateLock> {
    Ok(StateLock::acquire(&g.state, command)?)
}

/// Connects to the fleet's etcd when `--etcd` is given.
fn fleet_conn(g: &GlobalArgs) -> anyhow::Result<Option<super::fleet::CliFleet>> {
    super::fleet::etcd_config(g)?
        .map(|c| super::fleet::CliFleet::connect(&c))
        .transpose()
}

fn run_fleet_plan(g: &GlobalArgs, args: &PlanArgs, set: &ManifestSet) -> anyhow::Result<i32> {
    let Some(conn) = fleet_conn(g)? else {
        bail!("plan --fleet reads the fleet from etcd: give --etcd URLS (or CINDERBLOCK_ETCD)");
    };
    let fp = super::fleet::fleet_plan(set, &conn)?;
    let mut out = std::io::stdout().lock();
    match args.format() {
        PlanFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &fp.json())?;
            writeln!(out)?;
        }
        PlanFormat::Markdown => out.write_all(fp.markdown().as_bytes())?,
        PlanFormat::Text => out.write_all(fp.text().as_bytes())?,
    }
    Ok(fp.code(args.detailed_exitcode))
}

pub(super) fn run_plan(g: &GlobalArgs, args: &PlanArgs) -> anyhow::Result<i32> {
    let mut clock = Timings::new(args.timings);
    let set = load(&args.files)?;
    clock.mark("load manifests");
    if args.fleet {
        return run_fleet_plan(g, args, &set);
    }
    let host = host_name(g);
    let conn = fleet_conn(g)?;
    let _lock = lock(g, "plan")?;
    clock.mark("lock");
    let p = prepare(
        &set,
        g,
        &host,
        args.recreate_lost,
        conn.as_ref(),
        &mut clock,
    )?;
    let backups = super::backup_due::section(&set, &g.state)?;
    clock.mark("backup schedule");
    let mut out = std::io::stdout().lock();
    let format = args.format();
    match format {
        PlanFormat::Json => {
            let doc = JsonPlanWithBackups {
                plan: render::json(&p.plan),
                backups,
            };
            serde_json::to_writer_pretty(&mut out, &doc)?;
            writeln!(out)?;
        }
        PlanFormat::Markdown => {
            let hosts = [crate::plan::markdown::HostPlan {
                host: &host,
                plan: &p.plan,
            }];
            out.write_all(
                crate::plan::markdown::markdown(&hosts, &super::backup_due::markdown(&backups))
                    .as_bytes(),
            )?;
        }
        PlanFormat::Text => {
            out.write_all(
                render::text_with(&p.plan, &super::backup_due::text(&backups)).as_bytes(),
            )?;
        }
    }
    if let Some(path) = &args.out {
        let manifests = args
            .files
            .iter()
            .map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone()))
            .collect();
        let saved = SavedPlan {
            format: SAVED_FORMAT.into(),
            version: SAVED_VERSION,
            host,
            manifests,
            plan: p.plan.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&saved)?;
        crate::state::atomic::write_atomic(path, &bytes)
            .with_context(|| format!("cannot save the plan to {}", path.display()))?;
        if format == PlanFormat::Text {
            writeln!(
                out,
                "\nSaved the plan to: {}\nTo perform exactly these actions, run: cinderblock apply {}",
                path.display(),
                path.display()
            )?;
        }
    }
    out.flush()?;
    clock.mark("render");
    clock.report()?;
    if !p.plan.errors.is_empty() {
        return Ok(1);
    }
    Ok(if !args.detailed_exitcode || p.plan.actions.is_empty() {
        0
    } else if p.plan.destroys_data() {
        3
    } else {
        2
    })
}

/// Prints each step's start and end, and Terraform's "Still creating...
/// [10s elapsed]" while a long step (a large copy) runs.
#[derive(Default)]
struct Printer {
    ticker: Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
    /// A long copy's latest position, which the ticker reports.
    copy: std::sync::Arc<std::sync::Mutex<Option<crate::copy::Position>>>,
    /// The progress bar of a copy, on a terminal.
    bar: Option<indicatif::ProgressBar>,
}

/// "read 1.2 GiB of 3 GiB (40%), 210 MiB/s, ETA 9s".
#[allow(clippy::cast_precision_loss)] // figures shown to people, rounded
fn copy_line(at: &crate::copy::Position, elapsed: Duration) -> String {
    use crate::plan::capacity::human;
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = at.read as f64 / secs;
    let left = at.to_read.saturating_sub(at.read) as f64;
    let eta = if rate > 0.0 {
        format!(", ETA {:.0}s", left / rate)
    } else {
        String::new()
    };
    format!(
        "read {} of {} ({:.0}%), {}/s{eta}",
        human(at.read as f64),
        human(at.to_read as f64),
        100.0 * at.read as f64 / (at.to_read.max(1) as f64),
        human(rate)
    )
}

const TICK: Duration = Duration::from_secs(10);

impl Printer {
    fn stop_ticker(&mut self) {
        if let Some((stop, handle)) = self.ticker.take() {
            let _ = stop.send(());
            let _ = handle.join();
        }
    }
}

impl Progress for Printer {
    fn start(&mut self, action: &Action, _detail: &str) {
        let (verb, still) = match (&action.op, action.symbol()) {
            (Op::Export { .. }, _) => ("Exporting...", "Still exporting..."),
            (Op::Unexport { .. }, _) => ("Unexporting...", "Still unexporting..."),
            (Op::Adopt { .. }, _) => ("Adopting...", "Still adopting..."),
            (Op::Rename { .. }, _) => ("Renaming...", "Still renaming..."),
            (_, "+") => ("Creating...", "Still creating..."),
            (_, "~") => ("Modifying...", "Still modifying..."),
            (_, "-") => ("Destroying...", "Still destroying..."),
            (_, ">") => ("Migrating...", "Still migrating..."),
            _ => ("Forgetting...", "Still forgetting..."),
        };
        if let Ok(mut c) = self.copy.lock() {
            *c = None;
        }
        let _ = writeln!(std::io::stdout().lock(), "{}: {verb}", action.address);
        self.stop_ticker();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let address = action.address.clone();
        let copy = std::sync::Arc::clone(&self.copy);
        let handle = std::thread::spawn(move || {
            let mut elapsed = Duration::ZERO;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(TICK) {
                elapsed += TICK;
                let detail = copy
                    .lock()
                    .ok()
                    .and_then(|c| c.map(|at| format!("; {}", copy_line(&at, elapsed))))
                    .unwrap_or_default();
                let _ = writeln!(
                    std::io::stdout().lock(),
                    "{address}: {still} [{}s elapsed{detail}]",
                    elapsed.as_secs()
                );
            }
        });
        self.ticker = Some((tx, handle));
    }
    fn copy(&mut self, _action: &Action, at: &crate::copy::Position) {
        if std::io::stdout().is_terminal() {
            let bar = self.bar.get_or_insert_with(|| {
                let bar = indicatif::ProgressBar::new(at.to_read);
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "  {bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                ) {
                    bar.set_style(style);
                }
                bar
            });
            bar.set_position(at.read);
        } else if let Ok(mut c) = self.copy.lock() {
            *c = Some(*at);
        }
    }
    fn note(&mut self, action: &Action, text: &str) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let _ = writeln!(std::io::stdout().lock(), "{}: {text}", action.address);
    }
    fn done(&mut self, action: &Action, changed: bool, elapsed: Duration) {
        self.stop_ticker();
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let verb = match (&action.op, action.symbol()) {
            (Op::Export { .. }, _) => "Export complete",
            (Op::Unexport { .. }, _) => "Unexport complete",
            (Op::Adopt { .. }, _) => "Adoption complete",
            (Op::Rename { .. }, _) => "Rename complete",
            (_, "+") => "Creation complete",
            (_, "~") => "Modifications complete",
            (_, "-") => "Destruction complete",
            (_, ">") => "Migration complete",
            _ => "Forgotten",
        };
        let note = if changed {
            ""
        } else {
            " (nothing needed doing)"
        };
        let _ = writeln!(
            std::io::stdout().lock(),
            "{}: {verb} after {:.1}s{note}",
            action.address,
            elapsed.as_secs_f64()
        );
    }
}

impl Drop for Printer {
    fn drop(&mut self) {
        self.stop_ticker();
    }
}

fn confirm() -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    write!(
        out,
        "Do you want to perform these actions?\n  cinderblock will perform the actions described above.\n  Only 'yes' will be accepted to approve.\n\n  Enter a value: "
    )?;
    out.flush()?;
    drop(out);
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if !std::io::stdin().is_terminal() {
        writeln!(std::io::stdout().lock())?;
    }
    Ok(line.trim() == "yes")
}

/// Reads a plan saved by `plan -out`, refusing another format or version.
fn read_saved(path: &std::path::Path) -> anyhow::Result<SavedPlan> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the saved plan {}", path.display()))?;
    let saved: SavedPlan = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a saved cinderblock plan", path.display()))?;
    if saved.format != SAVED_FORMAT || saved.version != SAVED_VERSION {
        bail!(
            "{} is a {} v{} file; this cinderblock applies {SAVED_FORMAT} v{SAVED_VERSION}",
            path.display(),
            saved.format,
            saved.version
        );
    }
    Ok(saved)
}

#[allow(clippy::too_many_lines)] // the apply command's stages in order
pub(super) fn run_apply(g: &GlobalArgs, args: &ApplyArgs) -> anyhow::Result<i32> {
    let (set, host, saved) = if let Some(path) = &args.plan_file {
        let saved = read_saved(path)?;
        let set = load(&saved.manifests)?;
        let host = saved.host.clone();
        (set, host, Some(saved))
    } else {
        let set = load(&args.files)?;
        (set, host_name(g), None)
    };
    let conn = fleet_conn(g)?;
    let _lock = lock(g, "apply")?;
    let mut clock = Timings::off();
    let mut p = prepare(
        &set,
        g,
        &host,
        args.recreate_lost,
        conn.as_ref(),
        &mut clock,
    )?;
    let mut out = std::io::stdout().lock();
    let from_file = saved.is_some();
    let plan = if let Some(s) = saved {
        if s.plan.fingerprint != p.plan.fingerprint {
            bail!(
                "the saved plan is stale: the storage changed since it was made (fingerprint {} then, {} now); run `cinderblock plan` again",
                s.plan.fingerprint,
                p.plan.fingerprint
            );
        }
        s.plan
    } else {
        out.write_all(render::text(&p.plan).as_bytes())?;
        p.plan.clone()
    };
    if !plan.errors.is_empty() {
        return Ok(1);
    }
    if plan.actions.is_empty() {
        apply::record_quietly(&plan, &mut p.ledger, &g.state)?;
        return Ok(0);
    }
    writeln!(out)?;
    drop(out);
    // A saved plan was reviewed when it was made (Terraform's rule too).
    if !args.auto_approve && !from_file && !confirm()? {
        writeln!(std::io::stdout().lock(), "\nApply cancelled.")?;
        return Ok(1);
    }
    let mut printer = Printer::default();
    let opts = apply::ApplyOptions {
        bandwidth_limit: args
            .bandwidth_limit
            .map(crate::manifest::values::Quantity::bytes),
        fence: conn.as_ref().map(|c| c as &dyn crate::apply::Fence),
        xhost: conn.as_ref().map(|c| apply::Xhost {
            jobs: c as &dyn crate::xhost::Jobs,
            portal: g.etcd.migration_portal.as_deref(),
            runner: Exec::host(),
            wait: crate::xhost::Wait::default(),
        }),
    };
    match apply::apply_with(
        &plan,
        &p.registry,
        &g.state,
        &mut p.ledger,
        &mut printer,
        opts,
    ) {
        Ok(r) => {
            let mut line = format!(
                "\nApply complete! Resources: {} added, {} changed, {} destroyed",
                r.added, r.changed, r.destroyed
            );
            if r.forgotten > 0 {
                let _ = std::fmt::Write::write_fmt(
                    &mut line,
                    format_args!(", {} forgotten", r.forgotten),
                );
            }
            line.push('.');
            writeln!(std::io::stdout().lock(), "{line}")?;
            Ok(0)
        }
        Err(ApplyError::Step {
            address,
            cause,
            done,
        }) => {
            let mut err = std::io::stderr().lock();
            writeln!(err, "\nError: {address}: {}", crate::error_chain(&cause))?;
            writeln!(
                err,
                "\nApply stopped after {done} of {} step(s); the completed steps are recorded in {}. Run apply again to finish.",
                plan.actions.len(),
                state_journal(&g.state).display()
            )?;
            Ok(1)
        }
        Err(e) => Err(e.into()),
    }
}

fn state_journal(state: &Path) -> PathBuf {
    state.join(crate::state::journal::JOURNAL_FILE)
}
