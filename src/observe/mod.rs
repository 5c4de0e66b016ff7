//! What a node tells its operators on its HTTP port, beside `/mcp`:
//! - `/`: the status page (`page`);
//! - `/metrics`: the Prometheus text format, rendered by metrics-exporter-prometheus;
//! - `/healthz`: the process is alive and serves HTTP (always 200);
//! - `/readyz`: 200 once this node knows a leader and has applied everything the leader
//!   had committed when asked (a linearizable read barrier, within 2 s); 503 otherwise,
//!   with the reason.
//!
//! Counters and histograms are recorded where things happen, through the `metrics`
//! facade (a leaf: the parts that record import nothing from here): proposals in
//! `control::proposer`, calls in `gateway`. Gauges of state (Raft,
//! the registry, the process) are set from that state when `/metrics` is scraped.
//! Without an installed recorder (the simulator, unit tests) recording does nothing.
//! Nothing here decides anything: it only reads.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics::gauge;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

mod page;

use crate::control::Reader;
use crate::registry::{BreakerState, NodeStatus, ReplicaState};

/// How long `/readyz` waits for the leader's answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// A counter or histogram not touched for this long is dropped from `/metrics` (and
/// starts from zero if it comes back: a reset, which Prometheus's `rate` handles), so
/// that the series of servers long deleted do not pile up.
pub const IDLE_SERIES: Duration = Duration::from_secs(3_600);
/// The buckets of every duration histogram, in seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs this process's metrics recorder, once, and returns its handle.
pub fn recorder() -> Result<PrometheusHandle, ObserveError> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
        .map_err(|e| ObserveError::Recorder(e.to_string()))?
        .idle_timeout(
            MetricKindMask::COUNTER | MetricKindMask::HISTOGRAM,
            Some(IDLE_SERIES),
        )
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| ObserveError::Recorder(e.to_string()))?;
    let _ = HANDLE.set(handle.clone());
    describe();
    Ok(handle)
}

/// The help text of every series, recorded here or elsewhere.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!("mcpfleet_raft_term", "This node's current Raft term.");
    describe_gauge!("mcpfleet_raft_is_leader", "1 if this node leads, else 0.");
    describe_gauge!(
        "mcpfleet_raft_leader_id",
        "The leader this node knows of (0: none)."
    );
    describe_gauge!(
        "mcpfleet_raft_last_log_index",
        "The last index in this node's log."
    );
    describe_gauge!(
        "mcpfleet_raft_applied_index",
        "The last index this node applied."
    );
    describe_gauge!(
        "mcpfleet_raft_snapshot_index",
        "The index of this node's snapshot."
    );
    describe_gauge!(
        "mcpfleet_raft_commit_index",
        "The highest log index this node knows to be committed."
    );
    describe_gauge!(
        "mcpfleet_leader_contact_age_seconds",
        Unit::Seconds,
        "The time since the leader last answered this node's heartbeat (renewing its \
         lease); -1 before the first answer."
    );
    describe_gauge!(
        "mcpfleet_raft_quorum_ack_age_seconds",
        Unit::Seconds,
        "On the leader, the time since a quorum last acknowledged it; 0 on a follower."
    );
    describe_gauge!(
        "mcpfleet_registry_revision",
        "The registry revision this node applied."
    );
    describe_gauge!("mcpfleet_servers", "Servers in the registry.");
    describe_gauge!(
        "mcpfleet_replicas",
        "Replica slots by state: the states their nodes reported, unreported (placed, no \
         report yet) and unplaced."
    );
    describe_gauge!(
        "mcpfleet_replica_breakers",
        "Replicas by circuit breaker state."
    );
    describe_gauge!("mcpfleet_nodes", "Nodes in the registry by liveness.");
    describe_gauge!("mcpfleet_nodes_draining", "Nodes an operator is draining.");
    describe_gauge!(
        "process_resident_memory_bytes",
        Unit::Bytes,
        "Resident memory."
    );
    describe_gauge!("process_open_fds", "Open file descriptors.");
    describe_counter!(
        "mcpfleet_proposals_total",
        "Registry writes this node proposed as leader, by outcome (applied, rejected, failed)."
    );
    describe_histogram!(
        "mcpfleet_proposal_duration_seconds",
        Unit::Seconds,
        "From proposal to outcome, on the leader."
    );
    describe_counter!(
        "mcpfleet_calls_total",
        "Calls through this node (tools/call, prompts/get, resources/read), by method, \
         server and outcome (ok, or the error's kind)."
    );
    describe_histogram!(
        "mcpfleet_call_duration_seconds",
        Unit::Seconds,
        "Calls through this node, from arrival to answer."
    );
    describe_counter!(
        "mcpfleet_call_attempts_refused_total",
        "Replicas that refused a call without sending it (breaker_open, overloaded, \
         not_here, unreachable), after which the next replica was tried."
    );
}

/// What the routes read.
#[derive(Clone)]
pub struct Observer {
    reader: Reader,
    handle: PrometheusHandle,
}

impl Observer {
    pub fn new(reader: Reader, handle: PrometheusHandle) -> Observer {
        Observer { reader, handle }
    }

