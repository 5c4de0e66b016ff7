//! Tool calls through the fleet during the faults: clients call the one tool of the
//! simulated server `tools` through random nodes (the client API's `CallTool`), each
//! call with an id of its own, and log what the cluster answered. The simulated servers
//! count how many times each id ran (`Instances::runs`). The checkers then hold the
//! log against those counts.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use mcpfleet::proto::v1 as pb;
use mcpfleet::proto::v1::registry_client::RegistryClient;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

use crate::mcp::RECORD_TOOL;

/// The server the callers call.
pub const TOOL_SERVER: &str = "tools";
/// The deadline each call carries during the faults: short, so that a slow server's
/// answer often comes too late and the call ends with an unknown outcome (it may have
/// run).
pub const CALL_TIMEOUT_MS: u64 = 250;
/// The deadline once every call must succeed: servers launched during the faults may
/// stay slow (up to the health check's timeout per answer), and that is no failure of
/// the fleet's.
pub const SETTLED_CALL_TIMEOUT_MS: u64 = 1_000;
/// How long the cluster has, once it has settled after the faults, before every call
/// must succeed: health reports and breakers catch up on every node, and a connection
/// between nodes that died in a partition is found by its keepalive (2 s + 1 s).
pub const SETTLE_GRACE: Duration = Duration::from_secs(3);

