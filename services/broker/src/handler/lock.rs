//! LockQueues and UnlockQueues: the queue locks of orderly consumption (domain/locks.rs). Only on a master (a
//! slave's table would be a second, disagreeing one), only for live members of the group, only for read queues
//! of an existing topic.

use comet_proto::comet::v1 as pb;

use super::{check_group, check_read_queue};
use crate::broker::{Broker, now_ms};
use crate::error::{BrokerError, Result};

/// Most queue ids in one request (a topic has at most a few hundred queues).
const MAX_QUEUES_PER_REQUEST: usize = 1024;

/// Checks the fields both requests share.
fn check(broker: &Broker, group: &str, client_id: &str, topic: &str, queue_ids: &[u32]) -> Result<()> {
    check_group(group)?;
    if client_id.is_empty() || client_id.len() > 255 {
        return Err(BrokerError::invalid("client_id", "must be 1..=255 bytes"));
    }
    if queue_ids.len() > MAX_QUEUES_PER_REQUEST {
        return Err(BrokerError::invalid("queue_ids", format!("at most {MAX_QUEUES_PER_REQUEST} per request")));
    }
    for &queue_id in queue_ids {
        check_read_queue(broker, topic, queue_id)?;
    }
    broker.require_master("queue lock")
}

/// Grants the caller the free, expired or own locks among the queues asked for (renewing its own), and answers
/// the set it holds with the lease.
pub fn lock(broker: &Broker, request: pb::LockQueuesRequest) -> Result<pb::LockQueuesResponse> {
    check(broker, &request.group, &request.client_id, &request.topic, &request.queue_ids)?;
    let now = now_ms();
    if !broker.clients.is_live_member(&request.group, &request.client_id, now) {
        return Err(BrokerError::NotPermitted {
            what: "queue lock",
            reason: format!(
                "client {:?} is not a live member of group {:?}: send a heartbeat first",
                request.client_id, request.group
            ),
        });
    }
    let locked = broker.locks.lock(&request.group, &request.topic, &request.client_id, &request.queue_ids, now, |c| {
        broker.clients.is_live_member(&request.group, c, now)
    });
    tracing::debug!(group = %request.group, topic = %request.topic, client_id = %request.client_id,
        asked = ?request.queue_ids, ?locked, "queue locks");
    Ok(pb::LockQueuesResponse { locked_queue_ids: locked, lease_millis: broker.locks.lease_ms() })
}

/// Releases the caller's locks among the queues named (others' locks are left alone).
pub fn unlock(broker: &Broker, request: pb::UnlockQueuesRequest) -> Result<pb::UnlockQueuesResponse> {
    check(broker, &request.group, &request.client_id, &request.topic, &request.queue_ids)?;
    broker.locks.unlock(&request.group, &request.topic, &request.client_id, &request.queue_ids);
    tracing::debug!(group = %request.group, topic = %request.topic, client_id = %request.client_id,
        queues = ?request.queue_ids, "queue locks released");
    Ok(pb::UnlockQueuesResponse {})
}
