//! iSCSI exports through cinderblock on the real LIO: `apply` exports a thin LV and a
//! volume file with ACLs and CHAP, a real open-iscsi initiator logs in and reads the
//! data, a plan that would cut off the logged-in initiator is refused, ACL changes and
//! removals reach configfs, and after the last delete nothing of ours is left in
//! configfs. One VM boot.

use crate::harness::Scenario;

const H: &str = "apiVersion: cinderblock.dev/v1alpha1\n";
const CLIENT: &str = "iqn.1994-05.com.example:client1";
const CLIENT2: &str = "iqn.1994-05.com.example:client2";

/// `cb` runs cinderblock on this scenario's state; `iqn_of NAME` is the target of
/// the volume tagged NAME (from its uuid tag); `login IQN` logs in and prints the
/// SCSI disk that appeared; `lio_ours` lists our configfs entries.
const GUEST_LIB: &str = r#"
cb() { cinderblock --state st --host lab "$@"; }
uuid_of() { lvs --noheadings -o lv_tags "@cinderblock.name=$1" | tr ',' '\n' | sed -n 's/^ *cinderblock.uuid=//p'; }
T=/sys/kernel/config/target
disk_of() { # IQN -> sdX of its session
  for s in /sys/class/iscsi_session/session*; do
    [ "$(cat $s/targetname)" = "$1" ] || continue
    for b in /sys/block/sd*; do
      readlink -f $b/device | grep -q "/${s##*/}/" && { echo ${b##*/}; return 0; }
    done
  done
  return 1
}
login() { # IQN [user pass]
  iscsiadm -m discovery -t sendtargets -p 127.0.0.1:3260 >/dev/null
  if [ -n "$2" ]; then
    iscsiadm -m node -T $1 -p 127.0.0.1:3260 -o update -n node.session.auth.authmethod -v CHAP
    iscsiadm -m node -T $1 -p 127.0.0.1:3260 -o update -n node.session.auth.username -v $2
    iscsiadm -m node -T $1 -p 127.0.0.1:3260 -o update -n node.session.auth.password -v $3
  fi
  iscsiadm -m node -T $1 -p 127.0.0.1:3260 --login >&2
  i=0; until d=$(disk_of $1); do i=$((i+1)); [ $i -lt 100 ] || return 1; sleep 0.1; done
  echo $d
}
lio_ours() { ls $T/core/*/ 2>/dev/null | grep cinderblock- || true; ls $T/iscsi 2>/dev/null | grep cinderblock || true; }
"#;

fn site(web_export: &str, files_export: &str) -> String {
    format!(
        "{H}kind: Backend\nmetadata:\n  name: thin\nspec:\n  host: lab\n  lvm:\n    volumeGroup: vg0\n    thinPool: pool0\n    thinPoolSize: 512Mi\n\
         ---\n{H}kind: Backend\nmetadata:\n  name: files\nspec:\n  host: lab\n  file:\n    path: /srv/files\n\
         ---\n{H}kind: Volume\nmetadata:\n  name: web\nspec:\n  size: 64Mi\n  backend: thin\n  deletionPolicy: Delete\n{web_export}\
         ---\n{H}kind: Volume\nmetadata:\n  name: doc\nspec:\n  size: 32Mi\n  backend: files\n  deletionPolicy: Delete\n{files_export}"
    )
}

fn export(initiators: &[&str], chap: bool) -> String {
    let mut s = "  export:\n    iscsi:\n      initiators:\n".to_owned();
    for i in initiators {
        s.push_str("        - ");
        s.push_str(i);
        s.push('\n');
    }
    if chap {
        s.push_str("      chapSecretRef:\n        file: /root/web-chap\n");
    }
    s
}

#[test]
#[ignore = "needs the VM lab"]
#[allow(clippy::too_many_lines)] // one VM boot: the steps, then what they showed
fn exports_serve_initiators_refuse_to_cut_them_off_and_leave_nothing_behind() {
    let only_backends = format!(
        "{H}kind: Backend\nmetadata:\n  name: thin\nspec:\n  host: lab\n  lvm:\n    volumeGroup: vg0\n    thinPool: pool0\n    thinPoolSize: 512Mi\n\
         ---\n{H}kind: Backend\nmetadata:\n  name: files\nspec:\n  host: lab\n  file:\n    path: /srv/files\n"
    );
    let out = Scenario::new("export")
        .file("lib-exp.sh", GUEST_LIB)
        .file("v1/site.yaml", site(&export(&[CLIENT], true), &export(&[CLIENT], false)))
        .file("v2/site.yaml", site(&export(&[CLIENT, CLIENT2], true), &export(&[CLIENT], false)))
        .file("v3/site.yaml", site(&export(&[CLIENT2], true), &export(&[CLIENT], false)))
        .file("v4/site.yaml", site("", ""))
        .file("v5/site.yaml", only_backends)
        .file("v5/keep.yaml", format!("{H}kind: Volume\nmetadata:\n  name: keep\nspec:\n  size: 16Mi\n  backend: files\n"))
        .step(
            "setup",
            "pvcreate -y /dev/vda >/dev/null && vgcreate vg0 /dev/vda >/dev/null
             mkfs.ext4 -q /dev/vdb && mkdir -p /srv/files && mount /dev/vdb /srv/files
             printf 'webuser:web-secret-0001\\n' > /root/web-chap && chmod 600 /root/web-chap
             echo InitiatorName=iqn.1994-05.com.example:client1 > /etc/iscsi/initiatorname.iscsi
             iscsid; sleep 0.5",
        )
        .step("apply", ". ./lib-exp.sh; cb apply -f v1 --auto-approve")
        .step_any("replan", ". ./lib-exp.sh; cb plan -f v1 --detailed-exitcode")
        .step(
            "fill",
            ". ./lib-exp.sh
             dd if=/dev/urandom of=/dev/vg0/volume-$(uuid_of web) bs=1M count=16 oflag=direct 2>/dev/null
             sha_head /dev/vg0/volume-$(uuid_of web) 16",
        )
        .step(
            "login_web",
            ". ./lib-exp.sh
             d=$(login iqn.2026-11.dev.cinderblock:volume-$(uuid_of web) webuser web-secret-0001)
             sha_head /dev/$d 16",
        )
        .step_any("plan_cut_off", ". ./lib-exp.sh; cb plan -f v3")
        .step_any("plan_delete_in_use", ". ./lib-exp.sh; cb plan -f v4")
        .step(
            "add_acl",
            ". ./lib-exp.sh; cb apply -f v2 --auto-approve
             ls $T/iscsi/iqn.2026-11.dev.cinderblock:volume-$(uuid_of web)/tpgt_1/acls",
        )
        .step(
            "doc_io",
            ". ./lib-exp.sh
             u=$(ls /srv/files/.cinderblock | sed -n 's/\\.json$//p' | head -n1)
             t=iqn.2026-11.dev.cinderblock:volume-$u
             d=$(login $t)
             dd if=/dev/urandom of=/tmp/pat bs=1M count=2 2>/dev/null
             dd if=/tmp/pat of=/dev/$d bs=1M oflag=direct conv=fsync 2>/dev/null
             iscsiadm -m node -T $t --logout >&2
             echo \"$(sha < /tmp/pat) $(sha_head /srv/files/volume-$u 2)\"",
        )
        .step(
            "logout_web",
            ". ./lib-exp.sh; iscsiadm -m node -T iqn.2026-11.dev.cinderblock:volume-$(uuid_of web) --logout >&2",
        )
        .step(
            "unexport",
            ". ./lib-exp.sh; cb apply -f v4 --auto-approve >&2; lio_ours
             echo \"volumes $(ls /dev/vg0 | grep -c volume-) $(ls /srv/files | grep -c volume-)\"",
        )
        .step("delete_all", ". ./lib-exp.sh; cb apply -f v1 --auto-approve >&2 && cb apply -f v5 --auto-approve >&2; lio_ours; echo done")
        .run();

    let rc = |s: &str| out.step(s).rc.unwrap_or(-1);
    assert_eq!(rc("replan"), 0, "{}", out.report("replan"));
    let apply = out.stdout("apply");
    assert!(apply.contains("volume.web: Export complete"), "{apply}");
    assert!(apply.contains("Resources: 5 added"), "{apply}");
    // The initiator reads what was written to the LV.
    let written = out.stdout("fill");
    let read = out.stdout("login_web");
    assert_eq!(read, written, "{}", out.report("login_web"));

    // While client1 is logged in: dropping its ACL, or the export, or the
    // volume, is refused, naming it.
    assert_eq!(rc("plan_cut_off"), 1);
    let e = out.stdout("plan_cut_off");
    assert!(
        e.contains(&format!(
            "removing the ACL of {CLIENT} cuts off a logged-in initiator"
        )),
        "{e}"
    );
    assert_eq!(rc("plan_delete_in_use"), 1);
    let e = out.stdout("plan_delete_in_use");
    assert!(
        e.contains(&format!("in use: initiator(s) {CLIENT} are logged in")),
        "{e}"
    );

    // Adding an ACL while logged in is fine.
    let acls = out.stdout("add_acl");
    assert!(acls.contains(CLIENT) && acls.contains(CLIENT2), "{acls}");

    // The file volume through fileio: bytes written by the initiator are in the file.
    let doc = out.stdout("doc_io");
    let (a, b) = doc.split_once(' ').unwrap();
    assert_eq!(a, b, "{}", out.report("doc_io"));

    // spec.export removed: nothing of ours left in configfs, the volumes stay.
    assert_eq!(
        out.stdout("unexport"),
        "volumes 1 1",
        "{}",
        out.report("unexport")
    );
    // Re-exported, then deleted with their manifests: unexport before delete.
    assert_eq!(
        out.stdout("delete_all"),
        "done",
        "{}",
        out.report("delete_all")
    );
}
