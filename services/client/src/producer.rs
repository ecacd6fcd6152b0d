//! The producer: picks a queue from the topic's route, sends, and on a retryable failure tries another broker
//! (after a failure that may have stored the request, the same broker first: see `Producer::send_outgoing`).
//!
//! Queue selection is RocketMQ's: a per-producer counter walks the route's writable queues round robin, skipping
//! queues of brokers that failed within `fault_isolation` (latency fault tolerance) and of the broker the
//! previous attempt of the same send failed on. When every broker is isolated the walk takes any queue not on
//! the broker that just failed, so sends never stop only because every broker had a hiccup.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use comet_nameserver_client::{ClientConfig, NameServerClient};
use comet_proto::comet::v1 as pb;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use crate::channels::Channels;
use crate::error::ClientError;
use crate::fault::Faults;
use crate::message::{Message, SendResult};
use crate::route::{Routes, TopicRoute};
use comet_model::{MASTER_ID, MessageQueue};

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// NameServer addresses (`host:port`).
    pub nameservers: Vec<String>,
    /// The producer group (sent with every request; validated by the broker).
    pub group: String,
    /// Extra attempts after a retryable failure (RocketMQ: 2): on another broker when there is one, except after
    /// a failure that may have stored the request (then once on the same broker first; see docs/client.md).
    pub retries: usize,
    /// Timeout of one send call.
    pub send_timeout: Duration,
    /// Timeout to open a connection to a broker.
    pub connect_timeout: Duration,
    /// How old a cached route may get before it is refreshed (RocketMQ: 30 s).
    pub route_refresh: Duration,
    /// How long a broker that failed is avoided.
    pub fault_isolation: Duration,
    /// Heartbeats (client id and producer group) to the master of every broker this producer has a route to, so
    /// the brokers know the group's live producers (RocketMQ: 30 s). Zero turns them off.
    pub heartbeat_interval: Duration,
    /// Wire of the hot calls (SendMessage, PullMessage): remoting frames on the broker's port (default), or gRPC
    /// for a path that passes only HTTP/2. See [`Transport`](crate::Transport).
    pub transport: crate::Transport,
    /// Settings of the NameServer client (addresses are taken from `nameservers`).
    pub nameserver_client: Option<ClientConfig>,
    /// Transactions: answers the brokers' check-backs of half messages this producer group left unresolved.
    /// When set, the producer keeps a check stream open to every master broker of its NameServers' clusters.
    pub transaction_checker: Option<crate::TransactionChecker>,
}

impl ProducerConfig {
    /// Defaults: 2 retries, 3 s sends, 3 s connects, routes refreshed every 30 s, failed brokers avoided 30 s,
    /// heartbeats every 30 s.
    pub fn new(nameservers: Vec<String>, group: impl Into<String>) -> Self {
        Self {
            nameservers,
            group: group.into(),
            retries: 2,
            send_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(3),
            route_refresh: Duration::from_secs(30),
            fault_isolation: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(30),
            nameserver_client: None,
            transport: crate::Transport::default(),
            transaction_checker: None,
        }
    }
}

/// Sends messages to the brokers of a topic's route. Cheap to clone; clones share routes, channels and faults.
#[derive(Debug, Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: ProducerConfig,
    pub(crate) client_id: String,
    pub(crate) routes: Arc<Routes>,
    pub(crate) channels: Channels,
    next_queue: AtomicUsize,
    /// Broker names that failed recently, avoided for `fault_isolation`.
    faults: Faults,
    /// The heartbeat task; it holds only a weak reference, and is stopped when the last clone goes away.
    heartbeats: Mutex<Option<JoinHandle<()>>>,
    /// With a transaction checker: the task keeping check streams open (stopped with the last clone).
    pub(crate) check_streams: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.heartbeats.lock().take() {
            task.abort();
        }
        if let Some(task) = self.check_streams.lock().take() {
            task.abort();
        }
    }
}

/// What one attempt sends: a topic and its messages, already in wire form.
pub(crate) struct Outgoing<'a> {
    pub(crate) topic: &'a str,
    pub(crate) messages: Vec<pb::OutgoingMessage>,
    /// Store as a half message (one message).
    pub(crate) transactional: bool,
}

