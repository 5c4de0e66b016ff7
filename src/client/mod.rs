//! The Rust client of a cluster: the CLI's client commands and the Python package
//! (python/) both talk to the nodes through it.
//!
//! A [`Client`] holds a list of endpoints and talks to one at a time. When the one it
//! uses cannot be reached, or answers UNAVAILABLE, the next request goes to the leader
//! the node named, if any, and then to the other endpoints in turn. A read is sent
//! again to the next endpoint at once (it changes nothing); a write is not, because it
//! may have been applied before its answer was lost: the caller decides whether to
//! send it again (with `expected_revision`, a repeated write is refused rather than
//! applied twice).

pub mod json;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tonic::transport::Channel;

use crate::api::convert::spec_to_proto;
use crate::env::network::endpoint_with;
use crate::env::tls::Tls;
use crate::proto::v1 as pb;
use crate::proto::v1::registry_client::RegistryClient;
use crate::registry::{CircuitBreaker, HealthCheck, RestartPolicy, ServerSpec, Transport};
use tonic::service::interceptor::InterceptedService;

/// How long a request waits for its answer unless the caller says otherwise.
pub const DEFAULT_TIMEOUT_MS: u64 = 15_000;
/// Most endpoints one client takes.
pub const MAX_ENDPOINTS: usize = 64;
/// The metadata key in which a node names the leader it knows.
pub const LEADER_HINT_KEY: &str = "x-mcpfleet-leader";

/// What kind of failure an error is, for callers that act on it (the Python package
/// maps each to an exception class).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    /// A compare-and-set whose expected revision no longer holds.
    Conflict,
    InvalidArgument,
    /// No node could be reached, or the one reached has no leader to serve it: worth
    /// trying again.
    Unavailable,
    Timeout,
    PermissionDenied,
    /// Too large or too many (a size or count limit of the registry).
    ResourceExhausted,
    /// Anything else, such as a node's answer that does not make sense.
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("cannot reach {endpoints}: {reason}")]
    Unreachable { endpoints: String, reason: String },
    #[error("no answer from {endpoint} within {ms} ms")]
    Timeout { endpoint: String, ms: u64 },
    #[error("{}", describe_status(.0))]
    Status(tonic::Status),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("{0}")]
    BadAnswer(String),
}

impl ClientError {
    pub fn kind(&self) -> ErrorKind {
        use tonic::Code;
        match self {
            ClientError::Endpoint { .. } | ClientError::Invalid(_) => ErrorKind::InvalidArgument,
            ClientError::Unreachable { .. } => ErrorKind::Unavailable,
            ClientError::Timeout { .. } => ErrorKind::Timeout,
            ClientError::BadAnswer(_) => ErrorKind::Other,
            ClientError::Status(status) => match status.code() {
                Code::NotFound => ErrorKind::NotFound,
                Code::FailedPrecondition | Code::Aborted => ErrorKind::Conflict,
                Code::InvalidArgument | Code::OutOfRange => ErrorKind::InvalidArgument,
                Code::Unavailable => ErrorKind::Unavailable,
                Code::DeadlineExceeded => ErrorKind::Timeout,
                Code::PermissionDenied | Code::Unauthenticated => ErrorKind::PermissionDenied,
                Code::ResourceExhausted => ErrorKind::ResourceExhausted,
                _ => ErrorKind::Other,
            },
        }
    }

    /// The one-line reason: the node's own message for an answer it gave.
    pub fn reason(&self) -> String {
        match self {
            ClientError::Status(status) => status.message().replace('\n', " "),
            ClientError::Invalid(reason) => reason.clone(),
            other => other.to_string(),
        }
    }

    /// The leader's address, when the node that answered named one.
    pub fn leader_hint(&self) -> Option<String> {
        match self {
            ClientError::Status(status) => leader_hint(status),
            _ => None,
        }
    }
}

