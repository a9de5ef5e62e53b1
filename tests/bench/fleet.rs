//! Fleet benchmark against a real etcd (Debian's `etcd-server`, started on a
//! free loopback port): `plan --fleet` over 50 hosts × 200 volumes from
//! published views (no real storage) — wall time and bytes read from etcd
//! (targets: < 2 s, < 10 MiB) — and the time until an elected agent has
//! placed 1,000 new volumes over those 50 hosts. Prints figures; asserts
//! only that the work was done.
//!
//! `cargo bench --bench fleet`; `CINDERBLOCK_BENCH_SMALL=1` runs a tiny
//! fleet (5 × 20, 50 new volumes) to check that it works.

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::disallowed_methods,
    clippy::too_many_lines,
    clippy::format_push_string
)] // figures for people; starts etcd and the binary under test; one scenario in order

#[path = "../cli/etcd.rs"]
#[allow(dead_code)]
mod etcd;

use std::collections::BTreeMap;
use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cinderblock::fleet::EtcdConfig;
use cinderblock::fleet::client::Etcd;
use cinderblock::fleet::keys::Keys;
use cinderblock::fleet::records::{
    self, BackendRecord, HostRecord, HostView, PlacementRecord, PlanSummary,
};
use cinderblock::manifest::kinds::DeletionPolicy;
use cinderblock::manifest::values::OverSubscription;
use cinderblock::observe::{
    BackendView, Capacity, Discovery, Health, Inventory, ObjKind, Observed, World,
};

const H: &str = "apiVersion: cinderblock.dev/v1alpha1\n";
const GIB: u64 = 1 << 30;

