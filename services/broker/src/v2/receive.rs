//! The receive model: ReceiveMessage (long poll, invisibility, receipt handles), AckMessage,
//! ChangeInvisibleDuration and ForwardMessageToDeadLetterQueue, over the windows of [`crate::domain::pop`].
//!
//! A receive takes, per queue of the topic (all of them for a non-FIFO group, pitfall 17), first the visible
//! unfinished messages (expired deliveries, FIFO messages whose predecessor finished), then new messages read
//! from the window's read position, up to the batch size and `max-inflight-per-queue`; a message whose next
//! attempt would exceed the group's maximum goes to its dead-letter topic instead. With nothing to deliver it
//! parks until an arrival, an acknowledgement or change of the group, the next invisible deadline, the end of its
//! hold, or shutdown. Acknowledgements and dead-letter moves are journaled (one record per request) before they
//! are answered; the group's committed offset follows the lowest unfinished offset.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use comet_model::system::{
    PROP_ORIGIN_MESSAGE_ID, PROP_ORIGIN_TOPIC, PROP_SHARDING_KEY, RECEIVE_JOURNAL_TOPIC, dlq_topic,
};
use comet_model::{CommitLogOffset, QueueId, QueueOffset};
use comet_proto::apache::rocketmq::v2 as pb;
use comet_store::{FlushMode, GetStatus, NewMessage, StoredMessage};
use parking_lot::RwLockReadGuard;
use tokio::time::Instant;
use tonic::Request;

use crate::broker::{Broker, now_ms};
use crate::config::StartFrom;
use crate::domain::copy::{Copy, copy_to};
use crate::domain::filter::TagFilter;
use crate::domain::groups::GroupConfig;
use crate::domain::pop::handle::{Binding, Handle};
use crate::domain::pop::journal::{Change, Record};
use crate::domain::pop::window::{Scan, Window};
use crate::domain::retry::is_dead_letter;
use crate::domain::timer::TIMER_PROPERTIES;
use crate::error::{BrokerError, Result};
use crate::v2::BoxStream;
use crate::v2::context::Caller;
use crate::v2::convert::{self, resource_name};
use crate::v2::digest::md5_bodies;
use crate::v2::sessions::Sessions;
use crate::v2::status;
use crate::v2::wire;

/// Kept between the end of a long-poll hold and the client's deadline, for the answer to travel.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(300);
/// Most bytes one receive reads from one queue at a time.
const READ_MAX_BYTES: usize = 8 << 20;
/// Most store reads per queue per receive (filters and FIFO-blocked groups can make reads return nothing
/// deliverable).
const MAX_READS_PER_QUEUE: usize = 8;

/// Rotates the queue a receive starts with, so every queue of a topic gets served.
static NEXT_START: AtomicUsize = AtomicUsize::new(0);

/// ReceiveMessage: `[status OK, message..., delivery_timestamp]` or `[status, delivery_timestamp]`.
pub async fn receive_message(
    broker: &Arc<Broker>,
    sessions: &Sessions,
    request: Request<pb::ReceiveMessageRequest>,
) -> BoxStream<pb::ReceiveMessageResponse> {
    use pb::receive_message_response::Content;
    let caller = Caller::of(request.metadata());
    if let Some(id) = &caller.client_id {
        sessions.touch(id);
    }
    let language = caller.language.clone();
    let mut items = Vec::new();
    let mut taken = None;
    match receive(broker, &caller, request.into_inner()).await {
        Ok((messages, _)) if messages.is_empty() => {
            items.push(Content::Status(status::status(pb::Code::MessageNotFound, "no new message")));
        }
        Ok((messages, t)) => {
            items.push(Content::Status(status::ok()));
            items.extend(messages.into_iter().map(Content::Message));
            taken = Some(t);
        }
        Err(e) => {
            let mut s = status_of(&e);
            // Clients before 5.0.3 do not know the code (as the proxy answers them).
            if s.code == i32::from(pb::Code::IllegalPollingTime) && caller.older_than((5, 0, 3)) {
                s.code = pb::Code::BadRequest.into();
            }
            items.push(Content::Status(s));
        }
    }
    items.push(Content::DeliveryTimestamp(convert::timestamp(now_ms())));
    let items: Vec<pb::ReceiveMessageResponse> = items
        .into_iter()
        .map(|c| {
            let c = match c {
                Content::Status(s) => Content::Status(status::for_language(s, &language)),
                other => other,
            };
            pb::ReceiveMessageResponse { content: Some(c) }
        })
        .collect();
    Box::pin(Answer { items: items.into_iter(), taken })
}

/// The streamed answer of a receive; dropped before its end (the client went away), it takes its deliveries
/// back so they are not held invisible (or auto-renewed) for a receiver that never got them.
struct Answer {
    items: std::vec::IntoIter<pb::ReceiveMessageResponse>,
    taken: Option<Taken>,
}

impl tokio_stream::Stream for Answer {
    type Item = std::result::Result<pb::ReceiveMessageResponse, tonic::Status>;

    fn poll_next(self: Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match this.items.next() {
            Some(item) => Poll::Ready(Some(Ok(item))),
            None => {
                if let Some(mut taken) = this.taken.take() {
                    taken.handles.clear();
                }
                Poll::Ready(None)
            }
        }
    }
}

/// Deliveries made for one receive, until its answer is sent: dropped with handles left, it undoes them.
struct Taken {
    broker: Arc<Broker>,
    group: String,
    topic: String,
    handles: Vec<Handle>,
}

