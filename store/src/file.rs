//! A preallocated, memory-mapped file with a single writer and many readers.
//!
//! Every on-disk structure of the store (CommitLog segments, consume-queue files, index files) is one of these.
//! The concurrency rule is the publish discipline: bytes below [`MappedFile::published`] are immutable and may be
//! read by anyone; bytes at or above it belong to the one writer (the caller holds the lock that makes it so).
//! The writer fills the unpublished region, then moves `published` forward with release ordering; readers load it
//! with acquire ordering before slicing. Space is reserved with `fallocate` when the file is created, so a write
//! through the map can never hit `ENOSPC` (which would be a `SIGBUS`, not an error).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use memmap2::MmapRaw;

/// A memory-mapped file of fixed length.
pub(crate) struct MappedFile {
    path: PathBuf,
    file: File,
    map: MmapRaw,
    len: usize,
    /// End of the immutable, readable prefix.
    published: AtomicUsize,
    /// Bytes below this are known durable (msync'd).
    flushed: AtomicUsize,
}

impl MappedFile {
    /// Creates a new file of `len` bytes, reserving its blocks so later writes through the map cannot fail.
    pub(crate) fn create(path: &Path, len: usize) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        if let Err(e) = allocate(&file, len) {
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        // The new directory entry must survive a crash, or recovery would find a gap in the segment chain.
        sync_parent_dir(path)?;
        Self::map(path, file, len, 0)
    }

