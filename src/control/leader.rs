//! Running an operation on the leader, wherever the request arrived.
//!
//! A follower does not answer "go elsewhere": it sends the operation to the leader over
//! the internal API and relays the answer. While there is no leader it waits (bounded
//! by the request timeout) and only then reports `NoLeader` with the last known leader.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};

use super::{ControlPlane, Heartbeat, LeaseGrant, NodeError, ToController};
use crate::env::bugs::{self, Bug};
use crate::proto::internal::raft_internal_client::RaftInternalClient;
use crate::proto::internal::RaftMessage;
use crate::raft::codec::{decode, encode};
use crate::raft::{NodeId, Proposal};
use crate::registry::{Command, Outcome};

/// Longest wait for the leader's answer to one forwarded write or read index, before
/// looking for the leader again.
const ATTEMPT_TIMEOUT_MS: u64 = 1_000;
/// Pause between attempts while the cluster has no reachable leader.
const RETRY_PAUSE_MS: u64 = 25;
/// Leader hints a joining node follows before it pauses.
const MAX_JOIN_HINTS: u32 = 3;
/// Longest pause between attempts to join a cluster.
const JOIN_BACKOFF_MAX_MS: u64 = 2_000;
/// While another membership change (a join, autopilot's) is under way, a change waits
/// this long before it tries again, at most `MEMBERSHIP_BUSY_ATTEMPTS` times.
const MEMBERSHIP_BUSY_PAUSE_MS: u64 = 100;
const MEMBERSHIP_BUSY_ATTEMPTS: u32 = 50;

type MembershipResult<T> = Result<T, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>;

/// Runs the membership change `change` makes, again after a pause while Raft refuses
/// it because another change is still under way (Raft makes one at a time).
async fn when_no_change_is_under_way<T, F, Fut>(mut change: F) -> MembershipResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = MembershipResult<T>>,
{
    let mut attempts = 0;
    loop {
        match change().await {
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            ))) if attempts < MEMBERSHIP_BUSY_ATTEMPTS => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(MEMBERSHIP_BUSY_PAUSE_MS)).await;
            }
            result => return result,
        }
    }
}

/// An operation only the leader can carry out.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum LeaderOp {
    /// Commit a registry command.
    Propose(Box<Proposal>),
    /// Confirm leadership and return the index a linearizable read must wait for.
    ReadIndex,
    /// Add a node (as a learner, then as a voter while there are fewer than
    /// `max_voters`).
    AddNode {
        id: NodeId,
        addr: String,
    },
    RemoveNode {
        id: NodeId,
    },
    /// A node's agent says it is alive and asks to renew its lease.
    Heartbeat(Heartbeat),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum LeaderOpResult {
    Outcome(Outcome),
    /// The log index a linearizable read must have applied.
    ReadIndex(Option<u64>),
    Members(Vec<Member>),
    Lease(LeaseGrant),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    pub addr: String,
    pub voter: bool,
}

/// Why the leader could not carry out an operation.
#[derive(Clone, Debug, Serialize, Deserialize, thiserror::Error)]
pub enum LeaderError {
    #[error("not the leader")]
    NotLeader { leader: Option<(NodeId, String)> },
    #[error("{0}")]
    Rejected(String),
    #[error("{0}")]
    Failed(String),
    /// The caller's data dir was replaced: it must be removed and added again.
    #[error("{0}")]
    Replaced(String),
    /// A heartbeat gave only the version of its running slots, and the leader does not
    /// hold that version: the next one carries them in full.
    #[error("the leader does not hold these running slots: send them in full")]
    RunningUnknown,
}

