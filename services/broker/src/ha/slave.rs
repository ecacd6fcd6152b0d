//! The slave's side: one task that connects to the master, authenticates, agrees on a resume point and then
//! fetches and appends CommitLog chunks for as long as the connection lives, copying metadata in between. Any
//! failure drops the connection and starts over after a short back-off; the store is always left at a record
//! boundary the master agrees with, so starting over is always safe.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use comet_model::CommitLogOffset;
use comet_remoting::{Client, ClientConfig, Command, Connection};
use comet_store::FlushMode;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::protocol::{self, Handshake, Metadata, Side, code, field};
use crate::broker::{Broker, now_ms};
use crate::error::BrokerError;

/// Chunks up to this size are appended on the async worker (async flush); larger ones on the blocking pool.
const INLINE_APPEND_MAX: usize = 1 << 20;

/// Back-off after a failed session, doubling up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why a replication session ended.
#[derive(Debug)]
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

type Outcome<T = ()> = std::result::Result<T, Failure>;

/// Starts the replication loop of a slave; `None` on a master. Setting `stop` ends it between two steps (an
/// append in progress always completes).
pub fn spawn(broker: &Arc<Broker>, stop: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
    if !broker.config.is_slave() {
        return None;
    }
    Some(tokio::spawn(run(Arc::clone(broker), stop)))
}

