//! Running host commands: the only module that spawns processes.
//!
//! Owns: resolving tool names to absolute paths, spawning, draining output,
//! timeouts, and turning a failed command into an [`ExecError`] that a person can
//! act on (argv, exit status or signal, trimmed stderr).
//!
//! Invariants:
//! - A tool is looked up by bare name in a fixed list of directories
//!   ([`SEARCH_DIRS`]), once per [`Exec`]; `$PATH` of the caller is never used,
//!   so a hostile or odd environment cannot substitute a binary.
//! - Children get a clean environment: only `LC_ALL=C` (stable, parseable
//!   messages) and a fixed `PATH` (for tools that exec helpers, such as
//!   `mount` → `mount.nfs`), plus what a caller sets explicitly with
//!   [`Cmd::env`].
//! - Argument vectors only, never a shell: names can't be re-split or expanded.
//! - stdin is `/dev/null`; stdout and stderr are drained by two threads while we
//!   wait, so a child that writes a lot to either pipe can't deadlock on a full
//!   pipe buffer (ripgrep's `process.rs` lesson).
//! - Every run has a timeout. The child is started in its own process group and
//!   the whole group is killed (`SIGKILL`) on timeout, so helpers it forked die
//!   with it and release the pipes.
//!
//! Must not: parse any tool's output (parsers live next to their domain and are
//! pure functions over bytes), retry (the caller decides, see
//! [`ExecError::is_retryable`]), or log at more than `debug` for a success.
//!
//! Rejected alternative: a `tokio::process` runner. The storage tools we call
//! are short and the agent runs one step at a time; threads keep this module
//! usable from synchronous code and tests without a runtime.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Directories searched for tools, in order.
pub const SEARCH_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// `PATH` given to every child (same directories as [`SEARCH_DIRS`]).
pub const CHILD_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Timeout used when a [`Cmd`] does not set one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// How a finished (or killed) process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// Exited with this code.
    Exit(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl Termination {
    fn from_status(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Self::Exit(code),
            (None, Some(sig)) => Self::Signal(sig),
            // Neither code nor signal: can't happen for a reaped child on Linux;
            // report it as an impossible exit code rather than panicking.
            (None, None) => Self::Exit(-1),
        }
    }
}

impl fmt::Display for Termination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exit(code) => write!(f, "exit status {code}"),
            Self::Signal(sig) => {
                let name = nix::sys::signal::Signal::try_from(*sig)
                    .map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_owned());
                write!(f, "{name}")
            }
        }
    }
}

/// Errors from running a host command.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The tool name was empty or contained a `/` (only bare names are looked up).
    #[error("invalid tool name {tool:?}: expected a bare program name")]
    InvalidTool {
        /// The name given.
        tool: String,
    },
    /// The tool is not installed in any of the search directories.
    #[error("tool `{tool}` not found in {dirs}")]
    ToolNotFound {
        /// The name looked up.
        tool: String,
        /// The directories searched, `:`-separated.
        dirs: String,
    },
    /// The process could not be started.
    #[error("could not start `{command}`")]
    Spawn {
        /// The command line, for display.
        command: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Waiting for the process or reading its output failed.
    #[error("lost track of `{command}`")]
    Wait {
        /// The command line, for display.
        command: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The process ended with a status the caller did not accept.
    #[error("`{command}` failed with {termination}{}", stderr_suffix(stderr))]
    Failed {
        /// The full argument vector, tool path first.
        argv: Vec<String>,
        /// The command line, for display.
        command: String,
        /// Exit code or signal.
        termination: Termination,
        /// Standard error, trimmed.
        stderr: String,
        /// Standard output (some tools explain failures there).
        stdout: Vec<u8>,
    },
    /// The process ran past its timeout and was killed.
    #[error(
        "`{command}` timed out after {timeout:?} and was killed{}",
        stderr_suffix(stderr)
    )]
    Timeout {
        /// The full argument vector, tool path first.
        argv: Vec<String>,
        /// The command line, for display.
        command: String,
        /// The limit that was exceeded.
        timeout: Duration,
        /// What it had written to stderr by then, trimmed.
        stderr: String,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

impl ExecError {
    /// Whether running the same command again may succeed without a change on
    /// our side: a timeout may be a slow device; everything else is permanent
    /// until something changes.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }

    /// The captured stderr, if the command ran.
    pub fn stderr(&self) -> Option<&str> {
        match self {
            Self::Failed { stderr, .. } | Self::Timeout { stderr, .. } => Some(stderr),
            _ => None,
        }
    }
}

/// What a secret argument shows as.
pub const REDACTED: &str = "<redacted>";

/// A command to run: a tool name, arguments, and limits. Built by value.
/// Arguments added with [`Cmd::secret`] are shown as `<redacted>` in logs,
/// errors, [`Output::argv`] and `Debug`.
#[derive(Clone)]
pub struct Cmd {
    tool: String,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    timeout: Duration,
    ok_codes: Vec<i32>,
    secret: Vec<usize>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cmd")
            .field("tool", &self.tool)
            .field("args", &self.shown_args())
            .field("timeout", &self.timeout)
            .field("ok_codes", &self.ok_codes)
            .finish_non_exhaustive()
    }
}

