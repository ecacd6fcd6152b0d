//! Request handlers: the tonic service trait, delegating to one file per request family.
//! Handlers convert wire → domain (edge/convert.rs), call the registry, and return errors as
//! [`crate::error::NameServerError`], mapped to gRPC codes in exactly one place (edge/status.rs).

mod broker;
mod kv;
mod route;

use std::sync::Arc;

use comet_proto::comet::v1 as pb;
use comet_proto::comet::v1::name_server_server::NameServer;
use tonic::{Request, Response, Status, Streaming};

use crate::registry::Registry;
use crate::route::RegistrationLimits;

/// The `comet.v1.NameServer` service over a registry backend.
#[derive(Debug)]
pub struct NameServerHandler<R> {
    registry: Arc<R>,
    limits: RegistrationLimits,
}

impl<R: Registry> NameServerHandler<R> {
    /// A service answering from `registry`, refusing registrations beyond `limits`.
    pub fn new(registry: Arc<R>, limits: RegistrationLimits) -> Self {
        Self { registry, limits }
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl<R: Registry> NameServer for NameServerHandler<R> {
    async fn register_broker(
        &self,
        request: Request<Streaming<pb::RegisterBrokerRequest>>,
    ) -> Answer<pb::RegisterBrokerResponse> {
        broker::register(&*self.registry, self.limits, request.into_inner()).await.map(Response::new)
    }

    async fn heartbeat(&self, request: Request<pb::HeartbeatRequest>) -> Answer<pb::HeartbeatResponse> {
        Ok(Response::new(broker::heartbeat(&*self.registry, request.into_inner()).await?))
    }

    async fn unregister_broker(
        &self,
        request: Request<pb::UnregisterBrokerRequest>,
    ) -> Answer<pb::UnregisterBrokerResponse> {
        Ok(Response::new(broker::unregister(&*self.registry, request.into_inner()).await?))
    }

    async fn query_route(&self, request: Request<pb::QueryRouteRequest>) -> Answer<pb::QueryRouteResponse> {
        Ok(Response::new(route::query(&*self.registry, request.into_inner())?))
    }

    async fn get_cluster_info(
        &self,
        _request: Request<pb::GetClusterInfoRequest>,
    ) -> Answer<pb::GetClusterInfoResponse> {
        Ok(Response::new(route::cluster_info(&*self.registry)))
    }

    async fn list_topics(&self, request: Request<pb::ListTopicsRequest>) -> Answer<pb::ListTopicsResponse> {
        Ok(Response::new(route::list_topics(&*self.registry, request.into_inner())))
    }

    async fn delete_topic_route(
        &self,
        request: Request<pb::DeleteTopicRouteRequest>,
    ) -> Answer<pb::DeleteTopicRouteResponse> {
        Ok(Response::new(route::delete_topic(&*self.registry, request.into_inner()).await?))
    }

    async fn put_kv_config(&self, request: Request<pb::PutKvConfigRequest>) -> Answer<pb::PutKvConfigResponse> {
        Ok(Response::new(kv::put(&*self.registry, request.into_inner()).await?))
    }

    async fn get_kv_config(&self, request: Request<pb::GetKvConfigRequest>) -> Answer<pb::GetKvConfigResponse> {
        Ok(Response::new(kv::get(&*self.registry, request.into_inner())?))
    }

    async fn delete_kv_config(
        &self,
        request: Request<pb::DeleteKvConfigRequest>,
    ) -> Answer<pb::DeleteKvConfigResponse> {
        Ok(Response::new(kv::delete(&*self.registry, request.into_inner()).await?))
    }

    async fn list_kv_config(&self, request: Request<pb::ListKvConfigRequest>) -> Answer<pb::ListKvConfigResponse> {
        Ok(Response::new(kv::list(&*self.registry, request.into_inner())?))
    }
}
