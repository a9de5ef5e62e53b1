//! The recorded state (`state.json`), as loading the ledger decodes it.
#![no_main]

use std::path::Path;

use cinderblock::state::atomic::decode;
use cinderblock::state::record::{Recorded, STATE_VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = decode::<Recorded>(Path::new("/state/state.json"), data, STATE_VERSION) {
        let _ = serde_json::to_vec(&env.payload);
    }
});
