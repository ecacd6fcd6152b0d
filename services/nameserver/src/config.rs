//! The NameServer's configuration: YAML file, then `COMET_<SECTION>_<KEY>` environment overrides, then
//! `validate()`. Every key has a default, so no file at all runs a memory-mode NameServer on port 9876.
//! Keys are documented in docs/configuration.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::NameServerError;

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Listener, liveness timings, limits.
    pub nameserver: ServerConfig,
    /// Which registry backend holds the routes.
    pub registry: RegistryConfig,
    /// The etcd backend's connection (used when `registry.backend` is `etcd`).
    pub etcd: EtcdConfig,
    /// Logging.
    pub log: LogConfig,
    /// Metrics: the Prometheus endpoint (default `0.0.0.0:5558`) and OTLP push.
    pub metrics: MetricsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nameserver: ServerConfig::default(),
            registry: RegistryConfig::default(),
            etcd: EtcdConfig::default(),
            log: LogConfig::default(),
            metrics: MetricsConfig::listening_on(comet_telemetry::NAMESERVER_LISTEN),
        }
    }
}

/// Section `nameserver`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerConfig {
    /// gRPC listen address. RocketMQ's 0.0.0.0:9876; port 0 picks a free port (printed at start-up).
    pub listen: String,
    /// How often the memory backend looks for silent brokers (RocketMQ 4: 10 s).
    pub scan_interval_ms: u64,
    /// Silence after which a broker is dropped, unless its registration names its own (RocketMQ: 120 s).
    pub broker_expiry_ms: u64,
    /// The memory backend's KV config file; empty = `$HOME/namesrv/kvConfig.json` as in RocketMQ.
    pub kv_config_path: String,
    /// Most topics one broker may register.
    pub max_topics_per_broker: usize,
    /// Largest gRPC message accepted, in bytes (registration batches stay far below it).
    pub max_message_bytes: usize,
    /// After SIGTERM, how long in-flight calls and open connections may drain before the process exits.
    pub shutdown_grace_ms: u64,
}

/// Section `registry`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RegistryConfig {
    /// `memory` (RocketMQ semantics, default) or `etcd`.
    pub backend: Backend,
}

/// Where routes live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// In this process, rebuilt from broker registrations; NameServers do not talk to each other.
    #[default]
    Memory,
    /// In etcd under leases; every NameServer serves from a watched cache.
    Etcd,
}

/// Section `etcd`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct EtcdConfig {
    /// Client endpoints, `host:port` (env override: comma-separated).
    pub endpoints: Vec<String>,
    /// Key prefix of everything this NameServer cluster stores; lets several Comet clusters share one etcd.
    pub prefix: String,
    /// Timeout to establish a connection.
    pub connect_timeout_ms: u64,
    /// Timeout of one etcd request.
    pub request_timeout_ms: u64,
    /// How often the watcher checks that etcd still answers (an idle watch stream does not notice an outage).
    pub probe_interval_ms: u64,
    /// Pause between reconnection attempts while etcd is unreachable.
    pub retry_interval_ms: u64,
    /// Topics per etcd value; etcd refuses requests over 1.5 MiB by default.
    pub topics_per_key: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9876".into(),
            scan_interval_ms: 10_000,
            broker_expiry_ms: 120_000,
            kv_config_path: String::new(),
            max_topics_per_broker: 1_000_000,
            max_message_bytes: 16 * 1024 * 1024,
            shutdown_grace_ms: 5_000,
        }
    }
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["127.0.0.1:2379".into()],
            prefix: "/comet/nameserver".into(),
            connect_timeout_ms: 2_000,
            request_timeout_ms: 3_000,
            probe_interval_ms: 1_000,
            retry_interval_ms: 1_000,
            topics_per_key: 2_000,
        }
    }
}

pub use comet_config::LogConfig;
pub use comet_telemetry::MetricsConfig;

/// Environment variables that override config keys start with this.
pub const ENV_PREFIX: &str = comet_config::ENV_PREFIX;

