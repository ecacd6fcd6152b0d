//! Comet's Rust SDK.
//!
//! - [`Producer`]: sends to a topic through the NameServer's route: a route cache per topic (refreshed every 30 s
//!   and after a failure, kept when the NameServers are down), round robin over the writable queues, brokers that
//!   just failed avoided for a while, retryable failures retried on another broker. Sync, async (a spawned task)
//!   and oneway sends, and batches.
//! - [`PullConsumer`]: reads explicit queues from explicit offsets, commits and queries a group's offsets.
//!
//! - [`PushConsumer`]: the SDK picks the queues (clustering: an average share among the group's live members,
//!   re-balanced on membership changes; broadcasting: every queue), long-polls each, calls a listener on worker
//!   threads and commits the lowest unacknowledged offset per queue (at-least-once; failures are retried).
//! - [`OrderlyConsumer`]: a push consumer that processes each queue's messages one at a time in queue order,
//!   holding the broker's lock of every queue it consumes; a failing message is retried in place, then
//!   dead-lettered. With [`Message::with_sharding_key`] (or [`Producer::send_with_selector`]) related messages land
//!   on one queue, so they are consumed in the order they were sent.
//! - [`Admin`]: the master brokers of a cluster and clients of them, for administration tools (`comet topic`...).
//!
//! The SDK depends on comet-proto and comet-nameserver-client only (never on the broker or the store); its API
//! speaks its own types ([`Message`], [`SendResult`], [`ReceivedMessage`]) and comet-model's [`MessageQueue`].

mod admin;
mod channels;
mod consumer;
mod error;
mod fault;
mod member;
mod message;
mod orderly;
mod producer;
mod push;
mod rebalance;
mod route;
#[cfg(test)]
mod testing;
mod transaction;

pub use admin::{Admin, MasterBroker};
pub use channels::Transport;
pub use comet_model::MessageQueue;
pub use consumer::{PullConsumer, PullConsumerConfig, PullResult, PullStatus};
pub use error::{ClientError, ErrorKind};
pub use member::ReadPreference;
pub use message::{Message, ReceivedMessage, SendResult};
pub use orderly::{OrderlyConsumer, OrderlyConsumerBuilder};
pub use producer::{Producer, ProducerConfig};
pub use transaction::{LocalTransactionState, TransactionChecker, TransactionSendResult};

/// The SDK's language in heartbeats (RocketMQ's LanguageCode spelling): brokers count connections by it.
pub const LANGUAGE: &str = "RUST";
/// The SDK's version in heartbeats: brokers count connections by it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub use push::{
    ConsumeFrom, Listener, ListenerResult, MessageModel, Postpone, PushConsumer, PushConsumerBuilder,
    PushConsumerConfig, QueueStats,
};
pub use rebalance::{OffsetWindow, allocate_averagely};

/// Counter making client ids unique among the producers and consumers of one process.
static NEXT_CLIENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A client id unique per producer or consumer, also among several in one process (`pid@start-ms@counter`), as
/// brokers list it in heartbeats.
pub(crate) fn new_client_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let n = NEXT_CLIENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}@{millis}@{n}", std::process::id())
}

/// Counter of [`new_message_id`] within this process.
static NEXT_MESSAGE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A unique message id, as brokers assign them: 32 hex digits, a prefix unique per process and start time (pid,
/// start nanoseconds, mixed) and a counter. Producers give every message one, so their retries are deduplicated.
pub fn new_message_id() -> String {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let prefix = *PREFIX.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        // FNV-1a over pid and start time: distinct processes and restarts get distinct prefixes.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in u64::from(std::process::id()).to_le_bytes().into_iter().chain(nanos.to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        h
    });
    let n = NEXT_MESSAGE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Hot path (one per message of every batch): digits written into a stack buffer (pushing chars one at a
    // time cost 400 instructions per id, `format!` several times more).
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut hex = [0u8; 32];
    for (digits, word) in hex.chunks_exact_mut(16).zip([prefix, n]) {
        for (i, digit) in digits.iter_mut().enumerate() {
            *digit = DIGITS[((word >> ((15 - i) * 4)) & 0xF) as usize];
        }
    }
    std::str::from_utf8(&hex).map(str::to_owned).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn message_ids_are_32_upper_hex_digits_a_shared_prefix_and_a_counter() {
        let (a, b) = (super::new_message_id(), super::new_message_id());
        for id in [&a, &b] {
            assert_eq!(id.len(), 32, "{id}");
            assert!(id.bytes().all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c)), "{id}");
        }
        assert_eq!(a[..16], b[..16], "one prefix per process");
        let counter = |id: &str| u64::from_str_radix(&id[16..], 16).unwrap();
        assert!(counter(&b) > counter(&a), "{a} then {b}");
        let prefix = u64::from_str_radix(&a[..16], 16).unwrap();
        assert_eq!(a, format!("{prefix:016X}{:016X}", counter(&a)), "the layout `format!` wrote before");
    }
}
