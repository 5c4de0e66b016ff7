//! The scheduler: from a view of the cluster, plans where each server's replicas run.
//!
//! Pure and deterministic: the same view always gives the same plan (ordered maps only,
//! ties broken by node id). It owns no state and does no I/O; the leader feeds it the
//! registry and proposes its plan through Raft.
//!
//! Rules, in order:
//! 1. A replica may run only on a node that is up and active (not draining), carries every tag the server asks
//!    for, and has room (its capacity, if it has one).
//! 2. Replicas of one server sit on distinct nodes. A slot for which no such node exists
//!    stays unplaced, with the reason, rather than doubling up.
//! 3. As little as possible moves: an assignment that satisfies 1 and 2 is kept.
//! 4. New replicas go to the eligible node with the fewest replicas (then the lowest id).

use std::collections::{BTreeMap, BTreeSet};

use crate::registry::{AdminState, NodeId, NodeStatus, Placement, Registry};

#[cfg(test)]
mod tests;

/// What the scheduler knows of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub status: NodeStatus,
    pub admin: AdminState,
    pub tags: BTreeSet<String>,
    /// Most replicas the node may run; `None` is no limit.
    pub capacity: Option<u32>,
}

/// What the scheduler knows of one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerView {
    pub replicas: u32,
    /// Tags a node must carry (all of them).
    pub node_tags: BTreeSet<String>,
}

/// The input of a plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub nodes: BTreeMap<NodeId, NodeView>,
    pub servers: BTreeMap<String, ServerView>,
    /// (server, slot) -> node.
    pub assignments: BTreeMap<(String, u32), NodeId>,
}

impl ClusterView {
    /// The view of `registry`.
    pub fn from_registry(registry: &Registry) -> ClusterView {
        ClusterView {
            nodes: registry
                .nodes
                .iter()
                .map(|(id, node)| {
                    let view = NodeView {
                        status: node.status,
                        admin: node.admin,
                        tags: node.tags.iter().cloned().collect(),
                        capacity: node.capacity,
                    };
                    (*id, view)
                })
                .collect(),
            servers: registry
                .servers
                .iter()
                .map(|(name, record)| {
                    let view = ServerView {
                        replicas: record.spec.replicas,
                        node_tags: record.spec.node_tags.iter().cloned().collect(),
                    };
                    (name.clone(), view)
                })
                .collect(),
            assignments: registry
                .assignments
                .iter()
                .map(|(key, assignment)| (key.clone(), assignment.node_id))
                .collect(),
        }
    }
}

/// One change to the assignments.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Move {
    /// Slot `slot` of `server` goes to `node` (from wherever it was, if anywhere).
    Assign {
        server: String,
        slot: u32,
        node: NodeId,
    },
    /// Slot `slot` of `server` runs nowhere.
    Unassign { server: String, slot: u32 },
}

/// Why a slot could not be placed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unplaced {
    #[error("no node is up and active")]
    NoNodeUp,
    #[error("no node that is up and active carries the tags {0:?}")]
    NoNodeWithTags(Vec<String>),
    #[error("every eligible node already runs a replica of this server or is full")]
    NoRoom,
}

/// What the scheduler decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The changes: assignments, then unassignments, each in (server, slot) order.
    pub moves: Vec<Move>,
    /// Slots left without a node, and why.
    pub unplaced: BTreeMap<(String, u32), Unplaced>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.moves.is_empty()
    }

    /// The moves as the registry's `Command::ApplyPlan` takes them.
    pub fn placements(&self) -> Vec<Placement> {
        self.moves
            .iter()
            .map(|change| match change {
                Move::Assign { server, slot, node } => Placement {
                    server: server.clone(),
                    slot: *slot,
                    node: Some(*node),
                },
                Move::Unassign { server, slot } => Placement {
                    server: server.clone(),
                    slot: *slot,
                    node: None,
                },
            })
            .collect()
    }
}

impl NodeView {
    /// Up and not draining.
    fn accepts_replicas(&self) -> bool {
        self.status == NodeStatus::Up && self.admin == AdminState::Active
    }
}

