//! Master/slave replication between real broker processes: byte-identical CommitLogs, reads from the slave,
//! catch-up after restarts, sync replication without a slave, kill -9 of a sync master, divergence, and the
//! shared-secret handshake.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, ensure};
use comet_proto::comet::v1 as pb;
use comet_proto::comet::v1::broker_client::BrokerClient;
use comet_tests::harness::broker_process::{BrokerOptions, BrokerProcess};
use comet_tests::harness::nameserver::NameServer;
use comet_tests::harness::wait_until;
use tonic::transport::Channel;

const SECRET: &str = "system-test-secret-0123";
const TOPIC: &str = "ha-topic";
const QUEUES: u32 = 4;

/// A master whose HA listener takes a port the OS picks (reported on its readiness line; no reuse races).
fn master_options(nameserver: Option<&NameServer>, mode: &str) -> BrokerOptions {
    BrokerOptions {
        nameservers: nameserver.map(|n| vec![n.addr()]).unwrap_or_default(),
        ha: format!("  listen: 127.0.0.1:0\n  secret: {SECRET}\n  replication: {mode}\n  sync-timeout-ms: 2000\n"),
        ..Default::default()
    }
}

fn slave_options(nameserver: Option<&NameServer>, master_ha: &str, secret: &str) -> BrokerOptions {
    BrokerOptions {
        nameservers: nameserver.map(|n| vec![n.addr()]).unwrap_or_default(),
        broker_extra: "  broker-id: 1\n".into(),
        ha: format!(
            "  master-address: {master_ha}\n  secret: {secret}\n  metadata-sync-interval-ms: 200\n  \
             fetch-wait-ms: 500\n"
        ),
        ..Default::default()
    }
}

async fn status(client: &BrokerClient<Channel>) -> anyhow::Result<pb::GetReplicationStatusResponse> {
    Ok(client.clone().get_replication_status(pb::GetReplicationStatusRequest {}).await?.into_inner())
}

async fn create_topic(client: &BrokerClient<Channel>) -> anyhow::Result<()> {
    let topic =
        pb::TopicConfig { name: TOPIC.into(), read_queue_nums: QUEUES, write_queue_nums: QUEUES, ..Default::default() };
    client.clone().create_topic(pb::CreateTopicRequest { topic: Some(topic) }).await?;
    Ok(())
}

fn body(i: u64) -> Vec<u8> {
    let len = 40 + (i * 7919 % 200) as usize;
    let mut b = format!("message-{i:08}-").into_bytes();
    b.resize(len, b'a' + (i % 26) as u8);
    b
}

/// Sends messages `from..to` in batches, one queue per batch in turn; returns what was acknowledged.
async fn send_range(client: &BrokerClient<Channel>, from: u64, to: u64, batch: u64) -> anyhow::Result<()> {
    let mut i = from;
    while i < to {
        let n = batch.min(to - i);
        let messages = (i..i + n)
            .map(|k| pb::OutgoingMessage { body: body(k).into(), keys: vec![format!("k{k}")], ..Default::default() })
            .collect();
        let request = pb::SendMessageRequest {
            topic: TOPIC.into(),
            queue_id: Some(((i / batch) % u64::from(QUEUES)) as u32),
            producer_group: String::new(),
            messages,
            transactional: false,
        };
        client.clone().send_message(request).await.with_context(|| format!("sending batch at {i}"))?;
        i += n;
    }
    Ok(())
}

/// Every body of every queue of the topic, in queue order.
async fn pull_all(client: &BrokerClient<Channel>) -> anyhow::Result<BTreeMap<u32, Vec<Vec<u8>>>> {
    let mut out = BTreeMap::new();
    for queue in 0..QUEUES {
        let mut bodies = Vec::new();
        let mut offset = 0;
        loop {
            let request = pb::PullMessageRequest {
                group: "ha-readers".into(),
                topic: TOPIC.into(),
                queue_id: queue,
                offset,
                max_count: 1000,
                max_bytes: 0,
                max_wait_millis: 0,
                tag_expression: String::new(),
            };
            let answer = client.clone().pull_message(request).await?.into_inner();
            if answer.messages.is_empty() {
                break;
            }
            for m in &answer.messages {
                ensure!(
                    m.queue_offset == offset,
                    "queue {queue}: offset {} where {offset} was expected",
                    m.queue_offset
                );
                bodies.push(m.body.to_vec());
                offset += 1;
            }
        }
        out.insert(queue, bodies);
    }
    Ok(out)
}

