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

/// The (group, topic) handles are issued for, with the checksum of the names computed once: every handle of a
/// receive's or an acknowledgement's batch is bound to the same names, so each handle's checksum only adds its
/// numbers.
pub struct Binding<'a> {
    group: &'a str,
    topic: &'a str,
    /// CRC-32C of `group`, a zero byte and `topic`.
    names: u32,
}

impl<'a> Binding<'a> {
    /// Handles of deliveries to `group` of messages of `topic`.
    pub fn new(group: &'a str, topic: &'a str) -> Self {
        let names =
            crc32c::crc32c_append(crc32c::crc32c_append(crc32c::crc32c(group.as_bytes()), &[0]), topic.as_bytes());
        Binding { group, topic, names }
    }

    /// The CRC-32C of `group`, a zero byte, `topic` and the handle's numbers (big-endian).
    fn checksum(&self, h: &Handle) -> u32 {
        let mut fields = [0u8; 20];
        fields[..4].copy_from_slice(&h.queue_id.to_be_bytes());
        fields[4..12].copy_from_slice(&h.offset.to_be_bytes());
        fields[12..].copy_from_slice(&h.seq.to_be_bytes());
        crc32c::crc32c_append(self.names, &fields)
    }
}

/// A handle's text, kept on the stack (one is written per delivered message).
pub struct HandleText {
    bytes: [u8; MAX_LEN],
    len: usize,
}

impl HandleText {
    /// The text a consumer echoes back.
    pub fn as_str(&self) -> &str {
        // Hex digits and dots only: always UTF-8.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
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

/// The value of a hex digit (either case).
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl Handle {
    /// The handle's text for a delivery bound to `binding`'s group and topic.
    // Hot path (one per delivered message): written digit by digit on the stack.
    pub fn encode(&self, binding: &Binding<'_>) -> HandleText {
        // At most 8 + 16 + 16 + 8 digits and 3 dots: fits MAX_LEN.
        let mut bytes = [0u8; MAX_LEN];
        let mut at = put_hex(&mut bytes, 0, u64::from(self.queue_id), 1);
        for (v, digits) in [(self.offset, 1), (self.seq, 1), (u64::from(binding.checksum(self)), 8)] {
            bytes[at] = b'.';
            at = put_hex(&mut bytes, at + 1, v, digits);
        }
        HandleText { bytes, len: at }
    }

    /// Parses a handle a consumer sent for `binding`'s group and topic; INVALID_RECEIPT_HANDLE (field
    /// `receipt_handle`) for anything else, garbage included.
    pub fn decode(text: &str, binding: &Binding<'_>) -> Result<Self> {
        let invalid = || {
            BrokerError::invalid(
                "receipt_handle",
                format!(
                    "{:?} is not a receipt handle of this broker for group {:?} and topic {:?}",
                    text.chars().take(MAX_LEN).collect::<String>(),
                    binding.group,
                    binding.topic
                ),
            )
        };
        if text.len() > MAX_LEN {
            return Err(invalid());
        }
        // Hot path (one per acknowledged message): four fields of 1 to 16 hex digits, the last of 8, parsed in
        // one pass over the bytes.
        let mut fields = [0u64; 4];
        let (mut field, mut digits) = (0, 0);
        for &c in text.as_bytes() {
            if c == b'.' {
                if digits == 0 || field == fields.len() - 1 {
                    return Err(invalid());
                }
                (field, digits) = (field + 1, 0);
                continue;
            }
            let d = hex_digit(c).ok_or_else(invalid)?;
            digits += 1;
            if digits > 16 {
                return Err(invalid());
            }
            fields[field] = fields[field] << 4 | u64::from(d);
        }
        let [queue_id, offset, seq, sum] = fields;
        if field != fields.len() - 1 || digits != 8 {
            return Err(invalid());
        }
        let queue_id = u32::try_from(queue_id).map_err(|_| invalid())?;
        let h = Handle { queue_id, offset, seq };
        if sum != u64::from(binding.checksum(&h)) || seq == 0 {
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
        assert_eq!(Binding::new("group", "topic").checksum(&h), crc);
        let long = ("g".repeat(300), "t".repeat(300));
        let whole =
            [long.0.as_bytes(), &[0], long.1.as_bytes(), &h.queue_id.to_be_bytes(), &h.offset.to_be_bytes()].concat();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&whole), &h.seq.to_be_bytes());
        assert_eq!(Binding::new(&long.0, &long.1).checksum(&h), crc, "long names");
        assert_eq!(
            h.encode(&Binding::new("group", "topic")).as_str(),
            "7.123456789abc.2a.4384fd9a",
            "an issued handle"
        );
    }

    #[test]
    fn handles_are_hex_fields_and_a_padded_checksum() {
        let h = Handle { queue_id: 0, offset: 0x1f, seq: u64::MAX };
        let binding = Binding::new("g", "t");
        let sum = binding.checksum(&h);
        assert_eq!(h.encode(&binding).as_str(), format!("{:x}.{:x}.{:x}.{:08x}", 0, 0x1f, u64::MAX, sum));
    }

    #[test]
    fn handles_round_trip_only_for_their_group_and_topic() {
        let h = Handle { queue_id: 3, offset: 1_000_000, seq: 0xDEAD_BEEF_0000_0001 };
        let binding = Binding::new("g", "t");
        let text = h.encode(&binding);
        let text = text.as_str();
        assert_eq!(Handle::decode(text, &binding).unwrap(), h);
        assert!(Handle::decode(text, &Binding::new("g2", "t")).is_err());
        assert!(Handle::decode(text, &Binding::new("g", "t2")).is_err());
        assert_eq!(Handle::decode(&text.to_uppercase(), &binding).unwrap(), h, "hex digits of either case");
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
            "1.1.1.1",
            "1.1.1.000000000",
            "00000000000000001.1.1.00000000",
            ".1.1.00000000",
        ] {
            let e = Handle::decode(bad, &Binding::new("g", "t")).unwrap_err();
            assert!(matches!(e, BrokerError::Invalid { field: "receipt_handle", .. }), "{bad}");
        }
        let binding = Binding::new("g", "t");
        let mut text = Handle { queue_id: 0, offset: 1, seq: 2 }.encode(&binding).as_str().to_owned();
        text.replace_range(0..1, "1");
        assert!(Handle::decode(&text, &binding).is_err(), "a changed field breaks the checksum");
    }
}
