//! The circuit breaker of one replica: closed, open, half-open. Pure; the replica's
//! health probes and its tool calls feed it outcomes with the current time, each
//! marked with where it came from.
//!
//! - closed: counts consecutive failures of calls and of probes apart; when either
//!   count reaches `failure_threshold` it opens. A server that answers pings but whose
//!   calls time out still trips it: answered pings do not clear call failures;
//! - open: refuses calls for `open_ms`, then turns half-open;
//! - half-open: lets `half_open_max_calls` calls through; a success closes it, a
//!   failure opens it again. A breaker that calls opened closes only on a call's
//!   success (an answered ping says nothing of calls); one that probes opened also
//!   closes on an answered probe.

use std::time::Duration;

use tokio::time::Instant;

use crate::registry::{BreakerState, CircuitBreaker};

/// Where an outcome came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A tool call (transport failures and timeouts count; any answer is a success).
    Call,
    /// A health probe (ping) or the replica failing as a whole.
    Probe,
}

#[derive(Clone, Debug)]
pub struct Breaker {
    config: CircuitBreaker,
    state: BreakerState,
    call_failures: u32,
    probe_failures: u32,
    /// What opened the breaker last.
    opened_by: Source,
    opened_at: Option<Instant>,
    half_open_calls: u32,
}

impl Breaker {
    pub fn new(config: CircuitBreaker) -> Breaker {
        Breaker {
            config,
            state: BreakerState::Closed,
            call_failures: 0,
            probe_failures: 0,
            opened_by: Source::Probe,
            opened_at: None,
            half_open_calls: 0,
        }
    }

    /// Takes new settings (a spec change applies live); the state stays as it is.
    pub fn reconfigure(&mut self, config: CircuitBreaker) {
        self.config = config;
    }

    /// The state at `now` (an open breaker turns half-open once `open_ms` passed).
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

    pub fn record_success(&mut self, source: Source) {
        match source {
            Source::Call => self.call_failures = 0,
            Source::Probe => self.probe_failures = 0,
        }
        let closes = match self.state {
            BreakerState::Closed => false,
            // Calls opened it: only a call shows they work again.
            _ if self.opened_by == Source::Call => source == Source::Call,
            _ => true,
        };
        if closes {
            self.state = BreakerState::Closed;
            self.opened_at = None;
            self.call_failures = 0;
            self.probe_failures = 0;
        }
    }

    pub fn record_failure(&mut self, source: Source, now: Instant) {
        let failures = match source {
            Source::Call => &mut self.call_failures,
            Source::Probe => &mut self.probe_failures,
        };
        *failures = failures.saturating_add(1);
        let failures = *failures;
        let trip = match self.state(now) {
            BreakerState::HalfOpen => true,
            BreakerState::Closed => failures >= self.config.failure_threshold,
            BreakerState::Open => false,
        };
        if trip {
            self.state = BreakerState::Open;
            self.opened_by = source;
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
        // (time ms, what happens, expected state after, whether a call is allowed)
        use Source::{Call, Probe};
        type Step = (u64, Option<(Source, bool)>, BreakerState, bool);
        let steps: Vec<Step> = vec![
            (0, Some((Probe, false)), BreakerState::Closed, true),
            (10, Some((Probe, true)), BreakerState::Closed, true),
            (20, Some((Probe, false)), BreakerState::Closed, true),
            (30, Some((Probe, false)), BreakerState::Open, false),
            (900, None, BreakerState::Open, false),
            (1_030, None, BreakerState::HalfOpen, true),
            // One trial call only.
            (1_031, None, BreakerState::HalfOpen, false),
            (1_040, Some((Call, false)), BreakerState::Open, false),
            (2_040, None, BreakerState::HalfOpen, true),
            (2_050, Some((Call, true)), BreakerState::Closed, true),
            // Calls that time out between answered pings still open it...
            (2_100, Some((Call, false)), BreakerState::Closed, true),
            (2_150, Some((Probe, true)), BreakerState::Closed, true),
            (2_200, Some((Call, false)), BreakerState::Open, false),
            // ...and an answered ping does not close it: only a call does.
            (2_250, Some((Probe, true)), BreakerState::Open, false),
            (3_200, None, BreakerState::HalfOpen, true),
            (3_210, Some((Probe, true)), BreakerState::HalfOpen, false),
            (3_220, Some((Call, true)), BreakerState::Closed, true),
            // Opened by probes, an answered probe closes it.
            (3_300, Some((Probe, false)), BreakerState::Closed, true),
            (3_310, Some((Probe, false)), BreakerState::Open, false),
            (3_320, Some((Probe, true)), BreakerState::Closed, true),
        ];
        for (ms, outcome, expected, allowed) in steps {
            match outcome {
                Some((source, true)) => breaker.record_success(source),
                Some((source, false)) => breaker.record_failure(source, at(ms)),
                None => assert_eq!(breaker.allow(at(ms)), allowed, "allow at {ms} ms"),
            }
            assert_eq!(breaker.state(at(ms)), expected, "state at {ms} ms");
        }
    }
}
