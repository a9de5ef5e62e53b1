//! The lvm2 command lines cinderblock runs, built as argument vectors, and the
//! discovery call.
//!
//! Every command goes through a [`Runner`] ([`crate::exec::Exec`] on a host, a
//! fake in unit tests): absolute tool path, clean environment with `LC_ALL=C`
//! plus `LVM_SUPPRESS_FD_WARNINGS=1` (lvm2 otherwise warns about every
//! inherited descriptor), stdin closed, `--` before VG/LV names. Success is
//! judged by the exit code only: lvm2 prints `WARNING:` lines on stderr for
//! normal, successful operations (oversubscribed thin pools, LAB.md pitfall 11).
//! Sizes are passed in bytes (`<n>b`), so lvm2 never rounds a unit we did not
//! see; the planner has rounded them to the extent size already.

use std::collections::BTreeMap;

use crate::exec::Cmd;

use super::report::{
    self, FULLREPORT_LV_FIELDS, FULLREPORT_PVSEG_FIELDS, FULLREPORT_SEG_FIELDS, FullReport,
    LV_FIELDS, PV_FIELDS, VG_FIELDS,
};

pub use crate::exec::Runner;

fn lvm(tool: &str) -> Cmd {
    Cmd::new(tool).env("LVM_SUPPRESS_FD_WARNINGS", "1")
}

fn bytes(n: u64) -> String {
    format!("{n}b")
}

/// `lvm fullreport` of `vgs` with the field lists [`report::parse_fullreport`]
/// reads.
pub fn fullreport_cmd(vgs: &[&str]) -> Cmd {
    lvm("lvm")
        .args([
            "fullreport",
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
        ])
        .args(["--configreport", "vg", "-o", &VG_FIELDS.join(",")])
        .args(["--configreport", "pv", "-o", &PV_FIELDS.join(",")])
        .args([
            "--configreport",
            "lv",
            "-o",
            &FULLREPORT_LV_FIELDS.join(","),
        ])
        .args([
            "--configreport",
            "seg",
            "-o",
            &FULLREPORT_SEG_FIELDS.join(","),
        ])
        .args([
            "--configreport",
            "pvseg",
            "-o",
            &FULLREPORT_PVSEG_FIELDS.join(","),
        ])
        .arg("--")
        .args(vgs)
}

/// `lvs` of one VG's visible LVs with [`LV_FIELDS`] (the driver's fresh look
/// before each operation).
pub fn lvs_cmd(vg: &str) -> Cmd {
    lvm("lvs")
        .args(["--reportformat", "json", "--units", "b", "--nosuffix", "-o"])
        .arg(LV_FIELDS.join(","))
        .args(["--", vg])
}

fn with_tags(mut cmd: Cmd, tags: &[String]) -> Cmd {
    for t in tags {
        cmd = cmd.arg("--addtag").arg(t);
    }
    cmd
}

/// A thick LV: `lvcreate -L`.
pub fn create_thick(vg: &str, lv: &str, size: u64, tags: &[String]) -> Cmd {
    let cmd = lvm("lvcreate").args(["-y", "-L", &bytes(size), "-n", lv]);
    with_tags(cmd, tags).args(["--", vg])
}

/// A thin LV in `pool`: `lvcreate -V --thinpool`.
pub fn create_thin(vg: &str, pool: &str, lv: &str, size: u64, tags: &[String]) -> Cmd {
    let cmd = lvm("lvcreate").args([
        "-y",
        "-V",
        &bytes(size),
        "--thinpool",
        &format!("{vg}/{pool}"),
        "-n",
        lv,
    ]);
    with_tags(cmd, tags).arg("--")
}

