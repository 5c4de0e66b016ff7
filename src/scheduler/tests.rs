//! Tables of cluster views -> expected plans, and properties every plan must have.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

fn node(status: NodeStatus, tags: &[&str], capacity: Option<u32>) -> NodeView {
    NodeView {
        status,
        admin: AdminState::Active,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        capacity,
    }
}

fn up() -> NodeView {
    node(NodeStatus::Up, &[], None)
}

fn draining(status: NodeStatus) -> NodeView {
    NodeView {
        admin: AdminState::Draining,
        ..node(status, &[], None)
    }
}

fn server(replicas: u32, tags: &[&str]) -> ServerView {
    ServerView {
        replicas,
        node_tags: tags.iter().map(|t| t.to_string()).collect(),
    }
}

fn view(
    nodes: &[(NodeId, NodeView)],
    servers: &[(&str, ServerView)],
    assignments: &[(&str, u32, NodeId)],
) -> ClusterView {
    ClusterView {
        nodes: nodes.iter().cloned().collect(),
        servers: servers
            .iter()
            .map(|(name, s)| (name.to_string(), s.clone()))
            .collect(),
        assignments: assignments
            .iter()
            .map(|(s, slot, n)| ((s.to_string(), *slot), *n))
            .collect(),
    }
}

fn assign(server: &str, slot: u32, node: NodeId) -> Move {
    Move::Assign {
        server: server.into(),
        slot,
        node,
    }
}

fn unassign(server: &str, slot: u32) -> Move {
    Move::Unassign {
        server: server.into(),
        slot,
    }
}

#[test]
fn plans_for_cluster_views() {
    let three = [(1, up()), (2, up()), (3, up())];
    let cases: Vec<(&str, ClusterView, Vec<Move>)> = vec![
        (
            "two replicas go on the two least loaded nodes, lowest id first",
            view(&three, &[("time", server(2, &[]))], &[]),
            vec![assign("time", 0, 1), assign("time", 1, 2)],
        ),
        (
            "load is spread across servers",
            view(
                &three,
                &[
                    ("a", server(1, &[])),
                    ("b", server(1, &[])),
                    ("c", server(1, &[])),
                ],
                &[],
            ),
            vec![assign("a", 0, 1), assign("b", 0, 2), assign("c", 0, 3)],
        ),
        (
            "valid assignments stay where they are",
            view(
                &three,
                &[("time", server(2, &[]))],
                &[("time", 0, 3), ("time", 1, 2)],
            ),
            vec![],
        ),
        (
            "a replica on a down node moves to a node without one",
            view(
                &[(1, up()), (2, node(NodeStatus::Down, &[], None)), (3, up())],
                &[("time", server(2, &[]))],
                &[("time", 0, 1), ("time", 1, 2)],
            ),
            vec![assign("time", 1, 3)],
        ),
        (
            "a draining node is emptied",
            view(
                &[(1, up()), (2, draining(NodeStatus::Up)), (3, up())],
                &[("time", server(1, &[]))],
                &[("time", 0, 2)],
            ),
            vec![assign("time", 0, 1)],
        ),
        (
            "a draining node that died is emptied like any down node",
            view(
                &[(1, up()), (2, draining(NodeStatus::Down)), (3, up())],
                &[("time", server(2, &[]))],
                &[("time", 0, 2), ("time", 1, 3)],
            ),
            vec![assign("time", 0, 1)],
        ),
        (
            "a node that left the cluster is treated as down",
            view(
                &[(1, up()), (3, up())],
                &[("time", server(1, &[]))],
                &[("time", 0, 2)],
            ),
            vec![assign("time", 0, 1)],
        ),
        (
            "tags are honoured",
            view(
                &[
                    (1, up()),
                    (2, node(NodeStatus::Up, &["gpu", "eu"], None)),
                    (3, up()),
                ],
                &[("model", server(1, &["gpu"]))],
                &[],
            ),
            vec![assign("model", 0, 2)],
        ),
        (
            "capacity is honoured",
            view(
                &[(1, node(NodeStatus::Up, &[], Some(1))), (2, up())],
                &[
                    ("a", server(1, &[])),
                    ("b", server(1, &[])),
                    ("c", server(1, &[])),
                ],
                &[("a", 0, 1)],
            ),
            vec![assign("b", 0, 2), assign("c", 0, 2)],
        ),
        (
            "scaling down removes the highest slots",
            view(
                &three,
                &[("time", server(1, &[]))],
                &[("time", 0, 1), ("time", 1, 2), ("time", 2, 3)],
            ),
            vec![unassign("time", 1), unassign("time", 2)],
        ),
        (
            "a deleted server's replicas are removed",
            view(&three, &[], &[("gone", 0, 1)]),
            vec![unassign("gone", 0)],
        ),
        (
            "two slots on one node: the lower slot keeps it",
            view(
                &three,
                &[("time", server(2, &[]))],
                &[("time", 0, 2), ("time", 1, 2)],
            ),
            vec![assign("time", 1, 1)],
        ),
        (
            "more replicas than nodes: the rest stay unplaced",
            view(&[(1, up()), (2, up())], &[("time", server(3, &[]))], &[]),
            vec![assign("time", 0, 1), assign("time", 1, 2)],
        ),
    ];
    for (name, input, expected) in cases {
        assert_eq!(plan(&input).moves, expected, "{name}");
    }
}

