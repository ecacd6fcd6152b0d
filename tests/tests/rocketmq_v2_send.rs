//! The RocketMQ 5 API's routing, Telemetry and send side against a real broker: the official Python SDK
//! (Producer, SimpleConsumer, transactions with a checker) and, for exact status codes and settings replies, the
//! generated v2 tonic client.

use std::time::Duration;

use comet_proto::apache::rocketmq::v2;
use comet_proto::apache::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use comet_proto::comet::v1 as pb;
use comet_tests::harness::broker_process::{BrokerOptions, BrokerProcess};
use comet_tests::harness::python_sdk;
use tonic::transport::Channel;

/// A v2 client of the broker.
async fn v2_client(broker: &BrokerProcess) -> anyhow::Result<MessagingServiceClient<Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", broker.addr()))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await?;
    Ok(MessagingServiceClient::new(channel))
}

/// `message` with the headers the SDKs send (client id, Python language); client ids are ASCII.
fn with_client<T>(message: T, client_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let m = request.metadata_mut();
    if let Ok(id) = client_id.parse() {
        m.insert("x-mq-client-id", id);
    }
    m.insert("x-mq-language", tonic::metadata::MetadataValue::from_static("PYTHON"));
    request
}

fn resource(name: &str) -> Option<v2::Resource> {
    Some(v2::Resource { resource_namespace: String::new(), name: name.into() })
}

fn code(status: Option<&v2::Status>) -> v2::Code {
    status.and_then(|s| v2::Code::try_from(s.code).ok()).unwrap_or(v2::Code::Unspecified)
}

/// Creates a typed topic with the native admin RPC.
async fn create_typed_topic(broker: &BrokerProcess, name: &str, t: pb::MessageType, queues: u32) -> anyhow::Result<()> {
    let topic = pb::TopicConfig {
        name: name.into(),
        read_queue_nums: queues,
        write_queue_nums: queues,
        message_type: t.into(),
        ..Default::default()
    };
    broker.client().await?.create_topic(pb::CreateTopicRequest { topic: Some(topic) }).await?;
    Ok(())
}

/// The official Producer and SimpleConsumer start (route, settings handshake, heartbeat) and shut down cleanly
/// against an auto-created topic.
#[tokio::test]
async fn python_producer_and_simple_consumer_start_and_stop() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), &BrokerOptions::default()).await?;
    let args = vec![broker.addr(), "route-topic".into(), "route-group".into()];
    let result = python_sdk::run(&dir.path().join("py"), "route_clients.py", &args, Duration::from_secs(40)).await?;
    assert_eq!(result["ok"], true, "{result}");
    Ok(())
}

