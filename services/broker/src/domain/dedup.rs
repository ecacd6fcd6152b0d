//! Idempotent send: the (topic, message id) pairs stored within `messaging.dedup-window-ms`, so a producer's
//! retry after a timeout is answered with the first send's result instead of being stored twice.
//!
//! A bounded in-memory table (`dedup-max-entries`) with time expiry, keyed by a 128-bit hash of the pair under a
//! per-process random secret (no string per entry: about 110 bytes each). An id is *reserved* before its append
//! and *completed* with its result after, so two concurrent sends of one id never both store. Under a sustained
//! send rate above `max-entries / window` the oldest entries are evicted early: the window then shrinks to
//! `max-entries / rate` (counted, see [`Dedup::evicted_early`]). After a restart the table misses what was stored
//! before it; for one window after the newest of those messages, [`Dedup::needs_index`] says the caller must also
//! consult the store's message-id index (restarts keep the guarantee; a broker whose store held nothing recent
//! pays nothing).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque, hash_map};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use std::sync::atomic::{AtomicU64, Ordering};
use xxhash_rust::xxh3::{Xxh3, xxh3_128_with_secret};

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

/// A (topic, id) pair as the table knows it: the two halves of a 128-bit keyed hash (a false duplicate needs a
/// 128-bit collision: about 2^-128 per pair of ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(u64, u64);

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

/// The keys are already uniformly random: hash them by taking their first half.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached through `write_u64` below for `Key`; fold anything else in.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        if self.0 == 0 {
            self.0 = n;
        }
    }
}

#[derive(Debug, Default)]
struct State {
    map: HashMap<Key, Slot, BuildHasherDefault<KeyHasher>>,
    /// Insertion order (time, key): expiry and eviction walk it from the front. A key re-inserted later has a
    /// newer slot time, so a stale front entry is recognised and skipped.
    order: VecDeque<(u64, Key)>,
}

/// Length of the XXH3 secret (its default size; the streaming hasher takes exactly this).
const SECRET_LEN: usize = 192;

/// A secret from the OS's randomness (std's `RandomState` keys), stretched by hashing a counter.
fn random_secret() -> Box<[u8; SECRET_LEN]> {
    let state = RandomState::new();
    let mut secret = Box::new([0u8; SECRET_LEN]);
    for (i, chunk) in secret.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&state.hash_one(i).to_le_bytes());
    }
    secret
}

/// The dedup table. Window 0 turns it off.
#[derive(Debug)]
pub struct Dedup {
    window_ms: u64,
    max_entries: usize,
    /// Store time of the newest message stored before this broker started (0 = none): until a window after it,
    /// a miss in memory is not proof.
    incomplete_until_ms: u64,
    /// XXH3 secret drawn at start-up: which ids collide, in the table or in its buckets, cannot be worked out
    /// in advance.
    secret: Box<[u8; SECRET_LEN]>,
    state: Mutex<State>,
    evicted_early: AtomicU64,
}

impl Dedup {
    /// A table remembering ids for `window_ms`, at most `max_entries` of them, for a broker whose store's newest
    /// message before start was stored at `newest_before_start_ms` (0 = an empty store).
    pub fn new(window_ms: u64, max_entries: usize, newest_before_start_ms: u64) -> Self {
        Self {
            window_ms,
            max_entries: max_entries.max(1),
            incomplete_until_ms: newest_before_start_ms,
            secret: random_secret(),
            state: Mutex::new(State::default()),
            evicted_early: AtomicU64::new(0),
        }
    }

    /// True when idempotent send is on (a non-zero window).
    pub fn enabled(&self) -> bool {
        self.window_ms > 0
    }

    /// The window, in ms.
    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// The table's key of (topic, id).
    // Hot path (one per message with a producer-given id): one XXH3-128 pass over `topic NUL id` (two SipHash
    // passes were a tenth of the broker's instructions at batch 1000).
    pub fn key(&self, topic: &str, id: &str) -> Key {
        let hash = comet_model::hash_joined(
            &[topic.as_bytes(), &[0], id.as_bytes()],
            |joined| xxh3_128_with_secret(joined, &self.secret[..]),
            |parts| {
                let mut h = Xxh3::with_secret(*self.secret);
                parts.iter().for_each(|part| h.update(part));
                h.digest128()
            },
        );
        Key(hash as u64, (hash >> 64) as u64)
    }

    /// True when a miss in memory is not proof: messages stored before this broker started are younger than the
    /// window. The caller then looks the id up in the store's index.
    pub fn needs_index(&self, now_ms: u64) -> bool {
        self.incomplete_until_ms > 0 && self.incomplete_until_ms >= now_ms.saturating_sub(self.window_ms)
    }

    /// Looks `key` up and, when it is not known, reserves it.
    pub fn reserve(&self, key: Key, now_ms: u64) -> Reservation {
        let mut state = self.state.lock();
        self.expire(&mut state, now_ms);
        Self::reserve_in(&mut state, key, now_ms)
    }

