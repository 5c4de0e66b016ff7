//! mcpfleet: a highly available control plane for fleets of MCP servers.
//!
//! Layers (see DESIGN.md): `registry` (pure state machine), `scheduler` and `router`
//! (pure policy), `raft` (openraft glue), `control` (the control plane: writes, reads,
//! membership), `controller` (the leader's liveness and placement loop), `agent` (the
//! node's replicas), `gateway` (tool calls and `/mcp`), `api` (gRPC services), `client` (the Rust client of a cluster, for the CLI and Python), `node`
//! (wiring), `observe` (metrics and health on the HTTP port), `config`, `env` (the seams to the outside world) and `cli`.

pub mod agent;
pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod controller;
pub mod env;
pub mod fuzzing;
pub mod gateway;
pub mod limits;
pub mod mcp;
pub mod node;
pub mod observe;
pub mod raft;
pub mod registry;
pub mod router;
pub mod scheduler;
pub mod secrets;

/// Generated gRPC code.
pub mod proto {
    /// The client API, `mcpfleet.v1`.
    pub mod v1 {
        tonic::include_proto!("mcpfleet.v1");
    }
    /// The node-to-node API, `mcpfleet.internal.v1`.
    pub mod internal {
        tonic::include_proto!("mcpfleet.internal.v1");
    }
    /// Tool calls between nodes, `mcpfleet.dataplane.v1`.
    pub mod dataplane {
        tonic::include_proto!("mcpfleet.dataplane.v1");
    }
    /// The encoded descriptors of every service above, for gRPC server reflection.
    pub const DESCRIPTORS: &[u8] = tonic::include_file_descriptor_set!("descriptors");
}
