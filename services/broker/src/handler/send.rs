//! SendMessage: validate (system topics and reserved properties are refused), pick the queue, readdress delayed
//! messages to the timer topic, store the batch under a send permit (in place with async flush, on the
//! blocking pool with sync flush), and with sync replication wait until enough slaves hold it.

use std::net::SocketAddr;
use std::sync::Arc;

use comet_model::system::TRANSACTION_HALF_TOPIC;
use comet_proto::comet::v1 as pb;
use comet_store::record::{MAX_KEYS, MAX_MSG_ID_LEN, MAX_TAGS_LEN};
use comet_store::{AppendResult, FlushMode, NewMessage, StoredMessage};

use comet_model::MessageType;
use comet_model::system::{
    PROP_REAL_QUEUE_ID, PROP_REAL_TOPIC, PROP_SHARDING_KEY, RESERVED_PROPERTIES, TIMER_TOPIC, is_system_topic,
};

use super::{check_group, check_topic, transaction};
use crate::broker::{Broker, now_ms};
use crate::domain::dedup::{Key, Reservation, Stored};
use crate::domain::timer;
use crate::error::{BrokerError, Result};

/// Stores the request's messages atomically in one queue and answers where each went.
// Hot path: no logging; one permit, one store append per request (and one blocking-pool hop with sync flush).
pub async fn send(
    broker: &Arc<Broker>,
    request: pb::SendMessageRequest,
    born_host: Option<SocketAddr>,
) -> Result<pb::SendMessageResponse> {
    check_topic(&request.topic)?;
    if is_system_topic(&request.topic) {
        return Err(BrokerError::invalid(
            "topic",
            format!(
                "{:?} is a system topic (retry, dead-letter, timer, transaction): only the broker writes it",
                request.topic
            ),
        ));
    }
    if !request.producer_group.is_empty() {
        check_group(&request.producer_group)?;
    }
    if request.messages.is_empty() {
        return Err(BrokerError::invalid("messages", "at least one message is required"));
    }
    if broker.waiters.is_stopping() {
        return Err(BrokerError::ShuttingDown);
    }
    broker.require_master("send")?;
    let topic = match broker.topics.get(&request.topic) {
        Some(t) => t,
        // Auto-creation writes topics.json (with an fsync): off the async workers.
        None => {
            let name = request.topic.clone();
            broker.blocking(move |b| b.topic_for_send(&name)).await?
        }
    };
    if !topic.perm.is_writable() {
        return Err(BrokerError::NotPermitted {
            what: "write",
            reason: format!("topic {:?} has permission {}", topic.name, topic.perm),
        });
    }
    let queue_id = match request.queue_id {
        Some(q) if q >= topic.write_queue_nums => {
            return Err(BrokerError::invalid(
                "queue_id",
                format!("{q} is not a write queue of {:?} (0..{})", topic.name, topic.write_queue_nums),
            ));
        }
        Some(q) => q,
        None => broker.next_queue(topic.write_queue_nums),
    };
    let target = Target {
        topic: &request.topic,
        queue_id,
        max_size: broker.config.store.max_message_size as usize,
        born_host: born_host.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        now: now_ms(),
        max_delay: broker.config.messaging.max_delay_ms,
    };
    if request.transactional {
        check_transactional(broker, &request)?;
    }
    check_message_types(&topic, &request)?;
    // The metrics label: the kind of message sent (a batch is labelled by its first), not the topic's type.
    let message_type = request.messages.first().map_or(MessageType::Normal, |m| kind_of(request.transactional, m));
    let count = request.messages.len();
    let mut messages = Vec::with_capacity(count);
    let mut given_ids = Vec::with_capacity(count);
    // Delivery times, allocated only once a request holds a delayed message.
    let mut deliver_at: Option<Vec<u64>> = None;
    for (i, m) in request.messages.into_iter().enumerate() {
        given_ids.push(!m.message_id.is_empty());
        let (mut message, at) = target.message(broker, m, i)?;
        if at > 0 {
            deliver_at.get_or_insert_with(|| vec![0; count])[i] = at;
        }
        if request.transactional {
            transaction::make_half(&mut message, &request.producer_group);
        }
        messages.push(message);
    }
    // The first delayed (transactional) message creates the timer (half) topic.
    if deliver_at.is_some() {
        broker.ensure_system_topic(TIMER_TOPIC).await?;
    }
    if request.transactional {
        broker.ensure_system_topic(TRANSACTION_HALF_TOPIC).await?;
    }
    let now = target.now;
    let batch = Batch {
        messages,
        given_ids,
        deliver_at,
        topic: request.topic,
        queue_id,
        message_type,
        transactional: request.transactional,
        producer_group: request.producer_group,
        now,
    };
    let reserves = request.transactional || (broker.dedup.enabled() && batch.given_ids.contains(&true));
    if reserves && !runs_inline(broker, &batch) {
        // Reserved ids must be completed or released, and a stored half recorded, whatever happens to this
        // call: a caller that gives up (timeout, disconnect) drops this future, not the detached task. (Inline,
        // nothing between the reservation and the bookkeeping awaits, so there is nothing to detach from.)
        let broker = Arc::clone(broker);
        return tokio::spawn(async move { finish(&broker, batch).await })
            .await
            .map_err(|e| BrokerError::Internal(format!("send task failed: {e}")))?;
    }
    finish(broker, batch).await
}

