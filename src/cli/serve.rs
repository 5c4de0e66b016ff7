//! `mcpfleet serve`: opens the data dir, builds the production environment and runs a
//! node until SIGINT or SIGTERM.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};

use super::client::CliError;
use crate::config::Config;
use crate::config::HttpConfig;
use crate::config::{parse_initial_cluster, DEFAULT_DATA_DIR, DEFAULT_HTTP_LISTEN, DEFAULT_LISTEN};
use crate::env::isolation::{Isolation, IsolationError, Limits, RunAs};
use crate::env::launcher::ProcessLauncher;
use crate::env::tls::{Tls, TlsFiles};
use crate::env::TcpNetwork;
use crate::env::{Disk, SledDisk};
use crate::node::Environment;

/// The metadata key that records which node a data dir belongs to.
const NODE_ID_KEY: &str = "node_id";

/// How a node writes its log lines (to stderr).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The log filter when neither --log nor RUST_LOG says otherwise.
pub const DEFAULT_LOG_FILTER: &str = "mcpfleet=info,openraft=warn";

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// A config file (mcpfleet.toml): a key for every flag, named as the flag. Flags
    /// and MCPFLEET_* variables override it.
    #[arg(long, env = crate::cli::config_file::CONFIG_ENV)]
    pub config: Option<PathBuf>,
    /// This node's id (1 or more).
    #[arg(long, default_value_t = 1)]
    pub id: u64,
    /// Address to listen on for clients and other nodes.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Address others reach this node at (default: --listen, or this node's entry in --initial-cluster).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Data directory (one sled database).
    #[arg(long = "data", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Members of a new static cluster: 1=HOST:PORT,2=HOST:PORT,...
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// Join a running cluster through any of its members (HOST:PORT).
    #[arg(long, conflicts_with = "initial_cluster")]
    pub join: Option<String>,
    /// Raft heartbeat interval.
    #[arg(long, default_value_t = Config::default().heartbeat_interval_ms)]
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the randomized election timeout.
    #[arg(long, default_value_t = Config::default().election_timeout_min_ms)]
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout.
    #[arg(long, default_value_t = Config::default().election_timeout_max_ms)]
    pub election_timeout_max_ms: u64,
    /// A tag this node carries (repeat for more); servers pick nodes by tags.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Most replicas this node runs (default: no limit).
    #[arg(long)]
    pub capacity: Option<u32>,
    /// A node silent for this long is marked down and its replicas move elsewhere.
    #[arg(long, default_value_t = Config::default().node_timeout_ms)]
    pub node_timeout_ms: u64,
    /// How long one answered heartbeat lets this node run its replicas.
    #[arg(long, default_value_t = Config::default().lease_ms)]
    pub lease_ms: u64,
    /// How often this node heartbeats the leader.
    #[arg(long, default_value_t = Config::default().node_heartbeat_interval_ms)]
    pub node_heartbeat_interval_ms: u64,
    /// Most replicas this node starts at once (launch and MCP initialize); the others
    /// wait their turn. A replica holds its turn for 2 s at most. Keeps a node that takes over many replicas from starving its
    /// host, and its own heartbeats, of CPU.
    #[arg(long, default_value_t = Config::default().max_starting_replicas)]
    pub max_starting_replicas: usize,
    /// Most voters; nodes beyond them join as learners, which replicate, serve and run
    /// replicas, and autopilot promotes them in place of dead voters.
    #[arg(long, default_value_t = Config::default().max_voters)]
    pub max_voters: usize,
    /// Autopilot: a voter the leader has not heard from for this long is replaced by a
    /// healthy learner (0: never).
    #[arg(long, default_value_t = Config::default().dead_voter_after_ms)]
    pub dead_voter_after_ms: u64,
    /// Autopilot: how long a learner must have been heard from without a gap before it
    /// is promoted.
    #[arg(long, default_value_t = Config::default().learner_stable_ms)]
    pub learner_stable_ms: u64,
    /// Autopilot: a learner the leader has not heard from for this long leaves the
    /// cluster for good (0: never).
    #[arg(long, default_value_t = Config::default().remove_dead_after_ms)]
    pub remove_dead_after_ms: u64,
    /// Build a snapshot (and purge the log) after this many entries.
    #[arg(long, default_value_t = Config::default().snapshot_after_logs)]
    pub snapshot_after_logs: u64,
    /// Log lines as readable text, or as one JSON object each (for log collectors).
    #[arg(long, env = "MCPFLEET_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Which log lines to write, in RUST_LOG's syntax (`mcpfleet=debug,openraft=info`).
    /// Default: RUST_LOG if set, else `mcpfleet=info,openraft=warn`.
    #[arg(long = "log", env = "MCPFLEET_LOG")]
    pub log_filter: Option<String>,
    /// Where to serve HTTP, HOST:PORT: the MCP endpoint (streamable HTTP at /mcp), the
    /// status page (/), /metrics, /healthz and /readyz; "off" to serve none.
    #[arg(long, default_value = DEFAULT_HTTP_LISTEN)]
    pub http: String,
    /// A Host header the MCP endpoint accepts (repeat for more; default: loopback
    /// names only). Set it when clients reach the node by another name.
    #[arg(long = "mcp-allowed-host")]
    pub mcp_allowed_hosts: Vec<String>,
    /// A browser Origin the MCP endpoint accepts, scheme://host:port (repeat for more;
    /// default: Origin not checked).
    #[arg(long = "mcp-allowed-origin")]
    pub mcp_allowed_origins: Vec<String>,
    /// Between server and tool in the fleet's tool names.
    #[arg(long, default_value = crate::gateway::names::DEFAULT_SEPARATOR)]
    pub tool_separator: String,
    /// How long a tool call may take.
    #[arg(long, default_value_t = crate::gateway::DEFAULT_CALL_TIMEOUT_MS)]
    pub call_timeout_ms: u64,
    /// Most watch streams this node serves at once; one more gets RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = crate::config::DEFAULT_MAX_WATCHES)]
    pub max_watches: usize,
    /// Run stdio servers as this user (a name or uid; needs root). Default: as this
    /// node's user.
    #[arg(long)]
    pub replica_user: Option<String>,
    /// The variables of this node's environment that stdio servers get, besides their
    /// spec's env (comma-separated; "" for none). Nothing else of it reaches them.
    #[arg(long, value_delimiter = ',', default_values = crate::env::isolation::DEFAULT_PASS_ENV)]
    pub replica_pass_env: Vec<String>,
    /// Most memory one stdio server and its children use, in MiB (cgroup memory.max
    /// where cgroup v2 allows, else RLIMIT_AS). Default: no limit.
    #[arg(long)]
    pub replica_memory_mib: Option<u64>,
    /// Most open files of each process of a stdio server (RLIMIT_NOFILE). Default: as
    /// this node's.
    #[arg(long)]
    pub replica_open_files: Option<u64>,
    /// Most processes of one stdio server (cgroup pids.max, else RLIMIT_NPROC, which
    /// counts every process of the server's user). Default: no limit.
    #[arg(long)]
    pub replica_processes: Option<u64>,
    /// The cluster's CA certificate (PEM). With --tls-cert and --tls-key, the gRPC port
    /// serves only mutual TLS, to nodes and clients whose certificate this CA signed,
    /// and this node dials other nodes over TLS too (`mcpfleet cert` makes them).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), signed by --tls-ca, naming the host that others
    /// dial it at (an IP address or DNS name).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// The cluster's secrets key (`mcpfleet secrets-key FILE` makes one; the same file
    /// on every node): this node seals the secret values written through it
    /// (--secret-env, --secret-header) and opens those of the replicas it launches.
    /// Without it, secret values are refused.
    #[arg(long)]
    pub secrets_key_file: Option<PathBuf>,
    /// Require a bearer token of every client request, on the gRPC client API and on
    /// /mcp, and allow each only what its role allows (`mcpfleet token`). Give it to
    /// every node of the cluster.
    #[arg(long)]
    pub auth: bool,
    /// Listen on addresses other than loopback without protection: the gRPC port
    /// without both TLS and --auth, or the HTTP port (which has no TLS yet, so its
    /// tokens would cross the network in clear). Anyone who reaches an unprotected
    /// port can run programs on this host. Only on a network that you alone reach.
    #[arg(long)]
    pub insecure: bool,
}