impl Producer {
    /// A producer over `config.nameservers`. Connects lazily; must be called inside a tokio runtime (it starts the
    /// heartbeat task).
    pub fn new(config: ProducerConfig) -> Result<Self, ClientError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ClientError::Invalid {
            op: "producer",
            message: "must be created inside a tokio runtime".into(),
        })?;
        let nameserver = nameserver_client(&config.nameservers, config.nameserver_client.clone())?;
        let routes = Routes::new(nameserver, config.route_refresh);
        let channels = Channels::new(config.connect_timeout, config.transport);
        // A varying start (as RocketMQ's random ThreadLocalIndex) so that many short-lived producers, like
        // `comet send` runs, do not all begin on queue 0.
        let start = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos() as usize).unwrap_or(0);
        let interval = config.heartbeat_interval;
        let faults = Faults::new(config.fault_isolation);
        let inner = Arc::new(Inner {
            config,
            client_id: crate::new_client_id(),
            routes,
            channels,
            next_queue: AtomicUsize::new(start),
            faults,
            heartbeats: Mutex::new(None),
            check_streams: Mutex::new(None),
        });
        if !interval.is_zero() {
            let task = runtime.spawn(heartbeat_loop(Arc::downgrade(&inner), interval));
            *inner.heartbeats.lock() = Some(task);
        }
        if inner.config.transaction_checker.is_some() {
            let task = runtime.spawn(crate::transaction::check_stream_loop(Arc::downgrade(&inner)));
            *inner.check_streams.lock() = Some(task);
        }
        Ok(Self { inner })
    }

    /// This producer's client id, as its heartbeats name it to the brokers.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Sends a heartbeat (client id, producer group) now to the master of every broker this producer has a route
    /// to, as the periodic heartbeat does; returns how many brokers accepted it. The first failure is returned
    /// when none did.
    pub async fn heartbeat(&self) -> Result<usize, ClientError> {
        let request = pb::ClientHeartbeatRequest {
            client_id: self.inner.client_id.clone(),
            producer_groups: vec![self.inner.config.group.clone()],
            consumer_groups: Vec::new(),
            language: crate::LANGUAGE.into(),
            version: crate::VERSION.into(),
        };
        let timeout = self.inner.config.send_timeout;
        let (mut accepted, mut first_error) = (0, None);
        for address in self.inner.routes.cached_masters() {
            let outcome = match self.inner.channels.broker(&address) {
                Ok(mut client) => match tokio::time::timeout(timeout, client.heartbeat(request.clone())).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(status)) => Err(ClientError::broker_status("heartbeat", &address, &status)),
                    Err(_) => Err(ClientError::Timeout { op: "heartbeat", broker: address.clone(), after: timeout }),
                },
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => accepted += 1,
                Err(e) => {
                    tracing::warn!(broker = %address, error = %e, "producer heartbeat failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if accepted == 0 => Err(e),
            _ => Ok(accepted),
        }
    }

    /// Sends one message and waits for the broker's acknowledgement, retrying retryable failures up to `retries`
    /// times: on another broker, or first on the same one when the failed attempt may have stored the message
    /// (its deduplication then answers the first copy; `send_outgoing`). A message with a sharding key goes to its key's queue instead (see
    /// [`Producer::send_with_selector`]).
    pub async fn send(&self, message: Message) -> Result<SendResult, ClientError> {
        if let Some(key) = message.sharding_key() {
            let hash = sharding_hash(key);
            return self
                .send_with_selector(message, move |queues, _| usize::try_from(hash % queues.len() as u64).unwrap_or(0))
                .await;
        }
        let wire = vec![message.to_wire(now_millis())];
        let mut results = self.send_with_retries("send", &message.topic, wire).await?;
        results.pop().ok_or_else(|| empty_answer("send"))
    }

    /// Sends one message on a spawned task; await the handle for the result. Must be called inside a tokio
    /// runtime.
    pub fn send_async(&self, message: Message) -> JoinHandle<Result<SendResult, ClientError>> {
        let producer = self.clone();
        tokio::spawn(async move { producer.send(message).await })
    }

    /// Sends one message without waiting for or reporting the outcome (one attempt; failures are logged).
    pub fn send_oneway(&self, message: Message) {
        let producer = self.clone();
        tokio::spawn(async move {
            let wire = vec![message.to_wire(now_millis())];
            let outgoing = Outgoing { topic: &message.topic, messages: wire, transactional: false };
            if let Err(failed) = producer.attempt("send_oneway", &outgoing, None).await {
                tracing::warn!(topic = %message.topic, error = %failed.error, "oneway send failed");
            }
        });
    }

    /// Sends one message to the queue `selector` picks: it gets the topic's writable queues sorted by (broker
    /// name, queue id) and the message, and returns an index (taken modulo the count). Ordered messaging: the
    /// queue is chosen once and retryable failures are retried on that same queue (up to `retries` times, after
    /// a short pause) rather than on another broker, since order matters more than availability here; ordering
    /// therefore holds per queue while the topic's queues and brokers stay the same. The topic must exist.
    pub async fn send_with_selector(
        &self,
        message: Message,
        selector: impl Fn(&[MessageQueue], &Message) -> usize,
    ) -> Result<SendResult, ClientError> {
        const OP: &str = "send";
        let topic = message.topic.as_str();
        let route = self.inner.routes.get(OP, topic).await?;
        let mut queues = route.writable.clone();
        if queues.is_empty() {
            return Err(ClientError::NoQueue { op: OP, topic: topic.to_owned(), what: "writable" });
        }
        queues.sort_by(|a, b| (&a.broker_name, a.queue_id).cmp(&(&b.broker_name, b.queue_id)));
        let queue = queues[selector(&queues, &message) % queues.len()].clone();
        let outgoing = Outgoing { topic, messages: vec![message.to_wire(now_millis())], transactional: false };
        let mut last = None;
        for attempt in 0..=self.inner.config.retries {
            if attempt > 0 {
                tokio::time::sleep(ORDERED_RETRY_PAUSE * u32::try_from(attempt).unwrap_or(u32::MAX)).await;
            }
            // The master's address may have changed since the last attempt (the route was refreshed).
            let route = match self.inner.routes.get(OP, topic).await {
                Ok(route) => route,
                Err(error) if error.is_retryable() => {
                    last = Some(error);
                    continue;
                }
                Err(error) => return Err(error),
            };
            let Some(address) = route.master(&queue.broker_name).map(str::to_owned) else {
                last = Some(ClientError::NoQueue { op: OP, topic: topic.to_owned(), what: "writable" });
                self.inner.routes.invalidate(topic);
                continue;
            };
            let target = Target { broker_name: queue.broker_name.clone(), address, queue_id: Some(queue.queue_id) };
            match self.send_to(OP, &outgoing, &target).await {
                Ok(mut results) => return results.pop().ok_or_else(|| empty_answer(OP)),
                Err(Failed { error, .. }) if error.is_retryable() => {
                    tracing::debug!(%queue, attempt, %error, "ordered send failed; retrying the same queue");
                    self.inner.routes.invalidate(topic);
                    last = Some(error);
                }
                Err(failed) => return Err(failed.error),
            }
        }
        Err(last.unwrap_or_else(|| empty_answer(OP)))
    }

    /// Sends messages of ONE topic as one request, stored atomically in order in one queue. Results are in
    /// message order.
    pub async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<SendResult>, ClientError> {
        let Some(first) = messages.first() else {
            return Err(ClientError::Invalid { op: "send_batch", message: "no messages".into() });
        };
        let topic = first.topic.clone();
        if let Some(other) = messages.iter().find(|m| m.topic != topic) {
            return Err(ClientError::Invalid {
                op: "send_batch",
                message: format!("a batch is for one topic: {topic:?} and {:?}", other.topic),
            });
        }
        let born = now_millis();
        let wire = messages.iter().map(|m| m.to_wire(born)).collect();
        self.send_with_retries("send_batch", &topic, wire).await
    }

    /// The writable queues of a topic, as the producer currently sees them.
    pub async fn writable_queues(&self, topic: &str) -> Result<Vec<MessageQueue>, ClientError> {
        Ok(self.inner.routes.get("writable_queues", topic).await?.writable.clone())
    }

    async fn send_with_retries(
        &self,
        op: &'static str,
        topic: &str,
        messages: Vec<pb::OutgoingMessage>,
    ) -> Result<Vec<SendResult>, ClientError> {
        let outgoing = Outgoing { topic, messages, transactional: false };
        self.send_outgoing(op, outgoing).await
    }

    /// [`Self::send_with_retries`] of a prepared request, with the retry rules of docs/client.md ("Retries"):
    ///
    /// - a failure that certainly stored nothing (connection refused, busy, stopping broker) moves on to another
    ///   broker at once, and that broker is isolated;
    /// - after an *ambiguous* failure (the request may have been stored: a timeout, a connection broken under the
    ///   call, sync replication not confirmed, the same id still being stored) the next attempt goes to the same
    ///   broker and queue, whose deduplication answers the first copy if there is one; only if that retry fails
    ///   too does the send isolate the broker and move on (a broker saying the id is *being stored* keeps it);
    /// - a transactional send never moves on after an ambiguous failure: a second half on another broker could
    ///   be committed too, so every remaining attempt goes to the broker that may hold the half.
    pub(crate) async fn send_outgoing(
        &self,
        op: &'static str,
        outgoing: Outgoing<'_>,
    ) -> Result<Vec<SendResult>, ClientError> {
        let topic = outgoing.topic;
        let attempts = self.inner.config.retries + 1;
        let mut failed_broker: Option<String> = None;
        // Where the next attempt must go (after an ambiguous failure), and whether it is already a retry there.
        let mut pinned: Option<Target> = None;
        let mut retried_in_place = false;
        let mut last = None;
        for attempt in 0..attempts {
            let result = match &pinned {
                Some(target) => {
                    tokio::time::sleep(IN_PLACE_RETRY_PAUSE).await;
                    self.send_to(op, &outgoing, target).await
                }
                None => self.attempt(op, &outgoing, failed_broker.as_deref()).await,
            };
            let failure = match result {
                Ok(results) => return Ok(results),
                Err(failure) if failure.error.is_retryable() => failure,
                Err(failure) => return Err(failure.error),
            };
            self.inner.routes.invalidate(topic);
            let Failed { error, target, stored } = failure;
            let stay = match (&target, stored) {
                (None, _) => false,
                // The broker has the id in progress: any other broker would store a second copy.
                (Some(_), Stored::InProgress) => true,
                // A transactional send stays with the broker that may hold its half, whatever fails next.
                (Some(_), _) if outgoing.transactional && (stored == Stored::Maybe || pinned.is_some()) => true,
                (Some(_), Stored::Maybe) => !retried_in_place,
                (Some(_), Stored::No) => false,
            };
            let last_attempt = attempt + 1 == attempts;
            if stay && !last_attempt {
                tracing::debug!(op, topic, attempt, error = %error, "send failed and may have been stored; retrying on the same broker and queue");
                retried_in_place = pinned.is_some() || stored == Stored::Maybe;
                pinned = target;
            } else {
                if let Some(target) = &target {
                    self.isolate(&target.broker_name);
                }
                if !last_attempt {
                    tracing::debug!(op, topic, attempt, error = %error, "send failed; retrying on another broker");
                }
                failed_broker = target.map(|t| t.broker_name);
                pinned = None;
                retried_in_place = false;
            }
            last = Some(error);
        }
        Err(last.unwrap_or_else(|| empty_answer(op)))
    }

    /// One send to one queue. A failure says where it was sent, if anywhere (for isolation and in-place retries).
    async fn attempt(
        &self,
        op: &'static str,
        outgoing: &Outgoing<'_>,
        avoid: Option<&str>,
    ) -> Result<Vec<SendResult>, Failed> {
        let route = match self.inner.routes.get(op, outgoing.topic).await {
            Ok(route) => route,
            Err(e) if e.code() == tonic::Code::NotFound => return self.attempt_unrouted(op, outgoing, avoid).await,
            Err(e) => return Err(Failed::unsent(e)),
        };
        let queue = self.pick(op, outgoing.topic, &route, avoid).map_err(Failed::unsent)?;
        // Writable queues are only those of broker groups with a master: sends never go to a slave.
        let address = route.master(&queue.broker_name).unwrap_or_default().to_owned();
        let target = Target { broker_name: queue.broker_name, address, queue_id: Some(queue.queue_id) };
        self.send_to(op, outgoing, &target).await
    }

    /// A topic no broker hosts yet: send to a master of the NameServers' clusters (round robin) without a queue
    /// id, so a broker with topic auto-creation on creates it (RocketMQ's TBW102 default route does the same);
    /// it registers the new topic at once, and the next send finds a route.
    async fn attempt_unrouted(
        &self,
        op: &'static str,
        outgoing: &Outgoing<'_>,
        avoid: Option<&str>,
    ) -> Result<Vec<SendResult>, Failed> {
        let info = self
            .inner
            .routes
            .nameserver()
            .cluster_info()
            .await
            .map_err(|cause| Failed::unsent(ClientError::Route { op, topic: outgoing.topic.to_owned(), cause }))?;
        let mut masters: Vec<(String, String)> = info
            .clusters
            .iter()
            .flat_map(|c| &c.brokers)
            .filter_map(|b| b.addresses.get(&MASTER_ID).map(|a| (b.broker_name.clone(), a.clone())))
            .filter(|(name, address)| !address.is_empty() && avoid != Some(name.as_str()))
            .collect();
        masters.sort();
        if masters.is_empty() {
            return Err(Failed::unsent(ClientError::NoQueue {
                op,
                topic: outgoing.topic.to_owned(),
                what: "writable",
            }));
        }
        let (broker_name, address) =
            masters.swap_remove(self.inner.next_queue.fetch_add(1, Ordering::Relaxed) % masters.len());
        self.send_to(op, outgoing, &Target { broker_name, address, queue_id: None }).await
    }

    /// Sends to the target broker's master, to its queue or (none) the queue the broker picks.
    async fn send_to(
        &self,
        op: &'static str,
        outgoing: &Outgoing<'_>,
        target: &Target,
    ) -> Result<Vec<SendResult>, Failed> {
        let (broker_name, address) = (target.broker_name.as_str(), target.address.as_str());
        let fail = |error, stored| Failed { error, target: Some(target.clone()), stored };
        let mut client = self.inner.channels.broker(address).map_err(|e| fail(e, Stored::No))?;
        let head = pb::SendMessageRequest {
            topic: outgoing.topic.to_owned(),
            queue_id: target.queue_id,
            producer_group: self.inner.config.group.clone(),
            messages: Vec::new(),
            transactional: outgoing.transactional,
        };
        let timeout = self.inner.config.send_timeout;
        let response = match tokio::time::timeout(timeout, client.send_message(head, &outgoing.messages)).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                return Err(fail(ClientError::broker_status(op, address, &status), Stored::of(&status)));
            }
            // The request may be stored (or be stored after this): ambiguous.
            Err(_) => {
                return Err(fail(
                    ClientError::Timeout { op, broker: address.to_owned(), after: timeout },
                    Stored::Maybe,
                ));
            }
        };
        let results: Vec<SendResult> = response
            .results
            .into_iter()
            .map(|r| SendResult {
                message_id: r.message_id,
                queue: MessageQueue {
                    topic: outgoing.topic.to_owned(),
                    broker_name: broker_name.to_owned(),
                    queue_id: r.queue_id,
                },
                queue_offset: r.queue_offset,
                broker_address: address.to_owned(),
                deliver_at: (r.deliver_at_millis > 0)
                    .then(|| std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.deliver_at_millis)),
                commit_log_offset: r.commit_log_offset,
                duplicate: r.duplicate,
            })
            .collect();
        if results.len() != outgoing.messages.len() {
            let message = format!("{} results for {} messages", results.len(), outgoing.messages.len());
            let broker = address.to_owned();
            return Err(fail(ClientError::Broker { op, broker, code: tonic::Code::Internal, message }, Stored::Maybe));
        }
        Ok(results)
    }

    /// The next queue round robin: first one whose broker is neither isolated nor `avoid`, else one not on
    /// `avoid`, else the next one.
    fn pick(
        &self,
        op: &'static str,
        topic: &str,
        route: &TopicRoute,
        avoid: Option<&str>,
    ) -> Result<MessageQueue, ClientError> {
        let queues = &route.writable;
        if queues.is_empty() {
            return Err(ClientError::NoQueue { op, topic: topic.to_owned(), what: "writable" });
        }
        let start = self.inner.next_queue.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let isolated = self.inner.faults.down_at(now);
        let candidates = (0..queues.len()).map(|i| &queues[start.wrapping_add(i) % queues.len()]);
        let not_avoided = |q: &&MessageQueue| avoid != Some(q.broker_name.as_str());
        let chosen = candidates
            .clone()
            .filter(not_avoided)
            .find(|q| !isolated.contains(&q.broker_name))
            .or_else(|| candidates.clone().find(not_avoided))
            .unwrap_or(&queues[start % queues.len()]);
        Ok(chosen.clone())
    }

    fn isolate(&self, broker_name: &str) {
        self.inner.faults.mark(broker_name);
    }
}

