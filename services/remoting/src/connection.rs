//! One TCP connection, symmetrical: either side sends requests and answers the other's. Three tasks per
//! connection: a reader (decodes frames, completes pending requests, dispatches incoming ones to the router), a
//! writer (drains a byte-bounded queue, batching small frames into one write and sending large bodies, and every
//! part of a gathered body, from their own buffers), and a sweeper (fails requests past their timeout).
//!
//! Closing is one step under the pending-table lock: mark closed, take every pending request, fail them all at
//! once with the reason. Whatever closed it (EOF, I/O error, an invalid frame, local shutdown), nobody waits for
//! a timeout to learn that their peer is gone.
//!
//! Memory is bounded per connection by `write-queue-bytes` (senders wait for room, up to their timeout) and by
//! `max-frame-size` on the read side (the read buffer grows to one frame at most). Known limits, on purpose for
//! now: responses and BUSY answers wait for write-queue room without a deadline, so a peer that stops reading
//! stalls this connection's reader (TCP back-pressure) and keeps its handlers' in-flight slots until it is
//! closed; a live peer that stays silent keeps its connection unless `idle-timeout-ms` is set (off by default;
//! the HA listener sets it), and one that vanished without closing is found by TCP keepalive probes,
//! `tcp-keepalive-ms`. Two peers that both flood each other with requests while neither reads could stall each
//! other; the channel's users (request/response, replication streams) do not.

use std::collections::HashMap;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::config::ChannelConfig;
use crate::error::{Error, Result};
use crate::frame::{self, Command, FLAG_ONEWAY, FLAG_RESPONSE, FrameDecoder};
use crate::router::{Router, code};

/// Bodies up to this size are copied into the writer's batch buffer; larger ones are written from their own
/// buffer with `writev`, so a 1 MiB body is never copied in user space.
const COPY_BODY_MAX: usize = 16 * 1024;
/// The writer stops batching once this much is buffered.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// The writer stops batching frames once it holds this many slices (one frame's `body_tail` may add more).
const MAX_IOVECS: usize = 64;
/// At most this many slices per `writev` (Linux's IOV_MAX).
const IOV_MAX: usize = 1024;
/// Read buffer growth when the next frame's size is not known yet.
const READ_CHUNK: usize = 64 * 1024;
/// Frames at least this large are read to their end and no further (see `read_loop`).
const EXACT_READ_MIN: usize = 16 * 1024;
/// The most a read at a frame boundary reserves on the guess that the next frame is as large as the last: one
/// huge frame does not make every connection hold that much for the small ones after it.
const BOUNDARY_READ_MAX: usize = 2 << 20;

/// Permits bounding async and oneway requests, shared by every connection of one client or server.
#[derive(Debug)]
pub(crate) struct Permits {
    pub(crate) async_: Arc<Semaphore>,
    pub(crate) async_limit: usize,
    pub(crate) oneway: Arc<Semaphore>,
    pub(crate) oneway_limit: usize,
}

impl Permits {
    pub(crate) fn new(async_limit: usize, oneway_limit: usize) -> Arc<Permits> {
        let async_limit = async_limit.clamp(1, Semaphore::MAX_PERMITS);
        let oneway_limit = oneway_limit.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Permits {
            async_: Arc::new(Semaphore::new(async_limit)),
            async_limit,
            oneway: Arc::new(Semaphore::new(oneway_limit)),
            oneway_limit,
        })
    }
}

/// A handle to one connection; cheap to clone. Dropping handles does not close it: [`close`](Self::close) or
/// the peer does.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("peer", &self.shared.peer).finish()
    }
}

struct Shared {
    peer: String,
    config: ChannelConfig,
    permits: Arc<Permits>,
    router: Arc<Router>,
    next_opaque: AtomicI32,
    queue: mpsc::UnboundedSender<Outbound>,
    /// Bytes the write queue may still take; every queued frame holds its size in permits until written.
    write_budget: Arc<Semaphore>,
    pending: Mutex<PendingTable>,
    closed: watch::Sender<Option<String>>,
    /// When the connection started; `last_active` counts from it.
    born: Instant,
    /// Milliseconds after `born` of the last frame read or written (kept only with an idle timeout).
    last_active: AtomicU64,
}

