//! When the scheduled checks of backup repositories run: each
//! `BackupPolicy`'s `verify: {schedule, sample}` (a sampled verify) and
//! `drill: {schedule}` (restore drills), in the policy's time zone.
//!
//! Owns the due computation of checks (the same rules as backups: one
//! catch-up run after downtime, a new check waits for its next slot), one
//! run per (policy, check) at a time, retries with backoff when a check
//! could not run, and the records persisted in the schedule file: last slot,
//! last success, what the last run found, and the verify's cursor (where
//! the next sampled window begins).
//!
//! A check that ran and found damage is a *failed* check (counted, no new
//! last-success time) but its slot is closed: running it again at once
//! would only find the same damage. A check that could not run (the
//! repository unreachable) keeps its slot open and is retried with backoff.
//!
//! Pure: time is passed in. Must not: run a check itself (the
//! [`crate::backup::scheduled::BackupRunner`] does).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::backoff::Backoff;
use super::schedule::{BACKOFF, CronSpec};
pub use crate::backup::checks::{CheckKind, CheckSummary};
use crate::manifest::ManifestSet;

/// A (policy, check) pair's key in records and backoff: `policy/verify`.
pub fn key(policy: &str, kind: CheckKind) -> String {
    format!("{policy}/{}", kind.as_str())
}

/// What is remembered of one check across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckRecord {
    /// The latest slot that was run (or current when first seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_slot: Option<DateTime<Utc>>,
    /// When the last run that found nothing wrong finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<DateTime<Utc>>,
    /// When the last run finished, whatever it found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<DateTime<Utc>>,
    /// What the last run did, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<String>,
    /// What the last run found wrong (one line per damaged backup), or why
    /// it could not run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Where the next sampled verify's window begins.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cursor: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A check to start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueCheck {
    /// The policy.
    pub policy: String,
    /// Which check.
    pub kind: CheckKind,
    /// The slot it runs for.
    pub slot: DateTime<Utc>,
    /// The verify's cursor.
    pub cursor: u64,
}

/// One declared check, as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckView {
    /// The cron expression.
    pub schedule: String,
    /// Next run: a retry, now when due, else the next slot; or why the
    /// schedule cannot be read.
    pub next_run: Result<Option<DateTime<Utc>>, String>,
    /// Running now.
    pub running: bool,
    /// Consecutive runs that could not run.
    pub failures: u32,
    /// The record.
    pub record: CheckRecord,
}

/// The scheduler of checks.
#[derive(Debug)]
pub struct CheckScheduler {
    /// (policy, check) → (expression, its schedule or why it has none).
    declared: BTreeMap<(String, CheckKind), (String, Result<CronSpec, String>)>,
    records: BTreeMap<String, CheckRecord>,
    running: BTreeSet<(String, CheckKind)>,
    backoff: Backoff<DateTime<Utc>>,
}

impl CheckScheduler {
    /// Starting from the persisted records.
    pub fn new(records: BTreeMap<String, CheckRecord>) -> Self {
        Self {
            declared: BTreeMap::new(),
            records,
            running: BTreeSet::new(),
            backoff: Backoff::new(BACKOFF),
        }
    }

    /// Takes the policies in force; returns whether the records changed.
    pub fn set_desired(&mut self, set: &ManifestSet, now: DateTime<Utc>) -> bool {
        self.declared.clear();
        for (name, doc) in &set.backup_policies {
            let tz = doc.spec.timezone.as_str();
            let checks = [
                (
                    CheckKind::Verify,
                    doc.spec.verify.as_ref().map(|v| &v.schedule),
                ),
                (
                    CheckKind::Drill,
                    doc.spec.drill.as_ref().map(|d| &d.schedule),
                ),
            ];
            for (kind, schedule) in checks {
                if let Some(s) = schedule {
                    self.declared.insert(
                        (name.as_str().to_owned(), kind),
                        (s.as_str().to_owned(), CronSpec::parse(s.as_str(), tz)),
                    );
                }
            }
        }
        let mut changed = false;
        for ((policy, kind), (_, cron)) in &self.declared {
            if let std::collections::btree_map::Entry::Vacant(v) =
                self.records.entry(key(policy, *kind))
            {
                // First seen: the first run is at the next slot.
                let current = cron.as_ref().ok().and_then(|c| c.latest_at_or_before(now));
                v.insert(CheckRecord {
                    last_slot: current.or(Some(now)),
                    ..CheckRecord::default()
                });
                changed = true;
            }
        }
        let before = self.records.len();
        let declared: BTreeSet<String> = self.declared.keys().map(|(p, k)| key(p, *k)).collect();
        self.records.retain(|k, _| declared.contains(k));
        self.backoff.retain(|k| declared.contains(k));
        changed || before != self.records.len()
    }

