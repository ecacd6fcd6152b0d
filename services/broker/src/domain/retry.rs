//! Retry and dead-letter decisions for messages a consumer group's listener failed: how long the next attempt
//! waits, when a message has used up its attempts, and the memory of recent send-backs that makes a consumer's
//! repeated ConsumerSendBack (after a timeout) store one retry copy, not two.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use comet_model::CommitLogOffset;
use parking_lot::Mutex;
use tokio::sync::OnceCell;

/// How long a send-back is remembered: far longer than any consumer retries one (its call timeout is seconds).
pub const SEND_BACK_MEMORY_MS: u64 = 10 * 60_000;
/// Most send-backs remembered (about 100 bytes each).
pub const SEND_BACK_MEMORY_ENTRIES: usize = 1 << 16;

/// Most retry delays a list may hold (the broker's default or a group's).
pub const MAX_RETRY_DELAYS: usize = 64;

/// Checks a list of retry delays: at most [`MAX_RETRY_DELAYS`]. (A delay beyond `messaging.max-delay-ms` is
/// capped to it when used, so a broker with a short maximum still honours RocketMQ's default levels.)
pub fn check_delays(delays: &[u64]) -> Result<(), String> {
    if delays.len() > MAX_RETRY_DELAYS {
        return Err(format!("{} delays; at most {MAX_RETRY_DELAYS}", delays.len()));
    }
    Ok(())
}

/// The delay before retry `attempt` (1-based): element `attempt - 1` of the group's delays, or of the broker's
/// defaults when the group has none; the last element repeats. 0 when both lists are empty.
pub fn retry_delay_ms(group_delays: &[u64], default_delays: &[u64], attempt: u32) -> u64 {
    let delays = if group_delays.is_empty() { default_delays } else { group_delays };
    let index = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
    delays.get(index).or_else(|| delays.last()).copied().unwrap_or(0)
}

/// True when a message failed for the `attempts`-th time goes to the dead-letter queue rather than to another
/// attempt: it already had `retry_max_times` redeliveries, or the consumer asked for it (`dead_letter`).
pub fn is_dead_letter(attempts: u32, retry_max_times: u32, dead_letter: bool) -> bool {
    dead_letter || attempts > retry_max_times
}

/// What a send-back did, answered again to a consumer repeating the same send-back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendBackOutcome {
    /// Stored in the dead-letter queue rather than as another attempt.
    pub dead_lettered: bool,
    /// The attempt count of the stored copy.
    pub reconsume_times: u32,
    /// When the retry becomes visible, ms since the epoch (0 when dead-lettered).
    pub deliver_at_ms: u64,
    /// The copy's CommitLog record (start, end): a repeated send-back waits for its replication too.
    pub stored: (u64, u64),
}

type Key = (String, u64);

/// Recent send-backs by (group, commit-log offset of the failed record), each remembered for `window_ms` and at
/// most `max_entries` of them (the oldest forgotten first), so memory stays bounded.
#[derive(Debug)]
pub struct SendBacks {
    window_ms: u64,
    max_entries: usize,
    inner: Mutex<Remembered>,
}

#[derive(Debug, Default)]
struct Remembered {
    slots: HashMap<Key, Arc<OnceCell<SendBackOutcome>>>,
    /// Insertion order with insertion time: what expires first.
    order: VecDeque<(u64, Key)>,
}

impl SendBacks {
    /// An empty memory keeping entries `window_ms` and at most `max_entries` (at least 1).
    pub fn new(window_ms: u64, max_entries: usize) -> Self {
        Self { window_ms, max_entries: max_entries.max(1), inner: Mutex::new(Remembered::default()) }
    }

