//! The agent: makes what runs on this node match this node's assignments.
//!
//! - Heartbeats the leader every `node_heartbeat_interval_ms`; each answered heartbeat
//!   renews the lease until (time the heartbeat was sent) + `lease_ms`.
//! - Runs a replica for each assignment of this node, but only while the lease is fresh:
//!   when it runs out, every replica is stopped (SIGTERM, SIGKILL after
//!   `FENCE_GRACE_MS`), so the node the leader hands them to next never overlaps with
//!   this one. The hard bound is not this loop but the fence: every lease renews the
//!   deadline each replica's supervisor holds (lease end + `FENCE_GRACE_MS`), and the
//!   supervisor kills the replica at that deadline even if this node is paused. A new
//!   replica starts only once this node has applied its log up to the leader's last
//!   log index when it last renewed the lease, and never for an assignment older than
//!   one this node has already seen for the slot.
//! - Stops replicas whose assignment went away or changed (new epoch). A spec change
//!   restarts nothing unless the transport changed: settings reach the running replica
//!   live, and a change of `replicas` only adds or removes slots. A transport change
//!   rolls through the slots in order: slot k restarts only once every lower slot is
//!   healthy on the new transport, so a server with two or more replicas keeps one
//!   healthy throughout (and a bad new transport stops the roll at slot 0).
//! - On shutdown, stops every replica before it returns.
//!
//! It reads the registry only from this node's applied state and writes to it only
//! through health reports (`reporter`).

mod breaker;
pub mod directory;
mod replica;
mod reporter;
mod restart;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use breaker::Breaker;
pub use directory::{Answer, Directory, ReplicaCallError, ReplicaHandle, Request};
pub use replica::{ReplicaKey, INITIALIZE_TIMEOUT_MS, START_TURN_MS};
pub use restart::{Decision, Restarts};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::timing::{FENCE_GRACE_MS, FENCE_MARGIN_MS, RECONCILE_MS, STOP_GRACE_MS};
use crate::config::Config;
use crate::control::{self, Heartbeat, Leases, Reader, RunningVersion, Writer};
use crate::env::bugs::{self, Bug};
use crate::env::launcher::{Fence, McpLauncher};
use crate::raft::NodeId;
use crate::registry::{ReplicaState, ServerSpec};
use reporter::Reports;

/// This node's lease from the leader.
#[derive(Clone, Copy, Debug, Default)]
struct Lease {
    valid_until: Option<Instant>,
    /// The leader's last log index when it last renewed the lease.
    leader_log: u64,
}

struct Running {
    epoch: u64,
    transport_revision: u64,
    /// The spec the replica runs with; settings changes are sent here.
    settings: watch::Sender<ServerSpec>,
    stop: watch::Sender<Option<Duration>>,
    task: JoinHandle<()>,
}

/// One of this node's assignments, as the registry holds it now.
struct Wanted {
    epoch: u64,
    create_revision: u64,
    transport_revision: u64,
    spec: ServerSpec,
    /// Every lower slot of the server is healthy on the current transport (or has no
    /// node): this slot may restart onto it.
    may_roll: bool,
}

/// What the agent works with: its node's settings and narrow handles on the control
/// plane.
#[derive(Clone)]
pub struct Context {
    pub config: Config,
    pub reader: Reader,
    pub writer: Writer,
    pub leases: Leases,
    pub shutdown: CancellationToken,
    /// Where the agent spawns its tasks, so that the node's shutdown joins them.
    pub tasks: TaskTracker,
}

