//! Backups of `lvm` volumes on real LVM, in one VM boot: a thin LV backed up
//! full, a few MiB changed, then incremental, where the incremental must read
//! only the ranges `thin_delta` reports (asserted on the `readBytes` of
//! `backup run --json`); a thick LV round trip onto extents that held random
//! bytes; every restore compared by sha256 with the source at that time.

use crate::harness::Scenario;
use cinderblock::lvm::report;

const MIB: u64 = 1 << 20;

const GUEST_LIB: &str = r#"
cb() { cinderblock --state st --host lab "$@"; }
lv_path() { p=$(lvs --noheadings -o lv_path "@cinderblock.name=$1" | tr -d ' '); [ -n "$p" ] || { echo "no LV named $1" >&2; return 1; }; echo "$p"; }
field() { sed "s/.*\"$2\":\"\{0,1\}\([^,\"}]*\).*/\1/" "$1"; }
"#;

const SITE: &str = "apiVersion: cinderblock.dev/v1alpha1
kind: Backend
metadata: {name: thin}
spec:
  host: lab
  lvm: {volumeGroup: tv, thinPool: pool0, thinPoolSize: 1Gi}
---
apiVersion: cinderblock.dev/v1alpha1
kind: Backend
metadata: {name: thick}
spec:
  host: lab
  lvm: {volumeGroup: kv}
---
apiVersion: cinderblock.dev/v1alpha1
kind: BackupPolicy
metadata: {name: nightly}
spec:
  schedule: \"0 2 * * *\"
  target: {path: /tmp/repo}
---
apiVersion: cinderblock.dev/v1alpha1
kind: Volume
metadata: {name: tvol}
spec: {size: 256Mi, backend: thin, backupPolicy: nightly}
---
apiVersion: cinderblock.dev/v1alpha1
kind: Volume
metadata: {name: kvol}
spec: {size: 64Mi, backend: thick, backupPolicy: nightly}
";

const KPLAN: &str = "apiVersion: cinderblock.dev/v1alpha1
kind: Volume
metadata: {name: kplan}
spec:
  size: 64Mi
  backend: thick
  source:
    backup: {policy: nightly, volume: kvol}
";

fn sh(body: &str) -> String {
    format!(". ./lib.sh\n{body}")
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("not a JSON summary: {e}: {text}"))
}

