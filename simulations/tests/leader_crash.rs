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

#[test]
fn the_same_seed_gives_the_same_trace() {
    let run = |seed| {
        mcpfleet_sim::scenarios::leader_crash(seed).unwrap_or_else(|e| panic!("seed {seed}: {e}"))
    };
    let first = run(11);
    let second = run(11);
    assert_eq!(first.events, second.events);
    assert_eq!(first.trace_hash, second.trace_hash);
    let other = run(12);
    assert_ne!(
        first.trace_hash, other.trace_hash,
        "different seeds, different runs"
    );
}
