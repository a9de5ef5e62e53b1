//! An index file, as loading the repository's index decodes it.
#![no_main]

use cinderblock::backup::format::decode_index;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_index(data);
});
