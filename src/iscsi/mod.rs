//! iSCSI exports through LIO, the kernel target, which is configured through configfs.
//!
//! This module owns the understanding of LIO's state: [`configfs`] turns the tree under
//! `/sys/kernel/config/target` (walked live, or dumped as text for fixtures) into a
//! model of backstores, targets, portal groups, LUNs and ACLs.
//!
//! Invariants:
//! * Pure: nothing here reads configfs or spawns a process; the walk and the writes
//!   belong to the `exec` side.
//! * Secrets never enter the model: CHAP passwords are reduced to "set or not".
//! * Tested on a tree captured in the VM lab (`tests/fixtures/iscsi`).

pub mod configfs;
