//! Builds a node from a `Config` and an `Environment`, runs it until the shutdown
//! signal, and stops every task it started. Wiring only: the control plane
//! (`crate::control`), the leader-only controller, the agent, the APIs and the MCP
//! endpoint each own their part, and reach one another through narrow handles.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::control::NodeError;

use crate::config::Config;
use crate::control::{ControlPlane, Leases, Parts, Peers, Proposer, Reader, Writer};
use crate::env::{Disk, Network, NetworkError, TcpNetwork};
use crate::raft::incarnation::{self, Incarnations};
use crate::raft::{LogStore, NetworkFactory, NodeId, Probe, Raft, StateMachineStore};

/// Everything a node draws from the outside world.
#[derive(Clone)]
pub struct Environment {
    /// Seeds every random choice the node makes (openraft's election timeouts).
    pub seed: u64,
    pub network: Arc<dyn Network>,
    pub disk: Arc<dyn Disk>,
    /// Lets a harness watch the node from outside; production nodes have none.
    pub probe: Option<Arc<dyn Probe>>,
    /// Starts and reaches MCP servers. A node without one runs no replicas (it still
    /// heartbeats and takes part in placement).
    pub launcher: Option<Arc<dyn crate::env::launcher::McpLauncher>>,
    /// The wall clock the node stamps its log entries with as leader.
    pub clock: Arc<dyn crate::env::Clock>,
    /// The cluster's key for secret env values and headers (`crate::secrets`): this
    /// node seals what clients write through it with it. `None`: secrets are refused.
    pub secrets: Option<Arc<crate::secrets::SecretsKey>>,
}

