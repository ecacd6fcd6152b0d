//! The pull consumer: the application names the queue and the offset; the SDK finds the queue's broker group
//! from the route, picks the member to talk to (master or slave, see [`crate::member`]) and makes the call.
//! Offsets are the group's, kept by the brokers (clustering model).
//!
//! Fail-over: a transport failure on a member marks it down for `failover_backoff` and the same call is made at
//! once on the next member (each member at most once per call), so a pull that hits a killed master is answered
//! by a slave. The pull offset is always the caller's: a slave's offset corrections (OFFSET_MOVED/OVERFLOW: it has
//! not replicated that far, or holds less history) are not applied, as RocketMQ's slaves do not issue them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use comet_nameserver_client::ClientConfig;
use comet_proto::comet::v1 as pb;

use crate::channels::{BrokerClient, Channels};
use crate::error::ClientError;
use crate::fault::Faults;
use crate::member::{Member, Order, ReadPreference, choose};
use crate::message::ReceivedMessage;
use crate::producer::nameserver_client;
use crate::route::Routes;
use comet_model::MessageQueue;

/// Longest a pull answered by a slave's offset correction waits before it returns (so a caller's loop does not
/// spin while the slave catches up with replication).
const SLAVE_BEHIND_PAUSE: Duration = Duration::from_millis(500);

/// Pull consumer settings.
#[derive(Debug, Clone)]
pub struct PullConsumerConfig {
    /// NameServer addresses (`host:port`).
    pub nameservers: Vec<String>,
    /// The consumer group (whose offsets are committed and queried).
    pub group: String,
    /// Tag filter applied by the broker: `*` (or empty) = every message, `a||b` = tag `a` or `b`.
    pub tag_expression: String,
    /// Timeout of a call, added to the long-poll wait for pulls.
    pub request_timeout: Duration,
    /// Timeout to open a connection to a broker.
    pub connect_timeout: Duration,
    /// How old a cached route may get before it is refreshed.
    pub route_refresh: Duration,
    /// Which member of each broker group reads go to: the master (default; a slave while the master is down or
    /// gone from the route) or a slave (the master when there is no live slave).
    pub read_preference: ReadPreference,
    /// How long a member (master or slave) whose call failed in transport (connection refused, UNAVAILABLE, no
    /// answer in time) is passed over; afterwards the next call tries it again and uses it if it answers
    /// (default 5 s).
    pub failover_backoff: Duration,
    /// Wire of the hot calls (SendMessage, PullMessage): remoting frames on the broker's port (default), or gRPC
    /// for a path that passes only HTTP/2. See [`Transport`](crate::Transport).
    pub transport: crate::Transport,
    /// Settings of the NameServer client (addresses are taken from `nameservers`).
    pub nameserver_client: Option<ClientConfig>,
}

impl PullConsumerConfig {
    /// Defaults: every tag, 3 s calls (plus the long-poll wait), 3 s connects, routes refreshed every 30 s, reads
    /// from the master, a failed member passed over for 5 s.
    pub fn new(nameservers: Vec<String>, group: impl Into<String>) -> Self {
        Self {
            nameservers,
            group: group.into(),
            tag_expression: "*".into(),
            request_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(3),
            route_refresh: Duration::from_secs(30),
            read_preference: ReadPreference::Master,
            failover_backoff: Duration::from_secs(5),
            transport: crate::Transport::default(),
            nameserver_client: None,
        }
    }
}

/// How a pull ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullStatus {
    /// At least one message.
    Found,
    /// Nothing (matching) before the wait ended; continue from `next_offset`.
    NoNewMessage,
    /// The offset was removed by retention; continue from `next_offset` (the queue's minimum).
    OffsetMoved,
    /// The offset is beyond the queue's end; `next_offset` is the end.
    OffsetOverflow,
}

/// The answer to a pull.
#[derive(Debug, Clone)]
pub struct PullResult {
    /// How it ended.
    pub status: PullStatus,
    /// The messages, in queue order.
    pub messages: Vec<ReceivedMessage>,
    /// Where the next pull of this queue should start (past messages skipped by the filter too). After a slave's
    /// offset correction this is the offset asked for (see [`PullConsumer::pull`]).
    pub next_offset: u64,
    /// The queue's smallest offset still stored on the member that answered.
    pub min_offset: u64,
    /// The queue's end (offset of the next message to be stored) on the member that answered.
    pub max_offset: u64,
    /// Broker id of the member that answered (0 = the master), so callers can see a fail-over.
    pub broker_id: u64,
    /// Address of the member that answered.
    pub broker_address: String,
}

