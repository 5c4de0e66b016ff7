//! The data-plane service: tool calls (and prompt and resource requests) from other
//! nodes' routers to the replicas this node runs. The call's epoch is the fencing
//! token: a slot this node does not run under exactly that assignment is refused
//! before anything reaches a server.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

use crate::agent::{Directory, ReplicaCallError, ReplicaHandle};
use crate::gateway::{decode_request, to_reply, MAX_CALL_TIMEOUT_MS};
use crate::mcp::PROGRESS_BUFFER;
use crate::proto::dataplane as pb;
use crate::proto::dataplane::tool_calls_server::ToolCalls;

pub struct DataPlaneApi {
    directory: Arc<Directory>,
    /// Where streaming calls run; the node joins them at shutdown.
    tasks: TaskTracker,
}

impl DataPlaneApi {
    pub fn new(directory: Arc<Directory>, tasks: TaskTracker) -> DataPlaneApi {
        DataPlaneApi { directory, tasks }
    }

    /// The replica `request` names and what to send it, or why there is none.
    fn resolve(
        &self,
        request: &pb::CallToolRequest,
    ) -> Result<(Arc<ReplicaHandle>, crate::agent::Request, Duration), ReplicaCallError> {
        let upstream = decode_request(&request.method, &request.params_json)
            .map_err(ReplicaCallError::Invalid)?;
        let timeout = Duration::from_millis(request.timeout_ms.clamp(1, MAX_CALL_TIMEOUT_MS));
        let replica = self
            .directory
            .get(&request.server, request.slot, request.epoch)?;
        Ok((replica, upstream, timeout))
    }
}

fn reply_event(reply: pb::CallToolReply) -> Result<pb::CallEvent, Status> {
    Ok(pb::CallEvent {
        event: Some(pb::call_event::Event::Reply(reply)),
    })
}

#[tonic::async_trait]
impl ToolCalls for DataPlaneApi {
    async fn call_tool(
        &self,
        request: Request<pb::CallToolRequest>,
    ) -> Result<Response<pb::CallToolReply>, Status> {
        let outcome = match self.resolve(request.get_ref()) {
            Ok((replica, upstream, timeout)) => replica.request(upstream, timeout, None).await,
            Err(error) => Err(error),
        };
        Ok(Response::new(to_reply(outcome)))
    }

    type CallToolStreamingStream = ReceiverStream<Result<pb::CallEvent, Status>>;

    async fn call_tool_streaming(
        &self,
        request: Request<pb::CallToolRequest>,
    ) -> Result<Response<Self::CallToolStreamingStream>, Status> {
        let (events, stream) = mpsc::channel(PROGRESS_BUFFER + 1);
        let (replica, upstream, timeout) = match self.resolve(request.get_ref()) {
            Ok(resolved) => resolved,
            Err(error) => {
                let _ = events.try_send(reply_event(to_reply(Err(error))));
                return Ok(Response::new(ReceiverStream::new(stream)));
            }
        };
        self.tasks.spawn(async move {
            let (progress, mut progressed) = mpsc::channel(PROGRESS_BUFFER);
            let call = replica.request(upstream, timeout, Some(progress));
            tokio::pin!(call);
            let outcome = loop {
                tokio::select! {
                    outcome = &mut call => break outcome,
                    // The caller went away: dropping the call cancels it upstream.
                    _ = events.closed() => return,
                    Some(params) = progressed.recv() => {
                        let Ok(json) = serde_json::to_string(&params) else { continue };
                        let event = pb::call_event::Event::ProgressJson(json);
                        // The caller went away: dropping the call cancels it upstream.
                        if events.send(Ok(pb::CallEvent { event: Some(event) })).await.is_err() {
                            return;
                        }
                    }
                }
            };
            // Progress that came before the answer goes before it.
            while let Ok(params) = progressed.try_recv() {
                if let Ok(json) = serde_json::to_string(&params) {
                    let event = pb::call_event::Event::ProgressJson(json);
                    let _ = events.send(Ok(pb::CallEvent { event: Some(event) })).await;
                }
            }
            let _ = events.send(reply_event(to_reply(outcome))).await;
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}
