//! Conversion between the client API's proto messages and the registry's types.

use std::collections::BTreeMap;

use crate::proto::v1 as pb;
use crate::registry::{
    CircuitBreaker, HealthCheck, RestartPolicy, ServerRecord, ServerSpec, Transport,
    DEFAULT_MAX_CONCURRENT_CALLS,
};

/// What becomes of the secret values of a spec from the wire.
#[derive(Clone, Copy)]
pub enum Secrets<'a> {
    /// An answer, as a client reads it: values as they are, sealed ones sealed.
    AsGiven,
    /// A write through this node: the values marked secret are sealed with its key,
    /// and sealed values given back must open with it for their place.
    Seal(Option<&'a crate::secrets::SecretsKey>),
}

/// A proto spec as the registry holds it, with defaults for unset settings, and its
/// secret values as `secrets` says (`crate::secrets`). A write is refused when it has
/// secrets and the node no key, a name is both plain and secret, or a sealed value
/// does not open for its place in this server.
pub fn spec_from_proto(spec: pb::ServerSpec, secrets: Secrets<'_>) -> Result<ServerSpec, String> {
    let transport = match spec.transport {
        Some(pb::server_spec::Transport::Stdio(stdio)) => Transport::Stdio {
            command: stdio.command,
            args: stdio.args,
            env: sealed_map(
                secrets,
                &spec.name,
                stdio.env,
                stdio.secret_env,
                crate::secrets::env_place,
            )?,
            cwd: (!stdio.cwd.is_empty()).then_some(stdio.cwd),
        },
        Some(pb::server_spec::Transport::Http(http)) => Transport::Http {
            url: http.url,
            headers: sealed_map(
                secrets,
                &spec.name,
                http.headers,
                http.secret_headers,
                crate::secrets::header_place,
            )?,
        },
        None => {
            return Err(format!(
                "server {:?} needs a transport: a stdio command or an http url",
                spec.name
            ))
        }
    };
    let defaults = (
        HealthCheck::default(),
        CircuitBreaker::default(),
        RestartPolicy::default(),
    );
    let mut node_tags = spec.node_tags;
    node_tags.sort();
    node_tags.dedup();
    Ok(ServerSpec {
        name: spec.name,
        transport,
        replicas: spec.replicas,
        node_tags,
        health_check: spec.health_check.map_or(defaults.0, |h| HealthCheck {
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            healthy_threshold: h.healthy_threshold,
            unhealthy_threshold: h.unhealthy_threshold,
        }),
        circuit_breaker: spec.circuit_breaker.map_or(defaults.1, |b| CircuitBreaker {
            failure_threshold: b.failure_threshold,
            open_ms: b.open_ms,
            half_open_max_calls: b.half_open_max_calls,
        }),
        restart: spec.restart.map_or(defaults.2, |r| RestartPolicy {
            initial_backoff_ms: r.initial_backoff_ms,
            max_backoff_ms: r.max_backoff_ms,
            crash_loop_restarts: r.crash_loop_restarts,
            crash_loop_window_ms: r.crash_loop_window_ms,
        }),
        max_concurrent_calls: spec
            .max_concurrent_calls
            .unwrap_or(DEFAULT_MAX_CONCURRENT_CALLS),
    })
}

/// The plain values and the secret ones of a spec's env or headers, as one map in
/// which the secret ones are sealed.
fn sealed_map(
    secrets: Secrets<'_>,
    server: &str,
    plain: impl IntoIterator<Item = (String, String)>,
    secret: impl IntoIterator<Item = (String, String)>,
    place: fn(&str) -> String,
) -> Result<BTreeMap<String, String>, String> {
    let mut values: BTreeMap<String, String> = plain.into_iter().collect();
    let mut secret = secret.into_iter().peekable();
    let key = match secrets {
        Secrets::AsGiven if secret.peek().is_some() => {
            return Err("secret values come only in writes".into())
        }
        Secrets::AsGiven => return Ok(values),
        Secrets::Seal(key) => key,
    };
    crate::secrets::check_sealed(key, server, &values, place).map_err(|e| e.to_string())?;
    for (name, value) in secret {
        let key = key.ok_or_else(|| {
            crate::secrets::SecretsError::NoKey {
                server: server.to_string(),
                place: place(&name),
            }
            .to_string()
        })?;
        let sealed = key.seal(server, &place(&name), &value);
        if values.insert(name.clone(), sealed).is_some() {
            return Err(format!("{} is given both plain and secret", place(&name)));
        }
    }
    Ok(values)
}

