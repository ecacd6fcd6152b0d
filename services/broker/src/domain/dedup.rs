//! Idempotent send: the (topic, message id) pairs stored within `messaging.dedup-window-ms`, so a producer's
//! retry after a timeout is answered with the first send's result instead of being stored twice.
//!
//! A bounded in-memory table (`dedup-max-entries`) with time expiry. An id is *reserved* before its append and
//! *completed* with its result after, so two concurrent sends of one id never both store. The table is
//! complete only once the broker has run a whole window and evicted nothing younger than the window; until
//! then [`Dedup::needs_index`] says the caller must also consult the store's message-id index (restarts keep
//! the guarantee).

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;

/// Where the first copy of a message id was stored: the fields of its `SendResult`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Queue it was appended to.
    pub queue_id: u32,
    /// Its offset in that queue.
    pub queue_offset: u64,
    /// Its CommitLog offset.
    pub commit_log_offset: u64,
    /// A delayed message's delivery time, ms since the epoch (0 = visible at once).
    pub deliver_at: u64,
}

/// What [`Dedup::reserve`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Not seen within the window: reserved for this send, which must [`Dedup::complete`] or
    /// [`Dedup::release`] it.
    Fresh,
    /// Stored within the window: answer this.
    Duplicate(Stored),
    /// Another send of the same id is being stored right now (retryable).
    InFlight,
}

#[derive(Debug)]
enum Entry {
    Reserved,
    Stored(Stored),
}

#[derive(Debug)]
struct Slot {
    at_ms: u64,
    entry: Entry,
}

#[derive(Debug, Default)]
struct State {
    /// `topic \0 id` → slot.
    map: HashMap<String, Slot>,
    /// Insertion order (time, key): expiry and eviction walk it from the front. A key re-inserted later has a
    /// newer slot time, so a stale front entry is recognised and skipped.
    order: VecDeque<(u64, String)>,
    /// Newest time of an entry evicted for space: ids stored at or before it may be missing from the map.
    evicted_until_ms: u64,
}

/// The dedup table. Window 0 turns it off.
#[derive(Debug)]
pub struct Dedup {
    window_ms: u64,
    max_entries: usize,
    started_ms: u64,
    state: Mutex<State>,
}

fn key(topic: &str, id: &str) -> String {
    let mut k = String::with_capacity(topic.len() + 1 + id.len());
    k.push_str(topic);
    k.push('\0');
    k.push_str(id);
    k
}

impl Dedup {
    /// A table remembering ids for `window_ms`, at most `max_entries` of them, for a broker started at
    /// `started_ms`.
    pub fn new(window_ms: u64, max_entries: usize, started_ms: u64) -> Self {
        Self { window_ms, max_entries: max_entries.max(1), started_ms, state: Mutex::new(State::default()) }
    }

    /// True when idempotent send is on (a non-zero window).
    pub fn enabled(&self) -> bool {
        self.window_ms > 0
    }

    /// The window, in ms.
    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// True when a miss in memory is not proof: the broker started less than a window ago, or an entry younger
    /// than the window was evicted for space. The caller then looks the id up in the store's index.
    pub fn needs_index(&self, now_ms: u64) -> bool {
        let since = now_ms.saturating_sub(self.window_ms);
        self.started_ms > since || self.state.lock().evicted_until_ms >= since
    }

    /// Looks up (topic, id) and, when it is not known, reserves it.
    // Hot path (one per message with a producer-given id): one lock, one hash lookup, amortised expiry.
    pub fn reserve(&self, topic: &str, id: &str, now_ms: u64) -> Reservation {
        let k = key(topic, id);
        let mut state = self.state.lock();
        self.expire(&mut state, now_ms);
        if let Some(slot) = state.map.get(&k) {
            return match slot.entry {
                Entry::Reserved => Reservation::InFlight,
                Entry::Stored(s) => Reservation::Duplicate(s),
            };
        }
        state.order.push_back((now_ms, k.clone()));
        state.map.insert(k, Slot { at_ms: now_ms, entry: Entry::Reserved });
        Reservation::Fresh
    }

