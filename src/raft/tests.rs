//! openraft's storage test suite, run on both disks.

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};

use super::{LogStore, StateMachineStore, StorageError, TypeConfig};
use crate::env::{Disk, MemoryDisk, SledDisk};

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
