//! Encrypted repositories (format version 2), end to end: nothing of a
//! volume's content or its chunk hashes reaches the target; a wrong key is
//! one clear error before anything is written; rotating the key keeps every
//! backup restorable; a flipped bit in any object is detected; and the
//! format is pinned by a golden fixture read with its (published) key.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::backup::{
    KIB, MIB, Site, allocated, backup_id, change, files_below, fill, golden_volume, noise, ok,
    pinned_config, sha256,
};

/// A line no compressor or cipher leaves readable by accident.
const MARKER: &[u8] = b"CINDERBLOCK-PLAINTEXT-MARKER-7f3a9c";

fn encrypted_site(retention: &str) -> Site {
    let site = Site::with_target(
        retention,
        "{path: ROOT/repo}\n  encryption: {keyRef: {file: ROOT/backup.key}}",
    );
    fs::write(
        site.path().join("backup.key"),
        "first key: correct horse battery\n",
    )
    .unwrap();
    site
}

/// An encrypted site whose 8 MiB volume holds 1 MiB of noise `seed`, backed
/// up once: the site, the volume's path, the backup's id.
fn one_backup(seed: u64) -> (Site, PathBuf, String) {
    let site = encrypted_site("");
    let vol = site.create_volume("data", 8 * MIB);
    let f = File::options().write(true).open(&vol).unwrap();
    f.write_all_at(&noise(seed, MIB), 0).unwrap();
    drop(f);
    let id = backup_id(&site.cbf(&["backup", "run", "data"]));
    (site, vol, id)
}

