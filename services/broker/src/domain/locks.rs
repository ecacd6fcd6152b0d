//! Orderly consumption's queue locks: per (group, topic, queue) one owner client id and a lease expiry, so two
//! members of a group never process one queue at once, even while a re-balance moves it (RocketMQ's
//! `RebalanceLockManager`, lease `rocketmq.broker.rebalance.lockMaxLiveTime` 60 s).
//!
//! A lock is granted when it is free, its lease ran out, its holder is no longer a live member of the group, or
//! the caller already holds it (which renews the lease). Locks are only taken by live members (the handler
//! checks), and a holder's locks go when it unregisters or expires from the client registry ([`QueueLocks::sweep`])
//! or when their lease runs out, so the table is bounded by live members × queues. Time is passed in (ms since
//! the epoch), so leases are tested without waiting.

use std::collections::{BTreeMap, HashMap};

use parking_lot::Mutex;

/// One held lock.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    owner: String,
    expires_ms: u64,
}

/// (group, topic) → queue id → lease.
type Table = HashMap<(String, String), BTreeMap<u32, Lease>>;

/// The broker's queue locks.
#[derive(Debug)]
pub struct QueueLocks {
    lease_ms: u64,
    table: Mutex<Table>,
}

impl QueueLocks {
    /// A lock table whose locks last `lease_ms` unless renewed (`messaging.queue-lock-lease-ms`).
    pub fn new(lease_ms: u64) -> Self {
        Self { lease_ms, table: Mutex::new(HashMap::new()) }
    }

