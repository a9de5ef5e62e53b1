//! LVM on the real kernel: thick and thin LVs, oversubscription, thick and thin
//! snapshots, JSON reports, and `thin_delta`/`thin_dump` between thin snapshots.
//!
//! The reports are parsed with the library's own parsers, so a tool or kernel upgrade
//! that changes the output fails here; with `LAB_WRITE_FIXTURES=1` the captured output
//! also refreshes `tests/fixtures/` (see its README).

use crate::harness::{Scenario, capture_fixture};
use cinderblock::lvm::report::{
    self, FULLREPORT_LV_FIELDS, FULLREPORT_PVSEG_FIELDS, FULLREPORT_SEG_FIELDS, LV_FIELDS, LvKind,
    PV_FIELDS, VG_FIELDS,
};
use cinderblock::lvm::thin::{self, DeltaKind};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn fullreport_cmd() -> String {
    format!(
        "lvm fullreport --reportformat json --units b --nosuffix \
         --configreport vg -o {} --configreport pv -o {} --configreport lv -o {} \
         --configreport seg -o {} --configreport pvseg -o {}",
        VG_FIELDS.join(","),
        PV_FIELDS.join(","),
        FULLREPORT_LV_FIELDS.join(","),
        FULLREPORT_SEG_FIELDS.join(","),
        FULLREPORT_PVSEG_FIELDS.join(","),
    )
}

/// Tags the agent puts on what it owns (DESIGN.md: "mark them: LV tags").
const THICK_TAGS: &str = "--addtag cinderblock.uuid=5d0c2f4e-8a53-4c1b-9e1f-3b2a7c9d0e11 \
    --addtag cinderblock.name=vol-thick --addtag cinderblock.kind=volume";
const THIN_TAGS: &str = "--addtag cinderblock.uuid=9b8e7d6c-5a4b-4c3d-8e2f-1a0b9c8d7e6f \
    --addtag cinderblock.name=vol-thin --addtag cinderblock.kind=volume";

