//! The broker's metrics (reference: docs/operations.md, "Metrics"), with RocketMQ 5's names and labels.
//!
//! Two kinds:
//! - counters on the send and pull paths, one `add` per request (never per message) with attribute sets
//!   built once per topic (and per topic and group) and cached, so the hot path allocates nothing;
//! - observable gauges computed when a reader collects (a Prometheus scrape, an OTLP push): consumer lag from the
//!   offsets table and the store, connections, store positions. Nothing of theirs runs on the hot path; one
//!   collection computes the lag once ([`Snapshot`]) for its four instruments.
//!
//! `topic` and `consumer_group` label values are capped (`metrics.max-topic-labels`, `max-group-labels`):
//! later names are reported as `_other`, and per-queue lag series of such names are folded into one series
//! per label pair with `queue_id="_all"` (lag in messages summed, lag in time the maximum).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use comet_model::MessageType;
use comet_telemetry::opentelemetry::metrics::{AsyncInstrument, Counter, Meter};
use comet_telemetry::opentelemetry::{KeyValue, StringValue, Value};
use comet_telemetry::{LabelCap, MetricsConfig, OTHER, RpcService, Snapshot};
use parking_lot::RwLock;

use crate::broker::{Broker, now_ms};
use crate::domain::clients::{ClientInfo, MessageModel};

/// The gRPC services a broker serves, with their methods: the `service` and `request_code` values of
/// `rocketmq_rpc_latency` (both APIs have a `SendMessage`, a `PullMessage`, a `Heartbeat`, ...).
pub const RPC_SERVICES: &[RpcService] = &[
    RpcService { name: "comet.v1.Broker", methods: comet_proto::methods::BROKER_METHODS },
    RpcService { name: crate::v2::SERVICE_NAME, methods: comet_proto::methods::MESSAGINGSERVICE_METHODS },
];

/// How long one lag computation serves collections: the instruments of one scrape share it.
const LAG_SNAPSHOT_AGE: Duration = Duration::from_millis(500);

/// Distinct client versions reported; later ones are `_other`.
const MAX_VERSION_LABELS: usize = 64;

/// Client languages reported as themselves (RocketMQ's LanguageCode); anything else is `OTHER`.
const LANGUAGES: &[&str] = &[
    "JAVA", "CPP", "DOTNET", "PYTHON", "DELPHI", "ERLANG", "RUBY", "OTHER", "HTTP", "GO", "PHP", "OMS", "RUST",
    "NODE_JS",
];

/// One (group, topic, queue) of the consumer lag gauges, or a fold of several (labels over the cap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagRow {
    /// `consumer_group` label value.
    pub group: StringValue,
    /// `topic` label value.
    pub topic: StringValue,
    /// `queue_id` label value: the queue id, or `_all` for a fold.
    pub queue: StringValue,
    /// Stored but not committed: max offset − committed offset.
    pub lag_messages: u64,
    /// Now − store time of the first message not committed, in ms (0 without lag).
    pub lag_ms: u64,
    /// Pulled but not committed.
    pub inflight: u64,
    /// Stored but not pulled yet.
    pub ready: u64,
}

/// The send and pull counters with their attribute caches, and the label caps.
#[derive(Debug)]
pub struct BrokerMetrics {
    messages_in: Counter<u64>,
    throughput_in: Counter<u64>,
    messages_out: Counter<u64>,
    throughput_out: Counter<u64>,
    send_backs: Counter<u64>,
    transactions_resolved: Counter<u64>,
    transaction_checks: Counter<u64>,
    duplicates: Counter<u64>,
    topics: LabelCap,
    groups: LabelCap,
    /// Client library versions (connections).
    versions: LabelCap,
    /// topic → `[topic, message_type]`.
    in_attrs: RwLock<AttrsByName>,
    /// group → topic → `[topic, consumer_group]`.
    out_attrs: RwLock<HashMap<String, AttrsByName>>,
    lag: Snapshot<Vec<LagRow>>,
    timer_enqueue: Counter<u64>,
    timer_dequeue: Counter<u64>,
    /// Delayed messages waiting: set by the timer after each pass (`rocketmq_timing_messages`).
    timer_pending: AtomicU64,
}

