//! The store as its users see it: append, read back, filter, look up, wait, reopen.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use comet_model::{CommitLogOffset, QueueOffset, tag_hash};
use comet_store::{Error, GetStatus, MessageFilter, Store, StoredMessage};
use common::{body, config, message, sync_config};

struct TagFilter(&'static str);

impl MessageFilter for TagFilter {
    fn matches_tag_hash(&self, h: i64) -> bool {
        h == tag_hash(self.0)
    }
    fn matches(&self, m: &StoredMessage) -> bool {
        m.tags() == self.0
    }
}

#[test]
fn appended_messages_read_back_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    let mut offsets = Vec::new();
    for seq in 0..500 {
        let r = store.append(&message("T", 0, seq)).unwrap();
        assert_eq!(r.queue_offset, QueueOffset(seq));
        offsets.push(r.offset);
    }
    for (seq, off) in offsets.iter().enumerate() {
        let m = store.read(*off).unwrap();
        assert_eq!(m.body(), body(0, seq as u64));
        assert_eq!(m.msg_id(), format!("id-0-{seq}"));
        assert_eq!(m.property("seq"), Some(seq.to_string().as_str()));
        assert_eq!(m.queue_offset(), QueueOffset(seq as u64));
    }
    assert!(store.stats().max_offset.0 > 64 * 1024 * 3, "the test spans several segments");
}

#[test]
fn batches_are_atomic_and_get_consecutive_queue_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    let batch: Vec<_> = (0..20).map(|i| message("T", 1, i)).collect();
    let r1 = store.append_batch(&batch).unwrap();
    let r2 = store.append_batch(&batch).unwrap();
    let qo: Vec<u64> = r1.iter().chain(&r2).map(|r| r.queue_offset.0).collect();
    assert_eq!(qo, (0..40).collect::<Vec<_>>());
    let too_big: Vec<_> = (0..200).map(|i| message("T", 1, i)).collect();
    assert!(matches!(store.append_batch(&too_big), Err(Error::BatchTooLarge { .. })));
    wait_dispatched(&store, "T", 1, 40);
    assert_eq!(store.queue_range("T", 1), Some((QueueOffset(0), QueueOffset(40))));
}

#[test]
fn get_messages_pages_through_a_queue_across_segments_with_tag_filter() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    for seq in 0..400 {
        store.append(&message("T", 2, seq)).unwrap();
    }
    store.flush().unwrap();
    wait_dispatched(&store, "T", 2, 400);
    let mut from = QueueOffset(0);
    let mut seen = Vec::new();
    loop {
        let got = store.get_messages("T", 2, from, 32, 1 << 20, None).unwrap();
        if got.status == GetStatus::NoNewMessage {
            break;
        }
        assert_eq!(got.status, GetStatus::Found);
        seen.extend(got.messages.iter().map(|m| m.queue_offset().0));
        from = got.next_offset;
    }
    assert_eq!(seen, (0..400).collect::<Vec<_>>());

    let odd = store.get_messages("T", 2, QueueOffset(0), 1000, 1 << 30, Some(&TagFilter("odd"))).unwrap();
    assert!(odd.messages.iter().all(|m| m.tags() == "odd"));
    assert_eq!(odd.messages.len(), 200);
    let max_bytes = store.get_messages("T", 2, QueueOffset(0), 1000, 2000, None).unwrap();
    assert!(max_bytes.messages.len() < 10 && !max_bytes.messages.is_empty());

    let none = store.get_messages("T", 2, QueueOffset(400), 10, 1 << 20, None).unwrap();
    assert_eq!(none.status, GetStatus::NoNewMessage);
    let over = store.get_messages("T", 2, QueueOffset(401), 10, 1 << 20, None).unwrap();
    assert_eq!((over.status, over.next_offset), (GetStatus::OffsetOverflow, QueueOffset(400)));
    let missing = store.get_messages("Nope", 0, QueueOffset(0), 10, 1 << 20, None).unwrap();
    assert_eq!(missing.status, GetStatus::NoSuchQueue);
}