impl Environment {
    /// The production environment: real TCP and the given disk, seeded from the OS.
    pub fn production(disk: Arc<dyn Disk>) -> Environment {
        Environment {
            seed: crate::env::entropy_seed(),
            network: Arc::new(TcpNetwork::default()),
            disk,
            probe: None,
            launcher: None,
            clock: Arc::new(crate::env::SystemClock),
            secrets: None,
        }
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
    // Before anything is decoded: a data dir of another format would be misread.
    crate::raft::format::check_or_record(env.disk.as_ref())
        .await
        .map_err(|e| NodeError::Storage(format!("data dir {}: {e}", config.data_dir.display())))?;
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
    let shutdown_token = CancellationToken::new();
    let tasks = TaskTracker::new();
    let (to_controller, controller_inbox) = mpsc::channel(crate::control::CONTROLLER_INBOX_LEN);
    let control = Arc::new(ControlPlane::new(Parts {
        config: config.clone(),
        raft: raft.clone(),
        view,
        proposer: Proposer::start(
            raft.clone(),
            env.clock.clone(),
            Duration::from_millis(config.request_timeout_ms),
            &tasks,
            shutdown_token.clone(),
        ),
        boot: env.seed,
        peers: Arc::new(Peers::new(env.network.clone())),
        shutdown: shutdown_token.clone(),
        tasks: tasks.clone(),
        disk: env.disk.clone(),
        controller: to_controller,
        incarnations: incarnations.clone(),
        probe: env.probe.clone(),
    }));
    let reader = Reader::new(control.clone());
    let writer = Writer::new(control.clone());

    let directory = Arc::new(crate::agent::Directory::default());
    let http = config.http.clone();
    let separator = http
        .as_ref()
        .map_or(crate::config::DEFAULT_TOOL_SEPARATOR.to_string(), |h| {
            h.separator.clone()
        });
    let call_timeout = Duration::from_millis(
        http.as_ref()
            .map_or(crate::config::DEFAULT_CALL_TIMEOUT_MS, |h| {
                h.call_timeout_ms
            }),
    );
    let gateway = crate::gateway::endpoint::FleetServer::new(
        Arc::new(crate::gateway::Calls::new(
            id,
            reader.clone(),
            directory.clone(),
            control.peers().clone(),
        )),
        Arc::new(crate::gateway::catalog::Catalogs::new(&separator)),
        call_timeout,
        tasks.clone(),
        shutdown_token.clone(),
    );
    if let Some(http) = &http {
        let listener = tokio::net::TcpListener::bind(&http.listen)
            .await
            .map_err(|source| NetworkError::Bind {
                addr: format!("{} (the MCP endpoint)", http.listen),
                source,
            })?;
        tracing::info!(listen = %http.listen, "serving MCP at /mcp, and /metrics, /healthz, /readyz");
        let beside = match crate::observe::recorder() {
            Ok(handle) => crate::observe::Observer::new(reader.clone(), handle).routes(),
            Err(error) => {
                tracing::warn!(%error, "serving no /metrics, /healthz or /readyz");
                axum::Router::new()
            }
        };
        let sessions = Arc::new(crate::gateway::sessions::RegistrySessions::new(
            reader.clone(),
            writer.clone(),
        ));
        tasks.spawn(gateway.clone().publish_changes());
        let http = http.clone();
        let gateway = gateway.clone();
        let shutdown = control.shutdown_signal();
        let auth = config
            .auth
            .then(|| crate::auth::Authenticator::new(reader.clone()));
        tasks.spawn(async move {
            if let Err(error) = crate::gateway::endpoint::serve(
                listener, &http, gateway, sessions, beside, auth, shutdown,
            )
            .await
            {
                tracing::error!(%error, "the MCP endpoint failed");
            }
        });
    }
    tasks.spawn({
        let control = control.clone();
        let directory = directory.clone();
        let tls = env.network.server_tls();
        let secrets = env.secrets.clone();
        async move {
            let served = crate::api::serve(control, incoming, gateway, directory, tls, secrets);
            if let Err(error) = served.await {
                tracing::error!(%error, "the API server failed");
            }
        }
    });
    tasks.spawn(crate::control::spread_rounds(
        raft.clone(),
        env.seed,
        config.election_timeout_max_ms.saturating_mul(2),
        control.shutdown_signal(),
    ));
    tasks.spawn(crate::controller::run(control.clone(), controller_inbox));
    tasks.spawn(crate::agent::run(
        crate::agent::Context {
            config: config.clone(),
            reader,
            writer,
            leases: Leases::new(control.clone()),
            shutdown: shutdown_token.clone(),
            tasks: tasks.clone(),
        },
        env.launcher.clone(),
        directory,
    ));
    tracing::info!(id, listen = %config.listen, "node started");

    let startup = start_membership(control.clone());
    tokio::pin!(startup);
    tokio::pin!(shutdown);
    let mut startup_done = false;
    let result = loop {
        tokio::select! {
            result = &mut startup, if !startup_done => {
                startup_done = true;
                if let Err(error) = result {
                    tracing::error!(%error, "could not start membership");
                    break Err(error);
                }
            }
            fatal = raft_stopped(raft.clone()) => {
                tracing::error!(%fatal, "Raft stopped");
                // sled flushes when its database is dropped, and on a full or failing
                // disk that flush waits for ever: this disk is never dropped.
                std::mem::forget(env.disk.clone());
                break Err(NodeError::Storage(format!(
                    "Raft stopped: {fatal}; the node exits so that it can be restarted"
                )));
            }
            reason = incarnations.replaced() => {
                tracing::error!(%reason, "this node was refused by the cluster");
                break Err(NodeError::Rejected(reason));
            }
            _ = &mut shutdown => break Ok(()),
        }
    };
    tracing::info!(id, "shutting down");
    stop(&control, &shutdown_token, &tasks).await;
    result
}

/// Resolves when Raft's core has stopped on a fatal error (a disk that fails or is
/// full): the node can then neither vote nor apply, and must not linger as if alive.
async fn raft_stopped(raft: crate::raft::Raft) -> String {
    let mut metrics = raft.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow_and_update().running_state {
            return fatal.to_string();
        }
        if metrics.changed().await.is_err() {
            // Raft shut down (the node is stopping): nothing to report.
            return std::future::pending().await;
        }
    }
}

/// Stops every task the node started (the agent stops every MCP server it runs before
/// it returns), then Raft.
async fn stop(control: &ControlPlane, shutdown: &CancellationToken, tasks: &TaskTracker) {
    let limit = Duration::from_millis(control.config.shutdown_timeout_ms);
    shutdown.cancel();
    tasks.close();
    if tokio::time::timeout(limit, tasks.wait()).await.is_err() {
        tracing::warn!(left = tasks.len(), "some node tasks did not stop in time");
    }
    if tokio::time::timeout(limit, control.raft.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("raft did not stop in time");
    }
}

/// A new static cluster initializes itself; a joining node asks the cluster to add it.
async fn start_membership(handle: Arc<ControlPlane>) -> Result<(), NodeError> {
    let config = &handle.config;
    if let Some(join) = &config.join {
        return crate::control::join(&handle, join).await;
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
