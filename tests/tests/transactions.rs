//! Transactions and idempotent send against real broker processes: commit delivers once, rollback never,
//! unresolved halves are checked back with a live producer (the SDK's checker) or resolved by the policy when no
//! producer answers, check-back state survives restarts and crashes, and a message id sent twice is stored once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use comet_client::{LocalTransactionState, Message, Producer, ProducerConfig, TransactionChecker};
use comet_proto::comet::v1 as pb;
use comet_proto::comet::v1::broker_client::BrokerClient;
use comet_tests::harness::broker_process::{BrokerOptions, BrokerProcess};
use comet_tests::harness::nameserver::{NameServer, fast_client_config};
use comet_tests::harness::prometheus::http_get;
use comet_tests::harness::wait_until;
use tonic::transport::Channel;

const TOPIC: &str = "orders";
const GROUP: &str = "order-producers";

/// Short check-back cadence so the tests see several checks within seconds.
fn fast_checks(max: u32) -> String {
    checks_after(300, max)
}

/// Check-backs every 300 ms, the first `delay_ms` after a half message is stored.
fn checks_after(delay_ms: u64, max: u32) -> String {
    let interval = "  transaction-check-interval-ms: 300\n";
    format!("  transaction-check-delay-ms: {delay_ms}\n{interval}  transaction-check-max: {max}\n")
}

async fn create_topic(client: &mut BrokerClient<Channel>) -> anyhow::Result<()> {
    let topic = pb::TopicConfig { name: TOPIC.into(), read_queue_nums: 1, write_queue_nums: 1, ..Default::default() };
    client.create_topic(pb::CreateTopicRequest { topic: Some(topic) }).await?;
    Ok(())
}

fn outgoing(id: &str, body: &str) -> pb::OutgoingMessage {
    pb::OutgoingMessage { message_id: id.into(), body: body.as_bytes().to_vec().into(), ..Default::default() }
}

async fn send_half(client: &mut BrokerClient<Channel>, id: &str, body: &str) -> anyhow::Result<pb::SendResult> {
    let request = pb::SendMessageRequest {
        topic: TOPIC.into(),
        queue_id: None,
        producer_group: GROUP.into(),
        messages: vec![outgoing(id, body)],
        transactional: true,
    };
    let mut results = client.send_message(request).await?.into_inner().results;
    results.pop().ok_or_else(|| anyhow::anyhow!("no result"))
}

async fn send_plain(client: &mut BrokerClient<Channel>, id: &str, body: &str) -> anyhow::Result<pb::SendResult> {
    let request = pb::SendMessageRequest {
        topic: TOPIC.into(),
        queue_id: Some(0),
        messages: vec![outgoing(id, body)],
        ..Default::default()
    };
    let mut results = client.send_message(request).await?.into_inner().results;
    results.pop().ok_or_else(|| anyhow::anyhow!("no result"))
}

async fn end(
    client: &mut BrokerClient<Channel>,
    half: &pb::SendResult,
    resolution: pb::TransactionResolution,
) -> anyhow::Result<pb::EndTransactionResponse> {
    let request = pb::EndTransactionRequest {
        producer_group: GROUP.into(),
        message_id: half.message_id.clone(),
        commit_log_offset: half.commit_log_offset,
        resolution: resolution as i32,
        from_check: false,
    };
    Ok(client.end_transaction(request).await?.into_inner())
}

async fn max_offset(client: &mut BrokerClient<Channel>) -> anyhow::Result<u64> {
    let request = pb::GetQueueOffsetsRequest { topic: TOPIC.into(), queue_id: 0 };
    Ok(client.get_queue_offsets(request).await?.into_inner().max_offset)
}

/// Bodies of every message in the topic's queue 0.
async fn bodies(client: &mut BrokerClient<Channel>) -> anyhow::Result<Vec<String>> {
    let request = pb::PullMessageRequest {
        group: "readers".into(),
        topic: TOPIC.into(),
        queue_id: 0,
        offset: 0,
        max_count: 1000,
        max_bytes: 0,
        max_wait_millis: 0,
        tag_expression: String::new(),
    };
    let messages = client.pull_message(request).await?.into_inner().messages;
    Ok(messages.into_iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()).collect())
}

