//! `mcpfleet-nemesis`: the nemesis on real processes (see `nemesis.rs`). It prints
//! one summary line, and on a violation the history's file and the command that
//! repeats the schedule, with exit code 1.
//!
//! Run as `mcpfleet-nemesis serve ...`, it is a node itself: `mcpfleet serve` with the
//! bug that `MCPFLEET_INJECT_BUG` names switched on, so that the checkers can be shown
//! to catch it on real processes. Such a node launches its stdio servers through
//! `mcpfleet-nemesis supervise ...`, as `mcpfleet` does through `mcpfleet supervise`.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::Parser;
use mcpfleet::env::bugs::{self, Bug};
use mcpfleet_sim::nemesis::{self, Options};

/// Set in the nemesis's own re-run inside a private network namespace.
const IN_NAMESPACE: &str = "MCPFLEET_NEMESIS_NETNS";
/// The bug a node of this binary switches on.
const BUG_ENV: &str = "MCPFLEET_INJECT_BUG";

#[derive(Parser, Debug)]
#[command(
    name = "mcpfleet-nemesis",
    about = "Runs real mcpfleet processes under kills, pauses, cuts and slow links, and checks \
             the history"
)]
struct Args {
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=5))]
    nodes: u64,
    /// Seconds of workload and faults.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(10..=86_400))]
    duration: u64,
    /// Chooses the faults, their targets and times, and the clients' operations.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Concurrent clients of the registry.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=64))]
    clients: u32,
    /// Concurrent callers of a tool (0: none).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=64))]
    callers: u32,
    /// Server names the clients work on (default: one per 6 s of the run, at least 8),
    /// so that each name's history stays short enough for the linearizability search.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4_096))]
    keys: Option<u64>,
    /// The mcpfleet binary the nodes run (default: `mcpfleet` beside this program).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Nodes run this program with the simulator's deliberate bug NAME switched on.
    #[arg(long, value_name = "NAME")]
    inject_bug: Option<String>,
    /// Every node on loopback: kills and pauses only (the default where network
    /// namespaces cannot be made).
    #[arg(long)]
    loopback: bool,
    /// Where data dirs, node logs and a failing history go: a new or empty directory
    /// (default: a new directory under the temp dir, removed after a clean run).
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl Args {
    fn keys(&self) -> usize {
        self.keys.unwrap_or((self.duration / 6).max(8)) as usize
    }

    fn replay(&self, loopback: bool) -> String {
        let mut line = format!(
            "mcpfleet-nemesis --nodes {} --duration {} --seed {} --clients {} --callers {} --keys {}",
            self.nodes,
            self.duration,
            self.seed,
            self.clients,
            self.callers,
            self.keys()
        );
        if let Some(bug) = &self.inject_bug {
            line.push_str(&format!(" --inject-bug {bug}"));
        }
        if loopback {
            line.push_str(" --loopback");
        }
        line
    }
}

/// A node of this binary: `mcpfleet serve` with a bug switched on; and `mcpfleet
/// supervise`, which such a node runs to launch a stdio server.
fn serve_as_node() -> anyhow::Result<()> {
    let cli = mcpfleet::cli::Cli::parse_from(
        std::iter::once("mcpfleet".to_string()).chain(std::env::args().skip(1)),
    );
    let serve = match cli.command {
        mcpfleet::cli::TopCommand::Serve(serve) => serve,
        mcpfleet::cli::TopCommand::Supervise(supervise) => {
            let runtime = tokio::runtime::Runtime::new()?;
            std::process::exit(runtime.block_on(supervise.run()));
        }
        _ => anyhow::bail!("only `serve` and `supervise` run here"),
    };
    let bug = std::env::var(BUG_ENV).unwrap_or_default();
    let bug = Bug::from_name(&bug).ok_or_else(|| anyhow::anyhow!("{BUG_ENV}: no bug {bug:?}"))?;
    bugs::switch_on(Some(bug));
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            mcpfleet::cli::serve::DEFAULT_LOG_FILTER,
        ))
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Runtime::new()?.block_on(async {
        mcpfleet::cli::serve::run_serve(*serve, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
    })?;
    Ok(())
}

/// Whether this machine lets the nemesis make network namespaces.
fn namespaces_work() -> bool {
    Command::new("unshare")
        .args(["-n", "ip", "link", "add", "nmprobe", "type", "bridge"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn main() -> ExitCode {
    if matches!(
        std::env::args().nth(1).as_deref(),
        Some("serve" | "supervise")
    ) {
        return match serve_as_node() {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let args = Args::parse();
    if let Some(dir) = &args.dir {
        // Data dirs left by an earlier run would bring its registry into this one.
        let used = std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
        if used {
            eprintln!(
                "error: {} is not empty: give --dir a new or empty directory",
                dir.display()
            );
            return ExitCode::from(2);
        }
    }
    let inside = std::env::var_os(IN_NAMESPACE).is_some();
    if !args.loopback && !inside {
        if namespaces_work() {
            // Again, inside a private network namespace of its own.
            let status = Command::new("unshare")
                .arg("-n")
                .arg("--")
                .args(std::env::args_os())
                .env(IN_NAMESPACE, "1")
                .status();
            return match status {
                Ok(status) if status.success() => ExitCode::SUCCESS,
                Ok(_) => ExitCode::FAILURE,
                Err(error) => {
                    eprintln!("error: unshare: {error}");
                    ExitCode::FAILURE
                }
            };
        }
        eprintln!("network namespaces cannot be made here: kills and pauses on loopback only");
    }
    let namespaces = inside && !args.loopback;
    let own = std::env::current_exe().expect("the running program has a path");
    let (binary, node_env) = match &args.inject_bug {
        Some(name) => {
            if Bug::from_name(name).is_none() {
                let names: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
                eprintln!("error: no bug {name:?}; the bugs: {}", names.join(", "));
                return ExitCode::from(2);
            }
            (own.clone(), vec![(BUG_ENV.to_string(), name.clone())])
        }
        None => (
            args.binary
                .clone()
                .unwrap_or_else(|| own.with_file_name("mcpfleet")),
            Vec::new(),
        ),
    };
    if !binary.is_file() {
        eprintln!(
            "error: no node binary at {} (build it: cargo build --release --bin mcpfleet)",
            binary.display()
        );
        return ExitCode::from(2);
    }
    let temporary = args.dir.is_none();
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("mcpfleet-nemesis-{}", std::process::id()))
    });
    let options = Options {
        nodes: args.nodes,
        duration: Duration::from_secs(args.duration),
        seed: args.seed,
        clients: args.clients,
        callers: args.callers,
        keys: args.keys(),
        binary,
        node_env,
        namespaces,
        dir: dir.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let report = runtime.block_on(nemesis::run(&options));
    match report {
        Ok(report) => {
            println!("{}", report.summary(&options));
            match &report.failure {
                None => {
                    if temporary {
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                    println!(
                        "ok: linearizable, no acknowledged write lost, no tool call run twice, \
                         no slot with two lives at once"
                    );
                    ExitCode::SUCCESS
                }
                Some(violation) => {
                    println!("FAILED: {violation}");
                    println!("history: {}", dir.join("history.txt").display());
                    println!("node logs: {}", dir.display());
                    println!("replay: {}", args.replay(!namespaces));
                    ExitCode::FAILURE
                }
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            eprintln!("node logs: {}", dir.display());
            ExitCode::FAILURE
        }
    }
}
