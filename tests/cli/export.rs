//! `plan`/`apply` of iSCSI exports on `file` back ends against a plain
//! directory standing in for LIO's configfs (`CINDERBLOCK_LIO_ROOT`): what is
//! written where, the plan text, idempotence, and the error without LIO;
//! rotated and mutual CHAP credentials, discovery authentication, a file
//! volume's LUN following its extend, and targetcli's name rules. The real
//! kernel target, logins and tear-down are in `tests/lab/export.rs`.

use std::fs;
use std::path::Path;

use assert_cmd::Command;

use crate::plan::{H, Site, backend};
use crate::support::Run;

const CLIENT: &str = "iqn.1994-05.com.example:client1";

pub(crate) fn cb(site: &Site, lio: Option<&Path>, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut c = Command::cargo_bin("cinderblock").unwrap();
    c.current_dir(site.path())
        .env_remove("CINDERBLOCK_LOG")
        .args(["--state", "state", "--host", "testhost"])
        .args(args);
    match lio {
        Some(p) => c.env("CINDERBLOCK_LIO_ROOT", p),
        None => c.env("CINDERBLOCK_LIO_ROOT", site.path().join("no-lio-here")),
    };
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn exported_volume(initiators: &[&str]) -> String {
    let mut s = format!(
        "{H}kind: Volume\nmetadata:\n  name: web\nspec:\n  size: 32Mi\n  deletionPolicy: Delete\n  export:\n    iscsi:\n      chapSecretRef: {{env: WEB_CHAP}}\n      initiators:\n"
    );
    for i in initiators {
        s.push_str(&format!("        - {i}\n"));
    }
    s
}

/// A site with a file back end, `web` exported to CLIENT, and an empty LIO tree.
fn site_with_export() -> (Site, std::path::PathBuf) {
    let site = Site::new();
    let pool = site.path().join("pool");
    fs::create_dir_all(&pool).unwrap();
    let lio = site.path().join("lio");
    fs::create_dir_all(&lio).unwrap();
    site.write("backend.yaml", &backend("local", &pool, ""));
    site.write("web.yaml", &exported_volume(&[CLIENT]));
    (site, lio)
}

#[test]
fn without_lio_or_without_the_secret_nothing_is_exported_and_the_error_says_why() {
    let (site, lio) = site_with_export();

    // Without LIO: a plan error saying how to load it; nothing applied.
    let r = cb(
        &site,
        None,
        &[],
        &["apply", "-f", "manifests", "--auto-approve"],
    );
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout
            .contains("volume.web: spec.export needs LIO, which is not loaded on this host"),
        "{}",
        r.stdout
    );
    assert!(site.objects("pool").is_empty());

    // The secret is missing: the apply step fails naming the variable, not a value.
    let r = cb(
        &site,
        Some(&lio),
        &[],
        &["apply", "-f", "manifests", "--auto-approve"],
    );
    assert_eq!(r.code, 1);
    assert!(
        format!("{}{}", r.stdout, r.stderr).contains("environment variable WEB_CHAP is not set"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
}

#[test]
fn an_export_is_written_where_lio_expects_it_and_replans_empty() {
    let (site, lio) = site_with_export();
    let chap = [("WEB_CHAP", "webuser:web-secret-0001")];
    let r = cb(
        &site,
        Some(&lio),
        &chap,
        &["apply", "-f", "manifests", "--auto-approve"],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("volume.web: Export complete"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("web-secret-0001") && !r.stderr.contains("web-secret-0001"));
    let (uuid, data, _) = site.objects("pool").remove("volume.web").unwrap();
    let bs = lio
        .join("core/fileio_0")
        .join(format!("cinderblock-{uuid}"));
    assert_eq!(
        fs::read_to_string(bs.join("control")).unwrap(),
        format!("fd_dev_name={},fd_dev_size={}", data.display(), 32 << 20)
    );
    assert_eq!(
        fs::read_to_string(bs.join("wwn/vpd_unit_serial")).unwrap(),
        uuid
    );
    let tpg = lio
        .join("iscsi")
        .join(format!("iqn.2026-11.dev.cinderblock:volume-{uuid}"))
        .join("tpgt_1");
    let acl = tpg.join("acls").join(CLIENT);
    assert_eq!(
        fs::read_to_string(acl.join("auth/userid")).unwrap(),
        "webuser"
    );
    assert_eq!(
        fs::read_to_string(acl.join("auth/password")).unwrap(),
        "web-secret-0001"
    );
    assert_eq!(
        fs::read_to_string(tpg.join("attrib/authentication")).unwrap(),
        "1"
    );
    assert_eq!(fs::read_to_string(tpg.join("enable")).unwrap(), "1");
    assert!(tpg.join("np/0.0.0.0:3260").is_dir());
    assert_eq!(
        fs::read_link(tpg.join("lun/lun_0").join(format!("cinderblock-{uuid}"))).unwrap(),
        bs
    );

    // Again: nothing to do.
    let r = cb(
        &site,
        Some(&lio),
        &chap,
        &["plan", "-f", "manifests", "--detailed-exitcode"],
    );
    assert_eq!(r.code, 0, "{}", r.stdout);

    // One more initiator: an in-place update naming it.
    site.write(
        "web.yaml",
        &exported_volume(&[CLIENT, "iqn.1994-05.com.example:client2"]),
    );
    let r = cb(
        &site,
        Some(&lio),
        &chap,
        &["plan", "-f", "manifests", "--detailed-exitcode"],
    );
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(
        r.stdout
            .contains("# volume.web will have its export updated"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("~ change     = allow iqn.1994-05.com.example:client2"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("Plan: 0 to add, 1 to change, 0 to destroy."),
        "{}",
        r.stdout
    );
}

/// Runs `apply`, asserting success.
fn apply(site: &Site, lio: &Path, env: &[(&str, &str)]) -> Run {
    let r = cb(
        site,
        Some(lio),
        env,
        &["apply", "-f", "manifests", "--auto-approve"],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    r
}

fn plan(site: &Site, lio: &Path, env: &[(&str, &str)]) -> Run {
    cb(
        site,
        Some(lio),
        env,
        &["plan", "-f", "manifests", "--detailed-exitcode"],
    )
}

/// The ACL of CLIENT of the only export in `lio`.
fn acl_dir(lio: &Path) -> std::path::PathBuf {
    let target = fs::read_dir(lio.join("iscsi"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    target.join("tpgt_1/acls").join(CLIENT)
}

#[test]
fn a_rotated_secret_is_planned_and_applied_and_never_printed() {
    let (site, lio) = site_with_export();
    let old = [("WEB_CHAP", "webuser:web-secret-0001")];
    apply(&site, &lio, &old);
    assert_eq!(plan(&site, &lio, &old).code, 0);

    // The password behind chapSecretRef changed: planned, without a value.
    let new = [("WEB_CHAP", "webuser:web-secret-0002")];
    let r = plan(&site, &lio, &new);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(
        r.stdout.contains("~ change     = new CHAP password"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("Plan: 0 to add, 1 to change, 0 to destroy."),
        "{}",
        r.stdout
    );
    let r = apply(&site, &lio, &new);
    for out in [&r.stdout, &r.stderr] {
        assert!(
            !out.contains("web-secret-000") && !out.contains("webuser"),
            "{out}"
        );
    }
    assert_eq!(
        fs::read_to_string(acl_dir(&lio).join("auth/password")).unwrap(),
        "web-secret-0002"
    );
    assert_eq!(plan(&site, &lio, &new).code, 0);

    // The user name alone.
    let renamed = [("WEB_CHAP", "webadmin:web-secret-0002")];
    let r = plan(&site, &lio, &renamed);
    assert!(
        r.stdout.contains("~ change     = new CHAP user name"),
        "{}",
        r.stdout
    );
    apply(&site, &lio, &renamed);
    assert_eq!(
        fs::read_to_string(acl_dir(&lio).join("auth/userid")).unwrap(),
        "webadmin"
    );

    // Mutual CHAP: the target's own credentials on every ACL.
    site.write(
        "web.yaml",
        &exported_volume(&[CLIENT]).replace(
            "      chapSecretRef: {env: WEB_CHAP}\n",
            "      chapSecretRef: {env: WEB_CHAP}\n      mutualChapSecretRef: {env: WEB_TARGET_CHAP}\n",
        ),
    );
    let mutual = [
        ("WEB_CHAP", "webadmin:web-secret-0002"),
        ("WEB_TARGET_CHAP", "target1:target-secret-1"),
    ];
    let r = plan(&site, &lio, &mutual);
    assert!(
        r.stdout
            .contains("~ change      = set mutual CHAP credentials"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("mutual_chap = answered (secret from $WEB_TARGET_CHAP)"),
        "{}",
        r.stdout
    );
    apply(&site, &lio, &mutual);
    assert_eq!(
        fs::read_to_string(acl_dir(&lio).join("auth/userid_mutual")).unwrap(),
        "target1"
    );
    assert_eq!(plan(&site, &lio, &mutual).code, 0);
}

#[test]
fn an_extended_file_volume_grows_its_lun_and_the_plan_says_so() {
    let (site, lio) = site_with_export();
    let chap = [("WEB_CHAP", "webuser:web-secret-0001")];
    apply(&site, &lio, &chap);
    let (uuid, data, _) = site.objects("pool").remove("volume.web").unwrap();
    let bs = lio
        .join("core/fileio_0")
        .join(format!("cinderblock-{uuid}"));
    // What the kernel shows in `info` (a plain directory needs it written).
    let info = |size: u64| {
        fs::write(
            bs.join("info"),
            format!("Status: ACTIVATED  Max Queue Depth: 0  SectorSize: 512  HwMaxSectors: 16384\n        TCM FILEIO ID: 0        File: {}  Size: {size}  Mode: O_DSYNC Async: 0\n", data.display()),
        )
        .unwrap();
    };
    info(32 << 20);
    assert_eq!(plan(&site, &lio, &chap).code, 0);

    site.write(
        "web.yaml",
        &exported_volume(&[CLIENT]).replace("size: 32Mi", "size: 64Mi"),
    );
    let r = plan(&site, &lio, &chap);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(
        r.stdout.contains("~ size = 32Mi -> 64Mi") || r.stdout.contains("~ size    = 32Mi -> 64Mi"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!("its iSCSI export iqn.2026-11.dev.cinderblock:volume-{uuid} shows the new size to initiators at their next login or rescan")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("~ change     = LUN size 32Mi -> 64Mi (LIO's fileio backstore does not follow its file; initiators see it after a rescan: iscsiadm -m session --rescan)"),
        "{}",
        r.stdout
    );
    apply(&site, &lio, &chap);
    assert_eq!(fs::metadata(&data).unwrap().len(), 64 << 20);
    assert_eq!(
        fs::read_to_string(bs.join("control")).unwrap(),
        format!("fd_dev_size={}", 64 << 20)
    );
    info(64 << 20);
    assert_eq!(plan(&site, &lio, &chap).code, 0);
}

#[test]
fn discovery_authentication_is_set_from_the_back_end_once() {
    let (site, lio) = site_with_export();
    let disc = lio.join("iscsi/discovery_auth");
    fs::create_dir_all(&disc).unwrap();
    for f in ["userid", "password", "userid_mutual", "password_mutual"] {
        fs::write(disc.join(f), "NULL\n").unwrap();
    }
    fs::write(disc.join("enforce_discovery_auth"), "0\n").unwrap();
    let pool = site.path().join("pool");
    site.write(
        "backend.yaml",
        &backend(
            "local",
            &pool,
            "  iscsi:\n    discoveryAuth:\n      chapSecretRef: {env: DISC_CHAP}\n",
        ),
    );
    let env = [
        ("WEB_CHAP", "webuser:web-secret-0001"),
        ("DISC_CHAP", "disc:discovery-secret-1"),
    ];
    let r = plan(&site, &lio, &env);
    assert!(
        r.stdout.contains("# iscsi.discovery-auth will be enforced"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("chap        = required (secret from $DISC_CHAP)"),
        "{}",
        r.stdout
    );
    apply(&site, &lio, &env);
    assert_eq!(
        fs::read_to_string(disc.join("enforce_discovery_auth")).unwrap(),
        "1"
    );
    assert_eq!(fs::read_to_string(disc.join("userid")).unwrap(), "disc");
    assert_eq!(plan(&site, &lio, &env).code, 0);
    // Without the variable: a plan error naming it, nothing applied.
    let r = cb(
        &site,
        Some(&lio),
        &env[..1],
        &["apply", "-f", "manifests", "--auto-approve"],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains("iscsi.discovery-auth: backend.local: spec.iscsi.discoveryAuth.chapSecretRef: the CHAP secret's environment variable DISC_CHAP is not set for this process"),
        "{}",
        r.stdout
    );
}

#[test]
fn an_initiator_name_targetcli_cannot_read_is_a_warning_with_its_line() {
    let (site, _lio) = site_with_export();
    site.write("web.yaml", &exported_volume(&["iqn.2026-12.test:client"]));
    let r = site.run(&["validate", "-f", "manifests"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("manifests/web.yaml:12:11: warning: Volume/web: spec.export.iscsi.initiators[0]: targetcli (rtslib-fb) cannot read \"iqn.2026-12.test:client\""),
        "{}",
        r.stderr
    );
}