#[test]
#[ignore = "needs the VM lab"]
#[allow(clippy::too_many_lines)] // one VM boot: the steps, then what they showed
fn thin_incremental_reads_only_changed_ranges_and_thin_and_thick_restore_identical() {
    let out = Scenario::new("lvm-backup")
        .file("lib.sh", GUEST_LIB)
        .file("m/site.yaml", SITE)
        .step(
            "setup",
            "pvcreate -y /dev/vda /dev/vdb >/dev/null
             vgcreate tv /dev/vda >/dev/null && vgcreate kv /dev/vdb >/dev/null
             dd if=/dev/urandom of=/tmp/a bs=1M count=24 2>/dev/null
             dd if=/dev/urandom of=/tmp/b bs=1M count=8 2>/dev/null",
        )
        .step("apply", &sh("cb apply -f m --auto-approve >/dev/null"))
        .step(
            "write",
            &sh("t=$(lv_path tvol); k=$(lv_path kvol)
                 dd if=/tmp/a of=$t bs=1M oflag=direct conv=fsync 2>/dev/null
                 dd if=/tmp/b of=$t bs=1M seek=128 oflag=direct conv=fsync 2>/dev/null
                 dd if=/tmp/a of=$k bs=1M count=16 oflag=direct conv=fsync 2>/dev/null
                 echo $(sha < $t) $(sha < $k)"),
        )
        // a crashed run left the pool's metadata snapshot held
        .step(
            "stale",
            "dmsetup message tv-pool0-tpool 0 reserve_metadata_snap
             dmsetup status tv-pool0-tpool | awk '{print $7}'",
        )
        .step(
            "full",
            &sh("cb backup run tvol --full --json -f m | tee /tmp/tfull.json"),
        )
        .step(
            "kfull",
            &sh("cb backup run kvol --full --json -f m | tee /tmp/kfull.json"),
        )
        .step(
            "change",
            // 4 MiB where nothing was mapped, 1 MiB over mapped data
            &sh("t=$(lv_path tvol)
                 dd if=/tmp/b of=$t bs=1M count=4 seek=64 oflag=direct conv=fsync 2>/dev/null
                 dd if=/tmp/b of=$t bs=1M count=1 seek=4 skip=5 oflag=direct conv=fsync 2>/dev/null
                 sha < $t"),
        )
        .step(
            "inc",
            &sh("cb backup run tvol --incremental --json -f m | tee /tmp/tinc.json"),
        )
        .step("held", "dmsetup status tv-pool0-tpool | awk '{print $7}'")
        .step(
            "text",
            &sh("cb backup run kvol --incremental -f m"),
        )
        .step(
            "lvs",
            "lvs -a --reportformat json --units b --nosuffix -o lv_name,vg_name,lv_uuid,lv_size,lv_attr,origin,pool_lv,data_percent,metadata_percent,thin_id,lv_tags > $OUT/lvs.json",
        )
        .step_any("replan", &sh("cb plan -f m --detailed-exitcode"))
        // the incremental's base snapshot removed by hand: the next
        // incremental falls back to every mapped range, and says so
        .step(
            "fallback",
            &sh("lvremove -y tv/_backup-$(field /tmp/tinc.json id) >/dev/null
                 cb backup run tvol --incremental --json -f m 2>$OUT/fallback.err"),
        )
        .step("listed", &sh("cb backup list tvol"))
        .step(
            "dirty",
            // the thick restore lands on extents full of random bytes
            "lvcreate -y -L 512M -n junk kv >/dev/null
             dd if=/dev/urandom of=/dev/kv/junk bs=1M count=512 oflag=direct 2>/dev/null
             lvremove -y kv/junk >/dev/null",
        )
        .step(
            "restore",
            &sh("cb backup restore $(field /tmp/tfull.json id) --to tfull -f m
                 cb backup restore $(field /tmp/tinc.json id) --to tinc -f m
                 cb backup restore $(field /tmp/kfull.json id) --to kres -f m
                 echo $(sha < $(lv_path tfull)) $(sha < $(lv_path tinc)) $(sha < $(lv_path kres))"),
        )
        // a thick volume declared from a backup: plan and apply restore it
        .file("extra/kplan.yaml", KPLAN)
        .step_any(
            "planned",
            &sh("cp extra/kplan.yaml m/ && cb apply -f m --auto-approve >/dev/null
                 sha < $(lv_path kplan)"),
        )
        .step(
            "after",
            "lvs -a --reportformat json --units b --nosuffix -o lv_name,vg_name,lv_uuid,lv_size,lv_attr,origin,pool_lv,data_percent,metadata_percent,thin_id,lv_tags > $OUT/after.json",
        )
        .timeout(std::time::Duration::from_secs(900))
        .run();
    // the last line of a step's output: sha256 sums
    let sums = |step: &str| -> Vec<String> {
        out.stdout(step)
            .lines()
            .last()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let written = sums("write");
    let changed = sums("change");
    let restored = sums("restore");
    assert_eq!(restored.len(), 3, "{}", out.report("restore"));
    assert_eq!(
        out.stdout("restore").matches("restored backup").count(),
        3,
        "{}",
        out.stdout("restore")
    );

    assert_ne!(out.stdout("stale"), "-", "a metadata snapshot is held");
    assert_eq!(out.stdout("held"), "-", "released after the backups");
    let full = json(out.stdout("full"));
    assert_eq!(full["kind"], "full", "{full}");
    assert_eq!(full["pointInTime"], "thin snapshot", "{full}");
    // 24 MiB + 8 MiB mapped of 256 MiB: only those are read
    let read = full["readBytes"].as_u64().unwrap_or(0);
    assert!(
        (32 * MIB..=33 * MIB).contains(&read),
        "full read {read} bytes, expected the 32 MiB mapped: {full}"
    );

    let inc = json(out.stdout("inc"));
    assert_eq!(inc["kind"], "incremental", "{inc}");
    assert_eq!(inc["parent"], full["id"], "{inc}");
    let read = inc["readBytes"].as_u64().unwrap_or(0);
    assert!(
        (5 * MIB..=5 * MIB + 512 * 1024).contains(&read),
        "incremental read {read} bytes, expected the 5 MiB changed: {inc}"
    );

    // how each run read its source, and why
    assert_eq!(full["read"]["method"], "allocatedScan", "{full}");
    assert_eq!(
        full["read"]["reason"], "a full backup: the thin LV's mapped ranges",
        "{full}"
    );
    assert_eq!(inc["read"]["method"], "changedRanges", "{inc}");
    assert!(inc["read"].get("fallback").is_none(), "{inc}");
    let fb = json(out.stdout("fallback"));
    assert_eq!(fb["kind"], "incremental", "{fb}");
    assert_eq!(fb["parent"], inc["id"], "{fb}");
    assert_eq!(fb["read"]["method"], "allocatedScan", "{fb}");
    assert_eq!(fb["read"]["fallback"], true, "{fb}");
    let read = fb["readBytes"].as_u64().unwrap_or(0);
    assert!(
        read >= 36 * MIB,
        "the fallback read every mapped range ({read} bytes): {fb}"
    );
    let warned = String::from_utf8_lossy(out.file("fallback.err"));
    assert!(
        warned.contains("warning: backup ")
            && warned.contains(
                "of tvol fell back to allocatedScan: the parent backup's thin snapshot is gone"
            ),
        "{warned}"
    );
    let listed = out.stdout("listed");
    assert!(
        listed.contains("allocatedScan (fallback)") && listed.contains("changedRanges"),
        "{listed}"
    );

    let kfull = json(out.stdout("kfull"));
    assert_eq!(kfull["pointInTime"], "COW snapshot", "{kfull}");
    assert_eq!(kfull["readBytes"].as_u64(), Some(64 * MIB), "{kfull}");
    assert_eq!(kfull["read"]["method"], "fullScan", "{kfull}");
    assert_eq!(
        kfull["chunks"].as_u64(),
        Some(256),
        "16 MiB of data in 64 KiB chunks, zeros skipped: {kfull}"
    );
    let text = out.stdout("text");
    assert!(
        text.contains("incremental of kvol") && text.contains("point in time by COW snapshot"),
        "{text}"
    );
    assert!(text.contains("read 64.00 MiB"), "{text}");

    // the thin base of the next incremental is the incremental's snapshot,
    // the full's is gone, no thick snapshot is left, and the planner does
    // not see any of them
    let lvs = report::parse_lvs(out.file("lvs.json")).unwrap_or_default();
    let backups: Vec<&str> = lvs
        .iter()
        .filter(|l| l.name.starts_with("_backup-"))
        .map(|l| l.name.as_str())
        .collect();
    let inc_id = inc["id"].as_str().unwrap_or("?");
    assert_eq!(backups, [format!("_backup-{inc_id}")], "{backups:?}");
    assert!(
        lvs.iter()
            .filter(|l| l.name.starts_with("_backup-"))
            .all(|l| l.vg == "tv" && l.tag_value("cinderblock.backup-of") == Some("thin"))
    );
    assert_eq!(out.step("replan").rc, Some(0), "{}", out.report("replan"));

    assert_eq!(restored[0], written[0], "thin full restore");
    assert_eq!(restored[1], changed[0], "thin incremental restore");
    assert_eq!(restored[2], written[1], "thick restore over dirty extents");
    assert_eq!(out.step("planned").rc, Some(0), "{}", out.report("planned"));
    // the newest backup of kvol is the incremental, of the same data
    assert_eq!(
        out.stdout("planned"),
        written[1],
        "thick volume restored by apply"
    );
    let after = report::parse_lvs(out.file("after.json")).unwrap_or_default();
    for name in ["tfull", "tinc", "kres", "kplan"] {
        let lv = after
            .iter()
            .find(|l| l.tag_value("cinderblock.name") == Some(name))
            .unwrap_or_else(|| panic!("no LV {name}"));
        assert_eq!(lv.tag_value("cinderblock.state"), None, "{name} is ready");
    }
}
