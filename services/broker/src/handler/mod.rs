//! Request handlers: the tonic service trait, delegating to one file per request family. Handlers validate,
//! convert wire → domain (edge/convert.rs), call the domain and the store (on the blocking pool), and return
//! [`crate::error::BrokerError`], mapped to gRPC codes in one place (edge/status.rs).

mod client;
mod group;
mod lock;
pub(crate) mod offset;
pub(crate) mod pull;
pub(crate) mod query;
mod replication;
mod retry;
pub(crate) mod send;
mod topic;
pub mod transaction;

use std::sync::Arc;

use comet_proto::comet::v1 as pb;
use comet_proto::comet::v1::broker_server::Broker as BrokerService;
use tonic::{Request, Response, Status};

use crate::broker::Broker;
use crate::error::{BrokerError, Result};

/// The `comet.v1.Broker` service.
#[derive(Debug, Clone)]
pub struct BrokerHandler {
    broker: Arc<Broker>,
}

impl BrokerHandler {
    /// A service over `broker`.
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }
}

type Answer<T> = Result<Response<T>, Status>;

fn answer<T>(result: Result<T>) -> Answer<T> {
    result.map(Response::new).map_err(Status::from)
}

/// Checks a topic name, as field `topic`.
fn check_topic(name: &str) -> Result<()> {
    comet_model::validate_topic_name(name).map_err(|e| BrokerError::invalid("topic", e.to_string()))
}

/// Checks a consumer or producer group name, as field `group`.
fn check_group(name: &str) -> Result<()> {
    comet_model::validate_group_name(name).map_err(|e| BrokerError::invalid("group", e.to_string()))
}

/// Checks the topic name, that the topic exists, and that `queue_id` is one of its read queues.
fn check_read_queue(broker: &crate::broker::Broker, topic: &str, queue_id: u32) -> Result<comet_model::TopicConfig> {
    check_topic(topic)?;
    let config = broker.topic(topic)?;
    if queue_id >= config.read_queue_nums {
        return Err(BrokerError::invalid(
            "queue_id",
            format!("{queue_id} is not a read queue of {topic:?} (0..{})", config.read_queue_nums),
        ));
    }
    Ok(config)
}

#[tonic::async_trait]
impl BrokerService for BrokerHandler {
    async fn send_message(&self, request: Request<pb::SendMessageRequest>) -> Answer<pb::SendMessageResponse> {
        let born_host = request.remote_addr();
        answer(send::send(&self.broker, request.into_inner(), born_host).await)
    }

    async fn pull_message(&self, request: Request<pb::PullMessageRequest>) -> Answer<pb::PullMessageResponse> {
        answer(pull::pull(&self.broker, request.into_inner()).await)
    }

    async fn query_consumer_offset(
        &self,
        request: Request<pb::QueryConsumerOffsetRequest>,
    ) -> Answer<pb::QueryConsumerOffsetResponse> {
        answer(offset::query(&self.broker, request.into_inner()))
    }

    async fn commit_consumer_offset(
        &self,
        request: Request<pb::CommitConsumerOffsetRequest>,
    ) -> Answer<pb::CommitConsumerOffsetResponse> {
        answer(offset::commit(&self.broker, request.into_inner()))
    }

    async fn heartbeat(&self, request: Request<pb::ClientHeartbeatRequest>) -> Answer<pb::ClientHeartbeatResponse> {
        answer(client::heartbeat(&self.broker, request.into_inner()).await)
    }

    async fn unregister_client(
        &self,
        request: Request<pb::UnregisterClientRequest>,
    ) -> Answer<pb::UnregisterClientResponse> {
        answer(client::unregister(&self.broker, request.into_inner()))
    }

    async fn get_consumer_list(
        &self,
        request: Request<pb::GetConsumerListRequest>,
    ) -> Answer<pb::GetConsumerListResponse> {
        answer(client::consumer_list(&self.broker, request.into_inner()))
    }

    async fn create_topic(&self, request: Request<pb::CreateTopicRequest>) -> Answer<pb::CreateTopicResponse> {
        answer(topic::create(&self.broker, request.into_inner()).await)
    }

    async fn update_topic(&self, request: Request<pb::UpdateTopicRequest>) -> Answer<pb::UpdateTopicResponse> {
        answer(topic::update(&self.broker, request.into_inner()).await)
    }