impl Drop for Taken {
    fn drop(&mut self) {
        for h in &self.handles {
            if let Some(w) = self.broker.receive.window(&self.group, &self.topic, h.queue_id) {
                w.lock().undeliver(h.offset, h.seq);
            }
        }
        if !self.handles.is_empty() {
            tracing::debug!(group = %self.group, topic = %self.topic, messages = self.handles.len(), "receive abandoned by its client; deliveries taken back");
            self.broker.receive.wake(&self.group, &self.topic);
        }
    }
}

/// The status answering `err`, with the receive model's own codes.
fn status_of(err: &BrokerError) -> pb::Status {
    match err {
        BrokerError::Invalid { field: "tag_expression", .. } => {
            status::status(pb::Code::IllegalFilterExpression, err.to_string())
        }
        BrokerError::Invalid { field: "sql_filter", .. } => status::status(pb::Code::Unsupported, err.to_string()),
        BrokerError::Invalid { field: "batch_size" | "message_queue", .. } => {
            status::status(pb::Code::BadRequest, err.to_string())
        }
        _ => status::from_error(err),
    }
}

/// What one receive asks for, checked.
#[derive(Debug, Clone)]
struct Ask {
    group: String,
    topic: String,
    queues: Vec<QueueId>,
    filter: Arc<TagFilter>,
    batch: usize,
    invisible_ms: u64,
    auto_renew: bool,
    client: Option<Arc<str>>,
    fifo: bool,
    /// Redeliveries before the dead-letter topic (the group's `retry_max_times`): `+ 1` attempts in all.
    retry_max_times: u32,
}

/// Checks the request, then takes messages, parking while there are none.
async fn receive(broker: &Arc<Broker>, caller: &Caller, req: pb::ReceiveMessageRequest) -> Result<(Vec<Bytes>, Taken)> {
    let arrived = Instant::now();
    let config = &broker.config.rocketmq_v2;
    let group = resource_name(req.group.as_ref(), "group")?;
    let mq = req.message_queue.as_ref().ok_or_else(|| BrokerError::invalid("message_queue", "missing"))?;
    let topic = resource_name(mq.topic.as_ref(), "topic")?;
    broker.require_master("receive")?;
    let topic_config = broker.topic(&topic)?;
    if !topic_config.perm.is_readable() {
        return Err(BrokerError::NotPermitted {
            what: "read",
            reason: format!("topic {topic:?} has permission {}", topic_config.perm),
        });
    }
    let group_config = match broker.groups.get(&group) {
        Some(g) if !g.consume_enable => {
            return Err(BrokerError::NotPermitted { what: "read", reason: format!("group {group:?} is disabled") });
        }
        Some(g) => g,
        None if broker.config.broker.auto_create_groups => {
            // Created in the group table, as a native heartbeat does: the group is listed, described and deletable
            // (which also drops its receive windows and offsets), not a hidden state keyed by a client's string.
            let name = group.clone();
            broker.blocking(move |b| b.groups.ensure(&name)).await?;
            broker.groups.get(&group).unwrap_or_else(|| GroupConfig::new(group.as_str()))
        }
        None => return Err(BrokerError::GroupNotFound { group }),
    };
    let filter = match &req.filter_expression {
        None => TagFilter::All,
        Some(f) if f.r#type == i32::from(pb::FilterType::Sql) => {
            return Err(BrokerError::invalid(
                "sql_filter",
                "SQL92 filter expressions are not supported; filter by tag",
            ));
        }
        Some(f) => f.expression.parse()?,
    };
    if req.batch_size <= 0 {
        return Err(BrokerError::invalid("batch_size", format!("{} must be positive", req.batch_size)));
    }
    let batch = usize::try_from(req.batch_size).unwrap_or(1).min(config.receive_batch_max as usize).max(1);
    let (invisible_ms, auto_renew) = match (&req.invisible_duration, req.auto_renew) {
        (Some(d), false) => {
            let ms = convert::std_duration(d).map_or(u64::MAX, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            if ms < config.min_invisible_ms || ms > config.max_invisible_ms {
                return Err(BrokerError::invalid(
                    "invisible_duration",
                    format!("{ms} ms is outside {}..={} ms", config.min_invisible_ms, config.max_invisible_ms),
                ));
            }
            (ms, false)
        }
        _ => (config.default_invisible_ms, true),
    };
    let hold =
        hold(caller.deadline, req.long_polling_timeout.as_ref(), config.long_poll_min_ms, config.long_poll_max_ms)?;
    let queue_count = topic_config.read_queue_nums;
    let queues: Vec<QueueId> = match u32::try_from(mq.id) {
        Ok(id) if group_config.fifo && id < queue_count => vec![id],
        _ => (0..queue_count).collect(),
    };
    let ask = Arc::new(Ask {
        group,
        topic,
        queues,
        filter: Arc::new(filter),
        batch,
        invisible_ms,
        auto_renew,
        client: caller.client_id.as_deref().map(Arc::from),
        fifo: group_config.fifo,
        retry_max_times: group_config.retry_max_times,
    });
    take_or_wait(broker, ask, arrived + hold).await
}

