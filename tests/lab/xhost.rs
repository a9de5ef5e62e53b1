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
//!
//! Then a volume with two snapshots (different data written before each)
//! moves thick stor-a → thin stor-b with `migrateSnapshots: true`: every
//! snapshot's sha256 equal to its point in time before the move, uuids and
//! names kept, the snapshots their volume's on the target, the thin chain's
//! pool usage on stor-b within 10 % of the data the chain holds (what a thin
//! source chain of it uses: the thick source has no pool), the source chain
//! gone, nothing left in configfs, no session, no node record, no job.
//!
//! `iscsiadm` is wrapped for the whole run: every argument vector it gets is
//! logged (what `/proc/PID/cmdline` shows), and at each `--login` the node
//! records' modes and CHAP passwords are noted: no command line may hold a
//! secret or `node.session.auth.password`, and every record holding one is
//! mode 600.

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
lvn() {{ lvs --noheadings -o vg_name,lv_path "@cinderblock.name=$1" 2>/dev/null | awk -v vg=$2 '$1 == vg {{ print $2 }}'; }}
tagn() {{ lvs --noheadings -o vg_name,lv_tags "@cinderblock.name=$1" | awk -v vg=$2 '$1 == vg {{ print $2 }}' | tr ',' '\n' | sed -n "s/^ *cinderblock.$3=//p"; }}
readyn() {{ [ -n "$(lvn $1 $2)" ] && [ -z "$(tagn $1 $2 state)" ]; }}
pool_mib() {{ lvs --noheadings --units k --nosuffix -o data_percent,lv_size vgb/pool0 | awk '{{printf "%d", $1 * $2 / 100 / 1024 + 0.5}}'; }}
chain_moved() {{ for n in ch s1 s2; do [ -z "$(lvn $n vga)" ] && readyn $n vgb || return 1; done; no_jobs; }}
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

/// The volume that moves with its snapshots.
fn chain_volume(backend: &str) -> String {
    format!(
        "{H}kind: Volume\nmetadata:\n  name: ch\nspec:\n  size: 64Mi\n  backend: {backend}\n  migrateSnapshots: true\n  deletionPolicy: Delete\n"
    )
}

fn snapshot(name: &str) -> String {
    format!(
        "{H}kind: Snapshot\nmetadata:\n  name: {name}\nspec:\n  volume: ch\n  deletionPolicy: Delete\n"
    )
}

/// `iscsiadm` wrapped: each argument vector into `$OUT/iscsiadm-argv.log`;
/// at a login, each node record's mode and CHAP password into
/// `$OUT/iscsiadm-records.log` and `/tmp/secrets` (kept in the guest).
const WRAP_ISCSIADM: &str = r#"#!/bin/sh
echo "$*" >> $OUT/iscsiadm-argv.log
case " $* " in
*" --login "*)
  for f in $(find /etc/iscsi/nodes /var/lib/iscsi/nodes -type f 2>/dev/null); do
    p=$(sed -n 's/^node.session.auth.password = //p' "$f")
    [ -n "$p" ] || continue
    echo "$(stat -c %a "$f") $f" >> $OUT/iscsiadm-records.log
    echo "$p" >> /tmp/secrets
  done;;
esac
exec /usr/sbin/iscsiadm.real "$@"
"#;

/// The value after `key ` on its line of `text`.
fn field<'t>(text: &'t str, key: &str) -> &'t str {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {key:?} in\n{text}"))
}

/// Bytes the last completed copy of volume db read, from the agent's note.
fn read_bytes(log: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains(" volume=db "))
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
        .file("ch-b.yaml", chain_volume("pool-b"))
        .file("s1.yaml", snapshot("s1"))
        .file("s2.yaml", snapshot("s2"))
        .file("iscsiadm-wrap", WRAP_ISCSIADM)
        .step(
            "setup",
            "pvcreate -y /dev/vda /dev/vdb >/dev/null
             vgcreate vga /dev/vda >/dev/null && vgcreate vgb /dev/vdb >/dev/null
             echo InitiatorName=iqn.1994-05.com.example:lab > /etc/iscsi/initiatorname.iscsi
             mv /usr/sbin/iscsiadm /usr/sbin/iscsiadm.real
             sed \"s|\\$OUT|$OUT|g\" iscsiadm-wrap > /usr/sbin/iscsiadm && chmod 755 /usr/sbin/iscsiadm
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
            "chain_data",
            ". ./lib-x.sh
             sed 's/pool-b/thick-a/' ch-b.yaml > m/ch.yaml
             wait_for 120 readyn ch vga
             p=$(lvn ch vga)
             dd if=/dev/urandom of=$p bs=1M count=8 oflag=direct 2>/dev/null; sync
             echo \"at-s1 $(sha256sum $p | cut -d' ' -f1)\"
             cp s1.yaml m/s1.yaml
             wait_for 120 readyn s1 vga
             dd if=/dev/urandom of=$p bs=1M count=8 seek=16 oflag=direct 2>/dev/null; sync
             echo \"at-s2 $(sha256sum $p | cut -d' ' -f1)\"
             cp s2.yaml m/s2.yaml
             wait_for 120 readyn s2 vga
             dd if=/dev/urandom of=$p bs=1M count=8 seek=32 oflag=direct 2>/dev/null; sync
             echo \"at-ch $(sha256sum $p | cut -d' ' -f1)\"
             for n in ch s1 s2; do
               echo \"src-sha-$n $(sha256sum $(lvn $n vga) | cut -d' ' -f1)\"
               echo \"uuid-$n $(tagn $n vga uuid)\"
             done
             echo \"pool-before $(pool_mib)\"",
        )
        .step_limit(std::time::Duration::from_secs(400))
        .step(
            "chain_to_b",
            ". ./lib-x.sh
             cp ch-b.yaml m/ch.yaml
             wait_for 600 chain_moved
             for n in ch s1 s2; do
               echo \"sha-$n $(sha256sum $(lvn $n vgb) | cut -d' ' -f1)\"
               echo \"uuid-$n $(tagn $n vgb uuid)\"
               echo \"origin-$n $(lvs --noheadings -o origin $(lvn $n vgb) | tr -d ' ')\"
               echo \"lv-$n $(basename $(lvn $n vgb))\"
             done
             echo \"pool-after $(pool_mib)\"
             echo \"left-on-a $(for n in ch s1 s2; do lvn $n vga; done | grep -c . || true)\"
             echo \"lio $(ls /sys/kernel/config/target/iscsi /sys/kernel/config/target/core/* 2>/dev/null | grep -c 'cinderblock')\"
             r=0; iscsiadm -m session >/dev/null 2>&1 || r=$?; echo \"session-rc $r\"
             r=0; iscsiadm -m node >/dev/null 2>&1 || r=$?; echo \"node-rc $r\"
             echo \"jobs $(jobs)\"
             n=0; for x in $(sort -u /tmp/secrets); do grep -qF -- \"$x\" $OUT/iscsiadm-argv.log && n=$((n+1)); for f in /proc/[0-9]*/cmdline; do { tr '\\0' ' ' < $f; } 2>/dev/null | grep -qF -- \"$x\" && n=$((n+1)); done; done
             echo \"secrets $(sort -u /tmp/secrets | grep -c .)\"
             echo \"secret-in-argv $n\"",
        )
        .step_limit(std::time::Duration::from_secs(650))
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
    let (chain_secs, chain_mib) = check_chain(&out);
    check_no_secret_on_a_command_line(&out);
    println!(
        "destination read {} MiB (killed at {} MiB, then {} MiB); steps: to_b {:.0}s, to_a {:.0}s, chain to_b {chain_secs:.0}s (pool-b grew {chain_mib} MiB for the chain's 24 MiB of data)",
        total / MIB,
        KILL_AT / MIB,
        resumed / MIB,
        out.step("to_b").secs + out.step("to_b_killed").secs,
        out.step("to_a").secs + out.step("to_a_killed").secs,
    );
}