/// A thin snapshot of `origin`, activated like any LV (`-kn`: no
/// activation-skip flag, LAB.md pitfall 12). Used for snapshots and, O(1), for
/// clones: a thin snapshot is an independent thin device.
pub fn create_thin_snapshot(vg: &str, origin: &str, lv: &str, tags: &[String]) -> Cmd {
    let cmd = lvm("lvcreate").args(["-y", "-s", "-kn", "-n", lv]);
    with_tags(cmd, tags).args(["--", &format!("{vg}/{origin}")])
}

/// A thick (dm-snapshot, copy-on-write) snapshot of `origin` with `cow` bytes
/// of exception store.
pub fn create_thick_snapshot(vg: &str, origin: &str, lv: &str, cow: u64, tags: &[String]) -> Cmd {
    let cmd = lvm("lvcreate").args(["-y", "-s", "-L", &bytes(cow), "-n", lv]);
    with_tags(cmd, tags).args(["--", &format!("{vg}/{origin}")])
}

/// A thin pool of `size` data bytes and `metadata` metadata bytes.
pub fn create_pool(vg: &str, pool: &str, size: u64, metadata: u64, tags: &[String]) -> Cmd {
    let cmd = lvm("lvcreate").args([
        "-y",
        "--type",
        "thin-pool",
        "-L",
        &bytes(size),
        "--poolmetadatasize",
        &bytes(metadata),
        "-n",
        pool,
    ]);
    with_tags(cmd, tags).args(["--", vg])
}

/// `lvextend -L` to `size` bytes.
pub fn extend(vg: &str, lv: &str, size: u64) -> Cmd {
    lvm("lvextend").args(["-L", &bytes(size), "--", &format!("{vg}/{lv}")])
}

/// Adds and removes tags in one metadata commit.
pub fn retag(vg: &str, lv: &str, add: &[String], del: &[String]) -> Cmd {
    let mut cmd = lvm("lvchange");
    for t in del {
        cmd = cmd.arg("--deltag").arg(t);
    }
    with_tags(cmd, add).args(["--", &format!("{vg}/{lv}")])
}

/// Activates an LV, activation-skip flag or not.
pub fn activate(vg: &str, lv: &str) -> Cmd {
    lvm("lvchange").args(["-ay", "-K", "--", &format!("{vg}/{lv}")])
}

/// Removes one LV. Never `-f`: an LV that is open stays, and the error says so.
pub fn remove(vg: &str, lv: &str) -> Cmd {
    lvm("lvremove").args(["-y", "--", &format!("{vg}/{lv}")])
}

/// A device-mapper name: `-` in VG and LV names doubled, parts joined by one
/// `-` (`my-vg`/`pool0` → `my--vg-pool0`).
pub fn dm_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

/// `dmsetup message <vg>-<pool>-tpool 0 reserve_metadata_snap`: freezes a
/// copy of the pool's metadata (the kernel commits the open transaction first)
/// for the `-m` readers. Only one can be held per pool.
pub fn reserve_metadata_snap(vg: &str, pool: &str) -> Cmd {
    Cmd::new("dmsetup").args([
        "message",
        &format!("{}-tpool", dm_name(vg, pool)),
        "0",
        "reserve_metadata_snap",
    ])
}

/// `dmsetup message <vg>-<pool>-tpool 0 release_metadata_snap`.
pub fn release_metadata_snap(vg: &str, pool: &str) -> Cmd {
    Cmd::new("dmsetup").args([
        "message",
        &format!("{}-tpool", dm_name(vg, pool)),
        "0",
        "release_metadata_snap",
    ])
}

/// `dmsetup info -c` of every device-mapper device: `name:open:state`
/// lines (`Active` or `Suspended`), read by [`super::freeze::parse_info`].
pub fn dm_info() -> Cmd {
    Cmd::new("dmsetup").args([
        "info",
        "-c",
        "--noheadings",
        "--separator",
        ":",
        "-o",
        "name,open,suspended",
    ])
}

