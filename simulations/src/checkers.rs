//! The checkers: each takes what a run observed and says whether an invariant of
//! DESIGN.md held. Scenarios share them; a new checker goes here.
//!
//! - `LeadersPerTerm`: at most one leader per term (fed every step).
//! - `AppliedStates`: all nodes' state machines are equal at the same applied index.
//! - `check_history`: on the workload's history, every read sees every write
//!   acknowledged before it, no acknowledged write is lost, and the operations on each
//!   server name are linearizable (`linearizability::search`, on a budget of steps).

use std::collections::BTreeMap;

use crate::linearizability::{search, Span, Verdict};
use crate::workload::{Event, EventKind, Op, Ret};

/// At most one leader per term.
#[derive(Debug, Default)]
pub struct LeadersPerTerm {
    by_term: BTreeMap<u64, u64>,
}

impl LeadersPerTerm {
    /// Records that `node` leads in `term`.
    pub fn observe(&mut self, term: u64, node: u64) -> Result<(), String> {
        match self.by_term.insert(term, node) {
            Some(other) if other != node => Err(format!(
                "two leaders in term {term}: node {other} and node {node}"
            )),
            _ => Ok(()),
        }
    }

    /// Records several (term, leader) observations.
    pub fn observe_all(&mut self, observed: Vec<(u64, u64)>) -> Result<(), String> {
        observed
            .into_iter()
            .try_for_each(|(term, node)| self.observe(term, node))
    }

    /// How many terms had a leader.
    pub fn terms(&self) -> usize {
        self.by_term.len()
    }
}

/// All nodes' state machines are equal at the same applied index.
#[derive(Debug, Default)]
pub struct AppliedStates {
    /// The fingerprint seen at each applied index, and the node that showed it first.
    by_index: BTreeMap<u64, (u64, u64)>,
    /// The last index looked at per node: the fingerprint is taken only when it moves.
    last_index: BTreeMap<u64, u64>,
}

impl AppliedStates {
    /// Records that `node` has applied up to `index`; `fingerprint` checks its state
    /// and hashes it, and is called only when the index moved.
    pub fn observe(
        &mut self,
        node: u64,
        index: u64,
        fingerprint: impl FnOnce() -> Result<u64, String>,
    ) -> Result<(), String> {
        if self.last_index.insert(node, index) == Some(index) {
            return Ok(());
        }
        let hash = fingerprint()?;
        match self.by_index.get(&index) {
            Some((first, expected)) if *expected != hash && *first == node => Err(format!(
                "node {node} applied index {index} twice with different results (its log \
                 changed under it)"
            )),
            Some((first, expected)) if *expected != hash => Err(format!(
                "state machines differ at applied index {index}: node {first} and node {node}"
            )),
            Some(_) => Ok(()),
            None => {
                self.by_index.insert(index, (node, hash));
                Ok(())
            }
        }
    }

    /// The number of distinct applied indexes compared.
    pub fn indexes(&self) -> usize {
        self.by_index.len()
    }
}

/// The registry at the end of a run, once every node has applied the same state.
#[derive(Debug, Default, Clone)]
pub struct FinalState {
    pub revision: u64,
    /// Server name -> (value, revision).
    pub servers: BTreeMap<String, (String, u64)>,
}

/// What `check_history` looked at.
#[derive(Debug, Default, Clone)]
pub struct HistoryStats {
    pub operations: usize,
    pub acknowledged_writes: usize,
    pub unknown_outcomes: usize,
    /// The steps the linearizability search took to decide.
    pub linearizability_steps: u64,
}

/// One operation of the history with its outcome.
#[derive(Clone, Debug)]
struct Operation {
    client: u32,
    key: String,
    op: Op,
    invoked: std::time::Duration,
    /// `None` while the outcome is unknown.
    ret: Option<Ret>,
    returned: Option<std::time::Duration>,
    failed: bool,
    /// The outcome was unknown when the client gave up on it.
    unknown: bool,
    /// Positions in the history: the order in which things happened.
    invoked_at: usize,
    returned_at: Option<usize>,
}

impl Operation {
    /// Whether this operation returned before `other` was invoked.
    fn precedes(&self, other: &Operation) -> bool {
        self.returned_at.is_some_and(|at| at < other.invoked_at)
    }
}

