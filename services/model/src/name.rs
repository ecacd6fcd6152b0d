//! Validation of topic and group names.
//!
//! RocketMQ's rule: `^[%|a-zA-Z0-9_-]+$`. System topics (`%RETRY%group`, `%DLQ%group`) use `%`, so the longest
//! name is 255 bytes to fit a retry topic built from the longest group name. Names end up in file names
//! (`consumequeue/<topic>/…`), so `.` and `/` are never allowed.

/// Longest topic name in bytes.
pub const MAX_TOPIC_LEN: usize = 255;
/// Longest consumer or producer group name in bytes (leaves room for `%RETRY%`/`%DLQ%` prefixes).
pub const MAX_GROUP_LEN: usize = 120;

/// Which kind of name was rejected, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    /// A topic name.
    Topic,
    /// A consumer or producer group name.
    Group,
    /// A broker name (a master/slave group).
    Broker,
    /// A cluster name.
    Cluster,
}

impl std::fmt::Display for NameKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NameKind::Topic => "topic",
            NameKind::Group => "group",
            NameKind::Broker => "broker",
            NameKind::Cluster => "cluster",
        })
    }
}

/// Why a name was rejected; the message is meant for the user who typed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("{kind} name is empty")]
    Empty {
        /// Topic or group.
        kind: NameKind,
    },
    /// The name is longer than allowed.
    #[error("{kind} name is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Topic or group.
        kind: NameKind,
        /// Actual length in bytes.
        len: usize,
        /// Limit in bytes.
        max: usize,
    },
    /// The name contains a character outside `[%|a-zA-Z0-9_-]`.
    #[error("{kind} name {name:?} contains {ch:?}; only letters, digits, '%', '|', '_' and '-' are allowed")]
    BadChar {
        /// Topic or group.
        kind: NameKind,
        /// The whole name, for the message.
        name: String,
        /// The first offending character.
        ch: char,
    },
}

fn validate(kind: NameKind, name: &str, max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > max {
        return Err(NameError::TooLong { kind, len: name.len(), max });
    }
    if let Some(ch) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '%' | '|' | '_' | '-'))) {
        return Err(NameError::BadChar { kind, name: name.to_owned(), ch });
    }
    Ok(())
}

/// Checks a topic name against RocketMQ's rules.
pub fn validate_topic_name(name: &str) -> Result<(), NameError> {
    validate(NameKind::Topic, name, MAX_TOPIC_LEN)
}

/// Checks a consumer/producer group name against RocketMQ's rules.
pub fn validate_group_name(name: &str) -> Result<(), NameError> {
    validate(NameKind::Group, name, MAX_GROUP_LEN)
}

/// Longest broker or cluster name in bytes.
pub const MAX_BROKER_LEN: usize = 127;

/// Checks a broker name with the topic character rules: it ends up in etcd keys and file names too.
pub fn validate_broker_name(name: &str) -> Result<(), NameError> {
    validate(NameKind::Broker, name, MAX_BROKER_LEN)
}

/// Checks a cluster name with the topic character rules.
pub fn validate_cluster_name(name: &str) -> Result<(), NameError> {
    validate(NameKind::Cluster, name, MAX_BROKER_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_rocketmq_names() {
        for ok in ["TopicTest", "a", "%RETRY%group-1", "%DLQ%g_2", "x|y"] {
            assert_eq!(validate_topic_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_names_with_reason() {
        assert!(matches!(validate_topic_name(""), Err(NameError::Empty { .. })));
        assert!(matches!(validate_topic_name("a/b"), Err(NameError::BadChar { ch: '/', .. })));
        assert!(matches!(validate_topic_name(".."), Err(NameError::BadChar { ch: '.', .. })));
        assert!(matches!(validate_topic_name("tópico"), Err(NameError::BadChar { .. })));
        assert!(matches!(validate_topic_name(&"a".repeat(256)), Err(NameError::TooLong { len: 256, .. })));
        assert!(matches!(validate_group_name(&"g".repeat(121)), Err(NameError::TooLong { .. })));
        assert!(matches!(validate_broker_name(""), Err(NameError::Empty { kind: NameKind::Broker })));
        assert!(matches!(validate_cluster_name("a b"), Err(NameError::BadChar { ch: ' ', .. })));
    }
}
