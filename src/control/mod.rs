//! The control plane: this node's Raft, the one write path into the registry, reads
//! (linearizable or stale), membership and the watch history.
//!
//! Other parts get narrow handles, not the whole: a `Reader` of the registry, a
//! `Writer` into it, and `Leases` for the agent's heartbeats. The leader-only
//! controller (`crate::controller`) owns liveness; heartbeats reach it over a bounded
//! channel. Nothing here runs MCP servers or tool calls.

mod elections;
mod leader;
mod peers;
mod proposer;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLockReadGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use elections::spread_rounds;
pub use leader::{join, LeaderError, LeaderOp, LeaderOpResult, Member};
pub use peers::Peers;
pub use proposer::{Proposer, MAX_BATCHES_IN_FLIGHT, MAX_BATCH_BYTES, TOLERATED_FSYNC};

use crate::config::Config;
use crate::env::{Disk, NetworkError};
use crate::raft::incarnation::Incarnations;
use crate::raft::state_machine::Applied;
use crate::raft::{NodeId, Proposal, Raft, RegistryView, RequestId};
use crate::registry::{Command, Outcome};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
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

/// What a node's heartbeat says about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub id: NodeId,
    pub addr: String,
    pub tags: Vec<String>,
    pub capacity: Option<u32>,
    /// The incarnation of the node's data dir.
    pub incarnation: u64,
    /// The node's applied index when it sent this.
    pub applied: u64,
    /// The slots the node runs or is still stopping, as (server, slot): in full only
    /// when the leader may not have them.
    pub running: Running,
    /// The node started so recently that servers an earlier run of it left behind
    /// (it crashed, or was killed) may still live until their old fence deadline:
    /// `running` does not cover those, so no slot is handed over on its word yet.
    pub orphans_possible: bool,
}

/// Names one content of a node's running slots: `seq` counts the changes since the
/// node started, and `boot` tells its starts apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningVersion {
    pub boot: u64,
    pub seq: u64,
}

/// The running slots as a heartbeat carries them. A node sends them in full when they
/// changed since the leader last took them in (or its last heartbeat went unanswered,
/// or the leader changed), and otherwise only their version: the leader keeps what it
/// took in, so that a heartbeat of a node with many replicas stays small.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Running {
    Slots {
        version: RunningVersion,
        slots: std::collections::BTreeSet<(String, u32)>,
    },
    Unchanged(RunningVersion),
}

impl Running {
    pub fn version(&self) -> RunningVersion {
        match self {
            Running::Slots { version, .. } | Running::Unchanged(version) => *version,
        }
    }
}

/// The leader's answer to a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    pub term: u64,
    /// The leader's last log index when it answered (which covers every committed
    /// entry): the agent starts no replica until it has applied this far, so it never
    /// acts on assignments older than the leader's.
    pub applied_index: u64,
}

/// Heartbeats and membership news waiting for the controller, beyond which a heartbeat
/// is answered "busy" (its agent tries again soon).
pub const CONTROLLER_INBOX_LEN: usize = 1_024;

/// What the control plane tells the leader-only controller.
pub enum ToController {
    /// A heartbeat that passed the membership and incarnation checks.
    Heartbeat {
        heartbeat: Heartbeat,
        reply: oneshot::Sender<Result<LeaseGrant, LeaderError>>,
    },
    /// Node `id` left the membership: what it said counts for nothing any more.
    Forget(NodeId),
}

/// The numbers of this node's writes, and those still open (they may yet be sent).
#[derive(Default)]
struct OpenWrites {
    next: u64,
    open: BTreeSet<u64>,
}

/// Holds one write open; dropping it (the write was answered or given up on) closes it.
struct WriteTicket<'a> {
    writes: &'a Mutex<OpenWrites>,
    seq: u64,
}

impl Drop for WriteTicket<'_> {
    fn drop(&mut self) {
        let mut writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        writes.open.remove(&self.seq);
    }
}

