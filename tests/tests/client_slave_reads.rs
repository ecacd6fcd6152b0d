//! The Rust SDK reading from slaves, against real processes: a NameServer, a master (broker id 0) replicating to a
//! slave (id 1) of the same broker group. A pull consumer keeps reading from the slave after the master is killed
//! (no message lost, none skipped, offsets on the slave), a running push consumer moves to the slave when its
//! master is killed and one started while the master is down consumes everything from the slave, the producer
//! never sends to the slave, and `comet consume --read-from slave` reads from the slave while the master is up.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use comet_client::{
    ConsumeFrom, Message, MessageQueue, Producer, ProducerConfig, PullConsumer, PullConsumerConfig, PushConsumer,
    ReadPreference,
};
use comet_proto::comet::v1 as pb;
use comet_tests::harness::broker_process::{BrokerOptions, BrokerProcess};
use comet_tests::harness::nameserver::{NameServer, fast_client_config};
use comet_tests::harness::prometheus::http_get;
use comet_tests::harness::wait_until;

const SECRET: &str = "client-slave-reads-secret";

/// A NameServer, a master replicating to a slave (broker group `broker-a`), and `topic` with `queues` queues,
/// once the route lists both members and the slave knows the topic.
async fn replicated(
    dir: &Path,
    topic: &str,
    queues: u32,
) -> anyhow::Result<(NameServer, BrokerProcess, BrokerProcess)> {
    let dir_of = |name: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).map(|()| d)
    };
    let ns = NameServer::memory(&dir_of("ns")?, "").await?;
    let master_options = BrokerOptions {
        nameservers: vec![ns.addr()],
        ha: format!("  listen: 127.0.0.1:0\n  secret: {SECRET}\n"),
        ..Default::default()
    };
    let master = BrokerProcess::start(&dir_of("master")?, &master_options).await?;
    let master_ha = master.ha_addr().context("the master printed no HA address")?;
    let slave_options = BrokerOptions {
        nameservers: vec![ns.addr()],
        broker_extra: "  broker-id: 1\n".into(),
        ha: format!(
            "  master-address: {master_ha}\n  secret: {SECRET}\n  metadata-sync-interval-ms: 200\n  \
             fetch-wait-ms: 500\n"
        ),
        ..Default::default()
    };
    let slave = BrokerProcess::start(&dir_of("slave")?, &slave_options).await?;

    let config =
        pb::TopicConfig { name: topic.into(), read_queue_nums: queues, write_queue_nums: queues, ..Default::default() };
    master.client().await?.create_topic(pb::CreateTopicRequest { topic: Some(config) }).await?;
    let ns_client = ns.client()?;
    wait_until(&format!("route of {topic} with master and slave"), Duration::from_secs(20), || async {
        ns_client.query_route(topic).await.is_ok_and(|r| {
            !r.queues.is_empty()
                && r.brokers.iter().any(|b| b.addresses.contains_key(&0) && b.addresses.contains_key(&1))
        })
    })
    .await?;
    let slave_client = slave.client().await?;
    wait_until("the slave knows the topic", Duration::from_secs(20), || async {
        slave_client.clone().describe_topic(pb::DescribeTopicRequest { topic: topic.into() }).await.is_ok()
    })
    .await?;
    Ok((ns, master, slave))
}

fn producer(ns: &NameServer) -> anyhow::Result<Producer> {
    let mut config = ProducerConfig::new(vec![ns.addr()], "slave-reads-producer");
    config.nameserver_client = Some(fast_client_config(vec![ns.addr()]));
    config.send_timeout = Duration::from_secs(2);
    Ok(Producer::new(config)?)
}

fn consumer(ns: &NameServer, group: &str, preference: ReadPreference) -> anyhow::Result<PullConsumer> {
    let mut config = PullConsumerConfig::new(vec![ns.addr()], group);
    config.nameserver_client = Some(fast_client_config(vec![ns.addr()]));
    config.read_preference = preference;
    config.failover_backoff = Duration::from_secs(1);
    config.request_timeout = Duration::from_secs(2);
    Ok(PullConsumer::new(config)?)
}

