//! Subscription groups, persisted in `config/groups.json`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::domain::persist;
use crate::error::{BrokerError, Result};

/// One subscription group's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupConfig {
    /// Group name.
    pub name: String,
    /// False refuses pulls by this group.
    pub consume_enable: bool,
    /// Whether broadcasting consumption is allowed.
    pub consume_broadcast_enable: bool,
    /// Redeliveries before the dead-letter queue (RocketMQ: 16).
    pub retry_max_times: u32,
    /// Delay before each redelivery (retry n waits element n-1, the last repeats); empty = the broker's
    /// `messaging.retry-delays-ms`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_delays_ms: Vec<u64>,
    /// RocketMQ 5 FIFO group: a message group's next message is delivered only once the previous one is
    /// acknowledged or dead-lettered (reported to official SDKs in the Telemetry settings reply).
    #[serde(default)]
    pub fifo: bool,
}

impl GroupConfig {
    /// A group with RocketMQ's defaults: consumption and broadcasting on, 16 retries.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            consume_enable: true,
            consume_broadcast_enable: true,
            retry_max_times: 16,
            retry_delays_ms: Vec::new(),
            fifo: false,
        }
    }
}

/// The broker's subscription groups.
#[derive(Debug)]
pub struct GroupTable {
    path: PathBuf,
    groups: Mutex<BTreeMap<String, GroupConfig>>,
}

impl GroupTable {
    /// Loads `path` (missing = no groups yet).
    pub fn open(path: PathBuf) -> Result<Self> {
        let groups = persist::load(&path)?.unwrap_or_default();
        Ok(Self { path, groups: Mutex::new(groups) })
    }

    /// A group's config.
    pub fn get(&self, name: &str) -> Option<GroupConfig> {
        self.groups.lock().get(name).cloned()
    }

    /// True when the group exists and its config forbids broadcasting consumption (checked on every pull, so no
    /// clone).
    pub fn broadcast_disabled(&self, name: &str) -> bool {
        self.groups.lock().get(name).is_some_and(|g| !g.consume_broadcast_enable)
    }

    /// How many groups there are (metrics).
    pub fn len(&self) -> usize {
        self.groups.lock().len()
    }

    /// True without groups.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All groups, sorted by name.
    pub fn list(&self) -> Vec<GroupConfig> {
        self.groups.lock().values().cloned().collect()
    }

    /// Adds a group; [`BrokerError::GroupExists`] if it exists.
    pub fn create(&self, config: GroupConfig) -> Result<GroupConfig> {
        comet_model::validate_group_name(&config.name).map_err(|e| BrokerError::invalid("group", e.to_string()))?;
        let mut groups = self.groups.lock();
        if groups.contains_key(&config.name) {
            return Err(BrokerError::GroupExists { group: config.name });
        }
        let mut next = groups.clone();
        next.insert(config.name.clone(), config.clone());
        persist::store(&self.path, &next)?;
        *groups = next;
        Ok(config)
    }

    /// Replaces an existing group's config (persisted first); [`BrokerError::GroupNotFound`] if there is none.
    pub fn update(&self, config: GroupConfig) -> Result<GroupConfig> {
        let mut groups = self.groups.lock();
        if !groups.contains_key(&config.name) {
            return Err(BrokerError::GroupNotFound { group: config.name });
        }
        let mut next = groups.clone();
        next.insert(config.name.clone(), config.clone());
        persist::store(&self.path, &next)?;
        *groups = next;
        Ok(config)
    }

    /// Creates the group with defaults unless it exists.
    pub fn ensure(&self, name: &str) -> Result<()> {
        match self.create(GroupConfig::new(name)) {
            Ok(_) | Err(BrokerError::GroupExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Takes the master's groups wholesale (a slave's metadata sync); true if anything changed.
    pub fn replace_all(&self, configs: Vec<GroupConfig>) -> Result<bool> {
        let next: BTreeMap<String, GroupConfig> = configs.into_iter().map(|g| (g.name.clone(), g)).collect();
        let mut groups = self.groups.lock();
        if *groups == next {
            return Ok(false);
        }
        persist::store(&self.path, &next)?;
        *groups = next;
        Ok(true)
    }

    /// Removes a group; [`BrokerError::GroupNotFound`] if it does not exist.
    pub fn delete(&self, name: &str) -> Result<()> {
        let mut groups = self.groups.lock();
        if !groups.contains_key(name) {
            return Err(BrokerError::GroupNotFound { group: name.to_owned() });
        }
        let mut next = groups.clone();
        next.remove(name);
        persist::store(&self.path, &next)?;
        *groups = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_survive_a_reopen_and_duplicates_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups.json");
        let table = GroupTable::open(path.clone()).unwrap();
        table.create(GroupConfig::new("g1")).unwrap();
        table.ensure("g2").unwrap();
        table.ensure("g2").unwrap();
        assert!(matches!(table.create(GroupConfig::new("g1")), Err(BrokerError::GroupExists { .. })));
        table.delete("g1").unwrap();
        assert!(matches!(table.delete("g1"), Err(BrokerError::GroupNotFound { .. })));
        assert!(matches!(table.create(GroupConfig::new("no spaces")), Err(BrokerError::Invalid { .. })));

        assert!(matches!(table.update(GroupConfig::new("g1")), Err(BrokerError::GroupNotFound { .. })));
        let fifo = GroupConfig { fifo: true, retry_max_times: 3, ..GroupConfig::new("g2") };
        assert_eq!(table.update(fifo.clone()).unwrap(), fifo);

        let reopened = GroupTable::open(path).unwrap();
        assert_eq!(reopened.list(), vec![fifo]);
        reopened.update(GroupConfig::new("g2")).unwrap();
        assert!(!reopened.broadcast_disabled("g2") && !reopened.broadcast_disabled("unknown"));
        reopened.create(GroupConfig { consume_broadcast_enable: false, ..GroupConfig::new("g3") }).unwrap();
        assert!(reopened.broadcast_disabled("g3"));
    }
}
