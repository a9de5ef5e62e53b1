//! CLI integration tests: the `cinderblock` binary on real files in temp dirs.
//!
//! One test binary (ripgrep's layout): modules per command, a small harness in
//! `support`. Plain `cargo test` runs everything here except the tests marked
//! `#[ignore]` that need tools installed by `tests/run.sh`.

#![allow(clippy::unwrap_used)] // a failing unwrap is a failing test

mod backup;
mod examples;
mod fuzz;
mod schema;
mod support;
mod validate;
