//! Dispatch: follow the CommitLog and derive consume-queue and index entries from each record.
//!
//! An append dispatches its own records on its thread when nobody else is dispatching (`dispatch_or_wake`);
//! otherwise one dispatcher thread, woken (unparked) by appends, never by a timer on the hot path, does it. In
//! sync flush mode dispatch stops at the durable end, so a consumer never sees a message that a crash could take
//! back.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use comet_model::{QueueId, QueueOffset, tag_hash};

use crate::config::FlushMode;
use crate::consume_queue::{ConsumeQueue, CqEntry};
use crate::error::Result;
use crate::index::{IndexKey, Pending};
use crate::store::Inner;

/// Records dispatched between two wake-ups of waiting consumers.
const BATCH: usize = 4096;
/// Records whose index entries are added together (their slots' cache misses overlap, see `KeyIndex::add_all`).
const GROUP_RECORDS: usize = 32;

/// Records walked but not yet published (see `Inner::publish`).
struct Group {
    index: Vec<Pending>,
    puts: Vec<(Arc<ConsumeQueue>, QueueOffset, CqEntry)>,
}

impl Group {
    fn new() -> Self {
        // Sized for a group whose records carry an id and a key each; more keys grow it once per pass.
        Self { index: Vec::with_capacity(2 * GROUP_RECORDS), puts: Vec::with_capacity(GROUP_RECORDS) }
    }

    /// Puts queued for `queue` (same queue object) in this group.
    fn queued_for(&self, queue: &Arc<ConsumeQueue>) -> u64 {
        self.puts.iter().filter(|(q, _, _)| Arc::ptr_eq(q, queue)).count() as u64
    }
}

/// Who dispatches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The dispatcher thread (or a caller that may block): anything goes.
    Thread,
    /// An appender on its own thread, often an async worker: it must not wait for a file to be created and
    /// first touched (milliseconds on a slow disk), so it leaves records that need one to the thread.
    Inline,
}

impl Inner {
    /// How far consumers may see: the durable end in sync mode, the written end otherwise.
    pub(crate) fn visible_end(&self) -> u64 {
        match self.config.flush_mode {
            FlushMode::Sync => self.commit.flushed().min(self.log.end()),
            FlushMode::Async => self.log.end(),
        }
    }

