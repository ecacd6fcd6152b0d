//! Master/slave replication (HA) over comet-remoting (docs/broker.md, "Replication").
//!
//! A broker group is one master (broker id 0) and its slaves (same broker name, id > 0), configured statically.
//! Each slave connects to the master's HA listener, proves it holds the group's shared secret, finds the point
//! where its CommitLog agrees with the master's (cutting a diverged tail), and from then on fetches CommitLog
//! bytes in large chunks and appends them verbatim ([`comet_store::Store::append_raw`]): its log is
//! byte-identical and its consume queues and index are rebuilt by its own dispatcher. Every fetch names the
//! offset the slave holds up to, which is its acknowledgement. Topics, groups and consumer offsets are copied
//! every `ha.metadata-sync-interval-ms`.
//!
//! - [`protocol`]: codes, fields, the HMAC handshake, the metadata body.
//! - [`master`]: the master's handlers and its table of slave sessions.
//! - [`slave`]: the slave's replication loop.
//!
//! [`Replication`] is the state both sides share with the rest of the broker: the sync-replication wait used by
//! SendMessage, the wake-up of parked fetches on new data, and the status shown by GetReplicationStatus.

pub mod master;
pub mod protocol;
pub mod slave;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use crate::broker::now_ms;
use crate::config::{Config, ReplicationMode};
use crate::error::{BrokerError, Result};

/// One slave connected to this master.
#[derive(Debug)]
pub struct SlaveSession {
    /// Its broker id.
    pub broker_id: u64,
    /// The connection it authenticated on (fetches on any other connection are refused).
    pub peer: String,
    /// It holds every CommitLog byte below this offset.
    pub acked: AtomicU64,
    /// When it last fetched (ms since the epoch).
    pub last_seen_ms: AtomicU64,
    /// How long its last fetch may be parked (ms): it is alive while it fetches again within that plus a grace.
    pub wait_ms: AtomicU64,
    /// The connection, closed when the session is replaced or goes silent.
    pub connection: Option<comet_remoting::Connection>,
}

/// A slave silent for longer than its fetch wait plus this is dead (its host may be gone without a FIN): it no
/// longer counts for sync sends and its connection is closed.
pub const SILENCE_GRACE_MS: u64 = 3_000;

impl SlaveSession {
    /// Whether it fetched recently enough to be alive at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        let seen = self.last_seen_ms.load(Ordering::Acquire);
        now_ms <= seen + self.wait_ms.load(Ordering::Acquire) + SILENCE_GRACE_MS
    }
}

/// What a slave reports about its master.
#[derive(Debug, Default)]
pub struct FollowerState {
    /// A session with the master is open.
    pub connected: AtomicBool,
    /// The master's CommitLog end at the last answer.
    pub master_end: AtomicU64,
    /// Last answer from the master (ms since the epoch), 0 = never.
    pub last_contact_ms: AtomicU64,
}

/// Replication state shared by the send path, the HA handlers and the status call.
#[derive(Debug)]
pub struct Replication {
    mode: ReplicationMode,
    sync_replicas: usize,
    sync_timeout: Duration,
    max_lag: u64,
    /// Master: open slave sessions by session id.
    sessions: Mutex<HashMap<String, Arc<SlaveSession>>>,
    /// Bumped on every acknowledgement and session change: sync sends re-check when it moves.
    acks: watch::Sender<u64>,
    /// Signalled when new messages are dispatched, for parked fetches.
    appended: Notify,
    /// Fetches parked right now; arrivals skip the notification when there are none.
    parked: AtomicUsize,
    /// Master: the HA address slaves are told (set once the listener is bound).
    ha_address: OnceLock<String>,
    /// Set at shutdown: parked fetches answer at once.
    stopping: AtomicBool,
    /// Slave: progress of the replication loop.
    pub follower: FollowerState,
}

impl Replication {
    /// The state for `config` (no listener or loop started yet).
    pub fn new(config: &Config) -> Self {
        Self {
            mode: config.ha.replication,
            sync_replicas: config.ha.sync_replicas,
            sync_timeout: Duration::from_millis(config.ha.sync_timeout_ms),
            max_lag: config.ha.max_lag_bytes,
            sessions: Mutex::new(HashMap::new()),
            acks: watch::Sender::new(0),
            appended: Notify::new(),
            parked: AtomicUsize::new(0),
            ha_address: OnceLock::new(),
            stopping: AtomicBool::new(false),
            follower: FollowerState::default(),
        }
    }

    /// True when sends wait for slaves.
    pub fn is_sync(&self) -> bool {
        self.mode == ReplicationMode::Sync
    }

    /// The replication mode.
    pub fn mode(&self) -> ReplicationMode {
        self.mode
    }

    /// The HA address registered with the NameServers ("" when this broker has no HA listener).
    pub fn ha_address(&self) -> &str {
        self.ha_address.get().map_or("", String::as_str)
    }

    pub(crate) fn set_ha_address(&self, address: String) {
        let _ = self.ha_address.set(address);
    }

