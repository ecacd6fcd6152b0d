//! The timer's on-disk index: waiting messages filed into time buckets, one file per bucket, plus a checkpoint.
//!
//! Layout under `<store dir>/timer/` (docs/storage-format.md, "Timer"):
//! - `<start ms>.bucket`: the entries whose delivery time falls in `[start, start + bucket width)`, appended in
//!   arrival order, [`ENTRY_SIZE`] bytes each (little-endian): deliver-at ms `u64`, commit-log offset `u64`,
//!   record size `u32`, CRC32C of the first 20 bytes `u32`;
//! - `checkpoint.json`: how far the timer topic's consume queue has been filed (`enqueued`), below which delivery
//!   time everything has been delivered (`delivered_until`), the bucket width the files were written with, and
//!   whether the broker stopped cleanly.
//!
//! Memory is bounded by one bucket: only the bucket being delivered is loaded (sorted by time), every other
//! waiting message is 24 bytes on disk. The index never holds a timer object per message.
//!
//! Crash rules: a torn tail (a file length not a multiple of the entry size) is cut at open; an entry failing
//! its CRC is skipped with a warning; an entry filed twice (re-filed after a crash, before the checkpoint
//! covered it) is delivered once, since a bucket is deduplicated by (time, offset) when it is loaded.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use comet_model::{CommitLogOffset, QueueOffset};
use serde::{Deserialize, Serialize};

use crate::domain::persist;
use crate::error::{BrokerError, Result};

/// Bytes of one bucket entry on disk.
pub const ENTRY_SIZE: usize = 24;
/// Suffix of a bucket file (`<start ms>.bucket`).
const BUCKET_SUFFIX: &str = ".bucket";
/// How far an idle delivery pass may move the checkpoint before it is saved.
const IDLE_SAVE_MS: u64 = 1_000;
/// The checkpoint file's name.
const CHECKPOINT_FILE: &str = "checkpoint.json";

/// One waiting message: when it is due and where its record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    /// Delivery time, ms since the epoch.
    pub deliver_at: u64,
    /// Where its record (in the timer topic) starts in the CommitLog.
    pub offset: CommitLogOffset,
    /// Its record's size in bytes.
    pub size: u32,
}

impl Entry {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.deliver_at.to_le_bytes());
        out.extend_from_slice(&self.offset.0.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// The entry in `bytes` (exactly [`ENTRY_SIZE`] long), or `None` if its CRC does not match.
    fn decode(bytes: &[u8]) -> Option<Entry> {
        let word = |at: usize| -> Option<u64> { Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?)) };
        let half = |at: usize| -> Option<u32> { Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?)) };
        let (deliver_at, offset, size, crc) = (word(0)?, word(8)?, half(16)?, half(20)?);
        (crc32c::crc32c(bytes.get(..20)?) == crc).then_some(Entry { deliver_at, offset: CommitLogOffset(offset), size })
    }
}

/// What `checkpoint.json` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Checkpoint {
    /// Timer-topic queue offset up to which every message has been filed (or delivered at once).
    pub enqueued: u64,
    /// Every filed entry due before this time (ms since the epoch) has been delivered.
    pub delivered_until: u64,
    /// Bucket width (ms) of the files on disk.
    pub bucket_ms: u64,
    /// False while a broker runs: found false at open, the previous run crashed.
    pub clean: bool,
}

/// The bucket being delivered, loaded and sorted.
#[derive(Debug)]
struct Loaded {
    /// Bucket start (ms), which names its file.
    start: u64,
    /// Bytes of the file read so far (later appends are read as a tail).
    read_len: u64,
    /// Undelivered entries, sorted by (time, offset), no duplicates.
    entries: Vec<Entry>,
    /// Entries before this position were handed out by [`TimerIndex::due`] in the current pass.
    next: usize,
}

/// The bucket index and its checkpoint. Synchronous (file I/O): call it from the blocking pool.
#[derive(Debug)]
pub struct TimerIndex {
    dir: PathBuf,
    checkpoint: Checkpoint,
    /// Start (ms) of every bucket file.
    buckets: BTreeSet<u64>,
    /// Buckets appended to since the last save (fsynced before the checkpoint moves).
    dirty: BTreeSet<u64>,
    /// Buckets fully delivered in the current pass (deleted once the checkpoint is past them).
    finished: Vec<u64>,
    loaded: Option<Loaded>,
    /// Entries in bucket files not delivered yet (duplicates counted until a load finds them).
    pending: u64,
    /// Entries handed out by `due` since the last `advance`.
    handed_out: u64,
    /// `delivered_until` as last saved (an idle advance saves at most once a second).
    saved_until: u64,
}

