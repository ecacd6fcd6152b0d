//! Transactional messages: [`Producer::send_transactional`] stores a half message (invisible to consumers), runs
//! the local transaction and commits or rolls the half back; a [`TransactionChecker`] on the producer config
//! answers the brokers' check-backs of halves left unresolved (the local transaction said "unknown", or the
//! producer died before ending it). docs/client.md, "Transactions".

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use comet_model::MASTER_ID;
use comet_proto::comet::v1 as pb;
use tokio::task::JoinHandle;

use crate::error::ClientError;
use crate::message::{Message, ReceivedMessage, SendResult};
use crate::producer::{Inner, Outgoing, Producer, now_millis};

/// What a local transaction (or a check-back) decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalTransactionState {
    /// Make the message visible to consumers.
    Commit,
    /// Discard it.
    Rollback,
    /// Not known yet: the broker checks back later (up to its limit, then its policy applies).
    Unknown,
}

impl LocalTransactionState {
    fn to_wire(self) -> pb::TransactionResolution {
        match self {
            Self::Commit => pb::TransactionResolution::Commit,
            Self::Rollback => pb::TransactionResolution::Rollback,
            Self::Unknown => pb::TransactionResolution::Unknown,
        }
    }
}

/// Answers check-backs: given the half message (its real topic, id, keys, properties, body), says whether its
/// local transaction committed. Runs on the blocking pool, so it may query a database.
#[derive(Clone)]
pub struct TransactionChecker(Arc<dyn Fn(&ReceivedMessage) -> LocalTransactionState + Send + Sync>);

impl TransactionChecker {
    /// A checker calling `f` for each check-back.
    pub fn new(f: impl Fn(&ReceivedMessage) -> LocalTransactionState + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
}

impl std::fmt::Debug for TransactionChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransactionChecker")
    }
}

/// The outcome of [`Producer::send_transactional`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionSendResult {
    /// Where the half message was stored (`commit_log_offset` is its handle).
    pub half: SendResult,
    /// What the local transaction decided.
    pub state: LocalTransactionState,
    /// The committed message's result, when the broker committed it.
    pub committed: Option<SendResult>,
}

/// How often the check-stream task looks for new master brokers and reopens lost streams.
const STREAM_REFRESH: Duration = Duration::from_secs(2);

impl Producer {
    /// Sends `message` as a transactional half message, runs `local_transaction` with its send result, and ends
    /// the transaction as it says: commit (visible to consumers, once), rollback (discarded) or unknown (the
    /// broker checks back with this producer group's [`TransactionChecker`] later). If ending fails, the error is
    /// returned and the broker's check-back resolves the half instead.
    pub async fn send_transactional(
        &self,
        message: Message,
        local_transaction: impl FnOnce(&SendResult) -> LocalTransactionState,
    ) -> Result<TransactionSendResult, ClientError> {
        let wire = vec![message.to_wire(now_millis())];
        let outgoing = Outgoing { topic: &message.topic, messages: wire, transactional: true };
        let mut results = self.send_outgoing("send_transactional", outgoing).await?;
        let half = results.pop().ok_or_else(|| ClientError::Invalid {
            op: "send_transactional",
            message: "the broker returned no result".into(),
        })?;
        let state = local_transaction(&half);
        if state == LocalTransactionState::Unknown {
            return Ok(TransactionSendResult { half, state, committed: None });
        }
        let committed = self.end_transaction(&half, state).await?;
        Ok(TransactionSendResult { half, state, committed })
    }

