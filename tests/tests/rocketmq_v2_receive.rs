//! The RocketMQ 5 receive model against a real broker: ReceiveMessage (long poll over every queue, batches, tag
//! filters), receipt handles, AckMessage, ChangeInvisibleDuration, redelivery with a higher attempt, dead letters
//! after the group's last attempt and on request, FIFO groups, durability across SIGTERM and kill -9, and the
//! exact status codes of bad input, through the generated v2 tonic client; the official Python SDK's
//! SimpleConsumer and PushConsumer (tests/python/consumer_*.py) receive what the native API sent.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use anyhow::Context as _;
use comet_proto::apache::rocketmq::v2;
use comet_proto::apache::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use comet_proto::comet::v1 as pb;
use comet_tests::harness::broker_process::{BrokerOptions, BrokerProcess};
use comet_tests::harness::python_sdk::{self, SdkScript};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Short times so redelivery and long polls take fractions of a second.
const FAST: &str =
    "  min-invisible-ms: 100\n  default-invisible-ms: 3000\n  long-poll-min-ms: 100\n  long-poll-max-ms: 3000\n";

async fn v2_client(broker: &BrokerProcess) -> anyhow::Result<MessagingServiceClient<Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", broker.addr()))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await?;
    Ok(MessagingServiceClient::new(channel))
}

fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("x-mq-client-id", tonic::metadata::MetadataValue::from_static("test@1@0@rcv"));
    request.metadata_mut().insert("x-mq-language", tonic::metadata::MetadataValue::from_static("PYTHON"));
    request
}

fn resource(name: &str) -> Option<v2::Resource> {
    Some(v2::Resource { resource_namespace: String::new(), name: name.into() })
}

fn code_of(status: Option<&v2::Status>) -> v2::Code {
    status.and_then(|s| v2::Code::try_from(s.code).ok()).unwrap_or(v2::Code::Unspecified)
}

async fn create_topic(broker: &BrokerProcess, name: &str, queues: u32) -> anyhow::Result<()> {
    let topic =
        pb::TopicConfig { name: name.into(), read_queue_nums: queues, write_queue_nums: queues, ..Default::default() };
    broker.client().await?.create_topic(pb::CreateTopicRequest { topic: Some(topic) }).await?;
    Ok(())
}

async fn create_group(broker: &BrokerProcess, name: &str, retry_max_times: u32, fifo: bool) -> anyhow::Result<()> {
    let group = pb::GroupConfig {
        name: name.into(),
        consume_enable: true,
        consume_broadcast_enable: true,
        retry_max_times,
        fifo,
        ..Default::default()
    };
    broker.client().await?.create_group(pb::CreateGroupRequest { group: Some(group) }).await?;
    Ok(())
}

/// Sends `bodies` with the native API (round robin over the queues unless `queue` is set), each with `tag` and,
/// when given, a message group (the sharding-key property RocketMQ 5 FIFO uses).
async fn send_native(
    broker: &BrokerProcess,
    topic: &str,
    queue: Option<u32>,
    tag: &str,
    message_group: Option<&str>,
    bodies: &[String],
) -> anyhow::Result<Vec<u64>> {
    let mut client = broker.client().await?;
    let mut commit_log_offsets = Vec::new();
    for body in bodies {
        let mut properties = HashMap::new();
        if let Some(g) = message_group {
            properties.insert("__SHARDINGKEY".to_owned(), g.to_owned());
        }
        let message = pb::OutgoingMessage {
            tags: tag.into(),
            properties,
            body: body.clone().into_bytes().into(),
            ..Default::default()
        };
        let sent = client
            .send_message(pb::SendMessageRequest {
                topic: topic.into(),
                queue_id: queue,
                messages: vec![message],
                ..Default::default()
            })
            .await?
            .into_inner();
        commit_log_offsets.extend(sent.results.iter().map(|r| r.commit_log_offset));
    }
    Ok(commit_log_offsets)
}

/// One ReceiveMessage: its status code and messages, checking the stream layout on the way.
async fn receive(
    client: &mut MessagingServiceClient<Channel>,
    group: &str,
    topic: &str,
    batch: i32,
    invisible: Option<Duration>,
    filter: Option<v2::FilterExpression>,
    poll: Duration,
) -> anyhow::Result<(v2::Code, Vec<v2::Message>)> {
    let req = v2::ReceiveMessageRequest {
        group: resource(group),
        message_queue: Some(v2::MessageQueue { topic: resource(topic), id: -1, ..Default::default() }),
        filter_expression: filter,
        batch_size: batch,
        invisible_duration: invisible
            .map(|d| prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }),
        auto_renew: invisible.is_none(),
        long_polling_timeout: Some(prost_types::Duration {
            seconds: poll.as_secs() as i64,
            nanos: poll.subsec_nanos() as i32,
        }),
        attempt_id: None,
    };
    let mut r = request(req);
    r.set_timeout(poll + Duration::from_secs(3));
    let mut stream = client.receive_message(r).await?.into_inner();
    let mut code = None;
    let mut messages = Vec::new();
    let mut timestamp = false;
    while let Some(item) = stream.next().await {
        match item?.content {
            Some(v2::receive_message_response::Content::Status(s)) => {
                anyhow::ensure!(code.is_none(), "two statuses");
                code = Some(code_of(Some(&s)));
            }
            Some(v2::receive_message_response::Content::Message(m)) => messages.push(prost::Message::decode(m)?),
            Some(v2::receive_message_response::Content::DeliveryTimestamp(_)) => timestamp = true,
            None => anyhow::bail!("an item without content"),
        }
    }
    anyhow::ensure!(timestamp, "no delivery_timestamp item");
    Ok((code.unwrap_or(v2::Code::Unspecified), messages))
}

