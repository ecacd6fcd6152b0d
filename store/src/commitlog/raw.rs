//! The CommitLog as raw bytes, for replication: whole-record chunks out (`read_raw`), verbatim chunks in
//! (`append_raw`), walks and checksums for finding where two logs diverge, and cutting the log back (`cut`,
//! `restart`).
//!
//! A chunk is what a slave appends at the same offsets as its master so that both logs are byte-identical: a
//! run of whole records, each at its own offset with a valid CRC, optionally ending with the end-of-segment
//! marker (followed by nothing but zeros up to the segment limit). A chunk never crosses a segment boundary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use comet_model::{CommitLogOffset, QueueId};

use super::segment::SegmentSlice;
use super::{CommitLog, QueueOffsetTable, Segment, WriterGuard};
use crate::error::{Error, Result};
use crate::record::{self, END_MARKER_LEN, Frame, HEADER_LEN, Layout};

/// Where truncation and restart build the replacement of a segment before renaming it into place: beside the
/// CommitLog directory, never inside it (start-up refuses foreign names there). A leftover is removed at start-up.
pub(crate) fn rewrite_tmp_path(dir: &Path) -> PathBuf {
    dir.with_file_name("commitlog-truncate.tmp")
}

/// A validated chunk: what to write and what it changes in the writer's state.
struct Chunk<'a> {
    /// Bytes to write: the records and the end marker, not the zero padding after it.
    write_len: usize,
    /// The chunk ends with an end marker: the segment is full.
    sealed: bool,
    /// Next queue offset per (topic, queue id) implied by the chunk's records.
    queues: HashMap<(&'a str, QueueId), u64>,
    /// Largest store timestamp of the chunk's records.
    last_timestamp: u64,
}

/// Checks that `bytes`, to be written at CommitLog offset `at` (position `rel` of a `seg_size`-byte segment),
/// is a run of whole records at their own offsets with valid CRCs, optionally closed by an end marker that fills
/// the segment. Reads each header in place and checksums each record once; never panics on any input.
fn validate_chunk(bytes: &[u8], at: u64, rel: usize, seg_size: usize, segment_size: u64) -> Result<Chunk<'_>> {
    let reject =
        |pos: usize, reason: String| Error::ReplicaRejected { offset: CommitLogOffset(at + pos as u64), reason };
    let room = seg_size.saturating_sub(rel);
    if bytes.len() > room {
        return Err(Error::SegmentMismatch {
            offset: CommitLogOffset(at),
            segment_size,
            reason: format!("a {}-byte chunk runs past the end of this segment at {}", bytes.len(), at + room as u64),
        });
    }
    let mut chunk = Chunk { write_len: bytes.len(), sealed: false, queues: HashMap::new(), last_timestamp: 0 };
    let mut pos = 0usize;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        if rest.len() < END_MARKER_LEN {
            return Err(reject(pos, format!("the chunk ends {} bytes into a record header", rest.len())));
        }
        match record::peek(rest) {
            Ok(Frame::Record(size)) => {
                let Some(rec) = rest.get(..size) else {
                    return Err(reject(
                        pos,
                        format!("record of {size} bytes is torn: the chunk ends after {} of them", rest.len()),
                    ));
                };
                if rel + pos + size + END_MARKER_LEN > seg_size {
                    return Err(Error::SegmentMismatch {
                        offset: CommitLogOffset(at + pos as u64),
                        segment_size,
                        reason: format!(
                            "a {size}-byte record here leaves no room for the end marker of this {seg_size}-byte \
                             segment"
                        ),
                    });
                }
                let layout = Layout::parse(rec, crate::record::Check::Full).map_err(|e| reject(pos, e.to_string()))?;
                let here = at + pos as u64;
                if layout.physical_offset != here {
                    return Err(reject(pos, format!("record claims offset {}", layout.physical_offset)));
                }
                // Validated as UTF-8 by `Layout::parse`.
                let topic = std::str::from_utf8(&rec[layout.topic.clone()]).unwrap_or_default();
                let next = layout.queue_offset.saturating_add(1);
                let slot = chunk.queues.entry((topic, layout.queue_id)).or_insert(next);
                *slot = (*slot).max(next);
                chunk.last_timestamp = chunk.last_timestamp.max(layout.store_timestamp);
                pos += size;
            }
            Ok(Frame::End) => {
                let covers = record::end_marker_covers(rest).unwrap_or(0) as usize;
                let remaining = seg_size - (rel + pos);
                if covers != remaining {
                    return Err(reject(
                        pos,
                        format!(
                            "end marker covers {covers} bytes but {remaining} remain in this {seg_size}-byte \
                             segment (do master and slave use the same segment-size?)"
                        ),
                    ));
                }
                if let Some(i) = rest[END_MARKER_LEN..].iter().position(|&b| b != 0) {
                    return Err(reject(pos + END_MARKER_LEN + i, "non-zero bytes after the end marker".into()));
                }
                chunk.write_len = pos + END_MARKER_LEN;
                chunk.sealed = true;
                return Ok(chunk);
            }
            Ok(Frame::Empty) => return Err(reject(pos, "zero bytes where a record should start".into())),
            Err(e) => return Err(reject(pos, e.to_string())),
        }
    }
    Ok(chunk)
}

