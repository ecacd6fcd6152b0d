//! The CommitLog record codec: pure functions over byte slices, no I/O.
//!
//! Layout (little-endian; drawn in `docs/storage-format.md`):
//!
//! ```text
//!   0  u32  total size of the record, this field included
//!   4  u32  magic (RECORD_MAGIC)
//!   8  u32  CRC-32C of bytes [12, total size)
//!  12  u64  physical offset: the record's own CommitLog offset
//!  20  u64  queue offset in its consume queue
//!  28  u64  store timestamp, ms since the epoch
//!  36  u64  born timestamp, ms since the epoch
//!  44  u64  prepared-transaction offset (commit/rollback records point at their half message)
//!  52  u32  queue id
//!  56  u32  flag (user)
//!  60  u32  sys flag
//!  64  u32  reconsume times
//!  68  18B  born host: IPv6 address (IPv4 mapped) + u16 port
//!  86  18B  store host: same encoding
//! 104  u16 len + topic      (UTF-8)
//!      u16 len + message id (UTF-8)
//!      u16 len + tags       (UTF-8)
//!      u16 len + keys       (UTF-8, space separated)
//!      u32 len + properties (repeated: u16 len + key, u16 len + value; UTF-8)
//!      u32 len + body
//! ```
//!
//! A segment whose free space cannot hold the next record ends with an 8-byte end marker
//! `[u32 remaining bytes][u32 END_MAGIC]`; readers skip to the next segment.
//!
//! Decoding never trusts a length: every field is bounds-checked against the record and the record against the
//! buffer, so truncated or garbage bytes produce an error, never a panic.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::Range;

use bytes::Bytes;
use comet_model::{CommitLogOffset, QueueId, QueueOffset};

/// Magic of a message record ("CMT1" read as a little-endian u32).
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"CMT1");
/// Magic of the end-of-segment marker.
pub const END_MAGIC: u32 = u32::from_le_bytes(*b"CEND");
/// Size of the end-of-segment marker; a segment always keeps this much room for it.
pub const END_MARKER_LEN: usize = 8;
/// Size of the fixed part of a record.
pub const HEADER_LEN: usize = 104;

const OFF_SIZE: usize = 0;
const OFF_MAGIC: usize = 4;
const OFF_CRC: usize = 8;
const CRC_FROM: usize = 12;
const OFF_PHYSICAL: usize = 12;
const OFF_QUEUE_OFFSET: usize = 20;
const OFF_STORE_TS: usize = 28;
const OFF_BORN_TS: usize = 36;
const OFF_PREPARED: usize = 44;
const OFF_QUEUE_ID: usize = 52;
const OFF_FLAG: usize = 56;
const OFF_SYS_FLAG: usize = 60;
const OFF_RECONSUME: usize = 64;
const OFF_BORN_HOST: usize = 68;
const OFF_STORE_HOST: usize = 86;

/// Longest message id in bytes.
pub const MAX_MSG_ID_LEN: usize = 128;
/// Longest tags string in bytes.
pub const MAX_TAGS_LEN: usize = 1024;
/// Longest keys string in bytes.
pub const MAX_KEYS_LEN: usize = 4096;
/// Most keys one message may carry: each is an index entry, and one message's entries must fit in one index
/// file (`index-entries` is at least 64).
pub const MAX_KEYS: usize = 32;
/// Largest encoded property block in bytes (RocketMQ's limit is 32 767).
pub const MAX_PROPERTIES_LEN: usize = 32 * 1024;
/// Largest possible record size minus the body.
pub const MAX_OVERHEAD: usize = HEADER_LEN
    + 2
    + comet_model_max_topic()
    + 2
    + MAX_MSG_ID_LEN
    + 2
    + MAX_TAGS_LEN
    + 2
    + MAX_KEYS_LEN
    + 4
    + MAX_PROPERTIES_LEN
    + 4;

const fn comet_model_max_topic() -> usize {
    255
}

