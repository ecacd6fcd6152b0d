//! Messages the broker moves between topics (a delayed message to its real topic, a failed one to its group's
//! retry or dead-letter topic, a committed half message to its topic) keep everything the producer gave them.

use comet_model::QueueId;
use comet_store::{NewMessage, StoredMessage};

/// What changes when a stored message is copied elsewhere.
#[derive(Debug, Default)]
pub struct Copy<'a> {
    /// Properties dropped from the copy (the broker's bookkeeping of the previous hop).
    pub drop: &'a [&'a str],
    /// Properties set on the copy (replacing any of the same name).
    pub set: Vec<(String, String)>,
    /// The copy's attempt count.
    pub reconsume_times: u32,
    /// The copy's prepared-transaction offset (a committed half message points at its half).
    pub prepared_transaction_offset: u64,
}

/// `stored` copied to `topic`/`queue_id`: the same message id, tags, keys, body, flag, born time and host, and
/// properties, edited as `copy` says.
pub fn copy_to(stored: &StoredMessage, topic: &str, queue_id: QueueId, copy: Copy<'_>) -> NewMessage {
    let mut properties: Vec<(String, String)> = stored
        .properties()
        .filter(|(k, _)| !copy.drop.contains(k) && !copy.set.iter().any(|(s, _)| s == k))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    properties.extend(copy.set);
    properties.sort_unstable();
    NewMessage {
        topic: topic.to_owned(),
        queue_id,
        msg_id: stored.msg_id().to_owned(),
        tags: stored.tags().to_owned(),
        keys: stored.keys().to_owned(),
        properties,
        body: stored.body(),
        flag: stored.flag(),
        sys_flag: stored.sys_flag(),
        born_timestamp: stored.born_timestamp(),
        born_host: stored.born_host(),
        reconsume_times: copy.reconsume_times,
        prepared_transaction_offset: copy.prepared_transaction_offset,
    }
}
