//! The workload: simulated clients that put, get, delete and compare-and-set servers
//! through random nodes, and record every invocation and return with its simulated
//! time. The checkers read that history.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use mcpfleet::proto::v1 as pb;
use mcpfleet::proto::v1::registry_client::RegistryClient;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;
use tonic::Code;

/// The server names the simulator's clients work on: few enough that clients collide
/// on them, and enough that each name's history stays short for the linearizability
/// search.
pub const KEYS: [&str; 8] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
];

/// `count` server names: `KEYS` first, then `KEYS` again with a number (`alpha-1`, ...),
/// for runs long enough that eight names would make each name's history too long to
/// search.
pub fn key_names(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| match i / KEYS.len() {
            0 => KEYS[i].to_string(),
            round => format!("{}-{round}", KEYS[i % KEYS.len()]),
        })
        .collect()
}

/// Who one client is and what it works on.
#[derive(Clone, Debug)]
pub struct ClientPlan {
    pub id: u32,
    /// The run's seed: with `id`, it decides every operation of the client.
    pub seed: u64,
    /// The nodes it sends operations to, one at random each time.
    pub nodes: Vec<u64>,
    /// The server names it works on, one at random each time.
    pub keys: Rc<[String]>,
    /// It starts no operation once the clock reads this.
    pub until: Duration,
}
/// How long a client waits for an answer before it gives up on the operation (longer
/// than a node's own 5 s request deadline).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(6);

/// An operation on one server name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Create or replace the server; `value` is unique in a run.
    Put {
        value: String,
    },
    /// Replace only if the server's revision is `expected` (0: it must not exist).
    CompareAndSet {
        value: String,
        expected: u64,
    },
    Delete,
    /// A linearizable read.
    Get,
}

impl Op {
    pub fn is_write(&self) -> bool {
        !matches!(self, Op::Get)
    }
}

/// What an operation returned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ret {
    /// A put or compare-and-set took effect at this revision.
    Written { revision: u64 },
    /// A compare-and-set found another revision and changed nothing.
    Mismatch,
    /// A delete took effect at this revision.
    Deleted { revision: u64 },
    /// A delete found no server and changed nothing.
    NotFound,
    /// A read: the value and its revision, or nothing.
    Read { value: Option<(String, u64)> },
}

/// One line of the history.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Event {
    /// Simulated time since the start of the run.
    pub at: Duration,
    /// The client and the operation's number within it: together they name the
    /// operation.
    pub client: u32,
    pub op_number: u32,
    pub key: String,
    pub node: u64,
    pub kind: EventKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Invoke(Op),
    Return(Ret),
    /// The outcome is unknown (a timeout or a lost connection): the operation may or
    /// may not have taken effect, now or later.
    Unknown(String),
    /// The operation certainly had no effect (a read that failed): the checkers drop it.
    Failed(String),
}

/// The shared history of a run, in the order things happened.
pub type History = Rc<RefCell<Vec<Event>>>;

/// Simulated time since the simulation started: the clock of the simulated workload.
pub fn sim_now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// The spec a client writes for key `name`, carrying `value`.
pub(crate) fn spec(name: &str, value: &str) -> pb::ServerSpec {
    pb::ServerSpec {
        name: name.to_string(),
        transport: Some(pb::server_spec::Transport::Stdio(pb::StdioTransport {
            command: "mcp-server-time".into(),
            args: vec![value.to_string()],
            ..Default::default()
        })),
        replicas: 2,
        health_check: Some(QUICK_CHECKS),
        restart: Some(QUICK_RESTARTS),
        ..Default::default()
    }
}

/// Quick checks and short backoff, so that replicas are healthy again soon after the
/// faults end.
pub const QUICK_CHECKS: pb::HealthCheck = pb::HealthCheck {
    interval_ms: 200,
    timeout_ms: 100,
    healthy_threshold: 1,
    unhealthy_threshold: 2,
};
pub const QUICK_RESTARTS: pb::RestartPolicy = pb::RestartPolicy {
    initial_backoff_ms: 50,
    max_backoff_ms: 500,
    crash_loop_restarts: 5,
    crash_loop_window_ms: 10_000,
};

/// The value a server record carries (its first argument), with its revision.
pub(crate) fn value_of(server: &pb::Server) -> Option<(String, u64)> {
    let spec = server.spec.as_ref()?;
    let value = match &spec.transport {
        Some(pb::server_spec::Transport::Stdio(stdio)) => stdio.args.first().cloned(),
        _ => None,
    }?;
    Some((value, server.mod_revision))
}

