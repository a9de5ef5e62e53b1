//! External sort of fixed-size records in bounded memory: what lets prune
//! handle a repository of any size.
//!
//! Records are pushed into a buffer of a fixed number of records; a full
//! buffer is sorted (and, when asked, its duplicates dropped) and written to
//! a run file in a scratch directory. [`Sorter::finish`] merges the runs
//! with a heap, at most [`FAN_IN`] at a time (more runs are first merged
//! into longer ones), and yields the records in order. Memory is the buffer
//! plus one read buffer per merged run, whatever the number of records.
//!
//! Why not the `extsort` crate: prune's chunk-id set gains most from
//! dropping duplicates inside each run before it is written (consecutive
//! backups of a volume share almost every chunk, so a run of a million ids
//! shrinks to a fraction), which `extsort` cannot do; it also keeps one
//! open file per run with no cascaded merge, and brings rayon.
//!
//! Must not: hold more than its buffer and merge buffers, or leave a run
//! file behind (they are removed as soon as they are merged, and the
//! caller's scratch directory is removed with it).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::BackupError;

/// Runs merged at once.
pub const FAN_IN: usize = 64;
/// Bytes of each run's read buffer during a merge.
const READ_BUF: usize = 128 << 10;

/// A record of fixed length with a total order.
pub trait Record: Copy + Ord {
    /// Bytes of one encoded record.
    const LEN: usize;
    /// Encodes into `out` (exactly [`Self::LEN`] bytes).
    fn put(&self, out: &mut [u8]);
    /// Decodes from `b` (exactly [`Self::LEN`] bytes).
    fn get(b: &[u8]) -> Self;
}

impl Record for u64 {
    const LEN: usize = 8;
    fn put(&self, out: &mut [u8]) {
        out.copy_from_slice(&self.to_be_bytes());
    }
    fn get(b: &[u8]) -> Self {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_be_bytes(a)
    }
}

impl Record for [u8; 32] {
    const LEN: usize = 32;
    fn put(&self, out: &mut [u8]) {
        out.copy_from_slice(self);
    }
    fn get(b: &[u8]) -> Self {
        let mut a = [0u8; 32];
        a.copy_from_slice(b);
        a
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BackupError {
    let path = path.to_owned();
    move |source| BackupError::Io { op, path, source }
}

/// Collects records and yields them sorted.
#[derive(Debug)]
pub struct Sorter<T: Record> {
    dir: PathBuf,
    name: &'static str,
    buf: Vec<T>,
    cap: usize,
    runs: Vec<PathBuf>,
    dedup: bool,
    next_run: usize,
}

impl<T: Record> Sorter<T> {
    /// A sorter writing its runs as `DIR/NAME-<n>`, holding about `memory`
    /// bytes of records at a time; with `dedup`, equal records come out once.
    pub fn new(dir: &Path, name: &'static str, memory: usize, dedup: bool) -> Self {
        let cap = (memory / std::mem::size_of::<T>().max(1)).max(1024);
        Self {
            dir: dir.to_owned(),
            name,
            buf: Vec::new(),
            cap,
            runs: Vec::new(),
            dedup,
            next_run: 0,
        }
    }

    /// Adds a record.
    pub fn push(&mut self, t: T) -> Result<(), BackupError> {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.cap);
        }
        self.buf.push(t);
        if self.buf.len() >= self.cap {
            self.spill()?;
        }
        Ok(())
    }

    fn sort_buf(&mut self) {
        self.buf.sort_unstable();
        if self.dedup {
            self.buf.dedup();
        }
    }

    fn run_path(&mut self) -> PathBuf {
        let p = self.dir.join(format!("{}-{}", self.name, self.next_run));
        self.next_run += 1;
        p
    }

    /// Sorts the buffer into a run file.
    fn spill(&mut self) -> Result<(), BackupError> {
        self.sort_buf();
        let path = self.run_path();
        let file = File::create(&path).map_err(io_err("create", &path))?;
        let mut out = BufWriter::with_capacity(READ_BUF, file);
        let mut rec = vec![0u8; T::LEN];
        for t in self.buf.drain(..) {
            t.put(&mut rec);
            out.write_all(&rec).map_err(io_err("write", &path))?;
        }
        out.flush().map_err(io_err("write", &path))?;
        self.runs.push(path);
        Ok(())
    }