/// True when [`finish`] has no await point between reserving ids and recording what was stored: no index
/// lookup (the dedup table is complete) and an in-place append (async flush, a small batch). The sync-replication
/// wait comes after the bookkeeping, so being cancelled there loses nothing.
fn runs_inline(broker: &Broker, batch: &Batch) -> bool {
    let bytes: usize = batch.messages.iter().map(|m| m.body.len()).sum();
    broker.config.store.flush_mode == FlushMode::Async
        && bytes <= INLINE_APPEND_MAX
        && !broker.dedup.needs_index(batch.now)
}

/// A validated request, ready to be deduplicated and stored.
struct Batch {
    messages: Vec<NewMessage>,
    /// Per message: the producer gave its id (only those can be duplicates).
    given_ids: Vec<bool>,
    /// Per message delivery times, when any is delayed.
    deliver_at: Option<Vec<u64>>,
    /// The user topic and its real queue (a delayed or half message is stored in a system topic).
    topic: String,
    queue_id: u32,
    /// What kind of message the batch is (metrics).
    message_type: comet_model::MessageType,
    transactional: bool,
    producer_group: String,
    now: u64,
}

/// Idempotent send, the append, the bookkeeping of what was stored (dedup table, pending transactions), then
/// with sync replication the wait for the slaves, and the answer.
async fn finish(broker: &Arc<Broker>, batch: Batch) -> Result<pb::SendMessageResponse> {
    let Batch { messages, given_ids, deliver_at, topic, queue_id, message_type, transactional, producer_group, now } =
        batch;
    // Idempotent send: ids stored within the window are answered, not stored again.
    let reserved = if broker.dedup.enabled() && given_ids.contains(&true) {
        dedup_reserve(broker, &topic, &messages, &given_ids, now).await?
    } else {
        Vec::new()
    };
    // Messages are large structs and batches hold up to thousands: split only when there are duplicates.
    let is_duplicate = |i: usize| matches!(reserved.get(i), Some(Reserved::Duplicate(_)));
    let (indexes, fresh, duplicates): (Vec<usize>, Vec<NewMessage>, Vec<Indexed>) =
        if (0..messages.len()).any(is_duplicate) {
            let (mut indexes, mut fresh, mut duplicates) = (Vec::new(), Vec::with_capacity(messages.len()), Vec::new());
            for (i, m) in messages.into_iter().enumerate() {
                if is_duplicate(i) {
                    duplicates.push((i, m));
                } else {
                    indexes.push(i);
                    fresh.push(m);
                }
            }
            (indexes, fresh, duplicates)
        } else {
            ((0..messages.len()).collect(), messages, Vec::new())
        };
    let (fresh, appended) = match append(broker, fresh).await {
        Ok(done) => done,
        Err(e) => {
            release(broker, &reserved);
            return Err(e);
        }
    };
    // (request index, message, where it was stored) of every fresh message.
    let stored = || indexes.iter().copied().zip(&fresh).zip(&appended).map(|((i, m), r)| (i, m, r));
    let due = |i: usize| deliver_at.as_ref().and_then(|d| d.get(i).copied()).unwrap_or(0);
    // The real queue: a delayed or half message's record sits in queue 0 of a system topic.
    let at = |i: usize, r: &AppendResult| Stored {
        queue_id,
        queue_offset: r.queue_offset.0,
        commit_log_offset: r.offset.0,
        deliver_at: due(i),
    };
    // Recorded before anything else can fail: from here on the messages are stored.
    if !reserved.is_empty() {
        broker.dedup.complete_all(stored().filter_map(|(i, _, r)| match reserved.get(i) {
            Some(Reserved::Fresh(key)) => Some((*key, at(i, r))),
            _ => None,
        }));
    }
    if transactional {
        for (_, m, r) in stored() {
            transaction::added(broker, r.offset.0, &m.msg_id, &producer_group, now);
        }
    }
    let body_bytes: u64 = fresh.iter().map(|m| m.body.len() as u64).sum();
    if !fresh.is_empty() && !transactional {
        broker.metrics.sent(&topic, message_type, fresh.len() as u64, body_bytes);
    }
    if !duplicates.is_empty() {
        broker.metrics.send_duplicates(duplicates.len() as u64);
    }
    // Sync replication: acknowledged only once enough slaves hold the whole batch — and a duplicate only once
    // they hold its first copy (its first send may have failed exactly there).
    if broker.ha.is_sync() {
        let first = appended.first().map(|r| r.offset.0);
        let mut end = appended.last().map(|r| r.offset.0 + u64::from(r.size));
        for (i, _) in &duplicates {
            if let Some(Reserved::Duplicate(d)) = reserved.get(*i) {
                end = Some(end.unwrap_or(0).max(d.commit_log_offset + 1));
            }
        }
        if let Some(end) = end {
            broker.ha.wait_replicated(end, first.unwrap_or(end - 1)).await?;
        }
    }
    let mut results: Vec<(usize, pb::SendResult)> = Vec::with_capacity(fresh.len() + duplicates.len());
    for ((i, m), r) in indexes.into_iter().zip(fresh).zip(&appended) {
        results.push((i, result(m.msg_id, at(i, r), false, transactional)));
    }
    for (i, m) in duplicates {
        if let Some(Reserved::Duplicate(stored)) = reserved.get(i) {
            results.push((i, result(m.msg_id, *stored, true, transactional)));
        }
    }
    results.sort_unstable_by_key(|(i, _)| *i);
    Ok(pb::SendMessageResponse { results: results.into_iter().map(|(_, r)| r).collect() })
}

