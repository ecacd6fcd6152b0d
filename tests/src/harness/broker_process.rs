//! A real `comet-broker` process on 127.0.0.1 port 0 with its store in a temp dir (it prints the bound address
//! on stdout). Small store files (16 MiB segments, small index) keep tests light on disk.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use comet_proto::comet::v1 as pb;
use comet_proto::comet::v1::broker_client::BrokerClient;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::binary::cargo_bin;
use super::process::Process;
use super::wait_until;

/// How a test broker is configured.
#[derive(Debug, Clone, Default)]
pub struct BrokerOptions {
    /// NameServer addresses to register with (empty = none).
    pub nameservers: Vec<String>,
    /// `store.flush-mode: sync`.
    pub sync_flush: bool,
    /// `broker.auto-create-topics` (default on).
    pub no_auto_create: bool,
    /// Extra YAML lines for the `broker:` section, each indented by two spaces.
    pub broker_extra: String,
    /// Extra YAML lines for the `metrics:` section, each indented by two spaces (its `listen` is always
    /// 127.0.0.1 port 0, set through the environment, so parallel tests never collide).
    pub metrics_extra: String,
    /// YAML lines for the `ha:` section, each indented by two spaces (empty = no replication).
    pub ha: String,
    /// YAML lines for the `messaging:` section, each indented by two spaces (retry delays, timer, transaction
    /// check-backs, queue locks, dedup window).
    pub messaging: String,
    /// YAML lines for the `rocketmq-v2:` section (the RocketMQ 5 API), each indented by two spaces.
    pub rocketmq_v2: String,
}

/// A running broker; killed on drop. Its store directory outlives restarts.
#[derive(Debug)]
pub struct BrokerProcess {
    process: Process,
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    ha_addr: Option<SocketAddr>,
    config_path: PathBuf,
}

