//! The `comet` commands for the RocketMQ 5 API as a user runs them, the real binary against a real NameServer and
//! broker: admin (`comet topic create|update --type`, `comet group create --fifo`, `comet group update`) and the
//! benchmark speaking v2 (`comet bench produce|consume --api v2`; this checks the tool counts right, not numbers).

use crate::cli_admin::{cluster, comet, run};

/// The JSON line of `list --json` output whose `key` is `name`.
fn line_of(stdout: &str, key: &str, name: &str) -> anyhow::Result<serde_json::Value> {
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if v[key] == name {
            return Ok(v);
        }
    }
    anyhow::bail!("no {key} {name} in {stdout}")
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_take_a_message_type_that_updates_keep_unless_told() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, _broker) = cluster(dir.path()).await?;

    let created = comet(&ns, &["topic", "create", "orders-fifo", "--queues", "2", "--type", "fifo"]).await?;
    assert!(created.contains("created topic orders-fifo") && created.contains("type fifo"), "{created}");
    let plain = comet(&ns, &["topic", "create", "anything-goes", "--queues", "2"]).await?;
    assert!(plain.contains("type mixed"), "{plain}");
    for t in ["normal", "delay", "transaction"] {
        comet(&ns, &["topic", "create", &format!("typed-{t}"), "--queues", "1", "--type", t]).await?;
    }

    let listed = comet(&ns, &["topic", "list", "--json"]).await?;
    assert_eq!(line_of(&listed, "topic", "orders-fifo")?["message_type"], "fifo");
    assert_eq!(line_of(&listed, "topic", "anything-goes")?["message_type"], "mixed");
    for t in ["normal", "delay", "transaction"] {
        assert_eq!(line_of(&listed, "topic", &format!("typed-{t}"))?["message_type"], t, "{listed}");
    }
    let table = comet(&ns, &["topic", "list"]).await?;
    assert!(table.lines().next().is_some_and(|h| h.contains("TYPE")), "{table}");
    assert!(table.lines().any(|l| l.contains("orders-fifo") && l.contains("fifo ")), "{table}");

    // An update of the queue counts keeps the type; --type changes it.
    let updated = comet(&ns, &["topic", "update", "orders-fifo", "--queues", "4"]).await?;
    assert!(updated.contains("read 4 write 4") && updated.contains("type fifo"), "{updated}");
    comet(&ns, &["topic", "update", "orders-fifo", "--type", "delay"]).await?;
    let described = comet(&ns, &["topic", "describe", "orders-fifo", "--json"]).await?;
    let v: serde_json::Value = serde_json::from_str(described.trim())?;
    assert_eq!((v["message_type"].as_str(), v["read_queues"].as_u64()), (Some("delay"), Some(4)), "{described}");
    let text = comet(&ns, &["topic", "describe", "orders-fifo"]).await?;
    assert!(text.contains("type delay"), "{text}");

    let (ok, _stdout, stderr) = run(&ns, &["topic", "create", "bad-type", "--type", "lite"]).await?;
    assert!(!ok && stderr.contains("lite"), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_are_created_fifo_and_updated_field_by_field() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, _broker) = cluster(dir.path()).await?;

    comet(&ns, &["group", "create", "fifo-readers", "--fifo"]).await?;
    comet(&ns, &["group", "create", "readers", "--retry-max-times", "5", "--retry-delays", "1s,5s"]).await?;
    let listed = comet(&ns, &["group", "list", "--json"]).await?;
    assert_eq!(line_of(&listed, "group", "fifo-readers")?["fifo"], true);
    assert_eq!(line_of(&listed, "group", "readers")?["fifo"], false);
    let table = comet(&ns, &["group", "list"]).await?;
    assert!(table.lines().next().is_some_and(|h| h.contains("FIFO")), "{table}");

    // Only what is given changes.
    let updated = comet(&ns, &["group", "update", "readers", "--fifo", "true"]).await?;
    assert!(updated.starts_with("updated group readers on ") && updated.contains("fifo true"), "{updated}");
    let readers = line_of(&comet(&ns, &["group", "list", "--json"]).await?, "group", "readers")?;
    assert_eq!(readers["fifo"], true);
    assert_eq!(readers["retry_max_times"], 5);
    assert_eq!(readers["retry_delays_millis"], serde_json::json!([1000, 5000]));
    assert_eq!(readers["consume_enable"], true);

    let json = comet(
        &ns,
        &["group", "update", "readers", "--fifo", "false", "--consume", "false", "--retry-delays", "default", "--json"],
    )
    .await?;
    let v: serde_json::Value = serde_json::from_str(json.trim())?;
    assert_eq!((v["fifo"].as_bool(), v["consume_enable"].as_bool()), (Some(false), Some(false)), "{json}");
    assert_eq!((v["retry_max_times"].as_u64(), v["retry_delays_millis"].clone()), (Some(5), serde_json::json!([])));
    let described = comet(&ns, &["group", "describe", "readers", "--json"]).await?;
    let d: serde_json::Value = serde_json::from_str(described.trim())?;
    assert_eq!((d["fifo"].as_bool(), d["consume_enable"].as_bool()), (Some(false), Some(false)), "{described}");
    let described = comet(&ns, &["group", "describe", "fifo-readers"]).await?;
    assert!(described.contains("fifo true"), "{described}");

    let (ok, _stdout, stderr) = run(&ns, &["group", "update", "nobody", "--fifo", "true"]).await?;
    assert!(!ok && stderr.contains("does not exist"), "{stderr}");
    let (ok, _stdout, stderr) = run(&ns, &["group", "update", "readers"]).await?;
    assert!(!ok && stderr.contains("nothing to change"), "{stderr}");
    let (ok, _stdout, stderr) = run(&ns, &["group", "update", "readers", "--fifo", "maybe"]).await?;
    assert!(!ok && stderr.contains("maybe"), "{stderr}");
    Ok(())
}