fn leader_hint(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_HINT_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

fn describe_status(status: &tonic::Status) -> String {
    let message = status.message().replace('\n', " ");
    let hint = leader_hint(status)
        .map(|v| format!(" (leader hint: {v})"))
        .unwrap_or_default();
    match status.code() {
        tonic::Code::NotFound => format!("not found: {message}"),
        tonic::Code::InvalidArgument => format!("invalid: {message}"),
        tonic::Code::FailedPrecondition => format!("rejected: {message}"),
        tonic::Code::Unavailable => format!("unavailable: {message}{hint}"),
        tonic::Code::OutOfRange => format!("out of range: {message}"),
        tonic::Code::ResourceExhausted => format!("too large or too many: {message}"),
        code => format!("{code:?}: {message}"),
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        ClientError::Status(status)
    }
}

/// Whether a request may be sent again to another node after a failure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// A read: it changes nothing, so another node may answer it.
    Read,
    /// A write: only the caller may decide to send it again.
    Write,
}

/// The connection in use: which endpoint, and its channel.
struct Current {
    addr: String,
    client: Api,
}

/// The client API over one connection, each request with the client's token.
type Api = RegistryClient<InterceptedService<Channel, Bearer>>;

/// Puts `Authorization: Bearer <token>` on every request, when the client has one.
#[derive(Clone)]
struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A client of one cluster. Cheap to share: requests on one client run concurrently
/// over one HTTP/2 connection.
pub struct Client {
    endpoints: Vec<String>,
    timeout: Duration,
    current: Mutex<Option<Current>>,
    /// The endpoint to try first when there is no connection: the leader a node
    /// named, or the one after the endpoint that last failed.
    preferred: Mutex<Option<String>>,
    /// Mutual TLS with the nodes, when set.
    tls: Option<Arc<Tls>>,
    /// The bearer token's header value, when set.
    bearer: Bearer,
}