/// How long a receive may be held: the requested long poll (else the maximum), within the configured bounds and
/// below the client's deadline less [`DEADLINE_MARGIN`]; ILLEGAL_POLLING_TIME when the deadline leaves less than
/// the minimum.
pub fn hold(
    deadline: Option<Duration>,
    asked: Option<&prost_types::Duration>,
    min_ms: u64,
    max_ms: u64,
) -> Result<Duration> {
    let (min, max) = (Duration::from_millis(min_ms), Duration::from_millis(max_ms.max(min_ms)));
    let asked = asked.and_then(convert::std_duration).unwrap_or(max);
    let mut hold = asked.clamp(min, max);
    if let Some(deadline) = deadline {
        let room = deadline.saturating_sub(DEADLINE_MARGIN);
        if room < min {
            return Err(BrokerError::invalid(
                "long_polling_timeout",
                format!("the client's deadline ({deadline:?}) leaves less than the minimum long poll ({min:?})"),
            ));
        }
        hold = hold.min(room);
    }
    Ok(hold)
}

/// Takes messages; with none, parks until something may have changed, and tries again until `until`.
async fn take_or_wait(broker: &Arc<Broker>, ask: Arc<Ask>, until: Instant) -> Result<(Vec<Bytes>, Taken)> {
    // The common case first: something to deliver, no interest to register.
    let (messages, _, taken) = look(broker, &ask).await?;
    if !messages.is_empty() || broker.waiters.is_stopping() || Instant::now() >= until {
        return Ok((messages, taken));
    }
    let watches: Vec<_> = ask.queues.iter().map(|q| broker.waiters.watch(&ask.topic, *q)).collect();
    let waker = broker.receive.waker(&ask.group, &ask.topic);
    let mut shutdown = broker.waiters.shutdown_signal();
    let mut slot = None;
    loop {
        // Interest first, then the look: a change between the two still wakes this receive.
        let arrivals: Vec<_> = watches.iter().map(|w| w.enabled()).collect();
        let mut changed = Box::pin(waker.notified());
        changed.as_mut().enable();
        let (messages, next_deadline, taken) = look(broker, &ask).await?;
        if !messages.is_empty() || broker.waiters.is_stopping() || Instant::now() >= until {
            return Ok((messages, taken));
        }
        if slot.is_none() {
            slot = Some(broker.waiters.park()?);
        }
        let wake_at = next_deadline
            .map(|d| Instant::now() + Duration::from_millis(d.saturating_sub(now_ms())))
            .map_or(until, |d| d.min(until));
        tokio::select! {
            () = any(arrivals) => {}
            () = changed => {}
            () = &mut shutdown => {}
            () = tokio::time::sleep_until(wake_at) => {}
        }
    }
}

/// One [`take`]: in place when nothing in it can wait for the disk (see [`hot`]), otherwise on the blocking pool.
/// The guard is made with the deliveries: if the request goes away during the look, dropping the look's result
/// undoes them.
async fn look(broker: &Arc<Broker>, ask: &Arc<Ask>) -> Result<(Vec<Bytes>, Option<u64>, Taken)> {
    let inline = hot(broker, ask);
    let (ask, owner) = (Arc::clone(ask), Arc::clone(broker));
    let run = move |b: &Broker| {
        let (messages, next, handles) = take(b, &ask)?;
        let taken = Taken { broker: owner, group: ask.group.clone(), topic: ask.topic.clone(), handles };
        Ok((messages, next, taken))
    };
    if inline { run(broker) } else { broker.blocking(run).await }
}

/// True when a look of `ask` needs no disk: async flush (its journal and dead-letter appends are page-cache
/// copies), the journal topic exists (creating it writes metadata), and every queue's window exists and reads on
/// from resident data ([`comet_store::Store::is_resident`]: the log's last 128 MiB, data in the page cache, or
/// the queue's end), its longest-due redelivery included. Then two thread hand-offs cost more than the work (a
/// tenth of the broker's CPU per received message, measured). A consumer keeping up with producers is here, and
/// one working through a backlog the page cache still holds; one reading from disk, or a group's first receive,
/// goes to the blocking pool.
fn hot(b: &Broker, ask: &Ask) -> bool {
    let now = now_ms();
    b.config.store.flush_mode == FlushMode::Async
        && b.topics.get(RECEIVE_JOURNAL_TOPIC).is_some()
        && ask.queues.iter().all(|&q| {
            b.receive.window(&ask.group, &ask.topic, q).is_some_and(|w| {
                let (read_to, due) = {
                    let w = w.lock();
                    (w.read_to, w.first_due(now))
                };
                [Some(read_to), due].into_iter().flatten().all(|o| b.store.is_resident(&ask.topic, q, QueueOffset(o)))
            })
        })
}

