//! ConsumerSendBack and ResendDeadLetters: a message a group's listener failed goes back to that group, and only
//! that group, through `%RETRY%<group>` after a growing delay (waiting in the timer topic), and after the group's
//! last retry to `%DLQ%<group>`; an operator re-sends dead letters to the topic they were first sent to. Every
//! copy keeps the message id, tags, keys, body and properties.

use std::sync::Arc;

use comet_model::CommitLogOffset;
use comet_model::system::{PROP_ORIGIN_MESSAGE_ID, PROP_ORIGIN_TOPIC, TIMER_TOPIC, dlq_topic, retry_topic};
use comet_proto::comet::v1 as pb;
use comet_store::StoredMessage;

use super::{check_group, check_topic};
use crate::broker::{Broker, now_ms};
use crate::domain::copy::{Copy, copy_to};
use crate::domain::groups::GroupConfig;
use crate::domain::retry::{SendBackOutcome, is_dead_letter, retry_delay_ms};
use crate::domain::timer::{self, TIMER_PROPERTIES};
use crate::error::{BrokerError, Result};

/// Most dead letters one ResendDeadLetters call re-sends (a tool re-sends a long queue in several calls).
pub const MAX_RESEND_BATCH: usize = 256;

/// Properties a dead letter loses when it goes back to its original topic (it is an ordinary message again).
const RESEND_DROPPED: &[&str] = &[
    PROP_ORIGIN_TOPIC,
    PROP_ORIGIN_MESSAGE_ID,
    comet_model::system::PROP_REAL_TOPIC,
    comet_model::system::PROP_REAL_QUEUE_ID,
    comet_model::system::PROP_DELIVER_AT,
];

/// Stores another attempt of the failed message (or its dead letter) and answers what was done. A repeat of a
/// send-back already done (the consumer retrying after a timeout) stores nothing and answers the first result.
pub async fn send_back(
    broker: &Arc<Broker>,
    request: pb::ConsumerSendBackRequest,
) -> Result<pb::ConsumerSendBackResponse> {
    check_group(&request.group)?;
    check_topic(&request.topic)?;
    if request.message_id.is_empty() || request.message_id.len() > comet_store::record::MAX_MSG_ID_LEN {
        return Err(BrokerError::invalid("message_id", "must be 1..=128 bytes"));
    }
    if broker.waiters.is_stopping() {
        return Err(BrokerError::ShuttingDown);
    }
    broker.require_master("send back")?;
    let offset = CommitLogOffset(request.commit_log_offset);
    let record = broker.blocking(move |b| read_record(b, offset)).await?;
    if record.msg_id() != request.message_id {
        return Err(BrokerError::invalid(
            "message_id",
            format!(
                "the record at commit-log offset {} is message {:?}, not {:?}",
                request.commit_log_offset,
                record.msg_id(),
                request.message_id
            ),
        ));
    }
    if record.topic() != request.topic {
        return Err(BrokerError::invalid(
            "topic",
            format!(
                "message {:?} is stored in topic {:?}, not {:?}",
                request.message_id,
                record.topic(),
                request.topic
            ),
        ));
    }
    let slot = broker.send_backs.slot(&request.group, offset, now_ms());
    // Detached: a consumer that gives up must not interrupt the copy between its append and the slot that
    // answers the consumer's retry (which would store a second copy).
    let task = {
        let broker = Arc::clone(broker);
        tokio::spawn(async move { slot.get_or_try_init(|| store_attempt(&broker, &request, &record)).await.copied() })
    };
    let outcome: SendBackOutcome =
        task.await.map_err(|e| BrokerError::Internal(format!("send-back task failed: {e}")))??;
    // With sync replication, acknowledged (the first time and on a repeat) once the slaves hold the copy.
    if broker.ha.is_sync() {
        broker.ha.wait_replicated(outcome.stored.1, outcome.stored.0).await?;
    }
    Ok(pb::ConsumerSendBackResponse {
        dead_lettered: outcome.dead_lettered,
        reconsume_times: outcome.reconsume_times,
        deliver_at_millis: outcome.deliver_at_ms,
    })
}

