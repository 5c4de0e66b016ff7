//! Helpers for tests against real `mcpfleet` processes on loopback.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// The mcpfleet binary: this build's, or `MCPFLEET_BIN` when set (benchmarks use it to
/// compare builds side by side).
pub fn binary() -> &'static str {
    static BINARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        std::env::var("MCPFLEET_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mcpfleet").into())
    })
}

/// A port that was free a moment ago, for a process the test starts. It comes from
/// below Linux's ephemeral range (32768 and up by default), so that no outgoing
/// connection of the tests' many clients takes it before the process binds it; each
/// test binary starts at its own place in the range and hands out every port once.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN);
}

/// With `MCPFLEET_TEST_TLS=1`, every node these helpers start serves mutual TLS
/// only, and every client command they run uses a client certificate: so the
/// multi-process tests and benchmarks run over TLS as they do without it. The
/// certificates (one CA per test process, nodes 1 to 7 on 127.0.0.1, a client named
/// `tests`) are made by `mcpfleet cert` in a directory of the process's.
pub fn test_tls() -> Option<&'static Path> {
    static DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        if std::env::var("MCPFLEET_TEST_TLS").ok().as_deref() != Some("1") {
            return None;
        }
        let dir = tempfile::tempdir().expect("a temporary dir").keep();
        let dir_arg = dir.display().to_string();
        let mut runs = vec![
            vec!["ca".to_string()],
            vec!["client".into(), "tests".into()],
        ];
        for id in 1..=7 {
            runs.push(vec![
                "node".into(),
                "--id".into(),
                id.to_string(),
                "--host".into(),
                "127.0.0.1".into(),
            ]);
        }
        for run in runs {
            let output = Command::new(binary())
                .arg("cert")
                .args(&run)
                .args(["--dir", &dir_arg])
                .output()
                .expect("run mcpfleet cert");
            assert!(output.status.success(), "mcpfleet cert {run:?}: {output:?}");
        }
        Some(dir)
    })
    .as_deref()
}

/// The environment that gives a client command the test certificates (none without
/// `MCPFLEET_TEST_TLS=1`).
pub fn client_tls_env() -> Vec<(&'static str, String)> {
    test_tls().map_or_else(Vec::new, |dir| {
        vec![
            ("MCPFLEET_CACERT", dir.join("ca.pem").display().to_string()),
            (
                "MCPFLEET_CERT",
                dir.join("client-tests.pem").display().to_string(),
            ),
            (
                "MCPFLEET_KEY",
                dir.join("client-tests-key.pem").display().to_string(),
            ),
        ]
    })
}

/// Runs a client command against `endpoint`.
pub fn cli(endpoint: &str, args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .arg("--endpoint")
        .arg(endpoint)
        .env_remove("MCPFLEET_ENDPOINT")
        .envs(client_tls_env())
        .output()
        .expect("run mcpfleet")
}

/// Runs `mcpfleet config check FILE`.
pub fn config_check(file: impl AsRef<Path>) -> Output {
    Command::new(binary())
        .args(["config", "check"])
        .arg(file.as_ref())
        .output()
        .expect("run mcpfleet config check")
}

