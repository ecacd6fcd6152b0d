//! Broken peers: death mid-request, invalid frames, restarts. Each failure must stay on its own connection.

mod common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use comet_remoting::frame::DEFAULT_MAX_FRAME_SIZE;
use comet_remoting::{ChannelConfig, Client, Command, Error, FrameDecoder, SerializeType, Server, ServerConfig, code};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn peer_death_fails_every_pending_request_at_once() {
    logs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = listener.local_addr().unwrap().to_string();
    // A "server" that reads ten requests, then dies without answering.
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
        let mut buf = BytesMut::new();
        let mut seen = 0;
        while seen < 10 {
            while decoder.decode(&mut buf).unwrap().is_some() {
                seen += 1;
            }
            if seen < 10 {
                assert!(sock.read_buf(&mut buf).await.unwrap() > 0);
            }
        }
        drop(sock);
    });
    let client = client();
    let timeout = Duration::from_secs(60);
    let mut pending = Vec::new();
    for i in 0..18 {
        let f = client.invoke_async(&peer, Command::request(ECHO, format!("{i}")), timeout).await.unwrap();
        pending.push(tokio::spawn(f));
    }
    let c = client.clone();
    let p = peer.clone();
    pending.push(tokio::spawn(async move { c.invoke(&p, Command::request(ECHO, "sync"), timeout).await }));
    let t = Instant::now();
    server.await.unwrap();
    for p in pending {
        let r = p.await.unwrap();
        assert!(matches!(r, Err(Error::ConnectionClosed { .. })), "{r:?}");
    }
    assert!(t.elapsed() < Duration::from_secs(5), "failed at once, not at the 60 s timeout: {:?}", t.elapsed());
}

async fn assert_closed_by_server(mut sock: TcpStream) {
    let mut buf = [0u8; 64];
    // EOF or reset, never a response, and never hanging (the test's own timeout would catch a hang).
    match tokio::time::timeout(LONG, sock.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => panic!("server answered {n} bytes instead of closing"),
        Err(_) => panic!("server kept the connection open"),
    }
}

#[tokio::test]
async fn oversized_and_malformed_frames_close_only_their_connection() {
    logs();
    let config = ServerConfig {
        channel: ChannelConfig { max_frame_size: 64 * 1024, ..channel(SerializeType::RocketMq) },
        ..server_config(SerializeType::RocketMq)
    };
    let server = Server::bind(config, echo_router()).await.unwrap();
    let good = client();
    let before = good.invoke(&addr(&server), Command::request(ECHO, "before"), LONG).await.unwrap();
    assert_eq!(before.code, code::SUCCESS);

    // Oversized: only the length is sent; the server refuses before any body arrives.
    let mut big = TcpStream::connect(server.local_addr()).await.unwrap();
    big.write_all(&(10 * 1024 * 1024i32).to_be_bytes()).await.unwrap();
    assert_closed_by_server(big).await;

    // Negative length.
    let mut neg = TcpStream::connect(server.local_addr()).await.unwrap();
    neg.write_all(&(-5i32).to_be_bytes()).await.unwrap();
    assert_closed_by_server(neg).await;

    // Unknown serialize type (7) in a complete frame.
    let mut bad_type = TcpStream::connect(server.local_addr()).await.unwrap();
    bad_type.write_all(&[0, 0, 0, 8, 7, 0, 0, 4, 1, 2, 3, 4]).await.unwrap();
    assert_closed_by_server(bad_type).await;

    // A JSON header that is not JSON.
    let mut garbage = TcpStream::connect(server.local_addr()).await.unwrap();
    garbage.write_all(&[0, 0, 0, 9, 0, 0, 0, 5, b'{', b'n', b'o', b'p', b'e']).await.unwrap();
    assert_closed_by_server(garbage).await;

    // The well-behaved client never noticed.
    let after = good.invoke(&addr(&server), Command::request(ECHO, "after"), LONG).await.unwrap();
    assert_eq!(after.body, Bytes::from_static(b"after"));
    assert_eq!(server.connections().len(), 1);
}

#[tokio::test]
async fn an_oversized_request_fails_before_sending_and_the_connection_survives() {
    let server = echo_server().await;
    let client = Client::new(comet_remoting::ClientConfig {
        channel: ChannelConfig { max_frame_size: 1024, ..channel(SerializeType::RocketMq) },
        ..client_config(SerializeType::RocketMq)
    });
    let err = client.invoke(&addr(&server), Command::request(ECHO, vec![0u8; 2048]), LONG).await;
    assert!(matches!(err, Err(Error::Encode { .. })), "{err:?}");
    let ok = client.invoke(&addr(&server), Command::request(ECHO, "small"), LONG).await.unwrap();
    assert_eq!(ok.body, Bytes::from_static(b"small"));
}

