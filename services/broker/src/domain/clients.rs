//! Live producers and consumers, from client heartbeats. A client silent for `expiry` is dropped from its
//! groups (RocketMQ: 120 s); the consumer list of a group is the input of the clients' re-balance.
//! Time is passed in (ms since the epoch), so expiry is tested without waiting.

use std::collections::{BTreeMap, HashMap};

use parking_lot::Mutex;

/// How a consumer group consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum MessageModel {
    /// Each message to one member; offsets on the broker.
    #[default]
    Clustering,
    /// Each member reads everything; offsets on the client.
    Broadcasting,
}

/// What a client says about itself in heartbeats; only reported in metrics (connections by language).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClientInfo {
    /// RocketMQ LanguageCode spelling (`RUST`, `JAVA`, ...); empty = unknown.
    pub language: String,
    /// Client library version; empty = unknown.
    pub version: String,
}

/// A consumer group member as its last heartbeat described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerMember {
    /// Client id.
    pub client_id: String,
    /// Consumption model.
    pub model: MessageModel,
    /// (topic, tag expression) pairs.
    pub subscriptions: Vec<(String, String)>,
    /// Last heartbeat, ms since the epoch.
    pub last_heartbeat_ms: u64,
    /// Language and version.
    pub info: ClientInfo,
}

/// Live clients of one kind counted by what metrics label them with (`rocketmq_*_connections`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConnectionCount {
    /// Consumer group (empty for producers, which are counted over all their groups).
    pub group: String,
    /// Consumption model (consumers only).
    pub model: Option<MessageModel>,
    /// Language and version.
    pub info: ClientInfo,
    /// Live clients.
    pub count: u64,
}

/// One consumer group in a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerHeartbeat {
    /// Group.
    pub group: String,
    /// Consumption model.
    pub model: MessageModel,
    /// (topic, tag expression) pairs.
    pub subscriptions: Vec<(String, String)>,
}

#[derive(Debug, Default)]
struct State {
    /// group → client id → member.
    consumers: HashMap<String, BTreeMap<String, ConsumerMember>>,
    /// group → client id → (last heartbeat ms, language and version).
    producers: HashMap<String, BTreeMap<String, (u64, ClientInfo)>>,
}

/// Client registry.
#[derive(Debug)]
pub struct ClientRegistry {
    expiry_ms: u64,
    state: Mutex<State>,
}

impl ClientRegistry {
    /// A registry dropping clients silent for `expiry_ms`.
    pub fn new(expiry_ms: u64) -> Self {
        Self { expiry_ms, state: Mutex::new(State::default()) }
    }

    /// Records a heartbeat of `client_id` for its producer and consumer groups.
    pub fn heartbeat(
        &self,
        client_id: &str,
        info: &ClientInfo,
        producers: &[String],
        consumers: Vec<ConsumerHeartbeat>,
        now_ms: u64,
    ) {
        let mut state = self.state.lock();
        for group in producers {
            state.producers.entry(group.clone()).or_default().insert(client_id.to_owned(), (now_ms, info.clone()));
        }
        for c in consumers {
            let member = ConsumerMember {
                client_id: client_id.to_owned(),
                model: c.model,
                subscriptions: c.subscriptions,
                last_heartbeat_ms: now_ms,
                info: info.clone(),
            };
            state.consumers.entry(c.group).or_default().insert(client_id.to_owned(), member);
        }
    }

    /// Removes a client from `groups` (all of its groups when empty).
    pub fn unregister(&self, client_id: &str, groups: &[String]) {
        let mut state = self.state.lock();
        let wanted = |g: &String| groups.is_empty() || groups.contains(g);
        for (group, members) in state.consumers.iter_mut() {
            if wanted(group) {
                members.remove(client_id);
            }
        }
        for (group, members) in state.producers.iter_mut() {
            if wanted(group) {
                members.remove(client_id);
            }
        }
        state.consumers.retain(|_, m| !m.is_empty());
        state.producers.retain(|_, m| !m.is_empty());
    }

    /// Live members of a consumer group, sorted by client id.
    pub fn consumers(&self, group: &str, now_ms: u64) -> Vec<ConsumerMember> {
        let state = self.state.lock();
        state
            .consumers
            .get(group)
            .map(|m| m.values().filter(|c| !self.expired(c.last_heartbeat_ms, now_ms)).cloned().collect())
            .unwrap_or_default()
    }

    /// True when a live member of `group` consumes with `model` (checked on pulls, so no clone).
    pub fn has_live_member_with(&self, group: &str, model: MessageModel, now_ms: u64) -> bool {
        let state = self.state.lock();
        state
            .consumers
            .get(group)
            .is_some_and(|m| m.values().any(|c| c.model == model && !self.expired(c.last_heartbeat_ms, now_ms)))
    }

    /// True when `client_id` is a live member of consumer group `group` (queue locks are only for those).
    pub fn is_live_member(&self, group: &str, client_id: &str, now_ms: u64) -> bool {
        let state = self.state.lock();
        state
            .consumers
            .get(group)
            .and_then(|m| m.get(client_id))
            .is_some_and(|c| !self.expired(c.last_heartbeat_ms, now_ms))
    }

    /// Drops every client silent for longer than the expiry; returns how many memberships were removed.
    pub fn expire(&self, now_ms: u64) -> usize {
        let mut state = self.state.lock();
        let mut removed = 0;
        for members in state.consumers.values_mut() {
            let before = members.len();
            members.retain(|_, c| !self.expired(c.last_heartbeat_ms, now_ms));
            removed += before - members.len();
        }
        for members in state.producers.values_mut() {
            let before = members.len();
            members.retain(|_, (last, _)| !self.expired(*last, now_ms));
            removed += before - members.len();
        }
        state.consumers.retain(|_, m| !m.is_empty());
        state.producers.retain(|_, m| !m.is_empty());
        removed
    }

