//! The broker's topic table: what it registers with the NameServers, persisted in `config/topics.json`.
//! Every change bumps the data version (so NameServers re-read the topics) and is written before it is answered.

use std::collections::BTreeMap;
use std::path::PathBuf;

use comet_model::{DataVersion, MAX_QUEUE_NUMS, MessageType, TopicConfig};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::domain::persist;
use crate::error::{BrokerError, Result};

#[derive(Debug, Default, Serialize, Deserialize)]
struct TopicsFile {
    data_version: DataVersion,
    topics: BTreeMap<String, TopicConfig>,
    /// 0 (absent) in files written before topics had a type a user could choose: every topic there says
    /// `normal` but was never declared so, and is read as MIXED (see [`TopicTable::open`]).
    #[serde(default)]
    types_version: u32,
}

/// The `types_version` of files whose message types were chosen (auto-created MIXED, or `--type`).
const TYPES_VERSION: u32 = 1;

/// Topics of this broker. Reads take a short lock; changes also write the file under it, so the file always
/// matches memory (changes are rare admin operations or first sends to a new topic).
#[derive(Debug)]
pub struct TopicTable {
    path: PathBuf,
    state: Mutex<TopicsFile>,
}

/// Rejects a topic config the broker cannot serve, naming the field.
pub fn validate(config: &TopicConfig) -> Result<()> {
    comet_model::validate_topic_name(&config.name).map_err(|e| BrokerError::invalid("topic", e.to_string()))?;
    for (field, n) in [("read_queue_nums", config.read_queue_nums), ("write_queue_nums", config.write_queue_nums)] {
        if n == 0 || n > MAX_QUEUE_NUMS {
            return Err(BrokerError::invalid(field, format!("{n} is outside 1..={MAX_QUEUE_NUMS}")));
        }
    }
    Ok(())
}

impl TopicTable {
    /// Loads `path` (missing = no topics yet).
    pub fn open(path: PathBuf) -> Result<Self> {
        let mut state: TopicsFile = persist::load(&path)?.unwrap_or_default();
        if state.types_version < TYPES_VERSION {
            // Upgrade: before message types were enforced, every topic was stored as `normal`; enforcing that now
            // would refuse the delayed, transactional and ordered sends those topics have always taken.
            for t in state.topics.values_mut() {
                if t.message_type == MessageType::Normal {
                    t.message_type = MessageType::Mixed;
                }
            }
            state.types_version = TYPES_VERSION;
        }
        Ok(Self { path, state: Mutex::new(state) })
    }

    /// A topic's config.
    pub fn get(&self, name: &str) -> Option<TopicConfig> {
        self.state.lock().topics.get(name).cloned()
    }

    /// How many topics there are (metrics).
    pub fn len(&self) -> usize {
        self.state.lock().topics.len()
    }

    /// True without topics.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All topics, sorted by name.
    pub fn list(&self) -> Vec<TopicConfig> {
        self.state.lock().topics.values().cloned().collect()
    }

    /// The current data version (what heartbeats carry).
    pub fn data_version(&self) -> DataVersion {
        self.state.lock().data_version
    }

    /// Topics and data version read together, for a consistent registration.
    pub fn snapshot(&self) -> (DataVersion, Vec<TopicConfig>) {
        let state = self.state.lock();
        (state.data_version, state.topics.values().cloned().collect())
    }

    /// Adds a new topic; [`BrokerError::TopicExists`] if it exists.
    pub fn create(&self, config: TopicConfig, now_ms: u64) -> Result<TopicConfig> {
        validate(&config)?;
        let mut state = self.state.lock();
        if state.topics.contains_key(&config.name) {
            return Err(BrokerError::TopicExists { topic: config.name });
        }
        self.change(&mut state, now_ms, |t| {
            t.insert(config.name.clone(), config.clone());
        })?;
        Ok(config)
    }

    /// The topic's config, creating it from `template` if it does not exist; true if it was created.
    pub fn get_or_create(&self, template: TopicConfig, now_ms: u64) -> Result<(TopicConfig, bool)> {
        let mut state = self.state.lock();
        if let Some(existing) = state.topics.get(&template.name) {
            return Ok((existing.clone(), false));
        }
        validate(&template)?;
        self.change(&mut state, now_ms, |t| {
            t.insert(template.name.clone(), template.clone());
        })?;
        Ok((template, true))
    }

    /// Replaces an existing topic's config; [`BrokerError::TopicNotFound`] if it does not exist.
    pub fn update(&self, config: TopicConfig, now_ms: u64) -> Result<TopicConfig> {
        validate(&config)?;
        let mut state = self.state.lock();
        if !state.topics.contains_key(&config.name) {
            return Err(BrokerError::TopicNotFound { topic: config.name });
        }
        self.change(&mut state, now_ms, |t| {
            t.insert(config.name.clone(), config.clone());
        })?;
        Ok(config)
    }

    /// Removes a topic; [`BrokerError::TopicNotFound`] if it does not exist.
    pub fn delete(&self, name: &str, now_ms: u64) -> Result<()> {
        let mut state = self.state.lock();
        if !state.topics.contains_key(name) {
            return Err(BrokerError::TopicNotFound { topic: name.to_owned() });
        }
        self.change(&mut state, now_ms, |t| {
            t.remove(name);
        })
    }

