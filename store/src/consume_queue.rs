//! Consume queues: per (topic, queue id), a dense array of fixed-size entries pointing into the CommitLog.
//!
//! Entry `n` of a queue is the n-th message of that queue and lives at byte `(n - first) * CQ_ENTRY_SIZE` of
//! the file named after `first` (20-digit queue offset). Entries are derived data, written only by the
//! dispatcher, and can always be rebuilt from the CommitLog. An entry is 20 bytes, little-endian:
//!
//! ```text
//!   0  u64  CommitLog offset of the record
//!   8  u32  record size (never 0: a zero entry marks unwritten space)
//!  12  i64  tag hash (Java String.hashCode of the tags, sign-extended)
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use comet_model::{QueueId, QueueOffset};
use parking_lot::RwLock;

use crate::error::{Error, Result};
use crate::file::{MappedFile, offset_name, parse_offset_name, remove_if_empty, sync_parent_dir};

/// Size of one consume-queue entry in bytes.
pub const CQ_ENTRY_SIZE: usize = 20;

/// One consume-queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqEntry {
    /// Where the record starts in the CommitLog.
    pub offset: u64,
    /// Size of the record.
    pub size: u32,
    /// Hash of the record's tags, for filtering without reading the record.
    pub tag_hash: i64,
}

