# Helpers sourced by every scenario step (see run-steps.sh). Plain busybox sh.

# sha256 of stdin, hex only
sha() { sha256sum | cut -d' ' -f1; }

# sha256 of the first N MiB of a block device or file, read with O_DIRECT when possible
sha_head() { # path MiB
  dd if="$1" bs=1M count="$2" iflag=direct 2>/dev/null | sha
}

# wait until a path exists (block devices appear asynchronously), up to $2 tenths of a second
wait_for() { # path [tenths=100]
  i=0; n=${2:-100}
  while [ ! -e "$1" ] && [ $i -lt "$n" ]; do sleep 0.1; i=$((i+1)); done
  [ -e "$1" ]
}

# Write a configfs attribute, saying which one failed. No trailing newline: LIO keeps
# it in string attributes (a CHAP userid written with echo is "user\n" and every
# login fails with "CHAP_N values do not match").
put() { # value path
  printf '%s' "$1" > "$2" || { echo "put: cannot write '$1' to $2" >&2; return 1; }
}

# Dump a configfs subtree in the text format parsed by cinderblock::iscsi::configfs:
#   d PATH            a directory
#   f PATH = VALUE    a readable attribute; one trailing newline dropped, "\" -> "\\",
#                     newlines -> "\n"
#   l PATH -> TARGET  a symlink, target as readlink gives it
#   w PATH            an attribute that cannot be read (write-only, e.g. control)
# PATH is relative to the dumped root. Sorted. statistics/ and fabric_statistics/
# subtrees are left out: they are counters, not configuration.
configfs_dump() { # root
  (cd "$1" && find . \( -name statistics -o -name fabric_statistics \) -prune -o -print | sed -n 's|^\./||p' | sort) |
  while IFS= read -r p; do
    if [ -L "$1/$p" ]; then
      echo "l $p -> $(readlink "$1/$p")"
    elif [ -d "$1/$p" ]; then
      echo "d $p"
    elif cat "$1/$p" >/dev/null 2>&1; then
      echo "f $p = $(awk 'NR>1{printf "\\n"} {gsub(/\\/,"\\\\"); printf "%s", $0}' "$1/$p")"
    else
      echo "w $p"
    fi
  done
}
