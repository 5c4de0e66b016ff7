//! openraft glue: the type configuration, the log and state-machine stores (over the
//! `Disk` seam), and the network client (over the `Network` seam). Knows nothing of
//! gRPC services or the CLI.

// openraft's `StorageError` (about 224 bytes) is the error type its storage traits
// require; the helpers here return it as is rather than boxing and unboxing it.
#![allow(clippy::result_large_err)]

pub mod backup;
pub mod codec;
pub mod format;
pub mod incarnation;
pub mod log_store;
pub mod network;
pub mod probe;
pub mod sessions;
pub mod state_machine;

use std::io::Cursor;

pub use log_store::LogStore;
pub use network::NetworkFactory;
pub use probe::{Probe, RaftMetrics};
pub use state_machine::{RegistryView, StateMachineStore, WatchMessage};

use serde::{Deserialize, Serialize};

use crate::env::SeededRuntime;
use crate::registry::{Command, Outcome};

/// Names one client write across retries: the node that took it, that node's boot (a
/// random number drawn at start, so a restarted node never reuses an id), and a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId {
    pub node: NodeId,
    pub boot: u64,
    pub seq: u64,
}

/// A registry command with the id that makes retrying it safe: the state machine
/// applies each id at most once and answers a repeat with the first outcome (see
/// `sessions`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub id: RequestId,
    /// Every write of this node's boot numbered below this was answered or given up on
    /// when this one was made: none of them is sent again.
    pub floor: u64,
    pub command: Command,
    /// Who asked for the write, for the audit log (`registry::AuditEntry`): a client's
    /// token or certificate, or "anonymous". `None` for the nodes' own writes.
    pub actor: Option<String>,
}

/// One Raft entry: proposals applied in order. Writes that arrive together share an
/// entry, so the per-entry cost of Raft (log append, replication, fsync) is paid once
/// for all of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The leader's clock when it made the entry (ms since the Unix epoch): the only
    /// time the state machine knows, for expiring client sessions.
    pub stamp_ms: u64,
    pub proposals: Vec<Proposal>,
}

openraft::declare_raft_types!(
    /// The Raft types of mcpfleet: batches of registry commands in, one outcome per
    /// command out.
    pub TypeConfig:
        D = Batch,
        R = Vec<Outcome>,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = SeededRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;
pub type Node = openraft::BasicNode;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;

/// A storage error as openraft wants it, from any error of ours.
pub(crate) fn io_error(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    error: impl std::error::Error + 'static,
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(&error)).into()
}

#[cfg(test)]
mod tests;
