//! The orderly push consumer: the messages of a queue are processed one at a time, in queue order, by one member
//! of the group at a time (RocketMQ's `MessageListenerOrderly`).
//!
//! It shares the push consumer's machinery — per-topic pull consumers, heartbeats, the group's member list, the
//! average allocation — and adds the broker's queue locks (LockQueues): a newly assigned queue is consumed only
//! once this member holds its lock; locks are renewed every third of the broker's lease, and a lock not renewed
//! for half the lease is treated as lost, so the queue stops until it is locked again (the broker lets another
//! member take it only after the whole lease). Each queue has one task that pulls a batch and hands its messages
//! to the listener one by one (different queues run concurrently, at most `threads` listener calls at once).
//!
//! A failing message (the listener returns an error or panics) blocks its queue: it is given to the listener
//! again after `suspend`, up to `max_attempts` calls, then sent to the group's dead-letter queue
//! (ConsumerSendBack with `dead_letter`), and only once that succeeded does the queue move on, so order is kept.
//! The blocked message and its attempts show in [`QueueStats::blocked_on`], and every failed attempt is logged.
//! A message the listener answers with [`Postpone`] blocks its queue the same way but is no failure: offered
//! again after `suspend`, never counted as an attempt, never dead-lettered.
//! Offsets are committed only past processed messages; a queue taken away by a re-balance is released only after
//! its message in progress finished (its lock renewed meanwhile) and its offset was committed (then unlocked), so
//! the next owner continues exactly where this one stopped. A member killed without unlocking leaves some
//! messages processed but not committed: the next owner processes them again, in order (at-least-once).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use comet_model::MessageQueue;
use comet_proto::comet::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::consumer::{PullConsumer, PullStatus};
use crate::error::ClientError;
use crate::message::ReceivedMessage;
use crate::push::{
    ConsumeFrom, Listener, ListenerResult, Postpone, PushConsumerConfig, QueueStats, heartbeat_members, live_members,
    topic_pullers, unregister_members,
};
use crate::rebalance::allocate_averagely;

/// The broker's lease until its first answer says otherwise (RocketMQ's 60 s).
const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// How often a queue waiting for its lock (or a pull that failed) looks again.
const IDLE_PAUSE: Duration = Duration::from_millis(100);

/// Builds an [`OrderlyConsumer`].
pub struct OrderlyConsumerBuilder {
    config: PushConsumerConfig,
    suspend: Duration,
    max_attempts: u32,
    listener: Option<Listener>,
}

impl OrderlyConsumerBuilder {
    /// Subscribes to `topic` with a tag expression (`*` = all).
    pub fn subscribe(mut self, topic: impl Into<String>, expression: impl Into<String>) -> Self {
        self.config.subscriptions.insert(topic.into(), expression.into());
        self
    }

    /// Where queues without a committed offset start (default: their end).
    pub fn consume_from(mut self, from: ConsumeFrom) -> Self {
        self.config.consume_from = from;
        self
    }

    /// Most listener calls running at once, over all queues (at least 1; default 20).
    pub fn threads(mut self, threads: usize) -> Self {
        self.config.threads = threads.max(1);
        self
    }

    /// How long a queue waits before its failed message goes to the listener again (default 1 s; RocketMQ's
    /// `suspendCurrentQueueTimeMillis`).
    pub fn suspend(mut self, suspend: Duration) -> Self {
        self.suspend = suspend;
        self
    }

