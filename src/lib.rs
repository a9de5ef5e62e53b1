//! cinderblock: a declarative reconciliation agent for block storage.
#![doc = include_str!("ARCHITECTURE.md")]

pub mod cli;
pub mod iscsi;
pub mod lvm;
