//! How far each group has been served in each queue: the `next_offset` of its last pull that found messages.
//! Kept in memory only (lost at restart, rebuilt by the next pulls); it exists for metrics: in-flight messages
//! are pulled but not yet committed, ready messages are stored but not yet pulled (RocketMQ's definitions).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use comet_model::QueueId;
use parking_lot::RwLock;

/// group → topic → queue → next offset handed out.
type Table = HashMap<String, HashMap<String, HashMap<QueueId, AtomicU64>>>;

/// Pull positions of every group.
#[derive(Debug, Default)]
pub struct PulledOffsets {
    table: RwLock<Table>,
}

impl PulledOffsets {
    /// Records that `group` was handed the queue's messages up to `next` (exclusive).
    // Pull path: a read lock and an atomic store once the queue is known; allocates only for a new queue.
    pub fn record(&self, group: &str, topic: &str, queue_id: QueueId, next: u64) {
        if let Some(slot) = self.table.read().get(group).and_then(|t| t.get(topic)).and_then(|q| q.get(&queue_id)) {
            slot.store(next, Ordering::Relaxed);
            return;
        }
        self.table
            .write()
            .entry(group.to_owned())
            .or_default()
            .entry(topic.to_owned())
            .or_default()
            .insert(queue_id, AtomicU64::new(next));
    }

    /// The group's pull position in the queue, if it pulled messages from it since start-up.
    pub fn get(&self, group: &str, topic: &str, queue_id: QueueId) -> Option<u64> {
        let table = self.table.read();
        table.get(group)?.get(topic)?.get(&queue_id).map(|a| a.load(Ordering::Relaxed))
    }

    /// Forgets a deleted topic.
    pub fn remove_topic(&self, topic: &str) {
        let mut table = self.table.write();
        for topics in table.values_mut() {
            topics.remove(topic);
        }
        table.retain(|_, topics| !topics.is_empty());
    }

    /// Forgets a deleted group.
    pub fn remove_group(&self, group: &str) {
        self.table.write().remove(group);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_recorded_overwritten_and_forgotten() {
        let pulled = PulledOffsets::default();
        assert_eq!(pulled.get("g", "t", 0), None);
        pulled.record("g", "t", 0, 10);
        pulled.record("g", "t", 0, 12);
        pulled.record("g", "t2", 1, 3);
        pulled.record("g2", "t", 0, 1);
        assert_eq!(pulled.get("g", "t", 0), Some(12));
        pulled.remove_topic("t");
        assert_eq!(pulled.get("g", "t", 0), None);
        assert_eq!(pulled.get("g", "t2", 1), Some(3));
        pulled.remove_group("g");
        assert_eq!(pulled.get("g", "t2", 1), None);
    }
}
