//! The router's choices, as a table of registry states -> ordered candidates.

use super::*;
use crate::registry::{
    AdminState, Assignment, BreakerState, NodeRecord, NodeStatus, ReplicaHealth, ReplicaState,
    ServerSpec,
};

fn node(id: NodeId, status: NodeStatus) -> NodeRecord {
    NodeRecord {
        id,
        addr: format!("127.0.0.1:{}", 7700 + id),
        tags: vec![],
        status,
        admin: AdminState::Active,
        capacity: None,
        incarnation: 0,
    }
}

/// Server "s" with one slot per entry: (node, state, breaker).
fn fleet(slots: &[(NodeId, ReplicaState, BreakerState)], down: &[NodeId]) -> Registry {
    let mut registry = Registry::default();
    for id in 1..=3 {
        let status = if down.contains(&id) {
            NodeStatus::Down
        } else {
            NodeStatus::Up
        };
        registry.nodes.insert(id, node(id, status));
    }
    let mut spec = ServerSpec::stdio("s", "echo", &[]);
    spec.replicas = slots.len() as u32;
    registry.servers.insert(
        "s".into(),
        crate::registry::ServerRecord {
            spec,
            create_revision: 1,
            mod_revision: 1,
            transport_revision: 1,
        },
    );
    for (slot, (node_id, state, breaker)) in slots.iter().enumerate() {
        let slot = slot as u32;
        registry.assignments.insert(
            ("s".into(), slot),
            Assignment {
                server: "s".into(),
                slot,
                node_id: *node_id,
                epoch: 10 + u64::from(slot),
            },
        );
        registry.health.insert(
            ("s".into(), slot),
            ReplicaHealth {
                node_id: *node_id,
                transport_revision: 1,
                state: *state,
                breaker: *breaker,
                restarts: 0,
                last_error: None,
                probe_latency_ms: None,
            },
        );
    }
    registry
}

use BreakerState::{Closed, Open};
use ReplicaState::{Healthy, Starting, Unhealthy};

#[test]
fn picks_healthy_replicas_local_first_then_least_loaded() {
    // (what, slots, down nodes, calls in flight per node, expected (node, slot) order)
    type Slots = &'static [(NodeId, ReplicaState, BreakerState)];
    type Case = (
        &'static str,
        Slots,
        &'static [NodeId],
        [usize; 3],
        &'static [(NodeId, u32)],
    );
    let cases: &[Case] = &[
        (
            "local first, though busier",
            &[(2, Healthy, Closed), (1, Healthy, Closed)],
            &[],
            [5, 0, 0],
            &[(1, 1), (2, 0)],
        ),
        (
            "then the fewest calls in flight",
            &[(2, Healthy, Closed), (3, Healthy, Closed)],
            &[],
            [0, 4, 1],
            &[(3, 1), (2, 0)],
        ),
        (
            "equal load: the lower slot",
            &[(3, Healthy, Closed), (2, Healthy, Closed)],
            &[],
            [0, 0, 0],
            &[(3, 0), (2, 1)],
        ),
        (
            "not healthy, or breaker open: skipped",
            &[
                (1, Starting, Closed),
                (2, Unhealthy, Closed),
                (3, Healthy, Open),
            ],
            &[],
            [0, 0, 0],
            &[],
        ),
        (
            "a down node: skipped, whatever its last report",
            &[(2, Healthy, Closed), (3, Healthy, Closed)],
            &[2],
            [0, 0, 0],
            &[(3, 1)],
        ),
    ];
    for (what, slots, down, load, expected) in cases {
        let registry = fleet(slots, down);
        let got: Vec<(NodeId, u32)> =
            candidates(&registry, "s", 1, |node, _| load[(node - 1) as usize])
                .iter()
                .map(|c| (c.node, c.slot))
                .collect();
        assert_eq!(&got, expected, "{what}");
    }
}

#[test]
fn candidates_carry_the_assignment_epoch_and_address() {
    let registry = fleet(&[(2, Healthy, Closed)], &[]);
    let got = candidates(&registry, "s", 1, |_, _| 0);
    assert_eq!(
        got,
        vec![Candidate {
            node: 2,
            addr: "127.0.0.1:7702".into(),
            slot: 0,
            epoch: 10,
        }]
    );
    assert!(candidates(&registry, "other", 1, |_, _| 0).is_empty());
    // A report from a node the slot has left does not count.
    let mut moved = registry.clone();
    moved
        .assignments
        .get_mut(&("s".to_string(), 0))
        .unwrap()
        .node_id = 3;
    assert!(candidates(&moved, "s", 1, |_, _| 0).is_empty());
}

#[test]
fn an_unavailable_server_says_why_slot_by_slot() {
    let mut registry = fleet(
        &[(2, ReplicaState::CrashLoop, Closed), (3, Healthy, Open)],
        &[3],
    );
    registry
        .health
        .get_mut(&("s".to_string(), 0))
        .unwrap()
        .last_error = Some("exit status 3".into());
    assert_eq!(
        why_unavailable(&registry, "s"),
        "slot 0 on node 2: crash-loop (last error: exit status 3); \
         slot 1 on node 3: healthy, node not up, breaker open"
    );
    assert_eq!(
        why_unavailable(&registry, "other"),
        "no replica is placed (no node can run it)"
    );
}
