//! `comet-broker`: parses arguments and configuration, initialises logging, serves until SIGTERM/ctrl-c.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use comet_broker::Config;

/// mimalloc instead of glibc malloc: the serving paths free many small buffers and allocate message-sized ones,
/// which glibc answers with fastbin consolidation (about a sixth of the broker's CPU on the RocketMQ 5 receive
/// path, docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Comet broker: stores messages and serves producers and consumers over gRPC.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// YAML configuration file; every key has a default and `COMET_<SECTION>_<KEY>` overrides it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Print the effective configuration as YAML and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::load(args.config.as_deref(), std::env::vars()).context("loading configuration")?;
    if args.print_config {
        print!("{}", serde_yaml::to_string(&config)?);
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(config.broker.blocking_threads)
        .build()
        .context("starting the runtime")?
        .block_on(serve(config))
}

/// The broker on its runtime: serves until SIGTERM or ctrl-c, then shuts down gracefully.
async fn serve(config: Config) -> anyhow::Result<()> {
    config.log.init()?;

    let bound = comet_broker::edge::server::bind(config).await.context("starting the broker")?;
    // Readiness line on stdout: scripts and the system-test harness read the bound address (port 0 resolved).
    println!("comet-broker listening on {}", bound.local_addr());
    if let Some(ha) = bound.ha_addr() {
        println!("comet-broker HA listening on {ha}");
    }
    if let Some(metrics) = bound.metrics_addr() {
        println!("comet-broker metrics on http://{metrics}/metrics");
    }
    bound.serve(comet_config::shutdown_signal()).await.context("serving")?;
    Ok(())
}
