//! What `plan` shows of backups: each volume's policy and when its next
//! backup is due.
//!
//! Pure: the manifests, the last successful backup of each volume (from the
//! state directory's catalogue, read by the caller) and `now` go in; rows
//! come out. The due rule is the agent's scheduler's ([`CronSpec`], in the
//! policy's time zone, UTC by default): a volume whose latest slot at or
//! before `now` is newer than its last backup is due now (a missed slot); one
//! that was never backed up waits for its next slot, as the agent does.
//! Lives in the CLI layer so the planner stays free of clocks and catalogues.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::agent::schedule::CronSpec;
use crate::manifest::ManifestSet;

/// A volume's last successful backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastBackup {
    /// Its id.
    pub id: String,
    /// `full` or `incremental`.
    pub kind: String,
    /// When it started.
    pub at: DateTime<Utc>,
}

/// One volume's backup schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupDue {
    /// The volume.
    pub volume: String,
    /// Its policy (its own, or its consistency group's).
    pub policy: String,
    /// The cron expression.
    pub schedule: String,
    /// The time zone it is read in.
    pub timezone: String,
    /// The last successful backup, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<LastBackup>,
    /// Due now: the slot that has not been run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overdue_since: Option<DateTime<Utc>>,
    /// The next slot after now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<DateTime<Utc>>,
    /// Why there is no next slot (an unusable schedule or zone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The rows, sorted by volume name.
pub fn schedule(
    set: &ManifestSet,
    last: &BTreeMap<String, LastBackup>,
    now: DateTime<Utc>,
) -> Vec<BackupDue> {
    let mut rows = Vec::new();
    for (name, vol) in &set.volumes {
        let Some(policy) = super::backup::policy_of(set, &vol.spec) else {
            continue;
        };
        let Some(doc) = set.backup_policies.get(&policy) else {
            continue;
        };
        let spec = &doc.spec;
        let timezone = spec.timezone.as_str().to_owned();
        let expr = spec.schedule.as_str().to_owned();
        let last = last.get(name.as_str()).cloned();
        let mut row = BackupDue {
            volume: name.to_string(),
            policy: policy.to_string(),
            schedule: expr.clone(),
            timezone: timezone.clone(),
            last,
            overdue_since: None,
            next: None,
            problem: None,
        };
        match CronSpec::parse(&expr, &timezone) {
            Ok(cron) => {
                if let Some(l) = &row.last
                    && let Some(slot) = cron.latest_at_or_before(now)
                    && slot > l.at
                {
                    row.overdue_since = Some(slot);
                }
                row.next = cron.next_after(now);
                if row.next.is_none() {
                    row.problem = Some("the schedule has no future slot".to_owned());
                }
            }
            Err(e) => row.problem = Some(e),
        }
        rows.push(row);
    }
    rows
}

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
