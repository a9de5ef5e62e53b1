//! iSCSI exports through LIO, the kernel target, which is configured through configfs.
//!
//! This module owns LIO: [`configfs`] turns the tree under `/sys/kernel/config/target`
//! (walked live, or dumped as text for fixtures) into a model of backstores, targets,
//! portal groups, LUNs and ACLs (pure); [`lio`] walks the live tree, reads our exports
//! out of the model and writes exports into configfs (the only module that does);
//! [`chap`] reads CHAP secrets and turns secrets into fingerprints; [`names`] holds
//! the default target names and what targetcli can read.
//!
//! Invariants:
//! * configfs is LIO's only state: nothing about exports is recorded elsewhere, so
//!   what the plan compares against is always what the kernel has.
//! * Secrets never enter the model: CHAP user names and passwords are reduced to
//!   fingerprints keyed per process, compared and never shown.
//! * Tested on a tree captured in the VM lab (`tests/fixtures/iscsi`).

pub mod chap;
pub mod configfs;
pub mod lio;
pub mod names;
