//! Renames (`cinderblock.dev/renamed-from`) on `file` back ends: one `~
//! rename` step that keeps the volume's identity, bytes, export, backups and
//! snapshots; the refusals with file and line; a kill at each point of the
//! step, after which the next run finishes the rename once.

use std::fs;
use std::path::{Path, PathBuf};

use crate::backup::{backup_id, sha256};
use crate::export::cb;
use crate::plan::{H, Site, backend, snapshot};

const CLIENT: &str = "iqn.1994-05.com.example:client1";

/// Volume `name` (8 MiB on `local`, backed up by `nightly`, Delete), renamed
/// from `from` when given, exported to CLIENT when `export`.
fn vol(name: &str, from: Option<&str>, export: bool) -> String {
    let annotation = from.map_or_else(String::new, |o| {
        format!("  annotations:\n    cinderblock.dev/renamed-from: {o}\n")
    });
    let export = if export {
        format!("  export:\n    iscsi:\n      initiators: [{CLIENT}]\n")
    } else {
        String::new()
    };
    format!(
        "{H}kind: Volume\nmetadata:\n  name: {name}\n{annotation}spec:\n  size: 8Mi\n  backend: local\n  backupPolicy: nightly\n  deletionPolicy: Delete\n{export}"
    )
}

/// A site with back end `local`, policy `nightly`, volume `db` (8 MiB of a
/// pattern, exported when `export`) with snapshot `db-snap`, applied, and
/// one backup of `db`. Returns (site, LIO stand-in, backup id).
fn site_with_db(export: bool) -> (Site, PathBuf, String) {
    let site = Site::new();
    let pool = site.path().join("pool");
    let lio = site.path().join("lio");
    fs::create_dir_all(&pool).unwrap();
    fs::create_dir_all(&lio).unwrap();
    site.write("backend.yaml", &backend("local", &pool, ""));
    site.write(
        "policy.yaml",
        &format!(
            "{H}kind: BackupPolicy\nmetadata:\n  name: nightly\nspec:\n  schedule: \"0 2 * * *\"\n  target: {{path: {}}}\n",
            site.path().join("repo").display()
        ),
    );
    site.write("db.yaml", &vol("db", None, export));
    let r = apply(&site, &lio);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i % 253) as u8).collect();
    fs::write(site.data("pool", "volume.db"), data).unwrap();
    site.write("snap.yaml", &snapshot("db-snap", "db", ""));
    let r = apply(&site, &lio);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let id = backup_id(&site.run(&["backup", "run", "db", "-f", "manifests"]));
    (site, lio, id)
}

fn apply(site: &Site, lio: &Path) -> crate::support::Run {
    cb(
        site,
        Some(lio),
        &[],
        &["apply", "-f", "manifests", "--auto-approve"],
    )
}

fn plan(site: &Site, lio: &Path) -> crate::support::Run {
    cb(
        site,
        Some(lio),
        &[],
        &["plan", "-f", "manifests", "--detailed-exitcode"],
    )
}

/// The manifests after the rename of `db` to `orders`.
fn rename_db(site: &Site, export: bool) {
    site.write("db.yaml", &vol("orders", Some("db"), export));
    site.write("snap.yaml", &snapshot("db-snap", "orders", ""));
}