/// QueryRoute lists every queue with this broker's endpoint, the topic's permission and accepted types; an
/// unknown topic is TOPIC_NOT_FOUND without auto-creation; a missing client id where state is needed is
/// CLIENT_ID_REQUIRED.
#[tokio::test]
async fn routes_and_assignments_describe_the_topic() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = BrokerOptions { no_auto_create: true, ..Default::default() };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    let mut client = v2_client(&broker).await?;
    create_typed_topic(&broker, "fifo-topic", pb::MessageType::Fifo, 3).await?;
    let route = client
        .query_route(with_client(v2::QueryRouteRequest { topic: resource("fifo-topic"), endpoints: None }, "c1"))
        .await?
        .into_inner();
    assert_eq!(code(route.status.as_ref()), v2::Code::Ok);
    assert_eq!(route.message_queues.len(), 3);
    let (host, port) = broker.addr().rsplit_once(':').map(|(h, p)| (h.to_owned(), p.parse::<i32>())).unwrap();
    for (i, q) in route.message_queues.iter().enumerate() {
        assert_eq!(q.id, i as i32);
        assert_eq!(q.topic, resource("fifo-topic"));
        assert_eq!(q.permission, i32::from(v2::Permission::ReadWrite));
        assert_eq!(q.accept_message_types, vec![i32::from(v2::MessageType::Fifo)]);
        let b = q.broker.as_ref().unwrap();
        assert_eq!(b.id, 0);
        let e = b.endpoints.as_ref().unwrap();
        assert_eq!(e.scheme, i32::from(v2::AddressScheme::IPv4));
        assert_eq!(e.addresses, vec![v2::Address { host: host.clone(), port: port.clone()? }]);
    }

    let unknown = client
        .query_route(with_client(v2::QueryRouteRequest { topic: resource("nope"), endpoints: None }, "c1"))
        .await?
        .into_inner();
    assert_eq!(code(unknown.status.as_ref()), v2::Code::TopicNotFound);

    // Non-FIFO group: one assignment for the broker, any queue (-1).
    let assign = |group: &str| v2::QueryAssignmentRequest {
        topic: resource("fifo-topic"),
        group: resource(group),
        endpoints: None,
    };
    let a = client.query_assignment(with_client(assign("plain"), "c1")).await?.into_inner();
    assert_eq!(code(a.status.as_ref()), v2::Code::Ok);
    let ids: Vec<i32> = a.assignments.iter().map(|a| a.message_queue.as_ref().unwrap().id).collect();
    assert_eq!(ids, vec![-1]);
    // FIFO group: one per readable queue.
    let group = pb::GroupConfig {
        name: "ordered".into(),
        consume_enable: true,
        retry_max_times: 16,
        fifo: true,
        ..Default::default()
    };
    broker.client().await?.create_group(pb::CreateGroupRequest { group: Some(group) }).await?;
    let a = client.query_assignment(with_client(assign("ordered"), "c1")).await?.into_inner();
    let ids: Vec<i32> = a.assignments.iter().map(|a| a.message_queue.as_ref().unwrap().id).collect();
    assert_eq!(ids, vec![0, 1, 2]);

    let hb = client.heartbeat(tonic::Request::new(v2::HeartbeatRequest::default())).await?.into_inner();
    assert_eq!(code(hb.status.as_ref()), v2::Code::ClientIdRequired);
    let hb = client.heartbeat(with_client(v2::HeartbeatRequest::default(), "c1")).await?.into_inner();
    assert_eq!(code(hb.status.as_ref()), v2::Code::Ok, "heartbeat before any settings is fine");
    let bye = client
        .notify_client_termination(with_client(v2::NotifyClientTerminationRequest::default(), "c1"))
        .await?
        .into_inner();
    assert_eq!(code(bye.status.as_ref()), v2::Code::Ok);
    Ok(())
}

/// With NameServers, QueryRoute at either broker lists the queues of every master serving the topic, each with
/// its own broker's endpoint; a topic only the other broker holds is routed there, not auto-created here.
#[tokio::test]
async fn routes_list_every_broker_serving_the_topic() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ns = comet_tests::harness::nameserver::NameServer::memory(&dir.path().join("ns"), "").await?;
    let start = |name: &str| BrokerOptions {
        nameservers: vec![ns.addr()],
        broker_extra: format!("  broker-name: {name}\n  register-interval-ms: 300\n"),
        ..Default::default()
    };
    let a = BrokerProcess::start(&dir.path().join("a"), &start("broker-a")).await?;
    let b = BrokerProcess::start(&dir.path().join("b"), &start("broker-b")).await?;
    create_typed_topic(&a, "shared", pb::MessageType::Mixed, 2).await?;
    create_typed_topic(&b, "shared", pb::MessageType::Mixed, 3).await?;
    create_typed_topic(&b, "only-b", pb::MessageType::Normal, 1).await?;
    let ns_client = ns.client()?;
    comet_tests::harness::wait_until("both brokers registered", Duration::from_secs(15), || async {
        ns_client.query_route("shared").await.is_ok_and(|r| r.queues.len() == 2)
            && ns_client.query_route("only-b").await.is_ok()
    })
    .await?;
    let mut client = v2_client(&a).await?;
    let route = |topic: &str| with_client(v2::QueryRouteRequest { topic: resource(topic), endpoints: None }, "c");
    let shared = client.query_route(route("shared")).await?.into_inner();
    assert_eq!(code(shared.status.as_ref()), v2::Code::Ok);
    let per_broker = |r: &v2::QueryRouteResponse| {
        let mut m = std::collections::BTreeMap::<String, (usize, i32)>::new();
        for q in &r.message_queues {
            let b = q.broker.as_ref().unwrap();
            let port = b.endpoints.as_ref().unwrap().addresses[0].port;
            let e = m.entry(b.name.clone()).or_insert((0, port));
            e.0 += 1;
        }
        m
    };
    let port = |p: &BrokerProcess| p.addr().rsplit_once(':').and_then(|(_, p)| p.parse::<i32>().ok()).unwrap_or(0);
    let got = per_broker(&shared);
    assert_eq!(got.get("broker-a"), Some(&(2, port(&a))), "{got:?}");
    assert_eq!(got.get("broker-b"), Some(&(3, port(&b))), "{got:?}");
    let only_b = client.query_route(route("only-b")).await?.into_inner();
    let got = per_broker(&only_b);
    assert_eq!(got.keys().collect::<Vec<_>>(), vec!["broker-b"], "routed to its broker, not created here");
    assert_eq!(only_b.message_queues[0].accept_message_types, vec![i32::from(v2::MessageType::Normal)]);
    Ok(())
}