    /// Listener calls for one message before it goes to the dead-letter queue (at least 1; default 16, the
    /// group's default `retry_max_times`). RocketMQ's default is unbounded, which lets one poison message block
    /// its queue for ever.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The message handler: called for one message of a queue at a time, in queue order.
    pub fn listener(mut self, listener: impl Fn(&ReceivedMessage) -> ListenerResult + Send + Sync + 'static) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// Changes any other setting (intervals, pull batch and wait, read preference...; the model is always
    /// clustering and `retry_backoff` is replaced by [`OrderlyConsumerBuilder::suspend`]).
    pub fn configure(mut self, change: impl FnOnce(&mut PushConsumerConfig)) -> Self {
        change(&mut self.config);
        self
    }

    /// Starts the consumer: first heartbeat, first re-balance (locking its queues), consume tasks. Must be called
    /// inside a tokio runtime.
    pub async fn start(self) -> Result<OrderlyConsumer, ClientError> {
        let invalid = |message: &str| ClientError::Invalid { op: "orderly_consumer", message: message.to_owned() };
        let listener = self.listener.ok_or_else(|| invalid("no listener"))?;
        if self.config.subscriptions.is_empty() {
            return Err(invalid("no subscription"));
        }
        OrderlyConsumer::start(self.config, self.suspend, self.max_attempts, listener).await
    }
}

/// When a queue's lock is valid, as far as this member knows.
#[derive(Debug, Default)]
struct LockState {
    /// Half a lease after the send time of the last granted lock request; `None` = never granted.
    valid_until: Option<Instant>,
    /// Set when the lock lapsed: once it is granted again, the queue re-reads the committed offset first
    /// (another member may have consumed it meanwhile).
    lapsed: bool,
}

/// One assigned queue.
struct OrderlyQueue {
    queue: MessageQueue,
    /// Taken away (re-balance, shutdown): the consume task stops before its next message.
    dropped: AtomicBool,
    lock: Mutex<LockState>,
    /// Held while a message is with the listener (or going to the dead-letter queue): a release waits for it.
    consuming: tokio::sync::Mutex<()>,
    /// Every message before this offset is processed: what a commit records.
    processed: AtomicU64,
    /// Where the next pull starts.
    next_pull: AtomicU64,
    /// Messages pulled and not yet processed.
    cached: AtomicU64,
    /// The message the queue is blocked on and its failed attempts.
    blocked_on: Mutex<Option<(String, u32)>>,
    /// Address of the member that answered the last pull.
    read_from: Mutex<String>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl OrderlyQueue {
    fn new(queue: MessageQueue, start: u64, valid_until: Instant) -> Self {
        Self {
            queue,
            dropped: AtomicBool::new(false),
            lock: Mutex::new(LockState { valid_until: Some(valid_until), lapsed: false }),
            consuming: tokio::sync::Mutex::new(()),
            processed: AtomicU64::new(start),
            next_pull: AtomicU64::new(start),
            cached: AtomicU64::new(0),
            blocked_on: Mutex::new(None),
            read_from: Mutex::new(String::new()),
            task: Mutex::new(None),
        }
    }

    fn is_locked(&self) -> bool {
        self.lock.lock().valid_until.is_some_and(|until| Instant::now() < until)
    }

    /// Records a granted lock request sent at `sent`.
    fn locked(&self, sent: Instant, lease: Duration) {
        let mut lock = self.lock.lock();
        if lock.valid_until.is_some_and(|until| sent >= until) {
            lock.lapsed = true;
        }
        lock.valid_until = Some(sent + lease / 2);
    }
}

struct Shared {
    config: PushConsumerConfig,
    suspend: Duration,
    max_attempts: u32,
    client_id: String,
    listener: Listener,
    pullers: HashMap<String, PullConsumer>,
    queues: Mutex<HashMap<MessageQueue, Arc<OrderlyQueue>>>,
    /// Queues taken away and not yet unlocked (waiting for their message in progress): their locks are still
    /// renewed, so the broker cannot give them to another member while this one processes.
    releasing: Mutex<HashMap<MessageQueue, Arc<OrderlyQueue>>>,
    /// Listener calls running at once (`threads`).
    permits: Arc<Semaphore>,
    /// The broker's lock lease, ms (from its last answer).
    lease_ms: AtomicU64,
    stopping: AtomicBool,
    rebalance_lock: tokio::sync::Mutex<()>,
}

/// A running orderly push consumer. Stop it with [`OrderlyConsumer::shutdown`].
pub struct OrderlyConsumer {
    shared: Arc<Shared>,
    /// Re-balancing and periodic commits: stopped first at shutdown.
    background: Vec<JoinHandle<()>>,
    /// Heartbeats and lock renewal: kept until shutdown has released every queue.
    keepalive: Vec<JoinHandle<()>>,
}

impl OrderlyConsumer {
    /// A builder for `group` over `nameservers`.
    pub fn builder(nameservers: Vec<String>, group: impl Into<String>) -> OrderlyConsumerBuilder {
        OrderlyConsumerBuilder {
            config: PushConsumerConfig::new(nameservers, group),
            suspend: Duration::from_secs(1),
            max_attempts: 16,
            listener: None,
        }
    }

