//! A key file of an encrypted repository (`keys/<uuid>.json`), as opening
//! the repository reads it: the golden version 2 repository's config with
//! the input as its only key file, opened with the golden key (parsed, the
//! Argon2id parameters it names checked and used, the data key unwrapped).
#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use cinderblock::backup::Repository;
use cinderblock_fuzz::{MemStore, fixture, golden_key};
use libfuzzer_sys::fuzz_target;

fn config() -> &'static [u8] {
    static CONFIG: OnceLock<Vec<u8>> = OnceLock::new();
    CONFIG.get_or_init(|| {
        fixture("repo-v2-encrypted")
            .remove("config")
            .expect("the fixture's config")
    })
}

fuzz_target!(|data: &[u8]| {
    let objects = BTreeMap::from([
        ("config".to_owned(), config().to_vec()),
        ("keys/fuzz.json".to_owned(), data.to_vec()),
    ]);
    let store = Arc::new(MemStore::new(objects));
    if let Err(e) = Repository::open_store(store, Some(&golden_key())) {
        let _ = cinderblock::error_chain(&e);
    }
});
