//! The gRPC edge: the tonic server, wire ↔ domain conversion, and the one error → status mapping.

pub mod convert;
pub mod server;
pub mod status;
