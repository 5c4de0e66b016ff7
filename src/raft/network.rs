//! The Raft network client: openraft's RPCs as bincode payloads over one internal
//! gRPC stream per peer, each call bounded by the timeout openraft gives it.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::RPCTypes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use super::codec::{decode, encode};
use super::incarnation::Incarnations;
use super::{Node, NodeId, TypeConfig};
use crate::env::Network;
use crate::proto::internal::raft_internal_client::RaftInternalClient;
use crate::proto::internal::{RaftKind, RaftMessage};

/// Builds one client per peer.
#[derive(Clone)]
pub struct NetworkFactory {
    id: NodeId,
    network: Arc<dyn Network>,
    incarnations: Arc<Incarnations>,
}

impl NetworkFactory {
    pub fn new(
        id: NodeId,
        network: Arc<dyn Network>,
        incarnations: Arc<Incarnations>,
    ) -> NetworkFactory {
        NetworkFactory {
            id,
            network,
            incarnations,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        PeerClient {
            id: self.id,
            target,
            addr: node.addr.clone(),
            network: self.network.clone(),
            incarnations: self.incarnations.clone(),
            client: None,
            stream: None,
            next_request_id: 0,
        }
    }
}

/// Pause between replication attempts to an unreachable peer.
pub const UNREACHABLE_RETRY_MS: u64 = 40;

/// Largest Raft message accepted over the wire, in bytes.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The client to one peer: one long-lived request stream, one request at a time
/// (openraft never has two calls in flight on one client). A call that fails or times
/// out drops the stream and the connection under it, and the next call opens new ones:
/// a connection that came back from a network fault in a bad state (a stalled stream,
/// a half-open socket) is never used again.
pub struct PeerClient {
    id: NodeId,
    target: NodeId,
    addr: String,
    network: Arc<dyn Network>,
    incarnations: Arc<Incarnations>,
    client: Option<RaftInternalClient<Channel>>,
    stream: Option<PeerStream>,
    next_request_id: u64,
}

struct PeerStream {
    requests: mpsc::Sender<RaftMessage>,
    answers: Streaming<RaftMessage>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

type CallError<E> = RPCError<NodeId, Node, RaftError<NodeId, E>>;

impl PeerClient {
    fn unreachable<E: std::error::Error>(reason: String) -> CallError<E> {
        RPCError::Unreachable(Unreachable::new(&TransportError(reason)))
    }

    /// Sends `message` on the request stream, opening one if there is none. A new
    /// stream carries its first message with the call itself, so opening costs no extra
    /// round trip.
    async fn send<E: std::error::Error>(
        &mut self,
        message: RaftMessage,
    ) -> Result<&mut PeerStream, CallError<E>> {
        if let Some(stream) = &mut self.stream {
            if stream.requests.send(message).await.is_err() {
                return Err(Self::unreachable("request stream closed".into()));
            }
            return Ok(self.stream.as_mut().expect("checked above"));
        }
        let client = match &mut self.client {
            Some(client) => client,
            None => {
                let channel = self
                    .network
                    .channel(&self.addr)
                    .map_err(|e| Self::unreachable(e.to_string()))?;
                self.client.insert(
                    RaftInternalClient::new(channel)
                        .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES),
                )
            }
        };
        let (requests, outbound) = mpsc::channel(1);
        // Cannot fail: the channel has room for one and the receiver is right here.
        let _ = requests.try_send(message);
        let mut request = tonic::Request::new(ReceiverStream::new(outbound));
        self.incarnations.stamp(request.metadata_mut());
        let incarnations = &self.incarnations;
        let response = client.raft(request).await.map_err(|status| {
            // Refused for speaking from a replaced data dir: the node stops.
            incarnations.refused(status.message());
            Self::unreachable(format!("{}: {}", status.code(), status.message()))
        })?;
        // A peer that answers from a replaced data dir gets no vote counted and no
        // entries: it is treated as unreachable.
        if let Err(reason) = self.incarnations.check_metadata(response.metadata()) {
            tracing::warn!(peer = self.target, %reason, "refusing a replaced peer");
            return Err(Self::unreachable(reason));
        }
        let answers = response.into_inner();
        Ok(self.stream.insert(PeerStream { requests, answers }))
    }

    async fn call<Req, Resp, E>(
        &mut self,
        action: RPCTypes,
        kind: RaftKind,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, CallError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.next_request_id += 1;
        let id = self.next_request_id;
        let timeout: Duration = option.hard_ttl();
        let exchange = async {
            let message = RaftMessage {
                payload,
                id,
                kind: kind as i32,
            };
            let stream = self.send::<E>(message).await?;
            match stream.answers.message().await {
                Ok(Some(answer)) if answer.id == id => Ok(answer),
                Ok(Some(answer)) => Err(RPCError::Network(NetworkError::new(&TransportError(
                    format!("answer {} to request {id}", answer.id),
                )))),
                Ok(None) => Err(Self::unreachable("answer stream ended".into())),
                Err(status) => Err(Self::unreachable(format!(
                    "{}: {}",
                    status.code(),
                    status.message()
                ))),
            }
        };
        let answer = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => {
                // The stream is in an unknown state: open a new one next time.
                self.stream = None;
                self.client = None;
                return Err(error);
            }
            Err(_) => {
                // A late answer must not be taken for the next request's.
                self.stream = None;
                self.client = None;
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: self.id,
                    target: self.target,
                    timeout,
                }));
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&answer.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(
            RPCTypes::AppendEntries,
            RaftKind::AppendEntries,
            &rpc,
            &option,
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(
            RPCTypes::InstallSnapshot,
            RaftKind::InstallSnapshot,
            &rpc,
            &option,
        )
        .await
    }

    /// How long replication to an unreachable peer pauses between attempts. It must be
    /// well under the election timeout: a restarted peer that hears nothing from the
    /// leader before its election timer fires starts an election with a higher term,
    /// which deposes the healthy leader (openraft 0.9 has no pre-vote). Attempts to a
    /// dead peer cost one refused connection each.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(
            UNREACHABLE_RETRY_MS,
        )))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(RPCTypes::Vote, RaftKind::Vote, &rpc, &option)
            .await
    }
}
