//! Group commit: one fsync makes every append that is waiting at that moment durable.
//!
//! There is no flush thread on the sync path. The first waiter to find no flush in progress becomes the leader:
//! it reads the current end of the log (which covers every append published so far, its own and everyone
//! else's), flushes up to it without holding the lock, then wakes all waiters. Waiters whose offsets are now
//! durable return; the rest elect the next leader. So N concurrent writers cost about one fsync per round, not N.
//! A failed flush poisons the store: the error goes to every waiter and to every later write.

use std::sync::atomic::{AtomicU64, Ordering};

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
}

impl GroupCommit {
    pub(crate) fn new(flushed: u64) -> Self {
        Self {
            state: Mutex::new(State { flushing: false, poisoned: None }),
            done: Condvar::new(),
            flushed: flushed.into(),
        }
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
