//! Transactions: the table of unresolved half messages and the op-record format of their durable log.
//!
//! A half message is stored in `TRANSACTION_HALF_TOPIC` queue 0; every resolution (commit, rollback, policy) and
//! every check-back is an op record in `TRANSACTION_OP_TOPIC` queue 0 naming the half by its CommitLog offset.
//! At start the table is rebuilt by replaying the half queue and then the op queue (both bounded by retention);
//! the halves still unresolved are marked `recovered`, so that before being checked or committed the broker
//! looks for a committed copy in the message-id index (a crash between a commit and its op record never commits
//! twice).
//!
//! Bounded: at most `max_pending` unresolved halves (a transactional send beyond it is refused as busy) and
//! `RESOLVED_CACHE` remembered resolutions (older ones are answered from the store).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

/// Resolutions remembered in memory to answer a repeated EndTransaction without a store lookup.
pub const RESOLVED_CACHE: usize = 65_536;

/// How a half message was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Committed by its producer (EndTransaction or a check-back answer).
    Commit,
    /// Rolled back by its producer.
    Rollback,
    /// Committed by `transaction-check-policy: commit` after the last check-back.
    PolicyCommit,
    /// Rolled back by `transaction-check-policy: rollback` after the last check-back.
    PolicyRollback,
}

impl Outcome {
    /// True when the message became visible.
    pub fn committed(self) -> bool {
        matches!(self, Self::Commit | Self::PolicyCommit)
    }

    /// The `how` label of `rocketmq_transaction_resolved_total` and the op record's kind.
    pub fn label(self) -> &'static str {
        match self {
            Self::Commit => "commit",
            Self::Rollback => "rollback",
            Self::PolicyCommit => "policy_commit",
            Self::PolicyRollback => "policy_rollback",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "commit" => Self::Commit,
            "rollback" => Self::Rollback,
            "policy_commit" => Self::PolicyCommit,
            "policy_rollback" => Self::PolicyRollback,
            _ => return None,
        })
    }
}

/// Where a committed message was stored (the `committed` result of EndTransaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The real topic.
    pub topic: String,
    /// Its queue.
    pub queue_id: u32,
    /// Its offset in that queue.
    pub queue_offset: u64,
    /// Its CommitLog offset.
    pub commit_log_offset: u64,
}

/// A resolution in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// How.
    pub outcome: Outcome,
    /// Where the visible copy is (commits whose copy is known).
    pub committed: Option<Committed>,
}

/// One op record: what happened to the half at `half_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Resolved.
    Resolved {
        /// The half's CommitLog offset.
        half_offset: u64,
        /// How.
        outcome: Outcome,
    },
    /// Checked back for the `times`-th time.
    Checked {
        /// The half's CommitLog offset.
        half_offset: u64,
        /// The check count after this check.
        times: u32,
    },
}

impl Op {
    /// The op record's body: `<kind> <half offset>` or `check <half offset> <times>`.
    pub fn encode(&self) -> String {
        match self {
            Self::Resolved { half_offset, outcome } => format!("{} {half_offset}", outcome.label()),
            Self::Checked { half_offset, times } => format!("check {half_offset} {times}"),
        }
    }

    /// Parses an op record's body; `None` for anything else (a record from a newer broker is skipped).
    pub fn decode(body: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(body).ok()?;
        let mut parts = text.split(' ');
        let kind = parts.next()?;
        let half_offset = parts.next()?.parse().ok()?;
        if kind == "check" {
            let times = parts.next()?.parse().ok()?;
            return Some(Self::Checked { half_offset, times });
        }
        Some(Self::Resolved { half_offset, outcome: Outcome::parse(kind)? })
    }
}

/// An unresolved half message.
#[derive(Debug, Clone)]
pub struct Half {
    /// Its message id (EndTransaction must name it).
    pub msg_id: String,
    /// Its producer group (whose live producers are checked back).
    pub group: String,
    /// When it was stored, ms since the epoch.
    pub stored_ms: u64,
    /// Check-backs so far.
    pub checks: u32,
    /// Not checked again before this time.
    pub next_check_ms: u64,
    /// Found unresolved at start: look for a committed copy before checking or committing it.
    pub recovered: bool,
    /// Held while the half is being resolved or checked, so it is resolved once.
    pub lock: Arc<tokio::sync::Mutex<()>>,
}

/// A half due for a check-back (or for the policy, when its checks are used up).
#[derive(Debug, Clone)]
pub struct Due {
    /// The half's CommitLog offset.
    pub half_offset: u64,
    /// Its copy of the table entry.
    pub half: Half,
}

#[derive(Debug, Default)]
struct State {
    pending: BTreeMap<u64, Half>,
    /// Half offset → (its message id, its resolution).
    resolved: HashMap<u64, (String, Resolved)>,
    resolved_order: VecDeque<u64>,
}

/// The unresolved halves and recent resolutions.
#[derive(Debug)]
pub struct TransactionTable {
    max_pending: usize,
    state: Mutex<State>,
}

