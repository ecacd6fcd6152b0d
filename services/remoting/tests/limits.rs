//! Timeouts, per-handler busy rejection and client permits, over real TCP on 127.0.0.1.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use comet_remoting::{Client, ClientConfig, Command, Error, Request, Router, SerializeType, Server, code};
use common::*;
use tokio::sync::{Semaphore, mpsc};

const GATED: i32 = 2;

/// A router whose GATED handler reports each start on `started` and then waits for one permit of `gate`.
fn gated_router(limit: usize) -> (Router, mpsc::UnboundedReceiver<()>, Arc<Semaphore>) {
    let (tx, started) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let router = echo_router().route(GATED, limit, move |req: Request| {
        let (tx, gate) = (tx.clone(), g.clone());
        async move {
            let _ = tx.send(());
            let _permit = gate.acquire().await;
            Command::response(code::SUCCESS, None).with_body(req.command.body)
        }
    });
    (router, started, gate)
}

#[tokio::test]
async fn invoke_times_out_when_the_handler_does_not_answer() {
    let (router, _started, _gate) = gated_router(16);
    let server = Server::bind(server_config(SerializeType::RocketMq), router).await.unwrap();
    let client = client();
    let t = Instant::now();
    let err = client.invoke(&addr(&server), Command::request(GATED, ""), Duration::from_millis(100)).await;
    assert!(matches!(err, Err(Error::Timeout { code: GATED, .. })), "{err:?}");
    assert!(t.elapsed() >= Duration::from_millis(100) && t.elapsed() < Duration::from_secs(2));

    // Async requests time out through the sweeper (10 ms interval in the tests).
    let t = Instant::now();
    let fut = client.invoke_async(&addr(&server), Command::request(GATED, ""), Duration::from_millis(100)).await;
    let err = fut.unwrap().await;
    assert!(matches!(err, Err(Error::Timeout { .. })), "{err:?}");
    assert!(t.elapsed() >= Duration::from_millis(100) && t.elapsed() < Duration::from_secs(2));

    // The connection is still good.
    let ok = client.invoke(&addr(&server), Command::request(ECHO, "still"), LONG).await.unwrap();
    assert_eq!(ok.body, Bytes::from_static(b"still"));
}

#[tokio::test]
async fn a_handler_at_its_limit_answers_busy_while_other_codes_keep_working() {
    let (router, mut started, gate) = gated_router(2);
    let server = Server::bind(server_config(SerializeType::RocketMq), router).await.unwrap();
    let client = client();
    let a = client.invoke_async(&addr(&server), Command::request(GATED, "a"), LONG).await.unwrap();
    let b = client.invoke_async(&addr(&server), Command::request(GATED, "b"), LONG).await.unwrap();
    started.recv().await.unwrap();
    started.recv().await.unwrap();

    let busy = client.invoke(&addr(&server), Command::request(GATED, "c"), LONG).await.unwrap();
    assert_eq!(busy.code, code::SYSTEM_BUSY);
    assert!(busy.remark.unwrap().contains("busy"));
    let other = client.invoke(&addr(&server), Command::request(ECHO, "e"), LONG).await.unwrap();
    assert_eq!(other.code, code::SUCCESS);

    gate.add_permits(2);
    assert_eq!(a.await.unwrap().body, Bytes::from_static(b"a"));
    assert_eq!(b.await.unwrap().body, Bytes::from_static(b"b"));
    // Room again.
    gate.add_permits(1);
    let again = client.invoke(&addr(&server), Command::request(GATED, "d"), LONG).await.unwrap();
    assert_eq!(again.code, code::SUCCESS);
}