impl Client {
    /// A client of the nodes at `endpoints` (HOST:PORT each). Nothing is connected
    /// until the first request.
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Result<Client, ClientError> {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(ClientError::Invalid("no endpoint given".into()));
        }
        if endpoints.len() > MAX_ENDPOINTS {
            return Err(ClientError::Invalid(format!(
                "{} endpoints given; at most {MAX_ENDPOINTS}",
                endpoints.len()
            )));
        }
        if timeout.is_zero() {
            return Err(ClientError::Invalid(
                "the timeout must be above zero".into(),
            ));
        }
        for endpoint in &endpoints {
            crate::env::network::endpoint(endpoint).map_err(|e| ClientError::Endpoint {
                endpoint: endpoint.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(Client {
            endpoints,
            timeout,
            current: Mutex::new(None),
            preferred: Mutex::new(None),
            tls: None,
            bearer: Bearer(None),
        })
    }

    /// The same client, sending `token` (`mcpf_...`) with every request, for nodes
    /// started with `--auth`.
    pub fn with_token(mut self, token: Option<&str>) -> Result<Client, ClientError> {
        self.bearer = Bearer(
            token
                .map(|token| {
                    crate::auth::parse_token(token.trim())
                        .map_err(|e| ClientError::Invalid(format!("the token: {e}")))?;
                    format!("Bearer {}", token.trim())
                        .parse()
                        .map_err(|_| ClientError::Invalid("the token is not ASCII".into()))
                })
                .transpose()?,
        );
        Ok(self)
    }

    /// The same client, over mutual TLS with `tls` (the nodes' certificates must name
    /// the hosts of the endpoints).
    pub fn with_tls(mut self, tls: Option<Arc<Tls>>) -> Client {
        self.tls = tls;
        self
    }

    /// A client of the nodes in `endpoints`, given as `A,B,C`.
    pub fn from_list(endpoints: &str, timeout: Duration) -> Result<Client, ClientError> {
        Client::new(endpoints.split(',').map(str::to_string).collect(), timeout)
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Connects now rather than at the first request.
    pub async fn ready(&self) -> Result<(), ClientError> {
        self.connection().await.map(|_| ())
    }

    /// The endpoints in the order to try them: the preferred one first.
    fn candidates(&self) -> Vec<String> {
        let preferred = self.preferred.lock().expect("poisoned").clone();
        let mut order = Vec::with_capacity(self.endpoints.len() + 1);
        let start = match &preferred {
            Some(p) => match self.endpoints.iter().position(|e| e == p) {
                Some(at) => at,
                None => {
                    order.push(p.clone());
                    0
                }
            },
            None => 0,
        };
        for i in 0..self.endpoints.len() {
            order.push(self.endpoints[(start + i) % self.endpoints.len()].clone());
        }
        order
    }

    /// The connection in use, or a new one to the first endpoint that answers.
    async fn connection(&self) -> Result<(String, Api), ClientError> {
        if let Some(current) = self.current.lock().expect("poisoned").as_ref() {
            return Ok((current.addr.clone(), current.client.clone()));
        }
        let mut reasons = Vec::new();
        for addr in self.candidates() {
            let endpoint =
                endpoint_with(&addr, self.tls.as_deref()).map_err(|e| ClientError::Endpoint {
                    endpoint: addr.clone(),
                    reason: e.to_string(),
                })?;
            // Connecting is bounded by the network's connect timeout, and by ours. Each
            // request has its own limit (`request`), so the channel has none.
            match tokio::time::timeout(self.timeout, endpoint.connect()).await {
                Ok(Ok(channel)) => {
                    let client = RegistryClient::with_interceptor(channel, self.bearer.clone());
                    *self.current.lock().expect("poisoned") = Some(Current {
                        addr: addr.clone(),
                        client: client.clone(),
                    });
                    return Ok((addr, client));
                }
                Ok(Err(error)) => reasons.push(crate::env::error_chain(&error)),
                Err(_) => reasons.push(format!("no connection within {:?}", self.timeout)),
            }
        }
        // Every candidate failed; say the first reason (they are usually the same).
        Err(ClientError::Unreachable {
            endpoints: self.endpoints.join(", "),
            reason: reasons.into_iter().next().unwrap_or_default(),
        })
    }

    /// Forgets the connection to `addr` after it failed; the next request tries the
    /// leader it named, or else the endpoint after it.
    fn failed(&self, addr: &str, hint: Option<String>) {
        let mut current = self.current.lock().expect("poisoned");
        if current.as_ref().is_some_and(|c| c.addr == addr) {
            *current = None;
        }
        let next = hint.filter(|h| h != addr).or_else(|| {
            let at = self.endpoints.iter().position(|e| e == addr)?;
            Some(self.endpoints[(at + 1) % self.endpoints.len()].clone())
        });
        *self.preferred.lock().expect("poisoned") = next;
    }

    /// Sends one request, within `limit`, following the cluster's answers as the
    /// module's comment says.
    async fn request<T, F, Fut>(
        &self,
        retry: Retry,
        limit: Duration,
        send: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Api) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        // A read goes to each endpoint once at most, and to a leader named outside
        // the list once more.
        let mut attempts = match retry {
            Retry::Read => self.endpoints.len(),
            Retry::Write => 1,
        };
        let mut hinted = false;
        let mut tried = 0;
        loop {
            tried += 1;
            let (addr, client) = self.connection().await?;
            let error = match tokio::time::timeout(limit, send(client)).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                    let hint = leader_hint(&status);
                    if retry == Retry::Read && !hinted {
                        if let Some(hint) = &hint {
                            if !self.endpoints.contains(hint) {
                                hinted = true;
                                attempts += 1;
                            }
                        }
                    }
                    self.failed(&addr, hint);
                    ClientError::Status(status)
                }
                // The connection failed under the request (closed, reset, a TLS
                // handshake refused): as unreachable as a node that is down.
                // (Only such a failure has a source: a node's own answers come as
                // headers.)
                Ok(Err(status)) if std::error::Error::source(&status).is_some() => {
                    self.failed(&addr, None);
                    let mut reason = std::error::Error::source(&status)
                        .map(crate::env::error_chain)
                        .unwrap_or_default();
                    // What a TLS port does to a plaintext client: it answers the
                    // HTTP/2 preface with a TLS alert and closes.
                    let like_tls = ["broken pipe", "protocol error", "http2 error"]
                        .iter()
                        .any(|sign| reason.contains(sign));
                    if self.tls.is_none() && like_tls {
                        reason.push_str(
                            " (a node with TLS on closes plaintext connections: give the \
                             client the cluster's CA, a certificate and its key)",
                        );
                    }
                    ClientError::Unreachable {
                        endpoints: addr,
                        reason,
                    }
                }
                Ok(Err(status)) => return Err(ClientError::Status(status)),
                Err(_) => {
                    // A node that stops answering (paused, overloaded) is left too.
                    self.failed(&addr, None);
                    ClientError::Timeout {
                        endpoint: addr,
                        ms: limit.as_millis() as u64,
                    }
                }
            };
            if tried >= attempts {
                return Err(error);
            }
        }
    }

