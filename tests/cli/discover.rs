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
fn on_a_new_state_directory_discover_then_plan_says_no_changes_and_apply_records_quietly() {
    let site = applied_site();
    let fresh = |args: &[&str]| {
        let mut full = vec!["--state", "fresh", "--host", "testhost"];
        full.extend_from_slice(args);
        crate::support::run_in(site.path(), &full)
    };
    let r = fresh(&[
        "discover",
        "-f",
        "manifests/backends.yaml",
        "-f",
        "manifests/types.yaml",
        "--out",
        "found",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let text = fs::read_to_string(site.path().join("found/local.yaml")).unwrap();
    // What the back end does not keep is not guessed: with no record, db's
    // Delete is not known, and Retain (what no record means) is written.
    assert!(!text.contains("Delete"), "{text}");
    let args = [
        "plan",
        "-f",
        "manifests/backends.yaml",
        "-f",
        "manifests/types.yaml",
        "-f",
        "found",
        "--detailed-exitcode",
    ];
    let p = fresh(&args);
    assert_eq!(p.code, 0, "{}{}", p.stdout, p.stderr);
    assert_eq!(p.stdout, "No changes. Storage matches the manifests.\n");
    // A Delete policy is a change that shows: it decides what removing the
    // manifest does.
    let found = site.path().join("found/local.yaml");
    fs::write(
        &found,
        text.replacen("deletionPolicy: Retain", "deletionPolicy: Delete", 1),
    )
    .unwrap();
    let p = fresh(&args);
    assert_eq!(p.code, 2, "{}{}", p.stdout, p.stderr);
    assert!(
        p.stdout
            .contains("  # volume.db will be updated in-place\n")
            && p.stdout.contains("(none) -> Delete")
            && p.stdout
                .contains("Plan: 0 to add, 1 to change, 0 to destroy."),
        "{}",
        p.stdout
    );
    fs::write(&found, &text).unwrap();
    // apply with nothing to do records what it found, so a volume removed
    // by hand later is reported lost instead of made again, empty.
    let mut apply_args = args.to_vec();
    apply_args[0] = "apply";
    apply_args[7] = "--auto-approve";
    let a = fresh(&apply_args);
    assert_eq!(a.code, 0, "{}{}", a.stdout, a.stderr);
    assert_eq!(a.stdout, "No changes. Storage matches the manifests.\n");
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(site.path().join("fresh/state.json")).unwrap())
            .unwrap();
    let mut names: Vec<String> = state["objects"]
        .as_object()
        .unwrap()
        .values()
        .map(|o| {
            format!(
                "{} {} {}",
                o["kind"].as_str().unwrap(),
                o["name"].as_str().unwrap(),
                o["deletionPolicy"].as_str().unwrap()
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "snapshot db-snap Retain",
            "volume db Retain",
            "volume web Retain"
        ]
    );
    let (web, data, _) = site.objects("pool").remove("volume.web").unwrap();
    fs::remove_file(data).unwrap();
    fs::remove_file(site.path().join(format!("pool/.cinderblock/{web}.json"))).unwrap();
    let p = fresh(&args);
    assert_eq!(p.code, 1, "{}{}", p.stdout, p.stderr);
    assert!(
        p.stdout.contains(&format!(
            "volume.web: the volume ({web} on local) was deleted outside cinderblock"
        )),
        "{}",
        p.stdout
    );
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

/// A site with back end `local` holding foreign file `Legacy_Disk.img` (4 MiB
/// of data) and `other.img` (1 MiB); returns (site, pool dir).
fn foreign_site() -> (Site, std::path::PathBuf) {
    let site = Site::new();
    let pool = site.path().join("pool");
    fs::create_dir_all(&pool).unwrap();
    site.write("backends.yaml", &backend("local", &pool, ""));
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(pool.join("Legacy_Disk.img"), data).unwrap();
    fs::write(pool.join("other.img"), vec![9u8; 1 << 20]).unwrap();
    (site, pool)
}

fn adopting(name: &str, entry: &str, size: &str) -> String {
    format!(
        "{H}kind: Volume\nmetadata:\n  name: {name}\n  annotations:\n    cinderblock.dev/adopt: {entry}\nspec:\n  size: {size}\n  backend: local\n"
    )
}

#[test]
fn adopt_marks_a_foreign_file_keeping_its_name_and_data() {
    let (site, pool) = foreign_site();
    let file = pool.join("Legacy_Disk.img");
    let (before, other) = (sha256(&file), sha256(&pool.join("other.img")));
    site.write("legacy.yaml", &adopting("legacy", "Legacy_Disk.img", "4Mi"));
    let p = site.run(&["plan", "-f", "manifests", "--detailed-exitcode"]);
    assert_eq!(p.code, 2, "{}{}", p.stdout, p.stderr);
    assert!(
        p.stdout.contains("  # volume.legacy will be adopted\n")
            && p.stdout
                .contains("  + adopt           = \"Legacy_Disk.img\"\n")
            && p.stdout
                .contains("Plan: 1 to add, 0 to change, 0 to destroy."),
        "{}",
        p.stdout
    );
    assert!(!p.stdout.contains("will be created"), "{}", p.stdout);
    let r = site.apply();
    assert!(
        r.stdout
            .contains("Apply complete! Resources: 1 added, 0 changed, 0 destroyed."),
        "{}",
        r.stdout
    );
    // Marked only: the same name, the same bytes; its sidecar names it.
    assert_eq!(sha256(&file), before);
    let objects = site.objects("pool");
    let (uuid, _, meta) = &objects["volume.legacy"];
    assert_eq!(meta["file"], "Legacy_Disk.img");
    assert_eq!(meta["size"], 4 << 20);
    assert!(
        !pool.join(format!("volume-{uuid}")).exists(),
        "never renamed"
    );
    // The foreign file nobody annotated is left alone.
    assert_eq!(sha256(&pool.join("other.img")), other);
    assert_eq!(objects.len(), 1);
    let p = site.run(&["plan", "-f", "manifests", "--detailed-exitcode"]);
    assert_eq!(p.code, 0, "{}{}", p.stdout, p.stderr);
    assert_eq!(p.stdout, "No changes. Storage matches the manifests.\n");

    // An adopted volume is a volume: a snapshot of it, then an extend.
    site.write(
        "snap.yaml",
        &snapshot("legacy-snap", "legacy", "  deletionPolicy: Delete\n"),
    );
    site.write("legacy.yaml", &adopting("legacy", "Legacy_Disk.img", "8Mi"));
    let r = site.apply();
    assert!(
        r.stdout
            .contains("Apply complete! Resources: 1 added, 1 changed, 0 destroyed."),
        "{}",
        r.stdout
    );
    assert_eq!(fs::metadata(&file).unwrap().len(), 8 << 20);
    // The volume grew first (volumes are planned before their snapshots).
    let snap = fs::read(site.data("pool", "snapshot.legacy-snap")).unwrap();
    let head: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    assert_eq!(snap.len(), 8 << 20);
    assert!(
        snap[..4 << 20] == head[..],
        "the snapshot holds the adopted data"
    );
    // discover now writes it as ours, and plan on that says nothing changes.
    let r = site.run(&[
        "discover",
        "-f",
        "manifests/backends.yaml",
        "--out",
        "found",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let p = site.run(&[
        "plan",
        "-f",
        "manifests/backends.yaml",
        "-f",
        "found",
        "--detailed-exitcode",
    ]);
    assert_eq!(p.code, 0, "{}{}", p.stdout, p.stderr);
}

#[test]
fn adopt_grows_a_larger_declaration_as_its_own_step_and_refuses_a_smaller_one() {
    let (site, pool) = foreign_site();
    let file = pool.join("Legacy_Disk.img");
    let before = sha256(&file);
    site.write("legacy.yaml", &adopting("legacy", "Legacy_Disk.img", "2Mi"));
    let p = site.run(&["plan", "-f", "manifests"]);
    assert_eq!(p.code, 1, "{}{}", p.stdout, p.stderr);
    assert!(
        p.stdout.contains("volume.legacy: spec.size 2Mi is less than the 4Mi that \"Legacy_Disk.img\" on local holds; adopting never shrinks: declare at least 4Mi"),
        "{}",
        p.stdout
    );
    let r = site.run(&["apply", "-f", "manifests", "--auto-approve"]);
    assert_eq!(r.code, 1);
    assert!(site.objects("pool").is_empty(), "nothing applied");
    assert_eq!(sha256(&file), before);

    site.write("legacy.yaml", &adopting("legacy", "Legacy_Disk.img", "6Mi"));
    let p = site.run(&["plan", "-f", "manifests"]);
    assert_eq!(p.code, 0, "{}{}", p.stdout, p.stderr);
    let adopt = p.stdout.find("will be adopted").unwrap();
    let extend = p.stdout.find("will be updated in-place").unwrap();
    assert!(adopt < extend, "{}", p.stdout);
    assert!(
        p.stdout
            .contains("spec.size 6Mi is more than the 4Mi it holds when adopted"),
        "{}",
        p.stdout
    );
    site.apply();
    assert_eq!(fs::metadata(&file).unwrap().len(), 6 << 20);
    let data = fs::read(&file).unwrap();
    let head: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    assert_eq!(&data[..4 << 20], head.as_slice(), "the data is kept");
    assert!(data[4 << 20..].iter().all(|b| *b == 0));
}

#[test]
fn adopt_refuses_hostile_and_missing_names_with_file_and_line() {
    let (site, pool) = foreign_site();
    site.write(
        "bad.yaml",
        &[
            adopting("up", "../../etc/passwd", "4Mi"),
            adopting("opt", "-rf", "4Mi"),
            adopting("meta", ".cinderblock", "4Mi"),
            adopting("space", "'a b'", "4Mi"),
        ]
        .join("---\n"),
    );
    let v = site.run(&["validate", "-f", "manifests"]);
    assert_eq!(v.code, 1, "{}{}", v.stdout, v.stderr);
    for line in [
        "manifests/bad.yaml:6:28: Volume/up: metadata.annotations[\"cinderblock.dev/adopt\"]: \"../../etc/passwd\" cannot be adopted: a name with '/' reaches outside the back end",
        "manifests/bad.yaml:16:28: Volume/opt: metadata.annotations[\"cinderblock.dev/adopt\"]: \"-rf\" cannot be adopted: a name starting with '-' reads as an option",
        "manifests/bad.yaml:26:28: Volume/meta: metadata.annotations[\"cinderblock.dev/adopt\"]: \".cinderblock\" cannot be adopted: names starting with '.' are hidden or reach outside the back end",
        "manifests/bad.yaml:36:28: Volume/space: metadata.annotations[\"cinderblock.dev/adopt\"]: \"a b\" cannot be adopted: the name holds whitespace or a control character",
    ] {
        assert!(v.stderr.contains(line), "{line}\n{}", v.stderr);
    }
    site.remove("bad.yaml");
    site.write("missing.yaml", &adopting("gone", "nope.img", "4Mi"));
    let p = site.run(&["plan", "-f", "manifests"]);
    assert_eq!(p.code, 1);
    assert!(
        p.stdout.contains("volume.gone: cinderblock.dev/adopt: back end local has no foreign LV or file named \"nope.img\""),
        "{}",
        p.stdout
    );
    assert!(site.objects("pool").is_empty());
    assert!(!pool.join("nope.img").exists(), "never created");
}

#[test]
fn a_kill_at_each_step_of_an_adopt_and_extend_ends_with_it_adopted_once() {
    use std::os::unix::process::ExitStatusExt;
    for at in [
        "1:intent",
        "1:driver",
        "1:outcome",
        "2:intent",
        "2:driver",
        "2:outcome",
    ] {
        let (site, pool) = foreign_site();
        let file = pool.join("Legacy_Disk.img");
        let head: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        site.write("legacy.yaml", &adopting("legacy", "Legacy_Disk.img", "6Mi"));
        let out = site.apply_crashing_at(at);
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{at}: the process was not killed"
        );
        let r = site.apply();
        assert!(r.stdout.contains("Apply complete!"), "{at}: {}", r.stdout);
        assert_eq!(
            site.plan_code(),
            0,
            "{at}: not converged:\n{}",
            site.run(&["plan", "-f", "manifests"]).stdout
        );
        // Adopted once (objects() panics on two sidecars of one name), under
        // its own name, its data kept and grown.
        let objects = site.objects("pool");
        assert_eq!(objects.len(), 1, "{at}");
        assert_eq!(
            objects["volume.legacy"].2["file"], "Legacy_Disk.img",
            "{at}"
        );
        let data = fs::read(&file).unwrap();
        assert_eq!(data.len(), 6 << 20, "{at}");
        assert!(data[..4 << 20] == head[..], "{at}: data changed");
        let names: Vec<String> = fs::read_dir(&pool)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with('.'))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(names, ["Legacy_Disk.img", "other.img"], "{at}");
    }
}

#[test]
fn a_volume_released_by_retain_is_taken_back_with_its_identity_and_data() {
    let site = Site::new();
    let pool = site.path().join("pool");
    fs::create_dir_all(&pool).unwrap();
    site.write("backends.yaml", &backend("local", &pool, ""));
    site.write("db.yaml", &volume("db", "4Mi", "  backend: local\n"));
    site.apply();
    let (uuid, data, _) = site.objects("pool").remove("volume.db").unwrap();
    fs::write(&data, vec![5u8; 4 << 20]).unwrap();
    let before = sha256(&data);
    // Removed from the manifests with Retain: released, data kept.
    site.remove("db.yaml");
    site.write("keep.yaml", &volume("keep", "1Mi", "  backend: local\n"));
    site.apply();
    assert_eq!(
        site.objects("pool")["volume.db"].2["owner"]["managedBy"],
        "cinderblock-released"
    );
    assert_eq!(sha256(&data), before);
    // Declared again by name alone: the plan says how to take it back.
    site.write("db.yaml", &volume("db", "4Mi", "  backend: local\n"));
    let p = site.run(&["plan", "-f", "manifests"]);
    assert_eq!(p.code, 0, "{}{}", p.stdout, p.stderr);
    let file = format!("volume-{uuid}");
    assert!(
        p.stdout.contains(&format!(
            "volume.db: back end local holds a volume db it released earlier ({uuid}); to take it back with its data instead of creating a new, empty one, annotate the volume cinderblock.dev/adopt: {file} and pin it with spec.backend: local"
        )),
        "{}",
        p.stdout
    );
    // By its old name: taken back, the same identity and bytes.
    site.write("db.yaml", &adopting("db", "db", "4Mi"));
    let p = site.run(&["plan", "-f", "manifests"]);
    assert!(
        p.stdout
            .contains("  # volume.db will be taken back (adopted again)\n")
            && p.stdout
                .contains(&format!("  + id              = {uuid}\n")),
        "{}",
        p.stdout
    );
    site.apply();
    let (again, path, meta) = site.objects("pool").remove("volume.db").unwrap();
    assert_eq!((again, path), (uuid, data.clone()));
    assert_eq!(meta["owner"]["managedBy"], "cinderblock");
    assert_eq!(sha256(&data), before);
    assert_eq!(site.plan_code(), 0);
}

/// Applies `discover --diff`'s patches to the manifests as an admin would:
/// `$patch: delete` removes the document, a patch of a declared object is
/// merged into its document (RFC 7386: `null` removes a field), a document
/// of an undeclared object is added (to `added.yaml`).
fn apply_patches(site: &Site, patches: &str) {
    use serde_yaml::Value;
    fn merge(into: &mut Value, patch: &Value) {
        match (into, patch) {
            (Value::Mapping(m), Value::Mapping(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        m.remove(k);
                    } else if let Some(old) = m.get_mut(k) {
                        merge(old, v);
                    } else {
                        m.insert(k.clone(), v.clone());
                    }
                }
            }
            (slot, v) => *slot = v.clone(),
        }
    }
    let dir = site.path().join("manifests");
    let mut files: Vec<(std::path::PathBuf, Vec<Value>)> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let text = fs::read_to_string(&p).unwrap();
            let docs = serde_yaml::Deserializer::from_str(&text)
                .map(|d| serde::Deserialize::deserialize(d).unwrap())
                .collect();
            (p, docs)
        })
        .collect();
    let mut added = Vec::new();
    for d in serde_yaml::Deserializer::from_str(patches) {
        let mut patch: Value = serde::Deserialize::deserialize(d).unwrap();
        let key = |v: &Value| (v["kind"].clone(), v["metadata"]["name"].clone());
        let found = files
            .iter_mut()
            .flat_map(|(_, docs)| docs.iter_mut())
            .find(|doc| key(doc) == key(&patch));
        match found {
            Some(doc) if patch.get("$patch").is_some() => *doc = Value::Null,
            Some(doc) => merge(doc, &patch),
            None => {
                assert!(patch.get("$patch").is_none(), "{patch:?}");
                patch.as_mapping_mut().unwrap().remove("$patch");
                added.push(patch);
            }
        }
    }
    files.push((dir.join("added.yaml"), added));
    for (path, docs) in files {
        let text: Vec<String> = docs
            .iter()
            .filter(|d| !d.is_null())
            .map(|d| serde_yaml::to_string(d).unwrap())
            .collect();
        fs::write(path, text.join("---\n")).unwrap();
    }
}