/// Opens a Telemetry stream as `client_id`, sends `settings` and answers the first reply.
async fn settings_reply(
    client: &mut MessagingServiceClient<Channel>,
    client_id: &str,
    settings: v2::Settings,
) -> anyhow::Result<(v2::TelemetryCommand, tokio::sync::mpsc::Sender<v2::TelemetryCommand>)> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies =
        client.telemetry(with_client(tokio_stream::wrappers::ReceiverStream::new(rx), client_id)).await?.into_inner();
    tx.send(v2::TelemetryCommand { status: None, command: Some(v2::telemetry_command::Command::Settings(settings)) })
        .await?;
    let reply = tokio::time::timeout(Duration::from_secs(10), replies.message())
        .await??
        .ok_or_else(|| anyhow::anyhow!("telemetry stream ended without a reply"))?;
    // The stream stays open while the client keeps its side open.
    tokio::spawn(async move { while let Ok(Some(_)) = replies.message().await {} });
    Ok((reply, tx))
}

/// The settings reply merges the server's settings as the proxy does: producers get the exponential backoff,
/// the body limit and type validation; consumers the batch size, long-poll time, the group's FIFO flag and its
/// redelivery backoff; metrics are off. Settings without publishing or subscription end the stream.
#[tokio::test]
async fn telemetry_settings_replies_for_producers_and_consumers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = BrokerOptions {
        rocketmq_v2: "  receive-batch-max: 16\n  long-poll-max-ms: 15000\n".into(),
        ..Default::default()
    };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    let mut client = v2_client(&broker).await?;

    let producer = v2::Settings {
        client_type: Some(v2::ClientType::Producer.into()),
        pub_sub: Some(v2::settings::PubSub::Publishing(v2::Publishing {
            topics: vec![resource("t").unwrap()],
            max_body_size: 0,
            validate_message_type: false,
        })),
        ..Default::default()
    };
    let (reply, _keep) = settings_reply(&mut client, "producer-1", producer).await?;
    assert_eq!(code(reply.status.as_ref()), v2::Code::Ok);
    let Some(v2::telemetry_command::Command::Settings(s)) = reply.command else { panic!("no settings: {reply:?}") };
    let Some(v2::settings::PubSub::Publishing(p)) = s.pub_sub else { panic!("no publishing") };
    assert_eq!(p.max_body_size, 4 << 20, "store.max-message-size");
    assert!(p.validate_message_type);
    assert_eq!(p.topics, vec![resource("t").unwrap()], "the client's own settings are kept");
    let backoff = s.backoff_policy.unwrap();
    assert_eq!(backoff.max_attempts, 3);
    let Some(v2::retry_policy::Strategy::ExponentialBackoff(e)) = backoff.strategy else { panic!("not exponential") };
    assert_eq!(e.initial.map(|d| (d.seconds, d.nanos)), Some((0, 10_000_000)));
    assert_eq!(e.max.map(|d| (d.seconds, d.nanos)), Some((1, 0)));
    assert_eq!(e.multiplier, 2.0);
    assert_eq!(s.metric.map(|m| m.on), Some(false));

    let group = pb::GroupConfig {
        name: "fifo-group".into(),
        consume_enable: true,
        retry_max_times: 3,
        retry_delays_millis: vec![1_000, 2_000],
        fifo: true,
        ..Default::default()
    };
    broker.client().await?.create_group(pb::CreateGroupRequest { group: Some(group) }).await?;
    let consumer = |group: &str| v2::Settings {
        client_type: Some(v2::ClientType::PushConsumer.into()),
        pub_sub: Some(v2::settings::PubSub::Subscription(v2::Subscription {
            group: resource(group),
            ..Default::default()
        })),
        ..Default::default()
    };
    let (reply, _keep2) = settings_reply(&mut client, "consumer-1", consumer("fifo-group")).await?;
    assert_eq!(code(reply.status.as_ref()), v2::Code::Ok);
    let Some(v2::telemetry_command::Command::Settings(s)) = reply.command else { panic!("no settings") };
    let Some(v2::settings::PubSub::Subscription(sub)) = &s.pub_sub else { panic!("no subscription") };
    assert_eq!(sub.fifo, Some(true));
    assert_eq!(sub.receive_batch_size, Some(16));
    assert_eq!(sub.long_polling_timeout.map(|d| (d.seconds, d.nanos)), Some((15, 0)));
    let backoff = s.backoff_policy.clone().unwrap();
    assert_eq!(backoff.max_attempts, 4, "retry-max-times + 1");
    let Some(v2::retry_policy::Strategy::CustomizedBackoff(c)) = backoff.strategy else { panic!("not customized") };
    assert_eq!(c.next.into_iter().map(|d| (d.seconds, d.nanos)).collect::<Vec<_>>(), vec![(1, 0), (2, 0)]);

    let (reply, _keep3) = settings_reply(&mut client, "consumer-2", consumer("unknown-group")).await?;
    let Some(v2::telemetry_command::Command::Settings(s)) = reply.command else { panic!("no settings") };
    let Some(v2::settings::PubSub::Subscription(sub)) = &s.pub_sub else { panic!("no subscription") };
    assert_eq!(sub.fifo, Some(false), "an unknown group is not FIFO");
    assert_eq!(s.backoff_policy.unwrap().max_attempts, 17);

    // No pub_sub: the stream ends with INVALID_ARGUMENT.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies =
        client.telemetry(with_client(tokio_stream::wrappers::ReceiverStream::new(rx), "bad")).await?.into_inner();
    tx.send(v2::TelemetryCommand {
        status: None,
        command: Some(v2::telemetry_command::Command::Settings(v2::Settings::default())),
    })
    .await?;
    let err = tokio::time::timeout(Duration::from_secs(10), replies.message()).await?.expect_err("must fail");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    Ok(())
}

