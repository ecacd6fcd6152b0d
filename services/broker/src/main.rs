//! `comet-broker`: parses arguments and configuration, initialises logging, serves until SIGTERM/ctrl-c.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use comet_broker::Config;
use tracing_subscriber::EnvFilter;

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::load(args.config.as_deref(), std::env::vars()).context("loading configuration")?;
    if args.print_config {
        print!("{}", serde_yaml::to_string(&config)?);
        return Ok(());
    }
    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&config.log.level))?;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();

    let bound = comet_broker::edge::server::bind(config).await.context("starting the broker")?;
    // Readiness line on stdout: scripts and the system-test harness read the bound address (port 0 resolved).
    println!("comet-broker listening on {}", bound.local_addr());
    bound.serve(shutdown_signal()).await.context("serving")?;
    Ok(())
}

/// Completes on SIGTERM or ctrl-c.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only ctrl-c stops the broker");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}
