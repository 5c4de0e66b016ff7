//! The soak on real processes: three `mcpfleet serve` nodes on loopback hold a
//! registry of `servers` servers, `running` of which run a replica (the stdio
//! `tests/servers/recorder.py`); the rest ask for a node tag that no node has, so
//! they are registered, planned every round and never placed. For `duration`:
//! - writers replace idle servers' specs, and delete and re-create them;
//! - a churner creates and deletes running servers, so that processes are launched
//!   and stopped all along;
//! - readers get and list servers (stale reads, through any node);
//! - callers call the running servers' tool through random nodes;
//! - nodes 2 and 3 are SIGKILLed and restarted at random times from the seed. Node 1 is
//!   spared, so that a leak over one long life shows in it.
//!
//! Every `sample_every`, each node's RSS, open fds (and of them pipes: a replica holds
//! four pipes and a pidfd), threads, data dir size and replica count are read from `/proc` and the
//! filesystem, and the latencies of the window's operations are summed up, into
//! `samples.csv`, `latency.csv` and `kills.csv` in the run's dir
//! (`simulations/soak_chart.py` draws them).
//!
//! At the end the run fails when something grew past its bound (`Bounds`), comparing
//! the medians of the last fifth of the run with those of its second fifth (the first
//! is warm-up: servers launching, caches filling), or when the running servers are not
//! all healthy again once the kills stop.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mcpfleet::proto::v1 as pb;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::nemesis::{self, client_of, Node};

/// The tag the idle servers ask for, which no node has.
const IDLE_TAG: &str = "soak-idle";
/// Running servers the churner creates and deletes in turn.
const CHURN_SERVERS: u32 = 5;
/// How long the running servers have to turn healthy, at the start and after the kills.
const HEALTHY_LIMIT: Duration = Duration::from_secs(180);
/// How long a client waits for any answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(6);
/// A tool call's deadline.
const CALL_TIMEOUT_MS: u64 = 2_000;
/// Servers per write while registering.
const REGISTER_BATCH: usize = 100;
/// Servers per page of the fleet status.
const STATUS_PAGE: u32 = 256;
/// The recorder ticks its log this seldom: the soak needs no ticks, and 200 of them
/// each writing every 20 ms would load the disk.
const RECORDER_TICK_MS: u64 = 600_000;

#[derive(Clone, Debug)]
pub struct SoakOptions {
    pub duration: Duration,
    pub seed: u64,
    /// Registered servers in all.
    pub servers: u32,
    /// Of them, servers with one running replica.
    pub running: u32,
    /// Seconds between two samples.
    pub sample_every: Duration,
    /// Between two kills, at random: from this...
    pub kill_gap_min: Duration,
    /// ...to this.
    pub kill_gap_max: Duration,
    pub binary: PathBuf,
    /// Data dirs, node logs, the recorders' logs and the CSV files.
    pub dir: PathBuf,
}

/// How much may grow from the second fifth of the run to its last fifth (medians of the
/// samples in each), past which the soak fails. Node 1's process is measured for RSS,
/// fds and threads (the others are restarted); every node's data dir; the p99 of every
/// kind of operation over all nodes.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// RSS: at most this factor of the earlier median...
    pub rss_factor: f64,
    /// ...plus this many MiB.
    pub rss_slack_mib: f64,
    /// Open fds beyond `FDS_PER_REPLICA` for each replica placed on the node: at most
    /// this many more.
    pub fds_slack: f64,
    pub threads_slack: f64,
    /// A data dir: at most this factor...
    pub data_factor: f64,
    /// ...plus this many MiB.
    pub data_slack_mib: f64,
    /// A p99: at most this factor...
    pub p99_factor: f64,
    /// ...plus this many ms.
    pub p99_slack_ms: f64,
}

pub const BOUNDS: Bounds = Bounds {
    rss_factor: 1.5,
    rss_slack_mib: 32.0,
    fds_slack: 32.0,
    threads_slack: 16.0,
    data_factor: 2.0,
    data_slack_mib: 64.0,
    p99_factor: 3.0,
    p99_slack_ms: 50.0,
};

/// The fds a node holds for one replica: the server's stdin, stdout and stderr, the
/// pipe that renews its supervisor's deadline, and the child's pidfd.
pub const FDS_PER_REPLICA: f64 = 5.0;