/// Runs the agent until the node shuts down.
pub async fn run(
    context: Context,
    launcher: Option<Arc<dyn McpLauncher>>,
    directory: Arc<Directory>,
) {
    let (lease_tx, lease) = watch::channel(Lease::default());
    let (fence_tx, fence) = watch::channel(None);
    let (running_tx, running) = watch::channel(BTreeSet::new());
    // An earlier run of this node (crashed, killed) may have left servers behind that
    // live until the deadline of its last lease: surely not past this.
    let orphans_until =
        Instant::now() + Duration::from_millis(context.config.lease_ms + FENCE_MARGIN_MS);
    let heartbeats = context.tasks.spawn(heartbeat(
        context.clone(),
        lease_tx,
        fence_tx,
        running,
        orphans_until,
    ));
    let reports = Arc::new(Reports::default());
    let reporter = context
        .tasks
        .spawn(reporter::run(context.clone(), reports.clone()));
    let mut agent = Agent {
        starts: Arc::new(Semaphore::new(context.config.max_starting_replicas)),
        context: context.clone(),
        launcher,
        fence,
        reports,
        directory,
        running: BTreeMap::new(),
        stopping: Vec::new(),
        highest_epoch: BTreeMap::new(),
    };
    let shutdown = context.shutdown.clone().cancelled_owned();
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_millis(RECONCILE_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                agent.reconcile(*lease.borrow());
                // What the heartbeats tell the leader: every slot running or stopping.
                let slots: BTreeSet<(String, u32)> = agent
                    .running
                    .keys()
                    .chain(agent.stopping.iter().map(|(key, _)| key))
                    .cloned()
                    .collect();
                running_tx.send_replace(slots);
            }
            _ = &mut shutdown => break,
        }
    }
    let grace = Duration::from_millis(STOP_GRACE_MS);
    let keys: Vec<(String, u32)> = agent.running.keys().cloned().collect();
    for key in keys {
        agent.stop(&key, grace);
    }
    for task in agent.stopping.drain(..).map(|(_, task)| task) {
        let _ = task.await;
    }
    let _ = heartbeats.await;
    let _ = reporter.await;
}

struct Agent {
    context: Context,
    launcher: Option<Arc<dyn McpLauncher>>,
    /// One permit per replica starting at once (`max_starting_replicas`).
    starts: Arc<Semaphore>,
    /// Until when this node's replicas may run (lease end + fence grace), for their
    /// supervisors.
    fence: Fence,
    reports: Arc<Reports>,
    /// Where connected replicas are published for tool calls.
    directory: Arc<Directory>,
    running: BTreeMap<(String, u32), Running>,
    /// Replicas told to stop and not yet stopped; their slot does not start again here
    /// until they have.
    stopping: Vec<((String, u32), JoinHandle<()>)>,
    /// The newest assignment epoch seen per slot: older ones are refused.
    highest_epoch: BTreeMap<(String, u32), u64>,
}