/// Reads explicit queues from explicit offsets. Cheap to clone; clones share routes, channels and member faults.
#[derive(Debug, Clone)]
pub struct PullConsumer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: PullConsumerConfig,
    routes: Arc<Routes>,
    channels: Channels,
    /// Member addresses that failed in transport recently (shared by a push consumer's pull consumers).
    faults: Arc<Faults>,
}

impl PullConsumer {
    /// A pull consumer over `config.nameservers`. Connects lazily; must be called inside a tokio runtime.
    pub fn new(config: PullConsumerConfig) -> Result<Self, ClientError> {
        let faults = Arc::new(Faults::new(config.failover_backoff));
        Self::with_faults(config, faults)
    }

    /// A pull consumer recording member failures in `faults`, so several (a push consumer's, one per topic) agree
    /// on which members are down.
    pub(crate) fn with_faults(config: PullConsumerConfig, faults: Arc<Faults>) -> Result<Self, ClientError> {
        let nameserver = nameserver_client(&config.nameservers, config.nameserver_client.clone())?;
        let routes = Routes::new(nameserver, config.route_refresh);
        let channels = Channels::new(config.connect_timeout, config.transport);
        Ok(Self { inner: Arc::new(Inner { config, routes, channels, faults }) })
    }

    /// The readable queues of `topic`, sorted by broker name and queue id (a queue is readable while any member of
    /// its broker group is in the route).
    pub async fn queues(&self, topic: &str) -> Result<Vec<MessageQueue>, ClientError> {
        Ok(self.inner.routes.get("queues", topic).await?.readable.clone())
    }

    /// Reads up to `max` messages of `queue` from `offset`, waiting up to `max_wait` for one to arrive when none
    /// is there (long polling; the broker caps the wait). Goes to the member the read preference picks, and on a
    /// transport failure to the next one at once.
    ///
    /// A slave answering OFFSET_OVERFLOW (it has not replicated up to `offset` yet) or OFFSET_MOVED (it holds less
    /// history than the master) is reported as `NoNewMessage` with `next_offset == offset`, after a short pause:
    /// the caller keeps its own position, so switching members never skips or rewinds. (While the master is down,
    /// messages only the master still has are therefore waited for, not skipped.)
    pub async fn pull(
        &self,
        queue: &MessageQueue,
        offset: u64,
        max: u32,
        max_wait: Duration,
    ) -> Result<PullResult, ClientError> {
        let request = pb::PullMessageRequest {
            group: self.inner.config.group.clone(),
            topic: queue.topic.clone(),
            queue_id: queue.queue_id,
            offset,
            max_count: max,
            max_bytes: 0,
            max_wait_millis: u32::try_from(max_wait.as_millis()).unwrap_or(u32::MAX),
            tag_expression: self.inner.config.tag_expression.clone(),
        };
        let timeout = max_wait + self.inner.config.request_timeout;
        let order = self.inner.config.read_preference.into();
        let (answer, member) = self
            .call("pull", &queue.topic, &queue.broker_name, order, timeout, |mut c| {
                let request = request.clone();
                async move { c.pull_message(request).await }
            })
            .await?;
        let mut status = match pb::PullStatus::try_from(answer.status) {
            Ok(pb::PullStatus::Found) => PullStatus::Found,
            Ok(pb::PullStatus::OffsetMoved) => PullStatus::OffsetMoved,
            Ok(pb::PullStatus::OffsetOverflow) => PullStatus::OffsetOverflow,
            _ => PullStatus::NoNewMessage,
        };
        let mut next_offset = answer.next_offset;
        if !member.is_master() && matches!(status, PullStatus::OffsetMoved | PullStatus::OffsetOverflow) {
            tracing::debug!(%queue, offset, slave = %member.address, ?status, min = answer.min_offset,
                max = answer.max_offset, "slave does not hold this offset; keeping ours");
            tokio::time::sleep(max_wait.min(SLAVE_BEHIND_PAUSE)).await;
            status = PullStatus::NoNewMessage;
            next_offset = offset;
        }
        let messages = answer.messages.into_iter().map(|m| ReceivedMessage::from_wire(&queue.broker_name, m)).collect();
        Ok(PullResult {
            status,
            messages,
            next_offset,
            min_offset: answer.min_offset,
            max_offset: answer.max_offset,
            broker_id: member.id,
            broker_address: member.address,
        })
    }

