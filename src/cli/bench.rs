//! `mcpfleet bench put`: closed-loop registry writes (or, with `--operation`, reads)
//! from N clients for a duration.
//! Each client overwrites its own small set of servers, so the registry stays bounded
//! however long the benchmark runs.

use std::time::{Duration, Instant};

use clap::Args;

use super::client::{connect, CliError};
use super::{ClientArgs, OutputFormat};
use crate::client::{Client, ErrorKind};
use crate::proto::v1 as pb;

/// Distinct servers each client cycles through.
const KEYS_PER_CLIENT: u64 = 16;

#[derive(Args, Debug)]
pub struct PutArgs {
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 1)]
    pub clients: u32,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Bytes of argument data per write (etcd's figures use 200-byte values).
    #[arg(long, default_value_t = 200)]
    pub value_bytes: usize,
    /// Stop after this many writes in total (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub max_writes: u64,
    /// Print the result as JSON (the same as `-o json`).
    #[arg(long)]
    pub json: bool,
    /// Instead of writing, read the servers back: `get` (linearizable) or `get-stale`.
    #[arg(long, value_enum, default_value_t = Operation::Put)]
    pub operation: Operation,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Put,
    Get,
    GetStale,
}

struct ClientResult {
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// Connecting attempts per bench client: hundreds of connections opened one after
/// another can meet a dropped SYN on a loaded machine, which costs a whole connect
/// timeout; the bench measures writes, so it tries again rather than give up.
const CONNECT_ATTEMPTS: u32 = 5;
/// The pause after the first failed connect; it doubles after each one, up to 1 s.
const CONNECT_RETRY_MS: u64 = 100;

/// A client of `args` that has connected, after at most `CONNECT_ATTEMPTS` tries when
/// the node cannot be reached; any other error is returned at once.
async fn connect_with_retries(args: &ClientArgs) -> Result<Client, CliError> {
    let mut pause = Duration::from_millis(CONNECT_RETRY_MS);
    let mut attempt = 1;
    loop {
        let client = connect(args)?;
        match client.ready().await {
            Ok(()) => return Ok(client),
            Err(error) if error.kind() == ErrorKind::Unavailable && attempt < CONNECT_ATTEMPTS => {
                tracing::debug!(attempt, %error, "bench client could not connect; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                attempt += 1;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

pub async fn run_put(args: PutArgs, client: &ClientArgs) -> Result<(), CliError> {
    let json = args.json || client.output == OutputFormat::Json;
    if args.clients == 0 || args.clients > 1024 {
        return Err(CliError::Usage("--clients must be 1..=1024".into()));
    }
    if args.duration == 0 || args.duration > 3_600 {
        return Err(CliError::Usage(
            "--duration must be 1..=3600 seconds".into(),
        ));
    }
    if args.value_bytes > 32 * 1024 {
        return Err(CliError::Usage(
            "--value-bytes must be at most 32768".into(),
        ));
    }
    let duration = Duration::from_secs(args.duration);
    let per_client_limit = if args.max_writes == 0 {
        u64::MAX
    } else {
        args.max_writes.div_ceil(args.clients as u64)
    };
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        clients.push(connect_with_retries(client).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (number, client) in clients.into_iter().enumerate() {
        let value = "v".repeat(args.value_bytes);
        let operation = args.operation;
        tasks.push(tokio::spawn(async move {
            let mut result = ClientResult {
                latencies_us: Vec::new(),
                errors: 0,
                first_error: None,
            };
            let mut i = 0u64;
            while started.elapsed() < duration && i < per_client_limit {
                let request = pb::PutServerRequest {
                    spec: Some(bench_spec(
                        format!("bench-{number}-{}", i % KEYS_PER_CLIENT),
                        vec![value.clone()],
                    )),
                    expected_revision: None,
                };
                let sent = Instant::now();
                let answer = match operation {
                    Operation::Put => client
                        .put_server(request.spec.unwrap_or_default(), None)
                        .await
                        .map(|_| ()),
                    Operation::Get | Operation::GetStale => {
                        let name = request.spec.map(|s| s.name).unwrap_or_default();
                        let stale = operation == Operation::GetStale;
                        // The first pass writes each server once so that reads find it.
                        if i < KEYS_PER_CLIENT {
                            let spec = bench_spec(name.clone(), Vec::new());
                            client.put_server(spec, None).await.map(|_| ())
                        } else {
                            client.get_server(&name, stale).await.map(|_| ())
                        }
                    }
                };
                match answer {
                    Ok(()) => result.latencies_us.push(sent.elapsed().as_micros() as u64),
                    Err(error) => {
                        result.errors += 1;
                        result.first_error.get_or_insert_with(|| error.reason());
                    }
                }
                i += 1;
            }
            result
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        let result = task.await.map_err(|e| CliError::Failed(e.to_string()))?;
        latencies.extend(result.latencies_us);
        errors += result.errors;
        first_error = first_error.or(result.first_error);
    }
    let unit = match args.operation {
        Operation::Put => "writes",
        Operation::Get | Operation::GetStale => "reads",
    };
    let summary = Summary::new(unit, args.clients, started, latencies, errors);
    summary.print(json, serde_json::json!({}));
    if let Some(error) = first_error {
        eprintln!("first error: {error}");
    }
    Ok(())
}

/// What a closed-loop run measured.
struct Summary {
    unit: &'static str,
    clients: u32,
    seconds: f64,
    /// Latencies of the operations that succeeded, sorted.
    latencies_us: Vec<u64>,
    errors: u64,
}

impl Summary {
    fn new(
        unit: &'static str,
        clients: u32,
        started: Instant,
        mut latencies_us: Vec<u64>,
        errors: u64,
    ) -> Summary {
        latencies_us.sort_unstable();
        Summary {
            unit,
            clients,
            seconds: started.elapsed().as_secs_f64(),
            latencies_us,
            errors,
        }
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        let all = &self.latencies_us;
        if all.is_empty() {
            return 0.0;
        }
        let rank = ((p * all.len() as f64).ceil() as usize).clamp(1, all.len());
        all[rank - 1] as f64 / 1000.0
    }

    /// Prints one line (or one JSON object, with `extra`'s fields added).
    fn print(&self, json: bool, extra: serde_json::Value) {
        let unit = self.unit;
        let done = self.latencies_us.len();
        let per_second = done as f64 / self.seconds;
        let max_ms = self.latencies_us.last().map_or(0.0, |l| *l as f64 / 1000.0);
        if json {
            let mut summary = serde_json::json!({
                "operation": unit,
                "clients": self.clients,
                "seconds": self.seconds,
                "operations": done,
                "errors": self.errors,
                "per_second": per_second,
                "p50_ms": self.percentile_ms(0.50),
                "p99_ms": self.percentile_ms(0.99),
                "max_ms": max_ms,
            });
            if let (Some(summary), serde_json::Value::Object(extra)) =
                (summary.as_object_mut(), extra)
            {
                summary.extend(extra);
            }
            println!("{summary}");
        } else {
            println!(
                "clients={} {unit}={done} errors={} seconds={:.1} {unit}/s={per_second:.0} p50={:.2}ms p99={:.2}ms max={max_ms:.2}ms",
                self.clients,
                self.errors,
                self.seconds,
                self.percentile_ms(0.50),
                self.percentile_ms(0.99),
            );
        }
    }
}

/// A tag no node carries: the servers a benchmark writes are never placed, so it
/// measures the registry, not the launching of processes.
const UNPLACED_TAG: &str = "mcpfleet-bench-never-placed";

fn bench_spec(name: String, args: Vec<String>) -> pb::ServerSpec {
    pb::ServerSpec {
        name,
        transport: Some(pb::server_spec::Transport::Stdio(pb::StdioTransport {
            command: "bench".into(),
            args,
            ..Default::default()
        })),
        replicas: 1,
        node_tags: vec![UNPLACED_TAG.into()],
        ..Default::default()
    }
}

#[derive(Args, Debug)]
pub struct CallArgs {
    /// An MCP endpoint (streamable HTTP), such as a node's http://127.0.0.1:7800/mcp
    /// or any other MCP server; repeat to spread the clients over several (client i
    /// uses the i-th, round robin).
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// The tool to call, as the endpoint names it.
    #[arg(long, default_value = "everything__echo")]
    pub tool: String,
    /// The tool's arguments, a JSON object.
    #[arg(long, default_value = r#"{"message":"hi"}"#)]
    pub args: String,
    /// Concurrent clients, each with its own MCP connection.
    #[arg(long, default_value_t = 1)]
    pub clients: u32,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// A call that takes longer than this fails (ms).
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Protocol era: `auto` (2026-07-28 where the endpoint offers it, else
    /// initialize and a session) or `legacy` (always initialize and a session).
    #[arg(long, value_enum, default_value_t = Era::Auto)]
    pub protocol: Era,
    /// Print the result as JSON (the same as `-o json`).
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    Auto,
    Legacy,
}

/// Most distinct error messages a call benchmark reports.
const MAX_ERROR_KINDS: usize = 8;

/// `mcpfleet bench call`: closed-loop tool calls from N MCP clients for a duration.
/// A call fails when it gets an error or a result marked `isError`; a client whose
/// connection breaks connects again (that counts as one failed call).
pub async fn run_call(args: CallArgs, client: &ClientArgs) -> Result<(), CliError> {
    let json = args.json || client.output == OutputFormat::Json;
    use rmcp::service::ClientServiceExt;
    if args.clients == 0 || args.clients > 1024 {
        return Err(CliError::Usage("--clients must be 1..=1024".into()));
    }
    if args.duration == 0 || args.duration > 3_600 {
        return Err(CliError::Usage(
            "--duration must be 1..=3600 seconds".into(),
        ));
    }
    let arguments = match serde_json::from_str::<serde_json::Value>(&args.args) {
        Ok(serde_json::Value::Object(map)) => map,
        Ok(_) => return Err(CliError::Usage("--args must be a JSON object".into())),
        Err(e) => return Err(CliError::Usage(format!("--args: {e}"))),
    };
    let lifecycle = match args.protocol {
        Era::Auto => rmcp::service::ClientLifecycleMode::Auto {
            preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
            legacy_version: None,
        },
        Era::Legacy => rmcp::service::ClientLifecycleMode::Initialize,
    };
    let connect = move |url: String, lifecycle: rmcp::service::ClientLifecycleMode| async move {
        let transport = rmcp::transport::StreamableHttpClientTransport::from_uri(url.clone());
        ().serve_with_lifecycle(transport, lifecycle)
            .await
            .map_err(|e| CliError::Failed(format!("{url}: {e}")))
    };
    // Every client connects before the clock starts.
    let mut clients = Vec::new();
    for i in 0..args.clients as usize {
        let url = args.urls[i % args.urls.len()].clone();
        clients.push((url.clone(), connect(url, lifecycle.clone()).await?));
    }
    let duration = Duration::from_secs(args.duration);
    let timeout = Duration::from_millis(args.timeout_ms);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (url, mut client) in clients {
        let (tool, arguments, lifecycle) =
            (args.tool.clone(), arguments.clone(), lifecycle.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors: Vec<String> = Vec::new();
            while started.elapsed() < duration {
                let mut params = rmcp::model::CallToolRequestParams::new(tool.clone());
                params.arguments = Some(arguments.clone());
                let sent = Instant::now();
                let outcome = tokio::time::timeout(timeout, client.peer().call_tool(params)).await;
                let error = match outcome {
                    Ok(Ok(result)) if result.is_error != Some(true) => {
                        latencies.push(sent.elapsed().as_micros() as u64);
                        continue;
                    }
                    Ok(Ok(result)) => format!("isError: {}", serde_json::json!(result.content)),
                    Ok(Err(rmcp::service::ServiceError::McpError(e))) => e.message.to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {} ms", timeout.as_millis()),
                };
                errors.push(error);
                // The connection may be gone: start a new one (a failed connect is
                // one more failed call, after a short pause).
                if client.is_transport_closed() {
                    match connect(url.clone(), lifecycle.clone()).await {
                        Ok(fresh) => client = fresh,
                        Err(e) => {
                            errors.push(e.to_string());
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
            let _ = client.cancel().await;
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    for task in tasks {
        let (mine, failed) = task.await.map_err(|e| CliError::Failed(e.to_string()))?;
        latencies.extend(mine);
        errors.extend(failed);
    }
    let summary = Summary::new(
        "calls",
        args.clients,
        started,
        latencies,
        errors.len() as u64,
    );
    let mut kinds: std::collections::BTreeMap<String, u64> = Default::default();
    for mut error in errors {
        crate::registry::truncate_utf8(&mut error, 200);
        *kinds.entry(error).or_default() += 1;
    }
    let mut kinds: Vec<(String, u64)> = kinds.into_iter().collect();
    kinds.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    kinds.truncate(MAX_ERROR_KINDS);
    summary.print(json, serde_json::json!({ "error_kinds": kinds }));
    for (error, count) in &kinds {
        if !json {
            eprintln!("{count} x {error}");
        }
    }
    Ok(())
}
