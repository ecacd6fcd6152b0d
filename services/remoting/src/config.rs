//! Configuration of the channel, the client and the server. Plain serde structs with documented defaults so a
//! broker can embed them in its YAML (`#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::frame::{DEFAULT_MAX_FRAME_SIZE, SerializeType};

/// Settings of every connection, on either side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ChannelConfig {
    /// Largest frame sent or accepted, length field excluded (RocketMQ's `frameMaxLength`, 16 MiB). A larger
    /// incoming frame closes the connection; a larger outgoing one fails the call before anything is sent.
    pub max_frame_size: usize,
    /// Header encoding of frames this side writes. Both encodings are always accepted on input.
    pub serialize_type: SerializeType,
    /// Bytes that may wait in one connection's write queue; senders wait (back-pressure) beyond it.
    pub write_queue_bytes: usize,
    /// How often the pending-response table is swept for requests past their timeout.
    pub sweep_interval_ms: u64,
    /// TCP keepalive: a connection silent this long is probed by the kernel, every sixth of it (at least 1 s),
    /// and closed after three unanswered probes, so a peer that vanished without closing (power loss, a dropped
    /// NAT entry) is noticed (default 60 s: within 90 s). 0 turns probing off.
    pub tcp_keepalive_ms: u64,
    /// A connection with no frame read or written for this long is closed (RocketMQ closes idle channels after
    /// 120 s): it bounds what silent peers hold. Off (0) by default: long-lived clients may be idle for hours.
    pub idle_timeout_ms: u64,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            serialize_type: SerializeType::RocketMq,
            write_queue_bytes: 64 * 1024 * 1024,
            sweep_interval_ms: 100,
            tcp_keepalive_ms: 60_000,
            idle_timeout_ms: 0,
        }
    }
}

impl ChannelConfig {
    pub(crate) fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.sweep_interval_ms.max(1))
    }

    /// The idle timeout, `None` when off.
    pub(crate) fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_ms > 0).then(|| Duration::from_millis(self.idle_timeout_ms))
    }

    /// The kernel's keepalive settings for a connection, `None` when off.
    pub(crate) fn keepalive(&self) -> Option<socket2::TcpKeepalive> {
        const PROBES: u32 = 3;
        let idle = Duration::from_millis(self.tcp_keepalive_ms);
        (!idle.is_zero()).then(|| {
            socket2::TcpKeepalive::new()
                .with_time(idle)
                .with_interval((idle / 6).max(Duration::from_secs(1)))
                .with_retries(PROBES)
        })
    }
}

/// The client's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClientConfig {
    /// Connection settings.
    pub channel: ChannelConfig,
    /// Longest wait for a TCP connection (RocketMQ: 3 s); a call's own timeout shortens it.
    pub connect_timeout_ms: u64,
    /// Back-off after the first failed connect to an address; it doubles per failure.
    pub reconnect_backoff_min_ms: u64,
    /// Longest back-off (RocketMQ: 60 s).
    pub reconnect_backoff_max_ms: u64,
    /// Async requests in flight at once over all connections of this client (RocketMQ's `semaphoreAsync`).
    pub async_permits: usize,
    /// Oneway requests queued but not yet written, over all connections (RocketMQ's `semaphoreOneway`).
    pub oneway_permits: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            channel: ChannelConfig::default(),
            connect_timeout_ms: 3_000,
            reconnect_backoff_min_ms: 100,
            reconnect_backoff_max_ms: 60_000,
            async_permits: 65_535,
            oneway_permits: 65_535,
        }
    }
}

/// The server's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerConfig {
    /// Listen address; port 0 picks a free port ([`Server::local_addr`](crate::Server::local_addr) tells which).
    pub listen: String,
    /// Connection settings.
    pub channel: ChannelConfig,
    /// Async requests the server may have in flight to its clients (RocketMQ's server default: 64).
    pub async_permits: usize,
    /// Oneway requests to clients queued but not yet written (RocketMQ's server default: 256).
    pub oneway_permits: usize,
    /// Connections open at once (0 = unlimited); one beyond is closed as soon as it is accepted, so a flood of
    /// connections costs this server no more than this many descriptors. (A [`Server::detached`] server's
    /// acceptor applies its own limit.)
    ///
    /// [`Server::detached`]: crate::Server::detached
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "0.0.0.0:10912".to_owned(),
            channel: ChannelConfig::default(),
            async_permits: 64,
            oneway_permits: 256,
            max_connections: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_keys_are_kebab_case_and_unknown_keys_are_rejected() {
        let c: ClientConfig =
            serde_json::from_str(r#"{"connect-timeout-ms":5,"channel":{"serialize-type":"json"}}"#).unwrap();
        assert_eq!(c.connect_timeout_ms, 5);
        assert_eq!(c.channel.serialize_type, SerializeType::Json);
        assert_eq!(c.channel.max_frame_size, 16 * 1024 * 1024);
        assert!(serde_json::from_str::<ClientConfig>(r#"{"nope":1}"#).is_err());
        let s: ServerConfig = serde_json::from_str(r#"{"channel":{"serialize-type":"rocketmq"}}"#).unwrap();
        assert_eq!(s.async_permits, 64);
    }
}
