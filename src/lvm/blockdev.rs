//! Data on block devices: zeroing (the wipe before a thick LV is removed) and
//! the zero-aware copy of a thick clone.
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
//! The copy reads the source in 1 MiB blocks and writes only blocks that hold
//! data; runs of zero blocks, and the target's tail past the source, are zeroed
//! on the target instead of written. The target is a thick LV whose extents may
//! hold an earlier LV's bytes, so "skip the holes" (what `dd conv=sparse`
//! does, deciding from the source) would leave stale data: every byte of the
//! target is either copied or zeroed.
//!
//! Works on regular files too (the unit tests use them).

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, fallocate};

const BLOCK: usize = 1 << 20;
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

/// What a copy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Bytes written from the source.
    pub written: u64,
    /// Bytes zeroed on the target (zero runs of the source, and the tail).
    pub zeroed: u64,
}

/// Copies the first `src_len` bytes of `src` onto `dst` and zeroes `dst` from
/// there to `dst_len`, writing only blocks that hold data; then syncs `dst`.
pub fn copy_zeroing(src: &File, dst: &File, src_len: u64, dst_len: u64) -> io::Result<CopyStats> {
    if dst_len < src_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("target holds {dst_len} bytes, less than the source's {src_len}"),
        ));
    }
    let mut stats = CopyStats::default();
    let mut buf = vec![0u8; BLOCK];
    let mut pos = 0u64;
    let mut zero_from: Option<u64> = None;
    while pos < src_len {
        let n = usize::try_from(src_len - pos).unwrap_or(BLOCK).min(BLOCK);
        src.read_exact_at(&mut buf[..n], pos)?;
        if buf[..n].iter().all(|b| *b == 0) {
            zero_from.get_or_insert(pos);
        } else {
            if let Some(z) = zero_from.take() {
                zero(dst, z, pos - z)?;
                stats.zeroed += pos - z;
            }
            dst.write_all_at(&buf[..n], pos)?;
            stats.written += n as u64;
        }
        pos += n as u64;
    }
    let z = zero_from.unwrap_or(src_len);
    if dst_len > z {
        zero(dst, z, dst_len - z)?;
        stats.zeroed += dst_len - z;
    }
    dst.sync_all()?;
    Ok(stats)
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

    #[test]
    fn copy_writes_data_zeroes_gaps_and_tail_over_stale_bytes() {
        let dir = tempfile::tempdir().unwrap();
        // source: 1 MiB data, 2 MiB zeros, 1 MiB data, 512 KiB zeros
        let src = file(dir.path(), "src", 4 * MIB + MIB / 2, 0);
        src.write_all_at(&vec![1u8; usize::try_from(MIB).unwrap()], 0)
            .unwrap();
        src.write_all_at(&vec![2u8; usize::try_from(MIB).unwrap()], 3 * MIB)
            .unwrap();
        // target: larger, full of stale bytes
        let dst = file(dir.path(), "dst", 6 * MIB, 0xee);
        let stats = copy_zeroing(&src, &dst, 4 * MIB + MIB / 2, 6 * MIB).unwrap();
        assert_eq!(stats.written, 2 * MIB, "only the data blocks");
        assert_eq!(
            stats.zeroed,
            4 * MIB,
            "the 2 MiB gap, then 0.5 + 1.5 MiB tail"
        );
        let mut want = read_all(&src);
        want.resize(usize::try_from(6 * MIB).unwrap(), 0);
        assert!(read_all(&dst) == want, "no stale byte survives");
    }

    #[test]
    fn copy_refuses_a_smaller_target() {
        let dir = tempfile::tempdir().unwrap();
        let src = file(dir.path(), "src", 2 * MIB, 1);
        let dst = file(dir.path(), "dst", MIB, 0);
        let e = copy_zeroing(&src, &dst, 2 * MIB, MIB).unwrap_err();
        assert!(e.to_string().contains("less than the source"), "{e}");
    }
}
