//! A whole backup repository read as `backup verify --all` reads it,
//! through `Repository` on a store: every manifest, the index, each chunk of
//! every backup (opened, decompressed, hashed), then every pack's trailer.
//! The repository is one of the golden fixtures (`tests/fixtures/backup/`:
//! version 1, or version 2 encrypted and opened with its published key),
//! held in memory, with one object replaced by the input: the index file,
//! the pack, or the manifest.
//!
//! The first input byte chooses: bit 0 the repository (v1, v2), bits 1-2
//! the object (index, pack, manifest, index), bit 3 (v2 only) whether the
//! rest is stored as it is or sealed with the repository's key in the
//! object's place first, so the fuzzer reaches what is inside a seal (a
//! mutated seal never opens). A sealed pack is `blobs | sealed trailer |
//! length | CBPACKS1`, the rest split into blobs and trailer at the offset
//! its first four bytes give (little endian).
#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use cinderblock::backup::crypto::Place;
use cinderblock::backup::format::{self, Digest, PACK_MAGIC_SEALED};
use cinderblock::backup::{NoProgress, Repository, restore};
use cinderblock_fuzz::{MemStore, fixture, golden_key};
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

/// A golden repository, opened once (an encrypted one's key derivation
/// costs a fifth of a second).
struct Golden {
    files: BTreeMap<String, Vec<u8>>,
    store: Arc<MemStore>,
    repo: Repository,
}

impl Golden {
    fn open(name: &str, encrypted: bool) -> Self {
        let files = fixture(name);
        let store = Arc::new(MemStore::new(files.clone()));
        let key = golden_key();
        let repo = Repository::open_store(store.clone(), encrypted.then_some(&key))
            .expect("the golden repository opens");
        Self { files, store, repo }
    }

    /// The fixture's one object under `top`.
    fn only(&self, top: &str) -> String {
        self.files
            .keys()
            .find(|k| k.starts_with(top))
            .expect("fixture object")
            .clone()
    }
}

fn repos() -> &'static [Golden; 2] {
    static REPOS: OnceLock<[Golden; 2]> = OnceLock::new();
    REPOS.get_or_init(|| {
        [
            Golden::open("repo-v1", false),
            Golden::open("repo-v2-encrypted", true),
        ]
    })
}

/// What `backup verify --all` reads.
fn verify(repo: &Repository) {
    let Ok((manifests, _unreadable)) = repo.manifests() else {
        return;
    };
    let Ok(index) = repo.load_index() else {
        return;
    };
    let mut union: BTreeMap<Digest, u64> = BTreeMap::new();
    for m in &manifests {
        if let Ok(table) = format::decode_table(m) {
            for (slot, id) in table {
                union.entry(id).or_insert(slot);
            }
        }
    }
    let all: Vec<(u64, Digest)> = union.into_iter().map(|(id, slot)| (slot, id)).collect();
    let _ = restore::check(repo, &index, &all, &NoProgress);
    if let Ok(packs) = repo.scan_packs() {
        for (pack, len) in packs {
            let _ = repo.read_trailer(&pack, len);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, input)) = data.split_first() else {
        return;
    };
    let g = &repos()[usize::from(sel & 1)];
    let crypto = g.repo.crypto().filter(|_| sel & 8 != 0);
    let mut objects = g.files.clone();
    match (sel >> 1) & 3 {
        // The pack, under its name.
        1 => {
            let bytes = match crypto {
                Some(c) => {
                    let Some((at, rest)) = input.split_first_chunk::<4>() else {
                        return;
                    };
                    let at = usize::try_from(u32::from_le_bytes(*at)).unwrap_or(usize::MAX).min(rest.len());
                    let (blobs, entries) = rest.split_at(at);
                    let sealed = c.seal(Place::Trailer, entries);
                    let mut pack = blobs.to_vec();
                    pack.extend_from_slice(&sealed);
                    pack.extend_from_slice(&u32::try_from(sealed.len()).unwrap_or(u32::MAX).to_le_bytes());
                    pack.extend_from_slice(PACK_MAGIC_SEALED);
                    pack
                }
                None => input.to_vec(),
            };
            objects.insert(g.only("data/"), bytes);
        }
        // The manifest, under its name (a sealed one is bound to its id).
        2 => {
            let key = g.only("backups/");
            let bytes = match crypto {
                Some(c) => {
                    let id = key
                        .rsplit('/')
                        .next()
                        .and_then(|n| n.strip_suffix(".json"))
                        .and_then(|n| n.parse::<Uuid>().ok())
                        .expect("fixture manifest name");
                    c.seal(Place::Manifest(id), input)
                }
                None => input.to_vec(),
            };
            objects.insert(key, bytes);
        }
        // The index file, named by its own hash as a reader checks.
        _ => {
            objects.remove(&g.only("index/"));
            let bytes = match crypto {
                Some(c) => c.seal(Place::Index, input),
                None => input.to_vec(),
            };
            let id = Digest::of(&bytes);
            objects.insert(format!("index/{}/{}", id.shard(), id.to_hex()), bytes);
        }
    }
    *g.store.objects() = objects;
    verify(&g.repo);
});
