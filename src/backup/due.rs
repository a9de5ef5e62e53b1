//! When backups are due: each volume's policy, its schedule in the policy's
//! time zone ([`CronSpec`]), and what `plan` shows of it ([`schedule`]):
//! when the next run is due, whether it will be full or incremental (and
//! against which backup), how the last one read (a fall back to reading
//! more than the volume's changes is a warning); and per policy its
//! scheduled checks ([`checks`]): verify and drill, when each last passed,
//! what the last run found, when the next is due, and the backups found
//! damaged.
//!
//! Pure: the manifests, each volume's backups (from the state directory's
//! catalogue: [`last_backups`]), the agent's check records and `now` go in;
//! rows come out. The due rule is the agent's scheduler's: a volume whose latest slot
//! at or before `now` is newer than its last backup is due now (a missed
//! slot); one that was never backed up waits for its next slot, as the agent
//! does. The planner stays free of clocks and catalogues: callers put these
//! rows beside the plan.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::catalog::{Catalog, Status};
use super::engine::{Mode, ReadMethod, ReadRecord, next_is_incremental};
use super::format::BackupKind;
use crate::manifest::kinds::BackupPolicySpec;
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

/// Each volume's newest good backup in the catalogue, with the kinds of
/// its backups so far (what the next run's kind depends on).
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
                    read: e.read.clone(),
                    history: Vec::new(),
                },
            );
        }
    }
    // The repository's history of that volume (by its uuid: a volume made
    // again under the same name starts afresh), as the engine sees it:
    // every stored backup, damaged ones too.
    for l in last.values_mut() {
        let Some(uuid) =
            l.id.parse()
                .ok()
                .and_then(|id| cat.backups.get(&id))
                .map(|e| e.volume.uuid)
        else {
            continue;
        };
        let mut stored: Vec<_> = cat
            .backups
            .values()
            .filter(|e| e.volume.uuid == uuid && e.status != Status::Failed)
            .filter_map(|e| e.kind.map(|k| (e.started_at, e.id, k)))
            .collect();
        stored.sort_unstable_by_key(|(t, id, _)| (*t, *id));
        l.history = stored
            .into_iter()
            .map(|(_, id, k)| (id.to_string(), k))
            .collect();
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
    /// How it read the volume, and why (recorded since read records exist).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read: Option<ReadRecord>,
    /// The volume's stored backups (damaged ones too: the engine compares
    /// with the newest it finds), oldest first: id and kind.
    #[serde(skip)]
    pub history: Vec<(String, BackupKind)>,
}

/// What the next run of a volume's backup will do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NextRun {
    /// `full` or `incremental`.
    pub kind: String,
    /// The backup an incremental compares against (the newest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// How it is expected to read, in words.
    pub read: String,
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
    /// What the next run will do.
    pub next_run: NextRun,
    /// The last backup fell back to reading more than the volume's
    /// changes, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// What the next run of a volume under `spec` does, after `last`.
