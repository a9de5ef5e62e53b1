//! Planner unit tests over a hand-built world (a test double of discovery):
//! the safety guards and the plan errors a user reads.

use std::collections::BTreeMap;
use std::path::Path;

use uuid::Uuid;

use super::{Carry, Impact, Op, Options, plan, render};
use crate::manifest::kinds::DeletionPolicy;
use crate::manifest::values::OverSubscription;
use crate::manifest::{ManifestSet, load_source};
use crate::observe::{
    BackendView, Capacity, Discovery, Health, Inventory, ObjKind, Observed, World,
};
use crate::state::record::{Recorded, RecordedObject};

const GIB: u64 = 1 << 30;

pub(crate) fn manifests(text: &str) -> ManifestSet {
    let loaded = load_source(Path::new("test.yaml"), text);
    assert_eq!(loaded.errors(), 0, "{:?}", loaded.diagnostics);
    loaded.set
}

pub(crate) fn backend_yaml(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: cinderblock.dev/v1alpha1\nkind: Backend\nmetadata: {{name: {name}}}\nspec:\n  file: {{path: /srv/{name}}}\n{extra}---\n"
    )
}

pub(crate) fn vol_yaml(name: &str, size: &str, extra: &str) -> String {
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
        caps: crate::driver::fake::capabilities(true),
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
                ..Capacity::default()
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
        group: None,
        uuid: Uuid::from_u128(n),
        name: name.into(),
        kind: ObjKind::Volume,
        size,
        allocated: Some(0),
        parent: None,
        clone_of: None,
        health: Health::Ready,
        in_use: None,
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
            kind: ObjKind::Volume,
            name: name.into(),
            backend: backend.into(),
            size: GIB,
            deletion_policy: policy,
            consistency_group: None,
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
    // Typed: the agent marks the object by its address and reads the kind.
    assert_eq!(p.errors[0].address.as_deref(), Some("volume.c"));
    assert_eq!(p.errors[0].kind, super::PlanErrorKind::NoRoom);
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
        p.errors[0]
            .to_string()
            .contains("plan with --recreate-lost to create it again, empty"),
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
fn a_move_inside_one_space_is_a_hand_over_where_both_relabel_else_a_copy_inside_it() {
    let set = manifests(
        &(backend_yaml("a", "")
            + &backend_yaml("b", "")
            + &vol_yaml("db", "1Gi", "  backend: b\n")),
    );
    let space = crate::model::Space {
        kind: "volume group".into(),
        name: "vg0".into(),
    };
    let views = |relabel: bool| {
        let mut db = obj("db", GIB, 1);
        db.allocated = Some(GIB / 4);
        let mut a = view("a", false, 1.0, 100 * GIB, vec![db]);
        let mut b = view("b", false, 1.0, 100 * GIB, vec![]);
        for v in [&mut a, &mut b] {
            v.caps.space = Some(space.clone());
            v.caps.relabel = relabel;
        }
        world(vec![a, b])
    };
    let p = plan(&set, &views(true), &Recorded::default(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    let [a] = &p.actions[..] else {
        panic!("{:?}", p.actions)
    };
    assert!(
        matches!(&a.op, Op::Migrate { read: 0, carry: Carry::HandOver, within: Some(w), .. } if w == "volume group vg0"),
        "{:?}",
        a.op
    );
    assert_eq!(a.impact, Impact::MetadataOnly);
    let text = render::text(&p);
    assert!(text.contains("read       = 0 B (handed over inside volume group vg0: only its owner mark changes, nothing is copied)"), "{text}");
    let p = plan(
        &set,
        &views(false),
        &Recorded::default(),
        Options::default(),
    );
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert!(
        matches!(&p.actions[0].op, Op::Migrate { carry: Carry::Copy, within: Some(_), read, .. } if *read == GIB / 4),
        "{:?}",
        p.actions
    );
    assert_eq!(p.actions[0].impact, Impact::Moves);
}

#[test]
fn a_changed_pin_plans_a_migration_never_a_create_or_delete() {
    let set = manifests(
        &(backend_yaml("a", "  migrationBandwidth: 50Mi\n")
            + &backend_yaml("b", "  migrationBandwidth: 100Mi\n")
            + &vol_yaml("db", "1Gi", "  backend: b\n")),
    );
    let mut db = obj("db", GIB, 1);
    db.allocated = Some(GIB / 4);
    let w = world(vec![
        view("a", true, 20.0, 100 * GIB, vec![db]),
        view("b", true, 20.0, 100 * GIB, vec![]),
    ]);
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert_eq!(p.actions.len(), 1, "{:?}", p.actions);
    let a = &p.actions[0];
    assert_eq!(a.symbol(), ">");
    assert_eq!(a.impact, Impact::Moves);
    assert_eq!(a.reason, "spec.backend changed: a -> b");
    let Op::Migrate {
        uuid,
        from,
        to,
        read,
        bandwidth,
        resume,
        target_size,
        ..
    } = &a.op
    else {
        panic!("{a:?}")
    };
    assert_eq!((from.as_str(), to.as_str()), ("a", "b"));
    assert_eq!(*uuid, Uuid::from_u128(1), "the identity is kept");
    assert_eq!(*read, GIB / 4, "only the allocated data is read");
    assert_eq!(*target_size, GIB);
    assert_eq!(*bandwidth, Some(50 << 20), "the source back end's limit");
    assert!(!resume);
    assert_eq!(p.migrations(), 1);
    assert!(
        render::text(&p).ends_with("Plan: 0 to add, 0 to change, 0 to destroy, 1 to migrate.\n")
    );
}

/// Back ends "a" and "b" holding `a` and `b`, and volume `db` pinned
/// to `pin` (with `extra` spec lines).
fn two_backends(
    pin: &str,
    extra: &str,
    a: Vec<Observed>,
    b: Vec<Observed>,
) -> (ManifestSet, World) {
    let set = manifests(
        &(backend_yaml("a", "")
            + &backend_yaml("b", "")
            + &vol_yaml("db", "1Gi", &format!("  backend: {pin}\n{extra}"))),
    );
    let w = world(vec![
        view("a", true, 20.0, 100 * GIB, a),
        view("b", true, 20.0, 100 * GIB, b),
    ]);
    (set, w)
}

/// A file back end "a" holding `db` and a back end "b".
fn moving(b_objects: Vec<Observed>, extra: &str) -> (ManifestSet, World) {
    two_backends("b", extra, vec![obj("db", GIB, 1)], b_objects)
}

fn target_of(n: u128, health: Health) -> Observed {
    Observed {
        health,
        ..obj("db", GIB, n)
    }
}

#[test]
fn a_migration_target_is_not_a_duplicate_and_the_migration_resumes() {
    let (set, w) = moving(vec![target_of(1, Health::Migrating)], "");
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert!(
        matches!(&p.actions[..], [a] if matches!(a.op, Op::Migrate { resume: true, .. })),
        "{:?}",
        p.actions
    );
    assert!(
        p.actions[0]
            .reason
            .ends_with("an interrupted migration resumes from its last checkpoint")
    );
}

#[test]
fn an_abandoned_migration_removes_its_target_only() {
    // The manifests pin db back to a while its target on b is in flight.
    let (set_back, w) = two_backends(
        "a",
        "",
        vec![obj("db", GIB, 1)],
        vec![target_of(1, Health::Migrating)],
    );
    let p = plan(&set_back, &w, &Recorded::default(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    let deletes: Vec<_> = p
        .actions
        .iter()
        .filter_map(|a| match &a.op {
            Op::Delete { backend, uuid, .. } => Some((backend.as_str(), *uuid)),
            _ => None,
        })
        .collect();
    assert_eq!(deletes, [("b", Uuid::from_u128(1))], "{:?}", p.actions);
    assert!(p.actions[0].reason.contains("abandoned"), "{:?}", p.actions);
}

#[test]
fn a_verified_switch_interrupted_before_the_source_went_is_finished() {
    // The target on b is ready; the source on a is marked deleting.
    let (set, w) = two_backends(
        "b",
        "",
        vec![target_of(1, Health::Deleting)],
        vec![obj("db", GIB, 1)],
    );
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert!(
        matches!(&p.actions[0].op, Op::Migrate { from, to, resume: true, .. } if from == "a" && to == "b"),
        "{:?}",
        p.actions
    );
}

#[test]
fn an_open_volume_is_not_migrated() {
    let (set, mut w) = moving(vec![], "");
    if let Some(Discovery::Ok(inv)) = w
        .backends
        .get_mut(&"a".parse::<crate::manifest::Name>().unwrap())
        .map(|b| &mut b.discovery)
    {
        inv.objects[0].in_use = Some(crate::model::InUse::Named {
            holder: "pid 4242 (qemu-system-x86)".into(),
        });
    }
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(
        p.errors,
        [
            "volume.db: spec.backend changed: a -> b, but the volume cannot be migrated: it is in use by pid 4242 (qemu-system-x86): stop or detach it, then plan again"
        ]
    );
}

fn across_set(extra: &str) -> ManifestSet {
    manifests(
        &(backend_yaml("fa", "  host: stor-a\n  migrationBandwidth: 100Mi\n")
            + &backend_yaml("fb", "  host: stor-b\n")
            + &vol_yaml("db", "1Gi", "  backend: fb\n")
            + extra),
    )
}

/// Host stor-a's world: db on fa; stor-b's: fb, empty or with `on_b`;
/// each with the other's volumes as published.
fn across_worlds(on_b: Vec<Observed>) -> (World, World) {
    let mut db = obj("db", GIB, 1);
    db.allocated = Some(GIB / 4);
    let mut a = world(vec![view("fa", true, 20.0, 100 * GIB, vec![db])]);
    let mut b = world(vec![view("fb", true, 20.0, 100 * GIB, on_b)]);
    a.fleet = placed(&[]);
    b.fleet = placed(&[]);
    b.remote.volumes.insert(
        "db".into(),
        vec![crate::observe::RemoteVolume {
            host: "stor-a".into(),
            backend: "fa".into(),
            uuid: Uuid::from_u128(1),
            size: GIB,
            allocated: Some(GIB / 4),
            health: Health::Ready,
            snapshots: Vec::new(),
        }],
    );
    (a, b)
}

fn across_of(p: &super::Plan) -> (&super::Across, u64, Option<u64>, bool) {
    match &p.actions[..] {
        [
            super::Action {
                op:
                    Op::Migrate {
                        across: Some(x),
                        read,
                        bandwidth,
                        resume,
                        ..
                    },
                ..
            },
        ] => (x, *read, *bandwidth, *resume),
        other => panic!("one move between hosts: {other:?}"),
    }
}

#[test]
fn a_move_to_another_hosts_back_end_needs_the_fleet() {
    let set = across_set("");
    let (mut a, _) = across_worlds(vec![]);
    a.fleet = crate::observe::Fleet::Off;
    let p = plan(&set, &a, &Recorded::default(), Options::default());
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(
        p.errors,
        [
            "volume.db: spec.backend changed: fa -> fb, but fb is a back end of host stor-b: a move between hosts runs through the fleet (the job, and stor-b's iSCSI initiator name, live in etcd); run the agents, and plan/apply, with --etcd; until then set spec.backend back to fa"
        ]
    );
    a.fleet = crate::observe::Fleet::Unavailable("etcd at http://127.0.0.1:1: no answer".into());
    let p = plan(&set, &a, &Recorded::default(), Options::default());
    assert!(p.errors[0].to_string().contains("the fleet is unavailable (etcd at http://127.0.0.1:1: no answer): the move waits for etcd"), "{:?}", p.errors);
}

#[test]
fn both_hosts_plan_their_half_of_a_move_between_hosts() {
    let set = across_set("");
    let (a, b) = across_worlds(vec![]);
    // The source: exports and waits.
    let pa = plan(&set, &a, &Recorded::default(), Options::default());
    assert!(pa.errors.is_empty(), "{:?}", pa.errors);
    let (x, read, bw, resume) = across_of(&pa);
    assert_eq!(
        (x.from_host.as_str(), x.to_host.as_str(), x.role),
        ("stor-a", "stor-b", super::Role::Export)
    );
    assert_eq!((read, bw, resume), (GIB / 4, Some(100 << 20), false));
    let text = render::text(&pa);
    for line in [
        "# volume.db will be migrated",
        "> backend    = \"stor-a/fa\" -> \"stor-b/fb\"",
        "hosts      = stor-a exports and waits, stor-b copies over iSCSI and verifies, then stor-a removes the source",
        "read       = 256 MiB (the allocated data; holes are not read)",
        "bandwidth  = 100 MiB/s",
        "over       = iSCSI: a LIO export of the volume with an ACL for stor-b's initiator and a one-time CHAP secret, removed with the source",
    ] {
        assert!(text.contains(line), "{line:?} in\n{text}");
    }
    // The destination: copies it, never creates it.
    let pb = plan(&set, &b, &Recorded::default(), Options::default());
    assert!(pb.errors.is_empty(), "{:?}", pb.errors);
    assert!(created(&pb).is_empty(), "{:?}", pb.actions);
    let (x, read, bw, resume) = across_of(&pb);
    assert_eq!(x.role, super::Role::Copy);
    assert_eq!(
        (read, bw, resume, x.source_gone),
        (GIB / 4, Some(100 << 20), false, false)
    );
    let text = render::text(&pb);
    assert!(
        text.contains("> backend    = \"stor-a/fa\" -> \"stor-b/fb\""),
        "{text}"
    );
    assert!(text.contains("spec.backend is fb; the volume lives on fa of host stor-a: stor-a exports and waits, stor-b copies"), "{text}");
    assert!(text.contains("target     = fb: virtual free"), "{text}");
    // Without the fleet, nothing tells stor-b the volume lives elsewhere:
    // it would be created (as before), so the fleet's view is what counts.
    let mut off = b.clone();
    off.remote = crate::observe::Remote::default();
    let p = plan(&set, &off, &Recorded::default(), Options::default());
    assert_eq!(created(&p), [("db".into(), "fb".into())]);
}

fn job(phase: crate::model::Phase, copied: u64) -> crate::model::JobView {
    crate::model::JobView {
        uuid: Uuid::from_u128(1),
        from: crate::model::End {
            host: "stor-a".into(),
            backend: "fa".into(),
        },
        to: crate::model::End {
            host: "stor-b".into(),
            backend: "fb".into(),
        },
        phase,
        copied,
        to_copy: GIB / 4,
    }
}

#[test]
fn a_move_between_hosts_in_flight_resumes_on_both_and_ends_with_the_promotion() {
    let set = across_set("");
    let mut target = obj("db", GIB, 1);
    target.health = Health::Migrating;
    let (mut a, mut b) = across_worlds(vec![target]);
    a.remote
        .jobs
        .insert("db".into(), job(crate::model::Phase::Copying, GIB / 8));
    b.remote.jobs = a.remote.jobs.clone();
    let pa = plan(&set, &a, &Recorded::default(), Options::default());
    let (x, _, _, resume) = across_of(&pa);
    assert!(resume);
    assert_eq!(x.phase.as_deref(), Some("copying"));
    assert!(
        render::text(&pa).contains("job        = copying in etcd, 128 MiB copied"),
        "{}",
        render::text(&pa)
    );
    let pb = plan(&set, &b, &Recorded::default(), Options::default());
    assert!(pb.errors.is_empty(), "{:?}", pb.errors);
    let (x, _, _, resume) = across_of(&pb);
    assert!(resume && !x.source_gone);
    // The source verified and marked deleting: its host goes on.
    let mut a2 = a.clone();
    a2.remote
        .jobs
        .insert("db".into(), job(crate::model::Phase::Verified, GIB / 4));
    if let Discovery::Ok(inv) = &mut a2.backends.values_mut().next().unwrap().discovery {
        inv.objects[0].health = Health::Deleting;
    }
    let p = plan(&set, &a2, &Recorded::default(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert_eq!(across_of(&p).0.role, super::Role::Export);
    // Killed between removing the source and the job: the job goes.
    let mut a3 = a2.clone();
    if let Discovery::Ok(inv) = &mut a3.backends.values_mut().next().unwrap().discovery {
        inv.objects.clear();
    }
    let p = plan(&set, &a3, &Recorded::default(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    let (x, read, _, resume) = across_of(&p);
    assert_eq!((x.role, read, resume), (super::Role::Export, 0, true));
    assert!(
        p.actions[0]
            .reason
            .contains("its export and job are removed"),
        "{}",
        p.actions[0].reason
    );
    // The source host finished (no job, on no host): stor-b promotes.
    b.remote = crate::observe::Remote::default();
    let pb = plan(&set, &b, &Recorded::default(), Options::default());
    assert!(pb.errors.is_empty(), "{:?}", pb.errors);
    let (x, read, _, _) = across_of(&pb);
    assert!(x.source_gone);
    assert_eq!(read, 0);
    // Without the fleet, a lone target is the error it always was.
    b.fleet = crate::observe::Fleet::Off;
    let pb = plan(&set, &b, &Recorded::default(), Options::default());
    assert!(pb.actions.is_empty());
    assert!(
        pb.errors[0]
            .to_string()
            .contains("only the target of an interrupted migration"),
        "{:?}",
        pb.errors
    );
}

/// stor-a's and stor-b's worlds for db (on fa, stor-a) with snapshots s1
/// and s2 taken on stor-a (s1 with 64 MiB of data), as each host sees it.
fn across_chain_worlds() -> (World, World) {
    let (mut a, mut b) = across_worlds(vec![]);
    let mut s1 = chain_snap_obj("s1", GIB, 2, 1);
    s1.allocated = Some(GIB / 16);
    let s2 = chain_snap_obj("s2", GIB, 3, 1);
    if let Discovery::Ok(inv) = &mut a.backends.values_mut().next().unwrap().discovery {
        inv.objects.extend([s1.clone(), s2.clone()]);
    }
    b.remote.volumes.get_mut("db").unwrap()[0].snapshots = [s1, s2]
        .iter()
        .map(|o| crate::observe::RemoteSnapshot {
            name: o.name.clone(),
            uuid: o.uuid,
            size: o.size,
            allocated: o.allocated,
            health: o.health,
        })
        .collect();
    (a, b)
}

fn chain_names(p: &super::Plan) -> Vec<(String, u128)> {
    p.actions
        .iter()
        .find_map(|a| match &a.op {
            Op::Migrate { snapshots, .. } => Some(
                snapshots
                    .iter()
                    .map(|c| (c.name.clone(), c.uuid.as_u128()))
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

#[test]
fn a_move_between_hosts_without_migrate_snapshots_is_refused_on_both_naming_the_snapshots() {
    let set = across_set(&(snap_yaml("s1", "db") + &snap_yaml("s2", "db")));
    let (a, b) = across_chain_worlds();
    for (host, w) in [("stor-a", &a), ("stor-b", &b)] {
        let p = plan(&set, w, &Recorded::default(), Options::default());
        assert!(
            p.actions
                .iter()
                .all(|x| !matches!(x.op, Op::Migrate { .. } | Op::Create { .. })),
            "{host}: {:?}",
            p.actions
        );
        assert_eq!(p.errors.len(), 1, "{host}: {:?}", p.errors);
        assert!(
            p.errors[0].to_string().contains("it has snapshots (snapshot.s1, snapshot.s2), which live on its back end; set migrateSnapshots: true to move them with it as a chain"),
            "{host}: {:?}",
            p.errors
        );
    }
    // Declared but not taken yet: named too, with the way on.
    let set = across_set(&snap_yaml("s3", "db"));
    let (a, _) = across_worlds(vec![]);
    let p = plan(&set, &a, &Recorded::default(), Options::default());
    assert!(
        p.errors[0].to_string().contains("(snapshot.s3)"),
        "{:?}",
        p.errors
    );
}

#[test]
#[allow(clippy::too_many_lines)] // both hosts, then each phase of the move
fn a_volume_moves_to_another_host_with_its_snapshots_listed_in_both_plans() {
    let set = manifests(
        &(backend_yaml("fa", "  host: stor-a\n")
            + &backend_yaml("fb", "  host: stor-b\n")
            + &vol_yaml("db", "1Gi", "  backend: fb\n  migrateSnapshots: true\n")
            + &snap_yaml("s1", "db")
            + &snap_yaml("s2", "db")),
    );
    let (a, b) = across_chain_worlds();
    // stor-a recorded the snapshots it took.
    let snap_rec = |n: u128, name: &str| {
        (
            Uuid::from_u128(n),
            RecordedObject {
                kind: ObjKind::Snapshot,
                ..record(n, name, "fa", DeletionPolicy::Retain).1
            },
        )
    };
    let rec_a = Recorded {
        objects: [snap_rec(2, "s1"), snap_rec(3, "s2")].into(),
        last_plan: None,
    };
    let pa = plan(&set, &a, &rec_a, Options::default());
    assert!(pa.errors.is_empty(), "{:?}", pa.errors);
    assert_eq!(across_of(&pa).0.role, super::Role::Export);
    assert_eq!(chain_names(&pa), [("s1".into(), 2), ("s2".into(), 3)]);
    let pb = plan(&set, &b, &Recorded::default(), Options::default());
    assert!(pb.errors.is_empty(), "{:?}", pb.errors);
    assert!(
        created(&pb).is_empty(),
        "the destination creates nothing: {:?}",
        pb.actions
    );
    assert_eq!(across_of(&pb).0.role, super::Role::Copy);
    assert_eq!(chain_names(&pb), [("s1".into(), 2), ("s2".into(), 3)]);
    for (host, p) in [("stor-a", &pa), ("stor-b", &pb)] {
        let text = render::text(p);
        for line in [
            "> backend    = \"stor-a/fa\" -> \"stor-b/fb\"",
            "over       = iSCSI: a LIO export of the volume and one of each snapshot with an ACL for stor-b's initiator",
            "chain      = with its 2 snapshot(s), oldest first: the oldest copied, then each newer one and the volume as the blocks that differ; each snapshot keeps its name and id",
            "> snapshot   = \"s1\": 1Gi, 64 MiB of data",
            "> snapshot   = \"s2\": 1Gi, 0 B of data",
        ] {
            assert!(text.contains(line), "{host}: {line:?} in\n{text}");
        }
    }
    // In flight: the source verified, its chain marked deleting; neither
    // host calls the snapshots lost, and the destination creates none.
    let mut a2 = a.clone();
    a2.remote
        .jobs
        .insert("db".into(), job(crate::model::Phase::Verified, GIB / 4));
    if let Discovery::Ok(inv) = &mut a2.backends.values_mut().next().unwrap().discovery {
        for o in &mut inv.objects {
            o.health = Health::Deleting;
        }
    }
    let p = plan(&set, &a2, &rec_a, Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert_eq!(across_of(&p).0.role, super::Role::Export);
    assert_eq!(chain_names(&p).len(), 2, "{:?}", p.actions);
    let mut b2 = b.clone();
    b2.remote.jobs = a2.remote.jobs.clone();
    let mut t = obj("db", GIB, 1);
    t.health = Health::Migrating;
    let mut t1 = chain_snap_obj("s1", GIB, 2, 1);
    t1.health = Health::Migrating;
    if let Discovery::Ok(inv) = &mut b2.backends.values_mut().next().unwrap().discovery {
        inv.objects.extend([t, t1]);
    }
    let p = plan(&set, &b2, &Recorded::default(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert!(created(&p).is_empty(), "{:?}", p.actions);
    assert_eq!(chain_names(&p).len(), 2, "{:?}", p.actions);
    // Done: the source host forgot the chain and sees it on stor-b; it
    // plans nothing for the snapshots (no "lost", no create).
    let (mut a3, _) = across_worlds(vec![]);
    if let Discovery::Ok(inv) = &mut a3.backends.values_mut().next().unwrap().discovery {
        inv.objects.clear();
    }
    a3.remote.volumes.insert(
        "db".into(),
        vec![crate::observe::RemoteVolume {
            host: "stor-b".into(),
            backend: "fb".into(),
            uuid: Uuid::from_u128(1),
            size: GIB,
            allocated: None,
            health: Health::Ready,
            snapshots: Vec::new(),
        }],
    );
    let p = plan(&set, &a3, &Recorded::default(), Options::default());
    assert!(
        p.actions.is_empty() && p.errors.is_empty(),
        "{:?} {:?}",
        p.actions,
        p.errors
    );
    // A snapshot not taken on the source yet holds the move back on both.
    let set2 = manifests(
        &(backend_yaml("fa", "  host: stor-a\n")
            + &backend_yaml("fb", "  host: stor-b\n")
            + &vol_yaml("db", "1Gi", "  backend: fb\n  migrateSnapshots: true\n")
            + &snap_yaml("s1", "db")
            + &snap_yaml("s2", "db")
            + &snap_yaml("s3", "db")),
    );
    for (host, w) in [("stor-a", &a), ("stor-b", &b)] {
        let p = plan(&set2, w, &Recorded::default(), Options::default());
        assert!(
            p.errors.iter().any(|e| e
                .to_string()
                .contains("snapshot.s3 is declared but not taken yet")),
            "{host}: {:?}",
            p.errors
        );
        assert!(
            p.actions
                .iter()
                .all(|x| !matches!(x.op, Op::Migrate { .. })),
            "{host}: {:?}",
            p.actions
        );
    }
}

#[test]
fn only_a_target_left_is_an_error_not_a_new_volume() {
    let (set, w) = two_backends("b", "", vec![], vec![target_of(1, Health::Migrating)]);
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert!(
        p.errors[0]
            .to_string()
            .contains("only the target of an interrupted migration"),
        "{:?}",
        p.errors
    );
}

#[test]
fn a_retype_in_place_changes_nothing_and_one_that_needs_a_move_follows_the_policy() {
    let types = "apiVersion: cinderblock.dev/v1alpha1\nkind: VolumeType\nmetadata: {name: gold}\nspec:\n  extraSpecs: {volume_backend_name: b}\n---\napiVersion: cinderblock.dev/v1alpha1\nkind: VolumeType\nmetadata: {name: any}\nspec: {}\n---\n";
    let w = world(vec![
        view("a", true, 20.0, 100 * GIB, vec![obj("db", GIB, 1)]),
        view("b", true, 20.0, 100 * GIB, vec![]),
    ]);
    let base = backend_yaml("a", "") + &backend_yaml("b", "") + types;
    let rec = Recorded {
        objects: [record(1, "db", "a", DeletionPolicy::Retain)].into(),
        last_plan: None,
    };
    // `any` fits a: in place, nothing to do.
    let set = manifests(&(base.clone() + &vol_yaml("db", "1Gi", "  volumeType: any\n")));
    let p = plan(&set, &w, &rec, Options::default());
    assert!(
        p.actions.is_empty() && p.errors.is_empty(),
        "{:?} {:?}",
        p.actions,
        p.errors
    );
    // `gold` needs b: refused by default...
    let set = manifests(&(base.clone() + &vol_yaml("db", "1Gi", "  volumeType: gold\n")));
    let p = plan(&set, &w, &rec, Options::default());
    assert!(
        p.errors[0]
            .to_string()
            .contains("migrationPolicy: never (the default, as Cinder) forbids"),
        "{:?}",
        p.errors
    );
    // ... and migrated on demand.
    let set = manifests(
        &(base
            + &vol_yaml(
                "db",
                "1Gi",
                "  volumeType: gold\n  migrationPolicy: on-demand\n",
            )),
    );
    let p = plan(&set, &w, &rec, Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert!(
        matches!(&p.actions[0].op, Op::Migrate { to, .. } if to == "b"),
        "{:?}",
        p.actions
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
fn the_target_of_a_volume_no_longer_declared_is_removed() {
    let set = manifests(
        &(backend_yaml("a", "")
            + &backend_yaml("b", "")
            + &vol_yaml("other", "1Gi", "  backend: a\n")),
    );
    let w = world(vec![
        view(
            "a",
            true,
            20.0,
            100 * GIB,
            vec![obj("db", GIB, 1), obj("other", GIB, 2)],
        ),
        view(
            "b",
            true,
            20.0,
            100 * GIB,
            vec![target_of(1, Health::Migrating)],
        ),
    ]);
    let rec = Recorded {
        objects: [record(1, "db", "a", DeletionPolicy::Retain)].into(),
        last_plan: None,
    };
    let p = plan(&set, &w, &rec, Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert!(
        p.actions
            .iter()
            .any(|a| matches!(&a.op, Op::Forget { backend, .. } if backend == "a")),
        "the volume itself follows its deletionPolicy: {:?}",
        p.actions
    );
    assert!(
        p.actions
            .iter()
            .any(|a| matches!(&a.op, Op::Delete { backend, .. } if backend == "b")),
        "its unfinished target goes: {:?}",
        p.actions
    );
}

pub(crate) const INI_A: &str = "iqn.1994-05.com.example:a";
pub(crate) const INI_B: &str = "iqn.1994-05.com.example:b";

fn export_yaml(initiators: &[&str]) -> String {
    let mut s = "  export:\n    iscsi:\n      initiators:\n".to_owned();
    for i in initiators {
        s.push_str("        - ");
        s.push_str(i);
        s.push('\n');
    }
    s
}

fn exported(uuid: u128, initiators: &[&str], logged_in: &[&str]) -> crate::observe::Exports {
    let u = Uuid::from_u128(uuid);
    let e = crate::iscsi::lio::ObservedExport {
        uuid: u,
        iqn: Some(crate::iscsi::names::default_iqn(u)),
        device: None,
        backstore: crate::iscsi::lio::Placement {
            hba: "iblock_0".into(),
            kind: crate::iscsi::configfs::BackstoreKind::Block,
            neighbours: vec![],
        },
        size: None,
        credentials: initiators
            .iter()
            .map(|s| {
                (
                    (*s).to_owned(),
                    crate::iscsi::configfs::ChapPresence::default(),
                )
            })
            .collect(),
        initiators: initiators.iter().map(|s| (*s).to_owned()).collect(),
        logged_in: logged_in.iter().map(|s| (*s).to_owned()).collect(),
        portals: vec!["0.0.0.0:3260".into()],
        chap: false,
        enabled: true,
    };
    crate::observe::Exports::Found(BTreeMap::from([(u, e)]))
}

/// Volume `v` (uuid 1) as recorded, Retain.
pub(crate) fn recorded_v() -> Recorded {
    Recorded {
        objects: [record(1, "v", "a", DeletionPolicy::Retain)].into(),
        last_plan: None,
    }
}

pub(crate) fn one_volume_world(exports: crate::observe::Exports, name: &str) -> World {
    exported_world(exports, vec![obj(name, GIB, 1)])
}

/// Back end "a" holding `objects`, with LIO showing `exports`.
fn exported_world(exports: crate::observe::Exports, objects: Vec<Observed>) -> World {
    let mut w = world(vec![view("a", true, 20.0, 100 * GIB, objects)]);
    w.exports = exports;
    w
}

#[test]
fn exports_are_planned_new_then_updated_then_removed() {
    // New volume with an export: create, then export with the default IQN
    // known after apply.
    let set = manifests(&(backend_yaml("a", "") + &vol_yaml("v", "1Gi", &export_yaml(&[INI_A]))));
    let mut w = world(vec![view("a", true, 20.0, 100 * GIB, vec![])]);
    w.exports = crate::observe::Exports::Found(BTreeMap::new());
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert!(matches!(p.actions[0].op, Op::Create { .. }));
    assert!(
        matches!(&p.actions[1].op, Op::Export { uuid: None, iqn: None, changes, initiators, .. }
            if changes.is_empty() && initiators == &[INI_A.to_owned()]),
        "{:?}",
        p.actions
    );
    assert_eq!(p.counts(), (2, 0, 0, 0));

    // Existing export; one more initiator: an update naming it.
    let set =
        manifests(&(backend_yaml("a", "") + &vol_yaml("v", "1Gi", &export_yaml(&[INI_A, INI_B]))));
    let w = one_volume_world(exported(1, &[INI_A], &[INI_A]), "v");
    let p = plan(&set, &w, &recorded_v(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert_eq!(p.actions.len(), 1, "{:?}", p.actions);
    assert!(
        matches!(&p.actions[0].op, Op::Export { changes, .. } if changes == &[format!("allow {INI_B}")]),
        "{:?}",
        p.actions
    );
    assert_eq!(p.actions[0].symbol(), "~");

    // Same as declared: nothing to do.
    let set = manifests(&(backend_yaml("a", "") + &vol_yaml("v", "1Gi", &export_yaml(&[INI_A]))));
    let w = one_volume_world(exported(1, &[INI_A], &[]), "v");
    let p = plan(&set, &w, &recorded_v(), Options::default());
    assert!(p.actions.is_empty() && p.errors.is_empty(), "{p:?}");

    // spec.export removed while nobody is logged in: unexport.
    let set = manifests(&(backend_yaml("a", "") + &vol_yaml("v", "1Gi", "")));
    let p = plan(&set, &w, &recorded_v(), Options::default());
    assert!(
        matches!(
            p.actions[..],
            [super::Action {
                op: Op::Unexport { .. },
                ..
            }]
        ),
        "{:?}",
        p.actions
    );
    assert_eq!(p.actions[0].symbol(), "-");
}

#[test]
fn a_logged_in_initiator_blocks_removing_its_acl_the_export_and_the_volume() {
    let uuid = Uuid::from_u128(1);
    let iqn = crate::iscsi::names::default_iqn(uuid);
    let w = one_volume_world(exported(1, &[INI_A, INI_B], &[INI_B]), "v");

    let set = manifests(&(backend_yaml("a", "") + &vol_yaml("v", "1Gi", &export_yaml(&[INI_A]))));
    let p = plan(&set, &w, &recorded_v(), Options::default());
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(
        p.errors,
        [format!(
            "volume.v: removing the ACL of {INI_B} cuts off a logged-in initiator; log it out first (iscsiadm -m node -T {iqn} --logout on that host)"
        )]
    );

    let set = manifests(&(backend_yaml("a", "") + &vol_yaml("v", "1Gi", "")));
    let p = plan(&set, &w, &recorded_v(), Options::default());
    assert!(
        p.errors[0]
            .to_string()
            .starts_with("volume.v: in use: initiator(s) iqn.1994-05.com.example:b are logged in"),
        "{:?}",
        p.errors
    );

    // The manifest removed with deletionPolicy Delete: no unexport, no delete.
    let set = manifests(&(backend_yaml("a", "") + &vol_yaml("keep", "1Gi", "")));
    let v_and_keep = || vec![obj("v", GIB, 1), obj("keep", GIB, 2)];
    let w = exported_world(exported(1, &[INI_A, INI_B], &[INI_B]), v_and_keep());
    let rec = Recorded {
        objects: [
            record(1, "v", "a", DeletionPolicy::Delete),
            record(2, "keep", "a", DeletionPolicy::Retain),
        ]
        .into(),
        last_plan: None,
    };
    let p = plan(&set, &w, &rec, Options::default());
    assert!(
        p.actions
            .iter()
            .all(|a| !matches!(a.op, Op::Delete { .. } | Op::Unexport { .. })),
        "{:?}",
        p.actions
    );
    assert!(p.errors[0].to_string().contains("in use"), "{:?}", p.errors);

    // Nobody logged in: unexport, then delete, in that order.
    let w = exported_world(exported(1, &[INI_A], &[]), v_and_keep());
    let p = plan(&set, &w, &rec, Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    let ops: Vec<&str> = p.actions.iter().map(super::Action::symbol).collect();
    assert_eq!(ops, ["-", "-"]);
    assert!(matches!(p.actions[0].op, Op::Unexport { .. }));
    assert!(matches!(p.actions[1].op, Op::Delete { .. }));
}

#[test]
fn an_export_without_lio_is_a_plan_error_saying_how_to_load_it() {
    let set = manifests(&(backend_yaml("a", "") + &vol_yaml("v", "1Gi", &export_yaml(&[INI_A]))));
    let w = one_volume_world(crate::observe::Exports::Absent, "v");
    let p = plan(&set, &w, &recorded_v(), Options::default());
    assert_eq!(p.errors.len(), 1);
    assert!(
        p.errors[0]
            .to_string()
            .starts_with("volume.v: spec.export needs LIO, which is not loaded on this host"),
        "{:?}",
        p.errors
    );
    assert!(
        p.errors[0]
            .to_string()
            .contains("modprobe target_core_mod iscsi_target_mod")
    );
}

#[test]
fn an_exported_volume_is_not_migrated_and_the_error_says_how() {
    // spec.export removed in the same change: unexport, then move.
    let (set, mut w) = moving(vec![], "");
    w.exports = exported(1, &[INI_A], &[]);
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert!(
        matches!(
            p.actions[..],
            [
                super::Action {
                    op: Op::Unexport { .. },
                    ..
                },
                super::Action {
                    op: Op::Migrate { .. },
                    ..
                }
            ]
        ),
        "{:?}",
        p.actions
    );
    // Still declared: refused.
    let (set, mut w) = moving(vec![], &export_yaml(&[INI_A]));
    w.exports = exported(1, &[INI_A], &[]);
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
    assert!(
        p.errors[0].to_string().ends_with("it is exported over iSCSI as iqn.2026-11.dev.cinderblock:volume-00000000-0000-0000-0000-000000000001, and the export points at its data on a: remove spec.export for the move (no initiator is logged in) and add it back afterwards"),
        "{:?}",
        p.errors
    );
    w.exports = exported(1, &[INI_A], &[INI_A]);
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    assert!(
        p.errors[0]
            .to_string()
            .contains("in use: initiator(s) iqn.1994-05.com.example:a are logged in"),
        "{:?}",
        p.errors
    );
}

#[test]
fn a_verified_copy_interrupted_before_the_switch_is_finished() {
    // The source on a is marked deleting (verified), the target on b still
    // migrating: the switch is finished, nothing copied again.
    let (set, w) = two_backends(
        "b",
        "",
        vec![target_of(1, Health::Deleting)],
        vec![target_of(1, Health::Migrating)],
    );
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert!(
        matches!(&p.actions[..], [a] if matches!(&a.op, Op::Migrate { from, to, resume: true, read: 0, .. } if from == "a" && to == "b")),
        "{:?}",
        p.actions
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
        target: Box::new(crate::backup::target::RepoSpec::dir(std::path::Path::new(
            "/srv/repo",
        ))),
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
    assert!(
        err[0]
            .to_string()
            .contains("matches 2 backups of volume db"),
        "{err:?}"
    );
    let err = chosen(&from("", "512Mi")).unwrap_err();
    assert!(
        err[0]
            .to_string()
            .contains("spec.size 512Mi is less than backup"),
        "{err:?}"
    );
    let err = chosen(&from(", id: cccc", "1Gi")).unwrap_err();
    assert!(
        err[0]
            .to_string()
            .contains("no catalogued backup cccc of volume db"),
        "{err:?}"
    );
}

#[test]
fn a_restore_of_the_latest_backup_waits_for_the_first_one_the_policy_makes() {
    // examples/full-site declares a volume, its nightly policy and a restore
    // of its latest backup together: on a new site the rest applies and the
    // restore waits; an explicit id, or a volume nothing backs up with that
    // policy, stays an error.
    let policy = "apiVersion: cinderblock.dev/v1alpha1\nkind: BackupPolicy\nmetadata: {name: nightly}\nspec:\n  schedule: \"0 2 * * *\"\n  target: {path: /srv/repo}\n---\n";
    let site = |db_spec: &str, id: &str| {
        manifests(
            &(backend_yaml("pool", "")
                + policy
                + &vol_yaml("db", "1Gi", db_spec)
                + &vol_yaml(
                    "copy",
                    "1Gi",
                    &format!("  source:\n    backup: {{policy: nightly, volume: db{id}}}\n"),
                )),
        )
    };
    let mut w = world(vec![view("pool", true, 20.0, 100 * GIB, vec![])]);
    w.backup_repos = [("nightly".parse().unwrap(), "/srv/repo".into())].into();
    let p = plan(
        &site("  backupPolicy: nightly\n", ""),
        &w,
        &Recorded::default(),
        Options::default(),
    );
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert_eq!(p.actions.len(), 1, "db alone is created: {:?}", p.actions);
    assert_eq!(p.waiting.len(), 1, "{:?}", p.waiting);
    assert_eq!(p.waiting[0].address, "volume.copy");
    assert!(
        p.waiting[0].reason.contains(
            "restores the latest backup of volume db (BackupPolicy nightly), and there is none yet"
        ),
        "{:?}",
        p.waiting
    );
    for (db_spec, id) in [("  backupPolicy: nightly\n", ", id: cccc"), ("", "")] {
        let p = plan(
            &site(db_spec, id),
            &w,
            &Recorded::default(),
            Options::default(),
        );
        assert!(p.waiting.is_empty(), "{:?}", p.waiting);
        assert!(
            p.errors
                .iter()
                .any(|e| e.to_string().contains("no catalogued backup")),
            "{db_spec:?} {id:?}: {:?}",
            p.errors
        );
    }
}

/// Back ends `fa` (host stor-a) and `fb` (host stor-b), a volume type both
/// can serve and one only `fb` can, and the volumes `vols`; seen from
/// stor-a (only `fa` discovered) or stor-b.
fn two_hosts(vols: &str, from: &str) -> (ManifestSet, World) {
    let set = manifests(
        &(backend_yaml("fa", "  host: stor-a\n")
            + &backend_yaml("fb", "  host: stor-b\n  capabilities: {tier: gold}\n")
            + "apiVersion: cinderblock.dev/v1alpha1\nkind: VolumeType\nmetadata: {name: any}\nspec: {}\n---\n"
            + "apiVersion: cinderblock.dev/v1alpha1\nkind: VolumeType\nmetadata: {name: gold}\nspec:\n  extraSpecs: {tier: gold}\n---\n"
            + vols),
    );
    let mut v = view(from, true, 20.0, 100 * GIB, vec![]);
    if from == "fb" {
        v.capabilities.insert("tier".into(), "gold".into());
    }
    (set, world(vec![v]))
}

fn created(p: &super::Plan) -> Vec<(String, String)> {
    p.actions
        .iter()
        .filter_map(|a| match &a.op {
            Op::Create { name, backend, .. } => Some((name.clone(), backend.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn without_a_fleet_an_unpinned_volume_two_hosts_could_take_is_created_on_neither() {
    let vols = vol_yaml("db", "1Gi", "  volumeType: any\n")
        + &vol_yaml("pa", "1Gi", "  backend: fa\n")
        + &vol_yaml("pb", "1Gi", "  backend: fb\n")
        + &vol_yaml("g", "1Gi", "  volumeType: gold\n");
    for (host_view, other, mine) in [
        ("fa", "fb on host stor-b", "pa"),
        ("fb", "fa on host stor-a", "pb"),
    ] {
        let (set, w) = two_hosts(&vols, host_view);
        let p = plan(&set, &w, &Recorded::default(), Options::default());
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let mut want = vec![(mine.to_owned(), host_view.to_owned())];
        if host_view == "fb" {
            // Only stor-b's back end serves `gold`: stor-b creates it,
            // stor-a leaves it without an error.
            want.insert(0, ("g".to_owned(), "fb".to_owned()));
        }
        assert_eq!(created(&p), want);
        assert_eq!(p.waiting.len(), 1, "{:?}", p.waiting);
        assert_eq!(p.waiting[0].address, "volume.db");
        assert_eq!(
            p.waiting[0].reason,
            format!(
                "not created: back ends of other hosts could also take it ({other}), and without a fleet each host would create its own; pin it with spec.backend, or run the agents with --etcd"
            )
        );
        let text = render::text(&p);
        assert!(text.contains(&format!("Waiting: volume.db: not created: back ends of other hosts could also take it ({other})")), "{text}");
        assert!(text.ends_with(" 1 object waits (see above).\n"), "{text}");
    }
}

#[test]
fn a_snapshot_and_a_copy_of_a_waiting_volume_wait_too() {
    let vols = vol_yaml("db", "1Gi", "  volumeType: any\n")
        + &vol_yaml("copy", "1Gi", "  source: {volume: db}\n")
        + "apiVersion: cinderblock.dev/v1alpha1\nkind: Snapshot\nmetadata: {name: s1}\nspec: {volume: db}\n---\n";
    let (set, w) = two_hosts(&vols, "fa");
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    let waiting: Vec<(&str, &str)> = p
        .waiting
        .iter()
        .map(|w| (w.address.as_str(), w.reason.as_str()))
        .collect();
    assert_eq!(
        waiting[1..],
        [
            ("volume.copy", "waits for its source volume.db"),
            ("snapshot.s1", "waits for its volume.db"),
        ]
    );
    assert_eq!(
        render::summary(&p),
        "No changes now. 3 objects wait (see above)."
    );
}

#[test]
fn consistency_group_members_are_placed_together() {
    let set = manifests(
        &(backend_yaml("a", "")
            + &backend_yaml("b", "")
            + "apiVersion: cinderblock.dev/v1alpha1\nkind: SchedulerPolicy\nmetadata: {name: default}\nspec:\n  weighers: [{name: VolumeNumberWeigher}]\n---\n"
            + "apiVersion: cinderblock.dev/v1alpha1\nkind: VolumeType\nmetadata: {name: t}\nspec: {}\n---\n"
            + "apiVersion: cinderblock.dev/v1alpha1\nkind: ConsistencyGroup\nmetadata: {name: g}\nspec: {volumeTypes: [t]}\n---\n"
            + &vol_yaml("m1", "1Gi", "  volumeType: t\n  consistencyGroup: g\n")
            + &vol_yaml("m2", "1Gi", "  volumeType: t\n  consistencyGroup: g\n")
            + &vol_yaml("m3", "1Gi", "  volumeType: t\n  consistencyGroup: g\n")
            + &vol_yaml("x", "1Gi", "  volumeType: t\n")),
    );
    // `b` holds a member already: the new members join it, although the
    // volume-number weigher alone would send them to the empty `a`.
    let w = world(vec![
        view("a", true, 20.0, 100 * GIB, vec![]),
        view("b", true, 20.0, 100 * GIB, vec![obj("m2", GIB, 2)]),
    ]);
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert_eq!(
        created(&p),
        [
            ("m1".into(), "b".into()),
            ("m3".into(), "b".into()),
            ("x".into(), "a".into())
        ]
    );
    assert!(
        p.actions[0]
            .reason
            .contains("placed with its consistency group g"),
        "{}",
        p.actions[0].reason
    );
}

const GROUP_TYPES: &str = "apiVersion: cinderblock.dev/v1alpha1\nkind: SchedulerPolicy\nmetadata: {name: default}\nspec:\n  weighers: [{name: VolumeNumberWeigher, multiplier: -1}]\n---\napiVersion: cinderblock.dev/v1alpha1\nkind: VolumeType\nmetadata: {name: t}\nspec: {}\n---\n";

fn group_yaml(extra: &str) -> String {
    format!(
        "apiVersion: cinderblock.dev/v1alpha1\nkind: ConsistencyGroup\nmetadata: {{name: g}}\nspec:\n  volumeTypes: [t]\n{extra}---\n"
    )
}

fn members(extra: &str) -> String {
    ["m1", "m2", "m3"]
        .iter()
        .map(|m| {
            vol_yaml(
                m,
                "1Gi",
                &format!("  volumeType: t\n  consistencyGroup: g\n{extra}"),
            )
        })
        .collect()
}

fn grouped(mut r: (Uuid, RecordedObject), g: &str) -> (Uuid, RecordedObject) {
    r.1.consistency_group = Some(g.into());
    r
}

#[test]
fn a_new_group_is_placed_as_one_unit_on_a_back_end_with_room_for_all_members() {
    // `small` has fewer volumes (the weigher's pick) and room for two 1 GiB
    // members, not three: placing members one by one would split the
    // group or fail on the third; as a unit, all three go to `big`.
    let set = manifests(
        &(backend_yaml("small", "")
            + &backend_yaml("big", "")
            + GROUP_TYPES
            + &group_yaml("")
            + &members("")),
    );
    let w = world(vec![
        view("small", false, 1.0, 5 * GIB / 2, vec![]),
        view("big", false, 1.0, 100 * GIB, vec![obj("other", GIB, 9)]),
    ]);
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert_eq!(
        created(&p),
        [
            ("m1".into(), "big".into()),
            ("m2".into(), "big".into()),
            ("m3".into(), "big".into())
        ]
    );
    assert!(
        p.actions[0].reason.contains(
            "placed by the scheduler with its consistency group g (volume.m1, volume.m2, volume.m3: 3Gi together)"
        ),
        "{}",
        p.actions[0].reason
    );
    // Three members of an unrelated size mix on two equal back ends: never split.
    let set = manifests(
        &(backend_yaml("fa", "")
            + &backend_yaml("fb", "")
            + GROUP_TYPES
            + &group_yaml("")
            + &members("")),
    );
    let w = world(vec![
        view("fa", true, 20.0, 100 * GIB, vec![]),
        view("fb", true, 20.0, 100 * GIB, vec![]),
    ]);
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    let backs: std::collections::BTreeSet<String> =
        created(&p).into_iter().map(|(_, b)| b).collect();
    assert_eq!(backs.len(), 1, "{:?}", created(&p));
}

#[test]
fn a_group_no_back_end_can_take_whole_is_one_plan_error_naming_the_group() {
    let set = manifests(
        &(backend_yaml("small", "")
            + &backend_yaml("other", "")
            + GROUP_TYPES
            + &group_yaml("")
            + &members("")),
    );
    let w = world(vec![
        view("small", false, 1.0, 5 * GIB / 2, vec![]),
        view("other", false, 1.0, 5 * GIB / 2, vec![]),
    ]);
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    assert!(created(&p).is_empty(), "{:?}", p.actions);
    assert_eq!(p.errors[0].address.as_deref(), Some("volume.m1"));
    let text = p.errors[0].to_string();
    assert!(
        text.contains("no back end can take consistency group g as one unit (volume.m1, volume.m2, volume.m3: 3Gi together)")
            && text.contains("pin it with spec.backend on ConsistencyGroup/g")
            && text.contains("- small: the whole group: CapacityFilter"),
        "{text}"
    );
}

#[test]
fn a_pinned_group_places_every_member_on_its_pin() {
    let set = manifests(
        &(backend_yaml("fa", "")
            + &backend_yaml("fb", "")
            + GROUP_TYPES
            + &group_yaml("  backend: fb\n")
            + &members("")),
    );
    let w = world(vec![
        view("fa", true, 20.0, 100 * GIB, vec![]),
        view("fb", true, 20.0, 100 * GIB, vec![obj("other", GIB, 9)]),
    ]);
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert!(
        created(&p).iter().all(|(_, b)| b == "fb"),
        "{:?}",
        created(&p)
    );
    match &p.actions[0].op {
        Op::Create {
            consistency_group, ..
        } => assert_eq!(consistency_group.as_deref(), Some("g")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_member_is_not_deleted_while_in_its_group_and_leaving_is_a_visible_change() {
    let base = backend_yaml("fa", "") + GROUP_TYPES + &group_yaml("");
    let w = world(vec![view(
        "fa",
        true,
        20.0,
        100 * GIB,
        vec![obj("m1", GIB, 1), obj("m2", GIB, 2)],
    )]);
    let recorded = Recorded {
        objects: [
            grouped(record(1, "m1", "fa", DeletionPolicy::Delete), "g"),
            grouped(record(2, "m2", "fa", DeletionPolicy::Delete), "g"),
        ]
        .into_iter()
        .collect(),
        last_plan: None,
    };
    // m1's manifest removed while it is a member: refused, with the way out.
    let set = manifests(
        &(base.clone()
            + &vol_yaml(
                "m2",
                "1Gi",
                "  volumeType: t\n  consistencyGroup: g\n  deletionPolicy: Delete\n",
            )),
    );
    let p = plan(&set, &w, &recorded, Options::default());
    assert!(!p.destroys_data(), "{:?}", p.actions);
    assert_eq!(
        p.errors,
        [
            "volume.m1: cannot be deleted: it is a member of consistency group g, and a member is not deleted while it is in the group; declare it again without spec.consistencyGroup and apply (it leaves the group, a ~ change), then remove its manifest"
        ]
    );
    // Declared again without the group: it leaves, shown as a change.
    let set = manifests(
        &(base.clone()
            + &vol_yaml("m1", "1Gi", "  deletionPolicy: Delete\n")
            + &vol_yaml(
                "m2",
                "1Gi",
                "  volumeType: t\n  consistencyGroup: g\n  deletionPolicy: Delete\n",
            )),
    );
    let p = plan(&set, &w, &recorded, Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert_eq!(p.actions.len(), 1, "{:?}", p.actions);
    let text = render::text(&p);
    assert!(
        text.contains("spec.consistencyGroup was removed: it leaves consistency group g")
            && text.contains("~ consistencyGroup = \"g\" -> (none)"),
        "{text}"
    );
    // Once the record says it left, removing the manifest deletes it.
    let mut left = recorded.clone();
    left.objects
        .get_mut(&Uuid::from_u128(1))
        .unwrap()
        .consistency_group = None;
    let set = manifests(
        &(base
            + &vol_yaml(
                "m2",
                "1Gi",
                "  volumeType: t\n  consistencyGroup: g\n  deletionPolicy: Delete\n",
            )),
    );
    let p = plan(&set, &w, &left, Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert!(p.destroys_data());
}

#[test]
fn a_volume_joins_a_group_only_on_the_groups_back_end() {
    let base = backend_yaml("fa", "") + &backend_yaml("fb", "") + GROUP_TYPES + &group_yaml("");
    let w = world(vec![
        view("fa", true, 20.0, 100 * GIB, vec![obj("m1", GIB, 1)]),
        view("fb", true, 20.0, 100 * GIB, vec![obj("m2", GIB, 2)]),
    ]);
    let recorded = Recorded {
        objects: [
            grouped(record(1, "m1", "fa", DeletionPolicy::Retain), "g"),
            record(2, "m2", "fb", DeletionPolicy::Retain),
        ]
        .into_iter()
        .collect(),
        last_plan: None,
    };
    let set = manifests(
        &(base
            + &vol_yaml("m1", "1Gi", "  volumeType: t\n  consistencyGroup: g\n")
            + &vol_yaml("m2", "1Gi", "  volumeType: t\n  consistencyGroup: g\n")),
    );
    let p = plan(&set, &w, &recorded, Options::default());
    assert_eq!(
        p.errors,
        [
            "volume.m2: it lives on fb, but consistency group g lives on fa, and a group's volumes live on one back end: remove spec.consistencyGroup, or migrate it to fa first (spec.backend: fa) and add it to the group after"
        ]
    );
    // A pin set on a group later does not move its members: it is refused.
    let set = manifests(
        &(backend_yaml("fa", "")
            + &backend_yaml("fb", "")
            + GROUP_TYPES
            + &group_yaml("  backend: fb\n")
            + &vol_yaml("m1", "1Gi", "  volumeType: t\n  consistencyGroup: g\n")),
    );
    let p = plan(&set, &w, &recorded, Options::default());
    assert_eq!(
        p.errors,
        [
            "volume.m1: it lives on fa, but consistency group g is pinned to fb, and a member is not migrated: set spec.backend of ConsistencyGroup/g back to fa, or remove spec.consistencyGroup, move the volume (spec.backend: fb) and add it to the group after"
        ]
    );
}

fn placed(entries: &[(&str, &str, &str, Option<i64>)]) -> crate::observe::Fleet {
    crate::observe::Fleet::On(
        entries
            .iter()
            .map(|(v, b, h, r)| {
                (
                    (*v).to_owned(),
                    crate::observe::Placement {
                        backend: (*b).to_owned(),
                        host: (*h).to_owned(),
                        revision: *r,
                    },
                )
            })
            .collect(),
    )
}

#[test]
fn in_a_fleet_a_host_creates_what_is_placed_on_it_with_the_fencing_revision_and_waits_for_the_rest()
{
    let vols = vol_yaml("here", "1Gi", "  volumeType: any\n")
        + &vol_yaml("there", "1Gi", "  volumeType: any\n")
        + &vol_yaml("later", "1Gi", "  volumeType: any\n")
        + &vol_yaml("pa", "1Gi", "  backend: fa\n");
    let (set, mut w) = two_hosts(&vols, "fa");
    w.fleet = placed(&[
        ("here", "fa", "stor-a", Some(41)),
        ("there", "fb", "stor-b", Some(42)),
    ]);
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert_eq!(
        created(&p),
        [("here".into(), "fa".into()), ("pa".into(), "fa".into())]
    );
    assert!(matches!(
        p.actions[0].op,
        Op::Create {
            placement: Some(41),
            ..
        }
    ));
    assert!(matches!(
        p.actions[1].op,
        Op::Create {
            placement: None,
            ..
        }
    ));
    assert_eq!(
        p.actions[0].reason,
        "it is declared and does not exist; placed on host stor-a by the fleet's scheduler (placement revision 41)"
    );
    assert_eq!(p.waiting.len(), 1);
    assert_eq!(
        (p.waiting[0].address.as_str(), p.waiting[0].reason.as_str()),
        ("volume.later", "waits for the fleet's leader to place it")
    );

    // etcd unreachable: pinned work goes on, placements wait, with the reason.
    w.fleet =
        crate::observe::Fleet::Unavailable("etcd at http://127.0.0.1:1: connection refused".into());
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert_eq!(created(&p), [("pa".into(), "fa".into())]);
    assert_eq!(p.waiting.len(), 3);
    assert_eq!(
        p.waiting[0].reason,
        "waits for a placement, and the fleet is unavailable (etcd at http://127.0.0.1:1: connection refused)"
    );
}

#[test]
fn a_placement_that_splits_a_copy_from_its_source_is_refused() {
    let vols = vol_yaml("src", "1Gi", "  backend: fa\n")
        + &vol_yaml("copy", "1Gi", "  source: {volume: src}\n");
    let (set, mut w) = two_hosts(&vols, "fa");
    w.fleet = placed(&[("copy", "fb", "stor-b", Some(7))]);
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
    assert!(
        p.errors[0].to_string().starts_with("volume.copy: the fleet placed it on fb (host stor-b), but it belongs on fa with its source or consistency group"),
        "{}",
        p.errors[0]
    );
}

fn held_by(o: Observed, holder: &str) -> Observed {
    Observed {
        in_use: Some(crate::model::InUse::Named {
            holder: holder.into(),
        }),
        ..o
    }
}

fn lv_open(o: Observed) -> Observed {
    Observed {
        in_use: Some(crate::model::InUse::Unnamed {
            device: "/dev/vg/volume-1".into(),
        }),
        ..o
    }
}

/// `v` (uuid 1, deletionPolicy Delete, manifest removed) and `keep` (2).
fn removing_v(v: Observed) -> (ManifestSet, Vec<Observed>, Recorded) {
    let set = manifests(&(backend_yaml("a", "") + &vol_yaml("keep", "1Gi", "")));
    let rec = Recorded {
        objects: [
            record(1, "v", "a", DeletionPolicy::Delete),
            record(2, "keep", "a", DeletionPolicy::Retain),
        ]
        .into(),
        last_plan: None,
    };
    (set, vec![v, obj("keep", GIB, 2)], rec)
}

#[test]
fn a_volume_in_use_is_not_deleted_and_the_error_names_the_holder() {
    let (set, objects, rec) = removing_v(held_by(obj("v", GIB, 1), "pid 4242 (qemu-system-x86)"));
    let p = plan(
        &set,
        &world(vec![view("a", true, 20.0, 100 * GIB, objects)]),
        &rec,
        Options::default(),
    );
    assert!(
        p.actions.is_empty(),
        "no destroy apply would refuse: {:?}",
        p.actions
    );
    assert_eq!(
        p.errors,
        [
            "volume.v: its manifest was removed and its deletionPolicy is Delete, but it is in use by pid 4242 (qemu-system-x86); stop or detach it, then plan again (or declare it again to keep it)"
        ]
    );
    assert!(!p.destroys_data());

    // An interrupted delete is not finished under its user either.
    let v = Observed {
        health: Health::Deleting,
        ..held_by(obj("v", GIB, 1), "loop device loop3")
    };
    let (set, objects, rec) = removing_v(v);
    let p = plan(
        &set,
        &world(vec![view("a", true, 20.0, 100 * GIB, objects)]),
        &rec,
        Options::default(),
    );
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(
        p.errors,
        [
            "volume.v: an earlier delete was interrupted, but it is in use by loop device loop3; stop or detach it, then plan again"
        ]
    );

    // A snapshot in use, likewise.
    let snap = Observed {
        kind: ObjKind::Snapshot,
        parent: Some(Uuid::from_u128(2)),
        ..held_by(obj("nightly", GIB, 3), "pid 7 (dd)")
    };
    let set = manifests(&(backend_yaml("a", "") + &vol_yaml("keep", "1Gi", "")));
    let rec = Recorded {
        objects: [(
            Uuid::from_u128(3),
            RecordedObject {
                kind: ObjKind::Snapshot,
                name: "nightly".into(),
                backend: "a".into(),
                size: GIB,
                deletion_policy: DeletionPolicy::Delete,
                consistency_group: None,
            },
        )]
        .into(),
        last_plan: None,
    };
    let w = world(vec![view(
        "a",
        true,
        20.0,
        100 * GIB,
        vec![obj("keep", GIB, 2), snap],
    )]);
    let p = plan(&set, &w, &rec, Options::default());
    assert!(
        p.actions.iter().all(|a| !matches!(a.op, Op::Delete { .. })),
        "{:?}",
        p.actions
    );
    assert!(p.errors[0].to_string().starts_with("snapshot.nightly: its manifest was removed and its deletionPolicy is Delete, but it is in use by pid 7 (dd)"), "{:?}", p.errors);
}

#[test]
fn an_open_lv_nothing_visible_holds_is_refused_unless_its_export_explains_it() {
    // Open, not exported: the holder is not visible from here; refused.
    let (set, objects, rec) = removing_v(lv_open(obj("v", GIB, 1)));
    let p = plan(
        &set,
        &world(vec![view("a", true, 20.0, 100 * GIB, objects.clone())]),
        &rec,
        Options::default(),
    );
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(
        p.errors,
        [
            "volume.v: its manifest was removed and its deletionPolicy is Delete, but it is in use by a holder not visible from this host (lvm2 reports /dev/vg/volume-1 open: an iSCSI backstore, a mount in another namespace, or another user's process); stop or detach it, then plan again (or declare it again to keep it)"
        ]
    );
    // Open because LIO's backstore holds it, nobody logged in: unexported,
    // then deleted (lvm2 refuses the remove if it is still open then).
    let w = exported_world(exported(1, &[INI_A], &[]), objects.clone());
    let p = plan(&set, &w, &rec, Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert!(
        matches!(p.actions[0].op, Op::Unexport { .. }),
        "{:?}",
        p.actions
    );
    assert!(
        matches!(p.actions[1].op, Op::Delete { .. }),
        "{:?}",
        p.actions
    );
    // A named holder is refused even when the volume is exported.
    let (_, objects, _) = removing_v(held_by(obj("v", GIB, 1), "a file system mounted at /mnt"));
    let w = exported_world(exported(1, &[INI_A], &[]), objects);
    let p = plan(&set, &w, &rec, Options::default());
    assert!(
        p.actions.iter().all(|a| !matches!(a.op, Op::Delete { .. })),
        "{:?}",
        p.actions
    );
    assert!(
        p.errors[0]
            .to_string()
            .contains("in use by a file system mounted at /mnt"),
        "{:?}",
        p.errors
    );
}

#[test]
fn an_interrupted_create_in_use_is_not_finished() {
    let set = manifests(&(backend_yaml("a", "") + &vol_yaml("v", "1Gi", "")));
    let v = Observed {
        health: Health::Creating,
        ..held_by(obj("v", GIB, 1), "pid 99 (cat)")
    };
    let w = world(vec![view("a", true, 20.0, 100 * GIB, vec![v])]);
    let p = plan(&set, &w, &recorded_v(), Options::default());
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(
        p.errors,
        [
            "volume.v: an earlier create was interrupted, and finishing it may replace its content, but it is in use by pid 99 (cat); stop or detach it, then plan again"
        ]
    );
}

// ---------------------------------------------------------------------------
// iSCSI: credentials, mutual CHAP, discovery, LUN sizes, the old layout

pub(crate) fn chap_export_yaml(initiators: &[&str], mutual: bool) -> String {
    let mut s = export_yaml(initiators);
    s.push_str("      chapSecretRef: {env: WEB_CHAP}\n");
    if mutual {
        s.push_str("      mutualChapSecretRef: {env: WEB_TARGET_CHAP}\n");
    }
    s
}

pub(crate) fn env_ref(var: &str) -> crate::manifest::kinds::SecretRef {
    crate::manifest::kinds::SecretRef {
        file: None,
        env: Some(var.into()),
    }
}

pub(crate) fn print(secret: &str) -> crate::iscsi::chap::CredentialPrint {
    crate::iscsi::chap::Chap::parse(secret).unwrap().print()
}

/// Volume `v` exported to `initiators` (`logged_in` of them logged in) with
/// CHAP `have` in configfs on every ACL, the manifests' secret being `want`.
pub(crate) fn chap_world(
    initiators: &[&str],
    logged_in: &[&str],
    have: (&str, Option<&str>),
    want: (&str, Option<&str>),
) -> World {
    let mut exports = exported(1, initiators, logged_in);
    if let crate::observe::Exports::Found(m) = &mut exports {
        for e in m.values_mut() {
            e.chap = true;
            for c in e.credentials.values_mut() {
                c.one_way = Some(print(have.0));
                c.mutual = have.1.map(print);
            }
        }
    }
    let mut w = one_volume_world(exports, "v");
    w.secrets.insert(env_ref("WEB_CHAP"), Ok(print(want.0)));
    if let Some(m) = want.1 {
        w.secrets.insert(env_ref("WEB_TARGET_CHAP"), Ok(print(m)));
    }
    w
}

#[test]
fn a_rotated_chap_secret_is_planned_without_a_value_and_logged_in_initiators_keep_their_sessions() {
    let set = manifests(
        &(backend_yaml("a", "") + &vol_yaml("v", "1Gi", &chap_export_yaml(&[INI_A, INI_B], false))),
    );
    // The same secret: nothing to do.
    let w = chap_world(
        &[INI_A, INI_B],
        &[INI_A],
        ("web:old-secret-1", None),
        ("web:old-secret-1", None),
    );
    let p = plan(&set, &w, &recorded_v(), Options::default());
    assert!(p.actions.is_empty() && p.errors.is_empty(), "{p:?}");

    // A new password, INI_A logged in: changed in place, INI_A named.
    let w = chap_world(
        &[INI_A, INI_B],
        &[INI_A],
        ("web:old-secret-1", None),
        ("web:new-secret-2", None),
    );
    let p = plan(&set, &w, &recorded_v(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert!(
        matches!(&p.actions[..], [super::Action { op: Op::Export { changes, relogin, rehome: false, .. }, .. }]
            if changes == &["new CHAP password".to_owned()] && relogin == &[INI_A.to_owned()]),
        "{:?}",
        p.actions
    );
    let text = render::text(&p);
    assert!(text.contains("~ change     = new CHAP password"), "{text}");
    assert!(
        text.contains(&format!("! relogin    = {INI_A} (logged in: keeps its session; the change applies at its next login)")),
        "{text}"
    );
    assert!(
        text.contains("chap       = required (secret from $WEB_CHAP)"),
        "{text}"
    );
    assert!(
        !text.contains("secret-1") && !text.contains("secret-2") && !text.contains("web:"),
        "{text}"
    );
    assert_eq!(p.counts(), (0, 1, 0, 0));

    // A new user name only.
    let w = chap_world(
        &[INI_A, INI_B],
        &[],
        ("web:old-secret-1", None),
        ("www:old-secret-1", None),
    );
    let p = plan(&set, &w, &recorded_v(), Options::default());
    assert!(
        matches!(&p.actions[..], [super::Action { op: Op::Export { changes, relogin, .. }, .. }]
            if changes == &["new CHAP user name".to_owned()] && relogin.is_empty()),
        "{:?}",
        p.actions
    );

    // The secret cannot be read: a plan error naming where it was looked for.
    let mut w = chap_world(
        &[INI_A, INI_B],
        &[],
        ("web:old-secret-1", None),
        ("web:x", None),
    );
    w.secrets.insert(
        env_ref("WEB_CHAP"),
        Err("the CHAP secret's environment variable WEB_CHAP is not set for this process".into()),
    );
    let p = plan(&set, &w, &recorded_v(), Options::default());
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(
        p.errors,
        [
            "volume.v: spec.export.iscsi.chapSecretRef: the CHAP secret's environment variable WEB_CHAP is not set for this process"
        ]
    );
}

#[test]
fn mutual_chap_is_set_rotated_and_never_the_initiators_secret() {
    let set = manifests(
        &(backend_yaml("a", "") + &vol_yaml("v", "1Gi", &chap_export_yaml(&[INI_A], true))),
    );
    let w = chap_world(
        &[INI_A],
        &[INI_A],
        ("web:secret-1", None),
        ("web:secret-1", Some("tgt:tsecret-9")),
    );
    let p = plan(&set, &w, &recorded_v(), Options::default());
    assert!(
        matches!(&p.actions[..], [super::Action { op: Op::Export { changes, relogin, mutual: Some(_), .. }, .. }]
            if changes == &["set mutual CHAP credentials".to_owned()] && relogin == &[INI_A.to_owned()]),
        "{:?}",
        p.actions
    );
    let text = render::text(&p);
    assert!(
        text.contains("mutual_chap = answered (secret from $WEB_TARGET_CHAP)"),
        "{text}"
    );

    let w = chap_world(
        &[INI_A],
        &[],
        ("web:secret-1", Some("tgt:tsecret-9")),
        ("web:secret-1", Some("tgt:tsecret-8")),
    );
    let p = plan(&set, &w, &recorded_v(), Options::default());
    assert!(
        matches!(&p.actions[..], [super::Action { op: Op::Export { changes, .. }, .. }]
            if changes == &["new mutual CHAP password".to_owned()]),
        "{:?}",
        p.actions
    );

    // One secret for both directions: refused (RFC 7143, 12.1.3).
    let w = chap_world(
        &[INI_A],
        &[],
        ("web:secret-1", None),
        ("web:secret-1", Some("tgt:secret-1")),
    );
    let p = plan(&set, &w, &recorded_v(), Options::default());
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert!(
        p.errors[0].to_string().starts_with("volume.v: spec.export.iscsi.mutualChapSecretRef: its password is the one of chapSecretRef; RFC 7143"),
        "{:?}",
        p.errors
    );
}

#[test]
fn an_export_under_the_old_default_target_name_keeps_it() {
    let set = manifests(&(backend_yaml("a", "") + &vol_yaml("v", "1Gi", &export_yaml(&[INI_A]))));
    let mut exports = exported(1, &[INI_A], &[INI_A]);
    let old = format!("iqn.2010-10.dev.cinderblock:volume-{}", Uuid::from_u128(1));
    if let crate::observe::Exports::Found(m) = &mut exports {
        for e in m.values_mut() {
            e.iqn = Some(old.clone());
        }
    }
    let w = one_volume_world(exports, "v");
    let p = plan(&set, &w, &recorded_v(), Options::default());
    assert!(p.actions.is_empty() && p.errors.is_empty(), "{p:?}");
    // A change to it goes to that target, not a new one.
    let set =
        manifests(&(backend_yaml("a", "") + &vol_yaml("v", "1Gi", &export_yaml(&[INI_A, INI_B]))));
    let p = plan(&set, &w, &recorded_v(), Options::default());
    assert!(
        matches!(&p.actions[..], [super::Action { op: Op::Export { iqn: Some(i), .. }, .. }] if *i == old),
        "{:?}",
        p.actions
    );
}

#[test]
fn a_file_volumes_lun_follows_its_extend_and_the_plan_says_initiators_rescan() {
    let set = manifests(&(backend_yaml("a", "") + &vol_yaml("v", "2Gi", &export_yaml(&[INI_A]))));
    let mut exports = exported(1, &[INI_A], &[INI_A]);
    if let crate::observe::Exports::Found(m) = &mut exports {
        for e in m.values_mut() {
            e.backstore.kind = crate::iscsi::configfs::BackstoreKind::File;
            e.backstore.hba = "fileio_0".into();
            e.size = Some(GIB);
        }
    }
    let w = one_volume_world(exports.clone(), "v");
    let p = plan(&set, &w, &recorded_v(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert!(
        matches!(p.actions[0].op, Op::Extend { to, .. } if to == 2 * GIB),
        "{:?}",
        p.actions
    );
    assert!(
        p.actions[0].reason.ends_with(&format!(
            "; its iSCSI export {} follows, and the logged-in initiator(s) {INI_A} see the new size after a rescan (iscsiadm -m session --rescan)",
            crate::iscsi::names::default_iqn(Uuid::from_u128(1))
        )),
        "{}",
        p.actions[0].reason
    );
    assert!(
        matches!(&p.actions[1].op, Op::Export { changes, relogin, .. }
            if changes == &["LUN size 1Gi -> 2Gi (LIO's fileio backstore does not follow its file; initiators see it after a rescan: iscsiadm -m session --rescan)".to_owned()]
            && relogin.is_empty()),
        "{:?}",
        p.actions
    );
    // Its LUN bigger than the volume (shrunk outside): refused, with the way out.
    let set = manifests(&(backend_yaml("a", "") + &vol_yaml("v", "512Mi", &export_yaml(&[INI_A]))));
    let mut w = one_volume_world(exports, "v");
    if let Discovery::Ok(inv) = &mut w.backends.values_mut().next().unwrap().discovery {
        inv.objects[0].size = 512 << 20;
    }
    let p = plan(&set, &w, &recorded_v(), Options::default());
    assert!(
        p.errors.iter().map(ToString::to_string).any(|e| e.starts_with("volume.v: LIO gives its LUN 1Gi, more than the volume's 512Mi")
            && e.ends_with("grow spec.size back to at least 1Gi, or remove spec.export (with no initiator logged in), apply, and add it back")),
        "{:?}",
        p.errors
    );
}

/// Volumes `v` (uuid 1) and `w` (uuid 2) exported from one shared
/// `iblock_0`, as earlier versions left them.
fn shared_folder_world(logged_in: &[(u128, &str)], foreign: bool) -> World {
    let mut map = BTreeMap::new();
    for n in [1u128, 2] {
        let ini: Vec<&str> = logged_in
            .iter()
            .filter(|(u, _)| *u == n)
            .map(|(_, i)| *i)
            .collect();
        let crate::observe::Exports::Found(m) = exported(n, &[INI_A], &ini) else {
            unreachable!()
        };
        let mut e = m.into_values().next().unwrap();
        e.backstore.neighbours = vec![crate::iscsi::lio::backstore_name(Uuid::from_u128(3 - n))];
        if foreign {
            e.backstore.neighbours.push("tc1".into());
        }
        map.insert(e.uuid, e);
    }
    let mut w = exported_world(
        crate::observe::Exports::Found(map),
        vec![obj("v", GIB, 1), obj("w", GIB, 2)],
    );
    w.secrets.clear();
    w
}

fn rehomed(p: &super::Plan) -> Vec<String> {
    p.actions
        .iter()
        .filter(|a| matches!(a.op, Op::Export { rehome: true, .. }))
        .map(|a| a.address.clone())
        .collect()
}

#[test]
fn a_backstore_in_the_old_shared_folder_moves_only_while_nobody_is_logged_in() {
    let set = manifests(
        &(backend_yaml("a", "")
            + &vol_yaml("v", "1Gi", &export_yaml(&[INI_A]))
            + &vol_yaml("w", "1Gi", &export_yaml(&[INI_A]))),
    );
    let rec = Recorded {
        objects: [
            record(1, "v", "a", DeletionPolicy::Retain),
            record(2, "w", "a", DeletionPolicy::Retain),
        ]
        .into(),
        last_plan: None,
    };
    // Nobody logged in: one stays (the first by uuid), the other moves.
    let p = plan(
        &set,
        &shared_folder_world(&[], false),
        &rec,
        Options::default(),
    );
    assert!(p.errors.is_empty() && p.notes.is_empty(), "{p:?}");
    assert_eq!(rehomed(&p), ["volume.w"]);
    assert!(
        p.actions[0].reason.contains("move the backstore from core/iblock_0 to a folder of its own (the target is made again; no initiator is logged in)"),
        "{}",
        p.actions[0].reason
    );
    // The one with a session stays; the other moves.
    let p = plan(
        &set,
        &shared_folder_world(&[(2, INI_A)], false),
        &rec,
        Options::default(),
    );
    assert_eq!(rehomed(&p), ["volume.v"]);
    // Both busy: neither moves, and the plan says why and when.
    let p = plan(
        &set,
        &shared_folder_world(&[(1, INI_A), (2, INI_A)], false),
        &rec,
        Options::default(),
    );
    assert!(rehomed(&p).is_empty() && p.errors.is_empty(), "{p:?}");
    assert_eq!(p.notes.len(), 1, "{:?}", p.notes);
    assert!(
        p.notes[0].starts_with("volume.w: its backstore shares core/iblock_0 with cinderblock-00000000-0000-0000-0000-000000000001 (the layout of earlier versions, which targetcli cannot manage); it moves to a folder of its own at the first apply with no initiator logged in"),
        "{:?}",
        p.notes
    );
    // A foreign object in the folder: both must leave it.
    let p = plan(
        &set,
        &shared_folder_world(&[], true),
        &rec,
        Options::default(),
    );
    assert_eq!(rehomed(&p), ["volume.v", "volume.w"]);
}

#[test]
fn discovery_authentication_comes_from_the_back_ends_and_they_must_agree() {
    let disc = "  iscsi:\n    discoveryAuth:\n      chapSecretRef: {env: DISC_CHAP}\n";
    let set = manifests(&(backend_yaml("a", disc) + &vol_yaml("v", "1Gi", "")));
    let mut w = one_volume_world(crate::observe::Exports::Found(BTreeMap::new()), "v");
    w.discovery_auth = Some(crate::iscsi::configfs::DiscoveryAuth::default());
    w.secrets
        .insert(env_ref("DISC_CHAP"), Ok(print("disc:discovery-1")));
    let p = plan(&set, &w, &recorded_v(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert!(
        matches!(&p.actions[..], [super::Action { op: Op::DiscoveryAuth { changes, new: true, mutual: None, .. }, address, .. }]
            if address == "iscsi.discovery-auth"
            && changes == &["enforce discovery authentication".to_owned(), "set CHAP credentials".to_owned()]),
        "{:?}",
        p.actions
    );
    assert_eq!(p.counts(), (1, 0, 0, 0));
    // In place: nothing to do; a rotated secret: an update.
    w.discovery_auth = Some(crate::iscsi::configfs::DiscoveryAuth {
        enforced: true,
        chap: crate::iscsi::configfs::ChapPresence {
            one_way: Some(print("disc:discovery-1")),
            mutual: None,
        },
    });
    let p = plan(&set, &w, &recorded_v(), Options::default());
    assert!(p.actions.is_empty() && p.errors.is_empty(), "{p:?}");
    w.secrets
        .insert(env_ref("DISC_CHAP"), Ok(print("disc:discovery-2")));
    let p = plan(&set, &w, &recorded_v(), Options::default());
    assert!(
        matches!(&p.actions[..], [super::Action { op: Op::DiscoveryAuth { changes, new: false, .. }, .. }]
            if changes == &["new CHAP password".to_owned()]),
        "{:?}",
        p.actions
    );
    // Two back ends of this host that disagree.
    let other = "  iscsi:\n    discoveryAuth:\n      chapSecretRef: {env: OTHER}\n";
    let set = manifests(
        &(backend_yaml("a", disc) + &backend_yaml("b", other) + &vol_yaml("v", "1Gi", "")),
    );
    let mut w2 = w.clone();
    let b = view("b", true, 20.0, 100 * GIB, vec![]);
    w2.backends.insert(b.name.clone(), b);
    let p = plan(&set, &w2, &recorded_v(), Options::default());
    assert_eq!(
        p.errors,
        [
            "iscsi.discovery-auth: backend.a and backend.b declare different spec.iscsi.discoveryAuth; LIO has one discovery setting per host: declare the same on both, or on one only"
        ]
    );
    // Not declared: the host's setting is left alone.
    let set = manifests(&(backend_yaml("a", "") + &vol_yaml("v", "1Gi", "")));
    let p = plan(&set, &w, &recorded_v(), Options::default());
    assert!(p.actions.is_empty() && p.errors.is_empty(), "{p:?}");
}

fn image_yaml(policy: &str) -> String {
    format!(
        "apiVersion: cinderblock.dev/v1alpha1\nkind: Image\nmetadata: {{name: base}}\nspec:\n  diskFormat: raw\n  containerFormat: bare\n  source: {{volume: v}}\n  backend: a\n  deletionPolicy: {policy}\n---\n"
    )
}

#[test]
fn a_removed_image_is_forgotten_or_deleted_but_not_under_its_clones() {
    let image = Observed {
        kind: ObjKind::Image,
        ..obj("base", GIB, 5)
    };
    let clone = Observed {
        clone_of: Some(Uuid::from_u128(5)),
        ..obj("vm", GIB, 6)
    };
    let rec = |policy| Recorded {
        objects: [
            record(1, "v", "a", DeletionPolicy::Retain),
            (
                Uuid::from_u128(5),
                RecordedObject {
                    kind: ObjKind::Image,
                    name: "base".into(),
                    backend: "a".into(),
                    size: GIB,
                    deletion_policy: policy,
                    consistency_group: None,
                },
            ),
        ]
        .into(),
        last_plan: None,
    };
    let w = exported_world(
        crate::observe::Exports::Absent,
        vec![obj("v", GIB, 1), image.clone()],
    );
    // Declared with Delete: its policy is recorded.
    let set =
        manifests(&(backend_yaml("a", "") + &vol_yaml("v", "1Gi", "") + &image_yaml("Delete")));
    let p = plan(&set, &w, &rec(DeletionPolicy::Retain), Options::default());
    assert!(
        matches!(
            &p.actions[..],
            [super::Action {
                op: Op::Record {
                    kind: ObjKind::Image,
                    deletion_policy: DeletionPolicy::Delete,
                    ..
                },
                ..
            }]
        ),
        "{:?}",
        p.actions
    );
    // Removed, Retain: forgotten, data kept.
    let set = manifests(&(backend_yaml("a", "") + &vol_yaml("v", "1Gi", "")));
    let p = plan(&set, &w, &rec(DeletionPolicy::Retain), Options::default());
    assert!(
        matches!(&p.actions[..], [super::Action { op: Op::Forget { kind: ObjKind::Image, gone: false, .. }, address, .. }] if address == "image.base"),
        "{:?}",
        p.actions
    );
    // Removed, Delete: destroyed...
    let p = plan(&set, &w, &rec(DeletionPolicy::Delete), Options::default());
    assert!(
        matches!(
            &p.actions[..],
            [super::Action {
                op: Op::Delete {
                    kind: ObjKind::Image,
                    ..
                },
                impact: Impact::DestroysData,
                ..
            }]
        ),
        "{:?}",
        p.actions
    );
    // ...but not while a volume made from it may share its data.
    let w = exported_world(
        crate::observe::Exports::Absent,
        vec![obj("v", GIB, 1), image, clone],
    );
    let set = manifests(
        &(backend_yaml("a", "") + &vol_yaml("v", "1Gi", "") + &vol_yaml("vm", "1Gi", "")),
    );
    let p = plan(&set, &w, &rec(DeletionPolicy::Delete), Options::default());
    assert!(
        p.actions.iter().all(|a| !matches!(a.op, Op::Delete { .. })),
        "{:?}",
        p.actions
    );
    assert_eq!(
        p.errors,
        [
            "image.base: cannot be deleted while volumes made from it may share its data (volume.vm); delete them first, or keep the image-volume with deletionPolicy: Retain"
        ]
    );
}

/// Group `g` on back end `a` with members `m1`..`m3` (1 GiB each), and
/// group snapshot `nightly` of it.
fn group_site() -> String {
    group_site_with(true)
}

fn group_site_with(snapshot: bool) -> String {
    let h = "apiVersion: cinderblock.dev/v1alpha1\n";
    let mut s = backend_yaml("a", "")
        + &format!("{h}kind: VolumeType\nmetadata: {{name: t}}\nspec: {{}}\n---\n")
        + &format!(
            "{h}kind: ConsistencyGroup\nmetadata: {{name: g}}\nspec:\n  volumeTypes: [t]\n  backend: a\n---\n"
        );
    if snapshot {
        s.push_str(h);
        s.push_str(
            "kind: Snapshot\nmetadata: {name: nightly}\nspec:\n  consistencyGroup: g\n  deletionPolicy: Delete\n---\n",
        );
    }
    for m in ["m1", "m2", "m3"] {
        s += &vol_yaml(m, "1Gi", "  volumeType: t\n  consistencyGroup: g\n");
    }
    s
}

fn member_objs(n: u128) -> Vec<Observed> {
    ["m1", "m2", "m3"]
        .iter()
        .zip(n..)
        .map(|(m, i)| obj(m, GIB, i))
        .collect()
}

/// The members recorded in group `g`.
fn members_recorded() -> Recorded {
    let mut rec = Recorded::default();
    for (i, m) in ["m1", "m2", "m3"].iter().enumerate() {
        let (u, mut r) = record(1 + i as u128, m, "a", DeletionPolicy::Retain);
        r.consistency_group = Some("g".into());
        rec.objects.insert(u, r);
    }
    rec
}

fn snap_obj(name: &str, parent: u128, n: u128) -> Observed {
    Observed {
        kind: ObjKind::Snapshot,
        parent: Some(Uuid::from_u128(parent)),
        ..obj(name, GIB, n)
    }
}

#[test]
fn a_group_snapshot_is_one_step_listing_a_snapshot_per_member() {
    let set = manifests(&group_site());
    let w = world(vec![view("a", true, 20.0, 100 * GIB, member_objs(1))]);
    let p = plan(&set, &w, &members_recorded(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    let cuts: Vec<_> = p
        .actions
        .iter()
        .filter(|a| matches!(a.op, Op::GroupSnapshot { .. }))
        .collect();
    assert_eq!(cuts.len(), 1, "{:?}", p.actions);
    let Op::GroupSnapshot {
        group,
        backend,
        members,
        freeze_limit_ms,
        ..
    } = &cuts[0].op
    else {
        unreachable!()
    };
    assert_eq!((group.as_str(), backend.as_str()), ("g", "a"));
    assert_eq!(
        members
            .iter()
            .map(|m| (m.snapshot.as_str(), m.volume_uuid.map(|u| u.as_u128())))
            .collect::<Vec<_>>(),
        [
            ("nightly.m1", Some(1)),
            ("nightly.m2", Some(2)),
            ("nightly.m3", Some(3))
        ]
    );
    // The fake back end's members must be idle: nothing held, no limit.
    assert_eq!(*freeze_limit_ms, None);
    let text = render::text(&p);
    assert!(text.contains("+ group_snapshot \"nightly\" {"), "{text}");
    assert!(
        text.contains("member            = snapshot.nightly.m2 of volume.m2 (1Gi)"),
        "{text}"
    );
    assert!(
        text.contains("Plan: 1 to add, 0 to change, 0 to destroy."),
        "{text}"
    );
}

#[test]
fn a_group_snapshot_is_refused_where_it_cannot_be_consistent() {
    let set = manifests(&group_site());
    // A member in use on a back end whose members must be idle.
    let mut objs = member_objs(1);
    objs[1].in_use = Some(crate::model::InUse::Named {
        holder: "pid 7 (qemu)".into(),
    });
    let w = world(vec![view("a", true, 20.0, 100 * GIB, objs)]);
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    assert_eq!(
        p.errors,
        [
            "snapshot.nightly: on a a group snapshot is consistent only while no member is in use (it cannot hold their writes), and volume.m2 by pid 7 (qemu) in use; stop or detach them, then plan again"
        ]
    );
    // A back end that takes none.
    let mut v = view("a", true, 20.0, 100 * GIB, member_objs(1));
    v.caps.group_snapshots = crate::model::GroupSnapshots::None;
    let p = plan(
        &set,
        &world(vec![v]),
        &Recorded::default(),
        Options::default(),
    );
    assert_eq!(
        p.errors,
        ["snapshot.nightly: back end a takes no group snapshots"]
    );
}

#[test]
fn a_group_snapshot_taken_is_recorded_an_interrupted_one_is_taken_again_and_it_goes_whole() {
    let set = manifests(&group_site());
    let mut objs = member_objs(1);
    objs.push(snap_obj("nightly.m1", 1, 11));
    // Unrecorded: an interrupted cut; the step resumes with its identity.
    let w = world(vec![view("a", true, 20.0, 100 * GIB, objs.clone())]);
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    let Some(Op::GroupSnapshot { members, .. }) = p
        .actions
        .iter()
        .map(|a| &a.op)
        .find(|o| matches!(o, Op::GroupSnapshot { .. }))
    else {
        panic!("{:?}", p.actions)
    };
    assert_eq!(members[0].uuid, Some(Uuid::from_u128(11)));
    assert!(
        p.actions.iter().all(|a| !matches!(a.op, Op::Delete { .. })),
        "{:?}",
        p.actions
    );
    // Recorded and complete: nothing to do.
    objs.push(snap_obj("nightly.m2", 2, 12));
    objs.push(snap_obj("nightly.m3", 3, 13));
    let mut rec = members_recorded();
    for (i, m) in ["m1", "m2", "m3"].iter().enumerate() {
        let (u, mut r) = record(
            11 + i as u128,
            &format!("nightly.{m}"),
            "a",
            DeletionPolicy::Delete,
        );
        r.kind = ObjKind::Snapshot;
        rec.objects.insert(u, r);
    }
    let w = world(vec![view("a", true, 20.0, 100 * GIB, objs.clone())]);
    let p = plan(&set, &w, &rec, Options::default());
    assert!(
        p.errors.is_empty() && p.actions.is_empty(),
        "{:?} {:?}",
        p.errors,
        p.actions
    );
    // Its manifest removed: the members go together; one in use holds all.
    let without = manifests(&group_site_with(false));
    let p = plan(&without, &w, &rec, Options::default());
    let deletes: Vec<&str> = p
        .actions
        .iter()
        .filter(|a| matches!(a.op, Op::Delete { .. }))
        .map(|a| a.address.as_str())
        .collect();
    assert_eq!(
        deletes,
        [
            "snapshot.nightly.m1",
            "snapshot.nightly.m2",
            "snapshot.nightly.m3"
        ]
    );
    let mut held = objs;
    held[4].in_use = Some(crate::model::InUse::Named {
        holder: "pid 9 (dd)".into(),
    });
    let p = plan(
        &without,
        &world(vec![view("a", true, 20.0, 100 * GIB, held)]),
        &rec,
        Options::default(),
    );
    assert!(
        p.actions.iter().all(|a| !matches!(a.op, Op::Delete { .. })),
        "{:?}",
        p.actions
    );
    assert_eq!(p.errors.len(), 3, "{:?}", p.errors);
    assert!(
        p.errors[0]
            .to_string()
            .contains("it is a member of group snapshot nightly, whose members are deleted together, and snapshot.nightly.m2 by pid 9 (dd) in use"),
        "{}",
        p.errors[0]
    );
}

fn renamed_yaml(name: &str, from: &str) -> String {
    format!(
        "apiVersion: cinderblock.dev/v1alpha1\nkind: Volume\nmetadata:\n  name: {name}\n  annotations: {{cinderblock.dev/renamed-from: {from}}}\nspec:\n  size: 1Gi\n  backend: a\n---\n"
    )
}

fn chain_snap_obj(name: &str, size: u64, n: u128, volume: u128) -> Observed {
    Observed {
        kind: ObjKind::Snapshot,
        parent: Some(Uuid::from_u128(volume)),
        ..obj(name, size, n)
    }
}

fn snap_yaml(name: &str, volume: &str) -> String {
    format!(
        "apiVersion: cinderblock.dev/v1alpha1\nkind: Snapshot\nmetadata: {{name: {name}}}\nspec:\n  volume: {volume}\n---\n"
    )
}

#[test]
fn a_rename_is_one_step_and_the_rest_plans_the_object_under_its_new_name() {
    let snap = Observed {
        kind: ObjKind::Snapshot,
        parent: Some(Uuid::from_u128(1)),
        ..obj("db-snap", GIB, 2)
    };
    let w = world(vec![view(
        "a",
        true,
        20.0,
        100 * GIB,
        vec![obj("db", GIB, 1), snap],
    )]);
    let rec = Recorded {
        objects: [
            record(1, "db", "a", DeletionPolicy::Delete),
            (
                Uuid::from_u128(2),
                RecordedObject {
                    kind: ObjKind::Snapshot,
                    ..record(2, "db-snap", "a", DeletionPolicy::Retain).1
                },
            ),
        ]
        .into(),
        last_plan: None,
    };
    let snap_yaml = "apiVersion: cinderblock.dev/v1alpha1\nkind: Snapshot\nmetadata: {name: db-snap}\nspec: {volume: orders}\n---\n";
    let set = manifests(
        &(backend_yaml("a", "")
            + &renamed_yaml("orders", "db")
                .replace("  backend: a\n", "  backend: a\n  deletionPolicy: Delete\n")
            + snap_yaml),
    );
    let p = plan(&set, &w, &rec, Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert!(
        matches!(
            &p.actions[..],
            [super::Action {
                op: Op::Rename { kind: ObjKind::Volume, name, from, uuid, backend },
                impact: Impact::MetadataOnly,
                ..
            }] if name == "orders" && from == "db" && *uuid == Uuid::from_u128(1) && backend == "a"
        ),
        "{:?}",
        p.actions
    );
    // The same again: byte-identical.
    assert_eq!(p, plan(&set, &w, &rec, Options::default()));
    // Renamed on the back end while the record still says db (a run stopped
    // mid-step): the step again; once the record follows, nothing.
    let w2 = world(vec![view(
        "a",
        true,
        20.0,
        100 * GIB,
        vec![
            obj("orders", GIB, 1),
            Observed {
                kind: ObjKind::Snapshot,
                parent: Some(Uuid::from_u128(1)),
                ..obj("db-snap", GIB, 2)
            },
        ],
    )]);
    let p = plan(&set, &w2, &rec, Options::default());
    assert!(
        matches!(&p.actions[..], [super::Action { op: Op::Rename { .. }, reason, .. }] if reason.contains("interrupted")),
        "{:?}",
        p.actions
    );
    let mut done = rec.clone();
    done.objects.get_mut(&Uuid::from_u128(1)).unwrap().name = "orders".into();
    let p = plan(&set, &w2, &done, Options::default());
    assert!(p.actions.is_empty() && p.errors.is_empty(), "{p:?}");
}

#[test]
fn a_rename_from_nothing_or_onto_a_taken_name_is_refused_and_creates_nothing() {
    let w = world(vec![view(
        "a",
        true,
        20.0,
        100 * GIB,
        vec![obj("db", GIB, 1), obj("orders", GIB, 3)],
    )]);
    let set = manifests(&(backend_yaml("a", "") + &renamed_yaml("orders", "db")));
    let rec = Recorded {
        objects: [record(3, "orders", "a", DeletionPolicy::Retain)].into(),
        last_plan: None,
    };
    let p = plan(&set, &w, &rec, Options::default());
    // Neither renamed nor forgotten.
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
    assert!(
        p.errors[0]
            .to_string()
            .starts_with("volume.orders: test.yaml:11:")
            && p.errors[0]
                .to_string()
                .contains("renamed from volume db, but both exist"),
        "{}",
        p.errors[0]
    );
    let w = world(vec![view("a", true, 20.0, 100 * GIB, vec![])]);
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    assert!(p.actions.is_empty(), "never created: {:?}", p.actions);
    assert!(
        p.errors[0]
            .to_string()
            .contains("but no volume db exists on this host's back ends"),
        "{}",
        p.errors[0]
    );
}

#[test]
#[allow(clippy::too_many_lines)] // three worlds, each read top to bottom
fn a_volume_with_snapshots_moves_as_a_chain_only_with_migrate_snapshots() {
    let with = |flag: &str| {
        manifests(
            &(backend_yaml("a", "")
                + &backend_yaml("b", "")
                + &vol_yaml("db", "1Gi", &format!("  backend: b\n{flag}"))
                + &snap_yaml("s1", "db")
                + &snap_yaml("s2", "db")),
        )
    };
    let mut s1 = chain_snap_obj("s1", GIB, 2, 1);
    s1.allocated = Some(GIB / 8);
    let w = world(vec![
        view(
            "a",
            true,
            20.0,
            100 * GIB,
            vec![obj("db", GIB, 1), s1, chain_snap_obj("s2", GIB, 3, 1)],
        ),
        view("b", true, 20.0, 100 * GIB, vec![]),
    ]);
    let migrates = |p: &super::Plan| -> Vec<super::Action> {
        p.actions
            .iter()
            .filter(|a| matches!(a.op, Op::Migrate { .. }))
            .cloned()
            .collect()
    };
    let p = plan(&with(""), &w, &Recorded::default(), Options::default());
    assert!(migrates(&p).is_empty(), "{:?}", p.actions);
    assert!(
        p.errors[0].to_string().contains("it has snapshots (snapshot.s1, snapshot.s2), which live on its back end; set migrateSnapshots: true"),
        "{:?}",
        p.errors
    );
    let p = plan(
        &with("  migrateSnapshots: true\n"),
        &w,
        &Recorded::default(),
        Options::default(),
    );
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    let [a] = &migrates(&p)[..] else {
        panic!("{:?}", p.actions)
    };
    let Op::Migrate {
        snapshots, carry, ..
    } = &a.op
    else {
        panic!("{a:?}")
    };
    assert_eq!(*carry, Carry::Copy);
    let names: Vec<(&str, u128, u64)> = snapshots
        .iter()
        .map(|c| (c.name.as_str(), c.uuid.as_u128(), c.read))
        .collect();
    assert_eq!(names, [("s1", 2, GIB / 8), ("s2", 3, 0)]);
    let text = render::text(&p);
    assert!(
        text.contains("> snapshot   = \"s1\": 1Gi, 128 MiB of data"),
        "{text}"
    );
    assert!(
        text.contains("chain      = with its 2 snapshot(s), oldest first"),
        "{text}"
    );

    // Verified and marked, then stopped: the finish names the chain.
    let mut src = obj("db", GIB, 1);
    src.health = Health::Deleting;
    let mut s1_src = chain_snap_obj("s1", GIB, 2, 1);
    s1_src.health = Health::Deleting;
    let mut tgt = obj("db", GIB, 1);
    tgt.health = Health::Migrating;
    let mut s1_tgt = chain_snap_obj("s1", GIB, 2, 1);
    s1_tgt.health = Health::Migrating;
    let mut s2_tgt = chain_snap_obj("s2", GIB, 3, 1);
    s2_tgt.health = Health::Migrating;
    let w = world(vec![
        view(
            "a",
            true,
            20.0,
            100 * GIB,
            vec![src, s1_src, chain_snap_obj("s2", GIB, 3, 1)],
        ),
        view("b", true, 20.0, 100 * GIB, vec![tgt, s1_tgt, s2_tgt]),
    ]);
    let p = plan(
        &with("  migrateSnapshots: true\n"),
        &w,
        &Recorded::default(),
        Options::default(),
    );
    assert!(
        p.errors.is_empty(),
        "no duplicates, no lost snapshot: {:?}",
        p.errors
    );
    let [a] = &migrates(&p)[..] else {
        panic!("{:?}", p.actions)
    };
    assert!(
        matches!(&a.op, Op::Migrate { resume: true, read: 0, snapshots, .. } if snapshots.len() == 2),
        "{:?}",
        a.op
    );
}

#[test]
fn a_chain_onto_a_target_that_cannot_grow_origins_needs_one_size() {
    let set = manifests(
        &(backend_yaml("a", "")
            + &backend_yaml("b", "")
            + &vol_yaml("db", "2Gi", "  backend: b\n  migrateSnapshots: true\n")
            + &snap_yaml("s1", "db")),
    );
    let mut b = view("b", false, 1.0, 100 * GIB, vec![]);
    b.caps.extends_with_snapshots = false;
    let w = world(vec![
        view(
            "a",
            true,
            20.0,
            100 * GIB,
            vec![obj("db", 2 * GIB, 1), chain_snap_obj("s1", GIB, 2, 1)],
        ),
        b,
    ]);
    let p = plan(&set, &w, &Recorded::default(), Options::default());
    assert!(
        !p.actions.iter().any(|a| matches!(a.op, Op::Migrate { .. })),
        "{:?}",
        p.actions
    );
    assert!(
        p.errors[0].to_string().contains("b cannot grow a volume that has snapshots (lvm2 resizes a thick origin of thick snapshots only while it is inactive), so every snapshot moving with it must have the volume's size there (2Gi), and snapshot.s1 has 1Gi"),
        "{:?}",
        p.errors
    );
}
