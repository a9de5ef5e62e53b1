//! Lab tests: the real kernel (dm-thin, dm-snapshot, LIO, nfsd) inside a qemu VM.
//!
//! Every test here is `#[ignore = "needs the VM lab"]` so that plain `cargo test` stays
//! fast; the test command runs them with
//! `cargo test --test lab -- --ignored --test-threads=1` after
//! `bash tests/lab/install-deps.sh`. One VM boot per test; see `harness.rs`.
//! `LAB_WRITE_FIXTURES=1` also refreshes `tests/fixtures/` from what the VM printed;
//! `LAB_VERBOSE=1` streams the VM console to stderr.

mod adopt;
mod agent;
mod backup;
mod backup_store;
mod export;
mod full_site;
mod groups;
mod harness;
mod image;
mod inuse;
mod iscsi;
mod lvm;
mod lvm_backend;
mod migrate;
mod nfs;
mod smoke;
mod targetcli;
mod xhost;