/// Receives until `n` messages came (or `within` passed).
async fn receive_n(
    client: &mut MessagingServiceClient<Channel>,
    group: &str,
    topic: &str,
    n: usize,
    invisible: Duration,
    within: Duration,
) -> anyhow::Result<Vec<v2::Message>> {
    let deadline = tokio::time::Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n && tokio::time::Instant::now() < deadline {
        let batch = i32::try_from(n - out.len())?;
        let (_, got) = receive(client, group, topic, batch, Some(invisible), None, Duration::from_secs(1)).await?;
        out.extend(got);
    }
    Ok(out)
}

fn body(m: &v2::Message) -> String {
    String::from_utf8_lossy(&m.body).into_owned()
}

fn sys(m: &v2::Message) -> v2::SystemProperties {
    m.system_properties.clone().unwrap_or_default()
}

fn handle(m: &v2::Message) -> String {
    sys(m).receipt_handle.clone().unwrap_or_default()
}

async fn ack(
    client: &mut MessagingServiceClient<Channel>,
    group: &str,
    topic: &str,
    handles: &[String],
) -> anyhow::Result<v2::AckMessageResponse> {
    let entries = handles
        .iter()
        .map(|h| v2::AckMessageEntry { message_id: String::new(), receipt_handle: h.clone(), lite_topic: None })
        .collect();
    Ok(client
        .ack_message(request(v2::AckMessageRequest { group: resource(group), topic: resource(topic), entries }))
        .await?
        .into_inner())
}

async fn change(
    client: &mut MessagingServiceClient<Channel>,
    group: &str,
    topic: &str,
    handle: &str,
    invisible: Duration,
) -> anyhow::Result<v2::ChangeInvisibleDurationResponse> {
    let req = v2::ChangeInvisibleDurationRequest {
        group: resource(group),
        topic: resource(topic),
        receipt_handle: handle.into(),
        invisible_duration: Some(prost_types::Duration {
            seconds: invisible.as_secs() as i64,
            nanos: invisible.subsec_nanos() as i32,
        }),
        ..Default::default()
    };
    Ok(client.change_invisible_duration(request(req)).await?.into_inner())
}

/// The group's committed offsets of every queue of the topic, summed (native API).
async fn committed(broker: &BrokerProcess, group: &str, topic: &str, queues: u32) -> anyhow::Result<u64> {
    let mut client = broker.client().await?;
    let mut sum = 0;
    for q in 0..queues {
        let r = client
            .query_consumer_offset(pb::QueryConsumerOffsetRequest {
                group: group.into(),
                topic: topic.into(),
                queue_id: q,
            })
            .await?
            .into_inner();
        sum += r.offset;
    }
    Ok(sum)
}

