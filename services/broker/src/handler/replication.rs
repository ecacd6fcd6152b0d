//! GetReplicationStatus: the broker's role and, per side, its slaves or its link to the master.

use std::sync::atomic::Ordering;

use comet_proto::comet::v1 as pb;

use crate::broker::Broker;
use crate::config::ReplicationMode;

/// What `comet broker status` shows about replication.
pub fn status(broker: &Broker) -> pb::GetReplicationStatusResponse {
    let store = &broker.store;
    let (min, end) = (store.min_offset().0, store.end_offset().0);
    let ha = &broker.ha;
    let slave = broker.config.is_slave();
    let slaves = ha
        .slaves()
        .into_iter()
        .map(|(broker_id, address, acked, last_seen)| pb::SlaveReplicationStatus {
            broker_id,
            address,
            acked_offset: acked,
            lag_bytes: end.saturating_sub(acked),
            in_sync: ha.in_sync(acked, end),
            last_seen_millis: last_seen,
        })
        .collect();
    let follower = &ha.follower;
    pb::GetReplicationStatusResponse {
        role: if slave { "slave" } else { "master" }.to_owned(),
        broker_id: broker.config.broker.broker_id,
        replication_mode: match ha.mode() {
            ReplicationMode::Async => "async",
            ReplicationMode::Sync => "sync",
        }
        .to_owned(),
        ha_address: ha.ha_address().to_owned(),
        commit_log_min_offset: min,
        commit_log_max_offset: end,
        slaves,
        master_ha_address: broker.config.ha.master_address.clone(),
        master_connected: follower.connected.load(Ordering::Acquire),
        master_max_offset: follower.master_end.load(Ordering::Acquire),
        last_master_contact_millis: follower.last_contact_ms.load(Ordering::Acquire),
    }
}