fn next_run(spec: &BackupPolicySpec, last: Option<&LastBackup>) -> NextRun {
    let mode = Mode::Policy {
        incremental: spec.incremental,
        full_every: spec.full_every,
    };
    let history = last.map_or(&[][..], |l| l.history.as_slice());
    let kinds: Vec<BackupKind> = history.iter().map(|(_, k)| *k).collect();
    let newest = history.last().map(|(id, _)| id.as_str());
    let parent = newest.filter(|_| next_is_incremental(mode, &kinds));
    let Some(parent) = parent else {
        return NextRun {
            kind: BackupKind::Full.to_string(),
            parent: None,
            read: match last.and_then(|l| l.read.as_ref()) {
                Some(r) if r.method == ReadMethod::FullScan => {
                    format!("every byte, as the last run: {}", r.reason)
                }
                _ => "what the volume holds (a thin LV's mapped ranges, a file's data \
                      extents, a thick LV whole)"
                    .to_owned(),
            },
        };
    };
    // How the last good backup read says what this back end does.
    let read = match last.and_then(|l| l.read.as_ref()) {
        Some(r) if r.method == ReadMethod::FullScan => {
            format!("every byte, as the last run: {}", r.reason)
        }
        Some(r) if r.method == ReadMethod::ChangedRanges || r.reason.contains("thin") => {
            "only the ranges changed since it (thin_delta against the thin snapshot kept on \
             this host; without that snapshot, every mapped range: a fallback)"
                .to_owned()
        }
        Some(_) => "the volume's allocated ranges, each chunk compared with it".to_owned(),
        None => "the volume's changed or allocated ranges, as its back end allows".to_owned(),
    };
    NextRun {
        kind: BackupKind::Incremental.to_string(),
        parent: Some(parent.to_owned()),
        read,
    }
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
        let warning = last
            .as_ref()
            .and_then(|l| l.read.as_ref())
            .filter(|r| r.fallback)
            .map(|r| {
                format!(
                    "the last backup fell back to {}: {}",
                    r.method.as_str(),
                    r.reason
                )
            });
        let mut row = BackupDue {
            next_run: next_run(spec, last.as_ref()),
            warning,
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

/// What the agent recorded of one scheduled check (its schedule file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckHistory {
    /// When the last run finished, whatever it found.
    pub last_run: Option<DateTime<Utc>>,
    /// When the last run that found nothing wrong finished.
    pub last_success: Option<DateTime<Utc>>,
    /// What the last run did, in words.
    pub last_result: Option<String>,
    /// What it found wrong, or why it could not run.
    pub problems: Vec<String>,
}

/// One declared check of a policy, as `plan` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckDue {
    /// `verify` or `drill`.
    pub check: String,
    /// The cron expression.
    pub schedule: String,
    /// A verify's share of the chunks per run, percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<u8>,
    /// When the last run finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run: Option<DateTime<Utc>>,
    /// When the last run that found nothing wrong finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success: Option<DateTime<Utc>>,
    /// What the last run did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_result: Option<String>,
    /// What the last run found wrong.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// The next slot after now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<DateTime<Utc>>,
    /// Why there is no next slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// A policy's checks and the backups found damaged in its repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyChecks {
    /// The policy.
    pub policy: String,
    /// Its time zone.
    pub timezone: String,
    /// Its declared checks (verify, drill).
    pub checks: Vec<CheckDue>,
    /// Catalogued backups of the policy found damaged (by `backup verify`,
    /// a drill, or a scheduled check), one line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub damaged: Vec<String>,
}

/// Each policy that declares a check or has damaged backups, sorted by
/// name. `history` is keyed `policy/verify`, `policy/drill`.
pub fn checks(
    set: &ManifestSet,
    cat: Option<&Catalog>,
    history: &BTreeMap<String, CheckHistory>,
    now: DateTime<Utc>,
) -> Vec<PolicyChecks> {
    let mut out = Vec::new();
    for (name, doc) in &set.backup_policies {
        let spec = &doc.spec;
        let tz = spec.timezone.as_str();
        let declared = [
            spec.verify
                .as_ref()
                .map(|v| ("verify", v.schedule.as_str(), Some(v.sample.get()))),
            spec.drill
                .as_ref()
                .map(|d| ("drill", d.schedule.as_str(), None)),
        ];
        let checks: Vec<CheckDue> = declared
            .into_iter()
            .flatten()
            .map(|(check, expr, sample)| {
                let h = history
                    .get(&format!("{name}/{check}"))
                    .cloned()
                    .unwrap_or_default();
                let (next, problem) = match CronSpec::parse(expr, tz) {
                    Ok(c) => match c.next_after(now) {
                        Some(n) => (Some(n), None),
                        None => (None, Some("the schedule has no future slot".to_owned())),
                    },
                    Err(e) => (None, Some(e)),
                };
                CheckDue {
                    check: check.to_owned(),
                    schedule: expr.to_owned(),
                    sample,
                    last_run: h.last_run,
                    last_success: h.last_success,
                    last_result: h.last_result,
                    problems: h.problems,
                    next,
                    problem,
                }
            })
            .collect();
        let mut damaged: Vec<_> = cat
            .into_iter()
            .flat_map(|c| c.backups.values())
            .filter(|e| e.status == Status::Damaged && e.policy.as_deref() == Some(name.as_str()))
            .map(|e| {
                (
                    e.started_at,
                    format!(
                        "volume {}, backup {} ({}){}",
                        e.volume.name,
                        e.id,
                        e.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                        e.detail
                            .as_ref()
                            .map(|d| format!(": {d}"))
                            .unwrap_or_default()
                    ),
                )
            })
            .collect();
        damaged.sort();
        if checks.is_empty() && damaged.is_empty() {
            continue;
        }
        out.push(PolicyChecks {
            policy: name.to_string(),
            timezone: tz.to_owned(),
            checks,
            damaged: damaged.into_iter().map(|(_, d)| d).collect(),
        });
    }
    out
}
