//! Ordered messages against a real NameServer and broker: the broker grants a queue lock to one member at a
//! time; with sharding keys over 8 queues and three orderly consumers (one a `comet consume --orderly` child
//! process), per-key order holds while a member joins and while another is killed with -9 (its queues taken over
//! after the lease); a failing message blocks only its queue, up to the limit, then lands in the dead-letter queue.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use comet_client::{ConsumeFrom, Message, OrderlyConsumer, Producer, ProducerConfig, ReceivedMessage};
use comet_proto::comet::v1 as pb;
use comet_tests::harness::broker_process::{BrokerOptions, BrokerProcess};
use comet_tests::harness::nameserver::{NameServer, fast_client_config};
use comet_tests::harness::wait_until;
use parking_lot::Mutex;

const TOPIC: &str = "orders";
const QUEUES: u32 = 8;

/// A NameServer and one broker (short lock lease and client expiry) with an 8-queue topic, routed.
async fn cluster(dir: &Path) -> anyhow::Result<(NameServer, BrokerProcess)> {
    let ns_dir = dir.join("ns");
    std::fs::create_dir_all(&ns_dir)?;
    let ns = NameServer::memory(&ns_dir, "").await?;
    let options = BrokerOptions {
        nameservers: vec![ns.addr()],
        broker_extra: "  client-expiry-ms: 4000\n".into(),
        messaging: "  queue-lock-lease-ms: 4000\n  retry-delays-ms: [200]\n".into(),
        ..Default::default()
    };
    let broker = BrokerProcess::start(&dir.join("broker"), &options).await?;
    let config = pb::TopicConfig {
        name: TOPIC.into(),
        read_queue_nums: QUEUES,
        write_queue_nums: QUEUES,
        perm: 6,
        ..Default::default()
    };
    broker.client().await?.create_topic(pb::CreateTopicRequest { topic: Some(config) }).await?;
    let ns_client = ns.client()?;
    wait_until("route of the topic", Duration::from_secs(10), || async {
        ns_client.query_route(TOPIC).await.is_ok_and(|r| r.queues.len() == 1)
    })
    .await?;
    Ok((ns, broker))
}

fn producer(ns: &NameServer) -> anyhow::Result<Producer> {
    let mut config = ProducerConfig::new(vec![ns.addr()], "orderly-test-producer");
    config.nameserver_client = Some(fast_client_config(vec![ns.addr()]));
    Ok(Producer::new(config)?)
}

/// An in-process orderly consumer with test-speed intervals, calling `listener` for every message.
async fn orderly(
    ns: &NameServer,
    group: &str,
    listener: impl Fn(&ReceivedMessage) -> comet_client::ListenerResult + Send + Sync + 'static,
) -> anyhow::Result<OrderlyConsumer> {
    Ok(OrderlyConsumer::builder(vec![ns.addr()], group)
        .subscribe(TOPIC, "*")
        .consume_from(ConsumeFrom::FirstOffset)
        .suspend(Duration::from_millis(100))
        .max_attempts(3)
        .configure(|c| {
            c.nameserver_client = Some(fast_client_config(vec![ns.addr()]));
            c.rebalance_interval = Duration::from_millis(200);
            c.heartbeat_interval = Duration::from_millis(500);
            c.commit_interval = Duration::from_millis(300);
            c.pull_wait = Duration::from_millis(500);
            c.route_refresh = Duration::from_millis(500);
        })
        .listener(listener)
        .start()
        .await?)
}

/// `key:seq` → (key, seq).
fn parse(body: &str) -> Option<(String, u64)> {
    let (key, seq) = body.split_once(':')?;
    Some((key.to_owned(), seq.parse().ok()?))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_broker_grants_a_queue_lock_to_one_member_at_a_time() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_ns, broker) = cluster(dir.path()).await?;
    let mut client = broker.client().await?;
    for id in ["member-a", "member-b"] {
        let group = pb::ConsumerGroupHeartbeat { group: "g".into(), message_model: 0, subscriptions: Vec::new() };
        let heartbeat =
            pb::ClientHeartbeatRequest { client_id: id.into(), consumer_groups: vec![group], ..Default::default() };
        client.heartbeat(heartbeat).await?;
    }
    let lock = |client_id: &str, queue_ids: Vec<u32>| pb::LockQueuesRequest {
        group: "g".into(),
        client_id: client_id.into(),
        topic: TOPIC.into(),
        queue_ids,
    };
    let a = client.lock_queues(lock("member-a", vec![0, 1])).await?.into_inner();
    assert_eq!(a.locked_queue_ids, [0, 1]);
    assert_eq!(a.lease_millis, 4000);
    let b = client.lock_queues(lock("member-b", vec![1, 2])).await?.into_inner();
    assert_eq!(b.locked_queue_ids, [2], "queue 1 is member-a's: refused");
    let stranger = client.lock_queues(lock("not-a-member", vec![3])).await;
    assert_eq!(stranger.map(|_| ()).unwrap_err().code(), tonic::Code::PermissionDenied, "members only");
    let bad = client.lock_queues(lock("member-a", vec![QUEUES])).await;
    assert_eq!(bad.map(|_| ()).unwrap_err().code(), tonic::Code::InvalidArgument, "not a queue of the topic");

    let unlock = pb::UnlockQueuesRequest {
        group: "g".into(),
        client_id: "member-a".into(),
        topic: TOPIC.into(),
        queue_ids: vec![1],
    };
    client.unlock_queues(unlock).await?;
    let b = client.lock_queues(lock("member-b", vec![1, 2])).await?.into_inner();
    assert_eq!(b.locked_queue_ids, [1, 2], "released by its holder, renewed by its own");
    client.unregister_client(pb::UnregisterClientRequest { client_id: "member-b".into(), groups: vec![] }).await?;
    let a = client.lock_queues(lock("member-a", vec![0, 1, 2])).await?.into_inner();
    assert_eq!(a.locked_queue_ids, [0, 1, 2], "an unregistered member's locks are gone");
    Ok(())
}

