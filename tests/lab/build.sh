#!/bin/bash
# Build the storage lab's boot image: a Debian cloud kernel and an initramfs.
#
#   bash tests/lab/build.sh [LAB_DIR]        (default LAB_DIR: <repo>/target/lab)
#   LAB_TARGETCLI=1 bash tests/lab/build.sh  the same plus python3 and targetcli-fb
#                                            (initrd-tcli-<hash>.img, ~9 MB more)
#
# Prints, as its last two lines on stdout:  KERNEL=<path>  and  INITRD=<path>.
# Progress goes to stderr. Needs the host packages of tests/lab/install-deps.sh.
#
# Cached under LAB_DIR (never in tracked files):
#   dl/                     downloaded .debs (kernel, NFS and open-iscsi userspace)
#   kernel-$KVER/           the kernel package unpacked with dpkg -x, plus modules.dep
#   extra-nfs/, extra-iscsi/ userspace debs unpacked with dpkg -x (never installed on the host)
#   initrd-<hash>.img       the initramfs; <hash> covers every input (this script, the
#                           guest scripts, the kernel ABI, host package versions, the debs),
#                           so it is rebuilt only when one of them changed.
#
# The cinderblock binary is deliberately NOT in the initramfs: it changes on every cargo
# build and would force a rebuild (3-5 s) and a new cache entry each time. The harness
# ships it (with its ldd libraries) on the scenario disk instead, which is written per
# run anyway; /init links it to /usr/local/bin/cinderblock.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LAB_DIR=${1:-$REPO/target/lab}
KFLAVOUR=${LAB_KFLAVOUR:-cloud-amd64}
ARCH_LIB=x86_64-linux-gnu
mkdir -p "$LAB_DIR/dl"
LAB_DIR=$(cd "$LAB_DIR" && pwd)

log() { echo "lab-build: $*" >&2; }
die() { echo "lab-build: $*" >&2; exit 1; }

for b in busybox lvm dmsetup pdata_tools mke2fs cpio gzip dpkg dpkg-query apt-get apt-cache ldd sha256sum flock; do
  command -v "$b" >/dev/null || die "missing $b: run 'bash tests/lab/install-deps.sh' (as root)"
done

# One build at a time per LAB_DIR (two test binaries may start together).
exec 9>"$LAB_DIR/.build.lock"
flock 9

# ------------------------------------------------------------------ kernel
# The ABI comes from the metapackage, as in LAB.md; LAB_KVER pins it.
KVER=${LAB_KVER:-$(apt-cache depends "linux-image-$KFLAVOUR" 2>/dev/null |
  awk '/Depends: linux-image-[0-9]/{sub("linux-image-","",$2); print $2; exit}')}
if [ -z "$KVER" ]; then
  # no apt lists (or no network): fall back to a kernel already in the cache
  KVER=$(find "$LAB_DIR" -maxdepth 1 -name "kernel-*-$KFLAVOUR" -printf '%f\n' 2>/dev/null | sed 's/^kernel-//' | sort -V | tail -1)
  [ -n "$KVER" ] || die "cannot resolve linux-image-$KFLAVOUR (apt lists missing?): run 'bash tests/lab/install-deps.sh'"
  log "apt-cache knows no linux-image-$KFLAVOUR; using cached kernel $KVER"
fi

apt_download() { # dir pkgs... (root's sandboxing note "unsandboxed" is harmless noise)
  local dir=$1; shift
  mkdir -p "$dir"
  (cd "$dir" && apt-get download -qq "$@" 2>&1 | grep -v 'Download is performed unsandboxed' >&2 || true)
}

KDIR=$LAB_DIR/kernel-$KVER
if [ ! -f "$KDIR/boot/vmlinuz-$KVER" ]; then
  log "downloading linux-image-$KVER"
  apt_download "$LAB_DIR/dl/kernel" "linux-image-$KVER"
  deb=$(ls "$LAB_DIR/dl/kernel/linux-image-${KVER}_"*.deb 2>/dev/null | head -1)
  [ -n "$deb" ] || die "apt-get download linux-image-$KVER failed"
  rm -rf "$KDIR.tmp" && mkdir -p "$KDIR.tmp"
  dpkg -x "$deb" "$KDIR.tmp"
  # dpkg -x runs no depmod, and the host may have no kmod: busybox depmod is enough
  busybox depmod -b "$KDIR.tmp" "$KVER"
  rm -rf "$KDIR" && mv "$KDIR.tmp" "$KDIR"