#[test]
fn unplaced_slots_say_why() {
    let no_nodes = view(
        &[(1, node(NodeStatus::Down, &[], None))],
        &[("t", server(1, &[]))],
        &[],
    );
    assert_eq!(
        plan(&no_nodes).unplaced[&("t".into(), 0)],
        Unplaced::NoNodeUp
    );
    let no_tags = view(&[(1, up())], &[("t", server(1, &["gpu"]))], &[]);
    assert_eq!(
        plan(&no_tags).unplaced[&("t".into(), 0)],
        Unplaced::NoNodeWithTags(vec!["gpu".into()])
    );
    let too_few = view(&[(1, up())], &[("t", server(2, &[]))], &[]);
    let result = plan(&too_few);
    assert_eq!(result.unplaced[&("t".into(), 1)], Unplaced::NoRoom);
    assert!(!result.unplaced.contains_key(&("t".into(), 0)));
}

#[test]
fn the_registry_view_carries_node_capacity() {
    use crate::registry::{Command, Registry, ServerSpec};
    let mut registry = Registry::default();
    for (id, capacity) in [(1, Some(1)), (2, None)] {
        registry.apply(&Command::RegisterNode {
            id,
            addr: format!("127.0.0.1:{}", 7700 + id),
            tags: vec![],
            capacity,
            incarnation: id,
        });
    }
    for name in ["a", "b", "c"] {
        registry.apply(&Command::PutServer {
            spec: ServerSpec::stdio(name, "cmd", &[]),
            expected_revision: None,
        });
    }
    let view = ClusterView::from_registry(&registry);
    assert_eq!(view.nodes[&1].capacity, Some(1));
    let after = apply(&view, &plan(&view));
    let on_node_one = after.assignments.values().filter(|n| **n == 1).count();
    assert_eq!(
        on_node_one, 1,
        "node 1 holds at most its capacity: {after:?}"
    );
    assert_eq!(after.assignments.len(), 3);
}

fn arbitrary_view() -> impl Strategy<Value = ClusterView> {
    let tags = prop::sample::subsequence(vec!["gpu", "eu"], 0..=2);
    let status = prop_oneof![
        4 => Just((NodeStatus::Up, AdminState::Active)),
        1 => Just((NodeStatus::Down, AdminState::Active)),
        1 => Just((NodeStatus::Up, AdminState::Draining)),
        1 => Just((NodeStatus::Down, AdminState::Draining)),
    ];
    let nodes = prop::collection::btree_map(
        1u64..8,
        (status, tags.clone(), prop::option::of(0u32..4)),
        0..7,
    );
    let servers = prop::collection::btree_map(
        prop::sample::select(vec!["a", "b", "c", "d", "e"]),
        (0u32..5, prop::sample::subsequence(vec!["gpu", "eu"], 0..=1)),
        0..5,
    );
    let assignments = prop::collection::btree_map(
        (prop::sample::select(vec!["a", "b", "c", "d", "z"]), 0u32..5),
        1u64..9,
        0..12,
    );
    (nodes, servers, assignments).prop_map(|(nodes, servers, assignments)| ClusterView {
        nodes: nodes
            .into_iter()
            .map(|(id, ((status, admin), tags, capacity))| {
                (
                    id,
                    NodeView {
                        admin,
                        ..node(status, &tags, capacity)
                    },
                )
            })
            .collect(),
        servers: servers
            .into_iter()
            .map(|(name, (replicas, tags))| (name.to_string(), server(replicas, &tags)))
            .collect(),
        assignments: assignments
            .into_iter()
            .map(|((s, slot), n)| ((s.to_string(), slot), n))
            .collect(),
    })
}

proptest! {
    #[test]
    fn every_plan_keeps_the_rules(input in arbitrary_view()) {
        let result = plan(&input);
        let after = apply(&input, &result);
        let mut load: BTreeMap<NodeId, u32> = BTreeMap::new();
        let mut nodes_of: BTreeMap<&str, BTreeSet<NodeId>> = BTreeMap::new();
        for ((server, slot), node) in &after.assignments {
            let spec = &input.servers[server];
            let view = &input.nodes[node];
            // Never more replicas than asked for, never on a node that is not up or
            // lacks a tag, never two of one server on one node.
            prop_assert!(*slot < spec.replicas);
            prop_assert!(view.accepts_replicas());
            prop_assert!(spec.node_tags.is_subset(&view.tags));
            prop_assert!(nodes_of.entry(server.as_str()).or_default().insert(*node));
            *load.entry(*node).or_default() += 1;
        }
        for (node, count) in &load {
            if let Some(limit) = input.nodes[node].capacity {
                prop_assert!(*count <= limit, "node {} runs {} > {}", node, count, limit);
            }
        }
        // Every slot is placed or says why not.
        for (server, spec) in &input.servers {
            for slot in 0..spec.replicas {
                let key = (server.clone(), slot);
                prop_assert!(after.assignments.contains_key(&key) != result.unplaced.contains_key(&key));
            }
        }
        // Minimal moves: an assignment that already kept every rule is not touched.
        let kept_input = plan(&after);
        prop_assert!(kept_input.is_empty(), "a second plan moves {:?}", kept_input.moves);
        for ((server, slot), node) in &input.assignments {
            let still_valid = after.assignments.get(&(server.clone(), *slot)) == Some(node);
            let could_stay = input.servers.get(server).is_some_and(|s| *slot < s.replicas)
                && input.nodes.get(node).is_some_and(|n| n.accepts_replicas() && n.capacity.is_none())
                && input.servers[server].node_tags.is_subset(&input.nodes[node].tags)
                && !input.assignments.iter().any(|((s, other), n)| s == server && other < slot && n == node);
            if could_stay {
                prop_assert!(still_valid, "{}/{} on node {} was moved", server, slot, node);
            }
        }
        // Deterministic.
        prop_assert_eq!(plan(&input), result);
    }
}
