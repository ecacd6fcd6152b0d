//! Wire ↔ domain conversion for the Broker service: the only code that knows both the proto types and the
//! domain/store types.

use std::net::SocketAddr;

use comet_model::{MessageType, Permission, TopicConfig};
use comet_proto::comet::v1 as pb;
use comet_store::StoredMessage;

use crate::domain::clients::{ConsumerHeartbeat, ConsumerMember, MessageModel};
use crate::domain::groups::GroupConfig;
use crate::error::{BrokerError, Result};

/// A stored message as consumers receive it. The body shares the store's mapped record (no copy here).
pub fn message_to_proto(m: &StoredMessage) -> pb::StoredMessage {
    messages_to_proto(std::slice::from_ref(m)).pop().unwrap_or_default()
}

/// Stored messages as consumers receive them (a pull's answer).
// Hot path (pull): one allocation per string field, none for the body. Hosts repeat from message to message
// (one broker, few producers): each distinct address is formatted once per call, not once per message.
pub fn messages_to_proto(messages: &[StoredMessage]) -> Vec<pb::StoredMessage> {
    let (mut born_hosts, mut store_hosts) = (HostText::default(), HostText::default());
    messages
        .iter()
        .map(|m| pb::StoredMessage {
            topic: m.topic().to_owned(),
            queue_id: m.queue_id(),
            queue_offset: m.queue_offset().0,
            commit_log_offset: m.physical_offset().0,
            message_id: m.msg_id().to_owned(),
            tags: m.tags().to_owned(),
            keys: m.key_list().map(str::to_owned).collect(),
            properties: m.properties().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
            body: m.body(),
            flag: m.flag(),
            born_timestamp_millis: m.born_timestamp(),
            store_timestamp_millis: m.store_timestamp(),
            born_host: born_hosts.get(m.born_host()).to_owned(),
            store_host: store_hosts.get(m.store_host()).to_owned(),
            reconsume_times: m.reconsume_times(),
        })
        .collect()
}

/// Host addresses (socket addresses, or bare IPs) as text, each distinct one formatted once per answer: answers
/// come from one broker and usually from few producers.
pub(crate) struct HostText<A = SocketAddr>(Vec<(A, String)>);

impl<A> Default for HostText<A> {
    fn default() -> Self {
        HostText(Vec::new())
    }
}

/// Distinct addresses a [`HostText`] keeps; past that it recycles its last slot rather than scan a long list.
const HOSTS_CACHED: usize = 8;

impl<A: Copy + PartialEq + std::fmt::Display> HostText<A> {
    /// `addr` as text.
    pub(crate) fn get(&mut self, addr: A) -> &str {
        let at = match self.0.iter().position(|(a, _)| *a == addr) {
            Some(at) => at,
            None => {
                if self.0.len() == HOSTS_CACHED {
                    self.0.pop();
                }
                self.0.push((addr, addr.to_string()));
                self.0.len() - 1
            }
        };
        self.0.get(at).map_or("", |(_, s)| s.as_str())
    }
}

/// A topic config from the wire; zero queue counts take `default_queues`, permission 0 is read+write.
pub fn topic_from_proto(t: pb::TopicConfig, default_queues: u32) -> Result<TopicConfig> {
    let perm = if t.perm == 0 {
        Permission::READ_WRITE
    } else {
        Permission::try_from(t.perm).map_err(|e| BrokerError::invalid("perm", e.to_string()))?
    };
    let message_type = match pb::MessageType::try_from(t.message_type) {
        // Undeclared: every type, like an auto-created topic.
        Ok(pb::MessageType::Unspecified) | Ok(pb::MessageType::Mixed) => MessageType::Mixed,
        Ok(pb::MessageType::Normal) => MessageType::Normal,
        Ok(pb::MessageType::Fifo) => MessageType::Fifo,
        Ok(pb::MessageType::Delay) => MessageType::Delay,
        Ok(pb::MessageType::Transaction) => MessageType::Transaction,
        Err(_) => return Err(BrokerError::invalid("message_type", format!("unknown value {}", t.message_type))),
    };
    let or_default = |n: u32| if n == 0 { default_queues } else { n };
    Ok(TopicConfig {
        name: t.name,
        read_queue_nums: or_default(t.read_queue_nums),
        write_queue_nums: or_default(t.write_queue_nums),
        perm,
        message_type,
    })
}

