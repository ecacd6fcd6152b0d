//! Store configuration: every key has the documented default; `validate` runs once at open.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// When an append is acknowledged relative to its fsync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlushMode {
    /// Acknowledge once the bytes are in the page cache; a flusher makes them durable every `flush-interval-ms`.
    #[default]
    Async,
    /// Acknowledge only after an fsync covering the message (group commit: one fsync serves every waiting writer).
    Sync,
}

/// Configuration of one store directory. YAML keys are the kebab-case field names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct StoreConfig {
    /// Root directory; the store creates `commitlog/`, `consumequeue/`, `index/`, `checkpoint`, `lock` inside.
    pub dir: PathBuf,
    /// Size of one CommitLog segment file in bytes (default 1 GiB, as RocketMQ).
    pub segment_size: u64,
    /// Acknowledge appends before (`async`) or after (`sync`) they are durable.
    pub flush_mode: FlushMode,
    /// Async mode: how often the flusher makes the CommitLog durable (default 500 ms).
    pub flush_interval_ms: u64,
    /// How often consume queues and the index are flushed and the recovery checkpoint advanced (default 1 s).
    /// After a crash, recovery re-reads at most the CommitLog written since the last checkpoint.
    pub checkpoint_interval_ms: u64,
    /// Largest message body accepted, in bytes (default 4 MiB).
    pub max_message_size: u32,
    /// Entries per consume-queue file (20 bytes each; default 300 000, i.e. 6 MB files).
    pub consume_queue_file_entries: u32,
    /// Hash slots per index file (default 1 Mi).
    pub index_slots: u32,
    /// Entries per index file before a new file is started (default 4 Mi: 132 MB files with the slots).
    pub index_entries: u32,
    /// Whole CommitLog segments older than this are deleted (default 72 h).
    pub retention_hours: u64,
    /// How often retention and the disk watermarks are checked (default 10 s).
    pub clean_interval_ms: u64,
    /// Disk usage above which the oldest segment is deleted on every clean pass, even if not expired (0.75).
    pub disk_clean_ratio: f64,
    /// Disk usage above which oldest segments are deleted at once until usage is below `disk-clean-ratio` (0.85).
    pub disk_force_clean_ratio: f64,
    /// Disk usage above which appends are refused with "disk full" until space returns (0.90).
    pub disk_full_ratio: f64,
    /// When set, usage is CommitLog bytes divided by this capacity instead of the filesystem's usage. For quota'd
    /// volumes whose free space `statvfs` does not reflect, and for tests.
    pub disk_capacity_bytes: Option<u64>,
    /// CommitLog bytes below its flushed end left in the page cache (default 4 GiB). Flushed data older than that
    /// is dropped from the cache, so a sustained writer recycles page-cache memory instead of claiming fresh memory
    /// for every byte it writes; readers more than this far behind read from disk. 0 leaves it to the kernel.
    pub log_cache_bytes: u64,
    /// The broker address written into every record as its store host.
    pub store_host: SocketAddr,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("data/store"),
            segment_size: 1 << 30,
            flush_mode: FlushMode::Async,
            flush_interval_ms: 500,
            checkpoint_interval_ms: 1000,
            max_message_size: 4 << 20,
            consume_queue_file_entries: 300_000,
            index_slots: 1 << 20,
            index_entries: 4 << 20,
            retention_hours: 72,
            clean_interval_ms: 10_000,
            log_cache_bytes: 4 << 30,
            disk_clean_ratio: 0.75,
            disk_force_clean_ratio: 0.85,
            disk_full_ratio: 0.90,
            disk_capacity_bytes: None,
            store_host: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

impl StoreConfig {
    /// A default configuration rooted at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), ..Self::default() }
    }

    /// Rejects combinations that cannot work, with a message naming the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::InvalidConfig { reason });
        // A maximal record must fit in one segment together with the end-of-segment marker.
        let min_segment = u64::from(self.max_message_size) + crate::record::MAX_OVERHEAD as u64 + 8;
        if self.segment_size < min_segment {
            return bad(format!(
                "segment-size {} is too small for max-message-size {} (needs at least {min_segment})",
                self.segment_size, self.max_message_size
            ));
        }
        if self.segment_size > (1 << 40) || usize::try_from(self.segment_size).is_err() {
            return bad(format!("segment-size {} is larger than 1 TiB", self.segment_size));
        }
        if self.max_message_size == 0 {
            return bad("max-message-size must be positive".into());
        }
        if self.consume_queue_file_entries < 16 {
            return bad("consume-queue-file-entries must be at least 16".into());
        }
        if self.index_slots < 16 || self.index_entries < 64 {
            return bad("index-slots must be at least 16 and index-entries at least 64".into());
        }
        if self.flush_interval_ms == 0 || self.checkpoint_interval_ms == 0 || self.clean_interval_ms == 0 {
            return bad("flush-interval-ms, checkpoint-interval-ms and clean-interval-ms must be positive".into());
        }
        let ratios = [self.disk_clean_ratio, self.disk_force_clean_ratio, self.disk_full_ratio];
        if ratios.iter().any(|r| !(0.0..=1.0).contains(r) || r.is_nan()) {
            return bad("disk ratios must lie in [0, 1]".into());
        }
        if self.disk_capacity_bytes == Some(0) {
            return bad("disk-capacity-bytes must be positive when set".into());
        }
        Ok(())
    }

    pub(crate) fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }

    pub(crate) fn checkpoint_interval(&self) -> Duration {
        Duration::from_millis(self.checkpoint_interval_ms)
    }

    pub(crate) fn clean_interval(&self) -> Duration {
        Duration::from_millis(self.clean_interval_ms)
    }

    pub(crate) fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_hours.saturating_mul(3600))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert!(StoreConfig::default().validate().is_ok());
    }

    #[test]
    fn yaml_uses_kebab_case_keys_and_rejects_unknown_ones() {
        let c: StoreConfig = serde_yaml::from_str(
            "dir: /var/lib/comet\nflush-mode: sync\nsegment-size: 268435456\nretention-hours: 24\n",
        )
        .expect("parses");
        assert_eq!(c.flush_mode, FlushMode::Sync);
        assert_eq!((c.segment_size, c.retention_hours), (256 << 20, 24));
        assert_eq!(c.flush_interval_ms, 500, "unset keys keep their defaults");
        let err = serde_yaml::from_str::<StoreConfig>("segment_size: 1\n").expect_err("snake_case is unknown");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn too_small_segments_are_rejected_with_the_key_name() {
        let c = StoreConfig { segment_size: 1024, ..StoreConfig::default() };
        let err = c.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("segment-size"), "{err}");
    }
}