/// One node's reading at one time.
#[derive(Clone, Debug, Default)]
struct Reading {
    at_s: f64,
    node: u64,
    up: bool,
    rss_mib: f64,
    fds: f64,
    pipes: f64,
    threads: f64,
    data_mib: f64,
    replicas: f64,
}

/// The latencies of one kind of operation in one window.
#[derive(Default)]
struct Window {
    latencies: Vec<Duration>,
    errors: u64,
}

type Latencies = Rc<RefCell<BTreeMap<&'static str, Window>>>;

fn note(latencies: &Latencies, kind: &'static str, took: Duration, ok: bool) {
    let mut windows = latencies.borrow_mut();
    let window = windows.entry(kind).or_default();
    window.latencies.push(took);
    if !ok {
        window.errors += 1;
    }
}

/// What the soak saw.
#[derive(Debug, Default)]
pub struct SoakReport {
    pub operations: BTreeMap<&'static str, (u64, u64)>,
    pub kills: u32,
    pub samples: usize,
    /// (what, earlier median, last median, bound)
    pub growth: Vec<(String, f64, f64, f64)>,
    pub failures: Vec<String>,
}

impl SoakReport {
    pub fn summary(&self, options: &SoakOptions) -> String {
        let mut line = format!(
            "soak: 3 nodes, {} s, seed {}, {} servers ({} running): {} kills, {} samples",
            options.duration.as_secs(),
            options.seed,
            options.servers,
            options.running,
            self.kills,
            self.samples
        );
        for (kind, (count, errors)) in &self.operations {
            let _ = write!(line, "; {count} {kind}s ({errors} failed)");
        }
        for (what, earlier, last, bound) in &self.growth {
            let _ = write!(
                line,
                "\n  {what}: {earlier:.1} then {last:.1} (bound {bound:.1})"
            );
        }
        line
    }
}

fn idle_name(n: u32) -> String {
    format!("soak-idle-{n}")
}

fn running_name(n: u32) -> String {
    format!("soak-run-{n}")
}

fn spec(name: String, records: &Path, idle: bool, revision: u64) -> pb::ServerSpec {
    let extra = [
        ("TICK_MS", RECORDER_TICK_MS.to_string()),
        ("SOAK_REV", revision.to_string()),
    ];
    let mut transport = nemesis::recorder(records, &extra);
    if let pb::server_spec::Transport::Stdio(stdio) = &mut transport {
        stdio.command = python();
    }
    pb::ServerSpec {
        name,
        transport: Some(transport),
        replicas: 1,
        node_tags: if idle {
            vec![IDLE_TAG.to_string()]
        } else {
            Vec::new()
        },
        ..Default::default()
    }
}

/// The Python interpreter itself, not a wrapper script in front of it (pyenv's shim
/// is a shell script that runs several more): the soak measures the fleet, not the
/// launch of a wrapper 200 times over.
fn python() -> String {
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            std::process::Command::new("python3")
                .args(["-c", "import sys; print(sys.executable)"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .filter(|path| !path.is_empty())
                .unwrap_or_else(|| "python3".to_string())
        })
        .clone()
}

fn put(spec: pb::ServerSpec) -> pb::PutServerRequest {
    pb::PutServerRequest {
        spec: Some(spec),
        expected_revision: None,
    }
}