/// Sends `count` messages through the SDK; returns queue id -> offset -> body. Every send must land on `master`.
async fn send(
    producer: &Producer,
    topic: &str,
    count: usize,
    master: &BrokerProcess,
) -> anyhow::Result<HashMap<u32, BTreeMap<u64, String>>> {
    let mut sent: HashMap<u32, BTreeMap<u64, String>> = HashMap::new();
    for i in 0..count {
        let body = format!("{topic}-{i}");
        let result = producer.send(Message::new(topic, body.clone())).await?;
        anyhow::ensure!(result.broker_address == master.addr(), "sent to {} (not the master)", result.broker_address);
        sent.entry(result.queue.queue_id).or_default().insert(result.queue_offset, body);
    }
    Ok(sent)
}

/// Waits until every queue of `topic` on the slave ends where it ends on the master.
async fn slave_caught_up(
    master: &BrokerProcess,
    slave: &BrokerProcess,
    topic: &str,
    queues: u32,
) -> anyhow::Result<()> {
    let (master, slave) = (master.client().await?, slave.client().await?);
    wait_until("the slave holds every message of the master", Duration::from_secs(20), || async {
        for queue_id in 0..queues {
            let request = pb::GetQueueOffsetsRequest { topic: topic.into(), queue_id };
            let ends = (
                master.clone().get_queue_offsets(request.clone()).await.map(|r| r.into_inner().max_offset),
                slave.clone().get_queue_offsets(request).await.map(|r| r.into_inner().max_offset),
            );
            if !matches!(ends, (Ok(m), Ok(s)) if m == s) {
                return false;
            }
        }
        true
    })
    .await
}

/// Pulls `queue` from `from` until `to`; every answer must come from broker id `expected_id`.
async fn pull_range(
    consumer: &PullConsumer,
    queue: &MessageQueue,
    from: u64,
    to: u64,
    expected_id: u64,
) -> anyhow::Result<Vec<(u64, String)>> {
    let mut out = Vec::new();
    let mut offset = from;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while offset < to {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{queue}: stuck at {offset} of {to}");
        let max = u32::try_from(to - offset)?.min(50);
        let result = consumer.pull(queue, offset, max, Duration::from_millis(500)).await?;
        anyhow::ensure!(result.broker_id == expected_id, "{queue}: answered by broker id {}", result.broker_id);
        for m in result.messages {
            out.push((m.queue_offset, String::from_utf8(m.body.to_vec())?));
        }
        offset = result.next_offset;
    }
    Ok(out)
}

