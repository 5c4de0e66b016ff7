//! Bad input gets a non-zero exit and a one-line reason, and changes nothing.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::*;
use mcpfleet::proto::v1 as pb;

/// Asserts a failed run with exactly one line on stderr containing `reason`.
fn assert_refused(output: &Output, reason: &str) -> Result<()> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success(),
        "expected failure, got success: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(lines.len() == 1, "expected one line, got {lines:?}");
    ensure!(
        lines[0].contains(reason),
        "expected {reason:?} in {:?}",
        lines[0]
    );
    Ok(())
}

/// The server table with every server's revisions. (The registry's own revision also
/// moves with node liveness and replica health, which run on their own.)
fn servers(endpoint: &str) -> Result<serde_json::Value> {
    cli_json(endpoint, &["server", "ls"])
}

#[test]
fn bad_client_input_is_refused_and_changes_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let addr = format!("127.0.0.1:{}", free_port());
    let _node = NodeProcess::start(1, &addr, &dir.path().join("data"), &[])?;
    wait_for_leader(&addr, Duration::from_secs(20))?;
    cli_json(
        &addr,
        &[
            "server",
            "add",
            "time",
            "--command",
            "uvx",
            "--arg",
            "mcp-server-time",
        ],
    )?;
    let before = servers(&addr)?;
    let oversize_arg = "x".repeat(70 * 1024);

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["server", "add", "bad name", "--command", "x"],
            "invalid server name",
        ),
        (
            vec!["server", "add", "ok", "--command", "   "],
            "command must not be empty",
        ),
        (
            vec!["server", "add", "ok", "--command", "x", "--replicas", "0"],
            "replicas must be between",
        ),
        (
            vec!["server", "add", "ok", "--command", "x", "--replicas", "65"],
            "replicas must be between",
        ),
        (
            vec!["server", "add", "ok", "--url", "ftp://x"],
            "must be http",
        ),
        (
            vec!["server", "add", "ok", "--command", "x", "--env", "NOEQUALS"],
            "expected KEY=VALUE",
        ),
        (
            vec![
                "server",
                "add",
                "ok",
                "--command",
                "x",
                "--arg",
                &oversize_arg,
            ],
            "more than the limit",
        ),
        (
            vec![
                "server",
                "add",
                "ok",
                "--command",
                "x",
                "--replicas",
                "many",
            ],
            "invalid value",
        ),
        (vec!["server", "add", "ok"], "required"),
        (vec!["server", "get", "nope"], "not found"),
        (vec!["server", "rm", "nope"], "not found"),
        (
            vec![
                "server",
                "add",
                "time",
                "--command",
                "x",
                "--expected-revision",
                "999",
            ],
            "revision mismatch",
        ),
        (
            vec!["server", "rm", "time", "--expected-revision", "999"],
            "revision mismatch",
        ),
    ];
    for (args, reason) in cases {
        let output = cli(&addr, &args);
        assert_refused(&output, reason)
            .map_err(|e| e.context(format!("{:?}", &args[..2.min(args.len())])))?;
        ensure!(servers(&addr)? == before, "{args:?} changed the revision");
    }

    // A request over the size limit never reaches the registry.
    let runtime = tokio::runtime::Runtime::new()?;
    let code = runtime.block_on(async {
        let mut client =
            pb::registry_client::RegistryClient::connect(format!("http://{addr}")).await?;
        let request = pb::PutServerRequest {
            spec: Some(pb::ServerSpec {
                name: "huge".into(),
                transport: Some(pb::server_spec::Transport::Stdio(pb::StdioTransport {
                    command: "x".repeat(2 * 1024 * 1024),
                    ..Default::default()
                })),
                replicas: 1,
                ..Default::default()
            }),
            expected_revision: None,
        };
        anyhow::Ok(client.put_server(request).await.unwrap_err().code())
    })?;
    ensure!(
        code == tonic::Code::OutOfRange || code == tonic::Code::ResourceExhausted,
        "{code:?}"
    );
    ensure!(
        servers(&addr)? == before,
        "oversize request changed the revision"
    );

    // An unreachable endpoint is one line too.
    let dead = format!("127.0.0.1:{}", free_port());
    assert_refused(&cli(&dead, &["server", "ls"]), "cannot reach")?;
    Ok(())
}

