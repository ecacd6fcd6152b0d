//! The Rust SDK (comet-client) against real processes: producer → NameServer route → broker → pull consumer,
//! sends on cached routes while the NameServer is down, fail-over away from a killed broker, both data-path
//! transports (remoting and gRPC on one port) and bad input on that port, and the `comet send` / `comet consume`
//! commands.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use comet_client::{
    Message, MessageQueue, Producer, ProducerConfig, PullConsumer, PullConsumerConfig, PullStatus, Transport,
};
use comet_proto::comet::v1 as pb;
use comet_tests::harness::broker_process::{BrokerOptions, BrokerProcess};
use comet_tests::harness::nameserver::{NameServer, fast_client_config};
use comet_tests::harness::wait_until;

/// A NameServer and one broker registered with it, each in its own directory under `dir`.
async fn cluster(dir: &Path) -> anyhow::Result<(NameServer, BrokerProcess)> {
    let ns_dir = dir.join("ns");
    std::fs::create_dir_all(&ns_dir)?;
    let ns = NameServer::memory(&ns_dir, "").await?;
    let broker_dir = dir.join("broker-a");
    std::fs::create_dir_all(&broker_dir)?;
    let broker =
        BrokerProcess::start(&broker_dir, &BrokerOptions { nameservers: vec![ns.addr()], ..Default::default() })
            .await?;
    // The broker serves before its first registration lands; producers of new topics need it in the cluster info.
    let ns_client = ns.client()?;
    wait_until("broker registered", Duration::from_secs(10), || async {
        ns_client.cluster_info().await.is_ok_and(|c| c.clusters.iter().any(|c| !c.brokers.is_empty()))
    })
    .await?;
    Ok((ns, broker))
}

/// Creates `topic` with `queues` queues on `broker` and waits until the NameServer routes it to `brokers` broker
/// names.
async fn create_topic(
    ns: &NameServer,
    broker: &BrokerProcess,
    topic: &str,
    queues: u32,
    brokers: usize,
) -> anyhow::Result<()> {
    let config =
        pb::TopicConfig { name: topic.into(), read_queue_nums: queues, write_queue_nums: queues, ..Default::default() };
    broker.client().await?.create_topic(pb::CreateTopicRequest { topic: Some(config) }).await?;
    let ns_client = ns.client()?;
    wait_until(&format!("route of {topic} on {brokers} broker(s)"), Duration::from_secs(10), || async {
        ns_client.query_route(topic).await.is_ok_and(|r| r.queues.len() == brokers)
    })
    .await
}

fn producer(ns: &NameServer) -> anyhow::Result<Producer> {
    producer_refreshing_every(ns, Duration::from_secs(30))
}

fn producer_refreshing_every(ns: &NameServer, route_refresh: Duration) -> anyhow::Result<Producer> {
    producer_with(ns, route_refresh, Transport::default())
}

fn producer_with(ns: &NameServer, route_refresh: Duration, transport: Transport) -> anyhow::Result<Producer> {
    let mut config = ProducerConfig::new(vec![ns.addr()], "test-producer");
    config.nameserver_client = Some(fast_client_config(vec![ns.addr()]));
    config.route_refresh = route_refresh;
    config.transport = transport;
    Ok(Producer::new(config)?)
}

fn consumer(ns: &NameServer, group: &str) -> anyhow::Result<PullConsumer> {
    consumer_over(ns, group, Transport::default())
}

fn consumer_over(ns: &NameServer, group: &str, transport: Transport) -> anyhow::Result<PullConsumer> {
    let mut config = PullConsumerConfig::new(vec![ns.addr()], group);
    config.nameserver_client = Some(fast_client_config(vec![ns.addr()]));
    config.route_refresh = Duration::from_millis(20);
    config.transport = transport;
    Ok(PullConsumer::new(config)?)
}

