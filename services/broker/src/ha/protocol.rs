//! The replication protocol over comet-remoting: request codes, header (ext field) names, the HMAC handshake
//! and the metadata body. The slave drives every exchange; the master only answers.
//!
//! 1. `AUTH_BEGIN {broker-name, broker-id, nonce}` → `{nonce}`: each side contributes a random nonce.
//! 2. `AUTH_FINISH {challenge, proof, segment-size}` → `{session, proof, min, end}`: the slave proves it holds the
//!    secret with HMAC-SHA256 over both nonces and its identity; the master answers with its own proof (so a
//!    slave never copies data from an impostor), a session id bound to this connection, and its log's range.
//! 3. `CHECK {session, offset, len, crc}` → `{matches}`: does the master hold exactly these bytes? The slave uses
//!    it to confirm its resume point and to find where a diverged log parts from the master's.
//! 4. `FETCH {session, offset, max, wait-ms}` → body = CommitLog bytes from `offset` (empty after `wait-ms`
//!    without new data). `offset` doubles as the slave's acknowledgement: it holds everything below it.
//! 5. `METADATA {session, topics-version}` → JSON [`Metadata`]: topics (when their version changed), groups and
//!    consumer offsets.

use comet_remoting::Command;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::domain::groups::GroupConfig;

/// Request codes (a private range: RocketMQ's own codes stay below 1000).
pub mod code {
    /// Start of the handshake: identities and the slave's nonce.
    pub const AUTH_BEGIN: i32 = 9001;
    /// End of the handshake: both proofs; opens a session.
    pub const AUTH_FINISH: i32 = 9002;
    /// Compare a byte range of the CommitLog by CRC.
    pub const CHECK: i32 = 9003;
    /// Acknowledge an offset and fetch the bytes from there.
    pub const FETCH: i32 = 9004;
    /// Topics, groups and offsets.
    pub const METADATA: i32 = 9005;

    /// Response: the handshake failed (wrong secret, unknown challenge, not a slave of this group).
    pub const FORBIDDEN: i32 = 9100;
    /// Response: the session is unknown or belongs to another connection; authenticate again.
    pub const NO_SESSION: i32 = 9101;
    /// Response: the requested offset is below the master's minimum (retention removed it); `min` says where
    /// the master's log starts now.
    pub const OFFSET_MOVED: i32 = 9102;
    /// Response: the requested offset is beyond the master's end: the slave's log has a tail the master lacks.
    pub const DIVERGED: i32 = 9103;
    /// Response: the two stores cannot replicate (different segment sizes).
    pub const MISMATCH: i32 = 9104;
    /// Response: the master's store failed to answer.
    pub const STORE_ERROR: i32 = 9105;
}

/// Ext field names.
pub mod field {
    /// Broker name of the slave (must equal the master's).
    pub const BROKER_NAME: &str = "brokerName";
    /// Broker id of the slave (> 0).
    pub const BROKER_ID: &str = "brokerId";
    /// A 32-byte random value, hex.
    pub const NONCE: &str = "nonce";
    /// The master's nonce echoed back by the slave.
    pub const CHALLENGE: &str = "challenge";
    /// HMAC-SHA256, hex.
    pub const PROOF: &str = "proof";
    /// Session id issued by AUTH_FINISH.
    pub const SESSION: &str = "session";
    /// CommitLog segment size of the sender's store.
    pub const SEGMENT_SIZE: &str = "segmentSize";
    /// A CommitLog offset.
    pub const OFFSET: &str = "offset";
    /// A length in bytes.
    pub const LEN: &str = "len";
    /// CRC32C of a byte range.
    pub const CRC: &str = "crc";
    /// "true" or "false".
    pub const MATCHES: &str = "matches";
    /// Most bytes wanted.
    pub const MAX: &str = "max";
    /// How long the master may park a fetch.
    pub const WAIT_MS: &str = "waitMs";
    /// The master's minimum CommitLog offset.
    pub const MIN: &str = "min";
    /// The master's CommitLog end.
    pub const END: &str = "end";
    /// The topics data version the slave holds (`state/counter/timestamp`).
    pub const TOPICS_VERSION: &str = "topicsVersion";
}

