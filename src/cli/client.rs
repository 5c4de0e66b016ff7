//! Client commands: one request to any node, one answer printed.

use std::time::Duration;

use tonic::transport::Channel;

use super::output::{print_json, print_table, server_json, server_row, ServerJson, SERVER_HEADER};
use super::{AddServerArgs, ClientArgs, ClusterCommand, NodeCommand, OutputFormat, ServerCommand};
use crate::api::convert::parse_pairs;
use crate::proto::v1 as pb;
use crate::proto::v1::registry_client::RegistryClient;

/// How long a client command waits for its answer.
pub const CLIENT_TIMEOUT_MS: u64 = 15_000;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("cannot reach {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("{}", describe_status(.0))]
    Status(tonic::Status),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

fn describe_status(status: &tonic::Status) -> String {
    let message = status.message().replace('\n', " ");
    let hint = status
        .metadata()
        .get("x-mcpfleet-leader")
        .and_then(|v| v.to_str().ok())
        .map(|v| format!(" (leader hint: {v})"))
        .unwrap_or_default();
    match status.code() {
        tonic::Code::NotFound => format!("not found: {message}"),
        tonic::Code::InvalidArgument => format!("invalid: {message}"),
        tonic::Code::FailedPrecondition => format!("rejected: {message}"),
        tonic::Code::Unavailable => format!("unavailable: {message}{hint}"),
        tonic::Code::OutOfRange => format!("out of range: {message}"),
        tonic::Code::ResourceExhausted => format!("too large or too many: {message}"),
        code => format!("{code:?}: {message}"),
    }
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        CliError::Status(status)
    }
}

/// Connects to `endpoint` (HOST:PORT).
pub async fn connect(endpoint: &str) -> Result<RegistryClient<Channel>, CliError> {
    connect_with_timeout(endpoint, Duration::from_millis(CLIENT_TIMEOUT_MS)).await
}

async fn connect_with_timeout(
    endpoint: &str,
    timeout: Duration,
) -> Result<RegistryClient<Channel>, CliError> {
    let channel = crate::env::network::endpoint(endpoint)
        .map_err(|e| CliError::Endpoint {
            endpoint: endpoint.to_string(),
            reason: e.to_string(),
        })?
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| CliError::Unreachable {
            endpoint: endpoint.to_string(),
            reason: source_chain(&e),
        })?;
    Ok(RegistryClient::new(channel))
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        // Layers often repeat their inner error's text; say each part once.
        let part = inner.to_string();
        if !text.ends_with(&part) {
            text = format!("{text}: {part}");
        }
        source = inner.source();
    }
    text
}

pub enum ClientCommand {
    Server(ServerCommand),
    Cluster(ClusterCommand),
    Status {
        stale: bool,
        /// Draw again at this interval until interrupted.
        every: Option<Duration>,
    },
    Node(NodeCommand),
    Tools {
        server: Option<String>,
    },
    Call {
        server: String,
        tool: String,
        arguments: Option<String>,
        timeout_ms: u64,
    },
}

