//! The write-storm scenario: writes as fast as the cluster answers them, through every
//! node, while now and then one follower stops hearing from the leader. Its forwarded
//! writes still reach the leader and are applied, but the answers are lost, so a
//! second later it sends them again, after many other writes have committed.
//!
//! Besides the usual checked clients, each writer is the only one to write its own
//! key, and compare-and-sets it with the revision it last got. So a "mismatch" answer
//! after a definite one can only mean that an earlier attempt of that very write was
//! applied and the retry was applied again (and refused), instead of getting the
//! first answer.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use mcpfleet::proto::v1 as pb;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tonic::Code;

use super::{add_workload, checked_operations, lan_sim, observe, report, settled};
use crate::checkers::{AppliedStates, LeadersPerTerm};
use crate::workload::{self, CLIENT_TIMEOUT};
use crate::{add_nodes, client, cluster_configs, host_name};

/// Writers start.
const START: Duration = Duration::from_secs(1);
/// The first cut.
const CUTS_START: Duration = Duration::from_secs(2);
/// No operation starts after this.
const END: Duration = Duration::from_secs(12);
/// Sole writers, each closed-loop on its own key.
const WRITERS: u32 = 36;
/// How long a follower hears nothing from the leader: longer than the 1 s a node
/// waits for the answer to a forwarded write before it sends it again.
const CUT: Duration = Duration::from_millis(1_300);
/// Time from one cut's start to the next one's.
const CUT_EVERY: Duration = Duration::from_millis(2_500);

/// The workload's spec, but for no node (no node has the tag): the writes churn only
/// the registry.
fn spec(key: &str, value: &str) -> pb::ServerSpec {
    pb::ServerSpec {
        node_tags: vec!["nowhere".into()],
        ..workload::spec(key, value)
    }
}

/// One sole writer of key `storm-{id}` until `END`; what it finds wrong goes to
/// `wrong`, and it counts its acknowledged writes in `written`.
async fn sole_writer(
    id: u32,
    seed: u64,
    wrong: Rc<RefCell<Vec<String>>>,
    written: Rc<Cell<u64>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut rng =
        SmallRng::seed_from_u64(seed ^ (u64::from(id) + 101).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let key = format!("storm-{id}");
    let mut apis = std::collections::BTreeMap::new();
    let now = || turmoil::sim_elapsed().unwrap_or_default();
    tokio::time::sleep(START).await;
    // The revision the key has, when known for certain (0: it does not exist).
    let mut known: Option<u64> = Some(0);
    let mut number = 0u64;
    while now() < END {
        let node = rng.gen_range(1..=3u64);
        let api = apis.entry(node).or_insert_with(|| client(node));
        let Some(expected) = known else {
            let read = api.get_server(pb::GetServerRequest {
                name: key.clone(),
                stale: false,
            });
            match tokio::time::timeout(CLIENT_TIMEOUT, read).await {
                Ok(Ok(found)) => {
                    known = found.into_inner().server.map(|s| s.mod_revision);
                }
                Ok(Err(status)) if status.code() == Code::NotFound => known = Some(0),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
            continue;
        };
        number += 1;
        let write = api.put_server(pb::PutServerRequest {
            spec: Some(spec(&key, &format!("w{id}-{number}"))),
            expected_revision: Some(expected),
        });
        match tokio::time::timeout(CLIENT_TIMEOUT, write).await {
            Ok(Ok(answer)) => {
                let revision = answer.into_inner().revision;
                if revision <= expected {
                    wrong.borrow_mut().push(format!(
                        "{key}: write {number} through node {node} answered revision \
                         {revision}, not after {expected}"
                    ));
                }
                written.set(written.get() + 1);
                known = Some(revision);
            }
            Ok(Err(status)) if status.code() == Code::FailedPrecondition => {
                wrong.borrow_mut().push(format!(
                    "{key}: write {number} through node {node} at {:?} expected revision \
                     {expected}, which nobody else could change, and was answered \"{}\": an \
                     earlier attempt of it was applied and the retry applied again",
                    now(),
                    status.message()
                ));
                known = None;
            }
            // Unknown: it may have been applied.
            _ => known = None,
        }
    }
    Ok(())
}

/// Runs the scenario for `seed`.
pub fn write_storm(seed: u64) -> super::Report {
    let mut sim = lan_sim(seed);
    let cluster = add_nodes(&mut sim, seed, cluster_configs(3), Duration::ZERO);
    let history = add_workload(&mut sim, seed, 3, END);
    let wrong: Rc<RefCell<Vec<String>>> = Rc::default();
    let written: Rc<Cell<u64>> = Rc::default();
    for id in 0..WRITERS {
        let (wrong, written) = (wrong.clone(), written.clone());
        sim.client(format!("writer{id}"), async move {
            sole_writer(id, seed, wrong, written).await
        });
    }
    let mut events = Vec::new();
    let mut leaders = LeadersPerTerm::default();
    let mut states = AppliedStates::default();
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5707_4d00);
    let mut next_cut = CUTS_START;
    let mut cut: Option<(u64, u64, Duration)> = None;
    let mut cuts = 0;
    let mut clients_done = false;
    let outcome: Result<(), String> = (|| loop {
        let now = sim.elapsed();
        let leader = observe(&cluster, &mut leaders, &mut states)?;
        if let Some(line) = wrong.borrow().first() {
            return Err(line.clone());
        }
        if let Some((from, to, until)) = cut {
            if now >= until {
                sim.repair_oneway(host_name(from).as_str(), host_name(to).as_str());
                cut = None;
            }
        } else if now >= next_cut && now + CUT < END {
            next_cut += CUT_EVERY;
            if let Some(leader) = leader {
                let followers: Vec<u64> = (1..=3).filter(|n| *n != leader).collect();
                let follower = followers[rng.gen_range(0..followers.len())];
                sim.partition_oneway(host_name(leader).as_str(), host_name(follower).as_str());
                cut = Some((leader, follower, now + CUT));
                cuts += 1;
                events.push(format!(
                    "[{:>7.3}s] node {follower} hears nothing from the leader, node {leader}, \
                     for {CUT:?}",
                    now.as_secs_f64()
                ));
            }
        }
        if settled(now, END, clients_done, &cluster, "the storm")? {
            return Ok(());
        }
        clients_done = sim.step().map_err(|e| e.to_string())? || clients_done;
    })();
    let outcome = outcome.and_then(|()| {
        if let Some(line) = wrong.borrow().first() {
            return Err(line.clone());
        }
        let operations = checked_operations(&history, &cluster)?;
        events.push(format!(
            "{cuts} cuts; {} sole writes acknowledged, none applied twice; checked clients: {} \
             operations, linearizable, nothing lost",
            written.get(),
            operations
        ));
        Ok(())
    });
    let mut report = report(seed, &sim, &events, &cluster.disks, &history.borrow());
    report.failure = outcome.err();
    report
}
