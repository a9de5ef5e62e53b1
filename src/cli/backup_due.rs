//! The `Backups` section of `plan`, as text and Markdown, from the rows
//! [`crate::backup::due::schedule`] and [`crate::backup::due::checks`]
//! compute out of the manifests, the catalogue and the agent's schedule
//! file; and `now` (the clock, or `CINDERBLOCK_NOW` in tests).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

pub use crate::backup::due::BackupDue;
use crate::backup::due::{self, CheckHistory, PolicyChecks};
use crate::manifest::ManifestSet;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

/// The backup section: each volume's schedule and next run, each policy's
/// checks.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Section {
    /// By volume.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backups: Vec<BackupDue>,
    /// By policy.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backup_checks: Vec<PolicyChecks>,
}

/// The section for `set`, from the catalogue and the agent's schedule file
/// in `state` (either unreadable is a warning: the plan is still worth
/// showing).
pub fn section(set: &ManifestSet, state: &Path) -> anyhow::Result<Section> {
    let uses = set
        .volumes
        .values()
        .any(|v| due::policy_of(set, &v.spec).is_some())
        || set
            .backup_policies
            .values()
            .any(|p| p.spec.verify.is_some() || p.spec.drill.is_some());
    if !uses {
        return Ok(Section::default());
    }
    let now = now()?;
    let cat = match crate::backup::catalog::Catalog::load(state) {
        Ok(cat) => Some(cat),
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "cannot read the backup catalogue; last backups not shown");
            None
        }
    };
    let history: BTreeMap<String, CheckHistory> = match crate::agent::schedule::load_records(state)
    {
        Ok((_, r)) => r
            .checks
            .into_iter()
            .map(|(k, c)| {
                (
                    k,
                    CheckHistory {
                        last_run: c.last_run,
                        last_success: c.last_success,
                        last_result: c.last_result,
                        problems: c.problems,
                    },
                )
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "cannot read the agent's schedule file; scheduled checks not shown");
            BTreeMap::new()
        }
    };
    let last = cat.as_ref().map(due::last_backups).unwrap_or_default();
    Ok(Section {
        backups: due::schedule(set, &last, now),
        backup_checks: due::checks(set, cat.as_ref(), &history, now),
    })
}

