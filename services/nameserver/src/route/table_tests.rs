use super::*;
use comet_model::{MessageType, Permission};

const TIMEOUT: Duration = Duration::from_secs(120);

fn topic(name: &str, queues: u32) -> TopicConfig {
    TopicConfig {
        name: name.into(),
        read_queue_nums: queues,
        write_queue_nums: queues,
        perm: Permission::READ_WRITE,
        message_type: MessageType::Normal,
    }
}

fn identity(broker: &str, id: BrokerId, address: &str) -> BrokerIdentity {
    BrokerIdentity { cluster_name: "c1".into(), broker_name: broker.into(), broker_id: id, address: address.into() }
}

fn version(counter: u64) -> DataVersion {
    DataVersion { state_version: 0, timestamp_millis: 1, counter }
}

fn reg(broker: &str, id: BrokerId, address: &str, counter: u64, topics: &[&str]) -> BrokerRegistration {
    BrokerRegistration {
        identity: identity(broker, id, address),
        ha_address: format!("{address}-ha"),
        data_version: version(counter),
        topics: topics.iter().map(|t| topic(t, 4)).collect(),
        heartbeat_timeout: None,
    }
}

#[test]
fn registered_topic_is_routed_to_its_broker() {
    let now = Instant::now();
    let mut table = RouteTable::new(TIMEOUT);
    let out = table.register(reg("b1", 0, "h1:1", 1, &["t1", "t2"]), now).unwrap();
    assert!(out.data_changed);
    table.register(reg("b2", 0, "h2:1", 1, &["t1"]), now).unwrap();

    let route = table.query("t1").unwrap();
    assert_eq!(route.queues.iter().map(|q| q.broker_name.as_str()).collect::<Vec<_>>(), ["b1", "b2"]);
    assert_eq!(route.brokers[0].addresses[&0], "h1:1");
    assert_eq!(route.queues[0].write_queue_nums, 4);
    assert_eq!(table.query("t2").unwrap().brokers.len(), 1);
    assert!(table.query("t3").is_none());
    assert_eq!(table.topics(None), ["t1", "t2"]);
    assert_eq!(table.topics(Some("c1")), ["t1", "t2"]);
    assert!(table.topics(Some("other")).is_empty());
}

#[test]
fn silent_broker_expires_and_takes_its_topics_along() {
    let t0 = Instant::now();
    let mut table = RouteTable::new(TIMEOUT);
    table.register(reg("b1", 0, "h1:1", 1, &["only-b1", "shared"]), t0).unwrap();
    table.register(reg("b2", 0, "h2:1", 1, &["shared"]), t0).unwrap();

    // b2 heartbeats, b1 stays silent.
    assert!(table.heartbeat(&identity("b2", 0, "h2:1"), &version(1), t0 + Duration::from_secs(100)));
    assert!(table.expire(t0 + TIMEOUT).is_empty(), "exactly the timeout is not yet expired");
    let dead = table.expire(t0 + TIMEOUT + Duration::from_millis(1));
    assert_eq!(dead, [identity("b1", 0, "h1:1")]);

    assert!(table.query("only-b1").is_none());
    let shared = table.query("shared").unwrap();
    assert_eq!(shared.queues.len(), 1);
    assert_eq!(shared.queues[0].broker_name, "b2");
    assert_eq!(table.clusters()[0].brokers.len(), 1);
}

#[test]
fn per_broker_timeout_overrides_the_default() {
    let t0 = Instant::now();
    let mut table = RouteTable::new(TIMEOUT);
    let mut r = reg("b1", 0, "h1:1", 1, &["t"]);
    r.heartbeat_timeout = Some(Duration::from_secs(3));
    table.register(r, t0).unwrap();
    assert_eq!(table.expire(t0 + Duration::from_secs(4)).len(), 1);
}

#[test]
fn unregister_removes_at_once_and_empty_cluster_disappears() {
    let now = Instant::now();
    let mut table = RouteTable::new(TIMEOUT);
    table.register(reg("b1", 0, "h1:1", 1, &["t"]), now).unwrap();
    assert!(!table.unregister(&identity("b1", 0, "elsewhere:1")), "another address must not unregister it");
    assert!(table.unregister(&identity("b1", 0, "h1:1")));
    assert!(table.query("t").is_none());
    assert!(table.clusters().is_empty());
    assert_eq!(table.broker_count(), 0);
}

#[test]
fn slave_keeps_topics_alive_after_master_leaves_and_learns_master_address() {
    let now = Instant::now();
    let mut table = RouteTable::new(TIMEOUT);
    table.register(reg("b1", 0, "m:1", 1, &["t"]), now).unwrap();
    let out = table.register(reg("b1", 1, "s:1", 1, &["ignored-from-slave"]), now).unwrap();
    assert_eq!(out.master_address, "m:1");
    assert_eq!(out.master_ha_address, "m:1-ha");
    assert!(table.query("ignored-from-slave").is_none(), "only the master writes queue data");

    table.unregister(&identity("b1", 0, "m:1"));
    let route = table.query("t").unwrap();
    assert_eq!(route.brokers[0].addresses.keys().copied().collect::<Vec<_>>(), [1]);
}

