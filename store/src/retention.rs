//! Retention and disk protection: delete whole old segments, and refuse writes when the disk is full.
//!
//! Rules, checked every `clean-interval-ms` (and on demand through `Store::enforce_retention`):
//! - a sealed segment whose newest message is older than `retention-hours` is deleted;
//! - above `disk-clean-ratio` usage the oldest sealed segment is deleted on each pass even if not expired;
//! - above `disk-force-clean-ratio` the oldest segments are deleted until usage is back under
//!   `disk-clean-ratio`;
//! - above `disk-full-ratio` appends fail with `Error::DiskFull` until usage drops again.
//!
//! The active segment, and anything not yet durable or dispatched, is never deleted. Consume queues and index
//! files that only point at deleted segments go with them; readers asking for deleted data get
//! `OffsetMoved` with the new minimum.

use std::sync::atomic::Ordering;

use crate::error::Result;
use crate::store::Inner;

/// What one retention pass did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetentionReport {
    /// CommitLog segments deleted.
    pub deleted_segments: usize,
    /// Disk usage ratio before the pass.
    pub usage_before: f64,
    /// Disk usage ratio after the pass.
    pub usage_after: f64,
    /// Writes are refused after the pass.
    pub disk_full: bool,
}

impl Inner {
    /// Measures disk usage, updates the disk-full flag and returns the ratio.
    pub(crate) fn measure_disk(&self) -> f64 {
        let usage = match self.config.disk_capacity_bytes {
            Some(capacity) => self.log.disk_bytes() as f64 / capacity as f64,
            None => filesystem_usage(&self.root).unwrap_or(0.0),
        };
        self.disk_usage.store(usage.to_bits(), Ordering::Release);
        let full = usage >= self.config.disk_full_ratio;
        let was = self.disk_full.swap(full, Ordering::AcqRel);
        if full && !was {
            tracing::error!(
                usage = usage * 100.0,
                limit = self.config.disk_full_ratio * 100.0,
                "disk full: refusing writes until usage drops"
            );
        } else if was && !full {
            tracing::info!(usage = usage * 100.0, "disk usage back under the limit: accepting writes");
        }
        usage
    }

    pub(crate) fn enforce_retention(&self, now_ms: u64) -> Result<RetentionReport> {
        let _pass = self.cleaning.lock();
        let usage_before = self.measure_disk();
        let cutoff = now_ms.saturating_sub(self.config.retention().as_millis() as u64);
        // The dispatcher may still be reading segments it has not finished; everything else may go.
        let safe_end = self.dispatched.load(Ordering::Acquire);
        let mut usage = usage_before;
        let forcing = usage >= self.config.disk_force_clean_ratio;
        let mut deleted = 0;
        for seg in self.log.sealed_segments() {
            if seg.limit() > safe_end {
                break;
            }
            let expired = self.log.sealed_at(&seg).is_some_and(|t| t < cutoff);
            let forced = forcing && usage >= self.config.disk_clean_ratio;
            let gentle = deleted == 0 && usage >= self.config.disk_clean_ratio;
            if !(expired || forced || gentle) {
                break;
            }
            if !self.log.delete_oldest(seg.base())? {
                break;
            }
            deleted += 1;
            usage = self.measure_disk();
        }
        if deleted > 0 {
            let min = self.log.min_offset();
            for q in self.queues.all() {
                q.trim(min)?;
            }
            self.index.trim(min)?;
        }
        let usage_after = self.measure_disk();
        Ok(RetentionReport {
            deleted_segments: deleted,
            usage_before,
            usage_after,
            disk_full: self.disk_full.load(Ordering::Acquire),
        })
    }
}

/// Used fraction of the filesystem holding `path`, as `df` computes it.
fn filesystem_usage(path: &std::path::Path) -> Option<f64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe_zeroed_statvfs();
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as f64;
    let used = (st.f_blocks as f64 - st.f_bfree as f64) * frsize;
    let avail = st.f_bavail as f64 * frsize;
    (used + avail > 0.0).then(|| used / (used + avail))
}

fn unsafe_zeroed_statvfs() -> libc::statvfs {
    // SAFETY: statvfs is a plain C struct of integers; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}
