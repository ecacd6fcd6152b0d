//! The remoting channel beside a tonic unary echo service and raw TCP, measured in the same run on loopback.
//!
//! `make bench-remoting` (= `cargo bench -p comet-remoting --bench echo`). Servers run on one runtime with one
//! worker thread, the load generator on another with one worker thread: on a 2-vCPU machine that is one core
//! each, like two processes. Every system gets the same cases:
//! - RPC: 64 B and 4 KiB bodies echoed back, 1 and 64 requests in flight on one connection (one HTTP/2
//!   connection for tonic; one TCP stream for raw TCP, where "in flight" is a window of pipelined messages).
//! - Bulk: 1 MiB request bodies, empty responses (raw TCP: a one-way stream of 1 MiB writes).
//!
//! Environment: `BENCH_SECS` (measured seconds per round, default 0.5), `BENCH_ROUNDS` (interleaved rounds per
//! case, default 9), `BENCH_FILTER` (substring of case names). The machine's load average is printed before and
//! after: on a shared machine, read the numbers with it.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bytes::{Buf, BufMut, Bytes};
use comet_remoting::{Client, ClientConfig, Command, Request, Router, Server, ServerConfig, code};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Service, StdError, http};
use tonic::server::{NamedService, UnaryService};

const ECHO: i32 = 1;
const SINK: i32 = 2;
const MIB: usize = 1024 * 1024;
const WARMUP: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- tonic: raw-bytes codec and echo service

#[derive(Clone, Copy, Default)]
struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;
    fn encoder(&mut self) -> Self {
        *self
    }
    fn decoder(&mut self) -> Self {
        *self
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// `/bench.Echo/Echo` answers the request body; `/bench.Echo/Sink` answers an empty body.
#[derive(Clone)]
struct EchoService;

impl NamedService for EchoService {
    const NAME: &'static str = "bench.Echo";
}

struct EchoMethod {
    sink: bool,
}

impl UnaryService<Bytes> for EchoMethod {
    type Response = Bytes;
    type Future = std::future::Ready<Result<tonic::Response<Bytes>, tonic::Status>>;
    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let body = if self.sink { Bytes::new() } else { request.into_inner() };
        std::future::ready(Ok(tonic::Response::new(body)))
    }
}

impl<B> Service<http::Request<B>> for EchoService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let sink = req.uri().path() == "/bench.Echo/Sink";
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(BytesCodec).max_decoding_message_size(16 * MIB);
            Ok(grpc.unary(EchoMethod { sink }, req).await)
        })
    }
}

// ---------------------------------------------------------------- measurement

#[derive(Default)]
struct Stats {
    requests: u64,
    bytes: u64,
    secs: f64,
    latencies_ns: Vec<u64>,
}

impl Stats {
    fn pct(&self, q: f64) -> f64 {
        if self.latencies_ns.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_ns.len() - 1) as f64 * q).round() as usize;
        self.latencies_ns[i] as f64 / 1000.0
    }
    fn rate(&self) -> f64 {
        self.requests as f64 / self.secs
    }
    fn mib_s(&self) -> f64 {
        self.bytes as f64 / self.secs / MIB as f64
    }
}

/// Runs `workers` loops of `call` for WARMUP + `secs`; counts and times only calls started after the warm-up.
async fn drive<F, Fut>(workers: usize, secs: f64, bytes_per_call: usize, call: F) -> Result<Stats>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let end = measure_from + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                call().await?;
                if t >= measure_from {
                    lat.push(t.elapsed().as_nanos() as u64);
                }
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut stats = Stats::default();
    for t in tasks {
        stats.latencies_ns.extend(t.await??);
    }
    stats.secs = (Instant::now().min(end + Duration::from_secs(60)) - measure_from).as_secs_f64().max(secs);
    stats.requests = stats.latencies_ns.len() as u64;
    stats.bytes = stats.requests * bytes_per_call as u64;
    stats.latencies_ns.sort_unstable();
    Ok(stats)
}

// ---------------------------------------------------------------- servers

struct Addrs {
    remoting: String,
    tonic: String,
    raw_echo: String,
    raw_sink: String,
}

