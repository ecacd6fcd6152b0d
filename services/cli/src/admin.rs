//! `comet topic`, `comet message`: broker administration (`comet group` is group.rs). Topic changes go to every master broker
//! of the cluster (found through the NameServer's `GetClusterInfo`) or to one `--broker`; reads ask every master.

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use comet_client::Admin;
use comet_proto::comet::v1 as pb;

/// Options shared by every admin command.
#[derive(Debug, Args)]
pub struct Target {
    /// Only this broker (`host:port`) instead of every master broker of the cluster.
    #[arg(long, global = true)]
    pub(crate) broker: Option<String>,
    /// Only master brokers of this cluster (default: every cluster).
    #[arg(long, global = true)]
    pub(crate) cluster: Option<String>,
    /// JSON (one object per line) instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// Topic permission on the broker.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Perm {
    /// Readable and writable.
    Rw,
    /// Read only.
    R,
    /// Write only.
    W,
}

impl Perm {
    fn bits(self) -> u32 {
        // RocketMQ's PermName: read = 4, write = 2.
        match self {
            Perm::Rw => 6,
            Perm::R => 4,
            Perm::W => 2,
        }
    }
}

/// The message type a topic accepts (RocketMQ 5 SDKs check it before sending; the broker on every send).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopicType {
    /// Plain messages only.
    Normal,
    /// Messages with a message group (ordered per group).
    Fifo,
    /// Delayed messages only.
    Delay,
    /// Transactional (half) messages only.
    Transaction,
    /// Every type (what auto-created topics are).
    Mixed,
}

impl From<TopicType> for pb::MessageType {
    fn from(t: TopicType) -> Self {
        match t {
            TopicType::Normal => pb::MessageType::Normal,
            TopicType::Fifo => pb::MessageType::Fifo,
            TopicType::Delay => pb::MessageType::Delay,
            TopicType::Transaction => pb::MessageType::Transaction,
            TopicType::Mixed => pb::MessageType::Mixed,
        }
    }
}

/// A topic's message type as the tables and JSON show it (`normal`, ..., `mixed`; a broker's unset type is
/// `mixed`: it accepts every type).
fn type_name(message_type: i32) -> &'static str {
    match pb::MessageType::try_from(message_type) {
        Ok(pb::MessageType::Normal) => "normal",
        Ok(pb::MessageType::Fifo) => "fifo",
        Ok(pb::MessageType::Delay) => "delay",
        Ok(pb::MessageType::Transaction) => "transaction",
        Ok(pb::MessageType::Mixed | pb::MessageType::Unspecified) => "mixed",
        Err(_) => "unknown",
    }
}

/// Queue counts, permission and message type of `topic create` / `topic update`.
#[derive(Debug, Args)]
pub struct TopicSpec {
    /// Topic name.
    topic: String,
    /// Read and write queue count.
    #[arg(long, conflicts_with_all = ["read_queues", "write_queues"])]
    queues: Option<u32>,
    /// Read queue count.
    #[arg(long)]
    read_queues: Option<u32>,
    /// Write queue count.
    #[arg(long)]
    write_queues: Option<u32>,
    /// Permission.
    #[arg(long, value_enum)]
    perm: Option<Perm>,
    /// Message type the topic accepts (create: default mixed; update: default unchanged).
    #[arg(long = "type", value_enum)]
    message_type: Option<TopicType>,
}

/// `comet topic ...`.
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic on the brokers.
    Create(TopicSpec),
    /// Change a topic's queue counts, permission or message type on the brokers.
    Update(TopicSpec),
    /// List the brokers' topics.
    List,
    /// Show a topic's config and per-queue min/max offsets on each broker.
    Describe {
        /// Topic name.
        topic: String,
    },
    /// Delete a topic from the brokers.
    Delete {
        /// Topic name.
        topic: String,
    },
}