/// What one call got back.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CallOutcome {
    /// The cluster answered with the tool's result: the call ran.
    Done,
    /// An error: the call may or may not have run.
    Failed(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CallRecord {
    /// When the call was sent (simulated time since the start).
    pub at: Duration,
    pub node: u64,
    pub id: String,
    pub outcome: CallOutcome,
}

pub type CallLog = Rc<RefCell<Vec<CallRecord>>>;

/// When the cluster settled after the faults (every node up and following one leader,
/// every replica placed and healthy), once it has; the scenario sets it.
pub type Settled = Rc<Cell<Option<Duration>>>;

/// From when on every call must succeed: the grace after the cluster settled, and
/// after the last misbehaviour of a server launched during the faults (one launched
/// just before their end may crash or hang up to `MAX_LIFETIME_MS` later).
pub fn live_from(settled: Duration, faults_end: Duration) -> Duration {
    let misbehaviour_end = faults_end + Duration::from_millis(crate::mcp::MAX_LIFETIME_MS);
    settled.max(misbehaviour_end) + SETTLE_GRACE
}

/// The spec of the tool server: two replicas, quick checks, a breaker that closes again
/// soon after the faults.
pub fn tool_server() -> pb::PutServerRequest {
    pb::PutServerRequest {
        spec: Some(pb::ServerSpec {
            name: TOOL_SERVER.into(),
            transport: Some(pb::server_spec::Transport::Stdio(pb::StdioTransport {
                command: "sim-record".into(),
                ..Default::default()
            })),
            replicas: 2,
            health_check: Some(crate::workload::QUICK_CHECKS),
            restart: Some(crate::workload::QUICK_RESTARTS),
            circuit_breaker: Some(pb::CircuitBreaker {
                failure_threshold: 3,
                open_ms: 500,
                half_open_max_calls: 1,
            }),
            ..Default::default()
        }),
        expected_revision: None,
    }
}

/// When a caller stops, and when the faults end.
#[derive(Clone, Copy)]
pub struct CallerTimes {
    /// No random call starts after this...
    pub until: Duration,
    /// ...nor any call at all after this.
    pub limit: Duration,
    pub faults_end: Duration,
}

/// Who one caller is, what it calls through, and when it stops.
#[derive(Clone)]
pub struct CallerPlan {
    pub id: u32,
    /// The run's seed: with `id`, it decides the caller's nodes and pauses.
    pub seed: u64,
    pub nodes: Vec<u64>,
    pub times: CallerTimes,
    /// The tool server this caller registers first (retrying until `until`), if any.
    pub register: Option<pb::PutServerRequest>,
}

/// One caller until `until` (and, once the cluster has settled, long enough to call
/// through every node after the grace; never past `limit`), on the clock `clock`, with
/// a client of each node from `connect`.
pub async fn run_caller(
    plan: CallerPlan,
    settled: Settled,
    log: CallLog,
    clock: impl Fn() -> Duration,
    connect: impl Fn(u64) -> RegistryClient<Channel>,
) -> Result<(), Box<dyn std::error::Error>> {
    let CallerPlan {
        id,
        seed,
        nodes,
        times: CallerTimes {
            until,
            limit,
            faults_end,
        },
        register,
    } = plan;
    let mut rng =
        SmallRng::seed_from_u64(seed ^ (u64::from(id) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut clients: BTreeMap<u64, RegistryClient<Channel>> = BTreeMap::new();
    if let Some(request) = register {
        for attempt in 0.. {
            let node = nodes[attempt % nodes.len()];
            let api = clients.entry(node).or_insert_with(|| connect(node));
            if api.put_server(request.clone()).await.is_ok() || clock() > until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut number = 0u32;
    // After the grace, one call through each node in turn, then random ones again.
    let mut rounds_after_settle = 0usize;
    loop {
        let more = clock() < until || (rounds_after_settle < nodes.len() && clock() < limit);
        if !more {
            break;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(10..100))).await;
        let after_grace = settled
            .get()
            .is_some_and(|at| clock() >= live_from(at, faults_end));
        let node = if after_grace && rounds_after_settle < nodes.len() {
            rounds_after_settle += 1;
            nodes[rounds_after_settle - 1]
        } else {
            nodes[rng.gen_range(0..nodes.len())]
        };
        let call = format!("k{id}-{number}");
        number += 1;
        let timeout_ms = if after_grace {
            SETTLED_CALL_TIMEOUT_MS
        } else {
            CALL_TIMEOUT_MS
        };
        let api = clients.entry(node).or_insert_with(|| connect(node));
        let record = call_once(api, node, call, timeout_ms, clock()).await;
        log.borrow_mut().push(record);
    }
    Ok(())
}

/// One call of the record tool with id `call` through `node`, sent at `at`, and what
/// came of it.
pub async fn call_once(
    api: &mut RegistryClient<Channel>,
    node: u64,
    call: String,
    timeout_ms: u64,
    at: Duration,
) -> CallRecord {
    let request = pb::CallToolRequest {
        server: TOOL_SERVER.into(),
        tool: RECORD_TOOL.into(),
        // The id is letters, digits and dashes: no escaping needed.
        arguments_json: format!(r#"{{"id":"{call}"}}"#),
        timeout_ms,
    };
    let outcome =
        tokio::time::timeout(crate::workload::CLIENT_TIMEOUT, api.call_tool(request)).await;
    let outcome = match outcome {
        Ok(Ok(response)) => {
            let result = response.into_inner().result_json;
            if result.contains(&format!("ran {call}")) {
                CallOutcome::Done
            } else {
                CallOutcome::Failed(format!("unexpected result {result}"))
            }
        }
        Ok(Err(status)) => {
            CallOutcome::Failed(format!("{:?}: {}", status.code(), status.message()))
        }
        Err(_) => CallOutcome::Failed("client timeout".into()),
    };
    CallRecord {
        at,
        node,
        id: call,
        outcome,
    }
}

/// What the calls came to.
#[derive(Debug)]
pub struct CallStats {
    pub calls: usize,
    pub done: usize,
    pub after_settle: usize,
}

/// The tool-call checkers:
/// - no call ran twice;
/// - every call the cluster answered as done ran exactly once;
/// - once the cluster had settled after the faults (and `live_from` passed), every call
///   through every node succeeded, and there was one through each node.
pub fn check_calls(
    log: &[CallRecord],
    runs: &BTreeMap<String, u32>,
    settled: Option<Duration>,
    faults_end: Duration,
    nodes: &[u64],
) -> Result<CallStats, String> {
    let live = settled.map(|at| live_from(at, faults_end));
    for (id, count) in runs {
        if *count > 1 {
            let sent: Vec<String> = log
                .iter()
                .filter(|r| &r.id == id)
                .map(|r| format!("through node {} at {:?}: {:?}", r.node, r.at, r.outcome))
                .collect();
            return Err(format!(
                "tool call {id} ran {count} times (sent once: {})",
                sent.join("; ")
            ));
        }
    }
    let mut after_settle = 0;
    let mut through: Vec<u64> = Vec::new();
    for record in log {
        let ran = runs.get(&record.id).copied().unwrap_or(0);
        if record.outcome == CallOutcome::Done && ran != 1 {
            return Err(format!(
                "tool call {} through node {} at {:?} was answered as done but ran {ran} times",
                record.id, record.node, record.at
            ));
        }
        if live.is_some_and(|from| record.at >= from) {
            after_settle += 1;
            if let CallOutcome::Failed(error) = &record.outcome {
                return Err(format!(
                    "tool call {} through node {} at {:?}, after the cluster settled at {:?} (calls must succeed from {:?}), failed: {error}",
                    record.id,
                    record.node,
                    record.at,
                    settled.unwrap_or_default(),
                    live.unwrap_or_default()
                ));
            }
            through.push(record.node);
        }
    }
    if let Some(from) = live {
        for node in nodes {
            if !through.contains(node) {
                return Err(format!(
                    "no tool call went through node {node} from {from:?}, after the cluster settled"
                ));
            }
        }
    }
    Ok(CallStats {
        calls: log.len(),
        done: log
            .iter()
            .filter(|r| r.outcome == CallOutcome::Done)
            .count(),
        after_settle,
    })
}
