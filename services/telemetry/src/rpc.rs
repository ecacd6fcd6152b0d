//! `rocketmq_rpc_latency`: a tower layer over a tonic server that times every call by service, API and gRPC
//! status. Labels come from fixed tables (the served services and their method names, the 17 gRPC codes), so a
//! client sending odd paths cannot add series, and recording builds no strings. The `rpc_service` label (OTel's
//! `rpc.service`: the full gRPC service name) tells apart
//! methods two services share a name for (a broker serves `SendMessage` in `comet.v1.Broker` and in
//! `apache.rocketmq.v2.MessagingService`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter};
use pin_project_lite::pin_project;

/// Name of the RPC latency histogram (RocketMQ's), in milliseconds.
pub const RPC_LATENCY: &str = "rocketmq_rpc_latency";

/// Bucket bounds of `rocketmq_rpc_latency`, in milliseconds: sub-millisecond sends up to 30 s long polls.
pub const LATENCY_BOUNDARIES_MS: &[f64] =
    &[0.5, 1.0, 3.0, 5.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10_000.0, 30_000.0];

/// One gRPC service a server times: its full name (`package.Service`, the `rpc_service` label) and its method names
/// (the `request_code` values).
#[derive(Debug, Clone, Copy)]
pub struct RpcService {
    /// Full service name, as in the request path (`comet.v1.Broker`).
    pub name: &'static str,
    /// Its gRPC method names (`comet_proto::methods::*_METHODS`).
    pub methods: &'static [&'static str],
}

/// The gRPC health and reflection services every server also serves.
const COMMON_SERVICES: &[RpcService] = &[
    RpcService { name: "grpc.health.v1.Health", methods: &["Check", "Watch"] },
    RpcService { name: "grpc.reflection.v1.ServerReflection", methods: &["ServerReflectionInfo"] },
    RpcService { name: "grpc.reflection.v1alpha.ServerReflection", methods: &["ServerReflectionInfo"] },
];

/// The `rpc_service` and `request_code` of a path that names no known service or method.
const OTHER: &str = "other";

const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

#[derive(Debug)]
struct Shared {
    latency: Histogram<f64>,
    services: &'static [RpcService],
}

/// What a call is labelled with: its service and method, both from the fixed tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Call {
    service: &'static str,
    method: &'static str,
}

impl Shared {
    /// The labels of a request path `/package.Service/Method`: a known method of a known service, the service
    /// with method `other`, or `other` for both.
    fn call(&self, path: &str) -> Call {
        let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
        self.call_of(service, method)
    }

    /// The labels of `method` of `service`, from the tables.
    fn call_of(&self, service: &str, method: &str) -> Call {
        match self.services.iter().chain(COMMON_SERVICES).find(|s| s.name == service) {
            Some(s) => {
                Call { service: s.name, method: s.methods.iter().find(|m| **m == method).copied().unwrap_or(OTHER) }
            }
            None => Call { service: OTHER, method: OTHER },
        }
    }

    fn record(&self, call: Call, code: &'static str, start: Instant) {
        self.record_on("grpc", call, code, start);
    }

    fn record_on(&self, protocol: &'static str, call: Call, code: &'static str, start: Instant) {
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        self.latency.record(
            ms,
            &[
                KeyValue::new("protocol_type", protocol),
                KeyValue::new("rpc_service", call.service),
                KeyValue::new("request_code", call.method),
                KeyValue::new("response_code", code),
            ],
        );
    }
}

/// Adds `rocketmq_rpc_latency` to a tonic server: `Server::builder().layer(RpcMetricsLayer::new(..))`.
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer {
    shared: Arc<Shared>,
}

impl RpcMetricsLayer {
    /// Times calls of the methods of `services` (and of gRPC health and reflection); a path naming another
    /// method is recorded as `request_code="other"`, another service also as `rpc_service="other"`.
    pub fn new(meter: &Meter, services: &'static [RpcService]) -> Self {
        let latency = meter
            .f64_histogram(RPC_LATENCY)
            .with_unit("ms")
            .with_description(
                "gRPC call latency in milliseconds, by service, API (request_code) and gRPC status (response_code)",
            )
            .with_boundaries(LATENCY_BOUNDARIES_MS.to_vec())
            .build();
        Self { shared: Arc::new(Shared { latency, services }) }
    }

