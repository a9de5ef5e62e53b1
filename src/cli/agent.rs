//! `agent` (continuous reconcile) and `status` (what the agent last did,
//! read from the state directory).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::agent::status::{self, Status};
use crate::agent::{self, Config, SourceConfig};
use crate::state::lock::{LOCK_FILE, LockHolder};

use super::GlobalArgs;
use super::plan::host_name;

#[derive(Debug, Args)]
pub(super) struct AgentArgs {
    /// Manifest file or directory to watch (repeatable; default `.`).
    #[arg(
        short = 'f',
        long = "file",
        value_name = "PATH",
        conflicts_with = "git"
    )]
    files: Vec<PathBuf>,
    /// Follow this git repository instead of a directory.
    #[arg(long, value_name = "URL", requires = "branch")]
    git: Option<String>,
    /// The branch to follow.
    #[arg(long, value_name = "BRANCH", requires = "git")]
    branch: Option<String>,
    /// How often to fetch the branch.
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_duration)]
    git_interval: Duration,
    /// The manifest directory inside the repository (default: its root).
    #[arg(long, value_name = "DIR", requires = "git")]
    git_path: Option<PathBuf>,
    /// Re-discover and re-plan this often, to catch drift nobody announced.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    resync: Duration,
    /// Serve /healthz, /readyz, /status and /metrics here (port 0: any free
    /// port, shown in the status).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9470")]
    listen: SocketAddr,
    /// Poll the manifests instead of using inotify (manifests on NFS).
    #[arg(long)]
    poll: bool,
    /// Polling interval with --poll.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    poll_interval: Duration,
    /// Require this token (first line of the file) on POST /hooks/git.
    #[arg(long, value_name = "FILE")]
    webhook_token_file: Option<PathBuf>,
    /// Recreate, empty, volumes that were deleted outside cinderblock.
    #[arg(long)]
    recreate_lost: bool,
    /// Quiet time after the last file change before reconciling.
    #[arg(long, value_name = "DURATION", default_value = "300ms", value_parser = parse_duration)]
    debounce: Duration,
    /// Backups running at once, at most.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    max_backups: u16,
    /// On SIGTERM, how long to wait for the step or backup in flight.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    shutdown_grace: Duration,
}

#[derive(Debug, Args)]
pub(super) struct StatusArgs {
    /// Print the whole status document as JSON.
    #[arg(long)]
    json: bool,
    /// The whole fleet from etcd (needs --etcd): every host, its liveness,
    /// revision and back ends, the placements, the volumes of down hosts.
    #[arg(long)]
    fleet: bool,
}

/// `300ms`, `30s`, `5m`, `1h`, `1d`, or combinations (`1m30s`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "invalid duration {s:?}: expected a number such as 300ms, 30s, 5m, 1h"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            "" => {
                return Err(format!(
                    "invalid duration {s:?}: give a unit (ms, s, m, h, d)"
                ));
            }
            u => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {u:?} (ms, s, m, h, d)"
                ));
            }
        };
        total = total.saturating_add(d);
    }
    Ok(total)
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the webhook token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        bail!("the webhook token file {} is empty", path.display());
    }
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path)
            && m.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(file = %path.display(), "the webhook token file is readable by others; chmod 600 it");
        }
    }
    Ok(token)
}

