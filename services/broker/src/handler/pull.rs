//! PullMessage with long polling: read; if nothing matched, park on the queue's notifier until a message is
//! dispatched, the deadline passes, or the broker shuts down, then read again.

use std::sync::Arc;
use std::time::Duration;

use comet_model::QueueOffset;
use comet_proto::comet::v1 as pb;
use comet_store::{GetMessages, GetStatus, StoredMessage};
use tokio::time::Instant;

use super::{check_group, check_topic};
use crate::broker::Broker;
use crate::domain::filter::TagFilter;
use crate::edge::convert;
use crate::error::{BrokerError, Result};

/// Default and largest `max_count`.
const DEFAULT_MAX_COUNT: u32 = 32;
const MAX_COUNT: u32 = 1024;
/// Default and largest `max_bytes`.
const DEFAULT_MAX_BYTES: u32 = 4 << 20;
const MAX_BYTES: u32 = 16 << 20;

/// Answers a comet.v1 pull over gRPC: messages, or a status with the offsets to continue from.
pub async fn pull(broker: &Arc<Broker>, request: pb::PullMessageRequest) -> Result<pb::PullMessageResponse> {
    Ok(pull_stored(broker, request).await?.into_proto())
}

/// A comet.v1 pull's answer before encoding: the stored records themselves, which the remoting data path writes
/// to the wire without building a `pb::PullMessageResponse` (`edge::wire`).
#[derive(Debug)]
pub struct Pulled {
    /// Outcome.
    pub status: pb::PullStatus,
    /// Where the next pull should start.
    pub next_offset: u64,
    /// The queue's first offset.
    pub min_offset: u64,
    /// The queue's end.
    pub max_offset: u64,
    /// The messages found (empty unless `status` is FOUND).
    pub messages: Vec<StoredMessage>,
}

impl Pulled {
    /// The answer as the gRPC API returns it.
    pub fn into_proto(self) -> pb::PullMessageResponse {
        pb::PullMessageResponse {
            status: self.status.into(),
            messages: convert::messages_to_proto(&self.messages),
            next_offset: self.next_offset,
            min_offset: self.min_offset,
            max_offset: self.max_offset,
        }
    }
}

/// Answers a comet.v1 pull (over gRPC or the remoting data path) with the records read.
pub async fn pull_stored(broker: &Arc<Broker>, request: pb::PullMessageRequest) -> Result<Pulled> {
    check_group(&request.group)?;
    check_topic(&request.topic)?;
    // The group's consumption-model check (the topic, queue and consume-enable checks are in `read_or_wait`).
    super::client::check_broadcast_pull(broker, &request.group)?;
    let query = PullQuery {
        filter: Arc::new(request.tag_expression.parse()?),
        max_count: request.max_count,
        max_bytes: request.max_bytes,
        wait: Duration::from_millis(u64::from(request.max_wait_millis).min(broker.config.broker.max_pull_wait_ms)),
        offset: QueueOffset(request.offset),
        queue_id: request.queue_id,
        topic: request.topic,
        group: request.group,
    };
    let (got, from) = pull_queue(broker, &query).await?;
    Ok(outcome(got, from))
}

/// One queue read of a consumer group, whichever API asked for it (comet.v1 PullMessage, or the RocketMQ 5
/// PullMessage of v2/pull.rs). Names are already checked.
#[derive(Debug, Clone)]
pub(crate) struct PullQuery {
    /// Consumer group (its consume-enable switch applies).
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Queue of the topic (must be a read queue).
    pub queue_id: u32,
    /// First offset wanted.
    pub offset: QueueOffset,
    /// Most messages (0 = 32, capped at 1024).
    pub max_count: u32,
    /// Most body bytes (0 = 4 MiB, capped at 16 MiB).
    pub max_bytes: u32,
    /// Long-poll hold when nothing matches yet (already clamped by the caller).
    pub wait: Duration,
    /// Tag filter.
    pub filter: Arc<TagFilter>,
}

/// Reads one queue for a group, parked until messages arrive when there are none, and counts what was found
/// (pulled-message metrics, the group's pulled position): what was read and where from.
pub(crate) async fn pull_queue(broker: &Arc<Broker>, query: &PullQuery) -> Result<(GetMessages, QueueOffset)> {
    let (got, from) = read_or_wait(broker, query).await?;
    if got.status == GetStatus::Found {
        // One counter update and one position per answer, never per message.
        let bytes: usize = got.messages.iter().map(|m| m.body_len()).sum();
        broker.metrics.pulled(&query.group, &query.topic, got.messages.len() as u64, bytes as u64);
        broker.pulled.record(&query.group, &query.topic, query.queue_id, got.next_offset.0);
    }
    Ok((got, from))
}

