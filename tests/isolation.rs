//! Stdio servers run isolated (src/env/isolation.rs): as the configured user, with a
//! cleared environment plus their spec's env, in their working dir, under their
//! limits. Checked on a real node running the npm reference server, through what the
//! server itself reports (its `get-env` tool) and what the kernel says of its process
//! (/proc).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::*;
use mcpfleet::env::isolation::RunAs;

/// The parent of process `pid`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command (in parentheses, which may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The processes under `root` (at any depth) whose command line holds `needle`.
fn descendants_with(root: u32, needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains(needle) {
            continue;
        }
        let mut at = pid;
        while let Some(parent) = parent_of(at) {
            if parent == root {
                found.push(pid);
                break;
            }
            if parent <= 1 {
                break;
            }
            at = parent;
        }
    }
    found
}

/// A line of /proc/PID/limits: its soft and hard values.
fn limit(pid: u32, name: &str) -> Result<(String, String)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with(name))
        .with_context(|| format!("no {name:?} in /proc/{pid}/limits"))?;
    let values: Vec<&str> = line[name.len()..].split_whitespace().collect();
    Ok((values[0].to_string(), values[1].to_string()))
}

fn uids(pid: u32) -> Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .context("no Uid line")?;
    Ok(line["Uid:".len()..]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" "))
}

#[test]
fn a_stdio_server_runs_as_its_user_with_a_cleared_environment_and_its_limits() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: running servers as another user needs root");
        return Ok(());
    }
    let servers = mcp_servers()?;
    let nobody = RunAs::lookup("nobody")?;
    let dir = tempfile::tempdir()?;
    // The server's working dir, which its user can enter.
    let workdir = dir.path().join("work");
    std::fs::create_dir(&workdir)?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&workdir, std::fs::Permissions::from_mode(0o755))?;
    let addr = format!("127.0.0.1:{}", free_port());
    let memory_mib = 16 * 1024;
    let mut node = NodeProcess::start_with_env(
        1,
        &addr,
        &dir.path().join("node1"),
        &[
            "--initial-cluster".into(),
            format!("1={addr}"),
            "--replica-user".into(),
            "nobody".into(),
            "--replica-open-files".into(),
            "200".into(),
            "--replica-processes".into(),
            "5000".into(),
            "--replica-memory-mib".into(),
            memory_mib.to_string(),
        ],
        &[("MCPFLEET_TEST_NODE_SECRET", "never-passed-on")],
    )?;
    wait_for_leader(&addr, Duration::from_secs(20))?;
    let workdir_text = workdir.display().to_string();
    add_server(
        &addr,
        "everything",
        &[
            "--command",
            &servers.everything,
            "--env",
            "SPEC_VAR=from-the-spec",
            "--cwd",
            &workdir_text,
        ],
    )?;
    eventually(Duration::from_secs(60), || {
        ensure!(
            !healthy_slots(&addr, "everything")?.is_empty(),
            "not healthy yet"
        );
        Ok(())
    })?;

    // What the server sees of its environment.
    let result = cli_json(&addr, &["call", "everything", "get-env"])?;
    let text = result["content"][0]["text"]
        .as_str()
        .context("get-env answered no text")?;
    let env: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)?;
    ensure!(
        env["SPEC_VAR"] == "from-the-spec",
        "the spec's env: {env:?}"
    );
    ensure!(
        !env.contains_key("MCPFLEET_TEST_NODE_SECRET"),
        "the node's own variable reached the server"
    );
    ensure!(env.contains_key("PATH"), "PATH is passed on: {env:?}");
    ensure!(
        env["HOME"] == nobody.home.as_str(),
        "HOME is the user's: {env:?}"
    );
    let allowed = [
        "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR",
    ];
    for key in env.keys() {
        // Node.js sets none of its own; anything else came from the node.
        ensure!(
            allowed.contains(&key.as_str()) || key == "SPEC_VAR",
            "{key} reached the server"
        );
    }

    // What the kernel says of its process.
    let node_pid = node.pid().context("node not running")?;
    let pids = descendants_with(node_pid, "mcp-server-everything");
    let server: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            !String::from_utf8_lossy(&cmdline).contains("supervise")
        })
        .collect();
    let [pid] = server[..] else {
        bail!("expected one server process under the node, found {server:?}");
    };
    let id = nobody.uid.to_string();
    ensure!(
        uids(pid)? == [id.as_str(); 4].join(" "),
        "the server runs as {}",
        uids(pid)?
    );
    ensure!(
        std::fs::read_link(format!("/proc/{pid}/cwd"))? == workdir,
        "its working dir"
    );
    ensure!(limit(pid, "Max open files")? == ("200".into(), "200".into()));
    ensure!(limit(pid, "Max processes")? == ("5000".into(), "5000".into()));
    // Without a cgroup v2 group for the replica, memory is its address space.
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    if !cgroup.contains("mcpfleet-") {
        let bytes = (memory_mib << 20).to_string();
        ensure!(limit(pid, "Max address space")? == (bytes.clone(), bytes));
    }
    // The supervisor stays the node's user, to take the server's tree down.
    let supervisors: Vec<u32> = pids.into_iter().filter(|p| *p != pid).collect();
    ensure!(!supervisors.is_empty(), "no supervisor found");
    for supervisor in supervisors {
        ensure!(uids(supervisor)?.starts_with("0 "), "the supervisor's uid");
    }
    node.kill();
    Ok(())
}

#[test]
fn a_node_that_cannot_isolate_as_asked_does_not_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let port = free_port();
    for (flags, says) in [
        (
            vec!["--replica-user", "no-such-user-anywhere"],
            "no user \"no-such-user-anywhere\" on this host",
        ),
        (
            vec!["--replica-open-files", "3"],
            "the open files limit must be at least 16, not 3",
        ),
    ] {
        let output = Command::new(binary())
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--http",
                "off",
            ])
            .arg("--data")
            .arg(&data)
            .args(&flags)
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(!output.status.success(), "{flags:?} started");
        ensure!(stderr.contains(says), "{flags:?}: {stderr}");
        ensure!(!Path::new(&data).exists(), "{flags:?} made a data dir");
    }
    Ok(())
}
