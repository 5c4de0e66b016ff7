//! Talking MCP to one replica through rmcp: launch or connect (through the launcher
//! seam), the initialize handshake, ping, and listing what the server offers. It owns
//! the replica's connection and process and hands out its shared client (`peer`); it
//! knows nothing of the registry's assignments or of health policy.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use rmcp::model::{
    CancelledNotification, CancelledNotificationParam, ClientNotification, ClientRequest,
    ProgressNotificationParam, ProgressToken, ProtocolVersion, RequestId, RequestMetaObject,
    ServerResult,
};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, PeerRequestOptions, ServiceError};
use rmcp::service::{NotificationContext, Peer, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, RoleClient};
use tokio::sync::{mpsc, Notify};
use tokio_util::task::TaskTracker;

use crate::env::launcher::{Fence, Launched, McpIo, McpLauncher, ReplicaId, ServerProcess};
use crate::registry::{Catalog, Transport};

/// Most requests in flight on one HTTP upstream connection (rmcp's default is 16);
/// the replica's bulkhead bounds calls below it.
pub const MAX_HTTP_REQUESTS_IN_FLIGHT: usize = 128;

/// Progress notifications a route holds before it drops more (its caller is slow).
pub const PROGRESS_BUFFER: usize = 64;

/// Where the server's progress notifications go, by the progress token the fleet gave
/// each request (one per request, so that callers sharing the connection never see
/// one another's progress).
#[derive(Default)]
pub struct ProgressRoutes {
    routes: DashMap<String, mpsc::Sender<ProgressNotificationParam>>,
}

/// A registered route; dropping it removes the route.
pub struct ProgressRoute {
    routes: Arc<ProgressRoutes>,
    key: String,
}

impl Drop for ProgressRoute {
    fn drop(&mut self) {
        self.routes.routes.remove(&self.key);
    }
}

fn route_key(token: &ProgressToken) -> String {
    serde_json::to_string(token).unwrap_or_default()
}

impl ProgressRoutes {
    /// Sends progress on `token` to `sink` until the returned route is dropped.
    pub fn route(
        self: &Arc<Self>,
        token: &ProgressToken,
        sink: mpsc::Sender<ProgressNotificationParam>,
    ) -> ProgressRoute {
        let key = route_key(token);
        self.routes.insert(key.clone(), sink);
        ProgressRoute {
            routes: self.clone(),
            key,
        }
    }

    fn deliver(&self, params: ProgressNotificationParam) {
        if let Some(sink) = self.routes.get(&route_key(&params.progress_token)) {
            // A full route drops the notification: progress is advisory.
            let _ = sink.try_send(params);
        }
    }
}

/// Longest a cancellation notice for an abandoned request may take to send.
const CANCEL_SEND_MS: u64 = 1_000;

/// The replica's connection as its callers use it: many requests in flight at once on
/// one session.
#[derive(Clone)]
pub struct Upstream {
    peer: Peer<RoleClient>,
    progress: Arc<ProgressRoutes>,
    tasks: TaskTracker,
}

/// Tells the server a request was abandoned, unless disarmed first.
struct Abandoned<'a> {
    upstream: &'a Upstream,
    id: Option<RequestId>,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let peer = self.upstream.peer.clone();
        let notice = ClientNotification::CancelledNotification(CancelledNotification::new(
            CancelledNotificationParam::new(Some(id), Some("the caller gave up".to_string())),
        ));
        self.upstream.tasks.spawn(async move {
            let send = peer.send_notification(notice);
            let _ = tokio::time::timeout(Duration::from_millis(CANCEL_SEND_MS), send).await;
        });
    }
}

impl Upstream {
    /// Sends `request` and waits for its answer. `meta` goes into the request's
    /// `_meta` over what rmcp puts there. With `progress`, the server's progress
    /// notifications on it go there. Dropping the future before the answer sends the
    /// server `notifications/cancelled`.
    pub async fn send(
        &self,
        request: ClientRequest,
        meta: Option<RequestMetaObject>,
        progress: Option<mpsc::Sender<ProgressNotificationParam>>,
    ) -> Result<ServerResult, ServiceError> {
        let mut options = PeerRequestOptions::no_options();
        options.meta = meta;
        let handle = self.peer.send_request_with_option(request, options).await?;
        // rmcp gives every request a progress token of its own, known once the request
        // is queued; a notification back before the route is in place (it takes a
        // round trip through the server) would be missed. Progress is advisory.
        let _route = progress.map(|sink| self.progress.route(&handle.progress_token, sink));
        let mut abandoned = Abandoned {
            upstream: self,
            id: Some(handle.id.clone()),
        };
        let answer = handle.await_response().await;
        abandoned.id = None;
        answer
    }
}

