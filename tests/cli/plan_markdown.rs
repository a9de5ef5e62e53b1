//! `plan --format markdown` (pull-request comments) and the format flag.

use std::fs;

use crate::plan::{Site, backend, volume};

/// A site with two volumes applied, then a change that destroys one, grows
/// the other and adds a third.
fn changed_site() -> Site {
    let site = Site::new();
    let dir = site.path().join("pool");
    fs::create_dir_all(&dir).unwrap();
    site.write("backend.yaml", &backend("local", &dir, ""));
    site.write(
        "v.yaml",
        &format!(
            "{}---\n{}",
            volume("scratch", "64Mi", "  deletionPolicy: Delete\n"),
            volume("db", "32Mi", "")
        ),
    );
    site.apply();
    site.write(
        "v.yaml",
        &format!(
            "{}---\n{}",
            volume("db", "48Mi", ""),
            volume("logs", "16Mi", "")
        ),
    );
    site
}

#[test]
fn plan_markdown_is_stable_and_puts_destroys_first() {
    let site = changed_site();
    let r = site.run(&[
        "plan",
        "-f",
        "manifests",
        "--format",
        "markdown",
        "--detailed-exitcode",
    ]);
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    insta::with_settings!({filters => vec![
        (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "[uuid]"),
        // Total and virtual free are those of the file system under the test.
        (r"\| [\d.]+ [KMGTPE]?i?B \| [\d.]+ [KMGTPE]?i?B( → \*\*[\d.]+ [KMGTPE]?i?B\*\*)? \|", "| [total] | [virtual free] |"),
    ]}, {
        insta::assert_snapshot!(r.stdout);
    });
    // The same plan twice is the same bytes.
    let again = site.run(&["plan", "-f", "manifests", "--format", "markdown"]);
    assert_eq!(again.stdout, r.stdout);
}

#[test]
fn json_is_an_alias_of_format_json_and_conflicts_with_format() {
    let site = changed_site();
    let alias = site.run(&["plan", "-f", "manifests", "--json"]);
    let long = site.run(&["plan", "-f", "manifests", "--format", "json"]);
    assert_eq!(
        (alias.code, long.code),
        (0, 0),
        "{}{}",
        alias.stderr,
        long.stderr
    );
    assert_eq!(alias.stdout, long.stdout);
    let v: serde_json::Value = serde_json::from_str(&alias.stdout).unwrap();
    assert_eq!(v["summary"]["destroy"], 1);
    let both = site.run(&["plan", "-f", "manifests", "--json", "--format", "markdown"]);
    assert_eq!(both.code, 2, "{}", both.stderr);
    assert!(
        both.stderr
            .contains("the argument '--json' cannot be used with '--format <FORMAT>'"),
        "{}",
        both.stderr
    );
    let bad = site.run(&["plan", "-f", "manifests", "--format", "html"]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr
            .contains("[possible values: text, json, markdown]"),
        "{}",
        bad.stderr
    );
}

#[test]
fn no_changes_in_markdown_is_one_line() {
    let site = Site::new();
    let dir = site.path().join("pool");
    fs::create_dir_all(&dir).unwrap();
    site.write("backend.yaml", &backend("local", &dir, ""));
    site.write("v.yaml", &volume("db", "32Mi", ""));
    site.apply();
    let r = site.run(&["plan", "-f", "manifests", "--format", "markdown"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "### cinderblock plan for <code>testhost</code>\n\n**No changes. Storage matches the manifests.**\n\n"
    );
}
