//! NameServer client shared by the broker (registration, heartbeats, route lookups) and the SDK/CLI (routes,
//! cluster info, admin).
//!
//! Behaves like RocketMQ's client: it talks to ONE NameServer at a time, stays there while calls succeed, and on
//! a transport failure or timeout moves to the next address (round robin) and retries, up to `retries` extra
//! attempts. Refusals (bad input, not found) are answers, not failures: they are returned at once. Broker
//! registration goes to every address (`*_all`), because memory-mode NameServers do not share state.
//!
//! This crate depends only on comet-proto (not on the NameServer or the SDK), so the broker and the SDK can both
//! use it; its API speaks the proto types.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use comet_proto::comet::v1 as pb;
use comet_proto::comet::v1::name_server_client::NameServerClient as Grpc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Response, Status};

/// Why a NameServer call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// An address in the list cannot be turned into an endpoint.
    #[error("invalid NameServer address {address:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// Why.
        reason: String,
    },
    /// The address list is empty.
    #[error("no NameServer addresses configured")]
    NoAddresses,
    /// The NameServer has no route for the topic (gRPC NOT_FOUND).
    #[error("{op}: {message}")]
    NotFound {
        /// The call.
        op: &'static str,
        /// The server's message.
        message: String,
    },
    /// The NameServer refused the request (bad input, conflict); retrying elsewhere would not help.
    #[error("{op} refused ({code:?}): {message}")]
    Rejected {
        /// The call.
        op: &'static str,
        /// gRPC status code.
        code: Code,
        /// The server's message.
        message: String,
    },
    /// No NameServer answered within the attempts allowed.
    #[error("{op} failed on {attempts} attempt(s); last error: {last}")]
    Unavailable {
        /// The call.
        op: &'static str,
        /// How many attempts were made.
        attempts: usize,
        /// The last failure.
        last: String,
    },
}

impl ClientError {
    /// The gRPC code behind the error, for callers that branch on it.
    pub fn code(&self) -> Code {
        match self {
            ClientError::InvalidAddress { .. } | ClientError::NoAddresses => Code::InvalidArgument,
            ClientError::NotFound { .. } => Code::NotFound,
            ClientError::Rejected { code, .. } => *code,
            ClientError::Unavailable { .. } => Code::Unavailable,
        }
    }
}

/// Client settings. Defaults follow RocketMQ where it has one (register timeout 24 s).
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// NameServer addresses, `host:port` or `http://host:port`.
    pub addresses: Vec<String>,
    /// Timeout to open a connection.
    pub connect_timeout: Duration,
    /// Timeout of one call (except registration).
    pub request_timeout: Duration,
    /// Timeout of one full registration (100 000 topics take a while).
    pub register_timeout: Duration,
    /// Extra attempts after the first failure, each on the next address.
    pub retries: usize,
    /// Topics per RegisterBroker stream message; keeps each message far below the 4 MiB gRPC default.
    pub topics_per_message: usize,
}

impl ClientConfig {
    /// Defaults for an address list: 3 s connect, 3 s calls, 24 s registration, one retry per extra address.
    pub fn new(addresses: Vec<String>) -> Self {
        let retries = addresses.len().max(2) - 1;
        Self {
            addresses,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(3),
            register_timeout: Duration::from_secs(24),
            retries,
            topics_per_message: 2_000,
        }
    }
}

/// Result of a call made to every NameServer.
pub type PerAddress<T> = Vec<(String, Result<T, ClientError>)>;

/// A sticky, failing-over NameServer client. Cheap to clone; clones share the current address.
#[derive(Clone, Debug)]
pub struct NameServerClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoints: Vec<(String, Channel)>,
    current: AtomicUsize,
    config: ClientConfig,
}

/// Codes that mean "this NameServer did not answer": try the next one.
fn is_failover(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled | Code::Aborted)
}