impl CommitLog {
    /// Appends a chunk read from a master's log at the same offset, verbatim; returns the new end. Validates the
    /// whole chunk before writing anything, then writes it with one `pwrite` under the writer lock.
    // Hot path of a slave: one lock, one CRC per record, one write per chunk, no logging.
    pub(crate) fn append_raw(&self, at: u64, bytes: &[u8]) -> Result<u64> {
        let mut w = self.writer.lock();
        if at != w.pos {
            return Err(Error::ReplicaGap { expected: CommitLogOffset(w.pos), got: CommitLogOffset(at) });
        }
        if bytes.is_empty() {
            return Ok(at);
        }
        // The previous chunk may have closed the active segment with its end marker: this one opens the next.
        let opens_segment = w.pos == w.active.limit();
        let (seg_size, rel) = if opens_segment {
            if !at.is_multiple_of(self.segment_size) {
                return Err(Error::SegmentMismatch {
                    offset: CommitLogOffset(at),
                    segment_size: self.segment_size,
                    reason: format!("a new segment would start at {at}, which is not a multiple of the segment size"),
                });
            }
            (self.segment_size as usize, 0)
        } else {
            (w.active.size(), w.active.rel(at))
        };
        let chunk = validate_chunk(bytes, at, rel, seg_size, self.segment_size)?;
        if opens_segment {
            self.roll(&mut w)?;
        }
        let seg = w.active.clone();
        seg.file()
            .write_at(rel, &bytes[..chunk.write_len])
            .map_err(|e| Error::io("write replicated CommitLog bytes", seg.path(), e))?;
        let Chunk { write_len, sealed, queues, last_timestamp } = chunk;
        let table = &mut w.queue_offsets;
        for ((topic, queue_id), next) in queues {
            let per_topic = match table.get_mut(topic) {
                Some(q) => q,
                None => table.entry(topic.to_owned()).or_default(),
            };
            let slot = per_topic.entry(queue_id).or_insert(0);
            *slot = (*slot).max(next);
        }
        w.last_timestamp = w.last_timestamp.max(last_timestamp);
        if sealed {
            // Like `roll`: the marker's padding is zeros already (preallocated, or zeroed by truncation).
            seg.file().publish(seg.size());
            w.pos = seg.limit();
        } else {
            seg.file().publish(rel + write_len);
            w.pos = at + write_len as u64;
        }
        self.end.store(w.pos, Ordering::Release);
        Ok(w.pos)
    }

