//! Client heartbeats, UnregisterClient and GetConsumerList.

use std::sync::Arc;

use comet_proto::comet::v1 as pb;

use super::{check_group, check_topic};
use crate::broker::{Broker, now_ms};
use crate::domain::clients::MessageModel;
use crate::edge::convert;
use crate::error::{BrokerError, Result};

/// The refusal of broadcasting consumption by a group whose config forbids it.
fn broadcast_refused(group: &str) -> BrokerError {
    BrokerError::NotPermitted {
        what: "broadcasting consumption",
        reason: format!(
            "group {group:?} has consume_broadcast_enable off; consume in clustering mode or re-create the group"
        ),
    }
}

/// Refuses a pull of `group` while a live member of it consumes in broadcasting mode and the group's config
/// forbids that (RocketMQ's pull check: a pull carries no client id, so the group's registered model decides).
pub(super) fn check_broadcast_pull(broker: &Broker, group: &str) -> Result<()> {
    if broker.groups.broadcast_disabled(group)
        && broker.clients.has_live_member_with(group, MessageModel::Broadcasting, now_ms())
    {
        return Err(broadcast_refused(group));
    }
    Ok(())
}

/// Records a client's producer and consumer groups (creating unknown subscription groups if configured).
pub async fn heartbeat(
    broker: &Arc<Broker>,
    request: pb::ClientHeartbeatRequest,
) -> Result<pb::ClientHeartbeatResponse> {
    if request.client_id.is_empty() || request.client_id.len() > 255 {
        return Err(BrokerError::invalid("client_id", "must be 1..=255 bytes"));
    }
    if request.language.len() > 32 || request.version.len() > 64 {
        return Err(BrokerError::invalid("language", "language is at most 32 bytes, version at most 64"));
    }
    for group in &request.producer_groups {
        check_group(group)?;
    }
    let mut consumers = Vec::with_capacity(request.consumer_groups.len());
    for c in request.consumer_groups {
        check_group(&c.group)?;
        for s in &c.subscriptions {
            check_topic(&s.topic)?;
            s.expression.parse::<crate::domain::filter::TagFilter>()?;
        }
        consumers.push(convert::consumer_heartbeat_from_proto(c));
    }
    let new_groups: Vec<String> =
        consumers.iter().filter(|c| broker.groups.get(&c.group).is_none()).map(|c| c.group.clone()).collect();
    if broker.config.broker.auto_create_groups && !new_groups.is_empty() {
        broker
            .blocking(move |b| {
                for g in &new_groups {
                    b.groups.ensure(g)?;
                }
                Ok(())
            })
            .await?;
    }
    // A clustering group's retry topic exists from its first heartbeat (RocketMQ does the same), so its members
    // find it in the route and read it from the start, before the first failed message goes there.
    let retry_topics: Vec<String> = consumers
        .iter()
        .filter(|c| c.model == MessageModel::Clustering)
        .map(|c| comet_model::system::retry_topic(&c.group))
        .filter(|t| broker.topics.get(t).is_none())
        .collect();
    if !retry_topics.is_empty() && !broker.config.is_slave() {
        broker
            .blocking(move |b| {
                for topic in &retry_topics {
                    b.system_topic(topic, 1)?;
                }
                Ok(())
            })
            .await?;
    }
    // Checked after auto-creation, which always allows broadcasting; so only a configured refusal applies.
    let refused = consumers
        .iter()
        .find(|c| c.model == MessageModel::Broadcasting && broker.groups.broadcast_disabled(&c.group))
        .map(|c| broadcast_refused(&c.group));
    let consumer_groups: Vec<&str> = consumers.iter().map(|c| c.group.as_str()).collect();
    tracing::debug!(client_id = %request.client_id, producer_groups = ?request.producer_groups, ?consumer_groups,
        refused = refused.is_some(), "client heartbeat");
    // A refused member is still recorded, as RocketMQ registers it: the broker then knows the group has a
    // broadcasting member and refuses its pulls (which carry no client id) for as long as it heartbeats.
    let info = crate::domain::clients::ClientInfo { language: request.language, version: request.version };
    broker.clients.heartbeat(&request.client_id, &info, &request.producer_groups, consumers, now_ms());
    match refused {
        Some(error) => Err(error),
        None => Ok(pb::ClientHeartbeatResponse {}),
    }
}

/// Removes a client from its groups at once (clean consumer shutdown).
pub fn unregister(broker: &Broker, request: pb::UnregisterClientRequest) -> Result<pb::UnregisterClientResponse> {
    if request.client_id.is_empty() {
        return Err(BrokerError::invalid("client_id", "must not be empty"));
    }
    broker.clients.unregister(&request.client_id, &request.groups);
    broker.locks.release_client(&request.client_id, &request.groups);
    Ok(pb::UnregisterClientResponse {})
}

/// Live members of a consumer group, sorted by client id.
pub fn consumer_list(broker: &Broker, request: pb::GetConsumerListRequest) -> Result<pb::GetConsumerListResponse> {
    check_group(&request.group)?;
    let members = broker.clients.consumers(&request.group, now_ms());
    Ok(pb::GetConsumerListResponse {
        client_ids: members.iter().map(|m| m.client_id.clone()).collect(),
        members: members.into_iter().map(convert::member_to_proto).collect(),
    })
}