/// The chain's move: each snapshot's point in time, identities, the chain
/// on the target, its pool usage, nothing left behind. Its seconds and the
/// MiB the target's pool grew by.
fn check_chain(out: &crate::harness::Outcome) -> (f64, u64) {
    let before = out.stdout("chain_data");
    let after = out.stdout("chain_to_b");
    let report = out.report("chain_to_b");
    // Each source object held its point in time (the snapshots were taken
    // when their manifests said), and each target holds it.
    for (n, at) in [("s1", "at-s1"), ("s2", "at-s2"), ("ch", "at-ch")] {
        assert_eq!(
            field(before, &format!("src-sha-{n}")),
            field(before, at),
            "{n} on stor-a holds its point in time\n{}",
            out.report("chain_data")
        );
        assert_eq!(
            field(after, &format!("sha-{n}")),
            field(before, at),
            "{n} moved with its point in time\n{report}"
        );
        assert_eq!(
            field(after, &format!("uuid-{n}")),
            field(before, &format!("uuid-{n}")),
            "{n} kept its identity"
        );
    }
    assert_ne!(field(before, "at-s1"), field(before, "at-s2"));
    assert_ne!(field(before, "at-s2"), field(before, "at-ch"));
    // A chain on the target: both snapshots are thin snapshots of the volume.
    let vol_lv = field(after, "lv-ch");
    for n in ["s1", "s2"] {
        assert_eq!(
            field(after, &format!("origin-{n}")),
            vol_lv,
            "{n} is a snapshot of the volume on stor-b\n{report}"
        );
    }
    // 24 MiB of distinct data: a thin chain of it uses that much.
    let mib = |text: &str, k: &str| -> u64 {
        field(text, k)
            .parse()
            .unwrap_or_else(|e| panic!("{k}: {e}\n{report}"))
    };
    let used = mib(after, "pool-after").saturating_sub(mib(before, "pool-before"));
    assert!(
        (22..=26).contains(&used),
        "the thin chain uses {used} MiB of pool-b for 24 MiB of data\n{report}"
    );
    for (k, want) in [
        ("left-on-a", "0"),
        ("lio", "0"),
        ("session-rc", "21"),
        ("node-rc", "21"),
        ("jobs", "0"),
    ] {
        assert_eq!(field(after, k), want, "chain: {k}\n{report}");
    }
    (out.step("chain_to_b").secs, used)
}

/// Every `iscsiadm` argument vector of the run (three moves, five logins
/// with the chain's), and `/proc/*/cmdline` after the chain's move: no
/// CHAP secret, no password setting; every node record holding one is
/// mode 600.
fn check_no_secret_on_a_command_line(out: &crate::harness::Outcome) {
    let argv = out.text("iscsiadm-argv.log");
    let logins = argv.lines().filter(|l| l.contains("--login")).count();
    assert!(logins >= 5, "{logins} logins recorded:\n{argv}");
    assert!(
        !argv.contains("auth.password"),
        "a password setting on a command line:\n{argv}"
    );
    let after = out.stdout("chain_to_b");
    assert!(
        field(after, "secrets").parse::<u32>().unwrap_or(0) >= 3,
        "a secret per job was seen in the node records\n{after}"
    );
    assert_eq!(field(after, "secret-in-argv"), "0", "{argv}");
    let records = out.text("iscsiadm-records.log");
    assert!(!records.is_empty());
    for l in records.lines() {
        assert!(l.starts_with("600 "), "a node record with the secret: {l}");
    }
}
