//! Retry and dead-letter queues with a real NameServer, broker and push consumers: a listener failing a message
//! (error or panic) gets it again from the group's retry topic after the configured delays, with the attempt
//! count, the original topic, id, keys, tags and properties, and consumes it once; another group on the topic
//! never sees the retries; a message failing every attempt lands in `%DLQ%<group>`, where `comet dlq list` shows
//! it and `comet dlq resend` delivers it again; a listener running past the consume timeout is not given its
//! message a second time.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use comet_client::{ConsumeFrom, Message, Producer, ProducerConfig, PushConsumer, PushConsumerConfig, ReceivedMessage};
use comet_proto::comet::v1 as pb;
use comet_tests::harness::broker_process::{BrokerOptions, BrokerProcess};
use comet_tests::harness::nameserver::{NameServer, fast_client_config};
use comet_tests::harness::wait_until;
use parking_lot::Mutex;

use crate::cli_admin::comet;

/// One delivery as a listener saw it.
#[derive(Debug, Clone)]
struct Delivery {
    at: Instant,
    message: ReceivedMessage,
}

/// Body → every delivery of it, in order.
type Log = Arc<Mutex<HashMap<String, Vec<Delivery>>>>;

/// A NameServer and a broker with a 2-queue `topic` (routed), the broker's default retry delays `delays_ms`.
async fn cluster(dir: &Path, topic: &str, delays_ms: &str) -> anyhow::Result<(NameServer, BrokerProcess)> {
    let ns_dir = dir.join("ns");
    std::fs::create_dir_all(&ns_dir)?;
    let ns = NameServer::memory(&ns_dir, "").await?;
    let broker_dir = dir.join("broker-a");
    std::fs::create_dir_all(&broker_dir)?;
    let options = BrokerOptions {
        nameservers: vec![ns.addr()],
        messaging: format!("  retry-delays-ms: [{delays_ms}]\n"),
        ..Default::default()
    };
    let broker = BrokerProcess::start(&broker_dir, &options).await?;
    let config = pb::TopicConfig { name: topic.into(), read_queue_nums: 2, write_queue_nums: 2, ..Default::default() };
    broker.client().await?.create_topic(pb::CreateTopicRequest { topic: Some(config) }).await?;
    let ns_client = ns.client()?;
    wait_until(&format!("route of {topic}"), Duration::from_secs(10), || async {
        ns_client.query_route(topic).await.is_ok_and(|r| r.queues.len() == 1)
    })
    .await?;
    Ok((ns, broker))
}

fn producer(ns: &NameServer) -> anyhow::Result<Producer> {
    let mut config = ProducerConfig::new(vec![ns.addr()], "retry-test-producer");
    config.nameserver_client = Some(fast_client_config(vec![ns.addr()]));
    Ok(Producer::new(config)?)
}

/// Message `i` of `topic`: body `{topic}-{i}`, a key, a tag and a user property.
fn message(topic: &str, i: usize) -> Message {
    Message::new(topic, format!("{topic}-{i}"))
        .with_key(format!("key-{i}"))
        .with_tags("TagA")
        .with_property("order", i.to_string())
}

/// A push consumer of `topic` with test-speed intervals, recording every delivery in `log` before `verdict`
/// decides (Ok, Err or a panic).
async fn consumer(
    ns: &NameServer,
    group: &str,
    topic: &str,
    log: &Log,
    verdict: impl Fn(&ReceivedMessage) -> comet_client::ListenerResult + Send + Sync + 'static,
    configure: impl FnOnce(&mut PushConsumerConfig),
) -> anyhow::Result<PushConsumer> {
    let log = Arc::clone(log);
    Ok(PushConsumer::builder(vec![ns.addr()], group)
        .subscribe(topic, "*")
        .consume_from(ConsumeFrom::FirstOffset)
        .threads(4)
        .configure(|c| {
            c.nameserver_client = Some(fast_client_config(vec![ns.addr()]));
            c.rebalance_interval = Duration::from_millis(200);
            c.commit_interval = Duration::from_millis(200);
            c.pull_wait = Duration::from_millis(300);
            c.route_refresh = Duration::from_millis(500);
            c.retry_backoff = Duration::from_millis(500);
            configure(c);
        })
        .listener(move |m: &ReceivedMessage| {
            let body = String::from_utf8_lossy(&m.body).into_owned();
            log.lock().entry(body).or_default().push(Delivery { at: Instant::now(), message: m.clone() });
            verdict(m)
        })
        .start()
        .await?)
}