impl Cmd {
    /// A command for the tool `tool` (a bare name such as `"mount"`).
    pub fn new(tool: &str) -> Self {
        Self {
            tool: tool.to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            ok_codes: vec![0],
            secret: Vec::new(),
        }
    }

    /// Appends one argument that must never be shown (a password): logs,
    /// errors and [`Output::argv`] say `<redacted>` in its place.
    #[must_use]
    pub fn secret(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.secret.push(self.args.len());
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// The arguments as they may be shown.
    fn shown_args(&self) -> Vec<String> {
        self.args
            .iter()
            .enumerate()
            .map(|(i, a)| {
                if self.secret.contains(&i) {
                    REDACTED.to_owned()
                } else {
                    a.to_string_lossy().into_owned()
                }
            })
            .collect()
    }

    /// Appends one argument.
    #[must_use]
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends arguments.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Adds one environment variable on top of the clean environment.
    #[must_use]
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Sets the timeout (default [`DEFAULT_TIMEOUT`]).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Exit codes that count as success (default `[0]`), for tools that use
    /// other codes for "nothing to do".
    #[must_use]
    pub fn ok_codes(mut self, codes: &[i32]) -> Self {
        self.ok_codes = codes.to_vec();
        self
    }

    /// The tool name.
    pub fn tool(&self) -> &str {
        &self.tool
    }

    /// The arguments (without the tool).
    pub fn arguments(&self) -> &[OsString] {
        &self.args
    }
}

/// What a successful run produced.
#[derive(Debug, Clone)]
pub struct Output {
    /// The full argument vector, tool path first.
    pub argv: Vec<String>,
    /// How it ended (one of the accepted codes).
    pub termination: Termination,
    /// Standard output, as bytes (parsers take bytes).
    pub stdout: Vec<u8>,
    /// Standard error, as bytes (warnings of successful runs).
    pub stderr: Vec<u8>,
    /// Wall time.
    pub elapsed: Duration,
}

/// A command runner with its own tool search directories and resolution cache.
#[derive(Debug)]
pub struct Exec {
    dirs: Vec<PathBuf>,
    resolved: Mutex<BTreeMap<String, PathBuf>>,
}

/// Runs commands: the host's [`Exec`], or a fake in tests. Whatever needs a
/// command takes a runner, so tests inject fakes and only [`Exec`] spawns.
pub trait Runner: Send + Sync {
    /// Runs `cmd` to completion (see [`Exec::run`]).
    fn run(&self, cmd: &Cmd) -> Result<Output, ExecError>;
}

impl Runner for Exec {
    fn run(&self, cmd: &Cmd) -> Result<Output, ExecError> {
        Exec::run(self, cmd)
    }
}

impl Exec {
    /// The host runner, searching [`SEARCH_DIRS`]. One per process.
    pub fn host() -> &'static Exec {
        static HOST: OnceLock<Exec> = OnceLock::new();
        HOST.get_or_init(|| Exec::with_search_dirs(SEARCH_DIRS.iter().map(PathBuf::from)))
    }

    /// A runner searching other directories: for tests with fake tools, and the
    /// lab.
    pub fn with_search_dirs(dirs: impl IntoIterator<Item = PathBuf>) -> Self {
        Self {
            dirs: dirs.into_iter().collect(),
            resolved: Mutex::new(BTreeMap::new()),
        }
    }

