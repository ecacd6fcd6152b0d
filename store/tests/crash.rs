//! Crash safety: a child process appends in sync-flush mode and is SIGKILLed mid-stream; every acknowledged
//! message must survive byte for byte, no partial record may be visible, and the derived data must agree with
//! the CommitLog. Plus torn tails, bit flips and foreign files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use comet_model::{CommitLogOffset, QueueOffset};
use comet_store::{Error, GetStatus, Store};
use common::{body, config, message, sync_config};

const WRITERS: u32 = 4;
const CHILD_ENV: &str = "COMET_CRASH_CHILD_DIR";

/// The child side: not a test on its own (returns at once unless started by the crash test).
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let store = Store::open(sync_config(std::path::Path::new(&dir))).unwrap();
    let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, out) = (store.clone(), out.clone());
            std::thread::spawn(move || {
                // Continue where the previous incarnation stopped: seq == queue offset.
                let mut seq = store.queue_range("T", w).map_or(0, |(_, max)| max.0);
                loop {
                    let r = store.append(&message("T", w, seq)).unwrap();
                    assert_eq!(r.queue_offset.0, seq);
                    let mut o = out.lock().unwrap();
                    writeln!(o, "ACK {w} {seq} {}", r.offset.0).unwrap();
                    o.flush().unwrap();
                    seq += 1;
                }
            })
        })
        .collect();
    // The writers loop until the parent kills this process.
    for t in threads {
        let _ = t.join();
    }
}

#[test]
fn acknowledged_messages_survive_sigkill_repeatedly() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: BTreeMap<(u32, u64), u64> = BTreeMap::new();
    for round in 0..5u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let target = 300 + round * 250;
        let mut n = 0;
        while n < target {
            let line = lines.next().expect("child died early").unwrap();
            if let Some((w, seq, off)) = parse_ack(&line) {
                acked.insert((w, seq), off);
                n += 1;
            }
        }
        child.kill().unwrap(); // SIGKILL, mid-stream
        // Acks printed before death are promises too.
        for line in lines {
            if let Some((w, seq, off)) = parse_ack(&line.unwrap_or_default()) {
                acked.insert((w, seq), off);
            }
        }
        child.wait().unwrap();
        verify(dir.path(), &acked);
    }
}

