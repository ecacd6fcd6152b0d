//! The broker's configuration: YAML file, then `COMET_<SECTION>_<KEY>` environment overrides, then `validate()`.
//! Every key has a default, so no file at all runs a single-node broker on port 8081 with data under
//! `data/broker`. Keys are documented in docs/configuration.md ("Broker").

use std::net::SocketAddr;
use std::time::Duration;

use comet_store::StoreConfig;
use serde::{Deserialize, Serialize};

use crate::error::BrokerError;

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Identity, listener, NameServers, limits.
    pub broker: BrokerSection,
    /// The storage engine (`comet_store::StoreConfig`); metadata files go to `<dir>/config/`.
    pub store: StoreConfig,
    /// Logging.
    pub log: LogConfig,
    /// Metrics: the Prometheus endpoint (default `0.0.0.0:5557`) and OTLP push.
    pub metrics: MetricsConfig,
    /// Master/slave replication over the remoting channel (off by default).
    pub ha: HaSection,
    /// Retry and dead-letter, delayed delivery, transactions, orderly locks, idempotent send.
    pub messaging: MessagingSection,
    /// The Apache RocketMQ 5 gRPC API (`apache.rocketmq.v2.MessagingService`) on the broker port.
    pub rocketmq_v2: RocketMqV2Section,
}

/// Where a consumer group that has never consumed a queue starts receiving through the RocketMQ 5 API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartFrom {
    /// The oldest message still stored: a group created just after its producers loses nothing.
    #[default]
    Earliest,
    /// Messages stored from now on (RocketMQ's pop default).
    Latest,
}

/// Section `rocketmq-v2`: the RocketMQ 5 gRPC API served beside `comet.v1.Broker` (docs/rocketmq-v2.md). The
/// defaults are the RocketMQ proxy's, so official SDKs behave as they do against Apache RocketMQ.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RocketMqV2Section {
    /// Serve `apache.rocketmq.v2.MessagingService` at all.
    pub enabled: bool,
    /// Longest delay a DELAY message may ask for through this API; further ahead is ILLEGAL_DELIVERY_TIME
    /// (the proxy: 1 day). The smaller of this and `messaging.max-delay-ms` applies.
    pub max_delay_ms: u64,
    /// Invisible time of a received message when the request names none (push consumers, auto-renewed).
    pub default_invisible_ms: u64,
    /// Shortest invisible time a receive or ChangeInvisibleDuration may ask for (the proxy: 10 s).
    pub min_invisible_ms: u64,
    /// Longest invisible time (the proxy: 12 h).
    pub max_invisible_ms: u64,
    /// Auto-renewed messages stay invisible at most this long in total while unacknowledged (the proxy: 3 h).
    pub auto_renew_max_ms: u64,
    /// Shortest long-poll hold of a ReceiveMessage (the proxy: 5 s); a client deadline shorter than this plus a
    /// margin is ILLEGAL_POLLING_TIME.
    pub long_poll_min_ms: u64,
    /// Longest long-poll hold (the proxy: 20 s), also the value sent in the consumer settings reply.
    pub long_poll_max_ms: u64,
    /// Largest ReceiveMessage batch, also the `receive_batch_size` of the settings reply (the proxy: 32).
    pub receive_batch_max: u32,
    /// Messages of one (group, queue) received but not yet acknowledged, at most: beyond it the queue is not
    /// read further until acknowledgements come (memory stays bounded; about 40 bytes each).
    pub max_inflight_per_queue: usize,
    /// Where a group with no committed offset on a queue starts.
    pub start_from: StartFrom,
}

impl Default for RocketMqV2Section {
    fn default() -> Self {
        Self {
            enabled: true,
            max_delay_ms: 24 * 3_600_000,
            default_invisible_ms: 60_000,
            min_invisible_ms: 10_000,
            max_invisible_ms: 12 * 3_600_000,
            auto_renew_max_ms: 3 * 3_600_000,
            long_poll_min_ms: 5_000,
            long_poll_max_ms: 20_000,
            receive_batch_max: 32,
            max_inflight_per_queue: 20_000,
            start_from: StartFrom::Earliest,
        }
    }
}

