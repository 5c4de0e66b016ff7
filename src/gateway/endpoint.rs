//! The MCP endpoint every node serves: streamable HTTP at `/mcp` (rmcp's
//! `StreamableHttpService`), both protocol eras from one endpoint. A 2026-07-28 client
//! needs no session (rmcp serves it statelessly); a legacy session lives in the
//! registry (`sessions`), so any node carries it on.
//!
//! It offers the fleet's tools under the fleet's names (`catalog`, `names`) and routes
//! each call through `Calls`. With auth on, every request needs a token of at least the
//! caller role, and a caller sees and calls only the tools its patterns name.

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ErrorCode, GetPromptRequestParams, GetPromptResponse,
    Implementation, InitializeResult, ListPromptsResult, ListResourcesResult, ListToolsResult,
    PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse, ResultType,
    ServerCapabilities, ServerNotification,
};
use rmcp::model::{ProgressNotificationParam, RequestMetaObject, SubscriptionFilter};
use rmcp::service::{
    NotificationContext, RequestContext, SubscriptionContext, SubscriptionSendError,
};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::catalog::{self, Catalogs, Fingerprints};
use super::sessions::RegistrySessions;
use super::{CallError, Calls};
use crate::agent::{Answer, ReplicaCallError, Request};
use crate::auth::{AuthError, Authenticator, Principal};
use crate::config::HttpConfig;
use crate::env::network::{accept_limited, Connection, ConnectionLimit, MAX_CONNECTIONS};
use crate::registry::Role;

/// Largest request body the endpoint reads.
pub const MAX_REQUEST_BODY_BYTES: usize = 4 * 1024 * 1024;

/// How often the node looks for a change in what the fleet offers, to tell clients.
pub const OFFER_CHECK_MS: u64 = 200;
/// How long one change notification to a legacy session may wait to be sent; a
/// session that takes longer is not told of changes any more.
const NOTIFY_TIMEOUT_MS: u64 = 5_000;