fn io_err(op: &'static str, path: &Path, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Persist { op, path: path.to_owned(), reason: e.to_string() }
}

impl TimerIndex {
    /// Opens (or creates) the index under `dir`: reads the checkpoint, cuts torn bucket tails, counts the
    /// waiting entries, and marks the checkpoint unclean until [`TimerIndex::close`]. Returns the index and
    /// whether the previous run stopped cleanly (true for a new index).
    pub fn open(dir: &Path, bucket_ms: u64) -> Result<(TimerIndex, bool)> {
        std::fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
        let saved: Option<Checkpoint> = persist::load(&dir.join(CHECKPOINT_FILE))?;
        let was_clean = saved.is_none_or(|c| c.clean);
        let mut buckets = BTreeSet::new();
        let mut pending = 0u64;
        let listing = std::fs::read_dir(dir).map_err(|e| io_err("listing", dir, e))?;
        for item in listing {
            let item = item.map_err(|e| io_err("listing", dir, e))?;
            let name = item.file_name();
            let Some(start) = name.to_str().and_then(|n| n.strip_suffix(BUCKET_SUFFIX)).and_then(|n| n.parse().ok())
            else {
                continue;
            };
            let path = item.path();
            let len = item.metadata().map_err(|e| io_err("reading", &path, e))?.len();
            let whole = len - len % ENTRY_SIZE as u64;
            if whole != len {
                tracing::warn!(file = %path.display(), len, kept = whole, "timer bucket has a torn tail; cut");
                let f = OpenOptions::new().write(true).open(&path).map_err(|e| io_err("opening", &path, e))?;
                f.set_len(whole).map_err(|e| io_err("truncating", &path, e))?;
            }
            pending += whole / ENTRY_SIZE as u64;
            buckets.insert(start);
        }
        // The width files were written with stays until no file is left; only then does a new width apply.
        let width = match saved {
            Some(c) if !buckets.is_empty() && c.bucket_ms > 0 => c.bucket_ms,
            _ => bucket_ms,
        };
        if width != bucket_ms {
            tracing::info!(
                on_disk = width,
                configured = bucket_ms,
                "timer buckets on disk use another width; it applies until they are delivered"
            );
        }
        let checkpoint = Checkpoint {
            enqueued: saved.map_or(0, |c| c.enqueued),
            delivered_until: saved.map_or(0, |c| c.delivered_until),
            bucket_ms: width,
            clean: false,
        };
        let mut index = TimerIndex {
            dir: dir.to_owned(),
            checkpoint,
            buckets,
            dirty: BTreeSet::new(),
            finished: Vec::new(),
            loaded: None,
            pending,
            handed_out: 0,
            saved_until: 0,
        };
        index.save()?;
        Ok((index, was_clean))
    }

    /// Timer-topic queue offset up to which messages are filed.
    pub fn enqueued(&self) -> QueueOffset {
        QueueOffset(self.checkpoint.enqueued)
    }

    /// Every filed entry due before this time has been delivered; an entry due earlier must be delivered at once
    /// rather than filed.
    pub fn delivered_until(&self) -> u64 {
        self.checkpoint.delivered_until
    }

    /// Entries filed and not delivered yet (an over-count by the duplicates a crash re-filed, until loaded).
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// Number of bucket files.
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    fn bucket_of(&self, deliver_at: u64) -> u64 {
        let width = self.checkpoint.bucket_ms.max(1);
        deliver_at - deliver_at % width
    }

    fn path(&self, start: u64) -> PathBuf {
        self.dir.join(format!("{start}{BUCKET_SUFFIX}"))
    }