/// A message with its index in the request.
type Indexed = (usize, NewMessage);

/// The SendResult of a stored (or, `duplicate`, earlier stored) message: always the real queue. A half message
/// answers queue offset 0 (known at commit) and its own CommitLog offset (the handle EndTransaction names); a
/// delayed one its place in the timer topic and its delivery time.
fn result(message_id: String, stored: Stored, duplicate: bool, half: bool) -> pb::SendResult {
    pb::SendResult {
        message_id,
        queue_id: stored.queue_id,
        queue_offset: if half { 0 } else { stored.queue_offset },
        commit_log_offset: stored.commit_log_offset,
        duplicate,
        deliver_at_millis: stored.deliver_at,
    }
}

/// The kind a native message is: TRANSACTION if the send is transactional, DELAY with a delivery time, FIFO
/// with a sharding key (RocketMQ 5's message group), else NORMAL.
pub(crate) fn kind_of(transactional: bool, m: &pb::OutgoingMessage) -> MessageType {
    if transactional {
        MessageType::Transaction
    } else if m.deliver_at_millis != 0 || m.delay_millis != 0 {
        MessageType::Delay
    } else if m.properties.contains_key(PROP_SHARDING_KEY) {
        MessageType::Fifo
    } else {
        MessageType::Normal
    }
}

