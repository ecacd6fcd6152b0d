//! The connections to brokers, one set per address shared by every call to that broker: a lazily connected gRPC
//! channel (tonic multiplexes concurrent calls over one HTTP/2 connection and reconnects by itself) and, for the
//! hot calls, a remoting connection to the same port (docs/client.md, "Transport").

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use bytes::Bytes;
use comet_proto::codec::decode_with_room;
use comet_proto::comet::v1 as pb;
use comet_proto::comet::v1::broker_client::BrokerClient as GrpcClient;
use comet_proto::remoting as codes;
use comet_remoting::{ChannelConfig, Command, code};
use parking_lot::Mutex;
use prost::Message;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::error::ClientError;

/// Largest message a client decodes or encodes (a pull answer may carry up to 16 MiB of bodies plus headers).
const MAX_MESSAGE: usize = 64 << 20;

/// Upper bound of one remoting call; callers put their own, shorter timeout around every call (dropping the call
/// abandons it), so this only keeps a forgotten one from waiting forever.
const REMOTING_CALL_CAP: Duration = Duration::from_secs(600);

/// Which wire the SDK's hot calls (SendMessage, PullMessage) take; every other call is gRPC either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Remoting frames on the broker's gRPC port: about half the per-call cost and latency of HTTP/2
    /// (docs/benchmarks.md). The default.
    #[default]
    Remoting,
    /// gRPC (HTTP/2) for every call: for a network path that passes only HTTP/2, such as a gRPC-aware proxy.
    Grpc,
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "remoting" => Ok(Transport::Remoting),
            "grpc" => Ok(Transport::Grpc),
            other => Err(format!("unknown transport {other:?} (remoting or grpc)")),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Channels {
    connect_timeout: Duration,
    by_address: Mutex<HashMap<String, Channel>>,
    /// One remoting connection per address, reconnected with back-off; `None` with [`Transport::Grpc`].
    remoting: Option<comet_remoting::Client>,
}

impl Channels {
    pub(crate) fn new(connect_timeout: Duration, transport: Transport) -> Self {
        let remoting = (transport == Transport::Remoting).then(|| {
            comet_remoting::Client::new(comet_remoting::ClientConfig {
                channel: ChannelConfig { max_frame_size: MAX_MESSAGE, ..ChannelConfig::default() },
                connect_timeout_ms: u64::try_from(connect_timeout.as_millis()).unwrap_or(u64::MAX),
                ..comet_remoting::ClientConfig::default()
            })
        });
        Self { connect_timeout, by_address: Mutex::new(HashMap::new()), remoting }
    }

    /// A client of the broker at `address` (`host:port`), on the address's shared connections.
    pub(crate) fn broker(&self, address: &str) -> Result<BrokerClient, ClientError> {
        let mut map = self.by_address.lock();
        let channel = match map.get(address) {
            Some(channel) => channel.clone(),
            None => {
                let uri = if address.contains("://") { address.to_owned() } else { format!("http://{address}") };
                let channel = Endpoint::from_shared(uri)
                    .map_err(|e| ClientError::Invalid {
                        op: "connect",
                        message: format!("bad broker address {address:?}: {e}"),
                    })?
                    .connect_timeout(self.connect_timeout)
                    .tcp_nodelay(true)
                    .connect_lazy();
                map.insert(address.to_owned(), channel.clone());
                channel
            }
        };
        let grpc =
            GrpcClient::new(channel).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE);
        let remoting = self.remoting.as_ref().map(|client| Remoting {
            client: client.clone(),
            // The remoting client dials `host:port`; an `http://` address names the same port.
            address: address.trim_start_matches("http://").to_owned(),
        });
        Ok(BrokerClient { grpc, remoting })
    }
}

/// A broker client: the generated gRPC client for every call (through `Deref`), with SendMessage and PullMessage
/// on the remoting connection when the transport says so. Answers are the same either way: remoting refusals
/// carry the gRPC status the broker would have answered.
#[derive(Debug, Clone)]
pub(crate) struct BrokerClient {
    grpc: GrpcClient<Channel>,
    remoting: Option<Remoting>,
}

#[derive(Debug, Clone)]
struct Remoting {
    client: comet_remoting::Client,
    address: String,
}

impl BrokerClient {
    /// Sends one request of messages (see `comet.v1.Broker/SendMessage`): `head` with `messages` in place of its
    /// own (empty) list, which stays with the caller for a retry instead of being copied into every attempt.
    pub(crate) async fn send_message(
        &mut self,
        head: pb::SendMessageRequest,
        messages: &[pb::OutgoingMessage],
    ) -> Result<tonic::Response<pb::SendMessageResponse>, Status> {
        match &self.remoting {
            Some(remoting) => {
                let body = remoting.invoke(codes::SEND_MESSAGE, encode_send(&head, messages)).await?;
                decode_sent(body).map(tonic::Response::new).map_err(undecodable)
            }
            None => self.grpc.send_message(pb::SendMessageRequest { messages: messages.to_vec(), ..head }).await,
        }
    }

