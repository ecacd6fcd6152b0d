//! The gRPC codec of every generated service and client: prost's, with buffers sized for the answers that
//! deliver messages.
//!
//! tonic encodes an answer into a buffer of 8 KiB that doubles as it fills (each doubling copies what is in it),
//! and decodes into one that grows the same way. An answer delivering a batch of messages (a pull of 32 × 1 KiB
//! is 33 KiB or more) went through three doublings on each side, about 7 % of the broker's instructions per
//! received message (callgrind). Those answers, and only those, start with [`DELIVERY_BUFFER`]: they live for
//! one call, so memory stays bounded by the calls in flight, while long-lived streams (telemetry, transaction
//! checks) keep tonic's small default.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_delivering_answers_get_the_large_buffer() {
        assert!(delivers_messages::<v2::ReceiveMessageResponse>());
        assert!(delivers_messages::<v1::PullMessageResponse>());
        assert!(!delivers_messages::<v2::TelemetryCommand>());
        assert!(!delivers_messages::<v2::ReceiveMessageRequest>());
    }
}