pub(super) fn run_agent(g: &GlobalArgs, args: &AgentArgs) -> anyhow::Result<i32> {
    for (name, d, min) in [
        ("--resync", args.resync, Duration::from_secs(1)),
        ("--git-interval", args.git_interval, Duration::from_secs(1)),
        (
            "--poll-interval",
            args.poll_interval,
            Duration::from_millis(100),
        ),
    ] {
        if d < min {
            bail!("{name} must be at least {min:?}");
        }
    }
    let source = match (&args.git, &args.branch) {
        (Some(url), Some(branch)) => {
            if let Some(p) = &args.git_path
                && (p.is_absolute()
                    || p.components()
                        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)))
            {
                bail!("--git-path must be a relative path inside the repository, without `..`");
            }
            SourceConfig::Git {
                url: url.clone(),
                branch: branch.clone(),
                interval: args.git_interval,
                path: args.git_path.clone(),
            }
        }
        _ => SourceConfig::Directory {
            paths: if args.files.is_empty() {
                vec![PathBuf::from(".")]
            } else {
                args.files.clone()
            },
            poll: args.poll.then_some(args.poll_interval),
        },
    };
    let webhook_token = args
        .webhook_token_file
        .as_deref()
        .map(read_token)
        .transpose()?;
    let config = Config {
        state_dir: g.state.clone(),
        host: host_name(g),
        source,
        resync: args.resync,
        listen: args.listen,
        webhook_token,
        recreate_lost: args.recreate_lost,
        debounce: args.debounce,
        max_backups: usize::from(args.max_backups),
        shutdown_grace: args.shutdown_grace,
        runner: Arc::new(crate::backup::scheduled::EngineRunner { host: host_name(g) }),
        fleet: super::fleet::etcd_config(g)?,
        migration_portal: g.etcd.migration_portal.clone(),
    };
    if config.fleet.is_some() {
        crate::fleet::keys::check_host(&config.host).map_err(anyhow::Error::msg)?;
    }
    agent::run(config)?;
    Ok(0)
}

/// Whether the agent that wrote `s` still runs: it holds the lock (its
/// details are in the lock file) and its process is alive on this host.
fn running(state: &Path, s: &Status) -> bool {
    let Ok(text) = std::fs::read_to_string(state.join(LOCK_FILE)) else {
        return false;
    };
    let Ok(holder) = serde_json::from_str::<LockHolder>(text.trim()) else {
        return false;
    };
    let here = nix::unistd::gethostname()
        .ok()
        .is_some_and(|h| h.to_string_lossy() == holder.host);
    let alive = i32::try_from(holder.pid)
        .ok()
        .is_some_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok());
    holder.pid == s.agent.pid && here && alive
}

fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(
        || "never".to_owned(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

#[allow(clippy::too_many_lines)] // one block per section of the report
pub(super) fn run_status(g: &GlobalArgs, args: &StatusArgs) -> anyhow::Result<i32> {
    if args.fleet {
        return super::fleet::status(g, args.json);
    }
    let loaded = status::load(&g.state)
        .with_context(|| format!("cannot read {}", status::path(&g.state).display()))?;
    let Some((_, s)) = loaded else {
        bail!(
            "no agent has run with the state directory {} (no {})",
            g.state.display(),
            status::STATUS_FILE
        );
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &s)?;
        writeln!(out)?;
        return Ok(0);
    }
    let live = running(&g.state, &s);
    writeln!(
        out,
        "Agent status from {} (written {})",
        status::path(&g.state).display(),
        when(s.agent.updated_at)
    )?;
    let state = if live {
        format!(
            "running (pid {}, serving http://{})",
            s.agent.pid, s.agent.listen
        )
    } else if s.agent.state == "stopped" {
        format!("not running (pid {} stopped cleanly)", s.agent.pid)
    } else {
        format!("not running (pid {} did not stop cleanly)", s.agent.pid)
    };
    writeln!(
        out,
        "Agent:   {state}; host {}, cinderblock {}",
        s.agent.host, s.agent.version
    )?;
    let src = &s.source;
    match &src.branch {
        Some(b) => writeln!(out, "Source:  git {} branch {b}", src.location)?,
        None => writeln!(out, "Source:  directory {}", src.location)?,
    }
    writeln!(
        out,
        "Applied: {} at {}",
        src.applied_revision.as_deref().unwrap_or("nothing yet"),
        when(src.applied_at)
    )?;
    if let Some(good) = &src.last_good_revision
        && src.applied_revision.as_ref() != Some(good)
    {
        writeln!(out, "In force: {good} (not fully applied yet)")?;
    }
    if let Some(bad) = &src.bad_revision {
        writeln!(
            out,
            "Refused: {} since {}:",
            bad.revision,
            when(Some(bad.since))
        )?;
        for e in &bad.errors {
            writeln!(out, "  {e}")?;
        }
    }
    if let Some(e) = &src.fetch_error {
        writeln!(out, "Fetch failing: {e}")?;
    }
    if let Some(r) = &s.last_reconcile {
        writeln!(
            out,
            "Last reconcile: {} at {} ({} ms; {}): {} added, {} changed, {} destroyed, {} forgotten",
            r.result,
            when(r.finished_at),
            r.duration_ms,
            r.triggers.join(", "),
            r.added,
            r.changed,
            r.destroyed,
            r.forgotten
        )?;
        if let Some(e) = &r.error {
            writeln!(out, "  error: {e}")?;
        }
        for e in &r.plan_errors {
            writeln!(out, "  plan error: {e}")?;
        }
        for n in &r.notes {
            writeln!(out, "  note: {n}")?;
        }
    }
    writeln!(out, "Last success: {}", when(s.last_success))?;
    for c in &s.conditions {
        let msg = if c.message.is_empty() {
            String::new()
        } else {
            format!(": {}", c.message)
        };
        writeln!(
            out,
            "Condition {}={} ({}){msg}",
            c.type_, c.status, c.reason
        )?;
    }
    if let Some(f) = &s.fleet {
        let state = if f.available {
            "available".to_owned()
        } else {
            format!(
                "UNAVAILABLE ({})",
                f.reason.as_deref().unwrap_or("etcd does not answer")
            )
        };
        writeln!(
            out,
            "Fleet:   etcd at {} (prefix {}): {state}",
            f.endpoints, f.prefix
        )?;
        writeln!(
            out,
            "  placer {}{}; hosts up: {}; down: {}; {} placement(s)",
            f.leader.as_deref().unwrap_or("none elected"),
            if f.is_leader { " (this agent)" } else { "" },
            if f.hosts_up.is_empty() {
                "none".to_owned()
            } else {
                f.hosts_up.join(", ")
            },
            if f.hosts_down.is_empty() {
                "none".to_owned()
            } else {
                f.hosts_down.join(", ")
            },
            f.placements
        )?;
        for v in &f.unavailable_volumes {
            writeln!(out, "  unavailable: {v}")?;
        }
    }
    if !s.objects.is_empty() {
        writeln!(out, "\nObjects:")?;
        for o in &s.objects {
            let place = match (&o.backend, o.size) {
                (Some(b), Some(size)) => {
                    format!("{b}, {}", crate::manifest::values::format_bytes_exact(size))
                }
                _ => String::new(),
            };
            let msg = if o.message.is_empty() {
                String::new()
            } else {
                format!("  {}", o.message)
            };
            writeln!(out, "  {:<28} {:<9} {place}{msg}", o.address, o.state)?;
        }
    }
    for d in &s.drift {
        writeln!(out, "Drift: {}: {}", d.address, d.message)?;
    }
    if !s.backups.policies.is_empty() {
        writeln!(out, "\nBackups:")?;
        for p in &s.backups.policies {
            let next = p
                .error
                .clone()
                .unwrap_or_else(|| format!("next {}", when(p.next_run)));
            writeln!(
                out,
                "  policy {} \"{}\" {}: {next}; volumes: {}",
                p.name,
                p.schedule,
                p.timezone,
                p.volumes.join(", ")
            )?;
            for (what, c) in [("verify", &p.verify), ("drill", &p.drill)] {
                let Some(c) = c else { continue };
                let next = c
                    .error
                    .clone()
                    .unwrap_or_else(|| format!("next {}", when(c.next_run)));
                let running = if c.running { "; running" } else { "" };
                writeln!(
                    out,
                    "    {what} \"{}\": last passed {}; {next}{running}{}",
                    c.schedule,
                    when(c.last_success),
                    c.last_result
                        .as_deref()
                        .map(|r| format!("; last run: {r}"))
                        .unwrap_or_default()
                )?;
                for problem in &c.problems {
                    writeln!(out, "      problem: {problem}")?;
                }
            }
        }
        for v in &s.backups.volumes {
            let last = match (&v.last_success, &v.last_backup_id) {
                (Some(t), Some(id)) => format!("last {id} at {}", when(Some(*t))),
                _ => "no backup yet".to_owned(),
            };
            let err = v
                .last_error
                .as_deref()
                .map(|e| format!("; failing ({}x): {e}", v.failures))
                .unwrap_or_default();
            let running = if v.running { "; running" } else { "" };
            let warning = v
                .warning
                .as_deref()
                .map(|w| format!("; warning: {w}"))
                .unwrap_or_default();
            writeln!(out, "  volume {}: {last}{running}{err}{warning}", v.volume)?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("5").unwrap_err().contains("give a unit"));
        assert!(parse_duration("5x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("m").is_err());
    }
}