    /// `/` (and `/status/body`), `/metrics`, `/healthz` and `/readyz`.
    pub fn routes(self) -> Router {
        Router::new()
            .route("/", get(page::status_page))
            .route("/status/body", get(page::status_body))
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(self)
    }

    /// Sets the gauges of state from the state as it is.
    async fn refresh(&self) {
        if let Some(committed) = self.reader.committed_index().await {
            gauge!("mcpfleet_raft_commit_index").set(committed as f64);
        }
        // -1 until the leader first answers this node's heartbeat.
        gauge!("mcpfleet_leader_contact_age_seconds").set(
            self.reader
                .since_leader_contact()
                .map_or(-1.0, |age| age.as_secs_f64()),
        );
        let raft = self.reader.raft_metrics();
        let index = |id: Option<crate::raft::LogId>| id.map_or(0.0, |id| id.index as f64);
        gauge!("mcpfleet_raft_term").set(raft.current_term as f64);
        gauge!("mcpfleet_raft_is_leader")
            .set(f64::from(u8::from(raft.current_leader == Some(raft.id))));
        gauge!("mcpfleet_raft_leader_id").set(raft.current_leader.unwrap_or(0) as f64);
        gauge!("mcpfleet_raft_last_log_index").set(raft.last_log_index.unwrap_or(0) as f64);
        gauge!("mcpfleet_raft_applied_index").set(index(raft.last_applied));
        gauge!("mcpfleet_raft_snapshot_index").set(index(raft.snapshot));
        // The leader's time since a quorum last acknowledged it; 0 on a follower.
        gauge!("mcpfleet_raft_quorum_ack_age_seconds")
            .set(raft.millis_since_quorum_ack.unwrap_or(0) as f64 / 1_000.0);

        let applied = self.reader.stale();
        let registry = &applied.registry;
        gauge!("mcpfleet_registry_revision").set(registry.revision as f64);
        gauge!("mcpfleet_servers").set(registry.servers.len() as f64);
        let slots: usize = registry
            .servers
            .values()
            .map(|r| r.spec.replicas as usize)
            .sum();
        let mut replicas: BTreeMap<&str, usize> = REPLICA_STATES.iter().map(|s| (*s, 0)).collect();
        let mut breakers: BTreeMap<&str, usize> = BREAKER_STATES.iter().map(|s| (*s, 0)).collect();
        for health in registry.health.values() {
            *replicas.entry(replica_state(health.state)).or_default() += 1;
            *breakers.entry(breaker_state(health.breaker)).or_default() += 1;
        }
        replicas.insert(
            "unreported",
            registry
                .assignments
                .len()
                .saturating_sub(registry.health.len()),
        );
        replicas.insert("unplaced", slots.saturating_sub(registry.assignments.len()));
        for (state, count) in replicas {
            gauge!("mcpfleet_replicas", "state" => state).set(count as f64);
        }
        for (state, count) in breakers {
            gauge!("mcpfleet_replica_breakers", "state" => state).set(count as f64);
        }
        let (mut up, mut down, mut draining) = (0, 0, 0);
        for node in registry.nodes.values() {
            match node.status {
                NodeStatus::Up => up += 1,
                NodeStatus::Down => down += 1,
            }
            if node.admin == crate::registry::AdminState::Draining {
                draining += 1;
            }
        }
        drop(applied);
        gauge!("mcpfleet_nodes", "status" => "up").set(f64::from(up));
        gauge!("mcpfleet_nodes", "status" => "down").set(f64::from(down));
        gauge!("mcpfleet_nodes_draining").set(f64::from(draining));

        if let Some(rss) = resident_bytes() {
            gauge!("process_resident_memory_bytes").set(rss as f64);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge!("process_open_fds").set(fds.count() as f64);
        }
    }
}

const REPLICA_STATES: &[&str] = &[
    "starting",
    "healthy",
    "unhealthy",
    "backoff",
    "crash_loop",
    "stopped",
    "unreported",
    "unplaced",
];
const BREAKER_STATES: &[&str] = &["closed", "open", "half_open"];

fn replica_state(state: ReplicaState) -> &'static str {
    match state {
        ReplicaState::Starting => "starting",
        ReplicaState::Healthy => "healthy",
        ReplicaState::Unhealthy => "unhealthy",
        ReplicaState::Backoff => "backoff",
        ReplicaState::CrashLoop => "crash_loop",
        ReplicaState::Stopped => "stopped",
    }
}

fn breaker_state(state: BreakerState) -> &'static str {
    match state {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half_open",
    }
}

/// This process's resident memory (Linux), in bytes.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).ok().map(|page| pages * page)
}

async fn metrics(State(observer): State<Observer>) -> impl IntoResponse {
    observer.refresh().await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        observer.handle.render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(observer): State<Observer>) -> (StatusCode, String) {
    match tokio::time::timeout(READY_TIMEOUT, observer.reader.linearizable()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n".into()),
        Ok(Err(error)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {error}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: no read barrier within {} s (no leader, or this node is behind)\n",
                READY_TIMEOUT.as_secs()
            ),
        ),
    }
}