/// Reads `queue` from offset 0 until `expected` messages came back (long polling, so messages acknowledged but
/// not yet dispatched arrive as soon as they are); returns (offset, body) in the order received.
async fn drain(consumer: &PullConsumer, queue: &MessageQueue, expected: usize) -> anyhow::Result<Vec<(u64, String)>> {
    let mut out = Vec::new();
    let mut offset = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while out.len() < expected {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{queue}: only {} of {expected} pulled", out.len());
        let result = consumer.pull(queue, offset, 100, Duration::from_millis(500)).await?;
        for m in result.messages {
            out.push((m.queue_offset, String::from_utf8(m.body.to_vec())?));
        }
        offset = result.next_offset;
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_message_sent_through_the_route_is_pulled_in_order_per_queue_none_lost_none_invented()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, broker) = cluster(dir.path()).await?;
    create_topic(&ns, &broker, "sdk-orders", 8, 1).await?;
    let producer = producer(&ns)?;

    // 1 000 awaited sends, 960 sent as async futures, and 4 batches of 10: 2 000 messages.
    let mut sent: HashMap<u32, BTreeMap<u64, String>> = HashMap::new();
    let mut record = |r: &comet_client::SendResult, body: String| {
        let previous = sent.entry(r.queue.queue_id).or_default().insert(r.queue_offset, body);
        assert!(previous.is_none(), "two acknowledgements for {}:{}", r.queue, r.queue_offset);
    };
    for i in 0..1000 {
        let body = format!("sync-{i}");
        let message = Message::new("sdk-orders", body.clone()).with_tags("T").with_key(format!("k{i}"));
        let result = producer.send(message).await?;
        assert_eq!(result.queue.broker_name, "broker-a");
        record(&result, body);
    }
    let handles: Vec<_> = (0..960)
        .map(|i| {
            let body = format!("async-{i}");
            (body.clone(), producer.send_async(Message::new("sdk-orders", body).with_property("n", i.to_string())))
        })
        .collect();
    for (body, handle) in handles {
        record(&handle.await??, body);
    }
    for b in 0..4 {
        let batch: Vec<Message> = (0..10).map(|i| Message::new("sdk-orders", format!("batch-{b}-{i}"))).collect();
        let results = producer.send_batch(batch).await?;
        assert_eq!(results.len(), 10);
        assert!(results.iter().all(|r| r.queue == results[0].queue), "a batch goes to one queue");
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r.queue_offset, results[0].queue_offset + i as u64, "a batch is stored contiguously");
            record(r, format!("batch-{b}-{i}"));
        }
    }
    assert_eq!(sent.values().map(BTreeMap::len).sum::<usize>(), 2000);
    assert_eq!(sent.len(), 8, "round robin used every queue");
    assert!(
        sent.values().all(|q| q.len() >= 200),
        "round robin spreads evenly: {:?}",
        sent.values().map(BTreeMap::len).collect::<Vec<_>>()
    );

    let consumer = consumer(&ns, "sdk-readers")?;
    let queues = consumer.queues("sdk-orders").await?;
    assert_eq!(queues.len(), 8);
    for queue in &queues {
        let expected = sent.get(&queue.queue_id).cloned().unwrap_or_default();
        let pulled = drain(&consumer, queue, expected.len()).await?;
        let expected: Vec<(u64, String)> = expected.into_iter().collect();
        assert_eq!(pulled, expected, "{queue}: exactly the acknowledged messages, in offset order from 0");
        // Nothing more than what was acknowledged.
        let rest = consumer.pull(queue, pulled.len() as u64, 100, Duration::ZERO).await?;
        assert_eq!(rest.status, PullStatus::NoNewMessage, "{queue}: no invented message");
        consumer.commit_offset(queue, pulled.len() as u64).await?;
        assert_eq!(consumer.query_offset(queue).await?, Some(pulled.len() as u64));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn producer_and_pull_consumer_keep_working_on_cached_routes_while_the_nameserver_is_down() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut ns, broker) = cluster(dir.path()).await?;
    create_topic(&ns, &broker, "sdk-cached", 4, 1).await?;
    // Routes are due for refresh every 20 ms, so the 200 sends below keep asking the dead NameServer (in the
    // background) and must go on with the cached route.
    let producer = producer_refreshing_every(&ns, Duration::from_millis(20))?;
    let consumer = consumer(&ns, "sdk-cached-readers")?;
    producer.send(Message::new("sdk-cached", "before")).await?;
    let queues = consumer.queues("sdk-cached").await?;

    ns.kill();
    let mut total = 1;
    for i in 0..200 {
        producer.send(Message::new("sdk-cached", format!("during-{i}"))).await?;
        total += 1;
    }
    assert_eq!(consumer.queues("sdk-cached").await?, queues, "the cached route still lists the queues");
    let mut pulled = 0;
    for queue in &queues {
        let (_, max) = consumer.queue_offsets(queue).await?;
        pulled += drain(&consumer, queue, usize::try_from(max)?).await?.len();
    }
    assert_eq!(pulled, total, "every message sent with the NameServer down is readable");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_broker_is_avoided_and_sends_are_retried_on_the_other_broker() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, mut broker_a) = cluster(dir.path()).await?;
    let b_dir = dir.path().join("broker-b");
    std::fs::create_dir_all(&b_dir)?;
    let options = BrokerOptions {
        nameservers: vec![ns.addr()],
        broker_extra: "  broker-name: broker-b\n".into(),
        ..Default::default()
    };
    let broker_b = BrokerProcess::start(&b_dir, &options).await?;
    create_topic(&ns, &broker_a, "sdk-failover", 4, 1).await?;
    create_topic(&ns, &broker_b, "sdk-failover", 4, 2).await?;
    let producer = producer(&ns)?;

    let mut before: HashMap<String, usize> = HashMap::new();
    for i in 0..16 {
        let result = producer.send(Message::new("sdk-failover", format!("before-{i}"))).await?;
        *before.entry(result.queue.broker_name).or_default() += 1;
    }
    assert_eq!(before.len(), 2, "both brokers take sends: {before:?}");

    // The NameServer still routes to broker-a (it expires silent brokers after 120 s): the producer must notice.
    broker_a.kill();
    for i in 0..100 {
        let result = producer.send(Message::new("sdk-failover", format!("after-{i}"))).await?;
        assert_eq!(result.queue.broker_name, "broker-b", "send {i} went to the killed broker");
    }
    let route = ns.client()?.query_route("sdk-failover").await?;
    assert_eq!(route.queues.len(), 2, "the route still names the dead broker, so the producer avoided it itself");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_topic_no_broker_hosts_yet_is_auto_created_by_the_first_send_and_then_routed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, _broker) = cluster(dir.path()).await?;
    let producer = producer(&ns)?;
    let first = producer.send(Message::new("sdk-fresh", "first")).await?;
    assert_eq!(first.queue.broker_name, "broker-a");
    let ns_client = ns.client()?;
    wait_until("route of the auto-created topic", Duration::from_secs(10), || async {
        ns_client.query_route("sdk-fresh").await.is_ok()
    })
    .await?;
    let mut queues = std::collections::BTreeSet::new();
    for i in 0..16 {
        queues.insert(producer.send(Message::new("sdk-fresh", format!("m{i}"))).await?.queue.queue_id);
    }
    assert_eq!(queues.len(), 8, "round robin over the default 8 queues once routed: {queues:?}");

    // With auto-creation off the broker's refusal is a permanent error naming the broker.
    let off_dir = dir.path().join("off");
    std::fs::create_dir_all(&off_dir)?;
    let ns_off = NameServer::memory(&off_dir, "").await?;
    let options = BrokerOptions { nameservers: vec![ns_off.addr()], no_auto_create: true, ..Default::default() };
    let _strict = BrokerProcess::start(&off_dir, &options).await?;
    let ns_off_client = ns_off.client()?;
    wait_until("strict broker registered", Duration::from_secs(10), || async {
        ns_off_client.cluster_info().await.is_ok_and(|c| !c.clusters.is_empty())
    })
    .await?;
    let err = producer_refreshing_every(&ns_off, Duration::from_secs(30))?
        .send(Message::new("sdk-unknown", "x"))
        .await
        .expect_err("unknown topic with auto-create off");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.broker().is_some(), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_producer_heartbeats_to_the_brokers_it_has_routes_to_until_it_is_dropped() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, broker) = cluster(dir.path()).await?;
    create_topic(&ns, &broker, "sdk-heartbeat", 2, 1).await?;
    let mut config = ProducerConfig::new(vec![ns.addr()], "hb-producer");
    config.nameserver_client = Some(fast_client_config(vec![ns.addr()]));
    config.heartbeat_interval = Duration::from_millis(200);
    let producer = Producer::new(config)?;
    assert_eq!(producer.heartbeat().await?, 0, "no route yet: no broker to heartbeat to");
    producer.send(Message::new("sdk-heartbeat", "x")).await?;
    assert_eq!(producer.heartbeat().await?, 1, "the broker of the routed topic accepted the heartbeat");

    // The broker logs every heartbeat it accepts (debug level in the harness): the periodic ones arrive too.
    let id = producer.client_id().to_owned();
    let beats = |log: &str| {
        log.lines().filter(|l| l.contains("client heartbeat") && l.contains(&id) && l.contains("hb-producer")).count()
    };
    wait_until("periodic producer heartbeats", Duration::from_secs(10), || async { beats(&broker.log()) >= 4 }).await?;
    drop(producer);
    // A beat already on its way when the producer was dropped may still land (late, on a loaded machine); none
    // is sent after: the count settles, then stays.
    let mut after_drop = beats(&broker.log());
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let now = beats(&broker.log());
        if now == after_drop {
            break;
        }
        after_drop = now;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(beats(&broker.log()), after_drop, "a dropped producer stops heartbeating");

    // A refused heartbeat is the broker's permanent error, not a silent success.
    let mut bad = ProducerConfig::new(vec![ns.addr()], "bad group!");
    bad.nameserver_client = Some(fast_client_config(vec![ns.addr()]));
    let bad = Producer::new(bad)?;
    assert!(bad.send(Message::new("sdk-heartbeat", "x")).await.is_err(), "invalid producer group");
    let err = bad.heartbeat().await.expect_err("invalid producer group");
    assert!(!err.is_retryable() && err.broker().is_some(), "{err}");
    Ok(())
}

