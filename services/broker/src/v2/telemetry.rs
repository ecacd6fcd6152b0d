//! The Telemetry stream: the settings handshake (reply merged as the RocketMQ proxy does) and server commands
//! (transaction check-backs) to live clients.
//!
//! The response stream is returned at once, so the client gets its headers before any command (the Rust SDK's
//! `start()` waits for them). A task reads the client's commands: each `settings` is stored in the client's
//! session and answered `{status OK, settings = merged}`; a command without `pub_sub` ends the stream with
//! INVALID_ARGUMENT, as the proxy does. The session keeps the stream's bounded writer, through which the
//! transaction check service sends `recover_orphaned_transaction_command`s; the stream is forgotten when the
//! client closes it.

use std::sync::Arc;
use std::time::Duration;

use comet_proto::apache::rocketmq::v2 as pb;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status, Streaming};

use crate::broker::Broker;
use crate::domain::groups::GroupConfig;
use crate::v2::BoxStream;
use crate::v2::context::Caller;
use crate::v2::convert::{duration, resource_name};
use crate::v2::sessions::{Command, Sessions};
use crate::v2::status;

/// Largest settings command a client may send (a real SDK's are a few hundred bytes per topic).
const MAX_SETTINGS_BYTES: usize = 256 * 1024;

/// Producer send retries the settings reply prescribes (the proxy's: 3 attempts, 10 ms doubling up to 1 s).
const PRODUCER_MAX_ATTEMPTS: i32 = 3;
const PRODUCER_BACKOFF_INITIAL: Duration = Duration::from_millis(10);
const PRODUCER_BACKOFF_MAX: Duration = Duration::from_secs(1);
const PRODUCER_BACKOFF_MULTIPLIER: f32 = 2.0;

/// Opens a client's Telemetry stream; the response stream is returned at once.
pub fn telemetry(
    broker: &Arc<Broker>,
    sessions: &Arc<Sessions>,
    request: Request<Streaming<pb::TelemetryCommand>>,
) -> Result<BoxStream<pb::TelemetryCommand>, Status> {
    let caller = Caller::of(request.metadata());
    let Some(client_id) = caller.client_id.clone() else {
        // Answered on the stream, as every v2 status is, then closed.
        let command = pb::TelemetryCommand {
            status: Some(status::for_language(crate::v2::route::client_id_required(), &caller.language)),
            command: None,
        };
        return Ok(Box::pin(tokio_stream::iter([Ok(command)])));
    };
    let (stream_id, writer, commands) = sessions.open_stream(&client_id).map_err(|_| {
        Status::resource_exhausted(format!("{} clients are connected", crate::v2::sessions::MAX_SESSIONS))
    })?;
    let inbound = request.into_inner();
    let (broker, sessions) = (Arc::clone(broker), Arc::clone(sessions));
    tracing::debug!(client = %client_id, stream = stream_id, "RocketMQ v2 telemetry stream opened");
    tokio::spawn(async move {
        // This task's writer keeps the response stream open until the client closes its side, even when the
        // session goes (NotifyClientTermination comes before the client cancels the stream).
        read_commands(&broker, &sessions, &client_id, (stream_id, writer), &caller.language, inbound).await;
        sessions.close_stream(&client_id, stream_id);
        tracing::debug!(client = %client_id, stream = stream_id, "RocketMQ v2 telemetry stream closed");
    });
    Ok(Box::pin(ReceiverStream::new(commands)))
}

/// Reads the client's commands until it closes the stream (or breaks it).
async fn read_commands(
    broker: &Broker,
    sessions: &Sessions,
    client_id: &str,
    (stream_id, writer): (u64, mpsc::Sender<Command>),
    language: &str,
    mut inbound: Streaming<pb::TelemetryCommand>,
) {
    while let Some(item) = inbound.next().await {
        let command = match item {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(client = client_id, error = %e, "RocketMQ v2 telemetry stream broke");
                return;
            }
        };
        sessions.touch(client_id);
        // Only settings need an answer; thread stack traces and verify results answer commands Comet never sends.
        let Some(pb::telemetry_command::Command::Settings(settings)) = command.command else { continue };
        let reply = on_settings(broker, sessions, client_id, (stream_id, &writer), language, settings);
        let ends = reply.is_err();
        // Waits while the client does not read (bounded stream): back-pressure, not memory.
        if writer.send(reply).await.is_err() || ends {
            return;
        }
    }
}

