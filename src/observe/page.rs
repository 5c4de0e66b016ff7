//! The status page at `/`: members, the leader, nodes, servers with each replica's
//! health, and the tool catalog, as this node sees them. One self-contained page (no
//! script or style from elsewhere: the node serves everything). The page asks for its
//! body again every 2 s (`/status/body`) and puts the answer in place; without
//! scripts, it is still a complete page as first served.

use axum::extract::State;
use axum::response::Html;
use maud::{html, Markup, DOCTYPE};

use super::Observer;
use crate::api::convert::{fleet_nodes_to_proto, replicas_to_proto};
use crate::registry::Transport;

/// How often the page refreshes itself, in milliseconds.
pub const REFRESH_MS: u64 = 2_000;
/// Most tools listed per server: the page stays readable with large catalogs.
const MAX_TOOLS_SHOWN: usize = 100;

const STYLE: &str = "
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1d2330; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
h2 { font-size: 1.05rem; margin: 1.4rem 0 .4rem; }
table { border-collapse: collapse; min-width: 40rem; }
th, td { text-align: left; padding: .25rem .7rem; border-bottom: 1px solid #dde1e8; vertical-align: top; }
th { background: #f2f4f8; font-weight: 600; }
.up, .healthy, .active { color: #107a34; font-weight: 600; }
.down, .unhealthy, .crash-loop, .lost, .unplaced { color: #b3261e; font-weight: 600; }
.draining, .starting, .pending, .backoff { color: #a05a00; font-weight: 600; }
.muted { color: #6b7280; }
#stale { display: none; background: #fdecea; color: #b3261e; padding: .4rem .7rem; margin: .5rem 0; }
code { font-size: .9em; }
";

/// Asks for the body again every REFRESH_MS and counts the answers on `<body>`, or
/// says that the node stopped answering.
const SCRIPT: &str = "
const every = Number(document.body.dataset.refreshMs);
async function refresh() {
  try {
    const answer = await fetch('/status/body', { cache: 'no-store' });
    if (!answer.ok) throw new Error(answer.status);
    document.getElementById('fleet').innerHTML = await answer.text();
    document.body.dataset.refreshes = Number(document.body.dataset.refreshes) + 1;
    document.getElementById('stale').style.display = 'none';
  } catch (error) {
    document.getElementById('stale').style.display = 'block';
  }
}
setInterval(refresh, every);
";

/// `/status/body`: what the page shows, without the page around it.
pub async fn status_body(State(observer): State<Observer>) -> Html<String> {
    Html(fleet(&observer).into_string())
}

/// `/`: the whole page.
pub async fn status_page(State(observer): State<Observer>) -> Html<String> {
    let body = fleet(&observer);
    let id = observer.reader.raft_metrics().id;
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { "mcpfleet: node " (id) }
                    style { (maud::PreEscaped(STYLE)) }
                }
                body data-refresh-ms=(REFRESH_MS) data-refreshes="0" {
                    div #stale { "This node does not answer: what is shown may be out of date." }
                    div #fleet { (body) }
                    script { (maud::PreEscaped(SCRIPT)) }
                }
            }
        }
        .into_string(),
    )
}

/// Everything the page shows, from this node's applied state and Raft metrics.
fn fleet(observer: &Observer) -> Markup {
    let raft = observer.reader.raft_metrics();
    let membership = raft.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let members: Vec<(u64, String)> = membership
        .nodes()
        .map(|(id, node)| (*id, node.addr.clone()))
        .collect();
    let applied = observer.reader.stale();
    let registry = &applied.registry;
    let plan = crate::scheduler::plan_registry(registry);
    let nodes = fleet_nodes_to_proto(registry);
    let leader = raft
        .current_leader
        .map_or("none".to_string(), |id| id.to_string());
    html! {
        h1 { "mcpfleet" }
        p .muted {
            "As node " (raft.id) " sees it: leader " span #leader { (leader) }
            ", term " (raft.current_term)
            ", applied index " (raft.last_applied.map_or(0, |id| id.index))
            ", revision " (registry.revision) "."
        }
        h2 { "Members" }
        table #members {
            tr { th { "id" } th { "address" } th { "role" } }
            @for (id, addr) in &members {
                tr data-member-id=(id) {
                    td { (id) }
                    td { code { (addr) } }
                    td {
                        @if raft.current_leader == Some(*id) { "leader" }
                        @else if voters.contains(id) { "voter" }
                        @else { "learner" }
                    }
                }
            }
        }
        h2 { "Nodes" }
        table #nodes {
            tr { th { "id" } th { "address" } th { "status" } th { "admin" } th { "tags" } th { "replicas" } }
            @for node in &nodes {
                tr data-node-id=(node.id) data-status=(node.status) data-admin=(node.admin) {
                    td { (node.id) }
                    td { code { (node.addr) } }
                    td class=(node.status) { (node.status) }
                    td class=(node.admin) { (node.admin) }
                    td { (node.tags.join(", ")) }
                    td {
                        (node.replicas)
                        @if let Some(capacity) = node.capacity { " / " (capacity) }
                    }
                }
            }
        }
        h2 { "Servers" }
        @if registry.servers.is_empty() {
            p .muted { "No servers yet: " code { "mcpfleet server add" } " or " code { "mcpfleet import" } "." }
        } @else {
            table #servers {
                tr { th { "server" } th { "transport" } th { "healthy" } th { "replicas" } }
                @for record in registry.servers.values() {
                    @let replicas = replicas_to_proto(registry, &plan, &record.spec.name);
                    @let healthy = replicas.iter().filter(|r| r.state == "healthy").count();
                    tr data-server=(record.spec.name) data-healthy=(healthy) data-desired=(record.spec.replicas) {
                        td { (record.spec.name) }
                        td { (transport(&record.spec.transport)) }
                        td { (healthy) " / " (record.spec.replicas) }
                        td {
                            @for replica in &replicas {
                                div data-slot=(replica.slot) data-state=(replica.state) {
                                    "slot " (replica.slot) ": "
                                    span class=(replica.state) { (replica.state) }
                                    @if let Some(node) = replica.node_id { " on node " (node) }
                                    @if !replica.last_error.is_empty() {
                                        " " span .muted { (replica.last_error) }
                                    }
                                    @if !replica.unplaced_reason.is_empty() {
                                        " " span .muted { (replica.unplaced_reason) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Tools" }
        table #tools {
            tr { th { "server" } th { "tool" } th { "description" } }
            @for (server, catalog) in &registry.catalogs {
                @for (name, description) in tools(&catalog.tools).into_iter().take(MAX_TOOLS_SHOWN) {
                    tr data-tool=(name) {
                        td { (server) }
                        td { code { (name) } }
                        td .muted { (description) }
                    }
                }
            }
        }
    }
}

fn transport(transport: &Transport) -> Markup {
    match transport {
        Transport::Stdio { command, args, .. } => {
            let mut line = command.clone();
            for arg in args {
                line.push(' ');
                line.push_str(arg);
            }
            crate::registry::truncate_utf8(&mut line, 80);
            html! { "stdio " code { (line) } }
        }
        Transport::Http { url, .. } => html! { "http " code { (url) } },
    }
}

/// (name, first line of the description) of each tool in a catalog's tool list.
fn tools(json: &str) -> Vec<(String, String)> {
    let Ok(serde_json::Value::Array(tools)) = serde_json::from_str(json) else {
        return Vec::new();
    };
    tools
        .iter()
        .filter_map(|tool| {
            let name = tool.get("name")?.as_str()?.to_string();
            let mut description = tool
                .get("description")
                .and_then(|d| d.as_str())
                .and_then(|d| d.lines().next())
                .unwrap_or_default()
                .to_string();
            crate::registry::truncate_utf8(&mut description, 120);
            Some((name, description))
        })
        .collect()
}
