//! thin-provisioning-tools' XML as the thin mapping reader uses it:
//! `thin_dump` (devices, mapped ranges in bytes, the differences between
//! two devices) and `thin_delta` (changed ranges in bytes).
#![no_main]

use cinderblock::lvm::thin::{changed_between, parse_delta, parse_dump};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(delta) = parse_delta(data) {
        let block = delta.block_bytes();
        for r in delta.changed() {
            let _ = r.bytes(block);
            let _ = r.blocks();
        }
    }
    if let Ok(dump) = parse_dump(data) {
        let block = dump.block_bytes();
        for dev in &dump.devices {
            let _ = dev.mapped_bytes(block);
            for r in dev.mapped_ranges() {
                let _ = r.bytes(block);
            }
            let _ = dump.device(dev.dev_id);
        }
        for pair in dump.devices.windows(2) {
            for r in changed_between(&pair[0], &pair[1]) {
                let _ = r.bytes(block);
            }
        }
    }
});