fn operations(history: &[Event]) -> Result<Vec<Operation>, String> {
    let mut open: BTreeMap<(u32, u32), usize> = BTreeMap::new();
    let mut operations: Vec<Operation> = Vec::new();
    for (position, event) in history.iter().enumerate() {
        let id = (event.client, event.op_number);
        match &event.kind {
            EventKind::Invoke(op) => {
                open.insert(id, operations.len());
                operations.push(Operation {
                    client: event.client,
                    key: event.key.clone(),
                    op: op.clone(),
                    invoked: event.at,
                    ret: None,
                    returned: None,
                    failed: false,
                    unknown: false,
                    invoked_at: position,
                    returned_at: None,
                });
            }
            kind => {
                let index = open.remove(&id).ok_or_else(|| {
                    format!("history: an outcome without an invocation: {event:?}")
                })?;
                let operation = &mut operations[index];
                match kind {
                    EventKind::Return(ret) => {
                        operation.ret = Some(ret.clone());
                        operation.returned = Some(event.at);
                        operation.returned_at = Some(position);
                    }
                    EventKind::Failed(_) => operation.failed = true,
                    EventKind::Unknown(_) => operation.unknown = true,
                    EventKind::Invoke(_) => {}
                }
            }
        }
    }
    Ok(operations)
}

/// The revision an acknowledged write took effect at.
fn written_revision(ret: &Option<Ret>) -> Option<u64> {
    match ret {
        Some(Ret::Written { revision }) | Some(Ret::Deleted { revision }) => Some(*revision),
        _ => None,
    }
}

/// Checks the workload's history; with `final_state`, also that no acknowledged write
/// was lost. The cheap checks run first, so that a violation they find is reported in
/// their words and the linearizability search runs on histories that are likely valid.
pub fn check_history(
    history: &[Event],
    final_state: Option<&FinalState>,
) -> Result<HistoryStats, String> {
    let operations = operations(history)?;
    let stats = HistoryStats {
        operations: operations.iter().filter(|o| !o.failed).count(),
        acknowledged_writes: operations
            .iter()
            .filter(|o| written_revision(&o.ret).is_some())
            .count(),
        unknown_outcomes: operations
            .iter()
            .filter(|o| o.ret.is_none() && !o.failed)
            .count(),
        linearizability_steps: 0,
    };
    check_read_revisions(&operations)?;
    check_stale_reads(&operations)?;
    if let Some(final_state) = final_state {
        check_lost_writes(&operations, final_state)?;
    }
    let linearizability_steps = check_linearizable(&operations)?;
    Ok(HistoryStats {
        linearizability_steps,
        ..stats
    })
}

