//! The push consumer: the SDK decides which queues this member reads (clustering: an average share of the
//! group's live members; broadcasting: every queue), runs one long-poll loop per queue, hands messages to a
//! listener on worker threads, and commits per queue the lowest offset not yet acknowledged.
//!
//! At-least-once: a message counts as consumed only after the listener returned `Ok`, or — when it failed or
//! panicked — once the broker took it back for a later redelivery (clustering: ConsumerSendBack, redelivered to
//! this group only through `%RETRY%<group>`, which every clustering member reads implicitly, then
//! `%DLQ%<group>`). A send-back that fails leaves the message here and it is retried locally after
//! `retry_backoff`; commits never pass a message in flight, failed or being sent back. Broadcasting members have
//! no retry topic: they retry locally up to `max_reconsume_times`, then log the message and skip it.
//!
//! Consumption timeout: a listener call running longer than `consume_timeout` is logged and counted in
//! [`QueueStats`], but the message is not redelivered while the call runs (RocketMQ #1600 redelivers it and
//! processes it twice); when the call returns, its result applies. Duplicates happen around re-balances and
//! restarts.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use comet_model::MessageQueue;
use comet_model::system::{is_retry_topic, retry_topic};
use comet_nameserver_client::ClientConfig;
use comet_proto::comet::v1 as pb;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use crate::consumer::{PullConsumer, PullConsumerConfig, PullStatus};
use crate::error::ClientError;
use crate::fault::Faults;
use crate::member::ReadPreference;
use crate::message::ReceivedMessage;
use crate::rebalance::{OffsetWindow, allocate_averagely};

/// What a listener returns: `Ok` acknowledges the message; an error (like a panic) has it delivered again later
/// (clustering: by the broker, through the group's retry topic, with growing delays); [`Postpone`] has it
/// offered again without counting as a failure.
pub type ListenerResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The listener's answer for a message it did not handle and wants offered again, not failed (RocketMQ's
/// "suspend a moment"): `Err(Box::new(Postpone))`. The message is not sent back to the retry topic and its
/// delivery count does not grow; this member offers it again after `retry_backoff`, and one still unhandled at
/// shutdown (or when its queue moves to another member) stays unacknowledged, so the queue's next reader gets it
/// from the committed offset. For a listener that must stop taking messages for a while, say at a quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Postpone;

impl std::fmt::Display for Postpone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("postponed by the listener")
    }
}

impl std::error::Error for Postpone {}

/// The application's message handler, called concurrently from the worker threads.
pub type Listener = Arc<dyn Fn(&ReceivedMessage) -> ListenerResult + Send + Sync>;

/// How a group's members share the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageModel {
    /// Each message goes to one member; queues are shared among the live members; offsets on the broker.
    Clustering,
    /// Every member reads every queue; offsets in a local file.
    Broadcasting,
}

/// Where a queue with no committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeFrom {
    /// At the queue's end: only messages stored from now on.
    LastOffset,
    /// At the queue's smallest stored offset.
    FirstOffset,
}

/// Push consumer settings; see [`PushConsumer::builder`].
#[derive(Debug, Clone)]
pub struct PushConsumerConfig {
    /// NameServer addresses (`host:port`).
    pub nameservers: Vec<String>,
    /// The consumer group.
    pub group: String,
    /// Topic → tag expression (`*` = every message, `a||b` = tag a or b).
    pub subscriptions: BTreeMap<String, String>,
    /// Clustering or broadcasting.
    pub model: MessageModel,
    /// Where a queue without a committed offset starts.
    pub consume_from: ConsumeFrom,
    /// Listener worker threads.
    pub threads: usize,
    /// Broadcasting: the offsets file (default `./comet-offsets-<group>.txt`).
    pub offset_file: Option<PathBuf>,
    /// Heartbeats to every broker of the subscribed topics (default 30 s; also at start).
    pub heartbeat_interval: Duration,
    /// How often the route and the group's member list are read and the allocation re-computed (default 1 s;
    /// RocketMQ re-balances every 20 s plus on a broker notification, which Comet's broker does not send, so
    /// this short poll is what makes re-balancing prompt). Queues move only when the allocation changed.
    pub rebalance_interval: Duration,
    /// Offset commits (default 5 s; also when a queue is released and at shutdown).
    pub commit_interval: Duration,
    /// Messages per pull (default 32).
    pub pull_batch: u32,
    /// Long-poll wait per pull (default 5 s).
    pub pull_wait: Duration,
    /// A queue's pulls pause above this many unacknowledged messages (default 1 000).
    pub max_cached_messages: usize,
    /// A queue's pulls pause above this many unacknowledged body bytes (default 100 MiB).
    pub max_cached_bytes: usize,
    /// Delay before a message is retried locally (default 5 s, as RocketMQ): a failed message whose send-back
    /// to the broker failed (clustering), or a failed message of a broadcasting member.
    pub retry_backoff: Duration,
    /// Broadcasting: local retries of a failed message before it is logged and skipped (default 16). Clustering
    /// groups use the broker's group setting `retry_max_times` instead.
    pub max_reconsume_times: u32,
    /// A listener call running longer is logged and counted in [`QueueStats::consume_timeouts`]; the message is
    /// not redelivered while it runs (default 15 min).
    pub consume_timeout: Duration,
    /// How long `shutdown` waits for listener calls in progress (default 10 s).
    pub shutdown_timeout: Duration,
    /// How old a cached route may get (default 30 s).
    pub route_refresh: Duration,
    /// Which member of each broker group pulls, consumer lists and commits go to (default: the master, a slave
    /// while it is down); heartbeats go to every member either way. See [`ReadPreference`].
    pub read_preference: ReadPreference,
    /// How long a member that failed in transport is passed over before it is tried again (default 5 s).
    pub failover_backoff: Duration,
    /// Wire of the hot calls (SendMessage, PullMessage): remoting frames on the broker's port (default), or gRPC
    /// for a path that passes only HTTP/2. See [`Transport`](crate::Transport).
    pub transport: crate::Transport,
    /// Settings of the NameServer client (addresses are taken from `nameservers`).
    pub nameserver_client: Option<ClientConfig>,
}

