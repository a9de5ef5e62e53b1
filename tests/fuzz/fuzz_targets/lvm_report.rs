//! lvm2's JSON reports as discovery reads them: the fullreport (and the
//! `lvs`, `vgs`, `pvs` reports) parsed, then every VG of a parsed fullreport
//! read as a thick back end and as a thin one on each of its LVs, with the
//! capacity the scheduler asks for.
#![no_main]

use cinderblock::lvm::inventory::{Config, inventory};
use cinderblock::lvm::report::{parse_fullreport, parse_lvs, parse_pvs, parse_vgs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_lvs(data);
    let _ = parse_vgs(data);
    let _ = parse_pvs(data);
    let Ok(report) = parse_fullreport(data) else {
        return;
    };
    for vg in &report.vgs {
        let pools = std::iter::once(None).chain(report.lvs.iter().map(|lv| Some(lv.name.as_str())));
        for thin_pool in pools {
            let cfg = Config {
                backend: "fuzz",
                vg: &vg.name,
                thin_pool,
            };
            if let Ok(inv) = inventory(&report, &cfg) {
                let _ = inv.capacity();
            }
        }
    }
});