/// A message to append: what the broker knows before the store assigns offsets and timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    /// Topic; must pass `comet_model::validate_topic_name`.
    pub topic: String,
    /// Queue within the topic.
    pub queue_id: QueueId,
    /// Unique message id (assigned by the producer or the broker); indexed for lookup by id.
    pub msg_id: String,
    /// Tags string used for filtering; its Java hash goes into the consume queue.
    pub tags: String,
    /// Space-separated business keys; each is indexed for lookup by key.
    pub keys: String,
    /// User and system properties, in order.
    pub properties: Vec<(String, String)>,
    /// Payload.
    pub body: Bytes,
    /// User flag, stored verbatim.
    pub flag: u32,
    /// System flag bits (transaction state, compression, ...), stored verbatim.
    pub sys_flag: u32,
    /// Producer-side creation time, ms since the epoch.
    pub born_timestamp: u64,
    /// Producer address.
    pub born_host: SocketAddr,
    /// How many times this message has been redelivered.
    pub reconsume_times: u32,
    /// For commit/rollback records: the offset of the half message.
    pub prepared_transaction_offset: u64,
}

impl NewMessage {
    /// A message with only the required fields set; the rest are zero/empty.
    pub fn new(topic: impl Into<String>, queue_id: QueueId, body: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            queue_id,
            msg_id: String::new(),
            tags: String::new(),
            keys: String::new(),
            properties: Vec::new(),
            body: body.into(),
            flag: 0,
            sys_flag: 0,
            born_timestamp: 0,
            born_host: SocketAddr::from(([0, 0, 0, 0], 0)),
            reconsume_times: 0,
            prepared_transaction_offset: 0,
        }
    }
}

/// Why bytes could not be decoded as a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the record needs.
    Truncated,
    /// The magic is neither a record nor an end marker.
    BadMagic(u32),
    /// The size field is impossible.
    BadSize(u32),
    /// The CRC does not match the content.
    BadCrc {
        /// Stored CRC.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// A length field points outside the record, or a string is not UTF-8.
    BadField(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("record truncated"),
            DecodeError::BadMagic(m) => write!(f, "bad magic {m:#010x}"),
            DecodeError::BadSize(s) => write!(f, "impossible record size {s}"),
            DecodeError::BadCrc { stored, computed } => {
                write!(f, "CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")
            }
            DecodeError::BadField(name) => write!(f, "field {name} is malformed"),
        }
    }
}

/// What starts at a position of the CommitLog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A record of this total size.
    Record(usize),
    /// The end-of-segment marker: continue at the next segment.
    End,
    /// Zero bytes: nothing was ever written here.
    Empty,
}

/// Reads the size and magic at the start of `buf` without validating the rest.
pub fn peek(buf: &[u8]) -> Result<Frame, DecodeError> {
    let size = read_u32(buf, OFF_SIZE).ok_or(DecodeError::Truncated)?;
    let magic = read_u32(buf, OFF_MAGIC).ok_or(DecodeError::Truncated)?;
    match magic {
        RECORD_MAGIC => {
            let s = size as usize;
            if s < HEADER_LEN + 16 { Err(DecodeError::BadSize(size)) } else { Ok(Frame::Record(s)) }
        }
        END_MAGIC => Ok(Frame::End),
        0 if size == 0 => Ok(Frame::Empty),
        other => Err(DecodeError::BadMagic(other)),
    }
}

/// Checks a message before it is encoded and returns its encoded size.
pub fn encoded_len(msg: &NewMessage, max_body: u32) -> Result<usize, crate::Error> {
    let invalid = |reason: String| Err(crate::Error::InvalidMessage { reason });
    if let Err(e) = comet_model::validate_topic_name(&msg.topic) {
        return invalid(e.to_string());
    }
    if msg.body.len() > max_body as usize {
        return Err(crate::Error::MessageTooLarge { size: msg.body.len(), max: max_body });
    }
    if msg.msg_id.len() > MAX_MSG_ID_LEN {
        return invalid(format!("message id is {} bytes; the limit is {MAX_MSG_ID_LEN}", msg.msg_id.len()));
    }
    if msg.tags.len() > MAX_TAGS_LEN {
        return invalid(format!("tags are {} bytes; the limit is {MAX_TAGS_LEN}", msg.tags.len()));
    }
    if msg.keys.len() > MAX_KEYS_LEN {
        return invalid(format!("keys are {} bytes; the limit is {MAX_KEYS_LEN}", msg.keys.len()));
    }
    let key_count = msg.keys.split(' ').filter(|k| !k.is_empty()).count();
    if key_count > MAX_KEYS {
        return invalid(format!("{key_count} keys; the limit is {MAX_KEYS}"));
    }
    let mut props = 0usize;
    for (k, v) in &msg.properties {
        if k.is_empty() || k.len() > usize::from(u16::MAX) || v.len() > usize::from(u16::MAX) {
            return invalid(format!("property {k:?} has an empty or oversized key or value"));
        }
        props += 4 + k.len() + v.len();
    }
    if props > MAX_PROPERTIES_LEN {
        return invalid(format!("properties take {props} bytes; the limit is {MAX_PROPERTIES_LEN}"));
    }
    Ok(HEADER_LEN
        + 2
        + msg.topic.len()
        + 2
        + msg.msg_id.len()
        + 2
        + msg.tags.len()
        + 2
        + msg.keys.len()
        + 4
        + props
        + 4
        + msg.body.len())
}

