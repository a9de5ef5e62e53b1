//! `plan`/`apply` of iSCSI exports on `file` back ends against a plain
//! directory standing in for LIO's configfs (`CINDERBLOCK_LIO_ROOT`): what is
//! written where, the plan text, idempotence, and the error without LIO. The
//! real kernel target, logins and tear-down are in `tests/lab/export.rs`.

use std::fs;
use std::path::Path;

use assert_cmd::Command;

use crate::plan::{H, Site, backend};
use crate::support::Run;

const CLIENT: &str = "iqn.1994-05.com.example:client1";

fn cb(site: &Site, lio: Option<&Path>, env: &[(&str, &str)], args: &[&str]) -> Run {
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
        .join(format!("iqn.2010-10.dev.cinderblock:volume-{uuid}"))
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