async fn run(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let ha = &broker.config.ha;
    let timeout = Duration::from_millis(ha.request_timeout_ms);
    let client = Client::new(ClientConfig {
        connect_timeout_ms: ha.request_timeout_ms.min(3_000),
        // The loop below does its own back-off; the client's would only hide the master coming back.
        reconnect_backoff_min_ms: 1,
        reconnect_backoff_max_ms: 1,
        ..ClientConfig::default()
    });
    let mut backoff = MIN_BACKOFF;
    let mut reported = false;
    while !*stop.borrow() {
        let started = Instant::now();
        let outcome = follow(&broker, &client, timeout, &mut stop).await;
        broker.ha.follower.connected.store(false, Ordering::Release);
        client.close_all();
        match outcome {
            Ok(()) => break,
            Err(Failure(reason)) => {
                // One warning per outage, not one per retry.
                if !reported {
                    tracing::warn!(master = %ha.master_address, %reason, "replication from the master stopped; retrying");
                    reported = true;
                } else {
                    tracing::debug!(master = %ha.master_address, %reason, "replication attempt failed");
                }
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = MIN_BACKOFF;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if broker.ha.follower.last_contact_ms.load(Ordering::Acquire) + 10_000 > now_ms() {
            reported = false;
        }
    }
}

/// One authenticated connection to the master.
struct Link {
    conn: Connection,
    session: String,
    timeout: Duration,
    master: String,
}

impl Link {
    /// Sends `request` (with the session) and returns the response, whatever its code.
    async fn send(&self, request: Command, timeout: Duration) -> Outcome<Command> {
        let request = if self.session.is_empty() { request } else { request.with_ext(field::SESSION, &self.session) };
        Ok(self.conn.invoke(request, timeout).await?)
    }

    /// Sends `request` and requires SUCCESS.
    async fn call(&self, request: Command) -> Outcome<Command> {
        let what = request.code;
        let response = self.send(request, self.timeout).await?;
        if response.code != comet_remoting::code::SUCCESS {
            return Err(Failure(format!(
                "master {} answered request {what} with code {}: {}",
                self.master,
                response.code,
                response.remark.as_deref().unwrap_or("")
            )));
        }
        Ok(response)
    }
}

async fn follow(broker: &Arc<Broker>, client: &Client, timeout: Duration, stop: &mut watch::Receiver<bool>) -> Outcome {
    let ha = &broker.config.ha;
    let conn = client.connection(&ha.master_address, timeout).await?;
    let mut link = Link { conn, session: String::new(), timeout, master: ha.master_address.clone() };
    let (master_min, master_end) = authenticate(broker, &mut link).await?;
    let follower = &broker.ha.follower;
    follower.master_end.store(master_end, Ordering::Release);
    follower.last_contact_ms.store(now_ms(), Ordering::Release);
    let mut offset = reconcile(broker, &link, master_min, master_end).await?;
    // Connected once replication can start: a slave whose log cannot be reconciled never reports it, not even
    // for the moment between authenticating and refusing.
    follower.connected.store(true, Ordering::Release);
    tracing::info!(master = %link.master, offset, master_end, "replicating from the master");

    // Metadata is copied beside the fetch loop over the same connection (requests are multiplexed), so the
    // fetch that carries an acknowledgement never waits behind it.
    let link = Arc::new(link);
    let _metadata = AbortOnDrop(tokio::spawn(copy_metadata(Arc::clone(broker), Arc::clone(&link))));
    let wait = Duration::from_millis(ha.fetch_wait_ms);
    let chunk = ha.chunk_bytes.to_string();
    let segment_size = broker.store.segment_size();
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let request = Command::request(code::FETCH, Bytes::new())
            .with_ext(field::OFFSET, offset.to_string())
            .with_ext(field::MAX, chunk.as_str())
            .with_ext(field::WAIT_MS, wait.as_millis().to_string());
        let response = tokio::select! {
            r = link.send(request, wait + timeout) => r?,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        follower.last_contact_ms.store(now_ms(), Ordering::Release);
        if let Ok(end) = protocol::number(&response, field::END) {
            follower.master_end.store(end, Ordering::Release);
        }
        match response.code {
            comet_remoting::code::SUCCESS => {
                if response.body.is_empty() {
                    continue;
                }
                let at = protocol::number(&response, field::OFFSET)?;
                if at != offset {
                    return Err(Failure(format!("master sent bytes for offset {at}, asked for {offset}")));
                }
                let body = response.body;
                // A chunk at a segment base creates the segment file (fallocate, directory fsync): blocking pool.
                let inline = body.len() <= INLINE_APPEND_MAX
                    && broker.config.store.flush_mode == FlushMode::Async
                    && !at.is_multiple_of(segment_size);
                let appended = if inline {
                    // A small chunk with async flush is a validated copy into the page cache: cheaper in place
                    // than two thread hand-offs, which a sync-replication send would wait for.
                    broker.store.append_raw(CommitLogOffset(at), &body).map_err(BrokerError::from)
                } else {
                    broker.blocking(move |b| Ok(b.store.append_raw(CommitLogOffset(at), &body)?)).await
                };
                offset = appended.map_err(|e| Failure(format!("appending replicated bytes at {at}: {e}")))?.0;
            }
            code::OFFSET_MOVED => {
                let min = protocol::number(&response, field::MIN)?;
                let end = protocol::number(&response, field::END)?;
                // Wiping our log on an answer is drastic: only for a sane minimum (above us, a segment base).
                if min <= offset || min > end || !min.is_multiple_of(segment_size) {
                    return Err(Failure(format!("master sent an implausible minimum {min} (our offset {offset})")));
                }
                tracing::warn!(
                    offset,
                    master_min = min,
                    "the master no longer holds our resume point: starting over from its oldest data"
                );
                restart_at(broker, min).await?;
                offset = min;
            }
            code::DIVERGED => {
                let end = protocol::number(&response, field::END)?;
                let min = protocol::number(&response, field::MIN)?;
                let resumed = reconcile(broker, &link, min, end).await?;
                if resumed == offset {
                    // Both agree on our tail yet the master refuses the offset: never loop on it.
                    return Err(Failure(format!(
                        "master refuses offset {offset} ({}) although it holds our last record",
                        response.remark.as_deref().unwrap_or("")
                    )));
                }
                offset = resumed;
            }
            other => {
                return Err(Failure(format!(
                    "master answered a fetch with code {other}: {}",
                    response.remark.as_deref().unwrap_or("")
                )));
            }
        }
    }
}

/// The two-step HMAC handshake; returns the master's (min, end).
async fn authenticate(broker: &Broker, link: &mut Link) -> Outcome<(u64, u64)> {
    let ha = &broker.config.ha;
    let name = &broker.config.broker.broker_name;
    let id = broker.config.broker.broker_id;
    let slave_nonce = protocol::nonce()?;
    let begin = Command::request(code::AUTH_BEGIN, Bytes::new())
        .with_ext(field::BROKER_NAME, name.as_str())
        .with_ext(field::BROKER_ID, id.to_string())
        .with_ext(field::NONCE, slave_nonce.as_str());
    let answer = link.call(begin).await?;
    let master_nonce = protocol::text(&answer, field::NONCE)?.to_owned();
    let handshake = Handshake { master_nonce: &master_nonce, slave_nonce: &slave_nonce, broker_name: name, id };
    let proof =
        handshake.proof(&ha.secret, Side::Slave).ok_or_else(|| Failure("cannot compute the handshake proof".into()))?;
    let finish = Command::request(code::AUTH_FINISH, Bytes::new())
        .with_ext(field::CHALLENGE, master_nonce.as_str())
        .with_ext(field::PROOF, proof)
        .with_ext(field::SEGMENT_SIZE, broker.store.segment_size().to_string());
    let answer = link.call(finish).await?;
    let their_proof = protocol::text(&answer, field::PROOF)?;
    if !handshake.verify(&ha.secret, Side::Master, their_proof) {
        return Err(Failure(format!("{} did not prove it holds the HA secret: not our master", link.master)));
    }
    link.session = protocol::text(&answer, field::SESSION)?.to_owned();
    Ok((protocol::number(&answer, field::MIN)?, protocol::number(&answer, field::END)?))
}

/// Finds where to resume: our end when our last record is also the master's, else the end of the last record
/// both logs share (cutting our diverged tail), else the master's oldest data (starting over).
async fn reconcile(broker: &Arc<Broker>, link: &Link, master_min: u64, master_end: u64) -> Outcome<u64> {
    let store = &broker.store;
    let (min, end) = (store.min_offset().0, store.end_offset().0);
    if end == min && end == master_min {
        return Ok(end);
    }
    if end == min || end < master_min {
        if end > min {
            tracing::warn!(end, master_min, "our log ends before the master's oldest data: starting over");
        }
        restart_at(broker, master_min).await?;
        return Ok(master_min);
    }
    // Our last record and whatever follows it in its segment (an end marker): the master must hold exactly
    // those bytes, or a master that continued that segment differently would go unnoticed.
    if end <= master_end
        && let Some((last, _)) = last_record(broker, end).await?
        && let Ok(tail) = u32::try_from(end - last)
        && matches(broker, link, (last, tail)).await?
    {
        return Ok(end);
    }
    tracing::warn!(end, master_end, "our log diverges from the master's: looking for the last record both hold");
    match common_point(broker, link, end).await? {
        Some(point) => {
            // The tail may hold messages acknowledged by an earlier master (one that lost its own unflushed tail,
            // or a slave promoted while behind us): keep a copy before cutting, so nothing is lost for good.
            let saved = broker
                .blocking(move |b| save_tail(b, point, end))
                .await
                .map_err(|e| Failure(format!("saving our diverged tail {point}..{end} before cutting it: {e}")))?;
            tracing::warn!(from = point, to = end, saved = %saved.display(), "cutting the diverged tail of our log");
            broker
                .blocking(move |b| Ok(b.store.truncate(CommitLogOffset(point))?))
                .await
                .map_err(|e| Failure(format!("truncating to {point}: {e}")))?;
            Ok(point)
        }
        // Not one record in common: a master of another group, or an empty master started beside its slaves.
        // Wiping our copy would lose everything; an operator decides.
        None => Err(Failure(format!(
            "the master at {} shares no record with our log ({} bytes from {min}): refusing to delete it; if this \
             slave should copy that master, stop it and move its store directory away",
            link.master,
            end - min
        ))),
    }
}

/// Copies every record of `[from, to)` of our log, back to back as the CommitLog stores them (end markers left
/// out), to `<store dir>/diverged/commitlog-<from>-<to>.bin`, fsynced: docs/storage-format.md reads them.
fn save_tail(broker: &Broker, from: u64, to: u64) -> crate::error::Result<std::path::PathBuf> {
    use std::io::Write;
    let dir = broker.config.store.dir.join("diverged");
    let path = dir.join(format!("commitlog-{from:020}-{to:020}.bin"));
    let persist =
        |op: &'static str, e: std::io::Error| BrokerError::Persist { op, path: path.clone(), reason: e.to_string() };
    std::fs::create_dir_all(&dir).map_err(|e| persist("create", e))?;
    let mut file = std::fs::File::create(&path).map_err(|e| persist("create", e))?;
    // Record by record (an end marker ends a segment early; the walk follows it into the next one).
    for (offset, size) in broker.store.record_spans(CommitLogOffset(from), CommitLogOffset(to))? {
        let Some(record) = broker.store.read_raw(offset, size as usize)? else { break };
        file.write_all(&record[..(size as usize).min(record.len())]).map_err(|e| persist("write", e))?;
    }
    file.sync_all().map_err(|e| persist("fsync", e))?;
    Ok(path)
}

/// Deletes our whole log and restarts it empty at `at` (the master's minimum).
async fn restart_at(broker: &Arc<Broker>, at: u64) -> Outcome {
    broker
        .blocking(move |b| Ok(b.store.restart_at(CommitLogOffset(at))?))
        .await
        .map_err(|e| Failure(format!("restarting the log at {at}: {e}")))
}

/// (offset, size) of the last record below `end`.
async fn last_record(broker: &Arc<Broker>, end: u64) -> Outcome<Option<(u64, u32)>> {
    let base = broker.store.segment_bases().into_iter().rev().find(|b| b.0 < end);
    let Some(base) = base else { return Ok(None) };
    let spans = broker
        .blocking(move |b| Ok(b.store.record_spans(base, CommitLogOffset(end))?))
        .await
        .map_err(|e| Failure(format!("walking our log from {}: {e}", base.0)))?;
    Ok(spans.last().map(|(o, n)| (o.0, *n)))
}

/// Whether the master holds exactly our bytes of this record.
async fn matches(broker: &Arc<Broker>, link: &Link, (offset, len): (u64, u32)) -> Outcome<bool> {
    let crc = broker
        .blocking(move |b| Ok(b.store.crc_range(CommitLogOffset(offset), len)?))
        .await
        .map_err(|e| Failure(format!("reading our record at {offset}: {e}")))?;
    let Some(crc) = crc else { return Ok(false) };
    let request = Command::request(code::CHECK, Bytes::new())
        .with_ext(field::OFFSET, offset.to_string())
        .with_ext(field::LEN, len.to_string())
        .with_ext(field::CRC, crc.to_string());
    let answer = link.call(request).await?;
    Ok(protocol::text(&answer, field::MATCHES)? == "true")
}

/// The end of the last record our log shares with the master's: the newest segment whose first record the
/// master holds, then a binary search over that segment's records (a log agrees up to one point and differs
/// after it). `None` when not even the first record of our oldest segment matches.
async fn common_point(broker: &Arc<Broker>, link: &Link, end: u64) -> Outcome<Option<u64>> {
    let segment = broker.store.segment_size();
    for base in broker.store.segment_bases().into_iter().rev().filter(|b| b.0 < end) {
        // Only the first record of each candidate segment is read; only the chosen segment is walked whole.
        let walk = |to: u64| async move {
            broker
                .blocking(move |b| Ok(b.store.record_spans(base, CommitLogOffset(to))?))
                .await
                .map_err(|e| Failure(format!("walking our log from {}: {e}", base.0)))
        };
        let Some(&first) = walk(base.0 + 1).await?.first() else { continue };
        if !matches(broker, link, (first.0.0, first.1)).await? {
            continue;
        }
        let spans = walk(end.min(base.0 + segment)).await?;
        let (mut lo, mut hi) = (0usize, spans.len());
        while lo + 1 < hi {
            let mid = lo + (hi - lo) / 2;
            if matches(broker, link, (spans[mid].0.0, spans[mid].1)).await? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        return Ok(Some(spans[lo].0.0 + u64::from(spans[lo].1)));
    }
    Ok(None)
}

/// Aborts its task when dropped (the metadata copier ends with the session that runs it).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Copies metadata every `metadata-sync-interval-ms` for as long as the session lives. Trouble (an answer too
/// large for one frame, a file that cannot be written) is logged and retried: it must not stop the CommitLog.
async fn copy_metadata(broker: Arc<Broker>, link: Arc<Link>) {
    let every = Duration::from_millis(broker.config.ha.metadata_sync_interval_ms);
    loop {
        if let Err(Failure(reason)) = sync_metadata(&broker, &link).await {
            tracing::warn!(master = %link.master, %reason, "copying metadata from the master failed; retrying");
        }
        tokio::time::sleep(every).await;
    }
}

/// Copies topics (when their version changed), groups and consumer offsets from the master.
async fn sync_metadata(broker: &Arc<Broker>, link: &Link) -> Outcome {
    let version = protocol::version_field(&broker.topics.data_version());
    let request = Command::request(code::METADATA, Bytes::new()).with_ext(field::TOPICS_VERSION, version);
    let answer = link.call(request).await?;
    let metadata: Metadata =
        serde_json::from_slice(&answer.body).map_err(|e| Failure(format!("master sent bad metadata: {e}")))?;
    let topics_changed = broker
        .blocking(move |b| {
            let changed = match metadata.topics {
                Some(topics) => b.topics.replace_all(metadata.data_version, topics)?,
                None => false,
            };
            b.groups.replace_all(metadata.groups)?;
            b.offsets.replace_all(metadata.offsets);
            Ok(changed)
        })
        .await?;
    if topics_changed {
        tracing::info!(topics = broker.topics.len(), "topics copied from the master");
        broker.topics_changed.notify_one();
    }
    Ok(())
}