/// The addresses of `config` that are not loopback and not protected (the gRPC port
/// with TLS and auth is): each is open to whoever reaches it, as (what, address).
fn exposed(config: &Config, tls: bool) -> Vec<(&'static str, String)> {
    let mut exposed = Vec::new();
    let protected = tls && config.auth;
    if !protected && !is_loopback(&config.listen) {
        exposed.push(("--listen", config.listen.clone()));
    }
    if let Some(http) = config.http.as_ref().filter(|h| !is_loopback(&h.listen)) {
        exposed.push(("--http", http.listen.clone()));
    }
    exposed
}

/// Whether HOST:PORT names a loopback address (127.0.0.0/8, ::1, localhost).
fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl ServeArgs {
    /// The TLS files, all three or none.
    pub fn tls_files(&self) -> Result<Option<TlsFiles>, CliError> {
        TlsFiles::from_parts(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            ["--tls-ca", "--tls-cert", "--tls-key"],
        )
        .map_err(|e| CliError::Usage(e.to_string()))
    }

    /// How stdio servers start, checked: the user exists and may be taken on, the
    /// limits are sane.
    pub fn isolation(&self) -> Result<Isolation, CliError> {
        let usage = |e: IsolationError| CliError::Usage(e.to_string());
        let user = self
            .replica_user
            .as_deref()
            .map(RunAs::lookup)
            .transpose()
            .map_err(usage)?;
        let isolation = Isolation {
            user,
            pass_env: self
                .replica_pass_env
                .iter()
                .filter(|v| !v.is_empty())
                .cloned()
                .collect(),
            limits: Limits {
                memory_bytes: self
                    .replica_memory_mib
                    .map(|mib| mib.saturating_mul(1 << 20)),
                open_files: self.replica_open_files,
                processes: self.replica_processes,
            },
        };
        isolation.check().map_err(usage)?;
        Ok(isolation)
    }

    pub fn to_config(&self) -> Result<Config, CliError> {
        let usage = |e: crate::config::ConfigError| CliError::Usage(e.to_string());
        let initial_cluster = match (&self.initial_cluster, &self.join) {
            (Some(text), _) => parse_initial_cluster(text).map_err(usage)?,
            (None, Some(_)) => Default::default(),
            (None, None) => {
                let addr = self
                    .advertise
                    .clone()
                    .unwrap_or_else(|| self.listen.clone());
                [(self.id, addr)].into_iter().collect()
            }
        };
        let advertise = self
            .advertise
            .clone()
            .or_else(|| initial_cluster.get(&self.id).cloned())
            .unwrap_or_else(|| self.listen.clone());
        let config = Config {
            id: self.id,
            listen: self.listen.clone(),
            advertise,
            data_dir: self.data_dir.clone(),
            initial_cluster,
            join: self.join.clone(),
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            election_timeout_min_ms: self.election_timeout_min_ms,
            election_timeout_max_ms: self.election_timeout_max_ms,
            snapshot_after_logs: self.snapshot_after_logs,
            tags: {
                let mut tags = self.tags.clone();
                tags.sort();
                tags.dedup();
                tags
            },
            capacity: self.capacity,
            max_starting_replicas: self.max_starting_replicas,
            node_timeout_ms: self.node_timeout_ms,
            lease_ms: self.lease_ms,
            node_heartbeat_interval_ms: self.node_heartbeat_interval_ms,
            max_voters: self.max_voters,
            dead_voter_after_ms: self.dead_voter_after_ms,
            learner_stable_ms: self.learner_stable_ms,
            remove_dead_after_ms: self.remove_dead_after_ms,
            http: (self.http != "off").then(|| HttpConfig {
                listen: self.http.clone(),
                allowed_hosts: self.mcp_allowed_hosts.clone(),
                allowed_origins: self.mcp_allowed_origins.clone(),
                separator: self.tool_separator.clone(),
                call_timeout_ms: self.call_timeout_ms,
            }),
            max_watches: self.max_watches,
            auth: self.auth,
            ..Config::default()
        };
        config.validate().map_err(usage)?;
        let tls = self.tls_files()?.is_some();
        if let (false, Some((flag, addr))) = (self.insecure, exposed(&config, tls).first()) {
            let (missing, remedy) = match (*flag, tls, config.auth) {
                ("--listen", false, false) => (
                    "this port has no TLS and no authentication",
                    "give --tls-ca, --tls-cert, --tls-key and --auth, ",
                ),
                ("--listen", false, true) => (
                    "this port has no TLS",
                    "give --tls-ca, --tls-cert and --tls-key, ",
                ),
                ("--listen", true, _) => ("this port has no authentication", "give --auth, "),
                _ => ("mcpfleet has no TLS on its HTTP port yet", ""),
            };
            return Err(CliError::Usage(format!(
                "refusing to listen on {addr} ({flag}): it is not loopback, and {missing}, \
                 so anyone who reaches it could run programs on this host; listen on \
                 127.0.0.1, {remedy}or give --insecure (insecure = true) on a network only \
                 you reach"
            )));
        }
        Ok(config)
    }
}

