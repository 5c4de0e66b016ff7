//! The command line: `serve` and the client commands. Thin: parses flags, calls the
//! client API or starts a node, prints a table or JSON. Errors become one line.

pub mod bench;
pub mod bench_plan;
pub mod cert;
mod client;
pub mod config_file;
pub mod import;
pub mod mcpservers;
mod output;
pub mod serve;
pub mod snapshot;
pub mod token;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use client::{run_client, CliError, ClientCommand};

/// The address client commands use when given no --endpoint.
pub const DEFAULT_ENDPOINT: &str = crate::config::DEFAULT_LISTEN;

/// Why a command line was not taken.
#[derive(Debug)]
pub enum ParseFailure {
    /// Help, the version, or a usage error, as clap reports them.
    Clap(clap::Error),
    /// The config file of `serve` has errors.
    Config(Vec<config_file::ConfigFileError>),
}

/// Parses a command line: `serve`'s flags take their `MCPFLEET_*` variables, and the
/// config file's values (`serve --config FILE`) as their defaults.
pub fn parse_args(args: Vec<std::ffi::OsString>) -> Result<Cli, ParseFailure> {
    use clap::{CommandFactory, FromArgMatches};
    let values = match config_file::named_config(&args) {
        Some(path) => {
            let command = Cli::command();
            let serve = command
                .find_subcommand("serve")
                .expect("serve is a command");
            config_file::read(&path, serve).map_err(ParseFailure::Config)?
        }
        None => Default::default(),
    };
    let command = Cli::command().mut_subcommand("serve", |serve| {
        config_file::with_defaults(config_file::with_env(serve), &values)
    });
    let matches = command
        .try_get_matches_from(args)
        .map_err(ParseFailure::Clap)?;
    Cli::from_arg_matches(&matches).map_err(ParseFailure::Clap)
}

#[derive(Parser, Debug)]
#[command(
    name = "mcpfleet",
    version,
    about = "A highly available control plane for fleets of MCP servers"
)]
pub struct Cli {
    /// The client flags, taken anywhere on the line (before or after the command).
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: TopCommand,
}