#[test]
fn keys_ids_and_times_are_searchable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    let mut results = Vec::new();
    for seq in 0..300 {
        results.push(store.append(&message("T", seq as u32 % 3, seq)).unwrap());
    }
    wait_dispatched(&store, "T", 2, 100);
    let by_id = store.query_by_id("id-1-100").unwrap().expect("found by id");
    assert_eq!(by_id.body(), body(1, 100));
    // Every id, across index files (256 entries each here) and the groups the dispatcher adds them in.
    for seq in 0..300u64 {
        let writer = seq as u32 % 3;
        let found = store.query_by_id(&format!("id-{writer}-{seq}")).unwrap();
        assert_eq!(found.map(|m| m.body()), Some(body(writer, seq)), "id-{writer}-{seq}");
    }
    assert!(store.query_by_id("id-9-9").unwrap().is_none());
    let by_key = store.query_by_key("T", "w2", 1000, 0, u64::MAX).unwrap();
    assert_eq!(by_key.len(), 100, "every message of writer 2 carries key w2");
    assert!(by_key.windows(2).all(|w| w[0].physical_offset() > w[1].physical_offset()), "newest first");
    assert!(store.query_by_key("Other", "w2", 10, 0, u64::MAX).unwrap().is_empty());

    let ts = results[150].store_timestamp;
    let at = store.offset_by_time("T", 0, ts).unwrap();
    let first = store.read(store.get_messages("T", 0, at, 1, 1 << 20, None).unwrap().messages[0].physical_offset());
    assert!(first.unwrap().store_timestamp() >= ts);
    assert_eq!(store.offset_by_time("T", 0, u64::MAX), Some(QueueOffset(100)));

    // Store times of single entries (consumer lag in time) and of the oldest stored message.
    assert_eq!(store.store_time_at("T", 0, QueueOffset(50)), Some(results[150].store_timestamp));
    assert_eq!(store.store_time_at("T", 0, QueueOffset(100)), None, "the end holds no message yet");
    assert_eq!(store.store_time_at("Other", 0, QueueOffset(0)), None);
    assert_eq!(store.oldest_store_time(), Some(results[0].store_timestamp));
}

#[test]
fn a_message_a_consumer_can_read_is_already_found_by_its_id_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    const N: u64 = 3000;
    let writer = {
        let s = store.clone();
        std::thread::spawn(move || {
            for first in (0..N).step_by(50) {
                let batch: Vec<_> = (first..first + 50).map(|seq| message("T", 0, seq)).collect();
                s.append_batch(&batch).unwrap();
            }
        })
    };
    // Follow the queue as a consumer does; each message it sees must already be indexed (index entries are
    // published before consume-queue entries, a group at a time).
    let mut next = QueueOffset(0);
    while next.0 < N {
        if !store.wait_for_messages("T", 0, next, Duration::from_secs(20)) {
            panic!("the queue stopped at {next:?}");
        }
        let got = store.get_messages("T", 0, next, 64, 1 << 20, None).unwrap();
        for m in &got.messages {
            let seq = m.queue_offset().0;
            let by_id = store.query_by_id(&format!("id-0-{seq}")).unwrap();
            assert_eq!(by_id.map(|f| f.queue_offset()), Some(m.queue_offset()), "id-0-{seq} visible but not indexed");
            let by_key = store.query_by_key("T", &format!("k-0-{seq}"), 2, 0, u64::MAX).unwrap();
            assert_eq!(by_key.len(), 1, "k-0-{seq} visible but not indexed");
        }
        next = got.next_offset;
    }
    writer.join().unwrap();
}

#[test]
fn an_empty_store_has_no_oldest_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(store.oldest_store_time(), None);
}

