//! Metrics for every Comet server, set up in one place: an OpenTelemetry meter provider whose instruments are
//! read by a Prometheus `/metrics` endpoint (pull) and, when `metrics.otlp-endpoint` is set, pushed over
//! OTLP/gRPC. Services instrument with the OpenTelemetry API only; which exporters run is configuration.
//!
//! - [`MetricsConfig`]: section `metrics` (docs/configuration.md, "Metrics").
//! - [`Telemetry::start`]: provider, resource (`service.name`, `service.instance.id`, …), readers, HTTP server.
//! - [`RpcMetricsLayer`]: a tower layer recording `rocketmq_rpc_latency` for every gRPC call of a tonic server.
//! - [`LabelCap`]: bounds the values of a label fed by user-chosen names (topics, groups).
//! - [`Snapshot`]: one computation shared by the observable instruments of one collection.
//!
//! The metric reference (names, types, labels) is in docs/operations.md, "Metrics".

mod config;
mod http;
mod labels;
mod rpc;

use std::net::SocketAddr;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, MeterProvider};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{Instrument, PeriodicReader, SdkMeterProvider, Stream};
use tokio::net::TcpListener;

pub use config::{BROKER_LISTEN, MetricsConfig, NAMESERVER_LISTEN};
pub use labels::{LabelCap, OTHER, Snapshot};
pub use opentelemetry;
pub use rpc::{LATENCY_BOUNDARIES_MS, RPC_LATENCY, RpcMetrics, RpcMetricsLayer, RpcService};

/// Why metrics could not be set up; the message names the key or the address.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A `metrics.*` key has an impossible value.
    #[error("{0}")]
    Config(String),
    /// The `/metrics` listener could not be bound.
    #[error("metrics.listen {address}: {source}")]
    Bind {
        /// The configured address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// An exporter could not be built.
    #[error("metrics exporter: {0}")]
    Exporter(String),
}

/// Who is reporting: becomes the OpenTelemetry resource (OTLP) and constant labels on every Prometheus series.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `service.name`: `comet-broker` or `comet-nameserver`.
    pub service: &'static str,
    /// `service.instance.id` when `metrics.instance-id` is empty: the address clients use.
    pub instance: String,
    /// RocketMQ's resource labels, e.g. `node_type`, `cluster`, `node_id`; added to every series too.
    pub attributes: Vec<(&'static str, String)>,
}

/// The running metrics pipeline of one process. Instruments come from [`Telemetry::meter`].
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkMeterProvider,
    meter: Meter,
    registry: prometheus::Registry,
    local_addr: Option<SocketAddr>,
    server: Option<(tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<()>)>,
}

impl Telemetry {
    /// Builds the provider and its readers and binds the `/metrics` listener. Call inside the tokio runtime
    /// (the OTLP channel and the HTTP server run on it). With `enabled: false` the meter's instruments are
    /// no-ops and nothing listens.
    pub async fn start(config: &MetricsConfig, identity: Identity) -> Result<Self, TelemetryError> {
        config.validate()?;
        let registry = prometheus::Registry::new();
        if !config.enabled {
            let provider = SdkMeterProvider::builder().build();
            let meter = provider.meter(identity.service);
            return Ok(Self { provider, meter, registry, local_addr: None, server: None });
        }
        let instance =
            if config.instance_id.is_empty() { identity.instance.clone() } else { config.instance_id.clone() };
        let mut attributes = vec![
            KeyValue::new("service.name", identity.service),
            KeyValue::new("service.instance.id", instance),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ];
        attributes.extend(identity.attributes.iter().map(|(k, v)| KeyValue::new(*k, v.clone())));
        // Labels on every Prometheus series (the resource itself goes to `target_info`).
        let constant = attributes.iter().filter(|kv| kv.key.as_str() != "service.version").map(|kv| kv.key.clone());
        let resource = Resource::builder_empty().with_attributes(attributes.clone()).build();

        let max_series = config.max_series;
        let mut builder = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_view(move |_: &Instrument| Stream::builder().with_cardinality_limit(max_series).build().ok());
        if !config.listen.is_empty() {
            let exporter = opentelemetry_prometheus::exporter()
                .with_registry(registry.clone())
                // Names are RocketMQ's exactly: counters already end in `_total`, units are in the reference.
                .without_counter_suffixes()
                .without_units()
                .scope_info_enabled(false)
                .with_resource_selector(opentelemetry_prometheus::ResourceSelector::KeyAllowList(constant.collect()))
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            builder = builder.with_reader(exporter);
        }
        if !config.otlp_endpoint.is_empty() {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(config.otlp_endpoint.clone())
                .with_timeout(Duration::from_millis(config.otlp_timeout_ms))
                .build()
                .map_err(|e| TelemetryError::Exporter(format!("otlp-endpoint {}: {e}", config.otlp_endpoint)))?;
            let reader =
                PeriodicReader::builder(exporter).with_interval(Duration::from_millis(config.otlp_interval_ms)).build();
            builder = builder.with_reader(reader);
        }
        let provider = builder.build();
        let meter = provider.meter(identity.service);

        let (local_addr, server) = if config.listen.is_empty() {
            (None, None)
        } else {
            let bind_err = |source| TelemetryError::Bind { address: config.listen.clone(), source };
            let listener = TcpListener::bind(&config.listen).await.map_err(bind_err)?;
            let local_addr = listener.local_addr().map_err(bind_err)?;
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(http::serve(listener, registry.clone(), stop_rx));
            tracing::info!(%local_addr, "metrics endpoint serving /metrics");
            (Some(local_addr), Some((stop_tx, task)))
        };
        if !config.otlp_endpoint.is_empty() {
            tracing::info!(endpoint = %config.otlp_endpoint, interval_ms = config.otlp_interval_ms, "pushing metrics over OTLP");
        }
        Ok(Self { provider, meter, registry, local_addr, server })
    }