/// `comet message ...`.
#[derive(Debug, Subcommand)]
pub enum MessageCommand {
    /// Look a message up by its id on every broker.
    Get {
        /// Message id.
        id: String,
    },
    /// Find messages of a topic by key, or by store time (--since), on every broker hosting it.
    #[command(group(clap::ArgGroup::new("by").required(true).args(["key", "since"])))]
    Find {
        /// Topic name.
        #[arg(long)]
        topic: String,
        /// Message key.
        #[arg(long)]
        key: Option<String>,
        /// With --key: most messages per broker.
        #[arg(long, default_value_t = 32, conflicts_with = "since")]
        max: u32,
        /// Messages stored at or after this time, earliest first: RFC 3339 (2024-05-01T12:00:00Z, with a
        /// fraction or a +02:00 offset), a date (2024-05-01, midnight UTC), or unix milliseconds.
        #[arg(long, value_parser = parse_time)]
        since: Option<u64>,
        /// With --since: only messages stored at or before this time (same formats).
        #[arg(long, value_parser = parse_time, requires = "since")]
        until: Option<u64>,
        /// With --since: most messages in all.
        #[arg(long, default_value_t = 32, conflicts_with = "key")]
        count: usize,
    },
}

/// The consumer group `message find --since` pulls as (pulls change no offsets and create no group).
const FIND_GROUP: &str = "comet-cli-find";

/// The brokers to talk to, `(broker name, address)`: `--broker`, or the master of every broker name of the
/// cluster(s), with the admin client that reaches them.
pub(crate) async fn brokers(namesrv: &[String], target: &Target) -> anyhow::Result<(Admin, Vec<(String, String)>)> {
    let admin = Admin::new(namesrv)?;
    if let Some(address) = &target.broker {
        return Ok((admin, vec![(address.clone(), address.clone())]));
    }
    let masters = admin.master_brokers(target.cluster.as_deref()).await.context("finding the master brokers")?;
    anyhow::ensure!(!masters.is_empty(), "no master broker registered with the NameServer");
    Ok((admin, masters.into_iter().map(|b| (b.name, b.address)).collect()))
}

/// A gRPC status as one line: the broker and the server's message, not tonic's debug dump.
pub(crate) fn status(broker: &str, what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what} on broker {broker}: {} ({:?})", s.message(), s.code())
}

fn perm_name(perm: u32) -> String {
    let mut s = String::new();
    if perm & 4 != 0 {
        s.push('r');
    }
    if perm & 2 != 0 {
        s.push('w');
    }
    if s.is_empty() { "-".into() } else { s }
}

fn topic_json(broker: &str, t: &pb::TopicConfig) -> serde_json::Value {
    serde_json::json!({
        "broker": broker, "topic": t.name, "read_queues": t.read_queue_nums,
        "write_queues": t.write_queue_nums, "perm": perm_name(t.perm), "message_type": type_name(t.message_type),
    })
}

