//! The key index: "which messages carry key K in topic T" and "where is message id X", without scanning.
//!
//! A hash table persisted in a sequence of files, each bounded (`index-slots` slots, `index-entries` entries),
//! named after the CommitLog offset of its first entry. Layout of a file (little-endian):
//!
//! ```text
//!   0  u32 magic "CIDX", u32 version, u32 slot count, u32 entry capacity, 48 reserved bytes   (64-byte header)
//!  64  slot count × u32: index of the newest entry whose hash falls in the slot (0 = empty)
//!   …  (capacity + 1) × 32-byte entries, entry 0 unused:
//!        u64 key hash (xxh3), u64 CommitLog offset + 1 (0 = never written), u64 store timestamp,
//!        u32 previous entry in the same slot (0 = end of chain), u32 reserved
//! ```
//!
//! Answers are candidates: the caller reads each record and checks the key, so a hash collision can cost a
//! read but never return a wrong message. The index is derived data, rebuilt from the CommitLog after a crash.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::error::{Error, Result};
use crate::file::{MappedFile, offset_name, parse_offset_name};

const MAGIC: u32 = u32::from_le_bytes(*b"CIDX");
const VERSION: u32 = 1;
const HEADER_LEN: usize = 64;
const ENTRY_LEN: usize = 32;

/// What a lookup is for: a business key within a topic, or a message id.
#[derive(Debug, Clone, Copy)]
pub(crate) enum IndexKey<'a> {
    /// A key from the message's keys, scoped to its topic.
    Key {
        /// Topic.
        topic: &'a str,
        /// One key.
        key: &'a str,
    },
    /// A message id (globally unique).
    Id(&'a str),
}

/// An entry for [`KeyIndex::add_all`]: the key already hashed, so the caller can gather a group.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pending {
    hash: u64,
    offset: u64,
    timestamp: u64,
}

impl Pending {
    /// `key` of the record at CommitLog `offset`, stored at `timestamp`.
    pub(crate) fn new(key: IndexKey<'_>, offset: u64, timestamp: u64) -> Self {
        Self { hash: key.hash(), offset, timestamp }
    }
}

impl IndexKey<'_> {
    /// XXH3-64 of `0 topic 0 key` or `1 id`: the value the index files on disk hold.
    // Hot path (one or two per stored message): one pass over a stack copy; the streaming hasher cost twice as
    // much. Both give the same value for the same bytes.
    fn hash(&self) -> u64 {
        let parts: [&[u8]; 4] = match self {
            IndexKey::Key { topic, key } => [&[0], topic.as_bytes(), &[0], key.as_bytes()],
            IndexKey::Id(id) => [&[1], id.as_bytes(), &[], &[]],
        };
        comet_model::hash_joined(&parts, xxhash_rust::xxh3::xxh3_64, |parts| {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            parts.iter().for_each(|part| h.update(part));
            h.digest()
        })
    }
}

struct IndexFile {
    file: MappedFile,
    slots: u32,
    capacity: u32,
    /// Next entry index to write (entries start at 1).
    next: AtomicU32,
    last_offset: AtomicU64,
    first_timestamp: AtomicU64,
    last_timestamp: AtomicU64,
    /// Unmapped from the process once full (see `KeyIndex::release_full`).
    released: std::sync::atomic::AtomicBool,
}

#[derive(Clone, Copy)]
struct Entry {
    hash: u64,
    offset: u64,
    timestamp: u64,
    prev: u32,
}

impl IndexFile {
    fn len_for(slots: u32, capacity: u32) -> usize {
        HEADER_LEN + slots as usize * 4 + (capacity as usize + 1) * ENTRY_LEN
    }