/// Stores the next attempt of the failed `record` (the one the consumer named), or its dead letter once the
/// group's retries are used up.
async fn store_attempt(
    broker: &Arc<Broker>,
    request: &pb::ConsumerSendBackRequest,
    record: &StoredMessage,
) -> Result<SendBackOutcome> {
    let group = broker.groups.get(&request.group).unwrap_or_else(|| GroupConfig::new(request.group.as_str()));
    let attempts = record.reconsume_times().saturating_add(1);
    let origin_topic = record.property(PROP_ORIGIN_TOPIC).unwrap_or(record.topic()).to_owned();
    let origin_id = record.property(PROP_ORIGIN_MESSAGE_ID).unwrap_or(record.msg_id()).to_owned();
    let copy = Copy {
        drop: TIMER_PROPERTIES,
        set: vec![(PROP_ORIGIN_TOPIC.to_owned(), origin_topic), (PROP_ORIGIN_MESSAGE_ID.to_owned(), origin_id)],
        reconsume_times: attempts,
        prepared_transaction_offset: 0,
    };
    if is_dead_letter(attempts, group.retry_max_times, request.dead_letter) {
        let dlq = dlq_topic(&request.group);
        broker.ensure_system_topic(&dlq).await?;
        let stored = span(&broker.store_internal(vec![copy_to(record, &dlq, 0, copy)]).await?)?;
        broker.metrics.sent_back(&request.group, true);
        tracing::info!(group = %request.group, message_id = %request.message_id, attempts, "message dead-lettered");
        return Ok(SendBackOutcome { dead_lettered: true, reconsume_times: attempts, deliver_at_ms: 0, stored });
    }
    let delay = match request.delay_millis {
        0 => retry_delay_ms(&group.retry_delays_ms, &broker.config.messaging.retry_delays_ms, attempts),
        d => d,
    }
    .min(broker.config.messaging.max_delay_ms);
    let deliver_at = now_ms().saturating_add(delay);
    let retry = retry_topic(&request.group);
    broker.ensure_system_topic(&retry).await?;
    broker.ensure_system_topic(TIMER_TOPIC).await?;
    let stored = span(&broker.store_internal(vec![timer::wrap(copy_to(record, &retry, 0, copy), deliver_at)]).await?)?;
    broker.metrics.sent_back(&request.group, false);
    tracing::debug!(group = %request.group, message_id = %request.message_id, attempts, delay, "retry scheduled");
    Ok(SendBackOutcome { dead_lettered: false, reconsume_times: attempts, deliver_at_ms: deliver_at, stored })
}

/// The CommitLog span (start, end) of one stored copy.
fn span(results: &[comet_store::AppendResult]) -> Result<(u64, u64)> {
    let r = results.first().ok_or_else(|| BrokerError::Internal("a send-back stored nothing".into()))?;
    Ok((r.offset.0, r.offset.0 + u64::from(r.size)))
}

/// The record starting at `offset`; NOT_FOUND when no record starts there (or retention removed it).
fn read_record(broker: &Broker, offset: CommitLogOffset) -> Result<StoredMessage> {
    match broker.store.read(offset) {
        Ok(record) => Ok(record),
        // An offset inside a record (or past the log) decodes as garbage: the consumer named no record.
        Err(
            comet_store::Error::NoRecord { .. }
            | comet_store::Error::OffsetMoved { .. }
            | comet_store::Error::Corrupt { .. },
        ) => Err(BrokerError::MessageNotFound { what: format!("commit-log offset {}", offset.0) }),
        Err(e) => Err(e.into()),
    }
}

/// Re-sends the selected dead letters of a group to their original topics (one queue of it, chosen round robin
/// per call) as new messages: attempt count 0, the same id, tags, keys, body and user properties.
pub async fn resend_dead_letters(
    broker: &Arc<Broker>,
    request: pb::ResendDeadLettersRequest,
) -> Result<pb::ResendDeadLettersResponse> {
    check_group(&request.group)?;
    if request.queue_offsets.len() > MAX_RESEND_BATCH {
        return Err(BrokerError::invalid(
            "queue_offsets",
            format!("at most {MAX_RESEND_BATCH} per call; re-send in several calls"),
        ));
    }
    broker.require_master("dead-letter re-send")?;
    let dlq = dlq_topic(&request.group);
    broker.topic(&dlq)?;
    let selected = broker.blocking(move |b| select_dead_letters(b, &dlq, &request)).await?;
    let mut response = pb::ResendDeadLettersResponse::default();
    match resend(broker, selected, &mut response).await {
        Ok(()) => Ok(response),
        // Some were re-sent: answer those (the operator's re-run must not send them twice) and log the rest.
        Err(e) if !response.results.is_empty() => {
            tracing::warn!(resent = response.results.len(), error = %e, "dead-letter re-send stopped early");
            Ok(response)
        }
        Err(e) => Err(e),
    }
}