impl TransactionTable {
    /// An empty table holding at most `max_pending` unresolved halves.
    pub fn new(max_pending: usize) -> Self {
        Self { max_pending, state: Mutex::new(State::default()) }
    }

    /// True when a new half would exceed `max_pending`.
    pub fn is_full(&self) -> bool {
        self.state.lock().pending.len() >= self.max_pending
    }

    /// Unresolved halves now (metrics, tests).
    pub fn pending_len(&self) -> usize {
        self.state.lock().pending.len()
    }

    /// Records a new half (a send, or the replay of the half queue).
    pub fn add(&self, half_offset: u64, msg_id: String, group: String, stored_ms: u64, recovered: bool) {
        let half = Half {
            msg_id,
            group,
            stored_ms,
            checks: 0,
            next_check_ms: 0,
            recovered,
            lock: Arc::new(tokio::sync::Mutex::new(())),
        };
        self.state.lock().pending.insert(half_offset, half);
    }

    /// The unresolved half at `half_offset`.
    pub fn pending(&self, half_offset: u64) -> Option<Half> {
        self.state.lock().pending.get(&half_offset).cloned()
    }

    /// The remembered resolution of `half_offset` with the half's message id.
    pub fn resolved(&self, half_offset: u64) -> Option<(String, Resolved)> {
        self.state.lock().resolved.get(&half_offset).cloned()
    }

    /// Marks a recovered half as verified (no committed copy exists).
    pub fn verified(&self, half_offset: u64) {
        if let Some(h) = self.state.lock().pending.get_mut(&half_offset) {
            h.recovered = false;
        }
    }

    /// Marks a half as possibly committed already (a commit's append failed or was interrupted after it may
    /// have stored the copy): the next resolution looks for that copy in the index first.
    pub fn suspect(&self, half_offset: u64) {
        if let Some(h) = self.state.lock().pending.get_mut(&half_offset) {
            h.recovered = true;
        }
    }

    /// Applies an op record (live, or replayed at start; `at_ms` is its store time).
    pub fn apply(&self, op: Op, at_ms: u64, interval_ms: u64) {
        match op {
            Op::Resolved { half_offset, outcome } => self.resolve(half_offset, Resolved { outcome, committed: None }),
            Op::Checked { half_offset, times } => {
                if let Some(h) = self.state.lock().pending.get_mut(&half_offset) {
                    h.checks = h.checks.max(times);
                    h.next_check_ms = at_ms.saturating_add(interval_ms);
                }
            }
        }
    }

    /// Moves a half from pending to resolved (the first resolution stays in force; a half not pending is
    /// not remembered).
    pub fn resolve(&self, half_offset: u64, resolved: Resolved) {
        let mut state = self.state.lock();
        let Some(half) = state.pending.remove(&half_offset) else { return };
        if state.resolved.contains_key(&half_offset) {
            return;
        }
        state.resolved.insert(half_offset, (half.msg_id, resolved));
        state.resolved_order.push_back(half_offset);
        while state.resolved_order.len() > RESOLVED_CACHE {
            if let Some(old) = state.resolved_order.pop_front() {
                state.resolved.remove(&old);
            }
        }
    }

    /// Halves stored at least `delay_ms` ago whose next check is due at `now_ms`, oldest first, at most `max`.
    pub fn due(&self, now_ms: u64, delay_ms: u64, max: usize) -> Vec<Due> {
        let state = self.state.lock();
        state
            .pending
            .iter()
            .filter(|(_, h)| h.stored_ms.saturating_add(delay_ms) <= now_ms && h.next_check_ms <= now_ms)
            .take(max)
            .map(|(&half_offset, h)| Due { half_offset, half: h.clone() })
            .collect()
    }
}

/// Most check streams open at once (all groups together); more are refused as busy.
pub const MAX_CHECK_STREAMS: usize = 10_000;

/// Check-backs queued per stream before further ones to it are skipped (they are counted and retried later).
pub const CHECK_STREAM_CAPACITY: usize = 256;

/// The open `WatchTransactionChecks` streams, by producer group: an open stream is a live producer.
#[derive(Debug)]
pub struct CheckStreams<T> {
    groups: Mutex<HashMap<String, GroupStreams<T>>>,
}

/// One group's streams and its round-robin position.
type GroupStreams<T> = (usize, Vec<tokio::sync::mpsc::Sender<T>>);

impl<T> Default for CheckStreams<T> {
    fn default() -> Self {
        Self { groups: Mutex::new(HashMap::new()) }
    }
}

