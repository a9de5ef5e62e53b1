//! The VM storage lab harness: one qemu boot per [`Scenario`].
//!
//! The host has no device-mapper and no configfs, so everything that needs the real
//! kernel runs inside a throwaway VM: a Debian cloud kernel under `qemu -accel tcg`
//! with the initramfs from `tests/lab/build.sh` (built once per test binary, cached
//! under `target/lab/`). See `/work/shared/LAB.md` for what was proven and why.
//!
//! A run, in `target/lab/runs/<scenario>/` (replaced by the next run of the same
//! scenario, so the last one can always be inspected):
//! * `in/` is packed as a tar written raw onto a virtio disk (serial `lab-in`):
//!   `steps.tsv`, `steps/<i>.sh`, the scenario's `files/`, and `bin/cinderblock` with
//!   `lib/` (its ldd libraries). The cloud kernel has no 9p; a raw tar needs nothing.
//! * `pv1.img`, `pv2.img`: sparse scratch disks (4 GiB unless [`Scenario::disks`]
//!   says), `/dev/vda` and `/dev/vdb`.
//! * `out.img`: the guest writes a tar of its `/results` onto it; extracted to `out/`.
//! * `console.log`: the serial console. Disk images are deleted after the run.
//!
//! Invariants: a test never skips. If qemu, the kernel or the build is missing the
//! test fails and says how to fix it; a VM that hangs is killed at the scenario's
//! timeout and the test fails with the console tail.
#![allow(clippy::disallowed_methods)] // a test harness: it runs qemu, tar, ldd and build.sh on the host
#![allow(clippy::print_stderr)] // progress lines for the test runner (shown with --nocapture or on failure)

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const FIX_HINT: &str = "install the lab's host packages with `bash tests/lab/install-deps.sh` (as root), \
     then run `cargo test --test lab -- --ignored --test-threads=1`";

/// Kernel and initramfs paths, built once per test binary.
struct Image {
    kernel: PathBuf,
    initrd: PathBuf,
    lab_dir: PathBuf,
}

static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
/// The variant with python3 and targetcli-fb (`LAB_TARGETCLI=1`).
static IMAGE_TARGETCLI: OnceLock<Result<Image, String>> = OnceLock::new();

fn image(targetcli: bool) -> &'static Image {
    let cell = if targetcli { &IMAGE_TARGETCLI } else { &IMAGE };
    match cell.get_or_init(|| build_image(targetcli)) {
        Ok(image) => image,
        Err(e) => panic!("the VM lab cannot start: {e}"),
    }
}

/// `target/lab`, next to cargo's own `target/tmp` (so `CARGO_TARGET_DIR` is honoured).
fn lab_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("lab")
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

fn build_image(targetcli: bool) -> Result<Image, String> {
    for tool in ["qemu-system-x86_64", "tar", "ldd", "bash"] {
        if !on_path(tool) {
            return Err(format!("`{tool}` is not on PATH: {FIX_HINT}"));
        }
    }
    let lab_dir = lab_dir();
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(repo_root().join("tests/lab/build.sh"))
        .arg(&lab_dir)
        .env("LAB_TARGETCLI", if targetcli { "1" } else { "0" })
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run tests/lab/build.sh: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "tests/lab/build.sh failed ({}):\n{stderr}\n{FIX_HINT}",
            out.status
        ));
    }
    let value = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(PathBuf::from)
            .ok_or_else(|| format!("tests/lab/build.sh printed no {key}:\n{stdout}\n{stderr}"))
    };
    let image = Image {
        kernel: value("KERNEL=")?,
        initrd: value("INITRD=")?,
        lab_dir,
    };
    let size = fs::metadata(&image.initrd).map_or(0, |m| m.len());
    eprintln!(
        "lab: image ready in {:.1}s: {} + {} ({} KiB)",
        started.elapsed().as_secs_f64(),
        image.kernel.display(),
        image.initrd.display(),
        size >> 10
    );
    Ok(image)
}

/// Whether a failing step ends the scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Must exit 0; otherwise the scenario stops and [`Scenario::run`] fails the test.
    Must,
    /// Any exit code is recorded for the test to assert on; the scenario goes on.
    Any,
}

struct StepSpec {
    name: String,
    script: String,
    mode: Mode,
    timeout_secs: u32,
}

