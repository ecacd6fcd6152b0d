//! A simulated broker: the registration payloads a real broker would send.

use comet_proto::comet::v1 as pb;

/// Identity of broker `name` id `id` at `address` in cluster `cluster`.
pub fn identity(cluster: &str, name: &str, id: u64, address: &str) -> pb::BrokerIdentity {
    pb::BrokerIdentity {
        cluster_name: cluster.into(),
        broker_name: name.into(),
        broker_id: id,
        address: address.into(),
    }
}

/// Data version `counter`.
pub fn version(counter: u64) -> pb::DataVersion {
    pb::DataVersion { state_version: 0, timestamp_millis: 1_700_000_000_000 + counter, counter }
}

/// A registration header (topic count is filled in by the client).
pub fn header(broker: pb::BrokerIdentity, counter: u64) -> pb::RegisterBrokerHeader {
    pb::RegisterBrokerHeader {
        broker: Some(broker),
        ha_address: String::new(),
        data_version: Some(version(counter)),
        topic_count: 0,
        heartbeat_timeout_millis: 0,
    }
}

/// A read-write normal topic with `queues` queues.
pub fn topic(name: &str, queues: u32) -> pb::TopicConfig {
    pb::TopicConfig {
        name: name.into(),
        read_queue_nums: queues,
        write_queue_nums: queues,
        perm: 6,
        message_type: pb::MessageType::Normal.into(),
    }
}

/// Topics `prefix-0 .. prefix-(n-1)` with 4 queues each.
pub fn topics(prefix: &str, n: usize) -> Vec<pb::TopicConfig> {
    (0..n).map(|i| topic(&format!("{prefix}-{i}"), 4)).collect()
}
