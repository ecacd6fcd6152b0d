//! A throwaway etcd (Debian `etcd-server`) on free ports with its own data dir; can be stopped and started
//! again on the same ports and data (an outage, then recovery).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use super::free_port;
use super::process::Process;

/// A running (or stopped) etcd; killed on drop.
#[derive(Debug)]
pub struct Etcd {
    process: Option<Process>,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log_dir: PathBuf,
}

impl Etcd {
    /// Starts etcd with data under `dir` and waits until it answers.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let data_dir = dir.join("etcd-data");
        let mut etcd = Self {
            process: None,
            client_port: free_port()?,
            peer_port: free_port()?,
            data_dir,
            log_dir: dir.to_owned(),
        };
        etcd.resume().await?;
        Ok(etcd)
    }

    /// `127.0.0.1:port` of the client listener.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd (an outage).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts etcd again on the same ports and data, waiting until it answers.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg("t")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}"), "--logger", "zap", "--log-level", "error"]);
        let n = std::fs::read_dir(&self.log_dir).map(|d| d.count()).unwrap_or(0);
        let log = self.log_dir.join(format!("etcd-{n}.log"));
        let process = Process::spawn("etcd", cmd, &log, false).context("is etcd installed? run `make setup`")?;
        self.process = Some(process);
        let endpoint = self.endpoint();
        super::wait_until("etcd to answer", Duration::from_secs(20), || {
            let endpoint = endpoint.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    Command::new("etcdctl")
                        .args(["--endpoints", &endpoint, "endpoint", "health"])
                        .output()
                        .map(|o| o.status.success())
                        .unwrap_or(false)
                })
                .await
                .unwrap_or(false)
            }
        })
        .await
        .with_context(|| format!("etcd log:\n{}", self.process.as_ref().map(Process::log).unwrap_or_default()))
    }
}
