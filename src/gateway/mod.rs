//! The tool-call path: a call that reaches any node (its `/mcp` endpoint or the gRPC
//! API) goes to a replica the router picks, on this node through the replica
//! directory or on another node through the data-plane RPC, carrying (server, slot,
//! epoch) as the fencing token.
//!
//! A call moves on to the next replica only when it provably never reached the MCP
//! server: the callee did not run the slot at that epoch, the breaker was open, the
//! bulkhead stayed full, or no connection to the callee could be made. Anything that
//! may have reached the server (a timeout, a connection lost after sending) is the
//! caller's error: a tool can have side effects, and no call runs twice.
//!
//! It depends only on the registry's applied state (read), the replica directory and a
//! dialer for other nodes.

pub mod catalog;
pub mod endpoint;
pub mod names;
pub mod resume;
pub mod sessions;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, GetPromptResponse, ProgressNotificationParam,
    ReadResourceResponse,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::agent::{Answer, Directory, ReplicaCallError, Request};
use crate::control::Reader;
use crate::env::NetworkError;
use crate::proto::dataplane as pb;
use crate::raft::NodeId;

pub use crate::config::DEFAULT_CALL_TIMEOUT_MS;
/// The longest call timeout accepted.
pub const MAX_CALL_TIMEOUT_MS: u64 = 600_000;
/// Largest data-plane message (a call's arguments or its result).
pub const MAX_CALL_BYTES: usize = 16 * 1024 * 1024;

/// Channels to other nodes.
pub trait Dialer: Send + Sync {
    fn channel(&self, addr: &str) -> Result<tonic::transport::Channel, NetworkError>;
    /// Drops the channel to `addr` (it looks dead): the next call opens a new one.
    fn forget(&self, addr: &str);
}

impl Dialer for crate::control::Peers {
    fn channel(&self, addr: &str) -> Result<tonic::transport::Channel, NetworkError> {
        crate::control::Peers::channel(self, addr)
    }

    fn forget(&self, addr: &str) {
        crate::control::Peers::forget(self, addr)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("unknown server {0:?}")]
    UnknownServer(String),
    #[error("unknown tool {0:?}")]
    UnknownTool(String),
    #[error("server {server:?} has no healthy replica: {why}")]
    NoReplica { server: String, why: String },
    #[error("invalid call: {0}")]
    Invalid(String),
    #[error("invalid retry: {0}")]
    Resume(#[from] resume::ResumeError),
    #[error("replica {slot} of server {server:?}, which asked for input, no longer serves: send the request again from the start")]
    ReplicaGone { server: String, slot: u32 },
    #[error(transparent)]
    Replica(#[from] ReplicaCallError),
}

impl CallError {
    /// A name for the kind of error, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::UnknownServer(_) => "unknown_server",
            CallError::UnknownTool(_) => "unknown_tool",
            CallError::NoReplica { .. } => "no_replica",
            CallError::Invalid(_) => "invalid",
            CallError::Resume(_) => "invalid_resume",
            CallError::ReplicaGone { .. } => "replica_gone",
            CallError::Replica(error) => error.kind(),
        }
    }
}

/// Routes tool calls.
pub struct Calls {
    me: NodeId,
    reader: Reader,
    directory: Arc<Directory>,
    dialer: Arc<dyn Dialer>,
    /// Calls this node has in flight on other nodes' replicas, by (node, server, slot).
    remote_in_flight: DashMap<(NodeId, String, u32), Arc<AtomicUsize>>,
}