    async fn start(
        config: PushConsumerConfig,
        suspend: Duration,
        max_attempts: u32,
        listener: Listener,
    ) -> Result<Self, ClientError> {
        let pullers = topic_pullers(&config)?;
        let shared = Arc::new(Shared {
            client_id: crate::new_client_id(),
            suspend,
            max_attempts,
            listener,
            pullers,
            queues: Mutex::new(HashMap::new()),
            releasing: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(config.threads.max(1))),
            lease_ms: AtomicU64::new(u64::try_from(DEFAULT_LEASE.as_millis()).unwrap_or(60_000)),
            stopping: AtomicBool::new(false),
            rebalance_lock: tokio::sync::Mutex::new(()),
            config,
        });
        if let Err(refused) = heartbeat_members(&shared.pullers, &shared.heartbeat_request()).await {
            unregister_members(&shared.pullers, &shared.client_id, &shared.config.group).await;
            return Err(refused);
        }
        shared.rebalance().await;
        let background =
            vec![tokio::spawn(Arc::clone(&shared).rebalance_loop()), tokio::spawn(Arc::clone(&shared).commit_loop())];
        let keepalive =
            vec![tokio::spawn(Arc::clone(&shared).heartbeat_loop()), tokio::spawn(Arc::clone(&shared).renew_loop())];
        Ok(Self { shared, background, keepalive })
    }

    /// This consumer's client id (as the brokers list it and hold its locks).
    pub fn client_id(&self) -> &str {
        &self.shared.client_id
    }

    /// The queues this member is assigned now, sorted (locked or waiting for their lock).
    pub fn assigned_queues(&self) -> Vec<MessageQueue> {
        let mut queues: Vec<MessageQueue> = self.shared.queues.lock().keys().cloned().collect();
        queues.sort();
        queues
    }

    /// Per assigned queue (sorted): whether its lock is held, the message it is blocked on with the failed
    /// attempts, messages pulled and not processed, and offsets.
    pub fn queue_stats(&self) -> Vec<QueueStats> {
        let mut stats: Vec<QueueStats> = self
            .shared
            .queues
            .lock()
            .values()
            .map(|q| {
                let cached = usize::try_from(q.cached.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
                QueueStats {
                    queue: q.queue.clone(),
                    cached_messages: cached,
                    cached_bytes: 0,
                    peak_cached_messages: 0,
                    peak_cached_bytes: 0,
                    flow_control_pauses: 0,
                    next_offset: q.next_pull.load(Ordering::Relaxed),
                    committable_offset: q.processed.load(Ordering::Relaxed),
                    broker_address: q.read_from.lock().clone(),
                    consume_timeouts: 0,
                    overdue_messages: 0,
                    locked: q.is_locked(),
                    blocked_on: q.blocked_on.lock().clone(),
                }
            })
            .collect();
        stats.sort_by(|a, b| a.queue.cmp(&b.queue));
        stats
    }

    /// Graceful stop: no more messages started, the ones in progress finished, offsets committed, locks released
    /// and the client unregistered, so the group's other members take the queues over at once. Locks are renewed
    /// meanwhile.
    ///
    /// A queue whose message in progress is still with the listener after `shutdown_timeout` is not unlocked,
    /// and the client is then not unregistered either (the broker would drop all its locks at once): its consume
    /// task is stopped (the listener call itself cannot be interrupted and runs to its end), what was processed
    /// before that message is committed, and its lock lapses after the broker's lease, so another member takes
    /// the queue only then (and the member list drops this client after the broker's client expiry).
    pub async fn shutdown(mut self) {
        let shared = Arc::clone(&self.shared);
        shared.stopping.store(true, Ordering::SeqCst);
        for task in self.background.drain(..) {
            task.abort();
        }
        let _guard = shared.rebalance_lock.lock().await;
        // Assigned queues, and any a re-balance (just aborted) was releasing.
        let queues: Vec<Arc<OrderlyQueue>> = {
            let assigned: Vec<_> = shared.queues.lock().drain().collect();
            let mut releasing = shared.releasing.lock();
            releasing.extend(assigned);
            releasing.values().cloned().collect()
        };
        for queue in &queues {
            queue.dropped.store(true, Ordering::SeqCst);
        }
        let mut releases = tokio::task::JoinSet::new();
        for queue in queues {
            let shared = Arc::clone(&shared);
            releases.spawn(async move {
                shared.release(&queue).await;
                shared.releasing.lock().remove(&queue.queue);
            });
        }
        let all_released = async { while releases.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(shared.config.shutdown_timeout, all_released).await;
        // The releases still waiting are for queues whose listener runs on: cancelled, so none of them unlocks.
        releases.abort_all();
        while releases.join_next().await.is_some() {}
        let stuck: Vec<Arc<OrderlyQueue>> = shared.releasing.lock().drain().map(|(_, q)| q).collect();
        for q in &stuck {
            if let Some(task) = q.task.lock().take() {
                task.abort();
            }
            // Everything before the message in progress is done: the next owner starts with that message.
            let offset = q.processed.load(Ordering::SeqCst);
            if q.is_locked() {
                shared.commit(&q.queue, offset).await;
            }
            tracing::warn!(queue = %q.queue, offset, timeout = ?shared.config.shutdown_timeout,
                "orderly queue still processing at shutdown; not unlocked: its lock lapses after the lease");
        }
        if stuck.is_empty() {
            unregister_members(&shared.pullers, &shared.client_id, &shared.config.group).await;
        } else {
            tracing::warn!(group = %shared.config.group, stuck = stuck.len(),
                "not unregistering (it would drop the locks of queues still processing); the broker expires this client");
        }
        for task in self.keepalive.drain(..) {
            task.abort();
        }
    }
}

impl Drop for OrderlyConsumer {
    fn drop(&mut self) {
        // Dropped without shutdown: stop everything (no commit, no unlock; the locks lapse after the lease).
        self.shared.stopping.store(true, Ordering::SeqCst);
        for task in self.background.iter().chain(&self.keepalive) {
            task.abort();
        }
        let releasing: Vec<Arc<OrderlyQueue>> = self.shared.releasing.lock().values().cloned().collect();
        for queue in self.shared.queues.lock().values().chain(&releasing) {
            queue.dropped.store(true, Ordering::SeqCst);
            if let Some(task) = queue.task.lock().take() {
                task.abort();
            }
        }
    }
}

impl Shared {
    fn heartbeat_request(&self) -> pb::ClientHeartbeatRequest {
        let subscriptions = self
            .config
            .subscriptions
            .iter()
            .map(|(topic, expression)| pb::Subscription { topic: topic.clone(), expression: expression.clone() })
            .collect();
        pb::ClientHeartbeatRequest {
            client_id: self.client_id.clone(),
            producer_groups: Vec::new(),
            consumer_groups: vec![pb::ConsumerGroupHeartbeat {
                group: self.config.group.clone(),
                message_model: pb::MessageModel::Clustering as i32,
                subscriptions,
            }],
            language: crate::LANGUAGE.into(),
            version: crate::VERSION.into(),
        }
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms.load(Ordering::Relaxed))
    }

    async fn heartbeat_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(error) = heartbeat_members(&self.pullers, &self.heartbeat_request()).await {
                tracing::error!(group = %self.config.group, %error, "heartbeat refused");
            }
        }
    }