    /// Commits the group's next offset to consume in `queue` (everything before it is done): to the member reads
    /// go to and, when that is a slave, to the master too unless it is down (the master's offsets are copied to
    /// its slaves, so a commit on the slave alone would be overwritten). A master failing in transport is marked
    /// down and the slave's acceptance suffices; a master refusing is returned.
    pub async fn commit_offset(&self, queue: &MessageQueue, offset: u64) -> Result<(), ClientError> {
        let request = pb::CommitConsumerOffsetRequest {
            group: self.inner.config.group.clone(),
            topic: queue.topic.clone(),
            queue_id: queue.queue_id,
            offset,
        };
        let timeout = self.inner.config.request_timeout;
        let commit = |mut c: BrokerClient| {
            let request = request.clone();
            async move { c.commit_consumer_offset(request).await }
        };
        let order = self.inner.config.read_preference.into();
        let (_, member) = self.call("commit_offset", &queue.topic, &queue.broker_name, order, timeout, &commit).await?;
        if member.is_master() {
            return Ok(());
        }
        let route = self.inner.routes.get("commit_offset", &queue.topic).await?;
        let Some(master) = route.master(&queue.broker_name) else { return Ok(()) };
        if self.inner.faults.is_down_at(master, Instant::now()) {
            return Ok(());
        }
        match self.call_member("commit_offset", master, timeout, &commit).await {
            Ok(_) => Ok(()),
            Err(error) if error.is_unreachable() => {
                tracing::debug!(%queue, offset, %error, "master unreachable; the commit is on the slave only");
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// The group's committed offset in `queue`; `None` if it never committed there. Asks the master (its offsets
    /// are the reference; a slave's copy may be seconds old), or a slave while the master is down.
    pub async fn query_offset(&self, queue: &MessageQueue) -> Result<Option<u64>, ClientError> {
        let request = pb::QueryConsumerOffsetRequest {
            group: self.inner.config.group.clone(),
            topic: queue.topic.clone(),
            queue_id: queue.queue_id,
        };
        let timeout = self.inner.config.request_timeout;
        let (answer, _) = self
            .call("query_offset", &queue.topic, &queue.broker_name, Order::MasterFirst, timeout, |mut c| {
                let request = request.clone();
                async move { c.query_consumer_offset(request).await }
            })
            .await?;
        Ok(answer.found.then_some(answer.offset))
    }

    /// The queue's smallest stored offset and its end, on the member reads go to (so a start position taken
    /// from them is one that member can serve).
    pub async fn queue_offsets(&self, queue: &MessageQueue) -> Result<(u64, u64), ClientError> {
        let request = pb::GetQueueOffsetsRequest { topic: queue.topic.clone(), queue_id: queue.queue_id };
        let timeout = self.inner.config.request_timeout;
        let order = self.inner.config.read_preference.into();
        let (answer, _) = self
            .call("queue_offsets", &queue.topic, &queue.broker_name, order, timeout, |mut c| {
                let request = request.clone();
                async move { c.get_queue_offsets(request).await }
            })
            .await?;
        Ok((answer.min_offset, answer.max_offset))
    }

    /// Sends a message the group's listener failed back to the master of the broker group it was read from
    /// (ConsumerSendBack): the broker redelivers it to this group later through `%RETRY%<group>`, or stores it in
    /// `%DLQ%<group>` when its retries are used up or `dead_letter` is set (an orderly consumer that used up its
    /// in-place retries). The broker answers a repeated send-back of one message with its first result, so a
    /// caller may retry this call after a timeout without creating a second redelivery.
    pub(crate) async fn send_back(
        &self,
        message: &ReceivedMessage,
        dead_letter: bool,
    ) -> Result<pb::ConsumerSendBackResponse, ClientError> {
        let request = pb::ConsumerSendBackRequest {
            group: self.inner.config.group.clone(),
            topic: message.queue.topic.clone(),
            queue_id: message.queue.queue_id,
            queue_offset: message.queue_offset,
            commit_log_offset: message.commit_log_offset,
            message_id: message.message_id.clone(),
            dead_letter,
            delay_millis: 0,
        };
        let route = self.inner.routes.get("send_back", &message.queue.topic).await?;
        let master = route.master(&message.queue.broker_name).ok_or_else(|| ClientError::NoQueue {
            op: "send_back",
            topic: message.queue.topic.clone(),
            what: "readable",
        })?;
        let send_back = |mut c: BrokerClient| {
            let request = request.clone();
            async move { c.consumer_send_back(request).await }
        };
        self.call_member("send_back", master, self.inner.config.request_timeout, &send_back).await
    }

    /// The group's live members as the member reads of `broker_name` go to sees them (push consumer re-balance).
    pub(crate) async fn consumer_list(&self, topic: &str, broker_name: &str) -> Result<Vec<String>, ClientError> {
        let request = pb::GetConsumerListRequest { group: self.inner.config.group.clone() };
        let timeout = self.inner.config.request_timeout;
        let order = self.inner.config.read_preference.into();
        let (answer, _) = self
            .call("get_consumer_list", topic, broker_name, order, timeout, |mut c| {
                let request = request.clone();
                async move { c.get_consumer_list(request).await }
            })
            .await?;
        Ok(answer.client_ids)
    }

    /// The broker names hosting `topic`'s readable queues, sorted.
    pub(crate) async fn broker_names(&self, topic: &str) -> Result<Vec<String>, ClientError> {
        let route = self.inner.routes.get("brokers", topic).await?;
        let mut names: Vec<String> = route.readable.iter().map(|q| q.broker_name.clone()).collect();
        names.dedup();
        Ok(names)
    }

    /// Every member address (masters and slaves) of the broker groups hosting `topic`'s readable queues, sorted:
    /// push consumer heartbeats go to all of them, so a slave knows the group's members when its master dies.
    pub(crate) async fn member_addresses(&self, topic: &str) -> Result<Vec<(u64, String)>, ClientError> {
        let route = self.inner.routes.get("brokers", topic).await?;
        let mut addresses: Vec<(u64, String)> = route
            .readable
            .iter()
            .filter_map(|q| route.brokers.get(&q.broker_name))
            .flat_map(|members| members.iter().map(|(id, address)| (id, address.to_owned())))
            .collect();
        addresses.sort_by(|a, b| a.1.cmp(&b.1));
        addresses.dedup_by(|a, b| a.1 == b.1);
        Ok(addresses)
    }

    /// One call to the member at `address` (no fail-over): a transport failure marks it down, any answer clears
    /// that.
    pub(crate) async fn call_member<T, F, Fut>(
        &self,
        op: &'static str,
        address: &str,
        timeout: Duration,
        call: &F,
    ) -> Result<T, ClientError>
    where
        F: Fn(BrokerClient) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.inner.channels.broker(address)?;
        let result = match tokio::time::timeout(timeout, call(client)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(ClientError::broker_status(op, address, &status)),
            Err(_) => Err(ClientError::Timeout { op, broker: address.to_owned(), after: timeout }),
        };
        match &result {
            Err(error) if error.is_unreachable() => self.inner.faults.mark(address),
            _ => {
                if self.inner.faults.clear(address) {
                    tracing::info!(broker = address, op, "broker member answers again");
                }
            }
        }
        result
    }

    /// One call to the master of `broker_name` (hosting `topic`), never a slave: for what only a master keeps
    /// (orderly consumption's queue locks, sending a message back). A retryable failure marks the route for
    /// refresh.
    pub(crate) async fn call_master<T, F, Fut>(
        &self,
        op: &'static str,
        topic: &str,
        broker_name: &str,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(BrokerClient) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let route = self.inner.routes.get(op, topic).await?;
        let Some(master) = route.master(broker_name).map(str::to_owned) else {
            self.inner.routes.invalidate(topic);
            return Err(ClientError::NoQueue { op, topic: topic.to_owned(), what: "master" });
        };
        let result = self.call_member(op, &master, self.inner.config.request_timeout, &call).await;
        if result.as_ref().is_err_and(ClientError::is_retryable) {
            self.inner.routes.invalidate(topic);
        }
        result
    }

    /// The consumer group.
    pub(crate) fn group(&self) -> &str {
        &self.inner.config.group
    }

    /// The member of a broker group a call in `order` goes to now, skipping `tried` and members marked down.
    fn member(&self, members: &crate::route::BrokerMembers, order: Order, tried: &[String]) -> Option<Member> {
        let now = Instant::now();
        choose(members, order, |address| self.inner.faults.is_down_at(address, now), tried)
    }

    /// One call to a member of `broker_name` (hosting `topic`), chosen in `order`; on a transport failure the
    /// member is marked down and the call goes to the next member at once (each at most once). Returns the answer
    /// and the member that gave it. A retryable failure also marks the route for refresh (members may have moved).
    async fn call<T, F, Fut>(
        &self,
        op: &'static str,
        topic: &str,
        broker_name: &str,
        order: Order,
        timeout: Duration,
        call: F,
    ) -> Result<(T, Member), ClientError>
    where
        F: Fn(BrokerClient) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let route = self.inner.routes.get(op, topic).await?;
        let no_member = || ClientError::NoQueue { op, topic: topic.to_owned(), what: "readable" };
        let members = route.brokers.get(broker_name).ok_or_else(no_member)?;
        let mut tried: Vec<String> = Vec::new();
        let mut last = None;
        while let Some(member) = self.member(members, order, &tried) {
            match self.call_member(op, &member.address, timeout, &call).await {
                Ok(answer) => return Ok((answer, member)),
                Err(error) if error.is_unreachable() => {
                    self.inner.routes.invalidate(topic);
                    tracing::warn!(op, broker_name, broker_id = member.id, broker = %member.address, %error,
                        "broker member unreachable; passed over for the back-off, trying another member");
                    tried.push(member.address);
                    last = Some(error);
                }
                // A slave copies topics from its master every few seconds (`ha.metadata-sync-interval-ms`): one
                // that does not know the topic yet passes the call on to the next member, and is not marked down.
                Err(error) if !member.is_master() && error.code() == tonic::Code::NotFound => {
                    tracing::debug!(op, broker_name, broker_id = member.id, broker = %member.address, %error,
                        "slave does not know the topic yet; trying another member");
                    tried.push(member.address);
                    last = Some(error);
                }
                Err(error) => {
                    if error.is_retryable() {
                        self.inner.routes.invalidate(topic);
                    }
                    return Err(error);
                }
            }
        }
        Err(last.unwrap_or_else(no_member))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::BrokerMembers;
    use crate::testing::{FakeBroker, FakeNameServer};

    const BACKOFF: Duration = Duration::from_millis(300);

    fn consumer(ns: &FakeNameServer, preference: ReadPreference) -> PullConsumer {
        let mut config = PullConsumerConfig::new(vec![ns.address.clone()], "g");
        config.read_preference = preference;
        config.failover_backoff = BACKOFF;
        // The fake broker speaks gRPC only (src/testing.rs).
        config.transport = crate::Transport::Grpc;
        config.request_timeout = Duration::from_secs(2);
        PullConsumer::new(config).unwrap()
    }

    fn queue() -> MessageQueue {
        MessageQueue { topic: "t".into(), broker_name: "b".into(), queue_id: 0 }
    }

    /// An address nothing listens on (a killed broker: connection refused).
    fn dead_address() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }

    fn bodies(result: &PullResult) -> Vec<String> {
        result.messages.iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()).collect()
    }

