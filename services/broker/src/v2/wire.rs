//! Delivered messages encoded straight from the stored records: the bytes of an `apache.rocketmq.v2.Message`,
//! carried pre-encoded by the `ReceiveMessageResponse` and `PullMessageResponse` stream items (see
//! `proto/build.rs`). Building a `Message` cost the broker an owned string per text field, a map per message, a
//! nested `SystemProperties`, moves of those large values and prost's length passes over the nesting (more than a
//! quarter of its instructions per received message, callgrind); here text is copied from the record once, into
//! one buffer per batch.
//!
//! The fields and their presence are [`crate::v2::convert::to_v2_message`]'s, which stays the reference: a test
//! holds the two to the same decoded message. Fields are written in tag order, defaults omitted as proto3 does,
//! `optional` fields written whenever present.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use comet_model::system::{PROP_DELIVER_AT, PROP_ORIGIN_MESSAGE_ID, PROP_ORIGIN_TOPIC, PROP_SHARDING_KEY};
use comet_proto::apache::rocketmq::v2 as pb;
use comet_store::StoredMessage;
use prost::encoding::{WireType, encode_key, encode_varint};

use crate::edge::convert::HostText;
use crate::edge::wire::{len_prefix, str_field, str_field_len, varint_field, varint_field_len};
use crate::v2::convert::{is_internal_property, message_type_of};
use crate::v2::digest::upper_hex_ascii;

// Field numbers of apache.rocketmq.v2.Message (proto/apache/rocketmq/v2/definition.proto).
const TOPIC: u32 = 1;
const USER_PROPERTIES: u32 = 2;
const SYSTEM_PROPERTIES: u32 = 3;
const BODY: u32 = 4;
// Resource.
const RESOURCE_NAME: u32 = 2;
// A map entry.
const MAP_KEY: u32 = 1;
const MAP_VALUE: u32 = 2;
// SystemProperties.
const TAG: u32 = 1;
const KEYS: u32 = 2;
const MESSAGE_ID: u32 = 3;
const BODY_DIGEST: u32 = 4;
const BODY_ENCODING: u32 = 5;
const MESSAGE_TYPE: u32 = 6;
const BORN_TIMESTAMP: u32 = 7;
const BORN_HOST: u32 = 8;
const STORE_TIMESTAMP: u32 = 9;
const STORE_HOST: u32 = 10;
const DELIVERY_TIMESTAMP: u32 = 11;
const RECEIPT_HANDLE: u32 = 12;
const QUEUE_ID: u32 = 13;
const QUEUE_OFFSET: u32 = 14;
const INVISIBLE_DURATION: u32 = 15;
const DELIVERY_ATTEMPT: u32 = 16;
const MESSAGE_GROUP: u32 = 17;
// Digest.
const DIGEST_TYPE: u32 = 1;
const DIGEST_CHECKSUM: u32 = 2;
// google.protobuf.Timestamp and Duration.
const SECONDS: u32 = 1;
const NANOS: u32 = 2;

/// What a receive adds to a delivered message: its receipt handle, attempt and invisible duration.
pub struct Delivery<'a> {
    /// The receipt handle the consumer acknowledges with.
    pub handle: &'a str,
    /// This delivery's attempt, from 1.
    pub attempt: u32,
    /// How long the message stays invisible.
    pub invisible: Duration,
}

/// Encodes delivered messages of one answer into one shared buffer.
pub struct Encoder {
    buf: BytesMut,
    scratch: BytesMut,
    born: HostText<IpAddr>,
    store: HostText<SocketAddr>,
}

