//! A throwaway Prometheus (Debian `prometheus`, 2.42) on a free port with its own TSDB, scraping given
//! targets every second; queried through its HTTP API like any dashboard would. Also a minimal HTTP GET, for
//! the `/metrics` endpoints themselves.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::free_port;
use super::process::Process;

/// One series of an instant query: its labels and value (and the timestamp of the sample, when asked).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Labels, `__name__` included.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// A running Prometheus; killed on drop.
#[derive(Debug)]
pub struct Prometheus {
    process: Process,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus with its data under `dir`, scraping `/metrics` of each `(job, address)` every second,
    /// and waits until it is ready.
    pub async fn start(dir: &Path, targets: &[(&str, SocketAddr)]) -> anyhow::Result<Self> {
        let mut config = String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n");
        for (job, addr) in targets {
            writeln!(config, "  - job_name: {job}\n    static_configs:\n      - targets: [\"{addr}\"]")?;
        }
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("prometheus-data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn");
        let process = Process::spawn("prometheus", cmd, &dir.join("prometheus.log"), false)
            .context("is prometheus installed? run `make setup`")?;
        let prometheus = Self { process, addr };
        super::wait_until("prometheus to be ready", Duration::from_secs(30), || async {
            http_get(addr, "/-/ready").await.is_ok_and(|(status, _)| status == 200)
        })
        .await
        .with_context(|| format!("prometheus log:\n{}", prometheus.process.log()))?;
        Ok(prometheus)
    }

    /// Evaluates `expr` now (an instant query); the series it returns.
    pub async fn query(&self, expr: &str) -> anyhow::Result<Vec<Sample>> {
        let (status, body) = http_get(self.addr, &format!("/api/v1/query?query={}", url_encode(expr))).await?;
        let json: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("query {expr:?}: HTTP {status}: {body}"))?;
        if json["status"] != "success" {
            bail!("query {expr:?} failed: {body}");
        }
        let mut out = Vec::new();
        for series in json["data"]["result"].as_array().context("no result array")? {
            let labels = series["metric"]
                .as_object()
                .context("no metric labels")?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let value = series["value"][1].as_str().context("no value")?.parse::<f64>()?;
            out.push(Sample { labels, value });
        }
        Ok(out)
    }

    /// Polls `expr` until `accept` holds for its series (or `timeout` passes, failing with the last answer).
    pub async fn wait_for(
        &self,
        expr: &str,
        timeout: Duration,
        accept: impl Fn(&[Sample]) -> bool,
    ) -> anyhow::Result<Vec<Sample>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.query(expr).await;
            if let Ok(samples) = &got
                && accept(samples)
            {
                return Ok(samples.clone());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting on {expr:?}; last answer {got:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Polls until `expr` returns exactly one series with value `want`; returns that series.
    pub async fn wait_for_value(&self, expr: &str, want: f64) -> anyhow::Result<Sample> {
        let samples = self.wait_for(expr, Duration::from_secs(30), |s| s.len() == 1 && s[0].value == want).await?;
        Ok(samples[0].clone())
    }

    /// Health of every active scrape target: (job, "up"/"down", last error).
    pub async fn targets(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let (_, body) = http_get(self.addr, "/api/v1/targets").await?;
        let json: serde_json::Value = serde_json::from_str(&body)?;
        let mut out = Vec::new();
        for t in json["data"]["activeTargets"].as_array().context("no activeTargets")? {
            let s = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
            out.push((t["labels"]["job"].as_str().unwrap_or_default().to_owned(), s("health"), s("lastError")));
        }
        Ok(out)
    }
}

/// A plain HTTP/1.0 GET of `path` on `addr`: (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await??;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).context("no status code")?;
    Ok((status, body.to_owned()))
}

fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}
