//! `comet dlq`: a consumer group's dead-letter queue (`%DLQ%<group>`, one queue per broker): list what is in it,
//! and re-send messages to the topic they were first sent to, where every subscribed group receives them again.

use clap::{ArgGroup, Subcommand};
use comet_model::system::{PROP_ORIGIN_TOPIC, dlq_topic};
use comet_proto::comet::v1 as pb;

use crate::admin::{Target, brokers, status, store_time};

/// `comet dlq ...`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List a group's dead letters on every master broker, oldest first.
    List {
        /// Consumer group.
        #[arg(long)]
        group: String,
        /// Most messages per broker.
        #[arg(long, default_value_t = 32)]
        limit: usize,
    },
    /// Re-send dead letters to their original topic (attempt count reset; id, tags, keys, properties kept).
    #[command(group(ArgGroup::new("which").required(true).args(["offset", "id", "all"])))]
    Resend {
        /// Consumer group.
        #[arg(long)]
        group: String,
        /// Dead-letter queue offsets (as `dlq list` shows them; with several brokers, add --broker).
        #[arg(long, num_args = 1..)]
        offset: Vec<u64>,
        /// Message ids.
        #[arg(long, num_args = 1..)]
        id: Vec<String>,
        /// Every dead letter of the group.
        #[arg(long)]
        all: bool,
    },
}

/// The group `dlq list` pulls as (pulls change no offsets and create no group).
const LIST_GROUP: &str = "comet-cli-dlq";

/// Longest body prefix shown in tables.
const PREVIEW_CHARS: usize = 40;

/// Runs a `comet dlq` command.
pub async fn run(cmd: DlqCommand, target: Target, namesrv: &[String]) -> anyhow::Result<()> {
    let (admin, brokers) = brokers(namesrv, &target).await?;
    match cmd {
        DlqCommand::List { group, limit } => {
            let topic = dlq_topic(&group);
            if !target.json {
                println!(
                    "{:<12} {:>8} {:<34} {:<20} {:>8} {:<24} {:<16} {:<10} BODY",
                    "BROKER", "OFFSET", "ID", "ORIGINAL TOPIC", "ATTEMPTS", "STORED", "KEYS", "TAGS"
                );
            }
            for (name, address) in &brokers {
                let mut client = admin.broker(address)?;
                let range = pb::GetQueueOffsetsRequest { topic: topic.clone(), queue_id: 0 };
                let (mut offset, max) = match client.get_queue_offsets(range).await {
                    Ok(r) => (r.get_ref().min_offset, r.get_ref().max_offset),
                    // No dead letter ever on this broker.
                    Err(s) if s.code() == tonic::Code::NotFound => continue,
                    Err(s) => return Err(status(name, &format!("reading {topic}"), s)),
                };
                let mut shown = 0usize;
                while shown < limit && offset < max {
                    let request = pb::PullMessageRequest {
                        group: LIST_GROUP.to_owned(),
                        topic: topic.clone(),
                        queue_id: 0,
                        offset,
                        max_count: u32::try_from(limit - shown).unwrap_or(u32::MAX).min(256),
                        max_bytes: 0,
                        max_wait_millis: 0,
                        tag_expression: "*".to_owned(),
                    };
                    let pulled = client
                        .pull_message(request)
                        .await
                        .map_err(|s| status(name, &format!("reading {topic}"), s))?
                        .into_inner();
                    if pulled.messages.is_empty() {
                        match pb::PullStatus::try_from(pulled.status) {
                            Ok(pb::PullStatus::OffsetMoved) if pulled.next_offset > offset => {
                                offset = pulled.next_offset;
                                continue;
                            }
                            _ => break,
                        }
                    }
                    for m in &pulled.messages {
                        print_letter(name, m, target.json);
                        shown += 1;
                    }
                    offset = pulled.next_offset;
                }
            }
        }
        DlqCommand::Resend { group, offset, id, all } => {
            anyhow::ensure!(
                offset.is_empty() || brokers.len() == 1,
                "--offset names a position in one broker's dead-letter queue: add --broker (one of {})",
                brokers.iter().map(|(_, a)| a.as_str()).collect::<Vec<_>>().join(", ")
            );
            let mut total = 0usize;
            for (name, address) in &brokers {
                let mut client = admin.broker(address)?;
                let mut from = 0u64;
                loop {
                    let request = pb::ResendDeadLettersRequest {
                        group: group.clone(),
                        queue_offsets: offset.clone(),
                        from_offset: from,
                        to_offset: 0,
                        message_ids: id.clone(),
                    };
                    let answer = match client.resend_dead_letters(request).await {
                        Ok(r) => r.into_inner(),
                        Err(s) if s.code() == tonic::Code::NotFound && offset.is_empty() => break,
                        Err(s) => return Err(status(name, &format!("re-sending dead letters of {group}"), s)),
                    };
                    for (result, dlq_offset) in answer.results.iter().zip(&answer.queue_offsets) {
                        print_resent(name, *dlq_offset, result, target.json);
                        total += 1;
                    }
                    // Offsets name every message at once; id and --all selections come in batches.
                    match answer.queue_offsets.last() {
                        Some(last) if offset.is_empty() && all || !id.is_empty() => from = last + 1,
                        _ => break,
                    }
                }
            }
            if !target.json {
                println!("{total} dead letter(s) re-sent");
            }
        }
    }
    Ok(())
}

fn print_letter(broker: &str, m: &pb::StoredMessage, json: bool) {
    let origin = m.properties.get(PROP_ORIGIN_TOPIC).map_or("-", String::as_str);
    let body = String::from_utf8_lossy(&m.body);
    if json {
        let line = serde_json::json!({
            "broker": broker, "queue_offset": m.queue_offset, "message_id": m.message_id, "original_topic": origin,
            "attempts": m.reconsume_times, "store_timestamp_millis": m.store_timestamp_millis, "keys": m.keys,
            "tags": m.tags, "properties": m.properties, "body": body,
        });
        println!("{line}");
        return;
    }
    let mut preview: String = body.chars().take(PREVIEW_CHARS).collect();
    if body.chars().count() > PREVIEW_CHARS {
        preview.push('…');
    }
    println!(
        "{:<12} {:>8} {:<34} {:<20} {:>8} {:<24} {:<16} {:<10} {}",
        broker,
        m.queue_offset,
        m.message_id,
        origin,
        m.reconsume_times,
        store_time(m.store_timestamp_millis),
        if m.keys.is_empty() { "-".to_owned() } else { m.keys.join(",") },
        if m.tags.is_empty() { "-" } else { &m.tags },
        preview.replace(['\n', '\r'], " ")
    );
}

fn print_resent(broker: &str, dlq_offset: u64, result: &pb::SendResult, json: bool) {
    if json {
        let line = serde_json::json!({
            "broker": broker, "dlq_offset": dlq_offset, "message_id": result.message_id,
            "queue_id": result.queue_id, "queue_offset": result.queue_offset,
        });
        println!("{line}");
    } else {
        println!(
            "{broker}: dead letter {dlq_offset} ({}) re-sent to queue {} offset {}",
            result.message_id, result.queue_id, result.queue_offset
        );
    }
}