impl CqEntry {
    fn encode(&self) -> [u8; CQ_ENTRY_SIZE] {
        let mut b = [0u8; CQ_ENTRY_SIZE];
        b[0..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..12].copy_from_slice(&self.size.to_le_bytes());
        b[12..20].copy_from_slice(&self.tag_hash.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<CqEntry> {
        let e = CqEntry {
            offset: u64::from_le_bytes(b.get(0..8)?.try_into().ok()?),
            size: u32::from_le_bytes(b.get(8..12)?.try_into().ok()?),
            tag_hash: i64::from_le_bytes(b.get(12..20)?.try_into().ok()?),
        };
        (e.size != 0).then_some(e)
    }
}

struct CqFile {
    /// Queue offset of the first entry.
    first: u64,
    file: MappedFile,
    /// Unmapped from the process once full (see `ConsumeQueue::release_full`).
    released: std::sync::atomic::AtomicBool,
}

impl CqFile {
    fn capacity(&self) -> u64 {
        (self.file.len() / CQ_ENTRY_SIZE) as u64
    }

    fn entry(&self, offset: u64) -> Option<CqEntry> {
        let i = offset.checked_sub(self.first)?;
        CqEntry::decode(self.file.bytes(i as usize * CQ_ENTRY_SIZE, CQ_ENTRY_SIZE)?)
    }

    fn raw_entry(&self, i: u64) -> Option<CqEntry> {
        CqEntry::decode(self.file.bytes_unchecked_for_recovery(i as usize * CQ_ENTRY_SIZE, CQ_ENTRY_SIZE)?)
    }
}

/// The consume queue of one (topic, queue id).
pub(crate) struct ConsumeQueue {
    dir: PathBuf,
    entries_per_file: u64,
    files: RwLock<Vec<Arc<CqFile>>>,
    /// First readable queue offset (moves up with retention).
    min: AtomicU64,
    /// Next queue offset to write: the number of entries ever written.
    max: AtomicU64,
}

impl ConsumeQueue {
    fn new(dir: PathBuf, entries_per_file: u64) -> Self {
        Self { dir, entries_per_file, files: RwLock::new(Vec::new()), min: AtomicU64::new(0), max: AtomicU64::new(0) }
    }

    /// First readable queue offset.
    pub(crate) fn min_offset(&self) -> QueueOffset {
        QueueOffset(self.min.load(Ordering::Acquire))
    }

    /// One past the last entry.
    pub(crate) fn max_offset(&self) -> QueueOffset {
        QueueOffset(self.max.load(Ordering::Acquire))
    }

    /// Opens the queue's files, keeping only entries that point below `trusted_end` (records known to be in the
    /// CommitLog and dispatched before the last checkpoint); later entries are zeroed for re-dispatch. After a
    /// crash the whole untrusted remainder is zeroed: a lost page could otherwise hide stale entries behind it.
    fn open(dir: PathBuf, entries_per_file: u64, trusted_end: u64, crashed: bool) -> Result<Self> {
        let q = Self::new(dir, entries_per_file);
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&q.dir).map_err(|e| Error::io("list", &q.dir, e))? {
            let entry = entry.map_err(|e| Error::io("list", &q.dir, e))?;
            let path = entry.path();
            let Some(first) = entry.file_name().to_str().and_then(parse_offset_name) else {
                return Err(foreign(path, "consume-queue file names are 20-digit queue offsets"));
            };
            if remove_if_empty(&path).map_err(|e| Error::io("inspect consume queue", &path, e))? {
                continue;
            }
            found.push((first, path));
        }
        found.sort();
        let mut files: Vec<CqFile> = Vec::with_capacity(found.len());
        for (first, path) in found {
            let file = MappedFile::open(&path).map_err(|e| Error::io("open consume queue", &path, e))?;
            if file.len() % CQ_ENTRY_SIZE != 0 {
                return Err(foreign(path, "consume-queue file length is not a multiple of the entry size"));
            }
            if let Some(prev) = files.last()
                && prev.first + prev.capacity() != first
            {
                return Err(foreign(path, "consume-queue files are not contiguous"));
            }
            files.push(CqFile { first, file, released: Default::default() });
        }
        // Find the tail: the last file with any trusted entry. Later (empty or untrusted) files are dropped.
        let trusted = |e: Option<CqEntry>| e.is_some_and(|e| e.offset < trusted_end);
        let mut max = files.first().map_or(0, |f| f.first);
        while !files.is_empty() {
            let many = files.len() > 1;
            let Some(last) = files.last_mut() else { break };
            let cap = last.capacity();
            // Entries are written in order, so trusted ones form a prefix: bisect for its length.
            let (mut lo, mut hi) = (0u64, cap);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if trusted(last.raw_entry(mid)) { lo = mid + 1 } else { hi = mid }
            }
            if lo == 0 && many {
                let Some(f) = files.pop() else { break };
                std::fs::remove_file(f.file.path()).map_err(|e| Error::io("remove", f.file.path(), e))?;
                continue;
            }
            if lo < cap && (crashed || has_bytes_at(last, lo)) {
                let path = last.file.path().to_owned();
                last.file.truncate_to(lo as usize * CQ_ENTRY_SIZE).map_err(|e| Error::io("truncate", &path, e))?;
            }
            last.file.set_recovered(lo as usize * CQ_ENTRY_SIZE);
            max = last.first + lo;
            break;
        }
        let n = files.len();
        for f in files.iter_mut().take(n.saturating_sub(1)) {
            let len = f.file.len();
            f.file.set_recovered(len);
        }
        let min = files.first().map_or(max, |f| f.first);
        *q.files.write() = files.into_iter().map(Arc::new).collect();
        q.min.store(min, Ordering::Release);
        q.max.store(max, Ordering::Release);
        Ok(q)
    }

    fn file_for(&self, offset: u64) -> Option<Arc<CqFile>> {
        let files = self.files.read();
        let i = files.partition_point(|f| f.first <= offset);
        files.get(i.checked_sub(1)?).cloned()
    }

    /// The entry at `offset`, if it is readable.
    pub(crate) fn get(&self, offset: QueueOffset) -> Option<CqEntry> {
        if offset.0 < self.min.load(Ordering::Acquire) {
            return None;
        }
        self.file_for(offset.0)?.entry(offset.0)
    }

    /// The entry at `offset` when reading it will not wait for the disk: its file is the one being written (kept
    /// mapped), or the entry's page is in the page cache (`mincore`, for full files unmapped from the process).
    /// `None` when it is not readable or not cached.
    pub(crate) fn cached_entry(&self, offset: QueueOffset) -> Option<CqEntry> {
        if offset.0 < self.min.load(Ordering::Acquire) {
            return None;
        }
        let file = self.file_for(offset.0)?;
        let at = offset.0.checked_sub(file.first)? as usize * CQ_ENTRY_SIZE;
        if file.released.load(Ordering::Acquire) && !file.file.in_page_cache(at, at + CQ_ENTRY_SIZE) {
            return None;
        }
        file.entry(offset.0)
    }