/// What an unresolved transaction becomes once its check-backs are used up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransactionCheckPolicy {
    /// Discard the half message (RocketMQ's behaviour, made explicit: logged and counted).
    #[default]
    Rollback,
    /// Make it visible.
    Commit,
}

/// Section `messaging`: the semantics on top of the store (docs/messaging.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct MessagingSection {
    /// Longest delay a producer may ask for (RocketMQ 5: 3 days). Must stay below `store.retention-hours`, or
    /// retention could delete a message before its delivery time.
    pub max_delay_ms: u64,
    /// Width of one timer bucket (one file of waiting messages under `<store dir>/timer/`): the delivery pass
    /// loads one bucket at a time, so this bounds the timer's memory to the messages due within one width.
    pub timer_bucket_ms: u64,
    /// How often the timer files new delayed messages and delivers due ones (delivery precision).
    pub timer_tick_ms: u64,
    /// Default delay before each redelivery of a failed message: retry n waits element n-1, the last repeats
    /// (RocketMQ's levels 3..18). A group may set its own.
    pub retry_delays_ms: Vec<u64>,
    /// Idempotent send: a message id stored within this window is not stored again (0 = off).
    pub dedup_window_ms: u64,
    /// Idempotent send: most message ids remembered in memory (about 110 bytes each); beyond it the oldest are
    /// forgotten early, so the window shrinks to `max-entries / send rate`.
    pub dedup_max_entries: usize,
    /// Transactions: a half message unresolved this long is checked back with a live producer of its group.
    pub transaction_check_delay_ms: u64,
    /// Transactions: time between two check-backs of the same half message.
    pub transaction_check_interval_ms: u64,
    /// Transactions: check-backs before `transaction-check-policy` applies.
    pub transaction_check_max: u32,
    /// Transactions: what happens to a half message still unresolved after the last check-back.
    pub transaction_check_policy: TransactionCheckPolicy,
    /// Transactions: most unresolved half messages held; a transactional send beyond it is refused as busy
    /// (each costs about 200 bytes of memory).
    pub transaction_max_pending: usize,
    /// Orderly consumption: how long a queue lock lasts unless its holder renews it (RocketMQ: 60 s).
    pub queue_lock_lease_ms: u64,
}

/// RocketMQ's delay levels 3..18 (10 s ... 2 h): the default wait before retries 1..16.
pub const DEFAULT_RETRY_DELAYS_MS: [u64; 16] = [
    10_000, 30_000, 60_000, 120_000, 180_000, 240_000, 300_000, 360_000, 420_000, 480_000, 540_000, 600_000, 1_200_000,
    1_800_000, 3_600_000, 7_200_000,
];

impl Default for MessagingSection {
    fn default() -> Self {
        Self {
            max_delay_ms: 3 * 24 * 3_600_000,
            timer_bucket_ms: 10_000,
            timer_tick_ms: 100,
            retry_delays_ms: DEFAULT_RETRY_DELAYS_MS.to_vec(),
            dedup_window_ms: 600_000,
            dedup_max_entries: 1 << 18,
            transaction_check_delay_ms: 6_000,
            transaction_check_interval_ms: 30_000,
            transaction_check_max: 15,
            transaction_check_policy: TransactionCheckPolicy::Rollback,
            transaction_max_pending: 200_000,
            queue_lock_lease_ms: 60_000,
        }
    }
}

/// How a master acknowledges sends when it has slaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicationMode {
    /// Acknowledge after the master's own store (and flush, per `store.flush-mode`); slaves catch up behind.
    #[default]
    Async,
    /// Acknowledge only once `ha.sync-replicas` slaves hold the message; fail the send if they do not in time.
    Sync,
}

