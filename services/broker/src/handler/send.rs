//! SendMessage: validate (system topics and reserved properties are refused), pick the queue, readdress delayed
//! messages to the timer topic, store the batch under a send permit (in place with async flush, on the
//! blocking pool with sync flush), and with sync replication wait until enough slaves hold it.

use std::net::SocketAddr;
use std::sync::Arc;

use comet_proto::comet::v1 as pb;
use comet_store::record::{MAX_KEYS, MAX_MSG_ID_LEN, MAX_TAGS_LEN};
use comet_store::{FlushMode, NewMessage};

use comet_model::system::{RESERVED_PROPERTIES, TIMER_TOPIC, is_system_topic};

use super::{check_group, check_topic};
use crate::broker::{Broker, now_ms};
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
    let count = request.messages.len();
    let mut messages = Vec::with_capacity(count);
    // Delivery times, allocated only once a request holds a delayed message.
    let mut deliver_at: Option<Vec<u64>> = None;
    let mut body_bytes = 0u64;
    for (i, m) in request.messages.into_iter().enumerate() {
        body_bytes += m.body.len() as u64;
        let (message, at) = target.message(broker, m, i)?;
        if at > 0 {
            deliver_at.get_or_insert_with(|| vec![0; count])[i] = at;
        }
        messages.push(message);
    }
    if deliver_at.is_some() && broker.topics.get(TIMER_TOPIC).is_none() {
        // The timer creates its topic at start-up; this only runs if an admin deleted it since.
        broker.blocking(|b| b.system_topic(TIMER_TOPIC, 1).map(drop)).await?;
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
    broker.metrics.sent(&request.topic, topic.message_type, results.len() as u64, body_bytes);
    // Parked slave fetches learn of the new bytes now rather than after the dispatcher's pass.
    broker.ha.on_appended();
    if broker.ha.is_sync()
        && let (Some(first), Some(last)) = (results.first(), results.last())
    {
        // Sync replication: stored (and counted) above, acknowledged only once enough slaves hold the whole batch.
        let end = last.offset.0 + u64::from(last.size);
        broker.ha.wait_replicated(end, first.offset.0).await?;
    }
    Ok(pb::SendMessageResponse {
        results: results
            .iter()
            .zip(messages)
            .enumerate()
            .map(|(i, (r, m))| pb::SendResult {
                message_id: m.msg_id,
                queue_id,
                queue_offset: r.queue_offset.0,
                commit_log_offset: r.offset.0,
                duplicate: false,
                deliver_at_millis: deliver_at.as_ref().and_then(|d| d.get(i).copied()).unwrap_or(0),
            })
            .collect(),
    })
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
