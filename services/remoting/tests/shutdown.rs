//! Graceful shutdown: running handlers finish and their responses reach the client; new requests get GO_AWAY.

mod common;

use std::pin::pin;
use std::sync::Arc;

use bytes::Bytes;
use comet_remoting::{Command, Request, SerializeType, Server, code};
use common::*;
use tokio::sync::{Semaphore, mpsc};

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_requests() {
    let (tx, mut started) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let router = echo_router().route(2, 16, move |req: Request| {
        let (tx, gate) = (tx.clone(), g.clone());
        async move {
            let _ = tx.send(());
            let _permit = gate.acquire().await;
            Command::response(code::SUCCESS, None).with_body(req.command.body)
        }
    });
    let server = Server::bind(server_config(SerializeType::RocketMq), router).await.unwrap();
    let client = client();
    let in_flight = client.invoke_async(&addr(&server), Command::request(2, "in-flight"), LONG).await.unwrap();
    started.recv().await.unwrap();
    let old = client.connection(&addr(&server), LONG).await.unwrap();

    // Poll shutdown once: it marks the server draining, then waits for the handler.
    let mut shutdown = pin!(server.shutdown(LONG));
    tokio::select! {
        biased;
        _ = &mut shutdown => panic!("shutdown finished with a handler still running"),
        _ = std::future::ready(()) => {}
    }
    let refused = client.invoke(&addr(&server), Command::request(1, "new"), LONG).await.unwrap();
    assert_eq!(refused.code, code::GO_AWAY);

    gate.add_permits(1);
    let (drained, response) = tokio::join!(shutdown, in_flight);
    assert!(drained);
    assert_eq!(response.unwrap().body, Bytes::from_static(b"in-flight"));
    assert!(server.connections().is_empty());
    // The client sees the close (after the response), and the port no longer accepts.
    assert!(old.closed().await.contains("peer"));
    let conn = client.connection(&addr(&server), LONG).await;
    assert!(conn.is_err(), "no longer accepting");
}
