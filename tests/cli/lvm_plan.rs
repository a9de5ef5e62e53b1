//! Planning over LVM back ends on the host, where there is no device-mapper:
//! the lab's captured `lvm fullreport` stands in for discovery
//! (`Registry::discover_with`, `observe::world_of`), then the real planner and renderer run. The same
//! paths run against live LVM in `tests/lab/lvm_backend.rs`.

use std::path::Path;

use cinderblock::exec::Exec;
use cinderblock::lvm::cmd::Reports;
use cinderblock::lvm::report::{FullReport, parse_fullreport};
use cinderblock::manifest::{ManifestSet, load_source};
use cinderblock::observe::{Discovery, World, world_of};
use cinderblock::plan::{self, Op, Options, render};
use cinderblock::registry::Registry;
use cinderblock::state::record::Recorded;

const FULLREPORT: &[u8] = include_bytes!("../fixtures/lvm/fullreport.json");
const H: &str = "apiVersion: cinderblock.dev/v1alpha1\n";

/// The fixture, with `vol-thick` and `vol-thin` marked as back end `owner`'s
/// (the fixture's tags predate the owner mark).
fn report(owner: &str) -> FullReport {
    let mut r = parse_fullreport(FULLREPORT).unwrap();
    for lv in &mut r.lvs {
        if lv.name == "vol-thick" || lv.name == "vol-thin" {
            lv.tags.push(format!("cinderblock.backend={owner}"));
        }
    }
    r
}

fn set(text: &str) -> ManifestSet {
    let loaded = load_source(Path::new("site.yaml"), text);
    assert_eq!(loaded.errors(), 0, "{:?}", loaded.diagnostics);
    loaded.set
}

fn world(set: &ManifestSet, r: FullReport) -> World {
    let reports = Reports {
        report: r,
        failed: std::collections::BTreeMap::default(),
    };
    let registry = Registry::new(set, "lab", Path::new("/nonexistent-state"), Exec::host());
    world_of(
        set,
        &registry,
        Path::new("/nonexistent-state"),
        registry.discover_with(&reports),
    )
}

fn backend(name: &str, lvm: &str, extra: &str) -> String {
    format!(
        "---\n{H}kind: Backend\nmetadata:\n  name: {name}\nspec:\n  host: lab\n{extra}  lvm:\n{lvm}"
    )
}

fn volume(name: &str, size: &str, extra: &str) -> String {
    format!("---\n{H}kind: Volume\nmetadata:\n  name: {name}\nspec:\n  size: {size}\n{extra}")
}

