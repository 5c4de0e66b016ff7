//! The scale scenario: a cluster of `nodes` (100 by default: 5 voters from the initial
//! cluster and 95 learners that join at once) and `servers` registered servers (10,000
//! by default) of one replica each.
//!
//! 1. Every node joins; one learner then crashes, so that it misses what follows.
//! 2. The servers are written in batches; every one must run healthy (placement
//!    converges).
//! 3. The crashed learner restarts: the log it missed has been compacted, so it catches
//!    up from a snapshot.
//! 4. For a window of steady state, the leader's heartbeat load is counted.
//! 5. A tenth of the nodes (one voter that does not lead, and learners) crash for good.
//!    Every server must run healthy on a live node again (placement converges after the
//!    loss).
//!
//! It reports what each phase took in simulated time, the planner's wall time for a
//! round on the leader's registry, the size of the plans, the snapshot's size and the
//! time to install it, and the heartbeats the leader answered per second, with their
//! bytes.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mcpfleet::config::Config;
use mcpfleet::env::Disk;
use mcpfleet::proto::v1 as pb;
use mcpfleet::registry::{NodeStatus, ReplicaState};

use super::{report, Report};
use crate::{add_nodes, client, cluster_configs, host_name, node_addr, SimCluster, NODE_PORT};

/// Voters of the initial cluster; every further node joins as a learner.
const VOTERS: u64 = 5;
/// Servers written per request.
const BATCH: usize = 250;
/// How often the scenario looks at the whole registry while it waits (in simulated
/// time), and how often at what is cheap to look at.
const LOOK_EVERY: Duration = Duration::from_millis(250);
const LOOK_CLOSELY: Duration = Duration::from_millis(10);
/// How long each phase may take.
const JOIN_BOUND: Duration = Duration::from_secs(120);
const PLACEMENT_BOUND: Duration = Duration::from_secs(300);
const CATCH_UP_BOUND: Duration = Duration::from_secs(60);
const RECOVERY_BOUND: Duration = Duration::from_secs(120);
/// The window over which the leader's heartbeats are counted.
const HEARTBEAT_WINDOW: Duration = Duration::from_secs(10);
/// Snapshots are made more often than by default (2,000 and 500), so that the log the
/// crashed learner misses is compacted even in a small run: each log entry carries a
/// batch of commands.
const SNAPSHOT_AFTER_LOGS: u64 = 200;
const LOGS_KEPT_AFTER_SNAPSHOT: u64 = 50;
/// Planner rounds timed on the leader's registry (the median is reported).
const PLANNER_RUNS: usize = 5;

/// The scenario's server `i`: a simulated stdio server with one replica.
fn server(i: usize) -> pb::PutServerRequest {
    let mut put = super::spec(&format!("s{i:05}"));
    put.spec.as_mut().expect("a spec").replicas = 1;
    put
}

/// Steps the simulation, looking at `reached` every `look_every`, until it holds or
/// `limit` of simulated time has passed.
fn wait_for(
    sim: &mut turmoil::Sim<'_>,
    look_every: Duration,
    limit: Duration,
    what: &str,
    mut reached: impl FnMut() -> bool,
) -> Result<Duration, String> {
    let started = sim.elapsed();
    let mut next_look = started;
    loop {
        if sim.elapsed() >= next_look {
            if reached() {
                return Ok(sim.elapsed() - started);
            }
            next_look = sim.elapsed() + look_every;
        }
        if sim.elapsed() - started > limit {
            return Err(format!("{what} within {limit:?}"));
        }
        sim.step().map_err(|e| e.to_string())?;
    }
}

/// What `read` finds in node `id`'s Raft metrics, if it runs.
fn metrics_of<R>(
    cluster: &SimCluster,
    id: u64,
    read: impl FnOnce(&mcpfleet::raft::RaftMetrics) -> R,
) -> Option<R> {
    cluster
        .probe
        .with_nodes(|nodes| nodes.get(&id).map(|w| read(&w.metrics.borrow())))
}

