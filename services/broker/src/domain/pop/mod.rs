//! The RocketMQ 5 receive model's state (ReceiveMessage, AckMessage, ChangeInvisibleDuration): per (consumer
//! group, topic, queue) a [`window::Window`] of messages received but not finished, above the group's committed
//! offset (the broker's one offset table, shared with the native API). Durable by a periodic and shutdown
//! snapshot (`config/receive-windows.json`) plus the journal system topic
//! ([`comet_model::system::RECEIVE_JOURNAL_TOPIC`], [`journal::Record`]) holding every acknowledgement since,
//! so a restart loses no unfinished message and brings back no finished one.

pub mod handle;
pub mod journal;
pub mod window;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use comet_model::QueueId;
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::domain::persist;
use crate::error::Result;
use journal::{Change, Record};
use window::Window;

/// A window shared by the requests of its (group, topic, queue).
pub type SharedWindow = Arc<Mutex<Window>>;

/// group → topic → queue → window.
type Windows = HashMap<String, HashMap<String, HashMap<QueueId, SharedWindow>>>;

/// Every receive window of the broker, the delivery sequence, and the journal position the snapshot covers.
#[derive(Debug)]
pub struct ReceiveState {
    path: PathBuf,
    windows: RwLock<Windows>,
    /// group → topic → woken on acknowledgements and invisible-time changes (FIFO groups unblock, back-pressure
    /// eases, deadlines move), so parked receives look again.
    wakers: Mutex<HashMap<(String, String), Arc<Notify>>>,
    seq: AtomicU64,
    /// Held (shared) from a journal append until its change is applied; the snapshot takes it exclusively to
    /// read a journal position every change below which is applied.
    gate: RwLock<()>,
    /// The journal's next queue offset (everything below was appended).
    journal_next: AtomicU64,
    /// (journal position, delivery sequence) at the last snapshot: unchanged means nothing to write. Held for a
    /// whole snapshot, so two (the periodic one and the shutdown one) never write the file at once and a later
    /// state is never overwritten by an earlier one.
    saved: Mutex<(u64, u64)>,
}

/// The snapshot file.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Snapshot {
    /// Journal records from here on are not reflected in the windows.
    journal_next: u64,
    /// The highest delivery sequence handed out before the snapshot.
    max_seq: u64,
    windows: Vec<SavedWindow>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedWindow {
    group: String,
    topic: String,
    queue_id: QueueId,
    window: Window,
}

impl ReceiveState {
    /// Loads the snapshot at `path` (missing = no windows yet); `now_ms` seeds the delivery sequence, so handles
    /// of an earlier run never match a delivery of this one. Replay the journal from [`Self::journal_next`] next.
    pub fn open(path: PathBuf, now_ms: u64) -> Result<Self> {
        let snapshot: Snapshot = persist::load(&path)?.unwrap_or_default();
        let mut windows = Windows::new();
        for mut saved in snapshot.windows {
            saved.window.reindex();
            windows
                .entry(saved.group)
                .or_default()
                .entry(saved.topic)
                .or_default()
                .insert(saved.queue_id, Arc::new(Mutex::new(saved.window)));
        }
        // A million deliveries per millisecond would be needed to catch up with the clock.
        let seq = now_ms.saturating_mul(1_000_000).max(snapshot.max_seq.saturating_add(1));
        Ok(Self {
            path,
            windows: RwLock::new(windows),
            wakers: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(seq),
            gate: RwLock::new(()),
            journal_next: AtomicU64::new(snapshot.journal_next),
            saved: Mutex::new((snapshot.journal_next, seq)),
        })
    }

    /// Where journal replay starts.
    pub fn journal_next(&self) -> u64 {
        self.journal_next.load(Ordering::Acquire)
    }

    /// A fresh delivery sequence number (receipt handles).
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// The window of (group, topic, queue), if open.
    pub fn window(&self, group: &str, topic: &str, queue_id: QueueId) -> Option<SharedWindow> {
        self.windows.read().get(group)?.get(topic)?.get(&queue_id).cloned()
    }

    /// The window of (group, topic, queue), opened with `open` if there is none (then `true`).
    pub fn window_or_open(
        &self,
        group: &str,
        topic: &str,
        queue_id: QueueId,
        open: impl FnOnce() -> Window,
    ) -> (SharedWindow, bool) {
        if let Some(w) = self.window(group, topic, queue_id) {
            return (w, false);
        }
        let mut windows = self.windows.write();
        let per_queue = windows.entry(group.to_owned()).or_default().entry(topic.to_owned()).or_default();
        if let Some(w) = per_queue.get(&queue_id) {
            return (Arc::clone(w), false);
        }
        let w = Arc::new(Mutex::new(open()));
        per_queue.insert(queue_id, Arc::clone(&w));
        (w, true)
    }

    /// The notifier of (group, topic).
    pub fn waker(&self, group: &str, topic: &str) -> Arc<Notify> {
        let mut wakers = self.wakers.lock();
        Arc::clone(wakers.entry((group.to_owned(), topic.to_owned())).or_default())
    }

    /// Wakes the parked receives of (group, topic).
    pub fn wake(&self, group: &str, topic: &str) {
        let waker = self.wakers.lock().get(&(group.to_owned(), topic.to_owned())).cloned();
        if let Some(w) = waker {
            w.notify_waiters();
        }
    }

    /// Hold from before a journal append until its change is applied to the window.
    pub fn journal_guard(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read()
    }

    /// Lowers the next journal position to the journal's real end: with async flush a crash can lose the
    /// journal's tail while the (fsynced) snapshot still names a later position, and new records must not be
    /// skipped by the next replay.
    pub fn clamp_journal_next(&self, end: u64) {
        self.journal_next.fetch_min(end, Ordering::AcqRel);
    }

