//! The Java PullConsumer's RPCs on the native pull model: PullMessage, UpdateOffset, GetOffset, QueryOffset.
//!
//! A v2 pull is the native pull of `handler/pull.rs` (same long-poll waiters, same tag filter, same metrics), and
//! the offsets are the native consumer offsets of `handler/offset.rs`: an UpdateOffset is what `comet group
//! describe` shows and where a native consumer of the group continues. The stream layout follows the RocketMQ
//! proxy: `[status OK, message..., next_offset]` when messages were found, `[MESSAGE_NOT_FOUND, next_offset]` after
//! a long poll with nothing new (or nothing matching the filter), `[ILLEGAL_OFFSET, next_offset]` for an offset
//! before the queue's first or after its end (next_offset = where to continue), and `[status]` alone for any
//! other error.

use std::sync::Arc;
use std::time::Duration;

use comet_model::QueueOffset;
use comet_proto::apache::rocketmq::v2 as pb;
use comet_store::{GetMessages, GetStatus};
use pb::pull_message_response::Content;
use tonic::Request;

use crate::broker::Broker;
use crate::domain::filter::TagFilter;
use crate::error::{BrokerError, Result};
use crate::handler::{offset, pull, query};
use crate::v2::context::Caller;
use crate::v2::digest::md5_bodies;
use crate::v2::{BoxStream, convert, status, wire};

/// Taken off the client's deadline so a long poll answers before the client gives up.
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);

/// PullMessage: `[status, message..., next_offset]` (module doc).
pub async fn pull_message(
    broker: &Arc<Broker>,
    request: Request<pb::PullMessageRequest>,
) -> BoxStream<pb::PullMessageResponse> {
    let caller = Caller::of(request.metadata());
    let request = request.into_inner();
    let items = match pull_items(broker, &caller, request).await {
        Ok(items) => items,
        Err(e) => vec![Content::Status(error_status(&e))],
    };
    let items = items.into_iter().map(|content| {
        let content = match content {
            Content::Status(s) => Content::Status(status::for_language(s, &caller.language)),
            other => other,
        };
        Ok(pb::PullMessageResponse { content: Some(content) })
    });
    Box::pin(tokio_stream::iter(items.collect::<Vec<_>>()))
}

/// The stream items of a pull, or the error that answers it.
async fn pull_items(broker: &Arc<Broker>, caller: &Caller, request: pb::PullMessageRequest) -> Result<Vec<Content>> {
    let group = convert::resource_name(request.group.as_ref(), "group")?;
    let (topic, queue_id) = queue_of(request.message_queue.as_ref())?;
    let offset = u64::try_from(request.offset)
        .map_err(|_| BrokerError::OutOfRange { field: "offset", reason: format!("{} is negative", request.offset) })?;
    let filter = filter_of(request.filter_expression.as_ref())?;
    let max_count = u32::try_from(request.batch_size)
        .map_err(|_| BrokerError::invalid("batch_size", format!("{} is negative", request.batch_size)))?;
    let max_hold = Duration::from_millis(broker.config.rocketmq_v2.long_poll_max_ms);
    let query = pull::PullQuery {
        group,
        topic,
        queue_id,
        offset: QueueOffset(offset),
        max_count,
        max_bytes: 0,
        wait: hold(request.long_polling_timeout.as_ref(), caller.deadline, max_hold),
        filter: Arc::new(filter),
    };
    let (got, from) = pull::pull_queue(broker, &query).await?;
    Ok(items(got, from))
}

/// The stream items answering a read from `from`.
fn items(got: GetMessages, from: QueueOffset) -> Vec<Content> {
    let next = |o: QueueOffset| Content::NextOffset(i64::try_from(o.0).unwrap_or(i64::MAX));
    match got.status {
        GetStatus::Found => {
            let mut items = Vec::with_capacity(got.messages.len() + 2);
            items.push(Content::Status(status::ok()));
            let sums = md5_bodies(&got.messages);
            let mut encoder = wire::Encoder::for_messages(&got.messages);
            items
                .extend(got.messages.iter().zip(&sums).map(|(m, sum)| Content::Message(encoder.message(m, sum, None))));
            items.push(next(got.next_offset));
            items
        }
        GetStatus::NoNewMessage | GetStatus::NoMatchedMessage => {
            vec![
                Content::Status(status::status(pb::Code::MessageNotFound, "no new message")),
                next(got.next_offset.max(from)),
            ]
        }
        // A queue that never received a message: offset 0 is its end, anything above is out of range.
        GetStatus::NoSuchQueue if from.0 == 0 => {
            vec![Content::Status(status::status(pb::Code::MessageNotFound, "no new message")), next(QueueOffset(0))]
        }
        GetStatus::NoSuchQueue => vec![
            Content::Status(status::status(pb::Code::IllegalOffset, format!("offset {} is beyond the end 0", from.0))),
            next(QueueOffset(0)),
        ],
        GetStatus::OffsetMoved | GetStatus::OffsetOverflow => {
            let (min, max) = (got.min_offset.0, got.max_offset.0);
            let why = format!("offset {} is outside the queue's stored range {min}..{max}", from.0);
            vec![Content::Status(status::status(pb::Code::IllegalOffset, why)), next(got.next_offset)]
        }
    }
}

