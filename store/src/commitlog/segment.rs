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
