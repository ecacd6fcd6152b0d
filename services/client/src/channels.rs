//! One lazily connected gRPC channel per broker address, shared by every call to that broker (a tonic `Channel`
//! multiplexes concurrent calls over one HTTP/2 connection and reconnects by itself).

use std::collections::HashMap;
use std::time::Duration;

use comet_proto::comet::v1::broker_client::BrokerClient;
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

use crate::error::ClientError;

/// Largest message a client decodes or encodes (a pull answer may carry up to 16 MiB of bodies plus headers).
const MAX_MESSAGE: usize = 64 << 20;

#[derive(Debug)]
pub(crate) struct Channels {
    connect_timeout: Duration,
    by_address: Mutex<HashMap<String, Channel>>,
}

impl Channels {
    pub(crate) fn new(connect_timeout: Duration) -> Self {
        Self { connect_timeout, by_address: Mutex::new(HashMap::new()) }
    }

    /// A client of the broker at `address` (`host:port`), on the address's shared channel.
    pub(crate) fn broker(&self, address: &str) -> Result<BrokerClient<Channel>, ClientError> {
        let mut map = self.by_address.lock();
        let channel = match map.get(address) {
            Some(channel) => channel.clone(),
            None => {
                let uri = if address.contains("://") { address.to_owned() } else { format!("http://{address}") };
                let channel = Endpoint::from_shared(uri)
                    .map_err(|e| ClientError::Invalid {
                        op: "connect",
                        message: format!("bad broker address {address:?}: {e}"),
                    })?
                    .connect_timeout(self.connect_timeout)
                    .tcp_nodelay(true)
                    .connect_lazy();
                map.insert(address.to_owned(), channel.clone());
                channel
            }
        };
        Ok(BrokerClient::new(channel).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE))
    }
}
