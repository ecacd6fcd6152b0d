//! The client: one connection per peer address, made on first use and remade after it dies. Failed connects
//! back off exponentially per address (`reconnect-backoff-min-ms` doubling up to `-max-ms`); during a back-off
//! calls to that address fail at once with [`Error::Connect`] instead of each waiting for a connect timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::ClientConfig;
use crate::connection::{Connection, Permits, ResponseFuture};
use crate::error::{Error, Result};
use crate::frame::Command;
use crate::router::Router;

/// A remoting client. Cheap to clone; clones share connections and permits. Dropping the last clone closes its
/// connections (requests still pending on them fail with [`Error::ConnectionClosed`]).
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    permits: Arc<Permits>,
    router: Arc<Router>,
    endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
}

#[derive(Debug, Default)]
struct Endpoint {
    current: Mutex<Option<Connection>>,
    /// Serialises connect attempts to one address and holds its back-off state.
    connecting: tokio::sync::Mutex<Backoff>,
}

#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let endpoints = self.endpoints.get_mut().unwrap_or_else(|e| e.into_inner());
        for ep in endpoints.values() {
            if let Some(conn) = ep.current.lock().unwrap_or_else(|e| e.into_inner()).take() {
                conn.close("client dropped");
            }
        }
    }
}

impl Client {
    /// A client that answers no requests from its servers (every server→client call gets
    /// REQUEST_CODE_NOT_SUPPORTED).
    pub fn new(config: ClientConfig) -> Client {
        Client::with_router(config, Router::new())
    }

    /// A client whose servers may call it: their requests are dispatched to `router`.
    pub fn with_router(config: ClientConfig, router: Router) -> Client {
        let permits = Permits::new(config.async_permits, config.oneway_permits);
        Client {
            inner: Arc::new(Inner { config, permits, router: Arc::new(router), endpoints: Mutex::new(HashMap::new()) }),
        }
    }

    /// The live connection to `addr`, connecting (within `timeout` and the connect timeout) if there is none.
    pub async fn connection(&self, addr: &str, timeout: Duration) -> Result<Connection> {
        let ep = {
            let mut map = self.inner.endpoints.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(addr.to_owned()).or_default().clone()
        };
        if let Some(conn) = live(&ep) {
            return Ok(conn);
        }
        let mut backoff = ep.connecting.lock().await;
        // Someone else may have connected while we waited for the lock.
        if let Some(conn) = live(&ep) {
            return Ok(conn);
        }
        let now = Instant::now();
        if let Some(at) = backoff.retry_at
            && at > now
        {
            let reason = format!("in reconnect back-off for another {:?}", at - now);
            return Err(Error::Connect { peer: addr.to_owned(), reason });
        }
        let cfg = &self.inner.config;
        let limit = timeout.min(Duration::from_millis(cfg.connect_timeout_ms));
        let attempt = match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("connect timed out after {limit:?}")),
        };
        match attempt {
            Ok(stream) => {
                *backoff = Backoff::default();
                let conn = Connection::spawn(
                    stream,
                    addr.to_owned(),
                    cfg.channel.clone(),
                    self.inner.permits.clone(),
                    self.inner.router.clone(),
                );
                *ep.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
                tracing::debug!(peer = addr, "connected");
                Ok(conn)
            }
            Err(reason) => {
                let shift = backoff.failures.min(20);
                let wait = Duration::from_millis(cfg.reconnect_backoff_min_ms.saturating_mul(1 << shift))
                    .min(Duration::from_millis(cfg.reconnect_backoff_max_ms));
                backoff.failures += 1;
                backoff.retry_at = Some(Instant::now() + wait);
                tracing::debug!(peer = addr, "connect failed ({reason}); next attempt in {wait:?}");
                Err(Error::Connect { peer: addr.to_owned(), reason })
            }
        }
    }

    /// Sends `request` to `addr` and waits at most `timeout` (connecting included) for the response.
    pub async fn invoke(&self, addr: &str, request: Command, timeout: Duration) -> Result<Command> {
        let start = Instant::now();
        let conn = self.connection(addr, timeout).await?;
        conn.invoke(request, timeout.saturating_sub(start.elapsed())).await
    }

    /// Sends `request` holding an async permit; see [`Connection::invoke_async`].
    pub async fn invoke_async(&self, addr: &str, request: Command, timeout: Duration) -> Result<ResponseFuture> {
        let start = Instant::now();
        let conn = self.connection(addr, timeout).await?;
        conn.invoke_async(request, timeout.saturating_sub(start.elapsed())).await
    }

    /// Sends `request` and calls `callback` with its outcome; see [`Connection::invoke_with_callback`].
    pub async fn invoke_with_callback<F>(
        &self,
        addr: &str,
        request: Command,
        timeout: Duration,
        callback: F,
    ) -> Result<()>
    where
        F: FnOnce(Result<Command>) + Send + 'static,
    {
        let start = Instant::now();
        let conn = self.connection(addr, timeout).await?;
        conn.invoke_with_callback(request, timeout.saturating_sub(start.elapsed()), callback).await
    }

    /// Queues `request` as oneway; see [`Connection::invoke_oneway`].
    pub async fn invoke_oneway(&self, addr: &str, request: Command, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let conn = self.connection(addr, timeout).await?;
        conn.invoke_oneway(request, timeout.saturating_sub(start.elapsed())).await
    }

    /// Closes every connection (pending requests fail at once). Later calls connect again.
    pub fn close_all(&self) {
        let endpoints: Vec<_> =
            self.inner.endpoints.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for ep in endpoints {
            if let Some(conn) = ep.current.lock().unwrap_or_else(|e| e.into_inner()).take() {
                conn.close("closed by client");
            }
        }
    }
}

fn live(ep: &Endpoint) -> Option<Connection> {
    ep.current.lock().unwrap_or_else(|e| e.into_inner()).as_ref().filter(|c| !c.is_closed()).cloned()
}
