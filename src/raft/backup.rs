//! Backup files: the registry as of one revision, saved from any node and restored
//! into fresh data dirs, as etcdctl's `snapshot save` and `snapshot restore` do.
//!
//! A file is a 24-byte header and a payload:
//! - `MCPFSNAP` (8 bytes), so that a file of anything else is told apart at once;
//! - the format version (u32, big-endian), as data dirs record it (`format`);
//! - the payload's length (u64) and its CRC-32 (u32), so that a truncated or damaged
//!   file is refused before anything of it is decoded;
//! - the payload: the registry, encoded as the log encodes it (`codec`, tagged).
//!
//! What a backup holds is the servers, their specs and revisions, and the legacy MCP
//! sessions. What belongs to the cluster that saved it (its nodes, their assignments,
//! replica health, catalogs) is left out when it is restored: the restored cluster's
//! nodes register afresh, and its leader places every server again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use openraft::{BasicNode, CommittedLeaderId, LogId, Membership, StoredMembership, Vote};
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode, MAX_DECODE_BYTES};
use super::format::FORMAT_VERSION;
use super::{LogStore, NodeId, StateMachineStore};
use crate::env::Disk;
use crate::registry::Registry;

const MAGIC: &[u8; 8] = b"MCPFSNAP";
/// Bytes before the payload.
pub const HEADER_BYTES: usize = 24;
/// The largest backup file: the largest snapshot a node decodes, and its header.
pub const MAX_BACKUP_BYTES: usize = MAX_DECODE_BYTES + HEADER_BYTES;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackupError {
    #[error("not an mcpfleet backup (it does not start with {:?})", std::str::from_utf8(MAGIC).unwrap_or_default())]
    Foreign,
    #[error(
        "the backup was written in format version {found}, and this mcpfleet reads only \
         version {FORMAT_VERSION}"
    )]
    Version { found: u32 },
    #[error("the backup is truncated: {got} bytes, and its header promises {expected}")]
    Truncated { expected: u64, got: u64 },
    #[error("the backup is {size} bytes, over the {MAX_BACKUP_BYTES}-byte cap")]
    TooLarge { size: u64 },
    #[error("the backup is damaged: its checksum does not match its contents")]
    Checksum,
    #[error("the backup's contents cannot be decoded: {0}")]
    Decode(String),
    #[error("cannot encode the backup: {0}")]
    Encode(String),
    #[error("{0}")]
    Disk(String),
}

/// What a backup file carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    pub registry: Registry,
}

/// `registry` as a backup file.
pub fn encode_backup(registry: &Registry) -> Result<Vec<u8>, BackupError> {
    let payload = encode(&Backup {
        registry: registry.clone(),
    })
    .map_err(|e| BackupError::Encode(e.to_string()))?;
    let mut bytes = Vec::with_capacity(HEADER_BYTES + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// Reads a backup file, checking everything before it decodes anything.
pub fn decode_backup(bytes: &[u8]) -> Result<Backup, BackupError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(BackupError::Foreign);
    }
    if bytes.len() < HEADER_BYTES {
        return Err(BackupError::Truncated {
            expected: HEADER_BYTES as u64,
            got: bytes.len() as u64,
        });
    }
    let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let found = word(8);
    if found != FORMAT_VERSION {
        return Err(BackupError::Version { found });
    }
    let length = u64::from_be_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let expected = length.saturating_add(HEADER_BYTES as u64);
    if expected > MAX_BACKUP_BYTES as u64 {
        return Err(BackupError::TooLarge { size: expected });
    }
    if (bytes.len() as u64) < expected {
        return Err(BackupError::Truncated {
            expected,
            got: bytes.len() as u64,
        });
    }
    if (bytes.len() as u64) > expected {
        return Err(BackupError::Decode(format!(
            "{} bytes follow the payload",
            bytes.len() as u64 - expected
        )));
    }
    let payload = &bytes[HEADER_BYTES..];
    if crc32fast::hash(payload) != word(20) {
        return Err(BackupError::Checksum);
    }
    let mut backup: Backup = decode(payload).map_err(|e| BackupError::Decode(e.to_string()))?;
    backup.registry.recount();
    backup
        .registry
        .check_invariants()
        .map_err(BackupError::Decode)?;
    Ok(backup)
}