impl BrokerMetrics {
    /// The counters, created from `meter` (a no-op meter when metrics are off).
    pub fn new(meter: &Meter, config: &MetricsConfig) -> Self {
        let counter = |name: &'static str, unit: &'static str, description: &'static str| {
            meter.u64_counter(name).with_unit(unit).with_description(description).build()
        };
        Self {
            messages_in: counter("rocketmq_messages_in_total", "1", "Messages stored, by topic"),
            throughput_in: counter("rocketmq_throughput_in_total", "By", "Body bytes stored, by topic"),
            messages_out: counter(
                "rocketmq_messages_out_total",
                "1",
                "Messages delivered by pulls, by topic and group",
            ),
            throughput_out: counter(
                "rocketmq_throughput_out_total",
                "By",
                "Body bytes delivered by pulls, by topic and group",
            ),
            send_backs: counter(
                "rocketmq_send_back_total",
                "1",
                "Messages a group's listener failed, by group and result (retry or dlq)",
            ),
            transactions_resolved: counter(
                "rocketmq_transaction_resolved_total",
                "1",
                "Half messages resolved, by how (commit, rollback, policy_commit, policy_rollback)",
            ),
            transaction_checks: counter(
                "rocketmq_transaction_checks_total",
                "1",
                "Check-backs of unresolved half messages (sent to a live producer or not)",
            ),
            duplicates: counter(
                "rocketmq_send_duplicates_total",
                "1",
                "Sends answered with an earlier result instead of being stored again (idempotent send)",
            ),
            topics: LabelCap::new(config.max_topic_labels),
            groups: LabelCap::new(config.max_group_labels),
            versions: LabelCap::new(MAX_VERSION_LABELS),
            in_attrs: RwLock::new(HashMap::new()),
            out_attrs: RwLock::new(HashMap::new()),
            lag: Snapshot::new(LAG_SNAPSHOT_AGE),
            timer_enqueue: counter(
                "rocketmq_timer_enqueue_total",
                "1",
                "Delayed messages (and retries) filed into the timer's bucket index, or delivered at once if already due",
            ),
            timer_dequeue: counter(
                "rocketmq_timer_dequeue_total",
                "1",
                "Delayed messages leaving the timer: result=delivered to their topic, or dropped (topic gone, record lost)",
            ),
            timer_pending: AtomicU64::new(0),
        }
    }

    /// Counts messages the timer filed.
    pub fn timer_enqueued(&self, messages: u64) {
        if messages > 0 {
            self.timer_enqueue.add(messages, &[]);
        }
    }

    /// Counts messages the timer delivered and dropped.
    pub fn timer_dequeued(&self, delivered: u64, dropped: u64) {
        if delivered > 0 {
            self.timer_dequeue.add(delivered, &[KeyValue::new("result", "delivered")]);
        }
        if dropped > 0 {
            self.timer_dequeue.add(dropped, &[KeyValue::new("result", "dropped")]);
        }
    }

    /// Sets the number of delayed messages waiting (filed or not yet filed).
    pub fn set_timer_pending(&self, messages: u64) {
        self.timer_pending.store(messages, Ordering::Relaxed);
    }

    /// Counts a stored batch (one call per SendMessage).
    pub fn sent(&self, topic: &str, message_type: MessageType, messages: u64, bytes: u64) {
        let add = |attrs: &[KeyValue]| {
            self.messages_in.add(messages, attrs);
            self.throughput_in.add(bytes, attrs);
        };
        if let Some(attrs) = self.in_attrs.read().get(topic) {
            return add(attrs);
        }
        let attrs: Arc<[KeyValue]> = Arc::new([
            KeyValue::new("topic", self.topics.value(topic)),
            KeyValue::new("message_type", message_type_label(message_type)),
        ]);
        add(&attrs);
        self.in_attrs.write().insert(topic.to_owned(), attrs);
    }

    /// Counts messages delivered by one pull.
    pub fn pulled(&self, group: &str, topic: &str, messages: u64, bytes: u64) {
        let add = |attrs: &[KeyValue]| {
            self.messages_out.add(messages, attrs);
            self.throughput_out.add(bytes, attrs);
        };
        if let Some(attrs) = self.out_attrs.read().get(group).and_then(|t| t.get(topic)) {
            return add(attrs);
        }
        let attrs: Arc<[KeyValue]> = Arc::new([
            KeyValue::new("topic", self.topics.value(topic)),
            KeyValue::new("consumer_group", self.groups.value(group)),
        ]);
        add(&attrs);
        self.out_attrs.write().entry(group.to_owned()).or_default().insert(topic.to_owned(), attrs);
    }

    /// Counts one consumer send-back: another attempt scheduled, or a dead letter stored. Not a hot path (failed
    /// messages only), so the attributes are built per call.
    pub fn sent_back(&self, group: &str, dead_lettered: bool) {
        let result = if dead_lettered { "dlq" } else { "retry" };
        self.send_backs
            .add(1, &[KeyValue::new("consumer_group", self.groups.value(group)), KeyValue::new("result", result)]);
    }

    /// Counts one resolved half message; `how` is `commit`, `rollback`, `policy_commit` or `policy_rollback`.
    pub fn transaction_resolved(&self, how: &'static str) {
        self.transactions_resolved.add(1, &[KeyValue::new("how", how)]);
    }

    /// Counts one check-back.
    pub fn transaction_checked(&self) {
        self.transaction_checks.add(1, &[]);
    }

    /// Counts messages of one send answered as duplicates.
    pub fn send_duplicates(&self, messages: u64) {
        self.duplicates.add(messages, &[]);
    }

    /// Drops cached attributes of a changed or deleted topic (its label value keeps its slot).
    pub fn forget_topic(&self, topic: &str) {
        self.in_attrs.write().remove(topic);
        for topics in self.out_attrs.write().values_mut() {
            topics.remove(topic);
        }
    }

    /// Drops cached attributes of a deleted group.
    pub fn forget_group(&self, group: &str) {
        self.out_attrs.write().remove(group);
    }
}

