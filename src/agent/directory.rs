//! The replica directory: for every slot this node runs and has connected, the handle
//! that tool calls use. The replica's task publishes its handle once the server has
//! answered initialize and withdraws it before it stops the server; the data-plane
//! service and the gateway only read it.
//!
//! A handle holds the one shared MCP client of the replica (rmcp's `Peer`, cloned per
//! call, all calls multiplexed over one connection), its bulkhead (a bounded number of
//! calls in flight, with a bounded wait for a permit), and its circuit breaker, which
//! real call outcomes feed as well as the health probes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, ClientRequest, GetPromptRequest,
    GetPromptRequestParams, GetPromptResponse, ProgressNotificationParam, ReadResourceRequest,
    ReadResourceRequestParams, ReadResourceResponse, RequestMetaObject, ServerResult,
};
use rmcp::service::ServiceError;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use super::breaker::{Breaker, Source};
use crate::mcp::Upstream;

/// Longest a call waits for a free place in a full bulkhead.
pub const BULKHEAD_WAIT_MS: u64 = 50;

/// Why a call through this node's replica failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplicaCallError {
    /// Nothing was sent to the server: the slot does not run here (or under another
    /// assignment). Safe to try another replica.
    #[error("replica {server}/{slot} at epoch {epoch} does not run on this node")]
    NotHere {
        server: String,
        slot: u32,
        epoch: u64,
    },
    /// Nothing was sent: no connection to the node that runs the replica could be made.
    #[error("node {node} is unreachable: {reason}")]
    Unreachable { node: u64, reason: String },
    /// Nothing was sent: the call itself is malformed.
    #[error("{0}")]
    Invalid(String),
    /// Nothing was sent: the replica's breaker is open.
    #[error("replica {server}/{slot}: circuit breaker open")]
    BreakerOpen { server: String, slot: u32 },
    /// Nothing was sent: every place in the replica's bulkhead stayed taken.
    #[error("replica {server}/{slot} is overloaded ({limit} calls in flight)")]
    Overloaded {
        server: String,
        slot: u32,
        limit: usize,
    },
    /// The call was sent and no answer came in time; it may have run.
    #[error("no answer from {server}/{slot} within {timeout_ms} ms")]
    Timeout {
        server: String,
        slot: u32,
        timeout_ms: u64,
    },
    /// The call was sent and the connection failed or the answer was garbage; it may
    /// have run.
    #[error("replica {server}/{slot}: {reason}")]
    Failed {
        server: String,
        slot: u32,
        reason: String,
    },
    /// The server answered with a JSON-RPC error (an unknown tool, bad arguments).
    #[error("{message}")]
    Mcp { code: i32, message: String },
}

impl ReplicaCallError {
    /// A name for the kind of error, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ReplicaCallError::NotHere { .. } => "not_here",
            ReplicaCallError::Unreachable { .. } => "unreachable",
            ReplicaCallError::Invalid(_) => "invalid",
            ReplicaCallError::BreakerOpen { .. } => "breaker_open",
            ReplicaCallError::Overloaded { .. } => "overloaded",
            ReplicaCallError::Timeout { .. } => "timeout",
            ReplicaCallError::Failed { .. } => "failed",
            ReplicaCallError::Mcp { .. } => "mcp_error",
        }
    }

    /// Whether the call provably never reached the MCP server.
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            ReplicaCallError::NotHere { .. }
                | ReplicaCallError::Unreachable { .. }
                | ReplicaCallError::BreakerOpen { .. }
                | ReplicaCallError::Overloaded { .. }
        )
    }
}

/// What the fleet routes to one replica: a tool call, or a prompt or resource it
/// offers.
#[derive(Clone, Debug)]
pub enum Request {
    CallTool(CallToolRequestParams),
    GetPrompt(GetPromptRequestParams),
    ReadResource(ReadResourceRequestParams),
}