impl Config {
    /// Reads the YAML file (if any), applies `COMET_<SECTION>_<KEY>` overrides from `env`, and validates.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, NameServerError> {
        let config: Config = comet_config::load(file, env).map_err(|e| NameServerError::Config(e.0))?;
        config.validate()?;
        Ok(config)
    }

    /// Refuses values the NameServer cannot run with, naming the key.
    pub fn validate(&self) -> Result<(), NameServerError> {
        let bad = |key: &str, why: String| Err(NameServerError::Config(format!("{key}: {why}")));
        if let Err(e) = self.nameserver.listen.parse::<SocketAddr>() {
            return bad("nameserver.listen", format!("{:?} is not ip:port ({e})", self.nameserver.listen));
        }
        if self.nameserver.scan_interval_ms == 0 {
            return bad("nameserver.scan-interval-ms", "must be > 0".into());
        }
        if self.nameserver.broker_expiry_ms == 0 {
            return bad("nameserver.broker-expiry-ms", "must be > 0".into());
        }
        if self.nameserver.max_topics_per_broker == 0 {
            return bad("nameserver.max-topics-per-broker", "must be > 0".into());
        }
        if self.nameserver.max_message_bytes < 1024 * 1024 {
            return bad("nameserver.max-message-bytes", "must be at least 1 MiB".into());
        }
        if self.registry.backend == Backend::Etcd {
            if !cfg!(feature = "etcd") {
                return bad("registry.backend", "etcd support was not compiled in (cargo feature `etcd`)".into());
            }
            if self.etcd.endpoints.is_empty() || self.etcd.endpoints.iter().any(|e| e.trim().is_empty()) {
                return bad("etcd.endpoints", "needs at least one non-empty host:port".into());
            }
            let p = &self.etcd.prefix;
            if !p.starts_with('/') || p.ends_with('/') || p.len() < 2 {
                return bad("etcd.prefix", format!("{p:?} must start with '/' and not end with '/'"));
            }
            if self.etcd.topics_per_key == 0 {
                return bad("etcd.topics-per-key", "must be > 0".into());
            }
            if self.nameserver.broker_expiry_ms < 2_000 {
                return bad("nameserver.broker-expiry-ms", "etcd leases need at least 2000 ms".into());
            }
        }
        self.metrics.validate().map_err(|e| NameServerError::Config(e.to_string()))?;
        Ok(())
    }

    /// The KV config file of the memory backend.
    pub fn kv_config_path(&self) -> PathBuf {
        if !self.nameserver.kv_config_path.is_empty() {
            return PathBuf::from(&self.nameserver.kv_config_path);
        }
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        home.join("namesrv").join("kvConfig.json")
    }

    /// Default heartbeat timeout of a broker.
    pub fn broker_expiry(&self) -> Duration {
        Duration::from_millis(self.nameserver.broker_expiry_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn no_file_and_no_env_gives_validated_defaults() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.nameserver.listen, "0.0.0.0:9876");
        assert_eq!(c.broker_expiry(), Duration::from_secs(120));
        assert_eq!(c.metrics.listen, "0.0.0.0:5558", "next to the broker's 5557, so both run on one host");
        let c = Config::load(None, env(&[("COMET_METRICS_OTLP_INTERVAL_MS", "1000")])).unwrap();
        assert_eq!(c.metrics.listen, "0.0.0.0:5558", "setting another metrics key keeps the NameServer's port");
        assert!(Config::load(None, env(&[("COMET_METRICS_LISTEN", "nowhere")])).is_err());
    }

    #[test]
    fn file_then_env_overrides_apply_in_that_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns.yaml");
        std::fs::write(
            &path,
            "nameserver:\n  listen: 127.0.0.1:1\n  scan-interval-ms: 5\nregistry:\n  backend: memory\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            env(&[
                ("COMET_NAMESERVER_LISTEN", "127.0.0.1:2"),
                ("COMET_ETCD_ENDPOINTS", "a:1, b:2"),
                ("COMET_BROKER_LISTEN", "ignored: another process's section"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.nameserver.listen, "127.0.0.1:2");
        assert_eq!(c.nameserver.scan_interval_ms, 5);
        assert_eq!(c.registry.backend, Backend::Memory);
        assert_eq!(c.etcd.endpoints, ["a:1", "b:2"]);
    }

    #[test]
    fn unknown_keys_and_bad_values_fail_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns.yaml");
        std::fs::write(&path, "nameserver:\n  lisen: 127.0.0.1:1\n").unwrap();
        assert!(Config::load(Some(&path), env(&[])).unwrap_err().to_string().contains("lisen"));
        assert!(Config::load(None, env(&[("COMET_NAMESERVER_NOPE", "1")])).is_err());
        assert!(Config::load(None, env(&[("COMET_NAMESERVER_LISTEN", "nowhere")])).is_err());
        assert!(Config::load(None, env(&[("COMET_NAMESERVER_SCAN_INTERVAL_MS", "0")])).is_err());
        assert!(Config::load(None, env(&[("COMET_NAMESERVER_SCAN_INTERVAL_MS", "abc")])).is_err());
    }
}