fn report(stdout: &str) -> anyhow::Result<serde_json::Value> {
    let line = stdout.lines().rfind(|l| l.starts_with('{')).ok_or_else(|| anyhow::anyhow!("no JSON in {stdout:?}"))?;
    Ok(serde_json::from_str(line)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_speaks_v2_and_every_sent_message_is_received_and_acknowledged() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, broker) = cluster(dir.path()).await?;
    let common = ["--json", "--quiet", "--topic", "bench-v2", "--queues", "4", "--api", "v2"];
    let with = |args: &[&'static str]| args.iter().chain(&common).copied().collect::<Vec<_>>();

    let single =
        with(&["bench", "produce", "--count", "600", "--concurrency", "4", "--size", "100", "--warmup-secs", "0"]);
    let produced = report(&comet(&ns, &single).await?)?;
    assert_eq!((produced["system"].as_str(), produced["messages"].as_u64()), (Some("comet-v2"), Some(600)));
    assert_eq!(produced["errors"], 0, "{produced}");
    assert!(produced["p50_us"].as_u64().is_some_and(|p| p > 0), "{produced}");
    let batched = with(&["bench", "produce", "--count", "400", "--batch", "20", "--size", "100", "--warmup-secs", "0"]);
    let produced = report(&comet(&ns, &batched).await?)?;
    assert_eq!((produced["messages"].as_u64(), produced["batch"].as_u64()), (Some(400), Some(20)), "{produced}");

    // An acknowledged message reaches its consume queue a moment later (dispatch), and the consume run counts the
    // backlog its queues show when it starts: wait until they show every message.
    comet_tests::harness::broker_process::dispatched(&broker.client().await?, "bench-v2", 0..4, 1000).await?;
    // Receive + ack of the whole backlog by a new group: every message once.
    let consume = with(&["bench", "consume", "--pull-batch", "32", "--receivers", "4", "--group", "bench-readers"]);
    let consumed = report(&comet(&ns, &consume).await?)?;
    assert_eq!((consumed["system"].as_str(), consumed["messages"].as_u64()), (Some("comet-v2"), Some(1000)));
    assert_eq!((consumed["lost"].as_u64(), consumed["errors"].as_u64()), (Some(0), Some(0)), "{consumed}");
    assert_eq!(consumed["size"], 100);
    // PullMessage (the Java PullConsumer's path) reads the same backlog from each queue's first offset.
    let pulled = report(
        &comet(
            &ns,
            &with(&["bench", "consume", "--pull-batch", "32"])
                .iter()
                .map(|a| if *a == "v2" { "v2-pull" } else { a })
                .collect::<Vec<_>>(),
        )
        .await?,
    )?;
    assert_eq!(
        (pulled["system"].as_str(), pulled["messages"].as_u64()),
        (Some("comet-v2-pull"), Some(1000)),
        "{pulled}"
    );
    assert_eq!(pulled["lost"], 0);

    // The group acknowledged everything: nothing is left for it (receive is answered MESSAGE_NOT_FOUND until the
    // run gives up after its idle timeout).
    let again = with(&["bench", "consume", "--count", "1", "--idle-timeout-secs", "1", "--group", "bench-readers"]);
    let (ok, stdout, _) = run(&ns, &again).await?;
    assert!(!ok && report(&stdout)?["messages"] == 0, "{stdout}");
    Ok(())
}
