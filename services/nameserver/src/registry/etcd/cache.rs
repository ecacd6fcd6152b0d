//! The local mirror of the etcd prefix, and how its changes become route-table and KV changes.
//!
//! Synchronous and free of I/O: the sync task feeds it watch events (or a full read) and it updates the
//! [`RouteTable`] every read is served from. A broker is (re)applied when its record changes or a chunk or
//! tombstone of its current generation changes, and removed when its record disappears (lease expiry,
//! unregister).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use comet_model::{BrokerId, TopicConfig};

use super::keys::{BrokerRecord, Key, Layout};
use crate::kv::KvTable;
use crate::route::{BrokerIdentity, BrokerRegistration, RouteTable};

type BrokerKey = (String, BrokerId);
type Generation = (String, BrokerId, i64);

/// One change of a key.
#[derive(Debug)]
pub enum Change<'a> {
    /// Key created or updated.
    Put {
        /// Raw key.
        key: &'a [u8],
        /// Raw value.
        value: &'a [u8],
    },
    /// Key deleted (explicitly or by lease expiry).
    Delete {
        /// Raw key.
        key: &'a [u8],
    },
}

/// Mirror of the broker records, topic chunks and tombstones under the prefix.
#[derive(Debug)]
pub struct EtcdCache {
    layout: Layout,
    records: HashMap<BrokerKey, BrokerRecord>,
    chunks: HashMap<Generation, BTreeMap<u32, Vec<TopicConfig>>>,
    tombstones: HashMap<Generation, HashSet<String>>,
    /// Identity of each broker as currently applied to the route table, to remove it by the right address.
    applied: HashMap<BrokerKey, BrokerIdentity>,
}

impl EtcdCache {
    /// An empty mirror for keys under `layout`.
    pub fn new(layout: Layout) -> Self {
        Self {
            layout,
            records: HashMap::new(),
            chunks: HashMap::new(),
            tombstones: HashMap::new(),
            applied: HashMap::new(),
        }
    }

    /// The record of a broker, if etcd holds one.
    pub fn record(&self, name: &str, id: BrokerId) -> Option<&BrokerRecord> {
        self.records.get(&(name.to_owned(), id))
    }