/// Every message of `topic` in queues `0..queues`, read with the native PullMessage (the mixed-API path).
async fn pull_all(broker: &BrokerProcess, topic: &str, queues: u32) -> anyhow::Result<Vec<pb::StoredMessage>> {
    let mut client = broker.client().await?;
    let mut all = Vec::new();
    for queue_id in 0..queues {
        let request = pb::PullMessageRequest {
            group: "v2-readers".into(),
            topic: topic.into(),
            queue_id,
            offset: 0,
            max_count: 1000,
            max_bytes: 0,
            max_wait_millis: 0,
            tag_expression: String::new(),
        };
        all.extend(client.pull_message(request).await?.into_inner().messages);
    }
    Ok(all)
}

/// [`pull_all`] once at least `n` messages are there (the store makes appended messages readable a moment
/// later), or what is there after 10 s.
async fn pull_at_least(
    broker: &BrokerProcess,
    topic: &str,
    queues: u32,
    n: usize,
) -> anyhow::Result<Vec<pb::StoredMessage>> {
    let _ = comet_tests::harness::wait_until(&format!("{n} messages in {topic}"), Duration::from_secs(10), || async {
        pull_all(broker, topic, queues).await.is_ok_and(|m| m.len() >= n)
    })
    .await;
    pull_all(broker, topic, queues).await
}

/// The `sent` lines of a producer script: body → (message id, transaction id).
async fn run_producer(
    dir: &std::path::Path,
    broker: &BrokerProcess,
    args: &[&str],
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut full = vec![args[0].to_owned(), broker.addr()];
    full.extend(args[1..].iter().map(|a| (*a).to_owned()));
    let mut script = python_sdk::SdkScript::spawn(&dir.join("py"), "producer.py", &full)?;
    let mut lines = Vec::new();
    while let Some(line) = script.next(Duration::from_secs(45)).await? {
        if line.get("ok").is_some() {
            return Ok(lines);
        }
        lines.push(line);
    }
    anyhow::bail!("producer.py {args:?} ended without ok: {lines:?}\n{}", script.log())
}

