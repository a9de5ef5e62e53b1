//! One journal file, as reading the journal and opening it for writing
//! parse it, then the questions asked of it (unfinished steps, a
//! migration's checkpoint).
#![no_main]

use std::path::Path;

use cinderblock::state::journal::{Event, JournalContents, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = parse(Path::new("/state/journal.jsonl"), data) else {
        return;
    };
    assert!(parsed.valid_len <= data.len());
    let contents = JournalContents {
        records: parsed.records,
        torn_tail: false,
    };
    let _ = contents.unfinished();
    for r in &contents.records {
        if let Event::Checkpoint { migration, .. } = r.event {
            let _ = contents.checkpoint(migration);
        }
    }
});