/// A scenario: files and shell steps run in order inside one fresh VM.
///
/// Steps are busybox `sh` scripts run with `set -e` in the directory holding the
/// scenario's files; `$OUT` is a directory whose files come back in
/// [`Outcome::file`]; helpers from `tests/lab/guest/lib.sh` (`sha`, `sha_head`,
/// `wait_for`, `put`, `configfs_dump`) are available. `/dev/vda` and `/dev/vdb` are
/// blank disks (4 GiB unless [`Scenario::disks`] says); `cinderblock` is on `PATH`.
pub struct Scenario {
    name: String,
    files: Vec<(String, Vec<u8>)>,
    steps: Vec<StepSpec>,
    timeout: Duration,
    targetcli: bool,
    /// Apparent sizes of `/dev/vda` and `/dev/vdb` (sparse files on the host).
    disks: (u64, u64),
}

impl Scenario {
    /// A new scenario; `name` names the run directory (`[a-z0-9_-]`).
    pub fn new(name: &str) -> Self {
        assert!(
            !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'_'
                    || b == b'-'),
            "scenario name {name:?}: use [a-z0-9_-]"
        );
        Scenario {
            name: name.to_owned(),
            files: Vec::new(),
            steps: Vec::new(),
            timeout: Duration::from_secs(300),
            targetcli: false,
            disks: (DEFAULT_DISK, DEFAULT_DISK),
        }
    }

    /// Boots the image with python3 and targetcli-fb in it (`targetcli` on
    /// `PATH`, about 2 s per call), built as its own variant so the other
    /// scenarios do not carry it.
    pub fn with_targetcli(mut self) -> Self {
        self.targetcli = true;
        self
    }

    /// The apparent sizes of `/dev/vda` and `/dev/vdb` (default 4 GiB each):
    /// sparse files on the host, so a site's declared terabytes cost only
    /// what the guest writes.
    pub fn disks(mut self, vda: u64, vdb: u64) -> Self {
        self.disks = (vda, vdb);
        self
    }

    /// A file for the guest, relative to the steps' working directory.
    pub fn file(mut self, path: &str, contents: impl Into<Vec<u8>>) -> Self {
        assert!(
            !path.starts_with('/') && !path.split('/').any(|c| c == ".." || c.is_empty()),
            "scenario file {path:?} must be a relative path"
        );
        self.files.push((path.to_owned(), contents.into()));
        self
    }

    /// A step that must exit 0; a failure stops the scenario and fails the test.
    pub fn step(self, name: &str, script: &str) -> Self {
        self.push(name, script, Mode::Must)
    }

    /// A step whose exit code the test asserts itself (e.g. an expected refusal).
    pub fn step_any(self, name: &str, script: &str) -> Self {
        self.push(name, script, Mode::Any)
    }

    /// The time limit of the step added last (default 120 s): for a long
    /// loop under TCG on a loaded host.
    pub fn step_limit(mut self, limit: Duration) -> Self {
        if let Some(last) = self.steps.last_mut() {
            last.timeout_secs = u32::try_from(limit.as_secs()).unwrap_or(u32::MAX);
        }
        self
    }

    /// The whole VM's time limit (default 300 s); qemu is killed when it is reached.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn push(mut self, name: &str, script: &str, mode: Mode) -> Self {
        assert!(
            !name.is_empty() && !name.contains(char::is_whitespace),
            "step name {name:?} must be one word"
        );
        assert!(
            self.steps.iter().all(|s| s.name != name),
            "step name {name:?} used twice"
        );
        self.steps.push(StepSpec {
            name: name.to_owned(),
            script: script.to_owned(),
            mode,
            timeout_secs: 120,
        });
        self
    }

    /// Boots the VM, runs the steps, and returns what came back. Fails the test (with
    /// the step's output and the console tail) when the lab cannot start, the VM times
    /// out, or a [`Scenario::step`] exits non-zero.
    pub fn run(self) -> Outcome {
        let image = image(self.targetcli);
        let run_dir = image.lab_dir.join("runs").join(&self.name);
        let outcome = self
            .run_in(image, &run_dir)
            .unwrap_or_else(|e| panic!("lab scenario {}: {e}", self.name));
        if let Some(bad) = outcome
            .steps
            .iter()
            .find(|s| s.mode == Mode::Must && s.rc != Some(0))
        {
            panic!("{}", outcome.report(&format!("step {} failed", bad.name)));
        }
        assert!(
            outcome.steps.iter().all(|s| s.rc.is_some()),
            "{}",
            outcome.report("the scenario did not run to its end")
        );
        outcome
    }

    fn run_in(&self, image: &Image, run_dir: &Path) -> Result<Outcome, String> {
        if run_dir.exists() {
            fs::remove_dir_all(run_dir).map_err(|e| io("cannot clear the last run", &e))?;
        }
        self.stage(&run_dir.join("in"))
            .map_err(|e| io("cannot stage the scenario", &e))?;
        make_disks(run_dir, self.disks)?;
        let boot = boot_qemu(image, run_dir, self.timeout);
        // the disk images are large (if sparse) and worthless after the run
        let untarred = if boot.is_ok() {
            untar_results(run_dir)
        } else {
            Err(String::new())
        };
        for name in ["in.img", "pv1.img", "pv2.img", "out.img"] {
            let _ = fs::remove_file(run_dir.join(name));
        }
        let boot = boot?;
        let mut outcome = Outcome {
            scenario: self.name.clone(),
            run_dir: run_dir.to_owned(),
            console: boot.console,
            boot: boot.ready,
            wall: boot.wall,
            steps: Vec::new(),
            files: BTreeMap::new(),
        };
        if boot.timed_out {
            let why = format!(
                "the VM did not finish within {:?} and was killed",
                self.timeout
            );
            return Err(outcome.report(&why));
        }
        if !untarred?.success() {
            let why = format!(
                "the guest wrote no results (qemu exit: {}; qemu stderr: {})",
                boot.status,
                boot.qemu_stderr.trim()
            );
            return Err(outcome.report(&why));
        }
        let out_dir = run_dir.join("out");
        for (i, spec) in self.steps.iter().enumerate() {
            let dir = out_dir.join("steps").join(format!("{i:03}"));
            let text = |f: &str| {
                fs::read(dir.join(f))
                    .ok()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
            };
            outcome.steps.push(StepResult {
                name: spec.name.clone(),
                mode: spec.mode,
                rc: text("rc").and_then(|s| s.trim().parse().ok()),
                stdout: text("stdout").unwrap_or_default(),
                stderr: text("stderr").unwrap_or_default(),
                secs: text("secs")
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0.0),
            });
        }
        collect_files(&out_dir.join("files"), "", &mut outcome.files)
            .map_err(|e| io("reading result files", &e))?;
        if let Ok(dmesg) = fs::read(out_dir.join("dmesg.txt")) {
            outcome.files.insert("dmesg.txt".to_owned(), dmesg);
        }
        eprintln!(
            "lab: {} ran {} steps: boot to ready {}, wall {:.1}s",
            self.name,
            outcome.steps.len(),
            outcome
                .boot
                .map_or("never".to_owned(), |b| format!("{:.1}s", b.as_secs_f64())),
            outcome.wall.as_secs_f64()
        );
        Ok(outcome)
    }

    fn stage(&self, dir: &Path) -> std::io::Result<()> {
        fs::create_dir_all(dir.join("steps"))?;
        fs::create_dir_all(dir.join("files"))?;
        let mut tsv = String::new();
        for (i, s) in self.steps.iter().enumerate() {
            let mode = match s.mode {
                Mode::Must => "must",
                Mode::Any => "any",
            };
            let _ = writeln!(tsv, "{i:03} {} {mode} {}", s.name, s.timeout_secs);
            fs::write(dir.join("steps").join(format!("{i:03}.sh")), &s.script)?;
        }
        fs::write(dir.join("steps.tsv"), tsv)?;
        for (path, contents) in &self.files {
            let p = dir.join("files").join(path);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(p, contents)?;
        }
        stage_binary(dir)
    }
}