fn text(v: &serde_json::Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

/// NORMAL: the client's message id is echoed and stored; body, tag, keys and properties arrive intact through
/// the native API.
#[tokio::test]
async fn python_normal_messages_arrive_intact() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), &BrokerOptions::default()).await?;
    create_typed_topic(&broker, "normal-t", pb::MessageType::Normal, 2).await?;
    let sent = run_producer(dir.path(), &broker, &["normal", "normal-t", "6"]).await?;
    assert_eq!(sent.len(), 6);
    let stored = pull_at_least(&broker, "normal-t", 2, 6).await?;
    assert_eq!(stored.len(), 6, "nothing lost, nothing invented");
    for (i, s) in sent.iter().enumerate() {
        let id = text(s, "message_id");
        assert_eq!(id.len(), 34, "a V1 client id: {id}");
        let m = stored.iter().find(|m| m.message_id == id).ok_or_else(|| anyhow::anyhow!("{id} not stored"))?;
        assert_eq!(m.body.as_ref(), format!("normal-{i}").as_bytes());
        assert_eq!(m.tags, format!("tag-{}", i % 2));
        assert_eq!(m.keys, vec![format!("key-{i}")]);
        assert_eq!(m.properties.get("i"), Some(&i.to_string()));
        assert_eq!(i64::try_from(m.queue_offset)?, s["offset"].as_i64().unwrap_or(-1), "offset answered");
    }
    let queues: std::collections::BTreeSet<u32> = stored.iter().map(|m| m.queue_id).collect();
    assert_eq!(queues.len(), 2, "round robin over the write queues");
    Ok(())
}

/// FIFO: each message group's messages are in one queue, in send order, with the group kept.
#[tokio::test]
async fn python_fifo_groups_stay_in_one_queue_in_order() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), &BrokerOptions::default()).await?;
    create_typed_topic(&broker, "fifo-t", pb::MessageType::Fifo, 4).await?;
    let sent = run_producer(dir.path(), &broker, &["fifo", "fifo-t", "3", "5"]).await?;
    assert_eq!(sent.len(), 15);
    let stored = pull_at_least(&broker, "fifo-t", 4, 15).await?;
    assert_eq!(stored.len(), 15);
    for g in 0..3 {
        let group = format!("g{g}");
        let mine: Vec<&pb::StoredMessage> =
            stored.iter().filter(|m| m.properties.get("__SHARDINGKEY") == Some(&group)).collect();
        let queues: std::collections::BTreeSet<u32> = mine.iter().map(|m| m.queue_id).collect();
        assert_eq!(queues.len(), 1, "group {group} in one queue: {queues:?}");
        let mut in_queue = mine.clone();
        in_queue.sort_by_key(|m| m.queue_offset);
        let bodies: Vec<String> = in_queue.iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()).collect();
        let expected: Vec<String> = (0..5).map(|i| format!("{group}-{i}")).collect();
        assert_eq!(bodies, expected, "send order within the group");
    }
    Ok(())
}

/// DELAY: not in the topic before its delivery time, there after it.
#[tokio::test]
async fn python_delay_message_is_invisible_until_due() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), &BrokerOptions::default()).await?;
    create_typed_topic(&broker, "delay-t", pb::MessageType::Delay, 1).await?;
    let lines = run_producer(dir.path(), &broker, &["delay", "delay-t", "6"]).await?;
    let due_ms = lines.iter().find_map(|l| l["due_seconds"].as_u64()).unwrap_or(0) * 1000;
    let id = text(&lines[0], "message_id");
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    // Checked only with a clear second to spare, so a slow machine cannot turn a punctual delivery into a failure.
    if now_ms + 1_000 < due_ms {
        assert!(pull_all(&broker, "delay-t", 1).await?.is_empty(), "visible before its delivery time");
    }
    comet_tests::harness::wait_until("the delayed message", Duration::from_secs(30), || async {
        pull_all(&broker, "delay-t", 1).await.is_ok_and(|m| !m.is_empty())
    })
    .await?;
    let stored = pull_all(&broker, "delay-t", 1).await?;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].message_id, id);
    assert_eq!(stored[0].body.as_ref(), b"delayed");
    assert!(
        stored[0].store_timestamp_millis >= due_ms,
        "delivered at {} before {due_ms}",
        stored[0].store_timestamp_millis
    );
    Ok(())
}