    /// Dispatches everything visible; returns the number of records.
    pub(crate) fn dispatch_pending(&self) -> Result<u64> {
        let mut total = 0;
        loop {
            let n = self.dispatch_some()?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    }

    /// Dispatches up to `BATCH` records, then tells waiting consumers; returns how many it did.
    pub(crate) fn dispatch_some(&self) -> Result<usize> {
        // Held per batch: a truncation takes it to stop dispatch while it cuts the log and the derived data.
        let _dispatching = self.dispatching.lock();
        self.dispatch_up_to(u64::MAX, Mode::Thread)
    }

    /// Dispatches up to `BATCH` records below `cap`; the caller holds the dispatcher lock. `Mode::Inline` stops
    /// before a record whose entries would need a new file.
    // Hot path: no allocation per record (touched queues are few), no logging.
    pub(crate) fn dispatch_up_to(&self, cap: u64, mode: Mode) -> Result<usize> {
        let limit = self.visible_end().min(cap);
        let mut pos = self.dispatched.load(Ordering::Acquire);
        if pos >= limit {
            return Ok(0);
        }
        let mut touched: Vec<(String, QueueId, QueueOffset)> = Vec::new();
        let mut group = Group::new();
        let mut count = 0;
        let mut seg = self.log.segment_for(pos);
        let mut last_queue: Option<(String, QueueId, Arc<ConsumeQueue>)> = None;
        while pos < limit && count < BATCH {
            let Some(s) = seg.as_ref() else { break };
            let (step, walked) = self.log.step(s, pos)?;
            match step {
                crate::commitlog::Step::End => break,
                crate::commitlog::Step::Jump(next) => {
                    pos = next;
                    seg = self.log.segment_for(pos);
                    continue;
                }
                crate::commitlog::Step::Record => {}
            }
            let Some(w) = walked else { break };
            let l = &w.layout;
            // The walk checked lengths only: the text fields are checked here, where they are read (a record
            // damaged on disk stops the dispatcher with the reason, as the walk's own checks do).
            let text = |range: &std::ops::Range<usize>, field: &str| {
                std::str::from_utf8(&w.bytes[range.clone()]).map_err(|_| crate::error::Error::Corrupt {
                    path: s.path().to_owned(),
                    offset: s.rel(pos) as u64,
                    reason: format!("record's {field} is not UTF-8"),
                })
            };
            let topic = text(&l.topic, "topic")?;
            let tags = text(&l.tags, "tags")?;
            let queue = match &last_queue {
                Some((t, id, q)) if t == topic && *id == l.queue_id => q.clone(),
                _ => {
                    let q = self.queues.get_or_create(topic, l.queue_id);
                    last_queue = Some((topic.to_owned(), l.queue_id, q.clone()));
                    q
                }
            };
            let msg_id = text(&l.msg_id, "message id")?;
            let keys = text(&l.keys, "keys")?;
            // Room for the index entries the record may add (its id; at most MAX_KEYS keys): no split per record.
            let index_entries =
                usize::from(!msg_id.is_empty()) + if keys.is_empty() { 0 } else { crate::record::MAX_KEYS };
            if mode == Mode::Inline
                && (!queue.has_room(QueueOffset(l.queue_offset), group.queued_for(&queue))
                    || !self.index.has_room(group.index.len() + index_entries))
            {
                break;
            }
            let entry = CqEntry { offset: pos, size: l.size as u32, tag_hash: tag_hash(tags) };
            group.puts.push((queue, QueueOffset(l.queue_offset), entry));
            if !msg_id.is_empty() {
                group.index.push(Pending::new(IndexKey::Id(msg_id), pos, l.store_timestamp));
            }
            for key in keys.split(' ').filter(|k| !k.is_empty()) {
                group.index.push(Pending::new(IndexKey::Key { topic, key }, pos, l.store_timestamp));
            }
            let end = QueueOffset(l.queue_offset + 1);
            match touched.iter_mut().find(|(t, id, _)| t == topic && *id == l.queue_id) {
                Some(slot) => slot.2 = slot.2.max(end),
                None => touched.push((topic.to_owned(), l.queue_id, end)),
            }
            pos += l.size as u64;
            count += 1;
            if group.puts.len() >= GROUP_RECORDS {
                self.publish(&mut group)?;
                self.dispatched.store(pos, Ordering::Release);
            }
        }
        self.publish(&mut group)?;
        self.dispatched.store(pos, Ordering::Release);
        if !touched.is_empty() {
            self.notify_arrivals(&touched);
        }
        Ok(count)
    }

    /// Adds a group's index entries, then its consume-queue entries: a consumer never sees a message that a
    /// lookup by id or key would not find yet. On failure the group's records are dispatched again later
    /// (`dispatched` has not moved past them): consume-queue puts of existing offsets are no-ops, and a repeated
    /// index entry only repeats a candidate.
    fn publish(&self, group: &mut Group) -> Result<()> {
        self.index.add_all(&group.index)?;
        group.index.clear();
        for (queue, offset, entry) in group.puts.drain(..) {
            queue.put(offset, entry)?;
        }
        Ok(())
    }

    fn notify_arrivals(&self, touched: &[(String, QueueId, QueueOffset)]) {
        if let Some(listener) = self.listener.read().as_ref() {
            for (topic, queue_id, max) in touched {
                listener.on_arrival(topic, *queue_id, *max);
            }
        }
        if self.arrival_waiters.load(Ordering::Acquire) > 0 {
            let (lock, cv) = &self.arrivals;
            *lock.lock() += 1;
            cv.notify_all();
        }
    }
}
