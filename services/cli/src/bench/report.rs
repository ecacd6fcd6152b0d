//! What a messaging benchmark run ends with (throughput, latency percentiles, as text or one JSON line) and the
//! once-a-second progress line it shows while running.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::latency::Samples;

/// Counters the workers bump and the progress printer reads.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages done (acknowledged, consumed or received, depending on the run).
    pub messages: AtomicU64,
    /// Body bytes of those messages.
    pub bytes: AtomicU64,
    /// Failed operations.
    pub errors: AtomicU64,
}

impl Counters {
    /// Counts `n` messages of `bytes` body bytes in all.
    pub fn add(&self, n: u64, bytes: u64) {
        self.messages.fetch_add(n, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Prints `label: rate` to stderr once a second until dropped, so a long run shows it is alive and how fast it
/// goes.
pub struct Progress {
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Starts printing the rate of `counters` (nothing when `quiet`).
    pub fn start(label: &'static str, counters: Arc<Counters>, quiet: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        if quiet {
            return Self { stop, task: None };
        }
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut last = 0u64;
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                let now = counters.messages.load(Ordering::Relaxed);
                let errors = counters.errors.load(Ordering::Relaxed);
                eprintln!(
                    "[{:>4.0}s] {label}: {:>10} msg/s, {:>12} in all{}",
                    started.elapsed().as_secs_f64(),
                    now - last,
                    now,
                    if errors > 0 { format!(", {errors} errors") } else { String::new() }
                );
                last = now;
            }
        });
        Self { stop, task: Some(task) }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The result of one run.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    /// `comet` or `nats`.
    pub system: String,
    /// `produce`, `consume` or `e2e`.
    pub mode: String,
    /// Body size in bytes.
    pub size: usize,
    /// Messages per request.
    pub batch: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// Target rate in messages per second (0 = as fast as possible).
    pub rate: u64,
    /// Messages done in the measured window.
    pub messages: u64,
    /// Length of the measured window.
    pub seconds: f64,
    /// Messages per second.
    pub msgs_per_sec: f64,
    /// Body MiB per second.
    pub mib_per_sec: f64,
    /// What the latency measures: `ack` (request sent to acknowledgement), `e2e` (sent to received), or none.
    pub latency: &'static str,
    /// Latency percentiles in microseconds (0 when no latency is measured).
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest latency seen.
    pub max_us: u64,
    /// Failed operations.
    pub errors: u64,
    /// Messages sent but never received (e2e only).
    pub lost: u64,
}

impl Report {
    /// Fills throughput and percentiles from a finished run.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shape: &Shape,
        mode: &str,
        messages: u64,
        bytes: u64,
        elapsed: Duration,
        latency: &'static str,
        samples: &mut Samples,
        errors: u64,
    ) -> Self {
        samples.finish();
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let us = |p: f64| samples.percentile(p).as_micros() as u64;
        Self {
            system: shape.system.to_owned(),
            mode: mode.to_owned(),
            size: shape.size,
            batch: shape.batch,
            concurrency: shape.concurrency,
            rate: shape.rate,
            messages,
            seconds,
            msgs_per_sec: messages as f64 / seconds,
            mib_per_sec: bytes as f64 / seconds / (1024.0 * 1024.0),
            latency,
            p50_us: us(50.0),
            p99_us: us(99.0),
            p999_us: us(99.9),
            max_us: us(100.0),
            errors,
            lost: 0,
        }
    }

    /// Prints the report as one human line or one JSON object.
    pub fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string(self)?);
            return Ok(());
        }
        let rate = if self.rate > 0 { format!(", rate {}/s", self.rate) } else { String::new() };
        println!(
            "{} {} {} B x batch {} x {} in flight{rate}: {} msgs in {:.2} s = {:.0} msg/s, {:.1} MiB/s",
            self.system,
            self.mode,
            self.size,
            self.batch,
            self.concurrency,
            self.messages,
            self.seconds,
            self.msgs_per_sec,
            self.mib_per_sec
        );
        if !self.latency.is_empty() {
            println!(
                "  {} latency: p50 {} us, p99 {} us, p999 {} us, max {} us",
                self.latency, self.p50_us, self.p99_us, self.p999_us, self.max_us
            );
        }
        if self.errors > 0 || self.lost > 0 {
            println!("  errors {}, lost {}", self.errors, self.lost);
        }
        Ok(())
    }
}

/// The workload's shape, shared by every report of a run.
#[derive(Debug, Clone)]
pub struct Shape {
    /// `comet` or `nats`.
    pub system: &'static str,
    /// Body size.
    pub size: usize,
    /// Messages per request.
    pub batch: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// Target rate (0 = unlimited).
    pub rate: u64,
}
