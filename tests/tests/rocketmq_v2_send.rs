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
