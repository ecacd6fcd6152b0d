//! A real `comet-nameserver` process on 127.0.0.1 port 0 (it prints the bound address on stdout).

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use comet_nameserver_client::{ClientConfig, NameServerClient};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::binary::cargo_bin;
use super::process::Process;

/// A running NameServer; killed on drop.
#[derive(Debug)]
pub struct NameServer {
    process: Process,
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    config_path: PathBuf,
}

impl NameServer {
    /// Starts a memory-mode NameServer with its KV file in `dir` and `extra` YAML sections appended.
    pub async fn memory(dir: &Path, extra: &str) -> anyhow::Result<Self> {
        let yaml = format!(
            "nameserver:\n  listen: 127.0.0.1:0\n  kv-config-path: {}\n{extra}",
            dir.join("kvConfig.json").display()
        );
        Self::with_config(dir, &yaml).await
    }

    /// Starts an etcd-mode NameServer against `endpoint` under key prefix `prefix`.
    pub async fn etcd(dir: &Path, endpoint: &str, prefix: &str, expiry_ms: u64) -> anyhow::Result<Self> {
        let yaml = format!(
            "nameserver:\n  listen: 127.0.0.1:0\n  broker-expiry-ms: {expiry_ms}\n  kv-config-path: {}\n\
             registry:\n  backend: etcd\n\
             etcd:\n  endpoints: [\"{endpoint}\"]\n  prefix: {prefix}\n  probe-interval-ms: 300\n  \
             retry-interval-ms: 300\n  connect-timeout-ms: 1000\n  request-timeout-ms: 2000\n",
            dir.join("kvConfig.json").display()
        );
        Self::with_config(dir, &yaml).await
    }

    /// Starts a NameServer with this exact YAML config (written to a fresh file in `dir`).
    pub async fn with_config(dir: &Path, yaml: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let config_path = dir.join(format!("nameserver-{n}.yaml"));
        std::fs::write(&config_path, yaml)?;
        Self::start(&config_path).await
    }

    async fn start(config_path: &Path) -> anyhow::Result<Self> {
        let bin = cargo_bin("comet-nameserver", "comet-nameserver")?;
        let mut cmd = Command::new(bin);
        cmd.arg("--config").arg(config_path).env("RUST_LOG", "info,comet_nameserver=debug");
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("COMET_")) {
            cmd.env_remove(k);
        }
        // Metrics on a free port: parallel tests never collide on the default 5558.
        cmd.env("COMET_METRICS_LISTEN", "127.0.0.1:0");
        let log = config_path.with_extension("log");
        let mut process = Process::spawn("comet-nameserver", cmd, &log, true)?;
        let stdout = process.child_mut().and_then(|c| c.stdout.take()).context("no stdout")?;

        // The first stdout line is the readiness signal with the bound address, the second the metrics endpoint;
        // keep draining after them.
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let lines = tokio::task::spawn_blocking(move || {
            let first = rx.recv_timeout(Duration::from_secs(30))?;
            Ok::<_, std::sync::mpsc::RecvTimeoutError>((first, rx.recv_timeout(Duration::from_secs(10))?))
        })
        .await?;
        let Ok((line, metrics_line)) = lines else {
            bail!("comet-nameserver printed no readiness lines; stderr:\n{}", process.log());
        };
        let metrics_addr = super::metrics_address(&metrics_line)?;
        let addr: SocketAddr = line
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("unexpected readiness line {line:?}"))?;
        let server = Self { process, addr, metrics_addr, config_path: config_path.to_owned() };
        server.wait_serving("").await?;
        Ok(server)
    }

    /// Starts another NameServer process with the same config file (a restart on a new port).
    pub async fn restart(mut self) -> anyhow::Result<Self> {
        self.process.kill();
        Self::start(&self.config_path).await
    }

    /// `host:port` to dial.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// `host:port` of its Prometheus `/metrics` endpoint.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// A failing-over client over just this NameServer.
    pub fn client(&self) -> anyhow::Result<NameServerClient> {
        Ok(NameServerClient::new(fast_client_config(vec![self.addr()]))?)
    }

    /// gRPC health status of `service` ("" = the whole server).
    pub async fn health(&self, service: &str) -> anyhow::Result<ServingStatus> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2))
            .connect()
            .await?;
        let mut health = HealthClient::new(channel);
        let response = health.check(HealthCheckRequest { service: service.to_owned() }).await?;
        Ok(response.into_inner().status())
    }

    /// Waits until `service` reports SERVING.
    pub async fn wait_serving(&self, service: &str) -> anyhow::Result<()> {
        self.wait_health(service, ServingStatus::Serving).await
    }

    /// Waits until `service` reports `status`.
    pub async fn wait_health(&self, service: &str, status: ServingStatus) -> anyhow::Result<()> {
        super::wait_until(
            &format!("health {service:?} = {status:?} on {}", self.addr),
            Duration::from_secs(20),
            || async { self.health(service).await.map(|s| s == status).unwrap_or(false) },
        )
        .await
        .with_context(|| format!("stderr:\n{}", self.process.log()))
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGTERM; returns whether it exited with success. Waits off the async runtime so this process's own
    /// gRPC connections keep being driven (and can answer the server's GOAWAY) meanwhile.
    pub async fn terminate(&mut self) -> anyhow::Result<bool> {
        tokio::task::block_in_place(|| self.process.terminate())
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// Client settings for tests: short timeouts so failover happens in well under a second.
pub fn fast_client_config(addresses: Vec<String>) -> ClientConfig {
    let mut config = ClientConfig::new(addresses);
    config.connect_timeout = Duration::from_millis(500);
    config.request_timeout = Duration::from_secs(2);
    config
}
