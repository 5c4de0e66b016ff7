//! The leader-only controller: node liveness and placement.
//!
//! Agents heartbeat the leader outside the Raft log. The control plane checks who sent
//! a heartbeat and hands it to this task over a bounded channel; only this task holds
//! what the leader heard from each node. While this node leads, a second task confirms
//! its leadership with a quorum every tick (a heartbeat renews a lease only if that
//! happened within `LEASE_CONFIRM_MS`, in the current term), and the control loop,
//! every tick while the confirmation is fresh:
//! 1. registers nodes it hears from that the registry lacks (or whose address, tags or
//!    capacity changed);
//! 2. marks down nodes silent past `node_timeout_ms` (whatever their admin state: a
//!    draining node that dies is down), and up again those it hears from. A new leader
//!    counts every node as heard at the moment it took over: one timeout of grace. Nodes
//!    that left the membership are removed from the node table;
//! 3. asks the pure scheduler for a plan (again only once the registry changed: a plan
//!    depends on nothing else) and proposes what of it is safe to hand over now,
//!    stamped with its term;
//! 4. asks autopilot (`autopilot.rs`) whether a learner should replace a dead voter,
//!    fill a missing voter's place, or a dead learner leave, and makes that one
//!    membership change.
//!
//! The proposals of a round run while heartbeats go on being answered. Every proposal
//! is made on this node only (never forwarded): if it is no longer the leader the
//! proposal fails, and a plan that reaches the log in a later term is rejected by the
//! registry.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use openraft::ChangeMembers;

use crate::config::timing::LEASE_CONFIRM_MS;
use crate::control::{ControlPlane, Heartbeat, LeaderError, LeaseGrant, Running, ToController};
use crate::env::bugs::{self, Bug};
use crate::raft::NodeId;
use crate::registry::{AdminState, Command, NodeStatus, Outcome};
use crate::scheduler;

pub mod autopilot;

/// How often the control loop runs.
const TICK_MS: u64 = 100;
/// How long autopilot waits after a membership change failed before it tries again.
const MEMBERSHIP_RETRY_MS: u64 = 1_000;

struct Heard {
    at: Instant,
    /// Since when the leader has heard from the node with no gap past the node timeout.
    since: Instant,
    /// The last heartbeat, whose running slots are in `running`.
    heartbeat: Heartbeat,
    /// The slots the node runs or is still stopping, as its heartbeat said or, if it
    /// gave only their version, as the heartbeat before it that carried them said.
    running: Arc<BTreeSet<(String, u32)>>,
}

/// The running slots `heartbeat` stands for, given what the leader heard before from
/// its node: a heartbeat that gives only their version stands for the slots of an
/// earlier one from the same start of the node with that version.
fn running_slots(
    heartbeat: &mut Heartbeat,
    before: Option<&Heard>,
) -> Result<Arc<BTreeSet<(String, u32)>>, LeaderError> {
    let version = heartbeat.running.version();
    match std::mem::replace(&mut heartbeat.running, Running::Unchanged(version)) {
        Running::Slots { slots, .. } => Ok(Arc::new(slots)),
        Running::Unchanged(_) => match before {
            Some(heard)
                if heard.heartbeat.incarnation == heartbeat.incarnation
                    && heard.heartbeat.running.version() == version =>
            {
                Ok(heard.running.clone())
            }
            _ => Err(LeaderError::RunningUnknown),
        },
    }
}

/// What the leader heard from each node; only the controller task holds it.
#[derive(Default)]
struct Liveness {
    heard: BTreeMap<NodeId, Heard>,
    /// Nodes this leader is marking down right now: they get no lease meanwhile.
    marking_down: BTreeSet<NodeId>,
}

/// Where a round of the control loop got to.
enum Step {
    /// The liveness proposals of a round in `term` are done (or one failed).
    Liveness { term: u64 },
    /// The plan's proposal ended; `releases` are the slots it released, and
    /// `applied_at` an index at or after the entry that did, if it was applied.
    Plan {
        releases: Vec<(String, u32)>,
        applied_at: Option<u64>,
    },
    /// The AcceptStalePlan bug's proposal ended.
    Deposed,
    /// Autopilot's membership change ended.
    Membership { done: bool },
}

