//! The one place that maps [`NameServerError`] to gRPC status codes (table: docs/response-codes.md).

use tonic::{Code, Status};

use crate::error::NameServerError;

impl From<NameServerError> for Status {
    fn from(err: NameServerError) -> Self {
        let code = match &err {
            NameServerError::Invalid { .. } => Code::InvalidArgument,
            NameServerError::DuplicateBrokerId { .. } => Code::AlreadyExists,
            NameServerError::ClusterMismatch { .. } | NameServerError::StaleStateVersion { .. } => {
                Code::FailedPrecondition
            }
            NameServerError::TopicNotFound { .. } | NameServerError::KvNotFound { .. } => Code::NotFound,
            NameServerError::Unavailable { .. } => Code::Unavailable,
            #[cfg(feature = "etcd")]
            NameServerError::Etcd { .. } => Code::Unavailable,
            NameServerError::Corrupt { .. }
            | NameServerError::Persist { .. }
            | NameServerError::Config(_)
            | NameServerError::Serve { .. } => Code::Internal,
        };
        if code == Code::Internal {
            tracing::error!(error = %err, "internal error answering a request");
        }
        Status::new(code, error_chain(&err))
    }
}

/// The error and its causes on one line, so clients see why an etcd call failed, not just that it did.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
