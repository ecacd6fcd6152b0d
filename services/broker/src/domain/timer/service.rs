//! The timer service: a task on the master that, every `messaging.timer-tick-ms`,
//! 1. files the messages newly stored in the timer topic into the bucket index (its consume queue is the
//!    durable enqueue log, read from the checkpoint's `enqueued` offset), delivering at once any already due;
//! 2. delivers the entries now due, bucket by bucket in time order: reads each record, copies it to its real
//!    topic and queue (same id, tags, keys, properties, attempt count; the timer's properties dropped) with
//!    `Broker::append_internal`, then advances the delivery checkpoint and deletes finished buckets.
//!
//! After a crash (or a failed append) the entries between the last checkpoint and the failure are handed out
//! again; before re-delivering an entry that could have been delivered already (due before the restart or the
//! failure), the service looks its message id up in the store's index and skips it if a copy already sits in
//! its real topic after the timer record. Guarantee: every acknowledged delayed message is delivered at least
//! once; exactly once unless the crash struck between an append of its copy and the index dispatch of that copy.

use std::sync::Arc;
use std::time::Duration;

use comet_model::QueueId;
use comet_model::system::{PROP_DELIVER_AT, PROP_REAL_QUEUE_ID, PROP_REAL_TOPIC, TIMER_TOPIC};
use comet_store::{GetStatus, NewMessage, StoredMessage};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::TIMER_PROPERTIES;
use super::index::{Entry, TimerIndex};
use crate::broker::{Broker, now_ms};
use crate::domain::copy::{Copy, copy_to};
use crate::error::{BrokerError, Result};

/// Messages read from the timer topic, or handed out by the index, per step.
const BATCH: usize = 256;
/// Bytes read from the timer topic per step.
const READ_BYTES: usize = 8 << 20;
/// Most messages (and bytes) of one `append_internal` call.
const APPEND_MESSAGES: usize = 128;
const APPEND_BYTES: usize = 4 << 20;
/// Most record bytes one delivery step reads into memory (at least one record).
const DUE_BYTES: usize = 16 << 20;
/// Enqueue steps per pass once caught up (so a burst of new delayed messages cannot starve delivery).
const ENQUEUE_STEPS_PER_PASS: usize = 64;
/// Copies of one message id looked at when checking for an earlier delivery.
const VERIFY_CANDIDATES: usize = 64;
/// Pause after a failed pass.
const FAILURE_BACKOFF: Duration = Duration::from_secs(1);

/// The index directory under the store directory.
pub const TIMER_DIR: &str = "timer";

/// Opens the index and starts the timer task on a master (none on a slave: its master delivers, and the copies
/// replicate). The task stops when `stop` turns true, finishing its pass and saving a clean checkpoint.
pub async fn spawn(broker: &Arc<Broker>, mut stop: watch::Receiver<bool>) -> Result<Option<JoinHandle<()>>> {
    if broker.config.is_slave() {
        return Ok(None);
    }
    let mut timer = broker.blocking(Timer::open).await?;
    let broker = Arc::clone(broker);
    let tick = Duration::from_millis(broker.config.messaging.timer_tick_ms);
    Ok(Some(tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.changed() => break,
            }
            if *stop.borrow() {
                break;
            }
            match timer.pass(&broker).await {
                Ok(()) => timer.failed = false,
                Err(e) => {
                    tracing::warn!(error = %e, "timer pass failed; retrying (re-deliveries are checked for copies)");
                    timer.on_failure();
                    tokio::time::sleep(FAILURE_BACKOFF).await;
                }
            }
        }
        let index = Arc::clone(&timer.index);
        // After a failed pass, entries handed out may have been delivered without the checkpoint moving: the
        // next start must check them for copies, so the checkpoint is not marked clean.
        let clean = !timer.failed;
        let closed = broker.blocking(move |_| index.lock().take().map_or(Ok(()), |i| i.close(clean))).await;
        match closed {
            Ok(()) => tracing::info!("timer stopped"),
            Err(e) => tracing::error!(error = %e, "saving the timer checkpoint at shutdown failed"),
        }
    })))
}

/// The running timer's state (owned by its task).
struct Timer {
    /// The index; `None` once closed. Locked only by the timer task, inside blocking calls.
    index: Arc<Mutex<Option<TimerIndex>>>,
    /// Entries due at or before this time may have been delivered already: check for a copy first.
    verify_before: u64,
    /// False until the first pass has filed everything stored before the start.
    caught_up: bool,
    /// The last pass failed (entries it handed out may be delivered but not checkpointed).
    failed: bool,
}

/// A waiting message read back, with its delivery time.
struct Due {
    deliver_at: u64,
    stored: StoredMessage,
}

impl Timer {
    /// Opens the index (blocking). The timer topic is created by the first delayed send, not here, so a broker
    /// that never delays anything lists no timer topic.
    fn open(broker: &Broker) -> Result<Timer> {
        let m = &broker.config.messaging;
        let dir = broker.store.dir().join(TIMER_DIR);
        let (index, clean) = TimerIndex::open(&dir, m.timer_bucket_ms)?;
        let verify_before = if clean { 0 } else { now_ms() };
        tracing::info!(
            dir = %dir.display(),
            pending = index.pending(),
            buckets = index.bucket_count(),
            enqueued = index.enqueued().0,
            after_crash = !clean,
            "timer opened"
        );
        broker.metrics.set_timer_pending(index.pending());
        Ok(Timer { index: Arc::new(Mutex::new(Some(index))), verify_before, caught_up: false, failed: false })
    }

