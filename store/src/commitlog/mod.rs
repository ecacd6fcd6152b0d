//! The CommitLog: every message of every topic, appended to one log split into mapped segment files.
//!
//! Writers serialise on one lock (`Writer`) just long enough to reserve space, assign queue offsets and encode
//! into the map; readers never take it. `end` is the published end of the log: every byte below it is a
//! complete record or an end-of-segment marker.

mod raw;
mod recovery;
mod segment;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use comet_model::{CommitLogOffset, QueueId, QueueOffset};
use parking_lot::{Mutex, MutexGuard, RwLock};

pub(crate) use segment::Segment;
use segment::SegmentSlice;

use crate::error::{Error, Result};
use crate::record::{self, DecodeError, END_MARKER_LEN, Frame, Layout, NewMessage, Placement, StoredMessage};

/// Where an appended message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// Start of its record in the CommitLog.
    pub offset: CommitLogOffset,
    /// Encoded size of the record.
    pub size: u32,
    /// Its position in the consume queue of (topic, queue id).
    pub queue_offset: QueueOffset,
    /// The store timestamp written into the record.
    pub store_timestamp: u64,
}

/// Next queue offset per (topic, queue id): assigned under the writer lock.
pub(crate) type QueueOffsetTable = HashMap<String, HashMap<QueueId, u64>>;

struct Writer {
    active: Arc<Segment>,
    /// Next write position (absolute); equals `CommitLog::end`.
    pos: u64,
    queue_offsets: QueueOffsetTable,
    /// Last store timestamp handed out: store timestamps never go backwards, so lookups by time can bisect.
    last_timestamp: u64,
    /// Encoding buffer, reused across appends (grows to the largest batch seen).
    buf: Vec<u8>,
}

/// The writer lock, held across a truncation so no append can interleave with it.
pub(crate) struct WriterGuard<'a>(MutexGuard<'a, Writer>);

/// The append-only log of all messages.
pub(crate) struct CommitLog {
    dir: PathBuf,
    segment_size: u64,
    max_body: u32,
    store_host: SocketAddr,
    segments: RwLock<Vec<Arc<Segment>>>,
    writer: Mutex<Writer>,
    end: AtomicU64,
    min: AtomicU64,
    /// The active segment is faulted in up to here (see `warm`).
    warmed: AtomicU64,
}

/// Appends up to this size may be stored directly through the map; larger ones always use `pwrite`.
pub(crate) const DIRECT_MAX: usize = 8 * 1024;
/// How far ahead of the write position the warmer keeps pages faulted in.
const WARM_AHEAD: u64 = 16 << 20;
/// Pages are faulted in this many bytes per call, and the warmer yields its CPU between calls (it also runs at a
/// lower priority, background.rs), so serving threads get a turn while it works 16 MiB ahead.
const WARM_CHUNK: u64 = 256 << 10;

/// A record found while walking the log, borrowed from its segment.
pub(crate) struct Walked<'a> {
    pub(crate) layout: Layout,
    pub(crate) bytes: &'a [u8],
}

/// One step of a walk along the log.
pub(crate) enum Step {
    /// A record starts here.
    Record,
    /// Continue at this offset (the next segment).
    Jump(u64),
    /// Nothing readable here (yet).
    End,
}

impl CommitLog {
    /// Size of new segments (the configured `segment-size`).
    pub(crate) fn segment_size(&self) -> u64 {
        self.segment_size
    }

    /// Base offsets of the stored segments, oldest first.
    pub(crate) fn segment_bases(&self) -> Vec<u64> {
        self.segments.read().iter().map(|s| s.base()).collect()
    }