/// Every body in queue 0 of `topic` (native pull), e.g. a dead-letter topic.
async fn bodies_in(broker: &BrokerProcess, topic: &str) -> anyhow::Result<Vec<(String, u32)>> {
    let r = broker
        .client()
        .await?
        .pull_message(pb::PullMessageRequest {
            group: "inspector".into(),
            topic: topic.into(),
            queue_id: 0,
            offset: 0,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.messages.iter().map(|m| (String::from_utf8_lossy(&m.body).into_owned(), m.reconsume_times)).collect())
}

/// Receive over all queues, ack, stale handles, ChangeInvisibleDuration's new handle, redelivery with a higher
/// attempt, MESSAGE_NOT_FOUND when empty, and the committed offsets following the acknowledgements.
#[tokio::test]
async fn receive_ack_change_invisible_and_redelivery() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker =
        BrokerProcess::start(dir.path(), &BrokerOptions { rocketmq_v2: FAST.into(), ..Default::default() }).await?;
    create_topic(&broker, "rcv", 4).await?;
    let bodies: Vec<String> = (0..8).map(|i| format!("m{i}")).collect();
    send_native(&broker, "rcv", None, "t", None, &bodies).await?;
    let mut client = v2_client(&broker).await?;

    let got = receive_n(&mut client, "g", "rcv", 8, Duration::from_secs(30), Duration::from_secs(10)).await?;
    let mut seen: Vec<String> = got.iter().map(body).collect();
    seen.sort();
    assert_eq!(seen, bodies, "every queue is served, each message once");
    let queues: HashSet<i32> = got.iter().map(|m| sys(m).queue_id).collect();
    assert_eq!(queues.len(), 4, "from all four queues although the request named none");
    for m in &got {
        let p = sys(m);
        assert_eq!(p.delivery_attempt, Some(1));
        assert!(!handle(m).is_empty());
        assert_eq!(p.invisible_duration.as_ref().map(|d| d.seconds), Some(30));
        assert_eq!(p.body_digest.as_ref().map(|d| d.checksum.len()), Some(32), "an MD5 digest");
        assert!(p.queue_offset.is_some());
    }
    let by_body: BTreeMap<String, &v2::Message> = got.iter().map(|m| (body(m), m)).collect();

    for i in 0..6 {
        let r = ack(&mut client, "g", "rcv", &[handle(by_body[&format!("m{i}")])]).await?;
        assert_eq!(code_of(r.status.as_ref()), v2::Code::Ok, "{r:?}");
    }
    let again = ack(&mut client, "g", "rcv", &[handle(by_body["m0"])]).await?;
    assert_eq!(code_of(again.status.as_ref()), v2::Code::InvalidReceiptHandle, "an acknowledged handle is stale");
    let mixed = ack(&mut client, "g", "rcv", &[handle(by_body["m6"]), "garbage".into()]).await?;
    assert_eq!(code_of(mixed.status.as_ref()), v2::Code::MultipleResults);
    assert_eq!(code_of(mixed.entries[0].status.as_ref()), v2::Code::Ok);
    assert_eq!(code_of(mixed.entries[1].status.as_ref()), v2::Code::InvalidReceiptHandle);

    // m7: a new invisible time gives a new handle and kills the old one.
    let old = handle(by_body["m7"]);
    let changed = change(&mut client, "g", "rcv", &old, Duration::from_millis(300)).await?;
    assert_eq!(code_of(changed.status.as_ref()), v2::Code::Ok);
    assert!(!changed.receipt_handle.is_empty() && changed.receipt_handle != old);
    let stale = ack(&mut client, "g", "rcv", &[old]).await?;
    assert_eq!(code_of(stale.status.as_ref()), v2::Code::InvalidReceiptHandle);

    // After the 300 ms it comes back, attempt 2; the handle of the change is then stale too.
    let back = receive_n(&mut client, "g", "rcv", 1, Duration::from_secs(30), Duration::from_secs(10)).await?;
    assert_eq!(back.iter().map(body).collect::<Vec<_>>(), vec!["m7"]);
    assert_eq!(sys(&back[0]).delivery_attempt, Some(2));
    let stale = ack(&mut client, "g", "rcv", &[changed.receipt_handle]).await?;
    assert_eq!(code_of(stale.status.as_ref()), v2::Code::InvalidReceiptHandle);
    let done = ack(&mut client, "g", "rcv", &[handle(&back[0])]).await?;
    assert_eq!(code_of(done.status.as_ref()), v2::Code::Ok);

    let (code, none) =
        receive(&mut client, "g", "rcv", 8, Some(Duration::from_secs(30)), None, Duration::from_millis(200)).await?;
    assert_eq!((code, none.len()), (v2::Code::MessageNotFound, 0));
    assert_eq!(committed(&broker, "g", "rcv", 4).await?, 8, "the committed offsets passed every acknowledged message");

    // Another group gets everything again, independently.
    let other = receive_n(&mut client, "g2", "rcv", 8, Duration::from_secs(30), Duration::from_secs(10)).await?;
    assert_eq!(other.len(), 8);
    Ok(())
}

/// A parked receive answers as soon as a message arrives.
#[tokio::test]
async fn a_parked_receive_wakes_on_arrival() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker =
        BrokerProcess::start(dir.path(), &BrokerOptions { rocketmq_v2: FAST.into(), ..Default::default() }).await?;
    create_topic(&broker, "park", 2).await?;
    let mut client = v2_client(&broker).await?;
    let (code, _) =
        receive(&mut client, "g", "park", 4, Some(Duration::from_secs(30)), None, Duration::from_millis(100)).await?;
    assert_eq!(code, v2::Code::MessageNotFound);
    let parked = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let got =
            receive(&mut client, "g", "park", 4, Some(Duration::from_secs(30)), None, Duration::from_secs(3)).await;
        (got, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_native(&broker, "park", Some(1), "t", None, &["late".to_owned()]).await?;
    let (got, _elapsed) = parked.await?;
    let (code, messages) = got?;
    assert_eq!(code, v2::Code::Ok);
    assert_eq!(messages.iter().map(body).collect::<Vec<_>>(), vec!["late"]);
    Ok(())
}

/// An operator moving the group's committed offset back (to consume again) is followed by the receive window:
/// acknowledgements of deliveries made before the reset do not overwrite it, and everything from the reset point
/// is delivered again.
#[tokio::test]
async fn an_offset_reset_is_not_overwritten_by_later_acknowledgements() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker =
        BrokerProcess::start(dir.path(), &BrokerOptions { rocketmq_v2: FAST.into(), ..Default::default() }).await?;
    create_topic(&broker, "reset", 1).await?;
    let bodies: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    send_native(&broker, "reset", Some(0), "t", None, &bodies).await?;
    let mut client = v2_client(&broker).await?;
    let got = receive_n(&mut client, "g", "reset", 10, Duration::from_secs(30), Duration::from_secs(10)).await?;
    assert_eq!(got.iter().map(body).collect::<Vec<_>>(), bodies);
    let handles: Vec<String> = got.iter().map(handle).collect();
    ack(&mut client, "g", "reset", &handles[..5]).await?;
    assert_eq!(committed(&broker, "g", "reset", 1).await?, 5);

    let request = pb::CommitConsumerOffsetRequest { group: "g".into(), topic: "reset".into(), queue_id: 0, offset: 0 };
    broker.client().await?.commit_consumer_offset(request).await?;
    ack(&mut client, "g", "reset", &handles[5..]).await?;
    assert_eq!(committed(&broker, "g", "reset", 1).await?, 0, "the reset stands");
    let again = receive_n(&mut client, "g", "reset", 10, Duration::from_secs(30), Duration::from_secs(10)).await?;
    assert_eq!(again.iter().map(body).collect::<Vec<_>>(), bodies, "consumed again from the reset point");
    Ok(())
}

