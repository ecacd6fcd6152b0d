//! In-process fakes for the SDK's unit tests: a broker member (master or slave) serving one queue of numbered
//! messages and recording what it was asked, and a NameServer answering QueryRoute with a fixed route. Both are
//! real gRPC servers on 127.0.0.1 port 0, so the SDK's channels, timeouts and error mapping are exercised.
//!
//! They route by method name instead of implementing the generated service traits: every method they do not
//! answer is UNIMPLEMENTED, so the fakes keep compiling when the broker or NameServer API grows.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use comet_proto::comet::v1 as pb;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tonic::codegen::{Body, BoxFuture, Context, Poll, Service, StdError, http};
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

type HttpResponse = http::Response<tonic::body::Body>;

/// Answers one unary call: decodes `Req`, runs `handle`, encodes its answer or status.
fn unary<B, Req, Resp, Fut>(
    request: http::Request<B>,
    handle: impl FnOnce(Req) -> Fut + Send + 'static,
) -> BoxFuture<HttpResponse, Infallible>
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
{
    Box::pin(async move {
        let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<Resp, Req>::new());
        Ok(grpc.unary(Handler { handle: Some(handle), request: PhantomData }, request).await)
    })
}

fn unimplemented(method: &str) -> BoxFuture<HttpResponse, Infallible> {
    let status = Status::unimplemented(format!("fake: {method}"));
    Box::pin(async move { Ok(status.into_http()) })
}

/// The last path segment of a gRPC request (`/comet.v1.Broker/PullMessage` -> `PullMessage`).
fn method<B>(request: &http::Request<B>) -> String {
    request.uri().path().rsplit('/').next().unwrap_or_default().to_owned()
}

/// A one-shot unary handler as the service [`tonic::server::Grpc::unary`] calls.
struct Handler<F, Req> {
    handle: Option<F>,
    request: PhantomData<fn(Req)>,
}

impl<F, Req, Resp, Fut> Service<Request<Req>> for Handler<F, Req>
where
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
{
    type Response = Response<Resp>;
    type Error = Status;
    type Future = BoxFuture<Response<Resp>, Status>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Req>) -> Self::Future {
        match self.handle.take() {
            Some(handle) => {
                let answer = handle(request.into_inner());
                Box::pin(async move { answer.await.map(Response::new) })
            }
            None => Box::pin(async { Err(Status::internal("fake handler called twice")) }),
        }
    }
}

/// Serves `service` on 127.0.0.1 port 0: its address and the server task.
fn serve<S>(service: S) -> (String, JoinHandle<()>)
where
    S: Service<http::Request<tonic::body::Body>, Response = HttpResponse, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let incoming = TcpIncoming::bind(([127, 0, 0, 1], 0).into()).expect("bind a fake server");
    let address = incoming.local_addr().expect("local address").to_string();
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
    });
    (address, task)
}

/// What a fake broker member serves and what it saw.
#[derive(Debug, Default)]
pub(crate) struct BrokerState {
    /// Every call is answered UNAVAILABLE (a broker that is down, as the SDK sees it).
    pub(crate) unavailable: bool,
    /// Every call is answered NOT_FOUND for the topic (a slave that has not copied the topic from its master yet).
    pub(crate) unknown_topic: bool,
    /// The queue's smallest stored offset.
    pub(crate) min: u64,
    /// The queue's end: messages `min..max` exist (body `m<offset>`).
    pub(crate) max: u64,
    /// SendMessage calls stored (each appends its messages at `max`; a duplicate stores nothing).
    pub(crate) sends: usize,
    /// SendMessage requests received (stored, duplicate or refused).
    pub(crate) send_requests: usize,
    /// How the next SendMessage requests are answered, in order (then: normally).
    pub(crate) send_script: VecDeque<SendAnswer>,
    /// Results of the message ids stored (a send of a known id is answered `duplicate` with its first result).
    pub(crate) stored_ids: HashMap<String, pb::SendResult>,
    /// LockQueues: the lease answered (0 = 60 s), and the (time, queue ids) of every call.
    pub(crate) lease_millis: u64,
    pub(crate) lock_calls: Vec<(std::time::Instant, Vec<u32>)>,
    /// UnlockQueues calls: (time, queue ids).
    pub(crate) unlocks: Vec<(std::time::Instant, Vec<u32>)>,
    /// UnregisterClient calls.
    pub(crate) unregisters: usize,
    /// Offsets pulls asked for, in order.
    pub(crate) pulls: Vec<u64>,
    /// Offsets committed, in order.
    pub(crate) commits: Vec<u64>,
    /// The committed offset QueryConsumerOffset answers.
    pub(crate) committed: Option<u64>,
    /// Client ids of heartbeats, in order.
    pub(crate) heartbeats: Vec<String>,
    /// GetConsumerList calls answered.
    pub(crate) consumer_lists: usize,
    /// GetQueueOffsets calls answered.
    pub(crate) offset_lookups: usize,
}

