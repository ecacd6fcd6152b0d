//! The push consumer (comet-client) against a real NameServer and broker: clustering shares 8 queues among three
//! members with every message consumed exactly once; a member leaving and another joining mid-stream loses
//! nothing; broadcasting members each get everything; a restarted member resumes from the committed offsets; a
//! message the listener failed is delivered again.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use comet_client::{ConsumeFrom, Message, MessageModel, Producer, ProducerConfig, PushConsumer, ReceivedMessage};
use comet_proto::comet::v1 as pb;
use comet_tests::harness::broker_process::{BrokerOptions, BrokerProcess};
use comet_tests::harness::nameserver::{NameServer, fast_client_config};
use comet_tests::harness::wait_until;
use parking_lot::Mutex;

/// Body → how often the listener succeeded with it.
type Seen = Arc<Mutex<HashMap<String, usize>>>;

/// A NameServer and one broker with an 8-queue `topic`, routed.
async fn cluster(dir: &Path, topic: &str) -> anyhow::Result<(NameServer, BrokerProcess)> {
    let ns_dir = dir.join("ns");
    std::fs::create_dir_all(&ns_dir)?;
    let ns = NameServer::memory(&ns_dir, "").await?;
    let broker_dir = dir.join("broker-a");
    std::fs::create_dir_all(&broker_dir)?;
    let broker =
        BrokerProcess::start(&broker_dir, &BrokerOptions { nameservers: vec![ns.addr()], ..Default::default() })
            .await?;
    let config = pb::TopicConfig { name: topic.into(), read_queue_nums: 8, write_queue_nums: 8, ..Default::default() };
    broker.client().await?.create_topic(pb::CreateTopicRequest { topic: Some(config) }).await?;
    let ns_client = ns.client()?;
    wait_until(&format!("route of {topic}"), Duration::from_secs(10), || async {
        ns_client.query_route(topic).await.is_ok_and(|r| r.queues.len() == 1)
    })
    .await?;
    Ok((ns, broker))
}

/// Sends `count` messages with bodies `{prefix}-{i}` in batches of 50 (each batch to the next queue).
async fn send(ns: &NameServer, topic: &str, prefix: &str, count: usize) -> anyhow::Result<Vec<String>> {
    let mut config = ProducerConfig::new(vec![ns.addr()], "push-test-producer");
    config.nameserver_client = Some(fast_client_config(vec![ns.addr()]));
    let producer = Producer::new(config)?;
    let bodies: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    for chunk in bodies.chunks(50) {
        producer.send_batch(chunk.iter().map(|b| Message::new(topic, b.clone())).collect()).await?;
    }
    Ok(bodies)
}

/// A push consumer recording every successful delivery in `seen`, with test-speed intervals.
async fn consumer(
    ns: &NameServer,
    group: &str,
    topic: &str,
    model: MessageModel,
    from: ConsumeFrom,
    seen: &Seen,
    offset_file: Option<&Path>,
) -> anyhow::Result<PushConsumer> {
    let seen = Arc::clone(seen);
    let mut builder = PushConsumer::builder(vec![ns.addr()], group)
        .subscribe(topic, "*")
        .model(model)
        .consume_from(from)
        .threads(4)
        .configure(|c| {
            c.nameserver_client = Some(fast_client_config(vec![ns.addr()]));
            c.rebalance_interval = Duration::from_millis(200);
            c.commit_interval = Duration::from_millis(500);
            c.pull_wait = Duration::from_millis(500);
            c.retry_backoff = Duration::from_millis(100);
            c.route_refresh = Duration::from_millis(500);
        })
        .listener(move |m: &ReceivedMessage| {
            *seen.lock().entry(String::from_utf8_lossy(&m.body).into_owned()).or_default() += 1;
            Ok(())
        });
    if let Some(path) = offset_file {
        builder = builder.offset_file(path);
    }
    Ok(builder.start().await?)
}

/// Waits until every body in `expected` was seen at least once.
async fn wait_all_seen(seen: &Seen, expected: &[String], what: &str) -> anyhow::Result<()> {
    let result = wait_until(what, Duration::from_secs(60), || async {
        let seen = seen.lock();
        expected.iter().all(|b| seen.contains_key(b))
    })
    .await;
    if result.is_err() {
        let seen = seen.lock();
        let missing = expected.iter().filter(|b| !seen.contains_key(*b)).count();
        anyhow::bail!("{what}: {missing} of {} never delivered", expected.len());
    }
    Ok(())
}

