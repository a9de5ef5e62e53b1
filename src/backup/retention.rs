//! Retention: which backups of one volume to keep, and why. Pure: no I/O,
//! no clock; the same input gives the same decisions.
//!
//! restic's `forget` semantics: the rules are `OR`ed. Backups are taken newest
//! first; `keepLast N` keeps the first N; each bucket rule (`keepHourly`,
//! `keepDaily`, `keepWeekly` — ISO weeks —, `keepMonthly`, `keepYearly`)
//! keeps the newest backup of each of its N most recent buckets *that hold a
//! backup* (a quiet week does not use up a weekly slot). Buckets are computed
//! in UTC (restic uses the local time zone; a storage host's local zone is
//! an accident, UTC is not). On top of restic: the newest *successful*
//! backup of the volume (not marked damaged by `verify`) is always kept, so
//! a run of bad backups can never retire the last good one; and with no
//! rules at all everything is kept (a `BackupPolicy` without `retention`
//! keeps all).

use std::fmt;

use chrono::{DateTime, Datelike, Timelike, Utc};
use uuid::Uuid;

use crate::manifest::Retention;

/// Why a backup is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Among the `keepLast` newest.
    Last,
    /// Newest of its hour.
    Hourly,
    /// Newest of its day.
    Daily,
    /// Newest of its ISO week.
    Weekly,
    /// Newest of its month.
    Monthly,
    /// Newest of its year.
    Yearly,
    /// The volume's newest successful backup.
    LastSuccessful,
    /// The policy has no retention rules.
    NoRules,
    /// Another member of its group backup is kept: a group backup's
    /// members are kept or forgotten together.
    Group,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Last => "last",
            Self::Hourly => "hourly",
            Self::Daily => "daily",
            Self::Weekly => "weekly",
            Self::Monthly => "monthly",
            Self::Yearly => "yearly",
            Self::LastSuccessful => "last successful",
            Self::NoRules => "no retention rules",
            Self::Group => "kept with its group",
        })
    }
}

/// One backup as retention sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Its id.
    pub id: Uuid,
    /// When it was taken.
    pub time: DateTime<Utc>,
    /// Not known to be damaged.
    pub successful: bool,
}

/// The verdict on one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The backup.
    pub id: Uuid,
    /// When it was taken.
    pub time: DateTime<Utc>,
    /// Why it is kept; empty means it is forgotten.
    pub reasons: Vec<Reason>,
}