/// The MCP server the endpoint runs for each session (or each stateless request).
#[derive(Clone)]
pub struct FleetServer {
    calls: Arc<Calls>,
    catalogs: Arc<Catalogs>,
    call_timeout: Duration,
    /// The fingerprints of what the fleet offers, as last seen (`publish_changes`).
    offers: Arc<watch::Sender<Fingerprints>>,
    /// The tasks that tell legacy sessions of changes; the node joins them.
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl FleetServer {
    pub fn new(
        calls: Arc<Calls>,
        catalogs: Arc<Catalogs>,
        call_timeout: Duration,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> FleetServer {
        FleetServer {
            calls,
            catalogs,
            call_timeout,
            offers: Arc::new(watch::Sender::new(Fingerprints::default())),
            tasks,
            shutdown,
        }
    }

    /// Looks every `OFFER_CHECK_MS` for a change in the fleet's lists (a server added,
    /// removed or changed, its last healthy replica gone or back), and tells the
    /// listening clients, until the node shuts down.
    pub async fn publish_changes(self) {
        let mut tick = tokio::time::interval(Duration::from_millis(OFFER_CHECK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => return,
            }
            let fingerprints = self.offered().fingerprints;
            self.offers.send_if_modified(|seen| {
                let changed = *seen != fingerprints;
                *seen = fingerprints;
                changed
            });
        }
    }

    /// Waits for the next change of what the fleet offers and returns which lists
    /// changed since `seen` (which it updates); `None` at shutdown.
    async fn next_change(
        &self,
        changes: &mut watch::Receiver<Fingerprints>,
        seen: &mut Fingerprints,
    ) -> Option<Vec<ServerNotification>> {
        tokio::select! {
            changed = changes.changed() => changed.ok()?,
            _ = self.shutdown.cancelled() => return None,
        }
        let now = *changes.borrow_and_update();
        let mut notifications = Vec::new();
        if now.tools != seen.tools {
            notifications.push(ServerNotification::ToolListChangedNotification(
                Default::default(),
            ));
        }
        if now.prompts != seen.prompts {
            notifications.push(ServerNotification::PromptListChangedNotification(
                Default::default(),
            ));
        }
        if now.resources != seen.resources {
            notifications.push(ServerNotification::ResourceListChangedNotification(
                Default::default(),
            ));
        }
        *seen = now;
        Some(notifications)
    }

    /// What the fleet offers now, and a receiver of its changes from here on.
    fn watch_changes(&self) -> (watch::Receiver<Fingerprints>, Fingerprints) {
        let mut changes = self.offers.subscribe();
        let seen = *changes.borrow_and_update();
        (changes, seen)
    }

    /// What the fleet offers now.
    pub fn offered(&self) -> Arc<catalog::Aggregate> {
        self.catalogs.current(self.calls.reader())
    }

    /// Sends `request` to a replica of `server` within the node's call timeout; the
    /// client's cancellation cancels it upstream. If the client asked for progress
    /// (a progress token), the server's progress notifications come back to it under
    /// its own token, before the answer.
    async fn relay(
        &self,
        server: &str,
        mut request: Request,
        context: &RequestContext<RoleServer>,
    ) -> Result<Answer, ErrorData> {
        let meta = request.meta_mut();
        let token = meta
            .as_ref()
            .and_then(|m| m.get_progress_token())
            .or_else(|| context.meta.get_progress_token());
        // The server sees what the client can do (the 2026-07-28 protocol carries it
        // in each request), so that it may ask the client for input.
        *meta = context.meta.client_capabilities().map(|capabilities| {
            let mut meta = RequestMetaObject::new();
            meta.set_client_capabilities(capabilities);
            meta
        });
        let (sink, mut progressed) = match &token {
            Some(_) => {
                let (sink, progressed) = mpsc::channel(crate::mcp::PROGRESS_BUFFER);
                (Some(sink), Some(progressed))
            }
            None => (None, None),
        };
        let call = self.calls.request(server, request, self.call_timeout, sink);
        tokio::pin!(call);
        let forward = |params: ProgressNotificationParam| {
            let peer = context.peer.clone();
            let token = token.clone();
            async move {
                let Some(progress_token) = token else { return };
                // A client that cannot take it misses this notification, not the call.
                let mut params = params;
                params.progress_token = progress_token;
                let send = peer.notify_progress(params);
                let _ = tokio::time::timeout(Duration::from_millis(PROGRESS_SEND_MS), send).await;
            }
        };
        let answer = loop {
            tokio::select! {
                answer = &mut call => break answer,
                Some(params) = async { progressed.as_mut()?.recv().await } => {
                    forward(params).await;
                }
                _ = context.ct.cancelled() => {
                    return Err(ErrorData::internal_error("cancelled", None));
                }
            }
        };
        if let Some(progressed) = progressed.as_mut() {
            while let Ok(params) = progressed.try_recv() {
                forward(params).await;
            }
        }
        answer.map_err(mcp_error)
    }

    /// Calls `params.name` (the server's own name) of `server`, within `timeout` or
    /// the node's default.
    pub async fn call(
        &self,
        server: &str,
        params: CallToolRequestParams,
        timeout: Option<Duration>,
    ) -> Result<CallToolResponse, CallError> {
        self.calls
            .call(server, params, timeout.unwrap_or(self.call_timeout))
            .await
    }
}

/// One page of `items`, from the request's cursor on, and the next page's cursor.
fn page_of<T: Clone>(
    items: &[catalog::Exposed<T>],
    request: &Option<PaginatedRequestParams>,
) -> Result<(Vec<T>, Option<String>), ErrorData> {
    let cursor = request.as_ref().and_then(|r| r.cursor.as_deref());
    catalog::page(items, cursor).map_err(|reason| ErrorData::invalid_params(reason, None))
}

/// The MCP error a failed call gives the client.
pub fn mcp_error(error: CallError) -> ErrorData {
    match error {
        CallError::UnknownTool(_)
        | CallError::UnknownServer(_)
        | CallError::Invalid(_)
        | CallError::Resume(_)
        | CallError::ReplicaGone { .. } => ErrorData::invalid_params(error.to_string(), None),
        CallError::Replica(ReplicaCallError::Mcp { code, message }) => {
            ErrorData::new(ErrorCode(code), message, None)
        }
        CallError::Replica(ReplicaCallError::Invalid(message)) => {
            ErrorData::invalid_params(message, None)
        }
        other => ErrorData::internal_error(other.to_string(), None),
    }
}

impl ServerHandler for FleetServer {
    fn get_info(&self) -> InitializeResult {
        InitializeResult::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_prompts()
                .enable_prompts_list_changed()
                .enable_resources()
                .enable_resources_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("mcpfleet", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "The tools and prompts of every MCP server in this mcpfleet cluster, named \
             server__name, and their resources.",
        )
    }

    /// 2026-07-28 clients: a `subscriptions/listen` stream may ask for list changes.
    fn accepted_subscription_filter(
        &self,
        _requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(
            SubscriptionFilter::builder()
                .tools_list_changed()
                .prompts_list_changed()
                .resources_list_changed()
                .build(),
        )
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let (mut changes, mut seen) = self.watch_changes();
        loop {
            let notifications = tokio::select! {
                changed = self.next_change(&mut changes, &mut seen) => match changed {
                    Some(notifications) => notifications,
                    None => return Ok(()),
                },
                _ = context.cancelled() => return Ok(()),
            };
            for notification in notifications {
                match context.sink().send(notification).await {
                    // A list the client did not ask for.
                    Ok(()) | Err(SubscriptionSendError::NotificationNotAccepted(_)) => {}
                    Err(_) => return Ok(()),
                }
            }
        }
    }

    /// Legacy sessions: changes go out as list-changed notifications, on the
    /// session's GET stream, from the node that holds it.
    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let server = self.clone();
        let peer = context.peer;
        let (mut changes, mut seen) = self.watch_changes();
        self.tasks.spawn(async move {
            while let Some(notifications) = server.next_change(&mut changes, &mut seen).await {
                for notification in notifications {
                    let limit = Duration::from_millis(NOTIFY_TIMEOUT_MS);
                    match tokio::time::timeout(limit, peer.send_notification(notification)).await {
                        Ok(Ok(())) => {}
                        // The session is gone, or it does not read what it is sent.
                        _ => return,
                    }
                }
            }
        });
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let aggregate = self.offered();
        let prompts = visible(&aggregate.prompts, &context, |p, e| p.may_use(&e.server));
        let (items, next) = page_of(&prompts, &request)?;
        let mut result = ListPromptsResult::with_all_items(items);
        result.next_cursor = next;
        Ok(result)
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let aggregate = self.offered();
        let Some(exposed) = aggregate
            .find_prompt(&request.name)
            .filter(|e| principal(&context).is_none_or(|p| p.may_use(&e.server)))
        else {
            return Err(ErrorData::invalid_params(
                format!("unknown prompt {:?}", request.name),
                None,
            ));
        };
        let mut params = request;
        params.name = exposed.own.clone();
        match self
            .relay(&exposed.server, Request::GetPrompt(params), &context)
            .await?
        {
            Answer::Prompt(GetPromptResponse::Complete(mut result)) => {
                result.result_type.get_or_insert(ResultType::COMPLETE);
                Ok(GetPromptResponse::Complete(result))
            }
            Answer::Prompt(other) => Ok(other),
            _ => Err(ErrorData::internal_error(
                "the answer was not a prompt",
                None,
            )),
        }
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let aggregate = self.offered();
        let resources = visible(&aggregate.resources, &context, |p, e| p.may_use(&e.server));
        let (items, next) = page_of(&resources, &request)?;
        let mut result = ListResourcesResult::with_all_items(items);
        result.next_cursor = next;
        Ok(result)
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let aggregate = self.offered();
        let Some(exposed) = aggregate
            .find_resource(&request.uri)
            .filter(|e| principal(&context).is_none_or(|p| p.may_use(&e.server)))
        else {
            return Err(ErrorData::resource_not_found(
                format!("no server of the fleet offers resource {:?}", request.uri),
                None,
            ));
        };
        let server = exposed.server.clone();
        match self
            .relay(&server, Request::ReadResource(request), &context)
            .await?
        {
            Answer::Resource(ReadResourceResponse::Complete(mut result)) => {
                result.result_type.get_or_insert(ResultType::COMPLETE);
                Ok(ReadResourceResponse::Complete(result))
            }
            Answer::Resource(other) => Ok(other),
            _ => Err(ErrorData::internal_error(
                "the answer was not a resource",
                None,
            )),
        }
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let aggregate = self.offered();
        let tools = visible(&aggregate.tools, &context, |p, t| p.sees(&t.server, &t.own));
        let (items, next) = page_of(&tools, &request)?;
        let mut result = ListToolsResult::with_all_items(items);
        result.next_cursor = next;
        Ok(result)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let aggregate = self.offered();
        // A tool the caller may not call is one it does not see.
        let Some(exposed) = aggregate.find(&request.name).filter(|exposed| {
            principal(&context).is_none_or(|p| p.may_call(&exposed.server, &exposed.own))
        }) else {
            return Err(mcp_error(CallError::UnknownTool(request.name.to_string())));
        };
        let mut params = request;
        params.name = exposed.own.clone().into();
        match self
            .relay(&exposed.server, Request::CallTool(params), &context)
            .await?
        {
            // An upstream on an older protocol leaves the result type out; the
            // 2026-07-28 protocol requires it (rmcp drops it again for older clients).
            Answer::Tool(CallToolResponse::Complete(mut result)) => {
                result.result_type.get_or_insert(ResultType::COMPLETE);
                Ok(CallToolResponse::Complete(result))
            }
            Answer::Tool(other) => Ok(other),
            _ => Err(ErrorData::internal_error(
                "the answer was not a tool result",
                None,
            )),
        }
    }
}

/// What a list shows the sender of `context`: everything, unless it is a caller, who
/// sees only what `sees` lets through.
fn visible<'a, T: Clone>(
    items: &'a [catalog::Exposed<T>],
    context: &RequestContext<RoleServer>,
    sees: impl Fn(&Principal, &catalog::Exposed<T>) -> bool,
) -> std::borrow::Cow<'a, [catalog::Exposed<T>]> {
    match principal(context).filter(|p| p.role == Role::Caller) {
        None => std::borrow::Cow::Borrowed(items),
        Some(p) => std::borrow::Cow::Owned(items.iter().filter(|e| sees(p, e)).cloned().collect()),
    }
}

