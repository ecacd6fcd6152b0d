//! QueryRoute, GetClusterInfo, ListTopics, DeleteTopicRoute.

use comet_model::validate_topic_name;
use comet_proto::comet::v1 as pb;

use crate::edge::convert;
use crate::error::NameServerError;
use crate::registry::Registry;

/// A topic's route, or NOT_FOUND.
// Hot path: one read lock in LocalRoutes::query; no logging.
pub fn query<R: Registry>(
    registry: &R,
    request: pb::QueryRouteRequest,
) -> Result<pb::QueryRouteResponse, NameServerError> {
    validate_topic_name(&request.topic).map_err(|e| NameServerError::invalid("topic", e))?;
    match registry.routes().query(&request.topic) {
        Some(route) => Ok(convert::route_to_proto(route)),
        None => Err(NameServerError::TopicNotFound { topic: request.topic }),
    }
}

/// Every cluster with its brokers, plus which backend answers and whether it is degraded.
pub fn cluster_info<R: Registry>(registry: &R) -> pb::GetClusterInfoResponse {
    pb::GetClusterInfoResponse {
        clusters: registry.routes().clusters().into_iter().map(convert::cluster_to_proto).collect(),
        registry: registry.backend().to_owned(),
        degraded: *registry.degraded().borrow(),
    }
}

/// Routed topic names.
pub fn list_topics<R: Registry>(registry: &R, request: pb::ListTopicsRequest) -> pb::ListTopicsResponse {
    let cluster = convert::optional(request.cluster_name);
    pb::ListTopicsResponse { topics: registry.routes().topics(cluster.as_deref()) }
}

/// Admin: forgets a topic's route.
pub async fn delete_topic<R: Registry>(
    registry: &R,
    request: pb::DeleteTopicRouteRequest,
) -> Result<pb::DeleteTopicRouteResponse, NameServerError> {
    validate_topic_name(&request.topic).map_err(|e| NameServerError::invalid("topic", e))?;
    let deleted = registry.delete_topic(request.topic, convert::optional(request.cluster_name)).await?;
    Ok(pb::DeleteTopicRouteResponse { deleted })
}