/// The running control plane of one node.
pub struct ControlPlane {
    pub config: Config,
    pub raft: Raft,
    view: Arc<RegistryView>,
    proposer: Proposer,
    /// Drawn at start; with a write's number it names the write (`RequestId`).
    boot: u64,
    writes: Mutex<OpenWrites>,
    peers: Arc<Peers>,
    shutdown: CancellationToken,
    /// Every task this node spawns: joined at shutdown.
    tasks: TaskTracker,
    disk: Arc<dyn Disk>,
    controller: mpsc::Sender<ToController>,
    /// This node's data-dir incarnation, and the check of other nodes' ones.
    pub incarnations: Arc<Incarnations>,
    /// The simulator's window into the node, if any.
    probe: Option<Arc<dyn crate::raft::Probe>>,
    /// When the leader last answered this node's heartbeat (its lease renewed). Only
    /// observed (`/metrics`); nothing decides on it.
    last_contact: Mutex<Option<tokio::time::Instant>>,
}

/// What building a control plane takes.
pub struct Parts {
    pub config: Config,
    pub raft: Raft,
    pub view: Arc<RegistryView>,
    pub proposer: Proposer,
    pub boot: u64,
    pub peers: Arc<Peers>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub disk: Arc<dyn Disk>,
    pub controller: mpsc::Sender<ToController>,
    pub incarnations: Arc<Incarnations>,
    pub probe: Option<Arc<dyn crate::raft::Probe>>,
}

impl ControlPlane {
    pub fn new(parts: Parts) -> ControlPlane {
        ControlPlane {
            config: parts.config,
            raft: parts.raft,
            view: parts.view,
            proposer: parts.proposer,
            boot: parts.boot,
            writes: Mutex::new(OpenWrites::default()),
            peers: parts.peers,
            shutdown: parts.shutdown,
            tasks: parts.tasks,
            disk: parts.disk,
            controller: parts.controller,
            incarnations: parts.incarnations,
            probe: parts.probe,
            last_contact: Mutex::new(None),
        }
    }

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    pub fn view(&self) -> &Arc<RegistryView> {
        &self.view
    }

    pub fn peers(&self) -> &Arc<Peers> {
        &self.peers
    }

    /// Resolves when the node starts shutting down.
    pub fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shutdown.clone().cancelled_owned()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// The token cancelled when the node starts shutting down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// openraft's metrics of this node, as a watch.
    pub fn raft_metrics_watch(&self) -> tokio::sync::watch::Receiver<crate::raft::RaftMetrics> {
        self.raft.metrics()
    }

    /// Where this node's tasks are spawned, so that shutdown joins them.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// The registry as a backup file (`raft::backup`), as of a linearizable read (or
    /// of this node's applied state, if `stale`): copied and encoded off the runtime
    /// thread, as snapshots are.
    pub async fn backup(&self, stale: bool) -> Result<(u64, Vec<u8>), NodeError> {
        if !stale {
            self.read_barrier().await?;
        }
        let view = self.view.clone();
        let encoded = crate::env::disk::heavy(self.disk.as_ref(), move || {
            let registry = view.read().registry.clone();
            crate::raft::backup::encode_backup(&registry).map(|bytes| (registry.revision, bytes))
        })
        .await
        .map_err(|e| NodeError::Storage(e.to_string()))?;
        encoded.map_err(|e| NodeError::Storage(e.to_string()))
    }

    /// Bytes this node's storage takes on disk.
    pub fn disk_size(&self) -> u64 {
        self.disk.size_on_disk()
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    /// This node's applied index.
    pub fn applied_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |id| id.index)
    }

    /// A new write of `command`, numbered, with the floor below which every write of
    /// this boot is done. The write counts as open (it may still be sent) until the
    /// returned ticket is dropped.
    fn proposal(&self, command: Command, actor: Option<String>) -> (Proposal, WriteTicket<'_>) {
        let mut writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let seq = writes.next;
        writes.next += 1;
        writes.open.insert(seq);
        let floor = writes.open.first().copied().unwrap_or(seq);
        let id = RequestId {
            node: self.id(),
            boot: self.boot,
            seq,
        };
        let ticket = WriteTicket {
            writes: &self.writes,
            seq,
        };
        (
            Proposal {
                id,
                floor,
                command,
                actor,
            },
            ticket,
        )
    }

    /// Commits `command` through this node's proposer only if it leads (never
    /// forwarded): the controller's path, whose proposals must fail once it is deposed.
    pub async fn propose_here(&self, command: Command) -> Result<Outcome, LeaderError> {
        let (proposal, _open) = self.proposal(command, None);
        let commit = self.proposer.propose(proposal);
        tokio::time::timeout(self.request_timeout(), commit)
            .await
            .map_err(|_| LeaderError::Failed("timed out".into()))?
    }
}

