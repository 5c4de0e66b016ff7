//! When to restart a failed replica: capped exponential backoff, and crash-loop
//! detection over a sliding window. Pure; the replica task feeds it failure times.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::registry::RestartPolicy;

#[derive(Clone, Debug)]
pub struct Restarts {
    policy: RestartPolicy,
    /// Failures within the crash-loop window, oldest first.
    recent: VecDeque<Instant>,
}

/// What to do after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub delay: Duration,
    pub crash_loop: bool,
}

impl Restarts {
    pub fn new(policy: RestartPolicy) -> Restarts {
        Restarts {
            policy,
            recent: VecDeque::new(),
        }
    }

    /// Records a failure at `now` and decides how long to wait before the next start.
    /// The delay doubles with each failure in the window, up to `max_backoff_ms`; with
    /// `crash_loop_restarts` failures in the window the replica is in crash-loop (it
    /// still retries, at the longest delay).
    /// Takes a new policy (a spec change applies live); the history stays.
    pub fn reconfigure(&mut self, policy: RestartPolicy) {
        self.policy = policy;
    }

    pub fn failed(&mut self, now: Instant) -> Decision {
        let window = Duration::from_millis(self.policy.crash_loop_window_ms);
        while self
            .recent
            .front()
            .is_some_and(|at| now.duration_since(*at) > window)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        // Bounded: never more entries than the crash-loop threshold needs.
        let keep = self.policy.crash_loop_restarts.max(1) as usize;
        while self.recent.len() > keep {
            self.recent.pop_front();
        }
        let failures = self.recent.len() as u32;
        let crash_loop = failures >= self.policy.crash_loop_restarts;
        let max = self.policy.max_backoff_ms;
        let delay_ms = if crash_loop {
            max
        } else {
            let factor = 1u64 << (failures - 1).min(32);
            self.policy
                .initial_backoff_ms
                .saturating_mul(factor)
                .min(max)
        };
        Decision {
            delay: Duration::from_millis(delay_ms),
            crash_loop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_crash_loops() {
        let policy = RestartPolicy {
            initial_backoff_ms: 100,
            max_backoff_ms: 500,
            crash_loop_restarts: 5,
            crash_loop_window_ms: 10_000,
        };
        let mut restarts = Restarts::new(policy);
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let table: Vec<(u64, u64, bool)> = vec![
            (0, 100, false),
            (200, 200, false),
            (500, 400, false),
            (1_000, 500, false),
            (1_600, 500, true),
            (2_200, 500, true),
            // Long after: the window forgot the old failures.
            (30_000, 100, false),
        ];
        for (ms, delay_ms, crash_loop) in table {
            assert_eq!(
                restarts.failed(at(ms)),
                Decision {
                    delay: Duration::from_millis(delay_ms),
                    crash_loop
                },
                "failure at {ms} ms"
            );
        }
    }
}
