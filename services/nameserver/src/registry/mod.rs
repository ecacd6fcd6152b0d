//! Where routes live. Two backends behind one trait, chosen by `registry.backend`:
//! [`memory::MemoryRegistry`] (RocketMQ semantics, each NameServer on its own) and, with the `etcd` feature,
//! `etcd::EtcdRegistry` (leases + a watched cache, all NameServers agree).
//!
//! Reads never go to a backend: both keep a [`LocalRoutes`] that queries read under a read lock, so a
//! QueryRoute costs the same in either mode and keeps answering while etcd is down.

use std::collections::BTreeMap;
use std::future::Future;

use comet_model::{DataVersion, TopicRoute};
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::error::Result;
use crate::kv::KvTable;
use crate::route::{BrokerIdentity, BrokerRegistration, ClusterView, RegisterOutcome, RouteTable};

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod memory;

/// The writes a registry backend implements; reads go through [`Registry::routes`].
pub trait Registry: Send + Sync + 'static {
    /// Applies a validated full registration.
    fn register(&self, reg: BrokerRegistration) -> impl Future<Output = Result<RegisterOutcome>> + Send;
    /// Refreshes a broker's liveness. `Ok(false)` = unknown broker or data version: it must register in full.
    fn heartbeat(&self, id: BrokerIdentity, version: DataVersion) -> impl Future<Output = Result<bool>> + Send;
    /// Removes a broker at once; `Ok(false)` if it was not registered at that address.
    fn unregister(&self, id: BrokerIdentity) -> impl Future<Output = Result<bool>> + Send;
    /// Forgets a topic's route (in one cluster only if given); `Ok(false)` if there was none.
    fn delete_topic(&self, topic: String, cluster: Option<String>) -> impl Future<Output = Result<bool>> + Send;
    /// Sets a KV config value durably.
    fn put_kv(&self, namespace: String, key: String, value: String) -> impl Future<Output = Result<()>> + Send;
    /// Removes a KV config value durably; `Ok(false)` if absent.
    fn delete_kv(&self, namespace: String, key: String) -> impl Future<Output = Result<bool>> + Send;
    /// The local tables every read is served from.
    fn routes(&self) -> &LocalRoutes;
    /// Backend name for cluster info: "memory" or "etcd".
    fn backend(&self) -> &'static str;
    /// `true` while the backend cannot reach its store (reads serve the last known state).
    fn degraded(&self) -> watch::Receiver<bool>;
}

/// The route and KV tables a NameServer answers reads from.
#[derive(Debug)]
pub struct LocalRoutes {
    /// Routes, brokers, liveness.
    pub table: RwLock<RouteTable>,
    /// KV config.
    pub kv: RwLock<KvTable>,
}

impl LocalRoutes {
    /// Wraps the two tables.
    pub fn new(table: RouteTable, kv: KvTable) -> Self {
        Self { table: RwLock::new(table), kv: RwLock::new(kv) }
    }

    /// A topic's route.
    // Hot path: one read lock, no await, no logging.
    pub fn query(&self, topic: &str) -> Option<TopicRoute> {
        self.table.read().query(topic)
    }

    /// Every cluster and its brokers.
    pub fn clusters(&self) -> Vec<ClusterView> {
        self.table.read().clusters()
    }

    /// Routed topics, optionally of one cluster.
    pub fn topics(&self, cluster: Option<&str>) -> Vec<String> {
        self.table.read().topics(cluster)
    }

    /// One KV value.
    pub fn get_kv(&self, namespace: &str, key: &str) -> Option<String> {
        self.kv.read().get(namespace, key).map(str::to_owned)
    }

    /// A KV namespace.
    pub fn list_kv(&self, namespace: &str) -> BTreeMap<String, String> {
        self.kv.read().list(namespace)
    }
}

/// The clock registries read: tokio's, so `tokio::time::pause()` drives expiry in tests.
pub fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}
