//! The `comet` admin commands (`topic`, `group`, `message`) as a user runs them: the real binary against a real
//! NameServer and broker.

use std::path::Path;
use std::time::Duration;

use comet_tests::harness::broker_process::{BrokerOptions, BrokerProcess};
use comet_tests::harness::nameserver::NameServer;
use comet_tests::harness::wait_until;

/// A NameServer and one broker registered with it.
pub(crate) async fn cluster(dir: &Path) -> anyhow::Result<(NameServer, BrokerProcess)> {
    let ns_dir = dir.join("ns");
    std::fs::create_dir_all(&ns_dir)?;
    let ns = NameServer::memory(&ns_dir, "").await?;
    let broker_dir = dir.join("broker-a");
    std::fs::create_dir_all(&broker_dir)?;
    let broker =
        BrokerProcess::start(&broker_dir, &BrokerOptions { nameservers: vec![ns.addr()], ..Default::default() })
            .await?;
    // Admin commands find the master brokers (id 0) through the cluster info: wait until one is listed with its
    // address.
    let ns_client = ns.client()?;
    wait_until("master registered", Duration::from_secs(30), || async {
        ns_client
            .cluster_info()
            .await
            .is_ok_and(|c| c.clusters.iter().flat_map(|c| &c.brokers).any(|b| b.addresses.contains_key(&0)))
    })
    .await?;
    Ok((ns, broker))
}

/// Runs `comet --namesrv NS args...`; returns (success, stdout, stderr), or fails after 30 s.
pub(crate) async fn run(ns: &NameServer, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let bin = tokio::task::spawn_blocking(|| comet_tests::harness::binary::cargo_bin("comet", "comet")).await??;
    let child = tokio::process::Command::new(bin)
        .arg("--namesrv")
        .arg(ns.addr())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await??;
    Ok((output.status.success(), String::from_utf8(output.stdout)?, String::from_utf8_lossy(&output.stderr).into()))
}

