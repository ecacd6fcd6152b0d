//! One receive window: what a consumer group has received but not yet finished in one queue. Everything below
//! `base` is done (acknowledged, dead-lettered or filtered out); `[base, read_to)` holds the unfinished entries,
//! each visible (ready to deliver) or invisible until its deadline; `read_to` is where the next store read starts.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One unfinished message of the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// CommitLog offset of its record (redeliveries read it directly).
    pub phys: u64,
    /// Deliveries so far (0: never delivered).
    pub attempt: u32,
    /// FIFO message-group key (a hash of the message group; one fixed key for messages without one).
    pub key: u64,
    /// Sequence of the current delivery's receipt handle (0: none valid).
    pub seq: u64,
    /// Invisible until this time, ms since the epoch (0: visible now).
    pub deadline_ms: u64,
    /// Auto-renewed while its receiver lives, until this time (0: not auto-renewed).
    pub renew_until_ms: u64,
    /// The receiver of an auto-renewed delivery (whose liveness keeps it invisible).
    #[serde(skip)]
    pub client: Option<Arc<str>>,
}

/// A message chosen for delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// Queue offset.
    pub offset: u64,
    /// CommitLog offset of its record.
    pub phys: u64,
    /// The attempt this delivery would be (1 for a first delivery).
    pub attempt: u32,
}

/// How a due scan treats visible entries.
#[derive(Debug, Clone, Copy)]
pub struct Scan {
    /// Now, ms since the epoch.
    pub now_ms: u64,
    /// FIFO group: at most one unfinished message per message group is out at a time.
    pub fifo: bool,
    /// Most entries to choose.
    pub max: usize,
    /// The slice an auto-renewed delivery is extended by.
    pub renew_slice_ms: u64,
}

/// The receive window of one (group, topic, queue).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Window {
    /// Everything below is done; the group's committed offset.
    pub base: u64,
    /// The next store read starts here.
    pub read_to: u64,
    /// The committed offset last written to the broker's offset table (a different value there means an
    /// operator reset it).
    pub committed: u64,
    entries: BTreeMap<u64, Entry>,
    /// Offsets at or beyond `read_to` already acknowledged (from the journal at start-up): skipped when read.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    acked_ahead: BTreeSet<u64>,
    /// (deadline, offset) of every entry: due ones first.
    #[serde(skip)]
    by_deadline: BTreeSet<(u64, u64)>,
}

impl Window {
    /// An empty window starting at `base`.
    pub fn new(base: u64) -> Self {
        Self { base, read_to: base, committed: base, ..Self::default() }
    }

    /// Rebuilds the deadline index after deserialisation.
    pub fn reindex(&mut self) {
        self.by_deadline = self.entries.iter().map(|(o, e)| (e.deadline_ms, *o)).collect();
        self.acked_ahead = std::mem::take(&mut self.acked_ahead).split_off(&self.read_to);
    }

    /// Unfinished entries (back-pressure: at most `max-inflight-per-queue`).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True with no unfinished entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// One entry.
    pub fn entry(&self, offset: u64) -> Option<&Entry> {
        self.entries.get(&offset)
    }

    /// Restarts the window at `base` (an operator moved the group's offset): everything unfinished is forgotten.
    pub fn reset(&mut self, base: u64) {
        *self = Self::new(base);
    }

    /// Raises the base to `base` (the group's committed offset is ahead of a snapshot): entries below are done.
    pub fn rebase(&mut self, base: u64) {
        if base <= self.base {
            return;
        }
        let keep = self.entries.split_off(&base);
        for (offset, e) in std::mem::replace(&mut self.entries, keep) {
            self.by_deadline.remove(&(e.deadline_ms, offset));
        }
        self.read_to = self.read_to.max(base);
        self.acked_ahead = std::mem::take(&mut self.acked_ahead).split_off(&self.read_to);
        self.base = base;
        self.advance();
    }

