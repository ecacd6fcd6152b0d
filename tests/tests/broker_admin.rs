//! Real broker processes: topic and group admin reaching the NameServer, client heartbeats, and bad input.

use std::time::Duration;

use comet_proto::comet::v1 as pb;
use comet_tests::harness::broker_process::{BrokerOptions, BrokerProcess, dispatched};
use comet_tests::harness::nameserver::NameServer;
use comet_tests::harness::wait_until;
use tonic::Code;

fn topic(name: &str, queues: u32) -> pb::TopicConfig {
    pb::TopicConfig { name: name.into(), read_queue_nums: queues, write_queue_nums: queues, ..Default::default() }
}

fn one(body: Vec<u8>) -> Vec<pb::OutgoingMessage> {
    vec![pb::OutgoingMessage { body: body.into(), ..Default::default() }]
}

fn send_request(topic: &str, queue: Option<u32>, messages: Vec<pb::OutgoingMessage>) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        topic: topic.into(),
        queue_id: queue,
        producer_group: String::new(),
        messages,
        ..Default::default()
    }
}

fn pull_request(group: &str, topic: &str, queue: u32, offset: u64) -> pb::PullMessageRequest {
    pb::PullMessageRequest {
        group: group.into(),
        topic: topic.into(),
        queue_id: queue,
        offset,
        max_count: 10,
        ..Default::default()
    }
}

#[tokio::test]
async fn topic_changes_reach_the_nameserver_at_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ns_dir = dir.path().join("ns");
    std::fs::create_dir_all(&ns_dir)?;
    let ns = NameServer::memory(&ns_dir, "").await?;
    let options = BrokerOptions { nameservers: vec![ns.addr()], ..Default::default() };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    let mut client = broker.client().await?;
    let ns_client = ns.client()?;

    let created = client.create_topic(pb::CreateTopicRequest { topic: Some(topic("admin", 0)) }).await?.into_inner();
    assert_eq!(created.topic.unwrap_or_default().write_queue_nums, 8, "0 takes the default queue count");
    wait_until("route with 8 queues", Duration::from_secs(10), || async {
        ns_client.query_route("admin").await.is_ok_and(|r| r.queues.first().is_some_and(|q| q.write_queue_nums == 8))
    })
    .await?;

    client.update_topic(pb::UpdateTopicRequest { topic: Some(topic("admin", 2)) }).await?;
    wait_until("route with 2 queues", Duration::from_secs(10), || async {
        ns_client.query_route("admin").await.is_ok_and(|r| r.queues.first().is_some_and(|q| q.write_queue_nums == 2))
    })
    .await?;
    let described = client.describe_topic(pb::DescribeTopicRequest { topic: "admin".into() }).await?.into_inner();
    assert_eq!(described.queues.len(), 2);

    client.delete_topic(pb::DeleteTopicRequest { topic: "admin".into() }).await?;
    wait_until("route gone", Duration::from_secs(10), || async { ns_client.query_route("admin").await.is_err() })
        .await?;
    assert!(client.list_topics(pb::ListBrokerTopicsRequest {}).await?.into_inner().topics.is_empty());
    Ok(())
}

#[tokio::test]
async fn heartbeats_list_live_consumers_and_unregistering_removes_them() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), &BrokerOptions::default()).await?;
    let mut client = broker.client().await?;
    for id in ["client-b", "client-a"] {
        let heartbeat = pb::ClientHeartbeatRequest {
            client_id: id.into(),
            producer_groups: vec![],
            consumer_groups: vec![pb::ConsumerGroupHeartbeat {
                group: "cg".into(),
                message_model: pb::MessageModel::Clustering.into(),
                subscriptions: vec![pb::Subscription { topic: "t".into(), expression: "a||b".into() }],
            }],
            ..Default::default()
        };
        client.heartbeat(heartbeat).await?;
    }
    let list = client.get_consumer_list(pb::GetConsumerListRequest { group: "cg".into() }).await?.into_inner();
    assert_eq!(list.client_ids, ["client-a", "client-b"]);
    assert_eq!(list.members[0].subscriptions[0].expression, "a||b");
    let groups = client.list_groups(pb::ListGroupsRequest {}).await?.into_inner().groups;
    assert!(groups.iter().any(|g| g.name == "cg" && g.consume_enable), "auto-created on heartbeat");

    let described = client.describe_group(pb::DescribeGroupRequest { group: "cg".into() }).await?.into_inner();
    assert_eq!(described.members.len(), 2);
    let status = client.describe_group(pb::DescribeGroupRequest { group: "nobody".into() }).await.expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);

    client.unregister_client(pb::UnregisterClientRequest { client_id: "client-a".into(), groups: vec![] }).await?;
    let list = client.get_consumer_list(pb::GetConsumerListRequest { group: "cg".into() }).await?.into_inner();
    assert_eq!(list.client_ids, ["client-b"]);
    Ok(())
}

