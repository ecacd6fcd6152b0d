//! The read path: messages of a queue from a queue offset, and offsets by time.

use comet_model::{CommitLogOffset, QueueId, QueueOffset};

use crate::error::{Error, Result};
use crate::store::{GetMessages, GetStatus, Inner, MessageFilter};

/// Most consume-queue entries examined by one read, so a selective filter cannot make a read unbounded.
const MAX_SCAN: usize = 16_000;
/// Most messages a read allocates room for up front.
const PRESIZE_MAX: usize = 1024;

pub(crate) fn get_messages(
    inner: &Inner,
    topic: &str,
    queue_id: QueueId,
    from: QueueOffset,
    max_count: usize,
    max_bytes: usize,
    filter: Option<&dyn MessageFilter>,
) -> Result<GetMessages> {
    let Some(q) = inner.queues.get(topic, queue_id) else {
        return Ok(GetMessages {
            status: GetStatus::NoSuchQueue,
            messages: Vec::new(),
            next_offset: QueueOffset(0),
            min_offset: QueueOffset(0),
            max_offset: QueueOffset(0),
        });
    };
    let (min, max) = (q.min_offset(), q.max_offset());
    let answer = |status, messages, next_offset| GetMessages {
        status,
        messages,
        next_offset,
        min_offset: q.min_offset(),
        max_offset: q.max_offset(),
    };
    if from < min {
        return Ok(answer(GetStatus::OffsetMoved, Vec::new(), min));
    }
    if from > max {
        return Ok(answer(GetStatus::OffsetOverflow, Vec::new(), max));
    }
    if from == max {
        return Ok(answer(GetStatus::NoNewMessage, Vec::new(), max));
    }
    // Sized for the common answer, a full one, within reason (a filtered read may find far fewer).
    let available = usize::try_from(max.0.saturating_sub(from.0)).unwrap_or(usize::MAX);
    let mut messages = Vec::with_capacity(max_count.clamp(1, PRESIZE_MAX).min(available));
    let mut bytes = 0usize;
    let mut next = from;
    let mut scanned = 0usize;
    let mut failure = None;
    let mut moved = false;
    let mut gone = false;
    q.scan(from, |offset, entry| {
        if messages.len() >= max_count.max(1) || scanned >= MAX_SCAN {
            return false;
        }
        if !messages.is_empty() && bytes + entry.size as usize > max_bytes {
            return false;
        }
        scanned += 1;
        next = offset.next();
        if filter.is_some_and(|f| !f.matches_tag_hash(entry.tag_hash)) {
            return true;
        }
        match inner.log.read(CommitLogOffset(entry.offset)) {
            // The record must be the one the entry stands for: an entry read while a truncation cuts the queue
            // may point anywhere.
            Ok(m)
                if m.queue_offset() == offset
                    && m.queue_id() == queue_id
                    && m.text_bytes().topic == topic.as_bytes() =>
            {
                if filter.is_none_or(|f| f.matches(&m)) {
                    bytes += m.size();
                    messages.push(m);
                }
                true
            }
            Ok(_) | Err(Error::NoRecord { .. }) => {
                // Cut by a concurrent truncation (replication): the queue ends before this entry.
                gone = true;
                next = offset;
                false
            }
            Err(Error::OffsetMoved { .. }) => {
                moved = true;
                false
            }
            Err(e) => {
                failure = Some(e);
                false
            }
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    if moved && messages.is_empty() {
        // Retention deleted the records but the queue has not been trimmed yet.
        q.trim(inner.log.min_offset())?;
        let min = q.min_offset();
        return Ok(answer(GetStatus::OffsetMoved, Vec::new(), min));
    }
    if gone && messages.is_empty() {
        let max = q.max_offset();
        let status = if from > max { GetStatus::OffsetOverflow } else { GetStatus::NoNewMessage };
        return Ok(answer(status, Vec::new(), from.min(max)));
    }
    let status = if !messages.is_empty() {
        GetStatus::Found
    } else if next > from {
        GetStatus::NoMatchedMessage
    } else {
        GetStatus::NoNewMessage
    };
    Ok(answer(status, messages, next))
}

pub(crate) fn offset_by_time(inner: &Inner, topic: &str, queue_id: QueueId, ts: u64) -> Option<QueueOffset> {
    let q = inner.queues.get(topic, queue_id)?;
    let (mut lo, mut hi) = (q.min_offset().0, q.max_offset().0);
    // Store timestamps never decrease along the log, hence along a queue: bisect.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let before = q
            .get(QueueOffset(mid))
            .and_then(|e| inner.log.store_timestamp_at(e.offset))
            .is_some_and(|stored| stored < ts);
        if before { lo = mid + 1 } else { hi = mid }
    }
    Some(QueueOffset(lo))
}
