//! The gRPC services every node serves: the client API (`mcpfleet.v1.Registry`) and the
//! internal node-to-node API. Conversion between proto and domain types, and from
//! typed errors to `tonic::Status`, happens here and nowhere else.

mod client;
pub mod convert;
mod dataplane;
mod internal;
pub mod paging;

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Server;

pub use client::ClientApi;
pub use dataplane::DataPlaneApi;
pub use internal::InternalApi;

use crate::agent::Directory;
use crate::config::MAX_REQUEST_BYTES;
use crate::control::{ControlPlane, NodeError};
use crate::env::Incoming;
use crate::gateway::endpoint::FleetServer;
use crate::gateway::{MAX_CALL_BYTES, MAX_CALL_TIMEOUT_MS};
use crate::proto::dataplane::tool_calls_server::ToolCallsServer;
use crate::proto::internal::raft_internal_server::RaftInternalServer;
use crate::proto::v1::registry_server::RegistryServer;
use crate::raft::network::MAX_RAFT_MESSAGE_BYTES;

/// Most concurrent streams on one connection, and most requests one connection has
/// in service at once.
const MAX_CONCURRENT_STREAMS: u32 = 1_024;
/// A connection that answers no HTTP/2 ping within the timeout is closed, so that the
/// streams of a peer that vanished (a partition, a killed host) do not linger.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a request may take to be answered (a stream's answer is its first message):
/// the longest tool call a client may ask for, and some slack.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(MAX_CALL_TIMEOUT_MS + 30_000);

/// Serves the client, internal and data-plane APIs on `incoming` until the node shuts
/// down.
pub async fn serve(
    handle: Arc<ControlPlane>,
    incoming: Incoming,
    gateway: FleetServer,
    directory: Arc<Directory>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    secrets: Option<Arc<crate::secrets::SecretsKey>>,
) -> Result<(), NodeError> {
    let client = RegistryServer::new(ClientApi::new(handle.clone(), gateway, secrets))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let dataplane = ToolCallsServer::new(DataPlaneApi::new(directory, handle.tasks().clone()))
        .max_decoding_message_size(MAX_CALL_BYTES)
        .max_encoding_message_size(MAX_CALL_BYTES);
    let internal = RaftInternalServer::new(InternalApi::new(handle.clone()))
        .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
    let (health, health_service) = tonic_health::server::health_reporter();
    handle.tasks().spawn(report_health(handle.clone(), health));
    // Both versions of server reflection: grpcurl asks for v1 first, older clients
    // (Python's grpcio-reflection) for v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::DESCRIPTORS)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_error =
        |e: tonic_reflection::server::Error| NodeError::Raft(format!("gRPC reflection: {e}"));
    let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;
    let auth = handle
        .config
        .auth
        .then(|| crate::auth::Authenticator::new(crate::control::Reader::new(handle.clone())));
    let mut server = Server::builder().layer(crate::auth::grpc::AuthLayer::new(auth));
    if let Some(tls) = tls {
        // With TLS, every connection is TLS with a certificate the cluster's CA signed.
        server = server
            .tls_config(tls)
            .map_err(|e| NodeError::Raft(format!("TLS: {e}")))?;
    }
    server
        .tcp_nodelay(true)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .concurrency_limit_per_connection(MAX_CONCURRENT_STREAMS as usize)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .timeout(REQUEST_TIMEOUT)
        .add_service(client)
        .add_service(internal)
        .add_service(dataplane)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, handle.shutdown_signal())
        .await
        .map_err(|e| NodeError::Raft(format!("API server: {e}")))
}

/// Keeps the standard gRPC health service true: the whole server ("") and the client
/// API are SERVING while this node knows a leader (it can answer reads and take
/// writes), NOT_SERVING while it knows none. The internal and data-plane services
/// serve whenever the process does.
async fn report_health(control: Arc<ControlPlane>, health: tonic_health::server::HealthReporter) {
    use tonic::server::NamedService;
    use tonic_health::ServingStatus;
    for service in [
        RaftInternalServer::<InternalApi>::NAME,
        ToolCallsServer::<DataPlaneApi>::NAME,
    ] {
        health
            .set_service_status(service, ServingStatus::Serving)
            .await;
    }
    let mut metrics = control.raft_metrics_watch();
    let shutdown = control.shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let serving = metrics.borrow().current_leader.is_some();
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        health.set_service_status("", status).await;
        health
            .set_service_status(RegistryServer::<ClientApi>::NAME, status)
            .await;
        // openraft updates its metrics constantly: wake only when leadership is won or
        // lost.
        tokio::select! {
            changed = metrics.wait_for(|m| m.current_leader.is_some() != serving) => {
                if changed.is_err() {
                    return;
                }
            }
            _ = &mut shutdown => return,
        }
    }
}

/// The one place a node error becomes a gRPC status.
pub fn status_from_node_error(error: NodeError) -> tonic::Status {
    match &error {
        NodeError::NoLeader { leader_hint } => {
            let mut status = tonic::Status::unavailable(error.to_string());
            if let Some((id, addr)) = leader_hint {
                if let Ok(value) = format!("{id}={addr}").parse() {
                    status.metadata_mut().insert("x-mcpfleet-leader", value);
                }
            }
            status
        }
        NodeError::Timeout(_) => tonic::Status::deadline_exceeded(error.to_string()),
        NodeError::Rejected(_) => tonic::Status::failed_precondition(error.to_string()),
        NodeError::ShuttingDown => tonic::Status::unavailable(error.to_string()),
        NodeError::Config(_) => tonic::Status::invalid_argument(error.to_string()),
        NodeError::Storage(_) | NodeError::Network(_) | NodeError::Raft(_) => {
            tonic::Status::internal(error.to_string())
        }
    }
}
