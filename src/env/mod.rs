//! The seams between node logic and the outside world: the network, the disk and the
//! seeded runtime, each with a production version. The simulator supplies its own
//! network and disk through the same traits. This is the only module (with main.rs)
//! that may touch real sockets, real files, threads or entropy.

pub mod bugs;
pub mod disk;
pub mod launcher;
pub mod network;
pub mod process_tree;
pub mod runtime;

use std::sync::Arc;

pub use disk::{Disk, DiskError, MemoryDisk, SledDisk};
pub use network::{Connection, Incoming, Network, NetworkError, TcpNetwork};
pub use runtime::SeededRuntime;

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
    pub launcher: Option<Arc<dyn launcher::McpLauncher>>,
}

/// What the node's Raft reports about itself.
pub type RaftMetrics = openraft::RaftMetrics<crate::raft::NodeId, crate::raft::Node>;

/// A window into a running node for a test harness: the simulator's checkers read every
/// node's Raft metrics and applied state through it. It only observes.
pub trait Probe: Send + Sync + 'static {
    /// Called at every start of node `id`, once its Raft and state machine exist.
    fn node_started(
        &self,
        id: crate::raft::NodeId,
        metrics: tokio::sync::watch::Receiver<RaftMetrics>,
        view: Arc<crate::raft::RegistryView>,
    );

    /// Called when node `id` applies a placement plan made in `planned_term`, carried by
    /// the log entry at `entry`; `accepted` says whether the registry took it.
    fn plan_applied(
        &self,
        _id: crate::raft::NodeId,
        _planned_term: u64,
        _entry: crate::registry::LogPosition,
        _accepted: bool,
    ) {
    }
}

impl Environment {
    /// The production environment: real TCP and the given disk, seeded from the OS.
    pub fn production(disk: Arc<dyn Disk>) -> Environment {
        let mut bytes = [0u8; 8];
        // Entropy enters only here; everything inside the node derives from `seed`.
        let seed = match std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        {
            Ok(()) => u64::from_le_bytes(bytes),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
        };
        Environment {
            seed,
            network: Arc::new(TcpNetwork),
            disk,
            probe: None,
            launcher: None,
        }
    }
}
