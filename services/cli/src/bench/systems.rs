//! The two systems `comet bench produce|consume|e2e` can drive with the same workload: Comet through its Rust
//! SDK (as an application would), and NATS JetStream with file storage through `async-nats` (the peer baseline
//! of docs/benchmarks.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use comet_client::{
    Admin, LocalTransactionState, Message, MessageQueue, Producer, ProducerConfig, PullConsumer, PullConsumerConfig,
};
use comet_proto::comet::v1 as pb;
use futures_util::StreamExt;
use futures_util::future::try_join_all;

use super::rocketmq_v2;

/// Which system a run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    /// Comet, through the NameServers of `--namesrv`.
    Comet,
    /// NATS JetStream at `--nats-url` (file storage, one replica).
    Nats,
}

impl System {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Comet => "comet",
            Self::Nats => "nats",
        }
    }
}

/// Which Comet API a run speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Api {
    /// comet.v1 through the Rust SDK.
    Native,
    /// The RocketMQ 5 API (`apache.rocketmq.v2.MessagingService`) as an official SDK speaks it.
    V2,
    /// `consume` only: the RocketMQ 5 API's PullMessage (the Java PullConsumer), one loop per queue.
    V2Pull,
}

/// Where a run connects.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// System to drive.
    #[arg(long, value_enum, default_value = "comet")]
    pub system: System,
    /// Comet API: native comet.v1, or the RocketMQ 5 API (`v2`: produce and consume only; `v2-pull`: consume
    /// through PullMessage).
    #[arg(long, value_enum, default_value = "native")]
    pub api: Api,
    /// `--api native`: the wire of sends and pulls, remoting frames (the SDK's default) or gRPC (HTTP/2).
    #[arg(long, default_value = "remoting")]
    pub transport: comet_client::Transport,
    /// `--api v2`: the access point an official SDK is configured with (`host:port` of a broker); default: the
    /// first master broker the NameServers know.
    #[arg(long)]
    pub access_point: Option<String>,
    /// NATS server URL (`--system nats`).
    #[arg(long, default_value = "127.0.0.1:4222")]
    pub nats_url: String,
    /// Comet topic, or the NATS subject suffix (stream COMET_BENCH holds subjects `bench.>`).
    #[arg(long, default_value = "comet-bench")]
    pub topic: String,
    /// Queues of the Comet topic when the run creates it (an existing topic is used as it is).
    #[arg(long, default_value_t = 8)]
    pub queues: u32,
}

impl Connection {
    /// The system's name in reports: `comet`, `comet-v2` or `nats`.
    pub fn name(&self) -> &'static str {
        match (self.system, self.api) {
            (System::Comet, Api::V2) => "comet-v2",
            (System::Comet, Api::V2Pull) => "comet-v2-pull",
            (system, _) => system.name(),
        }
    }

    /// `--api v2` on Comet.
    pub fn is_v2(&self) -> bool {
        self.system == System::Comet && self.api == Api::V2
    }

    /// The RocketMQ 5 access point: `--access-point`, or the first master broker.
    async fn access_point(&self, namesrv: &[String]) -> anyhow::Result<String> {
        if let Some(a) = &self.access_point {
            return Ok(a.clone());
        }
        let masters = Admin::new(namesrv)?.master_brokers(None).await.context("listing the brokers")?;
        masters.into_iter().next().map(|b| b.address).context("no broker is registered with the NameServers")
    }
}

/// The JetStream stream every NATS run uses.
const NATS_STREAM: &str = "COMET_BENCH";