fn message_type_label(t: MessageType) -> &'static str {
    match t {
        MessageType::Unspecified | MessageType::Normal => "normal",
        MessageType::Fifo => "fifo",
        MessageType::Delay => "delay",
        MessageType::Transaction => "transaction",
        MessageType::Mixed => "mixed",
    }
}

/// Consumer lag of every (group, topic, queue) with a committed offset, as of `now_ms`; label values capped.
pub fn consumer_lag(broker: &Broker, now_ms: u64) -> Vec<LagRow> {
    let metrics = &broker.metrics;
    let mut rows: BTreeMap<(String, String, String), LagRow> = BTreeMap::new();
    for (group, topic, queue_id, committed) in broker.offsets.all() {
        let (min, max) = broker.store.queue_range(&topic, queue_id).map_or((0, 0), |(lo, hi)| (lo.0, hi.0));
        // Retention may have deleted messages below the committed offset: they are not lag any more.
        let from = committed.0.max(min);
        let lag_messages = max.saturating_sub(from);
        let lag_ms = if lag_messages == 0 {
            0
        } else {
            broker
                .store
                .store_time_at(&topic, queue_id, comet_model::QueueOffset(from))
                .map_or(0, |stored| now_ms.saturating_sub(stored))
        };
        let pulled = broker.pulled.get(&group, &topic, queue_id).unwrap_or(0).clamp(from, max.max(from));
        let (g, t) = (metrics.groups.value(&group), metrics.topics.value(&topic));
        let folded = g.as_str() == OTHER || t.as_str() == OTHER;
        let queue = if folded { "_all".to_owned() } else { queue_id.to_string() };
        let row = rows.entry((g.as_str().to_owned(), t.as_str().to_owned(), queue.clone())).or_insert_with(|| LagRow {
            group: g,
            topic: t,
            queue: StringValue::from(queue),
            lag_messages: 0,
            lag_ms: 0,
            inflight: 0,
            ready: 0,
        });
        row.lag_messages += lag_messages;
        row.lag_ms = row.lag_ms.max(lag_ms);
        row.inflight += pulled - from;
        row.ready += max.max(from) - pulled;
    }
    rows.into_values().collect()
}