/// Who sent the HTTP request that carried this MCP request (`None`: auth is off).
fn principal(context: &RequestContext<RoleServer>) -> Option<&Principal> {
    context
        .extensions
        .get::<http::request::Parts>()?
        .extensions
        .get::<Principal>()
}

/// Lets through requests whose token holds at least the caller role, with their
/// principal; refuses others as the MCP authorization spec has it: 401 with a
/// `WWW-Authenticate` challenge, or 403 for too little privilege.
async fn authorize(
    axum::extract::State(auth): axum::extract::State<Authenticator>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match auth.authorize(request.headers(), Role::Caller) {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(error) => refusal(&error),
    }
}

/// The HTTP answer to a refused request.
fn refusal(error: &AuthError) -> axum::response::Response {
    use axum::response::IntoResponse;
    use http::{header, StatusCode};
    let (status, challenge) = match error {
        AuthError::Missing => (StatusCode::UNAUTHORIZED, r#"Bearer realm="mcpfleet""#),
        AuthError::Malformed | AuthError::Unknown { .. } => (
            StatusCode::UNAUTHORIZED,
            r#"Bearer realm="mcpfleet", error="invalid_token""#,
        ),
        AuthError::Denied { .. } | AuthError::NotInScope { .. } => (
            StatusCode::FORBIDDEN,
            r#"Bearer realm="mcpfleet", error="insufficient_scope""#,
        ),
        AuthError::Stale { .. } => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                error.to_string(),
            )
                .into_response()
        }
    };
    (
        status,
        [(header::WWW_AUTHENTICATE, challenge)],
        error.to_string(),
    )
        .into_response()
}