    /// Published bytes from `from` for replication: whole records only (at least one, even when it is larger
    /// than `max`), or the end-of-segment marker, never across a segment boundary: exactly what `append_raw`
    /// accepts. `from` must be a record boundary (or a segment base, or the end).
    pub(crate) fn read_raw(&self, from: u64, max: usize) -> Result<Option<Bytes>> {
        let min = self.min_offset();
        if from < min {
            return Err(Error::OffsetMoved { requested: CommitLogOffset(from), min: CommitLogOffset(min) });
        }
        let end = self.end();
        if from >= end {
            return Ok(None);
        }
        let Some(seg) = self.segment_for(from) else { return Ok(None) };
        let rel = seg.rel(from);
        let avail = (end.min(seg.limit()) - from) as usize;
        let mut len = 0usize;
        while len < avail {
            let at = from + len as u64;
            let head = seg.file().bytes(rel + len, HEADER_LEN.min(avail - len));
            match head.map(|h| (record::peek(h), h)) {
                Some((Ok(Frame::Record(size)), h)) if record::physical_offset(h) == Some(at) => {
                    if len > 0 && len + size > max {
                        break;
                    }
                    if len + size > avail {
                        break; // cannot happen for published data; never hand out half a record
                    }
                    len += size;
                }
                Some((Ok(Frame::End), _)) => {
                    len += END_MARKER_LEN;
                    break;
                }
                _ if len == 0 => {
                    return Err(Error::NotRecordBoundary {
                        offset: CommitLogOffset(from),
                        reason: "no record or end marker starts there".into(),
                    });
                }
                _ => break,
            }
        }
        Ok(SegmentSlice::bytes(&seg, rel, len))
    }

    /// Start and size of every record starting in `[from, to)` (`to` is clamped to the end), following end
    /// markers into the next segment. `from` must be a record boundary, a segment base or the end.
    pub(crate) fn record_spans(&self, from: u64, to: u64) -> Result<Vec<(u64, u32)>> {
        let min = self.min_offset();
        if from < min {
            return Err(Error::OffsetMoved { requested: CommitLogOffset(from), min: CommitLogOffset(min) });
        }
        let end = self.end();
        if from > end {
            return Err(Error::NotRecordBoundary {
                offset: CommitLogOffset(from),
                reason: format!("beyond the end of the log at {end}"),
            });
        }
        let to = to.min(end);
        let mut spans = Vec::new();
        let mut pos = from;
        while pos < to {
            let Some(seg) = self.segment_for(pos) else { break };
            let rel = seg.rel(pos);
            let bad = |reason: &str| {
                if pos == from {
                    Error::NotRecordBoundary { offset: CommitLogOffset(from), reason: reason.into() }
                } else {
                    Error::Corrupt { path: seg.path().to_owned(), offset: rel as u64, reason: reason.into() }
                }
            };
            let head = seg.file().bytes(rel, HEADER_LEN.min(seg.size() - rel));
            match head.map(|h| (record::peek(h), h)) {
                Some((Ok(Frame::Record(size)), h)) => {
                    if record::physical_offset(h) != Some(pos) {
                        return Err(bad("the bytes there do not claim to be a record at this offset"));
                    }
                    if seg.file().bytes(rel, size).is_none() {
                        return Err(bad("a record runs past the published end"));
                    }
                    spans.push((pos, size as u32));
                    pos += size as u64;
                }
                Some((Ok(Frame::End), _)) => pos = seg.limit(),
                _ => return Err(bad("no record or end marker starts there")),
            }
        }
        Ok(spans)
    }

    /// CRC-32C of the stored bytes `[from, from + len)`; `None` unless all of them are stored in one segment.
    pub(crate) fn crc_range(&self, from: u64, len: u32) -> Option<u32> {
        let to = from.checked_add(u64::from(len))?;
        if from < self.min_offset() || to > self.end() {
            return None;
        }
        let seg = self.segment_for(from)?;
        if to > seg.limit() {
            return None;
        }
        let bytes = seg.file().bytes(seg.rel(from), len as usize)?;
        Some(crc32c::crc32c(bytes))
    }

    /// Checks that `to` (within the stored log) starts a record, is a segment base, or ends the last record of
    /// its segment, by walking the segment's records from its base.
    pub(crate) fn check_boundary(&self, to: u64) -> Result<()> {
        let not = |reason: String| Error::NotRecordBoundary { offset: CommitLogOffset(to), reason };
        let seg = self.segment_for(to).ok_or_else(|| not("no stored segment holds it".into()))?;
        let mut pos = seg.base();
        while pos < to {
            let head = seg.file().bytes(seg.rel(pos), END_MARKER_LEN);
            match head.map(record::peek) {
                Some(Ok(Frame::Record(size))) if pos + size as u64 > to => {
                    return Err(not(format!("it lies inside the {size}-byte record at {pos}")));
                }
                Some(Ok(Frame::Record(size))) => pos += size as u64,
                Some(Ok(Frame::End)) => return Err(not(format!("it lies inside the end marker at {pos}"))),
                _ => return Err(not(format!("the walk from the segment base {} stops at {pos}", seg.base()))),
            }
        }
        Ok(())
    }

