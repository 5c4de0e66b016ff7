//! The client API: registry reads and writes, watches, cluster status and membership.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status};

use super::convert::{
    fleet_nodes_to_proto, record_to_proto, replicas_to_proto, spec_from_proto, token_from_proto,
    token_to_proto, Secrets,
};
use super::paging::page;
use super::status_from_node_error;
use crate::auth::grpc::status_from_auth_error;
use crate::auth::Principal;
use crate::control::{ControlPlane, LeaderOp, Member};
use crate::gateway::endpoint::FleetServer;
use crate::gateway::{CallError, MAX_CALL_TIMEOUT_MS};
use crate::proto::v1 as pb;
use crate::proto::v1::registry_server::Registry;
use crate::raft::WatchMessage;
use crate::registry::validate::{validate_name, validate_spec};
use crate::registry::{AdminState, Change, Command, Outcome, RegistryError, ServerPut};
use crate::secrets::SecretsKey;

pub struct ClientApi {
    node: Arc<ControlPlane>,
    gateway: FleetServer,
    /// One permit per watch stream served (`max_watches` of them).
    watches: Arc<tokio::sync::Semaphore>,
    /// Seals the secret values of the specs written through this node.
    secrets: Option<Arc<SecretsKey>>,
}

impl ClientApi {
    pub fn new(
        node: Arc<ControlPlane>,
        gateway: FleetServer,
        secrets: Option<Arc<SecretsKey>>,
    ) -> ClientApi {
        let watches = Arc::new(tokio::sync::Semaphore::new(node.config.max_watches));
        ClientApi {
            node,
            gateway,
            watches,
            secrets,
        }
    }

    /// The servers as written at their revisions (`None` for one changed since).
    fn written<'a>(
        &self,
        names: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> Vec<Option<pb::Server>> {
        let applied = self.node.view().read();
        names
            .into_iter()
            .map(|(name, revision)| {
                applied
                    .registry
                    .servers
                    .get(name)
                    .filter(|r| r.mod_revision == revision)
                    .map(record_to_proto)
            })
            .collect()
    }

    /// Commits a command that `actor` asked for; a rejection becomes the status that
    /// fits it.
    async fn commit(&self, command: Command, actor: String) -> Result<u64, Status> {
        match self
            .node
            .propose_as(command, Some(actor))
            .await
            .map_err(status_from_node_error)?
        {
            Outcome::Applied { revision } => Ok(revision),
            Outcome::Rejected(error) => Err(status_from_registry_error(&error)),
        }
    }

    async fn cluster_summary(&self) -> Result<pb::ClusterStatusResponse, Status> {
        let metrics = self.node.raft.metrics().borrow().clone();
        let committed = self
            .node
            .raft
            .with_raft_state(|state| state.committed)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let leader = self.node.known_leader();
        let (revision, server_count) = {
            let applied = self.node.view().read();
            (
                applied.registry.revision,
                applied.registry.servers.len() as u64,
            )
        };
        Ok(pb::ClusterStatusResponse {
            node_id: self.node.id(),
            leader_id: leader.as_ref().map(|(id, _)| *id),
            leader_addr: leader.map(|(_, addr)| addr).unwrap_or_default(),
            term: metrics.current_term,
            commit_index: committed.map_or(0, |c| c.index),
            applied_index: metrics.last_applied.map_or(0, |a| a.index),
            revision,
            members: members_to_proto(self.node.members()),
            server_count,
            data_bytes: self.node.disk_size(),
        })
    }

    /// Records a new token (`first`: the bootstrap).
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
        first: bool,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let actor = actor_of(&request);
        let token = token_from_proto(request.into_inner()).map_err(Status::invalid_argument)?;
        let command = Command::CreateToken { token, first };
        command
            .check()
            .map_err(|e| status_from_registry_error(&e))?;
        let revision = self.commit(command, actor).await?;
        Ok(Response::new(pb::CreateTokenResponse { revision }))
    }

    async fn barrier_unless_stale(&self, stale: bool) -> Result<(), Status> {
        if stale {
            return Ok(());
        }
        self.node
            .read_barrier()
            .await
            .map_err(status_from_node_error)
    }
}

