//! The data-plane service: tool calls from other nodes' routers to the replicas this
//! node runs. The call's epoch is the fencing token: a slot this node does not run
//! under exactly that assignment is refused before anything reaches a server.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::agent::{Directory, ReplicaCallError};
use crate::gateway::{decode_request, to_reply, MAX_CALL_TIMEOUT_MS};
use crate::proto::dataplane as pb;
use crate::proto::dataplane::tool_calls_server::ToolCalls;

pub struct DataPlaneApi {
    directory: Arc<Directory>,
}

impl DataPlaneApi {
    pub fn new(directory: Arc<Directory>) -> DataPlaneApi {
        DataPlaneApi { directory }
    }
}

#[tonic::async_trait]
impl ToolCalls for DataPlaneApi {
    async fn call_tool(
        &self,
        request: Request<pb::CallToolRequest>,
    ) -> Result<Response<pb::CallToolReply>, Status> {
        let request = request.into_inner();
        let outcome = match decode_request(&request.method, &request.params_json) {
            Err(reason) => Err(ReplicaCallError::Invalid(reason)),
            Ok(upstream) => {
                let timeout =
                    Duration::from_millis(request.timeout_ms.clamp(1, MAX_CALL_TIMEOUT_MS));
                match self
                    .directory
                    .get(&request.server, request.slot, request.epoch)
                {
                    Ok(replica) => replica.request(upstream, timeout).await,
                    Err(error) => Err(error),
                }
            }
        };
        Ok(Response::new(to_reply(outcome)))
    }
}