    #[test]
    fn a_member_marked_down_is_passed_over_until_its_backoff_expires() {
        let faults = Faults::new(Duration::from_secs(5));
        let mut group = BrokerMembers::default();
        group.insert(0, "m");
        group.insert(2, "s2");
        group.insert(1, "s1");
        let at = |now: Instant| choose(&group, Order::MasterFirst, |a| faults.is_down_at(a, now), &[]).unwrap();
        let t0 = Instant::now();
        assert_eq!(at(t0).address, "m");
        faults.mark_at("m", t0);
        assert_eq!(at(t0 + Duration::from_secs(1)).address, "s1", "master down: the lowest-id slave");
        assert_eq!(at(t0 + Duration::from_secs(5)).address, "m", "back-off over: the master is probed again");
    }

    #[tokio::test]
    async fn a_pull_fails_over_to_the_slave_at_once_and_returns_to_the_master_after_the_backoff() {
        let (master, slave) = (FakeBroker::start(10), FakeBroker::start(10));
        let ns = FakeNameServer::start("b", &[(0, &master.address), (1, &slave.address)]);
        let c = consumer(&ns, ReadPreference::Master);

        let first = c.pull(&queue(), 0, 4, Duration::ZERO).await.unwrap();
        assert_eq!((first.broker_id, bodies(&first)), (0, vec!["m0".into(), "m1".into(), "m2".into(), "m3".into()]));

        master.set_unavailable(true);
        let failed_over = c.pull(&queue(), first.next_offset, 4, Duration::ZERO).await.unwrap();
        assert_eq!(failed_over.broker_id, 1, "the same call is answered by the slave");
        assert_eq!(failed_over.broker_address, slave.address);
        assert_eq!(bodies(&failed_over), ["m4", "m5", "m6", "m7"], "from our own offset: nothing skipped");
        let master_pulls = master.state.lock().pulls.len();
        let next = c.pull(&queue(), failed_over.next_offset, 4, Duration::ZERO).await.unwrap();
        assert_eq!((next.broker_id, bodies(&next)), (1, vec!["m8".into(), "m9".into()]));
        assert_eq!(master.state.lock().pulls.len(), master_pulls, "a master marked down is not asked");

        master.set_unavailable(false);
        tokio::time::sleep(BACKOFF + Duration::from_millis(50)).await;
        let back = c.pull(&queue(), 4, 2, Duration::ZERO).await.unwrap();
        assert_eq!((back.broker_id, bodies(&back)), (0, vec!["m4".into(), "m5".into()]), "probed and back");
        assert_eq!(slave.state.lock().pulls, [4, 8], "the slave served only while the master was down");
    }

