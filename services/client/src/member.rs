//! Which member of a broker group (master or slave) a consumer talks to.
//!
//! A broker group is one master (broker id 0) and its slaves (ids >= 1) under one broker name. Slaves serve the
//! read side of the broker API (pulls, offset queries and commits, heartbeats, consumer lists), so a consumer can
//! keep reading while the master is down. The NameServer keeps listing a dead master for up to 120 s, so the route
//! is not a timely signal: a transport failure on a member (connection refused, UNAVAILABLE, a timeout) marks it
//! down for a back-off ([`crate::fault::Faults`], the producer's fault avoidance keyed by address), and the choice
//! skips members that are down.

use std::fmt;
use std::str::FromStr;

use comet_model::MASTER_ID;

use crate::route::BrokerMembers;

/// Which member of each broker group a consumer reads from (pulls, the consumer list, offset commits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadPreference {
    /// The master; a slave (the lowest id) only while the master is missing from the route or failed within the
    /// back-off. The master has every message first, so this adds no replication delay.
    #[default]
    Master,
    /// A slave (the lowest id that is not down), to take read load off the master; the master when the route has
    /// no live slave. Messages reach a slave after replication, so they arrive slightly later.
    Slave,
}

impl ReadPreference {
    /// The spelling in configs and on the command line (`master`, `slave`).
    pub fn as_str(self) -> &'static str {
        match self {
            ReadPreference::Master => "master",
            ReadPreference::Slave => "slave",
        }
    }
}

impl fmt::Display for ReadPreference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReadPreference {
    type Err = String;

    /// Parses `master` or `slave` (any case), so applications can take the setting from their own config.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "master" => Ok(ReadPreference::Master),
            "slave" => Ok(ReadPreference::Slave),
            other => Err(format!("read preference {other:?}: expected master or slave")),
        }
    }
}

/// The order members are tried in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// Master, then slaves by id: reads with [`ReadPreference::Master`], and offset look-ups (the master's
    /// offsets are the reference; a slave's copy may be a couple of seconds old).
    MasterFirst,
    /// Slaves by id, then the master: reads with [`ReadPreference::Slave`].
    SlaveFirst,
}

impl From<ReadPreference> for Order {
    fn from(preference: ReadPreference) -> Self {
        match preference {
            ReadPreference::Master => Order::MasterFirst,
            ReadPreference::Slave => Order::SlaveFirst,
        }
    }
}

/// One member of a broker group, as chosen for a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    /// Broker id (0 = master).
    pub(crate) id: u64,
    /// gRPC address.
    pub(crate) address: String,
}

impl Member {
    /// Whether this member is the group's master.
    pub(crate) fn is_master(&self) -> bool {
        self.id == MASTER_ID
    }
}

/// The member to call: the first in `order` that is neither `tried` (already failed in this call) nor down; when
/// every untried member is down, the first untried one anyway (a call must go somewhere, and it doubles as a
/// probe). `None` when every member was tried or the route lists none.
pub(crate) fn choose(
    members: &BrokerMembers,
    order: Order,
    is_down: impl Fn(&str) -> bool,
    tried: &[String],
) -> Option<Member> {
    let master = members.iter().filter(|(id, _)| *id == MASTER_ID);
    let slaves = members.iter().filter(|(id, _)| *id != MASTER_ID);
    let ordered: Vec<(u64, &str)> = match order {
        Order::MasterFirst => master.chain(slaves).collect(),
        Order::SlaveFirst => slaves.chain(master).collect(),
    };
    let untried = || ordered.iter().filter(|(_, address)| !tried.iter().any(|t| t == address));
    let (id, address) = untried().find(|(_, address)| !is_down(address)).or_else(|| untried().next())?;
    Some(Member { id: *id, address: (*address).to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(members: &[(u64, &str)]) -> BrokerMembers {
        let mut group = BrokerMembers::default();
        for (id, address) in members {
            group.insert(*id, *address);
        }
        group
    }

    fn pick(members: &BrokerMembers, order: Order, down: &[&str], tried: &[&str]) -> Option<(u64, String)> {
        let tried: Vec<String> = tried.iter().map(|t| (*t).to_owned()).collect();
        choose(members, order, |a| down.contains(&a), &tried).map(|m| (m.id, m.address))
    }

    #[test]
    fn master_preference_reads_the_master_and_the_lowest_slave_while_it_is_down_or_gone() {
        let full = group(&[(2, "s2"), (0, "m"), (1, "s1")]);
        assert_eq!(pick(&full, Order::MasterFirst, &[], &[]), Some((0, "m".into())));
        assert_eq!(pick(&full, Order::MasterFirst, &["m"], &[]), Some((1, "s1".into())), "lowest-id slave");
        assert_eq!(pick(&full, Order::MasterFirst, &["m", "s1"], &[]), Some((2, "s2".into())));
        assert_eq!(pick(&full, Order::MasterFirst, &[], &["m"]), Some((1, "s1".into())), "fail-over within a call");
        let no_master = group(&[(1, "s1"), (2, "s2")]);
        assert_eq!(pick(&no_master, Order::MasterFirst, &[], &[]), Some((1, "s1".into())), "master not in route");
        let master_only = group(&[(0, "m")]);
        assert_eq!(pick(&master_only, Order::MasterFirst, &["m"], &[]), Some((0, "m".into())), "no slave: master");
    }

    #[test]
    fn slave_preference_reads_a_live_slave_else_the_master() {
        let full = group(&[(0, "m"), (1, "s1"), (2, "s2")]);
        assert_eq!(pick(&full, Order::SlaveFirst, &[], &[]), Some((1, "s1".into())));
        assert_eq!(pick(&full, Order::SlaveFirst, &["s1"], &[]), Some((2, "s2".into())));
        assert_eq!(pick(&full, Order::SlaveFirst, &["s1", "s2"], &[]), Some((0, "m".into())), "no live slave");
        let master_only = group(&[(0, "m")]);
        assert_eq!(pick(&master_only, Order::SlaveFirst, &[], &[]), Some((0, "m".into())), "route has no slave");
    }

    #[test]
    fn when_every_member_is_down_the_preferred_one_is_probed_and_tried_ones_never_twice() {
        let full = group(&[(0, "m"), (1, "s1")]);
        assert_eq!(pick(&full, Order::MasterFirst, &["m", "s1"], &[]), Some((0, "m".into())));
        assert_eq!(pick(&full, Order::SlaveFirst, &["m", "s1"], &[]), Some((1, "s1".into())));
        assert_eq!(pick(&full, Order::MasterFirst, &["m", "s1"], &["m"]), Some((1, "s1".into())));
        assert_eq!(pick(&full, Order::MasterFirst, &[], &["m", "s1"]), None, "every member tried");
        assert_eq!(pick(&BrokerMembers::default(), Order::MasterFirst, &[], &[]), None);
    }

    #[test]
    fn the_preference_round_trips_through_its_spelling() {
        for preference in [ReadPreference::Master, ReadPreference::Slave] {
            assert_eq!(preference.to_string().parse::<ReadPreference>(), Ok(preference));
        }
        assert_eq!("SLAVE".parse::<ReadPreference>(), Ok(ReadPreference::Slave));
        assert!("replica".parse::<ReadPreference>().is_err());
        assert_eq!(ReadPreference::default(), ReadPreference::Master);
    }
}
