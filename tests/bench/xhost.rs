//! Benchmark of a cross-host migration (two hosts in the VM lab, loopback
//! iSCSI) against the tools an admin would use over the same kind of
//! iSCSI session: `dd bs=1M conv=sparse` and `qemu-img convert -O raw`.
//!
//! Run with `cargo bench --bench xhost` (needs the VM lab:
//! `bash tests/lab/install-deps.sh`, which also brings `/usr/bin/etcd`;
//! `qemu-img` from the host's `qemu-utils`). One VM boot, the set-up of
//! the lab's `xhost` scenario (`tests/lab/xhost.rs`: agents `--host stor-a`
//! and `--host stor-b` with two state directories, a real etcd, LIO and
//! open-iscsi over 127.0.0.1), then:
//!
//! - a thick volume of `XHOST_GIB` GiB (default 2) on stor-a, written with
//!   `XHOST_DATA_MIB` MiB (default 384) of random data in three equal
//!   extents (start, middle, end), each 64 MiB block distinct (a 64 MiB
//!   block from `/dev/urandom` in RAM, its first bytes stamped per block);
//! - `dd bs=1M conv=sparse` (GNU dd, shipped: busybox dd has no
//!   `conv=sparse`) from an iSCSI session to a LIO export of the source LV
//!   made through raw configfs (no CHAP) into a new thin LV of a pool on
//!   stor-b's disk, then `sync`;
//! - `qemu-img convert -n --target-is-zero -O raw` (the host's qemu-img and
//!   its libraries, shipped like etcd: the lab's initramfs stays as it is)
//!   from the same session into another new thin LV, then `sync`. `-n
//!   --target-is-zero`: the target is a fresh thin LV; without it qemu-img
//!   zeroes the holes on a block device, allocating every thin block;
//! - cinderblock: the volume's manifest edited to a thin back end of
//!   stor-b, timed from the edit until the source LV is gone, the target
//!   ready and the job removed (the agents resync every 3 s; the source
//!   exports its volume, then hashes it while the destination copies; the
//!   destination verifies against that hash and the source deletes its
//!   copy).
//!
//! Before each the page cache is dropped; after each: seconds, bytes read
//! from stor-a's disk (`/proc/diskstats` of `/dev/vda`, the only disk of
//! stor-a's VG: the source LV's reads, including cinderblock's hash of the
//! source), bytes written to stor-b's disk (`/dev/vdb`), the target LV's
//! allocated bytes (thin `data_percent`), and the sha256 of the target,
//! which must equal the source's (the only assertion: figures are printed,
//! never asserted). cinderblock's own account of its copy (read over iSCSI,
//! written, zeroed) is printed from the destination agent's log.
//!
//! Both agents run throughout (their resyncs cost the one vCPU the same in
//! all three runs). Under TCG absolute times are slow; the ratios are what
//! matters.
//!
//! The default is issue 15's 16 GiB holding 3 GiB scaled down by 8 (same
//! ratio of data to size): about 12 minutes of VM time under TCG. The
//! issue's size, `XHOST_GIB=16 XHOST_DATA_MIB=3072`, reads 8 times as much
//! through the emulated CPU: about an hour and a half.
//!
//! Measured 2026-12-04 on the 2-core build host, TCG, one vCPU, at the
//! issue's size (a7ccc98: the source hashes while the destination copies;
//! VM wall 5158 s; sha256 of the 16 GiB source 910 s). The dd run shared
//! the host with a full `tests/run.sh` (load ~3.5), qemu-img partly (its
//! last minutes), cinderblock ran alone (load ~1): qemu-img is the fair
//! reference.
//!
//! ```text
//! method                                                 seconds  +sync  read on A  written on B  allocated
//! cinderblock (manifest edit → moved)                     1236.2 1236.2  32.20 GiB      6.01 GiB   3.00 GiB
//! dd bs=1M conv=sparse, then sync                          808.9  809.1  16.06 GiB      6.00 GiB   3.00 GiB
//! qemu-img convert -n --target-is-zero -O raw, then sync   459.9  460.0  16.04 GiB      6.00 GiB   3.00 GiB
//! ratio: cinderblock takes 1.53x dd's time (with sync) and 2.69x
//! qemu-img's; it reads 2.00x dd's bytes on A and 2.01x qemu-img's; it
//! writes 1.00x dd's bytes on B and 1.00x qemu-img's
//! cinderblock's account: read 17179869184 bytes over iSCSI, wrote
//! 3221225472, zeroed 0 in 916.5s; verified against the source host's hash
//! ```
//!
//! The default size before a7ccc98 (the source hashed its whole volume
//! before exporting, serially): cinderblock 200.4 s, dd 77.5 s, qemu-img
//! 71.5 s (2.80x qemu-img's time); the copy alone 92.5 s.
//!
//! Where cinderblock's time goes: a thick source has no extent map, so it
//! is read whole twice on stor-a, once by the source host's own hash (the
//! verification's independent side) and once over iSCSI by the copy; the
//! destination also hashes what it reads and then its target. In the lab
//! both "hosts" share the one emulated vCPU, where BLAKE3 is slow and
//! everything is CPU-bound: the source's hash no longer delays the export,
//! but it competes with the copy for that vCPU (the copy took 916.5 s,
//! 2.0x qemu-img's 460 s). On two real hosts the source's hash runs on the
//! source's CPU and disk beside the copy. The rest (320 s) is the
//! destination's hash of its 16 GiB target, the resync latency, the job's
//! hand-offs in etcd, login, logout and the source's removal. Every target
//! holds only the 3 GiB of data (written twice on stor-b's disk: the pools
//! zero each new thin block, `thin_pool_zero` by default, the same for all
//! three).

