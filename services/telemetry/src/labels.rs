//! Bounded label values and per-collection snapshots.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::StringValue;
use parking_lot::{Mutex, RwLock};

/// The label value of every name beyond a [`LabelCap`]'s limit.
pub const OTHER: &str = "_other";

/// Label values for names clients choose (topics, groups): the first `cap` distinct names seen since start-up
/// keep their own value, every later one is reported as [`OTHER`], so a runaway number of topics cannot make
/// the series count (and Prometheus's memory) unbounded. A name keeps its slot after it is deleted.
#[derive(Debug)]
pub struct LabelCap {
    cap: usize,
    seen: RwLock<HashMap<Box<str>, StringValue>>,
    other: StringValue,
}

impl LabelCap {
    /// A cap of `cap` distinct values.
    pub fn new(cap: usize) -> Self {
        Self { cap, seen: RwLock::new(HashMap::new()), other: StringValue::from(OTHER) }
    }

    /// The label value for `name`: itself, or [`OTHER`] once `cap` other names took the slots.
    pub fn value(&self, name: &str) -> StringValue {
        {
            let seen = self.seen.read();
            if let Some(v) = seen.get(name) {
                return v.clone();
            }
            if seen.len() >= self.cap {
                return self.other.clone();
            }
        }
        let mut seen = self.seen.write();
        if let Some(v) = seen.get(name) {
            return v.clone();
        }
        if seen.len() >= self.cap {
            return self.other.clone();
        }
        let value = StringValue::from(Arc::<str>::from(name));
        seen.insert(name.into(), value.clone());
        value
    }

    /// True when `name` has (or would get) a value of its own.
    pub fn is_own(&self, name: &str) -> bool {
        self.value(name).as_str() != OTHER
    }
}

/// A value computed at most once per `max_age` and shared: the observable instruments of one collection
/// (e.g. consumer lag in messages and in time) read one computation instead of repeating it per instrument.
#[derive(Debug)]
pub struct Snapshot<T> {
    max_age: Duration,
    state: Mutex<Option<(Instant, Arc<T>)>>,
}

impl<T> Snapshot<T> {
    /// A snapshot recomputed when older than `max_age`.
    pub fn new(max_age: Duration) -> Self {
        Self { max_age, state: Mutex::new(None) }
    }

    /// The current value, computed by `compute` if missing or stale. Concurrent callers wait for one
    /// computation rather than repeating it.
    pub fn get(&self, compute: impl FnOnce() -> T) -> Arc<T> {
        let mut state = self.state.lock();
        if let Some((at, value)) = state.as_ref()
            && at.elapsed() < self.max_age
        {
            return Arc::clone(value);
        }
        let value = Arc::new(compute());
        *state = Some((Instant::now(), Arc::clone(&value)));
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_beyond_the_cap_share_the_other_value_and_earlier_ones_keep_theirs() {
        let cap = LabelCap::new(2);
        assert_eq!(cap.value("a").as_str(), "a");
        assert_eq!(cap.value("b").as_str(), "b");
        assert_eq!(cap.value("c").as_str(), OTHER);
        assert_eq!(cap.value("a").as_str(), "a");
        assert!(cap.is_own("b"));
        assert!(!cap.is_own("d"));
    }

    #[test]
    fn a_snapshot_is_computed_once_until_it_is_stale() {
        let snapshot = Snapshot::new(Duration::from_secs(60));
        let mut runs = 0;
        assert_eq!(*snapshot.get(|| 1), 1);
        assert_eq!(
            *snapshot.get(|| {
                runs += 1;
                2
            }),
            1
        );
        assert_eq!(runs, 0);
        let fresh = Snapshot::new(Duration::ZERO);
        assert_eq!(*fresh.get(|| 1), 1);
        assert_eq!(*fresh.get(|| 2), 2);
    }
}
