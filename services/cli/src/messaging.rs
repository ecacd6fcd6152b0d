//! `comet send` and `comet consume`: messages through the Rust SDK (comet-client), like an application would.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use comet_client::{
    ConsumeFrom, ListenerResult, Message, MessageModel, MessageQueue, OrderlyConsumer, Postpone, Producer,
    ProducerConfig, PullConsumer, PullConsumerConfig, PushConsumer, ReadPreference, ReceivedMessage,
};
use tokio::sync::{Notify, mpsc, watch};

/// Arguments of `comet send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Topic to send to (it must exist: create it on a broker, or send to it once through the broker).
    topic: String,
    /// Message body; `-` or absent = read the body from stdin.
    body: Option<String>,
    /// Tag of the message.
    #[arg(long, default_value = "")]
    tags: String,
    /// Keys of the message, comma-separated.
    #[arg(long, value_delimiter = ',')]
    keys: Vec<String>,
    /// Send the message this many times.
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Sharding key: every message with the same key goes to the same queue (a stable hash over the topic's
    /// writable queues), so an orderly consumer gets them in the order sent.
    #[arg(long)]
    sharding_key: Option<String>,
    /// Producer group.
    #[arg(long, default_value = "comet-cli-producer")]
    group: String,
    /// One JSON object per sent message instead of text.
    #[arg(long)]
    json: bool,
    /// Delay delivery by this long after the broker receives it: 500ms, 10s, 5m, 2h, 1d (a bare number is ms).
    #[arg(long, value_parser = parse_delay, conflicts_with = "deliver_at")]
    delay: Option<Duration>,
    /// Deliver at this time: RFC 3339 (2024-05-01T12:00:00Z), a date, or unix milliseconds.
    #[arg(long, value_parser = crate::admin::parse_time)]
    deliver_at: Option<u64>,
}

/// A delay for `--delay`: a number with a unit (`ms`, `s`, `m`, `h`, `d`); a bare number is milliseconds.
pub(crate) fn parse_delay(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || format!("{text:?} is not a delay like 500ms, 10s, 5m, 2h or 1d");
    let n: u64 = number.parse().map_err(|_| bad())?;
    let ms_per_unit = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(ms_per_unit).map(Duration::from_millis).ok_or_else(bad)
}

/// Where `comet consume` starts in a queue.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StartAt {
    /// The group's committed offset; the queue's end where the group never committed.
    Committed,
    /// The oldest stored message, ignoring committed offsets (with --broadcast, --clustering or --orderly: only
    /// where nothing is committed).
    Begin,
    /// Only messages sent from now on, ignoring committed offsets (with --broadcast, --clustering or --orderly:
    /// only where nothing is committed).
    End,
}

/// Which member of each broker group `comet consume` reads from (the SDK's `ReadPreference`).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReadFrom {
    /// The master; a slave while the master is down or gone from the route.
    Master,
    /// A slave (messages arrive after replication); the master when no slave is live.
    Slave,
}

impl From<ReadFrom> for ReadPreference {
    fn from(read_from: ReadFrom) -> Self {
        match read_from {
            ReadFrom::Master => ReadPreference::Master,
            ReadFrom::Slave => ReadPreference::Slave,
        }
    }
}

