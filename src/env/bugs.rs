//! Bugs that can be switched on deliberately, to prove that the simulator's checkers
//! catch what they claim to catch.
//!
//! The switch exists only with the `inject-bugs` feature, which only the simulator
//! crate enables. Without it `active` is a constant `false`, every bug path compiles
//! away, and nothing can switch one on: a production build has none of them.

/// A deliberate bug. Each names the rule of the design that it breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bug {
    /// The leader acknowledges a write as soon as it is submitted, before a quorum has
    /// stored it, with the revision it expects the write to get.
    AckBeforeCommit,
    /// A linearizable read is answered from the node's local state without asking the
    /// leader for its commit index.
    StaleFollowerRead,
    /// A log append is acknowledged to Raft before it is durable: a node that crashes
    /// loses log entries that the leader counted towards a quorum.
    SkipLogFsync,
    /// A vote is kept only in memory: a node that crashes forgets whom it voted for and
    /// can vote twice in one term.
    SkipVoteFsync,
    /// The agent runs its replicas whether or not its lease from the leader is fresh: a
    /// node cut off from the leader keeps them while the leader moves them elsewhere.
    IgnoreLease,
    /// A new leader gives no grace: it marks down at once every node it has not heard
    /// from since it took over, and moves their replicas while they still run.
    NoLeaderGrace,
    /// A deposed leader keeps planning for a while, stamping its plans with the term it
    /// led and sending them to the new leader, and the registry takes a plan whatever its
    /// term.
    AcceptStalePlan,
    /// The leader marks down only nodes that are active: a draining node that dies stays
    /// "up" for good, and since every hand-over waits for a heartbeat from each node that
    /// is not down, nothing moves anywhere in the cluster again.
    DeadDrainBlocks,
    /// A replica's supervisor ignores the deadline the node renews: a paused node's
    /// servers keep running while the leader starts their slots elsewhere.
    IgnoreFenceDeadline,
    /// A tool call that may have reached its server (no answer in time, a connection
    /// lost after sending) is sent again to the next replica: a call can run twice.
    RetryAfterSend,
    /// A node that has just restarted says nothing of the servers its earlier run may
    /// have left behind: the leader hands their slots over while they still run.
    ForgetOrphans,
    /// Tool calls go to every assigned replica, whatever its health, its breaker or its
    /// node's status, and a replica lets calls through an open breaker.
    RouteToUnavailable,
    /// The state machine remembers only the outcomes of a node's last few writes, as a
    /// table of the last N request ids would: a write retried after more than that many
    /// others committed is applied again.
    ShrinkSessionWindow,
    /// The agent starts every replica assigned to it at once, whatever
    /// `max_starting_replicas` says: a node that takes over many replicas launches them
    /// all together and starves its host.
    UnboundedStarts,
}

impl Bug {
    pub const ALL: [Bug; 14] = [
        Bug::AckBeforeCommit,
        Bug::StaleFollowerRead,
        Bug::SkipLogFsync,
        Bug::SkipVoteFsync,
        Bug::IgnoreLease,
        Bug::NoLeaderGrace,
        Bug::AcceptStalePlan,
        Bug::DeadDrainBlocks,
        Bug::IgnoreFenceDeadline,
        Bug::RetryAfterSend,
        Bug::ForgetOrphans,
        Bug::RouteToUnavailable,
        Bug::ShrinkSessionWindow,
        Bug::UnboundedStarts,
    ];

    /// The name used on the simulator's command line.
    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeCommit => "ack-before-commit",
            Bug::StaleFollowerRead => "stale-follower-read",
            Bug::SkipLogFsync => "skip-log-fsync",
            Bug::SkipVoteFsync => "skip-vote-fsync",
            Bug::IgnoreLease => "ignore-lease",
            Bug::NoLeaderGrace => "no-leader-grace",
            Bug::AcceptStalePlan => "accept-stale-plan",
            Bug::DeadDrainBlocks => "dead-drain-blocks",
            Bug::IgnoreFenceDeadline => "ignore-fence-deadline",
            Bug::RetryAfterSend => "retry-after-send",
            Bug::ForgetOrphans => "forget-orphans",
            Bug::RouteToUnavailable => "route-to-unavailable",
            Bug::ShrinkSessionWindow => "shrink-session-window",
            Bug::UnboundedStarts => "unbounded-starts",
        }
    }

    pub fn from_name(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|bug| bug.name() == name)
    }
}

#[cfg(feature = "inject-bugs")]
mod switch {
    use std::sync::atomic::{AtomicU8, Ordering};

    use super::Bug;

    /// 0: no bug; otherwise the position of the bug in `Bug::ALL`, plus one.
    static ACTIVE: AtomicU8 = AtomicU8::new(0);

    fn code(bug: Bug) -> u8 {
        Bug::ALL
            .iter()
            .position(|b| *b == bug)
            .map_or(0, |i| i as u8 + 1)
    }

    /// Switches `bug` on for every node in this process (the simulator runs one
    /// simulation per process), or every bug off.
    pub fn switch_on(bug: Option<Bug>) {
        ACTIVE.store(bug.map_or(0, code), Ordering::Relaxed);
    }

    pub fn active(bug: Bug) -> bool {
        ACTIVE.load(Ordering::Relaxed) == code(bug)
    }
}

#[cfg(feature = "inject-bugs")]
pub use switch::{active, switch_on};

/// Whether `bug` is switched on: never, in a build without `inject-bugs`.
#[cfg(not(feature = "inject-bugs"))]
#[inline(always)]
pub fn active(_bug: Bug) -> bool {
    false
}
