//! The frame codec: pure functions over bytes, no I/O, so it can be property-tested and fuzzed.
//!
//! Layout (big-endian, RocketMQ's `NettyEncoder`/`NettyDecoder`):
//!
//! ```text
//! | total length: i32 | header-length word: i32 | header | body |
//!   total length = 4 + header length + body length (it does not count itself)
//!   header-length word = serialize type << 24 | header length (24 bits)
//! ```
//!
//! The serialize type is per frame: the decoder accepts JSON and ROCKETMQ headers on any frame, whatever the
//! encoding this side writes. Header encodings live in `header.rs`.
//!
//! Decoding never trusts a length: the total is checked against the configured maximum before anything is
//! buffered for it, and the header length against the total, so garbage produces a [`FrameError`], never a
//! panic or an allocation the peer chose.

use std::collections::BTreeMap;
use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::header;

/// Largest frame accepted by default (RocketMQ's `frameMaxLength`): 16 MiB, counted without the length field.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 * 1024 * 1024;
/// The length field itself.
pub const LENGTH_FIELD_LEN: usize = 4;
/// Largest header the 24-bit header length can describe.
pub const MAX_HEADER_LEN: usize = (1 << 24) - 1;

/// Flag bit 0: the command is a response.
pub const FLAG_RESPONSE: i32 = 0b01;
/// Flag bit 1: the command is a oneway request (the peer never answers it).
pub const FLAG_ONEWAY: i32 = 0b10;

/// How the header of a frame is encoded (the high byte of the header-length word).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SerializeType {
    /// A JSON object with fastjson's field names (RocketMQ's default).
    Json,
    /// RocketMQ's compact binary header (`RocketMQSerializable`). Comet's default: cheaper to encode and decode.
    #[default]
    #[serde(rename = "rocketmq")]
    RocketMq,
}

impl SerializeType {
    /// The type byte on the wire.
    pub const fn code(self) -> u8 {
        match self {
            SerializeType::Json => 0,
            SerializeType::RocketMq => 1,
        }
    }
}

impl TryFrom<u8> for SerializeType {
    type Error = FrameError;

    fn try_from(b: u8) -> Result<Self, FrameError> {
        match b {
            0 => Ok(SerializeType::Json),
            1 => Ok(SerializeType::RocketMq),
            other => Err(FrameError::UnknownSerializeType(other)),
        }
    }
}

/// The language of the process that wrote a command (RocketMQ's `LanguageCode`, same numbers and names).
#[allow(missing_docs)] // the variant names are the documentation
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Language {
    #[default]
    Java,
    Cpp,
    Dotnet,
    Python,
    Delphi,
    Erlang,
    Ruby,
    Other,
    Http,
    Go,
    Php,
    Oms,
    Rust,
    NodeJs,
}

impl Language {
    /// Every language, in wire-code order (index = code).
    pub const ALL: [Language; 14] = [
        Language::Java,
        Language::Cpp,
        Language::Dotnet,
        Language::Python,
        Language::Delphi,
        Language::Erlang,
        Language::Ruby,
        Language::Other,
        Language::Http,
        Language::Go,
        Language::Php,
        Language::Oms,
        Language::Rust,
        Language::NodeJs,
    ];
    const NAMES: [&'static str; 14] = [
        "JAVA", "CPP", "DOTNET", "PYTHON", "DELPHI", "ERLANG", "RUBY", "OTHER", "HTTP", "GO", "PHP", "OMS", "RUST",
        "NODE_JS",
    ];

    /// The binary header's byte.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The JSON header's enum name (`"JAVA"`, `"RUST"`, ...).
    pub const fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The language with this JSON name.
    pub fn from_name(name: &str) -> Option<Language> {
        Self::NAMES.iter().position(|n| *n == name).and_then(|i| Self::ALL.get(i).copied())
    }
}

impl TryFrom<u8> for Language {
    type Error = FrameError;

    fn try_from(b: u8) -> Result<Self, FrameError> {
        Self::ALL.get(usize::from(b)).copied().ok_or(FrameError::Header("unknown language code"))
    }
}

