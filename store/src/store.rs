//! The store facade: opening and recovery, the write path, the read path, and shutdown.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use comet_model::{CommitLogOffset, QueueId, QueueOffset};
use parking_lot::{Condvar, Mutex, RwLock};

use crate::checkpoint::{Checkpoint, CheckpointFile};
use crate::commitlog::{AppendResult, CommitLog};
use crate::config::{FlushMode, StoreConfig};
use crate::consume_queue::ConsumeQueues;
use crate::error::{Error, Result};
use crate::flush::GroupCommit;
use crate::index::{IndexKey, KeyIndex};
use crate::record::{NewMessage, StoredMessage};

/// Told when new messages become visible in a queue; the broker wakes its long polls from here.
pub trait ArrivalListener: Send + Sync {
    /// `max_offset` is the new end of the queue. Called on the dispatcher thread: must not block.
    fn on_arrival(&self, topic: &str, queue_id: QueueId, max_offset: QueueOffset);
}

/// Filters messages on the read path: first cheaply by tag hash from the consume queue, then exactly.
pub trait MessageFilter {
    /// Cheap check on the tag hash; false skips the record without reading it.
    fn matches_tag_hash(&self, tag_hash: i64) -> bool;
    /// Exact check on the record (hash collisions).
    fn matches(&self, msg: &StoredMessage) -> bool;
}

/// Outcome of `get_messages` besides the messages themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetStatus {
    /// Messages were found (possibly fewer than asked for).
    Found,
    /// The offset is the end of the queue: wait for new messages.
    NoNewMessage,
    /// Entries were scanned but none matched the filter; continue from `next_offset`.
    NoMatchedMessage,
    /// The offset was deleted by retention; continue from `next_offset` (the minimum).
    OffsetMoved,
    /// The offset is beyond the end of the queue; `next_offset` is the end.
    OffsetOverflow,
    /// The queue has never received a message.
    NoSuchQueue,
}

/// Messages read from one queue.
#[derive(Debug, Clone)]
pub struct GetMessages {
    /// What happened.
    pub status: GetStatus,
    /// The messages, in queue order.
    pub messages: Vec<StoredMessage>,
    /// Where the next read should start.
    pub next_offset: QueueOffset,
    /// First readable offset of the queue.
    pub min_offset: QueueOffset,
    /// End of the queue.
    pub max_offset: QueueOffset,
}

/// Counters and positions for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoreStats {
    /// Oldest CommitLog offset still stored.
    pub min_offset: CommitLogOffset,
    /// End of the CommitLog.
    pub max_offset: CommitLogOffset,
    /// Everything below is durable.
    pub flushed_offset: CommitLogOffset,
    /// Everything below is in consume queues and the index.
    pub dispatched_offset: CommitLogOffset,
    /// Bytes of all store files.
    pub disk_bytes: u64,
    /// Last measured disk usage ratio (0..1).
    pub disk_usage: f64,
    /// Writes are refused because the disk is full.
    pub disk_full: bool,
    /// Writes are refused because of an earlier I/O failure.
    pub poisoned: bool,
    /// CommitLog flushes (fsyncs) completed since open.
    pub flushes: u64,
}

/// What start-up found and did; logged, and returned for tests and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The previous run did not shut down cleanly.
    pub after_crash: bool,
    /// Where the CommitLog scan started.
    pub scanned_from: CommitLogOffset,
    /// End of the recovered CommitLog.
    pub end: CommitLogOffset,
    /// Bytes cut from a torn or corrupt tail.
    pub truncated_bytes: u64,
    /// Records re-dispatched into consume queues and index.
    pub redispatched: u64,
    /// Wall time of `open`.
    pub elapsed: Duration,
}