/// What the store decides for a record at append time.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    /// Where the record starts in the CommitLog.
    pub physical_offset: CommitLogOffset,
    /// Its position in its consume queue.
    pub queue_offset: QueueOffset,
    /// Store time, ms since the epoch.
    pub store_timestamp: u64,
    /// The broker's address.
    pub store_host: SocketAddr,
}

/// Encodes `msg` into `buf`, which must be exactly `encoded_len(msg)` bytes (validated beforehand).
// Hot path: no allocation, no locking; runs under the CommitLog writer lock.
pub fn encode(buf: &mut [u8], msg: &NewMessage, at: &Placement) {
    let total = buf.len();
    let head = total - msg.body.len();
    let (front, body) = buf.split_at_mut(head);
    encode_head(front, total, msg, at);
    body.copy_from_slice(&msg.body);
}

/// Encodes everything of the record but the body bytes into `buf` (`encoded_len(msg) - body.len()` bytes),
/// CRC included: the body is read for the CRC, not copied. The caller writes the body right after, from
/// `msg.body`, so a vectored write can take it straight from the producer's buffer.
// Hot path: no allocation, no locking; runs under the CommitLog writer lock.
pub fn encode_head(buf: &mut [u8], total: usize, msg: &NewMessage, at: &Placement) {
    let mut w = Writer { buf, pos: 0 };
    w.u32(total as u32);
    w.u32(RECORD_MAGIC);
    w.u32(0); // CRC, filled below
    w.u64(at.physical_offset.0);
    w.u64(at.queue_offset.0);
    w.u64(at.store_timestamp);
    w.u64(msg.born_timestamp);
    w.u64(msg.prepared_transaction_offset);
    w.u32(msg.queue_id);
    w.u32(msg.flag);
    w.u32(msg.sys_flag);
    w.u32(msg.reconsume_times);
    w.host(msg.born_host);
    w.host(at.store_host);
    w.str16(&msg.topic);
    w.str16(&msg.msg_id);
    w.str16(&msg.tags);
    w.str16(&msg.keys);
    let props: usize = msg.properties.iter().map(|(k, v)| 4 + k.len() + v.len()).sum();
    w.u32(props as u32);
    for (k, v) in &msg.properties {
        w.str16(k);
        w.str16(v);
    }
    w.u32(msg.body.len() as u32);
    debug_assert_eq!(w.pos + msg.body.len(), total);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&w.buf[CRC_FROM..w.pos]), &msg.body);
    w.buf[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Writes the end-of-segment marker into `buf` (at least 8 bytes), covering `remaining` bytes.
pub fn encode_end_marker(buf: &mut [u8], remaining: usize) {
    buf[0..4].copy_from_slice(&(remaining as u32).to_le_bytes());
    buf[4..8].copy_from_slice(&END_MAGIC.to_le_bytes());
}

struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.buf[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn str16(&mut self, s: &str) {
        self.bytes(&(s.len() as u16).to_le_bytes());
        self.bytes(s.as_bytes());
    }
    fn host(&mut self, addr: SocketAddr) {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        self.bytes(&ip.octets());
        self.bytes(&addr.port().to_le_bytes());
    }
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}
fn read_host(b: &[u8], at: usize) -> Option<SocketAddr> {
    let octets: [u8; 16] = b.get(at..at + 16)?.try_into().ok()?;
    let port = read_u16(b, at + 16)?;
    let ip = Ipv6Addr::from(octets);
    Some(SocketAddr::new(ip.to_canonical(), port))
}

/// The decoded shape of one record: numbers, and where each variable field lies inside the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    pub size: usize,
    pub physical_offset: u64,
    pub queue_offset: u64,
    pub store_timestamp: u64,
    pub born_timestamp: u64,
    pub prepared_transaction_offset: u64,
    pub queue_id: u32,
    pub flag: u32,
    pub sys_flag: u32,
    pub reconsume_times: u32,
    pub topic: Range<usize>,
    pub msg_id: Range<usize>,
    pub tags: Range<usize>,
    pub keys: Range<usize>,
    pub properties: Range<usize>,
    pub body: Range<usize>,
}

