//! The pull consumer: the application names the queue and the offset; the SDK finds the queue's broker from the
//! route and makes the call. Offsets are the group's, kept by the broker (clustering model).

use std::sync::Arc;
use std::time::Duration;

use comet_nameserver_client::ClientConfig;
use comet_proto::comet::v1 as pb;

use crate::channels::Channels;
use crate::error::ClientError;
use crate::message::ReceivedMessage;
use crate::producer::nameserver_client;
use crate::route::Routes;
use comet_model::MessageQueue;

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
    /// Settings of the NameServer client (addresses are taken from `nameservers`).
    pub nameserver_client: Option<ClientConfig>,
}

impl PullConsumerConfig {
    /// Defaults: every tag, 3 s calls (plus the long-poll wait), 3 s connects, routes refreshed every 30 s.
    pub fn new(nameservers: Vec<String>, group: impl Into<String>) -> Self {
        Self {
            nameservers,
            group: group.into(),
            tag_expression: "*".into(),
            request_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(3),
            route_refresh: Duration::from_secs(30),
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
    /// Where the next pull of this queue should start (past messages skipped by the filter too).
    pub next_offset: u64,
    /// The queue's smallest offset still stored.
    pub min_offset: u64,
    /// The queue's end (offset of the next message to be stored).
    pub max_offset: u64,
}

/// Reads explicit queues from explicit offsets. Cheap to clone; clones share routes and channels.
#[derive(Debug, Clone)]
pub struct PullConsumer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: PullConsumerConfig,
    routes: Arc<Routes>,
    channels: Channels,
}

impl PullConsumer {
    /// A pull consumer over `config.nameservers`. Connects lazily; must be called inside a tokio runtime.
    pub fn new(config: PullConsumerConfig) -> Result<Self, ClientError> {
        let nameserver = nameserver_client(&config.nameservers, config.nameserver_client.clone())?;
        let routes = Routes::new(nameserver, config.route_refresh);
        let channels = Channels::new(config.connect_timeout);
        Ok(Self { inner: Arc::new(Inner { config, routes, channels }) })
    }

    /// The readable queues of `topic`, sorted by broker name and queue id.
    pub async fn queues(&self, topic: &str) -> Result<Vec<MessageQueue>, ClientError> {
        Ok(self.inner.routes.get("queues", topic).await?.readable.clone())
    }

    /// Reads up to `max` messages of `queue` from `offset`, waiting up to `max_wait` for one to arrive when none
    /// is there (long polling; the broker caps the wait).
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
        let answer = self
            .call("pull", queue, timeout, move |mut c| {
                let request = request.clone();
                async move { c.pull_message(request).await }
            })
            .await?;
        let status = match pb::PullStatus::try_from(answer.status) {
            Ok(pb::PullStatus::Found) => PullStatus::Found,
            Ok(pb::PullStatus::OffsetMoved) => PullStatus::OffsetMoved,
            Ok(pb::PullStatus::OffsetOverflow) => PullStatus::OffsetOverflow,
            _ => PullStatus::NoNewMessage,
        };
        let messages = answer.messages.into_iter().map(|m| ReceivedMessage::from_wire(&queue.broker_name, m)).collect();
        Ok(PullResult {
            status,
            messages,
            next_offset: answer.next_offset,
            min_offset: answer.min_offset,
            max_offset: answer.max_offset,
        })
    }

    /// Commits the group's next offset to consume in `queue` (everything before it is done).
    pub async fn commit_offset(&self, queue: &MessageQueue, offset: u64) -> Result<(), ClientError> {
        let request = pb::CommitConsumerOffsetRequest {
            group: self.inner.config.group.clone(),
            topic: queue.topic.clone(),
            queue_id: queue.queue_id,
            offset,
        };
        let timeout = self.inner.config.request_timeout;
        self.call("commit_offset", queue, timeout, move |mut c| {
            let request = request.clone();
            async move { c.commit_consumer_offset(request).await }
        })
        .await
        .map(|_| ())
    }

    /// The group's committed offset in `queue`; `None` if it never committed there.
    pub async fn query_offset(&self, queue: &MessageQueue) -> Result<Option<u64>, ClientError> {
        let request = pb::QueryConsumerOffsetRequest {
            group: self.inner.config.group.clone(),
            topic: queue.topic.clone(),
            queue_id: queue.queue_id,
        };
        let timeout = self.inner.config.request_timeout;
        let answer = self
            .call("query_offset", queue, timeout, move |mut c| {
                let request = request.clone();
                async move { c.query_consumer_offset(request).await }
            })
            .await?;
        Ok(answer.found.then_some(answer.offset))
    }

    /// The queue's smallest stored offset and its end.
    pub async fn queue_offsets(&self, queue: &MessageQueue) -> Result<(u64, u64), ClientError> {
        let request = pb::GetQueueOffsetsRequest { topic: queue.topic.clone(), queue_id: queue.queue_id };
        let timeout = self.inner.config.request_timeout;
        let answer = self
            .call("queue_offsets", queue, timeout, move |mut c| {
                let request = request.clone();
                async move { c.get_queue_offsets(request).await }
            })
            .await?;
        Ok((answer.min_offset, answer.max_offset))
    }

    /// The master addresses of the brokers hosting `topic`'s readable queues, sorted (push consumer heartbeats).
    pub(crate) async fn broker_addresses(&self, topic: &str) -> Result<Vec<String>, ClientError> {
        let route = self.inner.routes.get("brokers", topic).await?;
        let mut addresses: Vec<String> =
            route.readable.iter().filter_map(|q| route.masters.get(&q.broker_name).cloned()).collect();
        addresses.sort();
        addresses.dedup();
        Ok(addresses)
    }

    /// A client of the broker at `address` on the shared channel.
    pub(crate) fn broker_client(
        &self,
        address: &str,
    ) -> Result<pb::broker_client::BrokerClient<tonic::transport::Channel>, ClientError> {
        self.inner.channels.broker(address)
    }

    /// One call to the master of `queue`'s broker; a failure marks the route for refresh (the broker may have
    /// moved).
    async fn call<T, F, Fut>(
        &self,
        op: &'static str,
        queue: &MessageQueue,
        timeout: Duration,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: FnOnce(pb::broker_client::BrokerClient<tonic::transport::Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let route = self.inner.routes.get(op, &queue.topic).await?;
        let Some(address) = route.masters.get(&queue.broker_name) else {
            return Err(ClientError::NoQueue { op, topic: queue.topic.clone(), what: "readable" });
        };
        let client = self.inner.channels.broker(address)?;
        let result = match tokio::time::timeout(timeout, call(client)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(ClientError::broker_status(op, address, &status)),
            Err(_) => Err(ClientError::Timeout { op, broker: address.clone(), after: timeout }),
        };
        if result.as_ref().is_err_and(ClientError::is_retryable) {
            self.inner.routes.invalidate(&queue.topic);
        }
        result
    }
}