    /// Takes the writer lock for a multi-step change of the log (truncation).
    pub(crate) fn writer(&self) -> WriterGuard<'_> {
        WriterGuard(self.writer.lock())
    }

    /// Smallest offset still stored.
    pub(crate) fn min_offset(&self) -> u64 {
        self.min.load(Ordering::Acquire)
    }

    /// Published end of the log.
    pub(crate) fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of CommitLog files on disk.
    pub(crate) fn disk_bytes(&self) -> u64 {
        self.segments.read().iter().map(|s| s.size() as u64).sum()
    }

    /// Appends a batch under one lock acquisition; the whole batch lands in one segment or nothing is written.
    // Hot path: one lock, no allocation per message besides the result vector, no logging.
    pub(crate) fn append(&self, msgs: &[NewMessage], now_ms: u64) -> Result<Vec<AppendResult>> {
        let mut sizes = Vec::with_capacity(msgs.len());
        let mut total = 0usize;
        for m in msgs {
            let n = record::encoded_len(m, self.max_body)?;
            sizes.push(n);
            total += n;
        }
        if (total + END_MARKER_LEN) as u64 > self.segment_size {
            return Err(Error::BatchTooLarge { size: total as u64, segment_size: self.segment_size });
        }
        let mut w = self.writer.lock();
        if w.pos + (total + END_MARKER_LEN) as u64 > w.active.limit() {
            self.roll(&mut w)?;
        }
        let timestamp = now_ms.max(w.last_timestamp);
        let seg = w.active.clone();
        let start = seg.rel(w.pos);
        let base = w.pos;
        // Small appends into pages the warmer has already faulted in are stored directly through the map (no
        // syscall). Everything else is encoded into a buffer and written with one `pwrite`, which fills fresh
        // pages without the kernel zeroing them first and leaves no writable mapping for the flusher to
        // write-protect (each of those costs a TLB-shootdown IPI).
        let warm = total <= DIRECT_MAX && base + total as u64 <= self.warmed.load(Ordering::Acquire);
        let Writer { queue_offsets, buf, .. } = &mut *w;
        let mut results = Vec::with_capacity(msgs.len());
        let mut at = 0usize;
        // A batch is usually one run of messages for one queue: one table lookup per run, not two per message.
        let mut from = 0;
        while let Some(first) = msgs.get(from) {
            let run =
                msgs[from..].iter().take_while(|m| m.topic == first.topic && m.queue_id == first.queue_id).count();
            let first_offset = take_queue_offsets(queue_offsets, &first.topic, first.queue_id, run as u64);
            for (queue_offset, &n) in (first_offset..).zip(&sizes[from..from + run]) {
                results.push(AppendResult {
                    offset: CommitLogOffset(base + at as u64),
                    size: n as u32,
                    queue_offset: QueueOffset(queue_offset),
                    store_timestamp: timestamp,
                });
                at += n;
            }
            from += run;
        }
        let placement = |r: &AppendResult| Placement {
            physical_offset: r.offset,
            queue_offset: r.queue_offset,
            store_timestamp: timestamp,
            store_host: self.store_host,
        };
        // SAFETY: we hold the writer lock, the only path that writes CommitLog segments, and the region starts at
        // the published end, so no reader can observe it until `publish` below. (One contiguous `pwrite` measured
        // faster than a `pwritev` taking bodies in place: the kernel copies per iovec.)
        let written = match if warm { unsafe { seg.file().unpublished_mut(start, total) } } else { None } {
            Some(region) => {
                let mut at = 0;
                for (m, r) in msgs.iter().zip(&results) {
                    let n = r.size as usize;
                    record::encode(&mut region[at..at + n], m, &placement(r));
                    at += n;
                }
                Ok(())
            }
            None => {
                if buf.len() < total {
                    buf.resize(total, 0);
                }
                let mut at = 0;
                for (m, r) in msgs.iter().zip(&results) {
                    let n = r.size as usize;
                    record::encode(&mut buf[at..at + n], m, &placement(r));
                    at += n;
                }
                seg.file().write_at(start, &buf[..total])
            }
        };
        if let Err(e) = written {
            // Nothing was published: give the queue offsets back so the next append reuses them.
            for m in msgs {
                rewind_queue_offset(queue_offsets, &m.topic, m.queue_id);
            }
            return Err(Error::io("write CommitLog", seg.path(), e));
        }
        w.last_timestamp = timestamp;
        seg.file().publish(start + total);
        w.pos += total as u64;
        self.end.store(w.pos, Ordering::Release);
        Ok(results)
    }

    /// True when the warmer should run: the write position is within half a window of the warmed end.
    pub(crate) fn needs_warming(&self) -> bool {
        self.end() + WARM_AHEAD / 2 > self.warmed.load(Ordering::Acquire)
    }

    /// Faults in the active segment ahead of the writer, one chunk at a time. Warmer thread only.
    pub(crate) fn warm(&self) {
        loop {
            let Some(seg) = self.segments.read().last().cloned() else { return };
            let from = self.warmed.load(Ordering::Acquire).max(self.end()).max(seg.base());
            let target = (self.end() + WARM_AHEAD).min(seg.limit());
            if from >= target {
                return;
            }
            let to = target.min(from + WARM_CHUNK);
            if !seg.file().populate(seg.rel(from), (to - from) as usize) {
                // Old kernel: stay on the pwrite path for good.
                return;
            }
            self.warmed.fetch_max(to, Ordering::AcqRel);
            std::thread::yield_now();
        }
    }

    /// Closes the active segment with an end marker and starts the next one. A segment that a replicated chunk
    /// already closed (its marker fills it and the write position is its limit) gets no second marker.
    fn roll(&self, w: &mut Writer) -> Result<()> {
        let next_base = w.active.limit();
        // Create the next file first: if the disk is full nothing changes and the append fails cleanly.
        let next = Arc::new(Segment::create(&self.dir, next_base, self.segment_size)?);
        let old = w.active.clone();
        if w.pos < old.limit() {
            let rel = old.rel(w.pos);
            let remaining = old.size() - rel;
            // The append invariant keeps at least END_MARKER_LEN bytes free, so the marker always fits.
            let mut marker = [0u8; END_MARKER_LEN];
            record::encode_end_marker(&mut marker, remaining);
            if let Err(e) = old.file().write_at(rel, &marker) {
                let _ = std::fs::remove_file(next.path()); // so the next roll can create it again
                return Err(Error::io("write end marker", old.path(), e));
            }
            old.file().publish(old.size());
        }
        self.segments.write().push(next.clone());
        w.active = next;
        w.pos = next_base;
        self.end.store(next_base, Ordering::Release);
        Ok(())
    }

    /// The segment holding `offset`.
    pub(crate) fn segment_for(&self, offset: u64) -> Option<Arc<Segment>> {
        let segs = self.segments.read();
        let i = segs.partition_point(|s| s.base() <= offset);
        let seg = segs.get(i.checked_sub(1)?)?;
        (offset < seg.limit()).then(|| seg.clone())
    }

    /// Reads the message whose record starts at `offset`; zero copy.
    pub(crate) fn read(&self, offset: CommitLogOffset) -> Result<StoredMessage> {
        let min = self.min_offset();
        if offset.0 < min {
            return Err(Error::OffsetMoved { requested: offset, min: CommitLogOffset(min) });
        }
        if offset.0 >= self.end() {
            return Err(Error::NoRecord { offset });
        }
        let seg = self.segment_for(offset.0).ok_or(Error::NoRecord { offset })?;
        let rel = seg.rel(offset.0);
        let head = seg.file().bytes(rel, 8).ok_or(Error::NoRecord { offset })?;
        let size = match record::peek(head) {
            Ok(Frame::Record(size)) => size,
            _ => return Err(Error::NoRecord { offset }),
        };
        let corrupt = |reason: String| Error::Corrupt { path: seg.path().to_owned(), offset: rel as u64, reason };
        let Some(bytes) = SegmentSlice::bytes(&seg, rel, size) else {
            // A truncation (replication) may have just cut the log under us.
            if offset.0 >= self.end() || seg.file().published() <= rel {
                return Err(Error::NoRecord { offset });
            }
            return Err(corrupt(format!("record of {size} bytes runs past the end of the log")));
        };
        let msg = StoredMessage::decode(bytes).map_err(|e| corrupt(e.to_string()))?;
        if msg.physical_offset() != offset {
            return Err(corrupt(format!("record claims offset {}", msg.physical_offset())));
        }
        Ok(msg)
    }

    /// True when the `span` bytes from `offset` (within its segment) are in the page cache: a read there will not
    /// wait for the disk.
    pub(crate) fn in_page_cache(&self, offset: u64, span: usize) -> bool {
        self.segment_for(offset).is_some_and(|seg| {
            let rel = seg.rel(offset);
            seg.file().in_page_cache(rel, rel.saturating_add(span))
        })
    }

    /// Reads just the store timestamp of the record at `offset` (no CRC check): for bisecting by time.
    pub(crate) fn store_timestamp_at(&self, offset: u64) -> Option<u64> {
        let seg = self.segment_for(offset)?;
        record::store_timestamp(seg.file().bytes(seg.rel(offset), record::HEADER_LEN)?)
    }

    /// Looks at the log at `offset` for a walker (dispatcher): a record, a jump to the next segment, or the end.
    pub(crate) fn step<'a>(&self, seg: &'a Segment, offset: u64) -> Result<(Step, Option<Walked<'a>>)> {
        let rel = seg.rel(offset);
        let Some(head) = seg.file().bytes(rel, 8) else { return Ok((Step::End, None)) };
        let corrupt = |reason: String| Error::Corrupt { path: seg.path().to_owned(), offset: rel as u64, reason };
        match record::peek(head).map_err(|e| corrupt(e.to_string()))? {
            Frame::End => Ok((Step::Jump(seg.limit()), None)),
            Frame::Empty => Ok((Step::End, None)),
            Frame::Record(size) => {
                let bytes = seg.file().bytes(rel, size).ok_or_else(|| corrupt("record past published end".into()))?;
                let layout =
                    Layout::parse(bytes, record::Check::Lengths).map_err(|e: DecodeError| corrupt(e.to_string()))?;
                Ok((Step::Record, Some(Walked { layout, bytes })))
            }
        }
    }

    /// The segments overlapping `[from, to)`, each with the overlap as positions within it.
    fn spans(&self, from: u64, to: u64) -> Vec<(Arc<Segment>, usize, usize)> {
        if to <= from {
            return Vec::new();
        }
        let segs = self.segments.read();
        segs.iter()
            .filter(|s| s.limit() > from && s.base() < to)
            .map(|s| (s.clone(), (from.max(s.base()) - s.base()) as usize, (to.min(s.limit()) - s.base()) as usize))
            .collect()
    }

    /// Makes `[from, to)` durable, segment by segment.
    pub(crate) fn flush(&self, from: u64, to: u64) -> std::io::Result<()> {
        for (s, a, b) in self.spans(from, to) {
            s.file().flush_range(a, b)?;
        }
        Ok(())
    }

    /// Unmaps (from this process, not from the page cache) every page below `keep_from`, keeping resident memory
    /// to the recent window readers and the writer touch. Re-released each pass, so pages a lagging reader faulted
    /// back in are dropped again.
    pub(crate) fn release_below(&self, keep_from: u64) {
        for (s, a, b) in self.spans(0, keep_from) {
            s.file().release(a, b);
        }
    }

    /// Drops `[from, to)` from the page cache, segment by segment (see `MappedFile::drop_cached`).
    pub(crate) fn drop_cached(&self, from: u64, to: u64) {
        for (s, a, b) in self.spans(from, to) {
            s.file().drop_cached(a, b);
        }
    }

    /// Installs the queue-offset table rebuilt from the consume queues at start-up.
    pub(crate) fn set_queue_offsets(&self, table: QueueOffsetTable) {
        self.writer.lock().queue_offsets = table;
    }

    /// Sealed segments (all but the active one), oldest first: what retention may delete.
    pub(crate) fn sealed_segments(&self) -> Vec<Arc<Segment>> {
        let segs = self.segments.read();
        segs[..segs.len().saturating_sub(1)].to_vec()
    }

    /// Store timestamp of the first record of the segment after `seg`: an upper bound on the age of `seg`'s data.
    pub(crate) fn sealed_at(&self, seg: &Segment) -> Option<u64> {
        self.store_timestamp_at(seg.limit())
    }

    /// Deletes the oldest segment if it starts at `base` and is not the active one. Readers holding its bytes
    /// keep the mapping alive until they drop them.
    pub(crate) fn delete_oldest(&self, base: u64) -> Result<bool> {
        let removed = {
            let mut segs = self.segments.write();
            if segs.len() < 2 || segs[0].base() != base {
                return Ok(false);
            }
            let seg = segs.remove(0);
            self.min.store(segs[0].base(), Ordering::Release);
            seg
        };
        std::fs::remove_file(removed.path()).map_err(|e| Error::io("delete segment", removed.path(), e))?;
        crate::file::sync_parent_dir(removed.path()).map_err(|e| Error::io("sync", &self.dir, e))?;
        tracing::info!(path = %removed.path().display(), "deleted CommitLog segment");
        Ok(true)
    }
}

fn rewind_queue_offset(table: &mut QueueOffsetTable, topic: &str, queue_id: QueueId) {
    if let Some(slot) = table.get_mut(topic).and_then(|q| q.get_mut(&queue_id)) {
        *slot = slot.saturating_sub(1);
    }
}

/// Takes the next `count` queue offsets of (`topic`, `queue_id`) (a new queue starts at 0); returns the first.
fn take_queue_offsets(table: &mut QueueOffsetTable, topic: &str, queue_id: QueueId, count: u64) -> u64 {
    let queues = match table.get_mut(topic) {
        Some(q) => q,
        None => table.entry(topic.to_owned()).or_default(),
    };
    let slot = queues.entry(queue_id).or_insert(0);
    let first = *slot;
    *slot += count;
    first
}