    pub async fn put_server(
        &self,
        spec: pb::ServerSpec,
        expected_revision: Option<u64>,
    ) -> Result<pb::PutServerResponse, ClientError> {
        let request = pb::PutServerRequest {
            spec: Some(spec),
            expected_revision,
        };
        self.request(Retry::Write, self.timeout, |mut c| {
            let request = request.clone();
            async move { c.put_server(request).await }
        })
        .await
    }

    /// Writes every server of `puts`, or none of them.
    pub async fn put_servers(
        &self,
        puts: Vec<pb::PutServerRequest>,
    ) -> Result<pb::PutServersResponse, ClientError> {
        let request = pb::PutServersRequest { puts };
        self.request(Retry::Write, self.timeout, |mut c| {
            let request = request.clone();
            async move { c.put_servers(request).await }
        })
        .await
    }

    pub async fn get_server(&self, name: &str, stale: bool) -> Result<pb::Server, ClientError> {
        let request = pb::GetServerRequest {
            name: name.to_string(),
            stale,
        };
        let response = self
            .request(Retry::Read, self.timeout, |mut c| {
                let request = request.clone();
                async move { c.get_server(request).await }
            })
            .await?;
        response
            .server
            .ok_or_else(|| ClientError::BadAnswer("the node's answer holds no server".into()))
    }

    /// Every server, page after page, in name order.
    pub async fn list_servers(&self, stale: bool) -> Result<Vec<pb::Server>, ClientError> {
        let mut servers = Vec::new();
        let mut token = String::new();
        loop {
            let request = pb::ListServersRequest {
                stale,
                page_size: 0,
                page_token: token.clone(),
            };
            let page = self
                .request(Retry::Read, self.timeout, |mut c| {
                    let request = request.clone();
                    async move { c.list_servers(request).await }
                })
                .await?;
            servers.extend(page.servers);
            token = next_page(&token, page.next_page_token)?;
            if token.is_empty() {
                return Ok(servers);
            }
        }
    }

    /// Deletes a server; the answer is the revision of the delete.
    pub async fn delete_server(
        &self,
        name: &str,
        expected_revision: Option<u64>,
    ) -> Result<u64, ClientError> {
        let request = pb::DeleteServerRequest {
            name: name.to_string(),
            expected_revision,
        };
        let response = self
            .request(Retry::Write, self.timeout, |mut c| {
                let request = request.clone();
                async move { c.delete_server(request).await }
            })
            .await?;
        Ok(response.revision)
    }

    /// The changes to servers after `from_revision` (0: from now on), as they commit.
    pub async fn watch(&self, from_revision: u64) -> Result<Watch, ClientError> {
        let request = pb::WatchServersRequest { from_revision };
        let stream = self
            .request(Retry::Read, self.timeout, |mut c| async move {
                c.watch_servers(request).await
            })
            .await?;
        Ok(Watch { stream })
    }

    /// The answering node's view of the cluster.
    pub async fn cluster_status(&self) -> Result<pb::ClusterStatusResponse, ClientError> {
        self.request(Retry::Read, self.timeout, |mut c| async move {
            c.cluster_status(pb::ClusterStatusRequest {}).await
        })
        .await
    }

    pub async fn server_status(
        &self,
        name: &str,
        stale: bool,
    ) -> Result<pb::ServerStatusResponse, ClientError> {
        let request = pb::ServerStatusRequest {
            name: name.to_string(),
            stale,
        };
        self.request(Retry::Read, self.timeout, |mut c| {
            let request = request.clone();
            async move { c.server_status(request).await }
        })
        .await
    }

    /// The whole fleet: the cluster and nodes as of the first page, the servers of
    /// every page.
    pub async fn fleet_status(&self, stale: bool) -> Result<pb::FleetStatusResponse, ClientError> {
        let mut fleet: Option<pb::FleetStatusResponse> = None;
        let mut token = String::new();
        loop {
            let request = pb::FleetStatusRequest {
                stale,
                page_size: 0,
                page_token: token.clone(),
            };
            let mut page = self
                .request(Retry::Read, self.timeout, |mut c| {
                    let request = request.clone();
                    async move { c.fleet_status(request).await }
                })
                .await?;
            let next = next_page(&token, std::mem::take(&mut page.next_page_token))?;
            match fleet.as_mut() {
                None => fleet = Some(page),
                Some(fleet) => fleet.servers.extend(page.servers),
            }
            token = next;
            if token.is_empty() {
                return Ok(fleet.expect("one page at least"));
            }
        }
    }

