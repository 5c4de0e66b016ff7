//! The nemesis: injects faults drawn from the seed's RNG and heals them.
//!
//! Network faults are kept as a set and re-applied as a whole whenever one starts or
//! ends, so that overlapping faults on one link cannot heal each other by accident.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::{host_name, SimCluster};

/// Message latency on a healthy link (a LAN).
pub const LAN_MAX_LATENCY: Duration = Duration::from_millis(10);
/// At most this many faults are active at once.
pub const MAX_ACTIVE_FAULTS: usize = 3;

/// One fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `node` is cut off from every other node, both ways.
    Isolate { node: u64, leader: bool },
    /// The nodes in `minority` are cut off from the rest, both ways.
    Split { minority: Vec<u64> },
    /// Messages from `from` to `to` are lost; the other way works.
    OneWay { from: u64, to: u64 },
    /// The link between `a` and `b` breaks now and then, losing what is in flight.
    Lossy { a: u64, b: u64 },
    /// Messages between `a` and `b` take up to `latency`.
    Slow { a: u64, b: u64, latency: Duration },
    /// The nodes lose power at once (what they had not made durable is gone) and start
    /// again when the fault ends.
    Crash { nodes: Vec<u64>, leader: bool },
    /// An operator drains `node` (`node drain`), and returns it to service when the
    /// fault ends: its replicas move away while it runs.
    Drain { node: u64 },
    /// Every fsync of `node`'s disk takes `latency` (a stalled or contended disk).
    SlowDisk {
        node: u64,
        leader: bool,
        latency: Duration,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let leader = |is: &bool| if *is { " (the leader)" } else { "" };
        match self {
            Fault::Isolate { node, leader: is } => write!(f, "isolate node {node}{}", leader(is)),
            Fault::Split { minority } => write!(f, "split off nodes {minority:?}"),
            Fault::OneWay { from, to } => write!(f, "drop messages from node {from} to node {to}"),
            Fault::Lossy { a, b } => write!(f, "lossy link between nodes {a} and {b}"),
            Fault::Slow { a, b, latency } => {
                write!(f, "slow link between nodes {a} and {b} (up to {latency:?})")
            }
            Fault::Drain { node } => write!(f, "drain node {node}"),
            Fault::SlowDisk {
                node,
                leader: is,
                latency,
            } => write!(
                f,
                "slow disk on node {node}{} (fsync {latency:?})",
                leader(is)
            ),
            Fault::Crash { nodes, leader: is } if nodes.len() == 1 => {
                write!(f, "crash node {}{}", nodes[0], leader(is))
            }
            Fault::Crash { nodes, leader: is } => {
                write!(f, "power loss on nodes {nodes:?}{}", leader(is))
            }
        }
    }
}

/// The nemesis of one run.
pub struct Nemesis {
    rng: SmallRng,
    nodes: Vec<u64>,
    /// Active faults with the time each ends.
    active: Vec<(Fault, Duration)>,
    next_action: Duration,
    /// Operator commands issued (drains), to name their clients.
    operator_calls: u64,
    /// Drained nodes, with the flag that tells their operator to undrain them.
    drains: BTreeMap<u64, Rc<Cell<bool>>>,
    /// Disks made slow by an active fault.
    slow_disks: BTreeMap<u64, std::sync::Arc<mcpfleet::env::MemoryDisk>>,
}

