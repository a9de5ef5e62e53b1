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
//! - [`ficlone`]: the `FICLONE` ioctl (a reflink).
//! - [`extent_map`]: the `FS_IOC_FIEMAP` ioctl (where each extent of a file
//!   sits on disk), and [`unshared`]: the ranges of a reflinked copy whose
//!   blocks are no longer those of an earlier copy (changed-block tracking
//!   on XFS and btrfs).
//!
//! The two ioctls are the crate's only `unsafe` blocks (nix wraps neither).
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

/// One extent of a file as `FS_IOC_FIEMAP` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    /// Offset in the file.
    pub logical: u64,
    /// Offset on the device.
    pub physical: u64,
    /// Length in bytes.
    pub len: u64,
    /// `FIEMAP_EXTENT_*` flags.
    pub flags: u32,
}

/// `FIEMAP_EXTENT_LAST`: the file's last extent.
pub const FIEMAP_EXTENT_LAST: u32 = 0x0001;
/// `FIEMAP_EXTENT_UNWRITTEN`: allocated, reads as zeros.
pub const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x0800;
/// `FIEMAP_EXTENT_SHARED`: the blocks are shared with another file.
pub const FIEMAP_EXTENT_SHARED: u32 = 0x2000;
/// Flags that make an extent's physical address no proof of identity: its
/// location is unknown or delayed (`UNKNOWN`, `DELALLOC`), its data is
/// encoded or packed with others (`ENCODED`, `DATA_ENCRYPTED`,
/// `NOT_ALIGNED`, `DATA_INLINE`, `DATA_TAIL`), or it is merged
/// (`MERGED`). Such extents always count as changed.
const FIEMAP_UNTRUSTED: u32 = 0x0002 | 0x0004 | 0x0008 | 0x0080 | 0x0100 | 0x0200 | 0x0400 | 0x1000;

/// Every extent of `file` (`FS_IOC_FIEMAP` with `FIEMAP_FLAG_SYNC`: dirty
/// pages are written first, so no extent is left delayed), in file order.
/// `EOPNOTSUPP` where the file system has no extent map.
pub fn extent_map(file: &File) -> io::Result<Vec<Mapped>> {
    let mut out = Vec::new();
    let mut start = 0u64;
    loop {
        let batch = fiemap::map(file.as_fd(), start)?;
        let Some(last) = batch.last().copied() else {
            break;
        };
        out.extend_from_slice(&batch);
        if last.flags & FIEMAP_EXTENT_LAST != 0 {
            break;
        }
        let next = last.logical.saturating_add(last.len);
        if next <= start {
            break;
        }
        start = next;
    }
    Ok(out)
}

/// The byte ranges of `new` (the extents of a file `new_len` long) whose
/// content may differ from `base` (the extents of an earlier reflinked copy
/// of the same file): everything except the ranges where both map the same
/// physical blocks at the same offset, which no write can have changed
/// (reflinked blocks are copied on write, never written in place, and the
/// base holds its own reference). A range that holds data in one and a hole
/// in the other counts as changed, as does every extent whose flags make its
/// address no proof ([`FIEMAP_UNTRUSTED`]). Sorted, merged, within
/// `0..new_len`.
pub fn unshared(new: &[Mapped], base: &[Mapped], new_len: u64) -> Vec<Range<u64>> {
    let trusted = |m: &&Mapped| m.flags & FIEMAP_UNTRUSTED == 0;
    // Pieces of `new` that are the same blocks as `base`.
    let mut same: Vec<Range<u64>> = Vec::new();
    let base_ok: Vec<&Mapped> = base.iter().filter(trusted).collect();
    for n in new.iter().filter(trusted) {
        let (n_end, n_delta) = (n.logical + n.len, n.physical.wrapping_sub(n.logical));
        // First base extent that ends after this one starts.
        let from = base_ok.partition_point(|b| b.logical + b.len <= n.logical);
        for b in &base_ok[from..] {
            if b.logical >= n_end {
                break;
            }
            let unwritten = FIEMAP_EXTENT_UNWRITTEN;
            if b.physical.wrapping_sub(b.logical) == n_delta
                && (b.flags & unwritten) == (n.flags & unwritten)
            {
                same.push(b.logical.max(n.logical)..(b.logical + b.len).min(n_end));
            }
        }
    }
    // Everything either file maps, minus the same pieces.
    let mut mapped: Vec<Range<u64>> = new
        .iter()
        .chain(base)
        .map(|m| m.logical..m.logical.saturating_add(m.len))
        .collect();
    mapped.sort_by_key(|r| r.start);
    same.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::new();
    let mut s = same.iter().peekable();
    for r in merge(mapped) {
        let mut at = r.start;
        while let Some(x) = s.peek() {
            if x.end <= at {
                s.next();
                continue;
            }
            if x.start >= r.end {
                break;
            }
            if x.start > at {
                push_merged(&mut out, at..x.start);
            }
            at = at.max(x.end);
            if x.end <= r.end {
                s.next();
            } else {
                break;
            }
        }
        if at < r.end {
            push_merged(&mut out, at..r.end);
        }
    }
    out.into_iter()
        .filter_map(|r| {
            let r = r.start.min(new_len)..r.end.min(new_len);
            (r.start < r.end).then_some(r)
        })
        .collect()
}

/// Sorted ranges merged where they touch or overlap.
fn merge(sorted: Vec<Range<u64>>) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::with_capacity(sorted.len());
    for r in sorted {
        push_merged(&mut out, r);
    }
    out
}

fn push_merged(out: &mut Vec<Range<u64>>, r: Range<u64>) {
    match out.last_mut() {
        Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
        _ => out.push(r),
    }
}