#[test]
#[ignore = "needs the VM lab"]
#[allow(clippy::too_many_lines)] // one scenario: its steps, then what they must have shown
fn thick_thin_snapshots_and_reports() {
    let out = Scenario::new("lvm")
        .step(
            "pattern",
            "dd if=/dev/urandom of=/tmp/pat16 bs=1M count=16 2>/dev/null; sha < /tmp/pat16",
        )
        .step("pvcreate", "pvcreate -y /dev/vda /dev/vdb")
        .step("vgcreate", "vgcreate labvg /dev/vda /dev/vdb")
        .step(
            "thick",
            &format!("lvcreate -y -n vol-thick -L 256M {THICK_TAGS} labvg /dev/vda"),
        )
        .step(
            "thick_io",
            "dd if=/tmp/pat16 of=/dev/labvg/vol-thick bs=1M oflag=direct conv=fsync 2>/dev/null
             sha_head /dev/labvg/vol-thick 16",
        )
        .step(
            "pool",
            "lvcreate -y --type thin-pool -L 512M --poolmetadatasize 8M -n pool0 labvg /dev/vda",
        )
        .step(
            "thin",
            &format!("lvcreate -y -V 1G --thinpool labvg/pool0 -n vol-thin {THIN_TAGS}"),
        )
        // 8 GiB virtual in a 512 MiB pool: LVM warns on stderr and still exits 0
        .step_any("oversub", "lvcreate -y -V 8G --thinpool labvg/pool0 -n vol-big")
        .step(
            "thin_io",
            "dd if=/tmp/pat16 of=/dev/labvg/vol-thin bs=1M oflag=direct conv=fsync 2>/dev/null
             sha_head /dev/labvg/vol-thin 16",
        )
        .step(
            "big_far",
            "dd if=/tmp/pat16 of=/dev/labvg/vol-big bs=1M seek=8000 oflag=direct conv=fsync 2>/dev/null
             dd if=/dev/labvg/vol-big bs=1M skip=8000 count=16 iflag=direct 2>/dev/null | sha",
        )
        .step("foreign", "lvcreate -y -n legacy -L 64M labvg /dev/vdb")
        .step("snap_thick", "lvcreate -y -s -L 64M -n vol-thick-snap labvg/vol-thick")
        .step(
            "thick_overwrite",
            "dd if=/dev/zero of=/dev/labvg/vol-thick bs=1M count=4 oflag=direct conv=fsync 2>/dev/null
             echo \"$(sha_head /dev/labvg/vol-thick-snap 16) $(sha_head /dev/labvg/vol-thick 16)\"",
        )
        // thin snapshots are created with the activation-skip flag; -K activates anyway
        .step(
            "snap_thin",
            "lvcreate -y -s -n vol-thin-snap labvg/vol-thin
             lvchange -ay -K labvg/vol-thin-snap",
        )
        .step(
            "thin_overwrite",
            "dd if=/dev/urandom of=/dev/labvg/vol-thin bs=1M count=1 oflag=direct conv=fsync 2>/dev/null
             echo \"$(sha_head /dev/labvg/vol-thin-snap 16) $(sha_head /dev/labvg/vol-thin 16)\"",
        )
        // a second thin snapshot left inactive: its data_percent is empty
        .step("snap_thin_inactive", "lvcreate -y -s -n vol-thin-snap2 labvg/vol-thin")
        .step("fullreport", &format!("{} > $OUT/fullreport.json", fullreport_cmd()))
        .step(
            "lvs",
            &format!(
                "lvs -a --reportformat json --units b --nosuffix -o {} > $OUT/lvs.json",
                LV_FIELDS.join(",")
            ),
        )
        .step(
            "vgs",
            &format!(
                "vgs --reportformat json --units b --nosuffix -o {} > $OUT/vgs.json",
                VG_FIELDS.join(",")
            ),
        )
        .step(
            "pvs",
            &format!(
                "pvs --reportformat json --units b --nosuffix -o {} > $OUT/pvs.json",
                PV_FIELDS.join(",")
            ),
        )
        .step("versions", "lvm version; thin_check -V; uname -r")
        .run();

    let pattern = out.stdout("pattern");
    assert_eq!(pattern.len(), 64, "sha256 hex: {pattern}");
    assert_eq!(out.stdout("thick_io"), pattern, "thick LV read back");
    assert_eq!(out.stdout("thin_io"), pattern, "thin LV read back");
    assert_eq!(
        out.stdout("big_far"),
        pattern,
        "oversubscribed LV near its 8 GiB end"
    );

    let oversub = out.step("oversub");
    assert_eq!(
        oversub.rc,
        Some(0),
        "oversubscription is allowed: {}",
        oversub.stderr
    );
    assert!(
        oversub
            .stderr
            .contains("WARNING: Sum of all thin volume sizes"),
        "the warning goes to stderr: {}",
        oversub.stderr
    );

    // snapshots hold the old content after their origin was overwritten
    for (step, what) in [("thick_overwrite", "thick"), ("thin_overwrite", "thin")] {
        let shas: Vec<&str> = out.stdout(step).split(' ').collect();
        assert_eq!(shas[0], pattern, "{what} snapshot keeps the old data");
        assert_ne!(shas[1], pattern, "{what} origin was overwritten");
    }

    // fullreport: one consistent view, parsed by the library
    let full = report::parse_fullreport(out.file("fullreport.json")).expect("fullreport parses");
    assert_eq!(full.vgs.len(), 1);
    let vg = &full.vgs[0];
    assert_eq!(
        (vg.name.as_str(), vg.pv_count, vg.extent_size),
        ("labvg", 2, 4 * MIB)
    );
    assert_eq!(vg.free, vg.free_count * vg.extent_size);
    assert_eq!(full.pvs.len(), 2);
    assert_eq!(vg.size, full.pvs.iter().map(|p| p.size).sum::<u64>());
    let lv = |name: &str| {
        full.lvs
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no LV {name}: {:#?}", full.lvs))
    };
    let thick = lv("vol-thick");
    assert_eq!(
        (thick.size, thick.attr.kind),
        (256 * MIB, LvKind::ThickOrigin)
    );
    assert_eq!(thick.tag_value("cinderblock.kind"), Some("volume"));
    assert_eq!(thick.tag_value("cinderblock.name"), Some("vol-thick"));
    let thick_snap = lv("vol-thick-snap");
    assert_eq!(thick_snap.attr.kind, LvKind::ThickSnapshot);
    assert_eq!(thick_snap.origin.as_deref(), Some("vol-thick"));
    assert!(
        thick_snap.data_percent.is_some_and(|p| p > 0.0),
        "COW in use"
    );
    let pool = lv("pool0");
    assert_eq!((pool.size, pool.attr.kind), (512 * MIB, LvKind::ThinPool));
    assert!(pool.metadata_percent.is_some());
    let thin = lv("vol-thin");
    assert_eq!((thin.size, thin.attr.kind), (GIB, LvKind::Thin));
    assert_eq!(thin.pool.as_deref(), Some("pool0"));
    let big = lv("vol-big");
    assert_eq!(big.size, 8 * GIB);
    assert!(big.tags.is_empty());
    let virtual_total: u64 = full
        .lvs
        .iter()
        .filter(|l| l.pool.is_some())
        .map(|l| l.size)
        .sum();
    assert!(virtual_total > pool.size, "the pool is oversubscribed");
    let snap = lv("vol-thin-snap");
    assert_eq!(snap.origin.as_deref(), Some("vol-thin"));
    assert!(snap.attr.active && snap.attr.skip_activation);
    let snap2 = lv("vol-thin-snap2");
    assert!(!snap2.attr.active && snap2.data_percent.is_none());
    assert!(lv("legacy").tags.is_empty());
    let mut ids: Vec<u32> = full.lvs.iter().filter_map(|l| l.thin_id).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        [1, 2, 3, 4],
        "thin ids of vol-thin, vol-big and both snapshots"
    );

    // lvs -a agrees with fullreport and adds the hidden LVs
    let lvs = report::parse_lvs(out.file("lvs.json")).expect("lvs parses");
    assert!(
        lvs.iter()
            .any(|l| l.name == "[pool0_tmeta]" && l.is_hidden())
    );
    for l in &full.lvs {
        let same = lvs.iter().find(|x| x.uuid == l.uuid).expect("in lvs -a");
        assert_eq!(
            (&same.name, same.size, same.thin_id),
            (&l.name, l.size, l.thin_id)
        );
    }
    let vgs = report::parse_vgs(out.file("vgs.json")).expect("vgs parses");
    assert_eq!(vgs, full.vgs);
    let pvs = report::parse_pvs(out.file("pvs.json")).expect("pvs parses");
    assert_eq!(pvs, full.pvs);

    for f in ["fullreport.json", "lvs.json", "vgs.json", "pvs.json"] {
        capture_fixture(&format!("lvm/{f}"), out.file(f));
    }
    capture_fixture("lvm/versions.txt", out.step("versions").stdout.as_bytes());
}

