//! Transactions: half messages (stored in `TRANSACTION_HALF_TOPIC`, invisible to consumers), EndTransaction
//! (commit copies the half to its real topic once; rollback discards it), the check-back service that asks a
//! live producer of the group about halves left unresolved, and the rebuild of that state at start.
//!
//! Durability: every resolution and check-back is an op record in `TRANSACTION_OP_TOPIC`, written with
//! [`Broker::append_internal`] (as durable as a send). A commit stores the visible copy first and its op
//! record second; a crash in between leaves the half unresolved at restart, marked `recovered`, and such a half
//! is looked up in the message-id index (a copy naming it in `prepared_transaction_offset`) before it is checked
//! or committed, so it is never committed twice.

use std::sync::Arc;
use std::time::Duration;

use comet_model::system::{
    PROP_PRODUCER_GROUP, PROP_REAL_QUEUE_ID, PROP_REAL_TOPIC, PROP_TRANSACTION, PROP_TRANSACTION_CHECK_TIMES,
    TRANSACTION_HALF_TOPIC, TRANSACTION_OP_TOPIC,
};
use comet_model::{CommitLogOffset, QueueOffset};
use comet_proto::comet::v1 as pb;
use comet_store::{NewMessage, StoredMessage};
use tokio::task::JoinHandle;

use super::check_group;
use crate::broker::{Broker, now_ms};
use crate::config::TransactionCheckPolicy;
use crate::domain::copy::{Copy, copy_to};
use crate::domain::transactions::{Committed, Op, Outcome, Resolved};
use crate::edge::convert;
use crate::error::{BrokerError, Result};
use crate::v2::send::V2_PRODUCER_GROUP;

/// Properties of a half message that are the broker's bookkeeping, dropped from the committed copy and from
/// the message a check-back shows.
const INTERNAL: &[&str] = &[PROP_REAL_TOPIC, PROP_REAL_QUEUE_ID, PROP_TRANSACTION, PROP_PRODUCER_GROUP];

/// Most halves handled by one pass of the check-back service.
const CHECKS_PER_PASS: usize = 1_000;

/// Most copies of one id looked at when searching for a committed copy.
const MAX_COPIES: usize = 64;

/// Turns a validated message for `real` / `queue_id` into its half message (queue 0 of the half topic).
pub fn make_half(message: &mut NewMessage, group: &str) {
    let real_topic = std::mem::replace(&mut message.topic, TRANSACTION_HALF_TOPIC.to_owned());
    let real_queue = std::mem::replace(&mut message.queue_id, 0);
    message.properties.retain(|(k, _)| !INTERNAL.contains(&k.as_str()));
    message.properties.extend([
        (PROP_REAL_TOPIC.to_owned(), real_topic),
        (PROP_REAL_QUEUE_ID.to_owned(), real_queue.to_string()),
        (PROP_TRANSACTION.to_owned(), "true".to_owned()),
        (PROP_PRODUCER_GROUP.to_owned(), group.to_owned()),
    ]);
    message.properties.sort_unstable();
}

/// The real topic and queue a stored half names; `None` when `m` is not a half message.
fn real_of(m: &StoredMessage) -> Option<(String, u32)> {
    if m.topic() != TRANSACTION_HALF_TOPIC || m.property(PROP_TRANSACTION) != Some("true") {
        return None;
    }
    let topic = m.property(PROP_REAL_TOPIC)?.to_owned();
    let queue = m.property(PROP_REAL_QUEUE_ID)?.parse().ok()?;
    Some((topic, queue))
}

