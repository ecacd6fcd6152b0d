//! The NameServer's one error type. `edge/status.rs` is the only place that maps it to gRPC codes.

use comet_model::BrokerId;

/// Everything that can go wrong in the NameServer library.
#[derive(Debug, thiserror::Error)]
pub enum NameServerError {
    /// A request field is malformed; the request changed nothing.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending field, as named in the proto.
        field: &'static str,
        /// Why, for the user.
        reason: String,
    },
    /// A broker id of a broker name is already live at another address.
    #[error(
        "broker {broker_name} id {broker_id} is already registered from {existing}; \
         {requested} must use another id, or wait until the old one unregisters or expires"
    )]
    DuplicateBrokerId {
        /// Broker name.
        broker_name: String,
        /// Contested broker id.
        broker_id: BrokerId,
        /// Address registered now.
        existing: String,
        /// Address that tried to register.
        requested: String,
    },
    /// A broker name is already registered in another cluster.
    #[error("broker {broker_name} belongs to cluster {existing}, not {requested}")]
    ClusterMismatch {
        /// Broker name.
        broker_name: String,
        /// Cluster it is registered in.
        existing: String,
        /// Cluster the request named.
        requested: String,
    },
    /// A registration whose state version is older than the live one (a stale master after a role change).
    #[error("broker {broker} sent state version {requested}, older than the registered {existing}")]
    StaleStateVersion {
        /// The broker, as `cluster/name#id@addr`.
        broker: String,
        /// Live state version.
        existing: u64,
        /// Requested state version.
        requested: u64,
    },
    /// No live broker hosts the topic.
    #[error("no route for topic {topic}")]
    TopicNotFound {
        /// The topic asked for.
        topic: String,
    },
    /// No value under a KV config key.
    #[error("no kv config {namespace}/{key}")]
    KvNotFound {
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
    },
    /// The registry's backing store (etcd) cannot take writes now; reads still answer from the cache.
    #[error("registry unavailable: {reason}")]
    Unavailable {
        /// What failed, for operators.
        reason: String,
    },
    /// A call to etcd failed.
    #[cfg(feature = "etcd")]
    #[error("etcd {op} failed")]
    Etcd {
        /// The operation, e.g. "put", "lease grant".
        op: &'static str,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// Data read back from the registry store does not decode.
    #[error("corrupt registry entry {key}: {reason}")]
    Corrupt {
        /// Key or file that holds it.
        key: String,
        /// Decode failure.
        reason: String,
    },
    /// Reading or writing the KV config file failed.
    #[error("kv config file {path}")]
    Persist {
        /// The file.
        path: String,
        /// The I/O or JSON error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// Binding or serving the gRPC listener failed.
    #[error("serving gRPC on {address}")]
    Serve {
        /// Listen address.
        address: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl NameServerError {
    /// Shorthand for [`NameServerError::Invalid`].
    pub fn invalid(field: &'static str, reason: impl ToString) -> Self {
        Self::Invalid { field, reason: reason.to_string() }
    }
}

/// Result alias of this crate.
pub type Result<T, E = NameServerError> = std::result::Result<T, E>;
