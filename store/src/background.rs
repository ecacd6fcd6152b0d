//! The store's three threads: dispatcher, flusher (async flush + checkpoints), and cleaner (retention, disk).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::FlushMode;
use crate::error::{Error, Result};
use crate::store::{Inner, now_ms};

/// How often the cleaner re-measures disk usage between retention passes.
const DISK_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Pause after a dispatch failure before trying again (the error is logged each time).
const DISPATCH_RETRY: Duration = Duration::from_secs(1);

pub(crate) fn spawn(inner: &Arc<Inner>) -> Result<Vec<JoinHandle<()>>> {
    let start = |name: &str, f: fn(&Inner)| -> Result<JoinHandle<()>> {
        let owned = inner.clone();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || f(&owned))
            .map_err(|e| Error::io("spawn thread", &inner.root, e))
    };
    let dispatcher = start("comet-dispatch", dispatch_loop)?;
    *inner.dispatcher.lock() = Some(dispatcher.thread().clone());
    let mut threads = vec![dispatcher, start("comet-flush", flush_loop)?, start("comet-clean", clean_loop)?];
    // Sync mode writes with pwrite only (see `Store::append_batch`): nothing to warm.
    if inner.config.flush_mode == FlushMode::Async {
        let warmer = start("comet-warm", warm_loop)?;
        *inner.warmer.lock() = Some(warmer.thread().clone());
        threads.push(warmer);
    }
    Ok(threads)
}

fn stopping(inner: &Inner) -> bool {
    inner.stopping.load(Ordering::Acquire)
}

fn dispatch_loop(inner: &Inner) {
    while !stopping(inner) {
        match inner.dispatch_some() {
            Ok(0) => std::thread::park_timeout(Duration::from_millis(100)),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "dispatch failed; consumers will not see new messages until it succeeds");
                std::thread::park_timeout(DISPATCH_RETRY);
            }
        }
    }
}

/// The warmer's nice value: faulting pages in ahead of the writer is an optimisation (an unwarmed page is written
/// with `pwrite`), so it runs behind every serving thread instead of taking turns with them.
const WARM_NICE: libc::c_int = 10;

fn warm_loop(inner: &Inner) {
    // SAFETY: plain syscalls on this thread's own id; no memory is passed.
    let lowered = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, WARM_NICE) };
    if lowered != 0 {
        tracing::debug!("cannot lower the warmer thread's priority: {}", std::io::Error::last_os_error());
    }
    while !stopping(inner) {
        if inner.warm_requested.swap(false, Ordering::AcqRel) {
            inner.log.warm();
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

/// How much of the CommitLog below its end stays mapped into the process: tail readers find it resident; older
/// pages are unmapped at every pass of the flush thread (they stay in the page cache).
pub(crate) const RESIDENT_WINDOW: u64 = 128 << 20;
/// How often pages below the window are unmapped: bounds what a fast writer or a backlog reader adds meanwhile.
const RELEASE_EVERY: Duration = Duration::from_millis(200);

/// How often the page cache is trimmed over the whole CommitLog again, not only over what newly fell behind: pages
/// a lagging reader fetched back in leave again.
const RETRIM_EVERY: Duration = Duration::from_secs(10);

/// Keeps the CommitLog's page-cache footprint to `log-cache-bytes` below its flushed end (0: the kernel decides).
/// On a machine with memory to spare the kernel would otherwise cache every byte ever written, and a sustained
/// writer would claim never-used memory for each new page; on virtual machines that hand free memory back to
/// their host, that first touch is several times dearer than reusing a page (docs/benchmarks.md).
struct CacheTrim {
    budget: u64,
    /// Everything below was dropped at least once.
    dropped_to: u64,
    next_full: Instant,
}

impl CacheTrim {
    fn new(budget: u64) -> Self {
        Self { budget, dropped_to: 0, next_full: Instant::now() + RETRIM_EVERY }
    }

    fn pass(&mut self, inner: &Inner, now: Instant) {
        if self.budget == 0 {
            return;
        }
        // Flushed bytes only (dirty pages would stay anyway), and never the mapped resident window.
        let below = inner.commit.flushed().min(inner.log.end().saturating_sub(RESIDENT_WINDOW));
        let to = below.saturating_sub(self.budget);
        let from = if now >= self.next_full {
            self.next_full = now + RETRIM_EVERY;
            inner.log.min_offset()
        } else {
            self.dropped_to.max(inner.log.min_offset())
        };
        if to > from {
            inner.log.drop_cached(from, to);
        }
        self.dropped_to = self.dropped_to.max(to);
    }
}

fn flush_loop(inner: &Inner) {
    let flush_every = inner.config.flush_interval();
    let checkpoint_every = inner.config.checkpoint_interval();
    let mut next_flush = Instant::now() + flush_every;
    let mut next_checkpoint = Instant::now() + checkpoint_every;
    let mut trim = CacheTrim::new(inner.config.log_cache_bytes);
    while !stopping(inner) {
        let now = Instant::now();
        if inner.config.flush_mode == FlushMode::Async && now >= next_flush {
            // A failure poisons the store inside `wait_durable`; nothing more to do here.
            let _ = inner.commit.wait_durable(&inner.log, inner.log.end());
            next_flush = now + flush_every;
        }
        if now >= next_checkpoint {
            if let Err(e) = inner.write_checkpoint() {
                tracing::error!(error = %e, "checkpoint failed; recovery after a crash will re-read more data");
            }
            next_checkpoint = now + checkpoint_every;
            // Full consume-queue and index files leave resident memory too (once each).
            for q in inner.queues.all() {
                q.release_full();
            }
            inner.index.release_full();
        }
        // Bound resident memory: only the last RESIDENT_WINDOW of the CommitLog stays mapped in (dirty pages
        // included: unmapping a shared mapping's page hands its dirty state to the page cache).
        inner.log.release_below(inner.log.end().saturating_sub(RESIDENT_WINDOW));
        trim.pass(inner, now);
        let wake =
            if inner.config.flush_mode == FlushMode::Async { next_flush.min(next_checkpoint) } else { next_checkpoint };
        std::thread::park_timeout(wake.saturating_duration_since(Instant::now()).min(RELEASE_EVERY));
    }
}

fn clean_loop(inner: &Inner) {
    let clean_every = inner.config.clean_interval();
    let mut next_clean = Instant::now() + clean_every;
    while !stopping(inner) {
        if Instant::now() >= next_clean {
            if let Err(e) = inner.enforce_retention(now_ms()) {
                tracing::error!(error = %e, "retention pass failed");
            }
            next_clean = Instant::now() + clean_every;
        } else {
            inner.measure_disk();
        }
        std::thread::park_timeout(DISK_CHECK_INTERVAL.min(next_clean.saturating_duration_since(Instant::now())));
    }
}