/// Runs the `comet` binary with `args` against the NameServer, with `stdin` as input; fails on a non-zero exit
/// or after 30 s.
async fn comet(ns: &NameServer, args: &[&str], stdin: &[u8]) -> anyhow::Result<String> {
    use tokio::io::AsyncWriteExt;
    let bin = tokio::task::spawn_blocking(|| comet_tests::harness::binary::cargo_bin("comet", "comet")).await??;
    let mut child = tokio::process::Command::new(bin)
        .arg("--namesrv")
        .arg(ns.addr())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin).await?;
    }
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await??;
    let stdout = String::from_utf8(output.stdout)?;
    anyhow::ensure!(
        output.status.success(),
        "comet {args:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

#[tokio::test(flavor = "multi_thread")]
async fn comet_send_and_comet_consume_round_trip_through_the_real_binaries() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, broker) = cluster(dir.path()).await?;
    create_topic(&ns, &broker, "cli-topic", 4, 1).await?;

    let sent =
        comet(&ns, &["send", "cli-topic", "hello", "--count", "3", "--tags", "T", "--keys", "k1,k2"], b"").await?;
    assert_eq!(sent.lines().filter(|l| l.starts_with("sent ")).count(), 3, "{sent}");
    let piped = comet(&ns, &["send", "cli-topic", "-", "--json"], b"from stdin").await?;
    assert!(piped.contains("\"queue_offset\""), "{piped}");

    let consumed =
        comet(&ns, &["consume", "cli-topic", "--group", "cli-readers", "--from", "begin", "--count", "4"], b"").await?;
    let mut bodies: Vec<&str> = consumed.lines().collect();
    bodies.sort_unstable();
    assert_eq!(bodies, ["from stdin", "hello", "hello", "hello"]);

    // The consumer committed what it printed: the group's offsets add up to the four messages.
    let reader = consumer(&ns, "cli-readers")?;
    let mut committed = 0;
    for queue in reader.queues("cli-topic").await? {
        committed += reader.query_offset(&queue).await?.unwrap_or(0);
    }
    assert_eq!(committed, 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn comet_consume_writes_each_body_to_a_file_and_a_failed_write_stops_the_run_without_consuming_it()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, broker) = cluster(dir.path()).await?;
    // One queue, so the run's order is the send order.
    create_topic(&ns, &broker, "cli-files", 1, 1).await?;
    let producer = producer(&ns)?;
    // Bodies that are not UTF-8 (and hold a newline): files must hold them byte for byte.
    let mut sent = Vec::new();
    for i in 0..8u8 {
        let body = vec![0xff, 0x00, i, b'\n', 0x80];
        sent.push((producer.send(Message::new("cli-files", body.clone())).await?, body));
    }
    let out = dir.path().join("bodies");
    let out_arg = out.display().to_string();
    let args = ["consume", "cli-files", "--group", "cli-files-g", "--output-dir", &out_arg];

    // The file of one message cannot be created (a directory has its name): the run fails naming it, and that
    // message is not consumed.
    let (blocked, _) = &sent[5];
    std::fs::create_dir_all(out.join(&blocked.message_id))?;
    let first = ["--from", "begin", "--count", "8", "--json"];
    let failed = comet(&ns, &[&args[..], &first[..]].concat(), b"").await.expect_err("the write fails");
    assert!(failed.to_string().contains(&format!("writing the body of {}", blocked.message_id)), "{failed}");
    let reader = consumer(&ns, "cli-files-g")?;
    assert_eq!(reader.query_offset(&blocked.queue).await?, Some(blocked.queue_offset), "committed up to it");
    for line in failed.to_string().lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        assert!(v["body"].is_null() && v["file"].as_str().is_some_and(|f| f.starts_with(&out_arg)), "{line}");
    }

    // What was written was committed, nothing else: the next run writes exactly the rest. Then every body is in
    // the file named by its id, byte for byte, and nothing else is in the directory.
    std::fs::remove_dir(out.join(&blocked.message_id))?;
    assert_eq!(std::fs::read_dir(&out)?.count(), 5, "the five messages before it, no partial file");
    let printed = comet(&ns, &[&args[..], &["--from", "committed", "--count", "3"][..]].concat(), b"").await?;
    let expected: Vec<String> = sent[5..].iter().map(|(r, _)| out.join(&r.message_id).display().to_string()).collect();
    assert_eq!(printed.lines().collect::<Vec<_>>(), expected, "paths printed in order");
    let mut names: Vec<String> = std::fs::read_dir(&out)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<anyhow::Result<_>>()?;
    names.sort();
    let mut ids: Vec<String> = sent.iter().map(|(r, _)| r.message_id.clone()).collect();
    ids.sort();
    assert_eq!(names, ids);
    for (result, body) in &sent {
        assert_eq!(&std::fs::read(out.join(&result.message_id))?, body, "{}", result.message_id);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn comet_consume_clustering_members_share_the_queues_and_a_count_stop_leaves_the_rest_unretried()
-> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir()?;
    let (ns, broker) = cluster(dir.path()).await?;
    create_topic(&ns, &broker, "cli-cl", 4, 1).await?;
    let producer = producer(&ns)?;
    let bin = tokio::task::spawn_blocking(|| comet_tests::harness::binary::cargo_bin("comet", "comet")).await??;

    // Two members of one group, running until interrupted; messages are sent once both have joined.
    let printed = Arc::new(parking_lot::Mutex::new(Vec::<(usize, String)>::new()));
    // Each member's latest "reading N queue(s): ..." notice (stderr).
    let reading = Arc::new(parking_lot::Mutex::new([None::<String>, None]));
    let mut members = Vec::new();
    for member in 0..2 {
        let mut child = tokio::process::Command::new(&bin)
            .args(["--namesrv", &ns.addr(), "consume", "cli-cl", "--group", "cli-cl-g", "--clustering"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow::anyhow!("no stderr"))?;
        let printed = Arc::clone(&printed);
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                printed.lock().push((member, line));
            }
        });
        let reading = Arc::clone(&reading);
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("reading ") {
                    reading.lock()[member] = Some(line);
                }
            }
        });
        members.push(child);
    }
    let reader = consumer(&ns, "cli-cl-g")?;
    let admin = broker.client().await?;
    wait_until("both members registered", Duration::from_secs(20), || {
        let mut admin = admin.clone();
        async move {
            let request = pb::GetConsumerListRequest { group: "cli-cl-g".into() };
            admin.get_consumer_list(request).await.is_ok_and(|r| r.into_inner().client_ids.len() == 2)
        }
    })
    .await?;
    // Both members see each other at their next re-balance and split the topic's 4 queues 2 + 2 (each says so;
    // the group's retry queue goes to one of them).
    let topic_queues = |line: &str| line.split_whitespace().filter(|q| q.starts_with("cli-cl@")).count();
    let split = wait_until("the queues split 2 + 2", Duration::from_secs(30), || {
        let split = reading.lock().iter().all(|r| r.as_deref().is_some_and(|r| topic_queues(r) == 2));
        async move { split }
    })
    .await;
    anyhow::ensure!(split.is_ok(), "the members read {:?}", reading.lock());
    let sent: Vec<String> = (0..40).map(|i| format!("c-{i}")).collect();
    for body in &sent {
        producer.send(Message::new("cli-cl", body.clone())).await?;
    }
    wait_until("40 messages printed", Duration::from_secs(20), || {
        let n = printed.lock().len();
        async move { n >= 40 }
    })
    .await?;
    for child in &mut members {
        let pid = child.id().ok_or_else(|| anyhow::anyhow!("member exited early"))?;
        std::process::Command::new("kill").args(["-INT", &pid.to_string()]).status()?;
    }
    for mut child in members {
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await??;
        anyhow::ensure!(status.success(), "member exit: {status}");
    }
    let printed = printed.lock().clone();
    let mut bodies: Vec<String> = printed.iter().map(|(_, b)| b.clone()).collect();
    bodies.sort();
    let mut expected = sent.clone();
    expected.sort();
    assert_eq!(bodies, expected, "every message printed exactly once across the group");
    for member in 0..2 {
        let n = printed.iter().filter(|(m, _)| *m == member).count();
        assert_eq!(n, 20, "member {member} printed the messages of its two queues");
    }

    // A --count stop: exactly that many printed and committed; the messages beyond it stay in their queues
    // (nothing sent back to the retry topic) for the next run, which prints exactly the rest.
    let more: Vec<String> = (0..12).map(|i| format!("m-{i}")).collect();
    for body in &more {
        producer.send(Message::new("cli-cl", body.clone())).await?;
    }
    let run = |count: &str| {
        let count = count.to_owned();
        let ns = &ns;
        async move {
            let args = ["consume", "cli-cl", "--group", "cli-cl-g", "--clustering", "--count", &count];
            comet(ns, &args, b"").await
        }
    };
    let first: Vec<String> = run("5").await?.lines().map(str::to_owned).collect();
    assert_eq!(first.len(), 5, "{first:?}");
    let mut committed = 0;
    for q in reader.queues("cli-cl").await? {
        committed += reader.query_offset(&q).await?.unwrap_or(0);
    }
    assert_eq!(committed, 40 + 5);
    for q in reader.queues("%RETRY%cli-cl-g").await.unwrap_or_default() {
        assert_eq!(reader.queue_offsets(&q).await?.1, 0, "nothing was sent back to {q}");
    }
    let second: Vec<String> = run("7").await?.lines().map(str::to_owned).collect();
    let mut all: Vec<String> = first.into_iter().chain(second).collect();
    all.sort();
    let mut expected = more.clone();
    expected.sort();
    assert_eq!(all, expected, "the two runs printed the 12 new messages once between them");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_comet_consume_broadcast_runs_each_print_every_message_and_resume_from_their_offsets_file()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, broker) = cluster(dir.path()).await?;
    create_topic(&ns, &broker, "cli-bcast", 4, 1).await?;
    let producer = producer(&ns)?;
    let first: Vec<String> = (0..40).map(|i| format!("b-{i}")).collect();
    for body in &first {
        producer.send(Message::new("cli-bcast", body.clone())).await?;
    }

    let (file_a, file_b) = (dir.path().join("a.offsets"), dir.path().join("b.offsets"));
    let run = |file: &Path, count: &str| {
        let file = file.display().to_string();
        let count = count.to_owned();
        let ns = &ns;
        async move {
            let args = ["consume", "cli-bcast", "--group", "cli-bcast-g", "--broadcast", "--from", "begin"];
            let args: Vec<&str> = args.iter().copied().chain(["--count", &count, "--offset-file", &file]).collect();
            let out = comet(ns, &args, b"").await?;
            let mut bodies: Vec<String> = out.lines().map(str::to_owned).collect();
            bodies.sort();
            anyhow::Ok(bodies)
        }
    };
    // Two members of one group at the same time: each prints all 40 (clustering would split them).
    let (a, b) = tokio::join!(run(&file_a, "40"), run(&file_b, "40"));
    let mut expected = first.clone();
    expected.sort();
    assert_eq!(a?, expected, "member a");
    assert_eq!(b?, expected, "member b");
    let offsets = std::fs::read_to_string(&file_a)?;
    let total: u64 = offsets.lines().filter_map(|l| l.rsplit('\t').next()?.parse::<u64>().ok()).sum();
    assert_eq!(total, 40, "the offsets file holds each queue's end:\n{offsets}");

    // A later run resumes from its file: only what was sent since, even with --from begin.
    let later: Vec<String> = (0..6).map(|i| format!("later-{i}")).collect();
    for body in &later {
        producer.send(Message::new("cli-bcast", body.clone())).await?;
    }
    let mut expected = later.clone();
    expected.sort();
    assert_eq!(run(&file_a, "6").await?, expected, "member a resumed from its offsets file");
    // Nothing is committed on the broker for a broadcasting group.
    let reader = consumer(&ns, "cli-bcast-g")?;
    for queue in reader.queues("cli-bcast").await? {
        assert_eq!(reader.query_offset(&queue).await?, None, "{queue}");
    }

    // A group that forbids broadcasting: one line naming the setting, a failing exit.
    let group = pb::GroupConfig {
        name: "cli-no-bcast".into(),
        consume_enable: true,
        consume_broadcast_enable: false,
        retry_max_times: 16,
        retry_delays_millis: Vec::new(),
        fifo: false,
    };
    broker.client().await?.create_group(pb::CreateGroupRequest { group: Some(group) }).await?;
    let file = dir.path().join("refused.offsets").display().to_string();
    let args = ["consume", "cli-bcast", "--group", "cli-no-bcast", "--broadcast", "--count", "1", "--offset-file"];
    let refused = comet(&ns, &[&args[..], &[file.as_str()]].concat(), b"").await.expect_err("broadcasting refused");
    let stderr = refused.to_string().split("stderr:\n").nth(1).unwrap_or_default().trim().to_owned();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: joining group cli-no-bcast") && stderr.contains("consume_broadcast_enable"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn both_transports_carry_the_same_messages_and_report_a_refusal_the_same_way() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, broker) = cluster(dir.path()).await?;
    create_topic(&ns, &broker, "sdk-wire", 4, 1).await?;
    let transports = [Transport::Remoting, Transport::Grpc];

    // Each transport sends singles and a batch; everything lands in one offset space.
    let mut sent: HashMap<u32, BTreeMap<u64, String>> = HashMap::new();
    for transport in transports {
        let producer = producer_with(&ns, Duration::from_secs(30), transport)?;
        for i in 0..100 {
            let body = format!("{transport:?}-{i}");
            let r = producer.send(Message::new("sdk-wire", body.clone()).with_key(format!("k{i}"))).await?;
            sent.entry(r.queue.queue_id).or_default().insert(r.queue_offset, body);
        }
        let batch: Vec<Message> = (0..20).map(|i| Message::new("sdk-wire", format!("{transport:?}-b{i}"))).collect();
        for (i, r) in producer.send_batch(batch).await?.iter().enumerate() {
            sent.entry(r.queue.queue_id).or_default().insert(r.queue_offset, format!("{transport:?}-b{i}"));
        }
    }
    assert_eq!(sent.values().map(BTreeMap::len).sum::<usize>(), 240, "every acknowledgement names its own slot");

    // Each transport reads back exactly what was acknowledged, in offset order.
    for transport in transports {
        let consumer = consumer_over(&ns, "sdk-wire-readers", transport)?;
        for queue in consumer.queues("sdk-wire").await? {
            let expected: Vec<(u64, String)> =
                sent.get(&queue.queue_id).cloned().unwrap_or_default().into_iter().collect();
            let pulled = drain(&consumer, &queue, expected.len()).await?;
            assert_eq!(pulled, expected, "{transport:?} {queue}: the acknowledged messages, nothing else");
            let rest = consumer.pull(&queue, pulled.len() as u64, 100, Duration::ZERO).await?;
            assert_eq!(rest.status, PullStatus::NoNewMessage, "{transport:?} {queue}: no invented message");
        }
    }

    // A body over the broker's max-message-size (4 MiB) is refused the same way on both, and stores nothing.
    let mut refusals = Vec::new();
    for transport in transports {
        let producer = producer_with(&ns, Duration::from_secs(30), transport)?;
        let err = producer.send(Message::new("sdk-wire", vec![b'x'; 5 << 20])).await.expect_err("oversized body");
        refusals.push((err.code(), err.kind(), err.to_string()));
    }
    assert_eq!(refusals[0].0, tonic::Code::InvalidArgument, "{refusals:?}");
    assert_eq!(refusals[0].0, refusals[1].0, "same code on both transports: {refusals:?}");
    assert_eq!(refusals[0].1, refusals[1].1, "same kind on both transports: {refusals:?}");
    let consumer = consumer(&ns, "sdk-wire-after")?;
    let mut stored = 0;
    for queue in consumer.queues("sdk-wire").await? {
        stored += consumer.queue_offsets(&queue).await?.1;
    }
    assert_eq!(stored, 240, "refused sends stored nothing");
    Ok(())
}

