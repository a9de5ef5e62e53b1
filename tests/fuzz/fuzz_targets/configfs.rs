//! LIO's configfs tree as the exports reader sees it: the entries (here
//! from the text dump the lab writes), the model built from them, and our
//! exports read out of the model.
#![no_main]

use cinderblock::iscsi::configfs::{Lio, parse_dump};
use cinderblock::iscsi::lio::exports;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(entries) = parse_dump(text) else {
        return;
    };
    if let Ok(lio) = Lio::from_entries(&entries) {
        let _ = exports(&lio);
    }
});
