//! The broker's domain: synchronous state with no gRPC types, each piece unit-tested on its own.

pub mod clients;
pub mod copy;
pub mod dedup;
pub mod filter;
pub mod groups;
pub mod locks;
pub mod long_poll;
pub mod offsets;
pub mod persist;
pub mod pop;
pub mod pulled;
pub mod retry;
pub mod timer;
pub mod topics;
pub mod transactions;
