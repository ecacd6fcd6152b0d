//! Live clients of the v2 API, keyed by `x-mq-client-id`: what each said in its settings, its open Telemetry
//! stream (for server commands such as transaction check-backs) and when it was last heard from. Clients silent
//! for `broker.client-expiry-ms` are dropped by the broker's client scan.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The v2 clients this broker knows.
#[derive(Debug)]
pub struct Sessions {
    clients: Mutex<HashMap<String, Session>>,
    expiry: Duration,
}

/// One client.
#[derive(Debug, Clone)]
pub struct Session {
    /// When a request or command from it last arrived.
    pub last_seen: Instant,
}

impl Sessions {
    /// No clients; `expiry` is how long a silent client is kept.
    pub fn new(expiry: Duration) -> Self {
        Self { clients: Mutex::new(HashMap::new()), expiry }
    }

    /// Notes that `client_id` is alive (any request from it).
    pub fn touch(&self, client_id: &str) {
        let now = Instant::now();
        let mut clients = self.clients.lock();
        match clients.get_mut(client_id) {
            Some(s) => s.last_seen = now,
            None => {
                clients.insert(client_id.to_owned(), Session { last_seen: now });
            }
        }
    }

    /// True while `client_id` has been heard from within the expiry.
    pub fn is_alive(&self, client_id: &str) -> bool {
        self.clients.lock().get(client_id).is_some_and(|s| s.last_seen.elapsed() < self.expiry)
    }

    /// Forgets a client (NotifyClientTermination).
    pub fn remove(&self, client_id: &str) {
        self.clients.lock().remove(client_id);
    }

    /// Drops clients silent for longer than the expiry; answers how many went.
    pub fn expire(&self) -> usize {
        let mut clients = self.clients.lock();
        let before = clients.len();
        clients.retain(|_, s| s.last_seen.elapsed() < self.expiry);
        before - clients.len()
    }
}