    /// Files `entries` (each due at or after [`TimerIndex::delivered_until`]) into their buckets, and records
    /// that the timer topic is filed up to `enqueued`. Durable only after [`TimerIndex::save`].
    pub fn file(&mut self, entries: &[Entry], enqueued: QueueOffset) -> Result<()> {
        let mut sorted: Vec<(u64, Entry)> = entries.iter().map(|e| (self.bucket_of(e.deliver_at), *e)).collect();
        sorted.sort_unstable_by_key(|(b, _)| *b);
        let mut buf = Vec::with_capacity(ENTRY_SIZE * sorted.len().min(4096));
        for chunk in sorted.chunk_by(|a, b| a.0 == b.0) {
            let start = chunk[0].0;
            buf.clear();
            for (_, e) in chunk {
                debug_assert!(e.deliver_at >= self.checkpoint.delivered_until, "filed an entry already due");
                e.encode(&mut buf);
            }
            let path = self.path(start);
            let mut f =
                OpenOptions::new().create(true).append(true).open(&path).map_err(|e| io_err("opening", &path, e))?;
            f.write_all(&buf).map_err(|e| io_err("writing", &path, e))?;
            self.buckets.insert(start);
            self.dirty.insert(start);
            self.pending += chunk.len() as u64;
        }
        self.checkpoint.enqueued = self.checkpoint.enqueued.max(enqueued.0);
        Ok(())
    }

    /// Up to `max` entries due by `now` (inclusive) not handed out yet, in time order, crossing into the next
    /// bucket when one is exhausted. Call until it returns fewer than `max`, deliver them, then
    /// [`TimerIndex::advance`] to `now + 1`.
    pub fn due(&mut self, now: u64, max: usize) -> Result<Vec<Entry>> {
        self.due_within(now, max, usize::MAX)
    }