// A benchmark's output is its report.
#![allow(clippy::print_stdout)]
// Figures are printed as floating point; precision loss is irrelevant there.
#![allow(clippy::cast_precision_loss)]

#[allow(dead_code)] // the bench uses a part of the lab's harness
#[path = "../lab/harness.rs"]
mod harness;
// The lab's xhost scenario: its guest shell library and `field`; its test
// function is not compiled here (no `--test`), so its helpers look unused.
#[allow(dead_code, unused_imports)]
#[path = "../lab/xhost.rs"]
mod xhost;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::Scenario;
use xhost::field;

const H: &str = "apiVersion: cinderblock.dev/v1alpha1\n";
const GIB: u64 = 1 << 30;
const SECTOR: u64 = 512;
/// The size of the random block written repeatedly.
const CHUNK_MIB: u64 = 64;

/// `XHOST_GIB` / `XHOST_DATA_MIB`, or their defaults.
fn sizes() -> (u64, u64) {
    let var = |k: &str, d: u64| {
        std::env::var(k).map_or(d, |v| {
            v.parse()
                .unwrap_or_else(|e| panic!("{k}={v:?}: {e} (a whole number)"))
        })
    };
    let gib = var("XHOST_GIB", 2);
    let data = var("XHOST_DATA_MIB", 384);
    assert!(
        data % (3 * CHUNK_MIB) == 0 && data > 0,
        "XHOST_DATA_MIB={data}: a multiple of {} (three extents of {CHUNK_MIB} MiB blocks)",
        3 * CHUNK_MIB
    );
    assert!(
        data / 3 * 2 <= gib * 1024 / 2,
        "XHOST_DATA_MIB={data} does not fit three extents apart in {gib} GiB"
    );
    (gib, data)
}

/// A host binary and the libraries `ldd` resolves for it (but the C
/// library and loader, which the lab's initramfs has), as scenario files
/// under `tools/`.
fn ship(mut s: Scenario, bin: &str, name: &str) -> Scenario {
    let bytes = std::fs::read(bin).unwrap_or_else(|e| panic!("{bin}: {e}: install it on the host"));
    s = s.file(&format!("tools/{name}"), bytes);
    #[allow(clippy::disallowed_methods)] // a bench: ldd on the host, as the lab harness does
    let ldd = Command::new("ldd")
        .arg(bin)
        .output()
        .unwrap_or_else(|e| panic!("ldd {bin}: {e}"));
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let Some(path) = line
            .split("=> ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
        else {
            continue;
        };
        let Some(lib) = Path::new(path).file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if lib.starts_with("libc.so") || lib.starts_with("ld-linux") {
            continue;
        }
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        s = s.file(&format!("tools/lib/{lib}"), bytes);
    }
    s
}