/// Rebuilds the unresolved halves from the half and op queues. Blocking; called when the broker opens.
///
/// Only the recent past is read: a half older than its last possible check-back (`check-delay + check-max x
/// check-interval`) while the broker was running has been resolved by its producer or the policy, so replay
/// starts at the newest op record's time minus twice that (plus a minute). Ops are read first, so a resolved
/// half is never held in memory: memory is bounded by the halves of that horizon, not by retention.
pub fn recover(broker: &Broker) -> Result<()> {
    let started = std::time::Instant::now();
    let table = &broker.transactions;
    let m = &broker.config.messaging;
    let bound = m
        .transaction_check_delay_ms
        .saturating_add(m.transaction_check_interval_ms.saturating_mul(u64::from(m.transaction_check_max)));
    let last_op_ms = broker
        .store
        .queue_range(TRANSACTION_OP_TOPIC, 0)
        .filter(|(min, max)| max.0 > min.0)
        .and_then(|(_, max)| broker.store.store_time_at(TRANSACTION_OP_TOPIC, 0, QueueOffset(max.0 - 1)))
        .unwrap_or(0);
    let horizon = if last_op_ms == 0 { 0 } else { last_op_ms.saturating_sub(bound.saturating_mul(2) + 60_000) };
    let mut ops = Vec::new();
    for_each(broker, TRANSACTION_OP_TOPIC, horizon, |m| {
        if let Some(op) = Op::decode(&m.body()) {
            ops.push((op, m.store_timestamp()));
        }
    })?;
    let resolved: std::collections::HashSet<u64> = ops
        .iter()
        .filter_map(|(op, _)| match op {
            Op::Resolved { half_offset, .. } => Some(*half_offset),
            Op::Checked { .. } => None,
        })
        .collect();
    let mut halves = 0usize;
    for_each(broker, TRANSACTION_HALF_TOPIC, horizon, |m| {
        if real_of(m).is_some() && !resolved.contains(&m.physical_offset().0) {
            let group = m.property(PROP_PRODUCER_GROUP).unwrap_or_default().to_owned();
            table.add(m.physical_offset().0, m.msg_id().to_owned(), group, m.store_timestamp(), true);
            halves += 1;
        }
    })?;
    let interval = m.transaction_check_interval_ms;
    for (op, at) in &ops {
        if matches!(op, Op::Checked { .. }) {
            table.apply(*op, *at, interval);
        }
    }
    if halves > 0 || !ops.is_empty() {
        tracing::info!(
            horizon_ms = horizon,
            halves,
            ops = ops.len(),
            unresolved = table.pending_len(),
            elapsed = ?started.elapsed(),
            "transaction state rebuilt from the half and op queues"
        );
    }
    Ok(())
}

/// Calls `f` on every message of queue 0 of `topic` stored at or after `since_ms`, in order.
fn for_each(broker: &Broker, topic: &str, since_ms: u64, mut f: impl FnMut(&StoredMessage)) -> Result<()> {
    let Some((min, max)) = broker.store.queue_range(topic, 0) else { return Ok(()) };
    let mut from = if since_ms == 0 { min } else { broker.store.offset_by_time(topic, 0, since_ms).unwrap_or(min) };
    from = from.max(min);
    while from < max {
        let got = broker.store.get_messages(topic, 0, from, 1_000, 16 << 20, None)?;
        for m in &got.messages {
            f(m);
        }
        if got.next_offset <= from {
            break;
        }
        from = got.next_offset;
    }
    Ok(())
}

/// Records a stored half in the table (after its append).
pub fn added(broker: &Broker, half_offset: u64, msg_id: &str, group: &str, stored_ms: u64) {
    broker.transactions.add(half_offset, msg_id.to_owned(), group.to_owned(), stored_ms, false);
}

/// EndTransaction: commit, rollback, or (from a check-back) unknown.
pub async fn end(broker: &Arc<Broker>, request: pb::EndTransactionRequest) -> Result<pb::EndTransactionResponse> {
    check_group(&request.producer_group)?;
    if request.message_id.is_empty() {
        return Err(BrokerError::invalid("message_id", "the half message's id is required"));
    }
    broker.require_master("end transaction")?;
    let outcome = match pb::TransactionResolution::try_from(request.resolution) {
        Ok(pb::TransactionResolution::Commit) => Some(Outcome::Commit),
        Ok(pb::TransactionResolution::Rollback) => Some(Outcome::Rollback),
        Ok(pb::TransactionResolution::Unknown) => None,
        Ok(pb::TransactionResolution::Unspecified) | Err(_) => {
            return Err(BrokerError::invalid("resolution", "must be COMMIT, ROLLBACK or UNKNOWN"));
        }
    };
    let offset = request.commit_log_offset;
    let resolved = match outcome {
        Some(outcome) => Some(resolve(broker, offset, &request.message_id, outcome).await?),
        None => match broker.transactions.pending(offset) {
            Some(half) if half.msg_id == request.message_id => None,
            Some(_) => return Err(mismatch(offset, &request.message_id)),
            None => Some(resolve(broker, offset, &request.message_id, Outcome::Rollback).await?),
        },
    };
    Ok(match resolved {
        None => pb::EndTransactionResponse { resolution: pb::TransactionResolution::Unknown as i32, committed: None },
        Some(r) => pb::EndTransactionResponse {
            resolution: if r.outcome.committed() {
                pb::TransactionResolution::Commit as i32
            } else {
                pb::TransactionResolution::Rollback as i32
            },
            committed: r.committed.map(|c| pb::SendResult {
                message_id: request.message_id.clone(),
                queue_id: c.queue_id,
                queue_offset: c.queue_offset,
                commit_log_offset: c.commit_log_offset,
                duplicate: false,
                deliver_at_millis: 0,
            }),
        },
    })
}