pub(crate) struct Inner {
    pub(crate) config: StoreConfig,
    pub(crate) root: PathBuf,
    pub(crate) log: CommitLog,
    pub(crate) queues: ConsumeQueues,
    pub(crate) index: KeyIndex,
    pub(crate) commit: GroupCommit,
    pub(crate) checkpoint: CheckpointFile,
    /// Everything below is in consume queues and the index.
    pub(crate) dispatched: AtomicU64,
    pub(crate) disk_full: AtomicBool,
    /// Last measured usage ratio, as f64 bits.
    pub(crate) disk_usage: AtomicU64,
    pub(crate) stopping: AtomicBool,
    pub(crate) listener: RwLock<Option<Arc<dyn ArrivalListener>>>,
    pub(crate) arrivals: (Mutex<u64>, Condvar),
    pub(crate) arrival_waiters: AtomicUsize,
    pub(crate) dispatcher: Mutex<Option<std::thread::Thread>>,
    pub(crate) warmer: Mutex<Option<std::thread::Thread>>,
    /// Set by small appends: the warmer only works when asked.
    pub(crate) warm_requested: AtomicBool,
    /// Serialises retention passes (background thread and explicit calls) and truncations.
    pub(crate) cleaning: Mutex<()>,
    /// Held by the dispatcher for each batch, and by a truncation for all of it.
    pub(crate) dispatching: Mutex<()>,
    /// Serialises checkpoint writes with truncations (a checkpoint computed before a truncation must not land
    /// after it).
    pub(crate) checkpointing: Mutex<()>,
    /// Held for the life of the store: the directory lock.
    _lock: File,
}

/// A message store on one directory. Cheap to clone; the last clone dropped shuts it down cleanly.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    _life: Arc<Lifecycle>,
}

struct Lifecycle {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "store shutdown failed");
        }
    }
}

impl Lifecycle {
    fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let inner = &self.inner;
        inner.stopping.store(true, Ordering::Release);
        let threads: Vec<JoinHandle<()>> = self.threads.lock().drain(..).collect();
        for t in &threads {
            t.thread().unpark();
        }
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a store thread panicked");
            }
        }
        // Final flush and dispatch, then a checkpoint at the very end: the next start-up scans nothing.
        inner.commit.wait_durable(&inner.log, inner.log.end())?;
        inner.dispatch_pending()?;
        inner.write_checkpoint()?;
        let abort = inner.root.join(ABORT_MARKER);
        std::fs::remove_file(&abort).map_err(|e| Error::io("remove marker", &abort, e))?;
        crate::file::sync_parent_dir(&abort).map_err(|e| Error::io("sync", &inner.root, e))?;
        tracing::info!(dir = %inner.root.display(), end = inner.log.end(), "store closed cleanly");
        Ok(())
    }
}

/// How far past a record `Store::is_resident` asks the page cache about: a batch of a few dozen messages of a
/// few KiB, what one read of a consumer usually takes.
const RESIDENT_READ_SPAN: usize = 64 << 10;

