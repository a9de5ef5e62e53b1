//! An export record, as `backup import` reads it: parsed, then checked on
//! its own (format, the manifest's header, the chunk table) before any
//! repository is opened.
#![no_main]

use cinderblock::backup::format::Record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = serde_json::from_slice::<Record>(data) {
        let _ = record.check();
    }
});