/// Section `ha`: a master (broker id 0) listens for its slaves; a slave (broker id > 0) copies the master's
/// CommitLog and metadata. Both sides must hold the same `secret` and `store.segment-size`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct HaSection {
    /// Master: where slaves connect (`ip:port`, port 0 = a free port); empty = no replication listener.
    pub listen: String,
    /// Master: the `host:port` slaves are told (registered with the NameServers as the HA address). Empty = the
    /// listen address, unspecified IP replaced by 127.0.0.1.
    pub advertised_address: String,
    /// Slave: the master's HA address (`host:port`). Required when `broker.broker-id` > 0.
    pub master_address: String,
    /// Shared secret proving a peer is a member of this broker group (HMAC-SHA256 challenge; never sent in
    /// clear). Required whenever replication is on; at least 16 bytes. Prefer `COMET_HA_SECRET` over the file.
    pub secret: String,
    /// Master: `async` or `sync`.
    pub replication: ReplicationMode,
    /// Master, sync mode: slaves that must hold a message before its send is acknowledged.
    pub sync_replicas: usize,
    /// Master, sync mode: longest a send waits for its slaves before failing (the message stays stored on the
    /// master).
    pub sync_timeout_ms: u64,
    /// Largest CommitLog chunk per transfer.
    pub chunk_bytes: usize,
    /// Master: a slave further behind than this is reported out of sync.
    pub max_lag_bytes: u64,
    /// Slave: how often topics, subscription groups and consumer offsets are copied from the master.
    pub metadata_sync_interval_ms: u64,
    /// Slave: how long a parked fetch waits at the master for new data (also the liveness probe interval).
    pub fetch_wait_ms: u64,
    /// Longest wait for any one HA request (connect, handshake, transfer) before the connection is dropped.
    pub request_timeout_ms: u64,
}

impl Default for HaSection {
    fn default() -> Self {
        Self {
            listen: String::new(),
            advertised_address: String::new(),
            master_address: String::new(),
            secret: String::new(),
            replication: ReplicationMode::Async,
            sync_replicas: 1,
            sync_timeout_ms: 3_000,
            chunk_bytes: 4 << 20,
            max_lag_bytes: 256 << 20,
            metadata_sync_interval_ms: 2_000,
            fetch_wait_ms: 1_000,
            request_timeout_ms: 10_000,
        }
    }
}

/// Largest `store.max-message-size` with replication: half the remoting frame, leaving room for the record's
/// header, keys and properties.
pub const MAX_REPLICATED_MESSAGE: u64 = (comet_remoting::frame::DEFAULT_MAX_FRAME_SIZE / 2) as u64;

/// Shortest `ha.secret` accepted.
pub const MIN_SECRET_LEN: usize = 16;

/// Section `broker`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct BrokerSection {
    /// gRPC listen address; port 0 picks a free port (printed at start-up).
    pub listen: String,
    /// `host:port` clients are told to connect to (registered with the NameServers). Empty = the listen
    /// address, with an unspecified IP (0.0.0.0, ::) replaced by 127.0.0.1 and port 0 by the bound port.
    pub advertised_address: String,
    /// Cluster this broker belongs to.
    pub cluster_name: String,
    /// Broker name (a master and its slaves share it).
    pub broker_name: String,
    /// 0 = master.
    pub broker_id: u64,
    /// NameServers to register with; empty = run without registering.
    pub nameserver_addresses: Vec<String>,
    /// How often the broker heartbeats every NameServer (full registration when one asks).
    pub register_interval_ms: u64,
    /// Create an unknown topic on its first send (with `default-queue-count` queues).
    pub auto_create_topics: bool,
    /// Create an unknown subscription group on its first consumer heartbeat.
    pub auto_create_groups: bool,
    /// Read and write queues of auto-created topics, and of created topics that give 0.
    pub default_queue_count: u32,
    /// Most SendMessage calls stored at once; beyond it sends are answered "busy" (RESOURCE_EXHAUSTED).
    pub max_inflight_sends: usize,
    /// Most long-polling pulls parked at once; beyond it pulls are answered "busy".
    pub max_parked_pulls: usize,
    /// Longest a pull may wait for messages, whatever the client asks.
    pub max_pull_wait_ms: u64,
    /// Silence after which a client is dropped from its groups (RocketMQ: 120 s).
    pub client_expiry_ms: u64,
    /// How often changed consumer offsets are written to disk (also at shutdown).
    pub offset_flush_interval_ms: u64,
    /// After SIGTERM, how long in-flight calls and connections may drain.
    pub shutdown_grace_ms: u64,
    /// Client connections open at once on the broker's port (gRPC and remoting together). One beyond it is
    /// closed as soon as it is accepted (logged): what clients can hold in descriptors and buffers stays bounded.
    pub max_connections: usize,
    /// Threads for store calls taken off the async workers (reads of data not in the page cache, file writes); more
    /// calls wait their turn. Each thread keeps its own allocator caches, so threads beyond what the disk can use
    /// only cost memory: under overload 100 of them held ~400 MiB more than 16 did, at the same throughput.
    pub blocking_threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            broker: BrokerSection::default(),
            store: StoreConfig::new("data/broker"),
            log: LogConfig::default(),
            metrics: MetricsConfig::listening_on(comet_telemetry::BROKER_LISTEN),
            ha: HaSection::default(),
            messaging: MessagingSection::default(),
            rocketmq_v2: RocketMqV2Section::default(),
        }
    }
}