/// Ships the freshly built `cinderblock` and the shared libraries `ldd` resolves for it.
fn stage_binary(dir: &Path) -> std::io::Result<()> {
    let exe = Path::new(env!("CARGO_BIN_EXE_cinderblock"));
    fs::create_dir_all(dir.join("bin"))?;
    fs::create_dir_all(dir.join("lib"))?;
    fs::copy(exe, dir.join("bin/cinderblock"))?;
    let ldd = Command::new("ldd").arg(exe).output()?;
    for lib in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)"
        if let Some(path) = lib
            .split("=> ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
        {
            let path = Path::new(path);
            if let Some(name) = path.file_name() {
                fs::copy(path, dir.join("lib").join(name))?;
            }
        }
    }
    Ok(())
}

/// The scratch disks' apparent size unless a scenario sets them.
const DEFAULT_DISK: u64 = 4 << 30;

fn io(what: &str, e: &std::io::Error) -> String {
    format!("{what}: {e}")
}

/// `in.img` (the staged scenario as a raw tar, padded to whole MiB for the block
/// device), two sparse scratch disks (4 GiB unless the scenario says), and an
/// empty `out.img` for the results.
fn make_disks(run_dir: &Path, (vda, vdb): (u64, u64)) -> Result<(), String> {
    let disk = |n: &str| run_dir.join(n);
    let tar = Command::new("tar")
        .arg("-cf")
        .arg(disk("in.img"))
        .arg("-C")
        .arg(run_dir.join("in"))
        .arg(".")
        .status()
        .map_err(|e| io("cannot run tar", &e))?;
    if !tar.success() {
        return Err(format!("tar of the scenario failed: {tar}"));
    }
    let in_len = fs::metadata(disk("in.img"))
        .map_err(|e| io("in.img", &e))?
        .len();
    for (name, len) in [
        ("in.img", in_len.div_ceil(1 << 20) << 20),
        ("pv1.img", vda),
        ("pv2.img", vdb),
        ("out.img", 256 << 20),
    ] {
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(disk(name))
            .and_then(|f| f.set_len(len))
            .map_err(|e| io(name, &e))?;
    }
    Ok(())
}

