//! The one place that maps [`BrokerError`] to RocketMQ 5 `Status` codes (table: docs/rocketmq-v2.md, "Status
//! codes"). The v2 API answers errors inside the response (`status`), not as gRPC errors, as the SDKs expect.

use comet_proto::apache::rocketmq::v2 as pb;
use pb::Code;

use crate::error::BrokerError;

/// `Status{OK}`.
pub fn ok() -> pb::Status {
    pb::Status { code: Code::Ok.into(), message: "OK".into() }
}

/// A status with `code` and `message`.
pub fn status(code: Code, message: impl Into<String>) -> pb::Status {
    pb::Status { code: code.into(), message: message.into() }
}

/// The status answering `err`. `Invalid` errors map by field to the specific 400xx code the SDKs know
/// (`body` → MESSAGE_BODY_TOO_LARGE/EMPTY is decided by the caller, which knows which one it was).
pub fn from_error(err: &BrokerError) -> pb::Status {
    let code = match err {
        BrokerError::Invalid { field, .. } => match *field {
            "topic" => Code::IllegalTopic,
            "group" | "producer_group" => Code::IllegalConsumerGroup,
            "tags" | "tag" => Code::IllegalMessageTag,
            "keys" => Code::IllegalMessageKey,
            "message_group" => Code::IllegalMessageGroup,
            "properties" => Code::IllegalMessagePropertyKey,
            "message_id" => Code::IllegalMessageId,
            "deliver_at_millis" | "delay_millis" | "delivery_timestamp" => Code::IllegalDeliveryTime,
            "invisible_duration" => Code::IllegalInvisibleTime,
            "filter_expression" => Code::IllegalFilterExpression,
            "receipt_handle" => Code::InvalidReceiptHandle,
            "message_type" => Code::MessagePropertyConflictWithType,
            "long_polling_timeout" => Code::IllegalPollingTime,
            "body" => Code::MessageBodyTooLarge,
            _ => Code::BadRequest,
        },
        BrokerError::TopicNotFound { .. } => Code::TopicNotFound,
        BrokerError::GroupNotFound { .. } => Code::ConsumerGroupNotFound,
        BrokerError::MessageNotFound { .. } => Code::MessageNotFound,
        BrokerError::TopicExists { .. } | BrokerError::GroupExists { .. } => Code::BadRequest,
        BrokerError::NotPermitted { .. } => Code::Forbidden,
        BrokerError::OutOfRange { .. } => Code::BadRequest,
        BrokerError::Busy { .. } | BrokerError::DiskFull(_) => Code::TooManyRequests,
        BrokerError::ShuttingDown => Code::InternalServerError,
        BrokerError::Replication { .. } => Code::SlavePersistenceTimeout,
        BrokerError::NotMaster { .. } => Code::Forbidden,
        BrokerError::Store(_)
        | BrokerError::Persist { .. }
        | BrokerError::Internal(_)
        | BrokerError::Config(_)
        | BrokerError::Serve { .. } => Code::InternalError,
    };
    if code == Code::InternalError {
        tracing::error!(error = %err, "internal error answering a RocketMQ v2 request");
    }
    status(code, err.to_string())
}

/// `code`, or an older code with the same meaning when the client (`x-mq-language`) cannot decode it: the Rust
/// 5.0.0 crate panics on codes added after it (ILLEGAL_OFFSET, OFFSET_NOT_FOUND, MESSAGE_BODY_EMPTY, ...).
pub fn for_language(mut status: pb::Status, language: &str) -> pb::Status {
    if language.eq_ignore_ascii_case("RUST") {
        let older = match Code::try_from(status.code) {
            Ok(Code::IllegalOffset | Code::IllegalLiteTopic | Code::InvalidClientProperties) => Some(Code::BadRequest),
            Ok(Code::MessageBodyEmpty) => Some(Code::BadRequest),
            Ok(Code::OffsetNotFound) => Some(Code::NotFound),
            Ok(Code::LiteTopicQuotaExceeded | Code::LiteSubscriptionQuotaExceeded) => Some(Code::TooManyRequests),
            _ => None,
        };
        if let Some(code) = older {
            status.code = code.into();
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_codes_the_sdks_know() {
        let code = |e: BrokerError| Code::try_from(from_error(&e).code).unwrap();
        assert_eq!(code(BrokerError::TopicNotFound { topic: "t".into() }), Code::TopicNotFound);
        assert_eq!(code(BrokerError::invalid("message_type", "x")), Code::MessagePropertyConflictWithType);
        assert_eq!(code(BrokerError::invalid("invisible_duration", "x")), Code::IllegalInvisibleTime);
        assert_eq!(code(BrokerError::Busy { reason: "x".into() }), Code::TooManyRequests);
        assert_eq!(code(BrokerError::invalid("weird", "x")), Code::BadRequest);
    }

    #[test]
    fn rust_clients_get_older_codes_only() {
        let empty = status(Code::MessageBodyEmpty, "empty");
        assert_eq!(for_language(empty.clone(), "RUST").code, i32::from(Code::BadRequest));
        assert_eq!(for_language(empty, "PYTHON").code, i32::from(Code::MessageBodyEmpty));
        let ok = for_language(ok(), "RUST");
        assert_eq!(ok.code, i32::from(Code::Ok));
    }
}