/// Arguments of `comet consume`.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to follow.
    topic: String,
    /// Consumer group whose offsets are read and committed.
    #[arg(long)]
    group: String,
    /// Where to start in each queue.
    #[arg(long, value_enum, default_value = "committed")]
    from: StartAt,
    /// Stop after this many messages (default: run until ctrl-c).
    #[arg(long)]
    count: Option<u64>,
    /// Broker-side tag filter: `*` = every message, `a||b` = tag a or b.
    #[arg(long, default_value = "*")]
    tags: String,
    /// How often consumed offsets are committed, in ms (and once more at exit).
    #[arg(long, default_value_t = 5000)]
    commit_interval_ms: u64,
    /// One JSON object per message (with queue, offset, id, tags, keys) instead of the bare body.
    #[arg(long)]
    json: bool,
    /// Write each body, byte for byte, to a file of its own in this directory (named after the message id) and
    /// print the file's path (with --json: the message's JSON line, `file` instead of `body`). A message whose
    /// body cannot be written is not consumed: the run stops with the error.
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Consume as a broadcasting member of the group: every message of every queue, whatever other members
    /// read, with offsets kept in a local file instead of on the brokers.
    #[arg(long)]
    broadcast: bool,
    /// With --broadcast: the offsets file (default: comet-offsets-<group>.txt in the current directory).
    #[arg(long, requires = "broadcast")]
    offset_file: Option<PathBuf>,
    /// Which member of each broker group to read from; either way reads move to another member while the
    /// chosen one is unreachable.
    #[arg(long, value_enum, default_value = "master")]
    read_from: ReadFrom,
    /// Consume as an orderly member of the group: each queue's messages one at a time in queue order, only
    /// while this member holds the queue's broker lock; a message the consumer fails is retried in place.
    #[arg(long, conflicts_with = "broadcast")]
    orderly: bool,
    /// Consume as a clustering member of the group: the group's live members share its queues (re-balanced as
    /// members come and go), offsets are committed on the brokers; without it `consume` reads every queue.
    #[arg(long, conflicts_with_all = ["broadcast", "orderly"])]
    clustering: bool,
    /// With --orderly: how often the member heartbeats, in ms (it must stay below the broker's
    /// `broker.client-expiry-ms`).
    #[arg(long, default_value_t = 30_000, requires = "orderly")]
    heartbeat_interval_ms: u64,
}

/// Sends the body `count` times and prints where each message was stored.
pub async fn send(args: SendArgs, namesrv: &[String]) -> anyhow::Result<()> {
    let body = match args.body.as_deref() {
        None | Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).context("reading the body from stdin")?;
            buf
        }
        Some(text) => text.as_bytes().to_vec(),
    };
    let producer = Producer::new(ProducerConfig::new(namesrv.to_vec(), args.group))?;
    let mut message = Message::new(args.topic, body).with_tags(args.tags);
    message.keys = args.keys;
    if let Some(delay) = args.delay {
        message = message.with_delay(delay);
    }
    if let Some(at) = args.deliver_at {
        message = message.with_deliver_at(std::time::UNIX_EPOCH + Duration::from_millis(at));
    }
    if let Some(key) = args.sharding_key {
        message = message.with_sharding_key(key);
    }
    for _ in 0..args.count {
        let result = producer.send(message.clone()).await?;
        if args.json {
            let line = serde_json::json!({
                "message_id": result.message_id,
                "topic": result.queue.topic,
                "broker": result.queue.broker_name,
                "queue_id": result.queue.queue_id,
                "queue_offset": result.queue_offset,
                "deliver_at_millis": result.deliver_at.map(epoch_millis),
            });
            println!("{line}");
        } else if let Some(at) = result.deliver_at {
            println!(
                "sent {} to {}, delivered at {} ms since the epoch",
                result.message_id,
                result.queue,
                epoch_millis(at)
            );
        } else {
            println!("sent {} to {} offset {}", result.message_id, result.queue, result.queue_offset);
        }
    }
    Ok(())
}