pub async fn run_client(args: ClientArgs, command: ClientCommand) -> Result<(), CliError> {
    let json = args.output == OutputFormat::Json;
    if let ClientCommand::Call {
        server,
        tool,
        arguments,
        timeout_ms,
    } = command
    {
        // A call may take longer than other requests: the node's default, or as asked.
        let limit = match timeout_ms {
            0 => crate::gateway::DEFAULT_CALL_TIMEOUT_MS,
            ms => ms,
        };
        let mut client = connect_with_timeout(
            &args.endpoint,
            Duration::from_millis(limit + CLIENT_TIMEOUT_MS),
        )
        .await?;
        return call_tool(&mut client, server, tool, arguments, timeout_ms, json).await;
    }
    let mut client = connect(&args.endpoint).await?;
    match command {
        ClientCommand::Call { .. } => unreachable!("handled above"),
        ClientCommand::Tools { server } => list_tools(&mut client, server, json).await,
        ClientCommand::Server(command) => server_command(&mut client, command, json).await,
        ClientCommand::Cluster(command) => cluster_command(&mut client, command, json).await,
        ClientCommand::Status { stale, every: None } => {
            fleet_status(&mut client, stale, json).await
        }
        ClientCommand::Status {
            stale,
            every: Some(every),
        } => loop {
            // Clear the screen, draw, wait; an answer that fails is drawn as its error,
            // and the next round asks again.
            print!("\x1b[H\x1b[2J");
            if let Err(error) = fleet_status(&mut client, stale, json).await {
                println!("error: {error}");
            }
            println!("\n(every {} ms; Ctrl-C to stop)", every.as_millis());
            use std::io::Write;
            let _ = std::io::stdout().flush();
            tokio::time::sleep(every).await;
        },
        ClientCommand::Node(command) => {
            let (id, status, done) = match command {
                NodeCommand::Drain { id } => {
                    (id, "draining", "draining: its replicas move to other nodes")
                }
                NodeCommand::Undrain { id } => (id, "active", "active again"),
            };
            let response = client
                .set_node_status(pb::SetNodeStatusRequest {
                    id,
                    status: status.into(),
                })
                .await?
                .into_inner();
            if json {
                print_json(
                    &serde_json::json!({"id": id, "status": status, "revision": response.revision}),
                )
                .map_err(CliError::Failed)?;
            } else {
                println!("node {id} {done} (revision {})", response.revision);
            }
            Ok(())
        }
    }
}

async fn list_tools(
    client: &mut RegistryClient<Channel>,
    server: Option<String>,
    json: bool,
) -> Result<(), CliError> {
    let tools = client
        .list_tools(pb::ListToolsRequest {
            server: server.unwrap_or_default(),
        })
        .await?
        .into_inner()
        .tools;
    if json {
        let tools: Vec<serde_json::Value> = tools
            .iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name,
                    "server": t.server,
                    "tool": t.tool,
                    "definition": serde_json::from_str::<serde_json::Value>(&t.tool_json)
                        .unwrap_or(serde_json::Value::Null),
                })
            })
            .collect();
        return print_json(&tools).map_err(CliError::Failed);
    }
    let rows: Vec<Vec<String>> = tools
        .iter()
        .map(|t| {
            let mut description = t.description.lines().next().unwrap_or_default().to_string();
            crate::registry::truncate_utf8(&mut description, 60);
            vec![t.name.clone(), t.server.clone(), description]
        })
        .collect();
    print_table(&["NAME", "SERVER", "DESCRIPTION"], &rows);
    Ok(())
}

async fn call_tool(
    client: &mut RegistryClient<Channel>,
    server: String,
    tool: String,
    arguments: Option<String>,
    timeout_ms: u64,
    json: bool,
) -> Result<(), CliError> {
    let response = client
        .call_tool(pb::CallToolRequest {
            server,
            tool,
            arguments_json: arguments.unwrap_or_default(),
            timeout_ms,
        })
        .await?
        .into_inner();
    let result: rmcp::model::CallToolResult = serde_json::from_str(&response.result_json)
        .map_err(|e| CliError::Failed(format!("unreadable result: {e}")))?;
    let text: Vec<&str> = result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
        .collect();
    let failed = result.is_error == Some(true);
    if json {
        let value: serde_json::Value = serde_json::from_str(&response.result_json)
            .map_err(|e| CliError::Failed(e.to_string()))?;
        print_json(&value).map_err(CliError::Failed)?;
    } else if !failed {
        for line in &text {
            println!("{line}");
        }
    }
    if failed {
        let first = text.first().and_then(|t| t.lines().next()).unwrap_or("");
        return Err(CliError::Failed(format!(
            "the tool reported an error: {first}"
        )));
    }
    Ok(())
}

