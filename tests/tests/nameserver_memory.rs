//! Memory-mode NameServers: registration, routes, failover, liveness, bad input, KV, grpcurl, shutdown.

use std::process::Command;
use std::time::Duration;

use comet_nameserver_client::{ClientError, NameServerClient};
use comet_proto::comet::v1 as pb;
use comet_proto::comet::v1::name_server_client::NameServerClient as RawClient;
use comet_tests::harness::binary::grpcurl;
use comet_tests::harness::broker::{header, identity, topic, topics, version};
use comet_tests::harness::nameserver::{NameServer, fast_client_config};
use comet_tests::harness::wait_until;
use tonic::Code;

#[tokio::test]
async fn two_memory_nameservers_both_serve_routes_and_client_fails_over() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&dir_a)?;
    std::fs::create_dir_all(&dir_b)?;
    let mut a = NameServer::memory(&dir_a, "").await?;
    let b = NameServer::memory(&dir_b, "").await?;
    let client = NameServerClient::new(fast_client_config(vec![a.addr(), b.addr()]))?;

    let broker = identity("c1", "broker-a", 0, "10.0.0.1:8081");
    for (addr, result) in client.register_broker_all(header(broker.clone(), 1), topics("orders", 3)).await {
        assert!(result?.data_changed, "{addr} should see a new broker");
    }
    for ns in [&a, &b] {
        let route = ns.client()?.query_route("orders-2").await?;
        assert_eq!(route.queues.len(), 1);
        assert_eq!(route.queues[0].write_queue_nums, 4);
        assert_eq!(route.brokers[0].addresses[&0], "10.0.0.1:8081");
    }

    assert_eq!(client.current_address(), a.addr(), "sticks to the first address");
    client.query_route("orders-0").await?;
    a.kill();
    let route = client.query_route("orders-0").await?;
    assert_eq!(route.topic, "orders-0");
    assert_eq!(client.current_address(), b.addr(), "failed over to the live NameServer");
    Ok(())
}

#[tokio::test]
async fn broker_with_100k_topics_registers_in_one_stream() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ns = NameServer::memory(dir.path(), "").await?;
    let client = ns.client()?;
    let broker = identity("c1", "big", 0, "10.0.0.9:8081");
    let started = std::time::Instant::now();
    let out = client.register_broker(header(broker, 1), topics("t", 100_000)).await?;
    assert!(out.data_changed);
    eprintln!("100 000 topics registered in {:?} (debug build)", started.elapsed());
    assert_eq!(client.query_route("t-99999").await?.brokers[0].broker_name, "big");
    assert_eq!(client.list_topics(None).await?.len(), 100_000);
    Ok(())
}

#[tokio::test]
async fn heartbeats_unregister_and_expiry_shape_the_routes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ns = NameServer::memory(dir.path(), "  scan-interval-ms: 100\n  broker-expiry-ms: 3000\n").await?;
    let client = ns.client()?;
    let leaving = identity("c1", "leaving", 0, "10.0.0.1:8081");
    let silent = identity("c1", "silent", 0, "10.0.0.2:8081");
    client.register_broker(header(leaving.clone(), 1), vec![topic("shared", 2), topic("only-leaving", 2)]).await?;
    client.register_broker(header(silent.clone(), 1), vec![topic("shared", 2)]).await?;

    assert!(!client.heartbeat(leaving.clone(), version(1)).await?, "known version: heartbeat suffices");
    assert!(client.heartbeat(leaving.clone(), version(2)).await?, "unknown version: full registration");
    let stranger = identity("c1", "stranger", 0, "10.0.0.3:8081");
    assert!(client.heartbeat(stranger, version(1)).await?, "unknown broker: full registration");

    client.unregister_broker(leaving).await?;
    assert!(matches!(client.query_route("only-leaving").await, Err(ClientError::NotFound { .. })), "gone at once");
    assert_eq!(client.query_route("shared").await?.queues.len(), 1);

    // `silent` never heartbeats: the 100 ms scan drops it 3 s after registration, and its topic with it.
    wait_until("silent broker to expire", Duration::from_secs(10), || async {
        matches!(client.query_route("shared").await, Err(ClientError::NotFound { .. }))
    })
    .await?;
    assert!(client.cluster_info().await?.clusters.is_empty());
    Ok(())
}

