//! The leader's control loop: node liveness and placement.
//!
//! Agents heartbeat the leader outside the Raft log; the leader remembers when it last
//! heard from each node. While this node leads, one task confirms its leadership with a
//! quorum every tick (a heartbeat renews a lease only if that happened within
//! `LEASE_CONFIRM_MS`), and the control loop, every tick while the confirmation is
//! fresh:
//! 1. registers nodes it hears from that the registry lacks (or whose address, tags or
//!    capacity changed);
//! 2. marks down nodes silent past `node_timeout_ms` (whatever their admin state: a
//!    draining node that dies is down), and up again those it hears from. A new leader
//!    counts every node as heard at the moment it took over: one timeout of grace. Nodes
//!    that left the membership are removed from the node table;
//! 3. asks the pure scheduler for a plan and proposes it stamped with its term.
//!
//! Every proposal is made on this node only (never forwarded): if it is no longer the
//! leader the proposal fails, and a plan that reaches the log in a later term is
//! rejected by the registry.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::timing::LEASE_CONFIRM_MS;
use super::{LeaderError, LeaderOpResult, NodeHandle};
use crate::env::bugs::{self, Bug};
use crate::raft::{NodeId, Proposal, RequestId};
use crate::registry::{AdminState, Command, NodeStatus, Outcome};
use crate::scheduler;

/// How often the control loop runs.
const TICK_MS: u64 = 100;

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
    /// The slots the node runs or is still stopping, as (server, slot).
    pub running: BTreeSet<(String, u32)>,
    /// The node started so recently that servers an earlier run of it left behind
    /// (it crashed, or was killed) may still live until their old fence deadline:
    /// `running` does not cover those, so no slot is handed over on its word yet.
    pub orphans_possible: bool,
}

/// The leader's answer to a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    pub term: u64,
    /// The leader's applied index when it answered: the agent starts no replica until
    /// its own registry has caught up with this, so it never acts on assignments older
    /// than the leader's.
    pub applied_index: u64,
}

struct Heard {
    at: Instant,
    heartbeat: Heartbeat,
}

/// The leader-side liveness state, shared by the API (heartbeats) and the loop.
#[derive(Default)]
pub struct Liveness {
    heard: BTreeMap<NodeId, Heard>,
    /// When the last quorum confirmation that succeeded began.
    confirmed_at: Option<Instant>,
    /// Nodes this leader is marking down right now: they get no lease meanwhile.
    marking_down: BTreeSet<NodeId>,
}

impl Liveness {
    /// Forgets what node `id` said (it left the cluster).
    pub(super) fn forget(&mut self, id: NodeId) {
        self.heard.remove(&id);
    }
}

impl NodeHandle {
    /// Handles a heartbeat on the leader: records it, and grants a lease if this node
    /// led with a quorum's confirmation moments ago.
    pub(super) fn receive_heartbeat(
        &self,
        heartbeat: Heartbeat,
    ) -> Result<LeaderOpResult, LeaderError> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(self.id()) {
            return Err(LeaderError::NotLeader {
                leader: self.known_leader(),
            });
        }
        // A node removed from the cluster gets no lease: it stops its replicas, and the
        // leader marks it down after the timeout like any silent node.
        if !self.members().iter().any(|m| m.id == heartbeat.id) {
            return Err(LeaderError::Rejected(format!(
                "node {} is not a member of the cluster",
                heartbeat.id
            )));
        }
        let id = heartbeat.id;
        // A node that came back on a wiped data dir must not take part under its old id.
        self.incarnations
            .check(id, heartbeat.incarnation)
            .map_err(LeaderError::Replaced)?;
        // Read before the liveness lock is taken (locks in one order: view, liveness).
        let status = self.view.read().registry.nodes.get(&id).map(|n| n.status);
        let now = Instant::now();
        let mut liveness = self
            .liveness
            .lock()
            .map_err(|_| LeaderError::Failed("liveness state poisoned".into()))?;
        liveness.heard.insert(id, Heard { at: now, heartbeat });
        let fresh = liveness
            .confirmed_at
            .is_some_and(|at| now.duration_since(at) < Duration::from_millis(LEASE_CONFIRM_MS));
        if !fresh {
            return Err(LeaderError::NotLeader { leader: None });
        }
        // A node that is down (or being marked down) may have had its replicas moved:
        // it gets a lease only once it is up again, which the leader records after the
        // moves, so the node sees them before it starts anything.
        if liveness.marking_down.contains(&id) || status != Some(NodeStatus::Up) {
            return Err(LeaderError::Rejected(format!(
                "node {id} is not up in the registry yet"
            )));
        }
        Ok(LeaderOpResult::Lease(LeaseGrant {
            term: metrics.current_term,
            applied_index: metrics.last_applied.map_or(0, |id| id.index),
        }))
    }

    /// Commits `command` through this node's proposer only if it leads.
    pub(super) async fn propose_here(&self, command: Command) -> Result<Outcome, LeaderError> {
        let proposal = Proposal {
            id: RequestId {
                node: self.id(),
                boot: self.boot,
                seq: self.next_request.fetch_add(1, Ordering::Relaxed),
            },
            command,
        };
        let commit = self.proposer.propose(proposal);
        tokio::time::timeout(self.request_timeout(), commit)
            .await
            .map_err(|_| LeaderError::Failed("timed out".into()))?
    }
}