/// Waits until the consumers' assignments are disjoint and cover all 8 queues.
async fn wait_balanced(consumers: &[&PushConsumer]) -> anyhow::Result<()> {
    wait_until("8 queues shared without overlap", Duration::from_secs(20), || async {
        let sizes: Vec<usize> = consumers.iter().map(|c| c.assigned_queues().len()).collect();
        let union: BTreeSet<_> = consumers.iter().flat_map(|c| c.assigned_queues()).collect();
        union.len() == 8 && sizes.iter().sum::<usize>() == 8 && sizes.iter().all(|&s| s >= 2)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn three_members_of_a_group_share_eight_queues_and_consume_every_message_exactly_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, _broker) = cluster(dir.path(), "push-even").await?;
    let seen: Seen = Arc::default();
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(
            consumer(&ns, "push-even-g", "push-even", MessageModel::Clustering, ConsumeFrom::FirstOffset, &seen, None)
                .await?,
        );
    }
    wait_balanced(&members.iter().collect::<Vec<_>>()).await?;
    let sizes: Vec<usize> = members.iter().map(|c| c.assigned_queues().len()).collect();
    assert_eq!(sizes.iter().copied().collect::<BTreeSet<_>>(), BTreeSet::from([2, 3]), "3+3+2: {sizes:?}");

    let bodies = send(&ns, "push-even", "m", 10_000).await?;
    wait_all_seen(&seen, &bodies, "10 000 messages over three members").await?;
    {
        let seen = seen.lock();
        let duplicates: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(duplicates.is_empty(), "{} delivered twice, e.g. {:?}", duplicates.len(), duplicates.first());
        assert_eq!(seen.len(), 10_000);
    }
    for member in members {
        member.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_leaving_and_another_joining_mid_stream_loses_no_message() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, _broker) = cluster(dir.path(), "push-churn").await?;
    let seen: Seen = Arc::default();
    let start = |seen: Seen| {
        let ns = &ns;
        async move {
            consumer(ns, "push-churn-g", "push-churn", MessageModel::Clustering, ConsumeFrom::FirstOffset, &seen, None)
                .await
        }
    };
    let leaving = start(Arc::clone(&seen)).await?;
    let staying = start(Arc::clone(&seen)).await?;
    wait_balanced(&[&leaving, &staying]).await?;

    let mut expected = send(&ns, "push-churn", "before", 4_000).await?;
    // Mid-stream: the backlog is still being consumed while the membership changes.
    let sender = {
        let ns_addr = ns.addr();
        tokio::spawn(async move {
            let mut config = ProducerConfig::new(vec![ns_addr.clone()], "push-churn-producer");
            config.nameserver_client = Some(fast_client_config(vec![ns_addr]));
            let producer = Producer::new(config)?;
            let bodies: Vec<String> = (0..6_000).map(|i| format!("during-{i}")).collect();
            for chunk in bodies.chunks(50) {
                producer.send_batch(chunk.iter().map(|b| Message::new("push-churn", b.clone())).collect()).await?;
            }
            anyhow::Ok(bodies)
        })
    };
    leaving.shutdown().await;
    let joining = start(Arc::clone(&seen)).await?;
    expected.extend(sender.await??);
    wait_balanced(&[&staying, &joining]).await?;
    wait_all_seen(&seen, &expected, "10 000 messages across a membership change").await?;
    staying.shutdown().await;
    joining.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_broadcasting_members_each_receive_every_message() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, _broker) = cluster(dir.path(), "push-bcast").await?;
    let (seen_a, seen_b): (Seen, Seen) = (Arc::default(), Arc::default());
    let (file_a, file_b) = (dir.path().join("a.offsets"), dir.path().join("b.offsets"));
    let model = MessageModel::Broadcasting;
    let a =
        consumer(&ns, "push-bcast-g", "push-bcast", model, ConsumeFrom::FirstOffset, &seen_a, Some(&file_a)).await?;
    let b =
        consumer(&ns, "push-bcast-g", "push-bcast", model, ConsumeFrom::FirstOffset, &seen_b, Some(&file_b)).await?;
    assert_eq!(a.assigned_queues().len(), 8, "a broadcasting member reads every queue");
    assert_eq!(b.assigned_queues().len(), 8);

    let bodies = send(&ns, "push-bcast", "m", 5_000).await?;
    wait_all_seen(&seen_a, &bodies, "every message at member a").await?;
    wait_all_seen(&seen_b, &bodies, "every message at member b").await?;
    a.shutdown().await;
    b.shutdown().await;
    let text = std::fs::read_to_string(&file_a)?;
    let total: u64 = text.lines().filter_map(|l| l.rsplit('\t').next()?.parse::<u64>().ok()).sum();
    assert_eq!(total, 5_000, "the offsets file holds each queue's end after shutdown:\n{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_member_resumes_from_its_committed_offsets() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, _broker) = cluster(dir.path(), "push-resume").await?;
    let seen: Seen = Arc::default();
    let (model, group) = (MessageModel::Clustering, "push-resume-g");
    let first = consumer(&ns, group, "push-resume", model, ConsumeFrom::FirstOffset, &seen, None).await?;
    let before = send(&ns, "push-resume", "before", 3_000).await?;
    wait_all_seen(&seen, &before, "the first 3 000").await?;
    first.shutdown().await;

    let during = send(&ns, "push-resume", "while-down", 3_000).await?;
    // From the last offset when nothing is committed: only the commits can make it read the backlog.
    let second = consumer(&ns, group, "push-resume", model, ConsumeFrom::LastOffset, &seen, None).await?;
    wait_all_seen(&seen, &during, "the 3 000 sent while no member ran").await?;
    second.shutdown().await;
    let seen = seen.lock();
    let again = before.iter().filter(|b| seen.get(*b).is_some_and(|n| *n > 1)).count();
    assert_eq!(again, 0, "a graceful shutdown commits everything it consumed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_the_listener_failed_is_delivered_again_and_never_skipped() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, _broker) = cluster(dir.path(), "push-retry").await?;
    let attempts: Seen = Arc::default();
    let succeeded: Seen = Arc::default();
    let panics = Arc::new(AtomicUsize::new(0));
    let listener = {
        let (attempts, succeeded, panics) = (Arc::clone(&attempts), Arc::clone(&succeeded), Arc::clone(&panics));
        move |m: &ReceivedMessage| -> comet_client::ListenerResult {
            let body = String::from_utf8_lossy(&m.body).into_owned();
            let n: usize = body.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0);
            let attempt = {
                let mut attempts = attempts.lock();
                let a = attempts.entry(body.clone()).or_default();
                *a += 1;
                *a
            };
            if attempt == 1 && n.is_multiple_of(10) {
                return Err(format!("first attempt of {body} fails").into());
            }
            if attempt == 1 && n % 10 == 5 {
                panics.fetch_add(1, Ordering::SeqCst);
                panic!("first attempt of {body} panics");
            }
            *succeeded.lock().entry(body).or_default() += 1;
            Ok(())
        }
    };
    let consumer = PushConsumer::builder(vec![ns.addr()], "push-retry-g")
        .subscribe("push-retry", "*")
        .consume_from(ConsumeFrom::FirstOffset)
        .threads(2)
        .configure(|c| {
            c.nameserver_client = Some(fast_client_config(vec![ns.addr()]));
            c.rebalance_interval = Duration::from_millis(200);
            c.commit_interval = Duration::from_millis(200);
            c.pull_wait = Duration::from_millis(500);
            c.retry_backoff = Duration::from_millis(100);
        })
        .listener(listener)
        .start()
        .await?;
    let bodies = send(&ns, "push-retry", "m", 1_000).await?;
    wait_all_seen(&succeeded, &bodies, "every message succeeded eventually").await?;
    consumer.shutdown().await;
    let attempts = attempts.lock();
    for (i, body) in bodies.iter().enumerate() {
        let expected = if i % 10 == 0 || i % 10 == 5 { 2 } else { 1 };
        assert_eq!(attempts.get(body).copied(), Some(expected), "{body}");
    }
    assert_eq!(panics.load(Ordering::SeqCst), 100);
    Ok(())
}