/// How much [`Layout::parse`] checks beyond the lengths (which it always checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// The checksum, and that every text field is UTF-8: for bytes from a disk or a peer.
    Full,
    /// Lengths only: for a walker over records this process has already checked or written itself (the
    /// dispatcher), which reads the few text fields it needs through `str::from_utf8` anyway.
    Lengths,
}

impl Layout {
    /// Decodes the record at the start of `buf`, checking every length, and with [`Check::Full`] its checksum
    /// and text fields.
    pub(crate) fn parse(buf: &[u8], check: Check) -> Result<Layout, DecodeError> {
        let size = match peek(buf)? {
            Frame::Record(size) => size,
            Frame::End | Frame::Empty => return Err(DecodeError::BadMagic(read_u32(buf, OFF_MAGIC).unwrap_or(0))),
        };
        let rec = buf.get(..size).ok_or(DecodeError::Truncated)?;
        if check == Check::Full {
            let stored = read_u32(rec, OFF_CRC).ok_or(DecodeError::Truncated)?;
            let computed = crc32c::crc32c(&rec[CRC_FROM..]);
            if stored != computed {
                return Err(DecodeError::BadCrc { stored, computed });
            }
        }
        let field = |name| DecodeError::BadField(name);
        let mut pos = HEADER_LEN;
        let mut take = |len_bytes: usize, name: &'static str| -> Result<Range<usize>, DecodeError> {
            let len = if len_bytes == 2 {
                usize::from(read_u16(rec, pos).ok_or(field(name))?)
            } else {
                read_u32(rec, pos).ok_or(field(name))? as usize
            };
            let start = pos + len_bytes;
            let end = start.checked_add(len).filter(|&e| e <= rec.len()).ok_or(field(name))?;
            pos = end;
            Ok(start..end)
        };
        let topic = take(2, "topic")?;
        let msg_id = take(2, "message id")?;
        let tags = take(2, "tags")?;
        let keys = take(2, "keys")?;
        let properties = take(4, "properties")?;
        let body = take(4, "body")?;
        if pos != size {
            return Err(field("record size"));
        }
        if check == Check::Full {
            for (range, name) in [(&topic, "topic"), (&msg_id, "message id"), (&tags, "tags"), (&keys, "keys")] {
                if std::str::from_utf8(&rec[range.clone()]).is_err() {
                    return Err(field(name));
                }
            }
            validate_properties(&rec[properties.clone()])?;
        }
        let num = |at| read_u64(rec, at).ok_or(DecodeError::Truncated);
        let word = |at| read_u32(rec, at).ok_or(DecodeError::Truncated);
        Ok(Layout {
            size,
            physical_offset: num(OFF_PHYSICAL)?,
            queue_offset: num(OFF_QUEUE_OFFSET)?,
            store_timestamp: num(OFF_STORE_TS)?,
            born_timestamp: num(OFF_BORN_TS)?,
            prepared_transaction_offset: num(OFF_PREPARED)?,
            queue_id: word(OFF_QUEUE_ID)?,
            flag: word(OFF_FLAG)?,
            sys_flag: word(OFF_SYS_FLAG)?,
            reconsume_times: word(OFF_RECONSUME)?,
            topic,
            msg_id,
            tags,
            keys,
            properties,
            body,
        })
    }
}

fn validate_properties(mut b: &[u8]) -> Result<(), DecodeError> {
    while !b.is_empty() {
        for name in ["property key", "property value"] {
            let len = usize::from(read_u16(b, 0).ok_or(DecodeError::BadField(name))?);
            let s = b.get(2..2 + len).ok_or(DecodeError::BadField(name))?;
            std::str::from_utf8(s).map_err(|_| DecodeError::BadField(name))?;
            b = &b[2 + len..];
        }
    }
    Ok(())
}

