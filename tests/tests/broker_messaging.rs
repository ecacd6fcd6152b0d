//! Real broker processes: send/pull through a NameServer registration, long polling, tag filtering, restarts
//! (SIGTERM and kill -9) and shutdown behaviour.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use comet_proto::comet::v1 as pb;
use comet_proto::comet::v1::broker_client::BrokerClient;
use comet_tests::harness::broker_process::{BrokerOptions, BrokerProcess, dispatched};
use comet_tests::harness::nameserver::NameServer;
use comet_tests::harness::wait_until;
use tonic::transport::Channel;

fn message(body: &str, tags: &str, keys: &[&str]) -> pb::OutgoingMessage {
    pb::OutgoingMessage {
        tags: tags.into(),
        keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        body: body.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

async fn send(
    client: &mut BrokerClient<Channel>,
    topic: &str,
    queue: Option<u32>,
    messages: Vec<pb::OutgoingMessage>,
) -> anyhow::Result<Vec<pb::SendResult>> {
    let request = pb::SendMessageRequest {
        topic: topic.into(),
        queue_id: queue,
        producer_group: String::new(),
        messages,
        ..Default::default()
    };
    Ok(client.send_message(request).await?.into_inner().results)
}

fn pull_request(topic: &str, queue: u32, offset: u64, wait_ms: u32, tags: &str) -> pb::PullMessageRequest {
    pb::PullMessageRequest {
        group: "g1".into(),
        topic: topic.into(),
        queue_id: queue,
        offset,
        max_count: 1000,
        max_bytes: 0,
        max_wait_millis: wait_ms,
        tag_expression: tags.into(),
    }
}

async fn create_topic(client: &mut BrokerClient<Channel>, name: &str, queues: u32) -> anyhow::Result<()> {
    let topic =
        pb::TopicConfig { name: name.into(), read_queue_nums: queues, write_queue_nums: queues, ..Default::default() };
    client.create_topic(pb::CreateTopicRequest { topic: Some(topic) }).await?;
    Ok(())
}

#[tokio::test]
async fn send_and_pull_round_trip_through_a_registered_broker() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ns_dir = dir.path().join("ns");
    std::fs::create_dir_all(&ns_dir)?;
    let ns = NameServer::memory(&ns_dir, "").await?;
    let options = BrokerOptions { nameservers: vec![ns.addr()], ..Default::default() };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    let mut client = broker.client().await?;

    // Auto-created on first send, with the embedded default of 8 queues.
    let batch = (0..10).map(|i| message(&format!("body-{i}"), "TagA", &[&format!("key-{i}")])).collect();
    let results = send(&mut client, "orders", Some(3), batch).await?;
    assert_eq!(results.len(), 10);
    assert!(results.iter().enumerate().all(|(i, r)| r.queue_id == 3 && r.queue_offset == i as u64));
    assert!(results.iter().all(|r| r.message_id.len() == 32), "broker-assigned ids");
    dispatched(&client, "orders", 3..4, 10).await?;

    let pulled = client.pull_message(pull_request("orders", 3, 0, 0, "*")).await?.into_inner();
    assert_eq!(pulled.status(), pb::PullStatus::Found);
    assert_eq!(pulled.next_offset, 10);
    assert_eq!(pulled.max_offset, 10);
    let bodies: Vec<_> = pulled.messages.iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()).collect();
    assert_eq!(bodies, (0..10).map(|i| format!("body-{i}")).collect::<Vec<_>>());
    assert_eq!(pulled.messages[4].keys, ["key-4"]);
    assert_eq!(pulled.messages[4].message_id, results[4].message_id);

    // The NameServer learns the auto-created topic (re-registration right after the change).
    let ns_client = ns.client()?;
    wait_until("route of the auto-created topic", Duration::from_secs(10), || async {
        ns_client.query_route("orders").await.is_ok()
    })
    .await?;
    let route = ns_client.query_route("orders").await?;
    assert_eq!(route.queues[0].write_queue_nums, 8);
    assert_eq!(route.brokers[0].addresses[&0], broker.addr());

    // Lookups by id, key, queue range and time.
    let by_id = client
        .query_message_by_id(pb::QueryMessageByIdRequest { message_id: results[7].message_id.clone() })
        .await?
        .into_inner();
    assert_eq!(&by_id.message.unwrap_or_default().body[..], b"body-7");
    let by_key = client
        .query_messages_by_key(pb::QueryMessagesByKeyRequest {
            topic: "orders".into(),
            key: "key-2".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(by_key.messages.len(), 1);
    assert_eq!(&by_key.messages[0].body[..], b"body-2");
    let range = client
        .get_queue_offsets(pb::GetQueueOffsetsRequest { topic: "orders".into(), queue_id: 3 })
        .await?
        .into_inner();
    assert_eq!((range.min_offset, range.max_offset), (0, 10));
    let stored_at = pulled.messages[0].store_timestamp_millis;
    let found = client
        .search_offset(pb::SearchOffsetRequest { topic: "orders".into(), queue_id: 3, timestamp_millis: stored_at })
        .await?
        .into_inner();
    assert_eq!(found.offset, 0);
    Ok(())
}

#[tokio::test]
async fn long_poll_returns_promptly_when_a_message_arrives() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), &BrokerOptions::default()).await?;
    let mut client = broker.client().await?;
    create_topic(&mut client, "lp", 1).await?;

    // Nothing arrives: the pull is answered at its deadline, not before.
    let started = Instant::now();
    let empty = client.pull_message(pull_request("lp", 0, 0, 300, "*")).await?.into_inner();
    assert_eq!(empty.status(), pb::PullStatus::NoNewMessage);
    assert!(started.elapsed() >= Duration::from_millis(290), "answered after {:?}", started.elapsed());

    for round in 0..5u64 {
        let mut puller = client.clone();
        let parked = tokio::spawn(async move {
            let r = puller.pull_message(pull_request("lp", 0, round, 20_000, "*")).await;
            (r, Instant::now())
        });
        // Give the pull a head start only as a courtesy: whether it is parked or not, it must see the message.
        tokio::task::yield_now().await;
        send(&mut client, "lp", Some(0), vec![message(&format!("m{round}"), "", &[])]).await?;
        let acked = Instant::now();
        let (result, answered) = tokio::time::timeout(Duration::from_secs(10), parked).await??;
        let pulled = result?.into_inner();
        assert_eq!(pulled.status(), pb::PullStatus::Found);
        assert_eq!(&pulled.messages[0].body[..], format!("m{round}").as_bytes());
        let latency = answered.saturating_duration_since(acked);
        eprintln!("round {round}: pull answered {latency:?} after the send was acknowledged");
        assert!(latency < Duration::from_millis(200), "long poll took {latency:?}");
    }
    Ok(())
}