/// Tag filters; a message whose next attempt would exceed the group's maximum goes to `%DLQ%<group>` with its
/// attempt count; ForwardMessageToDeadLetterQueue moves one at once; filtered-out messages do not hold back the
/// committed offset.
#[tokio::test]
async fn filters_and_dead_letters() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker =
        BrokerProcess::start(dir.path(), &BrokerOptions { rocketmq_v2: FAST.into(), ..Default::default() }).await?;
    create_topic(&broker, "dl", 1).await?;
    create_group(&broker, "dg", 1, false).await?; // 2 attempts in all
    send_native(&broker, "dl", None, "a", None, &["a0".to_owned()]).await?;
    send_native(&broker, "dl", None, "b", None, &["b0".to_owned()]).await?;
    send_native(&broker, "dl", None, "a", None, &["a1".to_owned()]).await?;
    // All three dispatched, so one receive sees both matches.
    comet_tests::harness::wait_until("three stored messages", Duration::from_secs(10), || async {
        bodies_in(&broker, "dl").await.is_ok_and(|b| b.len() == 3)
    })
    .await?;
    let mut client = v2_client(&broker).await?;
    let only_a = Some(v2::FilterExpression { r#type: v2::FilterType::Tag.into(), expression: "a||x".into() });
    let short = Some(Duration::from_millis(200));

    let (code, first) = receive(&mut client, "dg", "dl", 10, short, only_a.clone(), Duration::from_secs(1)).await?;
    assert_eq!(code, v2::Code::Ok);
    assert_eq!(first.iter().map(body).collect::<Vec<_>>(), vec!["a0", "a1"], "b0 filtered out");
    // a1 goes to the DLQ on request.
    let a1 = first.iter().find(|m| body(m) == "a1").expect("a1");
    let forward = client
        .forward_message_to_dead_letter_queue(request(v2::ForwardMessageToDeadLetterQueueRequest {
            group: resource("dg"),
            topic: resource("dl"),
            receipt_handle: handle(a1),
            message_id: sys(a1).message_id.clone(),
            delivery_attempt: 1,
            max_delivery_attempts: 2,
            lite_topic: None,
        }))
        .await?
        .into_inner();
    assert_eq!(code_of(forward.status.as_ref()), v2::Code::Ok);
    // a0 is not acknowledged: attempt 2, then the DLQ instead of attempt 3.
    let again = receive_n(&mut client, "dg", "dl", 1, Duration::from_millis(200), Duration::from_secs(10)).await?;
    assert_eq!(again.iter().map(body).collect::<Vec<_>>(), vec!["a0"]);
    assert_eq!(sys(&again[0]).delivery_attempt, Some(2));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, none) = receive(&mut client, "dg", "dl", 10, short, only_a, Duration::from_millis(500)).await?;
    assert_eq!((code, none.len()), (v2::Code::MessageNotFound, 0), "{none:?}");
    comet_tests::harness::wait_until("two dead letters", Duration::from_secs(10), || async {
        bodies_in(&broker, "%DLQ%dg").await.is_ok_and(|b| b.len() == 2)
    })
    .await?;
    let mut dead = bodies_in(&broker, "%DLQ%dg").await?;
    dead.sort();
    assert_eq!(dead, vec![("a0".to_owned(), 2), ("a1".to_owned(), 1)]);
    assert_eq!(committed(&broker, "dg", "dl", 1).await?, 3, "everything is done, the filtered message included");
    Ok(())
}

/// A FIFO group gets one message of each message group at a time; the next one after the acknowledgement.
#[tokio::test]
async fn fifo_groups_deliver_one_message_per_message_group_at_a_time() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker =
        BrokerProcess::start(dir.path(), &BrokerOptions { rocketmq_v2: FAST.into(), ..Default::default() }).await?;
    create_topic(&broker, "ff", 1).await?;
    create_group(&broker, "fg", 16, true).await?;
    send_native(&broker, "ff", Some(0), "t", Some("A"), &["A1".to_owned(), "A2".to_owned()]).await?;
    send_native(&broker, "ff", Some(0), "t", Some("B"), &["B1".to_owned(), "B2".to_owned()]).await?;
    let mut client = v2_client(&broker).await?;
    let inv = Some(Duration::from_secs(30));
    let names = |ms: &[v2::Message]| ms.iter().map(body).collect::<Vec<_>>();

    let mut first = receive_n(&mut client, "fg", "ff", 2, Duration::from_secs(30), Duration::from_secs(5)).await?;
    first.sort_by_key(body);
    assert_eq!(names(&first), vec!["A1", "B1"]);
    assert_eq!(sys(&first[0]).message_group.as_deref(), Some("A"));
    let (code, _) = receive(&mut client, "fg", "ff", 10, inv, None, Duration::from_millis(200)).await?;
    assert_eq!(code, v2::Code::MessageNotFound, "A2 and B2 wait for their predecessors");
    ack(&mut client, "fg", "ff", &[handle(&first[0])]).await?;
    let (_, next) = receive(&mut client, "fg", "ff", 10, inv, None, Duration::from_secs(1)).await?;
    assert_eq!(names(&next), vec!["A2"]);
    ack(&mut client, "fg", "ff", &[handle(&first[1]), handle(&next[0])]).await?;
    let (_, last) = receive(&mut client, "fg", "ff", 10, inv, None, Duration::from_secs(1)).await?;
    assert_eq!(names(&last), vec!["B2"]);
    Ok(())
}

