//! The broker's state, shared by every handler and background task: the store, the topic, group, offset and
//! client tables, the long-poll waiters, and the send limiter.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use comet_model::{MessageType, Permission, TopicConfig};
use comet_store::{AppendResult, NewMessage, Store};
use tokio::sync::{Notify, Semaphore};

use crate::config::Config;
use crate::domain::clients::ClientRegistry;
use crate::domain::dedup::Dedup;
use crate::domain::groups::GroupTable;
use crate::domain::locks::QueueLocks;
use crate::domain::long_poll::PullWaiters;
use crate::domain::offsets::OffsetStore;
use crate::domain::pop::ReceiveState;
use crate::domain::pulled::PulledOffsets;
use crate::domain::retry::SendBacks;
use crate::domain::topics::TopicTable;
use crate::domain::transactions::{CheckStreams, TransactionTable};
use crate::error::{BrokerError, Result};
use crate::ha::Replication;
use crate::metrics::BrokerMetrics;
use crate::v2::sessions::Sessions;

/// Everything a request needs. Cheap to share (`Arc<Broker>`).
pub struct Broker {
    /// The effective configuration.
    pub config: Config,
    /// The address registered with NameServers and written into records as the store host.
    pub advertised: String,
    /// The message store. Synchronous: call it from [`Broker::blocking`].
    pub store: Store,
    /// Topics (persisted).
    pub topics: TopicTable,
    /// Subscription groups (persisted).
    pub groups: GroupTable,
    /// Consumer offsets (persisted every `offset-flush-interval-ms`).
    pub offsets: OffsetStore,
    /// Live producers and consumers.
    pub clients: ClientRegistry,
    /// Orderly consumption's queue locks (`messaging.queue-lock-lease-ms`).
    pub locks: QueueLocks,
    /// Parked long polls; also the store's arrival listener.
    pub waiters: Arc<PullWaiters>,
    /// Permits for sends in flight (`max-inflight-sends`).
    pub sends: Arc<Semaphore>,
    /// Signalled after every topic change, so the registration task re-registers at once.
    pub topics_changed: Notify,
    /// Where each group's pulls got to (in-flight and ready messages in metrics).
    pub pulled: PulledOffsets,
    /// Send and pull counters (docs/operations.md, "Metrics").
    pub metrics: BrokerMetrics,
    /// Master/slave replication: sync-send waits, slave sessions, the slave's progress.
    pub ha: Arc<Replication>,
    /// Recent consumer send-backs, so a repeated one stores a single retry copy.
    pub send_backs: SendBacks,
    /// Idempotent send: message ids stored within `messaging.dedup-window-ms`.
    pub dedup: Dedup,
    /// Transactions: unresolved half messages and recent resolutions (rebuilt from the store at start).
    pub transactions: TransactionTable,
    /// Transactions: the open check-back streams of live producers, by producer group.
    pub check_streams: CheckStreams<comet_proto::comet::v1::TransactionCheck>,
    /// Clients of the RocketMQ 5 API (`x-mq-client-id`): settings, Telemetry streams, liveness.
    pub sessions: Arc<Sessions>,
    /// The RocketMQ 5 receive model: unfinished deliveries of every (group, topic, queue) (v2/receive.rs).
    pub receive: ReceiveState,
    /// The NameServers the RocketMQ 5 QueryRoute asks for every broker serving a topic (made on first use, inside
    /// the runtime; `None` without `broker.nameserver-addresses`).
    pub nameservers: std::sync::OnceLock<Option<comet_nameserver_client::NameServerClient>>,
    ids: MessageIds,
    next_queue: AtomicU64,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("advertised", &self.advertised).field("dir", &self.store.dir()).finish()
    }
}

impl std::fmt::Debug for MessageIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageIds({:016X})", self.prefix)
    }
}

/// Broker-assigned message ids: 32 hex digits, a per-process prefix (advertised address and start time) and a
/// counter, so ids are unique across brokers and restarts without coordination.
struct MessageIds {
    prefix: u64,
    counter: AtomicU64,
}

impl MessageIds {
    fn new(advertised: &str, start_ms: u64) -> Self {
        // FNV-1a of the address, mixed with the start time: distinct brokers and restarts get distinct prefixes.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in advertised.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Self { prefix: h ^ start_ms.rotate_left(24), counter: AtomicU64::new(0) }
    }