/// A topic config for the wire.
pub fn topic_to_proto(t: &TopicConfig) -> pb::TopicConfig {
    let message_type = match t.message_type {
        MessageType::Unspecified => pb::MessageType::Unspecified,
        MessageType::Normal => pb::MessageType::Normal,
        MessageType::Fifo => pb::MessageType::Fifo,
        MessageType::Delay => pb::MessageType::Delay,
        MessageType::Transaction => pb::MessageType::Transaction,
        MessageType::Mixed => pb::MessageType::Mixed,
    };
    pb::TopicConfig {
        name: t.name.clone(),
        read_queue_nums: t.read_queue_nums,
        write_queue_nums: t.write_queue_nums,
        perm: t.perm.bits(),
        message_type: message_type.into(),
    }
}

/// A group config for the wire.
pub fn group_to_proto(g: &GroupConfig) -> pb::GroupConfig {
    pb::GroupConfig {
        name: g.name.clone(),
        consume_enable: g.consume_enable,
        consume_broadcast_enable: g.consume_broadcast_enable,
        retry_max_times: g.retry_max_times,
        retry_delays_millis: g.retry_delays_ms.clone(),
        fifo: g.fifo,
    }
}

/// A group config from the wire.
pub fn group_from_proto(g: pb::GroupConfig) -> GroupConfig {
    GroupConfig {
        name: g.name,
        consume_enable: g.consume_enable,
        consume_broadcast_enable: g.consume_broadcast_enable,
        retry_max_times: g.retry_max_times,
        retry_delays_ms: g.retry_delays_millis,
        fifo: g.fifo,
    }
}

fn model_from_proto(m: i32) -> MessageModel {
    match pb::MessageModel::try_from(m) {
        Ok(pb::MessageModel::Broadcasting) => MessageModel::Broadcasting,
        _ => MessageModel::Clustering,
    }
}

fn model_to_proto(m: MessageModel) -> pb::MessageModel {
    match m {
        MessageModel::Clustering => pb::MessageModel::Clustering,
        MessageModel::Broadcasting => pb::MessageModel::Broadcasting,
    }
}

/// A consumer group's part of a client heartbeat.
pub fn consumer_heartbeat_from_proto(c: pb::ConsumerGroupHeartbeat) -> ConsumerHeartbeat {
    ConsumerHeartbeat {
        group: c.group,
        model: model_from_proto(c.message_model),
        subscriptions: c.subscriptions.into_iter().map(|s| (s.topic, s.expression)).collect(),
    }
}

/// A consumer group member for the wire.
pub fn member_to_proto(m: ConsumerMember) -> pb::ConsumerMember {
    pb::ConsumerMember {
        client_id: m.client_id,
        message_model: model_to_proto(m.model).into(),
        subscriptions: m
            .subscriptions
            .into_iter()
            .map(|(topic, expression)| pb::Subscription { topic, expression })
            .collect(),
        last_heartbeat_millis: m.last_heartbeat_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_zeros_take_defaults_and_round_trip() {
        let wire = pb::TopicConfig { name: "t".into(), ..Default::default() };
        let t = topic_from_proto(wire, 8).unwrap();
        assert_eq!((t.read_queue_nums, t.write_queue_nums, t.perm), (8, 8, Permission::READ_WRITE));
        let back = topic_from_proto(topic_to_proto(&t), 1).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn bad_permission_bits_and_message_types_are_refused() {
        let wire = pb::TopicConfig { name: "t".into(), perm: 32, ..Default::default() };
        assert!(matches!(topic_from_proto(wire, 8), Err(BrokerError::Invalid { field: "perm", .. })));
        let wire = pb::TopicConfig { name: "t".into(), message_type: 99, ..Default::default() };
        assert!(matches!(topic_from_proto(wire, 8), Err(BrokerError::Invalid { field: "message_type", .. })));
    }
}
