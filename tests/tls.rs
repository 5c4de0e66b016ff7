//! Mutual TLS on the gRPC port (src/env/tls.rs), on real nodes with certificates that
//! `mcpfleet cert` made: a three-node cluster serves clients whose certificate its CA
//! signed, and no one else; a node of another CA cannot join; plaintext is refused; a
//! leader's death fails over as without TLS.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::*;

fn mcpfleet(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .env_remove("MCPFLEET_ENDPOINT")
        .output()
        .expect("run mcpfleet")
}

/// Runs `mcpfleet cert ...`, which must succeed.
fn cert(args: &[&str]) -> Result<()> {
    let mut all = vec!["cert"];
    all.extend_from_slice(args);
    let output = mcpfleet(&all);
    ensure!(
        output.status.success(),
        "cert {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// `names` (the CA, certificate and key flags) with the CA in `dir` and the
/// certificate `stem` there.
fn tls_flags(dir: &Path, names: [&str; 3], stem: &str) -> Vec<String> {
    let files = [
        "ca.pem".to_string(),
        format!("{stem}.pem"),
        format!("{stem}-key.pem"),
    ];
    names
        .iter()
        .zip(files)
        .flat_map(|(name, file)| [name.to_string(), dir.join(file).display().to_string()])
        .collect()
}

/// The client flags for the certificate `stem` in `dir`.
fn client_flags(dir: &Path, stem: &str) -> Vec<String> {
    tls_flags(dir, ["--cacert", "--cert", "--key"], stem)
}

/// The serve flags of node `id` with the certificates in `dir`.
fn node_flags(dir: &Path, id: u64) -> Vec<String> {
    tls_flags(
        dir,
        ["--tls-ca", "--tls-cert", "--tls-key"],
        &format!("node-{id}"),
    )
}

/// `mcpfleet --endpoint ENDPOINT FLAGS... ARGS... -o json`, parsed.
fn json(endpoint: &str, flags: &[String], args: &[&str]) -> Result<serde_json::Value> {
    let mut all: Vec<&str> = vec!["--endpoint", endpoint, "-o", "json"];
    all.extend(flags.iter().map(String::as_str));
    all.extend_from_slice(args);
    let output = mcpfleet(&all);
    ensure!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    serde_json::from_slice(&output.stdout).context("parse JSON output")
}

fn refused(endpoint: &str, flags: &[String], args: &[&str]) -> Result<String> {
    let mut all: Vec<&str> = vec!["--endpoint", endpoint];
    all.extend(flags.iter().map(String::as_str));
    all.extend_from_slice(args);
    let output = mcpfleet(&all);
    ensure!(!output.status.success(), "{args:?} was served");
    Ok(String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn a_tls_cluster_serves_only_what_its_ca_signed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    let other = dir.path().join("other");
    let certs_arg = certs.display().to_string();
    let other_arg = other.display().to_string();
    cert(&["ca", "--dir", &certs_arg])?;
    for id in ["1", "2", "3"] {
        cert(&[
            "node",
            "--id",
            id,
            "--host",
            "127.0.0.1",
            "--dir",
            &certs_arg,
        ])?;
    }
    cert(&["client", "ops", "--dir", &certs_arg])?;
    // A second CA, and what it signs.
    cert(&["ca", "--dir", &other_arg])?;
    cert(&[
        "node",
        "--id",
        "4",
        "--host",
        "127.0.0.1",
        "--dir",
        &other_arg,
    ])?;
    cert(&["client", "intruder", "--dir", &other_arg])?;
    // Keys are their owner's only; an existing file is never overwritten.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(certs.join("ca-key.pem"))?
        .permissions()
        .mode();
    ensure!(mode & 0o077 == 0, "ca-key.pem has mode {mode:o}");
    let again = mcpfleet(&["cert", "ca", "--dir", &certs_arg]);
    ensure!(
        !again.status.success() && String::from_utf8_lossy(&again.stderr).contains("exists"),
        "a second CA overwrote the first"
    );

    let addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let initial = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let id = i as u64 + 1;
        let mut flags = vec!["--initial-cluster".to_string(), initial.clone()];
        flags.extend(node_flags(&certs, id));
        nodes.push(NodeProcess::start(
            id,
            addr,
            &dir.path().join(format!("node{id}")),
            &flags,
        )?);
    }
    let ops = client_flags(&certs, "client-ops");
    let leader = eventually(Duration::from_secs(30), || {
        let status = json(&addrs[0], &ops, &["cluster", "status"])?;
        status["leader_id"].as_u64().context("no leader yet")
    })?;
    json(
        &addrs[1],
        &ops,
        &["server", "add", "remote", "--url", "http://127.0.0.1:9/mcp"],
    )?;
    let servers = json(&addrs[2], &ops, &["server", "ls"])?;
    ensure!(servers[0]["name"] == "remote", "{servers}");
    // The audit log names the client by its certificate.
    let audit = json(&addrs[2], &ops, &["audit"])?;
    ensure!(
        audit["entries"].as_array().is_some_and(|e| e
            .iter()
            .any(|e| e["actor"] == "cert ops" && e["target"] == "remote")),
        "{audit}"
    );

    // No certificate, a certificate of another CA, or no TLS at all: refused, and
    // nothing changes.
    let plain = refused(&addrs[0], &[], &["server", "ls"])?;
    ensure!(!plain.is_empty());
    let intruder = client_flags(&other, "client-intruder");
    refused(
        &addrs[0],
        &intruder,
        &["server", "add", "evil", "--command", "sh"],
    )?;
    // A client that trusts the cluster's CA but has no certificate of its own.
    let no_cert = vec!["--cacert".to_string(), ops[1].clone()];
    let error = refused(&addrs[0], &no_cert, &["server", "ls"])?;
    ensure!(error.contains("--cacert, --cert and --key"), "{error}");

    // A node of the other CA cannot join, and one without TLS neither.
    let fourth = format!("127.0.0.1:{}", free_port());
    let mut flags = vec!["--join".to_string(), addrs[0].clone()];
    flags.extend(node_flags(&other, 4));
    let mut foreign = NodeProcess::start(4, &fourth, &dir.path().join("node4"), &flags)?;
    let fifth = format!("127.0.0.1:{}", free_port());
    let mut plaintext = NodeProcess::start(
        5,
        &fifth,
        &dir.path().join("node5"),
        &["--join".to_string(), addrs[0].clone()],
    )?;
    std::thread::sleep(Duration::from_secs(5));
    let status = json(&addrs[0], &ops, &["cluster", "status"])?;
    let members = status["members"].as_array().context("members")?;
    ensure!(members.len() == 3, "an outsider joined: {status}");
    foreign.kill();
    plaintext.kill();
    ensure!(
        json(&addrs[0], &ops, &["server", "get", "remote"])?["name"] == "remote",
        "the cluster kept working"
    );

    // The leader dies: the others elect a new one over TLS, and writes go on.
    nodes[leader as usize - 1].kill();
    let survivor = &addrs[if leader == 1 { 1 } else { 0 }];
    eventually(Duration::from_secs(30), || {
        let status = json(survivor, &ops, &["cluster", "status"])?;
        let now = status["leader_id"].as_u64().context("no leader yet")?;
        ensure!(now != leader, "still the old leader");
        Ok(())
    })?;
    eventually(Duration::from_secs(10), || {
        json(
            survivor,
            &ops,
            &["server", "add", "after", "--url", "http://127.0.0.1:9/mcp"],
        )
    })?;
    Ok(())
}

#[test]
fn bad_tls_files_stop_a_node_before_it_starts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    let certs_arg = certs.display().to_string();
    cert(&["ca", "--dir", &certs_arg])?;
    cert(&[
        "node",
        "--id",
        "1",
        "--host",
        "127.0.0.1",
        "--dir",
        &certs_arg,
    ])?;
    cert(&[
        "node",
        "--id",
        "2",
        "--host",
        "127.0.0.1",
        "--dir",
        &certs_arg,
    ])?;
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let serve = |flags: &[String]| {
        let mut all = vec![
            "serve".to_string(),
            "--listen".into(),
            listen.clone(),
            "--http".into(),
            "off".into(),
            "--data".into(),
            data.display().to_string(),
        ];
        all.extend(flags.iter().cloned());
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        mcpfleet(&all)
    };
    let path = |name: &str| certs.join(name).display().to_string();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello")?;
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--tls-ca".into(), path("ca.pem")],
            "TLS needs all of --tls-ca, --tls-cert and --tls-key",
        ),
        (
            vec![
                "--tls-ca".into(),
                not_pem.display().to_string(),
                "--tls-cert".into(),
                path("node-1.pem"),
                "--tls-key".into(),
                path("node-1-key.pem"),
            ],
            "holds no certificate in PEM form",
        ),
        (
            // Node 1's certificate with node 2's key.
            vec![
                "--tls-ca".into(),
                path("ca.pem"),
                "--tls-cert".into(),
                path("node-1.pem"),
                "--tls-key".into(),
                path("node-2-key.pem"),
            ],
            "the TLS settings are refused",
        ),
    ];
    for (flags, says) in cases {
        let output = serve(&flags);
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(!output.status.success(), "{flags:?} started");
        ensure!(stderr.contains(says), "{flags:?}: {stderr}");
        ensure!(!data.exists(), "{flags:?} made a data dir");
    }
    // With TLS and auth, the gRPC port may listen beyond loopback without --insecure
    // (with TLS alone it may not, and the HTTP port still may not).
    let file = dir.path().join("open.toml");
    let tls_keys = format!(
        "tls-ca = \"{}\"\ntls-cert = \"{}\"\ntls-key = \"{}\"\n",
        path("ca.pem"),
        path("node-1.pem"),
        path("node-1-key.pem")
    );
    std::fs::write(&file, format!("listen = \"0.0.0.0:7700\"\n{tls_keys}"))?;
    let check = config_check(&file);
    ensure!(
        String::from_utf8_lossy(&check.stderr).contains("this port has no authentication"),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    std::fs::write(
        &file,
        format!("listen = \"0.0.0.0:7700\"\nauth = true\n{tls_keys}"),
    )?;
    let check = config_check(&file);
    ensure!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    std::fs::write(&file, format!("http = \"0.0.0.0:7800\"\n{tls_keys}"))?;
    let check = config_check(&file);
    ensure!(
        String::from_utf8_lossy(&check.stderr).contains("no TLS on its HTTP port"),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    Ok(())
}
