//! Queue positions and lookups: GetQueueOffsets, SearchOffset, QueryMessageById, QueryMessagesByKey.

use std::sync::Arc;

use comet_proto::comet::v1 as pb;

use super::{check_read_queue, check_topic};
use crate::broker::{Broker, now_ms};
use crate::edge::convert;
use crate::error::{BrokerError, Result};

/// First and end offsets of a queue (0, 0 for a queue that never received a message).
pub fn queue_offsets(broker: &Broker, request: pb::GetQueueOffsetsRequest) -> Result<pb::GetQueueOffsetsResponse> {
    check_read_queue(broker, &request.topic, request.queue_id)?;
    let (min, max) = broker.store.queue_range(&request.topic, request.queue_id).map_or((0, 0), |(a, b)| (a.0, b.0));
    Ok(pb::GetQueueOffsetsResponse { min_offset: min, max_offset: max })
}

/// The first offset stored at or after a time (the end if none).
pub async fn search_offset(broker: &Arc<Broker>, request: pb::SearchOffsetRequest) -> Result<pb::SearchOffsetResponse> {
    check_read_queue(broker, &request.topic, request.queue_id)?;
    let offset = broker
        .blocking(move |b| {
            Ok(b.store.offset_by_time(&request.topic, request.queue_id, request.timestamp_millis).map_or(0, |o| o.0))
        })
        .await?;
    Ok(pb::SearchOffsetResponse { offset })
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
