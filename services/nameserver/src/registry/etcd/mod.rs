//! The etcd backend: every broker registration is a set of keys under one lease whose TTL is the broker's
//! expiry; heartbeats keep the lease alive; unregister revokes it. Every NameServer watches the prefix and
//! serves reads from its local mirror ([`cache::EtcdCache`] → [`LocalRoutes`]), so all NameServers agree and a
//! restarted one serves the full table as soon as its first read completes (it waits for it before serving).
//!
//! While etcd is unreachable, reads keep answering from the last known state, writes fail with UNAVAILABLE,
//! health reports NOT_SERVING for `comet.v1.NameServer`, and the sync task retries; when etcd answers again it
//! rebuilds the mirror from a fresh read and re-watches from that revision.

mod cache;
mod keys;
mod sync;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use comet_model::{DataVersion, MASTER_ID};
use etcd_client::{Client, ConnectOptions, DeleteOptions, PutOptions};
use tokio::sync::watch;

use self::cache::EtcdCache;
use self::keys::{BrokerRecord, Layout};
use super::{LocalRoutes, Registry};
use crate::config::Config;
use crate::error::{NameServerError, Result};
use crate::kv::KvTable;
use crate::route::{BrokerIdentity, BrokerRegistration, RegisterOutcome, RouteTable};

/// Concurrent chunk puts during one registration.
const PUT_PARALLELISM: usize = 8;

/// State shared by the registry (writes) and the sync task (reads from etcd).
#[derive(Debug)]
struct Shared {
    routes: LocalRoutes,
    /// Lock order: `cache`, then `routes.table`, then `routes.kv`.
    cache: parking_lot::Mutex<EtcdCache>,
    /// Highest etcd revision applied to `routes`: writers wait for their own revision (read-your-writes).
    revision: watch::Sender<i64>,
    degraded: watch::Sender<bool>,
}

/// Registry backed by etcd.
pub struct EtcdRegistry {
    client: Client,
    layout: Layout,
    shared: Arc<Shared>,
    request_timeout: Duration,
    topics_per_key: usize,
    default_expiry: Duration,
    sync_task: tokio::task::JoinHandle<()>,
}

impl Drop for EtcdRegistry {
    fn drop(&mut self) {
        self.sync_task.abort();
    }
}