fn parse_ack(line: &str) -> Option<(u32, u64, u64)> {
    let mut it = line.strip_prefix("ACK ")?.split(' ');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn verify(dir: &std::path::Path, acked: &BTreeMap<(u32, u64), u64>) {
    let (store, report) = Store::open_with_report(sync_config(dir)).unwrap();
    assert!(report.after_crash, "the child never shut down cleanly");
    for (&(w, seq), &off) in acked {
        let m = store.read(CommitLogOffset(off)).unwrap_or_else(|e| panic!("acked {w}/{seq} at {off}: {e}"));
        assert_eq!((m.queue_id(), m.queue_offset().0), (w, seq));
        assert_eq!(m.body(), body(w, seq), "acked {w}/{seq} body");
    }
    // Consume queues agree with the CommitLog: every queue is a gap-free run of valid records, seq = offset,
    // and contains every acknowledged message.
    for w in 0..WRITERS {
        let mut from = QueueOffset(0);
        loop {
            let got = store.get_messages("T", w, from, 256, 1 << 24, None).unwrap();
            for m in &got.messages {
                assert_eq!((m.queue_id(), m.queue_offset()), (w, from));
                assert_eq!(m.body(), body(w, from.0));
                from = from.next();
            }
            if got.status != GetStatus::Found {
                break;
            }
        }
        let max_acked = acked.range((w, 0)..(w + 1, 0)).next_back().map_or(0, |((_, s), _)| s + 1);
        assert!(from.0 >= max_acked, "queue {w} ends at {from} but {max_acked} were acknowledged");
        // And the index: the newest acknowledged message is found by id and by key.
        if max_acked > 0 {
            let id = format!("id-{w}-{}", max_acked - 1);
            assert!(store.query_by_id(&id).unwrap().is_some(), "{id} in the index");
            let key = format!("k-{w}-{}", max_acked - 1);
            assert_eq!(store.query_by_key("T", &key, 4, 0, u64::MAX).unwrap().len(), 1, "{key} in the index");
        }
    }
    store.close().unwrap();
}

/// Writes `n` messages of writer 0 and closes cleanly; returns their offsets.
fn fill(dir: &std::path::Path, n: u64) -> Vec<u64> {
    let store = Store::open(config(dir)).unwrap();
    let offs = (0..n).map(|seq| store.append(&message("T", 0, seq)).unwrap().offset.0).collect();
    store.close().unwrap();
    offs
}

/// Makes the directory look like the process died: marker present, checkpoint gone (so recovery rescans).
fn pretend_crash(dir: &std::path::Path) {
    std::fs::write(dir.join("abort"), b"").unwrap();
    std::fs::remove_file(dir.join("checkpoint")).unwrap();
}

fn patch(dir: &std::path::Path, offset: u64, f: impl FnOnce(&mut [u8])) {
    let seg_size = config(dir).segment_size;
    let path = dir.join("commitlog").join(format!("{:020}", offset / seg_size * seg_size));
    let mut bytes = std::fs::read(&path).unwrap();
    f(&mut bytes[(offset % seg_size) as usize..]);
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn torn_tail_is_cut_and_writing_resumes_there() {
    let dir = tempfile::tempdir().unwrap();
    let offs = fill(dir.path(), 100);
    let last = offs[99];
    patch(dir.path(), last + 40, |b| b[..200].fill(0)); // the last record is half written
    pretend_crash(dir.path());
    let (store, report) = Store::open_with_report(config(dir.path())).unwrap();
    assert!(report.truncated_bytes > 0);
    assert_eq!(report.end, CommitLogOffset(last));
    assert!(matches!(store.read(CommitLogOffset(last)), Err(Error::NoRecord { .. })));
    assert_eq!(store.read(CommitLogOffset(offs[98])).unwrap().body(), body(0, 98));
    let r = store.append(&message("T", 0, 99)).unwrap();
    assert_eq!((r.offset.0, r.queue_offset.0), (last, 99));
}

#[test]
fn bit_flip_after_the_checkpoint_truncates_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let offs = fill(dir.path(), 100);
    patch(dir.path(), offs[60] + 120, |b| b[0] ^= 0x10);
    pretend_crash(dir.path());
    let (store, report) = Store::open_with_report(config(dir.path())).unwrap();
    assert_eq!(report.end, CommitLogOffset(offs[60]));
    assert_eq!(store.queue_range("T", 0), Some((QueueOffset(0), QueueOffset(60))));
}

#[test]
fn bit_flip_in_old_data_is_reported_on_read_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let offs = fill(dir.path(), 100);
    patch(dir.path(), offs[10] + 150, |b| b[0] ^= 0x01);
    let store = Store::open(config(dir.path())).unwrap();
    match store.read(CommitLogOffset(offs[10])) {
        Err(Error::Corrupt { path, offset, reason }) => {
            assert!(path.starts_with(dir.path().join("commitlog")));
            assert_eq!(offset, offs[10] % config(dir.path()).segment_size);
            assert!(reason.contains("CRC"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(store.get_messages("T", 0, QueueOffset(10), 1, 1 << 20, None).is_err());
    assert_eq!(store.read(CommitLogOffset(offs[11])).unwrap().body(), body(0, 11));
}

#[test]
fn corruption_found_after_a_clean_shutdown_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let offs = fill(dir.path(), 50);
    patch(dir.path(), offs[20] + 130, |b| b[0] ^= 0x80);
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap(); // forces a full scan, no crash marker
    match Store::open(config(dir.path())) {
        Err(Error::Corrupt { path, offset, .. }) => {
            assert!(path.starts_with(dir.path().join("commitlog")));
            assert_eq!(offset, offs[20] % config(dir.path()).segment_size);
        }
        other => panic!("expected Corrupt, got {:?}", other.err()),
    }
}

#[test]
fn foreign_and_garbage_files_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("commitlog")).unwrap();
    std::fs::write(dir.path().join("commitlog").join("README"), b"hello").unwrap();
    match Store::open(config(dir.path())) {
        Err(Error::Corrupt { path, .. }) => assert!(path.ends_with("README")),
        other => panic!("expected Corrupt, got {:?}", other.err()),
    }
    std::fs::remove_file(dir.path().join("commitlog").join("README")).unwrap();
    let garbage: Vec<u8> = (0..65536u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(dir.path().join("commitlog").join(format!("{:020}", 0)), garbage).unwrap();
    match Store::open(config(dir.path())) {
        Err(Error::Corrupt { path, offset, .. }) => {
            assert!(path.ends_with("00000000000000000000"));
            assert_eq!(offset, 0);
        }
        other => panic!("expected Corrupt, got {:?}", other.err()),
    }
}

#[test]
fn a_lost_checkpoint_rebuilds_queues_and_index_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 200);
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let (store, report) = Store::open_with_report(config(dir.path())).unwrap();
    assert_eq!(report.redispatched, 200);
    assert_eq!(store.queue_range("T", 0), Some((QueueOffset(0), QueueOffset(200))));
    assert!(store.query_by_id("id-0-123").unwrap().is_some());
    std::thread::sleep(Duration::from_millis(1));
}

#[test]
fn empty_files_left_by_an_interrupted_creation_are_removed_at_start_up() {
    // A process killed between creating a data file and reserving its space leaves an empty file behind.
    let dir = tempfile::tempdir().unwrap();
    let offs = fill(dir.path(), 300);
    let seg_size = config(dir.path()).segment_size;
    let next_segment = (offs[299] / seg_size + 1) * seg_size;
    std::fs::write(dir.path().join("commitlog").join(format!("{next_segment:020}")), b"").unwrap();
    std::fs::write(dir.path().join("consumequeue/T/0").join(format!("{:020}", 100_000)), b"").unwrap();
    std::fs::write(dir.path().join("index").join(format!("{:020}", offs[299] + 1)), b"").unwrap();
    std::fs::write(dir.path().join("abort"), b"").unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(store.queue_range("T", 0), Some((QueueOffset(0), QueueOffset(300))));
    assert_eq!(store.read(CommitLogOffset(offs[299])).unwrap().body(), body(0, 299));
    assert_eq!(store.append(&message("T", 0, 300)).unwrap().queue_offset, QueueOffset(300));
}

#[test]
fn a_damaged_text_field_met_while_rebuilding_queues_is_reported_not_dispatched() {
    let dir = tempfile::tempdir().unwrap();
    let offs = fill(dir.path(), 50);
    // The topic's first byte (after the 104-byte header and its 2-byte length) becomes invalid UTF-8, and the
    // queues are lost, so the records are dispatched again at start-up: the damaged one is named (its checksum
    // or its text), never filed under some other topic.
    patch(dir.path(), offs[20] + 106, |b| b[0] = 0xFF);
    std::fs::remove_dir_all(dir.path().join("consumequeue")).unwrap();
    match Store::open(config(dir.path())) {
        Err(Error::Corrupt { path, offset, reason }) => {
            assert!(path.starts_with(dir.path().join("commitlog")));
            assert_eq!(offset, offs[20] % config(dir.path()).segment_size);
            assert!(reason.contains("CRC") || reason.contains("UTF-8"), "{reason}");
        }
        other => panic!("expected Corrupt, got {:?}", other.err()),
    }
}