/// Runs a `comet topic` command.
pub async fn topic(cmd: TopicCommand, target: Target, namesrv: &[String]) -> anyhow::Result<()> {
    let (admin, brokers) = brokers(namesrv, &target).await?;
    match cmd {
        TopicCommand::Create(spec) => {
            for (name, address) in &brokers {
                let mut client = admin.broker(address)?;
                let new = pb::TopicConfig {
                    name: spec.topic.clone(),
                    message_type: pb::MessageType::from(TopicType::Mixed).into(),
                    ..Default::default()
                };
                let config = apply(new, &spec);
                let created = client
                    .create_topic(pb::CreateTopicRequest { topic: Some(config) })
                    .await
                    .map_err(|s| status(name, &format!("creating topic {}", spec.topic), s))?
                    .into_inner();
                print_topic_change("created", name, created.topic.as_ref(), target.json);
            }
        }
        TopicCommand::Update(spec) => {
            for (name, address) in &brokers {
                let mut client = admin.broker(address)?;
                // The broker takes the full config: start from what it has, change only what was asked.
                let current = client
                    .describe_topic(pb::DescribeTopicRequest { topic: spec.topic.clone() })
                    .await
                    .map_err(|s| status(name, &format!("reading topic {}", spec.topic), s))?
                    .into_inner()
                    .topic
                    .unwrap_or_default();
                let config = apply(current, &spec);
                let updated = client
                    .update_topic(pb::UpdateTopicRequest { topic: Some(config) })
                    .await
                    .map_err(|s| status(name, &format!("updating topic {}", spec.topic), s))?
                    .into_inner();
                print_topic_change("updated", name, updated.topic.as_ref(), target.json);
            }
        }
        TopicCommand::List => {
            if !target.json {
                println!("{:<16} {:<32} {:>6} {:>6} {:>5} {:<11}", "BROKER", "TOPIC", "READ", "WRITE", "PERM", "TYPE");
            }
            for (name, address) in &brokers {
                let topics = admin
                    .broker(address)?
                    .list_topics(pb::ListBrokerTopicsRequest {})
                    .await
                    .map_err(|s| status(name, "listing topics", s))?
                    .into_inner()
                    .topics;
                for t in &topics {
                    if target.json {
                        println!("{}", topic_json(name, t));
                    } else {
                        println!(
                            "{:<16} {:<32} {:>6} {:>6} {:>5} {:<11}",
                            name,
                            t.name,
                            t.read_queue_nums,
                            t.write_queue_nums,
                            perm_name(t.perm),
                            type_name(t.message_type)
                        );
                    }
                }
            }
        }
        TopicCommand::Describe { topic } => {
            let mut found = false;
            for (name, address) in &brokers {
                let described = match admin
                    .broker(address)?
                    .describe_topic(pb::DescribeTopicRequest { topic: topic.clone() })
                    .await
                {
                    Ok(r) => r.into_inner(),
                    // A cluster-wide describe skips brokers that do not host the topic.
                    Err(s) if s.code() == tonic::Code::NotFound => continue,
                    Err(s) => return Err(status(name, &format!("describing topic {topic}"), s)),
                };
                found = true;
                let config = described.topic.unwrap_or_default();
                if target.json {
                    let mut line = topic_json(name, &config);
                    line["queues"] = serde_json::json!(
                        described
                            .queues
                            .iter()
                            .map(|q| serde_json::json!({
                                "queue_id": q.queue_id, "min_offset": q.min_offset, "max_offset": q.max_offset,
                            }))
                            .collect::<Vec<_>>()
                    );
                    println!("{line}");
                } else {
                    println!(
                        "broker {name} ({address}): topic {} read {} write {} perm {} type {}",
                        config.name,
                        config.read_queue_nums,
                        config.write_queue_nums,
                        perm_name(config.perm),
                        type_name(config.message_type)
                    );
                    println!("  {:>5} {:>12} {:>12}", "QUEUE", "MIN", "MAX");
                    for q in &described.queues {
                        println!("  {:>5} {:>12} {:>12}", q.queue_id, q.min_offset, q.max_offset);
                    }
                }
            }
            anyhow::ensure!(found, "topic {topic} not found on any broker");
        }
        TopicCommand::Delete { topic } => {
            for (name, address) in &brokers {
                admin
                    .broker(address)?
                    .delete_topic(pb::DeleteTopicRequest { topic: topic.clone() })
                    .await
                    .map_err(|s| status(name, &format!("deleting topic {topic}"), s))?;
                print_done(target.json, name, "topic", &topic, "deleted");
            }
        }
    }
    Ok(())
}

/// The config with the queue counts and permission given on the command line.
fn apply(mut config: pb::TopicConfig, spec: &TopicSpec) -> pb::TopicConfig {
    if let Some(n) = spec.queues {
        config.read_queue_nums = n;
        config.write_queue_nums = n;
    }
    if let Some(n) = spec.read_queues {
        config.read_queue_nums = n;
    }
    if let Some(n) = spec.write_queues {
        config.write_queue_nums = n;
    }
    if let Some(p) = spec.perm {
        config.perm = p.bits();
    }
    if let Some(t) = spec.message_type {
        config.message_type = pb::MessageType::from(t).into();
    }
    config
}

