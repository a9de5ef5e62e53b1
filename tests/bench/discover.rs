//! Benchmark: `discover` on a host with 10,000 LVs.
//!
//! The lab's captured `lvm fullreport` scaled up in memory
//! (`common::scaled_fullreport`): 9,000 thin LVs of ours and 1,000 foreign
//! ones named as Cinder names its volumes (`volume-<uuid>`), all in one thin
//! pool. Timed (best of 5), through the same path as `cinderblock discover
//! --include-foreign`: parsing the report's bytes, turning it into the
//! observed world (`Registry::discover_with`, `observe::world_of`),
//! writing the manifests (`discover::manifests`, ours and the foreign
//! volumes to adopt), and the drift of those manifests against the same
//! world (`discover::drift`, `discover --diff`). Target (issue 17): the
//! whole `discover` under 1 s. Figures are printed, never asserted.
//!
//! Run: `cargo bench --bench discover`; `DISCOVER_BENCH_LVS=100` for a
//! small run (a check that it works, not a figure).

// A benchmark's output is its report; its set-up may panic on a broken fixture.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::cast_precision_loss)]

mod common;

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use cinderblock::discover::{self, Options};
use cinderblock::lvm::cmd::Reports;
use cinderblock::lvm::report::parse_fullreport;
use cinderblock::manifest::load_source;
use cinderblock::observe::world_of;
use cinderblock::state::record::Recorded;

const BACKEND: &str = "apiVersion: cinderblock.dev/v1alpha1\nkind: Backend\nmetadata:\n  name: bench\nspec:\n  host: lab\n  maxOverSubscriptionRatio: 100000\n  lvm:\n    volumeGroup: labvg\n    thinPool: pool0\n";

fn main() {
    let total: usize = std::env::var("DISCOVER_BENCH_LVS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let foreign = total / 10;
    let ours = total - foreign;
    let bytes = common::scaled_fullreport(ours, foreign, |i| {
        format!(
            "volume-{}",
            uuid::Uuid::from_u128(0xc1d0_0000_0000_4000_8000_0000_0000_0000 | i as u128)
        )
    });
    let loaded = load_source(Path::new("backend.yaml"), BACKEND);
    assert_eq!(loaded.errors(), 0);
    let set = loaded.set;
    let registry = cinderblock::registry::Registry::new(
        &set,
        "lab",
        Path::new("/nonexistent"),
        cinderblock::exec::Exec::host(),
    );
    let opts = Options {
        include_foreign: true,
        schema: "schemas/manifest.json".into(),
    };
    let recorded = Recorded::default();
    let mut best = [Duration::MAX; 4];
    let mut sizes = (0, 0, 0);
    for _ in 0..5 {
        let t0 = Instant::now();
        let report = parse_fullreport(&bytes).unwrap();
        let t1 = Instant::now();
        let reports = Reports {
            report,
            failed: std::collections::BTreeMap::default(),
        };
        let world = world_of(
            &set,
            &registry,
            Path::new("/nonexistent"),
            registry.discover_with(&reports),
        );
        let t2 = Instant::now();
        let out = discover::manifests(&set, &world, &recorded, &opts);
        let text = out.stream();
        let t3 = Instant::now();
        // The drift of discover's own output (ours only) is none.
        let ours_text = &out.files["bench.yaml"];
        let mine = load_source(Path::new("bench.yaml"), &(BACKEND.to_owned() + ours_text));
        let drift = discover::drift(
            &mine.set,
            &world,
            &recorded,
            &Options {
                include_foreign: false,
                ..opts.clone()
            },
        );
        let t4 = Instant::now();
        assert_eq!(mine.errors(), 0, "discover's output validates");
        assert!(drift.files.is_empty(), "no drift: {:?}", drift.files.keys());
        let inv = world.backends.values().next().unwrap().inventory().unwrap();
        assert_eq!(inv.objects.len(), ours);
        sizes = (text.len(), inv.objects.len(), inv.foreign.len());
        for (b, d) in best.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2, t4 - t3]) {
            *b = (*b).min(d);
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut report = String::new();
    let _ = writeln!(
        report,
        "discover: fullreport of {} LVs ({} KiB of JSON; {} ours, {} foreign entries), best of 5",
        ours + foreign + 8,
        bytes.len() >> 10,
        sizes.1,
        sizes.2
    );
    let _ = writeln!(report, "  parse fullreport     {:8.1} ms", ms(best[0]));
    let _ = writeln!(report, "  observe (inventory)  {:8.1} ms", ms(best[1]));
    let _ = writeln!(
        report,
        "  write manifests      {:8.1} ms ({} KiB of YAML)",
        ms(best[2]),
        sizes.0 >> 10
    );
    let _ = writeln!(
        report,
        "  discover: {:.1} ms (target < 1000 ms)",
        ms(best[0] + best[1] + best[2])
    );
    let _ = writeln!(
        report,
        "  discover --diff of its own output (load + drift): {:.1} ms",
        ms(best[3])
    );
    print!("{report}");
}
