#!/bin/bash
# Install the host packages the VM storage lab needs, and only those that are missing.
#
# Called by tests/run.sh before `cargo test`; safe to run again (idempotent, quiet when
# everything is present). Needs root and Debian's apt (CI: a fresh Debian 12, as root,
# non-interactive). The installing itself is tests/lib/install.sh's `need_apt`: one apt
# transaction, nothing removed silently, every tool checked by name afterwards.
#
# Installed on the host: qemu (runs the VM), busybox-static, lvm2, thin-provisioning-tools,
# e2fsprogs (their binaries and libraries are copied into the guest's initramfs), cpio
# (packs it), systemd (its systemd-analyze verifies examples/systemd's unit), qemu-utils (qemu-img: the
# migrate benchmark's peer). The guest's NFS and open-iscsi userspace and the kernel are NOT installed
# here: tests/lab/build.sh fetches them with `apt-get download` into target/lab/ and
# unpacks them with `dpkg -x`, so the host gets no NFS or iSCSI daemons. That needs
# apt's package lists, so this script makes sure they exist.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib/install.sh
. "$HERE/../lib/install.sh"

need_apt install-deps \
  qemu-system-x86 qemu-utils busybox-static lvm2 thin-provisioning-tools cpio e2fsprogs systemd etcd-server \
  -- qemu-system-x86_64 qemu-img busybox lvm dmsetup pdata_tools cpio gzip mke2fs dpkg apt-get systemd-analyze etcd

# apt-get download / apt-cache depends (used by build.sh) need package lists; a fresh
# container may have none even when every package above is present.
if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: need root to fetch apt's package lists" >&2
    exit 1
  fi
  _need_apt_update
fi