/// `dmsetup create <name> --table "0 <sectors> linear <device> 0"`: a
/// linear device over all of `device`, then its node (`mknodes`: hosts
/// without udev get none otherwise).
pub fn dm_create_linear(name: &str, sectors: u64, device: &std::path::Path) -> Cmd {
    Cmd::new("dmsetup")
        .args(["create", name, "--table"])
        .arg(linear_table(sectors, device))
}

/// `dmsetup reload <name> --table ...`: the layer over a grown LV (live
/// after the next resume).
pub fn dm_reload_linear(name: &str, sectors: u64, device: &std::path::Path) -> Cmd {
    Cmd::new("dmsetup")
        .args(["reload", name, "--table"])
        .arg(linear_table(sectors, device))
}

fn linear_table(sectors: u64, device: &std::path::Path) -> String {
    format!("0 {sectors} linear {} 0", device.display())
}

/// `dmsetup mknodes <name>`.
pub fn dm_mknodes(name: &str) -> Cmd {
    Cmd::new("dmsetup").args(["mknodes", name])
}

/// `dmsetup suspend <name>`: in-flight I/O completes, new I/O waits.
pub fn dm_suspend(name: &str) -> Cmd {
    Cmd::new("dmsetup").args(["suspend", name])
}

/// `dmsetup resume <name>`.
pub fn dm_resume(name: &str) -> Cmd {
    Cmd::new("dmsetup").args(["resume", name])
}

/// `dmsetup remove <name>` (refused by the kernel while it is open).
pub fn dm_remove(name: &str) -> Cmd {
    Cmd::new("dmsetup").args(["remove", name])
}

/// `thin_dump -m <tmeta>`: the held metadata snapshot as XML
/// ([`super::thin::parse_dump`]).
pub fn thin_dump(tmeta: &std::path::Path) -> Cmd {
    Cmd::new("thin_dump").arg("-m").arg(tmeta)
}

/// `thin_delta -m --snap1 <a> --snap2 <b> <tmeta>`: how thin device `b`
/// differs from `a` in the held metadata snapshot
/// ([`super::thin::parse_delta`]).
pub fn thin_delta(tmeta: &std::path::Path, snap1: u32, snap2: u32) -> Cmd {
    Cmd::new("thin_delta")
        .args(["-m", "--snap1", &snap1.to_string(), "--snap2"])
        .arg(snap2.to_string())
        .arg(tmeta)
}

/// What one discovery saw: the report of every VG that could be read, and why
/// each other VG could not.
#[derive(Debug, Clone, Default)]
pub struct Reports {
    /// Everything read.
    pub report: FullReport,
    /// VG → why it could not be read.
    pub failed: BTreeMap<String, String>,
}

/// Runs one `lvm fullreport` over `vgs`. When it fails (a missing or broken VG
/// makes the whole call exit non-zero, even though the other VGs print), each
/// VG is asked again on its own, so a failure is pinned to the back ends whose
/// VG it concerns and the others are still discovered.
pub fn fullreport(run: &dyn Runner, vgs: &[&str]) -> Reports {
    let mut out = Reports::default();
    if vgs.is_empty() {
        return out;
    }
    match read(run, vgs) {
        Ok(r) => out.report = r,
        Err(_) if vgs.len() > 1 => {
            for vg in vgs {
                match read(run, &[vg]) {
                    Ok(r) => {
                        out.report.vgs.extend(r.vgs);
                        out.report.pvs.extend(r.pvs);
                        out.report.lvs.extend(r.lvs);
                    }
                    Err(e) => {
                        out.failed.insert((*vg).to_owned(), e);
                    }
                }
            }
        }
        Err(e) => {
            out.failed.insert(vgs[0].to_owned(), e);
        }
    }
    out
}

fn read(run: &dyn Runner, vgs: &[&str]) -> Result<FullReport, String> {
    let out = run.run(&fullreport_cmd(vgs)).map_err(|e| chain(&e))?;
    report::parse_fullreport(&out.stdout).map_err(|e| chain(&e))
}

/// An error and its causes, `: `-joined.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