/// A spec and its precondition from the wire, its secret values sealed with `key`,
/// and the spec checked.
fn put_from_proto(
    request: pb::PutServerRequest,
    key: Option<&SecretsKey>,
) -> Result<ServerPut, Status> {
    let spec = request
        .spec
        .ok_or_else(|| Status::invalid_argument("spec is required"))?;
    let spec = spec_from_proto(spec, Secrets::Seal(key)).map_err(Status::invalid_argument)?;
    validate_spec(&spec).map_err(|e| status_from_registry_error(&e))?;
    Ok(ServerPut {
        spec,
        expected_revision: request.expected_revision,
    })
}

fn status_from_registry_error(error: &RegistryError) -> Status {
    let message = error.to_string();
    match error {
        RegistryError::InvalidName { .. } | RegistryError::InvalidSpec { .. } => {
            Status::invalid_argument(message)
        }
        RegistryError::ServerNotFound { .. } | RegistryError::NodeNotFound { .. } => {
            Status::not_found(message)
        }
        RegistryError::RevisionMismatch { .. } => Status::failed_precondition(message),
        RegistryError::TooManyServers { .. } | RegistryError::Full { .. } => {
            Status::resource_exhausted(message)
        }
        RegistryError::StalePlan { .. } => Status::failed_precondition(message),
        RegistryError::InvalidPlan { .. }
        | RegistryError::InvalidNode { .. }
        | RegistryError::InvalidWrite { .. } => Status::invalid_argument(message),
        RegistryError::StaleReport { .. } => Status::failed_precondition(message),
        RegistryError::CatalogTooLarge { .. } | RegistryError::InvalidSession { .. } => {
            Status::invalid_argument(message)
        }
        RegistryError::SessionNotFound { .. } => Status::not_found(message),
        // Only a late copy of a write already answered gets this, and nobody waits for
        // its answer any more.
        RegistryError::StaleRequest { .. } => Status::aborted(message),
        RegistryError::InvalidToken { .. } => Status::invalid_argument(message),
        RegistryError::TokenExists { .. } => Status::already_exists(message),
        RegistryError::TokenNotFound { .. } => Status::not_found(message),
        RegistryError::AlreadyBootstrapped => Status::failed_precondition(message),
    }
}

/// The one place a failed tool call becomes a gRPC status.
fn status_from_call_error(error: CallError) -> Status {
    use crate::agent::ReplicaCallError as R;
    let message = error.to_string();
    match error {
        CallError::UnknownServer(_) | CallError::UnknownTool(_) => Status::not_found(message),
        CallError::Invalid(_) | CallError::Resume(_) | CallError::Replica(R::Invalid(_)) => {
            Status::invalid_argument(message)
        }
        CallError::ReplicaGone { .. } => Status::failed_precondition(message),
        CallError::NoReplica { .. } => Status::unavailable(message),
        CallError::Replica(error) => match error {
            R::Overloaded { .. } => Status::resource_exhausted(message),
            R::Timeout { .. } => Status::deadline_exceeded(message),
            // The server's own JSON-RPC error (an unknown tool, invalid arguments).
            R::Mcp { code, .. } if code == rmcp::model::ErrorCode::INVALID_PARAMS.0 => {
                Status::invalid_argument(message)
            }
            R::Mcp { code, .. } if code == rmcp::model::ErrorCode::METHOD_NOT_FOUND.0 => {
                Status::not_found(message)
            }
            R::Mcp { .. } => Status::unknown(message),
            _ => Status::unavailable(message),
        },
    }
}

/// The server called `name`, or NOT_FOUND.
fn server_record<'a>(
    registry: &'a crate::registry::Registry,
    name: &str,
) -> Result<&'a crate::registry::ServerRecord, Status> {
    registry.servers.get(name).ok_or_else(|| {
        status_from_registry_error(&RegistryError::ServerNotFound {
            name: name.to_string(),
        })
    })
}

