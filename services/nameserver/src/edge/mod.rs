//! The gRPC edge: listener, service wiring (NameServer, health, reflection), wire ↔ domain conversion and the
//! one error → status mapping.

pub(crate) mod convert;
pub mod server;
mod status;
