//! The etcd key layout (under the configured prefix `P`) and the values stored there.
//!
//! ```text
//! P/brokers/<broker name>/<id>                        BrokerRecord (JSON), under the broker's lease
//! P/topics/<broker name>/<id>/<lease hex>/<chunk>     Vec<TopicConfig> (JSON), same lease
//! P/tombstones/<broker name>/<id>/<lease hex>/<topic> "" : route deleted by an admin, same lease
//! P/kv/<namespace>/<key>                              KV config value, no lease
//! ```
//! Topics are split over chunk keys because etcd refuses requests above 1.5 MiB; the record is written last,
//! so a watcher that sees the record has already seen every chunk of its generation (the lease id). Everything
//! of a registration shares one lease: when the broker stops heartbeating, etcd deletes it all at once.
//! Names never contain `/` (validated), so keys split unambiguously.

use comet_model::{BrokerId, DataVersion};

use crate::route::BrokerIdentity;

/// What `P/brokers/<name>/<id>` holds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BrokerRecord {
    /// The broker.
    pub identity: BrokerIdentity,
    /// Its HA address.
    pub ha_address: String,
    /// Version of the topics in the chunks.
    pub data_version: DataVersion,
    /// Heartbeat timeout = lease TTL, in milliseconds.
    pub heartbeat_timeout_ms: u64,
    /// The lease everything of this registration lives under; also names the chunk generation.
    pub lease: i64,
    /// Number of topic chunk keys of this generation.
    pub chunks: u32,
}

/// A parsed key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// A broker record.
    Broker {
        /// Broker name.
        name: String,
        /// Broker id.
        id: BrokerId,
    },
    /// A chunk of topics.
    Topics {
        /// Broker name.
        name: String,
        /// Broker id.
        id: BrokerId,
        /// Generation (lease id).
        lease: i64,
        /// Chunk number.
        chunk: u32,
    },
    /// A deleted topic route.
    Tombstone {
        /// Broker name.
        name: String,
        /// Broker id.
        id: BrokerId,
        /// Generation (lease id).
        lease: i64,
        /// The topic.
        topic: String,
    },
    /// A KV config entry.
    Kv {
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
    },
}

/// Builds and parses keys under one prefix.
#[derive(Clone, Debug)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    /// Keys under `prefix` (no trailing slash).
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    /// The prefix every key starts with (with trailing slash), for prefix gets and watches.
    pub fn root(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// Key of a broker record.
    pub fn broker(&self, name: &str, id: BrokerId) -> String {
        format!("{}/brokers/{name}/{id}", self.prefix)
    }

    /// Key of a topic chunk.
    pub fn topics(&self, name: &str, id: BrokerId, lease: i64, chunk: u32) -> String {
        format!("{}/topics/{name}/{id}/{lease:x}/{chunk:06}", self.prefix)
    }

    /// Key of a route tombstone.
    pub fn tombstone(&self, name: &str, id: BrokerId, lease: i64, topic: &str) -> String {
        format!("{}/tombstones/{name}/{id}/{lease:x}/{topic}", self.prefix)
    }

    /// Key of a KV entry.
    pub fn kv(&self, namespace: &str, key: &str) -> String {
        format!("{}/kv/{namespace}/{key}", self.prefix)
    }

    /// Parses a key; `None` for keys this version does not know (ignored, so newer layouts can coexist).
    pub fn parse(&self, raw: &[u8]) -> Option<Key> {
        let text = std::str::from_utf8(raw).ok()?;
        let rest = text.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["brokers", name, id] => Some(Key::Broker { name: (*name).to_owned(), id: id.parse().ok()? }),
            ["topics", name, id, lease, chunk] => Some(Key::Topics {
                name: (*name).to_owned(),
                id: id.parse().ok()?,
                lease: i64::from_str_radix(lease, 16).ok()?,
                chunk: chunk.parse().ok()?,
            }),
            ["tombstones", name, id, lease, topic] => Some(Key::Tombstone {
                name: (*name).to_owned(),
                id: id.parse().ok()?,
                lease: i64::from_str_radix(lease, 16).ok()?,
                topic: (*topic).to_owned(),
            }),
            ["kv", namespace, key] => Some(Key::Kv { namespace: (*namespace).to_owned(), key: (*key).to_owned() }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_parse() {
        let l = Layout::new("/comet/ns");
        assert_eq!(l.parse(l.broker("b-1", 0).as_bytes()), Some(Key::Broker { name: "b-1".into(), id: 0 }));
        assert_eq!(
            l.parse(l.topics("b", 2, 0x7f3a, 12).as_bytes()),
            Some(Key::Topics { name: "b".into(), id: 2, lease: 0x7f3a, chunk: 12 })
        );
        assert_eq!(
            l.parse(l.tombstone("b", 0, 5, "%RETRY%g").as_bytes()),
            Some(Key::Tombstone { name: "b".into(), id: 0, lease: 5, topic: "%RETRY%g".into() })
        );
        assert_eq!(l.parse(l.kv("ns", "k").as_bytes()), Some(Key::Kv { namespace: "ns".into(), key: "k".into() }));
        assert_eq!(l.parse(b"/comet/ns/unknown/x"), None);
        assert_eq!(l.parse(b"/other/brokers/b/0"), None);
    }
}
