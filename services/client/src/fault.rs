//! Fault avoidance shared by producers and consumers: a broker (a producer keys it by broker name, a consumer by
//! member address) whose call failed is passed over until its back-off has expired, then tried again.
//!
//! Only the caller decides what counts as a failure; the tracker just remembers until when each key is avoided.
//! Expiry is the probe: once the back-off has passed the key is no longer down, so the next call goes to it again
//! and either succeeds (it is back) or fails and marks it down for another back-off.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Keys that failed recently, each with the instant its back-off ends.
#[derive(Debug)]
pub(crate) struct Faults {
    backoff: Duration,
    until: Mutex<HashMap<String, Instant>>,
}

impl Faults {
    /// A tracker that avoids a failed key for `backoff`.
    pub(crate) fn new(backoff: Duration) -> Self {
        Self { backoff, until: Mutex::new(HashMap::new()) }
    }

    /// Records a failure of `key` now: it is avoided for one back-off from now.
    pub(crate) fn mark(&self, key: &str) {
        self.mark_at(key, Instant::now());
    }

    /// Records a failure of `key` at `now` (tests pass their own clock).
    pub(crate) fn mark_at(&self, key: &str, now: Instant) {
        self.until.lock().insert(key.to_owned(), now + self.backoff);
    }

    /// `key` answered: it is usable again at once (whatever was left of its back-off). Returns whether it had
    /// been marked down (so callers can log its return once).
    pub(crate) fn clear(&self, key: &str) -> bool {
        let mut until = self.until.lock();
        !until.is_empty() && until.remove(key).is_some()
    }

    /// Whether `key` is avoided at `now`.
    pub(crate) fn is_down_at(&self, key: &str, now: Instant) -> bool {
        self.until.lock().get(key).is_some_and(|until| *until > now)
    }

    /// Every key avoided at `now` (expired entries are dropped on the way).
    pub(crate) fn down_at(&self, now: Instant) -> Vec<String> {
        let mut until = self.until.lock();
        until.retain(|_, end| *end > now);
        until.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_key_is_down_until_its_backoff_expires_or_it_answers() {
        let faults = Faults::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert!(!faults.is_down_at("a", t0));
        faults.mark_at("a", t0);
        assert!(faults.is_down_at("a", t0 + Duration::from_secs(4)));
        assert!(!faults.is_down_at("a", t0 + Duration::from_secs(5)), "back-off over: probed again");
        assert_eq!(faults.down_at(t0 + Duration::from_secs(1)), ["a"]);
        assert!(faults.down_at(t0 + Duration::from_secs(6)).is_empty(), "expired entries are dropped");
        faults.mark_at("b", t0);
        assert!(faults.clear("b"));
        assert!(!faults.clear("b"), "cleared once");
        assert!(!faults.is_down_at("b", t0), "an answer ends the back-off");
    }
}