#[tokio::test]
async fn tag_filters_return_only_matching_messages_and_skip_the_rest() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), &BrokerOptions::default()).await?;
    let mut client = broker.client().await?;
    create_topic(&mut client, "tagged", 1).await?;
    let batch = (0..30).map(|i| message(&format!("m{i}"), ["A", "B", "C"][i % 3], &[])).collect();
    send(&mut client, "tagged", Some(0), batch).await?;
    dispatched(&client, "tagged", 0..1, 30).await?;

    let pulled = client.pull_message(pull_request("tagged", 0, 0, 0, "A || C")).await?.into_inner();
    assert_eq!(pulled.status(), pb::PullStatus::Found);
    assert_eq!(pulled.messages.len(), 20);
    assert!(pulled.messages.iter().all(|m| m.tags == "A" || m.tags == "C"));
    assert_eq!(pulled.next_offset, 30);

    // Only non-matching messages: nothing returned, but the next offset moves past them.
    send(&mut client, "tagged", Some(0), vec![message("b", "B", &[])]).await?;
    dispatched(&client, "tagged", 0..1, 31).await?;
    let skipped = client.pull_message(pull_request("tagged", 0, 30, 0, "A")).await?.into_inner();
    assert_eq!(skipped.status(), pb::PullStatus::NoNewMessage);
    assert_eq!(skipped.next_offset, 31);

    // A parked filtered pull ignores a non-matching arrival and returns the matching one.
    let mut puller = client.clone();
    let parked = tokio::spawn(async move { puller.pull_message(pull_request("tagged", 0, 31, 20_000, "A")).await });
    send(&mut client, "tagged", Some(0), vec![message("b2", "B", &[])]).await?;
    send(&mut client, "tagged", Some(0), vec![message("a2", "A", &[])]).await?;
    let got = tokio::time::timeout(Duration::from_secs(10), parked).await???.into_inner();
    assert_eq!(got.status(), pb::PullStatus::Found);
    assert_eq!(got.messages.len(), 1);
    assert_eq!(&got.messages[0].body[..], b"a2");
    assert_eq!(got.next_offset, 33);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_topics_and_groups_survive_a_sigterm_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), &BrokerOptions::default()).await?;
    let mut client = broker.client().await?;
    create_topic(&mut client, "kept", 2).await?;
    let group = pb::GroupConfig { name: "kept-group".into(), consume_enable: true, ..Default::default() };
    client.create_group(pb::CreateGroupRequest { group: Some(group) }).await?;
    send(&mut client, "kept", Some(1), (0..5).map(|i| message(&format!("m{i}"), "", &[])).collect()).await?;
    dispatched(&client, "kept", 1..2, 5).await?;
    let commit =
        pb::CommitConsumerOffsetRequest { group: "kept-group".into(), topic: "kept".into(), queue_id: 1, offset: 3 };
    client.commit_consumer_offset(commit).await?;
    drop(client);

    let broker = broker.restart().await?;
    let mut client = broker.client().await?;
    let topics = client.list_topics(pb::ListBrokerTopicsRequest {}).await?.into_inner().topics;
    assert_eq!(topics.iter().map(|t| (t.name.as_str(), t.read_queue_nums)).collect::<Vec<_>>(), [("kept", 2)]);
    let groups = client.list_groups(pb::ListGroupsRequest {}).await?.into_inner().groups;
    assert!(groups.iter().any(|g| g.name == "kept-group"));
    let offset = client
        .query_consumer_offset(pb::QueryConsumerOffsetRequest {
            group: "kept-group".into(),
            topic: "kept".into(),
            queue_id: 1,
        })
        .await?
        .into_inner();
    assert!(offset.found);
    assert_eq!(offset.offset, 3);
    let described = client.describe_group(pb::DescribeGroupRequest { group: "kept-group".into() }).await?.into_inner();
    assert!(described.group.is_some());
    let progress: Vec<_> = described
        .offsets
        .iter()
        .map(|o| (o.topic.as_str(), o.queue_id, o.committed_offset, o.max_offset, o.lag))
        .collect();
    assert_eq!(progress, [("kept", 1, 3, 5, 2)]);
    let rest = client.pull_message(pull_request("kept", 1, offset.offset, 0, "*")).await?.into_inner();
    assert_eq!(rest.messages.iter().map(|m| m.body.to_vec()).collect::<Vec<_>>(), [b"m3".to_vec(), b"m4".to_vec()]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_kill_9_of_a_sync_flush_broker() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = BrokerOptions { sync_flush: true, ..Default::default() };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    let mut client = broker.client().await?;
    create_topic(&mut client, "durable", 4).await?;

    // Four producers send one message at a time until the broker dies; each records what was acknowledged.
    let (enough_tx, mut enough_rx) = tokio::sync::mpsc::channel::<()>(64);
    let mut producers = Vec::new();
    for p in 0..4u32 {
        let mut client = client.clone();
        let enough = enough_tx.clone();
        producers.push(tokio::spawn(async move {
            let mut acked: Vec<(u32, u64, String)> = Vec::new();
            for i in 0.. {
                let body = format!("p{p}-{i}");
                match send(&mut client, "durable", Some(p), vec![message(&body, "", &[])]).await {
                    Ok(r) => acked.push((r[0].queue_id, r[0].queue_offset, body)),
                    Err(_) => break,
                }
                if acked.len() == 50 {
                    let _ = enough.send(()).await;
                }
            }
            acked
        }));
    }
    drop(enough_tx);
    for _ in 0..4 {
        enough_rx.recv().await;
    }
    let mut broker = broker;
    broker.kill();
    let mut acked = Vec::new();
    for p in producers {
        acked.extend(p.await?);
    }
    drop(client);
    assert!(acked.len() >= 200, "only {} acknowledged", acked.len());

    let broker = broker.crash_and_restart().await?;
    let mut client = broker.client().await?;
    let mut stored: HashMap<(u32, u64), String> = HashMap::new();
    for queue in 0..4 {
        let mut offset = 0;
        loop {
            let got = client.pull_message(pull_request("durable", queue, offset, 0, "*")).await?.into_inner();
            if got.status() != pb::PullStatus::Found {
                break;
            }
            for m in &got.messages {
                stored.insert((queue, m.queue_offset), String::from_utf8_lossy(&m.body).into_owned());
            }
            offset = got.next_offset;
        }
    }
    for (queue, offset, body) in &acked {
        assert_eq!(stored.get(&(*queue, *offset)), Some(body), "acknowledged {body} at {queue}:{offset} is lost");
    }
    eprintln!("{} acknowledged messages all present after kill -9 ({} stored)", acked.len(), stored.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_parked_pulls_unregisters_and_exits_cleanly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ns_dir = dir.path().join("ns");
    std::fs::create_dir_all(&ns_dir)?;
    let ns = NameServer::memory(&ns_dir, "").await?;
    let options = BrokerOptions { nameservers: vec![ns.addr()], ..Default::default() };
    let mut broker = BrokerProcess::start(dir.path(), &options).await?;
    let mut client = broker.client().await?;
    create_topic(&mut client, "stopping", 1).await?;
    let ns_client = ns.client()?;
    wait_until("route of the created topic", Duration::from_secs(10), || async {
        ns_client.query_route("stopping").await.is_ok()
    })
    .await?;

    let mut puller = client.clone();
    let parked = tokio::spawn(async move { puller.pull_message(pull_request("stopping", 0, 0, 30_000, "*")).await });
    // The same long poll on the remoting data path (the SDK's default transport).
    let remoting = comet_remoting::Client::new(comet_remoting::ClientConfig::default());
    let body = prost::Message::encode_to_vec(&pull_request("stopping", 0, 0, 30_000, "*"));
    let request = comet_remoting::Command::request(comet_proto::remoting::PULL_MESSAGE, body);
    let addr = broker.addr();
    let parked_remoting = tokio::spawn(async move { remoting.invoke(&addr, request, Duration::from_secs(60)).await });
    // Both pulls must be parked before the signal: wait for the broker to report them.
    wait_until("both pulls to be parked", Duration::from_secs(10), || async {
        broker.log().matches("pull parked").count() >= 2
    })
    .await?;
    let started = Instant::now();
    assert!(broker.terminate().await?, "exit status after SIGTERM; stderr:\n{}", broker.log());
    let answered = tokio::time::timeout(Duration::from_secs(10), parked).await??;
    assert_eq!(answered?.into_inner().status(), pb::PullStatus::NoNewMessage);
    let answered = tokio::time::timeout(Duration::from_secs(10), parked_remoting).await??;
    let answered = answered?;
    assert_eq!(answered.code, comet_remoting::code::SUCCESS, "{:?}", answered.remark);
    let answered: pb::PullMessageResponse = prost::Message::decode(answered.body)?;
    assert_eq!(answered.status(), pb::PullStatus::NoNewMessage, "the remoting long poll is answered too");
    assert!(started.elapsed() < Duration::from_secs(10), "shutdown took {:?}", started.elapsed());
    assert!(ns_client.query_route("stopping").await.is_err(), "the broker unregistered");
    Ok(())
}

#[tokio::test]
async fn committed_offsets_are_flushed_periodically_and_survive_kill_9() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = BrokerOptions { broker_extra: "  offset-flush-interval-ms: 200\n".into(), ..Default::default() };
    let broker = BrokerProcess::start(dir.path(), &options).await?;
    let mut client = broker.client().await?;
    create_topic(&mut client, "flushed", 1).await?;
    send(&mut client, "flushed", Some(0), (0..3).map(|i| message(&format!("m{i}"), "", &[])).collect()).await?;
    dispatched(&client, "flushed", 0..1, 3).await?;
    let commit =
        pb::CommitConsumerOffsetRequest { group: "g1".into(), topic: "flushed".into(), queue_id: 0, offset: 2 };
    client.commit_consumer_offset(commit).await?;

    let file = dir.path().join("store").join("config").join("consumer-offsets.json");
    wait_until("the offset flush", Duration::from_secs(10), || async {
        std::fs::read_to_string(&file).is_ok_and(|text| text.contains("flushed@g1"))
    })
    .await?;
    drop(client);
    let broker = broker.crash_and_restart().await?;
    let mut client = broker.client().await?;
    let request = pb::QueryConsumerOffsetRequest { group: "g1".into(), topic: "flushed".into(), queue_id: 0 };
    let offset = client.query_consumer_offset(request).await?.into_inner();
    assert!(offset.found);
    assert_eq!(offset.offset, 2);
    Ok(())
}