type Round = Pin<Box<dyn Future<Output = Step> + Send>>;

/// The term and start of the last quorum confirmation that succeeded.
type Confirmed = Option<(u64, Instant)>;

struct Controller {
    control: Arc<ControlPlane>,
    liveness: Liveness,
    confirmed: watch::Receiver<Confirmed>,
    /// The term this node leads and when it took over.
    leading: Option<(u64, Instant)>,
    /// The term this node led last and when it lost it (only the AcceptStalePlan bug
    /// uses it).
    deposed: Option<(u64, Instant)>,
    /// Slots this leader released from a live node, with an index at or after the
    /// release; and its last log index when it took over (which covers the releases of
    /// earlier leaders).
    released: BTreeMap<(String, u32), u64>,
    taken_over_at: u64,
    /// No membership change before this (one failed moments ago).
    membership_retry_at: Option<Instant>,
    /// The last plan, and the registry revision it was made from: a plan depends only
    /// on the registry, so it is made again only once the registry changed.
    planned: Option<(u64, scheduler::Plan)>,
}

/// Runs the controller until the node shuts down: it answers the heartbeats of
/// `inbox`, and acts while this node leads.
pub async fn run(control: Arc<ControlPlane>, mut inbox: mpsc::Receiver<ToController>) {
    let (confirmed_tx, confirmed) = watch::channel(None);
    let confirmations = control
        .tasks()
        .spawn(confirm(control.clone(), confirmed_tx));
    let mut controller = Controller {
        control: control.clone(),
        liveness: Liveness::default(),
        confirmed,
        leading: None,
        deposed: None,
        released: BTreeMap::new(),
        taken_over_at: 0,
        membership_retry_at: None,
        planned: None,
    };
    let shutdown = control.shutdown_signal();
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round: Option<Round> = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(message) = inbox.recv() => controller.receive(message),
            step = async { round.as_mut().expect("guarded by the condition").await },
                if round.is_some() => round = controller.next(step),
            _ = tick.tick(), if round.is_none() => round = controller.tick(),
        }
    }
    let _ = confirmations.await;
}

/// Confirms this node's leadership with a quorum every tick while it leads, for the
/// leases it grants. Apart from the control loop, so that a slow proposal there never
/// lets the leases of the whole cluster run out.
async fn confirm(control: Arc<ControlPlane>, confirmed: watch::Sender<Confirmed>) {
    let shutdown = control.shutdown_signal();
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut shutdown => return,
        }
        let (leader, term) = {
            let metrics = control.raft.metrics();
            let metrics = metrics.borrow();
            (metrics.current_leader, metrics.current_term)
        };
        if leader != Some(control.id()) {
            continue;
        }
        let started = Instant::now();
        let confirm = tokio::time::timeout(
            Duration::from_millis(LEASE_CONFIRM_MS),
            control.raft.ensure_linearizable(),
        );
        if let Ok(Ok(_)) = confirm.await {
            confirmed.send_replace(Some((term, started)));
        }
    }
}

impl Controller {
    fn receive(&mut self, message: ToController) {
        match message {
            ToController::Heartbeat { heartbeat, reply } => {
                // A heartbeat whose sender gave up needs no answer.
                let _ = reply.send(self.heartbeat(heartbeat));
            }
            ToController::Forget(id) => {
                self.liveness.heard.remove(&id);
            }
        }
    }

    /// Whether a quorum confirmed this node's leadership in `term` moments ago.
    fn confirmed_in(&self, term: u64, now: Instant) -> bool {
        self.confirmed.borrow().is_some_and(|(confirmed_term, at)| {
            confirmed_term == term
                && now.duration_since(at) < Duration::from_millis(LEASE_CONFIRM_MS)
        })
    }

