//! cinderblock: a declarative reconciliation agent for block storage.
#![doc = include_str!("ARCHITECTURE.md")]

pub mod agent;
pub mod apply;
pub mod backup;
pub mod blockio;
pub mod cli;
pub mod copy;
pub mod discover;
pub mod driver;
pub mod exec;
pub mod file;
pub mod fleet;
pub mod inuse;
pub mod iscsi;
pub mod lvm;
pub mod manifest;
pub mod migrate;
pub mod model;
pub mod observe;
pub mod plan;
pub mod registry;
pub mod schema;
pub mod state;
pub mod xhost;

/// An error and its causes on one line (`outer: inner: innermost`), for
/// messages that end up in plans, journals and logs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        // Some errors repeat their source's text; say it once.
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}
