//! `mcpfleet bench put`: closed-loop registry writes (or, with `--operation`, reads)
//! from N clients for a duration.
//! Each client overwrites its own small set of servers, so the registry stays bounded
//! however long the benchmark runs.

use std::time::{Duration, Instant};

use clap::Args;

use super::client::{connect, CliError};
use crate::proto::v1 as pb;

/// Distinct servers each client cycles through.
const KEYS_PER_CLIENT: u64 = 16;

#[derive(Args, Debug)]
pub struct PutArgs {
    /// Any node of the cluster (HOST:PORT).
    #[arg(long, env = "MCPFLEET_ENDPOINT", default_value = super::DEFAULT_ENDPOINT)]
    pub endpoint: String,
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
    /// Print the result as JSON.
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

pub async fn run_put(args: PutArgs) -> Result<(), CliError> {
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
        clients.push(connect(&args.endpoint).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (number, mut client) in clients.into_iter().enumerate() {
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
                    Operation::Put => client.put_server(request).await.map(|_| ()),
                    Operation::Get | Operation::GetStale => {
                        let name = request.spec.map(|s| s.name).unwrap_or_default();
                        let stale = operation == Operation::GetStale;
                        // The first pass writes each server once so that reads find it.
                        if i < KEYS_PER_CLIENT {
                            let put = pb::PutServerRequest {
                                spec: Some(bench_spec(name.clone(), Vec::new())),
                                expected_revision: None,
                            };
                            client.put_server(put).await.map(|_| ())
                        } else {
                            client
                                .get_server(pb::GetServerRequest { name, stale })
                                .await
                                .map(|_| ())
                        }
                    }
                };
                match answer {
                    Ok(()) => result.latencies_us.push(sent.elapsed().as_micros() as u64),
                    Err(status) => {
                        result.errors += 1;
                        result
                            .first_error
                            .get_or_insert_with(|| status.message().to_string());
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
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1] as f64 / 1000.0
    };
    let per_second = latencies.len() as f64 / elapsed;
    let unit = match args.operation {
        Operation::Put => "writes",
        Operation::Get | Operation::GetStale => "reads",
    };
    let summary = serde_json::json!({
        "operation": unit,
        "clients": args.clients,
        "seconds": elapsed,
        "operations": latencies.len(),
        "errors": errors,
        "per_second": per_second,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "max_ms": latencies.last().map_or(0.0, |l| *l as f64 / 1000.0),
    });
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "clients={} {unit}={} errors={} seconds={:.1} {unit}/s={:.0} p50={:.2}ms p99={:.2}ms max={:.2}ms",
            args.clients,
            latencies.len(),
            errors,
            elapsed,
            per_second,
            percentile(0.50),
            percentile(0.99),
            summary["max_ms"].as_f64().unwrap_or(0.0),
        );
    }
    if let Some(error) = first_error {
        eprintln!("first error: {error}");
    }
    Ok(())
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