/// One remoting command: a request, a response or a oneway request. The channel never looks inside `ext_fields`
/// or `body`; what they mean is up to the handler of `code`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Command {
    /// Request code (requests) or response code (responses). The binary header carries only 16 bits.
    pub code: i32,
    /// Language of the writer.
    pub language: Language,
    /// Version of the writer (RocketMQ's `MQVersion` ordinal).
    pub version: i16,
    /// Request id; a response echoes its request's.
    pub opaque: i32,
    /// [`FLAG_RESPONSE`] and [`FLAG_ONEWAY`] bits; the other bits are carried verbatim.
    pub flag: i32,
    /// Error text on responses. The binary header cannot tell `Some("")` from `None`; both decode as `None`.
    pub remark: Option<String>,
    /// The "custom header": typed request/response headers flattened to string key/values.
    pub ext_fields: BTreeMap<String, String>,
    /// Opaque payload; decoding slices it out of the read buffer without copying.
    pub body: Bytes,
    /// More payload after `body`, written from these buffers as they are (one `writev` slice each, never copied
    /// into one buffer): for bodies assembled from memory that already holds most of their bytes, like stored
    /// messages in a pull's answer. Decoding never fills it: a received body is whole in `body`.
    pub body_tail: Vec<Bytes>,
}

impl Command {
    /// A request with this code and body (the channel assigns the opaque when it sends it).
    pub fn request(code: i32, body: impl Into<Bytes>) -> Command {
        Command { code, language: Language::Rust, body: body.into(), ..Command::default() }
    }

    /// A response with this code and remark; the channel copies the opaque of the request it answers.
    pub fn response(code: i32, remark: Option<String>) -> Command {
        Command { code, language: Language::Rust, flag: FLAG_RESPONSE, remark, ..Command::default() }
    }

    /// This command with `body` as its body.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Command {
        self.body = body.into();
        self
    }

    /// This command with its body gathered from `parts`, in order, without copying them (see `body_tail`).
    pub fn with_body_parts(mut self, parts: Vec<Bytes>) -> Command {
        let mut parts = parts.into_iter();
        self.body = parts.next().unwrap_or_default();
        self.body_tail = parts.collect();
        self
    }

    /// Length of the whole body, `body_tail` included.
    pub fn body_len(&self) -> usize {
        self.body.len() + self.body_tail.iter().map(Bytes::len).sum::<usize>()
    }

    /// This command with one more ext field.
    pub fn with_ext(mut self, key: impl Into<String>, value: impl Into<String>) -> Command {
        self.ext_fields.insert(key.into(), value.into());
        self
    }

    /// Whether the response bit is set.
    pub fn is_response(&self) -> bool {
        self.flag & FLAG_RESPONSE != 0
    }

    /// Whether the oneway bit is set.
    pub fn is_oneway(&self) -> bool {
        self.flag & FLAG_ONEWAY != 0
    }
}