fi
MD=$KDIR/lib/modules/$KVER

# ------------------------------------------------------------------ userspace debs
# NFS server/client and the open-iscsi initiator go only into the guest: download and
# unpack, never install on the host. Their library dependencies that a minimal host
# lacks are listed explicitly (LAB.md pitfalls 21 and 25).
NFS_DEBS="nfs-kernel-server nfs-common rpcbind libwrap0 libtirpc3 libtirpc-common libgssapi-krb5-2
 libkrb5-3 libk5crypto3 libkrb5support0 libkeyutils1 libnsl2 libevent-core-2.1-7 libsqlite3-0"
ISCSI_DEBS="open-iscsi libisns0 libopeniscsiusr"
fetch_debs() { # name pkgs...
  local name=$1 dir=$LAB_DIR/extra-$1; shift
  local want="$*"
  if [ -f "$dir/.done" ] && [ "$(cat "$dir/.done")" = "$want" ]; then return 0; fi
  log "downloading $name userspace: $want"
  rm -rf "$dir" "$LAB_DIR/dl/$name"
  apt_download "$LAB_DIR/dl/$name" "$@"
  local n
  n=$(ls "$LAB_DIR/dl/$name"/*.deb 2>/dev/null | wc -l)
  [ "$n" -eq $# ] || die "apt-get download $name: got $n of $# packages"
  mkdir -p "$dir"
  for d in "$LAB_DIR/dl/$name"/*.deb; do dpkg -x "$d" "$dir"; done
  echo "$want" > "$dir/.done"
}
# shellcheck disable=SC2086
fetch_debs nfs $NFS_DEBS
# shellcheck disable=SC2086
fetch_debs iscsi $ISCSI_DEBS
NFSROOT=$LAB_DIR/extra-nfs
ISCSIROOT=$LAB_DIR/extra-iscsi
# targetcli-fb and the python it runs on, for the scenarios that check what an
# admin's targetcli makes of our exports (LAB.md section 5.7); only in the
# LAB_TARGETCLI=1 variant, which the other scenarios do not pay for.
WITH_TARGETCLI=${LAB_TARGETCLI:-0}
TCLI_DEBS="targetcli-fb python3-rtslib-fb python3-configshell-fb python3-pyparsing python3-six
 python3-urwid python3-pyudev python3.11-minimal libpython3.11-minimal libpython3.11-stdlib"
TCLIROOT=$LAB_DIR/extra-targetcli
if [ "$WITH_TARGETCLI" = 1 ]; then
  # shellcheck disable=SC2086
  fetch_debs targetcli $TCLI_DEBS
fi

# ------------------------------------------------------------------ cache key
WANT_MODS="virtio_pci virtio_blk dm-mod dm-bufio dm-persistent-data dm-bio-prison dm-thin-pool
 dm-snapshot dm-mirror dm-log dm-region-hash dm-zero loop configfs target_core_mod
 target_core_iblock target_core_file iscsi_target_mod tcm_loop sd_mod crc32c_generic ext4
 sunrpc grace lockd nfs_acl auth_rpcgss nfsd nfs nfsv4 nfsv3 iscsi_tcp"
KEY=$( {
  cat "$0" "$HERE"/guest/*
  echo "$KVER"
  dpkg-query -W busybox-static lvm2 dmsetup libdevmapper1.02.1 thin-provisioning-tools e2fsprogs libc6 2>/dev/null
  ls "$LAB_DIR"/dl/nfs "$LAB_DIR"/dl/iscsi
  if [ "$WITH_TARGETCLI" = 1 ]; then ls "$LAB_DIR"/dl/targetcli; fi
} | sha256sum | cut -c1-16)
# Base images are initrd-<hex>.img, the targetcli variant initrd-tcli-<hex>.img.
if [ "$WITH_TARGETCLI" = 1 ]; then VARIANT=tcli-; STALE='initrd-tcli-*.img'; else VARIANT=; STALE='initrd-[0-9a-f]*.img'; fi
INITRD=$LAB_DIR/initrd-$VARIANT$KEY.img
if [ -f "$INITRD" ]; then
  echo "KERNEL=$KDIR/boot/vmlinuz-$KVER"
  echo "INITRD=$INITRD"
  exit 0
fi

# ------------------------------------------------------------------ rootfs
log "building initramfs $KEY"
R=$LAB_DIR/rootfs.tmp
rm -rf "$R"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,lib/$ARCH_LIB,lib64,etc/lvm/backup,etc/target} \
  "$R"/{proc,sys,dev,run,tmp,root,lab,var/lib/nfs,var/lib/iscsi,srv/nfs,mnt}

LIBS_SEEN=" "
copy_libs() { # binary [LD_LIBRARY_PATH] : every library ldd resolves; fail on "not found"
  local f=$1 lp=${2:-} out lib
  out=$(LD_LIBRARY_PATH=$lp ldd "$f" 2>&1) || true
  if grep -q 'not found' <<<"$out"; then die "ldd $f: $(grep 'not found' <<<"$out" | tr '\n' ' ')"; fi
  for lib in $(awk '/=> \//{print $3}' <<<"$out"); do
    case "$LIBS_SEEN" in *" ${lib##*/} "*) continue;; esac
    LIBS_SEEN="$LIBS_SEEN${lib##*/} "
    cp -L "$lib" "$R/lib/$ARCH_LIB/${lib##*/}"
  done
}
copy_bin() { # path-on-host -> /usr/sbin
  cp -L "$1" "$R/usr/sbin/${1##*/}"
  copy_libs "$1"
}
copy_extra_bin() { # extracted-deb-root relpath: libraries from the host or that tree
  local root=$1 b=$2
  [ -f "$root/$b" ] || die "missing $root/$b"
  cp -L "$root/$b" "$R/usr/sbin/${b##*/}"
  copy_libs "$root/$b" "$root/lib/$ARCH_LIB:$root/usr/lib/$ARCH_LIB"
}