    /// Visible entries to deliver now, in the order to deliver them, and (FIFO) the message-group keys that are
    /// out (new messages of those groups must wait). Auto-renewed deliveries whose receiver `alive` says lives
    /// are extended instead.
    pub fn due(&mut self, scan: Scan, alive: &dyn Fn(&str) -> bool) -> (Vec<Due>, HashSet<u64>) {
        // Extend auto-renewed deliveries that expired while their receiver lives.
        let expired: Vec<(u64, u64)> = if scan.now_ms == 0 {
            Vec::new()
        } else {
            self.by_deadline.range((1, 0)..=(scan.now_ms, u64::MAX)).copied().collect()
        };
        for (deadline, offset) in expired {
            let Some(e) = self.entries.get_mut(&offset) else { continue };
            let renew = e.renew_until_ms > scan.now_ms && e.client.as_deref().is_some_and(alive);
            if renew {
                let next = scan.now_ms.saturating_add(scan.renew_slice_ms).min(e.renew_until_ms);
                self.by_deadline.remove(&(deadline, offset));
                e.deadline_ms = next;
                self.by_deadline.insert((next, offset));
            }
        }
        let mut out = Vec::new();
        let mut blocked = HashSet::new();
        if scan.fifo {
            for (&offset, e) in &self.entries {
                if !blocked.insert(e.key) {
                    continue;
                }
                if e.deadline_ms <= scan.now_ms && out.len() < scan.max {
                    out.push(Due { offset, phys: e.phys, attempt: e.attempt.saturating_add(1) });
                }
            }
        } else {
            for &(deadline, offset) in &self.by_deadline {
                if deadline > scan.now_ms || out.len() >= scan.max {
                    break;
                }
                if let Some(e) = self.entries.get(&offset) {
                    out.push(Due { offset, phys: e.phys, attempt: e.attempt.saturating_add(1) });
                }
            }
        }
        (out, blocked)
    }

    /// Adds a message read from the store at `read_to` (which moves past it); false when it was already
    /// acknowledged (journal replay) and so is skipped.
    pub fn add(&mut self, offset: u64, phys: u64, key: u64) -> bool {
        self.read_to = self.read_to.max(offset + 1);
        if self.acked_ahead.remove(&offset) || offset < self.base {
            self.advance();
            return false;
        }
        let entry = Entry { phys, attempt: 0, key, seq: 0, deadline_ms: 0, renew_until_ms: 0, client: None };
        self.entries.insert(offset, entry);
        self.by_deadline.insert((0, offset));
        true
    }

    /// Moves `read_to` past messages read but not kept (filtered out, or retention removed them).
    pub fn skip_to(&mut self, offset: u64) {
        if offset > self.read_to {
            self.read_to = offset;
            self.acked_ahead = self.acked_ahead.split_off(&offset);
        }
        self.advance();
    }

    /// Moves the read position back to `end` (the queue lost messages from there on): entries at or beyond it
    /// name records that are gone and are dropped.
    pub fn rewind(&mut self, end: u64) {
        if end >= self.read_to {
            return;
        }
        for (offset, e) in self.entries.split_off(&end) {
            self.by_deadline.remove(&(e.deadline_ms, offset));
        }
        self.acked_ahead.clear();
        self.read_to = end;
        self.base = self.base.min(end);
        self.advance();
    }

    /// Hands the entry out: attempt + 1, invisible until `deadline_ms`, valid handle `seq`.
    pub fn deliver(&mut self, offset: u64, seq: u64, deadline_ms: u64, renew_until_ms: u64, client: Option<Arc<str>>) {
        let Some(e) = self.entries.get_mut(&offset) else { return };
        self.by_deadline.remove(&(e.deadline_ms, offset));
        e.attempt = e.attempt.saturating_add(1);
        e.seq = seq;
        e.deadline_ms = deadline_ms.max(1);
        e.renew_until_ms = renew_until_ms;
        e.client = client;
        self.by_deadline.insert((e.deadline_ms, offset));
    }

    /// Takes back the delivery `seq` of `offset` that never reached its receiver (the request went away first):
    /// visible again at once, the attempt not counted.
    pub fn undeliver(&mut self, offset: u64, seq: u64) {
        if !self.holds(offset, seq) {
            return;
        }
        if let Some(e) = self.entries.get_mut(&offset) {
            self.by_deadline.remove(&(e.deadline_ms, offset));
            e.attempt = e.attempt.saturating_sub(1);
            e.seq = 0;
            e.deadline_ms = 0;
            e.renew_until_ms = 0;
            e.client = None;
            self.by_deadline.insert((0, offset));
        }
    }

    /// True when `seq` is the current delivery of `offset`.
    pub fn holds(&self, offset: u64, seq: u64) -> bool {
        seq != 0 && self.entries.get(&offset).is_some_and(|e| e.seq == seq)
    }

