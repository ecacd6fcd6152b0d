//! [`Admin`]: what administration tools need beyond producing and consuming: the master brokers of a cluster (from
//! the NameServer's cluster info) and a gRPC client per broker for the broker's admin calls.

use std::time::Duration;

use comet_nameserver_client::NameServerClient;
use comet_proto::comet::v1::broker_client::BrokerClient;
use tonic::transport::Channel;

use crate::channels::Channels;
use crate::error::ClientError;
use crate::producer::nameserver_client;

/// A broker name's master as registered with the NameServer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MasterBroker {
    /// Broker name (shared by the master and its slaves).
    pub name: String,
    /// Cluster the broker registered in.
    pub cluster: String,
    /// The master's address (`host:port`).
    pub address: String,
}

/// Finds brokers through the NameServers and hands out clients of them (channels shared per address).
#[derive(Debug)]
pub struct Admin {
    nameserver: NameServerClient,
    channels: Channels,
}

impl Admin {
    /// An admin client of the cluster(s) registered with these NameServers.
    pub fn new(nameservers: &[String]) -> Result<Self, ClientError> {
        Ok(Self {
            nameserver: nameserver_client(nameservers, None)?,
            channels: Channels::new(Duration::from_secs(3), crate::Transport::Grpc),
        })
    }

    /// The master (broker id 0) of every broker name, sorted by name, optionally of one cluster only; admin changes
    /// go to masters because slaves copy them.
    pub async fn master_brokers(&self, cluster: Option<&str>) -> Result<Vec<MasterBroker>, ClientError> {
        let info = self
            .nameserver
            .cluster_info()
            .await
            .map_err(|cause| ClientError::NameServer { op: "GetClusterInfo", cause })?;
        let mut out = Vec::new();
        for c in info.clusters.iter().filter(|c| cluster.is_none_or(|name| name == c.cluster_name)) {
            for b in &c.brokers {
                if let Some(address) = b.addresses.get(&0) {
                    out.push(MasterBroker {
                        name: b.broker_name.clone(),
                        cluster: c.cluster_name.clone(),
                        address: address.clone(),
                    });
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The names of the brokers the NameServer routes `topic` to.
    pub async fn brokers_hosting(&self, topic: &str) -> Result<Vec<String>, ClientError> {
        let route = self.nameserver.query_route(topic).await.map_err(|cause| ClientError::Route {
            op: "QueryRoute",
            topic: topic.to_owned(),
            cause,
        })?;
        Ok(route.queues.into_iter().map(|q| q.broker_name).collect())
    }

    /// A client of the broker at `address` for its admin calls (CreateTopic, DescribeGroup, QueryMessageById...).
    pub fn broker(&self, address: &str) -> Result<BrokerClient<Channel>, ClientError> {
        self.channels.broker(address).map(crate::channels::BrokerClient::into_grpc)
    }
}