/// Timing and accounting in the guest, on top of the xhost scenario's
/// library: `mark` drops the caches and notes the counters, `measured`
/// prints seconds, sectors read from vda and written to vdb since.
const BENCH_LIB: &str = r#"
up() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(up)" 'BEGIN{printf "%.2f", b-a}'; }
sectors() { awk -v d=$1 -v f=$2 '$3 == d {print $f}' /proc/diskstats; }
mark() { sync; echo 3 > /proc/sys/vm/drop_caches; R0=$(sectors vda 6); W0=$(sectors vdb 10); T0=$(up); }
measured() {
  echo "secs $(since $T0)"
  sync
  echo "synced $(since $T0)"
  echo "read-sectors $(( $(sectors vda 6) - R0 ))"
  echo "written-sectors $(( $(sectors vdb 10) - W0 ))"
}
alloc() { lvs --noheadings --units b --nosuffix -o data_percent,lv_size $1 | awk '{printf "%.0f", $1 * $2 / 100}'; }
Q() { LD_LIBRARY_PATH=$IN/tools/lib $IN/tools/qemu-img "$@"; }
C=/sys/kernel/config/target
IQN=iqn.2003-01.org.example.lab:bench
INI=iqn.1994-05.com.example:lab
TPG=$C/iscsi/$IQN/tpgt_1
"#;

/// One compared method's figures, from its step's output.
struct Run {
    name: &'static str,
    secs: f64,
    synced: f64,
    read: u64,
    written: u64,
    alloc: u64,
}

impl Run {
    fn of(name: &'static str, text: &str) -> Self {
        let num = |k: &str| -> f64 {
            field(text, k)
                .parse()
                .unwrap_or_else(|e| panic!("{k}: {e}\n{text}"))
        };
        let int = |k: &str| -> u64 {
            field(text, k)
                .parse()
                .unwrap_or_else(|e| panic!("{k}: {e}\n{text}"))
        };
        Run {
            name,
            secs: num("secs"),
            synced: num("synced"),
            read: int("read-sectors") * SECTOR,
            written: int("written-sectors") * SECTOR,
            alloc: int("alloc"),
        }
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / GIB as f64)
}

/// "read N bytes over iSCSI from X, wrote W, zeroed Z ... in S s" of the
/// destination agent's last copy of volume db.
fn copy_note(log: &str) -> Option<&str> {
    log.lines()
        .filter(|l| l.contains(" volume=db ") || l.contains("volume=db"))
        .filter_map(|l| l.find("read ").map(|i| &l[i..]))
        .rfind(|l| l.contains("bytes over iSCSI"))
}

