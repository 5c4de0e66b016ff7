//! Client sessions, as in the Raft thesis (section 6.3), so that a write is applied at
//! most once however often it is retried.
//!
//! Every boot of a node is one session, and its writes are numbered. With each write
//! the node sends its floor: every write of that boot numbered below it has been
//! answered or given up on, and is never sent again. The state machine keeps, per
//! session, the outcome of every write at or above the floor; a retried write gets the
//! outcome of its first application, and a write below the floor (a late copy of one
//! already answered) is refused without being applied. So how long a write may wait
//! before it is retried does not depend on the write rate, as it would with a table of
//! the last N request ids.
//!
//! A session whose last write is older than `SESSION_TTL_MS` of leader-stamped time
//! goes: a node retries a write only within its request timeout, seconds. A session
//! that holds more than `MAX_OUTCOMES_PER_SESSION` outcomes drops its oldest and raises
//! its floor past them, so a retry of one of those is refused, never applied twice.
//!
//! Everything here is replicated state: the same entries give the same sessions on
//! every node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{NodeId, RequestId};
use crate::registry::{Outcome, RegistryError};

/// How long a session lives after its last write, in leader-stamped milliseconds.
pub const SESSION_TTL_MS: u64 = 15 * 60 * 1_000;
/// Outcomes one session keeps at most (a node has far fewer writes in flight).
pub const MAX_OUTCOMES_PER_SESSION: usize = 65_536;

/// How a session forgets outcomes beyond its cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// Keep at most this many, and raise the floor past those dropped (production).
    Capped(usize),
    /// Keep this many and forget the rest, floor unchanged: the old table of the last N
    /// request ids (the ShrinkSessionWindow bug, through the state machine's seam).
    Forgetful(usize),
}

impl Default for Window {
    fn default() -> Window {
        Window::Capped(MAX_OUTCOMES_PER_SESSION)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    /// The writes below this were answered or given up on: they are not applied.
    floor: u64,
    /// Outcomes of the applied writes at or above the floor, by number.
    outcomes: BTreeMap<u64, Outcome>,
    /// Leader time of the session's last write.
    last_write_ms: u64,
}

/// Every live session, by (node, boot).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sessions {
    sessions: BTreeMap<(NodeId, u64), Session>,
    /// The latest leader time applied (never goes back, whatever the leaders' clocks).
    now_ms: u64,
}

/// What to do with a write.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// First seen: apply it.
    Apply,
    /// Applied before: answer this again.
    Answered(Outcome),
}

impl Sessions {
    /// Advances leader time to `stamp_ms` (the entry's), and drops the sessions that
    /// have been idle too long.
    pub fn advance(&mut self, stamp_ms: u64) {
        if stamp_ms <= self.now_ms {
            return;
        }
        self.now_ms = stamp_ms;
        let now = self.now_ms;
        self.sessions
            .retain(|_, s| s.last_write_ms.saturating_add(SESSION_TTL_MS) >= now);
    }

    /// Whether write `id` is to be applied, or what it was answered.
    pub fn admit(&self, id: &RequestId) -> Admission {
        let Some(session) = self.sessions.get(&(id.node, id.boot)) else {
            return Admission::Apply;
        };
        if let Some(outcome) = session.outcomes.get(&id.seq) {
            return Admission::Answered(outcome.clone());
        }
        if id.seq < session.floor {
            return Admission::Answered(Outcome::Rejected(RegistryError::StaleRequest {
                seq: id.seq,
            }));
        }
        Admission::Apply
    }

    /// Records the outcome of write `id`, sent with `floor`.
    pub fn record(&mut self, id: &RequestId, floor: u64, outcome: Outcome, window: Window) {
        let now = self.now_ms;
        let session = self.sessions.entry((id.node, id.boot)).or_default();
        session.last_write_ms = now;
        session.outcomes.insert(id.seq, outcome);
        if floor > session.floor {
            session.floor = floor;
            while session
                .outcomes
                .first_key_value()
                .is_some_and(|(seq, _)| *seq < floor)
            {
                session.outcomes.pop_first();
            }
        }
        let (cap, raise_floor) = match window {
            Window::Capped(cap) => (cap, true),
            Window::Forgetful(cap) => (cap, false),
        };
        while session.outcomes.len() > cap {
            let Some((oldest, _)) = session.outcomes.pop_first() else {
                break;
            };
            if raise_floor {
                session.floor = session.floor.max(oldest + 1);
            }
        }
    }

    /// Sessions live now.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(node: NodeId, seq: u64) -> RequestId {
        RequestId { node, boot: 1, seq }
    }

    fn applied(revision: u64) -> Outcome {
        Outcome::Applied { revision }
    }

    #[test]
    fn a_write_is_answered_again_until_the_floor_passes_it_then_refused() {
        let mut sessions = Sessions::default();
        assert_eq!(sessions.admit(&id(1, 5)), Admission::Apply);
        sessions.record(&id(1, 5), 0, applied(7), Window::default());
        assert_eq!(sessions.admit(&id(1, 5)), Admission::Answered(applied(7)));
        // Another node's write of the same number is its own.
        assert_eq!(sessions.admit(&id(2, 5)), Admission::Apply);
        // The node says everything below 6 is done.
        sessions.record(&id(1, 6), 6, applied(8), Window::default());
        assert_eq!(
            sessions.admit(&id(1, 5)),
            Admission::Answered(Outcome::Rejected(RegistryError::StaleRequest { seq: 5 }))
        );
        assert_eq!(sessions.admit(&id(1, 6)), Admission::Answered(applied(8)));
        // A lower floor later (an older proposal retried) does not bring 5 back.
        sessions.record(&id(1, 7), 2, applied(9), Window::default());
        assert!(matches!(
            sessions.admit(&id(1, 5)),
            Admission::Answered(Outcome::Rejected(_))
        ));
    }

    #[test]
    fn idle_sessions_expire_by_leader_time_and_time_never_goes_back() {
        let mut sessions = Sessions::default();
        sessions.advance(1_000);
        sessions.record(&id(1, 0), 0, applied(1), Window::default());
        sessions.advance(500);
        sessions.record(&id(2, 0), 0, applied(2), Window::default());
        assert_eq!(sessions.len(), 2);
        sessions.advance(1_000 + SESSION_TTL_MS);
        assert_eq!(sessions.len(), 2);
        sessions.advance(1_001 + SESSION_TTL_MS);
        assert!(sessions.is_empty());
    }

    #[test]
    fn a_full_session_raises_its_floor_rather_than_forget_silently() {
        let mut sessions = Sessions::default();
        for seq in 0..(MAX_OUTCOMES_PER_SESSION as u64 + 10) {
            sessions.record(&id(1, seq), 0, applied(seq + 1), Window::default());
        }
        assert!(matches!(
            sessions.admit(&id(1, 3)),
            Admission::Answered(Outcome::Rejected(RegistryError::StaleRequest { seq: 3 }))
        ));
        let last = MAX_OUTCOMES_PER_SESSION as u64 + 9;
        assert_eq!(
            sessions.admit(&id(1, last)),
            Admission::Answered(applied(last + 1))
        );
    }
}
