//! `comet bench produce|consume --api v2`: the same workloads through the RocketMQ 5 API
//! (`apache.rocketmq.v2.MessagingService`), spoken as an official SDK speaks it, so the figures say what an
//! application on an official SDK gets: the SDK's headers on every call (`x-mq-client-id`, language, protocol,
//! version, request id, date), QueryRoute at the access point, the Telemetry settings handshake (and a live
//! stream) per broker before the first call, a Heartbeat, client-generated message ids (the 5.x "V1" layout) and,
//! at the end, NotifyClientTermination.
//!
//! - produce: SendMessage with `--batch` messages per request (the SDKs' batch send), `--concurrency` requests in
//!   flight, spread round robin over the brokers that serve the topic;
//! - consume: `--receivers` concurrent loops of ReceiveMessage (`--pull-batch`, default 32) then one AckMessage
//!   carrying every receipt handle of the batch, on one consumer group, until the backlog is read;
//! - consume `--api v2-pull`: the Java PullConsumer's PullMessage, one loop per queue from its first offset.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use comet_proto::apache::rocketmq::v2 as pb;
use comet_proto::apache::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use pb::receive_message_response::Content as ReceiveItem;
use pb::telemetry_command::Command as TelemetryItem;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::systems::Tally;

/// The SDK's request timeout, which it adds to a long poll for the call's deadline.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a receive may hold when nothing is there (the proxy's floor).
const LONG_POLL: Duration = Duration::from_secs(5);
/// How long a received message stays invisible before the broker would deliver it again.
const INVISIBLE: Duration = Duration::from_secs(30);
/// How often the SDKs heartbeat.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// How long the Telemetry settings reply may take.
const SETTINGS_WAIT: Duration = Duration::from_secs(10);
/// The SDK version the headers name.
const SDK_VERSION: &str = "5.0.7";

type Client = MessagingServiceClient<InterceptedService<Channel, Headers>>;

/// The headers an official SDK (here: Java's) puts on every call.
#[derive(Clone)]
pub struct Headers {
    client_id: AsciiMetadataValue,
    requests: Arc<AtomicU64>,
}

impl Interceptor for Headers {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        let m = request.metadata_mut();
        m.insert("x-mq-client-id", self.client_id.clone());
        m.insert("x-mq-language", MetadataValue::from_static("JAVA"));
        m.insert("x-mq-protocol", MetadataValue::from_static("v2"));
        m.insert("x-mq-client-version", MetadataValue::from_static(SDK_VERSION));
        if let Some(v) = date_header() {
            m.insert("x-mq-date-time", v);
        }
        if let Ok(v) = AsciiMetadataValue::try_from(format!("{:016x}-{n:016x}", self.requests.as_ptr() as usize)) {
            m.insert("x-mq-request-id", v);
        }
        Ok(request)
    }
}

/// The `x-mq-date-time` value of the current second, formatted once per second and thread (the load generator
/// makes thousands of calls a second; formatting each was 4 % of its instructions per received message).
fn date_header() -> Option<AsciiMetadataValue> {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, Option<AsciiMetadataValue>)> = const { std::cell::RefCell::new((0, None)) };
    }
    let secs = now_ms() / 1000;
    DATE.with_borrow_mut(|(at, value)| {
        if *at != secs || value.is_none() {
            *value = AsciiMetadataValue::try_from(date_time(secs * 1000)).ok();
            *at = secs;
        }
        value.clone()
    })
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `YYYYMMDDTHHMMSSZ`, the signed `x-mq-date-time` format.
fn date_time(ms: u64) -> String {
    crate::admin::store_time(ms).replace(['-', ':'], "").split('.').next().unwrap_or_default().to_owned() + "Z"
}