#[allow(clippy::too_many_lines)] // one run: the scenario, then the report
fn main() {
    let (size_gib, data_mib) = sizes();
    let etcd = std::fs::read("/usr/bin/etcd").unwrap_or_else(|e| {
        panic!("/usr/bin/etcd: {e}: install Debian's etcd-server (bash tests/lab/install-deps.sh)")
    });
    let mib_in_volume = size_gib * 1024;
    let extent = data_mib / 3;
    let offsets = [0, mib_in_volume / 2, mib_in_volume - extent];
    let pool_gib = size_gib + 1;
    let backends = format!(
        "{H}kind: Backend\nmetadata:\n  name: thick-a\nspec:\n  host: stor-a\n  lvm:\n    volumeGroup: vga\n---\n{H}kind: Backend\nmetadata:\n  name: pool-b\nspec:\n  host: stor-b\n  lvm:\n    volumeGroup: vgb\n    thinPool: pool0\n    thinPoolSize: {pool_gib}Gi\n"
    );
    let volume = |backend: &str| {
        format!(
            "{H}kind: Volume\nmetadata:\n  name: db\nspec:\n  size: {size_gib}Gi\n  backend: {backend}\n  deletionPolicy: Delete\n"
        )
    };
    // Generous limits: minutes per GiB under TCG on a loaded host.
    let long = Duration::from_secs(600 + 120 * size_gib);
    let mut s = Scenario::new("xhost-bench")
        .timeout(Duration::from_secs(1200 + 600 * size_gib))
        .disks((size_gib + 2) * GIB, (2 * pool_gib + 2) * GIB)
        .file("etcd", etcd)
        .file("lib-x.sh", xhost::guest_lib())
        .file("lib-b.sh", BENCH_LIB)
        .file("m/backends.yaml", backends)
        .file("m/db.yaml", volume("thick-a"))
        .file("db-b.yaml", volume("pool-b"));
    s = ship(s, "/usr/bin/dd", "dd");
    s = ship(s, "/usr/bin/qemu-img", "qemu-img");
    let copy_to = |lv: &str, cmd: &str| {
        format!(
            ". ./lib-x.sh; . ./lib-b.sh
             d=$(cat dev)
             lvcreate -y -q -V {size_gib}G --thinpool vgb/bp -n {lv} >/dev/null 2>&1
             mark
             {cmd}
             measured
             echo \"alloc $(alloc vgb/{lv})\"
             echo \"sha $(sha256sum /dev/vgb/{lv} | cut -d' ' -f1)\"
             lvremove -y -q vgb/{lv} >/dev/null 2>&1"
        )
    };
    let out = s
        .step(
            "setup",
            &format!(
                "pvcreate -y /dev/vda /dev/vdb >/dev/null
                 vgcreate vga /dev/vda >/dev/null && vgcreate vgb /dev/vdb >/dev/null
                 lvcreate -y -q --type thin-pool -L {pool_gib}G -n bp vgb >/dev/null 2>&1
                 echo InitiatorName=iqn.1994-05.com.example:lab > /etc/iscsi/initiatorname.iscsi
                 iscsid; sleep 0.5
                 chmod +x etcd tools/dd tools/qemu-img
                 ./etcd --data-dir /tmp/etcd --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 > etcd.log 2>&1 &
                 . ./lib-x.sh
                 wait_for 60 busybox wget -q -O - $E/health
                 . ./lib-b.sh; Q --version | head -1"
            ),
        )
        .step_limit(Duration::from_secs(90))
        .step(
            "start",
            ". ./lib-x.sh
             start a 9471
             start b 9472
             wait_for 90 up 9471; wait_for 90 up 9472
             wait_for 300 ready vga",
        )
        .step_limit(Duration::from_secs(400))
        .step(
            "data",
            &format!(
                ". ./lib-x.sh; . ./lib-b.sh
                 p=$(lv_of vga)
                 dd if=/dev/urandom of=/tmp/r bs=1M count={CHUNK_MIB} 2>/dev/null
                 T0=$(up)
                 for o in {o0} {o1} {o2}; do
                   i=0
                   while [ $i -lt {n} ]; do
                     at=$((o + i * {CHUNK_MIB}))
                     printf '%016d' $at | dd of=/tmp/r bs=16 count=1 conv=notrunc 2>/dev/null
                     dd if=/tmp/r of=$p bs=1M seek=$at oflag=direct conv=notrunc 2>/dev/null
                     i=$((i + 1))
                   done
                 done
                 sync
                 echo \"write-secs $(since $T0)\"
                 rm /tmp/r
                 sync; echo 3 > /proc/sys/vm/drop_caches
                 T0=$(up)
                 echo \"sha $(sha256sum $p | cut -d' ' -f1)\"
                 echo \"sha-secs $(since $T0)\"",
                o0 = offsets[0],
                o1 = offsets[1],
                o2 = offsets[2],
                n = extent / CHUNK_MIB,
            ),
        )
        .step_limit(long)
        .step(
            "export",
            ". ./lib-x.sh; . ./lib-b.sh
             p=$(lv_of vga)
             mkdir -p $C/core/iblock_90/bench
             put udev_path=$p $C/core/iblock_90/bench/control
             put $p $C/core/iblock_90/bench/udev_path
             put 1 $C/core/iblock_90/bench/enable
             mkdir -p $TPG/lun/lun_0
             ln -s $C/core/iblock_90/bench $TPG/lun/lun_0/bench
             mkdir $TPG/np/127.0.0.1:3260
             mkdir -p $TPG/acls/$INI/lun_0
             ln -s $TPG/lun/lun_0 $TPG/acls/$INI/lun_0/lun_0
             put 0 $TPG/attrib/authentication
             put 0 $TPG/attrib/generate_node_acls
             put 0 $TPG/attrib/demo_mode_write_protect
             put 1 $TPG/enable
             iscsiadm -m discovery -t sendtargets -p 127.0.0.1:3260 >/dev/null
             iscsiadm -m node -T $IQN -p 127.0.0.1:3260 --login >&2
             i=0; d=
             while [ -z \"$d\" ] && [ $i -lt 100 ]; do
               for b in /sys/block/sd*; do
                 [ -e $b ] && readlink -f $b/device | grep -q /session && d=${b##*/}
               done
               sleep 0.1; i=$((i+1))
             done
             test -n \"$d\"
             echo /dev/$d > dev
             echo \"dev /dev/$d $(blockdev --getsize64 /dev/$d)\"",
        )
        .step(
            "dd",
            &copy_to(
                "bdd",
                "$IN/tools/dd if=$d of=/dev/vgb/bdd bs=1M conv=sparse 2>/dev/null",
            ),
        )
        .step_limit(long)
        .step(
            "qemu_img",
            &copy_to(
                "bqi",
                "Q convert -n --target-is-zero -O raw $d /dev/vgb/bqi",
            ),
        )
        .step_limit(long)
        .step(
            "unexport",
            ". ./lib-x.sh; . ./lib-b.sh
             iscsiadm -m node -T $IQN -p 127.0.0.1:3260 --logout >/dev/null
             iscsiadm -m node -o delete
             put 0 $TPG/enable
             rm $TPG/acls/$INI/lun_0/lun_0 && rmdir $TPG/acls/$INI/lun_0 $TPG/acls/$INI
             rm $TPG/lun/lun_0/bench && rmdir $TPG/lun/lun_0
             rmdir $TPG/np/127.0.0.1:3260 $TPG $C/iscsi/$IQN
             rmdir $C/core/iblock_90/bench $C/core/iblock_90
             lvremove -y -q vgb/bp >/dev/null 2>&1",
        )
        .step(
            "cinderblock",
            &format!(
                ". ./lib-x.sh; . ./lib-b.sh
                 mark
                 cp db-b.yaml m/db.yaml
                 wait_for {} moved vga vgb
                 measured
                 p=$(lv_of vgb)
                 echo \"alloc $(alloc $p)\"
                 echo \"sha $(sha256sum $p | cut -d' ' -f1)\"",
                long.as_secs()
            ),
        )
        .step_limit(long + Duration::from_secs(60))
        .step(
            "stop",
            xhost::STOP,
        )
        .run();

    let data = out.stdout("data");
    let sha = field(data, "sha");
    let runs = [
        Run::of(
            "cinderblock (manifest edit → moved)",
            out.stdout("cinderblock"),
        ),
        Run::of("dd bs=1M conv=sparse, then sync", out.stdout("dd")),
        Run::of(
            "qemu-img convert -n --target-is-zero -O raw, then sync",
            out.stdout("qemu_img"),
        ),
    ];
    for (step, run) in ["cinderblock", "dd", "qemu_img"].iter().zip(&runs) {
        assert_eq!(
            field(out.stdout(step), "sha"),
            sha,
            "{}: the target holds the source's data\n{}",
            run.name,
            out.report(step)
        );
    }
    println!(
        "cinderblock cross-host migration benchmark (VM lab, TCG, loopback iSCSI); {}",
        field(out.stdout("setup"), "qemu-img")
    );
    println!(
        "source: thick LV of {size_gib} GiB on stor-a, {data_mib} MiB of random data in 3 extents at MiB {offsets:?}; written in {} s, sha256 of the whole LV in {} s",
        field(data, "write-secs"),
        field(data, "sha-secs")
    );
    println!(
        "iSCSI session for dd and qemu-img: {}; boot to ready {:.1} s, VM wall {:.0} s",
        field(out.stdout("export"), "dev"),
        out.boot.map_or(0.0, |b| b.as_secs_f64()),
        out.wall.as_secs_f64()
    );
    println!(
        "{:<56} {:>9} {:>12} {:>13} {:>13} {:>12}",
        "method", "seconds", "+sync", "read on A", "written on B", "allocated"
    );
    for r in &runs {
        println!(
            "{:<56} {:>9.1} {:>12.1} {:>13} {:>13} {:>12}",
            r.name,
            r.secs,
            r.synced,
            gib(r.read),
            gib(r.written),
            gib(r.alloc)
        );
    }
    let cb = &runs[0];
    println!(
        "ratio: cinderblock takes {:.2}x dd's time (with sync) and {:.2}x qemu-img's; it reads {:.2}x dd's bytes on A and {:.2}x qemu-img's; it writes {:.2}x dd's bytes on B and {:.2}x qemu-img's",
        cb.synced / runs[1].synced,
        cb.synced / runs[2].synced,
        cb.read as f64 / runs[1].read as f64,
        cb.read as f64 / runs[2].read as f64,
        cb.written as f64 / runs[1].written as f64,
        cb.written as f64 / runs[2].written as f64,
    );
    let b_log = out.text("b.log");
    println!(
        "cinderblock's account (stor-b's log): {}",
        copy_note(&b_log).unwrap_or("(no copy note found)")
    );
    println!("sha256 of the source and of every target: {sha}");
}
