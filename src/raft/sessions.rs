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
//! goes: a node retries a write only within its request timeout (at most
//! `MAX_REQUEST_TIMEOUT_MS`). The table is bounded, so that it fits in a snapshot:
//! - at most `MAX_CLIENT_SESSIONS` sessions. A new session takes the place of the one
//!   idle longest if that one has been idle for `SESSION_EVICTABLE_MS` (twice the
//!   longest request timeout, so none of its writes is still being sent); otherwise
//!   its write is refused, not applied, and may be sent again later;
//! - at most `MAX_OUTCOMES` outcomes in all. Past that, the session holding the most
//!   drops its oldest outcome and raises its floor past it, so a retry of that write
//!   is refused, never applied twice.
//!
//! Everything here is replicated state: the same entries give the same sessions on
//! every node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{NodeId, RequestId};
use crate::config::MAX_REQUEST_TIMEOUT_MS;
use crate::registry::{Outcome, RegistryError};

/// How long a session lives after its last write, in leader-stamped milliseconds.
pub const SESSION_TTL_MS: u64 = 15 * 60 * 1_000;
/// Sessions kept at most: a boot of each of `MAX_NODES` nodes, and room for restarts.
pub const MAX_CLIENT_SESSIONS: usize = 4_096;
/// Outcomes kept at most, over all sessions (one write outstanding for a request's time
/// holds back its node's floor: at 10,000 writes/s, 60 s of them would be 600,000; the
/// cap refuses the late ones instead).
pub const MAX_OUTCOMES: usize = 65_536;
/// How long a session must have been idle before a new one may take its place.
pub const SESSION_EVICTABLE_MS: u64 = 2 * MAX_REQUEST_TIMEOUT_MS;

/// How sessions forget outcomes beyond the cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// Keep at most this many in all, and raise the floor past those dropped
    /// (production).
    Capped(usize),
    /// Keep this many and forget the rest, floor unchanged: the old table of the last N
    /// request ids (the ShrinkSessionWindow bug, through the state machine's seam).
    Forgetful(usize),
}

impl Default for Window {
    fn default() -> Window {
        Window::Capped(MAX_OUTCOMES)
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
    /// Outcomes kept, over all sessions (counted again after decoding: `recount`).
    #[serde(skip)]
    outcomes: usize,
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
        let mut dropped = 0;
        self.sessions.retain(|_, s| {
            let live = s.last_write_ms.saturating_add(SESSION_TTL_MS) >= now;
            if !live {
                dropped += s.outcomes.len();
            }
            live
        });
        self.outcomes -= dropped;
    }

    /// The session idle longest, if a new one may take its place.
    fn evictable(&self) -> Option<(NodeId, u64)> {
        self.sessions
            .iter()
            .min_by_key(|(key, s)| (s.last_write_ms, **key))
            .filter(|(_, s)| s.last_write_ms.saturating_add(SESSION_EVICTABLE_MS) <= self.now_ms)
            .map(|(key, _)| *key)
    }

    /// Whether write `id` is to be applied, or what it was answered.
    pub fn admit(&self, id: &RequestId) -> Admission {
        let Some(session) = self.sessions.get(&(id.node, id.boot)) else {
            if self.sessions.len() >= MAX_CLIENT_SESSIONS && self.evictable().is_none() {
                return Admission::Answered(Outcome::Rejected(RegistryError::Full {
                    reason: format!(
                        "the table of client sessions is full: {MAX_CLIENT_SESSIONS} node \
                         boots wrote within the last {} s; try again later",
                        SESSION_EVICTABLE_MS / 1_000
                    ),
                }));
            }
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

    /// Records the outcome of write `id`, sent with `floor` (admitted by `admit`).
    pub fn record(&mut self, id: &RequestId, floor: u64, outcome: Outcome, window: Window) {
        let key = (id.node, id.boot);
        if !self.sessions.contains_key(&key) && self.sessions.len() >= MAX_CLIENT_SESSIONS {
            if let Some(idle) = self.evictable() {
                if let Some(gone) = self.sessions.remove(&idle) {
                    self.outcomes -= gone.outcomes.len();
                }
            }
        }
        let now = self.now_ms;
        let session = self.sessions.entry(key).or_default();
        session.last_write_ms = now;
        let before = session.outcomes.len();
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
        if let Window::Forgetful(cap) = window {
            while session.outcomes.len() > cap {
                session.outcomes.pop_first();
            }
        }
        self.outcomes = self.outcomes - before + session.outcomes.len();
        if let Window::Capped(cap) = window {
            while self.outcomes > cap {
                self.drop_oldest_of_largest();
            }
        }
    }

    /// Drops the oldest outcome of the session holding the most, raising its floor.
    fn drop_oldest_of_largest(&mut self) {
        let Some(session) = self
            .sessions
            .iter_mut()
            .max_by_key(|(key, s)| (s.outcomes.len(), std::cmp::Reverse(**key)))
            .map(|(_, s)| s)
        else {
            return;
        };
        if let Some((oldest, _)) = session.outcomes.pop_first() {
            session.floor = session.floor.max(oldest + 1);
            self.outcomes -= 1;
        }
    }

    /// Counts the outcomes again from the sessions (after decoding a table).
    pub fn recount(&mut self) {
        self.outcomes = self.sessions.values().map(|s| s.outcomes.len()).sum();
    }

    /// Outcomes kept, over all sessions.
    pub fn outcomes(&self) -> usize {
        self.outcomes
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
    fn a_full_table_raises_a_floor_rather_than_forget_silently() {
        let mut sessions = Sessions::default();
        for seq in 0..(MAX_OUTCOMES as u64 + 10) {
            sessions.record(&id(1, seq), 0, applied(seq + 1), Window::default());
        }
        assert!(matches!(
            sessions.admit(&id(1, 3)),
            Admission::Answered(Outcome::Rejected(RegistryError::StaleRequest { seq: 3 }))
        ));
        assert_eq!(sessions.outcomes(), MAX_OUTCOMES);
        let last = MAX_OUTCOMES as u64 + 9;
        assert_eq!(
            sessions.admit(&id(1, last)),
            Admission::Answered(applied(last + 1))
        );
    }

    #[test]
    fn a_new_session_takes_an_idle_ones_place_or_is_refused_unapplied() {
        let mut sessions = Sessions::default();
        sessions.advance(1_000);
        for node in 0..MAX_CLIENT_SESSIONS as NodeId {
            sessions.record(&id(node, 0), 0, applied(node), Window::default());
        }
        sessions.advance(2_000);
        sessions.record(&id(7, 1), 0, applied(9), Window::default());
        // Every session wrote within the last two request timeouts: a new one waits.
        let newcomer = id(MAX_CLIENT_SESSIONS as NodeId, 0);
        assert!(matches!(
            sessions.admit(&newcomer),
            Admission::Answered(Outcome::Rejected(RegistryError::Full { .. }))
        ));
        // Later, it takes the place of the one idle longest (node 0; node 7 wrote last).
        sessions.advance(1_000 + SESSION_EVICTABLE_MS);
        assert_eq!(sessions.admit(&newcomer), Admission::Apply);
        sessions.record(&newcomer, 0, applied(1), Window::default());
        assert_eq!(sessions.len(), MAX_CLIENT_SESSIONS);
        assert_eq!(sessions.outcomes(), MAX_CLIENT_SESSIONS + 1);
        assert_eq!(sessions.admit(&id(0, 0)), Admission::Apply, "node 0's went");
        assert_eq!(sessions.admit(&id(7, 0)), Admission::Answered(applied(7)));
    }
}
