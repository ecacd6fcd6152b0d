//! Domain value types shared by every Comet crate.
//!
//! This crate is the vocabulary of the system: names (topics, groups, brokers), the two kinds of offset, the
//! identity of a message queue, and how keys are hashed (tag hashes, [`hash_joined`]). It depends on nothing
//! async or networked so that the store, the protocol layers and the SDK can all share it without pulling each
//! other in.

mod name;
mod offset;
mod queue;
mod route;
pub mod system;

pub use name::{
    NameError, NameKind, validate_broker_name, validate_cluster_name, validate_group_name, validate_topic_name,
};
pub use offset::{CommitLogOffset, QueueOffset};
pub use queue::{MessageQueue, QueueId};
pub use route::{
    BadPermission, BrokerData, BrokerId, DataVersion, MASTER_ID, MAX_QUEUE_NUMS, MessageType, Permission, QueueData,
    TopicConfig, TopicRoute,
};

/// Hashes `parts` as one byte string: `whole` over a stack copy of them when they fit in 512 bytes, else `each`
/// over the parts in order, and both must compute the same function of the concatenation. Keys hashed per
/// message (dedup keys, index keys) are a few short fields: one pass over a copy costs less than a hasher call
/// per field.
pub fn hash_joined<R>(parts: &[&[u8]], whole: impl FnOnce(&[u8]) -> R, each: impl FnOnce(&[&[u8]]) -> R) -> R {
    // The copy is zeroed first: a small one for the usual keys, a larger one for long names.
    match parts.iter().map(|p| p.len()).sum::<usize>() {
        len if len <= 128 => joined::<128, R>(parts, len, whole),
        len if len <= 512 => joined::<512, R>(parts, len, whole),
        _ => each(parts),
    }
}

fn joined<const N: usize, R>(parts: &[&[u8]], len: usize, whole: impl FnOnce(&[u8]) -> R) -> R {
    let mut joined = [0u8; N];
    let mut at = 0;
    for part in parts {
        joined[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    whole(&joined[..len])
}

/// Java's `String.hashCode` of a tag string, sign-extended to 64 bits.
///
/// RocketMQ clients send tag hashes in their subscriptions and the consume queue stores this value, so it must
/// stay bit-exact with Java for compatibility.
pub fn tag_hash(tags: &str) -> i64 {
    let mut h: i32 = 0;
    for unit in tags.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    i64::from(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_joined_sees_the_concatenation_in_one_pass_or_part_by_part() {
        let fnv =
            |h: u64, bytes: &[u8]| bytes.iter().fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
        for len in [0, 5, 128, 129, 512, 513, 2000] {
            let tail = vec![7u8; len];
            let parts: [&[u8]; 3] = [b"topic", &[0], &tail];
            let (mut one_pass, mut streamed) = (false, false);
            let h = super::hash_joined(
                &parts,
                |joined| {
                    one_pass = true;
                    fnv(0, joined)
                },
                |parts| {
                    streamed = true;
                    parts.iter().fold(0, |h, p| fnv(h, p))
                },
            );
            assert_eq!(h, fnv(0, &[&b"topic"[..], &[0], &tail].concat()), "length {len}");
            assert_eq!((one_pass, streamed), (len + 6 <= 512, len + 6 > 512), "length {len}");
        }
    }

    #[test]
    fn tag_hash_matches_java_string_hash_code() {
        // Values computed with Java's "TagA".hashCode() etc.
        assert_eq!(tag_hash(""), 0);
        assert_eq!(tag_hash("TagA"), 2_598_919);
        assert_eq!(tag_hash("a"), 97);
        // A hash that overflows i32 wraps like Java and is sign-extended.
        assert_eq!(tag_hash("polygenelubricants"), i64::from(i32::MIN));
    }
}