impl Decision {
    /// Whether it stays.
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// Maps a time to its bucket (hour, day, ISO week, month, year) as a number.
type Bucket = fn(DateTime<Utc>) -> i64;

/// Decides for every candidate (any order in; newest first out).
pub fn apply(rules: Option<&Retention>, candidates: &[Candidate]) -> Vec<Decision> {
    let mut list: Vec<Candidate> = candidates.to_vec();
    list.sort_by_key(|c| std::cmp::Reverse((c.time, c.id)));
    let mut out: Vec<Decision> = list
        .iter()
        .map(|c| Decision {
            id: c.id,
            time: c.time,
            reasons: Vec::new(),
        })
        .collect();
    let rules = rules.filter(|r| r.keeps_something());
    let Some(rules) = rules else {
        for d in &mut out {
            d.reasons.push(Reason::NoRules);
        }
        return out;
    };
    let keep_last = rules.keep_last.unwrap_or(0) as usize;
    let buckets: [(Option<u32>, Reason, Bucket); 5] = [
        (rules.keep_hourly, Reason::Hourly, |t| {
            i64::from(t.year()) * 1_000_000
                + i64::from(t.month()) * 10_000
                + i64::from(t.day()) * 100
                + i64::from(t.hour())
        }),
        (rules.keep_daily, Reason::Daily, |t| {
            i64::from(t.year()) * 10_000 + i64::from(t.month()) * 100 + i64::from(t.day())
        }),
        (rules.keep_weekly, Reason::Weekly, |t| {
            let w = t.iso_week();
            i64::from(w.year()) * 100 + i64::from(w.week())
        }),
        (rules.keep_monthly, Reason::Monthly, |t| {
            i64::from(t.year()) * 100 + i64::from(t.month())
        }),
        (rules.keep_yearly, Reason::Yearly, |t| i64::from(t.year())),
    ];
    let mut state: Vec<(u32, Option<i64>)> =
        buckets.iter().map(|b| (b.0.unwrap_or(0), None)).collect();
    for (nr, d) in out.iter_mut().enumerate() {
        if nr < keep_last {
            d.reasons.push(Reason::Last);
        }
        for (i, (_, reason, bucket)) in buckets.iter().enumerate() {
            let (left, prev) = &mut state[i];
            let key = bucket(d.time);
            if *left > 0 && *prev != Some(key) {
                d.reasons.push(*reason);
                *prev = Some(key);
                *left -= 1;
            }
        }
    }
    if let Some(pos) = list.iter().position(|c| c.successful) {
        out[pos].reasons.push(Reason::LastSuccessful);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn rules(
        last: u32,
        hourly: u32,
        daily: u32,
        weekly: u32,
        monthly: u32,
        yearly: u32,
    ) -> Retention {
        let n = |v| (v > 0).then_some(v);
        Retention {
            keep_last: n(last),
            keep_hourly: n(hourly),
            keep_daily: n(daily),
            keep_weekly: n(weekly),
            keep_monthly: n(monthly),
            keep_yearly: n(yearly),
        }
    }

    /// 100 backups over 2025: every 3 days 16 hours, starting 1 January
    /// 2025 02:00 UTC, plus two on the last day so the hourly rule has
    /// something to pick between.
    fn year_of_backups() -> Vec<Candidate> {
        let start = Utc.with_ymd_and_hms(2025, 1, 1, 2, 0, 0).unwrap();
        let mut v: Vec<Candidate> = (0..98u128)
            .map(|i| Candidate {
                id: Uuid::from_u128(i + 1),
                time: start + Duration::hours(88 * i64::try_from(i).unwrap()),
                successful: true,
            })
            .collect();
        let last = v.last().unwrap().time;
        for (k, mins) in [(99u128, 20i64), (100, 90)] {
            v.push(Candidate {
                id: Uuid::from_u128(k),
                time: last + Duration::minutes(mins),
                successful: true,
            });
        }
        v
    }

    fn kept(decisions: &[Decision]) -> Vec<(u128, String)> {
        decisions
            .iter()
            .filter(|d| d.keep())
            .map(|d| {
                let r: Vec<String> = d.reasons.iter().map(ToString::to_string).collect();
                (d.id.as_u128(), r.join(","))
            })
            .collect()
    }

    #[test]
    fn hundred_backups_over_a_year() {
        let set = year_of_backups();
        assert_eq!(set.len(), 100);
        // #98 is the 98th 88-hour step: 2025-12-22 (a Monday) 18:00; #99 and
        // #100 follow at 18:20 and 19:30.
        assert_eq!(
            set[97].time,
            Utc.with_ymd_and_hms(2025, 12, 22, 18, 0, 0).unwrap()
        );
        let d = apply(Some(&rules(3, 2, 7, 4, 12, 2)), &set);
        assert_eq!(d.len(), 100);
        let monthly = |id| (id, "monthly".to_owned());
        assert_eq!(
            kept(&d),
            vec![
                // The newest is kept by every rule.
                (
                    100,
                    "last,hourly,daily,weekly,monthly,yearly,last successful".into()
                ),
                // keepLast 3; keepHourly 2 takes the 18:00 hour's newest
                // (#99), #98 being in the same hour.
                (99, "last,hourly".into()),
                (98, "last".into()),
                // keepDaily 7: one per day holding a backup (Dec 19, 15, 11,
                // 8, 4, Nov 30). keepWeekly 4: ISO weeks 52 (#100), 51 (#97,
                // Fri 19th; #96 is Mon 15th, same week), 50 (#95), 49 (#93).
                (97, "daily,weekly".into()),
                (96, "daily".into()),
                (95, "daily,weekly".into()),
                (94, "daily".into()),
                (93, "daily,weekly".into()),
                (92, "daily,monthly".into()),
                // keepMonthly 12: the newest of each month back to January.
                monthly(83),
                monthly(75),
                monthly(67),
                monthly(58),
                monthly(50),
                monthly(42),
                monthly(33),
                monthly(25),
                monthly(17),
                monthly(9),
            ]
        );
        // keepYearly 2 finds only one year (2025): one yearly keep.
        let yearly = d
            .iter()
            .filter(|x| x.reasons.contains(&Reason::Yearly))
            .count();
        assert_eq!(yearly, 1);
        assert_eq!(d.iter().filter(|x| x.keep()).count(), 19);
        // What is forgotten is exactly the rest.
        assert_eq!(d.iter().filter(|x| !x.keep()).count(), 81);
    }

    #[test]
    fn each_rule_alone() {
        let set = year_of_backups();
        let count = |r: Retention| apply(Some(&r), &set).iter().filter(|d| d.keep()).count();
        assert_eq!(count(rules(5, 0, 0, 0, 0, 0)), 5);
        // 98 distinct hours + #99 shares #98's hour: 99 hours hold backups.
        assert_eq!(count(rules(0, 1000, 0, 0, 0, 0)), 99);
        assert_eq!(count(rules(0, 0, 1000, 0, 0, 0)), 98);
        assert_eq!(count(rules(0, 0, 0, 1000, 0, 0)), 52);
        assert_eq!(count(rules(0, 0, 0, 0, 1000, 0)), 12);
        assert_eq!(count(rules(0, 0, 0, 0, 0, 1000)), 1);
        assert_eq!(count(Retention::default()), 100);
        let all = apply(None, &set);
        assert!(all.iter().all(|d| d.reasons == vec![Reason::NoRules]));
    }

    #[test]
    fn last_successful_backup_survives_a_run_of_damaged_ones() {
        let mut set = year_of_backups();
        // The three newest are damaged; keepLast 2 would keep only them.
        for c in set.iter_mut().rev().take(3) {
            c.successful = false;
        }
        let d = apply(Some(&rules(2, 0, 0, 0, 0, 0)), &set);
        assert_eq!(
            kept(&d),
            vec![
                (100, "last".into()),
                (99, "last".into()),
                (97, "last successful".into()),
            ]
        );
    }

    #[test]
    fn iso_weeks_span_years() {
        // 2024-12-30 is in ISO week 1 of 2025, as is 2025-01-02.
        let a = Candidate {
            id: Uuid::from_u128(1),
            time: Utc.with_ymd_and_hms(2024, 12, 30, 0, 0, 0).unwrap(),
            successful: true,
        };
        let b = Candidate {
            id: Uuid::from_u128(2),
            time: Utc.with_ymd_and_hms(2025, 1, 2, 0, 0, 0).unwrap(),
            successful: true,
        };
        let d = apply(Some(&rules(0, 0, 0, 2, 0, 0)), &[a, b]);
        assert_eq!(kept(&d), vec![(2, "weekly,last successful".into())]);
    }
}