cp -L "$(command -v busybox)" "$R/bin/busybox"
cp -L /lib64/ld-linux-x86-64.so.2 "$R/lib/$ARCH_LIB/ld-linux-x86-64.so.2"
ln -s "/lib/$ARCH_LIB/ld-linux-x86-64.so.2" "$R/lib64/ld-linux-x86-64.so.2"

# lvm2 (every command is a symlink to lvm), dmsetup, thin-provisioning-tools, mke2fs
copy_bin "$(command -v lvm)"
copy_bin "$(command -v dmsetup)"
copy_bin "$(command -v pdata_tools)"
copy_bin "$(command -v mke2fs)"
ln -s mke2fs "$R/usr/sbin/mkfs.ext4"
cp /etc/mke2fs.conf "$R/etc/mke2fs.conf"
for l in $(dpkg -L lvm2 | grep -E '/sbin/[a-z]+$'); do
  [ -L "$l" ] && [ "$(readlink "$l")" = lvm ] && ln -sf lvm "$R/usr/sbin/${l##*/}"
done
for l in $(dpkg -L thin-provisioning-tools | grep -E '/sbin/(thin|cache|era)_'); do
  ln -sf pdata_tools "$R/usr/sbin/${l##*/}"
done

# busybox applets as symlinks, never over a real tool copied above
for a in $(busybox --list-full); do
  [ -e "$R/$a" ] || [ -L "$R/$a" ] || { mkdir -p "$R/${a%/*}"; ln -s /bin/busybox "$R/$a"; }
done

# NFS: rpcbind, rpc.nfsd, rpc.mountd, exportfs, mount.nfs(4), nfsdcld
for b in sbin/rpcbind usr/sbin/rpc.nfsd usr/sbin/rpc.mountd usr/sbin/exportfs sbin/mount.nfs usr/sbin/nfsdcld; do
  copy_extra_bin "$NFSROOT" "$b"
