//! A pack file as reading its trailer does: the last 12 bytes located as
//! the footer, the trailer before them decoded and checked against the
//! file's length, then each blob taken from its offset and decompressed.
#![no_main]

use cinderblock::backup::format::{decode_pack_trailer, decompress, pack_trailer_len};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    let Some(footer) = data.len().checked_sub(12).map(|at| &data[at..]) else {
        return;
    };
    let Ok(footer) = <&[u8; 12]>::try_from(footer) else {
        return;
    };
    let Some(tlen) = pack_trailer_len(footer, len) else {
        return;
    };
    let Ok(tlen) = usize::try_from(tlen) else {
        return;
    };
    let Some(entries) = decode_pack_trailer(&data[data.len() - tlen..], len) else {
        return;
    };
    // Blobs are back to back from offset 0 (what the restore reader does).
    let mut at = 0usize;
    for e in entries {
        let end = at + e.stored_len as usize;
        let Some(stored) = data.get(at..end) else {
            return;
        };
        // A bound on what a hostile entry makes us allocate: chunks are 64 KiB.
        if e.raw_len <= 1 << 20 {
            let _ = decompress(e.codec, stored, e.raw_len as usize);
        }
        at = end;
    }
});