    #[tokio::test]
    async fn a_killed_master_refusing_connections_is_failed_over_and_errors_name_the_member() {
        let slave = FakeBroker::start(3);
        let dead = dead_address();
        let ns = FakeNameServer::start("b", &[(0, &dead), (1, &slave.address)]);
        let c = consumer(&ns, ReadPreference::Master);
        let result = c.pull(&queue(), 0, 32, Duration::ZERO).await.unwrap();
        assert_eq!((result.broker_id, bodies(&result).len()), (1, 3));

        slave.set_unavailable(true);
        tokio::time::sleep(BACKOFF + Duration::from_millis(50)).await;
        let error = c.pull(&queue(), 3, 32, Duration::ZERO).await.unwrap_err();
        assert!(error.is_retryable(), "{error}");
        assert_eq!(error.broker(), Some(slave.address.as_str()), "the last member tried: {error}");
        assert!(error.to_string().contains("pull"), "{error}");
    }

    #[tokio::test]
    async fn a_slave_never_moves_the_consumers_offset_a_master_does() {
        let (master, slave) = (FakeBroker::start(5), FakeBroker::start(5));
        slave.state.lock().min = 3;
        let ns = FakeNameServer::start("b", &[(0, &master.address), (1, &slave.address)]);
        let c = consumer(&ns, ReadPreference::Slave);

        let behind = c.pull(&queue(), 8, 32, Duration::from_millis(50)).await.unwrap();
        assert_eq!((behind.broker_id, behind.status, behind.next_offset), (1, PullStatus::NoNewMessage, 8));
        assert_eq!(behind.max_offset, 5, "the slave's own end is still reported");
        let old = c.pull(&queue(), 1, 32, Duration::from_millis(50)).await.unwrap();
        assert_eq!((old.status, old.next_offset), (PullStatus::NoNewMessage, 1), "no jump past what the master has");

        let master_reader = consumer(&ns, ReadPreference::Master);
        let overflow = master_reader.pull(&queue(), 8, 32, Duration::ZERO).await.unwrap();
        assert_eq!((overflow.broker_id, overflow.status, overflow.next_offset), (0, PullStatus::OffsetOverflow, 5));
    }