fn spec_from_args(args: AddServerArgs) -> Result<pb::PutServerRequest, CliError> {
    let transport = match (&args.command, &args.url) {
        (Some(command), None) => pb::server_spec::Transport::Stdio(pb::StdioTransport {
            command: command.clone(),
            args: args.args.clone(),
            env: parse_pairs(&args.env, "--env")
                .map_err(CliError::Usage)?
                .into_iter()
                .collect(),
            cwd: args.cwd.clone().unwrap_or_default(),
        }),
        (None, Some(url)) => pb::server_spec::Transport::Http(pb::HttpTransport {
            url: url.clone(),
            headers: parse_pairs(&args.headers, "--header")
                .map_err(CliError::Usage)?
                .into_iter()
                .collect(),
        }),
        _ => {
            return Err(CliError::Usage(
                "give exactly one of --command and --url".into(),
            ))
        }
    };
    let health_check = health_check_from_args(&args);
    let circuit_breaker = breaker_from_args(&args);
    let restart = restart_from_args(&args);
    Ok(pb::PutServerRequest {
        spec: Some(pb::ServerSpec {
            name: args.name,
            transport: Some(transport),
            replicas: args.replicas,
            node_tags: args.tags,
            health_check,
            circuit_breaker,
            restart,
            max_concurrent_calls: args.max_concurrent_calls,
        }),
        expected_revision: args.expected_revision,
    })
}

/// The health check flags, if any is given (the others take their defaults).
fn health_check_from_args(args: &AddServerArgs) -> Option<pb::HealthCheck> {
    let given = [args.health_interval_ms, args.health_timeout_ms]
        .iter()
        .any(Option::is_some)
        || [args.healthy_threshold, args.unhealthy_threshold]
            .iter()
            .any(Option::is_some);
    let defaults = crate::registry::HealthCheck::default();
    let interval_ms = args.health_interval_ms.unwrap_or(defaults.interval_ms);
    given.then(|| pb::HealthCheck {
        interval_ms,
        // A shorter interval than the default timeout brings the timeout down with it.
        timeout_ms: args
            .health_timeout_ms
            .unwrap_or(defaults.timeout_ms.min(interval_ms)),
        healthy_threshold: args.healthy_threshold.unwrap_or(defaults.healthy_threshold),
        unhealthy_threshold: args
            .unhealthy_threshold
            .unwrap_or(defaults.unhealthy_threshold),
    })
}

/// The restart flags, if any is given (the others take their defaults).
fn restart_from_args(args: &AddServerArgs) -> Option<pb::RestartPolicy> {
    let given = [
        args.restart_initial_backoff_ms,
        args.restart_max_backoff_ms,
        args.crash_loop_window_ms,
    ]
    .iter()
    .any(Option::is_some)
        || args.crash_loop_restarts.is_some();
    let defaults = crate::registry::RestartPolicy::default();
    given.then(|| pb::RestartPolicy {
        initial_backoff_ms: args
            .restart_initial_backoff_ms
            .unwrap_or(defaults.initial_backoff_ms),
        max_backoff_ms: args
            .restart_max_backoff_ms
            .unwrap_or(defaults.max_backoff_ms),
        crash_loop_restarts: args
            .crash_loop_restarts
            .unwrap_or(defaults.crash_loop_restarts),
        crash_loop_window_ms: args
            .crash_loop_window_ms
            .unwrap_or(defaults.crash_loop_window_ms),
    })
}

/// The circuit breaker flags, if any is given (the others take their defaults).
fn breaker_from_args(args: &AddServerArgs) -> Option<pb::CircuitBreaker> {
    let given = args.breaker_open_ms.is_some()
        || [args.breaker_failure_threshold, args.breaker_half_open_calls]
            .iter()
            .any(Option::is_some);
    let defaults = crate::registry::CircuitBreaker::default();
    given.then(|| pb::CircuitBreaker {
        failure_threshold: args
            .breaker_failure_threshold
            .unwrap_or(defaults.failure_threshold),
        open_ms: args.breaker_open_ms.unwrap_or(defaults.open_ms),
        half_open_max_calls: args
            .breaker_half_open_calls
            .unwrap_or(defaults.half_open_max_calls),
    })
}

