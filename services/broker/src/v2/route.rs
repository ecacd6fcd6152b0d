//! QueryRoute, QueryAssignment, Heartbeat and NotifyClientTermination.

use std::sync::Arc;

use comet_proto::apache::rocketmq::v2 as pb;
use tonic::Request;

use crate::broker::Broker;
use crate::v2::sessions::Sessions;
use crate::v2::status;

/// QueryRoute: the topic's queues on every broker serving it, with each broker's gRPC endpoint.
pub async fn query_route(_broker: &Arc<Broker>, _request: Request<pb::QueryRouteRequest>) -> pb::QueryRouteResponse {
    pb::QueryRouteResponse { status: Some(status::status(pb::Code::NotImplemented, "not yet")), message_queues: vec![] }
}

/// Heartbeat: OK, and the client is alive.
pub async fn heartbeat(
    _broker: &Arc<Broker>,
    _sessions: &Sessions,
    _request: Request<pb::HeartbeatRequest>,
) -> pb::HeartbeatResponse {
    pb::HeartbeatResponse { status: Some(status::status(pb::Code::NotImplemented, "not yet")) }
}

/// QueryAssignment: which queues a push consumer of the group reads.
pub async fn query_assignment(
    _broker: &Arc<Broker>,
    _sessions: &Sessions,
    _request: Request<pb::QueryAssignmentRequest>,
) -> pb::QueryAssignmentResponse {
    pb::QueryAssignmentResponse {
        status: Some(status::status(pb::Code::NotImplemented, "not yet")),
        assignments: vec![],
    }
}

/// NotifyClientTermination: the client's state goes.
pub async fn notify_client_termination(
    _broker: &Arc<Broker>,
    _sessions: &Sessions,
    _request: Request<pb::NotifyClientTerminationRequest>,
) -> pb::NotifyClientTerminationResponse {
    pb::NotifyClientTerminationResponse { status: Some(status::status(pb::Code::NotImplemented, "not yet")) }
}