#[derive(Subcommand, Debug)]
pub enum TopCommand {
    /// Run a node (with no flags: a single-node cluster on 127.0.0.1:7700, data in ./mcpfleet-data).
    Serve(Box<serve::ServeArgs>),
    /// Manage MCP servers in the registry.
    Server {
        #[command(subcommand)]
        command: ServerCommand,
    },
    /// Inspect and change the cluster.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// The whole fleet on one screen: nodes, servers and every replica's health.
    Status {
        /// Answer from this node's local state without confirming it is current.
        #[arg(long)]
        stale: bool,
        /// Draw the fleet again every --interval-ms until interrupted.
        #[arg(long)]
        watch: bool,
        /// How often --watch draws, in ms.
        #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
        interval_ms: u64,
    },
    /// Take nodes out of service and back.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// List the fleet's tools (every server's, or one server's).
    Tools {
        /// Only this server's tools.
        server: Option<String>,
    },
    /// Call one tool of one server through the fleet and print its text content.
    Call {
        server: String,
        /// The server's own name for the tool.
        tool: String,
        /// The arguments, a JSON object.
        #[arg(long = "args")]
        arguments: Option<String>,
        /// How long the call may take (0: the node's default).
        #[arg(long, default_value_t = 0)]
        timeout_ms: u64,
    },
    /// Register the servers of an `mcpServers` JSON file (Claude Desktop, Claude Code,
    /// Cursor, VS Code) in one write: all of them or none.
    Import(import::ImportArgs),
    /// Print the registry's servers as an `mcpServers` JSON file.
    Export(import::ExportArgs),
    /// Check config files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Back up the registry and restore it into new data dirs.
    Snapshot {
        #[command(subcommand)]
        command: snapshot::SnapshotCommand,
    },
    /// Make a development CA and the node and client certificates it signs, for
    /// mutual TLS (--tls-* on serve; --cacert, --cert and --key on clients).
    Cert {
        #[command(subcommand)]
        command: cert::CertCommand,
    },
    /// Make the cluster's secrets key, which seals secret env values and headers
    /// (serve --secrets-key-file; the same file on every node).
    SecretsKey {
        /// The file to write (readable by its owner only; never overwritten).
        file: std::path::PathBuf,
    },
    /// The audit log: who changed what in the registry, and when (needs an admin's
    /// token with --auth).
    Audit {
        /// Only changes after this revision.
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// Bearer tokens, for nodes started with --auth.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// Load generators: writes, and tool calls through /mcp.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Runs an MCP server command in its own process group and takes the group down
    /// with it (used by nodes; not for people).
    #[command(hide = true)]
    Supervise(SuperviseArgs),
}

/// `mcpfleet supervise`: how a node launches a stdio server.
#[derive(clap::Args, Debug)]
pub struct SuperviseArgs {
    /// The descriptor on which the node renews the deadline past which the server
    /// is killed.
    #[arg(long)]
    fence_fd: Option<i32>,
    /// Run the server as UID:GID (no supplementary groups).
    #[arg(long)]
    user: Option<String>,
    /// Most memory the server and its children use (cgroup memory.max, else
    /// RLIMIT_AS).
    #[arg(long)]
    memory_bytes: Option<u64>,
    /// Most open files of each of the server's processes (RLIMIT_NOFILE).
    #[arg(long)]
    open_files: Option<u64>,
    /// Most processes (cgroup pids.max, else RLIMIT_NPROC).
    #[arg(long)]
    processes: Option<u64>,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

impl SuperviseArgs {
    /// Runs the server until it ends, or until the node's deadline passes; returns the
    /// exit code the supervisor ends with (2: bad arguments).
    pub async fn run(self) -> i32 {
        use crate::env::isolation;
        let Some((program, args)) = self.command.split_first() else {
            eprintln!("mcpfleet supervise: no command");
            return 2;
        };
        let user = match self.user.as_deref().map(isolation::parse_user_arg) {
            None => None,
            Some(Ok(user)) => Some(user),
            Some(Err(error)) => {
                eprintln!("mcpfleet supervise: {error}");
                return 2;
            }
        };
        let limits = isolation::Limits {
            memory_bytes: self.memory_bytes,
            open_files: self.open_files,
            processes: self.processes,
        };
        crate::env::launcher::supervise(program, args, self.fence_fd, user, limits).await
    }
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Check a config file as `serve --config FILE` reads it: names the line, key and
    /// reason of each error.
    Check { file: std::path::PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Move every replica off a node (before maintenance); it runs none until undrained.
    Drain { id: u64 },
    /// Return a drained node to service.
    Undrain { id: u64 },
}

/// The flags of every client command (`serve` ignores them).
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// For client commands: any node of the cluster (HOST:PORT), or several joined by
    /// commas, tried in turn. `serve` ignores it.
    #[arg(long, global = true, env = "MCPFLEET_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// For client commands: the cluster's CA certificate (PEM), for mutual TLS with
    /// --cert and --key. `serve` ignores it.
    #[arg(long, global = true, env = "MCPFLEET_CACERT")]
    pub cacert: Option<std::path::PathBuf>,
    /// For client commands: this client's certificate (PEM), signed by the cluster's
    /// CA. `serve` ignores it.
    #[arg(long, global = true, env = "MCPFLEET_CERT")]
    pub cert: Option<std::path::PathBuf>,
    /// For client commands: this client's private key (PEM). `serve` ignores it.
    #[arg(long, global = true, env = "MCPFLEET_KEY")]
    pub key: Option<std::path::PathBuf>,
    /// For client commands: the bearer token (`mcpf_...`) for nodes started with
    /// --auth. Prefer the variable: a flag shows in the process list. `serve` ignores
    /// it.
    #[arg(long, global = true, env = "MCPFLEET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// For client commands: the output format. `serve` ignores it.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum ServerCommand {
    /// Create or replace a server.
    Add(Box<AddServerArgs>),
    /// Show one server.
    Get {
        name: String,
        /// Answer from this node's local state without confirming it is current.
        #[arg(long)]
        stale: bool,
    },
    /// List servers.
    Ls {
        #[arg(long)]
        stale: bool,
    },
    /// Remove a server.
    Rm {
        name: String,
        /// Only if the server's revision is still this one.
        #[arg(long)]
        expected_revision: Option<u64>,
    },
    /// Each replica of a server: node, state, breaker, restarts, last error, probe latency.
    Status {
        name: String,
        #[arg(long)]
        stale: bool,
    },
    /// Print changes to servers as they happen.
    Watch {
        /// Start after this revision (0: from the oldest change this node keeps).
        #[arg(long, default_value_t = 0)]
        from_revision: u64,
    },
}

#[derive(Args, Debug)]
pub struct AddServerArgs {
    pub name: String,
    /// The command that starts a stdio MCP server.
    #[arg(long, conflicts_with = "url", required_unless_present = "url")]
    pub command: Option<String>,
    /// An argument for the command (repeat for more).
    #[arg(long = "arg", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// An environment variable for the command, KEY=VALUE (repeat for more).
    #[arg(long = "env")]
    pub env: Vec<String>,
    /// A secret environment variable, KEY=VALUE (repeat for more): stored sealed with
    /// the cluster's secrets key, shown as <secret>, given in clear only to the server.
    #[arg(long = "secret-env", conflicts_with = "url")]
    pub secret_env: Vec<String>,
    /// Working directory for the command.
    #[arg(long)]
    pub cwd: Option<String>,
    /// The URL of a streamable-HTTP MCP server.
    #[arg(long)]
    pub url: Option<String>,
    /// An HTTP header, KEY=VALUE (repeat for more).
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// A secret HTTP header, KEY=VALUE (repeat for more), sealed as --secret-env is.
    #[arg(long = "secret-header", conflicts_with = "command")]
    pub secret_headers: Vec<String>,
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// A tag a node must carry to run this server (repeat for more).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Only if the server's revision is still this one (0: only if it does not exist).
    #[arg(long)]
    pub expected_revision: Option<u64>,
    /// Health check: ping every this many ms (default 2000).
    #[arg(long)]
    pub health_interval_ms: Option<u64>,
    /// Health check: a ping fails after this many ms (default 1000).
    #[arg(long)]
    pub health_timeout_ms: Option<u64>,
    /// Answered pings in a row that make a replica healthy (default 1).
    #[arg(long)]
    pub healthy_threshold: Option<u32>,
    /// Failed pings in a row that make a replica unhealthy (default 3; twice that restarts it).
    #[arg(long)]
    pub unhealthy_threshold: Option<u32>,
    /// First restart delay after a failure (default 200; doubles per failure).
    #[arg(long)]
    pub restart_initial_backoff_ms: Option<u64>,
    /// Longest restart delay (default 30000).
    #[arg(long)]
    pub restart_max_backoff_ms: Option<u64>,
    /// Failures within the crash-loop window that mean crash-loop (default 5).
    #[arg(long)]
    pub crash_loop_restarts: Option<u32>,
    /// The crash-loop window (default 60000).
    #[arg(long)]
    pub crash_loop_window_ms: Option<u64>,
    /// Failed calls in a row that open a replica's circuit breaker (default 5).
    #[arg(long)]
    pub breaker_failure_threshold: Option<u32>,
    /// How long an open breaker stays open before it lets a trial call through (default 10000).
    #[arg(long)]
    pub breaker_open_ms: Option<u64>,
    /// Trial calls a half-open breaker lets through (default 1).
    #[arg(long)]
    pub breaker_half_open_calls: Option<u32>,
    /// Tool calls one replica runs at once; more wait up to 50 ms, then fail as
    /// overloaded (default 64, at most 1024).
    #[arg(long)]
    pub max_concurrent_calls: Option<u32>,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Members, leader, term, commit and applied index, revision.
    Status,
    /// Add a node (as a learner, then a voter while there are fewer than --max-voters).
    AddNode { id: u64, addr: String },
    /// Remove a node from the cluster.
    RemoveNode { id: u64 },
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Closed-loop registry writes: reports writes/s and latency percentiles.
    Put(bench::PutArgs),
    /// Closed-loop MCP tool calls against any streamable-HTTP endpoint (a node's /mcp,
    /// or an MCP server itself): calls/s, latency percentiles and failed calls.
    Call(bench::CallArgs),
    /// The placement planner on a synthetic cluster (no node needed): time per round
    /// and moves, for the first placement, a round with nothing to change, and the
    /// round after losing a share of the nodes.
    Plan(bench_plan::PlanArgs),
}