/// Reads from `stream` until the peer closes it; fails if it is still open after `within`.
async fn closed_by_peer(stream: &mut tokio::net::TcpStream, within: Duration) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("the broker kept a bad connection open for {within:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shared_port_answers_bad_data_path_requests_and_drops_bad_connections_without_disturbing_others()
-> anyhow::Result<()> {
    use comet_proto::remoting as codes;
    use comet_remoting::{ClientConfig, Command, code};
    use prost::Message as _;
    use tokio::io::AsyncWriteExt;

    let dir = tempfile::tempdir()?;
    let (ns, broker) = cluster(dir.path()).await?;
    create_topic(&ns, &broker, "sdk-bad", 1, 1).await?;
    let addr = broker.addr();

    // A connection that never speaks is sorted by nobody and holds up nobody.
    let _silent = tokio::net::TcpStream::connect(&addr).await?;

    let remoting = comet_remoting::Client::new(ClientConfig::default());
    let call = |code: i32, body: Vec<u8>| {
        let (remoting, addr) = (&remoting, addr.clone());
        async move { remoting.invoke(&addr, Command::request(code, body), Duration::from_secs(5)).await }
    };
    let invalid = codes::STATUS_BASE + tonic::Code::InvalidArgument as i32;

    let answer = call(codes::SEND_MESSAGE, b"\xff\xff not protobuf".to_vec()).await?;
    assert_eq!(answer.code, invalid, "undecodable body: {:?}", answer.remark);
    assert!(answer.remark.as_deref().is_some_and(|r| r.contains("protobuf")), "{:?}", answer.remark);

    let answer = call(4242, Vec::new()).await?;
    assert_eq!(answer.code, code::REQUEST_CODE_NOT_SUPPORTED, "unknown request code");

    let nameless = pb::SendMessageRequest {
        topic: String::new(),
        messages: vec![pb::OutgoingMessage { body: b"x".to_vec().into(), ..Default::default() }],
        ..Default::default()
    };
    let answer = call(codes::SEND_MESSAGE, nameless.encode_to_vec()).await?;
    assert_eq!(answer.code, invalid, "a send without a topic: {:?}", answer.remark);

    let pull = pb::PullMessageRequest {
        group: "sdk-bad-g".into(),
        topic: "sdk-bad".into(),
        queue_id: 7,
        max_count: 10,
        ..Default::default()
    };
    let answer = call(codes::PULL_MESSAGE, pull.encode_to_vec()).await?;
    let grpc = broker.client().await?.pull_message(pull.clone()).await.expect_err("queue 7 of a 1-queue topic");
    assert_eq!(answer.code, codes::STATUS_BASE + grpc.code() as i32, "{:?} vs {grpc:?}", answer.remark);
    assert_eq!(answer.remark.as_deref(), Some(grpc.message()), "the same message as gRPC");

    // HTTP/1 on the gRPC port goes to tonic, which refuses it; a frame longer than the limit (64 MiB) is refused
    // by the remoting channel. Both close that connection only.
    let mut http1 = tokio::net::TcpStream::connect(&addr).await?;
    http1.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    closed_by_peer(&mut http1, Duration::from_secs(10)).await?;
    let mut huge = tokio::net::TcpStream::connect(&addr).await?;
    huge.write_all(&[0x10, 0, 0, 0, 0, 0, 0, 0]).await?;
    closed_by_peer(&mut huge, Duration::from_secs(10)).await?;

    // Both protocols still serve, on new connections and on the old remoting one.
    let good = pb::SendMessageRequest {
        topic: "sdk-bad".into(),
        messages: vec![pb::OutgoingMessage { body: b"after".to_vec().into(), ..Default::default() }],
        ..Default::default()
    };
    let answer = call(codes::SEND_MESSAGE, good.encode_to_vec()).await?;
    assert_eq!(answer.code, code::SUCCESS, "{:?}", answer.remark);
    let stored = pb::SendMessageResponse::decode(answer.body)?;
    assert_eq!(stored.results.len(), 1);
    assert_eq!(stored.results[0].queue_offset, 0, "the refused requests stored nothing");
    let producer = producer(&ns)?;
    producer.send(Message::new("sdk-bad", "sdk")).await?;
    let consumer = consumer_over(&ns, "sdk-bad-g", Transport::Grpc)?;
    let queue = consumer.queues("sdk-bad").await?.remove(0);
    let bodies: Vec<String> = drain(&consumer, &queue, 2).await?.into_iter().map(|(_, b)| b).collect();
    assert_eq!(bodies, ["after", "sdk"]);
    Ok(())
}