    async fn delete_topic(&self, request: Request<pb::DeleteTopicRequest>) -> Answer<pb::DeleteTopicResponse> {
        answer(topic::delete(&self.broker, request.into_inner()).await)
    }

    async fn list_topics(
        &self,
        _request: Request<pb::ListBrokerTopicsRequest>,
    ) -> Answer<pb::ListBrokerTopicsResponse> {
        answer(Ok(topic::list(&self.broker)))
    }

    async fn describe_topic(&self, request: Request<pb::DescribeTopicRequest>) -> Answer<pb::DescribeTopicResponse> {
        answer(topic::describe(&self.broker, request.into_inner()))
    }

    async fn create_group(&self, request: Request<pb::CreateGroupRequest>) -> Answer<pb::CreateGroupResponse> {
        answer(group::create(&self.broker, request.into_inner()).await)
    }

    async fn update_group(&self, request: Request<pb::UpdateGroupRequest>) -> Answer<pb::UpdateGroupResponse> {
        answer(group::update(&self.broker, request.into_inner()).await)
    }

    async fn delete_group(&self, request: Request<pb::DeleteGroupRequest>) -> Answer<pb::DeleteGroupResponse> {
        answer(group::delete(&self.broker, request.into_inner()).await)
    }

    async fn list_groups(&self, _request: Request<pb::ListGroupsRequest>) -> Answer<pb::ListGroupsResponse> {
        answer(Ok(group::list(&self.broker)))
    }

    async fn describe_group(&self, request: Request<pb::DescribeGroupRequest>) -> Answer<pb::DescribeGroupResponse> {
        answer(group::describe(&self.broker, request.into_inner()))
    }

    async fn get_queue_offsets(
        &self,
        request: Request<pb::GetQueueOffsetsRequest>,
    ) -> Answer<pb::GetQueueOffsetsResponse> {
        answer(query::queue_offsets(&self.broker, request.into_inner()))
    }

    async fn search_offset(&self, request: Request<pb::SearchOffsetRequest>) -> Answer<pb::SearchOffsetResponse> {
        answer(query::search_offset(&self.broker, request.into_inner()).await)
    }

    async fn query_message_by_id(
        &self,
        request: Request<pb::QueryMessageByIdRequest>,
    ) -> Answer<pb::QueryMessageByIdResponse> {
        answer(query::by_id(&self.broker, request.into_inner()).await)
    }

    async fn query_messages_by_key(
        &self,
        request: Request<pb::QueryMessagesByKeyRequest>,
    ) -> Answer<pb::QueryMessagesByKeyResponse> {
        answer(query::by_key(&self.broker, request.into_inner()).await)
    }

    async fn get_replication_status(
        &self,
        _request: Request<pb::GetReplicationStatusRequest>,
    ) -> Answer<pb::GetReplicationStatusResponse> {
        answer(Ok(replication::status(&self.broker)))
    }

    async fn consumer_send_back(
        &self,
        request: Request<pb::ConsumerSendBackRequest>,
    ) -> Answer<pb::ConsumerSendBackResponse> {
        answer(retry::send_back(&self.broker, request.into_inner()).await)
    }

    async fn resend_dead_letters(
        &self,
        request: Request<pb::ResendDeadLettersRequest>,
    ) -> Answer<pb::ResendDeadLettersResponse> {
        answer(retry::resend_dead_letters(&self.broker, request.into_inner()).await)
    }

    async fn end_transaction(&self, request: Request<pb::EndTransactionRequest>) -> Answer<pb::EndTransactionResponse> {
        answer(transaction::end(&self.broker, request.into_inner()).await)
    }

    type WatchTransactionChecksStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::TransactionCheck, Status>> + Send + 'static>>;

    async fn watch_transaction_checks(
        &self,
        request: Request<pb::WatchTransactionChecksRequest>,
    ) -> Answer<Self::WatchTransactionChecksStream> {
        let stream = transaction::watch(&self.broker, request.get_ref())?;
        let stream = tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(stream), Ok);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn lock_queues(&self, request: Request<pb::LockQueuesRequest>) -> Answer<pb::LockQueuesResponse> {
        answer(lock::lock(&self.broker, request.into_inner()))
    }

    async fn unlock_queues(&self, request: Request<pb::UnlockQueuesRequest>) -> Answer<pb::UnlockQueuesResponse> {
        answer(lock::unlock(&self.broker, request.into_inner()))
    }
}
