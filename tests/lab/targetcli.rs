//! What an admin's targetcli (targetcli-fb 2.1.53, rtslib-fb) makes of our
//! exports, and how the layout of earlier versions is moved out from under it
//! without cutting off a logged-in initiator. One VM boot, the targetcli image.
//!
//! Earlier versions put every backstore into `core/iblock_0` and named targets
//! `iqn.2010-10.dev.cinderblock:volume-<uuid>`; rtslib deletes a storage
//! object together with its HBA folder, so `targetcli clearconfig` failed
//! there. Here: two exports in that layout, both logged in (nothing moves, a
//! note says why), one logged out (it moves, the other keeps its session and
//! its data, both keep their target names), then a target made by hand with
//! targetcli beside ours survives an apply, `targetcli ls`/`saveconfig` name
//! ours, `targetcli /backstores/block delete` of one of ours and
//! `clearconfig` succeed, and the next apply restores every export.

use crate::export::GUEST_LIB;
use crate::harness::Scenario;

const H: &str = "apiVersion: cinderblock.dev/v1alpha1\n";
const CLIENT: &str = "iqn.1994-05.com.example:client1";
const HANDMADE: &str = "iqn.2003-01.org.example.lab:tc";

/// What earlier versions wrote for an export of volume `$1` on device `$2`:
/// the backstore in the one shared `core/iblock_0`, the target under the old
/// default name, an ACL for CLIENT, no CHAP.
const OLD_EXPORT: &str = r#"
INI=iqn.1994-05.com.example:client1
old_iqn() { echo iqn.2010-10.dev.cinderblock:volume-$1; }
new_iqn() { echo iqn.2026-11.dev.cinderblock:volume-$1; }
old_export() { # uuid device
  bs=$T/core/iblock_0/cinderblock-$1; g=$T/iscsi/$(old_iqn $1)/tpgt_1
  mkdir -p $bs
  put udev_path=$2 $bs/control; put $2 $bs/udev_path; put $1 $bs/wwn/vpd_unit_serial; put 1 $bs/enable
  mkdir -p $g/lun/lun_0 && ln -s $bs $g/lun/lun_0/cinderblock-$1
  mkdir -p $g/np/0.0.0.0:3260 $g/acls/$INI/lun_0 && ln -s $g/lun/lun_0 $g/acls/$INI/lun_0/lun_0
  put 0 $g/attrib/authentication; put 0 $g/attrib/generate_node_acls
  put 1 $g/attrib/demo_mode_write_protect; put 1 $g/enable
}
hbas() { for d in $T/core/*_*; do [ -d $d ] && echo "${d##*/}: $(ls $d | grep -v '^hba_' | tr '\n' ' ')"; done; true; }
A=$(uuid_of a); B=$(uuid_of b); C=$(uuid_of c)
FIRST=$(printf '%s\n' $A $B | sort | head -n1); SECOND=$(printf '%s\n' $A $B | sort | tail -n1)
"#;

fn site(exported: bool, with_c: bool) -> String {
    let export = if exported {
        format!("  export:\n    iscsi:\n      initiators: [{CLIENT}]\n")
    } else {
        String::new()
    };
    let vol = |n: &str| {
        format!(
            "---\n{H}kind: Volume\nmetadata:\n  name: {n}\nspec:\n  size: 32Mi\n  backend: thin\n  deletionPolicy: Delete\n{export}"
        )
    };
    let mut s = format!(
        "{H}kind: Backend\nmetadata:\n  name: thin\nspec:\n  host: lab\n  lvm:\n    volumeGroup: vg0\n    thinPool: pool0\n    thinPoolSize: 256Mi\n{}{}",
        vol("a"),
        vol("b")
    );
    if with_c {
        s.push_str(&vol("c"));
    }
    s
}

