//! Commands that change the registry, their outcomes and their typed errors.
//!
//! A command travels through the Raft log; its outcome is decided by `apply` alone, so
//! every node reaches the same outcome. No I/O.

use serde::{Deserialize, Serialize};

use super::model::{
    AdminState, Catalog, NodeId, NodeRecord, NodeStatus, ReplicaHealth, ServerSpec, TokenRecord,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create or replace a server. With `expected_revision`, only if the server's
    /// `mod_revision` equals it; `Some(0)` means the server must not exist.
    PutServer {
        spec: ServerSpec,
        expected_revision: Option<u64>,
    },
    DeleteServer {
        name: String,
        expected_revision: Option<u64>,
    },
    /// Record a node (its address, tags and status) in the registry.
    PutNode {
        node: NodeRecord,
    },
    RemoveNode {
        id: NodeId,
    },
    /// A node announces itself (through its heartbeats): a new node is recorded as up;
    /// a known one keeps its status and takes the new address, tags and capacity.
    RegisterNode {
        id: NodeId,
        addr: String,
        tags: Vec<String>,
        capacity: Option<u32>,
        /// Its data dir's incarnation. A node known with another one is refused.
        incarnation: u64,
    },
    /// The leader's liveness check: up or down.
    SetNodeStatus {
        id: NodeId,
        status: NodeStatus,
    },
    /// An operator drains a node (its slots move off it) or makes it active again.
    /// Never changes liveness.
    SetNodeAdmin {
        id: NodeId,
        admin: AdminState,
    },
    /// The node running slot `slot` of `server` under the assignment made at `epoch`
    /// reports a health transition. Rejected unless that assignment is still current,
    /// so a former owner's late report cannot overwrite the new owner's.
    ReportHealth {
        server: String,
        slot: u32,
        epoch: u64,
        health: ReplicaHealth,
    },
    /// The node running slot `slot` of `server` under the assignment made at `epoch`
    /// reports what the server offers. Rejected unless that assignment is current and
    /// the catalog within `MAX_CATALOG_BYTES`.
    ReportCatalog {
        server: String,
        slot: u32,
        epoch: u64,
        node_id: NodeId,
        catalog: Catalog,
    },
    /// A node opened a legacy MCP session: record it so that every node can serve it.
    PutSession {
        id: String,
        initialize: String,
    },
    /// A legacy MCP session ended.
    DeleteSession {
        id: String,
    },
    /// Carry out a placement plan that the leader of `term` made. Rejected, whole,
    /// unless the entry carrying it was written in `term`: a plan made by a leader that
    /// has since been deposed never takes effect.
    ApplyPlan {
        term: u64,
        placements: Vec<Placement>,
    },
    /// Create or replace several servers in one write: all of them, or none if any
    /// one's `expected_revision` does not hold or they do not fit the registry. Each
    /// gets its own revision, in order. At most `MAX_SERVERS_PER_WRITE`, each named
    /// once. (New variants go last: commands are stored positionally.)
    PutServers {
        puts: Vec<ServerPut>,
    },
    /// Record a new token (its `create_revision` is set when applied). With `first`,
    /// only if the registry holds no token yet: the bootstrap of a secured cluster.
    CreateToken {
        token: TokenRecord,
        first: bool,
    },
    /// Revoke a token: every node refuses it once it has applied this.
    RevokeToken {
        id: String,
    },
}

/// One server of a `PutServers` write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerPut {
    pub spec: ServerSpec,
    pub expected_revision: Option<u64>,
}

/// Slot `slot` of `server` runs on `node`, or nowhere.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub server: String,
    pub slot: u32,
    pub node: Option<NodeId>,
}

/// Where in the Raft log a command is applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogPosition {
    pub term: u64,
    pub index: u64,
}

