//! Group backups through the real binary on a `file` back end: every member
//! of a consistency group backed up from one group snapshot, `backup list`
//! showing the group, `backup restore --group` into new volumes and over
//! the members (refused while one is in use), the misuse errors, and a run
//! killed at each step finished or cleaned up by the next.

use std::fs;
use std::os::unix::fs::FileExt;

use crate::backup::sha256;
use crate::plan::{H, Site, backend, volume};

const MEMBERS: [&str; 3] = ["a", "b", "c"];

/// One `file` back end `fa`, a policy `nightly` into `ROOT/repo`, group
/// `g` backed up under it with members a, b, c (4 MiB each) and a volume
/// `solo` backed up alone.
fn site() -> Site {
    let site = Site::new();
    fs::create_dir_all(site.path().join("fa")).unwrap();
    site.write(
        "fa.yaml",
        &backend("fa", &site.path().join("fa"), "  backendName: files\n"),
    );
    site.write(
        "site.yaml",
        &format!(
            "{H}kind: VolumeType\nmetadata:\n  name: t\nspec: {{}}\n---\n\
             {H}kind: BackupPolicy\nmetadata:\n  name: nightly\nspec:\n  schedule: \"0 2 * * *\"\n  target: {{path: {}/repo}}\n---\n\
             {H}kind: ConsistencyGroup\nmetadata:\n  name: g\nspec:\n  volumeTypes: [t]\n  backupPolicy: nightly\n",
            site.path().display()
        ),
    );
    for m in MEMBERS {
        site.write(
            &format!("{m}.yaml"),
            &volume(
                m,
                "4Mi",
                "  volumeType: t\n  backend: fa\n  consistencyGroup: g\n",
            ),
        );
    }
    site.write(
        "solo.yaml",
        &volume("solo", "4Mi", "  backend: fa\n  backupPolicy: nightly\n"),
    );
    site.apply();
    site
}

/// Writes 1 MiB of byte `b` at offset 1 MiB of member `m` (the rest stays
/// a hole).
fn fill(site: &Site, m: &str, b: u8) {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(site.data("fa", &format!("volume.{m}")))
        .unwrap();
    f.write_all_at(&vec![b; 1 << 20], 1 << 20).unwrap();
}

fn sums(site: &Site, names: &[String]) -> Vec<String> {
    names
        .iter()
        .map(|n| sha256(&site.data("fa", &format!("volume.{n}"))))
        .collect()
}

fn members() -> Vec<String> {
    MEMBERS.iter().map(|m| (*m).to_owned()).collect()
}

