//! A pull's answer encoded straight from the stored records, for the remoting data path: the bytes a
//! `comet.v1.PullMessageResponse` decodes from, written without building one. Building it cost the broker a
//! string allocation per text field, a map per message, a second UTF-8 check of every text field and a copy of
//! every body into the encode buffer (together about a third of its CPU when consuming a backlog). Here text
//! fields are copied as stored (checked once, when the record was decoded) and bodies of
//! [`BODY_BY_REFERENCE`] bytes or more are not copied at all: they reach the socket from the CommitLog's mapping
//! as parts of a gathered body (`Command::body_tail`).
//!
//! Fields are written in tag order except `body`, which ends each message so that it can be a part of its own;
//! protobuf decoders accept fields in any order. Defaults are omitted as proto3 does. The gRPC path still
//! encodes `convert::messages_to_proto`; a test holds the two to the same decoded answer.

use bytes::{BufMut, Bytes, BytesMut};
use comet_store::StoredMessage;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use crate::edge::convert::HostText;
use crate::handler::pull::Pulled;

/// Bodies at least this long are written from the CommitLog's memory; shorter ones are cheaper to copy than to
/// pass as a `writev` slice of their own.
pub const BODY_BY_REFERENCE: usize = 512;

// Field numbers of comet.v1.PullMessageResponse and comet.v1.StoredMessage (proto/comet/v1/broker.proto).
const RESPONSE_STATUS: u32 = 1;
const RESPONSE_MESSAGES: u32 = 2;
const RESPONSE_NEXT_OFFSET: u32 = 3;
const RESPONSE_MIN_OFFSET: u32 = 4;
const RESPONSE_MAX_OFFSET: u32 = 5;
const TOPIC: u32 = 1;
const QUEUE_ID: u32 = 2;
const QUEUE_OFFSET: u32 = 3;
const COMMIT_LOG_OFFSET: u32 = 4;
const MESSAGE_ID: u32 = 5;
const TAGS: u32 = 6;
const KEYS: u32 = 7;
const PROPERTIES: u32 = 8;
const BODY: u32 = 9;
const FLAG: u32 = 10;
const BORN_TIMESTAMP: u32 = 11;
const STORE_TIMESTAMP: u32 = 12;
const BORN_HOST: u32 = 13;
const STORE_HOST: u32 = 14;
const RECONSUME_TIMES: u32 = 15;
// Field numbers of a map entry.
const MAP_KEY: u32 = 1;
const MAP_VALUE: u32 = 2;

/// `pulled` as an encoded `comet.v1.PullMessageResponse`, in parts to be written in order (a gathered body).
// Hot path (every pull on the data path): one buffer for everything but the referenced bodies; no allocation
// per message beyond the parts list.
pub fn pull_response(pulled: &Pulled) -> Vec<Bytes> {
    // Everything but the referenced bodies goes into `buf`: the record's size less those, plus the hosts as text.
    let inline = |m: &StoredMessage| {
        if m.body_len() >= BODY_BY_REFERENCE { m.size().saturating_sub(m.body_len()) } else { m.size() }
    };
    let estimate: usize = pulled.messages.iter().map(|m| inline(m) + 64).sum::<usize>() + 32;
    let mut buf = BytesMut::with_capacity(estimate);
    let mut parts = Vec::new();
    varint_field(RESPONSE_STATUS, pulled.status as i32 as u64, &mut buf);
    varint_field(RESPONSE_NEXT_OFFSET, pulled.next_offset, &mut buf);
    varint_field(RESPONSE_MIN_OFFSET, pulled.min_offset, &mut buf);
    varint_field(RESPONSE_MAX_OFFSET, pulled.max_offset, &mut buf);
    let (mut born_hosts, mut store_hosts) = (HostText::default(), HostText::default());
    for m in &pulled.messages {
        let born = born_hosts.get(m.born_host());
        let store = store_hosts.get(m.store_host());
        let fields = fields_len(m, born, store);
        let body = m.body_len();
        let body_field = if body == 0 { 0 } else { len_field_len(BODY, body) };
        len_prefix(RESPONSE_MESSAGES, fields + body_field, &mut buf);
        encode_fields(m, born, store, &mut buf);
        if body == 0 {
            continue;
        }
        len_prefix(BODY, body, &mut buf);
        if body >= BODY_BY_REFERENCE {
            parts.push(buf.split().freeze());
            parts.push(m.body());
        } else {
            buf.put_slice(&m.body());
        }
    }
    if !buf.is_empty() || parts.is_empty() {
        parts.push(buf.freeze());
    }
    parts
}

