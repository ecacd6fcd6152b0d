//! `comet bench produce|consume|e2e`: the messaging workloads of docs/benchmarks.md, against Comet or (as the
//! peer baseline) NATS JetStream.
//!
//! - produce: `--concurrency` senders, each with one request of `--batch` messages in flight, for `--count`
//!   messages or `--duration-secs`, optionally paced to `--rate` messages/s; latency = request sent to
//!   acknowledgement.
//! - consume: reads the stored backlog (every queue from its oldest message) as fast as it goes; with
//!   `--api v2`, `--receivers` RocketMQ 5 receive + ack loops of one new consumer group (bench/rocketmq_v2.rs).
//! - e2e: a reader follows the topic from its end while senders produce at `--rate`; latency = body stamped
//!   just before the send to body received (same process, one monotonic clock).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use super::latency::Samples;
use super::report::{Counters, Progress, Report, Shape};
use super::systems::{Connection, From, Sink, Source, Tally};

/// How long a run sends.
#[derive(Debug, Clone, clap::Args)]
pub struct Load {
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Messages per request (1 = unbatched).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Requests in flight (concurrent senders).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Messages to send in the measured run (default: run for --duration-secs).
    #[arg(long)]
    count: Option<u64>,
    /// Length of the measured run when no --count is given.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Unmeasured warm-up before it (connections, routes, page cache).
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Pace the senders to this many messages per second (0 = as fast as they go).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Delay every message by this many ms (Comet only): produce then measures delayed messages scheduled per
    /// second; e2e measures delivery lateness (receive time - due time).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
}

/// Output options.
#[derive(Debug, Clone, clap::Args)]
pub struct Output {
    /// One JSON object with the results instead of text.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

/// Arguments of `comet bench produce`.
#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(flatten)]
    load: Load,
    /// Send every message as a transaction: a half message, then its commit (one message per request).
    #[arg(long)]
    transactional: bool,
    #[command(flatten)]
    out: Output,
}

/// Arguments of `comet bench consume`.
#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    conn: Connection,
    /// Messages to read (default: the whole backlog stored when the run starts).
    #[arg(long)]
    count: Option<u64>,
    /// Messages per pull request (`--api v2`: per ReceiveMessage; the RocketMQ proxy's maximum is 32).
    #[arg(long, default_value_t = 1024)]
    pull_batch: u32,
    /// `--api v2`: concurrent receive + ack loops.
    #[arg(long, default_value_t = 8)]
    receivers: usize,
    /// `--api v2`: the consumer group (default: a new one per run, so the whole backlog is unread).
    #[arg(long)]
    group: Option<String>,
    /// Give up when no message arrived for this long.
    #[arg(long, default_value_t = 10)]
    idle_timeout_secs: u64,
    #[command(flatten)]
    out: Output,
}

/// Arguments of `comet bench e2e`.
#[derive(Debug, clap::Args)]
pub struct E2eArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(flatten)]
    load: Load,
    /// Messages per pull request of the reader.
    #[arg(long, default_value_t = 256)]
    pull_batch: u32,
    #[command(flatten)]
    out: Output,
}

impl Load {
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.size > 0 && self.batch > 0 && self.concurrency > 0,
            "size, batch and concurrency must be > 0"
        );
        anyhow::ensure!(self.count != Some(0) && (self.count.is_some() || self.duration_secs > 0), "nothing to send");
        Ok(())
    }

    fn shape(&self, conn: &Connection) -> Shape {
        Shape {
            system: conn.name(),
            size: self.size,
            batch: self.batch,
            concurrency: self.concurrency,
            rate: self.rate,
        }
    }
}

/// Hands out the batches of one phase to the senders: how many messages each gets, and when it may send them
/// when the run is paced.
struct Plan {
    batch: u64,
    total: Option<u64>,
    until: Option<Instant>,
    rate: u64,
    started: Instant,
    next: AtomicU64,
}

impl Plan {
    fn new(load: &Load, total: Option<u64>, duration: Duration) -> Self {
        let started = Instant::now();
        Self {
            batch: load.batch as u64,
            total,
            until: if total.is_none() { Some(started + duration) } else { None },
            rate: load.rate,
            started,
            next: AtomicU64::new(0),
        }
    }

    /// The next batch: its size and the instant it is due, or `None` when the phase is over.
    fn claim(&self) -> Option<(usize, Option<Instant>)> {
        let first = self.next.fetch_add(1, Ordering::Relaxed) * self.batch;
        let n = match self.total {
            Some(total) if first >= total => return None,
            Some(total) => (total - first).min(self.batch),
            None => self.batch,
        };
        let due = (self.rate > 0).then(|| self.started + Duration::from_secs_f64(first as f64 / self.rate as f64));
        // A paced batch due after the end belongs to no run; an unpaced one is due now.
        if self.until.is_some_and(|u| due.unwrap_or_else(Instant::now) >= u) {
            return None;
        }
        Some((n as usize, due))
    }
}

/// Stamps bodies with the send instant (nanoseconds since `epoch`) so a reader can compute end-to-end latency.
#[derive(Clone)]
struct Bodies {
    template: Bytes,
    stamp: Option<Instant>,
}

