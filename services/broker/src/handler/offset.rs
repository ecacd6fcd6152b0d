//! QueryConsumerOffset and CommitConsumerOffset.

use comet_model::QueueOffset;
use comet_proto::comet::v1 as pb;

use super::{check_group, check_read_queue};
use crate::broker::Broker;
use crate::error::{BrokerError, Result};

/// The group's committed offset of a queue (`found = false` when it never committed).
pub fn query(broker: &Broker, request: pb::QueryConsumerOffsetRequest) -> Result<pb::QueryConsumerOffsetResponse> {
    check_group(&request.group)?;
    check_read_queue(broker, &request.topic, request.queue_id)?;
    Ok(match broker.offsets.query(&request.group, &request.topic, request.queue_id) {
        Some(o) => pb::QueryConsumerOffsetResponse { found: true, offset: o.0 },
        None => pb::QueryConsumerOffsetResponse { found: false, offset: 0 },
    })
}

/// Records the group's next offset of a queue; refuses offsets beyond the queue's end.
pub fn commit(broker: &Broker, request: pb::CommitConsumerOffsetRequest) -> Result<pb::CommitConsumerOffsetResponse> {
    check_group(&request.group)?;
    check_read_queue(broker, &request.topic, request.queue_id)?;
    let max = broker.store.queue_range(&request.topic, request.queue_id).map_or(0, |(_, max)| max.0);
    if request.offset > max {
        return Err(BrokerError::OutOfRange {
            field: "offset",
            reason: format!("{} is beyond the end {max} of {}:{}", request.offset, request.topic, request.queue_id),
        });
    }
    broker.offsets.commit(&request.group, &request.topic, request.queue_id, QueueOffset(request.offset));
    Ok(pb::CommitConsumerOffsetResponse {})
}
