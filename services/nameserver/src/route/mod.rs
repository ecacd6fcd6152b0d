//! The route domain: registrations, their validation, and the table that answers route queries.

mod registration;
mod table;

pub use registration::{BrokerIdentity, BrokerRegistration, RegistrationLimits, validate_topic};
pub use table::{ClusterView, RegisterOutcome, RouteTable};
