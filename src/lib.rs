//! cinderblock: a declarative reconciliation agent for block storage.
#![doc = include_str!("ARCHITECTURE.md")]

pub mod backup;
pub mod cli;
pub mod exec;
pub mod file;
pub mod iscsi;
pub mod lvm;
pub mod manifest;
pub mod schema;
pub mod state;
