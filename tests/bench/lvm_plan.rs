//! Benchmark: discovery + plan over an `lvm fullreport` of 10,000 LVs.
//!
//! The lab's captured fullreport (`tests/fixtures/lvm/fullreport.json`) is scaled
//! up in memory: its thin LV and segment rows are cloned 10,000 times with fresh
//! names, uuids, thin ids and our tags, plus 100 untagged (foreign) LVs. The
//! manifests declare the 10,000 volumes and the recorded state knows them all:
//! the agent's steady state, where every refresh must find "no changes".
//!
//! Timed (best of 5): parsing the report's bytes, turning it into the observed
//! world (`Registry::discover_with` and `observe::world_of`, which reads the back end's inventory out of
//! the report), planning, and rendering the plan text. Target (issue 5): under
//! 0.2 s for discovery parse + plan. Figures are printed, never asserted.
//!
//! Run: `cargo bench --bench lvm_plan`.

// A benchmark's output is its report; its set-up may panic on a broken fixture.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::cast_precision_loss)]

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

mod common;
use common::{bench_uuid as uuid_of, scaled_fullreport};

use cinderblock::lvm::cmd::Reports;
use cinderblock::lvm::report::parse_fullreport;
use cinderblock::manifest::kinds::DeletionPolicy;
use cinderblock::manifest::load_source;
use cinderblock::observe::world_of;
use cinderblock::plan::{self, ObjKind, Options, render};
use cinderblock::state::record::{Recorded, RecordedObject};

const LVS: usize = 10_000;
const FOREIGN: usize = 100;
const GIB: u64 = 1 << 30;

fn manifests() -> String {
    let mut s = String::from(
        "apiVersion: cinderblock.dev/v1alpha1\nkind: Backend\nmetadata:\n  name: bench\nspec:\n  host: lab\n  maxOverSubscriptionRatio: 100000\n  lvm:\n    volumeGroup: labvg\n    thinPool: pool0\n",
    );
    for i in 0..LVS {
        write!(
            s,
            "---\napiVersion: cinderblock.dev/v1alpha1\nkind: Volume\nmetadata:\n  name: v-{i:05}\nspec:\n  size: 1Gi\n  backend: bench\n"
        )
        .unwrap();
    }
    s
}

fn main() {
    let bytes = scaled_fullreport(LVS, FOREIGN, |i| format!("legacy-{i}"));
    let loaded = load_source(Path::new("bench.yaml"), &manifests());
    assert_eq!(loaded.errors(), 0);
    let set = loaded.set;
    let mut recorded = Recorded::default();
    for i in 0..LVS {
        recorded.objects.insert(
            uuid_of(i),
            RecordedObject {
                kind: ObjKind::Volume,
                name: format!("v-{i:05}"),
                backend: "bench".into(),
                size: GIB,
                deletion_policy: DeletionPolicy::Retain,
                consistency_group: None,
            },
        );
    }

    let mut best = [Duration::MAX; 4];
    let mut plan_len = 0;
    let registry = cinderblock::registry::Registry::new(
        &set,
        "lab",
        Path::new("/nonexistent"),
        cinderblock::exec::Exec::host(),
    );
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
        let p = plan::plan(&set, &world, &recorded, Options::default());
        let t3 = Instant::now();
        let text = render::text(&p);
        let t4 = Instant::now();
        assert!(p.actions.is_empty() && p.errors.is_empty(), "steady state");
        let inv = world.backends.values().next().unwrap().inventory().unwrap();
        assert_eq!((inv.objects.len(), inv.foreign.len()), (LVS, FOREIGN + 7));
        plan_len = text.len();
        for (b, d) in best.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2, t4 - t3]) {
            *b = (*b).min(d);
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let total: Duration = best[..3].iter().sum();
    println!(
        "lvm_plan: fullreport of {} LVs ({} KiB of JSON), {LVS} declared volumes, best of 5",
        LVS + FOREIGN + 8,
        bytes.len() >> 10
    );
    println!("  parse fullreport   {:8.1} ms", ms(best[0]));
    println!("  observe (inventory){:8.1} ms", ms(best[1]));
    println!("  plan               {:8.1} ms", ms(best[2]));
    println!(
        "  render text        {:8.1} ms ({plan_len} bytes)",
        ms(best[3])
    );
    println!(
        "  discovery parse + plan: {:.1} ms (target < 200 ms)",
        ms(total)
    );
}
