//! `discover` on `file` back ends: what apply made, written as manifests
//! that plan to "No changes"; foreign files as volumes to adopt.

use std::fs;

use crate::backup::sha256;
use crate::plan::{H, Site, backend, snapshot, volume};

/// A site with back end `local` (and `spare`, empty), type `gold` that fits
/// `local` only, volumes `db` (gold, Delete) and `web`, snapshot `db-snap`;
/// applied. Returns the site.
fn applied_site() -> Site {
    let site = Site::new();
    let local = site.path().join("pool");
    let spare = site.path().join("spare");
    fs::create_dir_all(&local).unwrap();
    fs::create_dir_all(&spare).unwrap();
    site.write(
        "backends.yaml",
        &format!(
            "{}\n---\n{}",
            backend("local", &local, ""),
            backend("spare", &spare, "")
        ),
    );
    site.write(
        "types.yaml",
        &format!(
            "{H}kind: VolumeType\nmetadata:\n  name: gold\nspec:\n  extraSpecs:\n    volume_backend_name: local\n"
        ),
    );
    site.write(
        "volumes.yaml",
        &format!(
            "{}  volumeType: gold\n  backend: local\n  deletionPolicy: Delete\n---\n{}  backend: local\n---\n{}",
            volume("db", "64Mi", ""),
            volume("web", "33554944", ""),
            snapshot("db-snap", "db", "")
        ),
    );
    site.apply();
    site
}

fn discover(site: &Site, extra: &[&str]) -> crate::support::Run {
    let mut args = vec![
        "discover",
        "-f",
        "manifests/backends.yaml",
        "-f",
        "manifests/types.yaml",
    ];
    args.extend_from_slice(extra);
    site.run(&args)
}

/// `validate` on the back ends plus `found/` passes.
fn validates_with_the_back_ends(site: &Site) {
    let v = site.run(&[
        "validate",
        "-f",
        "manifests/backends.yaml",
        "-f",
        "manifests/types.yaml",
        "-f",
        "found",
    ]);
    assert_eq!(v.code, 0, "{}{}", v.stdout, v.stderr);
}

#[test]
fn discover_writes_what_exists_and_plan_on_its_output_says_no_changes() {
    let site = applied_site();
    let r = discover(&site, &["--out", "found"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout, "wrote 1 file(s) to found\n");
    let found = site.path().join("found");
    let names: Vec<String> = fs::read_dir(&found)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["local.yaml"], "nothing on spare, nothing foreign");
    let text = fs::read_to_string(found.join("local.yaml")).unwrap();
    assert_eq!(
        text,
        "---
# yaml-language-server: $schema=schemas/manifest.json
apiVersion: cinderblock.dev/v1alpha1
kind: Volume
metadata:
  name: db
spec:
  size: 64Mi
  volumeType: gold
  backend: local
  deletionPolicy: Delete
---
# yaml-language-server: $schema=schemas/manifest.json
apiVersion: cinderblock.dev/v1alpha1
kind: Volume
metadata:
  name: web
spec:
  size: '33554944'
  volumeType: gold
  backend: local
  deletionPolicy: Retain
---
# yaml-language-server: $schema=schemas/manifest.json
apiVersion: cinderblock.dev/v1alpha1
kind: Snapshot
metadata:
  name: db-snap
spec:
  volume: db
  deletionPolicy: Retain
"
    );
    // The same again, and the same on stdout: deterministic.
    let again = discover(&site, &[]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.stdout, text);

    validates_with_the_back_ends(&site);
    let p = site.run(&[
        "plan",
        "-f",
        "manifests/backends.yaml",
        "-f",
        "manifests/types.yaml",
        "-f",
        "found",
        "--detailed-exitcode",
    ]);
    assert_eq!(p.code, 0, "{}{}", p.stdout, p.stderr);
    assert_eq!(p.stdout, "No changes. Storage matches the manifests.\n");
}