/// Confirms this node's leadership with a quorum every tick while it leads, for the
/// leases it grants. Apart from the control loop, so that a slow proposal there never
/// lets the leases of the whole cluster run out.
async fn confirm(handle: Arc<NodeHandle>) {
    let mut shutdown = handle.shutdown.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        if handle.raft.metrics().borrow().current_leader != Some(handle.id()) {
            continue;
        }
        let started = Instant::now();
        let confirm = tokio::time::timeout(
            Duration::from_millis(LEASE_CONFIRM_MS),
            handle.raft.ensure_linearizable(),
        );
        if let Ok(Ok(_)) = confirm.await {
            if let Ok(mut liveness) = handle.liveness.lock() {
                liveness.confirmed_at = Some(started);
            }
        }
    }
}

/// Runs the control loop (and the leadership confirmations) until the node shuts down.
pub(super) async fn run(handle: Arc<NodeHandle>) {
    let confirmations = tokio::spawn(confirm(handle.clone()));
    control(handle).await;
    let _ = confirmations.await;
}

async fn control(handle: Arc<NodeHandle>) {
    let mut shutdown = handle.shutdown.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The term this node leads and when it took over.
    let mut leading: Option<(u64, Instant)> = None;
    // The term this node led last and when it lost it (only the AcceptStalePlan bug
    // uses it).
    let mut deposed: Option<(u64, Instant)> = None;
    // Slots this leader released from a live node, with an index at or after the
    // release; and its last log index when it took over (which covers the releases of
    // earlier leaders).
    let mut released: BTreeMap<(String, u32), u64> = BTreeMap::new();
    let mut taken_over_at = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let metrics = handle.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(handle.id()) {
            if let Some((term, _)) = leading.take() {
                if let Ok(mut liveness) = handle.liveness.lock() {
                    *liveness = Liveness::default();
                }
                deposed = Some((term, Instant::now()));
            }
            if bugs::active(Bug::AcceptStalePlan) {
                propose_as_deposed(&handle, &mut deposed).await;
            }
            continue;
        }
        let term = metrics.current_term;
        let since = match leading {
            Some((leading_term, since)) if leading_term == term => since,
            _ => {
                // A new term: nodes heard in an earlier one count for nothing.
                if let Ok(mut liveness) = handle.liveness.lock() {
                    liveness.heard.clear();
                }
                let now = Instant::now();
                leading = Some((term, now));
                released.clear();
                taken_over_at = metrics.last_log_index.unwrap_or(0);
                now
            }
        };
        // Act only on a leadership a quorum confirmed moments ago (see `confirm`).
        let confirmed = handle.liveness.lock().ok().and_then(|l| l.confirmed_at);
        let stale = Duration::from_millis(LEASE_CONFIRM_MS);
        if confirmed.is_none_or(|at| at.elapsed() >= stale) {
            continue;
        }
        for command in liveness_commands(&handle, since) {
            if let Err(error) = handle.propose_here(command).await {
                tracing::debug!(%error, "liveness proposal failed");
                break;
            }
        }
        if let Ok(mut liveness) = handle.liveness.lock() {
            liveness.marking_down.clear();
        }
        let placements = {
            let state = handle.view.read();
            let plan = scheduler::plan_registry(&state.registry);
            let Ok(liveness) = handle.liveness.lock() else {
                continue;
            };
            hand_over(&plan, &state.registry, &liveness, &released, taken_over_at)
        };
        if !placements.is_empty() {
            let releases: Vec<(String, u32)> = placements
                .iter()
                .filter(|p| p.node.is_none())
                .map(|p| (p.server.clone(), p.slot))
                .collect();
            tracing::info!(term, moves = placements.len(), "proposing placement plan");
            match handle
                .propose_here(Command::ApplyPlan { term, placements })
                .await
            {
                Ok(Outcome::Rejected(error)) => tracing::warn!(%error, "plan rejected"),
                Ok(Outcome::Applied { .. }) => {
                    // At or after the entry that released them.
                    let index = handle
                        .raft
                        .metrics()
                        .borrow()
                        .last_applied
                        .map_or(0, |l| l.index);
                    for slot in releases {
                        released.insert(slot, index);
                    }
                }
                Err(error) => tracing::debug!(%error, "plan not committed"),
            }
        }
    }
}

/// The AcceptStalePlan bug: for two seconds after losing leadership, a node keeps
/// planning from its own view and sends its plans, stamped with the term it led, to
/// whoever leads now.
async fn propose_as_deposed(handle: &NodeHandle, deposed: &mut Option<(u64, Instant)>) {
    let Some((term, at)) = *deposed else { return };
    if at.elapsed() > Duration::from_secs(2) {
        *deposed = None;
        return;
    }
    let plan = {
        let state = handle.view.read();
        scheduler::plan_registry(&state.registry)
    };
    if !plan.moves.is_empty() {
        let placements = plan.placements();
        let _ = handle
            .propose(Command::ApplyPlan { term, placements })
            .await;
    }
}