    /// Acknowledges the delivery `seq` of `offset`; false for a stale or unknown handle.
    pub fn ack(&mut self, offset: u64, seq: u64) -> bool {
        if !self.holds(offset, seq) {
            return false;
        }
        self.finish(offset);
        true
    }

    /// New deadline and handle for the delivery `seq` of `offset` (auto-renewal ends); false when stale.
    pub fn change(&mut self, offset: u64, seq: u64, new_seq: u64, deadline_ms: u64) -> bool {
        if !self.holds(offset, seq) {
            return false;
        }
        if let Some(e) = self.entries.get_mut(&offset) {
            self.by_deadline.remove(&(e.deadline_ms, offset));
            e.seq = new_seq;
            e.deadline_ms = deadline_ms.max(1);
            e.renew_until_ms = 0;
            e.client = None;
            self.by_deadline.insert((e.deadline_ms, offset));
        }
        true
    }

    /// Marks `offset` done whatever its state (acknowledged, dead-lettered, or a journal record replayed).
    pub fn finish(&mut self, offset: u64) {
        if let Some(e) = self.entries.remove(&offset) {
            self.by_deadline.remove(&(e.deadline_ms, offset));
        } else if offset >= self.read_to {
            self.acked_ahead.insert(offset);
        }
        self.advance();
    }

    /// The offset of the entry that has been due longest (visible, or invisible past its deadline), if any.
    pub fn first_due(&self, now_ms: u64) -> Option<u64> {
        self.by_deadline.first().filter(|(deadline, _)| *deadline <= now_ms).map(|(_, offset)| *offset)
    }

    /// The earliest time an invisible entry becomes visible, if any entry is invisible.
    pub fn next_deadline(&self, now_ms: u64) -> Option<u64> {
        self.by_deadline.range((now_ms.saturating_add(1), 0)..).next().map(|(d, _)| *d)
    }