/// Heartbeats every `interval` while the producer exists (a weak reference, so it does not keep it alive).
async fn heartbeat_loop(producer: std::sync::Weak<Inner>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = producer.upgrade() else { return };
        // Failures are logged inside; the next tick tries again.
        let _ = Producer { inner }.heartbeat().await;
    }
}

pub(crate) fn nameserver_client(
    addresses: &[String],
    config: Option<ClientConfig>,
) -> Result<NameServerClient, ClientError> {
    let mut config = config.unwrap_or_else(|| ClientConfig::new(addresses.to_vec()));
    config.addresses = addresses.to_vec();
    NameServerClient::new(config).map_err(|e| ClientError::Invalid { op: "connect", message: e.to_string() })
}

/// Pause before a send that may have been stored is retried on the same broker (lets a copy still being stored
/// finish, so the retry gets the duplicate answer).
const IN_PLACE_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Where one attempt went: a broker group's master and a queue (none: the broker picks, for a new topic).
#[derive(Debug, Clone)]
struct Target {
    broker_name: String,
    address: String,
    queue_id: Option<u32>,
}

/// Whether a failed attempt may have stored its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    /// Certainly not: refused before storing (busy, stopping, not the master...) or never sent (no connection).
    No,
    /// Ambiguous: no answer in time, a connection broken under the call, sync replication not confirmed.
    Maybe,
    /// The broker says a send of the same id is being stored right now.
    InProgress,
}

