//! CLI integration tests: the `cinderblock` binary on real files in temp dirs.
//!
//! One test binary (ripgrep's layout): modules per command, a small harness in
//! `support`. Plain `cargo test` runs everything here except the tests marked
//! `#[ignore]` that need tools installed by `tests/run.sh`.

#![allow(clippy::unwrap_used)] // a failing unwrap is a failing test
#![allow(
    clippy::cast_possible_truncation,
    clippy::similar_names,
    clippy::format_push_string,
    clippy::items_after_statements
)] // test data builders

mod agent;
mod architecture;
mod backup;
mod backup_crypt;
mod backup_reflink;
mod backup_s3;
mod ci_examples;
mod converge;
mod discover;
mod etcd;
mod examples;
mod export;
mod faults;
mod fleet;
mod fleet_etcd;
mod fuzz;
mod group_backup;
mod groups;
mod image;
mod install;
mod inuse;
mod lvm_plan;
mod migrate;
mod monitoring;
mod plan;
mod plan_markdown;
mod readme;
mod rename;
mod schema;
mod secrets;
mod status_page;
mod support;
mod validate;