impl ControlPlane {
    /// The leader this node knows of (id and address), if any.
    pub fn known_leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let addr = metrics
            .membership_config
            .nodes()
            .find(|(id, _)| **id == leader)
            .map(|(_, node)| node.addr.clone())?;
        Some((leader, addr))
    }

    /// All members with their addresses and roles.
    pub fn members(&self) -> Vec<Member> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| Member {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }

    /// Runs `op` on the leader, forwarding and waiting for one as needed.
    pub async fn on_leader(&self, op: LeaderOp) -> Result<LeaderOpResult, NodeError> {
        let timeout_ms = self.config.request_timeout_ms;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        let mut last_hint = self.known_leader();
        loop {
            let attempt = match self.known_leader() {
                // A leader cut off from its quorum would hold its own write until the
                // partition heals: it gets the request's time, no more.
                Some((id, _)) if id == self.id() => {
                    match tokio::time::timeout_at(deadline, self.execute_local(op.clone())).await {
                        Ok(result) => result,
                        Err(_) => Err(LeaderError::NotLeader { leader: None }),
                    }
                }
                Some((id, addr)) => {
                    last_hint = Some((id, addr.clone()));
                    // A leader that is cut off but alive would hold the call until the
                    // deadline; bound each attempt so a newly elected leader is found.
                    // (Writes carry request ids: retrying one is safe.) Membership
                    // changes wait for a learner to catch up, so they get the whole time.
                    let attempt_deadline = match op {
                        LeaderOp::AddNode { .. } | LeaderOp::RemoveNode { .. } => deadline,
                        _ => deadline.min(
                            tokio::time::Instant::now() + Duration::from_millis(ATTEMPT_TIMEOUT_MS),
                        ),
                    };
                    self.execute_remote(&addr, &op, attempt_deadline).await
                }
                None => Err(LeaderError::NotLeader { leader: None }),
            };
            match attempt {
                Ok(result) => return Ok(result),
                Err(LeaderError::Rejected(reason) | LeaderError::Replaced(reason)) => {
                    return Err(NodeError::Rejected(reason))
                }
                Err(LeaderError::Failed(reason)) => return Err(NodeError::Raft(reason)),
                // Only a heartbeat gets it, and heartbeats are not sent this way.
                Err(error @ LeaderError::RunningUnknown) => {
                    return Err(NodeError::Raft(error.to_string()))
                }
                Err(LeaderError::NotLeader { leader }) => {
                    if leader.is_some() {
                        last_hint = leader;
                    }
                }
            }
            if self.shutdown.is_cancelled() {
                return Err(NodeError::ShuttingDown);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NodeError::NoLeader {
                    leader_hint: last_hint,
                });
            }
            // Wait until this node sees a different leader, or a short pause. (Waking on
            // any metrics change would spin: openraft updates its metrics constantly.)
            let seen = self.known_leader().map(|(id, _)| id);
            let mut metrics = self.raft.metrics();
            let leader_changed = async {
                metrics
                    .wait_for(|m| m.current_leader != seen)
                    .await
                    .map(|_| ())
            };
            let pause = Duration::from_millis(RETRY_PAUSE_MS);
            let waited = tokio::time::timeout(pause, leader_changed).await;
            if let Ok(Err(_)) = waited {
                return Err(NodeError::ShuttingDown);
            }
        }
    }

    pub(crate) async fn execute_remote(
        &self,
        addr: &str,
        op: &LeaderOp,
        deadline: tokio::time::Instant,
    ) -> Result<LeaderOpResult, LeaderError> {
        let channel = self
            .peers
            .channel(addr)
            .map_err(|e| LeaderError::Failed(e.to_string()))?;
        let payload = encode(op).map_err(|e| LeaderError::Failed(e.to_string()))?;
        let mut client = RaftInternalClient::new(channel);
        let mut request = tonic::Request::new(RaftMessage {
            payload,
            ..Default::default()
        });
        self.incarnations.stamp(request.metadata_mut());
        let call = client.execute(request);
        match tokio::time::timeout_at(deadline, call).await {
            Ok(Ok(response)) => {
                decode::<Result<LeaderOpResult, LeaderError>>(&response.into_inner().payload)
                    .map_err(|e| LeaderError::Failed(e.to_string()))?
            }
            // The leader is unreachable or too slow: treat it as gone and look again,
            // over a new connection (the old one may have come back from a network
            // fault stalled).
            Ok(Err(_)) | Err(_) => {
                self.peers.forget(addr);
                Err(LeaderError::NotLeader { leader: None })
            }
        }
    }

    /// Carries out `op` if this node is the leader.
    pub async fn execute_local(&self, op: LeaderOp) -> Result<LeaderOpResult, LeaderError> {
        match op {
            LeaderOp::Propose(proposal) if bugs::active(Bug::AckBeforeCommit) => {
                let expected = self.view.read().registry.revision + 1;
                let proposer = self.proposer.clone();
                self.tasks
                    .spawn(async move { proposer.propose(*proposal).await });
                Ok(LeaderOpResult::Outcome(Outcome::Applied {
                    revision: expected,
                }))
            }
            LeaderOp::Propose(proposal) => self
                .proposer
                .propose(*proposal)
                .await
                .map(LeaderOpResult::Outcome),
            LeaderOp::ReadIndex => match self.raft.get_read_log_id().await {
                Ok((read_log_id, _applied)) => {
                    // openraft 0.9 reads at max(commit index, first entry of this term). A
                    // leader that restarted into its own term (its vote for itself was
                    // committed) knows no commit index yet and reuses its old first entry,
                    // which can be below entries it committed and acknowledged before the
                    // restart: the simulator found reads that missed them. Every committed
                    // entry is in the leader's log, so its last index is never too early.
                    let last = self.raft.metrics().borrow().last_log_index;
                    let index = read_log_id.map(|id| id.index).max(last);
                    Ok(LeaderOpResult::ReadIndex(index))
                }
                Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                    f,
                ))) => Err(LeaderError::NotLeader {
                    leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
                }),
                // Leadership could not be confirmed just now (a quorum did not answer in
                // time): look for the leader again, within the request deadline.
                Err(RaftError::APIError(openraft::error::CheckIsLeaderError::QuorumNotEnough(
                    error,
                ))) => {
                    tracing::debug!(%error, "read index: quorum not reached");
                    Err(LeaderError::NotLeader { leader: None })
                }
                Err(RaftError::Fatal(error)) => Err(LeaderError::Failed(error.to_string())),
            },
            LeaderOp::AddNode { id, addr } => self.add_node(id, addr).await,
            LeaderOp::RemoveNode { id } => self.remove_node(id).await,
            LeaderOp::Heartbeat(heartbeat) => self.receive_heartbeat(heartbeat).await,
        }
    }

    fn write_error(
        &self,
        error: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
    ) -> LeaderError {
        match error {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => LeaderError::NotLeader {
                leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
            },
            // Another change still under way: the caller may try again.
            RaftError::APIError(ClientWriteError::ChangeMembershipError(
                e @ ChangeMembershipError::InProgress(_),
            )) => LeaderError::Failed(e.to_string()),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                LeaderError::Rejected(e.to_string())
            }
            RaftError::Fatal(e) => LeaderError::Failed(e.to_string()),
        }
    }

    async fn add_node(&self, id: NodeId, addr: String) -> Result<LeaderOpResult, LeaderError> {
        crate::config::validate_address(&addr).map_err(|e| LeaderError::Rejected(e.to_string()))?;
        let members = self.members();
        if let Some(existing) = members.iter().find(|m| m.id == id) {
            if existing.addr != addr {
                return Err(LeaderError::Rejected(format!(
                    "node {id} is already a member at {}",
                    existing.addr
                )));
            }
        } else if let Some(other) = members.iter().find(|m| m.addr == addr) {
            return Err(LeaderError::Rejected(format!(
                "address {addr} already belongs to node {}",
                other.id
            )));
        }
        // Blocking: returns once the learner has caught up with the log.
        let node = BasicNode::new(&addr);
        when_no_change_is_under_way(|| self.raft.add_learner(id, node.clone(), true))
            .await
            .map_err(|e| self.write_error(e))?;
        let voters = self.members().iter().filter(|m| m.voter).count();
        let is_voter = self.members().iter().any(|m| m.id == id && m.voter);
        if !is_voter && voters < self.config.max_voters {
            let voter = || {
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
            };
            when_no_change_is_under_way(voter)
                .await
                .map_err(|e| self.write_error(e))?;
        }
        Ok(LeaderOpResult::Members(self.members()))
    }

    async fn remove_node(&self, id: NodeId) -> Result<LeaderOpResult, LeaderError> {
        let members = self.members();
        let Some(member) = members.iter().find(|m| m.id == id) else {
            return Err(LeaderError::Rejected(format!("node {id} is not a member")));
        };
        if member.voter && members.iter().filter(|m| m.voter).count() == 1 {
            return Err(LeaderError::Rejected("cannot remove the last voter".into()));
        }
        let change = if member.voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        when_no_change_is_under_way(|| self.raft.change_membership(change.clone(), false))
            .await
            .map_err(|e| self.write_error(e))?;
        // It leaves the node table before the answer, so that the same id can join
        // again at once from a new data dir (the control loop would remove it too); and
        // what it said in its last heartbeats is forgotten, so they cannot bring its old
        // record back.
        if self
            .controller
            .send(ToController::Forget(id))
            .await
            .is_err()
        {
            return Err(LeaderError::Failed("node is shutting down".into()));
        }
        if let Err(error) = self
            .propose_here(crate::registry::Command::RemoveNode { id })
            .await
        {
            tracing::warn!(%error, node = id, "could not remove the node from the node table");
        }
        Ok(LeaderOpResult::Members(self.members()))
    }

    /// Handles a heartbeat on the leader: checks who sent it, then hands it to the
    /// controller, which records it and grants a lease if this node led with a
    /// quorum's confirmation moments ago.
    async fn receive_heartbeat(&self, heartbeat: Heartbeat) -> Result<LeaderOpResult, LeaderError> {
        if self.raft.metrics().borrow().current_leader != Some(self.id()) {
            return Err(LeaderError::NotLeader {
                leader: self.known_leader(),
            });
        }
        // A node removed from the cluster gets no lease: it stops its replicas, and the
        // leader marks it down after the timeout like any silent node.
        if !self.members().iter().any(|m| m.id == heartbeat.id) {
            return Err(LeaderError::Rejected(format!(
                "node {} is not a member of the cluster",
                heartbeat.id
            )));
        }
        // A node that came back on a wiped data dir must not take part under its old id.
        self.incarnations
            .check(heartbeat.id, heartbeat.incarnation)
            .map_err(LeaderError::Replaced)?;
        if let Some(probe) = &self.probe {
            let bytes = crate::raft::codec::encoded_len(&heartbeat).unwrap_or(0);
            probe.heartbeat_received(self.id(), bytes);
        }
        let (reply, grant) = tokio::sync::oneshot::channel();
        self.controller
            .try_send(ToController::Heartbeat { heartbeat, reply })
            .map_err(|_| LeaderError::Failed("the controller is busy".into()))?;
        match grant.await {
            Ok(grant) => grant.map(LeaderOpResult::Lease),
            Err(_) => Err(LeaderError::Failed("node is shutting down".into())),
        }
    }

    /// Waits until this node has applied everything up to `index`.
    pub async fn wait_applied(&self, index: Option<u64>) -> Result<(), NodeError> {
        let Some(index) = index else { return Ok(()) };
        let mut metrics = self.raft.metrics();
        let wait = async {
            metrics
                .wait_for(|m| m.last_applied.is_some_and(|a| a.index >= index))
                .await
                .map(|_| ())
        };
        let result = tokio::time::timeout(self.request_timeout(), wait).await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(NodeError::ShuttingDown),
            Err(_) => Err(NodeError::Timeout(self.config.request_timeout_ms)),
        }
    }

    /// A barrier for linearizable reads: once it returns, the local state reflects
    /// every write acknowledged before the call.
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        if bugs::active(Bug::StaleFollowerRead) {
            return Ok(());
        }
        match self.on_leader(LeaderOp::ReadIndex).await? {
            LeaderOpResult::ReadIndex(index) => self.wait_applied(index).await,
            other => Err(NodeError::Raft(format!("unexpected answer {other:?}"))),
        }
    }

    /// Commits `command` and returns its outcome. However often the attempt is retried
    /// (a lost answer, a leader change), the command is applied at most once.
    pub async fn propose(&self, command: Command) -> Result<Outcome, NodeError> {
        self.propose_as(command, None).await
    }

    /// As `propose`, for a client: the audit log records `actor` with the change.
    pub async fn propose_as(
        &self,
        command: Command,
        actor: Option<String>,
    ) -> Result<Outcome, NodeError> {
        let (proposal, _open) = self.proposal(command, actor);
        match self
            .on_leader(LeaderOp::Propose(Box::new(proposal)))
            .await?
        {
            LeaderOpResult::Outcome(outcome) => Ok(outcome),
            other => Err(NodeError::Raft(format!("unexpected answer {other:?}"))),
        }
    }

    /// Changes membership and returns the members after the change.
    pub async fn change_members(&self, op: LeaderOp) -> Result<Vec<Member>, NodeError> {
        match self.on_leader(op).await? {
            LeaderOpResult::Members(members) => Ok(members),
            other => Err(NodeError::Raft(format!("unexpected answer {other:?}"))),
        }
    }
}