    #[tokio::test]
    async fn slave_preference_reads_a_live_slave_else_the_master() {
        let (master, slave) = (FakeBroker::start(4), FakeBroker::start(4));
        let ns = FakeNameServer::start("b", &[(0, &master.address), (1, &slave.address)]);
        let c = consumer(&ns, ReadPreference::Slave);
        assert_eq!(c.pull(&queue(), 0, 1, Duration::ZERO).await.unwrap().broker_id, 1);
        assert_eq!(c.queue_offsets(&queue()).await.unwrap(), (0, 4));
        assert_eq!((master.state.lock().offset_lookups, slave.state.lock().offset_lookups), (0, 1));
        slave.set_unavailable(true);
        assert_eq!(c.pull(&queue(), 1, 1, Duration::ZERO).await.unwrap().broker_id, 0, "no live slave: the master");

        let master_only = FakeNameServer::start("b", &[(0, &master.address)]);
        let c = consumer(&master_only, ReadPreference::Slave);
        assert_eq!(c.pull(&queue(), 0, 1, Duration::ZERO).await.unwrap().broker_id, 0, "no slave in the route");
    }

    #[tokio::test]
    async fn a_slave_that_has_not_copied_the_topic_yet_passes_reads_to_the_master() {
        let (master, slave) = (FakeBroker::start(4), FakeBroker::start(4));
        slave.state.lock().unknown_topic = true;
        let ns = FakeNameServer::start("b", &[(0, &master.address), (1, &slave.address)]);
        let c = consumer(&ns, ReadPreference::Slave);
        assert_eq!(c.queue_offsets(&queue()).await.unwrap(), (0, 4));
        let read = c.pull(&queue(), 0, 1, Duration::ZERO).await.unwrap();
        assert_eq!((read.broker_id, read.messages.len()), (0, 1), "the master answered");

        slave.state.lock().unknown_topic = false;
        assert_eq!(c.pull(&queue(), 1, 1, Duration::ZERO).await.unwrap().broker_id, 1, "not passed over: asked again");

        let ns = FakeNameServer::start("b", &[(0, &master.address), (1, &slave.address)]);
        slave.state.lock().unknown_topic = true;
        master.set_unavailable(true);
        let error = consumer(&ns, ReadPreference::Slave).pull(&queue(), 0, 1, Duration::ZERO).await.unwrap_err();
        assert_eq!(error.broker(), Some(master.address.as_str()), "the master was asked too: {error}");
    }

