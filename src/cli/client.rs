//! Client commands: one request to any node, one answer printed.

use std::time::Duration;

use super::output::{print_json, print_table, server_row, SERVER_HEADER};
use super::{AddServerArgs, ClientArgs, ClusterCommand, NodeCommand, OutputFormat, ServerCommand};
use crate::api::convert::parse_pairs;
pub use crate::client::Client;
use crate::client::{json as views, ClientError};
use crate::env::tls::Tls;
use crate::proto::v1 as pb;

/// How long a client command waits for its answer.
pub const CLIENT_TIMEOUT_MS: u64 = crate::client::DEFAULT_TIMEOUT_MS;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        CliError::Client(ClientError::Status(status))
    }
}

/// A client of the nodes the flags name (`--endpoint`, `--cacert`, `--cert` and
/// `--key` for mutual TLS, and `--token`).
pub fn connect(args: &ClientArgs) -> Result<Client, CliError> {
    let tls = Tls::load_given(
        args.cacert.as_deref(),
        args.cert.as_deref(),
        args.key.as_deref(),
        ["--cacert", "--cert", "--key"],
    )
    .map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(
        Client::from_list(&args.endpoint, Duration::from_millis(CLIENT_TIMEOUT_MS))?
            .with_tls(tls)
            .with_token(args.token.as_deref())?,
    )
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
    let client = connect(&args)?;
    match command {
        ClientCommand::Call {
            server,
            tool,
            arguments,
            timeout_ms,
        } => call_tool(&client, server, tool, arguments, timeout_ms, json).await,
        ClientCommand::Tools { server } => list_tools(&client, server, json).await,
        ClientCommand::Server(command) => server_command(&client, command, json).await,
        ClientCommand::Cluster(command) => cluster_command(&client, command, json).await,
        ClientCommand::Status { stale, every: None } => fleet_status(&client, stale, json).await,
        ClientCommand::Status {
            stale,
            every: Some(every),
        } => loop {
            // Clear the screen, draw, wait; an answer that fails is drawn as its error,
            // and the next round asks again.
            print!("\x1b[H\x1b[2J");
            if let Err(error) = fleet_status(&client, stale, json).await {
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
            let revision = client.set_node_status(id, status).await?;
            if json {
                print_json(&serde_json::json!({"id": id, "status": status, "revision": revision}))
                    .map_err(CliError::Failed)?;
            } else {
                println!("node {id} {done} (revision {revision})");
            }
            Ok(())
        }
    }
}

async fn list_tools(client: &Client, server: Option<String>, json: bool) -> Result<(), CliError> {
    let tools = client.list_tools(server.as_deref()).await?;
    if json {
        return print_json(&views::tools(&tools)).map_err(CliError::Failed);
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
    client: &Client,
    server: String,
    tool: String,
    arguments: Option<String>,
    timeout_ms: u64,
    json: bool,
) -> Result<(), CliError> {
    let result_json = client
        .call_tool(&server, &tool, &arguments.unwrap_or_default(), timeout_ms)
        .await?;
    let result: rmcp::model::CallToolResult = serde_json::from_str(&result_json)
        .map_err(|e| CliError::Failed(format!("unreadable result: {e}")))?;
    let text: Vec<&str> = result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
        .collect();
    let failed = result.is_error == Some(true);
    if json {
        let value: serde_json::Value =
            serde_json::from_str(&result_json).map_err(|e| CliError::Failed(e.to_string()))?;
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
            secret_env: parse_pairs(&args.secret_env, "--secret-env")
                .map_err(CliError::Usage)?
                .into_iter()
                .collect(),
        }),
        (None, Some(url)) => pb::server_spec::Transport::Http(pb::HttpTransport {
            url: url.clone(),
            headers: parse_pairs(&args.headers, "--header")
                .map_err(CliError::Usage)?
                .into_iter()
                .collect(),
            secret_headers: parse_pairs(&args.secret_headers, "--secret-header")
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

fn to_json(server: pb::Server) -> Result<views::ServerJson, CliError> {
    views::server_json(server).map_err(CliError::Failed)
}

async fn server_command(
    client: &Client,
    command: ServerCommand,
    json: bool,
) -> Result<(), CliError> {
    match command {
        ServerCommand::Add(args) => {
            let name = args.name.clone();
            let request = spec_from_args(*args)?;
            let spec = request.spec.expect("made with a spec");
            let response = client.put_server(spec, request.expected_revision).await?;
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
            let server = to_json(client.get_server(&name, stale).await?)?;
            if json {
                print_json(&server).map_err(CliError::Failed)?;
            } else {
                print_table(&SERVER_HEADER, &[server_row(&server)]);
            }
        }
        ServerCommand::Ls { stale } => {
            let servers = client
                .list_servers(stale)
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
            let revision = client.delete_server(&name, expected_revision).await?;
            if json {
                print_json(&serde_json::json!({"name": name, "revision": revision}))
                    .map_err(CliError::Failed)?;
            } else {
                println!("server {name} removed at revision {revision}");
            }
        }
        ServerCommand::Status { name, stale } => {
            let response = client.server_status(&name, stale).await?;
            if json {
                print_json(&views::server_status(&name, &response)).map_err(CliError::Failed)?;
            } else {
                if !response.server_info.is_empty() {
                    println!("server: {}", response.server_info);
                }
                print_replicas(&response.replicas);
            }
        }
        ServerCommand::Watch { from_revision } => {
            let mut watch = client.watch(from_revision).await?;
            while let Some(event) = watch.next().await? {
                if json {
                    println!("{}", views::watch_event(event).map_err(CliError::Failed)?);
                } else {
                    let kind = if event.kind == pb::watch_event::Kind::Delete as i32 {
                        "delete"
                    } else {
                        "put"
                    };
                    println!("{} {kind} {}", event.revision, event.name);
                }
            }
        }
    }
    Ok(())
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
        print_json(&serde_json::json!({"members": views::members(members)}))
            .map_err(CliError::Failed)
    } else {
        print_members(members, None);
        Ok(())
    }
}

async fn cluster_command(
    client: &Client,
    command: ClusterCommand,
    json: bool,
) -> Result<(), CliError> {
    match command {
        ClusterCommand::Status => {
            let status = client.cluster_status().await?;
            if json {
                print_json(&views::cluster(&status)).map_err(CliError::Failed)?;
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
            print_membership(&client.add_node(id, &addr).await?, json)?;
        }
        ClusterCommand::RemoveNode { id } => {
            print_membership(&client.remove_node(id).await?, json)?;
        }
    }
    Ok(())
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

async fn fleet_status(client: &Client, stale: bool, json: bool) -> Result<(), CliError> {
    let fleet = client.fleet_status(stale).await?;
    if json {
        return print_json(&views::fleet(&fleet)).map_err(CliError::Failed);
    }
    let cluster = fleet.cluster.clone().unwrap_or_default();
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
