//! Batches concurrent registry writes into one Raft entry.
//!
//! Every write on the leader goes through one proposer task. It takes whatever writes
//! are waiting (up to a limit), submits them as one entry, and goes on to the next batch
//! without waiting for the first to commit; a bounded number of batches may be in
//! flight. A lone write is submitted at once, so batching adds no delay.
//!
//! The proposer is where every write is checked (`Command::check`), once: a write
//! that fails is answered with its error and never enters the log.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::ClientWriteError;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::LeaderError;
use crate::env::Clock;
use crate::raft::codec::encoded_len;
use crate::raft::{Batch, Proposal, Raft};
use crate::registry::Outcome;

/// Writes waiting for the proposer, beyond which callers wait (backpressure).
pub const MAX_PENDING_PROPOSALS: usize = 4_096;
/// Commands in one Raft entry.
pub const MAX_BATCH_COMMANDS: usize = 64;
/// Encoded bytes of the proposals in one Raft entry: a batch takes writes while they fit,
/// and a write larger than this alone (none is, see `crate::limits`) would go alone.
/// With openraft's `max_payload_entries` this bounds an AppendEntries message.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Batches submitted to Raft and not yet committed. openraft 0.9's core appends each
/// submitted entry to its own log and waits for the fsync before it looks at its timers,
/// so the batches waiting in its queue stall the leader's heartbeats by one fsync each.
/// Two keep the leader's own fsync overlapping the followers' (the pipeline that
/// throughput needs) and bound that stall at two fsyncs: with a 100 ms fsync, 200 ms,
/// below the 360 ms a follower waits at least (see `TOLERATED_FSYNC`).
pub const MAX_BATCHES_IN_FLIGHT: usize = 2;
/// The slowest fsync a leader must survive without a follower starting an election.
pub const TOLERATED_FSYNC: Duration = Duration::from_millis(100);

type Reply = oneshot::Sender<Result<Outcome, LeaderError>>;

struct Pending {
    proposal: Proposal,
    /// Its encoded size.
    bytes: usize,
    reply: Reply,
}

