//! `mcpfleet-soak`: the soak on real processes (see `soak.rs`). It prints a summary
//! with each measure's earlier and last median and its bound, leaves the CSV files in
//! its dir for `simulations/soak_chart.py`, and exits 1 when something grew past its
//! bound or the fleet did not recover.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mcpfleet_sim::soak::{self, SoakOptions};

#[derive(Parser, Debug)]
#[command(
    name = "mcpfleet-soak",
    about = "Runs three real mcpfleet nodes under churn, tool calls and kills, and fails on \
             growth of memory, fds, threads, data dirs or p99 latency"
)]
struct Args {
    /// Seconds of load and kills, after the servers are registered and healthy.
    #[arg(long, default_value_t = 1_800, value_parser = clap::value_parser!(u64).range(60..=604_800))]
    duration: u64,
    /// Chooses the kills, their times and the clients' operations.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Registered servers in all.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=9_000))]
    servers: u32,
    /// Of them, servers with a running replica (at most `servers`).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    running: u32,
    /// Seconds between two samples.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    sample_every: u64,
    /// Seconds between two kills: at random between this and twice it.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(5..=86_400))]
    kill_every: u64,
    /// The mcpfleet binary the nodes run (default: `mcpfleet` beside this program).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Where data dirs, logs and the CSV files go: a new or empty directory (default: a
    /// new directory under the temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.running > args.servers {
        eprintln!(
            "error: --running {} is more than --servers {}",
            args.running, args.servers
        );
        return ExitCode::from(2);
    }
    if let Some(dir) = &args.dir {
        if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
            eprintln!(
                "error: {} is not empty: give --dir a new or empty directory",
                dir.display()
            );
            return ExitCode::from(2);
        }
    }
    let binary = args.binary.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .expect("the running program has a path")
            .with_file_name("mcpfleet")
    });
    if !binary.is_file() {
        eprintln!(
            "error: no node binary at {} (build it: cargo build --release --bin mcpfleet)",
            binary.display()
        );
        return ExitCode::from(2);
    }
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("mcpfleet-soak-{}", std::process::id()))
    });
    let options = SoakOptions {
        duration: Duration::from_secs(args.duration),
        seed: args.seed,
        servers: args.servers,
        running: args.running,
        sample_every: Duration::from_secs(args.sample_every),
        kill_gap_min: Duration::from_secs(args.kill_every),
        kill_gap_max: Duration::from_secs(args.kill_every * 2),
        binary,
        dir: dir.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match runtime.block_on(soak::run(&options)) {
        Ok(report) => {
            println!("{}", report.summary(&options));
            println!("samples: {}", dir.display());
            if report.failures.is_empty() {
                println!("ok: nothing grew past its bound, and every running server is healthy");
                ExitCode::SUCCESS
            } else {
                for failure in &report.failures {
                    println!("FAILED: {failure}");
                }
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            eprintln!("node logs: {}", dir.display());
            ExitCode::FAILURE
        }
    }
}
