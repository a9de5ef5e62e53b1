//! Who holds a volume open: the consumers discovery reports, so the planner
//! refuses to delete, replace or move what something is using.
//!
//! One [`Holders::scan`] per discovery (never per volume): one pass over
//! `/proc/*/fd` (every descriptor's target `stat`ed once) and over the loop
//! devices' `backing_file`s, into two maps: regular files by (device, inode)
//! and block devices by device number. Each volume is then a map lookup, so
//! the cost is that of the host's open descriptors, not of volumes × fds
//! (the benchmark `inuse`: 10,000 volume files, 2,000 open files).
//!
//! What is visible: processes (qemu, tgtd, a `dd`), loop devices, and, for a
//! block device ([`Holders::block_device`], asked only of LVs that lvm2 says
//! are open), mounts of this mount namespace and stacked device-mapper
//! devices. What is not: the kernel's users that hold no descriptor, such as
//! a LIO `fileio` backstore (the planner knows exports from configfs), and
//! the descriptors of other users' processes when not run as root.
//!
//! This process's own descriptors never count (the backup engine reads the
//! volume it asks about). A process or device that vanishes mid-scan is
//! skipped; an unreadable `/proc` is an error, so callers take the safe
//! choice.
//!
//! Must not: decide anything (the planner does), or spawn processes.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What holds a file or device open.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "camelCase", tag = "by")]
pub enum Holder {
    /// A process with a descriptor on it.
    Process {
        /// Its pid.
        pid: u32,
        /// Its command name (`/proc/PID/comm`).
        command: String,
    },
    /// A loop device backed by it.
    Loop {
        /// The device (`loop0`).
        device: String,
    },
    /// A file system on it, mounted.
    Mount {
        /// Where.
        at: PathBuf,
    },
    /// A device stacked on it (a device-mapper table that maps it).
    Device {
        /// The device's name (`dm-3`, or its mapper name).
        name: String,
    },
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Process { pid, command } => write!(f, "pid {pid} ({command})"),
            Holder::Loop { device } => write!(f, "loop device {device}"),
            Holder::Mount { at } => write!(f, "a file system mounted at {}", at.display()),
            Holder::Device { name } => write!(f, "device {name}"),
        }
    }
}

/// The holders found by one scan.
#[derive(Debug, Clone, Default)]
pub struct Holders {
    /// Regular files by (`st_dev`, `st_ino`): the first holder found.
    files: HashMap<(u64, u64), Holder>,
    /// Block devices by `st_rdev`.
    devices: HashMap<u64, Holder>,
    /// Descriptors looked at (for the benchmark and the debug log).
    fds: usize,
}

impl Holders {
    /// Scans `/proc` and `/sys/block` of this host, leaving this process out.
    pub fn scan() -> io::Result<Holders> {
        Self::scan_in(
            Path::new("/proc"),
            Path::new("/sys/block"),
            std::process::id(),
        )
    }

