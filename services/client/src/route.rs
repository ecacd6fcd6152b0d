//! Topic routes from the NameServers, cached per topic.
//!
//! A cached route is used as long as it is younger than the refresh interval; an older one is still returned at
//! once while a background task fetches a new one, so a slow or dead NameServer never delays a send that has a
//! route. Only a topic seen for the first time waits for the NameServer. After a failure the caller marks the
//! route stale ([`Routes::invalidate`]) so the next use refreshes it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use comet_model::{MASTER_ID, MessageQueue, Permission};
use comet_nameserver_client::NameServerClient;
use comet_proto::comet::v1 as pb;
use parking_lot::Mutex;

use crate::error::ClientError;

/// The members of one broker group (a broker name): the master (broker id 0) and its slaves (ids >= 1), each with
/// its gRPC address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BrokerMembers {
    by_id: BTreeMap<u64, String>,
}

impl BrokerMembers {
    /// Adds (or replaces) member `id` at `address`.
    pub(crate) fn insert(&mut self, id: u64, address: impl Into<String>) {
        self.by_id.insert(id, address.into());
    }

    /// The master's address, if the route lists one.
    pub(crate) fn master(&self) -> Option<&str> {
        self.by_id.get(&MASTER_ID).map(String::as_str)
    }

    /// Every member, by broker id (the master first, then the slaves lowest id first).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &str)> + '_ {
        self.by_id.iter().map(|(id, address)| (*id, address.as_str()))
    }
}

/// A topic's queues and the members (master and slaves) of every broker name hosting them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TopicRoute {
    /// Queues producers may write: WRITE permission and a master address (slaves never take writes).
    pub(crate) writable: Vec<MessageQueue>,
    /// Queues consumers may read: READ permission and at least one member address (a slave serves reads while
    /// its master is gone from the route).
    pub(crate) readable: Vec<MessageQueue>,
    /// Broker name -> its members.
    pub(crate) brokers: HashMap<String, BrokerMembers>,
}

impl TopicRoute {
    /// The usable parts of a NameServer answer, queues sorted by broker name then id.
    pub(crate) fn from_wire(topic: &str, route: &pb::QueryRouteResponse) -> Self {
        let mut brokers: HashMap<String, BrokerMembers> = HashMap::new();
        for b in &route.brokers {
            for (id, address) in b.addresses.iter().filter(|(_, address)| !address.is_empty()) {
                brokers.entry(b.broker_name.clone()).or_default().insert(*id, address.clone());
            }
        }
        let mut writable = Vec::new();
        let mut readable = Vec::new();
        let mut queues: Vec<&pb::QueueData> = route.queues.iter().collect();
        queues.sort_by(|a, b| a.broker_name.cmp(&b.broker_name));
        for q in queues {
            let Some(members) = brokers.get(&q.broker_name) else { continue };
            // Unknown permission bits: treat as no permission rather than guess.
            let perm = Permission::try_from(q.perm).ok();
            let queue =
                |queue_id| MessageQueue { topic: topic.to_owned(), broker_name: q.broker_name.clone(), queue_id };
            if members.master().is_some() && perm.is_some_and(Permission::is_writable) {
                writable.extend((0..q.write_queue_nums).map(queue));
            }
            if perm.is_some_and(Permission::is_readable) {
                readable.extend((0..q.read_queue_nums).map(queue));
            }
        }
        Self { writable, readable, brokers }
    }

    /// The master address of `broker_name` (where sends go), if the route lists one.
    pub(crate) fn master(&self, broker_name: &str) -> Option<&str> {
        self.brokers.get(broker_name).and_then(BrokerMembers::master)
    }
}

#[derive(Debug)]
struct Entry {
    route: Arc<TopicRoute>,
    fetched: Instant,
    stale: bool,
    refreshing: bool,
}

/// The route cache, shared by a client's producer or consumer.
#[derive(Debug)]
pub(crate) struct Routes {
    nameserver: NameServerClient,
    refresh_interval: Duration,
    cache: Mutex<HashMap<String, Entry>>,
}

impl Routes {
    pub(crate) fn new(nameserver: NameServerClient, refresh_interval: Duration) -> Arc<Self> {
        Arc::new(Self { nameserver, refresh_interval, cache: Mutex::new(HashMap::new()) })
    }

    /// The route of `topic`: cached if there is one (refreshed in the background when old or stale), else
    /// fetched now.
    pub(crate) async fn get(self: &Arc<Self>, op: &'static str, topic: &str) -> Result<Arc<TopicRoute>, ClientError> {
        {
            let mut cache = self.cache.lock();
            if let Some(entry) = cache.get_mut(topic) {
                let due = entry.stale || entry.fetched.elapsed() >= self.refresh_interval;
                if due && !entry.refreshing {
                    entry.refreshing = true;
                    let routes = Arc::clone(self);
                    let topic = topic.to_owned();
                    tokio::spawn(async move {
                        let _ = routes.fetch(op, &topic).await;
                    });
                }
                return Ok(Arc::clone(&entry.route));
            }
        }
        self.fetch(op, topic).await
    }

