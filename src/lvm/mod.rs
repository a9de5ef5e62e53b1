//! LVM: the volume groups, thick and thin LVs and snapshots that back `lvm` back ends.
//!
//! This module owns the *understanding* of lvm2 and thin-provisioning-tools output and
//! the `lvm` back end driver:
//! * [`report`] turns lvm2's JSON reports into typed [`report::Vg`], [`report::Pv`] and
//!   [`report::Lv`] values, [`thin`] turns `thin_delta` and `thin_dump` XML into mapped
//!   and changed block ranges (both pure);
//! * [`tags`] is ownership: LV names from kind and uuid, the `cinderblock.*` tags on
//!   every LV we create, and reading them back (pure);
//! * [`inventory`] reads one back end (our objects, foreign LVs, capacity, the thin
//!   pool's data and metadata use) out of a report (pure);
//! * [`cmd`] builds every lvm2 command line and runs discovery (one `lvm fullreport`
//!   per refresh);
//! * [`driver`] carries out create, snapshot, clone, extend, delete and release, each
//!   idempotent by uuid (its docs hold the crash table);
//! * [`thinmap`] runs `thin_dump`/`thin_delta` on a live pool under a held metadata
//!   snapshot: [`LvmBackend::thin_mapped_ranges`] and
//!   [`LvmBackend::thin_changed_ranges`];
//! * [`backup_snap`] takes, lists and removes the snapshots backups read (thin ones
//!   kept as the base of the next incremental);
//! * devices are zeroed and sized through [`crate::blockio`], and thick clones
//!   copied through [`crate::copy`] (data blocks written, every other byte zeroed).
//!
//! Invariants:
//! * Processes are spawned only through [`cmd::Runner`] ([`crate::exec::Exec`] on a
//!   host): absolute paths, `LC_ALL=C`, argument vectors, success judged by exit code.
//! * An LV is changed or removed only when it carries this back end's owner mark;
//!   LV names never come from manifest text.
//! * Parsers are tested on real output captured in the VM lab (`tests/fixtures/lvm`,
//!   `tests/fixtures/thin`, see `tests/fixtures/README.md`); the driver on a fake lvm2
//!   in unit tests and on the real one in `tests/lab/lvm_backend.rs`.

pub mod backup_snap;
pub mod cmd;
pub mod driver;
pub mod freeze;
pub mod inventory;
mod pit;
pub mod report;
pub mod seam;
pub mod tags;
pub mod thin;
pub mod thinmap;

pub use driver::{Change, LvmBackend, LvmError, MigrationLv, NewLv, Source, Wipe};
pub use seam::LvmDriver;

// A fake lvm2 is a long match over its commands.
#[cfg(test)]
#[allow(clippy::too_many_lines)]
mod tests;
