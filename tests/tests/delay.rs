//! Delayed delivery through real broker processes: 10 000 messages with random delays are neither early nor
//! more than 1 s late, also across a kill -9 of the broker halfway (none lost, none duplicated); bad input is
//! refused with INVALID_ARGUMENT.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use comet_proto::comet::v1 as pb;
use comet_proto::comet::v1::broker_client::BrokerClient;
use comet_tests::harness::broker_process::{BrokerOptions, BrokerProcess};
use parking_lot::Mutex;
use tokio::sync::watch;
use tonic::transport::Channel;

const TOPIC: &str = "delayed";
const QUEUES: u32 = 4;
const MESSAGES: u32 = 10_000;
const BATCH: u32 = 50;
/// Delays are spread over this range.
const MIN_DELAY_MS: u64 = 300;
const MAX_DELAY_MS: u64 = 10_000;
/// Promised: visible within this long after the due time.
const ON_TIME_MS: u64 = 1_000;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

async fn connect(addr: &str) -> anyhow::Result<BrokerClient<Channel>> {
    Ok(BrokerClient::connect(format!("http://{addr}")).await?)
}

async fn create_topic(client: &mut BrokerClient<Channel>) -> anyhow::Result<()> {
    let topic =
        pb::TopicConfig { name: TOPIC.into(), read_queue_nums: QUEUES, write_queue_nums: QUEUES, ..Default::default() };
    client.create_topic(pb::CreateTopicRequest { topic: Some(topic) }).await?;
    Ok(())
}

/// Receive times (ms since the epoch) of every message id seen by the consumers.
type Seen = Arc<Mutex<HashMap<u32, Vec<u64>>>>;

