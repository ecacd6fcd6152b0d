//! Comet's broker: stores messages in a [`comet_store::Store`] and serves producers, consumers and admin tools
//! over `comet.v1.Broker` (docs/broker.md).
//!
//! Layout, edge → handler → domain → store:
//! - [`edge`]: the tonic server (Broker, health, reflection), wire ↔ domain conversion, error → status.
//! - [`handler`]: one file per request family (send, pull, offsets, clients, topics, groups, queries).
//! - [`broker`]: the shared state every handler works on; store calls go through [`broker::Broker::blocking`].
//! - [`domain`]: topic, group, offset and client tables, tag filters, long-poll waiters. Synchronous, unit-tested.
//! - [`registration`]: registration with the NameServers.
//! - [`ha`]: master/slave replication over comet-remoting (HA listener, slave loop, sync-send waits).
//! - [`metrics`]: counters on the send and pull paths, gauges computed at collection (consumer lag, store).
//! - [`v2`]: the Apache RocketMQ 5 gRPC API (`apache.rocketmq.v2.MessagingService`) for the official SDKs.
//! - [`config`]: YAML + `COMET_*` environment configuration.
//!
//! The binary (`src/main.rs`) only parses arguments, initialises logging and calls [`edge::server::bind`].

pub mod broker;
pub mod config;
pub mod domain;
pub mod edge;
pub mod error;
pub mod ha;
pub mod handler;
pub mod metrics;
pub mod registration;
pub mod v2;

pub use config::Config;
pub use error::BrokerError;
