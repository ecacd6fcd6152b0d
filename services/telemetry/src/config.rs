//! Section `metrics` of every server's configuration (docs/configuration.md, "Metrics").

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::TelemetryError;

/// Default `/metrics` listen address of the broker: RocketMQ's Prometheus exporter port.
pub const BROKER_LISTEN: &str = "0.0.0.0:5557";
/// Default `/metrics` listen address of the NameServer: next to the broker's, so both run on one host unchanged.
pub const NAMESERVER_LISTEN: &str = "0.0.0.0:5558";

/// Section `metrics`: what is measured is fixed; this says where it goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct MetricsConfig {
    /// Master switch: off = no instruments, no endpoint, no push.
    pub enabled: bool,
    /// Listen address of the Prometheus `/metrics` endpoint; port 0 picks a free one (printed at start-up),
    /// empty = no endpoint (OTLP push only).
    pub listen: String,
    /// OTLP/gRPC collector to push to, e.g. `http://otel-collector:4317`; empty = no push.
    pub otlp_endpoint: String,
    /// How often metrics are pushed over OTLP (RocketMQ: 60 s).
    pub otlp_interval_ms: u64,
    /// Longest one OTLP export may take.
    pub otlp_timeout_ms: u64,
    /// `service.instance.id` (label `service_instance_id`); empty = the process's advertised address.
    pub instance_id: String,
    /// Distinct `topic` label values; later topics are counted under `topic="_other"`.
    pub max_topic_labels: usize,
    /// Distinct `consumer_group` label values; later groups are counted under `consumer_group="_other"`.
    pub max_group_labels: usize,
    /// Series per instrument; beyond it the SDK folds new series into one labelled `otel_metric_overflow="true"`.
    pub max_series: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self::listening_on(BROKER_LISTEN)
    }
}

impl MetricsConfig {
    /// The defaults, with the `/metrics` endpoint on `listen` (each service has its own default port).
    pub fn listening_on(listen: &str) -> Self {
        Self {
            enabled: true,
            listen: listen.to_owned(),
            otlp_endpoint: String::new(),
            otlp_interval_ms: 60_000,
            otlp_timeout_ms: 10_000,
            instance_id: String::new(),
            max_topic_labels: 1000,
            max_group_labels: 1000,
            max_series: 50_000,
        }
    }

    /// Refuses values the exporters cannot run with; the message names the key (`metrics.<key>`).
    pub fn validate(&self) -> Result<(), TelemetryError> {
        let bad = |key: &str, why: String| Err(TelemetryError::Config(format!("metrics.{key}: {why}")));
        if !self.listen.is_empty()
            && let Err(e) = self.listen.parse::<SocketAddr>()
        {
            return bad("listen", format!("{:?} is not ip:port ({e})", self.listen));
        }
        let scheme_ok = ["http://", "https://"].iter().any(|s| self.otlp_endpoint.starts_with(s));
        if !self.otlp_endpoint.is_empty() && !scheme_ok {
            return bad("otlp-endpoint", format!("{:?} must start with http:// or https://", self.otlp_endpoint));
        }
        for (key, value) in [("otlp-interval-ms", self.otlp_interval_ms), ("otlp-timeout-ms", self.otlp_timeout_ms)] {
            if value == 0 {
                return bad(key, "must be > 0".into());
            }
        }
        for (key, value) in [
            ("max-topic-labels", self.max_topic_labels),
            ("max-group-labels", self.max_group_labels),
            ("max-series", self.max_series),
        ] {
            if value == 0 {
                return bad(key, "must be > 0".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        MetricsConfig::default().validate().unwrap();
        MetricsConfig::listening_on("").validate().unwrap();
        let c = MetricsConfig { listen: "nowhere".into(), ..MetricsConfig::default() };
        assert!(c.validate().unwrap_err().to_string().contains("metrics.listen"));
        let c = MetricsConfig { otlp_endpoint: "collector:4317".into(), ..MetricsConfig::default() };
        assert!(c.validate().unwrap_err().to_string().contains("metrics.otlp-endpoint"));
        let c = MetricsConfig { max_topic_labels: 0, ..MetricsConfig::default() };
        assert!(c.validate().unwrap_err().to_string().contains("max-topic-labels"));
    }
}