/// Every server, page after page, in name order.
pub(super) async fn all_servers(
    client: &mut RegistryClient<Channel>,
    stale: bool,
) -> Result<Vec<pb::Server>, CliError> {
    let mut servers = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_servers(pb::ListServersRequest {
                stale,
                page_size: 0,
                page_token: token.clone(),
            })
            .await?
            .into_inner();
        servers.extend(page.servers);
        token = next_page(&token, page.next_page_token)?;
        if token.is_empty() {
            return Ok(servers);
        }
    }
}

fn to_json(server: pb::Server) -> Result<ServerJson, CliError> {
    server_json(server).map_err(CliError::Failed)
}

async fn server_command(
    client: &mut RegistryClient<Channel>,
    command: ServerCommand,
    json: bool,
) -> Result<(), CliError> {
    match command {
        ServerCommand::Add(args) => {
            let name = args.name.clone();
            let response = client
                .put_server(spec_from_args(*args)?)
                .await?
                .into_inner();
            if json {
                print_json(&serde_json::json!({
                    "name": name,
                    "revision": response.revision,
                }))
                .map_err(CliError::Failed)?;
            } else {
                println!("server {name} saved at revision {}", response.revision);
            }
        }
        ServerCommand::Get { name, stale } => {
            let response = client
                .get_server(pb::GetServerRequest { name, stale })
                .await?
                .into_inner();
            let server = to_json(
                response
                    .server
                    .ok_or_else(|| CliError::Failed("empty answer".into()))?,
            )?;
            if json {
                print_json(&server).map_err(CliError::Failed)?;
            } else {
                print_table(&SERVER_HEADER, &[server_row(&server)]);
            }
        }
        ServerCommand::Ls { stale } => {
            let servers = all_servers(client, stale)
                .await?
                .into_iter()
                .map(to_json)
                .collect::<Result<Vec<_>, _>>()?;
            if json {
                print_json(&servers).map_err(CliError::Failed)?;
            } else {
                let rows: Vec<Vec<String>> = servers.iter().map(server_row).collect();
                print_table(&SERVER_HEADER, &rows);
            }
        }
        ServerCommand::Rm {
            name,
            expected_revision,
        } => {
            let response = client
                .delete_server(pb::DeleteServerRequest {
                    name: name.clone(),
                    expected_revision,
                })
                .await?
                .into_inner();
            if json {
                print_json(&serde_json::json!({"name": name, "revision": response.revision}))
                    .map_err(CliError::Failed)?;
            } else {
                println!("server {name} removed at revision {}", response.revision);
            }
        }
        ServerCommand::Status { name, stale } => {
            let response = client
                .server_status(pb::ServerStatusRequest {
                    name: name.clone(),
                    stale,
                })
                .await?
                .into_inner();
            if json {
                print_json(&serde_json::json!({
                    "name": name,
                    "server_info": response.server_info,
                    "replicas": replicas_json(&response.replicas),
                    "revision": response.revision,
                }))
                .map_err(CliError::Failed)?;
            } else {
                if !response.server_info.is_empty() {
                    println!("server: {}", response.server_info);
                }
                print_replicas(&response.replicas);
            }
        }
        ServerCommand::Watch { from_revision } => {
            let mut stream = client
                .watch_servers(pb::WatchServersRequest { from_revision })
                .await?
                .into_inner();
            while let Some(event) = stream.message().await? {
                let kind = if event.kind == pb::watch_event::Kind::Delete as i32 {
                    "delete"
                } else {
                    "put"
                };
                if json {
                    let server = event.server.map(to_json).transpose()?;
                    let line = serde_json::json!({
                        "kind": kind, "revision": event.revision, "name": event.name, "server": server,
                    });
                    println!("{line}");
                } else {
                    println!("{} {kind} {}", event.revision, event.name);
                }
            }
        }
    }
    Ok(())
}

fn members_json(members: &[pb::Member]) -> serde_json::Value {
    members
        .iter()
        .map(|m| serde_json::json!({"id": m.id, "addr": m.addr, "voter": m.voter}))
        .collect()
}

