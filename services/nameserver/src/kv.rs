//! RocketMQ's KV config: namespace → key → value (e.g. `ORDER_TOPIC_CONFIG`), and its `kvConfig.json` file.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::NameServerError;

/// Longest namespace or key in bytes.
pub const MAX_KV_NAME_LEN: usize = 255;
/// Longest value in bytes: KV config is small settings, not a blob store.
pub const MAX_KV_VALUE_LEN: usize = 64 * 1024;

/// All KV config entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KvTable {
    /// RocketMQ's file layout: `{"configTable":{namespace:{key:value}}}`.
    #[serde(rename = "configTable")]
    table: BTreeMap<String, BTreeMap<String, String>>,
}

/// Checks a namespace and key: non-empty, bounded, no `/` (they become etcd key segments) or control characters.
pub fn validate_kv_name(field: &'static str, name: &str) -> Result<(), NameServerError> {
    if name.is_empty() {
        return Err(NameServerError::invalid(field, "is empty"));
    }
    if name.len() > MAX_KV_NAME_LEN {
        return Err(NameServerError::invalid(field, format!("{} bytes; the limit is {MAX_KV_NAME_LEN}", name.len())));
    }
    if name.contains(|c: char| c == '/' || c.is_control()) {
        return Err(NameServerError::invalid(field, format!("{name:?} contains '/' or a control character")));
    }
    Ok(())
}

/// Checks a value's size.
pub fn validate_kv_value(value: &str) -> Result<(), NameServerError> {
    if value.len() > MAX_KV_VALUE_LEN {
        return Err(NameServerError::invalid(
            "value",
            format!("{} bytes; the limit is {MAX_KV_VALUE_LEN}", value.len()),
        ));
    }
    Ok(())
}

impl KvTable {
    /// Sets a value; returns whether it changed.
    pub fn put(&mut self, namespace: &str, key: &str, value: &str) -> bool {
        let entries = self.table.entry(namespace.to_owned()).or_default();
        entries.insert(key.to_owned(), value.to_owned()).as_deref() != Some(value)
    }

    /// The value under a key.
    pub fn get(&self, namespace: &str, key: &str) -> Option<&str> {
        self.table.get(namespace)?.get(key).map(String::as_str)
    }

    /// Removes a key; empty namespaces disappear. Returns whether it existed.
    pub fn delete(&mut self, namespace: &str, key: &str) -> bool {
        let Some(entries) = self.table.get_mut(namespace) else { return false };
        let existed = entries.remove(key).is_some();
        if entries.is_empty() {
            self.table.remove(namespace);
        }
        existed
    }

    /// Every entry of a namespace.
    pub fn list(&self, namespace: &str) -> BTreeMap<String, String> {
        self.table.get(namespace).cloned().unwrap_or_default()
    }

    /// Reads the file; a missing file is an empty table.
    pub fn load(path: &Path) -> Result<Self, NameServerError> {
        let persist = |source| NameServerError::Persist { path: path.display().to_string(), source };
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| persist(e.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(persist(e)),
        }
    }

    /// Writes the file atomically (temp file + rename), so a crash leaves the old or the new table, never half.
    pub fn save(&self, path: &Path) -> Result<(), NameServerError> {
        let persist = |source| NameServerError::Persist { path: path.display().to_string(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(persist)?;
        }
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| persist(e.into()))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes).map_err(persist)?;
        std::fs::rename(&tmp, path).map_err(persist)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_round_trips_through_rocketmq_file_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("namesrv/kvConfig.json");
        assert_eq!(KvTable::load(&path).unwrap(), KvTable::default());

        let mut kv = KvTable::default();
        assert!(kv.put("ORDER_TOPIC_CONFIG", "t1", "b1:4"));
        assert!(!kv.put("ORDER_TOPIC_CONFIG", "t1", "b1:4"));
        kv.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"configTable\""), "{text}");
        let back = KvTable::load(&path).unwrap();
        assert_eq!(back.get("ORDER_TOPIC_CONFIG", "t1"), Some("b1:4"));

        let mut back = back;
        assert!(back.delete("ORDER_TOPIC_CONFIG", "t1"));
        assert!(!back.delete("ORDER_TOPIC_CONFIG", "t1"));
        assert!(back.list("ORDER_TOPIC_CONFIG").is_empty());
    }

    #[test]
    fn kv_names_are_checked() {
        assert!(validate_kv_name("namespace", "").is_err());
        assert!(validate_kv_name("namespace", "a/b").is_err());
        assert!(validate_kv_name("key", &"k".repeat(256)).is_err());
        assert!(validate_kv_name("key", "ORDER_TOPIC_CONFIG").is_ok());
        assert!(validate_kv_value(&"v".repeat(MAX_KV_VALUE_LEN + 1)).is_err());
    }
}
