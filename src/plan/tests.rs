//! Planner unit tests over a hand-built world (a test double of discovery):
//! the safety guards and the plan errors a user reads.

use std::collections::BTreeMap;
use std::path::Path;

use uuid::Uuid;

use super::{Op, Options, plan};
use crate::manifest::kinds::DeletionPolicy;
use crate::manifest::values::OverSubscription;
use crate::manifest::{ManifestSet, load_source};
use crate::observe::{
    BackendView, Capacity, Discovery, Driver, Inventory, ObjHealth, ObjKind, Observed, World,
};
use crate::state::record::{Recorded, RecordedKind, RecordedObject};

const GIB: u64 = 1 << 30;

fn manifests(text: &str) -> ManifestSet {
    let loaded = load_source(Path::new("test.yaml"), text);
    assert_eq!(loaded.errors(), 0, "{:?}", loaded.diagnostics);
    loaded.set
}

fn backend_yaml(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: cinderblock.dev/v1alpha1\nkind: Backend\nmetadata: {{name: {name}}}\nspec:\n  file: {{path: /srv/{name}}}\n{extra}---\n"
    )
}

fn vol_yaml(name: &str, size: &str, extra: &str) -> String {
    format!(
        "apiVersion: cinderblock.dev/v1alpha1\nkind: Volume\nmetadata: {{name: {name}}}\nspec:\n  size: {size}\n{extra}---\n"
    )
}

fn view(name: &str, thin: bool, ratio: f64, total: u64, objects: Vec<Observed>) -> BackendView {
    let provisioned = objects.iter().map(|o| o.size).sum();
    BackendView {
        name: name.parse().unwrap(),
        backend_name: name.to_owned(),
        zone: "nova".into(),
        driver: Driver::File {
            root: format!("/srv/{name}").into(),
            allocation: crate::manifest::kinds::Allocation::Sparse,
        },
        thin,
        extent: 1,
        ratio: OverSubscription::Ratio(ratio),
        reserved_percentage: 0,
        capabilities: BTreeMap::new(),
        discovery: Discovery::Ok(Inventory {
            capacity: Capacity {
                total,
                free: total,
                provisioned,
                lvm: None,
            },
            objects,
            foreign: vec![],
            problems: vec![],
            generation: None,
        }),
    }
}

fn obj(name: &str, size: u64, n: u128) -> Observed {
    Observed {
        uuid: Uuid::from_u128(n),
        name: name.into(),
        kind: ObjKind::Volume,
        size,
        allocated: Some(0),
        parent: None,
        health: ObjHealth::Ready,
    }
}

fn world(views: Vec<BackendView>) -> World {
    World {
        backends: views.into_iter().map(|v| (v.name.clone(), v)).collect(),
        missing: vec![],
        ..World::default()
    }
}

fn record(n: u128, name: &str, backend: &str, policy: DeletionPolicy) -> (Uuid, RecordedObject) {
    (
        Uuid::from_u128(n),
        RecordedObject {
            kind: RecordedKind::Volume,
            name: name.into(),
            backend: backend.into(),
            size: GIB,
            deletion_policy: policy,
        },
    )
}

#[test]
fn a_thin_pool_of_1gib_with_ratio_2_takes_2gib_and_refuses_the_next_with_the_numbers() {
    let set = manifests(
        &(backend_yaml("pool", "  maxOverSubscriptionRatio: 2.0\n")
            + &vol_yaml("a", "1Gi", "")
            + &vol_yaml("b", "1Gi", "")
            + &vol_yaml("c", "1Gi", "")),
    );
    let w = world(vec![view("pool", true, 2.0, GIB, vec![])]);
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    assert_eq!(p.actions.len(), 2, "{:?}", p.actions);
    assert_eq!(
        p.errors,
        [
            "volume.c: no back end can take it (1Gi):\n      - pool: CapacityFilter: needs 1Gi, virtual free 0 B (thin: (1 GiB total − 0 B reserved) × ratio 2 − 2 GiB provisioned)"
        ]
    );
}

#[test]
fn nothing_is_deleted_when_any_back_end_failed_discovery() {
    let set = manifests(
        &(backend_yaml("a", "")
            + &backend_yaml("b", "")
            + &vol_yaml("keep", "1Gi", "  backend: a\n")),
    );
    let mut broken = view("b", true, 20.0, 100 * GIB, vec![]);
    broken.discovery = Discovery::Failed("mount failed".into());
    let w = world(vec![
        view(
            "a",
            true,
            20.0,
            100 * GIB,
            vec![obj("keep", GIB, 1), obj("gone", GIB, 2)],
        ),
        broken,
    ]);
    let rec = Recorded {
        objects: [record(2, "gone", "a", DeletionPolicy::Delete)].into(),
        last_plan: None,
    };
    let p = plan(&set, &w, &rec, Options::default());
    assert!(
        p.actions.iter().all(|a| !matches!(a.op, Op::Delete { .. })),
        "{:?}",
        p.actions
    );
    assert!(p.notes.iter().any(|n| n == "1 delete(s) held back: discovery was incomplete (a failed listing never reads as \"delete all\")"), "{:?}", p.notes);
}

#[test]
fn an_empty_manifest_tree_deletes_nothing() {
    let set = manifests(&backend_yaml("a", ""));
    let w = world(vec![view(
        "a",
        true,
        20.0,
        100 * GIB,
        vec![obj("x", GIB, 1)],
    )]);
    let rec = Recorded {
        objects: [record(1, "x", "a", DeletionPolicy::Delete)].into(),
        last_plan: None,
    };
    let p = plan(&set, &w, &rec, Options::default());
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert!(
        p.notes[0].contains("the manifests declare no volumes and no snapshots"),
        "{:?}",
        p.notes
    );
}