impl Stored {
    /// What a broker's (or the transport's) error status says about the request.
    fn of(status: &tonic::Status) -> Self {
        use tonic::Code;
        if crate::channels::never_connected(status) {
            return Stored::No;
        }
        match status.code() {
            // docs/response-codes.md: the concurrent-send answer of the broker's deduplication.
            Code::ResourceExhausted if status.message().contains("is being stored") => Stored::InProgress,
            // "broker is shutting down" is answered before storing (or when the store refused the append).
            Code::Unavailable if status.message().starts_with("broker is shutting down") => Stored::No,
            // The broker's sync-replication failure (stored on the master, not confirmed on its slaves), or the
            // transport: a connection reset or a keep-alive timeout while the request was out.
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => Stored::Maybe,
            // Answers given before anything is stored: busy, not the master, no topic, invalid...
            _ => Stored::No,
        }
    }
}

/// A failed attempt: the error, where it was sent (none: it failed before a broker was chosen), and whether it
/// may have stored the messages.
struct Failed {
    error: ClientError,
    target: Option<Target>,
    stored: Stored,
}

impl Failed {
    /// A failure before anything was sent (no route, no queue).
    fn unsent(error: ClientError) -> Self {
        Self { error, target: None, stored: Stored::No }
    }
}

/// First pause before an ordered send retries its queue (then 2×, 3×...).
const ORDERED_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// FNV-1a of a sharding key: stable across processes, platforms and releases (unlike `std`'s `DefaultHasher`),
/// so every producer sends a key to the same queue.
pub(crate) fn sharding_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn empty_answer(op: &'static str) -> ClientError {
    ClientError::Invalid { op, message: "the broker returned no result".into() }
}

