//! Scenarios: each named after what it breaks.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use mcpfleet::env::MemoryDisk;
use mcpfleet::proto::v1 as pb;

use crate::calls::{self, check_calls, CallLog, Settled};
use crate::checkers::{check_history, AppliedStates, FinalState, LeadersPerTerm};
use crate::faults::Nemesis;
use crate::workload::{self, Event, EventKind, History, Ret, CLIENT_TIMEOUT};
use crate::{add_nodes, client, cluster_configs, host_name, SimCluster};

mod autopilot;
mod scale;
mod slow_disk;
mod storm;

/// What a finished scenario reports.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub sim_seconds: f64,
    /// Human-readable events, in order.
    pub events: Vec<String>,
    /// A hash of the events, the workload's history and every node's disk at the end:
    /// two runs of one seed must give the same value.
    pub trace_hash: u64,
    /// What a checker found, if anything.
    pub failure: Option<String>,
    /// The workload's history, if the scenario ran one.
    pub history: Vec<Event>,
}

/// The workload's history of `report`, one line per event.
pub fn history_lines(report: &Report) -> Vec<String> {
    report
        .history
        .iter()
        .map(|e| {
            format!(
                "[{:>7.3}s] client {} op {} on {:?} via node {}: {:?}",
                e.at.as_secs_f64(),
                e.client,
                e.op_number,
                e.key,
                e.node,
                e.kind
            )
        })
        .collect()
}

fn trace_hash(
    events: &[String],
    history: &[Event],
    sim_seconds: f64,
    disks: &BTreeMap<u64, Arc<MemoryDisk>>,
) -> u64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: stable across runs and processes.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    events.hash(&mut hasher);
    history.hash(&mut hasher);
    sim_seconds.to_bits().hash(&mut hasher);
    for (id, disk) in disks {
        id.hash(&mut hasher);
        disk.fingerprint().hash(&mut hasher);
    }
    hasher.finish()
}

fn spec(name: &str) -> pb::PutServerRequest {
    pb::PutServerRequest {
        spec: Some(pb::ServerSpec {
            name: name.to_string(),
            transport: Some(pb::server_spec::Transport::Stdio(pb::StdioTransport {
                command: "mcp-server-time".into(),
                ..Default::default()
            })),
            replicas: 1,
            ..Default::default()
        }),
        expected_revision: None,
    }
}

/// Steps `sim` until `reached` holds; an error if the clients finish or fail first.
/// An operator that finds the leader, waits until every node in `nodes` has
/// registered, and writes `request`; runs `sim` until the write is acknowledged and
/// returns the leader.
fn write_once_registered(
    sim: &mut turmoil::Sim<'_>,
    nodes: &[u64],
    request: pb::PutServerRequest,
    events: &Rc<RefCell<Vec<String>>>,
) -> Result<u64, String> {
    let leader_found = Rc::new(RefCell::new(None::<u64>));
    let (log, found, nodes) = (events.clone(), leader_found.clone(), nodes.to_vec());
    sim.client("operator", async move {
        let leader = find_leader(&nodes).await?;
        wait_until_registered(leader, nodes.len()).await;
        let name = request
            .spec
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let revision = client(leader)
            .put_server(request)
            .await?
            .into_inner()
            .revision;
        log.borrow_mut().push(format!(
            "leader {leader}; {name:?} written at revision {revision}"
        ));
        *found.borrow_mut() = Some(leader);
        Ok(())
    });
    run_until(sim, || leader_found.borrow().is_some(), "before the write")?;
    let leader = *leader_found.borrow();
    leader.ok_or_else(|| "the operator found no leader".to_string())
}

fn run_until(
    sim: &mut turmoil::Sim<'_>,
    reached: impl Fn() -> bool,
    what: &str,
) -> Result<(), String> {
    loop {
        let clients_finished = sim.step().map_err(|e| e.to_string())?;
        if reached() {
            return Ok(());
        }
        if clients_finished {
            return Err(format!("simulation ended {what}"));
        }
    }
}

/// A simulation of hosts on a LAN, seeded.
fn lan_sim(seed: u64) -> turmoil::Sim<'static> {
    turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(120))
        // A LAN, which the production timings (election timeout 120-240 ms) are made for;
        // turmoil's default of up to 100 ms per message is a WAN.
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(10))
        .tcp_capacity(4096)
        .build()
}

/// Finds the leader and has it acknowledge a write of a server named "before"; returns
/// the leader's id.
fn write_before(
    sim: &mut turmoil::Sim<'_>,
    events: &Rc<RefCell<Vec<String>>>,
) -> Result<u64, String> {
    let leader = Rc::new(RefCell::new(None::<u64>));
    let (log, found) = (events.clone(), leader.clone());
    sim.client("client-before", async move {
        let id = find_leader(&[1, 2, 3]).await?;
        let revision = put_until_acknowledged(id, "before").await?;
        log.borrow_mut().push(format!(
            "leader is node {id}; 'before' acknowledged at revision {revision}"
        ));
        *found.borrow_mut() = Some(id);
        Ok(())
    });
    run_until(sim, || leader.borrow().is_some(), "before the first write")?;
    let id = leader.borrow().expect("set by the client");
    Ok(id)
}

/// The report of a finished run.
fn report(
    seed: u64,
    sim: &turmoil::Sim<'_>,
    events: &[String],
    disks: &BTreeMap<u64, Arc<MemoryDisk>>,
    history: &[Event],
) -> Report {
    let sim_seconds = sim.elapsed().as_secs_f64();
    Report {
        seed,
        sim_seconds,
        trace_hash: trace_hash(events, history, sim_seconds, disks),
        events: events.to_vec(),
        failure: None,
        history: history.to_vec(),
    }
}