#[test]
fn a_lost_volume_is_reported_not_silently_recreated() {
    let set = manifests(&(backend_yaml("a", "") + &vol_yaml("db", "1Gi", "")));
    let w = world(vec![view("a", true, 20.0, 100 * GIB, vec![])]);
    let rec = Recorded {
        objects: [record(7, "db", "a", DeletionPolicy::Retain)].into(),
        last_plan: None,
    };
    let p = plan(&set, &w, &rec, Options::default());
    assert!(p.actions.is_empty());
    assert_eq!(p.drift[0].address, "volume.db");
    assert!(
        p.drift[0]
            .message
            .starts_with("was deleted outside cinderblock"),
        "{:?}",
        p.drift
    );
    assert!(
        p.errors[0].contains("plan with --recreate-lost to create it again, empty"),
        "{:?}",
        p.errors
    );
    let p = plan(
        &set,
        &w,
        &rec,
        Options {
            recreate_lost: true,
        },
    );
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert!(matches!(p.actions[0].op, Op::Create { .. }));
}

#[test]
fn placements_are_never_reshuffled_and_a_changed_pin_is_refused() {
    let set = manifests(
        &(backend_yaml("a", "")
            + &backend_yaml("b", "")
            + &vol_yaml("db", "1Gi", "  backend: b\n")),
    );
    let w = world(vec![
        view("a", true, 20.0, 100 * GIB, vec![obj("db", GIB, 1)]),
        view("b", true, 20.0, 100 * GIB, vec![]),
    ]);
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    assert!(
        p.errors[0].starts_with("volume.db: spec.backend is b but the volume lives on a"),
        "{:?}",
        p.errors
    );
    assert!(
        p.actions
            .iter()
            .all(|a| !matches!(a.op, Op::Create { .. } | Op::Delete { .. }))
    );
}

#[test]
fn an_unknown_capability_says_which_and_why() {
    let set = manifests(
        &(backend_yaml("a", "  capabilities: {disk_type: hdd}\n")
            + "apiVersion: cinderblock.dev/v1alpha1\nkind: VolumeType\nmetadata: {name: fast}\nspec:\n  extraSpecs: {\"capabilities:disk_type\": \"s== ssd\", iops: \">= 1000\"}\n---\n"
            + &vol_yaml("db", "1Gi", "  volumeType: fast\n")),
    );
    let mut a = view("a", true, 20.0, 100 * GIB, vec![]);
    a.capabilities.insert("disk_type".into(), "hdd".into());
    let w = world(vec![a]);
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    assert_eq!(
        p.errors,
        [
            "volume.db: no back end can take it (1Gi):\n      - a: CapabilitiesFilter: disk_type is \"hdd\", the type wants \"s== ssd\""
        ]
    );
}

#[test]
fn a_volume_from_a_backup_takes_the_latest_or_the_id_and_must_be_large_enough() {
    let policy = "apiVersion: cinderblock.dev/v1alpha1\nkind: BackupPolicy\nmetadata: {name: nightly}\nspec:\n  schedule: \"0 2 * * *\"\n  target: {path: /srv/repo}\n---\n";
    let from = |id: &str, size: &str| {
        manifests(
            &(backend_yaml("pool", "")
                + policy
                + &vol_yaml(
                    "copy",
                    size,
                    &format!("  source:\n    backup: {{policy: nightly, volume: db{id}}}\n"),
                )),
        )
    };
    let backup = |n: u128, day: u32| crate::observe::BackupSource {
        id: Uuid::from_u128(n),
        volume: "db".into(),
        repository: "/srv/repo".into(),
        size: GIB,
        started_at: chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 11, day, 2, 0, 0)
            .single()
            .unwrap(),
    };
    let mut w = world(vec![view("pool", true, 20.0, 100 * GIB, vec![])]);
    w.backups = vec![
        backup(0xaaaa_0000_0000_4000_8000_0000_0000_0001, 23),
        backup(0xbbbb_0000_0000_4000_8000_0000_0000_0002, 24),
        backup(0xbbbc_0000_0000_4000_8000_0000_0000_0003, 22),
    ];
    w.backup_repos = [("nightly".parse().unwrap(), "/srv/repo".into())].into();
    let chosen = |set: &ManifestSet| {
        let p = plan(set, &w, &Recorded::default(), Options::default());
        match p.actions.first().map(|a| &a.op) {
            Some(Op::Create {
                backup: Some(b), ..
            }) => Ok(b.id.as_u128() >> 112),
            _ => Err(p.errors),
        }
    };
    assert_eq!(chosen(&from("", "1Gi")), Ok(0xbbbb), "latest by time");
    assert_eq!(chosen(&from(", id: aaaa", "1Gi")), Ok(0xaaaa));
    let err = chosen(&from(", id: bbb", "1Gi")).unwrap_err();
    assert!(err[0].contains("matches 2 backups of volume db"), "{err:?}");
    let err = chosen(&from("", "512Mi")).unwrap_err();
    assert!(
        err[0].contains("spec.size 512Mi is less than backup"),
        "{err:?}"
    );
    let err = chosen(&from(", id: cccc", "1Gi")).unwrap_err();
    assert!(
        err[0].contains("no catalogued backup cccc of volume db"),
        "{err:?}"
    );
}
