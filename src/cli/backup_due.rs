//! The `Backups` section of `plan`, as text and Markdown, from the rows
//! [`crate::backup::due::schedule`] computes; and `now` (the clock, or
//! `CINDERBLOCK_NOW` in tests).

use std::fmt::Write as _;

pub use crate::backup::due::BackupDue;
use chrono::{DateTime, SecondsFormat, Utc};

fn when(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The `Backups:` section of the text plan (empty without rows).
pub fn text(rows: &[BackupDue]) -> String {
    let mut s = String::new();
    if rows.is_empty() {
        return s;
    }
    s.push_str("Backups (policy, schedule; last backup; next due):\n");
    let width = rows.iter().map(|r| r.volume.len()).max().unwrap_or(0);
    for r in rows {
        let last = r.last.as_ref().map_or_else(
            || "no backup yet".to_owned(),
            |l| format!("last {} {} ({})", l.kind, when(l.at), short(&l.id)),
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
    }
    s.push('\n');
    s
}

/// The backups section of the Markdown plan (empty without rows).
pub fn markdown(rows: &[BackupDue]) -> String {
    use crate::plan::markdown::text;
    let mut s = String::new();
    if rows.is_empty() {
        return s;
    }
    s.push_str("#### Backups\n\n| volume | policy | schedule | last backup | next |\n| --- | --- | --- | --- | --- |\n");
    for r in rows {
        let last = r.last.as_ref().map_or_else(
            || "no backup yet".to_owned(),
            |l| {
                format!(
                    "{} {} (<code>{}</code>)",
                    text(&l.kind),
                    when(l.at),
                    text(short(&l.id))
                )
            },
        );
        let due = match (&r.overdue_since, &r.next, &r.problem) {
            (_, _, Some(p)) => format!("⚠️ not scheduled: {}", text(p)),
            (Some(slot), _, _) => format!("⚠️ **due now** (the {} slot was not run)", when(*slot)),
            (None, Some(next), _) => when(*next),
            (None, None, None) => "not scheduled".to_owned(),
        };
        let _ = writeln!(
            s,
            "| <code>{}</code> | <code>{}</code> | <code>{}</code> {} | {last} | {due} |",
            text(&r.volume),
            text(&r.policy),
            text(&r.schedule),
            text(&r.timezone)
        );
    }
    s.push('\n');
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