#[test]
fn thin_back_end_plan_shows_rounding_foreign_lvs_and_pool_use() {
    let s = set(&[
        // the pool holds 11 GiB of thin LVs (8 GiB foreign) in 512 MiB: ratio 20
        // would refuse anything more
        backend(
            "thin",
            "    volumeGroup: labvg\n    thinPool: pool0\n",
            "  maxOverSubscriptionRatio: 30\n",
        ),
        volume("vol-thin", "1Gi", ""),
        volume("new", "102Mi", ""),
    ]
    .concat());
    let w = world(&s, report("thin"));
    let Discovery::Ok(inv) = &w.backends.values().next().unwrap().discovery else {
        panic!("discovered")
    };
    // both carry the owner mark: ours, whether in the pool or not
    assert_eq!(inv.objects.len(), 2);
    assert!(inv.foreign.iter().any(|f| f.name == "legacy"));
    let p = plan::plan(&s, &w, &Recorded::default(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    insta::assert_snapshot!(render::text(&p));
}

#[test]
fn a_thin_pool_is_created_only_when_declared() {
    let missing = backend("thin", "    volumeGroup: labvg\n    thinPool: pool9\n", "");
    let s = set(&[missing.clone(), volume("a", "1Gi", "")].concat());
    let w = world(&s, report("thin"));
    let b = w.backends.values().next().unwrap();
    assert_eq!(
        b.discovery,
        Discovery::Failed(
            "thin pool labvg/pool9 does not exist; create it, or declare spec.lvm.thinPoolSize to have cinderblock create it".into()
        ),
        "no silent 95 % grab"
    );
    let s = set(&[
        backend(
            "thin",
            "    volumeGroup: labvg\n    thinPool: pool9\n    thinPoolSize: 1000Mi\n",
            "",
        ),
        volume("a", "1Gi", ""),
    ]
    .concat());
    let p = plan::plan(
        &s,
        &world(&s, report("thin")),
        &Recorded::default(),
        Options::default(),
    );
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    let Op::CreatePool {
        size,
        metadata_size,
        ref pool,
        ..
    } = p.actions[0].op
    else {
        panic!("{:?}", p.actions[0])
    };
    assert_eq!(
        (pool.as_str(), size, metadata_size),
        ("pool9", 1000 << 20, 4 << 20)
    );
    assert_eq!(
        p.actions[0].reason,
        "thin pool labvg/pool9 does not exist and spec.lvm.thinPoolSize declares 1000Mi"
    );
    assert!(
        matches!(p.actions[1].op, Op::Create { .. }),
        "volumes after the pool"
    );
    let text = render::text(&p);
    assert!(text.contains("thin pool labvg/pool9: data 0%, metadata 0% (high-water mark 90%, created by this plan)"), "{text}");
    // too big for the VG: refused with the numbers
    let s = set(&[
        backend(
            "thin",
            "    volumeGroup: labvg\n    thinPool: pool9\n    thinPoolSize: 8Gi\n",
            "",
        ),
        volume("a", "1Gi", ""),
    ]
    .concat());
    let p = plan::plan(
        &s,
        &world(&s, report("thin")),
        &Recorded::default(),
        Options::default(),
    );
    assert!(
        p.errors[0].to_string().starts_with("pool.thin: thin pool labvg/pool9 needs 8224Mi (8Gi data, 16Mi metadata and as much again for lvm2's metadata spare), but volume group labvg has 7272Mi free"),
        "{:?}",
        p.errors
    );
}

#[test]
fn thick_back_end_deletes_note_the_wipe_and_failed_vgs_hold_deletes() {
    let s = set(&[
        backend("thick", "    volumeGroup: labvg\n", ""),
        volume("other", "4Mi", ""),
    ]
    .concat());
    let mut rec = Recorded::default();
    let uuid = "5d0c2f4e-8a53-4c1b-9e1f-3b2a7c9d0e11".parse().unwrap();
    rec.objects.insert(
        uuid,
        cinderblock::state::record::RecordedObject {
            kind: plan::ObjKind::Volume,
            name: "vol-thick".into(),
            backend: "thick".into(),
            size: 256 << 20,
            deletion_policy: cinderblock::manifest::kinds::DeletionPolicy::Delete,
            consistency_group: None,
        },
    );
    let w = world(&s, report("thick"));
    let p = plan::plan(&s, &w, &rec, Options::default());
    let del = p
        .actions
        .iter()
        .find(|a| matches!(a.op, Op::Delete { .. }))
        .expect("a delete");
    assert_eq!(
        del.reason,
        "its manifest was removed and its deletionPolicy is Delete; the LV is zeroed before it is removed (volumeClear: zero)"
    );
    // the same site, but the VG cannot be read: no deletes
    let mut failed = Reports::default();
    failed.failed.insert(
        "labvg".into(),
        "`lvm fullreport ...` failed with exit status 5: Volume group \"labvg\" not found".into(),
    );
    let registry = Registry::new(&s, "lab", Path::new("/nonexistent"), Exec::host());
    let w = world_of(
        &s,
        &registry,
        Path::new("/nonexistent"),
        registry.discover_with(&failed),
    );
    let p = plan::plan(&s, &w, &rec, Options::default());
    assert!(!p.actions.iter().any(|a| matches!(a.op, Op::Delete { .. })));
    assert!(
        p.notes[0].starts_with(
            "discovery of back end thick failed: cannot read volume group labvg: `lvm fullreport"
        ),
        "{:?}",
        p.notes
    );
}

#[test]
fn the_fingerprint_follows_vg_seqno() {
    let s = set(&backend("thick", "    volumeGroup: labvg\n", ""));
    let a = world(&s, report("thick")).fingerprint();
    let mut r = report("thick");
    r.vgs[0].seqno += 1;
    assert_ne!(
        a,
        world(&s, r).fingerprint(),
        "a saved plan is stale after any metadata change"
    );
    assert_eq!(a, world(&s, report("thick")).fingerprint());
}

#[test]
fn thick_snapshots_reserve_cow_space_and_block_extending_their_origin() {
    let s = set(&[
        backend("thick", "    volumeGroup: labvg\n", ""),
        volume("vol-thick", "512Mi", ""),
        format!("---\n{H}kind: Snapshot\nmetadata:\n  name: s\nspec:\n  volume: vol-thick\n  size: 10Mi\n"),
    ]
    .concat());
    let mut r = report("thick");
    // make the fixture's thick snapshot ours, as a snapshot of vol-thick
    let snap = r
        .lvs
        .iter_mut()
        .find(|l| l.name == "vol-thick-snap")
        .unwrap();
    snap.tags = vec![
        "cinderblock.uuid=00000000-0000-0000-0000-000000000009".into(),
        "cinderblock.name=old".into(),
        "cinderblock.kind=snapshot".into(),
        "cinderblock.backend=thick".into(),
        "cinderblock.parent=5d0c2f4e-8a53-4c1b-9e1f-3b2a7c9d0e11".into(),
    ];
    let p = plan::plan(&s, &world(&s, r), &Recorded::default(), Options::default());
    assert!(
        p.errors[0].to_string().starts_with("volume.vol-thick: cannot extend to 512Mi on thick: it is the origin of thick snapshot(s) snapshot.old"),
        "{:?}",
        p.errors
    );
    let snap = p
        .actions
        .iter()
        .find(|a| a.address == "snapshot.s")
        .expect("snapshot.s");
    let Op::Create { size, .. } = snap.op else {
        panic!()
    };
    assert_eq!(size, 12 << 20, "10Mi rounded up to the 4Mi extent");
    assert!(
        snap.reason
            .ends_with("a thick snapshot with 12Mi of copy-on-write space (spec.size)")
    );
}

#[test]
fn capabilities_filter_sees_thin_and_thick_lvm_pools() {
    let vtype = |name: &str, key: &str| {
        format!(
            "---\n{H}kind: VolumeType\nmetadata:\n  name: {name}\nspec:\n  extraSpecs:\n    {key}: \"<is> True\"\n"
        )
    };
    let s = set(&[
        backend("thick", "    volumeGroup: labvg\n", ""),
        backend(
            "thin",
            "    volumeGroup: labvg\n    thinPool: pool0\n",
            "  maxOverSubscriptionRatio: 30\n",
        ),
        vtype("thin-only", "capabilities:thin_provisioning_support"),
        vtype("thick-only", "thick_provisioning_support"),
        volume("a", "8Mi", "  volumeType: thin-only\n"),
        volume("b", "8Mi", "  volumeType: thick-only\n"),
    ]
    .concat());
    let p = plan::plan(
        &s,
        &world(&s, report("nobody")),
        &Recorded::default(),
        Options::default(),
    );
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    let placed: Vec<(String, String)> = p
        .actions
        .iter()
        .filter_map(|a| match &a.op {
            Op::Create { name, backend, .. } => Some((name.clone(), backend.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        placed,
        [
            ("a".to_owned(), "thin".to_owned()),
            ("b".to_owned(), "thick".to_owned())
        ]
    );
}

/// The fixture with each named LV carrying the owner mark given.
fn report_owned(owners: &[(&str, &str)]) -> FullReport {
    let mut r = parse_fullreport(FULLREPORT).unwrap();
    for lv in &mut r.lvs {
        if let Some((_, o)) = owners.iter().find(|(n, _)| *n == lv.name) {
            lv.tags.push(format!("cinderblock.backend={o}"));
        }
    }
    r
}

/// Two back ends on volume group labvg: thick, and thin in pool0.
fn one_vg(vol: &str, size: &str, to: &str) -> ManifestSet {
    set(&[
        backend("thick-a", "    volumeGroup: labvg\n", ""),
        backend(
            "thin",
            "    volumeGroup: labvg\n    thinPool: pool0\n",
            "  maxOverSubscriptionRatio: 30\n",
        ),
        volume(vol, size, &format!("  backend: {to}\n")),
    ]
    .concat())
}

#[test]
fn moves_inside_one_volume_group_copy_between_thick_and_the_pool() {
    // thin (pool0) -> thick-a: a copy inside labvg, of what the thin LV holds.
    let s = one_vg("vol-thin", "1Gi", "thick-a");
    let w = world(&s, report_owned(&[("vol-thin", "thin")]));
    let p = plan::plan(&s, &w, &Recorded::default(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    let [a] = &p.actions[..] else {
        panic!("one action: {:?}", p.actions)
    };
    let Op::Migrate {
        from,
        to,
        read,
        carry,
        within,
        ..
    } = &a.op
    else {
        panic!("{:?}", a.op)
    };
    assert_eq!((from.as_str(), to.as_str()), ("thin", "thick-a"));
    assert_eq!(*carry, plan::Carry::Copy);
    assert_eq!(within.as_deref(), Some("volume group labvg"));
    // data_percent 1.56 of 1 GiB
    assert_eq!(*read, 16_750_372);
    assert_eq!(a.impact, plan::Impact::Moves);
    let text = render::text(&p);
    assert!(
        text.contains("within     = volume group labvg (the copy stays inside it)"),
        "{text}"
    );
    assert!(
        text.contains("> backend    = \"thin\" -> \"thick-a\""),
        "{text}"
    );
    assert!(
        text.contains("(the allocated data; holes are not read)"),
        "{text}"
    );
    assert!(!text.contains("not supported"), "{text}");

    // thick-a -> thin: a copy (a thin LV is bound to its pool) of the whole
    // thick LV.
    let s = one_vg("vol-thick", "256Mi", "thin");
    let w = world(&s, report_owned(&[("vol-thick", "thick-a")]));
    let p = plan::plan(&s, &w, &Recorded::default(), Options::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert!(
        matches!(&p.actions[..], [a] if matches!(&a.op, Op::Migrate { carry: plan::Carry::Copy, read, within: Some(_), .. } if *read == 256 << 20)),
        "{:?}",
        p.actions
    );
}
