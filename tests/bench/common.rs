//! Helpers shared by the benchmarks: timing a child process and sampling its
//! peak memory.

// Not every benchmark uses every helper.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cinderblock::exec::{Cmd, run};
use tempfile::TempDir;

/// Peak RSS (KiB) of this process so far (`VmHWM`).
pub fn peak_rss_kib_self() -> u64 {
    vm_hwm(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())
}

fn vm_hwm(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resets this process's peak RSS (Linux: `5` into `clear_refs`).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Runs a command; returns its wall time, peak RSS (KiB) sampled from
/// `/proc/PID/status` (`VmHWM` only grows, so the last sample is the peak up to
/// a few milliseconds before exit) and whether it succeeded.
pub fn measure(cmd: &mut Command) -> (Duration, u64, bool) {
    let t = Instant::now();
    let mut child = cmd.spawn().expect("the command starts");
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            peak = peak.max(vm_hwm(&text));
        }
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    (t.elapsed(), peak, status.success())
}

/// The best of `n` runs.
pub fn best_of(n: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..n).map(|_| f()).min().unwrap_or_default()
}

/// The benchmarks' 16 GiB test volume on `be` (as ANCHORS.md measured it):
/// 70 extents of 44 MiB spread over 16 GiB, 47 of random bytes (~2 GiB) and
/// 23 of log-like text (~1 GiB). Returns the data bytes written.
pub fn make_source(be: &cinderblock::file::FileBackend, uuid: uuid::Uuid) -> u64 {
    make_source_sized(be, uuid, 16 << 30)
}

/// Extents of the test volume and their (stride, length) for a volume of
/// `size` bytes: 70 extents, each 44 MiB per 16 GiB of `size` (whole 64
/// KiB), one every `size / 70` (whole MiB).
pub fn source_layout(size: u64) -> (u64, u64, u64) {
    const MIB: u64 = 1 << 20;
    const EXTENTS: u64 = 70;
    let extent = (44 * MIB * (size >> 20) / (16 << 10)) / (64 << 10) * (64 << 10);
    (
        EXTENTS,
        (size / EXTENTS / MIB * MIB).max(extent),
        extent.max(64 << 10),
    )
}

/// [`make_source`] of `size` bytes, the same layout scaled (for a quick
/// check that a benchmark runs).
pub fn make_source_sized(be: &cinderblock::file::FileBackend, uuid: uuid::Uuid, size: u64) -> u64 {
    use cinderblock::file::{Allocation, NewObject, ObjKind};
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    const MIB: u64 = 1 << 20;
    const RANDOM_EXTENTS: u64 = 47;
    let (extents, stride, extent) = source_layout(size);
    be.create(&NewObject {
        uuid,
        name: "source",
        kind: ObjKind::Volume,
        size,
        allocation: Allocation::Sparse,
        source: None,
    })
    .expect("create source");
    let path = be.data_path(ObjKind::Volume, uuid);
    let file = File::options()
        .write(true)
        .open(&path)
        .expect("open source");
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
    let text: Vec<u8> = (0..)
        .map(|i| {
            format!(
                "2026-01-02T03:04:{:02}Z host-{} cinderblock[{}]: volume {} extended to {} bytes\n",
                i % 60,
                i % 7,
                1000 + i % 97,
                i * 7919 % 100_003,
                i * 4096
            )
        })
        .flat_map(String::into_bytes)
        .take(usize::try_from(4 * MIB).expect("4 MiB fits"))
        .collect();
    let mut buf = vec![0u8; usize::try_from(4 * MIB).expect("4 MiB fits")];
    for i in 0..extents {
        let start = i * stride;
        let mut pos = 0;
        while pos < extent {
            let block: &[u8] = if i < RANDOM_EXTENTS {
                for chunk in buf.chunks_exact_mut(8) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    chunk.copy_from_slice(&rng.to_le_bytes());
                }
                &buf
            } else {
                &text
            };
            let n = block
                .len()
                .min(usize::try_from(extent - pos).unwrap_or(usize::MAX));
            file.write_all_at(&block[..n], start + pos)
                .expect("write source");
            pos += n as u64;
        }
    }
    file.sync_all().expect("sync source");
    extents * extent
}