/// One topic table for both APIs: a typed topic takes its own kind of message only (MIXED and undeclared
/// topics take every kind).
fn check_message_types(topic: &comet_model::TopicConfig, request: &pb::SendMessageRequest) -> Result<()> {
    for (i, m) in request.messages.iter().enumerate() {
        let kind = kind_of(request.transactional, m);
        if !topic.message_type.accepts(kind) {
            return Err(BrokerError::invalid(
                "message_type",
                format!(
                    "message {i}: a {kind} message cannot be sent to {:?}, a {} topic",
                    topic.name, topic.message_type
                ),
            ));
        }
    }
    Ok(())
}

/// A transactional send: one message, a producer group, no delay, room in the table (system topics are refused
/// for every send already).
fn check_transactional(broker: &Broker, request: &pb::SendMessageRequest) -> Result<()> {
    if request.producer_group.is_empty() {
        return Err(BrokerError::invalid("producer_group", "a transactional send needs its producer group"));
    }
    if request.messages.len() != 1 {
        return Err(BrokerError::invalid("messages", "a transactional send carries exactly one message"));
    }
    if request.messages.iter().any(|m| m.deliver_at_millis != 0 || m.delay_millis != 0) {
        return Err(BrokerError::invalid("messages", "a transactional message cannot be delayed"));
    }
    if broker.transactions.is_full() {
        return Err(BrokerError::Busy {
            reason: format!(
                "{} unresolved transactions (messaging.transaction-max-pending)",
                broker.config.messaging.transaction_max_pending
            ),
        });
    }
    Ok(())
}

/// What [`dedup_reserve`] decided for one message.
enum Reserved {
    /// No producer id, or idempotent send off: stored as usual.
    Unchecked,
    /// Reserved in the dedup table for this send (completed after the append, released if it fails).
    Fresh(Key),
    /// Already stored within the window, here.
    Duplicate(Stored),
}

/// Releases this request's reservations (its append failed, or another of its ids was refused).
fn release(broker: &Broker, reserved: &[Reserved]) {
    broker.dedup.release_all(reserved.iter().filter_map(|r| match r {
        Reserved::Fresh(key) => Some(*key),
        _ => None,
    }));
}