#[tokio::test]
async fn bad_input_gets_a_clear_status_and_changes_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ns = NameServer::memory(dir.path(), "").await?;
    let client = ns.client()?;
    let broker = identity("c1", "broker-a", 0, "10.0.0.1:8081");
    client.register_broker(header(broker.clone(), 1), vec![topic("good", 4)]).await?;

    let refused = |r: Result<pb::RegisterBrokerResponse, ClientError>| match r {
        Err(ClientError::Rejected { code, message, .. }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let (code, msg) = refused(client.register_broker(header(broker.clone(), 2), vec![topic("", 4)]).await);
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("topic name is empty"), "{msg}");
    let (code, msg) = refused(client.register_broker(header(broker.clone(), 2), vec![topic("bad/name", 4)]).await);
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("'/'"), "{msg}");
    let (code, msg) = refused(client.register_broker(header(broker.clone(), 2), vec![topic("huge", 100_000)]).await);
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("1..=1024"), "{msg}");
    let mut no_name = broker.clone();
    no_name.broker_name.clear();
    let (code, msg) = refused(client.register_broker(header(no_name, 2), vec![topic("x", 1)]).await);
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("broker_name"), "{msg}");
    let impostor = identity("c1", "broker-a", 0, "10.6.6.6:8081");
    let (code, msg) = refused(client.register_broker(header(impostor, 9), vec![topic("evil", 4)]).await);
    assert_eq!(code, Code::AlreadyExists);
    assert!(msg.contains("10.0.0.1:8081"), "{msg}");

    // A raw stream whose first message is not a header, and one whose count does not match.
    let mut raw = RawClient::connect(format!("http://{}", ns.addr())).await?;
    use pb::register_broker_request::Part;
    let batch =
        pb::RegisterBrokerRequest { part: Some(Part::Topics(pb::TopicConfigBatch { topics: vec![topic("x", 1)] })) };
    let err = raw.register_broker(tokio_stream::iter(vec![batch])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let mut short = header(broker.clone(), 3);
    short.topic_count = 5;
    let err = raw
        .register_broker(tokio_stream::iter(vec![pb::RegisterBrokerRequest { part: Some(Part::Header(short)) }]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("announced 5"), "{}", err.message());

    match client.query_route("").await {
        Err(ClientError::Rejected { code: Code::InvalidArgument, .. }) => {}
        other => panic!("empty topic: {other:?}"),
    }
    assert!(matches!(client.query_route("nobody-has-it").await, Err(ClientError::NotFound { .. })));
    match client.put_kv("a/b", "k", "v").await {
        Err(ClientError::Rejected { code: Code::InvalidArgument, .. }) => {}
        other => panic!("bad namespace: {other:?}"),
    }

    // Nothing above changed the table.
    let route = client.query_route("good").await?;
    assert_eq!(route.brokers[0].addresses[&0], "10.0.0.1:8081");
    assert_eq!(client.list_topics(None).await?, ["good"]);
    assert!(!client.heartbeat(broker, version(1)).await?, "data version untouched by refused registrations");
    Ok(())
}

#[tokio::test]
async fn kv_config_survives_a_nameserver_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ns = NameServer::memory(dir.path(), "").await?;
    let client = ns.client()?;
    client.put_kv("ORDER_TOPIC_CONFIG", "orders", "broker-a:4").await?;
    client.put_kv("ORDER_TOPIC_CONFIG", "gone", "x").await?;
    assert!(client.delete_kv("ORDER_TOPIC_CONFIG", "gone").await?);
    assert!(std::fs::read_to_string(dir.path().join("kvConfig.json"))?.contains("configTable"));

    let ns = ns.restart().await?;
    let client = ns.client()?;
    assert_eq!(client.get_kv("ORDER_TOPIC_CONFIG", "orders").await?.as_deref(), Some("broker-a:4"));
    assert_eq!(client.get_kv("ORDER_TOPIC_CONFIG", "gone").await?, None);
    assert_eq!(client.list_kv("ORDER_TOPIC_CONFIG").await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn grpcurl_lists_the_services_and_calls_query_route() -> anyhow::Result<()> {
    let grpcurl = grpcurl()?;
    let dir = tempfile::tempdir()?;
    let ns = NameServer::memory(dir.path(), "").await?;
    ns.client()?.register_broker(header(identity("c1", "b1", 0, "10.0.0.1:8081"), 1), vec![topic("orders", 8)]).await?;

    let run = |args: Vec<String>| -> anyhow::Result<String> {
        let out = Command::new(&grpcurl).args(args).output()?;
        anyhow::ensure!(out.status.success(), "grpcurl failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?)
    };
    let list = run(vec!["-plaintext".into(), ns.addr(), "list".into()])?;
    for service in ["comet.v1.NameServer", "grpc.health.v1.Health"] {
        assert!(list.contains(service), "{service} missing from:\n{list}");
    }
    assert!(!list.contains("comet.v1.Broker"), "a NameServer must not advertise the Broker API:\n{list}");
    let route = run(vec![
        "-plaintext".into(),
        "-d".into(),
        r#"{"topic":"orders"}"#.into(),
        ns.addr(),
        "comet.v1.NameServer/QueryRoute".into(),
    ])?;
    assert!(route.contains("10.0.0.1:8081") && route.contains("\"writeQueueNums\": 8"), "{route}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_nameserver_cleanly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut ns = NameServer::memory(dir.path(), "").await?;
    let client = ns.client()?;
    client.list_topics(None).await?;
    let started = std::time::Instant::now();
    assert!(ns.terminate().await?, "exit status after SIGTERM; stderr:\n{}", ns.log());
    assert!(started.elapsed() < Duration::from_secs(4), "took {:?} to stop", started.elapsed());
    Ok(())
}

#[tokio::test]
async fn reflection_v1_lists_the_services_too() -> anyhow::Result<()> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir()?;
    let ns = NameServer::memory(dir.path(), "").await?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", ns.addr()))?.connect().await?;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection.server_reflection_info(tokio_stream::iter(vec![request])).await?.into_inner();
    let Some(answer) = answers.message().await? else { anyhow::bail!("no reflection answer") };
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        anyhow::bail!("unexpected reflection answer {answer:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.iter().any(|n| n == "comet.v1.NameServer"), "{names:?}");
    Ok(())
}
