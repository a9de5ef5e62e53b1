//! Backup targets on real parts, one VM boot each:
//! 1. a repository on an NFS share that cinderblock mounts itself (the
//!    kernel nfsd exports an ext4 LV over 127.0.0.1, NFSv4.2): full and
//!    incremental runs of a thin LV and a volume file, verify, export and
//!    import of a record, `import --policy` and `import --scan` after the
//!    catalogue is lost, prune by retention, the share unmounted and
//!    mounted again by the next command; every restore compared by sha256
//!    and sparse (a thin LV mapped only where the data is, a file with
//!    holes);
//! 2. eight thin volumes of one pool backed up at once by the agent: all
//!    succeed (one reserved metadata snapshot shared, no `EBUSY`), eight
//!    ran together, and none is left held.

use std::fmt::Write as _;

use crate::harness::Scenario;

const MIB: u64 = 1 << 20;

const GUEST_LIB: &str = r#"
cb() { cinderblock --state st --host lab "$@"; }
lv_path() { p=$(lvs --noheadings -o lv_path "@cinderblock.name=$1" | tr -d ' '); [ -n "$p" ] || { echo "no LV named $1" >&2; return 1; }; echo "$p"; }
file_of() { f=$(grep -l "\"name\": *\"$1\"" /srv/vols/.cinderblock/*.json 2>/dev/null | head -n 1); [ -n "$f" ] || { echo "no volume file named $1" >&2; return 1; }; u=$(basename "$f" .json); echo "/srv/vols/volume-$u"; }
field() { sed "s/.*\"$2\":\"\{0,1\}\([^,\"}]*\).*/\1/" "$1"; }
"#;

/// The NFS server of `nfs.rs` (rpcbind before rpc.nfsd, nfsdcld so the
/// kernel skips the grace period), exporting an ext4 LV of `nfsvg`.
const NFS_SERVER: &str = "pvcreate -y /dev/vdb >/dev/null && vgcreate nfsvg /dev/vdb >/dev/null
     lvcreate -y -n share1 -L 1G nfsvg >/dev/null
     lvcreate -y -n vols -L 512M nfsvg >/dev/null
     mkfs.ext4 -q -F /dev/nfsvg/share1
     mkfs.ext4 -q -F /dev/nfsvg/vols
     mkdir -p /srv/nfs/share1 /srv/vols
     mount -t ext4 /dev/nfsvg/share1 /srv/nfs/share1
     mount -t ext4 /dev/nfsvg/vols /srv/vols
     mount -t nfsd nfsd /proc/fs/nfsd
     mount -t rpc_pipefs sunrpc /var/lib/nfs/rpc_pipefs
     echo 10 > /proc/fs/nfsd/nfsv4leasetime
     echo 10 > /proc/fs/nfsd/nfsv4gracetime
     rpcbind -w
     echo '/srv/nfs/share1 127.0.0.1(rw,sync,no_subtree_check,no_root_squash)' > /etc/exports
     exportfs -ra
     rpc.mountd
     nfsdcld
     sleep 0.5
     rpc.nfsd 4";

const NFS_SITE: &str = "apiVersion: cinderblock.dev/v1alpha1
kind: Backend
metadata: {name: thin}
spec:
  host: lab
  lvm: {volumeGroup: tv, thinPool: pool0, thinPoolSize: 1Gi}
---
apiVersion: cinderblock.dev/v1alpha1
kind: Backend
metadata: {name: files}
spec:
  host: lab
  file: {path: /srv/vols}
---
apiVersion: cinderblock.dev/v1alpha1
kind: BackupPolicy
metadata: {name: nightly}
spec:
  schedule: \"0 2 * * *\"
  target:
    share: 127.0.0.1:/srv/nfs/share1
    path: /mnt/backup
    mountOptions: vers=4.2
  retention: {keepLast: 1}
---
apiVersion: cinderblock.dev/v1alpha1
kind: Volume
metadata: {name: tvol}
spec: {size: 128Mi, backend: thin, backupPolicy: nightly}
---
apiVersion: cinderblock.dev/v1alpha1
kind: Volume
metadata: {name: fvol}
spec: {size: 64Mi, backend: files, backupPolicy: nightly}
";

fn sh(body: &str) -> String {
    format!(". ./lib.sh\n{body}")
}

/// The JSON summaries of `backup run --json`, by volume name.
fn runs(text: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON summary: {e}: {l}"));
            (v["volume"].as_str().unwrap_or("?").to_owned(), v)
        })
        .collect()
}

