//! Comet's NameServer: the route registry brokers register with and clients ask where a topic lives.
//!
//! Layout, edge → handler → domain:
//! - [`edge`]: the tonic server (NameServer, health, reflection), wire ↔ domain conversion, error → status.
//! - [`handler`]: one file per request family (broker registration, routes, KV config).
//! - [`registry`]: the [`registry::Registry`] trait and its backends (memory; etcd behind the `etcd` feature).
//! - [`route`] and [`kv`]: the domain: registrations, the route table, KV config. Synchronous, time injected.
//! - [`config`]: YAML + `COMET_*` environment configuration.
//!
//! The binary (`src/main.rs`) only parses arguments, initialises logging and calls [`edge::server::bind`].

pub mod config;
pub mod edge;
pub mod error;
pub mod handler;
pub mod kv;
pub mod registry;
pub mod route;

pub use config::Config;
pub use error::NameServerError;