/// Re-sends `selected` in order, recording each success in `response` as it happens.
async fn resend(
    broker: &Arc<Broker>,
    selected: Vec<StoredMessage>,
    response: &mut pb::ResendDeadLettersResponse,
) -> Result<()> {
    for letter in selected {
        let Some(origin) = letter.property(PROP_ORIGIN_TOPIC).map(str::to_owned) else {
            tracing::warn!(
                message_id = letter.msg_id(),
                offset = letter.queue_offset().0,
                "dead letter without an original topic; not re-sent"
            );
            continue;
        };
        let name = origin.clone();
        let topic = broker.blocking(move |b| b.topic_for_send(&name)).await?;
        if !topic.perm.is_writable() {
            return Err(BrokerError::NotPermitted {
                what: "write",
                reason: format!("topic {origin:?} has permission {}", topic.perm),
            });
        }
        let queue_id = broker.next_queue(topic.write_queue_nums);
        let copy = Copy { drop: RESEND_DROPPED, ..Copy::default() };
        let message = copy_to(&letter, &origin, queue_id, copy);
        let stored = broker.append_internal(vec![message]).await?;
        let Some(stored) = stored.first() else { continue };
        response.results.push(pb::SendResult {
            message_id: letter.msg_id().to_owned(),
            queue_id,
            queue_offset: stored.queue_offset.0,
            commit_log_offset: stored.offset.0,
            duplicate: false,
            deliver_at_millis: 0,
        });
        response.queue_offsets.push(letter.queue_offset().0);
        tracing::info!(message_id = letter.msg_id(), topic = %origin, queue_id, "dead letter re-sent");
    }
    Ok(())
}

