//! The JSON views of the nodes' answers: what `-o json` prints, and what the Python
//! package's objects hold. One view per answer, so both speak the same shapes.

use serde::Serialize;
use serde_json::{json, Value};

use crate::api::convert::{spec_from_proto, Secrets};
use crate::proto::v1 as pb;
use crate::registry::ServerSpec;

/// A server: its spec, flattened, and its revisions.
#[derive(Serialize)]
pub struct ServerJson {
    #[serde(flatten)]
    pub spec: ServerSpec,
    pub create_revision: u64,
    pub mod_revision: u64,
}

pub fn server_json(server: pb::Server) -> Result<ServerJson, String> {
    let spec = server.spec.ok_or("server without a spec in the answer")?;
    Ok(ServerJson {
        spec: spec_from_proto(spec, Secrets::AsGiven)?,
        create_revision: server.create_revision,
        mod_revision: server.mod_revision,
    })
}

pub fn server(server: pb::Server) -> Result<Value, String> {
    serde_json::to_value(server_json(server)?).map_err(|e| e.to_string())
}

pub fn servers(servers: Vec<pb::Server>) -> Result<Value, String> {
    servers
        .into_iter()
        .map(server)
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

pub fn members(members: &[pb::Member]) -> Value {
    members
        .iter()
        .map(|m| json!({"id": m.id, "addr": m.addr, "voter": m.voter}))
        .collect()
}

pub fn replicas(replicas: &[pb::Replica]) -> Value {
    replicas
        .iter()
        .map(|r| {
            json!({
                "slot": r.slot,
                "node_id": r.node_id,
                "node_addr": (!r.node_addr.is_empty()).then_some(&r.node_addr),
                "epoch": r.epoch,
                "state": r.state,
                "breaker": r.breaker,
                "restarts": r.restarts,
                "last_error": (!r.last_error.is_empty()).then_some(&r.last_error),
                "probe_latency_ms": r.probe_latency_ms,
                "unplaced_reason": (!r.unplaced_reason.is_empty()).then_some(&r.unplaced_reason),
            })
        })
        .collect()
}

pub fn server_status(name: &str, status: &pb::ServerStatusResponse) -> Value {
    json!({
        "name": name,
        "server_info": status.server_info,
        "replicas": replicas(&status.replicas),
        "revision": status.revision,
    })
}

pub fn cluster(status: &pb::ClusterStatusResponse) -> Value {
    json!({
        "node_id": status.node_id,
        "leader_id": status.leader_id,
        "leader_addr": status.leader_addr,
        "term": status.term,
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "revision": status.revision,
        "server_count": status.server_count,
        "data_bytes": status.data_bytes,
        "members": members(&status.members),
    })
}

pub fn fleet(fleet: &pb::FleetStatusResponse) -> Value {
    let cluster = fleet.cluster.clone().unwrap_or_default();
    let nodes: Vec<Value> = fleet
        .nodes
        .iter()
        .map(|n| {
            let member = cluster.members.iter().find(|m| m.id == n.id);
            json!({
                "id": n.id, "addr": n.addr, "status": n.status, "admin": n.admin,
                "tags": n.tags,
                "replicas": n.replicas, "capacity": n.capacity,
                "voter": member.map(|m| m.voter),
                "leader": cluster.leader_id == Some(n.id),
            })
        })
        .collect();
    let servers: Vec<Value> = fleet
        .servers
        .iter()
        .map(|s| {
            json!({
                "name": s.name, "desired": s.desired, "placed": s.placed,
                "healthy": s.healthy, "replicas": replicas(&s.replicas),
            })
        })
        .collect();
    json!({
        "leader_id": cluster.leader_id,
        "term": cluster.term,
        "revision": cluster.revision,
        "nodes": nodes,
        "servers": servers,
    })
}

pub fn tools(tools: &[pb::Tool]) -> Value {
    tools
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "server": t.server,
                "tool": t.tool,
                "description": t.description,
                "definition": serde_json::from_str::<Value>(&t.tool_json)
                    .unwrap_or(Value::Null),
            })
        })
        .collect()
}

pub fn watch_event(event: pb::WatchEvent) -> Result<Value, String> {
    let kind = if event.kind == pb::watch_event::Kind::Delete as i32 {
        "delete"
    } else {
        "put"
    };
    let server = event.server.map(server).transpose()?;
    Ok(json!({
        "kind": kind, "revision": event.revision, "name": event.name, "server": server,
    }))
}