    /// First step of `cut`, changing nothing: writes the replacement of the segment holding `to` (its bytes
    /// below `to`) beside the CommitLog directory. Fails cleanly, for example on a full disk.
    pub(crate) fn prepare_cut(&self, _w: &mut WriterGuard<'_>, to: u64) -> Result<()> {
        let tail = self.segment_for(to).ok_or_else(|| Error::NotRecordBoundary {
            offset: CommitLogOffset(to),
            reason: "no stored segment holds it".into(),
        })?;
        tail.write_prefix_copy(tail.rel(to), &rewrite_tmp_path(&self.dir))
    }

    /// Cuts the log back to `to` (a checked record boundary inside the stored log, `prepare_cut` done): every
    /// segment above the one holding `to` is deleted, and that one is replaced by the prepared copy of its bytes
    /// below `to` (zeros after), so recovery can never find the old records again and readers holding old bytes
    /// keep intact ones.
    pub(crate) fn cut(&self, w: &mut WriterGuard<'_>, to: u64) -> Result<()> {
        let w = &mut w.0;
        let segs: Vec<Arc<Segment>> = self.segments.read().clone();
        let Some(i) = segs.iter().position(|s| s.base() <= to && to < s.limit()) else {
            return Err(Error::NotRecordBoundary {
                offset: CommitLogOffset(to),
                reason: "no stored segment holds it".into(),
            });
        };
        let tail = &segs[i];
        let keep = tail.rel(to);
        // Readers first: from here nothing at or above `to` can be started.
        self.end.store(to, Ordering::Release);
        tail.file().unpublish(keep);
        // Newest first, so that the segments left on disk form a contiguous log at every step.
        self.segments.write().truncate(i + 1);
        for s in segs[i + 1..].iter().rev() {
            remove_segment_file(s)?;
        }
        crate::file::sync_parent_dir(tail.path()).map_err(|e| Error::io("sync", &self.dir, e))?;
        let tmp = rewrite_tmp_path(&self.dir);
        let fresh = Arc::new(Segment::install(&tmp, tail.path().to_owned(), tail.base(), keep)?);
        self.segments.write()[i] = fresh.clone();
        w.active = fresh;
        w.pos = to;
        self.warmed.store(to, Ordering::Release);
        tracing::warn!(dir = %self.dir.display(), to, deleted_segments = segs.len() - i - 1,
            "CommitLog truncated");
        Ok(())
    }

    /// First step of `restart`, changing nothing: writes the new empty segment beside the CommitLog directory.
    pub(crate) fn prepare_restart(&self, _w: &mut WriterGuard<'_>) -> Result<()> {
        Segment::write_empty(&rewrite_tmp_path(&self.dir), self.segment_size)
    }

    /// Deletes every segment and restarts the log empty at `base` (a multiple of the segment size, checked by
    /// the caller; `prepare_restart` done) with the prepared segment there.
    pub(crate) fn restart(&self, w: &mut WriterGuard<'_>, base: u64) -> Result<()> {
        let w = &mut w.0;
        // Readers find no segment from here on (NoRecord), then the new positions.
        let old = std::mem::take(&mut *self.segments.write());
        self.end.store(base, Ordering::Release);
        self.min.store(base, Ordering::Release);
        for s in old.iter().rev() {
            remove_segment_file(s)?;
        }
        let path = self.dir.join(crate::file::offset_name(base));
        let fresh = Arc::new(Segment::install(&rewrite_tmp_path(&self.dir), path, base, 0)?);
        self.segments.write().push(fresh.clone());
        w.active = fresh;
        w.pos = base;
        w.queue_offsets.clear();
        self.warmed.store(base, Ordering::Release);
        tracing::warn!(dir = %self.dir.display(), base, deleted_segments = old.len(), "CommitLog restarted empty");
        Ok(())
    }

    /// Installs the queue-offset table while the writer lock is already held (truncation).
    pub(crate) fn set_queue_offsets_locked(&self, w: &mut WriterGuard<'_>, table: QueueOffsetTable) {
        w.0.queue_offsets = table;
    }
}

