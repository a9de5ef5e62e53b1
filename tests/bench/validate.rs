//! Benchmark: `validate` over 10,000 volumes in 100 files.
//!
//! Prints wall time and peak memory of the release binary (best of 5 runs), of
//! the library call in-process, and of `check-jsonschema` on the same documents
//! when it is installed (a schema-only peer: it checks no references). Targets
//! (issue 2): under 0.5 s and 100 MiB. Figures are printed, never asserted.
//!
//! Run: `cargo bench --bench validate`.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::cast_precision_loss)]
#![allow(clippy::disallowed_methods)] // a benchmark runs the binary and peer tools directly
#![allow(clippy::unreadable_literal, clippy::doc_markdown)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod common;
use common::{best_of, measure, peak_rss_kib_self, reset_peak_rss};

const FILES: usize = 100;
const PER_FILE: usize = 100;

fn generate(dir: &Path) {
    let mut head = String::new();
    for b in 0..20 {
        writeln!(
            head,
            "---\napiVersion: cinderblock.dev/v1alpha1\nkind: Backend\nmetadata:\n  name: backend-{b}\nspec:\n  backendName: pool\n  file:\n    path: /srv/volumes/b{b}\n"
        )
        .unwrap();
    }
    head.push_str("---\napiVersion: cinderblock.dev/v1alpha1\nkind: VolumeType\nmetadata:\n  name: standard\nspec:\n  extraSpecs:\n    volume_backend_name: pool\n");
    std::fs::write(dir.join("00-site.yaml"), head).unwrap();
    for f in 0..FILES {
        let mut text = String::new();
        for v in 0..PER_FILE {
            let n = f * PER_FILE + v;
            writeln!(
                text,
                "---\n# yaml-language-server: $schema=../../schemas/manifest.json\napiVersion: cinderblock.dev/v1alpha1\nkind: Volume\nmetadata:\n  name: vol-{n:05}\n  labels:\n    team: t{f}\nspec:\n  size: {}Gi\n  volumeType: standard\n  deletionPolicy: Delete\n  export:\n    iscsi:\n      initiators: [iqn.1994-05.com.example:host{v}]",
                1 + n % 50
            )
            .unwrap();
        }
        std::fs::write(dir.join(format!("vols-{f:03}.yaml")), text).unwrap();
    }
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    generate(&dir);
    let bytes: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    println!(
        "validate benchmark: {} volumes in {FILES} files ({:.1} MiB of YAML)",
        FILES * PER_FILE,
        bytes as f64 / 1048576.0
    );

    // In-process library call.
    reset_peak_rss();
    let base = peak_rss_kib_self();
    let lib = best_of(5, || {
        let t = Instant::now();
        let loaded = cinderblock::manifest::load_paths(std::slice::from_ref(&dir));
        assert_eq!(loaded.errors(), 0);
        assert_eq!(loaded.set.volumes.len(), FILES * PER_FILE);
        t.elapsed()
    });
    let lib_peak = peak_rss_kib_self();
    println!(
        "  library load_paths:        {:>8.1} ms   peak RSS {:>6.1} MiB (process baseline {:.1} MiB)",
        lib.as_secs_f64() * 1e3,
        lib_peak as f64 / 1024.0,
        base as f64 / 1024.0
    );

    // The release binary, end to end.
    let bin = env!("CARGO_BIN_EXE_cinderblock");
    let mut rss = 0;
    let cli = best_of(5, || {
        let (wall, r, ok) = measure(
            Command::new(bin)
                .arg("validate")
                .arg("-f")
                .arg(&dir)
                .stdout(std::process::Stdio::null()),
        );
        assert!(ok, "validate failed");
        rss = r;
        wall
    });
    println!(
        "  cinderblock validate:      {:>8.1} ms   peak RSS {:>6.1} MiB   (targets: < 500 ms, < 100 MiB)",
        cli.as_secs_f64() * 1e3,
        rss as f64 / 1024.0
    );

    // Peer: check-jsonschema (schema only) on the same documents, if present.
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/manifest.json");
    let files: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    let probe = Command::new("check-jsonschema").arg("--version").output();
    if probe.is_ok_and(|o| o.status.success()) {
        // check-jsonschema reads one document per YAML file: split them.
        let split = tmp.path().join("split");
        std::fs::create_dir_all(&split).unwrap();
        let mut docs = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            for (i, d) in text.split("\n---\n").enumerate() {
                let p = split.join(format!(
                    "{}-{i}.yaml",
                    f.file_stem().unwrap().to_string_lossy()
                ));
                std::fs::write(&p, d.trim_start_matches("---\n")).unwrap();
                docs.push(p);
            }
        }
        let (wall, r, ok) = measure(
            Command::new("check-jsonschema")
                .arg("--schemafile")
                .arg(&schema)
                .args(&docs)
                .stdout(std::process::Stdio::null()),
        );
        println!(
            "  check-jsonschema (peer):   {:>8.1} ms   peak RSS {:>6.1} MiB   ok={ok}   cinderblock is {:.1}x faster",
            wall.as_secs_f64() * 1e3,
            r as f64 / 1024.0,
            wall.as_secs_f64() / cli.as_secs_f64()
        );
    } else {
        println!("  check-jsonschema (peer):   not installed (pip install check-jsonschema)");
    }
}