/// Completes when any of `futures` does.
async fn any<F: Future<Output = ()>>(mut futures: Vec<Pin<Box<F>>>) {
    std::future::poll_fn(|cx| {
        for f in &mut futures {
            if f.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    })
    .await;
}

/// One look at every queue of the ask: the messages delivered (encoded as the v2 API shows them) and the earliest
/// time an invisible message of these queues becomes visible again. Blocking.
fn take(b: &Broker, ask: &Ask) -> Result<(Vec<Bytes>, Option<u64>, Vec<Handle>)> {
    let now = now_ms();
    let mut out = Vec::new();
    let mut body_bytes = 0;
    let mut handles = Vec::new();
    let mut next_deadline: Option<u64> = None;
    let n = ask.queues.len();
    let start = NEXT_START.fetch_add(1, Ordering::Relaxed);
    for i in 0..n {
        if out.len() >= ask.batch {
            break;
        }
        let queue_id = ask.queues[(start + i) % n];
        match take_queue(b, ask, queue_id, now, &mut out, &mut body_bytes, &mut handles) {
            Ok(Some(d)) => next_deadline = Some(next_deadline.map_or(d, |n| n.min(d))),
            Ok(None) => {}
            // What earlier queues delivered goes out (their handles are the caller's to undo or answer);
            // failing the whole receive would leave them invisible with an attempt spent and nobody holding them.
            Err(e) if !handles.is_empty() => {
                tracing::warn!(error = %e, group = %ask.group, topic = %ask.topic, queue_id, "receive stopped early");
                break;
            }
            Err(e) => return Err(e),
        }
    }
    if !out.is_empty() {
        b.metrics.pulled(&ask.group, &ask.topic, out.len() as u64, body_bytes);
    }
    Ok((out, next_deadline, handles))
}

/// Where a group without a committed offset starts in a queue (`rocketmq-v2.start-from`).
fn start_offset(b: &Broker, topic: &str, queue_id: QueueId) -> u64 {
    let range = b.store.queue_range(topic, queue_id);
    match b.config.rocketmq_v2.start_from {
        StartFrom::Earliest => range.map_or(0, |(min, _)| min.0),
        StartFrom::Latest => range.map_or(0, |(_, max)| max.0),
    }
}

/// The message-group key of a FIFO message: a hash of its message group (0 for none: per queue).
fn group_key(m: &StoredMessage) -> u64 {
    m.property(PROP_SHARDING_KEY).map_or(0, |g| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in g.bytes() {
            h = (h ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        h | 1
    })
}

/// The window of (group, topic, queue), opened at the committed offset (or where `start-from` says, journaled)
/// and reset when an operator moved the committed offset.
fn open_window(b: &Broker, group: &str, topic: &str, queue_id: QueueId) -> Result<crate::domain::pop::SharedWindow> {
    if let Some(w) = b.receive.window(group, topic, queue_id) {
        return Ok(w);
    }
    let committed = b.offsets.query(group, topic, queue_id);
    let base = committed.map_or_else(|| start_offset(b, topic, queue_id), |c| c.0);
    let (w, created) = b.receive.window_or_open(group, topic, queue_id, || Window::new(base));
    if created && committed.is_none() {
        let change = Change::Opened { queue_id, base };
        let _applied = journal(b, group, topic, vec![change])?;
        b.offsets.commit(group, topic, queue_id, QueueOffset(base));
    }
    Ok(w)
}

/// Takes from one queue into `out` (up to the batch; their bodies' bytes added to `body_bytes`); answers the
/// queue's next invisible deadline.
fn take_queue(
    b: &Broker,
    ask: &Ask,
    queue_id: QueueId,
    now: u64,
    out: &mut Vec<Bytes>,
    body_bytes: &mut u64,
    handles: &mut Vec<Handle>,
) -> Result<Option<u64>> {
    let config = &b.config.rocketmq_v2;
    let window = open_window(b, &ask.group, &ask.topic, queue_id)?;
    let mut w = window.lock();
    follow_reset(b, &ask.group, &ask.topic, queue_id, &mut w);
    let want = ask.batch - out.len();
    let scan = Scan { now_ms: now, fifo: ask.fifo, max: want, renew_slice_ms: config.default_invisible_ms };
    let (due, mut blocked) = w.due(scan, &|c| b.sessions.is_alive(c));
    let mut picked: Vec<(StoredMessage, u32)> = Vec::new();
    let mut dead: Vec<(StoredMessage, u32)> = Vec::new();
    for d in due {
        match read_unfinished(b, &ask.topic, queue_id, d.offset, d.phys) {
            // Every delivery so far failed: the same rule as a native consumer's send-back.
            Some(m) if is_dead_letter(d.attempt - 1, ask.retry_max_times, false) => dead.push((m, d.attempt - 1)),
            Some(m) => picked.push((m, d.attempt)),
            None => {
                tracing::warn!(group = %ask.group, topic = %ask.topic, queue_id, offset = d.offset, "an unfinished message is no longer stored (retention); dropped from the window");
                w.finish(d.offset);
            }
        }
    }
    let max_inflight = config.max_inflight_per_queue.max(1);
    let mut reads = 0;
    while picked.len() < want && w.len() < max_inflight && reads < MAX_READS_PER_QUEUE {
        reads += 1;
        let count = (want - picked.len()).max(if ask.fifo { 16 } else { 1 }).min(max_inflight - w.len());
        let got = b.store.get_messages(
            &ask.topic,
            queue_id,
            QueueOffset(w.read_to),
            count,
            READ_MAX_BYTES,
            ask.filter.as_store_filter(),
        )?;
        match got.status {
            GetStatus::Found => {
                for m in got.messages {
                    let key = group_key(&m);
                    if !w.add(m.queue_offset().0, m.physical_offset().0, key) {
                        continue;
                    }
                    // Otherwise (a FIFO successor of a message that is out, or beyond the batch) it waits in the
                    // window, visible, for a later receive.
                    if (!ask.fifo || blocked.insert(key)) && picked.len() < want {
                        picked.push((m, 1));
                    }
                }
                w.skip_to(got.next_offset.0);
            }
            GetStatus::NoMatchedMessage | GetStatus::OffsetMoved => {
                let end = got.next_offset.0 >= got.max_offset.0;
                w.skip_to(got.next_offset.0);
                if end {
                    break;
                }
            }
            GetStatus::OffsetOverflow if got.max_offset.0 < w.read_to => {
                // The queue ends below where this window read to: the store lost its tail (a machine crash
                // with async flush). Read on from its end, or new messages there would be skipped.
                tracing::warn!(group = %ask.group, topic = %ask.topic, queue_id, read_to = w.read_to, end = got.max_offset.0, "queue shorter than the receive window; reading on from its end");
                w.rewind(got.max_offset.0);
                break;
            }
            GetStatus::NoNewMessage | GetStatus::NoSuchQueue | GetStatus::OffsetOverflow => break,
        }
    }
    if !dead.is_empty() {
        dead_letter(b, &ask.group, &ask.topic, &mut w, dead)?;
    }
    let sums = md5_bodies(picked.iter().map(|(m, _)| m));
    let mut encoder = wire::Encoder::for_messages(picked.iter().map(|(m, _)| m));
    let invisible = Duration::from_millis(ask.invisible_ms);
    let binding = Binding::new(&ask.group, &ask.topic);
    for ((m, attempt), sum) in picked.iter().zip(&sums) {
        let seq = b.receive.next_seq();
        let offset = m.queue_offset().0;
        let renew_until = if ask.auto_renew { now.saturating_add(config.auto_renew_max_ms) } else { 0 };
        w.deliver(offset, seq, now.saturating_add(ask.invisible_ms), renew_until, ask.client.clone());
        let handle = Handle { queue_id, offset, seq };
        let text = handle.encode(&binding);
        let delivery = wire::Delivery { handle: text.as_str(), attempt: *attempt, invisible };
        out.push(encoder.message(m, sum, Some(&delivery)));
        *body_bytes += m.body_len() as u64;
        handles.push(handle);
    }
    commit(b, &ask.group, &ask.topic, queue_id, &mut w);
    b.pulled.record(&ask.group, &ask.topic, queue_id, w.read_to);
    Ok(w.next_deadline(now))
}

/// The unfinished message at `offset` of (topic, queue), read where the window saw it (`phys`) and checked to be
/// that message: after a machine crash lost the CommitLog's tail, a later record can sit at the same position.
/// Otherwise it is looked up by its queue offset; `None` when the queue no longer holds it (retention).
fn read_unfinished(b: &Broker, topic: &str, queue_id: QueueId, offset: u64, phys: u64) -> Option<StoredMessage> {
    let is_it = |m: &StoredMessage| m.topic() == topic && m.queue_id() == queue_id && m.queue_offset().0 == offset;
    if let Ok(m) = b.store.read(CommitLogOffset(phys))
        && is_it(&m)
    {
        return Some(m);
    }
    let got = b.store.get_messages(topic, queue_id, QueueOffset(offset), 1, READ_MAX_BYTES, None).ok()?;
    got.messages.into_iter().next().filter(is_it)
}

/// Restarts the window where the group's committed offset was moved by someone else (a native consumer's or an
/// operator's CommitConsumerOffset, a v2 UpdateOffset): it then differs from what the window last wrote; true if so.
fn follow_reset(b: &Broker, group: &str, topic: &str, queue_id: QueueId, w: &mut Window) -> bool {
    match b.offsets.query(group, topic, queue_id) {
        Some(c) if c.0 != w.committed => {
            tracing::info!(
                group,
                topic,
                queue_id,
                from = w.committed,
                to = c.0,
                "committed offset moved; receive window restarts there"
            );
            w.reset(c.0);
            true
        }
        _ => false,
    }
}

/// Writes the window's base to the group's committed offsets when it moved (unless an operator moved them since
/// the window last wrote: then the window follows the reset instead of overwriting it).
fn commit(b: &Broker, group: &str, topic: &str, queue_id: QueueId, w: &mut Window) {
    if !follow_reset(b, group, topic, queue_id, w) && w.base != w.committed {
        b.offsets.commit(group, topic, queue_id, QueueOffset(w.base));
        w.committed = w.base;
    }
}

/// Appends one journal record; the returned guard must be held until the changes are applied to the windows.
fn journal<'a>(b: &'a Broker, group: &str, topic: &str, changes: Vec<Change>) -> Result<RwLockReadGuard<'a, ()>> {
    if b.topics.get(RECEIVE_JOURNAL_TOPIC).is_none() {
        b.system_topic(RECEIVE_JOURNAL_TOPIC, 1)?;
    }
    let record = Record { group: group.to_owned(), topic: topic.to_owned(), changes };
    let guard = b.receive.journal_guard();
    let message = NewMessage {
        topic: RECEIVE_JOURNAL_TOPIC.to_owned(),
        queue_id: 0,
        msg_id: b.next_message_id(),
        tags: String::new(),
        keys: String::new(),
        properties: Vec::new(),
        body: record.encode(),
        flag: 0,
        sys_flag: 0,
        born_timestamp: now_ms(),
        born_host: b.config.store.store_host,
        reconsume_times: 0,
        prepared_transaction_offset: 0,
    };
    // Read back only at start-up: the dispatcher need not be woken for it.
    let stored = b.store.append_unhurried(&message)?;
    b.ha.on_appended();
    b.receive.journaled(stored.queue_offset.0);
    Ok(guard)
}