    /// Takes the master's topics and data version wholesale (a slave's metadata sync); true if anything changed.
    /// Written before it is live, like every change.
    pub fn replace_all(&self, version: DataVersion, topics: Vec<TopicConfig>) -> Result<bool> {
        let mut state = self.state.lock();
        let topics: BTreeMap<String, TopicConfig> = topics.into_iter().map(|t| (t.name.clone(), t)).collect();
        if state.data_version == version && state.topics == topics {
            return Ok(false);
        }
        let next = TopicsFile { data_version: version, topics, types_version: TYPES_VERSION };
        persist::store(&self.path, &next)?;
        *state = next;
        Ok(true)
    }

    /// Applies `edit` to a copy, persists it with a bumped version, and only then makes it live: a failed write
    /// leaves memory and file unchanged.
    fn change(
        &self,
        state: &mut TopicsFile,
        now_ms: u64,
        edit: impl FnOnce(&mut BTreeMap<String, TopicConfig>),
    ) -> Result<()> {
        let mut next =
            TopicsFile { data_version: state.data_version, topics: state.topics.clone(), types_version: TYPES_VERSION };
        edit(&mut next.topics);
        next.data_version.counter += 1;
        next.data_version.timestamp_millis = now_ms;
        persist::store(&self.path, &next)?;
        *state = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use comet_model::Permission;

    use super::*;

    fn topic(name: &str, queues: u32) -> TopicConfig {
        TopicConfig {
            name: name.into(),
            read_queue_nums: queues,
            write_queue_nums: queues,
            perm: Permission::READ_WRITE,
            message_type: MessageType::Normal,
        }
    }

    #[test]
    fn replace_all_adopts_the_masters_version_and_topics_and_reports_no_change_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topics.json");
        let table = TopicTable::open(path.clone()).unwrap();
        table.create(topic("local", 1), 1).unwrap();
        let version = DataVersion { state_version: 7, timestamp_millis: 9, counter: 3 };
        assert!(table.replace_all(version, vec![topic("a", 2), topic("b", 4)]).unwrap());
        assert!(!table.replace_all(version, vec![topic("b", 4), topic("a", 2)]).unwrap());
        let reopened = TopicTable::open(path).unwrap();
        assert_eq!(reopened.data_version(), version);
        assert_eq!(reopened.list(), vec![topic("a", 2), topic("b", 4)]);
    }

    #[test]
    fn created_updated_and_deleted_topics_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topics.json");
        let table = TopicTable::open(path.clone()).unwrap();
        table.create(topic("a", 4), 1).unwrap();
        table.create(topic("b", 2), 2).unwrap();
        table.update(topic("a", 16), 3).unwrap();
        table.delete("b", 4).unwrap();
        let version = table.data_version();
        assert_eq!(version.counter, 4);
        assert_eq!(version.timestamp_millis, 4);

        let reopened = TopicTable::open(path).unwrap();
        assert_eq!(reopened.list(), vec![topic("a", 16)]);
        assert_eq!(reopened.data_version(), version);
    }

    #[test]
    fn create_of_existing_and_update_or_delete_of_missing_topics_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let table = TopicTable::open(dir.path().join("topics.json")).unwrap();
        table.create(topic("a", 4), 1).unwrap();
        assert!(matches!(table.create(topic("a", 4), 2), Err(BrokerError::TopicExists { .. })));
        assert!(matches!(table.update(topic("zz", 4), 2), Err(BrokerError::TopicNotFound { .. })));
        assert!(matches!(table.delete("zz", 2), Err(BrokerError::TopicNotFound { .. })));
        assert_eq!(table.data_version().counter, 1, "refusals change nothing");
    }

    #[test]
    fn invalid_names_and_queue_counts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let table = TopicTable::open(dir.path().join("topics.json")).unwrap();
        assert!(matches!(table.create(topic("bad name", 4), 1), Err(BrokerError::Invalid { field: "topic", .. })));
        assert!(matches!(table.create(topic("a", 0), 1), Err(BrokerError::Invalid { .. })));
        assert!(matches!(table.create(topic("a", MAX_QUEUE_NUMS + 1), 1), Err(BrokerError::Invalid { .. })));
    }

    #[test]
    fn files_from_before_message_types_read_normal_topics_as_mixed_and_chosen_types_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topics.json");
        let old = r#"{"data_version":{"state_version":0,"timestamp_millis":1,"counter":1},
            "topics":{"a":{"name":"a","read_queue_nums":4,"write_queue_nums":4,"perm":6,"message_type":"normal"}}}"#;
        std::fs::write(&path, old).unwrap();
        let table = TopicTable::open(path.clone()).unwrap();
        assert_eq!(table.get("a").unwrap().message_type, MessageType::Mixed);
        table.create(TopicConfig { message_type: MessageType::Normal, ..topic("b", 2) }, 2).unwrap();
        let reopened = TopicTable::open(path).unwrap();
        assert_eq!(reopened.get("a").unwrap().message_type, MessageType::Mixed);
        assert_eq!(reopened.get("b").unwrap().message_type, MessageType::Normal, "a chosen type is kept");
    }

    #[test]
    fn get_or_create_creates_once() {
        let dir = tempfile::tempdir().unwrap();
        let table = TopicTable::open(dir.path().join("topics.json")).unwrap();
        assert!(table.get_or_create(topic("a", 8), 1).unwrap().1);
        let (existing, created) = table.get_or_create(topic("a", 2), 2).unwrap();
        assert!(!created);
        assert_eq!(existing.read_queue_nums, 8);
    }
}
