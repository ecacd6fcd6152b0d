//! The one place that maps [`BrokerError`] to gRPC status codes (table: docs/response-codes.md, "Broker").

use tonic::{Code, Status};

use crate::error::BrokerError;

impl From<BrokerError> for Status {
    fn from(err: BrokerError) -> Self {
        let code = match &err {
            BrokerError::Invalid { .. } => Code::InvalidArgument,
            BrokerError::TopicNotFound { .. }
            | BrokerError::GroupNotFound { .. }
            | BrokerError::MessageNotFound { .. } => Code::NotFound,
            BrokerError::TopicExists { .. } | BrokerError::GroupExists { .. } => Code::AlreadyExists,
            BrokerError::NotPermitted { .. } => Code::PermissionDenied,
            BrokerError::OutOfRange { .. } => Code::OutOfRange,
            // The one retryable "busy" answer: saturation and a full disk alike.
            BrokerError::Busy { .. } | BrokerError::DiskFull(_) => Code::ResourceExhausted,
            BrokerError::ShuttingDown | BrokerError::Replication { .. } => Code::Unavailable,
            BrokerError::NotMaster { .. } => Code::FailedPrecondition,
            BrokerError::Store(_)
            | BrokerError::Persist { .. }
            | BrokerError::Internal(_)
            | BrokerError::Config(_)
            | BrokerError::Serve { .. } => Code::Internal,
        };
        if code == Code::Internal {
            tracing::error!(error = %err, "internal error answering a request");
        }
        Status::new(code, err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturation_and_full_disk_share_the_busy_code_with_distinct_messages() {
        let busy = Status::from(BrokerError::Busy { reason: "1024 sends in flight".into() });
        let full = Status::from(BrokerError::DiskFull(comet_store::Error::DiskFull {
            usage_percent: 95.0,
            limit_percent: 90.0,
        }));
        assert_eq!(busy.code(), Code::ResourceExhausted);
        assert_eq!(full.code(), Code::ResourceExhausted);
        assert!(busy.message().contains("in flight"));
        assert!(full.message().contains("disk full"), "{}", full.message());
    }
}
