//! mcpfleet-sim: runs real mcpfleet nodes as turmoil hosts.
//!
//! Production code is used through its seams: the network is turmoil's TCP (this
//! module), the disk is a `MemoryDisk` created outside the host so that it survives a
//! crash, and openraft's randomness comes from a seed per node.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use hyper_util::rt::TokioIo;
use mcpfleet::config::Config;
use mcpfleet::env::network::{endpoint, Connection, Incoming, Network, NetworkError};
use mcpfleet::env::MemoryDisk;

/// Simulated wall-clock time: the same on every host, from a fixed start.
struct SimClock;

/// 2026-01-01T00:00:00Z, where simulated wall-clock time starts.
const SIM_EPOCH_MS: u64 = 1_767_225_600_000;

impl mcpfleet::env::Clock for SimClock {
    fn now_ms(&self) -> u64 {
        SIM_EPOCH_MS + turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64
    }
}
use mcpfleet::node::Environment;
use mcpfleet::raft::RegistryView;
use mcpfleet::raft::{Probe, RaftMetrics};
use tokio::sync::watch;
use tonic::transport::{Channel, Uri};

pub mod calls;
pub mod checkers;
pub mod faults;
pub mod linearizability;
pub mod mcp;
pub mod nemesis;
pub mod scenarios;
pub mod soak;
pub mod workload;

/// The port every simulated node listens on.
pub const NODE_PORT: u16 = 7700;

/// turmoil's TCP behind the production network seam.
#[derive(Debug, Default, Clone, Copy)]
pub struct TurmoilNetwork;

type ConnectFuture =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<turmoil::net::TcpStream>>> + Send>>;

fn dial(uri: Uri) -> ConnectFuture {
    Box::pin(async move {
        let host = uri.host().unwrap_or_default().to_string();
        let port = uri.port_u16().unwrap_or(NODE_PORT);
        let stream = turmoil::net::TcpStream::connect((host.as_str(), port)).await?;
        Ok(TokioIo::new(stream))
    })
}

#[async_trait]
impl Network for TurmoilNetwork {
    fn channel(&self, addr: &str) -> Result<Channel, NetworkError> {
        Ok(endpoint(addr)?.connect_with_connector_lazy(tower::service_fn(dial)))
    }

    async fn listen(&self, addr: &str) -> Result<Incoming, NetworkError> {
        let port = addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .unwrap_or(NODE_PORT);
        let listener = turmoil::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .map_err(|source| NetworkError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        let stream = futures::stream::unfold(listener, |listener| async move {
            let accepted = listener
                .accept()
                .await
                .map(|(stream, _)| Connection::new(Box::new(stream)));
            Some((accepted, listener))
        });
        Ok(Box::pin(stream))
    }
}

/// The host name of node `id`.
pub fn host_name(id: u64) -> String {
    format!("node{id}")
}

/// The address of node `id` inside the simulation.
pub fn node_addr(id: u64) -> String {
    format!("{}:{NODE_PORT}", host_name(id))
}

/// Configs for a static cluster of `nodes` members with ids 1..=nodes.
pub fn cluster_configs(nodes: u64) -> Vec<Config> {
    let members: BTreeMap<u64, String> = (1..=nodes).map(|id| (id, node_addr(id))).collect();
    (1..=nodes)
        .map(|id| Config {
            id,
            listen: format!("0.0.0.0:{NODE_PORT}"),
            advertise: node_addr(id),
            initial_cluster: members.clone(),
            ..Config::default()
        })
        .collect()
}

/// What the checkers can see of one running node.
pub struct NodeWindow {
    pub metrics: watch::Receiver<RaftMetrics>,
    pub view: Arc<RegistryView>,
}

/// The simulator's probe: a window into every running node.
#[derive(Default)]
pub struct SimProbe {
    nodes: Mutex<BTreeMap<u64, NodeWindow>>,
    /// The first placement plan applied outside the term that made it.
    stale_plan: Mutex<Option<String>>,
    /// The size of every plan a node applied and accepted, by log index.
    plans: Mutex<BTreeMap<u64, usize>>,
    /// Heartbeats leaders took in, and their bytes.
    heartbeats: Mutex<(u64, u64)>,
}

impl Probe for SimProbe {
    fn node_started(
        &self,
        id: u64,
        metrics: watch::Receiver<RaftMetrics>,
        view: Arc<RegistryView>,
    ) {
        self.lock().insert(id, NodeWindow { metrics, view });
    }

