//! Queue positions and lookups: GetQueueOffsets, SearchOffset, QueryMessageById, QueryMessagesByKey.

use std::sync::Arc;

use comet_model::QueueOffset;
use comet_proto::comet::v1 as pb;

use super::{check_read_queue, check_topic};
use crate::broker::{Broker, now_ms};
use crate::edge::convert;
use crate::error::{BrokerError, Result};

/// First and end offsets of a queue (0, 0 for a queue that never received a message).
pub fn queue_offsets(broker: &Broker, request: pb::GetQueueOffsetsRequest) -> Result<pb::GetQueueOffsetsResponse> {
    let (min, max) = queue_range(broker, &request.topic, request.queue_id)?;
    Ok(pb::GetQueueOffsetsResponse { min_offset: min.0, max_offset: max.0 })
}

/// First and end offsets of a read queue of an existing topic ((0, 0) for a queue that never received a
/// message), whichever API asks (comet.v1 GetQueueOffsets, RocketMQ 5 QueryOffset BEGINNING/END).
pub(crate) fn queue_range(broker: &Broker, topic: &str, queue_id: u32) -> Result<(QueueOffset, QueueOffset)> {
    check_read_queue(broker, topic, queue_id)?;
    Ok(broker.store.queue_range(topic, queue_id).unwrap_or((QueueOffset(0), QueueOffset(0))))
}

/// The first offset stored at or after a time (the end if none).
pub async fn search_offset(broker: &Arc<Broker>, request: pb::SearchOffsetRequest) -> Result<pb::SearchOffsetResponse> {
    let offset = offset_at(broker, request.topic, request.queue_id, request.timestamp_millis).await?;
    Ok(pb::SearchOffsetResponse { offset: offset.0 })
}

/// The first offset of a read queue stored at or after `timestamp_ms` (the end if none; 0 for a queue that never
/// received a message), whichever API asks (comet.v1 SearchOffset, RocketMQ 5 QueryOffset TIMESTAMP).
pub(crate) async fn offset_at(
    broker: &Arc<Broker>,
    topic: String,
    queue_id: u32,
    timestamp_ms: u64,
) -> Result<QueueOffset> {
    check_read_queue(broker, &topic, queue_id)?;
    broker.blocking(move |b| Ok(b.store.offset_by_time(&topic, queue_id, timestamp_ms).unwrap_or(QueueOffset(0)))).await
}

/// The message with an id (NOT_FOUND if none).
pub async fn by_id(broker: &Arc<Broker>, request: pb::QueryMessageByIdRequest) -> Result<pb::QueryMessageByIdResponse> {
    if request.message_id.is_empty() || request.message_id.len() > comet_store::record::MAX_MSG_ID_LEN {
        return Err(BrokerError::invalid("message_id", "must be 1..=128 bytes"));
    }
    let id = request.message_id.clone();
    let found = broker.blocking(move |b| Ok(b.store.query_by_id(&id)?)).await?;
    match found {
        Some(m) => Ok(pb::QueryMessageByIdResponse { message: Some(convert::message_to_proto(&m)) }),
        None => Err(BrokerError::MessageNotFound { what: format!("id {:?}", request.message_id) }),
    }
}

/// Messages of a topic with a key, newest first.
pub async fn by_key(
    broker: &Arc<Broker>,
    request: pb::QueryMessagesByKeyRequest,
) -> Result<pb::QueryMessagesByKeyResponse> {
    check_topic(&request.topic)?;
    if request.key.is_empty() || request.key.contains(char::is_whitespace) {
        return Err(BrokerError::invalid("key", "must be non-empty without whitespace"));
    }
    let max = match request.max_count {
        0 => 32,
        n => n.min(1000),
    } as usize;
    let end = if request.end_timestamp_millis == 0 { now_ms() } else { request.end_timestamp_millis };
    let begin = request.begin_timestamp_millis;
    let found =
        broker.blocking(move |b| Ok(b.store.query_by_key(&request.topic, &request.key, max, begin, end)?)).await?;
    Ok(pb::QueryMessagesByKeyResponse { messages: convert::messages_to_proto(&found) })
}