    /// Records a heartbeat, and grants a lease if this node led with a quorum's
    /// confirmation moments ago.
    fn heartbeat(&mut self, mut heartbeat: Heartbeat) -> Result<LeaseGrant, LeaderError> {
        // The leader's last log index, not its applied index: a leader that resumed its
        // term after a restart may not have applied yet what it had committed before
        // it, but its log holds every committed entry (simulator seed 877).
        let (leader, term, applied_index) = {
            let metrics = self.control.raft.metrics();
            let metrics = metrics.borrow();
            let last_log = metrics.last_log_index.unwrap_or(0);
            (metrics.current_leader, metrics.current_term, last_log)
        };
        if leader != Some(self.control.id()) {
            return Err(LeaderError::NotLeader {
                leader: self.control.known_leader(),
            });
        }
        let id = heartbeat.id;
        let status = self
            .control
            .view()
            .read()
            .registry
            .nodes
            .get(&id)
            .map(|n| n.status);
        let now = Instant::now();
        let timeout = Duration::from_millis(self.control.config.node_timeout_ms);
        let before = self.liveness.heard.get(&id);
        // Before anything is recorded: a fresh applied index beside stale running slots
        // could let a slot be handed over while this node still runs it.
        let running = running_slots(&mut heartbeat, before)?;
        let since = match before {
            Some(last) if now.duration_since(last.at) <= timeout => last.since,
            _ => now,
        };
        self.liveness.heard.insert(
            id,
            Heard {
                at: now,
                since,
                heartbeat,
                running,
            },
        );
        if !self.confirmed_in(term, now) {
            return Err(LeaderError::NotLeader { leader: None });
        }
        // A node that is down (or being marked down) may have had its replicas moved:
        // it gets a lease only once it is up again, which the leader records after the
        // moves, so the node sees them before it starts anything.
        if self.liveness.marking_down.contains(&id) || status != Some(NodeStatus::Up) {
            return Err(LeaderError::Rejected(format!(
                "node {id} is not up in the registry yet"
            )));
        }
        Ok(LeaseGrant {
            term,
            applied_index,
        })
    }

    /// A tick with no round in flight: starts the next round, if there is work.
    fn tick(&mut self) -> Option<Round> {
        let (leader, term, last_log_index) = {
            let metrics = self.control.raft.metrics();
            let metrics = metrics.borrow();
            (
                metrics.current_leader,
                metrics.current_term,
                metrics.last_log_index,
            )
        };
        if leader != Some(self.control.id()) {
            if let Some((term, _)) = self.leading.take() {
                self.liveness = Liveness::default();
                self.deposed = Some((term, Instant::now()));
            }
            if bugs::active(Bug::AcceptStalePlan) {
                return self.propose_as_deposed();
            }
            return None;
        }
        let since = match self.leading {
            Some((leading_term, since)) if leading_term == term => since,
            _ => {
                // A new term: nodes heard in an earlier one count for nothing.
                self.liveness.heard.clear();
                let now = Instant::now();
                self.leading = Some((term, now));
                self.released.clear();
                self.taken_over_at = last_log_index.unwrap_or(0);
                now
            }
        };
        // Act only on a leadership a quorum confirmed moments ago (see `confirm`).
        if !self.confirmed_in(term, Instant::now()) {
            return None;
        }
        let commands = liveness_commands(&self.control, &mut self.liveness, since);
        let control = self.control.clone();
        Some(Box::pin(async move {
            for command in commands {
                if let Err(error) = control.propose_here(command).await {
                    tracing::debug!(%error, "liveness proposal failed");
                    break;
                }
            }
            Step::Liveness { term }
        }))
    }

    /// What follows `step` in the round, if anything.
    fn next(&mut self, step: Step) -> Option<Round> {
        match step {
            Step::Liveness { term } => {
                self.liveness.marking_down.clear();
                self.plan(term).or_else(|| self.autopilot())
            }
            Step::Plan {
                releases,
                applied_at,
            } => {
                if let Some(index) = applied_at {
                    for slot in releases {
                        self.released.insert(slot, index);
                    }
                }
                self.autopilot()
            }
            Step::Membership { done } => {
                if !done {
                    self.membership_retry_at =
                        Some(Instant::now() + Duration::from_millis(MEMBERSHIP_RETRY_MS));
                }
                None
            }
            Step::Deposed => None,
        }
    }