/// TRANSACTION: a commit is visible, a rollback never; a half neither committed nor rolled back is checked back
/// through the producer's Telemetry stream, its checker answers COMMIT and the message becomes visible.
#[tokio::test]
async fn python_transactions_commit_rollback_and_check_back() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The first check 2 s after a half: the rolled-back one must not race it (its checker would answer COMMIT).
    let options = BrokerOptions {
        messaging:
            "  transaction-check-delay-ms: 2000\n  transaction-check-interval-ms: 1000\n  transaction-check-max: 5\n"
                .into(),
        ..Default::default()
    };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    create_typed_topic(&broker, "tx-t", pb::MessageType::Transaction, 1).await?;
    let sent = run_producer(dir.path(), &broker, &["transaction", "tx-t"]).await?;
    assert_eq!(sent.len(), 2);
    for s in &sent {
        assert!(!text(s, "transaction_id").is_empty(), "a transaction id: {s}");
    }
    let committed = text(&sent[0], "message_id");
    comet_tests::harness::wait_until("the committed message", Duration::from_secs(10), || async {
        pull_all(&broker, "tx-t", 1).await.is_ok_and(|m| !m.is_empty())
    })
    .await?;

    let orphan = run_producer(dir.path(), &broker, &["orphan", "tx-t", "30"]).await?;
    let orphan_id = text(&orphan[0], "message_id");
    let checked = orphan.iter().find(|l| l.get("checked").is_some()).ok_or_else(|| anyhow::anyhow!("no check"))?;
    assert_eq!(text(checked, "checked"), orphan_id, "the check-back names the half's message id");
    assert_eq!(text(checked, "topic"), "tx-t", "and its real topic");
    assert_eq!(text(checked, "body"), "orphan");
    comet_tests::harness::wait_until("the checked-back commit", Duration::from_secs(10), || async {
        pull_all(&broker, "tx-t", 1).await.is_ok_and(|m| m.len() >= 2)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let stored = pull_all(&broker, "tx-t", 1).await?;
    let ids: Vec<&str> = stored.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids, vec![committed.as_str(), orphan_id.as_str()], "the rollback is never visible, nothing twice");
    Ok(())
}

/// A v2 message for the bad-input test.
fn v2_message(topic: &str, id: &str, body: &[u8]) -> v2::Message {
    v2::Message {
        topic: resource(topic),
        user_properties: Default::default(),
        system_properties: Some(v2::SystemProperties {
            message_id: id.into(),
            message_type: v2::MessageType::Normal.into(),
            body_encoding: v2::Encoding::Identity.into(),
            ..Default::default()
        }),
        body: body.to_vec().into(),
    }
}

