//! What every Comet server binary does at start-up, in one place: load the configuration (the documented
//! defaults, then the YAML file given with `--config`, then `COMET_<SECTION>_<KEY>` environment overrides, which
//! is what containers and Helm set), initialise logging from its `log` section, and wait for SIGTERM/ctrl-c.
//!
//! The file and the environment only name keys the defaults know: an unknown section key, in either, fails at
//! start-up with its name, instead of being silently ignored. Each service keeps its own config struct and its
//! own `validate()`; this crate only assembles the document.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

/// Section `log` of every server's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `comet_broker=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into() }
    }
}

impl LogConfig {
    /// Installs the process's log subscriber (stderr; stdout is kept for the readiness line). Binaries only:
    /// libraries never install global subscribers.
    pub fn init(&self) -> Result<(), ConfigError> {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .or_else(|_| tracing_subscriber::EnvFilter::try_new(&self.level))
            .map_err(|e| ConfigError(format!("log.level {:?}: {e}", self.level)))?;
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
        Ok(())
    }
}

/// Completes on SIGTERM or ctrl-c: what a server's graceful shutdown waits for.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only ctrl-c stops this process");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}

/// Environment variables that override config keys start with this.
pub const ENV_PREFIX: &str = "COMET_";

/// Why a configuration could not be loaded; the message names the file, variable or key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Loads `T` from its defaults, the YAML `file` (if any) and the `COMET_*` variables of `env`.
///
/// `COMET_STORE_FLUSH_MODE=sync` sets key `flush-mode` of section `store`: section and key are lower-cased
/// and the key's `_` become `-`. A list-valued key takes a comma-separated value; string keys take the value
/// verbatim; other keys parse it as YAML (numbers, booleans). Variables of sections `T` does not have are
/// ignored (they belong to other processes); unknown keys of known sections are errors.
pub fn load<T>(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut doc = match file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| ConfigError(format!("reading {}: {e}", path.display())))?;
            serde_yaml::from_str::<Value>(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?
        }
        None => Value::Mapping(Mapping::new()),
    };
    if doc.is_null() {
        doc = Value::Mapping(Mapping::new());
    }
    let defaults = serde_yaml::to_value(T::default()).map_err(|e| ConfigError(e.to_string()))?;
    apply_env(&mut doc, &defaults, env)?;
    // Keys a section leaves out take the process's defaults (e.g. the broker's `store.dir: data/broker`), not
    // the section type's own `Default`, which may differ per process.
    let mut merged = defaults;
    merge(&mut merged, doc);
    serde_yaml::from_value(merged).map_err(|e| ConfigError(e.to_string()))
}

/// Overlays `over` on `base`: mappings merge key by key (recursively), anything else replaces.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(base), Value::Mapping(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (slot, value) => *slot = value,
    }
}

/// `<SECTION>_<KEY>` split into the section's name and the raw key: the longest known section whose name, upper
/// case with `-` as `_`, starts the variable (so `ROCKETMQ_V2_ENABLED` is key `ENABLED` of `rocketmq-v2`), else
/// the first `_`-separated word (a section of another process).
fn split_section<'a>(rest: &'a str, sections: &Mapping) -> Option<(String, &'a str)> {
    let known = sections
        .keys()
        .filter_map(Value::as_str)
        .filter(|s| {
            let env_name = s.to_ascii_uppercase().replace('-', "_");
            rest.len() > env_name.len() + 1
                && rest.starts_with(&env_name)
                && rest.as_bytes().get(env_name.len()) == Some(&b'_')
        })
        .max_by_key(|s| s.len());
    match known {
        Some(section) => Some((section.to_owned(), &rest[section.len() + 1..])),
        None => rest.split_once('_').map(|(section, key)| (section.to_ascii_lowercase(), key)),
    }
}

/// True for the tail of a Kubernetes service-link variable (`SERVICE_HOST`, `SERVICE_PORT[_NAME]`, `PORT`,
/// `PORT_<n>_<PROTO>[_PROTO|_PORT|_ADDR]`), which only look like `COMET_<SECTION>_<KEY>` by accident.
fn is_service_link(key: &str) -> bool {
    if key == "SERVICE_HOST" || key == "SERVICE_PORT" || key.starts_with("SERVICE_PORT_") || key == "PORT" {
        return true;
    }
    let mut parts = key.split('_');
    parts.next() == Some("PORT")
        && parts.next().is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        && parts.next().is_some_and(|p| matches!(p, "TCP" | "UDP" | "SCTP"))
}