    /// The absolute path of `tool`, looked up once and cached.
    pub fn resolve(&self, tool: &str) -> Result<PathBuf, ExecError> {
        if tool.is_empty() || tool.contains('/') || tool.contains('\0') {
            return Err(ExecError::InvalidTool {
                tool: tool.to_owned(),
            });
        }
        // A poisoned lock only means another thread panicked mid-insert of a
        // plain map; the map is still consistent, so keep using it.
        let mut cache = self
            .resolved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(path) = cache.get(tool) {
            return Ok(path.clone());
        }
        let found = self
            .dirs
            .iter()
            .map(|dir| dir.join(tool))
            .find(|candidate| is_executable(candidate));
        match found {
            Some(path) => {
                cache.insert(tool.to_owned(), path.clone());
                Ok(path)
            }
            None => Err(ExecError::ToolNotFound {
                tool: tool.to_owned(),
                dirs: self
                    .dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            }),
        }
    }

    /// Runs `cmd` to completion; a status outside its accepted codes, a signal
    /// or a timeout is an error.
    pub fn run(&self, cmd: &Cmd) -> Result<Output, ExecError> {
        let program = self.resolve(&cmd.tool)?;
        let argv: Vec<String> = std::iter::once(program.to_string_lossy().into_owned())
            .chain(cmd.shown_args())
            .collect();
        let command = display_argv(&argv);
        let span = tracing::debug_span!("exec", command = %command);
        let _entered = span.enter();

        // The one place a process is created (see clippy.toml).
        #[allow(clippy::disallowed_methods)]
        let mut child_cmd = std::process::Command::new(&program);
        child_cmd
            .args(&cmd.args)
            .env_clear()
            .env("LC_ALL", "C")
            .env("PATH", CHILD_PATH)
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);

        let started = Instant::now();
        let mut child = child_cmd.spawn().map_err(|source| ExecError::Spawn {
            command: command.clone(),
            source,
        })?;
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());

        let waited = wait_with_timeout(&mut child, cmd.timeout);
        // Readers end once every holder of the pipes' write ends is gone; after
        // a group kill that is promptly.
        let stdout = join_drain(stdout);
        let stderr = join_drain(stderr);
        let elapsed = started.elapsed();
        let wait_err = |source| ExecError::Wait {
            command: command.clone(),
            source,
        };
        let status = waited.map_err(wait_err)?;
        let stdout = stdout.map_err(wait_err)?;
        let stderr = stderr.map_err(wait_err)?;

        let Some(status) = status else {
            tracing::debug!(?elapsed, "killed after timeout");
            return Err(ExecError::Timeout {
                argv,
                command,
                timeout: cmd.timeout,
                stderr: trimmed(&stderr),
            });
        };
        let termination = Termination::from_status(status);
        tracing::debug!(%termination, ?elapsed, "finished");
        match termination {
            Termination::Exit(code) if cmd.ok_codes.contains(&code) => Ok(Output {
                argv,
                termination,
                stdout,
                stderr,
                elapsed,
            }),
            _ => Err(ExecError::Failed {
                argv,
                command,
                termination,
                stderr: trimmed(&stderr),
                stdout,
            }),
        }
    }
}

/// Runs `cmd` with the host runner ([`Exec::host`]).
pub fn run(cmd: &Cmd) -> Result<Output, ExecError> {
    Exec::host().run(cmd)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

type Drain = Option<JoinHandle<io::Result<Vec<u8>>>>;

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Drain {
    pipe.map(|mut pipe| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            pipe.read_to_end(&mut buf)?;
            Ok(buf)
        })
    })
}

fn join_drain(handle: Drain) -> io::Result<Vec<u8>> {
    match handle {
        None => Ok(Vec::new()),
        Some(h) => h
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("output reader thread panicked"))),
    }
}

/// Waits for the child; `Ok(None)` when it was killed for running too long.
///
/// Polls `try_wait` with a short growing sleep instead of a waiter thread: the
/// child stays un-reaped until we see it exit, so the pid (and process group)
/// we kill can't have been reused by another process.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            kill_group(child);
            child.wait()?;
            return Ok(None);
        }
        thread::sleep(nap.min(deadline - now));
        nap = (nap * 2).min(Duration::from_millis(20));
    }
}

fn kill_group(child: &mut Child) {
    let pid = i32::try_from(child.id()).ok();
    let group_killed = pid.is_some_and(|pid| {
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .is_ok()
    });
    if !group_killed {
        // Fall back to the child alone; an error here means it already exited.
        let _ = child.kill();
    }
}

