//! Comet's internal remoting channel: RocketMQ's frame layout over TCP, payload-agnostic. It moves
//! `(code, opaque, flags, header, body)` between processes and knows nothing of topics or messages; the broker
//! builds replication and broker↔broker calls on it.
//!
//! Layout:
//! - [`frame`]: the pure codec (no I/O): [`Command`], both header encodings (`header.rs`), the incremental
//!   [`FrameDecoder`].
//! - [`Connection`] (`connection.rs`): one TCP connection, symmetrical (either side sends requests); pending
//!   table, timeouts, permits, bounded write queue.
//! - [`Router`] (`router.rs`): code → handler with a per-handler in-flight bound; BUSY / NOT_SUPPORTED / GO_AWAY.
//! - [`Client`] (`client.rs`): a connection per address, reconnect with back-off.
//! - [`Server`] (`server.rs`): accept loop, graceful shutdown.
//!
//! Invocation modes (RocketMQ's): [`Connection::invoke`] waits for the response; [`Connection::invoke_async`]
//! returns a [`ResponseFuture`] (bounded by async permits), [`Connection::invoke_with_callback`] calls back;
//! [`Connection::invoke_oneway`] expects no response (bounded by oneway permits).

pub mod client;
pub mod config;
pub mod connection;
pub mod error;
pub mod frame;
mod header;
pub mod router;
pub mod server;

pub use client::Client;
pub use config::{ChannelConfig, ClientConfig, ServerConfig};
pub use connection::{Connection, ResponseFuture};
pub use error::{Error, Result};
pub use frame::{Command, FrameDecoder, FrameError, Language, SerializeType};
pub use router::{Handler, Request, Router, code};
pub use server::{ConnectionLimit, Server};