/// How long a pull with nothing to return waits: what the client asked for (no wait when it asked for
/// none), at most `max` (`rocketmq-v2.long-poll-max-ms`), and ending before the client's deadline.
fn hold(requested: Option<&prost_types::Duration>, deadline: Option<Duration>, max: Duration) -> Duration {
    let wanted = requested.and_then(convert::std_duration).unwrap_or(Duration::ZERO).min(max);
    match deadline {
        Some(d) => wanted.min(d.saturating_sub(DEADLINE_MARGIN)),
        None => wanted,
    }
}

/// The tag filter of a request: TAG expressions (`*`, `a||b`; none = every message); SQL is UNSUPPORTED (as
/// in ReceiveMessage).
fn filter_of(expression: Option<&pb::FilterExpression>) -> Result<TagFilter> {
    let Some(f) = expression else { return Ok(TagFilter::All) };
    if f.r#type == i32::from(pb::FilterType::Sql) {
        return Err(BrokerError::invalid("filter_type", "SQL92 filters are not supported; use a tag expression"));
    }
    f.expression.parse().map_err(|e: BrokerError| BrokerError::invalid("filter_expression", e.to_string()))
}

/// The topic and queue id a request names (queue checks against the topic happen in the reads).
fn queue_of(queue: Option<&pb::MessageQueue>) -> Result<(String, u32)> {
    let queue = queue.ok_or_else(|| BrokerError::invalid("message_queue", "missing"))?;
    let topic = convert::resource_name(queue.topic.as_ref(), "topic")?;
    let id =
        u32::try_from(queue.id).map_err(|_| BrokerError::invalid("queue_id", format!("{} is negative", queue.id)))?;
    Ok((topic, id))
}

/// The status answering an error of the pull family: out-of-range offsets are ILLEGAL_OFFSET, SQL filters
/// UNSUPPORTED, the rest as everywhere (status.rs).
fn error_status(e: &BrokerError) -> pb::Status {
    match e {
        BrokerError::OutOfRange { field: "offset", .. } => status::status(pb::Code::IllegalOffset, e.to_string()),
        BrokerError::Invalid { field: "filter_type", .. } => status::status(pb::Code::Unsupported, e.to_string()),
        _ => status::from_error(e),
    }
}

/// UpdateOffset: commits the group's offset of a queue (the next offset it will consume, as the client sends
/// it), in the same store native consumers commit to; beyond the queue's end or negative is ILLEGAL_OFFSET.
pub async fn update_offset(
    broker: &Arc<Broker>,
    request: Request<pb::UpdateOffsetRequest>,
) -> pb::UpdateOffsetResponse {
    let caller = Caller::of(request.metadata());
    let request = request.into_inner();
    let done = (|| {
        let group = convert::resource_name(request.group.as_ref(), "group")?;
        let (topic, queue_id) = queue_of(request.message_queue.as_ref())?;
        let offset = u64::try_from(request.offset).map_err(|_| BrokerError::OutOfRange {
            field: "offset",
            reason: format!("{} is negative", request.offset),
        })?;
        offset::commit_offset(broker, &group, &topic, queue_id, QueueOffset(offset))
    })();
    let status = match done {
        Ok(()) => status::ok(),
        Err(e) => error_status(&e),
    };
    pb::UpdateOffsetResponse { status: Some(status::for_language(status, &caller.language)) }
}

/// GetOffset: the group's committed offset of a queue; OFFSET_NOT_FOUND when the group never committed one (the
/// Java client then asks QueryOffset END).
pub async fn get_offset(broker: &Arc<Broker>, request: Request<pb::GetOffsetRequest>) -> pb::GetOffsetResponse {
    let caller = Caller::of(request.metadata());
    let request = request.into_inner();
    let found = (|| {
        let group = convert::resource_name(request.group.as_ref(), "group")?;
        let (topic, queue_id) = queue_of(request.message_queue.as_ref())?;
        Ok::<_, BrokerError>((offset::committed(broker, &group, &topic, queue_id)?, group, topic, queue_id))
    })();
    let (status, offset) = match found {
        Ok((Some(o), ..)) => (status::ok(), o.0),
        Ok((None, group, topic, queue_id)) => {
            let why = format!("group {group} has no committed offset for {topic}:{queue_id}");
            (status::status(pb::Code::OffsetNotFound, why), 0)
        }
        Err(e) => (error_status(&e), 0),
    };
    pb::GetOffsetResponse {
        status: Some(status::for_language(status, &caller.language)),
        offset: i64::try_from(offset).unwrap_or(i64::MAX),
    }
}