#[test]
fn concurrent_writers_roll_segments_without_losing_or_mixing_messages() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    let threads: Vec<_> = (0..8u32)
        .map(|w| {
            let s = store.clone();
            std::thread::spawn(move || {
                (0..1500).map(|seq| s.append(&message("T", w, seq)).unwrap()).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all = Vec::new();
    for (w, t) in threads.into_iter().enumerate() {
        let results = t.join().unwrap();
        let qo: Vec<u64> = results.iter().map(|r| r.queue_offset.0).collect();
        assert_eq!(qo, (0..1500).collect::<Vec<_>>(), "writer {w} got consecutive queue offsets");
        all.extend(results.into_iter().map(|r| (w as u32, r)));
    }
    let mut offsets: Vec<u64> = all.iter().map(|(_, r)| r.offset.0).collect();
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len(), 8 * 1500, "no two messages share an offset");
    for (w, r) in &all {
        let m = store.read(r.offset).unwrap();
        assert_eq!((m.queue_id(), m.queue_offset()), (*w, r.queue_offset));
        assert_eq!(m.body(), body(*w, r.queue_offset.0));
    }
    for w in 0..8 {
        wait_dispatched(&store, "T", w, 1500);
    }
    let segments = std::fs::read_dir(dir.path().join("commitlog")).unwrap().count();
    assert!(segments > 20, "roll-over happened ({segments} segments)");
}

#[test]
fn sync_flush_acknowledges_concurrent_writers_and_consumers_see_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(sync_config(dir.path())).unwrap();
    let threads: Vec<_> = (0..4u32)
        .map(|w| {
            let s = store.clone();
            std::thread::spawn(move || {
                for seq in 0..200 {
                    s.append(&message("S", w, seq)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = store.stats();
    assert_eq!(stats.flushed_offset, stats.max_offset, "every acknowledged byte is durable");
    for w in 0..4 {
        wait_dispatched(&store, "S", w, 200);
    }
}

#[test]
fn waiting_consumer_wakes_when_a_message_is_dispatched() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    store.append(&message("W", 0, 0)).unwrap();
    wait_dispatched(&store, "W", 0, 1);
    assert!(!store.wait_for_messages("W", 0, QueueOffset(1), Duration::from_millis(50)));
    let s = store.clone();
    let waiter = std::thread::spawn(move || s.wait_for_messages("W", 0, QueueOffset(1), Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(20));
    let t = std::time::Instant::now();
    store.append(&message("W", 0, 1)).unwrap();
    assert!(waiter.join().unwrap());
    assert!(t.elapsed() < Duration::from_secs(5));

    struct Count(std::sync::atomic::AtomicU64);
    impl comet_store::ArrivalListener for Count {
        fn on_arrival(&self, _: &str, _: u32, max: QueueOffset) {
            self.0.fetch_max(max.0, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let listener = Arc::new(Count(0.into()));
    store.set_arrival_listener(listener.clone());
    store.append(&message("W", 0, 2)).unwrap();
    assert!(store.wait_for_messages("W", 0, QueueOffset(2), Duration::from_secs(10)));
    assert_eq!(listener.0.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[test]
fn second_opener_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    match Store::open(config(dir.path())) {
        Err(Error::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected Locked, got {:?}", other.err()),
    }
    store.close().unwrap();
    Store::open(config(dir.path())).unwrap();
}

#[test]
fn clean_reopen_scans_nothing_and_continues_queue_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    for seq in 0..300 {
        store.append(&message("T", 0, seq)).unwrap();
    }
    let end = store.stats().max_offset;
    store.close().unwrap();
    let (store, report) = Store::open_with_report(config(dir.path())).unwrap();
    assert!(!report.after_crash);
    assert_eq!((report.scanned_from, report.end, report.redispatched), (end, end, 0));
    assert_eq!(store.append(&message("T", 0, 300)).unwrap().queue_offset, QueueOffset(300));
    assert_eq!(store.read(CommitLogOffset(0)).unwrap().body(), body(0, 0));
}

#[test]
fn invalid_messages_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    let mut m = message("bad topic", 0, 0);
    assert!(matches!(store.append(&m), Err(Error::InvalidMessage { .. })));
    m.topic = "T".into();
    m.body = vec![0u8; 16 * 1024 + 1].into();
    assert!(matches!(store.append(&m), Err(Error::MessageTooLarge { .. })));
    assert_eq!(store.stats().max_offset, CommitLogOffset(0));
    assert!(matches!(store.read(CommitLogOffset(0)), Err(Error::NoRecord { .. })));
}

/// Waits (bounded) until the dispatcher has made `n` messages of a queue visible.
fn wait_dispatched(store: &Store, topic: &str, queue: u32, n: u64) {
    if n == 0 {
        return;
    }
    assert!(
        store.wait_for_messages(topic, queue, QueueOffset(n - 1), Duration::from_secs(20)),
        "{topic}/{queue} never reached {n} messages"
    );
}

/// The test store for 2 MiB messages: 8 MiB segments, so a few dozen messages span many of them.
fn large_messages(dir: &std::path::Path) -> comet_store::StoreConfig {
    comet_store::StoreConfig {
        segment_size: 8 << 20,
        max_message_size: 3 << 20,
        consume_queue_file_entries: 1024,
        ..config(dir)
    }
}

#[test]
fn a_read_counts_as_resident_in_the_last_128_mib_in_the_page_cache_or_at_the_queues_end() {
    let dir = tempfile::tempdir().unwrap();
    // A 4 MiB page-cache budget: flushed data beyond the resident window leaves the page cache.
    let cfg =
        comet_store::StoreConfig { flush_interval_ms: 20, log_cache_bytes: 4 << 20, ..large_messages(dir.path()) };
    let store = Store::open(cfg).unwrap();
    assert!(store.is_resident("T", 0, QueueOffset(0)), "an unknown queue has nothing to wait for");
    // 136 MiB in 2 MiB messages: the first few fall out of the resident window.
    let mut big = message("T", 0, 0);
    let mut first = None;
    for seq in 0..68 {
        big.body = bytes::Bytes::from(vec![seq as u8; 2 << 20]);
        first.get_or_insert(store.append(&big).unwrap().offset);
    }
    assert!(store.is_resident("T", 0, QueueOffset(67)), "the newest message");
    assert!(store.is_resident("T", 0, QueueOffset(68)), "the queue's end: only new arrivals");
    let segment = dir.path().join("commitlog").join(format!("{:020}", 0));
    if on_tmpfs(dir.path()) {
        eprintln!("temp dir on tmpfs: its pages cannot leave the page cache");
        assert!(store.is_resident("T", 0, QueueOffset(0)), "136 MiB behind the end, in the page cache");
        return;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while cached_pages(&segment) > 0 {
        assert!(std::time::Instant::now() < deadline, "{} pages still cached", cached_pages(&segment));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!store.is_resident("T", 0, QueueOffset(0)), "136 MiB behind the end, out of the page cache");
    // Reading it brings its pages back: a reader catching up finds the rest of its batch cached.
    let first = store.read(first.unwrap()).unwrap();
    assert!(first.body().iter().all(|b| *b == 0));
    assert!(store.is_resident("T", 0, QueueOffset(0)), "read back into the page cache");
}

/// How many of `path`'s pages are in the page cache (`mincore` over a read-only mapping of it).
fn cached_pages(path: &std::path::Path) -> usize {
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: a read-only mapping used only for `mincore`; nobody reads through it.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let mut resident = vec![0u8; map.len().div_ceil(4096)];
    // SAFETY: the range is the whole mapping and the vector has one byte per page of it.
    let r = unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, map.len(), resident.as_mut_ptr()) };
    assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
    resident.iter().filter(|b| **b & 1 == 1).count()
}

/// True when `path` lies on tmpfs, whose pages are the file itself and cannot be dropped.
fn on_tmpfs(path: &std::path::Path) -> bool {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `statfs` is plain data; all zeroes is a valid value of it.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a struct to fill.
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut s) }, 0);
    s.f_type == libc::TMPFS_MAGIC
}

#[test]
fn flushed_log_data_beyond_the_cache_budget_leaves_the_page_cache_and_still_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        comet_store::StoreConfig { flush_interval_ms: 20, log_cache_bytes: 4 << 20, ..large_messages(dir.path()) };
    let store = Store::open(cfg).unwrap();
    // 140 MiB in 2 MiB messages: the first segments lie beyond the 128 MiB resident window plus the budget.
    let mut big = message("T", 0, 0);
    let mut offsets = Vec::new();
    for seq in 0..70u8 {
        big.body = bytes::Bytes::from(vec![seq; 2 << 20]);
        offsets.push(store.append(&big).unwrap().offset);
    }
    let first = dir.path().join("commitlog").join(format!("{:020}", 0));
    if on_tmpfs(dir.path()) {
        eprintln!("temp dir on tmpfs: its pages cannot leave the page cache; checking the data only");
    } else {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while cached_pages(&first) > 0 {
            assert!(std::time::Instant::now() < deadline, "{} pages still cached", cached_pages(&first));
            std::thread::sleep(Duration::from_millis(50));
        }
        let newest =
            dir.path().join("commitlog").join(format!("{:020}", store.stats().max_offset.0 / (8 << 20) * (8 << 20)));
        assert!(cached_pages(&newest) > 0, "the resident window stays cached");
    }
    for (seq, off) in offsets.iter().enumerate() {
        let m = store.read(*off).unwrap();
        assert!(m.body().len() == 2 << 20 && m.body().iter().all(|b| *b == seq as u8), "message {seq}");
    }
}