/// Why bytes are not a valid frame. Every variant closes the connection that sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The total length is above the configured maximum.
    TooLarge {
        /// Announced (or, when encoding, computed) length, length field excluded.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The total length is negative or too small to hold the header-length word.
    BadLength(i32),
    /// The header length does not fit in the total length.
    BadHeaderLength {
        /// Header length from the header-length word.
        header_len: usize,
        /// Total length of the frame.
        total: usize,
    },
    /// The header-length word's high byte is neither JSON (0) nor ROCKETMQ (1).
    UnknownSerializeType(u8),
    /// The header does not decode (reason inside), or a command cannot be encoded in the chosen header type.
    Header(&'static str),
    /// The JSON header is not a valid header object.
    Json(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => write!(f, "frame of {len} bytes exceeds the {max}-byte maximum"),
            FrameError::BadLength(len) => write!(f, "impossible frame length {len}"),
            FrameError::BadHeaderLength { header_len, total } => {
                write!(f, "header length {header_len} does not fit in a {total}-byte frame")
            }
            FrameError::UnknownSerializeType(t) => write!(f, "unknown header serialize type {t}"),
            FrameError::Header(reason) => write!(f, "malformed header: {reason}"),
            FrameError::Json(reason) => write!(f, "malformed JSON header: {reason}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Encodes `cmd` as one complete frame, body included, appended to `dst`.
pub fn encode(cmd: &Command, ty: SerializeType, max_frame: usize, dst: &mut BytesMut) -> Result<(), FrameError> {
    encode_prefix(cmd, ty, max_frame, dst)?;
    dst.extend_from_slice(&cmd.body);
    for part in &cmd.body_tail {
        dst.extend_from_slice(part);
    }
    Ok(())
}

/// Encodes everything but the body (length, header-length word, header) appended to `dst`; the body must be
/// written right after. Lets the transport send large bodies from their own buffer instead of copying them.
/// On error `dst` is unchanged.
pub fn encode_prefix(cmd: &Command, ty: SerializeType, max_frame: usize, dst: &mut BytesMut) -> Result<(), FrameError> {
    let start = dst.len();
    dst.put_u64(0); // both length words, patched below once the header length is known
    let header = match ty {
        SerializeType::Json => header::encode_json(cmd, dst),
        SerializeType::RocketMq => header::encode_binary(cmd, dst),
    };
    let header_len = dst.len() - start - 8;
    let total = 4 + header_len + cmd.body_len();
    let checked = header.and_then(|()| {
        if header_len > MAX_HEADER_LEN {
            Err(FrameError::Header("header longer than 16 MiB"))
        } else if total > max_frame || i32::try_from(total).is_err() {
            Err(FrameError::TooLarge { len: total, max: max_frame })
        } else {
            Ok(())
        }
    });
    if let Err(e) = checked {
        dst.truncate(start);
        return Err(e);
    }
    let word = (u32::from(ty.code()) << 24) | header_len as u32;
    // The range exists: we put 8 bytes at `start` above.
    if let Some(lengths) = dst.get_mut(start..start + 8) {
        lengths[..4].copy_from_slice(&(total as u32).to_be_bytes());
        lengths[4..].copy_from_slice(&word.to_be_bytes());
    }
    Ok(())
}

/// Cuts complete frames off the front of a read buffer. Incremental: `Ok(None)` means "need more bytes",
/// `Err` means the stream is invalid and the connection must be closed.
#[derive(Clone, Copy, Debug)]
pub struct FrameDecoder {
    max_frame: usize,
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max_frame` bytes (length field excluded).
    pub fn new(max_frame: usize) -> FrameDecoder {
        FrameDecoder { max_frame }
    }

    /// How many bytes `buf` must hold before [`decode`](Self::decode) can return the next frame: the whole
    /// frame once its length is known, else the length field. Errors like `decode` on a bad length.
    pub fn wanted(&self, buf: &[u8]) -> Result<usize, FrameError> {
        match buf.get(..LENGTH_FIELD_LEN) {
            None => Ok(LENGTH_FIELD_LEN),
            Some(len) => Ok(LENGTH_FIELD_LEN + self.check_len(i32::from_be_bytes([len[0], len[1], len[2], len[3]]))?),
        }
    }

    fn check_len(&self, len: i32) -> Result<usize, FrameError> {
        let total = usize::try_from(len).map_err(|_| FrameError::BadLength(len))?;
        if total < 4 {
            Err(FrameError::BadLength(len))
        } else if total > self.max_frame {
            Err(FrameError::TooLarge { len: total, max: self.max_frame })
        } else {
            Ok(total)
        }
    }

    // Hot path: one split of the read buffer per frame; the body is a slice of it, never copied.
    /// Removes the next complete frame from the front of `buf` and decodes it; leaves `buf` alone when the frame
    /// is not complete yet.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Command>, FrameError> {
        let wanted = self.wanted(buf)?;
        if wanted == LENGTH_FIELD_LEN || buf.len() < wanted {
            return Ok(None);
        }
        buf.advance(LENGTH_FIELD_LEN);
        decode_payload(buf.split_to(wanted - LENGTH_FIELD_LEN).freeze()).map(Some)
    }
}

/// Decodes one frame's bytes after the length field: header-length word, header, body.
pub fn decode_payload(mut frame: Bytes) -> Result<Command, FrameError> {
    let total = frame.len();
    if total < 4 {
        return Err(FrameError::BadLength(total as i32));
    }
    let word = frame.get_u32();
    let ty = SerializeType::try_from((word >> 24) as u8)?;
    let header_len = (word & 0x00ff_ffff) as usize;
    if header_len > frame.len() {
        return Err(FrameError::BadHeaderLength { header_len, total });
    }
    let head = frame.split_to(header_len);
    let mut cmd = match ty {
        SerializeType::Json => header::decode_json(&head)?,
        SerializeType::RocketMq => header::decode_binary(&head)?,
    };
    cmd.body = frame;
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_command(ty: SerializeType) -> impl Strategy<Value = Command> {
        let code = match ty {
            SerializeType::Json => any::<i32>().boxed(),
            SerializeType::RocketMq => any::<i16>().prop_map(i32::from).boxed(),
        };
        (
            code,
            0..Language::ALL.len(),
            any::<i16>(),
            any::<i32>(),
            any::<i32>(),
            proptest::option::of(".{1,40}"),
            proptest::collection::btree_map(".{0,12}", ".{0,30}", 0..6),
            proptest::collection::vec(any::<u8>(), 0..3000),
        )
            .prop_map(|(code, lang, version, opaque, flag, remark, ext_fields, body)| Command {
                code,
                language: Language::ALL[lang],
                version,
                opaque,
                flag,
                remark,
                ext_fields,
                body: Bytes::from(body),
                body_tail: Vec::new(),
            })
    }

    fn arb_type() -> impl Strategy<Value = SerializeType> {
        prop_oneof![Just(SerializeType::Json), Just(SerializeType::RocketMq)]
    }

    fn encoded(cmd: &Command, ty: SerializeType) -> BytesMut {
        let mut buf = BytesMut::new();
        encode(cmd, ty, DEFAULT_MAX_FRAME_SIZE, &mut buf).unwrap();
        buf
    }

    proptest! {
        #[test]
        fn decode_of_encode_is_identity_for_json(cmd in arb_command(SerializeType::Json)) {
            let mut buf = encoded(&cmd, SerializeType::Json);
            let back = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE).decode(&mut buf);
            prop_assert_eq!(back, Ok(Some(cmd)));
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn decode_of_encode_is_identity_for_rocketmq(cmd in arb_command(SerializeType::RocketMq)) {
            let mut buf = encoded(&cmd, SerializeType::RocketMq);
            let back = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE).decode(&mut buf);
            prop_assert_eq!(back, Ok(Some(cmd)));
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn frames_of_both_types_decode_back_to_back(
            a in arb_command(SerializeType::RocketMq), b in arb_command(SerializeType::RocketMq),
        ) {
            let mut buf = encoded(&a, SerializeType::Json);
            buf.extend_from_slice(&encoded(&b, SerializeType::RocketMq));
            let d = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
            prop_assert_eq!(d.decode(&mut buf), Ok(Some(a)));
            prop_assert_eq!(d.decode(&mut buf), Ok(Some(b)));
            prop_assert_eq!(d.decode(&mut buf), Ok(None));
        }

        #[test]
        fn every_truncation_needs_more_bytes(
            cmd in arb_command(SerializeType::RocketMq), ty in arb_type(), cut in any::<proptest::sample::Index>(),
        ) {
            let full = encoded(&cmd, ty);
            let n = cut.index(full.len());
            let mut buf = BytesMut::from(&full[..n]);
            prop_assert_eq!(FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE).decode(&mut buf), Ok(None));
            prop_assert_eq!(buf.len(), n, "an incomplete frame is left in the buffer");
        }

        #[test]
        fn a_truncated_header_inside_a_complete_frame_is_invalid(
            cmd in arb_command(SerializeType::RocketMq), ty in arb_type(), cut in any::<proptest::sample::Index>(),
        ) {
            // Shorten the header (not the frame): the frame is complete but its header ends early.
            let full = encoded(&cmd, ty);
            let header_len = (u32::from_be_bytes([full[4], full[5], full[6], full[7]]) & 0xff_ffff) as usize;
            let keep = cut.index(header_len);
            let mut payload = BytesMut::new();
            payload.put_u32((u32::from(ty.code()) << 24) | keep as u32);
            payload.extend_from_slice(&full[8..8 + keep]);
            prop_assert!(decode_payload(payload.freeze()).is_err());
        }

        #[test]
        fn garbage_never_panics_and_never_consumes_a_partial_frame(
            garbage in proptest::collection::vec(any::<u8>(), 0..2000), max in 4usize..4096,
        ) {
            let mut buf = BytesMut::from(&garbage[..]);
            let d = FrameDecoder::new(max);
            loop {
                let before = buf.len();
                match d.decode(&mut buf) {
                    Ok(Some(_)) => prop_assert!(buf.len() < before),
                    Ok(None) => { prop_assert_eq!(buf.len(), before); break; }
                    Err(_) => break,
                }
            }
        }

        #[test]
        fn garbage_headers_never_panic(
            garbage in proptest::collection::vec(any::<u8>(), 0..600), ty in arb_type(),
        ) {
            let mut payload = BytesMut::new();
            payload.put_u32((u32::from(ty.code()) << 24) | garbage.len() as u32);
            payload.extend_from_slice(&garbage);
            let _ = decode_payload(payload.freeze());
        }
    }

    #[test]
    fn layout_is_rocketmq_s() {
        let cmd =
            Command { code: 10, opaque: 7, flag: FLAG_ONEWAY, body: Bytes::from_static(b"hi"), ..Default::default() };
        let buf = encoded(&cmd, SerializeType::RocketMq);
        // total = 4 (header-length word) + 21 (fixed binary header, no remark, no ext) + 2 (body)
        assert_eq!(&buf[..4], &27u32.to_be_bytes());
        assert_eq!(&buf[4..8], &[1, 0, 0, 21]);
        assert_eq!(&buf[8..10], &10i16.to_be_bytes());
        assert_eq!(buf[10], Language::Java.code());
        assert_eq!(&buf[buf.len() - 2..], b"hi");
        let json = encoded(&cmd, SerializeType::Json);
        assert_eq!(json[4], 0, "JSON type byte");
    }

    #[test]
    fn oversized_and_negative_lengths_are_invalid_before_any_body_arrives() {
        let d = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&1025i32.to_be_bytes()[..]);
        assert_eq!(d.decode(&mut buf), Err(FrameError::TooLarge { len: 1025, max: 1024 }));
        let mut buf = BytesMut::from(&(-1i32).to_be_bytes()[..]);
        assert_eq!(d.decode(&mut buf), Err(FrameError::BadLength(-1)));
        let mut buf = BytesMut::from(&3i32.to_be_bytes()[..]);
        assert_eq!(d.decode(&mut buf), Err(FrameError::BadLength(3)));
    }

    #[test]
    fn encoding_past_the_maximum_fails_and_leaves_the_buffer_alone() {
        let cmd = Command::request(1, vec![0u8; 100]);
        let mut buf = BytesMut::from(&b"xy"[..]);
        let err = encode(&cmd, SerializeType::RocketMq, 64, &mut buf);
        assert!(matches!(err, Err(FrameError::TooLarge { max: 64, .. })));
        assert_eq!(&buf[..], b"xy");
    }

    #[test]
    fn unknown_serialize_type_is_invalid() {
        let mut payload = BytesMut::new();
        payload.put_u32(2 << 24);
        assert_eq!(decode_payload(payload.freeze()), Err(FrameError::UnknownSerializeType(2)));
    }

    #[test]
    fn language_names_match_rocketmq() {
        assert_eq!(Language::NodeJs.name(), "NODE_JS");
        assert_eq!(Language::Rust.code(), 12);
        for l in Language::ALL {
            assert_eq!(Language::from_name(l.name()), Some(l));
            assert_eq!(Language::try_from(l.code()), Ok(l));
        }
        assert!(Language::try_from(14).is_err());
    }
}
