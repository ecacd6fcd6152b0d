//! The data path on the remoting channel: `comet.v1.Broker` SendMessage and PullMessage carried in remoting frames
//! on the gRPC port, for the comet SDK (docs/broker.md, "Data path"). HTTP/2 costs about twice the CPU and
//! latency of a remoting frame per call on this hardware (docs/benchmarks.md, "Remoting"), and these two calls are
//! the broker's hot path; everything else, and every other client, stays on gRPC.
//!
//! One port serves both: the acceptor peeks at a new connection's first byte. An HTTP/2 client opens with its
//! preface (`PRI * HTTP/2.0`, ASCII); a remoting frame opens with its big-endian length, whose first byte is a
//! control character for any frame under 512 MiB. Control characters go to the remoting server, the rest to tonic.
//! (A TLS ClientHello opens with 0x16, also a control character: serving TLS on this port would need the sort to
//! look further, at the second and third bytes, 0x03 0x0N.)
//!
//! The request code names the method, the body is its protobuf request, a success answers the protobuf response
//! (a pull's encoded straight from the stored records, bodies sent from the CommitLog's mapping: `edge::wire`);
//! a refusal answers `STATUS_BASE + gRPC code` with the message as remark, so a client reports exactly what the
//! gRPC path would have (`comet_proto::remoting`). The handlers are the gRPC ones: same checks, same bounds
//! (`max-inflight-sends`, `max-parked-pulls`), same metrics (`protocol_type="remoting"`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use comet_proto::codec::decode_with_room;
use comet_proto::comet::v1 as pb;
use comet_proto::remoting as codes;
use comet_remoting::{ChannelConfig, Command, ConnectionLimit, Request, Router, Server, ServerConfig};
use comet_telemetry::RpcMetricsLayer;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::broker::Broker;
use crate::edge::wire;
use crate::error::{BrokerError, Result};
use crate::handler::{pull, send};

/// The gRPC service whose methods the data path carries (the metrics' `rpc_service`).
const SERVICE: &str = "comet.v1.Broker";

/// How long a new connection may stay silent before it is dropped unsorted.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepted connections waiting for tonic to take them.
const HANDOFF_QUEUE: usize = 128;

/// A send request larger than this leaves the connection's read task before its work: the channel polls a handler
/// once on the task that reads the connection, so a big batch decoded and appended there would hold up every
/// request behind it on the connection (gRPC runs each call on a task of its own). Smaller ones answer in place.
const IN_PLACE_SEND_BYTES: usize = 64 << 10;

/// The remoting server of the data path: no listener of its own, fed by [`split`].
pub fn server(broker: &Arc<Broker>, metrics: &RpcMetricsLayer, local_addr: SocketAddr, max_frame: usize) -> Server {
    let limits = &broker.config.broker;
    // The broker's own bounds answer "busy" first (with its message); these only cap what waits to reach them.
    let sends = limits.max_inflight_sends.saturating_mul(2).max(64);
    let pulls = limits.max_parked_pulls.saturating_mul(2).saturating_add(1024);
    let send_broker = Arc::clone(broker);
    let send_metrics = metrics.clone();
    let pull_broker = Arc::clone(broker);
    let pull_metrics = metrics.clone();
    let router = Router::new()
        .route(codes::SEND_MESSAGE, sends, move |request: Request| {
            let (broker, metrics) = (Arc::clone(&send_broker), send_metrics.clone());
            async move {
                let start = Instant::now();
                if request.command.body.len() > IN_PLACE_SEND_BYTES {
                    tokio::task::yield_now().await;
                }
                let born_host = request.connection.peer().parse().ok();
                let answer = match decode_send(&request.command.body) {
                    Ok(r) => send::send(&broker, r, born_host).await.map(|r| vec![Bytes::from(r.encode_to_vec())]),
                    Err(refused) => Err(refused),
                };
                respond(&metrics, "SendMessage", start, answer)
            }
        })
        .route(codes::PULL_MESSAGE, pulls, move |request: Request| {
            let (broker, metrics) = (Arc::clone(&pull_broker), pull_metrics.clone());
            async move {
                let start = Instant::now();
                // A pull may read and encode up to 16 MiB: always off the read task (see IN_PLACE_SEND_BYTES).
                tokio::task::yield_now().await;
                let answer = match decode::<pb::PullMessageRequest>(&request.command.body) {
                    Ok(r) => pull::pull_stored(&broker, r).await.map(|pulled| wire::pull_response(&pulled)),
                    Err(refused) => Err(refused),
                };
                respond(&metrics, "PullMessage", start, answer)
            }
        });
    let config = ServerConfig {
        channel: ChannelConfig { max_frame_size: max_frame, ..ChannelConfig::default() },
        ..ServerConfig::default()
    };
    Server::detached(config, router, local_addr)
}