fn resource(name: &str) -> Option<pb::Resource> {
    Some(pb::Resource { resource_namespace: String::new(), name: name.to_owned() })
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

fn code(status: Option<&pb::Status>) -> pb::Code {
    status.and_then(|s| pb::Code::try_from(s.code).ok()).unwrap_or(pb::Code::Unspecified)
}

fn check(status: Option<&pb::Status>, what: &str) -> anyhow::Result<()> {
    match code(status) {
        pb::Code::Ok => Ok(()),
        c => anyhow::bail!("{what}: {c:?} {}", status.map(|s| s.message.as_str()).unwrap_or_default()),
    }
}

/// Client-generated message ids in the 5.x "V1" layout: `01`, a MAC, the pid's low 2 bytes, seconds since
/// 2021-01-01 and a sequence number, as 34 upper-case hex characters.
struct MessageIds {
    prefix: String,
    seq: AtomicU32,
}

impl MessageIds {
    fn new() -> Self {
        // No MAC lookup: the pid and start time make a per-process "MAC" unique enough for a benchmark.
        let pid = std::process::id();
        let start = now_ms();
        let mac = (u64::from(pid) << 24 ^ start) & 0xFFFF_FFFF_FFFF;
        let since_2021 = (start / 1000).saturating_sub(1_609_459_200) as u32;
        Self { prefix: format!("01{mac:012X}{:04X}{since_2021:08X}", pid & 0xFFFF), seq: AtomicU32::new(0) }
    }

    fn next(&self) -> String {
        format!("{}{:08X}", self.prefix, self.seq.fetch_add(1, Ordering::Relaxed))
    }
}

/// One broker serving the topic: its client (one HTTP/2 connection, as an SDK keeps) and a queue of it to name.
struct Endpoint {
    client: Client,
    queue: pb::MessageQueue,
}

/// A v2 client of one topic: route, per-broker Telemetry streams kept open, a heartbeat loop.
struct Session {
    topic: String,
    group: Option<String>,
    client_type: pb::ClientType,
    endpoints: Vec<Endpoint>,
    /// Every readable queue of the route, with the index of its broker's endpoint (pull consumers).
    queues: Vec<(usize, pb::MessageQueue)>,
    keepalive: Vec<tokio::task::JoinHandle<()>>,
}

impl Session {
    /// QueryRoute at `access_point`, then the Telemetry handshake and a Heartbeat with every broker of the route.
    async fn open(
        access_point: &str,
        topic: &str,
        group: Option<&str>,
        client_type: pb::ClientType,
    ) -> anyhow::Result<Self> {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "comet-bench".into());
        let id = format!("{host}@{}@0@{:x}", std::process::id(), now_ms());
        let headers = Headers {
            client_id: AsciiMetadataValue::try_from(id.as_str()).context("client id")?,
            requests: Arc::new(AtomicU64::new(0)),
        };
        let mut access = connect(access_point, headers.clone()).await?;
        let (host, port) = access_point.rsplit_once(':').context("access point is not host:port")?;
        let access_endpoints = pb::Endpoints {
            scheme: pb::AddressScheme::IPv4.into(),
            addresses: vec![pb::Address { host: host.to_owned(), port: port.parse().context("access point port")? }],
        };
        let route = access
            .query_route(pb::QueryRouteRequest { topic: resource(topic), endpoints: Some(access_endpoints.clone()) })
            .await
            .with_context(|| format!("QueryRoute {topic} at {access_point}"))?
            .into_inner();
        check(route.status.as_ref(), &format!("QueryRoute {topic}"))?;
        // One client per broker endpoint (id 0 = master, as the SDKs use).
        let mut by_endpoint: Vec<(String, pb::MessageQueue)> = Vec::new();
        let mut queues = Vec::new();
        for q in route.message_queues {
            let Some(broker) = q.broker.as_ref().filter(|b| b.id == 0) else { continue };
            let Some(a) = broker.endpoints.as_ref().and_then(|e| e.addresses.first()) else { continue };
            let address = format!("{}:{}", a.host, a.port);
            let endpoint = match by_endpoint.iter().position(|(e, _)| *e == address) {
                Some(i) => i,
                None => {
                    by_endpoint.push((address, q.clone()));
                    by_endpoint.len() - 1
                }
            };
            let readable = [pb::Permission::Read, pb::Permission::ReadWrite].map(i32::from).contains(&q.permission);
            if readable {
                queues.push((endpoint, q));
            }
        }
        anyhow::ensure!(!by_endpoint.is_empty(), "QueryRoute {topic}: no master broker serves it");
        let mut session = Self {
            topic: topic.to_owned(),
            group: group.map(str::to_owned),
            client_type,
            endpoints: Vec::new(),
            queues,
            keepalive: Vec::new(),
        };
        for (address, queue) in by_endpoint {
            let client =
                if address == access_point { access.clone() } else { connect(&address, headers.clone()).await? };
            let settings = session.settings(&access_endpoints);
            session.keepalive.push(telemetry(client.clone(), settings, session.heartbeat(), &address).await?);
            session.endpoints.push(Endpoint { client, queue });
        }
        Ok(session)
    }

    /// The settings an SDK writes first on a Telemetry stream.
    fn settings(&self, access_point: &pb::Endpoints) -> pb::Settings {
        let pub_sub = match &self.group {
            None => pb::settings::PubSub::Publishing(pb::Publishing {
                topics: vec![pb::Resource { resource_namespace: String::new(), name: self.topic.clone() }],
                max_body_size: 0,
                validate_message_type: true,
            }),
            Some(group) => pb::settings::PubSub::Subscription(pb::Subscription {
                group: resource(group),
                subscriptions: vec![pb::SubscriptionEntry {
                    topic: resource(&self.topic),
                    expression: Some(pb::FilterExpression {
                        r#type: pb::FilterType::Tag.into(),
                        expression: "*".into(),
                    }),
                }],
                long_polling_timeout: Some(duration(LONG_POLL)),
                ..Default::default()
            }),
        };
        pb::Settings {
            client_type: Some(self.client_type.into()),
            access_point: Some(access_point.clone()),
            request_timeout: Some(duration(REQUEST_TIMEOUT)),
            pub_sub: Some(pub_sub),
            user_agent: Some(pb::Ua {
                language: pb::Language::Java.into(),
                version: SDK_VERSION.into(),
                platform: std::env::consts::OS.into(),
                hostname: "comet-bench".into(),
            }),
            ..Default::default()
        }
    }

    fn heartbeat(&self) -> pb::HeartbeatRequest {
        pb::HeartbeatRequest { group: self.group.as_deref().and_then(resource), client_type: self.client_type.into() }
    }

    /// NotifyClientTermination to every broker, then the Telemetry streams close.
    async fn close(&self) {
        for e in &self.endpoints {
            let request = pb::NotifyClientTerminationRequest { group: self.group.as_deref().and_then(resource) };
            let _ = e.client.clone().notify_client_termination(request).await;
        }
        for k in &self.keepalive {
            k.abort();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for k in &self.keepalive {
            k.abort();
        }
    }
}

async fn connect(address: &str, headers: Headers) -> anyhow::Result<Client> {
    let channel = Channel::from_shared(format!("http://{address}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to the RocketMQ 5 API at {address}"))?;
    Ok(MessagingServiceClient::with_interceptor(channel, headers).max_decoding_message_size(64 << 20))
}

/// Opens a Telemetry stream, writes the settings, waits for the settings reply (status OK), sends a Heartbeat;
/// the returned task keeps the stream open, reads server commands and heartbeats every 10 s.
async fn telemetry(
    mut client: Client,
    settings: pb::Settings,
    heartbeat: pb::HeartbeatRequest,
    address: &str,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::TelemetryCommand { status: None, command: Some(TelemetryItem::Settings(settings)) })
        .await
        .context("telemetry channel")?;
    let mut replies = client
        .telemetry(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .with_context(|| format!("Telemetry to {address}"))?
        .into_inner();
    let first = tokio::time::timeout(SETTINGS_WAIT, replies.message())
        .await
        .with_context(|| format!("no Telemetry settings reply from {address} within {SETTINGS_WAIT:?}"))?
        .with_context(|| format!("Telemetry to {address}"))?
        .with_context(|| format!("Telemetry to {address} ended before the settings reply"))?;
    check(first.status.as_ref(), "Telemetry settings reply")?;
    anyhow::ensure!(
        matches!(first.command, Some(TelemetryItem::Settings(_))),
        "the first Telemetry reply is not settings"
    );
    let answer = client.heartbeat(heartbeat.clone()).await.context("Heartbeat")?.into_inner();
    check(answer.status.as_ref(), "Heartbeat")?;
    Ok(tokio::spawn(async move {
        let _writer = tx;
        let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
        beat.tick().await;
        loop {
            tokio::select! {
                reply = replies.message() => if !matches!(reply, Ok(Some(_))) { return },
                _ = beat.tick() => { let _ = client.heartbeat(heartbeat.clone()).await; }
            }
        }
    }))
}

/// A RocketMQ 5 producer of one topic.
pub struct Producer {
    session: Session,
    ids: MessageIds,
    next: AtomicUsize,
    born_host: String,
}

impl Producer {
    /// Routes `topic` through `access_point` and opens a producer session with its brokers.
    pub async fn connect(access_point: &str, topic: &str) -> anyhow::Result<Self> {
        let session = Session::open(access_point, topic, None, pb::ClientType::Producer).await?;
        Ok(Self { session, ids: MessageIds::new(), next: AtomicUsize::new(0), born_host: "127.0.0.1".into() })
    }

    /// Sends `bodies` as one SendMessage request (NORMAL messages, client-generated ids) to the next broker and
    /// checks every entry was stored.
    pub async fn send(&self, bodies: Vec<Bytes>) -> anyhow::Result<()> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.session.endpoints.len();
        let mut client = self.session.endpoints[i].client.clone();
        let born = Some(convert_time(now_ms()));
        let messages = bodies
            .into_iter()
            .map(|body| pb::Message {
                topic: resource(&self.session.topic),
                user_properties: Default::default(),
                system_properties: Some(pb::SystemProperties {
                    message_id: self.ids.next(),
                    body_encoding: pb::Encoding::Identity.into(),
                    message_type: pb::MessageType::Normal.into(),
                    born_timestamp: born,
                    born_host: self.born_host.clone(),
                    ..Default::default()
                }),
                body,
            })
            .collect();
        let mut request = tonic::Request::new(pb::SendMessageRequest { messages });
        request.set_timeout(REQUEST_TIMEOUT);
        let answer = client.send_message(request).await.context("SendMessage")?.into_inner();
        check(answer.status.as_ref(), "SendMessage")?;
        for e in &answer.entries {
            check(e.status.as_ref(), "SendMessage entry")?;
        }
        Ok(())
    }

    /// Ends the session as an SDK's shutdown does.
    pub async fn close(&self) {
        self.session.close().await;
    }
}

