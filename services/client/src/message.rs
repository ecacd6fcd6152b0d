//! The SDK's message types, converted to and from the wire types at the call sites.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use comet_model::MessageQueue;
use comet_model::system::{PROP_ORIGIN_MESSAGE_ID, PROP_ORIGIN_TOPIC, PROP_SHARDING_KEY};
use comet_proto::comet::v1 as pb;

/// A message to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// The message id; empty = the producer assigns a unique one when sending. Brokers store an id once per
    /// topic within their dedup window, so re-sending a message with the same id is answered, not stored again.
    pub message_id: String,
    /// Destination topic.
    pub topic: String,
    /// Payload (must not be empty; the broker limits it to 4 MiB by default).
    pub body: Bytes,
    /// One tag for broker-side filtering; empty = none.
    pub tags: String,
    /// Business keys, each indexed by the broker for lookups. No whitespace inside a key.
    pub keys: Vec<String>,
    /// User properties.
    pub properties: HashMap<String, String>,
    /// User flag, stored verbatim.
    pub flag: u32,
    /// Delayed delivery at this time (at most the broker's `messaging.max-delay-ms` ahead; a past time delivers
    /// at once). Exclusive with `delay`.
    pub deliver_at: Option<SystemTime>,
    /// Delayed delivery this long after the broker receives the message. Exclusive with `deliver_at`.
    pub delay: Option<Duration>,
}

impl Message {
    /// A message for `topic` with `body` and nothing else.
    pub fn new(topic: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Self { topic: topic.into(), body: body.into(), ..Default::default() }
    }

    /// Sets the message id (see [`Message::message_id`]): for an application that re-sends after a crash.
    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = id.into();
        self
    }

    /// Sets the tag.
    pub fn with_tags(mut self, tags: impl Into<String>) -> Self {
        self.tags = tags.into();
        self
    }

    /// Adds a key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }

    /// Sets a property.
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }

    /// Delays the message: consumers see it `delay` after the broker receives it (replaces any `deliver_at`).
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self.deliver_at = None;
        self
    }

    /// Delays the message until `at` (replaces any `delay`).
    pub fn with_deliver_at(mut self, at: SystemTime) -> Self {
        self.deliver_at = Some(at);
        self.delay = None;
        self
    }

    /// Sets the sharding key (property `__SHARDINGKEY`): the producer sends every message with the same key to
    /// the same queue (a stable hash over the topic's writable queues), so an orderly consumer sees them in order.
    pub fn with_sharding_key(mut self, key: impl Into<String>) -> Self {
        self.properties.insert(PROP_SHARDING_KEY.to_owned(), key.into());
        self
    }

    /// The sharding key, if one is set.
    pub fn sharding_key(&self) -> Option<&str> {
        self.properties.get(PROP_SHARDING_KEY).map(String::as_str)
    }

    pub(crate) fn to_wire(&self, born_millis: u64) -> pb::OutgoingMessage {
        // A zero delay or a time at the epoch means "now" on the wire; round them up so a request for a delay is
        // never silently dropped (the broker then delivers at once anyway).
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        pb::OutgoingMessage {
            // Assigned once per send: the producer's own retries of it carry the same id (deduplicated).
            message_id: if self.message_id.is_empty() { crate::new_message_id() } else { self.message_id.clone() },
            tags: self.tags.clone(),
            keys: self.keys.clone(),
            properties: self.properties.clone(),
            body: self.body.clone(),
            flag: self.flag,
            born_timestamp_millis: born_millis,
            deliver_at_millis: self.deliver_at.map_or(0, |t| millis(t.duration_since(UNIX_EPOCH).unwrap_or_default())),
            delay_millis: self.delay.map_or(0, millis),
        }
    }
}

/// Where a sent message was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    /// The message id (assigned by the producer unless the message named one).
    pub message_id: String,
    /// The queue it was appended to (a transactional half: the queue it is committed to).
    pub queue: MessageQueue,
    /// Its offset in that queue (a transactional half: 0 until committed).
    pub queue_offset: u64,
    /// The address of the broker that stored it.
    pub broker_address: String,
    /// For a delayed message, when it becomes visible to consumers (`queue_offset` is then its place in the
    /// broker's timer queue; its offset in `queue` is assigned at delivery).
    pub deliver_at: Option<SystemTime>,
    /// Its record's position in the broker's CommitLog (a transactional half: the handle that ends it).
    pub commit_log_offset: u64,
    /// True when the broker already held this message id and answered the first send's result.
    pub duplicate: bool,
}

/// A message as a consumer receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The message id (the same on every redelivery of a message).
    pub message_id: String,
    /// The topic the message was sent to. For a redelivery read from the group's retry topic this is the original
    /// topic, not the queue's.
    pub topic: String,
    /// The queue it was read from (for a redelivery: the group's `%RETRY%<group>` queue).
    pub queue: MessageQueue,
    /// Its offset in that queue.
    pub queue_offset: u64,
    /// Byte position of its record in the broker's CommitLog: the handle a send-back names.
    pub commit_log_offset: u64,
    /// The tag.
    pub tags: String,
    /// Business keys.
    pub keys: Vec<String>,
    /// User properties (the broker's retry bookkeeping is in [`ReceivedMessage::topic`] and
    /// [`ReceivedMessage::origin_message_id`], not here).
    pub properties: HashMap<String, String>,
    /// Payload.
    pub body: Bytes,
    /// User flag.
    pub flag: u32,
    /// Producer-side creation time, ms since the epoch.
    pub born_timestamp_millis: u64,
    /// When the broker stored it (this copy), ms since the epoch.
    pub store_timestamp_millis: u64,
    /// How many times a listener failed it before this delivery (0 on the first delivery).
    pub reconsume_times: u32,
    /// The message id as first sent (equal to `message_id` for messages sent by Comet producers).
    pub origin_message_id: String,
}

impl ReceivedMessage {
    /// The sharding key the producer set, if any.
    pub fn sharding_key(&self) -> Option<&str> {
        self.properties.get(PROP_SHARDING_KEY).map(String::as_str)
    }

    pub(crate) fn from_wire(broker_name: &str, mut m: pb::StoredMessage) -> Self {
        // Most messages carry no properties: skip hashing the two names then.
        let mut take = |name: &str| if m.properties.is_empty() { None } else { m.properties.remove(name) };
        let topic = take(PROP_ORIGIN_TOPIC).unwrap_or_else(|| m.topic.clone());
        let origin_message_id = take(PROP_ORIGIN_MESSAGE_ID).unwrap_or_else(|| m.message_id.clone());
        Self {
            message_id: m.message_id,
            topic,
            queue: MessageQueue { topic: m.topic, broker_name: broker_name.to_owned(), queue_id: m.queue_id },
            queue_offset: m.queue_offset,
            commit_log_offset: m.commit_log_offset,
            tags: m.tags,
            keys: m.keys,
            properties: m.properties,
            body: m.body,
            flag: m.flag,
            born_timestamp_millis: m.born_timestamp_millis,
            store_timestamp_millis: m.store_timestamp_millis,
            reconsume_times: m.reconsume_times,
            origin_message_id,
        }
    }

    /// True for a redelivery read from a consumer group's retry topic.
    pub fn is_retry(&self) -> bool {
        comet_model::system::is_retry_topic(&self.queue.topic)
    }
}
