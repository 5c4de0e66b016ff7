//! The registry's data model: servers, nodes, assignments and replica health.
//!
//! Plain data with serde, so it can travel inside Raft entries and snapshots. Defaults
//! live here so that every spec the registry holds is complete. No I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Longest server name accepted.
pub const MAX_NAME_LEN: usize = 63;
/// Most replicas one server may ask for.
pub const MAX_REPLICAS: u32 = 64;
/// Largest encoded spec accepted, in bytes (command, args, env, headers together).
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
/// Most args, env entries, headers or tags in one spec.
pub const MAX_LIST_ITEMS: usize = 256;
/// Most servers the registry holds.
pub const MAX_SERVERS: usize = 10_000;
/// Most servers one write (`PutServers`, an import) creates or replaces.
pub const MAX_SERVERS_PER_WRITE: usize = 256;
/// Most bytes of specs (`spec_size`) one write carries.
pub const MAX_WRITE_SPEC_BYTES: usize = 1024 * 1024;
/// Largest catalog (tools, prompts and resources together, as JSON) one server may
/// offer, in bytes.
pub const MAX_CATALOG_BYTES: usize = 256 * 1024;
/// Most legacy MCP sessions the registry keeps; past it the oldest goes.
pub const MAX_SESSIONS: usize = 10_000;
/// Largest recorded session (the client's initialize parameters), in bytes.
pub const MAX_SESSION_BYTES: usize = 16 * 1024;
/// Most bytes of content (specs, catalogs and session parameters together, as
/// `spec_size`, `Catalog::size` and the parameters' length count them) the registry
/// holds: with the caps on counts, this keeps a snapshot within what a node decodes
/// (src/limits.rs checks the sum).
pub const MAX_CONTENT_BYTES: usize = 128 * 1024 * 1024;
/// Most nodes the registry holds.
pub const MAX_NODES: usize = 1_000;
/// Most tokens the registry holds.
pub const MAX_TOKENS: usize = 1_000;
/// Most patterns of servers, and of tools, one token names.
pub const MAX_TOKEN_PATTERNS: usize = 32;
/// Longest token name, and longest pattern, in bytes.
pub const MAX_TOKEN_TEXT: usize = 128;
/// Most replica slots (the sum of every server's replicas) the registry holds.
pub const MAX_SLOTS: usize = 20_000;

pub type NodeId = u64;

/// How a replica of a server is reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// A child process speaking MCP over stdin/stdout.
    Stdio {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
        cwd: Option<String>,
    },
    /// A streamable-HTTP MCP endpoint.
    Http {
        url: String,
        headers: BTreeMap<String, String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            interval_ms: 2_000,
            timeout_ms: 1_000,
            healthy_threshold: 1,
            unhealthy_threshold: 3,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CircuitBreaker {
    pub failure_threshold: u32,
    pub open_ms: u64,
    pub half_open_max_calls: u32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            failure_threshold: 5,
            open_ms: 10_000,
            half_open_max_calls: 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Restarts within `crash_loop_window_ms` after which the replica is in crash-loop.
    pub crash_loop_restarts: u32,
    pub crash_loop_window_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_backoff_ms: 200,
            max_backoff_ms: 30_000,
            crash_loop_restarts: 5,
            crash_loop_window_ms: 60_000,
        }
    }
}

/// An MCP server as the registry holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSpec {
    pub name: String,
    pub transport: Transport,
    pub replicas: u32,
    /// Tags a node must carry to run a replica (all of them).
    pub node_tags: Vec<String>,
    pub health_check: HealthCheck,
    pub circuit_breaker: CircuitBreaker,
    pub restart: RestartPolicy,
    /// Most tool calls one replica has in flight (its bulkhead); more wait briefly,
    /// then fail as overloaded.
    pub max_concurrent_calls: u32,
}

/// Default bulkhead of a replica: calls in flight at once.
pub const DEFAULT_MAX_CONCURRENT_CALLS: u32 = 64;
/// Largest bulkhead a spec may set.
pub const MAX_CONCURRENT_CALLS: u32 = 1024;

impl ServerSpec {
    /// A stdio server with one replica and default settings.
    pub fn stdio(name: &str, command: &str, args: &[&str]) -> ServerSpec {
        ServerSpec {
            name: name.to_string(),
            transport: Transport::Stdio {
                command: command.to_string(),
                args: args.iter().map(|a| a.to_string()).collect(),
                env: BTreeMap::new(),
                cwd: None,
            },
            replicas: 1,
            node_tags: Vec::new(),
            health_check: HealthCheck::default(),
            circuit_breaker: CircuitBreaker::default(),
            restart: RestartPolicy::default(),
            max_concurrent_calls: DEFAULT_MAX_CONCURRENT_CALLS,
        }
    }
}

