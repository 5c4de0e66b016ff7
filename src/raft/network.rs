//! The Raft network client: openraft's RPCs as bincode payloads over the internal
//! gRPC service, each call bounded by the timeout openraft gives it.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::RPCTypes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use super::codec::{decode, encode};
use super::{Node, NodeId, TypeConfig};
use crate::env::Network;
use crate::proto::internal::raft_internal_client::RaftInternalClient;
use crate::proto::internal::RaftMessage;

/// Builds one client per peer.
#[derive(Clone)]
pub struct NetworkFactory {
    id: NodeId,
    network: Arc<dyn Network>,
}

impl NetworkFactory {
    pub fn new(id: NodeId, network: Arc<dyn Network>) -> NetworkFactory {
        NetworkFactory { id, network }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        let client = self.network.channel(&node.addr).map(|channel| {
            RaftInternalClient::new(channel).max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        });
        PeerClient {
            id: self.id,
            target,
            client: client.map_err(|e| e.to_string()),
        }
    }
}

/// Largest Raft message accepted over the wire, in bytes.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The client to one peer.
pub struct PeerClient {
    id: NodeId,
    target: NodeId,
    client: Result<RaftInternalClient<Channel>, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        action: RPCTypes,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(client) => client,
            Err(reason) => {
                return Err(RPCError::Unreachable(Unreachable::new(&TransportError(
                    reason.clone(),
                ))))
            }
        };
        let payload = encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let message = RaftMessage { payload };
        let timeout: Duration = option.hard_ttl();
        let call = async {
            match action {
                RPCTypes::Vote => client.vote(message).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(message).await,
                _ => client.append_entries(message).await,
            }
        };
        let response = match tokio::time::timeout(timeout, call).await {
            Err(_) => {
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: self.id,
                    target: self.target,
                    timeout,
                }))
            }
            Ok(Err(status)) => {
                let error = TransportError(format!("{}: {}", status.code(), status.message()));
                return Err(match status.code() {
                    tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => {
                        RPCError::Unreachable(Unreachable::new(&error))
                    }
                    _ => RPCError::Network(NetworkError::new(&error)),
                });
            }
            Ok(Ok(response)) => response.into_inner(),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&response.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(RPCTypes::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(RPCTypes::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(RPCTypes::Vote, &rpc, &option).await
    }
}