    fn create(dir: &Path, first_offset: u64, slots: u32, capacity: u32) -> Result<Self> {
        let path = dir.join(offset_name(first_offset));
        let file = MappedFile::create(&path, Self::len_for(slots, capacity))
            .map_err(|e| Error::io("create index file", &path, e))?;
        // SAFETY: a new file; the dispatcher (sole writer) creates it before anyone can read it.
        if let Some(h) = unsafe { file.unpublished_mut(0, 16) } {
            for (i, v) in [MAGIC, VERSION, slots, capacity].iter().enumerate() {
                h[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        // Index files do not use the publish discipline: readers reach entries only through slots (atomics).
        file.publish(file.len());
        Ok(Self::wrap(file, slots, capacity, first_offset, 1))
    }

    fn wrap(file: MappedFile, slots: u32, capacity: u32, first_offset: u64, next: u32) -> Self {
        Self {
            file,
            slots,
            capacity,
            next: AtomicU32::new(next),
            last_offset: AtomicU64::new(first_offset),
            first_timestamp: AtomicU64::new(u64::MAX),
            last_timestamp: AtomicU64::new(0),
            released: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Opens an index file, keeping entries that point below `trusted_end`; after a crash the rest is zeroed
    /// and the slots rebuilt from the kept entries.
    fn open(path: &Path, first_offset: u64, trusted_end: u64, crashed: bool) -> Result<Self> {
        let corrupt = |reason: &str| Error::Corrupt { path: path.to_owned(), offset: 0, reason: reason.into() };
        let mut file = MappedFile::open(path).map_err(|e| Error::io("open index file", path, e))?;
        let head = file.bytes_unchecked_for_recovery(0, 16).ok_or_else(|| corrupt("shorter than its header"))?;
        let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let (magic, version, slots, capacity) = (word(0), word(4), word(8), word(12));
        if magic != MAGIC || version != VERSION {
            return Err(corrupt("not a Comet index file (bad magic or version)"));
        }
        if slots == 0 || capacity == 0 || file.len() != Self::len_for(slots, capacity) {
            return Err(corrupt("index file length does not match its header"));
        }
        file.set_recovered(file.len());
        let mut f = Self::wrap(file, slots, capacity, first_offset, 1);
        // Entries are written in order: bisect for the trusted prefix.
        let trusted = |i: u32| f.entry(i).is_some_and(|e| e.offset < trusted_end);
        let (mut lo, mut hi) = (1u32, capacity + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if trusted(mid) { lo = mid + 1 } else { hi = mid }
        }
        f.next.store(lo, Ordering::Release);
        if crashed {
            f.repair(lo)?;
        }
        if lo > 1
            && let (Some(a), Some(b)) = (f.entry(1), f.entry(lo - 1))
        {
            f.first_timestamp.store(a.timestamp, Ordering::Release);
            f.last_timestamp.store(b.timestamp, Ordering::Release);
            f.last_offset.store(b.offset, Ordering::Release);
        }
        Ok(f)
    }

    /// Zeroes entries from `next` on and rebuilds every slot from the entries before it.
    fn repair(&mut self, next: u32) -> Result<()> {
        for i in next..=self.capacity {
            self.write_entry(i, &[0u8; ENTRY_LEN]);
        }
        for s in 0..self.slots {
            self.slot(s).store(0, Ordering::Relaxed);
        }
        for i in 1..next {
            if let Some(mut e) = self.entry(i) {
                let s = self.slot(self.slot_of(e.hash));
                e.prev = s.load(Ordering::Relaxed);
                self.write_entry(i, &encode_entry(&e));
                s.store(i, Ordering::Relaxed);
            }
        }
        self.file.flush_all().map_err(|e| Error::io("flush index", self.file.path(), e))
    }

    fn slot_of(&self, hash: u64) -> u32 {
        (hash % u64::from(self.slots)) as u32
    }

    fn slot(&self, s: u32) -> &AtomicU32 {
        debug_assert!(s < self.slots);
        // SAFETY: the slot lies inside the mapping (checked by the length test at open/create), is 4-byte aligned
        // (page-aligned map + 64-byte header), and is only ever accessed through this atomic view.
        unsafe { &*(self.file.as_ptr().add(HEADER_LEN + s as usize * 4) as *const AtomicU32) }
    }

    fn entry_pos(&self, i: u32) -> usize {
        HEADER_LEN + self.slots as usize * 4 + i as usize * ENTRY_LEN
    }

    fn entry(&self, i: u32) -> Option<Entry> {
        if i == 0 || i > self.capacity {
            return None;
        }
        let b = self.file.bytes(self.entry_pos(i), ENTRY_LEN)?;
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let stored = u64_at(8);
        (stored != 0).then(|| Entry {
            hash: u64_at(0),
            offset: stored - 1,
            timestamp: u64_at(16),
            prev: u32::from_le_bytes(b[24..28].try_into().unwrap_or_default()),
        })
    }

    fn write_entry(&self, i: u32, bytes: &[u8; ENTRY_LEN]) {
        let pos = self.entry_pos(i);
        // SAFETY: entry `i` is in bounds (i <= capacity), is not reachable from any slot or chain (it is at or past
        // `next`, recovery runs alone, or truncation has just moved every slot below it), and the dispatcher (or a
        // truncation holding its lock) is the only writer. A lookup that loaded a slot before a truncation may
        // still read an entry being zeroed: lookups only produce candidates, checked against the record.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.file.as_ptr().add(pos), ENTRY_LEN) };
    }

    /// Adds an entry; false when the file is full.
    fn add(&self, hash: u64, offset: u64, timestamp: u64) -> bool {
        let i = self.next.load(Ordering::Acquire);
        if i > self.capacity {
            return false;
        }
        let slot = self.slot(self.slot_of(hash));
        let e = Entry { hash, offset, timestamp, prev: slot.load(Ordering::Acquire) };
        self.write_entry(i, &encode_entry(&e));
        // Publish: readers that acquire the slot see the entry fully written.
        slot.store(i, Ordering::Release);
        self.next.store(i + 1, Ordering::Release);
        self.last_offset.store(offset, Ordering::Release);
        self.first_timestamp.fetch_min(timestamp, Ordering::AcqRel);
        self.last_timestamp.fetch_max(timestamp, Ordering::AcqRel);
        true
    }

    /// Drops the entries pointing at or above CommitLog offset `to` (a suffix: entries are added in log order):
    /// slots are moved back along their chains past them, then the entries are zeroed and the file flushed, so
    /// neither a lookup nor recovery finds them again. Dispatcher lock held (no concurrent `add`).
    fn truncate(&self, to: u64) -> std::io::Result<()> {
        let next = self.next.load(Ordering::Acquire);
        let (mut lo, mut hi) = (1u32, next);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.entry(mid).is_some_and(|e| e.offset < to) { lo = mid + 1 } else { hi = mid }
        }
        if lo >= next {
            return Ok(());
        }
        for s in 0..self.slots {
            let slot = self.slot(s);
            let mut i = slot.load(Ordering::Acquire);
            while i >= lo {
                // Chains only point backwards; anything else is corruption: drop the chain rather than loop.
                i = self.entry(i).map_or(0, |e| if e.prev < i { e.prev } else { 0 });
            }
            slot.store(i, Ordering::Release);
        }
        self.next.store(lo, Ordering::Release);
        for i in lo..next {
            self.write_entry(i, &[0u8; ENTRY_LEN]);
        }
        if let Some(last) = self.entry(lo - 1) {
            self.last_offset.store(last.offset, Ordering::Release);
            self.last_timestamp.store(last.timestamp, Ordering::Release);
        }
        self.file.flush_all()
    }

    fn lookup(&self, hash: u64, begin: u64, end: u64, out: &mut Vec<u64>, max: usize) {
        let mut i = self.slot(self.slot_of(hash)).load(Ordering::Acquire);
        while i != 0 && out.len() < max {
            let Some(e) = self.entry(i) else { return };
            if e.hash == hash && (begin..=end).contains(&e.timestamp) && !out.contains(&e.offset) {
                out.push(e.offset);
            }
            // Chains only point backwards; anything else is corruption, and we stop rather than loop.
            if e.prev >= i {
                return;
            }
            i = e.prev;
        }
    }
}

fn remove_index_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove index file", path, e)),
    }
}

fn encode_entry(e: &Entry) -> [u8; ENTRY_LEN] {
    let mut b = [0u8; ENTRY_LEN];
    b[0..8].copy_from_slice(&e.hash.to_le_bytes());
    b[8..16].copy_from_slice(&(e.offset + 1).to_le_bytes());
    b[16..24].copy_from_slice(&e.timestamp.to_le_bytes());
    b[24..28].copy_from_slice(&e.prev.to_le_bytes());
    b
}

/// The store's key index: a list of bounded hash files, newest last.
pub(crate) struct KeyIndex {
    dir: PathBuf,
    slots: u32,
    capacity: u32,
    files: RwLock<Vec<Arc<IndexFile>>>,
}

impl KeyIndex {
    /// Opens the index in `dir`, keeping entries that point below `trusted_end`.
    pub(crate) fn open(dir: &Path, slots: u32, capacity: u32, trusted_end: u64, crashed: bool) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))? {
            let entry = entry.map_err(|e| Error::io("list", dir, e))?;
            let Some(first) = entry.file_name().to_str().and_then(parse_offset_name) else {
                return Err(Error::Corrupt {
                    path: entry.path(),
                    offset: 0,
                    reason: "foreign file in the index directory (names are 20-digit offsets)".into(),
                });
            };
            let path = entry.path();
            if crate::file::remove_if_empty(&path).map_err(|e| Error::io("inspect index file", &path, e))? {
                continue;
            }
            found.push((first, path));
        }
        found.sort();
        let mut files = Vec::new();
        for (first, path) in found {
            if first >= trusted_end {
                // Started after the trusted point: its entries will be re-dispatched.
                std::fs::remove_file(&path).map_err(|e| Error::io("remove index file", &path, e))?;
                continue;
            }
            files.push(Arc::new(IndexFile::open(&path, first, trusted_end, crashed)?));
        }
        Ok(Self { dir: dir.to_owned(), slots, capacity, files: RwLock::new(files) })
    }

    /// Indexes `key` for the record at `offset`. Dispatcher only.
    #[cfg(test)]
    pub(crate) fn add(&self, key: IndexKey<'_>, offset: u64, timestamp: u64) -> Result<()> {
        self.add_all(&[Pending::new(key, offset, timestamp)])
    }

    /// Indexes entries in order. Dispatcher only. Each entry's slot is a random place in a table of megabytes,
    /// a cache and TLB miss (about 200 ns on the 2-vCPU VM of docs/benchmarks.md) when taken one at a time: the
    /// slots of the whole group are loaded first, independently, so those misses overlap.
    pub(crate) fn add_all(&self, entries: &[Pending]) -> Result<()> {
        if let Some(f) = self.files.read().last() {
            let touched = entries.iter().fold(0u32, |acc, e| acc ^ f.slot(f.slot_of(e.hash)).load(Ordering::Relaxed));
            std::hint::black_box(touched);
        }
        for e in entries {
            if let Some(f) = self.files.read().last()
                && f.add(e.hash, e.offset, e.timestamp)
            {
                continue;
            }
            let f = Arc::new(IndexFile::create(&self.dir, e.offset, self.slots, self.capacity)?);
            f.add(e.hash, e.offset, e.timestamp);
            self.files.write().push(f);
        }
        Ok(())
    }

    /// Whether `entries` more fit in the current file, so adding them creates no file.
    pub(crate) fn has_room(&self, entries: usize) -> bool {
        entries == 0
            || self.files.read().last().is_some_and(|f| {
                let next = u64::from(f.next.load(Ordering::Acquire));
                next + entries as u64 <= u64::from(f.capacity) + 1
            })
    }

    /// Store time of the newest indexed record (0 when the index is empty).
    pub(crate) fn last_timestamp(&self) -> u64 {
        self.files.read().iter().map(|f| f.last_timestamp.load(Ordering::Acquire)).max().unwrap_or(0)
    }

    /// CommitLog offsets of records indexed under `key` with a store time in `[begin, end]`, newest first.
    pub(crate) fn lookup(&self, key: IndexKey<'_>, max: usize, begin: u64, end: u64) -> Vec<u64> {
        let hash = key.hash();
        let files: Vec<Arc<IndexFile>> = self.files.read().clone();
        let mut out = Vec::new();
        for f in files.iter().rev() {
            if out.len() >= max {
                break;
            }
            let (first_ts, last_ts) =
                (f.first_timestamp.load(Ordering::Acquire), f.last_timestamp.load(Ordering::Acquire));
            if last_ts < begin || first_ts > end {
                continue;
            }
            f.lookup(hash, begin, end, &mut out, max);
        }
        out
    }

    /// Unmaps full files (all but the newest) from the process once, so resident memory holds the file being
    /// written and what lookups touch, not every index file ever written. The page cache keeps them.
    pub(crate) fn release_full(&self) {
        let files = self.files.read();
        for f in files.iter().rev().skip(1) {
            if !f.released.swap(true, Ordering::AcqRel) {
                f.file.release(0, f.file.len());
            }
        }
    }

    /// Flushes the files that can still change.
    pub(crate) fn flush(&self) -> std::io::Result<()> {
        let last = self.files.read().last().cloned();
        match last {
            Some(f) => f.file.flush_all(),
            None => Ok(()),
        }
    }

    /// Deletes files whose every entry points below `commitlog_min` (never the newest).
    pub(crate) fn trim(&self, commitlog_min: u64) -> Result<()> {
        loop {
            let victim = {
                let files = self.files.read();
                match files.as_slice() {
                    [first, _, ..] if first.last_offset.load(Ordering::Acquire) < commitlog_min => first.clone(),
                    _ => return Ok(()),
                }
            };
            self.files.write().retain(|f| !Arc::ptr_eq(f, &victim));
            std::fs::remove_file(victim.file.path()).map_err(|e| Error::io("remove", victim.file.path(), e))?;
        }
    }

    /// Forgets every entry pointing at or above CommitLog offset `to` (the log was truncated there): files that
    /// start there or later are deleted, the newest remaining one is cut. The caller holds the dispatcher lock.
    pub(crate) fn truncate(&self, to: u64) -> Result<()> {
        let removed = {
            let mut files = self.files.write();
            let keep = files.iter().position(|f| f.entry(1).is_none_or(|e| e.offset >= to)).unwrap_or(files.len());
            files.split_off(keep)
        };
        for f in removed.iter().rev() {
            remove_index_file(f.file.path())?;
        }
        if !removed.is_empty() {
            crate::file::sync_parent_dir(&self.dir.join("x")).map_err(|e| Error::io("sync", &self.dir, e))?;
        }
        let last = self.files.read().last().cloned();
        match last {
            Some(f) => f.truncate(to).map_err(|e| Error::io("truncate index", f.file.path(), e)),
            None => Ok(()),
        }
    }

    /// Deletes every index file: the log restarted empty.
    pub(crate) fn clear(&self) -> Result<()> {
        let removed = std::mem::take(&mut *self.files.write());
        for f in removed.iter().rev() {
            remove_index_file(f.file.path())?;
        }
        crate::file::sync_parent_dir(&self.dir.join("x")).map_err(|e| Error::io("sync", &self.dir, e))
    }

    /// Bytes of index files on disk.
    pub(crate) fn disk_bytes(&self) -> u64 {
        self.files.read().iter().map(|f| f.file.len() as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hashes_are_the_ones_on_disk_short_or_long() {
        // The streaming form the index files were first written with.
        let streamed = |parts: &[&[u8]]| {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            parts.iter().for_each(|p| h.update(p));
            h.digest()
        };
        let long = "k".repeat(1_000);
        for key in ["", "order-1", long.as_str()] {
            let hash = IndexKey::Key { topic: "T", key }.hash();
            assert_eq!(hash, streamed(&[&[0], b"T", &[0], key.as_bytes()]));
            assert_eq!(IndexKey::Id(key).hash(), streamed(&[&[1], key.as_bytes()]));
        }
        assert_eq!(
            IndexKey::Key { topic: "T", key: "1" }.hash(),
            0xface_19a8_7a7c_332a,
            "as earlier versions wrote it"
        );
    }

    #[test]
    fn finds_keys_across_files_newest_first_and_survives_crash_repair() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp", e))?;
        let idx = KeyIndex::open(dir.path(), 16, 32, u64::MAX, false)?;
        for i in 0..100u64 {
            let key = format!("k{}", i % 10);
            idx.add(IndexKey::Key { topic: "T", key: &key }, i * 10, 1000 + i)?;
            idx.add(IndexKey::Id(&format!("id{i}")), i * 10, 1000 + i)?;
        }
        assert!(idx.files.read().len() > 3, "bounded files roll over");
        let hits = idx.lookup(IndexKey::Key { topic: "T", key: "k3" }, 100, 0, u64::MAX);
        assert_eq!(hits, vec![930, 830, 730, 630, 530, 430, 330, 230, 130, 30]);
        assert_eq!(idx.lookup(IndexKey::Id("id42"), 10, 0, u64::MAX), vec![420]);
        assert!(idx.lookup(IndexKey::Key { topic: "U", key: "k3" }, 10, 0, u64::MAX).is_empty());
        assert_eq!(idx.lookup(IndexKey::Key { topic: "T", key: "k3" }, 3, 0, u64::MAX).len(), 3);
        assert_eq!(idx.lookup(IndexKey::Key { topic: "T", key: "k3" }, 100, 1030, 1060), vec![530, 430, 330]);
        idx.flush().map_err(|e| Error::io("flush", dir.path(), e))?;
        drop(idx);
        // A crash where only records below 500 were trusted: later entries vanish, earlier ones stay findable.
        let idx = KeyIndex::open(dir.path(), 16, 32, 500, true)?;
        let hits = idx.lookup(IndexKey::Key { topic: "T", key: "k3" }, 100, 0, u64::MAX);
        assert_eq!(hits, vec![430, 330, 230, 130, 30]);
        idx.add(IndexKey::Key { topic: "T", key: "k3" }, 530, 2000)?;
        assert_eq!(idx.lookup(IndexKey::Key { topic: "T", key: "k3" }, 2, 0, u64::MAX), vec![530, 430]);
        Ok(())
    }

    #[test]
    fn groups_added_at_once_index_as_single_adds_do_across_file_boundaries() -> Result<()> {
        let (one_dir, group_dir) = (tempfile::tempdir(), tempfile::tempdir());
        let (one_dir, group_dir) = (
            one_dir.map_err(|e| Error::io("tempdir", "/tmp", e))?,
            group_dir.map_err(|e| Error::io("tempdir", "/tmp", e))?,
        );
        let one = KeyIndex::open(one_dir.path(), 16, 32, u64::MAX, false)?;
        let grouped = KeyIndex::open(group_dir.path(), 16, 32, u64::MAX, false)?;
        let keys: Vec<(String, String)> = (0..200u64).map(|i| (format!("k{}", i % 7), format!("id{i}"))).collect();
        let entries: Vec<Pending> = (0..200u64)
            .flat_map(|i| {
                let (key, id) = &keys[i as usize];
                [
                    Pending::new(IndexKey::Id(id), i * 10, 1000 + i),
                    Pending::new(IndexKey::Key { topic: "T", key }, i * 10, 1000 + i),
                ]
            })
            .collect();
        for e in &entries {
            one.add_all(std::slice::from_ref(e))?;
        }
        // Groups of 37 entries: several straddle a file's end (32 entries per file).
        for group in entries.chunks(37) {
            grouped.add_all(group)?;
        }
        assert_eq!(grouped.files.read().len(), one.files.read().len());
        assert!(one.files.read().len() > 10, "the groups crossed many file boundaries");
        for (i, (key, id)) in keys.iter().enumerate() {
            let id_hits = grouped.lookup(IndexKey::Id(id), 10, 0, u64::MAX);
            assert_eq!(id_hits, vec![i as u64 * 10], "{id}");
            assert_eq!(id_hits, one.lookup(IndexKey::Id(id), 10, 0, u64::MAX));
            let key = IndexKey::Key { topic: "T", key };
            assert_eq!(grouped.lookup(key, 100, 0, u64::MAX), one.lookup(key, 100, 0, u64::MAX), "{key:?}");
        }
        Ok(())
    }

    #[test]
    fn has_room_says_whether_adding_creates_a_file() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp", e))?;
        let idx = KeyIndex::open(dir.path(), 16, 32, u64::MAX, false)?;
        assert!(idx.has_room(0), "adding nothing never needs a file");
        for i in 0..100u64 {
            let (room, files) = (idx.has_room(1), idx.files.read().len());
            idx.add(IndexKey::Id(&format!("id{i}")), i * 10, 1000 + i)?;
            assert_eq!(room, idx.files.read().len() == files, "entry {i}");
        }
        assert!(idx.files.read().len() > 2);
        Ok(())
    }

    #[test]
    fn truncation_forgets_entries_at_and_above_the_cut_durably() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp", e))?;
        let idx = KeyIndex::open(dir.path(), 16, 32, u64::MAX, false)?;
        for i in 0..100u64 {
            idx.add(IndexKey::Key { topic: "T", key: &format!("k{}", i % 10) }, i * 10, 1000 + i)?;
            idx.add(IndexKey::Id(&format!("id{i}")), i * 10, 1000 + i)?;
        }
        let files = idx.files.read().len();
        idx.truncate(555)?;
        assert!(idx.files.read().len() < files, "files wholly above the cut are deleted");
        let k3 = |idx: &KeyIndex| idx.lookup(IndexKey::Key { topic: "T", key: "k3" }, 100, 0, u64::MAX);
        assert_eq!(k3(&idx), vec![530, 430, 330, 230, 130, 30]);
        assert!(idx.lookup(IndexKey::Id("id56"), 10, 0, u64::MAX).is_empty());
        assert_eq!(idx.lookup(IndexKey::Id("id55"), 10, 0, u64::MAX), vec![550]);
        // New entries at the same offsets (a refetched tail) are found, the old ones never again.
        idx.add(IndexKey::Key { topic: "T", key: "new" }, 560, 5000)?;
        assert_eq!(idx.lookup(IndexKey::Key { topic: "T", key: "new" }, 10, 0, u64::MAX), vec![560]);
        assert!(idx.lookup(IndexKey::Id("id60"), 10, 0, u64::MAX).is_empty());
        idx.flush().map_err(|e| Error::io("flush", dir.path(), e))?;
        drop(idx);
        // Reopened trusting everything (as after a clean shutdown past the old end): still gone.
        let idx = KeyIndex::open(dir.path(), 16, 32, u64::MAX, false)?;
        assert_eq!(k3(&idx), vec![530, 430, 330, 230, 130, 30]);
        assert!(idx.lookup(IndexKey::Id("id70"), 10, 0, u64::MAX).is_empty());
        assert_eq!(idx.lookup(IndexKey::Key { topic: "T", key: "new" }, 10, 0, u64::MAX), vec![560]);
        idx.clear()?;
        assert!(k3(&idx).is_empty());
        idx.add(IndexKey::Id("again"), 7, 1)?;
        assert_eq!(idx.lookup(IndexKey::Id("again"), 10, 0, u64::MAX), vec![7]);
        Ok(())
    }
}
