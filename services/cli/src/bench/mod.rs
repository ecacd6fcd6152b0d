//! `comet bench <target>`: load generators that drive running servers over the network and report throughput
//! and latency percentiles.

mod latency;
mod nameserver;

use clap::Subcommand;

/// What to benchmark.
#[derive(Debug, Subcommand)]
pub enum Target {
    /// QueryRoute throughput/latency and large-broker registration time against a running NameServer.
    Nameserver(nameserver::Args),
}

/// Runs the chosen benchmark.
pub async fn run(target: Target, namesrv: &[String]) -> anyhow::Result<()> {
    match target {
        Target::Nameserver(args) => nameserver::run(args, namesrv).await,
    }
}