impl Agent {
    fn reconcile(&mut self, lease: Lease) {
        let now = Instant::now();
        let fresh = lease.valid_until.is_some_and(|until| now < until);
        let applied = self.context.reader.applied_index();
        let me = self.context.config.id;
        let mine: BTreeMap<(String, u32), Wanted> = {
            let state = self.context.reader.stale();
            let registry = &state.registry;
            self.highest_epoch
                .retain(|(server, _), _| registry.servers.contains_key(server));
            registry
                .assignments
                .iter()
                .filter(|(_, a)| a.node_id == me)
                .filter_map(|(key, a)| {
                    let record = registry.servers.get(&a.server)?;
                    let may_roll = (0..a.slot).all(|lower| {
                        let lower = (a.server.clone(), lower);
                        !registry.assignments.contains_key(&lower)
                            || registry.health.get(&lower).is_some_and(|h| {
                                h.state == ReplicaState::Healthy
                                    && h.transport_revision == record.transport_revision
                            })
                    });
                    let wanted = Wanted {
                        epoch: a.epoch,
                        create_revision: record.create_revision,
                        transport_revision: record.transport_revision,
                        spec: record.spec.clone(),
                        may_roll,
                    };
                    Some((key.clone(), wanted))
                })
                .collect()
        };
        let mut wanted = BTreeMap::new();
        for (key, slot) in mine {
            let highest = self.highest_epoch.entry(key.clone()).or_insert(slot.epoch);
            if slot.epoch < *highest {
                tracing::warn!(server = %key.0, slot = key.1, epoch = slot.epoch,
                    highest = *highest, "refusing a stale assignment");
                continue;
            }
            *highest = slot.epoch;
            if fresh || bugs::active(Bug::IgnoreLease) {
                wanted.insert(key, slot);
            }
        }
        let grace = if fresh {
            Duration::from_millis(STOP_GRACE_MS)
        } else {
            Duration::from_millis(FENCE_GRACE_MS)
        };
        let mut unwanted = Vec::new();
        for (key, running) in &self.running {
            match wanted.get(key) {
                None => unwanted.push(key.clone()),
                Some(slot) if slot.epoch != running.epoch => unwanted.push(key.clone()),
                Some(slot) if slot.transport_revision != running.transport_revision => {
                    if slot.may_roll {
                        tracing::info!(server = %key.0, slot = key.1,
                            "transport changed: restarting the replica");
                        unwanted.push(key.clone());
                    }
                }
                Some(slot) => {
                    // Settings only: the replica takes them live.
                    running.settings.send_if_modified(|spec| {
                        let changed = *spec != slot.spec;
                        if changed {
                            *spec = slot.spec.clone();
                        }
                        changed
                    });
                }
            }
        }
        if !fresh && !unwanted.is_empty() {
            tracing::warn!(
                replicas = unwanted.len(),
                "lease expired: stopping replicas"
            );
        }
        for key in unwanted {
            self.stop(&key, grace);
        }
        self.stopping.retain(|(_, task)| !task.is_finished());
        let Some(launcher) = &self.launcher else {
            return;
        };
        let may_start = fresh && applied >= lease.leader_log;
        if !may_start && !bugs::active(Bug::IgnoreLease) {
            return;
        }
        for (key, slot) in wanted {
            if self.running.contains_key(&key) || self.stopping.iter().any(|(k, _)| *k == key) {
                continue;
            }
            let Wanted {
                epoch,
                create_revision,
                transport_revision,
                spec,
                ..
            } = slot;
            let (stop, stop_signal) = watch::channel(None);
            let (settings, settings_signal) = watch::channel(spec);
            let replica = ReplicaKey {
                server: key.0.clone(),
                slot: key.1,
                epoch,
                create_revision,
                transport_revision,
            };
            tracing::info!(server = %key.0, slot = key.1, epoch, node = me, applied,
                leader_log = lease.leader_log, "starting replica");
            let task = self.context.tasks.spawn(replica::run(
                me,
                replica,
                settings_signal,
                replica::ReplicaEnv {
                    launcher: launcher.clone(),
                    starts: self.starts.clone(),
                    fence: self.fence.clone(),
                    reports: self.reports.clone(),
                    directory: self.directory.clone(),
                    tasks: self.context.tasks.clone(),
                },
                stop_signal,
            ));
            self.running.insert(
                key,
                Running {
                    epoch,
                    transport_revision,
                    settings,
                    stop,
                    task,
                },
            );
        }
    }

    fn stop(&mut self, key: &(String, u32), grace: Duration) {
        if let Some(running) = self.running.remove(key) {
            tracing::info!(server = %key.0, slot = key.1, "stopping replica");
            let _ = running.stop.send(Some(grace));
            self.reports.forget(&key.0, key.1);
            self.stopping.push((key.clone(), running.task));
        }
    }
}

/// How soon a heartbeat the leader did not answer is sent again.
const HEARTBEAT_RETRY_MS: u64 = 50;

/// The running slots as the heartbeats have sent them.
struct Slots {
    /// The slots of `version`.
    last: BTreeSet<(String, u32)>,
    version: RunningVersion,
    /// The leader that answered the last heartbeat, and the version it carried.
    held_by: Option<(NodeId, RunningVersion)>,
}

impl Slots {
    /// What the next heartbeat to `leader` carries of `now`, the slots running now: their
    /// version alone if that leader answered a heartbeat of this very content, or else
    /// the slots in full.
    fn carried(
        &mut self,
        now: &BTreeSet<(String, u32)>,
        leader: Option<NodeId>,
    ) -> control::Running {
        if *now != self.last {
            self.last = now.clone();
            self.version.seq += 1;
        }
        match (leader, self.held_by) {
            (Some(leader), Some((held_by, version)))
                if held_by == leader && version == self.version =>
            {
                control::Running::Unchanged(self.version)
            }
            _ => control::Running::Slots {
                version: self.version,
                slots: self.last.clone(),
            },
        }
    }
}

