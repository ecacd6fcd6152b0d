//! The memory backend: RocketMQ's NameServer. Routes are rebuilt from broker registrations, liveness is a scan
//! every `scan-interval-ms`, KV config is persisted to `kvConfig.json`. NameServers never talk to each other:
//! brokers register with all of them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use comet_model::DataVersion;
use tokio::sync::watch;

use super::{LocalRoutes, Registry, now};
use crate::error::{NameServerError, Result};
use crate::kv::KvTable;
use crate::route::{BrokerIdentity, BrokerRegistration, RegisterOutcome, RouteTable};

/// In-process registry.
#[derive(Debug)]
pub struct MemoryRegistry {
    routes: Arc<LocalRoutes>,
    kv_path: PathBuf,
    /// Serialises KV writes so the file always matches the last applied change.
    kv_write: tokio::sync::Mutex<()>,
    degraded: watch::Sender<bool>,
}

impl MemoryRegistry {
    /// Loads the KV config file (missing = empty) and starts with no brokers.
    pub fn open(kv_path: PathBuf, default_expiry: Duration) -> Result<Self> {
        let kv = KvTable::load(&kv_path)?;
        let routes = Arc::new(LocalRoutes::new(RouteTable::new(default_expiry), kv));
        Ok(Self { routes, kv_path, kv_write: tokio::sync::Mutex::new(()), degraded: watch::channel(false).0 })
    }

    /// Drops silent brokers every `interval` until the returned task is aborted.
    pub fn spawn_expiry(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let routes = Arc::clone(&self.routes);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let dead = routes.table.write().expire(now());
                for id in dead {
                    tracing::warn!(broker = %id, "broker expired: no heartbeat within its timeout");
                }
            }
        })
    }

    /// Applies `change` to a copy of the KV table, saves the copy, and only then makes it current: a failed
    /// write leaves memory and file as they were.
    async fn change_kv<T: Send + 'static>(&self, change: impl FnOnce(&mut KvTable) -> T) -> Result<T> {
        let _serial = self.kv_write.lock().await;
        let mut next = self.routes.kv.read().clone();
        let out = change(&mut next);
        let path = self.kv_path.clone();
        let saved = tokio::task::spawn_blocking(move || next.save(&path).map(|()| next))
            .await
            .map_err(|e| NameServerError::Unavailable { reason: format!("kv writer task: {e}") })??;
        *self.routes.kv.write() = saved;
        Ok(out)
    }
}

impl Registry for MemoryRegistry {
    async fn register(&self, reg: BrokerRegistration) -> Result<RegisterOutcome> {
        let id = reg.identity.clone();
        let topics = reg.topics.len();
        let outcome = self.routes.table.write().register(reg, now())?;
        if outcome.data_changed {
            tracing::info!(broker = %id, topics, "broker registered");
        }
        Ok(outcome)
    }

    async fn heartbeat(&self, id: BrokerIdentity, version: DataVersion) -> Result<bool> {
        Ok(self.routes.table.write().heartbeat(&id, &version, now()))
    }

    async fn unregister(&self, id: BrokerIdentity) -> Result<bool> {
        let removed = self.routes.table.write().unregister(&id);
        if removed {
            tracing::info!(broker = %id, "broker unregistered");
        }
        Ok(removed)
    }

    async fn delete_topic(&self, topic: String, cluster: Option<String>) -> Result<bool> {
        Ok(self.routes.table.write().delete_topic(&topic, cluster.as_deref()))
    }

    async fn put_kv(&self, namespace: String, key: String, value: String) -> Result<()> {
        self.change_kv(move |kv| {
            kv.put(&namespace, &key, &value);
        })
        .await
    }

    async fn delete_kv(&self, namespace: String, key: String) -> Result<bool> {
        self.change_kv(move |kv| kv.delete(&namespace, &key)).await
    }

    fn routes(&self) -> &LocalRoutes {
        &self.routes
    }

    fn backend(&self) -> &'static str {
        "memory"
    }

    fn degraded(&self) -> watch::Receiver<bool> {
        self.degraded.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use comet_model::{MessageType, Permission, TopicConfig};

    fn reg(topics: &[&str]) -> BrokerRegistration {
        BrokerRegistration {
            identity: BrokerIdentity {
                cluster_name: "c".into(),
                broker_name: "b".into(),
                broker_id: 0,
                address: "h:1".into(),
            },
            ha_address: String::new(),
            data_version: DataVersion { state_version: 0, timestamp_millis: 1, counter: 1 },
            topics: topics
                .iter()
                .map(|t| TopicConfig {
                    name: (*t).into(),
                    read_queue_nums: 1,
                    write_queue_nums: 1,
                    perm: Permission::READ_WRITE,
                    message_type: MessageType::Normal,
                })
                .collect(),
            heartbeat_timeout: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_task_drops_a_silent_broker_after_the_timeout_on_paused_time() {
        let dir = tempfile::tempdir().unwrap();
        let registry = MemoryRegistry::open(dir.path().join("kv.json"), Duration::from_secs(120)).unwrap();
        let task = registry.spawn_expiry(Duration::from_secs(10));
        registry.register(reg(&["t"])).await.unwrap();

        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(registry.heartbeat(reg(&[]).identity, reg(&[]).data_version).await.unwrap());
        tokio::time::sleep(Duration::from_secs(115)).await;
        assert!(registry.routes().query("t").is_some(), "heartbeat at 100 s keeps it alive at 215 s");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(registry.routes().query("t").is_none(), "silent since 100 s: gone by 245 s");
        task.abort();
    }

    #[tokio::test]
    async fn kv_changes_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("namesrv/kvConfig.json");
        let registry = MemoryRegistry::open(path.clone(), Duration::from_secs(120)).unwrap();
        registry.put_kv("ns".into(), "k".into(), "v".into()).await.unwrap();
        registry.put_kv("ns".into(), "k2".into(), "v2".into()).await.unwrap();
        assert!(registry.delete_kv("ns".into(), "k2".into()).await.unwrap());
        drop(registry);
        let reopened = MemoryRegistry::open(path, Duration::from_secs(120)).unwrap();
        assert_eq!(reopened.routes().get_kv("ns", "k").as_deref(), Some("v"));
        assert_eq!(reopened.routes().list_kv("ns").len(), 1);
    }
}
