//! The identity of a message queue.

use std::fmt;

/// A queue number inside a topic on one broker.
pub type QueueId = u32;

/// One queue of a topic on one broker: the unit of ordering, assignment and offsets.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct MessageQueue {
    /// Topic the queue belongs to.
    pub topic: String,
    /// Broker name (a master/slave group) that hosts the queue.
    pub broker_name: String,
    /// Queue number within the topic on that broker.
    pub queue_id: QueueId,
}

impl fmt::Display for MessageQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}#{}", self.topic, self.broker_name, self.queue_id)
    }
}
