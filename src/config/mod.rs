//! The node's one `Config`: defaults that work, `validate()` and a typed error.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::raft::NodeId;

/// The address `mcpfleet serve` uses when given no flags.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";
/// Where `serve` offers the MCP endpoint unless told otherwise.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7800";
/// The data dir `mcpfleet serve` uses when given no flags.
pub const DEFAULT_DATA_DIR: &str = "./mcpfleet-data";
/// Largest client request accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// The longest `request_timeout_ms`: a write is sent again only within its request's
/// time, and client sessions rely on that bound (`raft::sessions`).
pub const MAX_REQUEST_TIMEOUT_MS: u64 = 60_000;
/// Entries sent in one AppendEntries message: with the proposer's byte cap on an entry
/// this bounds the message (see `crate::limits`).
pub const MAX_PAYLOAD_ENTRIES: u64 = 8;
/// Between server and tool in the fleet's tool names, unless configured otherwise.
pub const DEFAULT_TOOL_SEPARATOR: &str = "__";
/// How long a tool call may take, unless configured otherwise.
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 60_000;

/// How a node serves `/mcp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// "host:port" to listen on.
    pub listen: String,
    /// `Host` header values accepted (hostnames or host:port); empty: loopback only.
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted ("scheme://host:port", `:*` for any port). Empty: the
    /// `Origin` header is not checked (rmcp's default).
    pub allowed_origins: Vec<String>,
    /// Between server and tool in the fleet's tool names.
    pub separator: String,
    /// How long a tool call may take.
    pub call_timeout_ms: u64,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// The address to listen on ("host:port"), serving the client and the internal API.
    pub listen: String,
    /// The address other nodes and clients use to reach this node; defaults to `listen`.
    pub advertise: String,
    pub data_dir: PathBuf,
    /// The members of a new static cluster (id -> address). Empty when joining.
    pub initial_cluster: BTreeMap<NodeId, String>,
    /// Any member of a running cluster to join through.
    pub join: Option<String>,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries.
    pub snapshot_after_logs: u64,
    /// Entries kept in the log below the last snapshot (for slow followers).
    pub logs_kept_after_snapshot: u64,
    /// Voters beyond this number join as learners.
    pub max_voters: usize,
    /// Autopilot replaces a voter the leader has not heard from for this long with a
    /// healthy learner (0: never).
    pub dead_voter_after_ms: u64,
    /// How long a learner must have been heard from without a gap before autopilot
    /// promotes it.
    pub learner_stable_ms: u64,
    /// Autopilot removes a learner the leader has not heard from for this long from
    /// the cluster (0: never).
    pub remove_dead_after_ms: u64,
    /// How long a client request may take end to end, including waiting for a leader.
    pub request_timeout_ms: u64,
    /// How long graceful shutdown may take before the node stops anyway.
    pub shutdown_timeout_ms: u64,
    /// Tags this node carries; a server's `node_tags` pick nodes by them.
    pub tags: Vec<String>,
    /// Most replicas this node runs; `None` is no limit.
    pub capacity: Option<u32>,
    /// Most replicas this node starts at once (launch and initialize, for at most
    /// `agent::START_TURN_MS` each); the others wait their turn in the starting state.
    pub max_starting_replicas: usize,
    /// How often the agent heartbeats the leader.
    pub node_heartbeat_interval_ms: u64,
    /// A node the leader has not heard from for this long is marked down and its
    /// replicas move elsewhere.
    pub node_timeout_ms: u64,
    /// How long one answered heartbeat lets the agent run its replicas. Shorter than
    /// `node_timeout_ms` by enough that the old owner has stopped before a new one starts.
    pub lease_ms: u64,
    /// The MCP endpoint (`/mcp` over streamable HTTP); `None`: not served.
    pub http: Option<HttpConfig>,
    /// Most watch streams this node serves at once; one more is refused.
    pub max_watches: usize,
    /// Every client request needs a bearer token (`crate::auth`).
    pub auth: bool,
}

pub mod timing;

/// The most replicas a node may be set to start at once.
pub const MAX_STARTING_REPLICAS: usize = 64;

/// The longest stabilization time autopilot accepts (an hour).
pub const MAX_LEARNER_STABLE_MS: u64 = 3_600_000;