/// The names of the volumes the catalogue lists, with their uuids.
fn catalogued(site: &Site) -> Vec<(String, String)> {
    let text = fs::read_to_string(site.path().join("state/backup-catalog.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["backups"]
        .as_object()
        .unwrap()
        .values()
        .map(|e| {
            (
                e["volume"]["name"].as_str().unwrap().to_owned(),
                e["volume"]["uuid"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The recorded names in `state.json`, by uuid.
fn recorded(site: &Site) -> std::collections::BTreeMap<String, String> {
    let text = fs::read_to_string(site.path().join("state/state.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["objects"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(u, r)| (u.clone(), r["name"].as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn a_rename_keeps_identity_data_export_backups_and_snapshots() {
    let (site, lio, backup) = site_with_db(true);
    let (uuid, path, _) = site.objects("pool").remove("volume.db").unwrap();
    let snap_uuid = site.objects("pool")["snapshot.db-snap"].0.clone();
    let before = sha256(&path);
    let target = lio
        .join("iscsi")
        .join(format!("iqn.2026-11.dev.cinderblock:volume-{uuid}"));
    assert!(target.is_dir(), "exported before");

    rename_db(&site, true);
    let p = plan(&site, &lio);
    assert_eq!(p.code, 2, "{}{}", p.stdout, p.stderr);
    for want in [
        "  # volume.orders will be renamed\n",
        "  # (because cinderblock.dev/renamed-from names volume db: only its name changes)\n",
        "  ~ volume \"orders\" {\n",
        "\"db\" -> \"orders\"",
        &format!("id      = {uuid}"),
        "Plan: 0 to add, 1 to change, 0 to destroy.",
    ] {
        assert!(p.stdout.contains(want), "{want}\n{}", p.stdout);
    }
    for never in [
        "will be created",
        "will be destroyed",
        "will be forgotten",
        "iscsi_export",
    ] {
        assert!(!p.stdout.contains(never), "{never}\n{}", p.stdout);
    }
    let r = apply(&site, &lio);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("volume.orders: Renaming...")
            && r.stdout
                .contains("Apply complete! Resources: 0 added, 1 changed, 0 destroyed."),
        "{}",
        r.stdout
    );

    // The same object: identity, file, bytes; its snapshot still points at it.
    let objects = site.objects("pool");
    assert!(!objects.contains_key("volume.db"));
    let (again, path_again, _) = &objects["volume.orders"];
    assert_eq!((again, path_again), (&uuid, &path));
    assert_eq!(sha256(&path), before);
    let (snap_again, _, snap_meta) = &objects["snapshot.db-snap"];
    assert_eq!(snap_again, &snap_uuid);
    assert_eq!(snap_meta["parent"], uuid.as_str());
    assert_eq!(objects.len(), 2);
    // The same export; the catalogue and the record follow the name.
    assert!(target.is_dir(), "the export stays");
    assert_eq!(catalogued(&site), [("orders".to_owned(), uuid.clone())]);
    assert_eq!(recorded(&site)[&uuid], "orders");
    let list = site.run(&["backup", "list", "orders"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(list.stdout.contains(&backup), "{}", list.stdout);
    let p = plan(&site, &lio);
    assert_eq!(p.code, 0, "{}{}", p.stdout, p.stderr);
    // Its backup schedule knows its last backup under the new name.
    let short = &backup[..8];
    assert!(
        p.stdout
            .contains("  orders  nightly (0 2 * * * UTC); last full ")
            && p.stdout.contains(&format!("({short})"))
            && p.stdout
                .ends_with("\nNo changes. Storage matches the manifests.\n"),
        "{}",
        p.stdout
    );
    // The restore of the old backup holds the old bytes.
    let r = site.run(&[
        "backup",
        "restore",
        &backup,
        "--to",
        "restored",
        "-f",
        "manifests",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(sha256(&site.data("pool", "volume.restored")), before);
}

#[test]
fn a_rename_from_a_missing_or_taken_name_is_refused_with_file_and_line() {
    let (site, lio, _) = site_with_db(false);
    let pool = site.path().join("pool");
    // The old name is still declared: validation says where both are.
    site.write("orders.yaml", &vol("orders", Some("db"), false));
    let v = site.run(&["validate", "-f", "manifests"]);
    assert_eq!(v.code, 1, "{}{}", v.stdout, v.stderr);
    assert!(
        v.stderr.contains("manifests/orders.yaml:6:35: Volume/orders: metadata.annotations[\"cinderblock.dev/renamed-from\"]: Volume/db is still declared (manifests/db.yaml:1:1); a rename moves the name: remove that document, or this annotation"),
        "{}",
        v.stderr
    );
    site.remove("orders.yaml");
    // No such volume: a plan error naming the annotation; nothing created.
    site.write("orders.yaml", &vol("orders", Some("dbb"), false));
    let p = plan(&site, &lio);
    assert_eq!(p.code, 1, "{}{}", p.stdout, p.stderr);
    assert!(
        p.stdout.contains("volume.orders: manifests/orders.yaml:6:35: metadata.annotations[\"cinderblock.dev/renamed-from\"]: renamed from volume dbb, but no volume dbb exists on this host's back ends (`cinderblock discover` lists what they hold); nothing is created under the new name: fix the old name, or remove the annotation to create an empty volume"),
        "{}",
        p.stdout
    );
    assert!(!p.stdout.contains("will be created"), "{}", p.stdout);
    let r = apply(&site, &lio);
    assert_eq!(r.code, 1);
    assert_eq!(site.objects("pool").len(), 2, "nothing applied");
    // Both names exist: the rename is refused.
    site.write("orders.yaml", &vol("orders", None, false));
    let r = apply(&site, &lio);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let db = site.objects("pool")["volume.db"].0.clone();
    let orders = site.objects("pool")["volume.orders"].0.clone();
    site.remove("orders.yaml");
    rename_db(&site, false);
    let p = plan(&site, &lio);
    assert_eq!(p.code, 1, "{}{}", p.stdout, p.stderr);
    assert!(
        p.stdout.contains(&format!("volume.orders: manifests/db.yaml:6:35: metadata.annotations[\"cinderblock.dev/renamed-from\"]: renamed from volume db, but both exist (db: {db} on local; orders: {orders} on local); a rename cannot take a name that is taken")),
        "{}",
        p.stdout
    );
    assert!(!p.stdout.contains("will be"), "{}", p.stdout);
    assert_eq!(fs::read_dir(&pool).unwrap().count(), 4, "untouched");
}

#[test]
fn a_kill_at_each_point_of_a_rename_ends_with_it_renamed_once() {
    use std::os::unix::process::ExitStatusExt;
    for at in ["1:intent", "rename-catalogued", "1:driver", "1:outcome"] {
        let (site, lio, backup) = site_with_db(false);
        let (uuid, path, _) = site.objects("pool").remove("volume.db").unwrap();
        let before = sha256(&path);
        rename_db(&site, false);
        let out = site.apply_crashing_at(at);
        assert_eq!(out.status.signal(), Some(9), "{at}: not killed");
        let p = plan(&site, &lio);
        assert_eq!(p.code, 2, "{at}: {}{}", p.stdout, p.stderr);
        assert!(
            p.stdout.contains("  # volume.orders will be renamed\n")
                && p.stdout
                    .contains("Plan: 0 to add, 1 to change, 0 to destroy."),
            "{at}: {}",
            p.stdout
        );
        let r = apply(&site, &lio);
        assert_eq!(r.code, 0, "{at}: {}{}", r.stdout, r.stderr);
        let p = plan(&site, &lio);
        assert_eq!(p.code, 0, "{at}: not converged: {}", p.stdout);
        let objects = site.objects("pool");
        assert_eq!(objects.len(), 2, "{at}");
        assert_eq!(objects["volume.orders"].0, uuid, "{at}");
        assert_eq!(sha256(&path), before, "{at}");
        assert_eq!(
            catalogued(&site),
            [("orders".to_owned(), uuid.clone())],
            "{at}"
        );
        assert_eq!(recorded(&site)[&uuid], "orders", "{at}");
        let list = site.run(&["backup", "list", "orders"]);
        assert!(list.stdout.contains(&backup), "{at}: {}", list.stdout);
    }
}
