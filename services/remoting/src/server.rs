//! The server: accepts connections and dispatches their requests to one [`Router`]. It can call its clients back
//! over the same connections ([`Server::connections`], or [`Request::connection`](crate::Request) in a handler).
//!
//! A server may also run without a listener of its own ([`Server::detached`]): whoever accepts connections on a
//! port shared with another protocol hands this server the ones that speak remoting ([`Server::adopt`]).
//!
//! Graceful shutdown: stop accepting, answer GO_AWAY to new requests, wait (up to a grace period) until every
//! running handler has produced its response, write what is queued, then close every connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::config::ServerConfig;
use crate::connection::{Connection, Permits};
use crate::error::{Error, Result};
use crate::router::Router;

/// A running remoting server. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Server {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    local_addr: SocketAddr,
    channel: crate::config::ChannelConfig,
    permits: Arc<Permits>,
    router: Arc<Router>,
    connections: Mutex<HashMap<u64, Connection>>,
    stop_accepting: watch::Sender<bool>,
    /// The accept loop; shutdown waits for it so the port is released when shutdown returns.
    acceptor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Server {
    /// Binds `config.listen` and starts accepting; requests go to `router`.
    pub async fn bind(config: ServerConfig, router: Router) -> Result<Server> {
        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|source| Error::Bind { addr: config.listen.clone(), source })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind { addr: config.listen.clone(), source })?;
        let max_connections = config.max_connections;
        let server = Server::detached(config, router, local_addr);
        let acceptor = tokio::spawn(accept_loop(server.inner.clone(), listener, max_connections));
        *server.inner.acceptor.lock().unwrap_or_else(|e| e.into_inner()) = Some(acceptor);
        Ok(server)
    }

    /// A server that accepts nothing itself: connections come through [`Server::adopt`]. `local_addr` names it in
    /// logs (the shared port); `config.listen` is not used.
    pub fn detached(config: ServerConfig, router: Router, local_addr: SocketAddr) -> Server {
        let permits = Permits::new(config.async_permits, config.oneway_permits);
        Server {
            inner: Arc::new(Inner {
                local_addr,
                channel: config.channel,
                permits,
                router: Arc::new(router),
                connections: Mutex::new(HashMap::new()),
                stop_accepting: watch::Sender::new(false),
                acceptor: Mutex::new(None),
            }),
        }
    }

    /// Serves a connection accepted elsewhere, like one this server accepted itself; after shutdown began, closes
    /// it instead.
    pub fn adopt(&self, stream: TcpStream, peer: SocketAddr) {
        adopt(&self.inner, stream, peer, ());
    }

    /// [`Server::adopt`], keeping `guard` until the connection closes (a slot of the acceptor's connection
    /// limit, for instance); dropped at once if the connection is refused.
    pub fn adopt_with(&self, stream: TcpStream, peer: SocketAddr, guard: impl Send + 'static) {
        adopt(&self.inner, stream, peer, guard);
    }

    /// The bound address (the real port when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The open connections, to call clients back.
    pub fn connections(&self) -> Vec<Connection> {
        self.inner.connections.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Shuts down gracefully: stops accepting, answers GO_AWAY to new requests, waits at most `grace` for running
    /// handlers, flushes their responses, and closes every connection. Returns whether every handler finished
    /// within the grace period.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.inner.stop_accepting.send_replace(true);
        self.inner.router.start_draining();
        let acceptor = self.inner.acceptor.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(acceptor) = acceptor {
            let _ = acceptor.await;
        }
        let drained = tokio::time::timeout(grace, self.inner.router.drained()).await.is_ok();
        if !drained {
            tracing::warn!(addr = %self.inner.local_addr, "shutdown grace of {grace:?} passed with handlers running");
        }
        let conns = std::mem::take(&mut *self.inner.connections.lock().unwrap_or_else(|e| e.into_inner()));
        let closing = conns.into_values().map(|c| async move { c.close_gracefully().await });
        let flush = async {
            for c in closing {
                c.await;
            }
        };
        if tokio::time::timeout(grace, flush).await.is_err() {
            for c in self.connections() {
                c.close("server shut down");
            }
        }
        drained
    }
}

/// How often refused connections are logged at most (with the number refused since the last line).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// At most so many connections open at once on one acceptor: [`ConnectionLimit::admit`] hands out a slot per
/// accepted connection, held until the connection closes; one beyond the limit gets none and is to be closed at
/// once. Refusals are logged at most every 10 s, with the count since the last line and the setting to raise.
#[derive(Debug)]
pub struct ConnectionLimit {
    slots: Arc<Semaphore>,
    max: usize,
    /// The configuration key the warning names.
    key: &'static str,
    refused: u64,
    logged_at: Option<std::time::Instant>,
}

impl ConnectionLimit {
    /// A limit of `max` connections, configured by `key`.
    pub fn new(max: usize, key: &'static str) -> Self {
        Self { slots: Arc::new(Semaphore::new(max)), max, key, refused: 0, logged_at: None }
    }

    /// A slot for the connection just accepted from `peer`, or `None` (then close it).
    pub fn admit(&mut self, peer: SocketAddr) -> Option<OwnedSemaphorePermit> {
        if let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() {
            return Some(slot);
        }
        self.refused += 1;
        if self.logged_at.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
            tracing::warn!(%peer, refused = self.refused,
                "{} connections open ({}): new ones are closed at once", self.max, self.key);
            (self.refused, self.logged_at) = (0, Some(std::time::Instant::now()));
        }
        None
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener, max_connections: usize) {
    let mut stop = inner.stop_accepting.subscribe();
    let mut limit = (max_connections > 0).then(|| ConnectionLimit::new(max_connections, "max-connections"));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: keep serving existing connections, try again shortly.
                tracing::warn!(addr = %inner.local_addr, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match &mut limit {
            None => None,
            Some(limit) => match limit.admit(peer) {
                Some(slot) => Some(slot),
                None => continue, // dropping `stream` closes it
            },
        };
        adopt(&inner, stream, peer, slot);
    }
}

/// Starts serving one accepted connection and tracks it until it closes; drops it once shutdown has begun. The
/// check and the insertion share the table's lock, which shutdown also takes to close what is in it, so no
/// connection slips in after that.
fn adopt(inner: &Arc<Inner>, stream: TcpStream, peer: SocketAddr, guard: impl Send + 'static) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(0);
    let mut connections = inner.connections.lock().unwrap_or_else(|e| e.into_inner());
    if *inner.stop_accepting.borrow() {
        return;
    }
    let conn =
        Connection::spawn(stream, peer.to_string(), inner.channel.clone(), inner.permits.clone(), inner.router.clone());
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    connections.insert(id, conn.clone());
    drop(connections);
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        let _guard = guard;
        let reason = conn.closed().await;
        tracing::debug!(peer = conn.peer(), "connection closed: {reason}");
        if let Some(inner) = weak.upgrade() {
            inner.connections.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        }
    });
}
