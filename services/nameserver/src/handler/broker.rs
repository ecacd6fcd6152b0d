//! RegisterBroker (client-streamed), Heartbeat, UnregisterBroker.

use std::time::Duration;

use comet_proto::comet::v1 as pb;
use comet_proto::comet::v1::register_broker_request::Part;
use tonic::{Status, Streaming};

use crate::edge::convert;
use crate::error::NameServerError;
use crate::registry::Registry;
use crate::route::{BrokerRegistration, RegistrationLimits};

/// Accepted per-broker heartbeat timeouts: below 1 s a GC pause expires a healthy broker; above an hour a dead
/// one lingers in routes.
const TIMEOUT_RANGE_MS: std::ops::RangeInclusive<u64> = 1_000..=3_600_000;

/// Reads the header and every topic batch, checks the count, validates, then applies it in one step: a stream
/// cut half way changes nothing.
pub async fn register<R: Registry>(
    registry: &R,
    limits: RegistrationLimits,
    mut stream: Streaming<pb::RegisterBrokerRequest>,
) -> Result<pb::RegisterBrokerResponse, Status> {
    let Some(first) = stream.message().await? else {
        return Err(NameServerError::invalid("header", "the stream is empty").into());
    };
    let Some(Part::Header(header)) = first.part else {
        return Err(NameServerError::invalid("header", "the first message must be a header").into());
    };
    let identity = convert::identity(header.broker)?;
    let expected = header.topic_count as usize;
    if expected > limits.max_topics {
        return Err(NameServerError::invalid(
            "topic_count",
            format!("{expected} topics; the limit per broker is {}", limits.max_topics),
        )
        .into());
    }
    let heartbeat_timeout = match header.heartbeat_timeout_millis {
        0 => None,
        ms if TIMEOUT_RANGE_MS.contains(&ms) => Some(Duration::from_millis(ms)),
        ms => {
            return Err(NameServerError::invalid(
                "heartbeat_timeout_millis",
                format!("{ms} is outside {TIMEOUT_RANGE_MS:?} (0 = server default)"),
            )
            .into());
        }
    };

    let mut topics = Vec::with_capacity(expected);
    while let Some(message) = stream.message().await? {
        let Some(Part::Topics(batch)) = message.part else {
            return Err(NameServerError::invalid("topics", "only the first message may be a header").into());
        };
        if topics.len() + batch.topics.len() > expected {
            return Err(NameServerError::invalid("topics", format!("more topics than topic_count = {expected}")).into());
        }
        for topic in batch.topics {
            topics.push(convert::topic_config(topic)?);
        }
    }
    if topics.len() != expected {
        return Err(NameServerError::invalid(
            "topic_count",
            format!("header announced {expected} topics, the stream carried {}", topics.len()),
        )
        .into());
    }

    let reg = BrokerRegistration {
        identity,
        ha_address: header.ha_address,
        data_version: convert::data_version(header.data_version),
        topics,
        heartbeat_timeout,
    };
    reg.validate(limits)?;
    let outcome = registry.register(reg).await?;
    Ok(pb::RegisterBrokerResponse {
        data_changed: outcome.data_changed,
        master_address: outcome.master_address,
        master_ha_address: outcome.master_ha_address,
    })
}

/// Refreshes liveness; asks for a full registration when the broker or its data version is unknown.
pub async fn heartbeat<R: Registry>(
    registry: &R,
    request: pb::HeartbeatRequest,
) -> Result<pb::HeartbeatResponse, NameServerError> {
    let identity = convert::identity(request.broker)?;
    let accepted = registry.heartbeat(identity, convert::data_version(request.data_version)).await?;
    Ok(pb::HeartbeatResponse { registration_required: !accepted })
}

/// Removes the broker now. Unregistering an unknown broker succeeds (shutdown must be idempotent).
pub async fn unregister<R: Registry>(
    registry: &R,
    request: pb::UnregisterBrokerRequest,
) -> Result<pb::UnregisterBrokerResponse, NameServerError> {
    let identity = convert::identity(request.broker)?;
    registry.unregister(identity).await?;
    Ok(pb::UnregisterBrokerResponse {})
}
