//! Opening the CommitLog: find the segments, then find the true end of the log.
//!
//! Everything below the recovery start (the checkpoint's dispatched offset, or the first byte when there is no
//! checkpoint) is trusted: it was durable before the checkpoint was written. From there the log is scanned
//! record by record (magic, size, CRC, self-offset); the first record that fails is the torn or corrupt tail.
//! The tail is zeroed (not just forgotten) so that stale bytes can never be parsed as records later, and any
//! segment after it is deleted. The cost is proportional to the data written since the last checkpoint, not to
//! the size of the store.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use parking_lot::{Mutex, RwLock};

use super::{CommitLog, Segment, Writer};
use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::file::{parse_offset_name, remove_if_empty, sync_parent_dir};
use crate::record::{self, Frame, Layout};

/// The opened log and what recovery found.
pub(crate) struct Recovered {
    pub(crate) log: CommitLog,
    /// Where the scan started.
    pub(crate) scanned_from: u64,
    /// Bytes cut from the tail (torn or corrupt writes).
    pub(crate) truncated_bytes: u64,
    /// Why the tail was cut, if it was.
    pub(crate) truncation_reason: Option<String>,
}

impl CommitLog {
    /// Opens (or creates) the CommitLog in `dir`, scanning from `start` (clamped to the stored range). After a
    /// crash everything past the tail is zeroed, because a lost page can hide stale records behind it.
    pub(crate) fn open(dir: &Path, config: &StoreConfig, start: Option<u64>, crashed: bool) -> Result<Recovered> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        // A truncation that crashed before renaming its segment copy into place: the original is still there.
        let tmp = super::raw::rewrite_tmp_path(dir);
        match std::fs::remove_file(&tmp) {
            Ok(()) => tracing::warn!(path = %tmp.display(), "removed an unfinished truncation copy"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &tmp, e)),
        }
        let mut segments = list_segments(dir)?;
        if segments.is_empty() {
            segments.push(Segment::create(dir, 0, config.segment_size)?);
        }
        let first_base = segments[0].base();
        let last_limit = segments[segments.len() - 1].limit();
        let scanned_from = start.unwrap_or(first_base).clamp(first_base, last_limit);

        // Everything before the segment holding the scan start is trusted and readable as a whole.
        let mut idx = segments.iter().position(|s| scanned_from < s.limit()).unwrap_or(segments.len() - 1);
        for s in &mut segments[..idx] {
            let size = s.size();
            s.file_mut().set_recovered(size);
        }
        let mut pos = scanned_from;
        let reason;
        loop {
            let seg = &segments[idx];
            seg.file().advise_sequential();
            match scan_segment(seg, pos) {
                Scan::Tail(at, why) => {
                    pos = at;
                    reason = why;
                    break;
                }
                Scan::Next if idx + 1 < segments.len() => {
                    let size = seg.size();
                    segments[idx].file_mut().set_recovered(size);
                    idx += 1;
                    pos = segments[idx].base();
                }
                Scan::Next => {
                    // An end marker closes the last segment: the next one was never created (or was removed).
                    let (size, limit) = (seg.size(), seg.limit());
                    segments[idx].file_mut().set_recovered(size);
                    let next = Segment::create(dir, limit, config.segment_size)?;
                    pos = next.base();
                    segments.push(next);
                    idx += 1;
                }
            }
        }

        if let Some(why) = &reason
            && !crashed
        {
            // After a clean shutdown everything was flushed: an invalid record is damage at rest, not a torn
            // write, and cutting there could destroy good data. Refuse to start and say where.
            let seg = &segments[idx];
            return Err(Error::Corrupt {
                path: seg.path().to_owned(),
                offset: seg.rel(pos) as u64,
                reason: why.clone(),
            });
        }
        let mut truncated_bytes = 0;
        // Cut the tail segment at `pos` and drop every later segment: nothing after a torn point is trustworthy.
        for seg in segments.drain(idx + 1..).rev() {
            truncated_bytes += seg.size() as u64;
            std::fs::remove_file(seg.path()).map_err(|e| Error::io("remove segment", seg.path(), e))?;
            tracing::warn!(path = %seg.path().display(), "removed CommitLog segment beyond the recovered tail");
        }
        let tail = &mut segments[idx];
        let rel = tail.rel(pos);
        if crashed || reason.is_some() || has_bytes_after(tail, rel) {
            truncated_bytes += (tail.size() - rel) as u64;
            let path = tail.path().to_owned();
            tail.file_mut().truncate_to(rel).map_err(|e| Error::io("truncate segment", &path, e))?;
        }
        tail.file_mut().set_recovered(rel);
        sync_parent_dir(&dir.join("x")).map_err(|e| Error::io("sync directory", dir, e))?;

        let segments: Vec<Arc<Segment>> = segments.into_iter().map(Arc::new).collect();
        let active = segments[segments.len() - 1].clone();
        let min = segments[0].base();
        let last_timestamp = if pos > min { last_timestamp_before(&segments, scanned_from, pos) } else { 0 };
        let log = CommitLog {
            dir: dir.to_owned(),
            segment_size: config.segment_size,
            max_body: config.max_message_size,
            store_host: config.store_host,
            segments: RwLock::new(segments),
            writer: Mutex::new(Writer {
                active,
                pos,
                queue_offsets: Default::default(),
                last_timestamp,
                buf: Vec::new(),
            }),
            end: AtomicU64::new(pos),
            min: AtomicU64::new(min),
            warmed: AtomicU64::new(pos),
        };
        Ok(Recovered { log, scanned_from, truncated_bytes, truncation_reason: reason })
    }
}

