//! Whether anything else has a volume file open: a process (a descriptor in
//! `/proc/<pid>/fd`, as qemu or tgtd hold one) or a loop device backed by it.
//!
//! Used by backups to decide whether a `file` volume can be read in place
//! instead of copied first on filesystems without reflink: with cinderblock's
//! own state lock held and nobody else holding the file, nothing writes it
//! while it is read. The kernel's own users that hold no descriptor (a LIO
//! `fileio` backstore) are not visible here; the caller treats a volume its
//! manifests export as in use.
//!
//! Reads `/proc` and `/sys` only; a process that vanishes or cannot be read
//! is skipped (it cannot be ours to ask about), but an unreadable `/proc` is
//! an error, so the caller falls back to the safe choice.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The first holder of `path` found other than this process: `pid N
/// (comm)` or `loop device NAME`; `None` when nobody holds it.
pub fn holder(path: &Path) -> io::Result<Option<String>> {
    let meta = fs::metadata(path)?;
    let (dev, ino) = (meta.dev(), meta.ino());
    let me = std::process::id().to_string();
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(pid) = name.to_str() else { continue };
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            // stat follows the fd's link to the open file itself
            if let Ok(m) = fs::metadata(fd.path())
                && m.dev() == dev
                && m.ino() == ino
            {
                let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                return Ok(Some(format!("pid {pid} ({})", comm.trim())));
            }
        }
    }
    if let Ok(loops) = fs::read_dir("/sys/block") {
        for l in loops.flatten() {
            let Ok(backing) = fs::read_to_string(l.path().join("loop/backing_file")) else {
                continue;
            };
            if let Ok(m) = fs::metadata(backing.trim())
                && m.dev() == dev
                && m.ino() == ino
            {
                return Ok(Some(format!(
                    "loop device {}",
                    l.file_name().to_string_lossy()
                )));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_child_holding_the_file_is_found_and_a_closed_file_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vol");
        std::fs::write(&p, b"x").unwrap();
        assert_eq!(
            super::holder(&p).unwrap(),
            None,
            "our own descriptors do not count"
        );
        let _mine = std::fs::File::open(&p).unwrap();
        assert_eq!(super::holder(&p).unwrap(), None);
        // a reader in another process
        #[allow(clippy::disallowed_methods)] // a test stands in for qemu
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::fs::File::open(&p).unwrap())
            .spawn()
            .unwrap();
        let found = super::holder(&p).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        let found = found.unwrap_or_default();
        assert!(
            found.starts_with(&format!("pid {} (sleep)", child.id())),
            "{found}"
        );
    }
}