    /// [`Holders::scan`] over other roots, leaving out process `me`.
    pub fn scan_in(proc: &Path, sys_block: &Path, me: u32) -> io::Result<Holders> {
        let mut h = Holders::default();
        let me = me.to_string();
        for entry in fs::read_dir(proc)? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let Some(pid) = name.to_str() else { continue };
            if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
                continue;
            };
            let mut command: Option<String> = None;
            for fd in fds.flatten() {
                h.fds += 1;
                // stat follows the fd's link to the open file itself
                let Ok(m) = fs::metadata(fd.path()) else {
                    continue;
                };
                let ft = m.file_type();
                let key = if ft.is_file() {
                    Key::File(m.dev(), m.ino())
                } else if ft.is_block_device() {
                    Key::Device(m.rdev())
                } else {
                    continue;
                };
                if h.has(key) {
                    continue;
                }
                let command = command
                    .get_or_insert_with(|| {
                        fs::read_to_string(entry.path().join("comm"))
                            .map(|c| c.trim().to_owned())
                            .unwrap_or_default()
                    })
                    .clone();
                let pid = pid.parse().unwrap_or_default();
                h.insert(key, Holder::Process { pid, command });
            }
        }
        if let Ok(devices) = fs::read_dir(sys_block) {
            for d in devices.flatten() {
                let Ok(backing) = fs::read_to_string(d.path().join("loop/backing_file")) else {
                    continue;
                };
                let Ok(m) = fs::metadata(backing.trim_end_matches('\n')) else {
                    continue;
                };
                let key = if m.file_type().is_block_device() {
                    Key::Device(m.rdev())
                } else {
                    Key::File(m.dev(), m.ino())
                };
                if !h.has(key) {
                    let device = d.file_name().to_string_lossy().into_owned();
                    h.insert(key, Holder::Loop { device });
                }
            }
        }
        tracing::debug!(
            fds = h.fds,
            files = h.files.len(),
            devices = h.devices.len(),
            "open files scanned"
        );
        Ok(h)
    }

    fn has(&self, key: Key) -> bool {
        match key {
            Key::File(dev, ino) => self.files.contains_key(&(dev, ino)),
            Key::Device(rdev) => self.devices.contains_key(&rdev),
        }
    }

    fn insert(&mut self, key: Key, holder: Holder) {
        match key {
            Key::File(dev, ino) => self.files.insert((dev, ino), holder),
            Key::Device(rdev) => self.devices.insert(rdev, holder),
        };
    }

    /// Who holds the regular file with this (`st_dev`, `st_ino`).
    pub fn file(&self, dev: u64, ino: u64) -> Option<&Holder> {
        self.files.get(&(dev, ino))
    }

    /// Who holds the file at `path` (`None` also when it does not exist).
    pub fn path(&self, path: &Path) -> Option<&Holder> {
        let m = fs::metadata(path).ok()?;
        self.file(m.dev(), m.ino())
    }

    /// Who holds the block device at `path` (an LV's `/dev/VG/LV`): a
    /// process or loop device from the scan, else a mount of it
    /// (`/proc/self/mountinfo`), else a device stacked on it
    /// (`/sys/dev/block/MAJ:MIN/holders`). `None` when none of these is
    /// visible (or `path` is not a block device).
    pub fn block_device(&self, path: &Path) -> Option<Holder> {
        let m = fs::metadata(path).ok()?;
        if !m.file_type().is_block_device() {
            return None;
        }
        let rdev = m.rdev();
        if let Some(h) = self.devices.get(&rdev) {
            return Some(h.clone());
        }
        let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
        if let Ok(text) = fs::read_to_string("/proc/self/mountinfo")
            && let Some(at) = mounted_at(&text, major, minor)
        {
            return Some(Holder::Mount { at });
        }
        let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}/holders"));
        let stacked = fs::read_dir(sys).ok()?.flatten().next()?;
        let kernel = stacked.file_name().to_string_lossy().into_owned();
        let name = fs::read_to_string(Path::new("/sys/block").join(&kernel).join("dm/name"))
            .map(|n| n.trim().to_owned())
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or(kernel);
        Some(Holder::Device { name })
    }

    /// Descriptors looked at by the scan.
    pub fn descriptors(&self) -> usize {
        self.fds
    }
}

#[derive(Clone, Copy)]
enum Key {
    File(u64, u64),
    Device(u64),
}

/// The mount point of the first mount of device `major:minor` in
/// `/proc/PID/mountinfo` text (fields: id, parent, `MAJ:MIN`, root, mount
/// point with `\NNN` octal escapes, ...).
pub fn mounted_at(mountinfo: &str, major: u64, minor: u64) -> Option<PathBuf> {
    let want = format!("{major}:{minor}");
    mountinfo.lines().find_map(|line| {
        let mut f = line.split(' ');
        let dev = f.nth(2)?;
        let point = f.nth(1)?;
        (dev == want).then(|| PathBuf::from(unescape(point)))
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space) in mountinfo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(d) = b.get(i + 1..i + 4)
            && d.iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((d[0] - b'0') << 6 | (d[1] - b'0') << 3 | (d[2] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first holder of `path` other than this process, with a scan of its
/// own (one question: the backup engine's). `None` when nobody holds it.
pub fn holder(path: &Path) -> io::Result<Option<Holder>> {
    let meta = fs::metadata(path)?;
    Ok(Holders::scan()?.file(meta.dev(), meta.ino()).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_holding_the_file_is_found_and_a_closed_file_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vol");
        std::fs::write(&p, b"x").unwrap();
        assert_eq!(
            holder(&p).unwrap(),
            None,
            "our own descriptors do not count"
        );
        let _mine = std::fs::File::open(&p).unwrap();
        assert_eq!(holder(&p).unwrap(), None);
        // a reader in another process
        #[allow(clippy::disallowed_methods)] // a test stands in for qemu
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::fs::File::open(&p).unwrap())
            .spawn()
            .unwrap();
        let scan = Holders::scan().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            scan.path(&p).map(ToString::to_string),
            Some(format!("pid {} (sleep)", child.id()))
        );
        assert!(scan.descriptors() >= 3);
        let other = dir.path().join("other");
        std::fs::write(&other, b"y").unwrap();
        assert_eq!(scan.path(&other), None);
    }

    #[test]
    fn mountinfo_finds_the_device_and_unescapes_the_mount_point() {
        let text = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    40 22 253:3 / /srv/my\\040data rw shared:20 - xfs /dev/mapper/vg-lv rw\n";
        assert_eq!(
            mounted_at(text, 253, 3),
            Some(PathBuf::from("/srv/my data"))
        );
        assert_eq!(mounted_at(text, 8, 1), Some(PathBuf::from("/")));
        assert_eq!(mounted_at(text, 253, 4), None);
        assert_eq!(mounted_at("garbage\n\n1 2\n", 1, 2), None);
        assert_eq!(unescape("a\\134b\\09"), "a\\b\\09");
    }
}
