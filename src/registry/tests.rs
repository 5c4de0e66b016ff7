//! Tables of commands -> expected state or error, and a replay property.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn put(spec: ServerSpec) -> Command {
    Command::PutServer {
        spec,
        expected_revision: None,
    }
}

/// One write of several servers, each with its precondition.
fn put_many(puts: Vec<(ServerSpec, Option<u64>)>) -> Command {
    Command::PutServers {
        puts: puts
            .into_iter()
            .map(|(spec, expected_revision)| ServerPut {
                spec,
                expected_revision,
            })
            .collect(),
    }
}

fn put_cas(spec: ServerSpec, expected: u64) -> Command {
    Command::PutServer {
        spec,
        expected_revision: Some(expected),
    }
}

fn delete(name: &str) -> Command {
    Command::DeleteServer {
        name: name.into(),
        expected_revision: None,
    }
}

fn token(id: &str, role: Role) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        name: "test".into(),
        role,
        servers: vec![],
        tools: vec![],
        secret_sha256: "a".repeat(64),
        create_revision: 0,
    }
}

fn echo(name: &str) -> ServerSpec {
    ServerSpec::stdio(name, "echo", &["hi"])
}

fn with<F: FnOnce(&mut ServerSpec)>(mut spec: ServerSpec, change: F) -> ServerSpec {
    change(&mut spec);
    spec
}

fn node(id: NodeId) -> NodeRecord {
    NodeRecord {
        id,
        addr: format!("127.0.0.1:{}", 7700 + id),
        tags: vec![],
        status: NodeStatus::Up,
        admin: AdminState::Active,
        capacity: None,
        incarnation: 0,
    }
}

/// Applies `setup`, then `command`; checks the outcome and the resulting revision
/// and server names.
struct Case {
    what: &'static str,
    setup: Vec<Command>,
    command: Command,
    expect: Result<u64, fn(&RegistryError) -> bool>,
    servers: Vec<&'static str>,
}