impl EtcdRegistry {
    /// Connects, starts the watch/sync task, and waits (up to the connect + request timeouts) for the first full
    /// read, so a freshly started NameServer serves the whole table. If etcd does not answer it starts degraded.
    pub async fn start(config: &Config) -> Result<Self> {
        let etcd = &config.etcd;
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(etcd.connect_timeout_ms))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let client = Client::connect(&etcd.endpoints, Some(options))
            .await
            .map_err(|source| NameServerError::Etcd { op: "connect", source })?;
        let layout = Layout::new(&etcd.prefix);
        let shared = Arc::new(Shared {
            routes: LocalRoutes::new(RouteTable::new(config.broker_expiry()), KvTable::default()),
            cache: parking_lot::Mutex::new(EtcdCache::new(layout.clone())),
            revision: watch::channel(0).0,
            degraded: watch::channel(true).0,
        });
        let request_timeout = Duration::from_millis(etcd.request_timeout_ms);
        let sync_task = tokio::spawn(sync::run(sync::Sync {
            client: client.clone(),
            layout: layout.clone(),
            shared: Arc::clone(&shared),
            probe_interval: Duration::from_millis(etcd.probe_interval_ms),
            retry_interval: Duration::from_millis(etcd.retry_interval_ms),
            request_timeout,
            default_expiry: config.broker_expiry(),
        }));
        let mut degraded = shared.degraded.subscribe();
        let first_read = Duration::from_millis(etcd.connect_timeout_ms) + request_timeout;
        if tokio::time::timeout(first_read, degraded.wait_for(|d| !*d)).await.is_err() {
            tracing::warn!(endpoints = ?etcd.endpoints, "etcd did not answer at start-up; serving degraded (no routes)");
        }
        Ok(Self {
            client,
            layout,
            shared,
            request_timeout,
            topics_per_key: etcd.topics_per_key,
            default_expiry: config.broker_expiry(),
            sync_task,
        })
    }

    /// Runs one etcd call with the request timeout, mapping failures to UNAVAILABLE-class errors.
    async fn call<T>(&self, op: &'static str, fut: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T> {
        match tokio::time::timeout(self.request_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(NameServerError::Etcd { op, source }),
            Err(_) => Err(NameServerError::Unavailable {
                reason: format!("etcd {op} got no answer within {:?}", self.request_timeout),
            }),
        }
    }

    /// Waits until the watch has applied `revision` to the local tables, so the writer's next read sees its
    /// own write. Bounded by the request timeout: the write itself already succeeded.
    async fn wait_applied(&self, revision: i64) {
        let mut applied = self.shared.revision.subscribe();
        let caught_up = tokio::time::timeout(self.request_timeout, applied.wait_for(|r| *r >= revision)).await;
        if caught_up.is_err() {
            tracing::debug!(revision, "watch has not caught up with our own write yet");
        }
    }

    /// Refreshes a lease once; `false` if etcd no longer knows it (expired).
    async fn keep_alive(&self, lease: i64) -> Result<bool> {
        let mut client = self.client.clone();
        let (mut keeper, mut stream) = self.call("lease keep-alive", client.lease_keep_alive(lease)).await?;
        self.call("lease keep-alive", keeper.keep_alive()).await?;
        let answer = self.call("lease keep-alive", stream.message()).await?;
        Ok(answer.is_some_and(|a| a.ttl() > 0))
    }

    fn record(&self, name: &str, id: u64) -> Option<BrokerRecord> {
        self.shared.cache.lock().record(name, id).cloned()
    }

    fn outcome(&self, id: &BrokerIdentity, data_changed: bool) -> RegisterOutcome {
        let mut outcome = RegisterOutcome { data_changed, ..RegisterOutcome::default() };
        if id.broker_id != MASTER_ID
            && let Some((address, ha)) = self.shared.routes.table.read().master_of(&id.broker_name)
        {
            outcome.master_address = address;
            outcome.master_ha_address = ha;
        }
        outcome
    }

    async fn put_chunks(&self, reg: &BrokerRegistration, lease: i64) -> Result<u32> {
        let id = &reg.identity;
        let chunks: Vec<&[comet_model::TopicConfig]> = reg.topics.chunks(self.topics_per_key).collect();
        let count = u32::try_from(chunks.len())
            .map_err(|_| NameServerError::invalid("topics", "too many topic chunks for one broker"))?;
        for group in
            chunks.chunks(PUT_PARALLELISM).enumerate().map(|(g, c)| (g * PUT_PARALLELISM, c)).collect::<Vec<_>>()
        {
            let (first, group) = group;
            let puts = group.iter().enumerate().map(|(i, topics)| {
                let key = self.layout.topics(&id.broker_name, id.broker_id, lease, (first + i) as u32);
                let mut client = self.client.clone();
                async move {
                    let value = serde_json::to_vec(topics)
                        .map_err(|e| NameServerError::Corrupt { key: key.clone(), reason: e.to_string() })?;
                    self.call("put topics", client.put(key, value, Some(PutOptions::new().with_lease(lease)))).await
                }
            });
            futures_util::future::try_join_all(puts).await?;
        }
        Ok(count)
    }
}

