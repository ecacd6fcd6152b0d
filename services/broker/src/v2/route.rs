//! QueryRoute, QueryAssignment, Heartbeat and NotifyClientTermination.
//!
//! A route lists the topic's queues on every master broker serving it: the NameServers' view when the broker
//! registers with some (`broker.nameserver-addresses`), united with this broker's own topic table (a topic
//! created here a moment ago is served before its registration lands). Each queue names its broker by the
//! broker's advertised gRPC address, where the v2 API is served beside `comet.v1.Broker`.

use std::net::SocketAddr;
use std::sync::Arc;

use comet_model::{MessageType, Permission};
use comet_nameserver_client::{ClientConfig, ClientError, NameServerClient};
use comet_proto::apache::rocketmq::v2 as pb;
use comet_proto::comet::v1 as native;
use tonic::Request;

use crate::broker::Broker;
use crate::error::BrokerError;
use crate::v2::context::Caller;
use crate::v2::convert::{resource, resource_name};
use crate::v2::sessions::Sessions;
use crate::v2::status;

/// Longest a QueryRoute waits for the NameServers before answering from this broker's topic table.
const NAMESERVER_WAIT: std::time::Duration = std::time::Duration::from_millis(1_500);

/// One master broker's share of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerQueues {
    /// The broker name.
    pub name: String,
    /// Its advertised gRPC address (`host:port`).
    pub address: String,
    /// Readable queues.
    pub read_queue_nums: u32,
    /// Writable queues.
    pub write_queue_nums: u32,
    /// The topic's permission there.
    pub perm: Permission,
    /// The topic's message type there.
    pub message_type: MessageType,
}

/// The status CLIENT_ID_REQUIRED, for requests that need to know their client.
pub fn client_id_required() -> pb::Status {
    status::status(pb::Code::ClientIdRequired, "the x-mq-client-id header is required")
}

/// The status answering a full session table.
pub fn too_many_sessions() -> pb::Status {
    status::status(
        pb::Code::TooManyRequests,
        format!("{} clients are connected; try again later", crate::v2::sessions::MAX_SESSIONS),
    )
}

/// The NameServer client, made on first use (it needs the runtime); `None` without NameServers or when their
/// addresses are unusable (logged once; routes then come from this broker alone).
fn nameservers(broker: &Broker) -> Option<&NameServerClient> {
    broker
        .nameservers
        .get_or_init(|| {
            let addresses = broker.config.broker.nameserver_addresses.clone();
            if addresses.is_empty() {
                return None;
            }
            match NameServerClient::new(ClientConfig::new(addresses)) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "RocketMQ v2 routes: NameServer client unusable; local routes only");
                    None
                }
            }
        })
        .as_ref()
}

fn message_type_from_native(t: i32) -> MessageType {
    match native::MessageType::try_from(t) {
        Ok(native::MessageType::Normal) => MessageType::Normal,
        Ok(native::MessageType::Fifo) => MessageType::Fifo,
        Ok(native::MessageType::Delay) => MessageType::Delay,
        Ok(native::MessageType::Transaction) => MessageType::Transaction,
        Ok(native::MessageType::Mixed) => MessageType::Mixed,
        Ok(native::MessageType::Unspecified) | Err(_) => MessageType::Unspecified,
    }
}

/// The masters serving `topic` according to a NameServer answer.
fn from_nameserver(route: &native::QueryRouteResponse) -> Vec<BrokerQueues> {
    route
        .queues
        .iter()
        .filter_map(|q| {
            let broker = route.brokers.iter().find(|b| b.broker_name == q.broker_name)?;
            let address = broker.addresses.get(&comet_model::MASTER_ID)?;
            Some(BrokerQueues {
                name: q.broker_name.clone(),
                address: address.clone(),
                read_queue_nums: q.read_queue_nums,
                write_queue_nums: q.write_queue_nums,
                perm: Permission::try_from(q.perm).unwrap_or(Permission::READ_WRITE),
                message_type: message_type_from_native(q.message_type),
            })
        })
        .collect()
}

