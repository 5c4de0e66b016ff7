//! The MCP endpoint every node serves: streamable HTTP at `/mcp` (rmcp's
//! `StreamableHttpService`), both protocol eras from one endpoint. A 2026-07-28 client
//! needs no session (rmcp serves it statelessly); a legacy session lives in the
//! registry (`sessions`), so any node carries it on.
//!
//! It offers the fleet's tools under the fleet's names (`catalog`, `names`) and routes
//! each call through `Calls`.

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::SubscriptionFilter;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ErrorCode, Implementation, InitializeResult,
    ListToolsResult, PaginatedRequestParams, ResultType, ServerCapabilities,
};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::catalog::{self, Catalogs};
use super::sessions::RegistrySessions;
use super::{CallError, Calls};
use crate::agent::ReplicaCallError;
use crate::config::HttpConfig;

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
    /// The fingerprint of what the fleet offers, as last seen (`publish_changes`).
    offers: Arc<watch::Sender<u64>>,
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
            offers: Arc::new(watch::Sender::new(0)),
            tasks,
            shutdown,
        }
    }

    /// Looks every `OFFER_CHECK_MS` for a change in the fleet's tool list (a server
    /// added, removed or changed, its last healthy replica gone or back), and tells
    /// the listening clients, until the node shuts down.
    pub async fn publish_changes(self) {
        let mut tick = tokio::time::interval(Duration::from_millis(OFFER_CHECK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => return,
            }
            let fingerprint = self.tools().fingerprint;
            self.offers.send_if_modified(|seen| {
                let changed = *seen != fingerprint;
                *seen = fingerprint;
                changed
            });
        }
    }

    /// Resolves at the next change of what the fleet offers; `false` at shutdown.
    async fn next_change(&self, changes: &mut watch::Receiver<u64>) -> bool {
        tokio::select! {
            changed = changes.changed() => changed.is_ok(),
            _ = self.shutdown.cancelled() => false,
        }
    }

    /// The fleet's tools now.
    pub fn tools(&self) -> Arc<catalog::Aggregate> {
        self.catalogs.current(self.calls.reader())
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

/// The MCP error a failed call gives the client.
pub fn mcp_error(error: CallError) -> ErrorData {
    match error {
        CallError::UnknownTool(_) | CallError::UnknownServer(_) | CallError::Invalid(_) => {
            ErrorData::invalid_params(error.to_string(), None)
        }
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
                .build(),
        )
        .with_server_info(Implementation::new("mcpfleet", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "The tools of every MCP server in this mcpfleet cluster, named server__tool.",
        )
    }

    /// 2026-07-28 clients: a `subscriptions/listen` stream may ask for tool list changes.
    fn accepted_subscription_filter(
        &self,
        _requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(SubscriptionFilter::builder().tools_list_changed().build())
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let mut changes = self.offers.subscribe();
        changes.mark_unchanged();
        loop {
            tokio::select! {
                more = self.next_change(&mut changes) => if !more {
                    return Ok(());
                },
                _ = context.cancelled() => return Ok(()),
            }
            if context.sink().notify_tool_list_changed().await.is_err() {
                return Ok(());
            }
        }
    }

    /// Legacy sessions: changes go out as `notifications/tools/list_changed`, on the
    /// session's GET stream, from the node that holds it.
    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let server = self.clone();
        let peer = context.peer;
        let mut changes = self.offers.subscribe();
        changes.mark_unchanged();
        self.tasks.spawn(async move {
            while server.next_change(&mut changes).await {
                let limit = Duration::from_millis(NOTIFY_TIMEOUT_MS);
                match tokio::time::timeout(limit, peer.notify_tool_list_changed()).await {
                    Ok(Ok(())) => {}
                    // The session is gone, or it does not read what it is sent.
                    _ => return,
                }
            }
        });
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let aggregate = self.catalogs.current(self.calls.reader());
        let cursor = request.as_ref().and_then(|r| r.cursor.as_deref());
        let (tools, next) = catalog::page(&aggregate.tools, cursor)
            .map_err(|reason| ErrorData::invalid_params(reason, None))?;
        let mut result = ListToolsResult::with_all_items(tools);
        result.next_cursor = next;
        Ok(result)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let aggregate = self.catalogs.current(self.calls.reader());
        let Some(exposed) = aggregate.find(&request.name) else {
            return Err(mcp_error(CallError::UnknownTool(request.name.to_string())));
        };
        let mut params = request;
        params.name = exposed.tool.clone().into();
        let call = self.call(&exposed.server, params, None);
        tokio::select! {
            outcome = call => match outcome {
                // An upstream on an older protocol leaves the result type out; the
                // 2026-07-28 protocol requires it (rmcp drops it again for older clients).
                Ok(CallToolResponse::Complete(mut result)) => {
                    result.result_type.get_or_insert(ResultType::COMPLETE);
                    Ok(CallToolResponse::Complete(result))
                }
                other => other.map_err(mcp_error),
            },
            // The client cancelled: dropping the call cancels it upstream.
            _ = context.ct.cancelled() => Err(ErrorData::internal_error("cancelled", None)),
        }
    }
}

/// Serves `/mcp` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: &HttpConfig,
    server: FleetServer,
    sessions: Arc<RegistrySessions>,
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
    let router = axum::Router::new().nest_service("/mcp", service);
    // Answers leave at once, not after the client acknowledges the previous segment.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            cancel.cancel();
        })
        .await
}
