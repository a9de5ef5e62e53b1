//! Bringing an existing LVM host under management, on real LVM in one VM
//! boot: `discover`, adopt, a wrong-size adopt refused, rename, re-adopt
//! after `Retain`, a snapshot of an adopted volume adopted too, and a
//! foreign LV nobody annotated left alone — checked with `lvs` JSON reports
//! (tags, names, identities), `sha256sum` of the LVs, exit codes and plan
//! text.

use crate::harness::Scenario;
use crate::lvm_backend::{GUEST_LIB, H, backend, lvs, named, rc, sh, snapshot, volume};

const MIB: u64 = 1 << 20;
/// The Cinder-style LV: Cinder names a volume's LV `volume-<its uuid>`.
const CINDER: &str = "volume-1b4e28ba-2fa1-41d2-883f-0016d3cca427";

fn adopting(kind: &str, name: &str, entry: &str, spec: &str) -> String {
    format!(
        "---\n{H}kind: {kind}\nmetadata:\n  name: {name}\n  annotations:\n    cinderblock.dev/adopt: {entry}\nspec:\n{spec}"
    )
}

/// The sha256 of each LV the story keeps an eye on, one per line.
const SHAS: &str = "for lv in thick/legacy thick/untouched thin/volume-1b4e28ba-2fa1-41d2-883f-0016d3cca427 thin/cinder-snap; do
  lvchange -ay -K \"$lv\" >/dev/null
  echo \"$lv $(sha_head /dev/$lv 8)\"
done";

