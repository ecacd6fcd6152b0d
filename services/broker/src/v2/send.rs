//! SendMessage and EndTransaction, on the native send path (validation, idempotent send on the client's message
//! id, delay timer, transactions, the topic's message type), plus the v2 checks: declared message type against
//! the message's properties, delivery time limit (`rocketmq-v2.max-delay-ms`), message group length, tag.
//!
//! The broker picks the queue, as the RocketMQ proxy does (the SDKs do not send one: `SystemProperties.queue_id`
//! is a delivery-side field the Python SDK never sets): a FIFO message's queue is a hash of its message group, so
//! a group stays in one queue in send order; other messages go round robin. A batch is stored per queue in
//! request order; a transactional message is stored alone (one half per EndTransaction).
//!
//! Transactions: v2 halves record the producer group [`V2_PRODUCER_GROUP`] (v2 producers have none); the
//! check service asks a live v2 producer whose settings publish the half's topic, over its Telemetry stream.
//! The `transaction_id` is the half's CommitLog offset in 16 hex digits: opaque to clients, and all
//! EndTransaction needs besides the message id (which must match the half's).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use comet_model::CommitLogOffset;
use comet_model::system::{PROP_REAL_TOPIC, PROP_SHARDING_KEY, RESERVED_PROPERTIES};
use comet_proto::apache::rocketmq::v2 as pb;
use comet_proto::comet::v1 as native;
use comet_store::StoredMessage;
use tonic::Request;

use crate::broker::{Broker, now_ms};
use crate::domain::transactions::Outcome;
use crate::error::BrokerError;
use crate::v2::context::Caller;
use crate::v2::convert::{resource_name, timestamp_ms, to_v2_message};
use crate::v2::sessions::Sessions;
use crate::v2::status;

/// The producer group v2 half messages record (v2 producers declare none): check-backs for such halves go to
/// live v2 producers of the half's topic, over Telemetry.
pub const V2_PRODUCER_GROUP: &str = "%ROCKETMQ_V2%";

/// Longest message group, as the proxy allows.
pub const MAX_MESSAGE_GROUP_LEN: usize = 64;

/// The opaque transaction id of the half stored at `commit_log_offset`.
pub fn transaction_id(commit_log_offset: u64) -> String {
    format!("{commit_log_offset:016X}")
}

/// The half's CommitLog offset a transaction id names; `None` for anything this broker did not hand out.
pub fn half_offset(transaction_id: &str) -> Option<u64> {
    if transaction_id.len() != 16 {
        return None;
    }
    u64::from_str_radix(transaction_id, 16).ok()
}

/// A failed check: the status every entry of the request gets.
type Refusal = pb::Status;

/// One v2 message, checked and turned into a native one, with where it goes.
struct Prepared {
    message: native::OutgoingMessage,
    queue: Queue,
    transactional: bool,
    born_host: Option<IpAddr>,
}

/// Where a message goes: its message group's hash (FIFO), or the request's round-robin queue.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Queue {
    Group(u64),
    RoundRobin,
}

/// SendMessage: one result entry per message, in request order.
pub async fn send_message(
    broker: &Arc<Broker>,
    sessions: &Sessions,
    request: Request<pb::SendMessageRequest>,
) -> pb::SendMessageResponse {
    let caller = Caller::of(request.metadata());
    if let Some(id) = &caller.client_id {
        sessions.touch(id);
    }
    let remote = request.remote_addr();
    let request = request.into_inner();
    let mut response = send(broker, request, remote).await;
    for s in response.status.iter_mut().chain(response.entries.iter_mut().filter_map(|e| e.status.as_mut())) {
        *s = status::for_language(std::mem::take(s), &caller.language);
    }
    response
}

/// Every entry answered `status` (a request refused as a whole).
fn refused(s: pb::Status, messages: &[pb::Message]) -> pb::SendMessageResponse {
    let entries = messages
        .iter()
        .map(|m| pb::SendResultEntry {
            status: Some(s.clone()),
            message_id: m.system_properties.as_ref().map(|p| p.message_id.clone()).unwrap_or_default(),
            ..Default::default()
        })
        .collect();
    pb::SendMessageResponse { status: Some(s), entries }
}

