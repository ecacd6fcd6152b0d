//! Metadata files (`<store dir>/config/*.json`): written atomically (temp file, fsync, rename, fsync of the
//! directory), so a crash leaves either the old or the new content, never a torn file.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{BrokerError, Result};

fn persist_err(op: &'static str, path: &Path, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Persist { op, path: path.to_owned(), reason: e.to_string() }
}

/// Reads `path` as JSON; a missing file is `None`.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| persist_err("parsing", path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(persist_err("reading", path, e)),
    }
}

/// Replaces `path` with `value` as pretty JSON, atomically and durably.
pub fn store<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let dir = path.parent().ok_or_else(|| persist_err("writing", path, "no parent directory"))?;
    std::fs::create_dir_all(dir).map_err(|e| persist_err("creating", dir, e))?;
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| persist_err("encoding", path, e))?;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp).map_err(|e| persist_err("creating", &tmp, e))?;
    file.write_all(&bytes).map_err(|e| persist_err("writing", &tmp, e))?;
    file.sync_all().map_err(|e| persist_err("syncing", &tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| persist_err("renaming", path, e))?;
    // The rename itself is durable only once the directory entry is.
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| persist_err("syncing", dir, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_value_loads_back_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config").join("x.json");
        assert_eq!(load::<Vec<u32>>(&path).unwrap(), None);
        store(&path, &vec![1u32, 2, 3]).unwrap();
        store(&path, &vec![4u32]).unwrap();
        assert_eq!(load::<Vec<u32>>(&path).unwrap(), Some(vec![4]));
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = load::<Vec<u32>>(&path).unwrap_err().to_string();
        assert!(err.contains("x.json"), "{err}");
    }
}