    async fn rebalance_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.config.rebalance_interval).await;
            self.rebalance().await;
        }
    }

    /// Renews the locks of every assigned queue, and of every queue being released (until it is unlocked),
    /// every third of the lease.
    async fn renew_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.lease() / 3).await;
            let mut queues: Vec<Arc<OrderlyQueue>> = self.queues.lock().values().cloned().collect();
            queues.extend(self.releasing.lock().values().cloned());
            let mut by_broker: BTreeMap<(String, String), Vec<Arc<OrderlyQueue>>> = BTreeMap::new();
            for q in queues {
                by_broker.entry((q.queue.topic.clone(), q.queue.broker_name.clone())).or_default().push(q);
            }
            for ((topic, broker_name), queues) in by_broker {
                let ids: Vec<u32> = queues.iter().map(|q| q.queue.queue_id).collect();
                let sent = Instant::now();
                match self.lock(&topic, &broker_name, ids).await {
                    Ok(held) => {
                        for q in &queues {
                            if held.contains(&q.queue.queue_id) {
                                q.locked(sent, self.lease());
                            } else if q.is_locked() {
                                tracing::warn!(queue = %q.queue, "queue lock held by another member; queue paused");
                            }
                        }
                    }
                    Err(error) => tracing::warn!(topic, broker_name, %error, "queue lock renewal failed"),
                }
            }
        }
    }

    async fn commit_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.commit_interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            let queues: Vec<Arc<OrderlyQueue>> = self.queues.lock().values().cloned().collect();
            for q in queues {
                // Only while the lock is ours: once it lapsed another member may own the offset.
                if q.is_locked() {
                    self.commit(&q.queue, q.processed.load(Ordering::SeqCst)).await;
                }
            }
        }
    }

    async fn commit(&self, queue: &MessageQueue, offset: u64) {
        let Some(puller) = self.pullers.get(&queue.topic) else { return };
        if let Err(error) = puller.commit_offset(queue, offset).await {
            tracing::warn!(%queue, offset, %error, "offset commit failed");
        }
    }

    /// LockQueues on the master of `broker_name`: the ids among `queue_ids` this member holds afterwards.
    async fn lock(&self, topic: &str, broker_name: &str, queue_ids: Vec<u32>) -> Result<Vec<u32>, ClientError> {
        let Some(puller) = self.pullers.get(topic) else { return Ok(Vec::new()) };
        let request = pb::LockQueuesRequest {
            group: self.config.group.clone(),
            client_id: self.client_id.clone(),
            topic: topic.to_owned(),
            queue_ids,
        };
        let answer = puller
            .call_master("lock_queues", topic, broker_name, |mut c| {
                let request = request.clone();
                async move { c.lock_queues(request).await }
            })
            .await?;
        if answer.lease_millis > 0 {
            self.lease_ms.store(answer.lease_millis, Ordering::Relaxed);
        }
        Ok(answer.locked_queue_ids)
    }

    /// UnlockQueues on the queue's master (failures are logged: the lock then lapses after the lease).
    async fn unlock(&self, queue: &MessageQueue) {
        let Some(puller) = self.pullers.get(&queue.topic) else { return };
        let request = pb::UnlockQueuesRequest {
            group: self.config.group.clone(),
            client_id: self.client_id.clone(),
            topic: queue.topic.clone(),
            queue_ids: vec![queue.queue_id],
        };
        let result = puller
            .call_master("unlock_queues", &queue.topic, &queue.broker_name, |mut c| {
                let request = request.clone();
                async move { c.unlock_queues(request).await }
            })
            .await;
        if let Err(error) = result {
            tracing::warn!(%queue, %error, "queue unlock failed; the lock lapses after its lease");
        }
    }

    /// Gives a queue up: waits for its message in progress, stops its task, commits what was processed (while the
    /// lock is still ours) and unlocks it.
    async fn release(&self, q: &OrderlyQueue) {
        q.dropped.store(true, Ordering::SeqCst);
        let _in_progress = q.consuming.lock().await;
        if let Some(task) = q.task.lock().take() {
            task.abort();
        }
        let offset = q.processed.load(Ordering::SeqCst);
        if q.is_locked() {
            self.commit(&q.queue, offset).await;
        }
        self.unlock(&q.queue).await;
        tracing::info!(queue = %q.queue, offset, "orderly queue released");
    }

    /// Computes the wanted queues per topic; releases the queues no longer wanted, then locks and starts the new
    /// ones (a queue another member still holds is tried again at the next round).
    async fn rebalance(self: &Arc<Self>) {
        let _guard = self.rebalance_lock.lock().await;
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        for (topic, puller) in &self.pullers {
            let queues = match puller.queues(topic).await {
                Ok(queues) => queues,
                Err(error) => {
                    tracing::warn!(topic, %error, "re-balance: no route");
                    continue;
                }
            };
            let Some(members) = live_members(topic, puller).await else { continue };
            if !members.contains(&self.client_id) {
                // As the push consumer: say hello again rather than release everything on a partial list.
                if let Err(error) = heartbeat_members(&self.pullers, &self.heartbeat_request()).await {
                    tracing::error!(group = %self.config.group, %error, "heartbeat refused");
                }
                continue;
            }
            let wanted = allocate_averagely(&queues, &members, &self.client_id);
            let current: Vec<MessageQueue> = self.queues.lock().keys().filter(|q| q.topic == *topic).cloned().collect();
            for queue in current.iter().filter(|q| !wanted.contains(q)) {
                let removed = self.queues.lock().remove(queue);
                if let Some(q) = removed {
                    // Still renewed while its message in progress finishes (the listener may outlast the lease).
                    self.releasing.lock().insert(queue.clone(), Arc::clone(&q));
                    self.release(&q).await;
                    self.releasing.lock().remove(queue);
                }
            }
            let mut new_by_broker: BTreeMap<String, Vec<u32>> = BTreeMap::new();
            for queue in wanted.iter().filter(|q| !current.contains(q)) {
                new_by_broker.entry(queue.broker_name.clone()).or_default().push(queue.queue_id);
            }
            for (broker_name, ids) in new_by_broker {
                let sent = Instant::now();
                let held = match self.lock(topic, &broker_name, ids.clone()).await {
                    Ok(held) => held,
                    Err(error) => {
                        tracing::warn!(topic, broker_name, %error, "queue lock failed; retried at the next re-balance");
                        continue;
                    }
                };
                for id in &ids {
                    let queue = MessageQueue { topic: topic.clone(), broker_name: broker_name.clone(), queue_id: *id };
                    if !held.contains(id) {
                        tracing::debug!(%queue, "queue still locked by another member; retried at the next re-balance");
                        continue;
                    }
                    // Read after the lock: the previous owner committed before it unlocked.
                    match self.start_offset(puller, &queue).await {
                        Ok(offset) => {
                            let q = Arc::new(OrderlyQueue::new(queue.clone(), offset, sent + self.lease() / 2));
                            let task = tokio::spawn(Arc::clone(self).consume_loop(puller.clone(), Arc::clone(&q)));
                            *q.task.lock() = Some(task);
                            self.queues.lock().insert(queue.clone(), q);
                            tracing::info!(%queue, offset, "orderly queue locked and assigned");
                        }
                        Err(error) => {
                            tracing::warn!(%queue, %error, "no start offset; retried at the next re-balance");
                            self.unlock(&queue).await;
                        }
                    }
                }
            }
        }
    }

    async fn start_offset(&self, puller: &PullConsumer, queue: &MessageQueue) -> Result<u64, ClientError> {
        if let Some(offset) = puller.query_offset(queue).await? {
            return Ok(offset);
        }
        let (min, max) = puller.queue_offsets(queue).await?;
        Ok(match self.config.consume_from {
            ConsumeFrom::FirstOffset => min,
            ConsumeFrom::LastOffset => max,
        })
    }

    /// One queue: pull a batch, process its messages one by one in order, repeat; only while the lock is held.
    async fn consume_loop(self: Arc<Self>, puller: PullConsumer, q: Arc<OrderlyQueue>) {
        let mut pending: VecDeque<ReceivedMessage> = VecDeque::new();
        let mut attempts: u32 = 0;
        while !q.dropped.load(Ordering::SeqCst) {
            if !q.is_locked() {
                tokio::time::sleep(IDLE_PAUSE).await;
                continue;
            }
            if std::mem::take(&mut q.lock.lock().lapsed) {
                // The lock lapsed and came back: another member may have consumed meanwhile.
                match puller.query_offset(&q.queue).await {
                    Ok(committed) => {
                        let resume = committed.unwrap_or(0).max(q.processed.load(Ordering::SeqCst));
                        tracing::info!(queue = %q.queue, resume, "queue lock regained; resuming");
                        pending.clear();
                        attempts = 0;
                        q.processed.store(resume, Ordering::SeqCst);
                        q.next_pull.store(resume, Ordering::SeqCst);
                        q.cached.store(0, Ordering::Relaxed);
                    }
                    Err(error) => {
                        tracing::warn!(queue = %q.queue, %error, "offset query failed after the lock came back");
                        q.lock.lock().lapsed = true;
                        tokio::time::sleep(IDLE_PAUSE).await;
                        continue;
                    }
                }
            }
            if pending.is_empty() {
                self.pull_into(&puller, &q, &mut pending).await;
                continue;
            }
            let guard = q.consuming.lock().await;
            if q.dropped.load(Ordering::SeqCst) || !q.is_locked() {
                continue;
            }
            let Some(front) = pending.front() else { continue };
            let mut message = front.clone();
            message.reconsume_times = message.reconsume_times.saturating_add(attempts);
            let done = if attempts >= self.max_attempts {
                // Every attempt failed (or the dead-letter send did): the queue moves on only once it is stored.
                self.dead_letter(&puller, &message, attempts).await
            } else {
                match self.call_listener(message.clone()).await {
                    Ok(()) => true,
                    // Offered again after `suspend`, not counted as an attempt.
                    Err(Refusal::Postponed) => false,
                    Err(Refusal::Failed(reason)) => {
                        attempts = attempts.saturating_add(1);
                        tracing::warn!(queue = %q.queue, offset = message.queue_offset, message_id = %message.message_id,
                            attempts, max_attempts = self.max_attempts, %reason, suspend = ?self.suspend,
                            "orderly queue blocked: the listener failed the message; retrying it in place");
                        *q.blocked_on.lock() = Some((message.message_id.clone(), attempts));
                        attempts >= self.max_attempts && self.dead_letter(&puller, &message, attempts).await
                    }
                }
            };
            if done {
                pending.pop_front();
                attempts = 0;
                *q.blocked_on.lock() = None;
                let next = pending.front().map_or(q.next_pull.load(Ordering::SeqCst), |m| m.queue_offset);
                q.processed.store(next, Ordering::SeqCst);
                q.cached.store(pending.len() as u64, Ordering::Relaxed);
                drop(guard);
            } else {
                drop(guard);
                tokio::time::sleep(self.suspend).await;
            }
        }
    }

    /// Pulls the next batch of `q` into `pending` (nothing pending before it: everything before the pull's next
    /// offset that it did not return was filtered out, and counts as processed).
    async fn pull_into(&self, puller: &PullConsumer, q: &OrderlyQueue, pending: &mut VecDeque<ReceivedMessage>) {
        let next = q.next_pull.load(Ordering::SeqCst);
        let result = match puller.pull(&q.queue, next, self.config.pull_batch, self.config.pull_wait).await {
            Ok(result) => result,
            Err(error) => {
                let pause = if error.is_retryable() { Duration::from_millis(500) } else { Duration::from_secs(3) };
                tracing::warn!(queue = %q.queue, %error, ?pause, "pull failed; retrying");
                tokio::time::sleep(pause).await;
                return;
            }
        };
        q.read_from.lock().clone_from(&result.broker_address);
        match result.status {
            PullStatus::Found | PullStatus::NoNewMessage => {}
            PullStatus::OffsetMoved | PullStatus::OffsetOverflow => {
                tracing::warn!(queue = %q.queue, from = next, to = result.next_offset, "pull offset corrected");
            }
        }
        // A message at or past `next` only (a defensive check: order is what this consumer promises).
        pending.extend(result.messages.into_iter().filter(|m| m.queue_offset >= next));
        q.next_pull.store(result.next_offset, Ordering::SeqCst);
        q.cached.store(pending.len() as u64, Ordering::Relaxed);
        let processed = pending.front().map_or(result.next_offset, |m| m.queue_offset);
        q.processed.store(processed, Ordering::SeqCst);
    }

    /// Calls the listener on the blocking pool (at most `threads` at once); a panic counts as a failure.
    async fn call_listener(&self, message: ReceivedMessage) -> Result<(), Refusal> {
        let Ok(_permit) = Arc::clone(&self.permits).acquire_owned().await else {
            return Err(Refusal::Failed("consumer stopping".into()));
        };
        let listener = Arc::clone(&self.listener);
        let outcome = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                listener(&message)
                    .map_err(|e| if e.is::<Postpone>() { Refusal::Postponed } else { Refusal::Failed(e.to_string()) })
            }))
        })
        .await;
        match outcome {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) => Err(Refusal::Failed("the listener panicked".into())),
        }
    }

    /// Sends a message that failed every attempt to the group's dead-letter queue; true once the broker stored
    /// it (until then the queue stays blocked on it, retried after `suspend`).
    async fn dead_letter(&self, puller: &PullConsumer, message: &ReceivedMessage, attempts: u32) -> bool {
        let queue = &message.queue;
        let request = pb::ConsumerSendBackRequest {
            group: puller.group().to_owned(),
            topic: queue.topic.clone(),
            queue_id: queue.queue_id,
            queue_offset: message.queue_offset,
            commit_log_offset: message.commit_log_offset,
            message_id: message.message_id.clone(),
            dead_letter: true,
            delay_millis: 0,
        };
        let result = puller
            .call_master("consumer_send_back", &queue.topic, &queue.broker_name, |mut c| {
                let request = request.clone();
                async move { c.consumer_send_back(request).await }
            })
            .await;
        match result {
            Ok(_) => {
                tracing::warn!(%queue, offset = message.queue_offset, message_id = %message.message_id, attempts,
                    "orderly message failed every attempt; sent to the dead-letter queue, queue moves on");
                true
            }
            Err(error) => {
                tracing::error!(%queue, offset = message.queue_offset, message_id = %message.message_id, %error,
                    "sending the failed message to the dead-letter queue failed; the queue stays blocked, retrying");
                false
            }
        }
    }
}