    /// After a failed pass: whatever was handed out is handed out again, and checked for copies.
    fn on_failure(&mut self) {
        self.failed = true;
        self.verify_before = self.verify_before.max(now_ms());
        if let Some(index) = self.index.lock().as_mut() {
            index.rewind();
        }
    }

    /// Runs `f` on the index on the blocking pool.
    async fn with_index<T: Send + 'static>(
        &self,
        broker: &Arc<Broker>,
        f: impl FnOnce(&mut TimerIndex) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let index = Arc::clone(&self.index);
        broker
            .blocking(move |_| match index.lock().as_mut() {
                Some(index) => f(index),
                None => Err(BrokerError::Internal("timer index closed".into())),
            })
            .await
    }

    /// One pass: file what arrived, deliver what is due.
    async fn pass(&mut self, broker: &Arc<Broker>) -> Result<()> {
        self.enqueue(broker).await?;
        self.deliver_due(broker).await?;
        let (pending, enqueued) = self.with_index(broker, |i| Ok((i.pending(), i.enqueued()))).await?;
        let backlog = broker.store.queue_range(TIMER_TOPIC, 0).map_or(0, |(_, end)| end.0.saturating_sub(enqueued.0));
        broker.metrics.set_timer_pending(pending + backlog);
        Ok(())
    }

    /// Files the timer topic's new messages. The first pass reads everything (so a crash's re-filings meet
    /// their originals in the buckets before any delivery); later passes stop after a bounded number of steps.
    async fn enqueue(&mut self, broker: &Arc<Broker>) -> Result<()> {
        let mut steps = 0;
        loop {
            let (from, floor) = self.with_index(broker, |i| Ok((i.enqueued(), i.delivered_until()))).await?;
            let read = broker
                .blocking(move |b| Ok(b.store.get_messages(TIMER_TOPIC, 0, from, BATCH, READ_BYTES, None)?))
                .await?;
            let next = read.next_offset;
            match read.status {
                GetStatus::Found => {}
                GetStatus::NoNewMessage | GetStatus::NoSuchQueue => break,
                GetStatus::OffsetMoved | GetStatus::OffsetOverflow | GetStatus::NoMatchedMessage => {
                    if read.status != GetStatus::NoMatchedMessage {
                        tracing::error!(
                            from = from.0,
                            to = next.0,
                            status = ?read.status,
                            "timer topic offsets skipped (retention deleted them, or the store lost its tail)"
                        );
                    }
                    self.with_index(broker, move |i| {
                        i.file(&[], next)?;
                        i.save()
                    })
                    .await?;
                    continue;
                }
            }
            let count = read.messages.len();
            let mut entries = Vec::with_capacity(count);
            let mut now_due = Vec::new();
            for stored in read.messages {
                let deliver_at = match stored.property(PROP_DELIVER_AT).map(str::parse::<u64>) {
                    Some(Ok(at)) => at,
                    _ => {
                        tracing::warn!(
                            msg_id = stored.msg_id(),
                            offset = stored.physical_offset().0,
                            "timer message without a valid delivery time; delivering it now"
                        );
                        0
                    }
                };
                if deliver_at < floor {
                    now_due.push(Due { deliver_at, stored });
                } else {
                    let size = u32::try_from(stored.size()).unwrap_or(u32::MAX);
                    entries.push(Entry { deliver_at, offset: stored.physical_offset(), size });
                }
            }
            // Delivered before the checkpoint moves past them: a crash in between re-reads them.
            if !now_due.is_empty() {
                self.deliver(broker, now_due).await?;
            }
            self.with_index(broker, move |i| {
                i.file(&entries, next)?;
                i.save()
            })
            .await?;
            broker.metrics.timer_enqueued(count as u64);
            steps += 1;
            if count < BATCH || (self.caught_up && steps >= ENQUEUE_STEPS_PER_PASS) {
                break;
            }
        }
        self.caught_up = true;
        Ok(())
    }

    /// Delivers every entry due by now, then advances the checkpoint.
    async fn deliver_due(&mut self, broker: &Arc<Broker>) -> Result<()> {
        let now = now_ms();
        loop {
            let entries = self.with_index(broker, move |i| i.due_within(now, BATCH, DUE_BYTES)).await?;
            if entries.is_empty() {
                break;
            }
            let dues = broker.blocking(move |b| read_entries(b, &entries)).await?;
            self.deliver(broker, dues).await?;
        }
        self.with_index(broker, move |i| i.advance(now + 1)).await
    }

    /// Copies `dues` to their real topics (skipping any delivered before a crash), in batches per queue.
    async fn deliver(&mut self, broker: &Arc<Broker>, dues: Vec<Due>) -> Result<()> {
        let verify_before = self.verify_before;
        let (mut copies, dropped, skipped) = broker.blocking(move |b| prepare(b, dues, verify_before)).await?;
        if skipped > 0 {
            tracing::info!(skipped, "timer: messages already delivered before the restart were not delivered again");
        }
        // Group by queue, keeping time order within each; the order across queues does not matter.
        copies.sort_by(|a, b| (a.topic.as_str(), a.queue_id).cmp(&(b.topic.as_str(), b.queue_id)));
        let mut delivered = 0u64;
        let mut batch: Vec<NewMessage> = Vec::new();
        let mut bytes = 0usize;
        for copy in copies {
            let same_queue = batch.last().is_none_or(|l| l.topic == copy.topic && l.queue_id == copy.queue_id);
            if !same_queue || batch.len() >= APPEND_MESSAGES || bytes + copy.body.len() > APPEND_BYTES {
                delivered += batch.len() as u64;
                broker.append_internal(std::mem::take(&mut batch)).await?;
                bytes = 0;
            }
            bytes += copy.body.len();
            batch.push(copy);
        }
        if !batch.is_empty() {
            delivered += batch.len() as u64;
            broker.append_internal(batch).await?;
        }
        broker.metrics.timer_dequeued(delivered, dropped);
        Ok(())
    }
}

