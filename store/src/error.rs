//! The store's one error type. Every variant carries what an operator needs to act: the file, the offset, the
//! limit that was hit.

use std::io;
use std::path::PathBuf;

use comet_model::CommitLogOffset;

/// Result alias of the store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What the store was doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file's content is not what the store wrote: wrong magic, bad CRC, impossible length.
    #[error("corrupt data in {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte position inside the file.
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// Another process (or another `Store` in this one) owns the directory.
    #[error("store directory {path} is locked by another process")]
    Locked {
        /// The directory.
        path: PathBuf,
    },
    /// A write or fsync failed earlier; the store refuses writes until it is reopened, because the durability of
    /// what follows can no longer be promised.
    #[error("store refuses writes after an I/O failure: {reason}")]
    Poisoned {
        /// The failure that poisoned the store.
        reason: String,
    },
    /// Disk usage is above the configured hard limit; writes resume when space returns.
    #[error("disk full: usage {usage_percent:.1}% is above the {limit_percent:.1}% limit; writes resume below it")]
    DiskFull {
        /// Current usage.
        usage_percent: f64,
        /// Configured limit.
        limit_percent: f64,
    },
    /// The message body is larger than `max-message-size`.
    #[error("message body of {size} bytes exceeds max-message-size {max}")]
    MessageTooLarge {
        /// Body size.
        size: usize,
        /// Limit.
        max: u32,
    },
    /// A field of the message breaks a rule (name, length, characters).
    #[error("invalid message: {reason}")]
    InvalidMessage {
        /// The broken rule.
        reason: String,
    },
    /// The batch does not fit in one CommitLog segment.
    #[error("batch of {size} bytes does not fit in a {segment_size}-byte segment")]
    BatchTooLarge {
        /// Encoded batch size.
        size: u64,
        /// Segment size.
        segment_size: u64,
    },
    /// The requested data was deleted by retention.
    #[error("offset {requested} was deleted by retention; the oldest available is {min}")]
    OffsetMoved {
        /// What was asked for.
        requested: CommitLogOffset,
        /// The new minimum.
        min: CommitLogOffset,
    },
    /// No record starts at the requested offset.
    #[error("no message at commit-log offset {offset}")]
    NoRecord {
        /// What was asked for.
        offset: CommitLogOffset,
    },
    /// The configuration cannot work.
    #[error("invalid store configuration: {reason}")]
    InvalidConfig {
        /// Which key and why.
        reason: String,
    },
    /// Replicated bytes do not start where this log ends: the slave would leave a hole or overwrite data.
    #[error("replicated bytes start at commit-log offset {got} but this log ends at {expected}; nothing was written")]
    ReplicaGap {
        /// The end of this log: where the next chunk must start.
        expected: CommitLogOffset,
        /// Where the chunk claims to start.
        got: CommitLogOffset,
    },
    /// A replicated chunk is not a run of whole, intact records at their own offsets; nothing was written.
    #[error("replicated bytes rejected at commit-log offset {offset}: {reason}; nothing was written")]
    ReplicaRejected {
        /// The CommitLog offset of the first offending byte (the record or marker that failed).
        offset: CommitLogOffset,
        /// Which check failed.
        reason: String,
    },
    /// Replicated data does not line up with this store's segments: master and slave segment sizes differ.
    #[error(
        "segment-size mismatch at commit-log offset {offset}: {reason}; master and slave must use the same \
         segment-size (this store's is {segment_size})"
    )]
    SegmentMismatch {
        /// The offset that does not fit.
        offset: CommitLogOffset,
        /// This store's segment size.
        segment_size: u64,
        /// What does not line up.
        reason: String,
    },
    /// An operation that must start at a record boundary (truncate, record walk, raw read) was given an offset
    /// inside a record or marker.
    #[error("commit-log offset {offset} is not a record boundary: {reason}")]
    NotRecordBoundary {
        /// The offset asked for.
        offset: CommitLogOffset,
        /// What was found there.
        reason: String,
    },
    /// A truncation (replication) removed appended bytes before they became durable.
    #[error("commit-log bytes below {offset} were truncated away (the log now ends at {end}) before they were durable")]
    Truncated {
        /// The end of the append that waited.
        offset: CommitLogOffset,
        /// The end of the log after the truncation.
        end: CommitLogOffset,
    },
    /// The store is shutting down.
    #[error("store is closed")]
    Closed,
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io { op, path: path.into(), source }
    }

    /// True when retrying the same request later can succeed without operator action.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::DiskFull { .. })
    }
}