fn remove_segment_file(s: &Segment) -> Result<()> {
    match std::fs::remove_file(s.path()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("delete segment", s.path(), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEG: usize = 64 * 1024;

    fn records(at: u64, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            let mut m = crate::NewMessage::new("T", (i % 3) as u32, vec![i as u8; 10 + i * 7]);
            m.keys = format!("k{i}");
            let len = record::encoded_len(&m, u32::MAX).unwrap_or(0);
            let start = out.len();
            out.resize(start + len, 0);
            let place = record::Placement {
                physical_offset: CommitLogOffset(at + start as u64),
                queue_offset: comet_model::QueueOffset(i as u64),
                store_timestamp: 1000 + i as u64,
                store_host: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            };
            record::encode(&mut out[start..], &m, &place);
        }
        out
    }

    #[test]
    fn valid_chunk_and_sealed_chunk_are_accepted() {
        let at = 3 * SEG as u64;
        let bytes = records(at, 5);
        let c = validate_chunk(&bytes, at, 0, SEG, SEG as u64).map_err(|e| e.to_string());
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.write_len, c.sealed, c.last_timestamp), (bytes.len(), false, 1004));
        assert_eq!(c.queues.get(&("T", 1)), Some(&5));
        let mut sealed = bytes.clone();
        let mut marker = [0u8; 8];
        record::encode_end_marker(&mut marker, SEG - 100 - bytes.len());
        sealed.extend_from_slice(&marker);
        sealed.extend_from_slice(&[0; 30]);
        let c = validate_chunk(&sealed, at + 100, 100, SEG, SEG as u64);
        assert!(c.is_err(), "records claim other offsets");
        let bytes = records(at + 100, 5);
        let mut sealed = bytes.clone();
        sealed.extend_from_slice(&marker);
        sealed.extend_from_slice(&[0; 30]);
        let c = validate_chunk(&sealed, at + 100, 100, SEG, SEG as u64).map_err(|e| e.to_string());
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.write_len, c.sealed), (bytes.len() + 8, true));
        sealed.push(1);
        assert!(validate_chunk(&sealed, at + 100, 100, SEG, SEG as u64).is_err(), "garbage after the marker");
    }

    proptest! {
        #[test]
        fn garbage_and_damaged_chunks_never_panic_and_are_rejected(
            garbage in proptest::collection::vec(any::<u8>(), 0..2048),
            cut in any::<proptest::sample::Index>(),
            flip in any::<proptest::sample::Index>(),
            rel in 0usize..SEG,
        ) {
            let at = (SEG + rel) as u64;
            // Pure garbage: anything is allowed except a panic (it is almost always rejected), also with an end
            // marker in front (whose padding must be zeros) and after a valid record.
            let _ = validate_chunk(&garbage, at, rel, SEG, SEG as u64);
            let mut marked = vec![0u8; 8];
            record::encode_end_marker(&mut marked, SEG - rel);
            marked.extend_from_slice(&garbage);
            let r = validate_chunk(&marked, at, rel, SEG, SEG as u64);
            prop_assert_eq!(r.is_ok(), marked.len() <= SEG - rel && garbage.iter().all(|&b| b == 0));
            let good = records(at, 4);
            let room = SEG - rel;
            // A truncated valid chunk is rejected unless the cut falls on a record boundary.
            let n = cut.index(good.len());
            let r = validate_chunk(&good[..n], at, rel, SEG, SEG as u64);
            if good.len() + 8 <= room {
                prop_assert!(validate_chunk(&good, at, rel, SEG, SEG as u64).is_ok());
                let boundary = n == 0 || records(at, 4).len() == n || (1..4).any(|k| records(at, k).len() == n);
                prop_assert_eq!(r.is_ok(), boundary);
                // Any single bit flip is rejected.
                let mut bad = good.clone();
                let b = flip.index(bad.len() * 8);
                bad[b / 8] ^= 1 << (b % 8);
                prop_assert!(validate_chunk(&bad, at, rel, SEG, SEG as u64).is_err());
                // Garbage after valid records is rejected.
                let mut tail = good.clone();
                tail.extend_from_slice(&garbage);
                let r = validate_chunk(&tail, at, rel, SEG, SEG as u64);
                prop_assert!(garbage.is_empty() || r.is_err());
            }
        }
    }
}