/// The handle writers use; cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Starts the proposer task for `raft` on `tasks`; it stops at `shutdown` (writes
    /// waiting then fail with "shutting down"), or when every handle is dropped.
    /// Each entry is stamped with `clock`'s time.
    /// A batch not committed within `commit_timeout` is given up on (its writers
    /// hear "not the leader"), so that a leader cut off from its quorum does not hold
    /// its places for batches in flight until the partition heals.
    pub fn start(
        raft: Raft,
        clock: Arc<dyn Clock>,
        commit_timeout: Duration,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Proposer {
        let (queue, pending) = mpsc::channel(MAX_PENDING_PROPOSALS);
        let batches = Batches {
            raft,
            clock,
            commit_timeout,
            tasks: tasks.clone(),
        };
        tasks.spawn(run(batches, pending, shutdown));
        Proposer { queue }
    }

    /// Checks `proposal`'s command and, if it passes, submits it and waits for its
    /// outcome. A command that fails its check is answered with its error.
    pub async fn propose(&self, proposal: Proposal) -> Result<Outcome, LeaderError> {
        let started = tokio::time::Instant::now();
        let result = self.submit(proposal).await;
        let outcome = match &result {
            Ok(Outcome::Applied { .. }) => "applied",
            Ok(Outcome::Rejected(_)) => "rejected",
            Err(_) => "failed",
        };
        metrics::counter!("mcpfleet_proposals_total", "outcome" => outcome).increment(1);
        metrics::histogram!("mcpfleet_proposal_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn submit(&self, proposal: Proposal) -> Result<Outcome, LeaderError> {
        if let Err(error) = proposal.command.check() {
            return Ok(Outcome::Rejected(error));
        }
        let bytes = encoded_len(&proposal).map_err(|e| LeaderError::Failed(e.to_string()))?;
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send(Pending {
                proposal,
                bytes,
                reply,
            })
            .await
            .map_err(|_| LeaderError::Failed("node is shutting down".into()))?;
        outcome
            .await
            .map_err(|_| LeaderError::Failed("node is shutting down".into()))?
    }
}

/// What the proposer task submits batches with.
struct Batches {
    raft: Raft,
    clock: Arc<dyn Clock>,
    commit_timeout: Duration,
    tasks: TaskTracker,
}

async fn run(batches: Batches, mut pending: mpsc::Receiver<Pending>, shutdown: CancellationToken) {
    let Batches {
        raft,
        clock,
        commit_timeout,
        tasks,
    } = batches;
    let in_flight = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    let mut waiting = Vec::with_capacity(MAX_BATCH_COMMANDS);
    loop {
        // Writes left over from the last batch go first, with whatever else waits.
        if waiting.is_empty() {
            let received = tokio::select! {
                received = pending.recv_many(&mut waiting, MAX_BATCH_COMMANDS) => received,
                _ = shutdown.cancelled() => return,
            };
            if received == 0 {
                return;
            }
        } else {
            while waiting.len() < MAX_BATCH_COMMANDS {
                let Ok(next) = pending.try_recv() else {
                    break;
                };
                waiting.push(next);
            }
        }
        let permit = tokio::select! {
            permit = in_flight.clone().acquire_owned() => permit,
            _ = shutdown.cancelled() => return,
        };
        let Ok(permit) = permit else {
            return;
        };
        let mut bytes = 0;
        let fitting = waiting
            .iter()
            .take_while(|p| {
                bytes += p.bytes;
                bytes <= MAX_BATCH_BYTES
            })
            .count()
            .max(1);
        let (proposals, replies): (Vec<Proposal>, Vec<Reply>) = waiting
            .drain(..fitting)
            .map(|p| (p.proposal, p.reply))
            .unzip();
        let batch = Batch {
            stamp_ms: clock.now_ms(),
            proposals,
        };
        match raft.client_write_ff(batch).await {
            Ok(response) => {
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
                    // At shutdown the callers hear "shutting down" (their replies drop).
                    let result = tokio::select! {
                        result = tokio::time::timeout(commit_timeout, response) => result,
                        _ = shutdown.cancelled() => return,
                    };
                    drop(permit);
                    match result {
                        Ok(result) => deliver(result, replies),
                        // It may still commit; the writers retry under their ids.
                        Err(_) => fail_all(replies, LeaderError::NotLeader { leader: None }),
                    }
                });
            }
            Err(fatal) => fail_all(replies, LeaderError::Failed(fatal.to_string())),
        }
    }
}

type WriteResult = Result<
    Result<
        openraft::raft::ClientWriteResponse<crate::raft::TypeConfig>,
        ClientWriteError<crate::raft::NodeId, crate::raft::Node>,
    >,
    oneshot::error::RecvError,
>;

fn deliver(result: WriteResult, replies: Vec<Reply>) {
    match result {
        Ok(Ok(response)) => {
            if response.data.len() != replies.len() {
                let error = format!(
                    "a batch of {} commands produced {} outcomes",
                    replies.len(),
                    response.data.len()
                );
                return fail_all(replies, LeaderError::Failed(error));
            }
            for (reply, outcome) in replies.into_iter().zip(response.data) {
                // A caller that gave up no longer listens; nothing to do.
                let _ = reply.send(Ok(outcome));
            }
        }
        Ok(Err(ClientWriteError::ForwardToLeader(forward))) => fail_all(
            replies,
            LeaderError::NotLeader {
                leader: forward
                    .leader_id
                    .zip(forward.leader_node.map(|node| node.addr)),
            },
        ),
        Ok(Err(ClientWriteError::ChangeMembershipError(error))) => {
            fail_all(replies, LeaderError::Failed(error.to_string()))
        }
        // Raft dropped the request (it stopped leading or is shutting down). The entry
        // may still commit under the next leader: the callers retry with the same
        // request ids, which the state machine applies at most once.
        Err(_) => fail_all(replies, LeaderError::NotLeader { leader: None }),
    }
}

fn fail_all(replies: Vec<Reply>, error: LeaderError) {
    for reply in replies {
        let _ = reply.send(Err(error.clone()));
    }
}
