//! The `lvm` back end end to end on real LVM: `cinderblock plan`/`apply` inside the
//! VM on manifests shipped with the scenario, checked with `lvs` JSON reports,
//! `sha256sum` of the LVs, exit codes and plan text. Each test is one VM boot that
//! runs a whole story, so the suite stays fast.

use crate::harness::{Outcome, Scenario};
use cinderblock::lvm::report::{self, Lv};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Sourced by every step: `cb` runs cinderblock with this scenario's state
/// directory and host name; `lv_path NAME` is the device of the LV whose
/// `cinderblock.name` tag is NAME (names are unique per scenario); `report`
/// writes `lvs` JSON of every LV to `$OUT/<file>`.
pub(crate) const GUEST_LIB: &str = r#"
cb() { cinderblock --state "${STATE:-st}" --host lab "$@"; }
lv_path() { p=$(lvs --noheadings -o lv_path "@cinderblock.name=$1" | tr -d ' '); [ -n "$p" ] || { echo "no LV named $1" >&2; return 1; }; echo "$p"; }
report() { lvs -a --reportformat json --units b --nosuffix -o lv_name,vg_name,lv_uuid,lv_size,lv_attr,origin,pool_lv,data_percent,metadata_percent,thin_id,lv_tags > "$OUT/$1"; }
"#;

pub(crate) const H: &str = "apiVersion: cinderblock.dev/v1alpha1\n";

pub(crate) fn backend(name: &str, spec: &str) -> String {
    format!("---\n{H}kind: Backend\nmetadata:\n  name: {name}\nspec:\n  host: lab\n{spec}")
}

fn vtype(name: &str, backend_name: &str) -> String {
    format!(
        "---\n{H}kind: VolumeType\nmetadata:\n  name: {name}\nspec:\n  extraSpecs:\n    volume_backend_name: {backend_name}\n"
    )
}

pub(crate) fn volume(name: &str, size: &str, extra: &str) -> String {
    format!("---\n{H}kind: Volume\nmetadata:\n  name: {name}\nspec:\n  size: {size}\n{extra}")
}

pub(crate) fn snapshot(name: &str, volume: &str, extra: &str) -> String {
    format!("---\n{H}kind: Snapshot\nmetadata:\n  name: {name}\nspec:\n  volume: {volume}\n{extra}")
}

/// Runs `body` with the helpers loaded.
pub(crate) fn sh(body: &str) -> String {
    format!(". ./lib-lvm.sh\n{body}")
}

pub(crate) fn lvs(out: &Outcome, file: &str) -> Vec<Lv> {
    report::parse_lvs(out.file(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn ours<'a>(lvs: &'a [Lv], backend: &str) -> Vec<&'a Lv> {
    lvs.iter()
        .filter(|l| l.tag_value("cinderblock.backend") == Some(backend))
        .collect()
}

pub(crate) fn named<'a>(lvs: &'a [Lv], name: &str) -> &'a Lv {
    lvs.iter()
        .find(|l| l.tag_value("cinderblock.name") == Some(name))
        .unwrap_or_else(|| panic!("no LV tagged cinderblock.name={name}"))
}

pub(crate) fn rc(out: &Outcome, step: &str) -> i32 {
    out.step(step).rc.unwrap_or(-1)
}

