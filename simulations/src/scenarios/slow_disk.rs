//! The slow-disk scenario: one node's fsync takes 100 ms for several seconds while
//! clients write through every node. Half the seeds slow the leader's disk, half a
//! follower's. A slow disk makes writes slower, but it must not look like a dead node:
//! no node may start an election while it lasts, and no leader may change.

use std::time::Duration;

use super::{add_workload, checked_operations, describe_nodes, lan_sim, observe, report, settled};
use crate::checkers::{AppliedStates, LeadersPerTerm};
use crate::{add_nodes, cluster_configs};

/// The disk becomes slow.
const SLOW_FROM: Duration = Duration::from_secs(3);
/// The disk is fast again.
const SLOW_UNTIL: Duration = Duration::from_secs(9);
/// No operation starts after this.
const END: Duration = Duration::from_secs(11);
/// How long each fsync of the slow disk takes: the slowest the nodes promise to bear.
pub const FSYNC: Duration = mcpfleet::control::TOLERATED_FSYNC;

/// The highest term any node is in.
fn highest_term(cluster: &crate::SimCluster) -> u64 {
    cluster.probe.with_nodes(|nodes| {
        nodes
            .values()
            .map(|window| window.metrics.borrow().current_term)
            .max()
            .unwrap_or(0)
    })
}

/// Runs the scenario for `seed`.
pub fn slow_disk(seed: u64) -> super::Report {
    let mut sim = lan_sim(seed);
    let cluster = add_nodes(&mut sim, seed, cluster_configs(3), Duration::ZERO);
    let history = add_workload(&mut sim, seed, 3, END);
    let slow_leader = seed.is_multiple_of(2);
    let mut events = Vec::new();
    let mut leaders = LeadersPerTerm::default();
    let mut states = AppliedStates::default();
    // While slow: the node, its term when the slowness began, and the leader then.
    let mut slow: Option<(u64, u64, u64)> = None;
    let mut slowed = false;
    let mut clients_done = false;
    let outcome: Result<(), String> = (|| loop {
        let now = sim.elapsed();
        let leader = observe(&cluster, &mut leaders, &mut states)?;
        if let Some((node, term, was_leading)) = slow {
            let term_now = highest_term(&cluster);
            if term_now != term || leader.is_some_and(|l| l != was_leading) {
                return Err(format!(
                    "[{:.3}s] with node {node}'s fsync at {FSYNC:?}, an election began: \
                     term {term} became {term_now}, leader node {was_leading} is now {leader:?}",
                    now.as_secs_f64()
                ));
            }
            if now >= SLOW_UNTIL {
                cluster.disks[&node].set_sync_delay(Duration::ZERO);
                events.push(format!(
                    "[{:>7.3}s] node {node}'s disk is fast again; still term {term}",
                    now.as_secs_f64()
                ));
                slow = None;
            }
        } else if !slowed && now >= SLOW_FROM {
            let Some(leader) = leader else {
                return Err(format!(
                    "no leader at {:.3}s, before any fault: {}",
                    now.as_secs_f64(),
                    describe_nodes(&cluster)
                ));
            };
            let node = if slow_leader { leader } else { leader % 3 + 1 };
            cluster.disks[&node].set_sync_delay(FSYNC);
            let term = highest_term(&cluster);
            events.push(format!(
                "[{:>7.3}s] node {node}'s fsync takes {FSYNC:?} (the leader is node {leader}, \
                 term {term})",
                now.as_secs_f64()
            ));
            slow = Some((node, term, leader));
            slowed = true;
        }
        if settled(now, END, clients_done, &cluster, "the slow disk")? {
            return Ok(());
        }
        clients_done = sim.step().map_err(|e| e.to_string())? || clients_done;
    })();
    let outcome = outcome.and_then(|()| {
        let operations = checked_operations(&history, &cluster)?;
        events.push(format!(
            "no election while the disk was slow; checked clients: {} operations, \
             linearizable, nothing lost",
            operations
        ));
        Ok(())
    });
    let mut report = report(seed, &sim, &events, &cluster.disks, &history.borrow());
    report.failure = outcome.err();
    report
}