/// Topics, groups and consumer offsets a slave copies from its master.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Metadata {
    /// The master's topic data version.
    pub data_version: comet_model::DataVersion,
    /// Every topic; `None` when the slave already holds `data_version`.
    pub topics: Option<Vec<comet_model::TopicConfig>>,
    /// Every subscription group.
    pub groups: Vec<GroupConfig>,
    /// Every committed offset: (group, topic, queue id, offset).
    pub offsets: Vec<(String, String, u32, u64)>,
}

/// Formats a data version as the `topicsVersion` field.
pub fn version_field(v: &comet_model::DataVersion) -> String {
    format!("{}/{}/{}", v.state_version, v.counter, v.timestamp_millis)
}

/// Which side computes a proof: the two proofs over the same nonces differ, so one cannot be replayed as the
/// other.
#[derive(Clone, Copy, Debug)]
pub enum Side {
    /// The slave proves it holds the secret.
    Slave,
    /// The master proves it holds the secret.
    Master,
}

/// What both proofs of one handshake are computed over: both nonces and the slave's identity.
#[derive(Clone, Copy, Debug)]
pub struct Handshake<'a> {
    /// The master's nonce (AUTH_BEGIN's answer).
    pub master_nonce: &'a str,
    /// The slave's nonce (AUTH_BEGIN's request).
    pub slave_nonce: &'a str,
    /// The slave's broker name.
    pub broker_name: &'a str,
    /// The slave's broker id.
    pub id: u64,
}

impl Handshake<'_> {
    /// `side`'s proof that it holds `secret`: HMAC-SHA256, hex. `None` only if HMAC refused the key, which it
    /// never does for HMAC-SHA256.
    pub fn proof(&self, secret: &str, side: Side) -> Option<String> {
        Some(hex(&self.mac(secret, side)?.finalize().into_bytes()))
    }

    /// Checks `side`'s proof in constant time.
    pub fn verify(&self, secret: &str, side: Side, proof_hex: &str) -> bool {
        match (unhex(proof_hex), self.mac(secret, side)) {
            (Some(given), Some(mac)) => mac.verify_slice(&given).is_ok(),
            _ => false,
        }
    }

    /// The MAC over length-prefixed parts (so moving a boundary between parts changes it).
    fn mac(&self, secret: &str, side: Side) -> Option<Hmac<Sha256>> {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
        for part in [side.label(), self.master_nonce, self.slave_nonce, self.broker_name, &self.id.to_string()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        Some(mac)
    }
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Slave => "comet-ha-slave",
            Side::Master => "comet-ha-master",
        }
    }
}

/// A fresh 32-byte random nonce (or session id), hex.
pub fn nonce() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// A required ext field, or a description of what is missing.
pub fn text<'a>(cmd: &'a Command, name: &str) -> Result<&'a str, String> {
    cmd.ext_fields.get(name).map(String::as_str).ok_or_else(|| format!("missing field {name}"))
}

/// A required numeric ext field.
pub fn number(cmd: &Command, name: &str) -> Result<u64, String> {
    text(cmd, name)?.parse().map_err(|e| format!("field {name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_secret_side_nonces_and_identity() {
        let h = |m, s, id| Handshake { master_nonce: m, slave_nonce: s, broker_name: "broker-a", id };
        let key = "s3cret-s3cret-s3cret";
        let p = h("m", "s", 1).proof(key, Side::Slave).unwrap();
        assert!(h("m", "s", 1).verify(key, Side::Slave, &p));
        assert!(!h("m", "s", 1).verify("another-secret-xx", Side::Slave, &p));
        assert!(!h("m", "s", 1).verify(key, Side::Master, &p));
        assert!(!h("m2", "s", 1).verify(key, Side::Slave, &p));
        assert!(!h("m", "s", 2).verify(key, Side::Slave, &p));
        assert!(!h("m", "s", 1).verify(key, Side::Slave, "zz"));
        assert!(!h("m", "s", 1).verify(key, Side::Slave, "abc"));
        // Length-prefixed parts: moving a boundary changes the proof.
        assert_ne!(h("ab", "c", 1).proof("k", Side::Slave), h("a", "bc", 1).proof("k", Side::Slave));
    }

    #[test]
    fn nonces_are_distinct_hex() {
        let (a, b) = (nonce().unwrap(), nonce().unwrap());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(unhex(&a).unwrap().len(), 32);
    }
}