/// Stores a client's settings and answers the reply; an error ends the stream.
fn on_settings(
    broker: &Broker,
    sessions: &Sessions,
    client_id: &str,
    (stream_id, writer): (u64, &mpsc::Sender<Command>),
    language: &str,
    settings: pb::Settings,
) -> Command {
    // Every session keeps its settings: bounded, so a client cannot park megabytes per stream.
    if prost::Message::encoded_len(&settings) > MAX_SETTINGS_BYTES {
        return Err(Status::invalid_argument(format!(
            "settings exceed {MAX_SETTINGS_BYTES} bytes (too many topics or subscriptions)"
        )));
    }
    let group = match &settings.pub_sub {
        None => {
            return Err(Status::invalid_argument("settings must carry publishing or subscription (pub_sub)"));
        }
        Some(pb::settings::PubSub::Publishing(_)) => None,
        Some(pb::settings::PubSub::Subscription(s)) => match s.group.as_ref() {
            Some(g) if !g.name.is_empty() => match resource_name(Some(g), "group") {
                Ok(name) => Some(name),
                Err(e) => {
                    let s = status::for_language(status::from_error(&e), language);
                    return Ok(pb::TelemetryCommand { status: Some(s), command: None });
                }
            },
            _ => None,
        },
    };
    let merged = merge(broker, settings, group.as_deref());
    sessions.keep_stream(client_id, stream_id, writer);
    if sessions.set_settings(client_id, Arc::new(merged.clone()), group).is_err() {
        let s = status::for_language(crate::v2::route::too_many_sessions(), language);
        return Ok(pb::TelemetryCommand { status: Some(s), command: None });
    }
    Ok(pb::TelemetryCommand {
        status: Some(status::ok()),
        command: Some(pb::telemetry_command::Command::Settings(merged)),
    })
}

/// The client's settings plus the server's: a producer's backoff, body limit and type validation; a consumer's
/// batch size, long-poll time, FIFO flag and redelivery backoff from its group; metrics off.
pub fn merge(broker: &Broker, mut settings: pb::Settings, group: Option<&str>) -> pb::Settings {
    match &mut settings.pub_sub {
        Some(pb::settings::PubSub::Publishing(p)) => {
            p.max_body_size = i32::try_from(broker.config.store.max_message_size).unwrap_or(i32::MAX);
            p.validate_message_type = true;
            settings.backoff_policy = Some(pb::RetryPolicy {
                max_attempts: PRODUCER_MAX_ATTEMPTS,
                strategy: Some(pb::retry_policy::Strategy::ExponentialBackoff(pb::ExponentialBackoff {
                    initial: Some(duration(PRODUCER_BACKOFF_INITIAL)),
                    max: Some(duration(PRODUCER_BACKOFF_MAX)),
                    multiplier: PRODUCER_BACKOFF_MULTIPLIER,
                })),
            });
        }
        Some(pb::settings::PubSub::Subscription(s)) => {
            let v2 = &broker.config.rocketmq_v2;
            let config =
                group.and_then(|g| broker.groups.get(g)).unwrap_or_else(|| GroupConfig::new(group.unwrap_or("")));
            s.fifo = Some(config.fifo);
            s.receive_batch_size = Some(i32::try_from(v2.receive_batch_max).unwrap_or(i32::MAX));
            s.long_polling_timeout = Some(duration(Duration::from_millis(v2.long_poll_max_ms)));
            let delays = if config.retry_delays_ms.is_empty() {
                &broker.config.messaging.retry_delays_ms
            } else {
                &config.retry_delays_ms
            };
            settings.backoff_policy = Some(pb::RetryPolicy {
                max_attempts: i32::try_from(config.retry_max_times.saturating_add(1)).unwrap_or(i32::MAX),
                strategy: Some(pb::retry_policy::Strategy::CustomizedBackoff(pb::CustomizedBackoff {
                    next: delays.iter().map(|&ms| duration(Duration::from_millis(ms))).collect(),
                })),
            });
        }
        None => {}
    }
    settings.metric = Some(pb::Metric { on: false, endpoints: None });
    settings
}
