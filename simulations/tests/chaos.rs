//! The chaos scenario through the simulator's binary, one seed per process as a replay
//! runs: a seed passes every checker, and the same seed gives the same trace.

use std::process::Command;

/// Runs `mcpfleet-sim` with `args`; returns whether it succeeded and what it printed.
fn simulate(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_mcpfleet-sim"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run mcpfleet-sim");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

fn trace_hash(output: &str) -> String {
    output
        .lines()
        .find_map(|line| line.strip_prefix("trace hash ").map(str::to_string))
        .expect("a trace hash line")
}

#[test]
fn a_chaos_seed_passes_every_checker_and_replays_identically() {
    let (passed, first) = simulate(&["--seed", "11"]);
    assert!(passed, "seed 11 failed:\n{first}");
    assert!(first.contains("fault: "), "faults were injected:\n{first}");
    assert!(first.contains("converged "), "{first}");
    assert!(first.contains("linearizable (decided in "), "{first}");
    assert!(first.contains(" steps), nothing lost"), "{first}");
    let summary = first.lines().last().expect("a summary line");
    assert!(
        summary.starts_with("seeds=1 failed=0 sim_seconds="),
        "{summary}"
    );

    let (_, again) = simulate(&["--seed", "11"]);
    assert_eq!(
        trace_hash(&first),
        trace_hash(&again),
        "same seed, same trace"
    );
    let (_, other) = simulate(&["--seed", "12"]);
    assert_ne!(
        trace_hash(&first),
        trace_hash(&other),
        "different seeds, different runs"
    );
}

#[test]
fn bug_names_are_listed_and_unknown_ones_are_usage_errors() {
    let (passed, list) = simulate(&["--inject-bug", "list"]);
    assert!(passed);
    let names: Vec<&str> = list.lines().collect();
    assert_eq!(
        names,
        [
            "ack-before-commit",
            "stale-follower-read",
            "skip-log-fsync",
            "skip-vote-fsync",
            "ignore-lease",
            "no-leader-grace",
            "accept-stale-plan",
            "dead-drain-blocks",
            "ignore-fence-deadline",
            "retry-after-send",
            "forget-orphans",
            "route-to-unavailable",
            "shrink-session-window",
            "unbounded-starts"
        ]
    );
    let output = Command::new(env!("CARGO_BIN_EXE_mcpfleet-sim"))
        .args(["--inject-bug", "no-such-bug", "--seed", "1"])
        .output()
        .expect("run mcpfleet-sim");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown bug"));
}

#[test]
fn an_injected_bug_is_caught_and_its_replay_command_printed() {
    let (passed, output) = simulate(&["--inject-bug", "stale-follower-read", "--seed", "1"]);
    assert!(!passed, "the bug went unnoticed:\n{output}");
    assert!(output.contains("seed 1 FAILED: "), "{output}");
    assert!(
        output.contains("replay: cargo run --release -p mcpfleet-sim -- --scenario chaos --nodes 3 --inject-bug stale-follower-read --seed 1"),
        "{output}"
    );
}

#[test]
fn a_write_storm_seed_applies_every_write_once() {
    let (passed, output) = simulate(&["--scenario", "write-storm", "--seed", "3"]);
    assert!(passed, "{output}");
    assert!(output.contains("none applied twice"), "{output}");
}