/// Whether `node` may run a replica of `server` at all (rules 1, without room).
fn eligible(node: &NodeView, server: &ServerView) -> bool {
    node.accepts_replicas() && server.node_tags.is_subset(&node.tags)
}

/// The plan for the registry's current state.
pub fn plan_registry(registry: &Registry) -> Plan {
    plan(&ClusterView::from_registry(registry))
}

/// Plans the assignments for `view`.
pub fn plan(view: &ClusterView) -> Plan {
    // Replicas each node runs under the plan being built.
    let mut load: BTreeMap<NodeId, u32> = view.nodes.keys().map(|id| (*id, 0)).collect();
    let has_room = |load: &BTreeMap<NodeId, u32>, id: NodeId| {
        let node = &view.nodes[&id];
        node.capacity.is_none_or(|limit| load[&id] < limit)
    };
    // Rules 1-3: keep what is valid, in (server, slot) order, so that when two slots
    // of one server share a node (or a node is over capacity) the lower slot keeps it.
    let mut placed: BTreeMap<(String, u32), NodeId> = BTreeMap::new();
    // The nodes each server's kept or placed slots are on (rule 2), so that no round
    // scans every slot per slot.
    let mut used: BTreeMap<&str, BTreeSet<NodeId>> = BTreeMap::new();
    for ((server, slot), node) in &view.assignments {
        let Some(spec) = view.servers.get(server) else {
            continue;
        };
        let on = used.entry(server.as_str()).or_default();
        let valid = *slot < spec.replicas
            && view.nodes.get(node).is_some_and(|n| eligible(n, spec))
            && !on.contains(node)
            && has_room(&load, *node);
        if valid {
            *load.get_mut(node).expect("eligible nodes are in the view") += 1;
            on.insert(*node);
            placed.insert((server.clone(), *slot), *node);
        }
    }
    // Rule 4: place every slot that is not kept.
    let mut unplaced = BTreeMap::new();
    for (server, spec) in &view.servers {
        for slot in 0..spec.replicas {
            let key = (server.clone(), slot);
            if placed.contains_key(&key) {
                continue;
            }
            let on = used.entry(server.as_str()).or_default();
            let choice = view
                .nodes
                .iter()
                .filter(|(id, node)| {
                    eligible(node, spec) && !on.contains(id) && has_room(&load, **id)
                })
                .min_by_key(|(id, _)| (load[id], **id))
                .map(|(id, _)| *id);
            match choice {
                Some(node) => {
                    *load.get_mut(&node).expect("chosen from the view") += 1;
                    on.insert(node);
                    placed.insert(key, node);
                }
                None => {
                    unplaced.insert(key, why_unplaced(view, spec));
                }
            }
        }
    }
    // The moves: what differs between the current assignments and the plan.
    let mut moves = Vec::new();
    for (key, node) in &placed {
        if view.assignments.get(key) != Some(node) {
            moves.push(Move::Assign {
                server: key.0.clone(),
                slot: key.1,
                node: *node,
            });
        }
    }
    for key in view.assignments.keys() {
        if !placed.contains_key(key) {
            moves.push(Move::Unassign {
                server: key.0.clone(),
                slot: key.1,
            });
        }
    }
    moves.sort();
    Plan { moves, unplaced }
}

fn why_unplaced(view: &ClusterView, spec: &ServerView) -> Unplaced {
    let up: Vec<&NodeView> = view
        .nodes
        .values()
        .filter(|n| n.accepts_replicas())
        .collect();
    if up.is_empty() {
        Unplaced::NoNodeUp
    } else if !up.iter().any(|n| spec.node_tags.is_subset(&n.tags)) {
        Unplaced::NoNodeWithTags(spec.node_tags.iter().cloned().collect())
    } else {
        Unplaced::NoRoom
    }
}

/// `view` with `plan`'s moves carried out: what the registry holds once they commit.
pub fn apply(view: &ClusterView, plan: &Plan) -> ClusterView {
    let mut next = view.clone();
    for change in &plan.moves {
        match change {
            Move::Assign { server, slot, node } => {
                next.assignments.insert((server.clone(), *slot), *node);
            }
            Move::Unassign { server, slot } => {
                next.assignments.remove(&(server.clone(), *slot));
            }
        }
    }
    next
}