    /// Opens an existing file; nothing is published until the owner has validated the content.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file larger than the address space"))?;
        Self::map(path, file, len, 0)
    }

    fn map(path: &Path, file: File, len: usize, published: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "empty file"));
        }
        let map = MmapRaw::map_raw(&file)?;
        Ok(Self {
            path: path.to_owned(),
            file,
            map,
            len,
            published: AtomicUsize::new(published),
            flushed: AtomicUsize::new(published),
        })
    }

    /// The file's path, for error messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The file's fixed length.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// End of the readable prefix.
    pub(crate) fn published(&self) -> usize {
        self.published.load(Ordering::Acquire)
    }

    /// Makes `[0, pos)` readable. Only the writer calls this, after filling the bytes.
    pub(crate) fn publish(&self, pos: usize) {
        debug_assert!(pos <= self.len);
        self.published.store(pos.min(self.len), Ordering::Release);
    }

    /// Reads bytes of the published prefix; `None` if the range is not (yet) readable.
    pub(crate) fn bytes(&self, pos: usize, len: usize) -> Option<&[u8]> {
        let end = pos.checked_add(len)?;
        if end > self.published() {
            return None;
        }
        // SAFETY: `[pos, end)` lies inside the mapping (published <= len) and below `published`, which no one
        // writes again (publish discipline), so a shared slice cannot alias a write.
        Some(unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(pos), len) })
    }

    /// Reads bytes anywhere in the file, published or not. Only for start-up validation, before any writer runs.
    pub(crate) fn bytes_unchecked_for_recovery(&self, pos: usize, len: usize) -> Option<&[u8]> {
        let end = pos.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: in bounds of the mapping; the caller guarantees no writer is active (recovery runs alone).
        Some(unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(pos), len) })
    }

    /// The writable region `[pos, pos + len)`, which must lie at or above the published prefix.
    ///
    /// # Safety
    /// The caller must be the only writer of this file for the lifetime of the returned slice (it holds the lock
    /// that guards the file's writer role), and must not publish past the region before it stops using it.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn unpublished_mut(&self, pos: usize, len: usize) -> Option<&mut [u8]> {
        let end = pos.checked_add(len)?;
        if pos < self.published() || end > self.len {
            return None;
        }
        // SAFETY: in bounds; no reader touches bytes at or above `published`, and the caller is the sole writer.
        Some(unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(pos), len) })
    }

    /// Writes `data` at `pos` through the file descriptor; `pos` must be at or above the published prefix.
    ///
    /// Used for the CommitLog: `pwrite` of fresh pages fills the page cache directly, while a first store through
    /// the map would fault each page in and have the kernel zero it before we overwrite it (half of the append
    /// cost at small message sizes). Readers still read through the map: both views share the page cache.
    /// The caller must be the file's only writer (it holds the writer lock).
    pub(crate) fn write_at(&self, pos: usize, data: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let end = pos.checked_add(data.len()).filter(|&e| e <= self.len);
        if pos < self.published() || end.is_none() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "write outside the writable region"));
        }
        self.file.write_all_at(data, pos as u64)
    }

    /// Faults `[from, from + len)` into the map, writable, ahead of the writer (`MADV_POPULATE_WRITE`), so the
    /// writer's stores do not stop on page faults and kernel zeroing. Returns false if the kernel cannot.
    pub(crate) fn populate(&self, from: usize, len: usize) -> bool {
        let len = len.min(self.len.saturating_sub(from));
        len == 0 || self.map.advise_range(memmap2::Advice::PopulateWrite, from, len).is_ok()
    }

    /// Drops the pages of `[from, to)` from this process's page tables (`MADV_DONTNEED`), rounded inwards to whole
    /// pages, so that data the writer has left behind stops counting towards the broker's resident memory. The
    /// page cache keeps them: a later read faults them back in with the same bytes.
    pub(crate) fn release(&self, from: usize, to: usize) {
        let page = page_size();
        let from = from.div_ceil(page) * page;
        let to = to.min(self.len) / page * page;
        if to <= from {
            return;
        }
        // SAFETY: the mapping is MAP_SHARED over a file, so MADV_DONTNEED only unmaps pages: their contents stay
        // in the page cache (dirty state included) and the next access maps the same bytes again. No reference
        // into the range is invalidated; `from..to` lies within the mapping.
        let _ = unsafe { self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, to - from) };
    }

    /// True when every page of `[from, to)` (at most its first 64 pages) is in the page cache (`mincore`), so
    /// reading it through the map will not wait for the disk, whether or not this process has the pages mapped.
    pub(crate) fn in_page_cache(&self, from: usize, to: usize) -> bool {
        const MAX_PAGES: usize = 64;
        let page = page_size();
        let to = to.min(self.len);
        if to <= from {
            return true;
        }
        let start = from / page * page;
        let span = (to - start).min(MAX_PAGES * page);
        let pages = span.div_ceil(page);
        let mut resident = [0u8; MAX_PAGES];
        // SAFETY: `start` is page-aligned (the mapping starts on a page) and `start..start + span` lies within the
        // mapping (`to <= len`); `resident` has a byte for each of its `pages` pages. mincore only reads the page
        // tables and the page cache: it changes no memory but `resident`.
        let rc = unsafe { libc::mincore(self.map.as_mut_ptr().add(start).cast(), span, resident.as_mut_ptr()) };
        rc == 0 && resident[..pages].iter().all(|page| page & 1 == 1)
    }

    /// Drops the page-cache pages of `[from, to)` (`POSIX_FADV_DONTNEED`): clean ones that no process maps leave
    /// memory; dirty or mapped ones stay. The file's bytes are unchanged: a later read fetches them from disk.
    pub(crate) fn drop_cached(&self, from: usize, to: usize) {
        use std::os::fd::AsRawFd;
        let to = to.min(self.len);
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(from), libc::off_t::try_from(to.saturating_sub(from)))
        else {
            return;
        };
        if len == 0 {
            return;
        }
        // SAFETY: a plain syscall on a descriptor this file owns; it changes no memory of this process.
        let _ = unsafe { libc::posix_fadvise(self.file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED) };
    }

    /// Raw pointer to the start of the mapping, for atomics placed in the file (index slots).
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Makes `[from, to)` durable with `msync`. Idempotent; skips work already done.
    pub(crate) fn flush_range(&self, from: usize, to: usize) -> io::Result<()> {
        let to = to.min(self.len);
        if to <= from {
            return Ok(());
        }
        self.map.flush_range(from, to - from)?;
        self.flushed.fetch_max(to, Ordering::AcqRel);
        Ok(())
    }

    /// Flushes everything published and not yet flushed.
    pub(crate) fn flush_published(&self) -> io::Result<()> {
        let from = self.flushed.load(Ordering::Acquire);
        self.flush_range(from, self.published())
    }

    /// Flushes the whole mapping (for files updated in place, such as index slots).
    pub(crate) fn flush_all(&self) -> io::Result<()> {
        self.map.flush()
    }

    /// Zeroes `[from, len)` and forgets anything published there. Recovery uses it to cut a torn tail so that stale
    /// bytes can never be mistaken for records later.
    pub(crate) fn truncate_to(&mut self, from: usize) -> io::Result<()> {
        let from = from.min(self.len);
        zero_range(&self.file, &self.map, from, self.len - from)?;
        self.map.flush_range(from, self.len - from)?;
        self.file.sync_all()?;
        *self.published.get_mut() = from;
        *self.flushed.get_mut() = from;
        Ok(())
    }

    /// Lowers the readable prefix to `pos` (a truncation): readers can no longer start reading at or above it.
    /// Slices handed out earlier stay valid; the caller decides what happens to the bytes.
    pub(crate) fn unpublish(&self, pos: usize) {
        self.published.fetch_min(pos, Ordering::AcqRel);
        self.flushed.fetch_min(pos, Ordering::AcqRel);
    }

    /// Truncation of a file written in place (consume queues): forgets and zeroes `[from, published)`, durably,
    /// so neither a reader nor recovery can find the stale bytes again. The caller is the file's only writer.
    /// A reader that loaded the old published end just before may still see the bytes change: callers check
    /// what they read (consume-queue entries are verified against the record they point at).
    pub(crate) fn cut(&self, from: usize) -> io::Result<()> {
        let old = self.published();
        if from >= old {
            return Ok(());
        }
        self.unpublish(from);
        zero_range(&self.file, &self.map, from, old - from)?;
        self.map.flush_range(from, old - from)?;
        self.file.sync_all()
    }

    /// Marks `[0, pos)` as validated, readable and durable. Only for start-up.
    pub(crate) fn set_recovered(&mut self, pos: usize) {
        *self.published.get_mut() = pos;
        *self.flushed.get_mut() = pos;
    }

    /// Hints the kernel that the file will be read sequentially soon (start-up scans).
    pub(crate) fn advise_sequential(&self) {
        let _ = self.map.advise(memmap2::Advice::Sequential);
    }
}