/// Waits until the queue holds `n` messages, then checks it still holds exactly `n` a moment later.
async fn exactly(client: &mut BrokerClient<Channel>, n: u64) -> anyhow::Result<()> {
    wait_until(&format!("{n} messages in {TOPIC}"), Duration::from_secs(20), || {
        let mut c = client.clone();
        async move { max_offset(&mut c).await.is_ok_and(|m| m >= n) }
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    anyhow::ensure!(max_offset(client).await? == n, "expected exactly {n} messages");
    Ok(())
}

async fn metric(broker: &BrokerProcess, series: &str) -> anyhow::Result<u64> {
    let (_, text) = http_get(broker.metrics_addr(), "/metrics").await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum())
}

#[tokio::test]
async fn commit_is_delivered_once_and_rollback_never() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), &BrokerOptions::default()).await?;
    let mut client = broker.client().await?;
    create_topic(&mut client).await?;

    let a = send_half(&mut client, "", "committed").await?;
    assert_eq!(a.message_id.len(), 32, "the broker assigns an id");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(max_offset(&mut client).await?, 0, "a half message is invisible");
    let first = end(&mut client, &a, pb::TransactionResolution::Commit).await?;
    assert_eq!(first.resolution, pb::TransactionResolution::Commit as i32);
    let committed = first.committed.clone().ok_or_else(|| anyhow::anyhow!("no committed result"))?;
    // Repeated (or contradicting) ends answer the first resolution and store nothing.
    for again in [pb::TransactionResolution::Commit, pb::TransactionResolution::Rollback] {
        let answer = end(&mut client, &a, again).await?;
        assert_eq!(answer.resolution, pb::TransactionResolution::Commit as i32);
        assert_eq!(answer.committed.map(|c| c.commit_log_offset), Some(committed.commit_log_offset));
    }

    let b = send_half(&mut client, "", "rolled back").await?;
    let answer = end(&mut client, &b, pb::TransactionResolution::Rollback).await?;
    assert_eq!(answer.resolution, pb::TransactionResolution::Rollback as i32);
    let late = end(&mut client, &b, pb::TransactionResolution::Commit).await?;
    assert_eq!(late.resolution, pb::TransactionResolution::Rollback as i32, "a late commit cannot undo a rollback");

    exactly(&mut client, 1).await?;
    assert_eq!(bodies(&mut client).await?, vec!["committed".to_owned()]);

    // A wrong id for the handle is refused.
    let mut wrong = a.clone();
    wrong.message_id = "NOT-THE-ID".into();
    let error = end(&mut client, &wrong, pb::TransactionResolution::Commit).await.unwrap_err();
    let status = error.downcast_ref::<tonic::Status>().ok_or_else(|| anyhow::anyhow!("{error}"))?;
    assert_eq!(status.code(), tonic::Code::NotFound, "{status}");
    assert!(status.message().contains("NOT-THE-ID"), "{status}");
    assert_eq!(metric(&broker, "rocketmq_transaction_resolved_total{how=\"commit\"").await?, 1);
    Ok(())
}

