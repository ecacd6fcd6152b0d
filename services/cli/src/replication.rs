//! `comet broker status`: every member of every broker group (or one `--broker`) with its replication role,
//! CommitLog range and, on masters, each slave's acknowledged offset, lag and whether it is in sync.

use anyhow::Context;
use clap::Subcommand;
use comet_client::Admin;
use comet_nameserver_client::{ClientConfig, NameServerClient};
use comet_proto::comet::v1 as pb;

use crate::admin::Target;

/// `comet broker ...`.
#[derive(Debug, Subcommand)]
pub enum BrokerCommand {
    /// Replication status of every broker (masters and slaves) of the cluster(s), or of `--broker`.
    Status,
}

/// Runs a `comet broker` command.
pub async fn run(cmd: BrokerCommand, target: Target, namesrv: &[String]) -> anyhow::Result<()> {
    let BrokerCommand::Status = cmd;
    let admin = Admin::new(namesrv)?;
    // (broker name, broker id, address) of every member, masters first within a name.
    let members: Vec<(String, u64, String)> = match &target.broker {
        Some(address) => vec![(String::new(), 0, address.clone())],
        None => {
            let info = NameServerClient::new(ClientConfig::new(namesrv.to_vec()))?
                .cluster_info()
                .await
                .context("asking the NameServer for the cluster")?;
            let mut out = Vec::new();
            for c in info.clusters.iter().filter(|c| target.cluster.as_deref().is_none_or(|n| n == c.cluster_name)) {
                for b in &c.brokers {
                    out.extend(b.addresses.iter().map(|(id, a)| (b.broker_name.clone(), *id, a.clone())));
                }
            }
            out.sort();
            anyhow::ensure!(!out.is_empty(), "no broker registered with the NameServer");
            out
        }
    };
    if !target.json {
        println!(
            "{:<16} {:>3} {:<22} {:<6} {:<5} {:>14} REPLICATION",
            "BROKER", "ID", "ADDRESS", "ROLE", "MODE", "MAX OFFSET"
        );
    }
    let mut failed = 0;
    for (name, id, address) in &members {
        let answer = match admin.broker(address)?.get_replication_status(pb::GetReplicationStatusRequest {}).await {
            Ok(a) => a.into_inner(),
            Err(s) => {
                failed += 1;
                eprintln!("broker {address}: {} ({:?})", s.message(), s.code());
                continue;
            }
        };
        let name = if name.is_empty() { address.as_str() } else { name.as_str() };
        if target.json {
            println!("{}", json(name, address, &answer));
        } else {
            let id = if answer.broker_id == *id { answer.broker_id } else { *id };
            println!(
                "{:<16} {:>3} {:<22} {:<6} {:<5} {:>14} {}",
                name,
                id,
                address,
                answer.role,
                if answer.role == "master" { answer.replication_mode.as_str() } else { "-" },
                answer.commit_log_max_offset,
                summary(&answer)
            );
        }
    }
    anyhow::ensure!(failed == 0, "{failed} of {} brokers did not answer", members.len());
    Ok(())
}

/// One line: a master's slaves, or a slave's link to its master.
fn summary(s: &pb::GetReplicationStatusResponse) -> String {
    if s.role == "slave" {
        let lag = s.master_max_offset.saturating_sub(s.commit_log_max_offset);
        return if s.master_connected {
            format!("following {} (behind {lag} B)", s.master_ha_address)
        } else {
            format!("DISCONNECTED from {}", s.master_ha_address)
        };
    }
    if s.ha_address.is_empty() {
        return "no HA listener".into();
    }
    if s.slaves.is_empty() {
        return format!("HA {}: no slave connected", s.ha_address);
    }
    let slaves: Vec<String> = s
        .slaves
        .iter()
        .map(|v| {
            format!("slave {} lag {} B {}", v.broker_id, v.lag_bytes, if v.in_sync { "in sync" } else { "OUT OF SYNC" })
        })
        .collect();
    format!("HA {}: {}", s.ha_address, slaves.join(", "))
}

fn json(name: &str, address: &str, s: &pb::GetReplicationStatusResponse) -> serde_json::Value {
    let slaves: Vec<serde_json::Value> = s
        .slaves
        .iter()
        .map(|v| {
            serde_json::json!({
                "broker_id": v.broker_id, "address": v.address, "acked_offset": v.acked_offset,
                "lag_bytes": v.lag_bytes, "in_sync": v.in_sync, "last_seen_millis": v.last_seen_millis,
            })
        })
        .collect();
    serde_json::json!({
        "broker": name, "address": address, "broker_id": s.broker_id, "role": s.role,
        "replication_mode": s.replication_mode, "ha_address": s.ha_address,
        "commit_log_min_offset": s.commit_log_min_offset, "commit_log_max_offset": s.commit_log_max_offset,
        "slaves": slaves, "master_ha_address": s.master_ha_address, "master_connected": s.master_connected,
        "master_max_offset": s.master_max_offset, "last_master_contact_millis": s.last_master_contact_millis,
    })
}
