//! The recovery checkpoint: how far the derived data (consume queues, index) is known to be durable.
//!
//! 32 bytes, little-endian: magic "CCKP", version, dispatched offset (u64), store timestamp (u64), CRC-32C of
//! the first 24 bytes (u32), reserved (u32). Replaced atomically (write temp, fsync, rename, fsync directory),
//! so it is either the old or the new one, never torn.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::file::sync_parent_dir;

const MAGIC: u32 = u32::from_le_bytes(*b"CCKP");
const VERSION: u32 = 1;
const LEN: usize = 32;

/// A recovery checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    /// Every record below this CommitLog offset is durable and so are its consume-queue and index entries.
    pub(crate) dispatched: u64,
    /// When it was written, ms since the epoch.
    pub(crate) timestamp: u64,
}

impl Checkpoint {
    fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        b[8..16].copy_from_slice(&self.dispatched.to_le_bytes());
        b[16..24].copy_from_slice(&self.timestamp.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..24]);
        b[24..28].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> std::result::Result<Self, String> {
        if b.len() != LEN {
            return Err(format!("length {} (expected {LEN})", b.len()));
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        if u32_at(0) != MAGIC || u32_at(4) != VERSION {
            return Err("bad magic or version".into());
        }
        if u32_at(24) != crc32c::crc32c(&b[0..24]) {
            return Err("CRC mismatch".into());
        }
        Ok(Self { dispatched: u64_at(8), timestamp: u64_at(16) })
    }
}

/// Reads and writes the checkpoint file of a store.
pub(crate) struct CheckpointFile {
    path: PathBuf,
    tmp: PathBuf,
}

impl CheckpointFile {
    pub(crate) fn new(root: &Path) -> Self {
        Self { path: root.join("checkpoint"), tmp: root.join("checkpoint.tmp") }
    }

    /// The stored checkpoint; `Ok(None)` when absent. A damaged checkpoint is reported (with its path) and
    /// treated as absent: derived data is then rebuilt from the whole CommitLog, which is always correct.
    pub(crate) fn load(&self) -> Result<Option<Checkpoint>> {
        match std::fs::read(&self.path) {
            Ok(b) => match Checkpoint::decode(&b) {
                Ok(c) => Ok(Some(c)),
                Err(why) => {
                    tracing::error!(path = %self.path.display(), %why, "ignoring damaged checkpoint; rebuilding");
                    Ok(None)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read checkpoint", &self.path, e)),
        }
    }

    /// Durably deletes the checkpoint: derived data is then rebuilt from the whole log at the next start-up.
    pub(crate) fn remove(&self) -> Result<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("remove checkpoint", &self.path, e)),
        }
        sync_parent_dir(&self.path).map_err(|e| Error::io("sync directory", &self.path, e))
    }

    /// Durably replaces the checkpoint.
    pub(crate) fn store(&self, c: &Checkpoint) -> Result<()> {
        let io = |op, e| Error::io(op, &self.path, e);
        let mut f = std::fs::File::create(&self.tmp).map_err(|e| io("create checkpoint", e))?;
        f.write_all(&c.encode()).map_err(|e| io("write checkpoint", e))?;
        f.sync_all().map_err(|e| io("sync checkpoint", e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| io("rename checkpoint", e))?;
        sync_parent_dir(&self.path).map_err(|e| io("sync directory", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_damage() {
        let c = Checkpoint { dispatched: 123_456, timestamp: 42 };
        let mut b = c.encode();
        assert_eq!(Checkpoint::decode(&b), Ok(c));
        b[9] ^= 1;
        assert!(Checkpoint::decode(&b).is_err());
        assert!(Checkpoint::decode(&b[..10]).is_err());
    }
}
