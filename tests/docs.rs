//! The commands of docs/getting-started.md, run as written: every `sh` block of the
//! page, in order, as one bash script, with this build's `mcpfleet` on the PATH, the
//! official Python SDK's venv as `python3`, and the npm reference server where `npx`
//! finds it without a download. It uses the default ports (7700, 7800) and
//! 7711..7713 and 7811..7813, as the page does.

mod common;

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use common::*;

/// The `sh` blocks of a Markdown page, joined.
fn sh_blocks(page: &str) -> String {
    let mut script = String::new();
    let mut inside = false;
    for line in page.lines() {
        match (inside, line.trim_end()) {
            (false, "```sh") => inside = true,
            (true, "```") => {
                inside = false;
                script.push('\n');
            }
            (true, _) => {
                script.push_str(line);
                script.push('\n');
            }
            _ => {}
        }
    }
    script
}

/// The services of a .proto file and their calls, with the comments above each, as
/// Markdown.
fn proto_reference(path: &str, text: &str) -> String {
    let package = text
        .lines()
        .find_map(|l| l.strip_prefix("package "))
        .map(|p| p.trim_end_matches(';').to_string())
        .unwrap_or_default();
    let mut out = String::new();
    let mut comment: Vec<String> = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(text) = line.strip_prefix("//") {
            comment.push(text.trim().to_string());
            continue;
        }
        if let Some(service) = line.strip_prefix("service ") {
            let name = service.trim_end_matches('{').trim();
            out.push_str(&format!("\n### `{package}.{name}` ({path})\n\n"));
        } else if let Some(rpc) = line.strip_prefix("rpc ") {
            let signature = rpc.trim_end_matches(';');
            let what = if comment.is_empty() {
                String::new()
            } else {
                format!(": {}", comment.join(" "))
            };
            out.push_str(&format!("- `{signature}`{what}\n"));
        }
        comment.clear();
    }
    out
}

/// docs/api.md lists every call of every service, as the .proto files describe them.
/// With MCPFLEET_WRITE_DOCS=1 the test writes the list there instead.
#[test]
fn the_api_reference_is_the_protos() -> Result<()> {
    const BEGIN: &str = "<!-- generated from proto/: do not edit -->\n";
    const END: &str = "<!-- end of generated reference -->";
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut generated = String::new();
    for proto in [
        "proto/mcpfleet/v1/registry.proto",
        "proto/mcpfleet/dataplane/v1/calls.proto",
        "proto/mcpfleet/internal/v1/raft.proto",
    ] {
        generated.push_str(&proto_reference(
            proto,
            &std::fs::read_to_string(root.join(proto))?,
        ));
    }
    let path = root.join("docs/api.md");
    let doc = std::fs::read_to_string(&path)?;
    let start = doc.find(BEGIN).context("begin marker")? + BEGIN.len();
    let end = doc.find(END).context("end marker")?;
    if std::env::var_os("MCPFLEET_WRITE_DOCS").is_some() {
        std::fs::write(
            &path,
            format!("{}{generated}{}", &doc[..start], &doc[end..]),
        )?;
        return Ok(());
    }
    ensure!(
        doc[start..end] == generated,
        "docs/api.md is not the protos' reference: run MCPFLEET_WRITE_DOCS=1 cargo test \
         --test docs the_api_reference_is_the_protos"
    );
    Ok(())
}

#[test]
fn getting_started_runs_as_written() -> Result<()> {
    let servers = mcp_servers()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let page = std::fs::read_to_string(root.join("docs/getting-started.md"))?;
    let blocks = sh_blocks(&page);
    ensure!(blocks.matches("mcpfleet").count() > 10, "no commands found");
    // Under the npm tree of the tests, so that `npx -y` finds the package there.
    let npm = Path::new(&servers.node_modules)
        .parent()
        .context("npm dir")?;
    let dir = tempfile::tempdir_in(npm)?;
    std::os::unix::fs::symlink(root.join("deploy"), dir.path().join("deploy"))?;
    let script = format!(
        "set -euo pipefail\ntrap 'set +e; kill $(jobs -p) $(cat cluster/pids 2>/dev/null) 2>/dev/null' EXIT\n{blocks}"
    );
    let bin_dir = Path::new(binary()).parent().context("bin dir")?;
    let venv_bin = Path::new(&servers.python).parent().context("venv")?;
    let path = format!(
        "{}:{}:{}",
        bin_dir.display(),
        venv_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", path)
        .env("MCPFLEET_BIN", binary())
        .env_remove("MCPFLEET_ENDPOINT")
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "the page's commands failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    for expected in [
        "Echo: hello, fleet",
        "imported 1 server(s) in one write",
        "Echo: from Python",
        "everything",
    ] {
        ensure!(stdout.contains(expected), "{expected:?} not in:\n{stdout}");
    }
    let exported: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("fleet.json"))?)?;
    ensure!(
        exported["mcpServers"]["demo"]["env"]["LOG_LEVEL"] == "info",
        "{exported}"
    );
    Ok(())
}