    /// [`TimerIndex::due`], also stopping before the entries' records add up to more than `max_bytes` (at least
    /// one entry is handed out), so a pass never reads an unbounded amount of message bodies at once.
    pub fn due_within(&mut self, now: u64, max: usize, max_bytes: usize) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while out.len() < max && bytes < max_bytes {
            let Some(&start) = self.buckets.iter().find(|b| !self.finished.contains(b)) else { break };
            if start > now {
                break;
            }
            self.load(start)?;
            let Some(loaded) = self.loaded.as_mut() else { break };
            while out.len() < max {
                match loaded.entries.get(loaded.next) {
                    Some(e) if e.deliver_at <= now => {
                        let size = e.size as usize;
                        if !out.is_empty() && bytes.saturating_add(size) > max_bytes {
                            bytes = max_bytes;
                            break;
                        }
                        bytes = bytes.saturating_add(size);
                        out.push(*e);
                        loaded.next += 1;
                    }
                    _ => break,
                }
            }
            let width = self.checkpoint.bucket_ms.max(1);
            let exhausted = loaded.next == loaded.entries.len();
            if exhausted && start.saturating_add(width) <= now.saturating_add(1) {
                // Every time of this bucket has passed and all of it is handed out: no entry can join it
                // (later filings are due at or after `now + 1`), so it is done.
                self.finished.push(start);
            } else {
                break;
            }
        }
        self.handed_out += out.len() as u64;
        Ok(out)
    }

    /// Loads bucket `start` (or reads what was appended to it since it was loaded), sorted and deduplicated.
    fn load(&mut self, start: u64) -> Result<()> {
        let path = self.path(start);
        if self.loaded.as_ref().is_none_or(|l| l.start != start) {
            self.loaded = Some(Loaded { start, read_len: 0, entries: Vec::new(), next: 0 });
        }
        let Some(loaded) = self.loaded.as_mut() else { return Ok(()) };
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("opening", &path, e)),
        };
        let len = f.metadata().map_err(|e| io_err("reading", &path, e))?.len();
        let whole = len - len % ENTRY_SIZE as u64;
        if whole <= loaded.read_len {
            return Ok(());
        }
        f.seek(SeekFrom::Start(loaded.read_len)).map_err(|e| io_err("seeking", &path, e))?;
        let mut bytes = vec![0u8; usize::try_from(whole - loaded.read_len).unwrap_or(0)];
        f.read_exact(&mut bytes).map_err(|e| io_err("reading", &path, e))?;
        loaded.read_len = whole;
        let before = loaded.entries.len() as u64 + (bytes.len() / ENTRY_SIZE) as u64;
        let mut corrupt = 0u64;
        let floor = self.checkpoint.delivered_until;
        for chunk in bytes.chunks_exact(ENTRY_SIZE) {
            match Entry::decode(chunk) {
                // Below the checkpoint: delivered by an earlier run (left behind by a crash before deletion).
                Some(e) if e.deliver_at >= floor => loaded.entries.push(e),
                Some(_) => {}
                None => corrupt += 1,
            }
        }
        if corrupt > 0 {
            tracing::warn!(file = %path.display(), corrupt, "timer bucket entries failed their CRC; skipped");
        }
        // Entries handed out already stay in front: sort and deduplicate only the rest.
        let rest = &mut loaded.entries[loaded.next..];
        rest.sort_unstable();
        let mut kept: Vec<Entry> = loaded.entries.drain(loaded.next..).collect();
        kept.dedup();
        let handed: BTreeSet<Entry> = loaded.entries.iter().copied().collect();
        kept.retain(|e| !handed.contains(e));
        loaded.entries.extend(kept);
        let dropped = before - loaded.entries.len() as u64;
        self.pending = self.pending.saturating_sub(dropped);
        Ok(())
    }

    /// Records that every entry handed out by [`TimerIndex::due`] has been delivered, and that everything due
    /// before `until` is; then saves the checkpoint and deletes the buckets it passed.
    pub fn advance(&mut self, until: u64) -> Result<()> {
        self.checkpoint.delivered_until = self.checkpoint.delivered_until.max(until);
        if let Some(loaded) = self.loaded.as_mut() {
            loaded.entries.drain(..loaded.next);
            loaded.next = 0;
        }
        self.pending = self.pending.saturating_sub(self.handed_out);
        let idle = self.handed_out == 0 && self.finished.is_empty();
        self.handed_out = 0;
        // Nothing delivered: a stale checkpoint costs nothing after a crash, so save it only now and then.
        if idle && self.checkpoint.delivered_until < self.saved_until.saturating_add(IDLE_SAVE_MS) {
            return Ok(());
        }
        self.save()?;
        for start in std::mem::take(&mut self.finished) {
            if self.loaded.as_ref().is_some_and(|l| l.start == start) {
                self.loaded = None;
            }
            self.buckets.remove(&start);
            self.dirty.remove(&start);
            let path = self.path(start);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("deleting", &path, e)),
            }
        }
        Ok(())
    }

    /// Forgets what [`TimerIndex::due`] handed out since the last advance (their delivery failed): the next pass
    /// reloads from the files and hands them out again.
    pub fn rewind(&mut self) {
        self.loaded = None;
        self.finished.clear();
        self.handed_out = 0;
    }

    /// Makes the filed entries and the checkpoint durable: fsyncs the buckets appended to, then replaces the
    /// checkpoint atomically (which fsyncs too), so the checkpoint never claims entries a power loss could take.
    pub fn save(&mut self) -> Result<()> {
        for start in std::mem::take(&mut self.dirty) {
            let path = self.path(start);
            match File::open(&path) {
                Ok(f) => f.sync_data().map_err(|e| io_err("syncing", &path, e))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("opening", &path, e)),
            }
        }
        persist::store(&self.dir.join(CHECKPOINT_FILE), &self.checkpoint)?;
        self.saved_until = self.checkpoint.delivered_until;
        Ok(())
    }

    /// Saves the checkpoint, marked `clean` when nothing past it can have been delivered (then the next open
    /// delivers without checking for copies).
    pub fn close(mut self, clean: bool) -> Result<()> {
        self.rewind();
        self.checkpoint.clean = clean;
        self.save()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(deliver_at: u64, offset: u64) -> Entry {
        Entry { deliver_at, offset: CommitLogOffset(offset), size: 100 }
    }

    fn drain(index: &mut TimerIndex, now: u64) -> Vec<Entry> {
        let mut all = Vec::new();
        loop {
            let batch = index.due(now, 3).unwrap();
            let n = batch.len();
            all.extend(batch);
            if n < 3 {
                break;
            }
        }
        index.advance(now + 1).unwrap();
        all
    }

    #[test]
    fn due_entries_come_out_in_time_order_across_buckets_and_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let (mut index, clean) = TimerIndex::open(dir.path(), 1000).unwrap();
        assert!(clean);
        let entries = [entry(2500, 1), entry(1200, 2), entry(900, 3), entry(2100, 4), entry(1200, 5), entry(5000, 6)];
        index.file(&entries, QueueOffset(6)).unwrap();
        index.save().unwrap();
        assert_eq!(index.pending(), 6);
        assert_eq!(index.bucket_count(), 4);
        let first = drain(&mut index, 2100);
        assert_eq!(first, vec![entry(900, 3), entry(1200, 2), entry(1200, 5), entry(2100, 4)]);
        // Buckets 0 and 1000 are done and deleted; bucket 2000 is half delivered.
        assert_eq!(index.bucket_count(), 2);
        assert_eq!(index.pending(), 2);
        // A later filing into the half-delivered bucket joins it.
        index.file(&[entry(2300, 7)], QueueOffset(7)).unwrap();
        assert_eq!(drain(&mut index, 2999), vec![entry(2300, 7), entry(2500, 1)]);
        assert_eq!(drain(&mut index, 4000), vec![]);
        assert_eq!(drain(&mut index, 6000), vec![entry(5000, 6)]);
        assert_eq!(index.bucket_count(), 0);
        assert_eq!(index.pending(), 0);
        assert_eq!(index.enqueued(), QueueOffset(7));
    }

    #[test]
    fn reopening_after_a_crash_resumes_from_the_checkpoint_without_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let (mut index, _) = TimerIndex::open(dir.path(), 1000).unwrap();
        index.file(&[entry(100, 1), entry(1500, 2), entry(1600, 3)], QueueOffset(3)).unwrap();
        index.save().unwrap();
        assert_eq!(drain(&mut index, 1550), vec![entry(100, 1), entry(1500, 2)]);
        // Filed but not checkpointed, then a crash: the enqueue pass files these again after the restart.
        index.file(&[entry(1700, 4), entry(3000, 5)], QueueOffset(5)).unwrap();
        drop(index);
        // A torn half entry at the end of a bucket.
        let mut f = OpenOptions::new().append(true).open(dir.path().join("3000.bucket")).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        drop(f);

        let (mut index, clean) = TimerIndex::open(dir.path(), 1000).unwrap();
        assert!(!clean, "the previous run did not close");
        assert_eq!(index.enqueued(), QueueOffset(3), "the checkpoint did not cover the last filing");
        assert_eq!(index.delivered_until(), 1551);
        index.file(&[entry(1700, 4), entry(3000, 5)], QueueOffset(5)).unwrap();
        assert_eq!(drain(&mut index, 5000), vec![entry(1600, 3), entry(1700, 4), entry(3000, 5)]);
        assert_eq!(index.pending(), 0);
        assert_eq!(index.bucket_count(), 0);
        index.close(true).unwrap();
        let (_, clean) = TimerIndex::open(dir.path(), 1000).unwrap();
        assert!(clean);
    }

    #[test]
    fn a_corrupt_entry_is_skipped_and_the_rest_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let (mut index, _) = TimerIndex::open(dir.path(), 1000).unwrap();
        index.file(&[entry(10, 1), entry(20, 2), entry(30, 3)], QueueOffset(3)).unwrap();
        let path = dir.path().join("0.bucket");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[ENTRY_SIZE + 3] ^= 0xFF;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(drain(&mut index, 999), vec![entry(10, 1), entry(30, 3)]);
        assert_eq!(index.pending(), 0);
    }

    #[test]
    fn failed_delivery_is_handed_out_again_after_rewind() {
        let dir = tempfile::tempdir().unwrap();
        let (mut index, _) = TimerIndex::open(dir.path(), 1000).unwrap();
        index.file(&[entry(10, 1), entry(1020, 2)], QueueOffset(2)).unwrap();
        assert_eq!(index.due(1500, 10).unwrap(), vec![entry(10, 1), entry(1020, 2)]);
        index.rewind();
        assert_eq!(drain(&mut index, 1500), vec![entry(10, 1), entry(1020, 2)]);
    }

    #[test]
    fn memory_holds_one_bucket_while_many_wait_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (mut index, _) = TimerIndex::open(dir.path(), 10).unwrap();
        // 100 000 entries spread over 10 000 buckets of 10 entries each.
        let entries: Vec<Entry> = (0..100_000u64).map(|i| entry(i, i)).collect();
        for chunk in entries.chunks(10_000) {
            index.file(chunk, QueueOffset(chunk.len() as u64)).unwrap();
        }
        assert_eq!(index.pending(), 100_000);
        assert_eq!(index.due(25, 1000).unwrap().len(), 26);
        // Only the bucket being delivered is in memory.
        assert!(index.loaded.as_ref().is_some_and(|l| l.entries.len() <= 10));
        index.advance(26).unwrap();
        assert_eq!(index.pending(), 100_000 - 26);
        assert_eq!(index.bucket_count(), 10_000 - 2);
    }
}