/// Bytes allocated to a file.
pub fn allocated(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// `sync(1)`.
pub fn sync() {
    let _ = run(&Cmd::new("sync").timeout(Duration::from_secs(300)));
}

/// Drops the page cache (needs root); false when not allowed.
pub fn drop_caches() -> bool {
    fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// The median.
pub fn median(times: &mut [Duration]) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

/// Times, comma-separated.
pub fn list(times: &[Duration]) -> String {
    times
        .iter()
        .map(|t| secs(*t))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A duration for people.
pub fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

#[allow(clippy::cast_precision_loss)] // shown rounded
/// Bytes in GiB for people.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// A fresh scratch directory under cargo's target tmp dir (not /tmp, which
/// may be a tmpfs), removed when dropped.
pub fn scratch(prefix: &str) -> TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    fs::create_dir_all(base).expect("target/tmp");
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(base)
        .expect("temp dir")
}

/// The file system type of `path` as `stat -f` names it.
pub fn fs_type(path: &Path) -> String {
    run(&Cmd::new("stat").args(["-f", "-c", "%T"]).arg(path)).map_or_else(
        |_| "unknown".into(),
        |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
    )
}

/// Bytes of all files below `dir` (what a repository takes).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => dir_bytes(&p),
                Ok(_) => e.metadata().map_or(0, |m| m.len()),
                Err(_) => 0,
            }
        })
        .sum()
}

/// The lab's captured `lvm fullreport` (`tests/fixtures/lvm/fullreport.json`,
/// 8 LVs in VG `labvg` with thin pool `pool0`) scaled up in memory: its thin
/// LV and segment rows cloned `ours` times as volumes of back end `bench`
/// (`volume-<uuid>`, our tags, name `v-NNNNN`, uuid [`bench_uuid`]) and
/// `foreign` times untagged, named by `foreign_name`.
#[allow(clippy::unwrap_used)] // a broken fixture is the bench's failure
pub fn scaled_fullreport(
    ours: usize,
    foreign: usize,
    foreign_name: impl Fn(usize) -> String,
) -> Vec<u8> {
    use serde_json::Value;
    const FIXTURE: &[u8] = include_bytes!("../fixtures/lvm/fullreport.json");
    let mut doc: Value = serde_json::from_slice(FIXTURE).unwrap();
    let part = &mut doc["report"][0];
    let lv_row = part["lv"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["lv_name"] == "vol-thin")
        .unwrap()
        .clone();
    let seg_row = part["seg"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["lv_uuid"] == lv_row["lv_uuid"])
        .unwrap()
        .clone();
    let lvs = part["lv"].as_array_mut().unwrap();
    let mut segs = Vec::new();
    for i in 0..ours + foreign {
        let mut lv = lv_row.clone();
        let lv_uuid = format!("bench{i:05}-xxxx-xxxx-xxxx-xxxx-xxxx-xxxxxx");
        lv["lv_uuid"] = Value::from(lv_uuid.clone());
        if i < ours {
            let u = bench_uuid(i);
            lv["lv_name"] = Value::from(format!("volume-{u}"));
            lv["lv_tags"] = Value::from(format!(
                "cinderblock.backend=bench,cinderblock.kind=volume,cinderblock.name=v-{i:05},cinderblock.uuid={u}"
            ));
        } else {
            lv["lv_name"] = Value::from(foreign_name(i));
            lv["lv_tags"] = Value::from("");
        }
        lvs.push(lv);
        let mut seg = seg_row.clone();
        seg["lv_uuid"] = Value::from(lv_uuid);
        seg["thin_id"] = Value::from((100 + i).to_string());
        segs.push(seg);
    }
    part["seg"].as_array_mut().unwrap().extend(segs);
    serde_json::to_vec_pretty(&doc).unwrap()
}

/// The uuid of volume `i` of [`scaled_fullreport`].
pub fn bench_uuid(i: usize) -> uuid::Uuid {
    uuid::Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0000 | i as u128)
}
