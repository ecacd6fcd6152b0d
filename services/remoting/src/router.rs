//! Request dispatch: code → handler, each handler with its own bound on requests in flight (the role RocketMQ's
//! per-processor executor and its bounded queue play). A request past the bound is answered
//! [`code::SYSTEM_BUSY`] at once instead of queueing without limit; a request with no handler and no default is
//! answered [`code::REQUEST_CODE_NOT_SUPPORTED`]. Codes are documented in `docs/response-codes.md`.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;

use tokio::sync::{Notify, Semaphore};

use crate::connection::Connection;
use crate::frame::Command;

/// Response codes the channel itself answers with (RocketMQ's `RemotingSysResponseCode` numbers, plus GO_AWAY).
pub mod code {
    /// The request succeeded.
    pub const SUCCESS: i32 = 0;
    /// The handler failed (panicked, or its response could not be encoded); the remark says why.
    pub const SYSTEM_ERROR: i32 = 1;
    /// The handler of this code has its maximum of requests in flight; retry later or elsewhere.
    pub const SYSTEM_BUSY: i32 = 2;
    /// No handler for this code and no default handler.
    pub const REQUEST_CODE_NOT_SUPPORTED: i32 = 3;
    /// The server is shutting down and takes no new requests; reconnect elsewhere.
    pub const GO_AWAY: i32 = 1500;
}

/// A boxed, sendable future (what a [`Handler`] returns).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// One incoming request and the connection it came on (which the handler may use to call the peer back).
#[derive(Debug)]
pub struct Request {
    /// The request; its body is a slice of the read buffer.
    pub command: Command,
    /// The connection it arrived on.
    pub connection: Connection,
}

/// Answers requests of one or more codes. The returned command is the response (code, remark, ext fields, body);
/// the channel fills in the opaque and the response flag. For oneway requests the result is dropped.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request.
    fn call(&self, request: Request) -> BoxFuture<Command>;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Command> + Send + 'static,
{
    fn call(&self, request: Request) -> BoxFuture<Command> {
        Box::pin(self(request))
    }
}

struct Route {
    handler: Arc<dyn Handler>,
    permits: Arc<Semaphore>,
    limit: usize,
}

/// The handler table of one side of the channel (server, or a client answering its server's calls).
pub struct Router {
    routes: HashMap<i32, Route>,
    default: Option<Route>,
    draining: AtomicBool,
    tracker: Tracker,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut codes: Vec<_> = self.routes.keys().collect();
        codes.sort();
        f.debug_struct("Router").field("codes", &codes).field("default", &self.default.is_some()).finish()
    }
}

impl Default for Router {
    fn default() -> Self {
        Router::new()
    }
}

impl Router {
    /// A table without handlers: every request is answered REQUEST_CODE_NOT_SUPPORTED.
    pub fn new() -> Router {
        Router { routes: HashMap::new(), default: None, draining: AtomicBool::new(false), tracker: Tracker::default() }
    }

    /// Routes `code` to `handler`, allowing at most `max_in_flight` of its requests at once (at least 1).
    /// The handler's first poll runs on the connection's read task: one that does heavy work before its first
    /// wait (a large decode, read or encode) should `tokio::task::yield_now()` first, so the requests behind it
    /// on the connection are not held up (the broker's data path does, `edge/remoting.rs`).
    pub fn route(mut self, code: i32, max_in_flight: usize, handler: impl Handler) -> Router {
        self.routes.insert(code, Route::new(max_in_flight, handler));
        self
    }

    /// Handles every code without its own route.
    pub fn default_route(mut self, max_in_flight: usize, handler: impl Handler) -> Router {
        self.default = Some(Route::new(max_in_flight, handler));
        self
    }