impl Command {
    pub fn kind(&self) -> &'static str {
        match self {
            Command::PutServer { .. } => "put-server",
            Command::DeleteServer { .. } => "delete-server",
            Command::PutNode { .. } => "put-node",
            Command::RemoveNode { .. } => "remove-node",
            Command::ApplyPlan { .. } => "apply-plan",
            Command::RegisterNode { .. } => "register-node",
            Command::SetNodeStatus { .. } => "set-node-status",
            Command::SetNodeAdmin { .. } => "set-node-admin",
            Command::ReportHealth { .. } => "report-health",
            Command::ReportCatalog { .. } => "report-catalog",
            Command::PutSession { .. } => "put-session",
            Command::DeleteSession { .. } => "delete-session",
            Command::PutServers { .. } => "put-servers",
            Command::CreateToken { .. } => "create-token",
            Command::RevokeToken { .. } => "revoke-token",
        }
    }

    /// What the command changes, as the audit log names it.
    pub fn target(&self) -> String {
        match self {
            Command::PutServer { spec, .. } => spec.name.clone(),
            Command::PutServers { puts } => puts
                .iter()
                .map(|p| p.spec.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
            Command::DeleteServer { name, .. } => name.clone(),
            Command::ReportHealth { server, slot, .. }
            | Command::ReportCatalog { server, slot, .. } => format!("{server}/{slot}"),
            Command::PutNode { node } => format!("node {}", node.id),
            Command::RemoveNode { id }
            | Command::RegisterNode { id, .. }
            | Command::SetNodeStatus { id, .. }
            | Command::SetNodeAdmin { id, .. } => format!("node {id}"),
            Command::PutSession { id, .. } | Command::DeleteSession { id } => {
                format!("session {id}")
            }
            Command::ApplyPlan { placements, .. } => format!("{} placements", placements.len()),
            Command::CreateToken { token, .. } => format!("token {}", token.id),
            Command::RevokeToken { id } => format!("token {id}"),
        }
    }

    /// The checks that need no state, made once when the command is proposed
    /// (`validate::check_command`).
    pub fn check(&self) -> Result<(), RegistryError> {
        super::validate::check_command(self)
    }
}

/// The answer to one applied command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The command changed the registry, which is now at `revision`.
    Applied { revision: u64 },
    /// The command was rejected and changed nothing.
    Rejected(RegistryError),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid server name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("invalid spec for {name:?}: {reason}")]
    InvalidSpec { name: String, reason: String },
    #[error("server {name:?} not found")]
    ServerNotFound { name: String },
    #[error("revision mismatch for {name:?}: expected {expected}, current {current}")]
    RevisionMismatch {
        name: String,
        expected: u64,
        current: u64,
    },
    #[error("node {id} not found")]
    NodeNotFound { id: NodeId },
    #[error("registry full: at most {limit} servers")]
    TooManyServers { limit: usize },
    #[error("plan made in term {planned} arrived in term {current}")]
    StalePlan { planned: u64, current: u64 },
    #[error("invalid plan: {reason}")]
    InvalidPlan { reason: String },
    #[error(
        "health report for {server:?}/{slot} at epoch {epoch} is not for its current assignment"
    )]
    StaleReport {
        server: String,
        slot: u32,
        epoch: u64,
    },
    #[error("invalid node record: {reason}")]
    InvalidNode { reason: String },
    #[error("catalog of {server:?} is {size} bytes, over the {limit}-byte cap")]
    CatalogTooLarge {
        server: String,
        size: usize,
        limit: usize,
    },
    #[error("invalid session: {reason}")]
    InvalidSession { reason: String },
    #[error("session {id:?} not found")]
    SessionNotFound { id: String },
    #[error("write {seq} of this node was answered before; a late copy is not applied")]
    StaleRequest { seq: u64 },
    /// New variants go last: outcomes are stored positionally (client sessions).
    #[error("registry full: {reason}")]
    Full { reason: String },
    #[error("invalid write: {reason}")]
    InvalidWrite { reason: String },
    #[error("invalid token: {reason}")]
    InvalidToken { reason: String },
    #[error("token {id:?} already exists")]
    TokenExists { id: String },
    #[error("token {id:?} not found")]
    TokenNotFound { id: String },
    #[error("the cluster already has tokens: ask an admin for one (`mcpfleet token create`)")]
    AlreadyBootstrapped,
}
