//! Build script: nothing to generate. It exists so that the
//! `protoc-bin-vendored-*` build-dependencies are part of the build (cargo
//! fetches a package only when a build needs it): `.cargo/protoc` runs that
//! binary for etcd-client's build script on machines without protoc.
//!
//! Rejected: asking every developer and CI machine to install protoc
//! (Debian's protobuf-compiler) before `cargo build`, which the README's
//! first command would then need too.

fn main() {
    println!("cargo:rerun-if-changed=src/build.rs");
    println!("cargo:rerun-if-changed=.cargo/protoc");
}
