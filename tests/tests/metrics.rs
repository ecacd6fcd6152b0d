//! Metrics end to end: a real Prometheus (Debian's) scrapes a running broker and NameServer and its query API
//! shows exactly what was produced, consumed and left behind; OTLP pushes reach a small test sink (periodically
//! and at shutdown); topic labels beyond the cap are folded.

use std::time::Duration;

use comet_proto::comet::v1 as pb;
use comet_proto::comet::v1::broker_client::BrokerClient;
use comet_tests::harness::broker_process::{BrokerOptions, BrokerProcess, dispatched};
use comet_tests::harness::nameserver::NameServer;
use comet_tests::harness::otlp::OtlpSink;
use comet_tests::harness::prometheus::{Prometheus, http_get};
use tonic::transport::Channel;

const TOPIC: &str = "metrics-t";
const GROUP: &str = "metrics-g";

async fn send(client: &mut BrokerClient<Channel>, topic: &str, queue: u32, n: usize) -> anyhow::Result<()> {
    let messages = vec![pb::OutgoingMessage { body: vec![b'x'; 100].into(), ..Default::default() }; n];
    let request = pb::SendMessageRequest {
        topic: topic.into(),
        queue_id: Some(queue),
        producer_group: String::new(),
        messages,
        ..Default::default()
    };
    client.send_message(request).await?;
    Ok(())
}

async fn pull(
    client: &mut BrokerClient<Channel>,
    queue: u32,
    offset: u64,
    max: u32,
) -> anyhow::Result<Vec<pb::StoredMessage>> {
    let request = pb::PullMessageRequest {
        group: GROUP.into(),
        topic: TOPIC.into(),
        queue_id: queue,
        offset,
        max_count: max,
        max_bytes: 0,
        max_wait_millis: 0,
        tag_expression: String::new(),
    };
    Ok(client.pull_message(request).await?.into_inner().messages)
}

async fn commit(client: &mut BrokerClient<Channel>, queue: u32, offset: u64) -> anyhow::Result<()> {
    let request = pb::CommitConsumerOffsetRequest { group: GROUP.into(), topic: TOPIC.into(), queue_id: queue, offset };
    client.commit_consumer_offset(request).await?;
    Ok(())
}