    /// Times one call of `service`/`method` that came by another protocol than gRPC (`protocol_type` label,
    /// e.g. `remoting`), so both transports of a method land in the same series family. `code` is the gRPC
    /// status code the call ended with (0 = OK).
    pub fn record(&self, protocol: &'static str, service: &str, method: &str, code: i32, start: Instant) {
        let code = usize::try_from(code).ok().and_then(|n| GRPC_CODES.get(n).copied()).unwrap_or("UNKNOWN");
        self.shared.record_on(protocol, self.shared.call_of(service, method), code, start);
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner, shared: Arc::clone(&self.shared) }
    }
}

/// The service [`RpcMetricsLayer`] wraps around the server's routes.
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = self.shared.call(request.uri().path());
        ResponseFuture {
            inner: self.inner.call(request),
            call,
            start: Instant::now(),
            shared: Arc::clone(&self.shared),
            done: false,
        }
    }
}

pin_project! {
    /// Times the wrapped call; a call dropped before it answered (the client went away) counts as CANCELLED.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: Call,
        start: Instant,
        shared: Arc<Shared>,
        done: bool,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.done {
                this.shared.record(*this.call, "CANCELLED", *this.start);
            }
        }
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        // Errors travel as trailers-only responses carrying `grpc-status`; a success's status is in the
        // trailers, after the body, so no header means OK.
        let code = match &out {
            Ok(response) => response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
                .and_then(|n| GRPC_CODES.get(n).copied())
                .unwrap_or(GRPC_CODES[0]),
            Err(_) => "UNKNOWN",
        };
        *this.done = true;
        this.shared.record(*this.call, code, *this.start);
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MetricsConfig, Telemetry};
    use tower::{Layer, Service, ServiceExt};

    #[tokio::test]
    async fn calls_are_timed_by_method_and_status_and_odd_paths_are_other() {
        let config = MetricsConfig { listen: "127.0.0.1:0".into(), ..MetricsConfig::default() };
        let identity = crate::Identity { service: "t", instance: "i".into(), attributes: vec![] };
        let telemetry = Telemetry::start(&config, identity).await.unwrap();
        const SERVICES: &[RpcService] = &[
            RpcService { name: "comet.v1.Broker", methods: &["SendMessage"] },
            RpcService { name: "apache.rocketmq.v2.MessagingService", methods: &["SendMessage", "ReceiveMessage"] },
        ];
        let layer = RpcMetricsLayer::new(telemetry.meter(), SERVICES);
        let mut svc = layer.layer(tower::service_fn(|req: http::Request<()>| async move {
            let mut response = http::Response::new(());
            if req.uri().path().ends_with("Bad") {
                response.headers_mut().insert("grpc-status", http::HeaderValue::from_static("8"));
            }
            Ok::<_, std::convert::Infallible>(response)
        }));
        for path in [
            "/comet.v1.Broker/SendMessage",
            "/comet.v1.Broker/SendMessage",
            "/apache.rocketmq.v2.MessagingService/SendMessage",
            "/apache.rocketmq.v2.MessagingService/Nope",
            "/comet.v1.Broker/ReceiveMessage",
            "/x/Bad",
            "/grpc.health.v1.Health/Check",
        ] {
            let request = http::Request::builder().uri(path).body(()).unwrap();
            svc.ready().await.unwrap().call(request).await.unwrap();
        }
        let text = telemetry.render();
        // Labels render sorted by name; a series is found by all of its label pairs.
        let count = |labels: &[&str]| {
            text.lines()
                .find(|l| l.starts_with("rocketmq_rpc_latency_count{") && labels.iter().all(|p| l.contains(p)))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        let broker = "rpc_service=\"comet.v1.Broker\"";
        let v2 = "rpc_service=\"apache.rocketmq.v2.MessagingService\"";
        let (send, ok) = ("request_code=\"SendMessage\"", "response_code=\"OK\"");
        assert_eq!(count(&[broker, send, ok]).as_deref(), Some("2"), "{text}");
        assert_eq!(count(&[v2, send, ok]).as_deref(), Some("1"), "{text}");
        // A method of another service, and an unknown method of a known service, are `other` of that service.
        assert_eq!(count(&[v2, "request_code=\"other\""]).as_deref(), Some("1"), "{text}");
        assert_eq!(count(&[broker, "request_code=\"other\""]).as_deref(), Some("1"), "{text}");
        let odd = ["rpc_service=\"other\"", "request_code=\"other\"", "response_code=\"RESOURCE_EXHAUSTED\""];
        assert_eq!(count(&odd).as_deref(), Some("1"), "{text}");
        assert_eq!(count(&["rpc_service=\"grpc.health.v1.Health\"", "request_code=\"Check\""]).as_deref(), Some("1"));
        assert!(text.contains("rocketmq_rpc_latency_bucket{") && text.contains("le=\"0.5\""), "{text}");
        telemetry.shutdown().await;
    }
}

