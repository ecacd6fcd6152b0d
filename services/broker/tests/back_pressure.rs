//! The broker's one retryable "busy" answer, driven through the service trait on a temp store: saturated send
//! permits and a full disk both give RESOURCE_EXHAUSTED, with distinct messages, and the broker recovers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use comet_broker::Config;
use comet_broker::broker::Broker;
use comet_broker::handler::BrokerHandler;
use comet_proto::comet::v1 as pb;
use comet_proto::comet::v1::broker_server::Broker as _;
use tonic::{Code, Request};

fn config(dir: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.store.dir = dir.to_owned();
    config.store.segment_size = 16 << 20;
    config.store.index_slots = 4096;
    config.store.index_entries = 65_536;
    // Usage against 1 TiB: a shared CI disk already past the 90 % limit must not refuse these writes.
    config.store.disk_capacity_bytes = Some(1 << 40);
    config.broker.max_inflight_sends = 2;
    config
}

fn send(topic: &str) -> Request<pb::SendMessageRequest> {
    Request::new(pb::SendMessageRequest {
        topic: topic.into(),
        queue_id: Some(0),
        producer_group: String::new(),
        messages: vec![pb::OutgoingMessage { body: b"x".to_vec().into(), ..Default::default() }],
        transactional: false,
    })
}

#[tokio::test]
async fn sends_beyond_the_in_flight_limit_are_busy_until_a_permit_returns() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(config(dir.path()), "127.0.0.1:8081".into()).unwrap();
    let handler = BrokerHandler::new(Arc::clone(&broker));
    handler.send_message(send("t")).await.unwrap();

    // Two sends "in flight": hold both permits.
    let held = Arc::clone(&broker.sends).acquire_many_owned(2).await.unwrap();
    let status = handler.send_message(send("t")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("busy") && status.message().contains("in flight"), "{}", status.message());

    drop(held);
    handler.send_message(send("t")).await.unwrap();
    broker.close().unwrap();
}

#[tokio::test]
async fn a_full_disk_is_the_same_retryable_busy_code_with_its_own_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    // Usage = CommitLog bytes / capacity: one preallocated 16 MiB segment over 1 MiB is far above 90 %.
    config.store.disk_capacity_bytes = Some(1 << 20);
    let broker = Broker::open(config, "127.0.0.1:8081".into()).unwrap();
    let handler = BrokerHandler::new(Arc::clone(&broker));
    // Usage is measured by the store's background thread; wait for the first measurement to refuse writes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        match handler.send_message(send("t")).await {
            Err(status) => break status,
            Ok(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(_) => panic!("writes never refused"),
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("disk full"), "{}", status.message());
    broker.close().unwrap();
}
