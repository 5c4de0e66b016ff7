//! The autopilot scenario: five voters from the initial cluster, and three more nodes
//! that join through node 1 at the same moment, so that their membership changes meet
//! (a join that met another change under way once made its node give up). Once the
//! three are learners, the leader and another voter crash for good. Within
//! `PROMOTION_BOUND` two learners must be voters in their place, on every live node,
//! and a write through a promoted node must be acknowledged.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use mcpfleet::config::Config;

use super::{lan_sim, put_until_acknowledged, report, Report};
use crate::{add_nodes, cluster_configs, node_addr, SimCluster, NODE_PORT};

const VOTERS: u64 = 5;
const LEARNERS: u64 = 3;
const DEAD_VOTER_AFTER_MS: u64 = 4_000;
const LEARNER_STABLE_MS: u64 = 2_000;
/// How long the joins may take, from the start.
const JOIN_BOUND: Duration = Duration::from_secs(20);
/// How long after the crashes both replacements may take: the threshold, counted from
/// the new leader's election, and the membership changes.
const PROMOTION_BOUND: Duration = Duration::from_millis(DEAD_VOTER_AFTER_MS + 4_000);

/// (voters, learners) as node `id` sees the membership, if it runs.
fn roles(cluster: &SimCluster, id: u64) -> Option<(BTreeSet<u64>, BTreeSet<u64>)> {
    cluster.probe.with_nodes(|nodes| {
        let metrics = nodes.get(&id)?.metrics.borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let learners = membership
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| !voters.contains(id))
            .collect();
        Some((voters, learners))
    })
}

fn leader(cluster: &SimCluster, id: u64) -> Option<u64> {
    cluster
        .probe
        .with_nodes(|nodes| nodes.get(&id)?.metrics.borrow().current_leader)
}

/// Steps the simulation until `reached`, or fails once `limit` of simulated time
/// has passed.
fn step_until(
    sim: &mut turmoil::Sim<'_>,
    limit: Duration,
    what: &str,
    reached: impl Fn() -> bool,
) -> Result<(), String> {
    let deadline = sim.elapsed() + limit;
    while !reached() {
        if sim.elapsed() > deadline {
            return Err(format!("{what} within {limit:?}"));
        }
        sim.step().map_err(|e| e.to_string())?;
    }
    Ok(())
}

pub fn autopilot(seed: u64) -> Result<Report, String> {
    let mut sim = lan_sim(seed);
    let mut configs = cluster_configs(VOTERS);
    for id in VOTERS + 1..=VOTERS + LEARNERS {
        configs.push(Config {
            id,
            listen: format!("0.0.0.0:{NODE_PORT}"),
            advertise: node_addr(id),
            initial_cluster: BTreeMap::new(),
            join: Some(node_addr(1)),
            ..Config::default()
        });
    }
    for config in &mut configs {
        config.dead_voter_after_ms = DEAD_VOTER_AFTER_MS;
        config.learner_stable_ms = LEARNER_STABLE_MS;
    }
    let cluster = add_nodes(&mut sim, seed, configs, Duration::ZERO);
    let mut events = Vec::new();
    let first_voters: BTreeSet<u64> = (1..=VOTERS).collect();
    let joiners: BTreeSet<u64> = (VOTERS + 1..=VOTERS + LEARNERS).collect();
    step_until(
        &mut sim,
        JOIN_BOUND,
        "the joining nodes were not all learners",
        || roles(&cluster, 1).is_some_and(|(v, l)| v == first_voters && l == joiners),
    )?;
    events.push(format!(
        "[{:?}] voters {first_voters:?}, learners {joiners:?}",
        sim.elapsed()
    ));
    // Every learner is stable before the crashes, so that both may be promoted.
    let stable_at = sim.elapsed() + Duration::from_millis(LEARNER_STABLE_MS);
    while sim.elapsed() < stable_at {
        sim.step().map_err(|e| e.to_string())?;
    }
    let leader = leader(&cluster, 1).ok_or("no leader before the crashes")?;
    let other = first_voters
        .iter()
        .copied()
        .find(|id| *id != leader)
        .expect("five voters");
    let dead: BTreeSet<u64> = [leader, other].into();
    for id in &dead {
        cluster.crash(&mut sim, *id);
    }
    let crashed_at = sim.elapsed();
    events.push(format!(
        "[{crashed_at:?}] crashed voters {dead:?} for good (node {leader} led)"
    ));
    let live: Vec<u64> = (1..=VOTERS + LEARNERS)
        .filter(|id| !dead.contains(id))
        .collect();
    let replaced = |voters: &BTreeSet<u64>| {
        voters.len() == VOTERS as usize
            && voters.is_disjoint(&dead)
            && voters.intersection(&joiners).count() == 2
    };
    step_until(
        &mut sim,
        PROMOTION_BOUND,
        "the dead voters were not replaced on every live node",
        || {
            live.iter()
                .all(|id| roles(&cluster, *id).is_some_and(|(v, _)| replaced(&v)))
        },
    )?;
    let (voters, learners) = roles(&cluster, live[0]).ok_or("no live node")?;
    events.push(format!(
        "[{:?}] voters {voters:?}, learners {learners:?}, {:?} after the crashes",
        sim.elapsed(),
        sim.elapsed() - crashed_at
    ));
    let promoted = *voters.intersection(&joiners).next().expect("two promoted");
    let acknowledged = Rc::new(RefCell::new(None));
    let found = acknowledged.clone();
    sim.client("client-after", async move {
        let revision = put_until_acknowledged(promoted, "after").await?;
        *found.borrow_mut() = Some(revision);
        Ok(())
    });
    step_until(
        &mut sim,
        Duration::from_secs(10),
        "a write through a promoted node was not acknowledged",
        || acknowledged.borrow().is_some(),
    )?;
    events.push(format!(
        "[{:?}] a write through node {promoted} acknowledged at revision {}",
        sim.elapsed(),
        acknowledged.borrow().unwrap_or_default()
    ));
    Ok(report(seed, &sim, &events, &cluster.disks, &[]))
}
