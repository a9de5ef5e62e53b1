#!/bin/bash
# Install the host packages the VM storage lab needs, and only those that are missing.
#
# Called by tests/run.sh before `cargo test`; safe to run again (idempotent, quiet when
# everything is present). Needs root and Debian's apt (CI: a fresh Debian 12, as root,
# non-interactive).
#
# Installed on the host: qemu (runs the VM), busybox-static, lvm2, thin-provisioning-tools,
# e2fsprogs (their binaries and libraries are copied into the guest's initramfs), cpio
# (packs it), systemd (its systemd-analyze verifies examples/systemd's unit), qemu-utils (qemu-img: the
# migrate benchmark's peer). The guest's NFS and open-iscsi userspace and the kernel are NOT installed
# here: tests/lab/build.sh fetches them with `apt-get download` into target/lab/ and
# unpacks them with `dpkg -x`, so the host gets no NFS or iSCSI daemons. That needs
# apt's package lists, so this script makes sure they exist.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

PKGS=(qemu-system-x86 qemu-utils busybox-static lvm2 thin-provisioning-tools cpio e2fsprogs systemd)

missing=()
for p in "${PKGS[@]}"; do
  st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$st" = installed ] || missing+=("$p")
done

# apt-get download / apt-cache depends (used by build.sh) need package lists; a fresh
# container has none. Update once when lists are absent or packages are to be installed.
have_lists() { compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; }

if [ ${#missing[@]} -gt 0 ] || ! have_lists; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: need root to apt-get install: ${missing[*]:-(package lists only)}" >&2
    exit 1
  fi
  apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${missing[*]}" >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The tools the build and the harness call, checked by name so a broken install is loud.
for b in qemu-system-x86_64 qemu-img busybox lvm dmsetup pdata_tools cpio gzip mke2fs dpkg apt-get systemd-analyze; do
  command -v "$b" >/dev/null || { echo "install-deps: $b still missing after install" >&2; exit 1; }
done