/// Why the listener did not take a message.
enum Refusal {
    /// It returned [`Postpone`]: offered again, not an attempt.
    Postponed,
    /// It failed (or panicked): one attempt more.
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeBroker, FakeNameServer};

    // Held for lease/2 after each request, renewed every lease/3: a 150 ms margin for a renewal's round trip
    // on a loaded machine (300 ms left 50 ms, and a late renewal let the lock lapse).
    const LEASE: Duration = Duration::from_millis(900);

    /// Listener calls: (queue offset, start, end).
    type Calls = Arc<Mutex<Vec<(u64, Instant, Option<Instant>)>>>;

    /// An orderly consumer of the fake's one queue (messages 0..3) whose listener takes `slow` on `slow_offset`
    /// and no time otherwise; the broker's lease is [`LEASE`].
    async fn consumer(
        broker: &FakeBroker,
        ns: &FakeNameServer,
        slow_offset: u64,
        slow: Duration,
        shutdown_timeout: Duration,
    ) -> (OrderlyConsumer, Calls) {
        broker.state.lock().lease_millis = u64::try_from(LEASE.as_millis()).unwrap();
        let calls: Calls = Arc::default();
        let record = Arc::clone(&calls);
        let consumer = OrderlyConsumer::builder(vec![ns.address.clone()], "g")
            .subscribe("t", "*")
            .consume_from(ConsumeFrom::FirstOffset)
            .configure(|c| {
                // The fake broker speaks gRPC only (src/testing.rs).
                c.transport = crate::Transport::Grpc;
                c.rebalance_interval = Duration::from_millis(100);
                c.shutdown_timeout = shutdown_timeout;
                c.pull_wait = Duration::from_millis(20);
            })
            .listener(move |m| {
                let i = {
                    let mut calls = record.lock();
                    calls.push((m.queue_offset, Instant::now(), None));
                    calls.len() - 1
                };
                if m.queue_offset == slow_offset {
                    std::thread::sleep(slow);
                }
                record.lock()[i].2 = Some(Instant::now());
                Ok(())
            })
            .start()
            .await
            .unwrap();
        (consumer, calls)
    }

    async fn wait_for(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queue_being_released_keeps_its_lock_renewed_until_its_listener_returns() {
        let broker = FakeBroker::start(3);
        let ns = FakeNameServer::start("b", &[(0, &broker.address)]);
        let slow = 3 * LEASE;
        let (consumer, calls) = consumer(&broker, &ns, 0, slow, Duration::from_secs(5)).await;
        wait_for("the listener to start", || !calls.lock().is_empty()).await;
        // Another member joins and sorts first: the re-balance takes the queue away mid-message.
        broker.state.lock().heartbeats.push("!other".into());
        wait_for("the unlock", || !broker.state.lock().unlocks.is_empty()).await;

        let listener_end = calls.lock()[0].2.expect("the release waited for the message in progress");
        let (first_lock, unlock) = {
            let state = broker.state.lock();
            (state.lock_calls[0].0, state.unlocks[0].0)
        };
        assert!(unlock >= listener_end, "unlocked only after the listener returned");
        assert!(unlock - first_lock >= slow, "the queue was held through the whole message");
        // The broker never saw the lease run out while the member held the queue.
        let mut renewals: Vec<Instant> = broker.state.lock().lock_calls.iter().map(|(at, _)| *at).collect();
        renewals.push(unlock);
        for pair in renewals.windows(2) {
            assert!(pair[1] - pair[0] < LEASE, "a gap of {:?} between lock renewals", pair[1] - pair[0]);
        }
        assert_eq!(broker.state.lock().commits.last(), Some(&1), "the finished message was committed");
        assert_eq!(calls.lock().len(), 1, "no message started after the queue was taken away");
        assert!(consumer.assigned_queues().is_empty());

        consumer.shutdown().await;
        assert_eq!(broker.state.lock().unregisters, 1, "a clean shutdown unregisters");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shutdown_that_times_out_neither_unlocks_nor_unregisters_and_starts_nothing_more() {
        let broker = FakeBroker::start(3);
        let ns = FakeNameServer::start("b", &[(0, &broker.address)]);
        let slow = 2 * LEASE;
        let (consumer, calls) = consumer(&broker, &ns, 1, slow, Duration::from_millis(200)).await;
        wait_for("the slow message", || calls.lock().len() == 2).await;
        let started = Instant::now();
        consumer.shutdown().await;
        let stopped = Instant::now();
        assert!(stopped - started < slow, "shutdown returns after its timeout, not after the listener");
        {
            let state = broker.state.lock();
            assert!(state.unlocks.is_empty(), "the queue is not unlocked while its listener runs");
            assert_eq!(state.unregisters, 0, "unregistering would drop the locks at once");
            assert_eq!(state.commits.last(), Some(&1), "what was processed before the slow message is committed");
        }
        tokio::time::sleep(slow + LEASE).await;
        assert_eq!(calls.lock().len(), 2, "the consume task was stopped: no message after the slow one");
        assert!(calls.lock()[1].2.is_some(), "the listener call itself ran to its end");
        let state = broker.state.lock();
        // A renewal already on its way when the shutdown stopped the task may still arrive; none is sent after.
        let grace = stopped + LEASE / 3;
        assert!(state.lock_calls.iter().all(|(at, _)| *at <= grace), "no renewal after shutdown: the lease lapses");
        assert!(state.unlocks.is_empty());
    }
}