async fn start_servers() -> Result<Addrs> {
    let echo = |req: Request| async move { Command::response(code::SUCCESS, None).with_body(req.command.body) };
    let sink = |_req: Request| async move { Command::response(code::SUCCESS, None) };
    let router = Router::new().route(ECHO, 4096, echo).route(SINK, 4096, sink);
    let remoting =
        Server::bind(ServerConfig { listen: "127.0.0.1:0".to_owned(), ..ServerConfig::default() }, router).await?;

    let tonic_listener = TcpListener::bind("127.0.0.1:0").await?;
    let tonic_addr = tonic_listener.local_addr()?.to_string();
    let incoming = tonic::transport::server::TcpIncoming::from(tonic_listener).with_nodelay(Some(true));
    tokio::spawn(tonic::transport::Server::builder().add_service(EchoService).serve_with_incoming(incoming));

    // Raw echo: every byte comes back. Raw sink: reads to EOF, then reports how many bytes it got.
    let raw_echo = TcpListener::bind("127.0.0.1:0").await?;
    let raw_echo_addr = raw_echo.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((sock, _)) = raw_echo.accept().await {
            let _ = sock.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = sock.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let raw_sink = TcpListener::bind("127.0.0.1:0").await?;
    let raw_sink_addr = raw_sink.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = raw_sink.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; MIB];
                let mut total: u64 = 0;
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = sock.write_all(&total.to_be_bytes()).await;
            });
        }
    });
    Ok(Addrs {
        remoting: remoting.local_addr().to_string(),
        tonic: tonic_addr,
        raw_echo: raw_echo_addr,
        raw_sink: raw_sink_addr,
    })
}

// ---------------------------------------------------------------- clients

async fn remoting_case(addr: &str, code: i32, size: usize, inflight: usize, secs: f64) -> Result<Stats> {
    let client = Client::new(ClientConfig::default());
    let conn = client.connection(addr, TIMEOUT).await?;
    let body = Bytes::from(vec![0xabu8; size]);
    drive(inflight, secs, size, move || {
        let (conn, body) = (conn.clone(), body.clone());
        async move {
            let r = conn.invoke(Command::request(code, body), TIMEOUT).await?;
            anyhow::ensure!(r.code == code::SUCCESS, "response code {}", r.code);
            Ok(())
        }
    })
    .await
}

async fn tonic_case(addr: &str, path: &'static str, size: usize, inflight: usize, secs: f64) -> Result<Stats> {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect().await?;
    let grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(16 * MIB);
    let body = Bytes::from(vec![0xabu8; size]);
    drive(inflight, secs, size, move || {
        let (mut grpc, body) = (grpc.clone(), body.clone());
        async move {
            grpc.ready().await.context("tonic not ready")?;
            let path = http::uri::PathAndQuery::from_static(path);
            grpc.unary(tonic::Request::new(body), path, BytesCodec).await?;
            Ok(())
        }
    })
    .await
}

/// Raw TCP echo with a window of `inflight` pipelined messages: a writer task writes `size`-byte messages while
/// the window allows, the reader reads them back in order and times each.
async fn raw_rpc_case(addr: &str, size: usize, inflight: usize, secs: f64) -> Result<Stats> {
    let sock = TcpStream::connect(addr).await?;
    sock.set_nodelay(true)?;
    let (mut r, mut w) = sock.into_split();
    let window = Arc::new(Semaphore::new(inflight));
    // Send times, in order; the channel holds at most `inflight` of them (the window bounds it).
    let (sent_tx, mut sent) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let end = measure_from + Duration::from_secs_f64(secs);
    let writer = {
        let window = window.clone();
        let msg = vec![0xabu8; size];
        tokio::spawn(async move {
            while Instant::now() < end {
                window.acquire().await?.forget();
                sent_tx.send(Instant::now())?;
                w.write_all(&msg).await?;
            }
            Ok::<_, anyhow::Error>(w)
        })
    };
    let mut buf = vec![0u8; size];
    let mut stats = Stats::default();
    while let Some(t) = sent.recv().await {
        r.read_exact(&mut buf).await?;
        window.add_permits(1);
        if t >= measure_from {
            stats.latencies_ns.push(t.elapsed().as_nanos() as u64);
        }
    }
    let _w = writer.await??;
    stats.secs = secs;
    stats.requests = stats.latencies_ns.len() as u64;
    stats.bytes = stats.requests * size as u64;
    stats.latencies_ns.sort_unstable();
    Ok(stats)
}

/// Raw TCP bulk: one stream of 1 MiB writes for `secs`; the sink confirms the byte count after EOF.
async fn raw_bulk_case(addr: &str, secs: f64) -> Result<Stats> {
    let mut sock = TcpStream::connect(addr).await?;
    let chunk = vec![0xabu8; MIB];
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let end = measure_from + Duration::from_secs_f64(secs);
    let mut during: u64 = 0;
    while Instant::now() < end {
        sock.write_all(&chunk).await?;
        if Instant::now() > measure_from {
            during += 1;
        }
    }
    sock.shutdown().await?;
    let mut total = [0u8; 8];
    sock.read_exact(&mut total).await?;
    let done = Instant::now();
    anyhow::ensure!(u64::from_be_bytes(total) > 0, "sink got nothing");
    let mut stats = Stats { requests: during, secs: (done - measure_from).as_secs_f64(), ..Stats::default() };
    stats.bytes = during * MIB as u64;
    Ok(stats)
}