#[test]
fn discover_diff_writes_drift_as_patches_that_make_the_manifests_true() {
    let site = applied_site();
    // Drift: db grown by hand, web deleted by hand, extra left undeclared.
    site.write("extra.yaml", &volume("extra", "2Mi", "  backend: local\n"));
    site.apply();
    site.remove("extra.yaml");
    let objects = site.objects("pool");
    fs::OpenOptions::new()
        .write(true)
        .open(&objects["volume.db"].1)
        .unwrap()
        .set_len(80 << 20)
        .unwrap();
    let web = &objects["volume.web"];
    fs::remove_file(&web.1).unwrap();
    fs::remove_file(
        site.path()
            .join(format!("pool/.cinderblock/{}.json", web.0)),
    )
    .unwrap();
    let r = site.run(&["discover", "--diff", "-f", "manifests"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let want = format!(
        "---
# manifests/volumes.yaml:1:1: Volume/db
#   spec.size: 64Mi -> 80Mi (grown outside cinderblock)
apiVersion: cinderblock.dev/v1alpha1
kind: Volume
metadata:
  name: db
spec:
  size: 80Mi
---
# manifests/volumes.yaml:10:1: Volume/web
#   deleted outside cinderblock ({} on local, 33554944 when last applied): remove its document, or restore it from a backup
$patch: delete
apiVersion: cinderblock.dev/v1alpha1
kind: Volume
metadata:
  name: web
---
# volume.extra is on back end local but no manifest declares it: add this document to keep it as it is
# yaml-language-server: $schema=schemas/manifest.json
apiVersion: cinderblock.dev/v1alpha1
kind: Volume
metadata:
  name: extra
spec:
  size: 2Mi
  volumeType: gold
  backend: local
  deletionPolicy: Retain
",
        web.0
    );
    assert_eq!(r.stdout, want);
    // Written to a directory, it is the same.
    let r = site.run(&["discover", "--diff", "-f", "manifests", "--out", "drift"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        fs::read_to_string(site.path().join("drift/drift.yaml")).unwrap(),
        want
    );

    apply_patches(&site, &want);
    let v = site.run(&["validate", "-f", "manifests"]);
    assert_eq!(v.code, 0, "{}{}", v.stdout, v.stderr);
    let p = site.run(&["plan", "-f", "manifests"]);
    assert_eq!(p.code, 0, "{}{}", p.stdout, p.stderr);
    for never in ["will be created", "will be destroyed"] {
        assert!(!p.stdout.contains(never), "{never}\n{}", p.stdout);
    }
    site.apply();
    assert_eq!(site.plan_code(), 0);
    let r = site.run(&["discover", "--diff", "-f", "manifests"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{}", r.stderr);
    assert_eq!(
        r.stderr,
        "No drift: the back ends hold what the manifests say (plan shows what they do not have yet).\n"
    );
    assert_eq!(
        fs::metadata(site.data("pool", "volume.db")).unwrap().len(),
        80 << 20
    );
}

#[test]
fn discover_diff_shows_exports_changed_outside_the_manifests() {
    use crate::export::cb;
    let site = Site::new();
    let pool = site.path().join("pool");
    let lio = site.path().join("lio");
    fs::create_dir_all(&pool).unwrap();
    fs::create_dir_all(&lio).unwrap();
    site.write("backends.yaml", &backend("local", &pool, ""));
    let exported = |initiators: &str| {
        format!(
            "{}  backend: local\n  export:\n    iscsi:\n      chapSecretRef: {{env: WEB_CHAP}}\n      initiators: [{initiators}]\n",
            volume("web", "32Mi", "")
        )
    };
    site.write(
        "web.yaml",
        &exported("iqn.1994-05.com.example:a, iqn.1994-05.com.example:b"),
    );
    let chap = [("WEB_CHAP", "webuser:web-secret-0001")];
    let run = |args: &[&str]| cb(&site, Some(&lio), &chap, args);
    let r = run(&["apply", "-f", "manifests", "--auto-approve"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // The manifests lost an initiator LIO still lets in.
    site.write("web.yaml", &exported("iqn.1994-05.com.example:a"));
    let r = run(&["discover", "--diff", "-f", "manifests"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        r.stdout,
        "---
# manifests/web.yaml:1:1: Volume/web
#   spec.export: initiators changed outside cinderblock (as LIO has it)
apiVersion: cinderblock.dev/v1alpha1
kind: Volume
metadata:
  name: web
spec:
  export:
    iscsi:
      initiators:
      - iqn.1994-05.com.example:a
      - iqn.1994-05.com.example:b
      chapSecretRef:
        env: WEB_CHAP
"
    );
    assert!(!r.stdout.contains("web-secret"));
    apply_patches(&site, &r.stdout);
    let p = run(&["plan", "-f", "manifests", "--detailed-exitcode"]);
    assert_eq!(p.code, 0, "{}{}", p.stdout, p.stderr);
    assert_eq!(p.stdout, "No changes. Storage matches the manifests.\n");
}

fn adopting_snapshot(name: &str, entry: &str, volume: &str) -> String {
    format!(
        "{H}kind: Snapshot\nmetadata:\n  name: {name}\n  annotations:\n    cinderblock.dev/adopt: {entry}\nspec:\n  volume: {volume}\n"
    )
}

#[test]
fn a_snapshot_of_an_adopted_volume_is_adopted_with_it() {
    let (site, pool) = foreign_site();
    let copy = pool.join("legacy-snap.img");
    fs::copy(pool.join("Legacy_Disk.img"), &copy).unwrap();
    let before = sha256(&copy);
    site.write("legacy.yaml", &adopting("legacy", "Legacy_Disk.img", "4Mi"));
    site.write(
        "snap.yaml",
        &adopting_snapshot("legacy-snap", "legacy-snap.img", "legacy"),
    );
    let p = site.run(&["plan", "-f", "manifests"]);
    assert_eq!(p.code, 0, "{}{}", p.stdout, p.stderr);
    let vol = p.stdout.find("# volume.legacy will be adopted").unwrap();
    let snap = p
        .stdout
        .find("# snapshot.legacy-snap will be adopted")
        .unwrap();
    assert!(vol < snap, "{}", p.stdout);
    assert!(
        p.stdout
            .contains("a snapshot of volume.legacy, its data and name kept")
            && p.stdout
                .contains("Plan: 2 to add, 0 to change, 0 to destroy."),
        "{}",
        p.stdout
    );
    site.apply();
    let objects = site.objects("pool");
    let (vol_uuid, _, _) = &objects["volume.legacy"];
    let (_, _, meta) = &objects["snapshot.legacy-snap"];
    assert_eq!(meta["parent"], vol_uuid.as_str());
    assert_eq!(meta["file"], "legacy-snap.img");
    assert_eq!(sha256(&copy), before);
    assert_eq!(site.plan_code(), 0);
    // discover writes it as a snapshot of its volume.
    let r = site.run(&["discover", "-f", "manifests/backends.yaml"]);
    assert!(
        r.stdout
            .contains("kind: Snapshot\nmetadata:\n  name: legacy-snap\nspec:\n  volume: legacy\n"),
        "{}",
        r.stdout
    );

    // A snapshot whose volume is not ours is refused.
    let (site, pool) = foreign_site();
    fs::copy(pool.join("other.img"), pool.join("s.img")).unwrap();
    site.write("v.yaml", &volume("v", "1Mi", "  backend: local\n"));
    site.write("snap.yaml", &adopting_snapshot("s", "s.img", "v"));
    let p = site.run(&["plan", "-f", "manifests"]);
    assert_eq!(p.code, 1, "{}{}", p.stdout, p.stderr);
    assert!(
        p.stdout.contains("snapshot.s: cinderblock.dev/adopt: its volume.v is not ours and not adopted by this plan; a snapshot is adopted with or after its volume"),
        "{}",
        p.stdout
    );
}

#[test]
fn discover_writes_the_consistency_groups_its_members_carry() {
    let site = applied_site();
    site.write(
        "group.yaml",
        &format!(
            "{H}kind: ConsistencyGroup\nmetadata:\n  name: orders\nspec:\n  volumeTypes: [gold]\n---\n{}  volumeType: gold\n  consistencyGroup: orders\n---\n{}  volumeType: gold\n  consistencyGroup: orders\n",
            volume("orders-data", "8Mi", ""),
            volume("orders-wal", "4Mi", "")
        ),
    );
    site.apply();
    let r = discover(&site, &["--out", "found"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let text = fs::read_to_string(site.path().join("found/local.yaml")).unwrap();
    assert!(
        text.starts_with(
            "---
# yaml-language-server: $schema=schemas/manifest.json
# Found as the group its member volumes carry; a back end does not keep a
# group's backupPolicy: add it if the group was backed up together.
apiVersion: cinderblock.dev/v1alpha1
kind: ConsistencyGroup
metadata:
  name: orders
spec:
  volumeTypes:
  - gold
  backend: local
---
"
        ),
        "{text}"
    );
    for m in ["orders-data", "orders-wal"] {
        let at = text
            .find(&format!("  name: {m}\n"))
            .unwrap_or_else(|| panic!("no {m} in {text}"));
        let doc = &text[at..text[at..].find("---").map_or(text.len(), |e| at + e)];
        assert!(
            doc.contains("  volumeType: gold\n") && doc.contains("  consistencyGroup: orders\n"),
            "{doc}"
        );
    }
    assert!(
        !text[text.find("name: db\n").unwrap()..]
            .split("---")
            .next()
            .unwrap()
            .contains("consistencyGroup"),
        "{text}"
    );
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

    // Declared already: the group is written as the manifests declare it.
    let r = site.run(&[
        "discover",
        "-f",
        "manifests/backends.yaml",
        "-f",
        "manifests/types.yaml",
        "-f",
        "manifests/group.yaml",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(
            "kind: ConsistencyGroup\nmetadata:\n  name: orders\nspec:\n  volumeTypes:\n  - gold\n---"
        ),
        "{}",
        r.stdout
    );
}
