//! `comet group`: subscription groups on the brokers: create, update, delete, list, describe (members,
//! committed offsets and lag). Changes go to every master broker of the cluster or to one `--broker`.

use clap::Subcommand;
use comet_proto::comet::v1 as pb;

use crate::admin::{Target, brokers, print_done, status};

/// `comet group ...`.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a subscription group on the brokers (consumption on; set broadcasting and retries here).
    Create {
        /// Group name.
        group: String,
        /// Refuse broadcasting members of this group.
        #[arg(long)]
        no_broadcast: bool,
        /// Redeliveries before the dead-letter queue.
        #[arg(long, default_value_t = 16)]
        retry_max_times: u32,
        /// Delay before each redelivery, comma-separated (`500ms,1s,5s,1m,2h`): retry n waits the n-th, the
        /// last repeats. Default: the broker's `messaging.retry-delays-ms`.
        #[arg(long, value_parser = parse_delays)]
        retry_delays: Option<Delays>,
        /// Create it with consumption paused (pulls refused until `comet group update --consume true`).
        #[arg(long)]
        disabled: bool,
        /// A FIFO group (RocketMQ 5 SDKs): a message group's next message is delivered only after the previous
        /// one is acknowledged or dead-lettered.
        #[arg(long)]
        fifo: bool,
    },
    /// Change a group's settings on the brokers; what is not given stays as it is (offsets and members too).
    Update(GroupUpdate),
    /// Delete a subscription group and its committed offsets on the brokers.
    Delete {
        /// Group name.
        group: String,
    },
    /// List the brokers' consumer groups.
    List,
    /// Show a group's members and per-queue committed offset, max offset and lag.
    Describe {
        /// Group name.
        group: String,
    },
}

/// The settable fields of `comet group update`; `None` keeps the group's current value.
#[derive(Debug, Default, clap::Args)]
pub struct GroupUpdate {
    /// Group name.
    group: String,
    /// FIFO group (RocketMQ 5 SDKs; reported to consumers in the Telemetry settings reply).
    #[arg(long, value_name = "true|false")]
    fifo: Option<bool>,
    /// Consumption on (false pauses it: pulls and receives are refused).
    #[arg(long, value_name = "true|false")]
    consume: Option<bool>,
    /// Broadcasting members allowed.
    #[arg(long, value_name = "true|false")]
    broadcast: Option<bool>,
    /// Redeliveries before the dead-letter queue.
    #[arg(long)]
    retry_max_times: Option<u32>,
    /// Delay before each redelivery, comma-separated (`500ms,1s,5m`), or `default` for the broker's
    /// `messaging.retry-delays-ms`.
    #[arg(long, value_parser = parse_delays_or_default)]
    retry_delays: Option<Delays>,
}

impl GroupUpdate {
    /// `config` with the changes asked for.
    fn apply(&self, mut config: pb::GroupConfig) -> pb::GroupConfig {
        if let Some(fifo) = self.fifo {
            config.fifo = fifo;
        }
        if let Some(consume) = self.consume {
            config.consume_enable = consume;
        }
        if let Some(broadcast) = self.broadcast {
            config.consume_broadcast_enable = broadcast;
        }
        if let Some(n) = self.retry_max_times {
            config.retry_max_times = n;
        }
        if let Some(delays) = &self.retry_delays {
            config.retry_delays_millis = delays.0.clone();
        }
        config
    }

    fn is_empty(&self) -> bool {
        self.fifo.is_none()
            && self.consume.is_none()
            && self.broadcast.is_none()
            && self.retry_max_times.is_none()
            && self.retry_delays.is_none()
    }
}