#[test]
#[ignore = "needs the VM lab"]
fn thin_delta_and_dump_between_snapshots() {
    let out = Scenario::new("thin-delta")
        .step(
            "setup",
            "pvcreate -y /dev/vda && vgcreate labvg /dev/vda
             lvcreate -y --type thin-pool -L 512M --poolmetadatasize 8M -n pool0 labvg
             lvcreate -y -V 1G --thinpool labvg/pool0 -n thin1
             dd if=/dev/urandom of=/dev/labvg/thin1 bs=1M count=16 oflag=direct conv=fsync 2>/dev/null
             lvcreate -y -s -n snapA labvg/thin1
             # change 1 MiB at 0 and add 4 MiB at 64 MiB, then take snapshot B
             dd if=/dev/urandom of=/dev/labvg/thin1 bs=1M count=1 oflag=direct conv=fsync 2>/dev/null
             dd if=/dev/urandom of=/dev/labvg/thin1 bs=1M seek=64 count=4 oflag=direct conv=fsync 2>/dev/null
             lvcreate -y -s -n snapB labvg/thin1",
        )
        .step(
            "ids",
            "echo $(lvs --noheadings -o thin_id labvg/snapA labvg/snapB)",
        )
        // thin_delta on a live pool reads a metadata snapshot; only one can be held, so
        // release it whatever happened in between (LAB.md pitfall 15)
        .step(
            "delta",
            "set -- $(lvs --noheadings -o thin_id labvg/snapA labvg/snapB)
             M=/dev/mapper/labvg-pool0_tmeta
             dmsetup message labvg-pool0-tpool 0 reserve_metadata_snap
             dmsetup status labvg-pool0-tpool | awk '{print \"held=\" $7}'
             rc=0
             { thin_delta -m --snap1 $1 --snap2 $2 $M > $OUT/thin_delta.xml &&
               thin_delta -m --verbose --snap1 $1 --snap2 $2 $M > $OUT/thin_delta_verbose.xml &&
               thin_dump -m $M > $OUT/thin_dump.xml; } || rc=$?
             dmsetup message labvg-pool0-tpool 0 release_metadata_snap
             exit $rc",
        )
        .step("released", "dmsetup status labvg-pool0-tpool | awk '{print $7}'")
        .run();

    let ids: Vec<u32> = out
        .stdout("ids")
        .split_whitespace()
        .map(|s| s.parse().expect("thin id"))
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(out.stdout("delta").starts_with("held=") && !out.stdout("delta").contains("held=-"));
    assert_eq!(
        out.stdout("released"),
        "-",
        "the metadata snapshot was released"
    );

    let delta = thin::parse_delta(out.file("thin_delta.xml")).expect("thin_delta parses");
    assert_eq!(
        (delta.left, delta.right),
        (u64::from(ids[0]), u64::from(ids[1]))
    );
    assert_eq!(delta.block_bytes(), 64 * 1024);
    let changed: Vec<_> = delta
        .changed()
        .map(|r| (r.kind, r.bytes(delta.block_bytes())))
        .collect();
    assert_eq!(
        changed,
        [
            (DeltaKind::Different, 0..MIB),
            (DeltaKind::RightOnly, 64 * MIB..68 * MIB)
        ]
    );
    let verbose = thin::parse_delta(out.file("thin_delta_verbose.xml")).expect("verbose parses");
    assert_eq!(
        verbose
            .ranges
            .iter()
            .map(|r| (r.kind, r.begin, r.length))
            .collect::<Vec<_>>(),
        delta
            .ranges
            .iter()
            .map(|r| (r.kind, r.begin, r.length))
            .collect::<Vec<_>>(),
    );

    let dump = thin::parse_dump(out.file("thin_dump.xml")).expect("thin_dump parses");
    let a = dump.device(ids[0]).expect("snapA in the dump");
    let b = dump.device(ids[1]).expect("snapB in the dump");
    assert_eq!(a.mapped_bytes(dump.block_bytes()), 16 * MIB);
    assert_eq!(b.mapped_bytes(dump.block_bytes()), 20 * MIB);
    // the dump's own diff agrees with thin_delta
    let from_dump: Vec<_> = thin::changed_between(a, b)
        .iter()
        .map(|r| r.bytes(dump.block_bytes()))
        .collect();
    assert_eq!(from_dump, [0..MIB, 64 * MIB..68 * MIB]);

    for f in ["thin_delta.xml", "thin_delta_verbose.xml", "thin_dump.xml"] {
        capture_fixture(&format!("thin/{f}"), out.file(f));
    }
}