#[tokio::test]
async fn an_unknown_local_transaction_is_checked_back_and_the_checker_commits_it_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ns_dir = dir.path().join("ns");
    std::fs::create_dir_all(&ns_dir)?;
    let ns = NameServer::memory(&ns_dir, "").await?;
    // The first check 1.5 s after the half: the directly committed transaction below must not race one on a
    // loaded machine (its commit follows the half at once, but "at once" has taken over 300 ms there).
    let messaging = checks_after(1_500, 10);
    let options = BrokerOptions { nameservers: vec![ns.addr()], messaging, ..Default::default() };
    let broker = BrokerProcess::start(&dir.path().join("b"), &options).await?;
    let mut client = broker.client().await?;
    create_topic(&mut client).await?;

    let checks = Arc::new(AtomicU32::new(0));
    let mut config = ProducerConfig::new(vec![ns.addr()], GROUP);
    config.nameserver_client = Some(fast_client_config(vec![ns.addr()]));
    let seen = Arc::clone(&checks);
    config.transaction_checker = Some(TransactionChecker::new(move |m| {
        assert_eq!(m.queue.topic, TOPIC, "the check shows the real topic");
        assert_eq!(m.body.as_ref(), b"pay order 7");
        seen.fetch_add(1, Ordering::SeqCst);
        LocalTransactionState::Commit
    }));
    let producer = Producer::new(config)?;
    wait_until("the broker is routed", Duration::from_secs(20), || async {
        producer.writable_queues(TOPIC).await.is_ok_and(|q| !q.is_empty())
    })
    .await?;

    let sent =
        producer.send_transactional(Message::new(TOPIC, "pay order 7"), |_| LocalTransactionState::Unknown).await?;
    assert_eq!(sent.state, LocalTransactionState::Unknown);
    assert!(sent.committed.is_none());
    exactly(&mut client, 1).await?;
    assert!(checks.load(Ordering::SeqCst) >= 1, "resolved by a check-back");
    assert_eq!(bodies(&mut client).await?, vec!["pay order 7".to_owned()]);

    // A transaction the local transaction commits goes through at once, no check-back involved.
    let before = checks.load(Ordering::SeqCst);
    let direct =
        producer.send_transactional(Message::new(TOPIC, "pay order 8"), |_| LocalTransactionState::Commit).await?;
    assert!(direct.committed.is_some());
    exactly(&mut client, 2).await?;
    assert_eq!(checks.load(Ordering::SeqCst), before);
    Ok(())
}

#[tokio::test]
async fn without_a_live_producer_the_policy_applies_after_the_last_check() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = BrokerOptions { messaging: fast_checks(2), ..Default::default() };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    let mut client = broker.client().await?;
    create_topic(&mut client).await?;

    let half = send_half(&mut client, "", "abandoned").await?;
    wait_until("the policy resolves the abandoned half", Duration::from_secs(20), || async {
        metric(&broker, "rocketmq_transaction_resolved_total{how=\"policy_rollback\"").await.is_ok_and(|n| n == 1)
    })
    .await?;
    assert!(metric(&broker, "rocketmq_transaction_checks_total").await? >= 2, "checked before the policy");
    assert!(broker.log().contains("policy applied"), "the policy is logged");
    let answer = end(&mut client, &half, pb::TransactionResolution::Commit).await?;
    assert_eq!(answer.resolution, pb::TransactionResolution::Rollback as i32);
    assert_eq!(max_offset(&mut client).await?, 0);
    Ok(())
}