/// Follows every readable queue of the topic with long polling and prints what arrives, committing offsets
/// every `commit_interval_ms` and at exit; stops on ctrl-c or after `count` messages.
pub async fn consume(args: ConsumeArgs, namesrv: &[String]) -> anyhow::Result<()> {
    if args.broadcast {
        return consume_push(args, namesrv, MessageModel::Broadcasting).await;
    }
    if args.orderly {
        return consume_orderly(args, namesrv).await;
    }
    if args.clustering {
        return consume_push(args, namesrv, MessageModel::Clustering).await;
    }
    let output = Output::new(&args)?;
    let mut config = PullConsumerConfig::new(namesrv.to_vec(), args.group);
    config.tag_expression = args.tags;
    config.read_preference = args.read_from.into();
    let consumer = PullConsumer::new(config)?;
    let queues = consumer.queues(&args.topic).await?;
    anyhow::ensure!(!queues.is_empty(), "topic {} has no readable queue", args.topic);

    // Queue followers hand messages to this loop in queue order; a bounded channel keeps them from reading far
    // ahead of what is printed.
    let (tx, mut rx) = mpsc::channel::<ReceivedMessage>(1024);
    let (stop_tx, stop_rx) = watch::channel(false);
    for queue in queues {
        let start = start_offset(&consumer, &queue, args.from).await?;
        tokio::spawn(follow(consumer.clone(), queue, start, tx.clone(), stop_rx.clone()));
    }
    drop(tx);

    let mut done: HashMap<MessageQueue, u64> = HashMap::new();
    let mut committed: HashMap<MessageQueue, u64> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(args.commit_interval_ms.max(1)));
    let mut consumed = 0u64;
    let mut failure = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while args.count.is_none_or(|n| consumed < n) {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tick.tick() => commit(&consumer, &done, &mut committed).await,
            message = rx.recv() => {
                let Some(message) = message else { break };
                if let Err(e) = output.emit(&message) {
                    failure = Some(e);
                    break;
                }
                done.insert(message.queue.clone(), message.queue_offset + 1);
                consumed += 1;
            }
        }
    }
    let _ = stop_tx.send(true);
    commit(&consumer, &done, &mut committed).await;
    eprintln!("consumed {consumed} message(s); offsets committed");
    failure.map_or(Ok(()), Err)
}

/// `comet consume --broadcast` / `--clustering`: the SDK's push consumer in that mode (broadcasting: every
/// queue, offsets in a local file; clustering: the queues this member is allocated, offsets on the brokers), with
/// one listener thread so messages print one at a time, in order per queue. Stops on ctrl-c or after `count`
/// messages; the shutdown saves the offsets (file or brokers) up to what was printed.
async fn consume_push(args: ConsumeArgs, namesrv: &[String], model: MessageModel) -> anyhow::Result<()> {
    let (run, listener) = Run::start(&args, namesrv).await?;
    let broadcasting = matches!(model, MessageModel::Broadcasting);
    let offset_file = broadcasting.then(|| {
        args.offset_file.clone().unwrap_or_else(|| PathBuf::from(format!("comet-offsets-{}.txt", args.group)))
    });
    let commit_interval = Duration::from_millis(args.commit_interval_ms.max(1));
    let mut builder = PushConsumer::builder(namesrv.to_vec(), args.group.clone())
        .subscribe(args.topic.clone(), args.tags.clone())
        .model(model)
        .consume_from(consume_from(args.from))
        .threads(1)
        .read_preference(args.read_from.into())
        .configure(|c| c.commit_interval = commit_interval)
        .listener(listener);
    if let Some(file) = &offset_file {
        builder = builder.offset_file(file.clone());
    }
    let role = if broadcasting { "broadcasting" } else { "clustering" };
    let consumer = builder.start().await.with_context(|| format!("joining group {} as a {role} member", args.group))?;
    eprintln!("{role} consumer {} started", consumer.client_id());
    if broadcasting {
        run.wait(args.count).await;
    } else {
        // A clustering member says which of the topic's queues it reads, and again whenever the group re-balances.
        let assignments = async {
            let mut shown = None;
            let mut every = tokio::time::interval(Duration::from_millis(500));
            loop {
                every.tick().await;
                let queues = consumer.assigned_queues();
                if shown.as_ref() != Some(&queues) {
                    let list: Vec<String> = queues.iter().map(ToString::to_string).collect();
                    eprintln!("reading {} queue(s): {}", queues.len(), list.join(" "));
                    shown = Some(queues);
                }
            }
        };
        tokio::select! {
            () = run.wait(args.count) => {}
            () = assignments => {}
        }
    }
    consumer.shutdown().await;
    let printed = run.printed.load(Ordering::SeqCst);
    match &offset_file {
        Some(file) => {
            // The SDK only logs a failed write; say so here instead of claiming the offsets were kept.
            anyhow::ensure!(file.exists(), "the offsets file {} was not written", file.display());
            eprintln!("consumed {printed} message(s); offsets kept in {}", file.display());
        }
        None => eprintln!("consumed {printed} message(s); offsets committed"),
    }
    run.finish()
}

