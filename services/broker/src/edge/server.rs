//! Binds the listener, opens the broker, and serves `comet.v1.Broker` plus gRPC health and reflection (v1 and
//! v1alpha), and the remoting data path on the same port (`remoting.rs`), until shutdown; then answers parked
//! pulls, drains, unregisters, flushes offsets and closes the store.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use comet_proto::apache::rocketmq::v2::messaging_service_server::MessagingServiceServer;
use comet_proto::comet::v1::broker_server::BrokerServer;
use comet_telemetry::{Identity, RpcMetricsLayer, Telemetry};
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::broker::{Broker, now_ms};
use crate::config::Config;
use crate::error::{BrokerError, Result};
use crate::handler::BrokerHandler;

/// gRPC health service name of the broker: SERVING while it accepts requests, NOT_SERVING once shutting down.
pub const HEALTH_SERVICE: &str = "comet.v1.Broker";

/// How often the server pings an idle HTTP/2 connection.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is closed.
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How often silent clients are dropped.
const CLIENT_SCAN_INTERVAL: Duration = Duration::from_secs(10);

/// How often the RocketMQ 5 receive windows are saved (start-up replays the journal written since).
const RECEIVE_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(5);

/// A broker whose listener is bound and whose store is open: ready to serve.
#[derive(Debug)]
pub struct Bound {
    listener: TcpListener,
    local_addr: SocketAddr,
    broker: Arc<Broker>,
    telemetry: Telemetry,
    ha: Option<comet_remoting::Server>,
}

/// Binds `broker.listen` and the metrics endpoint, and opens the store (recovery runs here, before the
/// readiness line).
pub async fn bind(config: Config) -> Result<Bound> {
    let address = config.broker.listen.clone();
    let serve_err = |e: std::io::Error| BrokerError::Serve { address: address.clone(), source: Box::new(e) };
    let listener = TcpListener::bind(&address).await.map_err(serve_err)?;
    let local_addr = listener.local_addr().map_err(serve_err)?;
    let advertised = config.advertised_address(local_addr);
    let identity = Identity {
        service: "comet-broker",
        instance: advertised.clone(),
        attributes: vec![
            ("node_type", "broker".into()),
            ("cluster", config.broker.cluster_name.clone()),
            ("node_id", config.broker.broker_name.clone()),
        ],
    };
    let telemetry =
        Telemetry::start(&config.metrics, identity).await.map_err(|e| BrokerError::Config(e.to_string()))?;
    let meter = telemetry.meter().clone();
    let broker = tokio::task::spawn_blocking(move || Broker::open_with_meter(config, advertised, &meter))
        .await
        .map_err(|e| BrokerError::Internal(format!("opening the broker: {e}")))??;
    crate::metrics::register_gauges(telemetry.meter(), &broker);
    let ha = crate::ha::master::start(&broker).await?;
    Ok(Bound { listener, local_addr, broker, telemetry, ha })
}