#[test]
fn command_table() {
    let cases = vec![
        Case {
            what: "put creates a server at revision 1",
            setup: vec![],
            command: put(echo("time")),
            expect: Ok(1),
            servers: vec!["time"],
        },
        Case {
            what: "put replaces and bumps the revision",
            setup: vec![put(echo("time"))],
            command: put(with(echo("time"), |s| s.replicas = 3)),
            expect: Ok(2),
            servers: vec!["time"],
        },
        Case {
            what: "compare-and-set with the current revision succeeds",
            setup: vec![put(echo("a")), put(echo("b"))],
            command: put_cas(echo("a"), 1),
            expect: Ok(3),
            servers: vec!["a", "b"],
        },
        Case {
            what: "compare-and-set on a stale revision is rejected",
            setup: vec![put(echo("a")), put(echo("a"))],
            command: put_cas(echo("a"), 1),
            expect: Err(|e| {
                matches!(
                    e,
                    RegistryError::RevisionMismatch {
                        expected: 1,
                        current: 2,
                        ..
                    }
                )
            }),
            servers: vec!["a"],
        },
        Case {
            what: "compare-and-set 0 creates only if absent",
            setup: vec![put(echo("a"))],
            command: put_cas(echo("a"), 0),
            expect: Err(|e| matches!(e, RegistryError::RevisionMismatch { .. })),
            servers: vec!["a"],
        },
        Case {
            what: "compare-and-set 0 creates when absent",
            setup: vec![],
            command: put_cas(echo("a"), 0),
            expect: Ok(1),
            servers: vec!["a"],
        },
        Case {
            what: "a write of several servers gives each its own revision",
            setup: vec![put(echo("a"))],
            command: put_many(vec![
                (echo("b"), Some(0)),
                (echo("a"), Some(1)),
                (echo("c"), None),
            ]),
            expect: Ok(4),
            servers: vec!["a", "b", "c"],
        },
        Case {
            what: "one failed precondition rejects the whole write",
            setup: vec![put(echo("a"))],
            command: put_many(vec![(echo("b"), Some(0)), (echo("a"), Some(0))]),
            expect: Err(|e| matches!(e, RegistryError::RevisionMismatch { .. })),
            servers: vec!["a"],
        },
        Case {
            what: "one invalid spec rejects the whole write",
            setup: vec![],
            command: put_many(vec![(echo("b"), None), (echo("bad name!"), None)]),
            expect: Err(|e| matches!(e, RegistryError::InvalidName { .. })),
            servers: vec![],
        },
        Case {
            what: "a write that names a server twice is refused",
            setup: vec![],
            command: put_many(vec![(echo("b"), None), (echo("b"), None)]),
            expect: Err(|e| matches!(e, RegistryError::InvalidWrite { .. })),
            servers: vec![],
        },
        Case {
            what: "an empty write is refused",
            setup: vec![],
            command: put_many(vec![]),
            expect: Err(|e| matches!(e, RegistryError::InvalidWrite { .. })),
            servers: vec![],
        },
        Case {
            what: "a write over the count per write is refused",
            setup: vec![],
            command: put_many(
                (0..=MAX_SERVERS_PER_WRITE)
                    .map(|i| (echo(&format!("s{i}")), None))
                    .collect(),
            ),
            expect: Err(|e| matches!(e, RegistryError::InvalidWrite { .. })),
            servers: vec![],
        },
        Case {
            what: "invalid name",
            setup: vec![],
            command: put(echo("bad name!")),
            expect: Err(|e| matches!(e, RegistryError::InvalidName { .. })),
            servers: vec![],
        },
        Case {
            what: "name starting with a dash",
            setup: vec![],
            command: put(echo("-x")),
            expect: Err(|e| matches!(e, RegistryError::InvalidName { .. })),
            servers: vec![],
        },
        Case {
            what: "empty command",
            setup: vec![],
            command: put(ServerSpec::stdio("a", "  ", &[])),
            expect: Err(|e| matches!(e, RegistryError::InvalidSpec { .. })),
            servers: vec![],
        },
        Case {
            what: "zero replicas",
            setup: vec![],
            command: put(with(echo("a"), |s| s.replicas = 0)),
            expect: Err(|e| matches!(e, RegistryError::InvalidSpec { .. })),
            servers: vec![],
        },
        Case {
            what: "replicas over the limit",
            setup: vec![],
            command: put(with(echo("a"), |s| s.replicas = MAX_REPLICAS + 1)),
            expect: Err(|e| matches!(e, RegistryError::InvalidSpec { .. })),
            servers: vec![],
        },
        Case {
            what: "a bulkhead of zero",
            setup: vec![],
            command: put(with(echo("a"), |s| s.max_concurrent_calls = 0)),
            expect: Err(|e| matches!(e, RegistryError::InvalidSpec { .. })),
            servers: vec![],
        },
        Case {
            what: "a bulkhead over the limit",
            setup: vec![],
            command: put(with(echo("a"), |s| {
                s.max_concurrent_calls = MAX_CONCURRENT_CALLS + 1
            })),
            expect: Err(|e| matches!(e, RegistryError::InvalidSpec { .. })),
            servers: vec![],
        },
        Case {
            what: "oversize spec",
            setup: vec![],
            command: put(with(echo("a"), |s| {
                s.transport = Transport::Stdio {
                    command: "x".repeat(MAX_SPEC_BYTES + 1),
                    args: vec![],
                    env: BTreeMap::new(),
                    cwd: None,
                }
            })),
            expect: Err(|e| matches!(e, RegistryError::InvalidSpec { .. })),
            servers: vec![],
        },
        Case {
            what: "http server with a url",
            setup: vec![],
            command: put(with(echo("web"), |s| {
                s.transport = Transport::Http {
                    url: "http://127.0.0.1:3001/mcp".into(),
                    headers: BTreeMap::new(),
                }
            })),
            expect: Ok(1),
            servers: vec!["web"],
        },
        Case {
            what: "http server without a host",
            setup: vec![],
            command: put(with(echo("web"), |s| {
                s.transport = Transport::Http {
                    url: "http:///mcp".into(),
                    headers: BTreeMap::new(),
                }
            })),
            expect: Err(|e| matches!(e, RegistryError::InvalidSpec { .. })),
            servers: vec![],
        },
        Case {
            what: "health timeout longer than the interval",
            setup: vec![],
            command: put(with(echo("a"), |s| s.health_check.timeout_ms = 10_000)),
            expect: Err(|e| matches!(e, RegistryError::InvalidSpec { .. })),
            servers: vec![],
        },
        Case {
            what: "delete removes the server",
            setup: vec![put(echo("a")), put(echo("b"))],
            command: delete("a"),
            expect: Ok(3),
            servers: vec!["b"],
        },
        Case {
            what: "delete of an unknown server",
            setup: vec![put(echo("a"))],
            command: delete("nope"),
            expect: Err(|e| matches!(e, RegistryError::ServerNotFound { .. })),
            servers: vec!["a"],
        },
        Case {
            what: "delete with a stale revision",
            setup: vec![put(echo("a")), put(echo("a"))],
            command: Command::DeleteServer {
                name: "a".into(),
                expected_revision: Some(1),
            },
            expect: Err(|e| matches!(e, RegistryError::RevisionMismatch { .. })),
            servers: vec!["a"],
        },
        Case {
            what: "put node",
            setup: vec![],
            command: Command::PutNode { node: node(1) },
            expect: Ok(1),
            servers: vec![],
        },
        Case {
            what: "remove an unknown node",
            setup: vec![Command::PutNode { node: node(1) }],
            command: Command::RemoveNode { id: 2 },
            expect: Err(|e| matches!(e, RegistryError::NodeNotFound { id: 2 })),
            servers: vec![],
        },
    ];
    for case in cases {
        let mut registry = Registry::default();
        for command in &case.setup {
            let (outcome, _) = registry.apply(command);
            assert!(
                matches!(outcome, Outcome::Applied { .. }),
                "{}: setup {outcome:?}",
                case.what
            );
        }
        let before = registry.clone();
        let (outcome, change) = registry.apply(&case.command);
        match (&case.expect, &outcome) {
            (Ok(revision), Outcome::Applied { revision: got }) => {
                assert_eq!(revision, got, "{}", case.what);
                assert_eq!(registry.revision, *revision, "{}", case.what);
            }
            (Err(check), Outcome::Rejected(error)) => {
                assert!(check(error), "{}: unexpected error {error}", case.what);
                assert_eq!(
                    registry, before,
                    "{}: a rejected command changed state",
                    case.what
                );
                assert!(change.is_empty(), "{}", case.what);
            }
            (expect, got) => panic!("{}: expected {:?}, got {got:?}", case.what, expect.is_ok()),
        }
        let names: Vec<&str> = registry.servers.keys().map(String::as_str).collect();
        assert_eq!(names, case.servers, "{}", case.what);
        registry.check_invariants().unwrap();
    }
}