fn print_topic_change(verb: &str, broker: &str, config: Option<&pb::TopicConfig>, json: bool) {
    let config = config.cloned().unwrap_or_default();
    if json {
        println!("{}", topic_json(broker, &config));
    } else {
        println!(
            "{verb} topic {} on {broker}: read {} write {} perm {} type {}",
            config.name,
            config.read_queue_nums,
            config.write_queue_nums,
            perm_name(config.perm),
            type_name(config.message_type)
        );
    }
}

/// One line per broker for a create or delete: `<verb> <kind> <name> on <broker>`, or its JSON object.
pub(crate) fn print_done(json: bool, broker: &str, kind: &str, name: &str, verb: &str) {
    if json {
        println!("{}", serde_json::json!({"broker": broker, kind: name, verb: true}));
    } else {
        println!("{verb} {kind} {name} on {broker}");
    }
}

/// Runs a `comet message` command.
pub async fn message(cmd: MessageCommand, target: Target, namesrv: &[String]) -> anyhow::Result<()> {
    let (admin, mut brokers) = brokers(namesrv, &target).await?;
    let mut found = 0usize;
    match cmd {
        MessageCommand::Get { id } => {
            for (name, address) in &brokers {
                match admin
                    .broker(address)?
                    .query_message_by_id(pb::QueryMessageByIdRequest { message_id: id.clone() })
                    .await
                {
                    Ok(r) => {
                        if let Some(m) = r.into_inner().message {
                            print_stored(name, &m, target.json, found == 0);
                            found += 1;
                        }
                    }
                    // The id names one broker's message; the others do not have it.
                    Err(s) if s.code() == tonic::Code::NotFound => {}
                    Err(s) => return Err(status(name, &format!("looking up message {id}"), s)),
                }
            }
            anyhow::ensure!(found > 0, "message {id} not found on any broker");
        }
        MessageCommand::Find { topic, key, max, since, until, count } => {
            if target.broker.is_none() {
                // Only brokers hosting the topic: the others would answer NotFound anyway.
                let hosting = admin.brokers_hosting(&topic).await?;
                brokers.retain(|(name, _)| hosting.contains(name));
            }
            let Some(key) = key else {
                // clap requires --key or --since.
                let since = since.unwrap_or_default();
                let found = find_by_time(&admin, &brokers, &topic, since, until, count).await?;
                for (i, (name, m)) in found.iter().enumerate() {
                    print_stored(name, m, target.json, i == 0);
                }
                if !target.json {
                    let window = until.map_or_else(String::new, |u| format!(" and at or before {}", store_time(u)));
                    eprintln!(
                        "{} message(s) of topic {topic} stored at or after {}{window}",
                        found.len(),
                        store_time(since)
                    );
                }
                return Ok(());
            };
            for (name, address) in &brokers {
                let request = pb::QueryMessagesByKeyRequest {
                    topic: topic.clone(),
                    key: key.clone(),
                    max_count: max,
                    ..Default::default()
                };
                let messages = match admin.broker(address)?.query_messages_by_key(request).await {
                    Ok(r) => r.into_inner().messages,
                    Err(s) if s.code() == tonic::Code::NotFound => continue,
                    Err(s) => return Err(status(name, &format!("finding key {key} in topic {topic}"), s)),
                };
                for m in &messages {
                    print_stored(name, m, target.json, found == 0);
                    found += 1;
                }
            }
            if !target.json {
                eprintln!("{found} message(s) with key {key} in topic {topic}");
            }
        }
    }
    Ok(())
}

