//! Per-key exponential backoff: how long the agent leaves an object (or a
//! backup job) alone after it failed.
//!
//! Owns the failure count, the time of the next allowed attempt and the last
//! error of each key. The delay doubles with each consecutive failure from
//! `base`, capped at `cap`, and a success forgets the key (controller-runtime's
//! per-item limiter; its 5 ms base suits API calls, ours are storage steps, so
//! the agent uses a base of a second).
//!
//! Pure: time is passed in, so tests need no clock. Generic over the instant
//! type so the reconciler can use the monotonic clock and the backup scheduler
//! the wall clock (its slots are wall-clock times that are persisted).
//!
//! A failure says whether retrying can help ([`Retry`]): contention,
//! timeouts and I/O double from `base`; a refusal or a conflict, which only
//! a change can fix, waits `cap` at once (and is still retried then, since
//! what must change may change outside cinderblock).
//!
//! Rejected: jitter. One agent per host retries its own storage, not a shared
//! service, so there is no herd to spread; deterministic delays keep tests and
//! logs exact.

use std::collections::BTreeMap;
use std::ops::Add;
use std::time::Duration;

/// The delay policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Delay after the first failure.
    pub base: Duration,
    /// Longest delay.
    pub cap: Duration,
}

impl Policy {
    /// The delay after `failures` consecutive failures (1 = the first).
    pub fn delay(self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << shift)
            .map_or(self.cap, |d| d.min(self.cap))
    }
}

/// The state of one failing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<I> {
    /// Consecutive failures.
    pub failures: u32,
    /// The next attempt is allowed at this time.
    pub retry_at: I,
    /// The last failure's message.
    pub last_error: String,
    /// The last failure said a retry alone cannot help.
    pub permanent: bool,
}

/// Whether retrying a failure can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Yes (contention, a timeout, I/O): the delay doubles from `base`.
    Soon,
    /// Not until something changes (a refusal, a conflict): `cap` at once.
    AfterChange,
}

/// Failing keys and when each may be tried again.
#[derive(Debug, Clone)]
pub struct Backoff<I> {
    policy: Policy,
    entries: BTreeMap<String, Entry<I>>,
}

impl<I> Backoff<I>
where
    I: Copy + Ord + Add<Duration, Output = I>,
{
    /// No failures yet.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            entries: BTreeMap::new(),
        }
    }

    /// Records a failure of `key` at `now`; returns the delay before the next
    /// attempt.
    pub fn fail(&mut self, key: &str, now: I, error: &str) -> Duration {
        self.fail_as(key, now, error, Retry::Soon)
    }

    /// Records a failure of `key` at `now` that `retry` classifies; returns
    /// the delay before the next attempt.
    pub fn fail_as(&mut self, key: &str, now: I, error: &str, retry: Retry) -> Duration {
        let failures = self.entries.get(key).map_or(0, |e| e.failures) + 1;
        let delay = match retry {
            Retry::Soon => self.policy.delay(failures),
            Retry::AfterChange => self.policy.cap,
        };
        self.entries.insert(
            key.to_owned(),
            Entry {
                failures,
                retry_at: now + delay,
                last_error: error.to_owned(),
                permanent: retry == Retry::AfterChange,
            },
        );
        delay
    }

    /// Records a success: the key starts from scratch next time.
    pub fn succeed(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Forgets every key (the desired state changed: old failures say
    /// nothing about the new one).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Whether `key` must still wait at `now`.
    pub fn waiting(&self, key: &str, now: I) -> bool {
        self.entries.get(key).is_some_and(|e| now < e.retry_at)
    }

    /// The state of `key`, when it failed last time.
    pub fn get(&self, key: &str) -> Option<&Entry<I>> {
        self.entries.get(key)
    }

    /// The earliest retry time still in the future of `now`.
    pub fn next_retry(&self, now: I) -> Option<I> {
        self.entries
            .values()
            .map(|e| e.retry_at)
            .filter(|t| *t > now)
            .min()
    }

    /// Every failing key.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry<I>)> {
        self.entries.iter().map(|(k, e)| (k.as_str(), e))
    }

    /// Drops keys `keep` says no to (objects that are gone from the plan).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.entries.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const POLICY: Policy = Policy {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(60),
    };

    #[test]
    fn delay_doubles_from_base_and_is_capped() {
        let d: Vec<u64> = (1..=9).map(|n| POLICY.delay(n).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        // No overflow however long it keeps failing.
        assert_eq!(POLICY.delay(u32::MAX), Duration::from_secs(60));
        assert_eq!(POLICY.delay(0), Duration::from_secs(1));
    }

    #[test]
    fn failures_wait_and_success_resets() {
        let t0 = Instant::now();
        let mut b = Backoff::new(POLICY);
        assert!(!b.waiting("volume.a", t0));
        assert_eq!(b.fail("volume.a", t0, "boom"), Duration::from_secs(1));
        assert!(b.waiting("volume.a", t0));
        assert!(!b.waiting("volume.b", t0), "per key");
        assert!(!b.waiting("volume.a", t0 + Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.fail("volume.a", t1, "boom"), Duration::from_secs(2));
        assert_eq!(b.fail("volume.a", t1, "boom"), Duration::from_secs(4));
        let e = b.get("volume.a").unwrap();
        assert_eq!((e.failures, e.last_error.as_str()), (3, "boom"));
        assert_eq!(b.next_retry(t1), Some(t1 + Duration::from_secs(4)));
        b.succeed("volume.a");
        assert!(b.get("volume.a").is_none());
        assert_eq!(b.fail("volume.a", t1, "again"), Duration::from_secs(1));
        b.clear();
        assert_eq!(b.next_retry(t1), None);
    }

    #[test]
    fn a_failure_no_retry_can_fix_waits_the_cap_at_once() {
        let t0 = Instant::now();
        let mut b = Backoff::new(POLICY);
        assert_eq!(
            b.fail_as("volume.a", t0, "refused", Retry::AfterChange),
            Duration::from_secs(60)
        );
        assert!(b.get("volume.a").unwrap().permanent);
        assert!(b.waiting("volume.a", t0 + Duration::from_secs(59)));
        // A later retryable failure doubles from where the count is.
        assert_eq!(
            b.fail_as("volume.a", t0, "busy", Retry::Soon),
            Duration::from_secs(2)
        );
        assert!(!b.get("volume.a").unwrap().permanent);
    }

    #[test]
    fn next_retry_is_the_earliest_future_one() {
        let t0 = Instant::now();
        let mut b = Backoff::new(POLICY);
        b.fail("x", t0, "e");
        b.fail("y", t0, "e");
        b.fail("y", t0, "e");
        assert_eq!(b.next_retry(t0), Some(t0 + Duration::from_secs(1)));
        assert_eq!(
            b.next_retry(t0 + Duration::from_secs(1)),
            Some(t0 + Duration::from_secs(2))
        );
        b.retain(|k| k != "y");
        assert_eq!(b.entries().count(), 1);
    }
}