    /// Live producers by (language, version) (a client in several producer groups counts once) and live
    /// consumers by (group, model, language, version): the `rocketmq_*_connections` gauges.
    pub fn connections(&self, now_ms: u64) -> (Vec<ConnectionCount>, Vec<ConnectionCount>) {
        let state = self.state.lock();
        let mut producers: BTreeMap<&str, &ClientInfo> = BTreeMap::new();
        for members in state.producers.values() {
            for (id, (last, info)) in members {
                if !self.expired(*last, now_ms) {
                    producers.insert(id, info);
                }
            }
        }
        let mut by_info: BTreeMap<&ClientInfo, u64> = BTreeMap::new();
        for info in producers.into_values() {
            *by_info.entry(info).or_default() += 1;
        }
        let producers = by_info
            .into_iter()
            .map(|(info, count)| ConnectionCount { group: String::new(), model: None, info: info.clone(), count })
            .collect();
        let mut consumers: BTreeMap<(&str, MessageModel, &ClientInfo), u64> = BTreeMap::new();
        for (group, members) in &state.consumers {
            for m in members.values().filter(|m| !self.expired(m.last_heartbeat_ms, now_ms)) {
                *consumers.entry((group, m.model, &m.info)).or_default() += 1;
            }
        }
        let consumers = consumers
            .into_iter()
            .map(|((group, model, info), count)| ConnectionCount {
                group: group.to_owned(),
                model: Some(model),
                info: info.clone(),
                count,
            })
            .collect();
        (producers, consumers)
    }

    fn expired(&self, last_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(last_ms) > self.expiry_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(group: &str) -> ConsumerHeartbeat {
        ConsumerHeartbeat {
            group: group.into(),
            model: MessageModel::Clustering,
            subscriptions: vec![("t".into(), "*".into())],
        }
    }

    #[test]
    fn members_are_listed_sorted_and_expire_after_silence() {
        let clients = ClientRegistry::new(120_000);
        clients.heartbeat("c-b", &ClientInfo::default(), &[], vec![consumer("g")], 1_000);
        clients.heartbeat("c-a", &ClientInfo::default(), &["p".into()], vec![consumer("g")], 50_000);
        let ids = |now| clients.consumers("g", now).into_iter().map(|m| m.client_id).collect::<Vec<_>>();
        assert_eq!(ids(100_000), ["c-a", "c-b"]);
        assert_eq!(ids(121_001), ["c-a"], "c-b silent for over 120 s");
        assert_eq!(clients.expire(121_001), 1);
        clients.heartbeat("c-b", &ClientInfo::default(), &[], vec![consumer("g")], 121_002);
        assert_eq!(ids(121_002), ["c-a", "c-b"], "a heartbeat brings it back");
        assert_eq!(clients.expire(1_000_000), 3, "two consumers and one producer expired");
        assert!(ids(1_000_000).is_empty());
    }

    #[test]
    fn a_live_broadcasting_member_is_found_until_it_expires() {
        let clients = ClientRegistry::new(1_000);
        clients.heartbeat("c", &ClientInfo::default(), &[], vec![consumer("g")], 0);
        assert!(!clients.has_live_member_with("g", MessageModel::Broadcasting, 0));
        let broadcasting = ConsumerHeartbeat { model: MessageModel::Broadcasting, ..consumer("g") };
        clients.heartbeat("b", &ClientInfo::default(), &[], vec![broadcasting], 0);
        assert!(clients.has_live_member_with("g", MessageModel::Broadcasting, 1_000));
        assert!(!clients.has_live_member_with("g", MessageModel::Broadcasting, 1_001), "expired");
        assert!(!clients.has_live_member_with("other", MessageModel::Clustering, 0));
    }

    #[test]
    fn connections_count_live_clients_by_language_version_and_group() {
        let clients = ClientRegistry::new(1_000);
        let rust = ClientInfo { language: "RUST".into(), version: "0.1.0".into() };
        let java = ClientInfo { language: "JAVA".into(), version: "5.0.0".into() };
        clients.heartbeat("p1", &rust, &["pg1".into(), "pg2".into()], vec![], 0);
        clients.heartbeat("p2", &java, &["pg1".into()], vec![], 0);
        clients.heartbeat("c1", &rust, &[], vec![consumer("g")], 0);
        clients.heartbeat("c2", &rust, &[], vec![consumer("g")], 500);
        let (producers, consumers) = clients.connections(900);
        let counts = |v: &[ConnectionCount]| {
            v.iter().map(|c| (c.group.clone(), c.info.language.clone(), c.count)).collect::<Vec<_>>()
        };
        assert_eq!(counts(&producers), [(String::new(), "JAVA".into(), 1), (String::new(), "RUST".into(), 1)]);
        assert_eq!(counts(&consumers), [("g".into(), "RUST".into(), 2)]);
        assert_eq!(consumers[0].model, Some(MessageModel::Clustering));
        let (producers, consumers) = clients.connections(1_200);
        assert!(producers.is_empty(), "silent producers are not counted");
        assert_eq!(consumers[0].count, 1, "c2 still live");
    }

    #[test]
    fn unregister_leaves_the_named_groups_or_all() {
        let clients = ClientRegistry::new(120_000);
        clients.heartbeat("c", &ClientInfo::default(), &[], vec![consumer("g1"), consumer("g2")], 0);
        clients.unregister("c", &["g1".into()]);
        assert!(clients.consumers("g1", 0).is_empty());
        assert_eq!(clients.consumers("g2", 0).len(), 1);
        clients.unregister("c", &[]);
        assert!(clients.consumers("g2", 0).is_empty());
    }
}
