//! The turmoil smoke test: three real nodes, the leader crashes, a later write commits,
//! and the crashed node restarts from its disk and catches up.

#[test]
fn write_after_leader_crash_is_acknowledged_and_survives() {
    let report = mcpfleet_sim::scenarios::leader_crash(7).unwrap_or_else(|e| panic!("seed 7: {e}"));
    assert!(report
        .events
        .iter()
        .any(|e| e.contains("'after' acknowledged")));
    assert!(report.events.iter().any(|e| e.ends_with("caught up")));
}