/// The store of in-process unit tests: small files, and usage counted against 1 TiB, so a shared CI disk already
/// past the 90 % limit neither refuses their writes nor deletes their segments.
#[cfg(test)]
pub(crate) fn test_store(dir: &std::path::Path) -> StoreConfig {
    StoreConfig {
        segment_size: 16 << 20,
        index_slots: 4096,
        index_entries: 65_536,
        disk_capacity_bytes: Some(1 << 40),
        ..StoreConfig::new(dir)
    }
}

impl Default for BrokerSection {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8081".into(),
            advertised_address: String::new(),
            cluster_name: "DefaultCluster".into(),
            broker_name: "broker-a".into(),
            broker_id: 0,
            nameserver_addresses: Vec::new(),
            register_interval_ms: 30_000,
            auto_create_topics: true,
            auto_create_groups: true,
            default_queue_count: 8,
            max_inflight_sends: 1024,
            max_parked_pulls: 10_000,
            max_pull_wait_ms: 30_000,
            client_expiry_ms: 120_000,
            offset_flush_interval_ms: 5_000,
            shutdown_grace_ms: 5_000,
            max_connections: 10_000,
            blocking_threads: 16,
        }
    }
}

pub use comet_config::LogConfig;
pub use comet_telemetry::MetricsConfig;

/// Environment variables that override config keys start with this.
pub const ENV_PREFIX: &str = comet_config::ENV_PREFIX;