impl Request {
    /// The request's `_meta` (in its parameters).
    pub fn meta_mut(&mut self) -> &mut Option<RequestMetaObject> {
        match self {
            Request::CallTool(params) => &mut params.meta,
            Request::GetPrompt(params) => &mut params.meta,
            Request::ReadResource(params) => &mut params.meta,
        }
    }

    /// The MCP method the request is.
    pub fn method(&self) -> &'static str {
        match self {
            Request::CallTool(_) => "tools/call",
            Request::GetPrompt(_) => "prompts/get",
            Request::ReadResource(_) => "resources/read",
        }
    }

    /// The request as rmcp sends it, and the `_meta` of the caller's it carries
    /// (its client capabilities), which rmcp would otherwise replace with the fleet's.
    fn into_mcp(self) -> (ClientRequest, Option<RequestMetaObject>) {
        match self {
            Request::CallTool(mut params) => {
                let meta = params.meta.take();
                (
                    ClientRequest::CallToolRequest(CallToolRequest::new(params)),
                    meta,
                )
            }
            Request::GetPrompt(mut params) => {
                let meta = params.meta.take();
                (
                    ClientRequest::GetPromptRequest(GetPromptRequest::new(params)),
                    meta,
                )
            }
            Request::ReadResource(mut params) => {
                let meta = params.meta.take();
                let request = ReadResourceRequest::new(params);
                (ClientRequest::ReadResourceRequest(request), meta)
            }
        }
    }
}

impl Answer {
    /// The answer in `result` to a request of `method`, if it is of that kind.
    fn from_mcp(method: &str, result: ServerResult) -> Option<Answer> {
        use ServerResult as R;
        Some(match (method, result) {
            ("tools/call", R::CallToolResult(r)) => Answer::Tool(CallToolResponse::Complete(r)),
            ("tools/call", R::InputRequiredResult(r)) => {
                Answer::Tool(CallToolResponse::InputRequired(r))
            }
            ("tools/call", R::CreateTaskResult(r)) => Answer::Tool(CallToolResponse::Task(r)),
            ("prompts/get", R::GetPromptResult(r)) => {
                Answer::Prompt(GetPromptResponse::Complete(r))
            }
            ("prompts/get", R::InputRequiredResult(r)) => {
                Answer::Prompt(GetPromptResponse::InputRequired(r))
            }
            ("resources/read", R::ReadResourceResult(r)) => {
                Answer::Resource(ReadResourceResponse::Complete(r))
            }
            ("resources/read", R::InputRequiredResult(r)) => {
                Answer::Resource(ReadResourceResponse::InputRequired(r))
            }
            _ => return None,
        })
    }
}

/// A replica's answer to a `Request`, of the same kind.
#[derive(Clone, Debug)]
pub enum Answer {
    Tool(CallToolResponse),
    Prompt(GetPromptResponse),
    Resource(ReadResourceResponse),
}

/// One connected replica, as tool calls see it.
pub struct ReplicaHandle {
    pub server: String,
    pub slot: u32,
    pub epoch: u64,
    upstream: Upstream,
    bulkhead: Semaphore,
    /// The bulkhead's size (the spec's `max_concurrent_calls`).
    limit: usize,
    breaker: Arc<Mutex<Breaker>>,
}

impl ReplicaHandle {
    pub fn new(
        server: String,
        slot: u32,
        epoch: u64,
        upstream: Upstream,
        breaker: Arc<Mutex<Breaker>>,
        limit: u32,
    ) -> ReplicaHandle {
        let limit = limit.max(1) as usize;
        ReplicaHandle {
            server,
            slot,
            epoch,
            upstream,
            bulkhead: Semaphore::new(limit),
            limit,
            breaker,
        }
    }

    /// Calls in flight right now.
    pub fn in_flight(&self) -> usize {
        self.limit - self.bulkhead.available_permits()
    }

    /// Whether the breaker lets calls through (without taking a half-open trial).
    pub fn breaker_open(&self) -> bool {
        self.breaker
            .lock()
            .is_ok_and(|mut b| b.state(Instant::now()) == crate::registry::BreakerState::Open)
    }