async fn send(
    broker: &Arc<Broker>,
    request: pb::SendMessageRequest,
    remote: Option<SocketAddr>,
) -> pb::SendMessageResponse {
    let messages = request.messages;
    if messages.is_empty() {
        return refused(status::status(pb::Code::BadRequest, "no message to send"), &messages);
    }
    let topic = match topic_of(&messages) {
        Ok(t) => t,
        Err(s) => return refused(s, &messages),
    };
    let now = now_ms();
    let mut prepared = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        match prepare(broker, m, i, now) {
            Ok(p) => prepared.push(p),
            Err(s) => return refused(s, &messages),
        }
    }
    // The topic (auto-created if allowed) decides the queue count; the native path checks it again.
    let config = match broker.topics.get(&topic) {
        Some(t) => t,
        None => {
            let name = topic.clone();
            match broker.blocking(move |b| b.topic_for_send(&name)).await {
                Ok(t) => t,
                Err(e) => return refused(status::from_error(&e), &messages),
            }
        }
    };
    let queues = config.write_queue_nums.max(1);
    let round_robin = broker.next_queue(queues);
    let queue_of = |q: Queue| match q {
        Queue::Group(hash) => u32::try_from(hash % u64::from(queues)).unwrap_or(0),
        Queue::RoundRobin => round_robin,
    };
    // Native requests: consecutive messages of one queue together; a transactional message alone.
    let mut requests: Vec<(Vec<usize>, native::SendMessageRequest, Option<IpAddr>)> = Vec::new();
    for (i, p) in prepared.into_iter().enumerate() {
        let queue_id = queue_of(p.queue);
        match requests.last_mut() {
            Some((indexes, r, _)) if !p.transactional && !r.transactional && r.queue_id == Some(queue_id) => {
                indexes.push(i);
                r.messages.push(p.message);
            }
            _ => requests.push((
                vec![i],
                native::SendMessageRequest {
                    topic: topic.clone(),
                    queue_id: Some(queue_id),
                    producer_group: if p.transactional { V2_PRODUCER_GROUP.to_owned() } else { String::new() },
                    messages: vec![p.message],
                    transactional: p.transactional,
                },
                p.born_host,
            )),
        }
    }
    let mut entries: Vec<Option<pb::SendResultEntry>> = vec![None; messages.len()];
    let mut failure: Option<pb::Status> = None;
    for (indexes, r, born_ip) in requests {
        if let Some(f) = &failure {
            // Not attempted after an earlier part failed: the client retries the whole batch.
            for i in indexes {
                entries[i] = Some(pb::SendResultEntry { status: Some(f.clone()), ..Default::default() });
            }
            continue;
        }
        let transactional = r.transactional;
        let born_host = match (born_ip, remote) {
            (Some(ip), Some(r)) => Some(SocketAddr::new(ip, r.port())),
            (Some(ip), None) => Some(SocketAddr::new(ip, 0)),
            (None, r) => r,
        };
        match crate::handler::send::send(broker, r, born_host).await {
            Ok(answer) => {
                for (i, result) in indexes.into_iter().zip(answer.results) {
                    entries[i] = Some(pb::SendResultEntry {
                        status: Some(status::ok()),
                        message_id: result.message_id,
                        transaction_id: if transactional {
                            transaction_id(result.commit_log_offset)
                        } else {
                            String::new()
                        },
                        offset: i64::try_from(result.queue_offset).unwrap_or(i64::MAX),
                        recall_handle: String::new(),
                    });
                }
            }
            Err(e) => {
                let s = status::from_error(&e);
                for i in indexes {
                    entries[i] = Some(pb::SendResultEntry { status: Some(s.clone()), ..Default::default() });
                }
                failure = Some(s);
            }
        }
    }
    let entries: Vec<pb::SendResultEntry> = entries
        .into_iter()
        .zip(&messages)
        .map(|(e, m)| {
            let mut e = e.unwrap_or_else(|| pb::SendResultEntry {
                status: Some(status::status(pb::Code::InternalError, "message not answered")),
                ..Default::default()
            });
            if e.message_id.is_empty() {
                e.message_id = m.system_properties.as_ref().map(|p| p.message_id.clone()).unwrap_or_default();
            }
            e
        })
        .collect();
    pb::SendMessageResponse { status: Some(failure.unwrap_or_else(status::ok)), entries }
}

/// The one topic of a batch (namespace-wrapped as the broker stores it).
fn topic_of(messages: &[pb::Message]) -> Result<String, Refusal> {
    let mut topic: Option<String> = None;
    for m in messages {
        let name = resource_name(m.topic.as_ref(), "topic").map_err(|e| status::from_error(&e))?;
        match &topic {
            Some(t) if *t != name => {
                return Err(status::status(pb::Code::BadRequest, "all messages of a batch must have the same topic"));
            }
            Some(_) => {}
            None => topic = Some(name),
        }
    }
    topic.ok_or_else(|| status::status(pb::Code::BadRequest, "no message to send"))
}

/// The kind a message's properties make it: a message group is FIFO, a delivery time DELAY.
fn kind_by_properties(p: &pb::SystemProperties) -> pb::MessageType {
    if p.message_group.is_some() {
        pb::MessageType::Fifo
    } else if p.delivery_timestamp.is_some() {
        pb::MessageType::Delay
    } else {
        pb::MessageType::Normal
    }
}

