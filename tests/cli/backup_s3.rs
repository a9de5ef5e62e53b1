//! Backups to a real S3-compatible server: moto's server mode
//! (`tests/lib/s3_server.py`, installed from `PyPI` by `tests/run.sh`), on
//! 127.0.0.1 and a free port, with `SigV4` checked and IAM user policies
//! enforced: `admin` may do anything, `appender` may not delete.
//!
//! The same round trips as on a directory: full, incremental, restore
//! (sha256 identical, sparse), verify, export/import, `import --policy`
//! (the scan of an S3 target), prune; and an append-only target whose
//! credentials cannot delete.

// The server is a child process the test drives.
#![allow(clippy::disallowed_methods)]

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::process::{Child, Command, Stdio};

use cinderblock::backup::store::{S3Config, S3Store, Store};

use crate::backup::{MIB, Site, allocated, backup_id, change, fill, noise, ok, sha256};
use crate::support::root;

/// A running moto server; stopped (stdin closed, then killed) on drop.
pub(crate) struct S3Server {
    child: Child,
    pub endpoint: String,
    pub bucket: String,
    pub admin: String,
    pub appender: String,
}

impl S3Server {
    pub(crate) fn start() -> Self {
        let mut child = Command::new("python3")
            .arg(root().join("tests/lib/s3_server.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs tests/lib/s3_server.py (tests/run.sh installs moto)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the S3 server did not start ({e}): {line:?}"));
        let s = |k: &str| v[k].as_str().unwrap().to_owned();
        Self {
            endpoint: s("endpoint"),
            bucket: s("bucket"),
            admin: s("admin"),
            appender: s("appender"),
            child,
        }
    }

    /// Every object under `prefix/`, as admin sees them.
    pub(crate) fn objects(&self, prefix: &str) -> Vec<(String, u64)> {
        self.store(prefix)
            .list("")
            .unwrap()
            .into_iter()
            .map(|l| (l.key, l.size))
            .collect()
    }

    pub(crate) fn store(&self, prefix: &str) -> S3Store {
        let (access_key, secret_key) = self.admin.split_once(':').unwrap();
        S3Store::new(&S3Config {
            endpoint: Some(self.endpoint.clone()),
            bucket: self.bucket.clone(),
            prefix: prefix.to_owned(),
            region: "us-east-1".into(),
            access_key: access_key.into(),
            secret_key: secret_key.into(),
            path_style: true,
        })
        .unwrap()
    }