/// Bad input gets the documented status code, per entry and overall, and the broker keeps serving.
#[tokio::test]
async fn bad_sends_get_exact_codes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = BrokerOptions { no_auto_create: true, ..Default::default() };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    create_typed_topic(&broker, "typed-normal", pb::MessageType::Normal, 1).await?;
    create_typed_topic(&broker, "typed-fifo", pb::MessageType::Fifo, 1).await?;
    let mut client = v2_client(&broker).await?;
    let id = "0102FC0000000110D80B2355EB00000000";
    let send = |m: v2::Message, language: &'static str| {
        let mut request = with_client(v2::SendMessageRequest { messages: vec![m] }, "bad-client");
        request.metadata_mut().insert("x-mq-language", tonic::metadata::MetadataValue::from_static(language));
        request
    };
    let mut expect = async |m: v2::Message, language: &'static str, want: v2::Code| -> anyhow::Result<()> {
        let r = client.send_message(send(m, language)).await?.into_inner();
        assert_eq!(code(r.status.as_ref()), want, "{:?}", r.status);
        assert_eq!(r.entries.len(), 1);
        assert_eq!(code(r.entries[0].status.as_ref()), want);
        Ok(())
    };
    expect(v2_message("no-such-topic", id, b"x"), "PYTHON", v2::Code::TopicNotFound).await?;
    let mut fifo = v2_message("typed-normal", id, b"x");
    let p = fifo.system_properties.as_mut().unwrap();
    p.message_type = v2::MessageType::Fifo.into();
    p.message_group = Some("g".into());
    expect(fifo.clone(), "PYTHON", v2::Code::MessagePropertyConflictWithType).await?;
    expect(v2_message("typed-fifo", id, b"x"), "PYTHON", v2::Code::MessagePropertyConflictWithType).await?;
    let mut no_group = v2_message("typed-fifo", id, b"x");
    no_group.system_properties.as_mut().unwrap().message_type = v2::MessageType::Fifo.into();
    expect(no_group, "PYTHON", v2::Code::MessagePropertyConflictWithType).await?;
    let mut delayed_normal = v2_message("typed-normal", id, b"x");
    deliver_in(&mut delayed_normal, Duration::from_secs(60));
    expect(delayed_normal, "PYTHON", v2::Code::MessagePropertyConflictWithType).await?;
    expect(v2_message("typed-normal", id, &vec![b'x'; (4 << 20) + 1]), "PYTHON", v2::Code::MessageBodyTooLarge).await?;
    expect(v2_message("typed-normal", id, b""), "PYTHON", v2::Code::MessageBodyEmpty).await?;
    expect(v2_message("typed-normal", id, b""), "RUST", v2::Code::BadRequest).await?;
    expect(v2_message("typed-normal", "", b"x"), "PYTHON", v2::Code::IllegalMessageId).await?;
    let mut reserved = v2_message("typed-normal", id, b"x");
    reserved.user_properties.insert("TRAN_MSG".into(), "true".into());
    expect(reserved, "PYTHON", v2::Code::IllegalMessagePropertyKey).await?;
    let mut tag = v2_message("typed-normal", id, b"x");
    tag.system_properties.as_mut().unwrap().tag = Some("a|b".into());
    expect(tag, "PYTHON", v2::Code::IllegalMessageTag).await?;
    let mut long_group = fifo.clone();
    long_group.topic = resource("typed-fifo");
    long_group.system_properties.as_mut().unwrap().message_group = Some("g".repeat(65));
    expect(long_group, "PYTHON", v2::Code::IllegalMessageGroup).await?;
    create_typed_topic(&broker, "typed-delay", pb::MessageType::Delay, 1).await?;
    let mut far = v2_message("typed-delay", id, b"x");
    far.system_properties.as_mut().unwrap().message_type = v2::MessageType::Delay.into();
    deliver_in(&mut far, Duration::from_secs(86_400 + 3_600));
    expect(far, "PYTHON", v2::Code::IllegalDeliveryTime).await?;

    let bogus = v2::EndTransactionRequest {
        topic: resource("typed-normal"),
        message_id: id.into(),
        transaction_id: "not-a-transaction".into(),
        resolution: v2::TransactionResolution::Commit.into(),
        source: v2::TransactionSource::SourceClient.into(),
        trace_context: String::new(),
    };
    let r = client.end_transaction(with_client(bogus.clone(), "bad-client")).await?.into_inner();
    assert_eq!(code(r.status.as_ref()), v2::Code::InvalidTransactionId);
    let unknown_half = v2::EndTransactionRequest { transaction_id: "0000000000000000".into(), ..bogus };
    let r = client.end_transaction(with_client(unknown_half, "bad-client")).await?.into_inner();
    assert_eq!(code(r.status.as_ref()), v2::Code::InvalidTransactionId);

    // The native API enforces the same topic type (one topic table): a delayed message to a NORMAL topic.
    let native_delay = pb::SendMessageRequest {
        topic: "typed-normal".into(),
        messages: vec![pb::OutgoingMessage { body: b"x".to_vec().into(), delay_millis: 1_000, ..Default::default() }],
        ..Default::default()
    };
    let err = broker.client().await?.send_message(native_delay).await.expect_err("typed topic");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    // Still serving: a good batch of two is stored, ids echoed.
    let second = "0102FC0000000110D80B2355EB00000001";
    let batch = v2::SendMessageRequest {
        messages: vec![v2_message("typed-normal", id, b"one"), v2_message("typed-normal", second, b"two")],
    };
    let r = client.send_message(with_client(batch, "bad-client")).await?.into_inner();
    assert_eq!(code(r.status.as_ref()), v2::Code::Ok);
    let ids: Vec<&str> = r.entries.iter().map(|e| e.message_id.as_str()).collect();
    assert_eq!(ids, vec![id, second]);
    assert_eq!(r.entries.iter().map(|e| e.offset).collect::<Vec<_>>(), vec![0, 1]);
    // An SDK retry (same message id) is answered with the first copy, not stored again.
    let retry = v2::SendMessageRequest { messages: vec![v2_message("typed-normal", id, b"one")] };
    let r = client.send_message(with_client(retry, "bad-client")).await?.into_inner();
    assert_eq!(code(r.status.as_ref()), v2::Code::Ok);
    assert_eq!((r.entries[0].message_id.as_str(), r.entries[0].offset), (id, 0));
    let stored = pull_at_least(&broker, "typed-normal", 1, 2).await?;
    assert_eq!(stored.iter().map(|m| m.message_id.as_str()).collect::<Vec<_>>(), vec![id, second]);
    Ok(())
}

