//! Every invocation mode end to end over real TCP on 127.0.0.1.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use comet_remoting::frame::{self, DEFAULT_MAX_FRAME_SIZE, FLAG_ONEWAY};
use comet_remoting::{Client, Command, FrameDecoder, Request, Router, SerializeType, Server, code};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

#[tokio::test]
async fn request_gets_its_response_in_both_header_encodings() {
    logs();
    for (client_ty, server_ty) in [
        (SerializeType::Json, SerializeType::RocketMq),
        (SerializeType::RocketMq, SerializeType::Json),
        (SerializeType::Json, SerializeType::Json),
        (SerializeType::RocketMq, SerializeType::RocketMq),
    ] {
        let server = Server::bind(server_config(server_ty), echo_router()).await.unwrap();
        let client = Client::new(client_config(client_ty));
        let req = Command::request(ECHO, "hello").with_ext("topic-less", "yes");
        let resp = client.invoke(&addr(&server), req, LONG).await.unwrap();
        assert_eq!(resp.code, code::SUCCESS);
        assert!(resp.is_response());
        assert_eq!(resp.body, Bytes::from_static(b"hello"));
        assert_eq!(resp.ext_fields.get("topic-less").map(String::as_str), Some("yes"));
        server.shutdown(LONG).await;
    }
}

#[tokio::test]
async fn async_invocations_pipeline_on_one_connection() {
    let server = echo_server().await;
    let client = client();
    let mut futures = Vec::new();
    for i in 0..200u32 {
        futures.push(client.invoke_async(&addr(&server), Command::request(ECHO, i.to_string()), LONG).await.unwrap());
    }
    for (i, f) in futures.into_iter().enumerate() {
        assert_eq!(f.await.unwrap().body, Bytes::from(i.to_string()));
    }
    assert_eq!(server.connections().len(), 1, "every request used the one connection");
}

#[tokio::test]
async fn callback_receives_the_response() {
    let server = echo_server().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Bound to a variable: dropping a client closes its connections (and fails what is pending on them).
    let client = client();
    client
        .invoke_with_callback(&addr(&server), Command::request(ECHO, "cb"), LONG, move |r| {
            let _ = tx.send(r.map(|c| c.body));
        })
        .await
        .unwrap();
    assert_eq!(rx.recv().await.unwrap().unwrap(), Bytes::from_static(b"cb"));
}

#[tokio::test]
async fn large_bodies_arrive_intact() {
    let server = echo_server().await;
    let body: Bytes = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
    let resp = client().invoke(&addr(&server), Command::request(ECHO, body.clone()), LONG).await.unwrap();
    assert_eq!(resp.body, body);
}

#[tokio::test]
async fn frames_of_every_size_pipelined_on_one_connection_arrive_intact() {
    // Large frames are read to their end only, and after them reads are sized like the last one (up to 2 MiB):
    // sizes around those thresholds and the read chunk, mixed with small frames, in flight together both ways.
    let server = echo_server().await;
    let client = client();
    let sizes =
        [70_000, 100, 20_000, 16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 3, 64 * 1024, 64 * 1024 + 7, 1 << 20, 3 << 20];
    let mut futures = Vec::new();
    for i in 0..88usize {
        let len = sizes[i % sizes.len()];
        let body: Bytes = (0..len).map(|j| ((i * 31 + j) % 251) as u8).collect::<Vec<u8>>().into();
        let answer = client.invoke_async(&addr(&server), Command::request(ECHO, body.clone()), LONG).await.unwrap();
        futures.push((body, answer));
    }
    for (i, (body, answer)) in futures.into_iter().enumerate() {
        assert!(answer.await.unwrap().body == body, "frame {i} of {} bytes came back changed", body.len());
    }
    assert_eq!(server.connections().len(), 1, "every request used the one connection");
}

#[tokio::test]
async fn oneway_requests_reach_their_handler() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let router = Router::new().route(5, 16, move |req: Request| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(req.command.body.clone());
            Command::response(code::SUCCESS, None)
        }
    });
    let server = Server::bind(server_config(SerializeType::RocketMq), router).await.unwrap();
    let client = client();
    for body in ["a", "b", "c"] {
        client.invoke_oneway(&addr(&server), Command::request(5, body), LONG).await.unwrap();
    }
    let mut got: Vec<Bytes> = vec![rx.recv().await.unwrap(), rx.recv().await.unwrap(), rx.recv().await.unwrap()];
    got.sort();
    assert_eq!(got, vec![Bytes::from_static(b"a"), Bytes::from_static(b"b"), Bytes::from_static(b"c")]);
}