    /// Asks the NameServers; on success replaces the cached route. On failure the old route (if any) stays and
    /// the next refresh is due one interval later, so a dead NameServer is not asked on every send.
    async fn fetch(&self, op: &'static str, topic: &str) -> Result<Arc<TopicRoute>, ClientError> {
        let result = self.nameserver.query_route(topic).await;
        let mut cache = self.cache.lock();
        match result {
            Ok(wire) => {
                let route = Arc::new(TopicRoute::from_wire(topic, &wire));
                let entry =
                    Entry { route: Arc::clone(&route), fetched: Instant::now(), stale: false, refreshing: false };
                cache.insert(topic.to_owned(), entry);
                Ok(route)
            }
            Err(cause) => {
                if let Some(entry) = cache.get_mut(topic) {
                    tracing::warn!(topic, error = %cause, "route refresh failed; keeping the cached route");
                    entry.refreshing = false;
                    entry.stale = false;
                    entry.fetched = Instant::now();
                }
                Err(ClientError::Route { op, topic: topic.to_owned(), cause })
            }
        }
    }

    /// The NameServer client the routes come from.
    pub(crate) fn nameserver(&self) -> &NameServerClient {
        &self.nameserver
    }

    /// The master addresses of every cached route, sorted and deduplicated (where producer heartbeats go).
    pub(crate) fn cached_masters(&self) -> Vec<String> {
        let mut addresses: Vec<String> = self
            .cache
            .lock()
            .values()
            .flat_map(|e| e.route.brokers.values().filter_map(|m| m.master().map(str::to_owned)))
            .collect();
        addresses.sort();
        addresses.dedup();
        addresses
    }

    /// Marks a topic's route for refresh at its next use (after a send or pull failed).
    pub(crate) fn invalidate(&self, topic: &str) {
        if let Some(entry) = self.cache.lock().get_mut(topic) {
            entry.stale = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_data(broker: &str, read: u32, write: u32, perm: u32) -> pb::QueueData {
        pb::QueueData {
            broker_name: broker.into(),
            read_queue_nums: read,
            write_queue_nums: write,
            perm,
            message_type: 0,
        }
    }

    fn broker(name: &str, addresses: &[(u64, &str)]) -> pb::BrokerData {
        pb::BrokerData {
            cluster_name: "c".into(),
            broker_name: name.into(),
            addresses: addresses.iter().map(|(id, a)| (*id, (*a).to_owned())).collect(),
        }
    }

    #[tokio::test]
    async fn a_due_route_is_served_from_the_cache_while_the_nameserver_is_unreachable() {
        // Port 1 refuses connections: every NameServer call fails fast.
        let nameserver = NameServerClient::connect(&["127.0.0.1:1"]).unwrap();
        let routes = Routes::new(nameserver, Duration::ZERO);
        let mut cached = TopicRoute::default();
        cached.brokers.entry("a".into()).or_default().insert(0, "a:1");
        cached.writable.push(MessageQueue { topic: "t".into(), broker_name: "a".into(), queue_id: 0 });
        let entry = Entry { route: Arc::new(cached.clone()), fetched: Instant::now(), stale: true, refreshing: false };
        routes.cache.lock().insert("t".into(), entry);

        for _ in 0..3 {
            assert_eq!(*routes.get("send", "t").await.unwrap(), cached, "always due, always served");
        }
        let err = routes.get("send", "never-seen").await.unwrap_err();
        assert!(matches!(err, ClientError::Route { .. }) && err.is_retryable(), "{err}");
    }

    #[test]
    fn writes_need_a_master_reads_any_member() {
        let wire = pb::QueryRouteResponse {
            topic: "t".into(),
            queues: vec![queue_data("b", 2, 3, 6), queue_data("a", 1, 1, 4), queue_data("slave-only", 4, 4, 6)],
            brokers: vec![
                broker("a", &[(0, "a:1")]),
                broker("b", &[(0, "b:0"), (2, "b:2"), (1, "b:1")]),
                broker("slave-only", &[(1, "s:1"), (0, "")]),
            ],
        };
        let route = TopicRoute::from_wire("t", &wire);
        let names =
            |qs: &[MessageQueue]| qs.iter().map(|q| format!("{}:{}", q.broker_name, q.queue_id)).collect::<Vec<_>>();
        assert_eq!(names(&route.writable), ["b:0", "b:1", "b:2"], "a is read-only, slave-only has no master");
        assert_eq!(
            names(&route.readable),
            ["a:0", "b:0", "b:1", "slave-only:0", "slave-only:1", "slave-only:2", "slave-only:3"]
        );
        assert_eq!(route.master("a"), Some("a:1"));
        assert_eq!(route.master("slave-only"), None, "an empty address is no member");
        let b: Vec<(u64, &str)> = route.brokers["b"].iter().collect();
        assert_eq!(b, [(0, "b:0"), (1, "b:1"), (2, "b:2")], "every member kept, by id");
    }

    #[tokio::test]
    async fn producer_heartbeat_addresses_are_masters_only() {
        let nameserver = NameServerClient::connect(&["127.0.0.1:1"]).unwrap();
        let routes = Routes::new(nameserver, Duration::from_secs(30));
        let wire = pb::QueryRouteResponse {
            topic: "t".into(),
            queues: vec![queue_data("a", 1, 1, 6), queue_data("s", 1, 1, 6)],
            brokers: vec![broker("a", &[(0, "a:0"), (1, "a:1")]), broker("s", &[(1, "s:1")])],
        };
        let entry = Entry {
            route: Arc::new(TopicRoute::from_wire("t", &wire)),
            fetched: Instant::now(),
            stale: false,
            refreshing: false,
        };
        routes.cache.lock().insert("t".into(), entry);
        assert_eq!(routes.cached_masters(), ["a:0"]);
    }
}
