//! The receive model: ReceiveMessage (long poll, invisibility, receipt handles), AckMessage,
//! ChangeInvisibleDuration and ForwardMessageToDeadLetterQueue.

use std::sync::Arc;

use comet_proto::apache::rocketmq::v2 as pb;
use tonic::Request;

use crate::broker::Broker;
use crate::v2::BoxStream;
use crate::v2::sessions::Sessions;
use crate::v2::status;

/// ReceiveMessage: `[status OK, message..., delivery_timestamp]` or `[status, delivery_timestamp]`.
pub async fn receive_message(
    _broker: &Arc<Broker>,
    _sessions: &Sessions,
    _request: Request<pb::ReceiveMessageRequest>,
) -> BoxStream<pb::ReceiveMessageResponse> {
    let items = vec![
        Ok(pb::ReceiveMessageResponse {
            content: Some(pb::receive_message_response::Content::Status(status::status(
                pb::Code::NotImplemented,
                "not yet",
            ))),
        }),
        Ok(pb::ReceiveMessageResponse {
            content: Some(pb::receive_message_response::Content::DeliveryTimestamp(crate::v2::convert::timestamp(
                crate::broker::now_ms(),
            ))),
        }),
    ];
    Box::pin(tokio_stream::iter(items))
}

/// AckMessage: one result per entry.
pub async fn ack_message(_broker: &Arc<Broker>, _request: Request<pb::AckMessageRequest>) -> pb::AckMessageResponse {
    pb::AckMessageResponse { status: Some(status::status(pb::Code::NotImplemented, "not yet")), entries: vec![] }
}

/// ChangeInvisibleDuration: a new invisible deadline and a new receipt handle.
pub async fn change_invisible_duration(
    _broker: &Arc<Broker>,
    _request: Request<pb::ChangeInvisibleDurationRequest>,
) -> pb::ChangeInvisibleDurationResponse {
    pb::ChangeInvisibleDurationResponse {
        status: Some(status::status(pb::Code::NotImplemented, "not yet")),
        receipt_handle: String::new(),
    }
}

/// ForwardMessageToDeadLetterQueue: the message moves to the group's DLQ topic.
pub async fn forward_to_dead_letter_queue(
    _broker: &Arc<Broker>,
    _request: Request<pb::ForwardMessageToDeadLetterQueueRequest>,
) -> pb::ForwardMessageToDeadLetterQueueResponse {
    pb::ForwardMessageToDeadLetterQueueResponse { status: Some(status::status(pb::Code::NotImplemented, "not yet")) }
}
