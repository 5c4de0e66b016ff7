//! The Raft state machine: the registry in memory, made durable through snapshots on
//! the `Disk` seam (the log holds everything after the last snapshot), and the client
//! sessions that apply each write at most once. It also keeps a bounded history of
//! server changes for watchers.

use std::collections::VecDeque;
use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::codec::{decode, encode, CodecError};
use super::sessions::{Admission, Sessions, Window};
use super::{io_error, LogId, Node, NodeId, StorageError, TypeConfig};
use crate::env::bugs::{self, Bug};
use crate::env::disk::heavy;
use crate::env::Disk;
use crate::registry::LogPosition;
use crate::registry::{Change, Command, Outcome, Registry};

const SNAPSHOT_KEY: &str = "snapshot";
/// Server changes kept for watchers that start from an older revision.
pub const WATCH_HISTORY_LEN: usize = 4_096;
/// Changes buffered per live watcher before it is cut off as too slow.
pub const WATCH_BUFFER_LEN: usize = 1_024;

/// What a snapshot holds: the replicated state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SnapshotState {
    registry: Registry,
    sessions: Sessions,
}

/// What a live watcher receives.
#[derive(Clone, Debug)]
pub enum WatchMessage {
    Change(Change),
    /// The state was replaced by a snapshot: watchers must list and watch again.
    Reset,
}

/// The applied state, shared by the state machine and the API.
#[derive(Debug, Default)]
pub struct Applied {
    pub registry: Registry,
    pub sessions: Sessions,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership<NodeId, Node>,
    history: VecDeque<Change>,
    /// Every change with a revision above this is in `history`.
    history_floor: u64,
}

impl Applied {
    /// The changes after `from_revision`, or `None` if some were already dropped. 0
    /// means from the oldest change this node keeps (after a restart from a snapshot,
    /// none: the snapshot holds no history).
    pub fn changes_since(&self, from_revision: u64) -> Option<Vec<Change>> {
        if from_revision != 0 && from_revision < self.history_floor {
            return None;
        }
        Some(
            self.history
                .iter()
                .filter(|c| c.revision() > from_revision)
                .cloned()
                .collect(),
        )
    }
}

/// The registry as this node has applied it.
#[derive(Debug)]
pub struct RegistryView {
    applied: RwLock<Applied>,
    changes: broadcast::Sender<WatchMessage>,
}

impl RegistryView {
    fn new(applied: Applied) -> RegistryView {
        RegistryView {
            applied: RwLock::new(applied),
            changes: broadcast::channel(WATCH_BUFFER_LEN).0,
        }
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.applied.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Applied> {
        self.applied.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver of live changes plus the history after `from_revision` (taken under
    /// one lock, so nothing falls between them), or `None` if history was dropped.
    pub fn watch(
        &self,
        from_revision: u64,
    ) -> Option<(Vec<Change>, broadcast::Receiver<WatchMessage>)> {
        let applied = self.read();
        let receiver = self.changes.subscribe();
        applied.changes_since(from_revision).map(|c| (c, receiver))
    }
}

/// What a snapshot holds besides openraft's metadata.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Node>,
    data: Vec<u8>,
}

/// The state machine store. Clones share the view and the disk.
#[derive(Clone)]
pub struct StateMachineStore {
    disk: Arc<dyn Disk>,
    view: Arc<RegistryView>,
    /// A harness watching this node's applied plans (the simulator); none in production.
    observer: Option<(NodeId, Arc<dyn super::Probe>)>,
}

impl StateMachineStore {
    /// Opens the state machine from the last snapshot on `disk`, if any.
    pub fn open(disk: Arc<dyn Disk>) -> Result<StateMachineStore, StorageError> {
        let mut applied = Applied::default();
        if let Some(stored) = read_snapshot(disk.as_ref())? {
            let state: SnapshotState = decode(&stored.data)
                .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
            restore(&mut applied, state, &stored.meta);
        }
        Ok(StateMachineStore {
            disk,
            view: Arc::new(RegistryView::new(applied)),
            observer: None,
        })
    }

    /// Makes `registry` the current snapshot, at `log_id` with `membership`, of a data
    /// dir being restored from a backup (`backup::restore_into`). No client session is
    /// carried over.
    pub async fn install_restored(
        &self,
        registry: Registry,
        log_id: LogId,
        membership: StoredMembership<NodeId, Node>,
    ) -> Result<(), StorageError> {
        let failed = |e: CodecError| io_error(ErrorSubject::StateMachine, ErrorVerb::Write, e);
        let stored = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: Some(log_id),
                last_membership: membership,
                snapshot_id: format!("restored-{}-{}", log_id.leader_id.term, log_id.index),
            },
            data: encode(&SnapshotState {
                registry,
                sessions: Sessions::default(),
            })
            .map_err(failed)?,
        };
        let bytes = encode(&stored).map_err(failed)?;
        self.put_snapshot(&stored.meta, bytes).await
    }

    /// Reports every placement plan this store applies, as node `id`, to `probe`.
    pub fn observed_by(mut self, id: NodeId, probe: Arc<dyn super::Probe>) -> Self {
        self.observer = Some((id, probe));
        self
    }

    pub fn view(&self) -> Arc<RegistryView> {
        self.view.clone()
    }
}

