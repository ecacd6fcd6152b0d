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

fn checksum(group: &str, topic: &str, h: &Handle) -> u32 {
    let mut crc = crc32c::crc32c(group.as_bytes());
    crc = crc32c::crc32c_append(crc, &[0]);
    crc = crc32c::crc32c_append(crc, topic.as_bytes());
    crc = crc32c::crc32c_append(crc, &h.queue_id.to_be_bytes());
    crc = crc32c::crc32c_append(crc, &h.offset.to_be_bytes());
    crc32c::crc32c_append(crc, &h.seq.to_be_bytes())
}

/// Appends `v` in lower-case hex, at least `min_digits` digits (zero-padded).
fn push_hex(out: &mut String, v: u64, min_digits: u32) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits = (64 - v.leading_zeros()).div_ceil(4).max(min_digits);
    for i in (0..digits).rev() {
        out.push(char::from(DIGITS[((v >> (4 * i)) & 0xf) as usize]));
    }
}

impl Handle {
    /// The handle's text for a delivery to `group` of a message of `topic`.
    // Hot path (one per delivered message): written digit by digit into one allocation, not through `format!`.
    pub fn encode(&self, group: &str, topic: &str) -> String {
        let mut out = String::with_capacity(3 * 17 + 8);
        push_hex(&mut out, u64::from(self.queue_id), 1);
        out.push('.');
        push_hex(&mut out, self.offset, 1);
        out.push('.');
        push_hex(&mut out, self.seq, 1);
        out.push('.');
        push_hex(&mut out, u64::from(checksum(group, topic, self)), 8);
        out
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
        let mut parts = text.split('.');
        let mut next = || parts.next().ok_or_else(invalid);
        let hex64 = |s: &str| if s.is_empty() || s.len() > 16 { None } else { u64::from_str_radix(s, 16).ok() };
        let queue_id = u32::try_from(hex64(next()?).ok_or_else(invalid)?).map_err(|_| invalid())?;
        let offset = hex64(next()?).ok_or_else(invalid)?;
        let seq = hex64(next()?).ok_or_else(invalid)?;
        let sum = next()?;
        if parts.next().is_some() {
            return Err(invalid());
        }
        let h = Handle { queue_id, offset, seq };
        if sum.len() != 8 || u32::from_str_radix(sum, 16).ok() != Some(checksum(group, topic, &h)) || seq == 0 {
            return Err(invalid());
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        ] {
            let e = Handle::decode(bad, "g", "t").unwrap_err();
            assert!(matches!(e, BrokerError::Invalid { field: "receipt_handle", .. }), "{bad}");
        }
        let mut text = Handle { queue_id: 0, offset: 1, seq: 2 }.encode("g", "t");
        text.replace_range(0..1, "1");
        assert!(Handle::decode(&text, "g", "t").is_err(), "a changed field breaks the checksum");
    }
}
