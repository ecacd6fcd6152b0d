//! Consumer lag as the metrics compute it, on a temp store driven through the service trait: lag in messages
//! and in time, in-flight and ready messages per queue, and the folding of groups beyond the label cap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use comet_broker::Config;
use comet_broker::broker::{Broker, now_ms};
use comet_broker::handler::BrokerHandler;
use comet_broker::metrics::consumer_lag;
use comet_proto::comet::v1 as pb;
use comet_proto::comet::v1::broker_server::Broker as _;
use tonic::Request;

fn config(dir: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.store.dir = dir.to_owned();
    config.store.segment_size = 16 << 20;
    config.store.index_slots = 4096;
    config.store.index_entries = 65_536;
    // Usage against 1 TiB: a shared CI disk already past the 90 % limit must not refuse these writes.
    config.store.disk_capacity_bytes = Some(1 << 40);
    config.metrics.max_group_labels = 1;
    config
}

async fn send(handler: &BrokerHandler, queue: u32, n: usize) {
    let messages = vec![pb::OutgoingMessage { body: b"0123456789".to_vec().into(), ..Default::default() }; n];
    let request = pb::SendMessageRequest {
        topic: "t".into(),
        queue_id: Some(queue),
        producer_group: String::new(),
        messages,
        ..Default::default()
    };
    handler.send_message(Request::new(request)).await.unwrap();
}

async fn pull(handler: &BrokerHandler, group: &str, queue: u32, offset: u64, max: u32) -> Vec<pb::StoredMessage> {
    let request = pb::PullMessageRequest {
        group: group.into(),
        topic: "t".into(),
        queue_id: queue,
        offset,
        max_count: max,
        max_bytes: 0,
        max_wait_millis: 0,
        tag_expression: String::new(),
    };
    handler.pull_message(Request::new(request)).await.unwrap().into_inner().messages
}

async fn commit(handler: &BrokerHandler, group: &str, queue: u32, offset: u64) {
    let request = pb::CommitConsumerOffsetRequest { group: group.into(), topic: "t".into(), queue_id: queue, offset };
    handler.commit_consumer_offset(Request::new(request)).await.unwrap();
}

#[tokio::test]
async fn lag_inflight_and_ready_per_queue_and_groups_beyond_the_cap_fold_into_other() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(config(dir.path()), "127.0.0.1:8081".into()).unwrap();
    let handler = BrokerHandler::new(Arc::clone(&broker));
    send(&handler, 0, 10).await;
    send(&handler, 1, 4).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker.store.queue_range("t", 1).map_or(0, |r| r.1.0) < 4 {
        assert!(Instant::now() < deadline, "dispatch");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // g1 (own label): queue 0 committed at 3 and pulled to 7; queue 1 fully consumed.
    assert_eq!(pull(&handler, "g1", 0, 0, 3).await.len(), 3);
    commit(&handler, "g1", 0, 3).await;
    let pending = pull(&handler, "g1", 0, 3, 4).await;
    let stored_at_3 = pending[0].store_timestamp_millis;
    assert_eq!(pull(&handler, "g1", 1, 0, 10).await.len(), 4);
    commit(&handler, "g1", 1, 4).await;
    // g2 and g3 exceed max-group-labels = 1: one folded series with the summed lag.
    commit(&handler, "g2", 0, 8).await;
    commit(&handler, "g3", 1, 1).await;

    let now = now_ms();
    let rows = consumer_lag(&broker, now);
    let row = |g: &str, q: &str| {
        rows.iter()
            .find(|r| r.group.as_str() == g && r.queue.as_str() == q)
            .unwrap_or_else(|| panic!("{g}/{q}: {rows:?}"))
    };
    let q0 = row("g1", "0");
    assert_eq!((q0.lag_messages, q0.inflight, q0.ready), (7, 4, 3));
    assert_eq!(q0.lag_ms, now - stored_at_3);
    let q1 = row("g1", "1");
    assert_eq!((q1.lag_messages, q1.lag_ms, q1.inflight, q1.ready), (0, 0, 0, 0));
    let other = row("_other", "_all");
    assert_eq!(other.topic.as_str(), "t");
    assert_eq!(other.lag_messages, 2 + 3, "g2: 10 - 8 in queue 0, g3: 4 - 1 in queue 1");
    assert_eq!(other.ready, 5, "nothing pulled by them");
    assert_eq!(rows.len(), 3);
    broker.close().unwrap();
}
