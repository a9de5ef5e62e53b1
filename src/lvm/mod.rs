//! LVM: the volume groups, thick and thin LVs and snapshots that back `lvm` back ends.
//!
//! This module owns the *understanding* of lvm2 and thin-provisioning-tools output:
//! [`report`] turns lvm2's JSON reports into typed [`report::Vg`], [`report::Pv`] and
//! [`report::Lv`] values, [`thin`] turns `thin_delta` and `thin_dump` XML into mapped
//! and changed block ranges.
//!
//! Invariants:
//! * Pure: nothing here spawns a process or touches a device. The command lines that
//!   produce the input are named next to each parser (field lists included), but running
//!   them belongs to the `exec` module.
//! * Every parse error names what it was parsing (VG, LV, field, XML element), and no
//!   input makes these parsers panic.
//! * Parsers are tested on real output captured in the VM lab (`tests/fixtures/lvm`,
//!   `tests/fixtures/thin`, see `tests/fixtures/README.md`).

pub mod report;
pub mod thin;