/// What instrumentation adds per request, single-threaded, measured in release mode:
/// `cargo test --release -p comet-telemetry overhead -- --ignored --nocapture` (docs/benchmarks.md, "Metrics").
#[cfg(test)]
mod overhead {
    use std::future::Future;
    use std::hint::black_box;
    use std::time::Instant;

    use opentelemetry::KeyValue;
    use tower::{Layer, Service};

    use super::{RpcMetricsLayer, RpcService};
    use crate::{Identity, MetricsConfig, Telemetry};

    fn per_op(n: u32, mut f: impl FnMut()) -> f64 {
        for _ in 0..n / 10 {
            f();
        }
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        start.elapsed().as_nanos() as f64 / f64::from(n)
    }

    #[tokio::test]
    #[ignore = "a measurement, not a check: run in release with --ignored --nocapture"]
    async fn overhead() {
        let config = MetricsConfig { listen: "127.0.0.1:0".into(), ..MetricsConfig::default() };
        let identity = Identity { service: "bench", instance: "i".into(), attributes: vec![] };
        let telemetry = Telemetry::start(&config, identity).await.unwrap();
        let meter = telemetry.meter();
        let n = 2_000_000;

        // BrokerMetrics::sent: two counter adds with a cached two-attribute set.
        let messages = meter.u64_counter("m_total").build();
        let bytes = meter.u64_counter("b_total").build();
        let attrs = [KeyValue::new("topic", "some-topic"), KeyValue::new("message_type", "normal")];
        let sent = per_op(n, || {
            messages.add(64, black_box(&attrs));
            bytes.add(65_536, black_box(&attrs));
        });

        // The RPC layer around a service that answers at once, against the bare service.
        let ready =
            |_: http::Request<()>| std::future::ready(Ok::<_, std::convert::Infallible>(http::Response::new(())));
        let mut bare = tower::service_fn(ready);
        const SERVICES: &[RpcService] =
            &[RpcService { name: "comet.v1.Broker", methods: &["SendMessage", "PullMessage"] }];
        let mut timed = RpcMetricsLayer::new(meter, SERVICES).layer(tower::service_fn(ready));
        let request = || http::Request::builder().uri("/comet.v1.Broker/SendMessage").body(()).unwrap();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let bare_ns = per_op(n, || {
            let mut f = std::pin::pin!(bare.call(request()));
            assert!(f.as_mut().poll(&mut cx).is_ready());
        });
        let timed_ns = per_op(n, || {
            let mut f = std::pin::pin!(timed.call(request()));
            assert!(f.as_mut().poll(&mut cx).is_ready());
        });
        println!(
            "per request: sent() counters {sent:.0} ns; RPC layer {:.0} ns (timed {timed_ns:.0} - bare {bare_ns:.0})",
            timed_ns - bare_ns
        );
        telemetry.shutdown().await;
    }
}