    fn advance(&mut self) {
        self.base = match self.entries.first_key_value() {
            Some((first, _)) => *first,
            None => self.read_to,
        }
        .max(self.base);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(now_ms: u64, fifo: bool) -> Scan {
        Scan { now_ms, fifo, max: 10, renew_slice_ms: 100 }
    }

    fn never(_: &str) -> bool {
        false
    }

    #[test]
    fn acks_move_the_base_past_the_lowest_unfinished_offset() {
        let mut w = Window::new(5);
        for o in 5..9 {
            assert!(w.add(o, o * 100, 0));
        }
        let (due, _) = w.due(scan(1000, false), &never);
        assert_eq!(due.len(), 4);
        for (i, d) in due.iter().enumerate() {
            w.deliver(d.offset, 10 + i as u64, 2000, 0, None);
        }
        assert!(w.ack(6, 11));
        assert_eq!(w.base, 5, "5 is still out");
        assert!(!w.ack(5, 99), "a wrong handle is refused");
        assert!(w.ack(5, 10));
        assert_eq!(w.base, 7);
        assert!(!w.ack(5, 10), "twice is stale");
        assert!(w.ack(7, 12) && w.ack(8, 13));
        assert_eq!((w.base, w.read_to, w.len()), (9, 9, 0));
    }

    #[test]
    fn expired_deliveries_come_back_with_the_next_attempt_and_old_handles_die() {
        let mut w = Window::new(0);
        w.add(0, 0, 0);
        let (due, _) = w.due(scan(1000, false), &never);
        assert_eq!(due, vec![Due { offset: 0, phys: 0, attempt: 1 }]);
        w.deliver(0, 1, 2000, 0, None);
        assert!(w.due(scan(1999, false), &never).0.is_empty(), "invisible until the deadline");
        assert_eq!(w.next_deadline(1999), Some(2000));
        assert_eq!((w.first_due(1999), w.first_due(2000)), (None, Some(0)));
        let (due, _) = w.due(scan(2000, false), &never);
        assert_eq!(due[0].attempt, 2);
        w.deliver(0, 2, 3000, 0, None);
        assert!(!w.ack(0, 1), "the first delivery's handle is stale");
        assert!(w.change(0, 2, 3, 2500));
        assert!(!w.ack(0, 2), "changing the invisible time replaces the handle");
        assert_eq!(w.next_deadline(2000), Some(2500));
        assert!(w.ack(0, 3));
    }

    #[test]
    fn an_undelivered_message_is_visible_at_once_with_its_attempt_uncounted() {
        let mut w = Window::new(0);
        w.add(0, 0, 0);
        w.due(scan(1, false), &never);
        w.deliver(0, 5, 10_000, 0, None);
        w.undeliver(0, 4);
        assert!(w.due(scan(2, false), &never).0.is_empty(), "a wrong sequence changes nothing");
        w.undeliver(0, 5);
        let (due, _) = w.due(scan(2, false), &never);
        assert_eq!(due[0].attempt, 1);
        assert!(!w.ack(0, 5));
    }

    #[test]
    fn auto_renewal_lasts_while_the_receiver_lives_and_up_to_its_limit() {
        let mut w = Window::new(0);
        w.add(0, 0, 0);
        w.due(scan(0, false), &never);
        w.deliver(0, 1, 100, 250, Some(Arc::from("c1")));
        let alive = |c: &str| c == "c1";
        assert!(w.due(scan(100, false), &alive).0.is_empty(), "renewed");
        assert_eq!(w.entry(0).unwrap().deadline_ms, 200);
        assert!(w.due(scan(200, false), &alive).0.is_empty());
        assert_eq!(w.entry(0).unwrap().deadline_ms, 250, "capped at the limit");
        assert_eq!(w.due(scan(250, false), &alive).0.len(), 1, "the limit passed");
        let mut w2 = Window::new(0);
        w2.add(0, 0, 0);
        w2.deliver(0, 1, 100, 250, Some(Arc::from("c2")));
        assert_eq!(w2.due(scan(100, false), &alive).0.len(), 1, "a dead receiver's message comes back");
    }

    #[test]
    fn fifo_keeps_one_message_per_group_out() {
        let mut w = Window::new(0);
        // Offsets 0, 2 in group A; 1 in group B; 3 in group A.
        for (o, k) in [(0, 1), (1, 2), (2, 1), (3, 1)] {
            w.add(o, o, k);
        }
        let (due, blocked) = w.due(scan(0, true), &never);
        assert_eq!(due.iter().map(|d| d.offset).collect::<Vec<_>>(), vec![0, 1]);
        assert!(blocked.contains(&1) && blocked.contains(&2));
        for d in &due {
            w.deliver(d.offset, d.offset + 1, 100, 0, None);
        }
        assert!(w.due(scan(50, true), &never).0.is_empty(), "both groups are out");
        assert!(w.ack(0, 1));
        let (due, _) = w.due(scan(50, true), &never);
        assert_eq!(due.iter().map(|d| d.offset).collect::<Vec<_>>(), vec![2]);
        // An expired delivery of group B comes back before anything else of B.
        let (due, _) = w.due(scan(100, true), &never);
        assert_eq!(due.iter().map(|d| d.offset).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn replayed_acks_ahead_of_the_read_position_are_skipped_when_read() {
        let mut w = Window::new(0);
        w.finish(1);
        assert!(w.add(0, 0, 0));
        assert!(!w.add(1, 1, 0), "acknowledged before the crash");
        assert!(w.add(2, 2, 0));
        assert_eq!(w.len(), 2);
        w.skip_to(10);
        assert_eq!((w.base, w.read_to), (0, 10));
        w.finish(0);
        w.finish(2);
        assert_eq!(w.base, 10);
    }

    #[test]
    fn rewinding_drops_what_the_queue_lost() {
        let mut w = Window::new(0);
        for o in 0..5 {
            w.add(o, o, 0);
        }
        w.finish(0);
        w.rewind(3);
        assert_eq!((w.base, w.read_to, w.len()), (1, 3, 2));
        assert!(w.add(3, 3, 0), "offset 3 is read again");
        let mut empty = Window::new(10);
        empty.rewind(4);
        assert_eq!((empty.base, empty.read_to), (4, 4));
    }

    #[test]
    fn a_snapshot_round_trips() {
        let mut w = Window::new(3);
        w.add(3, 30, 7);
        w.add(4, 40, 7);
        w.deliver(3, 9, 500, 0, None);
        w.finish(8);
        let json = serde_json::to_string(&w).unwrap();
        let mut back: Window = serde_json::from_str(&json).unwrap();
        back.reindex();
        assert_eq!(back.entry(3).unwrap().seq, 9);
        assert_eq!(back.next_deadline(0), Some(500));
        assert!(back.ack(3, 9));
        assert!(!back.add(8, 80, 0));
    }
}