impl Config {
    /// Reads the YAML file (if any), applies `COMET_<SECTION>_<KEY>` overrides from `env`, and validates.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, BrokerError> {
        let config: Config = comet_config::load(file, env).map_err(|e| BrokerError::Config(e.0))?;
        config.validate()?;
        Ok(config)
    }

    /// Refuses values the broker cannot run with, naming the key.
    pub fn validate(&self) -> Result<(), BrokerError> {
        let bad = |key: &str, why: String| Err(BrokerError::Config(format!("{key}: {why}")));
        let b = &self.broker;
        if let Err(e) = b.listen.parse::<SocketAddr>() {
            return bad("broker.listen", format!("{:?} is not ip:port ({e})", b.listen));
        }
        if !b.advertised_address.is_empty() && !b.advertised_address.contains(':') {
            return bad("broker.advertised-address", format!("{:?} is not host:port", b.advertised_address));
        }
        if let Err(e) = comet_model::validate_cluster_name(&b.cluster_name) {
            return bad("broker.cluster-name", e.to_string());
        }
        if let Err(e) = comet_model::validate_broker_name(&b.broker_name) {
            return bad("broker.broker-name", e.to_string());
        }
        if b.nameserver_addresses.iter().any(|a| a.trim().is_empty()) {
            return bad("broker.nameserver-addresses", "empty address in the list".into());
        }
        if b.default_queue_count == 0 || b.default_queue_count > comet_model::MAX_QUEUE_NUMS {
            return bad("broker.default-queue-count", format!("must be 1..={}", comet_model::MAX_QUEUE_NUMS));
        }
        for (key, value) in [
            ("broker.register-interval-ms", b.register_interval_ms),
            ("broker.max-pull-wait-ms", b.max_pull_wait_ms),
            ("broker.client-expiry-ms", b.client_expiry_ms),
            ("broker.offset-flush-interval-ms", b.offset_flush_interval_ms),
        ] {
            if value == 0 {
                return bad(key, "must be > 0".into());
            }
        }
        if b.max_inflight_sends == 0 {
            return bad("broker.max-inflight-sends", "must be > 0".into());
        }
        if b.max_connections == 0 {
            return bad("broker.max-connections", "must be > 0".into());
        }
        if !(1..=1024).contains(&b.blocking_threads) {
            return bad("broker.blocking-threads", "must be 1..=1024".into());
        }
        if self.messaging.queue_lock_lease_ms < 1_000 {
            // Orderly consumers renew every third of the lease and give a lock up after half of it unrenewed.
            return bad("messaging.queue-lock-lease-ms", "must be at least 1000".into());
        }
        self.validate_ha()?;
        self.validate_timer()?;
        self.validate_retry()?;
        self.validate_rocketmq_v2()?;
        self.validate_transactions()?;
        self.store.validate().map_err(|e| BrokerError::Config(format!("store: {e}")))?;
        self.metrics.validate().map_err(|e| BrokerError::Config(e.to_string()))?;
        Ok(())
    }

    fn validate_timer(&self) -> Result<(), BrokerError> {
        let bad = |key: &str, why: String| Err(BrokerError::Config(format!("{key}: {why}")));
        let m = &self.messaging;
        let retention_ms = self.store.retention_hours.saturating_mul(3_600_000);
        if m.max_delay_ms == 0 {
            return bad("messaging.max-delay-ms", "must be > 0".into());
        }
        // A segment expires only once its newest message is older than the retention, so a message due within
        // the retention of its store time is delivered before its segment can go.
        if m.max_delay_ms > retention_ms {
            return bad(
                "messaging.max-delay-ms",
                format!(
                    "{} exceeds store.retention-hours ({} h = {retention_ms} ms): retention would delete delayed \
                     messages before their time",
                    m.max_delay_ms, self.store.retention_hours
                ),
            );
        }
        if !(100..=3_600_000).contains(&m.timer_bucket_ms) {
            return bad("messaging.timer-bucket-ms", format!("{} is not in 100..=3600000", m.timer_bucket_ms));
        }
        if !(10..=1_000).contains(&m.timer_tick_ms) {
            return bad("messaging.timer-tick-ms", format!("{} is not in 10..=1000", m.timer_tick_ms));
        }
        Ok(())
    }

    fn validate_rocketmq_v2(&self) -> Result<(), BrokerError> {
        let bad = |key: &str, why: String| Err(BrokerError::Config(format!("rocketmq-v2.{key}: {why}")));
        let v = &self.rocketmq_v2;
        // Above messaging.max-delay-ms is allowed: the smaller of the two applies (a broker with a short native
        // limit need not restate it here).
        if v.max_delay_ms == 0 {
            return bad("max-delay-ms", "must be > 0".into());
        }
        if v.min_invisible_ms == 0 || v.min_invisible_ms > v.max_invisible_ms {
            return bad("min-invisible-ms", "must be > 0 and at most max-invisible-ms".into());
        }
        if !(v.min_invisible_ms..=v.max_invisible_ms).contains(&v.default_invisible_ms) {
            return bad("default-invisible-ms", "must lie within min-invisible-ms..=max-invisible-ms".into());
        }
        if v.long_poll_min_ms == 0 || v.long_poll_min_ms > v.long_poll_max_ms {
            return bad("long-poll-min-ms", "must be > 0 and at most long-poll-max-ms".into());
        }
        if v.receive_batch_max == 0 || v.receive_batch_max > 1024 {
            return bad("receive-batch-max", "must be 1..=1024".into());
        }
        if v.max_inflight_per_queue == 0 {
            return bad("max-inflight-per-queue", "must be > 0".into());
        }
        Ok(())
    }

    fn validate_retry(&self) -> Result<(), BrokerError> {
        crate::domain::retry::check_delays(&self.messaging.retry_delays_ms)
            .map_err(|why| BrokerError::Config(format!("messaging.retry-delays-ms: {why}")))?;
        if self.messaging.retry_delays_ms.is_empty() {
            return Err(BrokerError::Config("messaging.retry-delays-ms: at least one delay is required".into()));
        }
        Ok(())
    }

    /// The transaction and idempotent-send keys of `messaging`.
    fn validate_transactions(&self) -> Result<(), BrokerError> {
        let bad = |key: &str, why: &str| Err(BrokerError::Config(format!("messaging.{key}: {why}")));
        let m = &self.messaging;
        if m.dedup_window_ms > 0 && m.dedup_max_entries == 0 {
            return bad("dedup-max-entries", "must be > 0 when dedup-window-ms is on");
        }
        if m.transaction_check_interval_ms == 0 {
            return bad("transaction-check-interval-ms", "must be > 0");
        }
        if m.transaction_max_pending == 0 {
            return bad("transaction-max-pending", "must be > 0");
        }
        let retention_ms = self.store.retention_hours.saturating_mul(3_600_000);
        let last_check = m
            .transaction_check_delay_ms
            .saturating_add(m.transaction_check_interval_ms.saturating_mul(u64::from(m.transaction_check_max)));
        if retention_ms > 0 && last_check >= retention_ms {
            return bad(
                "transaction-check-max",
                "the last check-back (delay + max x interval) must come before store.retention-hours deletes the half",
            );
        }
        Ok(())
    }

    fn validate_ha(&self) -> Result<(), BrokerError> {
        let bad = |key: &str, why: String| Err(BrokerError::Config(format!("{key}: {why}")));
        let (b, ha) = (&self.broker, &self.ha);
        let slave = b.broker_id != comet_model::MASTER_ID;
        if slave && ha.master_address.is_empty() {
            return bad("ha.master-address", format!("required for a slave (broker-id {})", b.broker_id));
        }
        if !slave && !ha.master_address.is_empty() {
            return bad("ha.master-address", "only slaves (broker-id > 0) follow a master".into());
        }
        if slave && !ha.listen.is_empty() {
            return bad("ha.listen", "only a master (broker-id 0) listens for slaves".into());
        }
        if !ha.master_address.is_empty() && !ha.master_address.contains(':') {
            return bad("ha.master-address", format!("{:?} is not host:port", ha.master_address));
        }
        if !ha.listen.is_empty()
            && let Err(e) = ha.listen.parse::<SocketAddr>()
        {
            return bad("ha.listen", format!("{:?} is not ip:port ({e})", ha.listen));
        }
        if !ha.advertised_address.is_empty() && !ha.advertised_address.contains(':') {
            return bad("ha.advertised-address", format!("{:?} is not host:port", ha.advertised_address));
        }
        if self.replicates() && ha.secret.len() < MIN_SECRET_LEN {
            return bad("ha.secret", format!("replication needs a shared secret of at least {MIN_SECRET_LEN} bytes"));
        }
        if ha.replication == ReplicationMode::Sync && ha.listen.is_empty() {
            return bad("ha.replication", "sync replication needs ha.listen (a master with slaves)".into());
        }
        if ha.sync_replicas == 0 {
            return bad("ha.sync-replicas", "must be > 0".into());
        }
        // A chunk plus its frame header must fit the remoting channel's frame limit.
        let max_chunk = comet_remoting::frame::DEFAULT_MAX_FRAME_SIZE - 64 * 1024;
        if ha.chunk_bytes < 64 * 1024 || ha.chunk_bytes > max_chunk {
            return bad("ha.chunk-bytes", format!("must be 65536..={max_chunk}"));
        }
        if ha.max_lag_bytes < ha.chunk_bytes as u64 {
            return bad("ha.max-lag-bytes", "must be at least ha.chunk-bytes".into());
        }
        // A fetch answers at least one whole record: the largest must fit one remoting frame with room to spare.
        if self.replicates() && u64::from(self.store.max_message_size) > MAX_REPLICATED_MESSAGE {
            return bad(
                "store.max-message-size",
                format!("with replication at most {MAX_REPLICATED_MESSAGE} bytes (a record must fit one HA frame)"),
            );
        }
        for (key, value) in [
            ("ha.sync-timeout-ms", ha.sync_timeout_ms),
            ("ha.metadata-sync-interval-ms", ha.metadata_sync_interval_ms),
            ("ha.fetch-wait-ms", ha.fetch_wait_ms),
            ("ha.request-timeout-ms", ha.request_timeout_ms),
        ] {
            if value == 0 {
                return bad(key, "must be > 0".into());
            }
        }
        if ha.fetch_wait_ms >= ha.request_timeout_ms {
            return bad("ha.fetch-wait-ms", "must be shorter than ha.request-timeout-ms".into());
        }
        Ok(())
    }

    /// True when this broker takes part in replication (a master listening for slaves, or a slave).
    pub fn replicates(&self) -> bool {
        !self.ha.listen.is_empty() || self.broker.broker_id != comet_model::MASTER_ID
    }

    /// True for a slave (broker id > 0): it copies its master and refuses writes.
    pub fn is_slave(&self) -> bool {
        self.broker.broker_id != comet_model::MASTER_ID
    }

    /// The advertised address given the address actually bound.
    pub fn advertised_address(&self, bound: SocketAddr) -> String {
        advertise(&self.broker.advertised_address, bound)
    }

    /// The HA address slaves are told, given the HA listener's bound address.
    pub fn ha_advertised_address(&self, bound: SocketAddr) -> String {
        advertise(&self.ha.advertised_address, bound)
    }

    /// Client expiry as a duration.
    pub fn client_expiry(&self) -> Duration {
        Duration::from_millis(self.broker.client_expiry_ms)
    }
}