impl Nemesis {
    /// A nemesis for nodes 1..=nodes whose first fault comes at `start`.
    pub fn new(seed: u64, nodes: u64, start: Duration) -> Nemesis {
        Nemesis {
            rng: SmallRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321),
            nodes: (1..=nodes).collect(),
            active: Vec::new(),
            next_action: start,
            operator_calls: 0,
            drains: BTreeMap::new(),
            slow_disks: BTreeMap::new(),
        }
    }

    fn crashed(&self) -> Vec<u64> {
        let mut crashed: Vec<u64> = self
            .active
            .iter()
            .filter_map(|(fault, _)| match fault {
                Fault::Crash { nodes, .. } => Some(nodes.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        crashed.sort_unstable();
        crashed
    }

    /// Ends the faults that are due and perhaps starts a new one; `leader` is the node
    /// that leads now, if any. Returns what it did, for the event log.
    pub fn step(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        cluster: &SimCluster,
        now: Duration,
        leader: Option<u64>,
    ) -> Vec<String> {
        let mut log = Vec::new();
        let (due, kept): (Vec<_>, Vec<_>) = self.active.drain(..).partition(|(_, end)| *end <= now);
        self.active = kept;
        for (fault, _) in &due {
            log.push(format!("heal: {fault}"));
            self.end(sim, fault);
        }
        if now >= self.next_action {
            self.next_action = now + Duration::from_millis(self.rng.gen_range(200..2_000));
            if self.active.len() < MAX_ACTIVE_FAULTS {
                if let Some(fault) = self.draw(leader) {
                    let lasts = match fault {
                        Fault::Crash { .. } => self.rng.gen_range(100..4_000),
                        _ => self.rng.gen_range(300..5_000),
                    };
                    let lasts = Duration::from_millis(lasts);
                    log.push(format!("fault: {fault} for {lasts:?}"));
                    self.start(sim, cluster, &fault);
                    self.active.push((fault, now + lasts));
                }
            }
        }
        if !due.is_empty() || log.iter().any(|l| l.starts_with("fault")) {
            self.apply_network(sim);
        }
        log
    }

    /// Ends every fault: the start of the liveness phase.
    pub fn heal_all(&mut self, sim: &mut turmoil::Sim<'_>) -> Vec<String> {
        let mut log = Vec::new();
        for (fault, _) in std::mem::take(&mut self.active) {
            log.push(format!("heal: {fault}"));
            self.end(sim, &fault);
        }
        self.apply_network(sim);
        log
    }

    fn draw(&mut self, leader: Option<u64>) -> Option<Fault> {
        let crashed = self.crashed();
        let up: Vec<u64> = self
            .nodes
            .iter()
            .copied()
            .filter(|n| !crashed.contains(n))
            .collect();
        let any = |rng: &mut SmallRng| *self.nodes.choose(rng).expect("nodes");
        // Half the time a fault aimed at one node aims at the leader.
        let target = |rng: &mut SmallRng, among: &[u64]| -> Option<(u64, bool)> {
            match leader.filter(|l| among.contains(l)) {
                Some(leader) if rng.gen_bool(0.5) => Some((leader, true)),
                _ => among.choose(rng).map(|n| (*n, leader == Some(*n))),
            }
        };
        let pair = |rng: &mut SmallRng| {
            let a = any(rng);
            let others: Vec<u64> = self.nodes.iter().copied().filter(|n| *n != a).collect();
            (a, *others.choose(rng).expect("at least two nodes"))
        };
        let fault = match self.rng.gen_range(0u32..120) {
            110.. => {
                let (node, leader) = target(&mut self.rng, &self.nodes)?;
                if self.slow_disks.contains_key(&node) {
                    return None;
                }
                let latency = Duration::from_millis(self.rng.gen_range(50..=500));
                Fault::SlowDisk {
                    node,
                    leader,
                    latency,
                }
            }
            100..=109 => {
                let node = any(&mut self.rng);
                if self.drains.contains_key(&node) {
                    return None;
                }
                Fault::Drain { node }
            }
            0..=19 => {
                let (node, leader) = target(&mut self.rng, &self.nodes)?;
                Fault::Isolate { node, leader }
            }
            20..=31 => {
                let size = self.rng.gen_range(1..=self.nodes.len() / 2);
                let mut minority: Vec<u64> = self
                    .nodes
                    .choose_multiple(&mut self.rng, size)
                    .copied()
                    .collect();
                minority.sort_unstable();
                Fault::Split { minority }
            }
            32..=43 => {
                let (from, to) = pair(&mut self.rng);
                Fault::OneWay { from, to }
            }
            44..=57 => {
                let (a, b) = pair(&mut self.rng);
                Fault::Lossy { a, b }
            }
            58..=71 => {
                let (a, b) = pair(&mut self.rng);
                let latency = Duration::from_millis(self.rng.gen_range(50..500));
                Fault::Slow { a, b, latency }
            }
            72..=89 => {
                let (node, leader) = target(&mut self.rng, &up)?;
                Fault::Crash {
                    nodes: vec![node],
                    leader,
                }
            }
            90..=99 => {
                // A majority or more of the cluster loses power at once.
                let majority = self.nodes.len() / 2 + 1;
                if up.len() < majority {
                    return None;
                }
                let size = self.rng.gen_range(majority..=up.len());
                let mut nodes: Vec<u64> =
                    up.choose_multiple(&mut self.rng, size).copied().collect();
                nodes.sort_unstable();
                let leader = leader.is_some_and(|l| nodes.contains(&l));
                Fault::Crash { nodes, leader }
            }
        };
        Some(fault)
    }

    fn start(&mut self, sim: &mut turmoil::Sim<'_>, cluster: &SimCluster, fault: &Fault) {
        match fault {
            Fault::Crash { nodes, .. } => {
                for node in nodes {
                    cluster.crash(sim, *node);
                }
            }
            Fault::Drain { node } => self.drain(sim, *node),
            Fault::SlowDisk { node, latency, .. } => {
                let disk = cluster.disks[node].clone();
                disk.set_sync_delay(*latency);
                self.slow_disks.insert(*node, disk);
            }
            _ => {}
        }
    }

    fn end(&mut self, sim: &mut turmoil::Sim<'_>, fault: &Fault) {
        match fault {
            Fault::Crash { nodes, .. } => {
                for node in nodes {
                    sim.bounce(host_name(*node));
                }
            }
            Fault::Drain { node } => {
                if let Some(done) = self.drains.remove(node) {
                    done.set(true);
                }
            }
            Fault::SlowDisk { node, .. } => {
                if let Some(disk) = self.slow_disks.remove(node) {
                    disk.set_sync_delay(Duration::ZERO);
                }
            }
            _ => {}
        }
    }

    /// An operator drains `node` through any node (retried until the cluster takes it),
    /// waits for the fault to end, then undrains it until the cluster shows it up again
    /// (a drain whose answer was lost may still land late).
    fn drain(&mut self, sim: &mut turmoil::Sim<'_>, node: u64) {
        self.operator_calls += 1;
        let nodes = self.nodes.clone();
        let first = self.rng.gen_range(0..nodes.len());
        let done = Rc::new(Cell::new(false));
        self.drains.insert(node, done.clone());
        sim.client(format!("operator-{}", self.operator_calls), async move {
            let via = |attempt: usize| nodes[(first + attempt) % nodes.len()];
            let set = |status: &str| mcpfleet::proto::v1::SetNodeStatusRequest {
                id: node,
                status: status.to_string(),
            };
            for attempt in 0..100 {
                if crate::client(via(attempt))
                    .set_node_status(set("draining"))
                    .await
                    .is_ok()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            while !done.get() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            for attempt in 0..100 {
                let mut client = crate::client(via(attempt));
                let _ = client.set_node_status(set("up")).await;
                let status = client
                    .fleet_status(mcpfleet::proto::v1::FleetStatusRequest {
                        stale: false,
                        ..Default::default()
                    })
                    .await;
                if let Ok(status) = status {
                    if status
                        .into_inner()
                        .nodes
                        .iter()
                        .any(|n| n.id == node && n.admin != "draining")
                    {
                        return Ok(());
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(format!("node {node} could not be undrained").into())
        });
    }

    /// Makes every link between nodes healthy, then applies the active network faults.
    fn apply_network(&self, sim: &mut turmoil::Sim<'_>) {
        for (i, a) in self.nodes.iter().enumerate() {
            for b in &self.nodes[i + 1..] {
                let (a, b) = (host_name(*a), host_name(*b));
                sim.repair(a.as_str(), b.as_str());
                sim.set_link_fail_rate(a.as_str(), b.as_str(), 0.0);
                sim.set_link_max_message_latency(a.as_str(), b.as_str(), LAN_MAX_LATENCY);
            }
        }
        for (fault, _) in &self.active {
            match fault {
                Fault::Isolate { node, .. } => {
                    for other in self.nodes.iter().filter(|n| *n != node) {
                        sim.partition(host_name(*node).as_str(), host_name(*other).as_str());
                    }
                }
                Fault::Split { minority } => {
                    for a in minority {
                        for b in self.nodes.iter().filter(|n| !minority.contains(n)) {
                            sim.partition(host_name(*a).as_str(), host_name(*b).as_str());
                        }
                    }
                }
                Fault::OneWay { from, to } => {
                    sim.partition_oneway(host_name(*from).as_str(), host_name(*to).as_str())
                }
                Fault::Lossy { a, b } => {
                    sim.set_link_fail_rate(host_name(*a).as_str(), host_name(*b).as_str(), 0.02)
                }
                Fault::Slow { a, b, latency } => sim.set_link_max_message_latency(
                    host_name(*a).as_str(),
                    host_name(*b).as_str(),
                    *latency,
                ),
                Fault::Crash { .. } | Fault::Drain { .. } | Fault::SlowDisk { .. } => {}
            }
        }
    }
}