    /// Commits or rolls back the half message of `half` (a [`Producer::send_transactional`] result whose local
    /// transaction said unknown, decided later). Answers the committed message's result when committed.
    pub async fn end_transaction(
        &self,
        half: &SendResult,
        state: LocalTransactionState,
    ) -> Result<Option<SendResult>, ClientError> {
        let inner = self.inner();
        let request = pb::EndTransactionRequest {
            producer_group: inner.config.group.clone(),
            message_id: half.message_id.clone(),
            commit_log_offset: half.commit_log_offset,
            resolution: state.to_wire() as i32,
            from_check: false,
        };
        let address = &half.broker_address;
        let timeout = inner.config.send_timeout;
        let mut last = None;
        // Ending is idempotent at the broker: retry transient failures on the same broker (the half lives there).
        for _ in 0..=inner.config.retries {
            let mut client = inner.channels.broker(address)?;
            let error = match tokio::time::timeout(timeout, client.end_transaction(request.clone())).await {
                Ok(Ok(response)) => {
                    let response = response.into_inner();
                    return Ok(response.committed.map(|c| SendResult {
                        message_id: c.message_id,
                        queue: half.queue.clone(),
                        queue_offset: c.queue_offset,
                        broker_address: address.clone(),
                        commit_log_offset: c.commit_log_offset,
                        duplicate: false,
                        deliver_at: None,
                    }));
                }
                Ok(Err(status)) => ClientError::broker_status("end_transaction", address, &status),
                Err(_) => ClientError::Timeout { op: "end_transaction", broker: address.clone(), after: timeout },
            };
            if !error.is_retryable() {
                return Err(error);
            }
            last = Some(error);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last.unwrap_or_else(|| ClientError::Invalid { op: "end_transaction", message: "no attempt".into() }))
    }
}

/// Keeps a check stream open to every master broker of the NameServers' clusters while the producer exists:
/// every [`STREAM_REFRESH`] the masters are listed and a stream is (re)opened to each that has none.
pub(crate) async fn check_stream_loop(producer: Weak<Inner>) {
    // Aborted when dropped: the stream tasks end with this task, that is with the producer (an open stream is
    // what makes the broker count the producer as live).
    let mut streams: HashMap<String, Aborting> = HashMap::new();
    let mut tick = tokio::time::interval(STREAM_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = producer.upgrade() else { break };
        streams.retain(|_, task| !task.0.is_finished());
        match inner.routes.nameserver().cluster_info().await {
            Ok(info) => {
                let masters = info
                    .clusters
                    .iter()
                    .flat_map(|c| &c.brokers)
                    .filter_map(|b| b.addresses.get(&MASTER_ID).cloned())
                    .filter(|a| !a.is_empty());
                for address in masters {
                    if let std::collections::hash_map::Entry::Vacant(slot) = streams.entry(address) {
                        let task = tokio::spawn(watch(Arc::downgrade(&inner), slot.key().clone()));
                        slot.insert(Aborting(task));
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "listing brokers for transaction check streams failed"),
        }
    }
}

/// A task aborted when its handle is dropped.
struct Aborting(JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One check stream: answers each check-back with the checker's decision until the stream ends.
async fn watch(producer: Weak<Inner>, address: String) {
    let (request, checker, mut client, timeout) = {
        let Some(inner) = producer.upgrade() else { return };
        let Some(checker) = inner.config.transaction_checker.clone() else { return };
        let Ok(client) = inner.channels.broker(&address) else { return };
        let request = pb::WatchTransactionChecksRequest {
            producer_group: inner.config.group.clone(),
            client_id: inner.client_id.clone(),
        };
        (request, checker, client, inner.config.send_timeout)
    };
    let mut stream = match client.watch_transaction_checks(request.clone()).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            tracing::debug!(broker = %address, %status, "opening a transaction check stream failed; retrying later");
            return;
        }
    };
    tracing::debug!(broker = %address, "transaction check stream open");
    while let Ok(Some(check)) = stream.message().await {
        let Some(message) = check.message else { continue };
        let id = message.message_id.clone();
        let received = ReceivedMessage::from_wire(&address, message);
        let checker = checker.clone();
        let state = match tokio::task::spawn_blocking(move || (checker.0)(&received)).await {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(id = %id, error = %e, "transaction checker panicked; the broker checks again later");
                continue;
            }
        };
        let end = pb::EndTransactionRequest {
            producer_group: request.producer_group.clone(),
            message_id: id.clone(),
            commit_log_offset: check.commit_log_offset,
            resolution: state.to_wire() as i32,
            from_check: true,
        };
        // Bounded, so a broker that stops answering cannot hold this stream (and the checks queued behind it);
        // an unanswered check is sent again by the broker.
        match tokio::time::timeout(timeout, client.end_transaction(end)).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => {
                tracing::warn!(broker = %address, id = %id, %status, "answering a transaction check-back failed");
            }
            Err(_) => tracing::warn!(broker = %address, id = %id, ?timeout,
                "answering a transaction check-back timed out; the broker checks again later"),
        }
    }
    tracing::debug!(broker = %address, "transaction check stream closed; reopening at the next refresh");
}
