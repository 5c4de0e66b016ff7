//! A window into a running node for a test harness: the simulator's checkers read every
//! node's Raft metrics and applied state through it. It only observes.

use std::sync::Arc;

use super::{Node, NodeId, RegistryView};
use crate::registry::LogPosition;

/// What the node's Raft reports about itself.
pub type RaftMetrics = openraft::RaftMetrics<NodeId, Node>;

pub trait Probe: Send + Sync + 'static {
    /// Called at every start of node `id`, once its Raft and state machine exist.
    fn node_started(
        &self,
        id: NodeId,
        metrics: tokio::sync::watch::Receiver<RaftMetrics>,
        view: Arc<RegistryView>,
    );

    /// Called when node `id` applies a placement plan made in `planned_term`, carried by
    /// the log entry at `entry`; `accepted` says whether the registry took it, and
    /// `placements` is the plan's size.
    fn plan_applied(
        &self,
        _id: NodeId,
        _planned_term: u64,
        _entry: LogPosition,
        _placements: usize,
        _accepted: bool,
    ) {
    }

    /// Called when node `leader` takes in a heartbeat of `bytes` (encoded) as the leader.
    fn heartbeat_received(&self, _leader: NodeId, _bytes: usize) {}
}
