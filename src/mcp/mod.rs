//! Talking MCP to one replica through rmcp: launch or connect (through the launcher
//! seam), the initialize handshake, and ping. It owns the replica's connection and
//! process; it knows nothing of the registry's assignments or of health policy.

use std::time::Duration;

use rmcp::model::ClientRequest;
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt};

use crate::env::launcher::{Fence, Launched, McpIo, McpLauncher, ReplicaId, ServerProcess};
use crate::registry::Transport;

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
    #[error("ping failed: {0}")]
    Ping(String),
    #[error("no answer to ping within {0} ms")]
    PingTimeout(u64),
    /// The server's process ended (how, and its last stderr lines).
    #[error("{0}")]
    Exited(String),
}

/// A connected, initialized MCP server.
pub struct Connection {
    client: RunningService<RoleClient, ()>,
    process: Option<Box<dyn ServerProcess>>,
    /// The server's name and version from its initialize answer.
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
        let handshake = async {
            match io {
                McpIo::Streams { reader, writer } => ()
                    .serve((reader, writer))
                    .await
                    .map_err(|e| McpError::Initialize(e.to_string())),
                McpIo::Http { url, headers } => {
                    let mut config = StreamableHttpClientTransportConfig::with_uri(url.clone());
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
                    ().serve(transport)
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
            .and_then(|info| info.server_info.clone())
            .map(|info| format!("{} {}", info.name, info.version))
            .unwrap_or_default();
        Ok(Connection {
            client,
            process,
            server_info,
        })
    }

    /// One MCP ping; returns its round trip. A process that exits meanwhile ends it
    /// with `Exited`.
    pub async fn ping(&mut self, timeout: Duration) -> Result<Duration, McpError> {
        let started = tokio::time::Instant::now();
        let request = ClientRequest::PingRequest(Default::default());
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