#[test]
fn discover_include_foreign_lists_files_to_adopt_and_touches_nothing() {
    let site = applied_site();
    let pool = site.path().join("pool");
    fs::write(pool.join("Legacy_Disk.img"), vec![7u8; 1 << 20]).unwrap();
    fs::write(pool.join("web"), vec![1u8; 2 << 20]).unwrap();
    fs::write(pool.join("notes.txt"), b"hello").unwrap();
    fs::write(pool.join("odd.raw"), vec![0u8; (1 << 20) + 1]).unwrap();
    fs::create_dir(pool.join("junk")).unwrap();
    let before = sha256(&pool.join("Legacy_Disk.img"));
    let r = discover(&site, &["--include-foreign", "--out", "found"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout, "wrote 2 file(s) to found\n");
    let text = fs::read_to_string(site.path().join("found/local.foreign.yaml")).unwrap();
    assert_eq!(
        text,
        "# Foreign entries of back end local, as found by `cinderblock discover --include-foreign`.
# Commit the volumes to take into management; apply only marks them (no data is touched).
# not adoptable: \"junk\": a directory (only a regular file can hold a volume)
# not adoptable: \"notes.txt\": 5 bytes, under the smallest volume (1Mi)
# not adoptable: \"odd.raw\": 1048577 bytes, not a multiple of 512 bytes (one sector)
---
# yaml-language-server: $schema=schemas/manifest.json
apiVersion: cinderblock.dev/v1alpha1
kind: Volume
metadata:
  name: legacy-disk-img
  annotations:
    cinderblock.dev/adopt: Legacy_Disk.img
spec:
  size: 1Mi
  backend: local
  deletionPolicy: Retain
---
# yaml-language-server: $schema=schemas/manifest.json
apiVersion: cinderblock.dev/v1alpha1
kind: Volume
metadata:
  name: web-2
  annotations:
    cinderblock.dev/adopt: web
spec:
  size: 2Mi
  backend: local
  deletionPolicy: Retain
"
    );
    validates_with_the_back_ends(&site);
    // Discovery marked nothing and changed nothing.
    assert_eq!(sha256(&pool.join("Legacy_Disk.img")), before);
    assert_eq!(site.objects("pool").len(), 3);
}

#[test]
fn discover_one_back_end_and_an_unknown_one() {
    let site = applied_site();
    let r = discover(&site, &["--backend", "spare"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "", "spare holds nothing");
    let r = discover(&site, &["--backend", "nope"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "error: --backend \"nope\": no Backend of that name in the manifests\n"
    );
}

#[test]
#[allow(clippy::too_many_lines)] // the expected document is most of it
fn discover_writes_exports_as_lio_has_them_and_says_where_chap_is_missing() {
    use crate::export::cb;
    let site = Site::new();
    let pool = site.path().join("pool");
    let lio = site.path().join("lio");
    fs::create_dir_all(&pool).unwrap();
    fs::create_dir_all(&lio).unwrap();
    site.write("backends.yaml", &backend("local", &pool, ""));
    site.write(
        "volumes.yaml",
        &format!(
            "{}  backend: local\n  export:\n    iscsi:\n      initiators: [iqn.1994-05.com.example:b, iqn.1994-05.com.example:a]\n      portals: ['192.0.2.1:3260']\n      targetName: iqn.2003-01.org.example:web\n---\n{}  backend: local\n  export:\n    iscsi:\n      chapSecretRef: {{env: DB_CHAP}}\n      initiators: [iqn.1994-05.com.example:a]\n",
            volume("web", "32Mi", ""),
            volume("db", "32Mi", "")
        ),
    );
    let chap = [("DB_CHAP", "dbuser:db-secret-0001")];
    let r = cb(
        &site,
        Some(&lio),
        &chap,
        &["apply", "-f", "manifests", "--auto-approve"],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = cb(
        &site,
        Some(&lio),
        &chap,
        &[
            "discover",
            "-f",
            "manifests/backends.yaml",
            "--out",
            "found",
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        r.stderr,
        "note: volume.db: its export requires CHAP; add spec.export.iscsi.chapSecretRef naming where the secret is\n"
    );
    let text = fs::read_to_string(site.path().join("found/local.yaml")).unwrap();
    assert_eq!(
        text,
        "---
# yaml-language-server: $schema=schemas/manifest.json
# Its export requires CHAP: add spec.export.iscsi.chapSecretRef (cinderblock
# never reads a secret back from LIO).
apiVersion: cinderblock.dev/v1alpha1
kind: Volume
metadata:
  name: db
spec:
  size: 32Mi
  backend: local
  export:
    iscsi:
      initiators:
      - iqn.1994-05.com.example:a
  deletionPolicy: Retain
---
# yaml-language-server: $schema=schemas/manifest.json
apiVersion: cinderblock.dev/v1alpha1
kind: Volume
metadata:
  name: web
spec:
  size: 32Mi
  backend: local
  export:
    iscsi:
      initiators:
      - iqn.1994-05.com.example:a
      - iqn.1994-05.com.example:b
      targetName: iqn.2003-01.org.example:web
      portals:
      - 192.0.2.1:3260
  deletionPolicy: Retain
"
    );
    assert!(!text.contains("db-secret"));
    // With web alone (db's CHAP cannot be written back), plan says nothing
    // changes for it.
    let web_only = text
        .split("---\n")
        .filter(|d| d.contains("name: web"))
        .fold(String::new(), |acc, d| acc + "---\n" + d);
    fs::write(site.path().join("found/local.yaml"), web_only).unwrap();
    fs::write(
        site.path().join("db.yaml"),
        fs::read_to_string(site.path().join("manifests/volumes.yaml"))
            .unwrap()
            .split("---\n")
            .find(|d| d.contains("name: db"))
            .unwrap(),
    )
    .unwrap();
    let p = cb(
        &site,
        Some(&lio),
        &chap,
        &[
            "plan",
            "-f",
            "manifests/backends.yaml",
            "-f",
            "found",
            "-f",
            "db.yaml",
            "--detailed-exitcode",
        ],
    );
    assert_eq!(p.code, 0, "{}{}", p.stdout, p.stderr);
    assert_eq!(p.stdout, "No changes. Storage matches the manifests.\n");
}
