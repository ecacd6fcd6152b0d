//! `comet-store`: inspect, verify and exercise a store directory offline (the broker must not be running: the
//! store lock enforces it).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use comet_model::QueueOffset;
use comet_store::{NewMessage, Store, StoreConfig};

/// Offline tools for a Comet store directory.
#[derive(Parser)]
#[command(name = "comet-store", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Opens the store (recovering if needed) and prints positions, recovery work and every queue.
    Stats {
        /// Store directory.
        dir: PathBuf,
    },
    /// Reads every record and checks its CRC; exits non-zero at the first damaged one.
    Verify {
        /// Store directory.
        dir: PathBuf,
    },
    /// Prints messages of one queue.
    Dump {
        /// Store directory.
        dir: PathBuf,
        /// Topic.
        #[arg(long)]
        topic: String,
        /// Queue id.
        #[arg(long, default_value_t = 0)]
        queue: u32,
        /// First queue offset.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// How many messages.
        #[arg(long, default_value_t = 10)]
        count: usize,
    },
    /// Writes sample messages, reads them back by queue, key and id, and reports rates: a first look at a
    /// working store on embedded defaults.
    Demo {
        /// Store directory (created if missing).
        #[arg(default_value = "data/demo-store")]
        dir: PathBuf,
        /// Messages to write.
        #[arg(long, default_value_t = 200_000)]
        messages: u64,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let result = match Cli::parse().command {
        Command::Stats { dir } => stats(dir),
        Command::Verify { dir } => verify(dir),
        Command::Dump { dir, topic, queue, from, count } => dump(dir, &topic, queue, from, count),
        Command::Demo { dir, messages } => demo(dir, messages),
    };
    // A message with its causes, not a backtrace (RUST_BACKTRACE may be set in the environment).
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn open_existing(dir: PathBuf) -> Result<(Store, comet_store::RecoveryReport)> {
    if !dir.join("commitlog").is_dir() {
        bail!("{} is not a store directory (no commitlog/ inside)", dir.display());
    }
    // An inspection must not delete what it inspects: no retention pass (expired segments, a full disk) runs
    // while it looks, whatever the host disk's fill or the segments' age.
    let config = StoreConfig { clean_interval_ms: u64::MAX, ..StoreConfig::new(&dir) };
    Store::open_with_report(config).with_context(|| format!("opening {}", dir.display()))
}

fn stats(dir: PathBuf) -> Result<()> {
    let (store, report) = open_existing(dir)?;
    let s = store.stats();
    println!(
        "commit log   [{} .. {})  flushed {}  dispatched {}",
        s.min_offset, s.max_offset, s.flushed_offset, s.dispatched_offset
    );
    println!(
        "disk         {} bytes in the store's files (preallocated included), disk usage {:.1}%{}",
        s.disk_bytes,
        s.disk_usage * 100.0,
        if s.disk_full { " (FULL)" } else { "" }
    );
    println!(
        "recovery     {} scan from {} to {}, {} bytes cut, {} records re-dispatched, {:?}",
        if report.after_crash { "after crash:" } else { "clean:" },
        report.scanned_from,
        report.end,
        report.truncated_bytes,
        report.redispatched,
        report.elapsed
    );
    let mut topics = store.topics();
    topics.sort();
    for (topic, mut queues) in topics {
        queues.sort_unstable();
        for q in queues {
            if let Some((min, max)) = store.queue_range(&topic, q) {
                println!("queue        {topic}#{q}  [{min} .. {max})");
            }
        }
    }
    Ok(())
}

fn verify(dir: PathBuf) -> Result<()> {
    let (store, _) = open_existing(dir)?;
    let t = Instant::now();
    let r = store.verify()?;
    println!("{} records, {} bytes checked in {:?}", r.records, r.bytes, t.elapsed());
    match r.first_error {
        Some(e) => bail!("damaged record: {e}"),
        None => Ok(()),
    }
}

fn dump(dir: PathBuf, topic: &str, queue: u32, from: u64, count: usize) -> Result<()> {
    let (store, _) = open_existing(dir)?;
    let got = store.get_messages(topic, queue, QueueOffset(from), count, 64 << 20, None)?;
    println!(
        "status {:?}, queue range [{} .. {}), next {}",
        got.status, got.min_offset, got.max_offset, got.next_offset
    );
    for m in got.messages {
        let body = m.body();
        let preview = String::from_utf8_lossy(&body[..body.len().min(60)]);
        println!(
            "#{} @{} id={} tags={:?} keys={:?} stored={} body[{}]={preview:?}",
            m.queue_offset(),
            m.physical_offset(),
            m.msg_id(),
            m.tags(),
            m.keys(),
            m.store_timestamp(),
            body.len()
        );
    }
    Ok(())
}

fn demo(dir: PathBuf, messages: u64) -> Result<()> {
    println!("Comet store demo in {} (embedded defaults, async flush)", dir.display());
    let (store, report) = Store::open_with_report(StoreConfig::new(&dir))?;
    println!("opened in {:?}; {} bytes already stored", report.elapsed, report.end);
    let t = Instant::now();
    let batch: Vec<NewMessage> = (0..64)
        .map(|i| {
            let mut m = NewMessage::new("DemoTopic", i % 4, format!("hello from comet #{i}").into_bytes());
            m.keys = format!("order-{i}");
            m.tags = "TagA".into();
            m
        })
        .collect();
    let mut written = 0;
    let mut last = None;
    while written < messages {
        let mut b = batch.clone();
        for (i, m) in b.iter_mut().enumerate() {
            m.msg_id = format!("demo-{}-{}", report.end, written + i as u64);
        }
        last = store.append_batch(&b)?.pop();
        written += b.len() as u64;
    }
    store.flush()?;
    let secs = t.elapsed().as_secs_f64();
    println!("appended {written} messages in {secs:.2} s ({:.0} msg/s)", written as f64 / secs);
    if let Some(r) = last {
        let m = store.read(r.offset)?;
        println!(
            "last message: id={} queue={} offset={} body={:?}",
            m.msg_id(),
            m.queue_id(),
            m.queue_offset(),
            String::from_utf8_lossy(&m.body())
        );
        std::thread::sleep(std::time::Duration::from_millis(200)); // let the dispatcher index it
        let found = store.query_by_id(m.msg_id())?.is_some();
        println!("lookup by id: {}", if found { "found" } else { "not yet indexed" });
    }
    let hits = store.query_by_key("DemoTopic", "order-7", 3, 0, u64::MAX)?;
    println!("lookup by key order-7: {} newest hits", hits.len());
    for q in 0..4 {
        if let Some((min, max)) = store.queue_range("DemoTopic", q) {
            println!("queue DemoTopic#{q}: [{min} .. {max})");
        }
    }
    store.close()?;
    println!("closed cleanly; run `comet-store stats {}` to inspect", dir.display());
    Ok(())
}