/// Reads just the store timestamp of a record (for time-based lookups), without validating the rest.
pub(crate) fn store_timestamp(buf: &[u8]) -> Option<u64> {
    read_u64(buf, OFF_STORE_TS)
}

/// Reads just the physical-offset field of a record (a cheap "does a record start here" check for walkers).
pub(crate) fn physical_offset(buf: &[u8]) -> Option<u64> {
    read_u64(buf, OFF_PHYSICAL)
}

/// Reads the `remaining` field of an end marker (the bytes it covers, itself included).
pub(crate) fn end_marker_covers(buf: &[u8]) -> Option<u32> {
    read_u32(buf, OFF_SIZE)
}

/// A stored message: the record bytes (a zero-copy view into the CommitLog map) and its decoded fields.
#[derive(Clone, Debug)]
pub struct StoredMessage {
    record: Bytes,
    layout: Layout,
}

impl StoredMessage {
    /// Decodes a whole record held in `record` (exactly one record, CRC verified).
    pub fn decode(record: Bytes) -> Result<Self, DecodeError> {
        let layout = Layout::parse(&record, Check::Full)?;
        if layout.size != record.len() {
            return Err(DecodeError::BadField("record size"));
        }
        Ok(Self { record, layout })
    }

    /// A host field, read on demand (`peek` guarantees the whole header; the fallback is unreachable).
    fn host(&self, at: usize) -> SocketAddr {
        read_host(&self.record, at).unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    fn str(&self, r: &Range<usize>) -> &str {
        // Validated as UTF-8 in `Layout::parse`; the fallback is unreachable but keeps this panic-free.
        std::str::from_utf8(&self.record[r.clone()]).unwrap_or_default()
    }

    /// The raw record, as stored; what a pull response or a replica receives.
    pub fn record(&self) -> &Bytes {
        &self.record
    }
    /// Topic.
    pub fn topic(&self) -> &str {
        self.str(&self.layout.topic)
    }
    /// Queue id.
    pub fn queue_id(&self) -> QueueId {
        self.layout.queue_id
    }
    /// Message id.
    pub fn msg_id(&self) -> &str {
        self.str(&self.layout.msg_id)
    }
    /// Tags.
    pub fn tags(&self) -> &str {
        self.str(&self.layout.tags)
    }
    /// Topic, message id, tags and keys as their stored bytes (UTF-8 checked when the record was decoded): for
    /// encoders that copy them to the wire as they are rather than check them again per message.
    pub fn text_bytes(&self) -> TextBytes<'_> {
        let field = |r: &Range<usize>| self.record.get(r.clone()).unwrap_or_default();
        TextBytes {
            topic: field(&self.layout.topic),
            msg_id: field(&self.layout.msg_id),
            tags: field(&self.layout.tags),
            keys: field(&self.layout.keys),
        }
    }
    /// Properties as their stored bytes, in stored order (see [`text_bytes`](Self::text_bytes)).
    pub fn raw_properties(&self) -> RawProperties<'_> {
        RawProperties { rest: &self.record[self.layout.properties.clone()] }
    }
    /// Keys, space separated.
    pub fn keys(&self) -> &str {
        self.str(&self.layout.keys)
    }
    /// Each key.
    pub fn key_list(&self) -> impl Iterator<Item = &str> {
        self.keys().split(' ').filter(|k| !k.is_empty())
    }
    /// Properties in stored order.
    pub fn properties(&self) -> Properties<'_> {
        Properties { raw: self.raw_properties() }
    }
    /// The value of one property.
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
    /// Payload, sharing the record's memory.
    pub fn body(&self) -> Bytes {
        self.record.slice(self.layout.body.clone())
    }
    /// Payload length, without touching the payload (metrics count bytes delivered).
    pub fn body_len(&self) -> usize {
        self.layout.body.len()
    }
    /// Where the record starts in the CommitLog.
    pub fn physical_offset(&self) -> CommitLogOffset {
        CommitLogOffset(self.layout.physical_offset)
    }
    /// Where the next record starts.
    pub fn next_physical_offset(&self) -> CommitLogOffset {
        CommitLogOffset(self.layout.physical_offset + self.layout.size as u64)
    }
    /// Position in its consume queue.
    pub fn queue_offset(&self) -> QueueOffset {
        QueueOffset(self.layout.queue_offset)
    }
    /// Store time, ms since the epoch.
    pub fn store_timestamp(&self) -> u64 {
        self.layout.store_timestamp
    }
    /// Producer time, ms since the epoch.
    pub fn born_timestamp(&self) -> u64 {
        self.layout.born_timestamp
    }
    /// Producer address.
    pub fn born_host(&self) -> SocketAddr {
        self.host(OFF_BORN_HOST)
    }
    /// Broker address.
    pub fn store_host(&self) -> SocketAddr {
        self.host(OFF_STORE_HOST)
    }
    /// User flag.
    pub fn flag(&self) -> u32 {
        self.layout.flag
    }
    /// System flag.
    pub fn sys_flag(&self) -> u32 {
        self.layout.sys_flag
    }
    /// Redelivery count.
    pub fn reconsume_times(&self) -> u32 {
        self.layout.reconsume_times
    }
    /// Half-message offset for transaction end records.
    pub fn prepared_transaction_offset(&self) -> u64 {
        self.layout.prepared_transaction_offset
    }
    /// Encoded size of the whole record.
    pub fn size(&self) -> usize {
        self.layout.size
    }
}