impl Encoder {
    /// An encoder sized for `messages` (their records' sizes plus room for the v2 fields).
    pub fn for_messages<'a>(messages: impl IntoIterator<Item = &'a StoredMessage>) -> Self {
        let estimate: usize = messages.into_iter().map(|m| m.size() + 192).sum();
        Encoder {
            buf: BytesMut::with_capacity(estimate),
            scratch: BytesMut::with_capacity(512),
            born: HostText::default(),
            store: HostText::default(),
        }
    }

    /// `m` as an encoded `Message`, its body's MD5 given, with `delivery`'s fields when it is a receive's.
    // Hot path (every message a v2 consumer receives or pulls): no allocation but the host texts of a new address.
    pub fn message(&mut self, m: &StoredMessage, md5: &[u8; 16], delivery: Option<&Delivery<'_>>) -> Bytes {
        self.system_properties(m, md5, delivery);
        let buf = &mut self.buf;
        let topic = m.property(PROP_ORIGIN_TOPIC).unwrap_or_else(|| m.topic()).as_bytes();
        len_prefix(TOPIC, str_field_len(RESOURCE_NAME, topic), buf);
        str_field(RESOURCE_NAME, topic, buf);
        for (k, v) in m.properties().filter(|(k, _)| !is_internal_property(k)) {
            let (k, v) = (k.as_bytes(), v.as_bytes());
            len_prefix(USER_PROPERTIES, str_field_len(MAP_KEY, k) + str_field_len(MAP_VALUE, v), buf);
            str_field(MAP_KEY, k, buf);
            str_field(MAP_VALUE, v, buf);
        }
        len_prefix(SYSTEM_PROPERTIES, self.scratch.len(), buf);
        buf.put_slice(&self.scratch);
        let body = m.body();
        str_field(BODY, &body, buf);
        buf.split().freeze()
    }

    /// `m`'s `SystemProperties` into `scratch`.
    fn system_properties(&mut self, m: &StoredMessage, md5: &[u8; 16], delivery: Option<&Delivery<'_>>) {
        let out = &mut self.scratch;
        out.clear();
        str_field(TAG, m.tags().as_bytes(), out);
        for key in m.keys().split_whitespace() {
            len_prefix(KEYS, key.len(), out);
            out.put_slice(key.as_bytes());
        }
        let message_id = m.property(PROP_ORIGIN_MESSAGE_ID).unwrap_or_else(|| m.msg_id());
        str_field(MESSAGE_ID, message_id.as_bytes(), out);
        let hex = upper_hex_ascii(md5);
        let digest_type = pb::DigestType::Md5 as u64;
        len_prefix(BODY_DIGEST, varint_field_len(DIGEST_TYPE, digest_type) + str_field_len(DIGEST_CHECKSUM, &hex), out);
        varint_field(DIGEST_TYPE, digest_type, out);
        str_field(DIGEST_CHECKSUM, &hex, out);
        varint_field(BODY_ENCODING, pb::Encoding::Identity as u64, out);
        varint_field(MESSAGE_TYPE, message_type_of(m) as u64, out);
        time_field(BORN_TIMESTAMP, Duration::from_millis(m.born_timestamp()), out);
        str_field(BORN_HOST, self.born.get(m.born_host().ip()).as_bytes(), out);
        time_field(STORE_TIMESTAMP, Duration::from_millis(m.store_timestamp()), out);
        str_field(STORE_HOST, self.store.get(m.store_host()).as_bytes(), out);
        if let Some(at) = m.property(PROP_DELIVER_AT).and_then(|v| v.parse::<u64>().ok()) {
            time_field(DELIVERY_TIMESTAMP, Duration::from_millis(at), out);
        }
        if let Some(d) = delivery {
            len_prefix(RECEIPT_HANDLE, d.handle.len(), out);
            out.put_slice(d.handle.as_bytes());
        }
        varint_field(QUEUE_ID, u64::from(m.queue_id().min(i32::MAX as u32)), out);
        present_varint(QUEUE_OFFSET, m.queue_offset().0.min(i64::MAX as u64), out);
        if let Some(d) = delivery {
            time_field(INVISIBLE_DURATION, d.invisible, out);
            present_varint(DELIVERY_ATTEMPT, u64::from(d.attempt.min(i32::MAX as u32)), out);
        }
        if let Some(group) = m.property(PROP_SHARDING_KEY) {
            len_prefix(MESSAGE_GROUP, group.len(), out);
            out.put_slice(group.as_bytes());
        }
    }
}