/// Longest the endpoint waits for a client to take one progress notification.
const PROGRESS_SEND_MS: u64 = 1_000;

/// The `/mcp` listener: at most `MAX_CONNECTIONS` connections at once, each with
/// TCP_NODELAY (answers leave at once, not after the client acknowledges the previous
/// segment).
struct LimitedListener {
    listener: tokio::net::TcpListener,
    limit: ConnectionLimit,
}

impl axum::serve::Listener for LimitedListener {
    type Io = Connection;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Connection, std::net::SocketAddr) {
        accept_limited(&self.listener, &self.limit).await
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }
}

/// Serves `/mcp`, and the routes of `beside` (metrics and health), on `listener` until
/// `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: &HttpConfig,
    server: FleetServer,
    sessions: Arc<RegistrySessions>,
    beside: axum::Router,
    auth: Option<Authenticator>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut http = StreamableHttpServerConfig::default()
        .with_cancellation_token(cancel.clone())
        .with_max_request_body_bytes(MAX_REQUEST_BODY_BYTES)
        // A 2026-07-28 request whose answer is the whole reply gets it as JSON, not as
        // a one-event SSE stream (anything sent before the answer, a progress
        // notification, still makes it a stream). Legacy sessions stream as before.
        .with_json_response(true);
    if !config.allowed_hosts.is_empty() {
        http = http.with_allowed_hosts(config.allowed_hosts.clone());
    }
    if !config.allowed_origins.is_empty() {
        http = http.with_allowed_origins(config.allowed_origins.clone());
    }
    http.session_store = Some(sessions);
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        http,
    );
    let mut mcp = axum::Router::new().nest_service("/mcp", service);
    if let Some(auth) = auth {
        mcp = mcp.layer(axum::middleware::from_fn_with_state(auth, authorize));
    }
    let router = mcp.merge(beside);
    let listener = LimitedListener {
        listener,
        limit: ConnectionLimit::new("mcp", MAX_CONNECTIONS),
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            cancel.cancel();
        })
        .await
}