done
ln -sf mount.nfs "$R/usr/sbin/mount.nfs4"
ln -sf /proc/self/mounts "$R/etc/mtab"
cp "$NFSROOT/etc/netconfig" "$R/etc/netconfig"
printf 'tcp\t6\tTCP\nudp\t17\tUDP\n' > "$R/etc/protocols"
printf 'sunrpc\t111/tcp\tportmapper\nsunrpc\t111/udp\tportmapper\nnfs\t2049/tcp\nnfs\t2049/udp\niscsi-target\t3260/tcp\n' > "$R/etc/services"
printf 'rpcbind\t100000\tportmap sunrpc\nnfs\t100003\tnfsprog\nmountd\t100005\tmount\nnlockmgr\t100021\nstatus\t100024\nnfs_acl\t100227\n' > "$R/etc/rpc"
mkdir -p "$R/var/lib/nfs/nfsdcld" "$R/var/lib/nfs/rpc_pipefs"
: > "$R/var/lib/nfs/etab"; : > "$R/var/lib/nfs/rmtab"

# open-iscsi initiator; node.startup manual so nothing logs in behind a test's back
copy_extra_bin "$ISCSIROOT" sbin/iscsid
copy_extra_bin "$ISCSIROOT" sbin/iscsiadm
mkdir -p "$R/etc/iscsi"
sed -e 's/^node.startup = .*/node.startup = manual/' "$ISCSIROOT/etc/iscsi/iscsid.conf" > "$R/etc/iscsi/iscsid.conf"

# python3 + targetcli-fb, from the downloaded debs (not the host's python)
if [ "$WITH_TARGETCLI" = 1 ]; then
  copy_extra_bin "$TCLIROOT" usr/bin/python3.11
  mkdir -p "$R/usr/lib/python3.11" "$R/usr/lib/python3/dist-packages"
  (cd "$TCLIROOT/usr/lib/python3.11" && tar -cf - --exclude=test --exclude=tests --exclude=idlelib \
     --exclude=tkinter --exclude=turtledemo --exclude=ensurepip --exclude=lib2to3 --exclude=__pycache__ \
     --exclude=pydoc_data --exclude='config-3.11*' .) | tar -xf - -C "$R/usr/lib/python3.11"
  cp -a "$TCLIROOT/usr/lib/python3/dist-packages/." "$R/usr/lib/python3/dist-packages/"
  rm -rf "$R/usr/lib/python3/dist-packages/urwid/tests"
  # targetcli 2.1.53 calls Gio.bus_get_sync() (the system D-Bus, to find
  # tcmu-runner) outside its try block and dies without a D-Bus daemon
  # (LAB.md pitfall 27): a stub "no bus" gi.repository instead of python3-gi
  mkdir -p "$R/usr/lib/python3/dist-packages/gi"
  : > "$R/usr/lib/python3/dist-packages/gi/__init__.py"
  cat > "$R/usr/lib/python3/dist-packages/gi/repository.py" <<'GI'
class Gio:
    class BusType:
        SYSTEM = 1
    class DBusProxyFlags:
        NONE = 0
    @staticmethod
    def bus_get_sync(*a, **k):
        return None
    class DBusProxy:
        @staticmethod
        def new_sync(*a, **k):
            raise RuntimeError("no D-Bus in the storage lab")
GI
  # extension modules whose libraries the host lacks are not needed by
  # targetcli (sqlite, dbm, tk...): dropped rather than failing the build
  while IFS= read -r so; do
    if LD_LIBRARY_PATH=$TCLIROOT/usr/lib/$ARCH_LIB ldd "$so" 2>&1 | grep -q 'not found'; then
      rm -f "$so"
    else
      copy_libs "$so" "$TCLIROOT/usr/lib/$ARCH_LIB"
    fi
  done < <(find "$R/usr/lib/python3.11/lib-dynload" "$R/usr/lib/python3/dist-packages" -name '*.so')
  for b in targetcli targetctl; do
    [ -f "$TCLIROOT/usr/bin/$b" ] || continue
    sed '1s|.*|#!/usr/bin/python3|' "$TCLIROOT/usr/bin/$b" > "$R/usr/bin/$b"
    chmod +x "$R/usr/bin/$b"
  done
  ln -sf /usr/sbin/python3.11 "$R/usr/bin/python3"
  mkdir -p "$R/etc/rtslib-fb-target" "$R/root/.targetcli"
fi

# users rpcbind and statd need (rpcbind exits without _rpc: LAB.md pitfall 22)
printf 'root:x:0:0:root:/root:/bin/sh\n_rpc:x:100:65534::/run/rpcbind:/usr/sbin/nologin\nstatd:x:101:65534::/var/lib/nfs:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$R/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$R/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files\n' > "$R/etc/nsswitch.conf"
printf '127.0.0.1 localhost lab\n' > "$R/etc/hosts"
echo lab > "$R/etc/hostname"