/// `max-inflight-per-queue` stops reading a queue until acknowledgements come.
#[tokio::test]
async fn unacknowledged_messages_apply_back_pressure() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = BrokerOptions { rocketmq_v2: format!("{FAST}  max-inflight-per-queue: 3\n"), ..Default::default() };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    create_topic(&broker, "bp", 1).await?;
    let bodies: Vec<String> = (0..5).map(|i| format!("b{i}")).collect();
    send_native(&broker, "bp", None, "t", None, &bodies).await?;
    let mut client = v2_client(&broker).await?;
    let inv = Some(Duration::from_secs(30));
    let first = receive_n(&mut client, "g", "bp", 3, Duration::from_secs(30), Duration::from_secs(5)).await?;
    assert_eq!(first.iter().map(body).collect::<Vec<_>>(), vec!["b0", "b1", "b2"]);
    let (code, _) = receive(&mut client, "g", "bp", 10, inv, None, Duration::from_millis(200)).await?;
    assert_eq!(code, v2::Code::MessageNotFound, "three unacknowledged: the queue is not read further");
    ack(&mut client, "g", "bp", &[handle(&first[1])]).await?;
    let (_, next) = receive(&mut client, "g", "bp", 10, inv, None, Duration::from_secs(1)).await?;
    assert_eq!(next.iter().map(body).collect::<Vec<_>>(), vec!["b3"], "one acknowledged, one more read");
    Ok(())
}

/// Without an invisible duration a delivery is auto-renewed while its client lives; when the client says it is
/// leaving (NotifyClientTermination) the message comes back.
#[tokio::test]
async fn auto_renewal_lasts_while_the_client_lives() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = BrokerOptions {
        rocketmq_v2:
            "  min-invisible-ms: 100\n  default-invisible-ms: 300\n  long-poll-min-ms: 100\n  long-poll-max-ms: 3000\n"
                .into(),
        ..Default::default()
    };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    create_topic(&broker, "ar", 1).await?;
    send_native(&broker, "ar", None, "t", None, &["r0".to_owned()]).await?;
    let mut client = v2_client(&broker).await?;
    let mut got = Vec::new();
    for _ in 0..20 {
        let (_, m) = receive(&mut client, "g", "ar", 1, None, None, Duration::from_millis(500)).await?;
        got.extend(m);
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(got.iter().map(body).collect::<Vec<_>>(), vec!["r0"]);
    assert_eq!(sys(&got[0]).invisible_duration.as_ref().map(|d| d.nanos), Some(300_000_000));
    // Well past three slices of 300 ms: still renewed (the receives keep the client alive).
    let (code, none) = receive(&mut client, "g", "ar", 1, None, None, Duration::from_millis(1_200)).await?;
    assert_eq!((code, none.len()), (v2::Code::MessageNotFound, 0));
    let bye = v2::NotifyClientTerminationRequest { group: resource("g") };
    client.notify_client_termination(request(bye)).await?;
    // Another client receives it once the slice runs out.
    let mut other = tonic::Request::new(v2::ReceiveMessageRequest {
        group: resource("g"),
        message_queue: Some(v2::MessageQueue { topic: resource("ar"), id: -1, ..Default::default() }),
        batch_size: 1,
        auto_renew: true,
        long_polling_timeout: Some(prost_types::Duration { seconds: 2, nanos: 0 }),
        ..Default::default()
    });
    other.metadata_mut().insert("x-mq-client-id", tonic::metadata::MetadataValue::from_static("other@2@0@rcv"));
    let items: Vec<_> = client.receive_message(other).await?.into_inner().collect::<Result<Vec<_>, _>>().await?;
    let bodies: Vec<String> = items
        .iter()
        .filter_map(|i| match &i.content {
            Some(v2::receive_message_response::Content::Message(m)) => {
                Some(body(&prost::Message::decode(m.clone()).expect("a delivered message decodes")))
            }
            _ => None,
        })
        .collect();
    assert_eq!(bodies, vec!["r0"]);
    Ok(())
}