/// Reserves `len` bytes of real disk blocks for `file`.
fn allocate(file: &File, len: usize) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large"))?;
    // SAFETY: plain syscall on an open descriptor we own.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
            // SAFETY: as above; glibc emulates by writing one byte per block.
            let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
            if rc == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(rc)) }
        }
        _ => Err(err),
    }
}

/// Zeroes a range: cheaply through `fallocate` when the filesystem can, by writing zeros otherwise.
fn zero_range(file: &File, map: &MmapRaw, from: usize, len: usize) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let (off, n) = match (libc::off_t::try_from(from), libc::off_t::try_from(len)) {
        (Ok(o), Ok(n)) => (o, n),
        _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "range too large")),
    };
    // SAFETY: plain syscall on an open descriptor we own; the map sees the zeroed pages (shared page cache).
    if unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_ZERO_RANGE, off, n) } == 0 {
        return Ok(());
    }
    // SAFETY: in bounds of the mapping (`from + len` is at most the map length at every call site, checked by the
    // caller's arithmetic). Recovery runs before any reader or writer exists; `cut` runs as the file's only writer
    // on bytes it has just unpublished, so no new reader can start on them.
    unsafe { std::ptr::write_bytes(map.as_mut_ptr().add(from), 0, len) };
    Ok(())
}

/// Deletes `path` if it is an empty file and says so: a process killed between creating a data file and
/// reserving its space leaves one behind. It holds no data, and opening it would fail ("empty file").
pub(crate) fn remove_if_empty(path: &Path) -> io::Result<bool> {
    if std::fs::metadata(path)?.len() != 0 {
        return Ok(false);
    }
    std::fs::remove_file(path)?;
    sync_parent_dir(path)?;
    tracing::warn!(path = %path.display(), "removed an empty file left by an interrupted creation");
    Ok(true)
}

/// fsyncs the directory holding `path`, so a created, renamed or deleted entry is durable.
pub(crate) fn sync_parent_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Parses a file name made of exactly 20 decimal digits (RocketMQ's naming for offset-named files).
pub(crate) fn parse_offset_name(name: &str) -> Option<u64> {
    if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) { name.parse().ok() } else { None }
}

/// The 20-digit zero-padded file name for an offset.
pub(crate) fn offset_name(offset: u64) -> String {
    format!("{offset:020}")
}

/// The system's page size: what `madvise` and `mincore` ranges must be aligned to (4 KiB on x86-64, up to 64 KiB
/// on some arm64 kernels).
fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf reads a system constant; it has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(n).ok().filter(|n| n.is_power_of_two()).unwrap_or(4096)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_names_round_trip_and_reject_foreign_names() {
        assert_eq!(offset_name(1_073_741_824), "00000000001073741824");
        assert_eq!(parse_offset_name("00000000001073741824"), Some(1_073_741_824));
        assert_eq!(parse_offset_name("0000000000107374182"), None);
        assert_eq!(parse_offset_name("0000000000107374182x"), None);
        assert_eq!(parse_offset_name("+0000000001073741824"), None);
    }

    #[test]
    fn publish_discipline_guards_reads_and_writes() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let f = MappedFile::create(&dir.path().join("f"), 4096)?;
        assert!(f.bytes(0, 1).is_none());
        // SAFETY: single-threaded test, sole writer.
        let w = unsafe { f.unpublished_mut(0, 5) }.ok_or_else(|| io::Error::other("no region"))?;
        w.copy_from_slice(b"hello");
        f.publish(5);
        assert_eq!(f.bytes(0, 5), Some(&b"hello"[..]));
        // SAFETY: as above.
        assert!(unsafe { f.unpublished_mut(4, 2) }.is_none(), "published bytes are immutable");
        assert!(f.bytes(4, 2).is_none(), "unpublished bytes are not readable");
        f.flush_published()?;
        Ok(())
    }
}