/// The client side of a replica's connection: it listens for the server's
/// list-changed notifications, so that the catalog is reported again, and passes its
/// progress notifications to the callers that asked for them.
#[derive(Clone, Default)]
pub struct Listener {
    lists_changed: Arc<Notify>,
    progress: Arc<ProgressRoutes>,
}

impl ClientHandler for Listener {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.lists_changed.notify_one();
    }
    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.lists_changed.notify_one();
    }
    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.lists_changed.notify_one();
    }
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.deliver(params);
    }
}

/// How long a failed handshake waits for the process's exit, which explains it better.
const EXIT_WAIT_MS: u64 = 500;

#[derive(Debug, Clone, thiserror::Error)]
pub enum McpError {
    #[error("{0}")]
    Launch(String),
    #[error("initialize failed: {0}")]
    Initialize(String),
    #[error("no answer to initialize within {0} ms")]
    InitializeTimeout(u64),
    #[error("invalid header {0:?}")]
    Header(String),
    #[error("listing what the server offers failed: {0}")]
    Catalog(String),
    #[error("ping failed: {0}")]
    Ping(String),
    #[error("no answer to ping within {0} ms")]
    PingTimeout(u64),
    /// The server's process ended (how, and its last stderr lines).
    #[error("{0}")]
    Exited(String),
}

/// How a connection starts: `server/discover` first (protocol 2026-07-28, no
/// session), and the `initialize` handshake of 2025-11-25 and older when the server
/// answers discover with an error (or not within rmcp's 10 s).
fn lifecycle() -> ClientLifecycleMode {
    ClientLifecycleMode::Auto {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        legacy_version: Some(ProtocolVersion::LATEST_WITH_INITIALIZE),
    }
}

/// A connected, initialized MCP server.
pub struct Connection {
    client: RunningService<RoleClient, Listener>,
    listener: Listener,
    process: Option<Box<dyn ServerProcess>>,
    /// The server's name and version, and the protocol version negotiated with it.
    pub server_info: String,
}

impl Connection {
    /// Starts (or reaches) the server and performs the initialize handshake within
    /// `timeout`. On failure nothing is left running.
    pub async fn open(
        launcher: &dyn McpLauncher,
        replica: &ReplicaId,
        transport: &Transport,
        timeout: Duration,
        fence: Fence,
    ) -> Result<Connection, McpError> {
        let Launched { io, mut process } = launcher
            .launch(replica, transport, fence)
            .await
            .map_err(|e| McpError::Launch(e.to_string()))?;
        let listener = Listener::default();
        let handshake = async {
            match io {
                McpIo::Streams { reader, writer } => listener
                    .clone()
                    .serve_with_lifecycle((reader, writer), lifecycle())
                    .await
                    .map_err(|e| McpError::Initialize(e.to_string())),
                McpIo::Http { url, headers } => {
                    let mut config = StreamableHttpClientTransportConfig::with_uri(url.clone())
                        .max_concurrent_requests(MAX_HTTP_REQUESTS_IN_FLIGHT);
                    for (name, value) in headers {
                        let bad = || McpError::Header(name.clone());
                        let header_name =
                            http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
                        let header_value =
                            http::HeaderValue::from_str(&value).map_err(|_| bad())?;
                        config.custom_headers.insert(header_name, header_value);
                    }
                    let transport = StreamableHttpClientTransport::with_client(
                        reqwest::Client::builder()
                            .connect_timeout(timeout)
                            .build()
                            .map_err(|e| McpError::Initialize(e.to_string()))?,
                        config,
                    );
                    listener
                        .clone()
                        .serve_with_lifecycle(transport, lifecycle())
                        .await
                        .map_err(|e| McpError::Initialize(format!("{url}: {}", root_cause(&e))))
                }
            }
        };
        // A process that dies during the handshake explains the failure better than
        // the closed pipe the handshake sees.
        let outcome = match process.as_mut() {
            Some(child) => {
                tokio::select! {
                    result = tokio::time::timeout(timeout, handshake) => result,
                    exit = child.exited() => Ok(Err(McpError::Initialize(exit))),
                }
            }
            None => tokio::time::timeout(timeout, handshake).await,
        };
        let client = match outcome {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => {
                // The handshake often sees the closed pipe before the exit is reaped.
                let exit = match process.as_mut() {
                    Some(child) => {
                        tokio::time::timeout(Duration::from_millis(EXIT_WAIT_MS), child.exited())
                            .await
                            .ok()
                    }
                    None => None,
                };
                stop_process(&mut process, Duration::ZERO).await;
                return Err(exit.map_or(error, McpError::Initialize));
            }
            Err(_) => {
                stop_process(&mut process, Duration::ZERO).await;
                return Err(McpError::InitializeTimeout(timeout.as_millis() as u64));
            }
        };
        let server_info = client
            .peer_info()
            .map(|peer| {
                let protocol = &peer.protocol_version;
                match &peer.server_info {
                    Some(info) => format!("{} {} (protocol {protocol})", info.name, info.version),
                    None => format!("(protocol {protocol})"),
                }
            })
            .unwrap_or_default();
        Ok(Connection {
            client,
            listener,
            process,
            server_info,
        })
    }

