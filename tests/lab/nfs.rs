//! Loopback NFS: the kernel nfsd exports an ext4 LV, the kernel client mounts it with
//! NFSv4.2 over 127.0.0.1, data and a sparse volume file go through it.

use crate::harness::{Scenario, capture_fixture};

#[test]
#[ignore = "needs the VM lab"]
fn nfs_v42_loopback_with_a_sparse_file() {
    let out = Scenario::new("nfs")
        .step(
            "export_fs",
            "pvcreate -y /dev/vdb && vgcreate nfsvg /dev/vdb && lvcreate -y -n share1 -L 256M nfsvg
             mkfs.ext4 -q -F /dev/nfsvg/share1
             mkdir -p /srv/nfs/share1 /mnt/nfs4
             mount -t ext4 /dev/nfsvg/share1 /srv/nfs/share1",
        )
        // rpcbind before rpc.nfsd (else errno 111), short grace before nfsd starts, and
        // nfsdcld so that the kernel skips the grace period (LAB.md pitfalls 22-23)
        .step(
            "server",
            "mount -t nfsd nfsd /proc/fs/nfsd
             mount -t rpc_pipefs sunrpc /var/lib/nfs/rpc_pipefs
             echo 10 > /proc/fs/nfsd/nfsv4leasetime
             echo 10 > /proc/fs/nfsd/nfsv4gracetime
             rpcbind -w
             echo '/srv/nfs/share1 127.0.0.1(rw,sync,no_subtree_check,no_root_squash)' > /etc/exports
             exportfs -ra
             rpc.mountd
             nfsdcld
             # nfsdcld must be listening on its pipe before nfsd starts, or the kernel
             # falls back to the grace period (10 s here, 90 s by default)
             sleep 0.5
             rpc.nfsd 4
             cat /proc/fs/nfsd/versions",
        )
        .step(
            "mount",
            "mount.nfs4 127.0.0.1:/srv/nfs/share1 /mnt/nfs4 -o vers=4.2,retry=0
             cat /proc/mounts > $OUT/proc-mounts.txt
             grep ' /mnt/nfs4 ' /proc/mounts",
        )
        .step(
            "io",
            "dd if=/dev/urandom of=/tmp/pat16 bs=1M count=16 2>/dev/null
             dd if=/tmp/pat16 of=/mnt/nfs4/vol1.img bs=1M conv=fsync 2>/dev/null
             echo \"$(sha < /tmp/pat16) $(sha < /srv/nfs/share1/vol1.img) $(sha < /mnt/nfs4/vol1.img)\"",
        )
        // a sparse 1 GiB volume file with 1 MiB written in the middle
        .step(
            "sparse",
            "truncate -s 1G /mnt/nfs4/sparse.img
             dd if=/tmp/pat16 of=/mnt/nfs4/sparse.img bs=1M count=1 seek=512 conv=notrunc,fsync 2>/dev/null
             stat -c '%s %b %B' /mnt/nfs4/sparse.img /srv/nfs/share1/sparse.img",
        )
        .step(
            "stop",
            "umount /mnt/nfs4
             exportfs -ua
             rpc.nfsd 0
             umount /srv/nfs/share1",
        )
        .run();

    let versions = out.stdout("server");
    assert!(versions.contains("+4.2"), "nfsd serves 4.2: {versions}");

    assert!(
        out.text("dmesg.txt")
            .contains("no clients to reclaim, skipping NFSv4 grace period"),
        "nfsdcld let the server skip the grace period"
    );

    let mount = out.stdout("mount");
    let fields: Vec<&str> = mount.split(' ').collect();
    assert_eq!(
        &fields[..3],
        ["127.0.0.1:/srv/nfs/share1", "/mnt/nfs4", "nfs4"],
        "{mount}"
    );
    assert!(fields[3].split(',').any(|o| o == "vers=4.2"), "{mount}");
    assert!(
        fields[3].split(',').any(|o| o == "addr=127.0.0.1"),
        "{mount}"
    );

    let shas: Vec<&str> = out.stdout("io").split(' ').collect();
    assert_eq!(shas.len(), 3);
    assert!(
        shas.iter().all(|s| *s == shas[0]),
        "client, server, read back: {shas:?}"
    );

    // "<apparent bytes> <blocks> <block unit>" for the client and the server view
    for line in out.stdout("sparse").lines() {
        let n: Vec<u64> = line
            .split(' ')
            .map(|x| x.parse().expect("number"))
            .collect();
        assert_eq!(n[0], 1 << 30, "apparent size: {line}");
        let allocated = n[1] * n[2];
        assert!(
            (1 << 20..4 << 20).contains(&allocated),
            "only the written MiB is allocated: {line}"
        );
    }

    capture_fixture("nfs/proc-mounts.txt", out.file("proc-mounts.txt"));
}
