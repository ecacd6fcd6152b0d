//! Replication primitives: a slave fed by `read_raw` → `append_raw` holds a byte-identical log with the same
//! queues and index; bad chunks are refused without a trace; a diverged tail is truncated and refetched; a log
//! restarts at a later base; all of it survives reopen and crash.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use comet_model::{CommitLogOffset, QueueId, QueueOffset};
use comet_store::{ArrivalListener, Error, GetStatus, NewMessage, Store, StoreConfig};
use common::{config, sync_config};

const SEG: u64 = 64 * 1024;
const TOPICS: [&str; 3] = ["Orders", "Audit", "Clicks"];
const QUEUES: u32 = 3;
const CHILD_ENV: &str = "COMET_REPLICATION_CHILD";

/// xorshift64*: deterministic variety without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A message with a unique id `{tag}-{n}` and keys `key-{tag}-{n}` and `all-{tag}`; bodies of varied sizes.
fn message(rng: &mut Rng, tag: &str, n: u64) -> NewMessage {
    let topic = TOPICS[rng.below(TOPICS.len() as u64) as usize];
    let size = if rng.below(20) == 0 { 4000 + rng.below(8000) } else { rng.below(1500) } as usize;
    let body: Vec<u8> = (0..size).map(|i| (i as u64 ^ n) as u8).collect();
    let mut m = NewMessage::new(topic, rng.below(u64::from(QUEUES)) as u32, Bytes::from(body));
    m.msg_id = format!("{tag}-{n}");
    m.keys = format!("key-{tag}-{n} all-{tag}");
    m.tags = if n.is_multiple_of(2) { "even".into() } else { "odd".into() };
    m
}

/// Appends `n` messages in random batches (1 to 20 messages).
fn produce(store: &Store, rng: &mut Rng, tag: &str, counter: &mut u64, n: u64) {
    let target = *counter + n;
    while *counter < target {
        let batch = (1 + rng.below(20)).min(target - *counter);
        let msgs: Vec<NewMessage> = (0..batch).map(|i| message(rng, tag, *counter + i)).collect();
        store.append_batch(&msgs).unwrap();
        *counter += batch;
    }
}

/// Feeds `slave` from `master` until it has everything, in chunks of random sizes up to `max_chunk`.
fn replicate(master: &Store, slave: &Store, rng: &mut Rng, max_chunk: u64) -> u64 {
    let mut chunks = 0;
    loop {
        let at = slave.end_offset();
        let max = 1 + rng.below(max_chunk) as usize;
        let Some(chunk) = master.read_raw(at, max).unwrap() else { break };
        assert!(!chunk.is_empty());
        let end = slave.append_raw(at, &chunk).unwrap_or_else(|e| panic!("append_raw at {at}: {e}"));
        assert!(end > at);
        chunks += 1;
    }
    assert_eq!(slave.end_offset(), master.end_offset());
    chunks
}

/// Waits until everything appended is dispatched into queues and index.
fn settle(store: &Store) {
    store.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.stats().dispatched_offset < store.end_offset() {
        assert!(Instant::now() < deadline, "dispatch never caught up: {:?}", store.stats());
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn segment_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir.join("commitlog"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap())
        })
        .collect()
}

/// Same end, and every segment file of the slave identical to the master's (the master may hold older ones).
fn assert_logs_identical(master: &Store, slave: &Store) {
    assert_eq!(master.end_offset(), slave.end_offset());
    let (m, s) = (segment_files(master.dir()), segment_files(slave.dir()));
    let from = format!("{:020}", slave.min_offset().0);
    let m: BTreeMap<_, _> = m.into_iter().filter(|(name, _)| *name >= from).collect();
    assert_eq!(m.keys().collect::<Vec<_>>(), s.keys().collect::<Vec<_>>(), "the same segments");
    for (name, bytes) in &m {
        assert!(bytes == &s[name], "segment {name} differs");
    }
}

type Entry = (u64, String, Bytes, CommitLogOffset);

fn queue_contents(store: &Store, topic: &str, queue: QueueId) -> Vec<Entry> {
    let Some((min, _)) = store.queue_range(topic, queue) else { return Vec::new() };
    let mut from = min;
    let mut out = Vec::new();
    loop {
        let got = store.get_messages(topic, queue, from, 64, 1 << 24, None).unwrap();
        for m in &got.messages {
            assert_eq!(m.queue_offset(), from, "{topic}/{queue}: contiguous");
            out.push((m.queue_offset().0, m.msg_id().to_owned(), m.body(), m.physical_offset()));
            from = from.next();
        }
        if got.status != GetStatus::Found {
            return out;
        }
    }
}