/// Reads the records of `entries` (blocking). A record retention deleted is logged and skipped.
fn read_entries(broker: &Broker, entries: &[Entry]) -> Result<Vec<Due>> {
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        match broker.store.read(e.offset) {
            Ok(stored)
                if stored.topic() == TIMER_TOPIC
                    && stored.physical_offset() == e.offset
                    && stored.size() == e.size as usize =>
            {
                out.push(Due { deliver_at: e.deliver_at, stored });
            }
            Ok(other) => tracing::error!(
                offset = e.offset.0,
                found_topic = other.topic(),
                "timer entry points at another record (the log was truncated or rewritten); dropped"
            ),
            // A damaged record must not stop every later delivery: it is dropped, loudly.
            Err(err @ comet_store::Error::Corrupt { .. }) => tracing::error!(
                offset = e.offset.0,
                deliver_at = e.deliver_at,
                error = %err,
                "timer message unreadable (corrupt record); dropped"
            ),
            Err(comet_store::Error::OffsetMoved { .. } | comet_store::Error::NoRecord { .. }) => {
                tracing::error!(
                    offset = e.offset.0,
                    deliver_at = e.deliver_at,
                    "timer message deleted from the store before its time (retention or disk watermark); lost"
                );
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(out)
}

/// The copies to store for `dues` (blocking): real topic and queue restored, timer properties dropped. Returns
/// the copies, how many were dropped (topic gone, no queue, bad properties) and how many were skipped as
/// already delivered.
fn prepare(broker: &Broker, dues: Vec<Due>, verify_before: u64) -> Result<(Vec<NewMessage>, u64, u64)> {
    let (mut copies, mut dropped, mut skipped) = (Vec::with_capacity(dues.len()), 0u64, 0u64);
    for Due { deliver_at, stored } in dues {
        let Some(real_topic) = stored.property(PROP_REAL_TOPIC) else {
            tracing::warn!(msg_id = stored.msg_id(), "timer message without a real topic; dropped");
            dropped += 1;
            continue;
        };
        let Some(topic) = broker.topics.get(real_topic) else {
            tracing::warn!(msg_id = stored.msg_id(), topic = real_topic, "delayed message's topic is gone; dropped");
            dropped += 1;
            continue;
        };
        if topic.write_queue_nums == 0 {
            tracing::warn!(
                msg_id = stored.msg_id(),
                topic = real_topic,
                "delayed message's topic has no queue; dropped"
            );
            dropped += 1;
            continue;
        }
        let wanted: QueueId = stored.property(PROP_REAL_QUEUE_ID).and_then(|q| q.parse().ok()).unwrap_or(0);
        let queue_id = if wanted < topic.write_queue_nums {
            wanted
        } else {
            let chosen = wanted % topic.write_queue_nums;
            tracing::warn!(
                msg_id = stored.msg_id(),
                topic = real_topic,
                wanted,
                chosen,
                "delayed message's queue no longer exists; delivered to another queue"
            );
            chosen
        };
        if deliver_at <= verify_before && delivered_before(broker, &stored, real_topic)? {
            skipped += 1;
            continue;
        }
        copies.push(copy_to(
            &stored,
            real_topic,
            queue_id,
            Copy { drop: TIMER_PROPERTIES, reconsume_times: stored.reconsume_times(), ..Copy::default() },
        ));
    }
    Ok((copies, dropped, skipped))
}

/// True if a copy of the timer message `stored` already sits in `real_topic`, written after it.
fn delivered_before(broker: &Broker, stored: &StoredMessage, real_topic: &str) -> Result<bool> {
    let copies = broker.store.query_all_by_id(stored.msg_id(), VERIFY_CANDIDATES, 0, u64::MAX)?;
    Ok(copies.iter().any(|c| c.topic() == real_topic && c.physical_offset() > stored.physical_offset()))
}