    /// How long a granted or renewed lock lasts.
    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }

    /// Locks (or renews) `queue_ids` of `topic` for `client` in `group`; returns the queues `client` holds
    /// afterwards among those asked for, sorted. `is_live(client)` says whether a holder is still a live member
    /// of the group (a dead holder's lock is taken over at once).
    pub fn lock(
        &self,
        group: &str,
        topic: &str,
        client: &str,
        queue_ids: &[u32],
        now_ms: u64,
        is_live: impl Fn(&str) -> bool,
    ) -> Vec<u32> {
        let mut table = self.table.lock();
        let leases = table.entry((group.to_owned(), topic.to_owned())).or_default();
        let expires_ms = now_ms.saturating_add(self.lease_ms);
        let mut held = Vec::with_capacity(queue_ids.len());
        for &queue_id in queue_ids {
            let grantable = match leases.get(&queue_id) {
                None => true,
                Some(lease) => lease.owner == client || lease.expires_ms <= now_ms || !is_live(&lease.owner),
            };
            if grantable {
                if let Some(previous) = leases.get(&queue_id)
                    && previous.owner != client
                {
                    tracing::info!(group, topic, queue_id, from = %previous.owner, to = client,
                        expired = previous.expires_ms <= now_ms, "queue lock taken over");
                }
                leases.insert(queue_id, Lease { owner: client.to_owned(), expires_ms });
                held.push(queue_id);
            }
        }
        held.sort_unstable();
        held.dedup();
        held
    }

    /// Releases those of `queue_ids` that `client` holds (others' locks are left alone).
    pub fn unlock(&self, group: &str, topic: &str, client: &str, queue_ids: &[u32]) {
        let mut table = self.table.lock();
        let key = (group.to_owned(), topic.to_owned());
        if let Some(leases) = table.get_mut(&key) {
            leases.retain(|id, lease| !(lease.owner == client && queue_ids.contains(id)));
            if leases.is_empty() {
                table.remove(&key);
            }
        }
    }

    /// Releases every lock `client` holds in `groups` (all its groups when empty): it unregistered.
    pub fn release_client(&self, client: &str, groups: &[String]) {
        let mut table = self.table.lock();
        for ((group, _), leases) in table.iter_mut() {
            if groups.is_empty() || groups.contains(group) {
                leases.retain(|_, lease| lease.owner != client);
            }
        }
        table.retain(|_, leases| !leases.is_empty());
    }

    /// Drops expired leases and those whose holder is no longer a live member (`is_live(group, client)`);
    /// returns how many went.
    pub fn sweep(&self, now_ms: u64, is_live: impl Fn(&str, &str) -> bool) -> usize {
        let mut table = self.table.lock();
        let mut removed = 0;
        for ((group, _), leases) in table.iter_mut() {
            let before = leases.len();
            leases.retain(|_, lease| lease.expires_ms > now_ms && is_live(group, &lease.owner));
            removed += before - leases.len();
        }
        table.retain(|_, leases| !leases.is_empty());
        removed
    }

    /// The live holder of one queue's lock, if any (for tests and diagnostics).
    pub fn holder(&self, group: &str, topic: &str, queue_id: u32, now_ms: u64) -> Option<String> {
        let table = self.table.lock();
        let lease = table.get(&(group.to_owned(), topic.to_owned()))?.get(&queue_id)?;
        (lease.expires_ms > now_ms).then(|| lease.owner.clone())
    }

    /// Locks held now, over every group and topic (bounded-memory checks).
    pub fn len(&self) -> usize {
        self.table.lock().values().map(BTreeMap::len).sum()
    }

    /// True when no lock is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: u64 = 60_000;

    fn alive(_: &str) -> bool {
        true
    }

    #[test]
    fn a_free_lock_is_granted_and_a_held_one_refused_to_another_member() {
        let locks = QueueLocks::new(LEASE);
        assert_eq!(locks.lock("g", "t", "a", &[0, 1, 2], 1_000, alive), [0, 1, 2]);
        assert_eq!(locks.lock("g", "t", "b", &[2, 3], 2_000, alive), [3], "queue 2 is a's");
        assert_eq!(locks.holder("g", "t", 2, 2_000).as_deref(), Some("a"));
        assert_eq!(locks.lock("other-group", "t", "b", &[2], 2_000, alive), [2], "locks are per group");
        assert_eq!(locks.lock("g", "u", "b", &[2], 2_000, alive), [2], "and per topic");
    }

    #[test]
    fn the_holder_renews_and_an_expired_lease_is_taken_over() {
        let locks = QueueLocks::new(LEASE);
        locks.lock("g", "t", "a", &[0], 0, alive);
        assert_eq!(locks.lock("g", "t", "a", &[0], 50_000, alive), [0], "renewed until 110 s");
        assert!(locks.lock("g", "t", "b", &[0], 100_000, alive).is_empty(), "the renewal counts");
        assert_eq!(locks.lock("g", "t", "b", &[0], 110_000, alive), [0], "the lease ran out");
        assert!(locks.lock("g", "t", "a", &[0], 110_001, alive).is_empty(), "a lost it");
    }

    #[test]
    fn a_dead_holders_lock_is_taken_over_at_once() {
        let locks = QueueLocks::new(LEASE);
        locks.lock("g", "t", "a", &[0], 0, alive);
        assert_eq!(locks.lock("g", "t", "b", &[0], 1, |c| c != "a"), [0]);
        assert_eq!(locks.holder("g", "t", 0, 1).as_deref(), Some("b"));
    }

    #[test]
    fn unlock_releases_only_the_callers_locks() {
        let locks = QueueLocks::new(LEASE);
        locks.lock("g", "t", "a", &[0, 1], 0, alive);
        locks.lock("g", "t", "b", &[2], 0, alive);
        locks.unlock("g", "t", "b", &[0, 1]);
        assert_eq!(locks.len(), 3, "b cannot release a's locks");
        locks.unlock("g", "t", "a", &[0]);
        assert_eq!(locks.lock("g", "t", "b", &[0, 1], 1, alive), [0]);
    }

    #[test]
    fn an_unregistered_or_expired_clients_locks_go_and_the_table_stays_bounded() {
        let locks = QueueLocks::new(LEASE);
        locks.lock("g1", "t", "a", &[0, 1], 0, alive);
        locks.lock("g2", "t", "a", &[0], 0, alive);
        locks.lock("g1", "u", "b", &[0], 0, alive);
        locks.release_client("a", &["g1".into()]);
        assert_eq!(locks.len(), 2, "a's g2 lock and b's stay");
        locks.release_client("a", &[]);
        assert_eq!(locks.len(), 1);
        assert_eq!(locks.sweep(1_000, |_, client| client != "b"), 1, "b expired from the registry");
        assert!(locks.is_empty());
        locks.lock("g", "t", "c", &[0], 0, alive);
        assert_eq!(locks.sweep(LEASE - 1, |_, _| true), 0);
        assert_eq!(locks.sweep(LEASE, |_, _| true), 1, "the lease ran out");
        assert!(locks.is_empty());
    }
}