/// Reserves every producer-given id of the batch, or finds its earlier copy (in memory, or in the store's
/// index when the table cannot be complete). A second send of an id being stored right now is refused as busy
/// (its retry gets the duplicate answer); an id twice in one request is refused as invalid.
async fn dedup_reserve(
    broker: &Arc<Broker>,
    topic: &str,
    messages: &[NewMessage],
    given_ids: &[bool],
    now: u64,
) -> Result<Vec<Reserved>> {
    let keys: Vec<Option<Key>> =
        messages.iter().zip(given_ids).map(|(m, &given)| given.then(|| broker.dedup.key(topic, &m.msg_id))).collect();
    let found = broker.dedup.reserve_all(&keys, now);
    let mut reserved: Vec<Reserved> = found
        .iter()
        .zip(&keys)
        .map(|(r, k)| match (r, k) {
            (Some(Reservation::Fresh), Some(k)) => Reserved::Fresh(*k),
            (Some(Reservation::Duplicate(stored)), _) => Reserved::Duplicate(*stored),
            _ => Reserved::Unchecked,
        })
        .collect();
    if let Some(i) = found.iter().position(|r| *r == Some(Reservation::InFlight)) {
        release(broker, &reserved);
        let id = &messages[i].msg_id;
        // Reserved earlier in this very request (the rare case, so found by a scan only here): invalid.
        if keys[..i].contains(&keys[i]) {
            return Err(BrokerError::invalid("message_id", format!("message {i}: {id:?} twice in one request")));
        }
        return Err(BrokerError::Busy { reason: format!("message id {id:?} is being stored") });
    }
    if broker.dedup.needs_index(now) && reserved.iter().any(|r| matches!(r, Reserved::Fresh { .. })) {
        // Restarted within a window of the store's newest message: a miss in memory is not proof, the index decides.
        let wanted: Vec<(usize, String, String)> = reserved
            .iter()
            .zip(messages)
            .enumerate()
            .filter_map(|(i, (r, m))| match r {
                Reserved::Fresh(_) => Some((i, topic.to_owned(), m.msg_id.clone())),
                _ => None,
            })
            .collect();
        let since = now.saturating_sub(broker.dedup.window_ms());
        let found = broker
            .blocking(move |b| {
                let mut found = Vec::new();
                for (i, topic, id) in wanted {
                    let copies = b.store.query_all_by_id(&id, 16, since, u64::MAX)?;
                    // Newest first: the last copy in the topic is the first send.
                    // The first copy may be a delayed or half message's, in a system topic naming the real one.
                    let in_topic = |m: &StoredMessage| {
                        m.topic() == topic || m.property(PROP_REAL_TOPIC).is_some_and(|t| t == topic)
                    };
                    if let Some(m) = copies.iter().rev().find(|m| in_topic(m)) {
                        // A delayed or half message's first copy sits in a system topic: its real queue and
                        // delivery time are properties.
                        let real_queue = m.property(PROP_REAL_QUEUE_ID).and_then(|q| q.parse().ok());
                        let stored = Stored {
                            queue_id: real_queue.unwrap_or_else(|| m.queue_id()),
                            queue_offset: m.queue_offset().0,
                            commit_log_offset: m.physical_offset().0,
                            deliver_at: timer::deliver_at(m),
                        };
                        found.push((i, stored));
                    }
                }
                Ok(found)
            })
            .await;
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                release(broker, &reserved);
                return Err(e);
            }
        };
        for (i, stored) in found {
            if let Some(Reserved::Fresh(key)) = reserved.get(i) {
                broker.dedup.complete(*key, stored);
            }
            reserved[i] = Reserved::Duplicate(stored);
        }
    }
    Ok(reserved)
}

/// Appends the fresh messages (all one topic and queue) under a send permit. Gives them back with their store
/// results, in order. (The sync-replication wait is the caller's, after its bookkeeping.)
async fn append(broker: &Arc<Broker>, messages: Vec<NewMessage>) -> Result<(Vec<NewMessage>, Vec<AppendResult>)> {
    if messages.is_empty() {
        return Ok((messages, Vec::new()));
    }
    // Back-pressure: a full broker answers at once with the one retryable busy status rather than queueing.
    let permit = Arc::clone(&broker.sends).try_acquire_owned().map_err(|_| BrokerError::Busy {
        reason: format!("{} sends in flight", broker.config.broker.max_inflight_sends),
    })?;
    let bytes: usize = messages.iter().map(|m| m.body.len()).sum();
    let (results, messages) = if broker.config.store.flush_mode == FlushMode::Async && bytes <= INLINE_APPEND_MAX {
        // Async flush: the append is a copy into the page cache under the writer lock (microseconds), cheaper
        // in place than two thread hand-offs to the blocking pool and back. Larger batches (a copy of several
        // milliseconds, or a segment roll) still go to the pool so they never stall an async worker.
        let results = broker.store.append_batch(&messages);
        drop(permit);
        (results?, messages)
    } else {
        // Sync flush: the append waits for the group commit's fsync, which must not stall an async worker.
        // Same for a large async batch.
        broker
            .blocking(move |b| {
                // The permit lives until the store answers, even if the caller gave up meanwhile.
                let _permit = permit;
                Ok((b.store.append_batch(&messages)?, messages))
            })
            .await?
    };
    // Parked slave fetches learn of the new bytes now rather than after the dispatcher's pass.
    broker.ha.on_appended();
    Ok((messages, results))
}