    /// Autopilot's membership change, if it decides on one.
    fn autopilot(&mut self) -> Option<Round> {
        let now = Instant::now();
        if self.membership_retry_at.is_some_and(|at| now < at) {
            return None;
        }
        let (_, leading_since) = self.leading?;
        let config = &self.control.config;
        let policy = autopilot::Policy {
            max_voters: config.max_voters,
            dead_voter_after: (config.dead_voter_after_ms > 0)
                .then(|| Duration::from_millis(config.dead_voter_after_ms)),
            learner_stable: Duration::from_millis(config.learner_stable_ms),
            remove_dead_after: (config.remove_dead_after_ms > 0)
                .then(|| Duration::from_millis(config.remove_dead_after_ms)),
            node_timeout: Duration::from_millis(config.node_timeout_ms),
        };
        let last_log = self.control.raft.metrics().borrow().last_log_index;
        let members: Vec<autopilot::MemberView> = {
            let state = self.control.view().read();
            self.control
                .members()
                .iter()
                .map(|member| {
                    let heard = self.liveness.heard.get(&member.id);
                    let in_service = state.registry.nodes.get(&member.id).is_some_and(|n| {
                        n.status == NodeStatus::Up && n.admin == AdminState::Active
                    });
                    autopilot::MemberView {
                        id: member.id,
                        voter: member.voter,
                        last_heard: heard.map_or(leading_since, |h| h.at.max(leading_since)),
                        heard_since: heard
                            .filter(|h| now.duration_since(h.at) <= policy.node_timeout)
                            .map(|h| h.since),
                        in_service,
                        applied: heard.map_or(0, |h| h.heartbeat.applied),
                    }
                })
                .collect()
        };
        let change = autopilot::decide(
            self.control.id(),
            &members,
            last_log.unwrap_or(0),
            now,
            &policy,
        )?;
        let voters: BTreeSet<NodeId> = members.iter().filter(|m| m.voter).map(|m| m.id).collect();
        let control = self.control.clone();
        let timeout = Duration::from_millis(config.request_timeout_ms);
        Some(Box::pin(async move {
            let (change, retain) = match change {
                autopilot::Change::Promote { learner, replacing } => {
                    tracing::info!(
                        learner,
                        replacing,
                        "autopilot: promoting a learner to voter"
                    );
                    let mut next = voters;
                    next.insert(learner);
                    if let Some(dead) = replacing {
                        next.remove(&dead);
                    }
                    (ChangeMembers::ReplaceAllVoters(next), true)
                }
                autopilot::Change::Remove(id) => {
                    tracing::info!(node = id, "autopilot: removing a dead learner");
                    (ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                }
            };
            let changed =
                tokio::time::timeout(timeout, control.raft.change_membership(change, retain)).await;
            let done = match changed {
                Ok(Ok(_)) => true,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "autopilot: membership change failed");
                    false
                }
                Err(_) => {
                    tracing::warn!("autopilot: membership change timed out");
                    false
                }
            };
            Step::Membership { done }
        }))
    }

    /// Plans, and proposes the placements that are safe to hand over now.
    fn plan(&mut self, term: u64) -> Option<Round> {
        let placements = {
            let state = self.control.view().read();
            let revision = state.registry.revision;
            if self
                .planned
                .as_ref()
                .is_none_or(|(made_at, _)| *made_at != revision)
            {
                self.planned = Some((revision, scheduler::plan_registry(&state.registry)));
            }
            let (_, plan) = self.planned.as_ref().expect("planned above");
            hand_over(
                plan,
                &state.registry,
                &self.liveness,
                &self.released,
                self.taken_over_at,
            )
        };
        if placements.is_empty() {
            return None;
        }
        let releases: Vec<(String, u32)> = placements
            .iter()
            .filter(|p| p.node.is_none())
            .map(|p| (p.server.clone(), p.slot))
            .collect();
        tracing::info!(term, moves = placements.len(), "proposing placement plan");
        let control = self.control.clone();
        Some(Box::pin(async move {
            let applied_at = match control
                .propose_here(Command::ApplyPlan { term, placements })
                .await
            {
                Ok(Outcome::Rejected(error)) => {
                    tracing::warn!(%error, "plan rejected");
                    None
                }
                // At or after the entry that released them.
                Ok(Outcome::Applied { .. }) => Some(control.applied_index()),
                Err(error) => {
                    tracing::debug!(%error, "plan not committed");
                    None
                }
            };
            Step::Plan {
                releases,
                applied_at,
            }
        }))
    }

    /// The AcceptStalePlan bug: for two seconds after losing leadership, a node keeps
    /// planning from its own view and sends its plans, stamped with the term it led, to
    /// whoever leads now.
    fn propose_as_deposed(&mut self) -> Option<Round> {
        let (term, at) = self.deposed?;
        if at.elapsed() > Duration::from_secs(2) {
            self.deposed = None;
            return None;
        }
        let plan = {
            let state = self.control.view().read();
            scheduler::plan_registry(&state.registry)
        };
        if plan.moves.is_empty() {
            return None;
        }
        let placements = plan.placements();
        let control = self.control.clone();
        Some(Box::pin(async move {
            let _ = control
                .propose(Command::ApplyPlan { term, placements })
                .await;
            Step::Deposed
        }))
    }
}

