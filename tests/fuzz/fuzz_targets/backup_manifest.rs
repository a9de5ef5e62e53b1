//! A backup manifest file: parsed and its header checked, as listing and
//! restoring read it, then its chunk table decoded and checked.
#![no_main]

use std::path::Path;

use cinderblock::backup::format::{decode_manifest, decode_table};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode_manifest(Path::new("/repo/backups/v/b.json"), data) {
        Ok(m) => {
            let _ = decode_table(&m);
        }
        Err(e) => {
            let _ = cinderblock::error_chain(&e);
        }
    }
});