async fn committed_on(broker: &BrokerProcess, group: &str, topic: &str, queue_id: u32) -> Option<u64> {
    let mut client = broker.client().await.ok()?;
    let request = pb::QueryConsumerOffsetRequest { group: group.into(), topic: topic.into(), queue_id };
    let answer = client.query_consumer_offset(request).await.ok()?.into_inner();
    answer.found.then_some(answer.offset)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_consumer_keeps_reading_from_the_slave_after_the_master_is_killed_and_loses_nothing()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (topic, group) = ("slave-reads", "slave-readers");
    let (ns, mut master, slave) = replicated(dir.path(), topic, 2).await?;
    let producer = producer(&ns)?;
    let sent = send(&producer, topic, 400, &master).await?;
    let consumer = consumer(&ns, group, ReadPreference::Master)?;
    let queues = consumer.queues(topic).await?;
    assert_eq!(queues.len(), 2);

    // The first half of each queue from the master, committed there.
    let mut halves = HashMap::new();
    for queue in &queues {
        let expected = &sent[&queue.queue_id];
        let half = expected.len() as u64 / 2;
        let pulled = pull_range(&consumer, queue, 0, half, 0).await?;
        let want: Vec<(u64, String)> = expected.iter().take(pulled.len()).map(|(o, b)| (*o, b.clone())).collect();
        assert_eq!(pulled, want, "{queue}: the first half from the master");
        consumer.commit_offset(queue, half).await?;
        halves.insert(queue.queue_id, half);
    }
    slave_caught_up(&master, &slave, topic, 2).await?;
    // The master's offsets are copied to the slave (metadata sync every 200 ms here).
    for queue in &queues {
        let half = halves[&queue.queue_id];
        wait_until("the committed offset copied to the slave", Duration::from_secs(20), || async {
            committed_on(&slave, group, topic, queue.queue_id).await == Some(half)
        })
        .await?;
    }

    master.kill();
    for queue in &queues {
        let expected = &sent[&queue.queue_id];
        let (half, end) = (halves[&queue.queue_id], expected.len() as u64);
        let pulled = pull_range(&consumer, queue, half, end, 1).await?;
        let want: Vec<(u64, String)> = expected.range(half..).map(|(o, b)| (*o, b.clone())).collect();
        assert_eq!(pulled, want, "{queue}: the second half from the slave, from our own offset");
        consumer.commit_offset(queue, end).await?;
        assert_eq!(committed_on(&slave, group, topic, queue.queue_id).await, Some(end), "commit on the slave");
        // A consumer that never saw the master fail asks it first, then the slave.
        let fresh = self::consumer(&ns, group, ReadPreference::Master)?;
        assert_eq!(fresh.query_offset(queue).await?, Some(end), "{queue}: start-up look-up falls back to the slave");
    }

    let error = producer.send(Message::new(topic, "after the master died")).await.expect_err("no master");
    assert!(error.is_retryable(), "{error}");
    assert_eq!(error.broker(), Some(master.addr().as_str()), "sends never go to the slave: {error}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_consumer_started_while_the_master_is_down_consumes_everything_from_the_slave() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let topic = "slave-push";
    let (ns, mut master, slave) = replicated(dir.path(), topic, 2).await?;
    let sent = send(&producer(&ns)?, topic, 300, &master).await?;
    slave_caught_up(&master, &slave, topic, 2).await?;
    master.kill();

    let received = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let sink = Arc::clone(&received);
    let fast = fast_client_config(vec![ns.addr()]);
    let consumer = PushConsumer::builder(vec![ns.addr()], "slave-push-readers")
        .subscribe(topic, "*")
        .consume_from(ConsumeFrom::FirstOffset)
        .threads(2)
        .configure(|c| {
            c.failover_backoff = Duration::from_secs(1);
            c.nameserver_client = Some(fast);
            c.commit_interval = Duration::from_millis(200);
        })
        .listener(move |m| {
            sink.lock().push(String::from_utf8_lossy(&m.body).into_owned());
            Ok(())
        })
        .start()
        .await?;
    wait_until("every message consumed from the slave", Duration::from_secs(30), || async {
        received.lock().len() >= 300
    })
    .await?;
    let stats = crate::push_consumer::user_stats(&consumer);
    assert_eq!(stats.len(), 2, "both queues assigned (the slave lists this member)");
    assert!(stats.iter().all(|s| s.broker_address == slave.addr()), "{stats:?}");
    consumer.shutdown().await;

    let mut got = received.lock().clone();
    got.sort();
    let mut want: Vec<String> = sent.values().flat_map(|q| q.values().cloned()).collect();
    want.sort();
    assert_eq!(got, want, "every message exactly once, none invented");
    for queue_id in 0..2 {
        let end = sent[&queue_id].len() as u64;
        assert_eq!(committed_on(&slave, "slave-push-readers", topic, queue_id).await, Some(end));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_push_consumer_moves_to_the_slave_when_the_master_is_killed_and_loses_nothing() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let (topic, group) = ("slave-push-running", "slave-push-running-readers");
    let (ns, mut master, slave) = replicated(dir.path(), topic, 2).await?;
    let producer = producer(&ns)?;

    // The listener blocks while the gate is closed, so with a tiny cache the queues' pulls pause.
    let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let received = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let (gate, sink) = (Arc::clone(&open), Arc::clone(&received));
    let fast = fast_client_config(vec![ns.addr()]);
    let consumer = PushConsumer::builder(vec![ns.addr()], group)
        .subscribe(topic, "*")
        .threads(1)
        .configure(|c| {
            c.failover_backoff = Duration::from_secs(1);
            c.nameserver_client = Some(fast);
            c.commit_interval = Duration::from_millis(200);
            c.max_cached_messages = 10;
            c.pull_batch = 5;
        })
        .listener(move |m| {
            while !gate.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            sink.lock().push(String::from_utf8_lossy(&m.body).into_owned());
            Ok(())
        })
        .start()
        .await?;
    wait_until("both queues assigned", Duration::from_secs(10), || async {
        crate::push_consumer::user_queues(&consumer).len() == 2
    })
    .await?;

    let mut sent = send(&producer, topic, 100, &master).await?;
    wait_until("the first 100 consumed from the master", Duration::from_secs(30), || async {
        received.lock().len() >= 100
    })
    .await?;
    assert!(crate::push_consumer::user_stats(&consumer).iter().all(|s| s.broker_address == master.addr()));

    open.store(false, std::sync::atomic::Ordering::SeqCst);
    for (queue_id, messages) in send(&producer, topic, 200, &master).await? {
        sent.entry(queue_id).or_default().extend(messages);
    }
    slave_caught_up(&master, &slave, topic, 2).await?;
    master.kill();
    open.store(true, std::sync::atomic::Ordering::SeqCst);

    wait_until("all 300 consumed", Duration::from_secs(30), || async { received.lock().len() >= 300 }).await?;
    let stats = crate::push_consumer::user_stats(&consumer);
    assert!(stats.iter().all(|s| s.broker_address == slave.addr()), "read from the slave now: {stats:?}");
    for queue_id in 0..2 {
        let end = sent[&queue_id].keys().next_back().map_or(0, |last| last + 1);
        wait_until("the final offset committed on the slave", Duration::from_secs(10), || async {
            committed_on(&slave, group, topic, queue_id).await == Some(end)
        })
        .await?;
    }
    consumer.shutdown().await;

    let mut got = received.lock().clone();
    got.sort();
    let mut want: Vec<String> = sent.values().flat_map(|q| q.values().cloned()).collect();
    want.sort();
    assert_eq!(got, want, "every message exactly once across the fail-over: none lost, none skipped");
    Ok(())
}

/// `rocketmq_messages_out_total` of `group` on a broker's metrics endpoint (0 when absent).
async fn messages_out(broker: &BrokerProcess, group: &str) -> anyhow::Result<u64> {
    let (_, text) = http_get(broker.metrics_addr(), "/metrics").await?;
    let label = format!("consumer_group=\"{group}\"");
    Ok(text
        .lines()
        .filter(|l| l.starts_with("rocketmq_messages_out_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .map(|v| v as u64)
        .sum())
}

#[tokio::test(flavor = "multi_thread")]
async fn comet_consume_read_from_slave_reads_the_slave_while_the_master_is_up() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let topic = "slave-cli";
    let (ns, master, slave) = replicated(dir.path(), topic, 2).await?;
    let sent = send(&producer(&ns)?, topic, 40, &master).await?;
    slave_caught_up(&master, &slave, topic, 2).await?;

    let bin = tokio::task::spawn_blocking(|| comet_tests::harness::binary::cargo_bin("comet", "comet")).await??;
    let args = ["consume", topic, "--group", "cli-slave", "--from", "begin", "--count", "40", "--read-from", "slave"];
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(bin).arg("--namesrv").arg(ns.addr()).args(args).kill_on_drop(true).output(),
    )
    .await??;
    let stdout = String::from_utf8(output.stdout)?;
    anyhow::ensure!(output.status.success(), "comet consume failed: {}", String::from_utf8_lossy(&output.stderr));
    let mut got: Vec<&str> = stdout.lines().collect();
    got.sort_unstable();
    let mut want: Vec<&str> = sent.values().flat_map(|q| q.values().map(String::as_str)).collect();
    want.sort_unstable();
    assert_eq!(got, want);
    assert_eq!(messages_out(&slave, "cli-slave").await?, 40, "the slave delivered them");
    assert_eq!(messages_out(&master, "cli-slave").await?, 0, "the master delivered nothing");
    Ok(())
}
