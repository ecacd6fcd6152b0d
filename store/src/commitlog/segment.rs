//! One CommitLog segment: a preallocated mapped file whose name is the offset of its first byte.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::file::{MappedFile, offset_name};

/// A segment of the CommitLog covering `[base, base + len)`.
pub(crate) struct Segment {
    base: u64,
    file: MappedFile,
}

impl Segment {
    /// Creates the segment starting at `base` in `dir`.
    pub(crate) fn create(dir: &Path, base: u64, size: u64) -> Result<Self> {
        let path = dir.join(offset_name(base));
        let len =
            usize::try_from(size).map_err(|_| Error::InvalidConfig { reason: "segment-size too large".into() })?;
        let file = MappedFile::create(&path, len).map_err(|e| Error::io("create segment", &path, e))?;
        Ok(Self { base, file })
    }

    /// Opens an existing segment; nothing is readable until recovery publishes it.
    pub(crate) fn open(path: PathBuf, base: u64) -> Result<Self> {
        let file = MappedFile::open(&path).map_err(|e| Error::io("open segment", &path, e))?;
        Ok(Self { base, file })
    }

    /// Writes at `tmp` a new file for this segment holding only its first `keep` bytes (zeros after),
    /// preallocated and fsynced, for [`Segment::install`] to put in its place. Truncation uses this instead of
    /// zeroing in place: readers still holding bytes of the old file keep intact bytes (its inode lives on until
    /// they drop them), and a crash leaves either file whole. It is also the only step of a truncation that needs
    /// disk space, so it runs before anything is changed. `tmp` must be outside the CommitLog directory
    /// (start-up refuses foreign names there).
    pub(crate) fn write_prefix_copy(&self, keep: usize, tmp: &Path) -> Result<()> {
        use std::io::{Read, Write};
        let keep = keep.min(self.size());
        create_preallocated(tmp, self.size())?;
        let copy = || -> std::io::Result<()> {
            let mut dst = std::fs::OpenOptions::new().write(true).open(tmp)?;
            if keep > 0 {
                // A separate descriptor: the mapped file's own is only used positionally. `io::copy` between
                // files uses copy_file_range, so the bytes move inside the kernel (or are shared, on reflink
                // filesystems).
                let mut src = std::fs::File::open(self.path())?.take(keep as u64);
                let copied = std::io::copy(&mut src, &mut dst)?;
                if copied != keep as u64 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("copied {copied} of {keep} bytes"),
                    ));
                }
            }
            dst.flush()?;
            dst.sync_all()
        };
        copy().map_err(|e| {
            let _ = std::fs::remove_file(tmp);
            Error::io("copy segment prefix", self.path(), e)
        })
    }

    /// Writes at `tmp` an empty preallocated segment file of `size` bytes, for [`Segment::install`].
    pub(crate) fn write_empty(tmp: &Path, size: u64) -> Result<()> {
        create_preallocated(tmp, usize::try_from(size).unwrap_or(usize::MAX))
    }

    /// Renames the file prepared at `tmp` to `path` (atomically replacing a segment there, if any) and opens it
    /// as the segment starting at `base`, its first `valid` bytes readable.
    pub(crate) fn install(tmp: &Path, path: PathBuf, base: u64, valid: usize) -> Result<Self> {
        std::fs::rename(tmp, &path).map_err(|e| Error::io("install segment", &path, e))?;
        crate::file::sync_parent_dir(&path).map_err(|e| Error::io("sync", &path, e))?;
        crate::file::sync_parent_dir(tmp).map_err(|e| Error::io("sync", tmp, e))?;
        let mut seg = Self::open(path, base)?;
        seg.file_mut().set_recovered(valid);
        Ok(seg)
    }

    /// Offset of the first byte.
    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    /// Offset one past the last byte the segment can hold.
    pub(crate) fn limit(&self) -> u64 {
        self.base + self.file.len() as u64
    }

    /// Capacity in bytes.
    pub(crate) fn size(&self) -> usize {
        self.file.len()
    }

    pub(crate) fn file(&self) -> &MappedFile {
        &self.file
    }

    pub(crate) fn file_mut(&mut self) -> &mut MappedFile {
        &mut self.file
    }

    pub(crate) fn path(&self) -> &Path {
        self.file.path()
    }

    /// Position inside the segment of a CommitLog offset.
    pub(crate) fn rel(&self, offset: u64) -> usize {
        (offset - self.base) as usize
    }
}

/// Keeps a segment mapped while a `Bytes` handed out from it is alive.
pub(crate) struct SegmentSlice {
    pub(crate) segment: std::sync::Arc<Segment>,
    pub(crate) pos: usize,
    pub(crate) len: usize,
}

impl AsRef<[u8]> for SegmentSlice {
    fn as_ref(&self) -> &[u8] {
        // The slice was checked to be published when this was built; published bytes never change.
        self.segment.file.bytes(self.pos, self.len).unwrap_or(&[])
    }
}

impl SegmentSlice {
    /// A `Bytes` over published bytes of `segment`, or `None` if the range is not readable.
    pub(crate) fn bytes(segment: &std::sync::Arc<Segment>, pos: usize, len: usize) -> Option<Bytes> {
        segment.file.bytes(pos, len)?;
        Some(Bytes::from_owner(SegmentSlice { segment: segment.clone(), pos, len }))
    }
}

/// Creates `path` (replacing a leftover) with `len` bytes reserved.
fn create_preallocated(path: &Path, len: usize) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove stale file", path, e)),
    }
    drop(MappedFile::create(path, len).map_err(|e| Error::io("create segment file", path, e))?);
    Ok(())
}