#[tokio::test]
async fn exhausted_async_permits_fail_clearly_and_come_back() {
    let (router, mut started, gate) = gated_router(16);
    let server = Server::bind(server_config(SerializeType::RocketMq), router).await.unwrap();
    let client = Client::new(ClientConfig { async_permits: 2, ..client_config(SerializeType::RocketMq) });
    let a = client.invoke_async(&addr(&server), Command::request(GATED, "a"), LONG).await.unwrap();
    let b = client.invoke_async(&addr(&server), Command::request(GATED, "b"), LONG).await.unwrap();
    started.recv().await.unwrap();
    started.recv().await.unwrap();

    let t = Instant::now();
    let err = client.invoke_async(&addr(&server), Command::request(GATED, "c"), Duration::from_millis(50)).await;
    assert!(matches!(err, Err(Error::TooManyRequests { kind: "async", limit: 2, .. })), "{err:?}");
    assert!(t.elapsed() >= Duration::from_millis(50));
    // Sync invokes take no permit.
    assert_eq!(client.invoke(&addr(&server), Command::request(ECHO, ""), LONG).await.unwrap().code, code::SUCCESS);

    gate.add_permits(16);
    a.await.unwrap();
    b.await.unwrap();
    let c = client.invoke_async(&addr(&server), Command::request(GATED, "c"), LONG).await.unwrap();
    assert_eq!(c.await.unwrap().body, Bytes::from_static(b"c"));
}

#[tokio::test]
async fn an_abandoned_async_request_returns_its_permit() {
    let (router, mut started, _gate) = gated_router(16);
    let server = Server::bind(server_config(SerializeType::RocketMq), router).await.unwrap();
    let client = Client::new(ClientConfig { async_permits: 1, ..client_config(SerializeType::RocketMq) });
    let a = client.invoke_async(&addr(&server), Command::request(GATED, "a"), LONG).await.unwrap();
    started.recv().await.unwrap();
    drop(a);
    let b = client.invoke_async(&addr(&server), Command::request(ECHO, "b"), Duration::from_millis(500)).await;
    assert_eq!(b.unwrap().await.unwrap().body, Bytes::from_static(b"b"));
}

#[tokio::test]
async fn exhausted_oneway_permits_fail_clearly() {
    // A peer that accepts and never reads: once the socket buffers are full, the 15 MiB oneway frame being written
    // keeps its permit (released only once written), so the next send cannot get one.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = listener.local_addr().unwrap().to_string();
    let _held = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        std::future::pending::<()>().await;
        drop(sock);
    });
    let client = Client::new(ClientConfig { oneway_permits: 1, ..client_config(SerializeType::RocketMq) });
    let big = Bytes::from(vec![0u8; 15 * 1024 * 1024]);
    // Each send waits for the one permit, i.e. for the previous frame to be written; the socket buffers take a
    // few frames at most (however large the machine's TCP buffers are), then a send cannot get the permit.
    let mut sent = 0;
    let err = loop {
        match client.invoke_oneway(&peer, Command::request(3, big.clone()), Duration::from_millis(50)).await {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 32, "480 MiB written to a peer that never reads");
    };
    assert!(matches!(err, Error::TooManyRequests { kind: "oneway", limit: 1, .. }), "{err:?}");
}

#[tokio::test]
async fn a_peer_that_stops_reading_pushes_back_instead_of_growing_the_write_queue() {
    // The peer accepts and never reads. Once its socket buffers and our 1 MiB write queue are full, sends wait for
    // room and fail at their timeout: memory stays bounded by the write queue, whatever the caller does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = listener.local_addr().unwrap().to_string();
    let _held = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        std::future::pending::<()>().await;
        drop(sock);
    });
    let mut config = client_config(SerializeType::RocketMq);
    config.channel.write_queue_bytes = 1024 * 1024;
    let client = Client::new(config);
    let body = Bytes::from(vec![0u8; 1024 * 1024]);
    let mut sent = 0usize;
    let err = loop {
        match client.invoke_oneway(&peer, Command::request(3, body.clone()), Duration::from_millis(200)).await {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 256, "256 MiB accepted without back-pressure");
    };
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    // Requests with a response get the same treatment.
    let err = client.invoke(&peer, Command::request(3, body), Duration::from_millis(100)).await;
    assert!(matches!(err, Err(Error::Timeout { .. })), "{err:?}");
}
