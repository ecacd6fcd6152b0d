//! `comet`: the command-line tool: routes and cluster inspection, topic/group/broker administration, `comet send`
//! and `comet consume` through the Rust SDK, message lookups, dead letters, and every `comet bench`.

mod admin;
mod bench;
mod dlq;
mod group;
mod inspect;
mod messaging;
mod replication;

use clap::{Parser, Subcommand};

/// mimalloc, as in the broker: `comet bench` clients share the machine with the servers they measure, so their
/// allocator's cost is part of every figure (glibc malloc's consolidation showed up in their profiles).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Comet command-line tool.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// NameServer addresses, comma- or semicolon-separated (RocketMQ's NAMESRV_ADDR).
    #[arg(long, global = true, env = "NAMESRV_ADDR", default_value = "127.0.0.1:9876")]
    namesrv: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show where a topic's queues live.
    Route {
        /// Topic name.
        topic: String,
    },
    /// Show clusters, broker names and addresses.
    Cluster,
    /// List routed topics.
    Topics {
        /// Only topics of this cluster.
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Send a message (body from the argument or stdin).
    Send(messaging::SendArgs),
    /// Follow a topic as a consumer group (or, with --broadcast, a broadcasting member): print every message.
    Consume(messaging::ConsumeArgs),
    /// Create, update, list, describe and delete topics on the brokers.
    Topic {
        #[command(subcommand)]
        command: admin::TopicCommand,
        #[command(flatten)]
        target: admin::Target,
    },
    /// List consumer groups; describe members, committed offsets and lag.
    Group {
        #[command(subcommand)]
        command: group::GroupCommand,
        #[command(flatten)]
        target: admin::Target,
    },
    /// A consumer group's dead-letter queue: list it, re-send messages to their original topic.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
        #[command(flatten)]
        target: admin::Target,
    },
    /// Broker replication status: roles, CommitLog ends, slaves and their lag.
    Broker {
        #[command(subcommand)]
        command: replication::BrokerCommand,
        #[command(flatten)]
        target: admin::Target,
    },
    /// Look messages up by id, by key or by store time.
    Message {
        #[command(subcommand)]
        command: admin::MessageCommand,
        #[command(flatten)]
        target: admin::Target,
    },
    /// Benchmarks against running servers.
    Bench {
        #[command(subcommand)]
        target: bench::Target,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // `comet consume ... | head` must end quietly when the reader goes away, as Unix tools do, instead of
    // panicking in println! on EPIPE: restore the default SIGPIPE action Rust's runtime sets to ignore.
    // SAFETY: signal(2) changes the process-wide disposition atomically; no handler of ours is replaced and
    // SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let addresses: Vec<String> =
        cli.namesrv.split([',', ';']).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
    let result = match cli.command {
        Command::Route { topic } => inspect::route(&addresses, &topic).await,
        Command::Cluster => inspect::cluster(&addresses).await,
        Command::Topics { cluster } => inspect::topics(&addresses, cluster.as_deref()).await,
        Command::Send(args) => messaging::send(args, &addresses).await,
        Command::Consume(args) => messaging::consume(args, &addresses).await,
        Command::Topic { command, target } => admin::topic(command, target, &addresses).await,
        Command::Group { command, target } => group::run(command, target, &addresses).await,
        Command::Dlq { command, target } => dlq::run(command, target, &addresses).await,
        Command::Message { command, target } => admin::message(command, target, &addresses).await,
        Command::Broker { command, target } => replication::run(command, target, &addresses).await,
        Command::Bench { target } => bench::run(target, &addresses).await,
    };
    // A user-facing message with its causes, not a backtrace (RUST_BACKTRACE may be set in the environment).
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
