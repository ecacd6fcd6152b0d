//! The receive journal's records: what must survive a crash between two snapshots of the windows. One record
//! (one message of the journal system topic, replicated like any other) per request: the offsets a group
//! finished (acknowledged or dead-lettered) and the start of every window opened without a committed offset.

use bytes::{BufMut, Bytes, BytesMut};

/// One change of one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The offset is done (acknowledged or dead-lettered).
    Done {
        /// Queue id.
        queue_id: u32,
        /// Queue offset.
        offset: u64,
    },
    /// The window was opened at this base.
    Opened {
        /// Queue id.
        queue_id: u32,
        /// Its first offset.
        base: u64,
    },
}

/// The changes of one request to one (group, topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// The changes, in order.
    pub changes: Vec<Change>,
}

const VERSION: u8 = 1;
const DONE: u8 = 1;
const OPENED: u8 = 2;

impl Record {
    /// The record as a message body.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(8 + self.group.len() + self.topic.len() + 13 * self.changes.len());
        b.put_u8(VERSION);
        for s in [&self.group, &self.topic] {
            b.put_u16(u16::try_from(s.len()).unwrap_or(u16::MAX));
            b.put_slice(&s.as_bytes()[..s.len().min(usize::from(u16::MAX))]);
        }
        b.put_u32(u32::try_from(self.changes.len()).unwrap_or(u32::MAX));
        for c in &self.changes {
            let (kind, queue_id, value) = match *c {
                Change::Done { queue_id, offset } => (DONE, queue_id, offset),
                Change::Opened { queue_id, base } => (OPENED, queue_id, base),
            };
            b.put_u8(kind);
            b.put_u32(queue_id);
            b.put_u64(value);
        }
        b.freeze()
    }

    /// Parses a body written by [`Record::encode`]; `None` for anything else (never panics).
    pub fn decode(body: &[u8]) -> Option<Self> {
        let mut r = Reader(body);
        if r.u8()? != VERSION {
            return None;
        }
        let group = r.string()?;
        let topic = r.string()?;
        let count = r.u32()?;
        let mut changes = Vec::with_capacity(usize::try_from(count).ok()?.min(body.len() / 13));
        for _ in 0..count {
            let kind = r.u8()?;
            let queue_id = r.u32()?;
            let value = r.u64()?;
            changes.push(match kind {
                DONE => Change::Done { queue_id, offset: value },
                OPENED => Change::Opened { queue_id, base: value },
                _ => return None,
            });
        }
        r.0.is_empty().then_some(Record { group, topic, changes })
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().ok()?);
        String::from_utf8(self.take(usize::from(len))?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let r = Record {
            group: "g".into(),
            topic: "orders".into(),
            changes: vec![Change::Opened { queue_id: 1, base: 5 }, Change::Done { queue_id: 1, offset: 7 }],
        };
        let body = r.encode();
        assert_eq!(Record::decode(&body), Some(r));
        for cut in 0..body.len() {
            assert_eq!(Record::decode(&body[..cut]), None, "truncated at {cut}");
        }
        assert_eq!(Record::decode(b"\x02garbage"), None);
        let mut extra = body.to_vec();
        extra.push(0);
        assert_eq!(Record::decode(&extra), None);
    }
}