/// Asks the cluster at `join_addr` to add this node, retrying with capped backoff until
/// it succeeds or the node shuts down.
pub async fn join(handle: &ControlPlane, join_addr: &str) -> Result<(), NodeError> {
    let op = LeaderOp::AddNode {
        id: handle.id(),
        addr: handle.config.advertise.clone(),
    };
    let mut backoff_ms = 100;
    let mut target = join_addr.to_string();
    // Hints followed without a pause; stale hints could otherwise bounce for ever.
    let mut hints_followed = 0;
    loop {
        if handle.members().iter().any(|m| m.id == handle.id()) && handle.known_leader().is_some() {
            // Already a member (restarted from its data dir).
            return Ok(());
        }
        let attempt = handle
            .execute_remote(
                &target,
                &op,
                tokio::time::Instant::now() + Duration::from_secs(60),
            )
            .await;
        match attempt {
            Ok(_) => {
                tracing::info!(join_addr, "joined the cluster");
                return Ok(());
            }
            Err(LeaderError::Rejected(reason)) => return Err(NodeError::Rejected(reason)),
            // Follow the hint straight to the leader.
            Err(LeaderError::NotLeader {
                leader: Some((_, leader_addr)),
            }) if leader_addr != target && hints_followed < MAX_JOIN_HINTS => {
                hints_followed += 1;
                target = leader_addr;
                continue;
            }
            Err(error) => {
                tracing::info!(%target, %error, backoff_ms, "join not accepted yet");
                target = join_addr.to_string();
                hints_followed = 0;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
            _ = handle.shutdown.cancelled() => return Err(NodeError::ShuttingDown),
        }
        backoff_ms = (backoff_ms * 2).min(JOIN_BACKOFF_MAX_MS);
    }
}
