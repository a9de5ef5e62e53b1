#!/usr/bin/env bash
# Runs the fuzz targets (tests/fuzz/README.md).
#
#   tests/fuzz/run.sh [-t SECONDS] [-k] [TARGET...]
#
# Every target (or the ones named) runs for SECONDS (default 5) on a corpus
# seeded from tests/fixtures, tests/invalid, examples and tests/fuzz/seeds.
# Without -k the corpus is a fresh temp dir (the smoke run of tests/run.sh:
# the same seeds every time); with -k it is tests/fuzz/corpus/TARGET, kept
# and grown across runs (long runs). A crash, a leak, a timeout (10 s for one
# input) or an input using more than 2 GiB fails the run; libFuzzer writes
# the input to tests/fuzz/artifacts/TARGET/. Prints one line per target:
#   fuzz TARGET: N execs in S s (R/s), corpus C
#
# cargo-fuzz is installed from crates.io when missing (pinned). The
# machine's toolchain is stable, and libFuzzer's instrumentation needs -Z
# flags: RUSTC_BOOTSTRAP=1 lets this stable compiler take them (the fuzz
# build only; nothing else is built that way).
set -euo pipefail
cd "$(dirname "$0")/../.."

CARGO_FUZZ_VERSION=0.13.2
seconds=5
keep=0
while getopts "t:k" opt; do
    case $opt in
    t) seconds=$OPTARG ;;
    k) keep=1 ;;
    *) exit 2 ;;
    esac
done
shift $((OPTIND - 1))

all=(manifest lvm_report thin_xml configfs backup_config backup_pack backup_index
    backup_manifest backup_record backup_catalog journal state_record backup_repo backup_key)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

# shellcheck source=../lib/install.sh
. tests/lib/install.sh
need_cargo fuzz/run.sh cargo-fuzz "$CARGO_FUZZ_VERSION"

export RUSTC_BOOTSTRAP=1
# glibc's per-thread destructor list is not a leak (tests/fuzz/lsan.supp).
export LSAN_OPTIONS="suppressions=$PWD/tests/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
# The instrumented build (every dependency with AddressSanitizer: some ten
# CPU-minutes) is kept outside the checkout, so a fresh clone on the same
# machine (CI) reuses it.
export CARGO_TARGET_DIR="${CINDERBLOCK_FUZZ_TARGET:-$HOME/.cache/cinderblock/fuzz-target}"
# One build of every target first (so each run below measures fuzzing only).
cargo fuzz build --fuzz-dir tests/fuzz

# The seed files of each target, by glob.
seeds() {
    local f=tests/fixtures
    case $1 in
    manifest) echo tests/invalid/*.yaml examples/*/*.yaml ;;
    lvm_report) echo $f/lvm/*.json ;;
    thin_xml) echo $f/thin/*.xml ;;
    configfs) echo $f/iscsi/*.txt ;;
    backup_config) echo $f/backup/repo-v1/config ;;
    backup_pack) echo $f/backup/repo-v1/data/*/* ;;
    backup_index) echo $f/backup/repo-v1/index/*/* ;;
    backup_manifest) echo $f/backup/repo-v1/backups/*/*.json ;;
    state_record) echo $f/state/*.json ;;
    backup_key) echo $f/backup/repo-v2-encrypted/keys/*.json ;;
    esac
    [ -d "tests/fuzz/seeds/$1" ] && echo "tests/fuzz/seeds/$1"/* || true
}

shopt -s nullglob
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
    if [ $keep = 1 ]; then corpus=tests/fuzz/corpus/$t; else corpus=$scratch/$t; fi
    mkdir -p "$corpus" "tests/fuzz/artifacts/$t"
    # Seeds from different directories share names (examples/*/volumes.yaml):
    # each is copied under its path, slashes turned into underscores.
    for f in $(seeds "$t"); do
        if [ -f "$f" ]; then cp -- "$f" "$corpus/${f//\//_}"; fi
    done
    log=$scratch/$t.log
    # -fork/-jobs stay off: one process, one core (the machine is shared).
    if ! cargo fuzz run --fuzz-dir tests/fuzz "$t" "$corpus" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz $t: FAILED (input saved under tests/fuzz/artifacts/$t/)"
        exit 1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    size=$(find "$corpus" -type f | wc -l)
    echo "fuzz $t: ${execs:-?} execs in ${secs:-?} s (${rate:-?}/s), corpus $size"
done
