//! `comet bench nameserver`: registers `--brokers` brokers hosting `--topics` topics, hammers QueryRoute with
//! `--concurrency` callers for `--duration-secs`, reports requests/s and p50/p99/p999; then times the
//! registration of one broker with `--big-broker-topics` topics (and unregisters it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use comet_nameserver_client::{ClientConfig, NameServerClient};
use comet_proto::comet::v1 as pb;
use comet_proto::comet::v1::name_server_client::NameServerClient as Grpc;
use tonic::transport::{Channel, Endpoint};

use super::latency::Samples;

/// Benchmark parameters.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Brokers to register (master of broker names bench-broker-000...).
    #[arg(long, default_value_t = 100)]
    brokers: usize,
    /// Topics to register, spread over the brokers.
    #[arg(long, default_value_t = 10_000)]
    topics: usize,
    /// Brokers hosting each topic (so each route has this many queue entries).
    #[arg(long, default_value_t = 2)]
    brokers_per_topic: usize,
    /// Concurrent QueryRoute callers.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the callers share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Measured duration of the QueryRoute phase.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Unmeasured warm-up before it.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Runtime threads of the load generator. It shares the machine with the server, so fewer threads than
    /// cores leaves the server room (1 = a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Topics of the single large broker whose registration is timed (0 = skip).
    #[arg(long, default_value_t = 100_000)]
    big_broker_topics: usize,
}

fn identity(name: &str) -> pb::BrokerIdentity {
    pb::BrokerIdentity {
        cluster_name: "bench".into(),
        broker_name: name.into(),
        broker_id: 0,
        address: format!("{name}.bench.invalid:8081"),
    }
}

fn header(name: &str) -> pb::RegisterBrokerHeader {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    pb::RegisterBrokerHeader {
        broker: Some(identity(name)),
        ha_address: String::new(),
        data_version: Some(pb::DataVersion { state_version: 0, timestamp_millis: now as u64, counter: 1 }),
        topic_count: 0,
        // The bench may run longer than the default expiry only if the operator asks for a long run.
        heartbeat_timeout_millis: 3_600_000,
    }
}

fn topic(name: String) -> pb::TopicConfig {
    pb::TopicConfig {
        name,
        read_queue_nums: 8,
        write_queue_nums: 8,
        perm: 6,
        message_type: pb::MessageType::Normal.into(),
    }
}

/// Runs the benchmark and prints the results.
pub async fn run(args: Args, namesrv: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(args.brokers > 0 && args.topics > 0 && args.concurrency > 0 && args.connections > 0, "zero sizes");
    let per = args.brokers_per_topic.clamp(1, args.brokers);
    let mut config = ClientConfig::new(namesrv.to_vec());
    config.register_timeout = Duration::from_secs(300);
    let client = NameServerClient::new(config)?;

    // Topic i lives on brokers i, i+1, ... (mod brokers).
    let mut hosted: Vec<Vec<pb::TopicConfig>> = vec![Vec::new(); args.brokers];
    for i in 0..args.topics {
        for k in 0..per {
            hosted[(i + k) % args.brokers].push(topic(format!("bench-topic-{i}")));
        }
    }
    let started = Instant::now();
    for (b, topics) in hosted.into_iter().enumerate() {
        let name = format!("bench-broker-{b:03}");
        client.register_broker(header(&name), topics).await.with_context(|| format!("registering {name}"))?;
    }
    println!(
        "setup: {} brokers, {} topics ({} brokers per topic) registered in {:.2?}",
        args.brokers,
        args.topics,
        per,
        started.elapsed()
    );

    // The load runs on its own runtime (own threads, own connections) so its size is controlled.
    let address = client.current_address().to_owned();
    let load = Load {
        address,
        topics: args.topics,
        concurrency: args.concurrency,
        connections: args.connections,
        warmup: Duration::from_secs(args.warmup_secs),
        duration: Duration::from_secs(args.duration_secs),
    };
    let threads = args.client_threads.max(1);
    std::thread::spawn(move || -> anyhow::Result<()> {
        let runtime = if threads == 1 {
            tokio::runtime::Builder::new_current_thread().enable_all().build()?
        } else {
            tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?
        };
        runtime.block_on(load.run())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("load thread panicked"))??;

    if args.big_broker_topics > 0 {
        let topics: Vec<pb::TopicConfig> =
            (0..args.big_broker_topics).map(|i| topic(format!("bench-big-{i}"))).collect();
        let started = Instant::now();
        client.register_broker(header("bench-big"), topics).await.context("registering the big broker")?;
        let took = started.elapsed();
        let probe = format!("bench-big-{}", args.big_broker_topics - 1);
        client.query_route(&probe).await.context("the big broker's last topic is not routed")?;
        println!("register: one broker with {} topics registered in {:.2?}", args.big_broker_topics, took);
        client.unregister_broker(identity("bench-big")).await?;
    }
    for b in 0..args.brokers {
        client.unregister_broker(identity(&format!("bench-broker-{b:03}"))).await?;
    }
    Ok(())
}

/// The QueryRoute load: `concurrency` callers over `connections` HTTP/2 connections.
struct Load {
    address: String,
    topics: usize,
    concurrency: usize,
    connections: usize,
    warmup: Duration,
    duration: Duration,
}

impl Load {
    async fn run(self) -> anyhow::Result<()> {
        let mut channels = Vec::with_capacity(self.connections);
        for _ in 0..self.connections {
            let endpoint = Endpoint::from_shared(format!("http://{}", self.address))?.tcp_nodelay(true);
            channels.push(endpoint.connect().await?);
        }
        self.phase(&channels, self.warmup, false).await?;
        self.phase(&channels, self.duration, true).await
    }

    async fn phase(&self, channels: &[Channel], duration: Duration, report: bool) -> anyhow::Result<()> {
        if duration.is_zero() {
            return Ok(());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::with_capacity(self.concurrency);
        for caller in 0..self.concurrency {
            let mut grpc = Grpc::new(channels[caller % channels.len()].clone());
            let stop = Arc::clone(&stop);
            let topics = self.topics as u64;
            tasks.push(tokio::spawn(async move {
                let mut samples = Samples::with_capacity(100_000);
                let mut errors = 0u64;
                // xorshift: a cheap, different topic sequence per caller.
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (caller as u64 + 1);
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let request = pb::QueryRouteRequest { topic: format!("bench-topic-{}", x % topics) };
                    let t0 = Instant::now();
                    match grpc.query_route(request).await {
                        Ok(_) => samples.record(t0.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                (samples, errors)
            }));
        }
        let started = Instant::now();
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = Samples::default();
        let mut errors = 0;
        for task in tasks {
            let (samples, e) = task.await?;
            all.merge(samples);
            errors += e;
        }
        let elapsed = started.elapsed();
        if report {
            all.finish();
            println!(
                "query-route: {} calls in {:.2?} = {:.0} req/s with {} callers over {} connections; \
                 p50 {:.2?}, p99 {:.2?}, p999 {:.2?}; errors {}",
                all.len(),
                elapsed,
                all.len() as f64 / elapsed.as_secs_f64(),
                self.concurrency,
                channels.len(),
                all.percentile(50.0),
                all.percentile(99.0),
                all.percentile(99.9),
                errors
            );
            anyhow::ensure!(errors == 0, "{errors} QueryRoute calls failed");
        }
        Ok(())
    }
}
