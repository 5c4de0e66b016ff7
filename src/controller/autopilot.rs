//! Autopilot: the leader keeps the voters at strength. Pure policy; the controller
//! carries out what it decides, one membership change at a time.
//!
//! Consul's autopilot is the model:
//! - a voter the leader has not heard from for `dead_voter_after` is replaced by a
//!   healthy learner, in one change (the old voter stays on as a learner, so that it
//!   can catch up and serve again if it comes back);
//! - while there are fewer voters than `max_voters`, a healthy learner is promoted;
//! - a learner not heard from for `remove_dead_after` leaves the cluster for good.
//!
//! A learner is healthy when the leader has heard from it without a gap longer than the
//! node timeout for at least `learner_stable` (the stabilization time), its registry
//! record is up and in service, and it has applied nearly everything the leader has.
//! A new leader counts every member as heard when it took over, so it replaces no
//! voter before `dead_voter_after` has passed in its own term. Ties go to the lowest
//! node id, so that the same view always gives the same change.

use std::time::Duration;

use tokio::time::Instant;

use crate::raft::NodeId;

/// Most log entries a learner may lag behind the leader's last index and still be
/// promoted: a voter that far behind would slow every commit while it catches up.
pub const MAX_PROMOTION_LAG: u64 = 500;

/// What the leader knows of one member.
#[derive(Clone, Debug)]
pub struct MemberView {
    pub id: NodeId,
    pub voter: bool,
    /// When the leader last heard from it (at least when it took over).
    pub last_heard: Instant,
    /// Since when it has heard from it without a gap, if it hears from it now.
    pub heard_since: Option<Instant>,
    /// Its registry record is up, and it is not draining.
    pub in_service: bool,
    /// Its applied index, from its last heartbeat.
    pub applied: u64,
}

/// The thresholds, from the node's config.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub max_voters: usize,
    /// `None`: dead voters are never replaced.
    pub dead_voter_after: Option<Duration>,
    pub learner_stable: Duration,
    /// `None`: dead learners stay members.
    pub remove_dead_after: Option<Duration>,
    /// Silence past this breaks a learner's run of heartbeats.
    pub node_timeout: Duration,
}

/// One membership change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Make `learner` a voter, in place of `replacing` (which stays a learner).
    Promote {
        learner: NodeId,
        replacing: Option<NodeId>,
    },
    /// Take a dead learner out of the cluster.
    Remove(NodeId),
}

/// The change the leader `me` should make now, if any. `members` is sorted by id.
pub fn decide(
    me: NodeId,
    members: &[MemberView],
    leader_last_log: u64,
    now: Instant,
    policy: &Policy,
) -> Option<Change> {
    let silent_for = |m: &MemberView| now.saturating_duration_since(m.last_heard);
    let healthy = members.iter().find(|m| {
        !m.voter
            && m.in_service
            && silent_for(m) <= policy.node_timeout
            && m.heard_since
                .is_some_and(|since| now.saturating_duration_since(since) >= policy.learner_stable)
            && m.applied + MAX_PROMOTION_LAG >= leader_last_log
    });
    let voters = members.iter().filter(|m| m.voter).count();
    if let (Some(learner), Some(after)) = (healthy, policy.dead_voter_after) {
        let dead = members
            .iter()
            .find(|m| m.voter && m.id != me && silent_for(m) > after);
        if let Some(dead) = dead {
            return Some(Change::Promote {
                learner: learner.id,
                replacing: Some(dead.id),
            });
        }
    }
    if let Some(learner) = healthy.filter(|_| voters < policy.max_voters) {
        return Some(Change::Promote {
            learner: learner.id,
            replacing: None,
        });
    }
    let after = policy.remove_dead_after?;
    members
        .iter()
        .find(|m| !m.voter && m.id != me && silent_for(m) > after)
        .map(|m| Change::Remove(m.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn policy() -> Policy {
        Policy {
            max_voters: 3,
            dead_voter_after: Some(10 * SECOND),
            learner_stable: 5 * SECOND,
            remove_dead_after: Some(60 * SECOND),
            node_timeout: 2 * SECOND,
        }
    }

    /// A member heard `silent` ago, in an unbroken run of `run` before that.
    fn member(id: NodeId, voter: bool, now: Instant, silent: u64, run: u64) -> MemberView {
        let last_heard = now - Duration::from_secs(silent);
        MemberView {
            id,
            voter,
            last_heard,
            heard_since: (silent <= 2).then(|| last_heard - Duration::from_secs(run)),
            in_service: true,
            applied: 1_000,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_voter_is_replaced_by_the_lowest_healthy_learner() {
        tokio::time::advance(Duration::from_secs(600)).await;
        let now = Instant::now();
        let members = [
            member(1, true, now, 0, 100),
            member(2, true, now, 11, 0),
            member(3, true, now, 0, 100),
            member(4, false, now, 0, 3),
            member(5, false, now, 0, 100),
            member(6, false, now, 0, 100),
        ];
        assert_eq!(
            decide(1, &members, 1_200, now, &policy()),
            Some(Change::Promote {
                learner: 5,
                replacing: Some(2)
            }),
            "node 4 is not stable yet"
        );
        // Down for less than the threshold: no change.
        let mut waiting = members.clone();
        waiting[1] = member(2, true, now, 9, 0);
        assert_eq!(decide(1, &waiting, 1_200, now, &policy()), None);
        // Off: no change.
        let off = Policy {
            dead_voter_after: None,
            ..policy()
        };
        assert_eq!(decide(1, &members, 1_200, now, &off), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lagging_draining_or_silent_learner_is_not_promoted() {
        tokio::time::advance(Duration::from_secs(600)).await;
        let now = Instant::now();
        let voters = [member(1, true, now, 0, 100), member(2, true, now, 30, 0)];
        let mut lagging = member(3, false, now, 0, 100);
        lagging.applied = 100;
        let mut draining = member(4, false, now, 0, 100);
        draining.in_service = false;
        let silent = member(5, false, now, 3, 0);
        let members = [
            voters[0].clone(),
            voters[1].clone(),
            lagging,
            draining,
            silent,
        ];
        let no_removal = Policy {
            remove_dead_after: None,
            ..policy()
        };
        assert_eq!(decide(1, &members, 1_000, now, &no_removal), None);
    }

    #[tokio::test(start_paused = true)]
    async fn voters_are_filled_up_to_the_cap_and_dead_learners_removed() {
        tokio::time::advance(Duration::from_secs(600)).await;
        let now = Instant::now();
        let members = [
            member(1, true, now, 0, 100),
            member(2, true, now, 0, 100),
            member(3, false, now, 0, 100),
            member(4, false, now, 0, 100),
        ];
        assert_eq!(
            decide(1, &members, 1_000, now, &policy()),
            Some(Change::Promote {
                learner: 3,
                replacing: None
            })
        );
        let full = [
            member(1, true, now, 0, 100),
            member(2, true, now, 0, 100),
            member(3, true, now, 0, 100),
            member(4, false, now, 61, 0),
        ];
        assert_eq!(
            decide(1, &full, 1_000, now, &policy()),
            Some(Change::Remove(4))
        );
        // The leader never takes itself out.
        assert_eq!(decide(4, &full, 1_000, now, &policy()), None);
    }
}