    /// The slot of the send-back of `offset` by `group`: empty for the first caller, who fills it once stored
    /// (callers racing on one slot wait for the first and get its outcome; a failed attempt leaves it empty, so
    /// the consumer's retry stores it then).
    pub fn slot(&self, group: &str, offset: CommitLogOffset, now_ms: u64) -> Arc<OnceCell<SendBackOutcome>> {
        let mut inner = self.inner.lock();
        while inner.order.front().is_some_and(|(at, _)| at.saturating_add(self.window_ms) <= now_ms) {
            inner.forget_oldest();
        }
        let key = (group.to_owned(), offset.0);
        if let Some(slot) = inner.slots.get(&key) {
            return Arc::clone(slot);
        }
        while inner.order.len() >= self.max_entries {
            inner.forget_oldest();
        }
        let slot = Arc::new(OnceCell::new());
        inner.slots.insert(key.clone(), Arc::clone(&slot));
        inner.order.push_back((now_ms, key));
        slot
    }

    /// How many send-backs are remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().slots.len()
    }

    /// True when none is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Remembered {
    fn forget_oldest(&mut self) {
        if let Some((_, key)) = self.order.pop_front() {
            self.slots.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_n_waits_element_n_minus_one_and_the_last_delay_repeats() {
        let defaults = [10, 30, 60];
        assert_eq!(retry_delay_ms(&[], &defaults, 1), 10);
        assert_eq!(retry_delay_ms(&[], &defaults, 3), 60);
        assert_eq!(retry_delay_ms(&[], &defaults, 17), 60);
        assert_eq!(retry_delay_ms(&[200, 400], &defaults, 1), 200, "the group's delays win");
        assert_eq!(retry_delay_ms(&[200, 400], &defaults, 5), 400);
        assert_eq!(retry_delay_ms(&[], &[], 1), 0);
        assert_eq!(retry_delay_ms(&[], &defaults, 0), 10, "attempt 0 is treated as the first");
    }

    #[test]
    fn a_message_is_dead_lettered_after_its_last_redelivery_fails_or_on_request() {
        assert!(!is_dead_letter(1, 3, false));
        assert!(!is_dead_letter(3, 3, false), "the third redelivery is still made");
        assert!(is_dead_letter(4, 3, false));
        assert!(is_dead_letter(1, 3, true));
        assert!(is_dead_letter(1, 0, false), "no retries at all");
    }

    #[tokio::test]
    async fn a_repeated_send_back_gets_the_first_outcome_and_memory_is_bounded() {
        let memory = SendBacks::new(1_000, 2);
        let outcome = SendBackOutcome { dead_lettered: false, reconsume_times: 1, deliver_at_ms: 5, stored: (0, 1) };
        let first = memory.slot("g", CommitLogOffset(7), 0);
        first.get_or_init(|| async { outcome }).await;
        let again = memory.slot("g", CommitLogOffset(7), 10);
        assert_eq!(again.get(), Some(&outcome));
        assert!(memory.slot("other", CommitLogOffset(7), 10).get().is_none(), "another group is another send-back");
        // A third entry pushes out the oldest.
        assert!(memory.slot("g", CommitLogOffset(8), 20).get().is_none());
        assert_eq!(memory.len(), 2);
        assert!(memory.slot("g", CommitLogOffset(7), 30).get().is_none(), "forgotten once the memory is full");
        // Expiry by time.
        let memory = SendBacks::new(1_000, 100);
        memory.slot("g", CommitLogOffset(1), 0).get_or_init(|| async { outcome }).await;
        assert!(memory.slot("g", CommitLogOffset(1), 999).get().is_some());
        assert!(memory.slot("g", CommitLogOffset(2), 1_000).get().is_none());
        assert!(memory.slot("g", CommitLogOffset(1), 1_001).get().is_none(), "expired after the window");
    }

    #[tokio::test]
    async fn a_failed_first_attempt_leaves_the_slot_empty_for_the_retry() {
        let memory = SendBacks::new(1_000, 10);
        let slot = memory.slot("g", CommitLogOffset(1), 0);
        let failed: Result<&SendBackOutcome, &str> = slot.get_or_try_init(|| async { Err("disk full") }).await;
        assert!(failed.is_err());
        assert!(memory.slot("g", CommitLogOffset(1), 1).get().is_none());
    }
}