#[tokio::test]
async fn oneway_requests_get_no_response_even_on_errors() {
    // Raw socket: a oneway request to an unknown code (which would be answered NOT_SUPPORTED if it were not
    // oneway), then a normal request. The first frame back must answer the normal request.
    let server = echo_server().await;
    let mut sock = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();
    let mut out = BytesMut::new();
    let oneway = Command { code: 999, opaque: 1, flag: FLAG_ONEWAY, ..Command::default() };
    frame::encode(&oneway, SerializeType::Json, DEFAULT_MAX_FRAME_SIZE, &mut out).unwrap();
    let req = Command { code: ECHO, opaque: 2, body: Bytes::from_static(b"x"), ..Command::default() };
    frame::encode(&req, SerializeType::RocketMq, DEFAULT_MAX_FRAME_SIZE, &mut out).unwrap();
    sock.write_all(&out).await.unwrap();
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
    let mut buf = BytesMut::new();
    let resp = loop {
        if let Some(c) = decoder.decode(&mut buf).unwrap() {
            break c;
        }
        assert!(sock.read_buf(&mut buf).await.unwrap() > 0);
    };
    assert_eq!((resp.opaque, resp.code), (2, code::SUCCESS));
    assert!(buf.is_empty(), "no other frame came back");
}

#[tokio::test]
async fn server_calls_its_client_back_over_the_same_connection() {
    const PING: i32 = 7;
    const ASK_CLIENT: i32 = 8;
    let client_router = Router::new().route(PING, 4, |req: Request| async move {
        Command::response(code::SUCCESS, None).with_body(format!("pong:{}", String::from_utf8_lossy(&req.command.body)))
    });
    let server_router = echo_router().route(ASK_CLIENT, 4, |req: Request| async move {
        match req.connection.invoke(Command::request(PING, "from-handler"), LONG).await {
            Ok(r) => Command::response(code::SUCCESS, None).with_body(r.body),
            Err(e) => Command::response(code::SYSTEM_ERROR, Some(e.to_string())),
        }
    });
    let server = Server::bind(server_config(SerializeType::RocketMq), server_router).await.unwrap();
    let client = Client::with_router(client_config(SerializeType::RocketMq), client_router);
    let resp = client.invoke(&addr(&server), Command::request(ASK_CLIENT, ""), LONG).await.unwrap();
    assert_eq!(resp.body, Bytes::from_static(b"pong:from-handler"));
    // And unprompted, from the server's connection list.
    let conn = server.connections().pop().unwrap();
    let resp = conn.invoke(Command::request(PING, "direct"), LONG).await.unwrap();
    assert_eq!(resp.body, Bytes::from_static(b"pong:direct"));
    let oneway = conn.invoke_oneway(Command::request(PING, "oneway"), LONG).await;
    assert!(oneway.is_ok());
}

#[tokio::test]
async fn unknown_codes_go_to_the_default_handler_or_are_not_supported() {
    let server = echo_server().await;
    let resp = client().invoke(&addr(&server), Command::request(4242, ""), LONG).await.unwrap();
    assert_eq!(resp.code, code::REQUEST_CODE_NOT_SUPPORTED);
    assert!(resp.remark.unwrap().contains("4242"));

    let router = echo_router().default_route(4, |req: Request| async move {
        Command::response(code::SUCCESS, Some(format!("default got {}", req.command.code)))
    });
    let server = Server::bind(server_config(SerializeType::RocketMq), router).await.unwrap();
    let resp = client().invoke(&addr(&server), Command::request(4242, ""), LONG).await.unwrap();
    assert_eq!((resp.code, resp.remark.as_deref()), (code::SUCCESS, Some("default got 4242")));
}

