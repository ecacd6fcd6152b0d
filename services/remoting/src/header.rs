//! The two header encodings of a frame (RocketMQ's `RemotingSerializable` JSON and `RocketMQSerializable`).
//!
//! JSON: one object with fastjson's field names, in fastjson's (alphabetical) order:
//! `{"code":10,"extFields":{..},"flag":0,"language":"RUST","opaque":7,"remark":"..",
//! "serializeTypeCurrentRPC":"JSON","version":0}`; null fields are omitted, unknown fields ignored on input.
//!
//! ROCKETMQ binary (big-endian): code i16, language u8, version i16, opaque i32, flag i32 (21 fixed bytes), then
//! remark (i32 length + UTF-8; length 0 = none), then ext fields (i32 total length, then repeated
//! i16 key length + key, i32 value length + value).

use std::collections::BTreeMap;

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use crate::frame::{Command, FrameError, Language};

/// Size of the binary header of a command without remark and ext fields (both length fields included).
pub const BINARY_FIXED_LEN: usize = 21;

#[derive(Serialize)]
struct JsonOut<'a> {
    code: i32,
    #[serde(rename = "extFields", skip_serializing_if = "BTreeMap::is_empty")]
    ext_fields: &'a BTreeMap<String, String>,
    flag: i32,
    language: &'static str,
    opaque: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    remark: Option<&'a str>,
    #[serde(rename = "serializeTypeCurrentRPC")]
    serialize_type: &'static str,
    version: i16,
}

#[derive(Deserialize)]
struct JsonIn {
    #[serde(default)]
    code: i32,
    #[serde(default, rename = "extFields")]
    ext_fields: Option<BTreeMap<String, String>>,
    #[serde(default)]
    flag: i32,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    opaque: i32,
    #[serde(default)]
    remark: Option<String>,
    #[serde(default)]
    version: i16,
}

/// Appends `cmd`'s header as JSON.
pub(crate) fn encode_json(cmd: &Command, dst: &mut BytesMut) -> Result<(), FrameError> {
    let out = JsonOut {
        code: cmd.code,
        ext_fields: &cmd.ext_fields,
        flag: cmd.flag,
        language: cmd.language.name(),
        opaque: cmd.opaque,
        remark: cmd.remark.as_deref(),
        serialize_type: "JSON",
        version: cmd.version,
    };
    serde_json::to_writer(dst.writer(), &out).map_err(|e| FrameError::Json(e.to_string()))
}

/// Decodes a JSON header (body empty).
pub(crate) fn decode_json(head: &[u8]) -> Result<Command, FrameError> {
    let h: JsonIn = serde_json::from_slice(head).map_err(|e| FrameError::Json(e.to_string()))?;
    let language = match h.language {
        None => Language::Java, // RocketMQ's field default
        Some(name) => Language::from_name(&name).ok_or(FrameError::Header("unknown language name"))?,
    };
    Ok(Command {
        code: h.code,
        language,
        version: h.version,
        opaque: h.opaque,
        flag: h.flag,
        remark: h.remark,
        ext_fields: h.ext_fields.unwrap_or_default(),
        body: bytes::Bytes::new(),
        body_tail: Vec::new(),
    })
}

// Hot path: no allocation besides growing `dst`; the ext map is walked twice (length, then bytes).
/// Appends `cmd`'s header in the ROCKETMQ binary encoding.
pub(crate) fn encode_binary(cmd: &Command, dst: &mut BytesMut) -> Result<(), FrameError> {
    let code = i16::try_from(cmd.code).map_err(|_| FrameError::Header("code does not fit the binary header's i16"))?;
    let remark = cmd.remark.as_deref().unwrap_or("");
    let remark_len = i32::try_from(remark.len()).map_err(|_| FrameError::Header("remark too long"))?;
    let mut ext_len: usize = 0;
    for (k, v) in &cmd.ext_fields {
        if i16::try_from(k.len()).is_err() || i32::try_from(v.len()).is_err() {
            return Err(FrameError::Header("ext field key or value too long"));
        }
        ext_len += 2 + k.len() + 4 + v.len();
    }
    let ext_len = i32::try_from(ext_len).map_err(|_| FrameError::Header("ext fields too long"))?;
    dst.reserve(BINARY_FIXED_LEN + remark.len() + ext_len as usize);
    dst.put_i16(code);
    dst.put_u8(cmd.language.code());
    dst.put_i16(cmd.version);
    dst.put_i32(cmd.opaque);
    dst.put_i32(cmd.flag);
    dst.put_i32(remark_len);
    dst.put_slice(remark.as_bytes());
    dst.put_i32(ext_len);
    for (k, v) in &cmd.ext_fields {
        dst.put_i16(k.len() as i16);
        dst.put_slice(k.as_bytes());
        dst.put_i32(v.len() as i32);
        dst.put_slice(v.as_bytes());
    }
    Ok(())
}