#[test]
#[ignore = "needs the VM lab"]
#[allow(clippy::too_many_lines)] // one VM boot: the steps, then what they showed
fn targetcli_manages_our_exports_and_the_old_shared_folder_moves_without_a_cut() {
    let out = Scenario::new("targetcli")
        .with_targetcli()
        .file("lib.sh", format!("{GUEST_LIB}{OLD_EXPORT}"))
        .file("v0/site.yaml", site(false, false))
        .file("v1/site.yaml", site(true, false))
        .file("v2/site.yaml", site(true, true))
        .step(
            "setup",
            "pvcreate -y /dev/vda >/dev/null && vgcreate vg0 /dev/vda >/dev/null
             echo InitiatorName=iqn.1994-05.com.example:client1 > /etc/iscsi/initiatorname.iscsi
             iscsid; sleep 0.5
             cinderblock --state st --host lab apply -f v0 --auto-approve >&2",
        )
        .step(
            "old_layout",
            ". ./lib.sh
             for u in $A $B; do
               dd if=/dev/urandom of=/tmp/pat-$u bs=1M count=4 2>/dev/null
               dd if=/tmp/pat-$u of=/dev/vg0/volume-$u bs=1M oflag=direct conv=fsync 2>/dev/null
               old_export $u /dev/vg0/volume-$u
             done
             hbas",
        )
        .step(
            "login_both",
            ". ./lib.sh
             for u in $FIRST $SECOND; do d=$(login $(old_iqn $u)); echo \"$(sha_head /dev/$d 4) $(sha < /tmp/pat-$u)\"; done",
        )
        .step(
            "plan_busy",
            ". ./lib.sh; r=0; cb plan -f v1 --detailed-exitcode || r=$?; echo \"rc=$r\"",
        )
        .step(
            "move",
            ". ./lib.sh
             node $(old_iqn $FIRST) --logout >&2
             cb apply -f v1 --auto-approve
             echo \"sessions $(iscsiadm -m session | grep -c $SECOND)\"
             echo \"second $(sha_head /dev/$(disk_of $(old_iqn $SECOND)) 4) $(sha < /tmp/pat-$SECOND)\"
             hbas; ls $T/iscsi | grep cinderblock",
        )
        .step(
            "relogin_first",
            ". ./lib.sh
             d=$(attach $(old_iqn $FIRST)); echo \"$(sha_head /dev/$d 4) $(sha < /tmp/pat-$FIRST)\"
             node $(old_iqn $FIRST) --logout >&2; node $(old_iqn $SECOND) --logout >&2
             r=0; cb plan -f v1 --detailed-exitcode >&2 || r=$?; echo \"rc=$r\"",
        )
        .step(
            "handmade",
            ". ./lib.sh
             lvcreate -y -n tc1 -L 16M vg0 >/dev/null
             targetcli /backstores/block create name=tc1 dev=/dev/vg0/tc1 >&2
             targetcli /iscsi create iqn.2003-01.org.example.lab:tc >&2
             targetcli /iscsi/iqn.2003-01.org.example.lab:tc/tpg1/luns create /backstores/block/tc1 >&2
             cb apply -f v2 --auto-approve >&2
             hbas
             for l in $T/iscsi/iqn.2003-01.org.example.lab:tc/tpgt_1/lun/lun_0/*; do [ -L $l ] && readlink $l; done; true",
        )
        .step("targetcli_ls", "targetcli ls")
        .step(
            "saveconfig",
            "targetcli saveconfig >&2
             grep -o '\"name\": \"[a-z0-9-]*\"' /etc/rtslib-fb-target/saveconfig.json | sort -u",
        )
        .step(
            "delete_one",
            ". ./lib.sh
             targetcli /backstores/block delete cinderblock-$C >&2
             hbas",
        )
        .step(
            "clearconfig",
            ". ./lib.sh
             targetcli clearconfig confirm=True >&2
             hbas
             for d in $T/iscsi/*; do [ -d $d ] && [ ${d##*/} != discovery_auth ] && echo ${d##*/}; done
             echo cleared",
        )
        .step(
            "restore",
            ". ./lib.sh
             r=0; cb plan -f v2 --detailed-exitcode >&2 || r=$?; echo \"rc=$r\"
             cb apply -f v2 --auto-approve >&2
             d=$(login $(new_iqn $FIRST)); echo \"$(sha_head /dev/$d 4) $(sha < /tmp/pat-$FIRST)\"
             node $(new_iqn $FIRST) --logout >&2
             echo \"listed $(targetcli ls | grep -c 'o- cinderblock-')\"
             hbas",
        )
        .run();

    let first_of = |s: &str| s.split(' ').next().unwrap_or_default().to_owned();
    // Every "<sha256> <sha256>" line of a step: read back == written.
    let both_equal = |step: &str| {
        let pairs: Vec<(&str, &str)> = out
            .stdout(step)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(a, b)| a.len() == 64 && b.len() == 64)
            .collect();
        assert!(!pairs.is_empty(), "{}", out.report(step));
        for (a, b) in pairs {
            assert_eq!(a, b, "{}", out.report(step));
        }
    };
    // The earlier layout: both backstores in iblock_0.
    let old = out.stdout("old_layout");
    assert_eq!(old.lines().count(), 1, "{old}");
    assert_eq!(old.matches("cinderblock-").count(), 2, "{old}");
    both_equal("login_both");

    // Both logged in: nothing moves, and the note says why and when.
    let busy = out.stdout("plan_busy");
    assert!(busy.ends_with("rc=0"), "{busy}");
    assert!(
        busy.contains("its backstore shares core/iblock_0 with cinderblock-")
            && busy.contains(
                "it moves to a folder of its own at the first apply with no initiator logged in"
            ),
        "{busy}"
    );
    assert!(
        !busy.contains("will be exported") && !busy.contains("no longer be exported"),
        "{busy}"
    );

    // The first logged out: it moves, the second keeps its session and data,
    // and both keep their earlier target names.
    let moved = out.stdout("move");
    assert!(
        moved.contains("move the backstore from core/iblock_0 to a folder of its own"),
        "{moved}"
    );
    assert!(moved.contains("sessions 1"), "{moved}");
    let second = moved
        .lines()
        .find_map(|l| l.strip_prefix("second "))
        .unwrap_or_default();
    let (a, b) = second.split_once(' ').unwrap_or_default();
    assert_eq!(a, b, "{moved}");
    let hbas: Vec<&str> = moved.lines().filter(|l| l.starts_with("iblock_")).collect();
    assert_eq!(hbas.len(), 2, "{moved}");
    assert!(
        hbas.iter().all(|l| l.matches("cinderblock-").count() == 1),
        "{moved}"
    );
    let targets: Vec<&str> = moved.lines().filter(|l| l.starts_with("iqn.")).collect();
    assert_eq!(targets.len(), 2, "{moved}");
    assert!(
        targets
            .iter()
            .all(|t| t.starts_with("iqn.2010-10.dev.cinderblock:volume-")),
        "{moved}"
    );
    let relogin = out.stdout("relogin_first");
    both_equal("relogin_first");
    assert!(relogin.ends_with("rc=0"), "{relogin}");

    // A target made by hand with targetcli: untouched by the apply that
    // adds volume c in a folder of its own.
    let hand = out.stdout("handmade");
    assert!(hand.contains("tc1"), "{hand}");
    let tc_link = hand.lines().last().unwrap_or_default();
    assert!(tc_link.ends_with("/tc1"), "{hand}");
    let hba_of_tc = hand
        .lines()
        .find(|l| l.contains("tc1"))
        .map(first_of)
        .unwrap_or_default();
    assert!(
        tc_link.contains(&format!("core/{}", hba_of_tc.trim_end_matches(':'))),
        "{hand}"
    );
    let ours = hand.lines().filter(|l| l.contains("cinderblock-")).count();
    assert_eq!(ours, 3, "one folder each for a, b and c: {hand}");

    // targetcli reads our exports, saves them, deletes one, clears all.
    let ls = out.stdout("targetcli_ls");
    assert!(ls.matches("cinderblock-").count() >= 3, "{ls}");
    assert!(ls.contains(HANDMADE) && ls.contains("tc1"), "{ls}");
    let saved = out.stdout("saveconfig");
    assert_eq!(saved.matches("cinderblock-").count(), 3, "{saved}");
    assert!(saved.contains("\"tc1\""), "{saved}");
    let deleted = out.stdout("delete_one");
    assert_eq!(deleted.matches("cinderblock-").count(), 2, "{deleted}");
    assert_eq!(
        out.stdout("clearconfig"),
        "cleared",
        "{}",
        out.report("clearconfig")
    );

    // The next apply restores every export (under today's default names:
    // clearconfig took the old ones with it).
    let restore = out.stdout("restore");
    assert!(restore.starts_with("rc=2"), "{restore}");
    both_equal("restore");
    assert!(restore.contains("listed 3"), "{restore}");
    assert_eq!(
        restore.lines().filter(|l| l.starts_with("iblock_")).count(),
        3,
        "{restore}"
    );
    eprintln!(
        "lab targetcli: boot {:.1}s, wall {:.1}s; targetcli ls {:.2}s, clearconfig {:.2}s, move {:.2}s",
        out.boot.map_or(0.0, |b| b.as_secs_f64()),
        out.wall.as_secs_f64(),
        out.step("targetcli_ls").secs,
        out.step("clearconfig").secs,
        out.step("move").secs
    );
}