// ---------------------------------------------------------------- report

/// Several rounds of one system on one case: the median rate is reported (the machine is shared, so single
/// runs swing), latencies are pooled over the rounds.
#[derive(Default)]
struct Rounds {
    rates: Vec<f64>,
    mib_s: Vec<f64>,
    pooled: Stats,
}

impl Rounds {
    fn add(&mut self, s: Stats) {
        self.rates.push(s.rate());
        self.mib_s.push(s.mib_s());
        self.pooled.latencies_ns.extend(s.latencies_ns);
    }
    fn median(v: &[f64]) -> f64 {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }
    fn rate(&self) -> f64 {
        Self::median(&self.rates)
    }
    fn mib(&self) -> f64 {
        Self::median(&self.mib_s)
    }
    fn row(&mut self, case: &str, system: &str) {
        self.pooled.latencies_ns.sort_unstable();
        let (lo, hi) = self.rates.iter().fold((f64::MAX, 0.0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        let lat =
            |q| if self.pooled.latencies_ns.is_empty() { "-".to_owned() } else { format!("{:.0}", self.pooled.pct(q)) };
        println!(
            "| {case} | {system} | {:.0} ({:.0}–{:.0}) | {:.0} | {} | {} |",
            self.rate(),
            lo,
            hi,
            self.mib(),
            lat(0.50),
            lat(0.99)
        );
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() -> Result<()> {
    let secs: f64 = std::env::var("BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(0.5);
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(9);
    let filter = std::env::var("BENCH_FILTER").unwrap_or_default();
    let server_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let addrs = server_rt.block_on(start_servers())?;
    println!(
        "remoting bench: {rounds} interleaved rounds of {secs} s per system and case (after {WARMUP:?} warm-up each); \
         servers on 1 worker thread, load generator on 1; rates are medians (min–max), latencies pooled"
    );
    println!("load average before: {}", loadavg());
    println!();
    println!("| case | system | req/s median (min–max) | MiB/s | p50 µs | p99 µs |");
    println!("|---|---|---|---|---|---|");
    client_rt.block_on(async {
        let mut ratios = Vec::new();
        for (size, label) in [(64usize, "64 B"), (4096, "4 KiB")] {
            for inflight in [1usize, 64] {
                let case = format!("echo {label}, {inflight} in flight");
                if !case.contains(&filter) {
                    continue;
                }
                let (mut r, mut t, mut raw) = (Rounds::default(), Rounds::default(), Rounds::default());
                for _ in 0..rounds {
                    r.add(remoting_case(&addrs.remoting, ECHO, size, inflight, secs).await?);
                    t.add(tonic_case(&addrs.tonic, "/bench.Echo/Echo", size, inflight, secs).await?);
                    raw.add(raw_rpc_case(&addrs.raw_echo, size, inflight, secs).await?);
                }
                r.row(&case, "comet-remoting");
                t.row(&case, "tonic unary");
                raw.row(&case, "raw TCP");
                ratios.push(format!(
                    "{case}: remoting/tonic = {:.2}x, remoting/raw TCP = {:.2}x",
                    r.rate() / t.rate(),
                    r.rate() / raw.rate()
                ));
            }
        }
        for inflight in [1usize, 4] {
            let case = format!("bulk 1 MiB, {inflight} in flight");
            if !case.contains(&filter) {
                continue;
            }
            let (mut r, mut t, mut raw) = (Rounds::default(), Rounds::default(), Rounds::default());
            for _ in 0..rounds {
                r.add(remoting_case(&addrs.remoting, SINK, MIB, inflight, secs).await?);
                t.add(tonic_case(&addrs.tonic, "/bench.Echo/Sink", MIB, inflight, secs).await?);
                raw.add(raw_bulk_case(&addrs.raw_sink, secs).await?);
            }
            r.row(&case, "comet-remoting");
            t.row(&case, "tonic unary");
            raw.row("bulk 1 MiB, one stream", "raw TCP");
            ratios.push(format!(
                "{case}: remoting/raw TCP = {:.0} % of bandwidth, remoting/tonic = {:.2}x",
                100.0 * r.mib() / raw.mib(),
                r.mib() / t.mib()
            ));
        }
        println!();
        for r in ratios {
            println!("{r}");
        }
        println!("load average after: {}", loadavg());
        Ok::<_, anyhow::Error>(())
    })?;
    drop(server_rt);
    Ok(())
}