impl<T> CheckStreams<T> {
    /// Opens a stream for `group`; `None` when [`MAX_CHECK_STREAMS`] are open.
    pub fn open(&self, group: &str) -> Option<tokio::sync::mpsc::Receiver<T>> {
        let mut groups = self.groups.lock();
        for (_, streams) in groups.values_mut() {
            streams.retain(|s| !s.is_closed());
        }
        groups.retain(|_, (_, streams)| !streams.is_empty());
        if groups.values().map(|(_, s)| s.len()).sum::<usize>() >= MAX_CHECK_STREAMS {
            return None;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(CHECK_STREAM_CAPACITY);
        groups.entry(group.to_owned()).or_default().1.push(tx);
        Some(rx)
    }

    /// Live streams of `group`.
    pub fn live(&self, group: &str) -> usize {
        self.groups.lock().get(group).map_or(0, |(_, s)| s.iter().filter(|s| !s.is_closed()).count())
    }

    /// Sends `item` on the next live stream of `group` (round robin), dropping closed streams and skipping full
    /// ones; false when no stream took it.
    pub fn send(&self, group: &str, item: T) -> bool {
        let mut groups = self.groups.lock();
        let Some((next, streams)) = groups.get_mut(group) else { return false };
        streams.retain(|s| !s.is_closed());
        let mut item = item;
        for _ in 0..streams.len() {
            *next = next.wrapping_add(1);
            let stream = &streams[*next % streams.len()];
            match stream.try_send(item) {
                Ok(()) => return true,
                Err(tokio::sync::mpsc::error::TrySendError::Full(back))
                | Err(tokio::sync::mpsc::error::TrySendError::Closed(back)) => item = back,
            }
        }
        if streams.is_empty() {
            groups.remove(group);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_records_round_trip_and_garbage_is_skipped() {
        for op in [
            Op::Resolved { half_offset: 42, outcome: Outcome::Commit },
            Op::Resolved { half_offset: 0, outcome: Outcome::PolicyRollback },
            Op::Checked { half_offset: 9, times: 3 },
        ] {
            assert_eq!(Op::decode(op.encode().as_bytes()), Some(op));
        }
        for bad in ["", "commit", "commit x", "check 1", "explode 1", "\u{ff}"] {
            assert_eq!(Op::decode(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn replay_keeps_only_unresolved_halves_with_their_check_counts() {
        let t = TransactionTable::new(10);
        t.add(100, "a".into(), "pg".into(), 1_000, true);
        t.add(200, "b".into(), "pg".into(), 1_000, true);
        t.add(300, "c".into(), "pg".into(), 1_000, true);
        t.apply(Op::Resolved { half_offset: 100, outcome: Outcome::Commit }, 2_000, 500);
        t.apply(Op::Checked { half_offset: 200, times: 2 }, 3_000, 500);
        t.apply(Op::Resolved { half_offset: 300, outcome: Outcome::Rollback }, 2_000, 500);
        t.apply(Op::Resolved { half_offset: 300, outcome: Outcome::PolicyCommit }, 2_500, 500);
        assert_eq!(t.pending_len(), 1);
        assert_eq!(t.resolved(100).map(|r| (r.0, r.1.outcome)), Some(("a".into(), Outcome::Commit)));
        assert_eq!(t.resolved(300).map(|r| r.1.outcome), Some(Outcome::Rollback), "the first resolution stays");
        let h = t.pending(200).unwrap();
        assert_eq!((h.checks, h.next_check_ms), (2, 3_500));
        assert!(t.due(3_499, 0, 10).is_empty(), "not before the interval");
        assert_eq!(t.due(3_500, 0, 10).len(), 1);
        assert!(t.due(3_500, 5_000, 10).is_empty(), "not before the check delay");
    }

    #[test]
    fn the_table_is_bounded() {
        let t = TransactionTable::new(2);
        t.add(1, "a".into(), "pg".into(), 0, false);
        assert!(!t.is_full());
        t.add(2, "b".into(), "pg".into(), 0, false);
        assert!(t.is_full());
        for i in 0..(RESOLVED_CACHE as u64 + 10) {
            t.add(i, "x".into(), "pg".into(), 0, false);
            t.resolve(i, Resolved { outcome: Outcome::Rollback, committed: None });
        }
        assert!(t.resolved(0).is_none(), "the oldest resolutions are forgotten");
        assert!(t.resolved(RESOLVED_CACHE as u64).is_some());
    }

    #[tokio::test]
    async fn checks_go_round_robin_to_live_streams_only() {
        let streams = CheckStreams::<u32>::default();
        assert!(!streams.send("pg", 1), "no live producer");
        let mut a = streams.open("pg").unwrap();
        let mut b = streams.open("pg").unwrap();
        assert_eq!(streams.live("pg"), 2);
        assert!(streams.send("pg", 1) && streams.send("pg", 2));
        let (x, y) = (a.try_recv().unwrap(), b.try_recv().unwrap());
        assert_eq!(x + y, 3, "one check each");
        drop(a);
        assert!(streams.send("pg", 3));
        assert_eq!(b.try_recv().unwrap(), 3, "a closed stream is skipped");
        drop(b);
        assert!(!streams.send("pg", 4));
        assert_eq!(streams.live("pg"), 0);
    }
}
