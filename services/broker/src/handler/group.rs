//! Subscription-group admin: CreateGroup, UpdateGroup, DeleteGroup, ListGroups, DescribeGroup. Changes are
//! persisted before they are answered; slaves copy the whole group table from their master (ha/slave.rs).

use std::sync::Arc;

use comet_proto::comet::v1 as pb;

use super::check_group;
use crate::broker::{Broker, now_ms};
use crate::domain::groups::GroupConfig;
use crate::edge::convert;
use crate::error::{BrokerError, Result};

/// The group config of a create or update, checked (master only, name, retry delays).
fn checked(broker: &Broker, group: Option<pb::GroupConfig>) -> Result<GroupConfig> {
    broker.require_master("group change")?;
    let group = group.ok_or_else(|| BrokerError::invalid("group", "missing"))?;
    check_group(&group.name)?;
    crate::domain::retry::check_delays(&group.retry_delays_millis)
        .map_err(|why| BrokerError::invalid("retry_delays_millis", why))?;
    Ok(convert::group_from_proto(group))
}

/// Creates a group (ALREADY_EXISTS if it exists).
pub async fn create(broker: &Arc<Broker>, request: pb::CreateGroupRequest) -> Result<pb::CreateGroupResponse> {
    let config = checked(broker, request.group)?;
    let created = broker.blocking(move |b| b.groups.create(config)).await?;
    Ok(pb::CreateGroupResponse { group: Some(convert::group_to_proto(&created)) })
}

/// Replaces a group's config (NOT_FOUND if it does not exist); committed offsets and members are kept.
pub async fn update(broker: &Arc<Broker>, request: pb::UpdateGroupRequest) -> Result<pb::UpdateGroupResponse> {
    let config = checked(broker, request.group)?;
    let updated = broker.blocking(move |b| b.groups.update(config)).await?;
    tracing::info!(group = %updated.name, fifo = updated.fifo, consume_enable = updated.consume_enable, "group updated");
    Ok(pb::UpdateGroupResponse { group: Some(convert::group_to_proto(&updated)) })
}

/// Deletes a group and its committed offsets (NOT_FOUND if it does not exist).
pub async fn delete(broker: &Arc<Broker>, request: pb::DeleteGroupRequest) -> Result<pb::DeleteGroupResponse> {
    broker.require_master("group change")?;
    check_group(&request.group)?;
    broker
        .blocking(move |b| {
            b.groups.delete(&request.group)?;
            b.offsets.remove_group(&request.group);
            b.pulled.remove_group(&request.group);
            b.receive.remove_group(&request.group);
            b.metrics.forget_group(&request.group);
            Ok(())
        })
        .await?;
    Ok(pb::DeleteGroupResponse {})
}

/// Every group, sorted by name.
pub fn list(broker: &Broker) -> pb::ListGroupsResponse {
    pb::ListGroupsResponse { groups: broker.groups.list().iter().map(convert::group_to_proto).collect() }
}

/// A group's config, live members and per-queue progress; NOT_FOUND when the broker knows nothing of it.
pub fn describe(broker: &Broker, request: pb::DescribeGroupRequest) -> Result<pb::DescribeGroupResponse> {
    check_group(&request.group)?;
    let config = broker.groups.get(&request.group);
    let members = broker.clients.consumers(&request.group, now_ms());
    let offsets: Vec<pb::GroupQueueOffset> = broker
        .offsets
        .group_offsets(&request.group)
        .into_iter()
        .map(|(topic, queue_id, committed)| {
            let (min, max) = broker.store.queue_range(&topic, queue_id).map_or((0, 0), |(a, b)| (a.0, b.0));
            let lag = max.saturating_sub(committed.0.max(min));
            pb::GroupQueueOffset {
                topic,
                queue_id,
                committed_offset: committed.0,
                min_offset: min,
                max_offset: max,
                lag,
            }
        })
        .collect();
    if config.is_none() && members.is_empty() && offsets.is_empty() {
        return Err(BrokerError::GroupNotFound { group: request.group });
    }
    Ok(pb::DescribeGroupResponse {
        group: config.as_ref().map(convert::group_to_proto),
        members: members.into_iter().map(convert::member_to_proto).collect(),
        offsets,
    })
}