/// `configured` if set, else `bound` with an unspecified IP replaced by loopback.
fn advertise(configured: &str, bound: SocketAddr) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    let ip = if bound.ip().is_unspecified() { std::net::Ipv4Addr::LOCALHOST.into() } else { bound.ip() };
    SocketAddr::new(ip, bound.port()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn no_file_gives_a_single_node_broker_with_auto_created_topics() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.broker.listen, "0.0.0.0:8081");
        assert!(c.broker.auto_create_topics);
        assert_eq!(c.broker.default_queue_count, 8);
        assert!(c.broker.nameserver_addresses.is_empty());
        assert_eq!(c.store.dir, std::path::PathBuf::from("data/broker"));
        assert!(c.metrics.enabled);
        assert_eq!(c.metrics.listen, "0.0.0.0:5557");
    }

    #[test]
    fn metrics_keys_come_from_the_metrics_section_and_its_environment() {
        let c = Config::load(
            None,
            env(&[
                ("COMET_METRICS_LISTEN", "127.0.0.1:0"),
                ("COMET_METRICS_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                ("COMET_STORE_FLUSH_MODE", "sync"),
            ]),
        )
        .unwrap();
        assert_eq!(c.metrics.listen, "127.0.0.1:0");
        assert_eq!(c.metrics.otlp_endpoint, "http://127.0.0.1:4317");
        assert_eq!(c.store.dir, std::path::PathBuf::from("data/broker"), "other store keys keep the broker's defaults");
        assert!(Config::load(None, env(&[("COMET_METRICS_LISTEN", "nowhere")])).is_err());
        assert!(Config::load(None, env(&[("COMET_METRICS_MAX_TOPIC_LABELS", "0")])).is_err());
    }

    #[test]
    fn file_then_env_overrides_apply_to_broker_and_store_sections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.yaml");
        std::fs::write(&path, "broker:\n  listen: 127.0.0.1:1\n  broker-name: b1\nstore:\n  flush-mode: sync\n")
            .unwrap();
        let c = Config::load(
            Some(&path),
            env(&[
                ("COMET_BROKER_LISTEN", "127.0.0.1:2"),
                ("COMET_BROKER_NAMESERVER_ADDRESSES", "a:1, b:2"),
                ("COMET_STORE_DIR", "/tmp/x"),
                ("COMET_NAMESERVER_LISTEN", "another process's section"),
            ]),
        )
        .unwrap();
        assert_eq!(c.broker.listen, "127.0.0.1:2");
        assert_eq!(c.broker.broker_name, "b1");
        assert_eq!(c.broker.nameserver_addresses, ["a:1", "b:2"]);
        assert_eq!(c.store.flush_mode, comet_store::FlushMode::Sync);
        assert_eq!(c.store.dir, std::path::PathBuf::from("/tmp/x"));
    }

    #[test]
    fn unknown_keys_and_bad_values_fail_at_start_up() {
        assert!(Config::load(None, env(&[("COMET_BROKER_NOPE", "1")])).is_err());
        assert!(Config::load(None, env(&[("COMET_BROKER_LISTEN", "nowhere")])).is_err());
        assert!(Config::load(None, env(&[("COMET_BROKER_DEFAULT_QUEUE_COUNT", "0")])).is_err());
        assert!(Config::load(None, env(&[("COMET_BROKER_BROKER_NAME", "bad name")])).is_err());
        assert!(Config::load(None, env(&[("COMET_STORE_SEGMENT_SIZE", "10")])).is_err());
        let none = Config::load(None, env(&[("COMET_BROKER_BLOCKING_THREADS", "0")])).unwrap_err().to_string();
        assert!(none.contains("broker.blocking-threads"), "{none}");
        let some = Config::load(None, env(&[("COMET_BROKER_BLOCKING_THREADS", "4")])).unwrap();
        assert_eq!(some.broker.blocking_threads, 4);
    }

    #[test]
    fn the_longest_delay_must_fit_in_the_retention() {
        let mut c = Config::default();
        assert!(c.validate().is_ok(), "the defaults (3 days, 72 h) fit");
        c.store.retention_hours = 24;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("messaging.max-delay-ms") && err.contains("retention"), "{err}");
        c.messaging.max_delay_ms = 3_600_000;
        assert!(c.validate().is_ok());
        c.messaging.timer_bucket_ms = 1;
        assert!(c.validate().unwrap_err().to_string().contains("timer-bucket-ms"));
    }

    #[test]
    fn replication_settings_are_checked_against_the_role() {
        let secret = ("COMET_HA_SECRET", "0123456789abcdef");
        let slave =
            Config::load(None, env(&[("COMET_BROKER_BROKER_ID", "1"), ("COMET_HA_MASTER_ADDRESS", "m:10912"), secret]))
                .unwrap();
        assert!(slave.is_slave() && slave.replicates());
        let err = |pairs: &[(&str, &str)]| Config::load(None, env(pairs)).unwrap_err().to_string();
        assert!(err(&[("COMET_BROKER_BROKER_ID", "1"), secret]).contains("ha.master-address"));
        assert!(err(&[("COMET_HA_LISTEN", "127.0.0.1:0")]).contains("ha.secret"));
        assert!(err(&[("COMET_HA_LISTEN", "127.0.0.1:0"), ("COMET_HA_SECRET", "short")]).contains("ha.secret"));
        assert!(err(&[("COMET_HA_REPLICATION", "sync")]).contains("ha.replication"));
        assert!(err(&[("COMET_HA_MASTER_ADDRESS", "m:1"), secret]).contains("only slaves"));
        let master =
            Config::load(None, env(&[("COMET_HA_LISTEN", "127.0.0.1:0"), ("COMET_HA_REPLICATION", "sync"), secret]))
                .unwrap();
        assert_eq!(master.ha.replication, ReplicationMode::Sync);
        assert!(!master.is_slave() && master.replicates());
        assert!(!Config::default().replicates());
    }

    #[test]
    fn advertised_address_replaces_unspecified_ip_with_loopback() {
        let mut c = Config::default();
        assert_eq!(c.advertised_address("0.0.0.0:9000".parse().unwrap()), "127.0.0.1:9000");
        assert_eq!(c.advertised_address("10.1.2.3:9000".parse().unwrap()), "10.1.2.3:9000");
        c.broker.advertised_address = "broker-0.svc:8081".into();
        assert_eq!(c.advertised_address("0.0.0.0:9000".parse().unwrap()), "broker-0.svc:8081");
    }
}