/// Moves messages to the group's dead-letter topic (keeping everything the producer gave them, with their
/// attempt count) and finishes them in the window, journaled.
fn dead_letter(b: &Broker, group: &str, topic: &str, w: &mut Window, dead: Vec<(StoredMessage, u32)>) -> Result<()> {
    let dlq = dlq_topic(group);
    if b.topics.get(&dlq).is_none() {
        b.system_topic(&dlq, 1)?;
    }
    let copies: Vec<NewMessage> = dead
        .iter()
        .map(|(m, attempts)| {
            let origin_topic = m.property(PROP_ORIGIN_TOPIC).unwrap_or(m.topic()).to_owned();
            let origin_id = m.property(PROP_ORIGIN_MESSAGE_ID).unwrap_or(m.msg_id()).to_owned();
            let copy = Copy {
                drop: TIMER_PROPERTIES,
                set: vec![(PROP_ORIGIN_TOPIC.to_owned(), origin_topic), (PROP_ORIGIN_MESSAGE_ID.to_owned(), origin_id)],
                reconsume_times: *attempts,
                prepared_transaction_offset: 0,
            };
            copy_to(m, &dlq, 0, copy)
        })
        .collect();
    b.store.append_batch(&copies)?;
    b.ha.on_appended();
    // The copies in the dead-letter topic are what makes the move durable; the journal only spares a restart from
    // moving them again. So they are finished here even if the journal fails: retrying on every receive would fill
    // the dead-letter topic with copies, and at worst a restart moves them once more (never loses them).
    let changes: Vec<Change> =
        dead.iter().map(|(m, _)| Change::Done { queue_id: m.queue_id(), offset: m.queue_offset().0 }).collect();
    let _applied = journal(b, group, topic, changes).inspect_err(|e| {
        tracing::warn!(group, topic, error = %e, "dead-letter moves not journaled; a restart may move them again");
    });
    for (m, attempts) in &dead {
        w.finish(m.queue_offset().0);
        b.metrics.sent_back(group, true);
        tracing::info!(group, topic, message_id = m.msg_id(), attempts, "message dead-lettered after its last attempt");
    }
    Ok(())
}