fn mismatch(offset: u64, id: &str) -> BrokerError {
    BrokerError::MessageNotFound { what: format!("id {id:?} as a half message at commit-log offset {offset}") }
}

/// Resolves the half at `offset` (which must carry `id`) as `outcome`, once: an already resolved half answers
/// its first resolution. A not-pending half is answered from the store (a committed copy, or a rollback).
pub(crate) async fn resolve(broker: &Arc<Broker>, offset: u64, id: &str, outcome: Outcome) -> Result<Resolved> {
    if let Some((half_id, r)) = broker.transactions.resolved(offset) {
        return if half_id == id { Ok(r) } else { Err(mismatch(offset, id)) };
    }
    let Some(half) = broker.transactions.pending(offset) else { return from_store(broker, offset, id).await };
    if half.msg_id != id {
        return Err(mismatch(offset, id));
    }
    let held = Arc::clone(&half.lock).lock_owned().await;
    // Detached: a caller that gives up (timeout, disconnect) must not interrupt a commit between storing the
    // visible copy and recording the resolution, or a retry would commit twice.
    let broker = Arc::clone(broker);
    tokio::spawn(async move {
        let _held = held;
        resolve_locked(&broker, offset, outcome).await
    })
    .await
    .map_err(|e| BrokerError::Internal(format!("resolution task failed: {e}")))?
}

/// [`resolve`] with the half's lock held.
async fn resolve_locked(broker: &Arc<Broker>, offset: u64, outcome: Outcome) -> Result<Resolved> {
    if let Some((_, r)) = broker.transactions.resolved(offset) {
        return Ok(r);
    }
    let Some(half) = broker.transactions.pending(offset) else {
        return Err(BrokerError::Internal(format!("half message at {offset} left the table while locked")));
    };
    let stored = broker.blocking(move |b| Ok(b.store.read(CommitLogOffset(offset))?)).await?;
    let Some((real_topic, real_queue)) = real_of(&stored).filter(|_| stored.msg_id() == half.msg_id) else {
        return Err(mismatch(offset, &half.msg_id));
    };
    if half.recovered {
        if let Some(committed) = find_committed(broker, &stored, &real_topic).await? {
            tracing::info!(id = %half.msg_id, half_offset = offset, "half message found committed after a restart");
            let resolved = Resolved { outcome: Outcome::Commit, committed: Some(committed) };
            broker.transactions.resolve(offset, resolved.clone());
            write_op(broker, Op::Resolved { half_offset: offset, outcome: Outcome::Commit }).await?;
            return Ok(resolved);
        }
        broker.transactions.verified(offset);
    }
    let committed = if outcome.committed() {
        let topic = broker.topic(&real_topic)?;
        if real_queue >= topic.write_queue_nums {
            return Err(BrokerError::invalid(
                "commit_log_offset",
                format!("queue {real_queue} of {real_topic:?} no longer exists (0..{})", topic.write_queue_nums),
            ));
        }
        let copy = copy_to(
            &stored,
            &real_topic,
            real_queue,
            Copy { drop: INTERNAL, prepared_transaction_offset: offset, ..Copy::default() },
        );
        let body_bytes = copy.body.len() as u64;
        let results = match broker.append_internal(vec![copy]).await {
            Ok(results) => results,
            Err(e) => {
                // The copy may be stored (a sync-replication wait failed after the append): the next attempt
                // looks for it before committing again.
                broker.transactions.suspect(offset);
                return Err(e);
            }
        };
        let r = results.first().ok_or_else(|| BrokerError::Internal("a commit stored nothing".into()))?;
        broker.metrics.sent(&real_topic, comet_model::MessageType::Transaction, 1, body_bytes);
        Some(Committed {
            topic: real_topic,
            queue_id: real_queue,
            queue_offset: r.queue_offset.0,
            commit_log_offset: r.offset.0,
        })
    } else {
        None
    };
    let resolved = Resolved { outcome, committed };
    let op = write_op(broker, Op::Resolved { half_offset: offset, outcome }).await;
    match op {
        Ok(()) => broker.transactions.resolve(offset, resolved.clone()),
        Err(e) if outcome.committed() => {
            // The copy is stored: the commit stands. Without its op record the half is found unresolved at the
            // next start and then recognised as committed through the index.
            tracing::warn!(id = %half.msg_id, error = %e, "commit stored but its op record failed");
            broker.transactions.resolve(offset, resolved.clone());
        }
        Err(e) => return Err(e),
    }
    broker.metrics.transaction_resolved(outcome.label());
    Ok(resolved)
}

