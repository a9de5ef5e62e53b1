//! The command-line layer: argument parsing, logging set-up, user output and
//! exit codes. The only place that prints to the terminal and the only place
//! that uses `anyhow`; everything it calls is library code returning typed
//! errors.
//!
//! Exit codes: 0 success (valid manifests), 1 invalid manifests, damage found
//! by `backup verify`, or an error,
//! 2 usage error (clap's own).

mod agent;
mod backup;
mod backup_due;
mod backup_repo;
mod backup_restore;
mod discover;
mod fleet;
mod install;
mod plan;
mod timings;
mod validate;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// cinderblock: declarative block storage — manifests in git, plan, apply.
#[derive(Debug, Parser)]
#[command(name = "cinderblock", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// State directory: lock, journal, placements, identities.
    #[arg(
        long,
        global = true,
        default_value = "state",
        env = "CINDERBLOCK_STATE"
    )]
    pub(crate) state: PathBuf,
    /// This storage host's name (default: the machine's hostname).
    #[arg(long, global = true, env = "CINDERBLOCK_HOST")]
    pub(crate) host: Option<String>,
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
    /// Only errors in the log.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    pub(crate) etcd: fleet::EtcdArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Parse and check every manifest: schema, references, names, sizes.
    Validate(validate::ValidateArgs),
    /// Dry run: discover, diff, and print the ordered actions.
    Plan(plan::PlanArgs),
    /// Plan, then carry it out (or carry out a saved plan).
    Apply(plan::ApplyArgs),
    /// Print what exists on this host's back ends as manifests (foreign LVs
    /// and files too, to adopt, with --include-foreign).
    Discover(discover::DiscoverArgs),
    /// Write the JSON Schemas of the manifests (one per kind, plus manifest.json).
    Schema(SchemaArgs),
    /// Operate backups by hand: run, list, restore, verify, export, import, prune.
    Backup(backup::BackupArgs),
    /// Keep this host matching a manifest directory or a git branch; run
    /// scheduled backups; serve /healthz, /readyz, /status, /metrics.
    Agent(agent::AgentArgs),
    /// What the agent last applied (from the state directory).
    Status(agent::StatusArgs),
    /// Write a shell completion script (bash, zsh, fish) to stdout.
    Completions(install::CompletionsArgs),
    /// Write the manual pages (roff) into a directory.
    Manpages(install::ManpagesArgs),
}

#[derive(Debug, Args)]
struct SchemaArgs {
    /// Directory to write the schemas into.
    #[arg(long, default_value = "schemas")]
    out: PathBuf,
}

/// Runs the CLI and returns the process exit code.
pub fn run() -> i32 {
    let cli = Cli::parse();
    // The agent is a service: its log is its account of what it did.
    init_tracing(
        &cli.global,
        if matches!(cli.command, Command::Agent(_)) {
            "info"
        } else {
            "warn"
        },
    );
    let result = match cli.command {
        Command::Validate(args) => validate::run(&args),
        Command::Plan(args) => plan::run_plan(&cli.global, &args),
        Command::Apply(args) => plan::run_apply(&cli.global, &args),
        Command::Discover(args) => discover::run(&cli.global, &args),
        Command::Schema(args) => schema(&args),
        Command::Backup(args) => backup::run(&args, &cli.global.state, cli.global.host.as_deref()),
        Command::Agent(args) => agent::run_agent(&cli.global, &args),
        Command::Status(args) => agent::run_status(&cli.global, &args),
        Command::Completions(args) => install::completions(&args),
        Command::Manpages(args) => install::manpages(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "error: {e:#}");
            1
        }
    }
}

fn init_tracing(g: &GlobalArgs, default: &str) {
    let level = if g.quiet {
        "error"
    } else {
        match g.verbose {
            0 => default,
            1 => "debug",
            _ => "trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CINDERBLOCK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // No colour codes in files and journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A second init (tests calling run twice) is harmless: keep the first.
    let _ = match g.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn schema(args: &SchemaArgs) -> anyhow::Result<i32> {
    use anyhow::Context as _;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let schemas = crate::schema::generate();
    for (name, doc) in &schemas {
        let path = args.out.join(name);
        std::fs::write(&path, crate::schema::render(doc))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "wrote {} schemas to {}",
        schemas.len(),
        args.out.display()
    )?;
    Ok(0)
}