/// The plan's placements, made safe to hand over: a slot moves off a node that is not
/// down in two steps. First it is released (unassigned), and the old node stops it; it
/// is assigned again only once every node that is not down has said, in a heartbeat
/// since this leader took over, that it has applied the release and runs no such slot,
/// and that no server an earlier run of it left behind may still live.
/// (A node that is down has let its lease run out: fencing covers it.)
fn hand_over(
    plan: &scheduler::Plan,
    registry: &crate::registry::Registry,
    liveness: &Liveness,
    released: &BTreeMap<(String, u32), u64>,
    taken_over_at: u64,
) -> Vec<crate::registry::Placement> {
    use crate::registry::Placement;
    let mut placements = Vec::new();
    for placement in plan.placements() {
        let Some(to) = placement.node else {
            placements.push(placement);
            continue;
        };
        let key = (placement.server.clone(), placement.slot);
        let from = registry.assignments.get(&key).map(|a| a.node_id);
        let from_live = from.is_some_and(|node| {
            registry
                .nodes
                .get(&node)
                .is_some_and(|n| n.status != NodeStatus::Down)
        });
        if from_live && from != Some(to) {
            placements.push(Placement {
                node: None,
                ..placement
            });
            continue;
        }
        let since = released.get(&key).copied().unwrap_or(0).max(taken_over_at);
        let clear = registry
            .nodes
            .values()
            .filter(|n| n.status != NodeStatus::Down)
            .all(|n| {
                liveness.heard.get(&n.id).is_some_and(|heard| {
                    heard.heartbeat.applied >= since
                        && !heard.running.contains(&key)
                        && !heard.heartbeat.orphans_possible
                })
            });
        if clear {
            placements.push(placement);
        }
    }
    placements
}