    /// Sets a node's admin state ("draining" or "active"); the answer is the revision.
    pub async fn set_node_status(&self, id: u64, status: &str) -> Result<u64, ClientError> {
        let request = pb::SetNodeStatusRequest {
            id,
            status: status.to_string(),
        };
        let response = self
            .request(Retry::Write, self.timeout, |mut c| {
                let request = request.clone();
                async move { c.set_node_status(request).await }
            })
            .await?;
        Ok(response.revision)
    }

    pub async fn add_node(&self, id: u64, addr: &str) -> Result<Vec<pb::Member>, ClientError> {
        let request = pb::AddNodeRequest {
            id,
            addr: addr.to_string(),
        };
        let response = self
            .request(Retry::Write, self.timeout, |mut c| {
                let request = request.clone();
                async move { c.add_node(request).await }
            })
            .await?;
        Ok(response.members)
    }

    pub async fn remove_node(&self, id: u64) -> Result<Vec<pb::Member>, ClientError> {
        let response = self
            .request(Retry::Write, self.timeout, |mut c| async move {
                c.remove_node(pb::RemoveNodeRequest { id }).await
            })
            .await?;
        Ok(response.members)
    }

    /// The tools of every server, or of one.
    pub async fn list_tools(&self, server: Option<&str>) -> Result<Vec<pb::Tool>, ClientError> {
        let request = pb::ListToolsRequest {
            server: server.unwrap_or_default().to_string(),
        };
        let response = self
            .request(Retry::Read, self.timeout, |mut c| {
                let request = request.clone();
                async move { c.list_tools(request).await }
            })
            .await?;
        Ok(response.tools)
    }

    /// Calls a tool; the answer is the MCP `CallToolResult` as JSON. `timeout_ms` 0
    /// is the node's default. A call is never sent twice: the fleet routes it to a
    /// replica and runs it at most once.
    pub async fn call_tool(
        &self,
        server: &str,
        tool: &str,
        arguments_json: &str,
        timeout_ms: u64,
    ) -> Result<String, ClientError> {
        let limit = match timeout_ms {
            0 => crate::gateway::DEFAULT_CALL_TIMEOUT_MS,
            ms => ms,
        };
        let request = pb::CallToolRequest {
            server: server.to_string(),
            tool: tool.to_string(),
            arguments_json: arguments_json.to_string(),
            timeout_ms,
        };
        // The node's own limit, and the client's on top for the way there and back.
        let wait = Duration::from_millis(limit) + self.timeout;
        let response = self
            .request(Retry::Write, wait, |mut c| {
                let request = request.clone();
                async move { c.call_tool(request).await }
            })
            .await?;
        Ok(response.result_json)
    }

    /// Records a new token (`first`: the cluster's first, which needs no token).
    pub async fn create_token(
        &self,
        token: pb::Token,
        secret_sha256: String,
        first: bool,
    ) -> Result<u64, ClientError> {
        let request = pb::CreateTokenRequest {
            token: Some(token),
            secret_sha256,
        };
        let response = self
            .request(Retry::Write, self.timeout, |mut c| {
                let request = request.clone();
                async move {
                    if first {
                        c.bootstrap_token(request).await
                    } else {
                        c.create_token(request).await
                    }
                }
            })
            .await?;
        Ok(response.revision)
    }

    pub async fn list_tokens(&self) -> Result<Vec<pb::Token>, ClientError> {
        let response = self
            .request(Retry::Read, self.timeout, |mut c| async move {
                c.list_tokens(pb::ListTokensRequest {}).await
            })
            .await?;
        Ok(response.tokens)
    }

    pub async fn revoke_token(&self, id: &str) -> Result<u64, ClientError> {
        let request = pb::RevokeTokenRequest { id: id.to_string() };
        let response = self
            .request(Retry::Write, self.timeout, |mut c| {
                let request = request.clone();
                async move { c.revoke_token(request).await }
            })
            .await?;
        Ok(response.revision)
    }