/// Every file of the repository and its bytes.
fn snapshot(repo: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    files_below(repo)
        .into_iter()
        .map(|p| {
            let b = fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn encrypted_repository_holds_no_plaintext_nor_content_hashes_and_round_trips() {
    let site = encrypted_site("");
    let vol = site.create_volume("data", 64 * MIB);
    fill(&vol);
    // 1 MiB of the marker, which zstd would otherwise shrink to a few
    // bytes that still spell it.
    let text: Vec<u8> = MARKER.iter().copied().cycle().take(MIB as usize).collect();
    let f = File::options().write(true).open(&vol).unwrap();
    f.write_all_at(&text, 30 * MIB).unwrap();
    drop(f);
    let sum = sha256(&vol);
    let full = backup_id(&site.cbf(&["backup", "run", "data", "--full"]));
    change(&vol);
    let sum_inc = sha256(&vol);
    let inc = backup_id(&site.cbf(&["backup", "run", "data"]));

    let files = snapshot(&site.repo());
    let config = String::from_utf8(files[&site.repo().join("config")].clone()).unwrap();
    assert!(config.contains("\"version\": 2"), "{config}");
    assert!(
        config.contains("\"aead\": \"xchacha20poly1305\""),
        "{config}"
    );
    // The plain BLAKE3 of a chunk of the volume, as hex and as bytes.
    let chunk = &text[..64 * KIB as usize];
    let plain_id = blake3::hash(chunk);
    for (path, bytes) in &files {
        assert!(!contains(bytes, MARKER), "plaintext in {}", path.display());
        assert!(
            !contains(bytes, &MARKER[..12]),
            "plaintext in {}",
            path.display()
        );
        assert!(
            !contains(bytes, plain_id.as_bytes()),
            "content hash in {}",
            path.display()
        );
        assert!(
            !path
                .to_string_lossy()
                .contains(&plain_id.to_hex().to_string()),
            "content hash as a name: {}",
            path.display()
        );
        assert!(
            !contains(bytes, b"\"volume\""),
            "manifest in clear: {}",
            path.display()
        );
    }
    for (id, name, want) in [(&full, "a", &sum), (&inc, "b", &sum_inc)] {
        ok(&site.cbf(&["backup", "restore", id, "--to", name]));
        let restored = site.volume_path(name).unwrap();
        assert_eq!(&sha256(&restored), want);
        assert!(allocated(&restored) < 20 * MIB, "sparse");
    }
    let run = site.cb("state", &["backup", "verify", "--all"]);
    ok(&run);
    assert_eq!(run.stdout.matches("ok ").count(), 2, "{}", run.stdout);
}

#[test]
fn a_wrong_key_is_one_clear_error_and_writes_nothing() {
    let (site, _, id) = one_backup(5);
    let before = snapshot(&site.repo());
    fs::write(
        site.path().join("backup.key"),
        "not the key at all, sorry\n",
    )
    .unwrap();
    for args in [
        vec!["backup", "run", "data", "-f", "site.yaml"],
        vec!["backup", "restore", &id, "--to", "x", "-f", "site.yaml"],
        vec!["backup", "verify", "--all"],
        vec!["backup", "prune", "-f", "site.yaml"],
    ] {
        let run = site.cb("state", &args);
        assert_eq!(run.code, 1, "{args:?}: {}", run.stdout);
        assert!(
            run.stderr.contains(&format!(
                "the key in file {}/backup.key does not open",
                site.path().display()
            )) && run.stderr.contains("(wrong key)"),
            "{args:?}: {}",
            run.stderr
        );
        assert!(!run.stderr.contains("not the key at all"), "secret shown");
        assert_eq!(snapshot(&site.repo()), before, "{args:?} wrote something");
    }
    assert!(site.volume_path("x").is_none());
    // A policy without the key cannot use the repository either, and one
    // with a key cannot use an unencrypted repository.
    let plain = Site::with_target("", "{path: ROOT/repo}");
    fs::remove_dir_all(plain.path().join("repo")).ok();
    copy_tree(&site.repo(), &plain.repo());
    let v = plain.create_volume("data", 4 * MIB);
    let f = File::options().write(true).open(&v).unwrap();
    f.write_all_at(&noise(6, MIB), 0).unwrap();
    drop(f);
    let run = plain.cbf(&["backup", "run", "data"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("is encrypted"), "{}", run.stderr);
}

fn copy_tree(from: &Path, to: &Path) {
    for f in files_below(from) {
        let dest = to.join(f.strip_prefix(from).unwrap());
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::copy(&f, &dest).unwrap();
    }
}

#[test]
fn key_rotation_keeps_every_backup_restorable_and_retires_the_old_key() {
    let site = encrypted_site("");
    let vol = site.create_volume("data", 16 * MIB);
    let mut backups = Vec::new();
    for round in 0..2u64 {
        let f = File::options().write(true).open(&vol).unwrap();
        f.write_all_at(&noise(20 + 2 * round, 2 * MIB), round * 4 * MIB)
            .unwrap();
        drop(f);
        backups.push((
            backup_id(&site.cbf(&["backup", "run", "data"])),
            sha256(&vol),
        ));
    }
    let data_before: Vec<_> = files_below(&site.repo().join("data"));
    fs::write(site.path().join("new.key"), "second key: staple\n").unwrap();
    let new_key = site.path().join("new.key").display().to_string();
    let run = site.cbf(&[
        "backup",
        "key",
        "rotate",
        "--policy",
        "nightly",
        "--new-key-file",
        &new_key,
    ]);
    ok(&run);
    assert!(run.stdout.contains("no data rewritten"), "{}", run.stdout);
    assert_eq!(
        files_below(&site.repo().join("data")),
        data_before,
        "packs untouched"
    );
    // The policy now names the new key; the old one no longer opens.
    let yaml = fs::read_to_string(site.path().join("site.yaml"))
        .unwrap()
        .replace("backup.key", "new.key");
    fs::write(site.path().join("site.yaml"), yaml).unwrap();
    for (i, (id, sum)) in backups.iter().enumerate() {
        let name = format!("r{i}");
        ok(&site.cbf(&["backup", "restore", id, "--to", &name]));
        assert_eq!(&sha256(&site.volume_path(&name).unwrap()), sum);
    }
    ok(&site.cb("state", &["backup", "verify", "--all"]));
    let old = Site::with_target(
        "",
        &format!(
            "{{path: {}}}\n  encryption: {{keyRef: {{file: {}/backup.key}}}}",
            site.repo().display(),
            site.path().display()
        ),
    );
    let v = old.create_volume("data", 4 * MIB);
    drop(v);
    let run = old.cbf(&["backup", "run", "data"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("(wrong key)"), "{}", run.stderr);
}

#[test]
fn a_flipped_bit_in_any_object_is_detected() {
    let site = encrypted_site("");
    let vol = site.create_volume("data", 8 * MIB);
    let f = File::options().write(true).open(&vol).unwrap();
    f.write_all_at(&noise(9, 2 * MIB), 0).unwrap();
    drop(f);
    backup_id(&site.cbf(&["backup", "run", "data"]));
    let pristine = snapshot(&site.repo());
    for (path, bytes) in &pristine {
        let rel = path
            .strip_prefix(site.repo())
            .unwrap()
            .display()
            .to_string();
        // A bit near the start, the middle and the end of every object.
        for at in [0, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            fs::write(path, &bad).unwrap();
            let run = site.cb("state", &["backup", "verify", "--all"]);
            assert_eq!(
                run.code, 1,
                "a flipped bit at byte {at} of {rel} went unnoticed:\n{}{}",
                run.stdout, run.stderr
            );
            fs::write(path, bytes).unwrap();
        }
    }
    ok(&site.cb("state", &["backup", "verify", "--all"]));
}

// ---------------------------------------------------------------------------
// Golden fixture: repository format v2 (encrypted).

/// The fixture's key. Published on purpose: it opens only the fixture.
const GOLDEN_KEY: &str = "golden fixture key of cinderblock; not a secret";

fn golden_dir() -> PathBuf {
    crate::support::root().join("tests/fixtures/backup/repo-v2-encrypted")
}

/// Writes the fixture anew, when the golden test runs with
/// `CINDERBLOCK_REGENERATE_GOLDEN=1` (a deliberate format change only).
fn regenerate() {
    let key = cinderblock::backup::crypto::RepoKey {
        secret: GOLDEN_KEY.into(),
        from: "the golden test".into(),
    };
    crate::backup::write_golden_repository(&golden_dir(), Some(&key));
}

#[test]
// One fixture, checked layer by layer, then end to end (as v1's).
#[allow(clippy::too_many_lines)]
fn golden_repository_v2_encrypted_is_read_and_restored() {
    use cinderblock::backup::crypto::RepoKey;
    use cinderblock::backup::format::{self, Digest};
    use cinderblock::backup::{BackupError, Repository};
    if std::env::var_os("CINDERBLOCK_REGENERATE_GOLDEN").is_some() {
        regenerate();
    }
    let dir = golden_dir();
    assert_eq!(
        pinned_config(&dir),
        r#"{
  "format": "cinderblock.backup-repository",
  "version": 2,
  "id": …
  "chunkSize": 65536,
  "hash": "blake3",
  "compression": "zstd",
  "packSize": 16777216,
  "createdAt": …
  "encryption": {
    "aead": "xchacha20poly1305",
    "chunkId": "blake3-keyed"
  }
}"#
    );
    // Without the key, or with another: refused.
    assert!(matches!(
        Repository::open(&dir),
        Err(BackupError::KeyNeeded { .. })
    ));
    let wrong = RepoKey {
        secret: "another".into(),
        from: "t".into(),
    };
    assert!(matches!(
        Repository::open_keyed(&dir, Some(&wrong)),
        Err(BackupError::WrongKey { .. })
    ));
    let key = RepoKey {
        secret: GOLDEN_KEY.into(),
        from: "t".into(),
    };
    let repo = Repository::open_keyed(&dir, Some(&key)).unwrap();
    let c = repo.crypto().unwrap();
    let v = golden_volume();
    let id = |slot: usize| c.chunk_id(&v[slot * 65536..(slot + 1) * 65536]);
    assert_ne!(id(0), Digest::of(&v[..65536]), "ids are keyed");

    // One key file, argon2id-wrapped.
    let keys = files_below(&dir.join("keys"));
    assert_eq!(keys.len(), 1);
    let kf = fs::read_to_string(&keys[0]).unwrap();
    assert!(kf.contains("\"algorithm\": \"argon2id\""), "{kf}");
    // The manifest is sealed, bound to its backup id; it opens to the table.
    let (ms, bad) = repo.manifests().unwrap();
    assert!(bad.is_empty());
    assert_eq!(ms.len(), 1);
    let table = format::decode_table(&ms[0]).unwrap();
    assert_eq!(table, vec![(0, id(0)), (2, id(2)), (3, id(0)), (7, id(7))]);
    // One pack with a sealed trailer.
    let packs = files_below(&dir.join("data"));
    assert_eq!(packs.len(), 1);
    let pack = fs::read(&packs[0]).unwrap();
    assert_eq!(
        packs[0].file_name().unwrap().to_str().unwrap(),
        Digest::of(&pack).to_hex()
    );
    assert_eq!(&pack[pack.len() - 8..], b"CBPACKS1");
    let entries = repo
        .read_trailer(&Digest::of(&pack), pack.len() as u64)
        .unwrap();
    let mut ids: Vec<Digest> = entries.iter().map(|e| e.id).collect();
    ids.sort();
    let mut want = vec![id(0), id(2), id(7)];
    want.sort();
    assert_eq!(ids, want);
    // Every blob is sealed: 40 bytes more than its compressed chunk.
    let raw = entries
        .iter()
        .find(|e| e.codec == format::Codec::None)
        .unwrap();
    assert_eq!(raw.stored_len, 65536 + 40);

    // The CLI restores it, on a copy, with the key from a file.
    let site = Site::with_target(
        "",
        "{path: ROOT/repo}\n  encryption: {keyRef: {file: ROOT/golden.key}}",
    );
    fs::write(site.path().join("golden.key"), GOLDEN_KEY).unwrap();
    copy_tree(&dir, &site.repo());
    ok(&site.cbf(&["backup", "import", "--policy", "nightly"]));
    ok(&site.cb("state", &["backup", "verify", "--all"]));
    ok(&site.cbf(&[
        "backup",
        "restore",
        "00000000",
        "--to",
        "golden",
        "--backend",
        "local",
    ]));
    let restored = site.volume_path("golden").unwrap();
    assert_eq!(fs::read(&restored).unwrap(), v);
}

#[test]
fn scanning_an_encrypted_directory_takes_a_key_reference_and_restores() {
    let (site, vol, id) = one_backup(9);
    // The state directory is lost; the repository is found by path alone.
    fs::remove_dir_all(site.path().join("state")).unwrap();
    let run = site.cb("state", &["backup", "import", "--scan", "repo"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("is encrypted")
            && run.stderr.contains("--key-file PATH or --key-env VAR"),
        "{}",
        run.stderr
    );
    fs::write(site.path().join("wrong.key"), "a wrong key, certainly\n").unwrap();
    let run = site.cb(
        "state",
        &[
            "backup",
            "import",
            "--scan",
            "repo",
            "--key-file",
            "wrong.key",
        ],
    );
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("(wrong key)"), "{}", run.stderr);
    let run = site.cb(
        "state",
        &[
            "backup",
            "import",
            "--scan",
            "repo",
            "--key-file",
            "backup.key",
        ],
    );
    ok(&run);
    assert!(run.stdout.contains("1 backup(s)"), "{}", run.stdout);
    // The catalogue keeps the key's reference (never the key), so later
    // commands reopen the repository without being told again.
    let cat = fs::read_to_string(site.path().join("state/backup-catalog.json")).unwrap();
    assert!(
        cat.contains("backup.key") && !cat.contains("correct horse"),
        "{cat}"
    );
    ok(&site.cb("state", &["backup", "verify", "--all"]));
    ok(&site.cbf(&["backup", "restore", &id, "--to", "back"]));
    assert_eq!(sha256(&site.volume_path("back").unwrap()), sha256(&vol));
}