    /// Notes that the journal holds records up to `queue_offset` (inclusive).
    pub fn journaled(&self, queue_offset: u64) {
        self.journal_next.fetch_max(queue_offset.saturating_add(1), Ordering::AcqRel);
    }

    /// Applies a journal record at start-up (idempotent: a change the snapshot already holds changes nothing).
    pub fn replay(&self, record: &Record) {
        for change in &record.changes {
            match *change {
                Change::Opened { queue_id, base } => {
                    // A receive racing the opener may have journaled an acknowledgement first (which opened the
                    // window at 0 here): the window still starts where it was opened.
                    let (w, _) = self.window_or_open(&record.group, &record.topic, queue_id, || Window::new(base));
                    w.lock().rebase(base);
                }
                Change::Done { queue_id, offset } => {
                    let (w, _) = self.window_or_open(&record.group, &record.topic, queue_id, || Window::new(0));
                    w.lock().finish(offset);
                }
            }
        }
    }

    /// Every open window: (group, topic, queue, window).
    pub fn all(&self) -> Vec<(String, String, QueueId, SharedWindow)> {
        let windows = self.windows.read();
        let mut out = Vec::new();
        for (group, topics) in windows.iter() {
            for (topic, queues) in topics {
                out.extend(queues.iter().map(|(q, w)| (group.clone(), topic.clone(), *q, Arc::clone(w))));
            }
        }
        out
    }

    /// Forgets a deleted topic's windows (and its wakers); the next periodic snapshot writes the change.
    pub fn remove_topic(&self, topic: &str) {
        let mut windows = self.windows.write();
        for topics in windows.values_mut() {
            topics.remove(topic);
        }
        windows.retain(|_, topics| !topics.is_empty());
        drop(windows);
        self.wakers.lock().retain(|(_, t), _| t != topic);
        self.changed();
    }

    /// Forgets a deleted group's windows (and its wakers); the next periodic snapshot writes the change.
    pub fn remove_group(&self, group: &str) {
        self.windows.write().remove(group);
        self.wakers.lock().retain(|(g, _), _| g != group);
        self.changed();
    }

    /// Marks the windows changed without a journal record (a removal), so `snapshot_if_changed` writes them:
    /// burning one delivery sequence number is the change it notices.
    fn changed(&self) {
        self.seq.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes the snapshot: every window, and the journal position replay must start from. Blocking.
    pub fn snapshot(&self) -> Result<()> {
        let mut saved = self.saved.lock();
        let journal_next = {
            let _applied = self.gate.write();
            self.journal_next.load(Ordering::Acquire)
        };
        let max_seq = self.seq.load(Ordering::Relaxed);
        let windows = self
            .all()
            .into_iter()
            .map(|(group, topic, queue_id, w)| SavedWindow { group, topic, queue_id, window: w.lock().clone() })
            .collect();
        persist::store(&self.path, &Snapshot { journal_next, max_seq, windows })?;
        *saved = (journal_next, max_seq);
        Ok(())
    }

    /// [`Self::snapshot`] when anything was delivered or journaled since the last one (the periodic task).
    pub fn snapshot_if_changed(&self) -> Result<()> {
        let now = (self.journal_next.load(Ordering::Acquire), self.seq.load(Ordering::Relaxed));
        if *self.saved.lock() == now {
            return Ok(());
        }
        // (Another snapshot may run between the check and this one: it then writes the same or a later state.)
        self.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_plus_replayed_journal_restores_every_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config").join("receive-windows.json");
        let state = ReceiveState::open(path.clone(), 1).unwrap();
        let (w, created) = state.window_or_open("g", "t", 0, || Window::new(0));
        assert!(created);
        {
            let mut w = w.lock();
            for o in 0..3 {
                w.add(o, o, 0);
            }
            let seq = state.next_seq();
            w.deliver(1, seq, 10_000, 0, None);
        }
        state.journaled(4);
        state.snapshot().unwrap();
        let seq_before = state.next_seq();

        let reopened = ReceiveState::open(path, 0).unwrap();
        assert_eq!(reopened.journal_next(), 5);
        assert!(reopened.next_seq() > seq_before - 1, "sequences never repeat across restarts");
        // Journal records after the snapshot: offset 0 finished, another queue opened at 7.
        reopened.replay(&Record {
            group: "g".into(),
            topic: "t".into(),
            changes: vec![Change::Done { queue_id: 0, offset: 0 }, Change::Opened { queue_id: 1, base: 7 }],
        });
        let w = reopened.window("g", "t", 0).unwrap();
        let w = w.lock();
        assert_eq!((w.base, w.read_to, w.len()), (1, 3, 2));
        assert_eq!(w.entry(1).unwrap().attempt, 1);
        assert_eq!(reopened.window("g", "t", 1).unwrap().lock().base, 7);
        // An acknowledgement journaled before its window's opening.
        reopened.replay(&Record {
            group: "g".into(),
            topic: "t".into(),
            changes: vec![Change::Done { queue_id: 2, offset: 101 }],
        });
        reopened.replay(&Record {
            group: "g".into(),
            topic: "t".into(),
            changes: vec![Change::Opened { queue_id: 2, base: 100 }],
        });
        let w2 = reopened.window("g", "t", 2).unwrap();
        let mut w2 = w2.lock();
        assert_eq!(w2.base, 100);
        assert!(w2.add(100, 0, 0));
        assert!(!w2.add(101, 0, 0), "still known as acknowledged");
        drop(w2);
        drop(w);
        reopened.remove_topic("t");
        assert!(reopened.window("g", "t", 0).is_none());
    }
}