impl Bodies {
    fn make(&self, n: usize) -> Vec<Bytes> {
        match self.stamp {
            None => vec![self.template.clone(); n],
            Some(epoch) => (0..n)
                .map(|_| {
                    let mut b = BytesMut::with_capacity(self.template.len());
                    b.put_u64(epoch.elapsed().as_nanos() as u64);
                    b.put_slice(&self.template[8..]);
                    b.freeze()
                })
                .collect(),
        }
    }
}

/// Runs one phase of `concurrency` senders; returns the ack latencies and how long it took.
async fn send_phase(
    sink: &Sink,
    load: &Load,
    bodies: &Bodies,
    plan: Arc<Plan>,
    counters: &Arc<Counters>,
) -> (Samples, Duration) {
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(load.concurrency);
    for _ in 0..load.concurrency {
        let (sink, bodies, plan, counters) = (sink.clone(), bodies.clone(), Arc::clone(&plan), Arc::clone(counters));
        let (size, delay_ms) = (load.size as u64, load.delay_ms);
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::with_capacity(1 << 16);
            while let Some((n, due)) = plan.claim() {
                if let Some(due) = due {
                    tokio::time::sleep_until(due.into()).await;
                }
                let batch = bodies.make(n);
                let t0 = Instant::now();
                let delay = (delay_ms > 0).then(|| Duration::from_millis(delay_ms));
                match sink.send(batch, delay).await {
                    Ok(()) => {
                        samples.record(t0.elapsed());
                        counters.add(n as u64, n as u64 * size);
                    }
                    Err(e) => {
                        if counters.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("first send error: {e:#}");
                        }
                        // A failing system should not be hammered in a tight loop.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            samples
        }));
    }
    let mut all = Samples::default();
    for task in tasks {
        if let Ok(samples) = task.await {
            all.merge(samples);
        }
    }
    (all, started.elapsed())
}

/// `comet bench produce`.
pub async fn produce(args: ProduceArgs, namesrv: &[String]) -> anyhow::Result<()> {
    args.load.check()?;
    anyhow::ensure!(!args.transactional || args.load.batch == 1, "--transactional sends one message per request");
    let mut sink = Sink::connect(&args.conn, namesrv).await?;
    if args.transactional {
        sink = sink.transactional()?;
    }
    let bodies = Bodies { template: Bytes::from(vec![b'c'; args.load.size]), stamp: None };
    let duration = Duration::from_secs(args.load.duration_secs);
    if args.load.warmup_secs > 0 {
        let plan = Arc::new(Plan::new(&args.load, None, Duration::from_secs(args.load.warmup_secs)));
        send_phase(&sink, &args.load, &bodies, plan, &Arc::new(Counters::default())).await;
    }
    let counters = Arc::new(Counters::default());
    let progress = Progress::start("produce", Arc::clone(&counters), args.out.quiet);
    let plan = Arc::new(Plan::new(&args.load, args.load.count, duration));
    let (mut samples, elapsed) = send_phase(&sink, &args.load, &bodies, plan, &counters).await;
    drop(progress);
    let report = Report::new(
        &args.load.shape(&args.conn),
        "produce",
        counters.messages.load(Ordering::Relaxed),
        counters.bytes.load(Ordering::Relaxed),
        elapsed,
        "ack",
        &mut samples,
        counters.errors.load(Ordering::Relaxed),
    );
    sink.close().await;
    report.print(args.out.json)?;
    anyhow::ensure!(report.errors == 0, "{} send requests failed", report.errors);
    Ok(())
}

/// Counts what a reader gets; in e2e runs also the latency from the body's stamp.
struct Reader {
    counters: Arc<Counters>,
    samples: Samples,
    /// e2e: the clock the stamps count from, the stamp (ns) before which messages are warm-up, and the delay
    /// (ns) each message was sent with (latency counts from the due time: stamp + delay).
    e2e: Option<(Instant, Arc<AtomicU64>, u64)>,
    measured: u64,
}

impl Tally for Reader {
    fn on_message(&mut self, body: &Bytes) {
        match &self.e2e {
            None => self.counters.add(1, body.len() as u64),
            Some((epoch, measure_from, delay_ns)) => {
                let Some(stamp) = body.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes)
                else {
                    return;
                };
                let now = epoch.elapsed().as_nanos() as u64;
                if stamp >= measure_from.load(Ordering::Relaxed) {
                    self.samples.record(Duration::from_nanos(now.saturating_sub(stamp.saturating_add(*delay_ns))));
                    self.measured += 1;
                }
                self.counters.add(1, body.len() as u64);
            }
        }
    }

    fn on_error(&mut self, error: &str) {
        if self.counters.errors.fetch_add(1, Ordering::Relaxed) == 0 {
            eprintln!("first read error: {error}");
        }
    }
}