fn print_members(members: &[pb::Member], leader: Option<u64>) {
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.addr.clone(),
                if m.voter { "voter" } else { "learner" }.to_string(),
                if Some(m.id) == leader { "*" } else { "" }.to_string(),
            ]
        })
        .collect();
    print_table(&["ID", "ADDR", "ROLE", "LEADER"], &rows);
}

/// Prints the members after a membership change.
fn print_membership(members: &[pb::Member], json: bool) -> Result<(), CliError> {
    if json {
        print_json(&serde_json::json!({"members": members_json(members)})).map_err(CliError::Failed)
    } else {
        print_members(members, None);
        Ok(())
    }
}

async fn cluster_command(
    client: &mut RegistryClient<Channel>,
    command: ClusterCommand,
    json: bool,
) -> Result<(), CliError> {
    match command {
        ClusterCommand::Status => {
            let status = client
                .cluster_status(pb::ClusterStatusRequest {})
                .await?
                .into_inner();
            if json {
                print_json(&serde_json::json!({
                    "node_id": status.node_id,
                    "leader_id": status.leader_id,
                    "leader_addr": status.leader_addr,
                    "term": status.term,
                    "commit_index": status.commit_index,
                    "applied_index": status.applied_index,
                    "revision": status.revision,
                    "server_count": status.server_count,
                    "data_bytes": status.data_bytes,
                    "members": members_json(&status.members),
                }))
                .map_err(CliError::Failed)?;
            } else {
                print_members(&status.members, status.leader_id);
                println!();
                let leader = status
                    .leader_id
                    .map_or("none".to_string(), |id| id.to_string());
                println!(
                    "answered by node {}; leader {leader}; term {}; commit {}; applied {}; revision {}; servers {}; data {} KiB",
                    status.node_id,
                    status.term,
                    status.commit_index,
                    status.applied_index,
                    status.revision,
                    status.server_count,
                    status.data_bytes / 1024
                );
            }
        }
        ClusterCommand::AddNode { id, addr } => {
            let response = client
                .add_node(pb::AddNodeRequest { id, addr })
                .await?
                .into_inner();
            print_membership(&response.members, json)?;
        }
        ClusterCommand::RemoveNode { id } => {
            let response = client
                .remove_node(pb::RemoveNodeRequest { id })
                .await?
                .into_inner();
            print_membership(&response.members, json)?;
        }
    }
    Ok(())
}

