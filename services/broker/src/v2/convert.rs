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
    pb::Digest { r#type: pb::DigestType::Md5.into(), checksum: crate::v2::digest::upper_hex(&Md5::digest(body).into()) }
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
pub(crate) fn is_internal_property(key: &str) -> bool {
    RESERVED_PROPERTIES.contains(&key) || key == PROP_SHARDING_KEY
}

/// A stored message as the v2 API delivers it: user properties, tag, keys, the client's id, an MD5 digest,
/// IDENTITY encoding, store and born times and hosts, queue id and offset, message group and delivery time. A
/// retry copy shows its original topic and id. The receipt handle, invisible duration and delivery attempt are
/// the receiver's to set. Deliveries write the same message encoded ([`crate::v2::wire`]); this form serves the
/// transaction check-back and is the reference the encoder is tested against.
pub fn to_v2_message(m: &StoredMessage) -> pb::Message {
    let body = m.body();
    let body_digest = md5_digest(&body);
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
        born_host: m.born_host().ip().to_string(),
        store_timestamp: Some(timestamp(m.store_timestamp())),
        store_host: m.store_host().to_string(),
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
