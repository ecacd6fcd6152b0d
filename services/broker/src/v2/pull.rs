//! The Java PullConsumer's RPCs on the native pull model: PullMessage, UpdateOffset, GetOffset, QueryOffset.

use std::sync::Arc;

use comet_proto::apache::rocketmq::v2 as pb;
use tonic::Request;

use crate::broker::Broker;
use crate::v2::BoxStream;
use crate::v2::status;

/// PullMessage: `[status, message..., next_offset]`.
pub async fn pull_message(
    _broker: &Arc<Broker>,
    _request: Request<pb::PullMessageRequest>,
) -> BoxStream<pb::PullMessageResponse> {
    let item = pb::PullMessageResponse {
        content: Some(pb::pull_message_response::Content::Status(status::status(pb::Code::NotImplemented, "not yet"))),
    };
    Box::pin(tokio_stream::iter(vec![Ok(item)]))
}

/// UpdateOffset: commits the group's offset of a queue.
pub async fn update_offset(
    _broker: &Arc<Broker>,
    _request: Request<pb::UpdateOffsetRequest>,
) -> pb::UpdateOffsetResponse {
    pb::UpdateOffsetResponse { status: Some(status::status(pb::Code::NotImplemented, "not yet")) }
}

/// GetOffset: the group's committed offset of a queue.
pub async fn get_offset(_broker: &Arc<Broker>, _request: Request<pb::GetOffsetRequest>) -> pb::GetOffsetResponse {
    pb::GetOffsetResponse { status: Some(status::status(pb::Code::NotImplemented, "not yet")), offset: 0 }
}

/// QueryOffset: a queue's first or next offset, or the first at a time.
pub async fn query_offset(_broker: &Arc<Broker>, _request: Request<pb::QueryOffsetRequest>) -> pb::QueryOffsetResponse {
    pb::QueryOffsetResponse { status: Some(status::status(pb::Code::NotImplemented, "not yet")), offset: 0 }
}
