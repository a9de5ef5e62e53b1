//! iSCSI exports through cinderblock on the real LIO, one VM boot per scenario.
//!
//! * `apply` exports a thin LV and a volume file with ACLs and CHAP, a real
//!   open-iscsi initiator logs in and reads the data, a plan that would cut off the
//!   logged-in initiator is refused, ACL changes and removals reach configfs, and
//!   after the last delete nothing of ours is left in configfs.
//! * Credentials and growth: discovery authentication, mutual CHAP (a login
//!   that checks the target's answer, and one with a wrong target secret that
//!   the initiator refuses), a rotated secret applied under three logged-in
//!   sessions that keep doing I/O (a new login needs the new secret), and a
//!   thin LV, a thick LV and a volume file grown while exported: what the
//!   initiator sees before and after a rescan.

use crate::harness::Scenario;

const H: &str = "apiVersion: cinderblock.dev/v1alpha1\n";
const CLIENT: &str = "iqn.1994-05.com.example:client1";
const CLIENT2: &str = "iqn.1994-05.com.example:client2";

/// `cb` runs cinderblock on this scenario's state; `uuid_of NAME` is the uuid of
/// the LV tagged NAME; `login IQN [USER PASS]` discovers, logs in and prints the
/// SCSI disk that appeared; `auth IQN USER PASS [USER_IN PASS_IN]` sets a node's
/// CHAP (and mutual CHAP) settings; `attach IQN` logs in to a known node and
/// prints its disk; `try_login IQN` prints the login's exit code; `size_of sdX`
/// is the disk's size in bytes as the initiator sees it; `lio_ours` lists our
/// configfs entries.
pub(crate) const GUEST_LIB: &str = r#"
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
node() { t=$1; shift; iscsiadm -m node -T $t -p 127.0.0.1:3260 "$@"; }
auth() { # IQN user pass [user_in pass_in]
  node $1 -o update -n node.session.auth.authmethod -v CHAP
  node $1 -o update -n node.session.auth.username -v $2
  node $1 -o update -n node.session.auth.password -v $3
  if [ -n "$4" ]; then
    node $1 -o update -n node.session.auth.username_in -v $4
    node $1 -o update -n node.session.auth.password_in -v $5
  fi
}
attach() { # IQN
  node $1 --login >&2
  i=0; until d=$(disk_of $1); do i=$((i+1)); [ $i -lt 100 ] || return 1; sleep 0.1; done
  echo $d
}
try_login() { r=0; node $1 --login >&2 || r=$?; echo $r; }
size_of() { echo $(( $(cat /sys/block/$1/size) * 512 )); }
login() { # IQN [user pass]
  iscsiadm -m discovery -t sendtargets -p 127.0.0.1:3260 >/dev/null
  if [ -n "$2" ]; then auth $1 $2 $3; fi
  attach $1
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

/// Three back ends on one VG and a disk (thin pool, thick, files), discovery
/// authentication on the thin one, and `web` (thin, with mutual CHAP), `db`
/// (thick) and `doc` (file), each exported to CLIENT with CHAP, at `size`.
fn auth_site(size: &str) -> String {
    let vol = |name: &str, backend: &str, mutual: bool| {
        format!(
            "---\n{H}kind: Volume\nmetadata:\n  name: {name}\nspec:\n  size: {size}\n  backend: {backend}\n  export:\n    iscsi:\n      initiators: [{CLIENT}]\n      chapSecretRef: {{file: /root/chap}}\n{}",
            if mutual {
                "      mutualChapSecretRef: {file: /root/target-chap}\n"
            } else {
                ""
            }
        )
    };
    format!(
        "{H}kind: Backend\nmetadata:\n  name: thin\nspec:\n  host: lab\n  lvm:\n    volumeGroup: vg0\n    thinPool: pool0\n    thinPoolSize: 512Mi\n  iscsi:\n    discoveryAuth:\n      chapSecretRef: {{file: /root/disc-chap}}\n\
         ---\n{H}kind: Backend\nmetadata:\n  name: thick\nspec:\n  host: lab\n  lvm:\n    volumeGroup: vg0\n\
         ---\n{H}kind: Backend\nmetadata:\n  name: files\nspec:\n  host: lab\n  file:\n    path: /srv/files\n{}{}{}",
        vol("web", "thin", true),
        vol("db", "thick", false),
        vol("doc", "files", false)
    )
}

#[test]
#[ignore = "needs the VM lab"]
#[allow(clippy::too_many_lines)] // one VM boot: the steps, then what they showed
fn credentials_rotate_under_logged_in_initiators_and_grown_volumes_reach_them() {
    // The targets of web, db and doc, by the volume's uuid tag or sidecar.
    let targets = r"
tgt() { echo iqn.2026-11.dev.cinderblock:volume-$1; }
WEB=$(tgt $(uuid_of web)); DB=$(tgt $(uuid_of db))
DOC=$(tgt $(ls /srv/files/.cinderblock | sed -n 's/\.json$//p' | head -n1))
";
    let out = Scenario::new("export_auth")
        .file("lib-exp.sh", format!("{GUEST_LIB}{targets}"))
        .file("v1/site.yaml", auth_site("64Mi"))
        .file("v2/site.yaml", auth_site("128Mi"))
        .step(
            "setup",
            "pvcreate -y /dev/vda >/dev/null && vgcreate vg0 /dev/vda >/dev/null
             mkfs.ext4 -q /dev/vdb && mkdir -p /srv/files && mount /dev/vdb /srv/files
             printf 'webuser:web-secret-0001\\n' > /root/chap
             printf 'target1:target-secret-01\\n' > /root/target-chap
             printf 'disc:discovery-secret-1\\n' > /root/disc-chap
             chmod 600 /root/*chap
             echo InitiatorName=iqn.1994-05.com.example:client1 > /etc/iscsi/initiatorname.iscsi
             iscsid; sleep 0.5",
        )
        .step("apply", "cinderblock --state st --host lab apply -f v1 --auto-approve")
        .step_any("replan", ". ./lib-exp.sh; cb plan -f v1 --detailed-exitcode")
        .step(
            "discovery_denied",
            "r=0; iscsiadm -m discovery -t sendtargets -p 127.0.0.1:3260 >&2 || r=$?; echo $r",
        )
        .step(
            "discovery",
            "D='iscsiadm -m discoverydb -t sendtargets -p 127.0.0.1:3260'
             $D -o new >&2
             $D -o update -n discovery.sendtargets.auth.authmethod -v CHAP
             $D -o update -n discovery.sendtargets.auth.username -v disc
             $D -o update -n discovery.sendtargets.auth.password -v discovery-secret-1
             $D --discover | sed 's/^[^ ]* //' | sort",
        )
        .step(
            "login",
            ". ./lib-exp.sh
             auth $WEB webuser web-secret-0001 target1 target-secret-01
             auth $DB webuser web-secret-0001; auth $DOC webuser web-secret-0001
             for t in $WEB $DB $DOC; do
               d=$(attach $t)
               dd if=/dev/urandom of=/tmp/pat-${t##*-} bs=1M count=4 2>/dev/null
               dd if=/tmp/pat-${t##*-} of=/dev/$d bs=1M oflag=direct conv=fsync 2>/dev/null
               echo \"$(sha < /tmp/pat-${t##*-}) $(size_of $d)\"
             done",
        )
        .step(
            "rotate_plan",
            ". ./lib-exp.sh
             printf 'webuser:web-secret-0002\\n' > /root/chap
             r=0; cb plan -f v1 --detailed-exitcode || r=$?; echo \"rc=$r\"",
        )
        .step(
            "rotate",
            ". ./lib-exp.sh; cb apply -f v1 --auto-approve >&2
             echo \"sessions $(iscsiadm -m session | grep -c cinderblock)\"
             for t in $WEB $DB $DOC; do echo \"$(sha_head /dev/$(disk_of $t) 4) $(sha < /tmp/pat-${t##*-})\"; done",
        )
        .step(
            "relogin",
            ". ./lib-exp.sh
             node $WEB --logout >&2
             echo \"old $(try_login $WEB)\"
             auth $WEB webuser web-secret-0002
             echo \"new $(try_login $WEB)\"
             node $WEB --logout >&2
             auth $WEB webuser web-secret-0002 target1 wrong-target-99
             echo \"wrong-target $(try_login $WEB)\"
             auth $WEB webuser web-secret-0002 target1 target-secret-01
             d=$(attach $WEB)
             echo \"mutual $(sha_head /dev/$d 4) $(sha < /tmp/pat-${WEB##*-})\"",
        )
        .step(
            "grow",
            ". ./lib-exp.sh; cb apply -f v2 --auto-approve
             for t in $WEB $DB $DOC; do echo \"before $(size_of $(disk_of $t))\"; done
             iscsiadm -m session --rescan >&2; sleep 1
             for t in $WEB $DB $DOC; do echo \"after $(size_of $(disk_of $t))\"; done",
        )
        .step_any("replan_grown", ". ./lib-exp.sh; cb plan -f v2 --detailed-exitcode")
        .run();

    let rc = |s: &str| out.step(s).rc.unwrap_or(-1);
    assert_eq!(rc("replan"), 0, "{}", out.report("replan"));
    let apply = out.stdout("apply");
    assert!(
        apply.contains("iscsi.discovery-auth: Creation complete"),
        "{apply}"
    );
    assert!(apply.contains("Resources: 8 added"), "{apply}");
    // Discovery needs its credentials, and then lists the three targets.
    assert_eq!(
        out.stdout("discovery_denied"),
        "24",
        "{}",
        out.report("discovery_denied")
    );
    let found = out.stdout("discovery");
    assert_eq!(found.lines().count(), 3, "{found}");
    assert!(
        found
            .lines()
            .all(|l| l.starts_with("iqn.2026-11.dev.cinderblock:volume-")),
        "{found}"
    );
    // Logged in to all three (web with mutual CHAP), 4 MiB written to each.
    let login = out.stdout("login");
    let sizes: Vec<&str> = login.lines().filter_map(|l| l.split(' ').nth(1)).collect();
    assert_eq!(sizes, ["67108864", "67108864", "67108864"], "{login}");

    // The rotated secret: planned for all three without a value, the
    // logged-in initiator named.
    let plan = out.stdout("rotate_plan");
    assert!(plan.ends_with("rc=2"), "{plan}");
    let attr = |key: &str, value: &str| {
        plan.lines()
            .filter(|l| {
                let l = l.trim();
                l.starts_with(key)
                    && l.split_once(" = ")
                        .is_some_and(|(_, v)| v.starts_with(value))
            })
            .count()
    };
    assert_eq!(attr("~ change", "new CHAP password"), 3, "{plan}");
    assert_eq!(attr("! relogin", CLIENT), 3, "{plan}");
    assert!(
        !plan.contains("web-secret") && !plan.contains("webuser"),
        "{plan}"
    );
    // Applied under the three sessions, which keep reading what was written.
    let rotate = out.stdout("rotate");
    let mut lines = rotate.lines();
    assert_eq!(lines.next(), Some("sessions 3"), "{rotate}");
    for l in lines {
        let (a, b) = l.split_once(' ').unwrap_or_default();
        assert_eq!(a, b, "{rotate}");
    }
    let applied = &out.step("rotate").stderr;
    assert!(
        applied.contains("Resources: 0 added, 3 changed"),
        "{applied}"
    );
    assert!(
        !applied.contains("web-secret") && !applied.contains("webuser"),
        "{applied}"
    );
    // A new login needs the new secret; mutual CHAP: a wrong target secret
    // makes the initiator refuse the target, the right one logs in.
    let relogin = out.stdout("relogin");
    let mut lines = relogin.lines();
    assert_eq!(lines.next(), Some("old 24"), "{relogin}");
    assert_eq!(lines.next(), Some("new 0"), "{relogin}");
    let wrong = lines.next().unwrap_or_default();
    assert!(
        wrong.starts_with("wrong-target ") && wrong != "wrong-target 0",
        "{relogin}"
    );
    let mutual = lines.next().unwrap_or_default();
    let parts: Vec<&str> = mutual.split(' ').collect();
    assert!(parts.len() == 3 && parts[1] == parts[2], "{relogin}");

    // Grown while exported: the thin LV, the thick LV and the file. Before a
    // rescan the initiator still sees 64 MiB; after it, 128 MiB for each
    // (the file's fileio LUN raised by the export step).
    let grow = out.stdout("grow");
    let before: Vec<&str> = grow
        .lines()
        .filter_map(|l| l.strip_prefix("before "))
        .collect();
    let after: Vec<&str> = grow
        .lines()
        .filter_map(|l| l.strip_prefix("after "))
        .collect();
    assert_eq!(before, ["67108864"; 3], "{grow}");
    assert_eq!(after, ["134217728"; 3], "{grow}");
    assert_eq!(rc("replan_grown"), 0, "{}", out.report("replan_grown"));
    let grow_log = &out.step("grow").stdout;
    assert!(
        grow_log.contains(
            "~ change     = LUN size 64Mi -> 128Mi (LIO's fileio backstore does not follow its file"
        ),
        "{grow_log}"
    );
    assert!(
        grow_log.contains("Resources: 0 added, 4 changed"),
        "{grow_log}"
    );
    eprintln!(
        "lab export_auth: boot {:.1}s, wall {:.1}s; rotate {:.2}s, grow {:.2}s",
        out.boot.map_or(0.0, |b| b.as_secs_f64()),
        out.wall.as_secs_f64(),
        out.step("rotate").secs,
        out.step("grow").secs
    );
}