impl PushConsumerConfig {
    /// Defaults for `group` over `nameservers`: clustering, from the last offset, 20 threads.
    pub fn new(nameservers: Vec<String>, group: impl Into<String>) -> Self {
        Self {
            nameservers,
            group: group.into(),
            subscriptions: BTreeMap::new(),
            model: MessageModel::Clustering,
            consume_from: ConsumeFrom::LastOffset,
            threads: 20,
            offset_file: None,
            heartbeat_interval: Duration::from_secs(30),
            rebalance_interval: Duration::from_secs(1),
            commit_interval: Duration::from_secs(5),
            pull_batch: 32,
            pull_wait: Duration::from_secs(5),
            max_cached_messages: 1000,
            max_cached_bytes: 100 << 20,
            retry_backoff: Duration::from_secs(5),
            max_reconsume_times: 16,
            consume_timeout: Duration::from_secs(15 * 60),
            shutdown_timeout: Duration::from_secs(10),
            route_refresh: Duration::from_secs(30),
            read_preference: ReadPreference::Master,
            failover_backoff: Duration::from_secs(5),
            transport: crate::Transport::default(),
            nameserver_client: None,
        }
    }
}

/// Builds a [`PushConsumer`].
pub struct PushConsumerBuilder {
    config: PushConsumerConfig,
    listener: Option<Listener>,
}

impl PushConsumerBuilder {
    /// Subscribes to `topic` with a tag expression (`*` = all).
    pub fn subscribe(mut self, topic: impl Into<String>, expression: impl Into<String>) -> Self {
        self.config.subscriptions.insert(topic.into(), expression.into());
        self
    }

    /// Clustering (default) or broadcasting.
    pub fn model(mut self, model: MessageModel) -> Self {
        self.config.model = model;
        self
    }

    /// Where queues without a committed offset start (default: their end).
    pub fn consume_from(mut self, from: ConsumeFrom) -> Self {
        self.config.consume_from = from;
        self
    }

    /// Which member of each broker group to read from (default: the master, a slave while it is down).
    pub fn read_preference(mut self, preference: ReadPreference) -> Self {
        self.config.read_preference = preference;
        self
    }

    /// Listener worker threads (at least 1).
    pub fn threads(mut self, threads: usize) -> Self {
        self.config.threads = threads.max(1);
        self
    }

    /// Broadcasting: where offsets are kept.
    pub fn offset_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.offset_file = Some(path.into());
        self
    }

    /// How long a listener call may run before it is reported as overdue (default 15 min).
    pub fn consume_timeout(mut self, timeout: Duration) -> Self {
        self.config.consume_timeout = timeout;
        self
    }

    /// The message handler.
    pub fn listener(mut self, listener: impl Fn(&ReceivedMessage) -> ListenerResult + Send + Sync + 'static) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// Changes any other setting.
    pub fn configure(mut self, change: impl FnOnce(&mut PushConsumerConfig)) -> Self {
        change(&mut self.config);
        self
    }

    /// Starts the consumer: first heartbeat, first re-balance, pull loops, workers. Must be called inside a tokio
    /// runtime.
    pub async fn start(self) -> Result<PushConsumer, ClientError> {
        let invalid = |message: &str| ClientError::Invalid { op: "push_consumer", message: message.to_owned() };
        let listener = self.listener.ok_or_else(|| invalid("no listener"))?;
        if self.config.subscriptions.is_empty() {
            return Err(invalid("no subscription"));
        }
        PushConsumer::start(self.config, listener).await
    }
}

/// One work item for the listener threads.
struct Task {
    message: ReceivedMessage,
    queue: Arc<QueueState>,
}

/// An assigned queue: its offset window, whether it was taken away, and flow-control figures for [`QueueStats`].
struct QueueState {
    window: Mutex<OffsetWindow>,
    dropped: AtomicBool,
    acked: tokio::sync::Notify,
    peak_messages: AtomicUsize,
    peak_bytes: AtomicUsize,
    pauses: AtomicU64,
    /// Address of the member (master or slave) that answered the last pull.
    read_from: Mutex<String>,
    /// Listener calls in progress, by queue offset.
    running: Mutex<HashMap<u64, Running>>,
    /// Listener calls that ran past the consume timeout.
    consume_timeouts: AtomicU64,
}

/// A listener call in progress.
struct Running {
    started: Instant,
    message_id: String,
    /// Already logged and counted as past the consume timeout.
    overdue: bool,
}

impl QueueState {
    fn new(start: u64) -> Self {
        Self {
            window: Mutex::new(OffsetWindow::new(start)),
            dropped: AtomicBool::new(false),
            acked: tokio::sync::Notify::new(),
            peak_messages: AtomicUsize::new(0),
            peak_bytes: AtomicUsize::new(0),
            pauses: AtomicU64::new(0),
            read_from: Mutex::new(String::new()),
            running: Mutex::new(HashMap::new()),
            consume_timeouts: AtomicU64::new(0),
        }
    }
}