/// Waits for a check-back of `id` on a fresh check stream; returns its check count.
async fn checked(client: &mut BrokerClient<Channel>, id: &str) -> anyhow::Result<(u32, u64)> {
    let request = pb::WatchTransactionChecksRequest { producer_group: GROUP.into(), client_id: "test".into() };
    let mut stream = client.watch_transaction_checks(request).await?.into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let check = tokio::time::timeout_at(deadline, stream.message())
            .await
            .map_err(|_| anyhow::anyhow!("no check-back of {id}"))??
            .ok_or_else(|| anyhow::anyhow!("check stream closed"))?;
        if check.message.as_ref().is_some_and(|m| m.message_id == id) {
            return Ok((check.check_times, check.commit_log_offset));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_back_state_survives_restart_and_crash_and_nothing_commits_twice() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = BrokerOptions { messaging: fast_checks(1_000), ..Default::default() };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    let mut client = broker.client().await?;
    create_topic(&mut client).await?;
    let h1 = send_half(&mut client, "TXN-ONE", "one").await?;
    let h2 = send_half(&mut client, "TXN-TWO", "two").await?;

    let broker = broker.restart().await?;
    let mut client = broker.client().await?;
    let (times_before, handle) = checked(&mut client, "TXN-TWO").await?;
    assert_eq!(handle, h2.commit_log_offset);
    let (_, _) = checked(&mut client, "TXN-ONE").await?;
    assert_eq!(end(&mut client, &h1, pb::TransactionResolution::Commit).await?.resolution, 1);
    exactly(&mut client, 1).await?;

    let broker = broker.crash_and_restart().await?;
    let mut client = broker.client().await?;
    let (times_after, _) = checked(&mut client, "TXN-TWO").await?;
    assert!(times_after > times_before, "check counts are durable: {times_before} then {times_after}");
    let again = end(&mut client, &h1, pb::TransactionResolution::Commit).await?;
    assert_eq!(again.resolution, pb::TransactionResolution::Commit as i32);
    assert_eq!(end(&mut client, &h2, pb::TransactionResolution::Commit).await?.resolution, 1);
    exactly(&mut client, 2).await?;
    let mut got = bodies(&mut client).await?;
    got.sort();
    assert_eq!(got, vec!["one".to_owned(), "two".to_owned()], "each committed exactly once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_id_sent_twice_is_stored_once_also_after_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), &BrokerOptions::default()).await?;
    let mut client = broker.client().await?;
    create_topic(&mut client).await?;

    let first = send_plain(&mut client, "ORDER-1", "payload").await?;
    assert!(!first.duplicate);
    let second = send_plain(&mut client, "ORDER-1", "payload").await?;
    assert!(second.duplicate, "the retry is recognised");
    assert_eq!(
        (second.queue_id, second.queue_offset, second.commit_log_offset),
        (first.queue_id, first.queue_offset, first.commit_log_offset),
        "the first send's result"
    );
    let other = send_plain(&mut client, "", "no id").await?;
    let other_again = send_plain(&mut client, "", "no id").await?;
    assert!(!other.duplicate && !other_again.duplicate, "broker-assigned ids are never duplicates");
    exactly(&mut client, 3).await?;

    // An id twice in one request is refused.
    let request = pb::SendMessageRequest {
        topic: TOPIC.into(),
        queue_id: Some(0),
        messages: vec![outgoing("ORDER-2", "a"), outgoing("ORDER-2", "b")],
        ..Default::default()
    };
    let status = client.send_message(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // A batch mixing a retried id with new ones: answers in request order, only the new ones stored.
    let request = pb::SendMessageRequest {
        topic: TOPIC.into(),
        queue_id: Some(0),
        messages: vec![outgoing("ORDER-3", "c"), outgoing("ORDER-1", "payload"), outgoing("ORDER-4", "d")],
        ..Default::default()
    };
    let results = client.send_message(request).await?.into_inner().results;
    let flags: Vec<(&str, bool)> = results.iter().map(|r| (r.message_id.as_str(), r.duplicate)).collect();
    assert_eq!(flags, [("ORDER-3", false), ("ORDER-1", true), ("ORDER-4", false)]);
    assert_eq!(results[1].commit_log_offset, first.commit_log_offset, "the first copy's place");
    assert_eq!(results[2].queue_offset, results[0].queue_offset + 1, "the new ones stored side by side");
    exactly(&mut client, 5).await?;

    let broker = broker.restart().await?;
    let mut client = broker.client().await?;
    let third = send_plain(&mut client, "ORDER-1", "payload").await?;
    assert!(third.duplicate, "recognised after a restart within the window (the id index)");
    assert_eq!(third.commit_log_offset, first.commit_log_offset);
    let broker = broker.crash_and_restart().await?;
    let mut client = broker.client().await?;
    assert!(send_plain(&mut client, "ORDER-1", "payload").await?.duplicate, "and after a crash");
    exactly(&mut client, 5).await?;
    assert!(metric(&broker, "rocketmq_send_duplicates_total").await? >= 1);
    Ok(())
}
