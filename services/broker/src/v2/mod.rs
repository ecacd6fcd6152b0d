//! The Apache RocketMQ 5 gRPC API, `apache.rocketmq.v2.MessagingService`, served on the broker's gRPC port beside
//! `comet.v1.Broker` (RocketMQ's "local proxy" mode), so the official SDKs connect with nothing changed but the
//! endpoint (docs/rocketmq-v2.md). Both APIs share one store, one topic table and one consumer-group state.
//!
//! One file per request family, like `handler/`: [`route`] (QueryRoute, QueryAssignment, Heartbeat,
//! NotifyClientTermination), [`telemetry`] (the settings handshake and server commands), [`send`] (SendMessage,
//! EndTransaction), [`receive`] (ReceiveMessage, AckMessage, ChangeInvisibleDuration, ForwardMessageToDeadLetterQueue),
//! [`pull`] (PullMessage and the offset RPCs). Shared: [`context`] (request headers), [`convert`] (names, times,
//! messages), [`status`] (errors → `Status` codes), [`sessions`] (clients by `x-mq-client-id`).

pub mod context;
pub mod convert;
pub mod digest;
pub mod pull;
pub mod receive;
pub mod route;
pub mod send;
pub mod sessions;
pub mod status;
pub mod telemetry;
pub mod wire;

use std::pin::Pin;
use std::sync::Arc;

use comet_proto::apache::rocketmq::v2 as pb;
use comet_proto::apache::rocketmq::v2::messaging_service_server::MessagingService;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::broker::Broker;
use crate::v2::sessions::Sessions;

/// gRPC service name of the API (reflection, health).
pub const SERVICE_NAME: &str = "apache.rocketmq.v2.MessagingService";

/// The `apache.rocketmq.v2.MessagingService` service.
#[derive(Debug, Clone)]
pub struct MessagingHandler {
    broker: Arc<Broker>,
    sessions: Arc<Sessions>,
}

impl MessagingHandler {
    /// A service over `broker` and its v2 client sessions.
    pub fn new(broker: Arc<Broker>) -> Self {
        let sessions = Arc::clone(&broker.sessions);
        Self { broker, sessions }
    }
}

type Answer<T> = Result<Response<T>, Status>;

/// A server-streamed answer (ReceiveMessage, PullMessage, Telemetry).
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl MessagingService for MessagingHandler {
    async fn query_route(&self, request: Request<pb::QueryRouteRequest>) -> Answer<pb::QueryRouteResponse> {
        Ok(Response::new(route::query_route(&self.broker, request).await))
    }

    async fn heartbeat(&self, request: Request<pb::HeartbeatRequest>) -> Answer<pb::HeartbeatResponse> {
        Ok(Response::new(route::heartbeat(&self.broker, &self.sessions, request).await))
    }

    async fn send_message(&self, request: Request<pb::SendMessageRequest>) -> Answer<pb::SendMessageResponse> {
        Ok(Response::new(send::send_message(&self.broker, &self.sessions, request).await))
    }

    async fn query_assignment(
        &self,
        request: Request<pb::QueryAssignmentRequest>,
    ) -> Answer<pb::QueryAssignmentResponse> {
        Ok(Response::new(route::query_assignment(&self.broker, &self.sessions, request).await))
    }

    type ReceiveMessageStream = BoxStream<pb::ReceiveMessageResponse>;

    async fn receive_message(&self, request: Request<pb::ReceiveMessageRequest>) -> Answer<Self::ReceiveMessageStream> {
        Ok(Response::new(receive::receive_message(&self.broker, &self.sessions, request).await))
    }

    async fn ack_message(&self, request: Request<pb::AckMessageRequest>) -> Answer<pb::AckMessageResponse> {
        Ok(Response::new(receive::ack_message(&self.broker, request).await))
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        request: Request<pb::ForwardMessageToDeadLetterQueueRequest>,
    ) -> Answer<pb::ForwardMessageToDeadLetterQueueResponse> {
        Ok(Response::new(receive::forward_to_dead_letter_queue(&self.broker, request).await))
    }

    type PullMessageStream = BoxStream<pb::PullMessageResponse>;

    async fn pull_message(&self, request: Request<pb::PullMessageRequest>) -> Answer<Self::PullMessageStream> {
        Ok(Response::new(pull::pull_message(&self.broker, request).await))
    }

    async fn update_offset(&self, request: Request<pb::UpdateOffsetRequest>) -> Answer<pb::UpdateOffsetResponse> {
        Ok(Response::new(pull::update_offset(&self.broker, request).await))
    }

    async fn get_offset(&self, request: Request<pb::GetOffsetRequest>) -> Answer<pb::GetOffsetResponse> {
        Ok(Response::new(pull::get_offset(&self.broker, request).await))
    }

    async fn query_offset(&self, request: Request<pb::QueryOffsetRequest>) -> Answer<pb::QueryOffsetResponse> {
        Ok(Response::new(pull::query_offset(&self.broker, request).await))
    }

    async fn end_transaction(&self, request: Request<pb::EndTransactionRequest>) -> Answer<pb::EndTransactionResponse> {
        Ok(Response::new(send::end_transaction(&self.broker, &self.sessions, request).await))
    }

    type TelemetryStream = BoxStream<pb::TelemetryCommand>;

    async fn telemetry(&self, request: Request<Streaming<pb::TelemetryCommand>>) -> Answer<Self::TelemetryStream> {
        // The response stream goes back at once, so the headers reach the client before any command (the Rust
        // SDK's start() waits for them).
        telemetry::telemetry(&self.broker, &self.sessions, request).map(Response::new)
    }

    async fn notify_client_termination(
        &self,
        request: Request<pb::NotifyClientTerminationRequest>,
    ) -> Answer<pb::NotifyClientTerminationResponse> {
        Ok(Response::new(route::notify_client_termination(&self.broker, &self.sessions, request).await))
    }

    async fn change_invisible_duration(
        &self,
        request: Request<pb::ChangeInvisibleDurationRequest>,
    ) -> Answer<pb::ChangeInvisibleDurationResponse> {
        Ok(Response::new(receive::change_invisible_duration(&self.broker, request).await))
    }

    async fn recall_message(&self, _request: Request<pb::RecallMessageRequest>) -> Answer<pb::RecallMessageResponse> {
        // Recall (cancelling a delayed message) is an optional Python/Node API no test or SDK flow needs.
        let status = status::status(pb::Code::NotImplemented, "RecallMessage is not supported by Comet");
        Ok(Response::new(pb::RecallMessageResponse { status: Some(status), message_id: String::new() }))
    }

    async fn sync_lite_subscription(
        &self,
        _request: Request<pb::SyncLiteSubscriptionRequest>,
    ) -> Answer<pb::SyncLiteSubscriptionResponse> {
        let status = status::status(pb::Code::NotImplemented, "lite topics are not supported by Comet");
        Ok(Response::new(pb::SyncLiteSubscriptionResponse { status: Some(status) }))
    }
}
