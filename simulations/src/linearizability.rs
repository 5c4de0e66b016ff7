//! A linearizability search for the history of one object that always decides.
//!
//! It is Wing and Gong's search with Lowe's memoization (the algorithm Porcupine
//! uses): a depth-first search over which operation takes effect next, where each pair
//! (set of operations already placed, model state) is explored at most once. The search
//! is bounded by a number of steps, not by wall time, so the same history always gets
//! the same verdict, on any machine; a history the budget cannot decide is reported as
//! undecided, and the caller fails it.
//!
//! An operation whose outcome is unknown (its client gave up, or the run ended first)
//! may have taken effect at any point after its invocation, or never: it is placed only
//! where that explains what others saw, and the search ends as soon as every operation
//! with a known outcome is placed.

use std::collections::HashSet;
use std::hash::Hash;

/// When one operation was invoked and returned, as positions in the history.
#[derive(Clone, Copy, Debug)]
pub struct Span {
    pub invoked: usize,
    /// `None` if the outcome is unknown.
    pub returned: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The budget ran out first.
    Undecided,
}

/// A verdict and the steps it took (one step is one operation tried in one state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    pub steps: u64,
}

/// A set of operations by index.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Placed(Box<[u64]>);

impl Placed {
    fn new(len: usize) -> Placed {
        Placed(vec![0; len.div_ceil(64)].into_boxed_slice())
    }
    fn contains(&self, index: usize) -> bool {
        self.0[index / 64] & (1 << (index % 64)) != 0
    }
    fn with(&self, index: usize) -> Placed {
        let mut next = self.clone();
        next.0[index / 64] |= 1 << (index % 64);
        next
    }
}

struct Frame<S> {
    placed: Placed,
    state: S,
    /// Into `by_return`: the first operation with a known outcome not yet placed.
    next_return: usize,
    /// Into `by_invocation`: the first operation not yet placed.
    next_invocation: usize,
    candidates: Vec<usize>,
    tried: usize,
}