/// The read of a pull, parked until messages arrive when there are none: what was read and where from.
async fn read_or_wait(broker: &Arc<Broker>, request: &PullQuery) -> Result<(GetMessages, QueueOffset)> {
    let topic = broker.topic(&request.topic)?;
    if !topic.perm.is_readable() {
        return Err(BrokerError::NotPermitted {
            what: "read",
            reason: format!("topic {:?} has permission {}", topic.name, topic.perm),
        });
    }
    if let Some(group) = broker.groups.get(&request.group)
        && !group.consume_enable
    {
        return Err(BrokerError::NotPermitted { what: "read", reason: format!("group {:?} is disabled", group.name) });
    }
    if request.queue_id >= topic.read_queue_nums {
        return Err(BrokerError::invalid(
            "queue_id",
            format!("{} is not a read queue of {:?} (0..{})", request.queue_id, topic.name, topic.read_queue_nums),
        ));
    }
    let filter = Arc::clone(&request.filter);
    let max_count = match request.max_count {
        0 => DEFAULT_MAX_COUNT,
        n => n.min(MAX_COUNT),
    } as usize;
    let max_bytes = match request.max_bytes {
        0 => DEFAULT_MAX_BYTES,
        n => n.min(MAX_BYTES),
    } as usize;
    let wait = request.wait;
    let deadline = Instant::now() + wait;

    let read = |from: QueueOffset| {
        let (topic, filter) = (request.topic.clone(), Arc::clone(&filter));
        let queue_id = request.queue_id;
        // Nothing to wait for (the queue's end, or data in the page cache): the hand-off to the blocking pool and
        // back would cost more than the read.
        let in_place = broker.store.is_resident(&topic, queue_id, from);
        let get = move |b: &Broker| -> Result<GetMessages> {
            Ok(b.store.get_messages(&topic, queue_id, from, max_count, max_bytes, filter.as_store_filter())?)
        };
        async move { if in_place { get(broker) } else { broker.blocking(get).await } }
    };

    let mut from = request.offset;
    let mut first = read(from).await?;
    if !wants_wait(&first, from) || wait.is_zero() || broker.waiters.is_stopping() {
        return Ok((first, from));
    }
    // Nothing yet: park (bounded), registering interest before each re-read so no arrival is lost.
    let _slot = broker.waiters.park()?;
    let watch = broker.waiters.watch(&request.topic, request.queue_id);
    let mut shutdown = broker.waiters.shutdown_signal();
    tracing::debug!(topic = %request.topic, queue_id = request.queue_id, offset = request.offset.0, "pull parked");
    loop {
        from = next_from(&first, from);
        let arrival = watch.enabled();
        if broker.waiters.is_stopping() {
            return Ok((first, from));
        }
        // After an arrival the messages asked for were just written: resident, so `read` reads them in place,
        // with no blocking-pool round trip on the produce-to-consume latency path.
        let again = read(from).await?;
        if !wants_wait(&again, from) {
            return Ok((again, from));
        }
        let more_to_scan = again.status == GetStatus::NoMatchedMessage && again.next_offset < again.max_offset;
        first = again;
        if more_to_scan && Instant::now() < deadline {
            // The filter skipped a full scan's worth of entries; keep scanning rather than waiting.
            continue;
        }
        tokio::select! {
            () = arrival => {}
            () = &mut shutdown => break,
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    let next = next_from(&first, from);
    Ok((first, next))
}

/// True when the read found nothing to return yet and a parked pull could get more.
fn wants_wait(got: &GetMessages, from: QueueOffset) -> bool {
    match got.status {
        GetStatus::NoNewMessage | GetStatus::NoMatchedMessage => true,
        // An empty queue's end is 0; a pull from beyond it is answered OFFSET_OVERFLOW at once.
        GetStatus::NoSuchQueue => from.0 == 0,
        GetStatus::Found | GetStatus::OffsetMoved | GetStatus::OffsetOverflow => false,
    }
}

/// Where to read next after `got` (past entries the filter skipped).
fn next_from(got: &GetMessages, from: QueueOffset) -> QueueOffset {
    match got.status {
        GetStatus::NoMatchedMessage | GetStatus::NoNewMessage => got.next_offset.max(from),
        _ => from,
    }
}

fn outcome(got: GetMessages, from: QueueOffset) -> Pulled {
    let status = match got.status {
        GetStatus::Found => pb::PullStatus::Found,
        GetStatus::NoNewMessage | GetStatus::NoMatchedMessage | GetStatus::NoSuchQueue => pb::PullStatus::NoNewMessage,
        GetStatus::OffsetMoved => pb::PullStatus::OffsetMoved,
        GetStatus::OffsetOverflow => pb::PullStatus::OffsetOverflow,
    };
    // A queue that never received a message is empty: offset 0 is its end, anything above overflows.
    let (status, next) = match got.status {
        GetStatus::NoSuchQueue if from.0 > 0 => (pb::PullStatus::OffsetOverflow, QueueOffset(0)),
        GetStatus::NoSuchQueue => (status, QueueOffset(0)),
        GetStatus::NoNewMessage | GetStatus::NoMatchedMessage => (status, got.next_offset.max(from)),
        _ => (status, got.next_offset),
    };
    Pulled {
        status,
        next_offset: next.0,
        min_offset: got.min_offset.0,
        max_offset: got.max_offset.0,
        messages: got.messages,
    }
}
