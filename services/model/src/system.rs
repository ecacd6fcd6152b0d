//! Names the broker and the SDK agree on for the messaging semantics: system topics (retry, dead-letter, timer,
//! transaction halves and their resolutions) and the message properties that carry a message's history through
//! them. Spelled as RocketMQ spells them, so RocketMQ-aware tooling recognises them.

/// Prefix of a consumer group's retry topic: failed messages come back to that group, and only that group, here.
pub const RETRY_TOPIC_PREFIX: &str = "%RETRY%";
/// Prefix of a consumer group's dead-letter topic: messages that failed every retry end here.
pub const DLQ_TOPIC_PREFIX: &str = "%DLQ%";
/// Where delayed messages (and retries waiting for their next attempt) wait for their delivery time.
pub const TIMER_TOPIC: &str = "rmq_sys_wheel_timer";
/// Where transactional half messages wait for their producer's commit or rollback.
pub const TRANSACTION_HALF_TOPIC: &str = "RMQ_SYS_TRANS_HALF_TOPIC";
/// The durable log of transaction resolutions and check-backs (what survives a restart).
pub const TRANSACTION_OP_TOPIC: &str = "RMQ_SYS_TRANS_OP_HALF_TOPIC";
/// The durable log of RocketMQ 5 receive acknowledgements (what survives a restart between window snapshots).
pub const RECEIVE_JOURNAL_TOPIC: &str = "rmq_sys_receive_journal";

/// Property: the topic a timer or half message is really meant for (restored when it is delivered).
pub const PROP_REAL_TOPIC: &str = "REAL_TOPIC";
/// Property: the queue a timer or half message is really meant for.
pub const PROP_REAL_QUEUE_ID: &str = "REAL_QID";
/// Property: when a delayed message becomes visible, ms since the epoch.
pub const PROP_DELIVER_AT: &str = "TIMER_DELIVER_MS";
/// Property: the topic a retried or dead-lettered message was first sent to (consumers see it as the topic).
pub const PROP_ORIGIN_TOPIC: &str = "RETRY_TOPIC";
/// Property: the message id as first sent (kept on every retry and dead-letter copy).
pub const PROP_ORIGIN_MESSAGE_ID: &str = "ORIGIN_MESSAGE_ID";
/// Property: marks a transactional half message.
pub const PROP_TRANSACTION: &str = "TRAN_MSG";
/// Property: the producer group of a transactional message (whose live producers are checked back).
pub const PROP_PRODUCER_GROUP: &str = "PGROUP";
/// Property: how many times a half message has been checked back.
pub const PROP_TRANSACTION_CHECK_TIMES: &str = "TRANSACTION_CHECK_TIMES";
/// Property: the sharding key of an ordered message (RocketMQ 5's message group).
pub const PROP_SHARDING_KEY: &str = "__SHARDINGKEY";

/// Properties only the broker may set: a producer sending one of these is refused.
pub const RESERVED_PROPERTIES: &[&str] = &[
    PROP_REAL_TOPIC,
    PROP_REAL_QUEUE_ID,
    PROP_DELIVER_AT,
    PROP_ORIGIN_TOPIC,
    PROP_ORIGIN_MESSAGE_ID,
    PROP_TRANSACTION,
    PROP_PRODUCER_GROUP,
    PROP_TRANSACTION_CHECK_TIMES,
];

/// The retry topic of consumer group `group`.
pub fn retry_topic(group: &str) -> String {
    format!("{RETRY_TOPIC_PREFIX}{group}")
}

/// The dead-letter topic of consumer group `group`.
pub fn dlq_topic(group: &str) -> String {
    format!("{DLQ_TOPIC_PREFIX}{group}")
}

/// True for a retry topic (consumers subscribe to it implicitly; producers may not send to it).
pub fn is_retry_topic(topic: &str) -> bool {
    topic.starts_with(RETRY_TOPIC_PREFIX)
}

/// True for a dead-letter topic.
pub fn is_dlq_topic(topic: &str) -> bool {
    topic.starts_with(DLQ_TOPIC_PREFIX)
}

/// True for a topic only the broker writes: retry, dead-letter, timer and transaction topics. Producers are
/// refused; admin tools may read them.
pub fn is_system_topic(topic: &str) -> bool {
    is_retry_topic(topic)
        || is_dlq_topic(topic)
        || topic == TIMER_TOPIC
        || topic == TRANSACTION_HALF_TOPIC
        || topic == TRANSACTION_OP_TOPIC
        || topic == RECEIVE_JOURNAL_TOPIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_topics_are_recognised_and_user_topics_are_not() {
        assert_eq!(retry_topic("g1"), "%RETRY%g1");
        assert_eq!(dlq_topic("g1"), "%DLQ%g1");
        for t in
            ["%RETRY%g1", "%DLQ%g1", TIMER_TOPIC, TRANSACTION_HALF_TOPIC, TRANSACTION_OP_TOPIC, RECEIVE_JOURNAL_TOPIC]
        {
            assert!(is_system_topic(t), "{t}");
            assert!(crate::validate_topic_name(t).is_ok(), "{t} must be a valid topic name");
        }
        assert!(!is_system_topic("orders"));
        assert!(!is_system_topic("RETRY_orders"));
    }
}
