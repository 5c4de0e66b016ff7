//! The Raft log store over the `Disk` seam. An append is acknowledged (its callback
//! called) only once the disk reports it durable.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, RaftLogReader, Vote};

use super::codec::{decode, encode};
use super::{io_error, LogId, NodeId, StorageError, TypeConfig};
use crate::env::bugs::{self, Bug};
use crate::env::Disk;

const VOTE_KEY: &str = "vote";
const LAST_PURGED_KEY: &str = "last_purged";

/// Log storage for one node. Clones share the same disk.
#[derive(Clone)]
pub struct LogStore {
    disk: Arc<dyn Disk>,
    /// Where the `skip-vote-fsync` bug keeps the vote: in memory only.
    #[cfg(feature = "inject-bugs")]
    volatile_vote: Arc<std::sync::Mutex<Option<Vote<NodeId>>>>,
}

impl LogStore {
    /// Opens the log on `disk` and checks that what it holds decodes.
    pub fn open(disk: Arc<dyn Disk>) -> Result<LogStore, StorageError> {
        let store = LogStore {
            disk,
            #[cfg(feature = "inject-bugs")]
            volatile_vote: Arc::default(),
        };
        store.read_vote_now()?;
        store.last_purged()?;
        store.last_entry()?;
        Ok(store)
    }

    /// Starts an empty log after a restored snapshot: `vote` saved and the log purged
    /// up to `purged` (the snapshot's position), as if compacted there.
    pub async fn install_restored(
        &self,
        vote: Vote<NodeId>,
        purged: LogId,
    ) -> Result<(), StorageError> {
        let write = |subject: ErrorSubject<NodeId>| {
            move |e: &dyn std::fmt::Display| {
                io_error(
                    subject,
                    ErrorVerb::Write,
                    std::io::Error::other(e.to_string()),
                )
            }
        };
        let vote_bytes = encode(&vote).map_err(|e| write(ErrorSubject::Vote)(&e))?;
        let purged_bytes = encode(&purged).map_err(|e| write(ErrorSubject::Store)(&e))?;
        self.disk
            .put_meta(VOTE_KEY, vote_bytes)
            .await
            .map_err(|e| write(ErrorSubject::Vote)(&e))?;
        self.disk
            .put_meta(LAST_PURGED_KEY, purged_bytes)
            .await
            .map_err(|e| write(ErrorSubject::Store)(&e))
    }

    fn read_vote_now(&self) -> Result<Option<Vote<NodeId>>, StorageError> {
        let bytes = self
            .disk
            .get_meta(VOTE_KEY)
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Read, e))?;
        bytes
            .map(|b| decode(&b).map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Read, e)))
            .transpose()
    }

    fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        let bytes = self
            .disk
            .get_meta(LAST_PURGED_KEY)
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Read, e))?;
        bytes
            .map(|b| decode(&b).map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Read, e)))
            .transpose()
    }

    fn last_entry(&self) -> Result<Option<Entry<TypeConfig>>, StorageError> {
        let last = self
            .disk
            .last_log()
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        last.map(|(_, bytes)| decode_entry(&bytes)).transpose()
    }
}

fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, StorageError> {
    decode(bytes).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        let raw = self
            .disk
            .read_log(start, end)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        raw.iter().map(|(_, bytes)| decode_entry(bytes)).collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged()?;
        let last_log_id = match self.last_entry()? {
            Some(entry) => Some(*entry.get_log_id()),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        #[cfg(feature = "inject-bugs")]
        if bugs::active(Bug::SkipVoteFsync) {
            *self.volatile_vote.lock().unwrap_or_else(|e| e.into_inner()) = Some(*vote);
            return Ok(());
        }
        let bytes = encode(vote).map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        self.disk
            .put_meta(VOTE_KEY, bytes)
            .await
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        #[cfg(feature = "inject-bugs")]
        if let Some(vote) = *self.volatile_vote.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(Some(vote));
        }
        self.read_vote_now()
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            let bytes =
                encode(&entry).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            encoded.push((entry.get_log_id().index, bytes));
        }
        self.disk
            .append_log(encoded)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        if bugs::active(Bug::SkipLogFsync) {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        // Acknowledged to openraft only once durable. (openraft 0.9 waits for this
        // callback before its next step, so there is nothing to gain from deferring
        // the fsync to another task.)
        match self.disk.sync().await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
                Err(io_error(ErrorSubject::Logs, ErrorVerb::Write, error))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.disk
            .truncate_log(log_id.index)
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes =
            encode(&log_id).map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        // Record the purge point first: a crash in between leaves entries below it,
        // which are purged again, never a gap.
        self.disk
            .put_meta(LAST_PURGED_KEY, bytes)
            .await
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.disk
            .purge_log(log_id.index)
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}