/// Registers the broker's observable gauges. They hold the broker weakly: once it is gone they report nothing.
pub fn register_gauges(meter: &Meter, broker: &Arc<Broker>) {
    let lag_gauge = |name: &'static str, unit: &'static str, description: &'static str, pick: fn(&LagRow) -> u64| {
        let broker = Arc::downgrade(broker);
        meter
            .u64_observable_gauge(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(move |observer: &dyn AsyncInstrument<u64>| {
                let Some(broker) = broker.upgrade() else { return };
                let rows = broker.metrics.lag.get(|| consumer_lag(&broker, now_ms()));
                for row in rows.iter() {
                    observer.observe(
                        pick(row),
                        &[
                            KeyValue::new("consumer_group", row.group.clone()),
                            KeyValue::new("topic", row.topic.clone()),
                            KeyValue::new("queue_id", row.queue.clone()),
                        ],
                    );
                }
            })
            .build();
    };
    lag_gauge(
        "rocketmq_consumer_lag_messages",
        "1",
        "Messages stored but not committed by the group, per queue (max offset - committed offset)",
        |r| r.lag_messages,
    );
    lag_gauge(
        "rocketmq_consumer_lag_latency",
        "ms",
        "Age of the oldest message the group has not committed, per queue, in ms (0 without lag)",
        |r| r.lag_ms,
    );
    lag_gauge(
        "rocketmq_consumer_inflight_messages",
        "1",
        "Messages pulled by the group but not committed yet, per queue",
        |r| r.inflight,
    );
    lag_gauge(
        "rocketmq_consumer_ready_messages",
        "1",
        "Messages stored and not pulled by the group yet, per queue",
        |r| r.ready,
    );

    let gauge = |name: &'static str, unit: &'static str, description: &'static str, f: GaugeFn| {
        let broker = Arc::downgrade(broker);
        meter
            .u64_observable_gauge(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(move |observer: &dyn AsyncInstrument<u64>| {
                if let Some(broker) = broker.upgrade() {
                    f(&broker, observer);
                }
            })
            .build();
    };
    gauge("rocketmq_topic_number", "1", "Topics on this broker", |b, o| o.observe(b.topics.len() as u64, &[]));
    gauge("rocketmq_consumer_group_number", "1", "Subscription groups on this broker", |b, o| {
        o.observe(b.groups.len() as u64, &[])
    });
    gauge(
        "rocketmq_producer_connections",
        "1",
        "Live producers (by heartbeat), by client language and version",
        |b, o| {
            let versions = &b.metrics.versions;
            for c in b.clients.connections(now_ms()).0 {
                o.observe(c.count, &client_labels(&c.info, versions));
            }
        },
    );
    gauge(
        "rocketmq_consumer_connections",
        "1",
        "Live consumers (by heartbeat), by group, consume mode, client language and version",
        |b, o| {
            let versions = &b.metrics.versions;
            for c in b.clients.connections(now_ms()).1 {
                let mut labels = client_labels(&c.info, versions);
                labels.push(KeyValue::new("consumer_group", b.metrics.groups.value(&c.group)));
                let mode = match c.model {
                    Some(MessageModel::Broadcasting) => "broadcasting",
                    _ => "clustering",
                };
                labels.push(KeyValue::new("consume_mode", mode));
                o.observe(c.count, &labels);
            }
        },
    );
    gauge(
        "rocketmq_processor_watermark",
        "1",
        "Requests being processed or waiting: sends in flight (processor=send), parked long polls (processor=pull)",
        |b, o| {
            let sends = b.config.broker.max_inflight_sends.saturating_sub(b.sends.available_permits());
            o.observe(sends as u64, &[KeyValue::new("processor", "send")]);
            o.observe(b.waiters.parked() as u64, &[KeyValue::new("processor", "pull")]);
        },
    );
    gauge(
        "rocketmq_timing_messages",
        "1",
        "Delayed messages (and retries) waiting in the timer for their delivery time",
        |b, o| o.observe(b.metrics.timer_pending.load(Ordering::Relaxed), &[]),
    );
    gauge(
        "comet_dedup_entries",
        "1",
        "Message ids the idempotent-send table remembers (messaging.dedup-max-entries at most)",
        |b, o| o.observe(b.dedup.len() as u64, &[]),
    );
    gauge(
        "comet_dedup_evicted_early",
        "1",
        "Ids evicted from the idempotent-send table for space while still inside the window (since start): the \
         window is shorter than messaging.dedup-window-ms at this send rate",
        |b, o| o.observe(b.dedup.evicted_early(), &[]),
    );
    gauge("rocketmq_storage_size", "By", "Bytes of every store file (CommitLog, consume queues, index)", |b, o| {
        o.observe(b.store.stats().disk_bytes, &[])
    });
    gauge(
        "rocketmq_storage_flush_behind_bytes",
        "By",
        "CommitLog bytes written but not yet flushed to disk",
        |b, o| {
            let s = b.store.stats();
            o.observe(s.max_offset.0.saturating_sub(s.flushed_offset.0), &[]);
        },
    );
    gauge(
        "rocketmq_storage_dispatch_behind_bytes",
        "By",
        "CommitLog bytes written but not yet in consume queues and the index (not yet visible to consumers)",
        |b, o| {
            let s = b.store.stats();
            o.observe(s.max_offset.0.saturating_sub(s.dispatched_offset.0), &[]);
        },
    );
    gauge(
        "rocketmq_replication_lag_bytes",
        "By",
        "Master: CommitLog bytes a connected slave does not hold yet, per slave broker id",
        |b, o| {
            let end = b.store.end_offset().0;
            for (id, _, acked, _) in b.ha.slaves() {
                o.observe(end.saturating_sub(acked), &[KeyValue::new("slave_broker_id", id.to_string())]);
            }
        },
    );
    gauge(
        "rocketmq_replication_slaves_in_sync",
        "1",
        "Master with an HA listener: connected slaves within ha.max-lag-bytes (sync sends need ha.sync-replicas)",
        |b, o| {
            if !b.ha.ha_address().is_empty() {
                let end = b.store.end_offset().0;
                let n = b.ha.slaves().iter().filter(|(_, _, acked, _)| b.ha.in_sync(*acked, end)).count();
                o.observe(n as u64, &[]);
            }
        },
    );
    gauge(
        "rocketmq_replication_master_lag_bytes",
        "By",
        "Slave: CommitLog bytes behind the master's end at its last answer (absent while disconnected)",
        |b, o| {
            let f = &b.ha.follower;
            if b.config.is_slave() && f.connected.load(std::sync::atomic::Ordering::Acquire) {
                let master_end = f.master_end.load(std::sync::atomic::Ordering::Acquire);
                o.observe(master_end.saturating_sub(b.store.end_offset().0), &[]);
            }
        },
    );
    gauge(
        "rocketmq_storage_message_reserve_time",
        "ms",
        "Age of the oldest stored message in ms: how far back consumers can still rewind",
        |b, o| {
            if let Some(oldest) = b.store.oldest_store_time() {
                o.observe(now_ms().saturating_sub(oldest), &[]);
            }
        },
    );
    gauge(
        "rocketmq_storage_writable",
        "1",
        "1 while the store accepts writes; 0 when the disk is full or after an I/O failure",
        |b, o| {
            let s = b.store.stats();
            o.observe(u64::from(!s.disk_full && !s.poisoned), &[]);
        },
    );
    let usage = Arc::downgrade(broker);
    meter
        .f64_observable_gauge("rocketmq_storage_disk_usage")
        .with_unit("1")
        .with_description("Used fraction of the store's disk (0..1), as the disk watermarks see it")
        .with_callback(move |o: &dyn AsyncInstrument<f64>| {
            if let Some(b) = usage.upgrade() {
                o.observe(b.store.stats().disk_usage, &[]);
            }
        })
        .build();
}

