//! SendMessage and EndTransaction, on the native send path (validation, idempotent send, delay timer,
//! transactions), plus the v2 checks: topic message type, delivery time limit, message group.

use std::sync::Arc;

use comet_proto::apache::rocketmq::v2 as pb;
use tonic::Request;

use crate::broker::Broker;
use crate::v2::sessions::Sessions;
use crate::v2::status;

/// SendMessage: one result entry per message.
pub async fn send_message(
    _broker: &Arc<Broker>,
    _sessions: &Sessions,
    _request: Request<pb::SendMessageRequest>,
) -> pb::SendMessageResponse {
    pb::SendMessageResponse { status: Some(status::status(pb::Code::NotImplemented, "not yet")), entries: vec![] }
}

/// EndTransaction: commit or roll back a half message.
pub async fn end_transaction(
    _broker: &Arc<Broker>,
    _sessions: &Sessions,
    _request: Request<pb::EndTransactionRequest>,
) -> pb::EndTransactionResponse {
    pb::EndTransactionResponse { status: Some(status::status(pb::Code::NotImplemented, "not yet")) }
}