fn when(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The `Backups:` section of the text plan (empty without rows).
pub fn text(section: &Section) -> String {
    let mut s = String::new();
    let rows = &section.backups;
    if !rows.is_empty() {
        s.push_str("Backups (policy, schedule; last backup; next due):\n");
    }
    let width = rows.iter().map(|r| r.volume.len()).max().unwrap_or(0);
    for r in rows {
        let last = r.last.as_ref().map_or_else(
            || "no backup yet".to_owned(),
            |l| {
                format!(
                    "last {} {} ({}){}",
                    l.kind,
                    when(l.at),
                    short(&l.id),
                    l.read
                        .as_ref()
                        .map(|r| format!(", read by {}", r.method.as_str()))
                        .unwrap_or_default()
                )
            },
        );
        let due = match (&r.overdue_since, &r.next, &r.problem) {
            (_, _, Some(p)) => format!("not scheduled: {p}"),
            (Some(slot), _, _) => format!("due now (the {} slot was not run)", when(*slot)),
            (None, Some(next), _) => format!("next due {}", when(*next)),
            (None, None, None) => "not scheduled".to_owned(),
        };
        let _ = writeln!(
            s,
            "  {:<width$}  {} ({} {}); {last}; {due}",
            r.volume, r.policy, r.schedule, r.timezone
        );
        let _ = writeln!(s, "  {:<width$}    next run: {}", "", next_run(r));
        if let Some(w) = &r.warning {
            let _ = writeln!(s, "  {:<width$}    warning: {w}", "");
        }
    }
    let checks = &section.backup_checks;
    if !checks.is_empty() {
        s.push_str("Backup checks (policy, check, schedule; last passed; next due):\n");
    }
    for p in checks {
        for c in &p.checks {
            let next = match (&c.next, &c.problem) {
                (_, Some(e)) => format!("not scheduled: {e}"),
                (Some(n), None) => format!("next due {}", when(*n)),
                (None, None) => "not scheduled".to_owned(),
            };
            let _ = writeln!(
                s,
                "  {} {}{} ({} {}); last passed {}; {next}",
                p.policy,
                c.check,
                c.sample
                    .map(|n| format!(" {n} % a run"))
                    .unwrap_or_default(),
                c.schedule,
                p.timezone,
                c.last_success.map_or_else(|| "never".to_owned(), when)
            );
            if let (Some(t), Some(r)) = (&c.last_run, &c.last_result) {
                let _ = writeln!(s, "      last run {}: {r}", when(*t));
            }
            for problem in &c.problems {
                let _ = writeln!(s, "      problem: {problem}");
            }
        }
        for d in &p.damaged {
            let _ = writeln!(s, "  {} damaged: {d}", p.policy);
        }
    }
    if !s.is_empty() {
        s.push('\n');
    }
    s
}

/// What the next run does, in words.
fn next_run(r: &BackupDue) -> String {
    let n = &r.next_run;
    match &n.parent {
        Some(p) => format!("{} against {}, reading {}", n.kind, short(p), n.read),
        None => format!("{}, reading {}", n.kind, n.read),
    }
}

/// The backups section of the Markdown plan (empty without rows).
pub fn markdown(section: &Section) -> String {
    use crate::plan::markdown::text;
    let mut s = String::new();
    let rows = &section.backups;
    if !rows.is_empty() {
        s.push_str("#### Backups\n\n| volume | policy | schedule | last backup | next | next run |\n| --- | --- | --- | --- | --- | --- |\n");
    }
    for r in rows {
        let last = r.last.as_ref().map_or_else(
            || "no backup yet".to_owned(),
            |l| {
                format!(
                    "{} {} (<code>{}</code>){}",
                    text(&l.kind),
                    when(l.at),
                    text(short(&l.id)),
                    l.read
                        .as_ref()
                        .map(|r| format!(", read by {}", r.method.as_str()))
                        .unwrap_or_default()
                )
            },
        );
        let due = match (&r.overdue_since, &r.next, &r.problem) {
            (_, _, Some(p)) => format!("⚠️ not scheduled: {}", text(p)),
            (Some(slot), _, _) => format!("⚠️ **due now** (the {} slot was not run)", when(*slot)),
            (None, Some(next), _) => when(*next),
            (None, None, None) => "not scheduled".to_owned(),
        };
        let warning = r
            .warning
            .as_ref()
            .map(|w| format!("<br>⚠️ {}", text(w)))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "| <code>{}</code> | <code>{}</code> | <code>{}</code> {} | {last} | {due} | {}{warning} |",
            text(&r.volume),
            text(&r.policy),
            text(&r.schedule),
            text(&r.timezone),
            text(&next_run(r)),
        );
    }
    if !rows.is_empty() {
        s.push('\n');
    }
    let checks = &section.backup_checks;
    if !checks.is_empty() {
        s.push_str("#### Backup checks\n\n| policy | check | schedule | last passed | last run | next |\n| --- | --- | --- | --- | --- | --- |\n");
    }
    for p in checks {
        for c in &p.checks {
            let next = match (&c.next, &c.problem) {
                (_, Some(e)) => format!("⚠️ not scheduled: {}", text(e)),
                (Some(n), None) => when(*n),
                (None, None) => "not scheduled".to_owned(),
            };
            let mut last = c.last_result.as_deref().map(text).unwrap_or_default();
            for problem in &c.problems {
                let _ = write!(last, "<br>⚠️ {}", text(problem));
            }
            let _ = writeln!(
                s,
                "| <code>{}</code> | {}{} | <code>{}</code> {} | {} | {last} | {next} |",
                text(&p.policy),
                c.check,
                c.sample.map(|n| format!(" ({n} %)")).unwrap_or_default(),
                text(&c.schedule),
                text(&p.timezone),
                c.last_success.map_or_else(|| "never".to_owned(), when),
            );
        }
        for d in &p.damaged {
            let _ = writeln!(
                s,
                "| <code>{}</code> | ⚠️ damaged | | | {} | |",
                text(&p.policy),
                text(d)
            );
        }
    }
    if !checks.is_empty() {
        s.push('\n');
    }
    s
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// `CINDERBLOCK_NOW` (RFC 3339), for tests; otherwise the clock.
pub fn now() -> anyhow::Result<DateTime<Utc>> {
    match std::env::var("CINDERBLOCK_NOW") {
        Ok(v) => DateTime::parse_from_rfc3339(&v)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| anyhow::anyhow!("CINDERBLOCK_NOW={v:?} is not an RFC 3339 time: {e}")),
        Err(_) => Ok(Utc::now()),
    }
}