/// Fails with the route's error rather than wait on a topic that does not exist (a push consumer would).
async fn require_queues(args: &ConsumeArgs, namesrv: &[String]) -> anyhow::Result<()> {
    let probe = PullConsumer::new(PullConsumerConfig::new(namesrv.to_vec(), args.group.clone()))?;
    anyhow::ensure!(!probe.queues(&args.topic).await?.is_empty(), "topic {} has no readable queue", args.topic);
    Ok(())
}

/// What a push or orderly `comet consume` run keeps besides its consumer: how many messages its listener printed,
/// the signal that it is done (`--count` reached, or an output error), and the first output error.
struct Run {
    printed: Arc<AtomicU64>,
    done: Arc<Notify>,
    failure: Arc<std::sync::Mutex<Option<anyhow::Error>>>,
}

impl Run {
    /// Checks the topic and the output directory, and makes the run's listener.
    async fn start(
        args: &ConsumeArgs,
        namesrv: &[String],
    ) -> anyhow::Result<(Run, impl Fn(&ReceivedMessage) -> ListenerResult + Send + Sync + 'static + use<>)> {
        let output = Output::new(args)?;
        require_queues(args, namesrv).await?;
        let run = Run {
            printed: Arc::new(AtomicU64::new(0)),
            done: Arc::new(Notify::new()),
            failure: Arc::new(std::sync::Mutex::new(None)),
        };
        let listener = run.printer(output, args.count);
        Ok((run, listener))
    }

    /// The listener: outputs each message and signals `done` at `count` or at an output error (recorded in
    /// `failure`). A message beyond the count, or whose output failed, is postponed (`Postpone`: not
    /// acknowledged, not sent back to the retry topic; it stays for the next run). One message at a time, so
    /// load-then-add never overshoots even when queues run concurrently.
    fn printer(
        &self,
        output: Output,
        count: Option<u64>,
    ) -> impl Fn(&ReceivedMessage) -> ListenerResult + Send + Sync + 'static + use<> {
        let (printed, done, failure) = (Arc::clone(&self.printed), Arc::clone(&self.done), Arc::clone(&self.failure));
        let stdout = std::sync::Mutex::new(());
        move |message: &ReceivedMessage| -> ListenerResult {
            let _one = stdout.lock().map_err(|_| "stdout lock poisoned")?;
            if count.is_some_and(|n| printed.load(Ordering::SeqCst) >= n) {
                return Err(Box::new(Postpone));
            }
            let mut first_failure = failure.lock().map_err(|_| "failure lock poisoned")?;
            if first_failure.is_some() {
                return Err(Box::new(Postpone));
            }
            if let Err(e) = output.emit(message) {
                *first_failure = Some(e);
                done.notify_one();
                return Err(Box::new(Postpone));
            }
            if count == Some(printed.fetch_add(1, Ordering::SeqCst) + 1) {
                done.notify_one();
            }
            Ok(())
        }
    }

    /// Waits for ctrl-c or the listener's `done` (at once for `--count 0`).
    async fn wait(&self, count: Option<u64>) {
        if count != Some(0) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = self.done.notified() => {}
            }
        }
    }

    /// The run's result once its consumer is shut down: the first output error, if any.
    fn finish(&self) -> anyhow::Result<()> {
        match self.failure.lock().map(|mut f| f.take()) {
            Ok(Some(e)) => Err(e),
            Ok(None) => Ok(()),
            Err(_) => anyhow::bail!("failure lock poisoned"),
        }
    }
}