impl NameServerClient {
    /// Prepares lazy connections to every address (nothing is dialled until the first call). Must be called
    /// inside a tokio runtime: each connection's driver is spawned on it.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        if config.addresses.is_empty() {
            return Err(ClientError::NoAddresses);
        }
        let mut endpoints = Vec::with_capacity(config.addresses.len());
        for address in &config.addresses {
            let uri = if address.contains("://") { address.clone() } else { format!("http://{address}") };
            let endpoint = Endpoint::from_shared(uri)
                .map_err(|e| ClientError::InvalidAddress { address: address.clone(), reason: e.to_string() })?
                .connect_timeout(config.connect_timeout)
                .tcp_nodelay(true);
            endpoints.push((address.clone(), endpoint.connect_lazy()));
        }
        Ok(Self { inner: Arc::new(Inner { endpoints, current: AtomicUsize::new(0), config }) })
    }

    /// Shorthand for [`NameServerClient::new`] with default settings.
    pub fn connect(addresses: &[&str]) -> Result<Self, ClientError> {
        Self::new(ClientConfig::new(addresses.iter().map(|a| (*a).to_owned()).collect()))
    }

    /// The address calls currently go to.
    pub fn current_address(&self) -> &str {
        let i = self.inner.current.load(Ordering::Relaxed) % self.inner.endpoints.len();
        &self.inner.endpoints[i].0
    }

    fn grpc(channel: &Channel) -> Grpc<Channel> {
        Grpc::new(channel.clone()).max_decoding_message_size(64 * 1024 * 1024)
    }

    /// Runs `call` on the current NameServer; on a failover code or timeout moves to the next and retries.
    async fn sticky<T, F, Fut>(&self, op: &'static str, timeout: Duration, call: F) -> Result<T, ClientError>
    where
        F: Fn(Grpc<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let n = self.inner.endpoints.len();
        let attempts = self.inner.config.retries + 1;
        let mut last = String::new();
        for attempt in 0..attempts {
            let index = self.inner.current.load(Ordering::Relaxed) % n;
            let (address, channel) = &self.inner.endpoints[index];
            match tokio::time::timeout(timeout, call(Self::grpc(channel))).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) if !is_failover(status.code()) => return Err(refusal(op, status)),
                Ok(Err(status)) => last = format!("{address}: {:?} {}", status.code(), status.message()),
                Err(_) => last = format!("{address}: no answer within {timeout:?}"),
            }
            tracing::debug!(op, attempt, error = %last, "NameServer call failed; failing over");
            // Only the first caller to see this address fail moves the shared cursor.
            let _ = self.inner.current.compare_exchange(index, (index + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
            if (attempt + 1) % n == 0 && attempt + 1 < attempts {
                // Every address failed once: pause before the next round instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(ClientError::Unavailable { op, attempts, last })
    }

    /// Runs `call` on every NameServer concurrently, without failover.
    async fn every<T, F, Fut>(&self, op: &'static str, timeout: Duration, call: F) -> PerAddress<T>
    where
        F: Fn(Grpc<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let calls = self.inner.endpoints.iter().map(|(address, channel)| {
            let fut = call(Self::grpc(channel));
            async move {
                let result = match tokio::time::timeout(timeout, fut).await {
                    Ok(Ok(response)) => Ok(response.into_inner()),
                    Ok(Err(status)) if !is_failover(status.code()) => Err(refusal(op, status)),
                    Ok(Err(status)) => Err(ClientError::Unavailable {
                        op,
                        attempts: 1,
                        last: format!("{address}: {:?} {}", status.code(), status.message()),
                    }),
                    Err(_) => Err(ClientError::Unavailable {
                        op,
                        attempts: 1,
                        last: format!("{address}: no answer within {timeout:?}"),
                    }),
                };
                (address.clone(), result)
            }
        });
        futures_util::future::join_all(calls).await
    }

    /// Full registration on the current NameServer (with failover), streamed in batches of topics.
    pub async fn register_broker(
        &self,
        header: pb::RegisterBrokerHeader,
        topics: Vec<pb::TopicConfig>,
    ) -> Result<pb::RegisterBrokerResponse, ClientError> {
        let messages = Arc::new(self.registration_messages(header, topics));
        self.sticky("RegisterBroker", self.inner.config.register_timeout, |mut c| {
            let messages = Arc::clone(&messages);
            async move { c.register_broker(stream_of(messages)).await }
        })
        .await
    }

    /// Full registration on every NameServer at once (what a broker does every 30 s in memory mode).
    pub async fn register_broker_all(
        &self,
        header: pb::RegisterBrokerHeader,
        topics: Vec<pb::TopicConfig>,
    ) -> PerAddress<pb::RegisterBrokerResponse> {
        let messages = Arc::new(self.registration_messages(header, topics));
        self.every("RegisterBroker", self.inner.config.register_timeout, |mut c| {
            let messages = Arc::clone(&messages);
            async move { c.register_broker(stream_of(messages)).await }
        })
        .await
    }

    fn registration_messages(
        &self,
        mut header: pb::RegisterBrokerHeader,
        topics: Vec<pb::TopicConfig>,
    ) -> Vec<pb::RegisterBrokerRequest> {
        use pb::register_broker_request::Part;
        header.topic_count = u32::try_from(topics.len()).unwrap_or(u32::MAX);
        let per = self.inner.config.topics_per_message.max(1);
        let mut messages = Vec::with_capacity(1 + topics.len() / per + 1);
        messages.push(pb::RegisterBrokerRequest { part: Some(Part::Header(header)) });
        let mut topics = topics.into_iter().peekable();
        while topics.peek().is_some() {
            let batch: Vec<pb::TopicConfig> = topics.by_ref().take(per).collect();
            messages
                .push(pb::RegisterBrokerRequest { part: Some(Part::Topics(pb::TopicConfigBatch { topics: batch })) });
        }
        messages
    }

    /// Heartbeat to the current NameServer. Returns `true` if it asks for a full registration.
    pub async fn heartbeat(&self, broker: pb::BrokerIdentity, version: pb::DataVersion) -> Result<bool, ClientError> {
        let request = pb::HeartbeatRequest { broker: Some(broker), data_version: Some(version) };
        let out = self
            .sticky("Heartbeat", self.inner.config.request_timeout, |mut c| {
                let request = request.clone();
                async move { c.heartbeat(request).await }
            })
            .await?;
        Ok(out.registration_required)
    }

    /// Heartbeat to every NameServer; each answer says whether that one needs a full registration.
    pub async fn heartbeat_all(&self, broker: pb::BrokerIdentity, version: pb::DataVersion) -> PerAddress<bool> {
        let request = pb::HeartbeatRequest { broker: Some(broker), data_version: Some(version) };
        self.every("Heartbeat", self.inner.config.request_timeout, |mut c| {
            let request = request.clone();
            async move { c.heartbeat(request).await }
        })
        .await
        .into_iter()
        .map(|(a, r)| (a, r.map(|h| h.registration_required)))
        .collect()
    }

    /// Unregisters from every NameServer (clean broker shutdown).
    pub async fn unregister_all(&self, broker: pb::BrokerIdentity) -> PerAddress<()> {
        let request = pb::UnregisterBrokerRequest { broker: Some(broker) };
        self.every("UnregisterBroker", self.inner.config.request_timeout, |mut c| {
            let request = request.clone();
            async move { c.unregister_broker(request).await }
        })
        .await
        .into_iter()
        .map(|(a, r)| (a, r.map(|_| ())))
        .collect()
    }

    /// Unregisters from the current NameServer.
    pub async fn unregister_broker(&self, broker: pb::BrokerIdentity) -> Result<(), ClientError> {
        let request = pb::UnregisterBrokerRequest { broker: Some(broker) };
        self.sticky("UnregisterBroker", self.inner.config.request_timeout, |mut c| {
            let request = request.clone();
            async move { c.unregister_broker(request).await }
        })
        .await
        .map(|_| ())
    }

    /// A topic's route; [`ClientError::NotFound`] if no live broker hosts it.
    pub async fn query_route(&self, topic: &str) -> Result<pb::QueryRouteResponse, ClientError> {
        let request = pb::QueryRouteRequest { topic: topic.to_owned() };
        self.sticky("QueryRoute", self.inner.config.request_timeout, |mut c| {
            let request = request.clone();
            async move { c.query_route(request).await }
        })
        .await
    }

    /// Clusters, brokers, registry backend and whether it is degraded.
    pub async fn cluster_info(&self) -> Result<pb::GetClusterInfoResponse, ClientError> {
        self.sticky("GetClusterInfo", self.inner.config.request_timeout, |mut c| async move {
            c.get_cluster_info(pb::GetClusterInfoRequest {}).await
        })
        .await
    }

    /// Routed topic names (of one cluster if given).
    pub async fn list_topics(&self, cluster: Option<&str>) -> Result<Vec<String>, ClientError> {
        let request = pb::ListTopicsRequest { cluster_name: cluster.unwrap_or_default().to_owned() };
        let out = self
            .sticky("ListTopics", self.inner.config.request_timeout, |mut c| {
                let request = request.clone();
                async move { c.list_topics(request).await }
            })
            .await?;
        Ok(out.topics)
    }

    /// Admin: forgets a topic's route; returns whether one existed.
    pub async fn delete_topic_route(&self, topic: &str, cluster: Option<&str>) -> Result<bool, ClientError> {
        let request = pb::DeleteTopicRouteRequest {
            topic: topic.to_owned(),
            cluster_name: cluster.unwrap_or_default().to_owned(),
        };
        let out = self
            .sticky("DeleteTopicRoute", self.inner.config.request_timeout, |mut c| {
                let request = request.clone();
                async move { c.delete_topic_route(request).await }
            })
            .await?;
        Ok(out.deleted)
    }

    /// Sets a KV config value.
    pub async fn put_kv(&self, namespace: &str, key: &str, value: &str) -> Result<(), ClientError> {
        let request =
            pb::PutKvConfigRequest { namespace: namespace.to_owned(), key: key.to_owned(), value: value.to_owned() };
        self.sticky("PutKvConfig", self.inner.config.request_timeout, |mut c| {
            let request = request.clone();
            async move { c.put_kv_config(request).await }
        })
        .await
        .map(|_| ())
    }

    /// A KV config value, `None` if absent.
    pub async fn get_kv(&self, namespace: &str, key: &str) -> Result<Option<String>, ClientError> {
        let request = pb::GetKvConfigRequest { namespace: namespace.to_owned(), key: key.to_owned() };
        let out = self
            .sticky("GetKvConfig", self.inner.config.request_timeout, |mut c| {
                let request = request.clone();
                async move { c.get_kv_config(request).await }
            })
            .await;
        match out {
            Ok(v) => Ok(Some(v.value)),
            Err(ClientError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes a KV config value; returns whether it existed.
    pub async fn delete_kv(&self, namespace: &str, key: &str) -> Result<bool, ClientError> {
        let request = pb::DeleteKvConfigRequest { namespace: namespace.to_owned(), key: key.to_owned() };
        let out = self
            .sticky("DeleteKvConfig", self.inner.config.request_timeout, |mut c| {
                let request = request.clone();
                async move { c.delete_kv_config(request).await }
            })
            .await?;
        Ok(out.deleted)
    }

    /// Every entry of a KV namespace.
    pub async fn list_kv(&self, namespace: &str) -> Result<std::collections::HashMap<String, String>, ClientError> {
        let request = pb::ListKvConfigRequest { namespace: namespace.to_owned() };
        let out = self
            .sticky("ListKvConfig", self.inner.config.request_timeout, |mut c| {
                let request = request.clone();
                async move { c.list_kv_config(request).await }
            })
            .await?;
        Ok(out.entries)
    }
}

fn refusal(op: &'static str, status: Status) -> ClientError {
    if status.code() == Code::NotFound {
        ClientError::NotFound { op, message: status.message().to_owned() }
    } else {
        ClientError::Rejected { op, code: status.code(), message: status.message().to_owned() }
    }
}

/// The registration messages as a request stream (cloned per attempt: a retry re-sends everything).
fn stream_of(
    messages: Arc<Vec<pb::RegisterBrokerRequest>>,
) -> impl tokio_stream::Stream<Item = pb::RegisterBrokerRequest> + Send + 'static {
    let len = messages.len();
    tokio_stream::iter((0..len).map(move |i| messages[i].clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::register_broker_request::Part;

    fn topics(n: usize) -> Vec<pb::TopicConfig> {
        (0..n).map(|i| pb::TopicConfig { name: format!("t{i}"), ..Default::default() }).collect()
    }

    #[tokio::test]
    async fn registration_is_a_header_then_bounded_batches() {
        let mut config = ClientConfig::new(vec!["127.0.0.1:9876".into()]);
        config.topics_per_message = 3;
        let client = NameServerClient::new(config).unwrap();
        let messages = client.registration_messages(pb::RegisterBrokerHeader::default(), topics(7));
        let sizes: Vec<usize> = messages
            .iter()
            .skip(1)
            .map(|m| match &m.part {
                Some(Part::Topics(b)) => b.topics.len(),
                other => panic!("expected a batch, got {other:?}"),
            })
            .collect();
        assert_eq!(sizes, [3, 3, 1]);
        match &messages[0].part {
            Some(Part::Header(h)) => assert_eq!(h.topic_count, 7),
            other => panic!("expected the header first, got {other:?}"),
        }
        let empty = client.registration_messages(pb::RegisterBrokerHeader::default(), Vec::new());
        assert_eq!(empty.len(), 1, "no topics: the header alone");
    }

    #[tokio::test]
    async fn bad_address_lists_are_refused_up_front() {
        assert!(matches!(NameServerClient::new(ClientConfig::new(Vec::new())), Err(ClientError::NoAddresses)));
        assert!(matches!(NameServerClient::connect(&["not a uri"]), Err(ClientError::InvalidAddress { .. })));
    }

    #[tokio::test]
    async fn unreachable_nameservers_fail_over_then_give_up_as_unavailable() {
        // Port 1 on loopback refuses connections at once: every attempt fails fast.
        let mut config = ClientConfig::new(vec!["127.0.0.1:1".into(), "127.0.0.2:1".into()]);
        config.connect_timeout = Duration::from_millis(300);
        config.retries = 3;
        let client = NameServerClient::new(config).unwrap();
        let err = client.query_route("t").await.unwrap_err();
        match &err {
            ClientError::Unavailable { attempts, .. } => assert_eq!(*attempts, 4),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert_eq!(err.code(), Code::Unavailable);
        // Four attempts over two addresses: the cursor went round twice and is back at the first one.
        assert_eq!(client.current_address(), "127.0.0.1:1");
    }
}