use timing::{fencing_holds, FENCE_MARGIN_MS};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("node id must be at least 1")]
    ZeroId,
    #[error("--initial-cluster does not contain --id {0}")]
    IdNotInCluster(NodeId),
    #[error("--initial-cluster and --join cannot be used together")]
    ClusterAndJoin,
    #[error("invalid address {addr:?}: expected HOST:PORT")]
    BadAddress { addr: String },
    #[error("invalid --initial-cluster entry {entry:?}: expected ID=HOST:PORT")]
    BadClusterEntry { entry: String },
    #[error("timing: {0}")]
    Timing(String),
    #[error("max_starting_replicas must be 1..={MAX_STARTING_REPLICAS}, got {0}")]
    MaxStartingReplicas(usize),
    #[error("max_voters must be 1..=7, got {0}")]
    MaxVoters(usize),
    #[error(
        "--initial-cluster has {members} members but --max-voters is {max_voters}: start \
         at most {max_voters} and add the others with --join (they join as learners), or \
         raise --max-voters"
    )]
    InitialClusterTooBig { members: usize, max_voters: usize },
    #[error("autopilot: {0}")]
    Autopilot(String),
    #[error(
        "tags: at most {} tags of 1..={} bytes each",
        crate::registry::MAX_LIST_ITEMS,
        crate::registry::MAX_NAME_LEN
    )]
    Tags,
    #[error("capacity must be at least 1 (leave it out for no limit)")]
    Capacity,
    #[error("max watches must be 1..={MAX_MAX_WATCHES}, got {0}")]
    MaxWatches(usize),
    #[error("MCP endpoint: {0}")]
    Http(String),
}

