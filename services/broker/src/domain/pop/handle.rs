//! Receipt handles: the opaque strings a consumer echoes back to acknowledge, change or dead-letter one delivery.
//! A handle names the queue, the offset and the delivery's sequence number, plus a checksum binding it to the
//! (group, topic) it was issued for; a handle of an earlier delivery of the same message (before a redelivery or
//! a ChangeInvisibleDuration) carries an older sequence number and is refused.

use crate::error::{BrokerError, Result};

/// What a receipt handle stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle {
    /// Queue id.
    pub queue_id: u32,
    /// Queue offset.
    pub offset: u64,
    /// The delivery's sequence number (unique per broker, across restarts).
    pub seq: u64,
}

/// Longest handle accepted for parsing (anything longer is garbage).
const MAX_LEN: usize = 80;

/// The CRC-32C of `group`, a zero byte, `topic` and the handle's numbers (big-endian).
// Hot path (twice per delivered message): one pass when the names fit, as valid names always do.
fn checksum(group: &str, topic: &str, h: &Handle) -> u32 {
    let mut fields = [0u8; 20];
    fields[..4].copy_from_slice(&h.queue_id.to_be_bytes());
    fields[4..12].copy_from_slice(&h.offset.to_be_bytes());
    fields[12..].copy_from_slice(&h.seq.to_be_bytes());
    comet_model::hash_joined(&[group.as_bytes(), &[0], topic.as_bytes(), &fields], crc32c::crc32c, |parts| {
        parts.iter().fold(0, |crc, part| crc32c::crc32c_append(crc, part))
    })
}

/// Writes `v` in lower-case hex at `out[at..]`, at least `min_digits` digits (zero-padded); the end position.
fn put_hex(out: &mut [u8; MAX_LEN], at: usize, v: u64, min_digits: u32) -> usize {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits = (64 - v.leading_zeros()).div_ceil(4).max(min_digits) as usize;
    for (i, slot) in out[at..at + digits].iter_mut().enumerate() {
        *slot = DIGITS[((v >> (4 * (digits - 1 - i))) & 0xf) as usize];
    }
    at + digits
}

/// A field of 1 to 16 hex digits (either case).
fn hex64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |v, &d| Some(v << 4 | u64::from(char::from(d).to_digit(16)?)))
}

impl Handle {
    /// The handle's text for a delivery to `group` of a message of `topic`.
    // Hot path (one per delivered message): written digit by digit on the stack, then one allocation.
    pub fn encode(&self, group: &str, topic: &str) -> String {
        // At most 8 + 16 + 16 + 8 digits and 3 dots: fits MAX_LEN.
        let mut out = [0u8; MAX_LEN];
        let mut at = put_hex(&mut out, 0, u64::from(self.queue_id), 1);
        for (v, digits) in [(self.offset, 1), (self.seq, 1), (u64::from(checksum(group, topic, self)), 8)] {
            out[at] = b'.';
            at = put_hex(&mut out, at + 1, v, digits);
        }
        // ASCII digits and dots: always UTF-8.
        std::str::from_utf8(&out[..at]).map(str::to_owned).unwrap_or_default()
    }

    /// Parses a handle a consumer of `group` sent for `topic`; INVALID_RECEIPT_HANDLE (field `receipt_handle`)
    /// for anything else, garbage included.
    pub fn decode(text: &str, group: &str, topic: &str) -> Result<Self> {
        let invalid = || {
            BrokerError::invalid(
                "receipt_handle",
                format!(
                    "{:?} is not a receipt handle of this broker for group {group:?} and topic {topic:?}",
                    text.chars().take(MAX_LEN).collect::<String>()
                ),
            )
        };
        if text.len() > MAX_LEN {
            return Err(invalid());
        }
        // Hot path (one per acknowledged message): four hex fields parsed in one pass.
        let mut fields = [0u64; 4];
        let mut parts = text.as_bytes().split(|&b| b == b'.');
        for field in &mut fields {
            *field = parts.next().and_then(hex64).ok_or_else(invalid)?;
        }
        let [queue_id, offset, seq, sum] = fields;
        let sum_digits = text.len() - text.rfind('.').map_or(0, |dot| dot + 1);
        let queue_id = u32::try_from(queue_id).map_err(|_| invalid())?;
        let h = Handle { queue_id, offset, seq };
        if parts.next().is_some() || sum_digits != 8 || sum != u64::from(checksum(group, topic, &h)) || seq == 0 {
            return Err(invalid());
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_stay_those_of_issued_handles() {
        // The checksum of handles issued before it was computed in one pass (a client may still hold them).
        let h = Handle { queue_id: 7, offset: 0x1234_5678_9abc, seq: 42 };
        let mut crc = crc32c::crc32c(b"group");
        for part in [&[0u8][..], b"topic", &h.queue_id.to_be_bytes(), &h.offset.to_be_bytes(), &h.seq.to_be_bytes()] {
            crc = crc32c::crc32c_append(crc, part);
        }
        assert_eq!(checksum("group", "topic", &h), crc);
        let (long_group, long_topic) = ("g".repeat(300), "t".repeat(300));
        let mut crc = crc32c::crc32c(long_group.as_bytes());
        for part in [&[0u8][..], long_topic.as_bytes(), &h.queue_id.to_be_bytes(), &h.offset.to_be_bytes()] {
            crc = crc32c::crc32c_append(crc, part);
        }
        crc = crc32c::crc32c_append(crc, &h.seq.to_be_bytes());
        assert_eq!(checksum(&long_group, &long_topic, &h), crc, "names too long for one pass");
    }

    #[test]
    fn handles_are_hex_fields_and_a_padded_checksum() {
        let h = Handle { queue_id: 0, offset: 0x1f, seq: u64::MAX };
        let sum = checksum("g", "t", &h);
        assert_eq!(h.encode("g", "t"), format!("{:x}.{:x}.{:x}.{:08x}", 0, 0x1f, u64::MAX, sum));
    }

    #[test]
    fn handles_round_trip_only_for_their_group_and_topic() {
        let h = Handle { queue_id: 3, offset: 1_000_000, seq: 0xDEAD_BEEF_0000_0001 };
        let text = h.encode("g", "t");
        assert_eq!(Handle::decode(&text, "g", "t").unwrap(), h);
        assert!(Handle::decode(&text, "g2", "t").is_err());
        assert!(Handle::decode(&text, "g", "t2").is_err());
        assert_eq!(Handle::decode(&text.to_uppercase(), "g", "t").unwrap(), h, "hex digits of either case");
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        for bad in [
            "",
            "x",
            "....",
            "1.2.3",
            "1.2.3.4.5",
            "zz.1.1.00000000",
            "1.1.0.00000000",
            &"f".repeat(500),
            "1.2.3.abcdefgh",
            "ffffffffff.1.1.00000000",
            "é.é.é.é",
            "+1.1.1.00000000",
            "1..1.00000000",
            "1.1.1.",
        ] {
            let e = Handle::decode(bad, "g", "t").unwrap_err();
            assert!(matches!(e, BrokerError::Invalid { field: "receipt_handle", .. }), "{bad}");
        }
        let mut text = Handle { queue_id: 0, offset: 1, seq: 2 }.encode("g", "t");
        text.replace_range(0..1, "1");
        assert!(Handle::decode(&text, "g", "t").is_err(), "a changed field breaks the checksum");
    }
}
