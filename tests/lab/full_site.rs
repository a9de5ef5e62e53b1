//! `examples/full-site` as shipped, on the real kernel, one VM boot.
//!
//! The example's files go into the guest byte for byte; the steps only build
//! what an admin of host `storage1` would have before the first apply: the
//! volume groups `cinder-ssd` and `cinder-hdd` on two disks big enough for
//! the declared sizes (sparse on the lab host: 600 GiB and 4.5 TiB, of which
//! a few MiB are ever written), an NFS server exporting `/srv/cinder` (ext4
//! on a sparse file, kernel nfsd over loopback) with `nfs1.example.com` in
//! `/etc/hosts`, the portal address `10.0.0.10` on the host, the CHAP secret
//! file and variable, the raw image file, and the backup target directory.
//!
//! Then what a user does and checks: `validate`; `plan` (exit 2, the key
//! lines); `apply`; `plan` again ("No changes", the restore of `archive`'s
//! latest backup waiting for the first one); every volume once with its
//! declared size on the back end its type leads to; the group snapshot's
//! two member snapshots; the pool made at 500 GiB; `reports-scratch`
//! preallocated on the share; both iSCSI exports in configfs with their
//! ACLs and CHAP users, and a login with the secret from initiator `db1`
//! that reads what was written; the image and its clone sha256-equal to the
//! raw file; a group backup of `orders-db` and `restore --group` into new
//! volumes, sha256-equal to the members.
//!
//! Not here, and why: `archive` is a 2 TiB thick LV, and a backup of a thick
//! LV reads all of it (its point in time is a COW snapshot read whole):
//! hours under TCG, so `archive-restore-test` is checked to wait for that
//! first backup (the planner's rule for `source.backup` with `id: latest`)
//! rather than restored. The `offsite` policy's S3 bucket is not reachable
//! from the lab and no volume uses it; the agent's schedules are
//! `agent.rs`'s and the backup suites' to check.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::harness::{Outcome, Scenario};

const GIB: u64 = 1 << 30;

/// Helpers sourced by the steps: `cb` is cinderblock as the host runs it
/// (state in `/var/lib/cinderblock`, host `storage1`, the CHAP variable
/// `orders-wal` reads); `lv NAME` the LV path of our object NAME; `uuid_of
/// NAME` its identity; `layer NAME` its data path once a group snapshot
/// gave it the I/O layer.
const LIB: &str = r#"
export ORDERS_CHAP='orders-wal:wal-secret-0002'
cb() { cinderblock --state /var/lib/cinderblock --host storage1 "$@"; }
lv() {
  p=$(lvs --noheadings -o vg_name,lv_name "@cinderblock.name=$1" | awk '{print "/dev/" $1 "/" $2}')
  [ -n "$p" ] || { echo "no LV named $1" >&2; return 1; }
  echo "$p"
}
uuid_of() { lvs --noheadings -o lv_tags "@cinderblock.name=$1" | tr ',' '\n' | sed -n 's/^ *cinderblock.uuid=//p'; }
layer() { echo "/dev/mapper/cinderblock-$(uuid_of $1)"; }
# sha256 of COUNT MiB at MiB offset SKIP of a device
sha_at() { dd if="$1" bs=1M skip="$2" count="$3" iflag=direct 2>/dev/null | sha; }
T=/sys/kernel/config/target
"#;

/// The admin's preparation: volume groups, the NFS server of `nfs.rs`
/// (rpcbind before rpc.nfsd, nfsdcld so the kernel skips the grace period)
/// for `nfs1.example.com:/srv/cinder`, the portal address.
const ENVIRONMENT: &str = "pvcreate -y /dev/vda /dev/vdb >/dev/null
     vgcreate cinder-ssd /dev/vda >/dev/null
     vgcreate cinder-hdd /dev/vdb >/dev/null
     # the share: ext4 on a sparse 160 GiB file (few inodes, no journal or
     # inode-table zeroing: only metadata is ever written)
     mkdir -p /var/nfs /srv/cinder
     truncate -s 160G /var/nfs/cinder.img
     d=$(losetup -f); losetup $d /var/nfs/cinder.img
     mkfs.ext4 -q -F -m 0 -T largefile4 -E lazy_itable_init=1,lazy_journal_init=1,nodiscard $d
     mount -t ext4 -o noinit_itable $d /srv/cinder
     echo '127.0.0.1 localhost' > /etc/hosts
     echo '127.0.0.1 nfs1.example.com' >> /etc/hosts
     echo 'hosts: files' > /etc/nsswitch.conf
     mount -t nfsd nfsd /proc/fs/nfsd
     mount -t rpc_pipefs sunrpc /var/lib/nfs/rpc_pipefs
     echo 10 > /proc/fs/nfsd/nfsv4leasetime
     echo 10 > /proc/fs/nfsd/nfsv4gracetime
     rpcbind -w
     echo '/srv/cinder 127.0.0.1(rw,sync,no_subtree_check,no_root_squash)' > /etc/exports
     exportfs -ra
     rpc.mountd
     nfsdcld
     sleep 0.5
     rpc.nfsd 4
     # the storage network address the orders-data portal names
     ip addr add 10.0.0.10/32 dev lo
     vgs --noheadings --units b --nosuffix -o vg_name,vg_size";

