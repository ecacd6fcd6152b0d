//! The route table: RocketMQ's `RouteInfoManager` tables as one synchronous structure.
//!
//! Time is passed in (`now`), never read here, so tests drive expiry without sleeping. Callers hold it behind
//! one `RwLock`: queries take the read lock, registrations the write lock; nothing here blocks or awaits.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use comet_model::{BrokerData, BrokerId, DataVersion, MASTER_ID, QueueData, TopicConfig, TopicRoute};

use super::registration::{BrokerIdentity, BrokerRegistration};
use crate::error::NameServerError;

/// Liveness entry of one broker (a member of a broker name).
#[derive(Clone, Debug)]
struct LiveBroker {
    identity: BrokerIdentity,
    ha_address: String,
    data_version: DataVersion,
    last_seen: Instant,
    timeout: Duration,
}

/// Members of one broker name.
#[derive(Clone, Debug)]
struct BrokerGroup {
    cluster_name: String,
    addresses: BTreeMap<BrokerId, String>,
}

/// What a registration changed, for the broker's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegisterOutcome {
    /// The broker was unknown or its data version differs: its topics were (re)read.
    pub data_changed: bool,
    /// For slaves: the master's address, empty if no master is registered.
    pub master_address: String,
    /// For slaves: the master's HA address.
    pub master_ha_address: String,
}

/// One cluster and the broker names in it, for `GetClusterInfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterView {
    /// Cluster name.
    pub cluster_name: String,
    /// Its broker names with addresses, sorted by name.
    pub brokers: Vec<BrokerData>,
}

/// topic → broker name → queues; broker name → members; cluster → broker names; liveness per member.
#[derive(Debug)]
pub struct RouteTable {
    topics: HashMap<String, BTreeMap<String, QueueData>>,
    groups: BTreeMap<String, BrokerGroup>,
    clusters: BTreeMap<String, BTreeSet<String>>,
    live: HashMap<(String, BrokerId), LiveBroker>,
    /// Topics each broker name hosts: lets removal skip a scan over every topic.
    topics_by_broker: HashMap<String, HashSet<String>>,
    default_timeout: Duration,
}

impl RouteTable {
    /// An empty table; brokers that do not name a heartbeat timeout expire after `default_timeout` of silence.
    pub fn new(default_timeout: Duration) -> Self {
        Self {
            topics: HashMap::new(),
            groups: BTreeMap::new(),
            clusters: BTreeMap::new(),
            live: HashMap::new(),
            topics_by_broker: HashMap::new(),
            default_timeout,
        }
    }

    /// Checks a validated registration against the table without changing it: a live id at another address, a
    /// broker name in another cluster, or a state version older than the live one are refused.
    pub fn check(&self, reg: &BrokerRegistration) -> Result<(), NameServerError> {
        let id = &reg.identity;
        if let Some(group) = self.groups.get(&id.broker_name)
            && group.cluster_name != id.cluster_name
        {
            return Err(NameServerError::ClusterMismatch {
                broker_name: id.broker_name.clone(),
                existing: group.cluster_name.clone(),
                requested: id.cluster_name.clone(),
            });
        }
        if let Some(live) = self.live.get(&(id.broker_name.clone(), id.broker_id)) {
            if live.identity.address != id.address {
                return Err(NameServerError::DuplicateBrokerId {
                    broker_name: id.broker_name.clone(),
                    broker_id: id.broker_id,
                    existing: live.identity.address.clone(),
                    requested: id.address.clone(),
                });
            }
            if reg.data_version.state_version < live.data_version.state_version {
                return Err(NameServerError::StaleStateVersion {
                    broker: id.to_string(),
                    existing: live.data_version.state_version,
                    requested: reg.data_version.state_version,
                });
            }
        }
        Ok(())
    }

    /// Whether the table holds this broker at this address and data version (a heartbeat would suffice).
    pub fn is_current(&self, id: &BrokerIdentity, version: &DataVersion) -> bool {
        self.live
            .get(&(id.broker_name.clone(), id.broker_id))
            .is_some_and(|live| live.identity.address == id.address && live.data_version == *version)
    }

    /// Registers a broker with RocketMQ semantics: refused if `check` fails; topics are re-read only from the
    /// master and only when the broker is new or its data version changed.
    pub fn register(&mut self, reg: BrokerRegistration, now: Instant) -> Result<RegisterOutcome, NameServerError> {
        self.check(&reg)?;
        let changed = !self.is_current(&reg.identity, &reg.data_version);
        Ok(self.apply(reg, now, changed))
    }

