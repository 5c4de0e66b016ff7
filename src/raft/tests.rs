//! openraft's storage test suite, run on both disks.

use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

use super::{Batch, LogStore, Proposal, RequestId, StateMachineStore, StorageError, TypeConfig};
use crate::env::{Disk, MemoryDisk, SledDisk};
use crate::registry::{Command, Outcome, ServerSpec};

struct MemoryBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, ()> for MemoryBuilder {
    async fn build(&self) -> Result<((), LogStore, StateMachineStore), StorageError> {
        let disk: Arc<dyn Disk> = Arc::new(MemoryDisk::new());
        Ok((
            (),
            LogStore::open(disk.clone())?,
            StateMachineStore::open(disk)?,
        ))
    }
}

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let disk: Arc<dyn Disk> =
            Arc::new(SledDisk::open(&dir.path().join("data")).expect("open sled"));
        Ok((
            dir,
            LogStore::open(disk.clone())?,
            StateMachineStore::open(disk)?,
        ))
    }
}

#[test]
fn memory_store_passes_the_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(MemoryBuilder)
}

#[test]
fn sled_store_passes_the_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(SledBuilder)
}

fn entry(index: u64, proposals: Vec<Proposal>) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Batch {
            stamp_ms: index,
            proposals,
        }),
    }
}

#[tokio::test]
async fn a_retried_proposal_is_applied_once_and_answered_alike() -> Result<(), StorageError> {
    let disk: Arc<dyn Disk> = Arc::new(MemoryDisk::new());
    let mut state_machine = StateMachineStore::open(disk.clone())?;
    let id = |seq| RequestId {
        node: 1,
        boot: 9,
        seq,
    };
    let delete = Proposal {
        id: id(2),
        floor: 0,
        command: Command::DeleteServer {
            name: "a".into(),
            expected_revision: None,
        },
        actor: None,
    };
    let put = Proposal {
        id: id(1),
        floor: 0,
        command: Command::PutServer {
            spec: ServerSpec::stdio("a", "echo", &[]),
            expected_revision: None,
        },
        actor: None,
    };
    let first = state_machine
        .apply([entry(1, vec![put.clone(), delete.clone()])])
        .await?;
    assert_eq!(
        first[0],
        vec![
            Outcome::Applied { revision: 1 },
            Outcome::Applied { revision: 2 }
        ]
    );
    // The same proposals again (a retry after a lost answer): same outcomes, no change.
    let again = state_machine.apply([entry(2, vec![delete, put])]).await?;
    assert_eq!(
        again[0],
        vec![
            Outcome::Applied { revision: 2 },
            Outcome::Applied { revision: 1 }
        ]
    );
    assert_eq!(state_machine.view().read().registry.revision, 2);
    assert!(state_machine.view().read().registry.servers.is_empty());
    Ok(())
}

/// A put of server `name` as write `seq` of node 1's boot 9.
fn put(seq: u64, name: &str) -> Proposal {
    Proposal {
        id: RequestId {
            node: 1,
            boot: 9,
            seq,
        },
        floor: 0,
        command: Command::PutServer {
            spec: ServerSpec::stdio(name, "echo", &[]),
            expected_revision: None,
        },
        actor: None,
    }
}

#[tokio::test]
async fn a_write_retried_after_thousands_of_others_is_still_applied_once(
) -> Result<(), StorageError> {
    // At 12,000 writes/s, 5,000 writes commit within the half second a forwarded
    // write may wait before it is sent again.
    let disk: Arc<dyn Disk> = Arc::new(MemoryDisk::new());
    let mut state_machine = StateMachineStore::open(disk)?;
    let retried = put(0, "retried");
    let first = state_machine
        .apply([entry(1, vec![retried.clone()])])
        .await?;
    assert_eq!(first[0], vec![Outcome::Applied { revision: 1 }]);
    for (index, chunk) in (1..=5_000u64).collect::<Vec<_>>().chunks(50).enumerate() {
        let proposals = chunk.iter().map(|seq| put(*seq, "other")).collect();
        state_machine
            .apply([entry(index as u64 + 2, proposals)])
            .await?;
    }
    let revision = state_machine.view().read().registry.revision;
    assert_eq!(revision, 5_001);
    let again = state_machine.apply([entry(1_000, vec![retried])]).await?;
    assert_eq!(again[0], vec![Outcome::Applied { revision: 1 }]);
    assert_eq!(state_machine.view().read().registry.revision, revision);
    Ok(())
}

#[tokio::test]
async fn a_watch_from_zero_works_after_a_restart_from_a_snapshot() -> Result<(), StorageError> {
    use openraft::RaftSnapshotBuilder;
    let disk: Arc<dyn Disk> = Arc::new(MemoryDisk::new());
    let mut state_machine = StateMachineStore::open(disk.clone())?;
    state_machine
        .apply([entry(1, vec![put(0, "a"), put(1, "b")])])
        .await?;
    state_machine.build_snapshot().await?;
    // The node restarts: its state comes from the snapshot, with no history.
    let mut restarted = StateMachineStore::open(disk)?;
    let view = restarted.view();
    let (history, mut live) = view.watch(0).expect("0 means: from the oldest change kept");
    assert!(history.is_empty());
    assert!(view.watch(1).is_none(), "revision 1 itself was compacted");
    restarted.apply([entry(2, vec![put(2, "c")])]).await?;
    assert!(matches!(
        live.recv().await,
        Ok(super::WatchMessage::Change(change)) if change.revision() == 3
    ));
    Ok(())
}