/// The files the manifests name: the CHAP secret of `orders-data`, the raw
/// image (32 MiB with data in three places: a real one is 2 GiB, and every
/// MiB costs a sha256 under emulation), the backup target.
const ADMIN_FILES: &str = "mkdir -p /etc/cinderblock/secrets /srv/images /srv/backup/cinderblock
     printf 'orders-data:data-secret-0001\\n' > /etc/cinderblock/secrets/orders-chap
     chmod 600 /etc/cinderblock/secrets/orders-chap
     i=/srv/images/debian-12-genericcloud-amd64.raw
     truncate -s 32M $i
     dd if=/dev/urandom of=$i bs=1M count=2 conv=notrunc 2>/dev/null
     dd if=/dev/urandom of=$i bs=1M count=1 seek=12 conv=notrunc 2>/dev/null
     dd if=/dev/urandom of=$i bs=1M count=1 seek=31 conv=notrunc 2>/dev/null
     echo $(sha < $i) $(head -c 16777216 /dev/zero | sha)";

/// Our LVs: `NAME VG SIZE POOL UUID` per line (one line per LV, so a name
/// seen twice is two LVs).
const OUR_LVS: &str = "lvs --noheadings --units b --nosuffix --separator ' ' \
     -o lv_tags,vg_name,lv_size,pool_lv cinder-ssd cinder-hdd |
     while read -r tags vg size pool; do
       n=$(echo $tags | tr ',' '\\n' | sed -n 's/^cinderblock.name=//p')
       u=$(echo $tags | tr ',' '\\n' | sed -n 's/^cinderblock.uuid=//p')
       [ -n \"$n\" ] && echo \"$n $vg $size ${pool:--} $u\"
     done; true";

fn example_files() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/full-site");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("a directory entry").path();
            let name = path
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (name, bytes)
        })
        .collect();
    files.sort();
    files
}

