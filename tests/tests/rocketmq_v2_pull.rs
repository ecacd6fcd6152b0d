//! The RocketMQ 5 pull-consumer RPCs (PullMessage, UpdateOffset, GetOffset, QueryOffset) against a real broker,
//! through the generated v2 client sending the headers the Java PullConsumer sends (no other official SDK has a
//! pull consumer). Messages come from the native comet.v1 API, and offsets are checked on both sides: the two APIs
//! share one offset store.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use comet_proto::apache::rocketmq::v2;
use comet_proto::apache::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use comet_proto::comet::v1 as pb;
use comet_proto::comet::v1::broker_client::BrokerClient;
use comet_tests::harness::broker_process::{BrokerOptions, BrokerProcess, dispatched};
use comet_tests::harness::prometheus::http_get;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use v2::pull_message_response::Content;

/// A v2 request with the Java SDK's headers (`language` overrides `x-mq-language`).
fn request<T>(message: T, language: &'static str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    let m = r.metadata_mut();
    m.insert("x-mq-client-id", MetadataValue::from_static("test-host@4242@0@pull"));
    m.insert("x-mq-language", MetadataValue::from_static(language));
    m.insert("x-mq-protocol", MetadataValue::from_static("v2"));
    m.insert("x-mq-client-version", MetadataValue::from_static("5.0.8"));
    r
}

fn resource(name: &str) -> Option<v2::Resource> {
    Some(v2::Resource { resource_namespace: String::new(), name: name.into() })
}

fn queue(topic: &str, id: i32) -> Option<v2::MessageQueue> {
    Some(v2::MessageQueue { topic: resource(topic), id, ..Default::default() })
}

fn code(status: Option<&v2::Status>) -> v2::Code {
    status.and_then(|s| v2::Code::try_from(s.code).ok()).unwrap_or(v2::Code::Unspecified)
}

/// A pull's answer: its status, the messages' bodies and offsets, and the next offset (if sent).
#[derive(Debug)]
struct Pulled {
    code: v2::Code,
    messages: Vec<v2::Message>,
    next: Option<i64>,
    /// Items in stream order, as letters: `s` status, `m` message, `n` next offset.
    layout: String,
}

impl Pulled {
    fn bodies(&self) -> Vec<String> {
        self.messages.iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()).collect()
    }
}

struct Pull<'a> {
    topic: &'a str,
    queue: i32,
    offset: i64,
    tags: &'a str,
    sql: bool,
    hold: Option<Duration>,
}

impl<'a> Pull<'a> {
    fn at(topic: &'a str, queue: i32, offset: i64) -> Self {
        Self { topic, queue, offset, tags: "*", sql: false, hold: None }
    }
}

