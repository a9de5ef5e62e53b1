#!/usr/bin/env bash
# The one test command (README "Set up"; .ci/run calls exactly this).
# Installs what the tests need when it is missing, then runs every test:
# unit, integration, and the ignored ones that need those tools: the
# outside schema validator and the VM storage lab (tests/lab/).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Everything the tests install goes through tests/lib/install.sh (one apt
# transaction per list, nothing removed silently, every tool checked by name).
# shellcheck source=lib/install.sh
. tests/lib/install.sh

# The VM lab's packages (qemu, lvm2, thin-provisioning-tools, busybox, ...).
bash tests/lab/install-deps.sh

# check-jsonschema (PyPI): the outside validator that checks examples/
# against schemas/.
need_pip run.sh check-jsonschema -- check-jsonschema

# chattr (e2fsprogs): the append-only directory test makes the kernel
# refuse every unlink and rename in a repository (needs root).
need_apt run.sh e2fsprogs -- chattr

# Installing like a system tool: zsh and fish load the generated
# completions; groff renders the man pages; dpkg-deb/dpkg-shlibdeps build the
# package (objcopy from binutils, a dependency of dpkg-dev) and
# systemd-analyze verifies its unit, whose ExecReload names /bin/kill
# (procps; a shell builtin answers to the name, so only the package tells).
# Most are on the image; the check is by package and tool name.
need_apt run.sh zsh fish groff-base dpkg-dev systemd man-db procps -- \
  zsh fish groff dpkg-deb dpkg-shlibdeps objcopy systemd-analyze man

# promtool checks and unit-tests examples/prometheus: only that program out
# of Debian's prometheus package (installing the package would add a 96 MB
# server, a system user and, on hosts that run systemd, a started service).
need_deb_bin run.sh prometheus target/tools promtool
export PATH="$PWD/target/tools:$PATH"
# Headless Chromium for the agent's status page (tests/cli/status_page.rs),
# driven over the DevTools protocol by tests/browser/cdp.py (python3 only).
need_apt run.sh chromium -- chromium python3
# xfsprogs: mkfs.xfs makes the XFS (reflink) file system on a loop device
# that the file back end's changed-block tracking is tested on
# (tests/cli/backup_reflink.rs) and the backup benchmark measures.
need_apt run.sh xfsprogs -- mkfs.xfs
# jq: the CI examples' steps (tests/cli/ci_examples.rs) run with it.
need_apt run.sh jq -- jq

# moto's S3 server (PyPI): the real S3-compatible store the backup tests
# write to (tests/lib/s3_server.py says why moto).
need_pip run.sh 'moto[server]' boto3 -- moto_server
# Supply chain (deny.toml): every dependency's license is an allowed
# permissive one, no wildcard requirements, crates.io only. Advisories are
# not checked here: they need the advisory database from the network
# (README, "Supply chain").
need_cargo run.sh cargo-deny 0.20.2
# cargo-deny reads the dependency graph offline: on a fresh machine the
# crates of Cargo.lock must be downloaded first.
cargo fetch --locked
cargo deny --offline --locked check licenses bans sources

# etcd for the fleet tests (tests/cli/fleet_etcd.rs start their own clusters
# on free loopback ports). Where a service manager runs, Debian's package
# starts a single-member etcd on 127.0.0.1:2379 when it is installed: one we
# installed just now is stopped and disabled, so nothing is left listening.
etcd_was_installed=$(dpkg-query -W -f='${db:Status-Status}' etcd-server 2>/dev/null || true)
need_apt run.sh etcd-server etcd-client -- etcd etcdctl
if [ "$etcd_was_installed" != installed ] && command -v systemctl >/dev/null 2>&1 &&
    systemctl is-active --quiet etcd 2>/dev/null; then
  echo "run.sh: stopping the etcd service Debian's package started (the tests run their own)" >&2
  systemctl disable --now etcd >/dev/null 2>&1 || true
fi
# openssl makes the TLS certificates of the fleet's TLS/authentication test
# (tests/cli/etcd.rs, Cluster::start_secure) at run time.
need_apt run.sh openssl -- openssl

cargo build --locked --all-targets
# The Debian package (tests/package/build-deb.sh), installed into a throwaway
# root by an ignored test in tests/cli/install.rs. Packaged from the dev build
# just made: what the test checks (layout, unit, conffiles, man pages,
# completions, maintainer scripts) does not depend on the optimisation level,
# and a release build would compile every crate a second time. A release
# package is `bash tests/package/build-deb.sh` (its default profile).
CINDERBLOCK_DEB=$(bash tests/package/build-deb.sh --profile dev --out target/debian | tail -1)
export CINDERBLOCK_DEB
cargo test --locked
# The ignored tests, by target (the library's ignored helper tests are
# children that other tests start themselves).
cargo test --locked --test cli -- --ignored
# Two VMs at a time: each is one TCG vCPU (one host core), so on a 2-core
# runner the 22 scenarios take about half as long as one after another.
cargo test --locked --test lab -- --ignored --test-threads=2
# Fuzz smoke run: every target of tests/fuzz/ for a few seconds on its seed
# corpus (installs cargo-fuzz when missing; longer runs: tests/fuzz/README.md).
bash tests/fuzz/run.sh -t 5