    /// The audit log's entries after `since_revision`.
    pub async fn list_audit(
        &self,
        since_revision: u64,
    ) -> Result<pb::ListAuditResponse, ClientError> {
        self.request(Retry::Read, self.timeout, |mut c| async move {
            c.list_audit(pb::ListAuditRequest { since_revision }).await
        })
        .await
    }

    /// A copy of the registry, in chunks (`mcpfleet snapshot save`).
    pub async fn save_snapshot(
        &self,
        stale: bool,
    ) -> Result<tonic::Streaming<pb::SnapshotChunk>, ClientError> {
        self.request(Retry::Read, self.timeout, |mut c| async move {
            c.save_snapshot(pb::SaveSnapshotRequest { stale }).await
        })
        .await
    }
}

/// The changes to servers, as they commit.
pub struct Watch {
    stream: tonic::Streaming<pb::WatchEvent>,
}

impl Watch {
    /// The next change; `None` when the node ends the stream.
    pub async fn next(&mut self) -> Result<Option<pb::WatchEvent>, ClientError> {
        Ok(self.stream.message().await?)
    }
}

/// The token of the page after the one fetched with `token`: names only grow, so a
/// node that answers otherwise would have the listing loop forever.
fn next_page(token: &str, next: String) -> Result<String, ClientError> {
    if !next.is_empty() && next.as_str() <= token {
        return Err(ClientError::BadAnswer(format!(
            "the node answered page {token:?} with next page {next:?}, which does not follow it"
        )));
    }
    Ok(next)
}

/// A server's spec as a caller writes it (JSON): the shape `server get -o json`
/// prints, in which everything but the name and transport may be left out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecInput {
    pub name: String,
    pub transport: TransportInput,
    #[serde(default)]
    pub replicas: Option<u32>,
    #[serde(default)]
    pub node_tags: Vec<String>,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default)]
    pub restart: Option<RestartPolicy>,
    #[serde(default)]
    pub max_concurrent_calls: Option<u32>,
    /// Read back from `server get` and ignored, so that its output can be written.
    #[serde(default)]
    pub create_revision: Option<u64>,
    #[serde(default)]
    pub mod_revision: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TransportInput {
    Stdio {
        command: String,
        #[serde(default)]
        args: Vec<String>,
        #[serde(default)]
        env: std::collections::BTreeMap<String, String>,
        #[serde(default)]
        cwd: Option<String>,
        /// Values the node seals before it stores them (`crate::secrets`).
        #[serde(default)]
        secret_env: std::collections::BTreeMap<String, String>,
    },
    Http {
        url: String,
        #[serde(default)]
        headers: std::collections::BTreeMap<String, String>,
        #[serde(default)]
        secret_headers: std::collections::BTreeMap<String, String>,
    },
}