/// A half no longer pending (resolved before the resolution cache remembers, or before a restart): committed if
/// a copy naming it exists, otherwise rolled back.
async fn from_store(broker: &Arc<Broker>, offset: u64, id: &str) -> Result<Resolved> {
    let read = broker.blocking(move |b| Ok(b.store.read(CommitLogOffset(offset)).ok())).await?;
    let Some(stored) = read.filter(|m| m.msg_id() == id) else { return Err(mismatch(offset, id)) };
    let Some((real_topic, _)) = real_of(&stored) else { return Err(mismatch(offset, id)) };
    let committed = find_committed(broker, &stored, &real_topic).await?;
    let outcome = if committed.is_some() { Outcome::Commit } else { Outcome::Rollback };
    Ok(Resolved { outcome, committed })
}

/// The visible copy of a committed half, looked up in the message-id index.
async fn find_committed(broker: &Arc<Broker>, half: &StoredMessage, real_topic: &str) -> Result<Option<Committed>> {
    let (id, since, offset, topic) =
        (half.msg_id().to_owned(), half.store_timestamp(), half.physical_offset().0, real_topic.to_owned());
    broker
        .blocking(move |b| {
            let copies = b.store.query_all_by_id(&id, MAX_COPIES, since, u64::MAX)?;
            Ok(copies.iter().find(|m| m.topic() == topic && m.prepared_transaction_offset() == offset).map(|m| {
                Committed {
                    topic: topic.clone(),
                    queue_id: m.queue_id(),
                    queue_offset: m.queue_offset().0,
                    commit_log_offset: m.physical_offset().0,
                }
            }))
        })
        .await
}

/// Appends one op record (queue 0 of the op topic, created on first use).
async fn write_op(broker: &Arc<Broker>, op: Op) -> Result<()> {
    broker.ensure_system_topic(TRANSACTION_OP_TOPIC).await?;
    let mut record = NewMessage::new(TRANSACTION_OP_TOPIC, 0, op.encode().into_bytes());
    record.msg_id = broker.next_message_id();
    record.born_timestamp = now_ms();
    broker.append_internal(vec![record]).await?;
    Ok(())
}

/// WatchTransactionChecks: a stream of check-backs for the group's halves while the producer keeps it open.
pub fn watch(
    broker: &Broker,
    request: &pb::WatchTransactionChecksRequest,
) -> Result<tokio::sync::mpsc::Receiver<pb::TransactionCheck>> {
    check_group(&request.producer_group)?;
    broker.require_master("watch transaction checks")?;
    let stream = broker.check_streams.open(&request.producer_group).ok_or_else(|| BrokerError::Busy {
        reason: format!("{} check streams open", crate::domain::transactions::MAX_CHECK_STREAMS),
    })?;
    tracing::debug!(group = %request.producer_group, client = %request.client_id, "transaction check stream opened");
    Ok(stream)
}

/// Starts the check-back service on a master (`None` on a slave: its master checks).
pub fn spawn_checker(broker: &Arc<Broker>) -> Option<JoinHandle<()>> {
    if broker.config.is_slave() {
        return None;
    }
    let broker = Arc::clone(broker);
    // Once a second, or more often when check-backs are configured closer together (tests).
    let period = Duration::from_millis(broker.config.messaging.transaction_check_interval_ms.clamp(50, 1_000));
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if broker.waiters.is_stopping() {
                return;
            }
            check_due(&broker).await;
        }
    }))
}