pub(crate) fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn producer() -> Producer {
        Producer::new(ProducerConfig::new(vec!["127.0.0.1:1".into()], "pg")).unwrap()
    }

    fn route(brokers: &[(&str, u32)]) -> TopicRoute {
        let mut route = TopicRoute::default();
        for (name, n) in brokers {
            route.brokers.entry((*name).into()).or_default().insert(MASTER_ID, format!("{name}:1"));
            route.writable.extend((0..*n).map(|id| MessageQueue {
                topic: "t".into(),
                broker_name: (*name).into(),
                queue_id: id,
            }));
        }
        route
    }

    #[test]
    fn sharding_keys_hash_stably_and_spread_over_queues() {
        assert_eq!(sharding_hash(""), 0xcbf2_9ce4_8422_2325, "FNV-1a offset basis");
        assert_eq!(sharding_hash("a"), 0xaf63_dc4c_8601_ec8c, "FNV-1a of \"a\": the same in every process");
        let mut per_queue = [0usize; 8];
        for i in 0..800 {
            per_queue[(sharding_hash(&format!("order-{i}")) % 8) as usize] += 1;
        }
        assert!(per_queue.iter().all(|&n| n > 50), "keys spread over all queues: {per_queue:?}");
    }

    #[tokio::test]
    async fn queues_are_picked_round_robin() {
        let p = producer();
        let r = route(&[("a", 2), ("b", 2)]);
        let picked: Vec<MessageQueue> = (0..9).map(|_| p.pick("send", "t", &r, None).unwrap()).collect();
        let first = r.writable.iter().position(|q| *q == picked[0]).unwrap();
        for (i, q) in picked.iter().enumerate() {
            assert_eq!(*q, r.writable[(first + i) % 4], "pick {i} follows the route order");
        }
    }

    #[tokio::test]
    async fn an_isolated_or_just_failed_broker_is_skipped_while_another_exists() {
        let p = producer();
        let r = route(&[("a", 2), ("b", 2)]);
        p.isolate("a");
        assert!((0..8).all(|_| p.pick("send", "t", &r, None).unwrap().broker_name == "b"));
        assert!(
            (0..8).all(|_| p.pick("send", "t", &r, Some("b")).unwrap().broker_name == "a"),
            "avoid wins over isolation"
        );
        let only_a = route(&[("a", 2)]);
        assert_eq!(p.pick("send", "t", &only_a, Some("a")).unwrap().broker_name, "a", "no other broker: still sends");
    }

    #[tokio::test]
    async fn sends_go_to_the_master_only_and_fail_rather_than_reach_a_slave() {
        let (master, slave) = (FakeBroker::start(0), FakeBroker::start(0));
        let ns = FakeNameServer::start("b", &[(0, &master.address), (1, &slave.address)]);
        let producer = |ns: &FakeNameServer| {
            let mut config = ProducerConfig::new(vec![ns.address.clone()], "pg");
            config.heartbeat_interval = Duration::ZERO;
            // The fake broker speaks gRPC only (src/testing.rs).
            config.transport = crate::Transport::Grpc;
            Producer::new(config).unwrap()
        };
        let p = producer(&ns);
        for _ in 0..5 {
            assert_eq!(p.send(Message::new("t", "x")).await.unwrap().broker_address, master.address);
        }
        master.set_unavailable(true);
        let error = p.send(Message::new("t", "x")).await.unwrap_err();
        assert!(error.is_retryable() && error.broker() == Some(master.address.as_str()), "{error}");
        assert_eq!(slave.state.lock().sends, 0, "a slave never gets a send, even with its master down");

        let slave_only = FakeNameServer::start("b", &[(1, &slave.address)]);
        let error = producer(&slave_only).send(Message::new("t", "x")).await.unwrap_err();
        assert!(matches!(error, ClientError::NoQueue { what: "writable", .. }), "{error}");
        assert_eq!(slave.state.lock().sends, 0);
    }

    use crate::testing::{FakeBroker, FakeNameServer, SendAnswer};
    use crate::{LocalTransactionState, SendResult};
    use tonic::Code;

    /// Brokers "a" and "b" (one queue each, plain fakes unless scripted) and a producer whose next send goes to "a"
    /// first; `retries` extra attempts, 150 ms send timeout.
    struct TwoBrokers {
        a: FakeBroker,
        b: FakeBroker,
        producer: Producer,
        _ns: FakeNameServer,
    }

    impl TwoBrokers {
        async fn start(retries: usize) -> Self {
            let (a, b) = (FakeBroker::start(0), FakeBroker::start(0));
            let ns = FakeNameServer::start_groups(&[("a", &[(0, &a.address)]), ("b", &[(0, &b.address)])]);
            let producer = start_on_a(&ns, retries).await;
            Self { a, b, producer, _ns: ns }
        }

        fn script(broker: &FakeBroker, answers: &[SendAnswer]) {
            broker.state.lock().send_script.extend(answers.iter().cloned());
        }

        /// (send requests, calls that stored something) of a and b.
        fn counts(&self) -> [(usize, usize); 2] {
            [&self.a, &self.b].map(|f| {
                let state = f.state.lock();
                (state.send_requests, state.sends)
            })
        }
    }

    /// A producer over `ns` whose next pick is the queue of broker "a".
    async fn start_on_a(ns: &FakeNameServer, retries: usize) -> Producer {
        let mut config = ProducerConfig::new(vec![ns.address.clone()], "pg");
        config.heartbeat_interval = Duration::ZERO;
        config.retries = retries;
        // The fake broker speaks gRPC only (src/testing.rs).
        config.transport = crate::Transport::Grpc;
        config.send_timeout = Duration::from_millis(150);
        let producer = Producer::new(config).unwrap();
        let queues = producer.writable_queues("t").await.unwrap();
        let a = queues.iter().position(|q| q.broker_name == "a").unwrap();
        producer.inner.next_queue.store(a, Ordering::Relaxed);
        producer
    }

    const SLOW: SendAnswer = SendAnswer::StoreSlowly(Duration::from_millis(400));
    const BUSY: SendAnswer =
        SendAnswer::Refuse(Code::ResourceExhausted, "broker busy: 64 sends in flight; retry later");

    #[tokio::test]
    async fn a_send_that_may_have_been_stored_is_retried_on_the_same_broker_which_answers_the_first_copy() {
        let replication_failed = SendAnswer::StoreThenFail(
            Code::Unavailable,
            "replication failed: 0 slave(s) connected and in sync, 1 required; the message is stored on the master \
             but not confirmed on its slaves",
        );
        for (case, answer) in [("client-side timeout", SLOW), ("sync replication not confirmed", replication_failed)] {
            let brokers = TwoBrokers::start(1).await;
            TwoBrokers::script(&brokers.a, &[answer]);
            let result = brokers.producer.send(Message::new("t", "x")).await.unwrap();
            assert_eq!(result.broker_address, brokers.a.address, "{case}: the retry went to the same broker");
            assert!(result.duplicate, "{case}: the retry is answered with the first copy");
            assert_eq!(brokers.counts(), [(2, 1), (0, 0)], "{case}: one copy, none on the other broker");
        }

        // The broker says the same id is being stored right now: proof the copy is there, so the send stays.
        let brokers = TwoBrokers::start(2).await;
        let in_progress =
            SendAnswer::Refuse(Code::ResourceExhausted, "broker busy: message id \"x\" is being stored; retry later");
        TwoBrokers::script(&brokers.a, &[in_progress.clone(), in_progress]);
        let result = brokers.producer.send(Message::new("t", "x")).await.unwrap();
        assert_eq!(result.broker_address, brokers.a.address);
        assert_eq!(brokers.counts(), [(3, 1), (0, 0)]);
    }

    #[tokio::test]
    async fn a_send_that_certainly_stored_nothing_moves_to_another_broker_at_once() {
        let shutting_down = SendAnswer::Refuse(Code::Unavailable, "broker is shutting down");
        let not_master = SendAnswer::Refuse(Code::FailedPrecondition, "send refused: a (broker id 1) is a slave");
        for (case, answer) in [("busy", BUSY), ("stopping", shutting_down)] {
            let brokers = TwoBrokers::start(1).await;
            TwoBrokers::script(&brokers.a, &[answer]);
            let result = brokers.producer.send(Message::new("t", "x")).await.unwrap();
            assert_eq!(result.broker_address, brokers.b.address, "{case}");
            assert!(!result.duplicate, "{case}");
            assert_eq!(brokers.counts(), [(1, 0), (1, 1)], "{case}: one attempt on a, then b");
            assert!(brokers.producer.inner.faults.is_down_at("a", Instant::now()), "{case}: a is isolated");
        }
        let brokers = TwoBrokers::start(1).await;
        TwoBrokers::script(&brokers.a, &[not_master]);
        let error = brokers.producer.send(Message::new("t", "x")).await.unwrap_err();
        assert_eq!(error.code(), Code::FailedPrecondition, "an answer, not retried: {error}");
        assert_eq!(brokers.counts(), [(1, 0), (0, 0)]);

        // Connection refused: nothing was sent. With one retry, a second attempt on "a" would fail the send.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let b = FakeBroker::start(0);
        let ns = FakeNameServer::start_groups(&[("a", &[(0, closed.as_str())]), ("b", &[(0, &b.address)])]);
        let producer = start_on_a(&ns, 1).await;
        let result = producer.send(Message::new("t", "x")).await.unwrap();
        assert_eq!(result.broker_address, b.address, "a refused connection moves on at once");
        assert!(producer.inner.faults.is_down_at("a", Instant::now()));
    }

    #[tokio::test]
    async fn after_an_ambiguous_failure_a_plain_send_may_move_on_but_a_transactional_one_never_does() {
        // Plain: a timeout, then (in place) a busy answer: the send moves on, and "a" keeps the first copy (the
        // documented duplicate: availability wins once the broker failed twice).
        let brokers = TwoBrokers::start(2).await;
        TwoBrokers::script(&brokers.a, &[SLOW, BUSY]);
        let result = brokers.producer.send(Message::new("t", "x")).await.unwrap();
        assert_eq!(result.broker_address, brokers.b.address);
        assert_eq!(brokers.counts(), [(2, 1), (1, 1)]);

        // Transactional: the same failures, but every attempt stays on the broker that may hold the half.
        let brokers = TwoBrokers::start(2).await;
        TwoBrokers::script(&brokers.a, &[SLOW, BUSY]);
        let mut half: Option<SendResult> = None;
        let result = brokers
            .producer
            .send_transactional(Message::new("t", "x"), |h| {
                half = Some(h.clone());
                LocalTransactionState::Unknown
            })
            .await
            .unwrap();
        assert_eq!(result.half.broker_address, brokers.a.address);
        assert!(result.half.duplicate, "the third attempt found the first half");
        assert_eq!(half, Some(result.half), "the local transaction ran once, with the half");
        assert_eq!(brokers.counts(), [(3, 1), (0, 0)], "never a half on another broker");

        // Out of attempts while the half may be stored: the error is returned, still nothing elsewhere.
        let brokers = TwoBrokers::start(1).await;
        TwoBrokers::script(&brokers.a, &[SLOW, BUSY]);
        let error = brokers.producer.send_transactional(Message::new("t", "x"), |_| unreachable!()).await.unwrap_err();
        assert!(error.is_retryable(), "{error}");
        assert_eq!(brokers.counts(), [(2, 1), (0, 0)]);
    }

    #[tokio::test]
    async fn an_empty_route_or_batch_is_refused_without_a_call() {
        let p = producer();
        assert!(matches!(p.pick("send", "t", &TopicRoute::default(), None), Err(ClientError::NoQueue { .. })));
        assert!(matches!(p.send_batch(Vec::new()).await, Err(ClientError::Invalid { .. })));
        let mixed = vec![Message::new("a", "x"), Message::new("b", "y")];
        assert!(matches!(p.send_batch(mixed).await, Err(ClientError::Invalid { .. })));
    }
}
