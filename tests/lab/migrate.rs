//! Migration between back ends on real LVM, in one VM boot: thick → thin and
//! thin → thick between two VGs, file → LVM and LVM → file. Data survives
//! (sha256 of the whole device or file), identity tags move, the source is
//! gone, a thin target stays sparse, and a thick target reads zeros where its
//! thin source was unmapped even though its VG's free space was first filled
//! with 0xff garbage (Cinder's `dd conv=sparse` would leave the garbage).

use crate::harness::{Outcome, Scenario};
use cinderblock::lvm::report::{self, Lv};

const H: &str = "apiVersion: cinderblock.dev/v1alpha1\n";

const GUEST_LIB: &str = r#"
cb() { cinderblock --state st --host lab "$@"; }
lv_path() { p=$(lvs --noheadings -o lv_path "@cinderblock.name=$1" | tr -d ' '); [ -n "$p" ] || { echo "no LV named $1" >&2; return 1; }; echo "$p"; }
file_path() { for f in /srv/files/.cinderblock/*.json; do grep -q "\"name\": \"$1\"" "$f" && { u=$(basename "$f" .json); echo "/srv/files/volume-$u"; return 0; }; done; echo "no file volume $1" >&2; return 1; }
report() { lvs -a --reportformat json --units b --nosuffix -o lv_name,vg_name,lv_uuid,lv_size,lv_attr,origin,pool_lv,data_percent,metadata_percent,thin_id,lv_tags > "$OUT/$1"; }
"#;

/// The site with each volume on the back end given.
fn site(v1: &str, v2: &str, v3: &str) -> String {
    let backend = |name: &str, spec: &str| {
        format!("---\n{H}kind: Backend\nmetadata:\n  name: {name}\nspec:\n  host: lab\n{spec}")
    };
    let volume = |name: &str, on: &str| {
        format!(
            "---\n{H}kind: Volume\nmetadata:\n  name: {name}\nspec:\n  size: 64Mi\n  backend: {on}\n"
        )
    };
    [
        backend("thick-a", "  lvm:\n    volumeGroup: vg-a\n"),
        backend(
            "thin-b",
            "  lvm:\n    volumeGroup: vg-b\n    thinPool: pool-b\n    thinPoolSize: 1Gi\n",
        ),
        backend("files", "  file:\n    path: /srv/files\n"),
        volume("v1", v1),
        volume("v2", v2),
        volume("v3", v3),
    ]
    .concat()
}

fn sh(body: &str) -> String {
    format!(". ./lib-mig.sh\n{body}")
}

fn lvs(out: &Outcome, file: &str) -> Vec<Lv> {
    report::parse_lvs(out.file(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn named<'a>(lvs: &'a [Lv], name: &str) -> Option<&'a Lv> {
    lvs.iter()
        .find(|l| l.tag_value("cinderblock.name") == Some(name))
}

fn rc(out: &Outcome, step: &str) -> i32 {
    out.step(step).rc.unwrap_or(-1)
}

/// `name=sha` lines of a step's output.
fn shas(out: &Outcome, step: &str) -> Vec<(String, String)> {
    out.stdout(step)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect()
}

#[test]
#[ignore = "needs the VM lab"]
#[allow(clippy::too_many_lines)] // one VM boot: the steps, then what they showed
fn thick_to_thin_thin_to_thick_over_garbage_file_to_lvm_and_back() {
    let out = Scenario::new("migrate")
        .file("lib-mig.sh", GUEST_LIB)
        .file("s1/site.yaml", site("thick-a", "thin-b", "files"))
        .file("s2/site.yaml", site("thin-b", "thin-b", "files"))
        .file("s3a/site.yaml", site("thin-b", "thick-a", "files"))
        .file("s3/site.yaml", site("thin-b", "thick-a", "thick-a"))
        .file("s4/site.yaml", site("files", "thick-a", "thick-a"))
        .step(
            "setup",
            "mkdir -p /srv/files
             pvcreate -y --setphysicalvolumesize 512M /dev/vda >/dev/null
             vgcreate vg-a /dev/vda >/dev/null
             pvcreate -y /dev/vdb >/dev/null
             vgcreate vg-b /dev/vdb >/dev/null",
        )
        .step("create", &sh("cb apply -f s1 --auto-approve"))
        .step(
            "write",
            &sh(
                "dd if=/dev/urandom of=$(lv_path v1) bs=1M count=8 oflag=direct 2>/dev/null
                 dd if=/dev/urandom of=$(lv_path v1) bs=1M count=8 seek=40 oflag=direct 2>/dev/null
                 dd if=/dev/urandom of=$(lv_path v2) bs=1M count=4 seek=10 oflag=direct 2>/dev/null
                 dd if=/dev/urandom of=$(lv_path v2) bs=1M count=4 seek=50 oflag=direct 2>/dev/null
                 dd if=/dev/urandom of=$(file_path v3) bs=1M count=5 seek=20 conv=notrunc 2>/dev/null
                 echo v1=$(sha < $(lv_path v1))
                 echo v2=$(sha < $(lv_path v2))
                 echo v3=$(sha < $(file_path v3))
                 report before.json",
            ),
        )
        .step_any("plan_thick_to_thin", &sh("cb plan -f s2 --detailed-exitcode"))
        .step("thick_to_thin", &sh("cb apply -f s2 --auto-approve"))
        .step(
            "garbage",
            // Every free extent of vg-a (including v1's old ones) full of 0xff.
            "lvcreate -y -Wn -Zn -l 100%FREE -n garbage vg-a >/dev/null
             tr '\\000' '\\377' < /dev/zero | dd of=/dev/vg-a/garbage bs=1M oflag=direct 2>/dev/null || true
             dd if=/dev/vg-a/garbage bs=1M count=1 skip=100 2>/dev/null | od -An -tx1 | head -1
             lvremove -y vg-a/garbage >/dev/null",
        )
        .step_any(
            "plan_to_thick",
            &sh("cb plan -f s3a --detailed-exitcode"),
        )
        .step("to_thick", &sh("cb apply -f s3a --auto-approve"))
        // file -> thick, killed after the copy was verified and the file
        // marked deleting, before the LV is promoted: the next apply
        // finishes the switch on LVM without copying again.
        .step_any(
            "crash_v3",
            &sh("CINDERBLOCK_CRASH_AT=migrate-verified cb apply -f s3 --auto-approve"),
        )
        .step_any("plan_v3", &sh("cb plan -f s3; report crashed.json"))
        .step("finish_v3", &sh("cb apply -f s3 --auto-approve"))
        .step(
            "after_thick",
            &sh(
                "echo v1=$(sha < $(lv_path v1))
                 echo v2=$(sha < $(lv_path v2))
                 echo v3=$(sha < $(lv_path v3))
                 echo unmapped=$(dd if=$(lv_path v2) bs=1M count=36 skip=14 2>/dev/null | tr -d '\\000' | wc -c)
                 ls /srv/files | grep -c volume- || true
                 report after.json",
            ),
        )
        .step("to_file", &sh("cb apply -f s4 --auto-approve"))
        .step(
            "after_file",
            &sh(
                "echo v1=$(sha < $(file_path v1))
                 echo blocks=$(stat -c %b $(file_path v1))
                 report final.json",
            ),
        )
        .step_any("replan", &sh("cb plan -f s4 --detailed-exitcode"))
        .run();

    let before = shas(&out, "write");
    assert_eq!(before.len(), 3, "{}", out.stdout("write"));
    let lvs_before = lvs(&out, "before.json");
    let v1_uuid = named(&lvs_before, "v1")
        .and_then(|l| l.tag_value("cinderblock.uuid"))
        .unwrap()
        .to_owned();
    let v2_uuid = named(&lvs_before, "v2")
        .and_then(|l| l.tag_value("cinderblock.uuid"))
        .unwrap()
        .to_owned();

    // thick → thin: planned as a move of the whole thick volume
    assert_eq!(rc(&out, "plan_thick_to_thin"), 2, "{}", out.report("plan"));
    let p = out.stdout("plan_thick_to_thin");
    assert!(
        p.contains("> backend    = \"thick-a\" -> \"thin-b\""),
        "{p}"
    );
    assert!(p.contains("1 to migrate."), "{p}");

    // a thick source is read whole, but only its data blocks are written
    assert!(
        out.stdout("thick_to_thin")
            .contains("volume.v1: read 67108864 bytes, wrote 16777216, zeroed 0 "),
        "{}",
        out.stdout("thick_to_thin")
    );

    // the garbage really was there
    assert!(
        out.stdout("garbage").contains("ff ff ff ff"),
        "{}",
        out.stdout("garbage")
    );

    // thin → thick and file → thick, over the garbage
    assert_eq!(rc(&out, "plan_to_thick"), 2, "{}", out.report("plan"));
    assert!(out.stdout("plan_to_thick").contains("1 to migrate."));
    // a thin source is read only where mapped (8 of 64 MiB); the thick
    // target's other 56 MiB are zeroed, not skipped
    assert!(
        out.stdout("to_thick")
            .contains("volume.v2: read 8388608 bytes, wrote 8388608, zeroed 58720256 "),
        "{}",
        out.stdout("to_thick")
    );
    // the kill after verification, and the switch finished on the next run
    assert_eq!(rc(&out, "crash_v3"), 137, "{}", out.report("crash"));
    assert!(
        out.stdout("plan_v3").contains("will be migrated (resumed)"),
        "{}",
        out.stdout("plan_v3")
    );
    let crashed = lvs(&out, "crashed.json");
    let v3_target = named(&crashed, "v3").expect("v3's target LV");
    assert_eq!(v3_target.tag_value("cinderblock.state"), Some("migrating"));
    assert!(v3_target.tag_value("cinderblock.migration").is_some());
    assert_eq!(v3_target.tag_value("cinderblock.from"), Some("files"));
    assert!(
        !out.stdout("finish_v3").contains("volume.v3: read "),
        "nothing copied again: {}",
        out.stdout("finish_v3")
    );
    let after = shas(&out, "after_thick");
    for (name, sha) in &before {
        assert!(
            after.contains(&(name.clone(), sha.clone())),
            "{name}: data changed in the move: {after:?} vs {before:?}"
        );
    }
    assert!(
        after.contains(&("unmapped".into(), "0".into())),
        "the thick target keeps garbage where the thin source was unmapped: {after:?}"
    );
    let lvs_after = lvs(&out, "after.json");
    let v1 = named(&lvs_after, "v1").unwrap();
    assert_eq!(v1.vg, "vg-b", "v1 moved to the thin pool");
    assert_eq!(v1.tag_value("cinderblock.uuid"), Some(v1_uuid.as_str()));
    assert_eq!(v1.tag_value("cinderblock.backend"), Some("thin-b"));
    assert_eq!(v1.tag_value("cinderblock.state"), None);
    assert_eq!(v1.tag_value("cinderblock.migration"), None);
    assert!(
        v1.data_percent.is_some_and(|p| p < 30.0),
        "the thin target is sparse (16 of 64 MiB written): {:?}",
        v1.data_percent
    );
    let v2 = named(&lvs_after, "v2").unwrap();
    assert_eq!(v2.vg, "vg-a", "v2 moved to the thick VG");
    assert_eq!(v2.tag_value("cinderblock.uuid"), Some(v2_uuid.as_str()));
    assert_eq!(v2.tag_value("cinderblock.backend"), Some("thick-a"));
    assert_eq!(v2.tag_value("cinderblock.state"), None);
    assert_eq!(
        lvs_after
            .iter()
            .filter(|l| l.tag_value("cinderblock.name").is_some())
            .count(),
        3,
        "each volume once, sources gone: {lvs_after:#?}"
    );
    assert!(named(&lvs_after, "v3").is_some_and(|l| l.vg == "vg-a"));
    assert!(
        out.stdout("after_thick").lines().any(|l| l == "0"),
        "no volume file left: {}",
        out.stdout("after_thick")
    );

    // LVM (thin) → file, sparse, reading the 16 MiB mapped
    assert!(
        out.stdout("to_file")
            .contains("volume.v1: read 16777216 bytes"),
        "{}",
        out.stdout("to_file")
    );
    let fin = shas(&out, "after_file");
    assert!(fin.contains(&("v1".into(), before[0].1.clone())), "{fin:?}");
    let blocks: u64 = fin
        .iter()
        .find(|(k, _)| k == "blocks")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap();
    assert!(
        blocks * 512 <= 20 << 20,
        "the file is sparse: {blocks} blocks"
    );
    assert!(named(&lvs(&out, "final.json"), "v1").is_none());
    assert_eq!(rc(&out, "replan"), 0, "{}", out.stdout("replan"));
}

/// Three back ends on one volume group: thick, and two thin pools.
fn one_vg_site(v1: &str, v2: &str) -> String {
    let backend = |name: &str, spec: &str| {
        format!("---\n{H}kind: Backend\nmetadata:\n  name: {name}\nspec:\n  host: lab\n{spec}")
    };
    let volume = |name: &str, on: &str| {
        format!(
            "---\n{H}kind: Volume\nmetadata:\n  name: {name}\nspec:\n  size: 64Mi\n  backend: {on}\n"
        )
    };
    [
        backend("thick", "  lvm:\n    volumeGroup: vg\n"),
        backend(
            "thin",
            "  lvm:\n    volumeGroup: vg\n    thinPool: pool0\n    thinPoolSize: 256Mi\n",
        ),
        backend(
            "thin2",
            "  lvm:\n    volumeGroup: vg\n    thinPool: pool1\n    thinPoolSize: 256Mi\n",
        ),
        volume("v1", v1),
        volume("v2", v2),
    ]
    .concat()
}

#[test]
#[ignore = "needs the VM lab"]
#[allow(clippy::too_many_lines)] // one VM boot: the steps, then what they showed
fn inside_one_volume_group_thick_to_pool_pool_to_pool_and_back() {
    let out = Scenario::new("migrate-one-vg")
        .file("lib-mig.sh", GUEST_LIB)
        .file("s1/site.yaml", one_vg_site("thick", "thin"))
        .file("s2/site.yaml", one_vg_site("thin", "thin2"))
        .file("s3/site.yaml", one_vg_site("thick", "thin2"))
        .step(
            "setup",
            "pvcreate -y /dev/vda >/dev/null
             vgcreate vg /dev/vda >/dev/null",
        )
        .step("create", &sh("cb apply -f s1 --auto-approve"))
        .step(
            "write",
            &sh(
                "dd if=/dev/urandom of=$(lv_path v1) bs=1M count=8 oflag=direct 2>/dev/null
                 dd if=/dev/urandom of=$(lv_path v1) bs=1M count=8 seek=40 oflag=direct 2>/dev/null
                 dd if=/dev/urandom of=$(lv_path v2) bs=1M count=4 seek=10 oflag=direct 2>/dev/null
                 echo v1=$(sha < $(lv_path v1))
                 echo v2=$(sha < $(lv_path v2))
                 report before.json",
            ),
        )
        .step_any("plan_in_vg", &sh("cb plan -f s2 --detailed-exitcode"))
        .step("in_vg", &sh("cb apply -f s2 --auto-approve"))
        .step(
            "after_in_vg",
            &sh("echo v1=$(sha < $(lv_path v1))
                 echo v2=$(sha < $(lv_path v2))
                 report moved.json"),
        )
        .step("back", &sh("cb apply -f s3 --auto-approve"))
        .step(
            "after_back",
            &sh("echo v1=$(sha < $(lv_path v1))
                 report back.json"),
        )
        .step_any("replan", &sh("cb plan -f s3 --detailed-exitcode"))
        .run();

    let before = shas(&out, "write");
    assert_eq!(before.len(), 2, "{}", out.stdout("write"));
    let uuid_of = |file: &str, name: &str| {
        named(&lvs(&out, file), name)
            .and_then(|l| l.tag_value("cinderblock.uuid"))
            .unwrap_or_else(|| panic!("{name} in {file}"))
            .to_owned()
    };
    let (v1_uuid, v2_uuid) = (uuid_of("before.json", "v1"), uuid_of("before.json", "v2"));

    assert_eq!(rc(&out, "plan_in_vg"), 2, "{}", out.report("plan"));
    let p = out.stdout("plan_in_vg");
    assert!(p.contains("> backend    = \"thick\" -> \"thin\""), "{p}");
    assert!(p.contains("> backend    = \"thin\" -> \"thin2\""), "{p}");
    assert_eq!(
        p.matches("within     = volume group vg (the copy stays inside it)")
            .count(),
        2,
        "{p}"
    );
    assert!(p.contains("2 to migrate."), "{p}");
    assert!(!p.contains("not supported"), "{p}");
    // thick read whole, only data written; thin read where mapped
    let moved_text = out.stdout("in_vg");
    assert!(
        moved_text.contains("volume.v1: read 67108864 bytes, wrote 16777216, zeroed 0 "),
        "{moved_text}"
    );
    assert!(
        moved_text.contains("volume.v2: read 4194304 bytes, wrote 4194304, zeroed 0 "),
        "{moved_text}"
    );

    let after = shas(&out, "after_in_vg");
    assert_eq!(after, before, "data kept");
    let moved = lvs(&out, "moved.json");
    let v1 = named(&moved, "v1").unwrap();
    assert_eq!(v1.tag_value("cinderblock.uuid"), Some(v1_uuid.as_str()));
    assert_eq!(v1.tag_value("cinderblock.backend"), Some("thin"));
    assert_eq!(v1.pool.as_deref(), Some("pool0"));
    assert_eq!(v1.tag_value("cinderblock.state"), None);
    assert_eq!(v1.name, format!("volume-{v1_uuid}-m"), "the second name");
    assert!(
        v1.data_percent.is_some_and(|p| p < 30.0),
        "the thin target is sparse (16 of 64 MiB written): {:?}",
        v1.data_percent
    );
    let v2 = named(&moved, "v2").unwrap();
    assert_eq!(v2.tag_value("cinderblock.uuid"), Some(v2_uuid.as_str()));
    assert_eq!(v2.tag_value("cinderblock.backend"), Some("thin2"));
    assert_eq!(v2.pool.as_deref(), Some("pool1"));
    assert_eq!(v2.name, format!("volume-{v2_uuid}-m"));
    assert_eq!(
        moved
            .iter()
            .filter(|l| l.tag_value("cinderblock.name").is_some())
            .count(),
        2,
        "each volume once, sources gone: {moved:#?}"
    );

    // back to thick: the first name again, the data intact
    let back = shas(&out, "after_back");
    assert!(
        back.contains(&("v1".into(), before[0].1.clone())),
        "{back:?}"
    );
    let back_lvs = lvs(&out, "back.json");
    let v1 = named(&back_lvs, "v1").unwrap();
    assert_eq!(v1.name, format!("volume-{v1_uuid}"));
    assert_eq!(v1.tag_value("cinderblock.backend"), Some("thick"));
    assert_eq!(v1.pool, None);
    assert_eq!(rc(&out, "replan"), 0, "{}", out.stdout("replan"));
}

/// A thick back end and a thin pool of 96 MiB on one VG, with `v1` on
/// `v1_on` and a thin volume `filler` in the pool.
fn pool_site(v1_on: &str) -> String {
    format!(
        "---\n{H}kind: Backend\nmetadata:\n  name: thick\nspec:\n  host: lab\n  lvm:\n    volumeGroup: vg\n\
         ---\n{H}kind: Backend\nmetadata:\n  name: thin\nspec:\n  host: lab\n  lvm:\n    volumeGroup: vg\n    thinPool: pool0\n    thinPoolSize: 96Mi\n\
         ---\n{H}kind: Volume\nmetadata:\n  name: v1\nspec:\n  size: 64Mi\n  backend: {v1_on}\n\
         ---\n{H}kind: Volume\nmetadata:\n  name: filler\nspec:\n  size: 64Mi\n  backend: thin\n"
    )
}

#[test]
#[ignore = "needs the VM lab"]
fn a_copy_into_a_thin_pool_stops_before_filling_it_and_resumes_after_it_grows() {
    let pool = "lvs --noheadings -o data_percent vg/pool0 | tr -d ' '";
    let out = Scenario::new("migrate-pool-full")
        .file("lib-mig.sh", GUEST_LIB)
        .file("s1/site.yaml", pool_site("thick"))
        .file("s2/site.yaml", pool_site("thin"))
        .step(
            "setup",
            "pvcreate -y /dev/vda >/dev/null
             vgcreate vg /dev/vda >/dev/null",
        )
        .step("create", &sh("cb apply -f s1 --auto-approve >/dev/null"))
        // 64 MiB of data to move into a pool whose 96 MiB already hold 40
        .step(
            "write",
            &sh(&format!(
                "dd if=/dev/urandom of=$(lv_path v1) bs=1M count=64 oflag=direct 2>/dev/null
                 dd if=/dev/urandom of=$(lv_path filler) bs=1M count=40 oflag=direct 2>/dev/null
                 echo v1=$(sha < $(lv_path v1))
                 echo pool=$({pool})"
            )),
        )
        .step_any("move", &sh("cb apply -f s2 --auto-approve"))
        .step(
            "stopped",
            &sh(&format!(
                "echo v1=$(sha < $(lvs --noheadings -o lv_path @cinderblock.backend=thick | tr -d ' '))
                 echo pool=$({pool})
                 report stopped.json
                 # the pool's other volumes still write
                 dd if=/dev/urandom of=$(lv_path filler) bs=1M count=2 seek=48 oflag=direct 2>/dev/null
                 echo filler=written"
            )),
        )
        .step("grow", "lvextend -L +128M vg/pool0 >/dev/null")
        .step("resume", &sh("cb apply -f s2 --auto-approve"))
        .step(
            "after",
            &sh("echo v1=$(sha < $(lv_path v1))
                 report after.json"),
        )
        .step_any("replan", &sh("cb plan -f s2 --detailed-exitcode"))
        .run();

    let field = |step: &str, key: &str| -> String {
        shas(&out, step)
            .into_iter()
            .find(|(k, _)| k == key)
            .map_or_else(
                || panic!("{key} in {step}: {}", out.stdout(step)),
                |(_, v)| v,
            )
    };
    let before = field("write", "v1");
    assert_eq!(rc(&out, "move"), 1, "{}", out.report("the copy must stop"));
    let err = &out.step("move").stderr;
    assert!(
        err.contains("stopped before filling thin pool vg/pool0: ")
            && err.contains("for its other users; ")
            && err.contains(
                "were copied and are kept (the next apply resumes there); grow it (lvextend -L +SIZE vg/pool0"
            ),
        "{err}"
    );
    // The pool kept its reserve; the source is whole and still the volume.
    let used: f64 = field("stopped", "pool").parse().unwrap();
    assert!(used < 97.0, "pool {used}% used");
    assert_eq!(field("stopped", "v1"), before);
    assert_eq!(field("stopped", "filler"), "written");
    let stopped = lvs(&out, "stopped.json");
    let v1s: Vec<&Lv> = stopped
        .iter()
        .filter(|l| l.tag_value("cinderblock.name") == Some("v1"))
        .collect();
    assert_eq!(
        v1s.len(),
        2,
        "the source and the unfinished target: {v1s:#?}"
    );

    // Grown by hand: the next apply resumes and finishes.
    let resumed = out.stdout("resume");
    assert!(resumed.contains("volume.v1: "), "{resumed}");
    assert_eq!(field("after", "v1"), before, "data kept");
    let after = lvs(&out, "after.json");
    let v1s: Vec<&Lv> = after
        .iter()
        .filter(|l| l.tag_value("cinderblock.name") == Some("v1"))
        .collect();
    assert_eq!(v1s.len(), 1, "exactly once: {v1s:#?}");
    assert_eq!(v1s[0].tag_value("cinderblock.backend"), Some("thin"));
    assert_eq!(v1s[0].pool.as_deref(), Some("pool0"));
    assert_eq!(rc(&out, "replan"), 0, "{}", out.stdout("replan"));
}

/// A thin pool on each of two VGs and a thick back end beside the first
/// pool; volume `db` on `on` (moving with its snapshots), and the snapshots
/// named.
fn chain_site(on: &str, snaps: &[&str]) -> String {
    let backend = |name: &str, spec: &str| {
        format!("---\n{H}kind: Backend\nmetadata:\n  name: {name}\nspec:\n  host: lab\n{spec}")
    };
    let mut docs = vec![
        backend(
            "thin-a",
            "  lvm:\n    volumeGroup: vg-a\n    thinPool: pool-a\n    thinPoolSize: 1Gi\n",
        ),
        backend(
            "thin-b",
            "  lvm:\n    volumeGroup: vg-b\n    thinPool: pool-b\n    thinPoolSize: 1Gi\n",
        ),
        backend("thick-a", "  lvm:\n    volumeGroup: vg-a\n"),
        format!(
            "---\n{H}kind: Volume\nmetadata:\n  name: db\nspec:\n  size: 64Mi\n  backend: {on}\n  migrateSnapshots: true\n"
        ),
    ];
    for s in snaps {
        docs.push(format!(
            "---\n{H}kind: Snapshot\nmetadata:\n  name: {s}\nspec:\n  volume: db\n"
        ));
    }
    docs.concat()
}

const CHAIN_LIB: &str = r#"
pool_pct() { lvs --noheadings -o data_percent "$1" | tr -d ' '; }
obj_sha() { p=$(lv_path "$1"); lvchange -ay -K "$p" >/dev/null; sha < "$p"; }
shas() { for n in db s1 s2; do echo "$n=$(obj_sha $n)"; done; }
"#;

#[test]
#[ignore = "needs the VM lab"]
#[allow(clippy::too_many_lines)] // one VM boot: the steps, then what they showed
fn a_volume_with_two_snapshots_moves_as_a_chain_between_volume_groups() {
    let out = Scenario::new("migrate-chain")
        .file("lib-mig.sh", format!("{GUEST_LIB}{CHAIN_LIB}"))
        .file("s0/site.yaml", chain_site("thin-a", &[]))
        .file("s1/site.yaml", chain_site("thin-a", &["s1"]))
        .file("s2/site.yaml", chain_site("thin-a", &["s1", "s2"]))
        .file("m1/site.yaml", chain_site("thin-b", &["s1", "s2"]))
        .file("m2/site.yaml", chain_site("thick-a", &["s1", "s2"]))
        .step(
            "setup",
            "pvcreate -y /dev/vda >/dev/null
             vgcreate vg-a /dev/vda >/dev/null
             pvcreate -y /dev/vdb >/dev/null
             vgcreate vg-b /dev/vdb >/dev/null",
        )
        .step(
            "build",
            &sh("cb apply -f s0 --auto-approve >/dev/null
                 dd if=/dev/urandom of=$(lv_path db) bs=1M count=8 oflag=direct 2>/dev/null
                 cb apply -f s1 --auto-approve >/dev/null
                 dd if=/dev/urandom of=$(lv_path db) bs=1M count=1 seek=2 oflag=direct 2>/dev/null
                 dd if=/dev/urandom of=$(lv_path db) bs=1M count=4 seek=20 oflag=direct 2>/dev/null
                 cb apply -f s2 --auto-approve >/dev/null
                 dd if=/dev/urandom of=$(lv_path db) bs=64k count=1 seek=80 oflag=direct 2>/dev/null
                 dd if=/dev/urandom of=$(lv_path db) bs=1M count=1 seek=50 oflag=direct 2>/dev/null"),
        )
        .step(
            "before",
            &sh("shas
                 echo pool=$(pool_pct vg-a/pool-a)
                 report before.json"),
        )
        .step_any("plan", &sh("cb plan -f m1 --detailed-exitcode"))
        .step_any(
            "crash",
            &sh("CINDERBLOCK_CRASH_AT=migrate-snapshot:2 cb apply -f m1 --auto-approve"),
        )
        .step_any("plan_resume", &sh("report crashed.json; cb plan -f m1"))
        .step("move", &sh("cb apply -f m1 --auto-approve"))
        .step(
            "after",
            &sh("shas
                 echo pool=$(pool_pct vg-b/pool-b)
                 report moved.json"),
        )
        .step("back", &sh("cb apply -f m2 --auto-approve"))
        .step("after_back", &sh("shas; report back.json"))
        .step_any("replan", &sh("cb plan -f m2 --detailed-exitcode"))
        .run();

    let before = shas(&out, "before");
    let points = |v: &[(String, String)]| -> Vec<(String, String)> {
        v.iter().filter(|(k, _)| k != "pool").cloned().collect()
    };
    let pct = |v: &[(String, String)]| -> f64 {
        v.iter()
            .find(|(k, _)| k == "pool")
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("no pool use in {v:?}"))
    };
    assert_eq!(points(&before).len(), 3, "{}", out.stdout("before"));
    let distinct: std::collections::BTreeSet<String> =
        points(&before).into_iter().map(|(_, s)| s).collect();
    assert_eq!(distinct.len(), 3, "three points in time: {before:?}");
    let lvs_before = lvs(&out, "before.json");
    let uuid_of = |lvs: &[Lv], n: &str| {
        named(lvs, n)
            .and_then(|l| l.tag_value("cinderblock.uuid"))
            .unwrap_or_else(|| panic!("{n}: {lvs:#?}"))
            .to_owned()
    };
    let ids: Vec<String> = ["db", "s1", "s2"]
        .iter()
        .map(|n| uuid_of(&lvs_before, n))
        .collect();

    // The plan: one move, each snapshot named with its data.
    assert_eq!(rc(&out, "plan"), 2, "{}", out.report("plan"));
    let p = out.stdout("plan");
    assert!(p.contains("> backend    = \"thin-a\" -> \"thin-b\""), "{p}");
    assert!(
        p.contains("chain      = with its 2 snapshot(s), oldest first"),
        "{p}"
    );
    assert!(p.contains("> snapshot   = \"s1\": 64Mi, "), "{p}");
    assert!(p.contains("> snapshot   = \"s2\": 64Mi, "), "{p}");
    assert!(p.contains("1 to migrate."), "{p}");

    // Killed after the second snapshot was taken on the target: both chains
    // there, the target's marked as this migration's; resumed once.
    assert_eq!(rc(&out, "crash"), 137, "{}", out.report("crash"));
    let crashed = lvs(&out, "crashed.json");
    let in_b: Vec<&Lv> = crashed
        .iter()
        .filter(|l| l.vg == "vg-b" && l.tag_value("cinderblock.uuid").is_some())
        .collect();
    assert_eq!(in_b.len(), 3, "the target chain so far: {crashed:#?}");
    for l in &in_b {
        assert_eq!(
            l.tag_value("cinderblock.state"),
            Some("migrating"),
            "{l:#?}"
        );
        assert_eq!(l.tag_value("cinderblock.from"), Some("thin-a"), "{l:#?}");
    }
    assert!(
        out.stdout("plan_resume")
            .contains("will be migrated (resumed)"),
        "{}",
        out.stdout("plan_resume")
    );

    // Moved: every point in time kept, identity kept, sources gone, and
    // the target pool holds about what the source pool did.
    let after = shas(&out, "after");
    assert_eq!(points(&after), points(&before), "every point in time kept");
    let (src_pct, dst_pct) = (pct(&before), pct(&after));
    assert!(
        (dst_pct - src_pct).abs() <= src_pct * 0.10,
        "thin target pool use {dst_pct} % vs the source's {src_pct} %"
    );
    let moved = lvs(&out, "moved.json");
    let ours: Vec<&Lv> = moved
        .iter()
        .filter(|l| l.tag_value("cinderblock.uuid").is_some())
        .collect();
    assert_eq!(ours.len(), 3, "each object once: {moved:#?}");
    for (n, id) in ["db", "s1", "s2"].iter().zip(&ids) {
        let l = named(&moved, n).unwrap();
        assert_eq!(l.vg, "vg-b", "{n}");
        assert_eq!(l.tag_value("cinderblock.uuid"), Some(id.as_str()), "{n}");
        assert_eq!(l.tag_value("cinderblock.backend"), Some("thin-b"), "{n}");
        assert_eq!(l.tag_value("cinderblock.state"), None, "{n}: {l:#?}");
        if *n != "db" {
            assert_eq!(
                l.tag_value("cinderblock.parent"),
                Some(ids[0].as_str()),
                "{n}"
            );
            let origin = named(&moved, "db").map(|v| v.name.clone());
            assert_eq!(
                l.origin, origin,
                "{n} is a thin snapshot of the moved volume"
            );
        }
    }

    // Back to thick LVs in the first VG: copy-on-write snapshots of the
    // volume, the points in time kept again.
    let back = shas(&out, "after_back");
    assert_eq!(points(&back), points(&before), "every point in time kept");
    let back_lvs = lvs(&out, "back.json");
    for n in ["db", "s1", "s2"] {
        let l = named(&back_lvs, n).unwrap();
        assert_eq!(
            (l.vg.as_str(), l.pool.as_deref()),
            ("vg-a", None),
            "{n}: {l:#?}"
        );
        assert_eq!(l.tag_value("cinderblock.backend"), Some("thick-a"), "{n}");
    }
    assert_eq!(
        back_lvs
            .iter()
            .filter(|l| l.tag_value("cinderblock.uuid").is_some())
            .count(),
        3,
        "{back_lvs:#?}"
    );
    assert_eq!(rc(&out, "replan"), 0, "{}", out.stdout("replan"));
}