impl BrokerProcess {
    /// Starts a broker with its store under `dir/store`.
    pub async fn start(dir: &Path, options: &BrokerOptions) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let nameservers = options.nameservers.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
        // `disk-capacity-bytes`: disk usage counts the CommitLog against 1 TiB, so the host disk's own fill level
        // (a developer machine above the 75 % clean ratio) never deletes a test's segments or refuses its writes.
        let yaml = format!(
            "broker:\n  listen: 127.0.0.1:0\n  nameserver-addresses: [{nameservers}]\n  auto-create-topics: {}\n\
             {}store:\n  dir: {}\n  segment-size: 16777216\n  index-slots: 4096\n  index-entries: 65536\n  \
             consume-queue-file-entries: 100000\n  disk-capacity-bytes: 1099511627776\n  flush-mode: {}\nmetrics:\n  enabled: true\n{}ha:\n{}messaging:\n{}rocketmq-v2:\n{}",
            !options.no_auto_create,
            options.broker_extra,
            dir.join("store").display(),
            if options.sync_flush { "sync" } else { "async" },
            options.metrics_extra,
            if options.ha.is_empty() { "  listen: \"\"\n" } else { &options.ha },
            if options.messaging.is_empty() { "  {}\n" } else { &options.messaging },
            if options.rocketmq_v2.is_empty() { "  {}\n" } else { &options.rocketmq_v2 },
        );
        let config_path = dir.join("broker.yaml");
        std::fs::write(&config_path, yaml)?;
        Self::launch(&config_path).await
    }

    async fn launch(config_path: &Path) -> anyhow::Result<Self> {
        let bin = cargo_bin("comet-broker", "comet-broker")?;
        let mut cmd = Command::new(bin);
        cmd.arg("--config").arg(config_path).env("RUST_LOG", "info,comet_broker=debug");
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("COMET_")) {
            cmd.env_remove(k);
        }
        cmd.env("COMET_METRICS_LISTEN", "127.0.0.1:0");
        let n = std::fs::read_dir(config_path.parent().context("config has no dir")?).map(|d| d.count()).unwrap_or(0);
        let log = config_path.with_extension(format!("{n}.log"));
        let mut process = Process::spawn("comet-broker", cmd, &log, true)?;
        let stdout = process.child_mut().and_then(|c| c.stdout.take()).context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // The readiness line with the gRPC address, the HA listener's (masters with slaves), then the metrics
        // endpoint's.
        let lines = tokio::task::spawn_blocking(move || {
            let first = rx.recv_timeout(Duration::from_secs(60))?;
            let mut next = rx.recv_timeout(Duration::from_secs(10))?;
            let mut ha = None;
            if next.contains("HA listening on") {
                ha = Some(next);
                next = rx.recv_timeout(Duration::from_secs(10))?;
            }
            Ok::<_, std::sync::mpsc::RecvTimeoutError>((first, ha, next))
        })
        .await?;
        let Ok((line, ha_line, metrics_line)) = lines else {
            bail!("comet-broker printed no readiness lines; stderr:\n{}", process.log());
        };
        let ha_addr = match ha_line {
            Some(l) => {
                Some(l.rsplit(' ').next().and_then(|a| a.parse().ok()).with_context(|| format!("bad HA line {l:?}"))?)
            }
            None => None,
        };
        let addr: SocketAddr = line
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("unexpected readiness line {line:?}"))?;
        let metrics_addr = super::metrics_address(&metrics_line)?;
        let broker = Self { process, addr, metrics_addr, ha_addr, config_path: config_path.to_owned() };
        broker.wait_serving().await?;
        Ok(broker)
    }

    /// SIGTERM (asserting a clean exit) and start again on the same store (on a new port).
    pub async fn restart(mut self) -> anyhow::Result<Self> {
        anyhow::ensure!(self.terminate().await?, "unclean exit after SIGTERM; stderr:\n{}", self.log());
        Self::launch(&self.config_path).await
    }

    /// SIGKILL, then start again on the same store.
    pub async fn crash_and_restart(mut self) -> anyhow::Result<Self> {
        self.process.kill();
        Self::launch(&self.config_path).await
    }

    /// Starts again on the same store after it stopped ([`Self::kill`], then perhaps its files altered).
    pub async fn start_again(self) -> anyhow::Result<Self> {
        Self::launch(&self.config_path).await
    }

    /// `host:port` to dial.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// `host:port` of its HA listener (a master with `ha.listen`).
    pub fn ha_addr(&self) -> Option<SocketAddr> {
        self.ha_addr
    }

    /// The directory of its store.
    pub fn store_dir(&self) -> PathBuf {
        self.config_path.with_file_name("store")
    }

    /// `host:port` of its Prometheus `/metrics` endpoint.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// A gRPC client of this broker.
    pub async fn client(&self) -> anyhow::Result<BrokerClient<Channel>> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect()
            .await?;
        Ok(BrokerClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20))
    }

    /// gRPC health of service `comet.v1.Broker`.
    pub async fn health(&self) -> anyhow::Result<ServingStatus> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2))
            .connect()
            .await?;
        let response =
            HealthClient::new(channel).check(HealthCheckRequest { service: "comet.v1.Broker".into() }).await?;
        Ok(response.into_inner().status())
    }

    async fn wait_serving(&self) -> anyhow::Result<()> {
        super::wait_until(&format!("broker {} serving", self.addr), Duration::from_secs(30), || async {
            self.health().await.map(|s| s == ServingStatus::Serving).unwrap_or(false)
        })
        .await
        .with_context(|| format!("stderr:\n{}", self.process.log()))
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGTERM; returns whether it exited with success (waits off the async runtime: needs a multi-thread one).
    pub async fn terminate(&mut self) -> anyhow::Result<bool> {
        tokio::task::block_in_place(|| self.process.terminate())
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// Waits until the queues `queues` of `topic` hold `n` messages together, dispatched (visible to pulls): a send is
/// acknowledged when stored, and the store makes it pullable a moment later.
pub async fn dispatched(
    client: &BrokerClient<Channel>,
    topic: &str,
    queues: std::ops::Range<u32>,
    n: u64,
) -> anyhow::Result<()> {
    wait_until(&format!("{n} messages dispatched in {topic}:{queues:?}"), Duration::from_secs(10), || async {
        let mut total = 0;
        for queue_id in queues.clone() {
            let request = pb::GetQueueOffsetsRequest { topic: topic.into(), queue_id };
            match client.clone().get_queue_offsets(request).await {
                Ok(answer) => total += answer.into_inner().max_offset,
                Err(_) => return false,
            }
        }
        total >= n
    })
    .await
}