/// Runs the `comet` binary and fails on a non-zero exit; returns stdout.
pub(crate) async fn comet(ns: &NameServer, args: &[&str]) -> anyhow::Result<String> {
    let (ok, stdout, stderr) = run(ns, args).await?;
    anyhow::ensure!(ok, "comet {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    Ok(stdout)
}

/// The route's (read, write) queue counts of `topic` as the NameServer serves them, once they equal `expected`.
async fn wait_for_route(ns: &NameServer, topic: &str, expected: (u32, u32)) -> anyhow::Result<()> {
    let client = ns.client()?;
    wait_until(&format!("route of {topic} with {expected:?} queues"), Duration::from_secs(15), || async {
        client.query_route(topic).await.is_ok_and(|r| {
            r.queues.len() == 1 && (r.queues[0].read_queue_nums, r.queues[0].write_queue_nums) == expected
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn topic_create_list_describe_update_and_delete_through_the_comet_binary() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, _broker) = cluster(dir.path()).await?;

    let created = comet(&ns, &["topic", "create", "admin-topic", "--queues", "4"]).await?;
    assert!(created.contains("created topic admin-topic"), "{created}");
    wait_for_route(&ns, "admin-topic", (4, 4)).await?;

    let listed = comet(&ns, &["topic", "list"]).await?;
    assert!(listed.lines().any(|l| l.contains("admin-topic")), "{listed}");
    let listed_json = comet(&ns, &["topic", "list", "--json"]).await?;
    let line = listed_json.lines().find(|l| l.contains("\"admin-topic\"")).unwrap_or_default();
    assert!(line.contains("\"read_queues\":4"), "{listed_json}");

    let described = comet(&ns, &["topic", "describe", "admin-topic", "--json"]).await?;
    assert_eq!(described.trim().lines().count(), 1, "{described}");
    assert_eq!(described.matches("\"queue_id\"").count(), 4, "{described}");
    let table = comet(&ns, &["topic", "describe", "admin-topic"]).await?;
    assert!(table.contains("MIN") && table.contains("MAX"), "{table}");

    let updated = comet(&ns, &["topic", "update", "admin-topic", "--read-queues", "8", "--write-queues", "6"]).await?;
    assert!(updated.contains("read 8 write 6"), "{updated}");
    wait_for_route(&ns, "admin-topic", (8, 6)).await?;

    comet(&ns, &["topic", "delete", "admin-topic"]).await?;
    let listed = comet(&ns, &["topic", "list"]).await?;
    assert!(!listed.lines().any(|l| l.contains("admin-topic")), "{listed}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_topic_name_is_refused_with_one_line_and_a_failing_exit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, _broker) = cluster(dir.path()).await?;
    let (ok, _stdout, stderr) = run(&ns, &["topic", "create", "bad topic/name!", "--queues", "2"]).await?;
    assert!(!ok, "creating a bad topic name succeeded");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains("bad topic/name!"), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn group_describe_shows_committed_offsets_and_zero_lag_after_comet_consume() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, _broker) = cluster(dir.path()).await?;
    comet(&ns, &["topic", "create", "group-topic", "--queues", "2"]).await?;
    wait_for_route(&ns, "group-topic", (2, 2)).await?;
    comet(&ns, &["send", "group-topic", "hello", "--count", "5", "--keys", "order-42"]).await?;
    let consumed =
        comet(&ns, &["consume", "group-topic", "--group", "admin-readers", "--from", "begin", "--count", "5"]).await?;
    assert_eq!(consumed.lines().count(), 5, "{consumed}");

    // A pull consumer does not create its group (no subscription group config), so the list may be empty; it
    // must still answer.
    let listed = comet(&ns, &["group", "list"]).await?;
    assert!(listed.starts_with("BROKER"), "{listed}");
    let described = comet(&ns, &["group", "describe", "admin-readers", "--json"]).await?;
    assert!(described.contains("\"total_lag\":0"), "{described}");
    let committed: u64 = described
        .split("\"committed_offset\":")
        .skip(1)
        .filter_map(|rest| rest.split([',', '}']).next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(committed, 5, "{described}");
    let (ok, _stdout, stderr) = run(&ns, &["group", "describe", "nobody-here"]).await?;
    assert!(!ok && stderr.trim() == "error: group nobody-here not found on any broker", "{stderr}");
    let table = comet(&ns, &["group", "describe", "admin-readers"]).await?;
    assert!(table.contains("total lag 0") && table.contains("group-topic"), "{table}");

    // Groups with a config: create (settings as given), list, refuse a duplicate, delete.
    let created = comet(&ns, &["group", "create", "billing", "--no-broadcast", "--retry-max-times", "3"]).await?;
    assert!(created.starts_with("created group billing on "), "{created}");
    let listed = comet(&ns, &["group", "list", "--json"]).await?;
    let billing = listed.lines().find(|l| l.contains("\"group\":\"billing\"")).unwrap_or_default();
    assert!(
        billing.contains("\"consume_broadcast_enable\":false")
            && billing.contains("\"retry_max_times\":3")
            && billing.contains("\"consume_enable\":true"),
        "{listed}"
    );
    let (ok, _stdout, stderr) = run(&ns, &["group", "create", "billing"]).await?;
    assert!(!ok && stderr.contains("already exists"), "{stderr}");
    let deleted = comet(&ns, &["group", "delete", "billing"]).await?;
    assert!(deleted.starts_with("deleted group billing on "), "{deleted}");
    assert!(!comet(&ns, &["group", "list"]).await?.contains("billing"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn message_get_and_message_find_return_a_sent_message() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, _broker) = cluster(dir.path()).await?;
    comet(&ns, &["topic", "create", "lookup-topic", "--queues", "2"]).await?;
    wait_for_route(&ns, "lookup-topic", (2, 2)).await?;
    let sent =
        comet(&ns, &["send", "lookup-topic", "find me", "--tags", "TagA", "--keys", "order-7", "--json"]).await?;
    let id = sent
        .split("\"message_id\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .ok_or_else(|| anyhow::anyhow!("no message id in {sent}"))?
        .to_owned();

    // The id and key indexes are written when the message is dispatched, which may trail the acknowledgement by
    // a moment (an async-flush send is answered once the record is in the CommitLog).
    wait_until("message found by id", Duration::from_secs(10), || async {
        comet(&ns, &["message", "get", &id]).await.is_ok()
    })
    .await?;
    let got = comet(&ns, &["message", "get", &id]).await?;
    assert!(got.contains(&id) && got.contains("find me") && got.contains("TagA") && got.contains("order-7"), "{got}");
    let got_json = comet(&ns, &["message", "get", &id, "--json"]).await?;
    assert!(got_json.contains("\"store_timestamp_millis\""), "{got_json}");
    wait_until("message found by key", Duration::from_secs(10), || async {
        comet(&ns, &["message", "find", "--topic", "lookup-topic", "--key", "order-7"])
            .await
            .is_ok_and(|found| found.contains(&id) && found.contains("find me"))
    })
    .await?;
    let (ok, _stdout, stderr) = run(&ns, &["message", "get", "0000DEADBEEF"]).await?;
    assert!(!ok && stderr.trim().lines().count() == 1, "{stderr}");
    Ok(())
}

/// Milliseconds since the epoch now.
fn now_millis() -> anyhow::Result<u64> {
    Ok(u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis())?)
}

/// The bodies and store times of `message find --json` output, in printed order.
fn found(stdout: &str) -> anyhow::Result<Vec<(String, u64)>> {
    stdout
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)?;
            let body = v["body"].as_str().ok_or_else(|| anyhow::anyhow!("no body in {line}"))?.to_owned();
            let stored = v["store_timestamp_millis"].as_u64().ok_or_else(|| anyhow::anyhow!("no time in {line}"))?;
            Ok((body, stored))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn message_find_since_returns_the_messages_stored_from_a_time_on_earliest_first() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, _broker) = cluster(dir.path()).await?;
    comet(&ns, &["topic", "create", "time-topic", "--queues", "2"]).await?;
    wait_for_route(&ns, "time-topic", (2, 2)).await?;
    let producer = comet_client::Producer::new(comet_client::ProducerConfig::new(vec![ns.addr()], "time-producer"))?;
    for i in 0..10 {
        producer.send(comet_client::Message::new("time-topic", format!("early-{i}"))).await?;
    }
    // Every early message is acknowledged (so stored) before `since`; every late one is sent after it, a few ms
    // apart so that store times order them.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since = now_millis()?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let late: Vec<String> = (0..10).map(|i| format!("late-{i}")).collect();
    for body in &late {
        producer.send(comet_client::Message::new("time-topic", body.clone())).await?;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    // Pulls see a message once it is dispatched, which may trail its acknowledgement by a moment.
    let since_ms = since.to_string();
    let args = ["message", "find", "--topic", "time-topic", "--since", &since_ms, "--count", "100", "--json"];
    wait_until("the late messages found", Duration::from_secs(10), || async {
        comet(&ns, &args).await.is_ok_and(|out| out.lines().count() == late.len())
    })
    .await?;
    let all = found(&comet(&ns, &args).await?)?;
    let bodies: Vec<&str> = all.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(bodies, late, "exactly the messages stored since, earliest first over both queues");
    assert!(all.iter().all(|(_, t)| *t >= since), "{all:?}");

    // The same instant in RFC 3339 (from date(1)), a count, and an upper bound.
    let date = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{}.{:03}", since / 1000, since % 1000), "+%Y-%m-%dT%H:%M:%S.%3NZ"])
        .output()?;
    let rfc3339 = String::from_utf8(date.stdout)?.trim().to_owned();
    let first_three = found(
        &comet(&ns, &["message", "find", "--topic", "time-topic", "--since", &rfc3339, "--count", "3", "--json"])
            .await?,
    )?;
    assert_eq!(first_three.iter().map(|(b, _)| b.as_str()).collect::<Vec<_>>(), &late[..3], "since {rfc3339}");
    let until = all[4].1.to_string();
    let window = found(
        &comet(&ns, &["message", "find", "--topic", "time-topic", "--since", &since_ms, "--until", &until, "--json"])
            .await?,
    )?;
    assert_eq!(window.iter().map(|(b, _)| b.as_str()).collect::<Vec<_>>(), &late[..5], "until {until}");

    // Human output: a table and a count on stderr; nothing after the last message; a bad time is refused.
    let (ok, table, stderr) = run(&ns, &["message", "find", "--topic", "time-topic", "--since", &rfc3339]).await?;
    assert!(ok && table.starts_with("ID") && table.contains("late-9") && !table.contains("early-"), "{table}");
    assert!(stderr.contains("10 message(s) of topic time-topic stored at or after"), "{stderr}");
    let future = (now_millis()? + 60_000).to_string();
    let (ok, table, stderr) = run(&ns, &["message", "find", "--topic", "time-topic", "--since", &future]).await?;
    assert!(ok && table.is_empty() && stderr.starts_with("0 message(s)"), "{table}{stderr}");
    let (ok, _stdout, stderr) = run(&ns, &["message", "find", "--topic", "time-topic", "--since", "yesterday"]).await?;
    assert!(!ok && stderr.contains("neither RFC 3339"), "{stderr}");
    Ok(())
}