/// The SDK's start position for `--from` (the end and the committed offset are the same for a group that never
/// committed; a group that did resumes there either way).
fn consume_from(from: StartAt) -> ConsumeFrom {
    match from {
        StartAt::Begin => ConsumeFrom::FirstOffset,
        StartAt::Committed | StartAt::End => ConsumeFrom::LastOffset,
    }
}

/// `comet consume --orderly`: the SDK's orderly push consumer, printing each queue's messages one at a time in
/// queue order. Stops on ctrl-c or after `count` messages; the shutdown commits offsets and releases the locks.
async fn consume_orderly(args: ConsumeArgs, namesrv: &[String]) -> anyhow::Result<()> {
    let (run, listener) = Run::start(&args, namesrv).await?;
    let from = consume_from(args.from);
    let commit_interval = Duration::from_millis(args.commit_interval_ms.max(1));
    let heartbeat_interval = Duration::from_millis(args.heartbeat_interval_ms.max(1));
    let consumer = OrderlyConsumer::builder(namesrv.to_vec(), args.group.clone())
        .subscribe(args.topic.clone(), args.tags.clone())
        .consume_from(from)
        .configure(|c| {
            c.commit_interval = commit_interval;
            c.heartbeat_interval = heartbeat_interval;
            c.read_preference = args.read_from.into();
        })
        .listener(listener)
        .start()
        .await
        .with_context(|| format!("joining group {} as an orderly member", args.group))?;
    eprintln!("orderly consumer {} started", consumer.client_id());
    run.wait(args.count).await;
    consumer.shutdown().await;
    eprintln!("consumed {} message(s); offsets committed, queue locks released", run.printed.load(Ordering::SeqCst));
    run.finish()
}

async fn start_offset(consumer: &PullConsumer, queue: &MessageQueue, from: StartAt) -> anyhow::Result<u64> {
    let (min, max) = consumer.queue_offsets(queue).await?;
    Ok(match from {
        StartAt::Begin => min,
        StartAt::End => max,
        StartAt::Committed => consumer.query_offset(queue).await?.unwrap_or(max),
    })
}

