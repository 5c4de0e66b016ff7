//! The disk seam: what the Raft stores need from durable storage.
//!
//! A `Disk` holds the Raft log (index -> encoded entry) and a few named metadata
//! values (vote, committed index, snapshot). `truncate_log` and `put_meta` return once
//! their effect is durable; `append_log` and `purge_log` are durable only after the
//! next `sync` (or any later durable call). `SledDisk` is production (one sled database
//! per node): its fsyncs, truncations and purges run on tokio's blocking pool, while
//! inserts and reads (which sled serves from memory) run inline on the node's runtime
//! thread. `MemoryDisk` is the in-memory stand-in for tests and the simulator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;

/// sled's page cache. The registry itself lives in memory; the cache mostly holds
/// recent log entries.
pub const SLED_CACHE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("data dir {path} is in use by another process")]
    InUse { path: PathBuf },
    #[error("data dir {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("data dir {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("storage error: {0}")]
    Storage(String),
}

/// Durable storage for one node. Reads see every completed write.
#[async_trait]
pub trait Disk: Send + Sync + 'static {
    /// Writes log entries, replacing any at the same index. They are readable at once
    /// but durable only after the next `sync`.
    fn append_log(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<(), DiskError>;
    /// Makes every earlier write durable (fsync). May block the calling thread for
    /// the duration of the fsync.
    async fn sync(&self) -> Result<(), DiskError>;
    /// Entries with `start <= index < end`, in index order.
    fn read_log(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, DiskError>;
    /// The entry with the highest index.
    fn last_log(&self) -> Result<Option<(u64, Vec<u8>)>, DiskError>;
    /// Removes every entry with `index >= from`; durable on return.
    async fn truncate_log(&self, from: u64) -> Result<(), DiskError>;
    /// Removes every entry with `index <= upto`.
    async fn purge_log(&self, upto: u64) -> Result<(), DiskError>;
    /// Stores a named value; durable on return.
    async fn put_meta(&self, key: &str, value: Vec<u8>) -> Result<(), DiskError>;
    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, DiskError>;
    /// Bytes on disk (0 where unknown), for status and the soak benchmark.
    fn size_on_disk(&self) -> u64;
    /// Whether heavy work beside this disk (`heavy`) goes to tokio's blocking pool. Only
    /// production storage says yes: in the simulator everything stays on its one
    /// thread, in order.
    fn off_runtime(&self) -> bool {
        false
    }
}

/// Runs CPU-heavy work that belongs with storage (encoding a snapshot) where it does not
/// stall the node's runtime thread: on the blocking pool beside a real disk, inline
/// beside a simulated one.
pub async fn heavy<R: Send + 'static>(
    disk: &dyn Disk,
    work: impl FnOnce() -> R + Send + 'static,
) -> Result<R, DiskError> {
    if disk.off_runtime() {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| DiskError::Storage(format!("a storage thread failed: {e}")))
    } else {
        Ok(work())
    }
}

/// Production storage: one sled database in the node's data dir.
pub struct SledDisk {
    path: PathBuf,
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
}

impl SledDisk {
    /// Opens (or creates) the data dir. A data dir held by another process and a
    /// corrupt one get their own errors.
    pub fn open(path: &Path) -> Result<SledDisk, DiskError> {
        let path = path.to_path_buf();
        if path.exists() && !path.is_dir() {
            return Err(DiskError::Corrupt {
                path,
                detail: "not a directory".into(),
            });
        }
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(SLED_CACHE_BYTES)
            // Durability comes from explicit syncs; no periodic background flush.
            .flush_every_ms(None)
            .open()
            .map_err(|e| open_error(&path, e))?;
        let log = db.open_tree("log").map_err(|e| open_error(&path, e))?;
        let meta = db.open_tree("meta").map_err(|e| open_error(&path, e))?;
        Ok(SledDisk {
            path,
            db,
            log,
            meta,
        })
    }

    /// fsyncs on tokio's blocking pool. openraft 0.9 still waits for each of its log
    /// appends to be durable before it does anything else, but the node's other tasks
    /// (client reads, tool calls, the replica supervisors) go on while the disk is slow.
    async fn flush(&self) -> Result<(), DiskError> {
        let db = self.db.clone();
        off_thread(move || db.flush().map(|_| ())).await
    }
}

/// Runs a blocking sled call on tokio's blocking pool.
async fn off_thread<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, sled::Error> + Send + 'static,
) -> Result<T, DiskError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| DiskError::Storage(format!("a storage thread failed: {e}")))?
        .map_err(storage_error)
}

