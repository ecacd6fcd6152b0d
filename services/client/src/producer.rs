//! The producer: picks a queue from the topic's route, sends, and on a retryable failure tries another broker.
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
    /// Extra attempts, each on another broker when there is one, after a retryable failure (RocketMQ: 2).
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
        let channels = Channels::new(config.connect_timeout);
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

    /// Sends one message and waits for the broker's acknowledgement, retrying retryable failures on another
    /// broker up to `retries` times. A message with a sharding key goes to its key's queue instead (see
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
            if let Err((e, _)) = producer.attempt("send_oneway", &outgoing, None).await {
                tracing::warn!(topic = %message.topic, error = %e, "oneway send failed");
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
            match self.send_to(OP, &outgoing, &queue.broker_name, &address, Some(queue.queue_id)).await {
                Ok(mut results) => return results.pop().ok_or_else(|| empty_answer(OP)),
                Err((error, _)) if error.is_retryable() => {
                    tracing::debug!(%queue, attempt, %error, "ordered send failed; retrying the same queue");
                    self.inner.routes.invalidate(topic);
                    last = Some(error);
                }
                Err((error, _)) => return Err(error),
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

    /// [`Self::send_with_retries`] of a prepared request. A transactional send is not retried after a timeout:
    /// its half may be stored, and a second half on another broker could be committed by a check-back too.
    pub(crate) async fn send_outgoing(
        &self,
        op: &'static str,
        outgoing: Outgoing<'_>,
    ) -> Result<Vec<SendResult>, ClientError> {
        let topic = outgoing.topic;
        let attempts = self.inner.config.retries + 1;
        let mut failed_broker: Option<String> = None;
        let mut last = None;
        for attempt in 0..attempts {
            match self.attempt(op, &outgoing, failed_broker.as_deref()).await {
                Ok(results) => return Ok(results),
                Err((error @ ClientError::Timeout { .. }, _)) if outgoing.transactional => return Err(error),
                Err((error, broker_name)) if error.is_retryable() => {
                    tracing::debug!(op, topic, attempt, error = %error, "send failed; retrying on another broker");
                    self.inner.routes.invalidate(topic);
                    if let Some(name) = &broker_name {
                        self.isolate(name);
                    }
                    failed_broker = broker_name;
                    last = Some(error);
                }
                Err((error, _)) => return Err(error),
            }
        }
        Err(last.unwrap_or_else(|| empty_answer(op)))
    }

    /// One send to one queue. The error comes with the broker name it happened on (for isolation).
    async fn attempt(
        &self,
        op: &'static str,
        outgoing: &Outgoing<'_>,
        avoid: Option<&str>,
    ) -> Result<Vec<SendResult>, (ClientError, Option<String>)> {
        let route = match self.inner.routes.get(op, outgoing.topic).await {
            Ok(route) => route,
            Err(e) if e.code() == tonic::Code::NotFound => return self.attempt_unrouted(op, outgoing, avoid).await,
            Err(e) => return Err((e, None)),
        };
        let queue = self.pick(op, outgoing.topic, &route, avoid).map_err(|e| (e, None))?;
        // Writable queues are only those of broker groups with a master: sends never go to a slave.
        let address = route.master(&queue.broker_name).unwrap_or_default().to_owned();
        self.send_to(op, outgoing, &queue.broker_name, &address, Some(queue.queue_id)).await
    }

    /// A topic no broker hosts yet: send to a master of the NameServers' clusters (round robin) without a queue
    /// id, so a broker with topic auto-creation on creates it (RocketMQ's TBW102 default route does the same);
    /// it registers the new topic at once, and the next send finds a route.
    async fn attempt_unrouted(
        &self,
        op: &'static str,
        outgoing: &Outgoing<'_>,
        avoid: Option<&str>,
    ) -> Result<Vec<SendResult>, (ClientError, Option<String>)> {
        let info = self
            .inner
            .routes
            .nameserver()
            .cluster_info()
            .await
            .map_err(|cause| (ClientError::Route { op, topic: outgoing.topic.to_owned(), cause }, None))?;
        let mut masters: Vec<(String, String)> = info
            .clusters
            .iter()
            .flat_map(|c| &c.brokers)
            .filter_map(|b| b.addresses.get(&MASTER_ID).map(|a| (b.broker_name.clone(), a.clone())))
            .filter(|(name, address)| !address.is_empty() && avoid != Some(name.as_str()))
            .collect();
        masters.sort();
        if masters.is_empty() {
            return Err((ClientError::NoQueue { op, topic: outgoing.topic.to_owned(), what: "writable" }, None));
        }
        let (name, address) = &masters[self.inner.next_queue.fetch_add(1, Ordering::Relaxed) % masters.len()];
        self.send_to(op, outgoing, name, address, None).await
    }

    /// Sends to the broker `broker_name` at `address`, to `queue_id` or (unset) the queue the broker picks.
    async fn send_to(
        &self,
        op: &'static str,
        outgoing: &Outgoing<'_>,
        broker_name: &str,
        address: &str,
        queue_id: Option<u32>,
    ) -> Result<Vec<SendResult>, (ClientError, Option<String>)> {
        let fail = |e| (e, Some(broker_name.to_owned()));
        let mut client = self.inner.channels.broker(address).map_err(fail)?;
        let request = pb::SendMessageRequest {
            topic: outgoing.topic.to_owned(),
            queue_id,
            producer_group: self.inner.config.group.clone(),
            messages: outgoing.messages.clone(),
            transactional: outgoing.transactional,
        };
        let timeout = self.inner.config.send_timeout;
        let response = match tokio::time::timeout(timeout, client.send_message(request)).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return Err(fail(ClientError::broker_status(op, address, &status))),
            Err(_) => return Err(fail(ClientError::Timeout { op, broker: address.to_owned(), after: timeout })),
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
            return Err(fail(ClientError::Broker { op, broker, code: tonic::Code::Internal, message }));
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
        use crate::testing::{FakeBroker, FakeNameServer};
        let (master, slave) = (FakeBroker::start(0), FakeBroker::start(0));
        let ns = FakeNameServer::start("b", &[(0, &master.address), (1, &slave.address)]);
        let producer = |ns: &FakeNameServer| {
            let mut config = ProducerConfig::new(vec![ns.address.clone()], "pg");
            config.heartbeat_interval = Duration::ZERO;
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

    #[tokio::test]
    async fn an_empty_route_or_batch_is_refused_without_a_call() {
        let p = producer();
        assert!(matches!(p.pick("send", "t", &TopicRoute::default(), None), Err(ClientError::NoQueue { .. })));
        assert!(matches!(p.send_batch(Vec::new()).await, Err(ClientError::Invalid { .. })));
        let mixed = vec![Message::new("a", "x"), Message::new("b", "y")];
        assert!(matches!(p.send_batch(mixed).await, Err(ClientError::Invalid { .. })));
    }
}