/// Sets the message's delivery time `ahead` from now (the Timestamp type comes from the generated code).
fn deliver_in(m: &mut v2::Message, ahead: Duration) {
    let Some(p) = m.system_properties.as_mut() else { return };
    let d = (std::time::SystemTime::now() + ahead).duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut t = p.born_timestamp.unwrap_or_default();
    t.seconds = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    t.nanos = i32::try_from(d.subsec_nanos()).unwrap_or(0);
    p.delivery_timestamp = Some(t);
}

/// A v2 half with no live v2 producer of its topic is checked back to nobody, then resolved by the policy
/// (rollback) with a log line; it never becomes visible, and a late COMMIT is PRECONDITION_FAILED.
#[tokio::test]
async fn orphaned_half_without_a_producer_is_rolled_back_by_the_policy() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = BrokerOptions {
        messaging:
            "  transaction-check-delay-ms: 300\n  transaction-check-interval-ms: 300\n  transaction-check-max: 2\n"
                .into(),
        ..Default::default()
    };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    create_typed_topic(&broker, "tx-orphan", pb::MessageType::Transaction, 1).await?;
    let mut client = v2_client(&broker).await?;
    let id = "0102FC0000000110D80B2355EB000000AA";
    let mut half = v2_message("tx-orphan", id, b"never");
    half.system_properties.as_mut().unwrap().message_type = v2::MessageType::Transaction.into();
    let r = client.send_message(with_client(v2::SendMessageRequest { messages: vec![half] }, "gone")).await?;
    let entry = r.into_inner().entries.remove(0);
    assert_eq!(code(entry.status.as_ref()), v2::Code::Ok);
    assert_eq!(entry.transaction_id.len(), 16);
    comet_tests::harness::wait_until("the policy's log line", Duration::from_secs(20), || async {
        broker.log().contains("policy applied")
    })
    .await?;
    let late = v2::EndTransactionRequest {
        topic: resource("tx-orphan"),
        message_id: id.into(),
        transaction_id: entry.transaction_id.clone(),
        resolution: v2::TransactionResolution::Commit.into(),
        source: v2::TransactionSource::SourceClient.into(),
        trace_context: String::new(),
    };
    let elsewhere = v2::EndTransactionRequest { topic: resource("another-topic"), ..late.clone() };
    let r = client.end_transaction(with_client(elsewhere, "late")).await?.into_inner();
    assert_eq!(code(r.status.as_ref()), v2::Code::BadRequest, "the transaction is another topic's: {:?}", r.status);
    let r = client.end_transaction(with_client(late.clone(), "late")).await?.into_inner();
    assert_eq!(code(r.status.as_ref()), v2::Code::PreconditionFailed, "{:?}", r.status);
    let rollback = v2::EndTransactionRequest { resolution: v2::TransactionResolution::Rollback.into(), ..late };
    let r = client.end_transaction(with_client(rollback, "late")).await?.into_inner();
    assert_eq!(code(r.status.as_ref()), v2::Code::Ok, "agrees with the policy's rollback");
    assert!(pull_all(&broker, "tx-orphan", 1).await?.is_empty(), "a rolled-back half is never visible");
    Ok(())
}