/// The plan's placements, made safe to hand over: a slot moves off a node that is not
/// down in two steps. First it is released (unassigned), and the old node stops it; it
/// is assigned again only once every node that is not down has said, in a heartbeat
/// since this leader took over, that it has applied the release and runs no such slot,
/// and that no server an earlier run of it left behind may still live.
/// (A node that is down has let its lease run out: fencing covers it.)
fn hand_over(
    plan: &scheduler::Plan,
    registry: &crate::registry::Registry,
    liveness: &Liveness,
    released: &BTreeMap<(String, u32), u64>,
    taken_over_at: u64,
) -> Vec<crate::registry::Placement> {
    use crate::registry::Placement;
    let mut placements = Vec::new();
    for placement in plan.placements() {
        let Some(to) = placement.node else {
            placements.push(placement);
            continue;
        };
        let key = (placement.server.clone(), placement.slot);
        let from = registry.assignments.get(&key).map(|a| a.node_id);
        let from_live = from.is_some_and(|node| {
            registry
                .nodes
                .get(&node)
                .is_some_and(|n| n.status != NodeStatus::Down)
        });
        if from_live && from != Some(to) {
            placements.push(Placement {
                node: None,
                ..placement
            });
            continue;
        }
        let since = released.get(&key).copied().unwrap_or(0).max(taken_over_at);
        let clear = registry
            .nodes
            .values()
            .filter(|n| n.status != NodeStatus::Down)
            .all(|n| {
                liveness.heard.get(&n.id).is_some_and(|heard| {
                    heard.heartbeat.applied >= since
                        && !heard.heartbeat.running.contains(&key)
                        && !heard.heartbeat.orphans_possible
                })
            });
        if clear {
            placements.push(placement);
        }
    }
    placements
}

/// The registrations and status changes the leader should propose now.
fn liveness_commands(handle: &NodeHandle, leading_since: Instant) -> Vec<Command> {
    let now = Instant::now();
    let timeout = Duration::from_millis(handle.config.node_timeout_ms);
    // Locks in one order everywhere: the registry view, then the liveness state.
    let state = handle.view.read();
    let Ok(mut liveness) = handle.liveness.lock() else {
        return Vec::new();
    };
    let nodes = &state.registry.nodes;
    let mut commands = Vec::new();
    // A node removed from the membership leaves the node table (and its slots move).
    let members: BTreeSet<NodeId> = handle.members().iter().map(|m| m.id).collect();
    for id in nodes.keys().filter(|id| !members.contains(id)) {
        tracing::info!(node = id, "removing a node that left the cluster");
        commands.push(Command::RemoveNode { id: *id });
    }
    // What a node that left said counts for nothing, should it join again.
    liveness.heard.retain(|id, _| members.contains(id));
    // Only what a node said lately registers it: a removed node's last heartbeat, from
    // an older data dir, must not bring its old record back.
    let recent = liveness
        .heard
        .iter()
        .filter(|(_, heard)| now.duration_since(heard.at) <= timeout);
    for (id, heard) in recent {
        let known = nodes.get(id);
        let changed = known.is_none_or(|node| {
            node.addr != heard.heartbeat.addr
                || node.tags != heard.heartbeat.tags
                || node.capacity != heard.heartbeat.capacity
                || node.incarnation != heard.heartbeat.incarnation
        });
        if changed {
            commands.push(Command::RegisterNode {
                id: *id,
                addr: heard.heartbeat.addr.clone(),
                tags: heard.heartbeat.tags.clone(),
                capacity: heard.heartbeat.capacity,
                incarnation: heard.heartbeat.incarnation,
            });
        }
    }
    // The grace a new leader gives: every node counts as heard when it took over.
    let grace_from = if bugs::active(Bug::NoLeaderGrace) {
        now.checked_sub(timeout * 2).unwrap_or(leading_since)
    } else {
        leading_since
    };
    for (id, node) in nodes.iter().filter(|(id, _)| members.contains(id)) {
        if bugs::active(Bug::DeadDrainBlocks) && node.admin == AdminState::Draining {
            continue;
        }
        let last = liveness
            .heard
            .get(id)
            .map_or(grace_from, |heard| heard.at.max(grace_from));
        let silent = now.duration_since(last) > timeout;
        let status = match node.status {
            NodeStatus::Up if silent => NodeStatus::Down,
            NodeStatus::Down if !silent && liveness.heard.contains_key(id) => NodeStatus::Up,
            _ => continue,
        };
        tracing::info!(node = id, ?status, "node liveness changed");
        if status == NodeStatus::Down {
            liveness.marking_down.insert(*id);
        }
        commands.push(Command::SetNodeStatus { id: *id, status });
    }
    commands
}