/// Checks message `i` as the proxy would and maps it onto a native message.
fn prepare(broker: &Broker, m: &pb::Message, i: usize, now: u64) -> Result<Prepared, Refusal> {
    let at = |what: String| format!("message {i}: {what}");
    let bad = |code: pb::Code, what: &str| status::status(code, at(what.to_owned()));
    let Some(p) = m.system_properties.as_ref() else {
        return Err(bad(pb::Code::BadRequest, "system_properties are required"));
    };
    if p.message_id.is_empty() {
        return Err(bad(pb::Code::IllegalMessageId, "message_id is required"));
    }
    if m.body.is_empty() {
        return Err(bad(pb::Code::MessageBodyEmpty, "the body is empty"));
    }
    let max = u64::from(broker.config.store.max_message_size);
    if m.body.len() as u64 > max {
        return Err(status::status(
            pb::Code::MessageBodyTooLarge,
            at(format!("{} bytes exceed the {max}-byte limit (store.max-message-size)", m.body.len())),
        ));
    }
    if pb::Encoding::try_from(p.body_encoding) == Ok(pb::Encoding::Gzip) {
        return Err(bad(pb::Code::Unsupported, "GZIP bodies are not supported; send IDENTITY"));
    }
    let tag = p.tag.clone().unwrap_or_default();
    if tag.contains('|') {
        return Err(bad(pb::Code::IllegalMessageTag, "a tag must not contain '|'"));
    }
    if let Some(g) = &p.message_group
        && (g.is_empty() || g.len() > MAX_MESSAGE_GROUP_LEN)
    {
        return Err(status::status(
            pb::Code::IllegalMessageGroup,
            at(format!("a message group has 1 to {MAX_MESSAGE_GROUP_LEN} characters")),
        ));
    }
    if let Some(key) =
        m.user_properties.keys().find(|k| RESERVED_PROPERTIES.contains(&k.as_str()) || *k == PROP_SHARDING_KEY)
    {
        return Err(status::status(
            pb::Code::IllegalMessagePropertyKey,
            at(format!("property {key:?} is reserved for the broker")),
        ));
    }
    if p.lite_topic.is_some() || p.priority.is_some() {
        return Err(bad(pb::Code::Unsupported, "lite topics and priority messages are not supported"));
    }
    if p.message_group.is_some() && p.delivery_timestamp.is_some() {
        // Through the timer it would land in its group's queue late, out of order with the group.
        return Err(bad(
            pb::Code::MessagePropertyConflictWithType,
            "a message has a message group (FIFO) or a delivery time (DELAY), not both",
        ));
    }
    let declared = pb::MessageType::try_from(p.message_type).unwrap_or(pb::MessageType::Unspecified);
    let kind = kind_by_properties(p);
    let transactional = match declared {
        pb::MessageType::Unspecified => false,
        pb::MessageType::Transaction if kind == pb::MessageType::Normal => true,
        pb::MessageType::Transaction => {
            return Err(bad(
                pb::Code::MessagePropertyConflictWithType,
                "a TRANSACTION message has neither a message group nor a delivery time",
            ));
        }
        pb::MessageType::Lite | pb::MessageType::Priority => {
            return Err(bad(pb::Code::Unsupported, "lite and priority messages are not supported"));
        }
        t if t == kind => false,
        t => {
            return Err(status::status(
                pb::Code::MessagePropertyConflictWithType,
                at(format!(
                    "declared {} but its properties make it {} (FIFO needs a message group, DELAY a delivery time, \
                     NORMAL neither)",
                    t.as_str_name(),
                    kind.as_str_name()
                )),
            ));
        }
    };
    let deliver_at = match &p.delivery_timestamp {
        Some(t) => {
            let at_ms = timestamp_ms(t).max(1);
            let limit = broker.config.rocketmq_v2.max_delay_ms.min(broker.config.messaging.max_delay_ms);
            if at_ms > now && at_ms - now > limit {
                return Err(status::status(
                    pb::Code::IllegalDeliveryTime,
                    at(format!(
                        "{} ms ahead exceeds the longest delay, {limit} ms (rocketmq-v2.max-delay-ms, at most \
                         messaging.max-delay-ms)",
                        at_ms - now
                    )),
                ));
            }
            at_ms
        }
        None => 0,
    };
    let mut properties: std::collections::HashMap<String, String> = m.user_properties.clone();
    let queue = match &p.message_group {
        Some(g) => {
            properties.insert(PROP_SHARDING_KEY.to_owned(), g.clone());
            Queue::Group(group_hash(g))
        }
        None => Queue::RoundRobin,
    };
    let message = native::OutgoingMessage {
        message_id: p.message_id.clone(),
        tags: tag,
        keys: p.keys.clone(),
        properties,
        body: m.body.clone(),
        flag: 0,
        born_timestamp_millis: p.born_timestamp.as_ref().map(timestamp_ms).unwrap_or(0),
        deliver_at_millis: deliver_at,
        delay_millis: 0,
    };
    Ok(Prepared { message, queue, transactional, born_host: p.born_host.parse().ok() })
}