    /// A policy `target:` for this server, reading the credentials from
    /// `file`.
    pub(crate) fn target(&self, prefix: &str, file: &std::path::Path, extra: &str) -> String {
        format!(
            "{{s3: {{endpoint: \"{}\", bucket: {}, prefix: {prefix}, credentialsRef: {{file: {}}}}}{extra}}}",
            self.endpoint,
            self.bucket,
            file.display()
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn credentials(site: &Site, name: &str, key: &str) -> std::path::PathBuf {
    let path = site.path().join(name);
    fs::write(&path, format!("{key}\n")).unwrap();
    path
}

#[test]
#[ignore = "needs moto (tests/run.sh installs it)"]
#[allow(clippy::too_many_lines)] // one repository's life, step by step
fn s3_round_trips_full_incremental_restore_verify_export_import_prune() {
    let s3 = S3Server::start();
    let probe = Site::new("");
    let creds = credentials(&probe, "admin.key", &s3.admin);
    let site = Site::with_target(
        "  retention: {keepLast: 2}",
        &s3.target("site-a", &creds, ""),
    );
    let vol = site.create_volume("data", 64 * MIB);
    fill(&vol);
    let sum_full = sha256(&vol);
    let alloc_full = allocated(&vol);

    let run = site.cbf(&["backup", "run", "data", "--full"]);
    let full = backup_id(&run);
    assert!(
        run.stdout.contains(&format!(
            "into s3://{}/site-a at {}",
            s3.bucket, s3.endpoint
        )),
        "{}",
        run.stdout
    );
    let keys: Vec<String> = s3.objects("site-a").into_iter().map(|o| o.0).collect();
    assert!(keys.contains(&"config".to_owned()), "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("data/")), "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("index/")), "{keys:?}");
    assert!(
        keys.iter()
            .any(|k| k.starts_with("backups/") && k.ends_with(&format!("{full}.json"))),
        "{keys:?}"
    );
    assert!(
        !keys.iter().any(|k| k.starts_with("locks/")),
        "the session ended: {keys:?}"
    );

    change(&vol);
    let sum_inc = sha256(&vol);
    let run = site.cbf(&["backup", "run", "data", "--incremental"]);
    let inc = backup_id(&run);
    assert!(run.stdout.contains("incremental of data"), "{}", run.stdout);

    for (id, name, sum) in [
        (&full, "data-full", &sum_full),
        (&inc, "data-inc", &sum_inc),
    ] {
        let run = site.cbf(&["backup", "restore", id, "--to", name]);
        ok(&run);
        let restored = site.volume_path(name).unwrap();
        assert_eq!(&sha256(&restored), sum, "{name}");
        assert!(
            allocated(&restored) <= alloc_full + 2 * MIB,
            "{name} stays sparse"
        );
    }
    let run = site.cb("state", &["backup", "verify", "--all"]);
    ok(&run);
    assert_eq!(run.stdout.matches("ok ").count(), 2, "{}", run.stdout);

    // Export, lose the state directory, import the record elsewhere.
    let run = site.cb("state", &["backup", "export", &inc]);
    ok(&run);
    assert!(
        !run.stdout.contains(s3.admin.split_once(':').unwrap().1),
        "no secret in a record"
    );
    fs::write(site.path().join("record.json"), &run.stdout).unwrap();
    let run = site.cb("other", &["backup", "import", "record.json"]);
    ok(&run);
    let run = site.cb(
        "other",
        &[
            "backup",
            "restore",
            &inc,
            "--to",
            "again",
            "-f",
            "site.yaml",
        ],
    );
    ok(&run);
    assert_eq!(sha256(&site.volume_path("again").unwrap()), sum_inc);

    // The catalogue rebuilt from the bucket alone.
    fs::remove_dir_all(site.path().join("state")).unwrap();
    let run = site.cbf(&["backup", "import", "--policy", "nightly"]);
    ok(&run);
    assert!(run.stdout.contains("2 backup(s)"), "{}", run.stdout);

    // A third backup; prune keeps the last two and frees the first's chunks.
    let f = File::options().write(true).open(&vol).unwrap();
    f.write_all_at(&noise(77, 4 * MIB), 8 * MIB).unwrap();
    drop(f);
    let third = backup_id(&site.cbf(&["backup", "run", "data"]));
    let data_bytes = || -> u64 {
        s3.objects("site-a")
            .iter()
            .filter(|o| o.0.starts_with("data/"))
            .map(|o| o.1)
            .sum()
    };
    let before = data_bytes();
    let run = site.cbf(&["backup", "prune"]);
    ok(&run);
    assert!(run.stdout.contains("forgot 1 backup(s)"), "{}", run.stdout);
    assert!(data_bytes() < before, "{before} -> {}", data_bytes());
    let run = site.cb("state", &["backup", "verify", "--all"]);
    ok(&run);
    assert_eq!(run.stdout.matches("ok ").count(), 2, "{}", run.stdout);
    ok(&site.cbf(&["backup", "restore", &third, "--to", "last"]));
    assert_eq!(
        sha256(&site.volume_path("last").unwrap()),
        sha256(&vol),
        "the newest restores"
    );
}

#[test]
#[ignore = "needs moto (tests/run.sh installs it)"]
fn s3_wrong_credentials_are_one_clear_error() {
    let s3 = S3Server::start();
    let probe = Site::new("");
    let (key, _) = s3.admin.split_once(':').unwrap();
    let creds = credentials(&probe, "bad.key", &format!("{key}:not-the-secret"));
    let site = Site::with_target("", &s3.target("x", &creds, ""));
    let vol = site.create_volume("data", 4 * MIB);
    fill_small(&vol);
    let run = site.cbf(&["backup", "run", "data"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr.contains("SignatureDoesNotMatch"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("not-the-secret"), "{}", run.stderr);
    assert!(s3.objects("x").is_empty(), "nothing written");
}

fn fill_small(path: &std::path::Path) {
    let f = File::options().write(true).open(path).unwrap();
    f.write_all_at(&noise(3, MIB), 0).unwrap();
}

#[test]
#[ignore = "needs moto (tests/run.sh installs it)"]
fn s3_append_only_backs_up_and_forgets_without_deleting_then_the_sweep_frees() {
    let s3 = S3Server::start();
    let probe = Site::new("");
    let appender = credentials(&probe, "appender.key", &s3.appender);
    let admin = credentials(&probe, "admin.key", &s3.admin);
    let site = Site::with_target(
        "  retention: {keepLast: 1}",
        &s3.target("ao", &appender, ", appendOnly: true"),
    );
    let vol = site.create_volume("data", 16 * MIB);
    let mut ids = Vec::new();
    for round in 0..3u64 {
        let f = File::options().write(true).open(&vol).unwrap();
        f.write_all_at(&noise(10 + 2 * round, 2 * MIB), 0).unwrap();
        drop(f);
        ids.push(backup_id(&site.cbf(&["backup", "run", "data"])));
    }
    // The appender could not remove its session files: they say "ended".
    let before = s3.objects("ao");
    assert!(
        before
            .iter()
            .any(|o| o.0.starts_with("locks/") && o.0.ends_with(".end.json")),
        "{before:?}"
    );

    // Retention forgets in the catalogue only; not one object goes.
    let run = site.cbf(&["backup", "prune"]);
    ok(&run);
    assert!(
        run.stdout
            .contains("forgot 2 backup(s) in the catalogue only"),
        "{}",
        run.stdout
    );
    assert_eq!(s3.objects("ao"), before, "append-only: nothing deleted");
    let list = site.cb("state", &["backup", "list"]);
    assert!(!list.stdout.contains(&ids[0]) && list.stdout.contains(&ids[2]));

    // The appender's key really cannot delete: a sweep with it fails.
    let run = site.cbf(&["backup", "prune", "--sweep"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stderr.contains("AccessDenied"), "{}", run.stderr);

    // The sweep with the admin key removes the forgotten backups and their
    // chunks.
    let admin_arg = admin.display().to_string();
    let run = site.cbf(&[
        "backup",
        "prune",
        "--sweep",
        "--sweep-credentials-file",
        &admin_arg,
    ]);
    ok(&run);
    assert!(run.stdout.contains("forgot 2 backup(s)"), "{}", run.stdout);
    let after = s3.objects("ao");
    let bytes = |v: &[(String, u64)]| -> u64 {
        v.iter()
            .filter(|o| o.0.starts_with("data/"))
            .map(|o| o.1)
            .sum()
    };
    assert!(
        bytes(&after) + 3 * MIB < bytes(&before),
        "{} -> {}",
        bytes(&before),
        bytes(&after)
    );
    assert!(
        !after.iter().any(|o| o.0.starts_with("locks/")),
        "ended sessions swept: {after:?}"
    );
    let manifests = after.iter().filter(|o| o.0.starts_with("backups/")).count();
    assert_eq!(manifests, 1);
    ok(&site.cbf(&["backup", "restore", &ids[2], "--to", "back"]));
    assert_eq!(sha256(&site.volume_path("back").unwrap()), sha256(&vol));
}

#[test]
#[ignore = "needs moto (tests/run.sh installs it)"]
fn s3_encrypted_objects_hold_no_plaintext_and_restore() {
    let s3 = S3Server::start();
    let probe = Site::new("");
    let creds = credentials(&probe, "admin.key", &s3.admin);
    let key = credentials(&probe, "backup.key", "an encryption key for this test");
    let site = Site::with_target(
        "",
        &format!(
            "{}\n  encryption: {{keyRef: {{file: {}}}}}",
            s3.target("enc", &creds, ""),
            key.display()
        ),
    );
    let vol = site.create_volume("data", 16 * MIB);
    let marker = b"CINDERBLOCK-S3-PLAINTEXT-MARKER-51c2";
    let text: Vec<u8> = marker.iter().copied().cycle().take(MIB as usize).collect();
    let f = File::options().write(true).open(&vol).unwrap();
    f.write_all_at(&text, 4 * MIB).unwrap();
    f.write_all_at(&noise(4, MIB), 10 * MIB).unwrap();
    drop(f);
    let id = backup_id(&site.cbf(&["backup", "run", "data"]));
    let store = s3.store("enc");
    let objects = s3.objects("enc");
    assert!(
        objects.iter().any(|o| o.0.starts_with("keys/")),
        "{objects:?}"
    );
    for (key, _) in &objects {
        let bytes = store.get(key).unwrap().unwrap();
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker),
            "plaintext in {key}"
        );
    }
    ok(&site.cbf(&["backup", "restore", &id, "--to", "back"]));
    assert_eq!(sha256(&site.volume_path("back").unwrap()), sha256(&vol));
    ok(&site.cb("state", &["backup", "verify", "--all"]));
}

/// Starts `backup run data` and SIGKILLs it once `ready` says so (polled
/// on the bucket), or fails the test if it finishes first.
fn kill_backup_when(site: &Site, s3: &S3Server, what: &str, ready: &dyn Fn(&[String]) -> bool) {
    let exe = assert_cmd::cargo::cargo_bin("cinderblock");
    let mut child = Command::new(exe)
        .current_dir(site.path())
        .args([
            "--state",
            "state",
            "backup",
            "run",
            "data",
            "-f",
            "site.yaml",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let keys: Vec<String> = s3.objects("kill").into_iter().map(|o| o.0).collect();
        if ready(&keys) {
            child.kill().unwrap();
            child.wait().unwrap();
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup finished before the kill point ({what})"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: never reached"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs moto (tests/run.sh installs it)"]
fn s3_upload_killed_at_several_points_then_the_next_run_succeeds_and_verify_is_clean() {
    let s3 = S3Server::start();
    let probe = Site::new("");
    let creds = credentials(&probe, "admin.key", &s3.admin);
    let site = Site::with_target("", &s3.target("kill", &creds, ""));
    // 96 MiB of random data: six packs, uploaded one by one.
    let vol = site.create_volume("data", 128 * MIB);
    let f = File::options().write(true).open(&vol).unwrap();
    for i in 0..6 {
        f.write_all_at(&noise(40 + 2 * i, 16 * MIB), i * 16 * MIB)
            .unwrap();
    }
    drop(f);
    let packs = |keys: &[String]| keys.iter().filter(|k| k.starts_with("data/")).count();
    type Ready<'a> = &'a dyn Fn(&[String]) -> bool;
    let points: [(&str, Ready); 3] = [
        ("session open, nothing uploaded", &|k| {
            k.iter().any(|k| k.starts_with("locks/"))
        }),
        ("first pack uploaded", &|k| packs(k) >= 1),
        ("three packs uploaded", &|k| packs(k) >= 3),
    ];
    for (what, ready) in points {
        kill_backup_when(&site, &s3, what, ready);
        let keys: Vec<String> = s3.objects("kill").into_iter().map(|o| o.0).collect();
        assert!(
            !keys.iter().any(|k| k.starts_with("backups/")),
            "{what}: a manifest was written before its data: {keys:?}"
        );
    }
    let id = backup_id(&site.cbf(&["backup", "run", "data"]));
    let run = site.cb("state", &["backup", "verify", "--all"]);
    ok(&run);
    assert_eq!(run.stdout.matches("ok ").count(), 1, "{}", run.stdout);
    ok(&site.cbf(&["backup", "restore", &id, "--to", "back"]));
    assert_eq!(sha256(&site.volume_path("back").unwrap()), sha256(&vol));
    // The killed runs' packs are unreferenced: prune removes them.
    let run = site.cbf(&["backup", "prune"]);
    ok(&run);
    let run = site.cb("state", &["backup", "verify", "--all"]);
    ok(&run);
}
