//! What a broker sends: its identity and, on full registration, its topic configs; and the checks every
//! registration passes before it may touch a route table.

use std::collections::HashSet;
use std::time::Duration;

use comet_model::{
    BrokerId, DataVersion, MAX_QUEUE_NUMS, TopicConfig, validate_broker_name, validate_cluster_name,
    validate_topic_name,
};

use crate::error::NameServerError;

/// Who a broker is: the key of its liveness entry is (broker name, broker id); the address is checked against it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct BrokerIdentity {
    /// Cluster the broker name belongs to.
    pub cluster_name: String,
    /// Broker name (master/slave group).
    pub broker_name: String,
    /// 0 = master, >= 1 = slave.
    pub broker_id: BrokerId,
    /// Advertised gRPC address, `host:port`.
    pub address: String,
}

impl std::fmt::Display for BrokerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}#{}@{}", self.cluster_name, self.broker_name, self.broker_id, self.address)
    }
}

/// A full registration: identity, data version and every topic the broker hosts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BrokerRegistration {
    /// Who registers.
    pub identity: BrokerIdentity,
    /// Replication address, empty if none.
    pub ha_address: String,
    /// Version of `topics`; equal versions mean equal topics.
    pub data_version: DataVersion,
    /// Every topic on the broker.
    pub topics: Vec<TopicConfig>,
    /// Silence after which the broker is dropped; `None` = the NameServer's default.
    pub heartbeat_timeout: Option<Duration>,
}

/// Limits applied to registrations, from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct RegistrationLimits {
    /// Most topics one broker may register.
    pub max_topics: usize,
}

impl BrokerIdentity {
    /// Checks names and address; the error names the offending field.
    pub fn validate(&self) -> Result<(), NameServerError> {
        validate_cluster_name(&self.cluster_name).map_err(|e| NameServerError::invalid("cluster_name", e))?;
        validate_broker_name(&self.broker_name).map_err(|e| NameServerError::invalid("broker_name", e))?;
        validate_address("address", &self.address)
    }
}

impl BrokerRegistration {
    /// Checks everything a registration carries; nothing is applied unless this passes.
    pub fn validate(&self, limits: RegistrationLimits) -> Result<(), NameServerError> {
        self.identity.validate()?;
        if !self.ha_address.is_empty() {
            validate_address("ha_address", &self.ha_address)?;
        }
        if self.topics.len() > limits.max_topics {
            return Err(NameServerError::invalid(
                "topics",
                format!("{} topics; the limit per broker is {}", self.topics.len(), limits.max_topics),
            ));
        }
        let mut seen = HashSet::with_capacity(self.topics.len());
        for topic in &self.topics {
            validate_topic(topic)?;
            if !seen.insert(topic.name.as_str()) {
                return Err(NameServerError::invalid("topics", format!("topic {:?} appears twice", topic.name)));
            }
        }
        Ok(())
    }
}

/// Checks one topic config: RocketMQ's name rules and queue counts in `1..=MAX_QUEUE_NUMS`.
pub fn validate_topic(topic: &TopicConfig) -> Result<(), NameServerError> {
    validate_topic_name(&topic.name).map_err(|e| NameServerError::invalid("topic name", e))?;
    for (field, n) in [("read_queue_nums", topic.read_queue_nums), ("write_queue_nums", topic.write_queue_nums)] {
        if !(1..=MAX_QUEUE_NUMS).contains(&n) {
            return Err(NameServerError::invalid(
                field,
                format!("topic {:?} has {field} = {n}; allowed is 1..={MAX_QUEUE_NUMS}", topic.name),
            ));
        }
    }
    Ok(())
}

/// Checks a `host:port` address: a non-empty host without spaces or slashes and a non-zero port.
fn validate_address(field: &'static str, address: &str) -> Result<(), NameServerError> {
    let bad = |why: &str| NameServerError::invalid(field, format!("{address:?} is not host:port ({why})"));
    let (host, port) = address.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(bad("bad host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(bad("bad port")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use comet_model::{MessageType, Permission};

    fn topic(name: &str, queues: u32) -> TopicConfig {
        TopicConfig {
            name: name.into(),
            read_queue_nums: queues,
            write_queue_nums: queues,
            perm: Permission::READ_WRITE,
            message_type: MessageType::Normal,
        }
    }

    fn registration(topics: Vec<TopicConfig>) -> BrokerRegistration {
        BrokerRegistration {
            identity: BrokerIdentity {
                cluster_name: "c".into(),
                broker_name: "b".into(),
                broker_id: 0,
                address: "10.0.0.1:8081".into(),
            },
            ha_address: String::new(),
            data_version: DataVersion::default(),
            topics,
            heartbeat_timeout: None,
        }
    }

    const LIMITS: RegistrationLimits = RegistrationLimits { max_topics: 10 };

    #[test]
    fn accepts_a_sane_registration() {
        registration(vec![topic("t1", 4), topic("%RETRY%g", 1)]).validate(LIMITS).unwrap();
    }

    #[test]
    fn rejects_bad_names_queue_counts_duplicates_and_addresses() {
        let cases = [
            (registration(vec![topic("", 4)]), "topic name"),
            (registration(vec![topic("a/b", 4)]), "topic name"),
            (registration(vec![topic("t", 0)]), "read_queue_nums"),
            (registration(vec![topic("t", 1025)]), "read_queue_nums"),
            (registration(vec![topic("t", 1), topic("t", 2)]), "appears twice"),
            (registration((0..11).map(|i| topic(&format!("t{i}"), 1)).collect()), "limit per broker"),
        ];
        for (reg, needle) in cases {
            let err = reg.validate(LIMITS).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
        for address in ["", "host", "host:0", "host:99999", ":80", "a b:80"] {
            let mut reg = registration(vec![]);
            reg.identity.address = address.into();
            assert!(reg.validate(LIMITS).is_err(), "{address:?} accepted");
        }
        let mut reg = registration(vec![]);
        reg.identity.broker_name = String::new();
        assert!(reg.validate(LIMITS).unwrap_err().to_string().contains("broker_name"));
    }
}