fn trimmed(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

/// Renders an argv for messages: words with spaces or quotes are single-quoted.
/// Display only; it is never fed to a shell.
pub fn display_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@+%".contains(&b))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_with_clean_environment_and_captures_stdout() {
        // The test process has HOME, USER, ... set; none may reach the child.
        let out = run(&Cmd::new("env")).expect("env runs");
        let text = String::from_utf8(out.stdout).unwrap();
        let mut vars: Vec<&str> = text.lines().collect();
        vars.sort_unstable();
        assert_eq!(vars, ["LC_ALL=C", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
        assert_eq!(out.termination, Termination::Exit(0));
        assert!(
            out.argv[0].starts_with('/'),
            "absolute tool path: {:?}",
            out.argv
        );
    }

    #[test]
    fn arguments_are_not_shell_words() {
        let out = run(&Cmd::new("printf").args(["%s|", "a b", "$HOME", "*"])).unwrap();
        assert_eq!(out.stdout, b"a b|$HOME|*|");
    }

    #[test]
    fn non_zero_exit_keeps_argv_status_and_trimmed_stderr() {
        let err = run(&Cmd::new("ls").args(["--", "/nonexistent/cinderblock"])).unwrap_err();
        let ExecError::Failed {
            argv,
            termination,
            stderr,
            ..
        } = &err
        else {
            panic!("expected Failed, got {err:?}");
        };
        assert_eq!(argv[1..], ["--", "/nonexistent/cinderblock"]);
        assert_eq!(*termination, Termination::Exit(2));
        assert!(stderr.contains("No such file or directory"), "{stderr}");
        assert_eq!(stderr, stderr.trim());
        let msg = err.to_string();
        assert!(
            msg.contains("ls -- /nonexistent/cinderblock` failed with exit status 2: "),
            "{msg}"
        );
        assert!(!err.is_retryable());
    }

    #[test]
    fn accepted_codes_are_success() {
        let out = run(&Cmd::new("false").ok_codes(&[0, 1])).unwrap();
        assert_eq!(out.termination, Termination::Exit(1));
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let started = Instant::now();
        // The shell forks `sleep`, which holds stdout open: without a group kill
        // the reader would wait the full 30 s.
        let err = run(&Cmd::new("sh")
            .args(["-c", "echo starting >&2; sleep 30; echo never"])
            .timeout(Duration::from_millis(300)))
        .unwrap_err();
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
        let ExecError::Timeout {
            stderr, timeout, ..
        } = &err
        else {
            panic!("expected Timeout, got {err:?}");
        };
        assert_eq!(stderr, "starting");
        assert_eq!(*timeout, Duration::from_millis(300));
        assert!(err.is_retryable());
        assert!(
            err.to_string()
                .contains("timed out after 300ms and was killed: starting")
        );
    }

    #[test]
    fn signal_is_reported_by_name() {
        let err = run(&Cmd::new("sh").args(["-c", "kill -TERM $$"])).unwrap_err();
        assert!(err.to_string().ends_with("failed with SIGTERM"), "{err}");
    }

    #[test]
    fn chatty_child_does_not_deadlock() {
        // 4 MiB on each pipe: far beyond the 64 KiB pipe buffer.
        let script = "head -c 4194304 /dev/zero; head -c 4194304 /dev/zero >&2";
        let out = run(&Cmd::new("sh")
            .args(["-c", script])
            .timeout(Duration::from_secs(30)))
        .unwrap();
        assert_eq!(out.stdout.len(), 4 << 20);
        assert_eq!(out.stderr.len(), 4 << 20);
    }

    #[test]
    fn missing_tool_names_the_tool_and_dirs() {
        let err = run(&Cmd::new("cinderblock-no-such-tool")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tool `cinderblock-no-such-tool` not found in /usr/sbin:/usr/bin:/sbin:/bin"
        );
        let err = run(&Cmd::new("../bin/ls")).unwrap_err();
        assert!(matches!(err, ExecError::InvalidTool { .. }), "{err:?}");
    }

    #[test]
    fn display_quotes_odd_words() {
        let argv = ["/bin/x", "a b", "it's", ""].map(String::from);
        assert_eq!(display_argv(&argv), r"/bin/x 'a b' 'it'\''s' ''");
    }
}