/// What the in-process consumers processed, in one global order: (consumer, key, seq).
type Log = Arc<Mutex<Vec<(&'static str, String, u64)>>>;

fn recorder(log: &Log, name: &'static str) -> impl Fn(&ReceivedMessage) -> comet_client::ListenerResult + use<> {
    let log = Arc::clone(log);
    move |m: &ReceivedMessage| {
        let body = String::from_utf8_lossy(&m.body);
        let (key, seq) = parse(&body).ok_or("unexpected body")?;
        log.lock().push((name, key, seq));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn per_key_order_holds_across_a_rebalance_and_a_killed_consumer() -> anyhow::Result<()> {
    const KEYS: usize = 16;
    const SEQS: u64 = 90;
    let dir = tempfile::tempdir()?;
    let (ns, _broker) = cluster(dir.path()).await?;
    let group = "orderly-group";

    // The killable member: a real `comet consume --orderly` process printing one JSON line per message.
    let bin = tokio::task::spawn_blocking(|| comet_tests::harness::binary::cargo_bin("comet", "comet")).await??;
    let mut child = std::process::Command::new(bin)
        .args(["--namesrv", &ns.addr(), "consume", TOPIC, "--group", group, "--orderly", "--json"])
        .args(["--from", "begin", "--commit-interval-ms", "300", "--heartbeat-interval-ms", "500"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let child_seen: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let reader = {
        let child_seen = Arc::clone(&child_seen);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let parsed: Option<serde_json::Value> = serde_json::from_str(&line).ok();
                if let Some(entry) = parsed.as_ref().and_then(|v| v["body"].as_str()).and_then(parse) {
                    child_seen.lock().push(entry);
                }
            }
        })
    };

    let log: Log = Arc::default();
    let a = orderly(&ns, group, recorder(&log, "a")).await?;

    // Messages keep flowing through both events: sequence-major, so every key is spread over time.
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (producer, sent) = (producer(&ns)?, Arc::clone(&sent));
        tokio::spawn(async move {
            for seq in 0..SEQS {
                for k in 0..KEYS {
                    let message = Message::new(TOPIC, format!("k{k}:{seq}")).with_sharding_key(format!("k{k}"));
                    producer.send(message).await?;
                }
                sent.store(seq + 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok(())
        })
    };
    wait_until("the child consuming", Duration::from_secs(30), || async { child_seen.lock().len() >= 20 }).await?;

    // A member joins mid-stream: queues move between members.
    wait_until("a third of the messages sent", Duration::from_secs(30), || async {
        sent.load(Ordering::SeqCst) >= SEQS / 3
    })
    .await?;
    let b = orderly(&ns, group, recorder(&log, "b")).await?;
    let assigned_now = || (a.assigned_queues().len(), b.assigned_queues().len());
    wait_until("the new member assigned queues", Duration::from_secs(20), || async {
        let (na, nb) = assigned_now();
        na > 0 && nb > 0 && na + nb < QUEUES as usize
    })
    .await?;

    // The child is killed with -9: no commit, no unlock.
    wait_until("two thirds sent", Duration::from_secs(30), || async { sent.load(Ordering::SeqCst) >= 2 * SEQS / 3 })
        .await?;
    child.kill()?;
    child.wait()?;
    let _ = reader.join();
    let child_seen = child_seen.lock().clone();
    assert!(!child_seen.is_empty(), "the child consumed before it was killed");

    sender.await??;
    let total = KEYS * SEQS as usize;
    let complete = || {
        let mut seen: HashMap<(String, u64), ()> = HashMap::new();
        for (_, key, seq) in log.lock().iter() {
            seen.insert((key.clone(), *seq), ());
        }
        for (key, seq) in &child_seen {
            seen.insert((key.clone(), *seq), ());
        }
        seen.len()
    };
    // The killed member's queues are taken over after its lease (or its expiry from the member list).
    let taken_over =
        wait_until("every message processed", Duration::from_secs(40), || async { complete() == total }).await;
    let stats_a = a.queue_stats();
    let stats_b = b.queue_stats();
    anyhow::ensure!(taken_over.is_ok(), "{} of {total} processed; a: {stats_a:?}\nb: {stats_b:?}", complete());
    // Every queue ends up locked by exactly one survivor; no sample ever shows a queue locked by both.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let locked = |c: &OrderlyConsumer| -> Vec<u32> {
            c.queue_stats().iter().filter(|s| s.locked).map(|s| s.queue.queue_id).collect()
        };
        let (locked_a, locked_b) = (locked(&a), locked(&b));
        assert!(locked_a.iter().all(|q| !locked_b.contains(q)), "one lock holder per queue: {locked_a:?} {locked_b:?}");
        if locked_a.len() + locked_b.len() == QUEUES as usize {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the survivors never held every queue: {locked_a:?} {locked_b:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.shutdown().await;
    b.shutdown().await;

    // Per key, the two in-process members together saw a strictly increasing sequence: a queue moved between
    // them only after the previous holder committed, and the killed member's uncommitted tail (if any) came again
    // in order, not interleaved.
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for (consumer, key, seq) in log.lock().iter() {
        if let Some(previous) = last.insert(key.clone(), *seq) {
            assert!(*seq > previous, "key {key}: {seq} after {previous} (consumer {consumer})");
        }
    }
    let mut child_last: BTreeMap<&str, u64> = BTreeMap::new();
    for (key, seq) in &child_seen {
        if let Some(previous) = child_last.insert(key, *seq) {
            assert!(*seq > previous, "child, key {key}: {seq} after {previous}");
        }
    }
    // The final consumer of every key is a survivor, and it saw the key's last message.
    for k in 0..KEYS {
        assert_eq!(last.get(&format!("k{k}")), Some(&(SEQS - 1)), "key k{k} finished by a surviving member");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_message_blocks_only_its_queue_up_to_the_limit_then_goes_to_the_dead_letter_queue()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, broker) = cluster(dir.path()).await?;
    let group = "orderly-dlq";
    let producer = producer(&ns)?;
    // Two keys on different queues; key "poison" message 1 always fails.
    let mut queue_of = HashMap::new();
    for key in ["poison", "healthy-0", "healthy-1", "healthy-2"] {
        let result = producer.send(Message::new(TOPIC, format!("{key}:0")).with_sharding_key(key)).await?;
        queue_of.insert(key, result.queue.queue_id);
    }
    let healthy = ["healthy-0", "healthy-1", "healthy-2"]
        .into_iter()
        .find(|k| queue_of[k] != queue_of["poison"])
        .ok_or_else(|| anyhow::anyhow!("all keys hashed to one queue: {queue_of:?}"))?;
    for seq in 1..5 {
        for key in ["poison", healthy] {
            producer.send(Message::new(TOPIC, format!("{key}:{seq}")).with_sharding_key(key)).await?;
        }
    }

    let log: Arc<Mutex<Vec<(String, u64, u32)>>> = Arc::default();
    let poison_calls = Arc::new(AtomicU64::new(0));
    let consumer = {
        let (log, poison_calls) = (Arc::clone(&log), Arc::clone(&poison_calls));
        orderly(&ns, group, move |m: &ReceivedMessage| {
            let body = String::from_utf8_lossy(&m.body);
            let (key, seq) = parse(&body).ok_or("unexpected body")?;
            if key == "poison" && seq == 1 {
                poison_calls.fetch_add(1, Ordering::SeqCst);
                if poison_calls.load(Ordering::SeqCst) == 2 {
                    panic!("a panicking listener counts as a failure too");
                }
                return Err("poison".into());
            }
            log.lock().push((key, seq, m.reconsume_times));
            Ok(())
        })
        .await?
    };
    let done = |key: &str| log.lock().iter().filter(|(k, ..)| k == key).count();
    // The healthy queue flows while the poison queue is blocked.
    wait_until("the healthy key consumed", Duration::from_secs(20), || async { done(healthy) == 5 }).await?;
    wait_until("the poison key finished", Duration::from_secs(20), || async { done("poison") == 4 }).await?;
    assert_eq!(poison_calls.load(Ordering::SeqCst), 3, "max_attempts listener calls, no more");
    let poison: Vec<u64> = log.lock().iter().filter(|(k, ..)| k == "poison").map(|(_, s, _)| *s).collect();
    assert_eq!(poison, [0, 2, 3, 4], "order kept; message 1 skipped only after its last attempt");
    consumer.shutdown().await;

    // The dead letter is in %DLQ%<group> with the original id and body (visible once dispatched).
    let mut client = broker.client().await?;
    let dlq = format!("%DLQ%{group}");
    comet_tests::harness::broker_process::dispatched(&client, &dlq, 0..1, 1).await?;
    let pulled = client
        .pull_message(pb::PullMessageRequest {
            group: "dlq-reader".into(),
            topic: dlq,
            queue_id: 0,
            offset: 0,
            max_count: 10,
            tag_expression: "*".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let bodies: Vec<String> = pulled.messages.iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()).collect();
    assert_eq!(bodies, ["poison:1"], "exactly the failing message is dead-lettered");
    Ok(())
}