#[test]
fn put_keeps_create_revision_and_reports_changes() {
    let mut registry = Registry::default();
    registry.apply(&put(echo("a")));
    registry.apply(&put(echo("b")));
    let (_, change) = registry.apply(&put(with(echo("a"), |s| s.replicas = 2)));
    let record = &registry.servers["a"];
    assert_eq!((record.create_revision, record.mod_revision), (1, 3));
    assert_eq!(change.iter().map(Change::revision).collect::<Vec<_>>(), [3]);
    let (_, change) = registry.apply(&delete("b"));
    assert_eq!(
        change,
        [Change::Delete {
            name: "b".into(),
            revision: 4
        }]
    );
    let (_, changes) = registry.apply(&put_many(vec![(echo("c"), None), (echo("a"), None)]));
    let written: Vec<(&str, u64)> = changes
        .iter()
        .map(|c| match c {
            Change::Put { record, revision } => (record.spec.name.as_str(), *revision),
            Change::Delete { .. } => panic!("{c:?}"),
        })
        .collect();
    assert_eq!(written, [("c", 5), ("a", 6)]);
    assert_eq!(registry.servers["a"].create_revision, 1);
}

#[test]
fn shrinking_replicas_drops_slots_beyond_the_new_count() {
    let mut registry = Registry::default();
    registry.apply(&Command::PutNode { node: node(1) });
    registry.apply(&Command::PutNode { node: node(2) });
    registry.apply(&put(with(echo("a"), |s| s.replicas = 2)));
    for (slot, node_id) in [(0, 1), (1, 2)] {
        registry.assignments.insert(
            ("a".into(), slot),
            Assignment {
                server: "a".into(),
                slot,
                node_id,
                epoch: 3,
            },
        );
    }
    registry.check_invariants().unwrap();
    registry.apply(&put(echo("a")));
    assert_eq!(registry.assignments.len(), 1);
    registry.apply(&Command::RemoveNode { id: 1 });
    assert!(registry.assignments.is_empty());
    registry.check_invariants().unwrap();
}

fn place(server: &str, slot: u32, node: Option<NodeId>) -> Placement {
    Placement {
        server: server.into(),
        slot,
        node,
    }
}

#[test]
fn plans_apply_only_in_the_term_that_made_them() {
    let mut registry = Registry::default();
    registry.apply(&Command::PutNode { node: node(1) });
    registry.apply(&Command::PutNode { node: node(2) });
    registry.apply(&Command::PutNode {
        node: NodeRecord {
            status: NodeStatus::Down,
            ..node(3)
        },
    });
    registry.apply(&put(with(echo("a"), |s| s.replicas = 2)));
    let at = |term, index| LogPosition { term, index };
    let plan = |term, placements| Command::ApplyPlan { term, placements };
    let before = registry.clone();
    let rejected: Vec<(&str, Command, RegistryError)> = vec![
        (
            "a plan from an earlier term",
            plan(4, vec![place("a", 0, Some(1))]),
            RegistryError::StalePlan {
                planned: 4,
                current: 5,
            },
        ),
        (
            "a node that is down",
            plan(5, vec![place("a", 0, Some(3))]),
            RegistryError::InvalidPlan {
                reason: "node 3 is not up and active".into(),
            },
        ),
        (
            "an unknown node",
            plan(5, vec![place("a", 0, Some(9))]),
            RegistryError::InvalidPlan {
                reason: "node 9 is not up and active".into(),
            },
        ),
        (
            "a slot beyond the replicas",
            plan(5, vec![place("a", 2, Some(1))]),
            RegistryError::InvalidPlan {
                reason: "server \"a\" has 2 replicas, not slot 2".into(),
            },
        ),
        (
            "an unknown server",
            plan(5, vec![place("b", 0, Some(1))]),
            RegistryError::InvalidPlan {
                reason: "server \"b\" does not exist".into(),
            },
        ),
        (
            "two replicas on one node",
            plan(5, vec![place("a", 0, Some(1)), place("a", 1, Some(1))]),
            RegistryError::InvalidPlan {
                reason: "two replicas of \"a\" on node 1".into(),
            },
        ),
    ];
    for (what, command, error) in rejected {
        let (outcome, _) = registry.apply_at(&command, at(5, 40));
        assert_eq!(outcome, Outcome::Rejected(error), "{what}");
        assert_eq!(registry, before, "{what}: a rejected plan changes nothing");
    }

    let (outcome, _) = registry.apply_at(
        &plan(5, vec![place("a", 0, Some(1)), place("a", 1, Some(2))]),
        at(5, 41),
    );
    assert_eq!(
        outcome,
        Outcome::Applied {
            revision: before.revision + 1
        }
    );
    assert_eq!(registry.assignments[&("a".into(), 1)].node_id, 2);
    assert_eq!(registry.assignments[&("a".into(), 1)].epoch, 41);
    registry.check_invariants().unwrap();

    // Moving a slot drops its health from the old node; unassigning removes it.
    registry.health.insert(
        ("a".into(), 0),
        ReplicaHealth {
            node_id: 1,
            transport_revision: 0,
            state: ReplicaState::Healthy,
            breaker: BreakerState::Closed,
            restarts: 0,
            last_error: None,
            probe_latency_ms: Some(3),
        },
    );
    registry.apply_at(&plan(6, vec![place("a", 1, None)]), at(6, 50));
    assert!(registry.health.contains_key(&("a".into(), 0)));
    assert!(!registry.assignments.contains_key(&("a".into(), 1)));
    registry.apply_at(&plan(6, vec![place("a", 0, Some(2))]), at(6, 51));
    assert!(registry.health.is_empty());
    assert_eq!(registry.assignments[&("a".into(), 0)].epoch, 51);
    registry.check_invariants().unwrap();
}

