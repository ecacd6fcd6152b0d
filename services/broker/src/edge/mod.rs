//! The network edge: the tonic server, the remoting data path sharing its port, wire ↔ domain conversion, and the
//! one error → status mapping.

pub mod convert;
pub mod remoting;
pub mod server;
pub mod status;
pub mod wire;