    /// Pulls from one queue (see `comet.v1.Broker/PullMessage`).
    pub(crate) async fn pull_message(
        &mut self,
        request: pb::PullMessageRequest,
    ) -> Result<tonic::Response<pb::PullMessageResponse>, Status> {
        match &self.remoting {
            Some(remoting) => {
                let body = remoting.call_raw(codes::PULL_MESSAGE, &request).await?;
                decode_pull(body).map(tonic::Response::new).map_err(undecodable)
            }
            None => self.grpc.pull_message(request).await,
        }
    }

    /// The gRPC client alone (admin calls hand it out).
    pub(crate) fn into_grpc(self) -> GrpcClient<Channel> {
        self.grpc
    }
}

impl Deref for BrokerClient {
    type Target = GrpcClient<Channel>;

    fn deref(&self) -> &Self::Target {
        &self.grpc
    }
}

impl DerefMut for BrokerClient {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.grpc
    }
}

impl Remoting {
    /// The body of a successful answer, still encoded.
    async fn call_raw<Q: Message>(&self, request_code: i32, request: &Q) -> Result<Bytes, Status> {
        self.invoke(request_code, request.encode_to_vec()).await
    }

    /// [`Remoting::call_raw`] of an already encoded request.
    async fn invoke(&self, request_code: i32, body: Vec<u8>) -> Result<Bytes, Status> {
        let command = Command::request(request_code, body);
        let answer = self.client.invoke(&self.address, command, REMOTING_CALL_CAP).await.map_err(transport_status)?;
        answer_status(answer.code, answer.remark)?;
        Ok(answer.body)
    }
}

/// A `SendMessageRequest` of `head`'s fields and `messages`, encoded without copying the messages into `head`.
/// The messages come after `head`'s last field; protobuf readers take fields in any order.
fn encode_send(head: &pb::SendMessageRequest, messages: &[pb::OutgoingMessage]) -> Vec<u8> {
    const MESSAGES: u32 = 4;
    let len =
        head.encoded_len() + messages.iter().map(|m| prost::encoding::message::encoded_len(MESSAGES, m)).sum::<usize>();
    let mut body = Vec::with_capacity(len);
    head.encode_raw(&mut body);
    for m in messages {
        prost::encoding::message::encode(MESSAGES, m, &mut body);
    }
    body
}

/// Decodes a send's answer with room for its results reserved first (one per message sent).
fn decode_sent(body: Bytes) -> Result<pb::SendMessageResponse, prost::DecodeError> {
    decode_with_room(body, 1, SEND_MAX_RESULTS, |a: &mut pb::SendMessageResponse| &mut a.results)
}

/// Most results [`decode_sent`] reserves room for up front (more still decode).
const SEND_MAX_RESULTS: usize = 4096;

fn undecodable(e: prost::DecodeError) -> Status {
    Status::internal(format!("undecodable answer from the broker: {e}"))
}

/// Most messages a pull answers with (the broker's cap on `max_count`).
const PULL_MAX_MESSAGES: usize = 1024;

/// Decodes a pull's answer with room for its messages reserved first: decoding pushes them one at a time, and
/// growing the list moved up to a thousand decoded messages several times per answer.
fn decode_pull(body: Bytes) -> Result<pb::PullMessageResponse, prost::DecodeError> {
    decode_with_room(body, 2, PULL_MAX_MESSAGES, |a: &mut pb::PullMessageResponse| &mut a.messages)
}

/// The status of a remoting answer that is not a success: the broker's gRPC status, or the channel's own refusals
/// as the gRPC status that means the same to a caller.
fn answer_status(answer_code: i32, remark: Option<String>) -> Result<(), Status> {
    let remark = remark.unwrap_or_default();
    let status = match answer_code {
        code::SUCCESS => return Ok(()),
        n if (codes::STATUS_BASE + 1..=codes::STATUS_BASE + 16).contains(&n) => {
            Status::new(Code::from(n - codes::STATUS_BASE), remark)
        }
        // The channel's bound on calls in flight: the broker's one "busy" answer (retryable).
        code::SYSTEM_BUSY => Status::resource_exhausted(format!("broker busy: {remark}")),
        // Refused before it was handled, like the broker's own shutdown answer (nothing stored).
        code::GO_AWAY => Status::unavailable(format!("broker is shutting down: {remark}")),
        code::REQUEST_CODE_NOT_SUPPORTED => {
            Status::unimplemented(format!("the broker has no remoting data path ({remark}); use the gRPC transport"))
        }
        other => Status::internal(format!("broker answered remoting code {other}: {remark}")),
    };
    Err(status)
}