/// This broker's share of `topic`, if it is a master holding it.
fn local(broker: &Broker, topic: &comet_model::TopicConfig) -> Option<BrokerQueues> {
    (!broker.config.is_slave()).then(|| BrokerQueues {
        name: broker.config.broker.broker_name.clone(),
        address: broker.advertised.clone(),
        read_queue_nums: topic.read_queue_nums,
        write_queue_nums: topic.write_queue_nums,
        perm: topic.perm,
        message_type: topic.message_type,
    })
}

/// Every master serving `topic`, sorted by broker name. With `create`, an unknown topic is auto-created here
/// when `broker.auto-create-topics` allows; otherwise it is TOPIC_NOT_FOUND.
pub async fn brokers_serving(
    broker: &Arc<Broker>,
    topic: &str,
    create: bool,
) -> crate::error::Result<Vec<BrokerQueues>> {
    let mut found = Vec::new();
    if let Some(client) = nameservers(broker) {
        // Bounded well below the SDKs' request timeout (3 s): NameServers that do not answer leave the local route.
        match tokio::time::timeout(NAMESERVER_WAIT, client.query_route(topic)).await {
            Ok(Ok(route)) => found = from_nameserver(&route),
            Ok(Err(ClientError::NotFound { .. })) => {}
            Ok(Err(e)) => tracing::debug!(topic, error = %e, "RocketMQ v2 route: NameServers unavailable; local only"),
            Err(_) => tracing::debug!(topic, "RocketMQ v2 route: NameServers slow to answer; local only"),
        }
    }
    let mut here = broker.topics.get(topic);
    if here.is_none() && found.is_empty() && create && !broker.config.is_slave() {
        let name = topic.to_owned();
        here = Some(broker.blocking(move |b| b.topic_for_send(&name)).await?);
    }
    if let Some(mine) = here.as_ref().and_then(|t| local(broker, t)) {
        found.retain(|b| b.name != mine.name);
        found.push(mine);
    }
    if found.is_empty() {
        return Err(BrokerError::TopicNotFound { topic: topic.to_owned() });
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// A `host:port` address as v2 `Endpoints`: IPv4 or IPv6 for an IP, DOMAIN_NAME for a host name (one address,
/// as the SDKs require).
pub fn endpoints(address: &str) -> pb::Endpoints {
    let (scheme, host, port) = match address.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(a)) => (pb::AddressScheme::IPv4, a.ip().to_string(), a.port()),
        Ok(SocketAddr::V6(a)) => (pb::AddressScheme::IPv6, a.ip().to_string(), a.port()),
        Err(_) => {
            let (host, port) = address.rsplit_once(':').unwrap_or((address, "0"));
            (pb::AddressScheme::DomainName, host.to_owned(), port.parse().unwrap_or(0))
        }
    };
    pb::Endpoints { scheme: scheme.into(), addresses: vec![pb::Address { host, port: i32::from(port) }] }
}

/// The message types a topic of `t` accepts, as the SDKs check them before sending.
pub fn accepted_types(t: MessageType) -> Vec<i32> {
    let types: &[pb::MessageType] = match t {
        MessageType::Normal => &[pb::MessageType::Normal],
        MessageType::Fifo => &[pb::MessageType::Fifo],
        MessageType::Delay => &[pb::MessageType::Delay],
        MessageType::Transaction => &[pb::MessageType::Transaction],
        MessageType::Mixed | MessageType::Unspecified => {
            &[pb::MessageType::Normal, pb::MessageType::Fifo, pb::MessageType::Delay, pb::MessageType::Transaction]
        }
    };
    types.iter().map(|&t| i32::from(t)).collect()
}

fn permission(readable: bool, writable: bool) -> pb::Permission {
    match (readable, writable) {
        (true, true) => pb::Permission::ReadWrite,
        (true, false) => pb::Permission::Read,
        (false, true) => pb::Permission::Write,
        (false, false) => pb::Permission::None,
    }
}