/// The leader as node `observer` sees it.
fn leader_of(cluster: &SimCluster, observer: u64) -> Option<u64> {
    metrics_of(cluster, observer, |m| m.current_leader).flatten()
}

/// Members and voters as node `observer` sees the membership.
fn membership(cluster: &SimCluster, observer: u64) -> Option<(usize, usize)> {
    metrics_of(cluster, observer, |m| {
        let membership = m.membership_config.membership();
        (membership.nodes().count(), membership.voter_ids().count())
    })
}

/// Node `id`'s last applied index (0 if it runs but applied nothing).
fn applied_of(cluster: &SimCluster, id: u64) -> Option<u64> {
    metrics_of(cluster, id, |m| m.last_applied.map_or(0, |l| l.index))
}

/// Servers on node `observer`'s registry, and how many of them have every replica
/// healthy on a node in `live` that the registry has up.
fn placed(cluster: &SimCluster, observer: u64, live: &BTreeSet<u64>) -> (usize, usize) {
    cluster.probe.with_nodes(|nodes| {
        let Some(window) = nodes.get(&observer) else {
            return (0, 0);
        };
        let applied = window.view.read();
        let registry = &applied.registry;
        let healthy = registry
            .servers
            .iter()
            .filter(|(name, record)| {
                (0..record.spec.replicas).all(|slot| {
                    let key = ((*name).clone(), slot);
                    registry.assignments.get(&key).is_some_and(|a| {
                        live.contains(&a.node_id)
                            && registry
                                .nodes
                                .get(&a.node_id)
                                .is_some_and(|n| n.status == NodeStatus::Up)
                            && registry.health.get(&key).is_some_and(|h| {
                                h.state == ReplicaState::Healthy && h.node_id == a.node_id
                            })
                    })
                })
            })
            .count();
        (registry.servers.len(), healthy)
    })
}

/// The wall time of a planner round on node `id`'s registry (the median of a few), and
/// the moves the plan makes.
fn time_planner(cluster: &SimCluster, id: u64) -> (Duration, usize) {
    cluster.probe.with_nodes(|nodes| {
        let applied = nodes[&id].view.read();
        let mut times = Vec::new();
        let mut moves = 0;
        for _ in 0..PLANNER_RUNS {
            let started = Instant::now();
            let plan = mcpfleet::scheduler::plan_registry(&applied.registry);
            times.push(started.elapsed());
            moves = plan.moves.len();
        }
        times.sort();
        (times[times.len() / 2], moves)
    })
}

/// Where each replica of node `id`'s registry is assigned.
fn assignments(cluster: &SimCluster, id: u64) -> BTreeMap<(String, u32), u64> {
    cluster.probe.with_nodes(|nodes| {
        let applied = nodes[&id].view.read();
        applied
            .registry
            .assignments
            .iter()
            .map(|(key, a)| (key.clone(), a.node_id))
            .collect()
    })
}

fn ms(duration: Duration) -> u128 {
    duration.as_millis()
}

/// Runs the scenario; a failure carries the events before it.
pub fn scale(seed: u64, nodes: u64, servers: usize) -> Result<Report, String> {
    let mut events = Vec::new();
    run(seed, nodes, servers, &mut events).map_err(|failure| {
        let mut lines = events.clone();
        lines.push(failure);
        lines.join("\n")
    })
}