/// The dead letters a request names: the listed queue offsets, else those in `[from_offset, to_offset)` (at most
/// [`MAX_RESEND_BATCH`]), keeping only the listed message ids when some are given.
fn select_dead_letters(
    broker: &Broker,
    dlq: &str,
    request: &pb::ResendDeadLettersRequest,
) -> Result<Vec<StoredMessage>> {
    let Some((min, max)) = broker.store.queue_range(dlq, 0) else { return Ok(Vec::new()) };
    let wanted =
        |m: &StoredMessage| request.message_ids.is_empty() || request.message_ids.iter().any(|id| id == m.msg_id());
    let read = |from: u64, count: usize| -> Result<Vec<StoredMessage>> {
        let got = broker.store.get_messages(dlq, 0, comet_model::QueueOffset(from), count, usize::MAX, None)?;
        Ok(got.messages)
    };
    let mut out = Vec::new();
    if request.queue_offsets.is_empty() {
        let end = if request.to_offset == 0 { max.0 } else { request.to_offset.min(max.0) };
        let mut next = request.from_offset.max(min.0);
        while next < end && out.len() < MAX_RESEND_BATCH {
            let batch = read(next, 64)?;
            let Some(last) = batch.last() else { break };
            next = last.queue_offset().0 + 1;
            out.extend(batch.into_iter().filter(|m| m.queue_offset().0 < end && wanted(m)));
        }
        out.truncate(MAX_RESEND_BATCH);
    } else {
        for &offset in &request.queue_offsets {
            if offset < min.0 || offset >= max.0 {
                return Err(BrokerError::MessageNotFound { what: format!("dead-letter queue offset {offset}") });
            }
            out.extend(read(offset, 1)?.into_iter().filter(|m| m.queue_offset().0 == offset && wanted(m)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use comet_model::system::{PROP_DELIVER_AT, PROP_REAL_QUEUE_ID, PROP_REAL_TOPIC};
    use comet_store::NewMessage;

    fn broker(dir: &std::path::Path) -> Arc<Broker> {
        let mut config = crate::config::Config::default();
        config.store = crate::config::test_store(dir);
        config.messaging.retry_delays_ms = vec![1_000, 5_000];
        Broker::open(config, "127.0.0.1:1".into()).unwrap()
    }

    fn props(m: &StoredMessage) -> Vec<(String, String)> {
        m.properties().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
    }

    fn at(b: &Broker, topic: &str) -> Vec<StoredMessage> {
        b.store.get_messages(topic, 0, comet_model::QueueOffset(0), 100, usize::MAX, None).unwrap().messages
    }

    /// Waits until the dispatcher indexed `n` messages of the topic's queue 0.
    async fn settled(b: &Broker, topic: &str, n: usize) -> Vec<StoredMessage> {
        for _ in 0..500 {
            let found = at(b, topic);
            if found.len() >= n {
                return found;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{topic} never held {n} messages");
    }

    fn request(m: &StoredMessage) -> pb::ConsumerSendBackRequest {
        pb::ConsumerSendBackRequest {
            group: "g".into(),
            topic: m.topic().into(),
            queue_id: m.queue_id(),
            queue_offset: m.queue_offset().0,
            commit_log_offset: m.physical_offset().0,
            message_id: m.msg_id().into(),
            dead_letter: false,
            delay_millis: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retry_and_dead_letter_copies_keep_the_message_and_a_repeated_send_back_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let b = broker(dir.path());
        b.topic_for_send("orders").unwrap();
        let original = NewMessage {
            topic: "orders".into(),
            queue_id: 0,
            msg_id: "ID1".into(),
            tags: "TagA".into(),
            keys: "k1 k2".into(),
            properties: vec![("user".into(), "v".into())],
            body: bytes::Bytes::from_static(b"hello"),
            flag: 7,
            sys_flag: 0,
            born_timestamp: 1,
            born_host: "10.0.0.9:5".parse().unwrap(),
            reconsume_times: 0,
            prepared_transaction_offset: 0,
        };
        b.append_internal(vec![original]).await.unwrap();
        let stored = settled(&b, "orders", 1).await.remove(0);

        // The first failure: a retry copy waiting in the timer topic for %RETRY%g, due after the first delay.
        let before = now_ms();
        let first = send_back(&b, request(&stored)).await.unwrap();
        assert!(!first.dead_lettered);
        assert_eq!(first.reconsume_times, 1);
        assert!(first.deliver_at_millis >= before + 1_000 && first.deliver_at_millis <= now_ms() + 1_000);
        let again = send_back(&b, request(&stored)).await.unwrap();
        assert_eq!(again, first, "a repeated send-back answers the first result");
        let waiting = settled(&b, TIMER_TOPIC, 1).await;
        assert_eq!(waiting.len(), 1, "and stores nothing more");
        let w = &waiting[0];
        assert_eq!((w.msg_id(), w.tags(), w.keys(), w.body().as_ref()), ("ID1", "TagA", "k1 k2", &b"hello"[..]));
        assert_eq!((w.flag(), w.reconsume_times()), (7, 1));
        let deliver_at = first.deliver_at_millis.to_string();
        let expected: Vec<(String, String)> = vec![
            (PROP_ORIGIN_MESSAGE_ID.into(), "ID1".into()),
            (PROP_ORIGIN_TOPIC.into(), "orders".into()),
            (PROP_REAL_QUEUE_ID.into(), "0".into()),
            (PROP_REAL_TOPIC.into(), "%RETRY%g".into()),
            (PROP_DELIVER_AT.into(), deliver_at),
            ("user".into(), "v".into()),
        ];
        let mut got = props(w);
        got.sort();
        let mut expected = expected;
        expected.sort();
        assert_eq!(got, expected);
        assert!(b.topics.get("%RETRY%g").is_some());

        // Refused: another id at that offset, or another topic.
        let mut wrong = request(&stored);
        wrong.message_id = "ID2".into();
        assert!(matches!(send_back(&b, wrong).await, Err(BrokerError::Invalid { field: "message_id", .. })));
        let mut wrong = request(&stored);
        wrong.topic = "payments".into();
        wrong.commit_log_offset += 1;
        assert!(send_back(&b, wrong).await.is_err());

        // The consumer gives up: straight to the dead-letter queue, attempt count kept.
        let mut give_up = request(&stored);
        give_up.group = "g2".into();
        give_up.dead_letter = true;
        let dead = send_back(&b, give_up).await.unwrap();
        assert!(dead.dead_lettered && dead.deliver_at_millis == 0);
        let letters = settled(&b, "%DLQ%g2", 1).await;
        let l = &letters[0];
        assert_eq!((l.msg_id(), l.tags(), l.keys(), l.reconsume_times()), ("ID1", "TagA", "k1 k2", 1));
        assert_eq!(l.property(PROP_ORIGIN_TOPIC), Some("orders"));
        assert_eq!(l.property(PROP_REAL_TOPIC), None);

        // Re-sent to the original topic as a fresh message.
        let resent = resend_dead_letters(&b, pb::ResendDeadLettersRequest { group: "g2".into(), ..Default::default() })
            .await
            .unwrap();
        assert_eq!(resent.queue_offsets, vec![0]);
        assert_eq!(resent.results.len(), 1);
        let back = b.store.read(CommitLogOffset(resent.results[0].commit_log_offset)).unwrap();
        assert_eq!((back.topic(), back.msg_id(), back.tags(), back.reconsume_times()), ("orders", "ID1", "TagA", 0));
        assert_eq!(props(&back), vec![("user".to_owned(), "v".to_owned())]);
        let none = resend_dead_letters(
            &b,
            pb::ResendDeadLettersRequest {
                group: "g2".into(),
                message_ids: vec!["other".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(none.results.is_empty(), "the id filter selects nothing");
        assert!(matches!(
            resend_dead_letters(&b, pb::ResendDeadLettersRequest { group: "g".into(), ..Default::default() }).await,
            Err(BrokerError::TopicNotFound { .. })
        ));
    }
}