/// Removes the log entries in `range` in one batch.
fn remove_range(
    log: &sled::Tree,
    range: impl std::ops::RangeBounds<[u8; 8]>,
) -> Result<(), sled::Error> {
    let mut batch = sled::Batch::default();
    for item in log.range(range) {
        let (key, _) = item?;
        batch.remove(key);
    }
    log.apply_batch(batch)
}

fn open_error(path: &Path, error: sled::Error) -> DiskError {
    let path = path.to_path_buf();
    match error {
        sled::Error::Io(source) => {
            let text = source.to_string();
            if text.contains("lock") || source.kind() == std::io::ErrorKind::WouldBlock {
                DiskError::InUse { path }
            } else if source.kind() == std::io::ErrorKind::InvalidData
                || source.kind() == std::io::ErrorKind::UnexpectedEof
            {
                DiskError::Corrupt { path, detail: text }
            } else {
                DiskError::Io { path, source }
            }
        }
        sled::Error::Corruption { at, .. } => DiskError::Corrupt {
            path,
            detail: format!("sled reports corruption at {at:?}"),
        },
        other => DiskError::Corrupt {
            path,
            detail: other.to_string(),
        },
    }
}

fn storage_error(error: sled::Error) -> DiskError {
    DiskError::Storage(error.to_string())
}