fn run(seed: u64, nodes: u64, servers: usize, events: &mut Vec<String>) -> Result<Report, String> {
    if nodes <= VOTERS + 1 {
        return Err(format!(
            "the scale scenario needs more than {} nodes",
            VOTERS + 1
        ));
    }
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(1_200))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(10))
        .tcp_capacity(4096)
        .build();
    let mut configs = cluster_configs(VOTERS);
    for id in VOTERS + 1..=nodes {
        configs.push(Config {
            id,
            listen: format!("0.0.0.0:{NODE_PORT}"),
            advertise: node_addr(id),
            initial_cluster: BTreeMap::new(),
            join: Some(node_addr(1 + id % VOTERS)),
            ..Config::default()
        });
    }
    for config in &mut configs {
        config.snapshot_after_logs = SNAPSHOT_AFTER_LOGS;
        config.logs_kept_after_snapshot = LOGS_KEPT_AFTER_SNAPSHOT;
    }
    let cluster = add_nodes(&mut sim, seed, configs, Duration::ZERO);
    let all: BTreeSet<u64> = (1..=nodes).collect();

    // 1. Every node joins.
    let joined = wait_for(
        &mut sim,
        LOOK_CLOSELY,
        JOIN_BOUND,
        "not every node joined",
        || membership(&cluster, 1) == Some((nodes as usize, VOTERS as usize)),
    )?;
    events.push(format!(
        "[{:?}] {nodes} members ({VOTERS} voters), {} ms after the start",
        sim.elapsed(),
        ms(joined)
    ));
    // The learner that misses the writes and catches up from a snapshot.
    let late = nodes;
    cluster.crash(&mut sim, late);
    let mut live = all.clone();
    live.remove(&late);

    // 2. The servers are written, and placed.
    let written = Rc::new(RefCell::new(None::<Result<u64, String>>));
    let done = written.clone();
    sim.client("operator", async move {
        let mut revision = 0;
        let mut next = 0;
        while next < servers {
            let puts: Vec<_> = (next..servers.min(next + BATCH)).map(server).collect();
            let count = puts.len();
            let mut attempts = 0;
            loop {
                match client(1 + next as u64 % VOTERS)
                    .put_servers(pb::PutServersRequest { puts: puts.clone() })
                    .await
                {
                    Ok(response) => {
                        revision = response.into_inner().revision;
                        break;
                    }
                    Err(status) if attempts < 20 => {
                        attempts += 1;
                        tracing::debug!(%status, "batch not written yet");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(status) => {
                        *done.borrow_mut() = Some(Err(status.to_string()));
                        return Ok(());
                    }
                }
            }
            next += count;
        }
        *done.borrow_mut() = Some(Ok(revision));
        Ok(())
    });
    let writes_took = wait_for(
        &mut sim,
        LOOK_CLOSELY,
        PLACEMENT_BOUND,
        "the servers were not written",
        || written.borrow().is_some(),
    )?;
    let revision = written.borrow().clone().expect("set")?;
    events.push(format!(
        "[{:?}] {servers} servers written in batches of {BATCH} ({} ms), revision {revision}",
        sim.elapsed(),
        ms(writes_took)
    ));
    let leader = leader_of(&cluster, 1).ok_or("no leader after the writes")?;
    let placement_took = wait_for(
        &mut sim,
        LOOK_EVERY,
        PLACEMENT_BOUND,
        "not every server ran healthy",
        || placed(&cluster, leader, &live) == (servers, servers),
    )?;
    events.push(format!(
        "[{:?}] every server runs healthy, {} ms after the last write",
        sim.elapsed(),
        ms(placement_took)
    ));
    let leader = leader_of(&cluster, 1).ok_or("no leader after placement")?;
    let (planner, moves) = time_planner(&cluster, leader);
    events.push(format!(
        "planner round on the leader's registry: {:.1} ms (wall), {moves} moves",
        planner.as_secs_f64() * 1e3
    ));

    // 3. The late learner catches up from a snapshot.
    let snapshot_bytes = cluster.disks[&leader]
        .get_meta("snapshot")
        .map_err(|e| e.to_string())?
        .map_or(0, |b| b.len());
    let target = applied_of(&cluster, leader).ok_or("the leader stopped")?;
    sim.bounce(host_name(late));
    live.insert(late);
    let caught_up = wait_for(
        &mut sim,
        LOOK_CLOSELY,
        CATCH_UP_BOUND,
        "the restarted learner did not catch up",
        || applied_of(&cluster, late).is_some_and(|applied| applied >= target),
    )?;
    let installed = metrics_of(&cluster, late, |m| m.snapshot.map_or(0, |l| l.index)).unwrap_or(0);
    if installed == 0 {
        return Err(format!(
            "node {late} caught up without a snapshot: the log was never compacted"
        ));
    }
    events.push(format!(
        "[{:?}] node {late} restarted and caught up to index {target} in {} ms, from a \
         snapshot at index {installed}; the leader's snapshot is {snapshot_bytes} bytes",
        sim.elapsed(),
        ms(caught_up)
    ));

    // 4. The leader's heartbeat load over a window of steady state.
    let (count_before, bytes_before) = cluster.probe.heartbeats();
    let window_start = sim.elapsed();
    while sim.elapsed() - window_start < HEARTBEAT_WINDOW {
        sim.step().map_err(|e| e.to_string())?;
    }
    let (count_after, bytes_after) = cluster.probe.heartbeats();
    let seconds = HEARTBEAT_WINDOW.as_secs_f64();
    events.push(format!(
        "heartbeats taken in by the leader: {:.0}/s, {:.0} bytes/s ({} bytes each on average)",
        (count_after - count_before) as f64 / seconds,
        (bytes_after - bytes_before) as f64 / seconds,
        (bytes_after - bytes_before) / (count_after - count_before).max(1)
    ));

    // 5. A tenth of the nodes crash for good.
    let leader = leader_of(&cluster, 1).ok_or("no leader before the loss")?;
    let lost_count = (nodes / 10).max(1) as usize;
    let voter = (1..=VOTERS).find(|id| *id != leader).expect("five voters");
    let mut lost: BTreeSet<u64> = [voter].into();
    // Learners picked by the seed.
    let mut pick = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while lost.len() < lost_count {
        pick = pick.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let id = VOTERS + 1 + (pick >> 33) % (nodes - VOTERS);
        lost.insert(id);
    }
    let before = assignments(&cluster, leader);
    let to_move = before.values().filter(|n| lost.contains(n)).count();
    for id in &lost {
        cluster.crash(&mut sim, *id);
        live.remove(id);
    }
    events.push(format!(
        "[{:?}] crashed {} nodes for good ({lost:?}), which ran {to_move} replicas",
        sim.elapsed(),
        lost.len()
    ));
    let (plans_before, placements_before) = cluster.probe.plans();
    let observer = *live.iter().next().expect("live nodes");
    let marked_down = wait_for(
        &mut sim,
        LOOK_CLOSELY,
        RECOVERY_BOUND,
        "the lost nodes were not marked down",
        || {
            cluster.probe.with_nodes(|nodes| {
                let Some(leader) = nodes
                    .get(&observer)
                    .and_then(|w| w.metrics.borrow().current_leader)
                else {
                    return false;
                };
                nodes.get(&leader).is_some_and(|w| {
                    let applied = w.view.read();
                    lost.iter().all(|id| {
                        applied
                            .registry
                            .nodes
                            .get(id)
                            .is_some_and(|n| n.status == NodeStatus::Down)
                    })
                })
            })
        },
    )?;
    events.push(format!(
        "[{:?}] the leader's registry has them down, {} ms after the loss",
        sim.elapsed(),
        ms(marked_down)
    ));
    let recovered = marked_down
        + wait_for(
            &mut sim,
            LOOK_EVERY,
            RECOVERY_BOUND,
            "not every server ran healthy again after the loss",
            || {
                leader_of(&cluster, observer).is_some_and(|leader| {
                    live.contains(&leader) && placed(&cluster, leader, &live) == (servers, servers)
                })
            },
        )?;
    let leader = leader_of(&cluster, observer).ok_or("no leader after the loss")?;
    let (plans_after, placements_after) = cluster.probe.plans();
    let after = assignments(&cluster, leader);
    let moved = before
        .iter()
        .filter(|(key, node)| after.get(*key) != Some(*node))
        .count();
    events.push(format!(
        "[{:?}] every server runs healthy again, {} ms after the loss: {moved} replicas \
         moved, in {} plans of {} placements",
        sim.elapsed(),
        ms(recovered),
        plans_after - plans_before,
        placements_after - placements_before
    ));
    let (planner, moves) = time_planner(&cluster, leader);
    events.push(format!(
        "planner round on the leader's registry: {:.1} ms (wall), {moves} moves",
        planner.as_secs_f64() * 1e3
    ));
    Ok(report(seed, &sim, events, &cluster.disks, &[]))
}