    /// Records where a reserved id was stored (or, after an index hit, where its first copy is).
    pub fn complete(&self, topic: &str, id: &str, stored: Stored) {
        if let Some(slot) = self.state.lock().map.get_mut(&key(topic, id)) {
            slot.entry = Entry::Stored(stored);
        }
    }

    /// Forgets a reservation whose send failed, so a retry can store it.
    pub fn release(&self, topic: &str, id: &str) {
        let mut state = self.state.lock();
        let k = key(topic, id);
        if matches!(state.map.get(&k), Some(Slot { entry: Entry::Reserved, .. })) {
            state.map.remove(&k);
        }
    }

    /// Ids remembered now (metrics, tests).
    pub fn len(&self) -> usize {
        self.state.lock().map.len()
    }

    /// True when no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expire(&self, state: &mut State, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(self.window_ms);
        while let Some((at, _)) = state.order.front() {
            let (at, over) = (*at, state.map.len() >= self.max_entries);
            if at >= cutoff && !over {
                break;
            }
            let Some((at, k)) = state.order.pop_front() else { break };
            // A stale order entry (the key was released and reserved again later) leaves the newer slot alone.
            let current = state.map.get(&k).is_some_and(|s| s.at_ms == at);
            if !current {
                continue;
            }
            if at >= cutoff {
                // Evicted for space while still inside the window: misses are no longer proof.
                state.evicted_until_ms = state.evicted_until_ms.max(at);
            }
            state.map.remove(&k);
        }
        // Stale order entries of released keys are bounded by the map's own bound plus the releases since.
        if state.order.len() > self.max_entries.saturating_mul(2) {
            let map = &state.map;
            state.order.retain(|(at, k)| map.get(k).is_some_and(|s| s.at_ms == *at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Stored = Stored { queue_id: 1, queue_offset: 7, commit_log_offset: 700, deliver_at: 0 };

    #[test]
    fn a_stored_id_is_a_duplicate_within_the_window_and_fresh_after_it() {
        let d = Dedup::new(1_000, 10, 0);
        assert_eq!(d.reserve("t", "a", 5_000), Reservation::Fresh);
        assert_eq!(d.reserve("t", "a", 5_001), Reservation::InFlight, "concurrent second send of one id");
        d.complete("t", "a", S);
        assert_eq!(d.reserve("t", "a", 5_500), Reservation::Duplicate(S));
        assert_eq!(d.reserve("u", "a", 5_500), Reservation::Fresh, "ids are per topic");
        assert_eq!(d.reserve("t", "a", 6_001), Reservation::Fresh, "expired after the window");
    }

    #[test]
    fn a_released_reservation_can_be_stored_again() {
        let d = Dedup::new(1_000, 10, 0);
        assert_eq!(d.reserve("t", "a", 5_000), Reservation::Fresh);
        d.release("t", "a");
        assert_eq!(d.reserve("t", "a", 5_001), Reservation::Fresh);
        d.complete("t", "a", S);
        d.release("t", "a");
        assert_eq!(d.reserve("t", "a", 5_002), Reservation::Duplicate(S), "release never drops a stored id");
    }

    #[test]
    fn the_table_is_bounded_and_says_when_the_index_is_needed() {
        let d = Dedup::new(1_000, 3, 0);
        assert!(d.needs_index(500), "started less than a window ago");
        assert!(!d.needs_index(2_000));
        for (i, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
            assert_eq!(d.reserve("t", id, 2_000 + i as u64), Reservation::Fresh);
        }
        assert!(d.len() <= 3);
        assert!(d.needs_index(2_500), "an entry inside the window was evicted");
        assert!(!d.needs_index(3_100), "everything evicted has left the window");
    }
}
