//! The broker's one error type. Mapped to gRPC codes in exactly one place: `edge/status.rs`.

use std::path::PathBuf;

/// Result alias of the broker.
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

/// Everything a broker request or the broker process can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A request field breaks a rule; the message names the field.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field (`topic`, `group`, `queue_id`, `body`, ...).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The topic does not exist on this broker (and auto-creation is off, or the call never creates).
    #[error("topic {topic:?} does not exist on this broker")]
    TopicNotFound {
        /// The topic.
        topic: String,
    },
    /// CreateTopic of a topic that exists.
    #[error("topic {topic:?} already exists")]
    TopicExists {
        /// The topic.
        topic: String,
    },
    /// The subscription group does not exist.
    #[error("group {group:?} does not exist on this broker")]
    GroupNotFound {
        /// The group.
        group: String,
    },
    /// No stored message matches the lookup.
    #[error("no message with {what}")]
    MessageNotFound {
        /// What was looked up.
        what: String,
    },
    /// CreateGroup of a group that exists.
    #[error("group {group:?} already exists")]
    GroupExists {
        /// The group.
        group: String,
    },
    /// The topic's permission forbids the operation, the group's consumption is disabled, or the group does not
    /// allow broadcasting consumption.
    #[error("{what} is not permitted: {reason}")]
    NotPermitted {
        /// `write`, `read` or `broadcasting consumption`.
        what: &'static str,
        /// Why (topic permission, disabled group, group setting).
        reason: String,
    },
    /// A committed offset or queue outside the queue's range.
    #[error("{field} out of range: {reason}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// The range and the value.
        reason: String,
    },
    /// The broker is saturated (too many sends in flight, too many parked pulls); retry after a short pause.
    #[error("broker busy: {reason}; retry later")]
    Busy {
        /// Which limit was hit.
        reason: String,
    },
    /// The store refuses writes because the disk is full; retryable once space returns.
    #[error("broker busy: {0}")]
    DiskFull(#[source] comet_store::Error),
    /// A write sent to a slave; its data and metadata come from its master.
    #[error("{what} refused: {broker} is a slave; send it to the master")]
    NotMaster {
        /// `send`, `topic change`, `group change`.
        what: &'static str,
        /// The slave's broker name and id.
        broker: String,
    },
    /// Sync replication: not enough slaves acknowledged the message in time. It is stored on the master (and
    /// may be delivered); a retry may store it twice.
    #[error("replication failed: {reason}; the message is stored on the master but not confirmed on its slaves")]
    Replication {
        /// How many slaves were connected or acknowledged.
        reason: String,
    },
    /// The broker is shutting down; retry on another broker.
    #[error("broker is shutting down")]
    ShuttingDown,
    /// The storage engine failed.
    #[error("store: {0}")]
    Store(#[source] comet_store::Error),
    /// A metadata file (topics, groups, offsets) could not be read or written.
    #[error("{op} {path}: {reason}")]
    Persist {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        reason: String,
    },
    /// A bug or an unexpected runtime failure (a blocking task panicked).
    #[error("internal error: {0}")]
    Internal(String),
    /// The configuration cannot work.
    #[error("configuration: {0}")]
    Config(String),
    /// The gRPC server failed.
    #[error("serving on {address}: {source}")]
    Serve {
        /// The listen address.
        address: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl BrokerError {
    /// Shorthand for [`BrokerError::Invalid`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        BrokerError::Invalid { field, reason: reason.into() }
    }

    /// True when the same request can succeed later without being changed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            BrokerError::Busy { .. }
                | BrokerError::DiskFull(_)
                | BrokerError::ShuttingDown
                | BrokerError::Replication { .. }
        )
    }
}

impl From<comet_store::Error> for BrokerError {
    fn from(e: comet_store::Error) -> Self {
        use comet_store::Error as S;
        match e {
            S::DiskFull { .. } => BrokerError::DiskFull(e),
            S::MessageTooLarge { .. } => BrokerError::invalid("body", e.to_string()),
            S::InvalidMessage { .. } => BrokerError::invalid("message", e.to_string()),
            S::BatchTooLarge { .. } => BrokerError::invalid("messages", e.to_string()),
            S::Closed => BrokerError::ShuttingDown,
            other => BrokerError::Store(other),
        }
    }
}