/// Exact codes: invalid invisible time, garbage receipt handles, unknown topic, SQL filter, bad tag expression,
/// a deadline too short for the minimum long poll.
#[tokio::test]
async fn bad_input_gets_the_documented_codes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = BrokerOptions {
        rocketmq_v2: "  long-poll-min-ms: 500\n  long-poll-max-ms: 1000\n".into(),
        ..Default::default()
    };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    create_topic(&broker, "bad", 1).await?;
    let mut client = v2_client(&broker).await?;
    let poll = Duration::from_millis(500);
    let (code, _) = receive(&mut client, "g", "bad", 1, Some(Duration::from_millis(1)), None, poll).await?;
    assert_eq!(code, v2::Code::IllegalInvisibleTime, "below the 10 s minimum");
    let (code, _) = receive(&mut client, "g", "bad", 1, Some(Duration::from_secs(13 * 3600)), None, poll).await?;
    assert_eq!(code, v2::Code::IllegalInvisibleTime, "above the 12 h maximum");
    let (code, _) = receive(&mut client, "g", "no-such-topic", 1, None, None, poll).await?;
    assert_eq!(code, v2::Code::TopicNotFound);
    let sql = Some(v2::FilterExpression { r#type: v2::FilterType::Sql.into(), expression: "a > 1".into() });
    let (code, _) = receive(&mut client, "g", "bad", 1, None, sql, poll).await?;
    assert_eq!(code, v2::Code::Unsupported);
    let tags = Some(v2::FilterExpression { r#type: v2::FilterType::Tag.into(), expression: "||".into() });
    let (code, _) = receive(&mut client, "g", "bad", 1, None, tags, poll).await?;
    assert_eq!(code, v2::Code::IllegalFilterExpression);

    // A deadline too short for the minimum long poll; clients before 5.0.3 get BAD_REQUEST, as from the proxy.
    for (version, expected) in [("5.1.2", v2::Code::IllegalPollingTime), ("5.0.2", v2::Code::BadRequest)] {
        let mut short = request(v2::ReceiveMessageRequest {
            group: resource("g"),
            message_queue: Some(v2::MessageQueue { topic: resource("bad"), id: -1, ..Default::default() }),
            batch_size: 1,
            auto_renew: true,
            ..Default::default()
        });
        short.set_timeout(Duration::from_millis(600));
        short.metadata_mut().insert("x-mq-client-version", version.parse()?);
        let mut stream = client.receive_message(short).await?.into_inner();
        let first = stream.next().await.expect("an item")?;
        let Some(v2::receive_message_response::Content::Status(s)) = first.content else { anyhow::bail!("{first:?}") };
        assert_eq!(code_of(Some(&s)), expected, "client version {version}");
    }

    for garbage in ["", "garbage", "1.2.3.4", &"9".repeat(300), "0.0.1.00000000"] {
        let r = ack(&mut client, "g", "bad", &[garbage.to_owned()]).await?;
        assert_eq!(code_of(r.entries[0].status.as_ref()), v2::Code::InvalidReceiptHandle, "{garbage:?}");
        let r = change(&mut client, "g", "bad", garbage, Duration::from_secs(10)).await?;
        assert_eq!(code_of(r.status.as_ref()), v2::Code::InvalidReceiptHandle, "{garbage:?}");
    }
    Ok(())
}

/// SIGTERM and kill -9 with messages in flight: every unacknowledged message comes back, no acknowledged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_lose_nothing_and_bring_back_nothing_acknowledged() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = BrokerOptions { rocketmq_v2: FAST.into(), ..Default::default() };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    create_topic(&broker, "dur", 2).await?;
    let bodies: Vec<String> = (0..10).map(|i| format!("d{i}")).collect();
    send_native(&broker, "dur", None, "t", None, &bodies).await?;
    let mut client = v2_client(&broker).await?;
    let inv = Duration::from_millis(500);
    let got = receive_n(&mut client, "g", "dur", 10, inv, Duration::from_secs(10)).await?;
    assert_eq!(got.len(), 10);
    let (acked, open): (Vec<_>, Vec<_>) =
        got.iter().partition(|m| body(m).trim_start_matches('d').parse::<u32>().unwrap_or(0) % 2 == 0);
    for m in &acked {
        let r = ack(&mut client, "g", "dur", &[handle(m)]).await?;
        assert_eq!(code_of(r.status.as_ref()), v2::Code::Ok);
    }
    let mut expect: Vec<String> = open.iter().map(|m| body(m)).collect();
    expect.sort();

    // SIGTERM: the odd ones come back (after their invisible time), the even ones never.
    let broker = broker.restart().await?;
    let mut client = v2_client(&broker).await?;
    let back = receive_n(&mut client, "g", "dur", 5, inv, Duration::from_secs(10)).await?;
    let mut names: Vec<String> = back.iter().map(body).collect();
    names.sort();
    assert_eq!(names, expect);
    // Acknowledge two, then kill -9 at once: the journal holds those acknowledgements.
    let (now_acked, still_open) = back.split_at(2);
    for m in now_acked {
        let r = ack(&mut client, "g", "dur", &[handle(m)]).await?;
        assert_eq!(code_of(r.status.as_ref()), v2::Code::Ok);
    }
    let mut expect: Vec<String> = still_open.iter().map(body).collect();
    expect.sort();
    let broker = broker.crash_and_restart().await?;
    let mut client = v2_client(&broker).await?;
    let back = receive_n(&mut client, "g", "dur", 3, inv, Duration::from_secs(10)).await?;
    let mut names: Vec<String> = back.iter().map(body).collect();
    names.sort();
    assert_eq!(names, expect, "after kill -9: exactly the unacknowledged ones");
    for m in &back {
        ack(&mut client, "g", "dur", &[handle(m)]).await?;
    }
    tokio::time::sleep(inv).await;
    let (code, extra) = receive(&mut client, "g", "dur", 10, Some(inv), None, Duration::from_millis(700)).await?;
    assert_eq!((code, extra.len()), (v2::Code::MessageNotFound, 0), "{:?}", extra.iter().map(body).collect::<Vec<_>>());
    Ok(())
}

/// A machine crash with async flush can lose the CommitLog's tail, messages the receive window had already read
/// and delivered among it: after the restart the queue's lost offsets name new messages, which are delivered
/// (none skipped), and nothing of the lost ones (or garbage from their old positions) is.
#[tokio::test]
async fn a_lost_commit_log_tail_is_read_again_from_the_queues_new_end() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = BrokerOptions { rocketmq_v2: FAST.into(), ..Default::default() };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    create_topic(&broker, "tail", 1).await?;
    let bodies: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    let positions = send_native(&broker, "tail", Some(0), "t", None, &bodies).await?;
    let mut client = v2_client(&broker).await?;
    let got = receive_n(&mut client, "g", "tail", 10, Duration::from_secs(30), Duration::from_secs(10)).await?;
    assert_eq!(got.len(), 10);
    let handles: Vec<String> = got.iter().map(handle).collect();
    ack(&mut client, "g", "tail", &handles[..5]).await?;
    // The periodic snapshot (every 5 s) records the window: read to 10, the first five done, five in flight.
    let store = broker.store_dir();
    let snapshot = store.join("config").join("receive-windows.json");
    let recorded = || {
        let text = std::fs::read_to_string(&snapshot).unwrap_or_default();
        let saved: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let windows = saved["windows"].as_array().cloned().unwrap_or_default();
        let done =
            windows.iter().any(|w| w["topic"] == "tail" && w["window"]["base"] == 5 && w["window"]["read_to"] == 10);
        async move { done }
    };
    comet_tests::harness::wait_until("the acknowledged window in a snapshot", Duration::from_secs(30), recorded)
        .await?;
    drop(client);
    let mut broker = broker;
    broker.kill();

    // What the disk held after the machine crash: nothing from m5 on (zeros, as pages never written back read).
    let lost_from = positions[5];
    let mut segments: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(store.join("commitlog"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u64>().ok()?, e.path())))
        .filter(|(start, _)| *start <= lost_from)
        .collect();
    segments.sort();
    let (start, path) = segments.pop().context("no commit-log segment")?;
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new().write(true).open(&path)?;
        let len = file.metadata()?.len();
        let from = lost_from - start;
        file.seek(SeekFrom::Start(from))?;
        file.write_all(&vec![0u8; usize::try_from((len - from).min(1 << 20))?])?;
        file.sync_all()?;
    }
    // Nor its checkpoint (written after the flush that never came): start-up rebuilds from the whole log.
    std::fs::remove_file(store.join("checkpoint"))?;

    let broker = broker.start_again().await?;
    let fresh: Vec<String> = (0..3).map(|i| format!("n{i}")).collect();
    send_native(&broker, "tail", Some(0), "t", None, &fresh).await?;
    let mut client = v2_client(&broker).await?;
    let after = receive_n(&mut client, "g", "tail", 3, Duration::from_secs(30), Duration::from_secs(10)).await?;
    assert_eq!(after.iter().map(body).collect::<Vec<_>>(), fresh, "the new messages at the lost offsets");
    let (code, extra) =
        receive(&mut client, "g", "tail", 10, Some(Duration::from_secs(30)), None, Duration::from_millis(500)).await?;
    assert_eq!((code, extra.len()), (v2::Code::MessageNotFound, 0), "{:?}", extra.iter().map(body).collect::<Vec<_>>());
    Ok(())
}