fn members_to_proto(members: Vec<Member>) -> Vec<pb::Member> {
    members
        .into_iter()
        .map(|m| pb::Member {
            id: m.id,
            addr: m.addr,
            voter: m.voter,
        })
        .collect()
}

fn event_from_change(change: Change) -> pb::WatchEvent {
    match change {
        Change::Put { record, revision } => pb::WatchEvent {
            kind: pb::watch_event::Kind::Put as i32,
            revision,
            name: record.spec.name.clone(),
            server: Some(record_to_proto(&record)),
        },
        Change::Delete { name, revision } => pb::WatchEvent {
            kind: pb::watch_event::Kind::Delete as i32,
            revision,
            name,
            server: None,
        },
    }
}

/// Events buffered per watch stream before the stream waits for its client.
const WATCH_STREAM_BUFFER: usize = 256;

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;
type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotChunk, Status>> + Send>>;

/// The largest chunk of a backup file in a `SaveSnapshot` answer.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

#[tonic::async_trait]
impl Registry for ClientApi {
    async fn put_server(
        &self,
        request: Request<pb::PutServerRequest>,
    ) -> Result<Response<pb::PutServerResponse>, Status> {
        let actor = actor_of(&request);
        let put = put_from_proto(request.into_inner(), self.secrets.as_deref())?;
        let name = put.spec.name.clone();
        let revision = self
            .commit(
                Command::PutServer {
                    spec: put.spec,
                    expected_revision: put.expected_revision,
                },
                actor,
            )
            .await?;
        let server = self.written([(name.as_str(), revision)]).pop().flatten();
        Ok(Response::new(pb::PutServerResponse { revision, server }))
    }