/// A value is written once; a read of it must show the revision its write was
/// acknowledged at.
fn check_read_revisions(operations: &[Operation]) -> Result<(), String> {
    let mut written: BTreeMap<&str, u64> = BTreeMap::new();
    for operation in operations {
        if let (
            Op::Put { value } | Op::CompareAndSet { value, .. },
            Some(Ret::Written { revision }),
        ) = (&operation.op, &operation.ret)
        {
            written.insert(value, *revision);
        }
    }
    for operation in operations {
        if let Some(Ret::Read {
            value: Some((value, revision)),
        }) = &operation.ret
        {
            if let Some(acknowledged) = written.get(value.as_str()) {
                if acknowledged != revision {
                    return Err(format!(
                        "client {} read {:?}={value} at revision {revision}, but that write was \
                         acknowledged at revision {acknowledged}",
                        operation.client, operation.key
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A delete that may have taken effect after revision `after`.
fn may_delete_after(operations: &[Operation], key: &str, after: u64) -> bool {
    operations.iter().any(|o| {
        o.key == key
            && o.op == Op::Delete
            && match &o.ret {
                Some(Ret::Deleted { revision }) => *revision > after,
                None => !o.failed,
                Some(_) => false,
            }
    })
}

/// A read must see every write acknowledged before it was invoked.
fn check_stale_reads(operations: &[Operation]) -> Result<(), String> {
    for read in operations {
        let Some(Ret::Read { value }) = &read.ret else {
            continue;
        };
        let latest = operations
            .iter()
            .filter(|w| w.key == read.key && w.precedes(read))
            .filter_map(|w| written_revision(&w.ret).map(|r| (r, w)))
            .max_by_key(|(revision, _)| *revision);
        let Some((revision, write)) = latest else {
            continue;
        };
        let stale = match value {
            Some((_, seen)) => *seen < revision,
            None => {
                matches!(write.ret, Some(Ret::Written { .. }))
                    && !may_delete_after(operations, &read.key, revision)
            }
        };
        if stale {
            return Err(format!(
                "stale read: client {} read {:?} at {:?} and got {value:?}, but revision \
                 {revision} ({:?} by client {}) was acknowledged at {:?}",
                read.client,
                read.key,
                read.invoked,
                write.op,
                write.client,
                write.returned.unwrap_or_default()
            ));
        }
    }
    Ok(())
}

/// Every acknowledged write is in the final state, or was overwritten by a later one.
fn check_lost_writes(operations: &[Operation], final_state: &FinalState) -> Result<(), String> {
    let newest = operations
        .iter()
        .filter_map(|o| written_revision(&o.ret))
        .max()
        .unwrap_or(0);
    if final_state.revision < newest {
        return Err(format!(
            "lost writes: revision {newest} was acknowledged, but the nodes end at revision {}",
            final_state.revision
        ));
    }
    let mut last: BTreeMap<&str, (u64, &Operation)> = BTreeMap::new();
    for operation in operations {
        if let Some(revision) = written_revision(&operation.ret) {
            let entry = last.entry(&operation.key).or_insert((revision, operation));
            if revision >= entry.0 {
                *entry = (revision, operation);
            }
        }
    }
    for (key, (revision, write)) in last {
        let now = final_state.servers.get(key);
        let lost = match (&write.op, now) {
            (Op::Delete, Some((_, current))) => *current < revision,
            (Op::Delete, None) => false,
            (
                Op::Put { value } | Op::CompareAndSet { value, .. },
                Some((current_value, current)),
            ) => *current < revision || (*current == revision && current_value != value),
            (_, None) => !may_delete_after(operations, key, revision),
            (Op::Get, _) => false,
        };
        if lost {
            return Err(format!(
                "lost write: {:?} on {key:?} by client {} was acknowledged at revision \
                 {revision}; the nodes end with {now:?}",
                write.op, write.client
            ));
        }
    }
    Ok(())
}

/// The sequential specification of one server name: what a single copy of the registry
/// would answer. Revisions are global, so a write's revision is not known in advance;
/// the model only requires that the writes to one name take effect in revision order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct NameSpec {
    /// The current value and its revision, if known (a write whose outcome was unknown
    /// took effect at a revision nobody saw).
    current: Option<(String, Option<u64>)>,
    /// Every write to this name so far took effect at or below this revision.
    floor: u64,
}

impl NameSpec {
    fn current_revision_is(&self, expected: u64) -> bool {
        match &self.current {
            None => expected == 0,
            Some((_, Some(revision))) => *revision == expected,
            Some((_, None)) => expected > self.floor,
        }
    }
}

impl NameSpec {
    /// An operation whose outcome is unknown takes effect here; false if that would
    /// change nothing (leaving it out explains the same).
    fn take_effect(&mut self, op: &Op) -> bool {
        match op {
            Op::Put { value } => {
                self.current = Some((value.clone(), None));
                true
            }
            Op::CompareAndSet { value, expected } if self.current_revision_is(*expected) => {
                self.current = Some((value.clone(), None));
                true
            }
            Op::Delete if self.current.is_some() => {
                self.current = None;
                true
            }
            Op::CompareAndSet { .. } | Op::Delete | Op::Get => false,
        }
    }

    /// An operation with outcome `ret` takes effect here; false if it could not have.
    fn is_valid_step(&mut self, op: &Op, ret: &Ret) -> bool {
        match (op, ret) {
            (Op::Put { value }, Ret::Written { revision }) if *revision > self.floor => {
                self.current = Some((value.clone(), Some(*revision)));
                self.floor = *revision;
                true
            }
            (Op::CompareAndSet { value, expected }, Ret::Written { revision })
                if *revision > self.floor && self.current_revision_is(*expected) =>
            {
                self.current = Some((value.clone(), Some(*revision)));
                self.floor = *revision;
                true
            }
            // A value of unknown revision may have had any revision but `expected`.
            (Op::CompareAndSet { expected, .. }, Ret::Mismatch) => match &self.current {
                Some((_, None)) => true,
                _ => !self.current_revision_is(*expected),
            },
            (Op::Delete, Ret::Deleted { revision })
                if *revision > self.floor && self.current.is_some() =>
            {
                self.current = None;
                self.floor = *revision;
                true
            }
            (Op::Delete, Ret::NotFound) => self.current.is_none(),
            (Op::Get, Ret::Read { value: None }) => self.current.is_none(),
            (
                Op::Get,
                Ret::Read {
                    value: Some((seen, revision)),
                },
            ) => match &self.current {
                Some((current, Some(known))) => current == seen && known == revision,
                Some((current, None)) if current == seen && *revision > self.floor => {
                    self.current = Some((current.clone(), Some(*revision)));
                    self.floor = *revision;
                    true
                }
                _ => false,
            },
            _ => false,
        }
    }
}

/// How many steps the linearizability search may take for one run's history (all its
/// server names together). A run whose history it cannot decide within them fails.
pub const LINEARIZABILITY_STEPS: u64 = 20_000_000;

/// A write whose outcome is unknown but whose value a read returned took effect, at
/// the revision the read saw and before that read returned: record it so. This changes
/// no verdict (a valid order must place it there anyway) and spares the search from
/// trying every other place for it.
fn resolve_observed_writes(operations: &[Operation]) -> Vec<Operation> {
    let mut resolved = operations.to_vec();
    for operation in resolved.iter_mut().filter(|o| o.ret.is_none() && !o.failed) {
        let (Op::Put { value } | Op::CompareAndSet { value, .. }) = &operation.op else {
            continue;
        };
        let first_read = operations
            .iter()
            .filter(|read| read.key == operation.key)
            .filter_map(|read| match &read.ret {
                Some(Ret::Read {
                    value: Some((seen, revision)),
                }) if seen == value => read.returned_at.map(|at| (at, read.returned, *revision)),
                _ => None,
            })
            .min_by_key(|(at, _, _)| *at);
        if let Some((at, returned, revision)) = first_read {
            operation.ret = Some(Ret::Written { revision });
            operation.returned = returned;
            operation.returned_at = Some(at);
        }
    }
    resolved
}

/// The operations on each server name are linearizable (linearizability is
/// compositional, so each name is searched on its own). Fails if no order exists, and
/// if the search runs out of its budget of steps before it decides.
fn check_linearizable(operations: &[Operation]) -> Result<u64, String> {
    let operations = resolve_observed_writes(operations);
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for operation in operations.iter().filter(|o| !o.failed) {
        by_key.entry(&operation.key).or_default().push(operation);
    }
    let mut steps = 0;
    for (key, history) in by_key {
        let spans: Vec<Span> = history
            .iter()
            .map(|o| Span {
                invoked: o.invoked_at,
                returned: o.ret.as_ref().and(o.returned_at),
            })
            .collect();
        let outcome = search(
            &spans,
            NameSpec::default(),
            LINEARIZABILITY_STEPS - steps,
            |state, i| {
                let mut next = state.clone();
                let operation = history[i];
                match &operation.ret {
                    Some(ret) => next.is_valid_step(&operation.op, ret).then_some(next),
                    None => next.take_effect(&operation.op).then_some(next),
                }
            },
        );
        steps += outcome.steps;
        let describe = || -> String {
            let lines: Vec<String> = history
                .iter()
                .map(|o| {
                    format!(
                        "  client {} {:?} at {:?} -> {:?} at {:?}",
                        o.client, o.op, o.invoked, o.ret, o.returned
                    )
                })
                .collect();
            let shown = lines.len().saturating_sub(40);
            format!(
                "the last {} of its {} operations:\n{}",
                lines.len() - shown,
                lines.len(),
                lines[shown..].join("\n")
            )
        };
        match outcome.verdict {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable => {
                return Err(format!(
                    "not linearizable: the operations on {key:?} have no valid order; {}",
                    describe()
                ))
            }
            Verdict::Undecided => {
                return Err(format!(
                    "undecided: the linearizability search used its {LINEARIZABILITY_STEPS} \
                     steps before it decided the operations on {key:?}; {}",
                    describe()
                ))
            }
        }
    }
    Ok(steps)
}