/// `comet bench consume`.
pub async fn consume(args: ConsumeArgs, namesrv: &[String]) -> anyhow::Result<()> {
    let group = args.group.clone().unwrap_or_else(|| {
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        format!("comet-bench-v2-{}-{ms}", std::process::id())
    });
    let (source, backlog) =
        Source::connect_as(&args.conn, namesrv, From::Oldest, args.pull_batch, Some((&group, args.receivers))).await?;
    let v2_session = source.v2_session();
    let target = args.count.unwrap_or(backlog);
    anyhow::ensure!(target > 0, "nothing to consume: the backlog is empty (run `comet bench produce` first)");
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Progress::start("consume", Arc::clone(&counters), args.out.quiet);
    let started = Instant::now();
    let readers = source.spawn(Arc::clone(&stop), || Reader {
        counters: Arc::clone(&counters),
        samples: Samples::default(),
        e2e: None,
        measured: 0,
    });
    let idle = Duration::from_secs(args.idle_timeout_secs.max(1));
    let (mut last, mut last_change) = (0, Instant::now());
    let elapsed = loop {
        let got = counters.messages.load(Ordering::Relaxed);
        if got >= target {
            break started.elapsed();
        }
        if got != last {
            (last, last_change) = (got, Instant::now());
        } else if last_change.elapsed() > idle {
            break last_change - started;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    };
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let _ = reader.await;
    }
    if let Some(session) = v2_session {
        session.close().await;
    }
    drop(progress);
    let got = counters.messages.load(Ordering::Relaxed);
    let concurrency = if args.conn.is_v2() { args.receivers } else { 0 };
    let shape = Shape { system: args.conn.name(), size: 0, batch: args.pull_batch as usize, concurrency, rate: 0 };
    let mut report = Report::new(
        &shape,
        "consume",
        got.min(target),
        counters.bytes.load(Ordering::Relaxed),
        elapsed,
        "",
        &mut Samples::default(),
        counters.errors.load(Ordering::Relaxed),
    );
    report.size = counters.bytes.load(Ordering::Relaxed).checked_div(got).unwrap_or(0) as usize;
    report.lost = target.saturating_sub(got);
    report.print(args.out.json)?;
    anyhow::ensure!(got >= target, "read {got} of {target} messages before going idle for {idle:?}");
    Ok(())
}

/// `comet bench e2e`.
pub async fn e2e(args: E2eArgs, namesrv: &[String]) -> anyhow::Result<()> {
    args.load.check()?;
    anyhow::ensure!(args.load.size >= 8, "e2e bodies carry an 8-byte send stamp: --size must be at least 8");
    anyhow::ensure!(args.load.rate > 0, "e2e measures latency at a fixed load: give --rate (messages/s)");
    let sink = Sink::connect(&args.conn, namesrv).await?;
    let (source, _) = Source::connect(&args.conn, namesrv, From::New, args.pull_batch).await?;
    let epoch = Instant::now();
    // Warm-up messages carry stamps below this and are received but not measured.
    let measure_from = Arc::new(AtomicU64::new(u64::MAX));
    let received = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let readers = source.spawn(Arc::clone(&stop), || Reader {
        counters: Arc::clone(&received),
        samples: Samples::with_capacity(1 << 16),
        e2e: Some((epoch, Arc::clone(&measure_from), args.load.delay_ms.saturating_mul(1_000_000))),
        measured: 0,
    });
    let bodies = Bodies { template: Bytes::from(vec![b'e'; args.load.size]), stamp: Some(epoch) };
    let warmup = Arc::new(Counters::default());
    if args.load.warmup_secs > 0 {
        let plan = Arc::new(Plan::new(&args.load, None, Duration::from_secs(args.load.warmup_secs)));
        send_phase(&sink, &args.load, &bodies, plan, &warmup).await;
    }
    let sent = Arc::new(Counters::default());
    let progress = Progress::start("e2e sent", Arc::clone(&sent), args.out.quiet);
    measure_from.store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
    let plan = Arc::new(Plan::new(&args.load, args.load.count, Duration::from_secs(args.load.duration_secs)));
    let (_, elapsed) = send_phase(&sink, &args.load, &bodies, plan, &sent).await;
    drop(progress);
    // Let the reader catch up with everything acknowledged (warm-up included: with --delay-ms, warm-up messages
    // are still arriving when the measured phase starts), then stop it.
    let expected = warmup.messages.load(Ordering::Relaxed) + sent.messages.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10) + Duration::from_millis(args.load.delay_ms);
    while received.messages.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut samples = Samples::default();
    let mut measured = 0;
    for reader in readers {
        if let Ok(reader) = reader.await {
            measured += reader.measured;
            samples.merge(reader.samples);
        }
    }
    let mut report = Report::new(
        &args.load.shape(&args.conn),
        "e2e",
        sent.messages.load(Ordering::Relaxed),
        sent.bytes.load(Ordering::Relaxed),
        elapsed,
        "e2e",
        &mut samples,
        sent.errors.load(Ordering::Relaxed) + received.errors.load(Ordering::Relaxed),
    );
    report.lost = report.messages.saturating_sub(measured);
    report.print(args.out.json)?;
    anyhow::ensure!(report.errors == 0 && report.lost == 0, "{} errors, {} messages lost", report.errors, report.lost);
    Ok(())
}