async fn nats(url: &str) -> anyhow::Result<(jetstream::Context, stream::Stream)> {
    let client = async_nats::connect(url).await.with_context(|| format!("connecting to NATS at {url}"))?;
    let js = jetstream::new(client);
    let stream = js
        .get_or_create_stream(stream::Config {
            name: NATS_STREAM.into(),
            subjects: vec!["bench.>".into()],
            storage: stream::StorageType::File,
            max_bytes: 16 << 30,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating JetStream stream {NATS_STREAM}: {e}"))?;
    Ok((js, stream))
}

/// Sends bodies to one topic (Comet) or subject (NATS) and waits for their acknowledgement.
#[derive(Clone)]
pub enum Sink {
    /// The SDK producer: one message = `send`, several = one `send_batch` request.
    Comet {
        /// The producer (shared route cache and channels).
        producer: Producer,
        /// Topic.
        topic: String,
        /// Each message a transaction: a half message, then its commit (`--transactional`).
        transactional: bool,
    },
    /// The RocketMQ 5 API: one SendMessage per batch.
    V2(Arc<rocketmq_v2::Producer>),
    /// JetStream: publish every body, then await every PubAck (a "batch" is a pipelined burst).
    Nats {
        /// JetStream context.
        js: jetstream::Context,
        /// Subject.
        subject: String,
    },
}

impl Sink {
    /// Connects and makes sure the topic or stream exists.
    pub async fn connect(conn: &Connection, namesrv: &[String]) -> anyhow::Result<Self> {
        match conn.system {
            System::Comet if conn.api == Api::V2Pull => {
                anyhow::bail!("--api v2-pull is for consume; produce with --api v2")
            }
            System::Comet if conn.api == Api::V2 => {
                ensure_topic(namesrv, &conn.topic, conn.queues).await?;
                let access_point = conn.access_point(namesrv).await?;
                Ok(Self::V2(Arc::new(rocketmq_v2::Producer::connect(&access_point, &conn.topic).await?)))
            }
            System::Comet => {
                ensure_topic(namesrv, &conn.topic, conn.queues).await?;
                let mut config = ProducerConfig::new(namesrv.to_vec(), "comet-bench-producer");
                config.transport = conn.transport;
                let producer = Producer::new(config)?;
                Ok(Self::Comet { producer, topic: conn.topic.clone(), transactional: false })
            }
            System::Nats => {
                let (js, _) = nats(&conn.nats_url).await?;
                Ok(Self::Nats { js, subject: format!("bench.{}", conn.topic) })
            }
        }
    }

    /// The same sink sending every message as a transaction (send, then commit). Comet only.
    pub fn transactional(self) -> anyhow::Result<Self> {
        match self {
            Self::Comet { producer, topic, .. } => Ok(Self::Comet { producer, topic, transactional: true }),
            Self::Nats { .. } | Self::V2(_) => anyhow::bail!("--transactional is for --system comet --api native"),
        }
    }

    /// Ends the session (RocketMQ 5: NotifyClientTermination, as an SDK's shutdown).
    pub async fn close(&self) {
        if let Self::V2(producer) = self {
            producer.close().await;
        }
    }

    /// Sends `bodies` as one request, each delayed by `delay` if given, and waits until all are acknowledged.
    pub async fn send(&self, bodies: Vec<Bytes>, delay: Option<Duration>) -> anyhow::Result<()> {
        match self {
            Self::Comet { producer, topic, transactional: true } => {
                anyhow::ensure!(delay.is_none(), "a transactional message cannot be delayed");
                for body in bodies {
                    let message = Message::new(topic.as_str(), body);
                    let sent = producer.send_transactional(message, |_| LocalTransactionState::Commit).await?;
                    anyhow::ensure!(sent.committed.is_some(), "the broker did not commit {}", sent.half.message_id);
                }
                Ok(())
            }
            Self::Comet { producer, topic, .. } => {
                let message = |body| {
                    let m = Message::new(topic.as_str(), body);
                    match delay {
                        Some(d) => m.with_delay(d),
                        None => m,
                    }
                };
                if bodies.len() == 1 {
                    let body = bodies.into_iter().next().unwrap_or_default();
                    producer.send(message(body)).await?;
                } else {
                    producer.send_batch(bodies.into_iter().map(message).collect()).await?;
                }
                Ok(())
            }
            Self::V2(_) if delay.is_some() => anyhow::bail!("--delay-ms is for --api native"),
            Self::V2(producer) => producer.send(bodies).await,
            Self::Nats { .. } if delay.is_some() => anyhow::bail!("NATS JetStream has no delayed delivery"),
            Self::Nats { js, subject } => {
                let mut acks = Vec::with_capacity(bodies.len());
                for body in bodies {
                    acks.push(js.publish(subject.clone(), body).await.map_err(|e| anyhow::anyhow!("publish: {e}"))?);
                }
                try_join_all(acks.into_iter().map(std::future::IntoFuture::into_future))
                    .await
                    .map_err(|e| anyhow::anyhow!("PubAck: {e}"))?;
                Ok(())
            }
        }
    }
}

/// Creates `topic` with `queues` queues on every master broker that does not host it yet, and waits until the
/// NameServers route it.
async fn ensure_topic(namesrv: &[String], topic: &str, queues: u32) -> anyhow::Result<()> {
    let admin = Admin::new(namesrv)?;
    let masters = admin.master_brokers(None).await.context("listing the brokers")?;
    anyhow::ensure!(!masters.is_empty(), "no broker is registered with the NameServers");
    let hosting = admin.brokers_hosting(topic).await.unwrap_or_default();
    if !hosting.is_empty() {
        return Ok(());
    }
    for master in &masters {
        let mut client = admin.broker(&master.address)?;
        let config = pb::TopicConfig {
            name: topic.to_owned(),
            read_queue_nums: queues,
            write_queue_nums: queues,
            perm: 6,
            ..Default::default()
        };
        match client.create_topic(pb::CreateTopicRequest { topic: Some(config) }).await {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::AlreadyExists => {}
            Err(s) => anyhow::bail!("creating {topic} on {}: {}", master.name, s.message()),
        }
    }
    for _ in 0..100 {
        if !admin.brokers_hosting(topic).await.unwrap_or_default().is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("topic {topic} was created but the NameServers do not route it after 10 s")
}

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// The oldest stored message (consume a backlog).
    Oldest,
    /// Only what arrives from now on (end-to-end latency).
    New,
}

/// Reads a topic (every queue, Comet) or the stream (NATS) and hands every body to the reader's tally.
pub enum Source {
    /// Pull loops over every readable queue, `max` messages per long poll.
    Comet {
        /// The pull consumer.
        consumer: PullConsumer,
        /// Queues with their start offsets.
        queues: Vec<(MessageQueue, u64)>,
        /// Messages per pull.
        max: u32,
    },
    /// RocketMQ 5 receivers of one group: receive a batch, acknowledge it in one call.
    V2(rocketmq_v2::Receivers),
    /// RocketMQ 5 pull consumers: PullMessage per queue.
    V2Pull(rocketmq_v2::Pullers),
    /// A JetStream pull consumer without acks, `max` messages per pull request.
    Nats {
        /// The consumer.
        consumer: Box<consumer::PullConsumer>,
        /// Messages per pull request.
        max: usize,
    },
}

impl Source {
    /// Connects and positions a reader; also answers how many messages are stored after the start.
    pub async fn connect(conn: &Connection, namesrv: &[String], from: From, max: u32) -> anyhow::Result<(Self, u64)> {
        Self::connect_as(conn, namesrv, from, max, None).await
    }

    /// [`Source::connect`]; `--api v2` consumes as `group` with `receivers` concurrent receivers (a new group
    /// starts at the oldest stored message: the broker's `rocketmq-v2.start-from: earliest`).
    pub async fn connect_as(
        conn: &Connection,
        namesrv: &[String],
        from: From,
        max: u32,
        v2: Option<(&str, usize)>,
    ) -> anyhow::Result<(Self, u64)> {
        match conn.system {
            System::Comet => {
                ensure_topic(namesrv, &conn.topic, conn.queues).await?;
                let mut config = PullConsumerConfig::new(namesrv.to_vec(), "comet-bench-consumer");
                config.transport = conn.transport;
                let consumer = PullConsumer::new(config)?;
                let mut queues = Vec::new();
                let mut backlog = 0;
                for queue in consumer.queues(&conn.topic).await? {
                    let (min, max_offset) = consumer.queue_offsets(&queue).await?;
                    let start = if from == From::Oldest { min } else { max_offset };
                    backlog += max_offset - start;
                    queues.push((queue, start));
                }
                if conn.api == Api::V2Pull {
                    anyhow::ensure!(from == From::Oldest, "--api v2-pull reads a backlog (consume), not new messages");
                    let (group, _) = v2.context("--api v2-pull needs a consumer group")?;
                    let access_point = conn.access_point(namesrv).await?;
                    let pullers = rocketmq_v2::Pullers::connect(&access_point, &conn.topic, group, max).await?;
                    return Ok((Self::V2Pull(pullers), backlog));
                }
                if conn.api == Api::V2 {
                    anyhow::ensure!(from == From::Oldest, "--api v2 reads a backlog (consume), not new messages (e2e)");
                    let (group, receivers) = v2.context("--api v2 needs a consumer group")?;
                    let access_point = conn.access_point(namesrv).await?;
                    let receivers =
                        rocketmq_v2::Receivers::connect(&access_point, &conn.topic, group, max, receivers).await?;
                    return Ok((Self::V2(receivers), backlog));
                }
                Ok((Self::Comet { consumer, queues, max }, backlog))
            }
            System::Nats => {
                let (_, mut stream) = nats(&conn.nats_url).await?;
                let backlog = if from == From::Oldest {
                    stream.info().await.map_err(|e| anyhow::anyhow!("stream info: {e}"))?.state.messages
                } else {
                    0
                };
                let deliver_policy = match from {
                    From::Oldest => consumer::DeliverPolicy::All,
                    From::New => consumer::DeliverPolicy::New,
                };
                let consumer = stream
                    .create_consumer(consumer::pull::Config {
                        ack_policy: consumer::AckPolicy::None,
                        deliver_policy,
                        filter_subject: format!("bench.{}", conn.topic),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("creating a JetStream consumer: {e}"))?;
                Ok((Self::Nats { consumer: Box::new(consumer), max: max as usize }, backlog))
            }
        }
    }

    /// Starts the readers: each calls `on_batch` with the bodies it got, until `stop` is set (checked at least
    /// once a second). Returns one task per reader.
    pub fn spawn<T>(self, stop: Arc<AtomicBool>, make_tally: impl Fn() -> T) -> Vec<tokio::task::JoinHandle<T>>
    where
        T: Tally + Send + 'static,
    {
        match self {
            Self::Comet { consumer, queues, max } => queues
                .into_iter()
                .map(|(queue, start)| {
                    let (consumer, stop, mut tally) = (consumer.clone(), Arc::clone(&stop), make_tally());
                    tokio::spawn(async move {
                        let mut offset = start;
                        while !stop.load(Ordering::Relaxed) {
                            match consumer.pull(&queue, offset, max, Duration::from_secs(1)).await {
                                Ok(result) => {
                                    offset = result.next_offset;
                                    for m in &result.messages {
                                        tally.on_message(&m.body);
                                    }
                                }
                                Err(e) => {
                                    tally.on_error(&e.to_string());
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                            }
                        }
                        tally
                    })
                })
                .collect(),
            Self::V2(receivers) => receivers.spawn(stop, make_tally),
            Self::V2Pull(pullers) => pullers.spawn(stop, make_tally),
            Self::Nats { consumer, max } => {
                let mut tally = make_tally();
                vec![tokio::spawn(async move {
                    let messages =
                        consumer.stream().max_messages_per_batch(max).expires(Duration::from_secs(1)).messages().await;
                    let mut messages = match messages {
                        Ok(m) => m,
                        Err(e) => {
                            tally.on_error(&format!("JetStream pull: {e}"));
                            return tally;
                        }
                    };
                    while !stop.load(Ordering::Relaxed) {
                        match tokio::time::timeout(Duration::from_secs(1), messages.next()).await {
                            Ok(Some(Ok(m))) => tally.on_message(&m.payload),
                            Ok(Some(Err(e))) => tally.on_error(&e.to_string()),
                            Ok(None) => break,
                            Err(_) => {}
                        }
                    }
                    tally
                })]
            }
        }
    }
}

impl Source {
    /// The RocketMQ 5 session, to close once the readers are done.
    pub fn v2_session(&self) -> Option<V2Session> {
        match self {
            Self::V2(receivers) => Some(V2Session::Receivers(receivers.clone())),
            Self::V2Pull(pullers) => Some(V2Session::Pullers(pullers.clone())),
            _ => None,
        }
    }
}

/// A RocketMQ 5 consumer session of a [`Source`], closed after its readers.
pub enum V2Session {
    /// Receive + ack.
    Receivers(rocketmq_v2::Receivers),
    /// PullMessage.
    Pullers(rocketmq_v2::Pullers),
}

impl V2Session {
    /// NotifyClientTermination, as an SDK's shutdown.
    pub async fn close(&self) {
        match self {
            Self::Receivers(r) => r.close().await,
            Self::Pullers(p) => p.close().await,
        }
    }
}

/// What a reader does with each message it gets.
pub trait Tally {
    /// One received body.
    fn on_message(&mut self, body: &Bytes);
    /// One failed read (counted; the reader goes on).
    fn on_error(&mut self, error: &str);
}