/// Messages of `topic` stored at or after `since` (and at or before `until`), the earliest `count` over every
/// queue of every broker in `brokers`: per queue, the broker's offset for the time (SearchOffset), then pulls
/// from there (a queue's store times never decrease, so its first `count` from that offset are its candidates).
async fn find_by_time(
    admin: &Admin,
    brokers: &[(String, String)],
    topic: &str,
    since: u64,
    until: Option<u64>,
    count: usize,
) -> anyhow::Result<Vec<(String, pb::StoredMessage)>> {
    let mut found: Vec<(String, pb::StoredMessage)> = Vec::new();
    for (name, address) in brokers {
        let mut client = admin.broker(address)?;
        let queues = match client.describe_topic(pb::DescribeTopicRequest { topic: topic.to_owned() }).await {
            Ok(r) => r.into_inner().queues,
            // A --broker or cluster-wide target that does not host the topic.
            Err(s) if s.code() == tonic::Code::NotFound => continue,
            Err(s) => return Err(status(name, &format!("describing topic {topic}"), s)),
        };
        for q in queues.iter().filter(|q| q.max_offset > q.min_offset) {
            let request =
                pb::SearchOffsetRequest { topic: topic.to_owned(), queue_id: q.queue_id, timestamp_millis: since };
            let mut offset = client
                .search_offset(request)
                .await
                .map_err(|s| status(name, &format!("searching queue {} of {topic} by time", q.queue_id), s))?
                .into_inner()
                .offset;
            let mut taken = 0usize;
            while taken < count && offset < q.max_offset {
                let request = pb::PullMessageRequest {
                    group: FIND_GROUP.to_owned(),
                    topic: topic.to_owned(),
                    queue_id: q.queue_id,
                    offset,
                    max_count: u32::try_from(count - taken).unwrap_or(u32::MAX).min(1024),
                    max_bytes: 0,
                    max_wait_millis: 0,
                    tag_expression: "*".to_owned(),
                };
                let pulled = client
                    .pull_message(request)
                    .await
                    .map_err(|s| status(name, &format!("reading queue {} of {topic}", q.queue_id), s))?
                    .into_inner();
                let before = taken;
                for m in pulled.messages {
                    if until.is_some_and(|u| m.store_timestamp_millis > u) {
                        taken = count;
                        break;
                    }
                    found.push((name.clone(), m));
                    taken += 1;
                }
                match pb::PullStatus::try_from(pulled.status) {
                    // Deleted by retention meanwhile: continue at the queue's new start.
                    Ok(pb::PullStatus::OffsetMoved) => offset = pulled.next_offset,
                    Ok(pb::PullStatus::Found) if taken > before => offset = pulled.next_offset,
                    _ => break,
                }
            }
        }
    }
    found.sort_by(|(a, x), (b, y)| {
        (x.store_timestamp_millis, a, x.queue_id, x.queue_offset).cmp(&(
            y.store_timestamp_millis,
            b,
            y.queue_id,
            y.queue_offset,
        ))
    });
    found.truncate(count);
    Ok(found)
}