/// Runs a `comet group` command.
pub async fn run(cmd: GroupCommand, target: Target, namesrv: &[String]) -> anyhow::Result<()> {
    let (admin, brokers) = brokers(namesrv, &target).await?;
    match cmd {
        GroupCommand::Create { group, no_broadcast, retry_max_times, retry_delays, disabled, fifo } => {
            let config = pb::GroupConfig {
                name: group.clone(),
                consume_enable: !disabled,
                consume_broadcast_enable: !no_broadcast,
                retry_max_times,
                retry_delays_millis: retry_delays.map(|d| d.0).unwrap_or_default(),
                fifo,
            };
            for (name, address) in &brokers {
                admin
                    .broker(address)?
                    .create_group(pb::CreateGroupRequest { group: Some(config.clone()) })
                    .await
                    .map_err(|s| status(name, &format!("creating group {group}"), s))?;
                print_done(target.json, name, "group", &group, "created");
            }
        }
        GroupCommand::Update(update) => {
            anyhow::ensure!(
                !update.is_empty(),
                "nothing to change: give --fifo, --consume, --broadcast, --retry-max-times or --retry-delays"
            );
            let group = &update.group;
            for (name, address) in &brokers {
                let mut client = admin.broker(address)?;
                // The broker takes the full config: start from what it has, change only what was asked.
                let current = client
                    .list_groups(pb::ListGroupsRequest {})
                    .await
                    .map_err(|s| status(name, "listing groups", s))?
                    .into_inner()
                    .groups
                    .into_iter()
                    .find(|g| g.name == *group)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "group {group} does not exist on broker {name} (create it with `comet group create`)"
                        )
                    })?;
                let updated = client
                    .update_group(pb::UpdateGroupRequest { group: Some(update.apply(current)) })
                    .await
                    .map_err(|s| status(name, &format!("updating group {group}"), s))?
                    .into_inner()
                    .group
                    .unwrap_or_default();
                if target.json {
                    println!("{}", group_json(name, &updated));
                } else {
                    println!(
                        "updated group {group} on {name}: consume {} broadcast {} retries {} delays {} fifo {}",
                        updated.consume_enable,
                        updated.consume_broadcast_enable,
                        updated.retry_max_times,
                        delays_text(&updated.retry_delays_millis),
                        updated.fifo
                    );
                }
            }
        }
        GroupCommand::Delete { group } => {
            for (name, address) in &brokers {
                admin
                    .broker(address)?
                    .delete_group(pb::DeleteGroupRequest { group: group.clone() })
                    .await
                    .map_err(|s| status(name, &format!("deleting group {group}"), s))?;
                print_done(target.json, name, "group", &group, "deleted");
            }
        }
        GroupCommand::List => {
            if !target.json {
                println!(
                    "{:<16} {:<32} {:>8} {:>9} {:>6} {:>5} DELAYS",
                    "BROKER", "GROUP", "CONSUME", "BROADCAST", "RETRY", "FIFO"
                );
            }
            for (name, address) in &brokers {
                let groups = admin
                    .broker(address)?
                    .list_groups(pb::ListGroupsRequest {})
                    .await
                    .map_err(|s| status(name, "listing groups", s))?
                    .into_inner()
                    .groups;
                for g in &groups {
                    if target.json {
                        println!("{}", group_json(name, g));
                    } else {
                        println!(
                            "{:<16} {:<32} {:>8} {:>9} {:>6} {:>5} {}",
                            name,
                            g.name,
                            g.consume_enable,
                            g.consume_broadcast_enable,
                            g.retry_max_times,
                            g.fifo,
                            delays_text(&g.retry_delays_millis)
                        );
                    }
                }
            }
        }
        GroupCommand::Describe { group } => {
            let mut members = std::collections::BTreeMap::new();
            let mut offsets = Vec::new();
            let mut known = false;
            let mut config = None;
            for (name, address) in &brokers {
                let described = match admin
                    .broker(address)?
                    .describe_group(pb::DescribeGroupRequest { group: group.clone() })
                    .await
                {
                    Ok(r) => r.into_inner(),
                    // A group may be known to some brokers only (it consumed topics hosted elsewhere).
                    Err(s) if s.code() == tonic::Code::NotFound => continue,
                    Err(s) => return Err(status(name, &format!("describing group {group}"), s)),
                };
                known = true;
                config = config.or(described.group);
                // Every broker knows the members (clients heartbeat to all); offsets are per broker.
                for m in described.members {
                    members.insert(m.client_id.clone(), m);
                }
                offsets.extend(described.offsets.into_iter().map(|o| (name.clone(), o)));
            }
            anyhow::ensure!(known, "group {group} not found on any broker");
            let total_lag: u64 = offsets.iter().map(|(_, o)| o.lag).sum();
            if target.json {
                let line = serde_json::json!({
                    "group": group,
                    "members": members.values().map(|m| serde_json::json!({
                        "client_id": m.client_id,
                        "subscriptions": m.subscriptions.iter().map(|s| format!("{}:{}", s.topic, s.expression)).collect::<Vec<_>>(),
                        "last_heartbeat_millis": m.last_heartbeat_millis,
                    })).collect::<Vec<_>>(),
                    "offsets": offsets.iter().map(|(b, o)| serde_json::json!({
                        "broker": b, "topic": o.topic, "queue_id": o.queue_id, "committed_offset": o.committed_offset,
                        "max_offset": o.max_offset, "lag": o.lag,
                    })).collect::<Vec<_>>(),
                    "total_lag": total_lag,
                    "retry_max_times": config.as_ref().map(|g| g.retry_max_times),
                    "retry_delays_millis": config.as_ref().map(|g| g.retry_delays_millis.clone()),
                    "consume_enable": config.as_ref().map(|g| g.consume_enable),
                    "fifo": config.as_ref().map(|g| g.fifo),
                });
                println!("{line}");
            } else {
                println!("group {group}: {} member(s), total lag {total_lag}", members.len());
                if let Some(g) = &config {
                    println!(
                        "  retries: at most {}, delays {}; consume {}, fifo {}",
                        g.retry_max_times,
                        delays_text(&g.retry_delays_millis),
                        g.consume_enable,
                        g.fifo
                    );
                }
                for m in members.values() {
                    let subs: Vec<String> =
                        m.subscriptions.iter().map(|s| format!("{}:{}", s.topic, s.expression)).collect();
                    println!("  member {} {}", m.client_id, subs.join(" "));
                }
                println!(
                    "{:<16} {:<32} {:>5} {:>12} {:>12} {:>8}",
                    "BROKER", "TOPIC", "QUEUE", "COMMITTED", "MAX", "LAG"
                );
                for (b, o) in &offsets {
                    println!(
                        "{:<16} {:<32} {:>5} {:>12} {:>12} {:>8}",
                        b, o.topic, o.queue_id, o.committed_offset, o.max_offset, o.lag
                    );
                }
            }
        }
    }
    Ok(())
}

