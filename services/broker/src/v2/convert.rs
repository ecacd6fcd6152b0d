//! v2 wire shapes ↔ the broker's names, times and stored messages. Every RPC family uses these, so a topic name,
//! a timestamp or a delivered message looks the same whichever RPC carries it.

use std::time::Duration;

use comet_model::system::{
    PROP_DELIVER_AT, PROP_ORIGIN_MESSAGE_ID, PROP_ORIGIN_TOPIC, PROP_SHARDING_KEY, PROP_TRANSACTION,
    RESERVED_PROPERTIES,
};
use comet_proto::apache::rocketmq::v2 as pb;
use comet_store::StoredMessage;
use md5::{Digest as _, Md5};

use crate::error::{BrokerError, Result};

/// The name a `Resource` stands for: `name`, or `namespace%name` when the client uses a namespace (RocketMQ's
/// wrapping), checked with the topic or group rules as `field` (`topic` or `group`).
pub fn resource_name(resource: Option<&pb::Resource>, field: &'static str) -> Result<String> {
    let Some(r) = resource.filter(|r| !r.name.is_empty()) else {
        return Err(BrokerError::invalid(field, "missing"));
    };
    let name =
        if r.resource_namespace.is_empty() { r.name.clone() } else { format!("{}%{}", r.resource_namespace, r.name) };
    let checked = match field {
        "group" => comet_model::validate_group_name(&name).map_err(|e| e.to_string()),
        _ => comet_model::validate_topic_name(&name).map_err(|e| e.to_string()),
    };
    checked.map_err(|e| BrokerError::invalid(field, e))?;
    Ok(name)
}

/// A `Resource` for `name` as the client named it (namespace kept), for echoing topics back.
pub fn resource(name: &str, namespace: &str) -> pb::Resource {
    let plain = if namespace.is_empty() { name } else { name.strip_prefix(&format!("{namespace}%")).unwrap_or(name) };
    pb::Resource { resource_namespace: namespace.to_owned(), name: plain.to_owned() }
}

/// Epoch milliseconds as a protobuf `Timestamp`.
pub fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

/// A protobuf `Timestamp` as epoch milliseconds (negative times are 0).
pub fn timestamp_ms(t: &prost_types::Timestamp) -> u64 {
    let ms = i128::from(t.seconds) * 1000 + i128::from(t.nanos) / 1_000_000;
    u64::try_from(ms.max(0)).unwrap_or(u64::MAX)
}

/// A `Duration` for `d`.
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A protobuf `Duration` as a std one; `None` when negative or out of range.
pub fn std_duration(d: &prost_types::Duration) -> Option<Duration> {
    let secs = u64::try_from(d.seconds).ok()?;
    let nanos = u32::try_from(d.nanos).ok()?;
    Some(Duration::from_secs(secs) + Duration::from_nanos(u64::from(nanos)))
}

/// The body digest the proxy sends and the SDKs verify: MD5, upper-case hex.
pub fn md5_digest(body: &[u8]) -> pb::Digest {
    digest_of(&Md5::digest(body).into())
}

/// The `Digest` of an MD5 sum (computed for a batch by [`crate::v2::digest::md5_each`]).
pub fn digest_of(md5: &[u8; 16]) -> pb::Digest {
    pb::Digest { r#type: pb::DigestType::Md5.into(), checksum: crate::v2::digest::upper_hex(md5) }
}

/// [`to_v2_message`] of each message, their MD5 digests computed side by side.
pub fn to_v2_messages<'a>(messages: impl IntoIterator<Item = &'a StoredMessage>) -> Vec<pb::Message> {
    let messages: Vec<&StoredMessage> = messages.into_iter().collect();
    let bodies: Vec<bytes::Bytes> = messages.iter().map(|m| m.body()).collect();
    let slices: Vec<&[u8]> = bodies.iter().map(|b| &b[..]).collect();
    let sums = crate::v2::digest::md5_each(&slices);
    let mut hosts = Hosts::default();
    messages.into_iter().zip(&sums).map(|(m, sum)| to_v2_message_with(m, digest_of(sum), &mut hosts)).collect()
}

/// The host strings of the last message converted: a batch mostly shares them (one store host, few producers),
/// and formatting an address costs more than copying its text.
#[derive(Default)]
struct Hosts {
    born: Option<(std::net::IpAddr, String)>,
    store: Option<(std::net::SocketAddr, String)>,
}

impl Hosts {
    fn born(&mut self, ip: std::net::IpAddr) -> String {
        match &self.born {
            Some((last, text)) if *last == ip => text.clone(),
            _ => self.born.insert((ip, ip.to_string())).1.clone(),
        }
    }

    fn store(&mut self, addr: std::net::SocketAddr) -> String {
        match &self.store {
            Some((last, text)) if *last == addr => text.clone(),
            _ => self.store.insert((addr, addr.to_string())).1.clone(),
        }
    }
}

/// What kind of message a stored record is, by the properties a send left on it.
pub fn message_type_of(m: &StoredMessage) -> pb::MessageType {
    if m.property(PROP_TRANSACTION).is_some() {
        pb::MessageType::Transaction
    } else if m.property(PROP_SHARDING_KEY).is_some() {
        pb::MessageType::Fifo
    } else if m.property(PROP_DELIVER_AT).is_some() {
        pb::MessageType::Delay
    } else {
        pb::MessageType::Normal
    }
}