/// The admin notes' example (`examples/lvm-two-backends`): two VGs behind one
/// `backendName`, `VolumeNumberWeigher`, six 1 GiB volumes → three on each; the
/// re-plan is empty; a foreign LV is untouched. Then, on the same VGs under other
/// back end names, `CapacityWeigher` prefers the emptier VG.
#[test]
#[ignore = "needs the VM lab"]
#[allow(clippy::too_many_lines)] // one VM boot: the steps, then what they showed
fn seed_example_spreads_three_and_three_and_capacity_weigher_prefers_the_emptier_vg() {
    let example = |f: &str| {
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples/lvm-two-backends")
                .join(f),
        )
        .unwrap()
    };
    let cap_site = [
        backend(
            "cap-1",
            "  backendName: CAP\n  lvm:\n    volumeGroup: cinder-volumes-1\n",
        ),
        backend(
            "cap-2",
            "  backendName: CAP\n  lvm:\n    volumeGroup: cinder-volumes-2\n",
        ),
        vtype("cap", "CAP"),
        volume("w-1", "256Mi", "  volumeType: cap\n"),
        volume("w-2", "256Mi", "  volumeType: cap\n"),
    ]
    .concat();
    let out = Scenario::new("lvm-seed")
        .file("lib-lvm.sh", GUEST_LIB)
        .file("seed/backends.yaml", example("backends.yaml"))
        .file("seed/volumes.yaml", example("volumes.yaml"))
        .file("cap/site.yaml", cap_site)
        .step(
            "setup",
            "pvcreate -y /dev/vda /dev/vdb >/dev/null
             vgcreate cinder-volumes-1 /dev/vda >/dev/null
             vgcreate cinder-volumes-2 /dev/vdb >/dev/null
             lvcreate -y -n legacy -L 512M cinder-volumes-1 >/dev/null
             dd if=/dev/urandom of=/dev/cinder-volumes-1/legacy bs=1M count=8 oflag=direct 2>/dev/null
             sha_head /dev/cinder-volumes-1/legacy 8",
        )
        .step_any(
            "plan",
            "cinderblock --state st --host server1 plan -f seed --detailed-exitcode",
        )
        .step(
            "apply",
            "cinderblock --state st --host server1 apply -f seed --auto-approve",
        )
        .step(
            "report",
            &sh("report seed.json; sha_head /dev/cinder-volumes-1/legacy 8"),
        )
        .step_any(
            "replan",
            "cinderblock --state st --host server1 plan -f seed --detailed-exitcode",
        )
        .step_any(
            "cap_plan",
            &sh("STATE=st2 cb plan -f cap --detailed-exitcode"),
        )
        .step("cap_apply", &sh("STATE=st2 cb apply -f cap --auto-approve"))
        .step(
            "cap_report",
            &sh("report cap.json; sha_head /dev/cinder-volumes-1/legacy 8"),
        )
        .run();

    assert_eq!(rc(&out, "plan"), 2, "changes: {}", out.stdout("plan"));
    let plan = out.stdout("plan");
    assert!(
        plan.contains("Plan: 6 to add, 0 to change, 0 to destroy."),
        "{plan}"
    );
    assert!(
        plan.contains("volume group cinder-volumes-1: free "),
        "LVM capacity lines: {plan}"
    );
    let lvs_seed = lvs(&out, "seed.json");
    for b in ["lvmstorage-1", "lvmstorage-2"] {
        let mine = ours(&lvs_seed, b);
        assert_eq!(mine.len(), 3, "{b}: {mine:#?}");
        assert!(
            mine.iter()
                .all(|l| l.size == GIB && l.name.starts_with("volume-"))
        );
        assert!(
            mine.iter()
                .all(|l| l.tag_value("cinderblock.kind") == Some("volume"))
        );
        assert!(mine.iter().all(|l| {
            l.tag_value("cinderblock.uuid")
                .is_some_and(|u| l.name.ends_with(u))
        }));
    }
    assert!(
        ours(&lvs_seed, "lvmstorage-1")
            .iter()
            .all(|l| l.vg == "cinder-volumes-1")
    );
    assert_eq!(rc(&out, "replan"), 0, "{}", out.stdout("replan"));
    assert!(
        out.stdout("replan")
            .ends_with("No changes. Storage matches the manifests.")
    );

    // the foreign LV: untagged, untouched, its data intact
    let legacy = lvs_seed.iter().find(|l| l.name == "legacy").unwrap();
    assert!(legacy.tags.is_empty());
    let sha = out.stdout("setup");
    assert_eq!(out.stdout("report"), sha);
    assert_eq!(out.stdout("cap_report"), sha);

    // CapacityWeigher: cinder-volumes-1 has 512 MiB less free (the foreign LV),
    // so both 256 MiB volumes go to cinder-volumes-2 (after the first it still
    // has 256 MiB more free than the other).
    assert_eq!(rc(&out, "cap_plan"), 2, "{}", out.stdout("cap_plan"));
    let lvs_cap = lvs(&out, "cap.json");
    let cap2 = ours(&lvs_cap, "cap-2");
    assert_eq!(cap2.len(), 2, "{}", out.stdout("cap_plan"));
    assert!(
        cap2.iter()
            .all(|l| l.vg == "cinder-volumes-2" && l.size == 256 * MIB)
    );
    assert!(ours(&lvs_cap, "cap-1").is_empty());
    // the seed's LVs are another back end's: untouched by the second site
    assert_eq!(ours(&lvs_cap, "lvmstorage-1").len(), 3);
}

