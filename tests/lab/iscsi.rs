//! LIO through raw configfs: an iblock backstore on an LV, an iSCSI target with a TPG,
//! a LUN, a portal on 127.0.0.1, an ACL with CHAP; read back through open-iscsi and
//! through the `tcm_loop` fabric; a wrong CHAP secret and an initiator without an ACL
//! are refused. The configfs tree is dumped and parsed by the library.

use crate::harness::{Scenario, capture_fixture};
use cinderblock::iscsi::configfs::{self, BackstoreKind};

const IQN: &str = "iqn.2003-01.dev.cinderblock.lab:vol1";
const INITIATOR: &str = "iqn.1994-05.com.example:client1";
// Obviously fake CHAP credentials: the configfs dump is committed as a fixture.
const CHAP_USER: &str = "lab-chap-user";
const CHAP_SECRET: &str = "FAKE-lab-secret0";

fn env() -> String {
    format!(
        "T=/sys/kernel/config/target IQN={IQN} INI={INITIATOR} \
         CHAP_USER={CHAP_USER} CHAP_SECRET={CHAP_SECRET}\n\
         TPG=$T/iscsi/$IQN/tpgt_1\n"
    )
}

#[test]
#[ignore = "needs the VM lab"]
#[allow(clippy::too_many_lines)] // one scenario: its steps, then what they must have shown
fn lio_target_with_acl_and_chap() {
    let e = env();
    let out = Scenario::new("iscsi")
        .step(
            "lv",
            "pvcreate -y /dev/vda && vgcreate labvg /dev/vda && lvcreate -y -n vol1 -L 64M labvg
             dd if=/dev/urandom of=/dev/labvg/vol1 bs=1M count=16 oflag=direct conv=fsync 2>/dev/null
             sha_head /dev/labvg/vol1 16",
        )
        .step(
            "lio_setup",
            &format!(
                "{e}
             cat $T/version
             mkdir -p $T/core/iblock_0/vol1
             put udev_path=/dev/labvg/vol1 $T/core/iblock_0/vol1/control
             # control does not fill the udev_path attribute; write it too (LAB.md pitfall 18)
             put /dev/labvg/vol1 $T/core/iblock_0/vol1/udev_path
             put lab-vol1-0001 $T/core/iblock_0/vol1/wwn/vpd_unit_serial
             put 1 $T/core/iblock_0/vol1/enable
             mkdir -p $TPG/lun/lun_0
             ln -s $T/core/iblock_0/vol1 $TPG/lun/lun_0/vol1
             mkdir $TPG/np/127.0.0.1:3260
             mkdir -p $TPG/acls/$INI/lun_0
             ln -s $TPG/lun/lun_0 $TPG/acls/$INI/lun_0/lun_0
             put $CHAP_USER $TPG/acls/$INI/auth/userid
             put $CHAP_SECRET $TPG/acls/$INI/auth/password
             put 1 $TPG/attrib/authentication
             put 0 $TPG/attrib/generate_node_acls
             put 0 $TPG/attrib/demo_mode_write_protect
             put 1 $TPG/enable
             netstat -tln | grep -q 127.0.0.1:3260"
            ),
        )
        .step("dump", "configfs_dump /sys/kernel/config/target > $OUT/configfs-target.txt")
        .step(
            "iscsid",
            &format!(
                "{e}
             echo InitiatorName=$INI > /etc/iscsi/initiatorname.iscsi
             iscsid
             sleep 0.5
             iscsiadm -m discovery -t sendtargets -p 127.0.0.1:3260
             set_node() {{ iscsiadm -m node -T $IQN -p 127.0.0.1:3260 -o update -n $1 -v $2; }}
             set_node node.session.auth.authmethod CHAP
             set_node node.session.auth.username $CHAP_USER"
            ),
        )
        .step_any(
            "login_wrong_secret",
            &format!(
                "{e}
             iscsiadm -m node -T $IQN -p 127.0.0.1:3260 -o update -n node.session.auth.password -v WRONG-lab-secret
             iscsiadm -m node -T $IQN -p 127.0.0.1:3260 --login"
            ),
        )
        .step(
            "login",
            &format!(
                "{e}
             iscsiadm -m node -T $IQN -p 127.0.0.1:3260 -o update -n node.session.auth.password -v $CHAP_SECRET
             iscsiadm -m node -T $IQN -p 127.0.0.1:3260 --login >&2
             i=0; d=
             while [ -z \"$d\" ] && [ $i -lt 100 ]; do
               for b in /sys/block/sd*; do
                 [ -e $b ] && readlink -f $b/device | grep -q /session && d=${{b##*/}}
               done
               sleep 0.1; i=$((i+1))
             done
             test -n \"$d\"
             echo \"$d $(sha_head /dev/$d 16)\""
            ),
        )
        .step_any(
            "login_intruder",
            &format!(
                "{e}
             iscsiadm -m iface -I intruder -o new >/dev/null
             iscsiadm -m iface -I intruder -o update -n iface.initiatorname -v iqn.1994-05.com.example:intruder
             iscsiadm -m discovery -t sendtargets -p 127.0.0.1:3260 -I intruder >/dev/null 2>&1 || true
             iscsiadm -m node -T $IQN -p 127.0.0.1:3260 -I intruder --login"
            ),
        )
        .step(
            "logout",
            &format!(
                "{e}
             iscsiadm -m node -T $IQN -p 127.0.0.1:3260 --logout
             iscsiadm -m node -o delete"
            ),
        )
        // the data path without an initiator: the nexus must exist before the LUN link
        .step(
            "tcm_loop",
            &format!(
                "{e}
             L=$T/loopback/naa.5001405000000001/tpgt_1
             mkdir -p $L
             put naa.5001405000000002 $L/nexus
             mkdir -p $L/lun/lun_0
             ln -s $T/core/iblock_0/vol1 $L/lun/lun_0/vol1
             i=0; d=
             while [ -z \"$d\" ] && [ $i -lt 100 ]; do
               for b in /sys/block/sd*; do
                 [ -e $b ] && readlink -f $b/device | grep -qv /session && d=${{b##*/}}
               done
               sleep 0.1; i=$((i+1))
             done
             test -n \"$d\"
             dd if=/dev/zero of=/dev/$d bs=1M count=1 oflag=direct conv=fsync 2>/dev/null
             echo \"$(cat /sys/block/$d/device/vendor) $(sha_head /dev/$d 16) $(sha_head /dev/labvg/vol1 16)\"
             rm $L/lun/lun_0/vol1 && rmdir $L/lun/lun_0 $L && rmdir $T/loopback/naa.5001405000000001"
            ),
        )
        .step(
            "teardown",
            &format!(
                "{e}
             put 0 $TPG/enable
             rm $TPG/acls/$INI/lun_0/lun_0 && rmdir $TPG/acls/$INI/lun_0 $TPG/acls/$INI
             rm $TPG/lun/lun_0/vol1 && rmdir $TPG/lun/lun_0
             rmdir $TPG/np/127.0.0.1:3260 $TPG $T/iscsi/$IQN
             rmdir $T/core/iblock_0/vol1 $T/core/iblock_0
             configfs_dump $T > $OUT/configfs-empty.txt"
            ),
        )
        .run();

    // the configfs walk, as the agent will observe it
    let dump = out.text("configfs-target.txt");
    let entries = configfs::parse_dump(&dump).expect("the dump parses");
    let lio = configfs::Lio::from_entries(&entries).expect("the model builds");
    assert_eq!(lio.backstores.len(), 1);
    let bs = &lio.backstores[0];
    assert_eq!(
        (bs.kind, bs.hba_index, bs.name.as_str()),
        (BackstoreKind::Block, 0, "vol1")
    );
    assert!(bs.enabled);
    assert_eq!(bs.udev_path.as_deref(), Some("/dev/labvg/vol1"));
    assert_eq!(bs.unit_serial.as_deref(), Some("lab-vol1-0001"));
    assert_eq!(lio.iscsi_targets.len(), 1);
    let target = &lio.iscsi_targets[0];
    assert_eq!(target.iqn, IQN);
    let tpg = &target.tpgs[0];
    assert_eq!(tpg.tag, 1);
    assert!(tpg.enabled && tpg.authentication && !tpg.generate_node_acls);
    assert_eq!(tpg.portals, ["127.0.0.1:3260"]);
    assert_eq!(tpg.luns.len(), 1);
    assert_eq!(
        (tpg.luns[0].index, &tpg.luns[0].backstore),
        (0, &bs.reference())
    );
    assert_eq!(tpg.acls.len(), 1);
    let acl = &tpg.acls[0];
    assert_eq!(acl.initiator, INITIATOR);
    assert_eq!(acl.mapped_luns.len(), 1);
    assert_eq!(
        (acl.mapped_luns[0].index, acl.mapped_luns[0].tpg_lun),
        (0, 0)
    );
    assert!(!acl.mapped_luns[0].write_protect);
    let chap = cinderblock::iscsi::chap::Chap::parse(&format!("{CHAP_USER}:{CHAP_SECRET}"))
        .expect("the lab's credentials parse");
    assert_eq!(acl.chap.one_way, Some(chap.print()));
    assert_eq!(acl.chap.mutual, None);
    assert!(
        !format!("{lio:?}").contains(CHAP_SECRET) && !format!("{lio:?}").contains(CHAP_USER),
        "the model never holds a secret"
    );

    let lv_sha = out.stdout("lv").lines().last().unwrap_or_default();
    let login = out.stdout("login");
    assert!(
        login.ends_with(lv_sha),
        "the iSCSI disk reads the LV: {login} vs {lv_sha}"
    );
    // iscsiadm exit code 24: "iSCSI login failed due to authorization failure"
    for step in ["login_wrong_secret", "login_intruder"] {
        let s = out.step(step);
        assert_eq!(
            s.rc,
            Some(24),
            "{step} must be refused: {}{}",
            s.stdout,
            s.stderr
        );
    }
    let tcm: Vec<&str> = out.stdout("tcm_loop").split_whitespace().collect();
    assert_eq!(tcm[0], "LIO-ORG");
    assert_eq!(tcm[1], tcm[2], "a write through tcm_loop lands on the LV");
    assert_ne!(tcm[1], lv_sha);

    let empty = configfs::Lio::from_entries(
        &configfs::parse_dump(&out.text("configfs-empty.txt")).expect("parses"),
    )
    .expect("builds");
    assert!(
        empty.backstores.is_empty() && empty.iscsi_targets.is_empty(),
        "{empty:?}"
    );

    capture_fixture("iscsi/configfs-target.txt", dump.as_bytes());
}
