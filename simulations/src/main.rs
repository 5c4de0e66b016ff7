//! The simulator's command line: runs one seed with its event log, or sweeps many
//! seeds (each in a fresh process, as a replay runs) with a progress bar, and ends with
//! a summary line.

use std::io::{IsTerminal, Read, Write};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use mcpfleet::env::bugs::{self, Bug};
use mcpfleet_sim::scenarios::{self, SCENARIOS};

/// Longest a single seed may run (wall time) in a sweep before it counts as failed.
const SEED_WALL_LIMIT: Duration = Duration::from_secs(300);

#[derive(Parser, Debug)]
#[command(
    name = "mcpfleet-sim",
    about = "Runs real mcpfleet nodes under turmoil with faults, and checks them"
)]
struct Args {
    /// Run this one seed and print its event log.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run seeds FIRST..FIRST+N, each in its own process.
    #[arg(long, default_value_t = 10)]
    seeds: u64,
    /// The first seed of a sweep.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Run every seed (or the one --seed) twice, each in a fresh process, and fail it if
    /// the two trace hashes differ.
    #[arg(long)]
    check_determinism: bool,
    /// The scenario to run (default: chaos, or the scenario made to catch the bug given
    /// with --inject-bug).
    #[arg(long, value_parser = SCENARIOS)]
    scenario: Option<String>,
    /// Nodes in the cluster: 3 to 7 for the chaos scenario (default 3), 7 to 100 for the
    /// scale scenario (default 100); the others run a fixed number.
    #[arg(long, value_parser = clap::value_parser!(u64).range(3..=100))]
    nodes: Option<u64>,
    /// Servers registered by the scale scenario (default 10,000).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    servers: Option<u64>,
    /// Switch on a deliberate bug (`list` prints their names). A sweep stops at the first
    /// seed that catches it.
    #[arg(long, value_name = "NAME")]
    inject_bug: Option<String>,
    /// Seeds run at once in a sweep (default: one per core).
    #[arg(long)]
    jobs: Option<usize>,
    /// With --seed: also print the workload's history.
    #[arg(long)]
    history: bool,
    /// With --seed: print only a failure, the trace hash and the summary (what a sweep
    /// reads from each seed's process).
    #[arg(long, hide = true)]
    quiet: bool,
}

impl Args {
    fn scenario(&self) -> &str {
        self.scenario.as_deref().unwrap_or(SCENARIOS[0])
    }

    fn nodes(&self) -> u64 {
        let default = if self.scenario() == "scale" { 100 } else { 3 };
        self.nodes.unwrap_or(default)
    }

    fn servers(&self) -> u64 {
        self.servers.unwrap_or(10_000)
    }

    /// The flags that select what runs, as a replay must repeat them.
    fn selection(&self) -> Vec<String> {
        let mut flags = vec![
            "--scenario".to_string(),
            self.scenario().to_string(),
            "--nodes".to_string(),
            self.nodes().to_string(),
        ];
        if self.scenario() == "scale" {
            flags.extend(["--servers".to_string(), self.servers().to_string()]);
        }
        if let Some(bug) = &self.inject_bug {
            flags.extend(["--inject-bug".to_string(), bug.clone()]);
        }
        flags
    }

    fn replay_command(&self, seed: u64) -> String {
        format!(
            "cargo run --release -p mcpfleet-sim -- {} --seed {seed}",
            self.selection().join(" ")
        )
    }
}

/// Stamps node logs with simulated time, so that they line up with the event log.
struct SimulatedTime;

impl tracing_subscriber::fmt::time::FormatTime for SimulatedTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(at) => write!(w, "[{:>7.3}s]", at.as_secs_f64()),
            None => write!(w, "[   --   ]"),
        }
    }
}

fn summary(seeds: u64, failed: u64, sim_seconds: f64, wall: f64) -> String {
    format!(
        "seeds={seeds} failed={failed} sim_seconds={sim_seconds:.1} wall_seconds={wall:.1} \
         speedup={:.1}x",
        if wall > 0.0 { sim_seconds / wall } else { 0.0 }
    )
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.inject_bug.as_deref() == Some("list") {
        for bug in Bug::ALL {
            println!("{}", bug.name());
        }
        return ExitCode::SUCCESS;
    }
    let bug = match args.inject_bug.as_deref().map(Bug::from_name) {
        None => None,
        Some(Some(bug)) => Some(bug),
        Some(None) => {
            let known: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
            return usage_error(&format!(
                "unknown bug {:?}; known: {} (or `list`)",
                args.inject_bug.as_deref().unwrap_or_default(),
                known.join(", ")
            ));
        }
    };
    if args.scenario.is_none() {
        args.scenario = bug.map(|bug| scenarios::catches(bug).to_string());
    }
    match (args.scenario(), args.nodes()) {
        ("chaos", 3..=7) | ("scale", 7..=100) => {}
        ("chaos", _) => return usage_error("the chaos scenario runs 3 to 7 nodes"),
        ("scale", _) => return usage_error("the scale scenario runs 7 to 100 nodes"),
        (_, 3) => {}
        (other, _) => {
            return usage_error(&format!("scenario {other} runs a fixed number of nodes"))
        }
    }
    if args.servers.is_some() && args.scenario() != "scale" {
        return usage_error("--servers is for the scale scenario");
    }
    // Node logs, for replaying a seed: RUST_LOG=mcpfleet=debug,openraft=info.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .with_timer(SimulatedTime)
            .init();
    }
    match args.seed {
        // Checking determinism takes fresh processes: a sweep of one seed.
        Some(seed) if !args.check_determinism => run_one(&args, seed, bug),
        _ => sweep(&args),
    }
}

