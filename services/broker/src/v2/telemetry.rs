//! The Telemetry stream: the settings handshake (reply merged as the RocketMQ proxy does) and server commands
//! (transaction check-backs) to live clients.

use std::sync::Arc;

use comet_proto::apache::rocketmq::v2 as pb;
use tonic::{Request, Status, Streaming};

use crate::broker::Broker;
use crate::v2::BoxStream;
use crate::v2::sessions::Sessions;

/// Opens a client's Telemetry stream; the response stream is returned at once.
pub fn telemetry(
    _broker: &Arc<Broker>,
    _sessions: &Arc<Sessions>,
    _request: Request<Streaming<pb::TelemetryCommand>>,
) -> Result<BoxStream<pb::TelemetryCommand>, Status> {
    Err(Status::unimplemented("not yet"))
}