fn apply_env(
    doc: &mut Value,
    defaults: &Value,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let Value::Mapping(sections) = defaults else {
        return Err(ConfigError("default config is not a mapping".into()));
    };
    let Value::Mapping(root) = doc else {
        return Err(ConfigError("the config file must be a YAML mapping".into()));
    };
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
        let Some((section, raw_key)) = split_section(rest, sections) else { continue };
        let key = raw_key.to_ascii_lowercase().replace('_', "-");
        let Some(Value::Mapping(known)) = sections.get(section.as_str()) else { continue };
        let value = match known.get(key.as_str()) {
            // Kubernetes sets <SERVICE>_SERVICE_HOST, <SERVICE>_PORT_9876_TCP... for every Service of the
            // namespace: a Service named comet-nameserver must not stop the processes from starting.
            None if is_service_link(raw_key) => continue,
            None => return Err(ConfigError(format!("{name}: {section} has no key {key:?}"))),
            Some(Value::Sequence(_)) => Value::Sequence(
                raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| Value::String(s.to_owned())).collect(),
            ),
            Some(Value::String(_)) => Value::String(raw),
            Some(_) => serde_yaml::from_str(&raw).map_err(|e| ConfigError(format!("{name}: {e}")))?,
        };
        let entry = root.entry(Value::String(section.clone())).or_insert_with(|| Value::Mapping(Mapping::new()));
        let Value::Mapping(entry) = entry else {
            return Err(ConfigError(format!("{section} must be a mapping")));
        };
        entry.insert(Value::String(key), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
    struct Demo {
        server: Server,
    }

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
    struct Server {
        listen: String,
        max_conns: u32,
        peers: Vec<String>,
        verbose: bool,
    }

    impl Default for Server {
        fn default() -> Self {
            Self { listen: "0.0.0.0:1".into(), max_conns: 10, peers: vec![], verbose: false }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn defaults_then_file_then_environment() {
        let dir = std::env::temp_dir().join(format!("comet-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.yaml");
        std::fs::write(&file, "server:\n  listen: 127.0.0.1:5\n  max-conns: 20\n").unwrap();
        let c: Demo = load(
            Some(&file),
            env(&[("COMET_SERVER_MAX_CONNS", "30"), ("COMET_SERVER_PEERS", "a:1, b:2"), ("COMET_OTHER_X", "1")]),
        )
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:5", "file over default");
        assert_eq!(c.server.max_conns, 30, "environment over file");
        assert_eq!(c.server.peers, vec!["a:1".to_owned(), "b:2".to_owned()]);
        assert!(!c.server.verbose);
    }

    #[test]
    fn kubernetes_service_links_are_not_taken_for_config_keys() {
        let links = [
            ("COMET_SERVER_SERVICE_HOST", "10.0.0.1"),
            ("COMET_SERVER_SERVICE_PORT", "9876"),
            ("COMET_SERVER_SERVICE_PORT_GRPC", "9876"),
            ("COMET_SERVER_PORT", "tcp://10.0.0.1:9876"),
            ("COMET_SERVER_PORT_9876_TCP", "tcp://10.0.0.1:9876"),
            ("COMET_SERVER_PORT_9876_TCP_ADDR", "10.0.0.1"),
            ("COMET_SERVER_PORT_9876_TCP_PROTO", "tcp"),
        ];
        let c: Demo = load(None, env(&links)).unwrap();
        assert_eq!(c, Demo::default());
        // Shapes close to a link but not one stay errors.
        assert!(load::<Demo>(None, env(&[("COMET_SERVER_PORT_X", "1")])).is_err());
        assert!(load::<Demo>(None, env(&[("COMET_SERVER_SERVICE", "1")])).is_err());
    }

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
    struct TwoServers {
        server: Server,
        other: Server,
    }

    impl Default for TwoServers {
        fn default() -> Self {
            Self { server: Server::default(), other: Server { listen: "0.0.0.0:2".into(), ..Server::default() } }
        }
    }

    #[test]
    fn keys_a_section_leaves_out_take_the_process_defaults_not_the_section_types() {
        let c: TwoServers = load(None, env(&[("COMET_OTHER_MAX_CONNS", "5")])).unwrap();
        assert_eq!(c.other.listen, "0.0.0.0:2", "the process default of other.listen survives");
        assert_eq!(c.other.max_conns, 5);
        assert_eq!(c.server, Server::default());
    }

    #[derive(Debug, Default, PartialEq, Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
    struct Dashed {
        server: Server,
        server_v2: Server,
    }

    #[test]
    fn sections_with_a_dash_take_their_variables_and_the_longest_name_wins() {
        let c: Dashed =
            load(None, env(&[("COMET_SERVER_V2_MAX_CONNS", "7"), ("COMET_SERVER_MAX_CONNS", "3")])).unwrap();
        assert_eq!((c.server_v2.max_conns, c.server.max_conns), (7, 3));
        assert!(load::<Dashed>(None, env(&[("COMET_SERVER_V2_NOPE", "1")])).is_err());
    }

    #[test]
    fn unknown_keys_fail_with_their_name() {
        let err = load::<Demo>(None, env(&[("COMET_SERVER_NOPE", "1")])).unwrap_err();
        assert!(err.0.contains("COMET_SERVER_NOPE"), "{err}");
        let err = load::<Demo>(None, env(&[("COMET_SERVER_MAX_CONNS", "many")])).unwrap_err();
        assert!(err.0.contains("max-conns") || err.0.contains("invalid"), "{err}");
    }
}