    #[tokio::test]
    async fn commits_go_to_the_member_read_from_and_to_the_master_while_it_is_up() {
        let (master, slave) = (FakeBroker::start(10), FakeBroker::start(10));
        let ns = FakeNameServer::start("b", &[(0, &master.address), (1, &slave.address)]);

        consumer(&ns, ReadPreference::Master).commit_offset(&queue(), 3).await.unwrap();
        assert_eq!((master.state.lock().commits.clone(), slave.state.lock().commits.clone()), (vec![3], vec![]));

        let from_slave = consumer(&ns, ReadPreference::Slave);
        from_slave.commit_offset(&queue(), 5).await.unwrap();
        assert_eq!(master.state.lock().commits, [3, 5], "the master's offsets are copied to the slave: it gets it");
        assert_eq!(slave.state.lock().commits, [5]);

        master.set_unavailable(true);
        from_slave.commit_offset(&queue(), 7).await.unwrap();
        assert_eq!(slave.state.lock().commits, [5, 7], "master down: the slave's acceptance suffices");
        let reader = consumer(&ns, ReadPreference::Master);
        reader.commit_offset(&queue(), 8).await.unwrap();
        assert_eq!(slave.state.lock().commits, [5, 7, 8], "reading from the slave while the master is down");
    }

    #[tokio::test]
    async fn offset_lookups_ask_the_master_and_a_slave_only_while_it_is_down() {
        let (master, slave) = (FakeBroker::start(10), FakeBroker::start(10));
        master.state.lock().committed = Some(9);
        slave.state.lock().committed = Some(4);
        let ns = FakeNameServer::start("b", &[(0, &master.address), (1, &slave.address)]);
        let c = consumer(&ns, ReadPreference::Slave);
        assert_eq!(c.query_offset(&queue()).await.unwrap(), Some(9), "the master's offset is the reference");
        master.set_unavailable(true);
        assert_eq!(c.query_offset(&queue()).await.unwrap(), Some(4));
    }
}
