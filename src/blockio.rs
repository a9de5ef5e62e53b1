//! Block I/O helpers on open files and block devices: where a file holds
//! data (`SEEK_DATA`/`SEEK_HOLE`), sizes, zeroing a range, and reflinks.
//!
//! Owns the system calls every data mover shares: the copy engine
//! ([`crate::copy`]), the `file` back end's snapshots and clones, the `lvm`
//! back end's wipes, backups and restores.
//!
//! - [`next_extent`] / [`data_ranges`]: a file's data extents; a file system
//!   without `SEEK_DATA` reports everything as data.
//! - [`size`]: the size of a file or block device (seeking to the end works
//!   for both; a device's `metadata().len()` is 0).
//! - [`zero`]: `fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)`; on a
//!   block device the kernel turns it into `blkdev_issue_zeroout`, the same
//!   path as the `BLKZEROOUT` ioctl and `blkdiscard -z` (a `WRITE ZEROES`
//!   command where the device offers one, zero pages otherwise), without an
//!   ioctl wrapper or another tool. Never `dd if=/dev/zero` (Cinder's way:
//!   every byte through user space). Where the kernel refuses the call
//!   (`EOPNOTSUPP`, old kernels), zeros are written in 8 MiB blocks, with a
//!   warning.
//! - [`ficlone`]: the `FICLONE` ioctl (a reflink), the crate's one `unsafe`
//!   block.
//!
//! Invariants: a leaf (uses nothing of this crate); errors are plain
//! `io::Error`s, and callers name the path.
//!
//! Must not: decide what to copy or zero (the callers do), or open files by
//! name (callers hand in open descriptors).

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, fallocate};
use nix::unistd::{Whence, lseek};

const ZERO_WRITE: usize = 8 << 20;
/// Largest single zero-range request: bounded so that a slow device gives
/// control back (and a kill lands) between requests.
const ZERO_CHUNK: u64 = 1 << 30;

/// The size of a block device (or file) in bytes.
pub fn size(file: &File) -> io::Result<u64> {
    let mut f = file;
    f.seek(SeekFrom::End(0))
}

/// The next data extent at or after `offset`, clamped to `len` (`None` past
/// the last one); a file system without `SEEK_DATA` reports everything as
/// data.
pub fn next_extent(file: &File, offset: u64, len: u64) -> io::Result<Option<(u64, u64)>> {
    let start = match lseek(file.as_fd(), to_off(offset), Whence::SeekData) {
        Ok(pos) => from_off(pos),
        // No data past `offset`.
        Err(Errno::ENXIO) => return Ok(None),
        // No SEEK_DATA here: everything is data.
        Err(Errno::EINVAL | Errno::EOPNOTSUPP) => return Ok(Some((offset, len))),
        Err(e) => return Err(e.into()),
    };
    if start >= len {
        return Ok(None);
    }
    let end = match lseek(file.as_fd(), to_off(start), Whence::SeekHole) {
        Ok(pos) => from_off(pos).min(len),
        Err(Errno::ENXIO) => len,
        Err(e) => return Err(e.into()),
    };
    Ok(Some((start, end)))
}

/// Every data extent of the first `len` bytes of `file`, in order.
pub fn data_ranges(file: &File, len: u64) -> io::Result<Vec<Range<u64>>> {
    let mut ranges = Vec::new();
    let mut offset = 0;
    while offset < len {
        let Some((start, end)) = next_extent(file, offset, len)? else {
            break;
        };
        ranges.push(start..end);
        offset = end;
    }
    Ok(ranges)
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

/// Writes zeros over `[from, to)` in 8 MiB blocks: where the kernel or the
/// file system refuses to zero or reserve a range.
pub fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
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

/// Makes `dst` share all of `src`'s blocks (`FICLONE`); an error means "not
/// here" (ext4 answers `EOPNOTSUPP`).
pub fn ficlone(dst: &File, src: &File) -> nix::Result<()> {
    reflink::ficlone(dst.as_fd(), src.as_fd())
}

// Offsets: files here are < 8 EiB, so u64 <-> i64 never truncates; saturate
// rather than wrap should that ever change.
fn to_off(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_off(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The crate's one `unsafe` block: the `FICLONE` ioctl, which nix does not wrap.
mod reflink {
    #![allow(unsafe_code)]

    use super::{AsRawFd, BorrowedFd};

    /// `FICLONE` = `_IOW(0x94, 9, int)` from `<linux/fs.h>`.
    pub(super) const FICLONE: nix::sys::ioctl::ioctl_num_type =
        nix::request_code_write!(0x94, 9, std::mem::size_of::<nix::libc::c_int>());

    nix::ioctl_write_int_bad!(ficlone_raw, FICLONE);

    /// Makes `dst` share `src`'s blocks (whole file).
    pub(super) fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> nix::Result<()> {
        // SAFETY: FICLONE's argument is an integer file descriptor passed by
        // value; the kernel reads no memory of ours. Both descriptors are
        // borrowed, hence open for the whole call. A wrong or unsupported fd
        // yields an errno, never undefined behaviour.
        unsafe { ficlone_raw(dst.as_raw_fd(), src.as_raw_fd()) }.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    const MIB: u64 = 1 << 20;

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

    #[test]
    fn ficlone_request_code_matches_linux_header() {
        assert_eq!(reflink::FICLONE, 0x4004_9409);
    }

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

    #[test]
    fn data_ranges_skip_holes() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("sparse")).unwrap();
        f.set_len(64 * MIB).unwrap();
        f.write_all_at(&[1u8; 4096], 8 * MIB).unwrap();
        let r = data_ranges(&f, 64 * MIB).unwrap();
        // Without SEEK_DATA support the whole file is one range; with it,
        // the data block is covered and the rest is a hole.
        assert!(
            (r.len() == 1 && r[0] == (0..64 * MIB))
                || (r.len() == 1
                    && r[0].start <= 8 * MIB
                    && r[0].end >= 8 * MIB + 4096
                    && r[0].end - r[0].start < 64 * MIB),
            "{r:?}"
        );
    }
}