/// Searches for an order of `spans` that is consistent with real time and in which
/// `step` accepts every operation. `step(state, i)` is the state after operation `i`
/// takes effect in `state`, or `None` if it cannot take effect there with the outcome
/// it had (for an operation of unknown outcome: if taking effect would change nothing,
/// as leaving it out covers that).
pub fn search<S, F>(spans: &[Span], initial: S, budget: u64, mut step: F) -> Outcome
where
    S: Clone + Eq + Hash,
    F: FnMut(&S, usize) -> Option<S>,
{
    let mut by_invocation: Vec<usize> = (0..spans.len()).collect();
    by_invocation.sort_by_key(|&i| spans[i].invoked);
    let mut by_return: Vec<usize> = (0..spans.len())
        .filter(|&i| spans[i].returned.is_some())
        .collect();
    by_return.sort_by_key(|&i| spans[i].returned);

    // The operations that may take effect next: every one not yet placed that was
    // invoked before the earliest return among those not yet placed. Known outcomes
    // come first, earliest return first, so that a valid history is found quickly.
    let candidates = |placed: &Placed, next_return: usize, next_invocation: usize| {
        let frontier = spans[by_return[next_return]].returned.unwrap_or(usize::MAX);
        let mut candidates: Vec<usize> = by_invocation[next_invocation..]
            .iter()
            .copied()
            .take_while(|&i| spans[i].invoked <= frontier)
            .filter(|&i| !placed.contains(i))
            .collect();
        candidates.sort_by_key(|&i| (spans[i].returned.is_none(), spans[i].returned));
        candidates
    };
    let outcome = |verdict, steps| Outcome { verdict, steps };
    if by_return.is_empty() {
        return outcome(Verdict::Linearizable, 0);
    }

    let root = Placed::new(spans.len());
    let mut seen: HashSet<(Placed, S)> = HashSet::new();
    seen.insert((root.clone(), initial.clone()));
    let mut stack = vec![Frame {
        candidates: candidates(&root, 0, 0),
        placed: root,
        state: initial,
        next_return: 0,
        next_invocation: 0,
        tried: 0,
    }];
    let mut steps = 0u64;
    while let Some(top) = stack.last_mut() {
        let Some(&operation) = top.candidates.get(top.tried) else {
            stack.pop();
            continue;
        };
        top.tried += 1;
        steps += 1;
        if steps > budget {
            return outcome(Verdict::Undecided, budget);
        }
        let Some(state) = step(&top.state, operation) else {
            continue;
        };
        let placed = top.placed.with(operation);
        if !seen.insert((placed.clone(), state.clone())) {
            continue;
        }
        let mut next_return = top.next_return;
        while next_return < by_return.len() && placed.contains(by_return[next_return]) {
            next_return += 1;
        }
        if next_return == by_return.len() {
            return outcome(Verdict::Linearizable, steps);
        }
        let mut next_invocation = top.next_invocation;
        while next_invocation < by_invocation.len()
            && placed.contains(by_invocation[next_invocation])
        {
            next_invocation += 1;
        }
        stack.push(Frame {
            candidates: candidates(&placed, next_return, next_invocation),
            placed,
            state,
            next_return,
            next_invocation,
            tried: 0,
        });
    }
    outcome(Verdict::NotLinearizable, steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register: `Some(v)` writes v, `None` reads, with what each read returned.
    fn register(history: &[(usize, Option<usize>, Option<u8>, u8)]) -> Outcome {
        let spans: Vec<Span> = history
            .iter()
            .map(|&(invoked, returned, _, _)| Span { invoked, returned })
            .collect();
        search(&spans, 0u8, 1_000_000, |&state, i| {
            let (_, returned, write, seen) = history[i];
            match write {
                Some(value) if returned.is_none() && value == state => None,
                Some(value) => Some(value),
                None if seen == state => Some(state),
                None => None,
            }
        })
    }

    #[test]
    fn a_read_may_see_a_concurrent_write_or_not() {
        // write 1 over [0, 3]; reads over [1, 2] see 0 or 1.
        for seen in [0, 1] {
            let verdict = register(&[(0, Some(3), Some(1), 0), (1, Some(2), None, seen)]);
            assert_eq!(verdict.verdict, Verdict::Linearizable);
        }
    }

    #[test]
    fn a_read_after_a_write_returned_must_see_it() {
        let verdict = register(&[(0, Some(1), Some(1), 0), (2, Some(3), None, 0)]);
        assert_eq!(verdict.verdict, Verdict::NotLinearizable);
    }

    #[test]
    fn a_write_of_unknown_outcome_may_explain_a_read_or_never_happen() {
        let seen_it = register(&[(0, None, Some(7), 0), (2, Some(3), None, 7)]);
        assert_eq!(seen_it.verdict, Verdict::Linearizable);
        let never = register(&[(0, None, Some(7), 0), (2, Some(3), None, 0)]);
        assert_eq!(never.verdict, Verdict::Linearizable);
        // It cannot take effect before it was invoked.
        let early = register(&[(1, Some(2), None, 7), (3, None, Some(7), 0)]);
        assert_eq!(early.verdict, Verdict::NotLinearizable);
    }

    #[test]
    fn values_cannot_flip_back() {
        // write 1 and write 2 concurrent; reads then see 1, 2, 1: no order explains it.
        let verdict = register(&[
            (0, Some(3), Some(1), 0),
            (1, Some(2), Some(2), 0),
            (4, Some(5), None, 1),
            (6, Some(7), None, 2),
            (8, Some(9), None, 1),
        ]);
        assert_eq!(verdict.verdict, Verdict::NotLinearizable);
    }

    #[test]
    fn many_concurrent_unknown_writes_are_decided_within_the_budget() {
        // 12 writes of unknown outcome, all overlapping, then reads: when no order
        // exists, the search must rule out every subset of them in every order, and
        // memoization keeps that to (subset, value) pairs.
        let mut history: Vec<(usize, Option<usize>, Option<u8>, u8)> =
            (0..12).map(|i| (i, None, Some(i as u8 + 1), 0)).collect();
        history.push((100, Some(101), None, 7));
        history.push((102, Some(103), None, 7));
        assert_eq!(register(&history).verdict, Verdict::Linearizable);
        history.push((104, Some(105), None, 3));
        assert_eq!(register(&history).verdict, Verdict::Linearizable);
        // 7, 3, then 7 again: each write happens at most once.
        history.push((106, Some(107), None, 7));
        let verdict = register(&history);
        assert_eq!(verdict.verdict, Verdict::NotLinearizable, "{verdict:?}");
    }

    #[test]
    fn the_budget_is_counted_in_steps() {
        let history: Vec<(usize, Option<usize>, Option<u8>, u8)> =
            (0..40).map(|i| (i, Some(1000 + i), Some(1), 0)).collect();
        let spans: Vec<Span> = history
            .iter()
            .map(|&(invoked, returned, _, _)| Span { invoked, returned })
            .collect();
        let outcome = search(&spans, 0u8, 5, |_, _| None);
        assert_eq!(
            outcome,
            Outcome {
                verdict: Verdict::Undecided,
                steps: 5
            }
        );
    }
}