/// One pass: every due half is checked back, or given the policy when its checks are used up.
async fn check_due(broker: &Arc<Broker>) {
    let m = &broker.config.messaging;
    let due = broker.transactions.due(now_ms(), m.transaction_check_delay_ms, CHECKS_PER_PASS);
    for d in due {
        // A half being resolved right now is skipped; the next pass sees what it became.
        let Ok(_held) = Arc::clone(&d.half.lock).try_lock_owned() else { continue };
        if let Err(e) = check_one(broker, d.half_offset).await {
            tracing::warn!(id = %d.half.msg_id, group = %d.half.group, error = %e, "transaction check-back failed");
        }
    }
}

/// Checks back (or applies the policy to) the half at `offset`; its lock is held by the caller.
async fn check_one(broker: &Arc<Broker>, offset: u64) -> Result<()> {
    let m = &broker.config.messaging;
    let Some(half) = broker.transactions.pending(offset) else { return Ok(()) };
    if half.checks >= m.transaction_check_max {
        let outcome = match m.transaction_check_policy {
            TransactionCheckPolicy::Rollback => Outcome::PolicyRollback,
            TransactionCheckPolicy::Commit => Outcome::PolicyCommit,
        };
        let resolved = resolve_locked(broker, offset, outcome).await?;
        tracing::warn!(
            id = %half.msg_id,
            group = %half.group,
            checks = half.checks,
            resolution = resolved.outcome.label(),
            "transaction unresolved after its last check-back: policy applied"
        );
        return Ok(());
    }
    let stored = broker.blocking(move |b| Ok(b.store.read(CommitLogOffset(offset))?)).await?;
    let Some((real_topic, real_queue)) = real_of(&stored).filter(|_| stored.msg_id() == half.msg_id) else {
        // Retention deleted it, or the log was truncated under it: nothing to check any more.
        tracing::warn!(id = %half.msg_id, half_offset = offset, "half message no longer readable; dropped");
        broker.transactions.resolve(offset, Resolved { outcome: Outcome::PolicyRollback, committed: None });
        return Ok(());
    };
    if half.recovered {
        if let Some(committed) = find_committed(broker, &stored, &real_topic).await? {
            let resolved = Resolved { outcome: Outcome::Commit, committed: Some(committed) };
            broker.transactions.resolve(offset, resolved);
            return write_op(broker, Op::Resolved { half_offset: offset, outcome: Outcome::Commit }).await;
        }
        broker.transactions.verified(offset);
    }
    let times = half.checks + 1;
    let (live, sent) = if half.group == V2_PRODUCER_GROUP {
        // A RocketMQ 5 producer's half: a live v2 producer of the topic answers with EndTransaction.
        let command = crate::v2::send::recover_command(&stored, &real_topic, real_queue);
        (broker.sessions.live_publishers(&real_topic), broker.sessions.send_to_publisher(&real_topic, command))
    } else {
        let mut message = convert::message_to_proto(&stored);
        message.topic = real_topic;
        message.queue_id = real_queue;
        message.queue_offset = 0;
        message.properties.retain(|k, _| !INTERNAL.contains(&k.as_str()));
        message.properties.insert(PROP_TRANSACTION_CHECK_TIMES.to_owned(), times.to_string());
        let check = pb::TransactionCheck { message: Some(message), commit_log_offset: offset, check_times: times };
        (broker.check_streams.live(&half.group), broker.check_streams.send(&half.group, check))
    };
    if !sent && live > 0 {
        // Live producers, all with full streams (a slow checker): this check did not reach one, so it does not
        // count towards the limit; the next pass tries again.
        tracing::debug!(id = %half.msg_id, group = %half.group, "check-back deferred: every producer stream is full");
        return Ok(());
    }
    // Counted when a producer received it, or when none is live (a producer gone for good meets the policy).
    let op = Op::Checked { half_offset: offset, times };
    write_op(broker, op).await?;
    broker.transactions.apply(op, now_ms(), m.transaction_check_interval_ms);
    broker.metrics.transaction_checked();
    tracing::debug!(id = %half.msg_id, group = %half.group, times, sent, "transaction checked back");
    Ok(())
}
