//! Consumer offsets of clustering groups: kept in memory, written to `config/consumer-offsets.json` every
//! `offset-flush-interval-ms` and at shutdown (RocketMQ's model: a crash loses at most one interval of commits,
//! so consumers re-read a little, never skip).

use std::collections::BTreeMap;
use std::path::PathBuf;

use comet_model::{QueueId, QueueOffset};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::domain::persist;
use crate::error::Result;

/// `topic@group` → queue id → next offset to consume; RocketMQ's key and file shape.
type OffsetTable = BTreeMap<String, BTreeMap<QueueId, u64>>;

#[derive(Debug, Default, Serialize, Deserialize)]
struct OffsetsFile {
    offsets: OffsetTable,
}

#[derive(Debug, Default)]
struct State {
    table: OffsetTable,
    dirty: bool,
}

/// Committed offsets of every group.
#[derive(Debug)]
pub struct OffsetStore {
    path: PathBuf,
    state: Mutex<State>,
    /// Serialises writers of the file, so an older snapshot never overwrites a newer one.
    flushing: Mutex<()>,
}

fn key(group: &str, topic: &str) -> String {
    format!("{topic}@{group}")
}

impl OffsetStore {
    /// Loads `path` (missing = no offsets yet).
    pub fn open(path: PathBuf) -> Result<Self> {
        let file: OffsetsFile = persist::load(&path)?.unwrap_or_default();
        Ok(Self { path, state: Mutex::new(State { table: file.offsets, dirty: false }), flushing: Mutex::new(()) })
    }

    /// Records `offset` as the group's next offset in the queue (durable at the next flush).
    pub fn commit(&self, group: &str, topic: &str, queue_id: QueueId, offset: QueueOffset) {
        let mut state = self.state.lock();
        state.table.entry(key(group, topic)).or_default().insert(queue_id, offset.0);
        state.dirty = true;
    }

    /// The group's committed offset in the queue, if any.
    pub fn query(&self, group: &str, topic: &str, queue_id: QueueId) -> Option<QueueOffset> {
        self.state.lock().table.get(&key(group, topic)).and_then(|q| q.get(&queue_id)).copied().map(QueueOffset)
    }

    /// Every committed offset of a group: (topic, queue id, offset), sorted.
    pub fn group_offsets(&self, group: &str) -> Vec<(String, QueueId, QueueOffset)> {
        let suffix = format!("@{group}");
        let state = self.state.lock();
        let mut out = Vec::new();
        for (k, queues) in &state.table {
            if let Some(topic) = k.strip_suffix(&suffix) {
                out.extend(queues.iter().map(|(q, o)| (topic.to_owned(), *q, QueueOffset(*o))));
            }
        }
        out
    }

    /// Every committed offset: (group, topic, queue id, offset). A copy, so the caller may read the store
    /// without holding up commits (metrics: consumer lag).
    pub fn all(&self) -> Vec<(String, String, QueueId, QueueOffset)> {
        let state = self.state.lock();
        let mut out = Vec::new();
        for (k, queues) in &state.table {
            // Topic and group names cannot contain '@' (comet-model's name rules).
            let Some((topic, group)) = k.split_once('@') else { continue };
            out.extend(queues.iter().map(|(q, o)| (group.to_owned(), topic.to_owned(), *q, QueueOffset(*o))));
        }
        out
    }

    /// Forgets every group's offsets of a deleted topic.
    pub fn remove_topic(&self, topic: &str) {
        let prefix = format!("{topic}@");
        let mut state = self.state.lock();
        let before = state.table.len();
        state.table.retain(|k, _| !k.starts_with(&prefix));
        state.dirty |= state.table.len() != before;
    }

    /// Forgets a deleted group's offsets.
    pub fn remove_group(&self, group: &str) {
        let suffix = format!("@{group}");
        let mut state = self.state.lock();
        let before = state.table.len();
        state.table.retain(|k, _| !k.ends_with(&suffix));
        state.dirty |= state.table.len() != before;
    }

    /// Takes the master's offsets wholesale (a slave's metadata sync): (group, topic, queue id, offset). Commits
    /// made on the slave while its master was unreachable are replaced by the master's once it answers again.
    pub fn replace_all(&self, entries: Vec<(String, String, QueueId, u64)>) {
        let mut table = OffsetTable::new();
        for (group, topic, queue_id, offset) in entries {
            table.entry(key(&group, &topic)).or_default().insert(queue_id, offset);
        }
        let mut state = self.state.lock();
        if state.table != table {
            state.table = table;
            state.dirty = true;
        }
    }

    /// Writes the offsets if they changed since the last flush. Blocking: call it off the async runtime.
    pub fn flush(&self) -> Result<()> {
        let _writer = self.flushing.lock();
        let snapshot = {
            let mut state = self.state.lock();
            if !state.dirty {
                return Ok(());
            }
            state.dirty = false;
            OffsetsFile { offsets: state.table.clone() }
        };
        let written = persist::store(&self.path, &snapshot);
        if written.is_err() {
            // Keep the changes pending so the next flush tries again.
            self.state.lock().dirty = true;
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_offsets_survive_flush_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config").join("consumer-offsets.json");
        let store = OffsetStore::open(path.clone()).unwrap();
        store.commit("g1", "t", 0, QueueOffset(5));
        store.commit("g1", "t", 1, QueueOffset(7));
        store.commit("g2", "t", 0, QueueOffset(1));
        store.commit("g1", "t", 0, QueueOffset(6));
        store.flush().unwrap();

        let reopened = OffsetStore::open(path).unwrap();
        assert_eq!(reopened.query("g1", "t", 0), Some(QueueOffset(6)));
        assert_eq!(reopened.query("g1", "t", 1), Some(QueueOffset(7)));
        assert_eq!(reopened.query("g2", "t", 0), Some(QueueOffset(1)));
        assert_eq!(reopened.query("g2", "t", 1), None);
        assert_eq!(reopened.group_offsets("g1").len(), 2);
        let mut all = reopened.all();
        all.sort();
        assert_eq!(all[0], ("g1".to_owned(), "t".to_owned(), 0, QueueOffset(6)));
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn unflushed_commits_are_not_on_disk_and_clean_flushes_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("consumer-offsets.json");
        let store = OffsetStore::open(path.clone()).unwrap();
        store.flush().unwrap();
        assert!(!path.exists(), "nothing changed, nothing written");
        store.commit("g", "t", 0, QueueOffset(3));
        assert_eq!(OffsetStore::open(path.clone()).unwrap().query("g", "t", 0), None);
        store.flush().unwrap();
        assert_eq!(OffsetStore::open(path).unwrap().query("g", "t", 0), Some(QueueOffset(3)));
    }

    #[test]
    fn deleting_a_topic_or_group_drops_its_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(dir.path().join("o.json")).unwrap();
        store.commit("g1", "t1", 0, QueueOffset(1));
        store.commit("g1", "t2", 0, QueueOffset(2));
        store.commit("g2", "t2", 0, QueueOffset(3));
        store.remove_topic("t1");
        assert_eq!(store.query("g1", "t1", 0), None);
        store.remove_group("g2");
        assert_eq!(store.query("g2", "t2", 0), None);
        assert_eq!(store.query("g1", "t2", 0), Some(QueueOffset(2)));
    }
}
