//! Live clients of the v2 API, keyed by `x-mq-client-id`: what each said in its settings, its open Telemetry
//! stream (for server commands such as transaction check-backs) and when it was last heard from. Clients silent
//! for `broker.client-expiry-ms` are dropped by the broker's client scan.
//!
//! Bounded: at most [`MAX_SESSIONS`] clients (a new client beyond it is refused as busy until others expire or
//! leave) and as many open Telemetry streams (a stream outlives its session when the client stays connected
//! after NotifyClientTermination or expiry), and each stream queues at most [`COMMAND_CAPACITY`] server commands.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use comet_proto::apache::rocketmq::v2 as pb;
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// Most v2 clients known at once (each costs its settings, a few hundred bytes).
pub const MAX_SESSIONS: usize = 100_000;

/// Server commands (check-backs, settings replies) queued per Telemetry stream; a full stream skips further
/// check-backs, which the check service retries later.
pub const COMMAND_CAPACITY: usize = 64;

/// What a Telemetry stream's writer takes: a command, or the error that ends the stream.
pub type Command = Result<pb::TelemetryCommand, tonic::Status>;

/// The v2 clients this broker knows.
#[derive(Debug)]
pub struct Sessions {
    clients: Mutex<HashMap<String, Session>>,
    expiry: Duration,
    next_stream: AtomicU64,
    open_streams: std::sync::atomic::AtomicUsize,
}

/// One client.
#[derive(Debug, Clone)]
pub struct Session {
    /// When a request or command from it last arrived.
    pub last_seen: Instant,
    /// Its latest settings (Telemetry), if it sent any.
    pub settings: Option<Arc<pb::Settings>>,
    /// The client type it declared (settings or heartbeat); `Unspecified` until then.
    pub client_type: pb::ClientType,
    /// A consumer's group (heartbeat, settings), as a broker group name.
    pub group: Option<String>,
    /// Its open Telemetry stream: the stream's id and the writer for server commands.
    stream: Option<(u64, mpsc::Sender<Command>)>,
}

impl Session {
    fn new(now: Instant) -> Self {
        Self { last_seen: now, settings: None, client_type: pb::ClientType::Unspecified, group: None, stream: None }
    }

    /// True when the client is a producer whose settings name `topic` (namespace-wrapped names as the broker
    /// stores them).
    fn publishes(&self, topic: &str) -> bool {
        let Some(settings) = &self.settings else { return false };
        let Some(pb::settings::PubSub::Publishing(p)) = &settings.pub_sub else { return false };
        p.topics.iter().any(|t| {
            if t.resource_namespace.is_empty() {
                t.name == topic
            } else {
                topic.strip_prefix(t.resource_namespace.as_str()).and_then(|r| r.strip_prefix('%')) == Some(&t.name)
            }
        })
    }
}

/// Why a client could not be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManySessions;

