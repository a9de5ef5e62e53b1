//! When backups are due: each volume's policy, its schedule in the policy's
//! time zone ([`CronSpec`]), and what `plan` shows of it ([`schedule`]).
//!
//! Pure: the manifests, the last successful backup of each volume (from the
//! state directory's catalogue: [`last_backups`]) and `now` go in; rows come
//! out. The due rule is the agent's scheduler's: a volume whose latest slot
//! at or before `now` is newer than its last backup is due now (a missed
//! slot); one that was never backed up waits for its next slot, as the agent
//! does. The planner stays free of clocks and catalogues: callers put these
//! rows beside the plan.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::catalog::{Catalog, Status};
use crate::manifest::{ManifestSet, Name, VolumeSpec};

/// The volume's backup policy, or its consistency group's.
pub fn policy_of(set: &ManifestSet, vol: &VolumeSpec) -> Option<Name> {
    vol.backup_policy.clone().or_else(|| {
        vol.consistency_group
            .as_ref()
            .and_then(|g| set.consistency_groups.get(g))
            .and_then(|g| g.spec.backup_policy.clone())
    })
}

/// The volumes backed up under `policy` (their own or their consistency
/// group's).
pub fn volumes_of(set: &ManifestSet, policy: &Name) -> Vec<Name> {
    set.volumes
        .iter()
        .filter(|(_, d)| policy_of(set, &d.spec).as_ref() == Some(policy))
        .map(|(n, _)| n.clone())
        .collect()
}

/// Each volume's newest good backup in the catalogue.
pub fn last_backups(cat: &Catalog) -> BTreeMap<String, LastBackup> {
    let mut last: BTreeMap<String, LastBackup> = BTreeMap::new();
    for e in cat.backups.values().filter(|e| e.status == Status::Ok) {
        if last.get(&e.volume.name).is_none_or(|l| l.at < e.started_at) {
            last.insert(
                e.volume.name.clone(),
                LastBackup {
                    id: e.id.to_string(),
                    kind: e
                        .kind
                        .map_or_else(|| "backup".to_owned(), |k| k.to_string()),
                    at: e.started_at,
                },
            );
        }
    }
    last
}

/// A parsed schedule in its time zone.
#[derive(Debug, Clone)]
pub struct CronSpec {
    cron: croner::Cron,
    tz: chrono_tz::Tz,
}

impl CronSpec {
    /// Parses a 5-field expression (or `@daily` and friends) read in `tz`.
    pub fn parse(expr: &str, tz: &str) -> Result<Self, String> {
        // croner knows @daily but not its synonym @midnight.
        let expr = if expr.trim() == "@midnight" {
            "@daily"
        } else {
            expr
        };
        let cron = croner::Cron::from_str(expr).map_err(|e| format!("schedule {expr:?}: {e}"))?;
        let tz = chrono_tz::Tz::from_str(tz).map_err(|_| {
            format!("unknown time zone {tz:?} (an IANA name such as UTC or Europe/Berlin)")
        })?;
        Ok(Self { cron, tz })
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The latest slot at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&t.with_timezone(&self.tz), true)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The longest time between two consecutive slots after `t`, looked at
    /// over the next 400 slots or 63 days (two months: a monthly schedule
    /// has at least one gap in it): the age the newest backup may reach
    /// before a slot has been missed. `None` with fewer than two slots.
    pub fn longest_gap(&self, t: DateTime<Utc>) -> Option<chrono::Duration> {
        let end = t + chrono::Duration::days(63);
        let mut prev = self.next_after(t)?;
        let mut longest: Option<chrono::Duration> = None;
        for _ in 0..400 {
            let Some(next) = self.next_after(prev) else {
                break;
            };
            let gap = next - prev;
            longest = Some(longest.map_or(gap, |l| l.max(gap)));
            if next > end {
                break;
            }
            prev = next;
        }
        longest
    }
}

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
        let Some(policy) = policy_of(set, &vol.spec) else {
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
