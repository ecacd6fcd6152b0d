//! The gRPC codec of every generated service and client: prost's, with buffers sized for the answers that
//! deliver messages.
//!
//! tonic encodes an answer into a buffer of 8 KiB that doubles as it fills (each doubling copies what is in it),
//! and decodes into one that grows the same way. An answer delivering a batch of messages (a pull of 32 × 1 KiB
//! is 33 KiB or more) went through three doublings on each side, about 7 % of the broker's instructions per
//! received message (callgrind). Those answers, and only those, start with [`DELIVERY_BUFFER`]: they live for
//! one call, so memory stays bounded by the calls in flight, while long-lived streams (telemetry, transaction
//! checks) keep tonic's small default. [`decode_with_room`] lets a reader of a large repeated field (a batch of
//! sends, a pull's answer) reserve room for it before decoding.

use std::any::TypeId;
use std::marker::PhantomData;

use tonic::codec::BufferSettings;
use tonic_prost::{ProstDecoder, ProstEncoder};

use crate::apache::rocketmq::v2;
use crate::comet::v1;

/// Initial buffer for an answer that delivers messages: a batch of 32 × 1 KiB messages with their fields fits.
pub const DELIVERY_BUFFER: usize = 64 * 1024;

/// Bytes tonic gathers before handing a chunk to HTTP/2 (its default: two 16 KiB frames).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// prost's codec with [`DELIVERY_BUFFER`] for message-delivering answers (see the module docs).
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

/// True for the answers that carry delivered messages.
fn delivers_messages<M: 'static>() -> bool {
    let id = TypeId::of::<M>();
    id == TypeId::of::<v2::ReceiveMessageResponse>()
        || id == TypeId::of::<v2::PullMessageResponse>()
        || id == TypeId::of::<v1::PullMessageResponse>()
}

/// Buffer settings for encoding or decoding `M`.
fn settings<M: 'static>() -> BufferSettings {
    if delivers_messages::<M>() {
        BufferSettings::new(DELIVERY_BUFFER, YIELD_THRESHOLD)
    } else {
        BufferSettings::default()
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings::<T>())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings::<U>())
    }
}

/// Decodes `body` as an `M` whose repeated field `field` (`list`) gets its room reserved first: decoding
/// otherwise grows the list by doubling and moves every decoded element at each step (at a thousand messages per
/// request or answer, several percent of a broker's or client's instructions). At most `cap` entries are reserved
/// (a frame of empty entries must not make a reader reserve gigabytes); more still decode.
pub fn decode_with_room<M: prost::Message + Default, T>(
    body: prost::bytes::Bytes,
    field: u32,
    cap: usize,
    list: impl FnOnce(&mut M) -> &mut Vec<T>,
) -> Result<M, prost::DecodeError> {
    let mut decoded = M::default();
    list(&mut decoded).reserve(count_field(&body, field, cap));
    decoded.merge(body)?;
    Ok(decoded)
}

/// How many times field `field` occurs, length-delimited, at the top level of the encoded message `buf` (at most
/// `cap`), from its keys and lengths alone. A malformed message stops the count early (decoding reports it).
fn count_field(mut buf: &[u8], field: u32, cap: usize) -> usize {
    use prost::encoding::{WireType, decode_key, decode_varint};
    let mut count = 0;
    while !buf.is_empty() && count < cap {
        let Ok((tag, wire)) = decode_key(&mut buf) else { break };
        let skip = match wire {
            WireType::Varint => decode_varint(&mut buf).map(|_| 0),
            WireType::LengthDelimited => decode_varint(&mut buf),
            WireType::SixtyFourBit => Ok(8),
            WireType::ThirtyTwoBit => Ok(4),
            WireType::StartGroup | WireType::EndGroup => break,
        };
        let Some(rest) = skip.ok().and_then(|len| buf.get(usize::try_from(len).ok()?..)) else { break };
        buf = rest;
        count += usize::from(tag == field && wire == WireType::LengthDelimited);
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_fields_are_counted_from_keys_and_garbage_stops_the_count() {
        use prost::Message as _;
        let message = |i: u8| v1::OutgoingMessage {
            message_id: format!("id-{i}"),
            body: vec![i; 300].into(),
            flag: 7,
            born_timestamp_millis: 1_700_000_000_000,
            ..Default::default()
        };
        let request = v1::SendMessageRequest {
            topic: "t".into(),
            queue_id: Some(3),
            producer_group: "g".into(),
            messages: (0..5).map(message).collect(),
            transactional: true,
        };
        let body = request.encode_to_vec();
        assert_eq!(count_field(&body, 4, usize::MAX), 5);
        assert_eq!(count_field(&body, 1, usize::MAX), 1, "the topic");
        assert_eq!(count_field(&body, 2, usize::MAX), 0, "a varint field is not a message");
        assert_eq!(count_field(&body, 4, 3), 3, "capped");
        for cut in 0..body.len() {
            assert!(count_field(&body[..cut], 4, usize::MAX) <= 5);
        }
        assert_eq!(count_field(&[0x0f, 1, 2], 1, usize::MAX), 0, "wire types 6 and 7 do not exist");
        assert_eq!(count_field(&[0x22, 0x00].repeat(1000), 4, 10), 10);
    }

    #[test]
    fn only_delivering_answers_get_the_large_buffer() {
        assert!(delivers_messages::<v2::ReceiveMessageResponse>());
        assert!(delivers_messages::<v1::PullMessageResponse>());
        assert!(!delivers_messages::<v2::TelemetryCommand>());
        assert!(!delivers_messages::<v2::ReceiveMessageRequest>());
    }
}