/// A scripted answer of the fake broker to one SendMessage request.
#[derive(Debug, Clone)]
pub(crate) enum SendAnswer {
    /// Refused with this status before anything is stored.
    Refuse(tonic::Code, &'static str),
    /// Stored (or found a duplicate), then answered with this status (as a failed sync-replication wait).
    StoreThenFail(tonic::Code, &'static str),
    /// Stored (or found a duplicate), answered only after this delay (the caller may have given up by then).
    StoreSlowly(Duration),
}

/// A fake broker member on 127.0.0.1; stopped on drop.
pub(crate) struct FakeBroker {
    /// `127.0.0.1:port`.
    pub(crate) address: String,
    /// Shared with the server.
    pub(crate) state: Arc<Mutex<BrokerState>>,
    task: JoinHandle<()>,
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeBroker {
    /// Serves messages `0..max`.
    pub(crate) fn start(max: u64) -> Self {
        let state = Arc::new(Mutex::new(BrokerState { max, ..Default::default() }));
        let (address, task) = serve(BrokerService { state: Arc::clone(&state) });
        Self { address, state, task }
    }

    /// Turns "down" (every call answered UNAVAILABLE) on or off.
    pub(crate) fn set_unavailable(&self, unavailable: bool) {
        self.state.lock().unavailable = unavailable;
    }
}

#[derive(Clone)]
struct BrokerService {
    state: Arc<Mutex<BrokerState>>,
}

impl NamedService for BrokerService {
    const NAME: &'static str = "comet.v1.Broker";
}

impl<B> Service<http::Request<B>> for BrokerService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<HttpResponse, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let state = Arc::clone(&self.state);
        let method = method(&request);
        if state.lock().unavailable {
            let status = Status::unavailable("fake broker is down");
            return Box::pin(async move { Ok(status.into_http()) });
        }
        if state.lock().unknown_topic {
            let status = Status::not_found("topic \"t\" does not exist on this broker");
            return Box::pin(async move { Ok(status.into_http()) });
        }
        match method.as_str() {
            "SendMessage" => unary(request, move |r| scripted_send(state, r)),
            "PullMessage" => unary(request, move |r| pull(state, r)),
            "QueryConsumerOffset" => unary(request, move |_: pb::QueryConsumerOffsetRequest| async move {
                let committed = state.lock().committed;
                Ok(pb::QueryConsumerOffsetResponse { found: committed.is_some(), offset: committed.unwrap_or(0) })
            }),
            "CommitConsumerOffset" => unary(request, move |r: pb::CommitConsumerOffsetRequest| async move {
                let mut state = state.lock();
                state.commits.push(r.offset);
                state.committed = Some(r.offset);
                Ok(pb::CommitConsumerOffsetResponse::default())
            }),
            "Heartbeat" => unary(request, move |r: pb::ClientHeartbeatRequest| async move {
                state.lock().heartbeats.push(r.client_id);
                Ok(pb::ClientHeartbeatResponse::default())
            }),
            "UnregisterClient" => unary(request, move |_: pb::UnregisterClientRequest| async move {
                state.lock().unregisters += 1;
                Ok(pb::UnregisterClientResponse::default())
            }),
            "LockQueues" => unary(request, move |r: pb::LockQueuesRequest| async move {
                let mut state = state.lock();
                state.lock_calls.push((std::time::Instant::now(), r.queue_ids.clone()));
                Ok(pb::LockQueuesResponse { locked_queue_ids: r.queue_ids, lease_millis: state.lease_millis })
            }),
            "UnlockQueues" => unary(request, move |r: pb::UnlockQueuesRequest| async move {
                state.lock().unlocks.push((std::time::Instant::now(), r.queue_ids));
                Ok(pb::UnlockQueuesResponse::default())
            }),
            "GetConsumerList" => unary(request, move |_: pb::GetConsumerListRequest| async move {
                let mut state = state.lock();
                state.consumer_lists += 1;
                let mut client_ids = state.heartbeats.clone();
                client_ids.sort();
                client_ids.dedup();
                Ok(pb::GetConsumerListResponse { client_ids, ..Default::default() })
            }),
            "GetQueueOffsets" => unary(request, move |_: pb::GetQueueOffsetsRequest| async move {
                let mut state = state.lock();
                state.offset_lookups += 1;
                Ok(pb::GetQueueOffsetsResponse { min_offset: state.min, max_offset: state.max })
            }),
            other => unimplemented(other),
        }
    }
}

/// Answers a SendMessage as the next scripted answer says (normally: [`send`]).
async fn scripted_send(
    state: Arc<Mutex<BrokerState>>,
    r: pb::SendMessageRequest,
) -> Result<pb::SendMessageResponse, Status> {
    let answer = {
        let mut state = state.lock();
        state.send_requests += 1;
        state.send_script.pop_front()
    };
    match answer {
        None => Ok(send(&state, r)),
        Some(SendAnswer::Refuse(code, message)) => Err(Status::new(code, message)),
        Some(SendAnswer::StoreThenFail(code, message)) => {
            send(&state, r);
            Err(Status::new(code, message))
        }
        Some(SendAnswer::StoreSlowly(delay)) => {
            let response = send(&state, r);
            tokio::time::sleep(delay).await;
            Ok(response)
        }
    }
}

/// Stores a send's messages at the queue's end; a message id stored before is answered with its first result
/// and `duplicate` (the broker's idempotent send), without storing it again.
fn send(state: &Mutex<BrokerState>, r: pb::SendMessageRequest) -> pb::SendMessageResponse {
    let mut state = state.lock();
    let mut stored_any = false;
    let results = r
        .messages
        .iter()
        .map(|m| {
            if let Some(first) = state.stored_ids.get(&m.message_id) {
                return pb::SendResult { duplicate: true, ..first.clone() };
            }
            stored_any = true;
            state.max += 1;
            let result = pb::SendResult {
                message_id: if m.message_id.is_empty() {
                    format!("id-{}", state.max - 1)
                } else {
                    m.message_id.clone()
                },
                queue_id: r.queue_id.unwrap_or(0),
                queue_offset: state.max - 1,
                ..Default::default()
            };
            if !m.message_id.is_empty() {
                state.stored_ids.insert(m.message_id.clone(), result.clone());
            }
            result
        })
        .collect();
    if stored_any {
        state.sends += 1;
    }
    pb::SendMessageResponse { results }
}

/// A pull as the broker answers it: corrections outside `min..=max`, a short wait at the end, else messages.
async fn pull(state: Arc<Mutex<BrokerState>>, r: pb::PullMessageRequest) -> Result<pb::PullMessageResponse, Status> {
    let (min, max) = {
        let mut state = state.lock();
        state.pulls.push(r.offset);
        (state.min, state.max)
    };
    let answer = |status: pb::PullStatus, next_offset, messages| pb::PullMessageResponse {
        status: status.into(),
        messages,
        next_offset,
        min_offset: min,
        max_offset: max,
    };
    Ok(if r.offset < min {
        answer(pb::PullStatus::OffsetMoved, min, Vec::new())
    } else if r.offset > max {
        answer(pb::PullStatus::OffsetOverflow, max, Vec::new())
    } else if r.offset == max {
        // A short long-poll, so callers' loops do not spin.
        tokio::time::sleep(Duration::from_millis(u64::from(r.max_wait_millis).min(20))).await;
        answer(pb::PullStatus::NoNewMessage, max, Vec::new())
    } else {
        let end = max.min(r.offset + u64::from(r.max_count.max(1)));
        let messages = (r.offset..end)
            .map(|offset| pb::StoredMessage {
                topic: r.topic.clone(),
                queue_id: r.queue_id,
                queue_offset: offset,
                body: format!("m{offset}").into_bytes().into(),
                ..Default::default()
            })
            .collect();
        answer(pb::PullStatus::Found, end, messages)
    })
}

/// A fake NameServer answering QueryRoute for every user topic with one broker group; stopped on drop.
pub(crate) struct FakeNameServer {
    /// `127.0.0.1:port`.
    pub(crate) address: String,
    task: JoinHandle<()>,
}

impl Drop for FakeNameServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeNameServer {
    /// Routes every user topic to one queue (id 0, read-write) of broker group `broker_name`, whose members are
    /// `members` (broker id -> address).
    pub(crate) fn start(broker_name: &str, members: &[(u64, &str)]) -> Self {
        Self::start_groups(&[(broker_name, members)])
    }