#[tokio::test]
async fn bad_input_gets_clear_statuses_and_the_broker_keeps_serving() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = BrokerOptions { no_auto_create: true, ..Default::default() };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    let mut client = broker.client().await?;
    let code_of = |r: Result<tonic::Response<_>, tonic::Status>| -> (Code, String) {
        match r {
            Ok(_) => (Code::Ok, String::new()),
            Err(s) => (s.code(), s.message().to_owned()),
        }
    };

    // Unknown topic with auto-creation off.
    let (code, msg) = code_of(
        client.send_message(send_request("nope", None, one(b"x".to_vec()))).await.map(|_| ()).map(tonic::Response::new),
    );
    assert_eq!(code, Code::NotFound, "{msg}");
    assert!(msg.contains("nope"), "{msg}");

    client.create_topic(pb::CreateTopicRequest { topic: Some(topic("t", 2)) }).await?;
    let (code, _) = code_of(
        client
            .create_topic(pb::CreateTopicRequest { topic: Some(topic("t", 2)) })
            .await
            .map(|_| ())
            .map(tonic::Response::new),
    );
    assert_eq!(code, Code::AlreadyExists);

    let cases: Vec<(&str, pb::SendMessageRequest, Code, &str)> = vec![
        (
            "oversized body",
            send_request("t", None, one(vec![7u8; (4 << 20) + 1])),
            Code::InvalidArgument,
            "max-message-size",
        ),
        ("empty body", send_request("t", None, one(Vec::new())), Code::InvalidArgument, "empty"),
        ("invalid topic name", send_request("bad topic!", None, one(b"x".to_vec())), Code::InvalidArgument, "topic"),
        ("no messages", send_request("t", None, vec![]), Code::InvalidArgument, "messages"),
        ("queue out of range", send_request("t", Some(9), one(b"x".to_vec())), Code::InvalidArgument, "queue_id"),
    ];
    for (what, request, want, needle) in cases {
        let status = client.send_message(request).await.expect_err(what);
        assert_eq!(status.code(), want, "{what}: {}", status.message());
        assert!(status.message().contains(needle), "{what}: {}", status.message());
    }

    let status = client.pull_message(pull_request("bad group!", "t", 0, 0)).await.expect_err("invalid group");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    let status = client.pull_message(pull_request("g", "t", 5, 0)).await.expect_err("queue out of range");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    let status = client.pull_message(pull_request("g", "missing", 0, 0)).await.expect_err("unknown topic");
    assert_eq!(status.code(), Code::NotFound, "{}", status.message());
    let status = client
        .pull_message(pb::PullMessageRequest { tag_expression: "||".into(), ..pull_request("g", "t", 0, 0) })
        .await
        .expect_err("empty tag expression");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());

    // Offsets out of range: a pull beyond the end says so; a commit beyond the end is refused.
    client.send_message(send_request("t", Some(0), one(b"x".to_vec()))).await?;
    dispatched(&client, "t", 0..1, 1).await?;
    let beyond = client.pull_message(pull_request("g", "t", 0, 5)).await?.into_inner();
    assert_eq!(beyond.status(), pb::PullStatus::OffsetOverflow);
    assert_eq!(beyond.next_offset, 1);
    let commit = pb::CommitConsumerOffsetRequest { group: "g".into(), topic: "t".into(), queue_id: 0, offset: 2 };
    let status = client.commit_consumer_offset(commit).await.expect_err("commit beyond the end");
    assert_eq!(status.code(), Code::OutOfRange, "{}", status.message());
    let status = client
        .query_message_by_id(pb::QueryMessageByIdRequest { message_id: "0123".into() })
        .await
        .expect_err("unknown id");
    assert_eq!(status.code(), Code::NotFound);

    // Nothing else broke: a normal send and pull still work.
    client.send_message(send_request("t", Some(0), one(b"y".to_vec()))).await?;
    dispatched(&client, "t", 0..1, 2).await?;
    let got = client.pull_message(pull_request("g", "t", 0, 0)).await?.into_inner();
    assert_eq!(got.messages.len(), 2);
    Ok(())
}

#[tokio::test]
async fn long_polls_beyond_the_parking_limit_get_the_retryable_busy_status() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = BrokerOptions { broker_extra: "  max-parked-pulls: 1\n".into(), ..Default::default() };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    let mut client = broker.client().await?;
    client.create_topic(pb::CreateTopicRequest { topic: Some(topic("t", 1)) }).await?;

    let mut first = client.clone();
    let parked = tokio::spawn(async move {
        first.pull_message(pb::PullMessageRequest { max_wait_millis: 20_000, ..pull_request("g", "t", 0, 0) }).await
    });
    wait_until("the first pull to be parked", Duration::from_secs(10), || async {
        broker.log().contains("pull parked")
    })
    .await?;
    let status = client
        .pull_message(pb::PullMessageRequest { max_wait_millis: 20_000, ..pull_request("g", "t", 0, 0) })
        .await
        .expect_err("second long poll");
    assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
    assert!(status.message().contains("busy"), "{}", status.message());
    // A pull that does not wait is still served, and the parked one still gets its message.
    client.pull_message(pull_request("g", "t", 0, 0)).await?;
    client.send_message(send_request("t", Some(0), one(b"x".to_vec()))).await?;
    let got = tokio::time::timeout(Duration::from_secs(10), parked).await???.into_inner();
    assert_eq!(got.messages.len(), 1);
    Ok(())
}