pub fn spec_to_proto(spec: &ServerSpec) -> pb::ServerSpec {
    let transport = match &spec.transport {
        Transport::Stdio {
            command,
            args,
            env,
            cwd,
        } => pb::server_spec::Transport::Stdio(pb::StdioTransport {
            command: command.clone(),
            args: args.clone(),
            env: env.clone().into_iter().collect(),
            cwd: cwd.clone().unwrap_or_default(),
            secret_env: Default::default(),
        }),
        Transport::Http { url, headers } => pb::server_spec::Transport::Http(pb::HttpTransport {
            url: url.clone(),
            headers: headers.clone().into_iter().collect(),
            secret_headers: Default::default(),
        }),
    };
    let h = spec.health_check;
    let b = spec.circuit_breaker;
    let r = spec.restart;
    pb::ServerSpec {
        name: spec.name.clone(),
        transport: Some(transport),
        replicas: spec.replicas,
        node_tags: spec.node_tags.clone(),
        health_check: Some(pb::HealthCheck {
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            healthy_threshold: h.healthy_threshold,
            unhealthy_threshold: h.unhealthy_threshold,
        }),
        circuit_breaker: Some(pb::CircuitBreaker {
            failure_threshold: b.failure_threshold,
            open_ms: b.open_ms,
            half_open_max_calls: b.half_open_max_calls,
        }),
        restart: Some(pb::RestartPolicy {
            initial_backoff_ms: r.initial_backoff_ms,
            max_backoff_ms: r.max_backoff_ms,
            crash_loop_restarts: r.crash_loop_restarts,
            crash_loop_window_ms: r.crash_loop_window_ms,
        }),
        max_concurrent_calls: Some(spec.max_concurrent_calls),
    }
}

pub fn record_to_proto(record: &ServerRecord) -> pb::Server {
    pb::Server {
        spec: Some(spec_to_proto(&record.spec)),
        create_revision: record.create_revision,
        mod_revision: record.mod_revision,
    }
}

/// Environment pairs from `K=V` strings, as the CLI takes them.
pub fn parse_pairs(pairs: &[String], what: &str) -> Result<BTreeMap<String, String>, String> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("invalid {what} {pair:?}: expected KEY=VALUE")),
        })
        .collect()
}

/// A kebab-case name of a registry enum (its serde name).
fn kebab<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Every slot of `name` with its node and health. Slots with no node carry the
/// scheduler's reason from `plan`.
pub fn replicas_to_proto(
    registry: &crate::registry::Registry,
    plan: &crate::scheduler::Plan,
    name: &str,
) -> Vec<pb::Replica> {
    let Some(record) = registry.servers.get(name) else {
        return Vec::new();
    };
    (0..record.spec.replicas)
        .map(|slot| {
            let key = (name.to_string(), slot);
            let Some(assignment) = registry.assignments.get(&key) else {
                return pb::Replica {
                    slot,
                    state: "unplaced".into(),
                    unplaced_reason: plan
                        .unplaced
                        .get(&key)
                        .map_or("not placed yet".into(), |reason| reason.to_string()),
                    ..Default::default()
                };
            };
            let node_addr = registry
                .nodes
                .get(&assignment.node_id)
                .map(|n| n.addr.clone())
                .unwrap_or_default();
            let mut replica = pb::Replica {
                slot,
                node_id: Some(assignment.node_id),
                node_addr,
                epoch: assignment.epoch,
                state: "pending".into(),
                breaker: "closed".into(),
                ..Default::default()
            };
            if let Some(health) = registry.health.get(&key) {
                replica.state = kebab(&health.state);
                replica.breaker = kebab(&health.breaker);
                replica.restarts = health.restarts;
                replica.last_error = health.last_error.clone().unwrap_or_default();
                replica.probe_latency_ms = health.probe_latency_ms;
            }
            // What a down node last reported is no longer known to hold.
            let node_down = registry
                .nodes
                .get(&assignment.node_id)
                .is_none_or(|n| n.status == crate::registry::NodeStatus::Down);
            if node_down {
                replica.state = "lost".into();
                replica.probe_latency_ms = None;
            }
            replica
        })
        .collect()
}

/// The fleet's nodes with their status and how many replicas each holds.
pub fn fleet_nodes_to_proto(registry: &crate::registry::Registry) -> Vec<pb::FleetNode> {
    registry
        .nodes
        .values()
        .map(|node| pb::FleetNode {
            id: node.id,
            addr: node.addr.clone(),
            status: kebab(&node.status),
            admin: kebab(&node.admin),
            tags: node.tags.clone(),
            capacity: node.capacity,
            replicas: registry
                .assignments
                .values()
                .filter(|a| a.node_id == node.id)
                .count() as u32,
        })
        .collect()
}

/// A token as the API shows it: never its digest.
pub fn token_to_proto(token: &crate::registry::TokenRecord) -> pb::Token {
    pb::Token {
        id: token.id.clone(),
        name: token.name.clone(),
        role: token.role.name().to_string(),
        servers: token.servers.clone(),
        tools: token.tools.clone(),
        create_revision: token.create_revision,
    }
}

/// A new token from the wire (its checks are the command's).
pub fn token_from_proto(
    request: pb::CreateTokenRequest,
) -> Result<crate::registry::TokenRecord, String> {
    let token = request.token.ok_or("token is required")?;
    let role = crate::registry::Role::parse(&token.role).ok_or_else(|| {
        format!(
            "unknown role {:?}: reader, caller, operator or admin",
            token.role
        )
    })?;
    Ok(crate::registry::TokenRecord {
        id: token.id,
        name: token.name,
        role,
        servers: token.servers,
        tools: token.tools,
        secret_sha256: request.secret_sha256,
        create_revision: 0,
    })
}
