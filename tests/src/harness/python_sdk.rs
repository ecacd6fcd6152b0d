//! The official Apache RocketMQ 5 Python SDK (`rocketmq-python-client`, installed into the project venv by
//! `make setup`) driving a broker's `apache.rocketmq.v2.MessagingService`, through the scripts under
//! `tests/python/`. A script prints one JSON object per line on stdout (events as they happen, its result last);
//! its stderr, and the SDK's own log (HOME is the test's temp dir), stay in the test directory for failures.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

use super::binary::workspace_root;
use super::process::Process;

/// The venv's Python, with a clear error if `make setup` has not run.
fn python() -> anyhow::Result<PathBuf> {
    let python = workspace_root().join(".venv/bin/python");
    if !python.exists() {
        bail!("{} not found: run `make setup` (scripts/setup.sh) first", python.display());
    }
    Ok(python)
}

/// A running SDK script; killed on drop.
#[derive(Debug)]
pub struct SdkScript {
    process: Process,
    lines: mpsc::Receiver<String>,
    name: String,
}

impl SdkScript {
    /// Starts `tests/python/<script>` with `args`; HOME (where the SDK writes its logs) and the stderr log are
    /// under `dir`.
    pub fn spawn(dir: &Path, script: &str, args: &[String]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut cmd = Command::new(python()?);
        cmd.arg("-u").arg(workspace_root().join("tests/python").join(script)).args(args);
        cmd.env("HOME", dir).env("PYTHONDONTWRITEBYTECODE", "1");
        let stem = script.trim_end_matches(".py");
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let log = dir.join(format!("{stem}.{n}.log"));
        let mut process = Process::spawn(script, cmd, &log, true)?;
        let stdout = process.child_mut().and_then(|c| c.stdout.take()).context("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self { process, lines, name: script.to_owned() })
    }

    /// The next JSON line, waiting at most `timeout`; `None` when the script ended without one.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<serde_json::Value>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.lines.try_recv() {
                Ok(line) => {
                    let Ok(value) = serde_json::from_str(&line) else { continue };
                    return Ok(Some(value));
                }
                Err(mpsc::TryRecvError::Disconnected) => return Ok(None),
                Err(mpsc::TryRecvError::Empty) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{} printed nothing within {timeout:?}; stderr:\n{}", self.name, self.process.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the script to exit (at most `timeout`) and answers its last JSON line; fails with its stderr if it
    /// exits non-zero or prints none.
    pub async fn finish(mut self, timeout: Duration) -> anyhow::Result<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Some(v) => last = Some(v),
                None => break,
            }
        }
        let child = self.process.child_mut().context("script already reaped")?;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{} did not exit within {timeout:?}; stderr:\n{}", self.name, self.process.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if !status.success() {
            bail!("{} exited with {status}; stderr:\n{}", self.name, self.process.log());
        }
        last.with_context(|| format!("{} printed no JSON result; stderr:\n{}", self.name, self.process.log()))
    }

    /// The script's stderr so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// Runs `tests/python/<script>` to completion (at most `timeout`) and answers its last JSON line.
pub async fn run(dir: &Path, script: &str, args: &[String], timeout: Duration) -> anyhow::Result<serde_json::Value> {
    SdkScript::spawn(dir, script, args)?.finish(timeout).await
}