#[test]
#[ignore = "needs the VM lab"]
#[allow(clippy::too_many_lines)] // one VM boot: the steps, then what they showed
fn an_existing_lvm_host_is_discovered_adopted_renamed_and_taken_back() {
    let backends = [
        backend("thick", "  lvm:\n    volumeGroup: thick\n"),
        backend(
            "thin",
            "  lvm:\n    volumeGroup: thin\n    thinPool: pool0\n",
        ),
    ]
    .concat();
    // What cinderblock made itself: a thick volume, a thin one, a thin
    // snapshot of it.
    let own = [
        volume("web", "64Mi", "  backend: thick\n"),
        volume("app", "64Mi", "  backend: thin\n"),
        snapshot("app-snap", "app", ""),
    ]
    .concat();
    let legacy = adopting(
        "Volume",
        "legacy",
        "legacy",
        "  size: 64Mi\n  backend: thick\n",
    );
    let cinder = [
        adopting(
            "Volume",
            "cinder",
            CINDER,
            "  size: 64Mi\n  backend: thin\n",
        ),
        adopting(
            "Snapshot",
            "cinder-snap",
            "cinder-snap",
            "  volume: cinder\n",
        ),
    ]
    .concat();
    let renamed = [
        format!(
            "---\n{H}kind: Volume\nmetadata:\n  name: orders\n  annotations:\n    cinderblock.dev/renamed-from: cinder\nspec:\n  size: 64Mi\n  backend: thin\n"
        ),
        snapshot("cinder-snap", "orders", ""),
    ]
    .concat();
    let out = Scenario::new("adopt")
        .file("lib-lvm.sh", GUEST_LIB)
        .file("backends.yaml", backends)
        .file("own.yaml", own)
        .file("a/legacy.yaml", legacy)
        .file("a/cinder.yaml", cinder)
        .file("renamed.yaml", renamed)
        .file(
            "wrong.yaml",
            adopting("Volume", "legacy", "legacy", "  size: 32Mi\n  backend: thick\n"),
        )
        .step(
            "setup",
            &format!(
                "pvcreate -y /dev/vda /dev/vdb >/dev/null
                 vgcreate thick /dev/vda >/dev/null
                 vgcreate thin /dev/vdb >/dev/null
                 lvcreate -y -L 1G -T thin/pool0 >/dev/null
                 lvcreate -y -n legacy -L 64M thick >/dev/null
                 lvcreate -y -n untouched -L 32M thick >/dev/null
                 lvcreate -y -n {CINDER} -V 64M -T thin/pool0 >/dev/null
                 for lv in thick/legacy thick/untouched thin/{CINDER}; do
                   dd if=/dev/urandom of=/dev/$lv bs=1M count=8 oflag=direct 2>/dev/null
                 done
                 lvcreate -y -s -n cinder-snap thin/{CINDER} >/dev/null
                 {SHAS}"
            ),
        )
        .step("own", &sh("cb apply -f backends.yaml -f own.yaml --auto-approve"))
        .step(
            "discover",
            &sh("cb discover -f backends.yaml --include-foreign --out found && cp found/* $OUT/"),
        )
        .step_any(
            "replan",
            &sh("cb plan -f backends.yaml -f found/thick.yaml -f found/thin.yaml --detailed-exitcode"),
        )
        .step_any(
            "fresh",
            &sh("STATE=st2 cb discover -f backends.yaml --out fresh >/dev/null && STATE=st2 cb plan -f backends.yaml -f fresh --detailed-exitcode"),
        )
        .step_any(
            "wrong",
            &sh("cb plan -f backends.yaml -f found/thick.yaml -f found/thin.yaml -f wrong.yaml"),
        )
        .step_any(
            "adopt_plan",
            &sh("cb plan -f backends.yaml -f found/thick.yaml -f found/thin.yaml -f a --detailed-exitcode"),
        )
        .step(
            "adopt",
            &sh("cb apply -f backends.yaml -f found/thick.yaml -f found/thin.yaml -f a --auto-approve"),
        )
        .step("adopted", &sh(&format!("report adopted.json\n{SHAS}")))
        .step_any(
            "noop",
            &sh("cb plan -f backends.yaml -f found/thick.yaml -f found/thin.yaml -f a --detailed-exitcode"),
        )
        .step(
            "rename",
            &sh("cb apply -f backends.yaml -f found/thick.yaml -f found/thin.yaml -f a/legacy.yaml -f renamed.yaml --auto-approve"),
        )
        .step("renamed", &sh(&format!("report renamed.json\n{SHAS}")))
        .step(
            "release",
            &sh("cb apply -f backends.yaml -f found/thick.yaml -f found/thin.yaml -f renamed.yaml --auto-approve"),
        )
        .step("released", &sh("report released.json"))
        .step(
            "readopt",
            &sh("cb apply -f backends.yaml -f found/thick.yaml -f found/thin.yaml -f a/legacy.yaml -f renamed.yaml --auto-approve"),
        )
        .step("readopted", &sh(&format!("report readopted.json\n{SHAS}")))
        .step_any(
            "final",
            &sh("cb plan -f backends.yaml -f found/thick.yaml -f found/thin.yaml -f a/legacy.yaml -f renamed.yaml --detailed-exitcode"),
        )
        .run();

    // discover: ours as manifests that plan to "No changes" (also from a new
    // state directory); the foreign LVs as volumes to adopt.
    let thick = out.text("thick.yaml");
    let thin = out.text("thin.yaml");
    assert!(thick.contains("  name: web\n"), "{thick}");
    assert!(
        thin.contains("  name: app\n")
            && thin.contains("kind: Snapshot\nmetadata:\n  name: app-snap\nspec:\n  volume: app\n"),
        "{thin}"
    );
    let foreign = out.text("thick.foreign.yaml") + &out.text("thin.foreign.yaml");
    for entry in ["legacy", "untouched", CINDER, "cinder-snap"] {
        assert!(
            foreign.contains(&format!("cinderblock.dev/adopt: {entry}\n")),
            "{entry}: {foreign}"
        );
    }
    assert_eq!(rc(&out, "replan"), 0, "{}", out.report("replan"));
    assert_eq!(rc(&out, "fresh"), 0, "{}", out.report("fresh"));
    assert!(
        out.stdout("fresh")
            .ends_with("No changes. Storage matches the manifests.")
    );

    // The wrong size is refused; nothing applied.
    assert_eq!(rc(&out, "wrong"), 1, "{}", out.report("wrong"));
    assert!(
        out.stdout("wrong").contains("volume.legacy: spec.size 32Mi is less than the 64Mi that \"legacy\" on thick holds; adopting never shrinks: declare at least 64Mi"),
        "{}",
        out.stdout("wrong")
    );

    // Adopted: marked only — names and bytes kept; the snapshot is a snapshot
    // of the adopted volume; the foreign LV nobody annotated has no tag.
    assert_eq!(rc(&out, "adopt_plan"), 2, "{}", out.report("adopt_plan"));
    let plan = out.stdout("adopt_plan");
    assert!(
        plan.contains("# volume.legacy will be adopted")
            && plan.contains("# volume.cinder will be adopted")
            && plan.contains("# snapshot.cinder-snap will be adopted")
            && plan.contains("Plan: 3 to add, 0 to change, 0 to destroy.")
            && !plan.contains("will be created"),
        "{plan}"
    );
    let before = out.stdout("setup");
    assert_eq!(
        out.stdout("adopted"),
        before,
        "data changed by the adoption"
    );
    let adopted = lvs(&out, "adopted.json");
    let legacy = named(&adopted, "legacy");
    assert_eq!(
        (legacy.name.as_str(), legacy.vg.as_str()),
        ("legacy", "thick")
    );
    assert_eq!(legacy.tag_value("cinderblock.backend"), Some("thick"));
    let cinder = named(&adopted, "cinder");
    assert_eq!(cinder.name, CINDER, "never renamed");
    assert_eq!(cinder.size, 64 * MIB);
    let cinder_uuid = cinder.tag_value("cinderblock.uuid").unwrap().to_owned();
    let snap = named(&adopted, "cinder-snap");
    assert_eq!(snap.name, "cinder-snap");
    assert_eq!(snap.tag_value("cinderblock.kind"), Some("snapshot"));
    assert_eq!(
        snap.tag_value("cinderblock.parent"),
        Some(cinder_uuid.as_str())
    );
    let untouched = adopted.iter().find(|l| l.name == "untouched").unwrap();
    assert!(untouched.tags.is_empty(), "{:?}", untouched.tags);
    assert_eq!(rc(&out, "noop"), 0, "{}", out.report("noop"));

    // Renamed: the same LV, identity and bytes; only the name tag moved.
    assert!(
        out.stdout("rename").contains("volume.orders: Renaming...")
            && out
                .stdout("rename")
                .contains("Apply complete! Resources: 0 added, 1 changed, 0 destroyed."),
        "{}",
        out.stdout("rename")
    );
    let renamed = lvs(&out, "renamed.json");
    let orders = named(&renamed, "orders");
    assert_eq!(orders.name, CINDER);
    assert_eq!(
        orders.tag_value("cinderblock.uuid"),
        Some(cinder_uuid.as_str())
    );
    assert!(
        !renamed
            .iter()
            .any(|l| l.tag_value("cinderblock.name") == Some("cinder"))
    );
    assert_eq!(
        named(&renamed, "cinder-snap").tag_value("cinderblock.parent"),
        Some(cinder_uuid.as_str())
    );
    assert_eq!(out.stdout("renamed"), before);

    // Released by Retain, then taken back with the identity it kept.
    let legacy_uuid = legacy.tag_value("cinderblock.uuid").unwrap().to_owned();
    assert!(
        out.stdout("release")
            .contains("volume.legacy will be forgotten"),
        "{}",
        out.stdout("release")
    );
    let released = lvs(&out, "released.json");
    let l = released.iter().find(|l| l.name == "legacy").unwrap();
    assert_eq!(l.tag_value("cinderblock.backend"), None);
    assert_eq!(l.tag_value("cinderblock.released"), Some("thick"));
    assert!(
        out.stdout("readopt")
            .contains("volume.legacy will be taken back (adopted again)"),
        "{}",
        out.stdout("readopt")
    );
    let readopted = lvs(&out, "readopted.json");
    let l = named(&readopted, "legacy");
    assert_eq!(l.name, "legacy");
    assert_eq!(l.tag_value("cinderblock.uuid"), Some(legacy_uuid.as_str()));
    assert_eq!(l.tag_value("cinderblock.backend"), Some("thick"));
    assert_eq!(out.stdout("readopted"), before);
    assert!(
        readopted
            .iter()
            .find(|l| l.name == "untouched")
            .is_some_and(|l| l.tags.is_empty())
    );
    assert_eq!(rc(&out, "final"), 0, "{}", out.report("final"));
}