/// What one qemu run left behind.
struct Boot {
    status: std::process::ExitStatus,
    timed_out: bool,
    console: String,
    qemu_stderr: String,
    /// Host time from spawning qemu to the guest's `LAB: ready` line.
    ready: Option<Duration>,
    wall: Duration,
}

fn boot_qemu(image: &Image, run_dir: &Path, timeout: Duration) -> Result<Boot, String> {
    let drive = |id: &str, file: &str, serial: &str, cache: &str| {
        [
            "-drive".to_owned(),
            format!(
                "if=none,id={id},file={},format=raw{cache}",
                run_dir.join(file).display()
            ),
            "-device".to_owned(),
            // -drive ...,serial= is gone in qemu 7.2: the serial goes on the device
            format!("virtio-blk-pci,drive={id},serial={serial}"),
        ]
    };
    let mut qemu = Command::new("qemu-system-x86_64");
    // TCG: KVM hangs on these hosts. One qemu64 vCPU is the fastest on 2 host cores:
    // a second vCPU competes with qemu's I/O thread, and -cpu max makes glibc pick
    // AVX2/SHA paths that TCG emulates slowly (LAB.md, section 2).
    qemu.args(["-accel", "tcg", "-cpu", "qemu64", "-smp", "1", "-m", "2048"])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        // no_timer_check: under TCG on a loaded host the kernel's IO-APIC
        // timer probe can miss its ticks and panic at boot ("IO-APIC +
        // timer doesn't work", seen once in backup-eight); the check is
        // for broken hardware, not for qemu's emulated PIT.
        .args(["-append", "console=ttyS0 quiet panic=-1 no_timer_check"])
        .args(drive("d1", "pv1.img", "lab-pv1", ",cache=unsafe"))
        .args(drive("d2", "pv2.img", "lab-pv2", ",cache=unsafe"))
        .args(drive("d3", "in.img", "lab-in", ""))
        .args(drive("d4", "out.img", "lab-out", ""))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    let started = Instant::now();
    let mut child = qemu
        .spawn()
        .map_err(|e| format!("cannot start qemu-system-x86_64: {e}; {FIX_HINT}"))?;
    let console_file =
        fs::File::create(run_dir.join("console.log")).map_err(|e| io("console.log", &e))?;
    let ready_at: Arc<Mutex<Option<Duration>>> = Arc::default();
    let mut stdout = child.stdout.take().ok_or("qemu stdout")?;
    let mut stderr = child.stderr.take().ok_or("qemu stderr")?;
    // Both pipes are drained by threads so that qemu can never block on a full pipe.
    let reader = {
        let ready_at = Arc::clone(&ready_at);
        let verbose = std::env::var_os("LAB_VERBOSE").is_some();
        std::thread::spawn(move || {
            let mut console_file = console_file;
            let mut seen = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let _ = console_file.write_all(&buf[..n]);
                if verbose {
                    let _ = std::io::stderr().write_all(&buf[..n]);
                }
                seen.extend_from_slice(&buf[..n]);
                let mut ready = ready_at
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if ready.is_none() && contains(&seen, b"LAB: ready") {
                    *ready = Some(started.elapsed());
                }
            }
            seen
        })
    };
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });

    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| io("waiting for qemu", &e))? {
            break status;
        }
        if started.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            break child
                .wait()
                .map_err(|e| io("waiting for the killed qemu", &e))?;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let wall = started.elapsed();
    let console = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    let qemu_stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    let ready = *ready_at
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(Boot {
        status,
        timed_out,
        console,
        qemu_stderr,
        ready,
        wall,
    })
}