/// One assigned queue's consumption state: what monitoring (and the flow-control test) can observe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    /// The queue.
    pub queue: MessageQueue,
    /// Messages pulled and not yet acknowledged (queued for, inside, or failed in the listener).
    pub cached_messages: usize,
    /// Body bytes of those messages.
    pub cached_bytes: usize,
    /// The most messages cached at once since the queue was assigned (at most the limit plus one pull batch).
    pub peak_cached_messages: usize,
    /// The most body bytes cached at once since the queue was assigned.
    pub peak_cached_bytes: usize,
    /// How often this queue's pulls paused because a cache limit was reached.
    pub flow_control_pauses: u64,
    /// Where the next pull starts.
    pub next_offset: u64,
    /// What a commit would record now: the lowest unacknowledged offset, else `next_offset`.
    pub committable_offset: u64,
    /// Address of the broker group member (master or slave) that answered the queue's last pull (empty before the
    /// first answer), so an application can see a fail-over to a slave.
    pub broker_address: String,
    /// Orderly consumer: whether this member holds the queue's broker lock now (it consumes the queue only then).
    /// Always false for the concurrent push consumer, which takes no locks.
    pub locked: bool,
    /// Orderly consumer: the id of the message the queue is blocked on (its listener failed it and it is retried
    /// in place), with the failed attempts so far; `None` while the queue flows.
    pub blocked_on: Option<(String, u32)>,
    /// Listener calls that ran longer than `consume_timeout` since the queue was assigned (each counted once).
    pub consume_timeouts: u64,
    /// Listener calls running longer than `consume_timeout` right now (their messages are not redelivered
    /// meanwhile).
    pub overdue_messages: usize,
}

struct Assigned {
    state: Arc<QueueState>,
    task: JoinHandle<()>,
}

struct Shared {
    config: PushConsumerConfig,
    client_id: String,
    listener: Listener,
    pullers: HashMap<String, PullConsumer>,
    assigned: Mutex<HashMap<MessageQueue, Assigned>>,
    /// Broadcasting: the last known offset of every queue ever read (also those not assigned now).
    file_offsets: Mutex<HashMap<MessageQueue, u64>>,
    tasks: Mutex<Option<mpsc::Sender<Task>>>,
    in_flight: AtomicUsize,
    stopping: AtomicBool,
    runtime: tokio::runtime::Handle,
    rebalance_lock: tokio::sync::Mutex<()>,
}

/// A running push consumer. Stop it with [`PushConsumer::shutdown`].
pub struct PushConsumer {
    shared: Arc<Shared>,
    background: Vec<JoinHandle<()>>,
}

impl PushConsumer {
    /// A builder for `group` over `nameservers`.
    pub fn builder(nameservers: Vec<String>, group: impl Into<String>) -> PushConsumerBuilder {
        PushConsumerBuilder { config: PushConsumerConfig::new(nameservers, group), listener: None }
    }

    async fn start(mut config: PushConsumerConfig, listener: Listener) -> Result<Self, ClientError> {
        if config.model == MessageModel::Clustering {
            // Failed messages come back to this group through its retry topic: read it like any subscribed topic
            // (every tag: the filter applied when the message was first delivered).
            config.subscriptions.entry(retry_topic(&config.group)).or_insert_with(|| "*".to_owned());
        }
        let pullers = topic_pullers(&config)?;
        // Unique per consumer, also among several in one process (the system tests run three).
        let client_id = crate::new_client_id();
        let file_offsets = match (config.model, config.offset_file.as_deref()) {
            (MessageModel::Broadcasting, path) => load_offsets(&offset_path(&config.group, path))?,
            (MessageModel::Clustering, _) => HashMap::new(),
        };
        let (sender, receiver) = mpsc::channel::<Task>();
        let shared = Arc::new(Shared {
            client_id,
            listener,
            pullers,
            assigned: Mutex::new(HashMap::new()),
            file_offsets: Mutex::new(file_offsets),
            tasks: Mutex::new(Some(sender)),
            in_flight: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
            rebalance_lock: tokio::sync::Mutex::new(()),
            config,
        });
        // A broker refusing the group (e.g. broadcasting while the group forbids it) fails the start; it recorded
        // the member, so leave again.
        if let Err(refused) = shared.heartbeat().await {
            shared.unregister().await;
            return Err(refused);
        }
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..shared.config.threads {
            let (worker_shared, receiver) = (Arc::clone(&shared), Arc::clone(&receiver));
            let spawned = std::thread::Builder::new()
                .name(format!("comet-listener-{i}"))
                .spawn(move || worker(&worker_shared, &receiver));
            if let Err(e) = spawned {
                // Closing the channel ends the workers already started.
                shared.tasks.lock().take();
                shared.unregister().await;
                return Err(ClientError::Invalid { op: "push_consumer", message: format!("spawn worker: {e}") });
            }
        }
        shared.rebalance().await;
        let background = vec![
            tokio::spawn(Arc::clone(&shared).heartbeat_loop()),
            tokio::spawn(Arc::clone(&shared).rebalance_loop()),
            tokio::spawn(Arc::clone(&shared).commit_loop()),
            tokio::spawn(Arc::clone(&shared).consume_timeout_loop()),
        ];
        Ok(Self { shared, background })
    }

    /// This consumer's client id (as the brokers list it).
    pub fn client_id(&self) -> &str {
        &self.shared.client_id
    }