#[tokio::test]
async fn client_reconnects_after_server_restart() {
    let server = echo_server().await;
    let address = addr(&server);
    let client = client();
    client.invoke(&address, Command::request(ECHO, "1"), LONG).await.unwrap();
    let conn = client.connection(&address, LONG).await.unwrap();
    assert!(server.shutdown(LONG).await);
    conn.closed().await;
    let err = client.invoke(&address, Command::request(ECHO, "down"), LONG).await;
    assert!(matches!(err, Err(Error::Connect { .. })), "{err:?}");

    let restarted =
        Server::bind(ServerConfig { listen: address.clone(), ..server_config(SerializeType::Json) }, echo_router())
            .await
            .unwrap();
    // The client is in back-off (5 ms doubling, at most 50 ms): calls fail fast until the next attempt is due.
    let deadline = Instant::now() + LONG;
    let resp = loop {
        match client.invoke(&address, Command::request(ECHO, "2"), LONG).await {
            Ok(r) => break r,
            Err(Error::Connect { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(resp.body, Bytes::from_static(b"2"));
    restarted.shutdown(LONG).await;
}

#[tokio::test]
async fn a_connection_idle_past_the_idle_timeout_is_closed_and_a_busy_one_is_kept() {
    logs();
    // Idle twice as long as a stall this test's 100 ms rhythm should survive on a loaded machine.
    let idle = Duration::from_millis(600);
    let mut config = server_config(SerializeType::RocketMq);
    config.channel.idle_timeout_ms = idle.as_millis() as u64;
    let server = Server::bind(config, echo_router()).await.unwrap();

    // Connected and silent: closed once the timeout passed, not before.
    let t = Instant::now();
    let silent = TcpStream::connect(server.local_addr()).await.unwrap();
    assert_closed_by_server(silent).await;
    assert!(t.elapsed() >= idle, "closed after {:?}, before the idle timeout", t.elapsed());

    // A client calling every 100 ms keeps its one connection for three times the timeout.
    let client = client();
    let conn = client.connection(&addr(&server), LONG).await.unwrap();
    for i in 0..9 {
        let answer = client.invoke(&addr(&server), Command::request(ECHO, format!("{i}")), LONG).await.unwrap();
        assert_eq!(answer.body, Bytes::from(format!("{i}")));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!conn.is_closed(), "a connection with traffic is never idle");

    // Once it falls silent, it goes too; the client's next call connects again.
    let reason = tokio::time::timeout(LONG, conn.closed()).await.expect("closed within the test's patience");
    assert!(reason.contains("closed by peer"), "{reason}");
    let again = client.invoke(&addr(&server), Command::request(ECHO, "again"), LONG).await.unwrap();
    assert_eq!(again.body, Bytes::from("again"));
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_at_once_and_a_freed_slot_serves_again() {
    logs();
    let mut config = server_config(SerializeType::RocketMq);
    config.max_connections = 2;
    let server = Server::bind(config, echo_router()).await.unwrap();
    let client = client();
    let answer = client.invoke(&addr(&server), Command::request(ECHO, "first"), LONG).await.unwrap();
    assert_eq!(answer.body, Bytes::from("first"));
    let held = TcpStream::connect(server.local_addr()).await.unwrap();

    // Two are open (the client's and `held`): a third is closed without an answer.
    let t = Instant::now();
    assert_closed_by_server(TcpStream::connect(server.local_addr()).await.unwrap()).await;
    assert!(t.elapsed() < Duration::from_secs(5), "closed at accept, not by a timeout: {:?}", t.elapsed());
    let answer = client.invoke(&addr(&server), Command::request(ECHO, "still"), LONG).await.unwrap();
    assert_eq!(answer.body, Bytes::from("still"), "the connections within the limit keep working");

    // Freeing a slot lets a new connection in.
    drop(held);
    let other = common::client();
    let deadline = Instant::now() + LONG;
    loop {
        match other.invoke(&addr(&server), Command::request(ECHO, "new"), Duration::from_secs(1)).await {
            Ok(answer) => {
                assert_eq!(answer.body, Bytes::from("new"));
                break;
            }
            // The server may not have seen `held` close yet.
            Err(e) if Instant::now() < deadline => tracing::debug!("retrying: {e}"),
            Err(e) => panic!("a freed slot never served: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