/// A transport failure as the gRPC status tonic would report for it; a failed connect keeps the remoting error as
/// its source (the producer's "never sent" test looks for it).
fn transport_status(error: comet_remoting::Error) -> Status {
    use comet_remoting::Error as E;
    let code = match &error {
        // Nothing was sent.
        E::Connect { .. } | E::Bind { .. } => Code::Unavailable,
        E::Encode { .. } => Code::InvalidArgument,
        E::TooManyRequests { .. } => Code::ResourceExhausted,
        E::Timeout { .. } => Code::DeadlineExceeded,
        // The request may have been handled.
        E::ConnectionClosed { .. } => Code::Unavailable,
    };
    let message = match code {
        Code::ResourceExhausted => format!("busy: {error}"),
        _ => error.to_string(),
    };
    let mut status = Status::new(code, message);
    status.set_source(std::sync::Arc::new(error));
    status
}

/// True when `status` is a remoting connect failure: the request never left.
pub(crate) fn never_connected(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::ConnectError>()
            || error
                .downcast_ref::<comet_remoting::Error>()
                .is_some_and(|e| matches!(e, comet_remoting::Error::Connect { .. }))
        {
            return true;
        }
        source = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_answer_is_decoded_whole_and_a_truncated_one_refused() {
        let message = |i: u64| pb::StoredMessage {
            topic: "t".into(),
            queue_offset: i,
            body: Bytes::from(vec![7u8; i as usize * 100]),
            properties: [("k".to_owned(), i.to_string())].into(),
            ..Default::default()
        };
        for n in [0u64, 1, 3, 40] {
            let answer = pb::PullMessageResponse {
                status: pb::PullStatus::Found.into(),
                messages: (0..n).map(message).collect(),
                next_offset: n,
                min_offset: 0,
                max_offset: 300,
            };
            let body = Bytes::from(answer.encode_to_vec());
            assert_eq!(decode_pull(body.clone()).unwrap(), answer);
            // A truncated answer fails the decode without a panic.
            if body.len() > 1 {
                let cut = body.slice(..body.len() - 1);
                assert!(decode_pull(cut).is_err());
            }
        }
    }

    #[test]
    fn a_send_encoded_from_its_parts_is_the_whole_request_and_its_answer_decodes_whole() {
        let message = |i: u8| pb::OutgoingMessage {
            message_id: format!("id-{i}"),
            keys: vec!["k".into()],
            body: Bytes::from(vec![i; 200]),
            ..Default::default()
        };
        let head = pb::SendMessageRequest {
            topic: "t".into(),
            queue_id: Some(2),
            producer_group: "g".into(),
            messages: Vec::new(),
            transactional: true,
        };
        let messages: Vec<_> = (0..4).map(message).collect();
        let whole = pb::SendMessageRequest { messages: messages.clone(), ..head.clone() };
        let body = encode_send(&head, &messages);
        assert_eq!(body.len(), whole.encoded_len());
        assert_eq!(pb::SendMessageRequest::decode(&body[..]).unwrap(), whole);

        let answer = pb::SendMessageResponse {
            results: (0..4u64)
                .map(|i| pb::SendResult { message_id: format!("id-{i}"), queue_offset: i, ..Default::default() })
                .collect(),
        };
        assert_eq!(decode_sent(Bytes::from(answer.encode_to_vec())).unwrap(), answer);
        assert!(decode_sent(Bytes::from_static(&[0x0a, 0x05, 1])).is_err());
    }

    #[test]
    fn remoting_refusals_read_as_the_grpc_status_the_broker_meant() {
        let busy = answer_status(codes::STATUS_BASE + 8, Some("broker busy: 1024 sends in flight".into())).unwrap_err();
        assert_eq!(busy.code(), Code::ResourceExhausted);
        assert_eq!(busy.message(), "broker busy: 1024 sends in flight");
        let gone = answer_status(code::GO_AWAY, Some("server is shutting down".into())).unwrap_err();
        assert_eq!(gone.code(), Code::Unavailable);
        assert!(gone.message().starts_with("broker is shutting down"));
        assert_eq!(answer_status(code::SYSTEM_BUSY, None).unwrap_err().code(), Code::ResourceExhausted);
        assert_eq!(answer_status(42, None).unwrap_err().code(), Code::Internal);
        assert!(answer_status(code::SUCCESS, None).is_ok());
    }

    #[test]
    fn only_a_failed_connect_counts_as_never_sent() {
        let refused = transport_status(comet_remoting::Error::Connect { peer: "b:1".into(), reason: "refused".into() });
        assert_eq!(refused.code(), Code::Unavailable);
        assert!(never_connected(&refused));
        let closed =
            transport_status(comet_remoting::Error::ConnectionClosed { peer: "b:1".into(), reason: "reset".into() });
        assert_eq!(closed.code(), Code::Unavailable);
        assert!(!never_connected(&closed));
        assert!("grpc".parse::<Transport>().is_ok_and(|t| t == Transport::Grpc));
        assert!("http".parse::<Transport>().is_err());
    }
}