/// Encoded length of every field of `m` but its body.
fn fields_len(m: &StoredMessage, born: &str, store: &str) -> usize {
    let text = m.text_bytes();
    let mut len = str_field_len(TOPIC, text.topic)
        + varint_field_len(QUEUE_ID, u64::from(m.queue_id()))
        + varint_field_len(QUEUE_OFFSET, m.queue_offset().0)
        + varint_field_len(COMMIT_LOG_OFFSET, m.physical_offset().0)
        + str_field_len(MESSAGE_ID, text.msg_id)
        + str_field_len(TAGS, text.tags);
    for key in keys(text.keys) {
        len += len_field_len(KEYS, key.len());
    }
    for (k, v) in m.raw_properties() {
        len += len_field_len(PROPERTIES, entry_len(k, v));
    }
    len + varint_field_len(FLAG, u64::from(m.flag()))
        + varint_field_len(BORN_TIMESTAMP, m.born_timestamp())
        + varint_field_len(STORE_TIMESTAMP, m.store_timestamp())
        + str_field_len(BORN_HOST, born.as_bytes())
        + str_field_len(STORE_HOST, store.as_bytes())
        + varint_field_len(RECONSUME_TIMES, u64::from(m.reconsume_times()))
}

/// Every field of `m` but its body, in the order `fields_len` counts them.
fn encode_fields(m: &StoredMessage, born: &str, store: &str, buf: &mut BytesMut) {
    let text = m.text_bytes();
    str_field(TOPIC, text.topic, buf);
    varint_field(QUEUE_ID, u64::from(m.queue_id()), buf);
    varint_field(QUEUE_OFFSET, m.queue_offset().0, buf);
    varint_field(COMMIT_LOG_OFFSET, m.physical_offset().0, buf);
    str_field(MESSAGE_ID, text.msg_id, buf);
    str_field(TAGS, text.tags, buf);
    for key in keys(text.keys) {
        len_prefix(KEYS, key.len(), buf);
        buf.put_slice(key);
    }
    for (k, v) in m.raw_properties() {
        len_prefix(PROPERTIES, entry_len(k, v), buf);
        str_field(MAP_KEY, k, buf);
        str_field(MAP_VALUE, v, buf);
    }
    varint_field(FLAG, u64::from(m.flag()), buf);
    varint_field(BORN_TIMESTAMP, m.born_timestamp(), buf);
    varint_field(STORE_TIMESTAMP, m.store_timestamp(), buf);
    str_field(BORN_HOST, born.as_bytes(), buf);
    str_field(STORE_HOST, store.as_bytes(), buf);
    varint_field(RECONSUME_TIMES, u64::from(m.reconsume_times()), buf);
}

/// Each key of a space-separated key list (as `StoredMessage::key_list`).
fn keys(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    list.split(|&b| b == b' ').filter(|k| !k.is_empty())
}

/// Encoded length of one map entry's contents.
fn entry_len(k: &[u8], v: &[u8]) -> usize {
    str_field_len(MAP_KEY, k) + str_field_len(MAP_VALUE, v)
}

pub(crate) fn varint_field(tag: u32, value: u64, buf: &mut BytesMut) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

pub(crate) fn varint_field_len(tag: u32, value: u64) -> usize {
    if value == 0 { 0 } else { key_len(tag) + encoded_len_varint(value) }
}

pub(crate) fn str_field(tag: u32, value: &[u8], buf: &mut BytesMut) {
    if !value.is_empty() {
        len_prefix(tag, value.len(), buf);
        buf.put_slice(value);
    }
}

