# shellcheck shell=bash
# The one way the tests install what they need: sourced by tests/run.sh,
# tests/lab/install-deps.sh and every later dependency script.
#
#   need_apt WHO PKG... -- TOOL...    Debian packages, then each TOOL checked by name
#   need_pip WHO PKG... -- TOOL...    PyPI packages (for the current python3), likewise
#   need_cargo WHO CRATE VERSION      a cargo subcommand from crates.io (`cargo install
#                                     --locked`), unless `cargo-CRATE --version` already
#                                     prints VERSION; ~/.cargo/bin keeps it for later runs
#   need_deb_bin WHO PKG DIR TOOL...  only /usr/bin/TOOL unpacked from PKG's .deb into DIR,
#                                     without installing PKG (see below)
#
# All are idempotent and quiet when everything is present: nothing is asked of apt
# or pip unless a package is missing, and a tool still missing afterwards is an error
# that names it.
#
# apt is never allowed to remove a package silently. The machine image may carry a
# package newer than the distribution's archive (qemu-utils 10 from a backport while
# bookworm's qemu-system-x86 is 7.2: installing the latter would make apt remove the
# former without a word). So each install is first simulated; a removal of a package
# we ask for ourselves is resolved explicitly, in the same transaction, by installing
# the archive's version of it (named in the log), and a removal of anything else stops
# the run with apt's own explanation. The real install then runs with --no-remove, so
# a plan that still removes something fails instead of going ahead.

_need_log() { echo "$1: $2" >&2; }

