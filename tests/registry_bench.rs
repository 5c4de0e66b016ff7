//! Registry write benchmark side by side with etcd (not part of the test run). Each
//! round starts a fresh three-node mcpfleet cluster and a fresh three-member etcd
//! cluster on loopback, each member with its own data dir and fsync on, and drives
//! closed-loop writes at each one's leader, 1 client and then 64, one system after the
//! other: mcpfleet through `mcpfleet bench put` (each client overwrites its own 16
//! servers with a 200-byte argument), etcd through its native gRPC `KV.Put` (each client
//! overwrites its own 16 keys with a 200-byte value), every client on its own
//! connection. Prints each run and the medians over the rounds.
//!
//!     cargo test --release --test registry_bench -- --ignored --nocapture
//!
//! `REGISTRY_ROUNDS` sets the rounds (default 3), `REGISTRY_SECONDS` each run's length
//! (default 5). It needs `etcd` and `etcdctl` on the PATH (Debian: `etcd-server`,
//! `etcd-client`).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::*;

/// etcd's `PutRequest`, the fields this benchmark sets.
#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// etcd's `PutResponse`; what it holds is not read.
#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {}

struct Etcd {
    members: Vec<Child>,
    clients: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for member in &mut self.members {
            let _ = member.kill();
            let _ = member.wait();
        }
    }
}

impl Etcd {
    fn start() -> Result<Etcd> {
        let dir = tempfile::tempdir()?;
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
            .collect();
        let initial = initial.join(",");
        let mut members = Vec::new();
        let mut clients = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let member = Command::new("etcd")
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("e{i}")))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting etcd (Debian: apt-get install etcd-server etcd-client)")?;
            members.push(member);
            clients.push(client_url);
        }
        Ok(Etcd {
            members,
            clients,
            _dir: dir,
        })
    }

    /// The client URL of the leader, once there is one.
    fn leader(&self) -> Result<String> {
        eventually(Duration::from_secs(30), || {
            let output = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &self.clients.join(","), "endpoint", "status"])
                .args(["-w", "json"])
                .output()?;
            let status: serde_json::Value = serde_json::from_slice(&output.stdout)?;
            let members = status.as_array().context("status is a list")?;
            for member in members {
                let id = &member["Status"]["header"]["member_id"];
                if !id.is_null() && *id == member["Status"]["leader"] {
                    return Ok(member["Endpoint"].as_str().context("endpoint")?.to_string());
                }
            }
            bail!("no etcd leader yet: {status}")
        })
    }
}

/// What one closed-loop run measured.
#[derive(Debug, Clone, Copy)]
struct Run {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn etcd_client(url: String, client: u32, until: Instant) -> Result<Vec<u64>> {
    let channel = tonic::transport::Channel::from_shared(url)?
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    let path = http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put");
    let value = vec![b'v'; 200];
    let mut latencies = Vec::new();
    let mut i = 0u32;
    while Instant::now() < until {
        let request = PutRequest {
            key: format!("bench/{client}/{}", i % 16).into_bytes(),
            value: value.clone(),
        };
        i += 1;
        let started = Instant::now();
        grpc.ready().await?;
        let _: tonic::Response<PutResponse> = grpc
            .unary(
                tonic::Request::new(request),
                path.clone(),
                tonic_prost::ProstCodec::default(),
            )
            .await?;
        latencies.push(started.elapsed().as_micros() as u64);
    }
    Ok(latencies)
}

fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

fn bench_etcd(url: &str, clients: u32, seconds: u64) -> Result<Run> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let started = Instant::now();
        let until = started + Duration::from_secs(seconds);
        let tasks: Vec<_> = (0..clients)
            .map(|client| tokio::spawn(etcd_client(url.to_string(), client, until)))
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await??);
        }
        let elapsed = started.elapsed().as_secs_f64();
        all.sort_unstable();
        Ok(Run {
            per_second: all.len() as f64 / elapsed,
            p50_ms: percentile_ms(&all, 0.50),
            p99_ms: percentile_ms(&all, 0.99),
        })
    })
}

fn bench_mcpfleet(endpoint: &str, clients: u32, seconds: u64) -> Result<Run> {
    let clients = clients.to_string();
    let duration = seconds.to_string();
    let output = cli(
        endpoint,
        &[
            "bench",
            "put",
            "--clients",
            &clients,
            "--duration",
            &duration,
            "--json",
        ],
    );
    if !output.status.success() {
        bail!(
            "mcpfleet bench put failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    if summary["errors"].as_u64() != Some(0) {
        bail!("mcpfleet bench had errors: {summary}");
    }
    let field = |name: &str| summary[name].as_f64().context("bench summary field");
    Ok(Run {
        per_second: field("per_second")?,
        p50_ms: field("p50_ms")?,
        p99_ms: field("p99_ms")?,
    })
}

fn median(runs: &[Run], of: impl Fn(&Run) -> f64) -> f64 {
    let mut values: Vec<f64> = runs.iter().map(of).collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn registry_writes_side_by_side_with_etcd() -> Result<()> {
    let env_number = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let rounds = env_number("REGISTRY_ROUNDS", 3);
    let seconds = env_number("REGISTRY_SECONDS", 5);
    let client_counts = [1u32, 64];
    let mut ours: Vec<Vec<Run>> = vec![Vec::new(); client_counts.len()];
    let mut theirs: Vec<Vec<Run>> = vec![Vec::new(); client_counts.len()];
    for round in 1..=rounds {
        let cluster = Cluster::start(3)?;
        let leader = wait_for_leader(&cluster.addr(1), Duration::from_secs(20))?;
        let etcd = Etcd::start()?;
        let etcd_leader = etcd.leader()?;
        for (i, clients) in client_counts.iter().enumerate() {
            let run = bench_mcpfleet(&cluster.addr(leader), *clients, seconds)?;
            println!("round {round} mcpfleet clients={clients} {run:?}");
            ours[i].push(run);
            let run = bench_etcd(&etcd_leader, *clients, seconds)?;
            println!("round {round} etcd     clients={clients} {run:?}");
            theirs[i].push(run);
        }
    }
    println!("| clients | mcpfleet writes/s | p50 | p99 | etcd writes/s | p50 | p99 |");
    println!("|---|---|---|---|---|---|---|");
    for (i, clients) in client_counts.iter().enumerate() {
        println!(
            "| {clients} | {:.0} | {:.2} ms | {:.2} ms | {:.0} | {:.2} ms | {:.2} ms |",
            median(&ours[i], |r| r.per_second),
            median(&ours[i], |r| r.p50_ms),
            median(&ours[i], |r| r.p99_ms),
            median(&theirs[i], |r| r.per_second),
            median(&theirs[i], |r| r.p50_ms),
            median(&theirs[i], |r| r.p99_ms),
        );
    }
    Ok(())
}
