//! The SDK's message types, converted to and from the wire types at the call sites.

use std::collections::HashMap;

use bytes::Bytes;
use comet_model::MessageQueue;
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

    pub(crate) fn to_wire(&self, born_millis: u64) -> pb::OutgoingMessage {
        pb::OutgoingMessage {
            // Assigned once per send: the producer's own retries of it carry the same id (deduplicated).
            message_id: if self.message_id.is_empty() { crate::new_message_id() } else { self.message_id.clone() },
            tags: self.tags.clone(),
            keys: self.keys.clone(),
            properties: self.properties.clone(),
            body: self.body.clone(),
            flag: self.flag,
            born_timestamp_millis: born_millis,
            deliver_at_millis: 0,
            delay_millis: 0,
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
    /// Its record's position in the broker's CommitLog (a transactional half: the handle that ends it).
    pub commit_log_offset: u64,
    /// True when the broker already held this message id and answered the first send's result.
    pub duplicate: bool,
}

/// A message as a consumer receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The message id.
    pub message_id: String,
    /// The queue it was read from.
    pub queue: MessageQueue,
    /// Its offset in that queue.
    pub queue_offset: u64,
    /// The tag.
    pub tags: String,
    /// Business keys.
    pub keys: Vec<String>,
    /// User properties.
    pub properties: HashMap<String, String>,
    /// Payload.
    pub body: Bytes,
    /// User flag.
    pub flag: u32,
    /// Producer-side creation time, ms since the epoch.
    pub born_timestamp_millis: u64,
    /// When the broker stored it, ms since the epoch.
    pub store_timestamp_millis: u64,
    /// How often it was delivered again (retry machinery comes later; 0 for now).
    pub reconsume_times: u32,
}

impl ReceivedMessage {
    pub(crate) fn from_wire(broker_name: &str, m: pb::StoredMessage) -> Self {
        Self {
            message_id: m.message_id,
            queue: MessageQueue { topic: m.topic, broker_name: broker_name.to_owned(), queue_id: m.queue_id },
            queue_offset: m.queue_offset,
            tags: m.tags,
            keys: m.keys,
            properties: m.properties,
            body: m.body,
            flag: m.flag,
            born_timestamp_millis: m.born_timestamp_millis,
            store_timestamp_millis: m.store_timestamp_millis,
            reconsume_times: m.reconsume_times,
        }
    }
}