    fn due_slot(&self, policy: &str, kind: CheckKind, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (_, Ok(cron)) = self.declared.get(&(policy.to_owned(), kind))? else {
            return None;
        };
        let latest = cron.latest_at_or_before(now)?;
        let last = self
            .records
            .get(&key(policy, kind))
            .and_then(|r| r.last_slot);
        last.is_none_or(|l| latest > l).then_some(latest)
    }

    /// The checks to start now: due, not running, not waiting for a retry.
    pub fn due(&self, now: DateTime<Utc>) -> Vec<DueCheck> {
        self.declared
            .keys()
            .filter(|pk| !self.running.contains(*pk))
            .filter(|(p, k)| !self.backoff.waiting(&key(p, *k), now))
            .filter_map(|(p, k)| {
                self.due_slot(p, *k, now).map(|slot| DueCheck {
                    policy: p.clone(),
                    kind: *k,
                    slot,
                    cursor: self.records.get(&key(p, *k)).map_or(0, |r| r.cursor),
                })
            })
            .collect()
    }

    /// A check was started.
    pub fn started(&mut self, due: &DueCheck) {
        self.running.insert((due.policy.clone(), due.kind));
    }

    /// A check ended: `Ok` when it ran (whatever it found), `Err` when it
    /// could not. Returns the backoff delay after an `Err`.
    pub fn finished(
        &mut self,
        due: &DueCheck,
        result: &Result<CheckSummary, String>,
        now: DateTime<Utc>,
    ) -> Option<Duration> {
        self.running.remove(&(due.policy.clone(), due.kind));
        let k = key(&due.policy, due.kind);
        let record = self.records.entry(k.clone()).or_default();
        match result {
            Ok(s) => {
                record.last_slot = Some(record.last_slot.map_or(due.slot, |l| l.max(due.slot)));
                record.last_run = Some(now);
                record.last_result = Some(s.text.clone());
                record.problems.clone_from(&s.problems);
                if s.problems.is_empty() {
                    record.last_success = Some(now);
                }
                if let Some(c) = s.cursor {
                    record.cursor = c;
                }
                self.backoff.succeed(&k);
                None
            }
            Err(e) => {
                record.problems = vec![e.clone()];
                Some(self.backoff.fail(&k, now, e))
            }
        }
    }

    /// The earliest time a check becomes due after `now`.
    pub fn next_wakeup(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.declared
            .keys()
            .filter(|pk| !self.running.contains(*pk))
            .filter_map(|(p, k)| self.next_run(p, *k, now))
            .filter(|t| *t > now)
            .min()
    }

    fn next_run(&self, policy: &str, kind: CheckKind, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (_, Ok(cron)) = self.declared.get(&(policy.to_owned(), kind))? else {
            return None;
        };
        if let Some(e) = self.backoff.get(&key(policy, kind))
            && e.retry_at > now
        {
            return Some(e.retry_at);
        }
        if self.due_slot(policy, kind, now).is_some() {
            return Some(now);
        }
        cron.next_after(now)
    }

    /// The declared checks of `policy`, by kind.
    pub fn views(&self, policy: &str, now: DateTime<Utc>) -> BTreeMap<CheckKind, CheckView> {
        self.declared
            .iter()
            .filter(|((p, _), _)| p == policy)
            .map(|((p, k), (expr, cron))| {
                let running = self.running.contains(&(p.clone(), *k));
                let next_run = match cron {
                    Err(e) => Err(e.clone()),
                    Ok(_) if running => Ok(None),
                    Ok(_) => Ok(self.next_run(p, *k, now)),
                };
                (
                    *k,
                    CheckView {
                        schedule: expr.clone(),
                        next_run,
                        running,
                        failures: self.backoff.get(&key(p, *k)).map_or(0, |e| e.failures),
                        record: self.records.get(&key(p, *k)).cloned().unwrap_or_default(),
                    },
                )
            })
            .collect()
    }

    /// The persisted records.
    pub fn records(&self) -> &BTreeMap<String, CheckRecord> {
        &self.records
    }