fn replicas_json(replicas: &[pb::Replica]) -> serde_json::Value {
    replicas
        .iter()
        .map(|r| {
            serde_json::json!({
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

fn replica_rows(server: Option<&str>, replicas: &[pb::Replica]) -> Vec<Vec<String>> {
    replicas
        .iter()
        .map(|r| {
            let mut row = Vec::new();
            if let Some(server) = server {
                row.push(server.to_string());
            }
            let error = if r.unplaced_reason.is_empty() {
                &r.last_error
            } else {
                &r.unplaced_reason
            };
            row.extend([
                r.slot.to_string(),
                r.node_id.map_or("-".into(), |id| id.to_string()),
                r.state.clone(),
                if r.breaker.is_empty() {
                    "-".into()
                } else {
                    r.breaker.clone()
                },
                r.restarts.to_string(),
                r.probe_latency_ms
                    .map_or("-".into(), |ms| format!("{ms} ms")),
                error.clone(),
            ]);
            row
        })
        .collect()
}

const REPLICA_HEADER: [&str; 7] = [
    "SLOT",
    "NODE",
    "STATE",
    "BREAKER",
    "RESTARTS",
    "LATENCY",
    "LAST ERROR",
];

fn print_replicas(replicas: &[pb::Replica]) {
    print_table(&REPLICA_HEADER, &replica_rows(None, replicas));
}

/// The token of the page after the one fetched with `token`: names only grow, so a
/// node that answers otherwise would have the listing loop forever.
fn next_page(token: &str, next: String) -> Result<String, CliError> {
    if !next.is_empty() && next.as_str() <= token {
        return Err(CliError::Failed(format!(
            "the node answered page {token:?} with next page {next:?}, which does not follow it"
        )));
    }
    Ok(next)
}

async fn fleet_status(
    client: &mut RegistryClient<Channel>,
    stale: bool,
    json: bool,
) -> Result<(), CliError> {
    let mut fleet = client
        .fleet_status(pb::FleetStatusRequest {
            stale,
            ..Default::default()
        })
        .await?
        .into_inner();
    // The cluster and nodes as of the first page; the servers of every page.
    let mut token = next_page("", std::mem::take(&mut fleet.next_page_token))?;
    while !token.is_empty() {
        let page = client
            .fleet_status(pb::FleetStatusRequest {
                stale,
                page_size: 0,
                page_token: token.clone(),
            })
            .await?
            .into_inner();
        fleet.servers.extend(page.servers);
        token = next_page(&token, page.next_page_token)?;
    }
    let cluster = fleet.cluster.unwrap_or_default();
    if json {
        let nodes: Vec<serde_json::Value> = fleet
            .nodes
            .iter()
            .map(|n| {
                let member = cluster.members.iter().find(|m| m.id == n.id);
                serde_json::json!({
                    "id": n.id, "addr": n.addr, "status": n.status, "admin": n.admin,
                    "tags": n.tags,
                    "replicas": n.replicas, "capacity": n.capacity,
                    "voter": member.map(|m| m.voter),
                    "leader": cluster.leader_id == Some(n.id),
                })
            })
            .collect();
        let servers: Vec<serde_json::Value> = fleet
            .servers
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name, "desired": s.desired, "placed": s.placed,
                    "healthy": s.healthy, "replicas": replicas_json(&s.replicas),
                })
            })
            .collect();
        return print_json(&serde_json::json!({
            "leader_id": cluster.leader_id,
            "term": cluster.term,
            "revision": cluster.revision,
            "nodes": nodes,
            "servers": servers,
        }))
        .map_err(CliError::Failed);
    }
    let leader = cluster
        .leader_id
        .map_or("none".to_string(), |id| id.to_string());
    println!(
        "leader {leader}; term {}; revision {}; {} nodes; {} servers",
        cluster.term,
        cluster.revision,
        fleet.nodes.len(),
        fleet.servers.len()
    );
    println!();
    let rows: Vec<Vec<String>> = fleet
        .nodes
        .iter()
        .map(|n| {
            let role = match cluster.members.iter().find(|m| m.id == n.id) {
                Some(m) if m.voter => "voter",
                Some(_) => "learner",
                None => "not a member",
            };
            vec![
                n.id.to_string(),
                n.addr.clone(),
                if n.admin == "draining" {
                    format!("{},draining", n.status)
                } else {
                    n.status.clone()
                },
                format!(
                    "{role}{}",
                    if cluster.leader_id == Some(n.id) {
                        " (leader)"
                    } else {
                        ""
                    }
                ),
                match n.capacity {
                    Some(capacity) => format!("{}/{capacity}", n.replicas),
                    None => n.replicas.to_string(),
                },
                n.tags.join(","),
            ]
        })
        .collect();
    print_table(
        &["NODE", "ADDR", "STATUS", "ROLE", "REPLICAS", "TAGS"],
        &rows,
    );
    println!();
    let rows: Vec<Vec<String>> = fleet
        .servers
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                format!("{}/{}", s.healthy, s.desired),
                s.placed.to_string(),
            ]
        })
        .collect();
    print_table(&["SERVER", "HEALTHY", "PLACED"], &rows);
    let replicas: Vec<Vec<String>> = fleet
        .servers
        .iter()
        .flat_map(|s| replica_rows(Some(&s.name), &s.replicas))
        .collect();
    if !replicas.is_empty() {
        println!();
        let mut header = vec!["SERVER"];
        header.extend(REPLICA_HEADER);
        print_table(&header, &replicas);
    }
    Ok(())
}
