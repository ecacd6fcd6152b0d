//! The push consumer's pure parts: which queues a member of a clustering group owns (RocketMQ's
//! AllocateMessageQueueAveragely), and per queue the window of pulled messages not yet acknowledged, whose lowest
//! offset is what may be committed.

use std::collections::BTreeMap;

use comet_model::MessageQueue;

/// The queues `me` owns when `queues` are shared averagely among `members` (RocketMQ's
/// AllocateMessageQueueAveragely): both lists are sorted first, so every member computes the same split from the
/// same inputs; member `i` gets a contiguous block, the first `queues % members` members one queue more. Empty
/// when `me` is not a member (e.g. its first heartbeat has not landed yet).
pub fn allocate_averagely(queues: &[MessageQueue], members: &[String], me: &str) -> Vec<MessageQueue> {
    let mut queues = queues.to_vec();
    queues.sort_by(|a, b| (&a.topic, &a.broker_name, a.queue_id).cmp(&(&b.topic, &b.broker_name, b.queue_id)));
    queues.dedup();
    let mut members = members.to_vec();
    members.sort();
    members.dedup();
    let Some(index) = members.iter().position(|m| m == me) else {
        return Vec::new();
    };
    let (n, m) = (queues.len(), members.len());
    if n == 0 {
        return Vec::new();
    }
    let rem = n % m;
    let size = if n <= m {
        1
    } else if rem > 0 && index < rem {
        n / m + 1
    } else {
        n / m
    };
    let start = if rem > 0 && index < rem { index * size } else { index * size + rem };
    queues.into_iter().skip(start).take(size.min(n.saturating_sub(start))).collect()
}

/// The messages of one queue pulled but not yet acknowledged (queued for, inside or failed in the listener).
///
/// The committable offset is the lowest offset still here, or — when nothing is — the offset after the last
/// pulled message; so a message in flight or failed is never skipped by a commit, whatever finished after it.
#[derive(Debug, Clone)]
pub struct OffsetWindow {
    /// Offset → body size of every unacknowledged message.
    pending: BTreeMap<u64, usize>,
    /// The offset the next pull starts at (everything before it was pulled or filtered out).
    next: u64,
    bytes: usize,
}

impl OffsetWindow {
    /// An empty window whose next pull starts at `start`.
    pub fn new(start: u64) -> Self {
        Self { pending: BTreeMap::new(), next: start, bytes: 0 }
    }

    /// Records a pull's messages (`(offset, size)`) and where the next pull starts.
    pub fn pulled(&mut self, messages: impl IntoIterator<Item = (u64, usize)>, next_offset: u64) {
        for (offset, size) in messages {
            if self.pending.insert(offset, size).is_none() {
                self.bytes += size;
            }
        }
        self.next = self.next.max(next_offset);
    }

    /// Moves the next pull to `offset` (after OFFSET_MOVED/OVERFLOW answers), dropping nothing pending.
    pub fn reset_next(&mut self, offset: u64) {
        self.next = offset;
    }

    /// The listener succeeded for `offset`: it no longer holds the commit back.
    pub fn ack(&mut self, offset: u64) {
        if let Some(size) = self.pending.remove(&offset) {
            self.bytes -= size;
        }
    }

    /// The offset to commit: the lowest unacknowledged one, else where the next pull starts.
    pub fn committable(&self) -> u64 {
        self.pending.keys().next().copied().unwrap_or(self.next)
    }

    /// Where the next pull starts.
    pub fn next_pull(&self) -> u64 {
        self.next
    }

    /// How many messages are unacknowledged.
    pub fn cached_count(&self) -> usize {
        self.pending.len()
    }

    /// The unacknowledged messages' body bytes.
    pub fn cached_bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues(n: u32) -> Vec<MessageQueue> {
        (0..n).map(|i| MessageQueue { topic: "t".into(), broker_name: "b".into(), queue_id: i }).collect()
    }

    fn ids(qs: &[MessageQueue]) -> Vec<u32> {
        qs.iter().map(|q| q.queue_id).collect()
    }

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn eight_queues_over_three_members_split_three_three_two_in_order() {
        let q = queues(8);
        let m = members(3);
        assert_eq!(ids(&allocate_averagely(&q, &m, "c0")), [0, 1, 2]);
        assert_eq!(ids(&allocate_averagely(&q, &m, "c1")), [3, 4, 5]);
        assert_eq!(ids(&allocate_averagely(&q, &m, "c2")), [6, 7]);
    }

    #[test]
    fn every_queue_is_owned_by_exactly_one_member_whatever_the_input_order() {
        for n in 0..20u32 {
            for k in 1..7usize {
                let mut q = queues(n);
                q.reverse();
                let mut m = members(k);
                m.rotate_left(k / 2);
                let mut owned: Vec<u32> = m.iter().flat_map(|me| ids(&allocate_averagely(&q, &m, me))).collect();
                owned.sort_unstable();
                assert_eq!(owned, (0..n).collect::<Vec<_>>(), "{n} queues, {k} members");
            }
        }
    }

    #[test]
    fn more_members_than_queues_leaves_the_last_members_idle_and_strangers_get_nothing() {
        let q = queues(2);
        let m = members(4);
        assert_eq!(ids(&allocate_averagely(&q, &m, "c0")), [0]);
        assert_eq!(ids(&allocate_averagely(&q, &m, "c1")), [1]);
        assert!(allocate_averagely(&q, &m, "c3").is_empty());
        assert!(allocate_averagely(&q, &m, "stranger").is_empty());
    }

    #[test]
    fn the_window_commits_the_lowest_unacknowledged_offset_never_past_one_in_flight() {
        let mut w = OffsetWindow::new(10);
        assert_eq!(w.committable(), 10, "nothing pulled: the start");
        w.pulled((10..15).map(|o| (o, 100)), 15);
        assert_eq!((w.cached_count(), w.cached_bytes()), (5, 500));
        w.ack(11);
        w.ack(13);
        w.ack(14);
        assert_eq!(w.committable(), 10, "10 is still in flight");
        w.ack(10);
        assert_eq!(w.committable(), 12, "12 failed or in flight holds the commit");
        w.ack(12);
        assert_eq!(w.committable(), 15, "all done: where the next pull starts");
        assert_eq!((w.cached_count(), w.cached_bytes()), (0, 0));
    }

    #[test]
    fn filtered_gaps_advance_the_commit_and_repeated_acks_are_harmless() {
        let mut w = OffsetWindow::new(0);
        w.pulled([(3, 1), (7, 1)], 20);
        w.ack(3);
        w.ack(3);
        assert_eq!(w.committable(), 7);
        w.ack(7);
        assert_eq!(w.committable(), 20);
        assert_eq!(w.next_pull(), 20);
        w.reset_next(5);
        assert_eq!(w.committable(), 5);
    }
}
