//! `comet bench <target>`: load generators that drive running servers over the network and report throughput
//! and latency percentiles.

mod latency;
mod messaging;
mod nameserver;
mod report;
mod rocketmq_v2;
mod systems;

use clap::Subcommand;

/// What to benchmark.
#[derive(Debug, Subcommand)]
pub enum Target {
    /// QueryRoute throughput/latency and large-broker registration time against a running NameServer.
    Nameserver(nameserver::Args),
    /// Send throughput and acknowledgement latency (Comet, or NATS JetStream as the peer baseline).
    Produce(messaging::ProduceArgs),
    /// Read throughput from a stored backlog.
    Consume(messaging::ConsumeArgs),
    /// Produce-to-consume latency at a fixed rate.
    E2e(messaging::E2eArgs),
}

/// Runs the chosen benchmark.
pub async fn run(target: Target, namesrv: &[String]) -> anyhow::Result<()> {
    match target {
        Target::Nameserver(args) => nameserver::run(args, namesrv).await,
        Target::Produce(args) => messaging::produce(args, namesrv).await,
        Target::Consume(args) => messaging::consume(args, namesrv).await,
        Target::E2e(args) => messaging::e2e(args, namesrv).await,
    }
}
