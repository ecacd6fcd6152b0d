//! Helpers shared by the store's crate tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use bytes::Bytes;
use comet_store::{FlushMode, NewMessage, StoreConfig};

/// A configuration with small files so tests exercise roll-over, with background timers slowed down so they
/// do not interfere with explicit calls. Disk usage is measured against a simulated 1 TiB capacity: the real
/// filesystem of a CI machine may be fuller than the clean watermark, which would delete young segments.
pub fn config(dir: &Path) -> StoreConfig {
    StoreConfig {
        segment_size: 64 * 1024,
        disk_capacity_bytes: Some(1 << 40),
        max_message_size: 16 * 1024,
        consume_queue_file_entries: 128,
        index_slots: 64,
        index_entries: 256,
        clean_interval_ms: 3_600_000,
        ..StoreConfig::new(dir)
    }
}

pub fn sync_config(dir: &Path) -> StoreConfig {
    StoreConfig { flush_mode: FlushMode::Sync, ..config(dir) }
}

/// The deterministic body of message `seq` of `writer`: its length and bytes depend on both.
pub fn body(writer: u32, seq: u64) -> Bytes {
    let len = 1 + (seq as usize * 37 + writer as usize * 11) % 700;
    Bytes::from((0..len).map(|i| (i as u64 ^ seq ^ u64::from(writer) << 3) as u8).collect::<Vec<u8>>())
}

/// Message `seq` of `writer`: queue = writer, a key and an id derived from both.
pub fn message(topic: &str, writer: u32, seq: u64) -> NewMessage {
    let mut m = NewMessage::new(topic, writer, body(writer, seq));
    m.msg_id = format!("id-{writer}-{seq}");
    m.keys = format!("k-{writer}-{seq} w{writer}");
    m.tags = if seq.is_multiple_of(2) { "even".into() } else { "odd".into() };
    m.properties = vec![("seq".into(), seq.to_string())];
    m.born_timestamp = 1_700_000_000_000 + seq;
    m
}
