//! The agent's status page (`GET /`) in headless Chromium, driven over the
//! `DevTools` protocol by `tests/browser/cdp.py`: it loads without console
//! errors, failed loads or policy violations, and shows the numbers
//! `/status` has. The screenshot it takes is the reference under
//! `tests/screenshots/` (refreshed with `CINDERBLOCK_UPDATE_SCREENSHOTS=1`).

use std::fs;
use std::time::Duration;

use serde_json::Value;

use crate::agent::{Agent, site_with_backend, write_volume};
use crate::plan::{H, volume};
use crate::support::{root, tool};

/// The part of `html` from the element carrying `attr` to the end of its
/// table row.
fn row<'a>(html: &'a str, attr: &str) -> &'a str {
    let at = html
        .find(attr)
        .unwrap_or_else(|| panic!("no {attr} in the page:\n{html}"));
    let end = html[at..].find("</tr>").map_or(html.len(), |e| at + e);
    &html[at..end]
}

/// The exact bytes the page gives for `of` in `part`.
fn bytes_of(part: &str, of: &str) -> u64 {
    let tag = format!("\" data-of=\"{of}\"");
    let end = part
        .find(&tag)
        .unwrap_or_else(|| panic!("no {of} in {part}"));
    let start = part[..end].rfind("data-bytes=\"").unwrap() + "data-bytes=\"".len();
    part[start..end].parse().unwrap()
}

fn count_of(html: &str, what: &str) -> u64 {
    let tag = format!("data-count=\"{what}\">");
    let at = html.find(&tag).unwrap_or_else(|| panic!("no count {what}")) + tag.len();
    html[at..html[at..].find('<').unwrap() + at]
        .parse()
        .unwrap()
}