/// One long-polling reader per queue, following the broker's address across restarts; receive time is taken
/// when a pull answers.
fn spawn_consumers(addr: watch::Receiver<String>, seen: &Seen) -> Vec<tokio::task::JoinHandle<()>> {
    (0..QUEUES)
        .map(|queue| {
            let (mut addr, seen) = (addr.clone(), Arc::clone(seen));
            tokio::spawn(async move {
                let mut offset = 0u64;
                let mut client: Option<BrokerClient<Channel>> = None;
                loop {
                    if client.is_none() {
                        let current = addr.borrow_and_update().clone();
                        match connect(&current).await {
                            Ok(c) => client = Some(c),
                            Err(_) => {
                                let _ = tokio::time::timeout(Duration::from_millis(50), addr.changed()).await;
                                continue;
                            }
                        }
                    }
                    let Some(c) = client.as_mut() else { continue };
                    let request = pb::PullMessageRequest {
                        group: "delay-test".into(),
                        topic: TOPIC.into(),
                        queue_id: queue,
                        offset,
                        max_count: 512,
                        max_bytes: 0,
                        max_wait_millis: 500,
                        tag_expression: "*".into(),
                    };
                    match c.pull_message(request).await {
                        Ok(answer) => {
                            let answer = answer.into_inner();
                            let at = now_ms();
                            let mut seen = seen.lock();
                            for m in &answer.messages {
                                let id: u32 = String::from_utf8_lossy(&m.body).parse().unwrap_or(u32::MAX);
                                seen.entry(id).or_default().push(at);
                            }
                            offset = answer.next_offset.max(offset);
                        }
                        Err(_) => {
                            client = None;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            })
        })
        .collect()
}

/// Sends the messages (half with an absolute time, half with a relative delay) and returns each id's due time
/// as the broker acknowledged it.
async fn send_all(client: &mut BrokerClient<Channel>) -> anyhow::Result<HashMap<u32, u64>> {
    let mut due = HashMap::new();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for first in (0..MESSAGES).step_by(BATCH as usize) {
        let messages: Vec<pb::OutgoingMessage> = (first..first + BATCH)
            .map(|id| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let delay = MIN_DELAY_MS + rng % (MAX_DELAY_MS - MIN_DELAY_MS);
                let mut m = pb::OutgoingMessage { body: id.to_string().into_bytes().into(), ..Default::default() };
                if id % 2 == 0 {
                    m.deliver_at_millis = now_ms() + delay;
                } else {
                    m.delay_millis = delay;
                }
                m
            })
            .collect();
        let request = pb::SendMessageRequest {
            topic: TOPIC.into(),
            queue_id: Some(first / BATCH % QUEUES),
            messages,
            ..Default::default()
        };
        let results = client.send_message(request).await?.into_inner().results;
        anyhow::ensure!(results.len() == BATCH as usize, "{} results for {BATCH} messages", results.len());
        for (id, r) in (first..).zip(results) {
            anyhow::ensure!(r.deliver_at_millis > 0, "message {id}: no delivery time in its result");
            due.insert(id, r.deliver_at_millis);
        }
    }
    Ok(due)
}

/// Waits until every id was received or `timeout` passes; returns the receive times.
async fn wait_for_all(seen: &Seen, timeout: Duration) -> HashMap<u32, Vec<u64>> {
    let deadline = tokio::time::Instant::now() + timeout;
    while seen.lock().len() < MESSAGES as usize && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A little longer: a duplicate would show up now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    seen.lock().clone()
}

/// Checks: every id exactly once, never before its due time, and no later than `latest(due)`.
fn check(due: &HashMap<u32, u64>, seen: &HashMap<u32, Vec<u64>>, latest: impl Fn(u64) -> u64) -> anyhow::Result<()> {
    let missing: Vec<_> = due.keys().filter(|id| !seen.contains_key(id)).take(10).collect();
    anyhow::ensure!(
        missing.is_empty(),
        "{} of {MESSAGES} never arrived, e.g. {missing:?}",
        MESSAGES as usize - seen.len()
    );
    let mut lateness = Vec::with_capacity(due.len());
    for (id, times) in seen {
        let Some(&due_at) = due.get(id) else { anyhow::bail!("received id {id} that was never sent") };
        anyhow::ensure!(times.len() == 1, "message {id} received {} times", times.len());
        let at = times[0];
        anyhow::ensure!(at >= due_at, "message {id} arrived {} ms early", due_at - at);
        anyhow::ensure!(at <= latest(due_at), "message {id} arrived {} ms after its time", at - due_at);
        lateness.push(at - due_at);
    }
    lateness.sort_unstable();
    let pick = |q: f64| lateness[((lateness.len() - 1) as f64 * q) as usize];
    eprintln!("lateness ms: p50 {} p99 {} max {}", pick(0.5), pick(0.99), pick(1.0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_arrive_on_time_never_early() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), &BrokerOptions::default()).await?;
    let mut client = broker.client().await?;
    create_topic(&mut client).await?;
    let (_addr_tx, addr_rx) = watch::channel(broker.addr());
    let seen: Seen = Arc::default();
    let consumers = spawn_consumers(addr_rx, &seen);
    let due = send_all(&mut client).await?;
    let last_due = due.values().copied().max().unwrap_or(0);
    let received = wait_for_all(&seen, Duration::from_millis(last_due.saturating_sub(now_ms()) + 15_000)).await;
    consumers.iter().for_each(tokio::task::JoinHandle::abort);
    check(&due, &received, |due_at| due_at + ON_TIME_MS).map_err(|e| e.context(broker.log()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_survive_a_broker_crash_without_loss_or_duplicates() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), &BrokerOptions::default()).await?;
    let mut client = broker.client().await?;
    create_topic(&mut client).await?;
    let (addr_tx, addr_rx) = watch::channel(broker.addr());
    let seen: Seen = Arc::default();
    let consumers = spawn_consumers(addr_rx, &seen);
    let due = send_all(&mut client).await?;
    drop(client);
    let first_due = due.values().copied().min().unwrap_or(0);
    let last_due = due.values().copied().max().unwrap_or(0);
    // Halfway through the delivery window.
    let halfway = first_due + (last_due - first_due) / 2;
    tokio::time::sleep(Duration::from_millis(halfway.saturating_sub(now_ms()))).await;
    let before = seen.lock().len();
    let killed_at = now_ms();
    let broker = broker.crash_and_restart().await?;
    let ready_at = now_ms();
    addr_tx.send(broker.addr())?;
    eprintln!("killed with {before} of {MESSAGES} received; serving again after {} ms", ready_at - killed_at);
    anyhow::ensure!(before > 0 && before < MESSAGES as usize, "the kill did not land mid-delivery ({before})");
    let received = wait_for_all(&seen, Duration::from_millis(last_due.saturating_sub(now_ms()) + 15_000)).await;
    consumers.iter().for_each(tokio::task::JoinHandle::abort);
    // Due while the broker was down (or just before, not yet pulled): promptly after the restart instead.
    check(&due, &received, |due_at| due_at.max(ready_at) + ON_TIME_MS).map_err(|e| e.context(broker.log()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_delays_system_topics_and_reserved_properties_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = BrokerOptions { messaging: "  max-delay-ms: 60000\n".into(), ..Default::default() };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    let mut client = broker.client().await?;
    let body = || b"x".to_vec().into();
    let cases: Vec<(&str, &str, pb::OutgoingMessage, &str)> = vec![
        (
            "both times",
            TOPIC,
            pb::OutgoingMessage {
                body: body(),
                deliver_at_millis: now_ms() + 5_000,
                delay_millis: 5_000,
                ..Default::default()
            },
            "not both",
        ),
        (
            "beyond the maximum",
            TOPIC,
            pb::OutgoingMessage { body: body(), delay_millis: 120_000, ..Default::default() },
            "max-delay-ms",
        ),
        (
            "absolute beyond the maximum",
            TOPIC,
            pb::OutgoingMessage { body: body(), deliver_at_millis: now_ms() + 600_000, ..Default::default() },
            "max-delay-ms",
        ),
        (
            "the timer topic",
            "rmq_sys_wheel_timer",
            pb::OutgoingMessage { body: body(), ..Default::default() },
            "system topic",
        ),
        ("a retry topic", "%RETRY%g1", pb::OutgoingMessage { body: body(), ..Default::default() }, "system topic"),
        (
            "a reserved property",
            TOPIC,
            pb::OutgoingMessage {
                body: body(),
                properties: [("REAL_TOPIC".to_owned(), "elsewhere".to_owned())].into(),
                ..Default::default()
            },
            "reserved",
        ),
    ];
    for (what, topic, message, says) in cases {
        let request = pb::SendMessageRequest { topic: topic.into(), messages: vec![message], ..Default::default() };
        let status = client.send_message(request).await.expect_err(what);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().contains(says), "{what}: {:?} should say {says:?}", status.message());
    }
    // A time in the past is no delay: visible at once, in its topic.
    let request = pb::SendMessageRequest {
        topic: TOPIC.into(),
        queue_id: Some(0),
        messages: vec![pb::OutgoingMessage { body: body(), deliver_at_millis: 1_000, ..Default::default() }],
        ..Default::default()
    };
    let result = client.send_message(request).await?.into_inner().results;
    assert_eq!(result[0].deliver_at_millis, 0);
    comet_tests::harness::wait_until("the past-due message is visible", Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            let request = pb::PullMessageRequest {
                group: "g".into(),
                topic: TOPIC.into(),
                queue_id: 0,
                offset: 0,
                max_count: 10,
                max_wait_millis: 0,
                tag_expression: "*".into(),
                ..Default::default()
            };
            client.pull_message(request).await.is_ok_and(|r| r.into_inner().messages.len() == 1)
        }
    })
    .await?;
    Ok(())
}