    /// Visits entries from `from` while `f` returns true; stops at the end of the queue.
    pub(crate) fn scan(&self, from: QueueOffset, mut f: impl FnMut(QueueOffset, CqEntry) -> bool) {
        let max = self.max.load(Ordering::Acquire);
        let mut offset = from.0.max(self.min.load(Ordering::Acquire));
        while offset < max {
            let Some(file) = self.file_for(offset) else { return };
            let end = (file.first + file.capacity()).min(max);
            while offset < end {
                let Some(e) = file.entry(offset) else { return };
                if !f(QueueOffset(offset), e) {
                    return;
                }
                offset += 1;
            }
        }
    }

    /// Appends the entry for queue offset `offset`. Dispatcher only.
    ///
    /// Re-dispatching an entry that is already present is a no-op; a gap (entries missing before `offset`)
    /// restarts the queue at `offset`, because readers must never see a hole. A queue without entries starts
    /// wherever its first record says: a replica whose log restarted at a later base (its master's older data
    /// was deleted) sees the queue's later records only.
    pub(crate) fn put(&self, offset: QueueOffset, entry: CqEntry) -> Result<()> {
        let max = self.max.load(Ordering::Acquire);
        if offset.0 < max {
            return Ok(());
        }
        if offset.0 > max {
            if self.files.read().is_empty() {
                tracing::debug!(dir = %self.dir.display(), first = offset.0, "consume queue starts past 0");
            } else {
                tracing::error!(dir = %self.dir.display(), expected = max, got = offset.0,
                    "consume queue has a gap; restarting it at the new offset");
            }
            self.reset_to(offset.0)?;
        }
        let last = self.files.read().last().cloned();
        let file = match last {
            Some(f) if offset.0 < f.first + f.capacity() => f,
            _ => self.roll(offset.0)?,
        };
        let pos = (offset.0 - file.first) as usize * CQ_ENTRY_SIZE;
        // SAFETY: the dispatcher is the only writer of consume queues, and `pos` is the published end.
        let Some(buf) = (unsafe { file.file.unpublished_mut(pos, CQ_ENTRY_SIZE) }) else {
            return Err(foreign(file.file.path().to_owned(), "write position outside the writable region"));
        };
        buf.copy_from_slice(&entry.encode());
        file.file.publish(pos + CQ_ENTRY_SIZE);
        self.max.store(offset.0 + 1, Ordering::Release);
        Ok(())
    }

    /// Whether the entry at `offset` goes into an existing file (a `put` of it creates none), once the `queued`
    /// puts before it (not made yet) are.
    pub(crate) fn has_room(&self, offset: QueueOffset, queued: u64) -> bool {
        self.max.load(Ordering::Acquire) + queued == offset.0
            && self.files.read().last().is_some_and(|f| offset.0 >= f.first && offset.0 < f.first + f.capacity())
    }