/// Waits until the slave holds everything the master has.
async fn caught_up(
    master: &BrokerClient<Channel>,
    slave: &BrokerClient<Channel>,
    within: Duration,
) -> anyhow::Result<()> {
    wait_until("slave caught up with the master", within, || async {
        match (status(master).await, status(slave).await) {
            (Ok(m), Ok(s)) => s.commit_log_max_offset == m.commit_log_max_offset && m.commit_log_max_offset > 0,
            _ => false,
        }
    })
    .await
}

/// Waits until the slave knows the topic (metadata sync).
async fn knows_topic(slave: &BrokerClient<Channel>) -> anyhow::Result<()> {
    wait_until("slave knows the topic", Duration::from_secs(20), || async {
        slave.clone().describe_topic(pb::DescribeTopicRequest { topic: TOPIC.into() }).await.is_ok()
    })
    .await
}

/// Names and bytes of every CommitLog segment file.
fn commit_log(store: &Path) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(store.join("commitlog"))? {
        let entry = entry?;
        files.insert(entry.file_name().to_string_lossy().into_owned(), std::fs::read(entry.path())?);
    }
    Ok(files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slave_copies_200k_messages_byte_identical_and_serves_them_and_both_are_routed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ns = NameServer::memory(&dir.path().join("ns"), "").await?;
    let master = BrokerProcess::start(&dir.path().join("master"), &master_options(Some(&ns), "async")).await?;
    let master_ha = master.ha_addr().context("master has no HA listener")?.to_string();
    let slave = BrokerProcess::start(&dir.path().join("slave"), &slave_options(Some(&ns), &master_ha, SECRET)).await?;
    let (mc, sc) = (master.client().await?, slave.client().await?);
    create_topic(&mc).await?;

    send_range(&mc, 0, 200_000, 1000).await?;
    caught_up(&mc, &sc, Duration::from_secs(60)).await?;
    knows_topic(&sc).await?;

    // Byte for byte the same CommitLog, across several 16 MiB segments.
    let (mine, theirs) = (commit_log(&master.store_dir())?, commit_log(&slave.store_dir())?);
    ensure!(mine.len() >= 2, "expected several segments, got {}", mine.len());
    ensure!(mine.keys().eq(theirs.keys()), "segment files differ: {:?} vs {:?}", mine.keys(), theirs.keys());
    for (name, bytes) in &mine {
        ensure!(theirs[name] == *bytes, "segment {name} differs");
    }

    // Consumers reading from the slave get every message, in order per queue; none invented.
    wait_until("slave dispatched everything", Duration::from_secs(30), || async {
        let total: u64 = pull_all(&sc).await.map(|q| q.values().map(|v| v.len() as u64).sum()).unwrap_or(0);
        total == 200_000
    })
    .await?;
    let (from_master, from_slave) = (pull_all(&mc).await?, pull_all(&sc).await?);
    ensure!(from_master == from_slave, "the slave serves different messages");
    let all: HashSet<Vec<u8>> = from_slave.values().flatten().cloned().collect();
    ensure!(all.len() == 200_000 && (0..200_000).all(|i| all.contains(&body(i))), "messages lost or invented");

    // The slave refuses writes clearly and reports its link; the master reports the slave in sync.
    let refused = sc
        .clone()
        .send_message(pb::SendMessageRequest {
            topic: TOPIC.into(),
            messages: vec![pb::OutgoingMessage { body: b"x".to_vec().into(), ..Default::default() }],
            ..Default::default()
        })
        .await
        .expect_err("a slave must refuse sends");
    ensure!(refused.code() == tonic::Code::FailedPrecondition, "{refused:?}");
    ensure!(refused.message().contains("slave"), "{refused:?}");
    let (m, s) = (status(&mc).await?, status(&sc).await?);
    ensure!(m.role == "master" && s.role == "slave" && s.master_connected, "{m:?} {s:?}");
    ensure!(m.slaves.len() == 1 && m.slaves[0].broker_id == 1 && m.slaves[0].in_sync, "{m:?}");

    // The NameServer routes both members of the group.
    let routed = |id: u64, address: String| {
        let ns = &ns;
        async move {
            let Ok(client) = ns.client() else { return false };
            client.query_route(TOPIC).await.is_ok_and(|route| {
                route.brokers.iter().any(|b| b.broker_name == "broker-a" && b.addresses.get(&id) == Some(&address))
            })
        }
    };
    ensure!(routed(0, master.addr()).await, "the master is not routed");
    wait_until("the slave is routed", Duration::from_secs(10), || routed(1, slave.addr())).await?;

    // Groups and consumer offsets committed on the master reach the slave: a consumer moving to it resumes there.
    let group =
        pb::GroupConfig { name: "ha-group".into(), consume_enable: true, retry_max_times: 3, ..Default::default() };
    mc.clone().create_group(pb::CreateGroupRequest { group: Some(group) }).await?;
    for queue in 0..QUEUES {
        let commit = pb::CommitConsumerOffsetRequest {
            group: "ha-group".into(),
            topic: TOPIC.into(),
            queue_id: queue,
            offset: 1_000 + u64::from(queue),
        };
        mc.clone().commit_consumer_offset(commit).await?;
    }
    wait_until("offsets copied to the slave", Duration::from_secs(20), || async {
        let mut all = true;
        for queue in 0..QUEUES {
            let query =
                pb::QueryConsumerOffsetRequest { group: "ha-group".into(), topic: TOPIC.into(), queue_id: queue };
            all &= sc.clone().query_consumer_offset(query).await.is_ok_and(|r| {
                let r = r.into_inner();
                r.found && r.offset == 1_000 + u64::from(queue)
            });
        }
        all
    })
    .await?;
    let groups = sc.clone().list_groups(pb::ListGroupsRequest {}).await?.into_inner().groups;
    ensure!(groups.iter().any(|g| g.name == "ha-group" && g.retry_max_times == 3), "group not copied: {groups:?}");
    let refused = sc.clone().create_group(pb::CreateGroupRequest { group: Some(pb::GroupConfig::default()) }).await;
    ensure!(refused.is_err_and(|s| s.code() == tonic::Code::FailedPrecondition), "a slave must refuse group changes");

    // `comet broker status` shows both members: the master with its slave in sync, the slave following it.
    let out = crate::cli_admin::comet(&ns, &["broker", "status", "--json"]).await?;
    let lines: Vec<serde_json::Value> = out.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    ensure!(lines.len() == 2, "{out}");
    ensure!(lines[0]["role"] == "master" && lines[0]["slaves"][0]["in_sync"] == true, "{out}");
    ensure!(lines[1]["role"] == "slave" && lines[1]["master_connected"] == true, "{out}");
    ensure!(lines[0]["commit_log_max_offset"] == lines[1]["commit_log_max_offset"], "{out}");
    let table = crate::cli_admin::comet(&ns, &["broker", "status"]).await?;
    ensure!(table.contains("in sync") && table.contains("following"), "{table}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slave_killed_mid_stream_catches_up_after_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let master = BrokerProcess::start(&dir.path().join("master"), &master_options(None, "async")).await?;
    let master_ha = master.ha_addr().context("no HA listener")?.to_string();
    let mut slave = BrokerProcess::start(&dir.path().join("slave"), &slave_options(None, &master_ha, SECRET)).await?;
    let mc = master.client().await?;
    create_topic(&mc).await?;

    let producer = {
        let mc = mc.clone();
        tokio::spawn(async move { send_range(&mc, 0, 60_000, 100).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    slave.kill();
    producer.await??;
    send_range(&mc, 60_000, 80_000, 100).await?;
    let slave = slave.crash_and_restart().await?;
    let sc = slave.client().await?;
    caught_up(&mc, &sc, Duration::from_secs(60)).await?;
    knows_topic(&sc).await?;
    wait_until("slave dispatched everything", Duration::from_secs(30), || async {
        pull_all(&sc).await.map(|q| q.values().map(Vec::len).sum::<usize>()).unwrap_or(0) == 80_000
    })
    .await?;
    ensure!(pull_all(&mc).await? == pull_all(&sc).await?, "the slave serves different messages");
    let (mine, theirs) = (commit_log(&master.store_dir())?, commit_log(&slave.store_dir())?);
    ensure!(mine == theirs, "CommitLogs differ after catch-up");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_replication_fails_sends_clearly_without_the_slave_and_resumes_when_it_returns() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let master = BrokerProcess::start(&dir.path().join("master"), &master_options(None, "sync")).await?;
    let master_ha = master.ha_addr().context("no HA listener")?.to_string();
    let mc = master.client().await?;
    create_topic(&mc).await?;

    // No slave yet: refused at once, saying why, and retryable.
    let started = std::time::Instant::now();
    let err = send_range(&mc, 0, 1, 1).await.expect_err("a sync master without slaves must not acknowledge");
    let status = err.downcast_ref::<tonic::Status>().context("not a gRPC status")?;
    ensure!(status.code() == tonic::Code::Unavailable, "{status:?}");
    ensure!(status.message().contains("replication failed"), "{status:?}");
    ensure!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());

    let mut slave = BrokerProcess::start(&dir.path().join("slave"), &slave_options(None, &master_ha, SECRET)).await?;
    wait_until("sends succeed with the slave", Duration::from_secs(20), || async {
        send_range(&mc, 1, 2, 1).await.is_ok()
    })
    .await?;
    send_range(&mc, 2, 2_000, 10).await?;

    // Slave stopped: sends fail within the timeout; they resume once it is back.
    ensure!(slave.terminate().await?, "slave did not stop cleanly");
    let started = std::time::Instant::now();
    let err = send_range(&mc, 2_000, 2_001, 1).await.expect_err("sync send acknowledged without a slave");
    ensure!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
    ensure!(format!("{err:#}").contains("replication failed"), "{err:#}");
    let slave = BrokerProcess::start(&dir.path().join("slave"), &slave_options(None, &master_ha, SECRET)).await?;
    wait_until("sends succeed again", Duration::from_secs(20), || async {
        send_range(&mc, 2_001, 2_002, 1).await.is_ok()
    })
    .await?;
    let sc = slave.client().await?;
    caught_up(&mc, &sc, Duration::from_secs(20)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_two_required_replicas_every_slave_must_hold_a_message_before_it_is_acknowledged() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut options = master_options(None, "sync");
    options.ha.push_str("  sync-replicas: 2\n");
    let master = BrokerProcess::start(&dir.path().join("master"), &options).await?;
    let master_ha = master.ha_addr().context("no HA listener")?.to_string();
    let mc = master.client().await?;
    create_topic(&mc).await?;
    let slave_options = |id: u64| {
        let mut o = slave_options(None, &master_ha, SECRET);
        o.broker_extra = format!("  broker-id: {id}\n");
        o
    };
    let one = BrokerProcess::start(&dir.path().join("slave-1"), &slave_options(1)).await?;
    wait_until("slave 1 connected", Duration::from_secs(20), || async {
        status(&mc).await.is_ok_and(|s| s.slaves.len() == 1)
    })
    .await?;
    let err = send_range(&mc, 0, 1, 1).await.expect_err("one slave of two required must not be enough");
    ensure!(format!("{err:#}").contains("1 slave(s) connected and in sync, 2 required"), "{err:#}");

    let mut two = BrokerProcess::start(&dir.path().join("slave-2"), &slave_options(2)).await?;
    wait_until("sends succeed with both slaves", Duration::from_secs(20), || async {
        send_range(&mc, 1, 2, 1).await.is_ok()
    })
    .await?;
    send_range(&mc, 2, 1_000, 10).await?;
    let s = status(&mc).await?;
    ensure!(s.slaves.iter().map(|v| v.broker_id).collect::<Vec<_>>() == [1, 2], "{s:?}");
    for slave in [&one, &two] {
        let sc = slave.client().await?;
        ensure!(status(&sc).await?.commit_log_max_offset >= s.commit_log_max_offset, "a slave lacks acknowledged data");
    }
    two.kill();
    wait_until("sends refused once slave 2 is gone", Duration::from_secs(20), || async {
        send_range(&mc, 1_000, 1_001, 1).await.is_err()
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_message_a_sync_master_acknowledged_is_on_the_slave_after_kill_9() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut master = BrokerProcess::start(&dir.path().join("master"), &master_options(None, "sync")).await?;
    let master_ha = master.ha_addr().context("no HA listener")?.to_string();
    let slave = BrokerProcess::start(&dir.path().join("slave"), &slave_options(None, &master_ha, SECRET)).await?;
    let (mc, sc) = (master.client().await?, slave.client().await?);
    create_topic(&mc).await?;
    knows_topic(&sc).await?;

    // Eight producers send single messages until the master dies; each records what was acknowledged.
    let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
    let mut producers = Vec::new();
    for p in 0..8u64 {
        let (mc, acked) = (mc.clone(), Arc::clone(&acked));
        producers.push(tokio::spawn(async move {
            let mut k = p;
            loop {
                let request = pb::SendMessageRequest {
                    topic: TOPIC.into(),
                    queue_id: Some((k % u64::from(QUEUES)) as u32),
                    producer_group: String::new(),
                    messages: vec![pb::OutgoingMessage { body: body(k).into(), ..Default::default() }],
                    transactional: false,
                };
                match mc.clone().send_message(request).await {
                    Ok(_) => acked.lock().unwrap_or_else(|e| e.into_inner()).push(k),
                    Err(_) => return,
                }
                k += 8;
            }
        }));
    }
    wait_until("some sends acknowledged", Duration::from_secs(20), || async {
        acked.lock().unwrap_or_else(|e| e.into_inner()).len() > 2_000
    })
    .await?;
    master.kill();
    for p in producers {
        p.await?;
    }
    let acked: Vec<u64> = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();

    // The slave keeps serving; everything acknowledged is there.
    let missing = |on_slave: &HashSet<Vec<u8>>| acked.iter().filter(|k| !on_slave.contains(&body(**k))).count();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let on_slave: HashSet<Vec<u8>> = pull_all(&sc).await?.into_values().flatten().collect();
        let lost = missing(&on_slave);
        if lost == 0 {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{lost} of {} acknowledged messages missing on the slave",
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_diverged_slave_cuts_its_tail_and_copies_the_new_master() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Master A with some history; B starts as an exact copy of A's store.
    let mut a = BrokerProcess::start(&dir.path().join("a"), &master_options(None, "async")).await?;
    create_topic(&a.client().await?).await?;
    send_range(&a.client().await?, 0, 5_000, 50).await?;
    ensure!(a.terminate().await?, "A did not stop cleanly");
    copy_dir(&dir.path().join("a/store"), &dir.path().join("b/store"))?;
    let a = BrokerProcess::start(&dir.path().join("a"), &master_options(None, "async")).await?;
    let b = BrokerProcess::start(&dir.path().join("b"), &master_options(None, "async")).await?;
    let (ac, bc) = (a.client().await?, b.client().await?);

    // The slave follows A, which then takes messages B never sees.
    let a_ha = a.ha_addr().context("no HA listener")?.to_string();
    let mut slave = BrokerProcess::start(&dir.path().join("slave"), &slave_options(None, &a_ha, SECRET)).await?;
    send_range(&ac, 5_000, 7_000, 50).await?;
    caught_up(&ac, &slave.client().await?, Duration::from_secs(30)).await?;
    ensure!(slave.terminate().await?, "slave did not stop cleanly");

    // B takes different messages; the slave is pointed at B: its tail after message 5 000 is A's, not B's.
    send_range(&bc, 100_000, 103_000, 50).await?;
    let b_ha = b.ha_addr().context("no HA listener")?.to_string();
    let slave = BrokerProcess::start(&dir.path().join("slave"), &slave_options(None, &b_ha, SECRET)).await?;
    let sc = slave.client().await?;
    caught_up(&bc, &sc, Duration::from_secs(30)).await?;
    ensure!(commit_log(&b.store_dir())? == commit_log(&slave.store_dir())?, "CommitLogs differ from B's");
    knows_topic(&sc).await?;
    wait_until("slave serves B's messages", Duration::from_secs(20), || async {
        pull_all(&sc).await.map(|q| q.values().map(Vec::len).sum::<usize>()).unwrap_or(0) == 8_000
    })
    .await?;
    ensure!(pull_all(&bc).await? == pull_all(&sc).await?, "the slave serves messages B does not have");
    ensure!(slave.log().contains("cutting the diverged tail"), "no truncation logged:\n{}", slave.log());
    // The cut tail (A's 2 000 messages B never had) is kept beside the store, not lost.
    let saved: Vec<_> = std::fs::read_dir(slave.store_dir().join("diverged"))?.collect::<Result<_, _>>()?;
    ensure!(saved.len() == 1 && saved[0].metadata()?.len() > 2_000 * 40, "saved tail: {saved:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slave_refuses_to_wipe_its_log_for_a_master_sharing_none_of_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let a = BrokerProcess::start(&dir.path().join("a"), &master_options(None, "async")).await?;
    let ac = a.client().await?;
    create_topic(&ac).await?;
    let a_ha = a.ha_addr().context("no HA listener")?.to_string();
    let mut slave = BrokerProcess::start(&dir.path().join("slave"), &slave_options(None, &a_ha, SECRET)).await?;
    send_range(&ac, 0, 1_000, 50).await?;
    caught_up(&ac, &slave.client().await?, Duration::from_secs(30)).await?;
    let kept = status(&slave.client().await?).await?.commit_log_max_offset;
    ensure!(slave.terminate().await?, "slave did not stop cleanly");

    // An empty master of the same name and secret (a lost master volume): the slave must not follow it to zero.
    let empty = BrokerProcess::start(&dir.path().join("empty"), &master_options(None, "async")).await?;
    let empty_ha = empty.ha_addr().context("no HA listener")?.to_string();
    let slave = BrokerProcess::start(&dir.path().join("slave"), &slave_options(None, &empty_ha, SECRET)).await?;
    wait_until("the slave refuses", Duration::from_secs(20), || async { slave.log().contains("refusing to delete") })
        .await?;
    let s = status(&slave.client().await?).await?;
    ensure!(s.commit_log_max_offset == kept && !s.master_connected, "{s:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slave_with_the_wrong_secret_gets_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let master = BrokerProcess::start(&dir.path().join("master"), &master_options(None, "async")).await?;
    let master_ha = master.ha_addr().context("no HA listener")?.to_string();
    let mc = master.client().await?;
    create_topic(&mc).await?;
    send_range(&mc, 0, 100, 10).await?;
    let stranger = BrokerProcess::start(
        &dir.path().join("stranger"),
        &slave_options(None, &master_ha, "not-the-group-secret-at-all"),
    )
    .await?;
    let sc = stranger.client().await?;
    // Both sides say why once the stranger has tried (it keeps retrying with a back-off).
    let refused =
        || async { master.log().contains("wrong secret") && stranger.log().contains("authentication failed") };
    if wait_until("the refusal logged on both sides", Duration::from_secs(20), refused).await.is_err() {
        anyhow::bail!("no refusal logged\nmaster:\n{}\nstranger:\n{}", master.log(), stranger.log());
    }
    let s = status(&sc).await?;
    ensure!(!s.master_connected && s.commit_log_max_offset == 0, "{s:?}");
    ensure!(status(&mc).await?.slaves.is_empty(), "the master accepted a stranger");
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