/// A time for `--since`/`--until` as ms since the epoch: unix milliseconds, RFC 3339
/// (`2024-05-01T12:00:00.250+02:00`, `Z` for UTC, `T` or a space between date and time), or a date (midnight UTC).
pub(crate) fn parse_time(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let bad =
        || format!("{text:?} is neither RFC 3339 (2024-05-01T12:00:00Z), a date (2024-05-01) nor unix milliseconds");
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| bad());
    }
    let number = |s: &str| -> Result<i64, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    let (date, time) = match text.find(['T', 't', ' ']) {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    };
    let mut parts = date.split('-');
    let (Some(y), Some(mo), Some(d), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let (year, month, day) = (number(y)?, number(mo)?, number(d)?);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if y.len() != 4 || !(1..=days_in_month).contains(&day) {
        return Err(bad());
    }
    let mut millis = days_from_civil(year, month, day) * 86_400_000;
    if let Some(time) = time {
        // The zone: Z, or +HH:MM / -HH:MM (the date's '-' are already behind us).
        let (clock, offset_minutes) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
            (clock, 0)
        } else if let Some(i) = time.rfind(['+', '-']) {
            let (clock, zone) = (&time[..i], &time[i + 1..]);
            let (h, m) = zone.split_once(':').ok_or_else(bad)?;
            let minutes = number(h)? * 60 + number(m)?;
            (clock, if time.as_bytes()[i] == b'-' { -minutes } else { minutes })
        } else {
            return Err(format!("{text:?} has no time zone: end it with Z or an offset like +02:00"));
        };
        let (hms, fraction) = clock.split_once('.').unwrap_or((clock, ""));
        let mut fields = hms.split(':');
        let (Some(h), Some(m), Some(s), None) = (fields.next(), fields.next(), fields.next(), fields.next()) else {
            return Err(bad());
        };
        let (h, m, s) = (number(h)?, number(m)?, number(s)?);
        if h > 23 || m > 59 || s > 60 {
            return Err(bad());
        }
        // Milliseconds from the first three fraction digits.
        let ms = if fraction.is_empty() { 0 } else { number(&format!("{:0<3}", &fraction[..fraction.len().min(3)]))? };
        if !fraction.is_empty() && !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        millis += ((h * 60 + m) * 60 + s) * 1000 + ms - offset_minutes * 60_000;
    }
    u64::try_from(millis).map_err(|_| format!("{text:?} is before 1970"))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (the inverse of [`store_time`]'s civil-from-days).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Longest body prefix shown in tables.
const PREVIEW_CHARS: usize = 60;

fn print_stored(broker: &str, m: &pb::StoredMessage, json: bool, header: bool) {
    let body = String::from_utf8_lossy(&m.body);
    if json {
        let line = serde_json::json!({
            "broker": broker, "message_id": m.message_id, "topic": m.topic, "queue_id": m.queue_id,
            "queue_offset": m.queue_offset, "tags": m.tags, "keys": m.keys,
            "store_timestamp_millis": m.store_timestamp_millis, "born_host": m.born_host,
            "store_host": m.store_host, "properties": m.properties, "body": body,
        });
        println!("{line}");
        return;
    }
    if header {
        println!(
            "{:<34} {:<12} {:<24} {:>5} {:>10} {:<10} {:<16} {:<24} BODY",
            "ID", "BROKER", "TOPIC", "QUEUE", "OFFSET", "TAGS", "KEYS", "STORED"
        );
    }
    let mut preview: String = body.chars().take(PREVIEW_CHARS).collect();
    if body.chars().count() > PREVIEW_CHARS {
        preview.push('…');
    }
    // Keep one message per line whatever the body holds.
    let preview = preview.replace(['\n', '\r'], " ");
    println!(
        "{:<34} {:<12} {:<24} {:>5} {:>10} {:<10} {:<16} {:<24} {}",
        m.message_id,
        broker,
        m.topic,
        m.queue_id,
        m.queue_offset,
        if m.tags.is_empty() { "-" } else { &m.tags },
        if m.keys.is_empty() { "-".to_owned() } else { m.keys.join(",") },
        store_time(m.store_timestamp_millis),
        preview
    );
}

/// A store timestamp as UTC `YYYY-MM-DDTHH:MM:SS.mmmZ` (civil-from-days, so no date crate is needed).
pub(crate) fn store_time(millis: u64) -> String {
    let secs = millis / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        millis % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc_3339_dates_or_unix_millis_and_round_trip_through_store_time() {
        assert_eq!(parse_time("1714564800000"), Ok(1_714_564_800_000));
        assert_eq!(parse_time("2024-05-01T12:00:00Z"), Ok(1_714_564_800_000));
        assert_eq!(parse_time("2024-05-01 14:00:00.250+02:00"), Ok(1_714_564_800_250));
        assert_eq!(parse_time("2024-05-01T11:30:00.5-00:30"), Ok(1_714_564_800_500));
        assert_eq!(parse_time("2024-05-01"), Ok(1_714_521_600_000));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time("2024-02-29T00:00:00Z").map(store_time), Ok("2024-02-29T00:00:00.000Z".to_owned()));
        for millis in [0, 951_782_400_000, 1_714_564_800_123, 4_102_444_799_999] {
            assert_eq!(parse_time(&store_time(millis)), Ok(millis), "{}", store_time(millis));
        }
        for bad in [
            "",
            "yesterday",
            "2024-13-01",
            "2023-02-29",
            "2024-05-01T12:00:00",
            "2024-05-01T25:00:00Z",
            "2024-05-01T12:00Z",
            "24-05-01",
            "1969-12-31T23:59:59Z",
            "2024-05-01T12:00:00.x1Z",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?} accepted");
        }
    }
}
