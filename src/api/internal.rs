//! The node-to-node service: openraft's RPCs and operations forwarded to the leader.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::node::{LeaderOp, NodeHandle};
use crate::proto::internal::raft_internal_server::RaftInternal;
use crate::proto::internal::RaftMessage;
use crate::raft::codec::{decode, encode};

pub struct InternalApi {
    node: Arc<NodeHandle>,
}

impl InternalApi {
    pub fn new(node: Arc<NodeHandle>) -> InternalApi {
        InternalApi { node }
    }
}

fn decode_request<T: DeserializeOwned>(request: Request<RaftMessage>) -> Result<T, Status> {
    decode(&request.into_inner().payload)
        .map_err(|e| Status::invalid_argument(format!("malformed internal message: {e}")))
}

fn reply<T: Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    let payload = encode(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftMessage { payload }))
}

#[tonic::async_trait]
impl RaftInternal for InternalApi {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode_request(request)?;
        reply(&self.node.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode_request(request)?;
        reply(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode_request(request)?;
        reply(&self.node.raft.install_snapshot(rpc).await)
    }

    async fn execute(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let op: LeaderOp = decode_request(request)?;
        reply(&self.node.execute_local(op).await)
    }
}