/// The (group, topic) a request names, the topic existing.
fn names(b: &Broker, group: Option<&pb::Resource>, topic: Option<&pb::Resource>) -> Result<(String, String)> {
    let group = resource_name(group, "group")?;
    let topic = resource_name(topic, "topic")?;
    b.topic(&topic)?;
    Ok((group, topic))
}

/// AckMessage: one result per entry.
pub async fn ack_message(broker: &Arc<Broker>, request: Request<pb::AckMessageRequest>) -> pb::AckMessageResponse {
    let caller = Caller::of(request.metadata());
    if let Some(id) = &caller.client_id {
        broker.sessions.touch(id);
    }
    let req = request.into_inner();
    let work = |b: &Broker, req: &pb::AckMessageRequest| {
        let (group, topic) = names(b, req.group.as_ref(), req.topic.as_ref())?;
        let handles: Vec<&str> = req.entries.iter().map(|e| e.receipt_handle.as_str()).collect();
        let statuses = ack_entries(b, &group, &topic, &handles);
        b.receive.wake(&group, &topic);
        Ok(statuses)
    };
    // With async flush the journal append is a copy into the page cache (microseconds): cheaper in place than two
    // thread hand-offs, as for small sends. Sync flush (an fsync wait) and the journal topic's creation (a
    // metadata write) go to the blocking pool, with a copy of the request (the answer echoes its entries).
    let inline =
        broker.config.store.flush_mode == FlushMode::Async && broker.topics.get(RECEIVE_JOURNAL_TOPIC).is_some();
    let outcome = if inline {
        work(broker, &req)
    } else {
        let copy = req.clone();
        broker.blocking(move |b| work(b, &copy)).await
    };
    let entries = req.entries;
    let lang = caller.language.as_str();
    let statuses: Vec<pb::Status> = match outcome {
        Ok(statuses) => statuses,
        Err(e) => vec![status_of(&e); entries.len()],
    };
    let top = match &statuses[..] {
        [] => status::ok(),
        [first, rest @ ..] if rest.iter().all(|s| s.code == first.code) => first.clone(),
        _ => status::status(pb::Code::MultipleResults, "some entries failed; see each entry's status"),
    };
    pb::AckMessageResponse {
        status: Some(status::for_language(top, lang)),
        entries: entries
            .into_iter()
            .zip(statuses)
            .map(|(e, s)| pb::AckMessageResultEntry {
                message_id: e.message_id,
                receipt_handle: e.receipt_handle,
                status: Some(status::for_language(s, lang)),
            })
            .collect(),
    }
}