fn main() {
    let small = std::env::var_os("CINDERBLOCK_BENCH_SMALL").is_some();
    let (hosts, per_host, new) = if small { (5, 20, 50) } else { (50, 200, 1000) };
    let cluster = etcd::Cluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    fs::create_dir_all(&manifests).unwrap();
    let cfg = EtcdConfig {
        endpoints: vec![format!("http://127.0.0.1:{}", cluster.members[0].client)],
        prefix: "/cinderblock".parse().unwrap(),
        ca: None,
        cert: None,
        user: None,
        timeout: Duration::from_secs(10),
        lease_ttl: 15,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let etcd = rt.block_on(Etcd::connect(&cfg)).unwrap();
    let keys = Keys::new(&cfg.prefix);

    // The manifests: one file back end per host, `per_host` placed volumes
    // each, one of which grows in this change.
    let mut text = String::new();
    for h in 0..hosts {
        text.push_str(&format!(
            "{H}kind: Backend\nmetadata:\n  name: b{h:02}\nspec:\n  host: h{h:02}\n  file:\n    path: /srv/b{h:02}\n---\n"
        ));
        for v in 0..per_host {
            let size = if v == 0 { "128Mi" } else { "64Mi" };
            text.push_str(&format!(
                "{H}kind: Volume\nmetadata:\n  name: v{h:02}-{v:03}\nspec:\n  size: {size}\n---\n"
            ));
        }
    }
    fs::write(manifests.join("site.yaml"), &text).unwrap();
    // Each back end's capabilities as its driver says (a `file` back end).
    let set = cinderblock::manifest::load_source(std::path::Path::new("site.yaml"), &text).set;

    // What the hosts published, and their placements; the hosts are up.
    let lease = rt.block_on(etcd.grant(600)).unwrap();
    let now = chrono::Utc::now();
    for h in 0..hosts {
        let host = format!("h{h:02}");
        let objects: Vec<Observed> = (0..per_host)
            .map(|v| Observed {
                group: None,
                uuid: uuid::Uuid::from_u128((h * 10_000 + v + 1) as u128),
                name: format!("v{h:02}-{v:03}"),
                kind: ObjKind::Volume,
                size: 64 << 20,
                allocated: Some(0),
                parent: None,
                clone_of: None,
                health: Health::Ready,
                in_use: None,
            })
            .collect();
        let view = BackendView {
            name: format!("b{h:02}").parse().unwrap(),
            backend_name: format!("b{h:02}"),
            zone: "nova".into(),
            caps: cinderblock::registry::capabilities(&set.backends[format!("b{h:02}").as_str()]),
            thin: true,
            extent: 1,
            ratio: OverSubscription::Ratio(20.0),
            reserved_percentage: 0,
            capabilities: BTreeMap::new(),
            discovery: Discovery::Ok(Inventory {
                capacity: Capacity {
                    total: 1024 * GIB,
                    free: 1000 * GIB,
                    provisioned: per_host as u64 * (64 << 20),
                    ..Capacity::default()
                },
                objects,
                foreign: vec![],
                problems: vec![],
                generation: None,
            }),
        };
        let mut world = World::default();
        world.backends.insert(view.name.clone(), view.clone());
        let hv = HostView::of(
            &host,
            &world,
            Some("bench".into()),
            Some("bench".into()),
            PlanSummary::default(),
            now,
        );
        // The host's records of what it made (else every volume would
        // read as adopted and planned as a change).
        let recorded = cinderblock::state::record::Recorded {
            objects: objects_of(&view)
                .iter()
                .map(|o| {
                    (
                        o.uuid,
                        cinderblock::state::record::RecordedObject {
                            kind: ObjKind::Volume,
                            name: o.name.clone(),
                            backend: format!("b{h:02}"),
                            size: o.size,
                            deletion_policy: DeletionPolicy::default(),
                            consistency_group: None,
                        },
                    )
                })
                .collect(),
            last_plan: None,
        };
        rt.block_on(etcd.publish(&hv, vec![BackendRecord::of(&host, &view, &recorded)]))
            .unwrap();
        let rec = HostRecord {
            v: records::VERSION,
            host: host.clone(),
            pid: 1,
            version: "bench".into(),
            started_at: now,
            listen: None,
            iscsi_initiator: None,
        };
        rt.block_on(etcd.register(&rec, lease)).unwrap();
        for v in 0..per_host {
            let volume = format!("v{h:02}-{v:03}");
            let key = keys.placement(&volume);
            let p = PlacementRecord {
                v: records::VERSION,
                volume,
                backend: format!("b{h:02}"),
                host: host.clone(),
                size: 64 << 20,
                placed_by: "bench".into(),
                at: now,
                reason: "bench".into(),
            };
            let mut c = etcd.raw();
            rt.block_on(c.put(key.clone(), records::encode(&key, &p).unwrap(), None))
                .unwrap();
        }
    }

    // 1. plan --fleet.
    let snap = rt.block_on(etcd.snapshot()).unwrap();
    let bytes = snap.bytes;
    let endpoints = cfg.endpoints[0].clone();
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_cinderblock"))
            .current_dir(dir.path())
            .args([
                "--state",
                "empty-state",
                "--etcd",
                &endpoints,
                "plan",
                "--fleet",
                "-f",
                "manifests",
                "--detailed-exitcode",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        times.push(t.elapsed());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!(
                "Fleet: Plan: 0 to add, {hosts} to change, 0 to destroy."
            )),
            "{}",
            stdout.lines().last().unwrap_or("")
        );
    }
    times.sort();
    println!(
        "plan --fleet over {hosts} hosts x {per_host} volumes: {:.3} s (median of 3), {:.2} MiB read from etcd ({} keys' worth; targets < 2 s, < 10 MiB)",
        times[1].as_secs_f64(),
        bytes as f64 / f64::from(1 << 20),
        snap.placements.len() + snap.views.len() * 2 + snap.hosts.len()
    );

    // 2. An elected agent places `new` new volumes over the fleet.
    let pool = dir.path().join("leader-pool");
    fs::create_dir_all(&pool).unwrap();
    fs::write(
        manifests.join("leader.yaml"),
        format!("{H}kind: Backend\nmetadata:\n  name: bleader\nspec:\n  host: leader\n  file:\n    path: {}\n---\n", pool.display()),
    )
    .unwrap();
    let log = fs::File::create(dir.path().join("agent.log")).unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_cinderblock"))
        .current_dir(dir.path())
        .args([
            "--state",
            "leader-state",
            "--host",
            "leader",
            "-q",
            "--etcd",
            &endpoints,
            "agent",
            "-f",
            "manifests",
            "--listen",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let placed_now = || rt.block_on(etcd.placements()).map_or(0, |p| p.len());
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let before = hosts * per_host;
    wait("the agent to be elected", &|| {
        let s = rt.block_on(etcd.snapshot()).unwrap();
        s.leader.as_deref() == Some("leader") && s.views.contains_key("leader")
    });
    let mut text = String::new();
    for v in 0..new {
        text.push_str(&format!(
            "{H}kind: Volume\nmetadata:\n  name: new-{v:04}\nspec:\n  size: 64Mi\n---\n"
        ));
    }
    let t = Instant::now();
    let tmp = dir.path().join(".new.yaml");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, manifests.join("new.yaml")).unwrap();
    wait("every new volume to be placed", &|| {
        placed_now() >= before + new
    });
    let took = t.elapsed();
    let _ = agent.kill();
    let _ = agent.wait();
    let s = rt.block_on(etcd.snapshot()).unwrap();
    // Every host that published, so one that got nothing counts as 0.
    let mut per: BTreeMap<String, usize> = s.views.keys().map(|h| (h.clone(), 0)).collect();
    for (v, (p, _)) in &s.placements {
        if v.starts_with("new-") {
            *per.entry(p.host.clone()).or_default() += 1;
        }
    }
    println!(
        "placement of {new} new volumes over {} hosts by the elected agent: {:.2} s from the manifest change until all were placed ({} to {} per host)",
        hosts + 1,
        took.as_secs_f64(),
        per.values().min().unwrap_or(&0),
        per.values().max().unwrap_or(&0)
    );
}

/// The objects a published back end holds.
fn objects_of(view: &BackendView) -> &[Observed] {
    match &view.discovery {
        Discovery::Ok(inv) => &inv.objects,
        Discovery::Failed(_) => &[],
    }
}