_need_is_installed() { # pkg -> 0 when dpkg has it fully installed
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

_need_archive_version() { # pkg -> the highest version an apt source (not dpkg's status) offers
  apt-cache madison "$1" 2>/dev/null |
    awk -F'|' '$3 !~ /dpkg\/status/ { gsub(/ /, "", $2); print $2 }' |
    sort -V -r | head -1
  # sort -V is close to dpkg's ordering; the simulation below has the last word.
}

_need_apt_update() { # apt-get update once per test run (the variable is exported to
  # the scripts tests/run.sh starts): later installs in the same run reuse the lists
  [ -n "${CINDERBLOCK_APT_UPDATED:-}" ] && return 0
  apt-get update -qq
  export CINDERBLOCK_APT_UPDATED=1
}

_need_check_tools() { # who tool...
  local who=$1 t bad=()
  shift
  for t in "$@"; do command -v "$t" >/dev/null 2>&1 || bad+=("$t"); done
  [ ${#bad[@]} -eq 0 ] && return 0
  _need_log "$who" "still missing after install: ${bad[*]}"
  return 1
}

need_apt() {
  local who=$1
  shift
  local pkgs=() tools=() missing=() p
  while [ $# -gt 0 ] && [ "$1" != -- ]; do pkgs+=("$1"); shift; done
  [ "${1:-}" = -- ] && shift
  tools=("$@")
  for p in "${pkgs[@]}"; do _need_is_installed "$p" || missing+=("$p"); done
  if [ ${#missing[@]} -eq 0 ]; then
    _need_check_tools "$who" "${tools[@]}"
    return
  fi
  if [ "$(id -u)" != 0 ]; then
    _need_log "$who" "need root to apt-get install: ${missing[*]}"
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  _need_log "$who" "apt-get install ${missing[*]}"
  _need_apt_update

  # Simulate first: what would apt remove?
  local args=("${missing[@]}") extra=() sim removed r v
  sim=$(apt-get install -s --no-install-recommends "${args[@]}" 2>&1) || {
    printf '%s\n' "$sim" >&2
    _need_log "$who" "apt cannot install ${missing[*]} (see above)"
    return 1
  }
  removed=$(printf '%s\n' "$sim" | awk '$1 == "Remv" { print $2 }')
  for r in $removed; do
    local ours=0
    for p in "${pkgs[@]}"; do [ "$p" = "$r" ] && ours=1; done
    if [ $ours = 0 ]; then
      printf '%s\n' "$sim" | grep -E '^(Remv|Inst)' >&2
      _need_log "$who" "installing ${missing[*]} would remove $r, which the tests did not ask for; refusing (resolve it by hand)"
      return 1
    fi
    v=$(_need_archive_version "$r")
    if [ -z "$v" ]; then
      _need_log "$who" "installing ${missing[*]} would remove $r and no apt source offers another version of it"
      return 1
    fi
    _need_log "$who" "$r $(dpkg-query -W -f='${Version}' "$r") does not fit the archive's packages; installing the archive's $r $v with them"
    extra+=("$r=$v")
  done
  if [ ${#extra[@]} -gt 0 ]; then
    args+=("${extra[@]}")
    sim=$(apt-get install -s --no-install-recommends --no-remove --allow-downgrades "${args[@]}" 2>&1) || {
      printf '%s\n' "$sim" >&2
      _need_log "$who" "no consistent set for ${args[*]} (see above)"
      return 1
    }
  fi
  apt-get install -y -qq --no-install-recommends --no-remove --allow-downgrades "${args[@]}" >/dev/null
  _need_check_tools "$who" "${tools[@]}"
}

need_pip() {
  local who=$1
  shift
  local pkgs=() tools=() missing=0 t
  while [ $# -gt 0 ] && [ "$1" != -- ]; do pkgs+=("$1"); shift; done
  [ "${1:-}" = -- ] && shift
  tools=("$@")
  for t in "${tools[@]}"; do command -v "$t" >/dev/null 2>&1 || missing=1; done
  [ $missing = 0 ] && return 0
  _need_log "$who" "pip install ${pkgs[*]}"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "${pkgs[@]}"
  command -v pyenv >/dev/null 2>&1 && pyenv rehash >/dev/null 2>&1
  hash -r
  _need_check_tools "$who" "${tools[@]}"
}

need_cargo() {
  local who=$1 crate=$2 version=$3
  if "$crate" --version 2>/dev/null | grep -qF " $version"; then
    return 0
  fi
  _need_log "$who" "cargo install --locked $crate --version $version (crates.io; builds from source, minutes)"
  cargo install --quiet --locked "$crate" --version "$version"
  hash -r
  "$crate" --version 2>/dev/null | grep -qF " $version" || {
    _need_log "$who" "$crate $version still missing after install"
    return 1
  }
}

# need_deb_bin WHO PKG DIR TOOL...
# One program out of a Debian package, without installing the package: the .deb is
# fetched with `apt-get download` and only /usr/bin/TOOL is unpacked into DIR (add DIR
# to PATH). For a package whose installation does more than the tests want: Debian's
# prometheus (96 MB, a system user, a server started on hosts that run systemd) carries
# promtool, the one program the tests need. Idempotent: nothing is fetched when DIR
# already holds every TOOL that runs.
need_deb_bin() {
  local who=$1 pkg=$2 dir=$3 t missing=0
  shift 3
  for t in "$@"; do "$dir/$t" --version >/dev/null 2>&1 || missing=1; done
  [ $missing = 0 ] && return 0
  _need_log "$who" "apt-get download $pkg (unpacking only $*)"
  local tmp deb
  tmp=$(mktemp -d)
  if [ -z "$(apt-cache madison "$pkg" 2>/dev/null)" ]; then _need_apt_update; fi
  (cd "$tmp" && apt-get download -qq "$pkg" 2>&1 | grep -v 'Download is performed unsandboxed' >&2 || true)
  deb=$(ls "$tmp"/"${pkg}"_*.deb 2>/dev/null | head -1)
  if [ -z "$deb" ] && [ -z "${CINDERBLOCK_APT_UPDATED:-}" ]; then
    # Lists older than the mirror name a version it no longer has: fetch them, retry.
    _need_apt_update
    (cd "$tmp" && apt-get download -qq "$pkg" 2>&1 | grep -v 'Download is performed unsandboxed' >&2 || true)
    deb=$(ls "$tmp"/"${pkg}"_*.deb 2>/dev/null | head -1)
  fi
  if [ -z "$deb" ]; then
    _need_log "$who" "apt-get download $pkg failed"
    rm -rf "$tmp"
    return 1
  fi
  mkdir -p "$dir" "$tmp/x"
  for t in "$@"; do
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp/x" "./usr/bin/$t" || {
      _need_log "$who" "$pkg has no /usr/bin/$t"
      rm -rf "$tmp"
      return 1
    }
    install -m 0755 "$tmp/x/usr/bin/$t" "$dir/$t"
    "$dir/$t" --version >/dev/null 2>&1 || {
      _need_log "$who" "$dir/$t from $pkg does not run"
      rm -rf "$tmp"
      return 1
    }
  done
  rm -rf "$tmp"
}