/// The official SimpleConsumer: receive, ack, change the invisible time (the new handle works, the old one
/// fails), and an unacknowledged message comes back with a higher attempt. The messages come from the native API.
#[tokio::test]
async fn python_simple_consumer_receives_acks_and_changes_invisible_time() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = BrokerOptions { rocketmq_v2: FAST.into(), ..Default::default() };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    create_topic(&broker, "py-simple", 2).await?;
    let bodies: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
    send_native(&broker, "py-simple", None, "t", None, &bodies).await?;
    let args = vec![broker.addr(), "py-simple".into(), "py-simple-group".into(), "6".into()];
    let result = python_sdk::run(&dir.path().join("py"), "consumer_simple.py", &args, Duration::from_secs(50)).await?;
    assert_eq!(result["ok"], true, "{result}");
    let mut received: Vec<String> = serde_json::from_value(result["received"].clone())?;
    received.sort();
    assert_eq!(received, bodies);
    assert_eq!(result["old_handle_failed"], true, "{result}");
    assert_eq!(result["redelivered"], "s0", "{result}");
    assert!(result["redelivered_attempt"].as_i64().unwrap_or(0) >= 2, "{result}");
    assert_eq!(committed(&broker, "py-simple-group", "py-simple", 2).await?, 6);
    Ok(())
}

/// The official SimpleConsumer never acknowledging: the message comes back with attempts 1, 2, 3, then (the
/// group allows 2 retries) it is in `%DLQ%<group>` with its attempt count and never delivered again.
#[tokio::test]
async fn python_unacknowledged_messages_end_in_the_dead_letter_queue() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = BrokerOptions { rocketmq_v2: FAST.into(), ..Default::default() };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    create_topic(&broker, "py-dlq", 1).await?;
    create_group(&broker, "py-dlq-group", 2, false).await?;
    send_native(&broker, "py-dlq", None, "t", None, &["x".to_owned()]).await?;
    let args = vec![broker.addr(), "py-dlq".into(), "py-dlq-group".into(), "3".into(), "25".into()];
    let result = python_sdk::run(&dir.path().join("py"), "consumer_unacked.py", &args, Duration::from_secs(40)).await?;
    assert_eq!(result["ok"], true, "{result}");
    let deliveries: Vec<(String, i64)> = serde_json::from_value(result["deliveries"].clone())?;
    let expected: Vec<(String, i64)> = (1..=3).map(|a| ("x".to_owned(), a)).collect();
    assert_eq!(deliveries, expected, "three attempts, then no more");
    comet_tests::harness::wait_until("the dead letter", Duration::from_secs(10), || async {
        bodies_in(&broker, "%DLQ%py-dlq-group").await.is_ok_and(|b| b == vec![("x".to_owned(), 3)])
    })
    .await?;
    assert_eq!(committed(&broker, "py-dlq-group", "py-dlq", 1).await?, 1);
    Ok(())
}