/// Polls the nodes in `candidates` until one reports a leader.
async fn find_leader(candidates: &[u64]) -> Result<u64, String> {
    for _ in 0..200 {
        for id in candidates {
            if let Ok(status) = client(*id)
                .cluster_status(pb::ClusterStatusRequest {})
                .await
            {
                if let Some(leader) = status.into_inner().leader_id {
                    if candidates.contains(&leader) {
                        return Ok(leader);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("no leader among {candidates:?}"))
}

/// (slot, node) of each of the first `slots` replicas of `server` that runs healthy
/// where it is assigned, as node `observer`'s applied registry has it.
fn healthy_replicas(
    cluster: &SimCluster,
    observer: u64,
    server: &str,
    slots: u32,
) -> Vec<(u32, u64)> {
    use mcpfleet::registry::ReplicaState;
    cluster.probe.with_nodes(|windows| {
        let Some(window) = windows.get(&observer) else {
            return Vec::new();
        };
        let applied = window.view.read();
        let registry = &applied.registry;
        (0..slots)
            .filter_map(|slot| {
                let key = (server.to_string(), slot);
                let node = registry.assignments.get(&key)?.node_id;
                registry
                    .health
                    .get(&key)
                    .is_some_and(|h| h.state == ReplicaState::Healthy && h.node_id == node)
                    .then_some((slot, node))
            })
            .collect()
    })
}

/// Waits (bounded) until the leader has registered `count` nodes.
async fn wait_until_registered(leader: u64, count: usize) {
    for _ in 0..200 {
        let registered = client(leader)
            .fleet_status(pb::FleetStatusRequest {
                stale: false,
                ..Default::default()
            })
            .await
            .map(|s| s.into_inner().nodes.len())
            .unwrap_or(0);
        if registered == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Retries a write on `node` until it is acknowledged (bounded).
async fn put_until_acknowledged(node: u64, name: &str) -> Result<u64, String> {
    let mut last_error = String::new();
    for _ in 0..20 {
        match client(node).put_server(spec(name)).await {
            Ok(response) => return Ok(response.into_inner().revision),
            Err(status) => last_error = status.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "write of {name} through node {node} never acknowledged: {last_error}"
    ))
}

/// Three nodes; a write is acknowledged; the leader crashes; a write through a
/// survivor must be acknowledged and both writes must be readable on the other
/// survivor. The crashed node then restarts from its disk and must catch up.
pub fn leader_crash(seed: u64) -> Result<Report, String> {
    let mut sim = lan_sim(seed);
    let disks = add_nodes(&mut sim, seed, cluster_configs(3), Duration::ZERO).disks;
    let events = Rc::new(RefCell::new(Vec::<String>::new()));
    let crashed = write_before(&mut sim, &events)?;
    sim.crash(host_name(crashed));
    // The machine went down with the process: what was not synced is gone.
    disks[&crashed].crash();
    events
        .borrow_mut()
        .push(format!("crashed node {crashed} at {:?}", sim.elapsed()));

    let survivors: Vec<u64> = (1..=3).filter(|id| *id != crashed).collect();
    let (log, done) = (events.clone(), Rc::new(RefCell::new(false)));
    let finished = done.clone();
    let nodes = survivors.clone();
    sim.client("client-after", async move {
        let revision = put_until_acknowledged(nodes[0], "after").await?;
        log.borrow_mut().push(format!(
            "'after' acknowledged through node {} at revision {revision}",
            nodes[0]
        ));
        let listed = client(nodes[1])
            .list_servers(pb::ListServersRequest {
                stale: false,
                ..Default::default()
            })
            .await?
            .into_inner();
        let names: Vec<String> = listed
            .servers
            .into_iter()
            .filter_map(|s| s.spec.map(|s| s.name))
            .collect();
        if names != ["after", "before"] {
            return Err(format!("node {} lists {names:?}, expected both writes", nodes[1]).into());
        }
        let leader = find_leader(&nodes).await?;
        log.borrow_mut().push(format!(
            "new leader is node {leader}; node {} lists {names:?}",
            nodes[1]
        ));
        *finished.borrow_mut() = true;
        Ok(())
    });
    run_until(
        &mut sim,
        || *done.borrow(),
        "before the write after the crash",
    )?;

    sim.bounce(host_name(crashed));
    events
        .borrow_mut()
        .push(format!("restarted node {crashed} from its disk"));
    let (log, done) = (events.clone(), Rc::new(RefCell::new(false)));
    let finished = done.clone();
    sim.client("client-restart", async move {
        for _ in 0..100 {
            let listed = client(crashed)
                .list_servers(pb::ListServersRequest {
                    stale: true,
                    ..Default::default()
                })
                .await;
            if let Ok(listed) = listed {
                if listed.into_inner().servers.len() == 2 {
                    log.borrow_mut().push(format!("node {crashed} caught up"));
                    *finished.borrow_mut() = true;
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("node {crashed} did not catch up").into())
    });
    run_until(
        &mut sim,
        || *done.borrow(),
        "before the restarted node caught up",
    )?;
    let events = events.borrow().clone();
    Ok(report(seed, &sim, &events, &disks, &[]))
}

/// How long after its write a server added once a drained node and the leader have died
/// may take to run, healthy, on a live node.
const DRAINED_PLACEMENT_BOUND: Duration = Duration::from_secs(15);

/// Five nodes. An operator drains a follower, which then dies and stays dead, still
/// draining; then the leader dies. A server added afterwards must be placed on a live
/// node and run there, healthy, within `DRAINED_PLACEMENT_BOUND` (a dead draining node
/// must never hold up the hand-overs of the whole cluster).
pub fn drained_node_dies(seed: u64) -> Result<Report, String> {
    use mcpfleet::registry::ReplicaState;
    let mut sim = lan_sim(seed);
    let all: Vec<u64> = (1..=5).collect();
    let cluster = add_nodes(&mut sim, seed, cluster_configs(5), Duration::ZERO);
    let events = Rc::new(RefCell::new(Vec::<String>::new()));
    // Every node registered; drain a follower.
    let chosen = Rc::new(RefCell::new(None::<(u64, u64)>));
    let (log, found, nodes) = (events.clone(), chosen.clone(), all.clone());
    sim.client("operator", async move {
        let leader = find_leader(&nodes).await?;
        let drained = *nodes
            .iter()
            .find(|id| **id != leader)
            .ok_or("no follower")?;
        wait_until_registered(leader, nodes.len()).await;
        client(leader)
            .set_node_status(pb::SetNodeStatusRequest {
                id: drained,
                status: "draining".into(),
            })
            .await?;
        log.borrow_mut()
            .push(format!("leader {leader}; node {drained} drained"));
        *found.borrow_mut() = Some((leader, drained));
        Ok(())
    });
    run_until(&mut sim, || chosen.borrow().is_some(), "before the drain")?;
    let (leader, drained) = chosen.borrow().expect("set by the operator");
    for _ in 0..200 {
        sim.step().map_err(|e| e.to_string())?;
    }
    cluster.crash(&mut sim, drained);
    for _ in 0..500 {
        sim.step().map_err(|e| e.to_string())?;
    }
    cluster.crash(&mut sim, leader);
    events.borrow_mut().push(format!(
        "crashed drained node {drained}, then leader {leader}, at {:?}",
        sim.elapsed()
    ));
    let alive: Vec<u64> = all
        .iter()
        .copied()
        .filter(|id| ![leader, drained].contains(id))
        .collect();
    let written = Rc::new(RefCell::new(None::<Duration>));
    let (log, done, nodes) = (events.clone(), written.clone(), alive.clone());
    sim.client("client-late", async move {
        let leader = find_leader(&nodes).await?;
        let revision = put_until_acknowledged(leader, "late").await?;
        log.borrow_mut().push(format!(
            "new leader {leader}; 'late' acknowledged at revision {revision}"
        ));
        *done.borrow_mut() = turmoil::sim_elapsed();
        Ok(())
    });
    run_until(
        &mut sim,
        || written.borrow().is_some(),
        "before the late write",
    )?;
    let written_at = written.borrow().expect("set by the client");
    loop {
        cluster.instances.check_fencing()?;
        cluster
            .instances
            .check_starts(mcpfleet::config::Config::default().max_starting_replicas)?;
        let placed = cluster.probe.with_nodes(|windows| {
            let window = windows.get(&alive[0])?;
            let applied = window.view.read();
            let registry = &applied.registry;
            let key = ("late".to_string(), 0);
            let assignment = registry.assignments.get(&key)?;
            let healthy = registry
                .health
                .get(&key)
                .is_some_and(|h| h.state == ReplicaState::Healthy);
            (healthy && alive.contains(&assignment.node_id)).then_some(assignment.node_id)
        });
        if let Some(node) = placed {
            events.borrow_mut().push(format!(
                "'late' healthy on node {node} {:?} after its write",
                sim.elapsed() - written_at
            ));
            break;
        }
        if sim.elapsed() > written_at + DRAINED_PLACEMENT_BOUND {
            return Err(format!(
                "'late' was not running, healthy, on a live node within \
                 {DRAINED_PLACEMENT_BOUND:?} of its write (drained node {drained} and leader \
                 {leader} dead): {}",
                describe_nodes(&cluster)
            ));
        }
        sim.step().map_err(|e| e.to_string())?;
    }
    let events = events.borrow().clone();
    Ok(report(seed, &sim, &events, &cluster.disks, &[]))
}

/// How long the restarted-node-drained scenario watches the fencing after the drain.
const ORPHAN_WATCH: Duration = Duration::from_secs(5);

/// Three nodes; server "orphan" (one replica) runs healthy on a follower. That follower
/// crashes, and its server lives on under its supervisor until its fence deadline; the
/// node restarts at once and is drained. The leader must not hand the slot over on the
/// word of the restarted node, whose first heartbeats know nothing of the server its
/// earlier run left behind: the fencing check runs every step for `ORPHAN_WATCH`, and
/// the slot must run, healthy, elsewhere by the end.
pub fn restarted_node_drained(seed: u64) -> Result<Report, String> {
    let mut sim = lan_sim(seed);
    let all: Vec<u64> = (1..=3).collect();
    let cluster = add_nodes(&mut sim, seed, cluster_configs(3), Duration::ZERO);
    // A crashed node's server runs on under its supervisor, as a real one may.
    cluster.instances.linger_from_now_on();
    let events = Rc::new(RefCell::new(Vec::<String>::new()));
    // Two replicas: one of them runs on a follower.
    let mut request = spec("orphan");
    if let Some(spec) = request.spec.as_mut() {
        spec.replicas = 2;
    }
    let leader = write_once_registered(&mut sim, &all, request, &events)?;
    let healthy = |cluster: &SimCluster| healthy_replicas(cluster, leader, "orphan", 2);
    let deadline = sim.elapsed() + Duration::from_secs(10);
    let (slot, host) = loop {
        if let Some(found) = healthy(&cluster)
            .into_iter()
            .find(|(_, node)| *node != leader)
        {
            break found;
        }
        if sim.elapsed() > deadline {
            return Err("no replica of 'orphan' ran healthy on a follower".into());
        }
        sim.step().map_err(|e| e.to_string())?;
    };
    cluster.crash(&mut sim, host);
    for _ in 0..20 {
        sim.step().map_err(|e| e.to_string())?;
    }
    sim.bounce(host_name(host));
    let left: Vec<u64> = cluster
        .instances
        .running()
        .into_iter()
        .filter(|(replica, _)| replica.server == "orphan" && replica.slot == slot)
        .map(|(_, node)| node)
        .collect();
    events.borrow_mut().push(format!(
        "slot {slot} of 'orphan' on node {host}: crashed and restarted it at {:?}; the slot's servers run on nodes {left:?}",
        sim.elapsed()
    ));
    let drained = Rc::new(RefCell::new(false));
    let (log, done) = (events.clone(), drained.clone());
    sim.client("drainer", async move {
        for _ in 0..100 {
            let drain = client(leader)
                .set_node_status(pb::SetNodeStatusRequest {
                    id: host,
                    status: "draining".into(),
                })
                .await;
            if drain.is_ok() {
                log.borrow_mut().push(format!(
                    "node {host} drained at {:?}",
                    turmoil::sim_elapsed().unwrap_or_default()
                ));
                *done.borrow_mut() = true;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err("the drain was never acknowledged".into())
    });
    let until = sim.elapsed() + ORPHAN_WATCH;
    while sim.elapsed() < until || !*drained.borrow() {
        cluster.instances.check_fencing()?;
        cluster
            .instances
            .check_starts(mcpfleet::config::Config::default().max_starting_replicas)?;
        if sim.elapsed() > until + Duration::from_secs(5) {
            return Err("the drain was not acknowledged".into());
        }
        sim.step().map_err(|e| e.to_string())?;
    }
    match healthy(&cluster).into_iter().find(|(s, _)| *s == slot) {
        Some((_, node)) if node != host => events.borrow_mut().push(format!(
            "slot {slot} healthy on node {node}; fencing held throughout"
        )),
        other => {
            return Err(format!(
                "slot {slot} of 'orphan' did not move off the drained node {host} within \
                 {ORPHAN_WATCH:?}: {other:?}"
            ))
        }
    }
    let events = events.borrow().clone();
    Ok(report(seed, &sim, &events, &cluster.disks, &[]))
}

/// How long after a replica's fault every call must succeed again: its breaker has
/// opened on the call timeouts (or its server is back), and every router skips it.
const STUCK_BOUND: Duration = Duration::from_secs(3);
/// How long the faulty-replica scenarios call after the fault.
const STUCK_WATCH: Duration = Duration::from_secs(6);
/// The deadline of each call in the faulty-replica scenarios.
const STUCK_CALL_TIMEOUT_MS: u64 = 300;

/// What goes wrong with one replica in `faulty_replica`.
#[derive(Clone, Copy, Debug)]
pub enum ReplicaFault {
    /// Its server answers pings but no tool call (scenario `stuck-calls`).
    Stuck,
    /// Its server runs the next tool call and crashes before it answers (scenario
    /// `crash-mid-call`): the call may have had its effect, so it must not be sent
    /// again.
    CrashMidCall,
}

/// Three nodes; the tool server runs two replicas, healthy. Then one replica's server
/// goes wrong (`fault`). A client calls through each node in turn: calls may fail at
/// first, but once `STUCK_BOUND` has passed every call must succeed (the breaker, fed
/// by the calls' timeouts, has opened and calls go to the other replica; or the crashed
/// server is back), through every node, and no call runs twice.
pub fn faulty_replica(seed: u64, fault: ReplicaFault) -> Result<Report, String> {
    let mut sim = lan_sim(seed);
    let all: Vec<u64> = (1..=3).collect();
    let cluster = add_nodes(&mut sim, seed, cluster_configs(3), Duration::ZERO);
    let events = Rc::new(RefCell::new(Vec::<String>::new()));
    // A breaker that, once open, stays open through the scenario: no trial call.
    let mut request = calls::tool_server();
    if let Some(breaker) = request
        .spec
        .as_mut()
        .and_then(|s| s.circuit_breaker.as_mut())
    {
        breaker.open_ms = 60_000;
    }
    let leader = write_once_registered(&mut sim, &all, request, &events)?;
    let deadline = sim.elapsed() + Duration::from_secs(10);
    let hosts = loop {
        let hosts: Vec<u64> = healthy_replicas(&cluster, leader, calls::TOOL_SERVER, 2)
            .into_iter()
            .map(|(_, node)| node)
            .collect();
        if hosts.len() == 2 {
            break hosts;
        }
        if sim.elapsed() > deadline {
            return Err("the tool server's two replicas never ran healthy".into());
        }
        sim.step().map_err(|e| e.to_string())?;
    };
    let what = match fault {
        ReplicaFault::Stuck => {
            cluster.instances.stick_calls(calls::TOOL_SERVER, 0);
            "answers no call"
        }
        ReplicaFault::CrashMidCall => {
            cluster.instances.crash_in_next_call(calls::TOOL_SERVER, 0);
            "crashes in its next call"
        }
    };
    let stuck_at = sim.elapsed();
    events.borrow_mut().push(format!(
        "slot 0 (node {}) {what} from {stuck_at:?}; slot 1 runs on node {}",
        hosts[0], hosts[1]
    ));
    let log: CallLog = Rc::default();
    let (calls_log, nodes) = (log.clone(), all.clone());
    sim.client("caller", async move {
        let mut apis: BTreeMap<u64, _> = BTreeMap::new();
        let mut number = 0;
        while turmoil::sim_elapsed().unwrap_or_default() < stuck_at + STUCK_WATCH {
            let node = nodes[number % nodes.len()];
            let api = apis.entry(node).or_insert_with(|| client(node));
            let record = calls::call_once(
                api,
                node,
                format!("s-{number}"),
                STUCK_CALL_TIMEOUT_MS,
                workload::sim_now(),
            )
            .await;
            calls_log.borrow_mut().push(record);
            number += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    });
    let caller_done = || {
        log.borrow()
            .last()
            .is_some_and(|r| r.at >= stuck_at + STUCK_WATCH)
    };
    loop {
        let finished = sim.step().map_err(|e| e.to_string())?;
        if finished || caller_done() || sim.elapsed() > stuck_at + STUCK_WATCH + CLIENT_TIMEOUT {
            break;
        }
    }
    let runs = cluster.instances.runs();
    let mut through = std::collections::BTreeSet::new();
    let mut failed_early = 0;
    for record in log.borrow().iter() {
        let ran = runs.get(&record.id).copied().unwrap_or(0);
        if ran > 1 || (record.outcome == calls::CallOutcome::Done && ran != 1) {
            return Err(format!(
                "tool call {} through node {} ran {ran} times ({:?})",
                record.id, record.node, record.outcome
            ));
        }
        if record.at < stuck_at + STUCK_BOUND {
            failed_early += usize::from(record.outcome != calls::CallOutcome::Done);
            continue;
        }
        if let calls::CallOutcome::Failed(error) = &record.outcome {
            return Err(format!(
                "tool call {} through node {} at {:?}, {:?} after slot 0's fault, failed: {error}",
                record.id,
                record.node,
                record.at,
                record.at - stuck_at
            ));
        }
        through.insert(record.node);
    }
    if through.len() != all.len() {
        return Err(format!(
            "calls went through only nodes {through:?} after {STUCK_BOUND:?}"
        ));
    }
    events.borrow_mut().push(format!(
        "{} calls: {failed_early} failed in the first {STUCK_BOUND:?}, every later one done",
        log.borrow().len()
    ));
    let events = events.borrow().clone();
    Ok(report(seed, &sim, &events, &cluster.disks, &[]))
}

/// Asks every node in `nodes` for its term and leader; nodes that do not answer or know
/// no leader are left out.
async fn observe_leaders(nodes: &[u64]) -> Vec<(u64, u64)> {
    let mut observed = Vec::new();
    for id in nodes {
        if let Ok(status) = client(*id)
            .cluster_status(pb::ClusterStatusRequest {})
            .await
        {
            let status = status.into_inner();
            if let Some(leader) = status.leader_id {
                observed.push((status.term, leader));
            }
        }
    }
    observed
}

/// Three nodes; the leader is cut off from both others. The majority side must elect
/// a leader and acknowledge a write; a write sent to the old leader must not be
/// acknowledged while it is cut off. After the partition heals, every node must hold
/// every acknowledged write, and no term may ever have had two leaders.
/// How long the leader stays cut off in `leader-partition`.
const MINORITY_PARTITION: Duration = Duration::from_secs(8);
/// By when, after the cut, the cut-off leader must answer the write sent to it (its
/// request deadline is 5 s).
const MINORITY_ANSWER_BOUND: Duration = Duration::from_millis(6_500);

pub fn leader_partition(seed: u64) -> Result<Report, String> {
    let mut sim = lan_sim(seed);
    let disks = add_nodes(&mut sim, seed, cluster_configs(3), Duration::ZERO).disks;
    let events = Rc::new(RefCell::new(Vec::<String>::new()));
    let observations = Rc::new(RefCell::new(LeadersPerTerm::default()));
    let isolated = write_before(&mut sim, &events)?;
    let majority: Vec<u64> = (1..=3).filter(|id| *id != isolated).collect();
    for other in &majority {
        sim.partition(host_name(isolated), host_name(*other));
    }
    let cut_at = sim.elapsed();
    events
        .borrow_mut()
        .push(format!("cut node {isolated} off at {cut_at:?}"));

    let acknowledged = Rc::new(RefCell::new(vec!["before".to_string()]));
    let (log, done, seen, acked) = (
        events.clone(),
        Rc::new(RefCell::new(false)),
        observations.clone(),
        acknowledged.clone(),
    );
    let finished = done.clone();
    let nodes = majority.clone();
    sim.client("client-majority", async move {
        let revision = put_until_acknowledged(nodes[0], "during").await?;
        acked.borrow_mut().push("during".into());
        let leader = find_leader(&nodes).await?;
        log.borrow_mut().push(format!(
            "majority leader is node {leader}; 'during' acknowledged at revision {revision}"
        ));
        let observed = observe_leaders(&[1, 2, 3]).await;
        seen.borrow_mut().observe_all(observed)?;
        *finished.borrow_mut() = true;
        Ok(())
    });
    let (log, acked) = (events.clone(), acknowledged.clone());
    let minority_answered = Rc::new(std::cell::Cell::new(None::<Duration>));
    let answered = minority_answered.clone();
    sim.client("client-minority", async move {
        // One attempt through the cut-off node: it cannot reach a quorum, so it must
        // not acknowledge while the partition lasts, and must answer within its
        // request deadline rather than hold the write until the partition heals.
        let attempt = client(isolated).put_server(spec("minority")).await;
        answered.set(Some(turmoil::sim_elapsed().unwrap_or_default()));
        match attempt {
            Ok(response) => {
                acked.borrow_mut().push("minority".into());
                log.borrow_mut().push(format!(
                    "'minority' acknowledged at revision {} (after the partition healed)",
                    response.into_inner().revision
                ));
            }
            Err(status) => log
                .borrow_mut()
                .push(format!("'minority' refused: {}", status.code())),
        }
        Ok(())
    });
    run_until(
        &mut sim,
        || *done.borrow(),
        "before the majority acknowledged a write",
    )?;
    // The partition lasts past the cut-off node's 5 s request deadline.
    while sim.elapsed() < cut_at + MINORITY_PARTITION {
        sim.step().map_err(|e| e.to_string())?;
    }
    if acknowledged.borrow().iter().any(|n| n == "minority") {
        return Err(format!(
            "node {isolated} acknowledged a write while cut off from the majority"
        ));
    }
    match minority_answered.get() {
        Some(at) if at <= cut_at + MINORITY_ANSWER_BOUND => {}
        answered => {
            return Err(format!(
                "node {isolated}, cut off, held a write for {:?} with {}: its write path has no deadline",
                MINORITY_PARTITION,
                match answered {
                    Some(at) => format!("an answer only after {:?}", at - cut_at),
                    None => "no answer".to_string(),
                }
            ))
        }
    }
    for other in &majority {
        sim.repair(host_name(isolated), host_name(*other));
    }
    events
        .borrow_mut()
        .push(format!("healed the partition at {:?}", sim.elapsed()));

    let (log, done, seen, acked) = (
        events.clone(),
        Rc::new(RefCell::new(false)),
        observations.clone(),
        acknowledged.clone(),
    );
    let finished = done.clone();
    sim.client("client-after", async move {
        // Let the minority write finish one way or the other (its deadline is 5 s).
        tokio::time::sleep(Duration::from_secs(6)).await;
        for _ in 0..100 {
            let observed = observe_leaders(&[1, 2, 3]).await;
            seen.borrow_mut().observe_all(observed)?;
            let mut converged = true;
            for id in 1..=3 {
                let listed = client(id)
                    .list_servers(pb::ListServersRequest {
                        stale: true,
                        ..Default::default()
                    })
                    .await;
                let names: Vec<String> = match listed {
                    Ok(listed) => listed
                        .into_inner()
                        .servers
                        .into_iter()
                        .filter_map(|s| s.spec.map(|s| s.name))
                        .collect(),
                    Err(_) => Vec::new(),
                };
                if !acked.borrow().iter().all(|n| names.contains(n)) {
                    converged = false;
                }
            }
            if converged {
                log.borrow_mut()
                    .push("every node holds every acknowledged write".into());
                *finished.borrow_mut() = true;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(
            "the nodes did not converge on the acknowledged writes after the partition healed"
                .into(),
        )
    });
    run_until(&mut sim, || *done.borrow(), "before the nodes converged")?;
    let terms = observations.borrow().terms();
    events
        .borrow_mut()
        .push(format!("one leader in each of the {terms} terms observed"));
    let events = events.borrow().clone();
    Ok(report(seed, &sim, &events, &disks, &[]))
}

/// The scenarios by name, for the command line; the first is the default.
pub const SCENARIOS: [&str; 11] = [
    "chaos",
    "leader-crash",
    "leader-partition",
    "drained-node-dies",
    "restarted-node-drained",
    "stuck-calls",
    "crash-mid-call",
    "write-storm",
    "slow-disk",
    "autopilot",
    "scale",
];

/// The scenario that catches `bug` (chaos, unless a bug needs a fault schedule of its
/// own).
pub fn catches(bug: mcpfleet::env::bugs::Bug) -> &'static str {
    match bug {
        mcpfleet::env::bugs::Bug::DeadDrainBlocks => "drained-node-dies",
        mcpfleet::env::bugs::Bug::ForgetOrphans => "restarted-node-drained",
        mcpfleet::env::bugs::Bug::RouteToUnavailable => "stuck-calls",
        mcpfleet::env::bugs::Bug::RetryAfterSend => "crash-mid-call",
        mcpfleet::env::bugs::Bug::ShrinkSessionWindow => "write-storm",
        _ => "chaos",
    }
}

/// How big a cluster the chaos and scale scenarios run.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    pub nodes: u64,
    /// Servers the scale scenario registers.
    pub servers: usize,
}

/// Runs the scenario called `name` for `seed`, at `size` where it has one.
pub fn run(name: &str, seed: u64, size: Size) -> Report {
    let fixed = |result: Result<Report, String>| {
        result.unwrap_or_else(|failure| Report {
            seed,
            sim_seconds: 0.0,
            events: Vec::new(),
            trace_hash: 0,
            failure: Some(failure),
            history: Vec::new(),
        })
    };
    match name {
        "chaos" => chaos(seed, size.nodes),
        "leader-crash" => fixed(leader_crash(seed)),
        "leader-partition" => fixed(leader_partition(seed)),
        "drained-node-dies" => fixed(drained_node_dies(seed)),
        "restarted-node-drained" => fixed(restarted_node_drained(seed)),
        "stuck-calls" => fixed(faulty_replica(seed, ReplicaFault::Stuck)),
        "crash-mid-call" => fixed(faulty_replica(seed, ReplicaFault::CrashMidCall)),
        "write-storm" => storm::write_storm(seed),
        "slow-disk" => slow_disk::slow_disk(seed),
        "autopilot" => fixed(autopilot::autopilot(seed)),
        "scale" => fixed(scale::scale(seed, size.nodes, size.servers)),
        other => fixed(Err(format!(
            "unknown scenario {other:?}; known: {}",
            SCENARIOS.join(", ")
        ))),
    }
}

/// The chaos scenario's phases, in simulated time from the start of a run.
pub mod phases {
    use std::time::Duration;

    /// The first fault: the cluster has elected a leader and taken writes by then.
    pub const FAULTS_START: Duration = Duration::from_secs(2);
    /// The end of the safety phase: every fault is healed and crashed nodes restart.
    pub const FAULTS_END: Duration = Duration::from_secs(20);
    /// After the faults end, the cluster must converge within this long: every node up,
    /// one leader that all follow, every node's log applied, and a write acknowledged.
    pub const CONVERGENCE_BOUND: Duration = Duration::from_secs(10);
    /// Clients start no operation after this.
    pub const WORKLOAD_END: Duration = Duration::from_secs(31);
    /// Clients of the workload.
    pub const CLIENTS: u32 = 4;
    /// Clients that call tools.
    pub const CALLERS: u32 = 3;
}

/// A hash of a node's registry, equal for equal registries.
fn registry_fingerprint(registry: &mcpfleet::registry::Registry) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    mcpfleet::raft::codec::encode(registry)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

/// Feeds the per-step checkers from every running node; returns the node that leads in
/// the highest term, if any.
fn observe(
    cluster: &SimCluster,
    leaders: &mut LeadersPerTerm,
    states: &mut AppliedStates,
) -> Result<Option<u64>, String> {
    cluster.probe.with_nodes(|nodes| {
        let mut leader: Option<(u64, u64)> = None;
        for (id, window) in nodes {
            let (state, term) = {
                let metrics = window.metrics.borrow();
                if let Err(fatal) = &metrics.running_state {
                    return Err(format!("node {id}: its Raft core stopped: {fatal}"));
                }
                (metrics.state, metrics.current_term)
            };
            if state == openraft::ServerState::Leader {
                leaders.observe(term, *id)?;
                if leader.is_none_or(|(t, _)| term > t) {
                    leader = Some((term, *id));
                }
            }
            let applied = window.view.read();
            let index = applied.last_applied.map_or(0, |log_id| log_id.index);
            states.observe(*id, index, || {
                // DESIGN's invariant 4, among the registry's own: checked on every
                // state each node applies, in release builds too.
                applied
                    .registry
                    .check_invariants()
                    .map_err(|broken| format!("node {id} at applied index {index}: {broken}"))?;
                Ok(registry_fingerprint(&applied.registry))
            })?;
        }
        Ok(leader.map(|(_, id)| id))
    })
}

/// Every node runs, follows one leader in one term, and has applied its whole log,
/// which is the leader's.
/// Whether a scenario whose clients stop at `end` is over: its clients are done and
/// the cluster has converged. An error names `after` once that took too long.
fn settled(
    now: Duration,
    end: Duration,
    clients_done: bool,
    cluster: &SimCluster,
    after: &str,
) -> Result<bool, String> {
    if now > end + CLIENT_TIMEOUT && clients_done && converged(cluster, 3) {
        return Ok(true);
    }
    if now > end + CLIENT_TIMEOUT + phases::CONVERGENCE_BOUND {
        return Err(format!(
            "the cluster did not converge after {after}: {}",
            describe_nodes(cluster)
        ));
    }
    Ok(false)
}

/// Checks the workload's `history` against the cluster's final state. Returns how
/// many operations it held.
fn checked_operations(history: &History, cluster: &SimCluster) -> Result<usize, String> {
    Ok(check_history(&history.borrow(), Some(&final_state(cluster)))?.operations)
}

fn converged(cluster: &SimCluster, nodes: u64) -> bool {
    cluster.probe.with_nodes(|windows| {
        if windows.len() as u64 != nodes {
            return false;
        }
        let metrics: Vec<_> = windows
            .values()
            .map(|w| w.metrics.borrow().clone())
            .collect();
        let first = &metrics[0];
        let Some(leader) = first.current_leader else {
            return false;
        };
        let leading = windows
            .get(&leader)
            .is_some_and(|w| w.metrics.borrow().state == openraft::ServerState::Leader);
        leading
            && metrics.iter().all(|m| {
                m.current_leader == Some(leader)
                    && m.current_term == first.current_term
                    && m.last_log_index == first.last_log_index
                    && m.last_applied.map(|l| l.index) == first.last_log_index
            })
    })
}

/// Every node is up in the registry, and every server runs its replicas (as many as there
/// are nodes, at most), each healthy, on the node it is assigned to, and nowhere else.
fn placement_converged(cluster: &SimCluster, nodes: u64) -> Result<(), String> {
    use mcpfleet::env::launcher::ReplicaId;
    use mcpfleet::registry::{NodeStatus, ReplicaState};
    let running = cluster.instances.running();
    cluster.probe.with_nodes(|windows| {
        let window = windows.values().next().ok_or("no node runs")?;
        let applied = window.view.read();
        let registry = &applied.registry;
        let up = registry
            .nodes
            .values()
            .filter(|n| n.status == NodeStatus::Up)
            .count() as u64;
        if up != nodes {
            return Err(format!("{up} of {nodes} nodes are up in the registry"));
        }
        for (name, record) in &registry.servers {
            let want = u64::from(record.spec.replicas).min(nodes) as u32;
            for slot in 0..want {
                let key = (name.clone(), slot);
                let Some(assignment) = registry.assignments.get(&key) else {
                    return Err(format!("slot {slot} of {name:?} is not placed"));
                };
                let healthy = registry
                    .health
                    .get(&key)
                    .is_some_and(|h| h.state == ReplicaState::Healthy);
                if !healthy {
                    return Err(format!(
                        "slot {slot} of {name:?} is not healthy: {:?}",
                        registry.health.get(&key)
                    ));
                }
                let id = ReplicaId {
                    server: name.clone(),
                    create_revision: record.create_revision,
                    slot,
                };
                let on: Vec<u64> = running
                    .iter()
                    .filter(|(replica, _)| *replica == id)
                    .map(|(_, node)| *node)
                    .collect();
                if on != [assignment.node_id] {
                    return Err(format!(
                        "slot {slot} of {name:?} is assigned to node {} and runs on {on:?}",
                        assignment.node_id
                    ));
                }
            }
        }
        Ok(())
    })
}

/// Each running node's Raft state, for a failure message.
fn describe_nodes(cluster: &SimCluster) -> String {
    cluster.probe.with_nodes(|windows| {
        let nodes: Vec<String> = windows
            .iter()
            .map(|(id, w)| {
                let m = w.metrics.borrow();
                format!(
                    "node {id} {:?} term {} leader {:?} last log {:?} applied {:?}",
                    m.state,
                    m.current_term,
                    m.current_leader,
                    m.last_log_index,
                    m.last_applied.map(|l| l.index)
                )
            })
            .collect();
        format!("{} running: {}", nodes.len(), nodes.join("; "))
    })
}

/// The registry as the nodes hold it at the end (they are equal once converged).
fn final_state(cluster: &SimCluster) -> FinalState {
    cluster.probe.with_nodes(|windows| {
        let Some(window) = windows.values().next() else {
            return FinalState::default();
        };
        let applied = window.view.read();
        let servers = applied
            .registry
            .servers
            .iter()
            .filter_map(|(name, record)| match &record.spec.transport {
                mcpfleet::registry::Transport::Stdio { args, .. } => args
                    .first()
                    .map(|value| (name.clone(), (value.clone(), record.mod_revision))),
                _ => None,
            })
            .collect();
        FinalState {
            revision: applied.registry.revision,
            servers,
        }
    })
}

/// Adds the checked workload's clients (`phases::CLIENTS`, through nodes 1 to
/// `nodes`) until `until`, and returns the history they share.
fn add_workload(sim: &mut turmoil::Sim<'_>, seed: u64, nodes: u64, until: Duration) -> History {
    let history: History = Rc::default();
    let keys: Rc<[String]> = workload::key_names(workload::KEYS.len()).into();
    for id in 0..phases::CLIENTS {
        let history = history.clone();
        let plan = workload::ClientPlan {
            id,
            seed,
            nodes: (1..=nodes).collect(),
            keys: keys.clone(),
            until,
        };
        sim.client(format!("client{id}"), async move {
            workload::run_client(plan, history, workload::sim_now, client).await
        });
    }
    history
}

/// The chaos scenario: `nodes` nodes and a workload of clients through random nodes,
/// with random faults (partitions, one-way partitions, lossy and slow links, crashes
/// and power losses, several at once) for the safety phase; then the faults stop and
/// the cluster must converge within a bound. Every step, at most one leader per term
/// and equal state machines at equal applied indexes; at the end, the history must be
/// linearizable per server name with no acknowledged write lost.
pub fn chaos(seed: u64, nodes: u64) -> Report {
    use phases::*;
    let mut sim = lan_sim(seed);
    let cluster = add_nodes(&mut sim, seed, cluster_configs(nodes), FAULTS_END);
    let history = add_workload(&mut sim, seed, nodes, WORKLOAD_END);
    let calls: CallLog = Rc::default();
    let settled: Settled = Rc::default();
    for id in 0..CALLERS {
        let (calls, settled) = (calls.clone(), settled.clone());
        let plan = calls::CallerPlan {
            id,
            seed,
            nodes: (1..=nodes).collect(),
            times: calls::CallerTimes {
                until: WORKLOAD_END,
                limit: WORKLOAD_END + CONVERGENCE_BOUND,
                faults_end: FAULTS_END,
            },
            register: (id == 0).then(calls::tool_server),
        };
        sim.client(format!("caller{id}"), async move {
            calls::run_caller(plan, settled, calls, workload::sim_now, client).await
        });
    }
    let mut events = Vec::new();
    let mut log = |now: Duration, line: String| {
        events.push(format!("[{:>7.3}s] {line}", now.as_secs_f64()));
    };
    let mut leaders = LeadersPerTerm::default();
    let mut states = AppliedStates::default();
    let mut nemesis = Nemesis::new(seed, nodes, FAULTS_START);
    let mut converged_at = None;
    let mut healed = false;
    let mut clients_done = false;
    let outcome: Result<(), String> = (|| loop {
        let now = sim.elapsed();
        let leader = observe(&cluster, &mut leaders, &mut states)?;
        cluster.instances.check_fencing()?;
        cluster
            .instances
            .check_starts(mcpfleet::config::Config::default().max_starting_replicas)?;
        cluster.probe.check_plans()?;
        if now < FAULTS_END {
            for line in nemesis.step(&mut sim, &cluster, now, leader) {
                log(now, line);
            }
        } else if !healed {
            healed = true;
            for line in nemesis.heal_all(&mut sim) {
                log(now, line);
            }
            log(now, "faults end: liveness phase".into());
        } else if converged_at.is_none() {
            let acknowledged_since = history.borrow().iter().any(|e| {
                e.at > FAULTS_END && matches!(e.kind, EventKind::Return(Ret::Written { .. }))
            });
            if acknowledged_since && converged(&cluster, nodes) {
                converged_at = Some(now);
                log(
                    now,
                    format!("converged {:?} after the faults ended", now - FAULTS_END),
                );
            } else if now > FAULTS_END + CONVERGENCE_BOUND {
                return Err(format!(
                    "the cluster did not converge within {CONVERGENCE_BOUND:?} after the faults \
                     ended: {}",
                    describe_nodes(&cluster)
                ));
            }
        } else if settled.get().is_none() {
            if converged(&cluster, nodes) && placement_converged(&cluster, nodes).is_ok() {
                settled.set(Some(now));
                log(now, "settled: every replica placed and healthy".into());
            } else if now > WORKLOAD_END + CONVERGENCE_BOUND {
                let placement = placement_converged(&cluster, nodes)
                    .err()
                    .unwrap_or_else(|| "placement converged".into());
                return Err(format!(
                    "the cluster did not settle after the faults: {}; {placement}",
                    describe_nodes(&cluster)
                ));
            }
        } else if clients_done
            && converged(&cluster, nodes)
            && placement_converged(&cluster, nodes).is_ok()
        {
            log(
                now,
                format!(
                    "workload done; {} terms had a leader; every server runs its replicas, healthy",
                    leaders.terms()
                ),
            );
            return Ok(());
        } else if now > WORKLOAD_END + CLIENT_TIMEOUT + CONVERGENCE_BOUND {
            let placement = placement_converged(&cluster, nodes)
                .err()
                .unwrap_or_else(|| "placement converged".into());
            return Err(format!(
                "the workload did not finish, or the cluster did not settle after it: {}; {placement}",
                describe_nodes(&cluster)
            ));
        }
        clients_done = sim.step().map_err(|e| e.to_string())? || clients_done;
    })();
    let outcome = outcome.and_then(|()| {
        let final_state = final_state(&cluster);
        let nodes: Vec<u64> = (1..=nodes).collect();
        let call_stats = check_calls(
            &calls.borrow(),
            &cluster.instances.runs(),
            settled.get(),
            FAULTS_END,
            &nodes,
        )?;
        log(
            sim.elapsed(),
            format!(
                "tool calls: {} sent, {} done, none ran twice, every done call ran once; {} after the cluster settled, all done",
                call_stats.calls, call_stats.done, call_stats.after_settle
            ),
        );
        let stats = check_history(&history.borrow(), Some(&final_state))?;
        log(
            sim.elapsed(),
            format!(
                "history: {} operations, {} writes acknowledged, {} outcomes unknown; linearizable (decided in {} steps), nothing lost; final revision {}; {} applied indexes compared",
                stats.operations,
                stats.acknowledged_writes,
                stats.unknown_outcomes,
                stats.linearizability_steps,
                final_state.revision,
                states.indexes()
            ),
        );
        Ok(())
    });
    let mut report = report(seed, &sim, &events, &cluster.disks, &history.borrow());
    report.failure = outcome.err();
    report
}
