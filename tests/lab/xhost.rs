//! A volume moved between hosts over iSCSI, one VM boot: two hosts in one VM
//! (two agents with `--host stor-a` / `--host stor-b`, two state
//! directories, two volume groups), a real etcd (Debian's `etcd-server`
//! binary, shipped with the scenario), LIO exporting and open-iscsi logging
//! in over 127.0.0.1.
//!
//! Thick on stor-a → thin on stor-b with the destination agent killed
//! mid-copy (`CINDERBLOCK_CRASH_AT=migrate-copy:N`), then back with the
//! source agent killed right after it marked its volume `deleting`
//! (`migrate-verified`); each restart finishes the move. Checked after each
//! move: sha256 kept, uuid and name kept, the thin target sparse, the source
//! LV gone, the volume once, no export or ACL of ours left in configfs, no
//! iSCSI session, no node record, no job key in etcd; and what the
//! destination read in all.

use crate::harness::Scenario;
use base64::Engine as _;

const H: &str = "apiVersion: cinderblock.dev/v1alpha1\n";
const MIB: u64 = 1 << 20;
/// The destination dies once its copy read this much (of 256 MiB).
const KILL_AT: u64 = 160 * MIB;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// `a`/`b` run cinderblock as each host; `start_a`/`start_b [ENV]` start
/// its agent in the background (pid in X.pid, exit status in X.rc);
/// `wait_for T CMD..`; `jobs` prints how many job keys etcd holds;
/// `lv_of VG` the path of the LV named db there; `tag_of VG T` one of its
/// tags; `gone VG` true when no LV of db is in VG; `ready VG` true when db
/// is there and not marked.
fn guest_lib() -> String {
    let from = b64("/cinderblock/v1/jobs/");
    let to = b64("/cinderblock/v1/jobs0");
    format!(
        r#"
E=http://127.0.0.1:2379
a() {{ cinderblock --state sa --host stor-a --etcd $E "$@"; }}
b() {{ cinderblock --state sb --host stor-b --etcd $E "$@"; }}
start() {{ # NAME PORT [ENV]
  n=$1; p=$2; shift 2; rm -f $n.rc
  sh -c "env $* cinderblock --state s$n --host stor-$n --etcd $E agent -f m --resync 3s --listen 127.0.0.1:$p --migration-portal 127.0.0.1:3260 >> $OUT/$n.log 2>&1 &
         echo \$! > $n.pid; wait \$!; echo \$? > $n.rc" &
}}
wait_for() {{ end=$(( $(date +%s) + $1 )); shift; until "$@" >/dev/null 2>&1; do [ $(date +%s) -le $end ] || {{ echo "timed out: $*" >&2; tail -n 40 $OUT/a.log >&2; tail -n 40 $OUT/b.log >&2; return 1; }}; sleep 0.5; done; }}
up() {{ busybox wget -q -O - http://127.0.0.1:$1/readyz; }}
jobs() {{ busybox wget -q -O - --post-data '{{"key":"{from}","range_end":"{to}","count_only":true}}' $E/v3/kv/range | sed -n 's/.*"count":"\([0-9]*\)".*/\1/p' | grep . || echo 0; }}
no_jobs() {{ [ "$(jobs)" = 0 ]; }}
lv_of() {{ lvs --noheadings -o vg_name,lv_path "@cinderblock.name=db" 2>/dev/null | awk -v vg=$1 '$1 == vg {{ print $2 }}'; }}
tag_of() {{ lvs --noheadings -o vg_name,lv_tags "@cinderblock.name=db" | awk -v vg=$1 '$1 == vg {{ print $2 }}' | tr ',' '\n' | sed -n "s/^ *cinderblock.$2=//p"; }}
gone() {{ [ -z "$(lv_of $1)" ]; }}
ready() {{ [ -n "$(lv_of $1)" ] && [ -z "$(tag_of $1 state)" ]; }}
moved() {{ gone $1 && ready $2 && no_jobs; }}
dead() {{ test -f $1.rc; }}
report() {{ # VG: the checks after a move
  echo "sha $(sha256sum $(lv_of $1) | cut -d' ' -f1)"
  echo "uuid $(tag_of $1 uuid)"
  echo "copies $(lvs --noheadings -o lv_name @cinderblock.name=db | grep -c .)"
  echo "lio $(ls /sys/kernel/config/target/iscsi /sys/kernel/config/target/core/* 2>/dev/null | grep -c 'cinderblock')"
  r=0; iscsiadm -m session >/dev/null 2>&1 || r=$?; echo "session-rc $r"
  r=0; iscsiadm -m node >/dev/null 2>&1 || r=$?; echo "node-rc $r"
  echo "jobs $(jobs)"
}}
"#
    )
}

fn volume(backend: &str) -> String {
    format!(
        "{H}kind: Volume\nmetadata:\n  name: db\nspec:\n  size: 256Mi\n  backend: {backend}\n  deletionPolicy: Delete\n"
    )
}

/// The value after `key ` on its line of `text`.
fn field<'t>(text: &'t str, key: &str) -> &'t str {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {key:?} in\n{text}"))
}

