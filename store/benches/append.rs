//! Store benchmark: append throughput across body sizes, writer counts, batching and flush modes, each beside
//! the raw sequential-write bandwidth of the same disk measured in the same run, plus recovery times.
//!
//! Also the slave's side of replication: `append_raw` of 4 MiB `read_raw` chunks of 1 KiB records, beside
//! `read_raw` itself (the master's side) on the same machine.
//!
//! `cargo bench -p comet-store --bench append -- [--seconds S] [--recovery-gib G] [--replication-mib M]
//! [--dir DIR]` (`make bench-store`). Prints a Markdown report for docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use comet_store::{FlushMode, NewMessage, Store, StoreConfig};

const SIZES: [usize; 3] = [128, 1024, 4096];
const BATCH: usize = 64;
const CRASH_CHILD: &str = "COMET_BENCH_CRASH_CHILD";

struct Args {
    /// Only cases whose label ("128B/1w/batch/async") contains this.
    filter: Option<String>,
    /// Skip the raw-disk baselines (for profiling one case).
    no_raw: bool,
    seconds: f64,
    recovery_gib: u64,
    /// Size of the log replicated by the replication case (0 skips it).
    replication_mib: u64,
    dir: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        filter: None,
        no_raw: false,
        seconds: 2.0,
        recovery_gib: 4,
        replication_mib: 1024,
        dir: PathBuf::from("target/bench-store"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--seconds" => a.seconds = it.next().and_then(|v| v.parse().ok()).expect("--seconds N"),
            "--recovery-gib" => a.recovery_gib = it.next().and_then(|v| v.parse().ok()).expect("--recovery-gib N"),
            "--replication-mib" => {
                a.replication_mib = it.next().and_then(|v| v.parse().ok()).expect("--replication-mib N")
            }
            "--filter" => a.filter = it.next(),
            "--no-raw" => a.no_raw = true,
            "--dir" => a.dir = PathBuf::from(it.next().expect("--dir DIR")),
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

fn main() {
    if let Ok(dir) = std::env::var(CRASH_CHILD) {
        crash_child(Path::new(&dir));
    }
    let a = args();
    std::fs::create_dir_all(&a.dir).unwrap();
    println!("## Store append benchmark\n");
    println!("Duration per case: {} s; batch = {BATCH} messages; directory: {}\n", a.seconds, a.dir.display());
    println!("| body | writers | mode | flush | appends/s | MB/s (records) | appends/fsync | raw baseline | ratio |");
    println!("|---:|---:|---|---|---:|---:|---:|---|---:|");
    for &size in &SIZES {
        let record = record_size(size);
        for flush in [FlushMode::Async, FlushMode::Sync] {
            // Group commit shows with many writers of single messages: 64 writers only for sync single appends.
            let writer_counts: &[usize] = if flush == FlushMode::Sync { &[1, 8, 64] } else { &[1, 8] };
            for &writers in writer_counts {
                for batch in [BATCH, 1] {
                    if writers == 64 && batch != 1 {
                        continue;
                    }
                    let label = format!(
                        "{size}B/{writers}w/{}/{}",
                        if batch == 1 { "single" } else { "batch" },
                        if flush == FlushMode::Sync { "sync" } else { "async" }
                    );
                    if a.filter.as_ref().is_some_and(|f| !label.contains(f.as_str())) {
                        continue;
                    }
                    let r = run(&a.dir, size, writers, batch, flush, a.seconds);
                    // Async: buffered `write` of the same total bytes in the same chunk size, to a fresh file.
                    let (base_name, base) = match flush {
                        _ if a.no_raw => ("none", Raw::none(record * batch)),
                        FlushMode::Async => {
                            ("write, no sync", raw_write(&a.dir, record * batch, r.bytes, a.seconds * 10.0, false))
                        }
                        // One write+fdatasync per message: what acknowledging after each fsync costs without group
                        // commit, measured right after the case, under the same conditions.
                        FlushMode::Sync => ("write+fdatasync", raw_write(&a.dir, record, u64::MAX, a.seconds, true)),
                    };
                    let (ratio, base_desc) = match flush {
                        FlushMode::Async => {
                            (r.mb_s / base.mb_s, format!("{base_name} {}B: {:.0} MB/s", base.chunk, base.mb_s))
                        }
                        FlushMode::Sync => {
                            (r.per_s / base.per_s, format!("{base_name} {}B: {:.0} ops/s", base.chunk, base.per_s))
                        }
                    };
                    println!(
                        "| {size} B | {writers} | {} | {} | {:.0} | {:.1} | {} | {base_desc} | {ratio:.2}× |",
                        if batch == 1 { "single" } else { "batch" },
                        if flush == FlushMode::Sync { "sync" } else { "async" },
                        r.per_s,
                        r.mb_s,
                        if flush == FlushMode::Sync { format!("{:.1}", r.per_flush) } else { "—".into() },
                    );
                }
            }
        }
    }
    println!("\nRatios: async rows compare MB/s with buffered `write` of the same chunk size; sync rows compare");
    println!("appends/s with one `write`+`fdatasync` per message (what a store without group commit could do).\n");
    if a.filter.as_deref().is_none_or(|f| f == "read") {
        read(&a.dir);
    }
    if a.replication_mib > 0 && a.filter.as_deref().is_none_or(|f| f == "replication") {
        replication(&a.dir, a.replication_mib);
    }
    if a.recovery_gib > 0 {
        recovery(&a.dir, a.recovery_gib);
    }
}

fn record_size(body: usize) -> usize {
    let m = message(0, body);
    comet_store::record::encoded_len(&m, u32::MAX).unwrap()
}

fn message(writer: usize, body: usize) -> NewMessage {
    let mut m = NewMessage::new("bench", writer as u32, Bytes::from(vec![b'x'; body]));
    m.msg_id = format!("{:032x}", writer);
    m.keys = "order-1".into();
    m.tags = "TagA".into();
    m
}

struct Rate {
    per_s: f64,
    mb_s: f64,
    /// Record bytes written in the run.
    bytes: u64,
    /// Appends per CommitLog fsync (group commit at work in sync mode).
    per_flush: f64,
}

#[derive(Clone, Copy)]
struct Raw {
    chunk: usize,
    per_s: f64,
    mb_s: f64,
}

impl Raw {
    fn none(chunk: usize) -> Raw {
        Raw { chunk, per_s: f64::NAN, mb_s: f64::NAN }
    }
}

fn config(dir: &Path, flush: FlushMode) -> StoreConfig {
    let flush_interval_ms = std::env::var("COMET_BENCH_FLUSH_INTERVAL_MS").ok().and_then(|v| v.parse().ok());
    StoreConfig {
        flush_mode: flush,
        clean_interval_ms: 3_600_000,
        flush_interval_ms: flush_interval_ms.unwrap_or(500),
        ..StoreConfig::new(dir)
    }
}

/// Writes back every dirty page, so one case's data does not slow the next one down.
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn run(root: &Path, body: usize, writers: usize, batch: usize, flush: FlushMode, seconds: f64) -> Rate {
    let dir = root.join("run");
    let _ = std::fs::remove_dir_all(&dir);
    settle();
    let store = Store::open(config(&dir, flush)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let (store, stop, count, bytes) = (store.clone(), stop.clone(), count.clone(), bytes.clone());
            std::thread::spawn(move || {
                let msgs: Vec<NewMessage> = (0..batch).map(|_| message(w, body)).collect();
                let (mut n, mut b) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let r = store.append_batch(&msgs).unwrap();
                    n += r.len() as u64;
                    b += r.iter().map(|x| u64::from(x.size)).sum::<u64>();
                }
                count.fetch_add(n, Ordering::Relaxed);
                bytes.fetch_add(b, Ordering::Relaxed);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let flushes = store.stats().flushes;
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    let n = count.load(Ordering::Relaxed) as f64;
    let bytes = bytes.load(Ordering::Relaxed);
    Rate { per_s: n / elapsed, mb_s: bytes as f64 / elapsed / 1e6, bytes, per_flush: n / flushes.max(1) as f64 }
}

/// Sequential `write` of `total` bytes in `chunk`-byte chunks to a fresh file (stopping early after `seconds`),
/// optionally with `fdatasync` after each chunk.
fn raw_write(root: &Path, chunk: usize, total: u64, seconds: f64, sync: bool) -> Raw {
    let path = root.join("raw");
    let _ = std::fs::remove_file(&path);
    settle();
    let f = OpenOptions::new().create(true).write(true).truncate(true).open(&path).unwrap();
    let buf = vec![b'x'; chunk];
    let start = Instant::now();
    let deadline = Duration::from_secs_f64(seconds);
    let (mut n, mut pos) = (0u64, 0u64);
    while pos < total && start.elapsed() < deadline {
        f.write_all_at(&buf, pos).unwrap();
        if sync {
            f.sync_data().unwrap();
        }
        pos += chunk as u64;
        n += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    Raw { chunk, per_s: n as f64 / elapsed, mb_s: (n * chunk as u64) as f64 / elapsed / 1e6 }
}

/// Consumer side: page through one queue with `get_messages` (32 per call, like a pull), from the page cache.
fn read(root: &Path) {
    const N: u64 = 500_000;
    let dir = root.join("read");
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(config(&dir, FlushMode::Async)).unwrap();
    let msgs: Vec<NewMessage> = (0..BATCH).map(|_| message(0, 1024)).collect();
    let start = Instant::now();
    let mut n = 0;
    while n < N {
        n += store.append_batch(&msgs).unwrap().len() as u64;
    }
    let end = store.stats().max_offset;
    while store.stats().dispatched_offset < end {
        std::thread::yield_now();
    }
    let dispatch = start.elapsed();
    let start = Instant::now();
    let (mut from, mut count, mut bytes) = (comet_model::QueueOffset(0), 0u64, 0u64);
    loop {
        let got = store.get_messages("bench", 0, from, 32, 1 << 20, None).unwrap();
        if got.messages.is_empty() {
            break;
        }
        count += got.messages.len() as u64;
        bytes += got.messages.iter().map(|m| m.size() as u64).sum::<u64>();
        from = got.next_offset;
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(count, n);
    println!("## Store read path\n");
    println!("| case | messages | rate | MB/s |");
    println!("|---|---:|---:|---:|");
    println!(
        "| append + dispatch 1 KiB (batch {BATCH}, until every entry is in its consume queue and the index) | {n} | {:.0} msg/s | {:.0} |",
        n as f64 / dispatch.as_secs_f64(),
        end.0 as f64 / dispatch.as_secs_f64() / 1e6
    );
    println!(
        "| get_messages 1 KiB, 32 per call, one queue, zero-copy records | {count} | {:.0} msg/s | {:.0} |\n",
        count as f64 / secs,
        bytes as f64 / secs / 1e6
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Replication: a master holding `mib` MiB of 1 KiB records is read with `read_raw` in 4 MiB chunks (zero copy,
/// then with the copy a network send costs), and the chunks are appended to a slave with `append_raw` (async
/// flush, then sync flush: an fsync per chunk), until the slave's dispatcher has followed (consume queues and
/// index, as a pull on the slave would need).
fn replication(root: &Path, mib: u64) {
    const CHUNK: usize = 4 << 20;
    let master_dir = root.join("repl-master");
    let _ = std::fs::remove_dir_all(&master_dir);
    let master = Store::open(config(&master_dir, FlushMode::Async)).unwrap();
    let msgs: Vec<NewMessage> = (0..BATCH).map(|w| message(w % 8, 1024)).collect();
    while master.end_offset().0 < mib << 20 {
        master.append_batch(&msgs).unwrap();
    }
    master.flush().unwrap();
    let end = master.end_offset();
    let read_pass = |copy: bool| {
        let start = Instant::now();
        let (mut at, mut chunks, mut sum) = (comet_model::CommitLogOffset(0), Vec::new(), 0u64);
        while let Some(chunk) = master.read_raw(at, CHUNK).unwrap() {
            at = comet_model::CommitLogOffset(at.0 + chunk.len() as u64);
            if copy {
                let owned = chunk.to_vec();
                sum += u64::from(owned[owned.len() - 1]);
            }
            chunks.push(chunk);
        }
        assert_eq!(at, end);
        std::hint::black_box(sum);
        (start.elapsed().as_secs_f64(), chunks)
    };
    let (read_secs, chunks) = read_pass(false);
    let (copy_secs, _) = read_pass(true);
    println!("## Replication (slave side)\n");
    println!(
        "{} MiB of 1 KiB records (batches of {BATCH}), {} chunks of at most 4 MiB from `read_raw`.\n",
        end.0 >> 20,
        chunks.len()
    );
    println!("| case | MB/s | chunks/s |");
    println!("|---|---:|---:|");
    let row = |case: &str, secs: f64| {
        println!("| {case} | {:.0} | {:.0} |", end.0 as f64 / secs / 1e6, chunks.len() as f64 / secs);
    };
    row("`read_raw` 4 MiB (master side, zero copy, page cache)", read_secs);
    row("`read_raw` 4 MiB + copy into an owned buffer", copy_secs);
    // The first pass into fresh files measured far slower than later ones (page-cache reclaim after the master's
    // fill): it warms up and is not reported.
    for (i, flush) in [FlushMode::Async, FlushMode::Async, FlushMode::Sync].into_iter().enumerate() {
        let dir = root.join("repl-slave");
        let _ = std::fs::remove_dir_all(&dir);
        settle();
        let slave = Store::open(config(&dir, flush)).unwrap();
        let start = Instant::now();
        let mut at = comet_model::CommitLogOffset(0);
        for chunk in &chunks {
            at = slave.append_raw(at, chunk).unwrap();
        }
        let appended = start.elapsed().as_secs_f64();
        while slave.stats().dispatched_offset < end {
            std::thread::sleep(Duration::from_micros(200));
        }
        let dispatched = start.elapsed().as_secs_f64();
        let mode = if flush == FlushMode::Sync { "sync" } else { "async" };
        drop(slave);
        let _ = std::fs::remove_dir_all(&dir);
        if i == 0 {
            continue;
        }
        row(&format!("`append_raw` 4 MiB, {mode} flush (validate + one pwrite per chunk)"), appended);
        row(&format!("`append_raw` 4 MiB, {mode} flush, until dispatched to queues and index"), dispatched);
    }
    println!();
    drop(master);
    let _ = std::fs::remove_dir_all(&master_dir);
}

fn recovery(root: &Path, gib: u64) {
    println!("## Store recovery\n");
    let dir = root.join("recovery");
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(config(&dir, FlushMode::Async)).unwrap();
    let msgs: Vec<NewMessage> = (0..BATCH).map(|w| message(w % 8, 1024)).collect();
    let start = Instant::now();
    while store.stats().max_offset.0 < gib << 30 {
        store.append_batch(&msgs).unwrap();
    }
    let fill = start.elapsed();
    let size = store.stats().max_offset.0;
    store.close().unwrap();
    let t = Instant::now();
    let (store, report) = Store::open_with_report(config(&dir, FlushMode::Async)).unwrap();
    let clean = t.elapsed();
    assert!(!report.after_crash);
    drop(store);
    println!("| case | store size | data re-read | open time |");
    println!("|---|---:|---:|---:|");
    println!(
        "| after clean shutdown | {:.2} GiB (written in {:.1} s) | {} B | {:.3} s |",
        size as f64 / (1u64 << 30) as f64,
        fill.as_secs_f64(),
        report.end.0 - report.scanned_from.0,
        clean.as_secs_f64()
    );
    // Crash: a child appends for a while (checkpoints every second) and aborts without any shutdown.
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .env(CRASH_CHILD, &dir)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must die");
    let t = Instant::now();
    let (store, report) = Store::open_with_report(config(&dir, FlushMode::Async)).unwrap();
    let crash = t.elapsed();
    assert!(report.after_crash);
    println!(
        "| after crash (abort mid-stream, checkpoint every 1 s) | {:.2} GiB | {:.1} MB ({} records re-dispatched) | {:.3} s |",
        report.end.0 as f64 / (1u64 << 30) as f64,
        (report.end.0 - report.scanned_from.0) as f64 / 1e6,
        report.redispatched,
        crash.as_secs_f64()
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::io::stdout().flush();
}

fn crash_child(dir: &Path) -> ! {
    let store = Store::open(config(dir, FlushMode::Async)).unwrap();
    let msgs: Vec<NewMessage> = (0..BATCH).map(|w| message(w % 8, 1024)).collect();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(2500) {
        store.append_batch(&msgs).unwrap();
    }
    std::process::abort();
}