#[test]
fn the_invariant_check_refuses_two_replicas_of_a_server_on_one_node() {
    // Two nodes and three replicas: the scheduler leaves the third unplaced rather than
    // doubling up, so a registry that doubles up is wrong even with every node in use.
    let mut registry = Registry::default();
    registry.apply(&Command::PutNode { node: node(1) });
    registry.apply(&Command::PutNode { node: node(2) });
    registry.apply(&put(with(echo("a"), |s| s.replicas = 3)));
    let at = LogPosition { term: 1, index: 10 };
    let plan = Command::ApplyPlan {
        term: 1,
        placements: vec![place("a", 0, Some(1)), place("a", 1, Some(2))],
    };
    assert!(matches!(
        registry.apply_at(&plan, at).0,
        Outcome::Applied { .. }
    ));
    registry.check_invariants().unwrap();
    let mut doubled = registry.clone();
    let mut third = doubled.assignments[&("a".to_string(), 0)].clone();
    third.epoch += 1;
    doubled.assignments.insert(("a".into(), 2), third);
    assert_eq!(
        doubled.check_invariants(),
        Err("server \"a\" has two replicas on node 1".to_string())
    );
}

fn healthy_on(node_id: NodeId) -> ReplicaHealth {
    ReplicaHealth {
        node_id,
        transport_revision: 0,
        state: ReplicaState::Healthy,
        breaker: BreakerState::Closed,
        restarts: 0,
        last_error: None,
        probe_latency_ms: Some(2),
    }
}

#[test]
fn nodes_register_and_report_health_only_for_their_current_assignment() {
    let mut registry = Registry::default();
    let register = |id, tags: &[&str]| Command::RegisterNode {
        id,
        addr: format!("127.0.0.1:{}", 7000 + id),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        capacity: Some(4),
        incarnation: 10 + id,
    };
    registry.apply(&register(1, &["gpu"]));
    registry.apply(&register(2, &[]));
    assert_eq!(registry.nodes[&1].status, NodeStatus::Up);
    // A node that registers again keeps the status and admin state the cluster gave it.
    registry.apply(&Command::SetNodeAdmin {
        id: 1,
        admin: AdminState::Draining,
    });
    registry.apply(&Command::SetNodeStatus {
        id: 1,
        status: NodeStatus::Down,
    });
    registry.apply(&register(1, &["gpu", "ssd"]));
    assert_eq!(registry.nodes[&1].admin, AdminState::Draining);
    assert_eq!(registry.nodes[&1].status, NodeStatus::Down);
    // Undraining never changes liveness; a plan may not use a node that is down or
    // draining.
    registry.apply(&Command::SetNodeAdmin {
        id: 1,
        admin: AdminState::Active,
    });
    assert_eq!(registry.nodes[&1].status, NodeStatus::Down);
    registry.apply(&Command::SetNodeStatus {
        id: 1,
        status: NodeStatus::Up,
    });
    assert_eq!(registry.nodes[&1].tags, vec!["gpu", "ssd"]);
    // The same id from another data dir is refused and changes nothing.
    let before = registry.clone();
    let (outcome, _) = registry.apply(&Command::RegisterNode {
        id: 1,
        addr: "127.0.0.1:7001".into(),
        tags: vec![],
        capacity: None,
        incarnation: 99,
    });
    assert!(matches!(
        outcome,
        Outcome::Rejected(RegistryError::InvalidNode { .. })
    ));
    assert_eq!(registry, before);
    assert_eq!(registry.nodes[&1].capacity, Some(4));
    registry.apply(&put(echo("a")));
    let at = LogPosition { term: 2, index: 10 };
    registry.apply_at(
        &Command::ApplyPlan {
            term: 2,
            placements: vec![place("a", 0, Some(2))],
        },
        at,
    );
    let report = |epoch, health| Command::ReportHealth {
        server: "a".into(),
        slot: 0,
        epoch,
        health,
    };
    let before = registry.clone();
    let stale = RegistryError::StaleReport {
        server: "a".into(),
        slot: 0,
        epoch: 9,
    };
    let rejected: Vec<(&str, Command, RegistryError)> = vec![
        ("an older epoch", report(9, healthy_on(2)), stale),
        (
            "another node",
            report(10, healthy_on(1)),
            RegistryError::StaleReport {
                server: "a".into(),
                slot: 0,
                epoch: 10,
            },
        ),
        (
            "a slot with no assignment",
            Command::ReportHealth {
                server: "a".into(),
                slot: 1,
                epoch: 10,
                health: healthy_on(2),
            },
            RegistryError::StaleReport {
                server: "a".into(),
                slot: 1,
                epoch: 10,
            },
        ),
        (
            "status of an unknown node",
            Command::SetNodeStatus {
                id: 9,
                status: NodeStatus::Down,
            },
            RegistryError::NodeNotFound { id: 9 },
        ),
        (
            "a node with no address",
            Command::RegisterNode {
                id: 3,
                addr: String::new(),
                tags: vec![],
                capacity: None,
                incarnation: 1,
            },
            RegistryError::InvalidNode {
                reason: "address must be 1..=255 bytes".into(),
            },
        ),
    ];
    for (what, command, error) in rejected {
        let (outcome, _) = registry.apply(&command);
        assert_eq!(outcome, Outcome::Rejected(error), "{what}");
        assert_eq!(registry, before, "{what} changed the registry");
    }
    let mut failing = healthy_on(2);
    failing.state = ReplicaState::CrashLoop;
    failing.last_error = Some("é".repeat(MAX_ERROR_BYTES));
    let (outcome, _) = registry.apply(&report(10, failing));
    assert!(matches!(outcome, Outcome::Applied { .. }));
    let kept = &registry.health[&("a".to_string(), 0)];
    assert_eq!(kept.state, ReplicaState::CrashLoop);
    assert_eq!(kept.last_error.as_ref().unwrap().len(), MAX_ERROR_BYTES);
    registry.check_invariants().unwrap();
}

