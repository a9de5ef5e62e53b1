//! One manifest tree, several hosts. Without `--etcd`: a host never creates
//! an unpinned volume that a back end of another host could also take.

use crate::plan::Site;

/// Two `file` back ends on hosts stor-a and stor-b, one volume type both
/// serve, an unpinned `db` and one volume pinned to each host.
fn two_host_site() -> Site {
    let site = Site::new();
    for d in ["fa", "fb"] {
        std::fs::create_dir_all(site.path().join(d)).unwrap();
    }
    let p = site.path().display().to_string();
    site.write(
        "site.yaml",
        &format!(
            r"apiVersion: cinderblock.dev/v1alpha1
kind: Backend
metadata: {{name: fa}}
spec: {{host: stor-a, file: {{path: {p}/fa}}}}
---
apiVersion: cinderblock.dev/v1alpha1
kind: Backend
metadata: {{name: fb}}
spec: {{host: stor-b, file: {{path: {p}/fb}}}}
---
apiVersion: cinderblock.dev/v1alpha1
kind: VolumeType
metadata: {{name: standard}}
spec: {{}}
---
apiVersion: cinderblock.dev/v1alpha1
kind: Volume
metadata: {{name: db}}
spec: {{size: 1Gi, volumeType: standard}}
---
apiVersion: cinderblock.dev/v1alpha1
kind: Volume
metadata: {{name: on-a}}
spec: {{size: 1Gi, backend: fa}}
---
apiVersion: cinderblock.dev/v1alpha1
kind: Volume
metadata: {{name: on-b}}
spec: {{size: 1Gi, backend: fb}}
"
        ),
    );
    site
}

#[test]
fn two_hosts_without_etcd_create_the_unpinned_volume_on_neither_and_say_why() {
    let site = two_host_site();
    for (host, state, mine, other) in [
        ("stor-a", "state-a", "on-a", "fb on host stor-b"),
        ("stor-b", "state-b", "on-b", "fa on host stor-a"),
    ] {
        let r = crate::support::run_in(
            site.path(),
            &[
                "--state",
                state,
                "--host",
                host,
                "apply",
                "-f",
                "manifests",
                "--auto-approve",
            ],
        );
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        assert!(
            r.stdout
                .contains(&format!("volume.{mine}: Creation complete")),
            "{}",
            r.stdout
        );
        assert!(
            r.stdout.contains(&format!(
                "Waiting: volume.db: not created: back ends of other hosts could also take it ({other}), and without a fleet each host would create its own; pin it with spec.backend, or run the agents with --etcd"
            )),
            "{}",
            r.stdout
        );
        assert!(
            r.stdout
                .contains("Plan: 1 to add, 0 to change, 0 to destroy. 1 object waits (see above)."),
            "{}",
            r.stdout
        );
    }
    let a: Vec<String> = site.objects("fa").into_keys().collect();
    let b: Vec<String> = site.objects("fb").into_keys().collect();
    assert_eq!(a, ["volume.on-a"]);
    assert_eq!(b, ["volume.on-b"]);
    // Planning again: nothing to do, and still the reason.
    let r = crate::support::run_in(
        site.path(),
        &[
            "--state",
            "state-a",
            "--host",
            "stor-a",
            "plan",
            "-f",
            "manifests",
            "--detailed-exitcode",
        ],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .ends_with("No changes now. 1 object waits (see above).\n"),
        "{}",
        r.stdout
    );
}
