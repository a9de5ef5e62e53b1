//! The state directory's backup catalogue, as loading it decodes it, then
//! what `backup list` and `--from-backup` resolution do with it.
#![no_main]

use std::path::Path;

use cinderblock::backup::catalog::{CATALOG_VERSION, Catalog};
use cinderblock::state::atomic::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(env) = decode::<Catalog>(
        Path::new("/state/backup-catalog.json"),
        data,
        CATALOG_VERSION,
    ) else {
        return;
    };
    let catalog = env.payload;
    let _ = catalog.damaged();
    for id in catalog.backups.keys() {
        let text = id.to_string();
        let _ = catalog.resolve(&text[..8]);
    }
    let _ = catalog.resolve("latest");
});
