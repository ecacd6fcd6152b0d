//! `comet bench produce|consume|e2e` against a real NameServer and broker: the benchmark tool counts what it
//! claims (every produced message is consumed back, none lost in e2e) and its `--json` report is well formed.
//! Short, bounded runs: this checks the tool, not the numbers (those are `make bench-broker`).

use super::cli_admin::{cluster, comet};

fn report(stdout: &str) -> anyhow::Result<serde_json::Value> {
    let line = stdout.lines().rfind(|l| l.starts_with('{')).ok_or_else(|| anyhow::anyhow!("no JSON in {stdout:?}"))?;
    Ok(serde_json::from_str(line)?)
}

#[tokio::test]
async fn bench_produce_consume_and_e2e_report_exact_counts_as_json() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, broker) = cluster(dir.path()).await?;
    let common = ["--json", "--quiet", "--topic", "bench-t", "--queues", "4"];

    let out = comet(
        &ns,
        &[
            "bench",
            "produce",
            "--count",
            "3000",
            "--batch",
            "50",
            "--concurrency",
            "4",
            "--size",
            "200",
            "--warmup-secs",
            "0",
        ]
        .iter()
        .chain(&common)
        .copied()
        .collect::<Vec<_>>(),
    )
    .await?;
    let produced = report(&out)?;
    assert_eq!(produced["mode"], "produce");
    assert_eq!(produced["messages"], 3000, "{produced}");
    assert_eq!(produced["errors"], 0);
    assert!(
        produced["p50_us"].as_u64().is_some_and(|p| p > 0)
            && produced["p999_us"].as_u64() >= produced["p50_us"].as_u64()
    );

    // An acknowledged message reaches its consume queue a moment later (dispatch): the backlog counted at the
    // consume run's start is what its queues show then, so wait until they show every message.
    comet_tests::harness::broker_process::dispatched(&broker.client().await?, "bench-t", 0..4, 3000).await?;
    // The whole backlog, every message exactly: the run ends when it has read what was stored at its start.
    let out = comet(&ns, &["bench", "consume"].iter().chain(&common).copied().collect::<Vec<_>>()).await?;
    let consumed = report(&out)?;
    assert_eq!(consumed["messages"], 3000, "{consumed}");
    assert_eq!(consumed["lost"], 0);
    assert_eq!(consumed["size"], 200);

    let out = comet(
        &ns,
        &[
            "bench",
            "e2e",
            "--rate",
            "500",
            "--duration-secs",
            "2",
            "--warmup-secs",
            "0",
            "--concurrency",
            "4",
            "--size",
            "64",
        ]
        .iter()
        .chain(&common)
        .copied()
        .collect::<Vec<_>>(),
    )
    .await?;
    let e2e = report(&out)?;
    assert_eq!(e2e["lost"], 0, "{e2e}");
    // Paced to 500/s for 2 s: about 1000 messages, never a burst beyond the schedule.
    let sent = e2e["messages"].as_u64().unwrap_or(0);
    assert!((800..=1001).contains(&sent), "{e2e}");
    assert!(e2e["p50_us"].as_u64().is_some_and(|p| p > 0));
    Ok(())
}

#[tokio::test]
async fn bench_against_a_missing_nats_server_fails_with_one_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ns, _broker) = cluster(dir.path()).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("127.0.0.1:{port}");
    let (ok, _, stderr) = super::cli_admin::run(
        &ns,
        &["bench", "produce", "--system", "nats", "--nats-url", &url, "--count", "10", "--warmup-secs", "0"],
    )
    .await?;
    assert!(!ok);
    assert!(stderr.contains("connecting to NATS"), "{stderr}");
    Ok(())
}