    /// [`Dedup::reserve`] for every key of a batch under one lock, in order (a key twice in `keys` is
    /// [`Reservation::InFlight`] the second time). `None` keys (no producer id) are skipped.
    // Hot path: one lock per request, one hash lookup per message, amortised expiry.
    pub fn reserve_all(&self, keys: &[Option<Key>], now_ms: u64) -> Vec<Option<Reservation>> {
        let mut state = self.state.lock();
        self.expire(&mut state, now_ms);
        keys.iter().map(|k| k.map(|k| Self::reserve_in(&mut state, k, now_ms))).collect()
    }

    // One probe of the table per key: it is large and its slots are random, so each probe is a cache miss.
    fn reserve_in(state: &mut State, key: Key, now_ms: u64) -> Reservation {
        match state.map.entry(key) {
            hash_map::Entry::Occupied(slot) => match slot.get().entry {
                Entry::Reserved => Reservation::InFlight,
                Entry::Stored(s) => Reservation::Duplicate(s),
            },
            hash_map::Entry::Vacant(slot) => {
                slot.insert(Slot { at_ms: now_ms, entry: Entry::Reserved });
                state.order.push_back((now_ms, key));
                Reservation::Fresh
            }
        }
    }

    /// Records where a reserved id was stored (or, after an index hit, where its first copy is).
    pub fn complete(&self, key: Key, stored: Stored) {
        self.complete_all([(key, stored)]);
    }

    /// [`Dedup::complete`] for a batch under one lock.
    pub fn complete_all(&self, stored: impl IntoIterator<Item = (Key, Stored)>) {
        let mut state = self.state.lock();
        for (key, stored) in stored {
            if let Some(slot) = state.map.get_mut(&key) {
                slot.entry = Entry::Stored(stored);
            }
        }
    }

    /// Forgets a reservation whose send failed, so a retry can store it.
    pub fn release(&self, key: Key) {
        self.release_all([key]);
    }

    /// [`Dedup::release`] for a batch under one lock.
    pub fn release_all(&self, keys: impl IntoIterator<Item = Key>) {
        let mut state = self.state.lock();
        for key in keys {
            if matches!(state.map.get(&key), Some(Slot { entry: Entry::Reserved, .. })) {
                state.map.remove(&key);
            }
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

    /// Entries evicted for space while still inside the window (each shortened the window for its id).
    pub fn evicted_early(&self) -> u64 {
        self.evicted_early.load(Ordering::Relaxed)
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
            let hash_map::Entry::Occupied(slot) = state.map.entry(k) else { continue };
            if slot.get().at_ms != at {
                continue;
            }
            if at >= cutoff {
                self.evicted_early.fetch_add(1, Ordering::Relaxed);
            }
            slot.remove();
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
        let (ta, ua) = (d.key("t", "a"), d.key("u", "a"));
        assert_ne!(ta, ua, "ids are per topic");
        assert_eq!(d.key("t", "a"), ta, "keys are stable");
        assert_ne!(d.key("ta", ""), d.key("t", "a"), "the separator keeps topic and id apart");
        let long = "i".repeat(600);
        assert_eq!(d.key("t", &long), d.key("t", &long), "ids past the stack copy hash stably too");
        assert_ne!(d.key("t", &long), d.key("u", &long));
        assert_ne!(d.key("t", &long), d.key("t", &long[1..]));
        assert_eq!(d.reserve(ta, 5_000), Reservation::Fresh);
        assert_eq!(d.reserve(ta, 5_001), Reservation::InFlight, "concurrent second send of one id");
        d.complete(ta, S);
        assert_eq!(d.reserve(ta, 5_500), Reservation::Duplicate(S));
        assert_eq!(d.reserve(ua, 5_500), Reservation::Fresh);
        assert_eq!(d.reserve(ta, 6_001), Reservation::Fresh, "expired after the window");
    }

    #[test]
    fn a_released_reservation_can_be_stored_again() {
        let d = Dedup::new(1_000, 10, 0);
        let k = d.key("t", "a");
        assert_eq!(d.reserve(k, 5_000), Reservation::Fresh);
        d.release(k);
        assert_eq!(d.reserve(k, 5_001), Reservation::Fresh);
        d.complete(k, S);
        d.release(k);
        assert_eq!(d.reserve(k, 5_002), Reservation::Duplicate(S), "release never drops a stored id");
    }

    #[test]
    fn the_table_is_bounded_and_evictions_inside_the_window_are_counted() {
        let d = Dedup::new(1_000, 3, 0);
        for (i, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
            assert_eq!(d.reserve(d.key("t", id), 2_000 + i as u64), Reservation::Fresh);
        }
        assert!(d.len() <= 3);
        assert_eq!(d.evicted_early(), 1, "\"a\" left early, inside its window");
        assert!(!d.needs_index(2_500), "an empty store before start: the table is complete");
    }

    #[test]
    fn the_index_is_needed_until_a_window_after_the_newest_message_before_start() {
        let d = Dedup::new(1_000, 10, 5_000);
        assert!(d.needs_index(5_500));
        assert!(d.needs_index(6_000));
        assert!(!d.needs_index(6_001));
    }
}
