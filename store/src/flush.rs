//! Group commit: one fsync makes every append that is waiting at that moment durable.
//!
//! There is no flush thread on the sync path. The first waiter to find no flush in progress becomes the leader:
//! it reads the current end of the log (which covers every append published so far, its own and everyone
//! else's), flushes up to it without holding the lock, then wakes all waiters. Waiters whose offsets are now
//! durable return; the rest elect the next leader. So N concurrent writers cost about one fsync per round, not N.
//! A failed flush poisons the store: the error goes to every waiter and to every later write.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

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
    /// Sync-mode appends between "started" and "waiting for durability": the leader gives them a moment to
    /// land so one fsync covers them too, instead of leaving them for the next round.
    in_flight: AtomicUsize,
}

/// Longest a leader waits for in-flight appends before flushing anyway.
const GATHER: Duration = Duration::from_micros(200);

/// Marks a sync-mode append in flight until dropped (the append then waits for durability, or failed).
pub(crate) struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl GroupCommit {
    pub(crate) fn new(flushed: u64) -> Self {
        Self {
            state: Mutex::new(State { flushing: false, poisoned: None }),
            done: Condvar::new(),
            flushed: flushed.into(),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Call before a sync-mode append; drop the guard once the append returned.
    pub(crate) fn begin_append(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(&self.in_flight)
    }

    /// Everything below this CommitLog offset is durable.
    pub(crate) fn flushed(&self) -> u64 {
        self.flushed.load(Ordering::Acquire)
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
            if st.flushing {
                self.done.wait(&mut st);
                continue;
            }
            st.flushing = true;
            let from = self.flushed();
            drop(st);
            // Let appends that are already under way land, so this fsync covers them as well.
            let deadline = Instant::now() + GATHER;
            while self.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                std::thread::yield_now();
            }
            let to = log.end();
            let result = log.flush(from, to);
            st = self.state.lock();
            st.flushing = false;
            match result {
                Ok(()) => {
                    self.flushed.fetch_max(to, Ordering::AcqRel);
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