enum Scan {
    /// The log ends at this offset; with a reason when bytes there were invalid rather than empty.
    Tail(u64, Option<String>),
    /// The segment ends with an end marker: continue with the next one.
    Next,
}

/// Walks the records of `seg` from `pos` and reports where the valid log stops.
fn scan_segment(seg: &Segment, mut pos: u64) -> Scan {
    if pos == seg.limit() {
        // The checkpoint is this segment's limit: a replicated end marker closed it and no record (hence no next
        // segment) came after.
        return Scan::Next;
    }
    loop {
        let rel = seg.rel(pos);
        let Some(head) = seg.file().bytes_unchecked_for_recovery(rel, 8) else {
            return Scan::Tail(pos, Some("segment ends without an end marker".into()));
        };
        let invalid = |why: String| Scan::Tail(pos, Some(why));
        match record::peek(head) {
            Ok(Frame::Empty) => return Scan::Tail(pos, None),
            Ok(Frame::End) => {
                let covered = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
                if covered != seg.size() - rel {
                    return invalid(format!("end marker covers {covered} bytes, {} remain", seg.size() - rel));
                }
                return Scan::Next;
            }
            Ok(Frame::Record(size)) => {
                // A record must leave room for the end marker, as the writer guarantees.
                let Some(bytes) = seg
                    .file()
                    .bytes_unchecked_for_recovery(rel, size)
                    .filter(|_| rel + size + record::END_MARKER_LEN <= seg.size())
                else {
                    return invalid(format!("record of {size} bytes overruns the segment"));
                };
                match Layout::parse(bytes, crate::record::Check::Full) {
                    Ok(l) if l.physical_offset == pos => pos += size as u64,
                    Ok(l) => return invalid(format!("record claims offset {}", l.physical_offset)),
                    Err(e) => return invalid(e.to_string()),
                }
            }
            Err(e) => return invalid(e.to_string()),
        }
    }
}

/// True when anything non-zero lies in the first page after `rel` (a sign of a torn write worth zeroing).
fn has_bytes_after(seg: &Segment, rel: usize) -> bool {
    let len = (seg.size() - rel).min(4096);
    seg.file().bytes_unchecked_for_recovery(rel, len).is_some_and(|b| b.iter().any(|&x| x != 0))
}

/// Store timestamp of the last record before `end`, found by walking from `from` (a record boundary).
fn last_timestamp_before(segments: &[Arc<Segment>], from: u64, end: u64) -> u64 {
    // The last record is at or after `from`; if nothing was scanned, the last record lies before it, and its
    // timestamp only matters for monotonicity, which the wall clock provides anyway.
    let mut last = 0;
    let mut pos = from;
    while pos < end {
        let Some(seg) = segments.iter().find(|s| s.base() <= pos && pos < s.limit()) else { break };
        let rel = seg.rel(pos);
        let Some(head) = seg.file().bytes(rel, record::HEADER_LEN) else { break };
        match record::peek(head) {
            Ok(Frame::Record(size)) => {
                last = record::store_timestamp(head).unwrap_or(last);
                pos += size as u64;
            }
            Ok(Frame::End) => pos = seg.limit(),
            _ => break,
        }
    }
    last
}

/// Lists the segment files of `dir`, sorted, and checks that they form one contiguous log.
fn list_segments(dir: &Path) -> Result<Vec<Segment>> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let name = entry.file_name();
        let path = entry.path();
        let Some(base) = name.to_str().and_then(parse_offset_name) else {
            return Err(Error::Corrupt {
                path,
                offset: 0,
                reason: "foreign file in the CommitLog directory (segment names are 20-digit offsets)".into(),
            });
        };
        if remove_if_empty(&path).map_err(|e| Error::io("inspect segment", &path, e))? {
            continue;
        }
        found.push((base, path));
    }
    found.sort();
    let mut segments: Vec<Segment> = Vec::with_capacity(found.len());
    for (base, path) in found {
        if let Some(prev) = segments.last()
            && prev.limit() != base
        {
            return Err(Error::Corrupt {
                path,
                offset: 0,
                reason: format!("segment starts at {base} but the previous one ends at {}", prev.limit()),
            });
        }
        segments.push(Segment::open(path, base)?);
    }
    Ok(segments)
}