    /// Every record pushed, in order (deduplicated if asked).
    pub fn finish(mut self) -> Result<Sorted<T>, BackupError> {
        if self.runs.is_empty() {
            self.sort_buf();
            let buf = std::mem::take(&mut self.buf);
            return Ok(Sorted {
                inner: Inner::Memory(buf.into_iter()),
                dedup: self.dedup,
                last: None,
            });
        }
        if !self.buf.is_empty() {
            self.spill()?;
        }
        self.buf = Vec::new();
        // Cascade until one merge of at most FAN_IN runs is left.
        while self.runs.len() > FAN_IN {
            let group: Vec<PathBuf> = self.runs.drain(..FAN_IN).collect();
            let path = self.run_path();
            let mut merged = Sorted {
                inner: Inner::Runs(Merge::<T>::open(group)?),
                dedup: self.dedup,
                last: None,
            };
            let file = File::create(&path).map_err(io_err("create", &path))?;
            let mut out = BufWriter::with_capacity(READ_BUF, file);
            let mut rec = vec![0u8; T::LEN];
            for t in &mut merged {
                t?.put(&mut rec);
                out.write_all(&rec).map_err(io_err("write", &path))?;
            }
            out.flush().map_err(io_err("write", &path))?;
            self.runs.push(path);
        }
        Ok(Sorted {
            inner: Inner::Runs(Merge::open(std::mem::take(&mut self.runs))?),
            dedup: self.dedup,
            last: None,
        })
    }
}

impl<T: Record> Drop for Sorter<T> {
    fn drop(&mut self) {
        for r in &self.runs {
            let _ = fs::remove_file(r);
        }
    }
}

/// The sorted records of a [`Sorter`].
#[derive(Debug)]
pub struct Sorted<T: Record> {
    inner: Inner<T>,
    dedup: bool,
    last: Option<T>,
}

#[derive(Debug)]
enum Inner<T: Record> {
    Memory(std::vec::IntoIter<T>),
    Runs(Merge<T>),
}

impl<T: Record> Iterator for Sorted<T> {
    type Item = Result<T, BackupError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let t = match &mut self.inner {
                Inner::Memory(it) => it.next()?,
                Inner::Runs(m) => match m.next()? {
                    Ok(t) => t,
                    Err(e) => return Some(Err(e)),
                },
            };
            if self.dedup && self.last == Some(t) {
                continue;
            }
            self.last = Some(t);
            return Some(Ok(t));
        }
    }
}

/// A heap merge of run files (each removed when the merge is dropped).
#[derive(Debug)]
struct Merge<T: Record> {
    runs: Vec<(PathBuf, BufReader<File>)>,
    heap: BinaryHeap<Reverse<(T, usize)>>,
    rec: Vec<u8>,
}

impl<T: Record> Merge<T> {
    fn open(paths: Vec<PathBuf>) -> Result<Self, BackupError> {
        let mut m = Self {
            runs: Vec::with_capacity(paths.len()),
            heap: BinaryHeap::with_capacity(paths.len()),
            rec: vec![0u8; T::LEN],
        };
        for path in paths {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    let _ = fs::remove_file(&path);
                    return Err(io_err("open", &path)(e));
                }
            };
            m.runs
                .push((path, BufReader::with_capacity(READ_BUF, file)));
        }
        for i in 0..m.runs.len() {
            if let Some(t) = m.read(i)? {
                m.heap.push(Reverse((t, i)));
            }
        }
        Ok(m)
    }

    fn read(&mut self, i: usize) -> Result<Option<T>, BackupError> {
        let (path, r) = &mut self.runs[i];
        match r.read_exact(&mut self.rec) {
            Ok(()) => Ok(Some(T::get(&self.rec))),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(io_err("read", path)(e)),
        }
    }

    fn next(&mut self) -> Option<Result<T, BackupError>> {
        let Reverse((t, i)) = self.heap.pop()?;
        match self.read(i) {
            Ok(Some(n)) => self.heap.push(Reverse((n, i))),
            Ok(None) => {}
            Err(e) => return Some(Err(e)),
        }
        Some(Ok(t))
    }
}

impl<T: Record> Drop for Merge<T> {
    fn drop(&mut self) {
        for (p, _) in &self.runs {
            let _ = fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64) -> impl Iterator<Item = u64> {
        let mut x = seed;
        std::iter::repeat_with(move || {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            x >> 40
        })
    }

    #[test]
    fn sorts_across_many_runs_with_a_cascade_and_dedups() {
        let dir = tempfile::tempdir().unwrap();
        // 1024 records a run, 200 000 records: 196 runs, so one cascade.
        let mut s = Sorter::<u64>::new(dir.path(), "t", 1024 * 8, true);
        let input: Vec<u64> = lcg(7).take(200_000).map(|x| x % 50_000).collect();
        for &x in &input {
            s.push(x).unwrap();
        }
        let out: Vec<u64> = s.finish().unwrap().map(Result::unwrap).collect();
        let mut want = input.clone();
        want.sort_unstable();
        want.dedup();
        assert_eq!(out, want);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "run files are removed"
        );

        // Without dedup every record comes out, in memory too.
        let mut s = Sorter::<u64>::new(dir.path(), "m", 1 << 20, false);
        for x in [3, 1, 3, 2] {
            s.push(x).unwrap();
        }
        let out: Vec<u64> = s.finish().unwrap().map(Result::unwrap).collect();
        assert_eq!(out, [1, 2, 3, 3]);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