/// The registrations and status changes the leader should propose now.
fn liveness_commands(
    control: &ControlPlane,
    liveness: &mut Liveness,
    leading_since: Instant,
) -> Vec<Command> {
    let now = Instant::now();
    let timeout = Duration::from_millis(control.config.node_timeout_ms);
    let state = control.view().read();
    let nodes = &state.registry.nodes;
    let mut commands = Vec::new();
    // A node removed from the membership leaves the node table (and its slots move).
    let members: BTreeSet<NodeId> = control.members().iter().map(|m| m.id).collect();
    for id in nodes.keys().filter(|id| !members.contains(id)) {
        tracing::info!(node = id, "removing a node that left the cluster");
        commands.push(Command::RemoveNode { id: *id });
    }
    // What a node that left said counts for nothing, should it join again.
    liveness.heard.retain(|id, _| members.contains(id));
    // Only what a node said lately registers it: a removed node's last heartbeat, from
    // an older data dir, must not bring its old record back.
    let recent = liveness
        .heard
        .iter()
        .filter(|(_, heard)| now.duration_since(heard.at) <= timeout);
    for (id, heard) in recent {
        let known = nodes.get(id);
        let changed = known.is_none_or(|node| {
            node.addr != heard.heartbeat.addr
                || node.tags != heard.heartbeat.tags
                || node.capacity != heard.heartbeat.capacity
                || node.incarnation != heard.heartbeat.incarnation
        });
        if changed {
            commands.push(Command::RegisterNode {
                id: *id,
                addr: heard.heartbeat.addr.clone(),
                tags: heard.heartbeat.tags.clone(),
                capacity: heard.heartbeat.capacity,
                incarnation: heard.heartbeat.incarnation,
            });
        }
    }
    // The grace a new leader gives: every node counts as heard when it took over.
    let grace_from = if bugs::active(Bug::NoLeaderGrace) {
        now.checked_sub(timeout * 2).unwrap_or(leading_since)
    } else {
        leading_since
    };
    for (id, node) in nodes.iter().filter(|(id, _)| members.contains(id)) {
        if bugs::active(Bug::DeadDrainBlocks) && node.admin == AdminState::Draining {
            continue;
        }
        let last = liveness
            .heard
            .get(id)
            .map_or(grace_from, |heard| heard.at.max(grace_from));
        let silent = now.duration_since(last) > timeout;
        let status = match node.status {
            NodeStatus::Up if silent => NodeStatus::Down,
            NodeStatus::Down if !silent && liveness.heard.contains_key(id) => NodeStatus::Up,
            _ => continue,
        };
        tracing::info!(node = id, ?status, "node liveness changed");
        if status == NodeStatus::Down {
            liveness.marking_down.insert(*id);
        }
        commands.push(Command::SetNodeStatus { id: *id, status });
    }
    commands
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::RunningVersion;

    fn heartbeat(incarnation: u64, running: Running) -> Heartbeat {
        Heartbeat {
            id: 2,
            addr: "127.0.0.1:7702".into(),
            tags: Vec::new(),
            capacity: None,
            incarnation,
            applied: 10,
            running,
            orphans_possible: false,
        }
    }

    #[test]
    fn a_heartbeat_with_only_a_version_stands_for_the_slots_heard_with_it() {
        let version = |boot, seq| RunningVersion { boot, seq };
        let slots: BTreeSet<(String, u32)> = [("a".to_string(), 0)].into();
        let mut first = heartbeat(
            7,
            Running::Slots {
                version: version(1, 4),
                slots: slots.clone(),
            },
        );
        let running = running_slots(&mut first, None).unwrap();
        assert_eq!(*running, slots);
        // What is kept holds only the version; the slots are in `running`.
        assert_eq!(first.running, Running::Unchanged(version(1, 4)));
        let heard = Heard {
            at: Instant::now(),
            since: Instant::now(),
            heartbeat: first,
            running,
        };
        let mut same = heartbeat(7, Running::Unchanged(version(1, 4)));
        assert_eq!(*running_slots(&mut same, Some(&heard)).unwrap(), slots);
        // Another version, another start of the node, another data dir, or nothing
        // heard: the leader does not hold those slots.
        for (incarnation, v, before) in [
            (7, version(1, 5), Some(&heard)),
            (7, version(2, 4), Some(&heard)),
            (8, version(1, 4), Some(&heard)),
            (7, version(1, 4), None),
        ] {
            let mut unknown = heartbeat(incarnation, Running::Unchanged(v));
            assert!(matches!(
                running_slots(&mut unknown, before),
                Err(LeaderError::RunningUnknown)
            ));
        }
    }
}
