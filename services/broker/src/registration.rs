//! Registration with the NameServers: a full registration with every configured NameServer at start-up and
//! after every topic change, a heartbeat every `register-interval-ms` (full registration when a NameServer asks),
//! and an unregistration at shutdown. Memory-mode NameServers share nothing, so every call goes to all of them.

use std::sync::Arc;
use std::time::Duration;

use comet_nameserver_client::{ClientConfig, NameServerClient};
use comet_proto::comet::v1 as pb;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::edge::convert;
use crate::error::{BrokerError, Result};

/// Starts the registration task; `None` when no NameServer is configured. Setting `stop` to true makes it
/// unregister and end.
pub fn spawn(broker: Arc<Broker>, stop: watch::Receiver<bool>) -> Result<Option<JoinHandle<()>>> {
    let addresses = broker.config.broker.nameserver_addresses.clone();
    if addresses.is_empty() {
        tracing::info!("no NameServer configured: running without registration");
        return Ok(None);
    }
    let client = NameServerClient::new(ClientConfig::new(addresses))
        .map_err(|e| BrokerError::Config(format!("broker.nameserver-addresses: {e}")))?;
    Ok(Some(tokio::spawn(run(broker, client, stop))))
}

fn identity(broker: &Broker) -> pb::BrokerIdentity {
    pb::BrokerIdentity {
        cluster_name: broker.config.broker.cluster_name.clone(),
        broker_name: broker.config.broker.broker_name.clone(),
        broker_id: broker.config.broker.broker_id,
        address: broker.advertised.clone(),
    }
}

fn version_to_proto(v: comet_model::DataVersion) -> pb::DataVersion {
    pb::DataVersion { state_version: v.state_version, timestamp_millis: v.timestamp_millis, counter: v.counter }
}

async fn register_all(broker: &Broker, client: &NameServerClient) {
    let (version, topics) = broker.topics.snapshot();
    let header = pb::RegisterBrokerHeader {
        broker: Some(identity(broker)),
        ha_address: broker.ha.ha_address().to_owned(),
        data_version: Some(version_to_proto(version)),
        topic_count: 0,
        heartbeat_timeout_millis: 0,
    };
    let topics = topics.iter().map(convert::topic_to_proto).collect();
    for (address, result) in client.register_broker_all(header, topics).await {
        match result {
            Ok(_) => tracing::debug!(%address, version = %version, "registered with NameServer"),
            Err(e) => tracing::warn!(%address, error = %e, "registration with NameServer failed; retrying later"),
        }
    }
}

async fn run(broker: Arc<Broker>, client: NameServerClient, mut stop: watch::Receiver<bool>) {
    register_all(&broker, &client).await;
    let period = Duration::from_millis(broker.config.broker.register_interval_ms);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let version = version_to_proto(broker.topics.data_version());
                let answers = client.heartbeat_all(identity(&broker), version).await;
                // A NameServer that restarted or missed a change asks for a full registration; one that did not
                // answer gets it too, so it is current as soon as it is back.
                if answers.iter().any(|(_, r)| !matches!(r, Ok(false))) {
                    register_all(&broker, &client).await;
                }
            }
            () = broker.topics_changed.notified() => register_all(&broker, &client).await,
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    for (address, result) in client.unregister_all(identity(&broker)).await {
        match result {
            Ok(()) => tracing::info!(%address, "unregistered from NameServer"),
            Err(e) => tracing::warn!(%address, error = %e, "unregistration failed; the NameServer will expire us"),
        }
    }
}