fn read_snapshot(disk: &dyn Disk) -> Result<Option<StoredSnapshot>, StorageError> {
    let bytes = disk
        .get_meta(SNAPSHOT_KEY)
        .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
    bytes
        .map(|b| decode(&b).map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e)))
        .transpose()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // Copying the state (under the read lock, held only that long) and encoding it
        // take time in proportion to the registry, up to hundreds of milliseconds: off
        // the runtime thread, beside a real disk.
        let view = self.view.clone();
        let built = heavy(self.disk.as_ref(), move || {
            let (state, last_log_id, last_membership) = {
                let applied = view.read();
                let state = SnapshotState {
                    registry: applied.registry.clone(),
                    sessions: applied.sessions.clone(),
                };
                (state, applied.last_applied, applied.membership.clone())
            };
            let snapshot_id = match last_log_id {
                Some(id) => format!("{}-{}", id.leader_id.term, id.index),
                None => "empty".to_string(),
            };
            let stored = StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id,
                    last_membership,
                    snapshot_id,
                },
                data: encode(&state)?,
            };
            let bytes = encode(&stored)?;
            Ok::<_, CodecError>((stored, bytes))
        })
        .await
        .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        let (stored, bytes) =
            built.map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        self.put_snapshot(&stored.meta, bytes).await?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, Node>), StorageError> {
        let applied = self.view.read();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Outcome>>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        let mut applied = self.view.write();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            let entry_outcomes = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(batch) => {
                    let mut entry_outcomes = Vec::with_capacity(batch.proposals.len());
                    applied.sessions.advance(batch.stamp_ms);
                    for proposal in &batch.proposals {
                        // A retried proposal gets the outcome of its first application.
                        if let Admission::Answered(outcome) = applied.sessions.admit(&proposal.id) {
                            entry_outcomes.push(outcome);
                            continue;
                        }
                        let position = LogPosition {
                            term: entry.log_id.leader_id.term,
                            index: entry.log_id.index,
                        };
                        let (outcome, changes) = applied
                            .registry
                            .apply_at(&proposal.command, injected(&proposal.command, position));
                        if let (Some(actor), Outcome::Applied { .. }) = (&proposal.actor, &outcome)
                        {
                            applied
                                .registry
                                .record_audit(&proposal.command, actor, batch.stamp_ms);
                        }
                        if let (Some((id, probe)), Command::ApplyPlan { term, placements }) =
                            (&self.observer, &proposal.command)
                        {
                            let accepted = matches!(outcome, Outcome::Applied { .. });
                            probe.plan_applied(*id, *term, position, placements.len(), accepted);
                        }
                        applied.sessions.record(
                            &proposal.id,
                            proposal.floor,
                            outcome.clone(),
                            session_window(),
                        );
                        for change in changes {
                            if applied.history.len() >= WATCH_HISTORY_LEN {
                                if let Some(dropped) = applied.history.pop_front() {
                                    applied.history_floor = dropped.revision();
                                }
                            }
                            applied.history.push_back(change.clone());
                            // No receivers is fine: nobody is watching.
                            let _ = self.changes().send(WatchMessage::Change(change));
                        }
                        entry_outcomes.push(outcome);
                    }
                    entry_outcomes
                }
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Vec::new()
                }
            };
            outcomes.push(entry_outcomes);
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let read_error = |e: &dyn std::fmt::Display| {
            io_error(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                std::io::Error::other(e.to_string()),
            )
        };
        tracing::info!(
            index = ?meta.last_log_id.map(|id| id.index),
            bytes = data.len(),
            "installing a snapshot from the leader"
        );
        // Decoding and encoding a large snapshot take long: off the runtime thread.
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let (state, bytes) = heavy(self.disk.as_ref(), move || {
            let state: SnapshotState = decode(&stored.data)?;
            Ok::<_, CodecError>((state, encode(&stored)?))
        })
        .await
        .map_err(|e| read_error(&e))?
        .map_err(|e| read_error(&e))?;
        self.put_snapshot(meta, bytes).await?;
        let mut applied = self.view.write();
        applied.history.clear();
        restore(&mut applied, state, meta);
        let _ = self.changes().send(WatchMessage::Reset);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(read_snapshot(self.disk.as_ref())?.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

impl StateMachineStore {
    /// Makes `bytes`, the encoded snapshot of `meta`, the current snapshot on disk
    /// (durable on return).
    async fn put_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, Node>,
        bytes: Vec<u8>,
    ) -> Result<(), StorageError> {
        self.disk.put_meta(SNAPSHOT_KEY, bytes).await.map_err(|e| {
            io_error(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                e,
            )
        })
    }

    fn changes(&self) -> &broadcast::Sender<WatchMessage> {
        &self.view.changes
    }
}

/// Makes `applied` the state of a snapshot, its counts made again from its contents.
fn restore(applied: &mut Applied, state: SnapshotState, meta: &SnapshotMeta<NodeId, Node>) {
    applied.history_floor = state.registry.revision;
    applied.registry = state.registry;
    applied.registry.recount();
    applied.sessions = state.sessions;
    applied.sessions.recount();
    applied.last_applied = meta.last_log_id;
    applied.membership = meta.last_membership.clone();
}

/// How client sessions forget. The ShrinkSessionWindow bug enters here: a session keeps
/// only its last few outcomes, without raising its floor.
fn session_window() -> Window {
    if bugs::active(Bug::ShrinkSessionWindow) {
        Window::Forgetful(8)
    } else {
        Window::default()
    }
}

/// The position the registry sees an entry at. The AcceptStalePlan bug enters here,
/// outside the pure registry: a plan looks as if made in the entry's term.
fn injected(command: &Command, position: LogPosition) -> LogPosition {
    match command {
        Command::ApplyPlan { term, .. } if bugs::active(Bug::AcceptStalePlan) => LogPosition {
            term: *term,
            ..position
        },
        _ => position,
    }
}