/// Registers every server, in batches, retrying each until `HEALTHY_LIMIT`.
async fn register(options: &SoakOptions, nodes: &[Node], records: &Path) -> Result<(), String> {
    let mut all: Vec<pb::PutServerRequest> = (0..options.running)
        .map(|n| put(spec(running_name(n), records, false, 0)))
        .collect();
    all.extend(
        (0..options.servers - options.running).map(|n| put(spec(idle_name(n), records, true, 0))),
    );
    let deadline = Instant::now() + HEALTHY_LIMIT;
    for batch in all.chunks(REGISTER_BATCH) {
        let request = pb::PutServersRequest {
            puts: batch.to_vec(),
        };
        loop {
            let answer = tokio::time::timeout(
                CLIENT_TIMEOUT,
                client_of(&nodes[0].addr).put_servers(request.clone()),
            )
            .await;
            let error = match answer {
                Ok(Ok(_)) => break,
                Ok(Err(status)) => status.message().to_string(),
                Err(_) => "no answer".to_string(),
            };
            if Instant::now() > deadline {
                return Err(format!("could not register the servers: {error}"));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(())
}

/// The fleet as node 1 sees it (stale): replicas per node, and how many of the soak's
/// running servers have a healthy replica.
async fn fleet(addr: &str) -> Result<(BTreeMap<u64, u32>, u32), String> {
    let mut client = client_of(addr);
    let mut page_token = String::new();
    let mut per_node = BTreeMap::new();
    let mut healthy = 0;
    loop {
        let request = pb::FleetStatusRequest {
            stale: true,
            page_size: STATUS_PAGE,
            page_token: page_token.clone(),
        };
        let page = tokio::time::timeout(CLIENT_TIMEOUT, client.fleet_status(request))
            .await
            .map_err(|_| "no answer".to_string())?
            .map_err(|status| status.message().to_string())?
            .into_inner();
        for node in &page.nodes {
            per_node.insert(node.id, node.replicas);
        }
        healthy += page
            .servers
            .iter()
            .filter(|s| s.name.starts_with("soak-run-") && s.healthy >= s.desired)
            .count() as u32;
        if page.next_page_token.is_empty() {
            return Ok((per_node, healthy));
        }
        page_token = page.next_page_token;
    }
}

/// Waits until every running server of the soak is healthy.
async fn all_healthy(options: &SoakOptions, nodes: &[Node]) -> Result<Duration, String> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < HEALTHY_LIMIT {
        match fleet(&nodes[0].addr).await {
            Ok((_, healthy)) if healthy >= options.running => return Ok(started.elapsed()),
            Ok((_, healthy)) => last = format!("{healthy} of {} healthy", options.running),
            Err(error) => last = error,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!(
        "the running servers were not all healthy within {HEALTHY_LIMIT:?}: {last}"
    ))
}

/// One node's process as `/proc` shows it: (RSS in MiB, open fds, of which pipes,
/// threads).
fn read_proc(pid: u32) -> Option<(f64, f64, f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
    };
    let rss_kib = field("VmRSS:")?;
    let threads = field("Threads:")?;
    let (mut fds, mut pipes) = (0.0, 0.0);
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        match std::fs::read_link(entry.path()) {
            Ok(target) if target.to_string_lossy().starts_with("pipe:") => pipes += 1.0,
            _ => {}
        }
        fds += 1.0;
    }
    Some((rss_kib / 1024.0, fds, pipes, threads))
}

/// The bytes a directory tree takes on disk (its blocks, as `du` counts them).
fn disk_usage(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => disk_usage(&entry.path()),
            Ok(meta) => meta.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at].as_secs_f64() * 1000.0
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

fn csv(path: &Path, header: &str) -> Result<std::fs::File, String> {
    let mut file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    writeln!(file, "{header}").map_err(|e| e.to_string())?;
    Ok(file)
}

/// Runs the soak; the report says what it saw and what grew past its bound.
pub async fn run(options: &SoakOptions) -> Result<SoakReport, String> {
    std::fs::create_dir_all(&options.dir).map_err(|e| e.to_string())?;
    let records = options.dir.join("records");
    std::fs::create_dir_all(&records).map_err(|e| e.to_string())?;
    let cluster = nemesis::Options {
        nodes: 3,
        duration: options.duration,
        seed: options.seed,
        clients: 0,
        callers: 0,
        keys: 0,
        binary: options.binary.clone(),
        node_env: Vec::new(),
        namespaces: false,
        dir: options.dir.clone(),
    };
    let mut nodes = nemesis::start_nodes(&cluster)?;
    register(options, &nodes, &records).await?;
    let ready = all_healthy(options, &nodes).await?;
    eprintln!(
        "soak: {} servers registered, {} running, healthy after {} s",
        options.servers,
        options.running,
        ready.as_secs()
    );

    let started = Instant::now();
    let until = options.duration;
    let addrs: Rc<[String]> = nodes.iter().map(|n| n.addr.clone()).collect();
    let latencies: Latencies = Rc::default();
    let totals: Rc<RefCell<BTreeMap<&'static str, (u64, u64)>>> = Rc::default();
    let work = tokio::task::LocalSet::new();
    let idle = options.servers - options.running;
    // Writers: replace an idle server's spec, or now and then delete it and put it back.
    for writer in 0..2u64 {
        let (addrs, latencies, records) = (addrs.clone(), latencies.clone(), records.clone());
        let mut rng = SmallRng::seed_from_u64(options.seed ^ ((writer + 1) * 0x5eed));
        work.spawn_local(async move {
            let mut revision = 0;
            while started.elapsed() < until {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(20..80))).await;
                let mut client = client_of(&addrs[rng.gen_range(0..addrs.len())]);
                let name = idle_name(rng.gen_range(0..idle));
                revision += 1;
                let begun = Instant::now();
                let ok = if rng.gen_ratio(1, 10) {
                    let request = pb::DeleteServerRequest {
                        name: name.clone(),
                        expected_revision: None,
                    };
                    let deleted =
                        tokio::time::timeout(CLIENT_TIMEOUT, client.delete_server(request)).await;
                    matches!(deleted, Ok(Ok(_)))
                } else {
                    true
                };
                let spec = spec(name, &records, true, revision);
                let answer = tokio::time::timeout(CLIENT_TIMEOUT, client.put_server(put(spec)));
                let ok = ok && matches!(answer.await, Ok(Ok(_)));
                note(&latencies, "write", begun.elapsed(), ok);
            }
        });
    }
    // The churner: running servers created and deleted in turn.
    {
        let (addrs, latencies, records) = (addrs.clone(), latencies.clone(), records.clone());
        let mut rng = SmallRng::seed_from_u64(options.seed ^ 0xc4_0124);
        work.spawn_local(async move {
            let mut exists = [false; CHURN_SERVERS as usize];
            while started.elapsed() < until {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(1_000..3_000))).await;
                let n = rng.gen_range(0..CHURN_SERVERS);
                let name = format!("soak-churn-{n}");
                let mut client = client_of(&addrs[rng.gen_range(0..addrs.len())]);
                let begun = Instant::now();
                let ok = if exists[n as usize] {
                    let request = pb::DeleteServerRequest {
                        name,
                        expected_revision: None,
                    };
                    let answer = client.delete_server(request);
                    matches!(
                        tokio::time::timeout(CLIENT_TIMEOUT, answer).await,
                        Ok(Ok(_))
                    )
                } else {
                    let answer = client.put_server(put(spec(name, &records, false, 0)));
                    matches!(
                        tokio::time::timeout(CLIENT_TIMEOUT, answer).await,
                        Ok(Ok(_))
                    )
                };
                if ok {
                    exists[n as usize] = !exists[n as usize];
                }
                note(&latencies, "write", begun.elapsed(), ok);
            }
        });
    }
    // Readers: a server, or now and then a page of the list.
    for reader in 0..2u64 {
        let (addrs, latencies) = (addrs.clone(), latencies.clone());
        let servers = options.servers;
        let running = options.running;
        let mut rng = SmallRng::seed_from_u64(options.seed ^ ((reader + 1) * 0x4ead));
        work.spawn_local(async move {
            while started.elapsed() < until {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(5..30))).await;
                let mut client = client_of(&addrs[rng.gen_range(0..addrs.len())]);
                let begun = Instant::now();
                let ok = if rng.gen_ratio(1, 20) {
                    let request = pb::ListServersRequest {
                        stale: true,
                        ..Default::default()
                    };
                    let answer = client.list_servers(request);
                    matches!(
                        tokio::time::timeout(CLIENT_TIMEOUT, answer).await,
                        Ok(Ok(_))
                    )
                } else {
                    let n = rng.gen_range(0..servers);
                    let name = if n < running {
                        running_name(n)
                    } else {
                        idle_name(n - running)
                    };
                    let request = pb::GetServerRequest { name, stale: true };
                    // A deleted idle server is a NotFound answer: an answer all the same.
                    let answer = client.get_server(request);
                    match tokio::time::timeout(CLIENT_TIMEOUT, answer).await {
                        Ok(Ok(_)) => true,
                        Ok(Err(status)) => status.code() == tonic::Code::NotFound,
                        Err(_) => false,
                    }
                };
                note(&latencies, "read", begun.elapsed(), ok);
            }
        });
    }
    // Callers: the record tool of a random running server.
    for caller in 0..2u64 {
        let (addrs, latencies) = (addrs.clone(), latencies.clone());
        let running = options.running;
        let mut rng = SmallRng::seed_from_u64(options.seed ^ ((caller + 1) * 0xca11));
        work.spawn_local(async move {
            let mut number = 0u64;
            while started.elapsed() < until {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(5..30))).await;
                let mut client = client_of(&addrs[rng.gen_range(0..addrs.len())]);
                number += 1;
                let id = format!("c{caller}-{number}");
                let request = pb::CallToolRequest {
                    server: running_name(rng.gen_range(0..running)),
                    tool: crate::mcp::RECORD_TOOL.into(),
                    arguments_json: format!(r#"{{"id":"{id}"}}"#),
                    timeout_ms: CALL_TIMEOUT_MS,
                };
                let begun = Instant::now();
                let answer = tokio::time::timeout(CLIENT_TIMEOUT, client.call_tool(request)).await;
                let ok = matches!(answer, Ok(Ok(r)) if r.get_ref().result_json.contains(&format!("ran {id}")));
                note(&latencies, "call", begun.elapsed(), ok);
            }
        });
    }

    let mut samples = csv(
        &options.dir.join("samples.csv"),
        "seconds,node,up,rss_mib,fds,pipes,threads,data_mib,replicas",
    )?;
    let mut latency_csv = csv(
        &options.dir.join("latency.csv"),
        "seconds,kind,count,errors,p50_ms,p99_ms",
    )?;
    let mut kills_csv = csv(&options.dir.join("kills.csv"), "seconds,node,down_seconds")?;
    let mut readings: Vec<Reading> = Vec::new();
    let mut p99s: Vec<(f64, &'static str, f64)> = Vec::new();
    let mut report = SoakReport::default();
    let mut schedule = SmallRng::seed_from_u64(options.seed ^ 0x50ac);
    let gap = |rng: &mut SmallRng| {
        let (min, max) = (
            options.kill_gap_min.as_millis(),
            options.kill_gap_max.as_millis(),
        );
        Duration::from_millis(rng.gen_range(min..=max.max(min)) as u64)
    };
    let mut next_kill = gap(&mut schedule);
    // (node index, when it comes back)
    let mut down: Option<(usize, Duration)> = None;
    let mut next_sample = options.sample_every;
    let sampling = async {
        while started.elapsed() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = started.elapsed();
            if let Some((at, back)) = down {
                if now >= back {
                    nodes[at].start(&cluster)?;
                    down = None;
                }
            } else if now >= next_kill && now + Duration::from_secs(10) < until {
                let at = schedule.gen_range(1..nodes.len());
                let down_for = Duration::from_millis(schedule.gen_range(2_000..6_000));
                nodes[at].kill();
                report.kills += 1;
                let _ = writeln!(
                    kills_csv,
                    "{:.1},{},{:.1}",
                    now.as_secs_f64(),
                    nodes[at].id,
                    down_for.as_secs_f64()
                );
                down = Some((at, now + down_for));
                next_kill = now + down_for + gap(&mut schedule);
            }
            // A node that ends without being killed is a failure of the soak's.
            for node in nodes.iter_mut() {
                let exited = node
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                if let Some(status) = exited {
                    report.failures.push(format!(
                        "node {} exited on its own at {:.0} s: {status}",
                        node.id,
                        now.as_secs_f64()
                    ));
                    node.child = None;
                    node.start(&cluster)?;
                }
            }
            if now < next_sample {
                continue;
            }
            next_sample += options.sample_every;
            let at_s = now.as_secs_f64();
            let per_node = fleet(&nodes[0].addr).await.map(|f| f.0).unwrap_or_default();
            for node in &nodes {
                let mut reading = Reading {
                    at_s,
                    node: node.id,
                    data_mib: disk_usage(&options.dir.join(format!("node{}", node.id))) as f64
                        / (1024.0 * 1024.0),
                    replicas: per_node.get(&node.id).copied().unwrap_or(0) as f64,
                    ..Default::default()
                };
                if let Some((rss, fds, pipes, threads)) =
                    node.child.as_ref().and_then(|c| read_proc(c.id()))
                {
                    reading.up = true;
                    reading.rss_mib = rss;
                    reading.fds = fds;
                    reading.pipes = pipes;
                    reading.threads = threads;
                }
                let r = &reading;
                let _ = writeln!(
                    samples,
                    "{:.1},{},{},{:.1},{},{},{},{:.2},{}",
                    r.at_s,
                    r.node,
                    u8::from(r.up),
                    r.rss_mib,
                    r.fds,
                    r.pipes,
                    r.threads,
                    r.data_mib,
                    r.replicas
                );
                readings.push(reading);
            }
            let windows = std::mem::take(&mut *latencies.borrow_mut());
            for (kind, mut window) in windows {
                window.latencies.sort();
                let (p50, p99) = (
                    percentile(&window.latencies, 0.5),
                    percentile(&window.latencies, 0.99),
                );
                let count = window.latencies.len() as u64;
                let mut total = totals.borrow_mut();
                let entry = total.entry(kind).or_default();
                entry.0 += count;
                entry.1 += window.errors;
                let _ = writeln!(
                    latency_csv,
                    "{at_s:.1},{kind},{count},{},{p50:.2},{p99:.2}",
                    window.errors
                );
                p99s.push((at_s, kind, p99));
            }
            report.samples += 1;
        }
        Ok::<(), String>(())
    };
    let sampled = work.run_until(sampling).await;
    work.await;
    sampled?;
    if let Some((at, _)) = down {
        nodes[at].start(&cluster)?;
    }
    report.operations = totals.borrow().clone();
    check_growth(&readings, &p99s, options.duration, &mut report);
    if let Err(error) = all_healthy(options, &nodes).await {
        report.failures.push(error);
    }
    Ok(report)
}