/// The v2 queue `id` of broker `b` (`-1` = any queue, for assignments) with the permission it has there.
fn queue(b: &BrokerQueues, topic: &pb::Resource, id: i32, perm: pb::Permission) -> pb::MessageQueue {
    pb::MessageQueue {
        topic: Some(topic.clone()),
        id,
        permission: perm.into(),
        broker: Some(pb::Broker { name: b.name.clone(), id: 0, endpoints: Some(endpoints(&b.address)) }),
        accept_message_types: accepted_types(b.message_type),
    }
}

/// Every queue of `b`: ids up to the larger queue count, each readable below the read count and writable below
/// the write count (as the topic's permission allows).
fn queues_of(b: &BrokerQueues, topic: &pb::Resource) -> Vec<pb::MessageQueue> {
    let n = b.read_queue_nums.max(b.write_queue_nums);
    (0..n)
        .map(|i| {
            let perm = permission(
                i < b.read_queue_nums && b.perm.is_readable(),
                i < b.write_queue_nums && b.perm.is_writable(),
            );
            queue(b, topic, i32::try_from(i).unwrap_or(i32::MAX), perm)
        })
        .collect()
}

/// QueryRoute: the topic's queues on every broker serving it, with each broker's gRPC endpoint.
pub async fn query_route(broker: &Arc<Broker>, request: Request<pb::QueryRouteRequest>) -> pb::QueryRouteResponse {
    let caller = Caller::of(request.metadata());
    let request = request.into_inner();
    let answer = |s: pb::Status, message_queues| pb::QueryRouteResponse {
        status: Some(status::for_language(s, &caller.language)),
        message_queues,
    };
    let name = match resource_name(request.topic.as_ref(), "topic") {
        Ok(n) => n,
        Err(e) => return answer(status::from_error(&e), vec![]),
    };
    let namespace = request.topic.as_ref().map(|t| t.resource_namespace.clone()).unwrap_or_default();
    let brokers = match brokers_serving(broker, &name, broker.config.broker.auto_create_topics).await {
        Ok(b) => b,
        Err(e) => return answer(status::from_error(&e), vec![]),
    };
    let topic = resource(&name, &namespace);
    answer(status::ok(), brokers.iter().flat_map(|b| queues_of(b, &topic)).collect())
}

/// Heartbeat: OK (even before settings), and the client is alive; a consumer's group is noted.
pub async fn heartbeat(
    _broker: &Arc<Broker>,
    sessions: &Sessions,
    request: Request<pb::HeartbeatRequest>,
) -> pb::HeartbeatResponse {
    let caller = Caller::of(request.metadata());
    let request = request.into_inner();
    let answer = |s: pb::Status| pb::HeartbeatResponse { status: Some(status::for_language(s, &caller.language)) };
    let Some(client_id) = caller.client_id.as_deref() else { return answer(client_id_required()) };
    let group = match request.group.as_ref().filter(|g| !g.name.is_empty()) {
        Some(g) => match resource_name(Some(g), "group") {
            Ok(name) => Some(name),
            Err(e) => return answer(status::from_error(&e)),
        },
        None => None,
    };
    let client_type = pb::ClientType::try_from(request.client_type).unwrap_or(pb::ClientType::Unspecified);
    match sessions.heartbeat(client_id, client_type, group) {
        Ok(()) => answer(status::ok()),
        Err(_) => answer(too_many_sessions()),
    }
}