/// Bytes a completed copy read, from the agent's note.
fn read_bytes(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.split("read ").nth(1))
        .filter_map(|r| r.split(" bytes over iSCSI").next())
        .filter_map(|n| n.trim().parse().ok())
        .next_back()
        .unwrap_or_else(|| panic!("no 'read N bytes over iSCSI' in the log:\n{log}"))
}

#[allow(clippy::too_many_lines)] // one scenario: its steps, then its checks
#[test]
#[ignore = "needs the VM lab and etcd (tests/lab/install-deps.sh installs etcd-server)"]
fn a_volume_moves_between_hosts_over_iscsi_and_back_surviving_agent_kills() {
    let etcd = std::fs::read("/usr/bin/etcd").unwrap_or_else(|e| {
        panic!("/usr/bin/etcd: {e}: install Debian's etcd-server (bash tests/lab/install-deps.sh)")
    });
    let backends = format!(
        "{H}kind: Backend\nmetadata:\n  name: thick-a\nspec:\n  host: stor-a\n  migrationBandwidth: 32Mi\n  lvm:\n    volumeGroup: vga\n---\n{H}kind: Backend\nmetadata:\n  name: pool-b\nspec:\n  host: stor-b\n  migrationBandwidth: 32Mi\n  lvm:\n    volumeGroup: vgb\n    thinPool: pool0\n    thinPoolSize: 1Gi\n"
    );
    let crash = format!("CINDERBLOCK_CRASH_AT=migrate-copy:{KILL_AT}");
    let out = Scenario::new("xhost")
        .timeout(std::time::Duration::from_secs(1500))
        .file("etcd", etcd)
        .file("lib-x.sh", guest_lib())
        .file("m/backends.yaml", backends)
        .file("m/db.yaml", volume("thick-a"))
        .file("db-b.yaml", volume("pool-b"))
        .file("db-a.yaml", volume("thick-a"))
        .step(
            "setup",
            "pvcreate -y /dev/vda /dev/vdb >/dev/null
             vgcreate vga /dev/vda >/dev/null && vgcreate vgb /dev/vdb >/dev/null
             echo InitiatorName=iqn.1994-05.com.example:lab > /etc/iscsi/initiatorname.iscsi
             iscsid; sleep 0.5
             chmod +x etcd
             ./etcd --data-dir /tmp/etcd --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 > etcd.log 2>&1 &
             . ./lib-x.sh
             wait_for 60 busybox wget -q -O - $E/health",
        )
        .step_limit(std::time::Duration::from_secs(90))
        .step(
            "start",
            &format!(
                ". ./lib-x.sh
                 start a 9471
                 start b 9472 {crash}
                 wait_for 90 up 9471; wait_for 90 up 9472
                 wait_for 90 ready vga"
            ),
        )
        .step_limit(std::time::Duration::from_secs(200))
        .step(
            "data",
            ". ./lib-x.sh
             p=$(lv_of vga)
             dd if=/dev/urandom of=$p bs=1M count=64 oflag=direct 2>/dev/null
             dd if=/dev/urandom of=$p bs=1M count=32 seek=160 oflag=direct 2>/dev/null
             sync
             echo \"sha $(sha256sum $p | cut -d' ' -f1)\"
             echo \"uuid $(tag_of vga uuid)\"",
        )
        .step(
            "to_b_killed",
            ". ./lib-x.sh
             cp db-b.yaml m/db.yaml
             wait_for 400 dead b
             echo \"b-rc $(cat b.rc)\"
             echo \"source $(lv_of vga)\"
             echo \"target-state $(tag_of vgb state)\"",
        )
        .step_limit(std::time::Duration::from_secs(450))
        .step(
            "to_b",
            ". ./lib-x.sh
             start b 9472 CINDERBLOCK_CRASH_AT=migrate-verified
             wait_for 500 moved vga vgb
             report vgb
             echo \"data-mib $(lvs --noheadings --units m --nosuffix -o data_percent,lv_size vgb/pool0 | awk '{printf \"%d\", $1 * $2 / 100}')\"",
        )
        .step_limit(std::time::Duration::from_secs(550))
        .step(
            "to_a_killed",
            ". ./lib-x.sh
             cp db-a.yaml m/db.yaml
             wait_for 500 dead b
             echo \"b-rc $(cat b.rc)\"
             echo \"source-state $(tag_of vgb state)\"",
        )
        .step_limit(std::time::Duration::from_secs(550))
        .step(
            "to_a",
            ". ./lib-x.sh
             start b 9472
             wait_for 300 moved vgb vga
             report vga",
        )
        .step_limit(std::time::Duration::from_secs(350))
        .step(
            "stop",
            ". ./lib-x.sh
             kill -TERM $(cat a.pid) $(cat b.pid)
             wait_for 60 dead a; wait_for 60 dead b
             echo \"exit $(cat a.rc) $(cat b.rc)\"",
        )
        .run();
    let data = out.stdout("data");
    let (sha, uuid) = (field(data, "sha"), field(data, "uuid"));
    let killed = out.stdout("to_b_killed");
    assert_eq!(
        field(killed, "b-rc"),
        "137",
        "SIGKILLed mid-copy\n{}",
        out.report("to_b_killed")
    );
    assert!(
        !field(killed, "source").is_empty(),
        "the source is kept while the copy is unfinished"
    );
    assert_eq!(field(killed, "target-state"), "migrating");
    let a_log = out.text("a.log");
    let b_log = out.text("b.log");
    for (step, vg) in [("to_b", "vgb"), ("to_a", "vga")] {
        let r = out.stdout(step);
        assert_eq!(
            field(r, "sha"),
            sha,
            "{step}: sha256 kept\n{}",
            out.report(step)
        );
        assert_eq!(field(r, "uuid"), uuid, "{step}: identity kept on {vg}");
        assert_eq!(field(r, "copies"), "1", "{step}: the volume exists once");
        assert_eq!(
            field(r, "lio"),
            "0",
            "{step}: nothing of ours left in configfs"
        );
        assert_eq!(
            field(r, "session-rc"),
            "21",
            "{step}: no iSCSI session left"
        );
        assert_eq!(field(r, "node-rc"), "21", "{step}: no node record left");
        assert_eq!(field(r, "jobs"), "0", "{step}: no job key left in etcd");
    }
    // 96 MiB of data in a thick 256 MiB volume: the thin target holds
    // about that (zero blocks not written).
    let data_mib: u64 = field(out.stdout("to_b"), "data-mib").parse().unwrap();
    assert!(
        (90..=110).contains(&data_mib),
        "thin target holds {data_mib} MiB"
    );
    // What the destination read over iSCSI: the killed run (at least
    // KILL_AT, less than one more 8 MiB I/O) and the resumed one.
    let resumed = read_bytes(&b_log);
    let total = KILL_AT + 8 * MIB + resumed;
    assert!(
        b_log.contains("resumed at byte"),
        "the restarted destination resumed from a checkpoint:\n{b_log}"
    );
    assert!(
        total < 256 * MIB * 3 / 2,
        "read {total} bytes in all for a 256 MiB volume"
    );
    let killed = out.stdout("to_a_killed");
    assert_eq!(
        field(killed, "b-rc"),
        "137",
        "{}",
        out.report("to_a_killed")
    );
    assert_eq!(
        field(killed, "source-state"),
        "deleting",
        "killed after the verification"
    );
    assert_eq!(out.stdout("stop"), "exit 0 0", "{a_log}\n{b_log}");
    println!(
        "destination read {} MiB (killed at {} MiB, then {} MiB); steps: to_b {:.0}s, to_a {:.0}s",
        total / MIB,
        KILL_AT / MIB,
        resumed / MIB,
        out.step("to_b").secs + out.step("to_b_killed").secs,
        out.step("to_a").secs + out.step("to_a_killed").secs,
    );
}
