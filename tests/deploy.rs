//! The files of deploy/ pass the checks that their tools make, run here for real:
//! - the systemd unit: `systemd-analyze verify`, and `systemd-analyze security` under
//!   an exposure of 3.0 (on a copy whose ExecStart is this build's binary, as verify
//!   checks that the program exists);
//! - its example config: `mcpfleet config check`;
//! - the Kubernetes manifests: kubernetes-validate, strict, against the Kubernetes
//!   OpenAPI schemas;
//! - the Dockerfile: hadolint; the compose file: the Compose spec's JSON schema.
//!
//! No Docker engine or Kubernetes cluster runs on these machines: the container image
//! is not built here, and the manifests are not applied.

mod common;

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use common::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `program args`; fails with everything it printed unless it succeeds.
fn passes(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .with_context(|| format!("run {program}"))?;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        output.status.success(),
        "{program} {args:?} failed:\n{printed}"
    );
    Ok(printed)
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() -> Result<()> {
    let unit = std::fs::read_to_string(root().join("deploy/systemd/mcpfleet.service"))?;
    let installed = "ExecStart=/usr/local/bin/mcpfleet serve";
    ensure!(unit.contains(installed), "the unit starts {installed}");
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("mcpfleet.service");
    std::fs::write(
        &copy,
        unit.replace(installed, &format!("ExecStart={} serve", binary())),
    )?;
    let copy = copy.display().to_string();
    let printed = passes("systemd-analyze", &["verify", &copy])?;
    ensure!(printed.trim().is_empty(), "verify warned:\n{printed}");
    passes(
        "systemd-analyze",
        &["security", "--offline=yes", "--threshold=30", &copy],
    )?;
    Ok(())
}

#[test]
fn the_example_config_checks() -> Result<()> {
    let printed = passes(
        binary(),
        &["config", "check", "deploy/systemd/mcpfleet.toml"],
    )?;
    ensure!(printed.ends_with(": ok\n"), "{printed}");
    Ok(())
}

#[test]
fn the_kubernetes_manifests_validate_against_the_schemas() -> Result<()> {
    let servers = mcp_servers()?;
    let validate = Path::new(&servers.python).with_file_name("kubernetes-validate");
    let validate = validate.display().to_string();
    let printed = passes(&validate, &["--strict", "deploy/kubernetes/mcpfleet.yaml"])?;
    for resource in [
        "service/mcpfleet ",
        "service/mcpfleet-client ",
        "statefulset/mcpfleet ",
        "poddisruptionbudget/mcpfleet ",
    ] {
        ensure!(
            printed.contains(&format!("passed for resource {resource}")),
            "{printed}"
        );
    }
    // The validator refuses what is wrong: the same StatefulSet with a bad field.
    let manifest = std::fs::read_to_string(root().join("deploy/kubernetes/mcpfleet.yaml"))?;
    let broken = manifest.replace("replicas: 3", "replicas: three");
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, broken)?;
    ensure!(passes(&validate, &["--strict", &path.display().to_string()]).is_err());
    Ok(())
}

#[test]
fn the_dockerfile_and_compose_file_lint_clean() -> Result<()> {
    let servers = mcp_servers()?;
    let bin = Path::new(&servers.python)
        .parent()
        .context("venv")?
        .to_path_buf();
    let tool = |name: &str| bin.join(name).display().to_string();
    passes(&tool("hadolint"), &["deploy/docker/Dockerfile"])?;
    passes(
        &tool("check-jsonschema"),
        &[
            "--builtin-schema",
            "vendor.compose-spec",
            "deploy/docker/compose.yaml",
        ],
    )?;
    // Every node of the compose file is of the same cluster.
    let compose = std::fs::read_to_string(root().join("deploy/docker/compose.yaml"))?;
    ensure!(
        compose
            .matches("1=node1:7700,2=node2:7700,3=node3:7700")
            .count()
            == 3
    );
    Ok(())
}