    /// Answers every parked fetch now (shutdown): slaves reconnect to the next master process.
    pub fn shut_down(&self) {
        self.stopping.store(true, Ordering::Release);
        self.appended.notify_waiters();
    }

    /// True once shutting down.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Called on the dispatcher thread for every arrival: wakes parked fetches, if any.
    // Hot path: one atomic load when no slave is parked.
    pub fn on_appended(&self) {
        // Pairs with the fence in `park_until`: either this sees the parked fetch, or the fetch sees the new end.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed) > 0 {
            self.appended.notify_waiters();
        }
    }

    /// Waits until `sync-replicas` slaves hold everything below `end`, the end of a batch stored from `from`
    /// (sync mode; returns at once otherwise). Fails at once when fewer slaves than needed are live and within
    /// `max-lag-bytes` of `from`, and after `sync-timeout-ms` otherwise. The message stays stored on the master
    /// either way: the error says so.
    pub async fn wait_replicated(&self, end: u64, from: u64) -> Result<()> {
        if self.mode != ReplicationMode::Sync {
            return Ok(());
        }
        let mut changes = self.acks.subscribe();
        let deadline = tokio::time::Instant::now() + self.sync_timeout;
        loop {
            let (acked, in_sync) = self.count(end, from);
            if acked >= self.sync_replicas {
                return Ok(());
            }
            if in_sync < self.sync_replicas {
                return Err(BrokerError::Replication {
                    reason: format!("{in_sync} slave(s) connected and in sync, {} required", self.sync_replicas),
                });
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    let (acked, _) = self.count(end, from);
                    if acked >= self.sync_replicas {
                        return Ok(());
                    }
                    return Err(BrokerError::Replication {
                        reason: format!(
                            "{acked} of the {} required slave(s) acknowledged offset {end} within {:?}",
                            self.sync_replicas, self.sync_timeout
                        ),
                    });
                }
            }
        }
    }

    /// (live slaves holding everything below `end`, live slaves within `max-lag-bytes` of `from`, the start of the
    /// data being waited for).
    fn count(&self, end: u64, from: u64) -> (usize, usize) {
        let now = now_ms();
        let sessions = self.sessions.lock();
        let mut acked = 0;
        let mut in_sync = 0;
        for s in sessions.values().filter(|s| s.is_live(now)) {
            let at = s.acked.load(Ordering::Acquire);
            acked += usize::from(at >= end);
            in_sync += usize::from(at.saturating_add(self.max_lag) >= from);
        }
        (acked, in_sync)
    }

    /// Closes the connections of sessions that went silent (a dead host sends no FIN): they stop counting at
    /// once (see `count`) and their resources go with the connection. Returns how many were closed.
    pub fn close_silent(&self) -> usize {
        let now = now_ms();
        let silent: Vec<Arc<SlaveSession>> =
            self.sessions.lock().values().filter(|s| !s.is_live(now)).cloned().collect();
        for s in &silent {
            tracing::warn!(id = s.broker_id, peer = %s.peer, "slave silent past its fetch wait: closing its connection");
            if let Some(c) = &s.connection {
                c.close("slave went silent");
            }
        }
        silent.len()
    }

    /// Opens a session for an authenticated slave, closing out an older one of the same broker id.
    pub(crate) fn open_session(&self, id: String, session: Arc<SlaveSession>) {
        let mut sessions = self.sessions.lock();
        let mut replaced = Vec::new();
        sessions.retain(|_, s| {
            let keep = s.broker_id != session.broker_id;
            if !keep {
                replaced.push(Arc::clone(s));
            }
            keep
        });
        sessions.insert(id, session);
        drop(sessions);
        for old in replaced {
            if let Some(c) = &old.connection {
                c.close("the slave reconnected");
            }
        }
        self.acks.send_modify(|v| *v += 1);
    }

    /// Forgets a session (its connection closed).
    pub(crate) fn close_session(&self, id: &str) {
        if self.sessions.lock().remove(id).is_some() {
            self.acks.send_modify(|v| *v += 1);
        }
    }

    /// The session `id` if it was opened on connection `peer`.
    pub(crate) fn session(&self, id: &str, peer: &str) -> Option<Arc<SlaveSession>> {
        self.sessions.lock().get(id).filter(|s| s.peer == peer).cloned()
    }

    /// Records that a slave fetched (it is alive), parking for at most `wait_ms`.
    pub(crate) fn seen(&self, session: &SlaveSession, wait_ms: u64) {
        session.wait_ms.store(wait_ms, Ordering::Release);
        session.last_seen_ms.store(now_ms(), Ordering::Release);
    }

    /// Records a slave's acknowledgement (it may move back after the slave cut a diverged tail).
    pub(crate) fn acknowledge(&self, session: &SlaveSession, offset: u64) {
        if session.acked.swap(offset, Ordering::AcqRel) != offset {
            self.acks.send_modify(|v| *v += 1);
        }
    }

    /// Every connected, live slave: (broker id, connection, acked offset, last seen), by broker id.
    pub fn slaves(&self) -> Vec<(u64, String, u64, u64)> {
        let now = now_ms();
        let mut out: Vec<_> = self
            .sessions
            .lock()
            .values()
            .filter(|s| s.is_live(now))
            .map(|s| {
                (s.broker_id, s.peer.clone(), s.acked.load(Ordering::Acquire), s.last_seen_ms.load(Ordering::Acquire))
            })
            .collect();
        out.sort();
        out
    }

    /// Whether a slave `acked` bytes into a log ending at `master_end` counts as in sync.
    pub fn in_sync(&self, acked: u64, master_end: u64) -> bool {
        acked.saturating_add(self.max_lag) >= master_end
    }

    /// Parks a fetch until new data is dispatched (or `deadline`); counts it so arrivals know to notify.
    pub(crate) async fn park_until(&self, deadline: tokio::time::Instant, ready: impl Fn() -> bool) {
        let _parked = Parked::new(&self.parked);
        // Pairs with the fence in `on_appended` (the store publishes its end with Release only).
        std::sync::atomic::fence(Ordering::SeqCst);
        loop {
            let notified = self.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if ready() || self.stopping.load(Ordering::Acquire) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }
}