/// Exists while a store is open; its presence at start-up means the last run did not shut down cleanly.
const ABORT_MARKER: &str = "abort";

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Store {
    /// Opens (creating if needed) the store in `config.dir`, recovering from a crash if there was one.
    pub fn open(config: StoreConfig) -> Result<Store> {
        Self::open_with_report(config).map(|(s, _)| s)
    }

    /// Like `open`, also returning what recovery did.
    pub fn open_with_report(config: StoreConfig) -> Result<(Store, RecoveryReport)> {
        let started = Instant::now();
        config.validate()?;
        let root = config.dir.clone();
        std::fs::create_dir_all(&root).map_err(|e| Error::io("create directory", &root, e))?;
        let lock = lock_dir(&root)?;
        let abort = root.join(ABORT_MARKER);
        let after_crash = abort.exists();
        let checkpoint = CheckpointFile::new(&root);
        let cq_dir = root.join("consumequeue");
        let index_dir = root.join("index");
        let mut start = checkpoint.load()?.map(|c| c.dispatched);
        if start.is_none() || !cq_dir.exists() || !index_dir.exists() {
            // Without a checkpoint, derived data cannot be trusted at all: rebuild it from the whole log.
            for d in [&cq_dir, &index_dir] {
                match std::fs::remove_dir_all(d) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("remove derived data", d, e)),
                }
            }
            start = None;
        }
        let recovered = CommitLog::open(&root.join("commitlog"), &config, start, after_crash)?;
        let log = recovered.log;
        let end = log.end();
        let trusted_end = start.unwrap_or(0).min(end).max(log.min_offset());
        let queues = ConsumeQueues::open(&cq_dir, config.consume_queue_file_entries, trusted_end, after_crash)?;
        let index = KeyIndex::open(&index_dir, config.index_slots, config.index_entries, trusted_end, after_crash)?;
        // What we read back may still sit only in the page cache (the process died, not the machine): make it
        // durable before anyone is told it is.
        log.flush(trusted_end, end).map_err(|e| Error::io("flush recovered log", log.dir(), e))?;

        let inner = Arc::new(Inner {
            commit: GroupCommit::new(end),
            root: root.clone(),
            log,
            queues,
            index,
            checkpoint,
            dispatched: AtomicU64::new(trusted_end),
            disk_full: AtomicBool::new(false),
            disk_usage: AtomicU64::new(0f64.to_bits()),
            stopping: AtomicBool::new(false),
            listener: RwLock::new(None),
            arrivals: (Mutex::new(0), Condvar::new()),
            arrival_waiters: AtomicUsize::new(0),
            dispatcher: Mutex::new(None),
            warmer: Mutex::new(None),
            warm_requested: AtomicBool::new(false),
            cleaning: Mutex::new(()),
            dispatching: Mutex::new(()),
            checkpointing: Mutex::new(()),
            _lock: lock,
            config,
        });
        let redispatched = inner.dispatch_pending()?;
        inner.log.set_queue_offsets(inner.queues.offset_table());
        let min = inner.log.min_offset();
        for q in inner.queues.all() {
            q.trim(min)?;
        }
        inner.write_checkpoint()?;
        inner.measure_disk();
        // Only now, with recovery complete, does the store count as running: a failed open leaves the
        // directory as it found it, so the next open does not mistake damage for a torn write.
        File::create(&abort).and_then(|f| f.sync_all()).map_err(|e| Error::io("create marker", &abort, e))?;
        crate::file::sync_parent_dir(&abort).map_err(|e| Error::io("sync", &root, e))?;

        let report = RecoveryReport {
            after_crash,
            scanned_from: CommitLogOffset(recovered.scanned_from),
            end: CommitLogOffset(end),
            truncated_bytes: recovered.truncated_bytes,
            redispatched,
            elapsed: started.elapsed(),
        };
        if let Some(reason) = &recovered.truncation_reason {
            tracing::warn!(%reason, at = end, bytes = report.truncated_bytes, "cut a torn CommitLog tail after a crash");
        }
        tracing::info!(dir = %root.display(), ?report, "store opened");

        let threads = crate::background::spawn(&inner)?;
        let life = Arc::new(Lifecycle { inner: inner.clone(), threads: Mutex::new(threads), closed: false.into() });
        Ok((Store { inner, _life: life }, report))
    }

    /// Appends one message. In sync flush mode returns only once it is durable.
    pub fn append(&self, msg: &NewMessage) -> Result<AppendResult> {
        let mut r = self.append_batch(std::slice::from_ref(msg))?;
        r.pop().ok_or(Error::Closed)
    }

    /// Appends a batch atomically (all in one segment, one lock acquisition). In sync flush mode returns only
    /// once the whole batch is durable.
    // Hot path: no logging, no blocking besides the writer lock and (sync mode) the group commit.
    pub fn append_batch(&self, msgs: &[NewMessage]) -> Result<Vec<AppendResult>> {
        self.append_batch_waking(msgs, true)
    }

    /// [`Self::append`] for records nobody waits to read (journals replayed only at start-up): durable as any
    /// append, but the dispatcher is not woken for it and indexes it at its next pass (within 100 ms, or at once
    /// with the next ordinary append), which spares a thread wake-up per record.
    pub fn append_unhurried(&self, msg: &NewMessage) -> Result<AppendResult> {
        let mut r = self.append_batch_waking(std::slice::from_ref(msg), false)?;
        r.pop().ok_or(Error::Closed)
    }

    fn append_batch_waking(&self, msgs: &[NewMessage], wake: bool) -> Result<Vec<AppendResult>> {
        let inner = &self.inner;
        inner.check_writable()?;
        let results = match inner.config.flush_mode {
            FlushMode::Sync => {
                let _in_flight = inner.commit.begin_append();
                inner.log.append(msgs, now_ms())
            }
            FlushMode::Async => inner.log.append(msgs, now_ms()),
        };
        let results = results.map_err(|e| inner.on_write_error(e))?;
        // Small async appends are cheapest into pre-faulted pages: ask the warmer to stay ahead. Large appends
        // and sync mode write with `pwrite` only, so they never ask (see `CommitLog::append`).
        let small = results.iter().map(|r| r.size as usize).sum::<usize>() <= crate::commitlog::DIRECT_MAX;
        if inner.config.flush_mode == FlushMode::Async
            && small
            && inner.log.needs_warming()
            && let Some(t) = &*inner.warmer.lock()
        {
            inner.warm_requested.store(true, Ordering::Release);
            t.unpark();
        }
        if inner.config.flush_mode == FlushMode::Sync {
            let end = results.last().map_or(0, |r| r.offset.0 + u64::from(r.size));
            inner.commit.wait_durable(&inner.log, end)?;
        }
        if wake {
            inner.dispatch_or_wake();
        }
        Ok(results)
    }

    /// Reads the message whose record starts at `offset`.
    pub fn read(&self, offset: CommitLogOffset) -> Result<StoredMessage> {
        self.inner.log.read(offset)
    }

    /// Reads up to `max_count` messages (and about `max_bytes`) of a queue from `from`, filtered.
    pub fn get_messages(
        &self,
        topic: &str,
        queue_id: QueueId,
        from: QueueOffset,
        max_count: usize,
        max_bytes: usize,
        filter: Option<&dyn MessageFilter>,
    ) -> Result<GetMessages> {
        crate::read::get_messages(&self.inner, topic, queue_id, from, max_count, max_bytes, filter)
    }

    /// First and end offsets of a queue, if it exists.
    pub fn queue_range(&self, topic: &str, queue_id: QueueId) -> Option<(QueueOffset, QueueOffset)> {
        let q = self.inner.queues.get(topic, queue_id)?;
        Some((q.min_offset(), q.max_offset()))
    }

    /// True when reading a queue from `offset` will not wait for the disk: the queue ends there (what arrives
    /// next is fresh), or its consume-queue entry is mapped or cached and the record there lies in the CommitLog's
    /// resident window (its last 128 MiB, kept mapped and written recently) or has its next 64 KiB in the page
    /// cache (a backlog still cached: one `mincore` call). Lets callers read in place instead of on a blocking
    /// pool.
    pub fn is_resident(&self, topic: &str, queue_id: QueueId, offset: QueueOffset) -> bool {
        let Some(queue) = self.inner.queues.get(topic, queue_id) else { return true };
        if offset >= queue.max_offset() {
            return true;
        }
        let floor = self.inner.log.end().saturating_sub(crate::background::RESIDENT_WINDOW);
        queue.cached_entry(offset).is_some_and(|entry| {
            entry.offset >= floor || self.inner.log.in_page_cache(entry.offset, RESIDENT_READ_SPAN)
        })
    }

    /// When the message at `offset` of a queue was stored (ms since the epoch), if it is still stored. Reads
    /// one consume-queue entry and one record header: consumer lag in time, computed at metrics collection.
    pub fn store_time_at(&self, topic: &str, queue_id: QueueId, offset: QueueOffset) -> Option<u64> {
        let entry = self.inner.queues.get(topic, queue_id)?.get(offset)?;
        self.inner.log.store_timestamp_at(entry.offset)
    }

    /// Store time of the oldest message still stored (ms since the epoch); `None` when the log is empty.
    pub fn oldest_store_time(&self) -> Option<u64> {
        let log = &self.inner.log;
        let min = log.min_offset();
        if min >= log.end() {
            return None;
        }
        log.store_timestamp_at(min)
    }

    /// The first queue offset whose message was stored at or after `timestamp_ms` (the end if none).
    pub fn offset_by_time(&self, topic: &str, queue_id: QueueId, timestamp_ms: u64) -> Option<QueueOffset> {
        crate::read::offset_by_time(&self.inner, topic, queue_id, timestamp_ms)
    }

    /// Messages of `topic` carrying `key`, stored within `[begin_ms, end_ms]`, newest first, at most `max`.
    pub fn query_by_key(
        &self,
        topic: &str,
        key: &str,
        max: usize,
        begin_ms: u64,
        end_ms: u64,
    ) -> Result<Vec<StoredMessage>> {
        let offsets = self.inner.index.lookup(IndexKey::Key { topic, key }, max, begin_ms, end_ms);
        let mut out = Vec::with_capacity(offsets.len());
        // Index entries are candidates: the record read must carry the key and lie in the time range (a
        // truncated log may hold a different record at an indexed offset now, or none).
        for off in offsets {
            match self.inner.log.read(CommitLogOffset(off)) {
                Ok(m)
                    if m.topic() == topic
                        && (begin_ms..=end_ms).contains(&m.store_timestamp())
                        && m.key_list().any(|k| k == key) =>
                {
                    out.push(m)
                }
                Ok(_) | Err(Error::OffsetMoved { .. } | Error::NoRecord { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The message with id `msg_id`, if stored.
    pub fn query_by_id(&self, msg_id: &str) -> Result<Option<StoredMessage>> {
        for off in self.inner.index.lookup(IndexKey::Id(msg_id), 16, 0, u64::MAX) {
            match self.inner.log.read(CommitLogOffset(off)) {
                Ok(m) if m.msg_id() == msg_id => return Ok(Some(m)),
                Ok(_) | Err(Error::OffsetMoved { .. } | Error::NoRecord { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Store time of the newest record in the key/id index (0 = none): how recent an id lookup can still hit.
    pub fn newest_indexed_time(&self) -> u64 {
        self.inner.index.last_timestamp()
    }

    /// Every stored message with id `msg_id` (any topic) stored within `[begin_ms, end_ms]`, newest first, at
    /// most `max`: idempotent send and transaction commits look for earlier copies of one id.
    pub fn query_all_by_id(&self, msg_id: &str, max: usize, begin_ms: u64, end_ms: u64) -> Result<Vec<StoredMessage>> {
        let mut out = Vec::new();
        for off in self.inner.index.lookup(IndexKey::Id(msg_id), max, begin_ms, end_ms) {
            match self.inner.log.read(CommitLogOffset(off)) {
                Ok(m) if m.msg_id() == msg_id && (begin_ms..=end_ms).contains(&m.store_timestamp()) => out.push(m),
                Ok(_) | Err(Error::OffsetMoved { .. } | Error::NoRecord { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Blocks until the queue's end passes `after`, or `timeout` elapses; true if it did.
    pub fn wait_for_messages(&self, topic: &str, queue_id: QueueId, after: QueueOffset, timeout: Duration) -> bool {
        let inner = &self.inner;
        let deadline = Instant::now() + timeout;
        let has_more = || inner.queues.get(topic, queue_id).is_some_and(|q| q.max_offset() > after);
        inner.arrival_waiters.fetch_add(1, Ordering::AcqRel);
        let (lock, cv) = &inner.arrivals;
        let mut generation = lock.lock();
        let found = loop {
            if has_more() {
                break true;
            }
            if cv.wait_until(&mut generation, deadline).timed_out() {
                break has_more();
            }
        };
        drop(generation);
        inner.arrival_waiters.fetch_sub(1, Ordering::AcqRel);
        found
    }

    /// Installs the listener told about new messages (replaces any previous one).
    pub fn set_arrival_listener(&self, listener: Arc<dyn ArrivalListener>) {
        *self.inner.listener.write() = Some(listener);
    }

    /// Raw CommitLog bytes from `from` for a slave's `append_raw`: whole records (at most `max` bytes, but at
    /// least one record however large) or the end-of-segment marker, never across a segment boundary. `from`
    /// must be a record boundary (a slave's end always is); `None` at the end of the log.
    pub fn read_raw(&self, from: CommitLogOffset, max: usize) -> Result<Option<Bytes>> {
        self.inner.log.read_raw(from.0, max)
    }

    /// Appends a chunk from the master's `read_raw` verbatim at the same offset, so this slave's CommitLog stays
    /// byte-identical to the master's; returns the new end. `at` must be this log's end ([`Error::ReplicaGap`]);
    /// the whole chunk is validated first (whole records at their own offsets with valid CRCs, optionally an end
    /// marker filling the segment), so a bad chunk writes nothing ([`Error::ReplicaRejected`],
    /// [`Error::SegmentMismatch`]). Consume queues, index and arrival listeners follow as for `append`; in sync
    /// flush mode it returns once the chunk is durable. Serialised with `append` by the writer lock.
    pub fn append_raw(&self, at: CommitLogOffset, bytes: &[u8]) -> Result<CommitLogOffset> {
        let inner = &self.inner;
        inner.check_writable()?;
        let end = match inner.config.flush_mode {
            FlushMode::Sync => {
                let _in_flight = inner.commit.begin_append();
                inner.log.append_raw(at.0, bytes)
            }
            FlushMode::Async => inner.log.append_raw(at.0, bytes),
        };
        let end = end.map_err(|e| inner.on_write_error(e))?;
        if inner.config.flush_mode == FlushMode::Sync {
            inner.commit.wait_durable(&inner.log, end)?;
        }
        inner.wake_dispatcher();
        Ok(CommitLogOffset(end))
    }

    /// Cuts the log back to `to` so a slave whose log diverged from its master's (a tail the master never had)
    /// can refetch from there. `to >= end` is a no-op; a `to` inside the log must be a record boundary
    /// ([`Error::NotRecordBoundary`]) and everything from it on is removed from the CommitLog, the consume queues
    /// and the index, durably, before this returns; `to` below the oldest data (or any `to` on an empty store)
    /// is [`Store::restart_at`]. Readers of removed data get `NoRecord`/`OffsetMoved`/empty results. Must not
    /// race appends whose data it removes (a sync append waiting for it fails with [`Error::Truncated`]): the
    /// replication client runs it between its own `append_raw` calls.
    pub fn truncate(&self, to: CommitLogOffset) -> Result<()> {
        self.inner.truncate(to.0)
    }

    /// Deletes every message and restarts the log empty at `base` (a multiple of `segment-size`,
    /// [`Error::SegmentMismatch`] otherwise), for a slave whose log ends before its master's oldest data or
    /// shares none of it. Consume queues restart at the queue offsets of the first records that arrive.
    pub fn restart_at(&self, base: CommitLogOffset) -> Result<()> {
        self.inner.restart_at(base.0)
    }

    /// End of the CommitLog (where the next append lands), cheaply: a replication position.
    pub fn end_offset(&self) -> CommitLogOffset {
        CommitLogOffset(self.inner.log.end())
    }

    /// Oldest CommitLog offset still stored, cheaply: below it a slave must restart.
    pub fn min_offset(&self) -> CommitLogOffset {
        CommitLogOffset(self.inner.log.min_offset())
    }

    /// Size of a CommitLog segment: master and slave must agree on it for byte-identical logs.
    pub fn segment_size(&self) -> u64 {
        self.inner.log.segment_size()
    }

    /// Base offsets of the stored CommitLog segments, oldest first: where divergence searches start walking.
    pub fn segment_bases(&self) -> Vec<CommitLogOffset> {
        self.inner.log.segment_bases().into_iter().map(CommitLogOffset).collect()
    }

    /// Start and size of every record starting in `[from, to)` (`to` clamped to the end), following end markers
    /// into the next segment, for comparing records with the master's. `from` must be a record boundary or a
    /// segment base ([`Error::NotRecordBoundary`]; checked by the record's own offset field there).
    pub fn record_spans(&self, from: CommitLogOffset, to: CommitLogOffset) -> Result<Vec<(CommitLogOffset, u32)>> {
        let spans = self.inner.log.record_spans(from.0, to.0)?;
        Ok(spans.into_iter().map(|(o, n)| (CommitLogOffset(o), n)).collect())
    }

    /// CRC-32C of the raw bytes `[from, from + len)`, to compare a range with the master's without moving it;
    /// `None` unless all of it is stored in one segment.
    pub fn crc_range(&self, from: CommitLogOffset, len: u32) -> Result<Option<u32>> {
        Ok(self.inner.log.crc_range(from.0, len))
    }

    /// Topics with their queue ids.
    pub fn topics(&self) -> Vec<(String, Vec<QueueId>)> {
        self.inner.queues.topics()
    }

    /// Deletes a topic's consume queues (its records stay in the CommitLog until retention removes them).
    pub fn delete_topic(&self, topic: &str) -> Result<()> {
        self.inner.queues.remove_topic(topic)
    }

    /// Positions and usage.
    pub fn stats(&self) -> StoreStats {
        let inner = &self.inner;
        StoreStats {
            min_offset: CommitLogOffset(inner.log.min_offset()),
            max_offset: CommitLogOffset(inner.log.end()),
            flushed_offset: CommitLogOffset(inner.commit.flushed()),
            dispatched_offset: CommitLogOffset(inner.dispatched.load(Ordering::Acquire)),
            disk_bytes: inner.disk_bytes(),
            disk_usage: f64::from_bits(inner.disk_usage.load(Ordering::Acquire)),
            disk_full: inner.disk_full.load(Ordering::Acquire),
            poisoned: inner.commit.poisoned().is_some(),
            flushes: inner.commit.flush_count(),
        }
    }

    /// Runs one retention pass as of `now_ms` (the background cleaner calls this with the wall clock).
    pub fn enforce_retention(&self, now_ms: u64) -> Result<crate::RetentionReport> {
        self.inner.enforce_retention(now_ms)
    }

    /// Makes everything appended so far durable (for async mode callers that need a barrier).
    pub fn flush(&self) -> Result<()> {
        self.inner.commit.wait_durable(&self.inner.log, self.inner.log.end())
    }

    /// Shuts down cleanly now: final flush, dispatch and checkpoint; the next open scans nothing.
    pub fn close(self) -> Result<()> {
        self._life.close()
    }

    /// The store's root directory.
    pub fn dir(&self) -> &Path {
        &self.inner.root
    }

    /// Reads every stored record and checks its CRC: the full scan that start-up deliberately avoids.
    /// Stops at the first damaged record and reports it.
    pub fn verify(&self) -> Result<VerifyReport> {
        let log = &self.inner.log;
        let mut report = VerifyReport { records: 0, bytes: 0, first_error: None };
        let mut pos = log.min_offset();
        let end = log.end();
        while pos < end {
            let Some(seg) = log.segment_for(pos) else { break };
            match log.step(&seg, pos) {
                Ok((crate::commitlog::Step::Jump(next), _)) => pos = next,
                Ok((crate::commitlog::Step::End, _)) => break,
                Ok((crate::commitlog::Step::Record, _)) => match log.read(CommitLogOffset(pos)) {
                    Ok(m) => {
                        report.records += 1;
                        report.bytes += m.size() as u64;
                        pos = m.next_physical_offset().0;
                    }
                    Err(e) => {
                        report.first_error = Some(e.to_string());
                        break;
                    }
                },
                Err(e) => {
                    report.first_error = Some(e.to_string());
                    break;
                }
            }
        }
        Ok(report)
    }
}

/// Result of [`Store::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records whose CRC matched.
    pub records: u64,
    /// Their total size.
    pub bytes: u64,
    /// The first damaged record (file, offset, reason), if any.
    pub first_error: Option<String>,
}

impl Inner {
    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if let Some(reason) = self.commit.poisoned() {
            return Err(Error::Poisoned { reason });
        }
        if self.disk_full.load(Ordering::Acquire) {
            return Err(Error::DiskFull {
                usage_percent: f64::from_bits(self.disk_usage.load(Ordering::Acquire)) * 100.0,
                limit_percent: self.config.disk_full_ratio * 100.0,
            });
        }
        Ok(())
    }

    /// Classifies a write failure: a full disk is retryable, other I/O errors poison the store.
    pub(crate) fn on_write_error(&self, e: Error) -> Error {
        match e {
            Error::Io { ref source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
                self.disk_full.store(true, Ordering::Release);
                self.disk_usage.store(1f64.to_bits(), Ordering::Release);
                Error::DiskFull { usage_percent: 100.0, limit_percent: self.config.disk_full_ratio * 100.0 }
            }
            Error::Io { .. } => {
                self.commit.poison(e.to_string());
                e
            }
            other => other,
        }
    }

    /// Makes what was just appended visible to consumers: dispatched on the calling thread when nobody else is
    /// dispatching, so no thread wake-up sits between an append and the consumers it wakes (at 50 000 unbatched
    /// sends/s that hand-off was a context switch per message). The dispatcher thread is woken when that is not
    /// possible or not finished: another dispatch under way, more than a batch waiting, a record that needs a
    /// new consume-queue or index file (never created on an appender's thread), or a failure (the thread retries
    /// and logs).
    pub(crate) fn dispatch_or_wake(&self) {
        let done = match self.dispatching.try_lock() {
            Some(_dispatching) => {
                let dispatched = self.dispatch_up_to(u64::MAX, crate::dispatch::Mode::Inline);
                dispatched.is_ok() && self.dispatched.load(Ordering::Acquire) >= self.visible_end()
            }
            None => false,
        };
        if !done {
            self.wake_dispatcher();
        }
    }

    pub(crate) fn wake_dispatcher(&self) {
        if let Some(t) = &*self.dispatcher.lock() {
            t.unpark();
        }
    }

    /// Flushes derived data and records how far it reaches.
    pub(crate) fn write_checkpoint(&self) -> Result<()> {
        let _checkpointing = self.checkpointing.lock();
        self.store_checkpoint(u64::MAX)
    }

    /// `write_checkpoint` claiming no more than `cap`; the caller holds the checkpoint lock.
    pub(crate) fn store_checkpoint(&self, cap: u64) -> Result<()> {
        let dispatched = self.dispatched.load(Ordering::Acquire).min(self.commit.flushed()).min(cap);
        for q in self.queues.all() {
            q.flush().map_err(|e| Error::io("flush consume queue", &self.root, e))?;
        }
        self.index.flush().map_err(|e| Error::io("flush index", &self.root, e))?;
        self.checkpoint.store(&Checkpoint { dispatched, timestamp: now_ms() })
    }

    pub(crate) fn disk_bytes(&self) -> u64 {
        self.log.disk_bytes() + self.queues.disk_bytes() + self.index.disk_bytes()
    }
}

fn lock_dir(root: &Path) -> Result<File> {
    let path = root.join("lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("open lock", &path, e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked { path: root.to_owned() }),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io("lock", &path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FlushMode;

    fn config(dir: &Path, mode: FlushMode) -> StoreConfig {
        StoreConfig {
            flush_mode: mode,
            segment_size: 1 << 20,
            max_message_size: 64 << 10,
            index_slots: 64,
            index_entries: 256,
            // Usage against 1 TiB: a shared CI disk already past the 90 % limit must not refuse these writes.
            disk_capacity_bytes: Some(1 << 40),
            ..StoreConfig::new(dir)
        }
    }

    fn open(dir: &Path, mode: FlushMode) -> Store {
        Store::open(config(dir, mode)).expect("open")
    }

    #[test]
    fn failed_fsync_fails_the_writer_and_poisons_the_store_until_reopened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), FlushMode::Sync);
        let ok = store.append(&NewMessage::new("T", 0, "durable")).expect("first append");
        store.inner.commit.fail_next.store(true, Ordering::SeqCst);
        let err = store.append(&NewMessage::new("T", 0, "not durable")).expect_err("fsync failed");
        assert!(matches!(err, Error::Poisoned { ref reason } if reason.contains("injected")), "{err}");
        let again = store.append(&NewMessage::new("T", 0, "refused")).expect_err("poisoned");
        assert!(matches!(again, Error::Poisoned { .. }));
        assert!(store.stats().poisoned);
        assert_eq!(store.read(ok.offset).expect("earlier data stays readable").body(), &b"durable"[..]);
        drop(store); // shutdown cannot flush: the crash marker stays, and the next open recovers
        let (store, report) = Store::open_with_report(config(dir.path(), FlushMode::Sync)).expect("reopen");
        assert!(report.after_crash);
        store.append(&NewMessage::new("T", 0, "after reopen")).expect("writes work again");
    }

    #[test]
    fn failed_background_flush_poisons_an_async_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), FlushMode::Async);
        store.append(&NewMessage::new("T", 0, "x")).expect("append");
        store.inner.commit.fail_next.store(true, Ordering::SeqCst);
        assert!(matches!(store.flush(), Err(Error::Poisoned { .. })));
        assert!(matches!(store.append(&NewMessage::new("T", 0, "y")), Err(Error::Poisoned { .. })));
    }
}
