//! Data on block devices: zeroing (the wipe before a thick LV is removed, and
//! the gaps of a thick copy target in [`crate::copy`]) and sizes.
//!
//! Zeroing is `fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)` on the
//! device: for a block device the kernel turns it into
//! `blkdev_issue_zeroout`, the same path as the `BLKZEROOUT` ioctl and
//! `blkdiscard -z` (a `WRITE ZEROES` command where the device offers one,
//! zero pages otherwise), without an `unsafe` ioctl wrapper or another tool.
//! Never `dd if=/dev/zero` (Cinder's way: every byte through user space).
//! Where the kernel refuses the call (`EOPNOTSUPP`, old kernels), zeros are
//! written in 8 MiB blocks, with a warning.
//!
//! Copies onto thick LVs (clones, migration targets) are
//! [`crate::copy`]'s: it writes data blocks and zeroes every other byte of
//! the target through [`zero`], because a thick LV's extents may hold an
//! earlier LV's bytes ("skip the holes", what `dd conv=sparse` does, deciding
//! from the source, would leave stale data).
//!
//! Works on regular files too (the unit tests use them).

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, fallocate};

const ZERO_WRITE: usize = 8 << 20;
/// Largest single zero-range request: bounded so that a slow device gives
/// control back (and a kill lands) between requests.
const ZERO_CHUNK: u64 = 1 << 30;

/// The size of a block device (or file) in bytes.
pub fn size(file: &File) -> io::Result<u64> {
    // Seeking to the end works for block devices, where metadata().len() is 0.
    let mut f = file;
    f.seek(SeekFrom::End(0))
}

/// Zeroes `[from, from + len)`.
pub fn zero(file: &File, from: u64, len: u64) -> io::Result<()> {
    let mut pos = from;
    let end = from.saturating_add(len);
    while pos < end {
        let n = (end - pos).min(ZERO_CHUNK);
        let (Ok(off), Ok(l)) = (i64::try_from(pos), i64::try_from(n)) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range beyond i64",
            ));
        };
        let flags = FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match fallocate(file.as_fd(), flags, off, l) {
            Ok(()) => {}
            Err(Errno::EOPNOTSUPP | Errno::EINVAL) => {
                tracing::warn!(
                    bytes = end - pos,
                    "the kernel refuses FALLOC_FL_ZERO_RANGE here; writing zeros instead (slow)"
                );
                return write_zeros(file, pos, end);
            }
            Err(e) => return Err(e.into()),
        }
        pos += n;
    }
    Ok(())
}

fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; ZERO_WRITE];
    let mut pos = from;
    while pos < to {
        let n = usize::try_from(to - pos)
            .unwrap_or(ZERO_WRITE)
            .min(ZERO_WRITE);
        file.write_all_at(&zeros[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn file(dir: &std::path::Path, name: &str, len: u64, fill: u8) -> File {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join(name))
            .unwrap();
        f.write_all_at(&vec![fill; usize::try_from(len).unwrap()], 0)
            .unwrap();
        f
    }

    fn read_all(f: &File) -> Vec<u8> {
        let mut v = vec![0u8; usize::try_from(size(f).unwrap()).unwrap()];
        f.read_exact_at(&mut v, 0).unwrap();
        v
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn zero_clears_a_range_and_keeps_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path(), "dev", 3 * MIB, 0xaa);
        zero(&f, MIB / 2, MIB).unwrap();
        let v = read_all(&f);
        assert_eq!(v.len() as u64, 3 * MIB);
        let (a, b) = (
            usize::try_from(MIB / 2).unwrap(),
            usize::try_from(3 * MIB / 2).unwrap(),
        );
        assert!(v[..a].iter().all(|x| *x == 0xaa));
        assert!(v[a..b].iter().all(|x| *x == 0));
        assert!(v[b..].iter().all(|x| *x == 0xaa));
    }
}