    /// The queues this member reads now, sorted.
    pub fn assigned_queues(&self) -> Vec<MessageQueue> {
        let mut queues: Vec<MessageQueue> = self.shared.assigned.lock().keys().cloned().collect();
        queues.sort();
        queues
    }

    /// Per assigned queue (sorted): cached messages and bytes, their peaks, flow-control pauses and offsets, so an
    /// application can see a slow listener holding its queues back.
    pub fn queue_stats(&self) -> Vec<QueueStats> {
        let mut stats: Vec<QueueStats> = self
            .shared
            .assigned
            .lock()
            .iter()
            .map(|(queue, assigned)| {
                let state = &assigned.state;
                let window = state.window.lock();
                QueueStats {
                    queue: queue.clone(),
                    cached_messages: window.cached_count(),
                    cached_bytes: window.cached_bytes(),
                    peak_cached_messages: state.peak_messages.load(Ordering::Relaxed),
                    peak_cached_bytes: state.peak_bytes.load(Ordering::Relaxed),
                    flow_control_pauses: state.pauses.load(Ordering::Relaxed),
                    next_offset: window.next_pull(),
                    committable_offset: window.committable(),
                    broker_address: state.read_from.lock().clone(),
                    locked: false,
                    blocked_on: None,
                    consume_timeouts: state.consume_timeouts.load(Ordering::Relaxed),
                    overdue_messages: state
                        .running
                        .lock()
                        .values()
                        .filter(|r| r.started.elapsed() > self.shared.config.consume_timeout)
                        .count(),
                }
            })
            .collect();
        stats.sort_by(|a, b| a.queue.cmp(&b.queue));
        stats
    }

    /// Graceful stop: no more pulls, listener calls in progress waited for (up to the shutdown timeout),
    /// offsets committed, the client unregistered from its brokers so the group re-balances at once.
    pub async fn shutdown(mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for task in self.background.drain(..) {
            task.abort();
        }
        let _guard = self.shared.rebalance_lock.lock().await;
        let queues: Vec<(MessageQueue, Assigned)> = self.shared.assigned.lock().drain().collect();
        for (_, assigned) in &queues {
            assigned.state.dropped.store(true, Ordering::SeqCst);
            assigned.task.abort();
        }
        let deadline = Instant::now() + self.shared.config.shutdown_timeout;
        while self.shared.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for (queue, assigned) in &queues {
            let offset = assigned.state.window.lock().committable();
            self.shared.commit(queue, offset).await;
        }
        self.shared.save_file();
        // Closing the channel ends the workers once they are idle.
        self.shared.tasks.lock().take();
        self.shared.unregister().await;
    }
}

impl Drop for PushConsumer {
    fn drop(&mut self) {
        // Dropped without shutdown: stop everything (no commit; the next owner re-reads from the last commit).
        self.shared.stopping.store(true, Ordering::SeqCst);
        for task in &self.background {
            task.abort();
        }
        for assigned in self.shared.assigned.lock().values() {
            assigned.state.dropped.store(true, Ordering::SeqCst);
            assigned.task.abort();
        }
        self.shared.tasks.lock().take();
    }
}

