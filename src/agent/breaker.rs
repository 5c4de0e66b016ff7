//! The circuit breaker of one replica: closed, open, half-open. Pure; the replica's
//! probes (and, later, its tool calls) feed it outcomes with the current time.
//!
//! - closed: counts consecutive failures; at `failure_threshold` it opens;
//! - open: refuses calls for `open_ms`, then turns half-open;
//! - half-open: lets `half_open_max_calls` calls through; a success closes it, a
//!   failure opens it again.

use std::time::Duration;

use tokio::time::Instant;

use crate::registry::{BreakerState, CircuitBreaker};

#[derive(Clone, Debug)]
pub struct Breaker {
    config: CircuitBreaker,
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    half_open_calls: u32,
}

impl Breaker {
    pub fn new(config: CircuitBreaker) -> Breaker {
        Breaker {
            config,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            opened_at: None,
            half_open_calls: 0,
        }
    }

    /// The state at `now` (an open breaker turns half-open once `open_ms` passed).
    /// Takes new settings (a spec change applies live); the state stays as it is.
    pub fn reconfigure(&mut self, config: CircuitBreaker) {
        self.config = config;
    }

    pub fn state(&mut self, now: Instant) -> BreakerState {
        if self.state == BreakerState::Open
            && self.opened_at.is_some_and(|at| {
                now.duration_since(at) >= Duration::from_millis(self.config.open_ms)
            })
        {
            self.state = BreakerState::HalfOpen;
            self.half_open_calls = 0;
        }
        self.state
    }

    /// Whether a call may go through now; counts half-open trial calls.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state(now) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen if self.half_open_calls < self.config.half_open_max_calls => {
                self.half_open_calls += 1;
                true
            }
            BreakerState::HalfOpen => false,
        }
    }

    pub fn record_success(&mut self) {
        self.consecutive_failures = 0;
        self.state = BreakerState::Closed;
        self.opened_at = None;
    }

    pub fn record_failure(&mut self, now: Instant) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let trip = match self.state(now) {
            BreakerState::HalfOpen => true,
            BreakerState::Closed => self.consecutive_failures >= self.config.failure_threshold,
            BreakerState::Open => false,
        };
        if trip {
            self.state = BreakerState::Open;
            self.opened_at = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_half_opens_and_closes() {
        let config = CircuitBreaker {
            failure_threshold: 2,
            open_ms: 1_000,
            half_open_max_calls: 1,
        };
        let mut breaker = Breaker::new(config);
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        // (time ms, outcome: Some(ok) or None for "ask allow", expected state after)
        let steps: Vec<(u64, Option<bool>, BreakerState, bool)> = vec![
            (0, Some(false), BreakerState::Closed, true),
            (10, Some(true), BreakerState::Closed, true),
            (20, Some(false), BreakerState::Closed, true),
            (30, Some(false), BreakerState::Open, false),
            (900, None, BreakerState::Open, false),
            (1_030, None, BreakerState::HalfOpen, true),
            // One trial call only.
            (1_031, None, BreakerState::HalfOpen, false),
            (1_040, Some(false), BreakerState::Open, false),
            (2_040, None, BreakerState::HalfOpen, true),
            (2_050, Some(true), BreakerState::Closed, true),
        ];
        for (ms, outcome, expected, allowed) in steps {
            match outcome {
                Some(true) => breaker.record_success(),
                Some(false) => breaker.record_failure(at(ms)),
                None => assert_eq!(breaker.allow(at(ms)), allowed, "allow at {ms} ms"),
            }
            assert_eq!(breaker.state(at(ms)), expected, "state at {ms} ms");
        }
    }
}