    // Hot path (one per message sent without an id): hex by hand, not through `format!`'s machinery.
    fn next(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut id = [0u8; 32];
        let counter = self.counter.fetch_add(1, Ordering::Relaxed);
        for (i, word) in [self.prefix, counter].into_iter().enumerate() {
            for j in 0..16 {
                id[i * 16 + j] = HEX[((word >> (60 - 4 * j)) & 0xF) as usize];
            }
        }
        id.iter().map(|&b| char::from(b)).collect()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Broker {
    /// Opens the store and the metadata files under `<store dir>/config/`, without metrics. Blocking.
    pub fn open(config: Config, advertised: String) -> Result<Arc<Self>> {
        let meter = comet_telemetry::opentelemetry::metrics::MeterProvider::meter(
            &comet_telemetry::opentelemetry::metrics::NoopMeterProvider::new(),
            "comet-broker",
        );
        Self::open_with_meter(config, advertised, &meter)
    }

    /// Opens the store and the metadata files under `<store dir>/config/`, with counters from `meter`.
    /// Blocking (store recovery).
    pub fn open_with_meter(
        mut config: Config,
        advertised: String,
        meter: &comet_telemetry::opentelemetry::metrics::Meter,
    ) -> Result<Arc<Self>> {
        if let Ok(addr) = advertised.parse::<SocketAddr>() {
            config.store.store_host = addr;
        }
        let (store, report) = Store::open_with_report(config.store.clone())?;
        tracing::info!(
            dir = %config.store.dir.display(),
            after_crash = report.after_crash,
            redispatched = report.redispatched,
            elapsed = ?report.elapsed,
            "store opened"
        );
        let meta = config.store.dir.join("config");
        let topics = TopicTable::open(meta.join("topics.json"))?;
        let groups = GroupTable::open(meta.join("groups.json"))?;
        let offsets = OffsetStore::open(meta.join("consumer-offsets.json"))?;
        let receive = ReceiveState::open(meta.join("receive-windows.json"), now_ms())?;
        let waiters = Arc::new(PullWaiters::new(config.broker.max_parked_pulls));
        let ha = Arc::new(Replication::new(&config));
        store.set_arrival_listener(Arc::new(Arrivals { waiters: Arc::clone(&waiters), ha: Arc::clone(&ha) }));
        let started = now_ms();
        let messaging = &config.messaging;
        let dedup = Dedup::new(messaging.dedup_window_ms, messaging.dedup_max_entries, store.newest_indexed_time());
        let transactions = TransactionTable::new(messaging.transaction_max_pending);
        let broker = Broker {
            advertised: advertised.clone(),
            store,
            topics,
            groups,
            offsets,
            clients: ClientRegistry::new(config.broker.client_expiry_ms),
            locks: QueueLocks::new(config.messaging.queue_lock_lease_ms),
            waiters,
            sends: Arc::new(Semaphore::new(config.broker.max_inflight_sends)),
            topics_changed: Notify::new(),
            pulled: PulledOffsets::default(),
            metrics: BrokerMetrics::new(meter, &config.metrics),
            ha,
            send_backs: SendBacks::new(
                crate::domain::retry::SEND_BACK_MEMORY_MS,
                crate::domain::retry::SEND_BACK_MEMORY_ENTRIES,
            ),
            dedup,
            transactions,
            check_streams: CheckStreams::default(),
            sessions: Arc::new(Sessions::new(std::time::Duration::from_millis(config.broker.client_expiry_ms))),
            receive,
            nameservers: std::sync::OnceLock::new(),
            ids: MessageIds::new(&advertised, started),
            next_queue: AtomicU64::new(0),
            config,
        };
        crate::handler::transaction::recover(&broker)?;
        crate::v2::receive::recover(&broker)?;
        Ok(Arc::new(broker))
    }

    /// Runs `f` on the blocking pool (store calls, file writes), keeping the async workers free. The pool has
    /// `broker.blocking-threads` threads and queues the rest, so `f` must never wait for another such call.
    pub async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        F: FnOnce(&Broker) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let broker = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&broker))
            .await
            .map_err(|e| BrokerError::Internal(format!("blocking task failed: {e}")))?
    }

    /// A new broker-assigned message id.
    pub fn next_message_id(&self) -> String {
        self.ids.next()
    }

    /// Round-robin queue choice among `n` write queues.
    pub fn next_queue(&self, n: u32) -> u32 {
        let i = self.next_queue.fetch_add(1, Ordering::Relaxed);
        u32::try_from(i % u64::from(n.max(1))).unwrap_or(0)
    }

    /// A new topic with this broker's defaults: `default-queue-count` read and write queues, read+write, MIXED
    /// (every message type, so any official RocketMQ 5 SDK can use an auto-created topic).
    pub fn default_topic(&self, name: &str) -> TopicConfig {
        let n = self.config.broker.default_queue_count;
        TopicConfig {
            name: name.to_owned(),
            read_queue_nums: n,
            write_queue_nums: n,
            perm: Permission::READ_WRITE,
            message_type: MessageType::Mixed,
        }
    }

    /// The topic's config for a send: auto-created if allowed (and the registration task told).
    pub fn topic_for_send(&self, name: &str) -> Result<TopicConfig> {
        if let Some(t) = self.topics.get(name) {
            return Ok(t);
        }
        if !self.config.broker.auto_create_topics {
            return Err(BrokerError::TopicNotFound { topic: name.to_owned() });
        }
        let (topic, created) = self.topics.get_or_create(self.default_topic(name), now_ms())?;
        if created {
            tracing::info!(topic = name, queues = topic.write_queue_nums, "topic auto-created");
            self.topics_changed.notify_one();
        }
        Ok(topic)
    }

    /// A system topic (retry, dead-letter, timer, transaction): created with `queues` queues on first use whatever
    /// `auto-create-topics` says, since only the broker writes it.
    pub fn system_topic(&self, name: &str, queues: u32) -> Result<TopicConfig> {
        if let Some(t) = self.topics.get(name) {
            return Ok(t);
        }
        let config = TopicConfig {
            name: name.to_owned(),
            read_queue_nums: queues,
            write_queue_nums: queues,
            perm: Permission::READ_WRITE,
            message_type: MessageType::Normal,
        };
        let (topic, created) = self.topics.get_or_create(config, now_ms())?;
        if created {
            tracing::info!(topic = name, queues, "system topic created");
            self.topics_changed.notify_one();
        }
        Ok(topic)
    }

    /// [`Broker::system_topic`] with one queue, from async code: free when the topic exists, otherwise created on
    /// the blocking pool (it writes topics.json).
    pub async fn ensure_system_topic(self: &Arc<Self>, name: &str) -> Result<()> {
        if self.topics.get(name).is_none() {
            let name = name.to_owned();
            self.blocking(move |b| b.system_topic(&name, 1).map(drop)).await?;
        }
        Ok(())
    }

    /// Stores messages the broker itself writes (redeliveries, dead letters, delayed deliveries, transaction
    /// commits and records): on the blocking pool, then, with sync replication, until enough slaves hold them,
    /// so an internal move is as durable as the send it stands for. All messages must name one topic and queue.
    pub async fn append_internal(self: &Arc<Self>, messages: Vec<NewMessage>) -> Result<Vec<AppendResult>> {
        let results = self.store_internal(messages).await?;
        self.replicated(&results).await?;
        Ok(results)
    }

    /// [`Broker::append_internal`] without the replication wait, for callers that must record what was stored
    /// before anything else can fail (then call [`Broker::replicated`]).
    pub async fn store_internal(self: &Arc<Self>, messages: Vec<NewMessage>) -> Result<Vec<AppendResult>> {
        let results = self.blocking(move |b| Ok(b.store.append_batch(&messages)?)).await?;
        self.ha.on_appended();
        Ok(results)
    }

    /// With sync replication, waits until enough slaves hold the stored `results` (at once otherwise).
    pub async fn replicated(&self, results: &[AppendResult]) -> Result<()> {
        if self.ha.is_sync()
            && let (Some(first), Some(last)) = (results.first(), results.last())
        {
            self.ha.wait_replicated(last.offset.0 + u64::from(last.size), first.offset.0).await?;
        }
        Ok(())
    }

    /// Refuses a write (send, topic or group change) on a slave: its data and metadata come from its master.
    pub fn require_master(&self, what: &'static str) -> Result<()> {
        if self.config.is_slave() {
            return Err(BrokerError::NotMaster {
                what,
                broker: format!("{} (broker id {})", self.config.broker.broker_name, self.config.broker.broker_id),
            });
        }
        Ok(())
    }

    /// An existing topic's config.
    pub fn topic(&self, name: &str) -> Result<TopicConfig> {
        self.topics.get(name).ok_or_else(|| BrokerError::TopicNotFound { topic: name.to_owned() })
    }

    /// Final steps of a clean shutdown: flush offsets and close the store. Blocking.
    pub fn close(&self) -> Result<()> {
        let snapshot = self.receive.snapshot();
        let flushed = self.offsets.flush().and(snapshot);
        let closed = self.store.clone().close().map_err(BrokerError::from);
        flushed.and(closed)
    }
}

/// The store's arrival listener: wakes parked long polls and parked slave fetches.
struct Arrivals {
    waiters: Arc<PullWaiters>,
    ha: Arc<Replication>,
}

impl comet_store::ArrivalListener for Arrivals {
    // Hot path (dispatcher thread): no allocation, no blocking.
    fn on_arrival(&self, topic: &str, queue_id: comet_model::QueueId, max_offset: comet_model::QueueOffset) {
        self.waiters.on_arrival(topic, queue_id, max_offset);
        self.ha.on_appended();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_unique_and_differ_between_brokers() {
        let a = MessageIds::new("10.0.0.1:8081", 1);
        let b = MessageIds::new("10.0.0.2:8081", 1);
        let (a1, a2, b1) = (a.next(), a.next(), b.next());
        assert_ne!(a1, a2);
        assert_ne!(a1, b1);
        assert_eq!(a1.len(), 32);
        // The same text `format!("{:016X}{:016X}")` would give.
        assert_eq!(a1, format!("{:016X}{:016X}", a.prefix, 0));
        assert_eq!(a2, format!("{:016X}{:016X}", a.prefix, 1));
    }
}