    /// Applies a registration without `check`: the etcd cache uses it for what etcd already holds.
    /// `replace_topics` forces the master's topics to be re-read even if the data version is unchanged.
    pub fn apply(&mut self, reg: BrokerRegistration, now: Instant, replace_topics: bool) -> RegisterOutcome {
        let id = reg.identity.clone();
        // A member that moved to another id at the same address (slave promoted to master) leaves its old id.
        let moved: Vec<BrokerId> = self
            .live
            .values()
            .filter(|l| {
                l.identity.broker_name == id.broker_name
                    && l.identity.address == id.address
                    && l.identity.broker_id != id.broker_id
            })
            .map(|l| l.identity.broker_id)
            .collect();
        for old in moved {
            if let Some(live) = self.live.get(&(id.broker_name.clone(), old)) {
                let identity = live.identity.clone();
                self.remove(&identity);
            }
        }

        self.clusters.entry(id.cluster_name.clone()).or_default().insert(id.broker_name.clone());
        self.groups
            .entry(id.broker_name.clone())
            .or_insert_with(|| BrokerGroup { cluster_name: id.cluster_name.clone(), addresses: BTreeMap::new() })
            .addresses
            .insert(id.broker_id, id.address.clone());
        if id.broker_id == MASTER_ID && replace_topics {
            self.replace_topics(&id.broker_name, &reg.topics);
        }
        self.live.insert(
            (id.broker_name.clone(), id.broker_id),
            LiveBroker {
                identity: id.clone(),
                ha_address: reg.ha_address,
                data_version: reg.data_version,
                last_seen: now,
                timeout: reg.heartbeat_timeout.unwrap_or(self.default_timeout),
            },
        );

        let mut outcome = RegisterOutcome { data_changed: replace_topics, ..RegisterOutcome::default() };
        if id.broker_id != MASTER_ID
            && let Some(master) = self.live.get(&(id.broker_name.clone(), MASTER_ID))
        {
            outcome.master_address = master.identity.address.clone();
            outcome.master_ha_address = master.ha_address.clone();
        }
        outcome
    }

    fn replace_topics(&mut self, broker_name: &str, topics: &[TopicConfig]) {
        let new: HashSet<&str> = topics.iter().map(|t| t.name.as_str()).collect();
        let old = self.topics_by_broker.remove(broker_name).unwrap_or_default();
        for gone in old.iter().filter(|t| !new.contains(t.as_str())) {
            self.remove_queue_data(gone, broker_name);
        }
        let mut hosted = HashSet::with_capacity(topics.len());
        for t in topics {
            let queues = QueueData {
                broker_name: broker_name.to_owned(),
                read_queue_nums: t.read_queue_nums,
                write_queue_nums: t.write_queue_nums,
                perm: t.perm,
                message_type: t.message_type,
            };
            self.topics.entry(t.name.clone()).or_default().insert(broker_name.to_owned(), queues);
            hosted.insert(t.name.clone());
        }
        self.topics_by_broker.insert(broker_name.to_owned(), hosted);
    }

    fn remove_queue_data(&mut self, topic: &str, broker_name: &str) {
        if let Some(by_broker) = self.topics.get_mut(topic) {
            by_broker.remove(broker_name);
            if by_broker.is_empty() {
                self.topics.remove(topic);
            }
        }
    }

    /// Records a heartbeat. Returns false (registration required) if the broker is unknown at this address or
    /// holds another data version; the heartbeat then refreshes nothing.
    pub fn heartbeat(&mut self, id: &BrokerIdentity, version: &DataVersion, now: Instant) -> bool {
        match self.live.get_mut(&(id.broker_name.clone(), id.broker_id)) {
            Some(live) if live.identity.address == id.address && live.data_version == *version => {
                live.last_seen = now;
                true
            }
            _ => false,
        }
    }

    /// Removes a broker at once (clean shutdown). Returns false if it was not registered at that address.
    pub fn unregister(&mut self, id: &BrokerIdentity) -> bool {
        match self.live.get(&(id.broker_name.clone(), id.broker_id)) {
            Some(live) if live.identity.address == id.address => {
                let identity = live.identity.clone();
                self.remove(&identity);
                true
            }
            _ => false,
        }
    }

    /// Drops every broker silent for longer than its timeout and returns who was dropped.
    pub fn expire(&mut self, now: Instant) -> Vec<BrokerIdentity> {
        let dead: Vec<BrokerIdentity> = self
            .live
            .values()
            .filter(|l| now.saturating_duration_since(l.last_seen) > l.timeout)
            .map(|l| l.identity.clone())
            .collect();
        for id in &dead {
            self.remove(id);
        }
        dead
    }