#[test]
fn topics_are_reread_only_when_the_data_version_changes() {
    let now = Instant::now();
    let mut table = RouteTable::new(TIMEOUT);
    table.register(reg("b1", 0, "h:1", 1, &["a", "b"]), now).unwrap();
    assert!(table.delete_topic("a", None));
    assert!(!table.delete_topic("a", None));

    // Same version: the deletion sticks (RocketMQ semantics), and the broker is told nothing changed.
    let out = table.register(reg("b1", 0, "h:1", 1, &["a", "b"]), now).unwrap();
    assert!(!out.data_changed);
    assert!(table.query("a").is_none());

    // New version without "b" and with "a": the table follows the broker.
    let out = table.register(reg("b1", 0, "h:1", 2, &["a"]), now).unwrap();
    assert!(out.data_changed);
    assert!(table.query("a").is_some());
    assert!(table.query("b").is_none());
}

#[test]
fn heartbeat_with_unknown_version_or_broker_asks_for_registration() {
    let t0 = Instant::now();
    let mut table = RouteTable::new(TIMEOUT);
    assert!(!table.heartbeat(&identity("b1", 0, "h:1"), &version(1), t0), "unknown broker");
    table.register(reg("b1", 0, "h:1", 1, &["t"]), t0).unwrap();
    assert!(!table.heartbeat(&identity("b1", 0, "h:1"), &version(2), t0), "unknown version");
    assert!(table.heartbeat(&identity("b1", 0, "h:1"), &version(1), t0 + Duration::from_secs(119)));
    // The accepted heartbeat moved last_seen forward: not expired 120 s after registration.
    assert!(table.expire(t0 + Duration::from_secs(121)).is_empty());
}

#[test]
fn duplicate_broker_id_at_another_address_is_refused_without_changing_state() {
    let now = Instant::now();
    let mut table = RouteTable::new(TIMEOUT);
    table.register(reg("b1", 0, "h1:1", 1, &["t"]), now).unwrap();
    let err = table.register(reg("b1", 0, "h2:1", 2, &["other"]), now).unwrap_err();
    assert!(matches!(err, NameServerError::DuplicateBrokerId { .. }), "{err}");
    assert!(err.to_string().contains("h1:1"));
    assert_eq!(table.query("t").unwrap().brokers[0].addresses[&0], "h1:1");
    assert!(table.query("other").is_none());

    let mut elsewhere = reg("b1", 1, "h3:1", 1, &[]);
    elsewhere.identity.cluster_name = "c2".into();
    assert!(matches!(table.register(elsewhere, now), Err(NameServerError::ClusterMismatch { .. })));
}

#[test]
fn stale_state_version_is_refused() {
    let now = Instant::now();
    let mut table = RouteTable::new(TIMEOUT);
    let mut r = reg("b1", 0, "h:1", 1, &["t"]);
    r.data_version.state_version = 5;
    table.register(r.clone(), now).unwrap();
    r.data_version.state_version = 4;
    assert!(matches!(table.register(r, now), Err(NameServerError::StaleStateVersion { .. })));
}

#[test]
fn promoted_slave_leaves_its_old_id() {
    let now = Instant::now();
    let mut table = RouteTable::new(TIMEOUT);
    table.register(reg("b1", 0, "m:1", 1, &["t"]), now).unwrap();
    table.register(reg("b1", 1, "s:1", 1, &[]), now).unwrap();
    table.unregister(&identity("b1", 0, "m:1"));
    table.register(reg("b1", 0, "s:1", 2, &["t"]), now).unwrap();
    let route = table.query("t").unwrap();
    assert_eq!(route.brokers[0].addresses.iter().collect::<Vec<_>>(), [(&0, &"s:1".to_string())]);
    assert_eq!(table.broker_count(), 1);
}

#[test]
fn delete_topic_in_one_cluster_keeps_the_other() {
    let now = Instant::now();
    let mut table = RouteTable::new(TIMEOUT);
    table.register(reg("b1", 0, "h1:1", 1, &["t"]), now).unwrap();
    let mut other = reg("b2", 0, "h2:1", 1, &["t"]);
    other.identity.cluster_name = "c2".into();
    table.register(other, now).unwrap();
    assert!(table.delete_topic("t", Some("c2")));
    let route = table.query("t").unwrap();
    assert_eq!(route.queues.len(), 1);
    assert_eq!(route.queues[0].broker_name, "b1");
    assert_eq!(table.topics(Some("c2")), Vec::<String>::new());
}

#[test]
fn metric_counts_follow_registrations() {
    let now = Instant::now();
    let mut table = RouteTable::new(TIMEOUT);
    table.register(reg("b1", 0, "m:1", 1, &["t1", "t2"]), now).unwrap();
    table.register(reg("b1", 1, "s:1", 1, &[]), now).unwrap();
    table.register(reg("b2", 0, "m:2", 1, &["t2", "t3"]), now).unwrap();
    assert_eq!(table.topic_count(), 3);
    assert_eq!(table.brokers_by_cluster().into_iter().collect::<Vec<_>>(), [("c1".to_string(), 3)]);
    table.unregister(&identity("b2", 0, "m:2"));
    assert_eq!(table.topic_count(), 2);
    assert_eq!(table.brokers_by_cluster().get("c1"), Some(&2));
}