/// Runs one client until `clock` reads `plan.until`: random operations on random keys
/// through random nodes, each recorded in `history` with the time `clock` gives.
/// `connect(node)` makes a (lazily connecting) client of that node: inside the
/// simulation, or over real sockets for the nemesis on real processes.
pub async fn run_client(
    plan: ClientPlan,
    history: History,
    clock: impl Fn() -> Duration,
    connect: impl Fn(u64) -> RegistryClient<Channel>,
) -> Result<(), Box<dyn std::error::Error>> {
    let ClientPlan {
        id,
        seed,
        nodes,
        keys,
        until,
    } = plan;
    let mut rng =
        SmallRng::seed_from_u64(seed ^ (u64::from(id) + 1).wrapping_mul(0xa076_1d64_78bd_642f));
    let mut clients: BTreeMap<u64, RegistryClient<Channel>> = BTreeMap::new();
    // The last revision this client saw per key: what its compare-and-sets expect.
    let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
    let mut op_number = 0u32;
    while clock() < until {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(10..150))).await;
        let key = keys[rng.gen_range(0..keys.len())].as_str();
        let node = nodes[rng.gen_range(0..nodes.len())];
        let value = format!("c{id}-{op_number}");
        let op = match rng.gen_range(0..100) {
            0..=34 => Op::Put { value },
            35..=49 => Op::CompareAndSet {
                value,
                expected: seen.get(key).copied().unwrap_or(0),
            },
            50..=59 => Op::Delete,
            _ => Op::Get,
        };
        let event = |kind| Event {
            at: clock(),
            client: id,
            op_number,
            key: key.to_string(),
            node,
            kind,
        };
        history
            .borrow_mut()
            .push(event(EventKind::Invoke(op.clone())));
        let api = clients.entry(node).or_insert_with(|| connect(node));
        // Every other write goes through PutServers (a write of one server), so that
        // the path imports take meets the same faults; no draw from the RNG decides it.
        let batch = op_number % 2 == 1;
        let outcome = tokio::time::timeout(CLIENT_TIMEOUT, call(api, key, &op, batch)).await;
        let kind = match outcome {
            Ok(Ok(ret)) => {
                match &ret {
                    Ret::Written { revision } => {
                        seen.insert(key, *revision);
                    }
                    Ret::Read { value } => {
                        seen.insert(key, value.as_ref().map_or(0, |(_, r)| *r));
                    }
                    Ret::Deleted { .. } | Ret::NotFound => {
                        seen.insert(key, 0);
                    }
                    Ret::Mismatch => {
                        seen.remove(key);
                    }
                }
                EventKind::Return(ret)
            }
            Ok(Err(status)) if !op.is_write() => {
                EventKind::Failed(format!("{:?}: {}", status.code(), status.message()))
            }
            Ok(Err(status)) => {
                EventKind::Unknown(format!("{:?}: {}", status.code(), status.message()))
            }
            Err(_) if !op.is_write() => EventKind::Failed("client timeout".into()),
            Err(_) => EventKind::Unknown("client timeout".into()),
        };
        history.borrow_mut().push(event(kind));
        op_number += 1;
    }
    Ok(())
}

/// Carries out `op` on `key` through `api` (a put as a `PutServers` of one server if
/// `batch`). Answers that say what happened become a `Ret`; every other answer is an
/// error status.
async fn call(
    api: &mut RegistryClient<Channel>,
    key: &str,
    op: &Op,
    batch: bool,
) -> Result<Ret, tonic::Status> {
    match op {
        Op::Put { value } | Op::CompareAndSet { value, .. } => {
            let expected_revision = match op {
                Op::CompareAndSet { expected, .. } => Some(*expected),
                _ => None,
            };
            let request = pb::PutServerRequest {
                spec: Some(spec(key, value)),
                expected_revision,
            };
            let written = if batch {
                api.put_servers(pb::PutServersRequest {
                    puts: vec![request],
                })
                .await
                .map(|response| response.into_inner().revision)
            } else {
                api.put_server(request)
                    .await
                    .map(|response| response.into_inner().revision)
            };
            match written {
                Ok(revision) => Ok(Ret::Written { revision }),
                Err(status) if status.code() == Code::FailedPrecondition => Ok(Ret::Mismatch),
                Err(status) => Err(status),
            }
        }
        Op::Delete => {
            let request = pb::DeleteServerRequest {
                name: key.to_string(),
                expected_revision: None,
            };
            match api.delete_server(request).await {
                Ok(response) => Ok(Ret::Deleted {
                    revision: response.into_inner().revision,
                }),
                Err(status) if status.code() == Code::NotFound => Ok(Ret::NotFound),
                Err(status) => Err(status),
            }
        }
        Op::Get => {
            let request = pb::GetServerRequest {
                name: key.to_string(),
                stale: false,
            };
            match api.get_server(request).await {
                Ok(response) => Ok(Ret::Read {
                    value: response.into_inner().server.as_ref().and_then(value_of),
                }),
                Err(status) if status.code() == Code::NotFound => Ok(Ret::Read { value: None }),
                Err(status) => Err(status),
            }
        }
    }
}