    /// As [`FakeNameServer::start`], with one queue in each of several broker groups.
    pub(crate) fn start_groups(groups: &[(&str, &[(u64, &str)])]) -> Self {
        let brokers = groups
            .iter()
            .map(|(broker_name, members)| pb::BrokerData {
                cluster_name: "c".into(),
                broker_name: (*broker_name).into(),
                addresses: members.iter().map(|(id, a)| (*id, (*a).to_owned())).collect::<HashMap<_, _>>(),
            })
            .collect();
        let queues = groups
            .iter()
            .map(|(broker_name, _)| pb::QueueData {
                broker_name: (*broker_name).into(),
                read_queue_nums: 1,
                write_queue_nums: 1,
                perm: 6,
                message_type: 0,
            })
            .collect();
        let (address, task) = serve(NameServerService { route: Arc::new((queues, brokers)) });
        Self { address, task }
    }
}

#[derive(Clone)]
struct NameServerService {
    route: Arc<(Vec<pb::QueueData>, Vec<pb::BrokerData>)>,
}

impl NamedService for NameServerService {
    const NAME: &'static str = "comet.v1.NameServer";
}

impl<B> Service<http::Request<B>> for NameServerService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<HttpResponse, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let route = Arc::clone(&self.route);
        match method(&request).as_str() {
            "QueryRoute" => unary(request, move |r: pb::QueryRouteRequest| async move {
                // The fake broker serves user topics only: a group's retry topic has no route, as on a real
                // NameServer before the broker created it.
                if comet_model::system::is_system_topic(&r.topic) {
                    return Err(tonic::Status::not_found(format!("no route for {}", r.topic)));
                }
                Ok(pb::QueryRouteResponse { topic: r.topic, queues: route.0.clone(), brokers: route.1.clone() })
            }),
            other => unimplemented(other),
        }
    }
}
