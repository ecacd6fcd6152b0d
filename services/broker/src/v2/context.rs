//! What a v2 request's headers say about its caller: the client id every per-client state is keyed by, the
//! language (some codes are too new for some SDKs), and the deadline (long polls must answer before it).

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// Header naming the client: `host@pid@idx@...` (Python, Node), `host@pid#seq` (Rust).
pub const CLIENT_ID_HEADER: &str = "x-mq-client-id";
/// Header naming the SDK's language (`PYTHON`, `JAVA`, `RUST`; Node says `HTTP`).
pub const LANGUAGE_HEADER: &str = "x-mq-language";

/// The caller of one request, from its headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// `x-mq-client-id`; `None` if absent (answered with CLIENT_ID_REQUIRED where state is needed).
    pub client_id: Option<String>,
    /// `x-mq-language`, upper case; empty if absent.
    pub language: String,
    /// The client's deadline (`grpc-timeout`), measured from when the request arrived.
    pub deadline: Option<Duration>,
}

impl Caller {
    /// Reads the caller from request headers (`authorization` is ignored: auth is off).
    pub fn of(metadata: &MetadataMap) -> Self {
        let text = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        Caller {
            client_id: text(CLIENT_ID_HEADER).filter(|s| !s.is_empty()).map(str::to_owned),
            language: text(LANGUAGE_HEADER).unwrap_or_default().to_ascii_uppercase(),
            deadline: text("grpc-timeout").and_then(parse_grpc_timeout),
        }
    }
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_garbage_does_not() {
        assert_eq!(parse_grpc_timeout("23S"), Some(Duration::from_secs(23)));
        assert_eq!(parse_grpc_timeout("22999m"), Some(Duration::from_millis(22_999)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }

    #[test]
    fn headers_give_client_id_language_and_deadline() {
        let mut m = MetadataMap::new();
        m.insert("x-mq-client-id", "host@1@0@abc".parse().unwrap());
        m.insert("x-mq-language", "python".parse().unwrap());
        m.insert("grpc-timeout", "3000m".parse().unwrap());
        let c = Caller::of(&m);
        assert_eq!(c.client_id.as_deref(), Some("host@1@0@abc"));
        assert_eq!(c.language, "PYTHON");
        assert_eq!(c.deadline, Some(Duration::from_secs(3)));
        assert_eq!(Caller::of(&MetadataMap::new()), Caller::default());
    }
}
