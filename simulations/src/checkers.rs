//! The checkers: each takes what a run observed and says whether an invariant of
//! DESIGN.md held. Scenarios share them; a new checker goes here.
//!
//! - `LeadersPerTerm`: at most one leader per term (fed every step).
//! - `AppliedStates`: all nodes' state machines are equal at the same applied index.
//! - `check_history`: on the workload's history, every read sees every write
//!   acknowledged before it, no acknowledged write is lost, and the operations on each
//!   server name are linearizable (stateright's `LinearizabilityTester`).

use std::collections::BTreeMap;
use std::time::Duration;

use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

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
    /// Set if the linearizability search gave up (see `check_linearizable`).
    pub inconclusive: Option<String>,
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
        inconclusive: None,
    };
    check_read_revisions(&operations)?;
    check_stale_reads(&operations)?;
    if let Some(final_state) = final_state {
        check_lost_writes(&operations, final_state)?;
    }
    let inconclusive = check_linearizable(&operations)?;
    Ok(HistoryStats {
        inconclusive,
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
#[derive(Clone, Debug, Default)]
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

impl SequentialSpec for NameSpec {
    type Op = Op;
    type Ret = Ret;

    /// An operation whose outcome is unknown, taking effect here.
    fn invoke(&mut self, op: &Op) -> Ret {
        match op {
            Op::Put { value } => {
                self.current = Some((value.clone(), None));
                Ret::Written { revision: 0 }
            }
            Op::CompareAndSet { value, expected } => {
                if self.current_revision_is(*expected) {
                    self.current = Some((value.clone(), None));
                    Ret::Written { revision: 0 }
                } else {
                    Ret::Mismatch
                }
            }
            Op::Delete => match self.current.take() {
                Some(_) => Ret::Deleted { revision: 0 },
                None => Ret::NotFound,
            },
            Op::Get => Ret::Read {
                value: self
                    .current
                    .as_ref()
                    .map(|(v, r)| (v.clone(), r.unwrap_or(0))),
            },
        }
    }

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

/// How long the linearizability search may take for one run before it gives up.
pub const LINEARIZABILITY_BUDGET: Duration = Duration::from_secs(20);

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

/// The operations on each server name are linearizable. The search is stateright's,
/// which can take exponential time on long histories with many overlapping or
/// unknown operations: it runs on its own thread, and a search still going after
/// `LINEARIZABILITY_BUDGET` is reported as inconclusive (`Ok(Some(..))`), not passed.
fn check_linearizable(operations: &[Operation]) -> Result<Option<String>, String> {
    let operations = &resolve_observed_writes(operations);
    // A client runs one operation at a time, but after an unknown outcome its next
    // operation may overlap the unknown one: each unknown outcome starts a new thread
    // of that client. Threads that end with an unknown outcome get the highest ids, so
    // the search places completed operations first.
    let mut generation: BTreeMap<u32, u64> = BTreeMap::new();
    let mut ends_unknown: BTreeMap<(u32, u64), bool> = BTreeMap::new();
    let mut thread_of = Vec::with_capacity(operations.len());
    for operation in operations {
        let current = generation.entry(operation.client).or_insert(0);
        thread_of.push((operation.client, *current));
        // A resolved unknown operation still overlaps what its client did next.
        if operation.unknown {
            if operation.ret.is_none() {
                ends_unknown.insert((operation.client, *current), true);
            }
            *current += 1;
        }
    }
    let thread_id = |(client, generation): (u32, u64)| {
        let id = (u64::from(client) << 24) | generation;
        if ends_unknown.contains_key(&(client, generation)) {
            id | (1 << 56)
        } else {
            id
        }
    };
    let mut testers: BTreeMap<&str, LinearizabilityTester<u64, NameSpec>> = BTreeMap::new();
    // Invocations and returns reach the tester in the order they happened.
    let mut steps: Vec<(usize, bool, usize)> = Vec::new();
    for (index, operation) in operations.iter().enumerate() {
        if operation.failed {
            continue;
        }
        steps.push((operation.invoked_at, false, index));
        if let Some(at) = operation.returned_at {
            steps.push((at, true, index));
        }
    }
    steps.sort_unstable();
    for (_, is_return, index) in steps {
        let operation = &operations[index];
        let thread = thread_id(thread_of[index]);
        let tester = testers
            .entry(&operation.key)
            .or_insert_with(|| LinearizabilityTester::new(NameSpec::default()));
        let result = match (&operation.ret, is_return) {
            (Some(ret), true) => tester.on_return(thread, ret.clone()).map(|_| ()),
            _ => tester.on_invoke(thread, operation.op.clone()).map(|_| ()),
        };
        result.map_err(|e| format!("history is malformed: {e}"))?;
    }
    let keys: Vec<String> = testers.keys().map(|k| k.to_string()).collect();
    let testers: Vec<(String, LinearizabilityTester<u64, NameSpec>)> = testers
        .into_iter()
        .map(|(key, tester)| (key.to_string(), tester))
        .collect();
    let (sender, verdicts) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (key, tester) in testers {
            if sender.send((key, tester.is_consistent())).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + LINEARIZABILITY_BUDGET;
    for key in keys {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok((key, consistent)) = verdicts.recv_timeout(left) else {
            return Ok(Some(format!(
                "linearizability search for {key:?} gave up after {LINEARIZABILITY_BUDGET:?} \
                 ({} operations on it)",
                operations
                    .iter()
                    .filter(|o| o.key == key && !o.failed)
                    .count()
            )));
        };
        if !consistent {
            let lines: Vec<String> = operations
                .iter()
                .filter(|o| o.key == key && !o.failed)
                .map(|o| {
                    format!(
                        "  client {} {:?} at {:?} -> {:?} at {:?}",
                        o.client, o.op, o.invoked, o.ret, o.returned
                    )
                })
                .collect();
            let shown = lines.len().saturating_sub(40);
            return Err(format!(
                "not linearizable: the {} operations on {key:?} have no valid order; the last \
                 {}:\n{}",
                lines.len(),
                lines.len() - shown,
                lines[shown..].join("\n")
            ));
        }
    }
    Ok(None)
}