fn decode<T: Message + Default>(body: &Bytes) -> Result<T> {
    T::decode(body.clone()).map_err(|e| BrokerError::invalid("request", format!("not a protobuf request: {e}")))
}

/// Decodes a send with its message list allocated once: prost grows it by doubling, and at 1 000 messages of
/// ~180 bytes each the copies were 3 % of the broker's instructions per stored message (callgrind).
fn decode_send(body: &Bytes) -> Result<pb::SendMessageRequest> {
    decode_with_room(body.clone(), 4, PRESIZED_MESSAGES, |r: &mut pb::SendMessageRequest| &mut r.messages)
        .map_err(|e| BrokerError::invalid("request", format!("not a protobuf request: {e}")))
}

/// The most messages [`decode_send`] reserves room for up front (more still decode, growing the list).
const PRESIZED_MESSAGES: usize = 4096;

/// The response frame of one call (its encoded protobuf response, in parts), timed like its gRPC twin.
fn respond(metrics: &RpcMetricsLayer, method: &str, start: Instant, answer: Result<Vec<Bytes>>) -> Command {
    let (code, command) = match answer {
        Ok(parts) => (0, Command::response(comet_remoting::code::SUCCESS, None).with_body_parts(parts)),
        Err(err) => {
            let status = tonic::Status::from(err);
            let code = i32::from(status.code());
            (code, Command::response(codes::STATUS_BASE + code, Some(status.message().to_owned())))
        }
    };
    metrics.record("remoting", SERVICE, method, code, start);
    command
}

/// Accepts on `listener` and sorts connections by their first byte: remoting ones to `remoting`, the rest into the
/// returned stream for tonic (which stops accepting when the stream's receiver is dropped). At most
/// `max_connections` are open at once: one beyond is closed as soon as it is accepted. Ends when the listener
/// fails for good or the receiver is gone.
pub fn split(
    listener: TcpListener,
    remoting: Server,
    max_connections: usize,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Admitted>> {
    let (tx, rx) = mpsc::channel(HANDOFF_QUEUE);
    let mut limit = ConnectionLimit::new(max_connections, "broker.max-connections");
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: keep serving existing connections, try again shortly.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let Some(slot) = limit.admit(peer) else { continue }; // dropping `stream` closes it
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
            }
            let (tx, remoting) = (tx.clone(), remoting.clone());
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                match tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.peek(&mut first)).await {
                    Ok(Ok(1)) if first[0] < 0x20 => remoting.adopt_with(stream, peer, slot),
                    Ok(Ok(1)) => {
                        let _ = tx.send(Ok(Admitted { stream, _slot: slot })).await;
                    }
                    Ok(Ok(_)) => tracing::debug!(%peer, "connection closed before its first byte"),
                    Ok(Err(e)) => tracing::debug!(%peer, "connection failed before its first byte: {e}"),
                    Err(_) => tracing::debug!(%peer, "connection silent for {FIRST_BYTE_TIMEOUT:?}; dropped"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A connection handed to tonic, holding its slot of `broker.max-connections` until it is dropped.
pub struct Admitted {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for Admitted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Admitted {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_is_decoded_into_a_presized_list_and_a_truncated_one_is_refused() {
        let message = |i: u8| pb::OutgoingMessage {
            message_id: format!("id-{i}"),
            body: Bytes::from(vec![i; 300]),
            ..Default::default()
        };
        let request = pb::SendMessageRequest {
            topic: "t".into(),
            queue_id: Some(3),
            producer_group: "g".into(),
            messages: (0..5).map(message).collect(),
            transactional: true,
        };
        let decoded = decode_send(&Bytes::from(request.encode_to_vec())).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(decoded, request);
        assert!(decoded.messages.capacity() >= 5);
        let empties = Bytes::from([0x22, 0x00].repeat(PRESIZED_MESSAGES * 2));
        assert_eq!(decode_send(&empties).map(|r| r.messages.len()).ok(), Some(PRESIZED_MESSAGES * 2));
        assert!(decode_send(&Bytes::from_static(&[0x22, 0x05, 1])).is_err(), "a truncated message is refused");
    }
}