/// Reads the registry: this node's applied state as it is (`stale`), or once it
/// reflects every write acknowledged before the call (`linearizable`).
#[derive(Clone)]
pub struct Reader {
    control: Arc<ControlPlane>,
}

impl Reader {
    pub fn new(control: Arc<ControlPlane>) -> Reader {
        Reader { control }
    }

    pub fn stale(&self) -> RwLockReadGuard<'_, Applied> {
        self.control.view.read()
    }

    pub async fn linearizable(&self) -> Result<RwLockReadGuard<'_, Applied>, NodeError> {
        self.control.read_barrier().await?;
        Ok(self.control.view.read())
    }

    /// This node's applied index.
    pub fn applied_index(&self) -> u64 {
        self.control.applied_index()
    }

    /// How long ago the leader last answered this node's heartbeat, if ever.
    pub fn since_leader_contact(&self) -> Option<Duration> {
        let last = *self
            .control
            .last_contact
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        last.map(|at| at.elapsed())
    }

    /// The highest log index this node knows to be committed.
    pub async fn committed_index(&self) -> Option<u64> {
        let committed = self
            .control
            .raft
            .with_raft_state(|state| state.committed)
            .await
            .ok()?;
        committed.map(|id| id.index)
    }

    /// openraft's metrics of this node, as they are now.
    pub fn raft_metrics(&self) -> crate::raft::RaftMetrics {
        self.control.raft.metrics().borrow().clone()
    }

    pub fn view(&self) -> &Arc<RegistryView> {
        &self.control.view
    }
}

/// Writes into the registry. However often a write is retried inside (a lost answer, a
/// leader change), it is applied at most once.
#[derive(Clone)]
pub struct Writer {
    control: Arc<ControlPlane>,
}

impl Writer {
    pub fn new(control: Arc<ControlPlane>) -> Writer {
        Writer { control }
    }

    pub async fn propose(&self, command: Command) -> Result<Outcome, NodeError> {
        self.control.propose(command).await
    }
}

/// The agent's side of fencing: heartbeats to whoever leads, and the leases they earn.
#[derive(Clone)]
pub struct Leases {
    control: Arc<ControlPlane>,
}

impl Leases {
    pub fn new(control: Arc<ControlPlane>) -> Leases {
        Leases { control }
    }

    /// The data-dir incarnation heartbeats carry.
    pub fn own_incarnation(&self) -> u64 {
        self.control.incarnations.own()
    }

    /// What tells this start of the node from its others (drawn at start).
    pub fn own_boot(&self) -> u64 {
        self.control.boot
    }

    /// This node's applied index.
    pub fn applied_index(&self) -> u64 {
        self.control.applied_index()
    }

    /// Resolves when this node sees a leader other than `seen`; `Err` once Raft stops.
    pub async fn leader_change(&self, seen: Option<NodeId>) -> Result<Option<NodeId>, ()> {
        let mut metrics = self.control.raft.metrics();
        metrics
            .wait_for(|m| m.current_leader != seen)
            .await
            .map(|m| m.current_leader)
            .map_err(|_| ())
    }

    pub fn current_leader(&self) -> Option<NodeId> {
        self.control.raft.metrics().borrow().current_leader
    }

    /// Sends `heartbeat` to the leader this node knows of, answered by `deadline`.
    /// A refusal because this node's data dir was replaced stops the node.
    pub async fn renew(
        &self,
        heartbeat: Heartbeat,
        deadline: tokio::time::Instant,
    ) -> Result<LeaseGrant, LeaderError> {
        let op = LeaderOp::Heartbeat(heartbeat);
        let answer = match self.control.known_leader() {
            Some((leader, _)) if leader == self.control.id() => {
                let local = self.control.execute_local(op);
                match tokio::time::timeout_at(deadline, local).await {
                    Ok(answer) => answer,
                    Err(_) => Err(LeaderError::Failed("heartbeat timed out".into())),
                }
            }
            Some((_, addr)) => self.control.execute_remote(&addr, &op, deadline).await,
            None => Err(LeaderError::NotLeader { leader: None }),
        };
        if let Err(LeaderError::Replaced(reason)) = &answer {
            self.control.incarnations.refused(reason);
        }
        match answer? {
            LeaderOpResult::Lease(grant) => {
                *self
                    .control
                    .last_contact
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(tokio::time::Instant::now());
                Ok(grant)
            }
            other => Err(LeaderError::Failed(format!("unexpected answer {other:?}"))),
        }
    }
}
