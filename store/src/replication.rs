//! Cutting the log back for a replica: `truncate` removes a diverged tail, `restart_at` empties the store and
//! restarts it at a later base. Both take, in this order, the retention lock, the checkpoint lock, the
//! dispatcher lock and the writer lock, and pause group commit, so no retention pass, checkpoint, dispatch,
//! append or flush interleaves with them.
//!
//! Crash safety of `truncate`: before anything changes, the log is made durable to its end, dispatched up to
//! the cut and checkpointed at the cut (a lower bound, as true of the old log as of the new one), and a copy of
//! the segment holding the cut, its bytes below it, is written beside the CommitLog directory. Then the segments
//! above the cut are deleted newest first, the copy is renamed over the segment holding the cut, and
//! consume-queue and index entries pointing at or above the cut are zeroed durably. A crash at any step recovers from the cut: the old tail (or a prefix of it, ending at a segment
//! boundary) if the segment was not replaced yet, nothing of it if it was; derived data above the checkpoint is
//! rebuilt from the log either way.
//!
//! Crash safety of `restart_at`: the new segment is prepared first (beside the CommitLog directory), then the
//! checkpoint goes (a missing checkpoint makes recovery rebuild all derived data from whatever log is left), then
//! consume queues, index and segments (newest first); the new segment is renamed into place and a checkpoint
//! written at its base. A crash in between leaves a consistent store (the old log or a prefix of it, or an empty
//! log at 0) that the replication handshake restarts again.
//!
//! Both prepare the one file they need disk space for before changing anything, so a full disk makes them fail
//! cleanly; a failure after that poisons the store (memory and disk may disagree until a reopen recovers).

use std::sync::atomic::Ordering;

use comet_model::CommitLogOffset;

use crate::commitlog::WriterGuard;
use crate::error::{Error, Result};
use crate::store::Inner;

impl Inner {
    /// Refuses log surgery on a closing or poisoned store (a full disk does not stop it: it frees space).
    fn check_open(&self) -> Result<()> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if let Some(reason) = self.commit.poisoned() {
            return Err(Error::Poisoned { reason });
        }
        Ok(())
    }

    /// See [`crate::Store::truncate`].
    pub(crate) fn truncate(&self, to: u64) -> Result<()> {
        self.check_open()?;
        let _cleaning = self.cleaning.lock();
        let _checkpointing = self.checkpointing.lock();
        let _dispatching = self.dispatching.lock();
        let mut w = self.log.writer();
        let (min, end) = (self.log.min_offset(), self.log.end());
        if min == end {
            return if to == end { Ok(()) } else { self.restart_locked(&mut w, to) };
        }
        if to >= end {
            return Ok(());
        }
        if to < min {
            return self.restart_locked(&mut w, to);
        }
        self.log.check_boundary(to)?;
        self.commit.wait_durable(&self.log, end)?;
        while self.dispatch_up_to(to, crate::dispatch::Mode::Thread)? > 0 {}
        let dispatched = self.dispatched.load(Ordering::Acquire);
        if dispatched < to {
            return Err(Error::NotRecordBoundary {
                offset: CommitLogOffset(to),
                reason: format!("dispatch stopped at {dispatched} before reaching it"),
            });
        }
        self.store_checkpoint(to)?;
        self.log.prepare_cut(&mut w, to)?;
        self.commit.pause();
        let cut = (|| {
            self.log.cut(&mut w, to)?;
            for q in self.queues.all() {
                q.truncate(to)?;
            }
            self.index.truncate(to)
        })();
        self.dispatched.store(to, Ordering::Release);
        self.commit.resume(to);
        if let Err(e) = cut {
            // Memory and disk may now disagree: refuse writes until a reopen recovers from the disk.
            self.commit.poison(format!("truncating the CommitLog to {to} failed: {e}"));
            return Err(e);
        }
        self.log.set_queue_offsets_locked(&mut w, self.queues.offset_table());
        Ok(())
    }

    /// See [`crate::Store::restart_at`].
    pub(crate) fn restart_at(&self, base: u64) -> Result<()> {
        self.check_open()?;
        let _cleaning = self.cleaning.lock();
        let _checkpointing = self.checkpointing.lock();
        let _dispatching = self.dispatching.lock();
        let mut w = self.log.writer();
        if self.log.min_offset() == self.log.end() && self.log.end() == base {
            return Ok(());
        }
        self.restart_locked(&mut w, base)
    }

    /// Empties the store and restarts the log at `base`; every lock of a truncation is held.
    fn restart_locked(&self, w: &mut WriterGuard<'_>, base: u64) -> Result<()> {
        let segment_size = self.log.segment_size();
        if !base.is_multiple_of(segment_size) {
            return Err(Error::SegmentMismatch {
                offset: CommitLogOffset(base),
                segment_size,
                reason: "the log can only restart at a segment boundary (a multiple of the segment size)".into(),
            });
        }
        self.log.prepare_restart(w)?;
        self.checkpoint.remove()?;
        self.commit.pause();
        let result = (|| {
            self.queues.clear()?;
            self.index.clear()?;
            self.log.restart(w, base)
        })();
        self.dispatched.store(base, Ordering::Release);
        self.commit.resume(base);
        if let Err(e) = result {
            self.commit.poison(format!("restarting the CommitLog at {base} failed: {e}"));
            return Err(e);
        }
        self.store_checkpoint(base)
    }
}
