//! The crate's one error type. Every variant names the peer (when there is one) and says whether retrying makes
//! sense: `Timeout`, `TooManyRequests`, `ConnectionClosed`, `Connect` and `Busy`-style answers are transient; a
//! `Frame` error on encode is the caller's bug and fails the same way every time.

use std::time::Duration;

use crate::frame::FrameError;

/// Result alias of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong on the remoting channel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command cannot be encoded (too large, code out of range for the binary header, ...); nothing was sent.
    #[error("cannot encode command for {peer}: {source}")]
    Encode {
        /// The peer it was meant for.
        peer: String,
        /// Why.
        #[source]
        source: FrameError,
    },
    /// No TCP connection to the peer could be made (or the peer is in reconnect back-off).
    #[error("cannot connect to {peer}: {reason}")]
    Connect {
        /// Address.
        peer: String,
        /// The OS error, the connect timeout, or the remaining back-off.
        reason: String,
    },
    /// No response within the timeout. The request may still be executed by the peer.
    #[error("no response from {peer} to request {opaque} (code {code}) within {timeout:?}")]
    Timeout {
        /// Peer.
        peer: String,
        /// Request id.
        opaque: i32,
        /// Request code.
        code: i32,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// Every async or oneway permit was taken for the whole timeout: the caller sends faster than the peer answers.
    #[error("too many {kind} requests in flight to {peer}: all {limit} permits taken for {waited:?}")]
    TooManyRequests {
        /// Peer.
        peer: String,
        /// `"async"` or `"oneway"`.
        kind: &'static str,
        /// Configured number of permits.
        limit: usize,
        /// How long the call waited for one.
        waited: Duration,
    },
    /// The connection closed before the response arrived (peer died, invalid frame, local shutdown). Every request
    /// pending on the connection fails with this at the same moment.
    #[error("connection to {peer} closed: {reason}")]
    ConnectionClosed {
        /// Peer.
        peer: String,
        /// Why it closed.
        reason: String,
    },
    /// Binding the listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