fn lag(metric: &str, queue: u32) -> String {
    format!("{metric}{{consumer_group=\"{GROUP}\",topic=\"{TOPIC}\",queue_id=\"{queue}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_messages_in_and_consumer_lag_with_exact_values() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns_dir, broker_dir, prom_dir) = (dir.path().join("ns"), dir.path().join("broker"), dir.path().join("prom"));
    for d in [&ns_dir, &broker_dir, &prom_dir] {
        std::fs::create_dir_all(d)?;
    }
    let ns = NameServer::memory(&ns_dir, "").await?;
    let options = BrokerOptions { nameservers: vec![ns.addr()], ..Default::default() };
    let broker = BrokerProcess::start(&broker_dir, &options).await?;
    let prometheus = Prometheus::start(
        &prom_dir,
        &[("comet-broker", broker.metrics_addr()), ("comet-nameserver", ns.metrics_addr())],
    )
    .await?;
    let mut client = broker.client().await?;
    let topic = pb::TopicConfig { name: TOPIC.into(), read_queue_nums: 2, write_queue_nums: 2, ..Default::default() };
    client.create_topic(pb::CreateTopicRequest { topic: Some(topic) }).await?;

    // 50 messages of 100 bytes in five requests: 30 in queue 0, 20 in queue 1.
    for (queue, requests) in [(0, 3), (1, 2)] {
        for _ in 0..requests {
            send(&mut client, TOPIC, queue, 10).await?;
        }
    }
    dispatched(&client, TOPIC, 0..1, 30).await?;
    dispatched(&client, TOPIC, 1..2, 20).await?;
    // The group consumes and commits 12 of queue 0 and all 20 of queue 1, then pulls 5 more of queue 0
    // without committing them: lag 18 (5 in flight, 13 not pulled yet) in queue 0, none in queue 1.
    assert_eq!(pull(&mut client, 0, 0, 12).await?.len(), 12);
    commit(&mut client, 0, 12).await?;
    assert_eq!(pull(&mut client, 1, 0, 100).await?.len(), 20);
    commit(&mut client, 1, 20).await?;
    let pending = pull(&mut client, 0, 12, 5).await?;
    assert_eq!(pending.len(), 5);
    let oldest_pending_ms = pending[0].store_timestamp_millis;
    // Clients introduce themselves with their language: one producer, one consumer of the group.
    for (id, language, producers, consumers) in [
        ("metrics-producer", "RUST", vec!["metrics-pg".to_owned()], vec![]),
        (
            "metrics-consumer",
            "JAVA",
            vec![],
            vec![pb::ConsumerGroupHeartbeat {
                group: GROUP.into(),
                message_model: pb::MessageModel::Clustering.into(),
                subscriptions: vec![pb::Subscription { topic: TOPIC.into(), expression: "*".into() }],
            }],
        ),
    ] {
        let heartbeat = pb::ClientHeartbeatRequest {
            client_id: id.into(),
            producer_groups: producers,
            consumer_groups: consumers,
            language: language.into(),
            version: "5.1.0".into(),
        };
        client.heartbeat(heartbeat).await?;
    }

    let broker_series = format!("{{job=\"comet-broker\",topic=\"{TOPIC}\"}}");
    let messages_in = prometheus.wait_for_value(&format!("rocketmq_messages_in_total{broker_series}"), 50.0).await?;
    assert_eq!(messages_in.labels["message_type"], "normal");
    assert_eq!(messages_in.labels["service_name"], "comet-broker");
    assert_eq!(messages_in.labels["service_instance_id"], broker.addr());
    assert_eq!(messages_in.labels["cluster"], "DefaultCluster");
    prometheus.wait_for_value(&format!("rocketmq_throughput_in_total{broker_series}"), 5000.0).await?;
    prometheus
        .wait_for_value(&format!("rocketmq_messages_out_total{{topic=\"{TOPIC}\",consumer_group=\"{GROUP}\"}}"), 37.0)
        .await?;
    prometheus.wait_for_value(&lag("rocketmq_consumer_lag_messages", 0), 18.0).await?;
    prometheus.wait_for_value(&lag("rocketmq_consumer_lag_messages", 1), 0.0).await?;
    prometheus
        .wait_for_value(&format!("sum(rocketmq_consumer_lag_messages{{consumer_group=\"{GROUP}\"}})"), 18.0)
        .await?;
    prometheus.wait_for_value(&lag("rocketmq_consumer_inflight_messages", 0), 5.0).await?;
    prometheus.wait_for_value(&lag("rocketmq_consumer_ready_messages", 0), 13.0).await?;
    prometheus.wait_for_value(&lag("rocketmq_consumer_lag_latency", 1), 0.0).await?;
    // Lag in time: the age of the first uncommitted message when the sample was taken (the scrape time),
    // within the collection's snapshot age and scheduling slack.
    let expr = lag("rocketmq_consumer_lag_latency", 0);
    let both = format!("{expr} or label_replace(timestamp({expr}), \"t\", \"scrape\", \"queue_id\", \".*\")");
    let pair = prometheus.wait_for(&both, Duration::from_secs(30), |s| s.len() == 2).await?;
    let latency = pair.iter().find(|s| !s.labels.contains_key("t")).map(|s| s.value).unwrap_or(f64::NAN);
    let scraped_ms = pair.iter().find(|s| s.labels.contains_key("t")).map(|s| s.value * 1000.0).unwrap_or(f64::NAN);
    let expected = scraped_ms - oldest_pending_ms as f64;
    assert!(latency > 0.0 && (latency - expected).abs() < 1500.0, "lag latency {latency} ms, expected ~{expected}");
    prometheus
        .wait_for_value("rocketmq_rpc_latency_count{request_code=\"SendMessage\",response_code=\"OK\"}", 5.0)
        .await?;
    prometheus
        .wait_for_value("rocketmq_rpc_latency_count{request_code=\"PullMessage\",response_code=\"OK\"}", 3.0)
        .await?;
    prometheus.wait_for_value("rocketmq_producer_connections{language=\"RUST\",version=\"5.1.0\"}", 1.0).await?;
    prometheus
        .wait_for_value(
            &format!("rocketmq_consumer_connections{{consumer_group=\"{GROUP}\",language=\"JAVA\",consume_mode=\"clustering\"}}"),
            1.0,
        )
        .await?;
    // The NameServer: the registered broker, its topics, and its own RPC latency.
    let brokers = prometheus.wait_for_value("rocketmq_nameserver_brokers{job=\"comet-nameserver\"}", 1.0).await?;
    assert_eq!(brokers.labels["cluster"], "DefaultCluster");
    assert_eq!(brokers.labels["service_name"], "comet-nameserver");
    prometheus
        .wait_for("rocketmq_nameserver_topics", Duration::from_secs(30), |s| s.len() == 1 && s[0].value >= 1.0)
        .await?;
    prometheus
        .wait_for(
            "rocketmq_rpc_latency_count{job=\"comet-nameserver\",request_code=\"RegisterBroker\",response_code=\"OK\"}",
            Duration::from_secs(30),
            |s| s.len() == 1 && s[0].value >= 1.0,
        )
        .await?;
    // Both targets healthy (a scrape that timed out on a loaded machine marks one down until the next).
    let healthy = || async {
        let targets = prometheus.targets().await.unwrap_or_default();
        targets.len() == 2 && targets.iter().all(|(_, health, _)| health == "up")
    };
    if comet_tests::harness::wait_until("both targets up", Duration::from_secs(30), healthy).await.is_err() {
        anyhow::bail!("targets: {:?}", prometheus.targets().await?);
    }

    // The group catches up: no lag left, in messages or in time.
    commit(&mut client, 0, 30).await?;
    prometheus.wait_for_value(&lag("rocketmq_consumer_lag_messages", 0), 0.0).await?;
    prometheus.wait_for_value(&lag("rocketmq_consumer_lag_latency", 0), 0.0).await?;
    prometheus.wait_for_value(&lag("rocketmq_consumer_inflight_messages", 0), 0.0).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_pushes_reach_a_test_sink_periodically_and_at_shutdown() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sink = OtlpSink::start(dir.path()).await?;
    let ns_dir = dir.path().join("ns");
    std::fs::create_dir_all(&ns_dir)?;
    let push = format!("  otlp-endpoint: {}\n  otlp-interval-ms: 300\n", sink.endpoint());
    let ns = NameServer::memory(&ns_dir, &format!("metrics:\n{push}")).await?;
    let broker_dir = dir.path().join("broker");
    std::fs::create_dir_all(&broker_dir)?;
    let options = BrokerOptions { nameservers: vec![ns.addr()], metrics_extra: push.clone(), ..Default::default() };
    let broker = BrokerProcess::start(&broker_dir, &options).await?;
    let mut client = broker.client().await?;
    send(&mut client, "otlp-t", 0, 7).await?;

    let messages_in = sink
        .wait_for("7 messages in on otlp-t", |p| {
            p.name == "rocketmq_messages_in_total"
                && p.attributes.get("topic").is_some_and(|t| t == "otlp-t")
                && p.value == 7.0
        })
        .await?;
    assert_eq!(messages_in.kind, "sum");
    assert_eq!(messages_in.resource["service.name"], "comet-broker");
    assert_eq!(messages_in.resource["service.instance.id"], broker.addr());
    assert_eq!(messages_in.resource["node_type"], "broker");
    sink.wait_for("a SendMessage latency histogram", |p| {
        p.name == "rocketmq_rpc_latency"
            && p.kind == "histogram"
            && p.attributes.get("request_code").is_some_and(|c| c == "SendMessage")
            && p.value == 1.0
    })
    .await?;
    sink.wait_for("the broker's store size", |p| p.name == "rocketmq_storage_size" && p.value > 0.0).await?;
    sink.wait_for("one broker registered with the NameServer", |p| {
        p.name == "rocketmq_nameserver_brokers"
            && p.resource.get("service.name").is_some_and(|s| s == "comet-nameserver")
            && p.value == 1.0
    })
    .await?;

    // A broker that pushes only every 10 minutes still delivers its final state when it stops.
    let quiet_dir = dir.path().join("quiet");
    std::fs::create_dir_all(&quiet_dir)?;
    let quiet = BrokerOptions {
        metrics_extra: format!("  otlp-endpoint: {}\n  otlp-interval-ms: 600000\n", sink.endpoint()),
        ..Default::default()
    };
    let mut quiet = BrokerProcess::start(&quiet_dir, &quiet).await?;
    send(&mut quiet.client().await?, "otlp-final", 0, 3).await?;
    assert!(quiet.terminate().await?, "clean exit; stderr:\n{}", quiet.log());
    sink.wait_for("the final push at shutdown", |p| {
        p.name == "rocketmq_messages_in_total"
            && p.attributes.get("topic").is_some_and(|t| t == "otlp-final")
            && p.value == 3.0
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_beyond_the_label_cap_are_counted_as_other() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = BrokerOptions { metrics_extra: "  max-topic-labels: 2\n".into(), ..Default::default() };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    let mut client = broker.client().await?;
    for topic in ["cap-a", "cap-b", "cap-c", "cap-d"] {
        send(&mut client, topic, 0, 1).await?;
    }
    let (status, text) = http_get(broker.metrics_addr(), "/metrics").await?;
    assert_eq!(status, 200);
    let count = |topic: &str| {
        text.lines()
            .find(|l| l.starts_with("rocketmq_messages_in_total{") && l.contains(&format!("topic=\"{topic}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    };
    assert_eq!(count("cap-a").as_deref(), Some("1"), "{text}");
    assert_eq!(count("cap-b").as_deref(), Some("1"));
    assert_eq!(count("_other").as_deref(), Some("2"), "cap-c and cap-d share one series");
    assert_eq!(count("cap-c"), None);
    Ok(())
}
