//! Spreads out election rounds so that split votes end.
//!
//! openraft 0.9 draws each node's election timeout once and checks it on a tick (every
//! 1.5 heartbeats). Two candidates whose timeouts fall between the same ticks start
//! every round at the same relative moment and split the vote every time: the
//! simulator found clusters of two live voters without a leader for good. So each time
//! this node starts a round, it holds back its next round for a pause drawn from its
//! seed; the first round is never delayed.

use std::time::Duration;

use openraft::ServerState;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::raft::Raft;

/// Runs until `shutdown` resolves or `raft` stops. `max_pause_ms` bounds each pause.
pub async fn spread_rounds(
    raft: Raft,
    seed: u64,
    max_pause_ms: u64,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x656c_6563_7469_6f6e);
    let mut metrics = raft.metrics();
    let mut last_round = 0;
    loop {
        let started = tokio::select! {
            started = metrics
                .wait_for(|m| m.state == ServerState::Candidate && m.current_term > last_round) =>
            {
                started.map(|m| m.current_term)
            }
            _ = &mut shutdown => return,
        };
        let Ok(term) = started else {
            return;
        };
        last_round = term;
        raft.runtime_config().elect(false);
        let pause = Duration::from_millis(rng.gen_range(0..=max_pause_ms));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = &mut shutdown => return,
        }
        raft.runtime_config().elect(true);
    }
}