#[test]
#[ignore = "needs Debian's chromium (tests/run.sh installs it)"]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn the_status_page_loads_cleanly_in_chromium_and_shows_what_status_has() {
    let site = site_with_backend();
    let archive = site.path().join("archive");
    fs::create_dir_all(&archive).unwrap();
    site.write(
        "archive.yaml",
        &crate::plan::backend("archive", &archive, "  maxOverSubscriptionRatio: 1.0\n"),
    );
    let repo = site.path().join("repo");
    site.write(
        "policy.yaml",
        &format!(
            "{H}kind: BackupPolicy\nmetadata:\n  name: minutely\nspec:\n  schedule: \"* * * * *\"\n  \
             target:\n    path: {}\n  retention:\n    keepLast: 3\n",
            repo.display()
        ),
    );
    site.write(
        "volumes.yaml",
        &format!(
            "{}---\n{}---\n{}",
            volume("db", "64Mi", "  backend: local\n  backupPolicy: minutely\n"),
            volume("logs", "16Mi", "  backend: local\n"),
            volume("media", "48Mi", "  backend: archive\n")
        ),
    );
    site.write(
        "snap.yaml",
        &format!("{H}kind: Snapshot\nmetadata:\n  name: db-before-upgrade\nspec:\n  volume: db\n"),
    );
    // Applied first, with data in db, so the agent's discovery sees every
    // object and the backup stores something.
    site.apply();
    let db_file = site.data("pool", "volume.db");
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    write_volume(&db_file, &data, 64 << 20);
    let mut agent = Agent::start(site.path(), &["-f", "manifests", "--resync", "1h"]);
    agent.wait_ready();
    // The first scheduled backup (every minute), so the page has one.
    agent.poll(
        "the first scheduled backup of db",
        Duration::from_secs(100),
        |a| {
            std::thread::sleep(Duration::from_millis(200));
            let s = a.status();
            let v = s["backups"]["volumes"]
                .as_array()?
                .iter()
                .find(|v| v["volume"] == "db")?
                .clone();
            (v["lastSize"].as_u64()? > 0 && v["running"] == false).then_some(())
        },
    );

    // The route: HTML, self-contained by policy.
    let (code, head, body) = agent.request("GET", "/", &[]);
    assert_eq!(code, 200, "{head}");
    let head_l = head.to_ascii_lowercase();
    assert!(
        head_l.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(
        head_l.contains(
            "content-security-policy: default-src 'none'; style-src 'unsafe-inline'; img-src data:"
        ),
        "{head}"
    );
    assert!(body.starts_with("<!DOCTYPE html>"), "{body}");

    // In the browser, compared with /status read just before and after.
    let out = tempfile::tempdir().unwrap();
    let shot = out.path().join("status-page.png");
    let (page, status) = (0..3)
        .find_map(|_| {
            let before = agent.status();
            let r = tool(
                site.path(),
                "python3",
                &[
                    root().join("tests/browser/cdp.py").to_str().unwrap(),
                    &format!("http://{}/", agent.addr),
                    shot.to_str().unwrap(),
                    "1280",
                    "900",
                ],
            );
            assert_eq!(r.code, 0, "cdp.py failed:\n{}", r.stderr);
            let after = agent.status();
            let same = |s: &Value| {
                (
                    s["reconcileCount"].clone(),
                    s["backends"].clone(),
                    s["objects"].clone(),
                    s["backups"]["volumes"].clone(),
                )
            };
            (same(&before) == same(&after))
                .then(|| (serde_json::from_str::<Value>(&r.stdout).unwrap(), after))
        })
        .expect("the status kept changing while the page loaded");
    assert_eq!(
        page["problems"],
        serde_json::json!([]),
        "the page had problems"
    );
    assert_eq!(page["status"], 200);
    assert_eq!(page["title"], "cinderblock · testhost");
    let html = page["html"].as_str().unwrap();

    assert_eq!(
        count_of(html, "reconciles"),
        status["reconcileCount"].as_u64().unwrap()
    );
    let backends = status["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2);
    for b in backends {
        let name = b["name"].as_str().unwrap();
        let part = row(html, &format!("data-backend=\"{name}\""));
        for (of, key) in [
            ("free", "free"),
            ("total", "total"),
            ("provisioned", "provisioned"),
        ] {
            assert_eq!(
                bytes_of(part, of),
                b[key].as_u64().unwrap(),
                "{name} {of}: {part}"
            );
        }
        assert!(part.contains("<meter "), "{part}");
    }
    let objects = status["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 4, "{status:#}");
    let local = backends.iter().find(|b| b["name"] == "local").unwrap();
    assert_eq!(local["provisioned"], (64 + 64 + 16) << 20, "{local}");
    assert_eq!(count_of(html, "objects"), 4);
    for o in objects {
        let address = o["address"].as_str().unwrap();
        let part = row(html, &format!("data-object=\"{address}\""));
        assert!(
            part.contains(&format!("data-state=\"{}\"", o["state"].as_str().unwrap())),
            "{address}: {part}"
        );
        if let Some(size) = o["size"].as_u64() {
            assert_eq!(bytes_of(part, "size"), size, "{address}");
        }
    }
    let db = status["backups"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["volume"] == "db")
        .unwrap();
    let part = row(html, "data-backup=\"db\"");
    assert_eq!(
        bytes_of(part, "stored"),
        db["lastSize"].as_u64().unwrap(),
        "{part}"
    );
    assert!(
        part.contains(" s ago</time>") || part.contains(" min ago</time>"),
        "{part}"
    );
    let applied = status["source"]["appliedRevision"].as_str().unwrap();
    assert!(
        html.contains(&format!("<code data-revision=\"applied\">{applied}</code>")),
        "{applied}"
    );
    assert!(html.contains("data-condition=\"Ready\" data-status=\"True\""));

    // The screenshot: a PNG of the page's full height at 1280 px.
    let png = fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!(width, 1280);
    assert!(height >= 900, "{height}");
    let fresh = root().join("target/screenshots");
    fs::create_dir_all(&fresh).unwrap();
    fs::copy(&shot, fresh.join("status-page.png")).unwrap();
    let reference = root().join("tests/screenshots/status-page.png");
    if std::env::var_os("CINDERBLOCK_UPDATE_SCREENSHOTS").is_some() {
        fs::create_dir_all(reference.parent().unwrap()).unwrap();
        fs::copy(&shot, &reference).unwrap();
    }
    let checked_in = fs::read(&reference).expect("tests/screenshots/status-page.png is checked in");
    assert_eq!(&checked_in[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(
        u32::from_be_bytes(checked_in[16..20].try_into().unwrap()),
        1280
    );
}

/// The page's checks can fail: a page with a console error, a failed load
/// and no favicon is reported by the same driver.
#[test]
#[ignore = "needs Debian's chromium (tests/run.sh installs it)"]
fn the_browser_driver_reports_console_errors_and_failed_loads() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("bad.html");
    fs::write(
        &page,
        "<!DOCTYPE html><title>bad</title><script>console.error('boom')</script><img src=\"missing.png\">",
    )
    .unwrap();
    let shot = dir.path().join("bad.png");
    let r = tool(
        dir.path(),
        "python3",
        &[
            root().join("tests/browser/cdp.py").to_str().unwrap(),
            &format!("file://{}", page.display()),
            shot.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let problems = v["problems"].to_string();
    assert!(problems.contains("console.error: boom"), "{problems}");
    assert!(problems.contains("missing.png"), "{problems}");
}

/// A migration in flight, end to end: while the agent moves a volume (paced
/// by its back end's `migrationBandwidth`), `/status`, `/metrics` and the
/// page show it with the same progress; when it ends, all three say none.
#[test]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn a_migration_in_flight_shows_on_status_metrics_and_page_until_it_ends() {
    let site = crate::plan::Site::new();
    let (pool, archive) = (site.path().join("pool"), site.path().join("archive"));
    fs::create_dir_all(&pool).unwrap();
    fs::create_dir_all(&archive).unwrap();
    // 32 MiB of data read at 4 MiB/s: about 8 s in flight.
    site.write(
        "backend.yaml",
        &crate::plan::backend("local", &pool, "  migrationBandwidth: 4Mi\n"),
    );
    site.write(
        "archive.yaml",
        &crate::plan::backend("archive", &archive, ""),
    );
    site.write("v.yaml", &volume("db", "64Mi", "  backend: local\n"));
    site.apply();
    let data: Vec<u8> = (0..32u32 << 20).map(|i| (i % 253) as u8).collect();
    write_volume(&site.data("pool", "volume.db"), &data, 64 << 20);
    let mut agent = Agent::start(site.path(), &["-f", "manifests", "--resync", "1h"]);
    agent.wait_ready();
    let (_, metrics) = agent.get("/metrics");
    assert!(
        metrics.contains("\ncinderblock_migrations_running 0\n"),
        "{metrics}"
    );

    site.write("v.yaml", &volume("db", "64Mi", "  backend: archive\n"));
    // Part way: some bytes read, at most half (the other half, some 4 s, is
    // the time left to read /metrics and the page while it is in flight).
    let m = agent.poll(
        "the migration of db part way",
        Duration::from_secs(60),
        |a| {
            std::thread::sleep(Duration::from_millis(40));
            let s = a.status();
            let m = s["migrations"].as_array()?.first()?.clone();
            let (read, to_read) = (m["read"].as_u64()?, m["toRead"].as_u64()?);
            (read > 0 && read <= to_read / 2).then_some(m)
        },
    );
    assert_eq!(m["address"], "volume.db", "{m}");
    assert_eq!(m["from"], "local", "{m}");
    assert_eq!(m["to"], "archive", "{m}");
    assert_eq!(m["size"], 64u64 << 20, "{m}");
    assert_eq!(m["toRead"], 32u64 << 20, "only the allocated data: {m}");
    // Its rate so far (paced at 4 MiB/s, give or take the first chunk) and
    // the time left at it.
    let rate = m["rate"].as_u64().unwrap_or(0);
    assert!(rate > 0 && rate <= 16 << 20, "{m}");
    let eta = m["etaSeconds"]
        .as_u64()
        .unwrap_or_else(|| panic!("no ETA: {m}"));
    assert!(eta > 0 && eta <= 60, "{m}");
    // /metrics and the page, each compared with /status read around it
    // (progress moves on in between: a read's number lies between them).
    let between = |get: &dyn Fn() -> u64, a: &Agent| {
        let before = a.status()["migrations"][0]["read"].as_u64();
        let got = get();
        let after = a.status()["migrations"][0]["read"].as_u64();
        (before, got, after)
    };
    let (before, from_metrics, after) = between(
        &|| {
            let (_, text) = agent.get("/metrics");
            assert!(
                text.contains("\ncinderblock_migrations_running 1\n"),
                "{text}"
            );
            assert!(
                text.contains(
                    "\ncinderblock_migration_to_read_bytes{volume=\"volume.db\",from=\"local\",to=\"archive\"} 33554432\n"
                ),
                "{text}"
            );
            assert!(
                text.contains(
                    "\ncinderblock_migration_rate_bytes_per_second{volume=\"volume.db\",from=\"local\",to=\"archive\"} "
                ),
                "{text}"
            );
            let at = text
                .find("\ncinderblock_migration_read_bytes{volume=\"volume.db\",from=\"local\",to=\"archive\"} ")
                .unwrap_or_else(|| panic!("no read bytes in\n{text}"));
            let line = text[at + 1..].lines().next().unwrap();
            line.rsplit(' ').next().unwrap().parse().unwrap()
        },
        &agent,
    );
    if let (Some(b), Some(a)) = (before, after) {
        assert!(
            b <= from_metrics && from_metrics <= a,
            "{b} {from_metrics} {a}"
        );
    }
    let (before, from_page, after) = between(
        &|| {
            let (code, html) = agent.get("/");
            assert_eq!(code, 200);
            let part = row(&html, "data-migration=\"volume.db\"");
            assert!(
                part.contains("<code>local</code> → <code>archive</code>"),
                "{part}"
            );
            assert!(
                part.contains("<progress max=\"33554432\" value=\""),
                "{part}"
            );
            assert_eq!(bytes_of(part, "to-read"), 32 << 20, "{part}");
            assert_eq!(bytes_of(part, "size"), 64 << 20, "{part}");
            bytes_of(part, "read")
        },
        &agent,
    );
    if let (Some(b), Some(a)) = (before, after) {
        assert!(b <= from_page && from_page <= a, "{b} {from_page} {a}");
    }

    // The end: moved, and no migration in flight anywhere.
    let s = agent.poll(
        "the migration of db to end",
        Duration::from_secs(120),
        |a| {
            std::thread::sleep(Duration::from_millis(100));
            let s = a.status();
            let moved = s["objects"].as_array()?.iter().any(|o| {
                o["address"] == "volume.db" && o["backend"] == "archive" && o["state"] == "ready"
            });
            (moved && s["migrations"].as_array()?.is_empty()).then_some(s)
        },
    );
    assert_eq!(s["migrations"], serde_json::json!([]));
    // Shown where it is now, without waiting for the next discovery.
    assert_eq!(s["reconcileCount"], 2, "{s:#}");
    let (_, metrics) = agent.get("/metrics");
    assert!(
        metrics.contains("\ncinderblock_migrations_running 0\n"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("cinderblock_migration_read_bytes{"),
        "{metrics}"
    );
    let (_, html) = agent.get("/");
    assert!(!html.contains("data-migration="), "{html}");
    let moved = fs::read(site.data("archive", "volume.db")).unwrap();
    assert_eq!(moved.len(), 64 << 20);
    assert_eq!(&moved[..data.len()], &data[..]);
    assert!(moved[data.len()..].iter().all(|b| *b == 0));
}

#[test]
#[ignore = "needs Debian's chromium, etcd and etcdctl (tests/run.sh installs them)"]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn with_etcd_the_page_and_status_show_the_fleet_hosts_placements_and_pending_changes() {
    use crate::fleet_etcd::{Fleet, WAIT, names, volumes_yaml};
    let mut f = Fleet::running(1, &["a", "b"]);
    let vols = names("vol", 5);
    f.write("volumes.yaml", &volumes_yaml(&vols, ""));
    f.wait_exactly_once(&vols, WAIT);
    // Where etcd says each volume is.
    let mut placed: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for p in f.placements().values() {
        *placed
            .entry(p["host"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(placed.values().sum::<u64>(), 5);
    // The JSON endpoint: every host, up, its placements, its pending
    // changes (none, once both have applied and published).
    let fleet_of = |f: &Fleet| -> Option<Value> {
        let (_, body) = f.hosts[0].get("/status")?;
        let s: Value = serde_json::from_str(&body).ok()?;
        Some(s["fleet"].clone())
    };
    f.wait("host a's status to show both hosts settled", WAIT, |f| {
        fleet_of(f).is_some_and(|fl| {
            fl["hosts"].as_array().is_some_and(|hs| {
                hs.len() == 2
                    && hs.iter().all(|h| {
                        h["up"] == true
                            && h["pending"]["actions"] == 0
                            && h["placements"].as_u64()
                                == Some(
                                    placed
                                        .get(h["host"].as_str().unwrap_or(""))
                                        .copied()
                                        .unwrap_or(0),
                                )
                            && h["appliedRevision"].is_string()
                    })
            })
        })
    });
    let fleet = fleet_of(&f).unwrap();
    assert_eq!(fleet["available"], true, "{fleet:#}");
    assert_eq!(fleet["placements"], 5, "{fleet:#}");
    let hosts: Vec<&str> = fleet["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["a", "b"]);
    let leader = fleet["leader"].as_str().unwrap().to_owned();

    // The page in the browser: clean, and the same numbers.
    let out = tempfile::tempdir().unwrap();
    let shot = out.path().join("fleet-page.png");
    let addr = f.hosts[0].addr().unwrap();
    let r = tool(
        f.path(),
        "python3",
        &[
            root().join("tests/browser/cdp.py").to_str().unwrap(),
            &format!("http://{addr}/"),
            shot.to_str().unwrap(),
            "1280",
            "900",
        ],
    );
    assert_eq!(r.code, 0, "cdp.py failed:\n{}", r.stderr);
    let page: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        page["problems"],
        serde_json::json!([]),
        "the page had problems"
    );
    let html = page["html"].as_str().unwrap();
    assert_eq!(count_of(html, "fleet-hosts"), 2);
    assert_eq!(count_of(html, "fleet-placements"), 5);
    assert!(html.contains("data-fleet=\"available\""), "{html}");
    assert!(
        html.contains(&format!("<code data-leader=\"{leader}\">{leader}</code>")),
        "{html}"
    );
    for h in ["a", "b"] {
        let part = row(html, &format!("<tr data-host=\"{h}\">"));
        assert!(part.contains("data-host-state=\"up\""), "{part}");
        assert!(
            part.contains(&format!(
                "data-count=\"host-placements\">{}</td>",
                placed.get(h).copied().unwrap_or(0)
            )),
            "{part}"
        );
        assert!(
            part.contains("data-count=\"pending-actions\">0</span> none"),
            "{part}"
        );
    }

    // b gets a volume of its own, so b going down leaves one unavailable.
    f.write(
        "pinned.yaml",
        &format!("{H}kind: Volume\nmetadata:\n  name: pinned-b\nspec:\n  size: 64Mi\n  backend: fb\n---\n"),
    );
    f.wait_exactly_once(&["pinned-b".to_owned()], WAIT);
    let on_b = placed.get("b").copied().unwrap_or(0) + 1;
    f.wait("b to publish its view with pinned-b", WAIT, |f| {
        f.cli(&["status", "--fleet"])
            .stdout
            .lines()
            .any(|l| l.starts_with("    fb ") && l.ends_with(&format!("; {on_b} volume(s)")))
    });

    // b goes down: a's status and page say so.
    f.hosts[1].kill();
    f.wait("host a's status to show b down", WAIT, |f| {
        fleet_of(f).is_some_and(|fl| {
            fl["hosts"]
                .as_array()
                .is_some_and(|hs| hs.iter().any(|h| h["host"] == "b" && h["up"] == false))
        })
    });
    let (code, html) = f.hosts[0].get("/").unwrap();
    assert_eq!(code, 200);
    let part = row(&html, "<tr data-host=\"b\">");
    assert!(part.contains("data-host-state=\"down\""), "{part}");
    assert!(
        html.contains("<li class=\"bad\"><code>volume.pinned-b (host b)</code></li>"),
        "{html}"
    );
}