    /// One request through the shared client, within `timeout`. Dropping the future
    /// (the caller gave up) sends `notifications/cancelled` upstream. With `progress`,
    /// the server's progress notifications on the request go there.
    pub async fn request(
        &self,
        request: Request,
        timeout: Duration,
        progress: Option<mpsc::Sender<ProgressNotificationParam>>,
    ) -> Result<Answer, ReplicaCallError> {
        let (server, slot) = (self.server.clone(), self.slot);
        let method = request.method();
        let permit = match tokio::time::timeout(
            Duration::from_millis(BULKHEAD_WAIT_MS),
            self.bulkhead.acquire(),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            _ => {
                return Err(ReplicaCallError::Overloaded {
                    server,
                    slot,
                    limit: self.limit,
                })
            }
        };
        let allowed = self
            .breaker
            .lock()
            .is_ok_and(|mut b| b.allow(Instant::now()));
        if !allowed && !crate::env::bugs::active(crate::env::bugs::Bug::RouteToUnavailable) {
            return Err(ReplicaCallError::BreakerOpen { server, slot });
        }
        let (request, meta) = request.into_mcp();
        let sent = self.upstream.send(request, meta, progress);
        let outcome = tokio::time::timeout(timeout, sent).await;
        drop(permit);
        let result = match outcome {
            Err(_) => Err(ReplicaCallError::Timeout {
                server,
                slot,
                timeout_ms: timeout.as_millis() as u64,
            }),
            Ok(Ok(answer)) => {
                Answer::from_mcp(method, answer).ok_or_else(|| ReplicaCallError::Failed {
                    server,
                    slot,
                    reason: format!("the server answered {method} with another kind of result"),
                })
            }
            Ok(Err(ServiceError::McpError(error))) => Err(ReplicaCallError::Mcp {
                code: error.code.0,
                message: error.message.to_string(),
            }),
            Ok(Err(error)) => Err(ReplicaCallError::Failed {
                server,
                slot,
                reason: error.to_string(),
            }),
        };
        // Transport failures and timeouts count against the replica; an answer (even
        // a JSON-RPC error or a tool's own error result) shows it works.
        if let Ok(mut breaker) = self.breaker.lock() {
            match &result {
                Err(ReplicaCallError::Timeout { .. } | ReplicaCallError::Failed { .. }) => {
                    breaker.record_failure(Source::Call, Instant::now())
                }
                _ => breaker.record_success(Source::Call),
            }
        }
        result
    }
}

/// Every connected replica of this node, by (server, slot).
#[derive(Default)]
pub struct Directory {
    replicas: DashMap<(String, u32), Arc<ReplicaHandle>>,
}

impl Directory {
    pub fn publish(&self, handle: Arc<ReplicaHandle>) {
        self.replicas
            .insert((handle.server.clone(), handle.slot), handle);
    }

    /// Withdraws the handle of `server`/`slot` if it is the one for `epoch`.
    pub fn withdraw(&self, server: &str, slot: u32, epoch: u64) {
        self.replicas
            .remove_if(&(server.to_string(), slot), |_, h| h.epoch == epoch);
    }

    /// The handle of `server`/`slot` under the assignment made at `epoch`: the fencing
    /// token a call carries must match what this node runs.
    pub fn get(
        &self,
        server: &str,
        slot: u32,
        epoch: u64,
    ) -> Result<Arc<ReplicaHandle>, ReplicaCallError> {
        match self.replicas.get(&(server.to_string(), slot)) {
            Some(handle) if handle.epoch == epoch => Ok(handle.clone()),
            _ => Err(ReplicaCallError::NotHere {
                server: server.to_string(),
                slot,
                epoch,
            }),
        }
    }

    /// Calls in flight on `server`/`slot`, if it runs here.
    pub fn in_flight(&self, server: &str, slot: u32) -> Option<usize> {
        self.replicas
            .get(&(server.to_string(), slot))
            .map(|h| h.in_flight())
    }
}