impl Bound {
    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Address of the Prometheus `/metrics` endpoint, if one is serving.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.telemetry.local_addr()
    }

    /// Address of the HA listener slaves connect to, if this is a master with one.
    pub fn ha_addr(&self) -> Option<SocketAddr> {
        self.ha.as_ref().map(comet_remoting::Server::local_addr)
    }

    /// The broker state (for embedding and tests).
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Serves until `shutdown` completes, then shuts down gracefully (see the module doc).
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let Bound { listener, local_addr, broker, telemetry, ha } = self;
        let rpc_metrics = RpcMetricsLayer::new(telemetry.meter(), crate::metrics::RPC_SERVICES);
        let address = local_addr.to_string();
        let serve_err =
            |e: Box<dyn std::error::Error + Send + Sync>| BrokerError::Serve { address: address.clone(), source: e };

        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_service_status(HEALTH_SERVICE, ServingStatus::Serving).await;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(comet_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // The descriptor set holds every comet.v1 service: advertise only those served here.
                .with_service_name("comet.v1.Broker")
                .with_service_name(crate::v2::SERVICE_NAME)
                .with_service_name("grpc.health.v1.Health")
                .with_service_name("grpc.reflection.v1.ServerReflection")
                .with_service_name("grpc.reflection.v1alpha.ServerReflection")
        };
        let reflection_v1 = reflection().build_v1().map_err(|e| serve_err(Box::new(e)))?;
        let reflection_v1alpha = reflection().build_v1alpha().map_err(|e| serve_err(Box::new(e)))?;

        // Requests carry whole batches: allow well above the largest message, so an oversized body gets the
        // broker's own INVALID_ARGUMENT instead of tonic's RESOURCE_EXHAUSTED (which means "busy" here).
        let max_grpc = (broker.config.store.max_message_size as usize).saturating_mul(2).max(64 << 20);
        let service = BrokerServer::new(BrokerHandler::new(Arc::clone(&broker)))
            .max_decoding_message_size(max_grpc)
            .max_encoding_message_size(max_grpc);
        // The RocketMQ 5 API on the same port (docs/rocketmq-v2.md); off with `rocketmq-v2.enabled: false`.
        let v2 = broker.config.rocketmq_v2.enabled.then(|| {
            MessagingServiceServer::new(crate::v2::MessagingHandler::new(Arc::clone(&broker)))
                .max_decoding_message_size(max_grpc)
                .max_encoding_message_size(max_grpc)
        });

        // The SDK's send and pull on the remoting channel, sharing the port (edge/remoting.rs).
        let data_path = super::remoting::server(&broker, &rpc_metrics, local_addr, max_grpc);
        let incoming = super::remoting::split(listener, data_path.clone(), broker.config.broker.max_connections);

        let background = spawn_background(&broker);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let follower = crate::ha::slave::spawn(&broker, stop_rx.clone());
        let timer = crate::domain::timer::service::spawn(&broker, stop_rx.clone()).await?;
        let registration = crate::registration::spawn(Arc::clone(&broker), stop_rx)?;

        // On the signal: answer parked pulls and refuse new work first, then let tonic stop accepting and drain.
        let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
        let signal_broker = Arc::clone(&broker);
        let grace = Duration::from_millis(broker.config.broker.shutdown_grace_ms);
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: answering parked pulls, draining requests");
            signal_broker.waiters.shut_down();
            reporter.set_service_status(HEALTH_SERVICE, ServingStatus::NotServing).await;
            // The data path drains beside tonic: new requests get GO_AWAY, running ones finish.
            tokio::spawn(async move {
                data_path.shutdown(grace).await;
                let _ = drained_tx.send(());
            });
            let _ = signalled_tx.send(());
        };
        let drain_deadline = async move {
            if signalled_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };

        tracing::info!(%local_addr, advertised = %broker.advertised, "broker serving");
        let server = Server::builder()
            // A client that vanishes without closing its connection (power loss, a partition) would otherwise keep
            // its long polls and Telemetry stream open until TCP gives up: HTTP/2 pings find it within a minute.
            .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
            .layer(rpc_metrics)
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(service)
            .add_optional_service(v2)
            .serve_with_incoming_shutdown(incoming, signal);
        let served = tokio::select! {
            served = server => served.map_err(|e| serve_err(Box::new(e))),
            () = drain_deadline => {
                tracing::warn!(?grace, "clients still connected after the shutdown grace period; stopping anyway");
                Ok(())
            }
        };

        // Bounded by the grace period inside; an error means the signal never came (tonic failed on its own).
        let _ = tokio::time::timeout(grace + Duration::from_secs(1), drained_rx).await;
        let _ = stop_tx.send(true);
        if let Some(task) = registration {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        // The slave loop finishes the append in progress; the HA listener answers its parked fetches.
        if let Some(task) = follower {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        // The timer finishes its pass (its appends replicate like any other) and saves a clean checkpoint.
        if let Some(task) = timer {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        if let Some(server) = ha {
            broker.ha.shut_down();
            server.shutdown(grace).await;
        }
        for task in background {
            task.abort();
        }
        let closing = Arc::clone(&broker);
        let closed = tokio::task::spawn_blocking(move || closing.close())
            .await
            .map_err(|e| BrokerError::Internal(format!("closing the broker: {e}")))?;
        // Last: a final OTLP push sees the state at shutdown.
        telemetry.shutdown().await;
        tracing::info!(%local_addr, "broker stopped");
        served.and(closed)
    }
}

/// Runs `work` on the blocking pool every `period` (first after one period), logging a failure as `what` and
/// retrying at the next tick.
fn periodic(
    broker: &Arc<Broker>,
    period: Duration,
    what: &'static str,
    work: fn(&Broker) -> Result<()>,
) -> tokio::task::JoinHandle<()> {
    let broker = Arc::clone(broker);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tick.tick().await;
            if let Err(e) = broker.blocking(work).await {
                tracing::error!(error = %e, "{what} failed; retrying at the next interval");
            }
        }
    })
}

/// The offset flusher, the receive-window snapshots, the client expiry scan and (masters) the transaction check-back service.
fn spawn_background(broker: &Arc<Broker>) -> Vec<tokio::task::JoinHandle<()>> {
    let flusher = periodic(
        broker,
        Duration::from_millis(broker.config.broker.offset_flush_interval_ms),
        "flushing consumer offsets",
        |b| b.offsets.flush(),
    );
    let expiry = {
        let broker = Arc::clone(broker);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CLIENT_SCAN_INTERVAL);
            loop {
                tick.tick().await;
                let removed = broker.clients.expire(now_ms());
                if removed > 0 {
                    tracing::info!(removed, "silent clients expired");
                }
                let removed = broker.sessions.expire();
                if removed > 0 {
                    tracing::info!(removed, "silent RocketMQ v2 clients expired");
                }
                let now = now_ms();
                let released =
                    broker.locks.sweep(now, |group, client| broker.clients.is_live_member(group, client, now));
                if released > 0 {
                    tracing::info!(released, "queue locks of expired holders released");
                }
            }
        })
    };
    let snapshots =
        periodic(broker, RECEIVE_SNAPSHOT_INTERVAL, "saving the receive windows", |b| b.receive.snapshot_if_changed());
    let mut tasks = vec![flusher, expiry, snapshots];
    tasks.extend(crate::handler::transaction::spawn_checker(broker));
    tasks
}