/// Runs one seed in this process and prints what happened.
fn run_one(args: &Args, seed: u64, bug: Option<Bug>) -> ExitCode {
    bugs::switch_on(bug);
    let started = Instant::now();
    let size = scenarios::Size {
        nodes: args.nodes(),
        servers: args.servers() as usize,
    };
    let report = scenarios::run(args.scenario(), seed, size);
    let wall = started.elapsed().as_secs_f64();
    if !args.quiet {
        if let Some(bug) = bug {
            println!("injected bug: {}", bug.name());
        }
        for event in &report.events {
            println!("{event}");
        }
        if args.history {
            for line in scenarios::history_lines(&report) {
                println!("{line}");
            }
        }
    }
    if let Some(failure) = &report.failure {
        println!("seed {seed} FAILED: {failure}");
        println!("replay: {}", args.replay_command(seed));
    }
    println!("trace hash {:016x}", report.trace_hash);
    let failed = u64::from(report.failure.is_some());
    println!("{}", summary(1, failed, report.sim_seconds, wall));
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// What one seed's process reported.
struct SeedResult {
    seed: u64,
    passed: bool,
    sim_seconds: f64,
    trace_hash: Option<String>,
    /// Its output without the summary line.
    output: String,
}

/// Runs `--seed seed` in a fresh process.
fn run_seed_process(args: &Args, seed: u64) -> SeedResult {
    let failed = |output: String| SeedResult {
        seed,
        passed: false,
        sim_seconds: 0.0,
        trace_hash: None,
        output,
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            return failed(format!(
                "seed {seed} FAILED: cannot find this program: {e}\n"
            ))
        }
    };
    let mut child = match Command::new(exe)
        .args(args.selection())
        .args(["--seed", &seed.to_string(), "--quiet"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return failed(format!("seed {seed} FAILED: cannot start it: {e}\n")),
    };
    // Read its output while it runs, so that a full pipe cannot stall it.
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() > SEED_WALL_LIMIT => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break None,
        }
    };
    let text = reader.join().unwrap_or_default();
    let Some(status) = status else {
        return failed(format!(
            "seed {seed} FAILED: still running after {SEED_WALL_LIMIT:?} of wall time\nreplay: {}\n",
            args.replay_command(seed)
        ));
    };
    let sim_seconds = text
        .lines()
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("sim_seconds="))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let trace_hash = text
        .lines()
        .find_map(|l| l.strip_prefix("trace hash ").map(str::to_string));
    let output: String = text
        .lines()
        .filter(|l| !l.starts_with("seeds=") && !l.starts_with("trace hash "))
        .map(|l| format!("{l}\n"))
        .collect();
    let passed = status.success() && trace_hash.is_some();
    SeedResult {
        seed,
        passed,
        sim_seconds,
        trace_hash,
        output: if passed || !output.is_empty() {
            output
        } else {
            format!(
                "seed {seed} FAILED: the process ended with {status}\nreplay: {}\n",
                args.replay_command(seed)
            )
        },
    }
}

/// Runs one seed (twice with --check-determinism) and says how it went.
fn check_seed(args: &Args, seed: u64) -> SeedResult {
    let mut result = run_seed_process(args, seed);
    if result.passed && args.check_determinism {
        let again = run_seed_process(args, seed);
        if again.trace_hash != result.trace_hash {
            result.passed = false;
            result.output = format!(
                "seed {seed} FAILED: not deterministic: trace hash {:?} then {:?}\nreplay: {} \
                 --check-determinism\n",
                result.trace_hash,
                again.trace_hash,
                args.replay_command(seed)
            );
        }
    }
    result
}

/// Runs many seeds, `jobs` at a time, each in its own process.
fn sweep(args: &Args) -> ExitCode {
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let stop_at_first_failure = args.inject_bug.is_some();
    let seeds: Vec<u64> = match args.seed {
        Some(seed) => vec![seed],
        None => (args.first_seed..args.first_seed.saturating_add(args.seeds)).collect(),
    };
    let started = Instant::now();
    let progress = std::io::stderr().is_terminal();
    let (sender, results) = std::sync::mpsc::channel::<SeedResult>();
    let mut next = 0;
    let mut running = 0;
    let (mut done, mut failed, mut sim_seconds) = (0u64, 0u64, 0.0f64);
    std::thread::scope(|scope| loop {
        let stopping = stop_at_first_failure && failed > 0;
        while running < jobs && next < seeds.len() && !stopping {
            let (seed, sender) = (seeds[next], sender.clone());
            scope.spawn(move || {
                let _ = sender.send(check_seed(args, seed));
            });
            next += 1;
            running += 1;
        }
        if running == 0 {
            break;
        }
        let Ok(result) = results.recv() else { break };
        running -= 1;
        done += 1;
        sim_seconds += result.sim_seconds;
        if !result.passed {
            failed += 1;
        }
        // A failure, or what a passing seed could not check.
        if !result.output.is_empty() {
            if progress {
                eprint!("\r\x1b[K");
            }
            print!("{}", result.output);
            let _ = std::io::stdout().flush();
        }
        if progress {
            let width = 30;
            let filled = (done as usize * width) / seeds.len().max(1);
            eprint!(
                "\r[{}{}] {done}/{} failed={failed} last seed {} {:.0}s",
                "#".repeat(filled),
                ".".repeat(width - filled),
                seeds.len(),
                result.seed,
                started.elapsed().as_secs_f64()
            );
        }
    });
    if progress {
        eprintln!();
    }
    let wall = started.elapsed().as_secs_f64();
    println!("{}", summary(done, failed, sim_seconds, wall));
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