/// The log position a restored data dir starts from: one entry of term 1, as if the
/// restored state had been committed by a first leader and compacted into a snapshot.
fn restored_log_id() -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(1, 0), 1)
}

/// Makes the empty data dir on `disk` hold `backup` as node `id` of a cluster of
/// `members` (all voters): its state machine starts from the backup as a Raft
/// snapshot, which the leader sends to any node that joins later, and its log starts
/// after it. The caller has checked that `disk` is empty and recorded its format.
pub async fn restore_into(
    disk: Arc<dyn Disk>,
    backup: Backup,
    id: NodeId,
    members: BTreeMap<NodeId, String>,
) -> Result<(), BackupError> {
    let failed = |e: &dyn std::fmt::Display| BackupError::Disk(e.to_string());
    let mut registry = backup.registry;
    registry.nodes.clear();
    registry.assignments.clear();
    registry.health.clear();
    registry.catalogs.clear();
    registry.recount();
    let log_id = restored_log_id();
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    let nodes: BTreeMap<NodeId, BasicNode> = members
        .into_iter()
        .map(|(id, addr)| (id, BasicNode::new(addr)))
        .collect();
    let membership = StoredMembership::new(Some(log_id), Membership::new(vec![voters], nodes));
    StateMachineStore::open(disk.clone())
        .map_err(|e| failed(&e))?
        .install_restored(registry, log_id, membership)
        .await
        .map_err(|e| failed(&e))?;
    // The vote of term 1 for itself, which no election can have won: the first real
    // election is of term 2, after the restored entry.
    LogStore::open(disk.clone())
        .map_err(|e| failed(&e))?
        .install_restored(Vote::new(1, id), log_id)
        .await
        .map_err(|e| failed(&e))?;
    disk.sync().await.map_err(|e| failed(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Command, ServerSpec};

    fn registry() -> Registry {
        let mut registry = Registry::default();
        for name in ["a", "b"] {
            let (outcome, _) = registry.apply(&Command::PutServer {
                spec: ServerSpec::stdio(name, "echo", &[]),
                expected_revision: None,
            });
            assert!(matches!(outcome, crate::registry::Outcome::Applied { .. }));
        }
        registry
    }

    #[test]
    fn a_backup_reads_back_and_anything_else_is_refused() {
        let bytes = encode_backup(&registry()).unwrap();
        assert_eq!(decode_backup(&bytes).unwrap().registry, registry());

        let mut other_version = bytes.clone();
        other_version[8..12].copy_from_slice(&(FORMAT_VERSION - 1).to_be_bytes());
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        let mut longer = bytes.clone();
        longer.push(0);
        let mut huge = bytes.clone();
        huge[12..20].copy_from_slice(&u64::MAX.to_be_bytes());
        type Expect = fn(&BackupError) -> bool;
        let cases: Vec<(&str, &[u8], Expect)> = vec![
            ("empty", &[], |e| *e == BackupError::Foreign),
            ("foreign", b"{\"mcpServers\": {}}", |e| {
                *e == BackupError::Foreign
            }),
            ("header only", &bytes[..10], |e| {
                matches!(e, BackupError::Truncated { .. })
            }),
            ("truncated", &bytes[..bytes.len() - 5], |e| {
                matches!(e, BackupError::Truncated { .. })
            }),
            ("another version", &other_version, |e| {
                matches!(e, BackupError::Version { .. })
            }),
            ("a flipped bit", &flipped, |e| *e == BackupError::Checksum),
            ("trailing bytes", &longer, |e| {
                matches!(e, BackupError::Decode(_))
            }),
            ("a huge length", &huge, |e| {
                matches!(e, BackupError::TooLarge { .. })
            }),
        ];
        for (what, bytes, expected) in cases {
            let error = decode_backup(bytes).unwrap_err();
            assert!(expected(&error), "{what}: {error}");
        }
    }
}