fn convert_time(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

/// RocketMQ 5 simple-consumer receivers of one group on one topic (clones share the session).
#[derive(Clone)]
pub struct Receivers {
    session: Arc<Session>,
    group: String,
    batch: i32,
    receivers: usize,
}

impl Receivers {
    /// Routes `topic` and opens a simple-consumer session of `group` with its brokers.
    pub async fn connect(
        access_point: &str,
        topic: &str,
        group: &str,
        batch: u32,
        receivers: usize,
    ) -> anyhow::Result<Self> {
        let session = Session::open(access_point, topic, Some(group), pb::ClientType::SimpleConsumer).await?;
        Ok(Self {
            session: Arc::new(session),
            group: group.to_owned(),
            batch: i32::try_from(batch).unwrap_or(i32::MAX),
            receivers: receivers.max(1),
        })
    }

    /// Starts the receivers (spread over the brokers): each receives a batch, acknowledges all of it in one
    /// AckMessage and counts it, until `stop` is set. Returns one task per receiver.
    pub fn spawn<T>(&self, stop: Arc<AtomicBool>, make_tally: impl Fn() -> T) -> Vec<tokio::task::JoinHandle<T>>
    where
        T: Tally + Send + 'static,
    {
        (0..self.receivers)
            .map(|i| {
                let (session, stop, mut tally) = (Arc::clone(&self.session), Arc::clone(&stop), make_tally());
                let (group, batch) = (self.group.clone(), self.batch);
                tokio::spawn(async move {
                    let endpoint = &session.endpoints[i % session.endpoints.len()];
                    let mut client = endpoint.client.clone();
                    while !stop.load(Ordering::Relaxed) {
                        let round = receive_and_ack(&mut client, &session.topic, &group, &endpoint.queue, batch);
                        // A receive parked on an empty topic is abandoned when the run ends (the broker takes
                        // back what it would have delivered).
                        let done = tokio::select! {
                            r = round => Some(r),
                            () = stopped(&stop) => None,
                        };
                        match done {
                            None => break,
                            Some(Ok(bodies)) => {
                                for body in &bodies {
                                    tally.on_message(body);
                                }
                            }
                            Some(Err(e)) => {
                                tally.on_error(&format!("{e:#}"));
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                    tally
                })
            })
            .collect()
    }

    /// Ends the session as an SDK's shutdown does.
    pub async fn close(&self) {
        self.session.close().await;
    }
}

/// RocketMQ 5 pull consumers (the Java PullConsumer's PullMessage) of one group: one loop per readable queue,
/// each from the queue's first stored offset (QueryOffset BEGINNING), no offset commits.
#[derive(Clone)]
pub struct Pullers {
    session: Arc<Session>,
    group: String,
    batch: i32,
}

impl Pullers {
    /// Routes `topic` and opens a pull-consumer session of `group` with its brokers.
    pub async fn connect(access_point: &str, topic: &str, group: &str, batch: u32) -> anyhow::Result<Self> {
        let session = Session::open(access_point, topic, Some(group), pb::ClientType::PullConsumer).await?;
        Ok(Self {
            session: Arc::new(session),
            group: group.to_owned(),
            batch: i32::try_from(batch).unwrap_or(i32::MAX),
        })
    }

    /// Starts one pull loop per readable queue, until `stop` is set. Returns one task per queue.
    pub fn spawn<T>(&self, stop: Arc<AtomicBool>, make_tally: impl Fn() -> T) -> Vec<tokio::task::JoinHandle<T>>
    where
        T: Tally + Send + 'static,
    {
        (0..self.session.queues.len())
            .map(|i| {
                let (session, stop, mut tally) = (Arc::clone(&self.session), Arc::clone(&stop), make_tally());
                let (group, batch) = (self.group.clone(), self.batch);
                tokio::spawn(async move {
                    let (endpoint, queue) = &session.queues[i];
                    let mut client = session.endpoints[*endpoint].client.clone();
                    let mut offset = match first_offset(&mut client, queue).await {
                        Ok(o) => o,
                        Err(e) => {
                            tally.on_error(&format!("{e:#}"));
                            return tally;
                        }
                    };
                    while !stop.load(Ordering::Relaxed) {
                        let round = pull(&mut client, &group, queue, offset, batch);
                        let done = tokio::select! {
                            r = round => Some(r),
                            () = stopped(&stop) => None,
                        };
                        match done {
                            None => break,
                            Some(Ok((bodies, next))) => {
                                offset = next;
                                for body in &bodies {
                                    tally.on_message(body);
                                }
                            }
                            Some(Err(e)) => {
                                tally.on_error(&format!("{e:#}"));
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                    tally
                })
            })
            .collect()
    }

    /// Ends the session as an SDK's shutdown does.
    pub async fn close(&self) {
        self.session.close().await;
    }
}

/// QueryOffset BEGINNING of a queue.
async fn first_offset(client: &mut Client, queue: &pb::MessageQueue) -> anyhow::Result<i64> {
    let request = pb::QueryOffsetRequest {
        message_queue: Some(queue.clone()),
        query_offset_policy: pb::QueryOffsetPolicy::Beginning.into(),
        timestamp: None,
    };
    let answer = client.query_offset(request).await.context("QueryOffset")?.into_inner();
    check(answer.status.as_ref(), "QueryOffset")?;
    Ok(answer.offset)
}

/// One PullMessage (1 s long poll): the bodies and the next offset.
async fn pull(
    client: &mut Client,
    group: &str,
    queue: &pb::MessageQueue,
    offset: i64,
    batch: i32,
) -> anyhow::Result<(Vec<Bytes>, i64)> {
    use pb::pull_message_response::Content;
    let hold = Duration::from_secs(1);
    let request = pb::PullMessageRequest {
        group: resource(group),
        message_queue: Some(queue.clone()),
        offset,
        batch_size: batch,
        filter_expression: Some(pb::FilterExpression { r#type: pb::FilterType::Tag.into(), expression: "*".into() }),
        long_polling_timeout: Some(duration(hold)),
    };
    let mut request = tonic::Request::new(request);
    request.set_timeout(hold + REQUEST_TIMEOUT);
    let mut stream = client.pull_message(request).await.context("PullMessage")?.into_inner();
    let (mut status, mut bodies, mut next) = (None, Vec::with_capacity(usize::try_from(batch).unwrap_or(0)), offset);
    while let Some(item) = stream.message().await.context("PullMessage stream")? {
        match item.content {
            Some(Content::Status(s)) => status = Some(s),
            Some(Content::Message(m)) => bodies.push(decode_message(m)?.body),
            Some(Content::NextOffset(n)) => next = n,
            None => {}
        }
    }
    match code(status.as_ref()) {
        pb::Code::MessageNotFound => Ok((Vec::new(), next)),
        _ => check(status.as_ref(), "PullMessage").map(|()| (bodies, next)),
    }
}

async fn stopped(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A delivered message: stream items carry it encoded (see proto/build.rs); decoded in full, as an SDK does.
fn decode_message(encoded: Bytes) -> anyhow::Result<pb::Message> {
    <pb::Message as prost::Message>::decode(encoded).context("a delivered message does not decode")
}

/// One ReceiveMessage (batch, explicit invisible time, no auto-renew, as a simple consumer), then one AckMessage
/// with every receipt handle; the acknowledged bodies.
async fn receive_and_ack(
    client: &mut Client,
    topic: &str,
    group: &str,
    queue: &pb::MessageQueue,
    batch: i32,
) -> anyhow::Result<Vec<Bytes>> {
    let request = pb::ReceiveMessageRequest {
        group: resource(group),
        message_queue: Some(queue.clone()),
        filter_expression: Some(pb::FilterExpression { r#type: pb::FilterType::Tag.into(), expression: "*".into() }),
        batch_size: batch,
        invisible_duration: Some(duration(INVISIBLE)),
        auto_renew: false,
        long_polling_timeout: Some(duration(LONG_POLL)),
        attempt_id: None,
    };
    let mut request = tonic::Request::new(request);
    request.set_timeout(LONG_POLL + REQUEST_TIMEOUT);
    let mut stream = client.receive_message(request).await.context("ReceiveMessage")?.into_inner();
    let mut status = None;
    let mut messages = Vec::with_capacity(usize::try_from(batch).unwrap_or(0));
    while let Some(item) = stream.message().await.context("ReceiveMessage stream")? {
        match item.content {
            Some(ReceiveItem::Status(s)) => status = Some(s),
            Some(ReceiveItem::Message(m)) => messages.push(decode_message(m)?),
            Some(ReceiveItem::DeliveryTimestamp(_)) | None => {}
        }
    }
    match code(status.as_ref()) {
        pb::Code::MessageNotFound => return Ok(Vec::new()),
        _ => check(status.as_ref(), "ReceiveMessage")?,
    }
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let entries = messages
        .iter()
        .filter_map(|m| m.system_properties.as_ref())
        .map(|p| pb::AckMessageEntry {
            message_id: p.message_id.clone(),
            receipt_handle: p.receipt_handle.clone().unwrap_or_default(),
            lite_topic: None,
        })
        .collect();
    let mut ack =
        tonic::Request::new(pb::AckMessageRequest { group: resource(group), topic: resource(topic), entries });
    ack.set_timeout(REQUEST_TIMEOUT);
    let answer = client.ack_message(ack).await.context("AckMessage")?.into_inner();
    check(answer.status.as_ref(), "AckMessage")?;
    for e in &answer.entries {
        check(e.status.as_ref(), "AckMessage entry")?;
    }
    Ok(messages.into_iter().map(|m| m.body).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_have_the_v1_layout_and_do_not_repeat() {
        let ids = MessageIds::new();
        let (a, b) = (ids.next(), ids.next());
        assert_eq!(a.len(), 34);
        assert!(a.starts_with("01") && a.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()), "{a}");
        assert_ne!(a, b);
        assert_eq!(a[..26], b[..26]);
    }

    #[test]
    fn the_date_header_is_the_signed_format() {
        assert_eq!(date_time(1_714_564_800_123), "20240501T120000Z");
    }
}
