//! Builds a node from a `Config` and an `Environment`, runs it until the shutdown
//! signal, and stops every task it started. Also owns the "run this on the leader"
//! logic that every write, linearizable read and membership change goes through.

pub mod config;
pub mod controller;
mod elections;
mod leader;
mod proposer;
pub mod timing;

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::watch;
use tonic::transport::Channel;

pub use config::{Config, ConfigError};
pub use leader::{LeaderError, LeaderOp, LeaderOpResult, Member};
pub use proposer::Proposer;

use crate::env::{Disk, Environment, Network, NetworkError};
use crate::raft::incarnation::{self, Incarnations};
use crate::raft::{LogStore, NetworkFactory, NodeId, Raft, RegistryView, StateMachineStore};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Storage(String),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("no leader{}", match .leader_hint { Some((id, addr)) => format!(" (last known leader: node {id} at {addr})"), None => String::new() })]
    NoLeader {
        leader_hint: Option<(NodeId, String)>,
    },
    #[error("timed out after {0} ms")]
    Timeout(u64),
    #[error("{0}")]
    Rejected(String),
    #[error("node is shutting down")]
    ShuttingDown,
}

/// What the API layer needs of a running node.
pub struct NodeHandle {
    pub config: Config,
    pub raft: Raft,
    pub view: Arc<RegistryView>,
    proposer: Proposer,
    /// Drawn at start; with `next_request` it names this node's writes (`RequestId`).
    boot: u64,
    next_request: AtomicU64,
    network: Arc<dyn Network>,
    /// Channels to other nodes' APIs, by address.
    peers: DashMap<String, Channel>,
    shutdown: watch::Receiver<bool>,
    disk: Arc<dyn Disk>,
    /// On the leader: when each node was last heard from.
    liveness: std::sync::Mutex<controller::Liveness>,
    /// This node's data-dir incarnation, and the check of other nodes' ones.
    pub incarnations: Arc<Incarnations>,
}

impl crate::gateway::Dialer for NodeHandle {
    fn channel(&self, addr: &str) -> Result<Channel, NetworkError> {
        self.peer_channel(addr)
    }

    fn forget(&self, addr: &str) {
        self.forget_peer_channel(addr)
    }
}

impl NodeHandle {
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// A channel to another node's API, reused across calls.
    pub fn peer_channel(&self, addr: &str) -> Result<Channel, NetworkError> {
        if let Some(channel) = self.peers.get(addr) {
            return Ok(channel.clone());
        }
        let channel = self.network.channel(addr)?;
        self.peers.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// Drops the channel to `addr`: the next call opens a new connection.
    pub fn forget_peer_channel(&self, addr: &str) {
        self.peers.remove(addr);
    }

    /// Resolves when the node starts shutting down.
    pub fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut shutdown = self.shutdown.clone();
        async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        }
    }

    /// Bytes this node's storage takes on disk.
    pub fn disk_size(&self) -> u64 {
        self.disk.size_on_disk()
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }
}