impl Sessions {
    /// No clients; `expiry` is how long a silent client is kept.
    pub fn new(expiry: Duration) -> Self {
        Self {
            clients: Mutex::new(HashMap::new()),
            expiry,
            next_stream: AtomicU64::new(1),
            open_streams: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Runs `f` on the client's session, created if new (refused beyond [`MAX_SESSIONS`]); notes it alive.
    fn with<T>(&self, client_id: &str, f: impl FnOnce(&mut Session) -> T) -> Result<T, TooManySessions> {
        let now = Instant::now();
        let mut clients = self.clients.lock();
        if let Some(s) = clients.get_mut(client_id) {
            s.last_seen = now;
            return Ok(f(s));
        }
        if clients.len() >= MAX_SESSIONS {
            return Err(TooManySessions);
        }
        let s = clients.entry(client_id.to_owned()).or_insert_with(|| Session::new(now));
        Ok(f(s))
    }

    /// Notes that `client_id` is alive (any request from it); a new client beyond [`MAX_SESSIONS`] is not
    /// recorded (it has no state to lose; its Telemetry stream is refused).
    pub fn touch(&self, client_id: &str) {
        let _ = self.with(client_id, |_| ());
    }

    /// Notes a heartbeat: alive, its type and (consumers) its group.
    pub fn heartbeat(
        &self,
        client_id: &str,
        client_type: pb::ClientType,
        group: Option<String>,
    ) -> Result<(), TooManySessions> {
        self.with(client_id, |s| {
            if client_type != pb::ClientType::Unspecified {
                s.client_type = client_type;
            }
            if group.is_some() {
                s.group = group;
            }
        })
    }

    /// Stores the client's settings (and the group a consumer's settings name).
    pub fn set_settings(
        &self,
        client_id: &str,
        settings: Arc<pb::Settings>,
        group: Option<String>,
    ) -> Result<(), TooManySessions> {
        self.with(client_id, |s| {
            if let Some(Ok(t)) = settings.client_type.map(pb::ClientType::try_from)
                && t != pb::ClientType::Unspecified
            {
                s.client_type = t;
            }
            if group.is_some() {
                s.group = group;
            }
            s.settings = Some(settings);
        })
    }

    /// The client's session, if known.
    pub fn get(&self, client_id: &str) -> Option<Session> {
        self.clients.lock().get(client_id).cloned()
    }

    /// Records a newly opened Telemetry stream of `client_id` (replacing an older one) and answers its id, its
    /// writer and the receiver its commands come from.
    pub fn open_stream(
        &self,
        client_id: &str,
    ) -> Result<(u64, mpsc::Sender<Command>, mpsc::Receiver<Command>), TooManySessions> {
        if self.open_streams.fetch_add(1, Ordering::AcqRel) >= MAX_SESSIONS {
            self.open_streams.fetch_sub(1, Ordering::AcqRel);
            return Err(TooManySessions);
        }
        let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let writer = tx.clone();
        if let Err(e) = self.with(client_id, |s| s.stream = Some((id, tx))) {
            self.open_streams.fetch_sub(1, Ordering::AcqRel);
            return Err(e);
        }
        Ok((id, writer, rx))
    }

    /// Records `writer` (stream `stream_id`) as the client's stream again when the session lost it (it was
    /// dropped by NotifyClientTermination or expiry while the stream stayed open); a newer stream stays.
    pub fn keep_stream(&self, client_id: &str, stream_id: u64, writer: &mpsc::Sender<Command>) {
        let _ = self.with(client_id, |s| {
            if s.stream.is_none() {
                s.stream = Some((stream_id, writer.clone()));
            }
        });
    }

    /// True while stream `stream_id` is the client's current one.
    pub fn is_current(&self, client_id: &str, stream_id: u64) -> bool {
        let clients = self.clients.lock();
        clients.get(client_id).and_then(|s| s.stream.as_ref()).is_some_and(|(id, _)| *id == stream_id)
    }

    /// Forgets stream `stream_id` of the client when it ends (a newer stream of the same client stays). Called
    /// exactly once per stream [`Sessions::open_stream`] opened.
    pub fn close_stream(&self, client_id: &str, stream_id: u64) {
        self.open_streams.fetch_sub(1, Ordering::AcqRel);
        if let Some(s) = self.clients.lock().get_mut(client_id)
            && s.stream.as_ref().is_some_and(|(id, _)| *id == stream_id)
        {
            s.stream = None;
        }
    }

    /// Live producers with an open stream whose settings publish `topic`.
    pub fn live_publishers(&self, topic: &str) -> usize {
        let clients = self.clients.lock();
        clients
            .values()
            .filter(|s| s.last_seen.elapsed() < self.expiry && s.publishes(topic))
            .filter(|s| s.stream.as_ref().is_some_and(|(_, tx)| !tx.is_closed()))
            .count()
    }

    /// Sends `command` to one live producer of `topic` with room in its stream (a different one each time, by
    /// rotating from a per-call start); false when none took it.
    pub fn send_to_publisher(&self, topic: &str, command: pb::TelemetryCommand) -> bool {
        let writers: Vec<mpsc::Sender<Command>> = {
            let clients = self.clients.lock();
            clients
                .values()
                .filter(|s| s.last_seen.elapsed() < self.expiry && s.publishes(topic))
                .filter_map(|s| s.stream.as_ref().map(|(_, tx)| tx.clone()))
                .filter(|tx| !tx.is_closed())
                .collect()
        };
        if writers.is_empty() {
            return false;
        }
        let start = usize::try_from(self.next_stream.fetch_add(1, Ordering::Relaxed)).unwrap_or(0) % writers.len();
        let mut command = command;
        for i in 0..writers.len() {
            match writers[(start + i) % writers.len()].try_send(Ok(command)) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Full(back) | mpsc::error::TrySendError::Closed(back)) => {
                    command = match back {
                        Ok(c) => c,
                        Err(_) => return false,
                    };
                }
            }
        }
        false
    }