    fn roll(&self, first: u64) -> Result<Arc<CqFile>> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io("create directory", &self.dir, e))?;
        let path = self.dir.join(offset_name(first));
        let len = self.entries_per_file as usize * CQ_ENTRY_SIZE;
        let file = MappedFile::create(&path, len).map_err(|e| Error::io("create consume queue", &path, e))?;
        let f = Arc::new(CqFile { first, file, released: Default::default() });
        self.files.write().push(f.clone());
        Ok(f)
    }

    fn reset_to(&self, offset: u64) -> Result<()> {
        let old: Vec<Arc<CqFile>> = std::mem::take(&mut *self.files.write());
        for f in old {
            std::fs::remove_file(f.file.path()).map_err(|e| Error::io("remove", f.file.path(), e))?;
        }
        self.min.store(offset, Ordering::Release);
        self.max.store(offset, Ordering::Release);
        Ok(())
    }

    /// Unmaps full files (all but the one being written) from the process once; readers fault back what they
    /// read. Keeps resident memory to the active files instead of every entry ever written.
    pub(crate) fn release_full(&self) {
        let files = self.files.read();
        for f in files.iter().rev().skip(1) {
            if !f.released.swap(true, Ordering::AcqRel) {
                f.file.release(0, f.file.len());
            }
        }
    }

    /// Makes written entries durable.
    pub(crate) fn flush(&self) -> std::io::Result<()> {
        let files: Vec<Arc<CqFile>> = self.files.read().iter().rev().take(2).cloned().collect();
        for f in files {
            f.file.flush_published()?;
        }
        Ok(())
    }

    /// Drops whole files whose entries all point below `commitlog_min` and moves `min` to the first entry that
    /// still points at stored data.
    pub(crate) fn trim(&self, commitlog_min: u64) -> Result<()> {
        loop {
            let victim = {
                let files = self.files.read();
                match files.as_slice() {
                    [first, second, ..] if second.entry(second.first).is_some_and(|e| e.offset <= commitlog_min) => {
                        Some(first.clone())
                    }
                    _ => None,
                }
            };
            let Some(f) = victim else { break };
            self.files.write().retain(|x| !Arc::ptr_eq(x, &f));
            std::fs::remove_file(f.file.path()).map_err(|e| Error::io("remove", f.file.path(), e))?;
        }
        // Bisect for the first entry at or above the CommitLog minimum.
        let (mut lo, mut hi) = (self.min.load(Ordering::Acquire), self.max.load(Ordering::Acquire));
        let first_file = self.files.read().first().map_or(hi, |f| f.first);
        lo = lo.max(first_file);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.file_for(mid).and_then(|f| f.entry(mid)).is_some_and(|e| e.offset >= commitlog_min) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        self.min.fetch_max(lo, Ordering::AcqRel);
        Ok(())
    }

    /// Drops every entry that points at or above CommitLog offset `to` (the log was truncated there): `max`
    /// moves down, files wholly above it are deleted (never the first: its name keeps where the queue starts
    /// across restarts) and the rest of the last file is zeroed durably, so recovery cannot bring the entries
    /// back. Entries point into the log in order, so they form a suffix. The caller holds the dispatcher lock.
    pub(crate) fn truncate(&self, to: u64) -> Result<()> {
        let max = self.max.load(Ordering::Acquire);
        let first = self.files.read().first().map_or(max, |f| f.first).min(max);
        let (mut lo, mut hi) = (first, max);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.file_for(mid).and_then(|f| f.entry(mid)).is_some_and(|e| e.offset < to) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo >= max {
            return Ok(());
        }
        // Readers first: scans stop at the new end.
        self.max.store(lo, Ordering::Release);
        self.min.fetch_min(lo, Ordering::AcqRel);
        let removed = {
            let mut files = self.files.write();
            let keep = files.iter().position(|f| f.first >= lo).map_or(files.len(), |i| i.max(1));
            files.split_off(keep)
        };
        for f in removed.iter().rev() {
            match std::fs::remove_file(f.file.path()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // the topic was deleted meanwhile
                Err(e) => return Err(Error::io("remove", f.file.path(), e)),
            }
        }
        let last = self.files.read().last().cloned();
        if let Some(f) = last {
            let pos = (lo.saturating_sub(f.first) as usize * CQ_ENTRY_SIZE).min(f.file.len());
            f.file.cut(pos).map_err(|e| Error::io("truncate consume queue", f.file.path(), e))?;
            if !removed.is_empty() {
                match sync_parent_dir(f.file.path()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // the topic was deleted meanwhile
                    Err(e) => return Err(Error::io("sync", &self.dir, e)),
                }
            }
        }
        Ok(())
    }

    /// Bytes of files on disk.
    fn disk_bytes(&self) -> u64 {
        self.files.read().iter().map(|f| f.file.len() as u64).sum()
    }
}