struct PendingTable {
    closed: Option<String>,
    map: HashMap<i32, Pending>,
}

struct Pending {
    tx: oneshot::Sender<Result<Command>>,
    code: i32,
    deadline: Instant,
    timeout: Duration,
    /// The async permit, released (dropped) exactly once with the entry: on response, timeout or close.
    _permit: Option<OwnedSemaphorePermit>,
}

enum Outbound {
    Frame {
        prefix: Bytes,
        body: Bytes,
        /// The body's remaining parts, each written as its own slice (`Command::body_tail`).
        tail: Vec<Bytes>,
        _budget: Option<OwnedSemaphorePermit>,
        _oneway: Option<OwnedSemaphorePermit>,
    },
    /// Write everything queued before this, then close.
    Close,
}

/// Socket options of every connection: no Nagle delay (frames are written whole), and keepalive probes so a
/// vanished peer's connection does not live forever.
fn tune(stream: &TcpStream, peer: &str, config: &ChannelConfig) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, "set_nodelay: {e}");
    }
    if let Some(keepalive) = config.keepalive()
        && let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
    {
        tracing::debug!(%peer, "TCP keepalive: {e}");
    }
}

impl Connection {
    /// Takes over `stream` and starts its reader, writer and sweeper tasks.
    pub(crate) fn spawn(
        stream: TcpStream,
        peer: String,
        config: ChannelConfig,
        permits: Arc<Permits>,
        router: Arc<Router>,
    ) -> Connection {
        tune(&stream, &peer, &config);
        let (read, write) = stream.into_split();
        let (queue, rx) = mpsc::unbounded_channel();
        let budget = config.write_queue_bytes.clamp(1, Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            peer,
            permits,
            router,
            next_opaque: AtomicI32::new(1),
            queue,
            write_budget: Arc::new(Semaphore::new(budget)),
            pending: Mutex::new(PendingTable { closed: None, map: HashMap::new() }),
            closed: watch::Sender::new(None),
            born: Instant::now(),
            last_active: AtomicU64::new(0),
            config,
        });
        let conn = Connection { shared };
        tokio::spawn(conn.clone().read_loop(read));
        tokio::spawn(conn.clone().write_loop(write, rx));
        tokio::spawn(conn.clone().sweep_loop());
        conn
    }

    /// The peer's address as given to connect or as accepted.
    pub fn peer(&self) -> &str {
        &self.shared.peer
    }

    /// Whether the connection is closed (it never reopens; the client makes a new one).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.borrow().is_some()
    }

    /// Waits until the connection is closed and returns why.
    pub async fn closed(&self) -> String {
        let mut rx = self.shared.closed.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "connection dropped".to_owned(),
        }
    }

    /// Closes now: queued frames are dropped and every pending request fails with `reason`.
    pub fn close(&self, reason: &str) {
        let failed = {
            let mut table = self.lock_pending();
            if table.closed.is_some() {
                return;
            }
            table.closed = Some(reason.to_owned());
            std::mem::take(&mut table.map)
        };
        self.shared.write_budget.close();
        self.shared.closed.send_replace(Some(reason.to_owned()));
        for (_, p) in failed {
            let _ = p.tx.send(Err(self.closed_error(reason)));
        }
    }

    /// Writes every frame queued so far, then closes (graceful shutdown: responses already produced reach the
    /// peer). Returns when the connection is closed.
    pub async fn close_gracefully(&self) -> String {
        if self.shared.queue.send(Outbound::Close).is_err() {
            self.close("closed");
        }
        self.closed().await
    }

    /// Sends `request` and waits for its response for at most `timeout`.
    pub async fn invoke(&self, request: Command, timeout: Duration) -> Result<Command> {
        let deadline = Instant::now() + timeout;
        let (code, response) = self.start(request, deadline, timeout, None).await?;
        let opaque = response.guard.opaque;
        match tokio::time::timeout_at(deadline, response).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout { peer: self.shared.peer.clone(), opaque, code, timeout }),
        }
    }

    /// Sends `request` holding one async permit and returns a future of its response. The permit is waited for
    /// at most `timeout` ([`Error::TooManyRequests`] after that); the response times out `timeout` after the call
    /// (enforced by the sweeper, so within one sweep interval). Dropping the future abandons the request and
    /// returns its permit.
    pub async fn invoke_async(&self, request: Command, timeout: Duration) -> Result<ResponseFuture> {
        let deadline = Instant::now() + timeout;
        let permits = &self.shared.permits;
        let permit = acquire(&permits.async_, deadline, || Error::TooManyRequests {
            peer: self.shared.peer.clone(),
            kind: "async",
            limit: permits.async_limit,
            waited: timeout,
        })
        .await?;
        Ok(self.start(request, deadline, timeout, Some(permit)).await?.1)
    }

    /// Like [`invoke_async`](Self::invoke_async), calling `callback` with the outcome (on a spawned task).
    pub async fn invoke_with_callback<F>(&self, request: Command, timeout: Duration, callback: F) -> Result<()>
    where
        F: FnOnce(Result<Command>) + Send + 'static,
    {
        let response = self.invoke_async(request, timeout).await?;
        tokio::spawn(async move { callback(response.await) });
        Ok(())
    }

    /// Queues `request` as oneway (no response) holding one oneway permit until it is written. Waits at most
    /// `timeout` for the permit and for room in the write queue.
    pub async fn invoke_oneway(&self, mut request: Command, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let permits = &self.shared.permits;
        let permit = acquire(&permits.oneway, deadline, || Error::TooManyRequests {
            peer: self.shared.peer.clone(),
            kind: "oneway",
            limit: permits.oneway_limit,
            waited: timeout,
        })
        .await?;
        request.opaque = self.shared.next_opaque.fetch_add(1, Ordering::Relaxed);
        request.flag = (request.flag & !FLAG_RESPONSE) | FLAG_ONEWAY;
        let (code, opaque) = (request.code, request.opaque);
        let prefix = self.encode(&request)?;
        self.enqueue(prefix, request.body, request.body_tail, Some(deadline), Some(permit))
            .await
            .map_err(|e| self.deadline_error(e, opaque, code, timeout))
    }

    // Hot path: one lock to register, one encode of the header into a small buffer, one try-acquire of write
    // budget, one channel send. No timer unless the write queue is full.
    async fn start(
        &self,
        mut request: Command,
        deadline: Instant,
        timeout: Duration,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<(i32, ResponseFuture)> {
        let opaque = self.shared.next_opaque.fetch_add(1, Ordering::Relaxed);
        request.opaque = opaque;
        request.flag &= !(FLAG_RESPONSE | FLAG_ONEWAY);
        let prefix = self.encode(&request)?;
        let (tx, rx) = oneshot::channel();
        {
            let mut table = self.lock_pending();
            if let Some(reason) = &table.closed {
                return Err(self.closed_error(reason));
            }
            table.map.insert(opaque, Pending { tx, code: request.code, deadline, timeout, _permit: permit });
        }
        let response = ResponseFuture { rx, guard: PendingGuard { conn: self.clone(), opaque, armed: true } };
        let code = request.code;
        self.enqueue(prefix, request.body, request.body_tail, Some(deadline), None)
            .await
            .map_err(|e| self.deadline_error(e, opaque, code, timeout))?;
        Ok((code, response))
    }

    fn encode(&self, cmd: &Command) -> Result<Bytes> {
        let mut buf = BytesMut::with_capacity(64 + cmd.ext_fields.len() * 32);
        frame::encode_prefix(cmd, self.shared.config.serialize_type, self.shared.config.max_frame_size, &mut buf)
            .map_err(|source| Error::Encode { peer: self.shared.peer.clone(), source })?;
        Ok(buf.freeze())
    }

    /// Queues one frame, waiting (until `deadline`, if any) for write budget. `Err(None)` = the deadline passed.
    async fn enqueue(
        &self,
        prefix: Bytes,
        body: Bytes,
        tail: Vec<Bytes>,
        deadline: Option<Instant>,
        oneway: Option<OwnedSemaphorePermit>,
    ) -> Result<(), Option<Error>> {
        let tail_len: usize = tail.iter().map(Bytes::len).sum();
        let size = (prefix.len() + body.len() + tail_len).clamp(1, self.shared.config.write_queue_bytes.max(1));
        let n = u32::try_from(size).unwrap_or(u32::MAX);
        let sem = &self.shared.write_budget;
        let budget = match sem.clone().try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(Some(self.closed_now())),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                let wait = sem.clone().acquire_many_owned(n);
                let acquired = match deadline {
                    Some(d) => tokio::time::timeout_at(d, wait).await.map_err(|_| None)?,
                    None => wait.await,
                };
                acquired.map_err(|_| Some(self.closed_now()))?
            }
        };
        let frame = Outbound::Frame { prefix, body, tail, _budget: Some(budget), _oneway: oneway };
        self.shared.queue.send(frame).map_err(|_| Some(self.closed_now()))
    }

    /// Sends the response to request `opaque`, waiting for write budget (back-pressure on the handler).
    pub(crate) async fn respond(&self, opaque: i32, mut response: Command) {
        response.opaque = opaque;
        response.flag = (response.flag | FLAG_RESPONSE) & !FLAG_ONEWAY;
        let prefix = match self.encode(&response) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(peer = self.peer(), opaque, "cannot encode response: {e}");
                let mut err = Command::response(code::SYSTEM_ERROR, Some(format!("response not encodable: {e}")));
                err.opaque = opaque;
                match self.encode(&err) {
                    Ok(p) => return self.enqueue(p, Bytes::new(), Vec::new(), None, None).await.unwrap_or(()),
                    Err(_) => return,
                }
            }
        };
        // A closed connection drops the response: the peer has already failed the request.
        let _ = self.enqueue(prefix, response.body, response.body_tail, None, None).await;
    }

    /// Queues a small response without waiting for write budget (used from `Drop`, which cannot wait).
    pub(crate) fn respond_now(&self, opaque: i32, mut response: Command) {
        response.opaque = opaque;
        response.flag = (response.flag | FLAG_RESPONSE) & !FLAG_ONEWAY;
        if let Ok(prefix) = self.encode(&response) {
            let (body, tail) = (response.body, response.body_tail);
            let _ = self.shared.queue.send(Outbound::Frame { prefix, body, tail, _budget: None, _oneway: None });
        }
    }

    fn lock_pending(&self) -> MutexGuard<'_, PendingTable> {
        // A panic while holding this lock cannot leave the table inconsistent (single inserts/removes), so a
        // poisoned lock is still usable.
        self.shared.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn closed_error(&self, reason: &str) -> Error {
        Error::ConnectionClosed { peer: self.shared.peer.clone(), reason: reason.to_owned() }
    }

    fn closed_now(&self) -> Error {
        let reason = self.lock_pending().closed.clone().unwrap_or_else(|| "writer stopped".to_owned());
        self.closed_error(&reason)
    }

    fn deadline_error(&self, e: Option<Error>, opaque: i32, code: i32, timeout: Duration) -> Error {
        e.unwrap_or_else(|| Error::Timeout { peer: self.shared.peer.clone(), opaque, code, timeout })
    }

    fn complete(&self, response: Command) {
        let pending = self.lock_pending().map.remove(&response.opaque);
        match pending {
            Some(p) => {
                let _ = p.tx.send(Ok(response));
            }
            // Normal after a timeout or an abandoned async request.
            None => tracing::debug!(peer = self.peer(), opaque = response.opaque, "response to no pending request"),
        }
    }

    /// Notes traffic, for the idle timeout.
    fn active(&self) {
        if self.shared.config.idle_timeout_ms > 0 {
            let ms = self.shared.born.elapsed().as_millis().try_into().unwrap_or(u64::MAX);
            self.shared.last_active.store(ms, Ordering::Relaxed);
        }
    }

    async fn read_loop(self, mut read: OwnedReadHalf) {
        let decoder = FrameDecoder::new(self.shared.config.max_frame_size);
        let mut closed = self.shared.closed.subscribe();
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        // Size of the latest frame whose length was read: the likely size of the next one.
        let mut last_frame = 0;
        let reason = loop {
            // Decode everything complete before reading again.
            let next = loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(cmd)) if cmd.is_response() => self.complete(cmd),
                    Ok(Some(cmd)) => self.shared.router.dispatch(&self, cmd).await,
                    Ok(None) => break decoder.wanted(&buf),
                    Err(e) => break Err(e),
                }
            };
            let wanted = match next {
                Ok(w) => w,
                Err(e) => {
                    // The stream cannot be resynchronised after a bad frame: only this connection goes.
                    tracing::warn!(peer = self.peer(), "closing connection: invalid frame: {e}");
                    break format!("invalid frame: {e}");
                }
            };
            // Reserve the whole next frame at once: a large body lands in one allocation and is never moved. A
            // large frame is read to its end and no further, and after large frames the next read takes one more
            // like them: a decoded frame's body is still in use (the buffer is shared) when the next frame needs
            // room, so any part of that next frame read along with it would be copied into the new buffer (at
            // batches of 64 × 1 KiB, most of a frame per frame: 12 % of a broker's instructions).
            let missing = wanted.saturating_sub(buf.len());
            let (room, limit) = if wanted > frame::LENGTH_FIELD_LEN {
                last_frame = wanted;
                if missing >= EXACT_READ_MIN { (missing, Some(missing)) } else { (missing.max(READ_CHUNK), None) }
            } else if last_frame >= EXACT_READ_MIN {
                let like_last = last_frame.min(BOUNDARY_READ_MAX);
                (like_last, Some(like_last - buf.len()))
            } else {
                (missing.max(READ_CHUNK), None)
            };
            buf.reserve(room);
            let read_some = async {
                match limit {
                    Some(n) => (&mut read).take(n as u64).read_buf(&mut buf).await,
                    None => read.read_buf(&mut buf).await,
                }
            };
            tokio::select! {
                r = read_some => match r {
                    Ok(0) => break "closed by peer".to_owned(),
                    Ok(_) => self.active(),
                    Err(e) => break format!("read error: {e}"),
                },
                _ = closed.wait_for(Option::is_some) => return,
            }
        };
        tracing::debug!(peer = self.peer(), "{reason}");
        self.close(&reason);
    }

    async fn write_loop(self, mut write: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Outbound>) {
        let mut closed = self.shared.closed.subscribe();
        let mut segments: Vec<Bytes> = Vec::with_capacity(MAX_IOVECS);
        let mut held: Vec<Outbound> = Vec::with_capacity(MAX_IOVECS);
        let mut batch = BytesMut::with_capacity(WRITE_BATCH_BYTES);
        let reason = 'outer: loop {
            let first = tokio::select! {
                o = rx.recv() => o,
                _ = closed.wait_for(Option::is_some) => return,
            };
            let Some(first) = first else { break "closed".to_owned() };
            let mut next = Some(first);
            let mut close_after = false;
            let mut size = 0;
            // Gather whatever is queued (without waiting) into one write.
            while let Some(out) = next.take() {
                match out {
                    Outbound::Close => {
                        close_after = true;
                        break;
                    }
                    Outbound::Frame { ref prefix, ref body, ref tail, .. } => {
                        batch.extend_from_slice(prefix);
                        size += prefix.len() + body.len();
                        if body.len() <= COPY_BODY_MAX {
                            batch.extend_from_slice(body);
                        } else {
                            segments.push(batch.split().freeze());
                            segments.push(body.clone());
                        }
                        // Whoever split the body chose these parts: written as they are, never copied.
                        for part in tail {
                            if !batch.is_empty() {
                                segments.push(batch.split().freeze());
                            }
                            size += part.len();
                            segments.push(part.clone());
                        }
                    }
                }
                held.push(out);
                if size >= WRITE_BATCH_BYTES || segments.len() + 2 >= MAX_IOVECS {
                    break;
                }
                next = rx.try_recv().ok();
            }
            if !batch.is_empty() {
                segments.push(batch.split().freeze());
            }
            if let Err(e) = write_all_vectored(&mut write, &mut segments).await {
                break 'outer format!("write error: {e}");
            }
            self.active();
            // Written: release write budget and oneway permits.
            held.clear();
            if close_after {
                let _ = write.shutdown().await;
                break "closed by local shutdown".to_owned();
            }
        };
        self.close(&reason);
    }

    async fn sweep_loop(self) {
        let mut closed = self.shared.closed.subscribe();
        let mut tick = tokio::time::interval(self.shared.config.sweep_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = closed.wait_for(Option::is_some) => return,
            }
            let now = Instant::now();
            if let Some(idle) = self.shared.config.idle_timeout() {
                let last = self.shared.born + Duration::from_millis(self.shared.last_active.load(Ordering::Relaxed));
                if now.saturating_duration_since(last) >= idle {
                    tracing::debug!(peer = self.peer(), "closing connection: idle for {idle:?}");
                    self.close(&format!("idle for {idle:?} (idle-timeout-ms)"));
                    return;
                }
            }
            let expired: Vec<(i32, Pending)> = {
                let mut table = self.lock_pending();
                let ids: Vec<i32> = table.map.iter().filter(|(_, p)| p.deadline <= now).map(|(k, _)| *k).collect();
                ids.into_iter().filter_map(|id| table.map.remove(&id).map(|p| (id, p))).collect()
            };
            for (opaque, p) in expired {
                let err = Error::Timeout { peer: self.shared.peer.clone(), opaque, code: p.code, timeout: p.timeout };
                let _ = p.tx.send(Err(err));
            }
        }
    }
}

