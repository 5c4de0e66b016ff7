//! The node-to-node service: openraft's RPCs (over one stream per sender) and
//! operations forwarded to the leader.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};

use crate::control::{ControlPlane, LeaderError, LeaderOp};
use crate::proto::internal::raft_internal_server::RaftInternal;
use crate::proto::internal::{RaftKind, RaftMessage};
use crate::raft::codec::{decode, encode};

pub struct InternalApi {
    node: Arc<ControlPlane>,
}

impl InternalApi {
    pub fn new(node: Arc<ControlPlane>) -> InternalApi {
        InternalApi { node }
    }
}

fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Status> {
    decode(payload)
        .map_err(|e| Status::invalid_argument(format!("malformed internal message: {e}")))
}

fn encode_payload<T: Serialize>(value: &T) -> Result<Vec<u8>, Status> {
    encode(value).map_err(|e| Status::internal(e.to_string()))
}

/// Answers one Raft request with openraft's result, encoded.
async fn answer(node: &ControlPlane, request: RaftMessage) -> Result<RaftMessage, Status> {
    let raft = &node.raft;
    let payload = match RaftKind::try_from(request.kind) {
        Ok(RaftKind::AppendEntries) => {
            encode_payload(&raft.append_entries(decode_payload(&request.payload)?).await)?
        }
        Ok(RaftKind::Vote) => encode_payload(&raft.vote(decode_payload(&request.payload)?).await)?,
        Ok(RaftKind::InstallSnapshot) => encode_payload(
            &raft
                .install_snapshot(decode_payload(&request.payload)?)
                .await,
        )?,
        _ => {
            return Err(Status::invalid_argument(format!(
                "unknown raft message kind {}",
                request.kind
            )))
        }
    };
    Ok(RaftMessage {
        payload,
        id: request.id,
        kind: request.kind,
    })
}

type RaftStream = Pin<Box<dyn Stream<Item = Result<RaftMessage, Status>> + Send>>;

#[tonic::async_trait]
impl RaftInternal for InternalApi {
    type RaftStream = RaftStream;

    async fn raft(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<RaftStream>, Status> {
        if let Err(reason) = self.node.incarnations.check_metadata(request.metadata()) {
            return Err(Status::failed_precondition(reason));
        }
        let inbound = request.into_inner();
        let node = self.node.clone();
        // Requests are answered one at a time, in order; the stream ends when the sender
        // closes it, on the first malformed message, or when this node shuts down.
        let answers = futures::stream::unfold(
            (inbound, node, false),
            |(mut inbound, node, failed)| async move {
                if failed {
                    return None;
                }
                let request = inbound.message().await.ok()??;
                let answer = answer(&node, request).await;
                let failed = answer.is_err();
                Some((answer, (inbound, node, failed)))
            },
        );
        let answers = answers.take_until(self.node.shutdown_signal());
        let mut response = Response::new(Box::pin(answers) as RaftStream);
        self.node.incarnations.stamp(response.metadata_mut());
        Ok(response)
    }

    async fn execute(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let result = match self.node.incarnations.check_metadata(request.metadata()) {
            Ok(()) => {
                let op: LeaderOp = decode_payload(&request.into_inner().payload)?;
                self.node.execute_local(op).await
            }
            Err(reason) => Err(LeaderError::Replaced(reason)),
        };
        let payload = encode_payload(&result)?;
        Ok(Response::new(RaftMessage {
            payload,
            ..Default::default()
        }))
    }
}