/// A listener thread: takes messages, calls the listener, acknowledges successes, schedules failures again.
fn worker(shared: &Arc<Shared>, receiver: &Mutex<mpsc::Receiver<Task>>) {
    loop {
        // Held only while waiting: whichever thread holds the lock gets the next message.
        let task = match receiver.lock().recv_timeout(Duration::from_millis(200)) {
            Ok(task) => task,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        // Counted before the check so shutdown, which drops queues and then waits for zero, never misses a call.
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        // A queue taken away: its new owner reads these again from the committed offset.
        if task.queue.dropped.load(Ordering::SeqCst) {
            shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let offset = task.message.queue_offset;
        let running = Running { started: Instant::now(), message_id: task.message.message_id.clone(), overdue: false };
        task.queue.running.lock().insert(offset, running);
        let listener = &shared.listener;
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| listener(&task.message)));
        if let Some(call) = task.queue.running.lock().remove(&offset)
            && call.overdue
        {
            tracing::warn!(queue = %task.message.queue, offset, message_id = %call.message_id,
                elapsed = ?call.started.elapsed(), succeeded = matches!(outcome, Ok(Ok(()))),
                "overdue listener call returned; its result applies");
        }
        match outcome {
            Ok(Ok(())) => task.queue.acknowledge(offset),
            Ok(Err(error)) if error.is::<Postpone>() => shared.retry_later(task, false),
            Ok(Err(error)) => {
                tracing::warn!(queue = %task.message.queue, offset, message_id = %task.message.message_id,
                    reconsume_times = task.message.reconsume_times, %error, "listener failed");
                shared.failed(task);
            }
            Err(_) => {
                tracing::warn!(queue = %task.message.queue, offset, message_id = %task.message.message_id,
                    reconsume_times = task.message.reconsume_times, "listener panicked");
                shared.failed(task);
            }
        }
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl QueueState {
    /// The message at `offset` is done: it no longer holds the commit back, and a paused pull may go on.
    fn acknowledge(&self, offset: u64) {
        self.window.lock().ack(offset);
        self.acked.notify_one();
    }
}

impl Shared {
    /// A message the listener failed. Clustering: sent back to its broker (on this worker thread, so shutdown
    /// waits for it) and done once the broker has it; if that fails, retried here after `retry_backoff`.
    /// Broadcasting: retried here up to `max_reconsume_times`, then logged and skipped.
    fn failed(self: &Arc<Self>, task: Task) {
        if task.queue.dropped.load(Ordering::SeqCst) {
            // The queue's new owner reads it again from the committed offset: sending it back too would deliver
            // it twice.
            return;
        }
        let message = &task.message;
        match self.config.model {
            MessageModel::Clustering => {
                let sent = match self.pullers.get(&message.queue.topic) {
                    Some(puller) => self.runtime.block_on(puller.send_back(message, false)),
                    None => Err(ClientError::Invalid {
                        op: "send_back",
                        message: format!("no subscription of {}", message.queue.topic),
                    }),
                };
                match sent {
                    Ok(answer) => {
                        tracing::debug!(queue = %message.queue, offset = message.queue_offset,
                            message_id = %message.message_id, dead_lettered = answer.dead_lettered,
                            reconsume_times = answer.reconsume_times, "message sent back");
                        task.queue.acknowledge(message.queue_offset);
                    }
                    Err(error) => {
                        tracing::warn!(queue = %message.queue, offset = message.queue_offset,
                            message_id = %message.message_id, %error, retry_in = ?self.config.retry_backoff,
                            "send-back failed; retrying the message locally");
                        self.retry_later(task, true);
                    }
                }
            }
            MessageModel::Broadcasting if message.reconsume_times >= self.config.max_reconsume_times => {
                tracing::error!(queue = %message.queue, offset = message.queue_offset,
                    message_id = %message.message_id, attempts = message.reconsume_times + 1,
                    "broadcasting: the listener failed the message on every attempt; skipped");
                task.queue.acknowledge(message.queue_offset);
            }
            MessageModel::Broadcasting => self.retry_later(task, true),
        }
    }

    /// Logs and counts listener calls running past the consume timeout (each once); nothing else happens to
    /// them: the message is not redelivered while its call runs.
    async fn consume_timeout_loop(self: Arc<Self>) {
        let timeout = self.config.consume_timeout;
        let mut tick = tokio::time::interval((timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)));
        loop {
            tick.tick().await;
            let queues: Vec<(MessageQueue, Arc<QueueState>)> =
                self.assigned.lock().iter().map(|(q, a)| (q.clone(), Arc::clone(&a.state))).collect();
            for (queue, state) in queues {
                for (offset, call) in state.running.lock().iter_mut() {
                    if !call.overdue && call.started.elapsed() > timeout {
                        call.overdue = true;
                        state.consume_timeouts.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%queue, offset, message_id = %call.message_id, ?timeout,
                            "listener call exceeds the consume timeout; the message is not redelivered while it runs");
                    }
                }
            }
        }
    }

    /// Offers `task` again after `retry_backoff` (`failed`: as one more delivery attempt), unless its queue is
    /// dropped by then (shutdown, re-balance): it then stays unacknowledged for the queue's next reader.
    fn retry_later(self: &Arc<Self>, mut task: Task, failed: bool) {
        if failed {
            task.message.reconsume_times += 1;
        }
        let shared = Arc::clone(self);
        self.runtime.spawn(async move {
            tokio::time::sleep(shared.config.retry_backoff).await;
            if !task.queue.dropped.load(Ordering::SeqCst)
                && let Some(sender) = shared.tasks.lock().as_ref()
            {
                let _ = sender.send(task);
            }
        });
    }

    fn heartbeat_request(&self) -> pb::ClientHeartbeatRequest {
        let model = match self.config.model {
            MessageModel::Clustering => pb::MessageModel::Clustering,
            MessageModel::Broadcasting => pb::MessageModel::Broadcasting,
        };
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
                message_model: model as i32,
                subscriptions,
            }],
            language: crate::LANGUAGE.into(),
            version: crate::VERSION.into(),
        }
    }

    /// Heartbeats to every member of the broker groups of the subscribed topics (see [`heartbeat_members`]).
    async fn heartbeat(&self) -> Result<(), ClientError> {
        heartbeat_members(&self.pullers, &self.heartbeat_request()).await
    }

    /// Leaves the group on every member, so the others re-balance at once.
    async fn unregister(&self) {
        unregister_members(&self.pullers, &self.client_id, &self.config.group).await;
    }

    /// The group's live members as the first answering broker group of `topic` sees them.
    async fn members(&self, topic: &str, puller: &PullConsumer) -> Option<Vec<String>> {
        live_members(topic, puller).await
    }

    async fn heartbeat_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(error) = self.heartbeat().await {
                tracing::error!(group = %self.config.group, %error, "heartbeat refused; the broker refuses this member's pulls too");
            }
        }
    }

    async fn rebalance_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.config.rebalance_interval).await;
            self.rebalance().await;
        }
    }

    async fn commit_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.commit_interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            let queues: Vec<(MessageQueue, u64)> =
                self.assigned.lock().iter().map(|(q, a)| (q.clone(), a.state.window.lock().committable())).collect();
            for (queue, offset) in queues {
                self.commit(&queue, offset).await;
            }
            self.save_file();
        }
    }

    /// Records `offset` as `queue`'s committed offset: on the broker (clustering) or for the file (broadcasting).
    async fn commit(&self, queue: &MessageQueue, offset: u64) {
        match self.config.model {
            MessageModel::Clustering => {
                let Some(puller) = self.pullers.get(&queue.topic) else { return };
                if let Err(error) = puller.commit_offset(queue, offset).await {
                    tracing::warn!(%queue, offset, %error, "offset commit failed");
                }
            }
            MessageModel::Broadcasting => {
                self.file_offsets.lock().insert(queue.clone(), offset);
            }
        }
    }

    fn save_file(&self) {
        if self.config.model != MessageModel::Broadcasting {
            return;
        }
        let path = offset_path(&self.config.group, self.config.offset_file.as_deref());
        let offsets = self.file_offsets.lock().clone();
        if let Err(error) = save_offsets(&path, &offsets) {
            tracing::warn!(path = %path.display(), %error, "writing the offsets file failed");
        }
    }

    /// Computes the wanted queues per topic and starts/stops pull loops to match (nothing moves when the
    /// allocation is unchanged). A released queue's offset is committed before another member may take it.
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
            let wanted = match self.config.model {
                MessageModel::Broadcasting => queues,
                MessageModel::Clustering => {
                    let Some(members) = self.members(topic, puller).await else { continue };
                    if !members.contains(&self.client_id) {
                        // Our heartbeat has not landed, expired, or went to a member that restarted since (reads
                        // may just have moved back to a master that lost its client list): say hello again and
                        // re-balance at the next round with a list that has us, instead of releasing every queue
                        // on a list that is probably missing other members too.
                        if let Err(error) = self.heartbeat().await {
                            tracing::error!(group = %self.config.group, %error, "heartbeat refused");
                        }
                        continue;
                    }
                    allocate_averagely(&queues, &members, &self.client_id)
                }
            };
            let current: Vec<MessageQueue> =
                self.assigned.lock().keys().filter(|q| q.topic == *topic).cloned().collect();
            for queue in current.iter().filter(|q| !wanted.contains(q)) {
                let removed = self.assigned.lock().remove(queue);
                if let Some(assigned) = removed {
                    assigned.state.dropped.store(true, Ordering::SeqCst);
                    assigned.task.abort();
                    let offset = assigned.state.window.lock().committable();
                    self.commit(queue, offset).await;
                    tracing::info!(%queue, offset, "queue released");
                }
            }
            for queue in wanted.iter().filter(|q| !current.contains(q)) {
                match self.start_offset(puller, queue).await {
                    Ok(offset) => {
                        let state = Arc::new(QueueState::new(offset));
                        let task =
                            tokio::spawn(Arc::clone(self).pull_loop(puller.clone(), queue.clone(), Arc::clone(&state)));
                        self.assigned.lock().insert(queue.clone(), Assigned { state, task });
                        tracing::info!(%queue, offset, "queue assigned");
                    }
                    Err(error) => tracing::warn!(%queue, %error, "no start offset; retried at the next re-balance"),
                }
            }
        }
    }

    async fn start_offset(&self, puller: &PullConsumer, queue: &MessageQueue) -> Result<u64, ClientError> {
        let committed = match self.config.model {
            MessageModel::Clustering => puller.query_offset(queue).await?,
            MessageModel::Broadcasting => self.file_offsets.lock().get(queue).copied(),
        };
        if let Some(offset) = committed {
            return Ok(offset);
        }
        let (min, max) = puller.queue_offsets(queue).await?;
        // The retry topic holds only this group's redeliveries: all of them are due to it.
        if is_retry_topic(&queue.topic) {
            return Ok(min);
        }
        Ok(match self.config.consume_from {
            ConsumeFrom::FirstOffset => min,
            ConsumeFrom::LastOffset => max,
        })
    }

    /// Long-polls one queue until it is taken away, handing messages to the workers.
    async fn pull_loop(self: Arc<Self>, puller: PullConsumer, queue: MessageQueue, state: Arc<QueueState>) {
        let mut paused = false;
        while !state.dropped.load(Ordering::SeqCst) {
            let (count, bytes, next) = {
                let w = state.window.lock();
                (w.cached_count(), w.cached_bytes(), w.next_pull())
            };
            if count >= self.config.max_cached_messages || bytes >= self.config.max_cached_bytes {
                if !paused {
                    paused = true;
                    state.pauses.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%queue, count, bytes, "flow control: pulls paused until the listener catches up");
                }
                // Flow control: wait for acknowledgements (the timeout re-checks after a missed wake-up).
                let _ = tokio::time::timeout(Duration::from_millis(100), state.acked.notified()).await;
                continue;
            }
            paused = false;
            let result = match puller.pull(&queue, next, self.config.pull_batch, self.config.pull_wait).await {
                Ok(result) => result,
                Err(error) => {
                    // A refusal (group disabled, broadcasting not allowed) lasts until an admin changes the group:
                    // retry, but not at the pace of a transient failure.
                    let pause = if error.is_retryable() { Duration::from_millis(500) } else { Duration::from_secs(3) };
                    tracing::warn!(%queue, %error, ?pause, "pull failed; retrying");
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            {
                let mut read_from = state.read_from.lock();
                if *read_from != result.broker_address {
                    if !read_from.is_empty() {
                        tracing::info!(%queue, from = %read_from, to = %result.broker_address,
                            broker_id = result.broker_id, "queue now read from another member of its broker group");
                    }
                    read_from.clone_from(&result.broker_address);
                }
            }
            let mut window = state.window.lock();
            match result.status {
                PullStatus::Found | PullStatus::NoNewMessage => {
                    window.pulled(result.messages.iter().map(|m| (m.queue_offset, m.body.len())), result.next_offset);
                    state.peak_messages.fetch_max(window.cached_count(), Ordering::Relaxed);
                    state.peak_bytes.fetch_max(window.cached_bytes(), Ordering::Relaxed);
                }
                PullStatus::OffsetMoved | PullStatus::OffsetOverflow => {
                    tracing::warn!(%queue, from = next, to = result.next_offset, "pull offset corrected");
                    window.reset_next(result.next_offset);
                }
            }
            drop(window);
            let sender = self.tasks.lock().clone();
            let Some(sender) = sender else { return };
            for message in result.messages {
                if sender.send(Task { message, queue: Arc::clone(&state) }).is_err() {
                    return;
                }
            }
        }
    }
}