/// QueryOffset: a queue's first offset (BEGINNING), its end (END: the offset the next message will get), or the
/// first offset stored at or after a time (TIMESTAMP; the end when none is; BAD_REQUEST without a timestamp).
pub async fn query_offset(broker: &Arc<Broker>, request: Request<pb::QueryOffsetRequest>) -> pb::QueryOffsetResponse {
    let caller = Caller::of(request.metadata());
    let request = request.into_inner();
    let answer = query_offset_of(broker, request).await;
    let (status, offset) = match answer {
        Ok(o) => (status::ok(), o.0),
        Err(e) => (error_status(&e), 0),
    };
    pb::QueryOffsetResponse {
        status: Some(status::for_language(status, &caller.language)),
        offset: i64::try_from(offset).unwrap_or(i64::MAX),
    }
}

async fn query_offset_of(broker: &Arc<Broker>, request: pb::QueryOffsetRequest) -> Result<QueueOffset> {
    let (topic, queue_id) = queue_of(request.message_queue.as_ref())?;
    match pb::QueryOffsetPolicy::try_from(request.query_offset_policy) {
        Ok(pb::QueryOffsetPolicy::Beginning) => Ok(query::queue_range(broker, &topic, queue_id)?.0),
        Ok(pb::QueryOffsetPolicy::End) => Ok(query::queue_range(broker, &topic, queue_id)?.1),
        Ok(pb::QueryOffsetPolicy::Timestamp) => {
            let at = request
                .timestamp
                .as_ref()
                .ok_or_else(|| BrokerError::invalid("timestamp", "required by the TIMESTAMP policy"))?;
            query::offset_at(broker, topic, queue_id, convert::timestamp_ms(at)).await
        }
        Err(_) => {
            Err(BrokerError::invalid("query_offset_policy", format!("unknown policy {}", request.query_offset_policy)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn got(status: GetStatus, next: u64) -> GetMessages {
        GetMessages {
            status,
            messages: Vec::new(),
            next_offset: QueueOffset(next),
            min_offset: QueueOffset(2),
            max_offset: QueueOffset(10),
        }
    }

    fn codes(items: &[Content]) -> Vec<String> {
        items
            .iter()
            .map(|c| match c {
                Content::Status(s) => format!("{:?}", pb::Code::try_from(s.code).unwrap()),
                Content::Message(_) => "message".into(),
                Content::NextOffset(o) => format!("next {o}"),
            })
            .collect()
    }

    #[test]
    fn empty_reads_are_message_not_found_and_out_of_range_is_illegal_offset_both_with_where_to_go_on() {
        assert_eq!(codes(&items(got(GetStatus::NoNewMessage, 10), QueueOffset(10))), ["MessageNotFound", "next 10"]);
        assert_eq!(codes(&items(got(GetStatus::NoMatchedMessage, 7), QueueOffset(4))), ["MessageNotFound", "next 7"]);
        assert_eq!(codes(&items(got(GetStatus::NoSuchQueue, 0), QueueOffset(0))), ["MessageNotFound", "next 0"]);
        assert_eq!(codes(&items(got(GetStatus::NoSuchQueue, 0), QueueOffset(3))), ["IllegalOffset", "next 0"]);
        assert_eq!(codes(&items(got(GetStatus::OffsetMoved, 2), QueueOffset(0))), ["IllegalOffset", "next 2"]);
        assert_eq!(codes(&items(got(GetStatus::OffsetOverflow, 10), QueueOffset(99))), ["IllegalOffset", "next 10"]);
        assert_eq!(codes(&items(got(GetStatus::Found, 10), QueueOffset(9))), ["Ok", "next 10"]);
    }

    #[test]
    fn the_hold_is_what_was_asked_within_the_maximum_and_before_the_deadline() {
        let d = |s: i64| prost_types::Duration { seconds: s, nanos: 0 };
        let max = Duration::from_secs(20);
        assert_eq!(hold(None, None, max), Duration::ZERO);
        assert_eq!(hold(Some(&d(5)), None, max), Duration::from_secs(5));
        assert_eq!(hold(Some(&d(30)), None, max), max);
        assert_eq!(hold(Some(&d(30)), Some(Duration::from_secs(10)), max), Duration::from_millis(9_500));
        assert_eq!(hold(Some(&d(30)), Some(Duration::from_millis(100)), max), Duration::ZERO);
        assert_eq!(hold(Some(&d(-1)), None, max), Duration::ZERO);
    }

    #[test]
    fn sql_filters_are_refused_and_tag_expressions_parse() {
        let f = |t: pb::FilterType, e: &str| pb::FilterExpression { r#type: t.into(), expression: e.into() };
        assert_eq!(filter_of(None).unwrap(), TagFilter::All);
        assert!(matches!(filter_of(Some(&f(pb::FilterType::Tag, "a||b"))).unwrap(), TagFilter::Tags { .. }));
        let sql = filter_of(Some(&f(pb::FilterType::Sql, "a > 1"))).unwrap_err();
        assert_eq!(error_status(&sql).code, i32::from(pb::Code::Unsupported));
        let bad = filter_of(Some(&f(pb::FilterType::Tag, "||"))).unwrap_err();
        assert_eq!(error_status(&bad).code, i32::from(pb::Code::IllegalFilterExpression));
    }
}
