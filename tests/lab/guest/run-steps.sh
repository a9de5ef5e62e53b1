#!/bin/sh
# Runs the scenario's steps in order (called by /init). The harness writes
# /lab/in/steps.tsv: one line per step, "<index> <name> <mode> <timeout-seconds>", and
# the step bodies as /lab/in/steps/<index>.sh.
#   mode "must": a non-zero exit ends the scenario (later steps are reported as not run)
#   mode "any":  any exit code is recorded and the scenario goes on
# Each step runs in its own `sh` with `set -e`, in /lab/in/files (the scenario's files),
# with $OUT=/results/files for result files the host should get back, and /lab/lib.sh
# sourced for small helpers. Per step the host gets steps/<index>/{stdout,stderr,rc,secs}.
up() { cut -d' ' -f1 /proc/uptime; }
while read -r idx name mode limit; do
  d=/results/steps/$idx
  mkdir -p "$d"
  s=$(up)
  (
    cd /lab/in/files || exit 125
    export OUT=/results/files IN=/lab/in/files
    timeout "$limit" sh -c "set -e; . /lab/lib.sh; . /lab/in/steps/$idx.sh"
  ) > "$d/stdout" 2> "$d/stderr" < /dev/null
  rc=$?
  secs=$(awk -v a="$s" -v b="$(up)" 'BEGIN{printf "%.2f", b-a}')
  echo "$rc" > "$d/rc"; echo "$secs" > "$d/secs"
  echo "LAB: step $name rc=$rc ${secs}s"
  if [ "$rc" != 0 ] && [ "$mode" = must ]; then
    echo "LAB: stopping after failed step $name"
    exit 1
  fi
done < /lab/in/steps.tsv
exit 0