    fn plan_applied(
        &self,
        id: u64,
        planned_term: u64,
        entry: mcpfleet::registry::LogPosition,
        placements: usize,
        accepted: bool,
    ) {
        if accepted {
            let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
            plans.insert(entry.index, placements);
        }
        if accepted && planned_term != entry.term {
            let mut stale = self.stale_plan.lock().unwrap_or_else(|e| e.into_inner());
            stale.get_or_insert_with(|| {
                format!(
                    "node {id} applied a placement plan made in term {planned_term} from the log entry at index {} of term {}: a deposed leader's plan committed",
                    entry.index, entry.term
                )
            });
        }
    }

    fn heartbeat_received(&self, _leader: u64, bytes: usize) {
        let mut heartbeats = self.heartbeats.lock().unwrap_or_else(|e| e.into_inner());
        heartbeats.0 += 1;
        heartbeats.1 += bytes as u64;
    }
}

impl SimProbe {
    /// Heartbeats leaders took in so far, and their bytes.
    pub fn heartbeats(&self) -> (u64, u64) {
        *self.heartbeats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Plans applied and accepted so far, and their placements.
    pub fn plans(&self) -> (usize, usize) {
        let plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        (plans.len(), plans.values().sum())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, NodeWindow>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the windows of the running nodes, by id.
    pub fn with_nodes<R>(&self, f: impl FnOnce(&BTreeMap<u64, NodeWindow>) -> R) -> R {
        f(&self.lock())
    }

    /// A deposed leader's plan must never take effect.
    pub fn check_plans(&self) -> Result<(), String> {
        match self
            .stale_plan
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            Some(violation) => Err(violation),
            None => Ok(()),
        }
    }

    fn forget(&self, id: u64) {
        self.lock().remove(&id);
    }
}

/// The simulated nodes: their disks, which outlive crashes, the probe, and the MCP
/// servers they run.
pub struct SimCluster {
    pub disks: BTreeMap<u64, Arc<MemoryDisk>>,
    pub probe: Arc<SimProbe>,
    pub instances: Arc<mcp::Instances>,
}

impl SimCluster {
    /// Crashes node `id` as a power loss would: its tasks stop and what it had not made
    /// durable is gone.
    pub fn crash(&self, sim: &mut turmoil::Sim<'_>, id: u64) {
        self.instances.node_crashed(id);
        sim.crash(host_name(id));
        self.disks[&id].crash();
        self.probe.forget(id);
    }
}

/// Registers node hosts on `sim`, each with a disk that outlives crashes and a launcher
/// of simulated MCP servers, which misbehave when launched before `misbehave_until`.
pub fn add_nodes(
    sim: &mut turmoil::Sim<'_>,
    seed: u64,
    configs: Vec<Config>,
    misbehave_until: std::time::Duration,
) -> SimCluster {
    let mut disks = BTreeMap::new();
    let probe = Arc::new(SimProbe::default());
    let instances = Arc::new(mcp::Instances::default());
    // The host on which every node's MCP servers run (never crashed).
    let (spawner, servers) = tokio::sync::mpsc::unbounded_channel::<mcp::ServerTask>();
    instances.run_servers_on(spawner);
    let servers = Arc::new(Mutex::new(Some(servers)));
    sim.host("processes", move || {
        let servers = servers.lock().unwrap_or_else(|e| e.into_inner()).take();
        async move {
            if let Some(mut servers) = servers {
                while let Some(server) = servers.recv().await {
                    tokio::spawn(server);
                }
            }
            Ok(())
        }
    });
    for config in configs {
        let id = config.id;
        let disk = Arc::new(MemoryDisk::new());
        disks.insert(id, disk.clone());
        // Each start of the host is a new boot with its own seed, as a real restart is.
        let boots = Arc::new(AtomicU64::new(0));
        let node_probe = probe.clone();
        let node_instances = instances.clone();
        sim.host(host_name(id), move || {
            let boot = boots.fetch_add(1, Ordering::Relaxed);
            let node_seed = seed
                ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ boot.wrapping_mul(0xd1b5_4a32_d192_ed03);
            let env = Environment {
                seed: node_seed,
                network: Arc::new(TurmoilNetwork),
                disk: disk.clone(),
                probe: Some(node_probe.clone()),
                clock: Arc::new(SimClock),
                secrets: None,
                launcher: Some(Arc::new(mcp::SimLauncher::new(
                    id,
                    node_seed,
                    node_instances.clone(),
                    misbehave_until,
                ))),
            };
            let config = config.clone();
            async move {
                mcpfleet::node::run(config, env, std::future::pending()).await?;
                Ok(())
            }
        });
    }
    SimCluster {
        disks,
        probe,
        instances,
    }
}

/// A client of node `id`'s API inside the simulation.
pub fn client(id: u64) -> mcpfleet::proto::v1::registry_client::RegistryClient<Channel> {
    let channel = TurmoilNetwork
        .channel(&node_addr(id))
        .expect("simulated addresses are valid");
    mcpfleet::proto::v1::registry_client::RegistryClient::new(channel)
}