/// One step of a fuzzed log: a command of any kind production proposes (`PutNode`
/// only in tests, so not here), and the term of the entry that carries it. A report
/// may name the epoch of the slot's current assignment, found when it is applied, so
/// that reports are not all stale.
#[derive(Clone, Debug)]
struct Step {
    term: u64,
    command: Command,
    current_epoch: bool,
}

fn arbitrary_step() -> impl Strategy<Value = Step> {
    let name = prop::sample::select(vec!["a", "b", "c", "bad name", ""]);
    let node_id = 1u64..5;
    let slot = 0u32..3;
    let status = prop_oneof![Just(NodeStatus::Up), Just(NodeStatus::Down)];
    let admin = prop_oneof![Just(AdminState::Active), Just(AdminState::Draining)];
    let health = (node_id.clone(), any::<bool>()).prop_map(|(id, healthy)| {
        let mut health = healthy_on(id);
        if !healthy {
            health.state = ReplicaState::CrashLoop;
            health.last_error = Some("exited".into());
        }
        health
    });
    let catalog = (0u64..4, 0usize..3).prop_map(|(transport_revision, tools)| Catalog {
        transport_revision,
        server_info: "s 1.0".into(),
        tools: format!(
            "[{}]",
            vec![r#"{"name":"t","inputSchema":{"type":"object"}}"#; tools].join(",")
        ),
        prompts: "[]".into(),
        resources: "[]".into(),
    });
    let placement = (
        name.clone(),
        slot.clone(),
        prop::option::of(node_id.clone()),
    )
        .prop_map(|(server, slot, node)| place(server, slot, node));
    let command = prop_oneof![
        (
            name.clone(),
            0u32..4,
            prop::option::of(0u64..6),
            any::<bool>()
        )
            .prop_map(|(n, replicas, cas, tagged)| Command::PutServer {
                spec: with(echo(n), |s| {
                    s.replicas = replicas;
                    if tagged {
                        s.node_tags = vec!["gpu".into()];
                    }
                }),
                expected_revision: cas,
            }),
        (name.clone(), prop::option::of(0u64..6)).prop_map(|(n, cas)| Command::DeleteServer {
            name: n.into(),
            expected_revision: cas,
        }),
        node_id.clone().prop_map(|id| Command::RemoveNode { id }),
        (
            node_id.clone(),
            any::<bool>(),
            1u64..3,
            prop::option::of(0u32..3)
        )
            .prop_map(
                |(id, tagged, incarnation, capacity)| Command::RegisterNode {
                    id,
                    addr: format!("127.0.0.1:{}", 7000 + id),
                    tags: if tagged { vec!["gpu".into()] } else { vec![] },
                    capacity,
                    incarnation,
                }
            ),
        (node_id.clone(), status).prop_map(|(id, status)| Command::SetNodeStatus { id, status }),
        (node_id.clone(), admin).prop_map(|(id, admin)| Command::SetNodeAdmin { id, admin }),
        (name.clone(), slot.clone(), 0u64..60, health).prop_map(|(n, slot, epoch, health)| {
            Command::ReportHealth {
                server: n.into(),
                slot,
                epoch,
                health,
            }
        }),
        (name.clone(), slot, 0u64..60, node_id, catalog).prop_map(
            |(n, slot, epoch, node_id, catalog)| Command::ReportCatalog {
                server: n.into(),
                slot,
                epoch,
                node_id,
                catalog,
            }
        ),
        (prop::sample::select(vec!["s1", "s2", ""]), any::<bool>()).prop_map(|(id, open)| {
            if open {
                Command::PutSession {
                    id: id.into(),
                    initialize: "{}".into(),
                }
            } else {
                Command::DeleteSession { id: id.into() }
            }
        }),
        (1u64..4, prop::collection::vec(placement, 0..4))
            .prop_map(|(term, placements)| Command::ApplyPlan { term, placements }),
        prop::collection::vec((name.clone(), 0u32..3, prop::option::of(0u64..6)), 0..3).prop_map(
            |puts| put_many(
                puts.into_iter()
                    .map(|(n, replicas, cas)| (with(echo(n), |s| s.replicas = replicas), cas))
                    .collect()
            )
        ),
        (0u8..3, any::<bool>(), any::<bool>()).prop_map(|(which, first, create)| {
            // Ids 0 and 1 are valid; 2 is not.
            let id = ["0000000000000000", "00000000000000ff", "not-hex"][which as usize];
            if create {
                Command::CreateToken {
                    token: token(id, Role::Reader),
                    first,
                }
            } else {
                Command::RevokeToken { id: id.into() }
            }
        }),
    ];
    (1u64..4, command, any::<bool>()).prop_map(|(term, command, current_epoch)| Step {
        term,
        command,
        current_epoch,
    })
}

/// The step's command as it is to be applied to `registry`: a report that asks for
/// it is about the first current assignment, with its epoch and node.
fn concrete(step: &Step, registry: &Registry) -> Command {
    let mut command = step.command.clone();
    let first = registry.assignments.keys().next().cloned();
    let (true, Some((first_server, first_slot))) = (step.current_epoch, first) else {
        return command;
    };
    match &mut command {
        Command::ReportHealth { server, slot, .. }
        | Command::ReportCatalog { server, slot, .. } => {
            *server = first_server;
            *slot = first_slot;
        }
        _ => return command,
    }
    match &mut command {
        Command::ReportHealth {
            server,
            slot,
            epoch,
            health,
        } => {
            if let Some(assignment) = registry.assignments.get(&(server.clone(), *slot)) {
                *epoch = assignment.epoch;
                health.node_id = assignment.node_id;
            }
            if let Some(record) = registry.servers.get(server) {
                health.transport_revision = record.transport_revision;
            }
        }
        Command::ReportCatalog {
            server,
            slot,
            epoch,
            node_id,
            catalog,
        } => {
            if let Some(assignment) = registry.assignments.get(&(server.clone(), *slot)) {
                *epoch = assignment.epoch;
                *node_id = assignment.node_id;
            }
            if let Some(record) = registry.servers.get(server) {
                catalog.transport_revision = record.transport_revision;
            }
        }
        _ => {}
    }
    command
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn replaying_the_same_commands_gives_the_same_state(
        steps in prop::collection::vec(arbitrary_step(), 0..80)
    ) {
        let mut first = Registry::default();
        let mut log = Vec::new();
        for (index, step) in steps.iter().enumerate() {
            let command = concrete(step, &first);
            let at = LogPosition { term: step.term, index: index as u64 + 1 };
            let outcome = proposed_at(&mut first, &command, at);
            prop_assert_eq!(first.check_invariants(), Ok(()), "after {:?}", command);
            log.push((command, at, outcome));
        }
        let mut second = Registry::default();
        for (command, at, outcome) in &log {
            prop_assert_eq!(&proposed_at(&mut second, command, *at), outcome);
        }
        prop_assert_eq!(&first, &second);
        // The revision counts exactly the applied commands (a write of n servers as n).
        let applied: usize = log
            .iter()
            .filter(|(_, _, o)| matches!(o, Outcome::Applied { .. }))
            .map(|(command, _, _)| match command {
                Command::PutServers { puts } => puts.len(),
                _ => 1,
            })
            .sum();
        prop_assert_eq!(first.revision, applied as u64);
        // A snapshot round trip (as Raft does, counting the usage again) gives the same
        // state.
        let bytes = bincode::serde::encode_to_vec(&first, bincode::config::standard()).unwrap();
        let (mut decoded, _): (Registry, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        decoded.recount();
        prop_assert_eq!(decoded, first);
    }
}

/// A command as it reaches the registry in production: checked when it is proposed
/// (one that fails never enters the log), applied once committed.
fn proposed_at(registry: &mut Registry, command: &Command, at: LogPosition) -> Outcome {
    match command.check() {
        Err(error) => Outcome::Rejected(error),
        Ok(()) => registry.apply_at(command, at).0,
    }
}

/// The fuzzed logs reach every kind of command's success, not only its refusals.
#[test]
fn fuzzed_logs_apply_every_kind_of_command() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut applied = std::collections::BTreeSet::new();
    for _ in 0..600 {
        let steps = prop::collection::vec(arbitrary_step(), 80)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let mut registry = Registry::default();
        for (index, step) in steps.iter().enumerate() {
            let command = concrete(step, &registry);
            let at = LogPosition {
                term: step.term,
                index: index as u64 + 1,
            };
            let outcome = proposed_at(&mut registry, &command, at);
            if matches!(outcome, Outcome::Applied { .. }) {
                applied.insert(command.kind());
            }
        }
    }
    let every: std::collections::BTreeSet<&str> = [
        "put-server",
        "delete-server",
        "remove-node",
        "register-node",
        "set-node-status",
        "set-node-admin",
        "report-health",
        "report-catalog",
        "put-session",
        "delete-session",
        "apply-plan",
        "put-servers",
        "create-token",
        "revoke-token",
    ]
    .into_iter()
    .collect();
    let missing: Vec<_> = every.difference(&applied).collect();
    assert!(missing.is_empty(), "never applied: {missing:?}");
}

#[test]
fn only_a_transport_change_moves_the_transport_revision() {
    let mut registry = Registry::default();
    registry.apply(&put(echo("a")));
    assert_eq!(registry.servers["a"].transport_revision, 1);
    registry.apply(&put(with(echo("a"), |s| {
        s.replicas = 3;
        s.health_check.interval_ms = 5_000;
        s.circuit_breaker.open_ms = 1_000;
    })));
    assert_eq!(registry.servers["a"].mod_revision, 2);
    assert_eq!(registry.servers["a"].transport_revision, 1);
    registry.apply(&put(with(echo("a"), |s| {
        s.transport = Transport::Http {
            url: "http://127.0.0.1:1/mcp".into(),
            headers: BTreeMap::new(),
        }
    })));
    assert_eq!(registry.servers["a"].transport_revision, 3);
}

#[test]
fn catalogs_come_only_from_a_current_assignment_within_the_cap_and_go_with_their_server() {
    let mut registry = Registry::default();
    registry.apply(&Command::PutNode { node: node(1) });
    registry.apply(&Command::PutNode { node: node(2) });
    registry.apply(&put(echo("a")));
    registry.apply_at(
        &Command::ApplyPlan {
            term: 2,
            placements: vec![place("a", 0, Some(2))],
        },
        LogPosition { term: 2, index: 10 },
    );
    let catalog = Catalog {
        transport_revision: 3,
        server_info: "a 1.0".into(),
        tools: r#"[{"name":"t","inputSchema":{"type":"object"}}]"#.into(),
        prompts: "[]".into(),
        resources: "[]".into(),
    };
    let report = |node_id, epoch, catalog: &Catalog| Command::ReportCatalog {
        server: "a".into(),
        slot: 0,
        epoch,
        node_id,
        catalog: catalog.clone(),
    };
    let before = registry.clone();
    let oversize = Catalog {
        tools: "x".repeat(MAX_CATALOG_BYTES + 1),
        ..catalog.clone()
    };
    for (what, command) in [
        ("another node", report(1, 10, &catalog)),
        ("an older epoch", report(2, 9, &catalog)),
        ("over the cap", report(2, 10, &oversize)),
    ] {
        let (outcome, _) = registry.apply(&command);
        assert!(
            matches!(outcome, Outcome::Rejected(_)),
            "{what}: {outcome:?}"
        );
        assert_eq!(registry, before, "{what} changed nothing");
    }
    let (outcome, _) = registry.apply(&report(2, 10, &catalog));
    assert!(matches!(outcome, Outcome::Applied { .. }));
    assert_eq!(registry.catalogs.get("a"), Some(&catalog));
    registry.apply(&delete("a"));
    assert!(registry.catalogs.is_empty());
    assert_eq!(registry.check_invariants(), Ok(()));
}

#[test]
fn sessions_are_recorded_capped_and_deleted() {
    let mut registry = Registry::default();
    let put_session = |id: &str| Command::PutSession {
        id: id.into(),
        initialize: r#"{"initialize_params":{}}"#.into(),
    };
    let before = registry.clone();
    for (what, command) in [
        ("an empty id", put_session("")),
        ("a space in the id", put_session("a b")),
        (
            "oversize parameters",
            Command::PutSession {
                id: "s".into(),
                initialize: "x".repeat(MAX_SESSION_BYTES + 1),
            },
        ),
        (
            "deleting an unknown one",
            Command::DeleteSession { id: "s".into() },
        ),
    ] {
        let (outcome, _) = registry.apply(&command);
        assert!(
            matches!(outcome, Outcome::Rejected(_)),
            "{what}: {outcome:?}"
        );
        assert_eq!(registry, before, "{what} changed nothing");
    }
    for i in 0..MAX_SESSIONS {
        registry.apply(&put_session(&format!("s{i}")));
    }
    assert_eq!(registry.sessions.len(), MAX_SESSIONS);
    // A full table drops its oldest session for a new one.
    registry.apply(&put_session("newest"));
    assert_eq!(registry.sessions.len(), MAX_SESSIONS);
    assert!(!registry.sessions.contains_key("s0"));
    assert!(registry.sessions.contains_key("s1") && registry.sessions.contains_key("newest"));
    let (outcome, _) = registry.apply(&Command::DeleteSession {
        id: "newest".into(),
    });
    assert!(matches!(outcome, Outcome::Applied { .. }));
    assert!(!registry.sessions.contains_key("newest"));
    assert_eq!(registry.check_invariants(), Ok(()));
}

#[test]
fn the_registry_refuses_growth_past_its_budgets_and_keeps_its_usage_exact() {
    let full = |outcome: &Outcome| matches!(outcome, Outcome::Rejected(RegistryError::Full { .. }));
    // Content: specs of about 63.5 KiB each, up to MAX_CONTENT_BYTES.
    let big = |name: &str| ServerSpec::stdio(name, "serve", &[&"x".repeat(65_000)]);
    let mut registry = Registry::default();
    let mut count = 0;
    loop {
        let (outcome, _) = registry.apply(&put(big(&format!("s{count}"))));
        if full(&outcome) {
            break;
        }
        assert!(matches!(outcome, Outcome::Applied { .. }), "{outcome:?}");
        count += 1;
    }
    assert_eq!(count, MAX_CONTENT_BYTES / spec_size_of(&big("s0")));
    assert!(registry.usage().content_bytes <= MAX_CONTENT_BYTES);
    let before = registry.clone();
    // A rewrite that does not grow is accepted, and deleting makes room.
    let (outcome, _) = registry.apply(&put(big("s0")));
    assert!(matches!(outcome, Outcome::Applied { .. }), "{outcome:?}");
    assert!(full(&registry.apply(&put(big("new"))).0));
    assert_eq!(registry.servers.len(), before.servers.len());
    registry.apply(&delete("s1"));
    assert!(matches!(
        registry.apply(&put(big("new"))).0,
        Outcome::Applied { .. }
    ));
    assert_eq!(registry.check_invariants(), Ok(()));
    // Usage is not stored: a decoded registry counts it again.
    let bytes = bincode::serde::encode_to_vec(&registry, bincode::config::standard()).unwrap();
    let (mut decoded, _): (Registry, usize) =
        bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
    assert_ne!(decoded.usage(), registry.usage());
    decoded.recount();
    assert_eq!(decoded, registry);

    // Slots: servers of 64 replicas up to MAX_SLOTS.
    let mut registry = Registry::default();
    let wide = |name: &str, replicas| with(echo(name), |s| s.replicas = replicas);
    for i in 0..(MAX_SLOTS / 64) {
        let (outcome, _) = registry.apply(&put(wide(&format!("w{i}"), 64)));
        assert!(matches!(outcome, Outcome::Applied { .. }), "{outcome:?}");
    }
    assert!(full(&registry.apply(&put(wide("over", 64))).0));
    let room = (MAX_SLOTS % 64) as u32;
    assert!(matches!(
        registry.apply(&put(wide("fits", room))).0,
        Outcome::Applied { .. }
    ));
    assert_eq!(registry.usage().slots, MAX_SLOTS);
    assert_eq!(registry.check_invariants(), Ok(()));

    // Nodes: up to MAX_NODES; a known node may register again.
    let mut registry = Registry::default();
    let register = |id| Command::RegisterNode {
        id,
        addr: format!("10.0.0.1:{id}"),
        tags: vec![],
        capacity: None,
        incarnation: 1,
    };
    for id in 1..=MAX_NODES as u64 {
        assert!(matches!(
            registry.apply(&register(id)).0,
            Outcome::Applied { .. }
        ));
    }
    assert!(full(&registry.apply(&register(MAX_NODES as u64 + 1)).0));
    assert!(matches!(
        registry.apply(&register(1)).0,
        Outcome::Applied { .. }
    ));
}

fn spec_size_of(spec: &ServerSpec) -> usize {
    validate::spec_size(spec)
}

#[test]
fn tokens_are_created_once_bootstrapped_once_and_revoked() {
    let mut registry = Registry::default();
    let create = |id: &str, first| Command::CreateToken {
        token: token(id, Role::Admin),
        first,
    };
    let a = "000000000000000a";
    let b = "000000000000000b";
    assert_eq!(
        registry.apply(&create(a, true)).0,
        Outcome::Applied { revision: 1 }
    );
    assert_eq!(registry.tokens[a].create_revision, 1);
    // The bootstrap works only while there is no token.
    assert_eq!(
        registry.apply(&create(b, true)).0,
        Outcome::Rejected(RegistryError::AlreadyBootstrapped)
    );
    assert_eq!(
        registry.apply(&create(a, false)).0,
        Outcome::Rejected(RegistryError::TokenExists { id: a.into() })
    );
    assert_eq!(
        registry.apply(&create(b, false)).0,
        Outcome::Applied { revision: 2 }
    );
    assert_eq!(
        registry.apply(&Command::RevokeToken { id: a.into() }).0,
        Outcome::Applied { revision: 3 }
    );
    assert!(!registry.tokens.contains_key(a));
    assert_eq!(
        registry.apply(&Command::RevokeToken { id: a.into() }).0,
        Outcome::Rejected(RegistryError::TokenNotFound { id: a.into() })
    );
    // Malformed tokens change nothing.
    let before = registry.clone();
    let bad = |change: fn(&mut TokenRecord)| {
        let mut token = token("000000000000000c", Role::Reader);
        change(&mut token);
        Command::CreateToken {
            token,
            first: false,
        }
    };
    for command in [
        bad(|t| t.id = "ABC".into()),
        bad(|t| t.secret_sha256 = "xyz".into()),
        bad(|t| t.name = "a\nb".into()),
        bad(|t| t.servers = vec!["echo".into()]),
        bad(|t| {
            t.role = Role::Caller;
            t.tools = vec![String::new()];
        }),
        bad(|t| {
            t.role = Role::Caller;
            t.tools = vec!["x".into(); MAX_TOKEN_PATTERNS + 1];
        }),
        Command::RevokeToken { id: "x".into() },
    ] {
        assert!(
            matches!(
                registry.apply(&command).0,
                Outcome::Rejected(RegistryError::InvalidToken { .. })
            ),
            "{command:?}"
        );
    }
    assert_eq!(registry, before);
    // A caller's patterns are taken.
    let mut scoped = token("000000000000000d", Role::Caller);
    scoped.servers = vec!["every*".into()];
    scoped.tools = vec!["echo".into()];
    assert!(matches!(
        registry
            .apply(&Command::CreateToken {
                token: scoped,
                first: false
            })
            .0,
        Outcome::Applied { .. }
    ));
}

#[test]
fn the_audit_log_keeps_the_last_entries_and_who_made_them() {
    let mut registry = Registry::default();
    for i in 0..MAX_AUDIT_ENTRIES + 5 {
        let command = put(echo("a"));
        assert!(matches!(
            registry.apply(&command).0,
            Outcome::Applied { .. }
        ));
        registry.record_audit(&command, &format!("token {i}"), 1_000 + i as u64);
    }
    assert_eq!(registry.audit.len(), MAX_AUDIT_ENTRIES);
    let oldest = registry.audit.front().unwrap();
    assert_eq!((oldest.revision, oldest.actor.as_str()), (6, "token 5"));
    let newest = registry.audit.back().unwrap();
    assert_eq!(newest.revision, registry.revision);
    assert_eq!(
        (newest.action.as_str(), newest.target.as_str()),
        ("put-server", "a")
    );
    assert_eq!(registry.check_invariants(), Ok(()));
    // Long actors are cut to the cap.
    registry.record_audit(&put(echo("a")), &"x".repeat(1_000), 0);
    assert_eq!(registry.audit.back().unwrap().actor.len(), MAX_AUDIT_TEXT);
}
