//! The monitoring examples: `examples/prometheus/cinderblock-rules.yaml`
//! (checked and unit-tested with promtool on synthetic series) and
//! `examples/grafana/cinderblock.json`; every metric either names is one a
//! running agent exports on `/metrics`.

#![allow(clippy::doc_markdown)] // PromQL is a name, not code
#![allow(clippy::many_single_char_names)] // grid coordinates x, y, w, h

use std::collections::BTreeSet;
use std::fs;

use serde_json::Value;

use crate::agent::{Agent, site_with_backend};
use crate::support::{root, tool};

/// Metrics Prometheus itself makes (not the agent's).
const PROMETHEUS_OWN: &[&str] = &["up"];

/// Metric names in a PromQL expression: identifiers that are not
/// functions, keywords, label names or label values.
pub(crate) fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "offset",
        "bool",
        "inf",
        "nan",
    ];
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    let mut brace = 0; // inside {...}: label matchers
    let mut paren_label_list = false; // inside by (...) / on (...)
    let mut last_word = String::new();
    while i < b.len() {
        let c = b[i] as char;
        match c {
            '"' | '\'' => {
                // A string: skip it (label values, regexes).
                let q = c;
                i += 1;
                while i < b.len() && b[i] as char != q {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                continue;
            }
            '{' => brace += 1,
            '}' => brace -= 1,
            '(' => {
                paren_label_list = matches!(
                    last_word.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                );
            }
            ')' => paren_label_list = false,
            '[' => {
                // A range or subquery duration.
                while i < b.len() && b[i] != b']' {
                    i += 1;
                }
            }
            '$' => {
                // A Grafana variable ($job, $__rate_interval).
                i += 1;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                continue;
            }
            _ if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                let word = &expr[start..i];
                let next = expr[i..].trim_start().chars().next();
                // Aggregations may put `by (...)` before their parenthesis.
                const AGGREGATIONS: &[&str] = &[
                    "sum",
                    "min",
                    "max",
                    "avg",
                    "group",
                    "stddev",
                    "stdvar",
                    "count",
                    "count_values",
                    "bottomk",
                    "topk",
                    "quantile",
                ];
                let is_function = (next == Some('(') && !KEYWORDS.contains(&word))
                    || AGGREGATIONS.contains(&word);
                if brace == 0 && !paren_label_list && !is_function && !KEYWORDS.contains(&word) {
                    out.insert(word.to_owned());
                }
                word.clone_into(&mut last_word);
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Every PromQL expression of the dashboard (panel targets and template
/// queries).
pub(crate) fn dashboard_exprs(d: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            // label_values(METRIC_SELECTOR, label)
            let inner = q.trim_start_matches("label_values(").trim_end_matches(')');
            out.push(inner.rsplit_once(',').map_or(inner, |(m, _)| m).to_owned());
        }
    }
    out
}

pub(crate) fn rule_exprs() -> Vec<(String, String)> {
    let text =
        fs::read_to_string(root().join("examples/prometheus/cinderblock-rules.yaml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut out = Vec::new();
    for g in doc["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            out.push((
                r["alert"].as_str().unwrap().to_owned(),
                r["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

pub(crate) fn dashboard() -> Value {
    serde_json::from_str(
        &fs::read_to_string(root().join("examples/grafana/cinderblock.json")).unwrap(),
    )
    .unwrap()
}

#[test]
fn the_expression_scanner_finds_metrics_only() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (le, instance) (rate(cinderblock_x_bucket{job=~"$job", a="b c"}[$__rate_interval]))) > on (instance) group_left (policy) up{job="x"} unless foo"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["cinderblock_x_bucket", "foo", "up"]
    );
}

#[test]
fn every_metric_the_dashboard_and_the_rules_name_is_exported_by_the_agent() {
    let site = site_with_backend();
    let mut agent = Agent::start(site.path(), &["-f", "manifests"]);
    agent.wait_ready();
    let (code, text) = agent.get("/metrics");
    assert_eq!(code, 200);
    let families: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let histograms: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter(|l| l.ends_with(" histogram"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let exported = |name: &str| {
        families.contains(name)
            || ["_bucket", "_sum", "_count"].iter().any(|sfx| {
                name.strip_suffix(sfx)
                    .is_some_and(|f| histograms.contains(f))
            })
    };
    let mut named = BTreeSet::new();
    for e in dashboard_exprs(&dashboard()) {
        named.extend(
            metric_names(&e)
                .into_iter()
                .map(|m| (m, "dashboard".to_owned())),
        );
    }
    for (alert, e) in rule_exprs() {
        named.extend(
            metric_names(&e)
                .into_iter()
                .map(|m| (m, format!("alert {alert}"))),
        );
    }
    assert!(named.len() > 20, "{named:?}");
    let missing: Vec<String> = named
        .iter()
        .filter(|(m, _)| !exported(m) && !PROMETHEUS_OWN.contains(&m.as_str()))
        .map(|(m, w)| format!("{m} ({w})"))
        .collect();
    assert!(missing.is_empty(), "not on /metrics: {missing:?}\n{text}");
    // Each thing the issue asks for has a panel or an alert.
    let d = dashboard().to_string();
    for metric in [
        "cinderblock_backend_thin_data_percent",
        "cinderblock_backend_thin_metadata_percent",
        "cinderblock_reconcile_total",
        "cinderblock_reconcile_duration_seconds_bucket",
        "cinderblock_drift_objects",
        "cinderblock_lost_volumes",
        "cinderblock_backup_last_success_timestamp_seconds",
        "cinderblock_backup_last_size_bytes",
        "cinderblock_migration_read_bytes",
        "cinderblock_fleet_up",
        "cinderblock_fleet_host_up",
        "cinderblock_fleet_leader",
        "cinderblock_fleet_placements",
        "cinderblock_fleet_unavailable_volumes",
        "cinderblock_fleet_etcd_errors_total",
        "cinderblock_backup_verify_last_success_timestamp_seconds",
        "cinderblock_backup_drill_last_success_timestamp_seconds",
        "cinderblock_backup_read_fallbacks_total",
    ] {
        assert!(d.contains(metric), "the dashboard shows no {metric}");
    }
    // The fleet's alerts (etcd unavailable, a host down) and the backup
    // checks' (a scheduled verify or drill failed).
    let rules = rule_exprs();
    for (alert, metric) in [
        ("CinderblockEtcdUnavailable", "cinderblock_fleet_up"),
        ("CinderblockFleetHostDown", "cinderblock_fleet_host_up"),
        (
            "CinderblockBackupCheckFailed",
            "cinderblock_backup_drill_failures_total",
        ),
    ] {
        assert!(
            rules
                .iter()
                .any(|(a, e)| a == alert && metric_names(e).contains(metric)),
            "no alert {alert} on {metric}: {rules:?}"
        );
    }
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_with_a_grid_that_fits() {
    let d = dashboard();
    assert_eq!(d["uid"], "cinderblock");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate id {p}");
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24, "{} is wider than the grid", p["title"]);
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(
                    cells.insert((cx, cy)),
                    "{} overlaps another panel",
                    p["title"]
                );
            }
        }
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            assert!(
                !p["targets"].as_array().unwrap().is_empty(),
                "{}",
                p["title"]
            );
            assert!(p["description"].as_str().is_some_and(|s| !s.is_empty()));
        }
    }
}

#[test]
#[ignore = "needs promtool (tests/run.sh unpacks it from Debian's prometheus)"]
fn promtool_checks_the_rules_runs_their_unit_tests_and_parses_the_dashboard() {
    let rules = root().join("examples/prometheus/cinderblock-rules.yaml");
    let r = tool(
        &root(),
        "promtool",
        &["check", "rules", rules.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("SUCCESS: 11 rules found"), "{}", r.stdout);
    let tests = root().join("tests/prometheus/cinderblock-rules.test.yaml");
    let r = tool(
        &root(),
        "promtool",
        &["test", "rules", tests.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("SUCCESS"), "{}", r.stdout);

    // The dashboard's expressions, with Grafana's variables filled in, are
    // valid PromQL: promtool parses them as recording rules.
    let tmp = tempfile::tempdir().unwrap();
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in dashboard_exprs(&dashboard()).iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        file.push_str(&format!(
            "      - record: dashboard:expr{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let path = tmp.path().join("dashboard.yaml");
    fs::write(&path, &file).unwrap();
    let r = tool(
        &root(),
        "promtool",
        &["check", "rules", path.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{file}\n{}{}", r.stdout, r.stderr);
    // And the check can fail.
    fs::write(&path, file.replace("sum by (", "sum by ((")).unwrap();
    let r = tool(
        &root(),
        "promtool",
        &["check", "rules", path.to_str().unwrap()],
    );
    assert_ne!(r.code, 0, "promtool accepted broken PromQL");
}
