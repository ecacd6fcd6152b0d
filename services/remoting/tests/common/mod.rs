//! Shared helpers of the crate tests: servers on 127.0.0.1 port 0 and clients with short back-offs.
#![allow(dead_code)] // each test binary uses a different subset
#![allow(clippy::unwrap_used)] // test helpers, not #[test] functions

use std::time::Duration;

use comet_remoting::{
    ChannelConfig, Client, ClientConfig, Command, Request, Router, SerializeType, Server, ServerConfig, code,
};

/// Request code of the echo handler.
pub const ECHO: i32 = 1;
/// A generous timeout for calls that must succeed.
pub const LONG: Duration = Duration::from_secs(10);

pub fn channel(ty: SerializeType) -> ChannelConfig {
    ChannelConfig { serialize_type: ty, sweep_interval_ms: 10, ..ChannelConfig::default() }
}

pub fn server_config(ty: SerializeType) -> ServerConfig {
    ServerConfig { listen: "127.0.0.1:0".to_owned(), channel: channel(ty), ..ServerConfig::default() }
}

pub fn client_config(ty: SerializeType) -> ClientConfig {
    ClientConfig {
        channel: channel(ty),
        reconnect_backoff_min_ms: 5,
        reconnect_backoff_max_ms: 50,
        ..ClientConfig::default()
    }
}

/// Answers with the request's body and ext fields.
pub async fn echo(req: Request) -> Command {
    let mut resp = Command::response(code::SUCCESS, None).with_body(req.command.body);
    resp.ext_fields = req.command.ext_fields;
    resp
}

pub fn echo_router() -> Router {
    Router::new().route(ECHO, 1024, echo)
}

pub async fn echo_server() -> Server {
    Server::bind(server_config(SerializeType::RocketMq), echo_router()).await.unwrap()
}

pub fn client() -> Client {
    Client::new(client_config(SerializeType::RocketMq))
}

pub fn addr(server: &Server) -> String {
    server.local_addr().to_string()
}

/// Installs a test log subscriber once (RUST_LOG controls it), so a failing test shows the channel's logs.
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .try_init();
}
