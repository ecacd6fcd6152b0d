//! Comet's wire contract: generated tonic/prost code for the `.proto` files under `proto/`.
//!
//! This crate is deliberately logic-free (but for the codec's buffer sizes and a field count that presizes
//! decoding, [`codec`]): conversions to domain types live in the crates that own the domain (see
//! docs/architecture.md, "wire types, domain types and storage types are three different things").

/// Encoded `FileDescriptorSet` of every proto in this crate, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

pub mod codec;

/// Each service's gRPC method names, generated from the protos (`BROKER_METHODS`, `NAMESERVER_METHODS`): the
/// bounded `request_code` label values of the RPC metrics, which cannot drift from the services.
pub mod methods {
    include!(concat!(env!("OUT_DIR"), "/methods.rs"));
}

/// `comet.v1.Broker` calls carried over the remoting channel instead of HTTP/2 (docs/broker.md, "Data path"): the
/// request code names the method, the frame body is the method's protobuf request, and the response body its
/// protobuf response. A failure answers [`remoting::STATUS_BASE`] + the gRPC status code, the message as remark.
pub mod remoting {
    /// `comet.v1.Broker/SendMessage`: body `SendMessageRequest`, response `SendMessageResponse`.
    pub const SEND_MESSAGE: i32 = 9001;
    /// `comet.v1.Broker/PullMessage`: body `PullMessageRequest`, response `PullMessageResponse`.
    pub const PULL_MESSAGE: i32 = 9002;
    /// A call refused the way gRPC would refuse it: the response code is this + the gRPC code (1–16).
    pub const STATUS_BASE: i32 = 9100;
}

/// Comet's own gRPC API (`package comet.*`).
pub mod comet {
    /// Version 1 of Comet's own API: the NameServer and Broker services and their messages.
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::pedantic)]
        tonic::include_proto!("comet.v1");
    }
}

/// The Apache RocketMQ 5 gRPC API (`package apache.rocketmq.v2`), served by every broker so the official SDKs work.
pub mod apache {
    /// Apache RocketMQ's namespace.
    pub mod rocketmq {
        /// Version 2: `MessagingService` and its messages.
        pub mod v2 {
            #![allow(missing_docs, clippy::all, clippy::pedantic)]
            tonic::include_proto!("apache.rocketmq.v2");
        }
    }
}
