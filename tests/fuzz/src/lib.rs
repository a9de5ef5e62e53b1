//! What the backup targets share: a repository store in memory, and the
//! golden repositories of `tests/fixtures/backup/` as its objects.
//!
//! Must not: be used outside the fuzz targets (it panics on a missing
//! fixture, which is a broken checkout, not an input).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use cinderblock::backup::BackupError;
use cinderblock::backup::crypto::RepoKey;
use cinderblock::backup::store::{Created, Listed, Put, Store};

/// The golden encrypted repository's key, published in
/// `tests/cli/backup_crypt.rs` and `tests/fixtures/README.md`.
pub const GOLDEN_KEY: &str = "golden fixture key of cinderblock; not a secret";

/// [`GOLDEN_KEY`] as a repository key.
pub fn golden_key() -> RepoKey {
    RepoKey {
        secret: GOLDEN_KEY.into(),
        from: "the fuzz target".into(),
    }
}

/// Objects by key, in memory: what a directory or a bucket holds, with the
/// same answers (a range past the end is an error).
#[derive(Debug, Default)]
pub struct MemStore {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemStore {
    /// A store holding `objects`.
    pub fn new(objects: BTreeMap<String, Vec<u8>>) -> Self {
        Self {
            objects: Mutex::new(objects),
        }
    }

    /// The objects, to change between two reads.
    pub fn objects(&self) -> MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.objects.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn missing(key: &str) -> BackupError {
    BackupError::Io {
        op: "read",
        path: PathBuf::from(key),
        source: std::io::ErrorKind::UnexpectedEof.into(),
    }
}

impl Store for MemStore {
    fn location(&self) -> String {
        "mem:fuzz".into()
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackupError> {
        Ok(self.objects().get(key).cloned())
    }
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, BackupError> {
        let objects = self.objects();
        let bytes = objects.get(key).ok_or_else(|| missing(key))?;
        let (Ok(start), Ok(end)) = (usize::try_from(range.start), usize::try_from(range.end))
        else {
            return Err(missing(key));
        };
        bytes
            .get(start..end)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| missing(key))
    }
    fn size(&self, key: &str) -> Result<Option<u64>, BackupError> {
        Ok(self.objects().get(key).map(|b| b.len() as u64))
    }
    fn put(&self, key: &str, bytes: &[u8], mode: Put) -> Result<Created, BackupError> {
        let mut objects = self.objects();
        if mode == Put::Create && objects.contains_key(key) {
            return Ok(Created::AlreadyThere);
        }
        objects.insert(key.to_owned(), bytes.to_vec());
        Ok(Created::New)
    }
    fn list(&self, prefix: &str) -> Result<Vec<Listed>, BackupError> {
        Ok(self
            .objects()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| Listed {
                key: k.clone(),
                size: v.len() as u64,
                modified: SystemTime::UNIX_EPOCH,
            })
            .collect())
    }
    fn delete(&self, key: &str) -> Result<(), BackupError> {
        self.objects().remove(key);
        Ok(())
    }
}

fn walk(root: &Path, at: &Path, files: &mut BTreeMap<String, Vec<u8>>) {
    for e in std::fs::read_dir(at).expect("fixture directory") {
        let path = e.expect("fixture entry").path();
        if path.is_dir() {
            walk(root, &path, files);
        } else {
            let key = path.strip_prefix(root).expect("below the root");
            files.insert(
                key.to_string_lossy().into_owned(),
                std::fs::read(&path).expect("fixture file"),
            );
        }
    }
}

/// The objects of golden repository `name` (`repo-v1`,
/// `repo-v2-encrypted`) by key.
pub fn fixture(name: &str) -> BTreeMap<String, Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/backup")
        .join(name);
    let mut files = BTreeMap::new();
    walk(&root, &root, &mut files);
    files
}
