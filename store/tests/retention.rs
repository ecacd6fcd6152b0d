//! Retention and disk protection: old segments go, readers learn the new minimum, a full disk refuses writes
//! and recovers when space returns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use comet_model::{CommitLogOffset, QueueOffset};
use comet_store::{Error, GetStatus, Store, StoreConfig};
use common::{config, message};

const HOUR_MS: u64 = 3_600_000;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn fill(store: &Store, n: u64) -> Vec<CommitLogOffset> {
    let offs = (0..n).map(|seq| store.append(&message("T", 0, seq)).unwrap().offset).collect();
    store.flush().unwrap();
    assert!(store.wait_for_messages("T", 0, QueueOffset(n - 1), Duration::from_secs(20)));
    offs
}

fn segment_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("commitlog")).unwrap().count()
}

#[test]
fn expired_segments_are_deleted_and_readers_get_the_new_minimum() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    let offs = fill(&store, 1500);
    let before = segment_count(dir.path());
    assert!(before > 5);

    let nothing = store.enforce_retention(now_ms()).unwrap();
    assert_eq!(nothing.deleted_segments, 0, "young data stays");

    let report = store.enforce_retention(now_ms() + 73 * HOUR_MS).unwrap();
    assert_eq!(report.deleted_segments, before - 1, "all but the active segment");
    assert_eq!(segment_count(dir.path()), 1);
    let min = store.stats().min_offset;
    assert!(min > CommitLogOffset(0));

    match store.read(offs[0]) {
        Err(Error::OffsetMoved { requested, min: m }) => assert_eq!((requested, m), (offs[0], min)),
        other => panic!("expected OffsetMoved, got {other:?}"),
    }
    let got = store.get_messages("T", 0, QueueOffset(0), 10, 1 << 20, None).unwrap();
    assert_eq!(got.status, GetStatus::OffsetMoved);
    let new_min = got.next_offset;
    assert!(new_min > QueueOffset(0));
    let resumed = store.get_messages("T", 0, new_min, 10, 1 << 20, None).unwrap();
    assert_eq!(resumed.status, GetStatus::Found);
    assert!(resumed.messages[0].physical_offset() >= min);
    assert_eq!(resumed.messages[0].queue_offset(), new_min);

    // Consume-queue files wholly below the minimum are gone too (128 entries per file in the test config).
    let cq_files = std::fs::read_dir(dir.path().join("consumequeue/T/0")).unwrap().count();
    assert!(cq_files <= 2, "{cq_files} consume-queue files remain");
    // And the minimum survives a restart.
    store.close().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(store.queue_range("T", 0).unwrap().0, new_min);
}

#[test]
fn full_disk_refuses_writes_clearly_and_accepts_them_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        disk_capacity_bytes: Some(10 * 64 * 1024),
        disk_clean_ratio: 0.99,
        disk_force_clean_ratio: 0.995,
        disk_full_ratio: 0.9,
        ..config(dir.path())
    };
    let store = Store::open(cfg).unwrap();
    let mut refused = None;
    for seq in 0..100_000 {
        match store.append(&message("T", 0, seq)) {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
        if seq % 50 == 0 {
            store.enforce_retention(now_ms()).unwrap(); // what the cleaner does every pass
        }
    }
    let err = refused.expect("writes were refused");
    assert!(matches!(err, Error::DiskFull { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("disk full"), "{err}");
    assert!(store.stats().disk_full);
    let end = store.stats().max_offset;
    assert!(store.append(&message("T", 0, 0)).is_err(), "still refused");
    assert_eq!(store.stats().max_offset, end, "a refused write writes nothing");

    // Space returns when old data expires.
    let appended = store.stats().max_offset;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while store.stats().dispatched_offset < appended && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5)); // the dispatcher catches up with the last writes
    }
    let report = store.enforce_retention(now_ms() + 73 * HOUR_MS).unwrap();
    assert!(report.deleted_segments > 0 && !report.disk_full);
    store.append(&message("T", 0, 1)).unwrap();
}

#[test]
fn usage_above_the_force_ratio_deletes_oldest_data_even_if_young() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        disk_capacity_bytes: Some(20 * 64 * 1024),
        disk_clean_ratio: 0.5,
        disk_force_clean_ratio: 0.7,
        disk_full_ratio: 0.95,
        ..config(dir.path())
    };
    let store = Store::open(cfg).unwrap();
    fill(&store, 4000); // ~1.3 MB of records: ~17 segments, 85 % of the capacity
    let before = store.stats().disk_usage;
    let report = store.enforce_retention(now_ms()).unwrap();
    assert!(report.usage_before >= 0.7, "usage {before} should exceed the force ratio");
    assert!(report.usage_after < 0.5, "forced cleaning goes below the clean ratio: {}", report.usage_after);
    // Between the clean and force ratios, one segment per pass.
    let cfg2 = StoreConfig {
        disk_capacity_bytes: Some(20 * 64 * 1024),
        disk_clean_ratio: 0.3,
        disk_force_clean_ratio: 0.9,
        ..config(dir.path())
    };
    store.close().unwrap();
    let store = Store::open(cfg2).unwrap();
    let report = store.enforce_retention(now_ms()).unwrap();
    assert_eq!(report.deleted_segments, 1);
}
