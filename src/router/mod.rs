//! The router: which replica a tool call goes to. Pure policy over the registry's
//! applied state and the caller's counts of calls in flight; no I/O.
//!
//! - Only replicas reported healthy, on nodes that are up, under their current
//!   assignment, whose breaker is not reported open.
//! - The local replica first (no network hop), then the fewest calls in flight, then
//!   the lowest slot (so equal choices are deterministic).
//!
//! The caller tries them in order, and moves on to the next only when a call provably
//! never reached the server (see `gateway`).

use crate::registry::{BreakerState, NodeId, NodeStatus, Registry, ReplicaState};

/// One replica a call may go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub node: NodeId,
    /// The node's API address (for a remote call).
    pub addr: String,
    pub slot: u32,
    /// The assignment's epoch: the fencing token the call carries.
    pub epoch: u64,
}

/// The replicas of `server` that may take a call now, best first. `in_flight` tells
/// the calls the caller has in flight on a (node, slot).
pub fn candidates(
    registry: &Registry,
    server: &str,
    me: NodeId,
    in_flight: impl Fn(NodeId, u32) -> usize,
) -> Vec<Candidate> {
    let mut found: Vec<(bool, usize, Candidate)> = registry
        .assignments
        .range((server.to_string(), 0)..=(server.to_string(), u32::MAX))
        .filter_map(|((_, slot), assignment)| {
            let health = registry.health.get(&(server.to_string(), *slot))?;
            let node = registry.nodes.get(&assignment.node_id)?;
            let usable = health.node_id == assignment.node_id
                && health.state == ReplicaState::Healthy
                && health.breaker != BreakerState::Open
                && node.status == NodeStatus::Up;
            usable.then(|| {
                (
                    assignment.node_id != me,
                    in_flight(assignment.node_id, *slot),
                    Candidate {
                        node: assignment.node_id,
                        addr: node.addr.clone(),
                        slot: *slot,
                        epoch: assignment.epoch,
                    },
                )
            })
        })
        .collect();
    found.sort_by_key(|(remote, load, c)| (*remote, *load, c.slot));
    found.into_iter().map(|(_, _, c)| c).collect()
}

/// Why no replica of `server` may take a call, one clause per slot, for the caller's
/// error (a server in crash-loop says so, with its last error).
pub fn why_unavailable(registry: &Registry, server: &str) -> String {
    let clauses: Vec<String> = registry
        .assignments
        .range((server.to_string(), 0)..=(server.to_string(), u32::MAX))
        .map(|((_, slot), assignment)| {
            let node = assignment.node_id;
            let down = registry
                .nodes
                .get(&node)
                .is_none_or(|n| n.status != NodeStatus::Up);
            let Some(health) = registry
                .health
                .get(&(server.to_string(), *slot))
                .filter(|h| h.node_id == node)
            else {
                return format!("slot {slot} on node {node}: not reported yet");
            };
            let mut clause = format!("slot {slot} on node {node}: {}", state_name(health.state));
            if down {
                clause.push_str(", node not up");
            }
            if health.breaker == BreakerState::Open {
                clause.push_str(", breaker open");
            }
            if let Some(error) = &health.last_error {
                clause.push_str(&format!(" (last error: {error})"));
            }
            clause
        })
        .collect();
    if clauses.is_empty() {
        "no replica is placed (no node can run it)".to_string()
    } else {
        clauses.join("; ")
    }
}

fn state_name(state: ReplicaState) -> &'static str {
    match state {
        ReplicaState::Starting => "starting",
        ReplicaState::Healthy => "healthy",
        ReplicaState::Unhealthy => "unhealthy",
        ReplicaState::Backoff => "restarting after a failure",
        ReplicaState::CrashLoop => "crash-loop",
        ReplicaState::Stopped => "stopped",
    }
}

#[cfg(test)]
mod tests;