/// Extracts the tar the guest wrote raw onto `out.img` into `out/`.
fn untar_results(run_dir: &Path) -> Result<std::process::ExitStatus, String> {
    let out_dir = run_dir.join("out");
    fs::create_dir_all(&out_dir).map_err(|e| io("out/", &e))?;
    Command::new("tar")
        .arg("-xf")
        .arg(run_dir.join("out.img"))
        .arg("-C")
        .arg(&out_dir)
        .stderr(Stdio::null())
        .status()
        .map_err(|e| io("cannot run tar", &e))
}

fn collect_files(
    dir: &Path,
    prefix: &str,
    into: &mut BTreeMap<String, Vec<u8>>,
) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        if entry.file_type()?.is_dir() {
            collect_files(&entry.path(), &format!("{name}/"), into)?;
        } else {
            into.insert(name, fs::read(entry.path())?);
        }
    }
    Ok(())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// One step's result.
#[derive(Debug)]
pub struct StepResult {
    /// The step's name.
    pub name: String,
    mode: Mode,
    /// Exit code; `None` when the step did not run.
    pub rc: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Guest seconds (10 ms resolution).
    pub secs: f64,
}

/// What one VM run gave back.
pub struct Outcome {
    scenario: String,
    run_dir: PathBuf,
    console: String,
    /// Host wall time from starting qemu to the guest's `LAB: ready` (modules loaded,
    /// scenario unpacked: where a shell prompt would be).
    pub boot: Option<Duration>,
    /// Host wall time of the whole run.
    pub wall: Duration,
    steps: Vec<StepResult>,
    files: BTreeMap<String, Vec<u8>>,
}

impl Outcome {
    /// The result of step `name` (fails the test if there is no such step).
    pub fn step(&self, name: &str) -> &StepResult {
        self.steps
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{}", self.report(&format!("no step named {name}"))))
    }

    /// Step `name`'s stdout, trimmed.
    pub fn stdout(&self, name: &str) -> &str {
        self.step(name).stdout.trim()
    }

    /// A file the guest wrote under `$OUT` (fails the test if it is absent).
    pub fn file(&self, path: &str) -> &[u8] {
        self.files.get(path).map_or_else(
            || {
                let have: Vec<_> = self.files.keys().collect();
                panic!(
                    "{}",
                    self.report(&format!("no result file {path}; have {have:?}"))
                )
            },
            Vec::as_slice,
        )
    }

    /// A result file as UTF-8 text.
    pub fn text(&self, path: &str) -> String {
        String::from_utf8_lossy(self.file(path)).into_owned()
    }

    /// A failure report: the reason, every step's exit code, the failing step's output,
    /// and the console tail.
    pub fn report(&self, why: &str) -> String {
        let mut s = format!("lab scenario {}: {why}\n", self.scenario);
        for step in &self.steps {
            let rc = step
                .rc
                .map_or("not run".to_owned(), |rc| format!("rc={rc}"));
            let _ = writeln!(s, "  step {:<28} {rc} {:.2}s", step.name, step.secs);
            if step.rc.is_some_and(|rc| rc != 0) {
                for (what, text) in [("stdout", &step.stdout), ("stderr", &step.stderr)] {
                    for line in tail(text, 25) {
                        let _ = writeln!(s, "    {what}| {line}");
                    }
                }
            }
        }
        let _ = writeln!(
            s,
            "console tail ({}):",
            self.run_dir.join("console.log").display()
        );
        for line in tail(&self.console, 40) {
            let _ = writeln!(s, "  | {line}");
        }
        s
    }
}

fn tail(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// Saves a captured output as a fixture under `tests/fixtures/` when the run was asked
/// to (`LAB_WRITE_FIXTURES=1`); otherwise does nothing. The committed fixtures are the
/// ones the parsers' unit tests read; this is how they are refreshed.
pub fn capture_fixture(rel: &str, contents: &[u8]) {
    if std::env::var_os("LAB_WRITE_FIXTURES").is_some_and(|v| v == "1") {
        let path = repo_root().join("tests/fixtures").join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create the fixture directory");
        }
        fs::write(&path, contents).expect("write the fixture");
        eprintln!("lab: wrote fixture {}", path.display());
    }
}
