//! Route data: which broker hosts which queues of a topic, with what permission.
//!
//! These are the NameServer's answers and the broker's registration payload as plain data; the wire forms live
//! in comet-proto and are converted at the gRPC edge.

use std::collections::BTreeMap;
use std::fmt;

/// Number of a broker inside its broker name: 0 is the master, 1 and up are slaves.
pub type BrokerId = u64;

/// Broker id of the master of a broker name.
pub const MASTER_ID: BrokerId = 0;

/// Most read or write queues a topic may have on one broker. RocketMQ has no hard cap; absurd counts (a typo
/// like 1 000 000) would allocate a consume queue per id on the broker, so we refuse them early.
pub const MAX_QUEUE_NUMS: u32 = 1024;

/// RocketMQ's permission bits on a topic or broker (PRIORITY 8, READ 4, WRITE 2, INHERIT 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Permission(u32);

impl Permission {
    /// Ordered-priority flag (legacy, carried for compatibility).
    pub const PRIORITY: u32 = 8;
    /// Consumers may read.
    pub const READ: u32 = 4;
    /// Producers may write.
    pub const WRITE: u32 = 2;
    /// Inherited from the broker's default topic (legacy, carried for compatibility).
    pub const INHERIT: u32 = 1;
    /// Every defined bit; anything outside is rejected.
    pub const ALL: u32 = Self::PRIORITY | Self::READ | Self::WRITE | Self::INHERIT;
    /// Read + write, the default for a new topic (RocketMQ's 6).
    pub const READ_WRITE: Permission = Permission(Self::READ | Self::WRITE);

    /// The raw bits, as RocketMQ writes them.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether consumers may read.
    pub fn is_readable(self) -> bool {
        self.0 & Self::READ != 0
    }

    /// Whether producers may write.
    pub fn is_writable(self) -> bool {
        self.0 & Self::WRITE != 0
    }
}

impl Default for Permission {
    fn default() -> Self {
        Self::READ_WRITE
    }
}

/// A permission value with bits outside [`Permission::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("permission {0} has bits outside PRIORITY 8 | READ 4 | WRITE 2 | INHERIT 1")]
pub struct BadPermission(pub u32);

impl TryFrom<u32> for Permission {
    type Error = BadPermission;

    fn try_from(bits: u32) -> Result<Self, Self::Error> {
        if bits & !Self::ALL != 0 { Err(BadPermission(bits)) } else { Ok(Self(bits)) }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = if self.is_readable() { "r" } else { "-" };
        let w = if self.is_writable() { "w" } else { "-" };
        write!(f, "{r}{w}({})", self.0)
    }
}

/// The RocketMQ 5 message type a topic accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageType {
    /// Not declared (RocketMQ 4 topics, files written before types existed): accepts every type, like `Mixed`.
    #[default]
    Unspecified,
    /// Plain messages.
    Normal,
    /// Ordered per message group.
    Fifo,
    /// Delivered at a later time.
    Delay,
    /// Transactional (half) messages.
    Transaction,
    /// Any of the four: what auto-created topics are, so every official SDK works out of the box.
    Mixed,
}

impl MessageType {
    /// Whether a topic of this type takes a message of kind `kind` (Normal, Fifo, Delay or Transaction): typed
    /// topics take their own kind only; `Mixed` and undeclared topics take every kind.
    pub fn accepts(self, kind: MessageType) -> bool {
        matches!(self, MessageType::Mixed | MessageType::Unspecified) || self == kind
    }

    /// The lower-case name used by the CLI, the config files and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Unspecified => "unspecified",
            MessageType::Normal => "normal",
            MessageType::Fifo => "fifo",
            MessageType::Delay => "delay",
            MessageType::Transaction => "transaction",
            MessageType::Mixed => "mixed",
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MessageType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "normal" => Ok(MessageType::Normal),
            "fifo" => Ok(MessageType::Fifo),
            "delay" => Ok(MessageType::Delay),
            "transaction" => Ok(MessageType::Transaction),
            "mixed" => Ok(MessageType::Mixed),
            other => Err(format!("unknown message type {other:?} (normal, fifo, delay, transaction or mixed)")),
        }
    }
}

/// One topic as configured on a broker: what a broker registers with the NameServer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopicConfig {
    /// Topic name (checked with `validate_topic_name`).
    pub name: String,
    /// Queues consumers read, `1..=MAX_QUEUE_NUMS`.
    pub read_queue_nums: u32,
    /// Queues producers write, `1..=MAX_QUEUE_NUMS`.
    pub write_queue_nums: u32,
    /// Permission of the topic on this broker.
    pub perm: Permission,
    /// Accepted message type.
    pub message_type: MessageType,
}

/// Version of a broker's topic configuration: the NameServer only re-reads topics when it changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct DataVersion {
    /// Bumped on role changes (RocketMQ's stateVersion); a lower value than the live one is stale.
    pub state_version: u64,
    /// When the configuration last changed, milliseconds since the Unix epoch.
    pub timestamp_millis: u64,
    /// Bumped on every configuration change.
    pub counter: u64,
}

impl fmt::Display for DataVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.state_version, self.timestamp_millis, self.counter)
    }
}

/// A topic's queues on one broker name.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueData {
    /// The broker name (master/slave group) hosting the queues.
    pub broker_name: String,
    /// Readable queue count.
    pub read_queue_nums: u32,
    /// Writable queue count.
    pub write_queue_nums: u32,
    /// Permission of the topic on that broker.
    pub perm: Permission,
    /// Accepted message type.
    pub message_type: MessageType,
}

/// The members of one broker name and their addresses.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BrokerData {
    /// Cluster the broker name belongs to.
    pub cluster_name: String,
    /// The broker name.
    pub broker_name: String,
    /// Advertised address of each member by broker id (0 = master).
    pub addresses: BTreeMap<BrokerId, String>,
}

/// Where a topic lives: what clients need to pick a queue and a broker address.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopicRoute {
    /// The topic.
    pub topic: String,
    /// Queues per broker name, sorted by broker name.
    pub queues: Vec<QueueData>,
    /// Addresses of those broker names, sorted by broker name.
    pub brokers: Vec<BrokerData>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_rejects_undefined_bits_and_reads_flags() {
        assert_eq!(Permission::try_from(16), Err(BadPermission(16)));
        let p = Permission::try_from(6).unwrap();
        assert!(p.is_readable() && p.is_writable());
        let ro = Permission::try_from(Permission::READ).unwrap();
        assert!(ro.is_readable() && !ro.is_writable());
        assert_eq!(Permission::default().bits(), 6);
    }
}