/// Opens a TCP connection to `addr` and reports whether the broker kept it open (true) or closed it at once.
async fn admitted(addr: &str) -> anyhow::Result<(tokio::net::TcpStream, bool)> {
    use tokio::io::AsyncReadExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut byte = [0u8; 1];
    // An admitted connection stays silent (the broker waits for the client's first bytes); a refused one is closed
    // at once, which a starved broker may take a while to get to.
    let open = tokio::time::timeout(Duration::from_millis(1_000), stream.read(&mut byte)).await.is_err();
    Ok((stream, open))
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once_and_a_freed_slot_serves_again() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = BrokerOptions { broker_extra: "  max-connections: 3\n".into(), ..Default::default() };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    // The harness's readiness probe may still hold a slot for a moment: probe until three are held.
    let mut held = Vec::new();
    for _ in 0..20 {
        held.clear();
        let mut refused = false;
        while !refused && held.len() <= 3 {
            let (stream, open) = admitted(&broker.addr()).await?;
            if open {
                held.push(stream);
            } else {
                refused = true;
            }
        }
        assert!(held.len() <= 3, "{} connections admitted with max-connections 3", held.len());
        if held.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(held.len(), 3, "three connections admitted, the next refused");
    // A client cannot get in while all slots are taken, and gets an error rather than a hang.
    let full = tokio::time::timeout(Duration::from_secs(10), async {
        let mut c = broker.client().await?;
        c.list_topics(pb::ListBrokerTopicsRequest::default()).await.map_err(anyhow::Error::from)
    })
    .await?;
    assert!(full.is_err(), "a call while every slot is taken");
    // Closing one frees its slot for the next client.
    held.pop();
    let mut served = false;
    for _ in 0..50 {
        if let Ok(mut c) = broker.client().await
            && c.list_topics(pb::ListBrokerTopicsRequest::default()).await.is_ok()
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "a freed slot serves a new client");
    assert!(broker.log().contains("broker.max-connections"), "refusals are logged");
    Ok(())
}

#[tokio::test]
async fn grpcurl_lists_the_broker_service_and_sends_a_message() -> anyhow::Result<()> {
    let grpcurl = comet_tests::harness::binary::grpcurl()?;
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), &BrokerOptions::default()).await?;
    let run = |args: &[&str]| -> anyhow::Result<String> {
        let out = std::process::Command::new(&grpcurl).args(args).output()?;
        anyhow::ensure!(out.status.success(), "grpcurl failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?)
    };
    let addr = broker.addr();
    let list = run(&["-plaintext", &addr, "list"])?;
    for service in ["comet.v1.Broker", "grpc.health.v1.Health"] {
        assert!(list.contains(service), "{service} missing from:\n{list}");
    }
    assert!(!list.contains("comet.v1.NameServer"), "a broker must not advertise the NameServer API:\n{list}");
    // "aGVsbG8=" is base64 for "hello": proto3 JSON encodes bytes that way.
    let sent = run(&[
        "-plaintext",
        "-d",
        r#"{"topic":"demo","messages":[{"body":"aGVsbG8=","tags":"t1","keys":["k1"]}]}"#,
        &addr,
        "comet.v1.Broker/SendMessage",
    ])?;
    assert!(sent.contains("messageId"), "{sent}");
    Ok(())
}

#[tokio::test]
async fn a_restarted_nameserver_gets_a_full_registration_at_the_next_heartbeat() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ns_dir = dir.path().join("ns");
    std::fs::create_dir_all(&ns_dir)?;
    // A fixed port, so the restarted NameServer is at the address the broker was configured with.
    let port = comet_tests::harness::free_port()?;
    let ns_yaml =
        format!("nameserver:\n  listen: 127.0.0.1:{port}\n  kv-config-path: {}\n", ns_dir.join("kv.json").display());
    let mut ns = NameServer::with_config(&ns_dir, &ns_yaml).await?;
    let options = BrokerOptions {
        nameservers: vec![ns.addr()],
        broker_extra: "  register-interval-ms: 300\n".into(),
        ..Default::default()
    };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    let mut client = broker.client().await?;
    client.create_topic(pb::CreateTopicRequest { topic: Some(topic("survivor", 2)) }).await?;
    let ns_client = ns.client()?;
    wait_until("route before the restart", Duration::from_secs(10), || async {
        ns_client.query_route("survivor").await.is_ok()
    })
    .await?;

    // A memory NameServer forgets everything when it restarts; the broker's heartbeat learns that and re-registers.
    ns.kill();
    let ns = NameServer::with_config(&ns_dir, &ns_yaml).await?;
    let ns_client = ns.client()?;
    wait_until("route after the restart", Duration::from_secs(10), || async {
        ns_client.query_route("survivor").await.is_ok()
    })
    .await?;
    Ok(())
}