    /// Applies a batch of changes (one watch response, or a whole prefix read on an empty cache).
    pub fn apply<'a>(
        &mut self,
        changes: impl IntoIterator<Item = Change<'a>>,
        table: &mut RouteTable,
        kv: &mut KvTable,
        now: Instant,
    ) {
        let mut touched: HashSet<BrokerKey> = HashSet::new();
        for change in changes {
            let (raw, value) = match change {
                Change::Put { key, value } => (key, Some(value)),
                Change::Delete { key } => (key, None),
            };
            let Some(key) = self.layout.parse(raw) else {
                tracing::debug!(key = %String::from_utf8_lossy(raw), "ignoring unknown etcd key");
                continue;
            };
            match (key, value) {
                (Key::Broker { name, id }, Some(v)) => match serde_json::from_slice::<BrokerRecord>(v) {
                    Ok(record) => {
                        self.records.insert((name.clone(), id), record);
                        touched.insert((name, id));
                    }
                    Err(e) => tracing::warn!(broker = %name, id, error = %e, "corrupt broker record in etcd; ignored"),
                },
                (Key::Broker { name, id }, None) => {
                    self.records.remove(&(name.clone(), id));
                    touched.insert((name, id));
                }
                (Key::Topics { name, id, lease, chunk }, Some(v)) => match serde_json::from_slice(v) {
                    Ok(topics) => {
                        self.chunks.entry((name.clone(), id, lease)).or_default().insert(chunk, topics);
                        touched.insert((name, id));
                    }
                    Err(e) => tracing::warn!(broker = %name, id, chunk, error = %e, "corrupt topic chunk; ignored"),
                },
                (Key::Topics { name, id, lease, chunk }, None) => {
                    let generation = (name.clone(), id, lease);
                    if let Some(chunks) = self.chunks.get_mut(&generation) {
                        chunks.remove(&chunk);
                        if chunks.is_empty() {
                            self.chunks.remove(&generation);
                        }
                    }
                    touched.insert((name, id));
                }
                (Key::Tombstone { name, id, lease, topic }, Some(_)) => {
                    self.tombstones.entry((name.clone(), id, lease)).or_default().insert(topic);
                    touched.insert((name, id));
                }
                (Key::Tombstone { name, id, lease, topic }, None) => {
                    let generation = (name.clone(), id, lease);
                    if let Some(set) = self.tombstones.get_mut(&generation) {
                        set.remove(&topic);
                        if set.is_empty() {
                            self.tombstones.remove(&generation);
                        }
                    }
                    touched.insert((name, id));
                }
                (Key::Kv { namespace, key }, Some(v)) => {
                    kv.put(&namespace, &key, &String::from_utf8_lossy(v));
                }
                (Key::Kv { namespace, key }, None) => {
                    kv.delete(&namespace, &key);
                }
            }
        }
        for broker in touched {
            self.refresh(&broker, table, now);
        }
    }

    /// Re-derives one broker's route-table entry from the mirror.
    fn refresh(&mut self, broker: &BrokerKey, table: &mut RouteTable, now: Instant) {
        let Some(record) = self.records.get(broker) else {
            if let Some(identity) = self.applied.remove(broker) {
                table.unregister(&identity);
            }
            return;
        };
        let generation = (broker.0.clone(), broker.1, record.lease);
        let chunks = self.chunks.get(&generation);
        let present = chunks.map_or(0, BTreeMap::len);
        if present != record.chunks as usize {
            // The record is written after its chunks, so this only happens while an old generation's chunks are
            // being deleted after a newer record replaced them: keep what the table has.
            tracing::debug!(broker = %record.identity, present, expected = record.chunks, "incomplete generation");
            return;
        }
        let dead = self.tombstones.get(&generation);
        let topics: Vec<TopicConfig> = chunks
            .into_iter()
            .flat_map(BTreeMap::values)
            .flatten()
            .filter(|t| dead.is_none_or(|d| !d.contains(&t.name)))
            .cloned()
            .collect();
        if let Some(old) = self.applied.get(broker)
            && old.address != record.identity.address
        {
            table.unregister(old);
        }
        let reg = BrokerRegistration {
            identity: record.identity.clone(),
            ha_address: record.ha_address.clone(),
            data_version: record.data_version,
            topics,
            heartbeat_timeout: None,
        };
        table.apply(reg, now, true);
        self.applied.insert(broker.clone(), record.identity.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use comet_model::{DataVersion, MessageType, Permission};
    use std::time::Duration;

    fn topic(name: &str) -> TopicConfig {
        TopicConfig {
            name: name.into(),
            read_queue_nums: 2,
            write_queue_nums: 2,
            perm: Permission::READ_WRITE,
            message_type: MessageType::Normal,
        }
    }

    fn record(lease: i64, chunks: u32, address: &str) -> Vec<u8> {
        serde_json::to_vec(&BrokerRecord {
            identity: BrokerIdentity {
                cluster_name: "c".into(),
                broker_name: "b".into(),
                broker_id: 0,
                address: address.into(),
            },
            ha_address: String::new(),
            data_version: DataVersion { state_version: 0, timestamp_millis: 1, counter: lease as u64 },
            heartbeat_timeout_ms: 10_000,
            lease,
            chunks,
        })
        .unwrap()
    }

    struct World {
        layout: Layout,
        cache: EtcdCache,
        table: RouteTable,
        kv: KvTable,
    }

    impl World {
        fn new() -> Self {
            let layout = Layout::new("/p");
            Self {
                cache: EtcdCache::new(layout.clone()),
                layout,
                table: RouteTable::new(Duration::from_secs(120)),
                kv: KvTable::default(),
            }
        }
        fn put(&mut self, key: String, value: Vec<u8>) {
            self.cache.apply(
                [Change::Put { key: key.as_bytes(), value: &value }],
                &mut self.table,
                &mut self.kv,
                Instant::now(),
            );
        }
        fn delete(&mut self, key: String) {
            self.cache.apply([Change::Delete { key: key.as_bytes() }], &mut self.table, &mut self.kv, Instant::now());
        }
    }

    #[test]
    fn record_after_chunks_makes_the_broker_routable_and_its_deletion_removes_it() {
        let mut w = World::new();
        let chunk0 = serde_json::to_vec(&[topic("t1"), topic("t2")]).unwrap();
        let chunk1 = serde_json::to_vec(&[topic("t3")]).unwrap();
        w.put(w.layout.topics("b", 0, 7, 0), chunk0);
        w.put(w.layout.topics("b", 0, 7, 1), chunk1);
        assert!(w.table.query("t1").is_none(), "no record yet");
        w.put(w.layout.broker("b", 0), record(7, 2, "h:1"));
        assert_eq!(w.table.topics(None), ["t1", "t2", "t3"]);

        // Lease expiry deletes everything; the record's deletion takes the routes away.
        w.delete(w.layout.topics("b", 0, 7, 0));
        w.delete(w.layout.broker("b", 0));
        assert!(w.table.query("t1").is_none());
        assert!(w.table.clusters().is_empty());
    }

    #[test]
    fn new_generation_replaces_topics_and_old_chunk_deletions_do_not_disturb_it() {
        let mut w = World::new();
        w.put(w.layout.topics("b", 0, 1, 0), serde_json::to_vec(&[topic("old")]).unwrap());
        w.put(w.layout.broker("b", 0), record(1, 1, "h:1"));
        w.put(w.layout.topics("b", 0, 2, 0), serde_json::to_vec(&[topic("new")]).unwrap());
        w.put(w.layout.broker("b", 0), record(2, 1, "h:1"));
        assert_eq!(w.table.topics(None), ["new"]);
        w.delete(w.layout.topics("b", 0, 1, 0)); // old lease revoked
        assert_eq!(w.table.topics(None), ["new"]);
    }

    #[test]
    fn tombstone_hides_a_topic_of_its_generation_only() {
        let mut w = World::new();
        w.put(w.layout.topics("b", 0, 1, 0), serde_json::to_vec(&[topic("a"), topic("b")]).unwrap());
        w.put(w.layout.broker("b", 0), record(1, 1, "h:1"));
        w.put(w.layout.tombstone("b", 0, 1, "a"), Vec::new());
        assert_eq!(w.table.topics(None), ["b"]);
        w.put(w.layout.topics("b", 0, 2, 0), serde_json::to_vec(&[topic("a"), topic("b")]).unwrap());
        w.put(w.layout.broker("b", 0), record(2, 1, "h:1"));
        assert_eq!(w.table.topics(None), ["a", "b"], "a new data version brings it back");
    }

    #[test]
    fn kv_keys_and_unknown_keys() {
        let mut w = World::new();
        w.put(w.layout.kv("ns", "k"), b"v".to_vec());
        assert_eq!(w.kv.get("ns", "k"), Some("v"));
        w.put("/p/future/thing".into(), b"x".to_vec());
        w.put(w.layout.broker("b", 0), b"not json".to_vec());
        assert!(w.table.clusters().is_empty());
        w.delete(w.layout.kv("ns", "k"));
        assert_eq!(w.kv.get("ns", "k"), None);
    }
}
