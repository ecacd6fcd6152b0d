//! The SDK's one error type: every failure says what was attempted, where, and whether retrying can help.

use std::time::Duration;

use tonic::Code;

/// Whether an operation that failed with an error may succeed when tried again (possibly on another broker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Transient: the broker is busy, stopping or unreachable, or the call timed out.
    Retryable,
    /// An answer: bad input, no permission, unknown topic. The same request will fail the same way.
    Permanent,
}

/// Why an SDK call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The settings or arguments cannot work (empty address list, empty batch, mixed topics).
    #[error("{op}: {message}")]
    Invalid {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The topic's route could not be obtained from the NameServers (and none was cached).
    // The cause is in the message, not returned by `source()`, so `{:#}` chains do not print it twice.
    #[error("{op}: route of topic {topic:?}: {cause}")]
    Route {
        /// The operation.
        op: &'static str,
        /// The topic.
        topic: String,
        /// The NameServer client's error.
        cause: comet_nameserver_client::ClientError,
    },
    /// A NameServer call other than a route lookup failed (cluster info for admin tools).
    #[error("{op}: {cause}")]
    NameServer {
        /// The operation.
        op: &'static str,
        /// The NameServer client's error.
        cause: comet_nameserver_client::ClientError,
    },
    /// The route has no queue usable for the operation (no writable/readable queue with a master address).
    #[error("{op}: topic {topic:?} has no {what} queue with a reachable master")]
    NoQueue {
        /// The operation.
        op: &'static str,
        /// The topic.
        topic: String,
        /// "writable" or "readable".
        what: &'static str,
    },
    /// A broker answered with an error status, or the transport to it failed.
    #[error("{op} on broker {broker}: {code:?}: {message}")]
    Broker {
        /// The operation.
        op: &'static str,
        /// Broker address.
        broker: String,
        /// gRPC status code.
        code: Code,
        /// The broker's (or transport's) message.
        message: String,
    },
    /// A broker did not answer in time.
    #[error("{op} on broker {broker}: no answer within {after:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// Broker address.
        broker: String,
        /// The timeout that expired.
        after: Duration,
    },
}

impl ClientError {
    /// Whether retrying (on another broker for sends) can help.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Invalid { .. } | ClientError::NoQueue { .. } => ErrorKind::Permanent,
            ClientError::Route { cause, .. } | ClientError::NameServer { cause, .. } => match cause.code() {
                Code::Unavailable | Code::DeadlineExceeded => ErrorKind::Retryable,
                _ => ErrorKind::Permanent,
            },
            ClientError::Broker { code, message, .. } => match code {
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => ErrorKind::Retryable,
                // tonic reports a connection that broke under a call (a killed broker) as UNKNOWN "transport
                // error"; the broker's own codes (docs/response-codes.md) never include UNKNOWN.
                Code::Unknown => ErrorKind::Retryable,
                // RESOURCE_EXHAUSTED is the broker's one "busy" answer; tonic also uses it for "message length
                // too large", which would fail again unchanged.
                Code::ResourceExhausted if message.contains("busy") => ErrorKind::Retryable,
                _ => ErrorKind::Permanent,
            },
            ClientError::Timeout { .. } => ErrorKind::Retryable,
        }
    }

    /// A transport failure: the broker did not answer (connection refused or broken, UNAVAILABLE, no answer in
    /// time), as opposed to an answer (busy, invalid, refused). Consumers then fail over to another member of the
    /// broker group and pass this one over for a back-off.
    pub(crate) fn is_unreachable(&self) -> bool {
        match self {
            ClientError::Timeout { .. } => true,
            // UNKNOWN is tonic's "transport error" for a connection that broke under a call (see `kind`).
            ClientError::Broker { code, .. } => {
                matches!(code, Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled)
            }
            _ => false,
        }
    }

    /// Shorthand for `kind() == ErrorKind::Retryable`.
    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::Retryable
    }

    /// The broker address involved, if the failure happened at a broker.
    pub fn broker(&self) -> Option<&str> {
        match self {
            ClientError::Broker { broker, .. } | ClientError::Timeout { broker, .. } => Some(broker),
            _ => None,
        }
    }

    /// The gRPC code behind the error (`Unavailable` for timeouts, `InvalidArgument` for bad arguments).
    pub fn code(&self) -> Code {
        match self {
            ClientError::Invalid { .. } => Code::InvalidArgument,
            ClientError::Route { cause, .. } | ClientError::NameServer { cause, .. } => cause.code(),
            ClientError::NoQueue { .. } => Code::FailedPrecondition,
            ClientError::Broker { code, .. } => *code,
            ClientError::Timeout { .. } => Code::DeadlineExceeded,
        }
    }

    pub(crate) fn broker_status(op: &'static str, broker: &str, status: &tonic::Status) -> Self {
        ClientError::Broker { op, broker: broker.to_owned(), code: status.code(), message: status.message().to_owned() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(code: Code, message: &str) -> ClientError {
        ClientError::Broker { op: "SendMessage", broker: "b:1".into(), code, message: message.into() }
    }

    #[test]
    fn busy_unavailable_and_timeouts_are_retryable_answers_are_not() {
        assert!(broker(Code::Unavailable, "connection refused").is_retryable());
        assert!(broker(Code::Unknown, "transport error").is_retryable());
        assert!(broker(Code::ResourceExhausted, "broker busy: 64 sends in flight; retry later").is_retryable());
        assert!(!broker(Code::ResourceExhausted, "message length too large").is_retryable());
        assert!(!broker(Code::InvalidArgument, "empty body").is_retryable());
        assert!(!broker(Code::PermissionDenied, "no write").is_retryable());
        let timeout = ClientError::Timeout { op: "SendMessage", broker: "b:1".into(), after: Duration::from_secs(3) };
        assert!(timeout.is_retryable());
        assert_eq!(timeout.broker(), Some("b:1"));
    }

    #[test]
    fn only_transport_failures_count_as_unreachable() {
        assert!(broker(Code::Unavailable, "connection refused").is_unreachable());
        assert!(broker(Code::Unknown, "transport error").is_unreachable());
        let timeout = ClientError::Timeout { op: "pull", broker: "b:1".into(), after: Duration::from_secs(3) };
        assert!(timeout.is_unreachable());
        assert!(!broker(Code::ResourceExhausted, "broker busy").is_unreachable(), "busy is an answer");
        assert!(!broker(Code::FailedPrecondition, "this broker is a slave").is_unreachable());
        assert!(!broker(Code::PermissionDenied, "group disabled").is_unreachable());
    }

    #[test]
    fn errors_name_the_operation_and_the_broker() {
        let text = broker(Code::InvalidArgument, "empty body").to_string();
        assert!(text.contains("SendMessage") && text.contains("b:1") && text.contains("empty body"), "{text}");
    }
}