/// A bounds-checked reader over header bytes: every read past the end is an error, never a panic.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        if n > self.buf.len() {
            return Err(FrameError::Header(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], FrameError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn len_i16(&mut self, what: &'static str) -> Result<usize, FrameError> {
        usize::try_from(i16::from_be_bytes(self.array(what)?)).map_err(|_| FrameError::Header(what))
    }

    fn len_i32(&mut self, what: &'static str) -> Result<usize, FrameError> {
        usize::try_from(i32::from_be_bytes(self.array(what)?)).map_err(|_| FrameError::Header(what))
    }

    fn string(&mut self, n: usize, what: &'static str) -> Result<String, FrameError> {
        let bytes = self.take(n, what)?;
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| FrameError::Header(what))
    }
}

/// Decodes a ROCKETMQ binary header (body empty). Trailing bytes after the ext fields are an error.
pub(crate) fn decode_binary(head: &[u8]) -> Result<Command, FrameError> {
    let mut r = Reader { buf: head };
    let code = i16::from_be_bytes(r.array("header shorter than 21 bytes")?);
    let language = Language::try_from(u8::from_be_bytes(r.array("header shorter than 21 bytes")?))?;
    let version = i16::from_be_bytes(r.array("header shorter than 21 bytes")?);
    let opaque = i32::from_be_bytes(r.array("header shorter than 21 bytes")?);
    let flag = i32::from_be_bytes(r.array("header shorter than 21 bytes")?);
    let remark_len = r.len_i32("bad remark length")?;
    let remark = if remark_len == 0 { None } else { Some(r.string(remark_len, "bad remark")?) };
    let ext_len = r.len_i32("bad ext fields length")?;
    let mut ext = Reader { buf: r.take(ext_len, "ext fields longer than the header")? };
    let mut ext_fields = BTreeMap::new();
    while !ext.buf.is_empty() {
        let k_len = ext.len_i16("bad ext key length")?;
        let k = ext.string(k_len, "bad ext key")?;
        let v_len = ext.len_i32("bad ext value length")?;
        let v = ext.string(v_len, "bad ext value")?;
        ext_fields.insert(k, v);
    }
    if !r.buf.is_empty() {
        return Err(FrameError::Header("trailing bytes after the ext fields"));
    }
    Ok(Command {
        code: i32::from(code),
        language,
        version,
        opaque,
        flag,
        remark,
        ext_fields,
        body: bytes::Bytes::new(),
        body_tail: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offset of the remark length in the binary header.
    const REMARK_LEN_AT: usize = 13;

    #[test]
    fn json_header_uses_fastjson_field_names_in_fastjson_order() {
        let cmd = Command {
            code: 310,
            language: Language::Java,
            version: 413,
            opaque: 9,
            flag: 0,
            remark: None,
            ext_fields: [("b".to_owned(), "TopicTest".to_owned())].into(),
            body: bytes::Bytes::new(),
            body_tail: Vec::new(),
        };
        let mut buf = BytesMut::new();
        encode_json(&cmd, &mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf).unwrap(),
            r#"{"code":310,"extFields":{"b":"TopicTest"},"flag":0,"language":"JAVA","opaque":9,"serializeTypeCurrentRPC":"JSON","version":413}"#
        );
    }

    #[test]
    fn json_header_from_a_java_client_decodes() {
        // Shape of RocketMQ 4.9's output: unknown fields (serializeTypeCurrentRPC) are ignored, missing ones default.
        let head = br#"{"code":105,"extFields":{"topic":"T"},"flag":0,"language":"JAVA","opaque":3,"serializeTypeCurrentRPC":"JSON","version":409}"#;
        let cmd = decode_json(head).unwrap();
        assert_eq!((cmd.code, cmd.version, cmd.opaque), (105, 409, 3));
        assert_eq!(cmd.ext_fields.get("topic").map(String::as_str), Some("T"));
        let minimal = decode_json(b"{}").unwrap();
        assert_eq!(minimal.language, Language::Java);
        assert!(decode_json(br#"{"language":"COBOL"}"#).is_err());
    }

    #[test]
    fn binary_header_refuses_codes_beyond_i16() {
        let cmd = Command { code: 200_050, ..Command::default() };
        assert!(encode_binary(&cmd, &mut BytesMut::new()).is_err());
        assert!(encode_json(&cmd, &mut BytesMut::new()).is_ok());
    }

    #[test]
    fn binary_header_rejects_negative_lengths_and_trailing_bytes() {
        let mut buf = BytesMut::new();
        encode_binary(&Command::default(), &mut buf).unwrap();
        assert_eq!(buf.len(), BINARY_FIXED_LEN);
        let mut neg = buf.clone();
        neg[REMARK_LEN_AT..REMARK_LEN_AT + 4].copy_from_slice(&(-1i32).to_be_bytes());
        assert!(decode_binary(&neg).is_err());
        let mut trailing = buf.clone();
        trailing.put_u8(0);
        assert!(decode_binary(&trailing).is_err());
        assert!(decode_binary(&buf).is_ok());
    }
}