    /// Checks running now.
    pub fn running(&self) -> usize {
        self.running.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn set(extra: &str) -> ManifestSet {
        let text = format!(
            "apiVersion: cinderblock.dev/v1alpha1\nkind: BackupPolicy\nmetadata:\n  name: nightly\nspec:\n  schedule: \"0 2 * * *\"\n  timezone: Europe/Berlin\n  target:\n    path: /srv/backup\n{extra}"
        );
        let loaded = crate::manifest::load::load_source(Path::new("t.yaml"), &text);
        assert_eq!(loaded.errors(), 0, "{:?}", loaded.diagnostics);
        loaded.set
    }

    #[allow(clippy::unnecessary_wraps)] // a runner's result, as finished() takes it
    fn ran(text: &str, problems: &[&str], cursor: Option<u64>) -> Result<CheckSummary, String> {
        Ok(CheckSummary {
            text: text.into(),
            problems: problems.iter().map(|s| (*s).to_owned()).collect(),
            cursor,
        })
    }

    #[test]
    fn checks_run_on_their_own_schedules_in_the_policy_zone_and_keep_the_cursor() {
        let set = set(
            "  verify: {schedule: \"0 4 * * *\", sample: 25}\n  drill: {schedule: \"0 5 * * 0\"}\n",
        );
        let mut s = CheckScheduler::new(BTreeMap::new());
        // Sunday 1 March 2026, 12:00 UTC.
        let now = at("2026-03-01T12:00:00Z");
        assert!(s.set_desired(&set, now));
        assert!(s.due(now).is_empty(), "new checks wait for their next slot");
        // 04:00 Berlin is 03:00 UTC in winter.
        assert_eq!(s.next_wakeup(now), Some(at("2026-03-02T03:00:00Z")));
        let t = at("2026-03-02T03:00:01Z");
        let due = s.due(t);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].kind, due[0].cursor), (CheckKind::Verify, 0));
        s.started(&due[0]);
        assert!(s.due(t).is_empty(), "one run at a time");
        assert_eq!(s.finished(&due[0], &ran("checked", &[], Some(7)), t), None);
        let v = &s.views("nightly", t)[&CheckKind::Verify];
        assert_eq!(v.record.cursor, 7);
        assert_eq!(v.record.last_success, Some(t));
        assert_eq!(v.next_run, Ok(Some(at("2026-03-03T03:00:00Z"))));
        // The next verify starts at the cursor.
        let due = s.due(at("2026-03-03T03:00:00Z"));
        assert_eq!(due[0].cursor, 7);
        // The weekly drill: Sunday 05:00 Berlin.
        assert_eq!(
            s.views("nightly", t)[&CheckKind::Drill].next_run,
            Ok(Some(at("2026-03-08T04:00:00Z")))
        );
    }

    #[test]
    fn damage_found_closes_the_slot_without_a_success_and_a_check_that_cannot_run_retries() {
        let set = set("  drill: {schedule: \"0 5 * * *\"}\n");
        let mut s = CheckScheduler::new(BTreeMap::new());
        s.set_desired(&set, at("2026-03-01T12:00:00Z"));
        let t = at("2026-03-02T04:00:00Z");
        let due = s.due(t).pop().unwrap();
        s.started(&due);
        let damaged = "volume data, backup 1a2b3c4d: 1 chunk(s) of the restored volume differ";
        assert_eq!(
            s.finished(&due, &ran("drilled 2 volume(s)", &[damaged], None), t),
            None
        );
        let v = &s.views("nightly", t)[&CheckKind::Drill];
        assert_eq!(v.record.last_success, None, "damage is not a success");
        assert_eq!(v.record.problems, [damaged]);
        assert!(s.due(t).is_empty(), "not re-run at once");
        // Next day: the repository is unreachable: retried with backoff.
        let t2 = at("2026-03-03T04:00:00Z");
        let due = s.due(t2).pop().unwrap();
        s.started(&due);
        let delay = s.finished(&due, &Err("cannot open the repository".into()), t2);
        assert_eq!(delay, Some(BACKOFF.base));
        assert!(s.due(t2).is_empty());
        assert_eq!(s.views("nightly", t2)[&CheckKind::Drill].failures, 1);
        let retry = t2 + chrono::Duration::seconds(31);
        let due = s.due(retry).pop().unwrap();
        s.started(&due);
        s.finished(&due, &ran("drilled 2 volume(s)", &[], None), retry);
        let v = &s.views("nightly", retry)[&CheckKind::Drill];
        assert_eq!(v.record.last_success, Some(retry));
        assert!(v.record.problems.is_empty());
        assert_eq!(v.failures, 0);
        // A check dropped from the policy is forgotten.
        assert!(s.set_desired(&self::set(""), retry));
        assert!(s.records().is_empty());
    }
}