impl Default for Config {
    fn default() -> Self {
        Config {
            id: 1,
            listen: DEFAULT_LISTEN.to_string(),
            advertise: DEFAULT_LISTEN.to_string(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            initial_cluster: BTreeMap::from([(1, DEFAULT_LISTEN.to_string())]),
            join: None,
            heartbeat_interval_ms: 40,
            election_timeout_min_ms: 120,
            election_timeout_max_ms: 240,
            snapshot_after_logs: 2_000,
            logs_kept_after_snapshot: 500,
            max_starting_replicas: 4,
            max_voters: 5,
            dead_voter_after_ms: 10_000,
            learner_stable_ms: 10_000,
            remove_dead_after_ms: 86_400_000,
            request_timeout_ms: 5_000,
            shutdown_timeout_ms: 5_000,
            tags: Vec::new(),
            capacity: None,
            node_heartbeat_interval_ms: 100,
            node_timeout_ms: 1_800,
            lease_ms: 1_100,
            http: None,
            max_watches: DEFAULT_MAX_WATCHES,
            auth: false,
        }
    }
}

/// Watch streams one node serves at once, by default.
pub const DEFAULT_MAX_WATCHES: usize = 1_024;
/// The most `max_watches` may be.
pub const MAX_MAX_WATCHES: usize = 65_536;

/// Checks "host:port" with a numeric port.
pub fn validate_address(addr: &str) -> Result<(), ConfigError> {
    let bad = || ConfigError::BadAddress {
        addr: addr.to_string(),
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(())
}

/// Parses `1=HOST:PORT,2=HOST:PORT`.
pub fn parse_initial_cluster(text: &str) -> Result<BTreeMap<NodeId, String>, ConfigError> {
    let mut members = BTreeMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = || ConfigError::BadClusterEntry {
            entry: entry.to_string(),
        };
        let (id, addr) = entry.split_once('=').ok_or_else(bad)?;
        let id: NodeId = id.trim().parse().map_err(|_| bad())?;
        validate_address(addr.trim())?;
        if members.insert(id, addr.trim().to_string()).is_some() {
            return Err(bad());
        }
    }
    Ok(members)
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::ZeroId);
        }
        validate_address(&self.listen)?;
        validate_address(&self.advertise)?;
        if let Some(join) = &self.join {
            validate_address(join)?;
            if !self.initial_cluster.is_empty() {
                return Err(ConfigError::ClusterAndJoin);
            }
        } else if !self.initial_cluster.contains_key(&self.id) {
            return Err(ConfigError::IdNotInCluster(self.id));
        }
        for addr in self.initial_cluster.values() {
            validate_address(addr)?;
        }
        if self.heartbeat_interval_ms == 0
            || self.heartbeat_interval_ms >= self.election_timeout_min_ms
            || self.election_timeout_min_ms >= self.election_timeout_max_ms
        {
            return Err(ConfigError::Timing(
                "need 0 < heartbeat-interval-ms < election-timeout-min-ms < election-timeout-max-ms"
                    .into(),
            ));
        }
        if self.request_timeout_ms < self.election_timeout_max_ms {
            return Err(ConfigError::Timing(
                "request_timeout_ms must be at least election_timeout_max_ms".into(),
            ));
        }
        if self.request_timeout_ms > MAX_REQUEST_TIMEOUT_MS {
            return Err(ConfigError::Timing(format!(
                "request_timeout_ms must be at most {MAX_REQUEST_TIMEOUT_MS}"
            )));
        }
        // Fencing: a lease renewed just before the leader was deposed runs out, and its
        // replicas are killed by their supervisors, before the new leader's grace ends
        // (the whole inequality is in config::timing).
        if self.node_heartbeat_interval_ms == 0
            || self.node_heartbeat_interval_ms * 2 > self.lease_ms
            || !fencing_holds(self.lease_ms, self.node_timeout_ms)
        {
            return Err(ConfigError::Timing(format!(
                "need 0 < 2 x node-heartbeat-interval-ms <= lease-ms and lease-ms + {FENCE_MARGIN_MS} ms < node-timeout-ms"
            )));
        }
        if self.tags.len() > crate::registry::MAX_LIST_ITEMS
            || self
                .tags
                .iter()
                .any(|t| t.is_empty() || t.len() > crate::registry::MAX_NAME_LEN)
        {
            return Err(ConfigError::Tags);
        }
        if self.capacity == Some(0) {
            return Err(ConfigError::Capacity);
        }
        if self.max_watches == 0 || self.max_watches > MAX_MAX_WATCHES {
            return Err(ConfigError::MaxWatches(self.max_watches));
        }
        if self.max_starting_replicas == 0 || self.max_starting_replicas > MAX_STARTING_REPLICAS {
            return Err(ConfigError::MaxStartingReplicas(self.max_starting_replicas));
        }
        if self.max_voters == 0 || self.max_voters > 7 {
            return Err(ConfigError::MaxVoters(self.max_voters));
        }
        if self.initial_cluster.len() > self.max_voters {
            return Err(ConfigError::InitialClusterTooBig {
                members: self.initial_cluster.len(),
                max_voters: self.max_voters,
            });
        }
        for (name, value) in [
            ("dead-voter-after-ms", self.dead_voter_after_ms),
            ("remove-dead-after-ms", self.remove_dead_after_ms),
        ] {
            if value != 0 && value < self.node_timeout_ms {
                return Err(ConfigError::Autopilot(format!(
                    "{name} must be 0 (never) or at least node-timeout-ms ({}), got {value}",
                    self.node_timeout_ms
                )));
            }
        }
        if self.learner_stable_ms > MAX_LEARNER_STABLE_MS {
            return Err(ConfigError::Autopilot(format!(
                "learner-stable-ms must be at most {MAX_LEARNER_STABLE_MS}, got {}",
                self.learner_stable_ms
            )));
        }
        if let Some(http) = &self.http {
            validate_address(&http.listen)?;
            if !crate::gateway::names::valid_separator(&http.separator) {
                return Err(ConfigError::Http(format!(
                    "tool separator {:?} must be 1..=8 of [A-Za-z0-9_-]",
                    http.separator
                )));
            }
            if http.call_timeout_ms == 0
                || http.call_timeout_ms > crate::gateway::MAX_CALL_TIMEOUT_MS
            {
                return Err(ConfigError::Http(format!(
                    "call timeout must be 1..={} ms",
                    crate::gateway::MAX_CALL_TIMEOUT_MS
                )));
            }
        }
        Ok(())
    }

    /// openraft's configuration derived from this one.
    pub fn raft_config(&self) -> openraft::Config {
        openraft::Config {
            cluster_name: "mcpfleet".into(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: 10_000,
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_after_logs),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            purge_batch_size: 256,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn a_leader_with_a_slow_disk_keeps_its_followers_quiet() {
        use crate::control::{MAX_BATCHES_IN_FLIGHT, TOLERATED_FSYNC};
        // A follower's election timer (openraft 0.9) is the lease, which is the
        // maximum election timeout, plus an election timeout drawn from the range. The
        // leader's core sends no heartbeat while it appends the batches in its queue,
        // one fsync each, and a heartbeat is due up to an interval later.
        let config = Config::default();
        let quiet = config.election_timeout_max_ms + config.election_timeout_min_ms;
        let stall = MAX_BATCHES_IN_FLIGHT as u64 * TOLERATED_FSYNC.as_millis() as u64
            + config.heartbeat_interval_ms;
        assert!(stall < quiet, "stall {stall} ms, followers wait {quiet} ms");
    }

    #[test]
    fn config_errors() {
        let parsed = parse_initial_cluster("1=127.0.0.1:1,2=127.0.0.1:2").unwrap();
        assert_eq!(parsed.len(), 2);
        assert!(matches!(
            parse_initial_cluster("1=127.0.0.1"),
            Err(ConfigError::BadAddress { .. })
        ));
        assert!(matches!(
            parse_initial_cluster("x=127.0.0.1:1"),
            Err(ConfigError::BadClusterEntry { .. })
        ));
        let config = Config {
            id: 3,
            initial_cluster: parsed,
            ..Config::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::IdNotInCluster(3))
        ));
        let config = Config {
            heartbeat_interval_ms: 500,
            ..Config::default()
        };
        assert!(matches!(config.validate(), Err(ConfigError::Timing(_))));
        // The whole fencing inequality: 1,100 + 300 + 200 + 100 = 1,700 ms must stay
        // below the node timeout.
        let config = Config {
            node_timeout_ms: 1_700,
            ..Config::default()
        };
        assert!(matches!(config.validate(), Err(ConfigError::Timing(_))));
        let config = Config {
            node_timeout_ms: 1_701,
            ..Config::default()
        };
        config.validate().unwrap();
    }
}