/// Counts one parked fetch for as long as it lives.
struct Parked<'a>(&'a AtomicUsize);

impl<'a> Parked<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Parked(count)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync_config() -> Config {
        let mut c = Config::default();
        c.ha.listen = "127.0.0.1:0".into();
        c.ha.secret = "0123456789abcdef".into();
        c.ha.replication = ReplicationMode::Sync;
        // Long enough that a stalled test thread does not see a waiter time out before it acknowledges.
        c.ha.sync_timeout_ms = 1_000;
        c
    }

    fn session(id: u64, peer: &str) -> Arc<SlaveSession> {
        Arc::new(SlaveSession {
            broker_id: id,
            peer: peer.into(),
            acked: AtomicU64::new(0),
            last_seen_ms: AtomicU64::new(now_ms()),
            wait_ms: AtomicU64::new(60_000),
            connection: None,
        })
    }

    #[tokio::test]
    async fn a_sync_send_waits_for_the_acknowledgement_and_fails_fast_without_slaves() {
        let r = Arc::new(Replication::new(&sync_config()));
        let err = r.wait_replicated(100, 100).await.unwrap_err();
        assert!(err.to_string().contains("0 slave(s) connected"), "{err}");

        let s = session(1, "p1");
        r.open_session("a".into(), Arc::clone(&s));
        let waiter = {
            let r = Arc::clone(&r);
            tokio::spawn(async move { r.wait_replicated(100, 100).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        r.acknowledge(&s, 50);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "50 < 100 is not enough");
        r.acknowledge(&s, 100);
        waiter.await.unwrap().unwrap();

        // Connected but silent: the send fails at the timeout, saying how many acknowledged.
        let err = r.wait_replicated(200, 200).await.unwrap_err();
        assert!(err.to_string().contains("0 of the 1 required"), "{err}");

        // Silent past its fetch wait (a dead host sends no FIN): no longer counted, so sends fail at once.
        s.wait_ms.store(0, Ordering::Release);
        s.last_seen_ms.store(now_ms() - SILENCE_GRACE_MS - 1, Ordering::Release);
        let started = std::time::Instant::now();
        let err = r.wait_replicated(300, 300).await.unwrap_err();
        assert!(err.to_string().contains("0 slave(s) connected"), "{err}");
        assert!(started.elapsed() < Duration::from_millis(500), "at once, not at the 1 s timeout");
        assert!(r.slaves().is_empty());
        assert_eq!(r.close_silent(), 1);
    }

    #[tokio::test]
    async fn sessions_are_bound_to_their_connection_and_replaced_per_broker_id() {
        let r = Replication::new(&sync_config());
        r.open_session("a".into(), session(1, "p1"));
        assert!(r.session("a", "p1").is_some());
        assert!(r.session("a", "p2").is_none(), "a session id is useless on another connection");
        r.open_session("b".into(), session(1, "p2"));
        assert!(r.session("a", "p1").is_none(), "the reconnected slave replaces its old session");
        assert_eq!(r.slaves().len(), 1);
        r.close_session("b");
        assert!(r.slaves().is_empty());
    }

    #[tokio::test]
    async fn a_parked_fetch_wakes_on_arrival() {
        let r = Arc::new(Replication::new(&sync_config()));
        let flag = Arc::new(AtomicBool::new(false));
        let parked = {
            let (r, flag) = (Arc::clone(&r), Arc::clone(&flag));
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                r.park_until(deadline, || flag.load(Ordering::Acquire)).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        flag.store(true, Ordering::Release);
        r.on_appended();
        tokio::time::timeout(Duration::from_secs(5), parked).await.unwrap().unwrap();
    }
}
