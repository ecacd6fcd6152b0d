//! What a v2 request's headers say about its caller: the client id every per-client state is keyed by, the
//! language (some codes are too new for some SDKs), and the deadline (long polls must answer before it).

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// Header naming the client: `host@pid@idx@...` (Python, Node), `host@pid#seq` (Rust).
pub const CLIENT_ID_HEADER: &str = "x-mq-client-id";
/// Header naming the SDK's language (`PYTHON`, `JAVA`, `RUST`; Node says `HTTP`).
pub const LANGUAGE_HEADER: &str = "x-mq-language";
/// Header naming the SDK's version (`5.1.2`; Node sends its package's own `1.0.8`): some codes are version-gated.
pub const VERSION_HEADER: &str = "x-mq-client-version";

/// The caller of one request, from its headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// `x-mq-client-id`; `None` if absent (answered with CLIENT_ID_REQUIRED where state is needed).
    pub client_id: Option<String>,
    /// `x-mq-language`, upper case; empty if absent.
    pub language: String,
    /// The client's deadline (`grpc-timeout`), measured from when the request arrived.
    pub deadline: Option<Duration>,
    /// `x-mq-client-version` as (major, minor, patch); `None` if absent or not a version.
    pub version: Option<(u32, u32, u32)>,
}

impl Caller {
    /// Reads the caller from request headers (`authorization` is ignored: auth is off).
    pub fn of(metadata: &MetadataMap) -> Self {
        let text = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        Caller {
            client_id: text(CLIENT_ID_HEADER).filter(|s| !s.is_empty()).map(str::to_owned),
            language: text(LANGUAGE_HEADER).unwrap_or_default().to_ascii_uppercase(),
            deadline: text("grpc-timeout").and_then(parse_grpc_timeout),
            version: text(VERSION_HEADER).and_then(parse_version),
        }
    }

    /// True when the caller names a version below `v` (an unknown version is taken as current).
    pub fn older_than(&self, v: (u32, u32, u32)) -> bool {
        self.version.is_some_and(|mine| mine < v)
    }
}

/// Parses `major.minor.patch` (missing parts are 0; a suffix such as `-SNAPSHOT` after the numbers is ignored).
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let numeric = text.split(|c: char| !(c.is_ascii_digit() || c == '.')).next()?;
    let mut parts = numeric.split('.').map(str::parse::<u32>);
    let major = parts.next()?.ok()?;
    let minor = parts.next().map_or(Some(0), Result::ok)?;
    let patch = parts.next().map_or(Some(0), Result::ok)?;
    Some((major, minor, patch))
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
        assert_eq!(c.version, None);
        assert!(!c.older_than((5, 0, 3)), "no version: taken as current");
        assert_eq!(Caller::of(&MetadataMap::new()), Caller::default());
    }

    #[test]
    fn client_versions_parse_and_compare() {
        assert_eq!(parse_version("5.1.2"), Some((5, 1, 2)));
        assert_eq!(parse_version("5.0.3-SNAPSHOT"), Some((5, 0, 3)));
        assert_eq!(parse_version("5"), Some((5, 0, 0)));
        assert_eq!(parse_version("v5"), None);
        assert_eq!(parse_version(""), None);
        let mut m = MetadataMap::new();
        m.insert("x-mq-client-version", "5.0.2".parse().unwrap());
        assert!(Caller::of(&m).older_than((5, 0, 3)));
        m.insert("x-mq-client-version", "5.0.3".parse().unwrap());
        assert!(!Caller::of(&m).older_than((5, 0, 3)));
    }
}
