//! Subscription-group admin: CreateGroup, DeleteGroup, ListGroups.

use std::sync::Arc;

use comet_proto::comet::v1 as pb;

use super::check_group;
use crate::broker::Broker;
use crate::edge::convert;
use crate::error::{BrokerError, Result};

/// Creates a group (ALREADY_EXISTS if it exists).
pub async fn create(broker: &Arc<Broker>, request: pb::CreateGroupRequest) -> Result<pb::CreateGroupResponse> {
    let group = request.group.ok_or_else(|| BrokerError::invalid("group", "missing"))?;
    check_group(&group.name)?;
    let config = convert::group_from_proto(group);
    let created = broker.blocking(move |b| b.groups.create(config)).await?;
    Ok(pb::CreateGroupResponse { group: Some(convert::group_to_proto(&created)) })
}

/// Deletes a group and its committed offsets (NOT_FOUND if it does not exist).
pub async fn delete(broker: &Arc<Broker>, request: pb::DeleteGroupRequest) -> Result<pb::DeleteGroupResponse> {
    check_group(&request.group)?;
    broker
        .blocking(move |b| {
            b.groups.delete(&request.group)?;
            b.offsets.remove_group(&request.group);
            Ok(())
        })
        .await?;
    Ok(pb::DeleteGroupResponse {})
}

/// Every group, sorted by name.
pub fn list(broker: &Broker) -> pb::ListGroupsResponse {
    pb::ListGroupsResponse { groups: broker.groups.list().iter().map(convert::group_to_proto).collect() }
}
