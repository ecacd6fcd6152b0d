//! The master's side: an HA listener (comet-remoting server) answering its slaves' handshake, checks, fetches
//! and metadata requests. Only authenticated sessions get anything beyond the handshake.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use bytes::Bytes;
use comet_remoting::{Command, Request, Router, Server, ServerConfig};
use parking_lot::Mutex;

use super::SlaveSession;
use super::protocol::{self, Handshake, Metadata, Side, code, field};
use crate::broker::{Broker, now_ms};
use crate::error::{BrokerError, Result};

/// A handshake is forgotten if not finished within this.
const CHALLENGE_TTL: Duration = Duration::from_secs(30);
/// Most handshakes half done at once; strangers cannot grow the table beyond it.
const MAX_CHALLENGES: usize = 256;
/// Longest a fetch may be parked, whatever the slave asks.
const MAX_FETCH_WAIT: Duration = Duration::from_secs(30);
/// Most connections the HA listener keeps open: a group has a few slaves, so this only bounds what strangers
/// (or a reconnect storm) can hold; one beyond is closed at accept.
const MAX_CONNECTIONS: usize = 256;
/// An HA connection with no traffic this long is closed: a slave fetches at least every `MAX_FETCH_WAIT`, so only
/// connections that never authenticated, or whose slave stopped, go silent this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A fetch this far behind the end reads on the blocking pool (its pages are likely not resident).
const COLD_READ_DISTANCE: u64 = 64 << 20;

struct Challenge {
    broker_id: u64,
    slave_nonce: String,
    peer: String,
    at: Instant,
}

struct Master {
    broker: Arc<Broker>,
    challenges: Mutex<HashMap<String, Challenge>>,
}

/// Binds `ha.listen` and serves the slaves until the returned server is shut down. `None` when `ha.listen` is
/// empty (a master without slaves).
pub async fn start(broker: &Arc<Broker>) -> Result<Option<Server>> {
    let ha = &broker.config.ha;
    if ha.listen.is_empty() {
        return Ok(None);
    }
    let mut config =
        ServerConfig { listen: ha.listen.clone(), max_connections: MAX_CONNECTIONS, ..ServerConfig::default() };
    config.channel.max_frame_size = comet_remoting::frame::DEFAULT_MAX_FRAME_SIZE;
    config.channel.idle_timeout_ms = IDLE_TIMEOUT.as_millis() as u64;
    let master = Arc::new(Master { broker: Arc::clone(broker), challenges: Mutex::new(HashMap::new()) });
    let route = |f: fn(Arc<Master>, Request) -> BoxAnswer| {
        let master = Arc::clone(&master);
        move |req: Request| f(Arc::clone(&master), req)
    };
    let router = Router::new()
        .route(code::AUTH_BEGIN, 16, route(|m, r| Box::pin(async move { m.auth_begin(&r) })))
        .route(code::AUTH_FINISH, 16, route(|m, r| Box::pin(async move { m.auth_finish(r) })))
        .route(code::CHECK, 16, route(|m, r| Box::pin(async move { m.check(&r).await })))
        .route(code::FETCH, 64, route(|m, r| Box::pin(async move { m.fetch(&r).await })))
        .route(code::METADATA, 16, route(|m, r| Box::pin(async move { m.metadata(&r).await })));
    let server = Server::bind(config, router)
        .await
        .map_err(|e| BrokerError::Config(format!("ha.listen {:?}: {e}", ha.listen)))?;
    let advertised = broker.config.ha_advertised_address(server.local_addr());
    tracing::info!(listen = %server.local_addr(), %advertised, mode = ?ha.replication, "HA listener up");
    broker.ha.set_ha_address(advertised);
    // A slave whose host died sends no FIN: close sessions silent past their fetch wait.
    let weak = Arc::downgrade(broker);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(broker) = weak.upgrade() else { return };
            if broker.ha.is_stopping() {
                return;
            }
            broker.ha.close_silent();
        }
    });
    Ok(Some(server))
}