/// QueryAssignment: which queues a push consumer of the group reads. A non-FIFO group gets one assignment per
/// broker (`MessageQueue{id: -1}`: any of its queues); a FIFO group one per readable queue, so the SDK keeps
/// one receive loop per queue and a message group's order.
pub async fn query_assignment(
    broker: &Arc<Broker>,
    sessions: &Sessions,
    request: Request<pb::QueryAssignmentRequest>,
) -> pb::QueryAssignmentResponse {
    let caller = Caller::of(request.metadata());
    let request = request.into_inner();
    let answer = |s: pb::Status, assignments| pb::QueryAssignmentResponse {
        status: Some(status::for_language(s, &caller.language)),
        assignments,
    };
    let Some(client_id) = caller.client_id.as_deref() else { return answer(client_id_required(), vec![]) };
    sessions.touch(client_id);
    let (name, group) =
        match (resource_name(request.topic.as_ref(), "topic"), resource_name(request.group.as_ref(), "group")) {
            (Ok(t), Ok(g)) => (t, g),
            (Err(e), _) | (_, Err(e)) => return answer(status::from_error(&e), vec![]),
        };
    let namespace = request.topic.as_ref().map(|t| t.resource_namespace.clone()).unwrap_or_default();
    let brokers = match brokers_serving(broker, &name, false).await {
        Ok(b) => b,
        Err(e) => return answer(status::from_error(&e), vec![]),
    };
    let fifo = broker.groups.get(&group).is_some_and(|g| g.fifo);
    let topic = resource(&name, &namespace);
    let readable = |b: &&BrokerQueues| b.perm.is_readable() && b.read_queue_nums > 0;
    let assignments: Vec<pb::Assignment> = if fifo {
        brokers
            .iter()
            .filter(readable)
            .flat_map(|b| queues_of(b, &topic))
            .filter(|q| {
                matches!(pb::Permission::try_from(q.permission), Ok(pb::Permission::Read | pb::Permission::ReadWrite))
            })
            .map(|q| pb::Assignment { message_queue: Some(q) })
            .collect()
    } else {
        brokers
            .iter()
            .filter(readable)
            .map(|b| {
                let perm = permission(true, b.perm.is_writable() && b.write_queue_nums > 0);
                pb::Assignment { message_queue: Some(queue(b, &topic, -1, perm)) }
            })
            .collect()
    };
    if assignments.is_empty() {
        let s = status::status(pb::Code::Forbidden, format!("no readable queue of topic {name:?}"));
        return answer(s, vec![]);
    }
    answer(status::ok(), assignments)
}

/// NotifyClientTermination: the client's state goes.
pub async fn notify_client_termination(
    _broker: &Arc<Broker>,
    sessions: &Sessions,
    request: Request<pb::NotifyClientTerminationRequest>,
) -> pb::NotifyClientTerminationResponse {
    let caller = Caller::of(request.metadata());
    let answer =
        |s: pb::Status| pb::NotifyClientTerminationResponse { status: Some(status::for_language(s, &caller.language)) };
    let Some(client_id) = caller.client_id.as_deref() else { return answer(client_id_required()) };
    sessions.remove(client_id);
    answer(status::ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_name_ips_and_host_names() {
        let e = endpoints("127.0.0.1:8081");
        assert_eq!(e.scheme, i32::from(pb::AddressScheme::IPv4));
        assert_eq!(e.addresses, vec![pb::Address { host: "127.0.0.1".into(), port: 8081 }]);
        let e = endpoints("[::1]:9");
        assert_eq!(e.scheme, i32::from(pb::AddressScheme::IPv6));
        assert_eq!(e.addresses[0].host, "::1");
        let e = endpoints("broker-0.comet:8081");
        assert_eq!(e.scheme, i32::from(pb::AddressScheme::DomainName));
        assert_eq!(e.addresses, vec![pb::Address { host: "broker-0.comet".into(), port: 8081 }]);
    }

    #[test]
    fn queues_take_their_permission_from_counts_and_topic_perm() {
        let b = BrokerQueues {
            name: "b".into(),
            address: "127.0.0.1:1".into(),
            read_queue_nums: 2,
            write_queue_nums: 3,
            perm: Permission::READ_WRITE,
            message_type: MessageType::Fifo,
        };
        let topic = resource("T", "");
        let q = queues_of(&b, &topic);
        let perms: Vec<i32> = q.iter().map(|q| q.permission).collect();
        let rw = i32::from(pb::Permission::ReadWrite);
        assert_eq!(perms, vec![rw, rw, i32::from(pb::Permission::Write)]);
        assert_eq!(q[0].accept_message_types, vec![i32::from(pb::MessageType::Fifo)]);
        assert_eq!(accepted_types(MessageType::Mixed).len(), 4);
        assert_eq!(accepted_types(MessageType::Unspecified).len(), 4);
    }
}