/// Checks that the data dir `dir` on `disk` belongs to node `id`, and claims it if it
/// is new.
pub(super) async fn claim_data_dir(
    disk: &dyn Disk,
    id: u64,
    dir: &std::path::Path,
) -> Result<(), CliError> {
    let failed = |e: crate::env::DiskError| CliError::Failed(e.to_string());
    match disk.get_meta(NODE_ID_KEY).map_err(failed)? {
        Some(bytes) => {
            let owner = <[u8; 8]>::try_from(bytes.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| {
                    CliError::Failed(format!(
                        "data dir {} is corrupt: unreadable node id",
                        dir.display()
                    ))
                })?;
            if owner != id {
                return Err(CliError::Failed(format!(
                    "data dir {} belongs to node {owner}, not node {id}",
                    dir.display(),
                )));
            }
        }
        None => disk
            .put_meta(NODE_ID_KEY, id.to_be_bytes().to_vec())
            .await
            .map_err(failed)?,
    }
    Ok(())
}

/// Runs a node until `shutdown` resolves.
pub async fn run_serve(
    args: ServeArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), CliError> {
    let config = args.to_config()?;
    // Checked before anything is made: a node that cannot start servers as asked
    // does not start.
    let isolation = args.isolation()?;
    // The certificates are read and checked before anything is made.
    let tls = args
        .tls_files()?
        .map(|files| Tls::load(&files))
        .transpose()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    for (flag, addr) in exposed(&config, tls.is_some()) {
        tracing::warn!(
            %addr,
            flag,
            "--insecure: listening beyond loopback without TLS and authentication"
        );
    }
    let secrets = args
        .secrets_key_file
        .as_deref()
        .map(crate::secrets::SecretsKey::load)
        .transpose()
        .map_err(|e| CliError::Usage(e.to_string()))?
        .map(Arc::new);
    let disk = SledDisk::open(&config.data_dir).map_err(|e| CliError::Failed(e.to_string()))?;
    claim_data_dir(&disk, config.id, &config.data_dir).await?;
    let mut env = Environment::production(Arc::new(disk));
    env.network = Arc::new(TcpNetwork { tls });
    // Every MCP server runs under this same binary's `supervise`, which takes it down
    // if this node dies.
    let supervisor = std::env::current_exe().map_err(|e| {
        CliError::Failed(format!(
            "cannot find the mcpfleet binary to supervise servers: {e}"
        ))
    })?;
    env.launcher = Some(Arc::new(ProcessLauncher {
        supervisor: Some(supervisor),
        isolation,
        secrets: secrets.clone(),
    }));
    env.secrets = secrets;
    crate::node::run(config, env, shutdown)
        .await
        .map_err(|e| CliError::Failed(e.to_string()))
}