/// Acknowledges each handle: the valid ones of each queue journaled in one record, then finished; one status per
/// handle (a queue whose journal append fails fails its own handles only). Blocking.
fn ack_entries(b: &Broker, group: &str, topic: &str, handles: &[&str]) -> Vec<pb::Status> {
    let mut results: Vec<Result<()>> = Vec::with_capacity(handles.len());
    let mut by_queue: std::collections::BTreeMap<QueueId, Vec<(usize, Handle)>> = std::collections::BTreeMap::new();
    let mut failed: Vec<(usize, pb::Status)> = Vec::new();
    let binding = Binding::new(group, topic);
    for (i, text) in handles.iter().enumerate() {
        match Handle::decode(text, &binding) {
            Ok(h) => {
                by_queue.entry(h.queue_id).or_default().push((i, h));
                results.push(Ok(()));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    for (queue_id, handles) in by_queue {
        let stale = || {
            BrokerError::invalid(
                "receipt_handle",
                "expired or already used (the message was redelivered, acknowledged or its invisible time changed)",
            )
        };
        let Some(window) = b.receive.window(group, topic, queue_id) else {
            for (i, _) in handles {
                results[i] = Err(stale());
            }
            continue;
        };
        let mut w = window.lock();
        let mut changes = Vec::new();
        for (i, h) in &handles {
            if w.holds(h.offset, h.seq) && !changes.contains(&Change::Done { queue_id, offset: h.offset }) {
                changes.push(Change::Done { queue_id, offset: h.offset });
            } else {
                results[*i] = Err(stale());
            }
        }
        if changes.is_empty() {
            continue;
        }
        let applied = match journal(b, group, topic, changes) {
            Ok(applied) => applied,
            Err(e) => {
                tracing::warn!(group, topic, queue_id, error = %e, "acknowledgements not journaled; the messages stay unfinished");
                let s = status_of(&e);
                failed.extend(handles.iter().filter(|(i, _)| results[*i].is_ok()).map(|(i, _)| (*i, s.clone())));
                continue;
            }
        };
        for (i, h) in &handles {
            if results[*i].is_ok() {
                w.ack(h.offset, h.seq);
            }
        }
        drop(applied);
        commit(b, group, topic, queue_id, &mut w);
    }
    let mut statuses: Vec<pb::Status> =
        results.iter().map(|r| r.as_ref().map_or_else(status_of, |()| status::ok())).collect();
    for (i, s) in failed {
        statuses[i] = s;
    }
    statuses
}

/// ChangeInvisibleDuration: a new invisible deadline and a new receipt handle (the old one stops working).
pub async fn change_invisible_duration(
    broker: &Arc<Broker>,
    request: Request<pb::ChangeInvisibleDurationRequest>,
) -> pb::ChangeInvisibleDurationResponse {
    let caller = Caller::of(request.metadata());
    if let Some(id) = &caller.client_id {
        broker.sessions.touch(id);
    }
    let req = request.into_inner();
    // No I/O (the window's lock only): answered in place.
    let outcome = (|| {
        let b: &Broker = broker;
        let (group, topic) = names(b, req.group.as_ref(), req.topic.as_ref())?;
        let max = b.config.rocketmq_v2.max_invisible_ms;
        let ms = req
            .invisible_duration
            .as_ref()
            .and_then(convert::std_duration)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .filter(|ms| *ms <= max)
            .ok_or_else(|| BrokerError::invalid("invisible_duration", format!("must be 0..={max} ms")))?;
        let binding = Binding::new(&group, &topic);
        let h = Handle::decode(&req.receipt_handle, &binding)?;
        let stale = || BrokerError::invalid("receipt_handle", "expired or already used");
        let window = b.receive.window(&group, &topic, h.queue_id).ok_or_else(stale)?;
        let seq = b.receive.next_seq();
        if !window.lock().change(h.offset, h.seq, seq, now_ms().saturating_add(ms)) {
            return Err(stale());
        }
        b.receive.wake(&group, &topic);
        Ok(Handle { seq, ..h }.encode(&binding).as_str().to_owned())
    })();
    let lang = caller.language.as_str();
    match outcome {
        Ok(handle) => pb::ChangeInvisibleDurationResponse { status: Some(status::ok()), receipt_handle: handle },
        Err(e) => pb::ChangeInvisibleDurationResponse {
            status: Some(status::for_language(status_of(&e), lang)),
            receipt_handle: String::new(),
        },
    }
}

/// ForwardMessageToDeadLetterQueue: the message moves to the group's DLQ topic at once.
pub async fn forward_to_dead_letter_queue(
    broker: &Arc<Broker>,
    request: Request<pb::ForwardMessageToDeadLetterQueueRequest>,
) -> pb::ForwardMessageToDeadLetterQueueResponse {
    let caller = Caller::of(request.metadata());
    if let Some(id) = &caller.client_id {
        broker.sessions.touch(id);
    }
    let req = request.into_inner();
    let outcome = broker
        .blocking(move |b| {
            let (group, topic) = names(b, req.group.as_ref(), req.topic.as_ref())?;
            let h = Handle::decode(&req.receipt_handle, &Binding::new(&group, &topic))?;
            let stale = || BrokerError::invalid("receipt_handle", "expired or already used");
            let window = b.receive.window(&group, &topic, h.queue_id).ok_or_else(stale)?;
            let mut w = window.lock();
            let entry = w.entry(h.offset).filter(|_| w.holds(h.offset, h.seq)).cloned().ok_or_else(stale)?;
            let Some(message) = read_unfinished(b, &topic, h.queue_id, h.offset, entry.phys) else {
                w.finish(h.offset);
                commit(b, &group, &topic, h.queue_id, &mut w);
                return Err(BrokerError::MessageNotFound {
                    what: format!("offset {} of queue {} of {topic:?} (removed by retention)", h.offset, h.queue_id),
                });
            };
            dead_letter(b, &group, &topic, &mut w, vec![(message, entry.attempt)])?;
            commit(b, &group, &topic, h.queue_id, &mut w);
            drop(w);
            b.receive.wake(&group, &topic);
            Ok(())
        })
        .await;
    let status = outcome.map_or_else(|e| status_of(&e), |()| status::ok());
    pb::ForwardMessageToDeadLetterQueueResponse { status: Some(status::for_language(status, &caller.language)) }
}

/// Rebuilds the receive windows at start-up: the snapshot (already loaded), then every journal record after it,
/// then each window's base raised to the group's committed offset where that is ahead. Blocking.
pub fn recover(b: &Broker) -> Result<()> {
    let mut from = b.receive.journal_next();
    let mut replayed = 0u64;
    loop {
        let got = b.store.get_messages(RECEIVE_JOURNAL_TOPIC, 0, QueueOffset(from), 256, 16 << 20, None)?;
        match got.status {
            GetStatus::Found => {
                for m in &got.messages {
                    match Record::decode(&m.body()) {
                        Some(record) => b.receive.replay(&record),
                        None => {
                            tracing::warn!(offset = m.queue_offset().0, "unreadable receive journal record skipped")
                        }
                    }
                    b.receive.journaled(m.queue_offset().0);
                    replayed += 1;
                }
                from = got.next_offset.0;
            }
            GetStatus::OffsetMoved | GetStatus::NoMatchedMessage if got.next_offset.0 > from => {
                tracing::warn!(
                    from,
                    to = got.next_offset.0,
                    "receive journal records removed by retention before a snapshot covered them"
                );
                from = got.next_offset.0;
            }
            _ => break,
        }
    }
    let end = b.store.queue_range(RECEIVE_JOURNAL_TOPIC, 0).map_or(0, |(_, max)| max.0);
    b.receive.clamp_journal_next(end);
    // Windows of topics deleted before a crash (the snapshot was older than the deletion) go.
    for (_, topic, _, _) in b.receive.all() {
        if b.topics.get(&topic).is_none() {
            b.receive.remove_topic(&topic);
        }
    }
    let windows = b.receive.all();
    for (group, topic, queue_id, window) in &windows {
        let mut w = window.lock();
        if let Some(c) = b.offsets.query(group, topic, *queue_id) {
            w.rebase(c.0);
        }
        // A machine crash with async flush can lose the queue's tail: offsets from its end on will name new
        // messages, which must be read, and entries there named records that are gone.
        let end = b.store.queue_range(topic, *queue_id).map_or(0, |(_, max)| max.0);
        if end < w.read_to {
            tracing::warn!(
                group,
                topic,
                queue_id,
                read_to = w.read_to,
                end,
                "queue shorter than the receive window after a crash; reading on from its end"
            );
            w.rewind(end);
        }
        w.committed = w.base;
        b.offsets.commit(group, topic, *queue_id, QueueOffset(w.base));
    }
    if replayed > 0 || !windows.is_empty() {
        tracing::info!(windows = windows.len(), replayed, "receive windows recovered");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(ms: u64) -> prost_types::Duration {
        convert::duration(Duration::from_millis(ms))
    }

    #[test]
    fn the_hold_is_clamped_to_the_bounds_and_below_the_client_deadline() {
        let ms = Duration::from_millis;
        assert_eq!(hold(None, None, 5_000, 20_000).unwrap(), ms(20_000), "no request: the maximum");
        assert_eq!(hold(None, Some(&d(1_000)), 5_000, 20_000).unwrap(), ms(5_000), "raised to the minimum");
        assert_eq!(hold(None, Some(&d(60_000)), 5_000, 20_000).unwrap(), ms(20_000));
        // Python: deadline = request timeout + await; Rust: deadline = the long poll itself.
        assert_eq!(hold(Some(ms(23_000)), Some(&d(20_000)), 5_000, 20_000).unwrap(), ms(20_000));
        assert_eq!(hold(Some(ms(10_000)), Some(&d(10_000)), 5_000, 20_000).unwrap(), ms(10_000) - DEADLINE_MARGIN);
        let short = hold(Some(ms(5_100)), None, 5_000, 20_000).unwrap_err();
        assert!(matches!(short, BrokerError::Invalid { field: "long_polling_timeout", .. }));
        assert_eq!(status_of(&short).code, i32::from(pb::Code::IllegalPollingTime));
    }

    #[test]
    fn message_groups_get_distinct_keys_and_none_is_per_queue() {
        let mut msg = NewMessage {
            topic: "t".into(),
            queue_id: 0,
            msg_id: "id".into(),
            tags: String::new(),
            keys: String::new(),
            properties: vec![],
            body: bytes::Bytes::from_static(b"x"),
            flag: 0,
            sys_flag: 0,
            born_timestamp: 0,
            born_host: "127.0.0.1:1".parse().unwrap(),
            reconsume_times: 0,
            prepared_transaction_offset: 0,
        };
        let dir = tempfile::tempdir().unwrap();
        let store = comet_store::Store::open(crate::config::test_store(dir.path())).unwrap();
        let plain = store.append(&msg).unwrap();
        msg.properties = vec![(PROP_SHARDING_KEY.into(), "A".into())];
        let a = store.append(&msg).unwrap();
        msg.properties = vec![(PROP_SHARDING_KEY.into(), "B".into())];
        let b = store.append(&msg).unwrap();
        let key = |r: comet_store::AppendResult| group_key(&store.read(r.offset).unwrap());
        let (plain, a, b) = (key(plain), key(a), key(b));
        assert_eq!(plain, 0);
        assert!(a != 0 && b != 0 && a != b);
    }
}