#[test]
fn bad_serve_flags_and_data_dirs_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let data = dir.path().join("data");
    let data_arg = data.display().to_string();

    // --initial-cluster without --id.
    let other = format!("1=127.0.0.1:{port},2=127.0.0.1:{}", free_port());
    let output = serve(&[
        "--id",
        "3",
        "--listen",
        &listen,
        "--data",
        &data_arg,
        "--initial-cluster",
        &other,
    ]);
    assert_refused(&output, "does not contain --id 3")?;
    let output = serve(&[
        "--id",
        "1",
        "--listen",
        &listen,
        "--data",
        &data_arg,
        "--initial-cluster",
        "1=nowhere",
    ]);
    assert_refused(&output, "expected HOST:PORT")?;
    let output = serve(&[
        "--listen",
        &listen,
        "--data",
        &data_arg,
        "--max-watches",
        "0",
    ]);
    assert_refused(&output, "max watches must be 1..=65536, got 0")?;
    let output = serve(&[
        "--listen",
        &listen,
        "--data",
        &data_arg,
        "--log",
        "mcpfleet=[",
    ]);
    assert_refused(&output, "invalid --log filter \"mcpfleet=[\"")?;
    let output = serve(&[
        "--listen",
        &listen,
        "--data",
        &data_arg,
        "--log-format",
        "xml",
    ]);
    assert_refused(&output, "invalid value 'xml' for '--log-format")?;

    // A data dir held by a running node.
    let mut node = NodeProcess::start(1, &listen, &data, &[])?;
    wait_for_leader(&listen, Duration::from_secs(20))?;
    cli_json(&listen, &["server", "add", "kept", "--command", "echo"])?;
    let second_listen = format!("127.0.0.1:{}", free_port());
    let output = serve(&["--id", "1", "--listen", &second_listen, "--data", &data_arg]);
    assert_refused(&output, "in use")?;
    node.kill();

    // A data dir that belongs to another node.
    let output = serve(&["--id", "2", "--listen", &second_listen, "--data", &data_arg]);
    assert_refused(&output, "belongs to node 1")?;

    // A corrupt data dir: every file overwritten with garbage.
    let output = serve_changed_copy(&data, &dir.path().join("corrupt"), &second_listen, garble)?;
    assert_refused(&output, "corrupt")?;

    // A data dir written in an older format version: version 1 (before format records),
    // version 2 (values without a version tag) and version 3 (before `PutServers`).
    for version in [1u32, 2, 3] {
        let said_older = |older: &std::path::Path| -> Result<()> {
            tokio::runtime::Builder::new_current_thread()
                .build()?
                .block_on(async {
                    use mcpfleet::env::Disk;
                    let disk = mcpfleet::env::SledDisk::open(older)?;
                    disk.put_meta("format", version.to_be_bytes().to_vec())
                        .await?;
                    disk.sync().await
                })?;
            Ok(())
        };
        let older = dir.path().join(format!("older-{version}"));
        let output = serve_changed_copy(&data, &older, &second_listen, said_older)?;
        assert_refused(&output, &format!("written in format version {version}"))?;
    }

    // Beyond loopback, without TLS and authentication: refused unless --insecure.
    let open_port = free_port();
    let open = format!("0.0.0.0:{open_port}");
    let output = serve(&["--listen", &open, "--data", &data_arg]);
    assert_refused(&output, "refusing to listen on 0.0.0.0")?;
    let output = Command::new(binary())
        .args(["serve", "--listen", &second_listen, "--data", &data_arg])
        .args(["--http", &format!("[::]:{open_port}")])
        .env("RUST_LOG", "off")
        .output()?;
    assert_refused(
        &output,
        "not loopback, and mcpfleet has no TLS on its HTTP port",
    )?;
    // --insecure (or `insecure = true`) takes the risk; without it, the same file is
    // refused by `config check` too.
    let file = dir.path().join("open.toml");
    std::fs::write(&file, format!("listen = \"{open}\"\ninsecure = true\n"))?;
    let check = config_check(&file);
    ensure!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    std::fs::write(&file, format!("listen = \"{open}\"\n"))?;
    let check = config_check(&file);
    assert_refused(&check, "refusing to listen on 0.0.0.0")?;

    // A data dir that is a file.
    let file = dir.path().join("file");
    std::fs::write(&file, b"not a directory")?;
    let output = serve(&[
        "--listen",
        &second_listen,
        "--data",
        &file.display().to_string(),
    ]);
    assert_refused(&output, "not a directory")?;

    // The original data dir is untouched by all of this.
    node.restart()?;
    eventually(Duration::from_secs(20), || {
        ensure!(server_names(&listen, false)? == ["kept"]);
        Ok(())
    })?;
    Ok(())
}