pub(crate) fn str_field_len(tag: u32, value: &[u8]) -> usize {
    if value.is_empty() { 0 } else { len_field_len(tag, value.len()) }
}

/// Key and length of a length-delimited field whose `len` bytes follow.
pub(crate) fn len_prefix(tag: u32, len: usize, buf: &mut BytesMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

fn len_field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use comet_model::{CommitLogOffset, QueueOffset};
    use comet_proto::comet::v1 as pb;
    use comet_store::NewMessage;
    use comet_store::record::{self, Placement};
    use proptest::prelude::*;
    use prost::Message;

    fn stored(msg: &NewMessage, at: u64, queue_offset: u64, store_host: SocketAddr) -> StoredMessage {
        let placement = Placement {
            physical_offset: CommitLogOffset(at),
            queue_offset: QueueOffset(queue_offset),
            store_timestamp: at.wrapping_mul(7),
            store_host,
        };
        let len = record::encoded_len(msg, u32::MAX).unwrap_or_else(|e| panic!("test message is invalid: {e}"));
        let mut buf = vec![0u8; len];
        record::encode(&mut buf, msg, &placement);
        StoredMessage::decode(Bytes::from(buf)).unwrap_or_else(|e| panic!("test record does not decode: {e}"))
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[a-zA-Z0-9_ é]{1,12}"]
    }

    fn message() -> impl Strategy<Value = (NewMessage, u16, u64)> {
        (
            (text(), text(), "[ a-z]{0,16}", prop::collection::vec(("[a-zA-Z_]{1,8}", text()), 0..4)),
            prop_oneof![0usize..4, 500usize..520, 1000usize..1100],
            (any::<u32>(), any::<u32>(), any::<u64>(), any::<u32>()),
            (any::<u16>(), 0u64..3),
        )
            .prop_map(
                |((msg_id, tags, keys, properties), body, (flag, queue_id, born, times), (port, offset))| {
                    let mut m = NewMessage::new("TopicA", queue_id % 8, vec![b'x'; body]);
                    m.msg_id = msg_id;
                    m.tags = tags;
                    m.keys = keys;
                    m.properties = properties;
                    m.flag = flag;
                    m.born_timestamp = born % (1 << 50);
                    m.born_host = SocketAddr::from(([10, 0, 0, (port % 12) as u8], port));
                    m.reconsume_times = times % 20;
                    (m, port, offset)
                },
            )
    }

    proptest! {
        /// The data path's answer decodes to exactly what the gRPC path sends for the same records.
        #[test]
        fn the_gathered_answer_decodes_like_the_grpc_answer(
            batch in prop::collection::vec(message(), 0..40),
            status in 1i32..5,
            next in any::<u64>(),
        ) {
            let store_host = SocketAddr::from(([127, 0, 0, 1], 10911));
            let messages: Vec<StoredMessage> = batch
                .iter()
                .enumerate()
                .map(|(i, (m, _, offset))| stored(m, i as u64 * 4096 * offset, i as u64 * offset, store_host))
                .collect();
            let pulled = Pulled {
                status: pb::PullStatus::try_from(status).unwrap_or(pb::PullStatus::Found),
                next_offset: next,
                min_offset: next / 3,
                max_offset: next / 2,
                messages,
            };
            let parts = pull_response(&pulled);
            let referenced = pulled.messages.iter().filter(|m| m.body_len() >= BODY_BY_REFERENCE).count();
            prop_assert!(parts.len() <= 2 * referenced + 1);
            let decoded = pb::PullMessageResponse::decode(Bytes::from(parts.concat()));
            prop_assert_eq!(decoded.ok(), Some(pulled.into_proto()));
        }
    }

    #[test]
    fn an_empty_answer_is_one_part() {
        let pulled = Pulled {
            status: pb::PullStatus::NoNewMessage,
            next_offset: 5,
            min_offset: 0,
            max_offset: 5,
            messages: Vec::new(),
        };
        let parts = pull_response(&pulled);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts.concat(), pulled.into_proto().encode_to_vec());
    }
}
