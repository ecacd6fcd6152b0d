//! The push consumer (comet-client) against a real NameServer and broker: clustering shares 8 queues among three
//! members with every one of 100 000 messages consumed exactly once; a member leaving and another joining while
//! 100 000 messages are produced and consumed loses nothing; broadcasting members each get everything; a restarted
//! member resumes from the committed offsets; a message the listener failed is delivered again; a postponed one is
//! offered again without counting and left for the next member at shutdown; a slow listener makes the consumer
//! pause pulls at the cache limits (messages and bytes) and still gets everything.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
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
    cluster_with_queues(dir, topic, 8).await
}

/// A NameServer and one broker with a `queues`-queue `topic`, routed.
async fn cluster_with_queues(dir: &Path, topic: &str, queues: u32) -> anyhow::Result<(NameServer, BrokerProcess)> {
    let ns_dir = dir.join("ns");
    std::fs::create_dir_all(&ns_dir)?;
    let ns = NameServer::memory(&ns_dir, "").await?;
    let broker_dir = dir.join("broker-a");
    std::fs::create_dir_all(&broker_dir)?;
    // A failed message comes back through the group's retry topic: after 200 ms here, not the default 10 s.
    let options = BrokerOptions {
        nameservers: vec![ns.addr()],
        messaging: "  retry-delays-ms: [200]\n".into(),
        ..Default::default()
    };
    let broker = BrokerProcess::start(&broker_dir, &options).await?;
    let config =
        pb::TopicConfig { name: topic.into(), read_queue_nums: queues, write_queue_nums: queues, ..Default::default() };
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
    send_range(ns, topic, prefix, 0..count, 50).await?;
    Ok((0..count).map(|i| format!("{prefix}-{i}")).collect())
}

/// Sends bodies `{prefix}-{i}` for every `i` in `range`, `batch` per request through the SDK's batch send (each
/// batch goes to the next queue round robin).
async fn send_range(
    ns: &NameServer,
    topic: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
    batch: usize,
) -> anyhow::Result<()> {
    let mut config = ProducerConfig::new(vec![ns.addr()], "push-test-producer");
    config.nameserver_client = Some(fast_client_config(vec![ns.addr()]));
    let producer = Producer::new(config)?;
    let ids: Vec<usize> = range.collect();
    for chunk in ids.chunks(batch) {
        producer.send_batch(chunk.iter().map(|i| Message::new(topic, format!("{prefix}-{i}"))).collect()).await?;
    }
    Ok(())
}

/// A listener recording every successful delivery in `seen`.
fn record_in(seen: &Seen) -> impl Fn(&ReceivedMessage) + Send + Sync + use<> {
    let seen = Arc::clone(seen);
    move |m: &ReceivedMessage| *seen.lock().entry(String::from_utf8_lossy(&m.body).into_owned()).or_default() += 1
}

/// A push consumer calling `record` for every message (always succeeding), with test-speed intervals.
async fn consumer(
    ns: &NameServer,
    group: &str,
    topic: &str,
    model: MessageModel,
    from: ConsumeFrom,
    record: impl Fn(&ReceivedMessage) + Send + Sync + 'static,
    offset_file: Option<&Path>,
) -> anyhow::Result<PushConsumer> {
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
            record(m);
            Ok(())
        });
    if let Some(path) = offset_file {
        builder = builder.offset_file(path);
    }
    Ok(builder.start().await?)
}