/// One pull consumer per subscribed topic (the tag expression is a pull consumer setting), sharing one fault
/// tracker: a member down for one topic is down for all. Shared with the orderly consumer.
pub(crate) fn topic_pullers(config: &PushConsumerConfig) -> Result<HashMap<String, PullConsumer>, ClientError> {
    let faults = Arc::new(Faults::new(config.failover_backoff));
    let mut pullers = HashMap::new();
    for (topic, expression) in &config.subscriptions {
        let mut pull = PullConsumerConfig::new(config.nameservers.clone(), config.group.clone());
        pull.tag_expression = expression.clone();
        pull.route_refresh = config.route_refresh;
        pull.read_preference = config.read_preference;
        pull.failover_backoff = config.failover_backoff;
        pull.transport = config.transport;
        pull.nameserver_client = config.nameserver_client.clone();
        pullers.insert(topic.clone(), PullConsumer::with_faults(pull, Arc::clone(&faults))?);
    }
    Ok(pullers)
}

/// Every member (master and slaves) of the broker groups hosting a subscribed topic, each with its broker id
/// and the pull consumer of one topic it hosts.
async fn member_brokers(pullers: &HashMap<String, PullConsumer>) -> Vec<(u64, String, PullConsumer)> {
    let mut out: Vec<(u64, String, PullConsumer)> = Vec::new();
    for (topic, puller) in pullers {
        match puller.member_addresses(topic).await {
            Ok(addresses) => {
                for (id, address) in addresses {
                    if !out.iter().any(|(_, known, _)| *known == address) {
                        out.push((id, address, puller.clone()));
                    }
                }
            }
            Err(error) => tracing::warn!(topic, %error, "no route for the heartbeat"),
        }
    }
    out
}