/// Largest batch (body bytes) an async-flush send appends in place on the async worker.
const INLINE_APPEND_MAX: usize = 1 << 20;

/// What every message of one request shares.
#[derive(Clone, Copy)]
struct Target<'a> {
    topic: &'a str,
    queue_id: u32,
    max_size: usize,
    born_host: SocketAddr,
    now: u64,
    /// `messaging.max-delay-ms`.
    max_delay: u64,
}

impl Target<'_> {
    /// Validates message `index` of the request and turns it into a store message, with its delivery time
    /// (0 = visible now; otherwise the message is addressed to the timer topic).
    fn message(&self, broker: &Broker, m: pb::OutgoingMessage, index: usize) -> Result<(NewMessage, u64)> {
        let Target { topic, queue_id, max_size, born_host, now, max_delay } = *self;
        let at = |what: &str| format!("message {index}: {what}");
        if m.body.is_empty() {
            return Err(BrokerError::invalid("body", at("the body is empty")));
        }
        if m.body.len() > max_size {
            return Err(BrokerError::invalid(
                "body",
                at(&format!("{} bytes exceed the {max_size}-byte max-message-size", m.body.len())),
            ));
        }
        if m.message_id.len() > MAX_MSG_ID_LEN {
            return Err(BrokerError::invalid("message_id", at(&format!("longer than {MAX_MSG_ID_LEN} bytes"))));
        }
        if m.tags.len() > MAX_TAGS_LEN || m.tags.contains("||") {
            return Err(BrokerError::invalid("tags", at(&format!("one tag, at most {MAX_TAGS_LEN} bytes, no '||'"))));
        }
        if m.keys.len() > MAX_KEYS {
            return Err(BrokerError::invalid("keys", at(&format!("more than {MAX_KEYS} keys"))));
        }
        if m.keys.iter().any(|k| k.is_empty() || k.contains(char::is_whitespace)) {
            return Err(BrokerError::invalid("keys", at("keys must be non-empty and contain no whitespace")));
        }
        if let Some((key, _)) = m.properties.iter().find(|(k, _)| RESERVED_PROPERTIES.contains(&k.as_str())) {
            return Err(BrokerError::invalid("properties", at(&format!("{key:?} is reserved for the broker"))));
        }
        let deliver_at = match (m.deliver_at_millis, m.delay_millis) {
            (0, 0) => 0,
            (at, 0) => at,
            (0, delay) => now.saturating_add(delay),
            _ => {
                return Err(BrokerError::invalid(
                    "deliver_at_millis",
                    at("set deliver_at_millis or delay_millis, not both"),
                ));
            }
        };
        if deliver_at > now && deliver_at - now > max_delay {
            let field = if m.delay_millis > 0 { "delay_millis" } else { "deliver_at_millis" };
            return Err(BrokerError::invalid(
                field,
                at(&format!(
                    "{} ms ahead exceeds the broker's longest delay, messaging.max-delay-ms = {max_delay}",
                    deliver_at - now
                )),
            ));
        }
        // A time not in the future: deliver now.
        let deliver_at = if deliver_at > now { deliver_at } else { 0 };
        let mut properties: Vec<(String, String)> = m.properties.into_iter().collect();
        // Map order is random on the wire; store a stable order.
        properties.sort_unstable();
        let message = NewMessage {
            topic: topic.to_owned(),
            queue_id,
            msg_id: if m.message_id.is_empty() { broker.next_message_id() } else { m.message_id },
            tags: m.tags,
            keys: m.keys.join(" "),
            properties,
            body: m.body,
            flag: m.flag,
            sys_flag: 0,
            born_timestamp: if m.born_timestamp_millis == 0 { now } else { m.born_timestamp_millis },
            born_host,
            reconsume_times: 0,
            prepared_transaction_offset: 0,
        };
        if deliver_at == 0 {
            return Ok((message, 0));
        }
        Ok((timer::wrap(message, deliver_at), deliver_at))
    }
}