    /// Removes one member; when it was the last of its broker name, the broker name leaves its cluster and its
    /// queues leave every topic (topics left without queues disappear).
    fn remove(&mut self, id: &BrokerIdentity) {
        self.live.remove(&(id.broker_name.clone(), id.broker_id));
        let Some(group) = self.groups.get_mut(&id.broker_name) else { return };
        group.addresses.remove(&id.broker_id);
        if !group.addresses.is_empty() {
            return;
        }
        let cluster = group.cluster_name.clone();
        self.groups.remove(&id.broker_name);
        if let Some(names) = self.clusters.get_mut(&cluster) {
            names.remove(&id.broker_name);
            if names.is_empty() {
                self.clusters.remove(&cluster);
            }
        }
        for topic in self.topics_by_broker.remove(&id.broker_name).unwrap_or_default() {
            self.remove_queue_data(&topic, &id.broker_name);
        }
    }

    /// The route of a topic, or `None` if no live broker hosts it.
    // Hot path: runs under the read lock for every QueryRoute; no logging, one allocation per field.
    pub fn query(&self, topic: &str) -> Option<TopicRoute> {
        let by_broker = self.topics.get(topic)?;
        let queues: Vec<QueueData> = by_broker.values().cloned().collect();
        let brokers = by_broker.keys().filter_map(|name| self.broker_data(name)).collect();
        Some(TopicRoute { topic: topic.to_owned(), queues, brokers })
    }

    fn broker_data(&self, broker_name: &str) -> Option<BrokerData> {
        self.groups.get(broker_name).map(|g| BrokerData {
            cluster_name: g.cluster_name.clone(),
            broker_name: broker_name.to_owned(),
            addresses: g.addresses.clone(),
        })
    }

    /// Every cluster with its broker names, sorted.
    pub fn clusters(&self) -> Vec<ClusterView> {
        self.clusters
            .iter()
            .map(|(cluster, names)| ClusterView {
                cluster_name: cluster.clone(),
                brokers: names.iter().filter_map(|n| self.broker_data(n)).collect(),
            })
            .collect()
    }

    /// Every routed topic (only those on brokers of `cluster` if given), sorted.
    pub fn topics(&self, cluster: Option<&str>) -> Vec<String> {
        let mut out: Vec<String> = match cluster {
            None => self.topics.keys().cloned().collect(),
            Some(c) => self
                .topics
                .iter()
                .filter(|(_, by_broker)| by_broker.keys().any(|b| self.cluster_of(b) == Some(c)))
                .map(|(t, _)| t.clone())
                .collect(),
        };
        out.sort_unstable();
        out
    }

    fn cluster_of(&self, broker_name: &str) -> Option<&str> {
        self.groups.get(broker_name).map(|g| g.cluster_name.as_str())
    }

    /// Broker names that host `topic` (only in `cluster` if given): what a route deletion touches.
    pub fn brokers_hosting(&self, topic: &str, cluster: Option<&str>) -> Vec<String> {
        self.topics
            .get(topic)
            .map(|by_broker| {
                by_broker.keys().filter(|b| cluster.is_none_or(|c| self.cluster_of(b) == Some(c))).cloned().collect()
            })
            .unwrap_or_default()
    }

    /// Forgets a topic's route (on the brokers of `cluster` only, if given). Returns whether anything was removed.
    pub fn delete_topic(&mut self, topic: &str, cluster: Option<&str>) -> bool {
        let names = self.brokers_hosting(topic, cluster);
        for name in &names {
            self.remove_queue_data(topic, name);
            if let Some(hosted) = self.topics_by_broker.get_mut(name) {
                hosted.remove(topic);
            }
        }
        !names.is_empty()
    }

    /// Address and HA address of a broker name's master, if registered.
    pub fn master_of(&self, broker_name: &str) -> Option<(String, String)> {
        self.live.get(&(broker_name.to_owned(), MASTER_ID)).map(|m| (m.identity.address.clone(), m.ha_address.clone()))
    }

    /// Number of routed topics (metrics).
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// Live broker members per cluster (metrics).
    pub fn brokers_by_cluster(&self) -> BTreeMap<String, usize> {
        let mut out: BTreeMap<String, usize> = BTreeMap::new();
        for (name, _) in self.live.keys() {
            let cluster = self.cluster_of(name).unwrap_or_default();
            *out.entry(cluster.to_owned()).or_default() += 1;
        }
        out
    }

    /// Number of live broker members.
    pub fn broker_count(&self) -> usize {
        self.live.len()
    }

    /// Drops everything (the etcd cache rebuilds from a fresh read).
    pub fn clear(&mut self) {
        *self = Self::new(self.default_timeout);
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
