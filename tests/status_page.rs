//! The status page at `/`, rendered by a real browser (Debian's headless Chromium)
//! against a three-node cluster with the npm reference MCP server: it shows the three
//! nodes up, the server's healthy replicas and its tools, and it refreshes by itself;
//! once a node is killed, the page shows that node down. `mcpfleet status --watch`
//! shows the same in a terminal.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::*;

/// The page at `url` as Chromium leaves it after running its script for 5 s of
/// virtual time.
fn rendered(url: &str) -> Result<String> {
    let profile = tempfile::tempdir()?;
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .context("run chromium (tests/run.sh installs Debian's chromium)")?;
    ensure!(output.status.success(), "chromium: {}", output.status);
    Ok(String::from_utf8(output.stdout)?)
}

/// The number in `data-refreshes="N"` on the page's body.
fn refreshes(dom: &str) -> Option<u64> {
    let at = dom.find("data-refreshes=\"")? + "data-refreshes=\"".len();
    dom[at..].split('"').next()?.parse().ok()
}

fn node_row(id: u64, status: &str) -> String {
    format!("data-node-id=\"{id}\" data-status=\"{status}\"")
}

#[test]
fn the_page_shows_nodes_replicas_and_tools_and_a_killed_node_as_down() -> Result<()> {
    let servers = mcp_servers()?;
    let mut cluster = Cluster::start(3)?;
    wait_for_leader(&cluster.addr(1), Duration::from_secs(20))?;
    let marker = process_marker("page");
    add_server(
        &cluster.addr(1),
        "everything",
        &[
            "--command",
            &servers.everything,
            "--env",
            &marker,
            "--replicas",
            "2",
        ],
    )?;
    eventually(Duration::from_secs(60), || {
        ensure!(healthy_slots(&cluster.addr(1), "everything")?.len() == 2);
        Ok(())
    })?;
    let page = format!("http://{}/", cluster.nodes[0].http);

    let dom = eventually(Duration::from_secs(30), || {
        let dom = rendered(&page)?;
        for id in 1..=3 {
            ensure!(dom.contains(&node_row(id, "up")), "node {id} not up: {dom}");
        }
        ensure!(
            dom.contains("data-server=\"everything\" data-healthy=\"2\" data-desired=\"2\""),
            "no healthy replicas: {dom}"
        );
        ensure!(dom.contains("data-tool=\"echo\""), "no tools: {dom}");
        Ok(dom)
    })?;
    for id in 1..=3 {
        ensure!(
            dom.contains(&format!("data-member-id=\"{id}\"")),
            "member {id}"
        );
    }
    // Its script asked the node again, and put the answer in place.
    ensure!(
        refreshes(&dom).unwrap_or(0) >= 1,
        "the page never refreshed: {dom}"
    );
    ensure!(
        !dom.contains("https://"),
        "the page loads nothing from elsewhere"
    );

    // Node 3 dies: the page shows it down.
    let victim = 3;
    cluster.node(victim).kill();
    eventually(Duration::from_secs(30), || {
        let dom = rendered(&page)?;
        ensure!(
            dom.contains(&node_row(victim, "down")),
            "node {victim} not down yet"
        );
        ensure!(dom.contains(&node_row(1, "up")) && dom.contains(&node_row(2, "up")));
        Ok(())
    })?;

    // `status --watch` draws the fleet again and again in a terminal.
    let mut watch = Command::new(binary())
        .envs(client_tls_env())
        .args([
            "status",
            "--watch",
            "--interval-ms",
            "200",
            "--endpoint",
            &cluster.addr(1),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1_500));
    watch.kill()?;
    let mut text = String::new();
    watch
        .stdout
        .take()
        .context("stdout")?
        .read_to_string(&mut text)?;
    let _ = watch.wait();
    let screens = text.matches("\x1b[H\x1b[2J").count();
    if screens < 2 {
        bail!("status --watch drew {screens} screens: {text:?}");
    }
    ensure!(text.contains("everything"), "{text}");
    ensure!(text.contains("down"), "{text}");
    Ok(())
}