    // Hot path: runs on the connection's read task: one map lookup, one try-acquire, one poll of the handler;
    // a handler that has to wait continues on its own task, so the read task never waits for one.
    /// Starts handling `request` (a request frame that arrived on `conn`).
    pub(crate) async fn dispatch(&self, conn: &Connection, request: Command) {
        let opaque = request.opaque;
        let oneway = request.is_oneway();
        let answer = |code, remark: String| async move {
            if !oneway {
                conn.respond(opaque, Command::response(code, Some(remark))).await;
            }
        };
        if self.draining.load(Ordering::Acquire) {
            return answer(code::GO_AWAY, "server is shutting down, reconnect elsewhere".to_owned()).await;
        }
        let Some(route) = self.routes.get(&request.code).or(self.default.as_ref()) else {
            return answer(code::REQUEST_CODE_NOT_SUPPORTED, format!("request code {} not supported", request.code))
                .await;
        };
        let Ok(permit) = route.permits.clone().try_acquire_owned() else {
            tracing::debug!(peer = conn.peer(), code = request.code, "handler busy");
            let remark = format!("[OVERLOAD] system busy: {} requests of code {} in flight", route.limit, request.code);
            return answer(code::SYSTEM_BUSY, remark).await;
        };
        let token = self.tracker.token();
        let mut response = route.handler.call(Request { command: request, connection: conn.clone() });
        // Poll once right here: a handler that answers without waiting (most do) costs no task spawn and no
        // extra wake-up, and its response joins the same write batch as its neighbours. A panic in that poll must
        // not take the read task (and with it the connection) down, hence catch_unwind.
        let first = std::future::poll_fn(|cx| {
            Poll::Ready(std::panic::catch_unwind(AssertUnwindSafe(|| response.as_mut().poll(cx))))
        })
        .await;
        match first {
            Ok(Poll::Ready(answer)) => {
                if !oneway {
                    conn.respond(opaque, answer).await;
                }
                drop((permit, token));
            }
            Err(_) => {
                tracing::error!(peer = conn.peer(), opaque, "request handler panicked");
                if !oneway {
                    conn.respond(opaque, Command::response(code::SYSTEM_ERROR, Some("handler panicked".to_owned())))
                        .await;
                }
                drop((permit, token));
            }
            Ok(Poll::Pending) => {
                let conn = conn.clone();
                tokio::spawn(async move {
                    let mut guard = AnswerGuard { conn: Some(conn.clone()), opaque, oneway };
                    let answer = response.await;
                    guard.conn = None;
                    if !oneway {
                        conn.respond(opaque, answer).await;
                    }
                    drop((permit, token));
                });
            }
        }
    }

    /// Answers GO_AWAY to every request from now on.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Waits until no handler runs.
    pub(crate) async fn drained(&self) {
        self.tracker.idle().await;
    }
}

impl Route {
    fn new(max_in_flight: usize, handler: impl Handler) -> Route {
        let limit = max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        Route { handler: Arc::new(handler), permits: Arc::new(Semaphore::new(limit)), limit }
    }
}

/// Answers SYSTEM_ERROR when a handler panics (or its task is cancelled) before it produced a response, so the
/// caller learns at once instead of at its timeout.
struct AnswerGuard {
    conn: Option<Connection>,
    opaque: i32,
    oneway: bool,
}

impl Drop for AnswerGuard {
    fn drop(&mut self) {
        // Only a panic answers: a task cancelled without panicking means the runtime is going away with it.
        if let Some(conn) = self.conn.take()
            && !self.oneway
            && std::thread::panicking()
        {
            tracing::error!(peer = conn.peer(), opaque = self.opaque, "request handler panicked");
            conn.respond_now(self.opaque, Command::response(code::SYSTEM_ERROR, Some("handler panicked".to_owned())));
        }
    }
}

/// Counts running handlers so shutdown can wait for them.
#[derive(Default)]
struct Tracker {
    inner: Arc<TrackerInner>,
}

#[derive(Default)]
struct TrackerInner {
    running: AtomicUsize,
    idle: Notify,
}

struct Token(Arc<TrackerInner>);

impl Drop for Token {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Tracker {
    fn token(&self) -> Token {
        self.inner.running.fetch_add(1, Ordering::AcqRel);
        Token(self.inner.clone())
    }

    async fn idle(&self) {
        loop {
            // Created before the check: notify_waiters wakes every Notified that exists when it is called.
            let notified = self.inner.idle.notified();
            if self.inner.running.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}