/// Runs `mcpfleet serve` with `args` (and no MCP endpoint) and waits for it to end.
fn serve(args: &[&str]) -> Output {
    Command::new(binary())
        .arg("serve")
        .args(["--http", "off"])
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run mcpfleet serve")
}

/// Serves node 1 on `listen` from a copy of `data` at `copy`, changed by `change`
/// first.
fn serve_changed_copy(
    data: &std::path::Path,
    copy: &std::path::Path,
    listen: &str,
    change: impl FnOnce(&std::path::Path) -> Result<()>,
) -> Result<Output> {
    std::fs::create_dir_all(copy)?;
    copy_dir(data, copy)?;
    change(copy)?;
    let copy = copy.display().to_string();
    Ok(serve(&["--id", "1", "--listen", listen, "--data", &copy]))
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

fn garble(dir: &std::path::Path) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            garble(&entry.path())?;
        } else {
            let len = entry.metadata()?.len().max(64) as usize;
            let garbage: Vec<u8> = (0..len).map(|i| (i * 7 + 13) as u8).collect();
            std::fs::write(entry.path(), garbage)?;
        }
    }
    Ok(())
}

#[test]
fn watches_past_the_cap_are_refused_and_a_closed_one_frees_its_place() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let addr = format!("127.0.0.1:{}", free_port());
    let _node = NodeProcess::start(
        1,
        &addr,
        &dir.path().join("data"),
        &["--max-watches".into(), "2".into()],
    )?;
    wait_for_leader(&addr, Duration::from_secs(20))?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let mut api =
                pb::registry_client::RegistryClient::connect(format!("http://{addr}")).await?;
            let watch = || pb::WatchServersRequest { from_revision: 0 };
            let first = api.watch_servers(watch()).await?;
            let _second = api.watch_servers(watch()).await?;
            let refused = api
                .watch_servers(watch())
                .await
                .err()
                .context("a third watch")?;
            ensure!(
                refused.code() == tonic::Code::ResourceExhausted
                    && refused.message().contains("at most 2 watches"),
                "{refused:?}"
            );
            // Dropping a stream ends its watch on the node, which frees the place.
            drop(first);
            eventually_async(Duration::from_secs(5), || {
                let mut api = api.clone();
                async move { Ok(api.watch_servers(watch()).await?) }
            })
            .await?;
            Ok::<_, anyhow::Error>(())
        })?;
    // The node serves everything else as before.
    ensure!(server_names(&addr, false)?.is_empty());
    Ok(())
}

/// Retries `check` until it succeeds or `limit` passes.
async fn eventually_async<T, F, Fut>(limit: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = std::time::Instant::now() + limit;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(error) if std::time::Instant::now() > deadline => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
