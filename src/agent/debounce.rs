//! Trailing-edge debouncing of file events.
//!
//! An editor saving a file, `git checkout` or `rsync` produce bursts of events;
//! reconciling after each would plan against half-written trees. The debouncer
//! fires once, `window` after the *last* event of a burst (trailing edge), so
//! the reconcile sees the finished tree. A burst that never pauses (a process
//! rewriting a file in a loop) still fires after `max_wait` from its first
//! event, so changes are never starved.
//!
//! Pure: instants are passed in; the watcher task owns the clock.

use std::time::{Duration, Instant};

/// Trailing-edge debouncer.
#[derive(Debug, Clone)]
pub struct Debouncer {
    window: Duration,
    max_wait: Duration,
    /// First event of the pending burst.
    first: Option<Instant>,
    /// Latest event of the pending burst.
    last: Option<Instant>,
}

impl Debouncer {
    /// Fires `window` after the last event, or `max_wait` after the first.
    pub fn new(window: Duration, max_wait: Duration) -> Self {
        Self {
            window,
            max_wait: max_wait.max(window),
            first: None,
            last: None,
        }
    }

    /// An event arrived at `now`.
    pub fn event(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// When the pending burst fires; `None` when nothing is pending.
    pub fn deadline(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + self.window).min(first + self.max_wait))
    }

    /// Whether the burst fires at `now`; firing clears it.
    pub fn fire(&mut self, now: Instant) -> bool {
        match self.deadline() {
            Some(d) if d <= now => {
                self.first = None;
                self.last = None;
                true
            }
            _ => false,
        }
    }

    /// Whether events are pending.
    pub fn pending(&self) -> bool {
        self.first.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn nothing_pending_never_fires() {
        let mut d = Debouncer::new(300 * MS, 3000 * MS);
        let t0 = Instant::now();
        assert_eq!(d.deadline(), None);
        assert!(!d.fire(t0 + 10_000 * MS));
        assert!(!d.pending());
    }

    #[test]
    fn fires_once_on_the_trailing_edge_of_a_burst() {
        let mut d = Debouncer::new(300 * MS, 3000 * MS);
        let t0 = Instant::now();
        // A burst: events 100 ms apart for half a second.
        for i in 0..6 {
            d.event(t0 + i * 100 * MS);
        }
        let last = t0 + 500 * MS;
        assert_eq!(d.deadline(), Some(last + 300 * MS));
        assert!(!d.fire(last + 299 * MS), "fired before the quiet window");
        assert!(d.fire(last + 300 * MS));
        assert!(!d.fire(last + 301 * MS), "fired twice for one burst");
        assert!(!d.pending());
    }

    #[test]
    fn a_new_event_pushes_the_deadline() {
        let mut d = Debouncer::new(300 * MS, 3000 * MS);
        let t0 = Instant::now();
        d.event(t0);
        assert!(!d.fire(t0 + 200 * MS));
        d.event(t0 + 250 * MS);
        assert!(
            !d.fire(t0 + 300 * MS),
            "the second event moved the deadline"
        );
        assert!(d.fire(t0 + 550 * MS));
    }

    #[test]
    fn an_endless_burst_fires_after_max_wait() {
        let mut d = Debouncer::new(300 * MS, 1000 * MS);
        let t0 = Instant::now();
        let mut fired = Vec::new();
        // An event every 100 ms for 2.5 s: never quiet for 300 ms.
        for i in 0..=25 {
            let now = t0 + i * 100 * MS;
            if d.fire(now) {
                fired.push(i);
            }
            d.event(now);
        }
        assert_eq!(fired, [10, 20], "fires every max_wait from a burst's start");
    }

    #[test]
    fn max_wait_is_at_least_the_window() {
        let mut d = Debouncer::new(300 * MS, 10 * MS);
        let t0 = Instant::now();
        d.event(t0);
        assert_eq!(d.deadline(), Some(t0 + 300 * MS));
    }
}