/// A field with explicit presence (`optional`): written even when 0.
fn present_varint(tag: u32, value: u64, buf: &mut BytesMut) {
    encode_key(tag, WireType::Varint, buf);
    encode_varint(value, buf);
}

/// A `google.protobuf.Timestamp` (time since the epoch) or `Duration` field: both are seconds and nanos.
fn time_field(tag: u32, t: Duration, buf: &mut BytesMut) {
    let (secs, nanos) = (t.as_secs().min(i64::MAX as u64), u64::from(t.subsec_nanos()));
    len_prefix(tag, varint_field_len(SECONDS, secs) + varint_field_len(NANOS, nanos), buf);
    varint_field(SECONDS, secs, buf);
    varint_field(NANOS, nanos, buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v2::convert;
    use prost::Message as _;

    fn stored(store: &comet_store::Store, i: u8, properties: Vec<(String, String)>) -> StoredMessage {
        let msg = comet_store::NewMessage {
            topic: "t".into(),
            queue_id: u32::from(i % 3),
            msg_id: format!("id{i}"),
            tags: if i.is_multiple_of(2) { "tag".into() } else { String::new() },
            keys: if i.is_multiple_of(4) { " k1  k2 ".into() } else { String::new() },
            properties,
            body: bytes::Bytes::from(vec![i; 100 * usize::from(i)]),
            flag: 0,
            sys_flag: 0,
            born_timestamp: 1_700_000_000_123 + u64::from(i),
            born_host: format!("10.0.0.{}:1", i % 3).parse().unwrap(),
            reconsume_times: 0,
            prepared_transaction_offset: 0,
        };
        store.read(store.append(&msg).unwrap().offset).unwrap()
    }

    fn md5(m: &StoredMessage) -> [u8; 16] {
        use md5::Digest as _;
        md5::Md5::digest(m.body()).into()
    }

    #[test]
    fn encoded_messages_decode_as_the_converted_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = comet_store::Store::open(crate::config::test_store(dir.path())).unwrap();
        let props = |i: u8| -> Vec<(String, String)> {
            match i % 5 {
                0 => vec![("user".into(), "v".into()), ("empty".into(), String::new())],
                1 => vec![(PROP_SHARDING_KEY.into(), "g1".into())],
                2 => vec![(PROP_DELIVER_AT.into(), "1700000005000".into()), ("a".into(), "b".into())],
                3 => vec![(PROP_ORIGIN_TOPIC.into(), "orig".into()), (PROP_ORIGIN_MESSAGE_ID.into(), "oid".into())],
                _ => vec![(PROP_SHARDING_KEY.into(), String::new())],
            }
        };
        let messages: Vec<StoredMessage> = (0..11u8).map(|i| stored(&store, i, props(i))).collect();
        let mut encoder = Encoder::for_messages(&messages);
        for (i, m) in messages.iter().enumerate() {
            let attempt = u32::try_from(i).unwrap();
            let handle = format!("h{i}");
            let invisible = Duration::from_millis(1500 * u64::from(attempt));
            let delivery = Delivery { handle: &handle, attempt, invisible };
            let mut want = convert::to_v2_message(m);
            let got = pb::Message::decode(encoder.message(m, &md5(m), None)).unwrap();
            assert_eq!(got, want, "message {i} as pulled");
            let p = want.system_properties.as_mut().unwrap();
            p.receipt_handle = Some(handle.clone());
            p.delivery_attempt = Some(i32::try_from(attempt).unwrap());
            p.invisible_duration = Some(convert::duration(invisible));
            let got = pb::Message::decode(encoder.message(m, &md5(m), Some(&delivery))).unwrap();
            assert_eq!(got, want, "message {i} as received");
        }
    }
}