async fn pull(client: &mut MessagingServiceClient<Channel>, p: Pull<'_>) -> anyhow::Result<Pulled> {
    let filter_type = if p.sql { v2::FilterType::Sql } else { v2::FilterType::Tag };
    let message = v2::PullMessageRequest {
        group: resource("pull-group"),
        message_queue: queue(p.topic, p.queue),
        offset: p.offset,
        batch_size: 32,
        filter_expression: Some(v2::FilterExpression { r#type: filter_type.into(), expression: p.tags.into() }),
        long_polling_timeout: p
            .hold
            .map(|d| prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }),
    };
    let mut r = request(message, "JAVA");
    // The Java client's deadline: the long poll plus its request timeout (3 s).
    r.set_timeout(p.hold.unwrap_or_default() + Duration::from_secs(3));
    let mut stream = client.pull_message(r).await?.into_inner();
    let mut out = Pulled { code: v2::Code::Unspecified, messages: Vec::new(), next: None, layout: String::new() };
    while let Some(item) = stream.message().await? {
        match item.content {
            Some(Content::Status(s)) => {
                out.code = code(Some(&s));
                out.layout.push('s');
            }
            Some(Content::Message(m)) => {
                out.messages.push(prost::Message::decode(m)?);
                out.layout.push('m');
            }
            Some(Content::NextOffset(n)) => {
                out.next = Some(n);
                out.layout.push('n');
            }
            None => anyhow::bail!("a pull stream item without content"),
        }
    }
    Ok(out)
}

async fn get_offset(
    client: &mut MessagingServiceClient<Channel>,
    topic: &str,
    id: i32,
    language: &'static str,
) -> anyhow::Result<(v2::Code, i64)> {
    let message = v2::GetOffsetRequest { group: resource("pull-group"), message_queue: queue(topic, id) };
    let r = client.get_offset(request(message, language)).await?.into_inner();
    Ok((code(r.status.as_ref()), r.offset))
}

async fn update_offset(
    client: &mut MessagingServiceClient<Channel>,
    topic: &str,
    id: i32,
    offset: i64,
) -> anyhow::Result<v2::Code> {
    let message = v2::UpdateOffsetRequest { group: resource("pull-group"), message_queue: queue(topic, id), offset };
    let r = client.update_offset(request(message, "JAVA")).await?.into_inner();
    Ok(code(r.status.as_ref()))
}

async fn query_offset(
    client: &mut MessagingServiceClient<Channel>,
    topic: &str,
    id: i32,
    policy: v2::QueryOffsetPolicy,
    at_ms: Option<u64>,
) -> anyhow::Result<(v2::Code, i64)> {
    let message = v2::QueryOffsetRequest {
        message_queue: queue(topic, id),
        query_offset_policy: policy.into(),
        timestamp: at_ms.map(|ms| prost_types::Timestamp { seconds: (ms / 1000) as i64, nanos: 0 }),
    };
    let r = client.query_offset(request(message, "JAVA")).await?.into_inner();
    Ok((code(r.status.as_ref()), r.offset))
}

async fn send(native: &mut BrokerClient<Channel>, topic: &str, tagged: &[(&str, &str)]) -> anyhow::Result<Vec<String>> {
    let messages = tagged
        .iter()
        .map(|(body, tag)| pb::OutgoingMessage {
            tags: (*tag).into(),
            body: body.as_bytes().to_vec().into(),
            ..Default::default()
        })
        .collect();
    let request = pb::SendMessageRequest { topic: topic.into(), queue_id: Some(0), messages, ..Default::default() };
    Ok(native.send_message(request).await?.into_inner().results.into_iter().map(|r| r.message_id).collect())
}

async fn start(
    dir: &std::path::Path,
) -> anyhow::Result<(BrokerProcess, BrokerClient<Channel>, MessagingServiceClient<Channel>)> {
    let broker = BrokerProcess::start(dir, &BrokerOptions::default()).await?;
    let mut native = broker.client().await?;
    let topic = pb::TopicConfig {
        name: "pull-topic".into(),
        read_queue_nums: 2,
        write_queue_nums: 2,
        message_type: pb::MessageType::Normal.into(),
        ..Default::default()
    };
    native.create_topic(pb::CreateTopicRequest { topic: Some(topic) }).await?;
    let v2 = MessagingServiceClient::connect(format!("http://{}", broker.addr())).await?;
    Ok((broker, native, v2))
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_consumer_reads_filters_long_polls_and_positions_a_queue() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_broker, mut native, mut v2) = start(dir.path()).await?;
    let before_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let ids =
        send(&mut native, "pull-topic", &[("m0", "a"), ("m1", "b"), ("m2", "a"), ("m3", "b"), ("m4", "a")]).await?;
    dispatched(&native, "pull-topic", 0..1, 5).await?;

    // Everything, in order, with the proxy's layout: status, messages, next offset.
    let all = pull(&mut v2, Pull::at("pull-topic", 0, 0)).await?;
    assert_eq!((all.code, all.layout.as_str(), all.next), (v2::Code::Ok, "smmmmmn", Some(5)), "{all:?}");
    assert_eq!(all.bodies(), ["m0", "m1", "m2", "m3", "m4"]);
    for (i, m) in all.messages.iter().enumerate() {
        let sp = m.system_properties.as_ref().expect("system properties");
        assert_eq!(sp.message_id, ids[i]);
        assert_eq!((sp.queue_id, sp.queue_offset), (0, Some(i as i64)));
        assert_eq!(m.topic.as_ref().map(|t| t.name.as_str()), Some("pull-topic"));
        let digest = sp.body_digest.as_ref().expect("digest");
        assert_eq!(digest.r#type, i32::from(v2::DigestType::Md5));
    }
    // From the middle, and with a tag filter.
    let tail = pull(&mut v2, Pull::at("pull-topic", 0, 3)).await?;
    assert_eq!((tail.bodies(), tail.next), (vec!["m3".to_owned(), "m4".to_owned()], Some(5)));
    let a = pull(&mut v2, Pull { tags: "a", ..Pull::at("pull-topic", 0, 0) }).await?;
    assert_eq!((a.bodies(), a.next), (vec!["m0".to_owned(), "m2".to_owned(), "m4".to_owned()], Some(5)));
    let b_or_c = pull(&mut v2, Pull { tags: "c||b", ..Pull::at("pull-topic", 0, 0) }).await?;
    assert_eq!(b_or_c.bodies(), ["m1", "m3"]);

    // At the end: nothing new after the hold is MESSAGE_NOT_FOUND with where to continue.
    let empty = pull(&mut v2, Pull { hold: Some(Duration::from_millis(200)), ..Pull::at("pull-topic", 0, 5) }).await?;
    assert_eq!((empty.code, empty.layout.as_str(), empty.next), (v2::Code::MessageNotFound, "sn", Some(5)));
    // Only non-matching messages behind the filter: the same, past them.
    let none = pull(&mut v2, Pull { tags: "zzz", ..Pull::at("pull-topic", 0, 0) }).await?;
    assert_eq!((none.code, none.next), (v2::Code::MessageNotFound, Some(5)));
    // A queue that never received a message.
    let fresh = pull(&mut v2, Pull::at("pull-topic", 1, 0)).await?;
    assert_eq!((fresh.code, fresh.next), (v2::Code::MessageNotFound, Some(0)));

    // A long poll at the end returns the next message once it is sent.
    let mut parked = v2.clone();
    let waiting = tokio::spawn(async move {
        pull(&mut parked, Pull { hold: Some(Duration::from_secs(15)), ..Pull::at("pull-topic", 0, 5) }).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&mut native, "pull-topic", &[("m5", "a")]).await?;
    let woke = waiting.await??;
    assert_eq!((woke.code, woke.bodies(), woke.next), (v2::Code::Ok, vec!["m5".to_owned()], Some(6)));

    // Offsets out of the stored range are ILLEGAL_OFFSET, with where to continue.
    let beyond = pull(&mut v2, Pull::at("pull-topic", 0, 100)).await?;
    assert_eq!((beyond.code, beyond.layout.as_str(), beyond.next), (v2::Code::IllegalOffset, "sn", Some(6)));
    let negative = pull(&mut v2, Pull::at("pull-topic", 0, -1)).await?;
    assert_eq!((negative.code, negative.layout.as_str()), (v2::Code::IllegalOffset, "s"));

    // QueryOffset: first, end, and by store time.
    use v2::QueryOffsetPolicy::{Beginning, End, Timestamp};
    assert_eq!(query_offset(&mut v2, "pull-topic", 0, Beginning, None).await?, (v2::Code::Ok, 0));
    assert_eq!(query_offset(&mut v2, "pull-topic", 0, End, None).await?, (v2::Code::Ok, 6));
    assert_eq!(query_offset(&mut v2, "pull-topic", 1, End, None).await?, (v2::Code::Ok, 0));
    let (c, first) = query_offset(&mut v2, "pull-topic", 0, Timestamp, Some(before_ms.saturating_sub(60_000))).await?;
    assert_eq!((c, first), (v2::Code::Ok, 0));
    let later = before_ms + 3_600_000;
    assert_eq!(query_offset(&mut v2, "pull-topic", 0, Timestamp, Some(later)).await?, (v2::Code::Ok, 6));
    assert_eq!(query_offset(&mut v2, "pull-topic", 0, Timestamp, None).await?.0, v2::Code::BadRequest);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_consumer_offsets_are_the_native_consumer_offsets() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_broker, mut native, mut v2) = start(dir.path()).await?;
    send(&mut native, "pull-topic", &[("m0", ""), ("m1", ""), ("m2", ""), ("m3", ""), ("m4", "")]).await?;
    dispatched(&native, "pull-topic", 0..1, 5).await?;

    // Never committed: OFFSET_NOT_FOUND, which the Rust 5.0.0 crate cannot decode, so it gets NOT_FOUND.
    assert_eq!(get_offset(&mut v2, "pull-topic", 0, "JAVA").await?.0, v2::Code::OffsetNotFound);
    assert_eq!(get_offset(&mut v2, "pull-topic", 0, "RUST").await?.0, v2::Code::NotFound);

    // A v2 commit is the native committed offset: QueryConsumerOffset and DescribeGroup (`comet group describe`).
    assert_eq!(update_offset(&mut v2, "pull-topic", 0, 3).await?, v2::Code::Ok);
    assert_eq!(get_offset(&mut v2, "pull-topic", 0, "JAVA").await?, (v2::Code::Ok, 3));
    let q = pb::QueryConsumerOffsetRequest { group: "pull-group".into(), topic: "pull-topic".into(), queue_id: 0 };
    let committed = native.query_consumer_offset(q.clone()).await?.into_inner();
    assert_eq!((committed.found, committed.offset), (true, 3));
    let described = native.describe_group(pb::DescribeGroupRequest { group: "pull-group".into() }).await?.into_inner();
    let row = described.offsets.iter().find(|o| o.topic == "pull-topic" && o.queue_id == 0).expect("offset row");
    assert_eq!((row.committed_offset, row.max_offset, row.lag), (3, 5, 2));

    // A native commit is what GetOffset answers.
    let commit = pb::CommitConsumerOffsetRequest {
        group: "pull-group".into(),
        topic: "pull-topic".into(),
        queue_id: 0,
        offset: 4,
    };
    native.commit_consumer_offset(commit).await?;
    assert_eq!(get_offset(&mut v2, "pull-topic", 0, "JAVA").await?, (v2::Code::Ok, 4));

    // Beyond the end or negative: ILLEGAL_OFFSET (BAD_REQUEST for Rust), and nothing changes.
    assert_eq!(update_offset(&mut v2, "pull-topic", 0, 6).await?, v2::Code::IllegalOffset);
    assert_eq!(update_offset(&mut v2, "pull-topic", 0, -1).await?, v2::Code::IllegalOffset);
    let message =
        v2::UpdateOffsetRequest { group: resource("pull-group"), message_queue: queue("pull-topic", 0), offset: 9 };
    let rust = v2.update_offset(request(message, "RUST")).await?.into_inner();
    assert_eq!(code(rust.status.as_ref()), v2::Code::BadRequest);
    assert_eq!(native.query_consumer_offset(q).await?.into_inner().offset, 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_consumer_bad_input_gets_the_documented_codes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (broker, _native, mut v2) = start(dir.path()).await?;

    let unknown = pull(&mut v2, Pull::at("no-such-topic", 0, 0)).await?;
    assert_eq!((unknown.code, unknown.layout.as_str()), (v2::Code::TopicNotFound, "s"));
    assert_eq!(get_offset(&mut v2, "no-such-topic", 0, "JAVA").await?.0, v2::Code::TopicNotFound);
    assert_eq!(update_offset(&mut v2, "no-such-topic", 0, 0).await?, v2::Code::TopicNotFound);
    let end = query_offset(&mut v2, "no-such-topic", 0, v2::QueryOffsetPolicy::End, None).await?;
    assert_eq!(end.0, v2::Code::TopicNotFound);

    for bad_queue in [2, -1] {
        assert_eq!(pull(&mut v2, Pull::at("pull-topic", bad_queue, 0)).await?.code, v2::Code::BadRequest);
        assert_eq!(get_offset(&mut v2, "pull-topic", bad_queue, "JAVA").await?.0, v2::Code::BadRequest);
        assert_eq!(update_offset(&mut v2, "pull-topic", bad_queue, 0).await?, v2::Code::BadRequest);
        let q = query_offset(&mut v2, "pull-topic", bad_queue, v2::QueryOffsetPolicy::Beginning, None).await?;
        assert_eq!(q.0, v2::Code::BadRequest);
    }

    let sql = pull(&mut v2, Pull { sql: true, tags: "a > 1", ..Pull::at("pull-topic", 0, 0) }).await?;
    assert_eq!(sql.code, v2::Code::Unsupported);
    let bad_filter = pull(&mut v2, Pull { tags: "||", ..Pull::at("pull-topic", 0, 0) }).await?;
    assert_eq!(bad_filter.code, v2::Code::IllegalFilterExpression);
    let bad_topic = pull(&mut v2, Pull::at("bad topic", 0, 0)).await?;
    assert_eq!(bad_topic.code, v2::Code::IllegalTopic);

    // The RPC latency metric labels v2 calls by their service and method, apart from comet.v1's PullMessage.
    let (code, text) = http_get(broker.metrics_addr(), "/metrics").await?;
    assert_eq!(code, 200);
    let v2_pulls = text.lines().find(|l| {
        l.starts_with("rocketmq_rpc_latency_count{")
            && l.contains("request_code=\"PullMessage\"")
            && l.contains("rpc_service=\"apache.rocketmq.v2.MessagingService\"")
    });
    assert!(v2_pulls.is_some_and(|l| l.ends_with(" 6")), "{text}");
    assert!(text.contains("request_code=\"GetOffset\""), "{text}");
    Ok(())
}
