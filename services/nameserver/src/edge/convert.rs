//! The one boundary between wire types (comet-proto) and domain types (comet-model, `crate::route`).

use comet_model::{BrokerData, DataVersion, MessageType, Permission, QueueData, TopicConfig, TopicRoute};
use comet_proto::comet::v1 as pb;

use crate::error::NameServerError;
use crate::route::{BrokerIdentity, ClusterView};

/// A required broker identity.
pub fn identity(p: Option<pb::BrokerIdentity>) -> Result<BrokerIdentity, NameServerError> {
    let p = p.ok_or_else(|| NameServerError::invalid("broker", "is missing"))?;
    let id = BrokerIdentity {
        cluster_name: p.cluster_name,
        broker_name: p.broker_name,
        broker_id: p.broker_id,
        address: p.address,
    };
    id.validate()?;
    Ok(id)
}

/// A data version; absent = all zeros.
pub fn data_version(p: Option<pb::DataVersion>) -> DataVersion {
    p.map(|v| DataVersion { state_version: v.state_version, timestamp_millis: v.timestamp_millis, counter: v.counter })
        .unwrap_or_default()
}

/// A topic config; bad permission bits or an unknown message type are refused here.
pub fn topic_config(p: pb::TopicConfig) -> Result<TopicConfig, NameServerError> {
    let perm = Permission::try_from(p.perm)
        .map_err(|e| NameServerError::invalid("perm", format!("topic {:?}: {e}", p.name)))?;
    let message_type = message_type(p.message_type)
        .map_err(|e| NameServerError::invalid("message_type", format!("topic {:?}: {e}", p.name)))?;
    Ok(TopicConfig {
        name: p.name,
        read_queue_nums: p.read_queue_nums,
        write_queue_nums: p.write_queue_nums,
        perm,
        message_type,
    })
}

fn message_type(raw: i32) -> Result<MessageType, String> {
    match pb::MessageType::try_from(raw) {
        Ok(pb::MessageType::Unspecified) => Ok(MessageType::Unspecified),
        Ok(pb::MessageType::Normal) => Ok(MessageType::Normal),
        Ok(pb::MessageType::Fifo) => Ok(MessageType::Fifo),
        Ok(pb::MessageType::Delay) => Ok(MessageType::Delay),
        Ok(pb::MessageType::Transaction) => Ok(MessageType::Transaction),
        Ok(pb::MessageType::Mixed) => Ok(MessageType::Mixed),
        Err(_) => Err(format!("unknown message type {raw}")),
    }
}

fn message_type_to_proto(t: MessageType) -> pb::MessageType {
    match t {
        MessageType::Unspecified => pb::MessageType::Unspecified,
        MessageType::Normal => pb::MessageType::Normal,
        MessageType::Fifo => pb::MessageType::Fifo,
        MessageType::Delay => pb::MessageType::Delay,
        MessageType::Transaction => pb::MessageType::Transaction,
        MessageType::Mixed => pb::MessageType::Mixed,
    }
}

/// Route answer.
// Hot path: moves strings out of the domain route; no clones.
pub fn route_to_proto(route: TopicRoute) -> pb::QueryRouteResponse {
    pb::QueryRouteResponse {
        topic: route.topic,
        queues: route.queues.into_iter().map(queue_data_to_proto).collect(),
        brokers: route.brokers.into_iter().map(broker_data_to_proto).collect(),
    }
}

fn queue_data_to_proto(q: QueueData) -> pb::QueueData {
    pb::QueueData {
        broker_name: q.broker_name,
        read_queue_nums: q.read_queue_nums,
        write_queue_nums: q.write_queue_nums,
        perm: q.perm.bits(),
        message_type: message_type_to_proto(q.message_type).into(),
    }
}

fn broker_data_to_proto(b: BrokerData) -> pb::BrokerData {
    pb::BrokerData {
        cluster_name: b.cluster_name,
        broker_name: b.broker_name,
        addresses: b.addresses.into_iter().collect(),
    }
}

/// Cluster answer.
pub fn cluster_to_proto(c: ClusterView) -> pb::ClusterInfo {
    pb::ClusterInfo { cluster_name: c.cluster_name, brokers: c.brokers.into_iter().map(broker_data_to_proto).collect() }
}

/// Optional filters arrive as empty strings.
pub fn optional(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}