/// A server with the revisions that created and last changed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    pub spec: ServerSpec,
    pub create_revision: u64,
    pub mod_revision: u64,
    /// The revision at which the transport (how replicas are launched or reached) last
    /// changed. Other changes (settings, replicas, tags) apply without a restart.
    pub transport_revision: u64,
}

/// A node's liveness, as the leader sees it from the node's heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeStatus {
    Up,
    Down,
}

/// A node's admin state, as operators set it. Independent of liveness: a draining node
/// that dies is down (and its slots move) like any other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdminState {
    #[default]
    Active,
    Draining,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    /// The address that serves both the client and the node-to-node API.
    pub addr: String,
    pub tags: Vec<String>,
    /// Liveness (the leader's heartbeat check).
    pub status: NodeStatus,
    /// Admin state (operators).
    pub admin: AdminState,
    /// Most replicas the node runs; `None` is no limit.
    pub capacity: Option<u32>,
    /// The incarnation of the data dir the node speaks for (0: not known yet).
    pub incarnation: u64,
}

impl NodeRecord {
    /// Whether the planner may put new replicas here: up and active.
    pub fn accepts_replicas(&self) -> bool {
        self.status == NodeStatus::Up && self.admin == AdminState::Active
    }
}

/// Replica `slot` of `server` belongs on `node_id`, as decided at `epoch` (a log index).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub server: String,
    pub slot: u32,
    pub node_id: NodeId,
    pub epoch: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicaState {
    Starting,
    Healthy,
    Unhealthy,
    Backoff,
    CrashLoop,
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// What the node running a replica last reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaHealth {
    pub node_id: NodeId,
    /// The server's `transport_revision` this replica runs.
    pub transport_revision: u64,
    pub state: ReplicaState,
    pub breaker: BreakerState,
    pub restarts: u32,
    pub last_error: Option<String>,
    pub probe_latency_ms: Option<u64>,
}

/// What a server offers, as one of its replicas reported it after connecting (and
/// again after a list-changed notification). Each list is the JSON array the server
/// sent (its MCP objects untouched), so every node answers list requests from its own
/// applied state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// The server's `transport_revision` the reporting replica ran.
    pub transport_revision: u64,
    /// The server's name, version and the protocol version negotiated with it.
    pub server_info: String,
    pub tools: String,
    pub prompts: String,
    pub resources: String,
}

impl Catalog {
    /// Bytes the catalog's lists take together.
    pub fn size(&self) -> usize {
        self.server_info.len() + self.tools.len() + self.prompts.len() + self.resources.len()
    }
}

/// A legacy (2025-11-25 and older) MCP session that a client opened through some node:
/// any node can carry it on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The client's initialize parameters, as JSON.
    pub initialize: String,
    /// The revision that recorded it (older sessions go first when the table is full).
    pub revision: u64,
}

/// What a token may do. Each role may do all that the roles before it may:
/// - `Reader`: status and lists (servers, members, tools);
/// - `Caller`: also call tools, of the servers and tools its patterns name;
/// - `Operator`: also write servers and drain nodes, and call every tool;
/// - `Admin`: also membership, tokens and backups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Reader,
    Caller,
    Operator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Reader, Role::Caller, Role::Operator, Role::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Caller => "caller",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.name() == text)
    }
}

/// A bearer token, as the registry holds it: never its secret, only the secret's
/// SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The token's public id (16 hex digits), also its first part.
    pub id: String,
    /// What the token is for, as its creator named it.
    pub name: String,
    pub role: Role,
    /// For a caller: patterns (`*` for any run of characters) of the servers, and of
    /// the servers' own tool names, it may call. Empty: any.
    pub servers: Vec<String>,
    pub tools: Vec<String>,
    /// The SHA-256 of the token's secret, in lower-case hex.
    pub secret_sha256: String,
    /// The revision that created it.
    pub create_revision: u64,
}

/// Most entries the audit log keeps; past it the oldest go.
pub const MAX_AUDIT_ENTRIES: usize = 10_000;
/// Longest actor, and longest target, an audit entry keeps, in bytes.
pub const MAX_AUDIT_TEXT: usize = 256;

/// One change a client made to the registry, as the audit log keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The registry's revision after the change.
    pub revision: u64,
    /// The leader's clock when it made the log entry (ms since the Unix epoch).
    pub stamp_ms: u64,
    /// Who: `token ID`, `cert NAME` or `anonymous`.
    pub actor: String,
    /// What: the command's kind (`put-server`, `revoke-token`, ...).
    pub action: String,
    /// What it changed: a server's name (several joined by commas), a token's id, a
    /// node's id.
    pub target: String,
}
