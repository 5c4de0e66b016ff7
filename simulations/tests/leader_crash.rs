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

/// The trace hash `mcpfleet-sim --seed seed` prints, from a fresh process (one
/// simulation per process, as a replay runs).
fn replayed_trace_hash(seed: u64) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mcpfleet-sim"))
        .args(["--seed", &seed.to_string()])
        .env_remove("RUST_LOG")
        .output()
        .expect("run mcpfleet-sim");
    assert!(output.status.success(), "seed {seed} failed: {output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("trace hash ").map(str::to_string))
        .expect("a trace hash line")
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let first = replayed_trace_hash(11);
    assert_eq!(first, replayed_trace_hash(11));
    assert_ne!(
        first,
        replayed_trace_hash(12),
        "different seeds, different runs"
    );
}