#[test]
#[ignore = "needs the VM lab"]
#[allow(clippy::too_many_lines)] // one VM boot: the steps, then what they showed
fn full_site_example_plans_and_applies_as_shipped() {
    let mut sc = Scenario::new("full-site")
        // cinder-ssd: the 500 GiB pool and its metadata; cinder-hdd: the
        // 2 TiB archive and room for its 2 TiB restore
        .disks(600 * GIB, 4608 * GIB)
        .file("lib.sh", LIB);
    let shipped = example_files();
    assert!(shipped.len() >= 6, "examples/full-site: {shipped:?}");
    for (name, bytes) in &shipped {
        sc = sc.file(&format!("full-site/{name}"), bytes.clone());
    }
    let out = sc
        .step("environment", ENVIRONMENT)
        .step("admin-files", &format!(". ./lib.sh\n{ADMIN_FILES}"))
        .step("validate", ". ./lib.sh; cb validate -f full-site")
        .step_any(
            "plan",
            ". ./lib.sh; cb plan -f full-site --detailed-exitcode",
        )
        .step(
            "apply",
            ". ./lib.sh; cb apply -f full-site --auto-approve",
        )
        .step_limit(std::time::Duration::from_secs(240))
        .step_any(
            "replan",
            ". ./lib.sh; cb plan -f full-site --detailed-exitcode",
        )
        .step("lvs", &format!(". ./lib.sh; {OUR_LVS}"))
        .step(
            "pool",
            "lvs --noheadings --units b --nosuffix -o lv_name,lv_size,lv_attr cinder-ssd/cinder-ssd-pool",
        )
        .step(
            "share",
            "grep ' /var/lib/cinderblock/mnt/nfs-bulk ' /proc/mounts
             cd /var/lib/cinderblock/mnt/nfs-bulk
             for f in .cinderblock/*.json; do
               u=$(basename $f .json)
               n=$(grep '\"name\"' $f | head -n 1 | sed 's/.*\"name\": *\"\\([^\"]*\\)\".*/\\1/')
               echo \"$n $(stat -c '%s %b %B' volume-$u) $(stat -c '%s %b %B' /srv/cinder/volume-$u)\"
             done",
        )
        .step(
            "configfs",
            ". ./lib.sh; configfs_dump $T > $OUT/configfs.txt; ls $T/iscsi | grep -c cinderblock",
        )
        .step(
            "image",
            ". ./lib.sh
             echo $(sha < /srv/images/debian-12-genericcloud-amd64.raw) $(sha_at $(lv debian-12) 0 32) $(sha_at $(lv web-1-root) 0 32) $(sha_at $(lv web-1-root) 32 16)",
        )
        // data in the group's members, through the data paths the export uses
        .step(
            "write",
            ". ./lib.sh
             dd if=/dev/urandom of=$(layer orders-data) bs=1M count=8 oflag=direct conv=fsync 2>/dev/null
             dd if=/dev/urandom of=$(layer orders-data) bs=1M count=2 seek=102400 oflag=direct conv=fsync 2>/dev/null
             dd if=/dev/urandom of=$(layer orders-wal) bs=1M count=4 seek=16 oflag=direct conv=fsync 2>/dev/null
             echo $(sha_at $(layer orders-data) 0 8) $(sha_at $(layer orders-data) 102400 2) $(sha_at $(layer orders-wal) 16 4)",
        )
        // initiator db1 logs in to orders-data at its portal with the secret
        .step(
            "login",
            ". ./lib.sh
             echo InitiatorName=iqn.1994-05.com.redhat:db1 > /etc/iscsi/initiatorname.iscsi
             iscsid; sleep 0.5
             t=iqn.2026-11.dev.cinderblock:volume-$(uuid_of orders-data)
             iscsiadm -m discovery -t sendtargets -p 10.0.0.10:3260 >&2
             n() { iscsiadm -m node -T $t -p 10.0.0.10:3260 \"$@\"; }
             n -o update -n node.session.auth.authmethod -v CHAP
             n -o update -n node.session.auth.username -v orders-data
             n -o update -n node.session.auth.password -v data-secret-0001
             n --login >&2
             i=0; d=
             while [ -z \"$d\" ] && [ $i -lt 100 ]; do
               for b in /sys/block/sd*; do [ -e \"$b\" ] && d=${b##*/}; done
               sleep 0.1; i=$((i+1))
             done
             [ -n \"$d\" ] || { echo 'no disk after the login' >&2; exit 1; }
             echo $(( $(cat /sys/block/$d/size) * 512 )) $(sha_at /dev/$d 0 8)
             n --logout >&2",
        )
        .step(
            "gbackup",
            ". ./lib.sh; cb backup run --group orders-db -f full-site; cb backup list",
        )
        .step(
            "grestore",
            ". ./lib.sh
             g=$(cb backup list | awk '/^group / && /orders-db/ {print $2}' | tail -n 1)
             [ -n \"$g\" ] || { cb backup list; exit 1; }
             cb backup restore --group $g -f full-site >&2
             s=-$(echo $g | tr -d - | cut -c1-8)
             echo $(sha_at $(lv orders-data$s) 0 8) $(sha_at $(lv orders-data$s) 102400 2) $(sha_at $(lv orders-wal$s) 16 4)",
        )
        .step("suspended", "dmsetup info -c --noheadings -o name,suspended | grep -c Suspended || true")
        .timeout(std::time::Duration::from_secs(600))
        .run();
    report_times(&out);
    check(&out);
}

/// Guest seconds per step, and the wall time, on stderr (the runtime budget:
/// under five minutes in the VM).
#[allow(clippy::print_stderr)] // figures for the test runner (--nocapture)
fn report_times(out: &Outcome) {
    let mut line = String::new();
    let mut sum = 0.0;
    for n in STEPS {
        let secs = out.step(n).secs;
        sum += secs;
        let _ = write!(line, " {n} {secs:.1}s");
    }
    eprintln!(
        "full-site: wall {:.0} s, steps {sum:.0} s:{line}",
        out.wall.as_secs_f64()
    );
}

const STEPS: [&str; 16] = [
    "environment",
    "admin-files",
    "validate",
    "plan",
    "apply",
    "replan",
    "lvs",
    "pool",
    "share",
    "configfs",
    "image",
    "write",
    "login",
    "gbackup",
    "grestore",
    "suspended",
];

/// What a user checks after the first apply.
#[allow(clippy::too_many_lines)] // one list of checks, in the order a user makes them
fn check(out: &Outcome) {
    let fail = |why: &str| -> ! { panic!("{}", out.report(why)) };

    // plan: 12 to add, the key lines, the restore waiting; no secret shown
    let plan = out.stdout("plan");
    if out.step("plan").rc != Some(2) {
        fail(&format!(
            "plan --detailed-exitcode should exit 2 (changes):\n{plan}"
        ));
    }
    for want in [
        "+ thin_pool \"cinder-ssd/cinder-ssd-pool\" {",
        "+ size     = 500Gi",
        "+ volume \"archive\" {\n      + backend = \"hdd-thick\"\n      + size    = 2Ti",
        "+ volume \"orders-data\" {\n      + backend = \"ssd-thin\"\n      + size    = 200Gi",
        "placed by the scheduler with its consistency group orders-db",
        "+ volume \"reports-scratch\" {\n      + backend = \"nfs-bulk\"\n      + size    = 100Gi",
        "+ source  = image.debian-12",
        "+ source  = snapshot.orders-data-nightly",
        "+ group_snapshot \"orders-db-pre-migration\" {",
        "+ member            = snapshot.orders-db-pre-migration.orders-data of volume.orders-data (200Gi)",
        "+ member            = snapshot.orders-db-pre-migration.orders-wal of volume.orders-wal (50Gi)",
        "+ iscsi_export \"orders-data\" {",
        "+ portals    = 10.0.0.10:3260",
        "+ chap       = required (secret from file /etc/cinderblock/secrets/orders-chap)",
        "+ chap       = required (secret from $ORDERS_CHAP)",
        "Waiting: volume.archive-restore-test: restores the latest backup of volume archive (BackupPolicy nightly), and there is none yet",
        "Plan: 12 to add, 0 to change, 0 to destroy. 1 object waits (see above).",
    ] {
        if !plan.contains(want) {
            fail(&format!("the plan lacks {want:?}:\n{plan}"));
        }
    }
    for step in ["plan", "apply", "replan", "gbackup", "grestore"] {
        let s = out.step(step);
        for secret in ["data-secret-0001", "wal-secret-0002"] {
            if s.stdout.contains(secret) || s.stderr.contains(secret) {
                fail(&format!("{step} printed a CHAP secret"));
            }
        }
    }
    let apply = out.stdout("apply");
    if !apply.contains("Apply complete! Resources: 12 added, 0 changed, 0 destroyed.") {
        fail(&format!("apply:\n{apply}"));
    }

    // the second plan: nothing to do, the restore still waiting
    let replan = out.stdout("replan");
    if out.step("replan").rc != Some(0)
        || !replan.ends_with("No changes now. 1 object waits (see above).")
        || !replan.contains("Waiting: volume.archive-restore-test:")
        || replan.lines().any(|l| {
            let l = l.trim_start();
            ["+ ", "~ ", "- ", "> ", ". "]
                .iter()
                .any(|p| l.starts_with(p))
        })
    {
        fail(&format!("the second plan should change nothing:\n{replan}"));
    }

    // every volume, snapshot and image once, with its size, where its type leads
    let mut lvs: BTreeMap<&str, Vec<(&str, u64, &str, &str)>> = BTreeMap::new();
    for line in out.stdout("lvs").lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [name, vg, size, pool, uuid] = f[..] else {
            fail(&format!("lvs line {line:?}"))
        };
        let size: u64 = size
            .parse()
            .unwrap_or_else(|_| fail(&format!("size in {line:?}")));
        lvs.entry(name).or_default().push((vg, size, pool, uuid));
    }
    let thin = ("cinder-ssd", "cinder-ssd-pool");
    let want: [(&str, (&str, &str), u64); 9] = [
        ("archive", ("cinder-hdd", "-"), 2048 * GIB),
        ("orders-data", thin, 200 * GIB),
        ("orders-wal", thin, 50 * GIB),
        ("orders-staging", thin, 200 * GIB),
        ("orders-data-nightly", thin, 200 * GIB),
        ("orders-db-pre-migration.orders-data", thin, 200 * GIB),
        ("orders-db-pre-migration.orders-wal", thin, 50 * GIB),
        ("web-1-root", thin, 20 * GIB),
        ("debian-12", thin, 32 << 20),
    ];
    for (name, (vg, pool), size) in want {
        match lvs.get(name).map(Vec::as_slice) {
            Some([(v, s, p, _)]) if *v == vg && *p == pool && *s == size => {}
            other => fail(&format!(
                "{name}: want one LV of {size} bytes in {vg} (pool {pool}), found {other:?}"
            )),
        }
    }
    if lvs.len() != want.len() {
        fail(&format!(
            "LVs of ours beyond the manifests': {:?}",
            lvs.keys()
        ));
    }
    let uuid = |name: &str| lvs[name][0].3;

    // the pool, made at its declared size
    let pool: Vec<&str> = out.stdout("pool").split_whitespace().collect();
    if pool.get(1) != Some(&"536870912000") || !pool.get(2).is_some_and(|a| a.starts_with('t')) {
        fail(&format!("thin pool: {pool:?}"));
    }

    // reports-scratch: on the share cinderblock mounted, preallocated
    let share = out.stdout("share");
    let mut lines = share.lines();
    let mount: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
    if mount.get(..3)
        != Some(
            &[
                "nfs1.example.com:/srv/cinder",
                "/var/lib/cinderblock/mnt/nfs-bulk",
                "nfs4",
            ][..],
        )
        || !mount.get(3).is_some_and(|o| {
            o.split(',').any(|o| o == "vers=4.2") && o.split(',').any(|o| o == "noatime")
        })
    {
        fail(&format!("the share's mount: {share}"));
    }
    let files: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    let [file] = &files[..] else {
        fail(&format!("one volume file on the share: {share}"))
    };
    let n = |i: usize| -> u64 { file.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
    if file.first() != Some(&"reports-scratch")
        || n(1) != 100 * GIB
        || n(2) * n(3) < 100 * GIB
        || n(4) != 100 * GIB
        || n(5) * n(6) < 100 * GIB
    {
        fail(&format!(
            "reports-scratch: 100 GiB, every block allocated, client and server: {share}"
        ));
    }

    // both exports: ACLs for db1 and db2 with the CHAP user, at 10.0.0.10:3260 only
    if out.stdout("configfs") != "2" {
        fail("two targets of ours in configfs");
    }
    let configfs = out.text("configfs.txt");
    for (vol, user) in [("orders-data", "orders-data"), ("orders-wal", "orders-wal")] {
        let tpg = format!(
            "iscsi/iqn.2026-11.dev.cinderblock:volume-{}/tpgt_1",
            uuid(vol)
        );
        for ini in ["iqn.1994-05.com.redhat:db1", "iqn.1994-05.com.redhat:db2"] {
            let want = format!("f {tpg}/acls/{ini}/auth/userid = {user}\n");
            if !configfs.contains(&want) {
                fail(&format!("configfs lacks {want:?}"));
            }
        }
        let portals: Vec<&str> = configfs
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("d {tpg}/np/")))
            .filter(|p| !p.contains('/'))
            .collect();
        if portals != ["10.0.0.10:3260"] {
            fail(&format!("{vol}'s portals: {portals:?}"));
        }
    }

    // the image and its clone hold the raw file; the clone reads zeros beyond it
    let shas: Vec<&str> = out.stdout("image").split(' ').collect();
    let raw: Vec<&str> = out.stdout("admin-files").split(' ').collect();
    if shas.len() != 4
        || raw.len() != 2
        || shas[..3].iter().any(|s| *s != raw[0])
        || shas[3] != raw[1]
    {
        fail(&format!(
            "raw file, zeros {raw:?}; image, clone, clone beyond {shas:?}"
        ));
    }

    // db1 logs in with the secret and reads what was written
    let written: Vec<&str> = out.stdout("write").split(' ').collect();
    let login: Vec<&str> = out.stdout("login").split(' ').collect();
    if written.len() != 3 || login != [&(200 * GIB).to_string(), written[0]] {
        fail(&format!(
            "the login's disk (size, sha) {login:?}; written {written:?}"
        ));
    }

    // one group backup of both members, restored sha256-equal
    let gbackup = out.stdout("gbackup");
    if !gbackup
        .contains("of orders-db: 2 member(s) (orders-data, orders-wal) from one group snapshot")
    {
        fail(&format!("the group backup: {gbackup}"));
    }
    let restored: Vec<&str> = out.stdout("grestore").split(' ').collect();
    if restored != written {
        fail(&format!("restored {restored:?}, written {written:?}"));
    }
    if out.stdout("suspended") != "0" {
        fail("a device is left suspended");
    }
}