/// Long-polls one queue until stopped or the printer goes away.
async fn follow(
    consumer: PullConsumer,
    queue: MessageQueue,
    mut offset: u64,
    tx: mpsc::Sender<ReceivedMessage>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let pulled = tokio::select! {
            _ = stop.changed() => return,
            pulled = consumer.pull(&queue, offset, 32, Duration::from_secs(5)) => pulled,
        };
        match pulled {
            Ok(result) => {
                offset = result.next_offset;
                for message in result.messages {
                    if tx.send(message).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                eprintln!("warning: pull from {queue} failed: {e}");
                // Back off instead of hammering a broker that is down; the route is refreshed meanwhile.
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

async fn commit(
    consumer: &PullConsumer,
    done: &HashMap<MessageQueue, u64>,
    committed: &mut HashMap<MessageQueue, u64>,
) {
    for (queue, offset) in done {
        if committed.get(queue) == Some(offset) {
            continue;
        }
        match consumer.commit_offset(queue, *offset).await {
            Ok(()) => {
                committed.insert(queue.clone(), *offset);
            }
            Err(e) => eprintln!("warning: committing {queue} at {offset} failed: {e}"),
        }
    }
}

/// Where `comet consume` puts each message: its body (or a JSON line) on stdout, or with `--output-dir` its
/// body in a file of its own and the file's path (or the JSON line naming it) on stdout.
#[derive(Debug, Clone)]
struct Output {
    json: bool,
    dir: Option<PathBuf>,
}

impl Output {
    /// The output of a run; creates the output directory.
    fn new(args: &ConsumeArgs) -> anyhow::Result<Output> {
        if let Some(dir) = &args.output_dir {
            std::fs::create_dir_all(dir).with_context(|| format!("creating the output directory {}", dir.display()))?;
        }
        Ok(Output { json: args.json, dir: args.output_dir.clone() })
    }

    /// Outputs one message. A body file is written under a temporary name and renamed, so a file named after a
    /// message always holds its whole body.
    fn emit(&self, message: &ReceivedMessage) -> anyhow::Result<()> {
        let file = match &self.dir {
            None => None,
            Some(dir) => {
                let name = body_file_name(message);
                let (path, partial) = (dir.join(&name), dir.join(format!(".{name}.partial")));
                let written = std::fs::write(&partial, &message.body).and_then(|()| std::fs::rename(&partial, &path));
                if written.is_err() {
                    let _ = std::fs::remove_file(&partial);
                }
                written.with_context(|| format!("writing the body of {} to {}", message.message_id, path.display()))?;
                Some(path)
            }
        };
        if self.json {
            let mut line = serde_json::json!({
                "message_id": message.message_id,
                "topic": message.queue.topic,
                "broker": message.queue.broker_name,
                "queue_id": message.queue.queue_id,
                "queue_offset": message.queue_offset,
                "tags": message.tags,
                "keys": message.keys,
                "properties": message.properties,
            });
            line["body"] = match &file {
                None => String::from_utf8_lossy(&message.body).into(),
                Some(_) => serde_json::Value::Null,
            };
            if let Some(path) = &file {
                line["file"] = path.display().to_string().into();
            }
            println!("{line}");
        } else if let Some(path) = &file {
            println!("{}", path.display());
        } else {
            println!("{}", String::from_utf8_lossy(&message.body));
        }
        Ok(())
    }
}

/// A body file's name: the message id where it is a plain file name (ids are hex), else the message's place
/// (topic, broker, queue, offset) with anything but letters, digits, `-` and `_` replaced.
fn body_file_name(message: &ReceivedMessage) -> String {
    let id = &message.message_id;
    let plain = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !id.is_empty() && id.len() <= 128 && plain(id) {
        return id.clone();
    }
    let place = format!(
        "{}-{}-{}-{}",
        message.queue.topic, message.queue.broker_name, message.queue.queue_id, message.queue_offset
    );
    place.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// `t` as ms since the epoch.
fn epoch_millis(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_files_are_named_by_plain_message_ids_else_by_the_message_place() {
        let message = |id: &str| ReceivedMessage {
            message_id: id.to_owned(),
            topic: "orders".into(),
            queue: MessageQueue { topic: "orders".into(), broker_name: "broker/a".into(), queue_id: 3 },
            queue_offset: 42,
            commit_log_offset: 0,
            tags: String::new(),
            keys: Vec::new(),
            properties: HashMap::new(),
            body: Vec::new().into(),
            flag: 0,
            born_timestamp_millis: 0,
            store_timestamp_millis: 0,
            reconsume_times: 0,
            origin_message_id: id.to_owned(),
        };
        assert_eq!(body_file_name(&message("7F0000010001ABCD")), "7F0000010001ABCD");
        assert_eq!(body_file_name(&message("../../etc/passwd")), "orders-broker_a-3-42");
        assert_eq!(body_file_name(&message("")), "orders-broker_a-3-42");
        assert_eq!(body_file_name(&message(&"x".repeat(200))), "orders-broker_a-3-42");
    }

    #[test]
    fn delays_take_a_unit_and_bare_numbers_are_milliseconds() {
        assert_eq!(parse_delay("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_delay("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_delay("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_delay("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_delay("250"), Ok(Duration::from_millis(250)));
        assert!(parse_delay("10 parsecs").is_err());
        assert!(parse_delay("s").is_err());
    }
}
