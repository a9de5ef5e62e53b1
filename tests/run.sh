#!/usr/bin/env bash
# The one test command (README "Set up"; .ci/run calls exactly this).
# Installs what the tests need when it is missing, then runs every test:
# unit, integration, and the ignored ones that need those tools: the
# outside schema validator and the VM storage lab (tests/lab/).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# The VM lab's packages (qemu, lvm2, thin-provisioning-tools, busybox, ...).
bash tests/lab/install-deps.sh

# check-jsonschema (PyPI): the outside validator that checks examples/
# against schemas/.
if ! command -v check-jsonschema >/dev/null 2>&1; then
  echo "tests/run.sh: installing check-jsonschema from PyPI" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore check-jsonschema
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
fi
command -v check-jsonschema >/dev/null 2>&1 || {
  echo "tests/run.sh: check-jsonschema is not on PATH after installing it" >&2
  exit 1
}

cargo build --locked --all-targets
cargo test --locked
# The ignored tests, by target (the library's ignored helper tests are
# children that other tests start themselves).
cargo test --locked --test cli -- --ignored
cargo test --locked --test lab -- --ignored --test-threads=1