impl SpecInput {
    /// Reads a spec from JSON text; the error names the field at fault.
    pub fn from_json(text: &str) -> Result<SpecInput, ClientError> {
        let mut reader = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut reader).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            ClientError::Invalid(if path == "." {
                format!("spec: {inner}")
            } else {
                format!("spec.{path}: {inner}")
            })
        })
    }

    /// The spec with defaults filled in, as the wire carries it. The node checks it.
    pub fn into_proto(self) -> pb::ServerSpec {
        let (transport, secrets) = match self.transport {
            TransportInput::Stdio {
                command,
                args,
                env,
                cwd,
                secret_env,
            } => (
                Transport::Stdio {
                    command,
                    args,
                    env,
                    cwd,
                },
                secret_env,
            ),
            TransportInput::Http {
                url,
                headers,
                secret_headers,
            } => (Transport::Http { url, headers }, secret_headers),
        };
        let mut spec = spec_to_proto(&ServerSpec {
            name: self.name,
            transport,
            replicas: self.replicas.unwrap_or(1),
            node_tags: self.node_tags,
            health_check: self.health_check.unwrap_or_default(),
            circuit_breaker: self.circuit_breaker.unwrap_or_default(),
            restart: self.restart.unwrap_or_default(),
            max_concurrent_calls: self
                .max_concurrent_calls
                .unwrap_or(crate::registry::DEFAULT_MAX_CONCURRENT_CALLS),
        });
        match &mut spec.transport {
            Some(pb::server_spec::Transport::Stdio(stdio)) => {
                stdio.secret_env = secrets.into_iter().collect()
            }
            Some(pb::server_spec::Transport::Http(http)) => {
                http.secret_headers = secrets.into_iter().collect()
            }
            None => {}
        }
        spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_needs_good_endpoints() {
        let second = Duration::from_secs(1);
        assert!(matches!(
            Client::new(vec![], second),
            Err(ClientError::Invalid(_))
        ));
        assert!(matches!(
            Client::from_list(" , ", second),
            Err(ClientError::Invalid(_))
        ));
        assert!(matches!(
            Client::from_list("127.0.0.1:7700", Duration::ZERO),
            Err(ClientError::Invalid(_))
        ));
        let error = Client::from_list("127.0.0.1:7700,not a host", second).err();
        assert!(
            matches!(&error, Some(ClientError::Endpoint { endpoint, .. }) if endpoint == "not a host"),
            "{error:?}"
        );
        let client = Client::from_list("127.0.0.1:7700, 127.0.0.1:7701", second).unwrap();
        assert_eq!(client.endpoints(), ["127.0.0.1:7700", "127.0.0.1:7701"]);
    }

    #[test]
    fn after_a_failure_the_named_leader_then_the_next_endpoint_go_first() {
        let client = Client::from_list("a:1,b:2,c:3", Duration::from_secs(1)).unwrap();
        assert_eq!(client.candidates(), ["a:1", "b:2", "c:3"]);
        client.failed("b:2", None);
        assert_eq!(client.candidates(), ["c:3", "a:1", "b:2"]);
        client.failed("c:3", Some("b:2".into()));
        assert_eq!(client.candidates(), ["b:2", "c:3", "a:1"]);
        // A leader outside the list is tried first, then the list.
        client.failed("b:2", Some("d:4".into()));
        assert_eq!(client.candidates(), ["d:4", "a:1", "b:2", "c:3"]);
    }

    #[test]
    fn status_codes_become_kinds() {
        use tonic::{Code, Status};
        let kind = |code| ClientError::Status(Status::new(code, "x")).kind();
        assert_eq!(kind(Code::NotFound), ErrorKind::NotFound);
        assert_eq!(kind(Code::FailedPrecondition), ErrorKind::Conflict);
        assert_eq!(kind(Code::InvalidArgument), ErrorKind::InvalidArgument);
        assert_eq!(kind(Code::Unavailable), ErrorKind::Unavailable);
        assert_eq!(kind(Code::DeadlineExceeded), ErrorKind::Timeout);
        assert_eq!(kind(Code::PermissionDenied), ErrorKind::PermissionDenied);
        assert_eq!(kind(Code::Unauthenticated), ErrorKind::PermissionDenied);
        assert_eq!(kind(Code::Internal), ErrorKind::Other);
        let mut status = Status::unavailable("no leader\nyet");
        status
            .metadata_mut()
            .insert(LEADER_HINT_KEY, "127.0.0.1:7701".parse().unwrap());
        let error = ClientError::Status(status);
        assert_eq!(error.reason(), "no leader yet");
        assert_eq!(error.leader_hint().as_deref(), Some("127.0.0.1:7701"));
        assert_eq!(
            error.to_string(),
            "unavailable: no leader yet (leader hint: 127.0.0.1:7701)"
        );
    }

    #[test]
    fn a_spec_input_takes_defaults_and_names_the_bad_field() {
        let spec = SpecInput::from_json(r#"{"name":"t","transport":{"stdio":{"command":"x"}}}"#)
            .unwrap()
            .into_proto();
        assert_eq!(spec.name, "t");
        assert_eq!(spec.replicas, 1);
        let error = SpecInput::from_json(r#"{"name":"t","transport":{"stdio":{"command":1}}}"#)
            .unwrap_err();
        assert!(
            error
                .reason()
                .starts_with("spec.transport.stdio.command: invalid type"),
            "{error}"
        );
        let error =
            SpecInput::from_json(r#"{"name":"t","transport":{"http":{"url":"u"}},"replica":2}"#)
                .unwrap_err();
        assert!(
            error.reason().contains("unknown field `replica`"),
            "{error}"
        );
    }
}
