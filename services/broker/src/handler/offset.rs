//! QueryConsumerOffset and CommitConsumerOffset.

use comet_model::QueueOffset;
use comet_proto::comet::v1 as pb;

use super::{check_group, check_read_queue};
use crate::broker::Broker;
use crate::error::{BrokerError, Result};

/// The group's committed offset of a queue (`found = false` when it never committed).
pub fn query(broker: &Broker, request: pb::QueryConsumerOffsetRequest) -> Result<pb::QueryConsumerOffsetResponse> {
    check_group(&request.group)?;
    Ok(match committed(broker, &request.group, &request.topic, request.queue_id)? {
        Some(o) => pb::QueryConsumerOffsetResponse { found: true, offset: o.0 },
        None => pb::QueryConsumerOffsetResponse { found: false, offset: 0 },
    })
}

/// Records the group's next offset of a queue; refuses offsets beyond the queue's end.
pub fn commit(broker: &Broker, request: pb::CommitConsumerOffsetRequest) -> Result<pb::CommitConsumerOffsetResponse> {
    check_group(&request.group)?;
    commit_offset(broker, &request.group, &request.topic, request.queue_id, QueueOffset(request.offset))?;
    Ok(pb::CommitConsumerOffsetResponse {})
}

/// The offset `group` committed for a read queue of an existing topic (`None` if it never committed), whichever
/// API asks (comet.v1 QueryConsumerOffset, RocketMQ 5 GetOffset). The group name is already checked.
pub(crate) fn committed(broker: &Broker, group: &str, topic: &str, queue_id: u32) -> Result<Option<QueueOffset>> {
    check_read_queue(broker, topic, queue_id)?;
    Ok(broker.offsets.query(group, topic, queue_id))
}

/// Commits `group`'s next offset of a read queue of an existing topic, whichever API asks (comet.v1
/// CommitConsumerOffset, RocketMQ 5 UpdateOffset); [`BrokerError::OutOfRange`] (field `offset`) beyond the
/// queue's end. The group name is already checked.
pub(crate) fn commit_offset(
    broker: &Broker,
    group: &str,
    topic: &str,
    queue_id: u32,
    offset: QueueOffset,
) -> Result<()> {
    check_read_queue(broker, topic, queue_id)?;
    let max = broker.store.queue_range(topic, queue_id).map_or(0, |(_, max)| max.0);
    if offset.0 > max {
        return Err(BrokerError::OutOfRange {
            field: "offset",
            reason: format!("{} is beyond the end {max} of {topic}:{queue_id}", offset.0),
        });
    }
    broker.offsets.commit(group, topic, queue_id, offset);
    Ok(())
}