fn index_key(index: u64) -> [u8; 8] {
    // Big-endian so that sled's byte order is index order.
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> Result<u64, DiskError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| DiskError::Storage(format!("log key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

#[async_trait]
impl Disk for SledDisk {
    fn append_log(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<(), DiskError> {
        // Plain inserts in index order, not a sled batch: a batch costs several times
        // more (sled's batch takes a global write lock). Atomicity is not needed: after a
        // crash sled recovers a prefix of the writes, and only synced entries were ever
        // acknowledged.
        for (index, bytes) in entries {
            self.log
                .insert(index_key(index), bytes)
                .map_err(storage_error)?;
        }
        Ok(())
    }

    async fn sync(&self) -> Result<(), DiskError> {
        self.flush().await
    }

    fn read_log(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, DiskError> {
        if start >= end {
            return Ok(Vec::new());
        }
        self.log
            .range(index_key(start)..index_key(end))
            .map(|item| {
                let (key, value) = item.map_err(storage_error)?;
                Ok((key_index(&key)?, value.to_vec()))
            })
            .collect()
    }

    fn last_log(&self) -> Result<Option<(u64, Vec<u8>)>, DiskError> {
        match self.log.last().map_err(storage_error)? {
            Some((key, value)) => Ok(Some((key_index(&key)?, value.to_vec()))),
            None => Ok(None),
        }
    }

    async fn truncate_log(&self, from: u64) -> Result<(), DiskError> {
        let log = self.log.clone();
        off_thread(move || remove_range(&log, index_key(from)..)).await?;
        self.flush().await
    }

    async fn purge_log(&self, upto: u64) -> Result<(), DiskError> {
        // A purge removes up to a snapshot's worth of entries: off the runtime thread.
        // It need not be durable at once: a purged entry that reappears after a crash
        // is below the snapshot and is purged again.
        let log = self.log.clone();
        off_thread(move || remove_range(&log, ..=index_key(upto))).await
    }

    async fn put_meta(&self, key: &str, value: Vec<u8>) -> Result<(), DiskError> {
        // A value may be a whole snapshot: written off the runtime thread too.
        let (meta, key) = (self.meta.clone(), key.to_string());
        off_thread(move || meta.insert(key, value).map(|_| ())).await?;
        self.flush().await
    }

    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, DiskError> {
        Ok(self
            .meta
            .get(key)
            .map_err(storage_error)?
            .map(|v| v.to_vec()))
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    fn off_runtime(&self) -> bool {
        true
    }
}

impl std::fmt::Debug for SledDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SledDisk({})", self.path.display())
    }
}

/// In-memory storage. Shared through an `Arc`, it outlives a simulated crash; `crash()`
/// then drops what was written but not yet made durable, as a power loss would.
#[derive(Debug, Default)]
pub struct MemoryDisk {
    inner: Mutex<MemoryContents>,
    /// How long each sync takes, in ms (a slow disk; the simulator sets it).
    sync_delay_ms: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct MemoryContents {
    log: BTreeMap<u64, Vec<u8>>,
    meta: BTreeMap<String, Vec<u8>>,
    /// How to undo each change made since the last sync, oldest first.
    unsynced: Vec<Undo>,
}

#[derive(Debug)]
enum Undo {
    /// A log write: the entry that was at `index` before, if any.
    LogWrite {
        index: u64,
        previous: Option<Vec<u8>>,
    },
    /// A purge: the entries it removed.
    Purge { removed: BTreeMap<u64, Vec<u8>> },
}

impl MemoryDisk {
    pub fn new() -> MemoryDisk {
        MemoryDisk::default()
    }

    /// Makes every sync from now on take `delay` (zero: a fast disk again).
    pub fn set_sync_delay(&self, delay: std::time::Duration) {
        self.sync_delay_ms.store(
            delay.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Loses every change not yet made durable, newest first: what a crash of the
    /// machine leaves behind.
    pub fn crash(&self) {
        let mut contents = self.contents();
        while let Some(undo) = contents.unsynced.pop() {
            match undo {
                Undo::LogWrite {
                    index,
                    previous: Some(bytes),
                } => {
                    contents.log.insert(index, bytes);
                }
                Undo::LogWrite {
                    index,
                    previous: None,
                } => {
                    contents.log.remove(&index);
                }
                Undo::Purge { mut removed } => contents.log.append(&mut removed),
            }
        }
    }

    /// A hash of everything stored, the same for the same contents in every run (the
    /// simulator compares runs of one seed with it).
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        // SipHash with fixed keys: stable across runs and processes.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let contents = self.contents();
        contents.log.hash(&mut hasher);
        contents.meta.hash(&mut hasher);
        hasher.finish()
    }

    fn contents(&self) -> std::sync::MutexGuard<'_, MemoryContents> {
        // A panic while holding the lock leaves consistent data: every change below is
        // a single map operation.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Disk for MemoryDisk {
    fn append_log(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<(), DiskError> {
        let mut contents = self.contents();
        for (index, bytes) in entries {
            let previous = contents.log.insert(index, bytes);
            contents.unsynced.push(Undo::LogWrite { index, previous });
        }
        Ok(())
    }

    async fn sync(&self) -> Result<(), DiskError> {
        let delay = self
            .sync_delay_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if delay > 0 {
            // Durable only once the slow flush is done: a crash meanwhile loses it.
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        self.contents().unsynced.clear();
        Ok(())
    }

    fn read_log(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, DiskError> {
        if start >= end {
            return Ok(Vec::new());
        }
        Ok(self
            .contents()
            .log
            .range(start..end)
            .map(|(i, b)| (*i, b.clone()))
            .collect())
    }

    fn last_log(&self) -> Result<Option<(u64, Vec<u8>)>, DiskError> {
        Ok(self
            .contents()
            .log
            .last_key_value()
            .map(|(i, b)| (*i, b.clone())))
    }

    async fn truncate_log(&self, from: u64) -> Result<(), DiskError> {
        let mut contents = self.contents();
        contents.log.split_off(&from);
        // Durable on return, and (like an fsync) everything written before with it.
        contents.unsynced.clear();
        Ok(())
    }

    async fn purge_log(&self, upto: u64) -> Result<(), DiskError> {
        let mut contents = self.contents();
        let kept = match upto.checked_add(1) {
            Some(first_kept) => contents.log.split_off(&first_kept),
            None => BTreeMap::new(),
        };
        let removed = std::mem::replace(&mut contents.log, kept);
        contents.unsynced.push(Undo::Purge { removed });
        Ok(())
    }

    async fn put_meta(&self, key: &str, value: Vec<u8>) -> Result<(), DiskError> {
        let mut contents = self.contents();
        contents.meta.insert(key.to_string(), value);
        contents.unsynced.clear();
        Ok(())
    }

    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, DiskError> {
        Ok(self.contents().meta.get(key).cloned())
    }

    fn size_on_disk(&self) -> u64 {
        let contents = self.contents();
        let log: usize = contents.log.values().map(|v| v.len() + 8).sum();
        let meta: usize = contents.meta.iter().map(|(k, v)| k.len() + v.len()).sum();
        (log + meta) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_crash_loses_exactly_what_was_not_synced() {
        let disk = MemoryDisk::new();
        disk.append_log(vec![(1, b"a".to_vec()), (2, b"b".to_vec())])
            .unwrap();
        disk.sync().await.unwrap();
        disk.append_log(vec![(2, b"B".to_vec()), (3, b"c".to_vec())])
            .unwrap();
        disk.purge_log(1).await.unwrap();
        disk.crash();
        // The synced entries are back as they were; the unsynced writes and purge are gone.
        assert_eq!(
            disk.read_log(0, 10).unwrap(),
            vec![(1, b"a".to_vec()), (2, b"b".to_vec())]
        );
        // A durable metadata write makes earlier writes durable too, as an fsync does.
        disk.append_log(vec![(3, b"c".to_vec())]).unwrap();
        disk.put_meta("vote", b"v".to_vec()).await.unwrap();
        disk.crash();
        assert_eq!(disk.last_log().unwrap(), Some((3, b"c".to_vec())));
        assert_eq!(disk.get_meta("vote").unwrap(), Some(b"v".to_vec()));
    }
}