#[test]
#[ignore = "needs the VM lab"]
#[allow(clippy::too_many_lines)] // one VM boot: the steps, then what they showed
fn a_repository_on_an_nfs_share_cinderblock_mounts_round_trips() {
    let out = Scenario::new("backup-nfs")
        .file("lib.sh", GUEST_LIB)
        .file("m/site.yaml", NFS_SITE)
        .step("server", NFS_SERVER)
        .step(
            "setup",
            "pvcreate -y /dev/vda >/dev/null && vgcreate tv /dev/vda >/dev/null
             dd if=/dev/urandom of=/tmp/a bs=1M count=24 2>/dev/null
             dd if=/dev/urandom of=/tmp/b bs=1M count=8 2>/dev/null",
        )
        .step("apply", &sh("cb apply -f m --auto-approve >/dev/null"))
        .step(
            "write",
            &sh("t=$(lv_path tvol); f=$(file_of fvol)
                 dd if=/tmp/a of=$t bs=1M oflag=direct conv=fsync 2>/dev/null
                 dd if=/tmp/b of=$t bs=1M seek=96 oflag=direct conv=fsync 2>/dev/null
                 dd if=/tmp/b of=$f bs=1M count=4 conv=notrunc,fsync 2>/dev/null
                 dd if=/tmp/b of=$f bs=1M count=4 seek=32 conv=notrunc,fsync 2>/dev/null
                 echo $(sha < $t) $(sha < $f)"),
        )
        .step(
            "full",
            &sh("cb backup run --policy nightly --full --json -f m
                 grep ' /mnt/backup ' /proc/mounts > $OUT/mounted.txt"),
        )
        .step(
            "change",
            &sh("t=$(lv_path tvol); f=$(file_of fvol)
                 dd if=/tmp/b of=$t bs=1M count=4 seek=64 oflag=direct conv=fsync 2>/dev/null
                 dd if=/tmp/a of=$f bs=1M count=1 seek=8 conv=notrunc,fsync 2>/dev/null
                 echo $(sha < $t) $(sha < $f)"),
        )
        .step(
            "inc",
            &sh("cb backup run --policy nightly --incremental --json -f m | tee /tmp/inc.json"),
        )
        .step("verify", &sh("cb backup verify --all"))
        .step(
            "export",
            &sh("grep '\"volume\":\"tvol\"' /tmp/inc.json > /tmp/tinc.json
                 id=$(field /tmp/tinc.json id)
                 cb backup export $id > /tmp/tinc.record
                 echo $id"),
        )
        // the state directory's catalogue is lost: one record imported by
        // hand, the mounted directory scanned, then rebuilt from the
        // policy's share (the entries that reopen it by mounting)
        .step(
            "import",
            &sh("rm st/backup-catalog.json
                 cb backup import /tmp/tinc.record
                 cb backup import --scan /mnt/backup
                 rm st/backup-catalog.json
                 cb backup import --policy nightly -f m
                 cb backup list"),
        )
        // nothing mounted: the restore mounts the share again
        .step(
            "restore",
            &sh("umount /mnt/backup
                 for v in tvol fvol; do
                   for k in full inc; do
                     id=$(cb backup list $v | awk -v k=$k '$5 == (k == \"full\" ? \"full\" : \"incremental\") {print $1}' | tail -n 1)
                     cb backup restore $id --to $v-$k -f m >/dev/null
                   done
                 done
                 grep -c ' /mnt/backup ' /proc/mounts"),
        )
        .step("tfull", &sh("sha < $(lv_path tvol-full)"))
        .step("tinc", &sh("sha < $(lv_path tvol-inc)"))
        .step(
            "fsums",
            &sh("echo $(sha < $(file_of fvol-full)) $(sha < $(file_of fvol-inc))"),
        )
        .step(
            "sparse",
            &sh("lvs --noheadings -o data_percent $(lv_path tvol-inc) | tr -d ' '
                 stat -c '%s %b' $(file_of fvol-inc)"),
        )
        .step("prune", &sh("cb backup prune -f m && cb backup list"))
        .step("clean", &sh("cb backup verify --all"))
        .step(
            "again",
            &sh("id=$(cb backup list tvol | awk '$5 == \"incremental\" {print $1}')
                 cb backup restore $id --to tvol-again -f m >/dev/null
                 sha < $(lv_path tvol-again)"),
        )
        .timeout(std::time::Duration::from_secs(900))
        .run();
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
    assert_eq!(written.len(), 2, "{}", out.report("write"));

    // cinderblock mounted the share where the policy says
    let mounted = out.text("mounted.txt");
    assert!(
        mounted.starts_with("127.0.0.1:/srv/nfs/share1 /mnt/backup nfs4 ")
            && mounted.contains("vers=4.2"),
        "{mounted}"
    );
    let full = runs(out.stdout("full"));
    let inc = runs(out.stdout("inc"));
    for v in ["tvol", "fvol"] {
        assert_eq!(full[v]["kind"], "full", "{}", full[v]);
        assert_eq!(inc[v]["kind"], "incremental", "{}", inc[v]);
        assert_eq!(inc[v]["parent"], full[v]["id"], "{}", inc[v]);
        assert_eq!(
            inc[v]["repository"], "/mnt/backup",
            "the repository is on the share: {}",
            inc[v]
        );
    }
    // only what changed is read of the thin LV: 4 MiB
    let read = inc["tvol"]["readBytes"].as_u64().unwrap_or(0);
    assert!(
        (4 * MIB..=4 * MIB + 512 * 1024).contains(&read),
        "{}",
        inc["tvol"]
    );
    assert_eq!(inc["tvol"]["read"]["method"], "changedRanges");
    // the file's data extents only: 8 MiB of 64, then 9 MiB
    assert_eq!(
        full["fvol"]["readBytes"].as_u64(),
        Some(8 * MIB),
        "{}",
        full["fvol"]
    );
    assert_eq!(inc["fvol"]["read"]["method"], "allocatedScan");

    let verify = out.stdout("verify");
    assert!(
        verify.matches("ok       ").count() == 4 && verify.contains("0 missing, 0 corrupt"),
        "{verify}"
    );
    let import = out.stdout("import");
    assert!(
        import.contains("scanned /mnt/backup") && import.contains(": 4 backup(s) in the catalogue"),
        "{import}"
    );
    assert_eq!(
        import
            .lines()
            .filter(|l| l.starts_with("scanned /mnt/backup"))
            .count(),
        2,
        "--scan and --policy: {import}"
    );
    assert!(
        import.contains(&format!(
            "imported backup {} of volume tvol",
            out.stdout("export")
        )),
        "{import}"
    );

    let mut restored = vec![
        out.stdout("tfull").to_owned(),
        out.stdout("tinc").to_owned(),
    ];
    restored.extend(sums("fsums"));
    assert_eq!(restored.len(), 4, "{}", out.report("fsums"));
    assert_eq!(out.stdout("restore"), "1", "the share mounted again, once");
    assert_eq!(restored[0], written[0], "thin full restore");
    assert_eq!(restored[1], changed[0], "thin incremental restore");
    assert_eq!(restored[2], written[1], "file full restore");
    assert_eq!(restored[3], changed[1], "file incremental restore");

    // sparse: the thin LV is mapped only where the data is (36 MiB of
    // 128), the file allocates 9 MiB of 64
    let sparse: Vec<&str> = out.stdout("sparse").split_whitespace().collect();
    let pct: f64 = sparse[0].parse().unwrap_or(100.0);
    assert!(pct < 32.0, "restored thin LV {pct} % mapped");
    let blocks: u64 = sparse[2].parse().unwrap_or(u64::MAX);
    assert!(
        blocks * 512 <= 10 * MIB,
        "restored file allocates {} bytes",
        blocks * 512
    );

    // retention keeps the last of each volume; the fulls are forgotten and
    // the chunks only they used swept; what is kept restores identical
    let pruned = out.stdout("prune");
    assert!(pruned.contains("forgot 2 backup(s)"), "{pruned}");
    let rows: Vec<&str> = pruned
        .lines()
        .filter(|l| l.contains("tvol ") || l.contains("fvol "))
        .filter(|l| !l.contains("volume "))
        .collect();
    assert_eq!(rows.len(), 2, "{pruned}");
    assert!(rows.iter().all(|l| l.contains(" incremental ")), "{pruned}");
    let clean = out.stdout("clean");
    assert!(clean.contains("0 missing, 0 corrupt"), "{clean}");
    assert_eq!(out.stdout("again"), changed[0], "restored after prune");
}

const EIGHT: &str = "apiVersion: cinderblock.dev/v1alpha1
kind: Backend
metadata: {name: thin}
spec:
  host: lab
  lvm: {volumeGroup: tv, thinPool: pool0, thinPoolSize: 2Gi}
---
apiVersion: cinderblock.dev/v1alpha1
kind: BackupPolicy
metadata: {name: minutely}
spec:
  schedule: \"* * * * *\"
  target: {path: /tmp/repo}
";

/// `wait_for TIMEOUT CMD...` and `get PATH` of `agent.rs`; `poll SECONDS`
/// watches until every volume has a successful backup or the time is up,
/// keeping the most backups seen running together in /tmp/max.
const AGENT_LIB: &str = r#"
wait_for() { t=$1; shift; i=0; until "$@" >/dev/null 2>&1; do i=$((i+1)); [ $i -le $((t*5)) ] || { echo "timed out: $*" >&2; tail -n 40 agent.log >&2; return 1; }; sleep 0.2; done; }
get() { busybox wget -q -O - "http://127.0.0.1:9470$1"; }
successes() { get /metrics | grep -c '^cinderblock_backup_runs_total{.*result="success"}'; }
all_done() { [ "$(successes)" = 8 ]; }
poll() {
  max=$(cat /tmp/max 2>/dev/null || echo 0); i=0
  while ! all_done && [ $i -lt $(($1*5)) ]; do
    n=$(get /metrics | sed -n 's/^cinderblock_backups_running \([0-9]*\).*/\1/p')
    [ "${n:-0}" -gt "$max" ] && max=$n
    echo $max > /tmp/max
    i=$((i+1)); sleep 0.2
  done
  echo "$(successes) done, at most $(cat /tmp/max 2>/dev/null || echo 0) together"
}
"#;

#[test]
#[ignore = "needs the VM lab"]
fn eight_thin_volumes_of_one_pool_backed_up_at_once_all_succeed() {
    let mut site = EIGHT.to_owned();
    for i in 1..=8 {
        let _ = write!(
            site,
            "---\napiVersion: cinderblock.dev/v1alpha1\nkind: Volume\nmetadata: {{name: v{i}}}\nspec: {{size: 64Mi, backend: thin, backupPolicy: minutely}}\n"
        );
    }
    let out = Scenario::new("backup-eight")
        .file("lib.sh", GUEST_LIB)
        .file("lib-agent.sh", AGENT_LIB)
        .file("m/site.yaml", site)
        .step(
            "setup",
            &sh("pvcreate -y /dev/vda >/dev/null && vgcreate tv /dev/vda >/dev/null
                 cb apply -f m --auto-approve >/dev/null"),
        )
        .step(
            "write",
            &sh("for i in 1 2 3 4 5 6 7 8; do
                   dd if=/dev/urandom of=$(lv_path v$i) bs=1M count=8 oflag=direct conv=fsync 2>/dev/null
                 done"),
        )
        .step(
            "agent",
            ". ./lib-agent.sh
             sh -c 'cinderblock --state st --host lab agent -f m --resync 1h --max-backups 8 --shutdown-grace 200s --listen 127.0.0.1:9470 > agent.log 2>&1 &
                    echo $! > agent.pid; wait $!; echo $? > agent.rc' &
             wait_for 60 get /readyz",
        )
        // the next minute's slot: every volume due at once (each step has
        // two minutes)
        .step("wait1", ". ./lib-agent.sh; poll 100")
        .step("wait2", ". ./lib-agent.sh; poll 100")
        .step("wait3", ". ./lib-agent.sh; poll 100")
        .step(
            "done",
            ". ./lib-agent.sh; all_done || { tail -n 60 agent.log >&2; exit 1; }; cat /tmp/max",
        )
        // The minute's next round may be in flight: under the lab's
        // emulation a thin backup's point in time alone takes ~30 s (well
        // under a second on hardware), so the agent gets the grace to
        // finish it; past the grace it would abandon the backup, and a
        // metadata snapshot held by an abandoned one is released only by
        // the next run's reserve (lvm::thinmap).
        .step(
            "stop",
            ". ./lib-agent.sh
             kill -TERM $(cat agent.pid)
             wait_for 220 test -f agent.rc
             cat agent.rc
             dmsetup status tv-pool0-tpool | awk '{print $7}'
             grep -c 'EBUSY\\|Device or resource busy' agent.log || true
             cp agent.log $OUT/agent.log",
        )
        .step_limit(std::time::Duration::from_secs(240))
        .timeout(std::time::Duration::from_secs(1100))
        .run();
    assert_eq!(out.step("done").rc, Some(0), "{}", out.report("done"));
    let max: u32 = out.stdout("done").parse().unwrap_or(0);
    assert_eq!(max, 8, "eight backups ran together: {}", out.report("done"));
    let stop: Vec<&str> = out.stdout("stop").lines().collect();
    assert_eq!(
        stop,
        ["0", "-", "0"],
        "exit 0, no metadata snapshot held, no EBUSY: {}",
        out.report("stop")
    );
    let log = out.text("agent.log");
    for i in 1..=8 {
        assert!(
            log.lines()
                .any(|l| l.contains("scheduled backup done") && l.contains(&format!("v{i}"))),
            "v{i} backed up: {log}"
        );
    }
    assert!(!log.contains("backup failed"), "{log}");
}