/// Runs a node until `shutdown` resolves, then stops it and waits for its tasks.
pub async fn run(
    config: Config,
    env: Environment,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), NodeError> {
    config.validate()?;
    let id = config.id;
    // What sled opened but cannot be decoded is as corrupt as what sled cannot open.
    let corrupt = |e: crate::raft::StorageError| {
        NodeError::Storage(format!(
            "data dir {} is corrupt: {e}",
            config.data_dir.display()
        ))
    };
    let log_store = LogStore::open(env.disk.clone()).map_err(corrupt)?;
    let mut state_machine = StateMachineStore::open(env.disk.clone()).map_err(corrupt)?;
    if let Some(probe) = &env.probe {
        state_machine = state_machine.observed_by(id, probe.clone());
    }
    let view = state_machine.view();
    let own_incarnation = incarnation::load_or_create(env.disk.as_ref(), env.seed)
        .await
        .map_err(|e| {
            NodeError::Storage(format!(
                "data dir {} is corrupt: {e}",
                config.data_dir.display()
            ))
        })?;
    let incarnations = Incarnations::new(id, own_incarnation, view.clone());
    let raft_config = Arc::new(
        config
            .raft_config()
            .validate()
            .map_err(|e| NodeError::Raft(e.to_string()))?,
    );
    let network = NetworkFactory::new(id, env.network.clone(), incarnations.clone());
    // Everything openraft draws at random derives from the environment's seed.
    let raft = crate::env::runtime::with_seed(
        env.seed,
        Raft::new(id, raft_config, network, log_store, state_machine),
    )
    .await
    .map_err(|e| NodeError::Raft(e.to_string()))?;

    if let Some(probe) = &env.probe {
        probe.node_started(id, raft.metrics(), view.clone());
    }
    let incoming = env.network.listen(&config.listen).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let handle = Arc::new(NodeHandle {
        config: config.clone(),
        raft: raft.clone(),
        view,
        proposer: Proposer::start(raft.clone()),
        boot: env.seed,
        next_request: AtomicU64::new(0),
        network: env.network.clone(),
        peers: DashMap::new(),
        shutdown: stop_rx,
        disk: env.disk.clone(),
        liveness: Default::default(),
        incarnations: incarnations.clone(),
    });

    let directory = Arc::new(crate::agent::Directory::default());
    let http = config.http.clone();
    let separator = http
        .as_ref()
        .map_or(crate::gateway::names::DEFAULT_SEPARATOR.to_string(), |h| {
            h.separator.clone()
        });
    let call_timeout = Duration::from_millis(
        http.as_ref()
            .map_or(crate::gateway::DEFAULT_CALL_TIMEOUT_MS, |h| {
                h.call_timeout_ms
            }),
    );
    let gateway = crate::gateway::endpoint::FleetServer::new(
        Arc::new(crate::gateway::Calls::new(
            id,
            handle.view.clone(),
            directory.clone(),
            handle.clone(),
        )),
        Arc::new(crate::gateway::catalog::Catalogs::new(&separator)),
        call_timeout,
    );
    let mcp_endpoint = match &http {
        Some(http) => {
            let listener = tokio::net::TcpListener::bind(&http.listen)
                .await
                .map_err(|source| NetworkError::Bind {
                    addr: format!("{} (the MCP endpoint)", http.listen),
                    source,
                })?;
            tracing::info!(listen = %http.listen, "serving MCP at /mcp");
            let sessions = Arc::new(crate::gateway::sessions::RegistrySessions::new(
                handle.clone(),
            ));
            let http = http.clone();
            let gateway = gateway.clone();
            let shutdown = handle.shutdown_signal();
            Some(tokio::spawn(async move {
                if let Err(error) =
                    crate::gateway::endpoint::serve(listener, &http, gateway, sessions, shutdown)
                        .await
                {
                    tracing::error!(%error, "the MCP endpoint failed");
                }
            }))
        }
        None => None,
    };
    let server = tokio::spawn(crate::api::serve(
        handle.clone(),
        incoming,
        gateway,
        directory.clone(),
    ));
    tokio::spawn(elections::spread_rounds(
        raft.clone(),
        env.seed,
        config.election_timeout_max_ms.saturating_mul(2),
    ));
    let controller = tokio::spawn(controller::run(handle.clone()));
    let agent = tokio::spawn(crate::agent::run(
        handle.clone(),
        env.launcher.clone(),
        directory,
    ));
    tracing::info!(id, listen = %config.listen, "node started");

    let startup = start_membership(handle.clone());
    tokio::pin!(startup);
    tokio::pin!(shutdown);
    let mut startup_done = false;
    loop {
        tokio::select! {
            result = &mut startup, if !startup_done => {
                startup_done = true;
                if let Err(error) = result {
                    tracing::error!(%error, "could not start membership");
                    let _ = stop_tx.send(true);
                    stop(&handle, server, [controller, agent]).await;
                    return Err(error);
                }
            }
            reason = incarnations.replaced() => {
                tracing::error!(%reason, "this node was refused by the cluster");
                let _ = stop_tx.send(true);
                stop(&handle, server, [controller, agent]).await;
                return Err(NodeError::Rejected(reason));
            }
            _ = &mut shutdown => break,
        }
    }
    tracing::info!(id, "shutting down");
    let _ = stop_tx.send(true);
    stop(&handle, server, [controller, agent]).await;
    if let Some(endpoint) = mcp_endpoint {
        let limit = Duration::from_millis(config.shutdown_timeout_ms);
        if tokio::time::timeout(limit, endpoint).await.is_err() {
            tracing::warn!("the MCP endpoint did not stop in time");
        }
    }
    Ok(())
}

async fn stop(
    handle: &NodeHandle,
    server: tokio::task::JoinHandle<Result<(), NodeError>>,
    loops: [tokio::task::JoinHandle<()>; 2],
) {
    let limit = Duration::from_millis(handle.config.shutdown_timeout_ms);
    // The agent stops every MCP server it runs before it returns.
    for task in loops {
        if tokio::time::timeout(limit, task).await.is_err() {
            tracing::warn!("a node task did not stop in time");
        }
    }
    if tokio::time::timeout(limit, server).await.is_err() {
        tracing::warn!("API server did not stop in time");
    }
    if tokio::time::timeout(limit, handle.raft.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("raft did not stop in time");
    }
}

/// A new static cluster initializes itself; a joining node asks the cluster to add it.
async fn start_membership(handle: Arc<NodeHandle>) -> Result<(), NodeError> {
    let config = &handle.config;
    if let Some(join) = &config.join {
        return leader::join(&handle, join).await;
    }
    let initialized = handle
        .raft
        .is_initialized()
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
    if initialized {
        return Ok(());
    }
    let members: std::collections::BTreeMap<NodeId, openraft::BasicNode> = config
        .initial_cluster
        .iter()
        .map(|(id, addr)| (*id, openraft::BasicNode::new(addr)))
        .collect();
    // Every member of a new cluster initializes with the same membership; openraft
    // accepts that, and whichever wins the first election leads.
    match handle.raft.initialize(members).await {
        Ok(()) => Ok(()),
        Err(openraft::error::RaftError::APIError(
            openraft::error::InitializeError::NotAllowed(_),
        )) => Ok(()),
        Err(error) => Err(NodeError::Raft(error.to_string())),
    }
}