/// True for the properties the broker keeps for itself (never shown as user properties).
fn is_internal_property(key: &str) -> bool {
    RESERVED_PROPERTIES.contains(&key) || key == PROP_SHARDING_KEY
}

/// A stored message as the v2 API delivers it: user properties, tag, keys, the client's id, an MD5 digest,
/// IDENTITY encoding, store and born times and hosts, queue id and offset, message group and delivery time. A
/// retry copy shows its original topic and id. The receipt handle, invisible duration and delivery attempt are
/// the receiver's to set.
pub fn to_v2_message(m: &StoredMessage) -> pb::Message {
    to_v2_message_with(m, md5_digest(&m.body()), &mut Hosts::default())
}

/// [`to_v2_message`] with the body's digest given.
fn to_v2_message_with(m: &StoredMessage, body_digest: pb::Digest, hosts: &mut Hosts) -> pb::Message {
    let body = m.body();
    let topic = m.property(PROP_ORIGIN_TOPIC).unwrap_or_else(|| m.topic()).to_owned();
    let message_id = m.property(PROP_ORIGIN_MESSAGE_ID).unwrap_or_else(|| m.msg_id()).to_owned();
    let user_properties =
        m.properties().filter(|(k, _)| !is_internal_property(k)).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    let delivery_timestamp = m.property(PROP_DELIVER_AT).and_then(|v| v.parse::<u64>().ok()).map(timestamp);
    let system_properties = pb::SystemProperties {
        tag: Some(m.tags().to_owned()).filter(|t| !t.is_empty()),
        keys: m.keys().split_whitespace().map(str::to_owned).collect(),
        message_id,
        body_digest: Some(body_digest),
        body_encoding: pb::Encoding::Identity.into(),
        message_type: message_type_of(m).into(),
        born_timestamp: Some(timestamp(m.born_timestamp())),
        born_host: hosts.born(m.born_host().ip()),
        store_timestamp: Some(timestamp(m.store_timestamp())),
        store_host: hosts.store(m.store_host()),
        delivery_timestamp,
        queue_id: i32::try_from(m.queue_id()).unwrap_or(i32::MAX),
        queue_offset: Some(i64::try_from(m.queue_offset().0).unwrap_or(i64::MAX)),
        message_group: m.property(PROP_SHARDING_KEY).map(str::to_owned),
        ..Default::default()
    };
    pb::Message {
        topic: Some(pb::Resource { resource_namespace: String::new(), name: topic }),
        user_properties,
        system_properties: Some(system_properties),
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_upper_case_md5_hex() {
        let d = md5_digest(b"hello");
        assert_eq!(d.checksum, "5D41402ABC4B2A76B9719D911017C592");
        assert_eq!(d.r#type, i32::from(pb::DigestType::Md5));
    }

    #[test]
    fn a_batch_converts_as_each_message_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = comet_store::Store::open(comet_store::StoreConfig::new(dir.path())).unwrap();
        let mut stored = Vec::new();
        for i in 0..11u8 {
            let msg = comet_store::NewMessage {
                topic: "t".into(),
                queue_id: 0,
                msg_id: format!("id{i}"),
                tags: "tag".into(),
                keys: "k1 k2".into(),
                properties: vec![("user".into(), "v".into())],
                body: bytes::Bytes::from(vec![i; 100 * usize::from(i)]),
                flag: 0,
                sys_flag: 0,
                born_timestamp: 1,
                born_host: format!("10.0.0.{}:1", i % 3).parse().unwrap(),
                reconsume_times: 0,
                prepared_transaction_offset: 0,
            };
            stored.push(store.read(store.append(&msg).unwrap().offset).unwrap());
        }
        let one_by_one: Vec<pb::Message> = stored.iter().map(to_v2_message).collect();
        assert_eq!(to_v2_messages(stored.iter()), one_by_one);
        assert_eq!(one_by_one[4].system_properties.as_ref().unwrap().born_host, "10.0.0.1");
    }

    #[test]
    fn names_take_the_namespace_and_are_checked() {
        let r = |ns: &str, name: &str| pb::Resource { resource_namespace: ns.into(), name: name.into() };
        assert_eq!(resource_name(Some(&r("", "T")), "topic").unwrap(), "T");
        assert_eq!(resource_name(Some(&r("ns", "T")), "topic").unwrap(), "ns%T");
        assert!(resource_name(Some(&r("", "bad name")), "topic").is_err());
        assert!(resource_name(None, "group").is_err());
        assert_eq!(resource("ns%T", "ns"), r("ns", "T"));
    }

    #[test]
    fn times_round_trip() {
        assert_eq!(timestamp_ms(&timestamp(1_700_000_000_123)), 1_700_000_000_123);
        assert_eq!(std_duration(&duration(Duration::from_millis(1500))), Some(Duration::from_millis(1500)));
        assert_eq!(std_duration(&prost_types::Duration { seconds: -1, nanos: 0 }), None);
    }
}