/// Counts a remote call in flight while it lives.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Calls {
    pub fn new(
        me: NodeId,
        reader: Reader,
        directory: Arc<Directory>,
        dialer: Arc<dyn Dialer>,
    ) -> Calls {
        Calls {
            me,
            reader,
            directory,
            dialer,
            remote_in_flight: DashMap::new(),
        }
    }

    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    fn in_flight(&self, node: NodeId, server: &str, slot: u32) -> usize {
        if node == self.me {
            return self.directory.in_flight(server, slot).unwrap_or(0);
        }
        self.remote_in_flight
            .get(&(node, server.to_string(), slot))
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// Calls tool `params.name` of `server` (its own name for it) within `timeout`.
    pub async fn call(
        &self,
        server: &str,
        params: CallToolRequestParams,
        timeout: Duration,
    ) -> Result<CallToolResponse, CallError> {
        match self
            .request(server, Request::CallTool(params), timeout, None)
            .await?
        {
            Answer::Tool(response) => Ok(response),
            _ => Err(CallError::Invalid(
                "the answer was not a tool result".into(),
            )),
        }
    }

    /// Sends `request` to one replica of `server` within `timeout`: the router's
    /// choice, and the next one only while a replica provably never got it. With
    /// `progress`, the server's progress notifications on it go there (with the
    /// fleet's token: the caller puts its own back).
    ///
    /// Counts the call in `mcpfleet_calls_total` and times it in
    /// `mcpfleet_call_duration_seconds`, by method, server and outcome ("ok" or the
    /// error's kind). A server the registry does not know is counted under the server
    /// "", so that made-up names cannot grow the series without bound.
    pub async fn request(
        &self,
        server: &str,
        request: Request,
        timeout: Duration,
        progress: Option<mpsc::Sender<ProgressNotificationParam>>,
    ) -> Result<Answer, CallError> {
        let started = Instant::now();
        let method = request.method();
        let result = self.route(server, request, timeout, progress).await;
        let (server, outcome) = match &result {
            Ok(_) => (server, "ok"),
            Err(CallError::UnknownServer(_)) => ("", "unknown_server"),
            Err(error) => (server, error.kind()),
        };
        let server = server.to_string();
        metrics::counter!("mcpfleet_calls_total",
            "method" => method, "server" => server.clone(), "outcome" => outcome)
        .increment(1);
        metrics::histogram!("mcpfleet_call_duration_seconds",
            "method" => method, "server" => server)
        .record(started.elapsed().as_secs_f64());
        result
    }

    async fn route(
        &self,
        server: &str,
        mut request: Request,
        timeout: Duration,
        progress: Option<mpsc::Sender<ProgressNotificationParam>>,
    ) -> Result<Answer, CallError> {
        let deadline = Instant::now() + timeout;
        let pin = resume::open(server, &mut request)?;
        let mut candidates = {
            let state = self.reader.stale();
            if !state.registry.servers.contains_key(server) {
                return Err(CallError::UnknownServer(server.to_string()));
            }
            if crate::env::bugs::active(crate::env::bugs::Bug::RouteToUnavailable) {
                every_assigned(&state.registry, server)
            } else {
                crate::router::candidates(&state.registry, server, self.me, |node, slot| {
                    self.in_flight(node, server, slot)
                })
            }
        };
        // A retry with its input goes back to the replica that asked for it.
        if let Some(pin) = pin {
            candidates.retain(|c| c.slot == pin.slot && c.epoch == pin.epoch);
            if candidates.is_empty() {
                return Err(CallError::ReplicaGone {
                    server: server.to_string(),
                    slot: pin.slot,
                });
            }
        }
        let mut last = None;
        for candidate in candidates {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let outcome = if candidate.node == self.me {
                match self.directory.get(server, candidate.slot, candidate.epoch) {
                    Ok(replica) => {
                        replica
                            .request(request.clone(), left, progress.clone())
                            .await
                    }
                    Err(error) => Err(error),
                }
            } else {
                self.call_remote(&candidate, server, &request, left, progress.clone())
                    .await
            };
            match outcome {
                Ok(mut answer) => {
                    let pin = resume::Pin {
                        slot: candidate.slot,
                        epoch: candidate.epoch,
                    };
                    resume::seal(server, pin, &mut answer);
                    return Ok(answer);
                }
                Err(error) if error.never_sent() || retry_after_send(&error) => {
                    tracing::debug!(server, slot = candidate.slot, node = candidate.node,
                        %error, "call not sent; trying the next replica");
                    metrics::counter!("mcpfleet_call_attempts_refused_total",
                        "reason" => error.kind())
                    .increment(1);
                    last = Some(error);
                }
                // The caller hears of the timeout it gave, not of what was left.
                Err(ReplicaCallError::Timeout { server, slot, .. }) => {
                    return Err(ReplicaCallError::Timeout {
                        server,
                        slot,
                        timeout_ms: timeout.as_millis() as u64,
                    }
                    .into())
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(match last {
            Some(error) => error.into(),
            None => CallError::NoReplica {
                server: server.to_string(),
                why: crate::router::why_unavailable(&self.reader.stale().registry, server),
            },
        })
    }

    async fn call_remote(
        &self,
        candidate: &crate::router::Candidate,
        server: &str,
        request: &Request,
        timeout: Duration,
        progress: Option<mpsc::Sender<ProgressNotificationParam>>,
    ) -> Result<Answer, ReplicaCallError> {
        let (slot, node) = (candidate.slot, candidate.node);
        let unreachable = |reason: String| ReplicaCallError::Unreachable { node, reason };
        let channel = self
            .dialer
            .channel(&candidate.addr)
            .map_err(|e| unreachable(e.to_string()))?;
        let params_json = match request {
            Request::CallTool(params) => serde_json::to_string(params),
            Request::GetPrompt(params) => serde_json::to_string(params),
            Request::ReadResource(params) => serde_json::to_string(params),
        }
        .map_err(|e| ReplicaCallError::Invalid(format!("unencodable request: {e}")))?;
        let method = request.method();
        let mut request = tonic::Request::new(pb::CallToolRequest {
            server: server.to_string(),
            slot,
            epoch: candidate.epoch,
            params_json,
            timeout_ms: timeout.as_millis() as u64,
            method: method.to_string(),
        });
        // The callee answers a timeout itself; this one covers a callee that cannot.
        let limit = timeout + Duration::from_millis(REMOTE_TIMEOUT_MARGIN_MS);
        request.set_timeout(limit);
        let counter = self
            .remote_in_flight
            .entry((node, server.to_string(), slot))
            .or_default()
            .clone();
        counter.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight(counter);
        let mut client = pb::tool_calls_client::ToolCallsClient::new(channel)
            .max_decoding_message_size(MAX_CALL_BYTES)
            .max_encoding_message_size(MAX_CALL_BYTES);
        let failed = |status: tonic::Status| {
            if never_connected(&status) {
                return unreachable(status.message().to_string());
            }
            self.dialer.forget(&candidate.addr);
            ReplicaCallError::Failed {
                server: server.to_string(),
                slot,
                reason: format!("node {node}: {}", status.message()),
            }
        };
        let timed_out = || {
            // The callee answers a timeout itself well before this: the connection to
            // it is likely dead.
            self.dialer.forget(&candidate.addr);
            ReplicaCallError::Timeout {
                server: server.to_string(),
                slot,
                timeout_ms: limit.as_millis() as u64,
            }
        };
        let deadline = Instant::now() + limit;
        let reply = match progress {
            None => match tokio::time::timeout_at(deadline, client.call_tool(request)).await {
                Err(_) => return Err(timed_out()),
                Ok(Err(status)) => return Err(failed(status)),
                Ok(Ok(reply)) => reply.into_inner(),
            },
            Some(progress) => {
                let opened = tokio::time::timeout_at(deadline, client.call_tool_streaming(request));
                let mut events = match opened.await {
                    Err(_) => return Err(timed_out()),
                    Ok(Err(status)) => return Err(failed(status)),
                    Ok(Ok(events)) => events.into_inner(),
                };
                loop {
                    use pb::call_event::Event;
                    let event = match tokio::time::timeout_at(deadline, events.message()).await {
                        Err(_) => return Err(timed_out()),
                        Ok(Err(status)) => return Err(failed(status)),
                        Ok(Ok(None)) => {
                            return Err(ReplicaCallError::Failed {
                                server: server.to_string(),
                                slot,
                                reason: format!("node {node} ended the call with no reply"),
                            })
                        }
                        Ok(Ok(Some(event))) => event.event,
                    };
                    match event {
                        Some(Event::Reply(reply)) => break reply,
                        Some(Event::ProgressJson(json)) => {
                            if let Ok(params) = serde_json::from_str(&json) {
                                // Progress is advisory: a slow caller misses some.
                                let _ = progress.try_send(params);
                            }
                        }
                        None => {}
                    }
                }
            }
        };
        from_reply(reply, method, server, candidate, timeout)
    }
}

/// The injected bug `RouteToUnavailable`: every assigned replica, by slot, whatever
/// its health, breaker or node.
fn every_assigned(
    registry: &crate::registry::Registry,
    server: &str,
) -> Vec<crate::router::Candidate> {
    registry
        .assignments
        .range((server.to_string(), 0)..=(server.to_string(), u32::MAX))
        .filter_map(|((_, slot), assignment)| {
            let node = registry.nodes.get(&assignment.node_id)?;
            Some(crate::router::Candidate {
                node: assignment.node_id,
                addr: node.addr.clone(),
                slot: *slot,
                epoch: assignment.epoch,
            })
        })
        .collect()
}

/// The injected bug `RetryAfterSend`: a call that may have run is sent again.
fn retry_after_send(error: &ReplicaCallError) -> bool {
    use crate::env::bugs::{active, Bug};
    active(Bug::RetryAfterSend) && !matches!(error, ReplicaCallError::Mcp { .. })
}

/// Extra time a remote call gets over its timeout before the caller gives up on the
/// callee.
const REMOTE_TIMEOUT_MARGIN_MS: u64 = 1_000;

/// Whether a failed RPC provably never left this node: the connection to the callee
/// could not be made.
fn never_connected(status: &tonic::Status) -> bool {
    use std::error::Error;
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut cause: Option<&(dyn Error + 'static)> = status.source();
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
            ) {
                return true;
            }
        }
        if error.to_string().contains("tcp connect error") {
            return true;
        }
        cause = error.source();
    }
    false
}

/// The data-plane reply for a call's outcome.
pub fn to_reply(outcome: Result<Answer, ReplicaCallError>) -> pb::CallToolReply {
    use pb::call_error::Kind;
    use pb::call_tool_reply::Outcome;
    let error = |kind: Kind, message: String, mcp_code: i32, limit: u32| {
        Outcome::Error(pb::CallError {
            kind: kind as i32,
            message,
            mcp_code,
            limit,
        })
    };
    let json = |encoded: serde_json::Result<String>, wrap: fn(String) -> Outcome| match encoded {
        Ok(json) => wrap(json),
        Err(e) => error(Kind::Failed, e.to_string(), 0, 0),
    };
    let outcome = match outcome {
        Ok(Answer::Tool(CallToolResponse::Complete(result))) => {
            json(serde_json::to_string(&result), Outcome::ResultJson)
        }
        Ok(Answer::Prompt(GetPromptResponse::Complete(result))) => {
            json(serde_json::to_string(&result), Outcome::ResultJson)
        }
        Ok(Answer::Resource(ReadResourceResponse::Complete(result))) => {
            json(serde_json::to_string(&result), Outcome::ResultJson)
        }
        Ok(
            Answer::Tool(CallToolResponse::InputRequired(result))
            | Answer::Prompt(GetPromptResponse::InputRequired(result))
            | Answer::Resource(ReadResourceResponse::InputRequired(result)),
        ) => json(serde_json::to_string(&result), Outcome::InputRequiredJson),
        Ok(_) => error(
            Kind::Failed,
            "the server answered with a task (or another kind of result), which the fleet \
             does not pass on yet"
                .into(),
            0,
            0,
        ),
        Err(failure) => {
            let kind = match &failure {
                ReplicaCallError::NotHere { .. } | ReplicaCallError::Unreachable { .. } => {
                    Kind::NotHere
                }
                ReplicaCallError::BreakerOpen { .. } => Kind::BreakerOpen,
                ReplicaCallError::Overloaded { .. } => Kind::Overloaded,
                ReplicaCallError::Timeout { .. } => Kind::Timeout,
                ReplicaCallError::Failed { .. } => Kind::Failed,
                ReplicaCallError::Mcp { .. } => Kind::Mcp,
                ReplicaCallError::Invalid(_) => Kind::Invalid,
            };
            let code = match &failure {
                ReplicaCallError::Mcp { code, .. } => *code,
                _ => 0,
            };
            let message = match &failure {
                // The caller names the replica again itself.
                ReplicaCallError::Mcp { message, .. }
                | ReplicaCallError::Invalid(message)
                | ReplicaCallError::Failed {
                    reason: message, ..
                } => message.clone(),
                other => other.to_string(),
            };
            let limit = match &failure {
                ReplicaCallError::Overloaded { limit, .. } => *limit as u32,
                _ => 0,
            };
            error(kind, message, code, limit)
        }
    };
    pb::CallToolReply {
        outcome: Some(outcome),
    }
}

/// A call's outcome from its data-plane reply.
fn from_reply(
    reply: pb::CallToolReply,
    method: &str,
    server: &str,
    candidate: &crate::router::Candidate,
    timeout: Duration,
) -> Result<Answer, ReplicaCallError> {
    let slot = candidate.slot;
    use pb::call_error::Kind;
    use pb::call_tool_reply::Outcome;
    let garbage = |reason: String| ReplicaCallError::Failed {
        server: server.to_string(),
        slot,
        reason,
    };
    match reply.outcome {
        Some(Outcome::ResultJson(json)) => {
            decode_answer(method, &json, false).map_err(|e| garbage(e.to_string()))
        }
        Some(Outcome::InputRequiredJson(json)) => {
            decode_answer(method, &json, true).map_err(|e| garbage(e.to_string()))
        }
        Some(Outcome::Error(error)) => {
            let (server, message) = (server.to_string(), error.message);
            Err(
                match Kind::try_from(error.kind).unwrap_or(Kind::Unspecified) {
                    Kind::NotHere => ReplicaCallError::NotHere {
                        server,
                        slot,
                        epoch: candidate.epoch,
                    },
                    Kind::BreakerOpen => ReplicaCallError::BreakerOpen { server, slot },
                    Kind::Overloaded => ReplicaCallError::Overloaded {
                        server,
                        slot,
                        limit: error.limit as usize,
                    },
                    Kind::Timeout => ReplicaCallError::Timeout {
                        server,
                        slot,
                        timeout_ms: timeout.as_millis() as u64,
                    },
                    Kind::Mcp => ReplicaCallError::Mcp {
                        code: error.mcp_code,
                        message,
                    },
                    Kind::Invalid => ReplicaCallError::Invalid(message),
                    Kind::Failed | Kind::Unspecified => ReplicaCallError::Failed {
                        server,
                        slot,
                        reason: message,
                    },
                },
            )
        }
        None => Err(garbage("an empty reply".into())),
    }
}

/// A request of `method` from its JSON parameters, as the data plane carries them
/// (no method: `tools/call`, as the first version of the data plane sent it).
pub fn decode_request(method: &str, params_json: &str) -> Result<Request, String> {
    let malformed = |e: serde_json::Error| format!("malformed {method} request: {e}");
    match method {
        "" | "tools/call" => serde_json::from_str(params_json)
            .map(Request::CallTool)
            .map_err(malformed),
        "prompts/get" => serde_json::from_str(params_json)
            .map(Request::GetPrompt)
            .map_err(malformed),
        "resources/read" => serde_json::from_str(params_json)
            .map(Request::ReadResource)
            .map_err(malformed),
        other => Err(format!("the data plane carries no {other:?} requests")),
    }
}

/// The answer to a request of `method` from the JSON of its result (or of its
/// `input_required` result).
fn decode_answer(method: &str, json: &str, input_required: bool) -> serde_json::Result<Answer> {
    use rmcp::model::InputRequiredResult;
    if input_required {
        let result: InputRequiredResult = serde_json::from_str(json)?;
        return Ok(match method {
            "prompts/get" => Answer::Prompt(GetPromptResponse::InputRequired(result)),
            "resources/read" => Answer::Resource(ReadResourceResponse::InputRequired(result)),
            _ => Answer::Tool(CallToolResponse::InputRequired(result)),
        });
    }
    Ok(match method {
        "prompts/get" => Answer::Prompt(GetPromptResponse::Complete(serde_json::from_str(json)?)),
        "resources/read" => {
            Answer::Resource(ReadResourceResponse::Complete(serde_json::from_str(json)?))
        }
        _ => Answer::Tool(CallToolResponse::Complete(serde_json::from_str(json)?)),
    })
}