/// Heartbeats the leader and publishes each renewed lease.
async fn heartbeat(
    context: Context,
    lease: watch::Sender<Lease>,
    fence: watch::Sender<Option<Instant>>,
    running: watch::Receiver<BTreeSet<(String, u32)>>,
    orphans_until: Instant,
) {
    let config = &context.config;
    let leases = &context.leases;
    let interval_length = Duration::from_millis(config.node_heartbeat_interval_ms);
    let mut interval = tokio::time::interval(interval_length);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = context.shutdown.clone().cancelled_owned();
    tokio::pin!(shutdown);
    let mut leader = leases.current_leader();
    let mut slots = Slots {
        last: running.borrow().clone(),
        version: RunningVersion {
            boot: leases.own_boot(),
            seq: 0,
        },
        held_by: None,
    };
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            // A new leader hears from this node at once, not a tick later: it must
            // renew the lease before the one the old leader granted runs out, or every
            // replica here stops for the failover.
            changed = leases.leader_change(leader) => {
                if changed.is_err() {
                    return;
                }
            }
            _ = &mut shutdown => return,
        }
        leader = leases.current_leader();
        let heartbeat = Heartbeat {
            id: config.id,
            addr: config.advertise.clone(),
            tags: config.tags.clone(),
            capacity: config.capacity,
            incarnation: leases.own_incarnation(),
            // Read together, with nothing in between: the slots running or stopping
            // right now (each reconcile publishes them after it starts any), and an
            // index from which on this node starts nothing the registry does not
            // assign it.
            applied: leases.applied_index(),
            running: slots.carried(&running.borrow(), leader),
            orphans_possible: Instant::now() < orphans_until && !bugs::active(Bug::ForgetOrphans),
        };
        let Some(to) = leader else {
            continue;
        };
        let sent = Instant::now();
        let version = heartbeat.running.version();
        let answer = leases.renew(heartbeat, sent + interval_length * 2).await;
        // Whether this leader now holds that version: only an answered heartbeat says
        // so. After any other answer the next one carries the slots in full.
        slots.held_by = answer.is_ok().then_some((to, version));
        match answer {
            Ok(grant) => {
                let valid_until = sent + Duration::from_millis(config.lease_ms);
                // The supervisors learn the new deadline before anything may start
                // under it.
                fence.send_replace(Some(valid_until + Duration::from_millis(FENCE_GRACE_MS)));
                let _ = lease.send(Lease {
                    valid_until: Some(valid_until),
                    leader_log: grant.applied_index,
                });
            }
            // A leader that just took over may not answer yet: try again soon rather
            // than a whole interval later.
            Err(_) => interval.reset_after(Duration::from_millis(HEARTBEAT_RETRY_MS)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(names: &[&str]) -> BTreeSet<(String, u32)> {
        names.iter().map(|n| (n.to_string(), 0)).collect()
    }

    #[test]
    fn running_slots_go_in_full_until_the_same_leader_answered_that_content() {
        let version = |seq| RunningVersion { boot: 9, seq };
        let full = |seq, names: &[&str]| control::Running::Slots {
            version: version(seq),
            slots: slots(names),
        };
        let mut sent = Slots {
            last: BTreeSet::new(),
            version: version(0),
            held_by: None,
        };
        // No answer yet: in full.
        assert_eq!(sent.carried(&slots(&["a"]), Some(1)), full(1, &["a"]));
        sent.held_by = Some((1, version(1)));
        // Answered by leader 1, unchanged: the version alone.
        assert_eq!(
            sent.carried(&slots(&["a"]), Some(1)),
            control::Running::Unchanged(version(1))
        );
        // Another leader: in full.
        assert_eq!(sent.carried(&slots(&["a"]), Some(2)), full(1, &["a"]));
        // Changed: a new version, in full.
        assert_eq!(
            sent.carried(&slots(&["a", "b"]), Some(1)),
            full(2, &["a", "b"])
        );
        sent.held_by = Some((1, version(2)));
        // Back to an earlier content: still a new version.
        assert_eq!(sent.carried(&slots(&["a"]), Some(1)), full(3, &["a"]));
        // Unanswered: in full again.
        sent.held_by = None;
        assert_eq!(sent.carried(&slots(&["a"]), Some(1)), full(3, &["a"]));
    }
}