    /// True while `client_id` has been heard from within the expiry.
    pub fn is_alive(&self, client_id: &str) -> bool {
        self.clients.lock().get(client_id).is_some_and(|s| s.last_seen.elapsed() < self.expiry)
    }

    /// Forgets a client (NotifyClientTermination); its stream, if still open, gets no more commands.
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

    /// Clients known now (metrics, tests).
    pub fn len(&self) -> usize {
        self.clients.lock().len()
    }

    /// True without clients.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn producer_of(topics: &[(&str, &str)]) -> Arc<pb::Settings> {
        let topics = topics
            .iter()
            .map(|(ns, name)| pb::Resource { resource_namespace: (*ns).into(), name: (*name).into() })
            .collect();
        Arc::new(pb::Settings {
            client_type: Some(pb::ClientType::Producer.into()),
            pub_sub: Some(pb::settings::PubSub::Publishing(pb::Publishing { topics, ..Default::default() })),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn commands_reach_a_live_publisher_of_the_topic_only() {
        let s = Sessions::new(Duration::from_secs(60));
        let command = pb::TelemetryCommand::default;
        assert!(!s.send_to_publisher("T", command()), "nobody");
        s.set_settings("p1", producer_of(&[("", "T")]), None).unwrap();
        assert!(!s.send_to_publisher("T", command()), "settings but no stream");
        let (id, _tx, mut rx) = s.open_stream("p1").unwrap();
        assert_eq!(s.live_publishers("T"), 1);
        assert_eq!(s.live_publishers("U"), 0);
        assert!(s.send_to_publisher("T", command()));
        assert!(rx.try_recv().is_ok());
        assert!(!s.send_to_publisher("U", command()));
        let (other, _, _) = s.open_stream("p9").unwrap();
        s.close_stream("p9", other);
        assert_eq!(s.live_publishers("T"), 1, "another stream's end leaves this one");
        s.close_stream("p1", id);
        assert_eq!(s.live_publishers("T"), 0);
        s.set_settings("p2", producer_of(&[("ns", "T")]), None).unwrap();
        let (_, _tx2, _rx2) = s.open_stream("p2").unwrap();
        assert_eq!(s.live_publishers("ns%T"), 1, "namespaced topics match their wrapped name");
        s.remove("p2");
        assert_eq!(s.live_publishers("ns%T"), 0);
    }

    #[test]
    fn a_stream_that_was_replaced_is_not_closed_by_its_predecessor() {
        let s = Sessions::new(Duration::from_secs(60));
        let (a, ta, _ra) = s.open_stream("c").unwrap();
        let (b, _tb, _rb) = s.open_stream("c").unwrap();
        assert!(!s.is_current("c", a));
        s.keep_stream("c", a, &ta);
        assert!(s.is_current("c", b), "a newer stream is not replaced");
        s.remove("c");
        s.keep_stream("c", a, &ta);
        assert!(s.is_current("c", a), "a stream outliving its session is recorded again");
        s.close_stream("c", b);
        assert!(s.is_current("c", a), "the end of a replaced stream leaves the current one");
        s.close_stream("c", a);
        assert!(!s.is_current("c", a));
        assert_eq!(s.open_streams.load(Ordering::Acquire), 0, "every stream counted once");
    }

    #[test]
    fn heartbeats_record_type_and_group() {
        let s = Sessions::new(Duration::from_secs(60));
        s.heartbeat("c", pb::ClientType::SimpleConsumer, Some("G".into())).unwrap();
        let got = s.get("c").unwrap();
        assert_eq!(got.client_type, pb::ClientType::SimpleConsumer);
        assert_eq!(got.group.as_deref(), Some("G"));
        assert!(s.is_alive("c"));
        s.remove("c");
        assert!(!s.is_alive("c"));
    }
}