/// Every queue of the master with messages has the same range and the same messages on the slave.
fn assert_queues_identical(master: &Store, slave: &Store) {
    settle(master);
    settle(slave);
    let mut compared = 0;
    for topic in TOPICS {
        for q in 0..QUEUES {
            let m = queue_contents(master, topic, q);
            if m.is_empty() {
                continue;
            }
            assert_eq!(master.queue_range(topic, q), slave.queue_range(topic, q), "{topic}/{q} range");
            assert_eq!(m, queue_contents(slave, topic, q), "{topic}/{q} messages");
            compared += m.len();
        }
    }
    assert!(compared > 0);
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[derive(Default)]
struct Arrivals(AtomicU64);

impl ArrivalListener for Arrivals {
    fn on_arrival(&self, _: &str, _: QueueId, _: QueueOffset) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

// ---- child processes, killed with SIGKILL by the tests -------------------------------------------------------

/// The child side: not a test on its own (returns at once unless started by a test below).
#[test]
fn replication_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    println!(); // after libtest's "test replication_child ... "
    let args: Vec<&str> = spec.split('|').collect();
    // The stores stay open until the process is killed: never shut down cleanly.
    let _open: Vec<Store> = match args.as_slice() {
        ["replicate", master, slave] => {
            let master = Store::open(config(Path::new(master))).unwrap();
            let slave = Store::open(config(Path::new(slave))).unwrap();
            let mut rng = Rng(7);
            loop {
                let at = slave.end_offset();
                let Some(chunk) = master.read_raw(at, 1 + rng.below(6000) as usize).unwrap() else { break };
                let end = slave.append_raw(at, &chunk).unwrap();
                println!("END {}", end.0);
            }
            vec![master, slave]
        }
        ["truncate", slave, to] => {
            let slave = Store::open(config(Path::new(slave))).unwrap();
            slave.truncate(CommitLogOffset(to.parse().unwrap())).unwrap();
            vec![slave]
        }
        other => panic!("unknown child spec {other:?}"),
    };
    println!("DONE");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn spawn_child(spec: &str) -> (Child, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "replication_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// Runs a child until it prints `stop_at` lines starting with "END" (or "DONE"), then kills it.
fn run_child_and_kill(spec: &str, stop_after_ends: Option<usize>) -> Option<u64> {
    let (mut child, mut lines) = spawn_child(spec);
    let mut last_end = None;
    let mut ends = 0;
    loop {
        let line = lines.next().expect("child died early").unwrap();
        if let Some(end) = line.strip_prefix("END ") {
            last_end = Some(end.parse().unwrap());
            ends += 1;
            if stop_after_ends.is_some_and(|n| ends >= n) {
                break;
            }
        }
        if line == "DONE" {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    last_end
}

// ---- tests ------------------------------------------------------------------------------------------------

#[test]
fn slave_fed_by_read_raw_is_byte_identical_and_resumes_after_reopen_and_crash() {
    let (mdir, sdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = Store::open(config(mdir.path())).unwrap();
    let slave = Store::open(config(sdir.path())).unwrap();
    let arrivals = Arc::new(Arrivals::default());
    slave.set_arrival_listener(arrivals.clone());
    let mut rng = Rng(0x5eed);
    let mut n = 0;
    // Several rounds of production and replication, chunks from a few bytes (one record each) to 200 KiB (a
    // whole segment), so chunks end anywhere: mid-segment, on end markers, at the master's end.
    for round in 0..4 {
        produce(&master, &mut rng, "m", &mut n, 400);
        let chunks = replicate(&master, &slave, &mut rng, if round % 2 == 0 { 3000 } else { 200_000 });
        assert!(chunks > 0);
    }
    assert!(master.segment_bases().len() > 10, "{} segments", master.segment_bases().len());
    assert_eq!(master.segment_bases(), slave.segment_bases());
    assert_eq!(master.segment_size(), slave.segment_size());
    assert_logs_identical(&master, &slave);
    assert_queues_identical(&master, &slave);
    assert!(arrivals.0.load(Ordering::Relaxed) > 0, "arrival listeners fire on the slave");
    assert!(slave.wait_for_messages("Orders", 0, QueueOffset(0), Duration::from_secs(5)));
    for i in [0, 17, n - 1] {
        let id = format!("m-{i}");
        let m = slave.query_by_id(&id).unwrap().unwrap_or_else(|| panic!("{id} on the slave"));
        assert_eq!(m.record(), master.query_by_id(&id).unwrap().unwrap().record());
        let by_key = slave.query_by_key(m.topic(), &format!("key-m-{i}"), 10, 0, u64::MAX).unwrap();
        assert_eq!(by_key.len(), 1);
        assert_eq!(by_key[0].msg_id(), id);
    }
    assert_eq!(slave.verify().unwrap().first_error, None);

    // Divergence detection helpers agree on both sides.
    let base = slave.segment_bases()[3];
    let spans = slave.record_spans(base, CommitLogOffset(base.0 + SEG)).unwrap();
    assert_eq!(spans, master.record_spans(base, CommitLogOffset(base.0 + SEG)).unwrap());
    assert!(spans.len() > 5 && spans[0].0 == base);
    for w in spans.windows(2) {
        assert_eq!(w[0].0.0 + u64::from(w[0].1), w[1].0.0, "spans are contiguous within a segment");
    }
    let (last, len) = *spans.last().unwrap();
    assert!(last.0 + u64::from(len) <= base.0 + SEG - 8, "the end marker is not a record");
    // Across a marker: the walk continues in the next segment.
    let across = slave.record_spans(last, CommitLogOffset(base.0 + SEG + 1)).unwrap();
    assert_eq!(across, vec![(last, len), (CommitLogOffset(base.0 + SEG), across[1].1)]);
    for &(o, l) in &spans {
        assert_eq!(slave.crc_range(o, l).unwrap(), master.crc_range(o, l).unwrap());
        assert!(slave.crc_range(o, l).unwrap().is_some());
    }
    assert_eq!(slave.crc_range(last, len + 1_000_000).unwrap(), None, "crosses the segment end");
    assert_eq!(slave.crc_range(slave.end_offset(), 1).unwrap(), None, "beyond the end");
    let inside = CommitLogOffset(spans[1].0.0 + 5);
    assert!(matches!(slave.record_spans(inside, slave.end_offset()), Err(Error::NotRecordBoundary { .. })));
    assert!(matches!(master.read_raw(inside, 4096), Err(Error::NotRecordBoundary { .. })));

    // Clean reopen: the slave resumes where it stopped.
    slave.close().unwrap();
    let slave = Store::open(config(sdir.path())).unwrap();
    assert_eq!(slave.end_offset(), master.end_offset());
    produce(&master, &mut rng, "m", &mut n, 300);
    replicate(&master, &slave, &mut rng, 50_000);
    assert_logs_identical(&master, &slave);
    assert_queues_identical(&master, &slave);
    drop(slave);

    // Crash: a child process replicates in small chunks and is SIGKILLed mid-stream; the reopened slave holds a
    // prefix of the master's log (records whole) and resumes from its end.
    produce(&master, &mut rng, "m", &mut n, 600);
    settle(&master);
    let master_end = master.end_offset();
    master.close().unwrap();
    let spec = format!("replicate|{}|{}", mdir.path().display(), sdir.path().display());
    let acked = run_child_and_kill(&spec, Some(60)).expect("the child appended");
    let master = Store::open(config(mdir.path())).unwrap();
    let (slave, report) = Store::open_with_report(config(sdir.path())).unwrap();
    assert!(report.after_crash);
    let end = slave.end_offset();
    assert!(end.0 >= acked && end <= master_end, "slave end {end} after acknowledging {acked}");
    let mut rng = Rng(99);
    replicate(&master, &slave, &mut rng, 100_000);
    assert_logs_identical(&master, &slave);
    assert_queues_identical(&master, &slave);
    slave.close().unwrap();
    // A child that finished replicating and was killed: everything it appended is there after recovery.
    let slave_end = Store::open(config(sdir.path())).unwrap().end_offset();
    produce(&master, &mut rng, "m", &mut n, 200);
    settle(&master);
    let master_end = master.end_offset();
    assert!(master_end > slave_end);
    master.close().unwrap();
    assert_eq!(run_child_and_kill(&spec, None), Some(master_end.0));
    let master = Store::open(config(mdir.path())).unwrap();
    let slave = Store::open(config(sdir.path())).unwrap();
    assert_logs_identical(&master, &slave);
    assert_queues_identical(&master, &slave);
}

#[test]
fn a_promoted_slave_continues_queue_offsets_and_segments() {
    let (mdir, sdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = Store::open(config(mdir.path())).unwrap();
    let slave = Store::open(config(sdir.path())).unwrap();
    let mut rng = Rng(3);
    let mut n = 0;
    // Stop the slave right after an end marker: its end is the limit of its last segment, with no next one yet.
    produce(&master, &mut rng, "m", &mut n, 500);
    loop {
        let at = slave.end_offset();
        let chunk = master.read_raw(at, 2000).unwrap().unwrap();
        let end = slave.append_raw(at, &chunk).unwrap();
        if end.0.is_multiple_of(SEG) {
            break;
        }
    }
    let end = slave.end_offset();
    assert!(end.0 > 0 && slave.segment_bases().last().unwrap().0 + SEG == end.0, "a closed last segment");
    settle(&slave);
    // Promoted: local appends continue every queue's offsets and open the next segment without a second marker.
    let mut expected = BTreeMap::new();
    for topic in TOPICS {
        for q in 0..QUEUES {
            if let Some((_, max)) = slave.queue_range(topic, q) {
                expected.insert((topic, q), max.0);
            }
        }
    }
    assert!(!expected.is_empty());
    for (&(topic, q), &next) in &expected {
        let r = slave.append(&NewMessage::new(topic, q, "after promotion")).unwrap();
        assert_eq!(r.queue_offset, QueueOffset(next), "{topic}/{q}");
        assert!(r.offset >= end);
    }
    assert_eq!(slave.segment_bases().last(), Some(&end));
    assert_eq!(slave.verify().unwrap().first_error, None);
    slave.close().unwrap();
    let slave = Store::open(config(sdir.path())).unwrap();
    assert_eq!(slave.verify().unwrap().first_error, None);
    for (&(topic, q), &next) in &expected {
        assert_eq!(slave.queue_range(topic, q).unwrap().1, QueueOffset(next + 1));
    }
    // And a store whose log was closed by a replicated marker reopens with the next segment ready.
    let (m2, s2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master2 = Store::open(config(m2.path())).unwrap();
    let slave2 = Store::open(config(s2.path())).unwrap();
    produce(&master2, &mut rng, "x", &mut n, 300);
    loop {
        let at = slave2.end_offset();
        let end = slave2.append_raw(at, &master2.read_raw(at, 2000).unwrap().unwrap()).unwrap();
        if end.0.is_multiple_of(SEG) {
            break;
        }
    }
    slave2.close().unwrap();
    let slave2 = Store::open(config(s2.path())).unwrap();
    replicate(&master2, &slave2, &mut rng, 10_000);
    assert_logs_identical(&master2, &slave2);
}

#[test]
fn bad_chunks_are_refused_and_change_nothing() {
    let (mdir, sdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = Store::open(config(mdir.path())).unwrap();
    let slave = Store::open(config(sdir.path())).unwrap();
    let mut rng = Rng(11);
    let mut n = 0;
    produce(&master, &mut rng, "m", &mut n, 300);
    // Bring the slave, a record at a time, to a point inside a segment where the next 20 000 bytes hold at least
    // two whole records and no end marker.
    let (at, good, first_len) = loop {
        let at = slave.end_offset();
        let good = master.read_raw(at, 20_000).unwrap().unwrap();
        let first_len = u32::from_le_bytes(good[0..4].try_into().unwrap()) as usize;
        let rel = at.0 % SEG;
        if at.0 > SEG && rel + 60_000 < SEG && good.len() > first_len {
            break (at, good, first_len);
        }
        slave.append_raw(at, &good[..first_len.min(good.len())]).unwrap(); // a record, or an end marker
    };
    let before = segment_files(sdir.path());
    let unchanged = |what: &str| {
        assert_eq!(slave.end_offset(), at, "{what}: the end moved");
        assert_eq!(segment_files(sdir.path()), before, "{what}: bytes were written");
    };
    let rejected_at = |r: Result<CommitLogOffset, Error>, offset: u64, what: &str| match r {
        Err(Error::ReplicaRejected { offset: o, ref reason }) => {
            assert_eq!(o.0, offset, "{what}: {reason}");
            assert!(r.as_ref().unwrap_err().to_string().contains("nothing was written"));
        }
        other => panic!("{what}: expected ReplicaRejected, got {other:?}"),
    };

    // Wrong offset, before and after the end.
    for wrong in [at.0 - 1, at.0 + 1, 0] {
        match slave.append_raw(CommitLogOffset(wrong), &good) {
            Err(Error::ReplicaGap { expected, got }) => assert_eq!((expected, got.0), (at, wrong)),
            other => panic!("expected ReplicaGap, got {other:?}"),
        }
    }
    unchanged("gap");
    // Garbage.
    let garbage: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect();
    rejected_at(slave.append_raw(at, &garbage), at.0, "garbage");
    rejected_at(slave.append_raw(at, &[0u8; 300]), at.0, "zeros");
    rejected_at(slave.append_raw(at, &good[..5]), at.0, "a torn header");
    unchanged("garbage");
    // A torn record: the last record of the chunk cut short; nothing of the chunk is written, not even the
    // whole records before it.
    rejected_at(slave.append_raw(at, &good[..good.len() - 1]), last_record_start(&good, at.0), "torn");
    let second_len = u32::from_le_bytes(good[first_len..first_len + 4].try_into().unwrap()) as usize;
    let torn = &good[..first_len + second_len / 2];
    rejected_at(slave.append_raw(at, torn), at.0 + first_len as u64, "torn second");
    unchanged("torn");
    // A flipped bit anywhere in a record's CRC-covered bytes or header.
    for bit in [40 * 8 + 3, (first_len + 20) * 8, (first_len + 107) * 8 + 1, (good.len() - 1) * 8 + 7] {
        let mut bad = good.to_vec();
        bad[bit / 8] ^= 1 << (bit % 8);
        let r = slave.append_raw(at, &bad);
        assert!(matches!(r, Err(Error::ReplicaRejected { .. })), "bit {bit}: {r:?}");
    }
    unchanged("bit flips");
    // Records that claim another offset (valid records from elsewhere in the log).
    let elsewhere = master.read_raw(CommitLogOffset(0), 8000).unwrap().unwrap();
    let r = slave.append_raw(at, &elsewhere);
    assert!(matches!(&r, Err(Error::ReplicaRejected { reason, .. }) if reason.contains("claims offset")), "{r:?}");
    unchanged("wrong offsets");
    // An end marker that does not fill the segment, and bytes after a valid marker.
    let remaining = (SEG - at.0 % SEG) as usize;
    let mut marker = [0u8; 8];
    comet_store::record::encode_end_marker(&mut marker, remaining - 8);
    rejected_at(slave.append_raw(at, &marker), at.0, "short marker");
    comet_store::record::encode_end_marker(&mut marker, remaining);
    let mut padded = marker.to_vec();
    padded.extend_from_slice(&[0, 0, 7]);
    rejected_at(slave.append_raw(at, &padded), at.0 + 10, "garbage after the marker");
    unchanged("markers");
    // A chunk that runs past the segment limit.
    let mut long = good.to_vec();
    long.resize(remaining + 1, 0);
    match slave.append_raw(at, &long) {
        Err(e @ Error::SegmentMismatch { .. }) => assert!(e.to_string().contains("segment-size"), "{e}"),
        other => panic!("expected SegmentMismatch, got {other:?}"),
    }
    unchanged("past the limit");
    assert_eq!(slave.verify().unwrap().first_error, None);

    // The valid chunk still appends, and replication completes.
    assert_eq!(slave.append_raw(at, &good).unwrap().0, at.0 + good.len() as u64);
    replicate(&master, &slave, &mut rng, 20_000);
    assert_logs_identical(&master, &slave);
    assert_queues_identical(&master, &slave);
}

/// Where the record that `chunk` cuts off starts.
fn last_record_start(chunk: &[u8], at: u64) -> u64 {
    let mut pos = 0;
    loop {
        if chunk.len() - pos < 8 {
            return at + pos as u64;
        }
        let len = u32::from_le_bytes(chunk[pos..pos + 4].try_into().unwrap()) as usize;
        if pos + len >= chunk.len() {
            return at + pos as u64;
        }
        pos += len;
    }
}

#[test]
fn a_master_with_larger_segments_is_refused_naming_the_segment_size() {
    let (mdir, sdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = Store::open(StoreConfig { segment_size: 2 * SEG, ..config(mdir.path()) }).unwrap();
    let slave = Store::open(config(sdir.path())).unwrap();
    let mut rng = Rng(5);
    let mut n = 0;
    produce(&master, &mut rng, "m", &mut n, 400);
    let mut refused = None;
    for _ in 0..1000 {
        let at = slave.end_offset();
        let Some(chunk) = master.read_raw(at, 20_000).unwrap() else { break };
        match slave.append_raw(at, &chunk) {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("the slave refuses a chunk");
    assert!(matches!(e, Error::SegmentMismatch { .. }), "{e}");
    assert!(e.to_string().contains("same segment-size"), "{e}");
    assert!(slave.end_offset().0 <= SEG);
}

#[test]
fn a_diverged_tail_is_truncated_and_refetched_durably() {
    let (mdir, sdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = Store::open(config(mdir.path())).unwrap();
    let slave = Store::open(config(sdir.path())).unwrap();
    let mut rng = Rng(21);
    let (mut n, mut d) = (0, 0);
    produce(&master, &mut rng, "m", &mut n, 500);
    replicate(&master, &slave, &mut rng, 30_000);
    let common = slave.end_offset();
    // The slave gets a tail the master never had (several segments of it), the master a different one.
    produce(&slave, &mut rng, "diverged", &mut d, 700);
    produce(&master, &mut rng, "m", &mut n, 300);
    settle(&slave);
    assert!(slave.end_offset().0 > common.0 + 3 * SEG);
    assert!(slave.query_by_id("diverged-5").unwrap().is_some());
    let slave_ranges: Vec<_> =
        TOPICS.iter().flat_map(|t| (0..QUEUES).map(move |q| (*t, q))).map(|(t, q)| slave.queue_range(t, q)).collect();

    // The divergence point, found the way a replication handshake would: the last common record matches.
    let bases = slave.segment_bases();
    let base = *bases.iter().rev().find(|b| **b < common).unwrap();
    let spans = slave.record_spans(base, common).unwrap();
    let &(last, len) = spans.last().unwrap();
    assert_eq!(slave.crc_range(last, len).unwrap(), master.crc_range(last, len).unwrap());
    let next = slave.record_spans(common, CommitLogOffset(common.0 + 1)).unwrap();
    assert_ne!(slave.crc_range(next[0].0, next[0].1).unwrap(), master.crc_range(next[0].0, next[0].1).unwrap());

    // Not a boundary: refused, nothing changes.
    let inside = CommitLogOffset(last.0 + 3);
    assert!(matches!(slave.truncate(inside), Err(Error::NotRecordBoundary { .. })));
    let end_before = slave.end_offset();
    assert!(matches!(slave.truncate(CommitLogOffset(next[0].0.0 + 1)), Err(Error::NotRecordBoundary { .. })));
    assert_eq!(slave.end_offset(), end_before);
    slave.truncate(end_before).unwrap(); // the end: a no-op
    slave.truncate(CommitLogOffset(end_before.0 + 12345)).unwrap(); // beyond: a no-op
    assert_eq!(slave.end_offset(), end_before);

    // Readers pull from the slave while it is cut: results are consistent or empty, never garbage or a panic.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (slave, stop) = (slave.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for topic in TOPICS {
                    for q in 0..QUEUES {
                        let from = slave.queue_range(topic, q).map_or(QueueOffset(0), |r| r.0);
                        match slave.get_messages(topic, q, from, 32, 1 << 20, None) {
                            Ok(got) => {
                                for (i, m) in got.messages.iter().enumerate() {
                                    assert_eq!(m.queue_offset().0, from.0 + i as u64);
                                    assert_eq!((m.topic(), m.queue_id()), (topic, q));
                                    assert!(m.body().iter().enumerate().all(|(j, b)| *b
                                        == (j as u64 ^ m.msg_id().rsplit('-').next().unwrap().parse::<u64>().unwrap())
                                            as u8));
                                }
                                reads += 1;
                            }
                            Err(e) => panic!("read during truncation: {e}"),
                        }
                        let _ = slave.query_by_key(topic, "all-diverged", 8, 0, u64::MAX).unwrap();
                    }
                }
            }
            reads
        })
    };
    std::thread::sleep(Duration::from_millis(20));
    slave.truncate(common).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);

    assert_eq!(slave.end_offset(), common);
    assert_eq!(slave.stats().max_offset, common);
    assert_eq!(slave.stats().dispatched_offset, common);
    assert!(slave.stats().flushed_offset <= common);
    assert!(slave.segment_bases().last().unwrap().0 <= common.0);
    assert!(matches!(slave.read(next[0].0), Err(Error::NoRecord { .. })));
    assert_eq!(slave.read_raw(common, 100).unwrap(), None);
    assert_no_trace_of_the_tail(&slave, d);
    // The queues shrank back to what the master had at the common point.
    let now: Vec<_> =
        TOPICS.iter().flat_map(|t| (0..QUEUES).map(move |q| (*t, q))).map(|(t, q)| slave.queue_range(t, q)).collect();
    assert_ne!(now, slave_ranges);

    // Refetch: byte-identical again, queues and index as the master's.
    replicate(&master, &slave, &mut rng, 40_000);
    assert_logs_identical(&master, &slave);
    assert_queues_identical(&master, &slave);
    assert_no_trace_of_the_tail(&slave, d);
    assert!(slave.query_by_id(&format!("m-{}", n - 1)).unwrap().is_some());

    // Survives a clean reopen.
    slave.close().unwrap();
    let slave = Store::open(config(sdir.path())).unwrap();
    assert_logs_identical(&master, &slave);
    assert_queues_identical(&master, &slave);
    assert_no_trace_of_the_tail(&slave, d);

    // And a crash right after truncating: diverge again, let a child truncate and be SIGKILLed.
    let common = slave.end_offset();
    produce(&slave, &mut rng, "diverged", &mut d, 400);
    settle(&slave);
    slave.close().unwrap();
    run_child_and_kill(&format!("truncate|{}|{}", sdir.path().display(), common.0), None);
    let (slave, report) = Store::open_with_report(config(sdir.path())).unwrap();
    assert!(report.after_crash);
    assert_eq!(slave.end_offset(), common);
    settle(&slave);
    assert_no_trace_of_the_tail(&slave, d);
    produce(&master, &mut rng, "m", &mut n, 200);
    replicate(&master, &slave, &mut rng, 40_000);
    assert_logs_identical(&master, &slave);
    assert_queues_identical(&master, &slave);
    assert_no_trace_of_the_tail(&slave, d);
}

fn assert_no_trace_of_the_tail(slave: &Store, diverged: u64) {
    for i in (0..diverged).step_by(37) {
        assert!(slave.query_by_id(&format!("diverged-{i}")).unwrap().is_none(), "diverged-{i} by id");
    }
    for topic in TOPICS {
        assert!(slave.query_by_key(topic, "all-diverged", 100, 0, u64::MAX).unwrap().is_empty());
        assert!(slave.query_by_key(topic, "key-diverged-1", 100, 0, u64::MAX).unwrap().is_empty());
        for q in 0..QUEUES {
            for (_, id, _, _) in queue_contents(slave, topic, q) {
                assert!(!id.starts_with("diverged"), "{id} still in {topic}/{q}");
            }
        }
    }
}

#[test]
fn a_slave_restarts_at_a_later_base_when_the_master_deleted_its_old_data() {
    let (mdir, sdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = Store::open(config(mdir.path())).unwrap();
    let mut rng = Rng(31);
    let mut n = 0;
    produce(&master, &mut rng, "old", &mut n, 800);
    settle(&master);
    let report = master.enforce_retention(now_ms() + 100 * 24 * 3_600_000).unwrap();
    assert!(report.deleted_segments > 5);
    let base = master.min_offset();
    assert!(base.0 > 0 && base.0.is_multiple_of(SEG));
    // Every queue gets messages after the cut, several segments of them.
    produce(&master, &mut rng, "new", &mut n, 600);
    settle(&master);
    for topic in TOPICS {
        for q in 0..QUEUES {
            let (min, _) = master.queue_range(topic, q).unwrap();
            assert!(min.0 > 0, "{topic}/{q} lost its oldest messages to retention");
        }
    }

    // An empty slave: truncating to the master's minimum restarts its log there.
    let slave = Store::open(config(sdir.path())).unwrap();
    assert!(matches!(slave.truncate(CommitLogOffset(base.0 + 1)), Err(Error::SegmentMismatch { .. })));
    slave.truncate(base).unwrap();
    assert_eq!((slave.min_offset(), slave.end_offset()), (base, base));
    assert!(matches!(slave.append_raw(CommitLogOffset(0), b"x"), Err(Error::ReplicaGap { .. })));
    replicate(&master, &slave, &mut rng, 30_000);
    assert_logs_identical(&master, &slave);
    assert_queues_identical(&master, &slave);
    for topic in TOPICS {
        for q in 0..QUEUES {
            let (min, max) = master.queue_range(topic, q).unwrap();
            let got = slave.get_messages(topic, q, min, 1000, 1 << 24, None).unwrap();
            let want = master.get_messages(topic, q, min, 1000, 1 << 24, None).unwrap();
            assert_eq!(got.status, GetStatus::Found);
            assert_eq!((got.min_offset, got.max_offset), (min, max));
            let ids =
                |g: &comet_store::GetMessages| g.messages.iter().map(|m| m.msg_id().to_owned()).collect::<Vec<_>>();
            assert_eq!(ids(&got), ids(&want));
            let below = slave.get_messages(topic, q, QueueOffset(0), 10, 1 << 20, None).unwrap();
            assert_eq!((below.status, below.next_offset), (GetStatus::OffsetMoved, min));
        }
    }
    // The queues keep their start across a reopen (their files are named by their first queue offset).
    slave.close().unwrap();
    let slave = Store::open(config(sdir.path())).unwrap();
    assert_queues_identical(&master, &slave);
    // A slave with old data below the master's new minimum restarts too (`restart_at`), and a later base than
    // its end is allowed.
    produce(&master, &mut rng, "newer", &mut n, 300);
    settle(&master);
    master.enforce_retention(now_ms() + 100 * 24 * 3_600_000).unwrap();
    let base2 = master.min_offset();
    assert!(base2 > slave.end_offset());
    assert!(matches!(slave.restart_at(CommitLogOffset(base2.0 - 1)), Err(Error::SegmentMismatch { .. })));
    slave.truncate(base2).unwrap(); // beyond a non-empty log's end: a no-op
    assert!(slave.end_offset() < base2);
    slave.restart_at(base2).unwrap();
    assert_eq!((slave.min_offset(), slave.end_offset()), (base2, base2));
    assert!(slave.query_by_id("old-0").unwrap().is_none());
    for topic in TOPICS {
        for q in 0..QUEUES {
            assert_eq!(slave.queue_range(topic, q), None, "{topic}/{q} is gone until its records arrive");
        }
    }
    produce(&master, &mut rng, "newest", &mut n, 300);
    replicate(&master, &slave, &mut rng, 30_000);
    assert_logs_identical(&master, &slave);
    assert_queues_identical(&master, &slave);
    slave.close().unwrap();
    let slave = Store::open(config(sdir.path())).unwrap();
    assert_logs_identical(&master, &slave);
    // Truncating below the minimum (to < min) empties the log at `to`.
    let lower = CommitLogOffset(slave.min_offset().0 - SEG);
    slave.truncate(lower).unwrap();
    assert_eq!((slave.min_offset(), slave.end_offset()), (lower, lower));
    assert_eq!(slave.segment_bases(), vec![lower]);
    assert!(slave.query_by_id(&format!("newest-{}", n - 1)).unwrap().is_none());
    slave.close().unwrap();
    let slave = Store::open(config(sdir.path())).unwrap();
    assert_eq!((slave.min_offset(), slave.end_offset()), (lower, lower));
    // And a crash right after such a restart recovers the new base, not the old data.
    let mut rng2 = Rng(77);
    replicate_from(&master, &slave, &mut rng2);
    let min_before = slave.min_offset();
    slave.close().unwrap();
    let below = CommitLogOffset(min_before.0 - 2 * SEG);
    run_child_and_kill(&format!("truncate|{}|{}", sdir.path().display(), below.0), None);
    let (slave, report) = Store::open_with_report(config(sdir.path())).unwrap();
    assert!(report.after_crash);
    assert_eq!((slave.min_offset(), slave.end_offset()), (below, below));
    assert!(slave.topics().is_empty());
    assert!(slave.query_by_id(&format!("newest-{}", n - 1)).unwrap().is_none());
}

/// Restarts `slave` at the master's minimum and replicates everything.
fn replicate_from(master: &Store, slave: &Store, rng: &mut Rng) {
    slave.restart_at(master.min_offset()).unwrap();
    replicate(master, slave, rng, 30_000);
    assert_logs_identical(master, slave);
}

#[test]
fn sync_flush_mode_append_raw_is_durable_when_it_returns() {
    let (mdir, sdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = Store::open(config(mdir.path())).unwrap();
    let slave = Store::open(sync_config(sdir.path())).unwrap();
    let mut rng = Rng(41);
    let mut n = 0;
    produce(&master, &mut rng, "m", &mut n, 300);
    let mut appends = 0;
    loop {
        let at = slave.end_offset();
        let Some(chunk) = master.read_raw(at, 10_000).unwrap() else { break };
        let flushes = slave.stats().flushes;
        let end = slave.append_raw(at, &chunk).unwrap();
        let stats = slave.stats();
        assert!(stats.flushed_offset >= end, "returned before its fsync: {stats:?}");
        assert!(stats.flushes > flushes, "no flush covered the chunk");
        appends += 1;
    }
    assert!(appends > 10);
    assert_logs_identical(&master, &slave);
    assert_queues_identical(&master, &slave);
}

#[test]
fn a_full_disk_refuses_replicated_bytes_like_appends() {
    let (mdir, sdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = Store::open(config(mdir.path())).unwrap();
    let slave = Store::open(StoreConfig { disk_capacity_bytes: Some(SEG), ..config(sdir.path()) }).unwrap();
    let mut rng = Rng(51);
    let mut n = 0;
    produce(&master, &mut rng, "m", &mut n, 20);
    let chunk = master.read_raw(CommitLogOffset(0), 100_000).unwrap().unwrap();
    let e = slave.append_raw(CommitLogOffset(0), &chunk).unwrap_err();
    assert!(matches!(e, Error::DiskFull { .. }) && e.is_retryable(), "{e}");
    assert_eq!(slave.end_offset(), CommitLogOffset(0));
}
