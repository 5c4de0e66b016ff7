//! The simulator's command line: runs scenarios over seeds and prints a summary.

use std::time::Instant;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "mcpfleet-sim",
    about = "Runs real mcpfleet nodes under turmoil"
)]
struct Args {
    /// Run this one seed and print its event log.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run seeds 0..N.
    #[arg(long, default_value_t = 10)]
    seeds: u64,
    /// Run every seed twice and fail if the two traces differ.
    #[arg(long)]
    check_determinism: bool,
    /// The scenario to run.
    #[arg(long, default_value = "leader-crash", value_parser = mcpfleet_sim::scenarios::SCENARIOS)]
    scenario: String,
}

/// Runs `--seed seed` in a fresh process and returns the trace hash it prints.
fn trace_hash_of_replay(seed: u64, scenario: &str) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let output = std::process::Command::new(exe)
        .args(["--scenario", scenario, "--seed", &seed.to_string()])
        .env_remove("RUST_LOG")
        .output()
        .map_err(|e| format!("cannot run a replay: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("trace hash "))
        .map(str::to_string)
        .ok_or_else(|| format!("the replay of seed {seed} printed no trace hash: {stdout}"))
}

fn main() {
    let args = Args::parse();
    // Node logs, for replaying a seed: RUST_LOG=mcpfleet=debug,openraft=info.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .without_time()
            .init();
    }
    let seeds: Vec<u64> = match args.seed {
        Some(seed) => vec![seed],
        None => (0..args.seeds).collect(),
    };
    let started = Instant::now();
    let mut failed = 0;
    let mut sim_seconds = 0.0;
    for seed in &seeds {
        let run = mcpfleet_sim::scenarios::run(&args.scenario, *seed).and_then(|report| {
            if !args.check_determinism {
                return Ok(report);
            }
            // Two fresh processes, as a replay would be: in one process, state that
            // outlives a simulation can still differ between consecutive runs.
            let first = trace_hash_of_replay(*seed, &args.scenario)?;
            let second = trace_hash_of_replay(*seed, &args.scenario)?;
            if first != second {
                return Err(format!(
                    "not deterministic: trace hash {first} then {second}"
                ));
            }
            Ok(report)
        });
        match run {
            Ok(report) => {
                sim_seconds += report.sim_seconds;
                if args.seed.is_some() {
                    for event in &report.events {
                        println!("{event}");
                    }
                    println!("trace hash {:016x}", report.trace_hash);
                }
            }
            Err(error) => {
                failed += 1;
                println!("seed {seed} FAILED: {error}");
                let check = if args.check_determinism {
                    " --check-determinism"
                } else {
                    ""
                };
                println!(
                    "replay: cargo run --release -p mcpfleet-sim -- --scenario {} --seed {seed}{check}",
                    args.scenario
                );
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    println!(
        "seeds={} failed={failed} sim_seconds={sim_seconds:.1} wall_seconds={wall:.1} speedup={:.1}x",
        seeds.len(),
        if wall > 0.0 { sim_seconds / wall } else { 0.0 }
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