fn has_bytes_at(f: &CqFile, i: u64) -> bool {
    f.file
        .bytes_unchecked_for_recovery(i as usize * CQ_ENTRY_SIZE, CQ_ENTRY_SIZE)
        .is_some_and(|b| b.iter().any(|&x| x != 0))
}

fn foreign(path: PathBuf, reason: &str) -> Error {
    Error::Corrupt { path, offset: 0, reason: reason.into() }
}

type QueueMap = HashMap<String, HashMap<QueueId, Arc<ConsumeQueue>>>;

/// All consume queues of the store, by topic and queue id.
pub(crate) struct ConsumeQueues {
    root: PathBuf,
    entries_per_file: u64,
    map: RwLock<QueueMap>,
}

impl ConsumeQueues {
    /// Loads every queue under `root`, trusting entries that point below `trusted_end`.
    pub(crate) fn open(root: &Path, entries_per_file: u32, trusted_end: u64, crashed: bool) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| Error::io("create directory", root, e))?;
        let mut map = QueueMap::new();
        for topic_entry in std::fs::read_dir(root).map_err(|e| Error::io("list", root, e))? {
            let topic_entry = topic_entry.map_err(|e| Error::io("list", root, e))?;
            let topic_path = topic_entry.path();
            let topic = topic_entry
                .file_name()
                .to_str()
                .filter(|t| comet_model::validate_topic_name(t).is_ok())
                .map(str::to_owned)
                .ok_or_else(|| foreign(topic_path.clone(), "not a topic directory"))?;
            for queue_entry in std::fs::read_dir(&topic_path).map_err(|e| Error::io("list", &topic_path, e))? {
                let queue_entry = queue_entry.map_err(|e| Error::io("list", &topic_path, e))?;
                let queue_path = queue_entry.path();
                let queue_id: QueueId = queue_entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| foreign(queue_path.clone(), "not a queue-id directory"))?;
                let q = ConsumeQueue::open(queue_path, u64::from(entries_per_file), trusted_end, crashed)?;
                map.entry(topic.clone()).or_default().insert(queue_id, Arc::new(q));
            }
        }
        Ok(Self { root: root.to_owned(), entries_per_file: u64::from(entries_per_file), map: RwLock::new(map) })
    }

    /// The queue, if it exists.
    pub(crate) fn get(&self, topic: &str, queue_id: QueueId) -> Option<Arc<ConsumeQueue>> {
        self.map.read().get(topic)?.get(&queue_id).cloned()
    }

    /// The queue, created empty if needed. Dispatcher only.
    pub(crate) fn get_or_create(&self, topic: &str, queue_id: QueueId) -> Arc<ConsumeQueue> {
        if let Some(q) = self.get(topic, queue_id) {
            return q;
        }
        let mut map = self.map.write();
        map.entry(topic.to_owned())
            .or_default()
            .entry(queue_id)
            .or_insert_with(|| {
                let dir = self.root.join(topic).join(queue_id.to_string());
                Arc::new(ConsumeQueue::new(dir, self.entries_per_file))
            })
            .clone()
    }

    /// Every queue, for flushing and trimming.
    pub(crate) fn all(&self) -> Vec<Arc<ConsumeQueue>> {
        self.map.read().values().flat_map(|qs| qs.values().cloned()).collect()
    }

    /// Next queue offset of every queue, to seed the CommitLog writer after start-up.
    pub(crate) fn offset_table(&self) -> crate::commitlog::QueueOffsetTable {
        self.map
            .read()
            .iter()
            .map(|(t, qs)| (t.clone(), qs.iter().map(|(id, q)| (*id, q.max_offset().0)).collect()))
            .collect()
    }

    /// Topics and their queue ids.
    pub(crate) fn topics(&self) -> Vec<(String, Vec<QueueId>)> {
        self.map.read().iter().map(|(t, qs)| (t.clone(), qs.keys().copied().collect())).collect()
    }

    /// Bytes of consume-queue files on disk.
    pub(crate) fn disk_bytes(&self) -> u64 {
        self.all().iter().map(|q| q.disk_bytes()).sum()
    }

    /// Removes every queue from disk and memory: the log restarted empty. Readers holding a queue keep reading
    /// their (unlinked) files, whose entries point at deleted records.
    pub(crate) fn clear(&self) -> Result<()> {
        drop(std::mem::take(&mut *self.map.write()));
        let entries = std::fs::read_dir(&self.root).map_err(|e| Error::io("list", &self.root, e))?;
        for entry in entries {
            let path = entry.map_err(|e| Error::io("list", &self.root, e))?.path();
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove consume queues", &path, e)),
            }
        }
        sync_parent_dir(&self.root.join("x")).map_err(|e| Error::io("sync", &self.root, e))
    }

    /// Removes every queue of `topic` from disk and memory (topic deletion).
    pub(crate) fn remove_topic(&self, topic: &str) -> Result<()> {
        self.map.write().remove(topic);
        let dir = self.root.join(topic);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => sync_parent_dir(&dir).map_err(|e| Error::io("sync", &self.root, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove topic", &dir, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(offset: u64) -> CqEntry {
        CqEntry { offset, size: 100, tag_hash: -5 }
    }

    #[test]
    fn entries_round_trip_across_files_and_reopen() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp", e))?;
        let qs = ConsumeQueues::open(dir.path(), 16, u64::MAX, false)?;
        let q = qs.get_or_create("T", 3);
        for i in 0..40u64 {
            q.put(QueueOffset(i), e(i * 100))?;
        }
        assert_eq!(q.max_offset(), QueueOffset(40));
        assert_eq!(q.get(QueueOffset(17)), Some(e(1700)));
        q.flush().map_err(|x| Error::io("flush", dir.path(), x))?;
        drop((q, qs));
        // Reopen trusting only entries below 2500: entries 25.. are cut for re-dispatch.
        let qs = ConsumeQueues::open(dir.path(), 16, 2500, true)?;
        let q = qs.get("T", 3).ok_or(Error::Closed)?;
        assert_eq!(q.max_offset(), QueueOffset(25));
        assert_eq!(q.get(QueueOffset(24)), Some(e(2400)));
        assert_eq!(q.get(QueueOffset(25)), None);
        q.put(QueueOffset(25), e(9999))?;
        assert_eq!(q.get(QueueOffset(25)), Some(e(9999)));
        Ok(())
    }

    #[test]
    fn an_entry_of_a_released_file_is_cached_only_while_its_page_is() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp", e))?;
        // 1024 entries a file: 5 pages, so the first file's pages can be told apart.
        let qs = ConsumeQueues::open(dir.path(), 1024, u64::MAX, false)?;
        let q = qs.get_or_create("T", 0);
        for i in 0..1100u64 {
            q.put(QueueOffset(i), e(i * 100))?;
        }
        assert!(q.cached_entry(QueueOffset(10)).is_some(), "a file still mapped");
        q.flush().map_err(|x| Error::io("flush", dir.path(), x))?;
        q.release_full();
        let first = Arc::clone(&q.files.read()[0]);
        first.file.drop_cached(0, first.file.len());
        if !first.file.in_page_cache(0, 4096) {
            // (On tmpfs the pages are the file itself and cannot be dropped.)
            assert!(q.cached_entry(QueueOffset(10)).is_none(), "released and out of the page cache");
        }
        assert_eq!(q.get(QueueOffset(10)), Some(e(1000)), "read from the disk");
        assert!(q.cached_entry(QueueOffset(10)).is_some(), "its page is cached again");
        assert!(q.cached_entry(QueueOffset(1050)).is_some(), "the file being written");
        Ok(())
    }

    #[test]
    fn has_room_says_whether_a_put_creates_a_file() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp", e))?;
        let qs = ConsumeQueues::open(dir.path(), 16, u64::MAX, false)?;
        let q = qs.get_or_create("T", 0);
        for i in 0..40u64 {
            let (room, files) = (q.has_room(QueueOffset(i), 0), q.files.read().len());
            assert!(!q.has_room(QueueOffset(i + 1), 0), "a gap never has room");
            let in_last_file = q.files.read().last().is_some_and(|f| i + 1 >= f.first && i + 1 < f.first + 16);
            assert_eq!(q.has_room(QueueOffset(i + 1), 1), in_last_file, "entry {} after one queued put", i + 1);
            q.put(QueueOffset(i), e(i * 100))?;
            assert_eq!(room, q.files.read().len() == files, "entry {i}");
        }
        Ok(())
    }

    #[test]
    fn trim_moves_min_and_deletes_whole_files() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp", e))?;
        let qs = ConsumeQueues::open(dir.path(), 16, u64::MAX, false)?;
        let q = qs.get_or_create("T", 0);
        for i in 0..40u64 {
            q.put(QueueOffset(i), e(i * 100))?;
        }
        q.trim(2050)?;
        assert_eq!(q.min_offset(), QueueOffset(21));
        assert_eq!(q.get(QueueOffset(20)), None);
        assert_eq!(q.files.read().len(), 2, "the first file (entries 0..16) is gone");
        Ok(())
    }

    #[test]
    fn truncation_drops_entries_at_and_above_the_cut_and_survives_reopen() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp", e))?;
        let qs = ConsumeQueues::open(dir.path(), 16, u64::MAX, false)?;
        let q = qs.get_or_create("T", 0);
        for i in 0..40u64 {
            q.put(QueueOffset(i), e(i * 100))?;
        }
        q.truncate(2050)?;
        assert_eq!((q.min_offset(), q.max_offset()), (QueueOffset(0), QueueOffset(21)));
        assert_eq!(q.get(QueueOffset(20)), Some(e(2000)));
        assert_eq!(q.get(QueueOffset(21)), None);
        assert_eq!(q.files.read().len(), 2, "the file of entries 32.. is gone");
        q.put(QueueOffset(21), e(2100 + 7))?;
        q.put(QueueOffset(22), e(2200 + 7))?;
        q.flush().map_err(|x| Error::io("flush", dir.path(), x))?;
        drop((q, qs));
        let qs = ConsumeQueues::open(dir.path(), 16, u64::MAX, false)?;
        let q = qs.get("T", 0).ok_or(Error::Closed)?;
        assert_eq!(q.max_offset(), QueueOffset(23), "no stale entry comes back");
        assert_eq!(q.get(QueueOffset(22)), Some(e(2207)));
        // Cut below everything: the queue is empty but keeps its first file, and so its position.
        q.truncate(0)?;
        assert_eq!((q.min_offset(), q.max_offset()), (QueueOffset(0), QueueOffset(0)));
        // A queue that starts past 0 (its earlier records are not in this log) keeps its start across reopen.
        let late = qs.get_or_create("T", 1);
        late.put(QueueOffset(1000), e(5))?;
        late.flush().map_err(|x| Error::io("flush", dir.path(), x))?;
        drop((q, late, qs));
        let qs = ConsumeQueues::open(dir.path(), 16, u64::MAX, false)?;
        let late = qs.get("T", 1).ok_or(Error::Closed)?;
        assert_eq!((late.min_offset(), late.max_offset()), (QueueOffset(1000), QueueOffset(1001)));
        qs.clear()?;
        assert!(qs.get("T", 1).is_none() && qs.topics().is_empty());
        Ok(())
    }

    #[test]
    fn foreign_files_are_reported_by_name() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp", e))?;
        let qdir = dir.path().join("T").join("0");
        std::fs::create_dir_all(&qdir).map_err(|e| Error::io("mkdir", &qdir, e))?;
        std::fs::write(qdir.join("notes.txt"), b"hi").map_err(|e| Error::io("write", &qdir, e))?;
        match ConsumeQueues::open(dir.path(), 16, u64::MAX, false) {
            Err(Error::Corrupt { path, .. }) => assert!(path.ends_with("notes.txt")),
            other => panic!("expected a corrupt-file error, got {:?}", other.err()),
        }
        Ok(())
    }
}
