//! A small OTLP/gRPC metrics receiver (`tests/support/otlp_sink.py`, Python with PyPI `grpcio` and
//! `opentelemetry-proto` from the project venv): no OpenTelemetry Collector is packaged for these machines.
//! It prints one JSON line per received data point; this side keeps them for the test to search.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use parking_lot::Mutex;

use super::binary::workspace_root;
use super::process::Process;

/// One data point as the sink received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Resource attributes of the export (`service.name`, `service.instance.id`, ...).
    pub resource: BTreeMap<String, String>,
    /// Instrument name.
    pub name: String,
    /// `sum`, `gauge` or `histogram`.
    pub kind: String,
    /// Data point attributes.
    pub attributes: BTreeMap<String, String>,
    /// Value (a histogram's count).
    pub value: f64,
}

/// A running sink; killed on drop.
#[derive(Debug)]
pub struct OtlpSink {
    _process: Process,
    endpoint: String,
    points: Arc<Mutex<Vec<Point>>>,
}

fn strings(v: &serde_json::Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned))).collect())
        .unwrap_or_default()
}

impl OtlpSink {
    /// Starts the sink on a free 127.0.0.1 port (stderr to `dir/otlp-sink.log`).
    pub async fn start(dir: &std::path::Path) -> anyhow::Result<Self> {
        let root = workspace_root();
        let python = root.join(".venv/bin/python");
        if !python.exists() {
            bail!("{} not found: run `make setup` (scripts/setup.sh) first", python.display());
        }
        let mut cmd = Command::new(python);
        cmd.arg("-u").arg(root.join("tests/support/otlp_sink.py"));
        let mut process = Process::spawn("otlp-sink", cmd, &dir.join("otlp-sink.log"), true)?;
        let stdout = process.child_mut().and_then(|c| c.stdout.take()).context("no stdout")?;
        let points = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let sink = Arc::clone(&points);
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stdout).lines().map_while(Result::ok);
            if let Some(first) = lines.next() {
                let _ = tx.send(first);
            }
            for line in lines {
                let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                sink.lock().push(Point {
                    resource: strings(&json["resource"]),
                    name: json["name"].as_str().unwrap_or_default().to_owned(),
                    kind: json["kind"].as_str().unwrap_or_default().to_owned(),
                    attributes: strings(&json["attributes"]),
                    value: json["value"].as_f64().unwrap_or(f64::NAN),
                });
            }
        });
        let line = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30))).await?;
        let Ok(line) = line else {
            bail!("otlp sink printed no readiness line; log:\n{}", process.log());
        };
        let addr = line.rsplit(' ').next().context("no address")?.to_owned();
        Ok(Self { _process: process, endpoint: format!("http://{addr}"), points })
    }

    /// `http://127.0.0.1:PORT`: what `metrics.otlp-endpoint` should say.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every data point received so far.
    pub fn points(&self) -> Vec<Point> {
        self.points.lock().clone()
    }

    /// Waits until a received data point satisfies `accept`; returns it.
    pub async fn wait_for(&self, what: &str, accept: impl Fn(&Point) -> bool) -> anyhow::Result<Point> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(p) = self.points.lock().iter().rev().find(|p| accept(p)) {
                return Ok(p.clone());
            }
            if tokio::time::Instant::now() >= deadline {
                let names: std::collections::BTreeSet<String> = self.points().into_iter().map(|p| p.name).collect();
                bail!("timed out waiting for {what}; received instruments: {names:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
