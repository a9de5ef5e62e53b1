//! A backup repository's `config`, as opening the repository reads it.
#![no_main]

use cinderblock::backup::format::decode_config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = decode_config("/repo", data) {
        let _ = cinderblock::error_chain(&e);
    }
});