/// `backup list --json`.
fn list(site: &Site) -> serde_json::Value {
    let r = site.run(&["backup", "list", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    serde_json::from_str(&r.stdout).unwrap()
}

/// The group backup id a `backup run` printed.
fn group_id(stdout: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("group backup "))
        .unwrap_or_else(|| panic!("no group line in:\n{stdout}"));
    line["group backup ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// No group backup's member snapshot is left on the back end.
fn no_cut_left(site: &Site) {
    let left: Vec<String> = site
        .objects("fa")
        .into_keys()
        .filter(|k| k.contains("_group-backup-"))
        .collect();
    assert!(left.is_empty(), "left: {left:?}");
}

#[test]
#[allow(clippy::too_many_lines)] // one round trip, checked at each step
fn a_group_backup_restores_every_member_sha256_identical_into_new_volumes_and_over_them() {
    let site = site();
    for (m, b) in MEMBERS.iter().zip([1u8, 2, 3]) {
        fill(&site, m, b);
    }
    let at_backup = sums(&site, &members());

    let r = site.run(&["backup", "run", "--group", "g", "-f", "manifests"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let gid = group_id(&r.stdout);
    assert!(
        r.stdout.contains(&format!(
            "group backup {gid} of g: 3 member(s) (a, b, c) from one group snapshot, taken while no member was in use"
        )),
        "{}",
        r.stdout
    );
    for m in MEMBERS {
        assert!(
            r.stdout
                .contains(&format!("full of {m} (4.00 MiB logical)"))
                && r.stdout.contains("point in time by group snapshot"),
            "{}",
            r.stdout
        );
    }
    no_cut_left(&site);
    assert_eq!(site.plan_code(), 0, "a group backup leaves nothing to plan");

    // The list: the volume backed up alone has none yet; the group is one
    // line with its three members under it.
    let r = site.run(&["backup", "list"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with(&format!("group {gid}  ")))
        .unwrap_or_else(|| panic!("no group line in:\n{}", r.stdout));
    assert!(
        lines[at].ends_with("  g: 3 of 3 member(s)  ok"),
        "{}",
        lines[at]
    );
    for (i, m) in MEMBERS.iter().enumerate() {
        let row = lines[at + 1 + i];
        assert!(
            row.starts_with("  ") && row.contains(&format!("  {m}  ")) && row.contains(" full "),
            "{row}"
        );
    }
    let doc = list(&site);
    let g = &doc["groups"][0];
    assert_eq!(g["id"], gid.as_str());
    assert_eq!(
        (g["name"].as_str(), g["status"].as_str()),
        (Some("g"), Some("ok"))
    );
    assert_eq!(g["complete"], true);
    assert_eq!(g["members"], serde_json::json!(["a", "b", "c"]));
    let backups = g["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 3);
    for b in backups {
        assert_eq!(b["group"]["id"], gid.as_str());
    }
    assert_eq!(doc["backups"].as_array().unwrap().len(), 0);

    // A member named alone is backed up with its group: an incremental of
    // every member.
    for (m, b) in MEMBERS.iter().zip([7u8, 8, 9]) {
        fill(&site, m, b);
    }
    let r = site.run(&["backup", "run", "a", "-f", "manifests"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(
            "note: a is a member of ConsistencyGroup g, whose backupPolicy backs every member up together: backing up the group"
        ),
        "{}",
        r.stderr
    );
    let second = group_id(&r.stdout);
    assert_ne!(second, gid);
    assert_eq!(
        r.stdout.matches("incremental of ").count(),
        3,
        "{}",
        r.stdout
    );
    assert_eq!(list(&site)["groups"].as_array().unwrap().len(), 2);

    // Restore the first group into new volumes.
    let short = gid.replace('-', "")[..8].to_owned();
    let r = site.run(&["backup", "restore", "--group", &gid, "-f", "manifests"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!(
            "restored group backup {gid} of g (3 member(s)) into new volumes named <member>-{short}:"
        )),
        "{}",
        r.stdout
    );
    let restored: Vec<String> = MEMBERS.iter().map(|m| format!("{m}-{short}")).collect();
    assert_eq!(sums(&site, &restored), at_backup);
    // The same again: the new volumes exist.
    let r = site.run(&["backup", "restore", "--group", &short, "-f", "manifests"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!("volume a-{short} exists")),
        "{}",
        r.stderr
    );

    // Misuse: an unknown id, a volume's name, --to with --group.
    let r = site.run(&[
        "backup",
        "restore",
        "--group",
        "ffffffff",
        "-f",
        "manifests",
    ]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(
            "no group backup \"ffffffff\" in the catalogue (`backup list` shows each group backup's id on its `group` line)"
        ),
        "{}",
        r.stderr
    );
    let r = site.run(&["backup", "restore", "--group", "a", "-f", "manifests"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(
            "\"a\" is the volume a, not a group backup's id: `backup list` shows each group backup's id on its `group` line; `backup list a` shows its group backups"
        ),
        "{}",
        r.stderr
    );
    let r = site.run(&[
        "backup",
        "restore",
        "--group",
        &gid,
        "--to",
        "x",
        "-f",
        "manifests",
    ]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("the argument '--group <ID>' cannot be used with '--to <VOLUME>'"),
        "{}",
        r.stderr
    );

    // Over the members: refused while one is in use, naming it, and
    // nothing written; then done once it is free.
    let now = sums(&site, &members());
    let held = fs::File::open(site.data("fa", "volume.b")).unwrap();
    let r = site.run(&[
        "backup",
        "restore",
        "--group",
        &gid,
        "--overwrite",
        "-f",
        "manifests",
    ]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let comm = fs::read_to_string("/proc/self/comm").unwrap();
    let want = format!(
        "cannot restore group backup {gid} of g over its members: b is in use by pid {} ({})",
        std::process::id(),
        comm.trim()
    );
    assert!(
        r.stderr.contains(&want),
        "missing {want:?} in:\n{}",
        r.stderr
    );
    assert_eq!(sums(&site, &members()), now, "nothing was written");
    drop(held);
    let r = site.run(&[
        "backup",
        "restore",
        "--group",
        &gid,
        "--overwrite",
        "-f",
        "manifests",
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!(
            "restored group backup {gid} of g (3 member(s)) over its members:"
        )),
        "{}",
        r.stdout
    );
    assert_eq!(sums(&site, &members()), at_backup);
    assert_eq!(site.plan_code(), 2, "the restored copies are not declared");
}

#[test]
fn a_group_backup_killed_at_each_step_is_finished_or_cleaned_up_by_the_next_run() {
    for (point, note) in [
        (
            "group-backup-cut",
            "note: removed 3 member snapshot(s) an interrupted group backup of g left",
        ),
        (
            "group-backup-member",
            "was missing a member (an interrupted run): its members' backups were removed",
        ),
        (
            "group-backup-released",
            "was complete but not catalogued (an interrupted run): catalogued",
        ),
    ] {
        let site = site();
        for (m, b) in MEMBERS.iter().zip([1u8, 2, 3]) {
            fill(&site, m, b);
        }
        let out = assert_cmd::Command::cargo_bin("cinderblock")
            .unwrap()
            .current_dir(site.path())
            .env_remove("CINDERBLOCK_LOG")
            .env("CINDERBLOCK_CRASH_AT", point)
            .args([
                "--state",
                "state",
                "--host",
                "testhost",
                "backup",
                "run",
                "--group",
                "g",
                "-f",
                "manifests",
            ])
            .timeout(std::time::Duration::from_secs(120))
            .output()
            .unwrap();
        assert!(out.status.code().is_none(), "{point}: not killed: {out:?}");
        // Never a complete group recorded with a member missing; and
        // what the kill left is not the planner's.
        for g in list(&site)["groups"].as_array().unwrap() {
            assert_eq!(g["status"], "ok", "{point}: {g}");
            assert_eq!(g["backups"].as_array().unwrap().len(), 3, "{point}: {g}");
        }
        assert_eq!(site.plan_code(), 0, "{point}");

        let r = site.run(&["backup", "run", "--group", "g", "-f", "manifests"]);
        assert_eq!(r.code, 0, "{point}: {}\n{}", r.stdout, r.stderr);
        assert!(r.stderr.contains(note), "{point}: {}", r.stderr);
        no_cut_left(&site);
        let doc = list(&site);
        let groups = doc["groups"].as_array().unwrap();
        let want = if point == "group-backup-released" {
            2
        } else {
            1
        };
        assert_eq!(groups.len(), want, "{point}: {doc}");
        for g in groups {
            assert_eq!(
                (g["status"].as_str(), g["complete"].as_bool()),
                (Some("ok"), Some(true)),
                "{point}: {g}"
            );
        }
        // The repository holds exactly the members of complete groups.
        let mut manifests = 0;
        for d in fs::read_dir(site.path().join("repo/backups")).unwrap() {
            manifests += fs::read_dir(d.unwrap().path()).unwrap().count();
        }
        assert_eq!(manifests, 3 * want, "{point}");
        assert_eq!(site.plan_code(), 0, "{point}");
    }
}