    async fn put_servers(
        &self,
        request: Request<pb::PutServersRequest>,
    ) -> Result<Response<pb::PutServersResponse>, Status> {
        let actor = actor_of(&request);
        let puts = request
            .into_inner()
            .puts
            .into_iter()
            .map(|put| put_from_proto(put, self.secrets.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        let names: Vec<String> = puts.iter().map(|put| put.spec.name.clone()).collect();
        let command = Command::PutServers { puts };
        command
            .check()
            .map_err(|e| status_from_registry_error(&e))?;
        let revision = self.commit(command, actor).await?;
        // Each server has its own revision, in order, up to the write's.
        let first = revision + 1 - names.len() as u64;
        let servers = self
            .written(names.iter().map(String::as_str).zip(first..))
            .into_iter()
            .flatten()
            .collect();
        Ok(Response::new(pb::PutServersResponse { revision, servers }))
    }

    async fn delete_server(
        &self,
        request: Request<pb::DeleteServerRequest>,
    ) -> Result<Response<pb::DeleteServerResponse>, Status> {
        let actor = actor_of(&request);
        let request = request.into_inner();
        validate_name(&request.name).map_err(|e| status_from_registry_error(&e))?;
        let revision = self
            .commit(
                Command::DeleteServer {
                    name: request.name,
                    expected_revision: request.expected_revision,
                },
                actor,
            )
            .await?;
        Ok(Response::new(pb::DeleteServerResponse { revision }))
    }

    async fn get_server(
        &self,
        request: Request<pb::GetServerRequest>,
    ) -> Result<Response<pb::GetServerResponse>, Status> {
        let request = request.into_inner();
        validate_name(&request.name).map_err(|e| status_from_registry_error(&e))?;
        self.barrier_unless_stale(request.stale).await?;
        let applied = self.node.view().read();
        let record = server_record(&applied.registry, &request.name)?;
        Ok(Response::new(pb::GetServerResponse {
            server: Some(record_to_proto(record)),
            revision: applied.registry.revision,
        }))
    }

    async fn list_servers(
        &self,
        request: Request<pb::ListServersRequest>,
    ) -> Result<Response<pb::ListServersResponse>, Status> {
        let request = request.into_inner();
        self.barrier_unless_stale(request.stale).await?;
        let applied = self.node.view().read();
        let page = page(
            &applied.registry.servers,
            &request.page_token,
            request.page_size,
            record_to_proto,
        )?;
        Ok(Response::new(pb::ListServersResponse {
            servers: page.items,
            revision: applied.registry.revision,
            next_page_token: page.next_token,
        }))
    }

    type WatchServersStream = WatchStream;
    type SaveSnapshotStream = SnapshotStream;

    async fn save_snapshot(
        &self,
        request: Request<pb::SaveSnapshotRequest>,
    ) -> Result<Response<Self::SaveSnapshotStream>, Status> {
        let stale = request.into_inner().stale;
        let (revision, bytes) = self
            .node
            .backup(stale)
            .await
            .map_err(status_from_node_error)?;
        let total_bytes = bytes.len() as u64;
        // Each chunk is copied out as it is sent, not all at once.
        let count = bytes.len().div_ceil(SNAPSHOT_CHUNK_BYTES);
        let chunks = (0..count).map(move |i| {
            let start = i * SNAPSHOT_CHUNK_BYTES;
            let end = (start + SNAPSHOT_CHUNK_BYTES).min(bytes.len());
            Ok(pb::SnapshotChunk {
                data: bytes[start..end].to_vec(),
                revision: if i == 0 { revision } else { 0 },
                total_bytes: if i == 0 { total_bytes } else { 0 },
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn watch_servers(
        &self,
        request: Request<pb::WatchServersRequest>,
    ) -> Result<Response<Self::WatchServersStream>, Status> {
        let from = request.into_inner().from_revision;
        let permit = self.watches.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "this node serves at most {} watches at once (serve --max-watches)",
                self.node.config.max_watches
            ))
        })?;
        let (history, mut live) = self.node.view().watch(from).ok_or_else(|| {
            Status::out_of_range(format!(
                "revision {from} is compacted on this node: list the servers and watch from the list's revision"
            ))
        })?;
        let (tx, rx) = mpsc::channel(WATCH_STREAM_BUFFER);
        let shutdown = self.node.shutdown_signal();
        self.node.tasks().spawn(async move {
            // Held while the stream lives.
            let _permit = permit;
            let mut last_sent = from;
            for change in history {
                last_sent = change.revision();
                if tx.send(Ok(event_from_change(change))).await.is_err() {
                    return;
                }
            }
            tokio::pin!(shutdown);
            loop {
                let message = tokio::select! {
                    _ = &mut shutdown => {
                        let _ = tx.send(Err(Status::unavailable("node is shutting down"))).await;
                        return;
                    }
                    _ = tx.closed() => return,
                    message = live.recv() => message,
                };
                let status = match message {
                    Ok(WatchMessage::Change(change)) => {
                        if change.revision() <= last_sent {
                            continue;
                        }
                        last_sent = change.revision();
                        if tx.send(Ok(event_from_change(change))).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Ok(WatchMessage::Reset) => Status::aborted(
                        "this node installed a snapshot: list the servers and watch again",
                    ),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        Status::aborted("watcher fell behind: list the servers and watch again")
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        Status::unavailable("node is shutting down")
                    }
                };
                let _ = tx.send(Err(status)).await;
                return;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        self.cluster_summary().await.map(Response::new)
    }

    async fn server_status(
        &self,
        request: Request<pb::ServerStatusRequest>,
    ) -> Result<Response<pb::ServerStatusResponse>, Status> {
        let request = request.into_inner();
        validate_name(&request.name).map_err(|e| status_from_registry_error(&e))?;
        self.barrier_unless_stale(request.stale).await?;
        let applied = self.node.view().read();
        let registry = &applied.registry;
        let record = server_record(registry, &request.name)?;
        let plan = crate::scheduler::plan_registry(registry);
        Ok(Response::new(pb::ServerStatusResponse {
            server: Some(record_to_proto(record)),
            replicas: replicas_to_proto(registry, &plan, &request.name),
            revision: registry.revision,
            server_info: registry
                .catalogs
                .get(&request.name)
                .map(|catalog| catalog.server_info.clone())
                .unwrap_or_default(),
        }))
    }

    async fn fleet_status(
        &self,
        request: Request<pb::FleetStatusRequest>,
    ) -> Result<Response<pb::FleetStatusResponse>, Status> {
        let request = request.into_inner();
        self.barrier_unless_stale(request.stale).await?;
        let cluster = self.cluster_summary().await?;
        let applied = self.node.view().read();
        let registry = &applied.registry;
        let plan = crate::scheduler::plan_registry(registry);
        let page = page(
            &registry.servers,
            &request.page_token,
            request.page_size,
            |record| {
                let replicas = replicas_to_proto(registry, &plan, &record.spec.name);
                pb::FleetServer {
                    name: record.spec.name.clone(),
                    desired: record.spec.replicas,
                    placed: replicas.iter().filter(|r| r.node_id.is_some()).count() as u32,
                    healthy: replicas.iter().filter(|r| r.state == "healthy").count() as u32,
                    replicas,
                }
            },
        )?;
        Ok(Response::new(pb::FleetStatusResponse {
            cluster: Some(cluster),
            nodes: fleet_nodes_to_proto(registry),
            servers: page.items,
            next_page_token: page.next_token,
        }))
    }

    async fn set_node_status(
        &self,
        request: Request<pb::SetNodeStatusRequest>,
    ) -> Result<Response<pb::SetNodeStatusResponse>, Status> {
        let actor = actor_of(&request);
        let request = request.into_inner();
        // Operators set the admin state only; liveness belongs to the leader's heartbeat
        // check, so undraining a node that is down never makes it up.
        let admin = match request.status.as_str() {
            "draining" => AdminState::Draining,
            "up" | "active" => AdminState::Active,
            other => {
                return Err(Status::invalid_argument(format!(
                    "node status must be \"draining\" or \"active\", not {other:?}"
                )))
            }
        };
        let revision = self
            .commit(
                Command::SetNodeAdmin {
                    id: request.id,
                    admin,
                },
                actor,
            )
            .await?;
        Ok(Response::new(pb::SetNodeStatusResponse { revision }))
    }

    async fn add_node(
        &self,
        request: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::AddNodeResponse>, Status> {
        let request = request.into_inner();
        if request.id == 0 {
            return Err(Status::invalid_argument("node id must be at least 1"));
        }
        crate::config::validate_address(&request.addr)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let members = self
            .node
            .change_members(LeaderOp::AddNode {
                id: request.id,
                addr: request.addr,
            })
            .await
            .map_err(status_from_node_error)?;
        Ok(Response::new(pb::AddNodeResponse {
            members: members_to_proto(members),
        }))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let id = request.into_inner().id;
        let members = self
            .node
            .change_members(LeaderOp::RemoveNode { id })
            .await
            .map_err(status_from_node_error)?;
        Ok(Response::new(pb::RemoveNodeResponse {
            members: members_to_proto(members),
        }))
    }

    async fn list_tools(
        &self,
        request: Request<pb::ListToolsRequest>,
    ) -> Result<Response<pb::ListToolsResponse>, Status> {
        let principal = request.extensions().get::<Principal>().cloned();
        let wanted = request.into_inner().server;
        if !wanted.is_empty() {
            let state = self.node.view().read();
            server_record(&state.registry, &wanted)?;
        }
        let aggregate = self.gateway.offered();
        let tools = aggregate
            .tools
            .iter()
            .filter(|t| wanted.is_empty() || t.server == wanted)
            .filter(|t| principal.as_ref().is_none_or(|p| p.sees(&t.server, &t.own)))
            .map(|t| pb::Tool {
                name: t.listed.name.to_string(),
                server: t.server.clone(),
                tool: t.own.clone(),
                description: t
                    .listed
                    .description
                    .as_deref()
                    .unwrap_or_default()
                    .to_string(),
                tool_json: serde_json::to_string(&t.listed).unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::ListToolsResponse { tools }))
    }

    async fn call_tool(
        &self,
        request: Request<pb::CallToolRequest>,
    ) -> Result<Response<pb::CallToolResponse>, Status> {
        let principal = request.extensions().get::<Principal>().cloned();
        let request = request.into_inner();
        if let Some(principal) = principal {
            principal
                .check_call(&request.server, &request.tool)
                .map_err(|e| status_from_auth_error(&e))?;
        }
        let arguments = match request.arguments_json.trim() {
            "" => None,
            text => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(map)) => Some(map),
                Ok(_) => return Err(Status::invalid_argument("arguments must be a JSON object")),
                Err(e) => return Err(Status::invalid_argument(format!("arguments: {e}"))),
            },
        };
        if request.timeout_ms > MAX_CALL_TIMEOUT_MS {
            return Err(Status::invalid_argument(format!(
                "timeout_ms must be at most {MAX_CALL_TIMEOUT_MS}"
            )));
        }
        let mut params = rmcp::model::CallToolRequestParams::new(request.tool);
        params.arguments = arguments;
        let timeout =
            (request.timeout_ms > 0).then(|| std::time::Duration::from_millis(request.timeout_ms));
        let response = self
            .gateway
            .call(&request.server, params, timeout)
            .await
            .map_err(status_from_call_error)?;
        let result = match response {
            rmcp::model::CallToolResponse::Complete(result) => result,
            _ => {
                return Err(Status::failed_precondition(
                    "the tool asks the client for input, which this API cannot give: use /mcp",
                ))
            }
        };
        let result_json =
            serde_json::to_string(&result).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::CallToolResponse { result_json }))
    }

    async fn bootstrap_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        self.create_token(request, true).await
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        ClientApi::create_token(self, request, false).await
    }

    async fn list_tokens(
        &self,
        _request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.barrier_unless_stale(false).await?;
        let applied = self.node.view().read();
        Ok(Response::new(pb::ListTokensResponse {
            tokens: applied
                .registry
                .tokens
                .values()
                .map(token_to_proto)
                .collect(),
            revision: applied.registry.revision,
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let actor = actor_of(&request);
        let command = Command::RevokeToken {
            id: request.into_inner().id,
        };
        command
            .check()
            .map_err(|e| status_from_registry_error(&e))?;
        let revision = self.commit(command, actor).await?;
        Ok(Response::new(pb::RevokeTokenResponse { revision }))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let since = request.into_inner().since_revision;
        self.barrier_unless_stale(false).await?;
        let applied = self.node.view().read();
        let entries = applied
            .registry
            .audit
            .iter()
            .filter(|e| e.revision > since)
            .map(|e| pb::AuditEntry {
                revision: e.revision,
                stamp_ms: e.stamp_ms,
                actor: e.actor.clone(),
                action: e.action.clone(),
                target: e.target.clone(),
            })
            .collect();
        Ok(Response::new(pb::ListAuditResponse {
            entries,
            revision: applied.registry.revision,
            oldest_revision: applied.registry.audit.front().map_or(0, |e| e.revision),
        }))
    }
}

/// Who sent `request`, as the audit log names it: the token's id, else the common
/// name of the client's certificate, else "anonymous".
fn actor_of<T>(request: &Request<T>) -> String {
    if let Some(principal) = request.extensions().get::<Principal>() {
        return format!("token {} ({})", principal.token_id, principal.role.name());
    }
    // The node's connections carry no connect info of their own (`env::network`),
    // so tonic files the TLS session's under `()`.
    request
        .extensions()
        .get::<tonic::transport::server::TlsConnectInfo<()>>()
        .and_then(|info| info.peer_certs())
        .or_else(|| request.peer_certs())
        .and_then(|certs| {
            certs
                .first()
                .and_then(|der| crate::env::tls::common_name(der))
        })
        .map_or_else(|| "anonymous".to_string(), |name| format!("cert {name}"))
}