/// Checks that a delivery carries message `i` of `topic` as it was sent.
fn assert_is_message(m: &ReceivedMessage, topic: &str, i: usize, id: &str) {
    assert_eq!(m.topic, topic, "the original topic, also for a redelivery");
    assert_eq!(m.message_id, id);
    assert_eq!(m.origin_message_id, id);
    assert_eq!(m.keys, vec![format!("key-{i}")]);
    assert_eq!(m.tags, "TagA");
    let expected: HashMap<String, String> = [("order".to_owned(), i.to_string())].into();
    assert_eq!(m.properties, expected, "the user's properties, nothing else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_message_comes_back_after_each_delay_until_consumed_once_and_other_groups_see_it_once()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let topic = "retry-orders";
    let (ns, _broker) = cluster(dir.path(), topic, "400, 800").await?;
    let (failing, other): (Log, Log) = Default::default();
    // Fails the first two deliveries of each message: odd messages by an error, even ones by a panic.
    let retried = consumer(
        &ns,
        "retry-g",
        topic,
        &failing,
        |m| {
            if m.reconsume_times >= 2 {
                return Ok(());
            }
            let order: usize = m.properties.get("order").and_then(|o| o.parse().ok()).unwrap_or(0);
            if order.is_multiple_of(2) {
                panic!("listener panics on attempt {}", m.reconsume_times);
            }
            Err(format!("attempt {} fails", m.reconsume_times).into())
        },
        |_| {},
    )
    .await?;
    let bystander = consumer(&ns, "retry-other", topic, &other, |_| Ok(()), |_| {}).await?;

    let producer = producer(&ns)?;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(producer.send(message(topic, i)).await?.message_id);
    }
    let bodies: Vec<String> = (0..20).map(|i| format!("{topic}-{i}")).collect();
    wait_until("every message consumed after two failures", Duration::from_secs(40), || async {
        let (log, other) = (failing.lock(), other.lock());
        bodies.iter().all(|b| log.get(b).is_some_and(|d| d.len() >= 3) && other.contains_key(b))
    })
    .await?;
    // Long enough for a duplicate or a fourth attempt to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    retried.shutdown().await;
    bystander.shutdown().await;

    let failing = failing.lock();
    for (i, body) in bodies.iter().enumerate() {
        let deliveries = &failing[body];
        let attempts: Vec<u32> = deliveries.iter().map(|d| d.message.reconsume_times).collect();
        assert_eq!(attempts, vec![0, 1, 2], "{body}: two failures, then one successful delivery");
        for d in deliveries {
            assert_is_message(&d.message, topic, i, &ids[i]);
        }
        assert!(!deliveries[0].message.is_retry() && deliveries[1].message.is_retry());
        assert_eq!(deliveries[1].message.queue.topic, "%RETRY%retry-g");
        for (n, delay) in [(1, 400u64), (2, 800)] {
            let gap = deliveries[n].at - deliveries[n - 1].at;
            assert!(gap >= Duration::from_millis(delay), "{body}: retry {n} came after {gap:?}, before {delay} ms");
            assert!(
                gap < Duration::from_millis(delay + 5_000),
                "{body}: retry {n} came after {gap:?}, far beyond {delay} ms"
            );
        }
    }
    let other = other.lock();
    for (i, body) in bodies.iter().enumerate() {
        let deliveries = &other[body];
        assert_eq!(deliveries.len(), 1, "{body}: the other group gets it once");
        assert_eq!(deliveries[0].message.reconsume_times, 0);
        assert!(!deliveries[0].message.is_retry());
        assert_is_message(&deliveries[0].message, topic, i, &ids[i]);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_failing_every_attempt_is_dead_lettered_listed_and_resent_by_the_cli() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let topic = "dlq-orders";
    let group = "dlq-g";
    let (ns, _broker) = cluster(dir.path(), topic, "10000").await?;
    // The group's own delays win over the broker's 10 s.
    comet(&ns, &["group", "create", group, "--retry-max-times", "2", "--retry-delays", "200ms,300ms"]).await?;
    let listed = comet(&ns, &["group", "list", "--json"]).await?;
    assert!(listed.contains(r#""retry_delays_millis":[200,300]"#), "{listed}");

    let log: Log = Default::default();
    let accept = Arc::new(AtomicBool::new(false));
    let accepting = Arc::clone(&accept);
    let failing = consumer(
        &ns,
        group,
        topic,
        &log,
        move |_| if accepting.load(Ordering::SeqCst) { Ok(()) } else { Err("always fails".into()) },
        |_| {},
    )
    .await?;
    let id = producer(&ns)?.send(message(topic, 7)).await?.message_id;
    let body = format!("{topic}-7");

    let found = Arc::new(Mutex::new(serde_json::Value::Null));
    wait_until("the message in the dead-letter queue", Duration::from_secs(30), || async {
        let out = comet(&ns, &["dlq", "list", "--group", group, "--json"]).await.unwrap_or_default();
        match out.lines().next().map(serde_json::from_str::<serde_json::Value>) {
            Some(Ok(v)) => {
                *found.lock() = v;
                true
            }
            _ => false,
        }
    })
    .await?;
    let letter = found.lock().clone();
    assert_eq!(letter["message_id"], id.as_str());
    assert_eq!(letter["original_topic"], topic);
    assert_eq!(letter["attempts"], 3, "dead-lettered at its third failure: the first delivery and two retries");
    assert_eq!(letter["keys"], serde_json::json!(["key-7"]));
    assert_eq!(letter["tags"], "TagA");
    assert_eq!(letter["properties"]["order"], "7");
    assert_eq!(letter["body"], body.as_str());
    let table = comet(&ns, &["dlq", "list", "--group", group]).await?;
    assert!(table.contains(&id) && table.contains(topic), "{table}");
    {
        let log = log.lock();
        let attempts: Vec<u32> = log[&body].iter().map(|d| d.message.reconsume_times).collect();
        assert_eq!(attempts, vec![0, 1, 2], "three deliveries, then the dead-letter queue");
    }

    accept.store(true, Ordering::SeqCst);
    let resent = comet(&ns, &["dlq", "resend", "--group", group, "--all"]).await?;
    assert!(resent.contains("1 dead letter(s) re-sent"), "{resent}");
    wait_until("the re-sent message delivered", Duration::from_secs(20), || async {
        log.lock().get(&body).is_some_and(|d| d.len() == 4)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    failing.shutdown().await;
    let log = log.lock();
    let deliveries = &log[&body];
    assert_eq!(deliveries.len(), 4, "re-sent once, consumed once");
    let last = &deliveries[3].message;
    assert_eq!(last.reconsume_times, 0, "a re-sent dead letter starts its attempts again");
    assert!(!last.is_retry());
    assert_is_message(last, topic, 7, &id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listener_running_past_the_consume_timeout_is_reported_and_its_message_not_delivered_twice()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let topic = "slow-orders";
    let (ns, _broker) = cluster(dir.path(), topic, "200").await?;
    let log: Log = Default::default();
    let slow = consumer(
        &ns,
        "slow-g",
        topic,
        &log,
        |m| {
            if m.properties.get("order").map(String::as_str) == Some("0") {
                std::thread::sleep(Duration::from_millis(2_500));
            }
            Ok(())
        },
        |c| c.consume_timeout = Duration::from_millis(300),
    )
    .await?;
    let producer = producer(&ns)?;
    for i in 0..5 {
        producer.send(message(topic, i)).await?;
    }
    wait_until("the hanging call reported as overdue", Duration::from_secs(20), || async {
        slow.queue_stats().iter().any(|q| q.overdue_messages == 1)
    })
    .await?;
    wait_until("every message consumed", Duration::from_secs(20), || async { log.lock().len() == 5 }).await?;
    wait_until("the overdue call returned", Duration::from_secs(20), || async {
        slow.queue_stats().iter().all(|q| q.overdue_messages == 0)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let timeouts: u64 = slow.queue_stats().iter().map(|q| q.consume_timeouts).sum();
    slow.shutdown().await;
    assert_eq!(timeouts, 1, "the one hanging call is counted once");
    let log = log.lock();
    for (body, deliveries) in log.iter() {
        assert_eq!(deliveries.len(), 1, "{body} processed once, the slow one too");
        assert_eq!(deliveries[0].message.reconsume_times, 0);
    }
    Ok(())
}