impl Registry for EtcdRegistry {
    async fn register(&self, reg: BrokerRegistration) -> Result<RegisterOutcome> {
        self.shared.routes.table.read().check(&reg)?;
        let id = reg.identity.clone();
        let existing = self.record(&id.broker_name, id.broker_id);
        if let Some(old) = &existing
            && old.identity.address == id.address
            && old.data_version == reg.data_version
            && self.keep_alive(old.lease).await?
        {
            return Ok(self.outcome(&id, false));
        }

        let timeout = reg.heartbeat_timeout.unwrap_or(self.default_expiry);
        let ttl = i64::try_from(timeout.as_millis().div_ceil(1000)).unwrap_or(i64::MAX).max(2);
        let mut client = self.client.clone();
        let lease = self.call("lease grant", client.lease_grant(ttl, None)).await?.id();
        let written = async {
            let chunks = self.put_chunks(&reg, lease).await?;
            let record = BrokerRecord {
                identity: id.clone(),
                ha_address: reg.ha_address.clone(),
                data_version: reg.data_version,
                heartbeat_timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                lease,
                chunks,
            };
            let value = serde_json::to_vec(&record)
                .map_err(|e| NameServerError::Corrupt { key: id.to_string(), reason: e.to_string() })?;
            let key = self.layout.broker(&id.broker_name, id.broker_id);
            let mut client = self.client.clone();
            self.call("put broker", client.put(key, value, Some(PutOptions::new().with_lease(lease)))).await
        }
        .await;
        let put = match written {
            Ok(put) => put,
            Err(e) => {
                // Best effort: the half-written generation would expire with its lease anyway.
                let _ = self.call("lease revoke", self.client.clone().lease_revoke(lease)).await;
                return Err(e);
            }
        };
        if let Some(old) = existing.filter(|old| old.lease != lease)
            && let Err(e) = self.call("lease revoke", self.client.clone().lease_revoke(old.lease)).await
        {
            tracing::debug!(error = %e, "old registration lease not revoked; it will expire");
        }
        self.wait_applied(put.header().map_or(0, |h| h.revision())).await;
        tracing::info!(broker = %id, topics = reg.topics.len(), lease, "broker registered in etcd");
        Ok(self.outcome(&id, true))
    }

    async fn heartbeat(&self, id: BrokerIdentity, version: DataVersion) -> Result<bool> {
        match self.record(&id.broker_name, id.broker_id) {
            Some(r) if r.identity.address == id.address && r.data_version == version => self.keep_alive(r.lease).await,
            _ => Ok(false),
        }
    }

    async fn unregister(&self, id: BrokerIdentity) -> Result<bool> {
        let Some(record) = self.record(&id.broker_name, id.broker_id).filter(|r| r.identity.address == id.address)
        else {
            return Ok(false);
        };
        let revoked = self.call("lease revoke", self.client.clone().lease_revoke(record.lease)).await?;
        self.wait_applied(revoked.header().map_or(0, |h| h.revision())).await;
        tracing::info!(broker = %id, "broker unregistered from etcd");
        Ok(true)
    }

    async fn delete_topic(&self, topic: String, cluster: Option<String>) -> Result<bool> {
        let hosts = self.shared.routes.table.read().brokers_hosting(&topic, cluster.as_deref());
        let mut revision = 0;
        for name in &hosts {
            let Some(record) = self.record(name, MASTER_ID) else { continue };
            let key = self.layout.tombstone(name, MASTER_ID, record.lease, &topic);
            let mut client = self.client.clone();
            let put = self
                .call("put tombstone", client.put(key, "", Some(PutOptions::new().with_lease(record.lease))))
                .await?;
            revision = revision.max(put.header().map_or(0, |h| h.revision()));
        }
        self.wait_applied(revision).await;
        Ok(!hosts.is_empty())
    }

    async fn put_kv(&self, namespace: String, key: String, value: String) -> Result<()> {
        let mut client = self.client.clone();
        let put = self.call("put kv", client.put(self.layout.kv(&namespace, &key), value, None)).await?;
        self.wait_applied(put.header().map_or(0, |h| h.revision())).await;
        Ok(())
    }

    async fn delete_kv(&self, namespace: String, key: String) -> Result<bool> {
        let mut client = self.client.clone();
        let deleted =
            self.call("delete kv", client.delete(self.layout.kv(&namespace, &key), None::<DeleteOptions>)).await?;
        self.wait_applied(deleted.header().map_or(0, |h| h.revision())).await;
        Ok(deleted.deleted() > 0)
    }

    fn routes(&self) -> &LocalRoutes {
        &self.shared.routes
    }

    fn backend(&self) -> &'static str {
        "etcd"
    }

    fn degraded(&self) -> watch::Receiver<bool> {
        self.shared.degraded.subscribe()
    }
}