/// Reads the `consumed` events of push-consumer scripts until `n` arrived in all (or `within` passed).
async fn consumed(scripts: &mut [SdkScript], n: usize, within: Duration) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut deadline = tokio::time::Instant::now() + within;
    let mut events = Vec::new();
    let mut complete = false;
    while tokio::time::Instant::now() < deadline {
        for s in scripts.iter_mut() {
            if let Ok(Some(v)) = s.next(Duration::from_millis(50)).await
                && v.get("consumed").is_some()
            {
                events.push(v);
            }
        }
        if events.len() >= n && !complete {
            // A little longer, so a duplicate would show.
            complete = true;
            deadline = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
        }
    }
    Ok(events)
}

/// Two official PushConsumers of one group share the topic: every message consumed exactly once between them.
#[tokio::test]
async fn python_push_consumers_share_a_group_exactly_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = BrokerOptions { rocketmq_v2: FAST.into(), ..Default::default() };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    create_topic(&broker, "py-push", 4).await?;
    let args = |name: &str| vec![broker.addr(), "py-push".into(), "py-push-group".into(), name.into(), "ok".into()];
    let py = dir.path().join("py");
    let mut scripts = vec![
        SdkScript::spawn(&py, "consumer_push.py", &args("c1"))?,
        SdkScript::spawn(&py, "consumer_push.py", &args("c2"))?,
    ];
    for s in &mut scripts {
        let started = s.next(Duration::from_secs(30)).await?;
        anyhow::ensure!(started.as_ref().is_some_and(|v| v["started"] == true), "{started:?}");
    }
    let bodies: Vec<String> = (0..40).map(|i| format!("p{i}")).collect();
    send_native(&broker, "py-push", None, "t", None, &bodies).await?;
    let events = consumed(&mut scripts, 40, Duration::from_secs(30)).await?;
    let mut got: Vec<String> = events.iter().filter_map(|e| e["body"].as_str().map(str::to_owned)).collect();
    got.sort();
    let mut want = bodies.clone();
    want.sort();
    assert_eq!(got, want, "each message once");
    assert!(events.iter().all(|e| e["attempt"] == 1), "no redelivery: {events:?}");
    Ok(())
}

/// A PushConsumer whose listener fails a message gets it again (nack by ChangeInvisibleDuration with the
/// backoff) with a higher attempt and then succeeds.
#[tokio::test]
async fn python_push_consumer_failure_is_redelivered() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The nack backoff the SDK uses comes from the group's retry delays (the settings reply).
    let options = BrokerOptions {
        rocketmq_v2: FAST.into(),
        messaging: "  retry-delays-ms: [500]\n".into(),
        ..Default::default()
    };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    create_topic(&broker, "py-fail", 2).await?;
    let args = vec![broker.addr(), "py-fail".into(), "py-fail-group".into(), "c1".into(), "fail-first".into()];
    let mut script = SdkScript::spawn(&dir.path().join("py"), "consumer_push.py", &args)?;
    let started = script.next(Duration::from_secs(30)).await?;
    anyhow::ensure!(started.as_ref().is_some_and(|v| v["started"] == true), "{started:?}");
    let bodies: Vec<String> = (0..3).map(|i| format!("f{i}")).collect();
    send_native(&broker, "py-fail", None, "t", None, &bodies).await?;
    let events = consumed(std::slice::from_mut(&mut script), 6, Duration::from_secs(30)).await?;
    for b in &bodies {
        let attempts: Vec<i64> =
            events.iter().filter(|e| e["body"] == b.as_str()).filter_map(|e| e["attempt"].as_i64()).collect();
        assert_eq!(attempts, vec![1, 2], "{b}: failed once, then consumed: {events:?}");
    }
    Ok(())
}

/// A FIFO group's PushConsumer sees each message group's messages in order.
#[tokio::test]
async fn python_fifo_push_consumer_keeps_message_group_order() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = BrokerOptions { rocketmq_v2: FAST.into(), ..Default::default() };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    create_topic(&broker, "py-fifo", 2).await?;
    create_group(&broker, "py-fifo-group", 16, true).await?;
    let args = vec![broker.addr(), "py-fifo".into(), "py-fifo-group".into(), "c1".into(), "ok".into()];
    let mut script = SdkScript::spawn(&dir.path().join("py"), "consumer_push.py", &args)?;
    let started = script.next(Duration::from_secs(30)).await?;
    anyhow::ensure!(started.as_ref().is_some_and(|v| v["started"] == true), "{started:?}");
    for (q, g) in [(0, "A"), (1, "B"), (0, "C")] {
        let bodies: Vec<String> = (0..8).map(|i| format!("{g}-{i}")).collect();
        send_native(&broker, "py-fifo", Some(q), "t", Some(g), &bodies).await?;
    }
    let events = consumed(std::slice::from_mut(&mut script), 24, Duration::from_secs(30)).await?;
    let mut per_group: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for e in &events {
        let b = e["body"].as_str().unwrap_or_default();
        let (g, i) = b.split_once('-').unwrap_or((b, "0"));
        per_group.entry(g.to_owned()).or_default().push(i.parse()?);
    }
    for g in ["A", "B", "C"] {
        assert_eq!(per_group.get(g), Some(&(0..8).collect::<Vec<_>>()), "group {g} in order, once: {events:?}");
    }
    Ok(())
}
