//! Processes under test and how to find, start, probe and stop them.

pub mod binary;
pub mod broker;
pub mod broker_process;
pub mod etcd;
pub mod nameserver;
pub mod otlp;
pub mod process;
pub mod prometheus;
pub mod python_sdk;

use std::time::Duration;

/// The address in a server's metrics line (`comet-broker metrics on http://127.0.0.1:PORT/metrics`).
pub fn metrics_address(line: &str) -> anyhow::Result<std::net::SocketAddr> {
    line.split("http://")
        .nth(1)
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("unexpected metrics line {line:?}"))
}

/// A free TCP port on 127.0.0.1 (bound then released; only for processes that must be told their port up front).
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`, 32768+ by default), so a port that the OS hands
/// to another process binding port 0 between our release and the child's bind cannot collide with it; the start
/// point is spread by process id and time so parallel test processes do not probe the same ports.
pub fn free_port() -> anyhow::Result<u16> {
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let start = std::process::id().wrapping_mul(7919).wrapping_add(nanos);
    for i in 0..SPAN {
        let port = (FIRST + (start.wrapping_add(i.wrapping_mul(97))) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port in {FIRST}..{}", FIRST + SPAN)
}

/// Polls `check` every 50 ms until it returns `Ok(true)` or `timeout` passes; the error names `what`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
