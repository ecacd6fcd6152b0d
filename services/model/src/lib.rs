//! Domain value types shared by every Comet crate.
//!
//! This crate is the vocabulary of the system: names (topics, groups, brokers), the two kinds of offset, and
//! the identity of a message queue. It depends on nothing async or networked so that the store, the protocol
//! layers and the SDK can all share it without pulling each other in.

mod name;
mod offset;
mod queue;
mod route;
pub mod system;

pub use name::{
    NameError, NameKind, validate_broker_name, validate_cluster_name, validate_group_name, validate_topic_name,
};
pub use offset::{CommitLogOffset, QueueOffset};
pub use queue::{MessageQueue, QueueId};
pub use route::{
    BadPermission, BrokerData, BrokerId, DataVersion, MASTER_ID, MAX_QUEUE_NUMS, MessageType, Permission, QueueData,
    TopicConfig, TopicRoute,
};

/// Java's `String.hashCode` of a tag string, sign-extended to 64 bits.
///
/// RocketMQ clients send tag hashes in their subscriptions and the consume queue stores this value, so it must
/// stay bit-exact with Java for compatibility.
pub fn tag_hash(tags: &str) -> i64 {
    let mut h: i32 = 0;
    for unit in tags.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    i64::from(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_hash_matches_java_string_hash_code() {
        // Values computed with Java's "TagA".hashCode() etc.
        assert_eq!(tag_hash(""), 0);
        assert_eq!(tag_hash("TagA"), 2_598_919);
        assert_eq!(tag_hash("a"), 97);
        // A hash that overflows i32 wraps like Java and is sign-extended.
        assert_eq!(tag_hash("polygenelubricants"), i64::from(i32::MIN));
    }
}