type BoxAnswer = std::pin::Pin<Box<dyn std::future::Future<Output = Command> + Send>>;

fn fail(code: i32, remark: impl Into<String>) -> Command {
    Command::response(code, Some(remark.into()))
}

fn ok() -> Command {
    Command::response(comet_remoting::code::SUCCESS, None)
}

fn bad_request(why: String) -> Command {
    fail(comet_remoting::code::SYSTEM_ERROR, format!("bad HA request: {why}"))
}

impl Master {
    fn secret(&self) -> &str {
        &self.broker.config.ha.secret
    }

    fn auth_begin(&self, req: &Request) -> Command {
        let cmd = &req.command;
        let fields = || {
            Ok::<_, String>((
                protocol::text(cmd, field::BROKER_NAME)?,
                protocol::number(cmd, field::BROKER_ID)?,
                protocol::text(cmd, field::NONCE)?,
            ))
        };
        let (name, id, slave_nonce) = match fields() {
            Ok(f) => f,
            Err(e) => return bad_request(e),
        };
        let ours = &self.broker.config.broker.broker_name;
        if name != ours || id == comet_model::MASTER_ID || slave_nonce.len() > 128 {
            tracing::warn!(peer = req.connection.peer(), name, id, "HA handshake refused: not a slave of this group");
            return fail(code::FORBIDDEN, format!("this master serves broker name {ours:?} to slaves with id > 0"));
        }
        let master_nonce = match protocol::nonce() {
            Ok(n) => n,
            Err(e) => return fail(comet_remoting::code::SYSTEM_ERROR, format!("no randomness: {e}")),
        };
        let mut challenges = self.challenges.lock();
        challenges.retain(|_, c| c.at.elapsed() < CHALLENGE_TTL);
        if challenges.len() >= MAX_CHALLENGES {
            // Evict the oldest rather than refuse: strangers flooding handshakes cannot lock real slaves out.
            let oldest = challenges.iter().min_by_key(|(_, c)| c.at).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                challenges.remove(&k);
            }
        }
        challenges.insert(
            master_nonce.clone(),
            Challenge {
                broker_id: id,
                slave_nonce: slave_nonce.to_owned(),
                peer: req.connection.peer().to_owned(),
                at: Instant::now(),
            },
        );
        ok().with_ext(field::NONCE, master_nonce)
    }

    fn auth_finish(&self, req: Request) -> Command {
        let cmd = &req.command;
        let fields = || {
            Ok::<_, String>((
                protocol::text(cmd, field::CHALLENGE)?,
                protocol::text(cmd, field::PROOF)?,
                protocol::number(cmd, field::SEGMENT_SIZE)?,
            ))
        };
        let (master_nonce, proof, segment_size) = match fields() {
            Ok(f) => f,
            Err(e) => return bad_request(e),
        };
        let peer = req.connection.peer().to_owned();
        let challenge = {
            let mut challenges = self.challenges.lock();
            // Only the connection that asked may answer (someone who saw the nonce cannot burn it), and in time.
            match challenges.get(master_nonce) {
                Some(c) if c.peer == peer && c.at.elapsed() < CHALLENGE_TTL => challenges.remove(master_nonce),
                _ => None,
            }
        };
        let Some(challenge) = challenge else {
            return fail(code::FORBIDDEN, "unknown or expired challenge");
        };
        let name = &self.broker.config.broker.broker_name;
        let id = challenge.broker_id;
        let handshake = Handshake { master_nonce, slave_nonce: &challenge.slave_nonce, broker_name: name, id };
        let valid = handshake.verify(self.secret(), Side::Slave, proof);
        if !valid {
            tracing::warn!(%peer, id, "HA handshake refused: wrong secret");
            return fail(code::FORBIDDEN, "authentication failed: the HA secrets differ");
        }
        let ours = self.broker.store.segment_size();
        if segment_size != ours {
            tracing::error!(%peer, id, ours, theirs = segment_size, "slave refused: store segment sizes differ");
            return fail(
                code::MISMATCH,
                format!("store.segment-size differs: master {ours}, slave {segment_size}; they must be equal"),
            );
        }
        let Some(their_proof) = handshake.proof(self.secret(), Side::Master) else {
            return fail(comet_remoting::code::SYSTEM_ERROR, "cannot compute the master's proof");
        };
        let session_id = match protocol::nonce() {
            Ok(n) => n,
            Err(e) => return fail(comet_remoting::code::SYSTEM_ERROR, format!("no randomness: {e}")),
        };
        let store = &self.broker.store;
        let session = Arc::new(SlaveSession {
            broker_id: id,
            peer: peer.clone(),
            // Unknown until its first fetch says where it is.
            acked: AtomicU64::new(0),
            last_seen_ms: AtomicU64::new(now_ms()),
            wait_ms: AtomicU64::new(0),
            connection: Some(req.connection.clone()),
        });
        self.broker.ha.open_session(session_id.clone(), session);
        tracing::info!(%peer, id, "slave connected");
        let ha = Arc::clone(&self.broker);
        let conn = req.connection.clone();
        let closing_id = session_id.clone();
        tokio::spawn(async move {
            let reason = conn.closed().await;
            ha.ha.close_session(&closing_id);
            tracing::info!(peer = conn.peer(), id, %reason, "slave disconnected");
        });
        ok().with_ext(field::SESSION, session_id)
            .with_ext(field::PROOF, their_proof)
            .with_ext(field::MIN, store.min_offset().0.to_string())
            .with_ext(field::END, store.end_offset().0.to_string())
    }

    fn authorised(&self, req: &Request) -> std::result::Result<Arc<SlaveSession>, Command> {
        let id = protocol::text(&req.command, field::SESSION).map_err(bad_request)?;
        self.broker
            .ha
            .session(id, req.connection.peer())
            .ok_or_else(|| fail(code::NO_SESSION, "unknown session: authenticate again"))
    }

    async fn check(&self, req: &Request) -> Command {
        if let Err(answer) = self.authorised(req) {
            return answer;
        }
        let cmd = &req.command;
        let fields = || {
            Ok::<_, String>((
                protocol::number(cmd, field::OFFSET)?,
                protocol::number(cmd, field::LEN)?,
                protocol::number(cmd, field::CRC)?,
            ))
        };
        let (offset, len, crc) = match fields() {
            Ok(f) => f,
            Err(e) => return bad_request(e),
        };
        let Ok(len) = u32::try_from(len) else { return bad_request(format!("len {len} too large")) };
        let broker = Arc::clone(&self.broker);
        let ours = broker.blocking(move |b| Ok(b.store.crc_range(comet_model::CommitLogOffset(offset), len)?)).await;
        match ours {
            Ok(ours) => ok().with_ext(field::MATCHES, (ours == Some(crc as u32)).to_string()),
            Err(e) => fail(code::STORE_ERROR, e.to_string()),
        }
    }

    async fn fetch(&self, req: &Request) -> Command {
        let session = match self.authorised(req) {
            Ok(s) => s,
            Err(answer) => return answer,
        };
        let cmd = &req.command;
        let fields = || {
            Ok::<_, String>((
                protocol::number(cmd, field::OFFSET)?,
                protocol::number(cmd, field::MAX)?,
                protocol::number(cmd, field::WAIT_MS)?,
            ))
        };
        let (offset, max, wait_ms) = match fields() {
            Ok(f) => f,
            Err(e) => return bad_request(e),
        };
        let max = usize::try_from(max).unwrap_or(usize::MAX).clamp(1, self.broker.config.ha.chunk_bytes);
        let wait = Duration::from_millis(wait_ms).min(MAX_FETCH_WAIT);
        let ha = &self.broker.ha;
        let store = &self.broker.store;
        ha.seen(&session, wait.as_millis() as u64);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (min, end) = (store.min_offset().0, store.end_offset().0);
            let positioned = |c: Command| c.with_ext(field::MIN, min.to_string()).with_ext(field::END, end.to_string());
            if offset < min {
                return positioned(fail(
                    code::OFFSET_MOVED,
                    format!("offset {offset} is below the master's minimum {min}"),
                ));
            }
            if offset > end {
                return positioned(fail(code::DIVERGED, format!("offset {offset} is beyond the master's end {end}")));
            }
            if offset == end {
                // The slave holds all of our log: its acknowledgement.
                ha.acknowledge(&session, offset);
            }
            if offset < end {
                return match self.read(offset, max, end - offset).await {
                    Ok(Some(bytes)) => {
                        // A record starts at `offset` in our log (read_raw checked it), so the slave holds exactly
                        // our bytes below it. An offset that is not a record boundary of ours (a diverged tail)
                        // never counts towards a sync send.
                        ha.acknowledge(&session, offset);
                        positioned(ok()).with_ext(field::OFFSET, offset.to_string()).with_body(bytes)
                    }
                    // Nothing readable there right now (a segment being deleted): answer empty after the wait
                    // rather than spin.
                    Ok(None) => {
                        ha.park_until(deadline, || false).await;
                        positioned(ok()).with_ext(field::OFFSET, offset.to_string())
                    }
                    // Not a record boundary here: the slave's log parted from ours within a record.
                    Err(BrokerError::Store(comet_store::Error::NotRecordBoundary { .. })) => positioned(fail(
                        code::DIVERGED,
                        format!("offset {offset} is not a record boundary of the master's log"),
                    )),
                    Err(BrokerError::Store(comet_store::Error::OffsetMoved { min, .. })) => {
                        fail(code::OFFSET_MOVED, format!("offset {offset} was just deleted by retention"))
                            .with_ext(field::MIN, min.0.to_string())
                            .with_ext(field::END, end.to_string())
                    }
                    Err(e) => fail(code::STORE_ERROR, e.to_string()),
                };
            }
            if tokio::time::Instant::now() >= deadline || ha.is_stopping() {
                return positioned(ok()).with_ext(field::OFFSET, offset.to_string());
            }
            ha.park_until(deadline, || store.end_offset().0 > offset).await;
        }
    }

    /// Reads a chunk: in place when it is near the end (resident pages, zero copy), on the blocking pool and
    /// copied when it is far behind (page faults from disk must not stall an async worker).
    async fn read(&self, offset: u64, max: usize, behind: u64) -> Result<Option<Bytes>> {
        let at = comet_model::CommitLogOffset(offset);
        if behind < COLD_READ_DISTANCE {
            return Ok(self.broker.store.read_raw(at, max)?);
        }
        self.broker.blocking(move |b| Ok(b.store.read_raw(at, max)?.map(|chunk| Bytes::copy_from_slice(&chunk)))).await
    }

    async fn metadata(&self, req: &Request) -> Command {
        if let Err(answer) = self.authorised(req) {
            return answer;
        }
        let theirs = req.command.ext_fields.get(field::TOPICS_VERSION).cloned().unwrap_or_default();
        let broker = &self.broker;
        let (version, topics) = broker.topics.snapshot();
        let metadata = Metadata {
            topics: (protocol::version_field(&version) != theirs).then_some(topics),
            data_version: version,
            groups: broker.groups.list(),
            offsets: broker.offsets.all().into_iter().map(|(g, t, q, o)| (g, t, q, o.0)).collect(),
        };
        match serde_json::to_vec(&metadata) {
            Ok(body) => ok().with_body(body),
            Err(e) => fail(comet_remoting::code::SYSTEM_ERROR, format!("encoding metadata: {e}")),
        }
    }
}
