//! Delayed delivery: a message due later waits in the timer topic until its time, then the timer service moves
//! it to its real topic and queue.
//!
//! - [`wrap`]: readdresses a message to the timer topic (the send path and the retry machinery store it);
//! - [`index`]: the durable time-bucketed index on disk (`<store dir>/timer/`), synchronous and unit-tested;
//! - [`service`]: the task on the master that files new timer messages and delivers due ones.

pub mod index;
pub mod service;

use comet_model::system::{PROP_DELIVER_AT, PROP_REAL_QUEUE_ID, PROP_REAL_TOPIC, TIMER_TOPIC};
use comet_store::{NewMessage, StoredMessage};

/// Properties the timer adds to a waiting message (dropped again on delivery).
pub const TIMER_PROPERTIES: &[&str] = &[PROP_REAL_TOPIC, PROP_REAL_QUEUE_ID, PROP_DELIVER_AT];

/// `msg` readdressed to the timer topic, to be delivered to its current topic and queue at `deliver_at_ms`.
/// The caller stores it (after `Broker::ensure_system_topic(TIMER_TOPIC)`).
pub fn wrap(mut msg: NewMessage, deliver_at_ms: u64) -> NewMessage {
    msg.properties.retain(|(k, _)| !TIMER_PROPERTIES.contains(&k.as_str()));
    msg.properties.push((PROP_REAL_TOPIC.to_owned(), std::mem::take(&mut msg.topic)));
    msg.properties.push((PROP_REAL_QUEUE_ID.to_owned(), msg.queue_id.to_string()));
    msg.properties.push((PROP_DELIVER_AT.to_owned(), deliver_at_ms.to_string()));
    msg.properties.sort_unstable();
    msg.topic = TIMER_TOPIC.to_owned();
    msg.queue_id = 0;
    msg
}

/// A timer-topic record's delivery time (0 for any other record, or a malformed property).
pub fn deliver_at(stored: &StoredMessage) -> u64 {
    if stored.topic() != TIMER_TOPIC {
        return 0;
    }
    stored.property(PROP_DELIVER_AT).and_then(|v| v.parse().ok()).unwrap_or(0)
}