/// Heartbeats `request` to every member of the broker groups of the subscribed topics (slaves too, so a slave
/// knows the group's members when its master dies). Transient failures are logged (the next heartbeat tries
/// again; an unreachable member is marked down); the first refusal (a permanent error: invalid group,
/// broadcasting not allowed) is returned. A slave refusing with FAILED_PRECONDITION (something only a master
/// does, such as creating the group) is logged only: the master, or the copy of its config, decides.
pub(crate) async fn heartbeat_members(
    pullers: &HashMap<String, PullConsumer>,
    request: &pb::ClientHeartbeatRequest,
) -> Result<(), ClientError> {
    let timeout = Duration::from_secs(3);
    let heartbeat = |mut client: crate::channels::BrokerClient| {
        let request = request.clone();
        async move { client.heartbeat(request).await }
    };
    let mut refused = None;
    for (id, address, puller) in member_brokers(pullers).await {
        let Err(error) = puller.call_member("heartbeat", &address, timeout, &heartbeat).await else { continue };
        let slave_only = id != comet_model::MASTER_ID && error.code() == tonic::Code::FailedPrecondition;
        if error.is_retryable() || slave_only {
            tracing::warn!(broker = address, broker_id = id, %error, "heartbeat failed");
        } else {
            refused.get_or_insert(error);
        }
    }
    refused.map_or(Ok(()), Err)
}

/// Leaves `group` on every member, so the others re-balance at once.
pub(crate) async fn unregister_members(pullers: &HashMap<String, PullConsumer>, client_id: &str, group: &str) {
    let request = pb::UnregisterClientRequest { client_id: client_id.to_owned(), groups: vec![group.to_owned()] };
    let unregister = |mut client: crate::channels::BrokerClient| {
        let request = request.clone();
        async move { client.unregister_client(request).await }
    };
    for (_, address, puller) in member_brokers(pullers).await {
        let _ = puller.call_member("unregister_client", &address, Duration::from_secs(3), &unregister).await;
    }
}

/// The group's live members as the first answering broker group of `topic` sees them, each asked at the
/// member its reads go to (the next member on a transport failure).
pub(crate) async fn live_members(topic: &str, puller: &PullConsumer) -> Option<Vec<String>> {
    for broker_name in puller.broker_names(topic).await.ok()? {
        match puller.consumer_list(topic, &broker_name).await {
            Ok(members) => return Some(members),
            Err(error) => tracing::debug!(topic, broker_name, %error, "consumer list unavailable"),
        }
    }
    None
}

fn offset_path(group: &str, configured: Option<&Path>) -> PathBuf {
    configured.map_or_else(|| PathBuf::from(format!("comet-offsets-{group}.txt")), Path::to_path_buf)
}

/// Reads the broadcasting offsets file: one `topic<TAB>broker<TAB>queue-id<TAB>offset` line per queue. A missing
/// file is an empty one.
fn load_offsets(path: &Path) -> Result<HashMap<MessageQueue, u64>, ClientError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => {
            return Err(ClientError::Invalid {
                op: "push_consumer",
                message: format!("read offsets file {}: {e}", path.display()),
            });
        }
    };
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        let parsed = match fields.as_slice() {
            [topic, broker, id, offset] => id.parse().ok().zip(offset.parse().ok()).map(|(queue_id, offset)| {
                (MessageQueue { topic: (*topic).to_owned(), broker_name: (*broker).to_owned(), queue_id }, offset)
            }),
            _ => None,
        };
        let Some((queue, offset)) = parsed else {
            return Err(ClientError::Invalid {
                op: "push_consumer",
                message: format!("offsets file {}: bad line {line:?}", path.display()),
            });
        };
        out.insert(queue, offset);
    }
    Ok(out)
}

