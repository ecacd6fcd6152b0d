//! The sync task: full read → rebuild the mirror → watch from the next revision; on any failure mark the
//! registry degraded, keep the last known tables, and start over after `retry-interval-ms`.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};

use super::Shared;
use super::cache::{Change, EtcdCache};
use super::keys::Layout;
use crate::error::NameServerError;
use crate::kv::KvTable;
use crate::registry::now;
use crate::route::RouteTable;

/// Everything the sync task needs.
pub(super) struct Sync {
    pub client: Client,
    pub layout: Layout,
    pub shared: Arc<Shared>,
    pub probe_interval: Duration,
    pub retry_interval: Duration,
    pub request_timeout: Duration,
    pub default_expiry: Duration,
}

/// Runs until aborted.
pub(super) async fn run(sync: Sync) {
    loop {
        let err = sync.follow().await;
        let was_degraded = sync.shared.degraded.send_replace(true);
        if !was_degraded {
            tracing::error!(error = %err, "etcd unreachable: serving the last known routes; writes fail until it returns");
        } else {
            tracing::debug!(error = %err, "etcd still unreachable");
        }
        tokio::time::sleep(sync.retry_interval).await;
    }
}

impl Sync {
    async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, NameServerError> {
        match tokio::time::timeout(self.request_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(NameServerError::Etcd { op, source }),
            Err(_) => Err(NameServerError::Unavailable { reason: format!("etcd {op} timed out") }),
        }
    }

    /// One connected period: returns the error that ended it.
    async fn follow(&self) -> NameServerError {
        let mut client = self.client.clone();
        let read =
            match self.timed("get prefix", client.get(self.layout.root(), Some(GetOptions::new().with_prefix()))).await
            {
                Ok(read) => read,
                Err(e) => return e,
            };
        let revision = read.header().map_or(0, |h| h.revision());
        let (brokers, topics) = {
            // Build the new tables off to the side and swap them in at once: readers never see a half table.
            let mut cache = EtcdCache::new(self.layout.clone());
            let mut table = RouteTable::new(self.default_expiry);
            let mut kv = KvTable::default();
            let changes = read.kvs().iter().map(|kv| Change::Put { key: kv.key(), value: kv.value() });
            cache.apply(changes, &mut table, &mut kv, now());
            let counts = (table.broker_count(), table.topics(None).len());
            let mut cache_guard = self.shared.cache.lock();
            *cache_guard = cache;
            *self.shared.routes.table.write() = table;
            *self.shared.routes.kv.write() = kv;
            counts
        };
        self.shared.revision.send_replace(revision);
        if self.shared.degraded.send_replace(false) {
            tracing::info!(revision, brokers, topics, "etcd reachable: route cache rebuilt from a fresh read");
        }

        let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
        let mut stream = match self.timed("watch", client.watch(self.layout.root(), Some(options))).await {
            Ok(stream) => stream,
            Err(e) => return e,
        };
        let mut probe = tokio::time::interval(self.probe_interval);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = stream.message() => match message {
                    Ok(Some(response)) => {
                        if response.canceled() {
                            return NameServerError::Unavailable {
                                reason: format!(
                                    "watch canceled ({}; compacted at {})",
                                    response.cancel_reason(),
                                    response.compact_revision()
                                ),
                            };
                        }
                        let changes = response.events().iter().filter_map(|event| {
                            let kv = event.kv()?;
                            Some(match event.event_type() {
                                EventType::Put => Change::Put { key: kv.key(), value: kv.value() },
                                EventType::Delete => Change::Delete { key: kv.key() },
                            })
                        });
                        {
                            let mut cache = self.shared.cache.lock();
                            let mut table = self.shared.routes.table.write();
                            let mut kv = self.shared.routes.kv.write();
                            cache.apply(changes, &mut table, &mut kv, now());
                        }
                        if let Some(header) = response.header() {
                            self.shared.revision.send_if_modified(|r| {
                                let newer = header.revision() > *r;
                                if newer {
                                    *r = header.revision();
                                }
                                newer
                            });
                        }
                    }
                    Ok(None) => return NameServerError::Unavailable { reason: "watch stream ended".into() },
                    Err(source) => return NameServerError::Etcd { op: "watch", source },
                },
                _ = probe.tick() => {
                    // An idle watch does not notice a dead etcd by itself.
                    if let Err(e) = self.timed("status", client.status()).await {
                        return e;
                    }
                }
            }
        }
    }
}
