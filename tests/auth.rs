//! Bearer tokens and roles (src/auth), on a real three-node cluster started with
//! `--auth`: what each role may and may not do on the gRPC client API and on `/mcp`
//! (through the official Python MCP SDK), that refusals change nothing, that no secret
//! reaches the registry, and how fast a revocation reaches every node.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::*;

/// Runs a client command against `endpoint` with `token` (none: no token at all).
fn as_token(endpoint: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(binary());
    command
        .args(args)
        .args(["--endpoint", endpoint])
        .env_remove("MCPFLEET_ENDPOINT")
        .env_remove("MCPFLEET_TOKEN");
    if let Some(token) = token {
        command.env("MCPFLEET_TOKEN", token);
    }
    command.output().expect("run mcpfleet")
}

/// Runs a command that must succeed; gives its stdout.
fn allowed(endpoint: &str, token: &str, args: &[&str]) -> Result<String> {
    let output = as_token(endpoint, Some(token), args);
    ensure!(
        output.status.success(),
        "{args:?} was refused: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a command that must be refused with a reason containing `says`.
fn refused(endpoint: &str, token: Option<&str>, args: &[&str], says: &str) -> Result<()> {
    let output = as_token(endpoint, token, args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success(), "{args:?} was allowed");
    ensure!(stderr.contains(says), "{args:?}: {stderr}");
    Ok(())
}

/// Creates a token with `flags` (`--role ...`) and gives its text.
fn create(endpoint: &str, admin: &str, flags: &[&str]) -> Result<String> {
    let mut args = vec!["token", "create"];
    args.extend_from_slice(flags);
    Ok(allowed(endpoint, admin, &args)?.trim().to_string())
}

/// Runs tests/clients/python_token.py and parses its JSON line.
fn python_token(args: &[&str]) -> Result<serde_json::Value> {
    let servers = mcp_servers()?;
    let output = Command::new(&servers.python)
        .arg(format!(
            "{}/tests/clients/python_token.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args(args)
        .output()
        .context("run the Python SDK client")?;
    ensure!(
        output.status.success(),
        "python_token.py {:?}: {}",
        &args[..1],
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).context("parse the client's answer")
}

/// The servers' names, as `token`'s holder lists them.
fn names(endpoint: &str, token: &str) -> Result<Vec<String>> {
    let listed: serde_json::Value =
        serde_json::from_str(&allowed(endpoint, token, &["server", "ls", "-o", "json"])?)?;
    Ok(listed
        .as_array()
        .context("an array")?
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect())
}

#[test]
fn each_role_may_do_what_it_allows_and_nothing_more() -> Result<()> {
    let servers = mcp_servers()?;
    let mut cluster = Cluster::start_with(3, &["--auth"])?;
    let one = cluster.addr(1);

    // No token: refused, as soon as the node is up; the first token comes from the
    // bootstrap, once there is a leader.
    eventually(Duration::from_secs(20), || {
        refused(&one, None, &["server", "ls"], "needs a bearer token")
    })?;
    let admin = eventually(Duration::from_secs(20), || {
        let output = as_token(&one, None, &["token", "bootstrap"]);
        ensure!(
            output.status.success(),
            "bootstrap: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    })?;
    ensure!(admin.starts_with("mcpf_"), "bootstrap printed {admin:?}");
    refused(&one, None, &["token", "bootstrap"], "already has tokens")?;
    // Tokens work once a node has heard from the leader.
    for id in 1..=3 {
        let addr = cluster.addr(id);
        eventually(Duration::from_secs(20), || {
            allowed(&addr, &admin, &["cluster", "status"]).map(drop)
        })?;
    }

    // The admin registers the server and makes a token of each role.
    let marker = process_marker("auth");
    allowed(
        &one,
        &admin,
        &[
            "server",
            "add",
            "everything",
            "--command",
            &servers.everything,
            "--env",
            &marker,
        ],
    )?;
    let reader = create(&one, &admin, &["--role", "reader", "--name", "dashboards"])?;
    let caller = create(
        &one,
        &admin,
        &["--role", "caller", "--server", "every*", "--tool", "echo"],
    )?;
    let operator = create(&one, &admin, &["--role", "operator"])?;
    eventually(Duration::from_secs(30), || {
        let listed = allowed(&one, &operator, &["tools", "-o", "json"])?;
        ensure!(listed.contains("everything__echo"), "no echo yet: {listed}");
        Ok(())
    })?;

    // Missing, malformed and unknown tokens.
    refused(&one, Some("garbage"), &["server", "ls"], "the token")?;
    let unknown = format!("mcpf_{}_{}", "0".repeat(16), "0".repeat(64));
    refused(
        &one,
        Some(&unknown),
        &["server", "ls"],
        "unknown or revoked token",
    )?;

    // Reader: status and lists, nothing else.
    let two = cluster.addr(2);
    ensure!(names(&two, &reader)? == ["everything"]);
    allowed(&two, &reader, &["status"])?;
    allowed(&two, &reader, &["cluster", "status"])?;
    let add = [
        "server",
        "add",
        "extra",
        "--command",
        &servers.everything,
        "--env",
        &marker,
    ];
    refused(&two, Some(&reader), &add, "needs operator")?;
    refused(
        &two,
        Some(&reader),
        &["call", "everything", "echo", "--args", r#"{"message":"x"}"#],
        "needs caller",
    )?;
    refused(&two, Some(&reader), &["token", "ls"], "needs admin")?;

    // Caller: the tools its patterns name, and only those.
    let echo = allowed(
        &two,
        &caller,
        &[
            "call",
            "everything",
            "echo",
            "--args",
            r#"{"message":"hi"}"#,
        ],
    )?;
    ensure!(echo.contains("hi"), "echo said {echo}");
    let all: serde_json::Value =
        serde_json::from_str(&allowed(&two, &operator, &["tools", "-o", "json"])?)?;
    let other = all
        .as_array()
        .context("tools")?
        .iter()
        .filter_map(|t| t["tool"].as_str())
        .find(|t| *t != "echo")
        .context("server-everything has tools besides echo")?
        .to_string();
    refused(
        &two,
        Some(&caller),
        &["call", "everything", &other],
        "may not call everything/",
    )?;
    let seen: serde_json::Value =
        serde_json::from_str(&allowed(&two, &caller, &["tools", "-o", "json"])?)?;
    let seen: Vec<&str> = seen
        .as_array()
        .context("tools")?
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    ensure!(seen == ["everything__echo"], "the caller saw {seen:?}");
    refused(&two, Some(&caller), &add, "needs operator")?;

    // Operator: servers and drains; not tokens or backups.
    allowed(&two, &operator, &add)?;
    allowed(&two, &operator, &["server", "rm", "extra"])?;
    allowed(&two, &operator, &["node", "drain", "3"])?;
    allowed(&two, &operator, &["node", "undrain", "3"])?;
    refused(&two, Some(&operator), &["token", "ls"], "needs admin")?;
    let backup = cluster.dir.path().join("backup");
    let backup_arg = backup.display().to_string();
    refused(
        &two,
        Some(&operator),
        &["snapshot", "save", &backup_arg],
        "needs admin",
    )?;
    allowed(&two, &admin, &["snapshot", "save", &backup_arg])?;

    // Refusals changed nothing; the tokens are listed without secrets or digests.
    ensure!(names(&one, &admin)? == ["everything"]);
    let listed = allowed(&one, &admin, &["token", "ls", "-o", "json"])?;
    let tokens: serde_json::Value = serde_json::from_str(&listed)?;
    ensure!(tokens.as_array().map(Vec::len) == Some(4), "{listed}");
    for token in [&admin, &reader, &caller, &operator] {
        let secret = token.rsplit('_').next().context("a secret")?;
        ensure!(!listed.contains(secret), "token ls shows a secret");
    }
    ensure!(!listed.contains("sha256"), "token ls shows a digest");

    // /mcp: 401 with a challenge without a valid token, 403 for a reader; the Python
    // SDK with the caller's token sees and calls only what the caller may.
    let url = cluster.mcp_url(3);
    let none = python_token(&["status", &url])?;
    ensure!(none["status"] == 401, "no token: {none}");
    ensure!(
        none["challenge"]
            .as_str()
            .is_some_and(|c| c.starts_with("Bearer")),
        "no token: {none}"
    );
    let bad = python_token(&["status", &url, &unknown])?;
    ensure!(bad["status"] == 401, "unknown token: {bad}");
    ensure!(
        bad["challenge"]
            .as_str()
            .is_some_and(|c| c.contains("invalid_token")),
        "unknown token: {bad}"
    );
    let weak = python_token(&["status", &url, &reader])?;
    ensure!(weak["status"] == 403, "reader: {weak}");
    let other_name = format!("everything__{other}");
    let session = python_token(&["session", &url, &caller, &other_name])?;
    ensure!(
        session["tools"] == serde_json::json!(["everything__echo"]),
        "{session}"
    );
    ensure!(
        session["echo"]
            .as_str()
            .is_some_and(|t| t.contains("with a token")),
        "{session}"
    );
    ensure!(session["other"].is_string(), "{session}");
    // Its server pattern limits the prompts and resources it sees too: all of
    // everything's, and for a caller of other servers, none.
    let shown = python_token(&["lists", &url, &caller])?;
    let all = python_token(&["lists", &url, &operator])?;
    ensure!(
        shown["tools"] == 1
            && shown["prompts"] == all["prompts"]
            && shown["resources"] == all["resources"]
            && all["prompts"].as_u64() > Some(0),
        "{shown} {all}"
    );
    let elsewhere = create(&one, &admin, &["--role", "caller", "--server", "time*"])?;
    let none = python_token(&["lists", &url, &elsewhere])?;
    ensure!(
        none == serde_json::json!({"tools": 0, "prompts": 0, "resources": 0}),
        "{none}"
    );

    // No node's data dir holds a token's secret.
    for id in 1..=3 {
        let data = &cluster.node(id).data;
        for token in [&admin, &reader, &caller, &operator] {
            let secret = token.rsplit('_').next().context("a secret")?;
            let hits = Command::new("grep")
                .args(["-r", "-l", "-a", secret])
                .arg(data)
                .output()?;
            ensure!(
                hits.stdout.is_empty(),
                "node {id}'s data dir holds a secret: {}",
                String::from_utf8_lossy(&hits.stdout)
            );
        }
    }

    // A revocation through node 1 holds on every node: measured from its answer to
    // the first refusal on node 3 (and then on node 2).
    let call = ["call", "everything", "echo", "--args", r#"{"message":"x"}"#];
    allowed(&one, &admin, &["token", "revoke", &caller[5..21]])?;
    let revoked = Instant::now();
    let mut took = Vec::new();
    for id in [3, 2] {
        let addr = cluster.addr(id);
        loop {
            let output = as_token(&addr, Some(&caller), &call);
            if !output.status.success() {
                let stderr = String::from_utf8_lossy(&output.stderr);
                ensure!(stderr.contains("unknown or revoked"), "{stderr}");
                break;
            }
            if revoked.elapsed() > Duration::from_secs(5) {
                bail!("node {id} still takes the revoked token");
            }
        }
        took.push(revoked.elapsed());
    }
    println!("revocation refused on nodes 3 and 2 after {took:?}");
    ensure!(
        took.iter().all(|t| *t < Duration::from_secs(1)),
        "revocation took {took:?}"
    );
    let after = python_token(&["status", &url, &caller])?;
    ensure!(after["status"] == 401, "revoked on /mcp: {after}");

    // The audit log names who made each change, with the leader's time; only an
    // admin reads it.
    refused(&two, Some(&reader), &["audit"], "needs admin")?;
    let audit: serde_json::Value =
        serde_json::from_str(&allowed(&two, &admin, &["audit", "-o", "json"])?)?;
    let entries = audit["entries"].as_array().context("entries")?;
    let by = |actor: &str, action: &str, target: &str| {
        entries.iter().any(|e| {
            e["actor"].as_str().is_some_and(|a| a.starts_with(actor))
                && e["action"] == action
                && e["target"] == target
        })
    };
    let admin_id = format!("token {}", &admin[5..21]);
    let operator_id = format!("token {}", &operator[5..21]);
    ensure!(
        by(
            "anonymous",
            "create-token",
            &format!("token {}", &admin[5..21])
        ),
        "{audit}"
    );
    ensure!(by(&admin_id, "put-server", "everything"), "{audit}");
    ensure!(by(&operator_id, "put-server", "extra"), "{audit}");
    ensure!(by(&operator_id, "delete-server", "extra"), "{audit}");
    ensure!(by(&operator_id, "set-node-admin", "node 3"), "{audit}");
    ensure!(
        by(
            &admin_id,
            "revoke-token",
            &format!("token {}", &caller[5..21])
        ),
        "{audit}"
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    ensure!(
        entries.iter().all(|e| e["stamp_ms"]
            .as_u64()
            .is_some_and(|t| t <= now_ms + 5_000 && t + 600_000 > now_ms)),
        "{audit}"
    );
    // Refused requests left no entry.
    ensure!(
        !entries.iter().any(|e| e["actor"]
            .as_str()
            .is_some_and(|a| a.contains(&reader[5..21]))),
        "{audit}"
    );
    let table = allowed(&two, &admin, &["audit"])?;
    ensure!(
        table.starts_with("REVISION") && table.contains(&admin_id),
        "{table}"
    );

    // A node cut off from the others refuses every token once it has not heard from
    // a leader for a second, and takes them again when it has.
    allowed(&one, &admin, &["cluster", "status"])?;
    for id in [2, 3] {
        cluster.node(id).signal("STOP")?;
    }
    let cut = Instant::now();
    let refusal = eventually(Duration::from_secs(10), || {
        let output = as_token(&one, Some(&reader), &["server", "ls", "--stale"]);
        ensure!(!output.status.success(), "still taken");
        Ok(String::from_utf8_lossy(&output.stderr).into_owned())
    });
    let cut_for = cut.elapsed();
    for id in [2, 3] {
        cluster.node(id).signal("CONT")?;
    }
    let refusal = refusal?;
    ensure!(
        refusal.contains("has not heard from the leader"),
        "{refusal}"
    );
    println!("a node cut off refused tokens after {cut_for:?}");
    eventually(Duration::from_secs(20), || {
        ensure!(names(&one, &reader)? == ["everything"]);
        Ok(())
    })?;
    Ok(())
}