// Offsets: files here are < 8 EiB, so u64 <-> i64 never truncates; saturate
// rather than wrap should that ever change.
fn to_off(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_off(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The `FS_IOC_FIEMAP` ioctl, which nix does not wrap: one of the crate's two
/// `unsafe` blocks.
mod fiemap {
    #![allow(unsafe_code)]

    use std::os::fd::{AsRawFd, BorrowedFd};

    use super::Mapped;

    /// Extents asked for per call.
    const BATCH: usize = 256;
    /// `FIEMAP_FLAG_SYNC`: write dirty pages before mapping.
    const FIEMAP_FLAG_SYNC: u32 = 0x0001;

    /// `struct fiemap_extent` from `<linux/fiemap.h>`.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Extent {
        logical: u64,
        physical: u64,
        length: u64,
        reserved64: [u64; 2],
        flags: u32,
        reserved: [u32; 3],
    }

    /// `struct fiemap` with room for [`BATCH`] extents after its header.
    #[repr(C)]
    struct Request {
        start: u64,
        length: u64,
        flags: u32,
        mapped_extents: u32,
        extent_count: u32,
        reserved: u32,
        extents: [Extent; BATCH],
    }

    /// `FS_IOC_FIEMAP` = `_IOWR('f', 11, struct fiemap)`: the size in the
    /// request code is the 32-byte header's, without the extents.
    pub(super) const FS_IOC_FIEMAP: nix::sys::ioctl::ioctl_num_type =
        nix::request_code_readwrite!(b'f', 11, 32);

    nix::ioctl_readwrite_bad!(fiemap_raw, FS_IOC_FIEMAP, Request);

    /// The extents from byte `start` on, at most [`BATCH`].
    pub(super) fn map(fd: BorrowedFd<'_>, start: u64) -> std::io::Result<Vec<Mapped>> {
        let mut req = Box::new(Request {
            start,
            length: u64::MAX - start,
            flags: FIEMAP_FLAG_SYNC,
            mapped_extents: 0,
            extent_count: u32::try_from(BATCH).unwrap_or(0),
            reserved: 0,
            extents: [Extent::default(); BATCH],
        });
        // SAFETY: `req` is a live, exclusively borrowed `struct fiemap` whose
        // `extent_count` says how many `fiemap_extent`s follow its header,
        // and exactly that many do (the array is part of the struct): the
        // kernel writes at most that many. The descriptor is borrowed, hence
        // open for the whole call; a bad one yields an errno.
        unsafe { fiemap_raw(fd.as_raw_fd(), &raw mut *req) }?;
        let n = usize::try_from(req.mapped_extents).unwrap_or(0).min(BATCH);
        Ok(req.extents[..n]
            .iter()
            .map(|e| Mapped {
                logical: e.logical,
                physical: e.physical,
                len: e.length,
                flags: e.flags,
            })
            .collect())
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn the_request_code_matches_linux_header() {
            assert_eq!(super::FS_IOC_FIEMAP, 0xC020_660B);
            assert_eq!(std::mem::size_of::<super::Extent>(), 56);
            assert_eq!(std::mem::offset_of!(super::Request, extents), 32);
        }
    }
}

/// The `FICLONE` ioctl, which nix does not wrap: one of the crate's two
/// `unsafe` blocks.
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

    fn m(logical: u64, physical: u64, len: u64) -> Mapped {
        Mapped {
            logical,
            physical,
            len,
            flags: 0,
        }
    }

    #[test]
    fn unshared_is_what_was_rewritten_added_or_punched() {
        const K: u64 = 4096;
        // The base: 0..16K at 100K, 32K..48K at 200K.
        let base = [m(0, 100 * K, 16 * K), m(32 * K, 200 * K, 16 * K)];
        // The new copy: 4K..8K rewritten (copied on write to 900K), 32K..48K
        // punched, 64K..68K written anew.
        let new = [
            m(0, 100 * K, 4 * K),
            m(4 * K, 900 * K, 4 * K),
            m(8 * K, 108 * K, 8 * K),
            m(64 * K, 500 * K, 4 * K),
        ];
        assert_eq!(
            unshared(&new, &base, 1 << 20),
            vec![4 * K..8 * K, 32 * K..48 * K, 64 * K..68 * K]
        );
        // Identical maps: nothing changed.
        assert_eq!(unshared(&base, &base, 1 << 20), Vec::<Range<u64>>::new());
        // The same blocks at another offset are not the same data there.
        let moved = [m(16 * K, 100 * K, 16 * K), m(32 * K, 200 * K, 16 * K)];
        assert_eq!(unshared(&moved, &base, 1 << 20), vec![0..32 * K]);
        // Ranges are cut at the new length.
        assert_eq!(
            unshared(&new, &base, 40 * K),
            vec![4 * K..8 * K, 32 * K..40 * K]
        );
    }

    #[test]
    fn extents_whose_address_proves_nothing_count_as_changed() {
        const K: u64 = 4096;
        let base = [m(0, 100 * K, 16 * K)];
        let delayed = [Mapped {
            flags: 0x0004, // DELALLOC
            ..m(0, 100 * K, 16 * K)
        }];
        assert_eq!(unshared(&delayed, &base, 1 << 20), vec![0..16 * K]);
        // Allocated but unwritten in one and written in the other.
        let unwritten = [Mapped {
            flags: FIEMAP_EXTENT_UNWRITTEN,
            ..m(0, 100 * K, 16 * K)
        }];
        assert_eq!(unshared(&unwritten, &base, 1 << 20), vec![0..16 * K]);
        let shared = [Mapped {
            flags: FIEMAP_EXTENT_SHARED | FIEMAP_EXTENT_LAST,
            ..m(0, 100 * K, 16 * K)
        }];
        assert!(unshared(&shared, &base, 1 << 20).is_empty());
    }
}