/// A group's retry delays in ms, as `--retry-delays` gives them.
#[derive(Debug, Clone)]
pub struct Delays(Vec<u64>);

/// Parses `500ms,1s,5m,2h` (a bare number is milliseconds).
fn parse_delays(text: &str) -> Result<Delays, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let split = part.find(|c: char| !c.is_ascii_digit()).unwrap_or(part.len());
        let (number, unit) = part.split_at(split);
        let n: u64 = number.parse().map_err(|_| format!("{part:?}: expected a number with ms, s, m or h"))?;
        let factor = match unit {
            "" | "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(format!("{part:?}: unit must be ms, s, m or h")),
        };
        out.push(n.checked_mul(factor).ok_or_else(|| format!("{part:?} is too long"))?);
    }
    if out.is_empty() {
        return Err("at least one delay is required".into());
    }
    Ok(Delays(out))
}

/// `--retry-delays` of an update: delays, or `default` (empty: the broker's).
fn parse_delays_or_default(text: &str) -> Result<Delays, String> {
    if text.trim() == "default" { Ok(Delays(Vec::new())) } else { parse_delays(text) }
}

/// One group as a JSON line (`group list`, `group update`).
fn group_json(broker: &str, g: &pb::GroupConfig) -> serde_json::Value {
    serde_json::json!({
        "broker": broker, "group": g.name, "consume_enable": g.consume_enable,
        "consume_broadcast_enable": g.consume_broadcast_enable,
        "retry_max_times": g.retry_max_times,
        "retry_delays_millis": g.retry_delays_millis,
        "fifo": g.fifo,
    })
}

/// Delays for tables: `1s,5s,2m`, or `default` (the broker's).
fn delays_text(delays: &[u64]) -> String {
    if delays.is_empty() {
        return "default".into();
    }
    let one = |ms: u64| match ms {
        ms if ms > 0 && ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms > 0 && ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms > 0 && ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    };
    delays.iter().map(|&d| one(d)).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_parse_with_units_and_print_back() {
        assert_eq!(parse_delays("500ms, 1s,5m,2h,250").unwrap().0, vec![500, 1_000, 300_000, 7_200_000, 250]);
        assert!(parse_delays("1d").is_err());
        assert!(parse_delays("").is_err());
        assert!(parse_delays("x").is_err());
        assert_eq!(delays_text(&[500, 1_000, 300_000, 7_200_000]), "500ms,1s,5m,2h");
        assert_eq!(delays_text(&[]), "default");
        assert_eq!(parse_delays_or_default("default").unwrap().0, Vec::<u64>::new());
        assert_eq!(parse_delays_or_default("2s").unwrap().0, vec![2_000]);
    }

    #[test]
    fn an_update_changes_only_what_was_given() {
        let current = pb::GroupConfig {
            name: "g".into(),
            consume_enable: true,
            consume_broadcast_enable: true,
            retry_max_times: 16,
            retry_delays_millis: vec![1_000],
            fifo: false,
        };
        let none = GroupUpdate { group: "g".into(), ..Default::default() };
        assert!(none.is_empty());
        assert_eq!(none.apply(current.clone()), current);
        let fifo = GroupUpdate { group: "g".into(), fifo: Some(true), ..Default::default() };
        assert_eq!(fifo.apply(current.clone()), pb::GroupConfig { fifo: true, ..current.clone() });
        let reset = GroupUpdate {
            group: "g".into(),
            consume: Some(false),
            retry_delays: Some(Delays(Vec::new())),
            ..Default::default()
        };
        let changed = reset.apply(current.clone());
        assert!(!changed.consume_enable && changed.retry_delays_millis.is_empty() && changed.retry_max_times == 16);
    }
}
