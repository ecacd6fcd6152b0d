//! Group commit: one fsync makes every append that is waiting at that moment durable.
//!
//! There is no flush thread on the sync path. The first waiter to find no flush in progress becomes the leader:
//! it reads the current end of the log (which covers every append published so far, its own and everyone
//! else's), flushes up to it without holding the lock, then wakes all waiters. Waiters whose offsets are now
//! durable return; the rest elect the next leader. So N concurrent writers cost about one fsync per round, not N.
//! A failed flush poisons the store: the error goes to every waiter and to every later write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use comet_model::CommitLogOffset;

use crate::commitlog::CommitLog;
use crate::error::{Error, Result};

struct State {
    flushing: bool,
    poisoned: Option<String>,
}

/// Durability tracker of the CommitLog.
pub(crate) struct GroupCommit {
    state: Mutex<State>,
    done: Condvar,
    /// Everything below is durable.
    flushed: AtomicU64,
    /// Sync-mode appends started and finished (counters): a new leader waits, briefly, for the appends that
    /// were already under way when it took over, so one fsync covers them too instead of leaving them for the
    /// next round. Appends that start later are not waited for.
    started: AtomicU64,
    finished: AtomicU64,
    /// Completed CommitLog flushes, for metrics (appends per flush shows group commit at work).
    flushes: AtomicU64,
    /// Appends the last flush covered, and the `started` count when it began: writers that the last flush
    /// released usually come straight back, so the next leader expects about as many.
    last_round: AtomicU64,
    round_mark: AtomicU64,
    /// Duration of the last flush in µs: the longest worth waiting for stragglers.
    last_flush_us: AtomicU64,
    /// Tests: make the next flush fail as an fsync error would.
    #[cfg(test)]
    pub(crate) fail_next: std::sync::atomic::AtomicBool,
}

/// Longest a leader waits for more appends before flushing anyway.
const GATHER_MAX: Duration = Duration::from_micros(500);

/// Marks a sync-mode append in flight until dropped (the append then waits for durability, or failed).
pub(crate) struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

impl GroupCommit {
    pub(crate) fn new(flushed: u64) -> Self {
        Self {
            state: Mutex::new(State { flushing: false, poisoned: None }),
            done: Condvar::new(),
            flushed: flushed.into(),
            started: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            last_round: AtomicU64::new(0),
            round_mark: AtomicU64::new(0),
            last_flush_us: AtomicU64::new(0),
            #[cfg(test)]
            fail_next: Default::default(),
        }
    }

    /// Call before a sync-mode append; drop the guard once the append returned.
    pub(crate) fn begin_append(&self) -> InFlight<'_> {
        self.started.fetch_add(1, Ordering::AcqRel);
        InFlight(&self.finished)
    }

    /// Everything below this CommitLog offset is durable.
    pub(crate) fn flushed(&self) -> u64 {
        self.flushed.load(Ordering::Acquire)
    }

    /// CommitLog flushes completed so far.
    pub(crate) fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// The reason writes are refused, if a flush failed.
    pub(crate) fn poisoned(&self) -> Option<String> {
        self.state.lock().poisoned.clone()
    }

    /// Refuses all further writes with `reason`.
    pub(crate) fn poison(&self, reason: String) {
        let mut st = self.state.lock();
        if st.poisoned.is_none() {
            tracing::error!(%reason, "store poisoned: refusing writes until restart");
            st.poisoned = Some(reason);
        }
        self.done.notify_all();
    }

    /// Waits for a flush in progress and holds off new ones until `resume`: a truncation moves the log's end
    /// down, and a flush that started before it would otherwise report the old end as durable.
    pub(crate) fn pause(&self) {
        let mut st = self.state.lock();
        while st.flushing {
            self.done.wait(&mut st);
        }
        st.flushing = true;
    }

    /// Ends a `pause`: everything below `flushed` is durable (a truncation made it so).
    pub(crate) fn resume(&self, flushed: u64) {
        let mut st = self.state.lock();
        st.flushing = false;
        self.flushed.store(flushed, Ordering::Release);
        self.done.notify_all();
    }

    /// Returns once `[.., target)` is durable, flushing as the leader of a group if nobody else is.
    pub(crate) fn wait_durable(&self, log: &CommitLog, target: u64) -> Result<()> {
        let mut st = self.state.lock();
        loop {
            if let Some(reason) = &st.poisoned {
                return Err(Error::Poisoned { reason: reason.clone() });
            }
            if self.flushed() >= target {
                return Ok(());
            }
            if !st.flushing && target > log.end() {
                // A truncation removed these bytes before they became durable: they never will.
                return Err(Error::Truncated { offset: CommitLogOffset(target), end: CommitLogOffset(log.end()) });
            }
            if st.flushing {
                self.done.wait(&mut st);
                continue;
            }
            st.flushing = true;
            let from = self.flushed();
            drop(st);
            // Gather: wait (at most half the last flush's duration) until the writers the last flush released
            // have appended again and every append under way has landed, so this fsync covers them as well.
            // With a single writer the expected round is one append, already here: no wait at all.
            let expected = self.round_mark.load(Ordering::Acquire) + self.last_round.load(Ordering::Acquire);
            let budget = Duration::from_micros(self.last_flush_us.load(Ordering::Acquire) / 2).min(GATHER_MAX);
            let deadline = Instant::now() + budget;
            loop {
                let started = self.started.load(Ordering::Acquire);
                let settled = started >= expected && self.finished.load(Ordering::Acquire) >= started;
                if settled || Instant::now() >= deadline {
                    break;
                }
                std::thread::yield_now();
            }
            let mark = self.started.load(Ordering::Acquire);
            let flush_started = Instant::now();
            let to = log.end();
            #[cfg(test)]
            let result = if self.fail_next.swap(false, Ordering::AcqRel) {
                Err(std::io::Error::other("injected fsync failure"))
            } else {
                log.flush(from, to)
            };
            #[cfg(not(test))]
            let result = log.flush(from, to);
            st = self.state.lock();
            st.flushing = false;
            match result {
                Ok(()) => {
                    self.flushed.fetch_max(to, Ordering::AcqRel);
                    self.flushes.fetch_add(1, Ordering::Relaxed);
                    let previous = self.round_mark.swap(mark, Ordering::AcqRel);
                    self.last_round.store(mark.saturating_sub(previous), Ordering::Release);
                    self.last_flush_us.store(flush_started.elapsed().as_micros() as u64, Ordering::Release);
                }
                Err(e) => {
                    let reason = format!("flushing CommitLog [{from}, {to}) in {}: {e}", log.dir().display());
                    tracing::error!(%reason, "store poisoned: refusing writes until restart");
                    st.poisoned = Some(reason);
                }
            }
            self.done.notify_all();
        }
    }
}