/// Thin back ends: a declared 1 GiB pool with ratio 2.0 is created by the plan,
/// takes 2 GiB of thin volumes and refuses the next with Cinder's numbers; data
/// survives an extend; a thin snapshot keeps its point in time; a clone of it
/// matches; shrinking is refused; a pool above the high-water mark refuses what
/// the formula alone would admit.
#[test]
#[ignore = "needs the VM lab"]
#[allow(clippy::too_many_lines)] // one VM boot: the steps, then what they showed
fn thin_pools_oversubscription_snapshots_clones_and_the_high_water_mark() {
    let site = [
        backend(
            "small",
            "  backendName: SMALL\n  maxOverSubscriptionRatio: 2.0\n  lvm:\n    volumeGroup: smallvg\n    thinPool: pool0\n    thinPoolSize: 1Gi\n",
        ),
        backend(
            "data",
            "  backendName: DATA\n  lvm:\n    volumeGroup: datavg\n    thinPool: pool0\n    thinPoolSize: 2Gi\n",
        ),
        backend(
            "hw",
            "  backendName: HW\n  lvm:\n    volumeGroup: datavg\n    thinPool: hwpool\n    thinPoolSize: 256Mi\n",
        ),
        vtype("small", "SMALL"),
        vtype("data", "DATA"),
        vtype("hw", "HW"),
    ]
    .concat();
    let small = [
        volume("a", "1Gi", "  volumeType: small\n"),
        volume("b", "1Gi", "  volumeType: small\n"),
    ]
    .concat();
    let v1 = |size: &str| volume("v1", size, "  volumeType: data\n  deletionPolicy: Delete\n");
    let out = Scenario::new("lvm-thin")
        .file("lib-lvm.sh", GUEST_LIB)
        .file("m/site.yaml", site)
        .file("m/small.yaml", small)
        .file("m/data.yaml", v1("62Mi"))
        .file("m/h.yaml", volume("h", "256Mi", "  volumeType: hw\n"))
        .file("extra/c.yaml", volume("c", "1Gi", "  volumeType: small\n"))
        .file("extra/s1.yaml", snapshot("s1", "v1", "  deletionPolicy: Delete\n"))
        .file(
            "extra/c1.yaml",
            volume("c1", "128Mi", "  volumeType: data\n  source:\n    snapshot: s1\n"),
        )
        .file("extra/v1-128.yaml", v1("128Mi"))
        .file("extra/v1-64.yaml", v1("64Mi"))
        .file("extra/h2.yaml", volume("h2", "64Mi", "  volumeType: hw\n"))
        .step(
            "setup",
            "pvcreate -y /dev/vda /dev/vdb >/dev/null
             vgcreate smallvg /dev/vda >/dev/null
             vgcreate datavg /dev/vdb >/dev/null
             dd if=/dev/urandom of=/tmp/pat bs=1M count=16 2>/dev/null
             sha < /tmp/pat",
        )
        .step_any("plan", &sh("cb plan -f m --detailed-exitcode"))
        .step("apply", &sh("cb apply -f m --auto-approve"))
        .step("report1", &sh("report thin1.json"))
        // a third 1 GiB volume in the 1 GiB pool with ratio 2: refused
        .step_any("over", &sh("cp extra/c.yaml m/ && cb plan -f m"))
        .step(
            "write",
            &sh("rm m/c.yaml
                 dd if=/tmp/pat of=$(lv_path v1) bs=1M oflag=direct conv=fsync 2>/dev/null
                 sha_head $(lv_path v1) 16"),
        )
        .step("snap", &sh("cp extra/s1.yaml m/ && cb apply -f m --auto-approve"))
        .step(
            "overwrite",
            &sh("dd if=/dev/urandom of=$(lv_path v1) bs=1M count=16 oflag=direct conv=fsync 2>/dev/null
                 echo $(sha_head $(lv_path s1) 16) $(sha_head $(lv_path v1) 16)"),
        )
        .step(
            "clone",
            &sh("cp extra/c1.yaml m/ && cb apply -f m --auto-approve
                 sha_head $(lv_path c1) 16"),
        )
        .step(
            "extend",
            &sh("cp extra/v1-128.yaml m/data.yaml && cb apply -f m --auto-approve
                 sha_head $(lv_path v1) 16"),
        )
        .step_any(
            "shrink",
            &sh("cp extra/v1-64.yaml m/data.yaml && cb plan -f m"),
        )
        // fill the 256 MiB pool to about 94 %, then ask for a little more
        .step(
            "fill",
            &sh("cp extra/v1-128.yaml m/data.yaml
                 dd if=/dev/zero of=$(lv_path h) bs=1M count=240 oflag=direct conv=fsync 2>/dev/null
                 lvs --noheadings -o data_percent datavg/hwpool"),
        )
        .step_any("high_water", &sh("cp extra/h2.yaml m/ && cb plan -f m"))
        .step("report2", &sh("rm m/h2.yaml; report thin2.json"))
        .step_any("replan", &sh("cb plan -f m --detailed-exitcode"))
        .run();

    // the plan creates the declared pools first, and says what it will take
    assert_eq!(rc(&out, "plan"), 2, "{}", out.stdout("plan"));
    let plan = out.stdout("plan");
    assert!(plan.contains("# pool.small will be created"), "{plan}");
    assert!(plan.contains("+ thin_pool \"smallvg/pool0\" {"), "{plan}");
    assert!(
        plan.contains(
            "thin pool smallvg/pool0 does not exist and spec.lvm.thinPoolSize declares 1Gi"
        ),
        "{plan}"
    );
    assert!(
        plan.contains("size 62Mi rounded up to 64Mi, a multiple of the 4Mi extent"),
        "{plan}"
    );
    assert!(
        plan.contains("thin pool smallvg/pool0: data 0%, metadata 0% (high-water mark 90%, created by this plan)"),
        "{plan}"
    );
    assert!(
        plan.contains("Plan: 7 to add, 0 to change, 0 to destroy."),
        "{plan}"
    );
    let first = lvs(&out, "thin1.json");
    let pool = first
        .iter()
        .find(|l| l.vg == "smallvg" && l.name == "pool0")
        .expect("the pool");
    assert_eq!(pool.size, GIB);
    let small: Vec<&Lv> = ours(&first, "small");
    assert_eq!(small.len(), 2);
    assert!(
        small
            .iter()
            .all(|l| l.pool.as_deref() == Some("pool0") && l.size == GIB)
    );
    assert_eq!(
        named(&first, "v1").size,
        64 * MIB,
        "rounded up to the extent"
    );

    assert_eq!(rc(&out, "over"), 1, "{}", out.stdout("over"));
    assert!(
        out.stdout("over").contains(
            "needs 1Gi, virtual free 0 B (thin: (1 GiB total − 0 B reserved) × ratio 2 − 2 GiB provisioned)"
        ),
        "{}",
        out.stdout("over")
    );

    let pattern = out.stdout("setup");
    assert_eq!(out.stdout("write"), pattern);
    let shas: Vec<&str> = out.stdout("overwrite").split(' ').collect();
    assert_eq!(shas[0], pattern, "the snapshot kept its point in time");
    assert_ne!(shas[1], pattern, "the origin was overwritten");
    assert_eq!(
        out.stdout("clone").lines().last(),
        Some(pattern),
        "the clone matches its snapshot"
    );
    assert_eq!(
        out.stdout("extend").lines().last(),
        Some(shas[1]),
        "data survives the extend"
    );
    assert_eq!(rc(&out, "shrink"), 1);
    assert!(
        out.stdout("shrink")
            .contains("volume.v1: cannot shrink from 128Mi to 64Mi"),
        "{}",
        out.stdout("shrink")
    );

    let fill: f64 = out
        .stdout("fill")
        .lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(fill > 90.0, "pool filled: {fill}");
    assert_eq!(rc(&out, "high_water"), 1, "{}", out.stdout("high_water"));
    let hw = out.stdout("high_water");
    assert!(
        hw.contains("hw: CapacityFilter: thin pool data use is ")
            && hw.contains(
                "above the high-water mark of 90% (Cinder's formula alone would admit it"
            ),
        "{hw}"
    );

    let last = lvs(&out, "thin2.json");
    let s1 = named(&last, "s1");
    assert_eq!(s1.attr.kind, report::LvKind::Thin);
    assert!(
        s1.name.starts_with("_snapshot-")
            && s1.origin.as_deref() == Some(named(&last, "v1").name.as_str())
    );
    assert!(
        s1.attr.active && !s1.attr.skip_activation,
        "created with -kn"
    );
    assert_eq!(
        s1.tag_value("cinderblock.parent"),
        named(&last, "v1").tag_value("cinderblock.uuid"),
        "thin snapshots inherit no tags: we wrote them"
    );
    let c1 = named(&last, "c1");
    assert_eq!((c1.size, c1.pool.as_deref()), (128 * MIB, Some("pool0")));
    assert_eq!(c1.tag_value("cinderblock.kind"), Some("volume"));
    assert_eq!(named(&last, "v1").size, 128 * MIB);
    assert_eq!(rc(&out, "replan"), 0, "{}", out.stdout("replan"));
}

/// Thick back ends: a COW snapshot keeps its point in time and a clone of it (a
/// zero-aware copy) matches it byte for byte; extending an origin of thick
/// snapshots is refused with the reason and works once they are gone, keeping
/// the data; shrinking is refused; `Delete` zeroes the extents before removing
/// the LV; `Retain` lets the LV go with its data; the foreign LV is untouched.
#[test]
#[ignore = "needs the VM lab"]
#[allow(clippy::too_many_lines)] // one VM boot: the steps, then what they showed
fn thick_snapshots_clones_extend_delete_wipes_and_retain_keeps() {
    let site = [
        backend("thick", "  lvm:\n    volumeGroup: tv\n"),
        volume("keep", "16Mi", "  backend: thick\n"),
        volume("r", "32Mi", "  backend: thick\n  deletionPolicy: Retain\n"),
    ]
    .concat();
    let d = |size: &str| volume("d", size, "  backend: thick\n  deletionPolicy: Delete\n");
    let out = Scenario::new("lvm-thick")
        .file("lib-lvm.sh", GUEST_LIB)
        .file("m/site.yaml", site)
        .file("m/d.yaml", d("64Mi"))
        .file(
            "extra/s.yaml",
            snapshot("s", "d", "  size: 32Mi\n  deletionPolicy: Delete\n"),
        )
        .file(
            "extra/c.yaml",
            volume(
                "c",
                "64Mi",
                "  backend: thick\n  deletionPolicy: Delete\n  source:\n    snapshot: s\n",
            ),
        )
        // `source` is create-time only: dropping it lets the snapshot go
        .file(
            "extra/c-made.yaml",
            volume("c", "64Mi", "  backend: thick\n  deletionPolicy: Delete\n"),
        )
        .file("extra/d-128.yaml", d("128Mi"))
        .file("extra/d-64.yaml", d("64Mi"))
        .step(
            "setup",
            "pvcreate -y /dev/vda >/dev/null && vgcreate tv /dev/vda >/dev/null
             lvcreate -y -n legacy -L 64M tv >/dev/null
             dd if=/dev/urandom of=/dev/tv/legacy bs=1M count=8 oflag=direct 2>/dev/null
             dd if=/dev/urandom of=/tmp/pat bs=1M count=16 2>/dev/null
             dd if=/dev/zero of=/tmp/zero bs=1M count=16 2>/dev/null
             echo $(sha < /tmp/pat) $(sha < /tmp/zero) $(sha_head /dev/tv/legacy 8)",
        )
        .step("apply", &sh("cb apply -f m --auto-approve"))
        .step(
            "write",
            &sh("dd if=/tmp/pat of=$(lv_path d) bs=1M oflag=direct conv=fsync 2>/dev/null
                 sha_head $(lv_path d) 16"),
        )
        .step_any("snap_plan", &sh("cp extra/s.yaml m/ && cb plan -f m"))
        .step("snap", &sh("cb apply -f m --auto-approve"))
        .step(
            "overwrite",
            &sh("dd if=/dev/urandom of=$(lv_path d) bs=1M count=16 oflag=direct conv=fsync 2>/dev/null
                 echo $(sha_head $(lv_path s) 16) $(sha_head $(lv_path d) 16)"),
        )
        .step(
            "clone",
            &sh("cp extra/c.yaml m/ && cb apply -f m --auto-approve
                 echo $(sha_head $(lv_path c) 64) $(sha_head $(lv_path s) 64)"),
        )
        .step_any(
            "extend_refused",
            &sh("cp extra/d-128.yaml m/d.yaml && cb plan -f m"),
        )
        .step(
            "drop_snapshot",
            &sh("cp extra/d-64.yaml m/d.yaml && cp extra/c-made.yaml m/c.yaml && rm m/s.yaml
                 cb apply -f m --auto-approve"),
        )
        .step(
            "extend",
            &sh("cp extra/d-128.yaml m/d.yaml && cb apply -f m --auto-approve
                 sha_head $(lv_path d) 16"),
        )
        .step_any("shrink", &sh("cp extra/d-64.yaml m/d.yaml && cb plan -f m"))
        // where d's first extents are on the disk, and what they hold now
        .step(
            "locate",
            &sh("cp extra/d-128.yaml m/d.yaml
                 lv=$(lv_path d)
                 start=$(lvs --noheadings -o seg_pe_ranges $lv | head -1 | sed 's/.*://; s/-.*//')
                 echo $((start * 4 + 1)) > /tmp/d_mib
                 dd if=/dev/vda bs=1M skip=$(cat /tmp/d_mib) count=16 iflag=direct 2>/dev/null | sha"),
        )
        .step_any(
            "delete_plan",
            &sh("rm m/d.yaml m/c.yaml m/site.yaml
                 printf '%s' \"$(cat extra/site-keep.yaml)\" > m/site.yaml
                 cb plan -f m --detailed-exitcode"),
        )
        .step("delete", &sh("cb apply -f m --auto-approve"))
        .step(
            "wiped",
            "dd if=/dev/vda bs=1M skip=$(cat /tmp/d_mib) count=16 iflag=direct 2>/dev/null | sha
             sha_head /dev/tv/legacy 8",
        )
        .step("report", &sh("report thick.json"))
        .step_any("replan", &sh("cb plan -f m --detailed-exitcode"))
        .file(
            "extra/site-keep.yaml",
            [
                backend("thick", "  lvm:\n    volumeGroup: tv\n"),
                volume("keep", "16Mi", "  backend: thick\n"),
            ]
            .concat(),
        )
        .run();

    let setup: Vec<&str> = out.stdout("setup").split(' ').collect();
    let (pattern, zeros, legacy) = (setup[0], setup[1], setup[2]);
    assert_eq!(out.stdout("write"), pattern);
    let plan = out.stdout("snap_plan");
    assert!(
        plan.contains("a thick snapshot with 32Mi of copy-on-write space (spec.size)"),
        "{plan}"
    );
    let shas: Vec<&str> = out.stdout("overwrite").split(' ').collect();
    assert_eq!(shas[0], pattern, "the COW snapshot kept its point in time");
    assert_ne!(shas[1], pattern);
    let clone: Vec<&str> = out
        .stdout("clone")
        .lines()
        .last()
        .unwrap()
        .split(' ')
        .collect();
    assert_eq!(
        clone[0], clone[1],
        "the clone matches the snapshot, all 64 MiB"
    );

    assert_eq!(rc(&out, "extend_refused"), 1);
    assert!(
        out.stdout("extend_refused").contains(
            "volume.d: cannot extend to 128Mi on thick: it is the origin of thick snapshot(s) snapshot.s, and lvm2 resizes such an origin only while it is inactive"
        ),
        "{}",
        out.stdout("extend_refused")
    );
    assert_eq!(
        out.stdout("extend").lines().last(),
        Some(shas[1]),
        "data survives the extend"
    );
    assert_eq!(rc(&out, "shrink"), 1);
    assert!(
        out.stdout("shrink")
            .contains("volume.d: cannot shrink from 128Mi to 64Mi")
    );

    assert_eq!(out.stdout("locate"), shas[1], "d's data sits where we look");
    assert_eq!(
        rc(&out, "delete_plan"),
        3,
        "destroys data: {}",
        out.stdout("delete_plan")
    );
    let plan = out.stdout("delete_plan");
    assert!(
        plan.contains("its manifest was removed and its deletionPolicy is Delete; the LV is zeroed before it is removed (volumeClear: zero)"),
        "{plan}"
    );
    assert!(plan.contains("# volume.r will be forgotten"), "{plan}");
    let wiped: Vec<&str> = out.stdout("wiped").lines().collect();
    assert_eq!(wiped[0], zeros, "the extents were zeroed before lvremove");
    assert_eq!(wiped[1], legacy, "the foreign LV's data is intact");

    let last = lvs(&out, "thick.json");
    let names: Vec<&str> = last.iter().map(|l| l.name.as_str()).collect();
    let r = named(&last, "r");
    assert_eq!(names.len(), 3, "legacy, keep and the released r: {names:?}");
    assert!(names.contains(&"legacy"));
    assert_eq!(
        r.tag_value("cinderblock.released"),
        Some("thick"),
        "Retain: let go"
    );
    assert_eq!(r.tag_value("cinderblock.backend"), None);
    assert_eq!(r.size, 32 * MIB);
    assert_eq!(rc(&out, "replan"), 0, "{}", out.stdout("replan"));
}

/// Ten LVM actions (a declared thin pool, thin and thick volumes, thin and thick
/// snapshots, a thin and a thick clone), killed with SIGKILL at several points:
/// the executor's (`CINDERBLOCK_CRASH_AT=STEP:intent|driver|outcome`) and the
/// driver's own, between a thick clone's `lvcreate` and its copy. Each time the
/// next run converges: apply succeeds, the re-plan is empty, every object is
/// there once. Then the same for deletes.
#[test]
#[ignore = "needs the VM lab"]
fn sigkill_during_an_apply_of_ten_lvm_actions_then_the_next_run_converges() {
    let del = "  deletionPolicy: Delete\n";
    let ct = |extra: &str| format!("  backend: ct\n{del}{extra}");
    let kt = |extra: &str| format!("  backend: kt\n{del}{extra}");
    let site = [
        backend(
            "ct",
            "  lvm:\n    volumeGroup: cv\n    thinPool: pool0\n    thinPoolSize: 1Gi\n",
        ),
        backend("kt", "  lvm:\n    volumeGroup: kv\n"),
    ]
    .concat();
    let objects = [
        volume("t1", "64Mi", &ct("")),
        volume("t2", "64Mi", &ct("")),
        volume("t3", "64Mi", &ct("")),
        snapshot("ts1", "t1", del),
        volume("tc", "96Mi", &ct("  source:\n    snapshot: ts1\n")),
        volume("k1", "32Mi", &kt("")),
        volume("k2", "32Mi", &kt("")),
        snapshot("ks", "k1", &format!("  size: 8Mi\n{del}")),
        volume("kc", "32Mi", &kt("  source:\n    snapshot: ks\n")),
    ]
    .concat();
    // The loop runs inside the VM: fresh VGs and state per crash point.
    let crash = r#". ./lib-lvm.sh
fresh() {
  vgremove -y -f cv kv >/dev/null 2>&1 || true
  pvcreate -y -ff /dev/vda /dev/vdb >/dev/null
  vgcreate cv /dev/vda >/dev/null && vgcreate kv /dev/vdb >/dev/null
  rm -rf st
}
ours() { lvs --noheadings -o lv_tags | grep -cE 'cinderblock\.backend=(ct|kt)' || true; }
run() { # crash-point manifests
  CINDERBLOCK_CRASH_AT=$1 cb apply -f "$2" --auto-approve >/tmp/crash.out 2>&1 && c=0 || c=$?
  cb plan -f "$2" --detailed-exitcode >/tmp/resume.out 2>&1 && r=0 || r=$?
  cb apply -f "$2" --auto-approve >/tmp/apply.out 2>&1 && a=0 || a=$?
  cb plan -f "$2" --detailed-exitcode >/tmp/replan.out 2>&1 && p=0 || p=$?
  [ "$p" = 0 ] || cat /tmp/apply.out /tmp/replan.out >&2
  echo "$1 crash=$c resume=$r apply=$a replan=$p ours=$(ours)"
}
for P in $POINTS; do fresh; run "$P" m; done
"#;
    let out = Scenario::new("lvm-crash")
        .file("lib-lvm.sh", GUEST_LIB)
        .file("crash.sh", crash)
        .file("m/site.yaml", site.clone())
        .file("m/objects.yaml", objects)
        .file(
            "del/site.yaml",
            [site, volume("t3", "64Mi", &ct(""))].concat(),
        )
        .step("plan", &sh("pvcreate -y /dev/vda /dev/vdb >/dev/null; vgcreate cv /dev/vda >/dev/null; vgcreate kv /dev/vdb >/dev/null; cb plan -f m | tail -1; rm -rf st"))
        .step(
            "creates",
            "POINTS='1:driver 5:outcome lvm-copy 9:driver' sh crash.sh",
        )
        // everything but t3 goes (snapshots first), killed at the third delete
        .step(
            "deletes",
            "POINTS= . ./crash.sh; run 3:driver del; run 1:intent del",
        )
        .step("report", &sh("report crash.json"))
        .timeout(std::time::Duration::from_secs(400))
        .run();

    assert_eq!(
        out.stdout("plan"),
        "Plan: 10 to add, 0 to change, 0 to destroy."
    );
    let lines: Vec<&str> = out.stdout("creates").lines().collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    for l in &lines {
        // killed (137) where asked; then work left (2), applied (0), nothing
        // left (0), and the 9 objects of the two back ends, each once
        let point = l.split(' ').next().unwrap();
        assert_eq!(
            *l,
            format!("{point} crash=137 resume=2 apply=0 replan=0 ours=9"),
            "{}",
            out.step("creates").stderr
        );
    }
    let dels: Vec<&str> = out.stdout("deletes").lines().collect();
    assert_eq!(
        dels,
        [
            "3:driver crash=137 resume=3 apply=0 replan=0 ours=1",
            // nothing left to delete: the crash point is never reached
            "1:intent crash=0 resume=0 apply=0 replan=0 ours=1",
        ],
        "{}",
        out.step("deletes").stderr
    );
    let last = lvs(&out, "crash.json");
    assert_eq!(named(&last, "t3").size, 64 * MIB);
}