/// A stable hash of a message group (FNV-1a): the same group always maps to the same queue.
fn group_hash(group: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in group.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// EndTransaction: commit or roll back a half message (from the client, or answering a check-back).
pub async fn end_transaction(
    broker: &Arc<Broker>,
    sessions: &Sessions,
    request: Request<pb::EndTransactionRequest>,
) -> pb::EndTransactionResponse {
    let caller = Caller::of(request.metadata());
    if let Some(id) = &caller.client_id {
        sessions.touch(id);
    }
    let request = request.into_inner();
    let s = match end(broker, &request).await {
        Ok(()) => status::ok(),
        Err(s) => s,
    };
    pb::EndTransactionResponse { status: Some(status::for_language(s, &caller.language)) }
}

async fn end(broker: &Arc<Broker>, request: &pb::EndTransactionRequest) -> Result<(), pb::Status> {
    let topic = resource_name(request.topic.as_ref(), "topic").map_err(|e| status::from_error(&e))?;
    if request.message_id.is_empty() {
        return Err(status::status(pb::Code::IllegalMessageId, "message_id is required"));
    }
    let Some(offset) = half_offset(&request.transaction_id) else {
        return Err(status::status(
            pb::Code::InvalidTransactionId,
            format!("{:?} is not a transaction id of this broker", request.transaction_id),
        ));
    };
    let outcome = match pb::TransactionResolution::try_from(request.resolution) {
        Ok(pb::TransactionResolution::Commit) => Outcome::Commit,
        Ok(pb::TransactionResolution::Rollback) => Outcome::Rollback,
        _ => return Err(status::status(pb::Code::BadRequest, "resolution must be COMMIT or ROLLBACK")),
    };
    broker.require_master("end transaction").map_err(|e| status::from_error(&e))?;
    // The transaction must be the named topic's (a half that cannot be read is answered by the resolution).
    let half_topic = broker
        .blocking(move |b| {
            Ok(b.store.read(CommitLogOffset(offset)).ok().and_then(|m| m.property(PROP_REAL_TOPIC).map(str::to_owned)))
        })
        .await
        .map_err(|e| status::from_error(&e))?;
    if let Some(half_topic) = half_topic.filter(|t| *t != topic) {
        return Err(status::status(
            pb::Code::BadRequest,
            format!("transaction {:?} is of topic {half_topic:?}, not {topic:?}", request.transaction_id),
        ));
    }
    let resolved = crate::handler::transaction::resolve(broker, offset, &request.message_id, outcome).await;
    match resolved {
        Ok(r) if r.outcome.committed() == outcome.committed() => Ok(()),
        Ok(r) => Err(status::status(
            pb::Code::PreconditionFailed,
            format!("the transaction was already resolved: {}", r.outcome.label()),
        )),
        Err(BrokerError::MessageNotFound { what }) => Err(status::status(
            pb::Code::InvalidTransactionId,
            format!("no half message with {what} (transaction id {:?})", request.transaction_id),
        )),
        Err(e) => Err(status::from_error(&e)),
    }
}

/// The check-back command for a v2 half: the half as a v2 message of its real topic and queue, with its
/// transaction id. `real_topic` and `real_queue` are the half's.
pub fn recover_command(half: &StoredMessage, real_topic: &str, real_queue: u32) -> pb::TelemetryCommand {
    let mut message = to_v2_message(half);
    message.topic = Some(pb::Resource { resource_namespace: String::new(), name: real_topic.to_owned() });
    if let Some(p) = message.system_properties.as_mut() {
        p.message_type = pb::MessageType::Transaction.into();
        p.queue_id = i32::try_from(real_queue).unwrap_or(i32::MAX);
        p.queue_offset = None;
    }
    pb::TelemetryCommand {
        status: Some(status::ok()),
        command: Some(pb::telemetry_command::Command::RecoverOrphanedTransactionCommand(
            pb::RecoverOrphanedTransactionCommand {
                message: Some(message),
                transaction_id: transaction_id(half.physical_offset().0),
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_ids_round_trip_and_garbage_is_refused() {
        for offset in [0, 1, 42, u64::MAX] {
            assert_eq!(half_offset(&transaction_id(offset)), Some(offset));
        }
        for bad in ["", "12", "ZZZZZZZZZZZZZZZZ", "00000000000000000"] {
            assert_eq!(half_offset(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_message_group_always_hashes_the_same() {
        assert_eq!(group_hash("g1"), group_hash("g1"));
        assert_ne!(group_hash("g1"), group_hash("g2"));
    }
}