/// Runs a client command; gives (success, stdout, stderr).
pub fn cli_run(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    let output = cli(endpoint, args);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Every server as `server ls -o json` gives it, without its revisions: what two
/// registries must agree on after an export and import, or a backup and restore.
pub fn server_specs(endpoint: &str) -> Result<Vec<serde_json::Value>> {
    let mut list = cli_json(endpoint, &["server", "ls"])?
        .as_array()
        .context("ls prints an array")?
        .clone();
    for server in &mut list {
        let object = server.as_object_mut().context("a server")?;
        object.remove("create_revision");
        object.remove("mod_revision");
    }
    Ok(list)
}

/// Runs a client command and parses its JSON output; fails on a non-zero exit.
pub fn cli_json(endpoint: &str, args: &[&str]) -> Result<serde_json::Value> {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-o", "json"]);
    let output = cli(endpoint, &all);
    if !output.status.success() {
        bail!(
            "mcpfleet {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    serde_json::from_slice(&output.stdout).context("parse JSON output")
}

pub struct NodeProcess {
    pub id: u64,
    pub addr: String,
    /// Where it serves /mcp ("host:port").
    pub http: String,
    pub data: PathBuf,
    pub args: Vec<String>,
    /// Extra environment for the process.
    pub env: Vec<(String, String)>,
    pub child: Option<Child>,
}

impl NodeProcess {
    /// Starts `mcpfleet serve` with `args`; its log goes to `<data>.log`.
    pub fn start(id: u64, addr: &str, data: &Path, extra: &[String]) -> Result<NodeProcess> {
        NodeProcess::start_with_env(id, addr, data, extra, &[])
    }

    /// As `start`, with extra environment variables.
    pub fn start_with_env(
        id: u64,
        addr: &str,
        data: &Path,
        extra: &[String],
        env: &[(&str, &str)],
    ) -> Result<NodeProcess> {
        let mut args = vec![
            "serve".to_string(),
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            addr.to_string(),
            "--data".into(),
            data.display().to_string(),
        ];
        // Every node serves /mcp on a port of its own.
        let http = match extra.iter().position(|a| a == "--http") {
            Some(i) => extra[i + 1].clone(),
            None => {
                let http = format!("127.0.0.1:{}", free_port());
                args.extend(["--http".to_string(), http.clone()]);
                http
            }
        };
        args.extend(extra.iter().cloned());
        if let Some(certs) = test_tls().filter(|_| !extra.iter().any(|a| a == "--tls-ca")) {
            for (flag, file) in [
                ("--tls-ca", "ca.pem".to_string()),
                ("--tls-cert", format!("node-{id}.pem")),
                ("--tls-key", format!("node-{id}-key.pem")),
            ] {
                args.extend([flag.to_string(), certs.join(file).display().to_string()]);
            }
        }
        let mut node = NodeProcess {
            id,
            addr: addr.to_string(),
            http,
            data: data.to_path_buf(),
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
        };
        node.restart()?;
        Ok(node)
    }

    /// Starts the process again with the same flags and data dir.
    pub fn restart(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.with_extension("log"))?;
        let child = Command::new(binary())
            .args(&self.args)
            .envs(self.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawn mcpfleet serve")?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (a name such as "STOP" or "CONT") to the process.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.pid().context("not running")?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits up to `limit` for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("not running")?;
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()?;
        assert!(status.success());
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("node {} did not stop within {limit:?}", self.id);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A static cluster of real processes on loopback.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeProcess>,
}

impl Cluster {
    pub fn start(size: u64) -> Result<Cluster> {
        Cluster::start_with(size, &[])
    }

    /// As `start`, with `extra` flags for every node.
    pub fn start_with(size: u64, extra: &[&str]) -> Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let addrs: Vec<String> = (0..size)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let initial: Vec<String> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect();
        let initial = initial.join(",");
        let mut nodes = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let id = i as u64 + 1;
            let data = dir.path().join(format!("node{id}"));
            let mut flags = vec!["--initial-cluster".to_string(), initial.clone()];
            flags.extend(extra.iter().map(|f| f.to_string()));
            nodes.push(NodeProcess::start(id, addr, &data, &flags)?);
        }
        Ok(Cluster { dir, nodes })
    }

    pub fn node(&mut self, id: u64) -> &mut NodeProcess {
        &mut self.nodes[id as usize - 1]
    }

    pub fn addr(&self, id: u64) -> String {
        self.nodes[id as usize - 1].addr.clone()
    }

    /// The URL of node `id`'s MCP endpoint.
    pub fn mcp_url(&self, id: u64) -> String {
        format!("http://{}/mcp", self.nodes[id as usize - 1].http)
    }
}

/// Waits until the node at `endpoint` reports a leader; returns its id.
pub fn wait_for_leader(endpoint: &str, limit: Duration) -> Result<u64> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(status) = cli_json(endpoint, &["cluster", "status"]) {
            if let Some(leader) = status["leader_id"].as_u64() {
                return Ok(leader);
            }
        }
        if Instant::now() > deadline {
            bail!("no leader seen at {endpoint} within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Retries `check` until it returns Ok or `limit` passes.
pub fn eventually<T>(limit: Duration, mut check: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(error) if Instant::now() > deadline => return Err(error),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The names `server ls -o json` reports at `endpoint`.
pub fn server_names(endpoint: &str, stale: bool) -> Result<Vec<String>> {
    let mut args = vec!["server", "ls"];
    if stale {
        args.push("--stale");
    }
    let list = cli_json(endpoint, &args)?;
    Ok(list
        .as_array()
        .context("ls prints an array")?
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect())
}

/// The real MCP servers the tests run (installed by tests/install-mcp-servers.sh).
pub struct McpServers {
    /// `@modelcontextprotocol/server-everything` from npm (stdio by default).
    pub everything: String,
    /// `mcp-server-time` from PyPI.
    pub time: String,
    /// The Python of the venv that holds the official Python SDK (PyPI `mcp`).
    pub python: String,
    /// The npm tree that holds the official TypeScript SDK.
    pub node_modules: String,
}

/// Finds the reference MCP servers, installing them first if they are missing.
pub fn mcp_servers() -> Result<McpServers> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var("MCP_SERVERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target/mcp-servers"));
    let servers = McpServers {
        everything: dir
            .join("npm/node_modules/.bin/mcp-server-everything")
            .display()
            .to_string(),
        time: dir.join("py/bin/mcp-server-time").display().to_string(),
        python: dir.join("py/bin/python").display().to_string(),
        node_modules: dir.join("npm/node_modules").display().to_string(),
    };
    if !Path::new(&servers.everything).exists() || !Path::new(&servers.time).exists() {
        let status = Command::new(root.join("tests/install-mcp-servers.sh"))
            .status()
            .context("run tests/install-mcp-servers.sh")?;
        if !status.success() {
            bail!("tests/install-mcp-servers.sh failed: {status}");
        }
    }
    Ok(servers)
}

/// A process killed when dropped.
pub struct Upstream(pub Child);

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The npm reference server over streamable HTTP, pinned to loopback, and its URL.
pub fn http_everything(servers: &McpServers) -> Result<(Upstream, String)> {
    let port = free_port();
    let everything_js = format!(
        "{}/@modelcontextprotocol/server-everything/dist/index.js",
        servers.node_modules
    );
    let process = Command::new("node")
        .args([
            "-r",
            &test_server("loopback.cjs"),
            &everything_js,
            "streamableHttp",
        ])
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start server-everything over HTTP")?;
    Ok((Upstream(process), format!("http://127.0.0.1:{port}/mcp")))
}

/// Processes whose environment contains `marker` (every MCP server a test starts gets
/// it through its spec's env, and its children inherit it), as (pid, command line).
pub fn processes_with_marker(marker: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == marker.as_bytes())
        {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            // A zombie has no command line and is already dead.
            if !cmdline.trim().is_empty() {
                found.push((pid, cmdline.trim().to_string()));
            }
        }
    }
    found
}

/// A marker unique to this test process and `name`, as an env entry KEY=VALUE.
pub fn process_marker(name: &str) -> String {
    format!("MCPFLEET_TEST_MARKER={}-{name}", std::process::id())
}

/// `server status NAME -o json` replicas.
pub fn replicas(endpoint: &str, name: &str) -> Result<Vec<serde_json::Value>> {
    let status = cli_json(endpoint, &["server", "status", name])?;
    Ok(status["replicas"]
        .as_array()
        .context("status prints replicas")?
        .clone())
}

/// (pid, parent pid, process group) of a process, from /proc/PID/stat.
pub fn stat(pid: u32) -> Option<(u32, u32, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: the fields after it follow the last ')'.
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((
        pid,
        fields.get(1)?.parse().ok()?,
        fields.get(2)?.parse().ok()?,
    ))
}

/// The process groups (one per MCP server) that the node with process id `node_pid`
/// started, among the processes that carry `marker`.
pub fn groups_started_by(node_pid: u32, marker: &str) -> BTreeSet<u32> {
    processes_with_marker(marker)
        .iter()
        .filter_map(|(pid, _)| stat(*pid))
        .filter(|(_, parent, _)| *parent == node_pid)
        .map(|(_, _, group)| group)
        .collect()
}

pub fn alive_in_groups(groups: &BTreeSet<u32>, marker: &str) -> Vec<(u32, String)> {
    processes_with_marker(marker)
        .into_iter()
        .filter(|(pid, _)| stat(*pid).is_some_and(|(_, _, group)| groups.contains(&group)))
        .collect()
}

/// The path of one of the test's own MCP servers in tests/servers/.
pub fn test_server(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/servers")
        .join(name)
        .display()
        .to_string()
}

/// Runs `mcpfleet server add NAME ARGS...` and fails with its stderr if it fails.
pub fn add_server(endpoint: &str, name: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["server", "add", name];
    all.extend_from_slice(args);
    let output = cli(endpoint, &all);
    ensure!(
        output.status.success(),
        "server add {name}: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// The slots of `name` that are healthy, as (slot, node id).
pub fn healthy_slots(endpoint: &str, name: &str) -> Result<Vec<(u64, u64)>> {
    Ok(replicas(endpoint, name)?
        .iter()
        .filter(|r| r["state"] == "healthy")
        .filter_map(|r| Some((r["slot"].as_u64()?, r["node_id"].as_u64()?)))
        .collect())
}
