//! Topic admin: CreateTopic, UpdateTopic, DeleteTopic, ListTopics, DescribeTopic. Every change is persisted
//! before it is answered and triggers an immediate re-registration with the NameServers.

use std::sync::Arc;

use comet_proto::comet::v1 as pb;

use super::check_topic;
use crate::broker::{Broker, now_ms};
use crate::edge::convert;
use crate::error::{BrokerError, Result};

fn config_of(broker: &Broker, topic: Option<pb::TopicConfig>) -> Result<comet_model::TopicConfig> {
    let topic = topic.ok_or_else(|| BrokerError::invalid("topic", "missing"))?;
    check_topic(&topic.name)?;
    convert::topic_from_proto(topic, broker.config.broker.default_queue_count)
}

/// Creates a topic (ALREADY_EXISTS if it exists).
pub async fn create(broker: &Arc<Broker>, request: pb::CreateTopicRequest) -> Result<pb::CreateTopicResponse> {
    broker.require_master("topic change")?;
    let config = config_of(broker, request.topic)?;
    let created = broker.blocking(move |b| b.topics.create(config, now_ms())).await?;
    broker.topics_changed.notify_one();
    tracing::info!(topic = %created.name, queues = created.write_queue_nums, "topic created");
    Ok(pb::CreateTopicResponse { topic: Some(convert::topic_to_proto(&created)) })
}

/// Replaces a topic's config (NOT_FOUND if it does not exist).
pub async fn update(broker: &Arc<Broker>, request: pb::UpdateTopicRequest) -> Result<pb::UpdateTopicResponse> {
    broker.require_master("topic change")?;
    let config = config_of(broker, request.topic)?;
    let updated = broker.blocking(move |b| b.topics.update(config, now_ms())).await?;
    broker.topics_changed.notify_one();
    // Its message type may have changed: the cached metric attributes are rebuilt at the next send.
    broker.metrics.forget_topic(&updated.name);
    tracing::info!(topic = %updated.name, "topic updated");
    Ok(pb::UpdateTopicResponse { topic: Some(convert::topic_to_proto(&updated)) })
}

/// Deletes a topic: its config, consume queues and committed offsets (records leave with retention).
pub async fn delete(broker: &Arc<Broker>, request: pb::DeleteTopicRequest) -> Result<pb::DeleteTopicResponse> {
    broker.require_master("topic change")?;
    check_topic(&request.topic)?;
    let topic = request.topic.clone();
    broker
        .blocking(move |b| {
            b.topics.delete(&topic, now_ms())?;
            b.store.delete_topic(&topic)?;
            b.offsets.remove_topic(&topic);
            b.pulled.remove_topic(&topic);
            b.receive.remove_topic(&topic);
            b.metrics.forget_topic(&topic);
            Ok(())
        })
        .await?;
    broker.waiters.remove_topic(&request.topic);
    broker.topics_changed.notify_one();
    tracing::info!(topic = %request.topic, "topic deleted");
    Ok(pb::DeleteTopicResponse {})
}

/// Every topic, sorted by name.
pub fn list(broker: &Broker) -> pb::ListBrokerTopicsResponse {
    pb::ListBrokerTopicsResponse { topics: broker.topics.list().iter().map(convert::topic_to_proto).collect() }
}

/// A topic's config and the offsets of each read queue.
pub fn describe(broker: &Broker, request: pb::DescribeTopicRequest) -> Result<pb::DescribeTopicResponse> {
    check_topic(&request.topic)?;
    let topic = broker.topic(&request.topic)?;
    let queues = (0..topic.read_queue_nums)
        .map(|queue_id| {
            let (min, max) = broker.store.queue_range(&topic.name, queue_id).map_or((0, 0), |(a, b)| (a.0, b.0));
            pb::QueueOffsets { queue_id, min_offset: min, max_offset: max }
        })
        .collect();
    Ok(pb::DescribeTopicResponse { topic: Some(convert::topic_to_proto(&topic)), queues })
}