# lvm.conf for a guest without udev, lvmetad, dmeventd or lvmpolld. The filter keeps
# LVM on the two scratch disks: never on LVs, loop devices or LIO-exported sd* disks.
cat > "$R/etc/lvm/lvm.conf" <<'LVMCONF'
devices {
    dir = "/dev"
    scan = [ "/dev" ]
    obtain_device_list_from_udev = 0
    external_device_info_source = "none"
    use_devicesfile = 0
    global_filter = [ "a|^/dev/vd[a-b]$|", "r|.*|" ]
    scan_lvs = 0
    multipath_component_detection = 0
    md_component_detection = 0
    fw_raid_component_detection = 0
}
activation {
    udev_sync = 0
    udev_rules = 0
    verify_udev_operations = 0
    monitoring = 0
    thin_pool_autoextend_threshold = 100
    checks = 0
}
global {
    use_lvmlockd = 0
    use_lvmpolld = 0
    event_activation = 0
    thin_check_executable = "/usr/sbin/thin_check"
    thin_dump_executable = "/usr/sbin/thin_dump"
    thin_repair_executable = "/usr/sbin/thin_repair"
    thin_check_options = [ "-q", "--clear-needs-check-flag" ]
}
backup {
    backup = 1
    backup_dir = "/etc/lvm/backup"
    archive = 0
}
log {
    verbose = 0
    syslog = 0
    level = 0
}
LVMCONF

# ------------------------------------------------------------------ kernel modules
# Each wanted module plus its dependencies from modules.dep, dependencies first;
# built-in ones (ext4 on the cloud kernel) are skipped. /init insmods in this order.
mkdir -p "$R/lib/modules/$KVER"
cp "$MD"/modules.builtin* "$MD/modules.order" "$R/lib/modules/$KVER/"
LOAD_ORDER=" "
add_mod() {
  local want line dep
  want=$(tr - _ <<<"$1")
  line=$(awk -F: -v w="$want" '{n=$1; sub(".*/","",n); sub("\\.ko.*$","",n); gsub("-","_",n); if (n==w) {print; exit}}' "$MD/modules.dep")
  if [ -z "$line" ]; then
    grep -Eq "/($1|$want)\.ko" "$MD/modules.builtin" && return 0
    die "module $1 not in $KVER"
  fi
  # modules.dep lists a module's dependencies so that the last must be loaded first
  for dep in $(tr ' ' '\n' <<<"${line#*:}" | tac) "${line%%:*}"; do
    case "$LOAD_ORDER" in *" $dep "*) ;; *) LOAD_ORDER="$LOAD_ORDER$dep ";; esac
  done
}
for m in $WANT_MODS; do add_mod "$m"; done
: > "$R/etc/lab-modules"
for p in $LOAD_ORDER; do
  mkdir -p "$R/lib/modules/$KVER/${p%/*}"
  cp "$MD/$p" "$R/lib/modules/$KVER/$p"
  echo "$p" >> "$R/etc/lab-modules"
done
# busybox modprobe in the guest serves the kernel's request_module
busybox depmod -b "$R" "$KVER"

# ------------------------------------------------------------------ guest scripts
install -m 0755 "$HERE/guest/init" "$R/init"
install -m 0755 "$HERE/guest/run-steps.sh" "$R/lab/run-steps.sh"
install -m 0644 "$HERE/guest/lib.sh" "$R/lab/lib.sh"

(cd "$R" && find . | cpio -o -H newc -R 0:0 --quiet | gzip -1) > "$INITRD.tmp"
mv "$INITRD.tmp" "$INITRD"
# keep one initramfs per variant: older ones are stale by construction
find "$LAB_DIR" -maxdepth 1 -name "$STALE" ! -name "${INITRD##*/}" -delete
rm -rf "$R"
log "initramfs $(du -h "$INITRD" | cut -f1) with $(echo $LOAD_ORDER | wc -w) modules"
echo "KERNEL=$KDIR/boot/vmlinuz-$KVER"
echo "INITRD=$INITRD"