/// name → cached attributes.
type AttrsByName = HashMap<String, Arc<[KeyValue]>>;

type GaugeFn = fn(&Broker, &dyn AsyncInstrument<u64>);

fn client_labels(info: &ClientInfo, versions: &LabelCap) -> Vec<KeyValue> {
    let language = if info.language.is_empty() {
        "UNKNOWN"
    } else {
        LANGUAGES.iter().find(|l| l.eq_ignore_ascii_case(&info.language)).copied().unwrap_or("OTHER")
    };
    let version: Value =
        if info.version.is_empty() { "UNKNOWN".into() } else { Value::String(versions.value(&info.version)) };
    vec![KeyValue::new("language", language), KeyValue::new("version", version)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_languages_are_bounded_to_known_codes() {
        let versions = LabelCap::new(1);
        let labels = |language: &str, version: &str| {
            let info = ClientInfo { language: language.into(), version: version.into() };
            client_labels(&info, &versions).into_iter().map(|kv| kv.value.as_str().into_owned()).collect::<Vec<_>>()
        };
        assert_eq!(labels("rust", "0.1.0"), ["RUST", "0.1.0"]);
        assert_eq!(labels("klingon", "2"), ["OTHER", OTHER]);
        assert_eq!(labels("", ""), ["UNKNOWN", "UNKNOWN"]);
    }
}
