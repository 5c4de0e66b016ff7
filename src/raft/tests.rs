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
        payload: EntryPayload::Normal(Batch { proposals }),
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
        command: Command::DeleteServer {
            name: "a".into(),
            expected_revision: None,
        },
    };
    let put = Proposal {
        id: id(1),
        command: Command::PutServer {
            spec: ServerSpec::stdio("a", "echo", &[]),
            expected_revision: None,
        },
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
