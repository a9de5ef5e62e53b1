//! The manifest loader on one file's bytes: UTF-8 and control-character
//! checks, the YAML documents, the position index, every kind's fields and
//! the cross-document validation; then every diagnostic is rendered, as
//! `validate` prints them.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let loaded = cinderblock::manifest::load_bytes(Path::new("fuzz.yaml"), data.to_vec());
    for d in &loaded.diagnostics {
        let _ = d.to_string();
    }
    let _ = loaded.set.len();
});