/// A record's text fields as stored bytes ([`StoredMessage::text_bytes`]).
#[derive(Clone, Copy, Debug)]
pub struct TextBytes<'a> {
    /// Topic.
    pub topic: &'a [u8],
    /// Message id.
    pub msg_id: &'a [u8],
    /// Tags.
    pub tags: &'a [u8],
    /// Keys, space separated.
    pub keys: &'a [u8],
}

/// Iterator over a record's properties.
pub struct Properties<'a> {
    raw: RawProperties<'a>,
}

impl<'a> Iterator for Properties<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let (k, v) = self.raw.next()?;
        Some((std::str::from_utf8(k).ok()?, std::str::from_utf8(v).ok()?))
    }
}

/// Iterator over a record's properties as stored bytes ([`StoredMessage::raw_properties`]).
pub struct RawProperties<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for RawProperties<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let mut part = || -> Option<&'a [u8]> {
            let len = usize::from(read_u16(self.rest, 0)?);
            let s = self.rest.get(2..2 + len)?;
            self.rest = &self.rest[2 + len..];
            Some(s)
        };
        let k = part()?;
        let v = part()?;
        Some((k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn placement() -> Placement {
        Placement {
            physical_offset: CommitLogOffset(4096),
            queue_offset: QueueOffset(7),
            store_timestamp: 1_700_000_000_000,
            store_host: "10.0.0.1:10911".parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
        }
    }

    fn encode_vec(msg: &NewMessage) -> Vec<u8> {
        let len = encoded_len(msg, u32::MAX).unwrap_or(0);
        let mut buf = vec![0u8; len];
        encode(&mut buf, msg, &placement());
        buf
    }

    fn arb_message() -> impl Strategy<Value = NewMessage> {
        (
            "[a-zA-Z0-9_%|-]{1,40}",
            any::<u32>(),
            "[a-f0-9]{0,32}",
            ".{0,20}",
            "[a-z]{0,8}( [a-z]{1,8}){0,3}",
            proptest::collection::vec(("[a-zA-Z_]{1,10}", ".{0,20}"), 0..5),
            proptest::collection::vec(any::<u8>(), 0..2048),
            (any::<u32>(), any::<u32>(), any::<u64>(), any::<u32>(), any::<u64>()),
            (any::<[u8; 16]>(), any::<u16>(), any::<bool>()),
        )
            .prop_map(|(topic, queue_id, msg_id, tags, keys, properties, body, nums, host)| {
                let (flag, sys_flag, born_timestamp, reconsume_times, prepared) = nums;
                let (octets, port, v4) = host;
                let ip: IpAddr =
                    if v4 { IpAddr::from([octets[0], octets[1], octets[2], octets[3]]) } else { IpAddr::from(octets) };
                NewMessage {
                    topic,
                    queue_id,
                    msg_id,
                    tags,
                    keys,
                    properties,
                    body: Bytes::from(body),
                    flag,
                    sys_flag,
                    born_timestamp,
                    born_host: SocketAddr::new(ip.to_canonical(), port),
                    reconsume_times,
                    prepared_transaction_offset: prepared,
                }
            })
    }

    proptest! {
        #[test]
        fn decode_of_encode_is_identity(msg in arb_message()) {
            let buf = encode_vec(&msg);
            let m = StoredMessage::decode(Bytes::from(buf)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(m.topic(), msg.topic.as_str());
            prop_assert_eq!(m.queue_id(), msg.queue_id);
            prop_assert_eq!(m.msg_id(), msg.msg_id.as_str());
            prop_assert_eq!(m.tags(), msg.tags.as_str());
            prop_assert_eq!(m.keys(), msg.keys.as_str());
            let props: Vec<(String, String)> =
                m.properties().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
            prop_assert_eq!(props, msg.properties.clone());
            prop_assert_eq!(m.body(), msg.body.clone());
            prop_assert_eq!(m.flag(), msg.flag);
            prop_assert_eq!(m.sys_flag(), msg.sys_flag);
            prop_assert_eq!(m.born_timestamp(), msg.born_timestamp);
            prop_assert_eq!(m.born_host(), msg.born_host);
            prop_assert_eq!(m.reconsume_times(), msg.reconsume_times);
            prop_assert_eq!(m.prepared_transaction_offset(), msg.prepared_transaction_offset);
            prop_assert_eq!(m.physical_offset(), placement().physical_offset);
            prop_assert_eq!(m.queue_offset(), placement().queue_offset);
            prop_assert_eq!(m.store_timestamp(), placement().store_timestamp);
            prop_assert_eq!(m.store_host(), placement().store_host);
        }

        #[test]
        fn every_truncation_is_an_error(msg in arb_message(), cut in any::<proptest::sample::Index>()) {
            let buf = encode_vec(&msg);
            let n = cut.index(buf.len());
            prop_assert!(StoredMessage::decode(Bytes::copy_from_slice(&buf[..n])).is_err());
            prop_assert!(Layout::parse(&buf[..n], Check::Full).is_err());
            prop_assert!(Layout::parse(&buf[..n], Check::Lengths).is_err());
        }

        #[test]
        fn any_single_bit_flip_is_detected(msg in arb_message(), bit in any::<proptest::sample::Index>()) {
            let mut buf = encode_vec(&msg);
            let b = bit.index(buf.len() * 8);
            buf[b / 8] ^= 1 << (b % 8);
            prop_assert!(StoredMessage::decode(Bytes::from(buf)).is_err());
        }

        #[test]
        fn garbage_never_panics(garbage in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = peek(&garbage);
            let _ = Layout::parse(&garbage, Check::Full);
            let _ = Layout::parse(&garbage, Check::Lengths);
            let _ = StoredMessage::decode(Bytes::from(garbage));
        }

        #[test]
        fn garbage_with_a_valid_prefix_never_panics(
            garbage in proptest::collection::vec(any::<u8>(), 0..600), size in 0u32..700,
        ) {
            let mut buf = Vec::new();
            buf.extend_from_slice(&size.to_le_bytes());
            buf.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
            buf.extend_from_slice(&garbage);
            let _ = Layout::parse(&buf, Check::Full);
            let _ = Layout::parse(&buf, Check::Lengths);
            let _ = StoredMessage::decode(Bytes::from(buf));
        }
    }

    #[test]
    fn rejects_invalid_messages_before_writing() {
        let mut m = NewMessage::new("bad/topic", 0, "x");
        assert!(matches!(encoded_len(&m, 100), Err(crate::Error::InvalidMessage { .. })));
        m.topic = "ok".into();
        m.body = Bytes::from(vec![0u8; 101]);
        assert!(matches!(encoded_len(&m, 100), Err(crate::Error::MessageTooLarge { size: 101, max: 100 })));
    }

    #[test]
    fn end_marker_and_zeros_are_recognised() {
        let mut buf = [0u8; 8];
        assert_eq!(peek(&buf), Ok(Frame::Empty));
        encode_end_marker(&mut buf, 100);
        assert_eq!(peek(&buf), Ok(Frame::End));
    }
}
