//! Benchmark of the consumer scan a discovery makes (`cinderblock::inuse`):
//! a `file` back end of 10,000 volume files, 2,000 of which another process
//! holds open.
//!
//! Run with `cargo bench --bench inuse` (`INUSE_VOLUMES=100 INUSE_OPEN=20` for
//! a quick run). Prints the time of one scan of `/proc/*/fd` and the loop
//! devices, the time of a whole discovery of the back end with the scan in
//! it, what asking per volume (a scan each, as the backup engine's one
//! question does) would cost instead, and the load average (the figures
//! mean little on a busy machine). Asserts only that every held volume and
//! no other is found in use.

// A benchmark's output is its report.
#![allow(clippy::print_stdout)]
#![allow(clippy::cast_precision_loss)]
// The holder is a separate process, as qemu would be.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cinderblock::file::{Allocation, FileBackend, NewObject, ObjKind};
use cinderblock::inuse::Holders;
use cinderblock::observe::{Discovery, discover_with};
use uuid::Uuid;

mod common;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Holds `paths` open in a python3 process until dropped.
struct Holder(std::process::Child);

impl Holder {
    fn start(paths: &[std::path::PathBuf]) -> Holder {
        let script = "import resource,sys\n\
            n=int(sys.argv[1])\n\
            soft,hard=resource.getrlimit(resource.RLIMIT_NOFILE)\n\
            resource.setrlimit(resource.RLIMIT_NOFILE,(min(hard,n+64),hard))\n\
            fs=[open(sys.stdin.readline().rstrip('\\n'),'rb') for _ in range(n)]\n\
            print('ready',flush=True)\n\
            sys.stdin.read()\n";
        let mut child = Command::new("python3")
            .args(["-c", script, &paths.len().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 starts");
        let mut stdin = child.stdin.take().expect("stdin");
        for p in paths {
            writeln!(stdin, "{}", p.display()).expect("write path");
        }
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        assert_eq!(line.trim(), "ready", "the holder did not open the files");
        // Keep stdin open: the holder exits when it closes.
        std::mem::forget(stdin);
        Holder(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let volumes = env_or("INUSE_VOLUMES", 10_000);
    let open = env_or("INUSE_OPEN", 2_000).min(volumes);
    let dir = common::scratch("cinderblock-bench-inuse-");
    let root = dir.path().join("pool");
    std::fs::create_dir_all(&root).expect("root");
    let be = FileBackend::new(&root, "local");
    let t = Instant::now();
    let mut paths = Vec::with_capacity(volumes);
    for i in 0..volumes {
        let uuid = Uuid::new_v4();
        be.create(&NewObject {
            uuid,
            name: &format!("v{i}"),
            kind: ObjKind::Volume,
            size: 1 << 20,
            allocation: Allocation::Sparse,
            source: None,
        })
        .expect("create");
        paths.push(be.data_path(ObjKind::Volume, uuid));
    }
    println!(
        "set-up: {volumes} volume files in {:.1} s; {open} held open by another process",
        t.elapsed().as_secs_f64()
    );
    let _holder = Holder::start(&paths[..open]);

    let mut scan_best = Duration::MAX;
    let mut fds = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let h = Holders::scan().expect("scan");
        scan_best = scan_best.min(t.elapsed());
        fds = h.descriptors();
        let held = paths.iter().filter(|p| h.path(p).is_some()).count();
        assert_eq!(held, open, "every held volume and no other is in use");
    }

    let manifest = format!(
        "apiVersion: cinderblock.dev/v1alpha1\nkind: Backend\nmetadata: {{name: local}}\nspec:\n  file: {{path: {}}}\n",
        root.display()
    );
    let set = cinderblock::manifest::load_source(Path::new("bench.yaml"), &manifest).set;
    let reports = cinderblock::lvm::cmd::Reports::default();
    let mut discover_best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let world = discover_with(&set, "bench", dir.path(), &reports);
        discover_best = discover_best.min(t.elapsed());
        let view = world.backends.values().next().expect("the back end");
        let Discovery::Ok(inv) = &view.discovery else {
            panic!("discovery failed: {:?}", view.discovery);
        };
        assert_eq!(inv.objects.len(), volumes);
        let held = inv.objects.iter().filter(|o| o.in_use.is_some()).count();
        assert_eq!(held, open, "discovery reports every held volume in use");
    }

    println!(
        "scan of /proc/*/fd and loop devices: {} ({fds} descriptors on this host)",
        ms(scan_best)
    );
    println!(
        "discovery of the back end ({volumes} volumes, scan included): {}",
        ms(discover_best)
    );
    println!(
        "a scan per volume instead: about {:.1} s",
        scan_best.as_secs_f64() * volumes as f64
    );
    println!(
        "load average: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}