#[tokio::test]
async fn a_panicking_handler_answers_system_error_at_once() {
    // Code 9 panics on its first poll (run inline on the read task), code 10 after waiting (on its own task).
    let router = Router::new()
        .route(9, 4, |_req: Request| async move {
            if std::hint::black_box(true) {
                panic!("handler bug");
            }
            Command::response(code::SUCCESS, None)
        })
        .route(10, 4, |_req: Request| async move {
            tokio::task::yield_now().await;
            if std::hint::black_box(true) {
                panic!("handler bug after a wait");
            }
            Command::response(code::SUCCESS, None)
        });
    let server = Server::bind(server_config(SerializeType::RocketMq), router).await.unwrap();
    let client = client();
    for c in [9, 10, 9] {
        let resp = client.invoke(&addr(&server), Command::request(c, ""), Duration::from_secs(30)).await.unwrap();
        assert_eq!(resp.code, code::SYSTEM_ERROR);
    }
    // The connection survived both.
    assert_eq!(client.invoke(&addr(&server), Command::request(9, ""), LONG).await.unwrap().code, code::SYSTEM_ERROR);
    assert_eq!(server.connections().len(), 1);
}

#[tokio::test]
async fn a_detached_server_serves_connections_accepted_elsewhere_and_refuses_them_after_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    let server = Server::detached(server_config(SerializeType::RocketMq), echo_router(), local);
    let acceptor = {
        let server = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else { return };
                server.adopt(stream, peer);
            }
        })
    };
    let client = Client::new(client_config(SerializeType::RocketMq));
    let resp = client.invoke(&local.to_string(), Command::request(ECHO, "adopted"), LONG).await.unwrap();
    assert_eq!(resp.code, code::SUCCESS);
    assert_eq!(resp.body, Bytes::from_static(b"adopted"));
    assert_eq!(server.local_addr(), local);

    assert!(server.shutdown(LONG).await);
    // The old connection was closed; a new one is accepted by the listener but dropped by the server.
    let after = client.invoke(&local.to_string(), Command::request(ECHO, "late"), LONG).await;
    assert!(after.is_err(), "{after:?}");
    acceptor.abort();
}

#[tokio::test]
async fn a_body_gathered_from_parts_arrives_whole_and_in_order() {
    // A response split into more parts than one writev takes (1024), of mixed sizes, each part telling its
    // index; several such responses interleave on one connection with plain ones.
    const SPLIT: i32 = 2;
    let parts = |n: u32| -> Vec<Bytes> {
        (0..n).map(|i| Bytes::from(format!("{i}:").repeat(1 + (i as usize % 7) * 40))).collect()
    };
    let router = echo_router().route(SPLIT, 64, move |req: Request| async move {
        let n: u32 = std::str::from_utf8(&req.command.body).unwrap().parse().unwrap();
        Command::response(code::SUCCESS, None).with_body_parts(parts(n))
    });
    let server = Server::bind(server_config(SerializeType::RocketMq), router).await.unwrap();
    let client = client();
    let mut futures = Vec::new();
    for n in [0u32, 1, 2, 3000, 5, 1500] {
        futures.push((
            n,
            client.invoke_async(&addr(&server), Command::request(SPLIT, n.to_string()), LONG).await.unwrap(),
        ));
        futures.push((
            u32::MAX,
            client.invoke_async(&addr(&server), Command::request(ECHO, "plain"), LONG).await.unwrap(),
        ));
    }
    for (n, f) in futures {
        let resp = f.await.unwrap();
        if n == u32::MAX {
            assert_eq!(resp.body, Bytes::from_static(b"plain"));
        } else {
            assert_eq!(resp.body, parts(n).concat(), "{n} parts");
            assert!(resp.body_tail.is_empty(), "a received body is whole");
        }
    }
}

#[test]
fn a_gathered_body_counts_toward_the_frame_limit_and_encodes_like_one_body() {
    let whole = Command::response(code::SUCCESS, None).with_body(Bytes::from_static(b"abcdef"));
    let parts = Command::response(code::SUCCESS, None).with_body_parts(vec![
        Bytes::from_static(b"ab"),
        Bytes::new(),
        Bytes::from_static(b"cdef"),
    ]);
    assert_eq!(parts.body_len(), 6);
    let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
    frame::encode(&whole, SerializeType::RocketMq, DEFAULT_MAX_FRAME_SIZE, &mut a).unwrap();
    frame::encode(&parts, SerializeType::RocketMq, DEFAULT_MAX_FRAME_SIZE, &mut b).unwrap();
    assert_eq!(a, b);
    let big = Command::response(code::SUCCESS, None).with_body_parts(vec![Bytes::from(vec![0u8; 600]); 2]);
    assert!(frame::encode(&big, SerializeType::RocketMq, 1000, &mut BytesMut::new()).is_err());
}