/// Whether a sample's time (in s) falls in a part of the run.
type Phase<'a> = &'a dyn Fn(f64) -> bool;
/// A measure's samples in a part of the run.
type Series<'a> = dyn Fn(Phase) -> Vec<f64> + 'a;

/// Holds the last fifth of the run against its second fifth, by `BOUNDS`.
fn check_growth(
    readings: &[Reading],
    p99s: &[(f64, &'static str, f64)],
    duration: Duration,
    report: &mut SoakReport,
) {
    let total = duration.as_secs_f64();
    let earlier = |at: f64| at >= total * 0.2 && at < total * 0.4;
    let last = |at: f64| at >= total * 0.8;
    let b = BOUNDS;
    let mut check = |what: String, values: &Series, bound: &dyn Fn(f64) -> f64| {
        let (Some(before), Some(after)) = (median(values(&earlier)), median(values(&last))) else {
            report
                .failures
                .push(format!("{what}: too few samples to compare"));
            return;
        };
        let limit = bound(before);
        if after > limit {
            report.failures.push(format!(
                "{what} grew from {before:.1} to {after:.1}, past its bound of {limit:.1}"
            ));
        }
        report.growth.push((what, before, after, limit));
    };
    // Node 1 is never killed: one life for the whole run.
    let spared = |f: fn(&Reading) -> f64| {
        move |when: Phase| -> Vec<f64> {
            readings
                .iter()
                .filter(|r| r.node == 1 && r.up && when(r.at_s))
                .map(f)
                .collect()
        }
    };
    check("node 1 RSS (MiB)".into(), &spared(|r| r.rss_mib), &|v| {
        v * b.rss_factor + b.rss_slack_mib
    });
    check(
        format!("node 1 fds beyond {FDS_PER_REPLICA} per replica"),
        &spared(|r| r.fds - FDS_PER_REPLICA * r.replicas),
        &|v| v + b.fds_slack,
    );
    check("node 1 threads".into(), &spared(|r| r.threads), &|v| {
        v + b.threads_slack
    });
    for node in 1..=3 {
        check(
            format!("node {node} data dir (MiB)"),
            &|when: Phase| {
                readings
                    .iter()
                    .filter(|r| r.node == node && when(r.at_s))
                    .map(|r| r.data_mib)
                    .collect()
            },
            &|v| v * b.data_factor + b.data_slack_mib,
        );
    }
    for kind in ["write", "read", "call"] {
        check(
            format!("{kind} p99 (ms)"),
            &|when: Phase| {
                p99s.iter()
                    .filter(|(at, k, _)| *k == kind && when(*at))
                    .map(|(_, _, p99)| *p99)
                    .collect()
            },
            &|v| v * b.p99_factor + b.p99_slack_ms,
        );
    }
}