/// Writes the offsets file atomically: a temp file next to it, fsync, rename (a crash leaves the old or the new).
fn save_offsets(path: &Path, offsets: &HashMap<MessageQueue, u64>) -> std::io::Result<()> {
    use std::io::Write;
    let mut lines: Vec<String> =
        offsets.iter().map(|(q, o)| format!("{}\t{}\t{}\t{o}\n", q.topic, q.broker_name, q.queue_id)).collect();
    lines.sort();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(lines.concat().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix_millis() -> u64 {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        since.map(|d| d.as_millis() as u64).unwrap_or(0)
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_push_consumer_heartbeats_every_member_and_keeps_consuming_from_the_slave_while_the_master_is_down() {
        use crate::testing::{FakeBroker, FakeNameServer};
        let (master, slave) = (FakeBroker::start(100), FakeBroker::start(100));
        let ns = FakeNameServer::start("b", &[(0, &master.address), (1, &slave.address)]);
        let seen = Arc::new(Mutex::new(Vec::<u64>::new()));
        let listener_seen = Arc::clone(&seen);
        let consumer = PushConsumer::builder(vec![ns.address.clone()], "g")
            .subscribe("t", "*")
            .consume_from(ConsumeFrom::FirstOffset)
            .threads(1)
            .configure(|c| {
                // The fake broker speaks gRPC only (src/testing.rs).
                c.transport = crate::Transport::Grpc;
                c.failover_backoff = Duration::from_millis(300);
                c.rebalance_interval = Duration::from_millis(100);
                c.pull_wait = Duration::from_millis(50);
                c.commit_interval = Duration::from_millis(100);
                c.heartbeat_interval = Duration::from_millis(200);
            })
            .listener(move |m| {
                listener_seen.lock().push(m.queue_offset);
                Ok(())
            })
            .start()
            .await
            .unwrap();
        let id = consumer.client_id().to_owned();
        assert!(master.state.lock().heartbeats.contains(&id) && slave.state.lock().heartbeats.contains(&id));
        eventually("the first 100 messages", || seen.lock().len() == 100).await;
        assert!(master.state.lock().consumer_lists > 0);
        assert_eq!(slave.state.lock().consumer_lists, 0, "the consumer list comes from the member read from");
        assert_eq!(consumer.queue_stats()[0].broker_address, master.address);

        master.set_unavailable(true);
        // More messages, replicated to the slave.
        master.state.lock().max = 200;
        slave.state.lock().max = 200;
        eventually("200 messages", || seen.lock().len() >= 200).await;
        assert_eq!(consumer.queue_stats()[0].broker_address, slave.address);
        eventually("commit 200 on the slave", || slave.state.lock().commits.last() == Some(&200)).await;
        // The 100 new messages can be consumed and committed before the next re-balance tick (every 100 ms).
        eventually("re-balance asks the slave while the master is down", || slave.state.lock().consumer_lists > 0)
            .await;

        master.set_unavailable(false);
        eventually("reads back on the master", || consumer.queue_stats()[0].broker_address == master.address).await;
        consumer.shutdown().await;
        assert_eq!(master.state.lock().commits.last(), Some(&200), "the master gets the offset once it is back");
        let seen = seen.lock().clone();
        assert_eq!(seen, (0..200).collect::<Vec<u64>>(), "every message once, in order: none lost, none skipped");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_missing_from_the_list_of_a_restarted_broker_heartbeats_and_keeps_its_queues() {
        use crate::testing::{FakeBroker, FakeNameServer};
        let broker = FakeBroker::start(0);
        let ns = FakeNameServer::start("b", &[(0, &broker.address)]);
        let consumer = PushConsumer::builder(vec![ns.address.clone()], "g")
            .subscribe("t", "*")
            .configure(|c| {
                // The fake broker speaks gRPC only (src/testing.rs).
                c.transport = crate::Transport::Grpc;
                c.rebalance_interval = Duration::from_millis(50);
                c.pull_wait = Duration::from_millis(20);
            })
            .listener(|_| Ok(()))
            .start()
            .await
            .unwrap();
        eventually("the queue assigned", || consumer.assigned_queues().len() == 1).await;
        // The broker restarts: it forgets every client.
        broker.state.lock().heartbeats.clear();
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            assert_eq!(consumer.assigned_queues().len(), 1, "the queue is kept while the member list is missing us");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The hello comes from the 50 ms re-balance loop: on a loaded machine possibly after the 500 ms above.
        let id = consumer.client_id().to_owned();
        eventually("said hello again", || broker.state.lock().heartbeats.contains(&id)).await;
        consumer.shutdown().await;
    }

    #[test]
    fn the_offsets_file_round_trips_and_a_missing_file_is_empty() {
        let dir = std::env::temp_dir().join(format!("comet-push-{}-{}", std::process::id(), unix_millis()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("offsets.txt");
        assert!(load_offsets(&path).unwrap().is_empty());
        let mut offsets = HashMap::new();
        offsets.insert(MessageQueue { topic: "t".into(), broker_name: "b".into(), queue_id: 3 }, 42);
        offsets.insert(MessageQueue { topic: "u".into(), broker_name: "b".into(), queue_id: 0 }, 7);
        save_offsets(&path, &offsets).unwrap();
        assert_eq!(load_offsets(&path).unwrap(), offsets);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