    /// The meter every instrument of this process is created from.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// Address of the `/metrics` endpoint, if one is serving (port 0 resolved).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The Prometheus text exposition, exactly what `GET /metrics` answers (tests, debugging). Runs the
    /// observable instruments' callbacks: call it off the async workers when they may touch a disk.
    pub fn render(&self) -> String {
        http::render(&self.registry)
    }

    /// Stops the endpoint and pushes a last OTLP export. Blocking work runs on the blocking pool.
    pub async fn shutdown(self) {
        if let Some((stop, task)) = self.server {
            let _ = stop.send(true);
            let _ = task.await;
        }
        let provider = self.provider;
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "metrics shutdown: last export failed"),
            Err(e) => tracing::warn!(error = %e, "metrics shutdown task failed"),
        }
    }
}

/// `host:port` naming this process when it listens on every interface: the host name (a pod's name in
/// Kubernetes) and the port; otherwise the address itself.
pub fn instance_address(bound: SocketAddr) -> String {
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    format!("{}:{}", hostname().unwrap_or_else(|| "localhost".into()), bound.port())
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for writes of its length; gethostname NUL-terminates within it on success
    // (and we stop at the first NUL or the end either way).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..end]).ok()?.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            service: "comet-test",
            instance: "10.0.0.1:8081".into(),
            attributes: vec![("node_type", "broker".into()), ("cluster", "c1".into())],
        }
    }

    #[tokio::test]
    async fn prometheus_endpoint_serves_exact_names_and_identity_labels() {
        let config = MetricsConfig { listen: "127.0.0.1:0".into(), ..MetricsConfig::default() };
        let telemetry = Telemetry::start(&config, identity()).await.unwrap();
        let counter = telemetry.meter().u64_counter("rocketmq_messages_in_total").build();
        counter.add(3, &[KeyValue::new("topic", "t1")]);
        let addr = telemetry.local_addr().unwrap();
        let body = http::get_for_test(addr, "/metrics").await.unwrap();
        assert!(body.lines().next().unwrap().contains(" 200 "), "{body}");
        assert!(body.contains("# TYPE rocketmq_messages_in_total counter"), "{body}");
        let line = body.lines().find(|l| l.starts_with("rocketmq_messages_in_total{")).unwrap();
        for part in
            ["topic=\"t1\"", "service_name=\"comet-test\"", "service_instance_id=\"10.0.0.1:8081\"", "cluster=\"c1\""]
        {
            assert!(line.contains(part), "{line}");
        }
        assert!(line.ends_with(" 3"), "{line}");
        assert!(body.contains("target_info{"), "{body}");
        assert!(http::get_for_test(addr, "/nope").await.unwrap().lines().next().unwrap().contains(" 404 "));
        telemetry.shutdown().await;
    }

    #[tokio::test]
    async fn disabled_metrics_listen_nowhere_and_instruments_are_noops() {
        let config = MetricsConfig { enabled: false, ..MetricsConfig::default() };
        let telemetry = Telemetry::start(&config, identity()).await.unwrap();
        assert!(telemetry.local_addr().is_none());
        telemetry.meter().u64_counter("x_total").build().add(1, &[]);
        assert!(!telemetry.render().contains("x_total"));
        telemetry.shutdown().await;
    }

    #[tokio::test]
    async fn a_taken_port_fails_naming_the_key() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let config = MetricsConfig { listen: taken.local_addr().unwrap().to_string(), ..MetricsConfig::default() };
        let err = Telemetry::start(&config, identity()).await.unwrap_err();
        assert!(err.to_string().starts_with("metrics.listen"), "{err}");
    }

    #[test]
    fn instance_address_names_the_host_for_a_wildcard_listener() {
        assert_eq!(instance_address("10.1.2.3:5557".parse().unwrap()), "10.1.2.3:5557");
        let wildcard = instance_address("0.0.0.0:9876".parse().unwrap());
        assert!(wildcard.ends_with(":9876") && !wildcard.starts_with("0.0.0.0"), "{wildcard}");
    }
}