/// A clustering push consumer from the first offset whose `listener` may fail or postpone, with test-speed
/// intervals (a message comes back after 100 ms).
async fn fallible_consumer(
    ns: &NameServer,
    group: &str,
    topic: &str,
    listener: impl Fn(&ReceivedMessage) -> comet_client::ListenerResult + Send + Sync + 'static,
) -> anyhow::Result<PushConsumer> {
    let consumer = PushConsumer::builder(vec![ns.addr()], group)
        .subscribe(topic, "*")
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
    Ok(consumer)
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

/// The queues of user topics a member reads (a clustering member also reads its group's retry queue).
pub(crate) fn user_queues(c: &PushConsumer) -> Vec<comet_client::MessageQueue> {
    c.assigned_queues().into_iter().filter(|q| !q.topic.starts_with("%RETRY%")).collect()
}

/// The stats of the user-topic queues a member reads.
pub(crate) fn user_stats(c: &PushConsumer) -> Vec<comet_client::QueueStats> {
    c.queue_stats().into_iter().filter(|q| !q.queue.topic.starts_with("%RETRY%")).collect()
}

/// Waits until the consumers' assignments are disjoint and cover all 8 queues.
async fn wait_balanced(consumers: &[&PushConsumer]) -> anyhow::Result<()> {
    wait_until("8 queues shared without overlap", Duration::from_secs(20), || async {
        let sizes: Vec<usize> = consumers.iter().map(|c| user_queues(c).len()).collect();
        let union: BTreeSet<_> = consumers.iter().flat_map(|c| user_queues(c)).collect();
        union.len() == 8 && sizes.iter().sum::<usize>() == 8 && sizes.iter().all(|&s| s >= 2)
    })
    .await
}

/// Exact accounting of the messages with bodies `{prefix}-{i}`, `i < n`: how often the listener succeeded with
/// each, and every body that is none of them (invented or corrupted).
struct Tally {
    prefix: String,
    counts: Vec<AtomicU32>,
    distinct: AtomicUsize,
    invented: Mutex<Vec<String>>,
}

impl Tally {
    fn new(prefix: &str, n: usize) -> Arc<Self> {
        Arc::new(Self {
            prefix: format!("{prefix}-"),
            counts: (0..n).map(|_| AtomicU32::new(0)).collect(),
            distinct: AtomicUsize::new(0),
            invented: Mutex::default(),
        })
    }

    /// Counts one successful delivery of `body`.
    fn record(&self, body: &[u8]) {
        let index = std::str::from_utf8(body)
            .ok()
            .and_then(|b| b.strip_prefix(self.prefix.as_str()))
            // Exactly the decimal form we sent: "m-007" is not message 7.
            .and_then(|n| n.parse::<usize>().ok().filter(|i| i.to_string() == n))
            .filter(|&i| i < self.counts.len());
        match index {
            Some(i) => {
                if self.counts[i].fetch_add(1, Ordering::SeqCst) == 0 {
                    self.distinct.fetch_add(1, Ordering::SeqCst);
                }
            }
            None => self.invented.lock().push(String::from_utf8_lossy(body).into_owned()),
        }
    }

    /// How many different messages were delivered.
    fn distinct(&self) -> usize {
        self.distinct.load(Ordering::SeqCst)
    }

    /// The ids never delivered.
    fn missing(&self) -> Vec<usize> {
        (0..self.counts.len()).filter(|&i| self.counts[i].load(Ordering::SeqCst) == 0).collect()
    }

    /// Deliveries beyond the first, and how many ids had them.
    fn duplicates(&self) -> (u64, usize) {
        let extra: Vec<u32> =
            self.counts.iter().map(|c| c.load(Ordering::SeqCst)).filter(|&c| c > 1).map(|c| c - 1).collect();
        (extra.iter().map(|&e| u64::from(e)).sum(), extra.len())
    }

    /// Waits (up to 60 s) until every id was delivered at least once; the error names what is missing.
    async fn wait_all(&self, what: &str) -> anyhow::Result<()> {
        let n = self.counts.len();
        if wait_until(what, Duration::from_secs(60), || async { self.distinct() == n }).await.is_err() {
            let missing = self.missing();
            anyhow::bail!(
                "{what}: {} of {n} never delivered, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            );
        }
        Ok(())
    }

    /// Fails unless every id was delivered and nothing else was; with `exactly_once`, also on any duplicate.
    fn check(&self, exactly_once: bool) -> anyhow::Result<()> {
        let missing = self.missing();
        anyhow::ensure!(
            missing.is_empty(),
            "{} never delivered, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        let invented = self.invented.lock();
        anyhow::ensure!(
            invented.is_empty(),
            "{} deliveries of bodies never sent, e.g. {:?}",
            invented.len(),
            invented.first()
        );
        let (extra, ids) = self.duplicates();
        if exactly_once {
            let example = self.counts.iter().position(|c| c.load(Ordering::SeqCst) > 1);
            anyhow::ensure!(
                extra == 0,
                "{ids} messages delivered more than once ({extra} extra deliveries), e.g. id {example:?}"
            );
        }
        Ok(())
    }
}

/// A listener counting into `tally` and into the member's own counter.
fn record_tally(tally: &Arc<Tally>, mine: &Arc<AtomicUsize>) -> impl Fn(&ReceivedMessage) + Send + Sync + use<> {
    let (tally, mine) = (Arc::clone(tally), Arc::clone(mine));
    move |m: &ReceivedMessage| {
        tally.record(&m.body);
        mine.fetch_add(1, Ordering::SeqCst);
    }
}

/// Messages of the two clustering tests (the figure).
const MANY: usize = 100_000;
/// Messages per batch send in those tests.
const BATCH: usize = 500;

#[tokio::test(flavor = "multi_thread")]
async fn three_members_of_a_group_share_eight_queues_and_consume_every_message_exactly_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, _broker) = cluster(dir.path(), "push-even").await?;
    let tally = Tally::new("m", MANY);
    let mut members = Vec::new();
    let mut counts = Vec::new();
    for _ in 0..3 {
        let mine = Arc::new(AtomicUsize::new(0));
        let (model, from) = (MessageModel::Clustering, ConsumeFrom::FirstOffset);
        members.push(consumer(&ns, "push-even-g", "push-even", model, from, record_tally(&tally, &mine), None).await?);
        counts.push(mine);
    }
    wait_balanced(&members.iter().collect::<Vec<_>>()).await?;
    let sizes: Vec<usize> = members.iter().map(|c| user_queues(c).len()).collect();
    assert_eq!(sizes.iter().copied().collect::<BTreeSet<_>>(), BTreeSet::from([2, 3]), "3+3+2: {sizes:?}");

    let started = std::time::Instant::now();
    send_range(&ns, "push-even", "m", 0..MANY, BATCH).await?;
    let sent = started.elapsed();
    tally.wait_all("100 000 messages over three members").await?;
    eprintln!("sent {MANY} in {sent:?}, all consumed after {:?}", started.elapsed());
    // Exactly once while the membership is stable: give a late duplicate time to show (two rebalance polls).
    tokio::time::sleep(Duration::from_secs(2)).await;
    tally.check(true)?;
    let per_member: Vec<usize> = counts.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert!(per_member.iter().all(|&n| n > 0), "every member consumed its share: {per_member:?}");
    assert_eq!(per_member.iter().sum::<usize>(), MANY, "{per_member:?}");
    // Members leaving one by one is a membership change: a queue can move to a member that reads the broker's
    // committed offset before the leaver's final commit lands (at-least-once, as in RocketMQ), so from here on
    // re-deliveries are allowed but nothing may be lost or invented.
    for member in members {
        member.shutdown().await;
    }
    tally.check(false)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_leaving_and_another_joining_mid_stream_loses_no_message() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, _broker) = cluster(dir.path(), "push-churn").await?;
    let tally = Tally::new("m", MANY);
    let start = |mine: &Arc<AtomicUsize>| {
        let (ns, record) = (&ns, record_tally(&tally, mine));
        let (model, from) = (MessageModel::Clustering, ConsumeFrom::FirstOffset);
        async move { consumer(ns, "push-churn-g", "push-churn", model, from, record, None).await }
    };
    let (leaving_count, joining_count) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let leaving = start(&leaving_count).await?;
    let staying = [start(&Arc::default()).await?, start(&Arc::default()).await?];
    wait_balanced(&[&leaving, &staying[0], &staying[1]]).await?;

    // Produced before, during and after the change: the first 40 % before it, the next 30 % while a member shuts
    // down and another joins, the last 30 % once it joined (while the group re-balances).
    let (first, second) = (MANY * 4 / 10, MANY * 7 / 10);
    let started = std::time::Instant::now();
    send_range(&ns, "push-churn", "m", 0..first, BATCH).await?;
    wait_until("a quarter consumed", Duration::from_secs(30), || async { tally.distinct() >= MANY / 4 }).await?;
    let during = {
        let ns_addr = ns.addr();
        tokio::spawn(async move {
            let mut config = ProducerConfig::new(vec![ns_addr.clone()], "push-churn-producer");
            config.nameserver_client = Some(fast_client_config(vec![ns_addr]));
            let producer = Producer::new(config)?;
            let ids: Vec<usize> = (first..second).collect();
            for chunk in ids.chunks(BATCH) {
                producer
                    .send_batch(chunk.iter().map(|i| Message::new("push-churn", format!("m-{i}"))).collect())
                    .await?;
            }
            anyhow::Ok(())
        })
    };
    let consumed_at_change = tally.distinct();
    leaving.shutdown().await;
    let joining = start(&joining_count).await?;
    during.await??;
    send_range(&ns, "push-churn", "m", second..MANY, BATCH).await?;
    wait_balanced(&[&staying[0], &staying[1], &joining]).await?;
    tally.wait_all("100 000 messages across a membership change").await?;
    for member in staying.into_iter().chain([joining]) {
        member.shutdown().await;
    }
    tally.check(false)?;
    let (extra, ids) = tally.duplicates();
    eprintln!(
        "membership change after {consumed_at_change} of {MANY} consumed; all consumed after {:?}; {ids} delivered \
         twice or more ({extra} extra deliveries; at-least-once around re-balances)",
        started.elapsed()
    );
    assert!(consumed_at_change < MANY, "the change happened mid-stream");
    assert!(leaving_count.load(Ordering::SeqCst) > 0, "the leaving member consumed before it left");
    assert!(joining_count.load(Ordering::SeqCst) > 0, "the joining member took over queues");
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
        consumer(&ns, "push-bcast-g", "push-bcast", model, ConsumeFrom::FirstOffset, record_in(&seen_a), Some(&file_a))
            .await?;
    let b =
        consumer(&ns, "push-bcast-g", "push-bcast", model, ConsumeFrom::FirstOffset, record_in(&seen_b), Some(&file_b))
            .await?;
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
    let first = consumer(&ns, group, "push-resume", model, ConsumeFrom::FirstOffset, record_in(&seen), None).await?;
    let before = send(&ns, "push-resume", "before", 3_000).await?;
    wait_all_seen(&seen, &before, "the first 3 000").await?;
    first.shutdown().await;

    let during = send(&ns, "push-resume", "while-down", 3_000).await?;
    // From the last offset when nothing is committed: only the commits can make it read the backlog.
    let second = consumer(&ns, group, "push-resume", model, ConsumeFrom::LastOffset, record_in(&seen), None).await?;
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
    let consumer = fallible_consumer(&ns, "push-retry-g", "push-retry", listener).await?;
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

#[tokio::test(flavor = "multi_thread")]
async fn a_postponed_message_is_offered_again_uncounted_and_a_shutdown_leaves_it_for_the_next_member()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, broker) = cluster(dir.path(), "push-later").await?;
    let start = |postpone_all: bool, seen: &Seen, reconsumed: &Arc<AtomicUsize>| {
        let (seen, reconsumed) = (Arc::clone(seen), Arc::clone(reconsumed));
        let offers = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
        let listener = move |m: &ReceivedMessage| -> comet_client::ListenerResult {
            let body = String::from_utf8_lossy(&m.body).into_owned();
            let offer = {
                let mut offers = offers.lock();
                let n = offers.entry(body.clone()).or_default();
                *n += 1;
                *n
            };
            // Every message is postponed twice (or always), then taken.
            if postpone_all || offer <= 2 {
                return Err(Box::new(comet_client::Postpone));
            }
            reconsumed.fetch_add(usize::from(m.reconsume_times > 0 || m.is_retry()), Ordering::SeqCst);
            *seen.lock().entry(body).or_default() += 1;
            Ok(())
        };
        fallible_consumer(&ns, "push-later-g", "push-later", listener)
    };
    let (seen, reconsumed): (Seen, _) = (Arc::default(), Arc::new(AtomicUsize::new(0)));

    // A member that postpones everything consumes nothing and commits nothing; its shutdown leaves it all.
    let idle = start(true, &seen, &reconsumed).await?;
    let bodies = send(&ns, "push-later", "p", 200).await?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    idle.shutdown().await;
    assert!(seen.lock().is_empty());

    // The next member gets every message, each offered twice more without counting as a failure: all taken
    // once, none redelivered through the retry topic.
    let member = start(false, &seen, &reconsumed).await?;
    wait_all_seen(&seen, &bodies, "every postponed message taken").await?;
    member.shutdown().await;
    assert!(seen.lock().values().all(|&n| n == 1), "each taken exactly once");
    assert_eq!(reconsumed.load(Ordering::SeqCst), 0, "no delivery counted as a retry");
    let mut admin = broker.client().await?;
    for queue_id in 0..8 {
        let request = pb::GetQueueOffsetsRequest { topic: "%RETRY%push-later-g".into(), queue_id };
        if let Ok(offsets) = admin.get_queue_offsets(request).await {
            assert_eq!(offsets.into_inner().max_offset, 0, "retry queue {queue_id} is empty");
        }
    }
    Ok(())
}

