//! Binds the listener, builds the registry the config asks for, and serves `comet.v1.NameServer` plus gRPC
//! health and reflection (v1 and v1alpha: grpcurl 1.8 only speaks v1alpha) until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use comet_proto::comet::v1::name_server_server::NameServerServer;
use comet_telemetry::opentelemetry::KeyValue;
use comet_telemetry::opentelemetry::metrics::{AsyncInstrument, Meter};
use comet_telemetry::{Identity, RpcMetricsLayer, RpcService, Telemetry};
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::config::{Backend, Config};
use crate::error::{NameServerError, Result};
use crate::handler::NameServerHandler;
use crate::registry::Registry;
use crate::registry::memory::MemoryRegistry;
use crate::route::RegistrationLimits;

/// gRPC service name whose health reflects the registry: NOT_SERVING while etcd is unreachable (routes are then
/// the last known ones). The overall "" service stays SERVING as long as the process answers.
pub const HEALTH_SERVICE: &str = "comet.v1.NameServer";

/// The gRPC service a NameServer serves, with its methods: the `service` and `request_code` values of
/// `rocketmq_rpc_latency`.
pub const RPC_SERVICES: &[RpcService] =
    &[RpcService { name: HEALTH_SERVICE, methods: comet_proto::methods::NAMESERVER_METHODS }];

/// A NameServer whose listeners (gRPC and metrics) are bound: the addresses are known (port 0 resolved)
/// before serving starts.
#[derive(Debug)]
pub struct Bound {
    listener: TcpListener,
    local_addr: SocketAddr,
    config: Config,
    telemetry: Telemetry,
}

/// Binds `nameserver.listen` and the metrics endpoint.
pub async fn bind(config: Config) -> Result<Bound> {
    let address = config.nameserver.listen.clone();
    let serve_err = |e: std::io::Error| NameServerError::Serve { address: address.clone(), source: Box::new(e) };
    let listener = TcpListener::bind(&address).await.map_err(serve_err)?;
    let local_addr = listener.local_addr().map_err(serve_err)?;
    let identity = Identity {
        service: "comet-nameserver",
        instance: comet_telemetry::instance_address(local_addr),
        attributes: vec![("node_type", "nameserver".into())],
    };
    let telemetry =
        Telemetry::start(&config.metrics, identity).await.map_err(|e| NameServerError::Config(e.to_string()))?;
    Ok(Bound { listener, local_addr, config, telemetry })
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

    /// Serves until `shutdown` completes, then stops accepting and drains in-flight calls.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let Bound { listener, local_addr, config, telemetry } = self;
        let served = match config.registry.backend {
            Backend::Memory => match MemoryRegistry::open(config.kv_config_path(), config.broker_expiry()) {
                Ok(registry) => {
                    let registry = Arc::new(registry);
                    let expiry = registry.spawn_expiry(Duration::from_millis(config.nameserver.scan_interval_ms));
                    let served = serve_with(registry, listener, local_addr, &config, &telemetry, shutdown).await;
                    expiry.abort();
                    served
                }
                Err(e) => Err(e),
            },
            #[cfg(feature = "etcd")]
            Backend::Etcd => match crate::registry::etcd::EtcdRegistry::start(&config).await {
                Ok(registry) => {
                    serve_with(Arc::new(registry), listener, local_addr, &config, &telemetry, shutdown).await
                }
                Err(e) => Err(e),
            },
            #[cfg(not(feature = "etcd"))]
            Backend::Etcd => Err(NameServerError::Config("etcd support was not compiled in".into())),
        };
        telemetry.shutdown().await;
        served
    }
}

/// `rocketmq_nameserver_brokers` and `rocketmq_nameserver_topics`, read from the local route table when a
/// reader collects. They hold the registry weakly.
fn register_gauges<R: Registry>(meter: &Meter, registry: &Arc<R>) {
    let weak = Arc::downgrade(registry);
    meter
        .u64_observable_gauge("rocketmq_nameserver_brokers")
        .with_unit("1")
        .with_description("Live registered brokers (masters and slaves), by cluster")
        .with_callback(move |o: &dyn AsyncInstrument<u64>| {
            if let Some(r) = weak.upgrade() {
                for (cluster, n) in r.routes().table.read().brokers_by_cluster() {
                    o.observe(n as u64, &[KeyValue::new("cluster", cluster)]);
                }
            }
        })
        .build();
    let weak = Arc::downgrade(registry);
    meter
        .u64_observable_gauge("rocketmq_nameserver_topics")
        .with_unit("1")
        .with_description("Topics with a route")
        .with_callback(move |o: &dyn AsyncInstrument<u64>| {
            if let Some(r) = weak.upgrade() {
                o.observe(r.routes().table.read().topic_count() as u64, &[]);
            }
        })
        .build();
}

async fn serve_with<R: Registry>(
    registry: Arc<R>,
    listener: TcpListener,
    local_addr: SocketAddr,
    config: &Config,
    telemetry: &Telemetry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    register_gauges(telemetry.meter(), &registry);
    let rpc_metrics = RpcMetricsLayer::new(telemetry.meter(), RPC_SERVICES);
    let address = local_addr.to_string();
    let serve_err =
        |e: Box<dyn std::error::Error + Send + Sync>| NameServerError::Serve { address: address.clone(), source: e };

    let (reporter, health) = tonic_health::server::health_reporter();
    let mut degraded = registry.degraded();
    let status_of = |d: bool| if d { ServingStatus::NotServing } else { ServingStatus::Serving };
    reporter.set_service_status(HEALTH_SERVICE, status_of(*degraded.borrow_and_update())).await;
    let health_task = tokio::spawn(async move {
        while degraded.changed().await.is_ok() {
            let now_degraded = *degraded.borrow_and_update();
            reporter.set_service_status(HEALTH_SERVICE, status_of(now_degraded)).await;
        }
    });

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(comet_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // The descriptor set holds every comet.v1 service: advertise only those served here.
            .with_service_name("comet.v1.NameServer")
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection")
    };
    let reflection_v1 = reflection().build_v1().map_err(|e| serve_err(Box::new(e)))?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(|e| serve_err(Box::new(e)))?;

    let limits = RegistrationLimits { max_topics: config.nameserver.max_topics_per_broker };
    let service = NameServerServer::new(NameServerHandler::new(registry, limits))
        .max_decoding_message_size(config.nameserver.max_message_bytes)
        .max_encoding_message_size(config.nameserver.max_message_bytes);

    // Graceful shutdown waits for clients to close their connections; a client that never does must not keep
    // the process alive, so draining is bounded by `shutdown-grace-ms` once the signal fires.
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = signalled_tx.send(());
    };
    let grace = Duration::from_millis(config.nameserver.shutdown_grace_ms);
    let drain_deadline = async move {
        if signalled_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };

    tracing::info!(%local_addr, backend = ?config.registry.backend, "NameServer serving");
    let server = Server::builder()
        .layer(rpc_metrics)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown);
    let served = tokio::select! {
        served = server => served.map_err(|e| serve_err(Box::new(e))),
        () = drain_deadline => {
            tracing::warn!(?grace, "clients still connected after the shutdown grace period; stopping anyway");
            Ok(())
        }
    };
    health_task.abort();
    tracing::info!(%local_addr, "NameServer stopped");
    served
}