    /// The shared client: every tool call to this replica goes through a clone.
    pub fn peer(&self) -> Peer<RoleClient> {
        self.client.peer().clone()
    }

    /// The shared client for callers: requests multiplexed on this connection, with
    /// progress routed to whoever asked, and cancellation sent from `tasks`.
    pub fn upstream(&self, tasks: TaskTracker) -> Upstream {
        Upstream {
            peer: self.peer(),
            progress: self.listener.progress.clone(),
            tasks,
        }
    }

    /// Notified when the server says one of its lists changed.
    pub fn lists_changed(&self) -> Arc<Notify> {
        self.listener.lists_changed.clone()
    }

    /// Lists what the server offers (the lists its capabilities announce), within
    /// `timeout`.
    pub fn catalog(
        &self,
        transport_revision: u64,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Catalog, McpError>> + Send + 'static {
        let peer = self.peer();
        let server_info = self.server_info.clone();
        async move {
            let capabilities = peer
                .peer_info()
                .map(|info| info.capabilities.clone())
                .unwrap_or_default();
            let failed = |e: rmcp::service::ServiceError| McpError::Catalog(e.to_string());
            let json = |value: serde_json::Result<String>| {
                value.map_err(|e| McpError::Catalog(e.to_string()))
            };
            let list = async {
                let tools = match capabilities.tools {
                    Some(_) => json(serde_json::to_string(
                        &peer.list_all_tools().await.map_err(failed)?,
                    ))?,
                    None => "[]".to_string(),
                };
                let prompts = match capabilities.prompts {
                    Some(_) => json(serde_json::to_string(
                        &peer.list_all_prompts().await.map_err(failed)?,
                    ))?,
                    None => "[]".to_string(),
                };
                let resources = match capabilities.resources {
                    Some(_) => json(serde_json::to_string(
                        &peer.list_all_resources().await.map_err(failed)?,
                    ))?,
                    None => "[]".to_string(),
                };
                Ok(Catalog {
                    transport_revision,
                    server_info,
                    tools,
                    prompts,
                    resources,
                })
            };
            tokio::time::timeout(timeout, list).await.map_err(|_| {
                McpError::Catalog(format!("no answer within {} ms", timeout.as_millis()))
            })?
        }
    }

    /// One MCP ping; returns its round trip. A process that exits meanwhile ends it
    /// with `Exited`. Protocol 2026-07-28 has no ping: a server on it gets the cheap,
    /// stateless `server/discover` instead.
    pub async fn ping(&mut self, timeout: Duration) -> Result<Duration, McpError> {
        let started = tokio::time::Instant::now();
        let modern = self
            .client
            .peer_info()
            .is_some_and(|peer| peer.protocol_version >= ProtocolVersion::V_2026_07_28);
        let request = if modern {
            ClientRequest::DiscoverRequest(Default::default())
        } else {
            ClientRequest::PingRequest(Default::default())
        };
        let ping = tokio::time::timeout(timeout, self.client.send_request(request));
        let answer = match self.process.as_mut() {
            Some(process) => tokio::select! {
                answer = ping => answer,
                exit = process.exited() => return Err(McpError::Exited(exit)),
            },
            None => ping.await,
        };
        match answer {
            Ok(Ok(_)) => Ok(started.elapsed()),
            Ok(Err(error)) => Err(McpError::Ping(error.to_string())),
            Err(_) => Err(McpError::PingTimeout(timeout.as_millis() as u64)),
        }
    }

    /// Resolves when the server's process exits (never for a server without one),
    /// with how it ended.
    pub async fn exited(&mut self) -> String {
        match self.process.as_mut() {
            Some(process) => process.exited().await,
            None => std::future::pending().await,
        }
    }

    /// Closes the session and stops the process group (SIGTERM, SIGKILL after `grace`).
    pub async fn close(mut self, grace: Duration) {
        let _ = tokio::time::timeout(grace, self.client.close()).await;
        stop_process(&mut self.process, grace).await;
    }
}

async fn stop_process(process: &mut Option<Box<dyn ServerProcess>>, grace: Duration) {
    if let Some(process) = process.as_mut() {
        process.stop(grace).await;
    }
}

/// The innermost error's message: for a refused connection, "Connection refused (os
/// error 111)" rather than every layer's wrapping.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}