/// A push consumer of `topic` whose listener takes about 1 ms per message on `threads` threads and counts each
/// message's `id` property into `tally`; `limits` changes the cache limits.
async fn slow_consumer(
    ns: &NameServer,
    group: &str,
    topic: &str,
    threads: usize,
    tally: &Arc<Tally>,
    limits: impl FnOnce(&mut comet_client::PushConsumerConfig),
) -> anyhow::Result<PushConsumer> {
    let tally = Arc::clone(tally);
    Ok(PushConsumer::builder(vec![ns.addr()], group)
        .subscribe(topic, "*")
        .consume_from(ConsumeFrom::FirstOffset)
        .threads(threads)
        .configure(|c| {
            c.nameserver_client = Some(fast_client_config(vec![ns.addr()]));
            c.rebalance_interval = Duration::from_millis(200);
            c.pull_wait = Duration::from_millis(500);
            limits(c);
        })
        .listener(move |m: &ReceivedMessage| {
            std::thread::sleep(Duration::from_millis(1));
            tally.record(m.properties.get("id").map_or(&b""[..], |id| id.as_bytes()));
            Ok(())
        })
        .start()
        .await?)
}

/// Sends `count` messages with an `id` property `{prefix}-{i}` and a body of `size` bytes, in batches of 500.
async fn send_sized(ns: &NameServer, topic: &str, prefix: &str, count: usize, size: usize) -> anyhow::Result<()> {
    let mut config = ProducerConfig::new(vec![ns.addr()], "push-test-producer");
    config.nameserver_client = Some(fast_client_config(vec![ns.addr()]));
    let producer = Producer::new(config)?;
    let ids: Vec<usize> = (0..count).collect();
    for chunk in ids.chunks(500) {
        let batch = chunk
            .iter()
            .map(|i| Message::new(topic, vec![b'x'; size]).with_property("id", format!("{prefix}-{i}")))
            .collect();
        producer.send_batch(batch).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_listener_pauses_pulls_at_the_cached_message_limit_and_everything_is_consumed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, _broker) = cluster_with_queues(dir.path(), "push-flow", 2).await?;
    // A backlog of 3 000 per queue against a listener doing about 2 000 a second: pulls would run far ahead.
    let n = 6_000;
    send_sized(&ns, "push-flow", "m", n, 16).await?;
    let tally = Tally::new("m", n);
    let consumer = slow_consumer(&ns, "push-flow-g", "push-flow", 2, &tally, |_| {}).await?;
    let (limit, batch) = (1_000, 32);
    // Besides the consumer's own peak, sample what it reports while it works.
    let mut sampled_peak = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tally.distinct() < n && tokio::time::Instant::now() < deadline {
        sampled_peak = user_stats(&consumer).iter().map(|q| q.cached_messages).max().unwrap_or(0).max(sampled_peak);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tally.wait_all("every message behind the slow listener").await?;
    // The listener counts a message before it returns; the acknowledgement follows a moment later.
    wait_until("every message acknowledged", Duration::from_secs(5), || async {
        user_stats(&consumer).iter().all(|q| q.cached_messages == 0)
    })
    .await?;
    let stats = user_stats(&consumer);
    consumer.shutdown().await;
    tally.check(true)?;
    assert_eq!(stats.len(), 2, "{stats:?}");
    for q in &stats {
        assert!(q.peak_cached_messages <= limit + batch, "cache above the limit plus one pull batch: {q:?}");
        assert!(q.peak_cached_messages >= limit, "the backlog filled the cache up to the limit: {q:?}");
        assert!(q.flow_control_pauses >= 1, "pulls paused: {q:?}");
        assert_eq!((q.cached_messages, q.committable_offset), (0, 3_000), "{q:?}");
    }
    assert!(sampled_peak <= limit + batch && sampled_peak > 0, "sampled cache peak {sampled_peak}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_listener_pauses_pulls_at_the_cached_byte_limit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, _broker) = cluster_with_queues(dir.path(), "push-flow-bytes", 2).await?;
    let (n, size, byte_limit, batch) = (1_000, 1024, 64 << 10, 32);
    send_sized(&ns, "push-flow-bytes", "m", n, size).await?;
    let tally = Tally::new("m", n);
    let consumer = slow_consumer(&ns, "push-flow-bytes-g", "push-flow-bytes", 1, &tally, |c| {
        c.max_cached_bytes = byte_limit;
    })
    .await?;
    tally.wait_all("every message behind the slow listener").await?;
    let stats = user_stats(&consumer);
    consumer.shutdown().await;
    tally.check(true)?;
    for q in &stats {
        assert!(q.peak_cached_bytes <= byte_limit + batch * size, "cache above the byte limit plus one batch: {q:?}");
        assert!(q.peak_cached_bytes >= byte_limit, "the backlog filled the cache up to the byte limit: {q:?}");
        assert!(q.flow_control_pauses >= 1, "pulls paused: {q:?}");
        assert!(q.peak_cached_messages < 1_000, "the byte limit, not the message limit, held pulls back: {q:?}");
    }
    Ok(())
}

/// CreateGroup of `name` with the two switches (retries at RocketMQ's 16).
fn group_request(name: &str, consume_enable: bool, consume_broadcast_enable: bool) -> pb::CreateGroupRequest {
    let group = pb::GroupConfig {
        name: name.into(),
        consume_enable,
        consume_broadcast_enable,
        retry_max_times: 16,
        ..Default::default()
    };
    pb::CreateGroupRequest { group: Some(group) }
}

/// A pull of queue 0 of `topic` by `group`, answered at once.
fn pull_request(group: &str, topic: &str) -> pb::PullMessageRequest {
    pb::PullMessageRequest {
        group: group.into(),
        topic: topic.into(),
        tag_expression: "*".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_refuses_broadcasting_members_when_broadcasting_is_off_and_every_pull_when_consumption_is_off()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, broker) = cluster(dir.path(), "push-gate").await?;
    let mut admin = broker.client().await?;
    let denied =
        |s: &tonic::Status, words: &str| s.code() == tonic::Code::PermissionDenied && s.message().contains(words);

    // Broadcasting off: the SDK's broadcasting consumer fails to start with a permanent error naming the setting.
    admin.create_group(group_request("gate-no-bcast", true, false)).await?;
    let seen: Seen = Arc::default();
    let started = consumer(
        &ns,
        "gate-no-bcast",
        "push-gate",
        MessageModel::Broadcasting,
        ConsumeFrom::FirstOffset,
        record_in(&seen),
        Some(&dir.path().join("gate.offsets")),
    )
    .await;
    let Err(error) = started else { anyhow::bail!("a broadcasting member of gate-no-bcast started") };
    let error = error.downcast::<comet_client::ClientError>()?;
    assert!(!error.is_retryable() && error.code() == tonic::Code::PermissionDenied, "{error}");
    assert!(error.to_string().contains("consume_broadcast_enable"), "{error}");
    // It left again, so the group's clustering members and pull consumers are not affected.
    let members = admin.get_consumer_list(pb::GetConsumerListRequest { group: "gate-no-bcast".into() }).await?;
    assert!(members.into_inner().client_ids.is_empty(), "the refused member unregistered");
    admin.pull_message(pull_request("gate-no-bcast", "push-gate")).await?;
    let clustering =
        consumer(&ns, "gate-no-bcast", "push-gate", MessageModel::Clustering, ConsumeFrom::FirstOffset, |_| {}, None)
            .await?;
    clustering.shutdown().await;

    // The same through the API: the heartbeat is refused; while the member is registered the group's pulls are
    // refused (a pull carries no client id); once it leaves they are served again.
    let heartbeat = pb::ClientHeartbeatRequest {
        client_id: "raw-broadcaster".into(),
        producer_groups: Vec::new(),
        consumer_groups: vec![pb::ConsumerGroupHeartbeat {
            group: "gate-no-bcast".into(),
            message_model: pb::MessageModel::Broadcasting.into(),
            subscriptions: vec![pb::Subscription { topic: "push-gate".into(), expression: "*".into() }],
        }],
        ..Default::default()
    };
    let refused = admin.heartbeat(heartbeat).await.expect_err("broadcasting heartbeat of gate-no-bcast");
    assert!(denied(&refused, "broadcasting consumption is not permitted"), "{refused:?}");
    let refused = admin.pull_message(pull_request("gate-no-bcast", "push-gate")).await.expect_err("pull refused");
    assert!(denied(&refused, "consume_broadcast_enable"), "{refused:?}");
    let leave = pb::UnregisterClientRequest { client_id: "raw-broadcaster".into(), groups: Vec::new() };
    admin.unregister_client(leave).await?;
    admin.pull_message(pull_request("gate-no-bcast", "push-gate")).await?;

    // Consumption off: every pull of the group is refused, whatever the model; heartbeats are accepted.
    admin.create_group(group_request("gate-off", false, true)).await?;
    let refused = admin.pull_message(pull_request("gate-off", "push-gate")).await.expect_err("disabled group");
    assert!(denied(&refused, "disabled"), "{refused:?}");

    // Turned off under a running broadcasting member: its pulls are refused at once, and resume when it is back on.
    let live: Seen = Arc::default();
    let member = consumer(
        &ns,
        "gate-live",
        "push-gate",
        MessageModel::Broadcasting,
        ConsumeFrom::FirstOffset,
        record_in(&live),
        Some(&dir.path().join("live.offsets")),
    )
    .await?;
    let before = send(&ns, "push-gate", "before", 50).await?;
    wait_all_seen(&live, &before, "messages while broadcasting is allowed").await?;
    admin.delete_group(pb::DeleteGroupRequest { group: "gate-live".into() }).await?;
    admin.create_group(group_request("gate-live", true, false)).await?;
    // Pulls parked before the change (500 ms long polls) are answered first.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let during = send(&ns, "push-gate", "while-off", 50).await?;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let delivered = during.iter().filter(|b| live.lock().contains_key(*b)).count();
    assert_eq!(delivered, 0, "pulls of a broadcasting member are refused once the group forbids broadcasting");
    admin.delete_group(pb::DeleteGroupRequest { group: "gate-live".into() }).await?;
    admin.create_group(group_request("gate-live", true, true)).await?;
    wait_all_seen(&live, &during, "messages once broadcasting is allowed again").await?;
    member.shutdown().await;
    Ok(())
}