/// Writes every segment, using `writev` and resuming after short writes. Empties `segments`.
async fn write_all_vectored(write: &mut OwnedWriteHalf, segments: &mut Vec<Bytes>) -> std::io::Result<()> {
    let mut first = 0;
    while first < segments.len() {
        let n = {
            let slices: Vec<IoSlice<'_>> = segments[first..].iter().take(IOV_MAX).map(|s| IoSlice::new(s)).collect();
            write.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut left = n;
        while left > 0 {
            let Some(seg) = segments.get_mut(first) else { break };
            if left >= seg.len() {
                left -= seg.len();
                first += 1;
            } else {
                let _ = seg.split_to(left);
                left = 0;
            }
        }
        while segments.get(first).is_some_and(Bytes::is_empty) {
            first += 1;
        }
    }
    segments.clear();
    Ok(())
}

async fn acquire(
    sem: &Arc<Semaphore>,
    deadline: Instant,
    exhausted: impl FnOnce() -> Error,
) -> Result<OwnedSemaphorePermit> {
    if let Ok(p) = sem.clone().try_acquire_owned() {
        return Ok(p);
    }
    match tokio::time::timeout_at(deadline, sem.clone().acquire_owned()).await {
        Ok(Ok(p)) => Ok(p),
        _ => Err(exhausted()),
    }
}

/// The response to one async request. Resolves to the response, a timeout or the connection's close reason.
#[derive(Debug)]
pub struct ResponseFuture {
    rx: oneshot::Receiver<Result<Command>>,
    guard: PendingGuard,
}

/// Removes an abandoned request from the pending table (returning its permit) when its future is dropped.
struct PendingGuard {
    conn: Connection,
    opaque: i32,
    armed: bool,
}

impl std::fmt::Debug for PendingGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingGuard").field("opaque", &self.opaque).finish()
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if self.armed {
            let removed = self.conn.lock_pending().map.remove(&self.opaque);
            drop(removed);
        }
    }
}

impl ResponseFuture {
    /// The request id.
    pub fn opaque(&self) -> i32 {
        self.guard.opaque
    }
}

impl Future for ResponseFuture {
    type Output = Result<Command>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let out = match Pin::new(&mut self.rx).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(r)) => r,
            Poll::Ready(Err(_)) => Err(self.guard.conn.closed_now()),
        };
        self.guard.armed = false;
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn connections_probe_a_silent_peer_and_the_probe_can_be_turned_off() {
        let (a, b) = pair().await;
        tune(&a, "test", &ChannelConfig::default());
        let sock = socket2::SockRef::from(&a);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), Duration::from_secs(10));
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 3);
        assert!(a.nodelay().unwrap());

        tune(&b, "test", &ChannelConfig { tcp_keepalive_ms: 0, ..ChannelConfig::default() });
        assert!(!socket2::SockRef::from(&b).keepalive().unwrap());
    }
}
